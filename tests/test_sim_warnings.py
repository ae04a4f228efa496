"""Issue 18 items 5, 6 and 3: warnings in every run (--strict), a report that tells the truth, seeds and spreads.

Small scenarios (a few lamps, one controller) that run in a second or two each.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT

from simulator.metrics import spread_section
from simulator.report import front_ends, render_html, write_report
from simulator.report_plots import daily_from_series, make_plots
from simulator.run_warnings import MIN_IRRIGATION_DAYS, scenario_warnings
from simulator.runner import RunOptions, run
from simulator.scenario import loads

SMALL = """
[scenario]
name = "small"
seed = 3
start = {start}
duration = "{duration}"

[location]
lat = 45.76
lon = 4.84
timezone = "Europe/Paris"

[radio]
path_loss = "{path_loss}"

[[gateways]]
id = "gw"
x = {gw_x}
y = 0.0

[[streets]]
id = "rue"
points = [[-60, 20], [60, 20]]
lamps = 3

[irrigation]
soil_start = 0.3

[[parks]]
id = "parc"
polygon = [[-50, -60], [50, -60], [50, -10], [-50, -10]]
controllers = 1
{extra}
"""


def small(
    duration: str = "24h",
    gw_x: float = 0.0,
    extra: str = "",
    start: str = "2026-06-15T12:00:00Z",
    path_loss: str = "log_distance",
) -> str:
    return SMALL.format(duration=duration, gw_x=gw_x, extra=extra, start=start, path_loss=path_loss)


def codes(ws: list[dict[str, str]]) -> set[str]:
    return {w["code"] for w in ws}


def lumeau(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=180, cwd=cwd)


# ---------------------------------------------------------------- item 5: warnings


def test_a_sound_scenario_of_days_has_no_warning():
    assert scenario_warnings(loads(small(duration="4d"))) == []


def test_each_warning_names_what_the_models_cannot_answer_for():
    text = """
[scenario]
start = 2090-06-15T12:00:00Z
duration = "30m"

[location]
lat = 45.76
lon = 4.84

[[gateways]]
id = "gw"
x = 0.0
y = 0.0

[[streets]]
id = "tiny"
points = [[-1, 0], [1, 0]]
lamps = 1

[[streets]]
id = "far"
points = [[30000, 0], [30100, 0]]
lamps = 2

[[parks]]
id = "pocket"
polygon = [[10, 10], [12, 10], [12, 12], [10, 12]]
controllers = 1

[[faults]]
kind = "leak"
target = "pocket-1"
after = "10m"
rate_l_min = 0.2
"""
    ws = scenario_warnings(loads(text))
    by = {w["code"]: w["text"] for w in ws}
    assert set(by) == {
        "no_sf_margin",
        "flow_below_meter",
        "leak_below_meter",
        "gateway_on_node",
        "far_from_origin",
        "dates_outside_climate",
        "short_irrigation",
        "short_airtime",
    }
    assert "far-01, far-02" in by["no_sf_margin"] and "SF12" in by["no_sf_margin"]
    assert "pocket-1 zone 1" in by["flow_below_meter"] and "0.5 L/min" in by["flow_below_meter"]
    assert "tiny-01" in by["gateway_on_node"]
    assert "far-01" in by["far_from_origin"] and "tiny-01" not in by["far_from_origin"]
    assert "2090" in by["dates_outside_climate"] and "1991-2020" in by["dates_outside_climate"]
    assert "0.2 L/min" in by["leak_below_meter"]


def test_a_fixed_sf_short_of_margin_is_warned_too():
    sc = loads(small(duration="4d", gw_x=600.0, extra="").replace('path_loss = "log_distance"', "sf = 7"))
    w = [w for w in scenario_warnings(sc) if w["code"] == "no_sf_margin"]
    assert w and "SF7 (the scenario's) does not reach" in w[0]["text"]


def test_short_irrigation_run_warns_with_the_threshold():
    hours = MIN_IRRIGATION_DAYS * 24
    assert "short_irrigation" in codes(scenario_warnings(loads(small(duration=f"{hours - 1:g}h"))))
    assert "short_irrigation" not in codes(scenario_warnings(loads(small(duration=f"{hours:g}h"))))


def test_strict_refuses_a_scenario_with_warnings_and_the_results_carry_them(tmp_path):
    sc = tmp_path / "short.toml"
    sc.write_text(small(duration="30m"))
    strict = lumeau("sim", "run", str(sc), "--strict", "--no-progress")
    assert strict.returncode == 2 and strict.stdout == ""
    assert "[short_irrigation] (--strict)" in strict.stderr and "[short_airtime]" in strict.stderr
    loose = lumeau("sim", "run", str(sc), "--json", "--no-progress")
    assert loose.returncode == 0, loose.stderr
    doc = json.loads(loose.stdout)
    assert codes(doc["warnings"]) == {"short_irrigation", "short_airtime"}
    assert doc["airtime"]["under_an_hour"] is True
    summary = lumeau("sim", "run", str(sc), "--no-progress").stdout
    assert "[short_airtime]" in summary and "not the duty cycle's hourly measure" in summary
    checked = subprocess.run(
        [sys.executable, "-m", "simulator.scenario", "--strict", str(sc)], capture_output=True, text=True, cwd=ROOT
    )
    assert checked.returncode == 2 and "[short_irrigation]" in checked.stdout


# ---------------------------------------------------------------- item 6: the truth


def test_totals_do_not_agree_when_the_platform_never_heard_what_flowed():
    res = run(loads(small(gw_x=9000.0)), RunOptions(progress=False)).to_dict()
    to = res["totals"]
    assert to["energy_wh"]["platform"] == to["energy_wh"]["nodes"] == 0  # the old check alone: "0 = 0"
    tr = to["truth"]
    assert tr["water_l"]["truth"] > 1000 and tr["energy_wh"]["truth"] > 100
    assert tr["platform_share_water"] == 0.0 and not tr["platform_covers_truth"]
    assert {o["node"] for o in tr["not_heard"]} == {"rue-01", "rue-02", "rue-03", "parc-1"}
    assert to["agree"] is False
    assert "no_sf_margin" in codes(res["warnings"])


def test_totals_agree_with_the_true_meters_in_range():
    res = run(loads(small()), RunOptions(progress=False)).to_dict()
    to = res["totals"]
    tr = to["truth"]
    assert to["agree"] and tr["platform_covers_truth"] and tr["meters_agree"]
    assert tr["water_l"]["nodes_meters"] == pytest.approx(tr["water_l"]["truth"], abs=1.0)
    assert tr["energy_wh"]["nodes_meters"] == pytest.approx(tr["energy_wh"]["truth"], rel=0.01)
    assert 0.9 <= tr["platform_share_energy"] <= 1.0 and tr["water_l"]["truth"] > 0


def test_the_report_names_the_path_loss_model_and_the_front_ends_of_the_run():
    hata = run(loads(small(duration="2h", path_loss="hata")), RunOptions(progress=False)).to_dict()
    assert hata["scenario"]["path_loss"] == {"model": "hata", "freq_mhz": 868.0}
    page = render_html(hata, make_plots(hata))
    assert "Okumura-Hata" in page and "log-distance path loss" not in page
    assert "shorter than an hour" not in page
    # a live run with one site had a bridge board and no packet forwarder
    live = json.loads(json.dumps(hata))
    live["run"]["link"] = "live"
    assert front_ends(live) == "gw: a radio bridge board on a pseudo-terminal"
    live["gateway"]["live_fronts"] = {"gw": {"kind": "udp"}}
    assert front_ends(live) == "gw: a Semtech UDP packet forwarder"
    page = render_html(live, make_plots(live))
    assert "Semtech UDP packet forwarder" in page and "radio bridge" not in page


def test_sub_hour_airtime_is_flagged_in_the_report(tmp_path):
    res = run(loads(small(duration="30m")), RunOptions(progress=False)).to_dict()
    page = (write_report(res, tmp_path)).read_text()
    assert "shorter than an hour" in page and "short_airtime" in page


def test_output_table_is_honoured_by_sim_run(tmp_path):
    out = tmp_path / "reports"
    sc = tmp_path / "o.toml"
    sc.write_text(
        small(duration="2h") + f'\n[output]\ndir = "{out}"\nhtml = true\nplots = false\njson = true\nprogress = false\n'
    )
    r = lumeau("sim", "run", str(sc), "--report")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # json = true: as --json
    assert doc["scenario"]["name"] == "small"
    assert (out / "report.html").exists() and json.loads((out / "results.json").read_text())["scenario"]["seed"] == 3
    assert not list((out / "plots").glob("*.png"))  # plots = false: inside the HTML only
    assert "\r" not in r.stderr  # progress = false: no bar


def test_demo_help_offers_progress_and_strict():
    h = lumeau("demo", "--help")
    assert h.returncode == 0 and "--progress" in h.stdout and "--strict" in h.stdout
    assert "[output] dir" in " ".join(h.stdout.split())


# ---------------------------------------------------------------- item 3: days, seeds and spreads


def test_seeds_report_mean_and_spread_of_each_saving(tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text(small(duration="24h"))
    r = lumeau("sim", "run", str(sc), "--seeds", "3", "--seed", "10", "--json", "--no-wall-clock", "--no-progress")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    sp = doc["spread"]
    assert sp["seeds"] == [10, 11, 12] and doc["scenario"]["seed"] == 10
    e = sp["figures"]["energy.saved_pct"]
    assert e["values"][0] == doc["energy"]["saved_pct"]
    assert e["min"] <= e["mean"] <= e["max"] and len(set(e["values"])) > 1  # another seed, another night's people
    mean = sum(e["values"]) / 3
    assert e["mean"] == pytest.approx(mean)
    assert e["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in e["values"]) / 2))
    assert "water.saved_pct" in sp["figures"]
    # the second seed's figure is that seed's own run
    one = lumeau("sim", "run", str(sc), "--seed", "11", "--json", "--no-progress")
    assert json.loads(one.stdout)["energy"]["saved_pct"] == e["values"][1]
    bad = lumeau("sim", "run", str(sc), "--seeds", "0")
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def test_spread_of_one_run_has_no_deviation():
    sp = spread_section([{"scenario": {"seed": 1}, "energy": {"saved_pct": 20.0}}])
    assert sp["figures"]["energy.saved_pct"]["std"] == 0.0 and list(sp["figures"]) == ["energy.saved_pct"]


def test_a_run_of_days_reports_daily_series(tmp_path):
    res = run(loads(small(duration="4d")), RunOptions(progress=False)).to_dict()
    energy = daily_from_series(res["series"], "energy_wh")
    water = daily_from_series(res["series"], "water_l")
    assert len(energy) == len(water) == 4
    assert sum(energy) == pytest.approx(res["series"]["energy_wh"][-1])
    assert sum(water) / 1000 == pytest.approx(res["water"]["total_m3"], rel=1e-3)
    assert all(e > 0 for e in energy)  # every night lit
    assert len(res["days"]) >= 4 and res["warnings"] == []
    page = write_report(res, tmp_path).read_text()
    assert "Day by day" in page and (tmp_path / "plots" / "days.png").read_bytes()[:4] == b"\x89PNG"


def test_the_meter_floor_follows_the_firmware_config():
    park = """
[scenario]
start = 2026-06-15T12:00:00Z
duration = "4d"

[location]
lat = 45.76
lon = 4.84

[[gateways]]
id = "gw"
x = 0.0
y = 0.0

[[parks]]
id = "pocket"
polygon = [[10, 10], [12, 10], [12, 12], [10, 12]]
controllers = 1
"""
    # 4 m2 x 0.6 irrigated / 4 zones x 12 mm/h = 0.12 L/min a zone
    assert codes(scenario_warnings(loads(park))) == {"flow_below_meter"}
    finer = park + "\n[irrigation.firmware.irrigation]\nleak_dlpm = 1\n"
    assert scenario_warnings(loads(finer)) == []


def test_a_results_file_without_wall_clock_still_makes_a_report(tmp_path):
    res = run(loads(small(duration="2h")), RunOptions(progress=False)).without_wall_clock()
    assert "run" not in res
    page = write_report(res, tmp_path).read_text()
    assert "Lumeau simulation: small" in page and "s of wall time" not in page


def test_seeds_with_a_workdir_keep_one_gateway_database_per_seed(tmp_path):
    sc = tmp_path / "w.toml"
    sc.write_text(small(duration="2h"))
    work = tmp_path / "work"
    r = lumeau("sim", "run", str(sc), "--seeds", "2", "--workdir", str(work), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["seed-3", "seed-4"]
    assert all(any(p.iterdir()) for p in work.iterdir())
    assert json.loads(r.stdout)["spread"]["seeds"] == [3, 4]
