// The public page: map, ledger, open requests, report form. Everything the
// server or a resident wrote goes in as text nodes (textContent), never as
// markup: a description with <script> in it shows as those characters.

import { LANG, T, num, serviceName } from "./i18n.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const M_PER_DEG = 111320;

function fill(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const h = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
const s = (tag, attrs, ...children) => fill(document.createElementNS(SVG_NS, tag), attrs, children);
const $ = (id) => document.getElementById(id);

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return r.json();
}

// -- texts ------------------------------------------------------------------

function translate() {
  for (const el of document.querySelectorAll("[data-i18n]")) {
    const v = T[el.dataset.i18n];
    if (typeof v === "string") el.textContent = v;
  }
  document.title = T.title;
  $("lang-nav").setAttribute("aria-label", LANG === "fr" ? "Langue" : "Language");
  $(`lang-${LANG}`).setAttribute("aria-current", "page");
}

// -- the map: a local equirectangular projection, north up --------------------

function drawMap(nodes) {
  const svg = $("map");
  const W = 800, H = 420, PAD = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren(s("rect", { class: "map-bg", x: 0, y: 0, width: W, height: H }));
  $("map-empty").hidden = nodes.length > 0;
  if (!nodes.length) return;
  const lat0 = nodes.reduce((a, n) => a + n.lat, 0) / nodes.length;
  const k = Math.cos((lat0 * Math.PI) / 180);
  const pts = nodes.map((n) => ({ n, x: n.lon * k * M_PER_DEG, y: -n.lat * M_PER_DEG }));
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, ((y1 - y0) * (W - 2 * PAD)) / (H - 2 * PAD), 200);
  const scale = (W - 2 * PAD) / span;
  let step = 1;
  for (const c of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]) if (c * scale <= W / 5) step = c;
  svg.append(s("g", { class: "scale", transform: `translate(${PAD},${H - PAD / 2})` },
    s("line", { x1: 0, y1: 0, x2: step * scale, y2: 0 }),
    s("text", { x: 0, y: -6, text: step >= 1000 ? `${step / 1000} km` : `${step} m` })));
  svg.append(s("text", { class: "north", x: W - PAD, y: PAD, "text-anchor": "middle", text: "N ↑" }));
  for (const p of pts) {
    p.px = W / 2 + (p.x - (x0 + x1) / 2) * scale;
    p.py = H / 2 + (p.y - (y0 + y1) / 2) * scale;
  }
  // One name per street or park, under its marks (the markers' own names say it to screen readers)
  const sites = new Map();
  for (const p of pts) if (p.n.site) sites.set(p.n.site, [...(sites.get(p.n.site) || []), p]);
  for (const [site, ps] of sites) {
    const cx = ps.reduce((a, p) => a + p.px, 0) / ps.length;
    const cy = Math.max(...ps.map((p) => p.py)) + 24;
    const anchor = cx < W / 4 ? "start" : cx > (3 * W) / 4 ? "end" : "middle";
    svg.append(s("text", { class: "site-label", x: cx, y: Math.min(cy, H - 8), "text-anchor": anchor,
      "aria-hidden": "true", text: site }));
  }
  for (const p of pts) {
    const [px, py] = [p.px, p.py];
    const n = p.n;
    const label = `${T[n.kind] || n.kind}, ${n.site || "?"}: ${n.fault ? T.fault : T.ok}`;
    const shape = n.kind === "irrigation"
      ? s("rect", { x: px - 8, y: py - 8, width: 16, height: 16, rx: 2 })
      : s("circle", { cx: px, cy: py, r: 8 });
    const g = s("g", { class: "marker" + (n.fault ? " fault" : ""), tabindex: 0, role: "button",
      "data-kind": n.kind, "aria-label": label }, s("title", { text: label }), shape);
    const pick = () => {
      $("lat").value = n.lat.toFixed(6);
      $("long").value = n.lon.toFixed(6);
      for (const o of $("service").options) {
        if (o.dataset.kind === n.kind) { $("service").value = o.value; break; }
      }
      $("result").replaceChildren(h("p", { text: T.picked(n.site || T[n.kind]) }));
      $("service").focus();
    };
    g.addEventListener("click", pick);
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
    svg.append(g);
  }
}

// -- the ledger: bar charts with a table beside each ----------------------------

function barChart(svg, rows, usedKey, baseKey, baseLabel) {
  const W = 800, ROW = 44, LEFT = 220, TOP = 30;
  const H = TOP + Math.max(1, rows.length) * ROW + 10;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const max = Math.max(1e-9, ...rows.flatMap((r) => [r[usedKey] || 0, r[baseKey] || 0]));
  const bw = (v) => ((v || 0) / max) * (W - LEFT - 90);
  svg.append(s("g", { class: "legend" },
    s("rect", { class: "bar-used", x: LEFT, y: 6, width: 14, height: 12 }),
    s("text", { x: LEFT + 20, y: 17, text: T.used }),
    s("rect", { class: "bar-base", x: LEFT + 140, y: 6, width: 14, height: 12 }),
    s("text", { x: LEFT + 160, y: 17, text: baseLabel })));
  rows.forEach((r, i) => {
    const y = TOP + i * ROW;
    svg.append(s("g", { class: "bar-row" },
      s("text", { class: "bar-label", x: LEFT - 8, y: y + 20, "text-anchor": "end", text: r.name }),
      s("rect", { class: "bar-used", x: LEFT, y: y + 4, width: bw(r[usedKey]), height: 16 }),
      s("text", { x: LEFT + bw(r[usedKey]) + 6, y: y + 17, text: num(r[usedKey]) }),
      s("rect", { class: "bar-base", x: LEFT, y: y + 22, width: bw(r[baseKey]), height: 16 }),
      s("text", { x: LEFT + bw(r[baseKey]) + 6, y: y + 35, text: num(r[baseKey]) })));
  });
}

function table(caption, cols, rows) {
  return h("table", {},
    h("caption", { text: caption }),
    h("thead", {}, h("tr", {}, cols.map(([label], i) => h("th", { scope: "col", text: label, class: i ? "n" : null })))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map(([, get], i) =>
      i ? h("td", { class: "n", text: get(r) }) : h("th", { scope: "row", text: get(r) }))))));
}

async function showLedger(date) {
  $("ledger-status").textContent = T.loading;
  let doc;
  try {
    doc = await getJSON(`/ledger/daily.json?date=${encodeURIComponent(date)}`);
  } catch (e) {
    $("ledger-status").textContent = T.ledger_error(e.message);
    return;
  }
  const streets = doc.streets.filter((r) => r.energy_kwh !== null);
  const parks = doc.parks.filter((r) => r.water_m3 !== null);
  $("ledger-status").textContent = streets.length || parks.length ? "" : T.ledger_none;
  const c = doc.city || {};
  $("ledger-summary").replaceChildren(h("p", { text: T.summary({
    date: doc.date, kwh: num(c.energy_kwh), bkwh: num(c.energy_baseline_kwh), m3: num(c.water_m3, 3),
    bm3: num(c.water_baseline_m3, 3), eur: num(c.eur_saved), co2: num(c.kgco2_avoided) }) }));
  barChart($("energy-chart"), streets, "energy_kwh", "energy_baseline_kwh", T.baseline_e.split(" (")[0]);
  barChart($("water-chart"), parks, "water_m3", "water_baseline_m3", T.baseline_w);
  $("energy-table").replaceChildren(table(T.energy_h, [
    [T.col_street, (r) => r.name], [T.col_used_kwh, (r) => num(r.energy_kwh)],
    [T.col_base_kwh, (r) => num(r.energy_baseline_kwh)], [T.col_saved, (r) => num(r.energy_saved_pct, 1)]], streets));
  $("water-table").replaceChildren(table(T.water_h, [
    [T.col_park, (r) => r.name], [T.col_used_m3, (r) => num(r.water_m3, 3)],
    [T.col_base_m3, (r) => num(r.water_baseline_m3, 3)], [T.col_saved, (r) => num(r.water_saved_pct, 1)]], parks));
  $("ledger-method").textContent = doc.method || "";
}

// -- open requests ------------------------------------------------------------

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(LANG, { dateStyle: "medium", timeStyle: "short" });
}

async function showRequests() {
  let list;
  try {
    list = await getJSON("/open311/v2/requests.json?status=open");
  } catch (e) {
    $("requests-status").textContent = T.requests_error(e.message);
    return;
  }
  $("requests-status").textContent = list.length ? T.requests_count(list.length) : T.requests_none;
  $("requests").replaceChildren(...list.map((r) => h("li", { class: "request", "data-id": r.service_request_id },
    h("p", { class: "req-head" },
      h("strong", { text: serviceName(r.service_code, r.service_name) }),
      ` · ${T["status_" + r.status] || r.status} · ${T.reported} ${when(r.requested_datetime)}`),
    h("p", { class: "verdict", text: `${T.verdict}: ${T["verdict_" + r.lumeau_verdict] || r.lumeau_verdict}` }),
    r.lumeau_source === "device" ? h("p", { text: T.by_device }) : null,
    r.lumeau_reports ? h("p", { class: "reports", text: T.reports(r.lumeau_reports) }) : null,
    r.address ? h("p", { class: "address", text: r.address }) : null,
    r.description ? h("p", { class: "description", text: r.description }) : null)));
}

// -- the report form ----------------------------------------------------------

let config = null;

async function loadServices() {
  const services = await getJSON("/open311/v2/services.json");
  const kinds = { lighting: ["lamp_out", "lamp_on_by_day", "lamp_flickering", "too_dark", "damaged_lamp_post"],
    irrigation: ["water_leak", "broken_sprinkler", "lawn_not_watered", "watering_in_rain"] };
  const kindOf = (code) => Object.keys(kinds).find((k) => kinds[k].includes(code));
  $("service").replaceChildren(...services.filter((x) => x.service_code !== "device_fault").map((x) =>
    h("option", { value: x.service_code, "data-kind": kindOf(x.service_code) || "", text: serviceName(x.service_code, x.service_name) })));
}

async function submitReport(ev) {
  ev.preventDefault();
  const out = $("result");
  const button = $("submit");
  button.disabled = true;
  out.replaceChildren(h("p", { text: T.sending }));
  const body = new URLSearchParams();
  body.set("api_key", config.api_key);
  for (const el of $("report").elements) {
    if (el.name && el.value.trim()) body.set(el.name, el.value.trim());
  }
  try {
    const r = await fetch("/open311/v2/requests.json", { method: "POST", body }); // form-encoded, as the spec says
    const doc = await r.json();
    if (r.status === 201) {
      const [got] = doc;
      let verdict = "";
      try {
        const [req] = await getJSON(`/open311/v2/requests/${encodeURIComponent(got.service_request_id)}.json`);
        verdict = T["verdict_" + req.lumeau_verdict] || req.lumeau_verdict;
      } catch { /* the notice below says it too */ }
      out.replaceChildren(
        h("p", { class: "ok", text: T.sent(got.service_request_id, got.token) }),
        verdict ? h("p", { class: "verdict", text: `${T.verdict}: ${verdict}` }) : null,
        h("p", { class: "notice", lang: "en", text: got.service_notice }));
      $("report").reset();
      showRequests();
    } else if (r.status === 429) {
      out.replaceChildren(h("p", { class: "error", text: T.too_many(r.headers.get("Retry-After") || "?") }));
    } else {
      out.replaceChildren(h("p", { class: "error", text: T.refused }),
        h("ul", { lang: "en" }, (Array.isArray(doc) ? doc : []).map((e) => h("li", { text: e.description }))));
    }
  } catch {
    out.replaceChildren(h("p", { class: "error", text: T.net_error }));
  } finally {
    button.disabled = false;
  }
}

// -- start ----------------------------------------------------------------------

async function start() {
  translate();
  const params = new URLSearchParams(location.search);
  const y = new Date(Date.now() - 86400000).toISOString().slice(0, 10);
  $("ledger-date").value = /^\d{4}-\d{2}-\d{2}$/.test(params.get("date") || "") ? params.get("date") : y;
  $("ledger-form").addEventListener("submit", (e) => { e.preventDefault(); showLedger($("ledger-date").value); });
  $("report").addEventListener("submit", submitReport);
  config = await getJSON("/public/config.json");
  await loadServices();
  const { nodes } = await getJSON("/public/nodes.json");
  drawMap(nodes);
  await Promise.all([showLedger($("ledger-date").value), showRequests()]);
  document.body.dataset.ready = "1";
}

start();
