"""Alarm notifications, durable (tables `notify_events`, `notify_outbox`, `notify_alarms`, `notify_rate`).

- `notify_events`, the journal: every change of an alarm cycle (raised,
  cleared, a one-shot report) is written **in the same group commit as the
  record that made it** (this is a group `Part`, fed by gateway/store/nodes.py
  as it folds records into node state), so an alarm stored is an alarm that
  will be notified, across `kill -9`. Only with `Store.open(alarm_journal=True)`
  (the service sets it when `[notify] enabled`); rows leave once decided.
- `notify_outbox`: one row per message, `key` UNIQUE: the idempotency key per
  (alarm cycle, event, channel, recipient) (gateway/notify_rules.py), so a
  decision made twice adds nothing. States: `pending` (to send at `due`,
  retried at `next_try`), `collecting` (a digest still taking entries until
  `due`), `sent`, `failed` (refused for good), `skipped` (quiet hours),
  `digested` (went out inside a digest: `digest` names it).
- `notify_alarms`: each alarm cycle told of, with its acknowledgement and its
  escalation (when, to whom, done).
- `notify_rate`: when each target was last given something, for storm
  detection (pruned past the window).

Deciding an event (`apply`, `apply_many`) reads what it needs and writes
every outcome in one transaction with the removal of its journal row, on the
writer's thread: it is done exactly once. A group that fails keeps its
journal rows in memory for the next group, as node state keeps its alarms
(the node resends a confirmed alarm whose record was lost; node state would
not see a change again).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.core import Part, StoreError, Writer

SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_events (
    id INTEGER PRIMARY KEY,
    node_id INTEGER NOT NULL,
    event TEXT NOT NULL,
    code INTEGER NOT NULL,
    zone INTEGER NOT NULL,
    severity INTEGER NOT NULL,
    value TEXT NOT NULL,
    at REAL NOT NULL,
    since REAL NOT NULL,
    counter INTEGER NOT NULL,
    closed_by TEXT
);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    cycle TEXT,
    items TEXT NOT NULL,
    created REAL NOT NULL,
    due REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    digest INTEGER
);
CREATE INDEX IF NOT EXISTS notify_outbox_state ON notify_outbox (state, due);
CREATE INDEX IF NOT EXISTS notify_outbox_cycle ON notify_outbox (cycle);
CREATE INDEX IF NOT EXISTS notify_outbox_digest ON notify_outbox (digest) WHERE digest IS NOT NULL;
CREATE INDEX IF NOT EXISTS notify_outbox_target ON notify_outbox (channel, recipient, state);
CREATE TABLE IF NOT EXISTS notify_alarms (
    cycle TEXT PRIMARY KEY,
    node_id INTEGER NOT NULL,
    code TEXT NOT NULL,
    zone INTEGER NOT NULL,
    severity TEXT NOT NULL,
    item TEXT NOT NULL,
    raised REAL NOT NULL,
    cleared REAL,
    acked REAL,
    acked_by TEXT,
    escalate_at REAL,
    escalate_to TEXT,
    escalated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS notify_alarms_node ON notify_alarms (node_id, code);
CREATE TABLE IF NOT EXISTS notify_rate (
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notify_rate_target ON notify_rate (channel, recipient, at);
"""

OPEN_STATES = ("pending", "collecting")
TOLD_STATES = ("pending", "collecting", "sent", "digested")

_OUT_COLS = (
    "id, key, kind, channel, recipient, cycle, items, created, due, state, attempts, next_try, last_error, sent_at"
)


@dataclass(frozen=True)
class JournalEvent:
    """A row of `notify_events`: an alarm cycle changed (codes and severities as on the air)."""

    id: int
    node_id: int
    event: str  # raise | clear | report
    code: int
    zone: int
    severity: int
    value: Any
    at: float
    since: float
    counter: int  # the counter of the record that raised the cycle
    closed_by: str | None

    @property
    def cycle(self) -> str:
        """The alarm cycle's identity: node, code, zone, and counter and time of its raise
        (a counter alone could come back after a re-key)."""
        return f"{self.node_id:08x}-{self.code}-{self.zone}-{self.counter}-{round(self.since * 1000)}"


@dataclass
class OutboxRow:
    id: int
    key: str
    kind: str  # alarm | clear | report | escalation | digest
    channel: str
    recipient: str
    cycle: str | None
    items: list[dict[str, Any]]
    created: float
    due: float
    state: str
    attempts: int
    next_try: float
    last_error: str | None
    sent_at: float | None

    def public(self, recipient: str | None = None) -> dict[str, Any]:
        """For the API; `recipient`: how to show it (a webhook URL's path may hold a token)."""
        return {
            "id": self.id,
            "key": self.key,
            "kind": self.kind,
            "channel": self.channel,
            "recipient": self.recipient if recipient is None else recipient,
            "cycle": self.cycle,
            "items": len(self.items),
            "created": self.created,
            "due": self.due,
            "state": self.state,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "last_error": self.last_error,
            "sent_at": self.sent_at,
        }


def _row(r: tuple, c: sqlite3.Connection) -> OutboxRow:
    row = OutboxRow(*r[:6], json.loads(r[6]), *r[7:])  # type: ignore[call-arg]
    if row.kind == "digest":  # its entries: the rows digested into it, in order
        row.items = [
            json.loads(i)[0]
            for (i,) in c.execute("SELECT items FROM notify_outbox WHERE digest = ? ORDER BY id", (row.id,))
        ]
    return row


@dataclass
class NewMessage:
    """A message decided for the outbox (gateway/notify.py builds these from notify_rules.Message)."""

    key: str
    kind: str
    channel: str
    recipient: str
    cycle: str | None
    item: dict[str, Any]
    due: float
    skipped: bool = False
    digest: bool = False  # join the target's open digest (or open one, due `digest_due`)
    digest_key: str = ""  # the key of a digest this message opens


@dataclass
class Outcome:
    """What deciding one event writes: messages, and the cycle's bookkeeping."""

    messages: list[NewMessage]
    cycle: str | None = None
    cycle_row: dict[str, Any] | None = None  # insert (raise, report) or update severity
    cleared: float | None = None
    escalate_at: float | None = None
    escalate_to: list[list[str]] | None = None


# what `apply` runs for one event: (targets told of the cycle, recent(channel, recipient)) -> Outcome
Decider = Callable[[frozenset[tuple[str, str]], Callable[[str, str], int]], Outcome]


class Notifications(Part):
    """The journal (a group Part) and the outbox; see the module docstring."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.enabled = False
        self._pending: list[tuple] = []

    # ------------------------------------------------------------ the journal, in the group commit

    def journal(
        self,
        event: str,
        node_id: int,
        code: int,
        zone: int,
        severity: int,
        value: Any,
        at: float,
        since: float,
        counter: int,
        closed_by: str | None = None,
    ) -> None:
        """Called by node state as it folds a record (loop thread); written with that record's group."""
        if not self.enabled:
            return
        self._pending.append((node_id, event, code, zone, severity, json.dumps(value), at, since, counter, closed_by))
        self.writer.wake()

    def has_work(self) -> bool:
        return bool(self._pending)

    def take(self, limit: int) -> Any:
        if not self._pending:
            return None
        work, self._pending = self._pending, []
        return work

    def write(self, c: sqlite3.Connection, work: Any) -> Any:
        if work:
            c.executemany(
                "INSERT INTO notify_events (node_id, event, code, zone, severity, value, at, since, counter, "
                "closed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                work,
            )
        return None

    def failed(self, work: Any, err: StoreError) -> None:
        if work:  # as node state does: the change is still true in memory, written with the next group
            self._pending[:0] = work

    # ------------------------------------------------------------ reads (the reader's connection)

    def _reader(self) -> sqlite3.Connection:
        r = self.writer.reader
        assert r is not None
        return r

    def events(self, limit: int = 100, after: int = 0) -> list[JournalEvent]:
        """Journalled events not yet decided (id > `after`), oldest first."""
        rows = self._reader().execute(
            "SELECT id, node_id, event, code, zone, severity, value, at, since, counter, closed_by "
            "FROM notify_events WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [JournalEvent(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), *r[7:]) for r in rows]

    def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        """Pending rows due by `now`, oldest first, those waiting for a retry included (the sender
        keeps each recipient's order: a row waiting holds back the later ones of its recipient)."""
        rows = self._reader().execute(
            f"SELECT {_OUT_COLS} FROM notify_outbox WHERE state = 'pending' AND due <= ? ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [_row(r, self._reader()) for r in rows]

    def next_wake(self) -> float | None:
        """The earliest time something in the outbox becomes due (or a digest closes)."""
        got = (
            self._reader()
            .execute("SELECT MIN(MAX(due, next_try)) FROM notify_outbox WHERE state IN ('pending', 'collecting')")
            .fetchone()[0]
        )
        esc = (
            self._reader()
            .execute(
                "SELECT MIN(escalate_at) FROM notify_alarms WHERE escalated = 0 AND escalate_at IS NOT NULL "
                "AND acked IS NULL AND cleared IS NULL"
            )
            .fetchone()[0]
        )
        times = [t for t in (got, esc) if t is not None]
        return min(times) if times else None

    def outbox(self, states: tuple[str, ...] | None = None, limit: int = 1000) -> list[OutboxRow]:
        if states:
            q = f"SELECT {_OUT_COLS} FROM notify_outbox WHERE state IN ({','.join('?' * len(states))}) ORDER BY id"
            rows = self._reader().execute(q + " LIMIT ?", (*states, limit))
        else:
            rows = self._reader().execute(f"SELECT {_OUT_COLS} FROM notify_outbox ORDER BY id LIMIT ?", (limit,))
        return [_row(r, self._reader()) for r in rows]

    def counts(self) -> dict[str, int]:
        return dict(self._reader().execute("SELECT state, COUNT(*) FROM notify_outbox GROUP BY state"))

    def alarms(self, open_only: bool = True, limit: int = 1000) -> list[dict[str, Any]]:
        q = (
            "SELECT cycle, node_id, code, zone, severity, raised, cleared, acked, acked_by, escalate_at, escalated "
            "FROM notify_alarms"
        )
        q += " WHERE cleared IS NULL" if open_only else ""
        rows = self._reader().execute(q + " ORDER BY raised LIMIT ?", (limit,))
        keys = ("cycle", "node_id", "code", "zone", "severity", "raised", "cleared", "acked", "acked_by")
        return [{**dict(zip(keys, r[:9])), "escalate_at": r[9], "escalated": bool(r[10])} for r in rows]

    def escalations_due(self, now: float) -> list[tuple[str, dict[str, Any], list[list[str]]]]:
        """(cycle, raise item, targets) of cycles neither acknowledged nor cleared past their escalation time."""
        rows = self._reader().execute(
            "SELECT cycle, item, escalate_to FROM notify_alarms WHERE escalated = 0 AND escalate_at <= ? "
            "AND acked IS NULL AND cleared IS NULL ORDER BY escalate_at",
            (now,),
        )
        return [(c, json.loads(i), json.loads(t or "[]")) for c, i, t in rows]

    # ------------------------------------------------------------ writes (one transaction each)

    async def apply(
        self,
        event_id: int | None,
        cycle: str,
        decide: Decider,
        now: float,
        storm_window_s: float,
        digest_due: float,
    ) -> Outcome:
        """Decide one event (see `apply_many`); raises what deciding it raised."""
        (got,) = await self.apply_many([(event_id, cycle, decide)], now, storm_window_s, digest_due)
        if isinstance(got, Exception):
            raise got
        return got

    async def apply_many(
        self,
        items: Sequence[tuple[int | None, str, Decider]],
        now: float,
        storm_window_s: float,
        digest_due: float,
    ) -> list[Outcome | Exception]:
        """Decide events in order and write each outcome with the removal of its journal row, all
        in one transaction (a storm costs one fsync per batch, not per alarm); each event in a
        savepoint of its own, so one that fails (a bug) is left in the journal alone.

        `decide(told, recent)` runs on the writer's thread with what the outbox holds: the
        targets told of the cycle's raise or escalation, and `recent(channel, recipient)`: what
        the target was given within the storm window. An `event_id` None is an escalation (the
        cycle is marked escalated instead)."""
        since = now - storm_window_s

        def op(c: sqlite3.Connection) -> list[Outcome | Exception]:
            def recent(channel: str, recipient: str) -> int:
                return int(
                    c.execute(
                        "SELECT COUNT(*) FROM notify_rate WHERE channel = ? AND recipient = ? AND at >= ?",
                        (channel, recipient, since),
                    ).fetchone()[0]
                )

            results: list[Outcome | Exception] = []
            for event_id, cycle, decide in items:
                c.execute("SAVEPOINT notify_event")
                try:
                    results.append(self._apply_one(c, event_id, cycle, decide, recent, now, digest_due))
                    c.execute("RELEASE notify_event")
                except Exception as e:  # this event only: the others of the batch stand
                    c.execute("ROLLBACK TO notify_event")
                    c.execute("RELEASE notify_event")
                    results.append(e)
            return results

        result: list[Outcome | Exception] = await self.writer.submit(op)
        return result

    def _apply_one(
        self,
        c: sqlite3.Connection,
        event_id: int | None,
        cycle: str,
        decide: Decider,
        recent: Callable[[str, str], int],
        now: float,
        digest_due: float,
    ) -> Outcome:
        if event_id is None:  # an escalation: only if still due, as of this transaction
            still = c.execute(
                "SELECT 1 FROM notify_alarms WHERE cycle = ? AND escalated = 0 AND acked IS NULL AND cleared IS NULL",
                (cycle,),
            ).fetchone()
            if still is None:
                return Outcome(messages=[])
        told = frozenset(
            c.execute(
                "SELECT channel, recipient FROM notify_outbox WHERE cycle = ? AND kind IN ('alarm', 'escalation') "
                f"AND state IN ({','.join('?' * len(TOLD_STATES))})",
                (cycle, *TOLD_STATES),
            ).fetchall()
        )
        out = decide(told, recent)
        for msg in out.messages:
            self._insert(c, msg, now, digest_due)
        if out.cycle_row is not None:
            r = out.cycle_row
            c.execute(
                "INSERT INTO notify_alarms (cycle, node_id, code, zone, severity, item, raised) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (cycle) DO UPDATE SET severity = excluded.severity, "
                "item = excluded.item",
                (cycle, r["node_id"], r["code"], r["zone"], r["severity"], json.dumps(r["item"]), r["raised"]),
            )
        if out.escalate_at is not None:
            c.execute(
                "UPDATE notify_alarms SET escalate_at = ?, escalate_to = ? WHERE cycle = ? AND escalated = 0 "
                "AND (escalate_at IS NULL OR escalate_at > ?)",
                (out.escalate_at, json.dumps(out.escalate_to), cycle, out.escalate_at),
            )
        if out.cleared is not None:
            c.execute("UPDATE notify_alarms SET cleared = ? WHERE cycle = ?", (out.cleared, cycle))
        if event_id is not None:
            c.execute("DELETE FROM notify_events WHERE id = ?", (event_id,))
        else:
            c.execute("UPDATE notify_alarms SET escalated = 1 WHERE cycle = ?", (cycle,))
        return out

    @staticmethod
    def _insert(c: sqlite3.Connection, msg: NewMessage, now: float, digest_due: float) -> None:
        if c.execute("SELECT 1 FROM notify_outbox WHERE key = ?", (msg.key,)).fetchone():
            return  # decided before: the idempotency key holds
        items = json.dumps([msg.item])
        if msg.skipped:
            state, digest = "skipped", None
        elif msg.digest:
            row = c.execute(
                "SELECT id FROM notify_outbox WHERE kind = 'digest' AND state = 'collecting' "
                "AND channel = ? AND recipient = ? AND due >= ? ORDER BY id DESC LIMIT 1",
                (msg.channel, msg.recipient, msg.due),  # a deferred entry never rides an earlier digest
            ).fetchone()
            if row is None:  # its entries are the rows `digested` into it (no JSON rewritten per entry)
                cur = c.execute(
                    "INSERT INTO notify_outbox (key, kind, channel, recipient, cycle, items, created, due, state) "
                    "VALUES (?, 'digest', ?, ?, NULL, '[]', ?, ?, 'collecting')",
                    (msg.digest_key, msg.channel, msg.recipient, now, max(digest_due, msg.due)),
                )
                digest = cur.lastrowid
            else:
                digest = row[0]
            state = "digested"
        else:
            state, digest = "pending", None
        c.execute(
            "INSERT INTO notify_outbox (key, kind, channel, recipient, cycle, items, created, due, state, digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (msg.key, msg.kind, msg.channel, msg.recipient, msg.cycle, items, now, msg.due, state, digest),
        )
        if state != "skipped":
            c.execute(
                "INSERT INTO notify_rate (channel, recipient, at) VALUES (?, ?, ?)", (msg.channel, msg.recipient, now)
            )

    async def seal_digests(self, now: float) -> int:
        """Close the digests whose window ended: they take no more entries and are sent as they are."""
        if (
            not self._reader()
            .execute("SELECT 1 FROM notify_outbox WHERE state = 'collecting' AND due <= ? LIMIT 1", (now,))
            .fetchone()
        ):
            return 0  # nothing to close: no transaction (this runs every turn)

        def op(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE notify_outbox SET state = 'pending' WHERE state = 'collecting' AND due <= ?", (now,)
            ).rowcount

        n: int = await self.writer.submit(op)
        return n

    async def sent(self, id_: int, now: float) -> None:
        """The channel accepted the message: never sent again."""
        await self.writer.submit(
            lambda c: c.execute(
                "UPDATE notify_outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL "
                "WHERE id = ?",
                (now, id_),
            )
        )

    async def retry(self, id_: int, next_try: float, error: str) -> None:
        await self.writer.submit(
            lambda c: c.execute(
                "UPDATE notify_outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE id = ?",
                (next_try, error[:500], id_),
            )
        )

    async def give_up(self, id_: int, error: str) -> None:
        """Refused for good (a 4xx, an SMTP 5xx for the recipient): kept, not retried."""
        await self.writer.submit(
            lambda c: c.execute(
                "UPDATE notify_outbox SET state = 'failed', attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:500], id_),
            )
        )

    async def prune(self, before: float, rate_before: float) -> int:
        """Forget what is settled and older than `before`: messages sent, failed, skipped or digested
        (a digest only once sent), cycles cleared; and the storm counts older than `rate_before`.
        Open cycles and unsent messages stay."""

        def op(c: sqlite3.Connection) -> int:
            n = c.execute(
                "DELETE FROM notify_outbox WHERE created < ? AND state IN ('sent', 'failed', 'skipped', 'digested')",
                (before,),
            ).rowcount
            c.execute("DELETE FROM notify_alarms WHERE cleared IS NOT NULL AND cleared < ?", (before,))
            c.execute("DELETE FROM notify_rate WHERE at < ?", (rate_before,))
            return n

        got: int = await self.writer.submit(op)
        return got

    async def ack(self, node_id: int, code: str, zone: int | None, by: str, now: float) -> list[str]:
        """Acknowledge the open cycles of an alarm (every zone unless `zone`); the cycles acknowledged."""

        def op(c: sqlite3.Connection) -> list[str]:
            q = "SELECT cycle FROM notify_alarms WHERE node_id = ? AND code = ? AND cleared IS NULL AND acked IS NULL"
            args: tuple[Any, ...] = (node_id, code)
            if zone is not None:
                q += " AND zone = ?"
                args += (zone,)
            cycles = [r[0] for r in c.execute(q, args)]
            c.executemany(
                "UPDATE notify_alarms SET acked = ?, acked_by = ? WHERE cycle = ?", [(now, by, x) for x in cycles]
            )
            return cycles

        got: list[str] = await self.writer.submit(op)
        return got
