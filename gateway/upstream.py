"""The upstream: batches records from the store to the city platform, losing nothing.

A record leaves the store only after the platform answered 2xx for it
(`store.delete`); a batch the platform refuses as bad data is moved to the
quarantine (`store.quarantine`: kept, counted, inspectable), never retried
forever; everything else is retried, with exponential backoff and jitter,
honouring `Retry-After`. One request is in flight at a time and batches
leave oldest first, so each node's records arrive in the order they were
stored. Every record carries an idempotency key (node id + counter, and the
key generation once re-keyed: SPEC §4; native format), so a resend after a timeout or a crash (the platform stored it,
the answer got lost) is harmless.

Pipelined (native format): while a full batch is in flight the next one is
read and encoded, so the gateway works during the round trip instead of
waiting; it is sent when the first is answered 2xx (never before: order
holds). The delete of a delivered batch is not awaited either: it joins the
store's next group commit while the next batch goes out, and until it is
committed the batches skip those records (`after`). A crash before that
commit resends them, which the receiver drops by key.

Defaults, and why:

- `batch_size` by format (`default_batch_size`): 2,000 records for the
  columnar native format `lumeau.records/3`, 500 for /2 and NGSI-LD
  (larger rows): every request stays far below the 1 MB request limits
  common on platforms (FIWARE Orion's default). A request costs the
  receiver an fsync and both sides a round trip whatever its size, so
  larger batches carry more (request sizes and the measured gain:
  bench/README.md, gateway.py). At low rates batches go by age anyway
  (`max_age`), so the size only matters under load.
- `max_age` 5 s: a smaller batch goes when its oldest record has waited
  this long. Nodes report every few minutes, so 5 s is nothing next to the
  data's own age, while a quiet gateway still sends a few large requests a
  minute rather than one per frame. Alarms do not wait: a batch holding an
  alarm goes at once; nor does the tail of a backlog (records that queued
  behind a full batch have waited long enough).
- backoff from 1 s doubling to 60 s, "equal jitter" (half fixed, half
  random: waits never collapse to zero, and many gateways restarting after
  a platform outage do not retry in lockstep; AWS Architecture Blog,
  "Exponential Backoff and Jitter", 2015). `Retry-After` (seconds or an
  HTTP date) replaces the backoff, capped at `max_retry_after` 15 min.
- `timeout` 30 s per request: generous for a 40 kB upload on a poor
  cellular backhaul; a slower answer is treated as a failure and retried
  (the sink or platform drops the duplicate by its key).
- gzip level 1: telemetry JSON shrinks several times already; higher levels
  gain little for much more CPU. Compressed by ISA-L (`isal`: the same gzip
  format, far less CPU than zlib, output slightly larger; figures in
  bench/README.md, gateway.py) when it is installed, by zlib otherwise.
  On by default only where the receiver is known to accept a gzip request
  body (`gzip=None`): the native format (`lumeau sink`, and receivers written
  for it, FORMATS.md), not NGSI-LD: request `Content-Encoding` is not part of
  the NGSI-LD API and brokers differ (a broker that does not decode it
  refuses the body, and each refusal would quarantine data). `gzip=True`
  for a broker known to take it (or a proxy in front that decodes it).
- native format version 3 (`lumeau.records/3`, columnar: gateway/FORMATS.md);
  `native_version=2` for a receiver that reads only /2.

Status codes:
  2xx                      delivered: deleted from the store
  207 (NGSI-LD)            per-entity result: records whose entities failed
                           are quarantined, the rest deleted
  400, 409, 415, 422, ...  bad data: the batch is split in halves until the
                           bad record(s) are isolated; those are quarantined
                           with the status and the response text, the rest
                           delivered. A poison record costs log2(batch)
                           extra requests, never the whole batch.
  413                      too large: split the same way; one record too
                           large is quarantined
  401, 403, 404, 405, 407  a configuration problem (token, URL), not the
                           data's fault: retried with backoff and logged as
                           errors; quarantining would move the whole backlog
                           aside because of a typo in the config
  408, 425, 429, 5xx,      transient: retried with backoff / Retry-After
  network errors, timeouts

One file (over 600 lines): batching, retry and the three formats' sending share one loop
and its state; the wire formats themselves live in formats.py (native) and ngsi_ld.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gzip
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import aiohttp

from gateway import formats, ngsi_ld
from gateway.logs import RateLimiter
from gateway.model import Record

_igzip: ModuleType | None  # isal.igzip, or None without it
try:  # ISA-L's gzip: the same format as zlib's at a seventh of the CPU (bench/README.md, gateway.py)
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - isal is a dependency; zlib still works
    _igzip = None
ISAL_LEVEL_MAX = 3  # ISA-L's levels are 0-3; a higher gzip_level asks for zlib's smaller output


def gzip_compress(body: bytes, level: int) -> bytes:
    """gzip `body`: ISA-L for levels up to ISAL_LEVEL_MAX when installed, zlib otherwise."""
    if _igzip is not None and level <= ISAL_LEVEL_MAX:
        return _igzip.compress(body, level)
    return gzip.compress(body, level)


log = logging.getLogger("lumeau.gateway.upstream")

FORMATS = ("native", "ngsi-ld")
DEFAULT_BATCH_SIZE = 500  # /2 and NGSI-LD; /3: COLUMNAR_BATCH_SIZE (default_batch_size)
COLUMNAR_BATCH_SIZE = 2000


def default_batch_size(fmt: str = "native", native_version: int = formats.DEFAULT_NATIVE_VERSION) -> int:
    """Records per batch when none is configured (the module docstring says why)."""
    return COLUMNAR_BATCH_SIZE if fmt == "native" and native_version >= 3 else DEFAULT_BATCH_SIZE


DEFAULT_MAX_AGE_S = 5.0
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
DEFAULT_MAX_RETRY_AFTER_S = 900.0
DEFAULT_GZIP_LEVEL = 1
POLL_S = 1.0  # look at the store at least this often even if nobody calls notify()
RESPONSE_TEXT_MAX = 2000  # what is kept of a refusal's body with the quarantined records

CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407})
TRANSIENT_STATUSES = frozenset({408, 425, 429})


class BatchStore(Protocol):
    """What the upstream needs from gateway.store.Store."""

    def next_batch(self, max_records: int, after: int = 0, named: bool = True) -> list[tuple[int, Record]]: ...

    async def delete(self, seqs: Sequence[int]) -> int: ...

    async def quarantine(self, seqs: Sequence[int], status: int, response_text: str) -> int: ...

    def oldest_rx_time(self) -> float | None: ...

    # and, read when present (NGSI-LD): node_alarms(node_id), the alarm state of a node (Store.node_alarms);
    # called when present: upstream_down(bool), when sending starts failing and when it works again
    # (Store.upstream_down: a store holds fewer records in memory during an outage)


@dataclass(slots=True)
class _Encoded:
    """A batch ready to go: its request body (compressed as sent) and headers."""

    batch: list[tuple[int, Record]]
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class _Outcome:
    kind: str  # ok | partial | poison | too_large | retry | config
    status: int = 0
    text: str = ""
    retry_after: float | None = None
    failed: tuple[int, ...] = ()  # partial: indexes (into the part) of records to quarantine


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "¹": str.isdigit takes any Unicode digit
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class StoreDrain:
    """What every upstream shares (this HTTP one, upstream_mqtt's): a flush on demand, the lag of
    the oldest record waiting, and the figures /metrics reads (gateway/metrics.py). A subclass sets
    these attributes in its __init__; its own figures extend stats()."""

    store: BatchStore
    clock: Callable[[], float]
    _flush: bool
    _wake: asyncio.Event
    state: str
    records_sent: int
    requests: int
    responses: dict[str, int]
    retries: int
    quarantined_records: int
    quarantined_batches: int
    consecutive_failures: int
    last_success: float | None
    last_error: str | None
    batches: int
    batch_latency_last: float
    batch_latency_sum: float
    _deleting: set[asyncio.Task[int]]
    batch_size: int
    max_age: float
    monotonic: Callable[[], float]
    _pending_since: float | None
    _rewind: bool
    _limiter: RateLimiter

    async def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now, without waiting for batches to fill or age.

        Returns True when the store is empty (delivered or quarantined), False on timeout.
        """
        self._flush = True
        self._wake.set()
        try:

            async def empty() -> None:
                while self.store.next_batch(1):
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(empty(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._flush = False

    def lag(self) -> float:
        """Seconds since the oldest record still waiting was received (0 when none waits)."""
        t = self.store.oldest_rx_time()
        return 0.0 if t is None else max(0.0, self.clock() - t)

    def _delete(self, seqs: list[int]) -> None:
        """Delete delivered records without waiting for the commit (see the module docstring)."""
        t = asyncio.ensure_future(self.store.delete(seqs))
        self._deleting.add(t)
        t.add_done_callback(self._deleted)

    def _deleted(self, t: asyncio.Task[int]) -> None:
        self._deleting.discard(t)
        if not t.cancelled() and t.exception() is not None:
            # still queued: send them again (the receiver drops them by key), and delete them then
            self._rewind = True
            self.last_error = f"delete failed: {t.exception()}"
            if self._limiter.allow("delete")[0]:
                log.error("delivered records could not be deleted, they will be sent again: %s", t.exception())

    def _batch_wait(self, batch: list[tuple[int, Record]], now_anyway: bool) -> float:
        """Seconds to wait for `batch` to fill or age; 0: send it now (full, an alarm in it, a
        flush, or `now_anyway`: draining a backlog, or the next batch already encoded)."""
        if now_anyway or self._flush or len(batch) >= self.batch_size or any(r.alarm for _, r in batch):
            return 0.0
        now = self.monotonic()
        if self._pending_since is None:
            self._pending_since = now
        return self._pending_since + self.max_age - now

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "records_sent": self.records_sent,
            "requests": self.requests,
            "responses": dict(self.responses),
            "retries": self.retries,
            "quarantined_records": self.quarantined_records,
            "quarantined_batches": self.quarantined_batches,
            "consecutive_failures": self.consecutive_failures,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "lag_seconds": self.lag(),
            "batches": self.batches,
            "batch_latency_seconds_last": self.batch_latency_last,
            "batch_latency_seconds_sum": self.batch_latency_sum,
        }


class Upstream(StoreDrain):
    """Sends what the store holds to `url`; `await start()`, `notify()` after appends, `await stop()`."""

    def __init__(
        self,
        store: BatchStore,
        url: str,
        *,
        token: str | None = None,
        fmt: str = "native",
        batch_size: int | None = None,
        max_age: float = DEFAULT_MAX_AGE_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER_S,
        gzip_level: int = DEFAULT_GZIP_LEVEL,
        gzip: bool | None = None,
        gateway_id: str = "",
        native_version: int = formats.DEFAULT_NATIVE_VERSION,
        node_info: Callable[[int], Any] | None = None,
        ngsi_tenant: str | None = None,
        ngsi_context: Sequence[str] = ngsi_ld.DEFAULT_CONTEXT,
        node_alarms: Callable[[int], Any] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (wall: record ages, Retry-After dates, batch times) and `monotonic` (batch age,
        latency) are seams for tests, as in gateway/downlinks.py.

        `gzip`: compress request bodies (at `gzip_level`); None: for the native format only
        (see the module docstring). `node_alarms(node_id)`: the alarm state NGSI-LD derives
        `deviceState` and Alerts from; by default the store's `node_alarms` when it has one."""
        if fmt not in FORMATS:
            raise ValueError(f"upstream format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if batch_size is None:
            batch_size = default_batch_size(fmt, native_version)
        if batch_size < 1 or max_age < 0 or timeout <= 0 or not 0 < backoff_base <= backoff_max:
            raise ValueError("upstream limits must be positive (and backoff_base <= backoff_max)")
        if not 0 <= gzip_level <= 9:
            raise ValueError("gzip_level must be 0 (off) to 9")
        self._native = formats.native_encoder(native_version)  # ValueError for an unknown version
        self.clock = clock
        self.monotonic = monotonic
        self.native_version = native_version
        self.store = store
        self.url = url
        self._token = token
        self.fmt = fmt
        self.batch_size = batch_size
        self.max_age = max_age
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.gzip_level = gzip_level if (fmt == "native" if gzip is None else gzip) else 0
        self.gateway_id = gateway_id
        self.ngsi_tenant = ngsi_tenant
        if node_alarms is None:
            node_alarms = getattr(store, "node_alarms", None)
        self._mapper = ngsi_ld.NgsiMapper(node_info, ngsi_context, node_alarms) if fmt == "ngsi-ld" else None
        self._tell_down: Callable[[bool], Any] | None = getattr(store, "upstream_down", None)
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._flush = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pending_since: float | None = None
        self._after = 0  # every record up to this seq is delivered or quarantined (its delete may be pending)
        self._rewind = False  # a delete failed: read from the start of the queue again
        self._deleting: set[asyncio.Task] = set()
        self._limiter = RateLimiter(clock=monotonic)
        # figures for /metrics
        self.state = "idle"  # idle | waiting | sending | backoff
        self.records_sent = 0
        self.requests = 0
        self.responses: dict[str, int] = {}  # "2xx", "429", "5xx", "error", ...
        self.retries = 0
        self.quarantined_records = 0
        self.quarantined_batches = 0
        self.consecutive_failures = 0
        self.last_success: float | None = None  # Unix time
        self.last_error = ""
        self.batch_latency_last = 0.0  # s, from first attempt to settled
        self.batch_latency_sum = 0.0
        self.batches = 0

    def __repr__(self) -> str:
        return f"Upstream({self.url!r}, {self.fmt}, token={'<set>' if self._token else None})"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=1),
                headers={"User-Agent": "lumeau-gateway"},
            )
            self._task = asyncio.create_task(self._run(), name="lumeau-upstream")

    async def stop(self) -> None:
        """Stop now. A request in flight is abandoned: its records stay in the store and
        are sent again next time (the receiver drops what it already has by key)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = "idle"

    def notify(self) -> None:
        """New records were stored: look now instead of at the next poll."""
        self._wake.set()

    # -- the loop ----------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or until notify()."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # e.g. the store failing under us: never stop delivering for good
                self.last_error = f"{type(e).__name__}: {e}"
                if self._limiter.allow("internal_error")[0]:
                    log.exception("upstream loop failed, restarting it")
                self.state = "backoff"
                await asyncio.sleep(self.backoff_max)

    async def _loop(self) -> None:
        draining = False  # the last batch was full: more were waiting, send partial ones at once too
        ahead: _Encoded | None = None  # the next batch, encoded while the last one was in flight
        named = self.fmt != "native"  # the native format names values from the body itself
        while True:
            if ahead is not None:
                batch, ready, ahead = ahead.batch, ahead, None
            else:
                if self._rewind:
                    self._rewind = False
                    self._after = 0
                batch, ready = self.store.next_batch(self.batch_size, self._after, named=named), None
            if not batch:
                self.state = "idle"
                self._pending_since = None
                draining = False
                await self._sleep(POLL_S)
                continue
            full = len(batch) >= self.batch_size
            wait = self._batch_wait(batch, draining or ready is not None)
            if wait > 0:
                self.state = "waiting"
                await self._sleep(min(wait, POLL_S))
                continue
            started = self.monotonic()
            # a full batch means more are waiting: encode the next one during the round trip
            ahead = await self._deliver(batch, ready, self._encode_after if full and not named else None)
            self._after = max(self._after, batch[-1][0])
            latency = self.monotonic() - started
            self.batches += 1
            self.batch_latency_last = latency
            self.batch_latency_sum += latency
            self._pending_since = None
            draining = full

    def _encode_after(self, after: int) -> _Encoded | None:
        """The batch after `after`, encoded; None when there is none or it cannot be encoded
        (the loop then finds it again and isolates the culprit)."""
        batch = self.store.next_batch(self.batch_size, after, named=False)
        if not batch:
            return None
        try:
            return self._encode_native(batch)
        except (TypeError, ValueError):
            return None

    async def _deliver(
        self,
        batch: list[tuple[int, Record]],
        ready: _Encoded | None = None,
        overlap: Callable[[int], _Encoded | None] | None = None,
    ) -> _Encoded | None:
        """Settle every record of `batch`: delivered, or quarantined; retries until then.

        `ready`: the batch already encoded. `overlap(after)` is run while the
        first request is in flight; its result is returned when that request
        delivered the whole batch (after a failure it is dropped: it would
        go out late, with stale radio figures).
        """
        parts = [batch]
        attempt = 0
        ahead = None
        while parts:
            part = parts[0]
            self.state = "sending"
            if overlap is not None:
                out, ahead = await self._attempt(part, ready, functools.partial(overlap, batch[-1][0]))
                overlap = None
                if out.kind != "ok":
                    ahead = None
            else:
                out, _ = await self._attempt(part, ready if part is batch else None)
            ready = None
            seqs = [s for s, _ in part]
            if out.kind == "ok":
                self._delete(seqs)
                self.records_sent += len(part)
                if self.consecutive_failures and self._tell_down is not None:
                    self._tell_down(False)
                self.consecutive_failures = 0
                self.last_success = self.clock()
                parts.pop(0)
                attempt = 0
            elif out.kind == "partial":
                bad = [seqs[i] for i in out.failed]
                good = [s for i, s in enumerate(seqs) if i not in set(out.failed)]
                await self._quarantine(bad, out.status, out.text)
                self._delete(good)
                self.records_sent += len(good)
                self.last_success = self.clock()
                parts.pop(0)
                attempt = 0
            elif out.kind in ("poison", "too_large"):
                parts.pop(0)
                if len(part) == 1:
                    await self._quarantine(seqs, out.status, out.text)
                else:
                    mid = len(part) // 2
                    parts[0:0] = [part[:mid], part[mid:]]  # first half first: order kept
                attempt = 0
            else:  # retry, config
                self.retries += 1
                self.consecutive_failures += 1
                if self.consecutive_failures == 1 and self._tell_down is not None:
                    self._tell_down(True)
                delay = self._backoff(attempt, out.retry_after)
                attempt += 1
                self.state = "backoff"
                level = logging.ERROR if out.kind == "config" else logging.WARNING
                if self._limiter.allow(out.kind)[0]:
                    log.log(
                        level,
                        "upstream %s, retrying in %.1f s: %s",
                        "refused (check url and token)" if out.kind == "config" else "unavailable",
                        delay,
                        self.last_error,
                        extra={"status": out.status, "records": len(part), "attempt": attempt},
                    )
                await asyncio.sleep(delay)
        return ahead

    async def _quarantine(self, seqs: list[int], status: int, text: str) -> None:
        if not seqs:
            return
        await self.store.quarantine(seqs, status, text[:RESPONSE_TEXT_MAX])
        self.quarantined_records += len(seqs)
        self.quarantined_batches += 1
        log.error(
            "upstream refused records, quarantined",
            extra={"status": status, "records": len(seqs), "response": text[:200]},
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # as the server asked, plus up to 10 % so that many gateways do not return at once
            return min(retry_after, self.max_retry_after) * (1 + 0.1 * self._rng.random())
        cap = min(self.backoff_max, self.backoff_base * 2 ** min(attempt, 30))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    # -- one attempt -------------------------------------------------------

    def _encode_native(self, part: list[tuple[int, Record]]) -> _Encoded:
        """The request for `part` in the native format; TypeError or ValueError if a record cannot be encoded."""
        records = [r for _, r in part]
        body = self._native(records, self.gateway_id, self.clock())
        # the same for a resend of the same records: a batch is a run of the queue, named by its ends
        ends = f"{records[0].idempotency_key}/{records[-1].idempotency_key}/{len(records)}"
        key = hashlib.sha256(ends.encode()).hexdigest()[:32]
        headers = {"Content-Type": formats.NATIVE_CONTENT_TYPE, "Idempotency-Key": key}
        return _Encoded(part, *self._wrap(body, headers))

    async def _attempt(
        self, part: list[tuple[int, Record]], ready: _Encoded | None = None, overlap: Callable[[], Any] | None = None
    ) -> tuple[_Outcome, Any]:
        """One try at delivering `part`, and what `overlap()` returned (run while the request was in flight)."""
        if self.fmt == "native":
            if ready is None:
                try:
                    ready = self._encode_native(part)
                except (TypeError, ValueError) as e:  # a record that cannot be encoded: isolate it
                    return _Outcome("poison", 0, f"cannot encode: {e}"), None
            return await self._send(ready.body, ready.headers, overlap)
        return await self._attempt_ngsi([r for _, r in part]), None

    async def _attempt_ngsi(self, records: list[Record]) -> _Outcome:
        assert self._mapper is not None
        try:
            requests, _empty = ngsi_ld.ngsi_requests(records, self._mapper)
            bodies = [req.body() for req in requests]
        except (TypeError, ValueError) as e:
            return _Outcome("poison", 0, f"cannot encode: {e}")
        headers = {"NGSILD-Tenant": self.ngsi_tenant} if self.ngsi_tenant else {}
        failed: set[int] = set()
        status = 0
        texts: list[str] = []
        for req, body in zip(requests, bodies):
            wrapped = self._wrap(body, {"Content-Type": ngsi_ld.NGSI_CONTENT_TYPE, **headers})
            out, _ = await self._send(*wrapped, options=req.options)
            if out.kind == "partial":  # 207: which entities failed -> which records
                ids = _failed_entities(out.text)
                hit = {i for eid in ids or () for i in req.sources.get(eid, ())}
                if ids is None or (ids and not hit):
                    # a result we cannot attribute: find the culprits by splitting instead
                    return _Outcome("poison", out.status, out.text)
                failed |= hit
                status, texts = out.status, texts + [out.text]
                continue
            if out.kind != "ok":
                return out  # upserts are idempotent: a retry may resend earlier requests harmlessly
        if failed:
            return _Outcome("partial", status, "\n".join(texts), failed=tuple(sorted(failed)))
        return _Outcome("ok")

    def _wrap(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """Compress and authorise a request body."""
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.gzip_level:
            body = gzip_compress(body, self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def _send(
        self,
        body: bytes,
        headers: dict[str, str],
        overlap: Callable[[], Any] | None = None,
        options: str = ngsi_ld.UPDATE,
    ) -> tuple[_Outcome, Any]:
        """POST a wrapped body; `overlap()` runs once the request is on its way; `options`: the
        NGSI-LD upsert's."""
        req = asyncio.ensure_future(self._post(body, headers, options))
        extra = None
        try:
            if overlap is not None:
                await asyncio.sleep(0)  # the request is written before the overlapping work starts
                try:
                    extra = overlap()
                except Exception:  # only a head start lost: the loop reads that batch again
                    if self._limiter.allow("internal_error")[0]:
                        log.exception("preparing the next batch failed")
            return await req, extra
        finally:
            if not req.done():
                req.cancel()

    async def _post(self, body: bytes, headers: dict[str, str], options: str = ngsi_ld.UPDATE) -> _Outcome:
        assert self._session is not None
        url = self.url
        if self.fmt == "ngsi-ld":
            url += ("&" if "?" in url else "?") + "options=" + options
        self.requests += 1
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.clock())
        except TimeoutError:
            self._count("error")
            self.last_error = f"no answer within {self.timeout:g} s"
            return _Outcome("retry")
        except (aiohttp.ClientError, OSError) as e:
            self._count("error")
            self.last_error = f"{type(e).__name__}: {e}"
            return _Outcome("retry")
        self._count(f"{status // 100}xx" if status < 400 or status >= 500 else str(status))
        if 200 <= status < 300:
            if status == 207 and self.fmt == "ngsi-ld":
                return _Outcome("partial", status, text)
            return _Outcome("ok", status)
        self.last_error = f"HTTP {status}: {text[:200]}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            return _Outcome("retry", status, text, retry_after)
        if status in CONFIG_STATUSES:
            return _Outcome("config", status, text, retry_after)
        if status == 413:
            return _Outcome("too_large", status, text)
        if 400 <= status < 500:
            return _Outcome("poison", status, text)
        return _Outcome("retry", status, text, retry_after)  # 1xx/3xx: not an answer we can use

    def _count(self, key: str) -> None:
        self.responses[key] = self.responses.get(key, 0) + 1


def _failed_entities(text: str) -> list[str] | None:
    """Entity ids in the `errors` of an NGSI-LD BatchOperationResult (207); None if it is not one."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return None
    return [e["entityId"] for e in errors if isinstance(e, dict) and isinstance(e.get("entityId"), str)]
