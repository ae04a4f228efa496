// The city's open service requests beside the nodes (GET /requests: the gateway reads them over
// HTTP from the city's Open311 API, gateway/open311_feed.py). What residents wrote (a description,
// an address) only ever goes in as text, never as markup.

import { request } from "./api.js";
import { $, h, show, ago, clock } from "./dom.js";

const VERDICTS = {
  confirmed: "confirmed by the device",
  device_normal: "device reports normal: field check",
  no_device: "no device nearby: field check",
};

export async function loadRequests() {
  return request("/requests");
}

// node id -> the open requests that concern it
export function requestsByNode(doc) {
  const out = new Map();
  for (const r of (doc && doc.requests) || []) {
    for (const id of r.nodes) {
      if (!out.has(id)) out.set(id, []);
      out.get(id).push(r);
    }
  }
  return out;
}

function seconds(iso) {
  const t = Date.parse(iso || "");
  return Number.isNaN(t) ? null : t / 1000;
}

export function requestItem(r, nodes, select, withNodes) {
  const opened = seconds(r.requested_datetime);
  const verdict = r.lumeau_verdict || "";
  const meta = [`#${r.service_request_id}`];
  if (r.reports) meta.push(`${r.reports} report${r.reports === 1 ? "" : "s"}`);
  if (r.lumeau_source) meta.push(r.lumeau_source === "device" ? "opened by the device" : "from a resident");
  if (opened !== null) meta.push("opened " + ago(opened));
  const links = withNodes ? r.nodes.map((id) => {
    const n = nodes.get(id);
    return h("button", {
      type: "button", class: "link node-link", "data-node": id, text: (n && n.name) || id,
      onclick: () => select(id),
    });
  }) : [];
  return h("li", { class: "request", "data-request": r.service_request_id, "data-verdict": verdict || null },
    h("div", { class: "request-head" },
      h("b", { class: "service", text: r.service_name || r.service_code || "request" }),
      verdict ? h("span", { class: "badge verdict", "data-verdict": verdict, text: VERDICTS[verdict] || verdict }) : null),
    r.description ? h("p", { class: "description", text: r.description }) : null,
    r.address ? h("p", { class: "muted small address", text: r.address }) : null,
    h("p", { class: "muted small", title: opened !== null ? clock(opened) : null, text: meta.join(" · ") }),
    links.length ? h("p", { class: "nodes-of" }, "Nodes: ", ...links) : null,
    withNodes && !r.nodes.length ? h("p", { class: "muted small", text: "No registered node near it." }) : null);
}

export function renderRequests(doc, nodes, select) {
  const list = (doc && doc.requests) || [];
  $("requests").replaceChildren(...list.map((r) => requestItem(r, nodes, select, true)));
  $("request-total").textContent = list.length;
  show($("no-requests"), list.length === 0 && Boolean(doc && doc.configured));
  const note = $("requests-note");
  if (!doc || !doc.configured) {
    note.textContent = "Not set up: [open311] url in the gateway's configuration names the city's Open311 API.";
  } else if (doc.error) {
    note.textContent = `Could not read ${doc.source}: ${doc.error}.` +
      (doc.fetched ? ` Showing the list read ${ago(doc.fetched)}.` : "");
  } else {
    note.textContent = `From ${doc.source}, read ${ago(doc.fetched)}.`;
  }
  note.dataset.error = doc && doc.error ? "1" : "";
}
