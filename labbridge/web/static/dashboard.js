// labbridge dashboard: shared helpers for the pages (no framework, no build step, nothing fetched elsewhere).
// - send(): the ONE function every non-GET request goes through (CSRF header from the labbridge_csrf cookie);
// - getJson(): GET with the same 401 handling (to /login);
// - live(): the server-sent events (/api/events) with EventSource's own retry, and a visible "connection lost".
"use strict";

const LB = (() => {
  const STATES = ["failed", "down", "degraded", "idle", "connecting", "up", "planned"];
  // A shape beside every color: state is never shown by color alone.
  const ICONS = {up: "●", idle: "○", connecting: "◔", degraded: "▲", down: "▼", failed: "■", planned: "◇",
                 stopped: "–"};
  const ATTENTION = new Set(["failed", "down", "degraded"]);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k);
    return e;
  }

  // "stopped" in the link history: labbridge was not running (or had not started): no state is known.
  const WORDS = {stopped: "not running"};

  function badge(state) {
    const s = state || "stopped";
    return el("span", {class: `state s-${s}`, "data-state": s},
      el("span", {class: "icon", "aria-hidden": "true"}, ICONS[s] || "?"), el("span", {class: "word"}, WORDS[s] || s));
  }

  // A time as the API gives it: ISO 8601, or seconds since the epoch.
  function ms(t) { return typeof t === "number" ? t * 1000 : Date.parse(t); }

  function ago(t) {
    if (t === null || t === undefined || t === "") return "never";
    const s = Math.max(0, (Date.now() - ms(t)) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400 * 2) return `${(s / 3600).toFixed(1)} h ago`;
    return `${Math.round(s / 86400)} days ago`;
  }

  function when(t) {
    return t === null || t === undefined ? "—"
      : new Date(ms(t)).toLocaleString([], {dateStyle: "short", timeStyle: "medium"});
  }

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [k, ...v] = part.trim().split("=");
      if (k === name) return decodeURIComponent(v.join("="));
    }
    return null;
  }

  function toLogin() {
    const next = encodeURIComponent(location.pathname + location.search);
    location.assign(`/login?next=${next}`);
  }

  async function answer(response) {
    if (response.status === 401) { toLogin(); throw new Error("not signed in"); }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
    return body;
  }

  async function getJson(url) {
    return answer(await fetch(url, {cache: "no-store", credentials: "same-origin"}));
  }

  // Every change the pages ask for goes through here: JSON body, the CSRF token when the cookie is set.
  async function send(method, url, body) {
    const headers = {"Content-Type": "application/json", "Accept": "application/json"};
    const token = cookie("labbridge_csrf");
    if (token) headers["X-CSRF-Token"] = token;
    return answer(await fetch(url, {method, headers, credentials: "same-origin",
                                    body: body === undefined ? undefined : JSON.stringify(body)}));
  }

  // Live updates: handlers {snapshot, instrument, campaign, lis, today}; the status element shows the link.
  function live(handlers, statusEl, bannerEl) {
    const show = (mode, text) => {
      statusEl.dataset.live = mode;
      statusEl.querySelector(".text").textContent = text;
      if (bannerEl) bannerEl.hidden = mode !== "lost";
    };
    show("connecting", "connecting…");
    const source = new EventSource("/api/events");
    let opened = false;
    source.onopen = () => { opened = true; show("open", "live"); };
    source.onerror = () => {
      // EventSource retries by itself (the server says every 3 s); a 401 closes it: sign in again.
      if (source.readyState === EventSource.CLOSED) {
        show("lost", "connection lost");
        fetch("/api/sites", {credentials: "same-origin"}).then(r => { if (r.status === 401) toLogin(); })
          .catch(() => {});
        setTimeout(() => live(handlers, statusEl, bannerEl), 5000);
      } else {
        show("lost", opened ? "connection lost — reconnecting…" : "connection lost");
      }
    };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, ev => {
        show("open", "live");
        let data;
        try { data = JSON.parse(ev.data); } catch (_) { return; }
        fn(data);
      });
    }
    return source;
  }

  // A page restored from the back-forward cache would show what it knew when left, with no stream: load it anew.
  window.addEventListener("pageshow", ev => { if (ev.persisted) location.reload(); });

  // Bring ``old`` to look like ``fresh`` in place (attributes, text, children), so a focused link or button
  // keeps its focus and a screen reader its place while the page updates itself.
  function patch(old, fresh) {
    if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) { old.replaceWith(fresh); return; }
    if (old.nodeType === Node.TEXT_NODE) {
      if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
      return;
    }
    for (const a of [...old.attributes]) if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name);
    for (const a of [...fresh.attributes]) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    const before = [...old.childNodes], after = [...fresh.childNodes];
    after.forEach((node, k) => { if (k < before.length) patch(before[k], node); else old.append(node); });
    for (const node of before.slice(after.length)) node.remove();
  }

  // Screen readers hear state changes (aria-live region), once each.
  // The region is a log of the last few (a change elsewhere a moment later does not erase one unheard).
  const ANNOUNCED = 20;
  function announce(text) {
    const region = document.getElementById("announce");
    if (!region) return;
    region.append(el("p", {}, text));
    while (region.childElementCount > ANNOUNCED) region.firstElementChild.remove();
  }

  return {STATES, ICONS, ATTENTION, el, badge, ago, when, getJson, send, live, patch, announce, toLogin};
})();
