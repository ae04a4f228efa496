// The technician page: sign in with the API token, then the nodes on a plan,
// their state, open alarms, a node's recent readings and a command form.
// Everything comes from the gateway's authenticated API (gateway/api.py);
// the page itself holds no data.

import { request, signIn, hasToken, forgetToken, Unauthorized } from "./api.js";
import { $, h, show, ago, clock, fieldText, words, STATE_LABELS } from "./dom.js";
import { drawPlan } from "./plan.js";
import { chartableFields, drawChart } from "./chart.js";
import { CommandForm, commandItem } from "./command.js";
import { calendarFact, calendarsByNode, loadCalendars, renderCalendars } from "./calendars.js";
import { loadGroups, renderGroups } from "./groups.js";
import { campaignForm, loadCampaigns, renderCampaigns } from "./campaigns.js";
import { loadRequests, renderRequests, requestItem, requestsByNode } from "./requests.js";

const REFRESH_MS = 5000;
const CHART_TYPES = ["light", "irrigation", "status"];
const DEFAULT_FIELD = { light: "level", irrigation: "soil_moisture", status: "supply_voltage" };
const URGENCY = { alarm: 0, failsafe: 1, silent: 2, ok: 3 };

const ui = {
  nodes: [],
  selected: null,
  readings: [],
  commands: new Map(), // id -> downlink, for the selected node
  chartType: null,
  chartField: null,
  timer: null,
  running: false,
  planLook: null, // what the plan last drew
  unplaced: [],
  requests: null, // GET /requests: the city's open service requests
  requestsByNode: new Map(),
  calendarsByNode: new Map(), // GET /calendars: node id -> the calendar it should hold, and whether it does
};

const form = new CommandForm({
  onSent: (dl) => {
    if (ui.selected && dl.node === ui.selected) { ui.commands.set(dl.id, dl); renderCommands(); }
  },
  onUnauthorized: () => signedOut("The gateway no longer accepts this token. Sign in again."),
});

// ------------------------------------------------------------------ sign in / out

function showLogin(message) {
  show($("app-view"), false);
  show($("summary"), false);
  show($("session"), false);
  show($("login-view"), true);
  const err = $("login-error");
  err.textContent = message || "";
  show(err, Boolean(message));
  $("token").focus();
}

function signedOut(message) {
  ui.running = false;
  clearTimeout(ui.timer);
  form.stop();
  forgetToken();
  showLogin(message);
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("token");
  const token = input.value.trim();
  const err = $("login-error");
  show(err, false);
  if (token.length < 16) {
    err.textContent = "An API token has at least 16 characters.";
    show(err, true);
    return;
  }
  $("login-button").disabled = true;
  try {
    await signIn(token);
    input.value = "";
    await start();
  } catch (ex) {
    err.textContent = ex instanceof Unauthorized
      ? "The gateway refused this token."
      : `Could not sign in: ${ex.message}.`;
    show(err, true);
    input.select();
  } finally {
    $("login-button").disabled = false;
  }
});

$("logout").addEventListener("click", () => signedOut("Signed out."));
campaignForm(() => refresh());

async function start() {
  show($("login-view"), false);
  show($("app-view"), true);
  show($("summary"), true);
  show($("session"), true);
  ui.running = true;
  await form.load();
  const m = /^#node=([0-9a-f]{8})$/.exec(location.hash);
  if (m) ui.selected = m[1];
  await refresh();
}

// ------------------------------------------------------------------ refresh loop

async function refresh() {
  clearTimeout(ui.timer);
  if (!ui.running) return;
  try {
    const doc = await request("/nodes");
    ui.nodes = doc.nodes;
    ui.requests = await loadRequests();
    ui.requestsByNode = requestsByNode(ui.requests);
    show($("banner"), false);
    renderOverview();
    renderRequests(ui.requests, new Map(ui.nodes.map((n) => [n.id, n])), select);
    renderGateway(await request("/metrics", { text: true }));
    const groups = await loadGroups();
    renderGroups(groups, new Map(ui.nodes.map((n) => [n.id, n])), select, refresh);
    renderCampaigns(await loadCampaigns(), groups.groups, new Map(ui.nodes.map((n) => [n.id, n])), select, refresh);
    const calendars = await loadCalendars();
    ui.calendarsByNode = calendarsByNode(calendars);
    renderCalendars(calendars, new Map(ui.nodes.map((n) => [n.id, n])), select);
    if (ui.selected) await refreshDetail();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof Unauthorized) { signedOut("The gateway no longer accepts this token. Sign in again."); return; }
    $("banner").textContent = `${e.message}; retrying every ${REFRESH_MS / 1000} s.`;
    show($("banner"), true);
  }
  if (ui.running) ui.timer = setTimeout(refresh, REFRESH_MS);
}

function byUrgency(a, b) {
  return URGENCY[a.health.state] - URGENCY[b.health.state] || a.id.localeCompare(b.id);
}

function renderOverview() {
  const counts = { ok: 0, alarm: 0, failsafe: 0, silent: 0 };
  for (const n of ui.nodes) counts[n.health.state]++;
  for (const k of Object.keys(counts)) $("count-" + k).textContent = counts[k];

  // Redraw the plan only when something on it changed (keeps hover and focus between refreshes).
  const asked = new Map([...ui.requestsByNode].map(([id, list]) => [id, list.length]));
  const look = JSON.stringify([ui.selected, [...asked], ui.nodes.map((n) => [n.id, n.name, n.kind, n.lat, n.lon, n.health.state])]);
  if (look !== ui.planLook) {
    ui.planLook = look;
    ui.unplaced = drawPlan($("plan"), ui.nodes, ui.selected, select, asked);
  }
  const unplaced = ui.unplaced;
  const up = $("unplaced");
  up.textContent = unplaced.length
    ? `Without a position (not on the plan): ${unplaced.map((n) => n.name || n.id).join(", ")}.` : "";
  show(up, unplaced.length > 0);

  renderTable();
  renderAlarms();
}

function renderTable() {
  const q = $("filter").value.trim().toLowerCase();
  const rows = ui.nodes
    .filter((n) => !q || [n.id, n.name, n.site].some((x) => x && x.toLowerCase().includes(q)))
    .sort(byUrgency)
    .map((n) => {
      const tr = h("tr", { "data-node": n.id, class: n.id === ui.selected ? "selected" : null, tabindex: 0 },
        h("td", {}, h("span", { class: "badge", "data-state": n.health.state, text: STATE_LABELS[n.health.state] })),
        h("td", { class: "mono", text: n.id }),
        h("td", { text: n.name || "–" }),
        h("td", { text: n.kind }),
        h("td", { title: n.last_seen ? clock(n.last_seen) : null, text: ago(n.last_seen) }),
        h("td", { text: n.rssi === null ? "–" : `${n.rssi} dBm` }),
        h("td", { class: "mono", text: n.reported_firmware || n.firmware || "–" }),
        h("td", { class: "requests-count", text: String((ui.requestsByNode.get(n.id) || []).length || "–") }));
      tr.addEventListener("click", () => select(n.id));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.id); });
      return tr;
    });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

$("filter").addEventListener("input", renderTable);

function alarmItem(n, a, withNode) {
  const f = a.fields;
  const sev = f.severity ? f.severity.value : "alarm";
  const zone = f.zone && f.zone.value ? ` · zone ${f.zone.value}` : "";
  const value = f.value ? ` · value ${f.value.value}` : "";
  const li = h("li", { class: "alarm", "data-severity": sev, "data-node": n.id },
    h("span", { class: "sev", text: sev }),
    h("span", { class: "what" },
      withNode ? h("b", { text: (n.name || n.id) + " " }) : null,
      words(f.code ? f.code.value : "alarm") + zone + value),
    h("span", { class: "muted small", title: clock(a.since), text: "since " + ago(a.since) }));
  if (withNode) li.addEventListener("click", () => select(n.id));
  return li;
}

function renderAlarms() {
  const items = [];
  for (const n of [...ui.nodes].sort(byUrgency)) {
    for (const a of n.open_alarms) items.push(alarmItem(n, a, true));
  }
  $("alarms").replaceChildren(...items);
  $("alarm-total").textContent = items.length;
  show($("no-alarms"), items.length === 0);
}

// The gateway's own health, from its Prometheus metrics: sums per family.
function metrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (\S+)$/.exec(line);
    if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
  }
  return out;
}

function duration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

function renderGateway(text) {
  const m = metrics(text);
  const n = (k) => (m[k] || 0).toLocaleString();
  $("gateway").replaceChildren(
    fact("Up for", duration(m.lumeau_uptime_seconds || 0)),
    fact("Nodes registered", n("lumeau_nodes_registered")),
    fact("Frames stored", n("lumeau_frames_accepted_total")),
    fact("Frames refused", n("lumeau_frames_rejected_total"), "bad MIC, replays, unknown nodes, bad CRC... (/metrics)"),
    fact("Waiting for upstream", n("lumeau_queue_records")),
    fact("Upstream lag", duration(m.lumeau_upstream_lag_seconds || 0)),
    fact("Downlinks waiting", n("lumeau_downlink_queue_depth")),
    fact("Quarantined", n("lumeau_quarantine_records")));
}

// ------------------------------------------------------------------ one node

function select(id) {
  if (ui.selected !== id) {
    ui.selected = id;
    ui.readings = [];
    ui.commands = new Map();
    ui.chartType = null;
    ui.chartField = null;
    history.replaceState(null, "", "#node=" + id);
  }
  renderOverview();
  refreshDetail()
    .then(() => $("detail").scrollIntoView({ behavior: "smooth", block: "start" }))
    .catch((e) => { if (e instanceof Unauthorized) signedOut("The gateway no longer accepts this token. Sign in again."); });
}

$("detail-close").addEventListener("click", () => {
  ui.selected = null;
  history.replaceState(null, "", location.pathname);
  show($("detail"), false);
  renderOverview();
});

async function refreshDetail() {
  const node = ui.nodes.find((n) => n.id === ui.selected);
  if (!node) { show($("detail"), false); return; }
  try {
    const [readings, commands] = await Promise.all([
      request(`/nodes/${node.id}/readings`),
      request(`/nodes/${node.id}/commands?limit=20`),
    ]);
    if (node.id !== ui.selected) return;
    ui.readings = readings.readings;
    for (const dl of commands.commands) ui.commands.set(dl.id, { ...ui.commands.get(dl.id), ...dl });
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
  }
  renderDetail(node);
}

function fact(label, value, title) {
  return h("div", { class: "fact" }, h("dt", { text: label }), h("dd", { title: title || null, text: value }));
}

// The release it runs against the one expected (gateway/releases.py): a rollback stands out.
const RELEASE_LABELS = { current: "current", updating: "updating", rolled_back: "ROLLED BACK" };

function releaseFact(rel) {
  const running = rel.running || "none reported";
  const exp = rel.expected;
  if (!exp) return fact("Release", `bundle ${running}`, "no release expected: set one with lumeau node expect");
  const text = `${RELEASE_LABELS[rel.state] || rel.state} · runs ${running}, expected ${exp.version} (${exp.bundle.slice(0, 6)})`;
  const f = fact("Release", text, rel.rolled_back_at ? `rolled back ${clock(rel.rolled_back_at)}` : "");
  f.dataset.release = rel.state;
  return f;
}

function renderDetail(node) {
  show($("detail"), true);
  $("detail-title").textContent = node.name ? `${node.name} · ${node.id}` : `Node ${node.id}`;
  const badge = $("detail-state");
  badge.dataset.state = node.health.state;
  badge.textContent = STATE_LABELS[node.health.state];
  badge.title = node.health.conditions.map(words).join(", ") || "ok";

  const last = node.readings[node.kind === "irrigation" ? "irrigation" : "light"];
  const pos = typeof node.lat === "number" ? `${node.lat.toFixed(5)}, ${node.lon.toFixed(5)}` : "not set";
  $("facts").replaceChildren(...[
    fact("Kind", node.kind),
    fact("Site", node.site || "–"),
    fact("Position", pos),
    fact("Last heard", ago(node.last_seen), node.last_seen ? clock(node.last_seen) : ""),
    fact("Radio", node.rssi === null ? "–" : `${node.rssi} dBm · SNR ${node.snr ?? "–"} dB`, node.gateway || ""),
    fact("Firmware", node.reported_firmware || node.firmware || "–",
      node.firmware && node.reported_firmware && node.firmware !== node.reported_firmware
        ? `provisioned ${node.firmware}` : ""),
    ...(node.release && (node.release.expected || node.release.running) ? [releaseFact(node.release)] : []),
    fact("Supply", fieldText(node.supply_voltage)),
    fact("Waiting downlinks", String(node.downlinks_waiting)),
    ...(calendarFact(ui.calendarsByNode, node.id) ? [fact("Calendar", calendarFact(ui.calendarsByNode, node.id))] : []),
    ...(last ? Object.entries(last.fields).slice(0, 4).map(([k, f]) => fact(sentence(k), fieldText(f))) : []),
    ...(node.bad_mic ? [fact("Bad MIC frames", String(node.bad_mic))] : []),
  ]);

  renderChart();
  $("node-alarms").replaceChildren(...node.open_alarms.map((a) => alarmItem(node, a, false)));
  show($("node-no-alarms"), node.open_alarms.length === 0);
  renderEvents();
  const reqs = ui.requestsByNode.get(node.id) || [];
  $("node-requests").replaceChildren(...reqs.map((r) => requestItem(r, new Map(), select, false)));
  show($("node-no-requests"), reqs.length === 0);
  form.setNode(node);
  renderCommands();
}

function sentence(name) {
  const w = words(name);
  return w.charAt(0).toUpperCase() + w.slice(1);
}

function renderChart() {
  const types = CHART_TYPES.filter((t) => ui.readings.some((r) => r.type === t));
  if (!types.includes(ui.chartType)) ui.chartType = types[0] || null;
  $("chart-types").replaceChildren(...types.map((t) => h("button", {
    type: "button", role: "tab", class: "tab", "aria-selected": String(t === ui.chartType), "data-type": t,
    text: t, onclick: () => { ui.chartType = t; ui.chartField = null; renderChart(); },
  })));
  const readings = ui.readings.filter((r) => r.type === ui.chartType);
  const fields = chartableFields(readings);
  if (!fields.some((f) => f.name === ui.chartField)) {
    ui.chartField = (fields.find((f) => f.name === DEFAULT_FIELD[ui.chartType]) || fields[0] || {}).name || null;
  }
  const sel = $("chart-field");
  sel.replaceChildren(...fields.map((f) => h("option", {
    value: f.name, selected: f.name === ui.chartField, text: words(f.name) + (f.unit ? ` (${f.unit})` : ""),
  })));
  sel.onchange = () => { ui.chartField = sel.value; renderChart(); };
  show(sel, fields.length > 0);
  const unit = (fields.find((f) => f.name === ui.chartField) || {}).unit;
  const n = drawChart($("chart"), readings, ui.chartField, unit);
  $("chart-note").textContent = n
    ? `${readings.length} ${ui.chartType} reports, ${clock(readings[0].rx_time)} to ${clock(readings[readings.length - 1].rx_time)}.`
    : "";
}

function renderEvents() {
  const events = ui.readings.filter((r) => r.type === "event" || r.type === "hello").slice(-12).reverse();
  $("node-events").replaceChildren(...events.map((r) => {
    const f = r.fields;
    if (r.type === "hello") {
      return h("li", { class: "event", "data-kind": "hello" },
        h("span", { class: "sev", text: "boot" }),
        h("span", { class: "what", text: `started firmware ${fieldText(f.firmware)}` +
          (f.reset_cause ? ` (${words(f.reset_cause.value)} reset)` : "") }),
        h("span", { class: "muted small", title: clock(r.rx_time), text: ago(r.rx_time) }));
    }
    const sev = f.severity ? f.severity.value : "info";
    const state = f.active ? (f.active.value ? "raised" : "cleared") : "";
    return h("li", { class: "event", "data-severity": sev },
      h("span", { class: "sev", text: sev }),
      h("span", { class: "what", text: `${words(f.code.value)} ${state}${f.zone && f.zone.value ? " · zone " + f.zone.value : ""}` }),
      h("span", { class: "muted small", title: clock(r.rx_time), text: ago(r.rx_time) }));
  }));
  show($("node-no-events"), events.length === 0);
}

function renderCommands() {
  const list = [...ui.commands.values()].sort((a, b) => b.id - a.id);
  $("commands").replaceChildren(...list.map(commandItem));
  show($("no-commands"), list.length === 0);
  for (const dl of list) if (dl.state === "queued" || dl.state === "sent") form.follow(dl.id);
}

// The plan and the chart are drawn at the size they are shown: again when that changes.
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => {
    if (!ui.running) return;
    ui.planLook = null;
    renderOverview();
    if (ui.selected && !$("detail").hidden) renderChart();
  }, 150);
});

// A link to a node (#node=00a1b2c3) opens it, also when only the hash changes.
window.addEventListener("hashchange", () => {
  const m = /^#node=([0-9a-f]{8})$/.exec(location.hash);
  if (ui.running && m && m[1] !== ui.selected) select(m[1]);
});

// ------------------------------------------------------------------ boot

if (hasToken()) {
  start().catch((e) => signedOut(e instanceof Unauthorized ? "Sign in again." : e.message));
} else {
  showLogin();
}
