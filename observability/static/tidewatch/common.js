/* Shared by the dashboards: the live socket (snapshot, then events, reconnect with ?after=),
   the admin theme's colours for Chart.js, and small formatters. */
"use strict";
window.TW = (function () {
  const STATUS_COLOURS = {};
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  for (const s of ["pending", "queued", "running", "succeeded", "failed", "skipped", "cancelled", "lost"]) {
    STATUS_COLOURS[s] = css("--tw-" + s);
  }
  STATUS_COLOURS.waiting_approval = css("--tw-waiting");

  /* Chart.js in the admin's colours; again, with every chart redrawn, when the admin's theme
     toggle (html[data-theme]) or the system's scheme changes. */
  function theme() {
    if (!window.Chart) return;
    const apply = () => {
      Chart.defaults.color = css("--body-quiet-color") || "#666";
      Chart.defaults.borderColor = css("--hairline-color") || "#ddd";
      for (const chart of Object.values(Chart.instances)) chart.update("none");
    };
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.animation = false;
    apply();
    new MutationObserver(apply).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", apply);
  }

  /* Open `path`; handlers.snapshot(message) on connect, handlers.event(event) for each event.
     A closed socket reconnects after a second with ?after=<last id seen> (no gap, no duplicate);
     a refusal (4400-4404) stays closed. restart() reconnects for a fresh snapshot. */
  function live(path, handlers) {
    const badge = document.getElementById("tw-live");
    let after = null;
    let ws = null;
    const say = (text) => { if (badge) badge.textContent = text; };
    function open() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      ws = new WebSocket(scheme + location.host + path + (after === null ? "" : "?after=" + after));
      ws.onopen = () => say("live");
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.type === "snapshot") {
          after = m.after;
          handlers.snapshot(m);
        } else if (m.type !== "resync") {
          if (m.id) after = Math.max(after || 0, m.id);
          handlers.event(m);
        }
        window.twLastApplied = performance.now();
      };
      ws.onclose = (e) => {
        if (e.code >= 4400 && e.code < 4500) { say("closed (" + e.code + ")"); return; }
        say("reconnecting…");
        setTimeout(open, 1000);
      };
    }
    open();
    return { restart() { after = null; ws.close(); } };
  }

  function duration(seconds) {
    if (seconds == null || isNaN(seconds)) return "-";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + "s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + "m " + s + "s";
    return Math.floor(m / 60) + "h " + (m % 60) + "m";
  }

  const ms = (iso) => (iso ? Date.parse(iso) : null);
  const el = (tag, attrs, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  };
  const json = (id) => JSON.parse(document.getElementById(id).textContent);

  return { live, theme, duration, ms, el, json, css, STATUS_COLOURS };
})();
