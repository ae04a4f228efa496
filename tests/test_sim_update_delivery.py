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


def test_a_park_by_unicast_takes_a_fragment_per_receive_window():
    r = simulate(UpdateSettings(members=5, park_valves=4, park_sf=9, loss=0.05, seed=5))
    p = r["park"]
    assert p["valves"] == p["nodes_updated"] == p["images_intact"] == 4 and p["failed"] == 0
    assert p["fragment_bytes"] == 34  # a unicast fragment fits 51 B at SF12 (gateway/fuota.py)
    # one frame per window after a 15 min report: at least the N + coded + SETUP windows
    assert p["hours_to_95"] >= (p["fragments"] + p["coded_up_front"] + 1) * 900 / 3600 * 0.9
    assert p["hours_to_95"] <= p["hours_to_100"] <= p["session_hours"]
    assert p["airtime_s"] <= p["duty_cycle_limit_s"]  # the RX1 band's 1 %
    assert p["hours_to_100"] > 10 * r["hours_to_100"]  # unicast is slow beside the street's multicast
    assert "park" not in simulate(UpdateSettings(members=5, seed=5))


def test_a_bad_release_rolls_back_on_its_canaries_and_halts_the_campaign():
    r = simulate(UpdateSettings(members=30, loss=0.0, bad_release=True, canary=0.1, seed=6))
    b = r["bad_release"]
    assert b["canaries"] == 3  # gateway/campaigns.py canary_count: a share rounded up
    assert b["nodes_updated"] == b["images_intact"] == 3 and b["rollbacks"] == r["rollbacks"] == 3
    assert b["campaign"] == "halted" and "rolled back" in b["reason"]
    assert b["nodes_never_sent"] == 27
    good = simulate(UpdateSettings(members=30, loss=0.0, seed=6))
    assert good["rollbacks"] == 0 and "bad_release" not in good


def test_the_halt_comes_with_the_canarys_rollback_not_after_its_delivery():
    b = simulate(UpdateSettings(members=10, loss=0.0, bad_release=True, canary=1, seed=7))["bad_release"]
    assert b["canaries"] == 1 and b["nodes_never_sent"] == 9
    # the image complete + install (hours_to_100), then 90 min of failing trial boots
    assert b["hours_to_halt"] == pytest.approx(b["hours_to_100"] + 1.5, abs=0.001)
    assert b["rollbacks_seen"] == 1


def test_bad_release_settings_follow_the_gateways_canary_rule():
    text = SCENARIO.read_text().replace("canary = 1 ", "canary = 1.5 ")
    with pytest.raises(ScenarioError, match="canary"):
        loads(text, "street_update.toml")


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
        assert k in u and k in u["park"] or k == "rollbacks"
    assert u["park"]["valves"] == u["park"]["nodes_updated"] == u["park"]["images_intact"] == 12
    assert u["park"]["airtime_s"] <= u["park"]["duty_cycle_limit_s"]
    b = u["bad_release"]
    assert b["campaign"] == "halted" and b["nodes_never_sent"] == 59 and u["rollbacks"] == b["rollbacks"] == 1


@pytest.mark.parametrize(
    "line, why",
    [("loss = 2.0", "loss"), ("members = 0", "members"), ("bogus = 1", "bogus"), ('at = "100h"', "at")],
)
def test_bad_update_table_is_refused_clearly(line: str, why: str):
    text = SCENARIO.read_text().replace("[update]\n", f"[update]\n{line}\n")
    text = "\n".join(x for x in text.splitlines() if not x.startswith(line.split(" =")[0] + " ") or x == line)
    with pytest.raises(ScenarioError, match=why):
        loads(text, "street_update.toml")
