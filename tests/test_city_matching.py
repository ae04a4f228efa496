"""city/matching.py and city/catalogue.py without I/O: distances, matching, verdicts, alarm changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from open311_helpers import NODES

from city import catalogue, matching
from city.matching import Alarm, Bounds, NodeInfo

CITY = [NodeInfo(n["id"], n["kind"], n["name"], n["site"], n["lat"], n["lon"]) for n in NODES]
LAMP_OUT = catalogue.BY_CODE["lamp_out"]


def test_distance_against_a_known_figure():
    # Paris Notre-Dame to the Eiffel Tower: about 4.2 km (great circle)
    d = matching.distance_m(48.8530, 2.3499, 48.8584, 2.2945)
    assert 4_000 < d < 4_200


@given(
    st.floats(-80, 80),
    st.floats(-179, 179),
    st.floats(-80, 80),
    st.floats(-179, 179),
)
def test_distance_is_symmetric_and_not_negative(a, b, c, d):
    x, y = matching.distance_m(a, b, c, d), matching.distance_m(c, d, a, b)
    assert x >= 0 and x == pytest.approx(y, abs=1e-6)


def test_match_by_position_kind_and_radius():
    a = CITY[0]
    got = matching.match(CITY, "lighting", lat=a.lat, lon=a.lon, radius_m=60)
    assert [m.node.id for m in got] == ["00a1b2c3", "00a1b2c4"]  # the next lamp is 43 m off, the third 86 m
    assert got[0].distance_m == pytest.approx(0, abs=0.01) and 40 < got[1].distance_m < 46
    assert matching.match(CITY, "irrigation", lat=a.lat, lon=a.lon) == []
    assert matching.match(CITY, None, lat=a.lat, lon=a.lon) == []
    assert len(matching.match(CITY, "lighting", lat=a.lat, lon=a.lon, radius_m=100)) == 3


def test_match_by_address_id_then_name_then_site():
    by_id = matching.match(CITY, "lighting", address_id="0xA1B2C4")
    assert [m.node.id for m in by_id] == ["00a1b2c4"] and by_id[0].distance_m is None
    by_name = matching.match(CITY, "lighting", address="16, Rue de Rivoli (Paris)")
    assert [m.node.id for m in by_name] == ["00a1b2c5"]
    by_site = matching.match(CITY, "lighting", address="rue de RIVOLI")
    assert [m.node.id for m in by_site] == ["00a1b2c3", "00a1b2c4", "00a1b2c5"]
    accents = [NodeInfo("00000001", "irrigation", "Square Édouard-VII", "Square Édouard-VII", None, None)]
    assert len(matching.match(accents, "irrigation", address="square edouard vii")) == 1
    assert matching.match(CITY, "lighting", address="Boulevard Haussmann") == []


def test_verdicts():
    near = matching.match(CITY, "lighting", lat=CITY[0].lat, lon=CITY[0].lon)  # lamps A and B
    j = matching.judge(LAMP_OUT, near, [Alarm("00a1b2c3", "lamp_failure")])
    assert j.verdict == matching.CONFIRMED and j.alarms == (Alarm("00a1b2c3", "lamp_failure"),)
    assert "lamp failure at node 00a1b2c3" in j.note()
    # an alarm the service does not list, or on a node that did not match, confirms nothing
    j = matching.judge(LAMP_OUT, near, [Alarm("00a1b2c3", "low_supply"), Alarm("00a1b2c5", "lamp_failure")])
    assert j.verdict == matching.DEVICE_NORMAL and "field check" in j.note()
    j = matching.judge(LAMP_OUT, [], [Alarm("00a1b2c3", "lamp_failure")])
    assert j.verdict == matching.NO_DEVICE and "No monitored device" in j.note()


def test_every_alarm_a_node_can_raise_has_a_service():
    from protocol import expand
    from protocol import messages as m

    names = set(expand.ENUMS[(m.EVENT, 0)].values()) - matching.ONE_SHOT - matching.INFO_ONLY
    assert names == set(catalogue.ALARM_SERVICE)
    assert set(catalogue.ALARM_SERVICE.values()) <= set(catalogue.BY_CODE)
    for svc in catalogue.SERVICES:
        assert svc.alarms <= names, svc.code


def test_alarm_changes_from_records():
    ev = {"node": "00a1b2c3", "type": "event", "fields": {"code": "leak", "severity": "alarm", "active": 1, "zone": 2}}
    assert matching.alarm_change(ev, 5.0) == matching.AlarmChange("raise", "00a1b2c3", "leak", 2, 5.0)
    ev["fields"]["active"] = 0
    assert matching.alarm_change(ev, 6.0).op == "clear"
    warn = {"node": "00a1b2c3", "type": "event", "fields": {"code": "leak", "severity": "warning", "active": 1}}
    assert matching.alarm_change(warn, 1.0) is None
    once = {"node": "00a1b2c3", "type": "event", "fields": {"code": "watchdog_reset", "severity": "alarm"}}
    assert matching.alarm_change(once, 1.0) is None
    unknown = {"node": "00a1b2c3", "type": "event", "fields": {"code": 999, "severity": "critical", "active": 1}}
    assert matching.alarm_change(unknown, 1.0) is None
    st0 = {"node": "00a1b2c3", "type": "status", "fields": {"open_alarms": 0}}
    assert matching.alarm_change(st0, 1.0).op == "clear_all"
    assert matching.alarm_change({**st0, "fields": {"open_alarms": 2}}, 1.0) is None
    assert matching.alarm_change({"node": "00a1b2c3", "type": "hello", "fields": {}}, 1.0).op == "forget_all"
    assert matching.alarm_change({"node": 5, "type": "hello", "fields": {}}, 1.0) is None


def test_bounds():
    box = matching.bounds_of(CITY)
    assert box is not None
    assert box.contains(48.8606, 2.3376) and box.contains(48.8796 + 0.008, 2.3088)  # within 1 km of a node
    assert not box.contains(48.8796 + 0.02, 2.3088) and not box.contains(45.76, 4.83)
    assert matching.bounds_of([NodeInfo("00000001", "lighting")]) is None
    assert Bounds.parse("48.8,2.2,48.9,2.4") == Bounds(48.8, 2.2, 48.9, 2.4)
    for bad in ("1,2,3", "48.9,2.2,48.8,2.4", "a,b,c,d"):
        with pytest.raises(ValueError):
            Bounds.parse(bad)


@settings(max_examples=300)
@given(st.floats(-60, 65), st.floats(-180, 180), st.floats(946_684_800, 2_524_608_000))  # 2000..2050
def test_sun_elevation_agrees_with_the_simulators_sun(lat, lon, t):
    from simulator import sun

    geometric = sun.position(lat, lon, t).elevation_deg  # the simulator's NOAA equations, independent of ours
    assert matching.sun_elevation_deg(lat, lon, t) == pytest.approx(geometric, abs=0.2)


def test_lit_in_daylight():
    a = CITY[0]
    noon = 1_795_003_200.0 + 3600 * 3  # 2026-11-18 12:20 UTC: the sun about 21 degrees up over Paris
    night = noon + 10 * 3600
    lit = {"type": "light", "fields": {"level": 80, "state": ["on"]}}
    ev = matching.lit_in_daylight(lit, noon, a)
    assert ev is not None and "80 %" in ev and a.id in ev
    assert matching.lit_in_daylight(lit, night, a) is None
    assert matching.lit_in_daylight({"fields": {"level": 0, "state": ["on"]}}, noon, a) is None
    assert matching.lit_in_daylight({"fields": {"level": 80, "state": []}}, noon, a) is None
    assert matching.lit_in_daylight(lit, noon, NodeInfo("00000009", "lighting")) is None  # no position
    j = matching.judge(
        catalogue.BY_CODE["lamp_on_by_day"], matching.match(CITY, "lighting", lat=a.lat, lon=a.lon), [], [ev]
    )
    assert j.verdict == matching.CONFIRMED and j.alarms == () and "sun" in j.note()
