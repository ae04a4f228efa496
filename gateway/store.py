"""The gateway's one SQLite database: the durable record queue and everything
that must survive a crash with it.

What it holds (one file, WAL mode, `synchronous=FULL`, so a committed
transaction survives `kill -9` and power loss):

- `records`: verified uplinks waiting for the upstream (oldest first);
- `quarantine`: records of batches the upstream refused with a 4xx, kept for
  inspection, never resent automatically;
- `windows` and `window_log`: the uplink replay window of every node, written
  **in the same transaction** as the records it admitted, so after a crash a
  frame is either stored and known as seen, or neither: exactly once. A
  group appends the windows it moved to `window_log` as one row (a packed
  array: one insert, where an upsert per node cost about 1 µs a record);
  every WINDOW_LOG_MAX windows logged, the log is folded into `windows` (an
  upsert per node changed since) in the group's own transaction. A node's
  window is the `windows` row overlaid with the log in order; a re-key logs
  a tombstone (top -1);
- `downlinks` and `dl_counters`: the downlink queue and the downlink frame
  counter of every node (a counter is committed before the frame is sent);
- `nodes`: node state (last seen, radio, firmware, last readings, open alarms),
  a cache of what the records said, flushed every `STATE_FLUSH_S`;
- `meta`: lifetime counters (evicted, quarantined).

Group commit: `append` only queues the record; one writer (a dedicated
thread, so an fsync never blocks the event loop) commits everything queued so
far in one transaction with one fsync, then wakes every caller of that group.
While a commit is in flight the next group gathers, so the commit rate adapts
to the disk: a slow fsync means bigger groups, not fewer frames per second.

Bound and eviction policy, when `max_records` are queued and more arrive:
1. the oldest routine telemetry (LIGHT, IRRIGATION, STATUS) is deleted first;
2. then the oldest other records (HELLO, CMD_ACK, events below alarm);
3. alarms (EVENT with severity >= alarm) are never evicted: an alarm is always
   stored, even past the bound (they are rare and each matters);
4. a routine record that finds only alarms in the queue is itself dropped
   (`append` raises QueueFull).
Every evicted or dropped record is counted (`evicted_total`, persisted).

Limits (named, all overridable through `Store.open`):
- DEFAULT_MAX_RECORDS = 1,000,000 records (about 110 bytes each on disk for a
  LIGHT report: ~110 MB; a Raspberry Pi SD card holds it; an outage of a day
  for 10,000 nodes reporting every 15 minutes is 960,000 records);
- DEFAULT_GROUP_MAX = 4096 records per transaction (bounds commit latency);
- DEFAULT_QUARANTINE_MAX = 100,000 records (oldest dropped beyond, counted);
- RECENT_MAX = 65,536 committed records not yet delivered kept in memory
  (the pipeline's Records, ~0.85 kB each with their decoded bodies: ~55 MB
  at most, while that many wait), so the upstream gets them without a
  read-back; older ones (a backlog, or what was queued before a restart)
  are read back from the database. A record leaves memory when delivered,
  quarantined, evicted or pushed out. (A leaner form -- the stored row,
  ~0.35 kB -- was measured and rejected: rebuilding a Record from it costs
  1.2 µs, as much as reading it back, which is nearly all that rebuild;
  bench/README.md, gateway.py);
- receptions of a frame heard by several radios are merged into the
  record while it is its node's newest one and still waits for the
  upstream (copies arrive within milliseconds of each other; a copy that
  comes after the node's next frame is only counted);
- STATE_FLUSH_S = 5 s: node state may be up to this old after a crash
  (records and replay windows never are);
- WINDOW_LOG_MAX = 65,536 windows in the log before it is folded (~1.5 MB;
  read at start in a few milliseconds).
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
import json
import logging
import sqlite3
import time
from itertools import chain, islice
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

import cbor2

from gateway.model import Downlink, Record
from protocol import expand
from protocol import frame
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.store")

DEFAULT_MAX_RECORDS = 1_000_000
DEFAULT_GROUP_MAX = 4096
DEFAULT_QUARANTINE_MAX = 100_000
RECENT_MAX = 65536
STATE_FLUSH_S = 5.0
WINDOW_LOG_MAX = 65536
RESPONSE_TEXT_MAX = 4096  # bytes of a refusing upstream's answer kept with a quarantined batch

# Eviction classes: lower goes first.
PRIO_ROUTINE = 0  # LIGHT, IRRIGATION, STATUS
PRIO_OTHER = 1  # HELLO, CMD_ACK, events below alarm
PRIO_ALARM = 2  # never evicted
_ROUTINE = frozenset((m.LIGHT, m.IRRIGATION, m.STATUS))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    node_id INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    mtype INTEGER NOT NULL,
    prio INTEGER NOT NULL,
    rx_time REAL NOT NULL,
    receptions INTEGER NOT NULL,
    best_rssi REAL,
    best_snr REAL,
    gateway_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    batch INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    mtype INTEGER NOT NULL,
    prio INTEGER NOT NULL,
    rx_time REAL NOT NULL,
    receptions INTEGER NOT NULL,
    best_rssi REAL,
    best_snr REAL,
    gateway_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine_batches (
    batch INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    records INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    node_id INTEGER PRIMARY KEY,
    top INTEGER NOT NULL,
    mask INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS window_log (
    id INTEGER PRIMARY KEY,
    windows BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dl_counters (
    node_id INTEGER PRIMARY KEY,
    counter INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS downlinks (
    id INTEGER PRIMARY KEY,
    node_id INTEGER NOT NULL,
    mtype INTEGER NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    command_id INTEGER,
    attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    result INTEGER,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS downlinks_node_state ON downlinks (node_id, state);
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_RECORD_COLS = "seq, node_id, counter, mtype, prio, rx_time, receptions, best_rssi, best_snr, gateway_id, body"
_INSERT_RECORD = f"INSERT INTO records ({_RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_UPSERT_WINDOW = ("INSERT INTO windows (node_id, top, mask) VALUES (?,?,?) "
                  "ON CONFLICT (node_id) DO UPDATE SET top = excluded.top, mask = excluded.mask")
_UPDATE_RECEPTION = "UPDATE records SET receptions = ?, best_rssi = ?, best_snr = ?, gateway_id = ? WHERE seq = ?"
_DL_COLS = "id, node_id, mtype, body, created, expires, command_id, attempts, state, result, updated"

DOWNLINK_OPEN_STATES = ("queued", "sent")


class StoreError(Exception):
    """The store could not do what was asked; nothing was half done."""


class StoreClosed(StoreError):
    pass


class QueueFull(StoreError):
    """A routine record dropped on arrival: the queue is full of alarms (see the policy above)."""


def priority(record: Record) -> int:
    if record.alarm:
        return PRIO_ALARM
    return PRIO_ROUTINE if record.mtype in _ROUTINE else PRIO_OTHER


def is_alarm(mtype: int, body: dict[int, Any]) -> bool:
    """An EVENT the node sends confirmed (SPEC §6): severity alarm or critical."""
    return mtype == m.EVENT and body.get(1, 0) >= m.SEV_ALARM


def _record_from_row(row: tuple, named: bool = True) -> tuple[int, Record]:
    seq, node_id, counter, mtype, prio, rx_time, receptions, rssi, snr, gw, body = row
    b = cbor2.loads(body)
    return seq, Record(node_id, counter, mtype, expand.TYPE_NAMES[mtype], rx_time, b,
                       expand.expand(mtype, b) if named else {}, receptions, rssi, snr, gw, prio == PRIO_ALARM, body)


def _downlink_from_row(row: tuple) -> Downlink:
    id_, node_id, mtype, body, created, expires, command_id, attempts, state, result, _updated = row
    return Downlink(id=id_, node_id=node_id, mtype=mtype, body=cbor2.loads(body), created=created,
                    expires=expires, command_id=command_id, attempts=attempts, state=state, result=result)


class _Chunk:
    """The records of one append_many call on their way to the disk; a group may take part of one.

    Records and windows are kept as the caller gave them (no tuple per
    record); `results` fill in slices as groups commit, and the future
    completes when the last record is decided.
    """

    __slots__ = ("fut", "seq0", "items", "results", "start", "left")

    def __init__(self, fut: asyncio.Future, seq0: int, items: list[tuple[Record, tuple[int, int, int] | None]]) -> None:
        self.fut = fut
        self.seq0 = seq0
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.start = 0  # items before this one are in a group already
        self.left = len(items)

    def settle(self, start: int, n: int, value: Any = None) -> None:
        """Decide items [start, start + n): their seqs, or `value` (an exception) for all."""
        if value is None:
            self.results[start:start + n] = range(self.seq0 + start, self.seq0 + start + n)
        else:
            self.results[start:start + n] = [value] * n
        self.done(n)

    def done(self, n: int) -> None:
        """`n` more items have their result in `results`."""
        self.left -= n
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(self.results)


class Store:
    """Open with `await Store.open(path)`; close with `await store.close()`.

    Mutations are coroutines that return once committed. Reads are plain
    methods on a second connection (WAL readers never wait for the writer)
    and see every transaction whose coroutine has returned.
    """

    def __init__(self, path: Path, max_records: int, group_max: int, quarantine_max: int,
                 state_flush_s: float) -> None:
        self.path = Path(path)
        self.max_records = max_records
        self.group_max = group_max
        self.quarantine_max = quarantine_max
        self.state_flush_s = state_flush_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumeau-store")
        self._w: sqlite3.Connection | None = None  # used only in the pool's thread
        self._r: sqlite3.Connection | None = None  # used only on the event loop's thread
        self._chunks: list[_Chunk] = []  # appends waiting for the writer, oldest first
        self._pending = 0  # records in those chunks not yet taken by a group
        self._taken_upto = 0  # every seq up to this one was handed to the writer (set by _load)
        self._updates: dict[int, Record] = {}  # seq -> record whose receptions changed after it was written
        self._ops: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._closed = False
        self._next_seq = 1
        self._next_dl_id = 1
        self._count = 0  # records queued (maintained by the writer thread)
        # node -> (seq, record) of its newest record: where copies of a frame are merged
        self._latest: dict[int, tuple[int, Record]] = {}
        # committed, undelivered records in memory, by seq: next_batch reads no row at or above
        # _mem_floor; older ones (from before a restart, or pushed out of memory by RECENT_MAX)
        # are read back from the database. _order holds their seqs ascending from _head, with
        # the seqs of records gone since (delivered, quarantined, evicted) left in place until
        # the head passes them: next_batch(after) finds its start by bisection, so records
        # handed out but not yet deleted are never walked over again
        self._ready: dict[int, Record] = {}
        self._order: list[int] = []
        self._head = 0
        self._mem_floor = 1
        self._committed_upto = 0  # every seq up to this one is committed, or failed for good
        self._windows: dict[int, tuple[int, int, int]] = {}  # node -> (node, top, mask)
        # the writer thread's own: committed windows, those logged since the last fold, log size
        self._durable: dict[int, tuple[int, int, int]] = {}
        self._logged: set[int] = set()
        self._log_size = 0
        self._wpending: list[list[tuple[int, int, int]]] = []  # logged in the transaction under way
        self._states: dict[int, dict[str, Any]] = {}
        self._dirty: set[int] = set()
        # lifetime counters (persisted in meta), plus this process's commit figures
        self.evicted_total = 0
        self.quarantined_total = 0
        self.commits = 0
        self.committed_records = 0
        self.commit_seconds = 0.0

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: str | Path, *, max_records: int = DEFAULT_MAX_RECORDS,
                   group_max: int = DEFAULT_GROUP_MAX, quarantine_max: int = DEFAULT_QUARANTINE_MAX,
                   state_flush_s: float = STATE_FLUSH_S) -> "Store":
        if max_records < 1 or group_max < 1 or quarantine_max < 0:
            raise ValueError("store limits must be positive")
        self = cls(Path(path), max_records, group_max, quarantine_max, state_flush_s)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._open_writer)
        except sqlite3.Error as e:
            self._pool.shutdown(wait=False)
            raise StoreError(f"{path}: cannot open the database: {e}") from e
        self._r = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._r.execute("PRAGMA query_only = 1")
        self._load()
        self._writer = asyncio.create_task(self._run_writer(), name="lumeau-store-writer")
        if state_flush_s > 0:
            self._flusher = asyncio.create_task(self._run_flusher(), name="lumeau-store-state")
        return self

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL needed")
        c.execute("PRAGMA synchronous = FULL")
        c.executescript(_SCHEMA)
        self._count = c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        self._w = c

    def _load(self) -> None:
        r = self._r
        assert r is not None
        top = r.execute("SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM records "
                        "UNION ALL SELECT MAX(seq) FROM quarantine)").fetchone()[0]
        self._next_seq = (top or 0) + 1
        # what is on disk now is read from there
        self._mem_floor = self._next_seq
        self._taken_upto = self._committed_upto = self._next_seq - 1
        self._next_dl_id = (r.execute("SELECT MAX(id) FROM downlinks").fetchone()[0] or 0) + 1
        windows = {row[0]: row for row in r.execute("SELECT node_id, top, mask FROM windows")}
        logged = set()
        for (blob,) in r.execute("SELECT windows FROM window_log ORDER BY id"):
            flat = array("q")
            flat.frombytes(blob)
            for i in range(0, len(flat), 3):
                node = flat[i]
                logged.add(node)
                if flat[i + 1] < 0:  # re-keyed: forgotten
                    windows.pop(node, None)
                else:
                    windows[node] = (node, flat[i + 1], flat[i + 2])
            self._log_size += len(flat) // 3
        self._windows = windows
        self._durable = dict(windows)
        self._logged = logged
        self._states = {n: json.loads(s) for n, s in r.execute("SELECT node_id, state FROM nodes")}
        meta = dict(r.execute("SELECT name, value FROM meta"))
        self.evicted_total = meta.get("evicted", 0)
        self.quarantined_total = meta.get("quarantined", 0)

    async def close(self) -> None:
        """Commit everything queued, flush node state, close the database."""
        if self._closed:
            return
        if self._flusher is not None:
            self._flusher.cancel()
        if self._dirty:
            try:
                await self._submit(self._state_writer())
            except StoreError as e:
                log.warning("node state not flushed at close: %s", e)
        self._closed = True
        await self.drain()
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close_writer)
        self._pool.shutdown(wait=True)
        if self._r is not None:
            self._r.close()
            self._r = None

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        while self._chunks or self._ops or self._updates or not self._idle.is_set():
            await self._idle.wait()
            await asyncio.sleep(0)

    # ------------------------------------------------------------ records

    async def append(self, record: Record, window: tuple[int, int, int] | None = None) -> int:
        """Store a verified record durably; return its sequence number once committed.

        `window` is the node's replay window after admitting this record,
        `(node_id, top, mask)`; it is persisted in the same transaction. Raises
        QueueFull if the eviction policy dropped this record on arrival, and
        StoreError if the transaction failed (nothing of it was stored).
        """
        result = (await self.append_many([(record, window)]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(self, items: list[tuple[Record, tuple[int, int, int] | None]]) -> "asyncio.Future[list]":
        """Queue several records at once; the future gives, per item, its seq or the exception.

        The records join the next group commit (they may span two if there are
        more than `group_max`); the future completes when all are decided.
        Windows are taken in order: give each record the window right after it.
        """
        if self._closed:
            raise StoreClosed("store is closed")
        fut = asyncio.get_running_loop().create_future()
        if not items:
            fut.set_result([])
            return fut
        items = list(items)
        seq = self._next_seq
        self._next_seq = seq + len(items)
        self._chunks.append(_Chunk(fut, seq, items))
        self._pending += len(items)
        latest = self._latest
        windows = self._windows
        note = self._note_state
        for record, window in items:
            latest[record.node_id] = (seq, record)
            seq += 1
            if window is not None:
                windows[window[0]] = window
            note(record)
        self._wake.set()
        return fut

    def add_reception(self, node_id: int, counter: int, rssi: float | None, snr: float | None,
                      gateway_id: str) -> bool:
        """Merge another radio's reception of a stored frame: count it, keep the best RSSI.

        Returns False when the frame's record can no longer take it (not its
        node's newest record any more, delivered, quarantined, its commit
        failed, or read back from the database): the copy is then only
        counted by the caller.
        Does not wait: the change is written with the next group (it is
        reception metadata, not an acknowledged record).
        """
        entry = self._latest.get(node_id)
        if entry is None:
            return False
        seq, rec = entry
        if rec.counter != counter or seq < self._mem_floor or (seq <= self._committed_upto and seq not in self._ready):
            return False
        rec.receptions += 1
        if rssi is not None and (rec.best_rssi is None or rssi > rec.best_rssi):
            rec.best_rssi = rssi
            rec.best_snr = snr
            rec.gateway_id = gateway_id
        if seq <= self._taken_upto:  # already written: rewrite its reception fields in the next group
            self._updates[seq] = rec
            self._wake.set()
        return True

    def _forget(self, seqs: Iterable[int]) -> None:
        """Drop committed records from memory (delivered, quarantined, evicted): no more
        reception merges, no more batches."""
        ready, updates = self._ready, self._updates
        for s in seqs:
            updates.pop(s, None)
            ready.pop(s, None)

    def next_batch(self, max_records: int, after: int = 0, named: bool = True) -> list[tuple[int, Record]]:
        """The oldest queued records (seq > after), in arrival order: per-node order is kept.

        `named`: fill `Record.fields` (protocol.expand); the native format
        names values from the body itself and passes False.
        """
        out: list[tuple[int, Record]] = []
        floor = self._mem_floor
        if after + 1 < floor:  # the oldest ones are only on disk
            assert self._r is not None
            rows = self._r.execute(f"SELECT {_RECORD_COLS} FROM records WHERE seq > ? AND seq < ? "
                                   "ORDER BY seq LIMIT ?", (after, floor, max_records)).fetchall()
            out = [_record_from_row(row, named) for row in rows]
            if len(out) >= max_records:
                return out
        ready, order = self._ready, self._order
        for seq in islice(order, bisect.bisect_right(order, after, self._head), None):
            rec = ready.get(seq)
            if rec is not None:
                if named and not rec.fields:
                    rec.fields = expand.expand(rec.mtype, rec.body)
                out.append((seq, rec))
                if len(out) >= max_records:
                    break
        return out

    def _trim_order(self) -> None:
        """Move _head past seqs no longer in memory; drop them once they are half of _order."""
        order, ready, head = self._order, self._ready, self._head
        while head < len(order) and order[head] not in ready:
            head += 1
        if head > 1024 and head * 2 > len(order):
            del order[:head]
            head = 0
        self._head = head

    async def delete(self, seqs: Iterable[int]) -> int:
        """Remove records the upstream answered 2xx for; returns how many were still queued."""
        seqs = list(seqs)
        runs = _runs(seqs)

        def op(c: sqlite3.Connection) -> int:
            before = c.total_changes
            c.executemany("DELETE FROM records WHERE seq BETWEEN ? AND ?", runs)
            n = c.total_changes - before
            self._count -= n
            return n

        n = await self._submit(op)
        self._forget(seqs)  # delivered: copies heard from now on are only counted
        return n

    async def quarantine(self, seqs: Iterable[int], status: int, response_text: str) -> int:
        """Move the records of a refused batch (4xx) to the quarantine; returns the batch id."""
        seqs = list(seqs)
        text = response_text.encode("utf-8", "replace")[:RESPONSE_TEXT_MAX].decode("utf-8", "ignore")

        def op(c: sqlite3.Connection) -> int:
            batch = (c.execute("SELECT MAX(batch) FROM quarantine_batches").fetchone()[0] or 0) + 1
            c.execute("CREATE TEMP TABLE IF NOT EXISTS q_seqs (seq INTEGER PRIMARY KEY)")
            c.execute("DELETE FROM q_seqs")
            c.executemany("INSERT OR IGNORE INTO q_seqs VALUES (?)", [(s,) for s in seqs])
            cols = _RECORD_COLS.replace("seq, ", "")
            moved = c.execute(f"INSERT INTO quarantine (seq, batch, {cols}) SELECT seq, ?, {cols} FROM records "
                              "WHERE seq IN (SELECT seq FROM q_seqs)", (batch,)).rowcount
            c.execute("DELETE FROM records WHERE seq IN (SELECT seq FROM q_seqs)")
            c.execute("INSERT INTO quarantine_batches VALUES (?,?,?,?,?)", (batch, time.time(), status, text, moved))
            self._count -= moved
            self.quarantined_total += moved
            self._bump(c, "quarantined", moved)
            over = c.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] - self.quarantine_max
            if over > 0:
                c.execute("DELETE FROM quarantine WHERE seq IN (SELECT seq FROM quarantine ORDER BY seq LIMIT ?)",
                          (over,))
                c.execute("DELETE FROM quarantine_batches WHERE batch NOT IN (SELECT DISTINCT batch FROM quarantine)")
                self._bump(c, "quarantine_dropped", over)
            return batch

        batch = await self._submit(op)
        self._forget(seqs)  # a quarantined record no longer takes reception updates
        return batch

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent quarantined batches, newest first, with their records."""
        assert self._r is not None
        out = []
        for batch, t, status, response, n in self._r.execute(
                "SELECT batch, time, status, response, records FROM quarantine_batches "
                "ORDER BY batch DESC LIMIT ?", (limit,)).fetchall():
            cols = _RECORD_COLS
            recs = [_record_from_row(row) for row in self._r.execute(
                f"SELECT {cols} FROM quarantine WHERE batch = ? ORDER BY seq", (batch,))]
            out.append({"batch": batch, "time": t, "status": status, "response": response, "count": n,
                        "records": recs})
        return out

    def quarantine_count(self) -> int:
        assert self._r is not None
        return self._r.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]

    def count(self) -> int:
        """Records queued and committed (appends still in flight not included)."""
        return self._count

    def size_bytes(self) -> int:
        """Size of the database and its write-ahead log on disk."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def oldest_rx_time(self) -> float | None:
        """Receive time of the oldest queued record: the upstream lag is now minus this."""
        assert self._r is not None
        row = self._r.execute("SELECT rx_time FROM records ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ replay windows

    def window(self, node_id: int) -> tuple[int, int] | None:
        """(top, mask) of the node's uplink replay window, or None for a node never heard."""
        w = self._windows.get(node_id)
        return None if w is None else (w[1], w[2])

    def windows(self) -> dict[int, tuple[int, int]]:
        return {n: (w[1], w[2]) for n, w in self._windows.items()}

    async def reset_node(self, node_id: int) -> None:
        """Forget a node's counters (replay window, downlink counter): after it was re-keyed.

        SPEC §2: a new root key may restart the counters at 0.
        """
        def op(c: sqlite3.Connection) -> None:
            # a tombstone after whatever the log holds for the node; the fold deletes its row
            self._log_windows(c, [(node_id, -1, 0)])
            c.execute("DELETE FROM dl_counters WHERE node_id = ?", (node_id,))

        self._windows.pop(node_id, None)
        # its records stay queued, but its counters start again: copies must not merge into them
        self._latest.pop(node_id, None)
        await self._submit(op)

    # ------------------------------------------------------------ node state

    def _note_state(self, rec: Record) -> None:
        st = self._states.get(rec.node_id)
        if st is None:
            st = self._states[rec.node_id] = {"readings": {}, "open_alarms": {}}
        last = st.get("_last")  # the newest record, folded into last_seen & co when the state is read
        if last is None or rec.rx_time >= last.rx_time:
            st["_last"] = rec
        mtype = rec.mtype
        if mtype == m.HELLO:  # rare: expanded now
            st["firmware"] = rec.body.get(0)
            st["hello"] = expand.expand(mtype, rec.body)
        elif mtype == m.EVENT:
            active = rec.body.get(4)
            if active is not None:
                key = f"{rec.body[0]}:{rec.body.get(5, 0)}"
                if active:
                    st["open_alarms"][key] = {"fields": expand.expand(mtype, rec.body), "since": rec.rx_time,
                                              "counter": rec.counter}
                else:
                    st["open_alarms"].pop(key, None)
        else:  # the frequent case: keep the record, name its fields only when someone looks
            st["readings"][rec.kind] = rec
        self._dirty.add(rec.node_id)

    @staticmethod
    def _plain(st: dict[str, Any]) -> dict[str, Any]:
        """A node state as JSON-able data (readings named now)."""
        out = dict(st)
        last = out.pop("_last", None)
        if last is not None and last.rx_time >= out.get("last_seen", 0):
            out.update(last_seen=last.rx_time, rssi=last.best_rssi, snr=last.best_snr, gateway_id=last.gateway_id,
                       last_counter=last.counter)
        out["readings"] = {k: {"fields": expand.expand(v.mtype, v.body), "rx_time": v.rx_time}
                           if isinstance(v, Record) else v for k, v in st["readings"].items()}
        return out

    def node_state(self, node_id: int) -> dict[str, Any] | None:
        st = self._states.get(node_id)
        return json.loads(json.dumps(self._plain(st))) if st is not None else None

    def node_ids(self) -> list[int]:
        return list(self._states)

    def _state_writer(self) -> Callable[[sqlite3.Connection], None]:
        rows = [(n, json.dumps(self._plain(self._states[n]), separators=(",", ":"))) for n in self._dirty]
        self._dirty = set()

        def op(c: sqlite3.Connection) -> None:
            c.executemany("INSERT INTO nodes (node_id, state) VALUES (?, ?) "
                          "ON CONFLICT (node_id) DO UPDATE SET state = excluded.state", rows)

        return op

    async def flush_state(self) -> None:
        if self._dirty:
            await self._submit(self._state_writer())

    async def _run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.state_flush_s)
            try:
                await self.flush_state()
            except StoreError as e:
                log.warning("node state flush failed: %s", e)

    # ------------------------------------------------------------ downlinks

    async def add_downlink(self, node_id: int, mtype: int, body: dict[int, Any], expires: float,
                           command_id: int | None = None, now: float | None = None) -> Downlink:
        """Queue a downlink; a COMMAND without an id gets its row id as command id."""
        now = time.time() if now is None else now
        id_ = self._next_dl_id
        self._next_dl_id += 1
        if mtype == m.COMMAND and command_id is None:
            command_id = id_ & 0xFFFFFFFF
            body = dict(body)
            body[0] = command_id
        dl = Downlink(id=id_, node_id=node_id, mtype=mtype, body=body, created=now, expires=expires,
                      command_id=command_id)
        row = (id_, node_id, mtype, cbor2.dumps(body, canonical=True), now, expires, command_id, 0, "queued",
               None, now)
        await self._submit(lambda c: c.execute(f"INSERT INTO downlinks ({_DL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                               row))
        return dl

    async def update_downlink(self, dl: Downlink, now: float | None = None) -> None:
        now = time.time() if now is None else now
        row = (dl.attempts, dl.state, dl.result, now, dl.id)
        await self._submit(lambda c: c.execute(
            "UPDATE downlinks SET attempts = ?, state = ?, result = ?, updated = ? WHERE id = ?", row))

    def downlink(self, id_: int) -> Downlink | None:
        assert self._r is not None
        row = self._r.execute(f"SELECT {_DL_COLS} FROM downlinks WHERE id = ?", (id_,)).fetchone()
        return _downlink_from_row(row) if row else None

    def downlinks(self, node_id: int | None = None, states: Iterable[str] | None = None,
                  limit: int = 1000) -> list[Downlink]:
        """Downlinks oldest first, optionally of one node and in some states."""
        assert self._r is not None
        where, args = [], []
        if node_id is not None:
            where.append("node_id = ?")
            args.append(node_id)
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = f"SELECT {_DL_COLS} FROM downlinks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [_downlink_from_row(r) for r in self._r.execute(sql, args)]

    def downlink_counts(self) -> dict[str, int]:
        assert self._r is not None
        return dict(self._r.execute("SELECT state, COUNT(*) FROM downlinks GROUP BY state").fetchall())

    async def next_downlink_counter(self, node_id: int) -> int:
        """The next downlink frame counter of a node, committed before it is returned.

        A crash after this returns skips a counter, never reuses one. The gateway's
        counters stop below frame.TOOL_COUNTER_BASE (2^31): the upper half belongs to
        commissioning tools over BLE, with its own replay window on the node (SPEC §4).
        """
        def op(c: sqlite3.Connection) -> int:
            row = c.execute("INSERT INTO dl_counters (node_id, counter) VALUES (?, 0) "
                            "ON CONFLICT (node_id) DO UPDATE SET counter = counter + 1 RETURNING counter",
                            (node_id,)).fetchone()
            if row[0] >= frame.TOOL_COUNTER_BASE:
                raise StoreError(f"node {node_id:08x}: downlink counter exhausted, the node must be re-keyed")
            return row[0]

        return await self._submit(op)

    # ------------------------------------------------------------ the writer

    async def _submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn(connection)` inside the next group's transaction (in a savepoint of its own)."""
        if self._closed:
            raise StoreClosed("store is closed")
        fut = asyncio.get_running_loop().create_future()
        self._ops.append((fn, fut))
        self._wake.set()
        return await fut

    def _bump(self, c: sqlite3.Connection, name: str, n: int) -> None:
        c.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                  "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, n))

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not (self._chunks or self._ops or self._updates):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            taken = self._take(self.group_max)
            ops, self._ops = self._ops, []
            updates, self._updates = self._updates, {}
            t0 = time.perf_counter()
            try:
                # Rows are built here, on the loop's thread, so records can change
                # (receptions) while the writer thread works on copies.
                rows = []
                windows = {}
                dumps = cbor2.dumps
                routine = _ROUTINE
                for chunk, start, n in taken:
                    seq = chunk.seq0 + start
                    for r, w in chunk.items[start:start + n]:
                        mtype = r.mtype
                        rows.append((seq, r.node_id, r.counter, mtype,  # priority(r), inlined: once per record
                                     PRIO_ALARM if r.alarm else PRIO_ROUTINE if mtype in routine else PRIO_OTHER,
                                     r.rx_time, r.receptions, r.best_rssi, r.best_snr, r.gateway_id,
                                     r.cbor if r.cbor is not None else dumps(r.body)))
                        seq += 1
                        if w is not None:
                            windows[w[0]] = w
                upd = [(r.receptions, r.best_rssi, r.best_snr, r.gateway_id, s) for s, r in updates.items()]
                dropped, evicted, results = await loop.run_in_executor(
                    self._pool, self._commit, rows, list(windows.values()), upd, [fn for fn, _ in ops])
            except BaseException as e:  # the whole group failed: nothing of it is stored
                err = e if isinstance(e, StoreError) else StoreError(f"commit failed: {e!r}")
                for chunk, start, n in taken:
                    chunk.settle(start, n, err)
                if taken:
                    self._committed_upto = max(self._committed_upto, taken[-1][0].seq0 + taken[-1][1] + taken[-1][2] - 1)
                for _fn, f in ops:
                    if not f.done():
                        f.set_exception(err)
                if isinstance(e, asyncio.CancelledError):
                    raise
                log.error("store commit failed: %r", e)
                continue
            self.commits += 1
            self.committed_records += len(rows) - len(dropped)
            self.commit_seconds += time.perf_counter() - t0
            if evicted:
                self._forget(evicted)
            if taken:
                last, start, n = taken[-1]
                self._committed_upto = max(self._committed_upto, last.seq0 + start + n - 1)
            ready, order, floor = self._ready, self._order, self._mem_floor
            for chunk, start, n in taken:
                seq0 = chunk.seq0 + start
                recs = chunk.items[start:start + n]
                if seq0 >= floor and not dropped:
                    # the common case: every record of the slice is committed and stays in memory
                    ready.update(zip(range(seq0, seq0 + n), [r for r, _w in recs]))
                    order.extend(range(seq0, seq0 + n))
                    chunk.settle(start, n)
                    continue
                res = chunk.results
                for i, (r, _w) in enumerate(recs):
                    seq = seq0 + i
                    if seq in dropped:
                        res[start + i] = QueueFull("queue full of alarms: routine record dropped")
                    else:
                        res[start + i] = seq
                        if seq >= floor:
                            ready[seq] = r
                            order.append(seq)
                chunk.done(n)
            self._trim_order()
            if len(ready) > RECENT_MAX:  # memory is full: the oldest are read back from the database
                head = self._head
                while len(ready) > RECENT_MAX:
                    seq = order[head]
                    head += 1
                    if ready.pop(seq, None) is not None:
                        self._mem_floor = seq + 1
                self._head = head
                self._trim_order()
            for (_fn, f), (ok, value) in zip(ops, results):
                if f.done():
                    continue
                if ok:
                    f.set_result(value)
                else:
                    f.set_exception(value if isinstance(value, StoreError) else StoreError(str(value)))

    def _take(self, limit: int) -> list[tuple[_Chunk, int, int]]:
        """Up to `limit` queued records for the next group, oldest first: (chunk, start, n) slices."""
        taken = []
        chunks = self._chunks
        while chunks and limit > 0:
            chunk = chunks[0]
            n = min(limit, len(chunk.items) - chunk.start)
            taken.append((chunk, chunk.start, n))
            chunk.start += n
            limit -= n
            self._pending -= n
            self._taken_upto = chunk.seq0 + chunk.start - 1
            if chunk.start == len(chunk.items):
                chunks.pop(0)
        return taken

    def _commit(self, rows: list[tuple], windows: list[tuple[int, int, int]], updates: list[tuple],
                ops: list[Callable[[sqlite3.Connection], Any]]) -> tuple[set[int], list[int], list[tuple[bool, Any]]]:
        c = self._w
        assert c is not None
        count = self._count
        self._wpending = []
        folded = None
        c.execute("BEGIN IMMEDIATE")
        try:
            dropped: set[int] = set()
            evicted: list[int] = []
            if rows:
                dropped, evicted = self._make_room(c, rows)
                if dropped:
                    rows = [r for r in rows if r[0] not in dropped]
                c.executemany(_INSERT_RECORD, rows)
                self._count += len(rows)
            if windows:
                self._log_windows(c, windows)
            if updates:
                c.executemany(_UPDATE_RECEPTION, updates)
            results: list[tuple[bool, Any]] = []
            for fn in ops:
                mark = len(self._wpending)
                c.execute("SAVEPOINT op")
                try:
                    results.append((True, fn(c)))
                    c.execute("RELEASE op")
                except Exception as e:  # one failing operation fails alone
                    c.execute("ROLLBACK TO op")
                    c.execute("RELEASE op")
                    del self._wpending[mark:]
                    results.append((False, e))
            pending = self._wpending
            if pending and self._log_size + sum(map(len, pending)) >= WINDOW_LOG_MAX:
                folded = self._fold(c, pending)
            c.execute("COMMIT")
        except BaseException:
            self._count = count
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        # committed: what the database now says the windows are
        if folded is not None:
            self._durable, self._logged, self._log_size = folded, set(), 0
        else:
            durable, logged = self._durable, self._logged
            for ws in pending:
                for w in ws:
                    durable[w[0]] = w
                    logged.add(w[0])
                self._log_size += len(ws)
        return dropped, evicted, results

    def _log_windows(self, c: sqlite3.Connection, windows: list[tuple[int, int, int]]) -> None:
        """Append windows (node, top, mask; top -1: forget the node) to the log (writer thread,
        inside the group's transaction)."""
        # int64 triples: node ids and tops are below 2**32, masks hold REPLAY_WINDOW (32) bits
        c.execute("INSERT INTO window_log (windows) VALUES (?)", (array("q", chain.from_iterable(windows)).tobytes(),))
        self._wpending.append(windows)

    def _fold(self, c: sqlite3.Connection,
              pending: list[list[tuple[int, int, int]]]) -> dict[int, tuple[int, int, int]]:
        """Write every window logged since the last fold into `windows` and empty the log;
        returns the committed windows as they will be once this transaction commits."""
        merged = dict(self._durable)
        nodes = set(self._logged)
        for ws in pending:
            for w in ws:
                merged[w[0]] = w
                nodes.add(w[0])
        ups, gone = [], []
        for n in nodes:
            w = merged.get(n)
            if w is None or w[1] < 0:  # forgotten (re-keyed), before or after a restart
                gone.append((n,))
                merged.pop(n, None)
            else:
                ups.append(w)
        c.executemany(_UPSERT_WINDOW, ups)
        c.executemany("DELETE FROM windows WHERE node_id = ?", gone)
        c.execute("DELETE FROM window_log")
        return merged

    def _make_room(self, c: sqlite3.Connection, rows: list[tuple]) -> tuple[set[int], list[int]]:
        """Apply the eviction policy; returns (arriving seqs dropped, queued seqs evicted)."""
        excess = self._count + len(rows) - self.max_records
        if excess <= 0:
            return set(), []
        gone: list[int] = []
        for prio in (PRIO_ROUTINE, PRIO_OTHER):
            if excess - len(gone) <= 0:
                break
            gone += [r[0] for r in c.execute("DELETE FROM records WHERE seq IN (SELECT seq FROM records "
                                             "WHERE prio = ? ORDER BY seq LIMIT ?) RETURNING seq",
                                             (prio, excess - len(gone))).fetchall()]
        evicted = len(gone)
        self._count -= evicted
        dropped: set[int] = set()
        left = excess - evicted
        if left > 0:  # only alarms are queued: drop arriving non-alarms, lowest class and oldest first
            for prio in (PRIO_ROUTINE, PRIO_OTHER):
                for r in rows:
                    if left <= 0:
                        break
                    if r[4] == prio:
                        dropped.add(r[0])
                        left -= 1
        if evicted or dropped:
            self._bump(c, "evicted", evicted + len(dropped))
            self.evicted_total += evicted + len(dropped)
            log.warning("queue full (%d records): evicted %d queued and dropped %d arriving records",
                        self.max_records, evicted, len(dropped))
        return dropped, gone


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs as (first, last) runs of consecutive numbers: a batch is usually one run."""
    out: list[tuple[int, int]] = []
    if not seqs:
        return out
    seqs = sorted(seqs)
    first = prev = seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            out.append((first, prev))
            first = s
        prev = s
    out.append((first, prev))
    return out
