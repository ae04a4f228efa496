"""`lumeau node show|command`: one node at a running gateway, through its API (no curl).

    lumeau node show    ID --gateway URL [--json]
    lumeau node command ID OP [ARG...] --gateway URL [--ttl S] [--wait S] [--json]

`show` prints what the gateway knows of the node (GET /nodes/{id}): when it was last heard,
its signal, its health and open alarms. `command` queues one COMMAND (POST
/nodes/{id}/commands: the gateway checks the op and its arguments against its catalogue,
gateway/ops.py, and refuses a bad one at once) and, with --wait S (default 30), follows it
(GET /commands/{id}) until the node acknowledges it or it closes otherwise. ARGs are integers
as on the air (`set_level 50 600`) or named (`set_level level=50 duration=600`), as for
`lumeau group command`. The token comes from --token or $LUMEAU_API_TOKEN.

Exit codes: 0 done (for `command`: acknowledged with result ok, or queued when --wait 0), 1
the job failed or the node did not acknowledge within --wait (the message says what to do),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from lumeau.commands.group import TOKEN_ENV, GroupCliError, gateway_call, parse_args_list, refusal

OPEN_STATES = ("queued", "sent")  # gateway/store/downlinks.py DOWNLINK_OPEN_STATES
POLL_S = 0.5  # a wired node answers within a second; a LoRa node after its next uplink
DEFAULT_WAIT_S = 30.0


def _ago(now: float, t: Any) -> str:
    if not isinstance(t, int | float):
        return "never"
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def print_node(doc: dict[str, Any], now: float) -> None:
    """The node as a technician reads it: who, when heard, how well, what is wrong."""
    name = f" {doc['name']!s}" if doc.get("name") else ""
    print(f"node {doc['id']} ({doc.get('kind', '?')}){name}")
    health = doc.get("health") or {}
    conds = ", ".join(health.get("conditions") or []) or "none"
    print(f"  health       {health.get('state', '?')} (conditions: {conds})")
    via = f" via {doc['gateway']}" if doc.get("gateway") else ""
    print(f"  last heard   {_ago(now, doc.get('last_seen'))}{via}")
    if doc.get("rssi") is not None:
        print(f"  signal       RSSI {doc['rssi']} dBm, SNR {doc.get('snr')} dB")
    if doc.get("reported_firmware") is not None:
        print(f"  firmware     {doc['reported_firmware']}")
    rel = doc.get("release") or {}
    if rel.get("expected") or rel.get("running"):
        exp = rel.get("expected")
        want = f", expected {exp['version']} ({exp['bundle'][:6]}): {rel.get('state')}" if exp else ""
        print(f"  release      runs bundle {rel.get('running') or 'none reported'}{want}")
    alarms = doc.get("open_alarms") or []
    print(f"  open alarms  {len(alarms)}")
    for a in alarms:
        fields = a.get("fields") or {}
        code = fields.get("code", {})
        code = code.get("value", code) if isinstance(code, dict) else code
        print(f"    {code}")
    print(f"  downlinks waiting  {doc.get('downlinks_waiting', 0)}")


def _show(args: argparse.Namespace) -> int:
    status, doc = gateway_call(args, "GET", f"/nodes/{args.id:08x}")
    if status == 404:
        raise GroupCliError(f"node {args.id:08x} is not registered at {args.gateway} (lumeau node list --gateway ...)")
    if status != 200:
        raise refusal(status, doc, args)
    if args.json:
        print(json.dumps(doc))
    else:
        print_node(doc, time.time())
    return 0


def _describe(doc: dict[str, Any]) -> str:
    op = f"{doc.get('op')} {' '.join(map(str, doc.get('args', [])))}".rstrip()
    result = f", result {doc['result']}" if "result" in doc else ""
    return f"command {doc['id']} to node {doc['node']}: {op} -- {doc['state']}{result}"


def _command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"op": args.op, "args": parse_args_list(args.args)}
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    status, doc = gateway_call(args, "POST", f"/nodes/{args.id:08x}/commands", body)
    if status != 201:
        raise refusal(status, doc, args)
    deadline = time.monotonic() + max(0.0, args.wait)
    while doc.get("state") in OPEN_STATES and time.monotonic() < deadline:
        time.sleep(POLL_S)
        status, doc = gateway_call(args, "GET", f"/commands/{doc['id']}")
        if status != 200:
            raise refusal(status, doc, args)
    print(json.dumps(doc) if args.json else _describe(doc))
    state = doc.get("state")
    if state == "acked":
        return 0 if doc.get("result") in (None, "ok") else 1
    if state in OPEN_STATES:
        if args.wait <= 0:
            return 0
        print(
            f"lumeau node command: not acknowledged within {args.wait:g} s (a LoRa node hears commands just "
            f"after its own uplinks); it stays queued: lumeau node show {args.id:08x} counts the downlinks "
            f"waiting, GET /commands/{doc['id']} gives its state",
            file=sys.stderr,
        )
    return 1


def _run(cmd: str, args: argparse.Namespace, job: Any) -> int:
    try:
        return int(job(args))
    except GroupCliError as e:
        print(f"lumeau node {cmd}: {e}", file=sys.stderr)
        return 1


def add_api_actions(actions: Any, node_id: Any) -> None:
    """Register `show` and `command` under `lumeau node` (node_id: the argparse type for ids)."""

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", required=True, help="the gateway's API URL, e.g. http://127.0.0.1:8760")
        p.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
        p.add_argument("--json", action="store_true", help="the API's answer as JSON")

    s = actions.add_parser("show", help="what a running gateway knows of a node: last heard, signal, alarms")
    s.add_argument("id", type=node_id, metavar="ID", help="the node id, hex")
    where(s)
    s.set_defaults(func=lambda a: _run("show", a, _show))

    c = actions.add_parser(
        "command",
        help="send a node one command through a running gateway and wait for its acknowledgement",
        description="Queue one COMMAND for a node (checked by the gateway against GET /ops) and follow it.",
    )
    c.add_argument("id", type=node_id, metavar="ID", help="the node id, hex")
    c.add_argument("op", metavar="OP", help="set_level, set_profile, rain_delay, open_zone, ... (GET /ops)")
    c.add_argument("args", nargs="*", metavar="ARG", help="integers as on the air, or name=value")
    c.add_argument("--ttl", type=float, help="seconds the command stays valid (default: the gateway's)")
    c.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="S",
        help="seconds to wait for the node's acknowledgement (0: queue and return; default %(default)g)",
    )
    where(c)
    c.set_defaults(func=lambda a: _run("command", a, _command))
