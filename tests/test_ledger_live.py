"""The ledger as `lumeau sink` computes it from its records agrees with the simulator's truth (a live run).

A small district (8 lamps on two streets, one irrigation controller with
four zones, 24 h from noon, a lamp failure and a leak) runs live: real
firmware on a virtual clock, a real `lumeau gateway` process and a real
`lumeau sink` (simulator/live.py). Then a `lumeau sink` is started again on
the run's database, told the lamps' rated powers and the controller's
schedule (simulator/city_facts.py), and its /ledger/daily.json for each
local day of the run is summed and set against the simulator's results
(simulator/demo_ledger.py, as `lumeau demo` does).

Tolerances, and why:
- energy used within 2 % of the world's truth (`energy.total_kwh`): the
  ledger reads each lamp's own energy counter, whole Wh (up to 1 Wh short
  per lamp and per counter reset), measured by the lamp from its current
  rather than the world's exact power, and it cannot see use before a
  lamp's first report or after its last (15-minute reports; the run starts
  and ends at noon, when lamps are off);
- water used within 5 % of the truth through the meters (`water.total_m3`,
  leaks included): whole litres per controller, and the meter's flow is
  read in pulses; water before the first report or after the last is not
  seen;
- baselines within 1 %: the lighting one is the same rated power over the
  same nights computed by another sun algorithm (USNO's, within about a
  minute of the simulator's NOAA dusk and dawn), the watering one the same
  schedule declared as litres a day in its window.
"""

from __future__ import annotations

import pytest

BASELINE_TOL = 0.01

SCENARIO = """
[scenario]
name = "ledger-check"
description = "8 lamps, 1 irrigation controller, 24 h, a lamp failure and a leak"
seed = 7
start = 2026-06-15T12:00:00Z
duration = "24h"

[location]
name = "Lyon"
lat = 45.7578
lon = 4.8320
timezone = "Europe/Paris"
climate = "lyon"

[weather]
random_rain = true
dry_days = [2026-06-14, 2026-06-15, 2026-06-16]

[radio]
channels_mhz = [868.1, 868.3, 868.5]
sf = "auto"
sf_margin_db = 10.0
path_loss = "log_distance"
shadowing_sigma_db = 3.57

[[gateways]]
id = "gw-west"
x = -60.0
y = 0.0
height_m = 20.0

[[gateways]]
id = "gw-east"
x = 60.0
y = 0.0
height_m = 20.0

[lighting]
rated_power_w = 60.0
height_m = 8.0
report_interval = "15m"
pedestrians_peak_per_h = 90

[[streets]]
id = "quai"
name = "Quai du Rhone"
points = [[-100, 40], [100, 40]]
lamps = 5

[[streets]]
id = "republique"
name = "Rue de la Republique"
points = [[-100, -40], [100, -40]]
lamps = 3
rated_power_w = 90.0

[irrigation]
zones_per_controller = 4
report_interval = "15m"
precip_rate_mm_h = 12.0
soil = "loam"
crop = "turf_cool"
schedule_start = "05:00"
schedule_minutes = 20
schedule_every_days = 1

[[parks]]
id = "jacobins"
name = "Square des Jacobins"
polygon = [[-60, -20], [60, -20], [60, 20], [-60, 20]]
controllers = 1
irrigated_fraction = 0.3

[[faults]]
kind = "lamp_failure"
target = "quai-02"
after = "9h"

[[faults]]
kind = "leak"
target = "jacobins-1"
after = "17h"
duration = "1h"
rate_l_min = 3.0

[output]
dir = "out"
html = false
plots = false
json = false
progress = false
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from simulator.live import LiveGateway
    from simulator.runner import RunOptions
    from simulator.runner import run as sim_run
    from simulator.scenario import load

    d = tmp_path_factory.mktemp("ledger-live")
    (d / "scenario.toml").write_text(SCENARIO)
    sc = load(d / "scenario.toml")
    out = d / "out"
    link = LiveGateway(out, speed=None)
    results = sim_run(sc, RunOptions(link=lambda: link)).to_dict()
    assert link.exit_codes == {"gateway": 0, "sink": 0}
    return sc, out, results


def test_the_sinks_ledger_agrees_with_the_simulators_truth(run):
    from simulator.demo_ledger import ENERGY_TOL, WATER_TOL, agreement, platform_ledger

    sc, out, results = run
    led = platform_ledger(sc, out)
    assert led["sink_exit"] == 0 and led["timezone"] == "Europe/Paris"
    assert [d["date"] for d in led["days"]] == ["2026-06-15", "2026-06-16"]  # noon to noon, local days
    t = led["totals"]
    en, wa = results["energy"], results["water"]
    agree = agreement(led, results)
    figures = (
        f"energy {t['energy_kwh']:.4f} kWh (truth {en['total_kwh']:.4f}, {agree['energy_kwh']['diff_pct']:+.3f} %), "
        f"baseline {t['energy_baseline_kwh']:.4f} (simulator {en['total_baseline_kwh']:.4f}); "
        f"water {t['water_m3']:.4f} m3 (truth {wa['total_m3']:.4f}, {agree['water_m3']['diff_pct']:+.3f} %), "
        f"baseline {t['water_baseline_m3']:.4f} (simulator {wa['total_baseline_m3']:.4f})"
    )
    print(figures)
    assert (ENERGY_TOL, WATER_TOL) == (0.02, 0.05)
    assert en["total_kwh"] > 2 and wa["total_m3"] > 1  # the run lit and watered: the comparison means something
    assert t["energy_kwh"] == pytest.approx(en["total_kwh"], rel=ENERGY_TOL), figures
    assert t["water_m3"] == pytest.approx(wa["total_m3"], rel=WATER_TOL), figures
    assert agree["agree"] and agree["energy_kwh"]["agree"] and agree["water_m3"]["agree"]
    assert t["energy_baseline_kwh"] == pytest.approx(en["total_baseline_kwh"], rel=BASELINE_TOL), figures
    assert t["water_baseline_m3"] == pytest.approx(wa["total_baseline_m3"], rel=BASELINE_TOL), figures
    # what was lost shows too: the failed lamp's dark hours; the leak's water is in the meter's total
    assert t["dark_lamp_hours"] > 1
    assert all(d["city"]["lamps"] == len(sc.lamps) and d["city"]["irrigation_controllers"] == 1 for d in led["days"])


def test_agreement_says_disagree_beyond_the_tolerance():
    from simulator.demo_ledger import agreement

    led = {"totals": {"energy_kwh": 10.3, "water_m3": 1.0}}
    got = agreement(led, {"energy": {"total_kwh": 10.0}, "water": {"total_m3": 1.04}})
    assert not got["energy_kwh"]["agree"] and got["energy_kwh"]["diff_pct"] == pytest.approx(3.0)
    assert got["water_m3"]["agree"] and not got["agree"]
