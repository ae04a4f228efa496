"""What a city without Lumeau would use: the naive baselines of the report.

Lighting: every lamp at its rated power from sunset to sunrise, every night
(a photocell or astronomical clock and no dimming). Sunset and sunrise come
from firmware/astro.py at each lamp's own coordinates, the events the
lighting app itself uses; a night that has no sunset (polar day) burns
nothing, one without sunrise (polar night) burns all day. Energy is rated
power x time (DESIGN.md: LED drivers are close to linear in level, so a
dimmed lamp's energy is level x this; night dimming and presence-based
dimming are reported to save 25-80 %).

Irrigation: every zone waters on its fixed program (the park's schedule:
zones one after the other, every `every_days` days) at its design flow,
whatever the soil moisture and the rain. With the scenario's weather, the
same FAO-56 bucket (simulator/soil.py) shows where that water goes: what the
schedule adds to the drainage below the roots (against not watering at all)
is water no plant used, which a moisture-aware controller can save.

Both take the same world the simulation runs in (a Scenario and its
Weather) and count only what falls inside [start, end). The irrigation
baseline starts every zone's soil where the simulated zone starts
(`[irrigation] soil_start`), and also says how much of the schedule's water
fell in given intervals per zone (`exclude`: the fault-affected time that
simulator/savings.py leaves out of the control's saving) and how long its
turf was stressed.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from firmware.astro import polar_day, sun_times_day
from simulator.soil import SoilBucket, mm_from_litres
from simulator.weather import Weather

if TYPE_CHECKING:
    from simulator.scenario import Zone

_DAY = 86400
SOIL_STEP_S = 600  # 10 minutes: short against a 15-20 minute zone run


def night_hours(lat: float, lon: float, start: float, end: float) -> float:
    """Hours between sunset and sunrise within [start, end) at a place (astro's events)."""
    if end <= start:
        return 0.0
    shift = lon * 240.0
    first = int((start + shift) // _DAY) - 1
    last = int((end + shift) // _DAY) + 1
    dark = 0.0
    # Walk day by day: dark from sunset of day d until sunrise of day d + 1.
    for day in range(first, last + 1):
        lo = day * _DAY - shift  # local mean midnight starting day d
        hi = lo + _DAY
        rise, sset = sun_times_day(lat, lon, day)
        if rise is None and sset is None:
            intervals = [] if polar_day(lat, lon, day) else [(lo, hi)]
        else:
            r = day * _DAY + rise if rise is not None else lo
            s = day * _DAY + sset if sset is not None else hi
            intervals = [(lo, r), (s, hi)] if r <= s else [(s, r)]
        for a, b in intervals:
            a, b = max(a, start), min(b, end)
            if b > a:
                dark += b - a
    return dark / 3600.0


@dataclass(frozen=True, slots=True)
class LightingBaseline:
    kwh: float  # all lamps, full power, dusk to dawn
    lamp_hours: float  # sum over lamps of hours burning
    lamps: int


def lighting_baseline(lamps: Sequence, start: float, end: float) -> LightingBaseline:
    """Lamps need .lat, .lon and .rated_power_w (a Scenario's lamps)."""
    kwh = 0.0
    hours = 0.0
    cache: dict[tuple[float, float], float] = {}
    for lamp in lamps:
        # Lamps a few metres apart share their night to the second; round the key.
        key = (round(lamp.lat, 3), round(lamp.lon, 3))
        h = cache.get(key)
        if h is None:
            h = cache[key] = night_hours(lamp.lat, lamp.lon, start, end)
        hours += h
        kwh += lamp.rated_power_w * h / 1000.0
    return LightingBaseline(kwh, hours, len(lamps))


@dataclass(frozen=True, slots=True)
class IrrigationBaseline:
    m3: float  # water applied by the fixed schedule
    runs: int  # zone runs (whole or clipped to the period)
    drainage_m3: float  # irrigation and rain that drained below the roots
    wasted_m3: float  # the part of the drainage the schedule added (vs. not watering at all)
    zones: int
    excluded_m3: float = 0.0  # of m3, what fell in the `exclude` intervals
    stress_zone_h: float = 0.0  # zone-hours past readily available water (FAO-56 Ks < 1), with weather


def overlap_s(runs: Sequence[tuple[float, float]], intervals: Sequence[tuple[float, float]]) -> float:
    """Seconds the runs spend inside the intervals (each list without overlaps of its own)."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in runs for c, d in intervals)


def irrigation_baseline(
    controllers: Sequence,
    start: float,
    end: float,
    tz: _dt.tzinfo,
    weather: Weather | None = None,
    exclude: Mapping[str, Sequence[Sequence[tuple[float, float]]]] | None = None,
) -> IrrigationBaseline:
    """Controllers need .name, .zones (with .number, .area_m2, .flow_l_min, .bucket()) and .schedule.

    Without weather only the applied volume is computed (drainage and stress 0).
    `exclude`: controller name -> per zone (in .zones order) the intervals whose
    scheduled water `excluded_m3` counts.
    """
    litres = 0.0
    excluded = 0.0
    runs = 0
    drained = 0.0
    wasted = 0.0
    stress_s = 0.0
    zones = 0
    for c in controllers:
        plan = c.schedule.runs(len(c.zones), start, end, tz)
        runs += len(plan)
        by_zone: dict[int, list[tuple[float, float]]] = {}
        for z, a, b in plan:
            by_zone.setdefault(z, []).append((a, b))
        skip = (exclude or {}).get(getattr(c, "name", ""), ())
        for i, zone in enumerate(c.zones):
            zones += 1
            mine = by_zone.get(zone.number, [])
            litres += sum((b - a) / 60.0 * zone.flow_l_min for a, b in mine)
            if i < len(skip):
                excluded += overlap_s(mine, skip[i]) / 60.0 * zone.flow_l_min
            if weather is not None:
                with_schedule, stressed = _drainage_litres(zone, mine, start, end, weather)
                drained += with_schedule
                stress_s += stressed
                wasted += with_schedule - _drainage_litres(zone, [], start, end, weather)[0]
    return IrrigationBaseline(
        litres / 1000.0, runs, drained / 1000.0, wasted / 1000.0, zones, excluded / 1000.0, stress_s / 3600.0
    )


def _drainage_litres(
    zone: Zone, runs: list[tuple[float, float]], start: float, end: float, weather: Weather
) -> tuple[float, float]:
    """(litres drained below the roots, seconds of stress) of a zone watered on `runs`."""
    bucket: SoilBucket = zone.bucket()
    stress = 0.0
    rate_mm_s = mm_from_litres(zone.flow_l_min, zone.area_m2) / 60.0
    t = start
    day = None
    while t < end:
        t1 = min(end, t + SOIL_STEP_S)
        d = weather.day(t)
        if d.day != day:
            day = d.day
            bucket.new_day(d.et0_mm)
        irr = sum(max(0.0, min(b, t1) - max(a, t)) for a, b in runs) * rate_mm_s
        if bucket.ks < 1.0:  # as the world counts it (simulator/world.py)
            stress += t1 - t
        bucket.step(weather.et0_mm(t, t1), weather.rain_mm(t, t1), irr)
        t = t1
    return bucket.total.drainage_mm * zone.area_m2, stress
