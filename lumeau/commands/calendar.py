"""`lumeau calendar check`: compile calendar files as the gateway does, and show what they say.

    lumeau calendar check FILE... [--on YYYY-MM-DD] [--days N] [--json]

Each file is compiled exactly as the gateway compiles its `[calendars] dir`
(gateway/calendars.py; the file format is in gateway/README.md, "Calendars"):
its kind, time zone, the nodes and groups it is for, the compiled size, the
number of CONFIG fragments (at most 51 B each on the air) and the hash a node
reports once it holds it. With --on, what a node holding it does on each of N
days from that date, worked out by the node's own code (firmware/calendar.py):
the lighting profile of the night that starts that evening ("own": the node's
own profile), or the irrigation programs that start that day (local time).

Exit codes: 0 every file compiled, 1 a file did not (the message names the
file, the key and why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

KIND_NAMES = {1: "lighting", 2: "irrigation"}
ANCHOR_NAMES = ("sunset", "sunrise", "midnight")


def _date(v: str) -> dt.date:
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a date YYYY-MM-DD") from None


def _days_arg(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= 366:
        raise argparse.ArgumentTypeError("--days must be 1..366")
    return n


def describe(c: Any, on: dt.date | None, days: int) -> dict[str, Any]:
    """A compiled calendar (gateway.calendars.Compiled) as JSON, with what it says from `on`."""
    from firmware import calendar as fc
    from protocol import calendar as pc

    out: dict[str, Any] = {
        "file": c.path,
        "name": c.name,
        "kind": KIND_NAMES[c.kind],
        "utc_offset_min": (c.blob[2] - 256 if c.blob[2] > 127 else c.blob[2]) * 15,
        "eu_summer_time": bool(c.blob[3]),
        "nodes": [f"{n:08x}" for n in c.nodes],
        "groups": list(c.groups),
        "default": c.default,
        "bytes": len(c.blob),
        "rules": len(c.rule_names),
        "rule_names": list(c.rule_names),
        "fragments": len(pc.fragments(c.blob)),
        "hash": c.hash.hex(),
    }
    if on is None:
        return out
    held = c.hash + c.blob  # what the node keeps
    plan: list[dict[str, Any]] = []
    for i in range(days):
        d = on + dt.timedelta(days=i)
        day = (d - dt.date(1970, 1, 1)).days
        if c.kind == 1:
            steps = fc.profile(held, day)
            name = "own"
            if steps is not None:
                name = next((n for n, s in c.profiles.items() if list(s) == list(steps)), "?")
            plan.append({"date": d.isoformat(), "profile": name})
        else:
            done = [-1] * pc.RULES_MAX
            starts = sorted({held[j + 8] << 8 | held[j + 9] for j in range(10, len(held), pc.PROGRAM_LEN)})
            runs = []
            for minute in starts:
                for zone, mins in fc.schedule(held, day, minute, done):
                    runs.append({"zone": zone, "start": f"{minute // 60:02d}:{minute % 60:02d}", "minutes": mins})
            plan.append({"date": d.isoformat(), "programs": runs})
    out["plan"] = plan
    return out


def _check(args: argparse.Namespace) -> int:
    from gateway.calendars import CalendarError, load

    results = []
    for path in args.files:
        try:
            results.append(describe(load(path), args.on, args.days))
        except CalendarError as e:
            print(f"lumeau calendar check: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return 0
    for r in results:
        where = ", ".join([*r["nodes"], *(f"group {g}" for g in r["groups"])] + (["default"] if r["default"] else []))
        print(
            f"{r['file']}: {r['kind']} calendar {r['name']!r}, UTC{r['utc_offset_min'] / 60:+g} h"
            f"{' + EU summer time' if r['eu_summer_time'] else ''}, for {where or 'no node'}"
        )
        print(f"  {r['rules']} rules, {r['bytes']} B, {r['fragments']} CONFIG fragments, hash {r['hash']}")
        for n in r["rule_names"]:
            print(f"    - {n}")
        for p in r.get("plan", []):
            if "profile" in p:
                print(f"  {p['date']}: profile {p['profile']}")
            else:
                runs = ", ".join(f"zone {x['zone']} {x['start']} {x['minutes']} min" for x in p["programs"])
                print(f"  {p['date']}: {runs or 'no program'}")
    return 0


def add_subcommand(subparsers: Any) -> None:
    cal = subparsers.add_parser(
        "calendar",
        help="check lighting and irrigation calendar files (what the gateway compiles for its nodes)",
        description="Compile calendar files as the gateway does; show their size, hash and what they say.",
    )
    actions = cal.add_subparsers(dest="calendar_command", required=True, metavar="ACTION")
    chk = actions.add_parser(
        "check",
        help="compile calendar files; with --on, what a node holding one does day by day",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    chk.add_argument("files", nargs="+", metavar="FILE", help="calendar files (TOML, gateway/README.md)")
    chk.add_argument("--on", type=_date, default=None, metavar="YYYY-MM-DD", help="show what applies from this date")
    chk.add_argument("--days", type=_days_arg, default=7, help="days shown with --on (default 7)")
    chk.add_argument("--json", action="store_true", help="JSON instead of text")
    chk.set_defaults(func=_check)
