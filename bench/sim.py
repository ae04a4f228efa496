"""The whole simulator in-process: simulated node-seconds per wall second, against baselines of the same run.

Workload: simulator/scenarios/city.toml thinned to about N nodes
(`--nodes`, default 1,000: its lamps and irrigation controllers in their
file's proportions) for `--hours` simulated hours (default 24), run by
`lumeau sim run` in-process (simulator/runner.py): every node the real
firmware runtime and app on the LoRa channel, the real gateway pipeline,
store and downlinks. The bar: at most BAR_S wall seconds for 1,000 nodes
over 24 hours on this machine. `--workers` (default: the machine's cores,
at most 4) runs the nodes in that many processes with the channel and the
gateway in the main one (simulator/parallel.py); CPU figures then add up
every process.

Baselines, measured in the same run and compared as rates (node-seconds
per CPU second: on a shared machine other work moves wall time, not CPU
time, so the ratios hold; the bar is on wall time and printed too):

  bare    every node a task that only wakes at its app's tick (lamps 10 s,
          controllers 5 s) on the stock simulator.virtual_loop.VirtualLoop,
          for BASELINE_HOURS: what the virtual clock alone costs such a crowd;
  steps   the apps' own step() called at that rate in a plain loop (no
          asyncio, no runtime, radio or gateway) over the whole simulated
          period (a lamp's step costs more at night), for STEPS_NODES of the
          nodes: the firmware's control logic alone, the least any
          simulation running the real apps pays.

Ratios: `vs_bare` = sim rate / bare rate (above 1: the whole simulation,
firmware, radio and gateway included, runs faster than bare asyncio
wake-ups of the same crowd would); `steps_share` = sim rate / steps rate,
the share of the run's wall time that the apps' own control steps account
for (the rest is the runtime, the radio, the gateway, the world and the
clock).

Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402
from firmware import config as fw_config  # noqa: E402
from firmware.irrigation import Irrigation  # noqa: E402
from firmware.lighting import Lighting  # noqa: E402
from firmware.runtime import Node  # noqa: E402
from simulator import runner, sensors  # noqa: E402
from simulator import scenario as sc_mod  # noqa: E402
from simulator.air import NodeRadio  # noqa: E402
from simulator.hal_sim import SimHAL  # noqa: E402
from simulator.virtual_loop import VirtualClock, VirtualLoop  # noqa: E402

BAR_S = 60.0
BASELINE_HOURS = 1.0
STEPS_NODES = 100


def nodes_of(sc: sc_mod.Scenario, opts: runner.RunOptions) -> list:
    return list(runner.prepare(sc, opts).nodes)


def bare(sc: sc_mod.Scenario, nodes: list, hours: float) -> float:
    """CPU s for every node to wake at its app's tick for `hours` on the stock virtual loop."""
    clock = VirtualClock(unix0=int(sc.start_unix))
    loop = VirtualLoop(clock)
    ticks = {n.name: runner.SIM_TICK_MS[n.kind] for n in nodes}

    async def node(tick_ms: int) -> None:
        while True:
            await clock.sleep_ms(tick_ms)

    async def main() -> None:
        tasks = [asyncio.ensure_future(node(ticks[n.name])) for n in nodes]
        await asyncio.sleep(hours * 3600)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    t0 = time.process_time()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return time.process_time() - t0


def steps(sc: sc_mod.Scenario, nodes: list, hours: float) -> float:
    """CPU s of the apps' own step() at their tick for `hours`, called in a plain loop."""
    clock = VirtualClock(unix0=int(sc.start_unix))
    apps: list[tuple[int, Lighting | Irrigation]] = []
    for n in nodes:
        raw = json.dumps(runner.firmware_config(sc, n, sc.radio.channels_hz[0])).encode()
        cfg = fw_config.load(raw)
        hal = SimHAL(clock, time_known=True, history_max=0)
        power = getattr(n, "rated_power_w", 60.0)

        def lamp_mv(hal: SimHAL = hal, power: float = power) -> int:  # a healthy lamp
            return sensors.lamp_current_mv(sensors.lamp_current_ma(hal.pwm.get("lamp", 0), power))

        hal.set_adc("lamp_current", lamp_mv)
        hal.set_adc("ambient", 100)
        # No air: only step() runs, no event loop, so the radio never sends (a send would fail loudly).
        radio = NodeRadio(None, n.node_id, cfg["radio"]["freq_hz"], n.sf)  # type: ignore[arg-type]
        node = Node(cfg, hal, radio, runner.APPS[n.kind], watchdog=False)
        app = runner.APPS[n.kind](cfg, hal, node)
        assert isinstance(app, (Lighting, Irrigation))  # runner.APPS' classes
        apps.append((runner.SIM_TICK_MS[n.kind], app))
    end_ms = int(hours * 3600 * 1000)
    t0 = time.process_time()
    for tick, app in apps:
        clock.t = 0.0
        ms = 0
        while ms < end_ms:
            app.step()
            ms += tick
            clock.t = ms / 1000
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--baseline-hours", type=float, default=BASELINE_HOURS)
    ap.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="node processes (simulator/parallel.py; 1: everything in one process); default: the cores",
    )
    args = ap.parse_args(argv)

    sc = sc_mod.load(ROOT / "simulator" / "scenarios" / "city.toml")
    share = min(1.0, args.nodes / len(sc.nodes))
    opts = runner.RunOptions(nodes_scale=share, hours=args.hours, progress=False, workers=args.workers)
    nodes = nodes_of(sc, opts)
    n = len(nodes)

    t_bare = bare(sc, nodes, args.baseline_hours)
    few = nodes[:: max(1, n // STEPS_NODES)][:STEPS_NODES]
    t_steps = steps(sc, few, args.hours)
    t0 = time.perf_counter()
    res = runner.run(sc, opts)
    wall = time.perf_counter() - t0
    cpu = res.to_dict()["run"]["cpu_s"]  # every process of the run
    node_s = n * args.hours * 3600
    sim_rate = node_s / cpu  # ratios on CPU time: other work on the machine moves wall time
    bare_rate = n * args.baseline_hours * 3600 / t_bare
    steps_rate = len(few) * args.hours * 3600 / t_steps
    r = res.to_dict()
    scale = (1000 / n) * (24 / args.hours)
    result = {
        "bench": "sim",
        "scenario": "city.toml",
        "nodes": n,
        "lamps": r["scenario"]["lamps"],
        "controllers": r["scenario"]["controllers"],
        "simulated_hours": args.hours,
        "workers": args.workers,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "node_seconds_per_wall_s": round(node_s / wall),
        "node_seconds_per_cpu_s": round(sim_rate),
        "wall_s_per_1000_nodes_24h": round(wall * scale, 1),
        "cpu_s_per_1000_nodes_24h": round(cpu * scale, 1),
        "bar_s": BAR_S,
        "meets_bar": wall * scale <= BAR_S,
        "bare_wakeups_node_seconds_per_cpu_s": round(bare_rate),
        "steps_node_seconds_per_cpu_s": round(steps_rate),
        "vs_bare": round(sim_rate / bare_rate, 3),
        "steps_share": round(sim_rate / steps_rate, 3),
        "uplinks": r["delivery"]["on_air"],
        "delivery_ratio": round(r["delivery"]["ratio"], 4),
        **machine(),
    }
    emit(result, args.json, "{k:>40}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
