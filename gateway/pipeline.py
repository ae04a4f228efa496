"""From bytes heard on the air to a durable record: the gateway's hot path.

For each `Reception` a transport hands over:

1. size: more than a LoRa PHY payload (255 bytes) is `oversized`;
2. parse the header (protocol.frame.parse): `malformed` if it is not a v1
   frame, or if it is a downlink (a gateway never accepts its own direction);
3. look up the node's keys in the registry: `unknown_node`;
4. verify the MIC (and decrypt): `bad_mic`;
5. replay window (SPEC §4): below the window is `replay`; a counter already
   accepted is the same frame heard again (another radio, a retry):
   `duplicate`, merged into the stored record (receptions counted, the best
   RSSI kept with the gateway that heard it) -- not a rejection;
6. decode and check the body (cbor2 and precompiled checks for speed,
   gateway/bodies.py): `malformed`
   (named fields with units are derived later, once, when the store hands
   the record to the upstream: not on the path that must keep up with radios);
7. append to the store with the node's new replay window, in one transaction,
   and await the commit: only then is the frame accepted (and acknowledged,
   through the downlinks, if it is a confirmed alarm).

The replay window moves in memory before the commit is awaited, so a copy
arriving meanwhile is already a duplicate; if the commit fails, the counter is
forgotten again so a later copy can still be stored.

Brute force (gateway/micguard.py): a bad MIC also costs its (link, node) a
token; past BAD_MIC_BURST, refilled one per 10 s, that (link, node) is
locked out (60 s doubling to 1 h) and its receptions are refused as
`mic_lockout` before any MIC is computed -- checked only while some lockout
is active, so the hot path pays one truthiness test. `mic_guard.listeners`
hear each lockout (the BLE transport drops the link).

Rejections before a frame exists (bad CRC on a serial line, `stat: -1` from
a packet forwarder, invalid COBS) are reported by transports with
`reject(reason, transport)`. Every rejection is counted by (reason,
transport) and logged through a rate limiter (gateway/logs.py).

Nothing from the air can raise out of `ingest`: an unexpected exception is
counted as `internal_error`, logged with its traceback (rate limited) and the
frame dropped. Work per frame is bounded by the 255-byte frame size.

Steps 1-4 and 6 run in one C call (gateway/_fastadmit.c, built by setup.py)
for the frames nodes send nearly always; it answers only when sure and leaves
everything else (encrypted, malformed, bad MIC, unknown node, non-canonical
CBOR, unknown keys) to the Python path above, which is the spec and gives
every rejection and its message. Copies of a frame whose bytes already passed
the MIC are recognised by those bytes. Without the extension (a deployment
that could not compile it) the Python path does everything, with one warning
at start; `admission_path` and /metrics say which runs.

Three entry points: `ingest` (one reception, returns after its commit),
`ingest_many` (receptions that arrived together: one store round trip), and
`submit` (queue and return; a worker admits everything queued since its last
turn as one batch, and admits the next batch while this one's fsync runs).

Limits: DEFAULT_MAX_INFLIGHT = 8192 receptions between `submit` and their
commit (memory stays flat under any load; `submit` waits beyond it, which
backpressures a serial line and leaves datagrams in the UDP socket buffer);
ADMIT_SLICE = 1024 receptions admitted per turn of the worker (its time on
a small core: bench/README.md) before it lets the event loop run the upstream,
the transports and the downlinks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from gateway import bodies
from gateway.logs import RateLimiter
from gateway.micguard import MicGuard
from gateway.model import Reception, Record
from gateway.store import QueueFull, Store, StoreError
from protocol import expand, frame
from protocol import messages as m
from protocol.messages import is_alarm

if TYPE_CHECKING:
    from gateway._fastadmit import Admitter

_fastadmit: ModuleType | None  # the module, or None where it was not built
try:  # the compiled admission path (gateway/_fastadmit.c, built by setup.py)
    from gateway import _fastadmit
except ImportError:  # a deployment that could not compile it: the Python path alone, same verdicts
    _fastadmit = None

log = logging.getLogger("lumeau.gateway.pipeline")

# Which admission path a Pipeline uses by default: "compiled" or "python" (exported in /metrics).
ADMISSION_PATH = "python" if _fastadmit is None else "compiled"
_warned_fallback = False

DEFAULT_MAX_INFLIGHT = 8192
ADMIT_SLICE = 1024

# Verdicts of `ingest` that are not rejections.
ACCEPTED = "accepted"
DUPLICATE = "duplicate"

# Rejection reasons (stable: they are metric labels).
OVERSIZED = "oversized"
MALFORMED = "malformed"
UNKNOWN_NODE = "unknown_node"
BAD_MIC = "bad_mic"
REPLAY = "replay"
QUEUE_FULL = "queue_full"  # the store's eviction policy dropped it on arrival
STORE_ERROR = "store_error"  # the commit failed (disk full, I/O error)
INTERNAL_ERROR = "internal_error"  # a bug: never from valid input, but never a crash either
BAD_CRC = "bad_crc"  # reported by transports
MIC_LOCKOUT = "mic_lockout"  # (link, node) locked out after too many bad MICs (gateway/micguard.py)
REASONS = (
    OVERSIZED,
    MALFORMED,
    UNKNOWN_NODE,
    BAD_MIC,
    MIC_LOCKOUT,
    REPLAY,
    QUEUE_FULL,
    STORE_ERROR,
    INTERNAL_ERROR,
    BAD_CRC,
)
# Transports may report other reasons (e.g. "bad_cobs", "too_long"); they are
# counted under their own name, which must be a short identifier.


class KeyLookup(Protocol):
    # an object with `.keys` (protocol.keys.NodeKeys) and `.key_gen` (taken as 0 where it has
    # none: a registry of keys alone, as some tests and benchmarks build), or None
    def get(self, node_id: int) -> Any: ...


class UplinkObserver(Protocol):
    """What the pipeline tells the downlink queue (gateway/downlinks.py)."""

    def on_uplink(self, record: Record, reception: Reception) -> None: ...

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None: ...


def decode_body(mtype: int, plain: bytes) -> dict[int, Any]:
    """Decode and check a body exactly as protocol.messages.decode would, faster (gateway/bodies.py)."""
    return bodies.decode(mtype, plain)[0]


class Pipeline:
    def __init__(
        self,
        registry: KeyLookup,
        store: Store,
        *,
        downlinks: UplinkObserver | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        log_limiter: RateLimiter | None = None,
        compiled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`compiled`: use the compiled admission path (None: when it was built; False: never).

        `clock`: the monotonic clock of the default log limiter, the pipeline's only use of time
        (a reception carries its own rx_time); a seam for tests, as in gateway/downlinks.py."""
        global _warned_fallback
        if log_limiter is None:
            log_limiter = RateLimiter(clock=clock)
        self._registry = registry
        if compiled is None:
            compiled = _fastadmit is not None
            if not compiled and not _warned_fallback:
                _warned_fallback = True
                log.warning(
                    "gateway._fastadmit is not built: admitting frames on the Python path "
                    "(same verdicts, about 3x the CPU; reinstall with a C compiler and OpenSSL headers)"
                )
        elif compiled and _fastadmit is None:
            raise RuntimeError("gateway._fastadmit is not built")
        # Parse, keys, MIC, decode and check in one C call when it is sure; None: the Python path alone
        self._fast: Admitter | None = None
        if compiled:
            assert _fastadmit is not None  # checked above
            self._fast = _fastadmit.Admitter(registry, bodies.fast_plans())
        self.admission_path = "compiled" if compiled else "python"
        self.store = store
        self.downlinks = downlinks
        self.max_inflight = max_inflight
        self._windows: dict[int, frame.ReplayWindow] = {}
        self._limiter = log_limiter or RateLimiter()
        # submit(): receptions queued for the worker, and admitted ones awaiting their commit
        self._queue: list[Reception] = []
        self._committing = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task | None = None
        self._finishers: set[asyncio.Task] = set()
        # called with the number of records just committed (e.g. to wake the upstream); must not raise
        self.listeners: list[Callable[[int], None]] = []
        # counters (exported by gateway/api.py as Prometheus metrics)
        self.received: dict[str, int] = {}  # by transport
        self.accepted = 0
        self.duplicates = 0
        self.rejected: dict[tuple[str, str], int] = {}  # (reason, transport) -> count
        self.bad_mic_by_node: dict[int, int] = {}
        # brute force: bad MICs per (link, node), lockouts (gateway/micguard.py)
        self.mic_guard = MicGuard(clock)
        self._locked = self.mic_guard.locked  # the same dict, never rebound: empty unless a lockout is on

    @property
    def registry(self) -> KeyLookup:
        return self._registry

    @registry.setter
    def registry(self, registry: KeyLookup) -> None:
        # the compiled path asks the same registry as the Python path, and forgets what the old one's keys verified
        self._registry = registry
        if self._fast is not None:
            assert _fastadmit is not None  # a compiled path was built with it
            self._fast = _fastadmit.Admitter(registry, bodies.fast_plans())

    # ------------------------------------------------------------ transports call these

    async def ingest(self, rec: Reception) -> str:
        """Process one reception; returns once it is durably stored (or rejected).

        Returns "accepted", "duplicate" or the rejection reason. Never raises
        for anything in `rec`.
        """
        return (await self.ingest_many((rec,)))[0]

    async def ingest_many(self, recs: list[Reception] | tuple[Reception, ...]) -> list[str]:
        """Process receptions that arrived together (one datagram, one serial read).

        One store round trip for all of them; returns a verdict per reception.
        """
        verdicts: list[str] = []
        items: list[tuple[Record, tuple[int, int, int]]] = []
        admitted: list[tuple[int, Reception, frame.ReplayWindow]] = []
        record: Record
        snapshot: tuple[int, int, int]
        w: frame.ReplayWindow
        for rec in recs:
            a = self._admit_safe(rec)
            if type(a) is str:
                verdicts.append(a)
            else:
                # not a str, so the tuple: mypy does not narrow the else of an exact-type test (kept: per frame)
                record, snapshot, w = a  # type: ignore[str-unpack, assignment]
                admitted.append((len(verdicts), rec, w))
                items.append((record, snapshot))
                verdicts.append(ACCEPTED)
        if items:
            try:
                results = await self.store.append_many(items)
            except StoreError as e:  # closed: nothing was queued
                results = [e] * len(items)
            self._settle(items, admitted, results, verdicts)
        return verdicts

    async def submit(self, rec: Reception) -> None:
        """Queue `rec` for processing and return at once, unless `max_inflight` are pending.

        For transports reading a stream: they must not wait for each commit
        (that would limit them to one frame per fsync), but they must slow
        down when the store cannot keep up. A worker admits everything queued
        since its last turn and appends it as one batch.
        """
        while len(self._queue) + self._committing >= self.max_inflight:
            self._room.clear()
            await self._room.wait()
        self._queue.append(rec)
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="lumeau-pipeline")
        self._wake.set()

    def reject(self, reason: str, transport: str, detail: str | None = None, **extra: Any) -> None:
        """Count (and log, rate limited) a reception dropped before it was a frame."""
        self.received[transport] = self.received.get(transport, 0) + 1
        self._reject(reason, transport, detail, extra)

    async def drain(self) -> None:
        """Wait until every submitted reception is stored or rejected."""
        while self._queue or self._committing or self._finishers:
            await self._idle.wait()
            await asyncio.sleep(0)

    async def close(self) -> None:
        await self.drain()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    @property
    def inflight(self) -> int:
        return len(self._queue) + self._committing

    # ------------------------------------------------------------ node keys changed

    async def reset_node(self, node_id: int) -> None:
        """Forget the node's counters: it was re-keyed and may restart at 0 (SPEC §2)."""
        await self.reset_nodes((node_id,))

    async def reset_nodes(self, node_ids: Iterable[int]) -> None:
        """`reset_node` for every node re-keyed at once (a registry reload): each is forgotten in
        memory before anything awaits, so no frame of a new key is checked against an old window."""
        ids = list(node_ids)
        for n in ids:
            self._windows.pop(n, None)
            if self._fast is not None:
                self._fast.forget(n)
        await self.store.reset_nodes(ids)

    # ------------------------------------------------------------ the worker behind submit()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if not self._committing:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._queue) > ADMIT_SLICE:
                batch, self._queue = self._queue[:ADMIT_SLICE], self._queue[ADMIT_SLICE:]
            else:
                batch, self._queue = self._queue, []
            items: list[tuple[Record, tuple[int, int, int]]] = []
            admitted: list[tuple[int, Reception, frame.ReplayWindow]] = []
            record: Record
            snapshot: tuple[int, int, int]
            w: frame.ReplayWindow
            for rec in batch:
                a = self._admit_safe(rec)
                if type(a) is not str:
                    # the tuple: mypy does not narrow an exact-type test (kept: per frame; see ingest_many)
                    record, snapshot, w = a  # type: ignore[str-unpack, assignment]
                    admitted.append((len(items), rec, w))
                    items.append((record, snapshot))
            if not items:
                self._room.set()
                continue
            self._committing += len(items)
            # Do not wait for this commit here: admitting the next batch
            # overlaps the fsync of this one.
            try:
                fut = self.store.append_many(items)
            except StoreError as e:
                self._committing -= len(items)
                self._settle(items, admitted, [e] * len(items), None)
                continue
            t = asyncio.get_running_loop().create_task(self._finish(fut, items, admitted))
            self._finishers.add(t)
            t.add_done_callback(self._finishers.discard)
            if self._queue:  # a burst: let the rest of the gateway run between slices
                await asyncio.sleep(0)

    async def _finish(self, fut: asyncio.Future, items: list, admitted: list) -> None:
        try:
            results = await fut
        except StoreError as e:
            results = [e] * len(items)
        try:
            self._settle(items, admitted, results, None)
        finally:
            self._committing -= len(items)
            self._room.set()
            if not self._queue and not self._committing:
                self._idle.set()

    # ------------------------------------------------------------ the steps

    def _settle(self, items: list, admitted: list, results: list, verdicts: list[str] | None) -> None:
        """After the commit: count, tell the downlinks, or undo the window on failure."""
        stored = 0
        for (record, _snap), (pos, rec, w), res in zip(items, admitted, results):
            if type(res) is int:
                stored += 1
                self.accepted += 1
                if self.downlinks is not None:
                    try:
                        self.downlinks.on_uplink(record, rec)
                    except Exception:
                        log.exception("downlinks failed after an uplink", extra={"node": f"{record.node_id:08x}"})
                continue
            info = {"node": f"{record.node_id:08x}", "counter": record.counter}
            if isinstance(res, QueueFull):
                v = self._reject(QUEUE_FULL, rec.transport, None, info)
            else:
                w.forget(record.counter)
                v = self._reject(STORE_ERROR, rec.transport, str(res), info)
            if verdicts is not None:
                verdicts[pos] = v
        if stored:
            for fn in self.listeners:
                try:
                    fn(stored)
                except Exception:
                    log.exception("a pipeline listener failed")

    def _admit_safe(self, rec: Reception) -> str | tuple[Record, tuple[int, int, int], frame.ReplayWindow]:
        t = rec.transport
        self.received[t] = self.received.get(t, 0) + 1
        try:
            if self._locked and self._locked_out(rec):
                return self._reject(MIC_LOCKOUT, t, None, {"gateway": rec.gateway_id})
            return self._admit(rec)
        except Exception as e:  # a bug, not the input's fault: count, log, carry on
            self._count_reject(INTERNAL_ERROR, t)
            ok, suppressed = self._limiter.allow(INTERNAL_ERROR)
            if ok:
                log.error(
                    "internal error on a frame: %r",
                    e,
                    exc_info=True,
                    extra={"reason": INTERNAL_ERROR, "transport": t, "suppressed": suppressed},
                )
            return INTERNAL_ERROR

    def _admit(self, rec: Reception) -> str | tuple[Record, tuple[int, int, int], frame.ReplayWindow]:
        """Everything up to the store, synchronously: a verdict, or the record to store.

        The replay window moves here, before anything awaits, so a copy that
        arrives while the commit is in flight is already a duplicate.

        The compiled path (gateway/_fastadmit.c) does steps 1-4 and 6 in one
        call when it is sure (a valid, unencrypted frame of a known node);
        anything else is None and `_admit_reference` decides, so verdicts and
        messages are the reference's. A copy whose bytes already passed the
        MIC comes back without a body: the window says it is a duplicate.
        """
        fast = self._fast
        if fast is None:
            return self._admit_reference(rec)
        r = fast.admit(rec.raw)
        if r is None:
            return self._admit_reference(rec)
        node_id, counter, mtype, body, cbor = r
        w = self._windows.get(node_id)
        if w is None:
            w = self._window(node_id)
        verdict = w.check(counter)
        if verdict != frame.ACCEPT:
            return self._seen(verdict, w, node_id, counter, rec)
        if body is None:  # a copy of a frame whose commit failed (its counter forgotten): decode it again
            return self._admit_reference(rec)
        w.commit(counter)
        # the generation of the entry whose keys the C call just used (nothing ran in between)
        key_gen = getattr(self._registry.get(node_id), "key_gen", 0)
        record = Record(
            node_id,
            counter,
            mtype,
            expand.TYPE_NAMES[mtype],
            rec.rx_time,
            body,
            {},
            1,
            rec.rssi,
            rec.snr,
            rec.gateway_id,
            mtype == m.EVENT and is_alarm(mtype, body),
            cbor,
            key_gen,
        )
        return record, (node_id, w.top, w.mask), w

    def _admit_reference(self, rec: Reception) -> str | tuple[Record, tuple[int, int, int], frame.ReplayWindow]:
        """The Python admission path: the spec the compiled path follows, and its fallback."""
        raw = rec.raw
        if len(raw) > frame.MAX_LEN:
            return self._reject(OVERSIZED, rec.transport, f"{len(raw)} bytes, at most {frame.MAX_LEN}")
        try:
            f = frame.parse(raw)
        except frame.FrameError as e:
            return self._reject(MALFORMED, rec.transport, str(e))
        if f.downlink:
            return self._reject(
                MALFORMED, rec.transport, f"downlink type {f.mtype} on the uplink path", {"node": f"{f.node_id:08x}"}
            )
        node_id = f.node_id
        entry = self.registry.get(node_id)
        if entry is None:
            return self._reject(UNKNOWN_NODE, rec.transport, None, {"node": f"{node_id:08x}"})
        try:
            plain = frame.verify(entry.keys, f)
        except frame.BadMIC:
            self.bad_mic_by_node[node_id] = self.bad_mic_by_node.get(node_id, 0) + 1
            locked_s = self.mic_guard.bad_mic(rec.gateway_id, node_id)
            if locked_s and self._limiter.allow("mic_lockout_start")[0]:
                log.warning(
                    "too many bad MICs: locked out for %.0f s",
                    locked_s,
                    extra={"node": f"{node_id:08x}", "gateway": rec.gateway_id, "transport": rec.transport},
                )
            return self._reject(BAD_MIC, rec.transport, None, {"node": f"{node_id:08x}", "counter": f.counter})
        w = self._windows.get(node_id)
        if w is None:
            w = self._window(node_id)
        counter = f.counter
        verdict = w.check(counter)
        if verdict != frame.ACCEPT:
            return self._seen(verdict, w, node_id, counter, rec)
        mtype = f.mtype
        try:
            body, cbor = bodies.decode(mtype, plain)
        except m.MessageError as e:
            return self._reject(MALFORMED, rec.transport, str(e), {"node": f"{node_id:08x}", "counter": counter})
        w.commit(counter)
        # fields stay empty: named values are derived on the way out (the native format names
        # them from the body; the store fills `fields` for whoever asks for them)
        record = Record(
            node_id,
            counter,
            mtype,
            expand.TYPE_NAMES[mtype],
            rec.rx_time,
            body,
            {},
            1,
            rec.rssi,
            rec.snr,
            rec.gateway_id,
            is_alarm(mtype, body),
            cbor,
            getattr(entry, "key_gen", 0),
        )
        return record, (node_id, w.top, w.mask), w

    def _locked_out(self, rec: Reception) -> bool:
        raw = rec.raw
        if len(raw) < frame.HEADER_LEN:
            return False
        return self.mic_guard.is_locked(rec.gateway_id, int.from_bytes(raw[1:5], "big"))

    def _seen(self, verdict: int, w: frame.ReplayWindow, node_id: int, counter: int, rec: Reception) -> str:
        """A counter the window has seen: a copy to merge (DUPLICATE) or a replay (STALE)."""
        if verdict == frame.DUPLICATE:
            self.duplicates += 1
            gen = getattr(self._registry.get(node_id), "key_gen", 0)  # the key that verified this copy
            self.store.add_reception(node_id, counter, rec.rssi, rec.snr, rec.gateway_id, gen)
            if self.downlinks is not None:
                self.downlinks.on_duplicate(node_id, counter, rec)
            return DUPLICATE
        return self._reject(REPLAY, rec.transport, None, {"node": f"{node_id:08x}", "counter": counter, "top": w.top})

    def _window(self, node_id: int) -> frame.ReplayWindow:
        w = self._windows[node_id] = self.store.replay_window(node_id)
        return w

    def _count_reject(self, reason: str, transport: str) -> None:
        k = (reason, transport)
        self.rejected[k] = self.rejected.get(k, 0) + 1

    def _reject(
        self, reason: str, transport: str, detail: str | None = None, extra: dict[str, Any] | None = None
    ) -> str:
        self._count_reject(reason, transport)
        ok, suppressed = self._limiter.allow(reason)
        if ok:
            fields = {"reason": reason, "transport": transport, "suppressed": suppressed}
            if extra:
                fields.update(extra)
            log.info("frame rejected: %s%s", reason, f" ({detail})" if detail else "", extra=fields)
        return reason

    # ------------------------------------------------------------ figures

    def admission_counts(self) -> dict[str, int]:
        """What the compiled path did: "answered", "copy" (recognised by its bytes), "unsure" (left to Python)."""
        if self._fast is None:
            return {"answered": 0, "copy": 0, "unsure": 0}
        s = self._fast.stats()
        return {"answered": s["fast"], "copy": s["copies"], "unsure": s["unsure"]}

    def rejected_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (reason, _t), n in self.rejected.items():
            out[reason] = out.get(reason, 0) + n
        return out
