"""One area of the issue's 10,000-node city: CPU seconds per 1,000 node-days, against a baseline commit run beside it.

Workload: `lumeau sim generate --streets 100 --lamps-per-street 96 --parks 60
--gateways 16` (9,660 nodes), split into gateway areas as a Dask run splits
it (simulator/areas.py, `halo` border: an area keeps every gateway its
nodes may reach, all 16 here), and ONE area (`--area`, by index in gateway
order; `--scale` keeps that share of its nodes, as `--nodes-scale`) run for
`--hours` (default 24, from noon) on the in-process engine
(simulator/runner.py), as a Dask task runs it: the real firmware, channel
and gateway. One area is what each Dask task costs; the city's CPU is the
sum of 16 of them.

Baseline (`--baseline REF`, e.g. `main`): the same slice run by the code of
git commit REF (its tree extracted to a temporary directory) in a child
process, AT THE SAME TIME as this process's run, round after round
(`--rounds`): two copies of one Python package cannot be imported in one
process, and running them side by side gives both the same share of a busy
machine, so the ratio holds where the absolute CPU seconds move with the
load (other sessions on this 2-core machine move them by 10-20 %). Each
round also compares the two runs' results (everything but the wall-clock
figures): a speed-up must not change what the simulator reports.

Figures: `cpu_s_per_1000_node_days` (this code; each round's, and the
lowest), the baseline's, `ratio` (this code's CPU / the baseline's, per
round and the median), `identical` (per round).

Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402

# The slice, as a script: run by this code (in this process) and by the baseline's (a child with
# the baseline's tree first on sys.path); it uses only what both have (generate, split, run).
SLICE = r"""
import json, sys, time
from simulator.areas import split
from simulator.city_generator import CitySpec, generate
from simulator.engine import RunOptions, prepare
from simulator.runner import run

def slice_run(streets, lamps, parks, gateways, hours, area, scale, seed):
    _text, sc = generate(CitySpec(streets=streets, lamps_per_street=lamps, parks=parks, zones_per_park=4,
                                  gateways=gateways, seed=seed, hours=hours))
    a = split(prepare(sc, RunOptions()), "halo")[area]
    opts = RunOptions(progress=False, nodes_scale=scale)
    nodes = len(prepare(a.scenario, opts).nodes)
    c0 = time.process_time()
    res = run(a.scenario, opts)
    cpu = time.process_time() - c0
    d = json.loads(json.dumps(res.to_dict()))
    d.pop("run", None)  # wall and CPU figures: the machine's, not the simulation's
    return {"gateway": a.gateway, "gateways": len(a.scenario.gateways), "nodes": nodes,
            "node_days": nodes * a.scenario.duration_s / 86400.0, "cpu_s": cpu, "results": d}
"""


def _slice(args: argparse.Namespace) -> Any:
    ns: dict[str, Any] = {}
    exec(compile(SLICE, "<bench slice>", "exec"), ns)  # the same text the baseline's child runs
    return ns["slice_run"]


def _slice_args(a: argparse.Namespace) -> tuple:
    return (a.streets, a.lamps_per_street, a.parks, a.gateways, a.hours, a.area, a.scale, a.seed)


def _extract(ref: str, into: Path) -> Path:
    """The tree of commit `ref` in `into`, with this tree's built C extension (the same source is assumed)."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], stdout=f, check=True)
    tree = into / "tree"
    tree.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(tree, filter="data")
    for so in (ROOT / "gateway").glob("_fastadmit*.so"):
        shutil.copy2(so, tree / "gateway" / so.name)
    return tree


def _child(tree: Path, a: argparse.Namespace, out: dict[str, Any]) -> None:
    code = (
        f"import sys, json\nsys.path.insert(0, {str(tree)!r})\n{SLICE}\n"
        f"print(json.dumps(slice_run(*{_slice_args(a)!r})))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tree))
    if p.returncode != 0:
        out["error"] = p.stderr[-2000:]
        return
    out.update(json.loads(p.stdout.strip().splitlines()[-1]))


def differences(a: Any, b: Any, path: str = "", limit: int = 5) -> list[str]:
    """Up to `limit` paths where two results differ ("delivery/stored: 1 != 2")."""
    out: list[str] = []
    if type(a) is not type(b):
        return [f"{path}: {a!r:.60} != {b!r:.60}"]
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in one")
            else:
                out += differences(a[k], b[k], f"{path}/{k}", limit - len(out))
            if len(out) >= limit:
                break
    elif isinstance(a, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]", limit - len(out))
            if len(out) >= limit:
                break
    elif a != b:
        out.append(f"{path}: {a!r:.60} != {b!r:.60}")
    return out[:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--streets", type=int, default=100)
    ap.add_argument("--lamps-per-street", type=int, default=96)
    ap.add_argument("--parks", type=int, default=60)
    ap.add_argument("--gateways", type=int, default=16)
    ap.add_argument("--area", type=int, default=5, help="the area's index in gateway order (default 5: gw-006)")
    ap.add_argument("--scale", type=float, default=1.0, help="keep this share of the area's nodes")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", metavar="REF", help="a git commit to run beside this code (e.g. main)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    slice_run = _slice(a)
    rounds: list[dict[str, Any]] = []
    tmp = tempfile.TemporaryDirectory(prefix="lumeau-bench-area-") if a.baseline else None
    try:
        tree = _extract(a.baseline, Path(tmp.name)) if tmp is not None and a.baseline else None
        for _ in range(a.rounds):
            base: dict[str, Any] = {}
            th = threading.Thread(target=_child, args=(tree, a, base)) if tree is not None else None
            if th is not None:
                th.start()
            t0 = time.perf_counter()
            mine = slice_run(*_slice_args(a))
            wall = time.perf_counter() - t0
            if th is not None:
                th.join()
                if "error" in base:
                    sys.exit(f"the baseline {a.baseline} failed:\n{base['error']}")
            r: dict[str, Any] = {
                "cpu_s": round(mine["cpu_s"], 2),
                "wall_s": round(wall, 2),
                "cpu_s_per_1000_node_days": round(1000 * mine["cpu_s"] / mine["node_days"], 1),
            }
            if base:
                r["baseline_cpu_s_per_1000_node_days"] = round(1000 * base["cpu_s"] / base["node_days"], 1)
                r["ratio"] = round(mine["cpu_s"] / base["cpu_s"], 3)
                r["identical"] = base["results"] == mine["results"]
                if not r["identical"]:
                    r["differences"] = differences(base["results"], mine["results"])
            rounds.append(r)
    finally:
        if tmp is not None:
            tmp.cleanup()
    result: dict[str, Any] = {
        "area": mine["gateway"],
        "area_gateways": mine["gateways"],
        "nodes": mine["nodes"],
        "hours": a.hours,
        "node_days": round(mine["node_days"], 2),
        "uplinks_settled": mine["results"]["delivery"]["settled"],
        "delivery_pct": round(mine["results"]["delivery"]["ratio_pct"], 3),
        "cpu_s_per_1000_node_days": min(r["cpu_s_per_1000_node_days"] for r in rounds),
        "rounds": rounds,
    }
    if a.baseline:
        result["baseline"] = a.baseline
        result["baseline_cpu_s_per_1000_node_days"] = min(r["baseline_cpu_s_per_1000_node_days"] for r in rounds)
        result["ratio_median"] = round(statistics.median(r["ratio"] for r in rounds), 3)
        result["identical"] = all(r["identical"] for r in rounds)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result.update(machine())
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
