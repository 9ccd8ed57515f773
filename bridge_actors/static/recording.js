/*
 * Recording in the web viewer: "Record" starts recording the open session's screen on
 * the server, "Stop and download" stops it and saves the MP4 the server answers.
 * While it runs the elapsed time is shown from the server's status (so a recording
 * started elsewhere, or stopped by a cap, shows as it is); a refusal shows the
 * server's own error text. It follows the session app.js has open
 * (window.bridgeViewer.state).
 *
 * Its state is window.bridgeRecording.state, for the tests to read.
 */
(() => {
  "use strict";

  const POLL_MS = 500;

  const state = {
    sessionId: null,
    recording: false,
    elapsed: 0,
    stopReason: null,
    lastError: null,
    downloads: 0, // MP4 files handed to the browser
    lastDownload: null, // {name, bytes}
    checked: false, // the open session's status was read once
  };

  const $ = (id) => document.getElementById(id);

  /**
   * Whether this page may record: yes without a token (auth.js then sends none), with
   * one only once whoami named a role above spectator. Null while that is unknown.
   */
  function mayControl() {
    const auth = window.bridgeAuth;
    if (!auth || !auth.token) return true;
    if (!auth.role) return null;
    return auth.role !== "spectator";
  }
  const base = () => `/api/sessions/${encodeURIComponent(state.sessionId)}/recording`;

  function formatElapsed(seconds) {
    const whole = Math.floor(seconds);
    const minutes = Math.floor(whole / 60);
    return `${minutes}:${String(whole % 60).padStart(2, "0")}`;
  }

  function render() {
    const start = $("record-button");
    const stop = $("record-stop-button");
    const line = $("record-status");
    if (start) start.disabled = !state.sessionId || state.recording;
    if (stop) stop.disabled = !state.sessionId || !state.recording;
    if (!line) return;
    if (state.lastError) {
      line.textContent = state.lastError;
      line.dataset.kind = "error";
    } else if (state.recording) {
      line.textContent = `Recording ${formatElapsed(state.elapsed)}`;
      line.dataset.kind = "ok";
    } else if (state.stopReason) {
      line.textContent = `Stopped: ${state.stopReason}`;
      line.dataset.kind = "ok";
    } else {
      line.textContent = "";
      delete line.dataset.kind;
    }
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      return body.detail || `HTTP ${response.status}`;
    } catch (error) {
      return `HTTP ${response.status}`;
    }
  }

  async function refresh() {
    if (!state.sessionId) return;
    let response;
    try {
      response = await fetch(base() + "/status");
    } catch (error) {
      return; // the next poll tries again
    }
    if (!response.ok) return;
    const status = await response.json();
    state.recording = status.is_recording;
    state.elapsed = status.elapsed_seconds;
    state.stopReason = status.state === "finished" ? status.stop_reason : null;
    render();
  }

  async function start() {
    state.lastError = null;
    const response = await fetch(base() + "/start", { method: "POST" });
    if (!response.ok) {
      state.lastError = await detailOf(response);
    } else {
      state.recording = true;
      state.elapsed = 0;
      state.stopReason = null;
    }
    render();
  }

  function filenameOf(response) {
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    return match ? match[1] : "recording.mp4";
  }

  async function stopAndDownload() {
    state.lastError = null;
    const response = await fetch(base() + "/stop", { method: "POST" });
    if (!response.ok) {
      state.lastError = await detailOf(response);
      render();
      return;
    }
    const blob = await response.blob();
    const name = filenameOf(response);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    state.recording = false;
    state.stopReason = null;
    state.downloads += 1;
    state.lastDownload = { name, bytes: blob.size };
    render();
  }

  function sessionChanged(sessionId) {
    state.sessionId = sessionId;
    state.recording = false;
    state.elapsed = 0;
    state.stopReason = null;
    state.lastError = null;
    state.checked = false;
    showPanel();
    render();
  }

  // A spectator is not offered recording (the routes need control): no button, no status.
  function showPanel() {
    const panel = $("recording-panel");
    if (panel) panel.hidden = !state.sessionId || mayControl() !== true;
  }

  function wire() {
    const startButton = $("record-button");
    if (startButton) startButton.addEventListener("click", start);
    const stopButton = $("record-stop-button");
    if (stopButton) stopButton.addEventListener("click", stopAndDownload);
    sessionChanged(null);
    setInterval(() => {
      const current = window.bridgeViewer ? window.bridgeViewer.state.sessionId : null;
      if (current !== state.sessionId) sessionChanged(current);
      if (!state.sessionId || mayControl() !== true) return;
      showPanel();
      if (!state.checked || state.recording) {
        state.checked = true;
        refresh(); // a recording started elsewhere, or stopped by a cap, shows as it is
      }
    }, POLL_MS);
  }

  window.bridgeRecording = { state, start, stopAndDownload, refresh, formatElapsed };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
