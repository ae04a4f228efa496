"""Node state: last seen, radio, firmware, last readings, open alarms (table `nodes`).

A cache of what the records said, kept in memory as records are appended and
flushed to the database every `flush_s` seconds (and at close): after a crash
it may be up to that old (records and replay windows never are) -- except
the alarms: a record that opens or closes one writes its node's state in the
same group commit as the record (`NodeStates` is a part of the writer's
group, gateway/store/core.py), so the alarm state survives `kill -9` with
the record that changed it. The newest record and the readings are kept as
Records and named only when someone reads the state.

Alarms (`open_alarms`, keyed "<code>:<zone>"): an EVENT with `active` 1
opens one (a resend of the same raise keeps the first `since`), `active` 0
closes it. The node forgets its alarms when it restarts (its fault flags
live in RAM and are raised again if the fault persists), so a HELLO closes
every open one; and a STATUS whose `open_alarms` is 0 closes those raised
before the STATUS was taken (node clock, when both times are known: an
alarm raised after it may overtake it in the node's queue). The last closed
cycle of each alarm is kept in `closed_alarms` (when, by what record), so
the upstream, which maps records some time after they arrived, knows which
alarms were open at any record of the latest cycle (`alarms`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from gateway import releases
from gateway.logs import RateLimiter
from gateway.model import Record
from gateway.store.core import Part, StoreError, Writer
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


_OPEN = "open_alarms"
_CLOSED = "closed_alarms"


_UPSERT = "INSERT INTO nodes (node_id, state) VALUES (?, ?) ON CONFLICT (node_id) DO UPDATE SET state = excluded.state"


def _alarm(entry: dict[str, Any]) -> dict[str, Any]:
    """An open_alarms / closed_alarms entry as `alarms` gives it (plain values by name)."""
    f = entry.get("fields", {})

    def v(name: str) -> Any:
        x = f.get(name)
        return x.get("value") if isinstance(x, dict) else None

    return {
        "code": v("code"),
        "severity": v("severity"),
        "zone": v("zone") or 0,
        "value": v("value"),
        "time": v("time") or None,
        "since": entry.get("since"),
        "counter": entry.get("counter"),
        "until": entry.get("until"),
        "until_counter": entry.get("until_counter"),
        "until_time": entry.get("until_time"),
        "closed_by": entry.get("closed_by"),
    }


_CODES = {v: k for k, v in expand.ENUMS[(m.EVENT, m.E_CODE)].items()}
_SEVERITIES = {v: k for k, v in expand.ENUMS[(m.EVENT, m.E_SEVERITY)].items()}


def _raw(entry: dict[str, Any]) -> dict[int, Any]:
    """An open alarm's code, zone, severity and value as body keys (air values: what the journal keeps)."""
    a = _alarm(entry)
    code, sev = a["code"], a["severity"]
    return {
        m.E_CODE: _CODES.get(code, code) if isinstance(code, str) else code,
        m.E_ZONE: a["zone"],
        m.E_SEVERITY: _SEVERITIES.get(sev, sev) if isinstance(sev, str) else sev,
        m.E_VALUE: a["value"],
    }


class NodeStates(Part):
    def __init__(self, writer: Writer, flush_s: float = STATE_FLUSH_S) -> None:
        self.writer = writer
        self.flush_s = flush_s
        self._states: dict[int, dict[str, Any]] = {}
        self._dirty: set[int] = set()
        self._urgent: set[int] = set()  # alarms changed: written with the next group commit
        self._flusher: asyncio.Task | None = None
        # told of every change of an alarm cycle (notifications.Notifications.journal), on alarm
        # changes only: the hot path (telemetry) never reaches it
        self.on_alarm: Callable[..., None] | None = None
        self.rollbacks = 0  # rollbacks seen since the gateway started (/metrics)
        self._log_limit = RateLimiter()  # a fleet rolling back at once: 20 lines, then 1/s

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
            self._release(rec, st)
            self._close(rec, st, "hello", None)  # a restarted node raises again what still holds
        elif mtype == m.EVENT:
            self._event(rec, st)
        else:  # the frequent case: keep the record, name its fields only when someone looks
            st["readings"][rec.kind] = rec
            if mtype == m.STATUS and rec.body.get(m.S_ALARMS) == 0 and st[_OPEN]:
                self._close(rec, st, "status", rec.body.get(m.S_TIME) or None)
        self._dirty.add(rec.node_id)

    def _release(self, rec: Record, st: dict[str, Any]) -> None:
        before = st.get("release")
        rel, rolled_back = releases.on_hello(before, rec.body.get(m.H_BUNDLE), rec.rx_time)
        st["release"] = rel
        if before is None or rel.get("state") != before.get("state"):
            self._changed(rec.node_id)  # written with the HELLO's group commit
        if rolled_back:
            self.rollbacks += 1
            allowed, suppressed = self._log_limit.allow("rollback")
            if allowed:
                exp = rel["expected"]
                log.warning(
                    "node rolled back: expected release %s (bundle %s), HELLO reports bundle %s",
                    exp["version"],
                    exp["bundle"][: releases.PREFIX],
                    rel["running"] or "none",
                    extra={"node": f"{rec.node_id:08x}", "suppressed": suppressed},
                )

    async def expect_release(
        self, node_ids: list[int], expected: dict[str, str] | None, now: float
    ) -> dict[int, dict[str, Any]]:
        """Set (None: clear) the release nodes should run, in one transaction; durable on return."""
        out = {}
        for n in node_ids:
            st = self._states.get(n)
            if st is None:
                st = self._states[n] = {"readings": {}, "open_alarms": {}}
            st["release"] = releases.expect(st.get("release"), expected, now)
            out[n] = dict(st["release"])
        self._dirty.difference_update(node_ids)
        rows = self._rows(set(node_ids))

        def op(c: sqlite3.Connection) -> None:
            c.executemany(_UPSERT, rows)

        await self.writer.submit(op)
        return out

    def release_states(self) -> dict[str, int]:
        out = dict.fromkeys(releases.STATES, 0)
        for st in self._states.values():
            state = (st.get("release") or {}).get("state")
            if state in out:
                out[state] += 1
        return out

    def _event(self, rec: Record, st: dict[str, Any]) -> None:
        active = rec.body.get(m.E_ACTIVE)
        if active is None:  # a one-shot report: nothing opens or closes
            if self.on_alarm is not None:
                self._tell("report", rec, rec.rx_time, rec.counter, rec.body)
            return
        key = f"{rec.body[m.E_CODE]}:{rec.body.get(m.E_ZONE, 0)}"
        opened = st[_OPEN]
        if active:
            fields = expand.expand(m.EVENT, rec.body)
            entry = opened.get(key)
            if entry is None or entry.get("counter", 0) > rec.counter:  # new, or counters restarted (re-keyed)
                opened[key] = {"fields": fields, "since": rec.rx_time, "counter": rec.counter}
                self._changed(rec.node_id)
                if self.on_alarm is not None:
                    self._tell("raise", rec, rec.rx_time, rec.counter, rec.body)
            elif entry["fields"] != fields:  # raised again (a new severity, value): since stays
                before = entry["fields"].get("severity")
                entry["fields"] = fields
                self._changed(rec.node_id)
                if self.on_alarm is not None and before != fields.get("severity"):
                    self._tell("raise", rec, entry["since"], entry["counter"], rec.body)
        else:
            entry = opened.pop(key, None)
            if entry is not None:
                if self.on_alarm is not None:
                    self._tell("clear", rec, entry["since"], entry["counter"], _raw(entry), "event")
                t = rec.body.get(m.E_TIME)
                st.setdefault(_CLOSED, {})[key] = {
                    **entry,
                    "until": rec.rx_time,
                    "until_counter": rec.counter,
                    "until_time": t or None,
                    "closed_by": "event",
                }
                self._changed(rec.node_id)

    def _close(self, rec: Record, st: dict[str, Any], by: str, node_time: int | None) -> None:
        """Close the open alarms (those raised up to `node_time` on the node's clock, when known)."""
        opened = st[_OPEN]
        closed = st.setdefault(_CLOSED, {})
        for key, entry in list(opened.items()):
            raised = (entry["fields"].get("time") or {}).get("value")
            if node_time is not None and raised and raised > node_time:
                continue  # raised after the STATUS was taken: the STATUS does not know it
            del opened[key]
            if self.on_alarm is not None:
                self._tell("clear", rec, entry["since"], entry["counter"], _raw(entry), by)
            closed[key] = {
                **entry,
                "until": rec.rx_time,
                "until_counter": rec.counter,
                "until_time": node_time,
                "closed_by": by,
            }
            self._changed(rec.node_id)

    def _tell(
        self, event: str, rec: Record, since: float, counter: int, body: dict[int, Any], by: str | None = None
    ) -> None:
        assert self.on_alarm is not None
        self.on_alarm(
            event,
            rec.node_id,
            body.get(m.E_CODE, 0),
            body.get(m.E_ZONE, 0),
            body.get(m.E_SEVERITY, 0),
            body.get(m.E_VALUE),
            rec.rx_time,
            since,
            counter,
            by,
        )

    def _changed(self, node_id: int) -> None:
        self._urgent.add(node_id)
        self.writer.wake()

    def alarms(self, node_id: int) -> dict[str, Any] | None:
        """The latest cycle of each alarm a node raised, and its zones with a soil sensor, for the
        upstream's mapping (gateway/ngsi_ld.py); None for a node never heard.

        {"alarms": [...], "zones": [1, 3]}, each alarm {"code", "severity", "zone", "value",
        "time" (node clock when raised, s, or None), "since" (received), "counter" (of the raise),
        and once closed "until" (received), "until_counter", "until_time" (node clock, or None),
        "closed_by" ("event", "status" or "hello"); None while open}. Which alarms were open at a
        given record follows from the counters; a record older than an alarm's previous cycle
        sees only the latest one.
        """
        st = self._states.get(node_id)
        if st is None:
            return None
        cycles = [_alarm(e) for e in st[_OPEN].values()] + [_alarm(e) for e in st.get(_CLOSED, {}).values()]
        reading = st["readings"].get("irrigation")
        moisture: Any = None
        if isinstance(reading, Record):
            moisture = reading.body.get(m.IR_MOISTURE)
        elif isinstance(reading, dict):
            moisture = (reading.get("fields", {}).get("soil_moisture") or {}).get("value")
        zones = [z for z, v in enumerate(moisture or (), start=1) if v is not None and v != m.NO_VALUE]
        return {"alarms": cycles, "zones": zones}

    # -- a part of the group commit: alarm changes are written with the records that made them

    def has_work(self) -> bool:
        return bool(self._urgent)

    def take(self, limit: int) -> Any:
        if not self._urgent:
            return None
        nodes, self._urgent = self._urgent, set()
        return nodes, self._rows(nodes)

    def write(self, c: sqlite3.Connection, work: Any) -> Any:
        if work is not None:
            c.executemany(_UPSERT, work[1])
        return None

    def failed(self, work: Any, err: StoreError) -> None:
        if work is not None:
            self._dirty |= work[0]  # the periodic flush tries again (not the next group: no busy loop)

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

    def _rows(self, nodes: set[int]) -> list[tuple[int, str]]:
        return [(n, json.dumps(self._plain(self._states[n]), separators=(",", ":"))) for n in nodes]

    def _state_writer(self) -> Callable[[sqlite3.Connection], None]:
        rows = self._rows(self._dirty)
        self._dirty = set()

        def op(c: sqlite3.Connection) -> None:
            c.executemany(_UPSERT, rows)

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
