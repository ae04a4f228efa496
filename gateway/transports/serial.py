"""Serial transport: wired nodes (UART, RS-485) and radio bridge boards on a serial port.

Every packet on the line is `00 | COBS(payload || CRC-16) | 00` (SPEC §8),
undone by protocol.serial.Decoder. A payload is either a bare frame (a
wired node, or several on an RS-485 bus; first byte 0x20-0x3F) or a radio
bridge message (SPEC §10, first byte 0x80-0x9F, codec protocol/bridge_msg.py).
`mode` "auto" (default) takes each packet for what its first byte says;
"wired" or "bridge" accept only that kind and reject the other as
"wrong_mode" (a port configured for the wrong device is visible at once).

- Wired frames become Reception(transport="serial"); a downlink is written
  back at once, framed the same way (the node always listens).
- Frames a bridge heard become Reception(transport="bridge") with RSSI,
  SNR, frequency and data rate: they are LoRa frames, so downlinks follow
  LoRa's rules (one frame in the node's RX1 window). A downlink becomes a
  timed TX at the uplink's bridge time + `rx_delay` (1 s, SPEC §6) on the
  uplink's channel and data rate; the bridge answers with TX_RESULT, and a
  refusal raises DownlinkError with the bridge's reason (too_late,
  too_early, duty_cycle, busy, bad_request, radio_error). The host refuses
  by itself ("too_late") a downlink that could not reach the bridge
  `send_margin` (50 ms: USB latency is a few ms) before the window. The
  bridge's STATUS messages are kept (`bridge_status`); a PING goes out on
  every (re)connection to get one.
- Receive time: our clock when the RX arrives (a bridge's clock is only a
  counter), unless the bridge said which Unix time its counter stands for
  (TIME, SPEC §10: a bridge with GNSS or an RTC, or the simulator's virtual
  clock): then each RX is dated from its own `tmst` on that mapping. The
  mapping is forgotten when the port reopens or a STATUS shows the bridge
  restarted (its uptime went back). TIME is not authenticated (SPEC §10):
  one further than BRIDGE_TIME_SKEW_S (5 s) from this host's clock is
  refused (`bridge_time_refused`; the RX are dated by our clock), and an RX
  is never dated after the present (issue 20: a TIME of 2096 made a node's
  `last_seen` 2096, never silent). `trust_time=True` takes the bridge's
  clock as it comes: only for the simulator's virtual time
  (`[gateway] trust_radio_time`).

Drops the decoder sees are reported to the pipeline as rejections, so line
noise is counted like any other loss: bad CRC -> "bad_crc", invalid COBS or
a packet too short to hold its CRC -> "bad_cobs", more than `max_frame`
payload bytes -> "oversized"; a bridge message that does not parse ->
"malformed".

The port comes and goes (a USB bridge unplugged, a converter reset): the
transport reopens it with exponential backoff from `reconnect_min` (0.2 s)
to `reconnect_max` (5 s: a replugged board is back within seconds, and one
open attempt a few seconds apart costs nothing), forever, until stopped.
Point `port` at a stable name (/dev/serial/by-id/...) so the same board is
found again after it re-enumerates. The port is opened exclusively, so two
gateways cannot both read one line. Reading pushes back: when the pipeline
has its in-flight maximum, reading pauses and the bytes wait in the OS
buffer (and the sender's flow control), nothing is dropped by us.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import serial as pyserial
import serial_asyncio_fast

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, LineDrops, Pipeline, report_reject
from protocol import bridge_msg as bm
from protocol import lora
from protocol import serial as framing

log = logging.getLogger("lumeau.gateway.transports.serial")

TRANSPORT = "serial"  # wired frames, and everything about the line itself
TRANSPORT_BRIDGE = "bridge"  # frames a radio bridge heard: LoRa timing rules apply to their downlinks
MODES = ("auto", "wired", "bridge")

DEFAULT_BAUDRATE = 115200
DEFAULT_RECONNECT_MIN_S = 0.2
DEFAULT_RECONNECT_MAX_S = 5.0
BRIDGE_TIME_SKEW_S = 5.0  # a bridge TIME further than this from the host clock is refused
DEFAULT_WRITE_TIMEOUT_S = 2.0  # a 255-byte frame takes 22 ms at 115200 Bd; 2 s means the line is stuck
READ_CHUNK = 4096
RX1_DELAY_S = 1.0  # SPEC §6
DEFAULT_BRIDGE_MARGIN_S = 0.05
DEFAULT_TX_POWER_DBM = 14
TX_RESULT_GRACE_S = 2.0  # TX_RESULT comes after the transmission; later than its end + this: the bridge is gone
TX_RESULTS = {
    bm.TX_TOO_LATE: "too_late",
    bm.TX_TOO_EARLY: "too_early",
    bm.TX_DUTY_CYCLE: "duty_cycle",
    bm.TX_BUSY: "busy",
    bm.TX_BAD_REQUEST: "bad_request",
    bm.TX_RADIO_ERROR: "radio_error",
}


class SerialTransport:
    """One serial port. `await start()` runs it (reconnecting) until `await stop()`.

    It is also the DownlinkPath of every reception it hands over: a
    downlink is written to the line at once.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        port: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        mode: str = "auto",
        max_frame: int = framing.DEFAULT_MAX_FRAME,
        reconnect_min: float = DEFAULT_RECONNECT_MIN_S,
        reconnect_max: float = DEFAULT_RECONNECT_MAX_S,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_S,
        exclusive: bool = True,
        rx_delay: float = RX1_DELAY_S,
        send_margin: float = DEFAULT_BRIDGE_MARGIN_S,
        tx_power: int = DEFAULT_TX_POWER_DBM,
        trust_time: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (wall: reception times) and `monotonic` (receive windows, outages) are seams
        for tests, as in gateway/downlinks.py."""
        if mode not in MODES:
            raise ValueError(f"serial mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        self.pipeline = pipeline
        self.port = port
        self.baudrate = baudrate
        self.mode = mode
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.write_timeout = write_timeout
        self.exclusive = exclusive
        self.rx_delay = rx_delay
        self.send_margin = send_margin
        self.tx_power = tx_power
        self.trust_time = trust_time
        self.clock = clock
        self.monotonic = monotonic
        self.gateway_id = f"{TRANSPORT}:{port}"
        self.bridge_status: dict[str, Any] = {}
        self._bridge_clock: tuple[int, float] | None = None  # (tmst, Unix s) from the bridge's TIME
        self._tx_id = 0
        self._tx_pending: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self.decoder = framing.Decoder(max_frame)
        self.counts: Counter[str] = Counter()
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limiter = RateLimiter(clock=monotonic)
        self._drops = LineDrops(pipeline, TRANSPORT, self._limiter, log)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"serial-{self.port}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._close_writer()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics: bytes, packets, drops by reason, (re)connections, the bridge's STATUS."""
        out: dict[str, Any] = dict(self.counts)
        out.update({f"dropped_{r}": n for r, n in self._drops.counts.items()})
        out["connected"] = int(self.connected)
        if self.bridge_status:
            out["bridge"] = dict(self.bridge_status)
        return out

    # -- the read loop -----------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_min
        down_since: float | None = None
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.port, baudrate=self.baudrate, exclusive=self.exclusive
                )
            except (pyserial.SerialException, OSError, ValueError) as e:
                self.counts["open_failures"] += 1
                if down_since is None:
                    down_since = self.monotonic()
                    log.warning(
                        "serial port unavailable, retrying: %s", e, extra={"port": self.port, "transport": TRANSPORT}
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            self.counts["connects"] += 1
            log.info(
                "serial port open",
                extra={
                    "port": self.port,
                    "transport": TRANSPORT,
                    "down_s": None if down_since is None else round(self.monotonic() - down_since, 3),
                },
            )
            down_since = None
            self.decoder.reset()  # whatever was half-received belongs to the old connection
            self._bridge_clock = None  # another board may be on the line now
            self._writer = writer
            self._connected.set()
            if self.mode == "bridge":  # (in auto mode the bridge's periodic STATUS will come)
                self._spawn_ping()
            try:
                await self._read(reader)
                why: object = "end of file"
            except (pyserial.SerialException, OSError) as e:
                why = e
            except Exception as e:  # a bug below us (the pipeline?): reopen rather than go deaf for good
                why = e
                self.counts["internal_error"] += 1
                if self._limiter.allow("internal_error")[0]:
                    log.exception("serial read loop failed", extra={"port": self.port})
            finally:
                self._connected.clear()
                self._close_writer()
                for fut in self._tx_pending.values():  # their TX_RESULTs will never come
                    if not fut.done():
                        fut.set_exception(DownlinkError("disconnected", "the bridge went away"))
            self.counts["disconnects"] += 1
            down_since = self.monotonic()
            log.warning("serial port lost, reopening: %s", why, extra={"port": self.port, "transport": TRANSPORT})
            await asyncio.sleep(delay)

    def _close_writer(self) -> None:
        w, self._writer = self._writer, None
        if w is not None:
            try:
                w.close()
            except Exception:  # closing a vanished device may fail in many ways; it is gone either way
                pass

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            self.counts["bytes"] += len(data)
            try:
                payloads = self.decoder.feed(data)
            except Exception:  # the decoder is total over bytes; if that ever breaks, resync
                self.decoder.reset()
                self.counts["internal_error"] += 1
                if self._limiter.allow("internal_error")[0]:
                    log.exception("serial decoder failed", extra={"port": self.port})
                continue
            self._drops.report(self.decoder)
            for payload in payloads:
                await self._packet(payload)

    async def _packet(self, payload: bytes) -> None:
        self.counts["packets"] += 1
        first = payload[0] if payload else 0
        bridge = 0x80 <= first <= 0x9F  # SPEC §10; a v1 frame starts with 0x20..0x3F
        if bridge and self.mode != "wired":
            await self._bridge_message(payload)
        elif bridge or (self.mode == "bridge" and 0x20 <= first <= 0x3F):
            self.counts["wrong_mode"] += 1
            report_reject(
                self.pipeline,
                "wrong_mode",
                TRANSPORT,
                self._limiter,
                log,
                f"port {self.port} is in {self.mode} mode but got a {'bridge message' if bridge else 'wired frame'}",
            )
        else:
            # a wired frame, or something that is neither: the pipeline names and counts it
            await self.pipeline.submit(
                Reception(raw=payload, transport=TRANSPORT, gateway_id=self.gateway_id, rx_time=self.clock(), path=self)
            )

    async def _bridge_message(self, payload: bytes) -> None:
        try:
            msg = bm.decode(payload)
        except bm.BridgeMessageError as e:
            self.counts["bridge_malformed"] += 1
            report_reject(self.pipeline, "malformed", TRANSPORT_BRIDGE, self._limiter, log, str(e))
            return
        t = msg[0]
        if t == bm.RX:
            _, tmst, freq_hz, sf, bw_hz, rssi, snr_q, raw = msg
            self.counts["bridge_rx"] += 1
            path = BridgeUplink(self, tmst, freq_hz, sf, bw_hz, self.monotonic())
            clock = self._bridge_clock
            now = self.clock()
            rx_time = now if clock is None else clock[1] + _delta32(tmst, clock[0]) / 1000
            if rx_time > now and not self.trust_time:
                rx_time = now  # never after the present (a tmst far ahead of the TIME's)
            await self.pipeline.submit(
                Reception(
                    raw=raw,
                    transport=TRANSPORT_BRIDGE,
                    gateway_id=self.gateway_id,
                    rx_time=rx_time,
                    rssi=float(rssi),
                    snr=snr_q / 4,
                    freq_hz=freq_hz,
                    sf=sf,
                    path=path,
                )
            )
        elif t == bm.TX_RESULT:
            _, tx_id, result, started = msg
            fut = self._tx_pending.get(tx_id)
            if fut is None or fut.done():
                self.counts["tx_result_unmatched"] += 1
            else:
                fut.set_result((result, started))
        elif t == bm.TIME:
            _, tmst, unix_s, ms = msg
            said = unix_s + ms / 1000
            if not self.trust_time and abs(said - self.clock()) > BRIDGE_TIME_SKEW_S:
                self.counts["bridge_time_refused"] += 1
                self._bridge_clock = None
                if self._limiter.allow("bridge_time_refused")[0]:
                    log.warning(
                        "bridge TIME refused: %.0f s from this host's clock (at most %.0f s)",
                        said - self.clock(),
                        BRIDGE_TIME_SKEW_S,
                        extra={"port": self.port, "transport": TRANSPORT_BRIDGE},
                    )
                return
            self._bridge_clock = (tmst, said)
            self.counts["bridge_time"] += 1
        elif t == bm.STATUS:
            _, uptime, rx_ok, rx_dropped, tx_ok, tx_refused, freq_hz, sf, bw_hz, fw = msg
            if uptime < self.bridge_status.get("uptime_s", 0):
                self._bridge_clock = None  # the bridge restarted: its counter starts again from 0
            if self.bridge_status.get("firmware") != fw:
                log.info("radio bridge", extra={"port": self.port, "firmware": fw, "freq_hz": freq_hz, "sf": sf})
            self.bridge_status = {
                "uptime_s": uptime,
                "rx_ok": rx_ok,
                "rx_dropped": rx_dropped,
                "tx_ok": tx_ok,
                "tx_refused": tx_refused,
                "freq_hz": freq_hz,
                "sf": sf,
                "bw_hz": bw_hz,
                "firmware": fw[:64],
            }
            self.counts["bridge_status"] += 1
        else:  # a host-to-bridge message coming back: an echoing line or a loop
            self.counts["bridge_unexpected"] += 1
            report_reject(
                self.pipeline,
                "malformed",
                TRANSPORT_BRIDGE,
                self._limiter,
                log,
                f"bridge message type 0x{t:02x} travels host to bridge, not back",
            )

    def _spawn_ping(self) -> None:
        async def ping() -> None:
            try:
                await self._write(framing.encode(bm.encode_ping()))
            except DownlinkError:
                pass  # the line went again; the next connection pings again

        asyncio.get_running_loop().create_task(ping())

    # -- downlinks ---------------------------------------------------------

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        """Write `frame` to the line now (a wired node); raises DownlinkError when the port is down or stuck."""
        try:
            await self._write(framing.encode(frame))
        except DownlinkError as e:
            self.counts[f"downlink_{e.reason}"] += 1
            raise
        self.counts["downlinks_sent"] += 1

    async def transmit(self, frame: bytes, up: BridgeUplink) -> None:
        """Have the bridge send `frame` in the RX1 window of uplink `up`; raises DownlinkError."""
        try:
            await self._transmit(frame, up)
        except DownlinkError as e:
            self.counts[f"downlink_{e.reason}"] += 1
            raise
        self.counts["downlinks_sent"] += 1

    async def _transmit(self, frame: bytes, up: BridgeUplink) -> None:
        left = up.heard_at + self.rx_delay - self.monotonic()
        if left < self.send_margin:
            raise DownlinkError("too_late", f"{left * 1000:.0f} ms before RX1, need {self.send_margin * 1000:.0f}")
        self._tx_id = tx_id = (self._tx_id + 1) & 0xFFFF
        try:
            msg = bm.encode_tx(
                tx_id,
                frame,
                up.freq_hz,
                up.sf,
                up.bw_hz,
                self.tx_power,
                (up.tmst + int(self.rx_delay * 1000)) & 0xFFFFFFFF,
            )
        except bm.BridgeMessageError as e:
            raise DownlinkError("bad_request", str(e)) from None
        try:
            airtime = lora.airtime_ms(len(frame), up.sf, up.bw_hz) / 1000
        except ValueError:
            airtime = 10.0
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._tx_pending[tx_id] = fut
        try:
            await self._write(framing.encode(msg))
            try:
                result, _started = await asyncio.wait_for(asyncio.shield(fut), left + airtime + TX_RESULT_GRACE_S)
            except TimeoutError:
                raise DownlinkError("timeout", "no TX_RESULT from the bridge") from None
        finally:
            self._tx_pending.pop(tx_id, None)
        if result != bm.TX_SENT:
            raise DownlinkError(TX_RESULTS.get(result, f"result_{result}"), "the radio bridge refused the downlink")

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:  # one packet at a time: bytes of two packets never interleave
            w = self._writer
            if w is None or not self.connected:
                raise DownlinkError("disconnected", f"serial port {self.port} is not open")
            try:
                w.write(data)
                await asyncio.wait_for(w.drain(), self.write_timeout)
            except TimeoutError:
                raise DownlinkError(
                    "timeout", f"serial port {self.port} did not take the frame within {self.write_timeout:g} s"
                ) from None
            except (pyserial.SerialException, OSError, ConnectionError) as e:
                raise DownlinkError("disconnected", str(e)) from e


def _delta32(a: int, b: int) -> int:
    """a - b for two u32 millisecond counters, as a signed difference (the bridge's clock wraps)."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d


class BridgeUplink:
    """How to answer in the RX1 window of a frame a radio bridge heard: that Reception's DownlinkPath."""

    __slots__ = ("transport", "tmst", "freq_hz", "sf", "bw_hz", "heard_at")

    def __init__(
        self, transport: SerialTransport, tmst: int, freq_hz: int, sf: int, bw_hz: int, heard_at: float
    ) -> None:
        self.transport = transport
        self.tmst = tmst  # bridge ms clock at the end of reception
        self.freq_hz = freq_hz
        self.sf = sf
        self.bw_hz = bw_hz
        self.heard_at = heard_at  # our monotonic clock when the RX arrived

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        await self.transport.transmit(frame, self)
