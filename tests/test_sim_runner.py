"""lumeau sim run: the real firmware on a simulated district against the real gateway, in-process.

The district is run once for the day (module fixture) and its results are
checked against what the issue asks of the main job, each figure against
another figure of the same run or the nodes' own counters, never against a
number copied from a previous run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import runner
from simulator.hal_sim import SimHAL
from simulator.metrics import FRAME_BUDGET
from simulator.runner import RunOptions, run
from simulator.scenario import load, loads
from simulator.simclock import SimClock
from simulator.world import WorldHAL

DISTRICT = ROOT / "simulator" / "scenarios" / "district.toml"
CITY = ROOT / "simulator" / "scenarios" / "city.toml"


@pytest.fixture(scope="module")
def district():
    sc = load(DISTRICT)
    return sc, run(sc, RunOptions(progress=False))  # the scenario's own seed, as `make demo` runs it


def test_district_every_injected_fault_raises_its_alarm_at_the_gateway(district):
    sc, res = district
    al = res["alarms"]
    by_kind = {f["kind"] for f in al["faults"]}
    assert {
        "lamp_failure",
        "burst",
        "stuck_valve",
        "leak",
        "node_reboot",
        "gateway_restart",
        "upstream_outage",
    } <= by_kind
    for f in al["faults"]:
        if f["expected"] is None:
            continue
        assert f["manifested"], f
        assert f["detected"], f
        assert 0 <= f["delay_s"] < sc.duration_s - f["at_h"] * 3600
    assert al["detected"] == al["expected"] == sum(1 for f in sc.faults if f.expected is not None)
    assert al["unexpected"] == []  # no alarm without a fault behind it


def test_district_clocks_stay_within_2_s_all_day_and_a_lost_clock_is_back_after_one_uplink(district):
    """Issue 11, automatic time: crystals drawn within +-100 ppm, the gateway's TIMEs keep every
    clock within 2 s of true time after its first sync; the power cut's lamp gets its clock (and
    so its profile) back in the receive window of its first uplink, its HELLO."""
    sc, res = district
    ck = res["clock"]
    assert -100 <= ck["drift_ppm"]["min"] < 0 < ck["drift_ppm"]["max"] <= 100
    assert ck["nodes_synced"] == len(sc.lamps) + len(sc.controllers)
    assert ck["max_error_s"] <= 2.0, ck["worst_node"]
    lost = [f for f in sc.faults if f.kind == "node_reboot" and f.loses_clock]
    assert lost and ck["reboots_losing_clock"] == len(lost) and ck["never_restored"] == []
    assert all(r["uplinks"] == 1 for r in ck["restores"])
    assert ck["time_taken"] <= ck["time_downlinks_sent"] == res["gateway"]["downlinks_time_auto"]


def test_district_delivers_at_least_95_percent_within_the_law(district):
    _sc, res = district
    dv = res["delivery"]
    assert dv["ratio"] >= 0.95
    assert dv["stored"] == res["totals"]["uplinks"]["heard"] <= dv["settled"] <= dv["on_air"]
    assert dv["refused"] == {}  # the firmware never tried what the duty cycle forbids
    assert 0 < res["airtime"]["max_share_of_limit"] <= 1.0


def test_district_no_frame_over_51_bytes(district):
    _sc, res = district
    fr = res["frames"]
    assert fr["budget"] == FRAME_BUDGET == 51
    assert fr["over_budget"] == 0
    assert {"hello", "light", "irrigation", "event", "status"} <= set(fr["largest"])
    assert max(fr["largest"].values()) <= 51


def test_district_totals_at_the_gateway_equal_the_nodes_own_counters(district):
    _sc, res = district
    to = res["totals"]
    assert to["agree"] and to["mismatches"] == []
    assert to["energy_wh"]["platform"] == to["energy_wh"]["nodes"] > 0
    assert to["water_l"]["platform"] == to["water_l"]["nodes"] > 0
    # the meters only grow after their last report (a reboot may lose at most an hour of a total)
    assert to["energy_wh"]["nodes_meters_at_end"] >= to["energy_wh"]["nodes"] * 0.95
    up = to["uplinks"]
    # every frame a node counted as sent went on the air (a send cut by the end or a reboot is on
    # the air without being counted); everything heard was stored and reached the platform
    assert up["nodes_tx"] <= up["on_air"] <= up["nodes_tx"] + res["scenario"]["lamps"] + res["scenario"]["controllers"]
    assert up["stored"] == up["heard"] == up["at_platform"] and up["queued_at_end"] == 0
    assert res["nodes"]["counters"]["app_faults"] == 0 and res["run"]["crashed_nodes"] == []


def test_district_energy_and_water_against_the_baselines(district):
    _sc, res = district
    en, wa = res["energy"], res["water"]
    assert 0 < en["kwh"] < en["baseline_kwh"]
    assert en["saved_kwh"] == pytest.approx(en["baseline_kwh"] - en["kwh"])
    # the platform's view lags the lamps by at most one report each
    assert 0.9 * en["total_kwh"] < en["reported_kwh"] <= en["total_kwh"] * 1.01
    assert wa["m3"] > 0 and wa["baseline_m3"] > 0
    assert wa["total_m3"] == pytest.approx(wa["applied_m3"] + wa["lost_m3"])
    assert wa["lost_m3"] > 0  # the burst and the leak spilled water
    # issue 18: the headline is the control's; the faults' effects are apart, not savings
    assert wa["faults"]["zones_affected"] >= 4 and wa["faults"]["not_delivered_m3"] > 0
    assert wa["saved_pct"] < wa["gross_saved_pct"] and 0 < wa["coverage"] < 1
    assert en["faults"]["dark_lamp_hours"] > 0 and en["gross_saved_kwh"] == pytest.approx(
        en["total_baseline_kwh"] - en["total_kwh"]
    )
    series = res["series"]
    assert len(series["t_h"]) == 24 and series["energy_wh"][-1] == pytest.approx(en["total_kwh"] * 1000, rel=1e-6)


def test_district_records_carry_simulated_time(district):
    sc, res = district
    # the gateway stored the simulated reception time (Reception.rx_time), not the machine's
    assert res["series"]["stored"][-1] == res["delivery"]["stored"]
    assert res["series"]["stored"][0] > 0 and sorted(res["series"]["stored"]) == res["series"]["stored"]
    assert res["latency_s"]["count"] == res["delivery"]["stored"] and res["latency_s"]["max"] < 60


def test_district_gateway_restart_and_upstream_outage_lose_nothing(district):
    _sc, res = district
    gw = res["gateway"]
    assert gw["restarts"] == 1  # the gateway_restart fault reopened the store
    assert gw["queue_max"] > 0 and gw["queued_at_end"] == 0
    assert res["channel"].get("up_gateway_down", 0) > 0  # the site really was off the air
    assert gw["accepted"] == res["delivery"]["stored"]


def test_a_burst_in_a_zone_that_never_waters_is_latent_and_says_why():
    """Without the district's scripted dry spell its seed rains 14 mm in the afternoon: the soil is
    full, no zone waters, the burst pipe spills nothing and no node can see it. The results say so,
    and why, instead of 'missed'."""
    text = DISTRICT.read_text()
    assert "dry_days = " in text
    sc = loads("\n".join(ln for ln in text.splitlines() if not ln.startswith("dry_days = ")), "wet.toml")
    assert any(d.rain_mm > 5 for d in sc.weather_model().days)
    burst = next(f for f in sc.faults if f.kind == "burst")
    res = run(sc, RunOptions(hours=burst.at_s / 3600 + 3, progress=False, nodes_scale=0.2))
    f = next(f for f in res["alarms"]["faults"] if f["kind"] == "burst")
    assert f["manifested"] is False and f["detected"] is False
    assert "zone 2 to water" in f["latent_reason"]
    latent = [f for f in res["alarms"]["faults"] if f["manifested"] is False]
    assert res["alarms"]["latent"] == len(latent) and all(f["latent_reason"] for f in latent)
    assert res["alarms"]["detected"] == res["alarms"]["expected"]
    assert res["water"]["m3"] == 0  # nothing watered after the rain (and the burst spilled nothing)


def test_same_seed_same_results_other_seed_other_results():
    sc = load(DISTRICT)
    opts = RunOptions(hours=3, nodes_scale=0.5, progress=False)
    a = run(sc, opts).without_wall_clock()
    b = run(sc, opts).without_wall_clock()
    assert a == b
    c = run(sc, dataclasses.replace(opts, seed=sc.seed + 1)).without_wall_clock()
    assert c != a and c["scenario"]["seed"] == sc.seed + 1


def test_ticked_apps_behave_exactly_as_their_own_run_loop():
    """The runner ticks the apps through the clock; the same run with every app in its own run()
    task (the firmware unchanged) gives the very same results, faults included."""
    sc = load(DISTRICT)
    faults = [f for f in sc.faults if f.kind in ("lamp_failure", "node_reboot")]
    hours = max(f.at_s for f in faults) / 3600 + 1.5
    opts = RunOptions(hours=hours, nodes_scale=0.3, progress=False)
    ticked = run(sc, opts).without_wall_clock()
    own = run(sc, dataclasses.replace(opts, ticked_apps=False)).without_wall_clock()
    assert ticked == own
    assert ticked["alarms"]["detected"] >= 2


def test_city_scaled_down_runs_on_sf7_within_the_duty_cycle():
    sc = load(CITY)
    res = run(sc, RunOptions(hours=1.5, nodes_scale=0.05, progress=False))
    s = res["scenario"]
    assert s["lamps"] == pytest.approx(len(sc.lamps) * 0.05, abs=1) and s["controllers"] >= 1
    assert set(s["sf"]) == {"SF7"}
    assert res["delivery"]["ratio"] >= 0.95
    assert res["airtime"]["max_share_of_limit"] <= 1.0 and res["frames"]["over_budget"] == 0
    assert res["totals"]["agree"]


def test_stuck_valves_and_an_over_current_lamp_raise_their_alarms():
    """Stuck shut: no flow. Stuck open behind the master valve: dry until another zone of the
    controller waters, then more flow than that zone explains (not a burst, not a leak)."""
    text = DISTRICT.read_text().split("# Faults, timed")[0]
    assert "dry_days = " in text  # the district's dry spell: every zone waters in the morning
    text += """
[[faults]]
kind = "stuck_valve"
target = "jacobins-1"
after = "14h"
zone = 1
state = "closed"

[[faults]]
kind = "stuck_valve"
target = "jacobins-2"
after = "14h"
zone = 2
state = "open"

[[faults]]
kind = "lamp_failure"
target = "quai-03"
after = "9h"
mode = "over_current"
"""
    sc = loads(text, "stuck.toml")
    res = run(sc, RunOptions(hours=16.5, nodes_scale=0.1, progress=False))
    faults = {(f["kind"], f["params"].get("state")): f for f in res["alarms"]["faults"]}
    shut, stuck_open = faults[("stuck_valve", "closed")], faults[("stuck_valve", "open")]
    assert shut["expected"] == "event no_flow" and shut["detected"]
    assert stuck_open["expected"] == "event excess_flow" and stuck_open["detected"], stuck_open
    assert stuck_open["delay_s"] >= 3600  # not before zone 1 waters, at 05:00 local (an hour after)
    assert "burst raised" not in res["alarms"]["raised"] and "leak raised" not in res["alarms"]["raised"]
    lamp = faults[("lamp_failure", None)]
    assert lamp["expected"] == "event over_current" and lamp["detected"]


# ---------------------------------------------------------------- parts


def test_options_are_checked():
    sc = load(DISTRICT)
    for bad in (RunOptions(nodes_scale=0), RunOptions(nodes_scale=1.5), RunOptions(hours=-1)):
        with pytest.raises(ValueError):
            runner.prepare(sc, bad)
    thin = runner.prepare(sc, RunOptions(nodes_scale=0.1, hours=10))
    kept = {n.name for n in thin.nodes}
    # fault targets within the shortened run are kept, those after it are not needed
    assert {f.target for f in thin.faults if f.target in {n.name for n in sc.nodes}} <= kept
    assert all(f.at_s < 10 * 3600 for f in thin.faults)


def test_every_node_is_provisioned_through_the_firmware_config_with_its_own_key():
    sc = load(DISTRICT)
    from firmware import config as fw_config

    keys = set()
    for n in sc.nodes:
        raw = json.dumps(runner.firmware_config(sc, n, sc.radio.channels_hz[0])).encode()
        cfg = fw_config.load(raw)
        assert cfg["node_id"] == n.node_id and cfg["radio"]["sf"] == n.sf
        assert "NodeKeys" in repr(cfg["keys"]) and runner.root_key(sc.seed, n.node_id).hex() not in repr(cfg)
        keys.add(runner.root_key(sc.seed, n.node_id))
    assert len(keys) == len(sc.nodes)
    c = sc.node("jacobins-1")
    irr = runner.firmware_config(sc, c, sc.radio.channels_hz[0])["irrigation"]
    # 05:00 local summer time is 04:00 local standard time, the firmware's clock
    assert irr["utc_offset_min"] == 60 and {e[2] for e in irr["schedule"]} == {4 * 60}
    skip, target = runner.zone_thresholds(c.zones[0])
    assert skip <= target < 100 * c.zones[0].soil.theta_fc


@settings(max_examples=60, deadline=None)
@given(
    boot=st.integers(0, 10**7),
    steps=st.lists(st.integers(0, 10**6), max_size=8),
    value=st.one_of(st.integers(-5, 4000), st.booleans()),
    wall=st.integers(1_600_000_000, 2_000_000_000),
)
def test_world_hal_answers_as_sim_hal(boot, steps, value, wall):
    clock = SimClock(unix0=1781524800)
    clock.t = boot / 1000

    def pair():
        a = SimHAL(clock, time_known=True, history_max=0)
        b = WorldHAL(clock, time_known=True, history_max=0)
        return a, b

    a, b = pair()
    for h in (a, b):
        h.set_pin("pir", value)
        h.set_adc("ambient", lambda: value)
    for dt in steps:
        clock.t += dt / 1000
        assert a.ticks_ms() == b.ticks_ms() and a.time() == b.time()
        assert a.pin_read("pir") == b.pin_read("pir") and a.adc_read_mv("ambient") == b.adc_read_mv("ambient")
        a.set_time(wall)
        b.set_time(wall)
        assert a.time() == b.time()


def test_simclock_wakes_sleepers_and_callbacks_in_order_once():
    from simulator.virtual_loop import VirtualLoop

    clock = SimClock(unix0=1781524800)
    loop = VirtualLoop(clock)
    seen = []

    async def sleeper(name, ms):
        await clock.sleep_ms(ms)
        seen.append((name, clock.ms()))

    async def main():
        tasks = [asyncio.ensure_future(sleeper("a", 30)), asyncio.ensure_future(sleeper("c", 10))]
        await asyncio.sleep(0)
        clock.call_later_ms(30, lambda: seen.append(("b", clock.ms())))
        gone = asyncio.ensure_future(sleeper("gone", 20))
        await asyncio.sleep(0)
        gone.cancel()

        def boom():
            raise ZeroDivisionError("a bad callback")

        clock.call_later_ms(30, boom)
        clock.call_later_ms(30, lambda: seen.append(("d", clock.ms())))
        await asyncio.gather(*tasks)
        await asyncio.sleep(0.01)

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["exception"]))
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen == [("c", 10), ("a", 30), ("b", 30), ("d", 30)]
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_cli_prints_one_json_object():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lumeau",
            "sim",
            "run",
            str(DISTRICT),
            "--json",
            "--hours",
            "1",
            "--nodes-scale",
            "0.1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    ).stdout
    res = json.loads(out)
    assert res["scenario"]["name"] == "district" and res["scenario"]["hours"] == 1
    assert res["delivery"]["settled"] > 0 and res["run"]["link"] == "inprocess"


def test_cli_names_a_bad_scenario_and_option(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario]\nname = 'x'\n")
    p = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert p.returncode == 2 and "bad.toml" in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(DISTRICT), "--nodes-scale", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 2 and "--nodes-scale" in p.stderr
    # issue 18: "> 0", not an interval that reads as if 0 were allowed; the same status
    p = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(DISTRICT), "--hours", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 2 and "--hours must be > 0" in p.stderr


def _air_fixture():
    from simulator import channel as ch
    from simulator.air import Air, NodeRadio
    from simulator.virtual_loop import VirtualLoop

    clock = SimClock(unix0=1781524800)
    loop = VirtualLoop(clock)
    chan = ch.Channel([ch.GatewaySite("gw", 0.0, 0.0, 30.0)], ch.RadioParams(shadowing_sigma_db=0.0), seed=1)
    chan.add_node(7, 100.0, 0.0, 2.0)
    heard = []
    air = Air(chan, loop, heard.append)
    radio = NodeRadio(air, 7, 868100000, 7)
    return loop, air, radio, heard


def _frame(counter=1):
    from protocol import frame as fr
    from protocol import messages as m2
    from protocol.keys import NodeKeys

    return fr.seal(NodeKeys(7, bytes(16)), m2.STATUS, counter, m2.encode(m2.STATUS, {0: 1, 1: 0, 6: 1, 7: 0}))


def test_node_radio_sends_through_the_channel_and_refuses_what_the_law_forbids():
    from gateway.transports import DownlinkError

    loop, air, radio, heard = _air_fixture()

    async def main():
        t0 = loop.time()
        await radio.send(_frame(1))
        # send() returns when the time on air is over, and the gateway heard it then
        assert loop.time() - t0 == pytest.approx(radio.airtime_ms(len(_frame(1))) / 1000, abs=1e-4)
        assert len(heard) == 1 and heard[0].gateway == "gw" and heard[0].tx.payload == _frame(1)
        with pytest.raises(OSError, match="duty_cycle"):
            await radio.send(_frame(2))  # the 1 % off-time has not passed
        up = heard[0].tx
        await asyncio.sleep(2.0)
        with pytest.raises(DownlinkError) as e:
            air.downlink("gw", 7, b"late", up)  # RX1 (1 s after the uplink) is over
        assert e.value.reason == "too_late"

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    st = air.nodes[7]
    assert st.uplinks == 1 and st.refused == {"duty_cycle": 1} and st.delivered == 1


def test_node_radio_hears_a_downlink_whose_preamble_starts_in_its_window_only():
    loop, air, radio, heard = _air_fixture()
    got = []

    async def main():
        await radio.send(_frame(1))
        up = heard[0].tx
        air.downlink("gw", 7, b"\x6b" + bytes(20), up)  # scheduled in RX1
        await asyncio.sleep(0.98)  # the runtime opens RX1 20 ms early
        got.append(await radio.recv(radio.rx_window_ms()))
        got.append(await radio.recv(radio.rx_window_ms()))  # nothing more in this window

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    frame, rssi, snr = got[0]
    assert frame == b"\x6b" + bytes(20) and -140 < rssi < 0 and isinstance(snr, int)
    assert got[1] is None and air.nodes[7].downlinks_ok == 1


def test_cli_draws_a_progress_bar_on_a_terminal_only(tmp_path):
    """stderr a real pseudo-terminal: the bar is drawn there; piped (the JSON case): nothing but the object."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(
            [sys.executable, "-m", "lumeau", "sim", "run", str(DISTRICT), "--hours", "2", "--nodes-scale", "0.1"],
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=ROOT,
        )
        os.close(slave)
        out, _ = p.communicate(timeout=120)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert p.returncode == 0 and b"district:" in out
    assert b"\r[" in seen and b"100.0 %" in seen and b"simulated" in seen
    piped = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(DISTRICT), "--hours", "1", "--nodes-scale", "0.1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert piped.returncode == 0 and piped.stderr == "" and json.loads(piped.stdout)["scenario"]["hours"] == 1


def test_parallel_workers_give_the_same_results_as_one_process():
    """Nodes in 2 or 3 worker processes, channel and gateway in this one: the very same results
    (they could only differ where two uplinks start in the same microsecond and a gateway's 8
    demodulators are all taken: the processes' order of such ties is not the loop's)."""
    sc = load(DISTRICT)
    # without automatic time, as a parallel run goes (RunOptions.auto_time: its workers hold for alarms only)
    opts = RunOptions(hours=16, nodes_scale=0.3, progress=False, auto_time=False)
    one = run(sc, opts).without_wall_clock()
    assert one.pop("clock")["time_downlinks_sent"] == 0  # the nodes' clocks are in the workers: not reported
    one["clock"] = None
    two = run(sc, dataclasses.replace(opts, workers=2))
    three = run(sc, dataclasses.replace(opts, workers=3))
    assert two.without_wall_clock() == three.without_wall_clock() == one
    assert two["run"]["workers"] == 2 and len(two["run"]["workers_cpu_s"]) == 2
    assert run(sc, dataclasses.replace(opts, hours=0.5, workers=2, auto_time=True))["run"]["auto_time"] is False
    assert two["run"]["downlinks_refused_unheld"] == 0  # every ACK found its node waiting
    assert one["alarms"]["detected"] == one["alarms"]["expected"] >= 3
    assert one["gateway"]["downlinks_acks_sent"] >= 1  # the held alarms were answered in RX1
