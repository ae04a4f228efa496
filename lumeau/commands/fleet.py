"""`lumeau fleet ...`: firmware update campaigns at a running gateway (gateway/campaigns.py).

    lumeau fleet update --group G --release R.lup --gateway URL [--canary N|F] [--window S]
                        [--healthy-after S] [--follow] [--json]
    lumeau fleet status [ID] --gateway URL [--json]
    lumeau fleet pause|resume|abort ID --gateway URL [--json]

`update` sends a signed release image (`lumeau node release`) to the gateway, which checks it
(its shape and size; its signature when the gateway holds the city's PUBLIC key; its kind,
versions and delta base against every node of the group) and starts a campaign: the canaries
first (`--canary`: a count, default 1, or a fraction such as 0.1), the rest only once every
canary is healthy within `--window` seconds of their delivery (a canary that rolls back or
fails halts the campaign; a node of the rest that does is dropped from the delivery and the
others go on: the campaign ends done, its reason "done with failures: ..."). Lamps that listen
(members of a multicast group) get a stage by multicast, the canaries on a temporary group of
their own. `--follow` prints the progress until the campaign ends. `status` lists the
campaigns, or one campaign node by node: pending, receiving (%), verifying, installed,
healthy, rolled_back, failed. The token comes from --token or $LUMEAU_API_TOKEN.

Exit codes: 0 done (for `update --follow`: the campaign ended done, with failures or not: the
last line's reason names them), 1 refused or failed (the message says why; `--follow`: the
campaign halted or was aborted), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lumeau.commands.group import TOKEN_ENV, GroupCliError, gateway_call, refusal
from protocol import noderelease as rel

POLL_S = 2.0
FINAL = ("done", "halted", "aborted")  # gateway/campaigns.py FINAL
ORDER = ("pending", "receiving", "verifying", "installed", "healthy", "rolled_back", "failed")


def _read_image(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The image and its manifest, checked for shape here (the gateway checks it all again)."""
    try:
        image = path.read_bytes()
    except OSError as e:
        raise GroupCliError(f"{path}: cannot read ({e.strerror})") from None
    try:
        m = rel.parse_header(image[: rel.HEADER])
        manifest = rel.parse_manifest(image[rel.HEADER : rel.HEADER + m])
    except rel.Refused as e:
        raise GroupCliError(f"{path}: not a release image ({e}); `lumeau node release` makes one") from None
    return image, manifest


def _post_image(args: argparse.Namespace, query: dict[str, Any], image: bytes) -> tuple[int, dict]:
    from lumeau import provision as pv

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise GroupCliError(f"--gateway needs the API token (--token or ${TOKEN_ENV})")
    try:
        pv.check_gateway_url(args.gateway)
    except pv.ProvisionError as e:
        raise GroupCliError(str(e)) from None
    url = args.gateway.rstrip("/") + "/campaigns?" + urllib.parse.urlencode(query)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    req = urllib.request.Request(url, data=image, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (urllib.error.URLError, OSError) as e:
        raise GroupCliError(f"cannot reach the gateway at {args.gateway}: {getattr(e, 'reason', e)}") from None


def _refused(status: int, doc: dict, args: argparse.Namespace) -> GroupCliError:
    """The gateway's own reason for a campaign it refused or does not have (its 404s name what)."""
    why = doc.get("error") if isinstance(doc, dict) else None
    if status in (404, 409) and isinstance(why, str) and ("campaign" in why or "group" in why):
        return GroupCliError(f"the gateway at {args.gateway} refused: HTTP {status} {why}")
    return refusal(status, doc, args)


def _counts(doc: dict[str, Any]) -> str:
    counts = doc.get("counts") or {}
    return ", ".join(f"{counts[k]} {k}" for k in ORDER if counts.get(k))


def _line(doc: dict[str, Any]) -> str:
    r = doc.get("release") or {}
    why = f" ({doc['reason']})" if doc.get("reason") else ""
    return (
        f"campaign {doc['id']}: group {doc['group']}, release {r.get('version')} ({str(r.get('bundle'))[:6]}), "
        f"{doc['state']}{why}, stage {doc['stage']}: {_counts(doc)}"
    )


def _print_nodes(doc: dict[str, Any]) -> None:
    print(_line(doc))
    for node, p in (doc.get("nodes") or {}).items():
        state = p["state"]
        if state == "receiving" and p.get("fraction") is not None:
            state = f"receiving {round(100 * p['fraction'])} %"
        reason = f"  {p['reason']}" if p.get("reason") else ""
        print(f"  {node}  {p['stage']:<6}  {state}{reason}")


def _update(args: argparse.Namespace) -> int:
    image, manifest = _read_image(args.release)
    query: dict[str, Any] = {"group": args.group, "canary": args.canary}
    if args.window is not None:
        query["window_s"] = args.window
    if args.healthy_after is not None:
        query["healthy_after_s"] = args.healthy_after
    status, doc = _post_image(args, query, image)
    if status != 201:
        raise _refused(status, doc, args)
    if args.json and not args.follow:
        print(json.dumps(doc))
        return 0
    kind = "delta" if manifest.get("base") else "full image"
    print(
        f"campaign {doc['id']} started: release {manifest['version']} ({manifest['kind']}, {kind}, "
        f"{len(image)} B) to group {args.group}, {doc['canary']} canary node(s) first"
    )
    if not args.follow:
        print(f"follow it with: lumeau fleet status {doc['id']} --gateway {args.gateway}")
        return 0
    last = ""
    while doc["state"] not in FINAL:
        line = _line(doc)
        if line != last:
            print(line, flush=True)
            last = line
        time.sleep(POLL_S)
        status, doc = gateway_call(args, "GET", f"/campaigns/{doc['id']}")
        if status != 200:
            raise _refused(status, doc, args)
    print(json.dumps(doc) if args.json else _line(doc))
    return 0 if doc["state"] == "done" else 1


def _status(args: argparse.Namespace) -> int:
    path = "/campaigns" if args.id is None else f"/campaigns/{args.id}"
    status, doc = gateway_call(args, "GET", path)
    if status != 200:
        raise _refused(status, doc, args)
    if args.json:
        print(json.dumps(doc))
    elif args.id is None:
        for c in doc["campaigns"]:
            print(_line(c))
        if not doc["campaigns"]:
            print("no campaign")
    else:
        _print_nodes(doc)
    return 0


def _act(args: argparse.Namespace) -> int:
    status, doc = gateway_call(args, "POST", f"/campaigns/{args.id}/{args.fleet_command}")
    if status != 200:
        raise _refused(status, doc, args)
    print(json.dumps(doc) if args.json else _line(doc))
    return 0


def _canary(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a count (1, 2, ...) or a fraction between 0 and 1 (0.1)") from None
    if not (0 < v < 1 or (v >= 1 and v == int(v))):
        raise argparse.ArgumentTypeError("a count (1, 2, ...) or a fraction between 0 and 1 (0.1)")
    return int(v) if v >= 1 else v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 < v <= 30 * 86400:
        raise argparse.ArgumentTypeError("seconds, more than 0 and at most 30 days")
    return v


def _run(cmd: str, args: argparse.Namespace, job: Any) -> int:
    try:
        return int(job(args))
    except GroupCliError as e:
        print(f"lumeau fleet {cmd}: {e}", file=sys.stderr)
        return 1


def add_subcommand(subparsers: Any) -> None:
    fleet = subparsers.add_parser(
        "fleet",
        help="firmware update campaigns at a running gateway: a release to a group, canaries first",
        description="Run a signed release (lumeau node release) over a group through the gateway: canary nodes "
        "first, the rest once the canaries are healthy; pause, resume, abort; progress node by node. "
        "A node of the rest that rolls back or fails is dropped and the others go on: the campaign ends "
        "done, its reason saying 'done with failures: ...'. "
        "gateway/README.md 'Campaigns' says how healthy and rolled back are told.",
    )
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")

    def where(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", required=True, help="the gateway's API URL, e.g. http://127.0.0.1:8760")
        p.add_argument("--token", help=f"API token for --gateway (or ${TOKEN_ENV})")
        p.add_argument("--json", action="store_true", help="the API's answer as JSON")

    u = actions.add_parser("update", help="start a campaign: a release image to every node of a group")
    u.add_argument("--group", required=True, help="the group (lumeau group list)")
    u.add_argument("--release", required=True, type=Path, metavar="R.lup", help="the image `lumeau node release` made")
    u.add_argument(
        "--canary",
        type=_canary,
        default=1,
        metavar="N|F",
        help="canary nodes: a count, or a fraction of the group rounded up (default %(default)s)",
    )
    u.add_argument(
        "--window",
        type=_seconds,
        metavar="S",
        help="seconds the canaries have, after their delivery, to be healthy (default: the gateway's, 7200)",
    )
    u.add_argument(
        "--healthy-after",
        type=_seconds,
        metavar="S",
        help="healthy once a node reports this long after its HELLO from the release (default: the gateway's, 150)",
    )
    u.add_argument("--follow", action="store_true", help="print the progress until the campaign ends")
    where(u)
    u.set_defaults(func=lambda a: _run("update", a, _update))

    s = actions.add_parser("status", help="the campaigns, or one campaign node by node")
    s.add_argument("id", type=int, nargs="?", metavar="ID", help="a campaign id (omit: all of them)")
    where(s)
    s.set_defaults(func=lambda a: _run("status", a, _status))

    for name, what in (
        ("pause", "pause a running campaign (the delivery in flight stops)"),
        ("resume", "resume a paused campaign"),
        ("abort", "abort a running or paused campaign"),
    ):
        p = actions.add_parser(name, help=what)
        p.add_argument("id", type=int, metavar="ID", help="the campaign id")
        where(p)
        p.set_defaults(func=lambda a, name=name: _run(name, a, _act))
