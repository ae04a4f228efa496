"""Issue 15, broken guarantee 6 (Deliver 3): the files the gateway and the city platform create
hold a city's telemetry and are 0600 (0640 with a configured group), whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from gateway_helpers import reception, registry, seal

from city.db import SinkDB
from gateway import files, logs
from gateway.config import ConfigError, load_config
from gateway.pipeline import Pipeline
from gateway.store import Store


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask():
    """The usual umask (022) would make SQLite's files 0644: the test proves the code, not the umask."""
    old = os.umask(0o022)
    files.set_group(None)
    yield
    os.umask(old)
    files.set_group(None)


def sqlite_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


async def test_the_gateway_database_its_wal_and_shm_are_0600(tmp_path):
    db = tmp_path / "gw.db"
    s = await Store.open(db)
    reg = registry(tmp_path / "nodes.toml", [1])
    p = Pipeline(reg, s)
    assert await p.ingest(reception(seal(1, 1))) == "accepted"
    await s.drain()
    present = sqlite_files(db)
    assert len(present) == 3, present  # open: the WAL and the shared memory exist
    assert {str(f): mode(f) for f in present} == {str(f): 0o600 for f in present}
    await p.close()
    await s.close()


async def test_a_database_left_0644_by_an_older_version_is_tightened(tmp_path):
    db = tmp_path / "gw.db"
    s = await Store.open(db)
    await s.close()
    for f in sqlite_files(db):
        f.chmod(0o644)
    s = await Store.open(db)
    assert {str(f): mode(f) for f in sqlite_files(db)} == {str(f): 0o600 for f in sqlite_files(db)}
    await s.close()


def test_the_log_file_is_0600(tmp_path):
    path = tmp_path / "gateway.log"
    handler = logs.setup("info", path=str(path))
    try:
        logging.getLogger("lumeau.test").info("hello")
        handler.flush()
        assert path.read_text() and mode(path) == 0o600
    finally:
        root = logging.getLogger("lumeau")
        root.removeHandler(handler)
        handler.close()
        root.propagate = True
        root.setLevel(logging.NOTSET)


async def test_the_sinks_database_is_0600(tmp_path):
    db = tmp_path / "sink" / "sink.db"
    sink = SinkDB(db)
    await sink.run(lambda c: c.execute("INSERT INTO meta VALUES ('x', 1)"))
    present = sqlite_files(db)
    assert len(present) == 3
    assert {str(f): mode(f) for f in present} == {str(f): 0o600 for f in present}
    await sink.close()


async def test_with_a_group_the_files_are_0640_and_that_groups(tmp_path):
    gid = os.getgid()  # a group this process may always give its files
    files.set_group(gid)
    db = tmp_path / "gw.db"
    s = await Store.open(db)
    await s.drain()
    log_path = tmp_path / "g.log"
    files.create(log_path)
    for f in [*sqlite_files(db), log_path]:
        assert (mode(f), f.stat().st_gid) == (0o640, gid), f
    await s.close()


def test_symlinks_devices_and_pipes_are_left_as_they_are(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    target.chmod(0o644)
    (tmp_path / "gw.log").symlink_to(target)
    files.create(tmp_path / "gw.log")
    files.secure(tmp_path / "gw.log")
    assert mode(target) == 0o644
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o644)
    files.create(fifo)
    assert mode(fifo) == 0o644
    null = Path("/dev/null")
    before = mode(null)
    files.create(null)  # `[log] file = "/dev/null"` as root must not make /dev/null 0600
    files.secure(null)
    assert mode(null) == before


def test_the_group_is_a_checked_config_option(tmp_path):
    cfg = tmp_path / "gateway.toml"
    api = '[api]\ntoken = "a-test-token-0123456789"\n'
    cfg.write_text('[gateway]\nfile_group = "no-such-group-lumeau"\n' + api)
    with pytest.raises(ConfigError, match="no-such-group-lumeau"):
        load_config(cfg)
    cfg.write_text(f'[gateway]\nfile_group = "{os.getgid()}"\n' + api)
    assert load_config(cfg).gateway.file_group == str(os.getgid())


async def test_a_file_of_another_user_is_used_as_before_with_a_warning(tmp_path, monkeypatch, caplog):
    """fchmod of a file this process does not own fails (EPERM): the database still opens."""

    def refuse(fd, mode):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "fchmod", refuse)
    with caplog.at_level(logging.WARNING, logger="lumeau.gateway.files"):
        s = await Store.open(tmp_path / "gw.db")
        await s.close()
    assert any("cannot give" in r.getMessage() for r in caplog.records)


def _outside_count(db: Path) -> int:
    """Another process (a backup, `sqlite3`, a test) reads the database and closes it again."""
    import subprocess
    import sys

    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
        "print(c.execute('SELECT COUNT(*) FROM records').fetchone()[0]); c.close()"
    )
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True)
    return int(out.stdout)


async def test_securing_the_files_keeps_sqlites_locks_so_another_reader_loses_nothing(tmp_path):
    # Closing any descriptor of a file drops every POSIX lock the process holds on it: securing
    # the files by open()+close() after SQLite opened them left the gateway holding no lock, and
    # the next reader that closed thought it was the last, checkpointed and deleted the WAL the
    # gateway was still writing into (its later commits were lost to every other process).
    db = tmp_path / "gw.db"
    s = await Store.open(db)
    reg = registry(tmp_path / "nodes.toml", [1])
    p = Pipeline(reg, s)
    try:
        for counter in range(1, 4):
            assert await p.ingest(reception(seal(1, counter))) == "accepted"
            await s.drain()
            assert _outside_count(db) == counter  # each read closes its connection in between
        assert Path(f"{db}-wal").exists()
    finally:
        await p.close()
        await s.close()
    assert _outside_count(db) == 3
