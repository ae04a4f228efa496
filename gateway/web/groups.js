// Groups (a street, a park, a district) and the progress of each group's latest command,
// member by member: applied, pending, failed or skipped (GET /groups, /groups/{name}/commands;
// gateway/groups.py), how it went (LoRa multicast or unicast fan-out, and why), and a small
// form per group that sends one (POST /groups/{name}/commands, the same bearer token as every
// call: the page keeps no cookie, so there is no cross-site request to forge). Arguments are
// typed as on the air ("100 7200" for set_level), as the card shows them; the gateway checks
// them against its op catalogue and its error is shown as it comes.

import { request } from "./api.js";
import { $, h, show, ago, clock, words } from "./dom.js";

// One request per group and refresh: a page for a site's groups, not for a whole city.
const MAX_GROUPS = 30;
const forms = new Map();  // group name -> its form, kept across refreshes (typing survives them)
let ops = [];  // GET /ops, once

// The op's arguments, checked against GET /ops before anything is sent (the gateway checks again).
function argsError(op, nums) {
  const spec = op.args;
  const n = spec.length;
  if (!n) return nums.length ? `${words(op.name)} takes no argument` : null;
  const groups = nums.length / n;
  if (!Number.isInteger(groups) || groups < op.groups.min || groups > op.groups.max) {
    const names = spec.map((a) => a.name).join(" ");
    return op.groups.max > 1 ? `${words(op.name)} takes ${op.groups.min} to ${op.groups.max} groups of: ${names}`
      : `${words(op.name)} takes: ${names}`;
  }
  for (let i = 0; i < nums.length; i++) {
    const a = spec[i % n];
    if (a.kind === "choice" ? !(String(nums[i]) in a.choices) : (nums[i] < a.min || nums[i] > a.max)) {
      return a.kind === "choice" ? `${a.name}: one of ${Object.keys(a.choices).join(", ")}`
        : `${a.name} must be between ${a.min} and ${a.max}${a.unit ? " " + a.unit : ""}`;
    }
  }
  return null;
}

async function sendGroupCommand(name, form, after) {
  const out = form.querySelector(".group-send-result");
  const args = form.querySelector("input").value.trim();
  const nums = args ? args.split(/[\s,]+/).map(Number) : [];
  out.removeAttribute("data-mode");
  const op = form.querySelector("select").value;
  const bad = nums.some((x) => !Number.isInteger(x)) ? "arguments are whole numbers, as on the air (e.g. 100 7200)"
    : argsError(ops.find((o) => o.name === op), nums);
  if (bad) {
    out.textContent = bad;
    out.dataset.error = "1";
    return;
  }
  out.textContent = "sending…";
  try {
    const doc = await request("/groups/" + encodeURIComponent(name) + "/commands",
      { method: "POST", body: { op, args: nums } });
    delete out.dataset.error;
    out.dataset.mode = doc.delivery.mode;
    out.textContent = `sent by ${doc.delivery.mode} (${doc.delivery.reason}): ${progressText(doc.progress)}`;
    await after();
  } catch (e) {
    out.dataset.error = "1";
    out.textContent = e.message;
  }
}

function groupForm(name, after) {
  let form = forms.get(name);
  if (form) return form;
  const sel = h("select", { "aria-label": "operation" },
    ...ops.map((o) => h("option", { value: o.name, text: words(o.name) })));
  form = h("form", { class: "group-send", "data-group": name },
    sel,
    h("input", { type: "text", inputmode: "numeric", placeholder: "arguments, e.g. 100 7200", "aria-label": "arguments" }),
    h("button", { type: "submit", class: "small", text: "Send to the group" }),
    h("p", { class: "group-send-result muted small", role: "status" }));
  form.addEventListener("submit", (e) => { e.preventDefault(); sendGroupCommand(name, form, after); });
  forms.set(name, form);
  return form;
}

export async function loadGroups() {
  if (!ops.length) ops = (await request("/ops")).ops;
  const doc = await request("/groups");
  const groups = doc.groups.slice(0, MAX_GROUPS);
  const latest = await Promise.all(groups.map(async (g) => {
    const path = "/groups/" + encodeURIComponent(g.name) + "/commands";
    const cmds = (await request(path)).commands;  // oldest first
    if (!cmds.length) return null;
    return request(path + "/" + cmds[cmds.length - 1].id);  // with each member's state
  }));
  return { groups, latest, more: doc.groups.length - groups.length };
}

function progressText(p) {
  const total = p.applied + p.pending + p.failed + p.skipped;
  return `${p.applied} of ${total} applied` + (p.pending ? `, ${p.pending} pending` : "")
    + (p.failed ? `, ${p.failed} failed` : "") + (p.skipped ? `, ${p.skipped} skipped` : "");
}

function memberItem(m, nodes, select) {
  const n = nodes.get(m.node);
  const why = m.reason ? ` (${m.reason})` : "";
  const li = h("li", { class: "member", "data-node": m.node, "data-state": m.state, tabindex: 0 },
    h("span", { class: "badge", "data-progress": m.state, text: m.state }),
    h("span", { text: (n && n.name) || m.node }),
    h("span", { class: "muted small", text: why }));
  li.addEventListener("click", () => select(m.node));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") select(m.node); });
  return li;
}

export function renderGroups({ groups, latest, more }, nodes, select, after) {
  const items = groups.map((g, i) => {
    const cmd = latest[i];
    const head = h("div", { class: "group-head" },
      h("b", { text: g.title || g.name }),
      h("span", { class: "muted small", text: ` ${g.kind} · ${g.members.length} node${g.members.length === 1 ? "" : "s"}` }));
    const send = h("details", { class: "group-send-box" }, h("summary", { text: "Send a command" }), groupForm(g.name, after));
    if (forms.get(g.name).dataset.open === "1") send.open = true;
    send.addEventListener("toggle", () => { forms.get(g.name).dataset.open = send.open ? "1" : ""; });
    if (!cmd) {
      return h("li", { class: "group", "data-group": g.name }, head,
        h("p", { class: "muted small", text: "No group command yet." }), send);
    }
    const args = (cmd.args || []).join(" ");  // as on the air (the API keeps them as a list)
    const how = cmd.delivery ? ` · by ${cmd.delivery.mode}` : "";
    return h("li", { class: "group", "data-group": g.name },
      head,
      h("p", { class: "group-command", title: clock(cmd.created) + (cmd.delivery ? " · " + cmd.delivery.reason : "") },
        h("span", { text: `${words(cmd.op)} ${args}`.trim() + how + " · " + ago(cmd.created) + ": " }),
        h("b", { class: "group-progress", text: progressText(cmd.progress) })),
      h("details", {},
        h("summary", { text: "Members" }),
        h("ul", { class: "member-list" }, ...cmd.members.map((m) => memberItem(m, nodes, select)))),
      send);
  });
  $("groups").replaceChildren(...items);
  $("group-total").textContent = groups.length + (more > 0 ? "+" : "");
  show($("no-groups"), groups.length === 0);
  const extra = $("groups-more");
  extra.textContent = more > 0 ? `${more} more group(s): lumeau group list --gateway …` : "";
  show(extra, more > 0);
}
