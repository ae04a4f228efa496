"""simulator.sun: solar position (NOAA equations) and outdoor illuminance (USNO Circular 171)."""

from __future__ import annotations

import calendar
import math

import pytest

from firmware import astro
from simulator import sun


def utc(*t: int) -> int:
    return calendar.timegm(t + (0,) * (6 - len(t)))


def test_nrel_spa_worked_example():
    """Reda & Andreas (2004), NREL/TP-560-34302: 2003-10-17 12:30:30 MST (UTC-7), Golden CO.

    Published: geometric elevation 39.872046 deg (topocentric, before refraction),
    azimuth 194.340241 deg. The NOAA equations claim about 0.01 deg.
    """
    p = sun.position(39.742476, -105.1786, utc(2003, 10, 17, 19, 30, 30))
    assert p.elevation_deg == pytest.approx(39.872046, abs=0.01)
    assert p.azimuth_deg == pytest.approx(194.340241, abs=0.02)
    assert p.apparent_elevation_deg > p.elevation_deg


def test_meeus_example_25a_declination_seen_from_the_pole():
    """At the north pole the sun's elevation is its declination.

    Meeus, Astronomical Algorithms, example 25.a: 1992 October 13.0 TD,
    apparent declination -7 deg 47' 06" = -7.78507 deg.
    """
    p = sun.position(90.0, 0.0, utc(1992, 10, 13))
    assert p.elevation_deg == pytest.approx(-7.78507, abs=0.01)


def test_meeus_example_28a_equation_of_time_sets_solar_noon():
    """Meeus example 28.a: on 1992 October 13 the equation of time is +13 min 42.6 s, so
    the sun crosses the meridian at Greenwich at 11:46:17 UTC (within the day's drift)."""
    lo, hi = utc(1992, 10, 13, 11, 30), utc(1992, 10, 13, 12, 0)
    for _ in range(40):  # bisect the azimuth through due south
        mid = (lo + hi) / 2
        if sun.position(45.0, 0.0, mid).azimuth_deg < 180.0:
            lo = mid
        else:
            hi = mid
    assert lo == pytest.approx(utc(1992, 10, 13, 11, 46, 17), abs=10)


def test_noon_elevation_by_hand():
    # 21 June, 45 N, Greenwich: noon elevation = 90 - 45 + 23.44 = 68.44 deg, due south.
    noon = max(
        (sun.position(45.0, 0.0, utc(2026, 6, 21, 11) + s) for s in range(0, 7200, 30)), key=lambda p: p.elevation_deg
    )
    assert noon.elevation_deg == pytest.approx(68.44, abs=0.05)
    assert noon.azimuth_deg == pytest.approx(180.0, abs=0.5)
    # Southern hemisphere: the noon sun stands in the north.
    p = max(
        (sun.position(-33.86, 151.21, utc(2026, 6, 21, 1) + s) for s in range(0, 7200, 30)),
        key=lambda p: p.elevation_deg,
    )
    assert min(p.azimuth_deg, 360 - p.azimuth_deg) < 1.0
    assert p.elevation_deg == pytest.approx(90 - 33.86 - 23.44, abs=0.1)


@pytest.mark.parametrize(
    "lat,lon,date",
    [
        (45.76, 4.83, (2026, 6, 15)),
        (51.5, -0.12, (2025, 12, 21)),
        (-33.86, 151.2, (2026, 1, 3)),
        (0.0, -78.5, (2026, 3, 20)),
        (64.1, -21.9, (2026, 9, 1)),
    ],
)
def test_consistent_with_the_nodes_sunrise_and_sunset(lat, lon, date):
    """At astro's sunrise/sunset the sun's centre is 0.833 deg below the horizon."""
    rise, sset = astro.sun_times(lat, lon, *date)
    day0 = utc(*date)
    for t in (day0 + rise, day0 + sset):
        assert sun.position(lat, lon, t).elevation_deg == pytest.approx(-0.833, abs=0.05)


def test_sunrise_azimuth_at_the_solstice_by_hand():
    # cos A = (sin d - sin(lat) sin h) / (cos(lat) cos h), d = 23.44, lat = 45, h = -0.833: A = 54.75 deg.
    rise, _ = astro.sun_times(45.0, 0.0, 2026, 6, 21)
    assert sun.position(45.0, 0.0, utc(2026, 6, 21) + rise).azimuth_deg == pytest.approx(54.75, abs=0.3)


def test_refraction_noaa_values():
    assert sun.refraction_deg(90) == 0.0
    assert sun.refraction_deg(0.0) == pytest.approx(1735 / 3600)  # 28.9' ... the NOAA fit
    # 10 deg: 58.1/tan - 0.07/tan^3 + 0.000086/tan^5 = 317.2" (Bennett's table: 5.3')
    assert sun.refraction_deg(10.0) == pytest.approx(317.2 / 3600, abs=1e-4)
    assert sun.refraction_deg(-5.0) > 0
    # Continuous at the pieces' joins (within a fraction of an arcminute).
    for h in (85.0, 5.0, -0.575):
        assert abs(sun.refraction_deg(h + 1e-9) - sun.refraction_deg(h - 1e-9)) < 0.005


def test_illuminance_published_levels():
    # skylight (Hufkens), an independent transcription of USNO Circular 171: 123,786.3 lux at altitude 89.9565.
    assert sun.illuminance_lux(89.9565) == pytest.approx(123786.3, rel=1e-4)
    # End of civil twilight: the commonly quoted 3.4 lux; sunset on a clear day: a few hundred lux.
    assert 2.0 < sun.illuminance_lux(-6.0) < 5.0
    assert 400 < sun.illuminance_lux(0.0) < 800
    assert sun.illuminance_lux(-30.0) == sun.NIGHT_LUX
    # More sun, more light; clouds divide it.
    xs = [sun.illuminance_lux(h / 2) for h in range(-36, 181)]
    assert all(a <= b for a, b in zip(xs, xs[1:]))
    assert sun.illuminance_lux(30.0, sky=10.0) == pytest.approx(sun.illuminance_lux(30.0) / 10.0)
    with pytest.raises(ValueError):
        sun.illuminance_lux(10.0, sky=0.5)


def test_a_day_of_light_at_a_lamp():
    lat, lon = 45.7578, 4.832
    rise, sset = astro.sun_times(lat, lon, 2026, 6, 15)
    day0 = utc(2026, 6, 15)
    assert sun.lux_at(lat, lon, day0 + (rise + sset) // 2) > 80_000  # summer noon
    assert sun.lux_at(lat, lon, day0 + sset + 3600) < 10  # an hour after sunset
    assert sun.lux_at(lat, lon, day0 + sset + 3 * 3600) < 0.01  # night


def test_bad_coordinates():
    with pytest.raises(ValueError):
        sun.position(91.0, 0.0, 0)
    with pytest.raises(ValueError):
        sun.elevation_deg(0.0, 181.0, 0)
    assert math.isfinite(sun.position(90.0, 180.0, 0).azimuth_deg)
