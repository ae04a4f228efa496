"""Replay windows: every node's uplink window, durable in the same transaction as its records.

Tables `windows` and `window_log`. A window is written **in the same
transaction** as the records it admitted, so after a crash a frame is either
stored and known as seen, or neither: exactly once. A group appends the
windows it moved to `window_log` as one row (a packed array: one insert,
where an upsert per node would cost as much again as the record's own
insert; bench/README.md); every `log_max` windows logged, the log is folded
into `windows` (an upsert per node changed since) in the group's own
transaction. A node's window is the `windows` row overlaid with the log in
order; a re-key logs a tombstone (top -1).

The records part hands each group's windows to `log`; this part only adds
the fold, at the end of the group's transaction.
"""

from __future__ import annotations

import sqlite3
from array import array
from itertools import chain

from gateway.store.core import Part
from protocol import frame

WINDOW_LOG_MAX = 65536  # windows logged before the fold: bounds the log read back at start (bench/README.md)

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    node_id INTEGER PRIMARY KEY,
    top INTEGER NOT NULL,
    mask INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS window_log (
    id INTEGER PRIMARY KEY,
    windows BLOB NOT NULL
);
"""

_UPSERT_WINDOW = (
    "INSERT INTO windows (node_id, top, mask) VALUES (?,?,?) "
    "ON CONFLICT (node_id) DO UPDATE SET top = excluded.top, mask = excluded.mask"
)

Snapshot = tuple[int, int, int]  # (node_id, top, mask); top -1: the node is forgotten


class ReplayWindow(frame.ReplayWindow):
    """protocol.frame.ReplayWindow plus what only the gateway needs (the node never undoes a commit)."""

    def forget(self, counter: int) -> None:
        """The commit of `counter` failed: clear its bit so a copy can still be stored.

        `top` may stay raised: later counters are still unseen, and a raised
        top only rejects what was older than the window anyway.
        """
        back = self.top - counter
        if 0 <= back < self.size:
            self.mask &= ~(1 << back)


class Windows(Part):
    def __init__(self, log_max: int = WINDOW_LOG_MAX) -> None:
        self.log_max = log_max
        # node -> (node, top, mask) as admitted (the records part sets it at append, before the commit)
        self.current: dict[int, Snapshot] = {}
        # the writer thread's own: committed windows, nodes logged since the last fold, log size
        self._durable: dict[int, Snapshot] = {}
        self._logged: set[int] = set()
        self._log_size = 0
        self._pending: list[list[Snapshot]] = []  # logged in the transaction under way
        self._folded: dict[int, Snapshot] | None = None

    def load(self, r: sqlite3.Connection) -> None:
        windows = {row[0]: row for row in r.execute("SELECT node_id, top, mask FROM windows")}
        logged = set()
        for (blob,) in r.execute("SELECT windows FROM window_log ORDER BY id"):
            flat = array("q")
            flat.frombytes(blob)
            for i in range(0, len(flat), 3):
                node = flat[i]
                logged.add(node)
                if flat[i + 1] < 0:  # re-keyed: forgotten
                    windows.pop(node, None)
                else:
                    windows[node] = (node, flat[i + 1], flat[i + 2])
            self._log_size += len(flat) // 3
        self.current = windows
        self._durable = dict(windows)
        self._logged = logged

    # ------------------------------------------------------------ reads (loop thread)

    def get(self, node_id: int) -> tuple[int, int] | None:
        """(top, mask) of the node's window, or None for a node never heard."""
        w = self.current.get(node_id)
        return None if w is None else (w[1], w[2])

    def replay_window(self, node_id: int) -> ReplayWindow:
        """The node's window as an object to check and commit counters with."""
        w = self.current.get(node_id)
        return ReplayWindow() if w is None else ReplayWindow(w[1], w[2])

    def all(self) -> dict[int, tuple[int, int]]:
        return {n: (w[1], w[2]) for n, w in self.current.items()}

    # ------------------------------------------------------------ writes (writer thread)

    def log(self, c: sqlite3.Connection, windows: list[Snapshot]) -> None:
        """Append windows (node, top, mask; top -1: forget the node) to the log, inside the
        group's transaction."""
        # int64 triples: node ids and tops are below 2**32, masks hold REPLAY_WINDOW (32) bits
        c.execute("INSERT INTO window_log (windows) VALUES (?)", (array("q", chain.from_iterable(windows)).tobytes(),))
        self._pending.append(windows)

    def begin(self) -> None:
        self._pending = []
        self._folded = None

    def mark(self) -> int:
        return len(self._pending)

    def undo(self, mark: int) -> None:
        del self._pending[mark:]

    def before_commit(self, c: sqlite3.Connection) -> None:
        pending = self._pending
        if pending and self._log_size + sum(map(len, pending)) >= self.log_max:
            self._folded = self._fold(c, pending)

    def after_commit(self) -> None:
        # committed: what the database now says the windows are
        if self._folded is not None:
            self._durable, self._logged, self._log_size = self._folded, set(), 0
            self._folded = None
            return
        durable, logged = self._durable, self._logged
        for ws in self._pending:
            for w in ws:
                durable[w[0]] = w
                logged.add(w[0])
            self._log_size += len(ws)

    def _fold(self, c: sqlite3.Connection, pending: list[list[Snapshot]]) -> dict[int, Snapshot]:
        """Write every window logged since the last fold into `windows` and empty the log;
        returns the committed windows as they will be once this transaction commits."""
        merged = dict(self._durable)
        nodes = set(self._logged)
        for ws in pending:
            for w in ws:
                merged[w[0]] = w
                nodes.add(w[0])
        ups, gone = [], []
        for n in nodes:
            w = merged.get(n)
            if w is None or w[1] < 0:  # forgotten (re-keyed), before or after a restart
                gone.append((n,))
                merged.pop(n, None)
            else:
                ups.append(w)
        c.executemany(_UPSERT_WINDOW, ups)
        c.executemany("DELETE FROM windows WHERE node_id = ?", gone)
        c.execute("DELETE FROM window_log")
        return merged
