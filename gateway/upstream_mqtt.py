"""The MQTT upstream: records from the store to an MQTT broker (QoS 1), commands back. aiomqtt.

The same promise as the HTTP upstream (gateway/upstream.py), whose structure
this follows: a record leaves the store (`store.delete`) only after the
broker's PUBACK for every message that carries it; batches leave oldest
first, one at a time, on one connection, so each node's records arrive in
the order they were stored (MQTT keeps the order of QoS 1 messages of one
connection). A connection lost with messages in flight loses nothing: the
batch stays queued and goes again, whole, on the next connection (QoS 1 is
at least once: a receiver drops a repeat by the record's id, or, on
ThingsBoard, by the same timestamp and key overwriting itself).

What goes out, and what comes in, is gateway/mqtt_shapes.py (sans-I/O):
ThingsBoard's Gateway MQTT API or plain topics. Commands (a ThingsBoard RPC,
a plain command message) become downlinks through the local API's own
path, `api.queue_command` (POST /nodes/{id}/commands calls it too): one
validation (op catalogue, argument ranges, queue limits), one expiry, one
record of every downlink (the store; GET /commands shows them). The node's
CMD_ACK, when its record is delivered, is published as the answer (an RPC
reply, or on the plain reply topic) in the same batch; a command the queue
expires or fails without one is answered so ("success": false, its state).

Connection: one client, clean session (nothing is left at the broker between
connections: the store is the queue). Lost or refused: reconnect with
exponential backoff and equal jitter (1 s doubling to 60 s, as the HTTP
upstream). A refused CONNECT (bad user name or password, not authorised) is
a configuration problem: logged as an error naming the keys to check (never
their values) and retried with the same backoff; records stay queued.
A PUBACK not back within `timeout` s counts as a lost connection.

Limits: commands waiting for their CMD_ACK are remembered in memory
(PENDING_MAX, oldest forgotten first): after a gateway restart a CMD_ACK is
still delivered as telemetry, but no RPC reply is made for it (ThingsBoard
times the RPC out; the command's state is in the local API). MQTT 3.1.1
has no refusal per message: a broker that denies a publish by ACL still
acknowledges it (mosquitto does), and such records count as delivered.

One file (over 600 lines): the connection, the batches and the commands share one client and session.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gateway import mqtt_shapes as ms
from gateway.api import downlink_json, queue_command
from gateway.downlinks import DownlinkRejected
from gateway.logs import RateLimiter
from gateway.model import Downlink, Record
from gateway.upstream import BatchStore, StoreDrain
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.upstream_mqtt")

DEFAULT_BATCH_SIZE = 500
DEFAULT_MAX_AGE_S = 1.0  # a publish costs the broker a small packet, not a request and an fsync: wait less
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
POLL_S = 1.0
INFLIGHT = 100  # QoS 1 messages unacknowledged at once on the wire (paho queues the rest in order)
# publishes awaiting their PUBACK at once: aiomqtt walks all of its pending calls on every call, so a
# whole batch at once costs its square (bench/README.md, upstream_mqtt.py: 32 halves the CPU of 500)
WINDOW = 32
PENDING_MAX = 10_000  # commands remembered for their CMD_ACK's reply
# commands being handled at once; more are dropped (counted, logged): a flood on the command topic
# costs a bounded amount of memory and replies. INCOMING_MAX: messages aiomqtt holds before it drops.
HANDLERS_MAX = 64
INCOMING_MAX = 1000
PENDING_SWEEP_S = 1.0  # how often commands waiting for their CMD_ACK are looked at (expired? failed?)
GOODBYE_S = 2.0  # at a clean stop: time for "offline" / device disconnects
# CONNACK codes that mean "your credentials": MQTT 3.1.1 4 and 5, MQTT 5 0x86 and 0x87
REFUSED_CREDENTIALS = frozenset((4, 5, 0x86, 0x87))


def tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """A client TLS context: the system's CAs or `ca_file`; a client certificate when given.
    Raises OSError or ssl.SSLError for a file that cannot be used (config.py names the key)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


class MqttUpstream(StoreDrain):
    """Sends what the store holds to an MQTT broker; `await start()`, `notify()` after appends, `await stop()`."""

    def __init__(
        self,
        store: BatchStore,
        host: str,
        port: int = 1883,
        *,
        shape: str = ms.PLAIN,
        site: str = "gateway",
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 60,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_age: float = DEFAULT_MAX_AGE_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        max_payload: int = ms.TB_DEFAULT_MAX_PAYLOAD,
        node_info: Callable[[int], Any] | None = None,
        registry: Any = None,
        downlinks: Any = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`node_info(node_id)`: the registry entry (kind, name, site, ...) or None (default:
        `registry.get`); `registry` and `downlinks` (gateway.downlinks.Downlinks): what commands
        are queued through, as the local API queues them (None: commands refused)."""
        if shape not in ms.SHAPES:
            raise ValueError(f"mqtt shape must be one of {', '.join(ms.SHAPES)}, not {shape!r}")
        why = ms.check_site(site)
        if why:
            raise ValueError(f"mqtt site: {why}")
        if batch_size < 1 or max_age < 0 or timeout <= 0 or not 0 < backoff_base <= backoff_max or max_payload < 256:
            raise ValueError("mqtt limits must be positive (and backoff_base <= backoff_max, max_payload >= 256)")
        self.store = store
        self._tell_down: Callable[[bool], Any] | None = getattr(store, "upstream_down", None)
        self.host = host
        self.port = port
        self.shape = shape
        self.site = site
        self.client_id = client_id or f"lumeau-{site}"
        self._username = username
        self._password = password
        self._tls = tls
        self.keepalive = keepalive
        self.batch_size = batch_size
        self.max_age = max_age
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_payload = max_payload
        self.registry = registry
        self.node_info = node_info or (registry.get if registry is not None else (lambda _n: None))
        self.downlinks = downlinks
        self.clock = clock
        self.monotonic = monotonic
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._flush = False
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._pending_since: float | None = None
        self._after = 0  # every record up to this seq is delivered or quarantined (its delete may be pending)
        self._rewind = False
        self._deleting: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._devices: set[int] = set()  # ThingsBoard devices connected on this connection
        # (node, command id) -> where the answer goes, and the downlink (Downlinks updates its state)
        self._pending: OrderedDict[tuple[int, int], tuple[ms.ReplyTo, Downlink]] = OrderedDict()
        self._limiter = RateLimiter(clock=monotonic)
        self._attempt = 0
        # figures for /metrics (the HTTP upstream's names where they mean the same)
        self.state = "idle"  # idle | connecting | waiting | sending | backoff
        self.connected = False
        self.connections = 0
        self.records_sent = 0
        self.requests = 0  # messages published
        self.responses: dict[str, int] = {}  # "puback", "error", "refused"
        self.retries = 0
        self.quarantined_records = 0
        self.quarantined_batches = 0
        self.consecutive_failures = 0
        self.last_success: float | None = None
        self.last_error = ""
        self.batch_latency_last = 0.0
        self.batch_latency_sum = 0.0
        self.batches = 0
        self.commands_in = 0
        self.commands_refused = 0
        self.commands_dropped = 0
        self.replies = 0

    def __repr__(self) -> str:
        return f"MqttUpstream({self.host}:{self.port}, {self.shape}, password={'<set>' if self._password else None})"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self._tls else 'mqtt'}://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lumeau-upstream-mqtt")

    async def stop(self) -> None:
        """Stop now: say goodbye if connected (plain: "offline"; ThingsBoard: disconnect the devices),
        then drop the connection. A batch in flight stays in the store and goes next time."""
        client = self._client
        if client is not None and self.connected:
            try:
                await asyncio.wait_for(self._goodbye(client), GOODBYE_S)
            except (TimeoutError, aiomqtt.MqttError):
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.state = "idle"
        self.connected = False

    def notify(self) -> None:
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        return {
            **super().stats(),
            "connected": self.connected,
            "connections": self.connections,
            "commands_in": self.commands_in,
            "commands_refused": self.commands_refused,
            "commands_dropped": self.commands_dropped,
            "replies": self.replies,
        }

    # -- connections -------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self.shape == ms.PLAIN:
            off = ms.plain_status(self.site, False)
            will = aiomqtt.Will(off.topic, off.payload, qos=1, retain=True)
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            will=will,
            clean_session=True,
            keepalive=self.keepalive,
            timeout=self.timeout,
            tls_context=self._tls,
            max_inflight_messages=INFLIGHT,
            max_concurrent_outgoing_calls=WINDOW,
            max_queued_incoming_messages=INCOMING_MAX,
            logger=logging.getLogger("lumeau.gateway.upstream_mqtt.client"),
        )
        client.pending_calls_threshold = 1 << 30  # a batch in flight is many pending publishes by design
        return client

    async def _run(self) -> None:
        self._attempt = 0  # failures since the last connection that worked: the backoff's exponent
        while True:
            self.state = "connecting"
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except aiomqtt.MqttError as e:
                self._failed(e)
            except Exception as e:  # a bug or the store failing under us: never stop delivering for good
                self.last_error = f"{type(e).__name__}: {e}"
                if self._limiter.allow("internal_error")[0]:
                    log.exception("MQTT upstream failed, restarting it")
            finally:
                self.connected = False
                self._client = None
                for t in list(self._handlers):
                    t.cancel()
            self.retries += 1
            self.consecutive_failures += 1
            if self.consecutive_failures == 1 and self._tell_down is not None:
                self._tell_down(True)  # the store holds fewer records in memory meanwhile (Store.upstream_down)
            delay = self._backoff(self._attempt)
            self._attempt += 1
            self.state = "backoff"
            await asyncio.sleep(delay)

    def _failed(self, e: BaseException) -> None:
        rc = getattr(e, "rc", None)
        code = getattr(rc, "value", rc)
        if isinstance(e, MqttConnectError) and code in REFUSED_CREDENTIALS:
            self._count("refused")
            self.last_error = f"broker refused the connection: {e}"
            if self._limiter.allow("refused")[0]:
                log.error(
                    "MQTT broker refused the connection (check mqtt.username, mqtt.password or the client "
                    "certificate); records stay queued: %s",
                    e,
                    extra={"broker": self.url},
                )
            return
        self._count("error")
        self.last_error = f"{type(e).__name__}: {e}"
        if self._limiter.allow("lost")[0]:
            log.warning("MQTT broker unavailable, reconnecting: %s", e, extra={"broker": self.url})

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 30))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    async def _connection(self) -> None:
        client = self._new_client()
        async with client:
            self._client = client
            self.connected = True
            self.connections += 1
            self._attempt = 0
            if self.consecutive_failures and self._tell_down is not None:
                self._tell_down(False)
            self.consecutive_failures = 0
            log.info("connected to the MQTT broker", extra={"broker": self.url, "shape": self.shape})
            try:
                await self._session(client)
            except BaseExceptionGroup as eg:  # the TaskGroup's: the first real failure is the session's
                first = next((e for e in eg.exceptions if not isinstance(e, asyncio.CancelledError)), None)
                if first is None:
                    raise asyncio.CancelledError from None
                raise first from None

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: announce, subscribe to commands, then send and receive until it fails."""
        self._devices = set()
        if self.shape == ms.PLAIN:
            await client.subscribe(ms.plain_command_filter(self.site), qos=1)
            await self._publish(client, [ms.plain_status(self.site, True)])
        else:
            await client.subscribe(ms.TB_RPC, qos=1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(client))
            tg.create_task(self._send_loop(client))
            tg.create_task(self._watch_pending(client))

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        if self.shape == ms.PLAIN:
            await self._publish(client, [ms.plain_status(self.site, False)])
        else:
            await self._publish(client, [ms.tb_disconnect(n) for n in sorted(self._devices)])

    async def _publish(self, client: aiomqtt.Client, pubs: Sequence[ms.Publish]) -> None:
        """Publish in order at QoS 1; returns once the broker acknowledged every one (MqttError otherwise)."""
        if not pubs:
            return
        self.requests += len(pubs)
        # paho writes them in call order; each await returns at its PUBACK. One deadline for them all
        # (aiomqtt's own, per message, would cost a timer task per message: most of the CPU per record)
        waits = [client.publish(p.topic, p.payload, qos=1, retain=p.retain, timeout=math.inf) for p in pubs]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.timeout)
        except TimeoutError:
            raise aiomqtt.MqttError(f"no PUBACK within {self.timeout:g} s") from None
        self.responses["puback"] = self.responses.get("puback", 0) + len(pubs)

    # -- sending -----------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        draining = False
        while True:
            if self._rewind:
                self._rewind = False
                self._after = 0
            batch = self.store.next_batch(self.batch_size, self._after, named=False)
            if not batch:
                self.state = "idle"
                self._pending_since = None
                draining = False
                await self._sleep(POLL_S)
                continue
            full = len(batch) >= self.batch_size
            wait = self._batch_wait(batch, draining)
            if wait > 0:
                self.state = "waiting"
                await self._sleep(min(wait, POLL_S))
                continue
            started = self.monotonic()
            self.state = "sending"
            await self._deliver(client, batch)
            self._after = max(self._after, batch[-1][0])
            latency = self.monotonic() - started
            self.batches += 1
            self.batch_latency_last = latency
            self.batch_latency_sum += latency
            self._pending_since = None
            draining = full

    async def _deliver(self, client: aiomqtt.Client, batch: list[tuple[int, Record]]) -> None:
        """Publish `batch`; delete it once every message is acknowledged. A record that cannot be
        encoded is quarantined alone. MqttError (the connection failed): nothing is deleted."""
        good = batch
        try:
            pubs, answered = self._encode([r for _, r in good], announce=True)
        except (TypeError, ValueError):  # find the record(s) that cannot be encoded; the rest goes
            good = []
            for seq, r in batch:
                try:
                    self._encode([r])
                    good.append((seq, r))
                except (TypeError, ValueError) as e:
                    await self._quarantine([seq], f"cannot encode: {e}")
            if not good:
                return
            pubs, answered = self._encode([r for _, r in good], announce=True)
        await self._publish(client, pubs)
        for key in answered:
            self._pending.pop(key, None)
        self.replies += len(answered)
        self._delete([s for s, _ in good])
        self.records_sent += len(good)
        self.last_success = self.clock()

    def _encode(self, records: list[Record], announce: bool = False) -> tuple[list[ms.Publish], list[tuple[int, int]]]:
        """The messages for `records`, in order, and the commands their CMD_ACKs answer."""
        answered: list[tuple[int, int]] = []
        replies: list[ms.Publish] = []
        for r in records:
            cid = ms.command_id_of(r)
            if cid is None:
                continue
            pending = self._pending.get((r.node_id, cid))
            if pending is None:
                continue
            reply = pending[0]
            ans = ms.ack_answer(r)
            if reply.shape == ms.THINGSBOARD:
                replies.append(ms.tb_rpc_reply(reply, ans))
            else:
                replies.append(ms.plain_reply(reply, self.site, {"state": "acked", **ans}))
            answered.append((r.node_id, cid))
        if self.shape == ms.PLAIN:
            return [ms.plain_record(self.site, r) for r in records] + replies, answered
        out: list[ms.Publish] = []
        attrs: dict[int, dict[str, Any]] = {}
        if announce:
            for r in records:
                if r.node_id not in self._devices and r.node_id not in attrs:
                    entry = self.node_info(r.node_id)
                    out.append(ms.tb_connect(r.node_id, getattr(entry, "kind", "") or "default"))
                    attrs[r.node_id] = _registry_attributes(entry)
        for r in records:
            if r.mtype == m.HELLO:
                attrs.setdefault(r.node_id, {}).update(ms.tb_hello_attributes(r))
        if attrs:
            out.append(ms.tb_attributes(attrs))
        telemetry = [r for r in records if r.mtype != m.HELLO]
        out += ms.tb_telemetry(telemetry, self.max_payload)
        if announce:
            self._devices.update(r.node_id for r in records)
        return out + replies, answered

    async def _quarantine(self, seqs: list[int], text: str) -> None:
        await self.store.quarantine(seqs, 0, text)
        self.quarantined_records += len(seqs)
        self.quarantined_batches += 1
        log.error("record cannot be published, quarantined", extra={"records": len(seqs), "response": text[:200]})

    # -- receiving: commands -----------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Commands in; ends with MqttError when the connection is lost (which ends the session)."""
        async for msg in client.messages:
            if len(self._handlers) >= HANDLERS_MAX:
                self.commands_dropped += 1
                if self._limiter.allow("commands_dropped")[0]:
                    log.warning(
                        "MQTT commands arrive faster than they are handled: dropped",
                        extra={"topic": msg.topic.value[:120]},
                    )
                continue
            payload = msg.payload if isinstance(msg.payload, (bytes, bytearray)) else str(msg.payload or "").encode()
            t = asyncio.ensure_future(self._command(client, msg.topic.value, bytes(payload)))
            self._handlers.add(t)
            t.add_done_callback(self._handled)

    def _handled(self, t: asyncio.Task) -> None:
        self._handlers.discard(t)
        if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), aiomqtt.MqttError):
            log.error("MQTT command handling failed: %r", t.exception(), exc_info=t.exception())

    async def _command(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        """One RPC or command message: queue it as the local API would, answer what can be answered now."""
        if self.shape == ms.THINGSBOARD and topic != ms.TB_RPC:
            return  # attribute updates and the like: not commands
        try:
            if self.shape == ms.THINGSBOARD:
                rpc = ms.parse_tb_rpc(payload)
                if rpc is None:
                    return  # a reply: our own, echoed by a plain broker
                cmd = rpc
            else:
                cmd = ms.parse_plain_command(self.site, topic, payload)
        except ms.RequestError as e:
            self.commands_in += 1
            await self._refused(client, topic, e)
            return
        self.commands_in += 1
        try:
            await self._queue(client, cmd)
        except ms.RequestError as e:
            await self._refused(client, topic, e)

    async def _refused(self, client: aiomqtt.Client, topic: str, e: ms.RequestError) -> None:
        self.commands_refused += 1
        if self._limiter.allow("command_refused")[0]:
            log.warning("MQTT command refused: %s", e, extra={"topic": topic[:120]})
        if e.reply is not None:
            await self._answer(client, e.reply, {"success": False, "error": str(e)})

    async def _queue(self, client: aiomqtt.Client, cmd: ms.Command) -> None:
        if self.downlinks is None or self.registry is None:
            raise ms.RequestError("this gateway takes no commands over MQTT", cmd.reply)
        try:  # the local API's own path: its checks, the downlink queue's limits and expiry
            dl = await queue_command(self.registry, self.downlinks, cmd.node_id, cmd.doc)
        except DownlinkRejected as e:
            why = f"unknown device: {e}" if e.status == 404 else str(e)
            raise ms.RequestError(why, cmd.reply) from None
        log.info("MQTT command queued", extra={"node": f"{cmd.node_id:08x}", "downlink": dl.id, "mtype": dl.mtype})
        if dl.mtype == m.COMMAND and dl.command_id is not None:
            self._pending[(cmd.node_id, dl.command_id)] = (cmd.reply, dl)
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
            if cmd.reply.shape == ms.PLAIN:  # ThingsBoard takes one reply per RPC: the CMD_ACK's
                await self._answer(client, cmd.reply, {"state": "queued", "command": downlink_json(dl)})
        else:  # CONFIG and TIME have no answer from the node: queued is all there is to say
            await self._answer(client, cmd.reply, {"success": True, "state": "queued", "command": downlink_json(dl)})

    async def _answer(self, client: aiomqtt.Client, reply: ms.ReplyTo, data: dict[str, Any]) -> None:
        if reply.shape == ms.THINGSBOARD:
            pub = ms.tb_rpc_reply(reply, data)
        else:
            pub = ms.plain_reply(reply, self.site, data)
        await self._publish(client, [pub])
        self.replies += 1

    async def _watch_pending(self, client: aiomqtt.Client) -> None:
        """A command that expired or failed without a CMD_ACK is answered so (the downlink queue
        decides: its expiry, its attempts), rather than left for the platform to time out."""
        while True:
            await asyncio.sleep(PENDING_SWEEP_S)
            for key, (reply, dl) in list(self._pending.items()):
                if dl.state in ("expired", "failed"):
                    await self._answer(
                        client,
                        reply,
                        {"success": False, "state": dl.state, "error": f"the command {dl.state} without an answer"},
                    )
                    self._pending.pop(key, None)

    def _count(self, key: str) -> None:
        self.responses[key] = self.responses.get(key, 0) + 1


def _registry_attributes(entry: Any) -> dict[str, Any]:
    """What the registry knows of a node, for ThingsBoard client attributes (never its key)."""
    if entry is None:
        return {}
    out: dict[str, Any] = {"kind": entry.kind}
    for name in ("name", "site", "firmware", "lat", "lon"):
        v = getattr(entry, name, None)
        if v not in (None, ""):
            out[name] = v
    return out
