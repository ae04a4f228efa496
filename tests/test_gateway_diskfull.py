"""A full disk under the real pipeline and store: issue 15, item 6.

The database lives on a tmpfs of a few MB that the test mounts (root, as on
this machine and in CI; skipped with the reason where mount is refused),
filled by a file the test writes. Real SQLite on the real file system: the
ENOSPC comes from the kernel, not from a page limit.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from gateway_helpers import reception, registry, seal
from waiting import wait_for

from gateway import logs
from gateway.api import Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.store import Store
from protocol import messages as m

TOKEN = "a-diskfull-token-0123456789"
NODES = range(1, 21)
ALARM = {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: 950, 4: 1, 5: 2}
RESERVE = 256 * 1024


def mounted(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted for this test alone; skipped where mount is not permitted."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path, "4m")


@pytest.fixture
def disk_16m(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path, "16m")


def free_bytes(d: Path) -> int:
    st = os.statvfs(d)
    return st.f_bavail * st.f_frsize


def fill(d: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on `d`."""
    filler = d / "filler"
    with open(filler, "ab") as f:
        f.write(b"\xa5" * max(0, free_bytes(d) - leave))
    return filler


def metric(text: str, name: str, labels: str = "") -> float:
    mt = re.search(rf"^{name}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    assert mt, f"{name}{{{labels}}} not in /metrics"
    return float(mt.group(1))


class Feed:
    """Sealed frames from many nodes, each node's counter increasing; remembers what was accepted."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.counter = dict.fromkeys(NODES, 0)
        self.accepted: set[tuple[int, int]] = set()
        self.verdicts: dict[str, int] = {}

    async def round(self, alarm_node: int | None = None, per_node: int = 1) -> list[str]:
        """`per_node` frames from every node (the first an alarm from `alarm_node`) in one ingest_many."""
        frames = []
        for _ in range(per_node):
            for n in NODES:
                self.counter[n] += 1
                c = self.counter[n]
                frames.append((n, c, seal(n, c, m.EVENT, ALARM) if n == alarm_node else seal(n, c)))
                alarm_node = None if n == alarm_node else alarm_node
        vs = await self.p.ingest_many([reception(raw) for _n, _c, raw in frames])
        for (n, c, _raw), v in zip(frames, vs):
            self.verdicts[v] = self.verdicts.get(v, 0) + 1
            if v == "accepted":
                self.accepted.add((n, c))
        return vs


async def test_a_full_disk_refuses_keeps_alarms_corrupts_nothing_and_recovers(small_disk, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lumeau.gateway")
    db = small_disk / "gw.db"
    s = await Store.open(db, reserve_bytes=RESERVE)
    assert (small_disk / "gw.db-reserve").stat().st_size == RESERVE and not s.full
    reg = registry(tmp_path / "nodes.toml", NODES)
    d = Downlinks(s, reg)
    await d.start()
    p = Pipeline(reg, s, downlinks=d)  # wired as the service wires it: confirmed alarms get their ACK queued
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0)
    await api.start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        filler = fill(small_disk, 600_000)
        feed = Feed(p)
        # 1. the disk fills: the first refusal is a store_error, nothing half stored
        for _ in range(2000):
            if "store_error" in await feed.round():
                break
        else:
            pytest.fail("the disk never filled")
        assert s.full and len(feed.accepted) > 100
        # entering full mode truncated the WAL (its room is free again): take that room too, so the
        # disk stays full (the store needs twice the reserve free to leave full mode)
        fill(small_disk, RESERVE // 2)
        for _ in range(100):
            if "store_error" in await feed.round():
                break
        assert s.full
        # 2. while full: routine frames refused (store_error), every alarm stored
        alarms: set[tuple[int, int]] = set()
        n_refused = 0
        for i in range(150):
            node = NODES[i % len(NODES)]
            vs = await feed.round(alarm_node=node if i % 5 == 0 else None)
            for n, v in zip(NODES, vs):
                if n == node and i % 5 == 0:
                    assert v == "accepted", "an alarm was refused while the reserve had room"
                    alarms.add((n, feed.counter[n]))
                else:
                    assert v == "store_error"
                    n_refused += 1
        assert len(alarms) == 30 and n_refused == 150 * 20 - 30
        assert s.full_figures()["refused_full"] >= n_refused
        # counted in /metrics
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
            async with http.get("/metrics", headers=auth) as r:
                text = await r.text()
        assert (
            metric(text, "lumeau_frames_rejected_total", 'reason="store_error",transport="inproc"')
            == (feed.verdicts["store_error"])
        )
        assert metric(text, "lumeau_store_full") == 1
        assert metric(text, "lumeau_store_full_events_total") == 1
        assert metric(text, "lumeau_store_commit_failures_total", 'cause="full"') >= 1
        # logged at a bounded rate: thousands of refusals, a burst of lines and one for entering full mode
        rejected_lines = [r for r in caplog.records if "frame rejected: store_error" in r.getMessage()]
        failure_lines = [r for r in caplog.records if "store commit failed" in r.getMessage()]
        assert len(rejected_lines) <= logs.LOG_BURST + 5 and len(failure_lines) <= 5
        assert sum("disk full" in r.getMessage() for r in caplog.records if r.name == "lumeau.gateway.store") == 1
        # 3. space returns: the store leaves full mode by itself and stores everything again
        filler.unlink()
        await wait_for(lambda: not s.full, timeout=10, what="the store leaves full mode")
        assert (small_disk / "gw.db-reserve").stat().st_size == RESERVE  # the reserve is back
        assert oct((small_disk / "gw.db-reserve").stat().st_mode & 0o777) == "0o600"
        for _ in range(5):
            assert set(await feed.round()) == {"accepted"}
        assert any("room again" in r.getMessage() for r in caplog.records)
        # the upstream can deliver and delete again
        batch = s.next_batch(100)
        assert await s.delete([seq for seq, _ in batch]) == len(batch)
    finally:
        await api.stop()
        await p.close()
        await d.close()
        await s.close()
    # 4. nothing corrupted, nothing acknowledged that is not stored, every alarm kept
    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        on_disk = set(c.execute("SELECT node_id, counter FROM records").fetchall())
    finally:
        c.close()
    delivered = {(r.node_id, r.counter) for _seq, r in batch}
    assert feed.accepted - delivered == on_disk  # exactly the accepted frames, less those delivered
    assert alarms <= on_disk


async def test_when_the_reserve_is_used_up_alarms_are_refused_too_and_stored_once_there_is_room(small_disk, tmp_path):
    db = small_disk / "gw.db"
    s = await Store.open(db, reserve_bytes=16 * 1024)  # a small reserve: used up by a few alarm commits
    reg = registry(tmp_path / "nodes.toml", NODES)
    p = Pipeline(reg, s)
    try:
        filler = fill(small_disk, 400_000)
        feed = Feed(p)
        while "store_error" not in await feed.round():
            pass
        assert s.full
        # alarms only, one group each, until even the reserve is full
        refused_alarm = None
        for i in range(5000):
            n = NODES[i % len(NODES)]
            feed.counter[n] += 1
            raw = seal(n, feed.counter[n], m.EVENT, ALARM)
            v = await p.ingest(reception(raw))
            if v == "accepted":
                feed.accepted.add((n, feed.counter[n]))
            else:
                assert v == "store_error"
                refused_alarm = raw
                break
        assert refused_alarm is not None, "the reserve never ran out"
        assert s.full_figures()["commit_failures_full"] >= 2
        # room again: the node's resend of the same frame (same counter) is stored now
        filler.unlink()
        await wait_for(lambda: not s.full, timeout=10, what="the store leaves full mode")
        assert await p.ingest(reception(refused_alarm)) == "accepted"
        assert set(await feed.round()) == {"accepted"}
    finally:
        await p.close()
        await s.close()
    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        on_disk = set(c.execute("SELECT node_id, counter FROM records").fetchall())
    finally:
        c.close()
    assert feed.accepted <= on_disk and len(on_disk) == len(feed.accepted) + 1


async def test_a_disk_filled_by_the_backlog_recovers_once_the_upstream_delivered(disk_16m, tmp_path):
    # nothing else frees space: the room comes back inside the database, as free pages. Entering full
    # mode checkpoints the WAL into the database (the released reserve lets the file grow) and truncates
    # it: without that, a WAL that filled the disk could never be checkpointed, nor deleted from
    # (its frames need the database's room first)
    db = disk_16m / "gw.db"
    s = await Store.open(db, reserve_bytes=5 * 1024 * 1024)  # more than the WAL at its checkpoint size
    reg = registry(tmp_path / "nodes.toml", NODES)
    p = Pipeline(reg, s)
    try:
        fill(disk_16m, 9_000_000)
        feed = Feed(p)
        for _ in range(20_000):
            if "store_error" in await feed.round(per_node=25):
                break
        assert s.full and s.count() > 20_000
        delivered: set[tuple[int, int]] = set()
        while s.count() > 100:  # the upstream delivers in batches, as it would
            batch = s.next_batch(500)
            await s.delete([seq for seq, _ in batch])  # room for it: the WAL was truncated on entering full mode
            delivered |= {(r.node_id, r.counter) for _seq, r in batch}
        await wait_for(lambda: not s.full, timeout=10, what="the store leaves full mode")
        assert set(await feed.round()) == {"accepted"}
        assert (disk_16m / "filler").exists()  # still there: the room was inside the database
    finally:
        await p.close()
        await s.close()
    c = sqlite3.connect(db)
    try:
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        on_disk = set(c.execute("SELECT node_id, counter FROM records").fetchall())
    finally:
        c.close()
    assert on_disk == feed.accepted - delivered
