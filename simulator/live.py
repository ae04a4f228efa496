"""The live gateway link: the simulated district against a real `lumeau gateway` process.

(Over 600 lines: the pacing, the holds and the gateway API's polling are one link, kept together.)

    link = LiveGateway(Path("out"), speed=2000)
    results = run(scenario, RunOptions(link=lambda: link))     # simulator/runner.py

`LiveGateway` is a simulator.gateway_link.GatewayLink. At `start` it
writes the registry of the scenario's nodes (with their keys), starts
`lumeau sink` and a `lumeau gateway` process wired to it
(simulator/services.py), and gives every gateway site of the scenario a
real radio front-end (simulator/live_radio.py): the first site is a radio
bridge board on a pseudo-terminal the gateway opens as its serial port
(SPEC §10), every other site a Semtech UDP packet forwarder. The simulated
reception time reaches the gateway as radio metadata: the forwarder's
`time` field, and the bridge's TIME message (SPEC §10), so the records the
gateway stores and sends upstream carry simulated time.

How time is paced (the virtual clock against a gateway on real time):

- Between events the virtual clock runs as fast as the CPU allows, capped
  at `speed` simulated seconds per real second (checked every PACE_STEP_S
  of simulated time), so the gateway, its SQLite commits and its upstream
  keep up and no UDP datagram is dropped for a full socket buffer. The
  cap is not a promise of progress: a slow machine simply runs slower.
- The gateway decides downlinks on its own, real, clock: it answers in the
  node's RX1 window (1 s after the uplink) and gives up when it cannot
  reach the radio before that. So after an uplink that may get an answer,
  the simulation holds its clock just before that uplink's RX1 window
  (HOLD_LEAD_S of simulated time before it) and waits in real time for
  the gateway's TX request or PULL_RESP; the frame then goes on the
  simulated air exactly in the window. The hold ends as soon as the
  gateway says it is done with that window (GET /nodes/{id}/window, asked
  every HOLD_POLL_S): its frame's TX_RESULT or TX_ACK read, or no frame
  at all (nothing was due after all, its duty cycle or air-time budget
  said no); at the latest at the gateway's own deadline (1 s after the
  hand-over plus HOLD_SLACK_S; SETTLE_MAX_S more for a frame on the air).
  An uplink may get an answer when it is a confirmed alarm (the gateway
  ACKs alarms once stored; the link decodes the frame with the node's key
  to know), a HELLO or an uplink saying the node's clock is not set (the
  gateway's automatic TIME), an uplink of a set clock from when the
  gateway's time plan (GET /time: `resync_at` per node, the drift
  re-sync's due time on the radios' clock, that is simulated time) says
  the node is due, when the gateway has downlinks queued for its node, or
  when the node's calendar is pending (GET /calendars: any of its uplinks
  may start a round, whose first fragment answers that uplink), or when the
  node is receiving a release image in a running update campaign (GET
  /campaigns: a unicast session gives it a FRAG in each receive window,
  gateway/fuota.py; before issue 12's follow-up they were refused too late)
  -- the link asks the gateway's local API every API_POLL_S of real time.
  Every other uplink costs no real time. Issue 11: before the time plan
  the drift re-syncs were not held for and missed their windows (the
  demo's clocks drifted to 3.9-5 s); before the gateway said when it is
  done, every hold with nothing to send lasted the full second.
- A downlink that still arrives after its window (the hold timed out, or
  nothing said one would come) is refused the way the hardware refuses it
  (TX_RESULT too_late, TX_ACK TOO_LATE) and counted (`downlinks_late`).
- Flow control: UDP has none, and the kernel drops datagrams once the
  gateway's socket buffer is full (a busy machine, a gateway starved of
  CPU). So the link never lets more than UDP_AHEAD_MAX frames handed over
  UDP wait unread: it compares what it sent with the gateway's own
  `lumeau_frames_received_total{transport="udp"}` (read every API_POLL_S)
  and, past that, holds the simulated clock until the gateway caught up
  (`catch_ups`, and their real time). The bridge's pty needs none: bytes
  wait in the line, and in the board's own buffer (OUT_MAX), as on USB.

What this costs and where it differs from the field, named:
- The gateway accounts its own EU868 duty cycle per packet forwarder on
  the forwarder's concentrator clock (`tmst`), which the simulated
  forwarders run on simulated time: the budget is the field's, whatever
  the speed (before issue 15 it ran on the gateway's real clock, `speed`
  times tighter). The RX1 deadline (`send_margin`) is still real time.
- Latency in live mode is real: from the hand-over of the first copy of a
  frame to the gateway until the sink stored it (the gateway's pipeline,
  commit and upstream batching, BATCH_AGE_S at most; alarms go at once).
  It is reported as `StoredRecord.stored_at - rx_time` in real seconds,
  to the millisecond (the record format's time resolution).
- A gateway_restart fault restarts that site's radio front-end (a
  forwarder or bridge reboot: off the air for its downtime, clocks from
  zero, a fresh PULL_DATA or STATUS and TIME), not the gateway process.
- An upstream_outage fault stops the sink process; its end starts it again
  on the same port and database.

`finish()` waits (DRAIN_TIMEOUT_S at most) until the gateway has read
every frame handed to it and delivered its queue to the sink, then reads
every record back from the sink (GET /v1/records) as the GatewayReport's
stored records (bodies with the protocol's keys) and `sink` (named fields,
as the platform got them), and the gateway's /metrics and the sink's
/v1/stats as its counters. What the gateway committed but never delivered
is not visible from outside: `queued_at_end` counts it, and a run that
cannot drain fails loudly instead.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.model import Record
from gateway.timesync import clock_unset
from gateway.transports import DownlinkError
from protocol import expand
from protocol import frame as fr
from protocol import keys as pk
from protocol import messages as m
from protocol.messages import is_alarm
from simulator import channel as ch
from simulator.gateway_link import GatewayReport, LinkContext, StoredRecord
from simulator.live_radio import RX1_DELAY_MS, BridgeBoard, PacketForwarder
from simulator.services import ServiceError, Services, metric_sum
from simulator.sink_records import SinkRecordError, body_from_fields, fetch_records, mtype_of, parse_time

log = logging.getLogger("lumeau.sim.live")

DEFAULT_SPEED = 2000.0  # simulated s per real s at most: 24 h in 43 s
PACE_STEP_S = 30.0  # simulated s between pacing checks (and keepalives, window clean-up)
MAX_LAG_S = 0.5  # real s of pacing debt forgiven after a hold or a slow stretch (no catch-up burst)
HOLD_LEAD_S = 0.010  # simulated s before RX1 at which the clock waits for the gateway's decision
HOLD_SLACK_S = 0.05  # real s past the gateway's 1 s deadline a downlink may still be in flight
API_POLL_S = 0.2  # real s between looks at the gateway's counters, downlink queue and queue depth
HOLD_POLL_S = 0.004  # real s between looks at the gateway's answer to a held window (GET /nodes/{id}/window)
SETTLE_MAX_S = 0.25  # real s an answered window may wait past the deadline for the gateway to say it is done
UDP_AHEAD_MAX = 64  # rxpk handed over UDP and not yet read by the gateway, at most (see "Flow control")
CATCH_UP_TIMEOUT_S = 30.0  # real s the gateway may take to read that backlog before the run fails
DRAIN_TIMEOUT_S = 60.0  # real s for the gateway to read, store and deliver everything at the end
CONNECT_TIMEOUT_S = 15.0  # real s for the gateway to open the bridge's serial port
WINDOW_KEEP_S = 10.0  # simulated s a receive window is remembered after it opened
FORWARDER_EUI = bytes.fromhex("0016c001ff100000")  # + site index: an EUI-64 per forwarder


class _Window:
    """One uplink's RX1 window: what the gateway may still answer, and whether it did."""

    __slots__ = ("uplink", "node_id", "rx1_s", "handed", "answered", "hold")

    def __init__(self, uplink: ch.Uplink, handed: float) -> None:
        self.uplink = uplink
        self.node_id = uplink.node_id
        self.rx1_s = uplink.end_us / 1e6 + RX1_DELAY_MS / 1000  # loop time when the window opens
        self.handed = handed  # time.monotonic() when the first copy went to the gateway
        self.answered = False
        self.hold = False


class LiveGateway:
    """A GatewayLink to real `lumeau sink` + `lumeau gateway` processes (see the module docstring)."""

    name = "live"

    def __init__(
        self,
        workdir: Path,
        *,
        speed: float | None = DEFAULT_SPEED,
        bw_hz: int = 125000,
        channels_mhz: tuple[float, ...] = (868.1, 868.3, 868.5),
        bridges: int = 1,
    ) -> None:
        self.workdir = Path(workdir)
        self.speed = speed
        self.bw_hz = bw_hz
        self.channels_hz = tuple(int(round(f * 1e6)) for f in channels_mhz)
        self.bridges = bridges  # how many sites (the first ones) are radio bridges; the rest forward over UDP
        self.ctx: LinkContext | None = None
        self.services: Services | None = None
        self.fronts: dict[str, BridgeBoard | PacketForwarder] = {}
        self.counts: Counter[str] = Counter()
        self.holds_real_s = 0.0
        self.queue_max = 0
        self._keys: dict[int, pk.NodeKeys] = {}
        self._windows: dict[int, _Window] = {}  # id(uplink) -> window
        self._by_key: dict[tuple[str, int, int], _Window] = {}  # (site, front-end tmst of RX1, node) -> window
        self._handed: dict[tuple[int, int], float] = {}  # (node, counter) -> time.time() of the first hand-over
        self._sent: Counter[str] = Counter()  # frames handed over, by gateway transport
        self._open_nodes: frozenset[int] = frozenset()  # nodes with downlinks queued at the gateway
        # nodes whose calendar is pending (GET /calendars): any uplink may start a round, whose first
        # fragment goes in that uplink's own window (gateway/calendar_sync.py)
        self._calendar_pending: frozenset[int] = frozenset()
        # nodes receiving a release image in a running campaign (GET /campaigns): a unicast update
        # session fills each of their receive windows with a fragment (gateway/fuota.py)
        self._updating: frozenset[int] = frozenset()
        # node -> from when (virtual Unix s) its uplinks get a drift re-sync (GET /time); None: auto time off
        # (until the first answer: every node never heard, whose first uplink of a set clock gets one)
        self._resync_at: dict[int, float | None] | None = {}
        self.holds_unanswered_real_s = 0.0
        self._gw_received: dict[str, float] = {}  # the gateway's receptions by transport (its /metrics)
        self.catch_up_real_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pacer: asyncio.Task | None = None
        self._next_real = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poll_error: str | None = None
        self._failed: ServiceError | None = None
        self.probes: list[Any] = []  # polled with the API: poll(api, virtual Unix s) (simulator/demo_group.py)

    def __repr__(self) -> str:
        return f"LiveGateway({self.workdir}, speed={self.speed}, fronts={list(self.fronts)})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self, ctx: LinkContext) -> None:
        self.ctx = ctx
        self._loop = loop = asyncio.get_running_loop()
        self._keys = {n.node_id: pk.NodeKeys(n.node_id, bytes(n.root_key)) for n in ctx.nodes}
        for i, site in enumerate(ctx.gateways):
            if i < self.bridges:
                self.fronts[site.id] = BridgeBoard(site.id, self._resolve, bw_hz=self.bw_hz)
            else:
                self.fronts[site.id] = PacketForwarder(
                    site.id,
                    FORWARDER_EUI[:7] + bytes((i,)),
                    self._resolve,
                    bw_hz=self.bw_hz,
                    channels_hz=self.channels_hz,
                    immediate=self._immediate,
                )
        # Blocking here is right: the simulated clock stands still until the services are up.
        self.services = svc = Services(self.workdir, ctx.nodes)
        bridges = [f for f in self.fronts.values() if isinstance(f, BridgeBoard)]
        forwarders = [f for f in self.fronts.values() if isinstance(f, PacketForwarder)]
        svc.start(serial_ports=[b.path for b in bridges], semtech=bool(forwarders))
        self._wait_connected(bridges)
        now_us = self._now_us()
        for f in forwarders:
            assert svc.semtech_port is not None
            f.connect("127.0.0.1", svc.semtech_port)
        for front in self.fronts.values():
            front.boot(now_us)
            if isinstance(front, BridgeBoard):
                front.time_sync(now_us, ctx.start_unix + now_us / 1e6)
            loop.add_reader(front.fileno(), self._readable, front)
        self._next_real = time.monotonic()
        self._pacer = loop.create_task(self._pace(), name="live-pacer")
        self._poller = threading.Thread(target=self._poll_api, name="live-api-poll", daemon=True)
        self._poller.start()

    def _wait_connected(self, bridges: list[BridgeBoard]) -> None:
        """The gateway opens its serial ports in the background: wait until every bridge's port is open."""
        assert self.services is not None
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while bridges:
            samples = self.services.gateway_metrics()
            if all(
                metric_sum(samples, "lumeau_transport_stat", transport="serial", instance=b.path, counter="connected")
                >= 1
                for b in bridges
            ):
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the gateway did not open {[b.path for b in bridges]} within {CONNECT_TIMEOUT_S:g} s"
                )
            time.sleep(0.02)

    def _now_us(self) -> int:
        assert self._loop is not None
        return int(round(self._loop.time() * 1e6))

    # ------------------------------------------------------------------ real I/O

    def _readable(self, front: BridgeBoard | PacketForwarder) -> None:
        front.on_readable(self._now_us())

    def _poll(self, timeout: float) -> None:
        """Serve every front-end's I/O for up to `timeout` real seconds (0: what is ready now)."""
        fronts = list(self.fronts.values())
        r, w, _ = select.select(fronts, [f for f in fronts if f.wants_write], [], max(0.0, timeout))
        if r:
            now_us = self._now_us()
            for f in r:
                f.on_readable(now_us)
        for f in w:
            f.flush()

    async def _pace(self) -> None:
        while True:
            await asyncio.sleep(PACE_STEP_S)
            self._tick()

    def _tick(self) -> None:
        if self.speed:
            self._next_real = max(self._next_real + PACE_STEP_S / self.speed, time.monotonic() - MAX_LAG_S)
            while (now := time.monotonic()) < self._next_real:
                self._poll(self._next_real - now)
        self._poll(0)
        for f in self.fronts.values():
            if isinstance(f, PacketForwarder):
                f.keepalive()
        horizon = self._loop.time() - WINDOW_KEEP_S if self._loop else 0.0
        for k, w in list(self._by_key.items()):
            if w.rx1_s < horizon:
                del self._by_key[k]
                self._windows.pop(id(w.uplink), None)
        assert self.services is not None
        if not self.services.gateway.running and self._failed is None:
            # raised by finish(): an exception here would only end this task
            self._failed = ServiceError(f"the gateway process exited during the run; see {self.services.gateway.log}")
            log.error("%s", self._failed)
        if self._poll_error:
            log.warning("gateway API: %s", self._poll_error)
            self._poll_error = None

    def _poll_api(self) -> None:
        """Thread: the gateway's queue depth (for queue_max) and which nodes have downlinks waiting."""
        while not self._stop.wait(API_POLL_S):
            svc = self.services
            if svc is None or svc.api is None:
                continue
            try:
                samples = svc.gateway_metrics()
                self._note_received(samples)
                self.queue_max = max(self.queue_max, int(metric_sum(samples, "lumeau_queue_records")))
                nodes: frozenset[int] = frozenset()
                if metric_sum(samples, "lumeau_downlink_queue_depth") > 0:
                    doc = svc.api.json("/commands?state=queued,sent&limit=1000")
                    nodes = frozenset(int(c["node"], 16) for c in doc.get("commands", []))
                self._open_nodes = nodes
                for p in self.probes:
                    p.poll(svc.api, self.ctx.unix_now() if self.ctx is not None else 0.0)
                self._resync_at = self._time_plan(svc)
                cal = svc.api.json("/calendars")
                self._calendar_pending = frozenset(
                    int(k, 16) for k, v in cal.get("nodes", {}).items() if v.get("state") == "pending"
                )
                self._updating = self._receiving(svc)
            except (OSError, ValueError, KeyError) as e:  # the gateway stopping, a slow answer: next time
                self._poll_error = str(e)[:200]

    @staticmethod
    def _receiving(svc: Services) -> frozenset[int]:
        """Nodes receiving an image in a running campaign (GET /campaigns, then each such campaign's
        nodes: one more call per running campaign with a node receiving)."""
        assert svc.api is not None
        try:
            doc = svc.api.json("/campaigns")
        except urllib.error.HTTPError as e:
            if e.code == 404:  # campaigns not run by this gateway
                return frozenset()
            raise
        out: set[int] = set()
        for c in doc.get("campaigns", []):
            if c.get("state") == "running" and (c.get("counts") or {}).get("receiving"):
                one = svc.api.json(f"/campaigns/{int(c['id'])}")
                out.update(int(k, 16) for k, p in one.get("nodes", {}).items() if p.get("state") == "receiving")
        return frozenset(out)

    @staticmethod
    def _time_plan(svc: Services) -> dict[int, float | None] | None:
        """When the gateway's drift re-syncs fall due, per node heard (GET /time); None: auto time off."""
        assert svc.api is not None
        try:
            doc = svc.api.json("/time?plan=1")  # every node heard, its due time only
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return {int(k, 16): v for k, v in doc.get("resync_at", {}).items()}

    def _note_received(self, samples: list) -> None:
        self._gw_received = {
            t: metric_sum(samples, "lumeau_frames_received_total", transport=t) for t in ("udp", "bridge")
        }

    def _catch_up(self) -> None:
        """Hold the simulated clock until the gateway has read the UDP backlog down to half the bound."""
        assert self.services is not None
        t0 = time.monotonic()
        self.counts["catch_ups"] += 1
        while self._sent["udp"] - self._gw_received.get("udp", 0) > UDP_AHEAD_MAX // 2:
            if time.monotonic() - t0 > CATCH_UP_TIMEOUT_S or not self.services.gateway.running:
                if self._failed is None:
                    self._failed = ServiceError(
                        f"the gateway read no UDP for {CATCH_UP_TIMEOUT_S:g} s "
                        f"({self._sent['udp'] - self._gw_received.get('udp', 0):.0f} "
                        f"frames waiting); see {self.services.gateway.log}"
                    )
                break
            self._poll(0.005)
            try:
                self._note_received(self.services.gateway_metrics())
            except OSError:
                pass
        self.catch_up_real_s += time.monotonic() - t0

    # ------------------------------------------------------------------ the air's side

    def uplink(self, hearing: ch.Hearing) -> None:
        assert self.ctx is not None and self._loop is not None
        front = self.fronts.get(hearing.gateway)
        if front is None or not front.up:
            self.counts["uplinks_site_down"] += 1
            return
        up = hearing.tx
        assert isinstance(up, ch.Uplink) and up.payload is not None  # a gateway hears uplinks, with their bytes
        raw = bytes(up.payload)
        tmst = front.forward(
            raw, up.end_us, self.ctx.start_unix + up.end_us / 1e6, up.freq_hz, up.sf, hearing.rssi_dbm, hearing.snr_db
        )
        self._sent[front.kind] += 1
        if front.kind == "udp" and self._sent["udp"] - self._gw_received.get("udp", 0) > UDP_AHEAD_MAX:
            self._catch_up()
        w = self._windows.get(id(up))
        if w is None:
            w = self._windows[id(up)] = _Window(up, time.monotonic())
            try:
                f = fr.parse(raw)
                self._handed.setdefault((f.node_id, f.counter), time.time())
            except ValueError:
                pass
            if self._may_answer(up.node_id, raw, self.ctx.start_unix + up.end_us / 1e6):
                w.hold = True
                self._loop.call_at(w.rx1_s - HOLD_LEAD_S, self._hold, w)
        self._by_key[(hearing.gateway, tmst, up.node_id)] = w

    def _may_answer(self, node_id: int, raw: bytes, unix_s: float) -> bool:
        if node_id in self._open_nodes or node_id in self._calendar_pending or node_id in self._updating:
            return True
        keys = self._keys.get(node_id)
        if keys is None:
            return False
        try:
            f, body = fr.unseal(keys, raw)
            msg = m.decode(f.mtype, body)
        except ValueError:  # not a frame of ours: the gateway will reject it, nothing comes back
            return False
        # automatic time (gateway/timesync.py) answers every HELLO (a reset may have cost the clock)
        # and a node saying its clock is not set
        unset = clock_unset(f.mtype, msg)
        if is_alarm(f.mtype, msg) or f.mtype == m.HELLO or unset is True:
            return True
        # ... and re-syncs a set clock from when the gateway's plan says (a node it never heard: at once)
        plan = self._resync_at
        if unset is False and plan is not None:
            due = plan.get(node_id, 0.0)
            return due is not None and due <= unix_s
        return False

    def _hold(self, w: _Window) -> None:
        """Stop the simulated clock (a synchronous callback) until the gateway is done with the window:
        answered it and knows its frame went (the radio's TX_RESULT or TX_ACK read: its bookkeeping, a
        calendar's round say, is done before the node's next uplink can reach it, as in the field), or
        said it is done without a frame for it (nothing due after all, its duty cycle, its budget), or
        cannot answer any more."""
        t0 = time.monotonic()
        deadline = w.handed + RX1_DELAY_MS / 1000 + HOLD_SLACK_S
        counter = fr.parse(bytes(w.uplink.payload or b"")).counter
        done = settle = False
        while not done and (now := time.monotonic()) < deadline:
            self._poll(min(HOLD_POLL_S, deadline - now))
            done = self._window_done(w.node_id, counter)
            if w.answered and not done and not settle and time.monotonic() >= deadline:
                settle = True  # on the air: the gateway's word may lag a little, once
                deadline = time.monotonic() + SETTLE_MAX_S
        if done:
            self._poll(0)  # a frame written before the gateway said so is read now
        self.counts["holds"] += 1
        self.counts["holds_answered" if w.answered else "holds_unanswered"] += 1
        if done and not w.answered:
            self.counts["holds_ended_by_gateway"] += 1
        spent = time.monotonic() - t0
        self.holds_real_s += spent
        if not w.answered:
            self.holds_unanswered_real_s += spent

    def _window_done(self, node_id: int, counter: int) -> bool:
        """The gateway has dealt with this uplink's window (or a later one of the node) and is not answering."""
        assert self.services is not None and self.services.api is not None
        try:
            doc = self.services.api.json(f"/nodes/{node_id:08x}/window", timeout=0.5)
        except (OSError, ValueError):  # 404: not committed yet; the gateway busy: look again
            return False
        c = doc.get("counter", -1)
        return c > counter or (c == counter and not doc.get("answering", True))

    def _immediate(self, site: str, raw: bytes, freq_hz: int, sf: int) -> str | None:
        """A forwarder told to send at once (a multicast, SPEC §5 "Groups"): a copy for every lamp on the air;
        the lamps that listen all the time (group members) hear it. None (on the air) or why not."""
        ctx = self.ctx
        if ctx is None or ctx.multicast is None:
            return "bad_request"
        lamps = [n.node_id for n in ctx.nodes if n.kind == "lighting"]
        try:
            ctx.multicast(site, lamps, raw, sf, freq_hz)
        except DownlinkError as e:
            self.counts[f"multicasts_{e.reason}"] += 1
            return e.reason
        self.counts["multicasts_on_air"] += 1
        return None

    def _resolve(self, site: str, tmst: int, node_id: int, raw: bytes) -> str | None:
        """A front-end got a downlink for RX1 at its time `tmst`: on the air, or why not (a DownlinkError reason)."""
        assert self.ctx is not None
        w = self._by_key.get((site, tmst, node_id))
        if w is None:
            self.counts["downlinks_unmatched"] += 1
            return "too_late"  # no window of this node opens then: forgotten long ago, or never heard
        try:
            self.ctx.downlink(site, node_id, raw, w.uplink)
        except DownlinkError as e:
            # not answered: a hold goes on, as the gateway may try another radio that heard the uplink
            self.counts[f"downlinks_{e.reason}"] += 1
            if e.reason == "too_late":
                self.counts["downlinks_late"] += 1
            return e.reason
        w.answered = True
        self.counts["downlinks_on_air"] += 1
        return None

    # ------------------------------------------------------------------ faults

    async def gateway_restart(self, site: str, downtime_s: float) -> None:
        front = self.fronts.get(site)
        if front is None or self._loop is None:
            return
        front.down()
        self.counts["site_restarts"] += 1

        def back() -> None:
            assert self.ctx is not None
            now_us = self._now_us()
            front.boot(now_us)
            if isinstance(front, BridgeBoard):
                front.time_sync(now_us, self.ctx.start_unix + now_us / 1e6)

        self._loop.call_later(downtime_s, back)

    async def set_upstream(self, up: bool) -> None:
        assert self.services is not None
        if up:
            self.services.restart_sink()
        else:
            self.services.stop_sink()
        self.counts["upstream_up" if up else "upstream_down"] += 1

    # ------------------------------------------------------------------ the end

    async def finish(self) -> GatewayReport:
        assert self.services is not None and self.ctx is not None
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
            self._pacer = None
        svc = self.services
        if self._failed is not None:
            raise self._failed
        if not svc.sink.running:
            svc.restart_sink()  # an outage lasting to the end: the data is still owed to the platform
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            self._poll(0.05)
            if not svc.gateway.running:
                raise ServiceError(f"the gateway process exited before it delivered everything; see {svc.gateway.log}")
            samples = svc.gateway_metrics()
            got = {t: metric_sum(samples, "lumeau_frames_received_total", transport=t) for t in self._sent}
            queued = metric_sum(samples, "lumeau_queue_records")
            if (
                all(got[t] >= n for t, n in self._sent.items())
                and not any(f.wants_write for f in self.fronts.values())
                and metric_sum(samples, "lumeau_pipeline_inflight") == 0
                and queued == 0
            ):
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the gateway did not take and deliver everything within {DRAIN_TIMEOUT_S:g} s: "
                    f"read {got} of {dict(self._sent)}, {queued:.0f} records still queued"
                )
        assert svc.sink_api is not None
        docs = fetch_records(svc.sink_api)
        stats = svc.sink_api.json("/v1/stats")
        stored, sink = [], []
        for d in docs:
            try:
                mtype = mtype_of(d)
                rx = parse_time(d["time"])
                received = parse_time(d["received"])
                node, counter = int(d["node"], 16), int(d["counter"])
                body = body_from_fields(mtype, d.get("fields", {}))
                radio = d.get("radio", {})
                handed = self._handed.get((node, counter))
                # the format's times have 1 ms resolution: a fast alarm can look faster than 0, never is
                latency = max(0.0, received - handed) if handed is not None else 0.0
                stored.append(StoredRecord(node, counter, mtype, body, rx, rx + latency, radio.get("gateway", "")))
                # named as the gateway's own records are (protocol.expand), whatever the wire format's shape
                sink.append(
                    Record(
                        node_id=node,
                        counter=counter,
                        mtype=mtype,
                        kind=d["type"],
                        rx_time=rx,
                        body=body,
                        fields=expand.expand(mtype, body),
                        receptions=int(radio.get("receptions", 1)),
                        best_rssi=radio.get("rssi"),
                        best_snr=radio.get("snr"),
                        gateway_id=radio.get("gateway", ""),
                        alarm=bool(d.get("alarm")),
                    )
                )
            except (SinkRecordError, KeyError, ValueError, TypeError) as e:
                self.counts["sink_records_unreadable"] += 1
                log.warning("a record at the sink does not map back: %s", e)
        counters = self._counters(samples, stats)
        return GatewayReport(
            self.name,
            stored,
            int(stats.get("records", len(docs))),
            int(queued),
            max(self.queue_max, int(queued)),
            counters,
            sink,
        )

    def _counters(self, samples: list, sink_stats: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": int(metric_sum(samples, "lumeau_frames_received_total")),
            "accepted": int(metric_sum(samples, "lumeau_frames_accepted_total")),
            "duplicates": int(metric_sum(samples, "lumeau_frames_duplicate_total")),
            "evicted": int(metric_sum(samples, "lumeau_queue_evicted_total")),
            "upstream_records_sent": int(metric_sum(samples, "lumeau_upstream_records_sent_total")),
            "upstream_retries": int(metric_sum(samples, "lumeau_upstream_retries_total")),
        }
        for name, labels, v in samples:
            if name == "lumeau_frames_rejected_total" and v:
                key = "rejected_" + labels.get("reason", "")
                out[key] = out.get(key, 0) + int(v)
            elif name == "lumeau_downlinks_total":
                out["downlinks_" + labels.get("outcome", "")] = int(v)
        out.update({f"live_{k}": v for k, v in sorted(self.counts.items())})
        out["live_handed_over"] = dict(self._sent)
        out["live_holds_real_s"] = round(self.holds_real_s, 3)
        out["live_holds_unanswered_real_s"] = round(self.holds_unanswered_real_s, 3)
        out["live_catch_up_real_s"] = round(self.catch_up_real_s, 3)
        out["live_speed"] = self.speed
        out["live_fronts"] = {site: {"kind": f.kind, **f.stats()} for site, f in self.fronts.items()}
        out["live_sink"] = sink_stats
        out["live_sink_restarts"] = self.services.sink_restarts if self.services else 0
        out["latency_basis"] = "real s from hand-over to the gateway until stored at the sink"
        return out

    async def close(self) -> None:
        self._stop.set()
        if self._pacer is not None:
            self._pacer.cancel()
            await asyncio.gather(self._pacer, return_exceptions=True)
            self._pacer = None
        for f in self.fronts.values():
            if self._loop is not None:
                try:
                    self._loop.remove_reader(f.fileno())
                except (ValueError, OSError):
                    pass
        if self.services is not None:
            codes = self.services.stop()
            if any(c not in (0, None) for c in codes.values()):
                log.warning("services did not exit cleanly: %s", codes)
            self.exit_codes = codes
        for f in self.fronts.values():
            f.close()
        if self._poller is not None:
            self._poller.join(5)
