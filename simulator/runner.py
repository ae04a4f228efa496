"""`lumeau sim run SCENARIO.toml`: a simulated city running the real firmware against a gateway.

    results = run(load("simulator/scenarios/district.toml"), RunOptions(hours=6))
    print(results.summary()); json.dumps(results.to_dict())

What runs (all on ONE virtual clock, simulator/virtual_loop.py):

- every lamp and irrigation controller of the scenario is a real
  `firmware.runtime.Node` with the real `firmware.lighting.Lighting` /
  `firmware.irrigation.Irrigation` app, provisioned through
  `firmware.config.load` (per-node root keys derived from the seed), on a
  `simulator.hal_sim.SimHAL` whose inputs the world drives
  (simulator/world.py: sun and sky for the ambient sensor, lamp current from
  the commanded level and lamp faults, PIR from pedestrians, soil moisture
  from an FAO-56 bucket per zone that the valves actually water, flow pulses
  from the valves plus leaks and bursts, the rain sensor);
- the radio of each node is `simulator.air.NodeRadio`, a firmware Radio on
  the LoRa channel (simulator/channel.py): time on air, path loss and
  shadowing, collisions and capture, duty cycle, several gateways, downlinks
  in RX1;
- the gateway is a pluggable `simulator.gateway_link.GatewayLink`; by default
  `InProcessGateway`, the real gateway Pipeline + Store + Downlinks in the
  same loop, every reception carrying the simulated time as rx_time;
- faults (simulator/faults.py) are applied when due: lamp failure, leak,
  burst, stuck valve, node reboot (the Node is restarted on the same
  persistent storage), gateway restart, upstream outage.

`run()` returns one `simulator.metrics.Results`; `--json` prints its
`to_dict()`, and the HTML report is built from the same object.

How the firmware is driven, and what is chosen for speed (named below):

- one SimClock (simulator/simclock.py) for every SimHAL: a node's sleeps
  cost a dict append, not an asyncio timer each;
- the apps are ticked by the clock instead of each looping in a task of its
  own (`ticked`): their own `run()` is `step()` then `hal.sleep_ms(tick_ms)`
  forever (firmware/README.md names `step()` for drivers that tick an app
  themselves); the ticked app does exactly that through a
  `simclock.Ticker`, and a `step()` that raises ends its `run()` with
  that exception, so the runtime's supervision (fail-safe, EVENT
  app_exception, restart with backoff) is the real one;
- each app's tick is the coarsest its own config allows (`SIM_TICK_MS`:
  lighting 10 s, irrigation 5 s) unless the scenario's firmware table sets
  `tick_ms`; the PIR's hold time follows (simulator/world.py);
- `Node(..., watchdog=False)`, as the runtime offers for simulations of many
  nodes (feeding is its most frequent wake-up);
- nodes power up at seeded whole seconds spread over BOOT_SPREAD_S, as a
  network whose nodes booted at different times, so the first reports do
  not all collide (whole seconds: nodes whose ticks fall in the same
  millisecond are woken together, one loop timer for all); every node has a valid wall clock from boot (a battery-backed
  RTC: the gateway has no automatic time sync to model).

Node provisioning: `firmware_config()` writes the JSON a technician's tool
would (node id, kind, a per-node root key derived from the seed, radio:
type "sim" on one of the scenario's channels at the node's SF, location,
report interval, the app's section) and `firmware.config.load` checks it;
the scenario's `[lighting.firmware]` / `[irrigation.firmware]` tables are
merged into it (deep: `[lighting.firmware.lighting] tick_ms = 1000`).
Irrigation: zones' expected flow from the park's design rate, a moisture
probe in every zone (`zone_thresholds`: skip while the deficit is below
half the soil's readily available water, FAO-56 RAW, and water up to just
below field capacity); the park's program on the node's
local standard time (utc_offset_min), all zones queued at the start minute.

Options: `--seed` redraws the run's randomness (weather, pedestrians,
shadowing, keys, boot instants) on the scenario's map; `--hours` shortens or
lengthens it (faults after the end are dropped); `--nodes-scale s` keeps an
even share s of the lamps and of the controllers (fault targets always kept).

Limits: BOOT_SPREAD_S, PROGRESS_STEP_S; one gateway link per run; the run
must start on a fresh loop whose SimClock is at the scenario's start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import gc
import hashlib
import hmac
import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from firmware import config as fw_config
from firmware import irrigation as fw_irrigation
from firmware import lighting as fw_lighting
from simulator.hal_sim import SimReset
from firmware.runtime import Node
from simulator.virtual_loop import VirtualLoop
from protocol import messages as m
from simulator import channel as ch
from simulator import metrics
from simulator.air import Air, NodeRadio
from simulator.faults import (BURST, GATEWAY_RESTART, LAMP_FAILURE, LEAK, NODE_REBOOT, STUCK_VALVE,
                              UPSTREAM_OUTAGE, Fault, FaultSchedule)
from simulator.gateway_link import GatewayLink, InProcessGateway, LinkContext, NodeInfo
from simulator.metrics import Results
from simulator.scenario import IrrigationNode, LampNode, Scenario
from simulator.simclock import SimClock, Ticker
from simulator.world import WORLD_STEP_S, World, WorldHAL, local_standard_offset_min

SIM_TICK_MS = {"lighting": fw_lighting.SETTINGS["tick_ms"][2], "irrigation": fw_irrigation.SETTINGS["tick_ms"][2]}
BOOT_SPREAD_S = 600.0        # nodes power up over the first 10 minutes
OFF_GRID_S = 0.0005         # the gateway and the world tick half a millisecond after the nodes' grid
GC_YOUNG_THRESHOLD = 20000  # allocations between young collections during a run (gateway/service.py does the same)
PROGRESS_STEP_S = 300.0      # the progress bar looks at the clock every 5 simulated minutes ...
PROGRESS_REFRESH_S = 0.25    # ... and redraws at most 4 times a wall second
APPS = {"lighting": fw_lighting.Lighting, "irrigation": fw_irrigation.Irrigation}


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario; None keeps the scenario's own value."""

    seed: int | None = None            # another draw of the same map (weather, people, shadowing, keys)
    hours: float | None = None         # run this long instead of the scenario's duration
    nodes_scale: float = 1.0           # keep this share (0 < s <= 1) of the lamps and of the controllers
    progress: bool | None = None       # a progress bar on stderr; None: when stderr is a terminal
    workdir: Path | None = None        # where the in-process gateway keeps its SQLite file (default: a temp dir)
    link: Callable[[], GatewayLink] | None = None   # the gateway link factory (default: InProcessGateway)
    ticked_apps: bool = True           # False: every app loops in its own run() (slower; same behaviour)
    workers: int = 1                   # > 1: the nodes in that many processes (simulator/parallel.py)


# ---------------------------------------------------------------- the scenario as run

def prepare(scenario: Scenario, options: RunOptions) -> Scenario:
    """The scenario with the options applied (seed, hours, nodes_scale)."""
    sc = scenario
    if options.seed is not None:
        sc = dataclasses.replace(sc, seed=int(options.seed))
    if options.hours is not None:
        if not 0 < options.hours <= 366 * 24:
            raise ValueError(f"hours must be within 0..{366 * 24}, got {options.hours}")
        dur = options.hours * 3600.0
        sc = dataclasses.replace(sc, duration_s=dur,
                                 faults=FaultSchedule([f for f in sc.faults if f.at_s < dur]))
    s = options.nodes_scale
    if not 0 < s <= 1:
        raise ValueError(f"nodes_scale must be within (0, 1], got {s}")
    if not 1 <= options.workers <= 64:
        raise ValueError(f"workers must be within 1..64, got {options.workers}")
    if s < 1:
        targets = sc.faults.targets()
        sc = dataclasses.replace(sc, lamps=_thin(sc.lamps, s, targets), controllers=_thin(sc.controllers, s, targets))
    return sc


def _thin(nodes: tuple, share: float, keep: set[str]) -> tuple:
    # an even share along the file's order (every street and park keeps its part; the first node
    # always), fault targets kept
    return tuple(n for i, n in enumerate(nodes) if math.ceil((i + 1) * share) > math.ceil(i * share)
                 or n.name in keep)


def root_key(seed: int, node_id: int) -> bytes:
    """The node's provisioned root key: per node, derived from the run's seed (never printed)."""
    return hmac.new(f"lumeau-sim-keys:{seed}".encode(), node_id.to_bytes(4, "big"), hashlib.sha256).digest()[:16]


def _merge(into: dict[str, Any], over: Any) -> dict[str, Any]:
    for k, v in dict(over).items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k] = _merge(dict(into[k]), v)
        else:
            into[k] = v
    return into


def zone_thresholds(zone: Any) -> tuple[int, int]:
    """(skip_pct, target_pct) of a zone's moisture probe, from its soil and crop (FAO-56).

    Skip watering while the root zone still holds more than half its readily
    available water (deficit below RAW / 2: the turf is far from stress even
    if the next watering is a day away); water up to a point below field
    capacity (what the soil can hold; above it water drains away).
    """
    zr_mm = 1000.0 * zone.crop.zr_m
    raw_mm = zone.crop.p * (zone.soil.theta_fc - zone.soil.theta_wp) * zr_mm
    skip = math.ceil(100.0 * (zone.soil.theta_fc - 0.5 * raw_mm / zr_mm))
    target = max(skip, int(100.0 * zone.soil.theta_fc) - 1)
    return skip, target


def firmware_config(sc: Scenario, node: LampNode | IrrigationNode, freq_hz: int) -> dict[str, Any]:
    """The provisioned config file (as a dict) of one simulated node."""
    kind = node.kind
    settings = sc.lighting if kind == "lighting" else sc.irrigation
    cfg: dict[str, Any] = {
        "node_id": node.node_id, "kind": kind, "root_key": root_key(sc.seed, node.node_id).hex(),
        "radio": {"type": "sim", "freq_hz": freq_hz, "sf": node.sf, "bw_hz": sc.radio.params.bw_hz,
                  "tx_power": int(round(sc.radio.params.tx_power_dbm))},
        "location": {"lat": round(node.lat, 6), "lon": round(node.lon, 6)},
        "report_interval_s": int(round(settings.report_interval_s)),
    }
    if isinstance(node, LampNode):
        cfg["lighting"] = {"power_w": int(round(node.rated_power_w)), "tick_ms": SIM_TICK_MS["lighting"]}
    else:
        local = sc.start.astimezone(sc.location.tz)
        dst = local.dst()
        dst_min = int(dst.total_seconds() // 60) if dst else 0
        zones = []
        for z in node.zones:
            skip, target = zone_thresholds(z)
            zones.append({"flow_dlpm": max(1, int(round(z.flow_l_min * 10))), "moisture": 1,
                          "skip_pct": skip, "target_pct": target})
        minutes = max(1, int(round(node.schedule.minutes_per_zone)))
        local_unix = sc.start_unix + (local.utcoffset() or _dt.timedelta(0)).total_seconds()
        mask = _weekday_mask(node.schedule.every_days, local_unix)
        # all zones at the program's start: the firmware queues runs due together, one after the other
        start_std = (node.schedule.start_min - dst_min) % 1440
        cfg["irrigation"] = {"tick_ms": SIM_TICK_MS["irrigation"],
                             "utc_offset_min": local_standard_offset_min(sc.location.tz, sc.start_unix),
                             "zones": zones, "schedule": [[z.number, mask, start_std, minutes] for z in node.zones]}
    return _merge(cfg, settings.firmware)


def _weekday_mask(every_days: int, local_unix: float) -> int:
    """The program's days as a weekday mask (bit 0 Monday), as the firmware schedules.

    Every day is 127; every 7 days the weekday of the run's first watering
    day. Other periods have no weekly equivalent: the days of the run's first
    week on which (day number % every_days == 0), an approximation for runs
    longer than a week.
    """
    if every_days == 1:
        return 127
    day0 = int(local_unix // 86400)
    mask = 0
    for d in range(day0, day0 + 7):
        if d % every_days == 0:
            mask |= 1 << ((d + 3) % 7)   # 1970-01-01 was a Thursday
    return mask or 127


def ticked(app_class: type, clock: SimClock) -> type:
    """The app with its run() loop ticked by the clock: step(), then again tick_ms later (see above)."""

    class Ticked(app_class):  # type: ignore[valid-type, misc]
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

    def __init__(self, spec: LampNode | IrrigationNode, cfg_bytes: bytes, radio: NodeRadio, world: Any,
                 app_class: type) -> None:
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
        self.crashed: str | None = None
        self.past: dict[str, int] = {"tx": 0, "tx_failed": 0, "tx_oversize": 0, "rx": 0, "rx_rejected": 0,
                                     "app_faults": 0, "dropped": 0, "unconfirmed": 0, "acked": 0}

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
        self.link: GatewayLink = (options.link or InProcessGateway)()
        self.nodes: dict[str, SimNode] = {}
        self.by_id: dict[int, SimNode] = {}
        self.progress = options.progress if options.progress is not None else sys.stderr.isatty()
        self.hourly: list[dict[str, float]] = []
        self.crashes: list[str] = []
        self.fault_shown: dict[int, bool] = {}   # fault index -> it had a physical effect

    # -- setup -------------------------------------------------------------------------------

    def unix(self) -> float:
        return self.clock.unix0 + self.clock.t

    def _owns(self, spec: LampNode | IrrigationNode) -> bool:
        """Whether this process runs the node (all of them, except in a worker of a parallel run)."""
        return True

    def _make_air(self, loop: asyncio.AbstractEventLoop) -> Air:
        return Air(self.channel, loop, self.link.uplink)

    def _setup(self, loop: asyncio.AbstractEventLoop, clock: SimClock, workdir: Path) -> LinkContext:
        sc = self.sc
        self.loop = loop
        self.clock = clock
        self.channel = ch.Channel(sc.gateways, sc.radio.params, sc.seed)
        for n in sc.nodes:
            self.channel.add_node(n.node_id, n.x, n.y, n.height_m)
        self.air = self._make_air(loop)
        # the PIR holds at least one lamp tick (world.py): the tick the scenario's firmware table leaves
        tick_l = SIM_TICK_MS["lighting"]
        if sc.lamps:
            tick_l = firmware_config(sc, sc.lamps[0], sc.radio.channels_hz[0])["lighting"].get("tick_ms", tick_l)
        self.world = World(sc, [n for n in sc.lamps if self._owns(n)], [n for n in sc.controllers if self._owns(n)],
                           clock, pir_hold_s=tick_l / 1000.0)
        apps = {k: (ticked(a, clock) if self.options.ticked_apps else a) for k, a in APPS.items()}
        rng = random.Random(f"lumeau-sim-run:{sc.seed}")
        infos = []
        for spec in sc.nodes:
            # drawn for every node in file order, whoever runs it: a node's channel and boot instant
            # do not depend on how the nodes are shared among processes
            freq = sc.radio.channels_hz[rng.randrange(len(sc.radio.channels_hz))]
            # whole seconds: nodes' ticks then share the clock's millisecond buckets (simclock.py)
            boot_s = rng.randrange(int(min(BOOT_SPREAD_S, sc.duration_s / 2)) or 1)
            cfg = firmware_config(sc, spec, freq)
            infos.append(NodeInfo(spec.node_id, spec.name, spec.kind, bytes.fromhex(cfg["root_key"]), spec.lat,
                                  spec.lon, getattr(spec, "street", "") or getattr(spec, "park", "")))
            if not self._owns(spec):
                continue
            raw = json.dumps(cfg, separators=(",", ":")).encode()
            fw_config.load(raw)  # refuse a bad provisioning now, naming the key, not at boot
            radio = NodeRadio(self.air, spec.node_id, freq, spec.sf, sc.radio.params.bw_hz,
                              cfg["radio"]["tx_power"])
            w = self.world.lamps[spec.name] if spec.kind == "lighting" else self.world.controllers[spec.name]
            sn = SimNode(spec, raw, radio, w, apps[spec.kind])
            self.nodes[spec.name] = sn
            self.by_id[spec.node_id] = sn
            loop.call_later(boot_s, self._boot, sn, m.RST_POWER_ON)
        return LinkContext(infos, sc.gateways, sc.start_unix, self.unix, self.air.downlink, workdir)

    def _boot(self, sn: SimNode, cause: int) -> None:
        hal = WorldHAL(self.clock, storage=sn.storage, reset_cause=cause, time_known=True, history_max=0)
        sn.world.bind(hal)
        sn.hal = hal
        sn.node = Node(fw_config.load(sn.cfg_bytes), hal, sn.radio, sn.app_class, watchdog=False)
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

    def _restart(self, sn: SimNode, cause: int) -> None:
        if sn.hal is not None:
            sn.hal.power_off()
        sn.retire()
        self._boot(sn, cause)

    async def _reboot(self, sn: SimNode, cause: int) -> None:
        """A node_reboot fault: the board resets (power, watchdog, brownout) and boots again."""
        t = sn.task
        sn.retire()
        if t is not None and not t.done():
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)
        if sn.hal is not None:
            sn.hal.power_off()
        self._boot(sn, cause)

    # -- what happens during the run ---------------------------------------------------------------

    async def _world_steps(self) -> None:
        every = WORLD_STEP_S
        hour_at = 3600.0
        while True:
            await asyncio.sleep(every)
            self.world.step()
            if self.clock.t >= hour_at - 1e-9:
                self._snapshot()
                hour_at += 3600.0

    def _snapshot(self) -> None:
        self.world.integrate()
        settled = sum(s.delivered + s.lost for s in self.air.nodes.values())
        on_air = sum(s.uplinks for s in self.air.nodes.values())
        self.hourly.append({"t_h": round(self.clock.t / 3600.0, 6), "energy_wh": self.world.energy_wh(),
                            "water_l": self.world.water_l(), "uplinks": on_air, "settled": settled})

    def _fault_events(self) -> list[tuple[float, int, Fault, bool]]:
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

    async def _faults(self) -> None:
        for at, _i, f, start in self._fault_events():
            if at > self.clock.t:
                await asyncio.sleep(at - self.clock.t)
            await self._apply(f, start)

    def _shown(self, f: Fault) -> None:
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
            self._shown(f)
        if k == LAMP_FAILURE:
            self.world.lamps[f.target].set_fault(f.params["mode"] if start else None)
        elif k in (LEAK, BURST, STUCK_VALVE):
            self.world.controllers[f.target].set_fault(k, dict(f.params), start)
        elif k == NODE_REBOOT:
            expected = f.expected
            assert expected is not None
            self.fault_shown[f.index] = True
            await self._reboot(self.nodes[f.target], expected[1])
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
                _draw(self.clock.t / total, self.clock.t, total, now - wall0)

    # -- the whole run ----------------------------------------------------------------------------

    async def run(self) -> Results:
        loop = asyncio.get_running_loop()
        clock = getattr(loop, "clock", None)
        if not isinstance(clock, SimClock) or clock.t != 0.0 or clock.unix0 != int(self.sc.start_unix):
            raise ValueError("a simulation runs on a fresh VirtualLoop whose clock is a SimClock at the "
                             "scenario's start (use runner.run())")
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        tmp = None
        workdir = self.options.workdir
        if workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="lumeau-sim-")
            workdir = Path(tmp.name)
        workdir.mkdir(parents=True, exist_ok=True)
        tasks: list[asyncio.Task] = []
        gc_threshold: tuple[int, int, int] | None = None
        # The in-process gateway logs what its service would (a refused downlink, an expiry):
        # counted into the results instead of interleaving with the progress bar and the summary.
        self.log_counts = _LogCounts()
        gw_log = logging.getLogger("lumeau.gateway")
        saved_log = (gw_log.handlers[:], gw_log.propagate)
        gw_log.handlers[:] = [self.log_counts]
        gw_log.propagate = False
        try:
            ctx = self._setup(loop, clock, workdir)
            # Everything but the nodes (the gateway's timers, the world's steps) runs half a
            # millisecond off the nodes' millisecond grid: sharing an instant with a bucket of
            # ticks would cost the clock its fast path (simclock.py), and change nothing else.
            await asyncio.sleep(OFF_GRID_S)
            await self.link.start(ctx)
            # As the gateway service does: the long-lived objects (a thousand nodes) out of the
            # cyclic collector's way, fewer young collections for the many short-lived ones.
            gc.collect()
            gc.freeze()
            gc_threshold = gc.get_threshold()
            gc.set_threshold(GC_YOUNG_THRESHOLD, gc_threshold[1], gc_threshold[2])
            tasks = [loop.create_task(self._world_steps(), name="sim-world"),
                     loop.create_task(self._faults(), name="sim-faults"),
                     loop.create_task(self._progress(wall0), name="sim-progress")]
            await asyncio.sleep(self.sc.duration_s - OFF_GRID_S)
            self.world.step()
            self.world.integrate()
            for f in self.sc.faults:
                if f.active(self.clock.t) and f.target in self.nodes:
                    self._shown(f)
            if not self.hourly or self.hourly[-1]["t_h"] < self.sc.duration_s / 3600.0:
                self._snapshot()
            for t in tasks:
                t.cancel()
            self.air.closed = True   # uplinks still on the air at the end are "in flight", not delivered
            end_counters = {name: sn.counters() for name, sn in self.nodes.items()}
            meters = {name: _meter(sn) for name, sn in self.nodes.items()}
            await self._stop_nodes()
            report = await self.link.finish()
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            if self.progress:
                _draw(1.0, self.sc.duration_s, self.sc.duration_s, wall, end="\n")
            return metrics.build(self, report, end_counters, meters, wall, cpu)
        finally:
            gw_log.handlers[:], gw_log.propagate = saved_log
            if gc_threshold is not None:
                gc.set_threshold(*gc_threshold)
                gc.unfreeze()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_nodes()
            await self.link.close()
            if tmp is not None:
                tmp.cleanup()

    async def _stop_nodes(self) -> None:
        live = [sn.task for sn in self.nodes.values() if sn.task is not None and not sn.task.done()]
        for t in live:
            t.cancel()
        await asyncio.gather(*live, return_exceptions=True)
        for sn in self.nodes.values():
            if sn.hal is not None:
                sn.hal.power_off()


class _LogCounts(logging.Handler):
    """Counts the gateway's log records by level and message (the results' gateway section)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname.lower()}: {record.msg}" if isinstance(record.msg, str) else record.levelname.lower()
        self.counts[key] = self.counts.get(key, 0) + 1


def _meter(sn: SimNode) -> int:
    """The node's own meter now: Wh for a lamp, litres for a controller."""
    n = sn.node
    if n is None:
        return 0
    return n.store.get("wh" if sn.spec.kind == "lighting" else "vol_l")


def _draw(frac: float, t: float, total: float, wall: float, end: str = "") -> None:
    width = 30
    k = int(frac * width)
    eta = wall / frac * (1 - frac) if frac > 0 else 0.0
    sys.stderr.write(f"\r[{'#' * k}{'.' * (width - k)}] {100 * frac:5.1f} %  {t / 3600:6.2f}/{total / 3600:g} h "
                     f"simulated  {wall:6.1f} s  ETA {eta:5.1f} s{end}")
    sys.stderr.flush()


# ---------------------------------------------------------------- entry points

def new_loop(sc: Scenario) -> VirtualLoop:
    return VirtualLoop(SimClock(unix0=int(sc.start_unix)))


def run(scenario: Scenario, options: RunOptions = RunOptions()) -> Results:
    """Run a scenario to its end on a fresh virtual-time loop; the results of the run."""
    if options.workers > 1:
        from simulator.parallel import run_parallel
        return run_parallel(scenario, options)
    sim = Simulation(scenario, options)
    loop = new_loop(sim.sc)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(sim.run())
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def run_async(scenario: Scenario, options: RunOptions = RunOptions()) -> Results:
    """The same, inside a running loop made by new_loop(prepare(scenario, options))."""
    return await Simulation(scenario, options).run()
