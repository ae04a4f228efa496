"""The gateway's one SQLite database: the durable record queue and everything
that must survive a crash with it.

One file, WAL mode, `synchronous=FULL` by default, so a committed
transaction survives `kill -9` and power loss. `Store` is the public face;
behind it, one writer core and a part per concern, each owning its tables
and its in-memory state:

- core.py: the connections, the group commit (everything queued so far in
  one transaction with one fsync), the writer's executor, the `meta` table
  (lifetime counters: evicted, quarantined);
- records.py: `records` and `quarantine`, the bound and eviction policy, the
  committed records kept in memory for the upstream, reception merges;
- windows.py: `windows` and `window_log`, every node's uplink replay window,
  written in the same transaction as the records it admitted (exactly once
  across a crash);
- downlinks.py: `downlinks` and `dl_counters`, the downlink queue and every
  node's downlink frame counter;
- nodes.py: `nodes`, node state (last seen, radio, firmware, last readings,
  open alarms), flushed every `state_flush_s` (alarm changes with their group);
- notifications.py: the alarm journal (written with the records' group) and
  the notification outbox (gateway/notify.py sends it);
- campaigns.py: firmware update campaigns, their images and per-node progress
  (gateway/campaigns.py).

Limits and policies are `Store.open` arguments: `max_records`, `group_max`
(records per transaction: bounds commit latency), `quarantine_max`,
`state_flush_s`, `recent_max` (committed records kept in memory),
`window_log_max` (windows logged before the fold), and how the writer runs:
`executor` (default: a thread of its own), `synchronous` (the SQLite level)
and `exclusive` (reads through the writer's connection, which holds the file
alone: for a writer running on the loop's thread, as the simulator's);
`alarm_journal` journals alarm changes for notifications (notifications.py);
`reserve_bytes` (the room kept for alarms when the disk fills: core.py,
"full mode"; 0: none).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gateway.model import Downlink, Record
from gateway.store.campaigns import SCHEMA as _CAMPAIGNS_SCHEMA
from gateway.store.campaigns import CampaignTable
from gateway.store.core import DEFAULT_RESERVE_BYTES, SYNC_LEVELS, StoreClosed, StoreError, StoreFull, Writer
from gateway.store.downlinks import DOWNLINK_OPEN_STATES, DownlinkTable
from gateway.store.downlinks import SCHEMA as _DOWNLINKS_SCHEMA
from gateway.store.nodes import SCHEMA as _NODES_SCHEMA
from gateway.store.nodes import STATE_FLUSH_S, NodeStates
from gateway.store.notifications import SCHEMA as _NOTIFY_SCHEMA
from gateway.store.notifications import Notifications
from gateway.store.records import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_QUARANTINE_MAX,
    PRIO_ALARM,
    PRIO_OTHER,
    PRIO_ROUTINE,
    RECENT_MAX,
    RESPONSE_TEXT_MAX,
    QueueFull,
    Records,
    priority,
)
from gateway.store.records import SCHEMA as _RECORDS_SCHEMA
from gateway.store.records import migrate as _migrate_records
from gateway.store.windows import SCHEMA as _WINDOWS_SCHEMA
from gateway.store.windows import WINDOW_LOG_MAX, ReplayWindow, Snapshot, Windows

__all__ = [
    "Store",
    "StoreError",
    "StoreClosed",
    "StoreFull",
    "QueueFull",
    "ReplayWindow",
    "priority",
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_GROUP_MAX",
    "DEFAULT_QUARANTINE_MAX",
    "RECENT_MAX",
    "STATE_FLUSH_S",
    "WINDOW_LOG_MAX",
    "RESPONSE_TEXT_MAX",
    "PRIO_ROUTINE",
    "PRIO_OTHER",
    "PRIO_ALARM",
    "DOWNLINK_OPEN_STATES",
    "SYNC_LEVELS",
    "DEFAULT_RESERVE_BYTES",
]

DEFAULT_GROUP_MAX = 4096


class Store:
    """Open with `await Store.open(path)`; close with `await store.close()`.

    Mutations are coroutines that return once committed. Reads are plain
    methods on a second connection (WAL readers never wait for the writer)
    and see every transaction whose coroutine has returned.
    """

    def __init__(
        self,
        path: Path,
        max_records: int = DEFAULT_MAX_RECORDS,
        group_max: int = DEFAULT_GROUP_MAX,
        quarantine_max: int = DEFAULT_QUARANTINE_MAX,
        state_flush_s: float = STATE_FLUSH_S,
        *,
        recent_max: int = RECENT_MAX,
        window_log_max: int = WINDOW_LOG_MAX,
        executor: concurrent.futures.Executor | None = None,
        synchronous: str = "FULL",
        exclusive: bool = False,
        alarm_journal: bool = False,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.max_records = max_records
        self.group_max = group_max
        self.quarantine_max = quarantine_max
        self.state_flush_s = state_flush_s
        self.writer = Writer(
            self.path,
            group_max=group_max,
            executor=executor,
            synchronous=synchronous,
            exclusive=exclusive,
            reserve_bytes=reserve_bytes,
        )
        self.replay_windows = Windows(window_log_max)
        self.records = Records(
            self.writer,
            self.replay_windows,
            max_records=max_records,
            quarantine_max=quarantine_max,
            recent_max=recent_max,
        )
        self.downlink_table = DownlinkTable(self.writer)
        self.nodes = NodeStates(self.writer, state_flush_s)
        self.campaigns = CampaignTable(self.writer)
        # alarm changes journalled for notifications, with the records that made them
        self.notifications = Notifications(self.writer)
        self.notifications.enabled = alarm_journal
        if alarm_journal:
            self.nodes.on_alarm = self.notifications.journal
        # the records' windows are logged by the records' share of a group, folded after it;
        # a node whose alarms changed has its state written in the same group (nodes.py)
        self.writer.parts = [self.records, self.replay_windows, self.nodes, self.notifications]

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        group_max: int = DEFAULT_GROUP_MAX,
        quarantine_max: int = DEFAULT_QUARANTINE_MAX,
        state_flush_s: float = STATE_FLUSH_S,
        recent_max: int = RECENT_MAX,
        window_log_max: int = WINDOW_LOG_MAX,
        executor: concurrent.futures.Executor | None = None,
        synchronous: str = "FULL",
        exclusive: bool = False,
        alarm_journal: bool = False,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> Store:
        """Open (or create) the database at `path`; the keyword arguments are the module docstring's."""
        if (
            max_records < 1
            or group_max < 1
            or quarantine_max < 0
            or recent_max < 1
            or window_log_max < 1
            or reserve_bytes < 0
        ):
            raise ValueError("store limits must be positive")
        self = cls(
            Path(path),
            max_records,
            group_max,
            quarantine_max,
            state_flush_s,
            recent_max=recent_max,
            window_log_max=window_log_max,
            executor=executor,
            synchronous=synchronous,
            exclusive=exclusive,
            alarm_journal=alarm_journal,
            reserve_bytes=reserve_bytes,
        )
        w = self.writer
        await w.open(
            _RECORDS_SCHEMA + _WINDOWS_SCHEMA + _DOWNLINKS_SCHEMA + _NODES_SCHEMA + _NOTIFY_SCHEMA + _CAMPAIGNS_SCHEMA
        )
        try:
            await w.call(_migrate_records)
        except sqlite3.Error as e:
            await w.close()
            raise StoreError(f"{path}: cannot bring the database up to date: {e}") from e
        r = w.reader
        assert r is not None
        self.records.load(r, w.meta())
        self.downlink_table.load(r)
        self.replay_windows.load(r)
        self.nodes.load(r)
        self.campaigns.load(r)
        w.start()
        self.nodes.start()
        return self

    async def close(self) -> None:
        """Commit everything queued, flush node state, close the database."""
        if self.writer.closed:
            return
        await self.nodes.close()
        await self.writer.close()

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.writer.drain()

    # ------------------------------------------------------------ records

    async def append(self, record: Record, window: Snapshot | None = None) -> int:
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

    def append_many(self, items: Sequence[tuple[Record, Snapshot | None]]) -> asyncio.Future[list]:
        """Queue several records at once; the future gives, per item, its seq or the exception.

        The records join the next group commit (they may span two if there are
        more than `group_max`); the future completes when all are decided.
        Windows are taken in order: give each record the window right after it.
        """
        fut, items, seq = self.records.queue(items)
        if not items:
            return fut
        # once per record: every lookup bound here
        latest = self.records.latest
        windows = self.replay_windows.current
        note = self.nodes.note
        for record, window in items:
            latest[record.node_id] = (seq, record)
            seq += 1
            if window is not None:
                windows[window[0]] = window
            note(record)
        self.writer.wake()
        return fut

    def upstream_down(self, down: bool) -> None:
        """The upstream started failing (True) or works again: during an outage only a few
        committed records are kept in memory (records.Records: they would be sent last)."""
        self.records.upstream_down = down

    def add_reception(
        self, node_id: int, counter: int, rssi: float | None, snr: float | None, gateway_id: str, key_gen: int = 0
    ) -> bool:
        """Merge another radio's reception of a stored frame (records.Records.add_reception)."""
        return self.records.add_reception(node_id, counter, rssi, snr, gateway_id, key_gen)

    def next_batch(self, max_records: int, after: int = 0, named: bool = True) -> list[tuple[int, Record]]:
        """The oldest queued records (seq > after), in arrival order (records.Records.next_batch)."""
        return self.records.next_batch(max_records, after, named)

    async def delete(self, seqs: Iterable[int]) -> int:
        """Remove records the upstream answered 2xx for; returns how many were still queued."""
        return await self.records.delete(seqs)

    async def quarantine(self, seqs: Iterable[int], status: int, response_text: str) -> int:
        """Move the records of a refused batch (4xx) to the quarantine; returns the batch id."""
        return await self.records.quarantine(seqs, status, response_text)

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent quarantined batches, newest first, with their records."""
        return self.records.quarantined(limit)

    def quarantine_count(self) -> int:
        return self.records.quarantine_count()

    def count(self) -> int:
        """Records queued and committed (appends still in flight not included)."""
        return self.records.count()

    def oldest_rx_time(self) -> float | None:
        """Receive time of the oldest queued record: the upstream lag is now minus this."""
        return self.records.oldest_rx_time()

    def size_bytes(self) -> int:
        """Size of the database and its write-ahead log on disk."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total

    @property
    def evicted_total(self) -> int:
        return self.records.evicted_total

    @property
    def quarantined_total(self) -> int:
        return self.records.quarantined_total

    @property
    def committed_records(self) -> int:
        return self.records.committed_records

    @property
    def full(self) -> bool:
        """The disk is full: only alarms are stored until there is room (core.py, "full mode")."""
        return self.writer.full

    def full_figures(self) -> dict[str, int]:
        """Failed group commits by cause, times the disk went full, records refused while full."""
        w = self.writer
        return {
            "commit_failures_full": w.failures["full"],
            "commit_failures_other": w.failures["other"],
            "full_events": w.full_events,
            "refused_full": w.refused_full,
        }

    @property
    def commits(self) -> int:
        return self.writer.commits

    @property
    def commit_seconds(self) -> float:
        return self.writer.commit_seconds

    # ------------------------------------------------------------ replay windows

    def window(self, node_id: int) -> tuple[int, int] | None:
        """(top, mask) of the node's uplink replay window, or None for a node never heard."""
        return self.replay_windows.get(node_id)

    def replay_window(self, node_id: int) -> ReplayWindow:
        """The node's uplink replay window as an object the pipeline checks and commits counters with."""
        return self.replay_windows.replay_window(node_id)

    def windows(self) -> dict[int, tuple[int, int]]:
        return self.replay_windows.all()

    async def reset_node(self, node_id: int) -> None:
        """Forget a node's counters (replay window, downlink counter): after it was re-keyed.

        SPEC §2: a new root key may restart the counters at 0.
        """
        await self.reset_nodes((node_id,))

    async def reset_nodes(self, node_ids: Iterable[int]) -> None:
        """`reset_node` for several nodes, all forgotten in memory before the first await: a
        frame of the second node's new key never meets its old window (nor merges into its old
        key's record) while the first one's reset is written."""
        ids = list(node_ids)
        log_windows, reset_counter = self.replay_windows.log, self.downlink_table.reset_counter

        def op(c: sqlite3.Connection) -> None:
            # a tombstone after whatever the log holds for the node; the fold deletes its row
            log_windows(c, [(n, -1, 0) for n in ids])
            for n in ids:
                reset_counter(c, n)

        for n in ids:
            self.replay_windows.current.pop(n, None)
            self.records.forget_node(n)
        if ids:
            await self.writer.submit(op)

    # ------------------------------------------------------------ node state

    def node_state(self, node_id: int) -> dict[str, Any] | None:
        return self.nodes.state(node_id)

    def node_ids(self) -> list[int]:
        return self.nodes.node_ids()

    def node_alarms(self, node_id: int) -> dict[str, Any] | None:
        """The latest cycle of each of a node's alarms (nodes.NodeStates.alarms)."""
        return self.nodes.alarms(node_id)

    async def flush_state(self) -> None:
        await self.nodes.flush()

    async def expect_release(
        self, node_ids: list[int], expected: dict[str, str] | None, now: float
    ) -> dict[int, dict[str, Any]]:
        """Set (None: clear) the release nodes should run (gateway/releases.py), in one
        transaction; on disk on return. Their release states by node id."""
        return await self.nodes.expect_release(node_ids, expected, now)

    def release_states(self) -> dict[str, int]:
        """Nodes with an expected release, by state (gateway/releases.py STATES)."""
        return self.nodes.release_states()

    @property
    def release_rollbacks(self) -> int:
        return self.nodes.rollbacks

    # ------------------------------------------------------------ downlinks

    async def add_downlink(
        self,
        node_id: int,
        mtype: int,
        body: dict[int, Any],
        expires: float,
        command_id: int | None = None,
        now: float | None = None,
    ) -> Downlink:
        """Queue a downlink; a COMMAND without an id gets its row id as command id."""
        return await self.downlink_table.add(node_id, mtype, body, expires, command_id, now)

    async def update_downlink(self, dl: Downlink, now: float | None = None) -> None:
        await self.downlink_table.update(dl, now)

    def downlink(self, id_: int) -> Downlink | None:
        return self.downlink_table.get(id_)

    def downlinks(
        self, node_id: int | None = None, states: Iterable[str] | None = None, limit: int = 1000
    ) -> list[Downlink]:
        """Downlinks oldest first, optionally of one node and in some states."""
        return self.downlink_table.list(node_id, states, limit)

    def downlink_counts(self) -> dict[str, int]:
        return self.downlink_table.counts()

    async def next_downlink_counter(self, node_id: int) -> int:
        """The next downlink frame counter of a node, committed before it is returned (downlinks.py)."""
        return await self.downlink_table.next_counter(node_id)
