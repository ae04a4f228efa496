"""How the simulated radios reach a gateway: the runner's pluggable gateway link.

The runner owns the air (simulator/air.py): it knows when an uplink ends and
which gateway sites heard it. A `GatewayLink` takes it from there -- hands
each hearing to a gateway as that gateway's radio would, lets the gateway
answer in the node's receive window through `LinkContext.downlink`, applies
the gateway-side faults, and finally says what the gateway stored.

Two links are meant to exist:

- `InProcessGateway` (here): the real gateway Pipeline, Store (a temporary
  SQLite file) and Downlinks in the simulation's own virtual-time loop. Fast
  and deterministic; see its docstring for what is relaxed.
- a live link (issue 5, part "live"): a real `lumeau gateway` process, fed
  through a pseudo-terminal as a radio bridge board (SPEC section 10) and over
  UDP as a Semtech packet forwarder; it implements the same protocol.

Contract (every method is called from the simulation's event loop):

    await link.start(ctx)                 # ctx: LinkContext (scenario, nodes, clock, downlinks)
    link.uplink(hearing)                  # one call per gateway site that heard an uplink, at its end
    await link.gateway_restart(site, downtime_s)   # a gateway_restart fault (the runner switches the
                                          # site off the air in the channel itself)
    await link.set_upstream(up)           # upstream_outage fault: False at its start, True at its end
    report = await link.finish()          # drain, then what the gateway stored: a GatewayReport
    await link.close()                    # release everything (also after a failed run)

`GatewayReport` is the gateway's side of the results: every record it
stored durably (with the virtual time of its commit), what reached the
upstream, and the gateway's own counters. simulator/metrics.py turns it and
the nodes' side into the results object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from simulator import channel as ch


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a gateway must know about a simulated node (its registry entry)."""

    node_id: int
    name: str
    kind: str  # "lighting" | "irrigation"
    root_key: bytes = field(repr=False)
    lat: float = 0.0
    lon: float = 0.0
    site: str = ""  # street or park id


@dataclass(slots=True)
class StoredRecord:
    """One record the gateway committed durably (the first copy of a frame)."""

    node_id: int
    counter: int
    mtype: int
    body: dict[int, Any]
    rx_time: float  # Unix s: when the uplink ended on the air (Reception.rx_time)
    stored_at: float  # Unix s, virtual: when its commit completed
    gateway_id: str


@dataclass(slots=True)
class GatewayReport:
    link: str  # "inprocess", "live", ...
    stored: list[StoredRecord]  # in commit order
    delivered_upstream: int  # records the upstream (sink) acknowledged
    queued_at_end: int  # records still waiting for the upstream
    queue_max: int  # most records queued at once
    counters: dict[str, Any]  # pipeline / downlink / store counters
    sink: list[Any] = field(default_factory=list)  # gateway.model.Record as the platform got them (fields named)


class LinkContext:
    """What the runner gives a link: the scenario's nodes, the clock and the way back to the air."""

    def __init__(
        self,
        nodes: Sequence[NodeInfo],
        gateways: Sequence[ch.GatewaySite],
        start_unix: float,
        unix_now: Callable[[], float],
        downlink: Callable[..., Any],
        workdir: Any,
    ) -> None:
        self.nodes = list(nodes)
        self.gateways = list(gateways)
        self.start_unix = start_unix  # Unix s of the loop's time 0 (the channel's 0 ms)
        self.unix_now = unix_now  # virtual Unix time, s (float)
        # downlink(site_id, node_id, frame, uplink) -> None, or raises
        # gateway.transports.DownlinkError: puts a frame on the air in the
        # node's RX1 after `uplink` (simulator/air.py)
        self.downlink = downlink
        self.workdir = workdir  # a private temporary directory (pathlib.Path)
        self.adr: dict[str, Any] | None = None  # the scenario's [adr] policy (gateway.adr.Adr arguments); None: off
        # multicast(site_id, node_ids, frame, sf, freq_hz) -> copies on the air, or raises DownlinkError:
        # a frame sent at once to every listening node (simulator/air.py `multicast`); None: not offered
        self.multicast: Callable[..., int] | None = None


class GatewayLink(Protocol):
    name: str

    async def start(self, ctx: LinkContext) -> None: ...

    def uplink(self, hearing: ch.Hearing) -> None: ...

    async def gateway_restart(self, site: str, downtime_s: float) -> None: ...

    async def set_upstream(self, up: bool) -> None: ...

    async def finish(self) -> GatewayReport: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- the in-process gateway

import asyncio  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sqlite3  # noqa: E402
from pathlib import Path  # noqa: E402

from gateway.adr import Adr, AdrObserver  # noqa: E402
from gateway.downlinks import Downlinks  # noqa: E402
from gateway.model import Reception, Record  # noqa: E402
from gateway.pipeline import Pipeline  # noqa: E402
from gateway.registry import NodeEntry, Registry  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.timesync import TimeSync  # noqa: E402

# InProcessGateway.uplink builds a Reception positionally (a keyword call costs about three
# times as much, and it runs once per gateway per uplink): the fields it fills, in this order.
_RECEPTION_FIELDS = ("raw", "transport", "gateway_id", "rx_time", "rssi", "snr", "freq_hz", "sf", "tmst", "path")
if tuple(f.name for f in dataclasses.fields(Reception)) != _RECEPTION_FIELDS:
    raise ImportError(f"gateway.model.Reception's fields changed: update InProcessGateway.uplink ({_RECEPTION_FIELDS})")

UPSTREAM_PERIOD_S = 5.0  # the real upstream's max_age: a batch at least this often
UPSTREAM_BATCH = 500  # records the in-process upstream takes a period (real: upstream.default_batch_size)
STATE_FLUSH_S = 0.0  # node state flushed at close and restart only (the service: every 5 s)


class _InlineExecutor(concurrent.futures.Executor):
    """Runs the store's writer work at once, on the loop's thread.

    In virtual time a commit must not take a thread's real time: the loop
    would jump ahead meanwhile and the run would depend on the machine's
    speed. Inline, a commit takes no virtual time and every run of a seed
    is the same.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:  # type: ignore[override]  # an asyncio future
        # An asyncio future: loop.run_in_executor hands it back as is (asyncio.wrap_future
        # passes futures of its own kind through), so no thread-safe wake-up per commit.
        f = asyncio.get_running_loop().create_future()
        try:
            f.set_result(fn(*args, **kwargs))
        except (Exception, asyncio.CancelledError) as e:  # handed to the awaiting coroutine, as a thread would
            f.set_exception(e)
        return f

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


async def open_sim_store(path: Path, state_flush_s: float = STATE_FLUSH_S) -> Store:
    """The real gateway.store.Store with its writer inline and durability relaxed, for in-process runs.

    `synchronous = OFF`: a commit is not fsynced. The simulated gateway never
    loses power (a gateway restart is a clean close and reopen), and a
    thousand nodes' commits then cost microseconds. `exclusive`: reads go
    through the writer's connection, which holds the file alone
    (`locking_mode = EXCLUSIVE`): with the writer inline on the loop's thread
    the two connections never ran at the same time anyway, and a commit no
    longer takes and drops the file's locks (bench/README.md has its share of
    an uplink's cost). Everything else -- schema, group commit, replay windows
    in the same transaction, eviction, downlinks -- is the real store's.
    """
    return await Store.open(
        path,
        state_flush_s=state_flush_s,
        executor=_InlineExecutor(),
        synchronous="OFF",
        exclusive=True,
        reserve_bytes=0,  # a simulation's scratch database: no disk to keep room on
    )


class _ObservedDownlinks(Downlinks):
    """The real Downlinks, told by the pipeline of every committed record (on_uplink): we note it too."""

    def __init__(self, *args, on_commit, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._on_commit = on_commit

    def on_uplink(self, record: Record, reception: Reception) -> None:
        self._on_commit(record)
        super().on_uplink(record, reception)


class _AirPath:
    """The DownlinkPath of one hearing: answer through the site that heard it, in RX1."""

    __slots__ = ("ctx", "hearing")

    def __init__(self, ctx: LinkContext, hearing: ch.Hearing) -> None:
        self.ctx = ctx
        self.hearing = hearing

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        h = self.hearing
        self.ctx.downlink(h.gateway, h.tx.node_id, frame, h.tx)


class InProcessGateway:
    """The real gateway pipeline, store and downlinks in the simulation's loop.

    Each gateway site is a radio of one gateway service (as a packet
    forwarder or a radio bridge would be): every hearing becomes a
    `Reception` (transport "inproc", gateway_id "sim:<site>", rx_time the
    uplink's end in simulated Unix time, RSSI, SNR, frequency, SF, and a
    downlink path back through that site), handed to `Pipeline.ingest_many`
    with the other hearings that arrived at the same instant. Downlinks run
    on the simulated clock (`Downlinks(clock=...)`): ACKs of confirmed alarms
    and anything queued go out in RX1 through the site that heard the node
    best.

    Relaxed, and why (in-process only; the live link runs the real service):
    - the store commits inline and unsynced (see open_sim_store);
    - the upstream is the store's own contract without HTTP: every
      UPSTREAM_PERIOD_S the oldest UPSTREAM_BATCH records are taken
      (`next_batch`, fields named by protocol.expand) and deleted, as the
      real upstream does after a 2xx; during an upstream outage nothing is
      taken, so the queue grows and drains after;
    - a gateway restart closes the pipeline, downlinks and store and opens
      them again from the same SQLite file at once (replay windows, downlink
      counters and open downlinks reloaded), while the site is off the air
      for its downtime (the runner switches it off in the channel).
    """

    name = "inprocess"

    def __init__(
        self, upstream_period_s: float = UPSTREAM_PERIOD_S, upstream_batch: int = UPSTREAM_BATCH, auto_time: bool = True
    ) -> None:
        self.auto_time = auto_time
        self.upstream_period_s = upstream_period_s
        self.upstream_batch = upstream_batch
        self.ctx: LinkContext | None = None
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.downlinks: Downlinks | None = None
        self.timesync: TimeSync | None = None
        self.adr: AdrObserver | None = None
        self.registry: Registry | None = None
        self.stored: list[StoredRecord] = []
        self.sink: list[Record] = []  # what the upstream delivered, fields named
        self.upstream_up = True
        self.queue_max = 0
        self.restarts = 0
        self._inbox: list[Reception] = []
        self._wake = asyncio.Event()
        self._gateway_ids: dict[str, str] = {}  # site -> "sim:<site>"
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._counters: dict[str, int] = {}
        self._db: Path | None = None

    async def start(self, ctx: LinkContext) -> None:
        self.ctx = ctx
        entries = {
            n.node_id: NodeEntry(n.node_id, n.kind, n.root_key, name=n.name, site=n.site, lat=n.lat, lon=n.lon)
            for n in ctx.nodes
        }
        self.registry = Registry(ctx.workdir / "registry.toml", entries)
        self.registry.save()
        self._db = ctx.workdir / "gateway.db"
        # automatic time with the service's defaults (SPEC §4); kept across a gateway restart, as the
        # service keeps it in its state file
        self.timesync = TimeSync(clock=ctx.unix_now) if self.auto_time else None
        await self._open()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._feed(), name="sim-gateway-feed"),
            loop.create_task(self._upstream(), name="sim-gateway-upstream"),
        ]

    async def _open(self) -> None:
        assert self.ctx is not None and self.registry is not None and self._db is not None
        self.store = await open_sim_store(self._db)
        self.downlinks = _ObservedDownlinks(
            self.store,
            self.registry,
            clock=self.ctx.unix_now,
            on_commit=self._committed,
            timesync=self.timesync,
        )
        await self.downlinks.start()
        observer: Any = self.downlinks
        if self.ctx.adr is not None:  # as the service does with [adr] enabled; a restart starts it afresh
            self.adr = AdrObserver(Adr(**self.ctx.adr), self.downlinks)
            observer = self.adr
        self.pipeline = Pipeline(self.registry, self.store, downlinks=observer)

    async def _shut(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.close()
            self._keep_counters()
        if self.downlinks is not None:
            await self.downlinks.close()
        if self.store is not None:
            await self.store.close()

    def _keep_counters(self) -> None:
        p, d = self.pipeline, self.downlinks
        assert p is not None and d is not None
        add = {"accepted": p.accepted, "duplicates": p.duplicates, "received": sum(p.received.values())}
        for (reason, _t), n in p.rejected.items():
            add["rejected_" + reason] = add.get("rejected_" + reason, 0) + n
        for k, v in d.counts.items():
            add["downlinks_" + k] = v
        if self.adr is not None:
            for k, v in self.adr.adr.counts.items():
                add["adr_" + k] = v
        for k, v in add.items():
            self._counters[k] = self._counters.get(k, 0) + v

    def _committed(self, record: Record) -> None:
        assert self.ctx is not None and self.store is not None
        self.stored.append(
            StoredRecord(
                record.node_id,
                record.counter,
                record.mtype,
                record.body,
                record.rx_time,
                self.ctx.unix_now(),
                record.gateway_id,
            )
        )
        n = self.store.count()
        if n > self.queue_max:
            self.queue_max = n

    # -- the radios' side ---------------------------------------------------------------

    def uplink(self, hearing: ch.Hearing) -> None:
        # Once per gateway that heard an uplink (every one of a city's gateways hears most nodes:
        # about 15 calls per uplink): positional fields, the site's gateway_id made once.
        ctx = self.ctx
        assert ctx is not None
        up = hearing.tx
        assert up.payload is not None  # the air's frames carry their bytes
        site = hearing.gateway
        gateway_id = self._gateway_ids.get(site)
        if gateway_id is None:
            gateway_id = self._gateway_ids[site] = "sim:" + site
        inbox = self._inbox
        inbox.append(
            Reception(
                up.payload,  # raw
                "inproc",  # transport
                gateway_id,
                ctx.start_unix + up.end_us / 1e6,  # rx_time
                round(hearing.rssi_dbm, 1),  # rssi
                round(hearing.snr_db, 1),  # snr
                up.freq_hz,
                up.sf,
                up.end_us & 0xFFFFFFFF,  # tmst
                _AirPath(ctx, hearing),  # path
            )
        )
        if len(inbox) == 1:  # the first since _feed took the inbox: later ones find the event set, or _feed busy
            self._wake.set()

    async def _feed(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._lock:
                while self._inbox:
                    batch, self._inbox = self._inbox, []
                    assert self.pipeline is not None
                    await self.pipeline.ingest_many(batch)

    async def _upstream(self) -> None:
        while True:
            await asyncio.sleep(self.upstream_period_s)
            await self._deliver()

    async def _deliver(self) -> None:
        if not self.upstream_up:
            return
        async with self._lock:
            store = self.store
            assert store is not None
            while True:
                batch = store.next_batch(self.upstream_batch)
                if not batch:
                    return
                self.sink.extend(rec for _seq, rec in batch)
                await store.delete([seq for seq, _rec in batch])

    # -- faults ---------------------------------------------------------------------------

    async def gateway_restart(self, site: str, downtime_s: float) -> None:
        async with self._lock:
            await self._shut()
            await self._open()
            self.restarts += 1

    async def set_upstream(self, up: bool) -> None:
        self.upstream_up = up

    # -- the end ----------------------------------------------------------------------------

    async def finish(self) -> GatewayReport:
        while self._inbox:
            self._wake.set()
            await asyncio.sleep(0)
        async with self._lock:
            assert self.pipeline is not None and self.downlinks is not None
            await self.pipeline.drain()
            await self.downlinks.idle()
        await self._deliver()
        assert self.store is not None
        queued = self.store.count()
        counters = dict(self._counters)
        p, d = self.pipeline, self.downlinks
        live = {"accepted": p.accepted, "duplicates": p.duplicates, "received": sum(p.received.values())}
        for (reason, _t), n in p.rejected.items():
            live["rejected_" + reason] = live.get("rejected_" + reason, 0) + n
        for k, v in d.counts.items():
            live["downlinks_" + k] = v
        if self.adr is not None:
            await self.adr.idle()
            for k, v in self.adr.adr.counts.items():
                live["adr_" + k] = v
        for k, v in live.items():
            counters[k] = counters.get(k, 0) + v
        counters["restarts"] = self.restarts
        counters["evicted"] = self.store.evicted_total
        return GatewayReport(self.name, self.stored, len(self.sink), queued, self.queue_max, counters, self.sink)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._shut()
        except (sqlite3.Error, RuntimeError) as e:  # closing after a failed run: say so, do not mask it
            logging.getLogger("lumeau.sim").warning("in-process gateway did not close cleanly: %s", e)
        self.pipeline = self.downlinks = self.store = None
