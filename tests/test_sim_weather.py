"""simulator.weather: FAO-56 radiation and Hargreaves ET0 against the paper's examples,
the seeded generator against its climate targets, the daily curves, determinism."""

from __future__ import annotations

import calendar
import math
import statistics

import pytest

from simulator import weather as W

LYON = (45.76, 4.84)


def utc(*t: int) -> int:
    return calendar.timegm(t + (0,) * (6 - len(t)))


# ---------------------------------------------------------------- FAO-56


def test_fao56_example_8():
    """Ra for 3 September at 20 S: J = 246, dr = 0.985, d = 0.120 rad, ws = 1.527 rad, Ra = 32.2 MJ."""
    assert W.inverse_distance(246) == pytest.approx(0.985, abs=5e-4)
    assert W.declination(246) == pytest.approx(0.120, abs=5e-4)
    assert W.sunset_hour_angle(math.radians(-20), W.declination(246)) == pytest.approx(1.527, abs=5e-4)
    assert W.ra_mj(-20.0, 246) == pytest.approx(32.2, abs=0.05)
    assert 0.408 * W.ra_mj(-20.0, 246) == pytest.approx(13.1, abs=0.05)  # mm/day equivalent


@pytest.mark.parametrize(
    "lat,doy,ra",
    [
        (-(22 + 54 / 60), 135, 25.1),  # Example 10: Rio de Janeiro, 15 May
        (13 + 44 / 60, 105, 38.06),  # Example 17: Bangkok, April
        (50 + 48 / 60, 187, 41.09),  # Example 18: Brussels (Uccle), 6 July
    ],
)
def test_fao56_ra_examples(lat, doy, ra):
    assert W.ra_mj(lat, doy) == pytest.approx(ra, abs=0.05)


def test_hargreaves_by_hand():
    # Brussels, 6 July (Example 18's temperatures): Tmean 16.9, range 9.2, Ra 41.09:
    # 0.0023 x 34.7 x 3.0332 x (0.408 x 41.09 = 16.765) = 4.058 mm/day.
    assert W.et0_hargreaves(12.3, 21.5, 41.09) == pytest.approx(4.058, abs=0.005)
    # Bangkok, April (Example 17's): 0.0023 x 48.0 x 3.0332 x 15.528 = 5.200 mm/day.
    assert W.et0_hargreaves(25.6, 34.8, 38.06) == pytest.approx(5.200, abs=0.005)
    assert W.et0_hargreaves(-30.0, -25.0, 10.0) == 0.0  # below -17.8 degC: no ET
    with pytest.raises(ValueError):
        W.et0_hargreaves(20.0, 10.0, 30.0)


def test_polar_night_has_no_extraterrestrial_radiation():
    assert W.ra_mj(80.0, 355) == 0.0
    assert W.ra_mj(80.0, 172) > W.ra_mj(0.0, 172)  # the midnight sun out-radiates the equator in June


def test_ra_fraction_spreads_the_day():
    for lat, doy in ((45.0, 172), (45.0, 355), (0.0, 80), (-33.9, 15), (75.0, 172)):
        hours = [W.ra_fraction(lat, doy, h, h + 1) for h in range(24)]
        assert sum(hours) == pytest.approx(1.0, abs=1e-9)
        if lat < 60:
            assert hours[0] == 0.0
        assert max(range(24), key=hours.__getitem__) in (11, 12)
    # Symmetric about solar noon shifted by Sc (FAO-56 Eq. 32).
    sc = W.seasonal_correction_h(172)
    assert W.ra_fraction(45.0, 172, 6 - sc, 12 - sc) == pytest.approx(W.ra_fraction(45.0, 172, 12 - sc, 18 - sc))


# ---------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def twenty_years():
    return W.Weather(*LYON, utc(2000, 1, 1), 20 * 365 * 86400, seed=1, climate="lyon")


def test_generator_meets_its_climate(twenty_years):
    """Long-run statistics come back to the normals the generator aims at."""
    c = W.CLIMATES["lyon"]
    days = twenty_years.days[1:-2]
    years = len(days) / 365.25
    assert sum(d.rain_mm for d in days) / years == pytest.approx(sum(c.rain_mm), rel=0.10)
    assert sum(d.wet for d in days) / years == pytest.approx(sum(c.wet_days), rel=0.10)
    assert statistics.mean(d.tmax_c for d in days) == pytest.approx(statistics.mean(c.tmax_c), abs=0.4)
    assert statistics.mean(d.tmin_c for d in days) == pytest.approx(statistics.mean(c.tmin_c), abs=0.4)
    july = [d for d in days if 190 <= d.doy <= 200]
    january = [d for d in days if 10 <= d.doy <= 20]
    assert statistics.mean(d.tmax_c for d in july) == pytest.approx(c.tmax_c[6], abs=0.8)
    assert statistics.mean(d.tmax_c for d in january) == pytest.approx(c.tmax_c[0], abs=0.8)
    # Wet days come in spells (persistence 0.35): P(wet | wet) > P(wet | dry).
    ww = sum(1 for a, b in zip(days, days[1:]) if a.wet and b.wet) / sum(d.wet for d in days)
    dw = sum(1 for a, b in zip(days, days[1:]) if not a.wet and b.wet) / sum(not d.wet for d in days)
    assert ww > dw + 0.2
    assert all(d.tmax_c - d.tmin_c >= 1.0 - 1e-9 for d in days)
    assert all(d.rain_mm >= 1.0 for d in days if d.wet)


def test_a_dry_climate_stays_dry():
    w = W.Weather(37.4, -5.9, utc(2026, 7, 1), 30 * 86400, seed=3, climate="seville")
    assert sum(d.rain_mm for d in w.days) < 20.0
    assert statistics.mean(d.et0_mm for d in w.days) > 6.0  # Hargreaves in Andalusian July


def test_same_seed_same_weather():
    a = W.Weather(*LYON, utc(2026, 6, 15, 12), 86400 * 3, seed=9)
    b = W.Weather(*LYON, utc(2026, 6, 15, 12), 86400 * 3, seed=9)
    c = W.Weather(*LYON, utc(2026, 6, 15, 12), 86400 * 3, seed=10)
    assert a.days == b.days and a.events == b.events
    assert a.days != c.days


def test_rain_events_account_for_each_wet_day():
    w = W.Weather(*LYON, utc(2026, 4, 1), 60 * 86400, seed=4)
    for d in w.days:
        mine = [e for e in w.events if d.start <= e.start < d.start + 86400]
        assert sum(e.mm for e in mine) == pytest.approx(d.rain_mm)
        assert all(W.MIN_EVENT_H * 3600 - 1e-6 <= e.end - e.start <= W.MAX_EVENT_H * 3600 + 1e-6 for e in mine)
    t0, t1 = w.days[1].start, w.days[-2].start
    whole = w.rain_mm(t0, t1)
    parts = sum(w.rain_mm(t, min(t1, t + 1800)) for t in range(int(t0), int(t1), 1800))
    assert parts == pytest.approx(whole)
    e = max(w.events, key=lambda e: e.mm)
    assert w.raining((e.start + e.end) / 2)
    assert w.rain_mm(e.start, e.end) >= e.mm - 1e-9
    assert w.sky((e.start + e.end) / 2) == W.SKY_RAIN


def test_scripted_rain_and_no_random_rain():
    start = utc(2026, 6, 15, 12)
    storm = W.RainEvent(utc(2026, 6, 16, 2), utc(2026, 6, 16, 4), 12.0)
    w = W.Weather(*LYON, start, 86400, seed=1, extra_rain=[storm], random_rain=False)
    assert w.events == [storm]
    assert w.rain_mm(start, start + 86400) == pytest.approx(12.0)
    assert w.rain_mm(utc(2026, 6, 16, 3), utc(2026, 6, 16, 5)) == pytest.approx(6.0)  # half of it, 6 mm/h
    assert w.day(utc(2026, 6, 16, 3)).wet
    assert not w.raining(utc(2026, 6, 16, 1, 59)) and w.raining(utc(2026, 6, 16, 2, 1))
    # A rain sensor trips at 3 mm and dries 6 h after.
    assert not w.rain_sensor_wet(utc(2026, 6, 16, 2, 15))  # 1.5 mm so far
    assert w.rain_sensor_wet(utc(2026, 6, 16, 2, 45))  # 4.5 mm
    assert w.rain_sensor_wet(utc(2026, 6, 16, 9, 0))
    assert not w.rain_sensor_wet(utc(2026, 6, 16, 10, 30))
    with pytest.raises(ValueError):
        W.Weather(*LYON, start, 86400, seed=1, extra_rain=[W.RainEvent(5.0, 4.0, 1.0)])


def test_scripted_dry_days_change_no_other_day():
    start = utc(2026, 6, 1)
    free = W.Weather(*LYON, start, 30 * 86400, seed=7)
    wet = [d.day for d in free.days[1:-1] if d.wet and d.rain_mm > 0]
    assert len(wet) >= 3  # June in Lyon: about 8 wet days
    forced = set(wet[:2])
    w = W.Weather(*LYON, start, 30 * 86400, seed=7, dry_days=sorted(forced))
    for a, b in zip(free.days, w.days):
        if a.day in forced:
            assert not b.wet and b.rain_mm == 0 and b.tmax_c > a.tmax_c  # a dry day's warmer afternoon
        else:
            assert b == a  # same draw, the chain and the stream unchanged
    assert [e for e in free.events if free.day(e.start).day not in forced] == w.events
    # a scripted storm on a forced dry day still falls (dry_days removes only the drawn rain)
    storm = W.RainEvent(w.days[3].start + 3600, w.days[3].start + 7200, 5.0)
    w2 = W.Weather(*LYON, start, 30 * 86400, seed=7, dry_days=[w.days[3].day], extra_rain=[storm])
    assert storm in w2.events and w2.days[3].wet


def test_temperature_follows_the_day():
    start = utc(2026, 6, 15)
    w = W.Weather(*LYON, start, 4 * 86400, seed=2, random_rain=False)
    for d in w.days[1:-1]:
        temps = [(t, w.temperature_c(t)) for t in range(int(d.start), int(d.start + 86400), 300)]
        t_max, v_max = max(temps, key=lambda x: x[1])
        t_min, v_min = min(temps, key=lambda x: x[1])
        assert v_max == pytest.approx(d.tmax_c, abs=0.05)
        # The peak comes about 1.86 h after solar noon (local mean solar time 13:00-15:00).
        assert 13.0 <= (t_max - d.start) / 3600 <= 15.0
        # Tmin comes 0.17 h before sunrise; nothing in the day is colder than the nights around it.
        assert w.temperature_c(d.sunrise + W.PL_C_H * 3600) == pytest.approx(d.tmin_c)
        i = w.days.index(d)
        assert v_min >= min(d.tmin_c, w.days[i + 1].tmin_c) - 1e-9
    # Continuous: no jumps at sunrise, sunset or midnight.
    series = [w.temperature_c(t) for t in range(int(w.days[1].start), int(w.days[-2].start), 60)]
    assert max(abs(a - b) for a, b in zip(series, series[1:])) < 0.1


def test_et0_by_the_hour():
    start = utc(2026, 6, 15)
    w = W.Weather(*LYON, start, 3 * 86400, seed=2)
    d = w.days[1]
    assert w.et0_mm(d.start, d.start + 86400) == pytest.approx(d.et0_mm)
    # None at night (local solar midnight +- 2 h), most around noon.
    assert w.et0_mm(d.start, d.start + 2 * 3600) == 0.0
    noon = w.et0_mm(d.start + 10 * 3600, d.start + 14 * 3600)
    assert noon > 0.35 * d.et0_mm
    assert noon > w.et0_mm(d.start + 6 * 3600, d.start + 10 * 3600) > w.et0_mm(d.start + 2 * 3600, d.start + 6 * 3600)
    # Across a day boundary the parts add up.
    a, b = d.start + 20 * 3600, d.start + 30 * 3600
    assert w.et0_mm(a, b) == pytest.approx(w.et0_mm(a, d.start + 86400) + w.et0_mm(d.start + 86400, b))


def test_climate_and_span_errors():
    with pytest.raises(ValueError, match="unknown climate"):
        W.Weather(*LYON, 0, 86400, seed=1, climate="atlantis")
    w = W.Weather(*LYON, utc(2026, 6, 15), 86400, seed=1)
    with pytest.raises(ValueError, match="outside"):
        w.temperature_c(utc(2026, 7, 1))
    with pytest.raises(ValueError):
        W.Climate("bad", (1,) * 12, (2,) * 12, (10,) * 12, (3,) * 12)
    with pytest.raises(ValueError):
        W.Climate("short", (1,) * 11, (0,) * 12, (10,) * 12, (3,) * 12)
    with pytest.raises(ValueError):
        W.ra_mj(45.0, 0)
