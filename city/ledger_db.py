"""The ledger's store: what nodes declare for it, and the day's inputs read from the sink's file.

Table `node_facts` (in city/db.py's SCHEMA): per node, what PUT /v1/nodes
declares beside its kind and position (city/ledger.py Facts): `district`,
`rated_power_w` (a lamp), `baseline` (an irrigation controller's fixed
schedule) and `stress_vwc_pct`. Functions take the sink's connection (run
on city/db.py's one thread).

A `baseline` is an object: `l_per_day` (litres a day, all zones), or
`mm_per_day` with `area_m2` (the irrigated area; 1 mm on 1 m2 is 1 L);
optionally `start` ("HH:MM", local time) and `minutes`, the window in which
the schedule waters (the zones one after the other), so the baseline falls
in the hours it would have watered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import orjson

from city.ledger import ALARM_LOOKBACK_S, LOOKBACK_S, Facts, Reading, RequestRow, day_bounds
from city.matching import NodeInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS node_facts (
    id TEXT PRIMARY KEY,
    district TEXT NOT NULL,
    rated_power_w REAL,
    baseline_l_day REAL,
    baseline_start_min INTEGER,
    baseline_minutes INTEGER,
    stress_vwc_pct REAL,
    updated REAL NOT NULL
);
"""

MAX_POWER_W = 10_000.0
MAX_L_DAY = 10_000_000.0  # 10,000 m3 a day: a large park's whole network


def _number(where: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ValueError(f"{where}: a number from {lo:g} to {hi:g}")
    return float(v)


def parse_facts(where: str, d: dict[str, Any], kind: str) -> Facts | None:
    """The ledger facts of one PUT /v1/nodes item; None when it declares none. ValueError names the bad key."""
    if not any(k in d for k in ("district", "rated_power_w", "baseline", "stress_vwc_pct")):
        return None
    district = d.get("district") or ""
    if not isinstance(district, str) or len(district) > 128 or any(ord(ch) < 32 for ch in district):
        raise ValueError(f"{where}.district: a text of at most 128 characters")
    power = None
    if d.get("rated_power_w") is not None:
        if kind != "lighting":
            raise ValueError(f"{where}.rated_power_w: only a lighting node has a rated power")
        power = _number(f"{where}.rated_power_w", d["rated_power_w"], 0.1, MAX_POWER_W)
    l_day = start = minutes = stress = None
    b = d.get("baseline")
    if b is not None:
        if kind != "irrigation":
            raise ValueError(f"{where}.baseline: only an irrigation node declares a watering baseline")
        if not isinstance(b, dict):
            raise ValueError(f"{where}.baseline: an object: l_per_day, or mm_per_day and area_m2")
        unknown = set(b) - {"l_per_day", "mm_per_day", "area_m2", "start", "minutes"}
        if unknown:
            raise ValueError(f"{where}.baseline: unknown key {sorted(unknown)[0]!r}")
        if "l_per_day" in b:
            if "mm_per_day" in b or "area_m2" in b:
                raise ValueError(f"{where}.baseline: l_per_day, or mm_per_day and area_m2, not both")
            l_day = _number(f"{where}.baseline.l_per_day", b["l_per_day"], 0, MAX_L_DAY)
        elif "mm_per_day" in b and "area_m2" in b:
            mm = _number(f"{where}.baseline.mm_per_day", b["mm_per_day"], 0, 1000)
            area = _number(f"{where}.baseline.area_m2", b["area_m2"], 0, 10_000_000)
            l_day = mm * area  # 1 mm of water on 1 m2 is 1 litre
            if l_day > MAX_L_DAY:
                raise ValueError(f"{where}.baseline: more than {MAX_L_DAY:g} L a day")
        else:
            raise ValueError(f"{where}.baseline: give l_per_day, or mm_per_day and area_m2")
        if ("start" in b) != ("minutes" in b):
            raise ValueError(f"{where}.baseline: start and minutes go together")
        if "start" in b:
            s = b["start"]
            hh, sep, mm_ = s.partition(":") if isinstance(s, str) else ("", "", "")
            if not (
                sep
                and len(hh) == 2
                and len(mm_) == 2
                and hh.isascii()
                and hh.isdigit()
                and mm_.isascii()
                and mm_.isdigit()
            ):
                raise ValueError(f"{where}.baseline.start: local time as HH:MM")
            if not (int(hh) < 24 and int(mm_) < 60):
                raise ValueError(f"{where}.baseline.start: local time as HH:MM")
            start = int(hh) * 60 + int(mm_)
            minutes = int(_number(f"{where}.baseline.minutes", b["minutes"], 1, 1440))
    if d.get("stress_vwc_pct") is not None:
        if kind != "irrigation":
            raise ValueError(f"{where}.stress_vwc_pct: only an irrigation node measures soil moisture")
        stress = _number(f"{where}.stress_vwc_pct", d["stress_vwc_pct"], 0, 100)
    return Facts(district, power, l_day, start, minutes, stress)


def put_facts(c: sqlite3.Connection, facts: Iterable[tuple[str, Facts]], now: float) -> None:
    c.executemany(
        "INSERT INTO node_facts VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET district = excluded.district, "
        "rated_power_w = excluded.rated_power_w, baseline_l_day = excluded.baseline_l_day, "
        "baseline_start_min = excluded.baseline_start_min, baseline_minutes = excluded.baseline_minutes, "
        "stress_vwc_pct = excluded.stress_vwc_pct, updated = excluded.updated",
        [
            (
                nid,
                f.district,
                f.rated_power_w,
                f.baseline_l_day,
                f.baseline_start_min,
                f.baseline_minutes,
                f.stress_vwc_pct,
                now,
            )
            for nid, f in facts
        ],
    )


def load_facts(c: sqlite3.Connection) -> dict[str, Facts]:
    return {
        r[0]: Facts(*r[1:])
        for r in c.execute(
            "SELECT id, district, rated_power_w, baseline_l_day, baseline_start_min, baseline_minutes, "
            "stress_vwc_pct FROM node_facts"
        )
    }


def version(c: sqlite3.Connection) -> tuple[Any, ...]:
    """Changes whenever any input of a ledger may have changed (the cache's key)."""
    return (
        c.execute("SELECT MAX(seq) FROM records").fetchone()[0],
        c.execute("SELECT MAX(updated), COUNT(*) FROM service_requests").fetchone(),
        c.execute("SELECT MAX(updated), COUNT(*) FROM nodes").fetchone(),
        c.execute("SELECT MAX(updated), COUNT(*) FROM node_facts").fetchone(),
    )


def day_inputs(
    c: sqlite3.Connection, d0: float, d1: float
) -> tuple[list[NodeInfo], dict[str, Facts], list[Reading], list[RequestRow]]:
    """Everything compute_day needs for the day [d0, d1)."""
    nodes = [NodeInfo(*r) for r in c.execute("SELECT id, kind, name, site, lat, lon FROM nodes ORDER BY id")]
    readings = []
    for node, kind, t, doc in c.execute(
        "SELECT node, type, t, doc FROM records WHERE t >= ? AND t < ? AND type IN ('light', 'irrigation')",
        (d0 - LOOKBACK_S, d1 + LOOKBACK_S),  # after: the reading that closes the day's last interval
    ):
        fields = orjson.loads(doc).get("fields")
        if isinstance(fields, dict):
            readings.append(Reading(node, kind, t, fields))
    for node, kind, t, doc in c.execute(
        "SELECT node, type, t, doc FROM records WHERE t >= ? AND t < ? AND type IN ('event', 'status')",
        (d0 - ALARM_LOOKBACK_S, d1),
    ):
        fields = orjson.loads(doc).get("fields")
        if isinstance(fields, dict):
            readings.append(Reading(node, kind, t, fields))
    reqs = [
        RequestRow(src, code, verdict, req, upd if status == "closed" else None)
        for src, code, verdict, req, upd, status in c.execute(
            "SELECT source, service_code, verdict, requested, updated, status FROM service_requests "
            "WHERE requested < ? AND (status = 'open' OR updated >= ?)",
            (d1, d0),
        )
    ]
    return nodes, load_facts(c), readings, reqs


def first_record_time(c: sqlite3.Connection) -> float | None:
    return c.execute("SELECT MIN(t) FROM records").fetchone()[0]


__all__ = ["SCHEMA", "day_bounds", "day_inputs", "load_facts", "parse_facts", "put_facts", "version"]
