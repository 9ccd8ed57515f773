/*
 * Device actions in the web viewer: drop an app, photos or videos on the page to
 * install or add them (with upload progress), list apps to launch or terminate,
 * open a URL, set a location, rotate; and a grid of every session's live
 * thumbnail. It acts on the session app.js has open (window.bridgeViewer.state)
 * and shows the server's own error text when something is refused.
 *
 * Its state is window.bridgeActions.state, for the tests to read.
 */
(() => {
  "use strict";

  const APP_EXTENSIONS = [".ipa", ".zip"];
  const PHOTO_EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".heic", ".heif"];
  const VIDEO_EXTENSIONS = [".mp4", ".mov", ".m4v", ".avi", ".mkv"];
  const ROTATIONS = ["portrait", "landscapeleft", "portraitupsidedown", "landscaperight"];
  const THUMBNAIL_FPS = 2;
  const BINARY_HEADER_SIZE = 32; // then the JPEG (docs/protocol.md, binary video frames)

  const state = {
    sessionId: null,
    uploads: [], // {name, loaded, total, status, detail}
    lastResult: null, // {action, ok, status, detail}
    apps: [],
    orientation: "portrait",
    presets: [],
    grid: {}, // session_id -> {frames, state}
  };

  const $ = (id) => document.getElementById(id);

  function extensionOf(name) {
    const dot = name.lastIndexOf(".");
    return dot < 0 ? "" : name.slice(dot).toLowerCase();
  }

  /** What a dropped file is for: "app", "photos", "videos", or null. */
  function kindOf(name) {
    const extension = extensionOf(name);
    if (APP_EXTENSIONS.includes(extension)) return "app";
    if (PHOTO_EXTENSIONS.includes(extension)) return "photos";
    if (VIDEO_EXTENSIONS.includes(extension)) return "videos";
    return null;
  }

  function base() {
    return `/api/sessions/${encodeURIComponent(state.sessionId)}`;
  }

  function detailOf(status, body) {
    if (body && typeof body.detail === "string") return body.detail;
    return `HTTP ${status}`;
  }

  function report(action, ok, status, detail) {
    state.lastResult = { action, ok, status, detail };
    const element = $("actions-result");
    if (element) {
      element.textContent = ok ? `${action}: ${detail}` : `${action} refused: ${detail}`;
      element.dataset.kind = ok ? "ok" : "error";
    }
  }

  async function call(action, method, path, body) {
    if (!state.sessionId) return null;
    const options = { method };
    if (body) options.body = body;
    let response;
    try {
      response = await fetch(base() + path, options);
    } catch (error) {
      report(action, false, 0, String(error));
      return null;
    }
    let parsed = null;
    try {
      parsed = await response.json();
    } catch (error) {
      parsed = null;
    }
    if (!response.ok || !parsed || parsed.success === false) {
      report(action, false, response.status, detailOf(response.status, parsed));
      return null;
    }
    report(action, true, response.status, parsed.message || "done");
    return parsed;
  }

  /** POST a multipart form with upload progress (fetch has none, XMLHttpRequest does). */
  function upload(action, path, form, label) {
    const entry = { name: label, loaded: 0, total: 0, status: "uploading", detail: "" };
    state.uploads.push(entry);
    renderUploads();
    return new Promise((resolve) => {
      const request = new XMLHttpRequest();
      request.open("POST", base() + path);
      request.responseType = "json";
      request.upload.addEventListener("progress", (event) => {
        entry.loaded = event.loaded;
        entry.total = event.lengthComputable ? event.total : 0;
        renderUploads();
      });
      request.addEventListener("load", () => {
        const body = request.response;
        const ok = request.status >= 200 && request.status < 300 && body && body.success !== false;
        entry.status = ok ? "done" : "refused";
        entry.detail = ok ? body.message || "done" : detailOf(request.status, body);
        report(action, ok, request.status, entry.detail);
        renderUploads();
        resolve(ok ? body : null);
      });
      request.addEventListener("error", () => {
        entry.status = "failed";
        entry.detail = "the connection failed";
        report(action, false, 0, entry.detail);
        renderUploads();
        resolve(null);
      });
      request.send(form);
    });
  }

  function renderUploads() {
    const list = $("upload-list");
    if (!list) return;
    list.replaceChildren(
      ...state.uploads.slice(-5).map((entry) => {
        const item = document.createElement("li");
        const progress = document.createElement("progress");
        progress.max = entry.total || 1;
        progress.value = entry.total ? entry.loaded : entry.status === "uploading" ? 0 : 1;
        const text = document.createElement("span");
        text.textContent = `${entry.name}: ${entry.status}${entry.detail ? " — " + entry.detail : ""}`;
        item.append(progress, text);
        item.dataset.status = entry.status;
        return item;
      })
    );
  }

  async function dropFiles(files) {
    if (!state.sessionId) {
      report("upload", false, 0, "open a session first");
      return;
    }
    const groups = { app: [], photos: [], videos: [] };
    for (const file of files) {
      const kind = kindOf(file.name);
      if (kind) groups[kind].push(file);
      else report("upload", false, 0, `${file.name}: not an app, photo or video`);
    }
    for (const file of groups.app) {
      const form = new FormData();
      form.append(extensionOf(file.name) === ".ipa" ? "ipa_file" : "app_bundle", file);
      const launch = $("launch-after-install") && $("launch-after-install").checked;
      const path = launch ? "/apps/install-and-launch" : "/apps/install";
      if (await upload("install", path, form, file.name)) await refreshApps();
    }
    for (const kind of ["photos", "videos"]) {
      if (!groups[kind].length) continue;
      const form = new FormData();
      for (const file of groups[kind]) form.append(kind, file);
      const label = groups[kind].map((f) => f.name).join(", ");
      await upload(`add ${kind}`, `/media/${kind}/add`, form, label);
    }
  }

  async function refreshApps() {
    const body = await call("list apps", "GET", "/apps");
    state.apps = body ? body.apps : [];
    const list = $("app-list");
    if (!list) return;
    list.replaceChildren(
      ...state.apps.map((app) => {
        const item = document.createElement("li");
        item.dataset.bundleId = app.bundle_id;
        const name = document.createElement("span");
        name.textContent = `${app.app_name} (${app.bundle_id})`;
        const launch = document.createElement("button");
        launch.type = "button";
        launch.className = "small";
        launch.textContent = "Launch";
        launch.addEventListener("click", () =>
          call("launch", "POST", `/apps/${encodeURIComponent(app.bundle_id)}/launch`)
        );
        const terminate = document.createElement("button");
        terminate.type = "button";
        terminate.className = "small";
        terminate.textContent = "Terminate";
        terminate.addEventListener("click", () =>
          call("terminate", "POST", `/apps/${encodeURIComponent(app.bundle_id)}/terminate`)
        );
        item.append(name, launch, terminate);
        return item;
      })
    );
  }

  async function rotate() {
    const next = ROTATIONS[(ROTATIONS.indexOf(state.orientation) + 1) % ROTATIONS.length];
    const body = await call("rotate", "POST", "/orientation", new URLSearchParams({ orientation: next }));
    if (body) state.orientation = body.orientation;
  }

  async function loadPresets() {
    const select = $("location-preset");
    if (!select || !state.sessionId) return;
    const response = await fetch(base() + "/location/presets");
    if (!response.ok) return;
    state.presets = (await response.json()).presets;
    select.replaceChildren(
      ...state.presets.map((preset, index) => {
        const option = document.createElement("option");
        option.value = String(index);
        option.textContent = preset.name;
        return option;
      })
    );
  }

  function sessionChanged(sessionId) {
    state.sessionId = sessionId;
    state.apps = [];
    state.orientation = "portrait";
    const panel = $("device-actions");
    if (panel) panel.hidden = !sessionId;
    if (sessionId) loadPresets();
  }

  // --- the grid of live thumbnails ---------------------------------------------------------

  const thumbnails = new Map(); // session_id -> {socket, image, url}

  function openThumbnail(session, grid) {
    const tile = document.createElement("button");
    tile.type = "button";
    tile.className = "grid-tile";
    tile.dataset.sessionId = session.session_id;
    const image = document.createElement("img");
    image.alt = `${session.device_type} screen`;
    const caption = document.createElement("span");
    caption.textContent = `${session.device_type} · ${session.state}`;
    tile.append(image, caption);
    tile.addEventListener("click", () => {
      showGrid(false);
      window.bridgeViewer.open(session.session_id);
    });
    grid.append(tile);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const path = `/ws/${encodeURIComponent(session.session_id)}/video?format=binary&fps=${THUMBNAIL_FPS}`;
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.binaryType = "arraybuffer";
    const entry = { socket, image, url: null };
    state.grid[session.session_id] = { frames: 0, state: session.state };
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") return;
      const blob = new Blob([event.data.slice(BINARY_HEADER_SIZE)], { type: "image/jpeg" });
      if (entry.url) URL.revokeObjectURL(entry.url);
      entry.url = URL.createObjectURL(blob);
      image.src = entry.url;
      state.grid[session.session_id].frames += 1;
    });
    thumbnails.set(session.session_id, entry);
  }

  function closeThumbnails() {
    for (const entry of thumbnails.values()) {
      entry.socket.close();
      if (entry.url) URL.revokeObjectURL(entry.url);
    }
    thumbnails.clear();
    state.grid = {};
  }

  function showGrid(show) {
    const grid = $("session-grid");
    if (!grid) return;
    grid.hidden = !show;
    closeThumbnails();
    grid.replaceChildren();
    if (!show) return;
    for (const session of window.bridgeViewer.state.sessions || []) openThumbnail(session, grid);
  }

  // --- wiring ------------------------------------------------------------------------------

  function wire() {
    const drop = document.body;
    drop.addEventListener("dragover", (event) => {
      if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
        event.preventDefault();
        document.body.classList.add("dragging");
      }
    });
    drop.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
    drop.addEventListener("drop", (event) => {
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      event.preventDefault();
      document.body.classList.remove("dragging");
      dropFiles([...event.dataTransfer.files]);
    });
    const picker = $("upload-input");
    if (picker) picker.addEventListener("change", () => dropFiles([...picker.files]));
    const urlForm = $("url-form");
    if (urlForm) {
      urlForm.addEventListener("submit", (event) => {
        event.preventDefault();
        call("open URL", "POST", "/url/open", new URLSearchParams({ url: $("url-input").value }));
      });
    }
    const locationForm = $("location-form");
    if (locationForm) {
      locationForm.addEventListener("submit", (event) => {
        event.preventDefault();
        const preset = state.presets[Number($("location-preset").value)];
        if (!preset) return;
        const fields = { latitude: String(preset.latitude), longitude: String(preset.longitude) };
        call("set location", "POST", "/location/set", new URLSearchParams(fields));
      });
    }
    const rotateButton = $("rotate-button");
    if (rotateButton) rotateButton.addEventListener("click", rotate);
    const appsButton = $("apps-button");
    if (appsButton) appsButton.addEventListener("click", refreshApps);
    const gridButton = $("grid-button");
    if (gridButton) {
      gridButton.addEventListener("click", () => showGrid($("session-grid").hidden));
    }
    sessionChanged(null);
    // app.js owns which session is open; follow it.
    setInterval(() => {
      const current = window.bridgeViewer ? window.bridgeViewer.state.sessionId : null;
      if (current !== state.sessionId) sessionChanged(current);
    }, 250);
  }

  window.bridgeActions = { state, kindOf, dropFiles, refreshApps, rotate, showGrid };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
