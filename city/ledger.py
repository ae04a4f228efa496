"""The public-value ledger: one local day of a city's lighting and irrigation, from stored records (no I/O).

`compute_day` takes what the sink holds (the nodes' facts, their LIGHT,
IRRIGATION, EVENT, STATUS records, the service requests) and gives, for the
day, per street (a lamp's `site`), per park (an irrigation node's `site`),
per district (the node's declared `district`) and for the whole city:

- lighting: kWh used, from the lamps' own energy counters (LIGHT `energy`,
  Wh since commissioning), against the baseline: the lamp's rated power
  from dusk to dawn at its position (sun 0.833 degrees below the horizon,
  city/matching.py's sun elevation), counted over the same observed time;
- irrigation: m3 through each controller's meter (IRRIGATION `volume`, L
  since commissioning) against its declared fixed schedule (`baseline`:
  litres per day, or mm per day on an area, counted over its watering
  window when it has one);
- money and CO2 avoided: saved kWh and m3 times the configured tariffs and
  grid factor (Settings);
- service, including what was lost: lamp availability (night hours under a
  lamp_failure alarm count as dark), lamp-hours at reduced light (dimmed
  below 100 %), time from alarm to repair (an alarm's raise to its clear),
  zone-hours with the soil below the declared stress threshold, residents'
  reports filed, resolved and how long they took;
- presence: LIGHT `presence_count` summed per street and local hour, a
  count below `presence_min_count` withheld (None).

Counters are cumulative, so a lost or late report loses nothing: the use
between two consecutive readings of a node is split over the days the
interval spans (lighting by night hours in it, water by time). A counter
that goes down (a node whose stored total was reset) adds nothing for that
interval and is counted in `counter_resets`. Use before a node's first
reading in the look-back window, and after its last, is not seen; the
baseline is counted over the same observed intervals, so both sides of a
saving cover the same time (`coverage` says how much of the day that is).
METHOD is the same in words, served with every ledger.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from city.matching import AlarmChange, NodeInfo, alarm_change, sun_elevation_deg

SUNSET_ELEVATION_DEG = -0.833  # upper limb on the horizon with standard refraction (as firmware/astro.py)
SUN_STEP_S = 600.0  # sampling step before bisection: no dusk or dawn is shorter than this
LOOKBACK_S = 2 * 86400.0  # readings read before the day, to find each node's reading before midnight
ALARM_LOOKBACK_S = 30 * 86400.0  # an alarm raised this long before the day is still seen open
DARK_ALARMS = frozenset(("lamp_failure",))  # a lamp under one of these gives no light
REPAIRABLE = frozenset(
    (
        "lamp_failure",
        "over_current",
        "cycling",
        "light_failsafe",
        "leak",
        "burst",
        "no_flow",
        "max_runtime",
        "irrigation_failsafe",
        "excess_flow",
        "low_supply",
        "app_exception",
    )
)


@dataclass(frozen=True)
class Facts:
    """What a node declares for the ledger (PUT /v1/nodes): none of it is required."""

    district: str = ""
    rated_power_w: float | None = None  # lighting: the luminaire's rated power
    baseline_l_day: float | None = None  # irrigation: the fixed schedule's litres per day (all zones)
    baseline_start_min: int | None = None  # local minute of the day the schedule starts watering ...
    baseline_minutes: int | None = None  # ... and for how long (all zones one after the other)
    stress_vwc_pct: float | None = None  # irrigation: soil moisture (% vol.) below which the turf is stressed


@dataclass(frozen=True)
class Settings:
    """Tariffs, factors and publication settings (defaults and their sources: city/README.md)."""

    timezone: str = "Europe/Paris"
    eur_per_kwh: float = 0.2016  # regulated tariff (TRVE "Bleu", option Base) from 1 Feb 2025, taxes included
    kgco2_per_kwh: float = 0.052  # ADEME Base Carbone, French "mix de consommation - moyen", kgCO2e/kWh (about)
    eur_per_m3: float = 3.13  # Lyon's mean water price (supply, sanitation, taxes), 1 Jan 2018
    kgco2_per_m3: float = 0.0  # not counted unless configured: no national factor adopted
    default_rated_power_w: float | None = None  # for lamps that declare none (None: no baseline for them)
    presence_min_count: int = 5
    licence: str = "Licence Ouverte / Open Licence 2.0 (Etalab)"
    licence_url: str = "https://www.etalab.gouv.fr/licence-ouverte-open-licence/"
    publisher: str = "Lumeau city platform"

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Reading:
    """One stored record of a node (the /2 shape's fields), at its time `t` (Unix s)."""

    node: str
    type: str
    t: float
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class RequestRow:
    source: str  # resident | device
    service_code: str
    verdict: str
    requested: float
    closed: float | None  # None: still open


def day_bounds(day: date, tz: tzinfo) -> tuple[float, float]:
    """[local midnight, next local midnight) in Unix s (23 or 25 h on a clock change)."""
    a = datetime.combine(day, time(0), tz).timestamp()
    b = datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()
    return a, b


# -- the sun: dark intervals at a position ---------------------------------------------------


def dark_intervals(lat: float, lon: float, start: float, end: float) -> list[tuple[float, float]]:
    """Intervals of [start, end) with the sun below SUNSET_ELEVATION_DEG (dusk to dawn), to about 1 s."""

    def dark(t: float) -> bool:
        return sun_elevation_deg(lat, lon, t) < SUNSET_ELEVATION_DEG

    out: list[tuple[float, float]] = []
    t = start
    state = dark(t)
    since = start
    while t < end:
        t1 = min(end, t + SUN_STEP_S)
        s1 = dark(t1)
        if s1 != state:
            lo, hi = t, t1
            while hi - lo > 1.0:  # bisection: the crossing to the second
                mid = (lo + hi) / 2
                if dark(mid) == state:
                    lo = mid
                else:
                    hi = mid
            if state:
                out.append((since, hi))
            since, state = hi, s1
        t = t1
    if state and end > since:
        out.append((since, end))
    return out


def overlap(a: float, b: float, intervals: Sequence[tuple[float, float]]) -> float:
    """Seconds of [a, b) inside the intervals (which do not overlap one another)."""
    return sum(max(0.0, min(b, d) - max(a, c)) for c, d in intervals)


# -- accumulators -----------------------------------------------------------------------------


@dataclass
class Tally:
    """One row of the ledger: a street, park, district or the city."""

    level: str  # city | district | street | park
    name: str
    lamps: int = 0
    zones_nodes: int = 0
    kwh: float = 0.0
    baseline_kwh: float = 0.0
    lamps_without_baseline: int = 0
    night_lamp_h: float = 0.0  # lamp-hours of darkness observed (the baseline's hours)
    dark_lamp_h: float = 0.0  # of those, under a lamp_failure alarm
    reduced_lamp_h: float = 0.0  # of those, lit below 100 %
    m3: float = 0.0
    baseline_m3: float = 0.0
    controllers_without_baseline: int = 0
    stress_zone_h: float | None = None
    observed_node_h: float = 0.0
    node_h: float = 0.0
    counter_resets: int = 0
    repaired: list[float] = field(default_factory=list)  # hours from raise to clear, alarms cleared this day
    alarms_open_at_end: int = 0

    def add(self, o: Tally) -> None:
        for k in (
            "lamps",
            "zones_nodes",
            "kwh",
            "baseline_kwh",
            "lamps_without_baseline",
            "night_lamp_h",
            "dark_lamp_h",
            "reduced_lamp_h",
            "m3",
            "baseline_m3",
            "controllers_without_baseline",
            "observed_node_h",
            "node_h",
            "counter_resets",
            "alarms_open_at_end",
        ):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        if o.stress_zone_h is not None:
            self.stress_zone_h = (self.stress_zone_h or 0.0) + o.stress_zone_h
        self.repaired += o.repaired

    def row(self, s: Settings) -> dict[str, Any]:
        saved_kwh = self.baseline_kwh - self.kwh if self.lamps else None
        saved_m3 = self.baseline_m3 - self.m3 if self.zones_nodes else None
        eur = (saved_kwh or 0.0) * s.eur_per_kwh + (saved_m3 or 0.0) * s.eur_per_m3
        co2 = (saved_kwh or 0.0) * s.kgco2_per_kwh + (saved_m3 or 0.0) * s.kgco2_per_m3
        rep = sorted(self.repaired)
        return {
            "level": self.level,
            "name": self.name,
            "lamps": self.lamps,
            "irrigation_controllers": self.zones_nodes,
            "energy_kwh": _r(self.kwh) if self.lamps else None,
            "energy_baseline_kwh": _r(self.baseline_kwh) if self.lamps else None,
            "energy_saved_kwh": _r(saved_kwh),
            "energy_saved_pct": _pct(saved_kwh, self.baseline_kwh),
            "lamps_without_baseline": self.lamps_without_baseline,
            "water_m3": _r(self.m3) if self.zones_nodes else None,
            "water_baseline_m3": _r(self.baseline_m3) if self.zones_nodes else None,
            "water_saved_m3": _r(saved_m3),
            "water_saved_pct": _pct(saved_m3, self.baseline_m3),
            "controllers_without_baseline": self.controllers_without_baseline,
            "eur_saved": _r(eur, 2),
            "kgco2_avoided": _r(co2, 3),
            "lamp_availability_pct": (
                _r(100.0 * (1 - self.dark_lamp_h / self.night_lamp_h), 2) if self.night_lamp_h > 0 else None
            ),
            "dark_lamp_hours": _r(self.dark_lamp_h, 3) if self.lamps else None,
            "reduced_light_lamp_hours": _r(self.reduced_lamp_h, 3) if self.lamps else None,
            "soil_stress_zone_hours": _r(self.stress_zone_h, 3) if self.stress_zone_h is not None else None,
            "alarms_repaired": len(rep),
            "repair_hours_median": _r(_median(rep), 3),
            "repair_hours_max": _r(rep[-1], 3) if rep else None,
            "alarms_open_at_end": self.alarms_open_at_end,
            "coverage_pct": _r(100.0 * self.observed_node_h / self.node_h, 2) if self.node_h else None,
            "counter_resets": self.counter_resets,
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _pct(saved: float | None, base: float) -> float | None:
    return round(100.0 * saved / base, 2) if saved is not None and base > 0 else None


def _median(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _num(v: Any) -> float | None:
    if isinstance(v, dict):  # a /1 record: {"value", "unit"}
        v = v.get("value")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


ROW_FIELDS = tuple(Tally("city", "").row(Settings()).keys())


# -- alarms from records ------------------------------------------------------------------------


def alarm_intervals(readings: Iterable[Reading], end: float) -> dict[str, list[tuple[str, float, float | None]]]:
    """Per node, (alarm, raised, cleared or None) from EVENT and STATUS records in time order.

    A HELLO is not a repair: the node forgets its alarms and raises again what still holds, so
    the interval goes on; a STATUS with no open alarm closes those raised before it."""
    open_: dict[tuple[str, str, int], float] = {}
    out: dict[str, list[tuple[str, float, float | None]]] = {}
    for r in sorted(readings, key=lambda r: r.t):
        if r.t >= end:
            break
        ch: AlarmChange | None = alarm_change({"node": r.node, "type": r.type, "fields": dict(r.fields)}, r.t)
        if ch is None or ch.op == "forget_all":
            continue
        if ch.op == "raise":
            open_.setdefault((ch.node, ch.alarm, ch.zone), ch.t)
            continue
        keys = (
            [(ch.node, ch.alarm, ch.zone)]
            if ch.op == "clear"
            else [k for k, t0 in open_.items() if k[0] == ch.node and t0 <= ch.t]
        )
        for k in keys:
            t0 = open_.pop(k, None)
            if t0 is not None:
                out.setdefault(k[0], []).append((k[1], t0, ch.t))
    for (node, alarm, _z), t0 in open_.items():
        out.setdefault(node, []).append((alarm, t0, None))
    return out


# -- the day ---------------------------------------------------------------------------------------


@dataclass
class Day:
    """compute_day's result: rows per level, and what goes apart (reports, presence)."""

    date: str
    start: float
    end: float
    rows: list[dict[str, Any]]
    reports: dict[str, Any]
    presence: list[dict[str, Any]]  # {street, hour, count (None: withheld)}

    def to_dict(self, s: Settings) -> dict[str, Any]:
        return {
            "date": self.date,
            "timezone": s.timezone,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "city": next(r for r in self.rows if r["level"] == "city"),
            "districts": [r for r in self.rows if r["level"] == "district"],
            "streets": [r for r in self.rows if r["level"] == "street"],
            "parks": [r for r in self.rows if r["level"] == "park"],
            "reports": self.reports,
            "presence": {"min_count": s.presence_min_count, "by_street_hour": self.presence},
            "factors": {
                "eur_per_kwh": s.eur_per_kwh,
                "kgco2_per_kwh": s.kgco2_per_kwh,
                "eur_per_m3": s.eur_per_m3,
                "kgco2_per_m3": s.kgco2_per_m3,
            },
        }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")


def compute_day(
    day: date,
    nodes: Sequence[NodeInfo],
    facts: Mapping[str, Facts],
    readings: Iterable[Reading],
    requests: Iterable[RequestRow],
    s: Settings,
) -> Day:
    """The ledger of one local day (see the module docstring). `readings` should cover LOOKBACK_S
    (counters) before and after the day and ALARM_LOOKBACK_S (events) before it."""
    tz = s.tz
    d0, d1 = day_bounds(day, tz)
    by_node: dict[str, list[Reading]] = {}
    events: list[Reading] = []
    for r in readings:
        if r.type in ("light", "irrigation"):
            by_node.setdefault(r.node, []).append(r)
        elif r.type in ("event", "status"):
            events.append(r)
    alarms = alarm_intervals(events, d1)
    dark_cache: dict[tuple[float, float], list[tuple[float, float]]] = {}
    tallies: dict[tuple[str, str], Tally] = {}
    presence: dict[tuple[str, int], int] = {}
    city = Tally("city", "")
    for n in nodes:
        if n.kind not in ("lighting", "irrigation"):
            continue
        f = facts.get(n.id, Facts())
        recs = sorted(by_node.get(n.id, ()), key=lambda r: r.t)
        after = next((i for i, r in enumerate(recs) if r.t >= d1), None)
        if after is not None:  # the first reading after midnight closes the day's last interval
            recs = recs[: after + 1]
        t = Tally("street" if n.kind == "lighting" else "park", n.site or "(no site)")
        if n.kind == "lighting":
            _lamp(t, n, f, recs, alarms.get(n.id, []), d0, d1, s, dark_cache, presence, tz)
        else:
            _controller(t, f, recs, d0, d1, tz)
        _repairs(t, alarms.get(n.id, []), d0, d1)
        for key in ((t.level, t.name), ("district", f.district or "(no district)")):
            tallies.setdefault(key, Tally(key[0], key[1])).add(t)
        city.add(t)
    rows = [city.row(s)] + [tallies[k].row(s) for k in sorted(tallies)]
    pres = [
        {"street": st, "hour": h, "count": c if c >= s.presence_min_count else None}
        for (st, h), c in sorted(presence.items())
    ]
    return Day(day.isoformat(), d0, d1, rows, _reports(requests, d0, d1), pres)


def _lamp(
    t: Tally,
    n: NodeInfo,
    f: Facts,
    recs: list[Reading],
    alarms: list[tuple[str, float, float | None]],
    d0: float,
    d1: float,
    s: Settings,
    cache: dict[tuple[float, float], list[tuple[float, float]]],
    presence: dict[tuple[str, int], int],
    tz: tzinfo,
) -> None:
    t.lamps = 1
    t.node_h = (d1 - d0) / 3600.0
    power = f.rated_power_w if f.rated_power_w is not None else s.default_rated_power_w
    dark: list[tuple[float, float]] | None = None
    if n.lat is not None and n.lon is not None and len(recs) >= 2:  # no interval, no sun to compute
        key = (round(n.lat, 3), round(n.lon, 3))  # lamps a few metres apart share their night
        dark = cache.get(key)
        if dark is None:
            dark = cache[key] = dark_intervals(n.lat, n.lon, d0 - LOOKBACK_S, d1 + LOOKBACK_S)
    if n.lat is None or n.lon is None or power is None:
        t.lamps_without_baseline = 1
    failed = [(a, b if b is not None else d1) for al, a, b in alarms if al in DARK_ALARMS]
    for prev, cur in zip(recs, recs[1:], strict=False):
        a, b = prev.t, cur.t
        if b <= a or b <= d0:
            continue
        e0, e1 = _num(prev.fields.get("energy")), _num(cur.fields.get("energy"))
        lo, hi = max(a, d0), min(b, d1)
        t.observed_node_h += (hi - lo) / 3600.0
        if e0 is not None and e1 is not None:
            if e1 < e0:
                t.counter_resets += 1
            else:
                if dark is not None and overlap(a, b, dark) > 0:  # the energy went out at night
                    share = overlap(lo, hi, dark) / overlap(a, b, dark)
                else:
                    share = (hi - lo) / (b - a)
                t.kwh += (e1 - e0) * share / 1000.0
        if dark is not None:
            night_s = overlap(lo, hi, dark)
            t.night_lamp_h += night_s / 3600.0
            if power is not None:
                t.baseline_kwh += power * night_s / 3.6e6
            dark_lit = sum(overlap(max(lo, x), min(hi, y), dark) for x, y in failed if min(hi, y) > max(lo, x))
            t.dark_lamp_h += dark_lit / 3600.0
            level = _num(prev.fields.get("level"))  # the level reported holds until the next report
            if level is not None and 0 < level < 100:
                t.reduced_lamp_h += max(0.0, night_s - dark_lit) / 3600.0
    for r in recs:
        c = _num(r.fields.get("presence_count"))
        if c and d0 <= r.t < d1:
            h = datetime.fromtimestamp(r.t, tz).hour
            k = (t.name, h)
            presence[k] = presence.get(k, 0) + int(c)


def _controller(t: Tally, f: Facts, recs: list[Reading], d0: float, d1: float, tz: tzinfo) -> None:
    t.zones_nodes = 1
    t.node_h = (d1 - d0) / 3600.0
    window: list[tuple[float, float]] = [(d0, d1)]
    if f.baseline_start_min is not None and f.baseline_minutes:
        # the schedule's watering window, each local day it touches
        window = []
        day = datetime.fromtimestamp(d0, tz).date() - timedelta(days=1)
        for k in range(3):
            w0 = datetime.combine(day + timedelta(days=k), time(0), tz) + timedelta(minutes=f.baseline_start_min)
            a = w0.timestamp()
            window.append((a, a + 60.0 * f.baseline_minutes))
    win_s = sum(max(0.0, min(b, d1) - max(a, d0)) for a, b in window)
    if f.baseline_l_day is None:
        t.controllers_without_baseline = 1
    stress = 0.0
    for prev, cur in zip(recs, recs[1:], strict=False):
        a, b = prev.t, cur.t
        if b <= a or b <= d0:
            continue
        lo, hi = max(a, d0), min(b, d1)
        t.observed_node_h += (hi - lo) / 3600.0
        v0, v1 = _num(prev.fields.get("volume")), _num(cur.fields.get("volume"))
        if v0 is not None and v1 is not None:
            if v1 < v0:
                t.counter_resets += 1
            else:
                t.m3 += (v1 - v0) * (hi - lo) / (b - a) / 1000.0
        if f.baseline_l_day is not None and win_s > 0:
            t.baseline_m3 += f.baseline_l_day * overlap(lo, hi, window) / win_s / 1000.0
        if f.stress_vwc_pct is not None:
            soil = prev.fields.get("soil_moisture")
            if isinstance(soil, list):
                dry = sum(1 for v in soil if _num(v) is not None and (_num(v) or 0.0) < f.stress_vwc_pct)
                stress += dry * (hi - lo) / 3600.0
    if f.stress_vwc_pct is not None:
        t.stress_zone_h = stress


def _repairs(t: Tally, alarms: list[tuple[str, float, float | None]], d0: float, d1: float) -> None:
    for al, a, b in alarms:
        if al not in REPAIRABLE:
            continue
        if b is not None and d0 <= b < d1:
            t.repaired.append((b - a) / 3600.0)
        elif a < d1 and (b is None or b >= d1):
            t.alarms_open_at_end += 1


def _reports(requests: Iterable[RequestRow], d0: float, d1: float) -> dict[str, Any]:
    filed: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    by_device = 0
    resolved: list[float] = []
    open_end = 0
    for q in requests:
        if d0 <= q.requested < d1:
            if q.source == "resident":
                filed[q.service_code] = filed.get(q.service_code, 0) + 1
                verdicts[q.verdict] = verdicts.get(q.verdict, 0) + 1
            else:
                by_device += 1
        if q.source == "resident" and q.closed is not None and d0 <= q.closed < d1:
            resolved.append((q.closed - q.requested) / 3600.0)
        if q.source == "resident" and q.requested < d1 and (q.closed is None or q.closed >= d1):
            open_end += 1
    resolved.sort()
    return {
        "resident_requests_filed": sum(filed.values()),
        "by_service": dict(sorted(filed.items())),
        "by_verdict": dict(sorted(verdicts.items())),
        "device_requests_opened": by_device,
        "resident_requests_resolved": len(resolved),
        "resolve_hours_median": _r(_median(resolved), 3),
        "resolve_hours_max": _r(resolved[-1], 3) if resolved else None,
        "resident_requests_open_at_end": open_end,
    }


METHOD = """\
Lumeau public-value ledger: how each figure is computed (city/ledger.py).

Day: local calendar day in the platform's time zone (timezone), midnight to midnight.
Rows: the city; each district (as the node declares it); each street (a lamp's site); each park
(an irrigation controller's site).

Energy used (energy_kwh): from each lamp's own cumulative energy counter (LIGHT energy, Wh). The
use between two consecutive readings is split over the days the interval spans by its hours of
darkness. A counter that goes down adds nothing (counter_resets). Before a lamp's first reading
and after its last the use is not seen; coverage_pct says what share of the node-hours was observed.
Energy baseline (energy_baseline_kwh): the lamp's rated power (declared rated_power_w) from dusk
to dawn at the lamp's position (sun 0.833 degrees below the horizon), over the same observed
time: what a photocell lamp without dimming would have used.
Water used (water_m3): from each irrigation controller's cumulative meter (IRRIGATION volume, L),
leaks included, split over days by time.
Water baseline (water_baseline_m3): the controller's declared fixed schedule (litres per day, or
mm per day on an area), spread over its declared watering window (or over the whole day),
over the same observed time.
Saved = baseline - used (negative: more was used than the baseline). eur_saved and kgco2_avoided
= saved kWh x eur_per_kwh and kgco2_per_kwh, plus saved m3 x eur_per_m3 and kgco2_per_m3 (factors).
Lamp availability: 1 - night lamp-hours under a lamp_failure alarm / night lamp-hours observed.
Reduced light: night lamp-hours at a reported level between 0 and 100 % (the level of a report
holds until the next one). Soil stress: zone-hours with reported soil moisture below the
controller's declared stress threshold. Repairs: alarms cleared this day and the hours from their
raise (a node restart is not a repair); alarms still open at midnight.
Residents' reports (Open311): requests filed this day by residents, by service and by the
device's verdict; requests resolved this day and the hours from filing to closing; open at midnight.
Presence: presence detections reported by lamps, summed per street and local hour; a count below
min_count is withheld (null).
Privacy: only aggregates; no reporter's contact, no description text, no node identifier.
"""
