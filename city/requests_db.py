"""The service-request store: nodes' positions, their open alarms, requests and their reporters.

Every function takes the sink's sqlite3 connection (city/db.py runs them on
its one thread) and expects the caller to hold a transaction (BEGIN
IMMEDIATE), so a report and the duplicate check it depends on are one step.

Tables (added to city/db.py's SCHEMA):
- `nodes`: what the sink is told about each node (PUT /v1/nodes, or
  `lumeau sink --nodes registry.toml`): kind, name, site, position; no keys.
- `alarms`: each (node, alarm, zone) with the time raised and cleared, from
  the EVENT, STATUS and HELLO records the sink stores (city/matching.py).
- `service_requests`: the Open311 requests; `source` is `resident` or
  `device` (opened by a node alarm, agency "Lumeau").
- `request_alarms`: the alarms a request tracks; a request with tracked
  alarms closes, with a `service_notice`, once all of them are cleared.
- `reporters`: one row per report: its token (GET tokens/{token} answers
  the request it joined) and the reporter's contact details, which are
  erased when the request closes and never served.

Duplicates: a report joins an open request (gets a token of its own for
the same service_request_id) when it is confirmed by an alarm that request
tracks, or when it is of the same service and about one of the same nodes
(without nodes: within the matching radius of it, or at the same address).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from city import catalogue, matching
from city.matching import Alarm, AlarmChange, Judgement, NodeInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    site TEXT NOT NULL,
    lat REAL,
    lon REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_kind_lat ON nodes (kind, lat);
CREATE TABLE IF NOT EXISTS alarms (
    node TEXT NOT NULL,
    alarm TEXT NOT NULL,
    zone INTEGER NOT NULL,
    raised REAL NOT NULL,
    cleared REAL,
    PRIMARY KEY (node, alarm, zone)
);
CREATE TABLE IF NOT EXISTS service_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service_code TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    verdict TEXT NOT NULL,
    status_notes TEXT NOT NULL,
    service_notice TEXT NOT NULL,
    description TEXT NOT NULL,
    agency TEXT NOT NULL,
    requested REAL NOT NULL,
    updated REAL NOT NULL,
    address TEXT NOT NULL,
    address_id TEXT NOT NULL,
    lat REAL,
    lon REAL,
    media_url TEXT NOT NULL,
    attributes TEXT NOT NULL,
    nodes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS service_requests_requested ON service_requests (requested);
CREATE INDEX IF NOT EXISTS service_requests_open ON service_requests (status, service_code);
CREATE TABLE IF NOT EXISTS request_alarms (
    request INTEGER NOT NULL,
    node TEXT NOT NULL,
    alarm TEXT NOT NULL,
    zone INTEGER NOT NULL,
    open INTEGER NOT NULL,
    PRIMARY KEY (request, node, alarm, zone)
);
CREATE INDEX IF NOT EXISTS request_alarms_alarm ON request_alarms (node, alarm, zone);
CREATE TABLE IF NOT EXISTS reporters (
    token TEXT PRIMARY KEY,
    request INTEGER NOT NULL,
    created REAL NOT NULL,
    email TEXT,
    phone TEXT,
    first_name TEXT,
    last_name TEXT,
    device_id TEXT,
    account_id TEXT
);
CREATE INDEX IF NOT EXISTS reporters_request ON reporters (request);
"""

DEVICE_AGENCY = "Lumeau"
RESIDENT_AGENCY = "City services"
CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "device_id", "account_id")
REQUEST_COLUMNS = (
    "id, service_code, source, status, verdict, status_notes, service_notice, description, agency, "
    "requested, updated, address, address_id, lat, lon, media_url, attributes, nodes"
)


@dataclass
class Report:
    """A resident's POST requests, validated (city/open311.py)."""

    service_code: str
    lat: float | None = None
    lon: float | None = None
    address: str = ""
    address_id: str = ""
    description: str = ""
    media_url: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    contact: dict[str, str] = field(default_factory=dict)  # CONTACT_FIELDS given


@dataclass(frozen=True)
class Submitted:
    request_id: int
    token: str
    duplicate: bool
    judgement: Judgement


def iso(t: float) -> str:
    """W3C date-time in UTC, to the second (GeoReport v2: ISO 8601 with a zone)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- nodes and alarms ------------------------------------------------------


def put_nodes(c: sqlite3.Connection, nodes: Iterable[NodeInfo], now: float) -> int:
    rows = [(n.id, n.kind, n.name, n.site, n.lat, n.lon, now) for n in nodes]
    c.executemany(
        "INSERT INTO nodes VALUES (?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, "
        "name = excluded.name, site = excluded.site, lat = excluded.lat, lon = excluded.lon, "
        "updated = excluded.updated",
        rows,
    )
    return len(rows)


def note_node(c: sqlite3.Connection, node: str, kind: str, now: float) -> None:
    """A node that said HELLO is known by its kind at least (no position until the sink is told one)."""
    c.execute("INSERT OR IGNORE INTO nodes VALUES (?, ?, '', '', NULL, NULL, ?)", (node, kind, now))


def load_nodes(c: sqlite3.Connection) -> list[NodeInfo]:
    return [NodeInfo(*r) for r in c.execute("SELECT id, kind, name, site, lat, lon FROM nodes ORDER BY id")]


def nodes_of(c: sqlite3.Connection, kind: str | None, near: tuple[float, float, float] | None = None) -> list[NodeInfo]:
    """The nodes of `kind`; with `near` (lat, lon, metres) only those in the box around it (an index
    range, so a report in a city of 100,000 nodes reads a handful)."""
    if kind is None:
        return []
    sql = "SELECT id, kind, name, site, lat, lon FROM nodes WHERE kind = ?"
    args: list[Any] = [kind]
    if near is not None:
        lat, lon, r = near
        box = matching.widen(matching.Bounds(lat, lon, lat, lon), r * 1.01)
        sql += " AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?"
        args += [box.south, box.north, box.west, box.east]
    return [NodeInfo(*row) for row in c.execute(sql + " ORDER BY id", args)]


def city_bounds(c: sqlite3.Connection) -> matching.Bounds | None:
    """The known nodes' box widened by matching.BOUNDS_MARGIN_M; None when no node has a position."""
    row = c.execute("SELECT MIN(lat), MIN(lon), MAX(lat), MAX(lon) FROM nodes WHERE lat IS NOT NULL").fetchone()
    if row is None or row[0] is None:
        return None
    return matching.widen(matching.Bounds(*row), matching.BOUNDS_MARGIN_M)


def open_alarms(c: sqlite3.Connection) -> list[Alarm]:
    return [Alarm(*r) for r in c.execute("SELECT node, alarm, zone FROM alarms WHERE cleared IS NULL")]


def apply_change(c: sqlite3.Connection, ch: AlarmChange, now: float) -> None:
    """One record's alarm change: the alarm state, and the requests it opens, confirms or closes."""
    if ch.op == "raise":
        c.execute(
            "INSERT INTO alarms VALUES (?,?,?,?,NULL) ON CONFLICT (node, alarm, zone) DO UPDATE SET "
            "raised = CASE WHEN cleared IS NULL THEN raised ELSE excluded.raised END, cleared = NULL",
            (ch.node, ch.alarm, ch.zone, ch.t),
        )
        _on_raise(c, Alarm(ch.node, ch.alarm, ch.zone), now)
    elif ch.op == "clear":
        c.execute(
            "UPDATE alarms SET cleared = ? WHERE node = ? AND alarm = ? AND zone = ? AND cleared IS NULL",
            (ch.t, ch.node, ch.alarm, ch.zone),
        )
        _on_clear(c, [Alarm(ch.node, ch.alarm, ch.zone)], ch, now)
    elif ch.op == "clear_all":
        # only those raised before the STATUS (an alarm raised after it may overtake it in the queue)
        gone = [
            Alarm(ch.node, a, z)
            for a, z in c.execute(
                "SELECT alarm, zone FROM alarms WHERE node = ? AND cleared IS NULL AND raised <= ?", (ch.node, ch.t)
            )
        ]
        c.execute(
            "UPDATE alarms SET cleared = ? WHERE node = ? AND cleared IS NULL AND raised <= ?", (ch.t, ch.node, ch.t)
        )
        _on_clear(c, gone, ch, now)
    elif ch.op == "forget_all":
        # a restarted node forgets its alarms and raises again what still holds: the alarms close, the
        # requests stay open (their alarms re-attach on the re-raise) -- a reboot is not a repair
        c.execute("UPDATE alarms SET cleared = ? WHERE node = ? AND cleared IS NULL", (ch.t, ch.node))


def _node(c: sqlite3.Connection, node: str) -> NodeInfo | None:
    r = c.execute("SELECT id, kind, name, site, lat, lon FROM nodes WHERE id = ?", (node,)).fetchone()
    return NodeInfo(*r) if r else None


def _on_raise(c: sqlite3.Connection, a: Alarm, now: float) -> None:
    key = (a.node, a.alarm, a.zone)
    tracked = c.execute(
        "SELECT ra.request FROM request_alarms ra JOIN service_requests r ON r.id = ra.request "
        "WHERE ra.node = ? AND ra.alarm = ? AND ra.zone = ? AND r.status = 'open'",
        key,
    ).fetchall()
    if tracked:
        c.execute(
            "UPDATE request_alarms SET open = 1 WHERE node = ? AND alarm = ? AND zone = ? AND request IN "
            "(SELECT id FROM service_requests WHERE status = 'open')",
            key,
        )
        return
    # a resident reported it first: the alarm confirms the oldest open report about this node it explains
    for rid, code, nodes in c.execute(
        "SELECT id, service_code, nodes FROM service_requests WHERE status = 'open' ORDER BY id"
    ).fetchall():
        svc = catalogue.BY_CODE.get(code)
        if svc is not None and a.alarm in svc.alarms and a.node in json.loads(nodes):
            c.execute("INSERT OR REPLACE INTO request_alarms VALUES (?,?,?,?,1)", (rid, *key))
            j = Judgement(matching.CONFIRMED, tuple(json.loads(nodes)), (a,))
            c.execute(
                "UPDATE service_requests SET verdict = ?, status_notes = ?, updated = ? WHERE id = ?",
                (j.verdict, j.note(), now, rid),
            )
            return
    code = catalogue.ALARM_SERVICE.get(a.alarm)
    if code is None:
        return
    info = _node(c, a.node)
    where = (info.name or info.site) if info else ""
    text = catalogue.ALARM_TEXT.get(a.alarm, a.alarm)
    zone = f", zone {a.zone}" if a.zone else ""
    desc = f"Node {a.node}{' (' + where + ')' if where else ''} reports: {text}{zone}."
    j = Judgement(matching.CONFIRMED, (a.node,), (a,))
    cur = c.execute(
        "INSERT INTO service_requests (service_code, source, status, verdict, status_notes, service_notice, "
        "description, agency, requested, updated, address, address_id, lat, lon, media_url, attributes, nodes) "
        "VALUES (?, 'device', 'open', ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, '', '{}', ?)",
        (
            code,
            j.verdict,
            j.note(),
            desc,
            DEVICE_AGENCY,
            now,
            now,
            _address(info),
            a.node,
            info.lat if info else None,
            info.lon if info else None,
            json.dumps([a.node]),
        ),
    )
    c.execute("INSERT INTO request_alarms VALUES (?,?,?,?,1)", (cur.lastrowid, *key))


def _address(info: NodeInfo | None) -> str:
    if info is None:
        return ""
    if info.name and info.site and info.site not in info.name:
        return f"{info.name}, {info.site}"
    return info.name or info.site


def _on_clear(c: sqlite3.Connection, gone: list[Alarm], ch: AlarmChange, now: float) -> None:
    touched: set[int] = set()
    for a in gone:
        key = (a.node, a.alarm, a.zone)
        for (rid,) in c.execute(
            "SELECT ra.request FROM request_alarms ra JOIN service_requests r ON r.id = ra.request "
            "WHERE ra.node = ? AND ra.alarm = ? AND ra.zone = ? AND r.status = 'open'",
            key,
        ).fetchall():
            c.execute(
                "UPDATE request_alarms SET open = 0 WHERE request = ? AND node = ? AND alarm = ? AND zone = ?",
                (rid, *key),
            )
            touched.add(rid)
    for rid in sorted(touched):
        left = c.execute("SELECT COUNT(*) FROM request_alarms WHERE request = ? AND open = 1", (rid,)).fetchone()[0]
        if left:
            continue
        how = "a status report with no open alarm" if ch.op == "clear_all" else "its fault cleared"
        nodes = sorted({a.node for a in gone})
        close(c, rid, f"Resolved: node {', '.join(nodes)} reported {how} at {iso(ch.t)}.", now)


def close(c: sqlite3.Connection, rid: int, notice: str, now: float) -> bool:
    """Close an open request with `notice`, and erase its reporters' contact details."""
    cur = c.execute(
        "UPDATE service_requests SET status = 'closed', service_notice = ?, updated = ? "
        "WHERE id = ? AND status = 'open'",
        (notice, now, rid),
    )
    if not cur.rowcount:
        return False
    c.execute("UPDATE reporters SET " + ", ".join(f"{f} = NULL" for f in CONTACT_FIELDS) + " WHERE request = ?", (rid,))
    return True


# -- residents' reports ----------------------------------------------------


def submit(c: sqlite3.Connection, rep: Report, radius_m: float, now: float) -> Submitted:
    """Match, judge, then open a request or join the open one it duplicates; a token for this reporter."""
    svc = catalogue.BY_CODE[rep.service_code]
    near = (rep.lat, rep.lon, radius_m) if rep.lat is not None and rep.lon is not None else None
    matches = matching.match(
        nodes_of(c, svc.kind, near),
        svc.kind,
        lat=rep.lat,
        lon=rep.lon,
        address=rep.address,
        address_id=rep.address_id,
        radius_m=radius_m,
    )
    evidence = _daylight(c, matches, now) if svc.code == "lamp_on_by_day" else []
    j = matching.judge(svc, matches, open_alarms(c), evidence)
    rid = _duplicate_of(c, rep, j, radius_m)
    duplicate = rid is not None
    if rid is None:
        cur = c.execute(
            "INSERT INTO service_requests (service_code, source, status, verdict, status_notes, service_notice, "
            "description, agency, requested, updated, address, address_id, lat, lon, media_url, attributes, nodes) "
            "VALUES (?, 'resident', 'open', ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rep.service_code,
                j.verdict,
                j.note(),
                rep.description,
                RESIDENT_AGENCY,
                now,
                now,
                rep.address,
                rep.address_id,
                rep.lat,
                rep.lon,
                rep.media_url,
                json.dumps(rep.attributes, sort_keys=True),
                json.dumps(list(j.nodes)),
            ),
        )
        rid = int(cur.lastrowid or 0)
    elif j.verdict == matching.CONFIRMED:  # this report brings the device's word to the request it joins
        c.execute(
            "UPDATE service_requests SET verdict = ?, status_notes = ?, updated = ? WHERE id = ?",
            (j.verdict, j.note(), now, rid),
        )
    else:
        c.execute("UPDATE service_requests SET updated = ? WHERE id = ?", (now, rid))
    for a in j.alarms:
        c.execute("INSERT OR IGNORE INTO request_alarms VALUES (?,?,?,?,1)", (rid, a.node, a.alarm, a.zone))
    token = secrets.token_urlsafe(18)
    c.execute(
        "INSERT INTO reporters VALUES (?,?,?,?,?,?,?,?,?)",
        (token, rid, now, *(rep.contact.get(f) or None for f in CONTACT_FIELDS)),
    )
    return Submitted(rid, token, duplicate, j)


DAYLIGHT_RECENT_S = 6 * 3600  # a LIGHT report received this recently still tells what the lamp does


def _daylight(c: sqlite3.Connection, matches: list[matching.Match], now: float) -> list[str]:
    """Each matched lamp's latest LIGHT report, received in the last DAYLIGHT_RECENT_S, if it shows
    the lamp lit in daylight (city/matching.py lit_in_daylight)."""
    out = []
    for m in matches:
        row = c.execute(
            "SELECT doc, t FROM records WHERE node = ? AND type = 'light' AND received >= ? ORDER BY seq DESC LIMIT 1",
            (m.node.id, now - DAYLIGHT_RECENT_S),
        ).fetchone()
        if row is not None:
            ev = matching.lit_in_daylight(json.loads(row[0]), row[1], m.node)
            if ev:
                out.append(ev)
    return out


def _duplicate_of(c: sqlite3.Connection, rep: Report, j: Judgement, radius_m: float) -> int | None:
    for a in j.alarms:  # confirmed: the request that tracks that alarm (the node's own, or a resident's)
        row = c.execute(
            "SELECT ra.request FROM request_alarms ra JOIN service_requests r ON r.id = ra.request "
            "WHERE ra.node = ? AND ra.alarm = ? AND ra.zone = ? AND r.status = 'open' ORDER BY ra.request LIMIT 1",
            (a.node, a.alarm, a.zone),
        ).fetchone()
        if row:
            return int(row[0])
    mine = set(j.nodes)
    for rid, nodes, lat, lon, address in c.execute(
        "SELECT id, nodes, lat, lon, address FROM service_requests WHERE status = 'open' AND service_code = ? "
        "ORDER BY id",
        (rep.service_code,),
    ).fetchall():
        theirs = set(json.loads(nodes))
        if mine or theirs:
            if mine & theirs:
                return int(rid)
            continue
        if rep.lat is not None and rep.lon is not None and lat is not None and lon is not None:
            if matching.distance_m(rep.lat, rep.lon, lat, lon) <= radius_m:
                return int(rid)
        elif rep.address and address and " ".join(matching.words(rep.address)) == " ".join(matching.words(address)):
            return int(rid)
    return None


def token_request(c: sqlite3.Connection, token: str) -> int | None:
    row = c.execute("SELECT request FROM reporters WHERE token = ?", (token,)).fetchone()
    return int(row[0]) if row else None


def query(
    c: sqlite3.Connection,
    *,
    ids: list[int] | None = None,
    codes: list[str] | None = None,
    statuses: list[str] | None = None,
    start: float | None = None,
    end: float | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Requests as dicts (no reporter data but their count), newest first."""
    where: list[str] = []
    args: list[Any] = []
    for col, vals in (("id", ids), ("service_code", codes), ("status", statuses)):
        if vals:
            where.append(f"{col} IN ({','.join('?' * len(vals))})")
            args.extend(vals)
    if start is not None:
        where.append("requested >= ?")
        args.append(start)
    if end is not None:
        where.append("requested <= ?")
        args.append(end)
    sql = f"SELECT {REQUEST_COLUMNS}, (SELECT COUNT(*) FROM reporters WHERE request = r.id) FROM service_requests r"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY requested DESC, id DESC LIMIT ?"
    cols = [x.strip() for x in REQUEST_COLUMNS.split(",")] + ["reports"]
    return [dict(zip(cols, row, strict=True)) for row in c.execute(sql, (*args, limit))]
