"""Issue 18: the control's saving apart from what faults did, and the soil's start state.

A small Seville park (one controller, four zones, four lamps, 24 h of August) runs in about
two seconds; each figure is checked against another figure of the same runs.
"""

from __future__ import annotations

import pytest

from simulator.runner import RunOptions, run
from simulator.scenario import ScenarioError, loads

SEVILLE = """
[scenario]
name = "seville-small"
seed = 7
start = 2026-08-10T12:00:00Z
duration = "24h"

[location]
lat = 37.3886
lon = -5.9823
timezone = "Europe/Madrid"
climate = "seville"

[weather]
dry_days = [2026-08-10, 2026-08-11]

[[gateways]]
id = "gw"
x = 0.0
y = 0.0

[[streets]]
id = "feria"
points = [[-60, 20], [60, 20]]
lamps = 4

[irrigation]
schedule_start = "05:00"
schedule_minutes = 20
{irrigation}

[[parks]]
id = "maria"
polygon = [[-50, -60], [50, -60], [50, -10], [-50, -10]]
controllers = 1
"""

# 05:00 in Seville in August is 03:00 UTC: 15 h after the start, so these show that morning
BURST = """
[[faults]]
kind = "burst"
target = "maria-1"
after = "14h"
zone = 1
"""
DEAD_LAMP = """
[[faults]]
kind = "lamp_failure"
target = "feria-02"
after = "8h"
"""


def scenario(extra: str = "", irrigation: str = "") -> str:
    return SEVILLE.replace("{irrigation}", irrigation) + extra


@pytest.fixture(scope="module")
def clean():
    return run(loads(scenario(), "seville.toml"), RunOptions(progress=False))


@pytest.fixture(scope="module")
def faulty():
    return run(loads(scenario(BURST + DEAD_LAMP), "seville-faults.toml"), RunOptions(progress=False))


def test_without_faults_the_headline_is_the_plain_control_saving(clean):
    en, wa = clean["energy"], clean["water"]
    assert en["coverage"] == wa["coverage"] == 1.0
    assert en["kwh"] == en["total_kwh"] and en["baseline_kwh"] == en["total_baseline_kwh"]
    assert en["saved_kwh"] == pytest.approx(en["baseline_kwh"] - en["kwh"]) == en["gross_saved_kwh"]
    assert en["saved_pct"] == pytest.approx(en["gross_saved_pct"]) and 0 < en["saved_pct"] < 100
    assert wa["m3"] == pytest.approx(wa["total_m3"]) and wa["baseline_m3"] == wa["total_baseline_m3"] > 0
    assert wa["saved_pct"] == pytest.approx(wa["gross_saved_pct"])
    assert en["faults"]["dark_lamp_hours"] == 0 and en["faults"]["lamps_affected"] == 0
    assert wa["faults"]["zones_affected"] == 0 and wa["faults"]["not_delivered_m3"] == 0
    assert wa["lost_m3"] == pytest.approx(0.0, abs=1e-9)


def test_a_burst_pipe_and_a_dead_lamp_are_value_destroyed_not_savings(clean, faulty):
    en0, wa0, en, wa = clean["energy"], clean["water"], faulty["energy"], faulty["water"]
    assert faulty["alarms"]["detected"] == faulty["alarms"]["expected"] == 2
    # the latch kept three zones dry: the gross figure jumps, the control's does not
    assert wa["gross_saved_pct"] > wa0["gross_saved_pct"] + 50
    assert wa["saved_pct"] <= wa0["saved_pct"] + 1e-9
    f = wa["faults"]
    assert f["zones_affected"] == 4 and 0 < wa["coverage"] < 1
    assert f["lost_m3"] > 0 and f["lost_m3"] == pytest.approx(wa["total_m3"] - wa["applied_m3"])
    # what the schedule would have given the latched zones and they did not get: nearly all of it
    assert f["not_delivered_m3"] == pytest.approx(f["baseline_m3_while_affected"] - f["applied_m3_while_affected"])
    assert f["not_delivered_m3"] > 0.9 * wa0["baseline_m3"]
    # the dead lamp: dark for the rest of the night, the energy it did not draw is not a saving
    ef = en["faults"]
    assert ef["lamps_affected"] == 1 and ef["dark_lamp_hours"] > 5 and ef["not_drawn_kwh"] > 0
    assert ef["excluded_kwh"] == 0.0  # an open lamp draws nothing
    assert en["gross_saved_pct"] > en0["saved_pct"] + 10
    assert en["saved_pct"] == pytest.approx(en0["saved_pct"], abs=2.0)  # the same control, fewer lamp-nights
    assert en["kwh"] + ef["excluded_kwh"] == pytest.approx(en["total_kwh"])
    assert en["baseline_kwh"] + ef["excluded_baseline_kwh"] == pytest.approx(en["total_baseline_kwh"])
    # and the text says so
    text = faulty.summary()
    assert "value destroyed by faults" in text and f"{en['saved_kwh']:.1f} kWh saved by the control" in text


def test_each_day_carries_its_physics_and_soil(clean):
    days = clean["days"]
    assert [d["date"] for d in days] == ["2026-08-10", "2026-08-11"]
    assert sum(d["hours_in_run"] for d in days) == pytest.approx(24.0)
    for d in days:
        assert d["et0_mm"] > 3 and d["rain_mm"] == 0 and d["tmax_c"] > d["tmin_c"]
        assert 8 < d["night_h"] < 12  # an August night in Seville
    assert days[0]["soil_start"] == pytest.approx(0.8)  # the default: half of RAW depleted (p 0.4)
    assert days[0]["soil_end"] == days[1]["soil_start"]


def test_soil_start_is_a_scenario_setting_the_world_and_baseline_share():
    # at 30 % of the available water cool-season turf (p 0.40) starts stressed
    dry = run(loads(scenario(irrigation="soil_start = 0.3"), "dry.toml"), RunOptions(hours=6, progress=False))
    d0 = dry["days"][0]
    assert d0["soil_start"] == pytest.approx(0.3) and d0["stress_zone_hours"] > 0
    wa = dry["water"]
    assert wa["stress_zone_hours"] == pytest.approx(wa["baseline_stress_zone_hours"], rel=0.05)
    sc = loads(scenario(irrigation="soil_start = 1.0"), "wet.toml")
    assert {z.soil_start for c in sc.controllers for z in c.zones} == {1.0}
    assert sc.controllers[0].zones[0].bucket().dr_mm == 0.0
    with pytest.raises(ScenarioError) as e:
        loads(scenario(irrigation="soil_start = 1.5"), "bad.toml")
    assert "irrigation.soil_start" in str(e.value) and "0..1" in str(e.value)
