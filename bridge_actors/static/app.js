/*
 * The bridge_actors web viewer: lists sessions, creates and deletes them, and
 * shows one session live on a canvas while sending taps, swipes, buttons, text
 * and keys over its control socket.
 *
 * Decisions (frame header layout, what a close code means, backoff, point
 * arithmetic) are plain functions at the top, exposed on
 * window.bridgeViewer.lib so they can be checked without a server. The classes
 * below only move bytes and touch the page.
 */
"use strict";

(() => {
  // --- pure decisions ------------------------------------------------------------------------

  const HEADER_SIZE = 32;
  const MAGIC = "BAV1";
  const CODEC_JPEG = 1;
  const TAP_SLOP_PX = 6; // a pointer that moved less than this (CSS pixels) tapped, not swiped
  const MIN_SWIPE_SECONDS = 0.05;
  const MAX_SWIPE_SECONDS = 5;
  const HEALTHY_AFTER_MS = 3000; // a socket open this long has earned a fresh backoff
  const SESSION_REFRESH_MS = 5000;
  const MAX_EVENTS = 50;
  const MAX_PENDING_ACKS = 200;

  /** The 32-byte big-endian header of a `?format=binary` video message. */
  function parseFrameHeader(buffer) {
    if (buffer.byteLength < HEADER_SIZE) {
      throw new Error(`binary frame shorter than its ${HEADER_SIZE}-byte header`);
    }
    const view = new DataView(buffer);
    const magic = String.fromCharCode(
      view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
    if (magic !== MAGIC) throw new Error(`bad magic ${JSON.stringify(magic)}`);
    return {
      seq: view.getUint32(4),
      timestamp: view.getFloat64(8),
      pixelWidth: view.getUint16(16),
      pixelHeight: view.getUint16(18),
      pointWidth: view.getUint16(20),
      pointHeight: view.getUint16(22),
      inputSeq: view.getUint32(24),
      codec: view.getUint8(28),
      keyframe: (view.getUint8(29) & 1) === 1,
    };
  }

  /** Seconds from a 4029 close reason such as "retry_after=7", or null. */
  function retryAfterSeconds(reason) {
    const match = /retry_after=(\d+(?:\.\d+)?)/.exec(reason || "");
    return match ? Number(match[1]) : null;
  }

  /**
   * What a close code means to the person watching, and whether to try again.
   * retry is "backoff" (growing delays, at least minDelayMs), "fixed" (after
   * delayMs) or "never"; sessionGone means the session itself no longer exists.
   */
  function closePlan(code, reason) {
    const detail = reason ? `: ${reason}` : "";
    switch (code) {
      case 4004:
        return {
          message: reason === "session deleted"
            ? "This session was deleted."
            : "Session not found: it no longer exists.",
          retry: "never", sessionGone: true, severity: "error",
        };
      case 4029: {
        const seconds = retryAfterSeconds(reason) ?? 5;
        return {
          message: `Rate limited: too many connections. Retrying in ${seconds} s.`,
          retry: "fixed", delayMs: seconds * 1000, severity: "warn",
        };
      }
      case 4009:
        return {
          message: "This session already has as many viewers as it allows. Retrying later.",
          retry: "backoff", minDelayMs: 5000, severity: "warn",
        };
      case 1008:
        return {
          message: `Disconnected by the server${detail || " (fell behind)"}. Reconnecting.`,
          retry: "backoff", severity: "warn",
        };
      case 1001:
        return {
          message: "The server is shutting down or stopped the capture. Reconnecting when it is back.",
          retry: "backoff", minDelayMs: 2000, severity: "warn",
        };
      case 1011:
        return {
          message: `The device capture failed${detail}. Press Reconnect to try again.`,
          retry: "never", severity: "error",
        };
      case 1013:
        return {
          message: "The server is busy. Retrying.",
          retry: "backoff", minDelayMs: 2000, severity: "warn",
        };
      case 1009:
        return {
          message: "A message was too big for the server. Reconnecting.",
          retry: "backoff", severity: "warn",
        };
      case 1000:
        return {
          message: `The server closed the connection${detail}. Reconnecting.`,
          retry: "backoff", severity: "warn",
        };
      default:
        return {
          message: `Connection lost (code ${code}${reason ? `, ${reason}` : ""}). Reconnecting.`,
          retry: "backoff", severity: "warn",
        };
    }
  }

  /** Exponential backoff with jitter, so many viewers of a restarted server do not return at once. */
  class Backoff {
    constructor({ initialMs = 500, maxMs = 15000, factor = 2, random = Math.random } = {}) {
      Object.assign(this, { initialMs, maxMs, factor, random });
      this.attempt = 0;
    }

    next(minMs = 0) {
      const base = Math.min(this.maxMs, this.initialMs * this.factor ** this.attempt);
      this.attempt += 1;
      return Math.max(minMs, Math.round(base * (0.8 + 0.4 * this.random())));
    }

    reset() {
      this.attempt = 0;
    }
  }

  /** How long to wait before reconnecting after a close with `plan`, or null for never. */
  function reconnectDelay(plan, backoff) {
    if (plan.retry === "never") return null;
    if (plan.retry === "fixed") {
      backoff.next();
      return plan.delayMs;
    }
    return backoff.next(plan.minDelayMs || 0);
  }

  /** A position on the canvas's backing store (device pixels) from a pointer position. */
  function canvasPixel(clientX, clientY, rect, canvasWidth, canvasHeight) {
    return {
      x: ((clientX - rect.left) * canvasWidth) / rect.width,
      y: ((clientY - rect.top) * canvasHeight) / rect.height,
    };
  }

  /** Device pixels to the logical points a control message carries, kept on the screen. */
  function pixelToPoint(pixel, frame) {
    const clamp = (value, size) => Math.min(size - 1, Math.max(0, Math.round(value)));
    return {
      x: clamp((pixel.x * frame.pointWidth) / frame.pixelWidth, frame.pointWidth),
      y: clamp((pixel.y * frame.pointHeight) / frame.pixelHeight, frame.pointHeight),
    };
  }

  /** Events in the last `windowMs` milliseconds: the fps figure. */
  class RecentCounter {
    constructor(windowMs = 1000) {
      this.windowMs = windowMs;
      this.times = [];
    }

    add(now) {
      this.times.push(now);
      return this.count(now);
    }

    count(now) {
      const horizon = now - this.windowMs;
      while (this.times.length && this.times[0] <= horizon) this.times.shift();
      return this.times.length;
    }

    clear() {
      this.times = [];
    }
  }

  /** KeyboardEvent.key to the key names of a `{"t":"key"}` message. */
  const KEY_NAMES = {
    Enter: "enter", Backspace: "backspace", Escape: "escape", Delete: "delete",
    ArrowUp: "arrowup", ArrowDown: "arrowdown", ArrowLeft: "arrowleft", ArrowRight: "arrowright",
    Home: "home", End: "end", PageUp: "pageup", PageDown: "pagedown",
  };

  function shortId(id) {
    return String(id || "").slice(0, 8);
  }

  function formatUptime(seconds) {
    if (!Number.isFinite(seconds)) return "";
    if (seconds < 60) return `${Math.floor(seconds)} s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  function wsUrl(path) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}${path}`;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return {};
    }
  }

  function errorDetail(response, body) {
    let detail = body && (body.detail || body.message || body.error);
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return detail ? String(detail) : `HTTP ${response.status}`;
  }

  // --- the page ------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  /** The shared, inspectable state of the page (window.bridgeViewer.state). */
  const state = {
    sessionId: null,
    status: "idle",
    controlStatus: "idle",
    fps: 0,
    latencyMs: null,
    frameSeq: null,
    inputSeq: null,
    ackedInputSeq: null,
    tapLatencyMs: null,
    framesReceived: 0,
    framesDrawn: 0,
    framesDropped: 0,
    pixelWidth: null,
    pixelHeight: null,
    pointWidth: null,
    pointHeight: null,
    sent: 0,
    acks: 0,
    errors: 0,
    lastAck: null,
    lastError: null,
    lastClose: null,
    sessions: [],
    events: [],
  };

  function logEvent(text, kind = "info") {
    const time = new Date().toLocaleTimeString([], { hour12: false });
    state.events.unshift({ time, text, kind });
    state.events.length = Math.min(state.events.length, MAX_EVENTS);
    const list = $("events");
    const item = document.createElement("li");
    item.dataset.kind = kind;
    item.textContent = `${time} ${text}`;
    list.prepend(item);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  let noticeTimer = null;

  function showNotice(message, kind = "info") {
    const notice = $("notice");
    clearTimeout(noticeTimer);
    notice.textContent = message;
    notice.dataset.kind = kind;
    notice.hidden = false;
    if (kind === "info") noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
  }

  function setBadge(element, value) {
    element.textContent = value;
    element.dataset.state = value;
  }

  /**
   * One WebSocket that comes back after a close when its close code says it may.
   * A refused socket is accepted and then closed at once, so "opened" alone does
   * not reset the backoff: staying open a while (or the owner saying so) does.
   */
  class ReconnectingSocket {
    constructor({ url, binary = false, onMessage, onClose, onState }) {
      Object.assign(this, { url, binary, onMessage, onClose, onState });
      this.backoff = new Backoff();
      this.ws = null;
      this.timer = null;
      this.healthyTimer = null;
      this.stopped = true;
    }

    start() {
      this.stopped = false;
      this.backoff.reset();
      this.connect();
    }

    connect() {
      clearTimeout(this.timer);
      const ws = new WebSocket(this.url);
      if (this.binary) ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.onState(this.backoff.attempt ? "reconnecting" : "connecting");
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.onState("open");
        this.healthyTimer = setTimeout(() => this.backoff.reset(), HEALTHY_AFTER_MS);
      };
      ws.onmessage = (event) => {
        if (ws === this.ws) this.onMessage(event.data);
      };
      ws.onclose = (event) => {
        if (ws !== this.ws) return;
        this.ws = null;
        clearTimeout(this.healthyTimer);
        if (this.stopped) return;
        const plan = closePlan(event.code, event.reason);
        const delay = reconnectDelay(plan, this.backoff);
        this.onClose(event, plan, delay);
        if (this.stopped) return; // the owner stopped us while handling the close
        if (delay === null) {
          this.onState(plan.sessionGone ? "closed" : "failed");
          return;
        }
        this.onState("reconnecting");
        this.timer = setTimeout(() => this.connect(), delay);
      };
    }

    healthy() {
      this.backoff.reset();
    }

    send(text) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(text);
        return true;
      }
      return false;
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      clearTimeout(this.healthyTimer);
      const ws = this.ws;
      this.ws = null;
      if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "viewer closed");
      this.onState("idle");
    }
  }

  /** The live view of one session: video in, controls out, figures on the page. */
  class Viewer {
    constructor() {
      this.canvas = $("device-canvas");
      this.context = this.canvas.getContext("2d");
      this.video = null;
      this.control = null;
      this.generation = 0; // frames decoded for an earlier session are not drawn
      this.decoding = false;
      this.pending = null;
      this.frame = null; // header of the frame on screen
      this.lastDrawnAt = 0;
      this.fpsCounter = new RecentCounter();
      this.nextId = 0;
      this.pendingAcks = new Map();
      this.tapWait = null;
      this.drag = null;
      this.troubled = false; // a close was reported; the next live frame says it is over
      this.bindInput();
      this.setControlsEnabled(false);
      setInterval(() => this.renderFigures(), 500);
    }

    // -- lifecycle --

    open(sessionId) {
      if (this.sessionId === sessionId && (this.video || this.control)) return;
      this.teardown();
      this.sessionId = state.sessionId = sessionId;
      this.resetFigures();
      const path = `/ws/${encodeURIComponent(sessionId)}`;
      // Another transport (static/transport.js) may bring the video in its own way.
      this.transport = window.bridgeTransports ? window.bridgeTransports.active() : null;
      if (!this.transport) this.video = new ReconnectingSocket({
        url: wsUrl(`${path}/video?format=binary`),
        binary: true,
        onMessage: (data) => this.onVideoMessage(data),
        onClose: (event, plan, delay) => this.onSocketClose("video", event, plan, delay),
        onState: (value) => this.setVideoState(value),
      });
      this.control = new ReconnectingSocket({
        url: wsUrl(`${path}/control`),
        onMessage: (data) => this.onControlMessage(data),
        onClose: (event, plan, delay) => this.onSocketClose("control", event, plan, delay),
        onState: (value) => this.setControlState(value),
      });
      if (this.transport) this.transport.start(sessionId, this.canvas);
      else this.video.start();
      this.control.start();
      $("screen-placeholder").textContent = "Connecting…";
      $("screen-placeholder").hidden = false;
      $("close-view-button").hidden = false;
      $("reconnect-button").hidden = true;
      this.renderHeading();
      sessions.markCurrent(sessionId);
      history.replaceState(null, "", `#session=${encodeURIComponent(sessionId)}`);
      logEvent(`opened session ${shortId(sessionId)}`);
    }

    close() {
      this.teardown();
      this.sessionId = state.sessionId = null;
      this.resetFigures();
      this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
      $("screen-placeholder").textContent = "Open a session to see its screen.";
      $("screen-placeholder").hidden = false;
      $("close-view-button").hidden = true;
      $("reconnect-button").hidden = true;
      this.renderHeading();
      sessions.markCurrent(null);
      history.replaceState(null, "", location.pathname);
    }

    reconnect() {
      if (!this.sessionId) return;
      const sessionId = this.sessionId;
      this.teardown();
      this.open(sessionId);
    }

    teardown() {
      this.generation += 1;
      this.pending = null;
      this.tapWait = null;
      this.pendingAcks.clear();
      if (this.video) this.video.stop();
      if (this.transport) this.transport.stop();
      this.transport = null;
      if (this.control) this.control.stop();
      this.video = this.control = null;
      this.frame = null;
      this.troubled = false;
    }

    /** The session is gone (deleted, or unknown to the server): stop everything about it. */
    sessionGone(message) {
      if (!this.sessionId) return;
      const gone = this.sessionId;
      this.close();
      showNotice(`${message} (session ${shortId(gone)})`, "error");
      sessions.refresh();
    }

    onSocketClose(which, event, plan, delay) {
      state.lastClose = { socket: which, code: event.code, reason: event.reason, message: plan.message };
      const after = delay === null ? "" : ` (retry in ${(delay / 1000).toFixed(1)} s)`;
      logEvent(`${which} closed ${event.code}${event.reason ? ` "${event.reason}"` : ""}${after}`,
        plan.severity === "error" ? "error" : "info");
      if (plan.sessionGone) {
        this.sessionGone(plan.message);
        return;
      }
      showNotice(`${which === "video" ? "Video" : "Control"}: ${plan.message}`, plan.severity);
      this.troubled = true;
      if (which === "video" && !this.frame) $("screen-placeholder").textContent = plan.message;
      if (delay === null) $("reconnect-button").hidden = false;
    }

    setVideoState(value) {
      state.status = value === "open" ? "connecting" : value;
      setBadge($("status"), state.status);
    }

    setControlState(value) {
      state.controlStatus = value;
      setBadge($("control-status"), value);
      this.setControlsEnabled(value === "open");
      if (value !== "open") {
        this.pendingAcks.clear();
        this.tapWait = null;
      }
    }

    setControlsEnabled(enabled) {
      for (const element of document.querySelectorAll(".control")) element.disabled = !enabled;
    }

    // -- video --

    onVideoMessage(data) {
      if (typeof data === "string") {
        // The server speaks text on a binary stream only to explain a refusal.
        try {
          const message = JSON.parse(data);
          if (message.type === "error") logEvent(`video: ${message.message}`, "error");
        } catch {
          logEvent("video: unexpected text message", "error");
        }
        return;
      }
      let header;
      try {
        header = parseFrameHeader(data);
      } catch (error) {
        logEvent(`video: ${error.message}`, "error");
        return;
      }
      if (header.codec !== CODEC_JPEG) {
        logEvent(`video: unsupported codec ${header.codec}`, "error");
        return;
      }
      state.framesReceived += 1;
      if (window.bridgeTransports) window.bridgeTransports.received(data.byteLength);
      const item = { header, data, generation: this.generation };
      if (this.decoding) {
        // Keep only the newest frame while one decodes: showing the present beats catching up.
        if (this.pending) state.framesDropped += 1;
        this.pending = item;
        return;
      }
      this.drain(item);
    }

    async drain(first) {
      this.decoding = true;
      let item = first;
      while (item) {
        let bitmap = null;
        try {
          const jpeg = new Blob([new Uint8Array(item.data, HEADER_SIZE)], { type: "image/jpeg" });
          bitmap = await createImageBitmap(jpeg);
        } catch (error) {
          logEvent(`frame ${item.header.seq}: could not decode (${error.message})`, "error");
        }
        if (bitmap) {
          if (item.generation === this.generation) this.draw(item.header, bitmap);
          bitmap.close();
        }
        item = this.pending;
        this.pending = null;
      }
      this.decoding = false;
    }

    draw(header, bitmap) {
      const canvas = this.canvas;
      if (canvas.width !== header.pixelWidth || canvas.height !== header.pixelHeight) {
        canvas.width = header.pixelWidth;
        canvas.height = header.pixelHeight;
      }
      this.context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      const now = performance.now();
      this.frame = header;
      this.lastDrawnAt = now;
      Object.assign(state, {
        status: "live",
        framesDrawn: state.framesDrawn + 1,
        frameSeq: header.seq,
        inputSeq: header.inputSeq,
        latencyMs: Math.round(Date.now() - header.timestamp * 1000),
        fps: this.fpsCounter.add(now),
        pixelWidth: header.pixelWidth,
        pixelHeight: header.pixelHeight,
        pointWidth: header.pointWidth,
        pointHeight: header.pointHeight,
      });
      if ($("status").dataset.state !== "live") {
        setBadge($("status"), "live");
        $("screen-placeholder").hidden = true;
        if (this.video) this.video.healthy();
        if (this.troubled) {
          this.troubled = false;
          showNotice("Reconnected: the screen is live again.");
        }
      }
      if (this.tapWait && this.tapWait.inputSeq !== null && header.inputSeq >= this.tapWait.inputSeq) {
        this.tapSeen(now);
      }
      this.renderFigures();
    }

    // -- control --

    /** Send one control message with an id; returns the id, or null when not connected. */
    send(message, label) {
      this.nextId += 1;
      const id = this.nextId;
      if (!this.control || !this.control.send(JSON.stringify({ ...message, id }))) {
        showNotice("Control is not connected yet.", "warn");
        return null;
      }
      this.pendingAcks.set(id, { label, sentAt: performance.now() });
      if (this.pendingAcks.size > MAX_PENDING_ACKS) {
        this.pendingAcks.delete(this.pendingAcks.keys().next().value);
      }
      state.sent += 1;
      logEvent(`→ #${id} ${label}`);
      return id;
    }

    tap(point) {
      const id = this.send({ t: "tap", x: point.x, y: point.y }, `tap (${point.x}, ${point.y})`);
      if (id !== null) this.tapWait = { id, sentAt: performance.now(), inputSeq: null };
      return id;
    }

    swipe(start, end, duration) {
      return this.send(
        {
          t: "swipe", start_x: start.x, start_y: start.y, end_x: end.x, end_y: end.y,
          duration: Number(duration.toFixed(3)),
        },
        `swipe (${start.x}, ${start.y}) → (${end.x}, ${end.y}) in ${duration.toFixed(2)} s`,
      );
    }

    button(name) {
      return this.send({ t: "button", button: name }, `button ${name}`);
    }

    text(value) {
      return this.send({ t: "text", text: value }, `text ${JSON.stringify(value)}`);
    }

    key(name) {
      return this.send({ t: "key", key: name }, `key ${name}`);
    }

    onControlMessage(data) {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        logEvent("control: a reply that is not JSON", "error");
        return;
      }
      if (message.type === "ack") {
        this.onAck(message);
      } else if (message.type === "error") {
        state.errors += 1;
        state.lastError = message.message;
        logEvent(`control error: ${message.message}`, "error");
        showNotice(`The device refused a control: ${message.message}`, "warn");
      }
    }

    onAck(ack) {
      const sent = this.pendingAcks.get(ack.id);
      this.pendingAcks.delete(ack.id);
      const label = sent ? sent.label : "control";
      const ms = sent ? Math.round(performance.now() - sent.sentAt) : null;
      state.acks += 1;
      state.ackedInputSeq = Math.max(state.ackedInputSeq ?? 0, ack.input_seq);
      state.lastAck = { id: ack.id, inputSeq: ack.input_seq, label, ms };
      $("last-ack").textContent =
        `#${ack.id} ${label} → input_seq ${ack.input_seq}${ms === null ? "" : ` in ${ms} ms`}`;
      logEvent(`✓ #${ack.id} applied, input_seq ${ack.input_seq}`);
      this.control.healthy();
      if (this.tapWait && this.tapWait.id === ack.id) {
        this.tapWait.inputSeq = ack.input_seq;
        // The frame showing the tap may have been drawn before the ack arrived.
        if (this.frame && this.frame.inputSeq >= ack.input_seq) this.tapSeen(this.lastDrawnAt);
      }
      this.renderFigures();
    }

    tapSeen(drawnAt) {
      state.tapLatencyMs = Math.max(0, Math.round(drawnAt - this.tapWait.sentAt));
      logEvent(`tap #${this.tapWait.id} on screen after ${state.tapLatencyMs} ms`);
      this.tapWait = null;
    }

    // -- input from the page --

    pointFromClient(clientX, clientY, surface = this.canvas) {
      const rect = surface.getBoundingClientRect();
      const { pixelWidth, pixelHeight } = this.frame;
      return pixelToPoint(canvasPixel(clientX, clientY, rect, pixelWidth, pixelHeight), this.frame);
    }

    /** Taps, swipes and keys on an element showing the screen: the canvas, or WebRTC's video. */
    bindSurface(surface) {
      surface.addEventListener("pointerdown", (event) => {
        if (event.button !== 0 || !this.frame || state.controlStatus !== "open") return;
        event.preventDefault();
        surface.focus({ preventScroll: true });
        surface.setPointerCapture(event.pointerId);
        this.drag = { x: event.clientX, y: event.clientY, at: performance.now(), id: event.pointerId };
      });
      surface.addEventListener("pointerup", (event) => {
        const drag = this.drag;
        this.drag = null;
        if (!drag || drag.id !== event.pointerId || !this.frame) return;
        const start = this.pointFromClient(drag.x, drag.y, surface);
        const moved = Math.hypot(event.clientX - drag.x, event.clientY - drag.y);
        if (moved < TAP_SLOP_PX) {
          this.tap(start);
        } else {
          const seconds = (performance.now() - drag.at) / 1000;
          const duration = Math.min(MAX_SWIPE_SECONDS, Math.max(MIN_SWIPE_SECONDS, seconds));
          this.swipe(start, this.pointFromClient(event.clientX, event.clientY, surface), duration);
        }
      });
      surface.addEventListener("pointercancel", () => {
        this.drag = null;
      });
      surface.addEventListener("keydown", (event) => {
        if (event.ctrlKey || event.metaKey || event.altKey || event.key === "Tab") return;
        if (state.controlStatus !== "open") return;
        const named = KEY_NAMES[event.key];
        if (named) {
          event.preventDefault();
          this.key(named);
        } else if (event.key.length === 1) {
          event.preventDefault();
          this.text(event.key);
        }
      });
    }

    bindInput() {
      this.bindSurface(this.canvas);

      for (const element of document.querySelectorAll("[data-button]")) {
        element.addEventListener("click", () => this.button(element.dataset.button));
      }
      $("text-form").addEventListener("submit", (event) => {
        event.preventDefault();
        const input = $("text-input");
        if (!input.value) {
          input.focus();
          return;
        }
        if (this.text(input.value) !== null) input.value = "";
      });
      $("key-form").addEventListener("submit", (event) => {
        event.preventDefault();
        this.key($("key-select").value);
      });
      $("close-view-button").addEventListener("click", () => this.close());
      $("reconnect-button").addEventListener("click", () => this.reconnect());
    }

    // -- figures --

    resetFigures() {
      this.fpsCounter.clear();
      Object.assign(state, {
        fps: 0, latencyMs: null, frameSeq: null, inputSeq: null, ackedInputSeq: null,
        tapLatencyMs: null, framesReceived: 0, framesDrawn: 0, framesDropped: 0,
        pixelWidth: null, pixelHeight: null, pointWidth: null, pointHeight: null,
        sent: 0, acks: 0, errors: 0, lastAck: null, lastError: null,
      });
      $("last-ack").textContent = "–";
      this.renderFigures();
    }

    renderFigures() {
      if (this.sessionId) state.fps = this.fpsCounter.count(performance.now());
      const show = (value) => (value === null || value === undefined ? "–" : String(value));
      $("fps").textContent = this.sessionId ? String(state.fps) : "–";
      $("latency").textContent = show(state.latencyMs);
      $("frame-seq").textContent = show(state.frameSeq);
      $("input-seq").textContent = show(state.inputSeq);
      $("acked-input-seq").textContent = show(state.ackedInputSeq);
      $("tap-latency").textContent = show(state.tapLatencyMs);
      $("frames-drawn").textContent = String(state.framesDrawn);
      $("frames-dropped").textContent = String(state.framesDropped);
      $("resolution").textContent = state.pixelWidth
        ? `${state.pointWidth}×${state.pointHeight} pt, ${state.pixelWidth}×${state.pixelHeight} px`
        : "–";
    }

    renderHeading() {
      const heading = $("viewer-heading");
      if (!this.sessionId) {
        heading.textContent = "No session open";
        return;
      }
      const info = state.sessions.find((s) => s.session_id === this.sessionId);
      heading.textContent = info
        ? `${info.device_type} · iOS ${info.ios_version} · ${shortId(this.sessionId)}`
        : `Session ${shortId(this.sessionId)}`;
    }
  }

  /** The session list and the create form. */
  class Sessions {
    constructor() {
      this.list = $("session-list");
      this.items = new Map(); // session id → <li>, updated in place so focus survives a refresh
      this.current = null;
      this.refreshing = null;
      $("create-form").addEventListener("submit", (event) => {
        event.preventDefault();
        this.create();
      });
      $("refresh-button").addEventListener("click", () => this.refresh());
      setInterval(() => {
        if (!document.hidden) this.refresh();
      }, SESSION_REFRESH_MS);
    }

    /** Pick ``version`` in the form when it is offered (the version of the session in view). */
    preferVersion(version) {
      const select = $("ios-version");
      if (version && [...select.options].some((option) => option.value === version)) {
        select.value = version;
      }
    }

    async loadConfigurations() {
      const deviceSelect = $("device-type");
      const versionSelect = $("ios-version");
      try {
        const response = await fetch("/api/sessions/configurations", { cache: "no-store" });
        const body = await readJson(response);
        if (!response.ok || !body.configurations) throw new Error(errorDetail(response, body));
        const fill = (select, values) => {
          select.replaceChildren(...values.map((value) => new Option(value, value)));
          select.disabled = values.length === 0;
        };
        fill(deviceSelect, body.configurations.device_types || []);
        fill(versionSelect, body.configurations.ios_versions || []);
        $("create-button").disabled = deviceSelect.disabled || versionSelect.disabled;
      } catch (error) {
        showNotice(`Could not load device configurations: ${error.message}. Retrying.`, "error");
        setTimeout(() => this.loadConfigurations(), SESSION_REFRESH_MS);
      }
    }

    async create() {
      const button = $("create-button");
      const fields = new URLSearchParams({
        device_type: $("device-type").value,
        ios_version: $("ios-version").value,
      });
      button.disabled = true;
      button.textContent = "Creating…";
      try {
        const response = await fetch("/api/sessions/create", {
          method: "POST",
          body: fields, // URLSearchParams: sent form-encoded
          signal: AbortSignal.timeout(20000),
        });
        const body = await readJson(response);
        if (!response.ok || !body.success) {
          const wait = body.retry_after ? ` Try again in ${body.retry_after} s.` : "";
          throw new Error(`${errorDetail(response, body)}.${wait}`);
        }
        showNotice(`Created session ${shortId(body.session_id)} (${fields.get("device_type")}).`);
        logEvent(`created session ${shortId(body.session_id)}`);
        await this.refresh();
        viewer.open(body.session_id); // what the user created it for
        const item = this.items.get(body.session_id);
        if (item) item.querySelector("[data-action=open]").focus();
      } catch (error) {
        showNotice(`Could not create the session: ${error.message}`, "error");
      } finally {
        button.disabled = false;
        button.textContent = "Create session";
      }
    }

    async remove(session) {
      const label = `${session.device_type} (${shortId(session.session_id)})`;
      if (!window.confirm(`Delete the session ${label}? Its device stops for every viewer.`)) return;
      try {
        const response = await fetch(`/api/sessions/${encodeURIComponent(session.session_id)}`, {
          method: "DELETE",
        });
        const body = await readJson(response);
        if (!response.ok && response.status !== 404) throw new Error(errorDetail(response, body));
        logEvent(`deleted session ${shortId(session.session_id)}`);
        if (viewer.sessionId === session.session_id) viewer.close();
        // Said last: the view's own sockets may already have reported the deletion.
        showNotice(`Deleted session ${label}.`);
      } catch (error) {
        showNotice(`Could not delete the session: ${error.message}`, "error");
      }
      await this.refresh();
    }

    refresh() {
      // One request at a time: a slow server must not pile up refreshes.
      if (!this.refreshing) {
        this.refreshing = this.load().finally(() => {
          this.refreshing = null;
        });
      }
      return this.refreshing;
    }

    async load() {
      const status = $("sessions-status");
      try {
        const response = await fetch("/api/sessions/", { cache: "no-store" });
        const body = await readJson(response);
        if (!response.ok || !body.success) throw new Error(errorDetail(response, body));
        state.sessions = body.sessions;
        this.render(body.sessions);
        status.textContent = body.sessions.length
          ? `${body.sessions.length} session${body.sessions.length === 1 ? "" : "s"}`
          : "No sessions yet. Create one above.";
        viewer.renderHeading();
      } catch (error) {
        status.textContent = `Could not load sessions: ${error.message}`;
      }
    }

    render(list) {
      const ordered = [...list].sort((a, b) => (a.created_at || 0) - (b.created_at || 0));
      const seen = new Set(ordered.map((session) => session.session_id));
      for (const [id, item] of this.items) {
        if (!seen.has(id)) {
          item.remove();
          this.items.delete(id);
        }
      }
      ordered.forEach((session, index) => {
        let item = this.items.get(session.session_id);
        if (!item) {
          item = this.makeItem(session);
          this.items.set(session.session_id, item);
        }
        this.fillItem(item, session);
        // Move only what is out of place: moving a node takes the keyboard focus off it.
        const there = this.list.children[index];
        if (there !== item) this.list.insertBefore(item, there || null);
      });
      this.markCurrent(this.current);
    }

    makeItem(session) {
      const item = document.createElement("li");
      item.className = "session";
      item.dataset.sessionId = session.session_id;
      item.innerHTML = `
        <div class="session-title"><span data-field="title"></span>
          <span class="badge" data-field="status"></span></div>
        <div class="session-meta">udid <code data-field="udid"></code> ·
          session <code data-field="sid"></code> · <span data-field="uptime"></span></div>
        <div class="session-actions">
          <button type="button" class="small" data-action="open">Open</button>
          <button type="button" class="small danger" data-action="delete">Delete</button>
        </div>`;
      item.querySelector("[data-action=open]").addEventListener("click", () => {
        viewer.open(item.dataset.sessionId);
        $("viewer").focus({ preventScroll: true });
      });
      item.querySelector("[data-action=delete]").addEventListener("click", () => {
        this.remove(item.session);
      });
      return item;
    }

    fillItem(item, session) {
      item.session = session;
      const field = (name) => item.querySelector(`[data-field=${name}]`);
      field("title").textContent = `${session.device_type} · iOS ${session.ios_version}`;
      setBadge(field("status"), session.status || "unknown");
      field("udid").textContent = shortId(session.udid);
      field("udid").title = session.udid;
      field("sid").textContent = shortId(session.session_id);
      field("uptime").textContent = `up ${formatUptime(session.uptime)}`;
      const name = `${session.device_type} session ${shortId(session.session_id)}`;
      item.querySelector("[data-action=open]").setAttribute("aria-label", `Open ${name}`);
      item.querySelector("[data-action=delete]").setAttribute("aria-label", `Delete ${name}`);
    }

    markCurrent(sessionId) {
      this.current = sessionId;
      for (const [id, item] of this.items) {
        if (id === sessionId) item.setAttribute("aria-current", "true");
        else item.removeAttribute("aria-current");
      }
    }
  }

  let viewer = null;
  let sessions = null;

  function start() {
    sessions = new Sessions();
    viewer = new Viewer();
    window.bridgeViewer.viewer = viewer;
    window.bridgeViewer.sessions = sessions;
    // The page opens on a device: the one linked, else the first created (the server's
    // initial session), and the form offers that session's version.
    Promise.all([sessions.loadConfigurations(), sessions.refresh()]).then(() => {
      const linked = /^#session=(.+)$/.exec(location.hash);
      const first = [...state.sessions].sort((a, b) => (a.created_at || 0) - (b.created_at || 0))[0];
      const wanted = linked ? decodeURIComponent(linked[1]) : first && first.session_id;
      if (wanted && !viewer.sessionId) viewer.open(wanted);
      const shown = state.sessions.find((session) => session.session_id === wanted) || first;
      if (shown) sessions.preferVersion(shown.ios_version);
    });
  }

  window.bridgeViewer = {
    state,
    lib: {
      parseFrameHeader, retryAfterSeconds, closePlan, Backoff, reconnectDelay,
      canvasPixel, pixelToPoint, RecentCounter, ReconnectingSocket, wsUrl, logEvent, showNotice,
      HEADER_SIZE,
    },
    open: (sessionId) => viewer.open(sessionId),
    close: () => viewer.close(),
    refresh: () => sessions.refresh(),
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
