/*
 * The H.264 transport: /ws/{id}/video?format=binary&codec=h264 decoded by WebCodecs.
 *
 * Each message is the 32-byte frame header and one Annex B access unit. The
 * decoder is configured from the first keyframe's SPS (codec "avc1.PPCCLL", no
 * description: Annex B carries SPS/PPS in band) with optimizeForLatency. Decoded
 * VideoFrames are drawn by the viewer as JPEG bitmaps are, with the header of
 * the message they came from, so taps, figures and input_seq work the same.
 * Without WebCodecs, or when nothing decodes within 3 s, it falls back to JPEG.
 */
"use strict";

(() => {
  const CODEC_H264 = 2;
  const FIRST_FRAME_MS = 3000;
  const MAX_WAITING_HEADERS = 120;

  /** The WebCodecs codec string from the SPS of an Annex B access unit, or null. */
  function codecFromAnnexB(bytes) {
    for (let i = 0; i + 3 < bytes.length; i += 1) {
      if (bytes[i] === 0 && bytes[i + 1] === 0 && bytes[i + 2] === 1) {
        const start = i + 3;
        if (start + 3 < bytes.length && (bytes[start] & 0x1f) === 7) {
          const hex = (value) => value.toString(16).padStart(2, "0");
          return `avc1.${hex(bytes[start + 1])}${hex(bytes[start + 2])}${hex(bytes[start + 3])}`;
        }
        i = start - 1;
      }
    }
    return null;
  }

  class H264Transport {
    constructor() {
      this.label = "H.264 (WebCodecs)";
      this.socket = null;
      this.decoder = null;
      this.codec = null;
      this.headers = new Map(); // chunk timestamp -> frame header, until decoded
      this.needKeyframe = true;
      this.watchdog = null;
      this.generation = 0;
    }

    start(sessionId) {
      this.stop();
      this.generation += 1;
      const generation = this.generation;
      const { lib } = window.bridgeViewer;
      const viewer = window.bridgeViewer.viewer;
      const state = window.bridgeViewer.state;
      state.framesDecoded = 0;
      state.fallbackReason = null;
      if (typeof window.VideoDecoder !== "function") {
        setTimeout(() => window.bridgeTransports.fallback("WebCodecs VideoDecoder is missing"));
        return;
      }
      this.socket = new lib.ReconnectingSocket({
        url: lib.wsUrl(`/ws/${encodeURIComponent(sessionId)}/video?format=binary&codec=h264`),
        binary: true,
        onMessage: (data) => this.onMessage(data),
        onClose: (event, plan, delay) => viewer.onSocketClose("video", event, plan, delay),
        onState: (value) => viewer.setVideoState(value),
      });
      this.socket.start();
      this.watchdog = setTimeout(() => {
        if (generation === this.generation && !state.framesDecoded) {
          window.bridgeTransports.fallback(`no H.264 frame decoded within ${FIRST_FRAME_MS / 1000} s`);
        }
      }, FIRST_FRAME_MS);
    }

    stop() {
      this.generation += 1;
      clearTimeout(this.watchdog);
      if (this.socket) this.socket.stop();
      this.socket = null;
      this.closeDecoder();
      this.codec = null;
    }

    closeDecoder() {
      if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
      this.decoder = null;
      this.headers.clear();
      this.needKeyframe = true;
    }

    openDecoder(codec) {
      const generation = this.generation;
      this.closeDecoder();
      this.decoder = new VideoDecoder({
        output: (frame) => this.onFrame(frame, generation),
        error: (error) => this.onError(error, generation),
      });
      this.decoder.configure({ codec, optimizeForLatency: true });
      this.codec = codec;
      window.bridgeTransports.setCodec(codec);
    }

    onMessage(data) {
      const { lib } = window.bridgeViewer;
      if (typeof data === "string") {
        try {
          const message = JSON.parse(data);
          if (message.type === "error") lib.logEvent(`video: ${message.message}`, "error");
        } catch {
          lib.logEvent("video: unexpected text message", "error");
        }
        return;
      }
      let header;
      try {
        header = lib.parseFrameHeader(data);
      } catch (error) {
        lib.logEvent(`video: ${error.message}`, "error");
        return;
      }
      if (header.codec !== CODEC_H264) {
        lib.logEvent(`video: expected H.264, got codec ${header.codec}`, "error");
        return;
      }
      window.bridgeTransports.received(data.byteLength);
      const state = window.bridgeViewer.state;
      state.framesReceived += 1;
      const payload = new Uint8Array(data, lib.HEADER_SIZE);
      if (header.keyframe) {
        const codec = codecFromAnnexB(payload);
        if (codec && (codec !== this.codec || !this.decoder || this.decoder.state === "closed")) {
          this.openDecoder(codec);
        }
        this.needKeyframe = false;
      } else if (this.needKeyframe || !this.decoder) {
        state.framesDropped += 1; // a P-frame without its keyframe decodes to garbage
        return;
      }
      const timestamp = header.seq;
      this.headers.set(timestamp, header);
      if (this.headers.size > MAX_WAITING_HEADERS) {
        this.headers.delete(this.headers.keys().next().value);
      }
      try {
        this.decoder.decode(new EncodedVideoChunk({
          type: header.keyframe ? "key" : "delta", timestamp, data: payload,
        }));
      } catch (error) {
        this.onError(error, this.generation);
      }
    }

    onFrame(frame, generation) {
      const header = this.headers.get(frame.timestamp);
      this.headers.delete(frame.timestamp);
      if (generation === this.generation && header) {
        window.bridgeViewer.state.framesDecoded += 1;
        window.bridgeViewer.viewer.draw(header, frame);
        if (this.socket) this.socket.healthy();
      }
      frame.close();
    }

    onError(error, generation) {
      if (generation !== this.generation) return;
      window.bridgeViewer.lib.logEvent(`H.264 decoder: ${error.message || error}`, "error");
      // Start again at the next keyframe, and ask for one now.
      this.closeDecoder();
      this.codec = null;
      if (this.socket) this.socket.send(JSON.stringify({ type: "keyframe" }));
    }
  }

  window.bridgeH264 = { codecFromAnnexB };
  window.bridgeTransports.register("h264", new H264Transport());
})();
