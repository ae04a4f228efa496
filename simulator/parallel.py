"""A run on several cores: the nodes shared among worker processes, the air and the gateway in this one.

    results = run(scenario, RunOptions(workers=2))      # simulator/runner.py (engine: simulator/engine.py)

Each worker process runs its share of the nodes (every `workers`-th node of
the scenario) exactly as a single-process run does -- the real runtime and
apps on its own SimClock, its share of the world -- and keeps, for each of
its nodes, what the law decides at the instant a node transmits (duty
cycle, busy radio, frame too long: node-local state, so a copy of the
channel in the worker decides it as the real one would). Everything that
needs all nodes stays here, in the coordinator: the LoRa channel (who hears
what, collisions, capture, demodulators, gateway duty cycle and half
duplex) and the gateway link.

Conservative synchronisation (no time warp, no rollback):

- a worker sends what its nodes put on the air, with their start times,
  every SYNC_S of simulated time without waiting for an answer;
- the coordinator registers transmissions in the channel in (start, node)
  order only below the earliest time every worker has reached, and runs the
  gateway's clock up to there: an uplink's fate is final once every
  transmission that could overlap it is known;
- the one thing a node needs back is a downlink in its RX1 window, and the
  gateway only answers confirmed alarms (it has no other downlinks queued
  in a simulation, and its automatic time is off in a parallel run:
  `RunOptions.auto_time`, since a TIME may follow any uplink and holding
  every uplink would put the workers in lockstep; the results' `clock`
  section is null). So a worker that sends an alarm holds its clock at
  HOLD_S after that uplink's end (before the node opens RX1, 0.98 s) until
  the coordinator, past that instant, hands it the downlinks decided for
  its nodes. A downlink for an uplink no worker holds for is refused as
  too late (counted), as a radio whose window has passed would.

The results are the same for any number of workers (a node's behaviour
depends only on its inputs and its downlinks, and the channel sees the
transmissions in the same order); they differ from a single-process run of
the same seed only where two transmissions start in the same microsecond
(there the single-process run takes them in the order the loop ran the
nodes).

Processes are forked (POSIX): a worker inherits the prepared scenario.
Limits: SYNC_S, HOLD_S; a worker that fails ends the run with its
traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import multiprocessing
import multiprocessing.connection
import sys
import time
import traceback
from typing import Any

from firmware import config as fw_config
from gateway.transports import DownlinkError
from protocol import frame as fr
from protocol import messages as m
from protocol.messages import is_alarm
from simulator import channel as ch
from simulator import metrics
from simulator.air import Air
from simulator.engine import (
    OFF_GRID_S,
    RunOptions,
    SimNode,
    Simulation,
    draw_progress,
    node_meter,
    prepare,
    run_workdir,
)
from simulator.faults import GATEWAY_RESTART, UPSTREAM_OUTAGE
from simulator.metrics import Results
from simulator.scenario import Scenario
from simulator.simclock import SimClock
from simulator.virtual_loop import VirtualLoop
from simulator.virtual_loop import run as run_virtual

SYNC_S = 10.0  # a worker reports its transmissions at least this often (simulated s)
HOLD_S = 0.95  # after an alarm uplink's end: before the node opens RX1 (0.98 s)
_GATEWAY_FAULTS = (GATEWAY_RESTART, UPSTREAM_OUTAGE)


class _RemoteHearing:
    __slots__ = ("rssi_dbm", "snr_db", "status")

    def __init__(self, rssi: float, snr: float, status: str) -> None:
        self.rssi_dbm = rssi
        self.snr_db = snr
        self.status = status


class _RemoteDownlink:
    """A downlink the coordinator put on the air, as a worker's NodeRadio reads it."""

    __slots__ = ("start_us", "end_us", "payload", "hearings")

    def __init__(self, start_us: int, end_us: int, payload: bytes, rssi: float, snr: float, status: str) -> None:
        self.start_us = start_us
        self.end_us = end_us
        self.payload = payload
        self.hearings = [_RemoteHearing(rssi, snr, status)]


# ---------------------------------------------------------------- the worker side


class _WorkerAir(Air):
    """The worker's air: the law decided locally, the transmission sent to the coordinator."""

    def __init__(self, channel: ch.Channel, loop: asyncio.AbstractEventLoop, worker: _Worker) -> None:
        super().__init__(channel, loop, lambda h: None)
        self.worker = worker
        self.outbox: list[tuple[int, int, bytes, int, int, bool, float | None]] = []

    def transmit(
        self,
        node_id: int,
        frame: bytes,
        sf: int,
        freq_hz: int,
        start_us: int | None = None,
        tx_power: float | None = None,
    ) -> ch.Transmission:
        now = self.now_us()
        up = self.channel.transmit(node_id, now / 1000, len(frame), sf, freq_hz, frame, tx_power)
        mtype = self.count(node_id, frame, up)
        if mtype is None:
            return up
        hold = mtype == m.EVENT and self._alarm(node_id, frame)
        self.outbox.append((now, node_id, frame, sf, freq_hz, hold, tx_power))
        if hold:
            self.loop.call_at((up.end_us + int(HOLD_S * 1e6)) / 1e6, self.worker.hold)
        return up

    def _alarm(self, node_id: int, frame: bytes) -> bool:
        keys = self.worker.keys.get(node_id)
        if keys is None:
            return False
        try:
            _f, body = fr.unseal(keys, frame)
            return is_alarm(m.EVENT, m.decode(m.EVENT, body))
        except (fr.FrameError, m.MessageError):
            return False


class _Worker(Simulation):
    def __init__(self, scenario: Scenario, options: RunOptions, index: int, workers: int, conn: Any) -> None:
        super().__init__(scenario, options)
        self.index = index
        self.workers = workers
        self.conn = conn
        self._order = {n.node_id: i for i, n in enumerate(self.sc.nodes)}
        self.keys: dict[int, Any] = {}
        self.node_hourly: list[dict[str, Any]] = []

    def owns(self, spec: Any) -> bool:
        return self._order[spec.node_id] % self.workers == self.index

    def make_air(self, loop: asyncio.AbstractEventLoop) -> Air:
        return _WorkerAir(self.channel, loop, self)

    def fault_events(self) -> list:
        return [e for e in super().fault_events() if e[2].kind not in _GATEWAY_FAULTS]

    def snapshot(self) -> None:
        super().snapshot()
        self.node_hourly.append(
            {
                "t_h": self.hourly[-1]["t_h"],
                "uplinks": {nid: st.uplinks for nid, st in self.air.nodes.items()},
                "energy_wh": {name: lw.energy_wh for name, lw in self.world.lamps.items()},
                "water_l": {name: cw.meter_l for name, cw in self.world.controllers.items()},
            }
        )

    def _send(self, kind: str, *extra: Any) -> None:
        air = self.air
        assert isinstance(air, _WorkerAir)
        out, air.outbox = air.outbox, []
        self.conn.send((kind, air.now_us(), out, *extra))

    def _report(self) -> None:
        self._send("tx")
        self.channel.settle(self.air.now_us() / 1000)  # the local copy keeps nothing it does not need
        self.loop.call_at(self.loop.time() + SYNC_S, self._report)

    def hold(self) -> None:
        """An alarm's RX1 is near: the clock stands still until the coordinator has decided its answer."""
        self._send("hold")
        kind, dls = self.conn.recv()
        air = self.air
        assert kind == "go" and isinstance(air, _WorkerAir)
        for node_id, start_us, end_us, payload, rssi, snr, status in dls:
            air.add_downlink(node_id, _RemoteDownlink(start_us, end_us, payload, rssi, snr, status))

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualLoop) and isinstance(loop.clock, SimClock)  # engine.new_loop's
        clock = loop.clock
        self.setup(loop, clock, None)  # type: ignore[arg-type]
        for sn in self.nodes.values():
            self.keys[sn.spec.node_id] = fw_config.load(sn.cfg_bytes)["keys"]
        await asyncio.sleep(OFF_GRID_S)
        loop.call_at(OFF_GRID_S + SYNC_S, self._report)
        tasks = [loop.create_task(self.world_steps()), loop.create_task(self.faults())]
        await asyncio.sleep(self.sc.duration_s - OFF_GRID_S)
        self.end_world(tasks)
        result = {
            "nodes": {
                name: {"counters": sn.counters(), "meter": node_meter(sn), "boots": sn.boots, "band": sn.radio.band}
                for name, sn in self.nodes.items()
            },
            "air": {
                nid: (st.uplinks, st.refused, st.frames, st.reports, st.downlinks_ok)
                for nid, st in self.air.nodes.items()
            },
            "largest": dict(self.air.largest),
            # per node, so the coordinator adds them up in the scenario's order whatever the sharing
            "world": {name: (lw.energy_wh, 0.0, 0.0) for name, lw in self.world.lamps.items()}
            | {name: (0.0, cw.meter_l, sum(cw.applied_l)) for name, cw in self.world.controllers.items()},
            "accounts": self.world.accounts(),
            "fault_shown": dict(self.fault_shown),
            "hourly": self.node_hourly,
            "crashes": list(self.crashes),
            "battery": {
                name: metrics.battery_inputs(sn) for name, sn in self.nodes.items() if sn.spec.kind == "irrigation"
            }
            if self.sc.battery is not None
            else {},
            "cpu_s": time.process_time(),
        }
        await self.stop_nodes()
        self._send("end", result)


def _worker_main(scenario: Scenario, options: RunOptions, index: int, workers: int, conn: Any) -> None:
    try:
        w = _Worker(scenario, options, index, workers, conn)
        run_virtual(w.work(), SimClock(unix0=int(w.sc.start_unix)))
    except BaseException:
        try:
            conn.send(("error", 0, [], traceback.format_exc()))
        except OSError:
            pass
    finally:
        conn.close()


# ---------------------------------------------------------------- the coordinator side


class _CoordAir(Air):
    """The coordinator's air: transmissions arrive from the workers; downlinks go back to held nodes."""

    def __init__(
        self, channel: ch.Channel, loop: asyncio.AbstractEventLoop, on_uplink: Any, owner: dict[int, int]
    ) -> None:
        super().__init__(channel, loop, on_uplink)
        self.owner = owner
        # the uplinks whose node waits before RX1, held here (an id() could be a freed one's, reused)
        self.held: set[ch.Transmission] = set()
        self.outgoing: dict[int, list[Any]] = {}
        self.too_late = 0

    def multicast(self, site: str, node_ids: list[int], frame: bytes, sf: int, freq_hz: int) -> int:
        # the copies would have to reach every worker's nodes at once: not offered in a split run
        raise DownlinkError("bad_request", "multicast is not simulated in a run split over workers")

    def downlink(self, site: str, node_id: int, frame: bytes, uplink: ch.Uplink) -> ch.Downlink:
        if uplink not in self.held:
            self.too_late += 1
            raise DownlinkError("too_late", "the node's worker did not hold for this uplink")
        dl = super().downlink(site, node_id, frame, uplink)
        self.outgoing.setdefault(self.owner[node_id], []).append(dl)
        return dl


class _View:
    """What metrics.build reads of a run, put together from the coordinator and the workers."""


class _Coordinator(Simulation):
    def __init__(self, scenario: Scenario, options: RunOptions, conns: list[Any]) -> None:
        super().__init__(scenario, options)
        self.conns = conns
        self.owner = {n.node_id: i % len(conns) for i, n in enumerate(self.sc.nodes)}

    def owns(self, spec: Any) -> bool:
        return False

    def make_air(self, loop: asyncio.AbstractEventLoop) -> Air:
        return _CoordAir(self.channel, loop, self.link.uplink, self.owner)

    async def _until_us(self, t_us: int) -> None:
        loop = asyncio.get_running_loop()
        if t_us > int(round(loop.time() * 1e6)):
            fut = loop.create_future()

            def wake() -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.call_at(t_us / 1e6, wake)
            await fut

    async def coordinate(self) -> tuple[list[dict[str, Any]], float]:
        air = self.air
        assert isinstance(air, _CoordAir)
        n = len(self.conns)
        at = [0] * n
        holding: list[bool] = [False] * n
        results: list[dict[str, Any] | None] = [None] * n
        heap: list[tuple[int, int, int, bytes, int, int, bool, float | None]] = []
        seq = 0
        end_us = int(round(self.sc.duration_s * 1e6))
        wall0 = time.perf_counter()
        last_draw = 0.0
        while True:
            active = [self.conns[w] for w in range(n) if results[w] is None and not holding[w]]
            for ready in multiprocessing.connection.wait(active) if active else ():
                w = self.conns.index(ready)
                c = self.conns[w]  # the worker's Connection (wait's answer is typed for sockets and fds too)
                try:
                    msg = c.recv()
                except EOFError:
                    raise RuntimeError(f"simulation worker {w} stopped without a word") from None
                kind, t_us, txs = msg[0], msg[1], msg[2]
                if kind == "error":
                    raise RuntimeError(f"simulation worker {w} failed:\n{msg[3]}")
                at[w] = t_us
                for tx in txs:
                    seq += 1
                    heapq.heappush(heap, (tx[0], tx[1], seq, tx[2], tx[3], tx[4], tx[5], tx[6]))
                if kind == "hold":
                    holding[w] = True
                elif kind == "end":
                    results[w] = msg[3]
                    at[w] = end_us
            safe = min(at)
            while heap and heap[0][0] < safe:
                start, node_id, _s, frame, sf, freq, hold, power = heapq.heappop(heap)
                await self._until_us(start)
                up = air.transmit(node_id, frame, sf, freq, start_us=start, tx_power=power)
                if hold and up.refused is None:
                    air.held.add(up)
            await self._until_us(safe)
            for w in range(n):
                if holding[w] and at[w] <= safe:
                    out = [
                        (
                            d.node_id,
                            d.start_us,
                            d.end_us,
                            bytes(d.payload),
                            d.hearings[0].rssi_dbm,
                            d.hearings[0].snr_db,
                            d.hearings[0].status,
                        )
                        for d in air.outgoing.pop(w, [])
                    ]
                    self.conns[w].send(("go", out))
                    holding[w] = False
            if self.progress and time.perf_counter() - last_draw >= 0.25:
                last_draw = time.perf_counter()
                draw_progress(safe / end_us, safe / 1e6, self.sc.duration_s, last_draw - wall0)
            if all(r is not None for r in results):
                return [r for r in results if r is not None], wall0


def run_parallel(scenario: Scenario, options: RunOptions) -> Results:
    """The run with `options.workers` worker processes (see the module docstring)."""
    workers = options.workers
    if workers < 2:
        raise ValueError("a parallel run needs at least 2 workers")
    prepare(scenario, options)  # bad options fail here, before any process starts
    options = dataclasses.replace(options, auto_time=False)  # see RunOptions.auto_time
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    for i in range(workers):
        here, there = ctx.Pipe()
        # the scenario as given: each process prepares it (seed, hours, share) the same way
        p = ctx.Process(
            target=_worker_main, args=(scenario, options, i, workers, there), daemon=True, name=f"lumeau-sim-worker-{i}"
        )
        p.start()
        there.close()
        conns.append(here)
        procs.append(p)
    coord = _Coordinator(scenario, options, conns)
    try:
        return run_virtual(_coordinated_run(coord), SimClock(unix0=int(coord.sc.start_unix)))
    finally:
        for c in conns:
            c.close()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()


async def _coordinated_run(coord: _Coordinator) -> Results:
    """The coordinator's side of Simulation.run: the link, the gateway faults, the air, the merge."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualLoop) and isinstance(loop.clock, SimClock)  # engine.new_loop's
    clock = loop.clock
    cpu0 = time.process_time()
    workdir, tmp = run_workdir(coord.options)
    tasks: list[asyncio.Task] = []
    restore_log = coord.count_gateway_log()
    try:
        await coord.start(loop, clock, workdir)
        tasks = [loop.create_task(coord.faults()), loop.create_task(_hourly(coord))]
        results, wall0 = await coord.coordinate()
        await coord._until_us(int(round(coord.sc.duration_s * 1e6)))
        coord.air.closed = True
        for t in tasks:
            t.cancel()
        report = await coord.link.finish()
        view, counters, meters = _merge(coord, results)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        if coord.progress:
            draw_progress(1.0, coord.sc.duration_s, coord.sc.duration_s, wall, end="\n")
        res = metrics.build(view, report, counters, meters, wall, cpu)
        res.sections["run"]["workers"] = len(coord.conns)
        res.sections["run"]["coordinator_cpu_s"] = cpu
        res.sections["run"]["workers_cpu_s"] = [r["cpu_s"] for r in results]
        res.sections["run"]["cpu_s"] = cpu + sum(r["cpu_s"] for r in results)
        res.sections["run"]["downlinks_refused_unheld"] = coord.air.too_late  # type: ignore[attr-defined]
        return res
    finally:
        restore_log()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await coord.link.close()
        if tmp is not None:
            tmp.cleanup()


async def _hourly(coord: _Coordinator) -> None:
    """Hourly settled-uplink counts (the workers keep the rest of the series)."""
    coord.settled_hourly = []  # type: ignore[attr-defined]
    while True:
        await asyncio.sleep(3600.0)
        coord.settled_hourly.append(sum(s.delivered + s.lost for s in coord.air.nodes.values()))  # type: ignore


def _merge(coord: _Coordinator, results: list[dict[str, Any]]) -> tuple[_View, dict, dict]:
    sc = coord.sc
    air = coord.air
    counters: dict[str, dict[str, int]] = {}
    meters: dict[str, int] = {}
    nodes: dict[str, Any] = {}
    by_id: dict[int, Any] = {}
    largest: dict[int, int] = dict(air.largest)
    fault_shown: dict[int, bool] = {}
    crashes: list[str] = []
    truth: dict[str, tuple[float, float, float]] = {}
    accounts: dict[str, Any] = {}
    specs = {n.name: n for n in sc.nodes}
    for r in results:
        for name, d in r["nodes"].items():
            counters[name] = d["counters"]
            meters[name] = d["meter"]
            spec = specs[name]
            stub = SimNode.__new__(SimNode)
            stub.spec = spec
            stub.boots = d["boots"]
            stub.radio = type("Radio", (), {"band": d["band"]})()
            stub.battery_inputs = r["battery"].get(name)  # type: ignore[attr-defined]
            nodes[name] = stub
            by_id[spec.node_id] = stub
        for nid, (uplinks, refused, frames, reports, dl_ok) in r["air"].items():
            st = air.nodes.get(nid) or air.stats(nid)
            st.uplinks, st.refused, st.frames, st.reports, st.downlinks_ok = uplinks, refused, frames, reports, dl_ok
        for t, n in r["largest"].items():
            largest[t] = max(largest.get(t, 0), n)
        truth.update(r["world"])
        accounts.update(r["accounts"])
        for k, v in r["fault_shown"].items():
            fault_shown[k] = fault_shown.get(k, False) or v
        crashes += r["crashes"]
    air.largest = largest
    order = [n.name for n in sc.nodes if n.name in truth]  # sums in the scenario's order: same floats
    energy = sum(truth[name][0] for name in order)
    water = sum(truth[name][1] for name in order)
    applied = sum(truth[name][2] for name in order)
    # series: the workers' hours added up node by node, the coordinator's settled counts beside them
    hourly = []
    settled = getattr(coord, "settled_hourly", [])
    ids = [n.node_id for n in sc.nodes]
    for i, h0 in enumerate(results[0]["hourly"]):
        per_e: dict[str, float] = {}
        per_w: dict[str, float] = {}
        per_u: dict[int, int] = {}
        for r in results:
            if i < len(r["hourly"]):
                per_e.update(r["hourly"][i]["energy_wh"])
                per_w.update(r["hourly"][i]["water_l"])
                per_u.update(r["hourly"][i]["uplinks"])
        hourly.append(
            {
                "t_h": h0["t_h"],
                "energy_wh": sum(per_e[nm] for nm in order if nm in per_e),
                "water_l": sum(per_w[nm] for nm in order if nm in per_w),
                "uplinks": sum(per_u.get(nid, 0) for nid in ids),
                "settled": settled[i] if i < len(settled) else sum(s.delivered + s.lost for s in air.nodes.values()),
            }
        )
    world = type("W", (), {})()
    world.energy_wh = lambda: energy
    world.water_l = lambda: water
    world.applied_l = lambda: applied
    world.accounts = lambda: accounts
    kinds = {n.name: n.kind for n in sc.nodes}
    world.truth_by_node = lambda: {
        name: truth[name][0] if kinds[name] == "lighting" else truth[name][1] for name in order
    }
    world.weather = coord.world.weather
    view = _View()
    view.sc = sc  # type: ignore[attr-defined]
    view.air = air  # type: ignore[attr-defined]
    view.channel = coord.channel  # type: ignore[attr-defined]
    view.world = world  # type: ignore[attr-defined]
    view.nodes = {name: nodes[name] for name in specs if name in nodes}  # type: ignore[attr-defined]
    view.by_id = by_id  # type: ignore[attr-defined]
    view.hourly = hourly  # type: ignore[attr-defined]
    view.options = coord.options  # type: ignore[attr-defined]
    view.crashes = crashes  # type: ignore[attr-defined]
    view.fault_shown = fault_shown  # type: ignore[attr-defined]
    view.log_counts = getattr(coord, "log_counts", None)  # type: ignore[attr-defined]
    return view, counters, meters


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use lumeau sim run --workers N")
