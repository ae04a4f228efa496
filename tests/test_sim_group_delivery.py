"""The simulator's group command section (simulator/group_delivery.py): unicast against multicast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from simulator.group_delivery import GroupCommandSettings, simulate
from simulator.scenario import ScenarioError, loads

SCENARIO = ROOT / "simulator" / "scenarios" / "street_group.toml"


def test_multicast_reaches_the_street_sooner_with_less_air():
    r = simulate(GroupCommandSettings(runs=5))
    u, mc = r["unicast"], r["multicast"]
    assert u["applied"] == mc["applied"] == 60
    assert mc["applied_95_s"] < u["applied_95_s"] and mc["applied_100_s"] < u["applied_100_s"]
    assert mc["gateway_airtime_s"] < u["gateway_airtime_s"] / 3
    assert u["refused_by_duty_cycle"] > 0  # the gateway's 1 % in g1 is what slows unicast down
    # without loss, a multicast reaches every member in its own time on air
    clean = simulate(GroupCommandSettings(runs=1, loss=0.0))["multicast"]
    assert clean["applied_100_s"] < 1.0
    assert simulate(GroupCommandSettings(runs=3)) == simulate(GroupCommandSettings(runs=3))  # one seed, one answer


def test_duty_cycle_is_kept():
    """Over the unicast run the gateway's air in g1 stays within 1 % of the time it took."""
    r = simulate(GroupCommandSettings(runs=1))["unicast"]
    assert r["gateway_airtime_s"] <= 0.01 * r["applied_100_s"] + 0.5


def test_sim_run_json_has_the_section():
    out = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(SCENARIO), "--json", "--no-wall-clock"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    g = json.loads(out.stdout)["group_command"]
    assert g["members"] == 60 and g["unicast"]["runs"] == 21
    assert g["multicast"]["applied_95_s"] < g["unicast"]["applied_95_s"]


@pytest.mark.parametrize(
    ("line", "why"),
    [("members = 1", "members"), ("loss = 2.0", "loss"), ("colour = 1", "colour"), ('at = "100h"', "at")],
)
def test_bad_group_command_table_is_refused_clearly(line: str, why: str):
    text = SCENARIO.read_text().replace("[group_command]\n", f"[group_command]\n{line}\n")
    text = "\n".join(x for x in text.splitlines() if not x.startswith(line.split(" =")[0] + " ") or x == line)
    with pytest.raises(ScenarioError, match=why):
        loads(text, "street_group.toml")
