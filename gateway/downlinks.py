"""Downlinks: what the gateway sends to nodes, and when.

Per node, a queue of COMMAND, CONFIG and TIME downlinks (persisted in the
store, so a restart forgets nothing), each with an expiry. ACKs of confirmed
alarms are made on the fly. What happens after an uplink is stored (the
pipeline calls `on_uplink`):

- a CMD_ACK settles the COMMAND with that id (`acked`, with its result);
- a confirmed alarm (EVENT, severity >= alarm) is answered with an ACK
  naming its counter, once it is committed -- never before: an ACK is a
  promise that the alarm is stored;
- the oldest queued downlink (or a COMMAND due for a retry) is sent.

When:
- LoRa (`udp`: a packet forwarder) answers in the node's receive window
  after its uplink. The gateway waits `collect_s` (0.2 s) for copies of the
  uplink heard by other radios and answers through the one with the best
  RSSI (then SNR), as LoRaWAN network servers do -- among the copies heard
  by LoRa radios (`LORA_RADIOS`: packet forwarders, radio bridges, Basics
  Stations) when the committed copy came by one, else on its transport
  only (below). One frame per receive
  window (a transport schedules its frame at the uplink's timestamp plus
  the RX1 delay; a second one would collide with it): an ACK goes first,
  with "pending" 0 so the node does not listen for frames that cannot come;
  queued downlinks go after later uplinks. An ACK the best radio refuses
  (its forwarder says TOO_LATE, or its duty cycle is spent) is tried
  through the next copy's radio (`acks_rerouted`): otherwise the node
  would resend the alarm and spend its own airtime; so are an automatic
  TIME and a queued downlink (`rerouted`).
- Serial and BLE (`IMMEDIATE_TRANSPORTS`) are always listening: everything
  due is sent at once, after the uplink and also as soon as it is enqueued;
  an ACK's "pending" counts what follows it.

Path binding (issue 20): the answer goes back the way the stored copy came.
- RSSI is compared only within one transport, the LoRa radios counting as
  one (issue 11: a lamp heard at -127 dBm by the bridge and -114 dBm by a
  forwarder got its TIMEs through the bridge whenever the bridge's copy
  was committed first, and lost them): a copy of the same frame heard on
  another transport (a BLE or serial "relay" claiming -45 dBm) never
  takes the answer from the radio path; it is counted in
  `path_switches_refused`. A frame is only signed, not bound to a link, so a
  relay can always repeat it; it must not steer the gateway's answers.
- The last-receive record of an immediate link (what `enqueue` and the sweep
  push to) lasts LAST_RX_TTL_S (1800 s: two default report intervals) after that link's last committed
  uplink, and is dropped at once when the node's next uplink is committed
  on another transport: a link heard once does not keep the node's
  downlinks.
- The gateway's BLE transport connects only to registered nodes and binds
  each link to the node id it advertised (gateway/transports/ble.py).

Delivery: the downlink counter is committed before the frame is sealed
(SPEC §4: a crash skips a counter, never reuses one). A frame that could
not be handed to the radio (the transport raised) stays queued. A COMMAND
is resent (same command id: the node executes an id at most once and
answers a repeat with the first result) until a CMD_ACK arrives, at most
`max_attempts` times; then it is `failed`. For LoRa a resend waits for the
next uplink at least RETRY_AFTER_S after the last send (the CMD_ACK may be
that uplink); on serial/BLE it happens after ACK_TIMEOUT_S. CONFIG and TIME
have no answer in the protocol: once handed to the radio they are `sent`,
final. Anything still open at its expiry is `expired`, counted and logged
(and visible through the API); a COMMAND (key 3) and a CONFIG (key 1) also
carry their expiry so a node refuses them late.

Freshness (SPEC §4): a TIME is filled in when sent, not when queued, and
answers an uplink: it names the counter of the node's latest uplink (key 2)
and goes out only while that uplink is younger than TIME_ANSWER_S (the node
takes it within messages.TIME_SLACK_S of sending that uplink). A TIME queued
while the node is quiet waits for its next uplink. Its value is the instant
the node takes it: on LoRa the uplink's end + the RX1 delay + the TIME's own
time on air (gateway/timesync.py `time_value`); on a wire, now.

Automatic time (SPEC §4, gateway/timesync.py): with a `TimeSync` the
gateway also answers on its own: a HELLO or an uplink saying the node's clock
is not set gets a TIME in that uplink's window, right after an ACK if one is
due and before the queued downlinks; a re-sync of a drifting clock goes only
in a window nothing else needs. Neither is stored: like ACKs they are made on
the fly (a lost one is made again at a later uplink); a queued TIME is
served by an automatic one sent in the same pass.

States: queued -> sent -> acked | failed | expired (queued -> expired too).

Limits: max_queued_per_node (16) open downlinks per node; LAST_RX_TTL_S = 1800 s; RETRY_AFTER_S =
5 s; ACK_TIMEOUT_S = 10 s; SWEEP_S = 1 s between expiry checks (none while no downlink is open); EARLY_MAX =
1024 copies remembered from before their frame's commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from gateway.model import Downlink, Reception, Record
from gateway.store import Store
from gateway.timesync import BOOT, DRIFT, NO_TIME, REPEAT, RX1_DELAY_S, TimeSync
from protocol import frame, lora
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.downlinks")

IMMEDIATE_TRANSPORTS = frozenset(("serial", "ble"))
# LoRa radio front-ends an operator configured (a packet forwarder, a radio bridge on a serial port set to
# `bridge`, a Basics Station): each reports what its own radio measured, and their copies of an uplink
# compete on RSSI for the answer, as a LoRaWAN network server's gateways do. Any other transport (a wire,
# BLE: a relay can claim any RSSI) only ever answers its own copies (path binding, issue 20).
LORA_RADIOS = frozenset(("udp", "bridge", "basicstation"))


def path_family(transport: str) -> str:
    """The transports whose copies of one uplink compete for its answer: every LoRa radio, else itself."""
    return "lora" if transport in LORA_RADIOS else transport


RETRY_AFTER_S = 5.0
ACK_TIMEOUT_S = 10.0
SWEEP_S = 1.0
# An immediate link's last committed uplink is the node's route for this long: two of the default
# 900 s report intervals. Older, a queued downlink waits for the node's next uplink (which renews it).
LAST_RX_TTL_S = 1800.0
EARLY_MAX = 1024  # copies heard before their first copy was committed, remembered for the path choice
TIME_ANSWER_S = m.TIME_SLACK_S / 2  # a TIME answers an uplink heard at most this long ago (SPEC §4)
OPEN = ("queued", "sent")
KINDS = (m.COMMAND, m.CONFIG, m.TIME)
FILL_MAX = 32  # filler frames per pass on a wire (serial, BLE); LoRa takes one per window


class Filler(Protocol):
    """Frames for a node's receive windows once nothing queued is due (gateway/fuota.py)."""

    def __call__(self) -> tuple[int, bytes] | None:
        """The next frame (frame type, raw body), taken; None when there is none now."""

    def put_back(self, made: tuple[int, bytes]) -> None:
        """A frame the call gave that the transport did not send: give it again first."""


class DownlinkRejected(ValueError):
    """An enqueue request that cannot be queued (unknown node, bad body, queue full)."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status  # the HTTP status the API answers with


class Downlinks:
    def __init__(
        self,
        store: Store,
        registry: Any,
        *,
        default_ttl_s: float = 3600.0,
        max_attempts: int = 3,
        max_queued_per_node: int = 16,
        collect_s: float = 0.2,
        ack_alarms: bool = True,
        clock: Callable[[], float] = time.time,
        timesync: TimeSync | None = None,
    ) -> None:
        """`timesync`: the automatic time policy (None: TIME only when queued); it should share `clock`."""
        self.store = store
        self.timesync = timesync
        self.cmd_ack_listeners: list[Callable[[Record], None]] = []  # told every CMD_ACK committed
        # node -> what fills its receive windows once nothing queued is due (gateway/fuota.py:
        # an update's fragments, never stored, made again if lost)
        self.fillers: dict[int, Filler] = {}
        self.registry = registry
        self.default_ttl_s = default_ttl_s
        self.max_attempts = max_attempts
        self.max_queued_per_node = max_queued_per_node
        self.collect_s = collect_s
        self.ack_alarms = ack_alarms
        self.clock = clock
        self._open: dict[int, list[Downlink]] = {}  # node -> open downlinks, oldest first
        self._last_sent: dict[int, float] = {}  # downlink id -> when it was last handed to a radio
        self._last_rx: dict[int, Reception] = {}  # node -> last reception on an immediate transport
        self._last_rx_at: dict[int, float] = {}  # node -> when (self.clock) that reception was committed
        self._answering: dict[int, tuple[int, float]] = {}  # node -> (uplink counter, when) a TIME may answer
        # node -> its latest radio uplink's receive window: (counter, answering, frames sent, refusal or "")
        self._windows: dict[int, tuple[int, bool, int, str]] = {}
        self._collect: dict[tuple[int, int], list[Reception]] = {}
        self._early: OrderedDict[tuple[int, int], list[Reception]] = OrderedDict()
        self._locks: dict[int, asyncio.Lock] = {}
        self._enqueue_locks: dict[int, asyncio.Lock] = {}  # bounded by the registry's nodes
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._queued = asyncio.Event()  # set when a downlink is queued: the sweep sleeps while none is open
        self.counts: dict[str, int] = {
            "sent": 0,
            "acked": 0,
            "failed": 0,
            "expired": 0,
            "acks_sent": 0,
            "acks_rerouted": 0,  # an alarm's ACK a radio refused, sent through another that heard it
            "rerouted": 0,  # another frame (a TIME, a queued downlink) a radio refused, sent through another
            "send_errors": 0,
            "unmatched_cmd_acks": 0,
            "path_switches_refused": 0,
            "time_auto": 0,
            "filled": 0,  # frames a filler gave (update fragments)
        }

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for dl in self.store.downlinks(states=OPEN, limit=1_000_000):
            self._open.setdefault(dl.node_id, []).append(dl)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="lumeau-downlinks")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *([self._sweeper] if self._sweeper else []), return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no send is in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------ the API calls these

    async def enqueue(self, node_id: int, mtype: int, body: dict[int, Any], ttl_s: float | None = None) -> Downlink:
        """Queue a COMMAND, CONFIG or TIME for a node; returns it with its id (= command id)."""
        if mtype not in KINDS:
            raise DownlinkRejected(f"message type {mtype} cannot be queued (COMMAND, CONFIG or TIME)")
        if self.registry.get(node_id) is None:
            raise DownlinkRejected(f"node {node_id:08x} is not in the registry", 404)
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= 30 * 86400:
            raise DownlinkRejected("ttl_s must be within 0..2592000 s (30 days)")
        # One enqueue per node at a time: the limit is checked before the store's await and the
        # downlink counted after it, so concurrent requests (API, MQTT) would all pass the check.
        async with self._enqueue_locks.setdefault(node_id, asyncio.Lock()):
            return await self._enqueue(node_id, mtype, body, ttl)

    async def _enqueue(self, node_id: int, mtype: int, body: dict[int, Any], ttl: float) -> Downlink:
        queue = self._open.setdefault(node_id, [])
        if len(queue) >= self.max_queued_per_node:
            raise DownlinkRejected(f"node {node_id:08x} already has {len(queue)} downlinks waiting", 429)
        now = self.clock()
        expires = now + ttl
        body = dict(body)
        if mtype == m.COMMAND:
            body[0] = 0  # a placeholder for the check: the store assigns the id
            if body.get(1) != m.OP_JOIN_GROUP:  # a join has no expiry on the air: it would not fit 51 B (SPEC)
                body[3] = int(expires)
        elif mtype == m.CONFIG:
            body[m.CF_EXPIRES] = int(expires)
        elif mtype == m.TIME:
            body = {0: int(now)}
        try:
            m.encode(mtype, body)  # the node would refuse it: better to say so now
        except m.MessageError as e:
            raise DownlinkRejected(str(e)) from None
        if mtype == m.COMMAND:
            del body[0]
        dl = await self.store.add_downlink(node_id, mtype, body, expires, now=now)
        queue.append(dl)
        self._queued.set()
        log.info("downlink queued", extra={"node": f"{node_id:08x}", "downlink": dl.id, "mtype": mtype})
        rx = self._route(node_id)
        if rx is not None and rx.path is not None:
            self._spawn(self._send_due(node_id, rx, None))
        return dl

    async def cancel(self, id_: int) -> Downlink | None:
        """Expire a queued downlink now (an operator changed their mind)."""
        for queue in self._open.values():
            for dl in queue:
                if dl.id == id_:
                    await self._close(dl, "expired")
                    return dl
        return None

    def pending(self, node_id: int) -> int:
        return len(self._open.get(node_id, ()))

    def depth(self) -> int:
        return sum(len(q) for q in self._open.values())

    # ------------------------------------------------------------ the pipeline calls these

    def on_uplink(self, record: Record, reception: Reception) -> None:
        """A record was committed: settle a CMD_ACK, answer an alarm, send what is due."""
        node_id = record.node_id
        if reception.transport in IMMEDIATE_TRANSPORTS:
            self._last_rx[node_id] = reception
            self._last_rx_at[node_id] = self.clock()
        elif node_id in self._last_rx:  # the node now speaks over the radio: the wire/BLE route is stale
            del self._last_rx[node_id]
            self._last_rx_at.pop(node_id, None)
        if record.mtype == m.CMD_ACK:
            self._spawn(self._settle_cmd_ack(record))
            for listener in self.cmd_ack_listeners:  # a multicast's answers (gateway/groups.py)
                listener(record)
        ack = self.ack_alarms and record.alarm
        auto = None
        ts = self.timesync
        if ts is not None:
            wire = reception.transport in IMMEDIATE_TRANSPORTS
            # the uplink's time on air dates a STATUS's node time (its start); nothing else needs it
            air = ts.airtime_s(len(reception.raw), reception.sf) if record.mtype == m.STATUS and not wire else 0.0
            auto = ts.on_uplink(node_id, record.mtype, record.body, reception.rx_time, air, wire, reception.sf)
        radio = reception.transport not in IMMEDIATE_TRANSPORTS
        if (
            not ack and auto is None and not self._open.get(node_id) and node_id not in self.fillers
        ) or reception.path is None:
            if radio:
                self._windows[node_id] = (record.counter, False, 0, "")
            if self._early:  # the copies heard before this commit choose no path now: let them go
                self._early.pop((node_id, record.counter), None)
            return  # the common case: nothing to say
        if radio:
            self._windows[node_id] = (record.counter, True, 0, "")
        key = (node_id, record.counter)
        early = self._early.pop(key, [])
        if early:
            early = self._same_transport(reception, early)
        if reception.transport not in IMMEDIATE_TRANSPORTS and self.collect_s > 0:
            self._collect[key] = [reception, *early]
        self._spawn(self._answer(record, reception, ack, auto))

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        if reception.path is None:
            return
        key = (node_id, counter)
        copies = self._collect.get(key)
        if copies is not None:
            if path_family(copies[0].transport) == path_family(reception.transport):
                copies.append(reception)
            else:  # a copy on another transport never takes the answer (path binding)
                self.counts["path_switches_refused"] += 1
            return
        # heard again before the first copy's commit: remembered until on_uplink (bounded)
        if len(self._early) >= EARLY_MAX:
            self._early.popitem(last=False)
        self._early.setdefault(key, []).append(reception)

    def _same_transport(self, committed: Reception, copies: list[Reception]) -> list[Reception]:
        family = path_family(committed.transport)
        same = [r for r in copies if path_family(r.transport) == family]
        self.counts["path_switches_refused"] += len(copies) - len(same)
        return same

    def _route(self, node_id: int) -> Reception | None:
        """The node's immediate link (serial, BLE) if it spoke over it within LAST_RX_TTL_S, else None."""
        rx = self._last_rx.get(node_id)
        if rx is None:
            return None
        if self.clock() - self._last_rx_at.get(node_id, 0.0) > LAST_RX_TTL_S:
            del self._last_rx[node_id]
            self._last_rx_at.pop(node_id, None)
            return None
        return rx

    # ------------------------------------------------------------ sending

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("downlink task failed: %r", t.exception(), exc_info=t.exception())

    async def _answer(self, record: Record, reception: Reception, ack: bool, auto: str | None = None) -> None:
        self._note_uplink(record)
        key = (record.node_id, record.counter)
        others: list[Reception] = []
        if key in self._collect:
            await asyncio.sleep(self.collect_s)
            copies = self._collect.pop(key)  # all on the committed copy's transport (on_duplicate)
            ranked = sorted(
                (r for r in copies if r.path is not None),
                key=lambda r: (r.rssi if r.rssi is not None else -1e9, r.snr if r.snr is not None else -1e9),
                reverse=True,
            )
            reception, others = ranked[0], ranked[1:]
        try:
            await self._send_due(record.node_id, reception, record.counter if ack else None, auto, others)
        finally:
            w = self._windows.get(record.node_id)
            if w is not None and w[0] == record.counter:
                self._windows[record.node_id] = (w[0], False, w[2], w[3])

    def window(self, node_id: int) -> dict[str, Any] | None:
        """The node's latest radio uplink's receive window as the gateway dealt with it (None: none
        since the gateway started): its counter, whether the answer is still being made, the frames
        handed to a radio for it and why the last refused one was refused (GET /nodes/{id}/window:
        "why did my command not go", and how the simulator's live link knows the gateway is done)."""
        w = self._windows.get(node_id)
        if w is None:
            return None
        return {"counter": w[0], "answering": w[1], "sent": w[2], "refused": w[3] or None}

    async def _send_due(
        self,
        node_id: int,
        rx: Reception,
        ack_counter: int | None,
        auto: str | None = None,
        others: list[Reception] | None = None,
    ) -> None:
        """Send what is due to the node through `rx`; a frame that `rx` refuses is tried through
        `others` (the uplink's other copies on the same transport, best first: another forwarder
        whose duty cycle or schedule allows it): an alarm's ACK, as the alarm is retried otherwise,
        an automatic TIME, as a clock near the threshold cannot wait for three more uplinks, and
        the first queued downlink."""
        lock = self._locks.setdefault(node_id, asyncio.Lock())
        async with lock:
            entry = self.registry.get(node_id)
            if entry is None:
                return
            immediate = rx.transport in IMMEDIATE_TRANSPORTS
            budget = None if immediate else 1  # LoRa: one frame per receive window
            if ack_counter is not None:
                # "pending" keeps the node listening for that many more frames right after
                # this one; on LoRa the rest cannot follow in this window, so say none.
                pending = min(255, len(self._due(node_id, rx, immediate))) if immediate else 0
                for i, path_rx in enumerate([rx, *(others or ())]):
                    if await self._send(entry, m.ACK, {0: ack_counter, 1: pending}, path_rx):
                        self.counts["acks_sent"] += 1
                        if i:
                            self.counts["acks_rerouted"] += 1
                        rx = path_rx  # what follows goes the way that took the ACK
                        if budget is not None:
                            budget -= 1
                        break
            timed = False  # an automatic TIME went: a queued one is served by it
            if auto in (BOOT, NO_TIME) and (budget is None or budget > 0):
                took = await self._auto_time(entry, rx, auto, others)
                timed = took is not None
                if took is not None:
                    rx = took
                    if budget is not None:
                        budget -= 1
            for dl in self._due(node_id, rx, immediate):
                if budget is not None and budget <= 0:
                    break
                if dl.mtype == m.TIME and timed:
                    await self._close(dl, "sent")
                    continue
                if budget is not None:
                    budget -= 1
                body = dict(dl.body)
                if dl.mtype == m.TIME:
                    time_body = self._time_body(node_id, rx)
                    if time_body is None:  # no uplink of now to answer: it waits for the next one
                        if budget is not None:
                            budget += 1
                        continue
                    body = time_body[0]
                    timed = True
                # a queued TIME's value is by rx's clock: another radio dated the same uplink's end
                took = await self._send_first(entry, dl.mtype, body, [rx] if immediate else [rx, *(others or ())])
                if took is None:
                    break  # the path is down: the rest waits too
                rx = took
                dl.attempts += 1
                self._last_sent[dl.id] = self.clock()
                self.counts["sent"] += 1
                if dl.mtype == m.COMMAND:
                    # The CMD_ACK can settle the command while the send still waits for the
                    # transport (a forwarder's TX_ACK): never overwrite a final state.
                    if dl.state in ("queued", "sent"):
                        dl.state = "sent"
                        await self.store.update_downlink(dl)
                else:
                    await self._close(dl, "sent")
            if auto in (DRIFT, REPEAT) and not timed and (budget is None or budget > 0):
                took = await self._auto_time(entry, rx, auto, others)
                if took is not None:
                    rx = took
                    if budget is not None:
                        budget -= 1
            fill = self.fillers.get(node_id)
            for _ in range(FILL_MAX):  # on LoRa the window's one frame, when nothing else took it
                if fill is None or (budget is not None and budget <= 0):
                    break
                made = fill()
                if made is None:
                    break
                if not await self._send(entry, made[0], {}, rx, made[1]):
                    # the transport refused it (the band's duty cycle closed, no route): it
                    # goes first in a later window, not lost to the node
                    fill.put_back(made)
                    break
                self.counts["filled"] += 1
                if budget is not None:
                    budget -= 1

    async def _send_first(
        self, entry: Any, mtype: int, body: dict[int, Any], paths: list[Reception]
    ) -> Reception | None:
        """Send through the first of `paths` that takes the frame; the one that did, or None."""
        for i, path_rx in enumerate(paths):
            if await self._send(entry, mtype, body, path_rx):
                if i:
                    self.counts["rerouted"] += 1
                return path_rx
        return None

    async def _auto_time(
        self, entry: Any, rx: Reception, reason: str, others: list[Reception] | None = None
    ) -> Reception | None:
        """Send an automatic TIME answering the node's latest uplink, through `rx` or, refused, the
        next of `others`; tell the policy when it went. The copy that took it, or None."""
        ts = self.timesync
        if ts is None:
            return None
        for i, path_rx in enumerate([rx, *(others or ())]):
            made = self._time_body(entry.node_id, path_rx)  # the value: by that radio's clock
            if made is None:
                return None
            body, set_at, air = made
            if await self._send(entry, m.TIME, body, path_rx):
                if i:
                    self.counts["rerouted"] += 1
                self.counts["time_auto"] += 1
                ts.sent(entry.node_id, reason, set_at, air)
                return path_rx
        ts.failed(entry.node_id, reason, rx.rx_time)
        return None

    def _note_uplink(self, record: Record) -> None:
        """Remember the node's latest uplink: the one a TIME answers (SPEC §4, "Freshness")."""
        last = self._answering.get(record.node_id)
        if last is None or record.counter >= last[0] or self.clock() - last[1] > TIME_ANSWER_S:
            self._answering[record.node_id] = (record.counter, self.clock())

    def _time_body(self, node_id: int, rx: Reception) -> tuple[dict[int, int], float, float] | None:
        """(TIME body, the instant it holds, its time on air) answering the node's latest uplink.

        None when that uplink is not fresh. On LoRa the value is the instant the node
        takes the frame (SPEC §4 "Automatic time"): the uplink's end + RX1 delay + the
        TIME's own time on air (its length depends on the value: computed until stable);
        on a wire (or without the uplink's SF) it is now."""
        last = self._answering.get(node_id)
        now = self.clock()
        if last is None or now - last[1] > TIME_ANSWER_S:
            return None

        answers = last[0]

        def body(v: float) -> dict[int, int]:
            return {m.T_UNIX: int(v), m.T_MS: int(v * 1000) % 1000, m.T_ANSWERS: answers}

        if rx.transport in IMMEDIATE_TRANSPORTS or rx.sf is None:
            return body(now), now, 0.0
        # LoRa: on the radio's time (a forwarder's GPS time, a bridge's, else this host's at arrival)
        ts = self.timesync
        delay = ts.rx1_delay_s if ts is not None else RX1_DELAY_S
        bw = ts.bw_hz if ts is not None else 125000
        air = 0.0
        for _ in range(4):  # the value's encoding can change the length, and the length the time on air
            v = rx.rx_time + delay + air
            n = frame.HEADER_LEN + len(m.encode(m.TIME, body(v))) + frame.MIC_LEN
            try:
                a = lora.airtime_ms(n, rx.sf, bw) / 1000.0
            except ValueError:  # not a LoRa setting
                a = 0.0
            if a == air:
                break
            air = a
        v = rx.rx_time + delay + air
        return body(v), v, air

    def _due(self, node_id: int, rx: Reception, immediate: bool) -> list[Downlink]:
        now = self.clock()
        wait = ACK_TIMEOUT_S if immediate else RETRY_AFTER_S
        out = []
        for dl in self._open.get(node_id, ()):
            if dl.expires <= now:
                continue
            if dl.state == "queued":
                out.append(dl)
            elif dl.state == "sent" and dl.attempts < self.max_attempts:
                if now - self._last_sent.get(dl.id, 0.0) >= wait:
                    out.append(dl)
        return out

    async def _send(
        self, entry: Any, mtype: int, body: dict[int, Any], rx: Reception, raw_body: bytes | None = None
    ) -> bool:
        path = rx.path
        if path is None:
            return False
        try:
            counter = await self.store.next_downlink_counter(entry.node_id)  # committed first
            plain = m.encode(mtype, body) if raw_body is None else raw_body
            raw = frame.seal(entry.keys, mtype, counter, plain)
            await path.send_downlink(raw, rx)
        except Exception as e:  # the transport's DownlinkError, a closed store, a vanished port
            self.counts["send_errors"] += 1
            self._note_window(entry.node_id, rx, 0, str(getattr(e, "reason", "")) or type(e).__name__)
            log.warning(
                "downlink not sent: %s",
                e,
                extra={"node": f"{entry.node_id:08x}", "mtype": mtype, "transport": rx.transport},
            )
            return False
        self._note_window(entry.node_id, rx, 1, "")
        return True

    def _note_window(self, node_id: int, rx: Reception, sent: int, refused: str) -> None:
        """Count a frame sent (or refused) in the receive window being answered, if one is."""
        w = self._windows.get(node_id)
        if w is not None and w[1] and rx.transport not in IMMEDIATE_TRANSPORTS:
            self._windows[node_id] = (w[0], True, w[2] + sent, refused or w[3])

    async def _settle_cmd_ack(self, record: Record) -> None:
        command_id = record.body.get(0)
        for dl in self._open.get(record.node_id, ()):
            if dl.mtype == m.COMMAND and dl.command_id == command_id:
                dl.result = record.body.get(1)
                await self._close(dl, "acked")
                return
        self.counts["unmatched_cmd_acks"] += 1  # a repeat, or an expired command answered late

    async def _close(self, dl: Downlink, state: str) -> None:
        dl.state = state
        queue = self._open.get(dl.node_id)
        if queue is not None and dl in queue:
            queue.remove(dl)
            if not queue:
                del self._open[dl.node_id]
        self._last_sent.pop(dl.id, None)
        if state in self.counts:
            self.counts[state] += 1
        await self.store.update_downlink(dl)
        if state in ("expired", "failed"):
            log.warning(
                "downlink %s",
                state,
                extra={"node": f"{dl.node_id:08x}", "downlink": dl.id, "mtype": dl.mtype, "attempts": dl.attempts},
            )

    # ------------------------------------------------------------ expiry and retries without uplinks

    async def sweep(self) -> None:
        """Expire what is past its time, fail COMMANDs out of attempts, resend on always-on links."""
        now = self.clock()
        for node_id in list(self._open):
            for dl in list(self._open.get(node_id, ())):
                if dl.expires <= now:
                    await self._close(dl, "expired")
                elif (
                    dl.state == "sent"
                    and dl.attempts >= self.max_attempts
                    and now - self._last_sent.get(dl.id, 0.0) >= ACK_TIMEOUT_S
                ):
                    await self._close(dl, "failed")
            rx = self._route(node_id)
            if rx is not None and self._open.get(node_id) and self._due(node_id, rx, True):
                await self._send_due(node_id, rx, None)

    async def _sweep_loop(self) -> None:
        while True:
            if not self._open:  # nothing to expire or resend: no timer until something is queued
                self._queued.clear()
                await self._queued.wait()
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("downlink sweep failed")
