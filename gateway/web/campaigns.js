// Firmware update campaigns (gateway/campaigns.py; GET /campaigns, /campaigns/{id}): each with
// its release, state, stage and node counts; node by node its stage and state (pending,
// receiving with a bar, verifying, installed, healthy, rolled back, failed) and why; Pause,
// Resume and Abort as its state allows. A form starts one: a group, a signed release image
// (.lup, read in this browser and sent as the request body, POST /campaigns) and the canaries
// (a count, or a fraction such as 0.1). The gateway checks the image and its refusal is shown
// as it comes. Text from the API goes in as text only (dom.js).

import { request } from "./api.js";
import { $, h, show, ago, words } from "./dom.js";

const MAX_SHOWN = 10;  // the latest campaigns; `lumeau fleet status` lists them all
const ORDER = ["pending", "receiving", "verifying", "installed", "healthy", "rolled_back", "failed"];
const open = new Set();  // campaign ids whose node list is unfolded, kept across refreshes

export async function loadCampaigns() {
  const doc = await request("/campaigns");
  const latest = doc.campaigns.slice(-MAX_SHOWN).reverse();
  // the running and paused ones, and any unfolded, with their nodes
  const full = await Promise.all(latest.map((c) => (c.state === "running" || c.state === "paused" || open.has(c.id))
    ? request("/campaigns/" + c.id) : c));
  return { campaigns: full, total: doc.campaigns.length };
}

function countsText(counts) {
  return ORDER.filter((k) => counts[k]).map((k) => `${counts[k]} ${words(k)}`).join(", ");
}

function nodeItem(id, p, nodes, select) {
  const n = nodes.get(id);
  const bar = p.state === "receiving" && p.fraction !== null
    ? h("progress", { max: 1, value: p.fraction, "aria-label": "received" }) : null;
  const pct = bar ? ` ${Math.round(100 * p.fraction)} %` : "";
  const li = h("li", { class: "member", "data-node": id, "data-state": p.state, tabindex: 0 },
    h("span", { class: "badge", "data-campaign-node": p.state, text: words(p.state) + pct }),
    h("span", { text: (n && n.name) || id }),
    h("span", { class: "muted small", text: ` ${p.stage}` + (p.reason ? ` · ${p.reason}` : "") }),
    bar);
  li.addEventListener("click", () => select(id));
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") select(id); });
  return li;
}

async function act(c, action, out, after) {
  out.textContent = `${action}…`;
  try {
    await request(`/campaigns/${c.id}/${action}`, { method: "POST" });
    out.textContent = "";
    await after();
  } catch (e) {
    out.textContent = e.message;
  }
}

function campaignItem(c, nodes, select, after) {
  const r = c.release || {};
  const out = h("p", { class: "campaign-result muted small", role: "status" });
  const buttons = [];
  if (c.state === "running") buttons.push(["pause", "Pause"]);
  if (c.state === "paused") buttons.push(["resume", "Resume"]);
  if (c.state === "running" || c.state === "paused") buttons.push(["abort", "Abort"]);
  const actions = h("div", { class: "campaign-actions" }, ...buttons.map(([a, label]) =>
    h("button", { type: "button", class: "small ghost", "data-action": a, text: label, onclick: () => act(c, a, out, after) })));
  const list = c.nodes ? h("details", { open: open.has(c.id) },
    h("summary", { text: "Nodes" }),
    h("ul", { class: "member-list" }, ...Object.entries(c.nodes).map(([id, p]) => nodeItem(id, p, nodes, select)))) : null;
  if (list) list.addEventListener("toggle", () => { if (list.open) open.add(c.id); else open.delete(c.id); });
  return h("li", { class: "group campaign", "data-campaign": c.id, "data-state": c.state },
    h("div", { class: "group-head" },
      h("b", { text: `${r.version} → ${c.group}` }),
      h("span", { class: "badge", "data-campaign-state": c.state, text: c.state }),
      h("span", { class: "muted small", text: ` #${c.id} · stage ${c.stage} · ${c.canary} canary · ${ago(c.created)}` })),
    h("p", { class: "campaign-counts", text: countsText(c.counts) }),
    c.reason ? h("p", { class: "campaign-reason small", text: c.reason }) : null,
    actions, out, list);
}

export function renderCampaigns({ campaigns, total }, groups, nodes, select, after) {
  $("campaigns").replaceChildren(...campaigns.map((c) => campaignItem(c, nodes, select, after)));
  $("campaign-total").textContent = total;
  show($("no-campaigns"), campaigns.length === 0);
  const sel = $("campaign-group");
  const names = groups.map((g) => g.name);
  if ([...sel.options].map((o) => o.value).join() !== names.join()) {
    const was = sel.value;
    sel.replaceChildren(...groups.map((g) => h("option", { value: g.name, text: g.title || g.name })));
    if (names.includes(was)) sel.value = was;
  }
}

// The start form is static (index.html): what a technician typed survives the refreshes.
export function campaignForm(after) {
  const form = $("campaign-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("campaign-error");
    const file = $("campaign-image").files[0];
    const canary = $("campaign-canary").value.trim() || "1";
    if (!file) { out.textContent = "choose a release image (.lup, made by lumeau node release)"; show(out, true); return; }
    show(out, false);
    const q = new URLSearchParams({ group: $("campaign-group").value, canary });
    try {
      const doc = await request("/campaigns?" + q, { method: "POST", raw: await file.arrayBuffer() });
      open.add(doc.id);
      form.reset();
      await after();
    } catch (err) {
      out.textContent = err.message;
      show(out, true);
    }
  });
}
