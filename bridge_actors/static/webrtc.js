/*
 * The WebRTC transport: /ws/{id}/webrtc signalling, the device's H.264 on a <video>.
 *
 * The page offers to receive one video track, sends the offer as ios-bridge's
 * viewers do ({"type": "offer", "sdp"}), applies the answer and trickles its ICE
 * candidates ({"type": "ice-candidate", "candidate"}) once the answer is in. The
 * server's peer sends the access units of the device's one H.264 encoder, the
 * same for every viewer. The <video> takes the canvas's place while this mode
 * runs; the connection state is shown in the video badge and in
 * bridgeViewer.state.webrtcState. Taps, swipes and keys on the <video> go to the
 * control socket as they do on the canvas, in the device's points (from the session's
 * size, turned with the picture). Without RTCPeerConnection, when the server
 * refuses the offer, or when no frame arrives within 10 s, the viewer says why
 * and goes back to JPEG.
 */
"use strict";

(() => {
  const FIRST_FRAME_MS = 10000;
  const STATS_MS = 1000;

  class WebRTCTransport {
    constructor() {
      this.label = "WebRTC";
      this.generation = 0;
      this.pc = null;
      this.ws = null;
      this.video = null;
      this.canvas = null;
      this.pending = [];
      this.answered = false;
      this.timers = [];
      this.bytes = 0;
      this.points = null; // the device's upright size in points
    }

    state() {
      return window.bridgeViewer.state;
    }

    setState(value) {
      const state = this.state();
      state.webrtcState = value;
      const badge = document.getElementById("status");
      const shown = value === "connected" ? (state.framesDecoded ? "live" : "connecting") : value;
      state.status = shown;
      badge.textContent = shown;
      badge.dataset.state = shown;
    }

    fail(reason) {
      const generation = this.generation;
      this.setState("failed");
      this.state().webrtcError = reason;
      // After this call returns: the fallback reopens the session, which stops us.
      setTimeout(() => {
        if (generation === this.generation) window.bridgeTransports.fallback(reason);
      });
    }

    start(sessionId, canvas) {
      this.stop();
      this.generation += 1;
      const generation = this.generation;
      const state = this.state();
      state.framesDecoded = 0;
      state.webrtcError = null;
      state.fallbackReason = null;
      if (typeof window.RTCPeerConnection !== "function") {
        this.fail("RTCPeerConnection is missing in this browser");
        return;
      }
      this.canvas = canvas;
      this.video = this.makeVideo(canvas);
      this.readPoints(sessionId, generation);
      this.setState("new");
      const { lib } = window.bridgeViewer;
      this.pc = new RTCPeerConnection({ iceServers: [] });
      this.pc.addTransceiver("video", { direction: "recvonly" });
      this.pc.ontrack = (event) => {
        if (generation !== this.generation) return;
        this.video.srcObject = event.streams[0] || new MediaStream([event.track]);
        this.video.play().catch(() => {});
      };
      this.pc.onicecandidate = (event) => {
        const candidate = event.candidate ? event.candidate.toJSON() : null;
        if (this.answered) this.send({ type: "ice-candidate", candidate });
        else this.pending.push(candidate);
      };
      this.pc.onconnectionstatechange = () => {
        if (generation !== this.generation) return;
        const value = this.pc.connectionState;
        this.setState(value);
        lib.logEvent(`WebRTC ${value}`);
        if (value === "failed") this.fail("the WebRTC connection failed");
      };
      this.ws = new WebSocket(lib.wsUrl(`/ws/${encodeURIComponent(sessionId)}/webrtc`));
      this.ws.onopen = () => this.offer(generation);
      this.ws.onmessage = (event) => this.onMessage(event.data, generation);
      this.ws.onclose = (event) => {
        if (generation === this.generation && this.pc && this.pc.connectionState !== "connected") {
          this.fail(`signalling closed (${event.code}${event.reason ? ` ${event.reason}` : ""})`);
        }
      };
      this.watchFrames(generation);
      this.timers.push(setTimeout(() => {
        if (generation === this.generation && !state.framesDecoded) {
          this.fail(`no WebRTC frame within ${FIRST_FRAME_MS / 1000} s`);
        }
      }, FIRST_FRAME_MS));
      this.timers.push(setInterval(() => this.readStats(generation), STATS_MS));
    }

    makeVideo(canvas) {
      const video = document.createElement("video");
      video.id = "device-video";
      video.autoplay = true;
      video.muted = true;
      video.playsInline = true;
      video.setAttribute("aria-label", "Device screen (WebRTC)");
      Object.assign(video.style, {
        display: "block", maxWidth: "100%", maxHeight: "calc(100vh - 10rem)", borderRadius: "8px",
      });
      video.tabIndex = 0;
      video.style.touchAction = "none";
      video.style.cursor = "crosshair";
      canvas.style.display = "none";
      canvas.after(video);
      window.bridgeViewer.viewer.bindSurface(video);
      return video;
    }

    async readPoints(sessionId, generation) {
      try {
        const response = await fetch(`/api/sessions/${encodeURIComponent(sessionId)}`, {
          cache: "no-store",
        });
        const info = await response.json();
        if (generation !== this.generation || !response.ok) return;
        this.points = { width: info.device_width, height: info.device_height };
      } catch {
        // Without the size no point can be computed: the video is shown, input waits.
      }
    }

    /** The viewer's frame for input: the picture's pixels and the points they stand for. */
    showFrame(video) {
      if (!this.points || !video.videoWidth) return;
      let { width, height } = this.points;
      if (video.videoWidth > video.videoHeight !== width > height) [width, height] = [height, width];
      window.bridgeViewer.viewer.frame = {
        pixelWidth: video.videoWidth, pixelHeight: video.videoHeight,
        pointWidth: width, pointHeight: height,
      };
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    }

    async offer(generation) {
      try {
        const offer = await this.pc.createOffer();
        await this.pc.setLocalDescription(offer);
        if (generation !== this.generation) return;
        this.setState("connecting");
        this.send({ type: "offer", sdp: offer.sdp });
      } catch (error) {
        if (generation === this.generation) this.fail(`cannot make an offer: ${error.message}`);
      }
    }

    async onMessage(data, generation) {
      if (generation !== this.generation) return;
      const { lib } = window.bridgeViewer;
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        lib.logEvent("webrtc: unexpected message", "error");
        return;
      }
      if (message.type === "answer") {
        try {
          await this.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        } catch (error) {
          this.fail(`the answer was refused: ${error.message}`);
          return;
        }
        this.answered = true;
        for (const candidate of this.pending) this.send({ type: "ice-candidate", candidate });
        this.pending = [];
      } else if (message.type === "error") {
        lib.logEvent(message.message || message.error, "error");
        if (message.code === "OFFER_FAILED" || message.code === "CONNECTION_FAILED") {
          this.fail(message.message || message.error);
        }
      }
    }

    watchFrames(generation) {
      const video = this.video;
      const state = this.state();
      const onFrame = () => {
        if (generation !== this.generation) return;
        state.framesDecoded += 1;
        state.framesDrawn += 1;
        state.framesReceived += 1;
        if (state.framesDecoded === 1) {
          document.getElementById("screen-placeholder").hidden = true;
          this.setState(this.pc.connectionState);
        }
        this.showFrame(video);
        const size = `${video.videoWidth}×${video.videoHeight}`;
        document.getElementById("resolution").textContent = size;
        document.getElementById("frames-drawn").textContent = String(state.framesDrawn);
        video.requestVideoFrameCallback(onFrame);
      };
      if (typeof video.requestVideoFrameCallback === "function") {
        video.requestVideoFrameCallback(onFrame);
      } else {
        video.addEventListener("timeupdate", onFrame);
      }
    }

    async readStats(generation) {
      if (!this.pc || generation !== this.generation) return;
      const state = this.state();
      state.fps = state.framesDecoded - (this.framesBefore || 0);
      this.framesBefore = state.framesDecoded;
      document.getElementById("fps").textContent = String(state.fps);
      const report = await this.pc.getStats();
      report.forEach((entry) => {
        if (entry.type !== "inbound-rtp" || entry.kind !== "video") return;
        const delta = entry.bytesReceived - this.bytes;
        this.bytes = entry.bytesReceived;
        if (delta > 0) window.bridgeTransports.received(delta);
        const codec = entry.codecId && report.get(entry.codecId);
        if (codec) window.bridgeTransports.setCodec(`${codec.mimeType.replace("video/", "")} (WebRTC)`);
      });
    }

    stop() {
      this.generation += 1;
      for (const timer of this.timers) {
        clearTimeout(timer);
        clearInterval(timer);
      }
      this.timers = [];
      if (this.ws) {
        this.ws.onclose = null;
        this.ws.close();
      }
      if (this.pc) this.pc.close();
      if (this.video) {
        this.video.srcObject = null;
        this.video.remove();
      }
      if (this.canvas) this.canvas.style.display = "";
      this.ws = this.pc = this.video = this.canvas = this.points = null;
      this.pending = [];
      this.answered = false;
      this.bytes = 0;
      this.framesBefore = 0;
    }
  }

  window.bridgeTransports.register("webrtc", new WebRTCTransport());
})();
