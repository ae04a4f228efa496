"""gateway/store/ on real SQLite files: group commit, durability across SIGKILL, eviction, quarantine."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import ROOT
from gateway_helpers import alarm_record, event_record, reception, record, registry, seal
from waiting import wait_for

from gateway.pipeline import Pipeline
from gateway.registry import Registry
from gateway.store import QueueFull, Store, StoreClosed, StoreError
from protocol import messages as m


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    yield s
    await s.close()


def rows(path, sql="SELECT node_id, counter FROM records ORDER BY seq"):
    c = sqlite3.connect(path)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


async def test_records_round_trip_through_the_database(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    originals = [record(1, 1), record(2, 7, m.IRRIGATION), alarm_record(1, 2), event_record(3, 1)]
    seqs = [await s.append(r, (r.node_id, r.counter, 1)) for r in originals]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    await s.close()
    s = await Store.open(tmp_path / "gw.db")  # from disk: nothing cached
    batch = s.next_batch(10)
    assert [seq for seq, _ in batch] == seqs
    for (_, got), want in zip(batch, originals):
        assert (got.node_id, got.counter, got.mtype, got.kind) == (want.node_id, want.counter, want.mtype, want.kind)
        assert got.body == want.body and got.fields == want.fields
        assert got.alarm == want.alarm and got.best_rssi == want.best_rssi and got.gateway_id == want.gateway_id
    assert s.window(1) == (2, 1) and s.window(3) == (1, 1) and s.window(99) is None
    await s.close()


@pytest.mark.parametrize("log_max", [1_000_000, 7])  # windows only in the log / folded every few groups
async def test_replay_windows_come_back_after_a_restart_from_the_log_and_its_folds(tmp_path, log_max):
    path = tmp_path / "gw.db"
    s = await Store.open(path, window_log_max=log_max)
    want = {}
    for c in range(1, 40):  # many groups, several nodes each, windows moving
        items = [(record(n, c), (n, c, (c * 7 + n) & 0xFFFFFFFF)) for n in range(1, 6) if (c + n) % 3]
        await s.append_many(items)
        want.update({w[0]: (w[1], w[2]) for _r, w in items})
    await s.reset_node(2)  # a re-key: forgotten, also once folded
    del want[2]
    await s.append(record(3, 100), (3, 100, 1))
    want[3] = (100, 1)
    assert s.windows() == want
    await s.close()
    logged = rows(path, "SELECT COUNT(*) FROM window_log")[0][0]
    assert (logged > 30) if log_max > 1000 else (logged < 7)  # folded: the log stays short
    s = await Store.open(path, window_log_max=log_max)
    try:
        assert s.windows() == want
        assert s.window(2) is None
        # and the next fold after the restart still forgets node 2
        for c in range(200, 200 + (log_max if log_max < 1000 else 3)):
            await s.append(record(1, c), (1, c, 1))
        want[1] = (c, 1)
    finally:
        await s.close()
    s = await Store.open(path, window_log_max=log_max)
    try:
        assert s.windows() == want
    finally:
        await s.close()


async def test_a_failed_operation_leaves_the_window_log_as_it_was(tmp_path):
    path = tmp_path / "gw.db"
    s = await Store.open(path)
    await s.append(record(4, 9), (4, 9, 1))

    def boom(c):
        s.replay_windows.log(c, [(4, -1, 0)])  # what reset_node logs, then a failure in the same operation
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(StoreError):
        await s.writer.submit(boom)
    await s.append(record(5, 1), (5, 1, 1))
    assert s.replay_windows._durable[4] == (4, 9, 1)  # the windows as committed, unchanged
    await s.close()
    s = await Store.open(path)
    try:
        assert s.window(4) == (9, 1) and s.window(5) == (1, 1)
    finally:
        await s.close()


async def test_concurrent_appends_share_transactions(store):
    n = 400
    seqs = await asyncio.gather(*(store.append(record(i % 20 + 1, i)) for i in range(n)))
    assert len(set(seqs)) == n
    assert store.count() == n
    # group commit: far fewer transactions (one fsync each) than records
    assert store.commits < n / 10
    assert [r.counter for _, r in store.next_batch(n)] == list(range(n))  # arrival order kept


async def test_the_database_is_in_wal_mode(store, tmp_path):
    await store.append(record(1, 1))
    assert rows(tmp_path / "gw.db", "PRAGMA journal_mode")[0][0] == "wal"


async def test_delete_and_batches_after_a_seq(store):
    seqs = [await store.append(record(1, c)) for c in range(10)]
    first = store.next_batch(4)
    assert [s for s, _ in first] == seqs[:4]
    assert [s for s, _ in store.next_batch(4, after=first[-1][0])] == seqs[4:8]
    assert await store.delete([s for s, _ in first]) == 4
    assert await store.delete([seqs[0]]) == 0  # already gone: harmless
    assert store.count() == 6
    assert [s for s, _ in store.next_batch(100)] == seqs[4:]


async def test_batches_come_from_memory_and_disk_alike(tmp_path):
    path = tmp_path / "gw.db"
    s = await Store.open(path, recent_max=8)
    old = [await s.append(record(1, c)) for c in range(5)]
    await s.close()
    s = await Store.open(path, recent_max=8)  # what was queued before a restart is read back from the database
    try:
        new = await s.append_many([(record(2, c), None) for c in range(20)])
        seqs = old + new
        assert len(s.records.ready) == 8  # the rest was pushed out to the database
        after, got = 0, []
        while batch := s.next_batch(3, after, named=False):  # handed out, none deleted yet
            after = batch[-1][0]
            got += batch
        assert [q for q, _ in got] == seqs  # every record once, in order, across the boundary
        assert [(r.node_id, r.counter) for _, r in got] == [(1, c) for c in range(5)] + [(2, c) for c in range(20)]
        assert all(r.body == record(r.node_id, r.counter).body for _, r in got)
        assert not any(r.fields for _, r in got[:17])  # read back with named=False: left for the format
        await s.delete(seqs[:4] + seqs[10:22])
        assert [q for q, _ in s.next_batch(100)] == seqs[4:10] + seqs[22:]
        assert [q for q, _ in s.next_batch(100, after=seqs[23])] == seqs[24:]
        assert all(r.fields for _, r in s.next_batch(100))
    finally:
        await s.close()


async def test_receptions_merge_before_and_after_the_commit(store):
    rec = record(5, 1)
    task = asyncio.create_task(store.append(rec, (5, 1, 1)))
    await asyncio.sleep(0)  # queued, not yet committed
    assert store.add_reception(5, 1, -70.0, 9.0, "gw:b")
    await task
    assert store.add_reception(5, 1, -100.0, 1.0, "gw:c")  # worse: counted, best kept
    assert store.add_reception(5, 1, -60.0, 10.0, "gw:d")
    assert not store.add_reception(5, 2, -60.0, 10.0, "gw:d")  # never stored
    await store.drain()
    got = rows(store.path, "SELECT receptions, best_rssi, best_snr, gateway_id FROM records")
    assert got == [(4, -60.0, 10.0, "gw:d")]


async def test_eviction_policy_when_full(tmp_path):
    s = await Store.open(tmp_path / "gw.db", max_records=10)
    routine = [await s.append(record(1, c)) for c in range(5)]
    for c in range(3):
        await s.append(event_record(2, c))  # other records
    alarms = [await s.append(alarm_record(3, c)) for c in range(2)]
    assert s.count() == 10 and s.evicted_total == 0
    # 1. the oldest routine telemetry goes first
    await s.append(record(1, 100))
    await s.append(record(1, 101))
    left = [seq for seq, _ in s.next_batch(100)]
    assert routine[0] not in left and routine[1] not in left and routine[2] in left
    assert s.count() == 10 and s.evicted_total == 2
    # 2. an alarm pushes out routine records until there are none, then other records
    for c in range(10, 15):
        await s.append(alarm_record(3, c))
    kinds = Counter(r.kind for _, r in s.next_batch(100))
    assert kinds == {"event": 10}  # 3 other events + 7 alarms
    await s.append(alarm_record(3, 15))
    await s.append(alarm_record(3, 16))
    await s.append(alarm_record(3, 17))
    batch = s.next_batch(100)
    assert sum(r.alarm for _, r in batch) == 10 and s.count() == 10
    # 3. alarms are never evicted: past the bound they are still stored
    await s.append(alarm_record(3, 18))
    assert s.count() == 11 and all(r.alarm for _, r in s.next_batch(100))
    # 4. a routine record that finds only alarms is dropped on arrival
    with pytest.raises(QueueFull):
        await s.append(record(1, 200))
    assert s.count() == 11
    evicted = s.evicted_total
    assert evicted == 2 + 5 + 3 + 1
    await s.close()
    s = await Store.open(tmp_path / "gw.db", max_records=10)
    assert s.evicted_total == evicted  # persisted
    assert all(seq not in alarms or True for seq, _ in s.next_batch(100))
    await s.close()


async def test_quarantine_keeps_refused_batches_inspectable(tmp_path):
    s = await Store.open(tmp_path / "gw.db", quarantine_max=3)
    seqs = [await s.append(record(1, c)) for c in range(6)]
    batch = await s.quarantine(seqs[:2], 422, "unprocessable: " + "x" * 10_000)
    assert s.count() == 4 and [q for q, _ in s.next_batch(10)] == seqs[2:]
    q = s.quarantined()
    assert q[0]["batch"] == batch and q[0]["status"] == 422 and q[0]["count"] == 2
    assert [r.counter for _, r in q[0]["records"]] == [0, 1] and len(q[0]["response"]) <= 4096
    await s.quarantine(seqs[2:4], 400, "bad")
    assert s.quarantine_count() == 3  # bounded: the oldest quarantined record was dropped
    assert s.quarantined_total == 4
    await s.close()


async def test_downlink_rows_and_counters_persist(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    assert [await s.next_downlink_counter(7) for _ in range(3)] == [0, 1, 2]
    assert await s.next_downlink_counter(8) == 0
    dl = await s.add_downlink(7, m.COMMAND, {1: m.OP_SET_LEVEL, 2: [100, 600]}, expires=time.time() + 60)
    assert dl.command_id == dl.id and dl.body[0] == dl.id
    dl.state, dl.attempts = "sent", 1
    await s.update_downlink(dl)
    await s.close()
    s = await Store.open(tmp_path / "gw.db")
    assert await s.next_downlink_counter(7) == 3  # never reused after a restart
    got = s.downlink(dl.id)
    assert (got.state, got.attempts, got.body, got.command_id) == ("sent", 1, dl.body, dl.id)
    assert [d.id for d in s.downlinks(node_id=7, states=("sent",))] == [dl.id]
    assert s.downlinks(node_id=8) == []
    # a re-keyed node: its uplink window is forgotten, the downlink counter goes on (SPEC §4, "Re-keying")
    await s.append(record(7, 5), (7, 5, 1))
    await s.reset_node(7)
    assert s.window(7) is None and await s.next_downlink_counter(7) == 4
    await s.close()


async def test_a_failed_commit_stores_nothing_and_says_so(store):
    await store.append(record(1, 1))
    # the disk is full: SQLite's own limit stands in for a full file system
    pages = rows(store.path, "PRAGMA page_count")[0][0]
    await store.writer.call(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    big = record(1, 2)
    big.body[99] = b"x" * 200_000  # an unknown key: stored as is, needs pages
    with pytest.raises(StoreError):
        await store.append(big)
    assert store.count() == 1 and rows(store.path) == [(1, 1)]
    assert store.full and isinstance(store.full_figures(), dict)  # a full page limit is a full disk
    await store.writer.call(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
    await wait_for(lambda: not store.full, what="the store leaves full mode by itself")
    await store.append(record(1, 3))  # and it recovers
    assert rows(store.path) == [(1, 1), (1, 3)]


async def test_a_record_that_cannot_be_written_fails_its_group_not_the_writer(store):
    bad = record(1, 1)
    bad.body[0] = object()  # not encodable: a bug upstream of the store
    with pytest.raises(StoreError):
        await store.append(bad)
    assert await store.append(record(1, 2)) > 0  # the writer is still there
    assert rows(store.path) == [(1, 2)]


async def test_fields_are_named_once_when_records_are_handed_out(store):
    rec = record(2, 1)
    rec.fields = {}  # as the pipeline leaves them
    await store.append(rec)
    [(_, got)] = store.next_batch(10)
    assert got.fields["level"] == {"value": 40, "unit": "%"}


async def test_closed_store_refuses(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    await s.close()
    with pytest.raises(StoreClosed):
        await s.append(record(1, 1))


async def test_node_state_follows_the_records(store):
    await store.append(record(4, 1))
    await store.append(alarm_record(4, 2))
    st = store.node_state(4)
    assert st["readings"]["light"]["fields"]["level"] == {"value": 40, "unit": "%"}
    assert list(st["open_alarms"]) == ["11:2"] and st["last_counter"] == 2
    cleared = record(4, 3, m.EVENT, {0: m.EV_BURST, 1: m.SEV_CRITICAL, 4: 0, 5: 2})
    await store.append(cleared)
    assert store.node_state(4)["open_alarms"] == {}


@pytest.mark.parametrize("log_max", [None, 50])  # the default, and the window log folded every few groups
def test_sigkill_mid_burst_loses_no_acknowledged_record(tmp_path, log_max):
    """A real child process ingests bursts and is killed with SIGKILL while commits are in flight.

    Afterwards every frame it acknowledged is stored exactly once, and the
    replay windows committed with them make every acknowledged frame a
    duplicate if it is heard again: exactly once across the crash.
    """
    nodes = 12
    reg_path = tmp_path / "nodes.toml"
    registry(reg_path, range(1, nodes + 1)).save()
    db = tmp_path / "gw.db"
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gateway_crash_child.py"), str(db), str(reg_path), str(nodes)]
        + ([str(log_max)] if log_max else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[tuple[int, int]] = []
    try:
        assert child.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 30
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line.startswith("ACK "), line
            _, n, c = line.split()
            acked.append((int(n), int(c)))
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # acknowledgements already in the pipe count too
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    for line in rest.splitlines():
        if line.startswith("ACK ") and len(line.split()) == 3:
            _, n, c = line.split()
            acked.append((int(n), int(c)))
    assert len(acked) >= 3000
    stored = Counter(rows(db))
    assert all(k == 1 for k in stored.values()), "a record stored twice"
    missing = [a for a in acked if a not in stored]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"

    if log_max:
        assert rows(db, "SELECT COUNT(*) FROM window_log")[0][0] < log_max  # it was folded

    async def replay() -> None:
        s = await Store.open(db)
        p = Pipeline(Registry.load(reg_path), s)
        verdicts = await p.ingest_many([reception(seal(n, c)) for n, c in acked[-500:]])
        assert set(verdicts) <= {"duplicate", "replay"}
        # every node's newest acknowledged frame, the one its window was last moved for
        newest = {}
        for n, c in acked:
            newest[n] = max(c, newest.get(n, -1))
        assert set(await p.ingest_many([reception(seal(n, c)) for n, c in newest.items()])) == {"duplicate"}
        # the first frame after the last stored one of a node is new
        top = max(c for n, c in stored if n == 1)
        assert await p.ingest(reception(seal(1, top + 1))) == "accepted"
        await s.close()

    asyncio.run(replay())


async def test_the_writer_policies_are_constructor_arguments(tmp_path):
    """What the simulator asks for: its own executor, no fsync, reads through the writer's connection."""
    calls = []

    class Inline(concurrent.futures.Executor):
        def submit(self, fn, /, *args, **kwargs):
            calls.append(fn)
            f = asyncio.get_running_loop().create_future()
            try:
                f.set_result(fn(*args, **kwargs))
            except Exception as e:
                f.set_exception(e)
            return f

    path = tmp_path / "gw.db"
    with pytest.raises(ValueError):
        Store(path, synchronous="SOMETIMES")
    s = await Store.open(path, executor=Inline(), synchronous="OFF", exclusive=True)
    try:
        assert await s.writer.call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 0  # OFF
        assert await s.append(record(1, 1), (1, 1, 1)) == 1
        assert [r.counter for _s, r in s.next_batch(10)] == [1] and s.window(1) == (1, 1)
        assert (
            s.writer.reader is not None and s.writer.reader.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
        )
        assert calls  # the commits ran on the given executor
    finally:
        await s.close()
    s = await Store.open(path)  # the default policies again, on the same file
    try:
        assert s.count() == 1 and s.window(1) == (1, 1)
        assert await s.writer.call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    finally:
        await s.close()
