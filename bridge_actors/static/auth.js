/*
 * Credentials for the viewer. A share link opens the viewer as
 * /#token=<link>&session=<id>: the fragment never reaches the server (nor any
 * Referer), so the token is taken from it here, kept for this tab only
 * (sessionStorage), and the address bar is left showing #session=<id>.
 *
 * With a token, every same-origin fetch carries "Authorization: Bearer" and every
 * same-origin WebSocket offers the subprotocol "bridge.token.<token>" (a browser
 * cannot set headers on a WebSocket). No cookie is ever used, so no other site's
 * page can borrow these credentials. Loaded before app.js, which it does not change.
 */
(() => {
  "use strict";
  const STORAGE_KEY = "bridge_actors.token";
  const SUBPROTOCOL_PREFIX = "bridge.token.";

  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(STORAGE_KEY, fragment.get("token"));
    const session = fragment.get("session");
    const rest = session ? `#session=${encodeURIComponent(session)}` : "";
    history.replaceState(null, "", location.pathname + location.search + rest);
  }
  const token = sessionStorage.getItem(STORAGE_KEY);
  const auth = { token: token ? "(set)" : null, role: null, name: null };
  window.bridgeAuth = auth;
  if (!token) return;

  const sameOrigin = (url) => {
    try {
      return new URL(url, location.href).host === location.host;
    } catch {
      return false;
    }
  };

  const NativeWebSocket = window.WebSocket;
  class CredentialedWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      const offered = protocols === undefined ? [] : [].concat(protocols);
      if (sameOrigin(url)) offered.push(SUBPROTOCOL_PREFIX + token);
      super(url, offered);
    }
  }
  window.WebSocket = CredentialedWebSocket;

  const nativeFetch = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const url = input instanceof Request ? input.url : String(input);
    if (!sameOrigin(url)) return nativeFetch(input, init);
    const headers = new Headers(init.headers || (input instanceof Request ? input.headers : {}));
    if (!headers.has("Authorization")) headers.set("Authorization", `Bearer ${token}`);
    return nativeFetch(input, { ...init, headers });
  };

  function showRole(me) {
    auth.role = me.role;
    auth.name = me.name;
    const badge = document.getElementById("auth-role");
    if (!badge) return;
    badge.textContent = me.role === "spectator" ? "spectator: watch only" : me.role;
    badge.dataset.state = me.role;
    badge.hidden = false;
  }

  const whoami = nativeFetch("/api/auth/whoami", {
    cache: "no-store",
    headers: { Authorization: `Bearer ${token}` },
  }).then((response) => (response.ok ? response.json() : null));
  const ready = document.readyState === "loading"
    ? new Promise((resolve) => document.addEventListener("DOMContentLoaded", resolve))
    : Promise.resolve();
  Promise.all([whoami, ready]).then(([me]) => {
    if (me) showRole(me);
  }).catch(() => {});
})();
