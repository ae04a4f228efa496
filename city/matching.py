"""Residents' reports against the nodes: which nodes a report is about, and what they say (no I/O).

Matching: the nodes of the service's kind (city/catalogue.py) within
`radius_m` of the report's position, nearest first; without a position, the
node whose id is the report's `address_id` (the id printed on the pole or
cabinet), else the nodes whose name, then whose site (street, park), is
contained word for word in the `address_string` (case and accents ignored).

Verdict, from the matched nodes' open alarms:
- `confirmed`: a matched node has an open alarm that the service lists;
- `device_normal`: nodes match but none has such an alarm (a field check is needed);
- `no_device`: no node of that kind matches (or no node kind can see this fault).

Alarm state from stored records (`alarm_changes`): an EVENT of severity
alarm or critical raises (`active` 1) or clears (`active` 0) one alarm
(node, name, zone); one-shot reports (watchdog reset, storage fault) open
nothing; a STATUS with `open_alarms` 0 clears all of the node's alarms; a
HELLO forgets them (the node raises again what still holds), which closes
the alarm but not the request it opened (see city/requests_db.py).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from city.catalogue import ALARM_TEXT, Service

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius
DEFAULT_RADIUS_M = 60.0  # about two lamp spans: a resident points at the lamp, the map pin lands near it
BOUNDS_MARGIN_M = 1000.0  # city bounds from the nodes: their bounding box widened by this much

CONFIRMED = "confirmed"
DEVICE_NORMAL = "device_normal"
NO_DEVICE = "no_device"
ALARM_SEVERITIES = frozenset(("alarm", "critical"))
ONE_SHOT = frozenset(("watchdog_reset", "storage_fault"))  # as gateway/ngsi_ld.py: issued and over at once
INFO_ONLY = frozenset(("calendar",))  # sent only as info (the calendar a node holds): never a fault


@dataclass(frozen=True)
class NodeInfo:
    id: str  # 8 lower-case hex digits
    kind: str
    name: str = ""
    site: str = ""
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class Alarm:
    node: str
    alarm: str
    zone: int = 0


@dataclass(frozen=True)
class Match:
    node: NodeInfo
    distance_m: float | None  # None: matched by address


@dataclass(frozen=True)
class Judgement:
    verdict: str
    nodes: tuple[str, ...]  # matched node ids, nearest first
    alarms: tuple[Alarm, ...]  # the open alarms that confirm it
    evidence: tuple[str, ...] = ()  # what else the nodes' own reports say that confirms it

    def note(self) -> str:
        """The request's `status_notes`: the verdict in words."""
        if self.verdict == CONFIRMED:
            what = sorted({f"{ALARM_TEXT.get(a.alarm, a.alarm)} at node {a.node}" for a in self.alarms})
            return f"Confirmed by the device: {', '.join(what + list(self.evidence))}."
        if self.verdict == DEVICE_NORMAL:
            return f"The device reports normal operation ({', '.join(self.nodes)}): a field check is needed."
        return "No monitored device nearby: a field check is needed."


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def words(text: str) -> list[str]:
    t = unicodedata.normalize("NFKD", text.lower())
    t = "".join(ch if ch.isalnum() else " " for ch in t if not unicodedata.combining(ch))
    return t.split()


def _contained(needle: str, hay: set[str]) -> bool:
    w = words(needle)
    return bool(w) and all(x in hay for x in w)


def match(
    nodes: Iterable[NodeInfo],
    kind: str | None,
    *,
    lat: float | None = None,
    lon: float | None = None,
    address: str = "",
    address_id: str = "",
    radius_m: float = DEFAULT_RADIUS_M,
) -> list[Match]:
    """The nodes of `kind` a report is about, nearest first (see the module docstring)."""
    if kind is None:
        return []
    cands = [n for n in nodes if n.kind == kind]
    if lat is not None and lon is not None:
        near = [Match(n, distance_m(lat, lon, n.lat, n.lon)) for n in cands if n.lat is not None and n.lon is not None]
        return sorted((m for m in near if m.distance_m is not None and m.distance_m <= radius_m), key=_by_distance)
    aid = address_id.strip().lower().removeprefix("0x")
    if aid:
        hit = [Match(n, None) for n in cands if n.id == aid.rjust(8, "0")]
        if hit:
            return hit
    hay = set(words(address))
    if not hay:
        return []
    named = [Match(n, None) for n in cands if n.name and _contained(n.name, hay)]
    if named:
        return named
    return [Match(n, None) for n in sorted(cands, key=lambda n: n.id) if n.site and _contained(n.site, hay)]


def _by_distance(m: Match) -> tuple[float, str]:
    return (m.distance_m or 0.0, m.node.id)


def judge(
    service: Service, matches: list[Match], open_alarms: Iterable[Alarm], evidence: Iterable[str] = ()
) -> Judgement:
    """The verdict of a report of `service` about `matches`, given the open alarms and any other
    evidence from the nodes' own reports (`lit_in_daylight`)."""
    ids = tuple(m.node.id for m in matches)
    if not ids:
        return Judgement(NO_DEVICE, (), ())
    on = set(ids)
    hits = tuple(sorted((a for a in open_alarms if a.node in on and a.alarm in service.alarms), key=_alarm_order(ids)))
    ev = tuple(evidence)
    return Judgement(CONFIRMED if hits or ev else DEVICE_NORMAL, ids, hits, ev)


# -- daylight: a lamp lit with the sun well up ------------------------------------------------

DAYLIGHT_ELEVATION_DEG = 6.0  # sun this high: no dimming profile keeps a lamp on (civil twilight ends at -6)


def sun_elevation_deg(lat: float, lon: float, unix_s: float) -> float:
    """The sun's geometric elevation, degrees (the US Naval Observatory's approximate algorithm, about
    0.1 degree between 1950 and 2050: ample for "is it broad day")."""
    d = unix_s / 86400.0 - 10957.5  # days since J2000.0 (2000-01-01 12:00 UTC)
    g = math.radians((357.529 + 0.98560028 * d) % 360)
    q = (280.459 + 0.98564736 * d) % 360
    ecl_lon = math.radians(q + 1.915 * math.sin(g) + 0.020 * math.sin(2 * g))
    eps = math.radians(23.439 - 0.00000036 * d)
    ra = math.atan2(math.cos(eps) * math.sin(ecl_lon), math.cos(ecl_lon))
    dec = math.asin(math.sin(eps) * math.sin(ecl_lon))
    gmst_deg = (18.697374558 + 24.06570982441908 * d) % 24 * 15
    ha = math.radians(gmst_deg + lon) - ra
    phi = math.radians(lat)
    s = math.sin(phi) * math.sin(dec) + math.cos(phi) * math.cos(dec) * math.cos(ha)
    return math.degrees(math.asin(max(-1.0, min(1.0, s))))


def lit_in_daylight(doc: dict[str, Any], t: float, node: NodeInfo) -> str | None:
    """Evidence from one LIGHT record (the /2 shape) taken at `t`: the lamp on, with the sun above
    DAYLIGHT_ELEVATION_DEG at the node; None when the record does not show it (or no position)."""
    fields = doc.get("fields")
    if node.lat is None or node.lon is None or not isinstance(fields, dict):
        return None
    state = fields.get("state")
    level = fields.get("level")
    lit = isinstance(state, list) and "on" in state and not (isinstance(level, int | float) and level <= 0)
    if not lit:
        return None
    elev = sun_elevation_deg(node.lat, node.lon, t)
    if elev <= DAYLIGHT_ELEVATION_DEG:
        return None
    return f"node {node.id} reported its lamp on at {_pct(level)} with the sun {elev:.0f}° up"


def _pct(level: Any) -> str:
    return f"{level:g} %" if isinstance(level, int | float) else "an unknown level"


def _alarm_order(ids: tuple[str, ...]) -> Any:
    rank = {n: i for i, n in enumerate(ids)}
    return lambda a: (rank.get(a.node, len(ids)), a.alarm, a.zone)


@dataclass(frozen=True)
class Bounds:
    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.south <= lat <= self.north and self.west <= lon <= self.east

    @classmethod
    def parse(cls, text: str) -> Bounds:
        """`south,west,north,east` in degrees."""
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError(f"bounds {text!r}: give south,west,north,east in degrees")
        s, w, n, e = (float(p) for p in parts)
        if not (-90 <= s < n <= 90 and -180 <= w < e <= 180):
            raise ValueError(f"bounds {text!r}: need -90 <= south < north <= 90 and -180 <= west < east <= 180")
        return cls(s, w, n, e)


def bounds_of(nodes: Iterable[NodeInfo], margin_m: float = BOUNDS_MARGIN_M) -> Bounds | None:
    """The nodes' bounding box widened by `margin_m`; None when no node has a position."""
    pts = [(n.lat, n.lon) for n in nodes if n.lat is not None and n.lon is not None]
    if not pts:
        return None
    lats = [p[0] for p in pts]
    lons = [p[1] for p in pts]
    return widen(Bounds(min(lats), min(lons), max(lats), max(lons)), margin_m)


def widen(box: Bounds, margin_m: float) -> Bounds:
    """`box` grown by `margin_m` on every side (clamped to the globe)."""
    dlat = math.degrees(margin_m / EARTH_RADIUS_M)
    dlon = dlat / max(0.01, math.cos(math.radians(max(abs(box.south), abs(box.north)))))
    return Bounds(
        max(-90.0, box.south - dlat),
        max(-180.0, box.west - dlon),
        min(90.0, box.north + dlat),
        min(180.0, box.east + dlon),
    )


@dataclass(frozen=True)
class AlarmChange:
    """What one stored record says about a node's alarms."""

    op: str  # "raise" | "clear" | "clear_all" (STATUS, open_alarms 0) | "forget_all" (HELLO)
    node: str
    alarm: str = ""
    zone: int = 0
    t: float = 0.0


def alarm_change(doc: dict[str, Any], t: float) -> AlarmChange | None:
    """The alarm change a stored record (the /2 shape, gateway/FORMATS.md) carries, if any."""
    node = doc.get("node")
    kind = doc.get("type")
    fields = doc.get("fields")
    if not isinstance(node, str) or not isinstance(fields, dict):
        return None
    if kind == "hello":
        return AlarmChange("forget_all", node, t=t)
    if kind == "status":
        return AlarmChange("clear_all", node, t=t) if fields.get("open_alarms") == 0 else None
    if kind != "event" or fields.get("severity") not in ALARM_SEVERITIES:
        return None
    code = fields.get("code")
    if not isinstance(code, str) or code in ONE_SHOT or len(code) > 64:
        return None  # an unknown code stays a number: not an alarm we can name to a resident
    zone = fields.get("zone")
    zone = zone if isinstance(zone, int) and not isinstance(zone, bool) and 0 <= zone <= 255 else 0
    active = fields.get("active")
    if active == 0:
        return AlarmChange("clear", node, code, zone, t)
    return AlarmChange("raise", node, code, zone, t)
