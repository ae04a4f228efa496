// Groups (a street, a park, a district) and the progress of each group's latest command,
// member by member: applied, pending, failed or skipped (GET /groups, /groups/{name}/commands;
// gateway/groups.py). Sending a group command stays with `lumeau group command` and the API.

import { request } from "./api.js";
import { $, h, show, ago, clock, words } from "./dom.js";

// One request per group and refresh: a page for a site's groups, not for a whole city.
const MAX_GROUPS = 30;

export async function loadGroups() {
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

export function renderGroups({ groups, latest, more }, nodes, select) {
  const items = groups.map((g, i) => {
    const cmd = latest[i];
    const head = h("div", { class: "group-head" },
      h("b", { text: g.title || g.name }),
      h("span", { class: "muted small", text: ` ${g.kind} · ${g.members.length} node${g.members.length === 1 ? "" : "s"}` }));
    if (!cmd) {
      return h("li", { class: "group", "data-group": g.name }, head, h("p", { class: "muted small", text: "No group command yet." }));
    }
    const args = (cmd.args || []).join(" ");  // as on the air (the API keeps them as a list)
    return h("li", { class: "group", "data-group": g.name },
      head,
      h("p", { class: "group-command", title: clock(cmd.created) },
        h("span", { text: `${words(cmd.op)} ${args}`.trim() + " · " + ago(cmd.created) + ": " }),
        h("b", { class: "group-progress", text: progressText(cmd.progress) })),
      h("details", {},
        h("summary", { text: "Members" }),
        h("ul", { class: "member-list" }, ...cmd.members.map((m) => memberItem(m, nodes, select)))));
  });
  $("groups").replaceChildren(...items);
  $("group-total").textContent = groups.length + (more > 0 ? "+" : "");
  show($("no-groups"), groups.length === 0);
  const extra = $("groups-more");
  extra.textContent = more > 0 ? `${more} more group(s): lumeau group list --gateway …` : "";
  show(extra, more > 0);
}
