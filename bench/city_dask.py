"""A generated city on Dask: node-days per CPU second with 1 and 2 local workers, against the in-process engine.

Workload: `lumeau sim generate` with `--streets` x `--lamps-per-street` lamps,
`--parks` parks of 4 zones (one controller each) and `--gateways` gateways
(default 40 x 24 + 10 = 970 nodes, 4 gateways), for `--hours` simulated
hours (default 2, from noon: daytime, the lamps off). In the same process:

  engine   the undivided city on the in-process engine (simulator/runner.py,
           one process): the baseline, CPU per 1,000 node-days;
  dask-1   the city split into gateway areas (simulator/areas.py), the areas
           on a LocalCluster of 1 worker process (simulator/city_dask.py);
  dask-2   the same on 2 worker processes.

Figures: node-days per CPU second (CPU: the areas' own, as each area's run
measures it; and the worker processes' whole CPU, Dask's own work
included), node-days per wall second (the cluster's start apart), the
scaling (dask-2 / dask-1 node-days per wall second; at most the number of
areas on the larger worker's share), `vs_engine` (the engine's CPU per
node-day / the Dask run's: above 1, an area costs less per node than the
undivided city), and the border's cost: the split run's delivery against
the undivided run's, with the default border (`halo`: neighbour gateways'
reception kept) and with `own` (an area hears through its own gateway
only) (the same seed; `--noise` adds the undivided run of the
next seed, so the difference can be read against seed-to-seed variation).

Extrapolation: `10k_24h_*` = 10,000 x 24 h at the measured rate of 2 workers,
per the issue's bar (10 minutes of wall time on this machine).

Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402
from simulator.city_dask import CityOptions, run_city  # noqa: E402
from simulator.city_generator import CitySpec, generate  # noqa: E402
from simulator.engine import RunOptions  # noqa: E402
from simulator.runner import run  # noqa: E402


def _worker_cpu() -> float:
    return time.process_time()  # run in the worker: its whole process's CPU so far


def dask_run(sc: Any, workers: int, border: str = "halo") -> dict[str, Any]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        before = client.run(_worker_cpu)
        res = run_city(sc, CityOptions(progress=False, border=border), client=client)
        after = client.run(_worker_cpu)
    r = res.sections["run"]
    procs_cpu = sum(after[w] - before[w] for w in after if w in before)
    nd = r["node_days"]
    return {
        "workers": workers,
        "startup_s": round(startup, 2),
        "wall_s": round(r["wall_s"], 2),
        "areas_cpu_s": round(r["cpu_s"], 2),
        "workers_cpu_s": round(procs_cpu, 2),
        "node_days_per_cpu_s": round(nd / r["cpu_s"], 3),
        "node_days_per_worker_cpu_s": round(nd / procs_cpu, 3) if procs_cpu > 0 else None,
        "node_days_per_wall_s": round(nd / r["wall_s"], 3),
        "cpu_s_per_1000_node_days": round(1000 * r["cpu_s"] / nd, 1),
        "delivery_pct": round(res.sections["delivery"]["ratio_pct"], 3),
        "settled": res.sections["delivery"]["settled"],
        "areas": [a["nodes"] for a in res.sections["areas"]],
        "retried_areas": res.sections["retried_areas"],
        "_json": res.without_wall_clock(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--streets", type=int, default=40)
    ap.add_argument("--lamps-per-street", type=int, default=24)
    ap.add_argument("--parks", type=int, default=10)
    ap.add_argument("--gateways", type=int, default=4)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--noise", action="store_true", help="also the undivided run of seed + 1")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    spec = CitySpec(
        streets=a.streets,
        lamps_per_street=a.lamps_per_street,
        parks=a.parks,
        zones_per_park=4,
        gateways=a.gateways,
        seed=a.seed,
        hours=a.hours,
    )
    _text, sc = generate(spec)
    nodes = len(sc.nodes)
    node_days = nodes * sc.duration_s / 86400.0

    c0 = time.process_time()
    w0 = time.perf_counter()
    whole = run(sc, RunOptions(progress=False))
    engine_cpu = time.process_time() - c0
    engine_wall = time.perf_counter() - w0
    engine_dlv = whole.sections["delivery"]["ratio_pct"]

    one = dask_run(sc, 1)
    two = dask_run(sc, 2)
    same = one.pop("_json") == two.pop("_json")
    own = dask_run(sc, 2, border="own")
    own.pop("_json")
    engine_per_knd = 1000 * engine_cpu / node_days
    result: dict[str, Any] = {
        "nodes": nodes,
        "hours": a.hours,
        "gateways": a.gateways,
        "node_days": round(node_days, 2),
        "engine_wall_s": round(engine_wall, 2),
        "engine_cpu_s": round(engine_cpu, 2),
        "engine_cpu_s_per_1000_node_days": round(engine_per_knd, 1),
        "engine_delivery_pct": round(engine_dlv, 3),
        "dask_1": one,
        "dask_2": two,
        "identical_1_vs_2": same,
        "scaling_1_to_2": round(two["node_days_per_wall_s"] / one["node_days_per_wall_s"], 2),
        "vs_engine_cpu": round(engine_per_knd / two["cpu_s_per_1000_node_days"], 2),
        "border_delivery_diff_pp": round(two["delivery_pct"] - engine_dlv, 3),
        "own_border_delivery_pct": own["delivery_pct"],
        "own_border_delivery_diff_pp": round(own["delivery_pct"] - engine_dlv, 3),
        "own_border_cpu_s_per_1000_node_days": own["cpu_s_per_1000_node_days"],
        "10k_24h_wall_min_at_2_workers": round(10000 / two["node_days_per_wall_s"] / 60, 1),
        "10k_24h_cpu_s": round(10000 * two["cpu_s_per_1000_node_days"] / 1000, 0),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **machine(),
    }
    if a.noise:
        other = run(sc, RunOptions(progress=False, seed=a.seed + 1))
        result["engine_delivery_pct_next_seed"] = round(other.sections["delivery"]["ratio_pct"], 3)
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
