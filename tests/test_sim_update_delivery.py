"""The simulator's update section (simulator/update_delivery.py): a release to a street by multicast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from simulator.scenario import ScenarioError, loads
from simulator.update_delivery import UpdateSettings, simulate

SCENARIO = ROOT / "simulator" / "scenarios" / "street_update.toml"


def test_every_lamp_gets_the_image_within_the_duty_cycle():
    r = simulate(UpdateSettings(members=20, loss=0.1, seed=3))
    assert r["nodes_updated"] == r["images_intact"] == 20
    assert r["hours_to_95"] <= r["hours_to_100"] <= r["session_hours"]
    assert r["airtime_s"] <= r["duty_cycle_limit_s"]
    assert r["frames"] == 1 + r["fragments"] + r["coded_up_front"] + r["repairs"] + r["repair_frames"]
    assert r["rollbacks"] == 0


def test_heavy_loss_needs_repairs_and_no_loss_none():
    assert simulate(UpdateSettings(members=20, loss=0.3, seed=4))["repairs"] >= 1
    clean = simulate(UpdateSettings(members=20, loss=0.0, seed=4))
    assert clean["repairs"] == 0 and clean["frames_lost"] == 0
    assert clean["hours_to_100"] < 0.2  # one pass: 38 frames at 10 %, plus the install


def test_one_seed_one_answer():
    assert simulate(UpdateSettings(members=10, seed=9)) == simulate(UpdateSettings(members=10, seed=9))


def test_sim_run_json_has_the_update_section():
    out = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(SCENARIO), "--json", "--no-wall-clock"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    u = json.loads(out.stdout)["update"]
    assert u["members"] == 60 and u["nodes_updated"] == 60 and u["images_intact"] == 60
    for k in ("hours_to_95", "hours_to_100", "airtime_s", "duty_cycle_limit_s", "repairs", "rollbacks"):
        assert k in u


@pytest.mark.parametrize(
    "line, why",
    [("loss = 2.0", "loss"), ("members = 0", "members"), ("bogus = 1", "bogus"), ('at = "100h"', "at")],
)
def test_bad_update_table_is_refused_clearly(line: str, why: str):
    text = SCENARIO.read_text().replace("[update]\n", f"[update]\n{line}\n")
    text = "\n".join(x for x in text.splitlines() if not x.startswith(line.split(" =")[0] + " ") or x == line)
    with pytest.raises(ScenarioError, match=why):
        loads(text, "street_update.toml")
