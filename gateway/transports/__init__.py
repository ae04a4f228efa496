"""Transports: move frames between radios or wires and the pipeline.

A transport only moves bytes and adds reception metadata (RSSI, SNR,
frequency, receive time, which radio heard it). Everything it hears becomes a
`gateway.model.Reception` handed to the pipeline; what it cannot turn into a
frame (bad CRC, broken framing, an overlong line) is reported with
`pipeline.reject(reason, transport)` so every loss is counted by reason.

Modules:
  serial.py   bridge boards and wired nodes on a serial port (COBS + CRC)
  semtech.py  Semtech UDP packet forwarder protocol v2 server
  basicstation.py  LoRa Basics Station LNS server (WebSocket, TLS, a token per gateway)
  ble.py      nodes in Bluetooth LE reach, through bleak
  chirpstack.py  nodes behind a ChirpStack v4 LoRaWAN network server (its MQTT integration)

Shared here:
  Pipeline       what a transport needs from the pipeline (submit, reject)
  DownlinkError  raised by `DownlinkPath.send_downlink` when a frame could not
                 be handed to the radio or wire (the caller keeps it queued)
  Ingestor       a bounded queue in front of pipeline.submit for callbacks
  report_reject  pipeline.reject, guarded
  LineDrops      turns protocol.serial.Decoder drop counters into rejections

Nothing received from the air or a wire may raise out of a transport: each
entry point catches, counts and logs instead, through gateway.logs.RateLimiter
so a noisy channel cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.logs import RateLimiter
from gateway.model import Reception

__all__ = ["DownlinkError", "Ingestor", "LineDrops", "Pipeline", "report_reject"]

# Receptions that may wait for the pipeline in a transport's queue: under a
# flood, memory stays flat (8192 x a 255-byte frame is about 2 MB, plus the
# pipeline's own in-flight bound behind it).
DEFAULT_DEPTH = 8192


class Pipeline(Protocol):
    """The pipeline as a transport sees it (gateway/pipeline.py implements it).

    `submit` starts processing a reception and returns at once unless the
    pipeline has too much in flight (backpressure); receptions are processed
    in submission order. `reject` counts something dropped before it was a
    frame.
    """

    async def submit(self, reception: Reception) -> None: ...

    def reject(self, reason: str, transport: str, detail: str | None = None) -> None: ...


class DownlinkError(Exception):
    """A downlink could not be handed to the radio; `reason` is a short stable tag.

    Reasons used by the transports: "no_route" (never heard from that radio,
    or its link is down), "too_late" (the receive window has passed),
    "disconnected", "timeout", "duty_cycle" (the sub-band is in its
    off-time), "busy" and "bad_request" (a radio bridge's refusals), and the
    packet forwarder's TX_ACK errors in lower case ("too_early",
    "collision_packet", "tx_freq", ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Ingestor:
    """A bounded queue in front of `pipeline.submit`, for callbacks that cannot wait.

    UDP datagrams and BLE notifications arrive in plain callbacks: `offer()`
    queues the reception without waiting and one worker submits them in
    arrival order (so frames of a node keep their order into the store).
    When `depth` receptions already wait -- the pipeline is at its in-flight
    bound and the radios keep talking -- the reception is dropped and
    reported as an "overload" rejection: counted and visible, never an
    unbounded heap. A stream that can push back (a serial port) awaits
    `pipeline.submit` directly instead.
    """

    def __init__(
        self, pipeline: Pipeline, transport: str, *, depth: int = DEFAULT_DEPTH, log: logging.Logger | None = None
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.pipeline = pipeline
        self.transport = transport
        self.log = log or logging.getLogger(f"lumeau.gateway.transports.{transport}")
        self._queue: asyncio.Queue[Reception] = asyncio.Queue(depth)
        self._worker: asyncio.Task[None] | None = None
        self.dropped = 0
        self.submit_errors = 0
        self._limiter = RateLimiter()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"ingest-{self.transport}")

    async def stop(self, drain: bool = True, timeout: float = 5.0) -> None:
        """Stop the worker; with `drain`, first submit what is queued (for up to `timeout` s)."""
        if self._worker is None:
            return
        if drain:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                self.log.warning(
                    "ingest queue not drained on stop", extra={"transport": self.transport, "waiting": self.waiting()}
                )
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = None

    def waiting(self) -> int:
        return self._queue.qsize()

    def offer(self, reception: Reception) -> bool:
        """Queue a reception without waiting; False (and an "overload" rejection) when full."""
        try:
            self._queue.put_nowait(reception)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            report_reject(self.pipeline, "overload", self.transport, self._limiter, self.log)
            return False

    async def _work(self) -> None:
        q = self._queue
        while True:
            reception = await q.get()
            try:
                await self.pipeline.submit(reception)
            except asyncio.CancelledError:
                raise
            except Exception:  # a pipeline bug must not stop the radio
                self.submit_errors += 1
                if self._limiter.allow("submit_error")[0]:
                    self.log.exception("pipeline.submit raised", extra={"transport": self.transport})
            finally:
                q.task_done()


# A radio `time` outside these years (2000-2100) is a clock that was never set: use ours.
TIME_RANGE = (946_684_800.0, 4_102_444_800.0)
_FRACTION = re.compile(r"(\.\d{6})\d+")  # nanoseconds (some forwarders, ChirpStack): microseconds kept


def radio_time(v: Any) -> float | None:
    """Unix seconds of an ISO 8601 / RFC 3339 `time` from a forwarder or a network server (a `Z`
    or an offset; a zone-less time is UTC; fractions past microseconds dropped), or None for
    anything else, also outside TIME_RANGE."""
    if not isinstance(v, str) or len(v) > 40:
        return None
    try:
        t = datetime.fromisoformat(_FRACTION.sub(r"\1", v.replace("Z", "+00:00")))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    try:
        ts = t.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return ts if TIME_RANGE[0] <= ts < TIME_RANGE[1] else None


def report_reject(
    pipeline: Pipeline,
    reason: str,
    transport: str,
    limiter: RateLimiter,
    logger: logging.Logger,
    detail: str | None = None,
) -> None:
    """pipeline.reject, guarded: a broken counter must not take a transport down."""
    try:
        pipeline.reject(reason, transport, detail)
    except Exception:
        if limiter.allow("reject_error")[0]:
            logger.exception("pipeline.reject failed", extra={"transport": transport})


class LineDrops:
    """Reports what a protocol.serial.Decoder dropped as pipeline rejections, once each.

    Mapping (SPEC §8): bad CRC -> "bad_crc"; invalid COBS, or a packet too
    short to hold its CRC -> "bad_cobs"; more payload than the decoder's
    limit -> "oversized". Used by every transport that carries the serial
    framing (serial lines, and BLE, which carries the same byte stream).
    """

    KINDS = (
        ("dropped_crc", "bad_crc"),
        ("dropped_cobs", "bad_cobs"),
        ("dropped_short", "bad_cobs"),
        ("dropped_overlong", "oversized"),
    )

    def __init__(self, pipeline: Pipeline, transport: str, limiter: RateLimiter, logger: logging.Logger) -> None:
        self.pipeline = pipeline
        self.transport = transport
        self.limiter = limiter
        self.log = logger
        self._seen = dict.fromkeys((a for a, _ in self.KINDS), 0)
        self.counts = dict.fromkeys((r for _, r in self.KINDS), 0)

    def report(self, decoder: object) -> None:
        """Call after each feed(): rejects every drop since the last call."""
        for attr, reason in self.KINDS:
            n = getattr(decoder, attr)
            new = n - self._seen[attr]
            if new:
                self._seen[attr] = n
                self.counts[reason] += new
                for _ in range(new):
                    report_reject(self.pipeline, reason, self.transport, self.limiter, self.log)
