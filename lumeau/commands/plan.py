"""`lumeau plan`: choose gateway sites among candidate rooftops (simulator/planning.py does the work).

Only argument parsing, the output files and exit statuses live here. Invalid input (a scenario, a
candidates file, an option) and a target no set of candidates meets exit with status 2 (INVALID).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

INVALID = 2


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan",
        help="choose gateway sites among candidate rooftops for a target delivery (DER)",
        description="Choose the fewest gateway sites among CANDIDATES (a CSV file: id,x,y[,height_m], metres as "
        "the scenario) that give SCENARIO's nodes the target DER over its channel model and real traffic "
        "(reports, alarms, TIME and ACK downlinks): greedy set cover on the link margins, then greedy on "
        "the expected DER, then reverse delete (simulator/README.md, 'Gateway planning'). Prints the chosen "
        "sites, the DER per street and park, each site's airtime margin.",
    )
    p.add_argument(
        "scenario", type=Path, help="a scenario file (its gateways are ignored: the candidates replace them)"
    )
    p.add_argument("--candidates", type=Path, required=True, help="candidate sites: CSV with id,x,y[,height_m]")
    p.add_argument("--target-der", type=float, default=0.99, help="the delivery to meet, 0 < DER < 1 (default 0.99)")
    p.add_argument(
        "--margin-db",
        type=float,
        help="installation margin over SF12's sensitivity for a site to cover a node (default: [radio] sf_margin_db)",
    )
    p.add_argument(
        "--alarms-per-node-day",
        type=float,
        help="confirmed alarms per node and day in the traffic (default 0.1)",
    )
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="also search every subset (at most 16 candidates) and report the greedy's gap",
    )
    p.add_argument(
        "--check-hours",
        type=float,
        default=0.0,
        metavar="H",
        help="also run H hours of the traffic on the channel's event model with the chosen sites "
        "(collisions, capture, demodulators, half duplex) and print its DER beside the estimate",
    )
    p.add_argument("--seed", type=int, default=1, help="the event model's draws (with --check-hours)")
    p.add_argument("--map", type=Path, help="write the map (PNG): nodes by delivery and SF, the sites")
    p.add_argument("--out", type=Path, help="write the chosen sites here: .csv or .json (the full plan)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from simulator.planning import ALARMS_PER_NODE_DAY, PlanError, Planner, load_candidates
    from simulator.scenario import ScenarioError, load

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return INVALID

    if not 0.0 < args.target_der < 1.0:
        return fail(f"--target-der: must be between 0 and 1 (exclusive), got {args.target_der:g}")
    if args.out is not None and args.out.suffix not in (".csv", ".json"):
        return fail(f"--out: {args.out}: give a .csv or .json file")
    alarms = ALARMS_PER_NODE_DAY if args.alarms_per_node_day is None else args.alarms_per_node_day
    if not 0.0 <= alarms <= 1000.0:
        return fail(f"--alarms-per-node-day: must be within 0..1000, got {alarms:g}")
    if not 0.0 <= args.check_hours <= 24.0 * 31:
        return fail(f"--check-hours: must be within 0..744, got {args.check_hours:g}")
    try:
        sc = load(args.scenario)
    except ScenarioError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{args.scenario}: {e.strerror or e}")
    try:
        sites = load_candidates(args.candidates)
        planner = Planner(sc, sites, args.margin_db, alarms)
        plan = planner.greedy(args.target_der)
        best = planner.exhaustive(args.target_der) if args.exhaustive else None
    except PlanError as e:
        return fail(str(e))
    result = planner.to_dict(plan, best)
    if args.check_hours > 0:
        from simulator.plan_check import event_der

        der, counts = event_der(planner, plan.evaluation, args.check_hours, args.seed)
        result["event_check"] = {"hours": args.check_hours, "seed": args.seed, "der": round(der, 5), **counts}
    try:
        if args.map is not None:
            from simulator.plan_map import plot

            args.map.write_bytes(plot(planner, plan.evaluation))
            result["map"] = str(args.map)
        if args.out is not None:
            args.out.write_text(
                json.dumps(result, indent=2) + "\n" if args.out.suffix == ".json" else sites_csv(result)
            )
    except OSError as e:
        print(f"error: cannot write: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return 0


def sites_csv(result: dict) -> str:
    """The chosen sites as CSV, the candidates file's columns and what the plan says of each."""
    buf = io.StringIO()
    cols = ["id", "x", "y", "height_m", "nodes", "uplink_load", "downlink_s_per_h", "airtime_margin"]
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for row in result["chosen"]:
        w.writerow({k: row[k] for k in cols})
    return buf.getvalue()


def summary(r: dict) -> str:
    lines = [
        f"{r['scenario']}: {r['nodes']} nodes, {r['candidates']} candidate sites, target DER {r['target_der']:g}",
        f"  {len(r['chosen'])} gateways ({r['algorithm']}): expected DER {r['der']:.4f}",
    ]
    for s in r["chosen"]:
        lines.append(
            f"  {s['id']:>12} ({s['x']:g}, {s['y']:g}) {s['nodes']} nodes, busiest channel/SF load "
            f"{s['uplink_load']:.4f}, downlinks {s['downlink_s_per_h']:.1f} s/h, "
            f"airtime margin {100 * s['airtime_margin']:.1f} %"
        )
    lines.append("  SF: " + ", ".join(f"{k} x{v}" for k, v in r["sf_histogram"].items()))
    groups = sorted(r["der_by_group"].items(), key=lambda kv: kv[1]["der"])
    lines.append(f"  DER per street and park (worst {min(5, len(groups))} of {len(groups)}):")
    for k, g in groups[:5]:
        lines.append(f"    {k}: {g['der']:.4f} ({g['nodes']} nodes, worst node {g['worst']:.4f})")
    below = r["groups_below_target"]
    if below:
        shown = ", ".join(below[:8]) + (f" and {len(below) - 8} more" if len(below) > 8 else "")
        lines.append(
            f"  note: the target is the city's DER; {len(below)} of {len(groups)} streets and parks "
            f"are below it: {shown}"
        )
    ex = r.get("exhaustive")
    if ex:
        lines.append(
            f"  exhaustive: {ex['sites']} gateways ({', '.join(ex['chosen'])}), DER {ex['der']:.4f}; "
            f"greedy's gap {ex['gap']:+d} ({ex['note']})"
        )
    chk = r.get("event_check")
    if chk:
        lines.append(
            f"  event model, {chk['hours']:g} h: DER {chk['der']:.4f} "
            f"({chk['delivered']} of {chk['uplinks']} uplinks heard; estimate {r['der']:.4f})"
        )
    if "map" in r:
        lines.append(f"  map: {r['map']}")
    return "\n".join(lines)
