"""The public-value ledger without I/O (city/ledger.py), on hand-made records with answers worked out by hand.

The lamps stand at 89 degrees north on the winter solstice: polar night, so the
sun stays below the horizon all day and the baseline is rated power x 24 h, a
figure anyone can check. Dusk and dawn elsewhere are checked against published
times (Paris, the summer solstice).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from city.ledger import (
    Facts,
    Reading,
    RequestRow,
    Settings,
    alarm_intervals,
    compute_day,
    dark_intervals,
    day_bounds,
)
from city.ledger_db import parse_facts
from city.matching import NodeInfo
from city.open_data import settings_from

H = 3600.0
DAY = date(2026, 12, 21)
D0 = datetime(2026, 12, 21, tzinfo=UTC).timestamp()
D1 = D0 + 24 * H
S = Settings(timezone="UTC", eur_per_kwh=0.2, kgco2_per_kwh=0.05, eur_per_m3=3.0, kgco2_per_m3=0.0)
POLAR = (89.0, 0.0)

NODES = [
    NodeInfo("00000001", "lighting", "A1", "Rue A", *POLAR),
    NodeInfo("00000002", "lighting", "A2", "Rue A", *POLAR),
    NodeInfo("00000003", "lighting", "B1", "Rue B", *POLAR),
    NodeInfo("00000010", "irrigation", "X1", "Parc X", *POLAR),
    NodeInfo("00000011", "irrigation", "X2", "Parc X", *POLAR),
]
FACTS = {
    "00000001": Facts(district="Nord", rated_power_w=100.0),
    "00000002": Facts(district="Nord", rated_power_w=50.0),
    "00000003": Facts(rated_power_w=100.0),
    "00000010": Facts(
        district="Sud", baseline_l_day=1000.0, baseline_start_min=5 * 60, baseline_minutes=60, stress_vwc_pct=20.0
    ),
    "00000011": Facts(district="Sud", baseline_l_day=2000.0),
}


def light(node: str, t: float, energy: float, level: int = 100, presence: int | None = None) -> Reading:
    f: dict = {"energy": energy, "level": level, "state": ["on"]}
    if presence is not None:
        f["presence_count"] = presence
    return Reading(node, "light", t, f)


def irr(node: str, t: float, volume: float, soil: list | None = None) -> Reading:
    return Reading(node, "irrigation", t, {"volume": volume, "soil_moisture": soil or [None]})


def event(node: str, t: float, code: str, active: int) -> Reading:
    return Reading(node, "event", t, {"code": code, "severity": "alarm", "active": active})


READINGS = [
    # A1: 400 Wh over 4 h across midnight (half of that night in the day), 500 Wh inside, 400 Wh over
    # the 16 h to 04:00 next day (12 of them in the day): 200 + 500 + 300 = 1,000 Wh
    light("00000001", D0 - 2 * H, 1000, 100),
    light("00000001", D0 + 2 * H, 1400, 50, presence=3),
    light("00000001", D0 + 12 * H, 1900, 50, presence=4),
    light("00000001", D1 + 4 * H, 2300, 50),
    event("00000001", D0 + 6 * H, "lamp_failure", 1),
    event("00000001", D0 + 9 * H, "lamp_failure", 0),
    # A2: from midnight to midnight, 500 Wh
    light("00000002", D0, 0, 100),
    light("00000002", D0 + 12 * H, 300, 100, presence=6),
    light("00000002", D1, 500, 100),
    # B1: its counter goes down once (that interval adds nothing), then 50 Wh
    light("00000003", D0 + 1 * H, 500),
    light("00000003", D0 + 2 * H, 100),
    light("00000003", D0 + 3 * H, 150),
    # X1: 800 L in its 05:00-06:00 window; soil: zone 2 dry 5 h, then zone 1 dry 1 h
    irr("00000010", D0, 0, [25, 15, None]),
    irr("00000010", D0 + 5 * H, 0, [18, 30, None]),
    irr("00000010", D0 + 6 * H, 800, [30, 30, None]),
    irr("00000010", D1 + 1 * H, 800, [30, 30, None]),
    # X2: 200 L over 24 h from noon, half of it in the day; seen for 12 h of the day
    irr("00000011", D0 + 12 * H, 100),
    irr("00000011", D1 + 12 * H, 300),
]
REQUESTS = [
    RequestRow("resident", "lamp_out", "confirmed", D0 + 1 * H, D0 + 4 * H),  # resolved in 3 h
    RequestRow("resident", "water_leak", "confirmed", D0 - 10 * H, D0 + 2 * H),  # filed the day before, 12 h
    RequestRow("resident", "too_dark", "device_normal", D0 + 20 * H, None),  # open at midnight
    RequestRow("device", "lamp_out", "confirmed", D0 + 6 * H, None),
    RequestRow("resident", "lamp_out", "confirmed", D0 - 30 * H, D0 - 20 * H),  # all before the day
]


@pytest.fixture(scope="module")
def day():
    return compute_day(DAY, NODES, FACTS, READINGS, REQUESTS, S).to_dict(S)


def row(day, level, name):
    rows = {"city": [day["city"]], "district": day["districts"], "street": day["streets"], "park": day["parks"]}
    (r,) = [r for r in rows[level] if r["name"] == name]
    return r


def test_energy_used_and_baseline_by_hand(day):
    a = row(day, "street", "Rue A")
    assert a["lamps"] == 2
    assert a["energy_kwh"] == pytest.approx(1.0 + 0.5)
    # polar night: 100 W and 50 W for 24 h observed each
    assert a["energy_baseline_kwh"] == pytest.approx(2.4 + 1.2, abs=1e-3)
    assert a["energy_saved_kwh"] == pytest.approx(2.1, abs=1e-3)
    assert a["energy_saved_pct"] == pytest.approx(100 * 2.1 / 3.6, abs=0.01)
    assert a["eur_saved"] == pytest.approx(0.42, abs=0.01)  # 2.1 kWh x 0.2
    assert a["kgco2_avoided"] == pytest.approx(0.105, abs=1e-3)  # 2.1 kWh x 0.05
    b = row(day, "street", "Rue B")
    assert b["energy_kwh"] == pytest.approx(0.05) and b["counter_resets"] == 1
    assert b["energy_baseline_kwh"] == pytest.approx(0.2, abs=1e-3)  # seen 01:00-03:00 only, 100 W
    assert b["coverage_pct"] == pytest.approx(100 * 2 / 24, abs=0.01)


def test_service_quality_lamps(day):
    a = row(day, "street", "Rue A")
    # A1 dark 06:00-09:00: 3 of the 48 night lamp-hours of Rue A
    assert a["dark_lamp_hours"] == pytest.approx(3.0, abs=1e-3)
    assert a["lamp_availability_pct"] == pytest.approx(100 * (1 - 3 / 48), abs=0.01)
    # A1 at 50 % from 02:00 to midnight, less the 3 dark hours: 19 h; A2 always at 100 %
    assert a["reduced_light_lamp_hours"] == pytest.approx(19.0, abs=1e-3)
    assert a["alarms_repaired"] == 1 and a["repair_hours_median"] == pytest.approx(3.0)
    assert a["alarms_open_at_end"] == 0


def test_water_and_soil_by_hand(day):
    x = row(day, "park", "Parc X")
    assert x["irrigation_controllers"] == 2
    assert x["water_m3"] == pytest.approx(0.8 + 0.1)
    # X1: its whole 05:00-06:00 window seen, 1,000 L; X2: no window, seen 12 h of 24: 1,000 L of 2,000
    assert x["water_baseline_m3"] == pytest.approx(1.0 + 1.0, abs=1e-4)
    assert x["water_saved_m3"] == pytest.approx(1.1, abs=1e-4)
    assert x["eur_saved"] == pytest.approx(3.3, abs=0.01)
    assert x["kgco2_avoided"] == 0  # no factor configured for water
    assert x["soil_stress_zone_hours"] == pytest.approx(6.0, abs=1e-3)
    assert x["energy_kwh"] is None and x["lamp_availability_pct"] is None


def test_districts_and_city_add_up(day):
    nord, sud, none = (row(day, "district", n) for n in ("Nord", "Sud", "(no district)"))
    assert nord["lamps"] == 2 and nord["energy_kwh"] == pytest.approx(1.5)
    assert sud["irrigation_controllers"] == 2 and sud["water_m3"] == pytest.approx(0.9)
    assert none["lamps"] == 1
    city = day["city"]
    assert city["lamps"] == 3 and city["irrigation_controllers"] == 2
    assert city["energy_kwh"] == pytest.approx(1.55) and city["water_m3"] == pytest.approx(0.9)
    assert city["eur_saved"] == pytest.approx((3.6 + 0.2 - 1.55) * 0.2 + 1.1 * 3.0, abs=0.01)


def test_residents_reports_by_hand(day):
    r = day["reports"]
    assert r["resident_requests_filed"] == 2
    assert r["by_service"] == {"lamp_out": 1, "too_dark": 1}
    assert r["by_verdict"] == {"confirmed": 1, "device_normal": 1}
    assert r["device_requests_opened"] == 1
    assert r["resident_requests_resolved"] == 2
    assert r["resolve_hours_median"] == pytest.approx(7.5) and r["resolve_hours_max"] == pytest.approx(12.0)
    assert r["resident_requests_open_at_end"] == 1


def test_presence_per_street_and_hour_withheld_below_the_minimum(day):
    pres = {(p["street"], p["hour"]): p["count"] for p in day["presence"]["by_street_hour"]}
    assert pres == {("Rue A", 2): None, ("Rue A", 12): 10}  # 3 alone is withheld; 4 + 6 published
    assert day["presence"]["min_count"] == 5


def test_a_restart_is_not_a_repair():
    ev = [
        event("00000001", D0 + 1 * H, "lamp_failure", 1),
        Reading("00000001", "hello", D0 + 2 * H, {"firmware": "1", "kind": "lighting"}),
        event("00000001", D0 + 2 * H + 60, "lamp_failure", 1),
        event("00000001", D0 + 5 * H, "lamp_failure", 0),
        event("00000002", D0 + 1 * H, "leak", 1),
        Reading("00000002", "status", D0 + 3 * H, {"open_alarms": 0}),
        event("00000003", D0 + 1 * H, "burst", 1),
    ]
    got = alarm_intervals(ev, D1)
    assert got["00000001"] == [("lamp_failure", D0 + 1 * H, D0 + 5 * H)]
    assert got["00000002"] == [("leak", D0 + 1 * H, D0 + 3 * H)]  # a status with no open alarm clears it
    assert got["00000003"] == [("burst", D0 + 1 * H, None)]


def test_dusk_and_dawn_in_paris_at_midsummer():
    # published (timeanddate.com, Paris, 2026-06-21): sunrise 05:46, sunset 21:58 CEST
    lo = datetime(2026, 6, 21, 0, 0, tzinfo=UTC).timestamp()
    ivs = dark_intervals(48.8566, 2.3522, lo, lo + 24 * H)
    assert len(ivs) == 2 and ivs[0][0] == lo and ivs[1][1] == lo + 24 * H
    rise = datetime(2026, 6, 21, 3, 46, tzinfo=UTC).timestamp()
    sset = datetime(2026, 6, 21, 19, 58, tzinfo=UTC).timestamp()
    assert abs(ivs[0][1] - rise) < 120 and abs(ivs[1][0] - sset) < 120


def test_polar_day_has_no_baseline():
    lo = datetime(2026, 6, 21, tzinfo=UTC).timestamp()
    assert dark_intervals(89.0, 0.0, lo, lo + 24 * H) == []


def test_a_day_is_local_and_a_clock_change_day_has_25_hours():
    s = Settings(timezone="Europe/Paris")
    a, b = day_bounds(date(2026, 10, 25), s.tz)
    assert b - a == 25 * H and a == datetime(2026, 10, 24, 22, tzinfo=UTC).timestamp()


def test_no_declared_power_no_baseline_and_said_so():
    facts = {"00000001": Facts()}
    d = compute_day(DAY, NODES[:1], facts, READINGS, [], S).to_dict(S)
    assert d["city"]["lamps_without_baseline"] == 1 and d["city"]["energy_baseline_kwh"] == 0
    assert d["city"]["energy_kwh"] == pytest.approx(1.0)


def test_node_facts_are_checked_and_named():
    f = parse_facts("nodes[0]", {"baseline": {"mm_per_day": 5, "area_m2": 200}}, "irrigation")
    assert f is not None and f.baseline_l_day == 1000.0  # 1 mm on 1 m2 is 1 L
    f = parse_facts("nodes[0]", {"baseline": {"l_per_day": 960, "start": "05:00", "minutes": 80}}, "irrigation")
    assert f is not None and (f.baseline_start_min, f.baseline_minutes) == (300, 80)
    assert parse_facts("nodes[0]", {"name": "x"}, "lighting") is None
    bad = [
        ({"rated_power_w": -1}, "lighting", "rated_power_w"),
        ({"rated_power_w": True}, "lighting", "rated_power_w"),
        ({"rated_power_w": 60}, "irrigation", "only a lighting node"),
        ({"baseline": {"l_per_day": 1}}, "lighting", "only an irrigation node"),
        ({"baseline": {"mm_per_day": 5}}, "irrigation", "mm_per_day and area_m2"),
        ({"baseline": {"l_per_day": 1, "area_m2": 3}}, "irrigation", "not both"),
        ({"baseline": {"l_per_day": 1, "start": "5:00", "minutes": 3}}, "irrigation", "HH:MM"),
        ({"baseline": {"l_per_day": 1, "start": "25:00", "minutes": 3}}, "irrigation", "HH:MM"),
        ({"baseline": {"l_per_day": 1, "start": "05:00"}}, "irrigation", "go together"),
        ({"baseline": {"l_per_day": 1, "every": 2}}, "irrigation", "unknown key 'every'"),
        ({"baseline": [1]}, "irrigation", "an object"),
        ({"district": "a\nb"}, "lighting", "district"),
        ({"stress_vwc_pct": 120}, "irrigation", "stress_vwc_pct"),
    ]
    for d, kind, msg in bad:
        with pytest.raises(ValueError, match=msg):
            parse_facts("nodes[3]", d, kind)


def test_settings_are_checked_and_named():
    s = settings_from({"eur_per_kwh": 0.25, "presence_min_count": 10, "timezone": "UTC"})
    assert (s.eur_per_kwh, s.presence_min_count, s.timezone) == (0.25, 10, "UTC")
    for table, msg in (
        ({"eur_per_kwh": -1}, "eur_per_kwh"),
        ({"eur_per_kwh": "cheap"}, "eur_per_kwh"),
        ({"presence_min_count": 0}, "presence_min_count"),
        ({"timezone": "Mars/Olympus"}, "IANA"),
        ({"tarif": 1}, "unknown key"),
    ):
        with pytest.raises(ValueError, match=msg):
            settings_from(table, "ledger.toml")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["district", "rated_power_w", "baseline", "stress_vwc_pct", "name"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
            max_leaves=8,
        ),
    ),
    st.sampled_from(["lighting", "irrigation", "bridge"]),
)
def test_fuzz_node_facts_are_facts_or_a_named_error(d, kind):
    try:
        f = parse_facts("nodes[7]", d, kind)
    except ValueError as e:
        assert str(e).startswith("nodes[7]")
        return
    if f is not None:
        for v in (f.rated_power_w, f.baseline_l_day, f.stress_vwc_pct):
            assert v is None or (isinstance(v, float) and math.isfinite(v) and v >= 0)
