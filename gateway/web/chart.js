// A time chart of one field of a node's recent readings, in SVG.
//
// A field whose value is a list (soil moisture per zone) gives one line per
// entry. A gap longer than GAP_FACTOR times the usual spacing between
// readings breaks the line: missed reports show as missing, not as a slope.

import { s, clock, hhmm, words } from "./dom.js";

const M = { left: 64, right: 24, top: 30, bottom: 34 };
const GAP_FACTOR = 3;
const TIME_STEPS = [60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]; // seconds

// The fields of these readings that can be charted: [{name, unit}], in first-seen order.
export function chartableFields(readings) {
  const seen = new Map();
  for (const r of readings) {
    for (const [name, f] of Object.entries(r.fields)) {
      const v = f.value;
      const numeric = typeof v === "number" || (Array.isArray(v) && v.some((x) => typeof x === "number"));
      if (numeric && !seen.has(name)) seen.set(name, { name, unit: f.unit });
    }
  }
  return [...seen.values()];
}

function seriesOf(readings, field) {
  const series = new Map(); // label -> [[t, v], ...]
  for (const r of readings) {
    const f = r.fields[field];
    if (!f) continue;
    const vals = Array.isArray(f.value) ? f.value : [f.value];
    vals.forEach((v, i) => {
      if (typeof v !== "number") return;
      const label = Array.isArray(f.value) ? `zone ${i + 1}` : words(field);
      if (!series.has(label)) series.set(label, []);
      series.get(label).push([r.rx_time, v]);
    });
  }
  return series;
}

function niceStep(span, n) {
  const raw = span / n;
  const e = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * e).find((st) => st >= raw) || 10 * e;
}

function fmt(v) {
  return Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v)) : String(+v.toFixed(2));
}

// Draw `field` of `readings` into `svg`. Returns the number of points drawn.
export function drawChart(svg, readings, field, unit) {
  const W = Math.round(svg.clientWidth) || 1000; // one SVG unit per CSS pixel
  const H = W < 600 ? 220 : 300;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const series = seriesOf(readings, field);
  const all = [...series.values()].flat();
  if (!all.length) {
    svg.append(s("text", { class: "chart-empty", x: W / 2, y: H / 2, "text-anchor": "middle",
      text: "No reading kept for this node yet." }));
    return 0;
  }
  let t0 = Math.min(...all.map((p) => p[0]));
  let t1 = Math.max(...all.map((p) => p[0]));
  if (t1 - t0 < 600) { t0 -= 300; t1 += 300; }
  let v0 = Math.min(...all.map((p) => p[1]));
  let v1 = Math.max(...all.map((p) => p[1]));
  if (unit === "%") { v0 = Math.min(0, v0); v1 = Math.max(100, v1); }
  if (v1 - v0 < 1e-9) { v0 -= 1; v1 += 1; }
  const vStep = niceStep(v1 - v0, 5);
  v0 = Math.floor(v0 / vStep) * vStep;
  v1 = Math.ceil(v1 / vStep) * vStep;
  const x = (t) => M.left + ((t - t0) / (t1 - t0)) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - v0) / (v1 - v0)) * (H - M.top - M.bottom);

  const axes = s("g", { class: "axes" });
  for (let v = v0; v <= v1 + vStep / 2; v += vStep) {
    axes.append(s("line", { class: "gridline", x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }),
      s("text", { x: M.left - 8, y: y(v) + 4, "text-anchor": "end", text: fmt(v) }));
  }
  const maxTicks = Math.max(3, Math.floor((W - M.left - M.right) / 110));
  const tStep = TIME_STEPS.find((st) => (t1 - t0) / st <= maxTicks) || 86400;
  for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
    axes.append(s("line", { class: "tick", x1: x(t), x2: x(t), y1: H - M.bottom, y2: H - M.bottom + 5 }),
      s("text", { x: x(t), y: H - M.bottom + 20, "text-anchor": "middle", text: hhmm(t) }));
  }
  axes.append(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  if (unit) axes.append(s("text", { class: "unit", x: M.left - 8, y: 16, "text-anchor": "end", text: unit }));
  svg.append(axes);

  let i = 0;
  for (const [label, pts] of series) {
    pts.sort((a, b) => a[0] - b[0]);
    const gaps = pts.slice(1).map((p, j) => p[0] - pts[j][0]).sort((a, b) => a - b);
    const usual = gaps.length ? gaps[Math.floor(gaps.length / 2)] : Infinity;
    let d = "";
    pts.forEach(([t, v], j) => {
      const jump = j === 0 || t - pts[j - 1][0] > GAP_FACTOR * usual;
      d += `${jump ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    });
    const g = s("g", { class: `series series-${i % 4}`, "data-series": label },
      s("path", { class: "line", d }));
    for (const [t, v] of pts) {
      g.append(s("circle", { class: "point", cx: x(t), cy: y(v), r: pts.length > 48 ? 2.5 : 3.5 },
        s("title", { text: `${clock(t)}: ${fmt(v)}${unit ? " " + unit : ""}${series.size > 1 ? " (" + label + ")" : ""}` })));
    }
    svg.append(g);
    if (series.size > 1) {
      svg.append(s("g", { class: `legend-item series-${i % 4}` },
        s("rect", { x: M.left + 12 + i * 110, y: 9, width: 14, height: 4, rx: 2 }),
        s("text", { x: M.left + 32 + i * 110, y: 15, text: label })));
    }
    i++;
  }
  return all.length;
}
