/*
 * How the viewer's video arrives: a small registry of transport modes.
 *
 * Each mode lives in its own file and registers itself:
 *   window.bridgeTransports.register(name, {label, start(sessionId, canvasOrVideo), stop()})
 * The built-in JPEG stream of app.js is the mode "jpeg" and needs no object. The
 * <select id="transport"> picks the mode (also ?transport=NAME in the page address);
 * changing it reopens the session. A mode that cannot work here calls
 * fallback(reason) and the viewer goes back to JPEG by itself.
 *
 * The registry also counts received bytes for every mode, so the page shows the
 * live bitrate and codec whatever brings the frames.
 */
"use strict";

(() => {
  const modes = new Map();
  const received = []; // [time ms, bytes] of the last second
  let codec = null;

  const viewerState = () => (window.bridgeViewer ? window.bridgeViewer.state : null);
  const select = () => document.getElementById("transport");

  function wanted() {
    const element = select();
    return element ? element.value : "jpeg";
  }

  function addOption(name, label) {
    const element = select();
    if (!element || [...element.options].some((option) => option.value === name)) return;
    element.add(new Option(label, name));
    const asked = new URLSearchParams(location.search).get("transport");
    if (asked === name) element.value = name;
  }

  function bitrateKbps(now) {
    while (received.length && received[0][0] <= now - 1000) received.shift();
    const bytes = received.reduce((sum, [, size]) => sum + size, 0);
    return Math.round((bytes * 8) / 1000);
  }

  function render() {
    const state = viewerState();
    const now = performance.now();
    const kbps = bitrateKbps(now);
    const live = state && state.sessionId;
    if (state) {
      state.transport = wanted();
      state.codec = live ? codec || (wanted() === "jpeg" ? "jpeg" : null) : null;
      state.bitrateKbps = live ? kbps : 0;
    }
    const codecElement = document.getElementById("codec");
    const rateElement = document.getElementById("bitrate");
    if (codecElement) codecElement.textContent = (state && state.codec) || "–";
    if (rateElement) rateElement.textContent = live ? String(kbps) : "–";
  }

  const registry = {
    register(name, mode) {
      if (!mode || typeof mode.start !== "function" || typeof mode.stop !== "function") {
        throw new Error(`transport ${name} needs start() and stop()`);
      }
      modes.set(name, mode);
      addOption(name, mode.label || name);
    },

    /** The selected mode's object, or null for the built-in JPEG stream. */
    active() {
      received.length = 0;
      codec = null;
      const mode = modes.get(wanted());
      render();
      return mode || null;
    },

    names() {
      return ["jpeg", ...modes.keys()];
    },

    /** Choose a mode and reopen the session in it. */
    select(name) {
      const element = select();
      if (!element) return;
      element.value = name;
      const viewer = window.bridgeViewer && window.bridgeViewer.viewer;
      if (viewer && viewer.sessionId) viewer.reconnect();
      render();
    },

    /** The running mode cannot work here: say why and go back to JPEG. */
    fallback(reason) {
      const state = viewerState();
      if (state) state.fallbackReason = reason;
      const lib = window.bridgeViewer && window.bridgeViewer.lib;
      if (lib) {
        lib.logEvent(`${wanted()} unavailable (${reason}): back to JPEG`, "error");
        lib.showNotice(`Falling back to JPEG: ${reason}`, "warn");
      }
      registry.select("jpeg");
    },

    /** A video message of `bytes` arrived (any mode). */
    received(bytes) {
      received.push([performance.now(), bytes]);
    },

    /** The codec now live, e.g. "avc1.42c01e" (shown beside the bitrate). */
    setCodec(value) {
      codec = value;
      render();
    },
  };

  window.bridgeTransports = registry;

  function start() {
    const element = select();
    if (element) {
      const asked = new URLSearchParams(location.search).get("transport");
      if (asked && [...element.options].some((option) => option.value === asked)) {
        element.value = asked;
      }
      element.addEventListener("change", () => registry.select(element.value));
    }
    setInterval(render, 500);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
