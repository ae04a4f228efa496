"""Transports: move frames between radios or wires and the pipeline.

A transport only moves bytes and adds reception metadata (RSSI, SNR,
frequency, receive time, which radio heard it). Everything it hears becomes a
`gateway.model.Reception` handed to the pipeline; what it cannot turn into a
frame (bad CRC, broken framing, an overlong line) is reported with
`pipeline.reject(reason, transport)` so every loss is counted by reason.

Modules:
  serial.py   bridge boards and wired nodes on a serial port (COBS + CRC)
  semtech.py  Semtech UDP packet forwarder protocol v2 server
  ble.py      nodes in Bluetooth LE reach, through bleak

Shared here:
  Pipeline       what a transport needs from the pipeline (ingest, reject)
  DownlinkError  raised by `DownlinkPath.send_downlink` when a frame could not
                 be handed to the radio or wire (the caller keeps it queued)
  Ingestor       bounded, concurrent, per-node-ordered feeding of the pipeline
  Throttle       bounded-rate logging for anything the air can trigger

Nothing received from the air or a wire may raise out of a transport: each
entry point catches, counts and logs (at a bounded rate) instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Protocol

from gateway.model import Reception

__all__ = ["DownlinkError", "Ingestor", "Pipeline", "Throttle", "node_id_of"]

# Ingestor limits (see Ingestor): enough parallel appends for the store's
# group commit to batch well, while the memory held by frames waiting for the
# pipeline stays small (DEFAULT_DEPTH x 255-byte frames is about 2 MB).
DEFAULT_SHARDS = 64
DEFAULT_DEPTH = 8192


class Pipeline(Protocol):
    """The pipeline as a transport sees it (gateway/pipeline.py implements it)."""

    async def ingest(self, reception: Reception) -> str: ...

    def reject(self, reason: str, transport: str) -> None: ...


class DownlinkError(Exception):
    """A downlink could not be handed to the radio; `reason` is a short stable tag.

    Reasons used by the transports: "no_route" (never heard from that radio,
    or its link is down), "too_late" (the receive window has passed),
    "disconnected", "timeout", and the packet forwarder's TX_ACK errors in
    lower case ("too_early", "collision_packet", "tx_freq", ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def node_id_of(raw: bytes) -> int:
    """Node id from a frame's header without verifying anything (0 if too short)."""
    return int.from_bytes(raw[1:5], "big") if len(raw) >= 5 else 0


class Throttle:
    """At most `burst` log lines per `per` seconds per key; counts what it held back.

    Anything the air can trigger (garbage, bad CRCs, floods) is logged through
    one of these, so a noisy channel cannot fill the disk with logs.
    """

    def __init__(self, burst: int = 10, per: float = 60.0) -> None:
        self.burst = burst
        self.per = per
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed: Counter[str] = Counter()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        start, n = self._windows.get(key, (now, 0))
        if now - start >= self.per:
            start, n = now, 0
        if n >= self.burst:
            self.suppressed[key] += 1
            self._windows[key] = (start, n)
            return False
        self._windows[key] = (start, n + 1)
        return True


class Ingestor:
    """Feeds receptions to `pipeline.ingest`: concurrent across nodes, in order per node.

    Frames are spread over `shards` worker tasks by node id, each with its own
    FIFO: frames of one node reach the pipeline in arrival order (so the
    store keeps them in counter order), while frames of different nodes are
    ingested concurrently and share the store's group commits. At most
    `depth` receptions wait in total, `depth // shards` per shard (memory
    stays flat under a flood, and one chatty or hostile node id fills only
    its own shard):

    - `offer()` never waits; when full it drops the reception and reports
      it as an "overload" rejection. For callbacks that cannot wait (UDP
      datagrams, BLE notifications); a radio cannot be paused anyway.
    - `put()` waits for room; for streams that can push back (a serial port:
      the bytes wait in the OS buffer and the sender's flow control).

    `verdicts` counts what the pipeline answered ("accepted", "duplicate",
    rejection reasons), plus "internal_error" when it raised: a pipeline bug
    is logged and counted, never allowed to stop the transport.
    """

    def __init__(self, pipeline: Pipeline, transport: str, *, shards: int = DEFAULT_SHARDS,
                 depth: int = DEFAULT_DEPTH, log: logging.Logger | None = None) -> None:
        if shards < 1 or depth < shards:
            raise ValueError("need shards >= 1 and depth >= shards")
        self.pipeline = pipeline
        self.transport = transport
        self.log = log or logging.getLogger(f"lumeau.gateway.transports.{transport}")
        per_shard = depth // shards
        self._queues: list[asyncio.Queue[Reception]] = [asyncio.Queue(per_shard) for _ in range(shards)]
        self._workers: list[asyncio.Task[None]] = []
        self.verdicts: Counter[str] = Counter()
        self.dropped = 0
        self._throttle = Throttle()

    def start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(q), name=f"ingest-{self.transport}-{i}")
                             for i, q in enumerate(self._queues)]

    async def stop(self, drain: bool = True, timeout: float = 5.0) -> None:
        """Stop the workers; with `drain`, first let queued receptions through (up to `timeout` s)."""
        if drain and self._workers:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
            except asyncio.TimeoutError:
                self.log.warning("ingest queue not drained on stop",
                                 extra={"transport": self.transport, "waiting": self.waiting()})
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def waiting(self) -> int:
        return sum(q.qsize() for q in self._queues)

    def _queue(self, reception: Reception) -> asyncio.Queue[Reception]:
        return self._queues[node_id_of(reception.raw) % len(self._queues)]

    def offer(self, reception: Reception) -> bool:
        try:
            self._queue(reception).put_nowait(reception)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            self._reject("overload")
            return False

    async def put(self, reception: Reception) -> None:
        await self._queue(reception).put(reception)

    def _reject(self, reason: str) -> None:
        try:
            self.pipeline.reject(reason, self.transport)
        except Exception:  # a broken counter must not take the transport down
            if self._throttle.allow("reject_error"):
                self.log.exception("pipeline.reject failed", extra={"transport": self.transport})

    async def _work(self, q: asyncio.Queue[Reception]) -> None:
        while True:
            reception = await q.get()
            try:
                verdict = await self.pipeline.ingest(reception)
                self.verdicts[verdict] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.verdicts["internal_error"] += 1
                if self._throttle.allow("internal_error"):
                    self.log.exception("pipeline.ingest raised", extra={"transport": self.transport})
            finally:
                q.task_done()
