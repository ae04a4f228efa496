// The command form: the ops of SPEC §5 as the gateway describes them
// (GET /ops, gateway/ops.py), fields built from that description, and the
// command's life followed through GET /commands/{id} until it settles.

import { request, Unauthorized } from "./api.js";
import { $, h, show, words, ago } from "./dom.js";

const DAYS = ["Mo", "Tu", "We", "Th", "Fr", "Sa", "Su"];
const FINAL = new Set(["acked", "failed", "expired"]);
const POLL_MS = 1000;

function argInput(arg, id) {
  if (arg.kind === "choice") {
    return h("select", { id, "data-arg": arg.name },
      Object.entries(arg.choices).map(([v, label]) => h("option", { value: v, text: label,
        selected: Number(v) === arg.default })));
  }
  if (arg.kind === "weekdays") {
    return h("span", { class: "weekdays", id, "data-arg": arg.name, role: "group", "aria-label": "days" },
      DAYS.map((d, i) => h("label", { class: "day" },
        h("input", { type: "checkbox", value: 1 << i, checked: Boolean(arg.default & (1 << i)) }), d)));
  }
  return h("input", { id, type: "number", inputmode: "numeric", step: 1, min: arg.min, max: arg.max,
    required: true, "data-arg": arg.name, value: arg.default });
}

function readArg(arg, el) {
  if (arg.kind === "weekdays") {
    return [...el.querySelectorAll("input:checked")].reduce((m, c) => m | Number(c.value), 0);
  }
  const raw = el.value.trim();
  const v = Number(raw);
  if (raw === "" || !Number.isInteger(v)) throw new Error(`${words(arg.name)} must be a whole number`);
  if (arg.min !== undefined && (v < arg.min || v > arg.max)) {
    throw new Error(`${words(arg.name)} must be between ${arg.min} and ${arg.max}${arg.unit ? " " + arg.unit : ""}`);
  }
  return v;
}

export class CommandForm {
  constructor({ onSent, onUnauthorized }) {
    this.onUnauthorized = onUnauthorized;
    this.ops = [];
    this.node = null;
    this.groups = [];
    this.onSent = onSent;
    this.polls = new Map(); // command id -> timer
    $("op").addEventListener("change", () => this.renderArgs());
    $("command-form").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
  }

  async load() {
    if (!this.ops.length) this.ops = (await request("/ops")).ops;
  }

  // Show the ops that apply to this node's kind.
  setNode(node) {
    const changed = !this.node || this.node.id !== node.id;
    this.node = node;
    if (!changed) return;
    const sel = $("op");
    sel.replaceChildren(...this.ops.filter((o) => o.kinds.includes(node.kind))
      .map((o) => h("option", { value: o.name, text: words(o.name) })));
    show($("command-error"), false);
    this.renderArgs();
  }

  op() {
    return this.ops.find((o) => o.name === $("op").value);
  }

  renderArgs() {
    const op = this.op();
    const box = $("op-args");
    box.replaceChildren();
    $("op-help").textContent = op ? op.help : "";
    if (!op || !op.args.length) return;
    this.groups = [];
    for (let i = 0; i < Math.max(1, op.groups.min); i++) this.addGroup(op);
    if (op.groups.max > 1) {
      box.append(h("button", { type: "button", class: "ghost small add-group", id: "add-group",
        onclick: () => this.addGroup(op), text: "+ add" }));
    }
  }

  addGroup(op) {
    const box = $("op-args");
    if (this.groups.length >= op.groups.max) return;
    const n = this.groups.length;
    const fields = op.args.map((arg) => {
      const id = `arg-${n}-${arg.name}`;
      return h("div", { class: "field field-" + arg.kind },
        h("label", { for: id, text: words(arg.name) + (arg.unit ? ` (${arg.unit})` : ""), title: arg.help || null }),
        argInput(arg, id));
    });
    const group = h("fieldset", { class: "group" },
      op.groups.max > 1 ? h("legend", { text: `${op.name === "set_profile" ? "step" : "entry"} ${n + 1}` }) : null,
      fields,
      n >= Math.max(1, op.groups.min) ? h("button", { type: "button", class: "ghost small remove-group",
        text: "remove", onclick: () => this.removeGroup(op, group) }) : null);
    this.groups.push(group);
    const add = $("add-group");
    box.insertBefore(group, add);
    if (add) show(add, this.groups.length < op.groups.max);
  }

  removeGroup(op, group) {
    this.groups = this.groups.filter((g) => g !== group);
    group.remove();
    this.groups.forEach((g, i) => {
      const legend = g.querySelector("legend");
      if (legend) legend.textContent = `${op.name === "set_profile" ? "step" : "entry"} ${i + 1}`;
    });
    show($("add-group"), true);
  }

  args() {
    const op = this.op();
    const out = [];
    for (const g of this.groups) {
      for (const arg of op.args) out.push(readArg(arg, g.querySelector(`[data-arg="${arg.name}"]`)));
    }
    return out;
  }

  async send() {
    const err = $("command-error");
    show(err, false);
    const op = this.op();
    if (!op || !this.node) return;
    let args;
    try {
      args = this.args();
    } catch (e) {
      err.textContent = e.message;
      show(err, true);
      return;
    }
    const button = $("send");
    button.disabled = true;
    try {
      const dl = await request(`/nodes/${this.node.id}/commands`, {
        method: "POST", body: { op: op.name, args, ttl_s: Number($("ttl").value) },
      });
      this.onSent(dl);
      this.follow(dl.id);
    } catch (e) {
      if (e instanceof Unauthorized) { this.onUnauthorized(); return; }
      err.textContent = `Not sent: ${e.message}`;
      show(err, true);
    } finally {
      button.disabled = false;
    }
  }

  // Poll a command until it is acked, failed or expired; `onSent` gets each new state.
  follow(id) {
    if (this.polls.has(id)) return;
    const tick = async () => {
      try {
        const dl = await request(`/commands/${id}`);
        this.onSent(dl);
        if (FINAL.has(dl.state)) { this.polls.delete(id); return; }
      } catch (e) {
        if (e instanceof Unauthorized) { this.polls.delete(id); this.onUnauthorized(); return; }
      }
      this.polls.set(id, setTimeout(tick, POLL_MS));
    };
    this.polls.set(id, setTimeout(tick, POLL_MS));
  }

  stop() {
    for (const t of this.polls.values()) clearTimeout(t);
    this.polls.clear();
  }
}

// One line of the node's command list.
export function commandItem(dl) {
  const what = dl.type === "command" ? `${words(dl.op)}${dl.args && dl.args.length ? " " + dl.args.join(", ") : ""}`
    : dl.type;
  let outcome = dl.state;
  if (dl.state === "acked") outcome = `acked: ${words(dl.result ?? "?")}${dl.value !== undefined ? ` (value ${dl.value})` : ""}`;
  if (dl.state === "sent") outcome = `sent${dl.attempts > 1 ? ` (attempt ${dl.attempts})` : ""}, waiting for the node`;
  if (dl.state === "queued") outcome = "queued for the node's next receive window";
  const ok = dl.state === "acked" && dl.result === "ok";
  return h("li", { class: "command", "data-command": dl.id, "data-state": dl.state, "data-ok": ok ? "1" : "0" },
    h("span", { class: "cmd-what", text: `#${dl.id} ${what}` }),
    h("span", { class: "cmd-state", text: outcome }),
    h("span", { class: "muted small", text: ago(dl.created) }));
}
