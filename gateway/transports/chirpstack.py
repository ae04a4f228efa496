"""ChirpStack v4 southbound: nodes behind a city's existing LoRaWAN network server.

The gateway is an application of ChirpStack's MQTT integration (ChirpStack's
documentation, "Integrations > MQTT" and "Event types"):

  application/{application_id}/device/{dev_eui}/event/up     uplink events (JSON), subscribed
  application/{application_id}/device/{dev_eui}/event/join   join events: the device's FCnt restarts
  application/{application_id}/device/{dev_eui}/command/down downlinks we publish:
      {"devEui": "...", "confirmed": false, "fPort": 40, "data": "<base64>"}

What the payload is (SPEC §14, protocol/lorawan.py): the FPort is the Lumeau
frame's vt byte, the FRMPayload the frame without vt and node id, and the
DevEUI names the node through the registry's `dev_eui`. Each uplink event
becomes the whole frame again and goes to the unchanged pipeline, which
verifies the node's own MIC and Lumeau counter end to end: ChirpStack holds
the LoRaWAN session keys, so they protect the air, not the gateway from a
compromised network server. Reception metadata: the rxInfo with the best
RSSI (its SNR and gatewayId, as "chirpstack:<gatewayId>"), txInfo's
frequency and spreading factor, the event's `time` when it is a plausible
time (else ours).

Refused before the pipeline, counted by reason in `stats()` and reported as
pipeline rejections on transport "chirpstack" (logs rate-limited):
  oversized      an event over `max_event_bytes`
  malformed      not JSON, not an object, a field of the wrong type, bad
                 base64, a DevEUI in the body that is not the topic's, a
                 payload that cannot be a frame
  foreign_port   an fPort outside 32..63 (another application on the device,
                 or fPort 0: MAC commands only); not an attack, still counted
  unknown_node   a DevEUI no registered node has (`unknown_dev_eui` counts it)
  replay         an fCnt not above the last one accepted from the device in
                 its session (devAddr), since its last join event
                 (`fcnt_replay`): ChirpStack already merged the copies heard
                 by several gateways into one event, so a second event with
                 the same fCnt is a redelivery or a replay and must not count
                 as one more reception. The fCnt is remembered only once the
                 pipeline accepted the frame (its MIC verified), so a forged
                 event cannot block the device's next real ones. In memory:
                 after a restart the Lumeau counter (kept in the store) is the
                 guard, as it is against a broker that forges join events.
A metadata field of the wrong type or out of range drops that field, not the
uplink (`bad_field`). Nothing in an event can raise out of the transport.

Each uplink is handed to `pipeline.ingest` and awaited (its verdict decides
whether the fCnt is remembered): one commit per uplink, hundreds per second
on a small disk, far above what one LoRaWAN application's devices can send
under the duty cycle.

Downlinks: the downlink queue answers after an uplink through the
reception's path, which publishes the frame on the device's command/down
topic (QoS 1). ChirpStack queues it and sends it in the device's next
receive window: the one after this uplink when it arrives within
ChirpStack's `get_downlink_data_delay`, else after the next uplink (class
A). `confirmed` (false by default) asks for a LoRaWAN ack as well; Lumeau's
CMD_ACK already closes the loop end to end. Not connected: DownlinkError
("disconnected"), and the queue keeps the downlink.

Connection: aiomqtt, username/password and TLS as `[chirpstack]` in
gateway.toml sets them; clean session false with a fixed client id, so the
broker keeps QoS 1 events for us across a short disconnection (one gateway
per client id: a second one with the same id takes the session over, and
the broker drops the first); reconnects with exponential backoff and jitter
(backoff_base doubling to backoff_max). At most INCOMING_MAX events wait in
aiomqtt's queue while one is committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import re
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, Pipeline, radio_time, report_reject
from protocol import lorawan

log = logging.getLogger("lumeau.gateway.transports.chirpstack")

TRANSPORT = "chirpstack"
DEFAULT_MAX_EVENT_BYTES = 65536  # ChirpStack's events are 1-2 kB; a gateway list cannot make one 64 kB
# Events aiomqtt holds while the transport awaits a commit: past it, aiomqtt discards the newest
# with a warning (already acknowledged to the broker at QoS 1: lost, and not counted here), so a
# flood costs bounded memory. A commit takes milliseconds: only a flood fills it.
INCOMING_MAX = 8192
MAX_SESSIONS = 100_000  # devices whose fCnt is remembered (a registry's worth; the oldest forgotten first)
REFUSED_CREDENTIALS = frozenset((4, 5, 0x86, 0x87))  # MQTT 3.1.1 and 5 "bad credentials" / "not authorised"
FUTURE_SLACK_S = 60.0  # an event time further ahead of ours than this is not believed
RSSI_RANGE = (-200.0, 50.0)
SNR_RANGE = (-50.0, 50.0)
_EUI = re.compile(r"[0-9a-fA-F]{16}\Z")
_GATEWAY_ID = re.compile(r"[0-9a-fA-F]{1,32}\Z")
TOPIC_RE = re.compile(r"application/([^/]+)/device/([^/]+)/event/([a-z]+)\Z")


class IngestPipeline(Pipeline, Protocol):
    """What this transport needs of gateway/pipeline.py: ingest's verdict decides the fCnt."""

    async def ingest(self, rec: Reception) -> str: ...


class DeviceMap(Protocol):
    """DevEUI <-> node id, from the registry (gateway/registry.py `dev_eui`)."""

    def node_of(self, dev_eui: str) -> int | None: ...

    def eui_of(self, node_id: int) -> str | None: ...


class RegistryDevices:
    """A DeviceMap over the gateway's registry, which may be replaced or edited while we run.

    The DevEUI index is rebuilt when a hit no longer matches the registry (a node edited),
    on a miss when the registry's size changed (a node provisioned or removed), and on
    other misses at most once per `refresh_s` (a DevEUI given to a registered node): an
    event storm for unknown DevEUIs costs one rebuild a second, not one per event."""

    def __init__(
        self, registry: Callable[[], Any], refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self.refresh_s = refresh_s
        self.clock = clock
        self._index: dict[str, int] = {}
        self._built = -math.inf
        self._size = -1

    def _rebuild(self) -> None:
        reg = self._registry()
        self._index = reg.dev_euis()
        self._size = len(reg)
        self._built = self.clock()

    def node_of(self, dev_eui: str) -> int | None:
        n = self._index.get(dev_eui)
        if n is not None:
            e = self._registry().get(n)
            if e is not None and e.dev_eui == dev_eui:
                return n
            self._rebuild()
            return self._index.get(dev_eui)
        if len(self._registry()) != self._size or self.clock() - self._built >= self.refresh_s:
            self._rebuild()
            return self._index.get(dev_eui)
        return None

    def eui_of(self, node_id: int) -> str | None:
        e = self._registry().get(node_id)
        return (e.dev_eui or None) if e is not None else None


class EventError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _number(v: Any, lo: float, hi: float) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def _int(v: Any, lo: int, hi: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else None


class Uplink:
    """What one uplink event says, checked."""

    __slots__ = ("dev_eui", "dev_addr", "fcnt", "fport", "data", "rssi", "snr", "gateway", "freq_hz", "sf", "time")

    def __init__(self) -> None:
        self.dev_eui = ""
        self.dev_addr = ""
        self.fcnt = 0
        self.fport = 0
        self.data = b""
        self.rssi: float | None = None
        self.snr: float | None = None
        self.gateway = ""
        self.freq_hz: int | None = None
        self.sf: int | None = None
        self.time: float | None = None


def parse_uplink(dev_eui: str, doc: Any, bad_field: Callable[[str], None]) -> Uplink:
    """An `up` event's JSON (already parsed) -> Uplink; EventError for what makes it unusable.

    Protobuf's JSON mapping leaves out fields at their default (fCnt 0, fPort 0,
    confirmed false), so a missing number is its zero. `bad_field(name)` is called
    for a metadata field that is dropped."""
    if not isinstance(doc, dict):
        raise EventError("malformed", "the event is not a JSON object")
    u = Uplink()
    u.dev_eui = dev_eui
    info = doc.get("deviceInfo")
    if info is not None:
        if not isinstance(info, dict):
            raise EventError("malformed", "deviceInfo is not an object")
        body_eui = info.get("devEui")
        if body_eui is not None and (not isinstance(body_eui, str) or body_eui.lower() != dev_eui):
            raise EventError("malformed", "deviceInfo.devEui is not the topic's DevEUI")
    fport = doc.get("fPort", 0)
    if _int(fport, 0, 255) is None:
        raise EventError("malformed", "fPort is not an integer 0..255")
    u.fport = fport
    fcnt = doc.get("fCnt", 0)
    if _int(fcnt, 0, 0xFFFFFFFF) is None:
        raise EventError("malformed", "fCnt is not a 32-bit unsigned integer")
    u.fcnt = fcnt
    addr = doc.get("devAddr", "")
    if not isinstance(addr, str) or len(addr) > 16:
        raise EventError("malformed", "devAddr is not a device address")
    u.dev_addr = addr.lower()
    data = doc.get("data", "")
    if not isinstance(data, str) or len(data) > 4 * (lorawan.MAX_PAYLOAD + 2) // 3 + 4:
        raise EventError("malformed", "data is not a base64 FRMPayload")
    try:
        u.data = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("malformed", "data is not valid base64") from None
    rx = doc.get("rxInfo", [])
    if not isinstance(rx, list):
        bad_field("rxInfo")
        rx = []
    best: float | None = None
    for item in rx[:64]:  # a network server's gateways for one uplink: a handful
        if not isinstance(item, dict):
            bad_field("rxInfo")
            continue
        rssi = _number(item.get("rssi"), *RSSI_RANGE)
        if "rssi" in item and rssi is None:
            bad_field("rssi")
        if best is not None and (rssi is None or rssi <= best):
            continue
        gw = item.get("gatewayId")
        if gw is not None and not (isinstance(gw, str) and _GATEWAY_ID.match(gw)):
            bad_field("gatewayId")
            gw = None
        snr = _number(item.get("snr"), *SNR_RANGE)
        if "snr" in item and snr is None:
            bad_field("snr")
        if rssi is not None:
            best = rssi
        if rssi is not None or not u.gateway:
            u.rssi, u.snr, u.gateway = rssi, snr, (gw or "").lower()
    tx = doc.get("txInfo")
    if isinstance(tx, dict):
        freq = tx.get("frequency")
        if freq is not None:
            u.freq_hz = _int(freq, 1, 10_000_000_000)
            if u.freq_hz is None:
                bad_field("frequency")
        mod = tx.get("modulation")
        lora = mod.get("lora") if isinstance(mod, dict) else None
        if isinstance(lora, dict) and "spreadingFactor" in lora:
            u.sf = _int(lora["spreadingFactor"], 5, 12)
            if u.sf is None:
                bad_field("spreadingFactor")
    elif tx is not None:
        bad_field("txInfo")
    if "time" in doc:
        u.time = radio_time(doc["time"])
        if u.time is None:
            bad_field("time")
    return u


def _loads(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except RecursionError:  # nesting past the parser's limit
        raise EventError("malformed", "JSON nested too deeply") from None
    except ValueError as e:  # bad syntax, bad UTF-8, an integer past Python's digit limit
        raise EventError("malformed", f"not JSON: {str(e)[:80]}") from None


class ChirpstackPath:
    """The DownlinkPath of an uplink heard through ChirpStack: the device's command/down topic."""

    __slots__ = ("transport", "dev_eui")

    def __init__(self, transport: ChirpstackTransport, dev_eui: str) -> None:
        self.transport = transport
        self.dev_eui = dev_eui

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        await self.transport.send(self.dev_eui, frame)


class ChirpstackTransport:
    """Subscribes to one ChirpStack application's events; `await start()`, `await stop()`."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        host: str,
        port: int = 1883,
        *,
        application_id: str,
        devices: DeviceMap,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        client_id: str = "",
        keepalive: int = 60,
        confirmed: bool = False,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 10.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not application_id or "/" in application_id or "+" in application_id or "#" in application_id:
            raise ValueError("application_id must be one MQTT topic level (ChirpStack's application UUID)")
        if not 0 < backoff_base <= backoff_max or timeout <= 0 or max_event_bytes < 256:
            raise ValueError("chirpstack limits must be positive (backoff_base <= backoff_max)")
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.application_id = application_id
        self.devices = devices
        self._username = username
        self._password = password
        self._tls = tls
        self.client_id = client_id or f"lumeau-{application_id}"[:64]
        self.keepalive = keepalive
        self.confirmed = confirmed
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.max_event_bytes = max_event_bytes
        self.clock = clock
        self.monotonic = monotonic
        self.counts: Counter[str] = Counter()
        self.connected = False
        self.last_error = ""
        # dev_eui -> (devAddr, highest fCnt accepted); a join event forgets the device
        self._sessions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._paths: dict[str, ChirpstackPath] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._limiter = RateLimiter(clock=monotonic)
        self._rng = random.Random()
        self._attempt = 0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self._tls else 'mqtt'}://{self.host}:{self.port}"

    def topic(self, dev_eui: str, leaf: str) -> str:
        return f"application/{self.application_id}/device/{dev_eui}/{leaf}"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lumeau-chirpstack")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.connected = False

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["connected"] = int(self.connected)
        out["sessions"] = len(self._sessions)
        return out

    async def _run(self) -> None:
        while True:
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except aiomqtt.MqttError as e:
                self._failed(e)
            except Exception as e:  # a bug: never stop listening for good
                self.counts["internal_error"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self._limiter.allow("internal_error")[0]:
                    log.exception("ChirpStack transport failed, restarting it")
            finally:
                self.connected = False
                self._client = None
            cap = min(self.backoff_max, self.backoff_base * 2 ** min(self._attempt, 30))
            self._attempt += 1
            await asyncio.sleep(cap / 2 + self._rng.uniform(0, cap / 2))

    def _failed(self, e: BaseException) -> None:
        rc = getattr(e, "rc", None)
        code = getattr(rc, "value", rc)
        self.last_error = f"{type(e).__name__}: {e}"
        if isinstance(e, MqttConnectError) and code in REFUSED_CREDENTIALS:
            self.counts["refused"] += 1
            if self._limiter.allow("refused")[0]:
                log.error(
                    "ChirpStack's MQTT broker refused the connection (check chirpstack.username, "
                    "chirpstack.password): %s",
                    e,
                    extra={"broker": self.url},
                )
            return
        self.counts["connection_errors"] += 1
        if self._limiter.allow("lost")[0]:
            log.warning("ChirpStack's MQTT broker unavailable, reconnecting: %s", e, extra={"broker": self.url})

    async def _connection(self) -> None:
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            clean_session=False,  # the broker keeps QoS 1 events while we reconnect
            keepalive=self.keepalive,
            timeout=self.timeout,
            tls_context=self._tls,
            max_queued_incoming_messages=INCOMING_MAX,
            logger=logging.getLogger("lumeau.gateway.transports.chirpstack.client"),
        )
        async with client:
            base = f"application/{self.application_id}/device/+/event/"
            await client.subscribe([(base + "up", 1), (base + "join", 1)])
            self._client = client
            self.connected = True
            self.counts["connections"] += 1
            self._attempt = 0
            log.info("subscribed to ChirpStack", extra={"broker": self.url, "application": self.application_id})
            async for msg in client.messages:
                await self.handle(msg.topic.value, msg.payload)

    # -- receiving ---------------------------------------------------------

    async def handle(self, topic: str, payload: Any) -> str:
        """One message from the broker -> a verdict (the pipeline's, or why it was refused). Never raises."""
        try:
            return await self._handle(topic, payload)
        except Exception as e:
            self.counts["internal_error"] += 1
            if self._limiter.allow("internal_error")[0]:
                log.error("internal error on a ChirpStack event: %r", e, exc_info=True)
            return "internal_error"

    async def _handle(self, topic: str, payload: Any) -> str:
        self.counts["events"] += 1
        m = TOPIC_RE.match(topic)
        if m is None or m.group(1) != self.application_id or not _EUI.match(m.group(2)):
            return self._refuse("malformed", f"topic {topic[:120]!r} is not an event of this application")
        dev_eui, kind = m.group(2).lower(), m.group(3)
        if kind == "join":
            self.counts["joins"] += 1
            self._sessions.pop(dev_eui, None)  # a new session: its fCnt starts again at 0
            return "join"
        if kind != "up":
            self.counts["ignored"] += 1
            return "ignored"
        if not isinstance(payload, (bytes, bytearray)):
            payload = str(payload or "").encode()
        if len(payload) > self.max_event_bytes:
            return self._refuse("oversized", f"{len(payload)} bytes, at most {self.max_event_bytes}")
        try:
            u = parse_uplink(dev_eui, _loads(payload), self._bad_field)
        except EventError as e:
            return self._refuse(e.reason, str(e), dev_eui)
        if not lorawan.is_lumeau_port(u.fport):
            return self._refuse("foreign_port", f"fPort {u.fport}", dev_eui)
        node_id = self.devices.node_of(dev_eui)
        if node_id is None:
            self.counts["unknown_dev_eui"] += 1
            return self._refuse("unknown_node", "no registered node has this dev_eui", dev_eui)
        session = self._sessions.get(dev_eui)
        if session is not None and session[0] == u.dev_addr and u.fcnt <= session[1]:
            self.counts["fcnt_replay"] += 1
            return self._refuse("replay", f"fCnt {u.fcnt}, already at {session[1]}", dev_eui)
        try:
            raw = lorawan.frame_from_lorawan(u.fport, node_id, u.data)
        except lorawan.CarriageError as e:
            return self._refuse("malformed", str(e), dev_eui)
        now = self.clock()
        rx_time = u.time if u.time is not None and u.time <= now + FUTURE_SLACK_S else now
        rec = Reception(
            raw=raw,
            transport=TRANSPORT,
            gateway_id=f"{TRANSPORT}:{u.gateway or self.application_id}",
            rx_time=rx_time,
            rssi=u.rssi,
            snr=u.snr,
            freq_hz=u.freq_hz,
            sf=u.sf,
            path=self._path(dev_eui),
        )
        self.counts["uplinks"] += 1
        verdict = await self.pipeline.ingest(rec)
        if verdict in ("accepted", "duplicate"):  # the node's MIC verified: the fCnt is the device's
            self._sessions[dev_eui] = (u.dev_addr, u.fcnt)
            self._sessions.move_to_end(dev_eui)
            if len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return verdict

    def _path(self, dev_eui: str) -> ChirpstackPath:
        p = self._paths.get(dev_eui)
        if p is None:
            if len(self._paths) >= MAX_SESSIONS:
                self._paths.clear()  # paths are stateless: forgetting them costs an allocation
            p = self._paths[dev_eui] = ChirpstackPath(self, dev_eui)
        return p

    def _bad_field(self, name: str) -> None:
        self.counts["bad_field"] += 1
        if self._limiter.allow("bad_field")[0]:
            log.info("ChirpStack event field dropped: %s", name, extra={"transport": TRANSPORT})

    def _refuse(self, reason: str, detail: str, dev_eui: str | None = None) -> str:
        self.counts[reason] += 1
        # the pipeline counts it by (reason, transport) and logs it, rate-limited
        detail = f"DevEUI {dev_eui}: {detail}" if dev_eui else detail
        report_reject(self.pipeline, reason, TRANSPORT, self._limiter, log, detail)
        return reason

    # -- sending -----------------------------------------------------------

    async def send(self, dev_eui: str, frame: bytes) -> None:
        """Publish a sealed frame as the device's ChirpStack downlink; DownlinkError if it cannot go."""
        client = self._client
        if client is None or not self.connected:
            raise DownlinkError("disconnected", f"not connected to {self.url}")
        try:
            fport, node_id, payload = lorawan.frame_to_lorawan(frame)
        except lorawan.CarriageError as e:
            raise DownlinkError("bad_request", str(e)) from None
        if self.devices.eui_of(node_id) != dev_eui:  # the registry changed: never to another device
            raise DownlinkError("no_route", f"node {node_id:08x} is no longer DevEUI {dev_eui}")
        doc = {
            "devEui": dev_eui,
            "confirmed": self.confirmed,
            "fPort": fport,
            "data": base64.b64encode(payload).decode("ascii"),
        }
        try:
            await client.publish(self.topic(dev_eui, "command/down"), json.dumps(doc, separators=(",", ":")), qos=1)
        except aiomqtt.MqttError as e:
            self.counts["downlink_errors"] += 1
            raise DownlinkError("disconnected", str(e)) from None
        self.counts["downlinks"] += 1
