"""The simulator's node clocks: crystal drift, a reboot that loses the clock, the `clock` results."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt

import pytest
from conftest import ROOT

from simulator.faults import FaultError, parse_fault
from simulator.hal_sim import SimHAL, StepClock
from simulator.report import render_html
from simulator.runner import RunOptions, run
from simulator.scenario import load
from simulator.simclock import SimClock
from simulator.world import WorldHAL

DISTRICT = ROOT / "simulator" / "scenarios" / "district.toml"
START = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


def test_the_wall_clock_drifts_by_its_ppm_and_a_setting_reports_the_error_it_removed():
    async def main():
        clock = StepClock(unix0=1_781_524_800)
        hal = SimHAL(clock, time_known=True, wall_ppm=100.0)
        seen = []
        hal.on_time_set = lambda before, after: seen.append((before, after))
        await clock.run_for(10_000_000)  # 10,000 s at +100 ppm: 1 s fast
        assert hal.clock_error_ms() == 1000 and hal.time() == clock.unix() + 1
        assert hal.ticks_ms() == 10_000_000  # ticks keep their pace: only the RTC drifts
        hal.set_time(clock.unix(), 250)
        assert seen == [(1000, 250)] and hal.clock_error_ms() == 250
        await clock.run_for(1_000_000)
        assert hal.clock_error_ms() == 350
        # a reset that keeps the RTC running carries the clock on, error and crystal included
        again = SimHAL(clock, reset_cause=2)
        assert again.time() is None
        again.carry_clock(hal)
        assert again.clock_error_ms() == 350 and again.wall_ppm == 100.0
        await clock.run_for(1_000_000)
        assert again.clock_error_ms() == 450
        lost = SimHAL(clock)  # a power cut: no time until a TIME sets it
        assert lost.time() is None and lost.clock_error_ms() is None

    asyncio.run(main())


def test_the_world_hal_drifts_exactly_as_the_sim_hal():
    clock = SimClock(unix0=1_781_524_800)
    fast = WorldHAL(clock, time_known=True, history_max=0)
    ref = SimHAL(clock, time_known=True, history_max=0)
    fast.wall_ppm = ref.wall_ppm = -87.3
    for t in (0.0, 1.5, 999.999, 12_345.678, 86_400.0):
        clock.t = t
        assert fast.time() == ref.time() and fast.clock_error_ms() == ref.clock_error_ms()
    fast.set_time(1_781_611_000, 500)
    ref.set_time(1_781_611_000, 500)
    clock.t = 100_000.0
    assert fast.time() == ref.time() and fast.clock_error_ms() == ref.clock_error_ms()


def test_a_reboot_loses_the_clock_on_a_power_cut_or_when_told():
    def fault(**kw):
        return parse_fault({"kind": "node_reboot", "target": "x", "after": "1h", **kw}, 0, START, 86400.0)

    assert fault().loses_clock is True  # cause power by default
    assert fault(cause="watchdog").loses_clock is False
    assert fault(cause="watchdog", clock="lost").loses_clock is True
    assert fault(cause="power", clock="kept").loses_clock is False
    with pytest.raises(FaultError, match="clock"):
        fault(clock="gone")


def test_a_node_that_lost_its_clock_has_its_profile_back_after_its_first_uplink():
    """The district's power cut at 9 h 30 (a lamp at night), on a tenth of the district."""
    sc = load(DISTRICT)
    cut = next(f for f in sc.faults if f.kind == "node_reboot" and f.loses_clock)
    res = run(sc, RunOptions(hours=cut.at_s / 3600 + 1, nodes_scale=0.1, progress=False))
    ck = res["clock"]
    assert ck["never_restored"] == [] and ck["reboots_losing_clock"] == 1
    [r] = ck["restores"]
    assert r["node"] == cut.target and r["uplinks"] == 1  # the HELLO's own receive window
    assert 0 < r["to_time_s"] <= 15.0  # HELLO jitter (10 s at most) + RX1 delay + time on air
    assert ck["reboot_to_profile_s"] == r["to_profile_s"] > r["to_time_s"]
    assert ck["max_error_s"] <= 2.0
    assert -100 <= ck["drift_ppm"]["min"] < ck["drift_ppm"]["max"] <= 100
    assert ck["time_downlinks_sent"] >= ck["nodes_synced"] == res["scenario"]["lamps"] + res["scenario"]["controllers"]
    assert ck["time_taken"] <= ck["time_downlinks_sent"]
    assert "clock:" in res.summary()
    html = render_html(res.to_dict(), collections.defaultdict(bytes))
    assert "<h2>Clocks</h2>" in html and f"{cut.target} lost its clock" in html and "(uplink 1)" in html
