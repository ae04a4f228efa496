"""simulator.baseline: full-power dusk-to-dawn lighting and fixed-schedule watering, by hand."""

from __future__ import annotations

import calendar
import zoneinfo
from types import SimpleNamespace

import pytest
from conftest import ROOT

from firmware import astro
from simulator import baseline as B
from simulator import scenario as S
from simulator.soil import SOILS, TURF_COOL
from simulator.weather import RainEvent, Weather

PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def utc(*t: int) -> int:
    return calendar.timegm(t + (0,) * (6 - len(t)))


def test_one_night_is_sunset_to_sunrise():
    lat, lon = 45.7578, 4.832
    _, sset = astro.sun_times(lat, lon, 2026, 6, 15)
    rise, _ = astro.sun_times(lat, lon, 2026, 6, 16)
    expect = (utc(2026, 6, 16) + rise - (utc(2026, 6, 15) + sset)) / 3600
    assert 8.0 < expect < 8.6  # a June night in Lyon
    assert B.night_hours(lat, lon, utc(2026, 6, 15, 12), utc(2026, 6, 16, 12)) == pytest.approx(expect)


def test_windows_clip_the_night():
    lat, lon = 45.76, 4.83
    assert B.night_hours(lat, lon, utc(2026, 6, 15, 23), utc(2026, 6, 16, 0)) == pytest.approx(1.0)
    assert B.night_hours(lat, lon, utc(2026, 6, 15, 10), utc(2026, 6, 15, 11)) == 0.0
    assert B.night_hours(lat, lon, 10.0, 5.0) == 0.0


def test_a_year_of_nights_at_45_degrees():
    """Independent check: the sunrise equation with FAO-56's declination (Eq. 24) and the sun's
    centre at -0.833 deg gives 4,317.0 h of night a year at 45 N and at 45 S alike (a sinusoidal
    declination ignores the orbit's eccentricity). The true year is lopsided (the northern summer
    is about a week longer) but the two hemispheres' sum is not: 8,634.0 h."""
    year = (utc(2025, 1, 1), utc(2026, 1, 1))
    north = B.night_hours(45.0, 0.0, *year)
    south = B.night_hours(-45.0, 0.0, *year)
    assert north + south == pytest.approx(8634.0, abs=3.0)
    assert north < 4317.0 < south


def test_polar_summer_and_winter():
    tromso = (69.65, 18.96)
    assert B.night_hours(*tromso, utc(2026, 6, 20), utc(2026, 6, 23)) == 0.0
    assert B.night_hours(*tromso, utc(2025, 12, 20), utc(2025, 12, 23)) == pytest.approx(72.0)


def test_lighting_baseline_is_power_times_darkness():
    a = SimpleNamespace(lat=45.76, lon=4.83, rated_power_w=60.0)
    b = SimpleNamespace(lat=45.76, lon=4.83, rated_power_w=90.0)
    start, end = utc(2026, 6, 15, 12), utc(2026, 6, 16, 12)
    h = B.night_hours(45.76, 4.83, start, end)
    got = B.lighting_baseline([a, b], start, end)
    assert got.kwh == pytest.approx(150.0 * h / 1000.0)
    assert got.lamp_hours == pytest.approx(2 * h) and got.lamps == 2


def test_district_baselines_by_hand():
    sc = S.load(ROOT / "simulator" / "scenarios" / "district.toml")
    light = B.lighting_baseline(sc.lamps, sc.start_unix, sc.end_unix)
    # 47 lamps at 60 W and 13 at 90 W (Rue de la Republique), about 8.3 h each.
    assert sum(lp.rated_power_w for lp in sc.lamps) == 47 * 60 + 13 * 90
    assert light.kwh == pytest.approx((47 * 60 + 13 * 90) * light.lamp_hours / 60 / 1000, rel=1e-3)
    water = B.irrigation_baseline(sc.controllers, sc.start_unix, sc.end_unix, sc.location.tz)
    # Jacobins: 8 zones x 58.5 L/min x 20 min; Celestins: 4 zones of 90 x 40 x 0.4 / 4 = 360 m2
    # at 12 mm/h = 72 L/min, x 20 min.
    assert water.m3 == pytest.approx((8 * 58.5 * 20 + 4 * 72.0 * 20) / 1000)
    assert water.runs == 12 and water.zones == 12
    assert water.drainage_m3 == 0.0  # no weather given: volume only


def zone_controller(start_min: int = 5 * 60, minutes: float = 30.0):
    zone = S.Zone(1, 100.0, 20.0, SOILS["loam"], TURF_COOL)  # 20 L/min on 100 m2: 12 mm/h
    return SimpleNamespace(zones=(zone,), schedule=S.Schedule(start_min, minutes, 1))


def test_watering_after_rain_is_wasted_and_after_drought_is_not():
    start = utc(2026, 6, 15, 12)
    end = start + 86400
    c = zone_controller()  # 30 min at 12 mm/h = 6 mm = 600 L, at 03:00 UTC
    storm = RainEvent(utc(2026, 6, 16, 0), utc(2026, 6, 16, 2), 20.0)
    wet = Weather(45.76, 4.83, start, 86400, seed=1, extra_rain=[storm], random_rain=False)
    dry = Weather(45.76, 4.83, start, 86400, seed=1, random_rain=False)
    after_rain = B.irrigation_baseline([c], start, end, PARIS, wet)
    in_drought = B.irrigation_baseline([c], start, end, PARIS, dry)
    assert after_rain.m3 == in_drought.m3 == pytest.approx(0.6)
    # The storm filled the bucket: all 6 mm of the schedule drain below the roots.
    assert after_rain.wasted_m3 == pytest.approx(0.6, abs=0.01)
    # Half of RAW depleted plus a day of ET: the 6 mm fit in the root zone.
    assert in_drought.wasted_m3 == pytest.approx(0.0, abs=1e-9)
    assert after_rain.drainage_m3 > after_rain.wasted_m3


def test_runs_clip_to_the_window():
    c = zone_controller(minutes=60.0)
    start = utc(2026, 6, 16, 3, 30)  # half way through the 05:00 CEST run
    got = B.irrigation_baseline([c], start, start + 3600, PARIS)
    assert got.m3 == pytest.approx(0.6)  # 30 of its 60 minutes at 20 L/min
    assert got.runs == 1
