// Small DOM and formatting helpers. Text from the API (node names, firmware
// versions reported over the air) only ever goes in as text nodes, never as
// markup, so nothing a node or a registry entry says can run in the page.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function $(id) {
  return document.getElementById(id);
}

export function show(el, on) {
  el.hidden = !on;
}

export const STATE_LABELS = { ok: "ok", alarm: "alarm", failsafe: "fail-safe", silent: "silent" };

export function ago(t, now = Date.now() / 1000) {
  if (t === null || t === undefined) return "never";
  const d = Math.max(0, now - t);
  if (d < 60) return Math.round(d) + " s ago";
  if (d < 3600) return Math.round(d / 60) + " min ago";
  if (d < 86400) return (d / 3600).toFixed(d < 36000 ? 1 : 0) + " h ago";
  return Math.round(d / 86400) + " d ago";
}

export function clock(t) {
  return new Date(t * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
}

export function hhmm(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A field as the API gives it ({value, unit}) in words: "45.2 W", "on, boost", "leak".
export function fieldText(f) {
  if (!f || f.value === null || f.value === undefined) return "–";
  const v = f.value;
  if (Array.isArray(v)) {
    if (!v.length) return "none";
    const list = v.map((x) => (x === null ? "–" : x)).join(", ");
    return f.unit && v.some((x) => typeof x === "number") ? `${list} ${f.unit}` : list;
  }
  return f.unit ? `${v} ${f.unit}` : String(v);
}

export function words(name) {
  return String(name).replace(/_/g, " ");
}
