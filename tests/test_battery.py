"""Battery irrigation nodes on CPython: the board seam (firmware/hal_battery.py above a fake
`machine` and `esp32`), the config rules, and the simulator's energy model and report
(simulator/energy.py). The node's behaviour across deep sleeps runs under real MicroPython:
tests/micropython/mp_battery.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from test_hal_machine import FakeTime, fake_machine

from firmware import irrigation
from firmware.hal_battery import BatteryHAL
from lumeau import boards
from simulator import energy
from simulator.scenario import ScenarioError, loads

ROOT = Path(__file__).resolve().parent.parent
PARK = ROOT / "simulator" / "scenarios" / "park-battery.toml"
PINS = {"zone1": 12, "zone1_close": 15, "master": 13, "master_close": 2, "rain": 4, "flow": 25}


@pytest.fixture
def board(tmp_path, monkeypatch):
    clock = FakeTime()
    mach = fake_machine("DEEPSLEEP_RESET", clock)
    calls: list[tuple] = []
    mach.deepsleep = lambda ms: calls.append(("deepsleep", ms))
    mach.EXT0_WAKE, mach.EXT1_WAKE, mach.TIMER_WAKE = 2, 3, 4
    mach.wake_reason = lambda: calls[-1][1] if calls and calls[-1][0] == "woke" else 4
    mem: dict[str, bytes] = {}

    class RTC:
        def memory(self, data=None):
            if data is None:
                return mem.get("m", b"")
            mem["m"] = bytes(data)

        def datetime(self, dt):
            pass

    mach.RTC = RTC
    esp32 = types.SimpleNamespace(
        WAKEUP_ALL_LOW=0,
        WAKEUP_ANY_HIGH=1,
        wake_on_ext0=lambda pin, level: calls.append(("ext0", pin.n, level)),
        wake_on_ext1=lambda pins, level: calls.append(("ext1", tuple(p.n for p in pins), level)),
    )
    monkeypatch.setitem(sys.modules, "esp32", esp32)
    hal = BatteryHAL(PINS, storage_dir=str(tmp_path / "state"), machine=mach, time_module=clock)
    return hal, mach, calls, mem


def test_deepsleep_arms_each_wake_pin_on_the_level_it_does_not_read_now(board):
    hal, mach, calls, _ = board
    mach.Pin.levels[4] = 1  # rain contact open: pulled up
    mach.Pin.levels[25] = 0  # the flow meter stopped mid-pulse: low
    hal.deepsleep(60000, flow=True, rain=True)
    assert ("ext0", 4, 0) in calls  # wakes when the contact closes (low)
    assert ("ext1", (25,), 1) in calls  # wakes when the meter's line goes high again
    assert calls[-1] == ("deepsleep", 60000)
    calls.clear()
    hal.deepsleep(1000)
    assert calls == [("deepsleep", 1000)]  # the timer only


def test_wake_reason_names_the_pin_that_woke_it(board):
    hal, mach, calls, _ = board
    for raw, want in ((3, 1), (2, 2), (4, 0)):
        calls.append(("woke", raw))
        assert hal.wake_reason() == want
    del mach.wake_reason
    assert hal.wake_reason() == 0  # a port without wake_reason: a timer wake


def test_rtc_memory_and_its_flash_fallback(board, tmp_path):
    hal, mach, _, mem = board
    hal.rtc_save(b"\x81\x01")
    assert mem["m"] == b"\x81\x01" and hal.rtc_load() == b"\x81\x01"
    mach.RTC = lambda: types.SimpleNamespace(datetime=lambda dt: None)  # an RP2040: no RTC memory
    hal.rtc_save(b"abc")
    assert hal.rtc_load() == b"abc" and (tmp_path / "state" / "rtc").read_bytes() == b"abc"


def test_a_latching_pulse_drives_one_input_high_then_low(board):
    hal, mach, _, _ = board
    slept = []
    hal._t.sleep_ms = lambda ms: (slept.append(ms), mach.log.append(("slept", ms)))
    mach.log.clear()
    hal.pulse_out("zone1_close", 40)
    outs = [e for e in mach.log if e[0] in ("out", "slept")]
    assert outs == [("out", 15, 1), ("slept", 40), ("out", 15, 0)]


def test_a_battery_node_needs_latching_valves_and_their_close_pins():
    with pytest.raises(ValueError, match="latch_ms"):
        irrigation.check({"battery": 1})
    s = irrigation.check({"battery": 1, "latch_ms": 50, "zones": [{}]})
    assert s["battery"] == 1 and s["latch_ms"] == 50
    cfg = {"kind": "irrigation", "radio": {"type": "uart"}, "pins": {}}
    need = boards.required_pins(cfg, s)
    assert {"zone1", "zone1_close", "master", "master_close"} <= set(need)
    assert "zone1_close" not in boards.required_pins(cfg, irrigation.check({"zones": [{}]}))


def test_transmit_current_follows_the_datasheet_points():
    assert energy.tx_ma(20) == 120.0
    assert energy.tx_ma(17) == 87.0
    assert energy.tx_ma(14) == 87.0  # below +17 dBm on PA_BOOST: the lowest point, an upper bound
    assert energy.tx_ma(18.5) == pytest.approx(103.5)
    assert energy.tx_ma(13, "RFO") == 29.0 and energy.tx_ma(10, "RFO") == pytest.approx(24.5)


def test_a_node_that_only_sleeps_draws_its_sleep_currents():
    p = dict(energy.DEFAULTS)
    a = energy.Activity(86400.0, 0, 0.0, 0.1, 0, 0.0, 0, True, 14)
    ins, off, parts = energy.per_day(a, energy.MCUS["esp32"], p)
    # 10 uA deep sleep + 2 uA board + 0.2 uA modem, 24 h
    assert ins == off == pytest.approx(24 * (0.010 + 0.002 + 0.0002))
    assert parts["radio_tx"] == 0 and parts["valves"] == 0


def test_an_uplink_costs_a_boot_a_tick_its_airtime_and_its_receive_window():
    p = dict(energy.DEFAULTS)
    mcu = energy.MCUS["esp32"]
    one = energy.Activity(86400.0, 1, 0.2, 0.1, 0, 0.0, 0, True, 14)
    none = energy.Activity(86400.0, 0, 0.0, 0.1, 0, 0.0, 0, True, 14)
    extra = energy.per_day(one, mcu, p)[0] - energy.per_day(none, mcu, p)[0]
    want = (1.0 * 44 + (1.0 + 1.0 + 0.1 + 0.2) * 20 + 0.2 * 87 + 0.1 * 11.5 + 1.0 * 1.6) / 3600
    asleep = (1.0 + 1.0 + 1.0 + 0.1 + 0.2) * (0.010 + 0.002) / 3600  # no longer asleep meanwhile
    assert extra == pytest.approx(want - asleep, rel=1e-3)


def test_watering_costs_awake_time_with_a_flow_meter_and_pulses_always():
    p = dict(energy.DEFAULTS)
    mcu = energy.MCUS["esp32"]
    with_meter = energy.Activity(86400.0, 96, 20.0, 0.1, 1, 1200.0, 4, True, 14)
    no_meter = energy.Activity(86400.0, 96, 20.0, 0.1, 1, 1200.0, 4, False, 14)
    a, off_a, parts = energy.per_day(with_meter, mcu, p)
    b, off_b, _ = energy.per_day(no_meter, mcu, p)
    assert parts["mcu_watering"] == pytest.approx(1200 * 20 / 3600)
    assert parts["valves"] == pytest.approx(4 * 9 * 1.0 * 0.05 / 0.8 / 3.6 / 3.6)
    assert a - b == pytest.approx(parts["mcu_watering"], rel=0.01)
    assert off_a == pytest.approx(off_b) and off_a < b


def test_life_counts_the_season_and_the_self_discharge():
    p = dict(energy.DEFAULTS)
    assert energy.life_years(10.0, 10.0, p) == pytest.approx(19000 / (3650 + 190))
    p.update(season_days=0, self_discharge_pct_year=0.0)
    assert energy.life_years(100.0, 5.0, p) == pytest.approx(19000 / (365 * 5.0))


def test_a_battery_table_with_a_typo_or_a_bad_value_is_refused_by_name():
    base = PARK.read_text()
    with pytest.raises(ScenarioError, match=r'battery\.cel_mah: unknown key \(did you mean "cell_mah"'):
        loads(base.replace("cell_mah = 19000", "cel_mah = 19000"), "park.toml")
    with pytest.raises(ScenarioError, match=r"battery\.mcu: must be one of esp32, rp2040"):
        loads(base.replace('mcu = "esp32"', 'mcu = "esp8266"'), "park.toml")
    with pytest.raises(ScenarioError, match=r"battery\.season_days"):
        loads(base.replace("season_days = 183", "season_days = 400"), "park.toml")
    sc = loads(base, "park.toml")
    assert sc.battery is not None and sc.battery["cell_mah"] == 19000
    assert loads(base[: base.index("\n[battery]")], "park.toml").battery is None


def test_the_park_meets_the_five_year_bar_in_the_json_and_the_text_report(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(PARK), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout)
    b = d["battery"]
    assert b["mcu"] == "esp32" and len(b["nodes"]) == 4
    for n in b["nodes"]:
        assert 90 <= n["uplinks_per_day"] <= 110  # the usual reports: every 15 min, STATUS every 6 h
        assert n["valve_open_min_per_day"] == pytest.approx(20, abs=1)  # watered daily
        assert n["esp32"]["mah_per_day"] > n["esp32"]["mah_per_day_off_season"] > 0
        assert n["rp2040"]["life_years"] < n["esp32"]["life_years"]
    assert b["min_life_years"] >= energy.BAR_YEARS and b["meets_bar"]
    assert b["assumptions"]["cell_mah"] == 19000 and b["assumptions"]["season_days"] == 183
    assert "ESP32 Series Datasheet" in b["figures"]["esp32"]
    text = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(PARK)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert "battery (esp32, 19 Ah cell" in text.stdout and "meets the 5-year bar" in text.stdout, text.stdout
    for n in b["nodes"]:
        assert f"    {n['node']}: {n['mah_per_day']:.2f} mAh/day in season" in text.stdout


def test_a_parallel_run_reports_the_same_batteries():
    out = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "run", str(PARK), "--json", "--workers", "2", "--hours", "26"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    b = json.loads(out.stdout)["battery"]
    assert len(b["nodes"]) == 4
    for n in b["nodes"]:
        assert n["valve_open_min_per_day"] > 0 and n["uplinks_per_day"] > 80, n


def test_flash_refuses_a_battery_config_without_its_close_pins_and_names_them():
    cfg = {
        "node_id": "0a0b0c0d",
        "kind": "irrigation",
        "root_key": "000102030405060708090a0b0c0d0e0f",
        "radio": {"type": "uart"},
        "pins": {"master": 6, "zone1": 7, "flow": 11, "rain": 12},
        "irrigation": {"battery": 1, "latch_ms": 50, "zones": [{}]},
    }
    with pytest.raises(boards.ConfigKeyError, match="master_close, zone1_close missing"):
        boards.validate(json.dumps(cfg))
    cfg["pins"].update(master_close=8, zone1_close=9)
    assert boards.validate(json.dumps(cfg))["irrigation"]["battery"] == 1
    cfg["irrigation"]["latch_ms"] = 0
    with pytest.raises(boards.ConfigKeyError, match="latch_ms"):
        boards.validate(json.dumps(cfg))


def test_the_simulator_provisions_battery_controllers_as_such():
    from simulator.provisioning import firmware_config

    sc = loads(PARK.read_text(), "park.toml")
    cfg = firmware_config(sc, sc.controllers[0], 868100000)
    assert cfg["irrigation"]["battery"] == 1 and cfg["irrigation"]["latch_ms"] == 50
    assert cfg["status_interval_s"] == 21600
    mains = loads(PARK.read_text()[: PARK.read_text().index("\n[battery]")], "park.toml")
    assert "battery" not in firmware_config(mains, mains.controllers[0], 868100000)["irrigation"]


def test_the_rtc_record_fits_the_esp32_rtc_memory_with_a_full_uplink_queue():
    # MicroPython's ESP32 port keeps at most 2,048 bytes in RTC.memory(); a record that did not fit
    # would be lost (the next wake a boot: valves closed, HELLO), so the worst case must fit
    from firmware import config as fwconfig
    from firmware import uplink
    from firmware.battery import BatteryIrrigation, BatteryNode
    from firmware.radio import MemoryRadio
    from simulator.hal_sim import SimHAL, StepClock

    raw = {
        "node_id": "0a0b0c0d",
        "kind": "irrigation",
        "root_key": "000102030405060708090a0b0c0d0e0f",
        "irrigation": {"battery": 1, "latch_ms": 40, "schedule": [[z % 4 + 1, 127, 300 + z, 20] for z in range(6)]},
    }
    hal = SimHAL(StepClock(1782000000), time_known=True)
    node = BatteryNode(fwconfig.load(json.dumps(raw).encode()), hal, MemoryRadio(hal), BatteryIrrigation)
    node._build_app()
    app = node.app
    assert app is not None, node.last_error
    app.queue = [(1, 1440)] * 8
    app._done = [-(2**31)] * 8
    for _i in range(16):  # the queue's bound, each body as large as a 51-byte frame allows
        it = node.queue.put(4, bytes(range(38)), uplink.PRIO_ALARM, True, None)
        it.sends, it.due = 7, 10**9
    assert len(node.queue) == 16
    node.save(21600000)
    print("RTC record, worst case:", len(hal.rtc["mem"]), "B")
    assert 0 < len(hal.rtc["mem"]) <= 2048, len(hal.rtc["mem"])
