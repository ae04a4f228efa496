"""A city on Dask distributed: its areas (simulator/areas.py) as tasks, one results object.

    result = run_city(scenario, CityOptions(workers=2))                  # a LocalCluster of 2 processes
    result = run_city(scenario, CityOptions(scheduler="tcp://host:8786"))  # an existing cluster

Each area is one task: `run_area` runs it on the existing in-process engine
(`simulator.runner.run`: the real firmware, channel and gateway) and
returns its results dict. An area's results depend only on the area and the
seed, never on which worker ran it or how many there are, and the city's
results are put together in the areas' (gateway) order, so the results are
the same for any number of workers (`without_wall_clock`).

Progress: a text bar on stderr (areas done, node-days done, elapsed).
A lost worker: Dask reschedules its task on another worker (the
scheduler's `allowed-failures`), and a task that raises is retried
(`submit(retries=RETRIES)`); every attempt records its start on a
distributed Queue, so an area that started more than once is named in the
results' `retried_areas`. An area that still fails ends the run with an
error naming it (the other areas' results are not kept: `AreaFailed`).

The workers need this package installed (as `pip install -e .` does here).
Areas are submitted largest first (Dask priority = nodes), so the wall
time is not set by a large area started last.

Limits: RETRIES, CONNECT_TIMEOUT_S, MEMORY_LIMIT; one task per area, so
parallelism is at most the number of non-empty areas.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
import uuid
from typing import Any

from simulator.areas import Area, split
from simulator.engine import RunOptions, prepare
from simulator.scenario import Scenario

RETRIES = 2  # a task that raises is run again this many times
CONNECT_TIMEOUT_S = 10.0  # to reach a --scheduler
MEMORY_LIMIT = "2GiB"  # per local worker
MACHINE_KEYS = ("run",)
# A run sets process-wide state (gc thresholds and freeze, the gateway log's counting handler):
# areas given to one worker process run one after another, whatever its thread count.
_ONE_AT_A_TIME = threading.Lock()  # per area: what depends on the machine (left out by without_wall_clock)


class CityError(Exception):
    """The run could not be done: the scheduler is unreachable, or an area failed every attempt."""


@dataclasses.dataclass(frozen=True)
class CityOptions:
    workers: int = 1  # local worker processes (a LocalCluster), when no scheduler is given
    scheduler: str | None = None  # tcp://HOST:8786: an existing cluster
    seed: int | None = None
    hours: float | None = None
    nodes_scale: float = 1.0
    progress: bool | None = None  # None: when stderr is a terminal
    processes: bool = True  # local workers as processes (False: threads in this process, for tests)
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    border: str = "halo"  # areas.split: "halo" (neighbour gateways' reception kept) or "own"
    run_id: str | None = None  # names the run's tasks and its Queue of attempts (default: a random one)


@dataclasses.dataclass
class CityResults:
    sections: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.sections

    def to_json(self) -> str:
        return json.dumps(self.sections)

    def without_wall_clock(self) -> dict[str, Any]:
        d = json.loads(json.dumps(self.sections))
        d.pop("run", None)
        for a in d["areas"]:
            for k in MACHINE_KEYS:
                a["results"].pop(k, None)
        return d

    def summary(self) -> str:
        s = self.sections
        c, dv, r = s["city"], s["delivery"], s["run"]
        lines = [
            f"{c['name']}: {c['nodes']} nodes in {len(s['areas'])} areas, {c['hours']:g} h, seed {c['seed']}",
            f"  delivery: {dv['stored']} of {dv['settled']} settled uplinks stored ({dv['ratio_pct']:.2f} %)",
            f"  energy {s['energy_kwh']:.1f} kWh, water {s['water_m3']:.2f} m3",
            f"  {r['workers']} workers ({r['scheduler']}): {r['wall_s']:.1f} s wall "
            f"(+{r['startup_s']:.1f} s to start), {r['cpu_s']:.1f} CPU s in the areas, "
            f"{r['node_days_per_cpu_s']:.2f} node-days per CPU s",
        ]
        if s["retried_areas"]:
            lines.append("  retried areas: " + ", ".join(s["retried_areas"]))
        return "\n".join(lines)


def run_area(area: Area, queue_name: str | None = None) -> dict[str, Any]:
    """One area on the in-process engine (a Dask task); its results dict."""
    from simulator.runner import run

    if queue_name is not None:
        from distributed import Queue

        Queue(queue_name).put(area.gateway)  # this attempt started (a second one means a retry)
    with _ONE_AT_A_TIME:
        return run(area.scenario, RunOptions(progress=False)).to_dict()


def _client(options: CityOptions) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    if options.scheduler is not None:
        try:
            return Client(options.scheduler, timeout=options.connect_timeout_s), None
        except (OSError, TimeoutError) as e:
            raise CityError(f"cannot reach the Dask scheduler at {options.scheduler}: {e}") from None
    cluster = LocalCluster(
        n_workers=options.workers,
        threads_per_worker=1,  # the engine is pure Python: one area per process at a time
        processes=options.processes,
        memory_limit=MEMORY_LIMIT,
        dashboard_address=":0",  # its HTTP server on a free port, never a fixed one
        scheduler_port=0,
    )
    return Client(cluster), cluster


def run_city(scenario: Scenario, options: CityOptions = CityOptions(), client: Any = None) -> CityResults:
    """The city's areas on a cluster (options.scheduler, or a LocalCluster of options.workers; or `client`)."""
    from distributed import Queue, as_completed

    sc = prepare(scenario, RunOptions(seed=options.seed, hours=options.hours, nodes_scale=options.nodes_scale))
    areas = split(sc, options.border)
    if not areas:
        raise ValueError("the scenario has no nodes")
    if options.scheduler is None and not 1 <= options.workers <= 64:
        raise ValueError(f"--workers must be within 1..64, got {options.workers}")
    progress = options.progress if options.progress is not None else sys.stderr.isatty()
    own = client is None
    cluster = None
    start0 = time.perf_counter()
    if own:
        client, cluster = _client(options)
    wall0 = time.perf_counter()
    try:
        run_id = options.run_id or uuid.uuid4().hex[:12]
        queue_name = f"lumeau-city-{run_id}"
        starts = Queue(queue_name, client=client)
        futures = {
            # the largest areas first (Dask's priority), so a large one does not start last and set the wall time
            client.submit(
                run_area,
                a,
                queue_name,
                key=f"lumeau-area-{a.gateway}-{run_id}",
                retries=RETRIES,
                pure=False,
                priority=a.nodes,
            ): a
            for a in sorted(areas, key=lambda a: (-a.nodes, a.index))
        }
        results: dict[str, dict[str, Any]] = {}
        total_nd = sum(a.nodes for a in areas) * sc.duration_s / 86400.0
        done_nd = 0.0
        if progress:
            _draw(0, len(areas), 0.0, total_nd, 0.0)
        for fut in as_completed(list(futures)):
            area = futures[fut]
            try:
                results[area.gateway] = fut.result()
            except Exception as e:  # the task failed every attempt: say which area and why
                raise CityError(f"area {area.gateway} ({area.nodes} nodes) failed: {type(e).__name__}: {e}") from None
            done_nd += area.nodes * sc.duration_s / 86400.0
            if progress:
                _draw(len(results), len(areas), done_nd, total_nd, time.perf_counter() - wall0)
        if progress:
            print(file=sys.stderr)
        wall = time.perf_counter() - wall0
        attempts: dict[str, int] = {}
        for gw in starts.get(batch=True):
            attempts[gw] = attempts.get(gw, 0) + 1
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    retried = [a.gateway for a in areas if attempts.get(a.gateway, 0) > 1]
    merged = _merge(sc, areas, results, retried, wall, workers, options)
    merged["run"]["startup_s"] = wall0 - start0  # the cluster's start (0 with a given client)
    return CityResults(merged)


def _draw(done: int, total: int, nd: float, total_nd: float, wall: float) -> None:
    width = 30
    filled = int(width * nd / total_nd) if total_nd else width
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} areas, "
        f"{nd:,.1f}/{total_nd:,.1f} node-days, {wall:.0f} s"
    )
    sys.stderr.flush()


def _merge(
    sc: Scenario,
    areas: list[Area],
    results: dict[str, dict[str, Any]],
    retried: list[str],
    wall: float,
    workers: int,
    options: CityOptions,
) -> dict[str, Any]:
    """The city's figures: sums over the areas in gateway order (same floats whatever finished first)."""
    order = [results[a.gateway] for a in areas]
    keys = ("on_air", "settled", "heard", "stored", "lost_on_air")
    delivery: dict[str, Any] = {k: sum(r["delivery"][k] for r in order) for k in keys}
    refused: dict[str, int] = {}
    for r in order:
        for k, v in r["delivery"]["refused"].items():
            refused[k] = refused.get(k, 0) + v
    delivery["refused"] = dict(sorted(refused.items()))
    delivery["ratio"] = delivery["stored"] / delivery["settled"] if delivery["settled"] else 0.0
    delivery["ratio_pct"] = 100.0 * delivery["ratio"]
    cpu = sum(r["run"]["cpu_s"] for r in order)
    nodes = sum(a.nodes for a in areas)
    node_days = nodes * sc.duration_s / 86400.0
    return {
        "city": {
            "name": sc.name,
            "file": sc.file,
            "seed": sc.seed,
            "hours": sc.duration_s / 3600.0,
            "nodes": nodes,
            "lamps": len(sc.lamps),
            "controllers": len(sc.controllers),
            "gateways": len(sc.gateways),
        },
        "split": {
            "by": "best gateway (median received power)",
            "border": options.border,
            "border_rule": "interference across a border ignored: each area has its own channel"
            + (
                "; neighbour gateways an area's nodes may reach are in its channel (their reception kept)"
                if options.border == "halo"
                else "; a node is heard by its own area's gateway only"
            ),
            "area_gateways": {a.gateway: [g.id for g in a.scenario.gateways] for a in areas},
            "empty_gateways": [g.id for g in sc.gateways if g.id not in results],
        },
        "delivery": delivery,
        "energy_kwh": sum(r["energy"]["kwh"] for r in order),
        "water_m3": sum(r["water"]["m3"] for r in order),
        "retried_areas": retried,
        "areas": [{"gateway": a.gateway, "nodes": a.nodes, "results": results[a.gateway]} for a in areas],
        "run": {
            "workers": workers,
            "scheduler": options.scheduler or ("local processes" if options.processes else "local threads"),
            "wall_s": wall,
            "cpu_s": cpu,
            "node_days": node_days,
            "node_days_per_cpu_s": node_days / cpu if cpu > 0 else 0.0,
            "cpu_s_per_1000_node_days": 1000.0 * cpu / node_days if node_days else 0.0,
        },
    }
