"""Node state: last seen, radio, firmware, last readings, open alarms (table `nodes`).

A cache of what the records said, kept in memory as records are appended and
flushed to the database every `flush_s` seconds (and at close): after a crash
it may be up to that old (records and replay windows never are). The newest
record and the readings are kept as Records and named only when someone
reads the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from gateway.model import Record
from gateway.store.core import StoreError, Writer
from protocol import expand
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.store")

STATE_FLUSH_S = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    state TEXT NOT NULL
);
"""


class NodeStates:
    def __init__(self, writer: Writer, flush_s: float = STATE_FLUSH_S) -> None:
        self.writer = writer
        self.flush_s = flush_s
        self._states: dict[int, dict[str, Any]] = {}
        self._dirty: set[int] = set()
        self._flusher: asyncio.Task | None = None

    def load(self, r: sqlite3.Connection) -> None:
        self._states = {n: json.loads(s) for n, s in r.execute("SELECT node_id, state FROM nodes")}

    def start(self) -> None:
        if self.flush_s > 0:
            self._flusher = asyncio.create_task(self._run_flusher(), name="lumeau-store-state")

    async def close(self) -> None:
        """Stop flushing periodically and flush what changed (before the writer closes)."""
        if self._flusher is not None:
            self._flusher.cancel()
        if self._dirty:
            try:
                await self.writer.submit(self._state_writer())
            except StoreError as e:
                log.warning("node state not flushed at close: %s", e)

    def note(self, rec: Record) -> None:
        """Fold an appended record into its node's state (once per record: keep it cheap)."""
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
                    st["open_alarms"][key] = {
                        "fields": expand.expand(mtype, rec.body),
                        "since": rec.rx_time,
                        "counter": rec.counter,
                    }
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
            out.update(
                last_seen=last.rx_time,
                rssi=last.best_rssi,
                snr=last.best_snr,
                gateway_id=last.gateway_id,
                last_counter=last.counter,
            )
        out["readings"] = {
            k: {"fields": expand.expand(v.mtype, v.body), "rx_time": v.rx_time} if isinstance(v, Record) else v
            for k, v in st["readings"].items()
        }
        return out

    def state(self, node_id: int) -> dict[str, Any] | None:
        st = self._states.get(node_id)
        return json.loads(json.dumps(self._plain(st))) if st is not None else None

    def node_ids(self) -> list[int]:
        return list(self._states)

    def _state_writer(self) -> Callable[[sqlite3.Connection], None]:
        rows = [(n, json.dumps(self._plain(self._states[n]), separators=(",", ":"))) for n in self._dirty]
        self._dirty = set()

        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO nodes (node_id, state) VALUES (?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET state = excluded.state",
                rows,
            )

        return op

    async def flush(self) -> None:
        if self._dirty:
            await self.writer.submit(self._state_writer())

    async def _run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except StoreError as e:
                log.warning("node state flush failed: %s", e)
