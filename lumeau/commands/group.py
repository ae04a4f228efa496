"""`lumeau group ...`: groups of nodes (a street, a park, a district) and their commands.

    lumeau group list    (--registry FILE | --gateway URL) [--json]
    lumeau group add     NAME --kind KIND NODE... [--title TEXT] [--replace] (--registry FILE | --gateway URL)
    lumeau group remove  NAME (--registry FILE | --gateway URL)
    lumeau group command NAME OP [ARG...] [--ttl S] --gateway URL [--json]
    lumeau group status  NAME [ID] --gateway URL [--json]

Groups live in the gateway's registry file (gateway/registry.py): `--registry` edits the
file through its locked merge (a running gateway reads the changed file by itself
within a second), `--gateway` goes through the running gateway's API. A group
command needs the running gateway (its downlink queue): one COMMAND per member, unicast
in each member's receive window (gateway/groups.py). ARGs are integers as on the air
(`set_level 100 7200`) or named (`set_level level=100 duration=7200`); `GET /ops` and
gateway/ops.py describe every op. The token comes from --token or $LUMEAU_API_TOKEN.

Exit codes: 0 done, 1 the job failed (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "LUMEAU_API_TOKEN"
KINDS = ("street", "park", "district", "custom")  # gateway/registry.py GROUP_KINDS


class GroupCliError(Exception):
    """A failure to print as `lumeau group CMD: message` (exit 1); `lumeau node show|command` too."""


def _err(cmd: str, msg: str) -> int:
    print(f"lumeau group {cmd}: {msg}", file=sys.stderr)
    return 1


def gateway_call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    from lumeau import provision as pv

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise GroupCliError(f"--gateway needs the API token (--token or ${TOKEN_ENV})")
    try:
        pv.check_gateway_url(args.gateway)
        return pv.api_call(args.gateway, token, method, path, body)
    except pv.ProvisionError as e:
        raise GroupCliError(str(e)) from None


def refusal(status: int, doc: dict, args: argparse.Namespace) -> GroupCliError:
    from lumeau import provision as pv

    return GroupCliError(pv.http_error(status, doc, args.gateway))


def _registry(args: argparse.Namespace) -> Any:
    from gateway.registry import Registry

    if not args.registry.exists():
        raise GroupCliError(f"{args.registry}: no such registry file")
    return Registry.load(args.registry)


def _run(cmd: str, args: argparse.Namespace, job: Any) -> int:
    from gateway.registry import RegistryError

    try:
        return int(job(args))
    except (GroupCliError, RegistryError) as e:
        return _err(cmd, str(e))
    except OSError as e:
        return _err(cmd, f"{args.registry}: cannot write: {e.strerror}")


# ---------------------------------------------------------------- list, add, remove


def _list(args: argparse.Namespace) -> int:
    if args.registry is not None:
        groups = [g.public() for g in _registry(args).groups()]
    else:
        status, doc = gateway_call(args, "GET", "/groups")
        if status != 200:
            raise refusal(status, doc, args)
        groups = doc.get("groups", [])
    if args.json:
        print(json.dumps({"groups": groups}))
        return 0
    print(f"{'GROUP':24s} {'KIND':9s} {'MEMBERS':>7s}  TITLE")
    for g in groups:
        print(f"{g['name']:24s} {g['kind']:9s} {len(g['members']):7d}  {g.get('title') or '-'}")
    print(f"{len(groups)} group{'s' if len(groups) != 1 else ''}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from gateway.registry import Group, Registry

    doc: dict[str, Any] = {"kind": args.kind, "members": [f"{n:08x}" for n in args.nodes]}
    if args.title:
        doc["title"] = args.title
    if args.registry is not None:
        reg = _registry(args)

        def edit(r: Registry) -> Any:
            return r.put_group(Group.from_dict(args.name, doc), create=not args.replace)

        old, _ = reg.change(edit, missing_ok=False)
        where = str(args.registry)
    else:
        if args.replace:
            status, answer = gateway_call(args, "PUT", f"/groups/{args.name}", {**doc, "title": args.title or ""})
        else:
            status, answer = gateway_call(args, "POST", "/groups", {"name": args.name, **doc})
        if status not in (200, 201):
            raise refusal(status, answer, args)
        old = status == 200
        where = args.gateway
    n = len(args.nodes)
    print(
        f"group {args.name} ({args.kind}, {n} node{'s' if n != 1 else ''}) {'replaced' if old else 'added'} in {where}"
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    if args.registry is not None:
        gone, _ = _registry(args).change(lambda r: r.remove_group(args.name), missing_ok=False)
        if gone is None:
            raise GroupCliError(f"no group {args.name} in {args.registry}")
        where = str(args.registry)
    else:
        status, doc = gateway_call(args, "DELETE", f"/groups/{args.name}")
        if status == 404:
            raise GroupCliError(f"no group {args.name} at {args.gateway}")
        if status != 204:
            raise refusal(status, doc, args)
        where = args.gateway
    print(f"group {args.name} removed from {where} (its nodes stay registered)")
    return 0


# ---------------------------------------------------------------- command, status


def parse_args_list(items: list[str]) -> list[int] | dict[str, int]:
    """`100 7200` -> [100, 7200]; `level=100 duration=7200` -> {"level": 100, "duration": 7200}."""
    named = [i for i in items if "=" in i]
    if named and len(named) != len(items):
        raise GroupCliError("give the arguments all as numbers or all as name=value")
    try:
        if named:
            out: dict[str, int] = {}
            for item in items:
                k, v = item.split("=", 1)
                if k in out:
                    raise GroupCliError(f"argument {k!r} given twice")
                out[k] = int(v)
            return out
        return [int(i) for i in items]
    except ValueError:
        raise GroupCliError(f"arguments must be integers: {' '.join(items)}") from None


def _print_progress(doc: dict[str, Any]) -> None:
    c = doc["progress"]
    total = sum(c.values())
    print(
        f"group {doc['group']} command {doc['id']}: {doc['op']} {' '.join(map(str, doc['args']))}".rstrip()
        + f" -- {c['applied']} applied, {c['pending']} pending, {c['failed']} failed, {c['skipped']} skipped"
        + f" of {total}"
    )
    d = doc.get("delivery")
    if d:
        print(f"  delivery: {d['mode']} ({d['reason']})")
    for mem in doc.get("members", []):
        why = f"  ({mem['reason']})" if mem.get("reason") else ""
        print(f"  {mem['node']}  {mem['state']}{why}")


def _command(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"op": args.op, "args": parse_args_list(args.args)}
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    status, doc = gateway_call(args, "POST", f"/groups/{args.name}/commands", body)
    if status != 201:
        raise refusal(status, doc, args)
    if args.json:
        print(json.dumps(doc))
    else:
        _print_progress(doc)
        print(f"follow it with: lumeau group status {args.name} {doc['id']} --gateway {args.gateway}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.id is None:
        status, doc = gateway_call(args, "GET", f"/groups/{args.name}/commands")
        if status != 200:
            raise refusal(status, doc, args)
        if args.json:
            print(json.dumps(doc))
            return 0
        for c in doc.get("commands", []):
            _print_progress(c)
        print(f"{len(doc.get('commands', []))} command(s) for group {args.name}")
        return 0
    status, doc = gateway_call(args, "GET", f"/groups/{args.name}/commands/{args.id}")
    if status != 200:
        raise refusal(status, doc, args)
    if args.json:
        print(json.dumps(doc))
    else:
        _print_progress(doc)
    return 0


# ---------------------------------------------------------------- argparse


def _node_id(text: str) -> int:
    from gateway.registry import parse_node_id

    try:
        return parse_node_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _name(text: str) -> str:
    from gateway.registry import RegistryError, check_group_name

    try:
        return check_group_name(text)
    except RegistryError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _where(p: argparse.ArgumentParser, registry: bool = True) -> None:
    if registry:
        w = p.add_mutually_exclusive_group(required=True)
        w.add_argument("--registry", type=Path, help="the gateway's registry file (gateway offline)")
        w.add_argument("--gateway", help="the gateway's API URL, e.g. http://127.0.0.1:8760")
    else:
        p.add_argument("--gateway", required=True, help="the gateway's API URL, e.g. http://127.0.0.1:8760")
        p.set_defaults(registry=None)
    p.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")


def add_subcommand(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "group",
        help="groups of nodes (street, park, district) and commands to a whole group",
        description="Name sets of nodes and command them as a whole, through the gateway: by LoRa multicast "
        "when every member is a lamp holding the group's key (given to them when the group is saved through "
        "the gateway), else by unicast fan-out; `status` says which and why (SPEC §5 'Groups').",
    )
    actions = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")

    ls = actions.add_parser("list", help="list the groups (name, kind, members)")
    _where(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ls.set_defaults(func=lambda a: _run("list", a, _list))

    add = actions.add_parser("add", help="create a group (or, with --replace, replace one)")
    add.add_argument("name", type=_name, metavar="NAME", help="a-z, 0-9, '-', '_' (at most 64)")
    add.add_argument("nodes", type=_node_id, nargs="+", metavar="NODE", help="member node ids, hex")
    add.add_argument("--kind", required=True, choices=KINDS)
    add.add_argument("--title", default="", help="a name for people, e.g. 'Rue de Rivoli'")
    add.add_argument("--replace", action="store_true", help="replace the group of that name if there is one")
    _where(add)
    add.set_defaults(func=lambda a: _run("add", a, _add))

    rm = actions.add_parser("remove", help="remove a group (its nodes stay registered)")
    rm.add_argument("name", type=_name, metavar="NAME")
    _where(rm)
    rm.set_defaults(func=lambda a: _run("remove", a, _remove))

    c = actions.add_parser("command", help="send one command to every member of a group (needs the gateway)")
    c.add_argument("name", type=_name, metavar="NAME")
    c.add_argument("op", metavar="OP", help="set_level, set_profile, rain_delay, open_zone, ... (GET /ops)")
    c.add_argument("args", nargs="*", metavar="ARG", help="integers as on the air, or name=value")
    c.add_argument("--ttl", type=float, help="seconds the command stays valid (default: the gateway's)")
    c.add_argument("--json", action="store_true", help="the API's answer as JSON")
    _where(c, registry=False)
    c.set_defaults(func=lambda a: _run("command", a, _command))

    st = actions.add_parser("status", help="a group command's progress per member (or the group's commands)")
    st.add_argument("name", type=_name, metavar="NAME")
    st.add_argument("id", type=int, nargs="?", metavar="ID", help="the group command id (omit: all of them)")
    st.add_argument("--json", action="store_true", help="the API's answer as JSON")
    _where(st, registry=False)
    st.set_defaults(func=lambda a: _run("status", a, _status))
