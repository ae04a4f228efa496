"""Records and quarantine: the durable queue of verified uplinks, in memory and on disk.

One file (over 600 lines): the queue's memory and disk halves follow one policy (bound, merging, read-back).

Tables `records` (waiting for the upstream, oldest first), `quarantine` and
`quarantine_batches` (records of batches the upstream refused with a 4xx,
kept for inspection, never resent automatically).

`queue` only queues records; the writer core takes them into its next group
(`take`), this part writes them with their replay windows (handed to the
windows part) and the reception updates, and settles each caller's future
once committed.

Bound and eviction policy, when `max_records` are queued and more arrive:
1. the oldest routine telemetry (LIGHT, IRRIGATION, STATUS) is deleted first;
2. then the oldest other records (HELLO, CMD_ACK, events below alarm);
3. alarms (EVENT with severity >= alarm) are never evicted: an alarm is always
   stored, even past the bound (they are rare and each matters);
4. a routine record that finds only alarms in the queue is itself dropped
   (its result is QueueFull).
Every evicted or dropped record is counted (`evicted_total`, persisted).

A full disk is not the bound (gateway/store/core.py, "full mode"): while the
disk is full every non-alarm record is refused without being written
(`StoreFull`, counted in `Writer.refused_full`) and alarms are written into
the released reserve; queued records are not evicted for it (the database
file would not shrink).

Committed records not yet delivered stay in memory (at most `recent_max`,
and at most `recent_max // 32` while the upstream fails: an outage's backlog
would be sent last, long from now), so the upstream gets them without a read-back; older
ones (a backlog, or what was queued before a restart) are read back from
the database. A record
leaves memory when delivered, quarantined, evicted or pushed out. (Holding
the stored row instead of the Record was measured and rejected: rebuilding
the Record costs nearly all a read-back costs; bench/README.md.)

Receptions of a frame heard by several radios are merged into the record
while it is its node's newest one and still waits for the upstream (copies
arrive within milliseconds of each other; a copy that comes after the
node's next frame is only counted).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sqlite3
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any

import cbor2

from gateway.model import Record
from gateway.store.core import Part, StoreClosed, StoreError, StoreFull, Writer
from gateway.store.windows import Snapshot, Windows
from protocol import expand
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.store")

# A LIGHT report is about 110 bytes on disk: a million is ~110 MB, which a Raspberry Pi's SD card
# holds, and a day's outage of 10,000 nodes reporting every 15 minutes is 960,000 records.
DEFAULT_MAX_RECORDS = 1_000_000
DEFAULT_QUARANTINE_MAX = 100_000  # oldest dropped beyond, counted
# Committed, undelivered Records kept in memory (each with its decoded body): bounds the memory a
# backlog takes while still serving a burst from memory (bench/README.md has the sizes).
RECENT_MAX = 65536
# While the upstream fails (Store.upstream_down), at most recent_max // 32 stay in memory: 65,536
# Records are ~59 MB, which an outage would hold for nothing (bench/outage.py)
BACKLOG_DIVISOR = 32
RESPONSE_TEXT_MAX = 4096  # bytes of a refusing upstream's answer kept with a quarantined batch

# Eviction classes: lower goes first.
PRIO_ROUTINE = 0  # LIGHT, IRRIGATION, STATUS
PRIO_OTHER = 1  # HELLO, CMD_ACK, events below alarm
PRIO_ALARM = 2  # never evicted
_ROUTINE = frozenset((m.LIGHT, m.IRRIGATION, m.STATUS))

SCHEMA = """
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
    body BLOB NOT NULL,
    key_gen INTEGER NOT NULL DEFAULT 0
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
    body BLOB NOT NULL,
    key_gen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine_batches (
    batch INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    records INTEGER NOT NULL
);
"""

_RECORD_COLS = "seq, node_id, counter, mtype, prio, rx_time, receptions, best_rssi, best_snr, gateway_id, body, key_gen"
_INSERT_RECORD = f"INSERT INTO records ({_RECORD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_UPDATE_RECEPTION = "UPDATE records SET receptions = ?, best_rssi = ?, best_snr = ?, gateway_id = ? WHERE seq = ?"


def migrate(c: sqlite3.Connection) -> None:
    """Bring a database of an older gateway to SCHEMA: `key_gen` (SPEC §4, re-keying) came later.

    Its records were all taken under generation 0, the column's default, which is what
    their ids said then. ADD COLUMN rewrites no row: instant on any size of queue.
    """
    for table in ("records", "quarantine"):
        cols = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
        if "key_gen" not in cols:
            c.execute(f"ALTER TABLE {table} ADD COLUMN key_gen INTEGER NOT NULL DEFAULT 0")
            log.info("store: added column key_gen to %s (records before it are key generation 0)", table)


class QueueFull(StoreError):
    """A routine record dropped on arrival: the queue is full of alarms (see the policy above)."""


def priority(record: Record) -> int:
    if record.alarm:
        return PRIO_ALARM
    return PRIO_ROUTINE if record.mtype in _ROUTINE else PRIO_OTHER


def record_from_row(row: tuple, named: bool = True) -> tuple[int, Record]:
    seq, node_id, counter, mtype, prio, rx_time, receptions, rssi, snr, gw, body, key_gen = row
    b = cbor2.loads(body)
    return seq, Record(
        node_id,
        counter,
        mtype,
        expand.TYPE_NAMES[mtype],
        rx_time,
        b,
        expand.expand(mtype, b) if named else {},
        receptions,
        rssi,
        snr,
        gw,
        prio == PRIO_ALARM,
        body,
        key_gen,
    )


class Chunk:
    """The records of one append_many call on their way to the disk; a group may take part of one.

    Records and windows are kept as the caller gave them (no tuple per
    record); `results` fill in slices as groups commit, and the future
    completes when the last record is decided.
    """

    __slots__ = ("fut", "seq0", "items", "results", "start", "left")

    def __init__(self, fut: asyncio.Future, seq0: int, items: list[tuple[Record, Snapshot | None]]) -> None:
        self.fut = fut
        self.seq0 = seq0
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.start = 0  # items before this one are in a group already
        self.left = len(items)

    def settle(self, start: int, n: int, value: Any = None) -> None:
        """Decide items [start, start + n): their seqs, or `value` (an exception) for all."""
        if value is None:
            self.results[start : start + n] = range(self.seq0 + start, self.seq0 + start + n)
        else:
            self.results[start : start + n] = [value] * n
        self.done(n)

    def done(self, n: int) -> None:
        """`n` more items have their result in `results`."""
        self.left -= n
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(self.results)


Slices = list[tuple[Chunk, int, int]]  # (chunk, start, n): the records of a group


class Records(Part):
    def __init__(
        self,
        writer: Writer,
        windows: Windows,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        quarantine_max: int = DEFAULT_QUARANTINE_MAX,
        recent_max: int = RECENT_MAX,
    ) -> None:
        self.writer = writer
        self.windows = windows
        self.max_records = max_records
        self.quarantine_max = quarantine_max
        self.recent_max = recent_max
        self.backlog_max = max(1, recent_max // BACKLOG_DIVISOR)
        self.upstream_down = False  # told by the upstream (Store.upstream_down)
        self.chunks: list[Chunk] = []  # appends waiting for the writer, oldest first
        self._pending = 0  # records in those chunks not yet taken by a group
        self._taken_upto = 0  # every seq up to this one was handed to the writer (set by load)
        self._updates: dict[int, Record] = {}  # seq -> record whose receptions changed after it was written
        self.next_seq = 1
        self._count = 0  # records queued (maintained by the writer thread)
        self._count_at_begin = 0
        self._refused: set[int] = set()  # seqs of the group refused in full mode (writer thread)
        # node -> (seq, record) of its newest record: where copies of a frame are merged
        self.latest: dict[int, tuple[int, Record]] = {}
        # committed, undelivered records in memory, by seq: next_batch reads no row at or above
        # mem_floor; older ones (from before a restart, or pushed out of memory by recent_max)
        # are read back from the database. _order holds their seqs ascending from _head, with
        # the seqs of records gone since (delivered, quarantined, evicted) left in place until
        # the head passes them: next_batch(after) finds its start by bisection, so records
        # handed out but not yet deleted are never walked over again
        self.ready: dict[int, Record] = {}
        self._order: list[int] = []
        self._head = 0
        self.mem_floor = 1
        self._committed_upto = 0  # every seq up to this one is committed, or failed for good
        # lifetime counters (persisted in meta), plus this process's
        self.evicted_total = 0
        self.quarantined_total = 0
        self.committed_records = 0

    def load(self, r: sqlite3.Connection, meta: dict[str, int]) -> None:
        self._count = r.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        top = r.execute(
            "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM records UNION ALL SELECT MAX(seq) FROM quarantine)"
        ).fetchone()[0]
        self.next_seq = (top or 0) + 1
        # what is on disk now is read from there
        self.mem_floor = self.next_seq
        self._taken_upto = self._committed_upto = self.next_seq - 1
        self.evicted_total = meta.get("evicted", 0)
        self.quarantined_total = meta.get("quarantined", 0)

    # ------------------------------------------------------------ the loop's side

    def queue(self, items: Iterable[tuple[Record, Snapshot | None]]) -> tuple[asyncio.Future[list], list, int]:
        """Queue records for the next group: (future, the items as a list, the first one's seq).

        The caller notes each record where it belongs (its node's newest, its
        window, its node's state) and wakes the writer.
        """
        if self.writer.closed:
            raise StoreClosed("store is closed")
        fut = asyncio.get_running_loop().create_future()
        items = list(items)
        seq = self.next_seq
        if not items:
            fut.set_result([])
            return fut, items, seq
        self.next_seq = seq + len(items)
        self.chunks.append(Chunk(fut, seq, items))
        self._pending += len(items)
        return fut, items, seq

    def add_reception(
        self, node_id: int, counter: int, rssi: float | None, snr: float | None, gateway_id: str, key_gen: int = 0
    ) -> bool:
        """Merge another radio's reception of a stored frame: count it, keep the best RSSI.

        Returns False when the frame's record can no longer take it (not its
        node's newest record any more, delivered, quarantined, its commit
        failed, or read back from the database): the copy is then only
        counted by the caller.
        Does not wait: the change is written with the next group (it is
        reception metadata, not an acknowledged record).
        """
        entry = self.latest.get(node_id)
        if entry is None:
            return False
        seq, rec = entry
        # key_gen: a frame of a new key never merges into the old key's record of the same counter
        # (forget_node drops it at the re-key; this holds even if a copy slips in before that)
        if (
            rec.counter != counter
            or rec.key_gen != key_gen
            or seq < self.mem_floor
            or (seq <= self._committed_upto and seq not in self.ready)
        ):
            return False
        rec.receptions += 1
        if rssi is not None and (rec.best_rssi is None or rssi > rec.best_rssi):
            rec.best_rssi = rssi
            rec.best_snr = snr
            rec.gateway_id = gateway_id
        if seq <= self._taken_upto:  # already written: rewrite its reception fields in the next group
            self._updates[seq] = rec
            self.writer.wake()
        return True

    def forget_node(self, node_id: int) -> None:
        """The node was re-keyed: its records stay queued, but copies must not merge into them."""
        self.latest.pop(node_id, None)

    def _forget(self, seqs: Iterable[int]) -> None:
        """Drop committed records from memory (delivered, quarantined, evicted): no more
        reception merges, no more batches."""
        ready, updates = self.ready, self._updates
        for s in seqs:
            updates.pop(s, None)
            ready.pop(s, None)

    def next_batch(self, max_records: int, after: int = 0, named: bool = True) -> list[tuple[int, Record]]:
        """The oldest queued records (seq > after), in arrival order: per-node order is kept.

        `named`: fill `Record.fields` (protocol.expand); the native format
        names values from the body itself and passes False.
        """
        out: list[tuple[int, Record]] = []
        floor = self.mem_floor
        if after + 1 < floor:  # the oldest ones are only on disk
            r = self.writer.reader
            assert r is not None
            rows = r.execute(
                f"SELECT {_RECORD_COLS} FROM records WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after, floor, max_records),
            ).fetchall()
            out = [record_from_row(row, named) for row in rows]
            if len(out) >= max_records:
                return out
        ready, order = self.ready, self._order
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
        order, ready, head = self._order, self.ready, self._head
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

        n = await self.writer.submit(op)
        self._forget(seqs)  # delivered: copies heard from now on are only counted
        return n

    async def quarantine(self, seqs: Iterable[int], status: int, response_text: str) -> int:
        """Move the records of a refused batch (4xx) to the quarantine; returns the batch id."""
        seqs = list(seqs)
        text = response_text.encode("utf-8", "replace")[:RESPONSE_TEXT_MAX].decode("utf-8", "ignore")
        bump = self.writer.bump

        def op(c: sqlite3.Connection) -> int:
            batch = (c.execute("SELECT MAX(batch) FROM quarantine_batches").fetchone()[0] or 0) + 1
            c.execute("CREATE TEMP TABLE IF NOT EXISTS q_seqs (seq INTEGER PRIMARY KEY)")
            c.execute("DELETE FROM q_seqs")
            c.executemany("INSERT OR IGNORE INTO q_seqs VALUES (?)", [(s,) for s in seqs])
            cols = _RECORD_COLS.replace("seq, ", "")
            moved = c.execute(
                f"INSERT INTO quarantine (seq, batch, {cols}) SELECT seq, ?, {cols} FROM records "
                "WHERE seq IN (SELECT seq FROM q_seqs)",
                (batch,),
            ).rowcount
            c.execute("DELETE FROM records WHERE seq IN (SELECT seq FROM q_seqs)")
            c.execute("INSERT INTO quarantine_batches VALUES (?,?,?,?,?)", (batch, time.time(), status, text, moved))
            self._count -= moved
            self.quarantined_total += moved
            bump(c, "quarantined", moved)
            over = c.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] - self.quarantine_max
            if over > 0:
                c.execute(
                    "DELETE FROM quarantine WHERE seq IN (SELECT seq FROM quarantine ORDER BY seq LIMIT ?)", (over,)
                )
                c.execute("DELETE FROM quarantine_batches WHERE batch NOT IN (SELECT DISTINCT batch FROM quarantine)")
                bump(c, "quarantine_dropped", over)
            return batch

        batch = await self.writer.submit(op)
        self._forget(seqs)  # a quarantined record no longer takes reception updates
        return batch

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent quarantined batches, newest first, with their records."""
        r = self.writer.reader
        assert r is not None
        out = []
        for batch, t, status, response, n in r.execute(
            "SELECT batch, time, status, response, records FROM quarantine_batches ORDER BY batch DESC LIMIT ?",
            (limit,),
        ).fetchall():
            recs = [
                record_from_row(row)
                for row in r.execute(f"SELECT {_RECORD_COLS} FROM quarantine WHERE batch = ? ORDER BY seq", (batch,))
            ]
            out.append({"batch": batch, "time": t, "status": status, "response": response, "count": n, "records": recs})
        return out

    def quarantine_count(self) -> int:
        r = self.writer.reader
        assert r is not None
        return r.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]

    def count(self) -> int:
        """Records queued and committed (appends still in flight not included)."""
        return self._count

    def oldest_rx_time(self) -> float | None:
        """Receive time of the oldest queued record: the upstream lag is now minus this."""
        r = self.writer.reader
        assert r is not None
        row = r.execute("SELECT rx_time FROM records ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ the group commit (Part)

    def has_work(self) -> bool:
        return bool(self.chunks or self._updates)

    def take(self, limit: int) -> tuple[Slices, list[tuple], list[Snapshot], list[tuple]]:
        """Up to `limit` queued records for the next group, as rows, with their windows and the
        reception updates: (slices, rows, windows, updates)."""
        taken: Slices = []
        chunks = self.chunks
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
        updates, self._updates = self._updates, {}
        try:
            # Rows are built here, on the loop's thread, so records can change
            # (receptions) while the writer thread works on copies.
            rows = []
            windows = {}
            dumps = cbor2.dumps
            routine = _ROUTINE
            for chunk, start, n in taken:
                seq = chunk.seq0 + start
                for r, w in chunk.items[start : start + n]:
                    mtype = r.mtype
                    rows.append(
                        (
                            seq,
                            r.node_id,
                            r.counter,
                            mtype,  # priority(r), inlined: once per record
                            PRIO_ALARM if r.alarm else PRIO_ROUTINE if mtype in routine else PRIO_OTHER,
                            r.rx_time,
                            r.receptions,
                            r.best_rssi,
                            r.best_snr,
                            r.gateway_id,
                            r.cbor if r.cbor is not None else dumps(r.body),
                            r.key_gen,
                        )
                    )
                    seq += 1
                    if w is not None:
                        windows[w[0]] = w
            upd = [(r.receptions, r.best_rssi, r.best_snr, r.gateway_id, s) for s, r in updates.items()]
        except BaseException as e:  # the group fails without this share: decide it here
            self.failed((taken, [], [], []), e if isinstance(e, StoreError) else StoreError(f"commit failed: {e!r}"))
            raise
        return taken, rows, list(windows.values()), upd

    def begin(self) -> None:
        self._count_at_begin = self._count
        self._refused = set()

    def write(
        self, c: sqlite3.Connection, work: tuple[Slices, list[tuple], list[Snapshot], list[tuple]]
    ) -> tuple[set[int], list[int]]:
        """Insert the group's rows (after making room), log their windows, rewrite receptions."""
        _taken, rows, windows, updates = work
        dropped: set[int] = set()
        evicted: list[int] = []
        if rows and self.writer.full:  # full mode: the reserve is for alarms (core.py)
            keep = [r for r in rows if r[4] == PRIO_ALARM]
            if len(keep) < len(rows):
                dropped = {r[0] for r in rows if r[4] != PRIO_ALARM}
                rows = keep
                self._refused = set(dropped)
                # nor the windows of refused records: the pipeline forgets their counters, and each
                # group's window log would eat the reserve (the node of a kept alarm keeps its window)
                alarm_nodes = {r[1] for r in keep}
                windows = [w for w in windows if w[0] in alarm_nodes]
        if rows:
            gone, evicted = self._make_room(c, rows)
            if gone:
                rows = [r for r in rows if r[0] not in gone]
                dropped |= gone
            c.executemany(_INSERT_RECORD, rows)
            self._count += len(rows)
        if windows:
            self.windows.log(c, windows)
        if updates:
            c.executemany(_UPDATE_RECEPTION, updates)
        return dropped, evicted

    def rolled_back(self) -> None:
        self._count = self._count_at_begin

    def failed(self, work: tuple[Slices, list[tuple], list[Snapshot], list[tuple]], err: StoreError) -> None:
        taken = work[0]
        for chunk, start, n in taken:
            chunk.settle(start, n, err)
        if taken:
            self._committed_upto = max(self._committed_upto, taken[-1][0].seq0 + taken[-1][1] + taken[-1][2] - 1)

    def committed(
        self, work: tuple[Slices, list[tuple], list[Snapshot], list[tuple]], result: tuple[set[int], list[int]]
    ) -> None:
        taken, rows = work[0], work[1]
        dropped, evicted = result
        refused = self._refused
        if refused:
            self.writer.refused_full += len(refused)
        self.committed_records += len(rows) - len(dropped)
        if evicted:
            self._forget(evicted)
        if taken:
            last, start, n = taken[-1]
            self._committed_upto = max(self._committed_upto, last.seq0 + start + n - 1)
        ready, order, floor = self.ready, self._order, self.mem_floor
        for chunk, start, n in taken:
            seq0 = chunk.seq0 + start
            recs = chunk.items[start : start + n]
            if seq0 >= floor and not dropped:
                # the common case: every record of the slice is committed and stays in memory
                ready.update(zip(range(seq0, seq0 + n), [r for r, _w in recs]))
                order.extend(range(seq0, seq0 + n))
                chunk.settle(start, n)
                continue
            res = chunk.results
            for i, (r, _w) in enumerate(recs):
                seq = seq0 + i
                if seq in refused:
                    res[start + i] = StoreFull("disk full: only alarms are stored until there is room")
                elif seq in dropped:
                    res[start + i] = QueueFull("queue full of alarms: routine record dropped")
                else:
                    res[start + i] = seq
                    if seq >= floor:
                        ready[seq] = r
                        order.append(seq)
            chunk.done(n)
        self._trim_order()
        # the upstream is down: the records in memory would be sent last, long from now, so only
        # a few stay (issue 15: flat memory through an outage)
        cap = self.backlog_max if self.upstream_down else self.recent_max
        if len(ready) > cap:  # memory is full: the oldest are read back from the database
            head = self._head
            while len(ready) > cap:
                seq = order[head]
                head += 1
                if ready.pop(seq, None) is not None:
                    self.mem_floor = seq + 1
            self._head = head
            self._trim_order()

    def _make_room(self, c: sqlite3.Connection, rows: list[tuple]) -> tuple[set[int], list[int]]:
        """Apply the eviction policy; returns (arriving seqs dropped, queued seqs evicted)."""
        excess = self._count + len(rows) - self.max_records
        if excess <= 0:
            return set(), []
        gone: list[int] = []
        for prio in (PRIO_ROUTINE, PRIO_OTHER):
            if excess - len(gone) <= 0:
                break
            gone += [
                r[0]
                for r in c.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records "
                    "WHERE prio = ? ORDER BY seq LIMIT ?) RETURNING seq",
                    (prio, excess - len(gone)),
                ).fetchall()
            ]
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
            self.writer.bump(c, "evicted", evicted + len(dropped))
            self.evicted_total += evicted + len(dropped)
            ok, suppressed = self.writer.allow_log("evicted")  # once per group at most: bounded all the same
            if ok:
                log.warning(
                    "queue full (%d records): evicted %d queued and dropped %d arriving records",
                    self.max_records,
                    evicted,
                    len(dropped),
                    extra={"suppressed": suppressed},
                )
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
