"""The downlink queue's rows and every node's downlink frame counter (tables `downlinks`, `dl_counters`).

gateway/downlinks.py decides what to send and when; this part only keeps it
durable. A counter is committed before the frame that uses it is sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import cbor2

from gateway.model import Downlink
from gateway.store.core import StoreError, Writer
from protocol import frame
from protocol import messages as m

DOWNLINK_OPEN_STATES = ("queued", "sent")

SCHEMA = """
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
"""

_DL_COLS = "id, node_id, mtype, body, created, expires, command_id, attempts, state, result, updated"


def _downlink_from_row(row: tuple) -> Downlink:
    id_, node_id, mtype, body, created, expires, command_id, attempts, state, result, _updated = row
    return Downlink(
        id=id_,
        node_id=node_id,
        mtype=mtype,
        body=cbor2.loads(body),
        created=created,
        expires=expires,
        command_id=command_id,
        attempts=attempts,
        state=state,
        result=result,
    )


class DownlinkTable:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._next_id = 1

    def load(self, r: sqlite3.Connection) -> None:
        self._next_id = (r.execute("SELECT MAX(id) FROM downlinks").fetchone()[0] or 0) + 1

    async def add(
        self,
        node_id: int,
        mtype: int,
        body: dict[int, Any],
        expires: float,
        command_id: int | None = None,
        now: float | None = None,
    ) -> Downlink:
        """Queue a downlink; a COMMAND without an id gets its row id as command id."""
        now = time.time() if now is None else now
        id_ = self._next_id
        self._next_id += 1
        if mtype == m.COMMAND and command_id is None:
            command_id = id_ & 0xFFFFFFFF
            body = dict(body)
            body[0] = command_id
        dl = Downlink(
            id=id_, node_id=node_id, mtype=mtype, body=body, created=now, expires=expires, command_id=command_id
        )
        row = (id_, node_id, mtype, cbor2.dumps(body, canonical=True), now, expires, command_id, 0, "queued", None, now)
        await self.writer.submit(
            lambda c: c.execute(f"INSERT INTO downlinks ({_DL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
        )
        return dl

    async def update(self, dl: Downlink, now: float | None = None) -> None:
        now = time.time() if now is None else now
        row = (dl.attempts, dl.state, dl.result, now, dl.id)
        await self.writer.submit(
            lambda c: c.execute(
                "UPDATE downlinks SET attempts = ?, state = ?, result = ?, updated = ? WHERE id = ?", row
            )
        )

    def get(self, id_: int) -> Downlink | None:
        r = self.writer.reader
        assert r is not None
        row = r.execute(f"SELECT {_DL_COLS} FROM downlinks WHERE id = ?", (id_,)).fetchone()
        return _downlink_from_row(row) if row else None

    def list(
        self, node_id: int | None = None, states: Iterable[str] | None = None, limit: int = 1000
    ) -> list[Downlink]:
        """Downlinks oldest first, optionally of one node and in some states."""
        r = self.writer.reader
        assert r is not None
        where: list[str] = []
        args: list[int | str] = []
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
        return [_downlink_from_row(row) for row in r.execute(sql, args)]

    def counts(self) -> dict[str, int]:
        r = self.writer.reader
        assert r is not None
        return dict(r.execute("SELECT state, COUNT(*) FROM downlinks GROUP BY state").fetchall())

    async def next_counter(self, node_id: int) -> int:
        """The next downlink frame counter of a node, committed before it is returned.

        A crash after this returns skips a counter, never reuses one. The gateway's
        counters stop below frame.TOOL_COUNTER_BASE (2^31): the upper half belongs to
        commissioning tools over BLE, with its own replay window on the node (SPEC §4).
        """

        def op(c: sqlite3.Connection) -> int:
            row = c.execute(
                "INSERT INTO dl_counters (node_id, counter) VALUES (?, 0) "
                "ON CONFLICT (node_id) DO UPDATE SET counter = counter + 1 RETURNING counter",
                (node_id,),
            ).fetchone()
            if row[0] >= frame.TOOL_COUNTER_BASE:
                raise StoreError(f"node {node_id:08x}: downlink counter exhausted, the node must be re-keyed")
            return row[0]

        return await self.writer.submit(op)

    @staticmethod
    def reset_counter(c: sqlite3.Connection, node_id: int) -> None:
        """The node was re-keyed (writer thread, in a transaction): its downlink counter goes ON.

        A node takes the gateway's downlinks only above the top of its window
        (SPEC §4). Starting again at 0 would be refused by a node that kept its
        window through the re-key (a config swapped in without an erase); going
        on is accepted by it and by a node that started afresh under the new
        key alike, and a counter is never reused under either key. Only an
        exhausted counter starts again at 0: that node must come back with
        fresh state (SPEC §2).
        """
        c.execute("DELETE FROM dl_counters WHERE node_id = ? AND counter >= ?", (node_id, frame.TOOL_COUNTER_BASE - 1))
