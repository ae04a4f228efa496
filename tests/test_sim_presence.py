"""simulator.presence: Poisson arrivals by local hour, walks, and PIR intervals by hand."""

from __future__ import annotations

import calendar
import math
import zoneinfo

import pytest

from simulator import presence as P

DAY = 86400


def utc(*t: int) -> int:
    return calendar.timegm(t + (0,) * (6 - len(t)))


def street(seed: int = 1, days: int = 1, peak: float = 120.0, sid: str = "main", **kw) -> P.StreetPresence:
    start = utc(2026, 6, 1)
    return P.StreetPresence(sid, 300.0, peak, start, start + days * DAY, seed, **kw)


def test_same_seed_same_people():
    assert street(1).pedestrians == street(1).pedestrians
    assert street(1).pedestrians != street(2).pedestrians
    assert street(1, sid="a").pedestrians != street(1, sid="b").pedestrians


def test_counts_follow_the_poisson_rates():
    days = 60
    s = street(3, days=days, peak=100.0)
    expected = days * 100.0 * sum(P.DEFAULT_PROFILE)
    assert abs(len(s.pedestrians) - expected) < 4 * math.sqrt(expected)
    # Per local hour (UTC here), each count within 4 sigma of its own rate.
    by_hour = [0] * 24
    for p in s.pedestrians:
        by_hour[(int(p.enter) % DAY) // 3600] += 1
    for h in range(24):
        mu = days * 100.0 * P.DEFAULT_PROFILE[h]
        assert abs(by_hour[h] - mu) < 4 * math.sqrt(mu) + 1
    assert sum(by_hour[1:5]) * 10 < sum(by_hour[17:21])  # quiet deep night, busy evening


def test_profile_hours_are_local_hours():
    paris = zoneinfo.ZoneInfo("Europe/Paris")  # UTC+2 in June
    profile = [0.0] * 24
    profile[20] = 1.0  # people only at 20:00-21:00 local
    s = street(4, days=5, peak=200.0, tz=paris, profile=profile)
    assert s.pedestrians
    assert {(int(p.enter) % DAY) // 3600 for p in s.pedestrians} == {18}


def test_walkers_are_plausible():
    s = street(5, days=3)
    for p in s.pedestrians:
        assert P.WALK_MIN_M_S <= p.speed <= P.WALK_MAX_M_S
        assert 0.0 <= p.s0 <= 300.0 and p.direction in (1, -1)
        assert p.leave(300.0) >= p.enter
    speeds = [p.speed for p in s.pedestrians]
    assert sum(speeds) / len(speeds) == pytest.approx(1.34, abs=0.05)
    at_end = sum(1 for p in s.pedestrians if p.s0 in (0.0, 300.0)) / len(s.pedestrians)
    assert at_end == pytest.approx(P.ENTER_AT_END, abs=0.05)


def scripted(people: list[P.Pedestrian]) -> P.StreetPresence:
    s = street(peak=0.0)
    assert s.pedestrians == []
    s.pedestrians = people
    return s


def test_pir_intervals_by_hand():
    # One walker from the start at 1 m/s, entering at t = 1000; lamps at 50 m and 10 m, range 8 m, hold 3 s.
    s = scripted([P.Pedestrian(1000.0, 0.0, 1, 1.0)])
    got = s.pir_intervals([50.0, 10.0], range_m=8.0, hold_s=3.0)
    assert got == [[(1042.0, 1061.0)], [(1002.0, 1021.0)]]
    # Walking the other way from 30 m at 2 m/s: passes 10 m (zone 2..18 m) from t = 6..14, never 50 m.
    s = scripted([P.Pedestrian(0.0, 30.0, -1, 2.0)])
    assert s.pir_intervals([50.0, 10.0], 8.0, 0.0) == [[], [(6.0, 14.0)]]
    # Starting inside a lamp's zone triggers it at once.
    s = scripted([P.Pedestrian(100.0, 12.0, 1, 1.0)])
    assert s.pir_intervals([10.0], 8.0, 0.0) == [[(100.0, 106.0)]]


def test_pir_merges_overlaps_and_windows():
    people = [P.Pedestrian(0.0, 0.0, 1, 1.0), P.Pedestrian(5.0, 0.0, 1, 1.0), P.Pedestrian(500.0, 0.0, 1, 1.0)]
    s = scripted(people)
    # Lamp at 20 m: 12..28+2, 17..33+2 merge; 512..530.
    assert s.pir_intervals([20.0], 8.0, 2.0) == [[(12.0, 35.0), (512.0, 530.0)]]
    assert s.pir_intervals([20.0], 8.0, 2.0, t0=100.0, t1=1000.0) == [[(512.0, 530.0)]]
    with pytest.raises(ValueError):
        s.pir_intervals([20.0], 0.0)


def test_errors():
    with pytest.raises(ValueError):
        street(profile=[1.0] * 23)
    with pytest.raises(ValueError):
        street(peak=-1.0)
    with pytest.raises(ValueError):
        P.StreetPresence("x", 0.0, 10.0, 0.0, 10.0, 1)
