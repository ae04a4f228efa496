// Calendars (GET /calendars; gateway/calendars.py compiles them, gateway/calendar_sync.py sends
// them as CONFIG fragments): each calendar with how many of its nodes hold it, the nodes still
// waiting for it, and in a node's view the calendar it should hold and whether it does. A node
// "holds" a calendar once it reported that calendar's hash (EV_CALENDAR, SPEC §5 "Calendars").

import { request } from "./api.js";
import { $, h, show } from "./dom.js";

// {configured: false, ...} when calendars are off ([calendars] dir unset)
export async function loadCalendars() {
  return request("/calendars");
}

// node id -> {assigned, held, in_sync, state, name}; state: in_step | pending | failed (3 rounds went
// unconfirmed: the gateway tries again at the node's next boot) | null (no calendar assigned)
export function calendarsByNode(doc) {
  const names = new Map(((doc && doc.calendars) || []).map((c) => [c.hash, c.name]));
  const out = new Map();
  for (const [id, st] of Object.entries((doc && doc.nodes) || {})) {
    out.set(id, { ...st, name: st.assigned ? names.get(st.assigned) || st.assigned : null });
  }
  return out;
}

export function renderCalendars(doc, nodes, select) {
  const list = (doc && doc.calendars) || [];
  const byNode = calendarsByNode(doc);
  $("calendar-total").textContent = list.length;
  $("calendars").replaceChildren(...list.map((c) => {
    const mine = [...byNode].filter(([, st]) => st.assigned === c.hash);
    const held = mine.filter(([, st]) => st.in_sync).length;
    const link = ([id]) => h("button", {
      type: "button", class: "link node-link", "data-node": id, text: (nodes.get(id) || {}).name || id,
      onclick: () => select(id),
    });
    const waiting = mine.filter(([, st]) => !st.in_sync && st.state !== "failed").map(link);
    const failed = mine.filter(([, st]) => st.state === "failed").map(link);
    return h("li", { class: "calendar", "data-calendar": c.name },
      h("div", { class: "request-head" },
        h("b", { text: c.name }),
        h("span", { class: "badge", "data-in-sync": held === mine.length ? "1" : "0",
          text: `${held} of ${mine.length} node${mine.length === 1 ? "" : "s"} hold it` })),
      h("p", { class: "muted small", text: `${c.kind} · ${c.bytes} B · hash ${c.hash}` }),
      waiting.length ? h("p", { class: "nodes-of" }, "Waiting: ", ...waiting) : null,
      failed.length ? h("p", { class: "nodes-of calendar-failed" }, "Failed (again at their next boot): ", ...failed) : null);
  }));
  show($("no-calendars"), list.length === 0 && Boolean(doc && doc.configured));
  $("calendars-note").textContent = doc && doc.configured ? "" : "Off: [calendars] dir in the gateway's configuration names the calendar files.";
}

// The line of a node's facts: which calendar it should hold, and its state.
export function calendarFact(byNode, id) {
  const st = byNode.get(id);
  if (!st || !st.assigned) return null;
  if (st.in_sync) return `${st.name}: held (in step)`;
  if (st.state === "failed") {
    return `${st.name}: failed (holds ${st.held || "none"}; 3 rounds unconfirmed, sent again after its next boot)`;
  }
  return `${st.name}: pending (holds ${st.held || "none"})`;
}
