// The plan: every node with a position (registry lat/lon, WGS 84), drawn in
// an SVG scaled to the nodes' extent, coloured by state.
//
// A local equirectangular projection (x = longitude scaled by cos(latitude),
// y = latitude) is exact enough over a district (distortion below 0.1 % over
// 10 km) and keeps north up and distances true, so the scale bar holds.

import { s, STATE_LABELS, words } from "./dom.js";

const PAD = 48;
const MIN_EXTENT_M = 200; // a single node, or nodes on one spot: show 200 m around them
const M_PER_DEG = 111320; // metres per degree of latitude (mean)

function project(nodes, W, H) {
  const lat0 = nodes.reduce((a, n) => a + n.lat, 0) / nodes.length;
  const k = Math.cos((lat0 * Math.PI) / 180);
  const pts = nodes.map((n) => ({ n, x: n.lon * k * M_PER_DEG, y: -n.lat * M_PER_DEG }));
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const p of pts) {
    x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x);
    y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
  }
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const span = Math.max(x1 - x0, ((y1 - y0) * (W - 2 * PAD)) / (H - 2 * PAD), MIN_EXTENT_M);
  const scale = (W - 2 * PAD) / span; // pixels per metre
  for (const p of pts) {
    p.px = W / 2 + (p.x - cx) * scale;
    p.py = H / 2 + (p.y - cy) * scale;
  }
  return { pts, scale };
}

function niceMetres(target) {
  const steps = [1, 2, 5];
  let best = 1;
  for (let e = 0; e < 6; e++) for (const st of steps) if (st * 10 ** e <= target) best = st * 10 ** e;
  return best;
}

function marker(p, selected, W, requests) {
  const n = p.n;
  const state = n.health.state;
  const label = n.name || n.id;
  const asked = requests ? requests.get(n.id) || 0 : 0; // the city's open service requests about it
  const about = asked ? ` · ${asked} service request${asked === 1 ? "" : "s"}` : "";
  const shape = n.kind === "irrigation"
    ? s("rect", { x: p.px - 8, y: p.py - 8, width: 16, height: 16, rx: 3 })
    : n.kind === "bridge"
      ? s("path", { d: `M${p.px},${p.py - 10} L${p.px + 9},${p.py + 7} L${p.px - 9},${p.py + 7} Z` })
      : s("circle", { cx: p.px, cy: p.py, r: 9 });
  const g = s("g", {
    class: "node-marker" + (selected ? " selected" : ""), "data-node": n.id, "data-state": state,
    tabindex: 0, role: "button", "aria-label": `${label}: ${STATE_LABELS[state]}${about}`,
    "data-requests": asked || null,
  },
  s("title", { text: `${label} (${n.id}) · ${words(n.kind)} · ${STATE_LABELS[state]}${about}` }),
  selected ? s("circle", { class: "halo", cx: p.px, cy: p.py, r: 17 }) : null,
  shape,
  asked ? s("g", { class: "request-badge" },
    s("circle", { cx: p.px + 9, cy: p.py - 9, r: 7 }),
    s("text", { x: p.px + 9, y: p.py - 5.5, "text-anchor": "middle", text: asked > 9 ? "9+" : String(asked) })) : null,
  // A label that would leave the plan goes on the marker's other side (about 7.5 px a character).
  p.px + 14 + label.length * 7.5 > W
    ? s("text", { class: "node-label", x: p.px - 14, y: p.py + 4, "text-anchor": "end", text: label })
    : s("text", { class: "node-label", x: p.px + 14, y: p.py + 4, text: label }));
  return g;
}

// Draw `nodes` (API node objects) into `svg`; `onPick(id)` when one is clicked; `requests`
// (node id -> how many open service requests concern it) puts a count on a marker.
// Returns the nodes without a position.
export function drawPlan(svg, nodes, selectedId, onPick, requests) {
  // One SVG unit per CSS pixel: labels and markers keep their size on a phone as on a desk.
  const W = Math.round(svg.clientWidth) || 1000;
  const H = Math.round(Math.min(560, Math.max(280, W * 0.56)));
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const placed = nodes.filter((n) => typeof n.lat === "number" && typeof n.lon === "number");
  const unplaced = nodes.filter((n) => !placed.includes(n));
  svg.append(s("rect", { class: "plan-bg", x: 0, y: 0, width: W, height: H }));
  if (!placed.length) {
    svg.append(s("text", { class: "plan-empty", x: W / 2, y: H / 2, "text-anchor": "middle",
      text: "No node has a position yet (lat/lon in the registry)." }));
    return unplaced;
  }
  const { pts, scale } = project(placed, W, H);
  // A grid every "nice" distance, and a scale bar of the same length.
  const step = niceMetres(W / scale / 6);
  const px = step * scale;
  const grid = s("g", { class: "grid" });
  for (let x = (W / 2) % px; x < W; x += px) grid.append(s("line", { x1: x, y1: 0, x2: x, y2: H }));
  for (let y = (H / 2) % px; y < H; y += px) grid.append(s("line", { x1: 0, y1: y, x2: W, y2: y }));
  svg.append(grid);
  const bar = s("g", { class: "scale", transform: `translate(${PAD / 2},${H - PAD / 2})` },
    s("line", { x1: 0, y1: 0, x2: px, y2: 0 }),
    s("line", { x1: 0, y1: -5, x2: 0, y2: 5 }), s("line", { x1: px, y1: -5, x2: px, y2: 5 }),
    s("text", { x: px / 2, y: -8, "text-anchor": "middle", text: step >= 1000 ? `${step / 1000} km` : `${step} m` }));
  svg.append(bar, s("text", { class: "north", x: W - PAD / 2, y: PAD / 2 + 6, "text-anchor": "middle", text: "N ↑" }));
  // Urgent nodes last, so they are drawn on top of their neighbours.
  const order = { ok: 0, silent: 1, failsafe: 2, alarm: 3 };
  pts.sort((a, b) => order[a.n.health.state] - order[b.n.health.state] || (a.n.id === selectedId) - (b.n.id === selectedId));
  // Alarms pulse in a layer of their own, under the markers: a marker's own shape never moves.
  svg.append(s("g", { class: "pulses" }, pts.filter((p) => p.n.health.state === "alarm")
    .map((p) => s("circle", { class: "pulse", cx: p.px, cy: p.py, r: 12 }))));
  for (const p of pts) {
    const g = marker(p, p.n.id === selectedId, W, requests);
    g.addEventListener("click", () => onPick(p.n.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onPick(p.n.id); } });
    svg.append(g);
  }
  return unplaced;
}
