"""The sink's SQLite file: schema and the one thread every query runs on.

Mode 0600 for the database, its WAL and shared memory (gateway/files.py; 0640
with a group given to gateway.files.set_group).

WAL with synchronous=FULL: the sink answers 2xx only once a transaction is on
disk, so a record the gateway deleted after a 2xx is never lost here either.
New parts of the city platform (reports, ledger, open data) add their tables
to SCHEMA and run their queries through `SinkDB.run`, one writer thread for all.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from city import ledger_db, requests_db
from gateway import files

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    node TEXT NOT NULL,
    counter INTEGER NOT NULL,
    type TEXT NOT NULL,
    t REAL NOT NULL,
    received REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_node ON records (node, seq);
CREATE INDEX IF NOT EXISTS records_t ON records (t);
CREATE TABLE IF NOT EXISTS entities (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    doc TEXT NOT NULL,
    updated REAL NOT NULL,
    updates INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS units (type TEXT PRIMARY KEY, units TEXT NOT NULL);
"""
    + requests_db.SCHEMA
    + ledger_db.SCHEMA
)


class SinkDB:
    """The sink's SQLite file, used from one thread only (all calls go through `run`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lumeau-sink-db")
        self._c: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._c is None:
            files.secure_sqlite(self.path)  # 0600 (or 0640 with a group): it holds a city's telemetry
            c = sqlite3.connect(self.path, isolation_level=None)
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("PRAGMA synchronous = FULL")
            c.executescript(SCHEMA)
            files.secure_sqlite(self.path)  # the -wal and -shm it just created
            self._c = c
        return fn(self._c)

    async def close(self) -> None:
        def shut(c: sqlite3.Connection) -> None:
            c.close()
            self._c = None

        if self._c is not None:
            await self.run(shut)
        self._pool.shutdown(wait=True)


def bump(c: sqlite3.Connection, name: str, n: int) -> None:
    if n:
        c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?", (name, n, n))
