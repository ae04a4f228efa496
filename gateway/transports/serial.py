"""Serial transport: wired nodes (UART, RS-485) and radio bridge boards on a serial port.

Every packet on the line is `00 | COBS(payload || CRC-16) | 00` (SPEC §8),
undone by protocol.serial.Decoder. What a packet carries depends on `mode`:

- "wired": the payload is a bare frame (a wired node, or several on an
  RS-485 bus). Downlinks are written back at once, framed the same way.
- "bridge": a radio bridge board (firmware/bridge.py) forwarding LoRa
  frames with their reception metadata; its messages are specified in
  protocol/SPEC.md (see `parse_bridge_payload` below).

Drops the decoder sees are reported to the pipeline as rejections, so line
noise is counted like any other loss: bad CRC -> "bad_crc", invalid COBS or
a packet too short to hold its CRC -> "bad_cobs", more than `max_frame`
payload bytes -> "oversized".

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
from typing import Any

import serial as pyserial
import serial_asyncio_fast

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, Pipeline, report_reject
from protocol import serial as framing

log = logging.getLogger("lumeau.gateway.transports.serial")

TRANSPORT = "serial"
MODES = ("wired", "bridge")

DEFAULT_BAUDRATE = 115200
DEFAULT_RECONNECT_MIN_S = 0.2
DEFAULT_RECONNECT_MAX_S = 5.0
DEFAULT_WRITE_TIMEOUT_S = 2.0  # a 255-byte frame takes 22 ms at 115200 Bd; 2 s means the line is stuck
READ_CHUNK = 4096

# Decoder counter -> rejection reason.
_DROPS = (("dropped_crc", "bad_crc"), ("dropped_cobs", "bad_cobs"), ("dropped_short", "bad_cobs"),
          ("dropped_overlong", "oversized"))


class SerialTransport:
    """One serial port. `await start()` runs it (reconnecting) until `await stop()`.

    It is also the DownlinkPath of every reception it hands over: a
    downlink is written to the line at once.
    """

    def __init__(self, pipeline: Pipeline, port: str, *, baudrate: int = DEFAULT_BAUDRATE,
                 mode: str = "wired", max_frame: int = framing.DEFAULT_MAX_FRAME,
                 reconnect_min: float = DEFAULT_RECONNECT_MIN_S, reconnect_max: float = DEFAULT_RECONNECT_MAX_S,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT_S, exclusive: bool = True) -> None:
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
        self.gateway_id = f"{TRANSPORT}:{port}"
        self.decoder = framing.Decoder(max_frame)
        self.counts: Counter[str] = Counter()
        self._seen_drops = dict.fromkeys((a for a, _ in _DROPS), 0)
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limiter = RateLimiter()

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
        """Counters for /metrics: bytes, packets, drops by reason, (re)connections."""
        out: dict[str, Any] = dict(self.counts)
        out["connected"] = int(self.connected)
        return out

    # -- the read loop -----------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_min
        down_since: float | None = None
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.port, baudrate=self.baudrate, exclusive=self.exclusive)
            except (pyserial.SerialException, OSError, ValueError) as e:
                self.counts["open_failures"] += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("serial port unavailable, retrying: %s", e,
                                extra={"port": self.port, "transport": TRANSPORT})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            self.counts["connects"] += 1
            log.info("serial port open", extra={"port": self.port, "transport": TRANSPORT,
                                                 "down_s": None if down_since is None
                                                 else round(time.monotonic() - down_since, 3)})
            down_since = None
            self.decoder.reset()  # whatever was half-received belongs to the old connection
            self._writer = writer
            self._connected.set()
            try:
                await self._read(reader)
                why: object = "end of file"
            except (pyserial.SerialException, OSError) as e:
                why = e
            finally:
                self._connected.clear()
                self._close_writer()
            self.counts["disconnects"] += 1
            down_since = time.monotonic()
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
            self._report_drops()
            for payload in payloads:
                await self._packet(payload)

    def _report_drops(self) -> None:
        d = self.decoder
        for attr, reason in _DROPS:
            n = getattr(d, attr)
            new = n - self._seen_drops[attr]
            if new:
                self._seen_drops[attr] = n
                self.counts[f"dropped_{reason}"] += new
                for _ in range(new):
                    report_reject(self.pipeline, reason, TRANSPORT, self._limiter, log)

    async def _packet(self, payload: bytes) -> None:
        self.counts["packets"] += 1
        if self.mode == "wired":
            reception = Reception(raw=payload, transport=TRANSPORT, gateway_id=self.gateway_id,
                                  rx_time=time.time(), path=self)
        else:
            reception = self._bridge_packet(payload)
            if reception is None:
                return
        await self.pipeline.submit(reception)

    def _bridge_packet(self, payload: bytes) -> Reception | None:
        raise NotImplementedError("bridge mode: waiting for the bridge message format in protocol/SPEC.md")

    # -- downlinks ---------------------------------------------------------

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        """Write `frame` to the line now; raises DownlinkError when the port is down or stuck."""
        try:
            await self._write(framing.encode(frame))
        except DownlinkError as e:
            self.counts[f"downlink_{e.reason}"] += 1
            raise
        self.counts["downlinks_sent"] += 1

    async def _write(self, data: bytes) -> None:
        async with self._write_lock:  # one packet at a time: bytes of two packets never interleave
            w = self._writer
            if w is None or not self.connected:
                raise DownlinkError("disconnected", f"serial port {self.port} is not open")
            try:
                w.write(data)
                await asyncio.wait_for(w.drain(), self.write_timeout)
            except asyncio.TimeoutError:
                raise DownlinkError("timeout", f"serial port {self.port} did not take the frame "
                                               f"within {self.write_timeout:g} s") from None
            except (pyserial.SerialException, OSError, ConnectionError) as e:
                raise DownlinkError("disconnected", str(e)) from e
