"""Scenario files: the simulated city, as TOML, validated with clear errors.

(One file of about 800 lines on purpose: the format's records, its reader
and the placement of nodes change together whenever a key is added, and
the reader's error messages name the records' fields; simulator/README.md
documents the format key by key beside it.)

A scenario names a place and a time, its gateways, streets (lines along
which lamps stand) and parks (areas whose irrigation zones a controller
waters), the radio settings, the faults to inject, and what to output. The
format is documented key by key in simulator/README.md; the two scenarios
shipped are simulator/scenarios/district.toml (the demo) and city.toml.

Placement is deterministic: the same file (and seed) always gives the same
nodes at the same places with the same names, ids and spreading factors.
- Lamps stand along each street's polyline, n of them at (k + 1/2) L / n
  plus a seeded jitter of up to JITTER_FRACTION of the spacing; a
  [[street_grids]] entry is shorthand for the streets of a regular grid of
  blocks, its lamps shared among them in proportion to length.
- Irrigation controllers stand at seeded points inside their park's polygon;
  each drives `zones_per_controller` zones (1..4, the firmware's limit) that
  share the park's irrigated area equally.
- Node names: "<street id>-<k>" for lamps, "<park id>-<k>" for controllers.
  Node ids (the protocol's 32-bit node id): LAMP_ID_BASE + k and
  IRRIGATION_ID_BASE + k, numbered in file order.
- A node's SF with sf = "auto": the fastest SF whose median margin at the best
  gateway is at least sf_margin_db (what LoRaWAN ADR converges to); nodes
  with no such SF get SF12 and are listed in Scenario.warnings.

Errors are ScenarioError: "<file>: <key>: <why>", e.g.
"district.toml: streets[2].points: needs at least 2 points, got 1".
Unknown keys are errors too (a typo must not silently become a default).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import random
import sys
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import adr as adr_mod
from gateway.campaigns import WINDOW_S, CampaignError, canary_count
from protocol import lora
from simulator import channel as ch
from simulator import soil as soil_mod
from simulator.faults import KINDS, FaultError, FaultSchedule, parse_duration
from simulator.group_delivery import GroupCommandSettings
from simulator.update_delivery import UpdateSettings
from simulator.weather import CLIMATES, RainEvent, Weather
from simulator.wording import did_you_mean, duration_text, show

if TYPE_CHECKING:
    from simulator.presence import StreetPresence

LAMP_ID_BASE = 0x01000000
IRRIGATION_ID_BASE = 0x02000000
MAX_NODES = 100_000  # per kind; ids stay inside their base's range
MAX_COORD_M = 100_000.0  # |x|, |y| of anything on the map: a city is well within 100 km of its origin
MAX_DURATION_S = 366 * 86400
JITTER_FRACTION = 0.1
M_PER_DEG_LAT = 111_320.0  # equirectangular projection around the scenario origin


class ScenarioError(ValueError):
    """A scenario that cannot be used: which file, which key, why."""

    def __init__(self, file: str, key: str, why: str):
        super().__init__(f"{file}: {key}: {why}" if key else f"{file}: {why}")
        self.file = file
        self.key = key
        self.why = why


# ---------------------------------------------------------------- what a scenario holds


@dataclass(frozen=True, slots=True)
class Location:
    name: str
    lat: float
    lon: float
    tz: _dt.tzinfo
    climate: str

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        """Map metres (east, north of the origin) to degrees."""
        lat = self.lat + y / M_PER_DEG_LAT
        lon = self.lon + x / (M_PER_DEG_LAT * math.cos(math.radians(self.lat)))
        return lat, lon


@dataclass(frozen=True, slots=True)
class RadioSettings:
    channels_hz: tuple[int, ...]
    sf: int | None  # None: auto
    sf_margin_db: float
    params: ch.RadioParams


@dataclass(frozen=True, slots=True)
class Street:
    id: str
    name: str
    points: tuple[tuple[float, float], ...]
    length_m: float
    lamps: int
    pedestrians_peak_per_h: float
    rated_power_w: float


@dataclass(frozen=True, slots=True)
class Schedule:
    """A controller's fixed program: zones one after the other, every `every_days` days."""

    start_min: int  # local minutes after midnight
    minutes_per_zone: float
    every_days: int

    def runs(self, zones: int, start_unix: float, end_unix: float, tz: _dt.tzinfo) -> list[tuple[int, float, float]]:
        """(zone 1.., start, end) Unix seconds of each zone run overlapping [start, end), clipped."""
        out = []
        d = _dt.datetime.fromtimestamp(start_unix, tz).date() - _dt.timedelta(days=1)
        last = _dt.datetime.fromtimestamp(end_unix, tz).date()
        while d <= last:
            if (d - _dt.date(1970, 1, 1)).days % self.every_days == 0:
                t = _dt.datetime.combine(d, _dt.time(self.start_min // 60, self.start_min % 60), tz).timestamp()
                for z in range(1, zones + 1):
                    a, b = t, t + self.minutes_per_zone * 60.0
                    if b > start_unix and a < end_unix:
                        out.append((z, max(a, start_unix), min(b, end_unix)))
                    t = b
            d += _dt.timedelta(days=1)
        return out


@dataclass(frozen=True, slots=True)
class Park:
    id: str
    name: str
    polygon: tuple[tuple[float, float], ...]
    area_m2: float
    controllers: int
    zones_per_controller: int
    irrigated_fraction: float


@dataclass(frozen=True, slots=True)
class Zone:
    number: int  # 1..4, the firmware's zone channel
    area_m2: float
    flow_l_min: float  # at the design application rate
    soil: soil_mod.Soil
    crop: soil_mod.Crop
    # share of the root zone's available water at the start (1 field capacity, 0 wilting
    # point); None: soil.default_depletion, halfway to the stress point
    soil_start: float | None = None

    def bucket(self) -> soil_mod.SoilBucket:
        """The zone's FAO-56 bucket in its start state (the world and the baseline start alike)."""
        return soil_mod.start_bucket(self.soil, self.crop, self.soil_start)


@dataclass(frozen=True, slots=True)
class LampNode:
    name: str
    node_id: int
    x: float
    y: float
    lat: float
    lon: float
    street: str
    s_m: float  # distance along the street from its first point
    rated_power_w: float
    height_m: float
    sf: int
    kind: str = "lighting"


@dataclass(frozen=True, slots=True)
class IrrigationNode:
    name: str
    node_id: int
    x: float
    y: float
    lat: float
    lon: float
    park: str
    zones: tuple[Zone, ...]
    schedule: Schedule
    height_m: float
    sf: int
    kind: str = "irrigation"


@dataclass(frozen=True, slots=True)
class KindSettings:
    """[lighting] or [irrigation]: what all nodes of a kind share."""

    report_interval_s: float
    height_m: float
    firmware: Mapping[str, Any]  # merged into each node's firmware config by the runner
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WeatherSettings:
    random_rain: bool
    rain: tuple[RainEvent, ...]
    dry_days: tuple[_dt.date, ...] = ()  # local (mean solar) dates with no drawn rain


@dataclass(frozen=True, slots=True)
class Output:
    dir: str
    html: bool
    plots: bool
    json: bool
    progress: bool


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    description: str
    seed: int
    start: _dt.datetime
    duration_s: float
    location: Location
    weather: WeatherSettings
    radio: RadioSettings
    gateways: tuple[ch.GatewaySite, ...]
    streets: tuple[Street, ...]
    parks: tuple[Park, ...]
    lighting: KindSettings
    irrigation: KindSettings
    lamps: tuple[LampNode, ...]
    controllers: tuple[IrrigationNode, ...]
    faults: FaultSchedule
    output: Output
    warnings: tuple[str, ...] = ()
    adr: Mapping[str, Any] | None = None  # [adr]: the gateway's ADR policy (Adr keyword arguments); None = off
    # [battery]: the irrigation controllers run on a cell (firmware/battery.py); the energy model's
    # settings (simulator/energy.py DEFAULTS); None = mains
    battery: Mapping[str, Any] | None = None
    group_command: GroupCommandSettings | None = None  # [group_command]: unicast vs multicast (group_delivery.py)
    update: UpdateSettings | None = None  # [update]: a release to a street by multicast (update_delivery.py)

    @property
    def start_unix(self) -> float:
        return self.start.timestamp()

    @property
    def end_unix(self) -> float:
        return self.start_unix + self.duration_s

    @property
    def nodes(self) -> tuple[LampNode | IrrigationNode, ...]:
        return self.lamps + self.controllers

    def node(self, name: str) -> LampNode | IrrigationNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def zones(self) -> int:
        return sum(len(c.zones) for c in self.controllers)

    def channel(self) -> ch.Channel:
        """A fresh radio channel with this scenario's gateways and every node placed on it."""
        c = ch.Channel(self.gateways, self.radio.params, self.seed)
        for n in self.nodes:
            c.add_node(n.node_id, n.x, n.y, n.height_m)
        return c

    def weather_model(self) -> Weather:
        return Weather(
            self.location.lat,
            self.location.lon,
            self.start_unix,
            self.duration_s,
            self.seed,
            self.location.climate,
            self.weather.rain,
            self.weather.random_rain,
            tuple(d.toordinal() - _EPOCH_ORDINAL for d in self.weather.dry_days),
        )

    def presence(self, street_id: str, profile: Sequence[float] | None = None) -> StreetPresence:
        from simulator.presence import DEFAULT_PROFILE, StreetPresence

        st = next((s for s in self.streets if s.id == street_id), None)
        if st is None:
            raise KeyError(street_id)
        return StreetPresence(
            st.id,
            st.length_m,
            st.pedestrians_peak_per_h,
            self.start_unix,
            self.end_unix,
            self.seed,
            self.location.tz,
            profile or DEFAULT_PROFILE,
        )

    def summary(self, with_warnings: bool = True) -> str:
        sfs: dict[int, int] = {}
        for n in self.nodes:
            sfs[n.sf] = sfs.get(n.sf, 0) + 1
        lines = [
            f"{self.name}: {self.description}".rstrip(": "),
            f"  {self.location.name} ({self.location.lat:.4f}, {self.location.lon:.4f}), "
            f"climate {self.location.climate}",
            f"  {self.start.isoformat()} for {self.duration_s / 3600:g} h, seed {self.seed}",
            f"  {len(self.gateways)} gateways, {len(self.lamps)} lamps on {len(self.streets)} streets, "
            f"{len(self.controllers)} irrigation controllers ({self.zones} zones) in {len(self.parks)} parks",
            "  SF: " + ", ".join(f"SF{sf} x{n}" for sf, n in sorted(sfs.items())),
            f"  {len(self.faults)} faults: " + ", ".join(f"{f.kind}@{f.at_s / 3600:g}h" for f in self.faults),
        ]
        if with_warnings:  # the SF ones; `python -m simulator.scenario` prints simulator/run_warnings.py's, all
            lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading tables

_REQUIRED = object()
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()  # weather.Day.day counts days from here


class _Table:
    """A TOML table being read: typed getters that name the key in their errors."""

    def __init__(self, data: Any, key: str, file: str):
        if not isinstance(data, dict):
            raise ScenarioError(file, key, f"must be a table, got {type(data).__name__}")
        self.data = data
        self.key = key
        self.file = file
        self.used: set[str] = set()
        self.allowed: set[str] = set()  # keys this table takes that a given file may not have read

    def _k(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def err(self, name: str, why: str) -> ScenarioError:
        return ScenarioError(self.file, self._k(name) if name else self.key, why)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(
        self, name: str, kind: str, default: Any = _REQUIRED, check: Callable[[Any], str | None] | None = None
    ) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.err(name, "is required")
            return default
        v = self.data[name]
        if kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.err(name, f"expected a number, got {show(v)}")
            v = float(v)
        elif kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.err(name, f"expected an integer, got {show(v)}")
        elif kind == "str":
            if not isinstance(v, str):
                raise self.err(name, f"expected a string, got {show(v)}")
        elif kind == "bool":
            if not isinstance(v, bool):
                raise self.err(name, f"expected true or false, got {show(v)}")
        elif kind == "duration":
            try:
                v = parse_duration(v, self._k(name))
            except FaultError as e:
                raise self.err(name, e.why) from None
        elif kind == "datetime":
            if not isinstance(v, _dt.datetime) or v.tzinfo is None:
                raise self.err(name, f"expected a date-time with an offset, e.g. 2026-06-15T12:00:00Z; got {show(v)}")
        elif kind == "point":
            v = _point(self, name, v)
        elif kind == "points":
            if not isinstance(v, list):
                raise self.err(name, f"expected an array of [x, y] points, got {show(v)}")
            v = tuple(_point(self, f"{name}[{i}]", p) for i, p in enumerate(v))
        elif kind == "list":
            if not isinstance(v, list):
                raise self.err(name, f"expected an array, got {show(v)}")
        elif kind == "table":
            if not isinstance(v, dict):
                raise self.err(name, f"expected a table, got {show(v)}")
        else:  # pragma: no cover - a programming error
            raise AssertionError(kind)
        if check is not None:
            why = check(v)
            if why:
                raise self.err(name, why)
        return v

    def sub(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self._k(name), self.file)

    def array(self, name: str) -> list[_Table]:
        self.used.add(name)
        raw = self.data.get(name, [])
        if not isinstance(raw, list):
            raise self.err(name, "must be an array of tables ([[" + self._k(name) + "]])")
        return [_Table(r, f"{self._k(name)}[{i}]", self.file) for i, r in enumerate(raw)]

    def allow(self, *names: str) -> None:
        """Keys this table takes besides those read (one of two alternatives, keys of one model)."""
        self.allowed.update(names)

    def done(self) -> None:
        known = self.used | self.allowed
        for k in self.data:
            if k not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise self.err(k, f"unknown key{did_you_mean(k, known)} (allowed here: {allowed})")


def _point(t: _Table, name: str, v: Any) -> tuple[float, float]:
    if (
        not isinstance(v, list)
        or len(v) != 2
        or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) for c in v)
    ):
        raise t.err(name, f"expected a point [x, y] in metres, got {show(v)}")
    if any(abs(c) > MAX_COORD_M for c in v):
        raise t.err(name, f"must be within {MAX_COORD_M:g} m of the origin on each axis, got {show(v)}")
    return float(v[0]), float(v[1])


def _in(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be within {lo:g}..{hi:g}, got {show(v)}"


def _soil_start_ok(v: float) -> str | None:
    if 0.0 <= v <= 1.0:
        return None
    return (
        f"must be within 0..1 (the share of the root zone's available water at the start: "
        f"1 field capacity, 0 wilting point), got {v:g}"
    )


def _span(lo: float, hi: float) -> Callable[[Any], str | None]:
    """A duration's range, said in human units ("must be at least 1 min, got 30 s")."""

    def check(v: float) -> str | None:
        if lo <= v <= hi:
            return None
        if not v >= lo:  # below, or not a number at all
            return f"must be at least {duration_text(lo)}, got {duration_text(v)}"
        if v > hi:
            return f"must be at most {duration_text(hi)}, got {duration_text(v)}"
        return None

    return check


def _ident(v: str) -> str | None:
    if not v or not all(c.isalnum() or c in "-_." for c in v):
        return f"must be a non-empty name of letters, digits, '-', '_' or '.', got {show(v)}"
    return None


def _hhmm(v: str) -> str | None:
    parts = v.split(":")
    if (
        len(parts) != 2
        or not all(p.isdigit() for p in parts)
        or not (0 <= int(parts[0]) < 24 and 0 <= int(parts[1]) < 60)
    ):
        return f'expected a local time "HH:MM", got {show(v)}'
    return None


# ---------------------------------------------------------------- geometry


def polyline_length(points: Sequence[tuple[float, float]]) -> float:
    return sum(math.dist(points[i], points[i + 1]) for i in range(len(points) - 1))


def point_along(points: Sequence[tuple[float, float]], s: float) -> tuple[float, float]:
    """The point at arc length s along a polyline (clamped to its ends)."""
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        seg = math.dist(a, b)
        if s <= seg or i == len(points) - 2:
            f = 0.0 if seg == 0 else max(0.0, min(1.0, s / seg))
            return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f
        s -= seg
    return points[-1]


def polygon_area(poly: Sequence[tuple[float, float]]) -> float:
    """Shoelace formula; positive for either winding."""
    n = len(poly)
    return abs(sum(poly[i][0] * poly[(i + 1) % n][1] - poly[(i + 1) % n][0] * poly[i][1] for i in range(n))) / 2.0


def inside(poly: Sequence[tuple[float, float]], x: float, y: float) -> bool:
    """Even-odd ray casting."""
    hit = False
    n = len(poly)
    for i in range(n):
        (x1, y1), (x2, y2) = poly[i], poly[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


def share(total: int, weights: Sequence[float]) -> list[int]:
    """Split an integer total in proportion to weights (largest remainder; ties to the first)."""
    s = sum(weights)
    if total == 0 or s <= 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    out = [int(e) for e in exact]
    rest = total - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:rest]:
        out[i] += 1
    return out


# ---------------------------------------------------------------- parsing


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(str(p), "", f"cannot read: {e.strerror or e}") from None
    return loads(text, str(p))


def loads(text: str, file: str = "<scenario>") -> Scenario:
    """Parse and validate scenario text; `file` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(file, "", f"not valid TOML: {e}") from None
    return _build(_Table(raw, "", file))


def _build(top: _Table) -> Scenario:
    file = top.file
    sc = top.sub("scenario")
    name = sc.get("name", "str", "scenario", _ident)
    description = sc.get("description", "str", "")
    seed = sc.get("seed", "int", 0, _in(0, 2**63 - 1))
    start = sc.get("start", "datetime").astimezone(_dt.UTC)
    duration_s = sc.get("duration", "duration", check=_span(60, MAX_DURATION_S))
    sc.done()

    loc_t = top.sub("location")
    loc_t.allow("timezone", "utc_offset_h")
    lat = loc_t.get("lat", "float", check=_in(-89.0, 89.0))
    lon = loc_t.get("lon", "float", check=_in(-180.0, 180.0))
    tz: _dt.tzinfo
    if loc_t.has("timezone") and loc_t.has("utc_offset_h"):
        raise loc_t.err("timezone", "give either timezone or utc_offset_h, not both")
    if loc_t.has("utc_offset_h"):
        off = loc_t.get("utc_offset_h", "float", check=_in(-14, 14))
        tz = _dt.timezone(_dt.timedelta(hours=off))
    else:
        tzname = loc_t.get("timezone", "str", "UTC")
        try:
            tz = zoneinfo.ZoneInfo(tzname)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise loc_t.err(
                "timezone",
                f'unknown time zone {show(tzname)} (an IANA name like "Europe/Paris"; or give utc_offset_h)',
            ) from None
    climate = loc_t.get(
        "climate",
        "str",
        "lyon",
        lambda v: (
            None
            if v in CLIMATES
            else f"unknown climate {show(v)}{did_you_mean(v, CLIMATES)} (known: {', '.join(sorted(CLIMATES))})"
        ),
    )
    location = Location(loc_t.get("name", "str", ""), lat, lon, tz, climate)
    loc_t.done()

    w_t = top.sub("weather")
    random_rain = w_t.get("random_rain", "bool", True)
    rain = []
    for r in w_t.array("rain"):
        at = r.get("at", "datetime")
        hours = r.get("duration", "duration", check=_span(60, 2 * 86400))
        mm = r.get("mm", "float", check=_in(0.1, 500))
        a = at.timestamp()
        rain.append(RainEvent(a, a + hours, mm))
        r.done()
        if not start.timestamp() - 86400 <= a < start.timestamp() + duration_s:
            raise r.err("at", "must fall within the run (or the day before it)")
    dry = w_t.get("dry_days", "list", [])
    dry_days = []
    first_day, last_day = (
        (start - _dt.timedelta(days=1)).date(),
        (start + _dt.timedelta(seconds=duration_s, days=1)).date(),
    )
    for i, d in enumerate(dry):
        if not isinstance(d, _dt.date) or isinstance(d, _dt.datetime):
            raise w_t.err(f"dry_days[{i}]", f"expected a TOML local date like 2026-06-15, got {show(d)}")
        if not first_day <= d <= last_day:
            raise w_t.err(f"dry_days[{i}]", f"{d} is not within the run (or a day either side of it)")
        dry_days.append(d)
    weather = WeatherSettings(random_rain, tuple(rain), tuple(sorted(set(dry_days))))
    w_t.done()

    radio = _radio(top.sub("radio"))
    adr = _adr(top.sub("adr"))
    battery = _battery(top.sub("battery"), "battery" in top.data)
    group_command = _group_command(top.sub("group_command"), seed, duration_s) if top.has("group_command") else None
    update = _update(top.sub("update"), seed, duration_s) if top.has("update") else None

    gateways: list[ch.GatewaySite] = []
    for g in top.array("gateways"):
        gid = g.get("id", "str", check=_ident)
        x = g.get("x", "float", check=_in(-MAX_COORD_M, MAX_COORD_M))
        y = g.get("y", "float", check=_in(-MAX_COORD_M, MAX_COORD_M))
        h = g.get("height_m", "float", 30.0, _in(1, 500))
        g.done()
        if any(o.id == gid for o in gateways):
            raise g.err("id", f"duplicate gateway id {show(gid)}")
        # two sites on one spot are one site counted twice (and a zero distance for the path loss)
        same = next((o for o in gateways if math.hypot(o.x - x, o.y - y) < 1.0), None)
        if same is not None:
            raise g.err("x", f"gateway {show(gid)} stands within 1 m of gateway {show(same.id)} at ({x:g}, {y:g})")
        gateways.append(ch.GatewaySite(gid, x, y, h))
    if not gateways:
        raise ScenarioError(file, "gateways", "at least one [[gateways]] entry is required")

    lt = top.sub("lighting")
    lighting = KindSettings(
        lt.get("report_interval", "duration", 900.0, _span(10, 86400)),
        lt.get("height_m", "float", 8.0, _in(0.5, 50)),
        lt.get("firmware", "table", {}),
        {
            "rated_power_w": lt.get("rated_power_w", "float", 60.0, _in(1, 2000)),
            "spacing_m": lt.get("spacing_m", "float", 30.0, _in(5, 500)),
            "pedestrians_peak_per_h": lt.get("pedestrians_peak_per_h", "float", 60.0, _in(0, 100000)),
        },
    )
    lt.done()
    it = top.sub("irrigation")
    irr_defaults = {
        "zones_per_controller": it.get("zones_per_controller", "int", 4, _in(1, 4)),
        "precip_rate_mm_h": it.get("precip_rate_mm_h", "float", 12.0, _in(1, 200)),
        "soil": it.get("soil", "str", "loam", _oneof(soil_mod.SOILS)),
        "crop": it.get("crop", "str", "turf_cool", _oneof(soil_mod.CROPS)),
        "irrigated_fraction": it.get("irrigated_fraction", "float", 0.6, _in(0.01, 1)),
        "schedule_start": it.get("schedule_start", "str", "05:00", _hhmm),
        "schedule_minutes": it.get("schedule_minutes", "float", 20.0, _in(1, 240)),
        "schedule_every_days": it.get("schedule_every_days", "int", 1, _in(1, 14)),
        "soil_start": it.get("soil_start", "float", None, _soil_start_ok),
    }
    irrigation = KindSettings(
        it.get("report_interval", "duration", 900.0, _span(10, 86400)),
        it.get("height_m", "float", 1.0, _in(0.2, 50)),
        it.get("firmware", "table", {}),
        irr_defaults,
    )
    it.done()

    streets = [_street(s, lighting.extra) for s in top.array("streets")]
    for gr in top.array("street_grids"):
        streets.extend(_grid(gr, lighting.extra))
    _unique(file, "streets", [s.id for s in streets])
    parks = [_park(p, irr_defaults) for p in top.array("parks")]
    _unique(file, "parks", [p[0].id for p in parks])
    if not streets and not parks:
        raise ScenarioError(file, "", "a scenario needs [[streets]], [[street_grids]] or [[parks]]")

    rng_root = f"lumeau-scenario:{seed}"
    lamps: list[LampNode] = []
    for st in streets:
        rng = random.Random(f"{rng_root}:street:{st.id}")
        spacing = st.length_m / st.lamps if st.lamps else 0.0
        width = 3 if st.lamps >= 100 else 2
        for k in range(st.lamps):
            s = (k + 0.5) * spacing + (rng.random() * 2.0 - 1.0) * JITTER_FRACTION * spacing
            x, y = point_along(st.points, s)
            la, lo = location.to_latlon(x, y)
            lamps.append(
                LampNode(
                    f"{st.id}-{k + 1:0{width}d}",
                    LAMP_ID_BASE + len(lamps) + 1,
                    x,
                    y,
                    la,
                    lo,
                    st.id,
                    s,
                    st.rated_power_w,
                    lighting.height_m,
                    0,
                )
            )
    controllers: list[IrrigationNode] = []
    for park, t, zone_soil, zone_crop, rate, sched, soil_start in parks:
        rng = random.Random(f"{rng_root}:park:{park.id}")
        xs = [p[0] for p in park.polygon]
        ys = [p[1] for p in park.polygon]
        n_zones = park.controllers * park.zones_per_controller
        zone_area = park.area_m2 * park.irrigated_fraction / n_zones
        flow = zone_area * rate / 60.0
        for k in range(park.controllers):
            for _ in range(10_000):
                x = min(xs) + rng.random() * (max(xs) - min(xs))
                y = min(ys) + rng.random() * (max(ys) - min(ys))
                if inside(park.polygon, x, y):
                    break
            else:
                raise t.err("polygon", "could not place a controller inside it (is it degenerate?)")
            la, lo = location.to_latlon(x, y)
            zones = tuple(
                Zone(z + 1, zone_area, flow, zone_soil, zone_crop, soil_start) for z in range(park.zones_per_controller)
            )
            controllers.append(
                IrrigationNode(
                    f"{park.id}-{k + 1}",
                    IRRIGATION_ID_BASE + len(controllers) + 1,
                    x,
                    y,
                    la,
                    lo,
                    park.id,
                    zones,
                    sched,
                    irrigation.height_m,
                    0,
                )
            )
    if not lamps and not controllers:
        raise ScenarioError(file, "", "the scenario has no nodes: every street has 0 lamps and there are no parks")
    if len(lamps) > MAX_NODES or len(controllers) > MAX_NODES:
        raise ScenarioError(file, "", f"at most {MAX_NODES} nodes of each kind")

    # Spreading factors from the median link budget (no per-packet draw).
    warnings = []
    probe = ch.Channel(gateways, radio.params, seed)
    assigned: list[Any] = []
    for n in lamps + controllers:
        probe.add_node(n.node_id, n.x, n.y, n.height_m)
        sf = radio.sf
        if sf is None:
            sf = probe.best_sf(n.node_id, radio.sf_margin_db)
            if sf is None:
                sf = ch.SF_MAX
                warnings.append(
                    f"{n.name}: no SF reaches a gateway with {radio.sf_margin_db:g} dB margin "
                    f"(best margin {probe.margin_db(n.node_id, sf):.1f} dB at SF12)"
                )
        assigned.append(_replace_sf(n, sf))
    lamps_t = tuple(a for a in assigned if isinstance(a, LampNode))
    ctrl_t = tuple(a for a in assigned if isinstance(a, IrrigationNode))

    try:
        faults = FaultSchedule.parse(top.data.get("faults", []), start, duration_s)
    except FaultError as e:
        raise ScenarioError(file, e.key, e.why) from None
    top.used.add("faults")
    names = {n.name: n for n in assigned}
    gw_ids = {g.id for g in gateways}
    for f in faults:
        key = f"faults[{f.index}].target"
        cls = KINDS[f.kind][0]
        if cls == "gateway":
            if f.target not in gw_ids:
                raise ScenarioError(
                    file,
                    key,
                    f"no gateway {show(f.target)}{did_you_mean(f.target, gw_ids)} "
                    f"(gateways: {', '.join(sorted(gw_ids))})",
                )
        elif cls == "upstream":
            if f.target != "upstream":
                raise ScenarioError(file, key, 'upstream_outage targets "upstream"')
        else:
            node = names.get(f.target)
            if node is None:
                raise ScenarioError(file, key, f"no node named {show(f.target)}{did_you_mean(f.target, names)}")
            if cls != "node" and node.kind != cls:
                raise ScenarioError(file, key, f"{f.kind} needs a {cls} node; {show(f.target)} is {node.kind}")
            zone = f.params.get("zone")
            if zone is not None and zone > len(node.zones):
                raise ScenarioError(
                    file, f"faults[{f.index}].zone", f"{show(f.target)} has {len(node.zones)} zones, not {zone}"
                )

    o = top.sub("output")
    output = Output(
        o.get("dir", "str", "out"),
        o.get("html", "bool", True),
        o.get("plots", "bool", True),
        o.get("json", "bool", False),
        o.get("progress", "bool", True),
    )
    o.done()
    top.done()
    return Scenario(
        file,
        name,
        description,
        seed,
        start,
        duration_s,
        location,
        weather,
        radio,
        tuple(gateways),
        tuple(s for s in streets),
        tuple(p[0] for p in parks),
        lighting,
        irrigation,
        lamps_t,
        ctrl_t,
        faults,
        output,
        tuple(warnings),
        adr,
        battery,
        group_command,
        update,
    )


def _adr(t: _Table) -> dict[str, Any] | None:
    """[adr]: enabled = true turns the gateway's ADR on (gateway/adr.py); other keys are its policies."""
    enabled = t.get("enabled", "bool", False)
    t.allow(*adr_mod.ADR_KEYS)
    kw: dict[str, Any] = {}
    for k in adr_mod.ADR_KEYS:
        if t.has(k):
            kw[k] = t.data[k]
            t.used.add(k)
    t.done()
    try:
        adr_mod.Adr(**kw)
    except (ValueError, TypeError) as e:
        raise t.err("enabled", f"bad ADR policy: {e}") from None
    return kw if enabled else None


def _battery(t: _Table, present: bool) -> dict[str, Any] | None:
    """[battery]: battery irrigation controllers and the energy model's settings (simulator/energy.py)."""
    from simulator import energy

    p = dict(energy.DEFAULTS)
    p["mcu"] = t.get("mcu", "str", p["mcu"], _oneof(energy.MCUS))
    for k, (lo, hi) in energy.RANGES.items():
        kind = "int" if isinstance(energy.DEFAULTS[k], int) else "float"
        p[k] = t.get(k, kind, p[k], _in(lo, hi))
    t.done()
    return p if present else None


def _group_command(t: _Table, seed: int, duration_s: float) -> GroupCommandSettings:
    """[group_command]: one street commanded by unicast and by multicast (simulator/group_delivery.py)."""
    g = GroupCommandSettings(
        members=t.get("members", "int", 60, _in(2, 1000)),
        at_s=t.get("at", "duration", 3600.0, _span(0, duration_s)),
        args=(t.get("level", "int", 100, _in(0, 100)), int(t.get("hold", "duration", 7200.0, _span(1, 86400)))),
        sf=t.get("sf", "int", 9, _in(7, 12)),
        multicast_sf=t.get("multicast_sf", "int", 9, _in(7, 12)),
        report_s=t.get("report_interval", "duration", 900.0, _span(10, 86400)),
        loss=t.get("loss", "float", 0.05, _in(0.0, 0.9)),
        repair_after_s=t.get("repair_after", "duration", 120.0, _span(10, 86400)),
        seed=seed,
        runs=t.get("runs", "int", 21, _in(1, 1000)),
    )
    t.done()
    return g


def _update(t: _Table, seed: int, duration_s: float) -> UpdateSettings:
    """[update]: a release image to a street of lamps by multicast (simulator/update_delivery.py)."""
    u = UpdateSettings(
        members=t.get("members", "int", 60, _in(1, 1000)),
        at_s=t.get("at", "duration", 3600.0, _span(0, duration_s)),
        image_bytes=t.get("image_bytes", "int", 2758, _in(1, 65536)),
        sf=t.get("sf", "int", 9, _in(7, 12)),
        multicast_sf=t.get("multicast_sf", "int", 9, _in(7, 12)),
        report_s=t.get("report_interval", "duration", 900.0, _span(10, 86400)),
        loss=t.get("loss", "float", 0.05, _in(0.0, 0.9)),
        redundancy=t.get("redundancy", "float", 0.25, _in(0.0, 4.0)),
        margin=t.get("margin", "int", 2, _in(0, 1000)),
        max_rounds=t.get("max_rounds", "int", 4, _in(0, 100)),
        install_s=t.get("install", "duration", 60.0, _span(0, 86400)),
        seed=seed,
        park_valves=t.get("park_valves", "int", 0, _in(0, 1000)),
        park_image_bytes=t.get("park_image_bytes", "int", 2758, _in(1, 65536)),
        park_sf=t.get("park_sf", "int", 10, _in(7, 12)),
        park_report_s=t.get("park_report_interval", "duration", 900.0, _span(10, 86400)),
        bad_release=t.get("bad_release", "bool", False),
        canary=t.get("canary", "float", 1.0, _canary),
        rollback_s=t.get("rollback", "duration", 5400.0, _span(0, 7 * 86400)),
        window_s=t.get("window", "duration", WINDOW_S, _span(1, 30 * 86400)),
    )
    t.done()
    return u


def _canary(v: Any) -> str | None:
    """gateway/campaigns.py's rule: a count (a whole number >= 1) or a share between 0 and 1."""
    try:
        canary_count(v, 1_000_000)
    except (CampaignError, TypeError) as e:
        return str(e)
    return None


def _replace_sf(n: LampNode | IrrigationNode, sf: int) -> LampNode | IrrigationNode:
    return dataclasses.replace(n, sf=sf)


def _oneof(options: Mapping[str, Any]) -> Callable[[Any], str | None]:
    return lambda v: (
        None
        if v in options
        else f"must be one of {', '.join(sorted(options))}; got {show(v)}{did_you_mean(v, options)}"
    )


def _unique(file: str, what: str, ids: list[str]) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise ScenarioError(file, what, f"duplicate id {show(i)}")
        seen.add(i)


def _radio(r: _Table) -> RadioSettings:
    raw = r.data.get("channels_mhz", [hz / 1e6 for hz in lora.DEFAULT_CHANNELS_HZ])
    r.used.add("channels_mhz")
    if not isinstance(raw, list) or not raw or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw):
        raise r.err("channels_mhz", f"expected a non-empty array of frequencies in MHz, got {show(raw)}")
    bw = r.get(
        "bw_hz", "int", 125000, lambda v: None if v in ch.SENSITIVITY_DBM else "must be 125000, 250000 or 500000"
    )
    channels: list[int] = []
    for i, v in enumerate(raw):
        hz = int(round(v * 1e6))
        try:
            lora.band_for(hz, bw)
        except ValueError as e:
            raise r.err(f"channels_mhz[{i}]", str(e)) from None
        for o in channels:
            if abs(o - hz) < bw:
                raise r.err(
                    f"channels_mhz[{i}]", f"{v} MHz overlaps {o / 1e6} MHz (channels must be a bandwidth apart)"
                )
        channels.append(hz)
    sf_raw = r.data.get("sf", "auto")
    r.used.add("sf")
    if sf_raw == "auto":
        sf = None
    elif isinstance(sf_raw, int) and not isinstance(sf_raw, bool) and ch.SF_MIN <= sf_raw <= ch.SF_MAX:
        sf = sf_raw
    else:
        raise r.err("sf", f'must be "auto" or 7..12, got {show(sf_raw)}')
    margin = r.get("sf_margin_db", "float", 10.0, _in(0, 40))
    r.allow("freq_mhz", "d0_m", "pl_d0_db", "gamma")
    model_name = r.get(
        "path_loss",
        "str",
        "log_distance",
        lambda v: None if v in ("log_distance", "hata") else 'must be "log_distance" or "hata"',
    )
    if model_name == "log_distance":
        for k in ("freq_mhz",):
            if r.has(k):
                raise r.err(k, 'applies to path_loss = "hata" only')
        model: Any = ch.LogDistance(
            r.get("d0_m", "float", 40.0, _in(0.1, 10000)),
            r.get("pl_d0_db", "float", 127.41, _in(0, 250)),
            r.get("gamma", "float", 2.08, _in(1.0, 8.0)),
        )
    else:
        for k in ("d0_m", "pl_d0_db", "gamma"):
            if r.has(k):
                raise r.err(k, 'applies to path_loss = "log_distance" only')
        model = ch.HataUrban(r.get("freq_mhz", "float", 868.0, _in(150, 1500)))
    kw = dict(
        path_loss=model,
        tx_power_dbm=r.get("tx_power_dbm", "float", 14.0, _in(-10, 27)),
        gateway_tx_power_dbm=r.get("gateway_tx_power_dbm", "float", 14.0, _in(-10, 30)),
        shadowing_sigma_db=r.get("shadowing_sigma_db", "float", 3.57, _in(0, 20)),
        shadowing=r.get(
            "shadowing", "str", "packet", lambda v: None if v in ("packet", "link") else 'must be "packet" or "link"'
        ),
        capture_db=r.get("capture_db", "float", 6.0, _in(0, 30)),
        demodulators=r.get("demodulators", "int", 8, _in(1, 64)),
        bw_hz=bw,
    )
    params = ch.RadioParams(**kw)  # every field is checked above
    r.done()
    return RadioSettings(tuple(channels), sf, margin, params)


def _street(s: _Table, defaults: Mapping[str, Any]) -> Street:
    sid = s.get("id", "str", check=_ident)
    s.allow("lamps", "spacing_m")
    pts = s.get("points", "points", check=lambda v: None if len(v) >= 2 else f"needs at least 2 points, got {len(v)}")
    length = polyline_length(pts)
    if length <= 0:
        raise s.err("points", "the street has zero length")
    if s.has("lamps") and s.has("spacing_m"):
        raise s.err("lamps", "give lamps or spacing_m, not both")
    if s.has("lamps"):
        n = s.get("lamps", "int", check=_in(0, MAX_NODES))
    else:
        n = max(1, round(length / s.get("spacing_m", "float", defaults["spacing_m"], _in(5, 500))))
    st = Street(
        sid,
        s.get("name", "str", sid),
        pts,
        length,
        n,
        s.get("pedestrians_peak_per_h", "float", defaults["pedestrians_peak_per_h"], _in(0, 100000)),
        s.get("rated_power_w", "float", defaults["rated_power_w"], _in(1, 2000)),
    )
    s.done()
    return st


def _grid(g: _Table, defaults: Mapping[str, Any]) -> list[Street]:
    gid = g.get("id", "str", check=_ident)
    g.allow("lamps", "spacing_m")
    ox, oy = g.get("origin", "point")
    blocks = g.get(
        "blocks",
        "point",
        check=lambda v: (
            None
            if v[0] >= 1 and v[1] >= 1 and v[0] == int(v[0]) and v[1] == int(v[1]) and v[0] * v[1] <= 10000
            else "needs whole numbers of blocks >= 1 (at most 10,000)"
        ),
    )
    bx, by = int(blocks[0]), int(blocks[1])
    bw, bh = g.get("block_m", "point", check=lambda v: None if min(v) >= 10 else "blocks must be at least 10 m")
    peak = g.get("pedestrians_peak_per_h", "float", defaults["pedestrians_peak_per_h"], _in(0, 100000))
    power = g.get("rated_power_w", "float", defaults["rated_power_w"], _in(1, 2000))
    lines = [(f"{gid}-h{j:02d}", ((ox, oy + j * bh), (ox + bx * bw, oy + j * bh))) for j in range(by + 1)]
    lines += [(f"{gid}-v{i:02d}", ((ox + i * bw, oy), (ox + i * bw, oy + by * bh))) for i in range(bx + 1)]
    lengths = [polyline_length(p) for _, p in lines]
    if g.has("lamps") and g.has("spacing_m"):
        raise g.err("lamps", "give lamps or spacing_m, not both")
    if g.has("lamps"):
        total = g.get("lamps", "int", check=_in(0, MAX_NODES))
    else:
        total = max(1, round(sum(lengths) / g.get("spacing_m", "float", defaults["spacing_m"], _in(5, 500))))
    counts = share(total, lengths)
    g.done()
    return [Street(sid, sid, pts, ln, n, peak, power) for (sid, pts), ln, n in zip(lines, lengths, counts)]


def _park(
    p: _Table, d: Mapping[str, Any]
) -> tuple[Park, _Table, soil_mod.Soil, soil_mod.Crop, float, Schedule, float | None]:
    pid = p.get("id", "str", check=_ident)
    poly = p.get("polygon", "points", check=lambda v: None if len(v) >= 3 else f"needs at least 3 points, got {len(v)}")
    area = polygon_area(poly)
    if area < 1.0:
        raise p.err("polygon", f"encloses {area:.2f} m2; a park needs an area")
    controllers = p.get("controllers", "int", 1, _in(1, 1000))
    zpc = p.get("zones_per_controller", "int", d["zones_per_controller"], _in(1, 4))
    frac = p.get("irrigated_fraction", "float", d["irrigated_fraction"], _in(0.01, 1))
    park = Park(pid, p.get("name", "str", pid), poly, area, controllers, zpc, frac)
    zone_soil = soil_mod.SOILS[p.get("soil", "str", d["soil"], _oneof(soil_mod.SOILS))]
    zone_crop = soil_mod.CROPS[p.get("crop", "str", d["crop"], _oneof(soil_mod.CROPS))]
    rate = p.get("precip_rate_mm_h", "float", d["precip_rate_mm_h"], _in(1, 200))
    hh, mm = p.get("schedule_start", "str", d["schedule_start"], _hhmm).split(":")
    sched = Schedule(
        int(hh) * 60 + int(mm),
        p.get("schedule_minutes", "float", d["schedule_minutes"], _in(1, 240)),
        p.get("schedule_every_days", "int", d["schedule_every_days"], _in(1, 14)),
    )
    soil_start = p.get("soil_start", "float", d["soil_start"], _soil_start_ok)
    p.done()
    return park, p, zone_soil, zone_crop, rate, sched, soil_start


INVALID = 2  # exit status for a scenario that cannot be used, as `lumeau sim run` (and argparse) give


def main(argv: Sequence[str] | None = None) -> int:
    """python -m simulator.scenario FILE...: validate scenarios and print what they hold."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m simulator.scenario",
        description="Check scenario files (TOML; simulator/README.md, 'Scenario files') and print what each "
        "holds: nodes, zones, gateways, SFs, faults. An error names the file, the key and why, and the "
        f"status is {INVALID}; the warnings (simulator/run_warnings.py: no SF with margin, flow below the meter, a "
        "gateway on a node, nodes far off the map, dates outside the climate, a run too short) are printed with "
        "the summary.",
    )
    p.add_argument("scenarios", nargs="+", metavar="SCENARIO.toml", help="the files to check")
    p.add_argument("--strict", action="store_true", help=f"a file with warnings is an error too (status {INVALID})")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    from simulator.run_warnings import scenario_warnings, summary_lines

    rc = 0
    for a in args.scenarios:
        try:
            sc = load(a)
        except ScenarioError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = INVALID
            continue
        warns = scenario_warnings(sc)
        print("\n".join([sc.summary(with_warnings=False), *summary_lines(warns)]))
        if args.strict and warns:
            print(f"error: {sc.file}: {len(warns)} warning(s) (--strict)", file=sys.stderr)
            rc = INVALID
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
