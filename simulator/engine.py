"""The simulation engine: one run's nodes, world, air, faults and gateway link on a virtual clock.

simulator/runner.py's docstring describes a run and the choices made for
speed; this module holds the machinery that a single-process run
(runner.run) and a parallel one (simulator/parallel.py: a worker runs its
share of the nodes, the coordinator the air and the gateway) share.
`Simulation` is built to be specialised: its public hooks are

- `owns(spec)`: whether this process runs a node (all of them by default);
- `make_air(loop)`: the air the nodes' radios transmit on;
- `setup(loop, clock, workdir)`: channel, world, nodes (booted on the
  clock), the gateway link's context; `start(...)`: that, then the link
  started; `count_gateway_log()`: the gateway's log counted for the results;
- `world_steps()`, `faults()`, `fault_events()`, `snapshot()`: the run's
  tasks and its hourly series; `note_shown(fault)`: a latent fault's effect;
- `end_world(tasks)`: the run's last world step and hour, the tasks
  stopped, the air closed; `stop_nodes()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware import config as fw_config
from firmware.runtime import Node
from protocol import messages as m
from simulator import channel as ch
from simulator import metrics
from simulator.air import Air, NodeRadio
from simulator.clock_watch import ClockWatch
from simulator.faults import (
    BURST,
    GATEWAY_RESTART,
    LAMP_FAILURE,
    LEAK,
    NODE_REBOOT,
    STUCK_VALVE,
    UPSTREAM_OUTAGE,
    Fault,
    FaultSchedule,
)
from simulator.gateway_link import GatewayLink, InProcessGateway, LinkContext, NodeInfo
from simulator.hal_sim import SimReset
from simulator.metrics import Results
from simulator.provisioning import APPS, SIM_TICK_MS, firmware_config
from simulator.scenario import IrrigationNode, LampNode, Scenario
from simulator.simclock import SimClock, Ticker
from simulator.slots import instance_fields, slotted
from simulator.virtual_loop import VirtualLoop
from simulator.world import WORLD_STEP_S, ControllerWorld, World, WorldHAL

BOOT_SPREAD_S = 600.0  # nodes power up over the first 10 minutes
CLOCK_DRIFT_PPM = 100.0  # each node's RTC crystal: drift drawn uniformly in +-this, per node from the seed
OFF_GRID_S = 0.0005  # the gateway and the world tick half a millisecond after the nodes' grid
GC_YOUNG_THRESHOLD = 20000  # allocations between young collections during a run (gateway/service.py does the same)
PROGRESS_STEP_S = 300.0  # the progress bar looks at the clock every 5 simulated minutes ...
PROGRESS_REFRESH_S = 0.25  # ... and redraws at most 4 times a wall second


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario; None keeps the scenario's own value."""

    seed: int | None = None  # another draw of the same map (weather, people, shadowing, keys)
    hours: float | None = None  # run this long instead of the scenario's duration
    nodes_scale: float = 1.0  # keep this share (0 < s <= 1) of the lamps and of the controllers
    progress: bool | None = None  # a progress bar on stderr; None: when stderr is a terminal
    workdir: Path | None = None  # where the in-process gateway keeps its SQLite file (default: a temp dir)
    link: Callable[[], GatewayLink] | None = None  # the gateway link factory (default: InProcessGateway)
    ticked_apps: bool = True  # False: every app loops in its own run() (slower; same behaviour)
    workers: int = 1  # > 1: the nodes in that many processes (simulator/parallel.py)
    # the in-process gateway's automatic TIME (SPEC §4); a parallel run goes without it (its workers
    # hold their clocks only for alarms, and a TIME may follow any uplink)
    auto_time: bool = True


# ---------------------------------------------------------------- the scenario as run


def prepare(scenario: Scenario, options: RunOptions) -> Scenario:
    """The scenario with the options applied (seed, hours, nodes_scale)."""
    sc = scenario
    if options.seed is not None:
        sc = dataclasses.replace(sc, seed=int(options.seed))
    if options.hours is not None:
        if not 0 < options.hours <= 366 * 24:
            raise ValueError(f"--hours must be > 0 and at most {366 * 24} (366 days), got {options.hours:g}")
        dur = options.hours * 3600.0
        sc = dataclasses.replace(sc, duration_s=dur, faults=FaultSchedule([f for f in sc.faults if f.at_s < dur]))
    s = options.nodes_scale
    if not 0 < s <= 1:
        raise ValueError(f"--nodes-scale must be > 0 and at most 1, got {s:g}")
    if not 1 <= options.workers <= 64:
        raise ValueError(f"--workers must be within 1..64, got {options.workers}")
    if s < 1:
        targets = sc.faults.targets()
        sc = dataclasses.replace(sc, lamps=_thin(sc.lamps, s, targets), controllers=_thin(sc.controllers, s, targets))
    return sc


def _thin(nodes: tuple, share: float, keep: set[str]) -> tuple:
    # an even share along the file's order (every street and park keeps its part; the first node
    # always), fault targets kept
    return tuple(n for i, n in enumerate(nodes) if math.ceil((i + 1) * share) > math.ceil(i * share) or n.name in keep)


_SLOTTED_NODE = slotted(Node)  # what the run boots: the real runtime, its fields in slots


def ticked(app_class: type, clock: SimClock) -> type:
    """The app with its run() loop ticked by the clock: step(), then again tick_ms later (see above).

    Its fields are slots (`instance_fields`): CPython reads and writes a slot at a fixed
    offset in the object, where an app's forty-odd fields in an instance dict cost a hashed
    lookup each; step() touches some thirty of them every tick, for every node. Layout
    only: a field the list misses still lives in the instance's __dict__ (the firmware's
    class has one), and nothing reads an app's __dict__.
    """

    class Ticked(app_class):
        __slots__ = instance_fields(app_class)

        async def run(self) -> None:
            # the first step now (raising, it ends run() at once), then the clock's ticker:
            # cancelled with this task it stops; a step that raises sets fut, and run() raises it
            fut = asyncio.get_running_loop().create_future()
            clock.start(Ticker(self.step, self.s, fut))
            await fut

    Ticked.__name__ = Ticked.__qualname__ = app_class.__name__
    return Ticked


# ---------------------------------------------------------------- one simulated node


class SimNode:
    """A node of the run: its provisioning, storage (kept across reboots), HAL, radio and runtime."""

    def __init__(
        self, spec: LampNode | IrrigationNode, cfg_bytes: bytes, radio: NodeRadio, world: Any, app_class: type
    ) -> None:
        self.spec = spec
        self.cfg_bytes = cfg_bytes
        self.radio = radio
        self.world = world
        self.app_class = app_class
        self.storage: dict[str, bytes] = {}
        self.hal: WorldHAL | None = None
        self.node: Node | None = None
        self.task: asyncio.Task | None = None
        self.boots = 0
        self.wall_ppm = 0.0  # its crystal's drift (Simulation.setup draws it)
        self.crashed: str | None = None
        self.past: dict[str, int] = {
            "tx": 0,
            "tx_failed": 0,
            "tx_oversize": 0,
            "rx": 0,
            "rx_rejected": 0,
            "app_faults": 0,
            "dropped": 0,
            "unconfirmed": 0,
            "acked": 0,
        }

    def counters(self) -> dict[str, int]:
        """The node's own counters over all its boots."""
        out = dict(self.past)
        n = self.node
        if n is not None:
            for k in ("tx", "tx_failed", "tx_oversize", "rx", "rx_rejected", "app_faults"):
                out[k] += getattr(n, k)
            out["dropped"] += n.queue.dropped
            out["unconfirmed"] += n.queue.unconfirmed
            out["acked"] += n.queue.acked
        return out

    def retire(self) -> None:
        """Keep the counters of the runtime that is about to go (reboot)."""
        if self.node is not None:
            self.past = self.counters()
        self.node = None


# ---------------------------------------------------------------- the run


class Simulation:
    def __init__(self, scenario: Scenario, options: RunOptions = RunOptions()) -> None:
        self.options = options
        self.sc = prepare(scenario, options)
        self.link: GatewayLink = options.link() if options.link else InProcessGateway(auto_time=options.auto_time)
        self.nodes: dict[str, SimNode] = {}
        self.by_id: dict[int, SimNode] = {}
        self.progress = options.progress if options.progress is not None else sys.stderr.isatty()
        self.hourly: list[dict[str, float]] = []
        self.crashes: list[str] = []
        self.fault_shown: dict[int, bool] = {}  # fault index -> it had a physical effect

    # -- setup -------------------------------------------------------------------------------

    def unix(self) -> float:
        return self.clock.unix0 + self.clock.t

    def owns(self, spec: LampNode | IrrigationNode) -> bool:
        """Whether this process runs the node (all of them, except in a worker of a parallel run)."""
        return True

    def make_air(self, loop: asyncio.AbstractEventLoop) -> Air:
        return Air(self.channel, loop, self.link.uplink)

    def setup(self, loop: asyncio.AbstractEventLoop, clock: SimClock, workdir: Path) -> LinkContext:
        sc = self.sc
        self.loop = loop
        self.clock = clock
        self.channel = ch.Channel(sc.gateways, sc.radio.params, sc.seed)
        for n in sc.nodes:
            self.channel.add_node(n.node_id, n.x, n.y, n.height_m)
        self.air = self.make_air(loop)
        # the PIR holds at least one lamp tick (world.py): the tick the scenario's firmware table leaves
        tick_l = SIM_TICK_MS["lighting"]
        if sc.lamps:
            tick_l = firmware_config(sc, sc.lamps[0], sc.radio.channels_hz[0])["lighting"].get("tick_ms", tick_l)
        self.world = World(
            sc,
            [n for n in sc.lamps if self.owns(n)],
            [n for n in sc.controllers if self.owns(n)],
            clock,
            pir_hold_s=tick_l / 1000.0,
        )
        apps = {k: (ticked(a, clock) if self.options.ticked_apps else a) for k, a in APPS.items()}
        rng = random.Random(f"lumeau-sim-run:{sc.seed}")
        infos = []
        drift: dict[str, float] = {}
        for spec in sc.nodes:
            # drawn for every node in file order, whoever runs it: a node's channel and boot instant
            # do not depend on how the nodes are shared among processes
            freq = sc.radio.channels_hz[rng.randrange(len(sc.radio.channels_hz))]
            # whole seconds: nodes' ticks then share the clock's millisecond buckets (simclock.py)
            boot_s = rng.randrange(int(min(BOOT_SPREAD_S, sc.duration_s / 2)) or 1)
            cfg = firmware_config(sc, spec, freq)
            infos.append(
                NodeInfo(
                    spec.node_id,
                    spec.name,
                    spec.kind,
                    bytes.fromhex(cfg["root_key"]),
                    spec.lat,
                    spec.lon,
                    getattr(spec, "street", "") or getattr(spec, "park", ""),
                )
            )
            if not self.owns(spec):
                continue
            raw = json.dumps(cfg, separators=(",", ":")).encode()
            fw_config.load(raw)  # refuse a bad provisioning now, naming the key, not at boot
            radio = NodeRadio(self.air, spec.node_id, freq, spec.sf, sc.radio.params.bw_hz, cfg["radio"]["tx_power"])
            w = self.world.lamps[spec.name] if spec.kind == "lighting" else self.world.controllers[spec.name]
            sn = SimNode(spec, raw, radio, w, apps[spec.kind])
            # a stream of its own per node: the other draws do not move when drift is added or changed
            sn.wall_ppm = drift[spec.name] = random.Random(f"lumeau-sim-clock:{sc.seed}:{spec.node_id}").uniform(
                -CLOCK_DRIFT_PPM, CLOCK_DRIFT_PPM
            )
            self.nodes[spec.name] = sn
            self.by_id[spec.node_id] = sn
            loop.call_later(boot_s, self._boot, sn, m.RST_POWER_ON)
        self.clock_watch = ClockWatch(lambda: self.clock.t, drift)
        ctx = LinkContext(infos, sc.gateways, sc.start_unix, self.unix, self.air.downlink, workdir)
        ctx.adr = None if sc.adr is None else dict(sc.adr)
        ctx.multicast = self.air.multicast
        return ctx

    def _boot(self, sn: SimNode, cause: int, old: WorldHAL | None = None, lost: bool = False) -> None:
        """Boot the node: first with its clock set at commissioning; after a reset with the old
        board's clock carried on (its RTC kept running), or none (`lost`: it needs a TIME)."""
        hal = WorldHAL(self.clock, storage=sn.storage, reset_cause=cause, time_known=old is None, history_max=0)
        hal.wall_ppm = sn.wall_ppm
        if old is not None and not lost:
            hal.carry_clock(old)
        hal.on_time_set = lambda before, after: self._time_set(sn, before, after)
        sn.world.bind(hal)
        sn.hal = hal
        sn.node = _SLOTTED_NODE(fw_config.load(sn.cfg_bytes), hal, sn.radio, sn.app_class, watchdog=False)
        if isinstance(sn.world, ControllerWorld):
            sn.world.latched = _latch_probe(sn.node)
        sn.boots += 1
        sn.task = self.loop.create_task(self._live(sn, sn.node), name=f"node {sn.spec.name}")

    async def _live(self, sn: SimNode, node: Node) -> None:
        try:
            await node.run()
        except SimReset as r:  # a commanded reboot (OP_REBOOT): the board resets itself
            if sn.node is node:
                self._restart(sn, r.cause)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a runtime bug: the node is dead; the run goes on and says so
            sn.crashed = repr(e)
            self.crashes.append(f"{sn.spec.name}: {e!r}")

    def _time_set(self, sn: SimNode, before_ms: int | None, after_ms: int) -> None:
        node = sn.node
        app = node.app if node is not None else None
        tick_ms = getattr(app, "s", {}).get("tick_ms", SIM_TICK_MS[sn.spec.kind])
        self.clock_watch.time_set(sn.spec.name, before_ms, after_ms, node.tx if node is not None else 0, tick_ms / 1000)

    def _restart(self, sn: SimNode, cause: int) -> None:
        old = sn.hal
        if old is not None:
            old.power_off()
        sn.retire()
        self._boot(sn, cause, old)  # a soft reset: the RTC runs on

    async def _reboot(self, sn: SimNode, cause: int, lost: bool = False) -> None:
        """A node_reboot fault: the board resets (power, watchdog, brownout) and boots again.

        `lost`: the reset stopped its RTC (the node boots without wall time)."""
        t = sn.task
        sn.retire()
        if t is not None and not t.done():
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        old = sn.hal
        if old is not None:
            old.power_off()
            self.clock_watch.reboot(sn.spec.name, old.clock_error_ms(), lost)
        self._boot(sn, cause, old, lost)

    # -- what happens during the run ---------------------------------------------------------------

    async def world_steps(self) -> None:
        every = WORLD_STEP_S
        hour_at = 3600.0
        while True:
            await asyncio.sleep(every)
            self.world.step()
            if self.clock.t >= hour_at - 1e-9:
                self.snapshot()
                hour_at += 3600.0

    def snapshot(self) -> None:
        self.world.integrate()
        settled = sum(s.delivered + s.lost for s in self.air.nodes.values())
        on_air = sum(s.uplinks for s in self.air.nodes.values())
        self.hourly.append(
            {
                "t_h": round(self.clock.t / 3600.0, 6),
                "energy_wh": self.world.energy_wh(),
                "water_l": self.world.water_l(),
                "uplinks": on_air,
                "settled": settled,
            }
        )

    def fault_events(self) -> list[tuple[float, int, Fault, bool]]:
        ev: list[tuple[float, int, Fault, bool]] = []
        for f in self.sc.faults:
            if f.target not in self.nodes and f.kind not in (GATEWAY_RESTART, UPSTREAM_OUTAGE):
                continue
            ev.append((f.at_s, len(ev), f, True))
            end = f.end_s
            if end is not None and f.kind != NODE_REBOOT and end < self.sc.duration_s:
                ev.append((end, len(ev), f, False))
        ev.sort(key=lambda e: (e[0], e[1]))
        return ev

    async def faults(self) -> None:
        for at, _i, f, start in self.fault_events():
            if at > self.clock.t:
                await asyncio.sleep(at - self.clock.t)
            await self._apply(f, start)

    def note_shown(self, f: Fault) -> None:
        """Note whether a node fault had any physical effect while it lasted (see metrics: latent faults)."""
        k = f.kind
        if k == LAMP_FAILURE:
            shown = self.world.lamps[f.target].fault_shown_s > 0
        elif k in (LEAK, BURST, STUCK_VALVE):
            shown = self.world.controllers[f.target].fault_litres.get(k, 0.0) > 0
        else:
            return
        self.fault_shown[f.index] = self.fault_shown.get(f.index, False) or shown

    async def _apply(self, f: Fault, start: bool) -> None:
        k = f.kind
        if not start:
            self.note_shown(f)
        if k == LAMP_FAILURE:
            self.world.lamps[f.target].set_fault(f.params["mode"] if start else None)
        elif k in (LEAK, BURST, STUCK_VALVE):
            self.world.controllers[f.target].set_fault(k, dict(f.params), start)
        elif k == NODE_REBOOT:
            expected = f.expected
            assert expected is not None
            self.fault_shown[f.index] = True
            await self._reboot(self.nodes[f.target], expected[1], f.loses_clock)
        elif k == GATEWAY_RESTART:
            now_ms = self.clock.t * 1000.0
            self.channel.set_gateway_up(f.target, not start, now_ms)
            if start:
                await self.link.gateway_restart(f.target, float(f.params["downtime_s"]))
        elif k == UPSTREAM_OUTAGE:
            await self.link.set_upstream(not start)

    async def _progress(self, wall0: float) -> None:
        last = 0.0
        total = self.sc.duration_s
        while True:
            await asyncio.sleep(PROGRESS_STEP_S)
            if not self.progress:
                continue
            now = time.perf_counter()
            if now - last >= PROGRESS_REFRESH_S:
                last = now
                draw_progress(self.clock.t / total, self.clock.t, total, now - wall0)

    # -- the whole run ----------------------------------------------------------------------------

    async def run(self) -> Results:
        loop = asyncio.get_running_loop()
        clock = getattr(loop, "clock", None)
        if not isinstance(clock, SimClock) or clock.t != 0.0 or clock.unix0 != int(self.sc.start_unix):
            raise ValueError(
                "a simulation runs on a fresh VirtualLoop whose clock is a SimClock at the "
                "scenario's start (use runner.run())"
            )
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        workdir, tmp = run_workdir(self.options)
        tasks: list[asyncio.Task] = []
        gc_threshold: tuple[int, int, int] | None = None
        restore_log = self.count_gateway_log()
        try:
            await self.start(loop, clock, workdir)
            # As the gateway service does: the long-lived objects (a thousand nodes) out of the
            # cyclic collector's way, fewer young collections for the many short-lived ones.
            gc.collect()
            gc.freeze()
            gc_threshold = gc.get_threshold()
            gc.set_threshold(GC_YOUNG_THRESHOLD, gc_threshold[1], gc_threshold[2])
            tasks = [
                loop.create_task(self.world_steps(), name="sim-world"),
                loop.create_task(self.faults(), name="sim-faults"),
                loop.create_task(self._progress(wall0), name="sim-progress"),
            ]
            await asyncio.sleep(self.sc.duration_s - OFF_GRID_S)
            self.end_world(tasks)
            end_counters = {name: sn.counters() for name, sn in self.nodes.items()}
            self.clock_watch.end(
                {name: sn.hal.clock_error_ms() for name, sn in self.nodes.items() if sn.hal is not None}
            )
            meters = {name: node_meter(sn) for name, sn in self.nodes.items()}
            await self.stop_nodes()
            report = await self.link.finish()
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            if self.progress:
                draw_progress(1.0, self.sc.duration_s, self.sc.duration_s, wall, end="\n")
            return metrics.build(self, report, end_counters, meters, wall, cpu)
        finally:
            restore_log()
            if gc_threshold is not None:
                gc.set_threshold(*gc_threshold)
                gc.unfreeze()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop_nodes()
            await self.link.close()
            if tmp is not None:
                tmp.cleanup()

    def count_gateway_log(self) -> Callable[[], None]:
        """The gateway's log records counted in self.log_counts for the run; returns the undo."""
        self.log_counts = LogCounts()
        return self.log_counts.capture()

    async def start(self, loop: asyncio.AbstractEventLoop, clock: SimClock, workdir: Path) -> None:
        """Set the run up, then start the gateway link just off the nodes' grid."""
        ctx = self.setup(loop, clock, workdir)
        # Everything but the nodes (the gateway's timers, the world's steps) runs half a
        # millisecond off the nodes' millisecond grid: sharing an instant with a bucket of
        # ticks would cost the clock its fast path (simclock.py), and change nothing else.
        await asyncio.sleep(OFF_GRID_S)
        await self.link.start(ctx)

    def end_world(self, tasks: list[asyncio.Task]) -> None:
        """At the run's end: the world's last step and hour, latent faults noted, tasks stopped, air closed."""
        self.world.step()
        self.world.integrate()
        for f in self.sc.faults:
            if f.active(self.clock.t) and f.target in self.nodes:
                self.note_shown(f)
        if not self.hourly or self.hourly[-1]["t_h"] < self.sc.duration_s / 3600.0:
            self.snapshot()
        for t in tasks:
            t.cancel()
        self.air.closed = True  # uplinks still on the air at the end are "in flight", not delivered

    async def stop_nodes(self) -> None:
        live = [sn.task for sn in self.nodes.values() if sn.task is not None and not sn.task.done()]
        for t in live:
            t.cancel()
        await asyncio.gather(*live, return_exceptions=True)
        for sn in self.nodes.values():
            if sn.hal is not None:
                sn.hal.power_off()


class LogCounts(logging.Handler):
    """Counts the gateway's log records by level and message (the results' gateway section)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname.lower()}: {record.msg}" if isinstance(record.msg, str) else record.levelname.lower()
        self.counts[key] = self.counts.get(key, 0) + 1

    def capture(self) -> Callable[[], None]:
        """Count the gateway's records here instead of logging them; returns the undo.

        The in-process gateway logs what its service would (a refused downlink, an
        expiry): counted into the results instead of interleaving with the progress
        bar and the summary.
        """
        gw_log = logging.getLogger("lumeau.gateway")
        saved = (gw_log.handlers[:], gw_log.propagate)
        gw_log.handlers[:] = [self]
        gw_log.propagate = False

        def restore() -> None:
            gw_log.handlers[:], gw_log.propagate = saved

        return restore


def run_workdir(options: RunOptions) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """Where the run's gateway keeps its files: options.workdir, or a temporary directory (cleanup is the caller's)."""
    tmp = None
    workdir = options.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lumeau-sim-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, tmp


def _latch_probe(node: Node) -> Callable[[], bool]:
    """Whether a controller's app holds its valves shut for a person (burst, excess flow: the
    IF_ bits firmware/irrigation.py latches), read by the world's fault ledger (ledger.py)."""
    bits = m.IF_BURST | m.IF_EXCESS_FLOW

    def latched() -> bool:
        app = node.app
        return app is not None and bool(getattr(app, "faults", 0) & bits)

    return latched


def node_meter(sn: SimNode) -> int:
    """The node's own meter now: Wh for a lamp, litres for a controller."""
    n = sn.node
    if n is None:
        return 0
    return n.store.get("wh" if sn.spec.kind == "lighting" else "vol_l")


def draw_progress(frac: float, t: float, total: float, wall: float, end: str = "") -> None:
    width = 30
    k = int(frac * width)
    eta = wall / frac * (1 - frac) if frac > 0 else 0.0
    sys.stderr.write(
        f"\r[{'#' * k}{'.' * (width - k)}] {100 * frac:5.1f} %  {t / 3600:6.2f}/{total / 3600:g} h "
        f"simulated  {wall:6.1f} s  ETA {eta:5.1f} s{end}"
    )
    sys.stderr.flush()


def new_loop(sc: Scenario) -> VirtualLoop:
    """A fresh loop whose clock is a SimClock at the scenario's start (what Simulation.run needs)."""
    return VirtualLoop(SimClock(unix0=int(sc.start_unix)))
