"""The store's writer core: the SQLite connections, the group commit, the writer's executor.

It knows nothing of records, windows, downlinks or node state. The parts
(gateway/store/records.py, windows.py, downlinks.py, nodes.py) own their
tables and in-memory state and come to the core two ways:

- `submit(fn)`: run `fn(connection)` inside the next group's transaction, in
  a savepoint of its own (one failing operation fails alone);
- as a group `Part` (records, windows): each group asks it for its share
  (`take`), writes it in the group's transaction (`write`), and tells it the
  outcome (`committed` / `failed`), with hooks on the writer's thread for the
  state that must follow the transaction (`begin`, `mark`/`undo` around an
  operation's savepoint, `before_commit`, `after_commit`, `rolled_back`).

Group commit: one writer (by default a dedicated thread, so an fsync never
blocks the event loop) commits everything queued so far in one transaction
with one fsync, then wakes every caller of that group. While a commit is in
flight the next group gathers, so the commit rate adapts to the disk: a slow
fsync means bigger groups, not fewer frames per second.

Policies are constructor arguments: the executor the writer runs on, the
`PRAGMA synchronous` level, and `exclusive` (reads go through the writer's
connection, which holds the file alone: for a writer that runs on the
loop's own thread, where two connections never run at once anyway).

A full disk (SQLITE_FULL) is not an I/O error: nothing on disk is damaged,
SQLite rolled the transaction back, and the same write succeeds once there is
room. So it is told apart (`StoreFull`) and the writer enters *full mode*:

- it releases the **reserve**, a file of `reserve_bytes` beside the database
  (`<db>-reserve`, created at open), checkpoints the WAL into the database
  and truncates it (the reserve gives the file room to grow; the WAL's space
  is then free), and retries the failed group at once with its alarms only;
- while full, the records part refuses every non-alarm record without writing
  it (`StoreFull`, the pipeline's `store_error`): refused, never acknowledged;
- every `FULL_PROBE_S` (and after each group) it looks for room again: the
  file system's free space (`statvfs`) at least twice the reserve, or free
  pages inside the database (the upstream delivered records) worth a reserve;
  then it re-creates the reserve and leaves full mode by itself;
- commit failures are logged at a bounded rate (gateway/logs.py), the entry
  and the exit of full mode once each; all are counted (`failures`,
  `full_events`, `refused_full`), and /metrics exports them.
Any other failure (SQLITE_IOERR, a corrupt page) stays a plain StoreError:
the group fails, the next one is tried (the caller's copy or retry may be
stored later); nothing about it is "full".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import files
from gateway.logs import RateLimiter

log = logging.getLogger("lumeau.gateway.store")

SYNC_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")

_META_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StoreError(Exception):
    """The store could not do what was asked; nothing was half done."""


class StoreClosed(StoreError):
    pass


class StoreFull(StoreError):
    """The disk (or the database's page limit) is full: nothing was written; retry when there is room."""


SQLITE_FULL = 13
# Room kept for alarms once the disk is full, and for the checkpoint that truncates the WAL then: more
# than the WAL at SQLite's autocheckpoint size (1,000 pages, ~4 MB), or a WAL that filled the disk
# could never be moved into the database (which must grow for its new pages) nor reset
DEFAULT_RESERVE_BYTES = 8 * 1024 * 1024
FULL_PROBE_S = 0.5  # how often full mode looks for room again


def is_full(e: BaseException) -> bool:
    """SQLITE_FULL (an ENOSPC on write, or max_page_count), as opposed to an I/O error or corruption."""
    if isinstance(e, StoreFull):
        return True
    if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) is not None:
        return (e.sqlite_errorcode & 0xFF) == SQLITE_FULL
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


class Part:
    """A concern of the store that takes part in every group commit; every hook is optional.

    Loop thread: `has_work`, `take`, `committed`, `failed`. Writer thread, inside
    the group's transaction: `begin`, `write`, `mark`/`undo` (around each
    submitted operation: `undo(mark)` when its savepoint was rolled back),
    `before_commit`; after it: `after_commit` or `rolled_back`.
    """

    def has_work(self) -> bool:
        return False

    def take(self, limit: int) -> Any:
        """This part's share of the next group (at most `limit` records), or None."""
        return None

    def begin(self) -> None:
        pass

    def write(self, c: sqlite3.Connection, work: Any) -> Any:
        return None

    def mark(self) -> Any:
        return None

    def undo(self, mark: Any) -> None:
        pass

    def before_commit(self, c: sqlite3.Connection) -> None:
        pass

    def after_commit(self) -> None:
        pass

    def rolled_back(self) -> None:
        pass

    def committed(self, work: Any, result: Any) -> None:
        pass

    def failed(self, work: Any, err: StoreError) -> None:
        pass


class Writer:
    """The connections and the group commit; `await open(schema)`, then `start()`; `await close()`."""

    def __init__(
        self,
        path: Path,
        *,
        group_max: int,
        executor: concurrent.futures.Executor | None = None,
        synchronous: str = "FULL",
        exclusive: bool = False,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        log_limiter: RateLimiter | None = None,
    ) -> None:
        if synchronous.upper() not in SYNC_LEVELS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNC_LEVELS)}")
        self.path = Path(path)
        self.group_max = group_max
        self.synchronous = synchronous.upper()
        self.exclusive = exclusive
        self._own_executor = executor is None
        self.executor: concurrent.futures.Executor = (
            executor
            if executor is not None
            else concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lumeau-store")
        )
        self._conn: sqlite3.Connection | None = None  # used only on the executor
        # used only on the event loop's thread; the writer's own connection when exclusive
        self.reader: sqlite3.Connection | None = None
        self.parts: list[Part] = []
        self._ops: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self.closed = False
        # this process's commit figures
        self.commits = 0
        self.commit_seconds = 0.0
        # full mode (module docstring); `full` is read by the records part on the writer's thread
        self.reserve_path = self.path.with_name(self.path.name + "-reserve")
        self.reserve_bytes = reserve_bytes
        self.full = False
        self.full_since = 0.0
        self.full_events = 0  # times the disk went full
        self.failures: dict[str, int] = {"full": 0, "other": 0}  # failed group commits by cause
        self.refused_full = 0  # records refused while full (the records part counts them)
        self._probed = 0.0
        self._no_reserve = False  # out of full mode without the reserve: made again when the disk allows
        self._limiter = log_limiter or RateLimiter(burst=5, rate=0.1)

    # ------------------------------------------------------------ lifecycle

    async def open(self, schema: str) -> None:
        """Open the writer's connection (creating `schema` and the meta table), then the reader's."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self._open_conn, schema)
        except sqlite3.Error as e:
            self.shutdown_executor(wait=False)
            raise StoreError(f"{self.path}: cannot open the database: {e}") from e
        self.reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.reader.execute("PRAGMA query_only = 1")
        if not self._make_reserve():
            self._enter_full("no room for the reserve at open")

    def _open_conn(self, schema: str) -> None:
        # 0600 (0640 with [gateway] file_group) before SQLite creates anything: the -wal and
        # -shm files take the database file's mode (gateway/files.py, issue 15)
        try:
            files.secure_sqlite(self.path)
        except OSError as e:
            raise sqlite3.OperationalError(f"cannot create it with mode 0600: {e}") from e
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, WAL needed")
        c.execute(f"PRAGMA synchronous = {self.synchronous}")
        c.executescript(schema + _META_SCHEMA)
        files.secure_sqlite(self.path)  # the group of the -wal and -shm just created
        self._conn = c

    # ------------------------------------------------------------ full mode

    def _make_reserve(self) -> bool:
        """Create (or keep) the reserve file; False when the disk has no room for it."""
        if self.reserve_bytes <= 0:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        try:
            files.create(self.reserve_path)
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_NOFOLLOW)  # never through a planted symlink
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)  # real blocks, not a sparse file
            finally:
                os.close(fd)
        except OSError as e:
            self._release_reserve()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            log.warning("cannot create the store's reserve %s: %s", self.reserve_path, e)
            return True  # not a full disk: run without a reserve
        return True

    def _release_reserve(self) -> None:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            pass

    def _enter_full(self, why: str) -> None:
        self.full = True
        self.full_since = time.monotonic()
        self.full_events += 1
        self._probed = self.full_since
        self._release_reserve()
        ok, suppressed = self._limiter.allow("full_mode")  # a disk at its limit may go in and out
        if ok:
            log.warning(
                "store: disk full (%s): refusing all but alarms until there is room (%s)",
                why,
                self.path.parent,
                extra={"event": "store_full", "suppressed": suppressed},
            )

    def _room(self) -> bool:
        """Is there room again: free space for twice the reserve, or free pages in the database?"""
        want = max(self.reserve_bytes, 1)
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize >= 2 * want:
                return True
        except OSError:
            pass
        r = self.reader
        if r is None:
            return False
        free_pages = r.execute("PRAGMA freelist_count").fetchone()[0]
        page = r.execute("PRAGMA page_size").fetchone()[0]
        return bool(free_pages * page >= want)

    def probe(self, force: bool = False) -> bool:
        """At most every FULL_PROBE_S: in full mode, leave it when there is room; out of it, re-make
        a reserve that could not be made when room came back inside the database. Returns `full`."""
        if not (self.full or self._no_reserve):
            return False
        now = time.monotonic()
        if not force and now - self._probed < FULL_PROBE_S:
            return self.full
        self._probed = now
        if not self.full:
            self._no_reserve = not self._make_reserve()
            return False
        room = self._room()
        if room:
            # the room may be free pages inside the database (the upstream delivered) while the
            # file system is still full: store again, and make the reserve once the disk allows
            self._no_reserve = not self._make_reserve()
            self.full = False
            ok, suppressed = self._limiter.allow("room_again")
            if ok:
                log.warning(
                    "store: room again after %.1f s: storing every record (%d refused while full)%s",
                    now - self.full_since,
                    self.refused_full,
                    "; no room for the reserve yet" if self._no_reserve else "",
                    extra={"event": "store_room", "suppressed": suppressed},
                )
        return self.full

    def _truncate_wal(self) -> None:
        """Writer thread, entering full mode: move the WAL into the database (the released reserve
        gives the file room to grow) and truncate it, so its space is free again; best effort."""
        try:
            assert self._conn is not None
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def allow_log(self, key: str) -> tuple[bool, int]:
        """The store's log limiter (burst 5, then one line per 10 s per key): (allowed, suppressed)."""
        return self._limiter.allow(key)

    def _log_failure(self, e: BaseException, full: bool) -> None:
        ok, suppressed = self._limiter.allow("full" if full else "other")
        if ok:
            log.error("store commit failed: %r", e, extra={"full": full, "suppressed": suppressed})

    def _call_now(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """`fn(writer's connection)`, run by the executor (see `call`)."""
        assert self._conn is not None
        return fn(self._conn)

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn(writer's connection)` on the writer's executor, outside any group's transaction
        (connection settings; tests use it to make the disk look full)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._call_now, fn)

    def start(self) -> None:
        """Begin committing; with `exclusive`, reads move to the writer's connection first."""
        if self.exclusive:
            conn, r = self._conn, self.reader
            assert conn is not None and r is not None
            if r is not conn:
                r.close()
                self.reader = conn
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        self._task = asyncio.create_task(self._run(), name="lumeau-store-writer")

    async def close(self) -> None:
        """Commit everything queued, then close the connections (refusing new work from now on)."""
        self.closed = True
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._close_conn)
        self.shutdown_executor(wait=True)
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def shutdown_executor(self, wait: bool) -> None:
        if self._own_executor:
            self.executor.shutdown(wait=wait)

    def busy(self) -> bool:
        return bool(self._ops) or any(p.has_work() for p in self.parts) or not self._idle.is_set()

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        while self.busy():
            await self._idle.wait()
            await asyncio.sleep(0)

    # ------------------------------------------------------------ what the parts call

    def wake(self) -> None:
        """A part has work for the next group."""
        self._wake.set()

    async def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn(connection)` inside the next group's transaction (in a savepoint of its own)."""
        if self.closed:
            raise StoreClosed("store is closed")
        fut = asyncio.get_running_loop().create_future()
        self._ops.append((fn, fut))
        self._wake.set()
        return await fut

    @staticmethod
    def bump(c: sqlite3.Connection, name: str, n: int) -> None:
        """Add `n` to a lifetime counter of the meta table (writer thread, in a transaction)."""
        c.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def meta(self) -> dict[str, int]:
        """The lifetime counters as committed."""
        assert self.reader is not None
        return dict(self.reader.execute("SELECT name, value FROM meta"))

    # ------------------------------------------------------------ the group commit

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        parts = self.parts
        while True:
            if not (self._ops or any(p.has_work() for p in parts)):
                self._idle.set()
                self._wake.clear()
                if self.full:  # look for room even when nothing arrives
                    try:
                        await asyncio.wait_for(self._wake.wait(), FULL_PROBE_S)
                    except TimeoutError:
                        self.probe()
                    continue
                await self._wake.wait()
                continue
            self.probe()
            self._idle.clear()
            ops, self._ops = self._ops, []
            works: list[Any] = []
            t0 = time.perf_counter()
            try:
                for p in parts:  # a part whose take fails decides its own share (see Part.take)
                    works.append(p.take(self.group_max))
                fns = [fn for fn, _ in ops]
                try:
                    results, op_results = await loop.run_in_executor(self.executor, self._commit, works, fns)
                except Exception as e:
                    if not is_full(e) or self.full or len(works) != len(parts):
                        raise
                    # the disk just filled: release the reserve and store this group's alarms in it
                    self.failures["full"] += 1
                    self._log_failure(e, True)
                    self._enter_full(str(e))
                    await loop.run_in_executor(self.executor, self._truncate_wal)
                    results, op_results = await loop.run_in_executor(self.executor, self._commit, works, fns)
            except BaseException as e:  # the whole group failed: nothing of it is stored
                full = is_full(e)
                if full:
                    err: StoreError = e if isinstance(e, StoreFull) else StoreFull(f"disk full: {e}")
                else:
                    err = e if isinstance(e, StoreError) else StoreError(f"commit failed: {e!r}")
                for p, work in zip(parts, works):
                    p.failed(work, err)
                for _fn, f in ops:
                    if not f.done():
                        f.set_exception(err)
                if isinstance(e, asyncio.CancelledError):
                    raise
                self.failures["full" if full else "other"] += 1
                self._log_failure(e, full)
                if full and not self.full:
                    self._enter_full(str(e))
                continue
            self.commits += 1
            self.commit_seconds += time.perf_counter() - t0
            for p, work, result in zip(parts, works, results):
                p.committed(work, result)
            for (_fn, f), (ok, value) in zip(ops, op_results):
                if f.done():
                    continue
                if ok:
                    f.set_result(value)
                elif isinstance(value, StoreError):
                    f.set_exception(value)
                else:
                    f.set_exception(StoreFull(f"disk full: {value}") if is_full(value) else StoreError(str(value)))

    def _commit(
        self, works: list[Any], ops: list[Callable[[sqlite3.Connection], Any]]
    ) -> tuple[list[Any], list[tuple[bool, Any]]]:
        c = self._conn
        assert c is not None
        parts = self.parts
        for p in parts:
            p.begin()
        c.execute("BEGIN IMMEDIATE")
        try:
            results = [p.write(c, work) for p, work in zip(parts, works)]
            op_results: list[tuple[bool, Any]] = []
            for fn in ops:
                marks = [p.mark() for p in parts]
                c.execute("SAVEPOINT op")
                try:
                    op_results.append((True, fn(c)))
                    c.execute("RELEASE op")
                except Exception as e:  # one failing operation fails alone
                    c.execute("ROLLBACK TO op")
                    c.execute("RELEASE op")
                    for p, mark in zip(parts, marks):
                        p.undo(mark)
                    op_results.append((False, e))
            for p in parts:
                p.before_commit(c)
            c.execute("COMMIT")
            if self.full:
                # keep the WAL from growing into the reserve: once checkpointed it is rewritten from its start
                try:
                    c.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
        except BaseException:
            for p in parts:
                p.rolled_back()
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        for p in parts:
            p.after_commit()
        return results, op_results
