"""Benchmarks run and print one JSON object; each test checks it against something measured or counted itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT


def test_protocol_bench_prints_its_figures():
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "protocol.py"), "--json", "--frames", "200", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    result = json.loads(out)
    for key in ("floor_frames_per_s", "lumeau_frames_per_s", "lumeau_cbor2_frames_per_s"):
        # measured here, not by the bench: each variant's 200 frames took less than the whole run
        assert result[key] >= 200 / wall
    # the ratio is derived from the two rates it reports (both rounded)
    assert result["lumeau_cost_ratio"] == pytest.approx(
        result["floor_frames_per_s"] / result["lumeau_frames_per_s"], rel=0.01, abs=0.01
    )
    assert result["max_frame_bytes"] <= 51


def test_firmware_memory_bench_prints_its_figures():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "firmware_memory.py"),
            "--json",
            "--hours",
            "0.1",
            "--apps",
            "lighting",
            "--sample-every",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out)
    app = result["apps"]["lighting"]
    # the compiled bundle is smaller than the sources the manifest puts on a lighting node
    # (counted here from firmware/manifest.py, not by the bench)
    from firmware import manifest

    sources = sum((ROOT / src).stat().st_size for src, _ in manifest.device_files("lighting"))
    assert 0 < app["mpy_bundle"] < sources
    assert app["total"] == app["code_heap"] + app["runtime_heap"]
    assert app["code_heap"] > 10_000 and app["mpy_bundle"] > 10_000 and app["samples"] > 5
    assert app["frames_rejected"] == 0 and app["frames_heard"] >= 1 and app["app_faults"] == 0
    assert abs(app["runtime_bar_ratio"] - app["runtime_heap"] / result["runtime_bar"]) < 0.01


def test_firmware_memory_bench_measures_a_node_with_ble():
    # --ble: firmware/ble.py in the code heap, commissioning beside the node, a central at 10:00
    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "10.5"]
    out = subprocess.run(
        [*cmd, "--apps", "lighting", "--tick-ms", "5000", "--ble"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out)
    app = result["apps"]["lighting"]
    assert result["ble"] is True and app["app_faults"] == 0 and app["frames_rejected"] == 0
    assert app["ble"]["connections"] == 1 and app["ble"]["sessions"] == 1, app["ble"]
    assert app["ble"]["applied"] == app["ble"]["applied_node"] == 1 and app["ble"]["answers_bad"] == 0, app["ble"]
    assert app["code_heap"] > 10_000


def test_firmware_memory_bench_measures_a_node_taking_a_calendar():
    # --calendar: CONFIG fragments from the 9th uplink, reassembled, stored, used, within the bars
    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "6"]
    out = subprocess.run(
        [*cmd, "--tick-ms", "5000", "--calendar"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    result = json.loads(out)
    assert result["calendar"] is True
    for kind, app in result["apps"].items():
        assert app["calendar_held"] is True and app["app_faults"] == 0 and app["frames_rejected"] == 0, kind
        assert app["max_frame_bytes"] <= 51 and app["meets_bar"], (kind, app["runtime_heap"], app["total"])


def test_firmware_memory_bench_measures_a_member_lamp():
    # --member: the lamp joins a group by a sealed join_group COMMAND and takes the day's group
    # command at 01:00 by multicast on its Listener; checked against what the node holds and sent
    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "1.5"]
    out = subprocess.run(
        [*cmd, "--apps", "lighting", "--tick-ms", "5000", "--member"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["member"] is True and set(result["apps"]) == {"lighting", "lighting-member"}
    app = result["apps"]["lighting-member"]
    got = app["member"]
    # the node holds group 7, its next group counter past the one frame sent; its radio is the Listener,
    # which heard it; the gateway heard the node's CMD_ACK (result ok) for it
    assert got["sent"] == 1 and got["groups"] == [[7, 1]], got
    assert got["listener"] is True and got["listener_heard"] == 1 and got["acks_ok"] == 1, got
    assert app["app_faults"] == 0 and app["frames_rejected"] == 0
    # the group code is resident: more code than the lamp in no group of the same run
    assert app["code_heap"] > result["apps"]["lighting"]["code_heap"]
    # within both bars (before wait_ms's timers stopped chaining finished tasks in the heap, the
    # same run measured 58,176 + 16,384 = 74,560 B; bench/README.md)
    assert app["meets_bar"], (app["code_heap"], app["runtime_heap"], app["total"])
    assert "member" not in result["apps"]["lighting"]


def test_firmware_memory_bench_measures_a_battery_node():
    # irrigation-battery: a node that deep-sleeps between events, each wake a boot (mpnode.BatteryCell);
    # within both bars and its names in five qstr pools (642 names and a sixth pool before the
    # battheap name diet: 77-78 KB)
    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "26"]
    out = subprocess.run(
        [*cmd, "--apps", "irrigation-battery"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    result = json.loads(out)
    app = result["apps"]["irrigation-battery"]
    # woken by its timer for reports and STATUS all day, every frame heard and valid
    assert app["frames_heard"] >= 50 and app["frames_rejected"] == 0 and app["app_faults"] == 0, app
    assert app["total"] == app["code_heap"] + app["runtime_heap"]
    assert app["qstr_pool"]["pools"] == 5 and app["qstr_pool"]["qstrs"] <= 620, app["qstr_pool"]
    assert app["meets_bar"], (app["code_heap"], app["runtime_heap"], app["total"])


def test_firmware_names_bench_lists_the_names_an_app_adds():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "firmware_names.py"), "--json"]
        + ["--apps", "irrigation-battery,irrigation", "--against", "irrigation"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out)
    mains, battery = result["apps"]["irrigation"], result["apps"]["irrigation-battery"]
    assert mains["extra"] == [] and mains["left"] == 620 - mains["qstrs"]
    extra = battery["extra"]
    # at least the difference in count (names the mains node holds and the battery one not would add to it)
    assert len(extra) >= battery["qstrs"] - mains["qstrs"] > 0
    assert battery["fifth_pool_ratio"] == round(battery["qstrs"] / 620, 3)
    for e in extra:
        # each name is in the source of every module said to carry it, or is its source's name (a
        # .mpy names its source for tracebacks): checked here, not by the bench ...
        for mod in e["modules"]:
            assert e["name"] == mod or e["name"] in (ROOT / mod).read_text(), (e, mod)
        # ... and is the battery node's own: its modules, their paths, or a name they share with main.py
        assert "battery" in e["name"] or any("battery" in mod for mod in e["modules"]) or e["name"] == "battery", e
    assert {"BatteryNode", "BatteryIrrigation", "firmware.battery"} <= {e["name"] for e in extra}


def test_firmware_memory_soak_is_flat_over_three_days():
    """Both nodes under MicroPython for 3 simulated days: their heap must not grow (issue 21).

    What is checked is the daily floor (the lowest sample of the day), which anything
    kept per uplink (about 100 a day) raises for good: sampling only after each frame the
    gateway hears (a frame comes every 900 or so steps) is enough for it, and quicker.
    """
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--days", "3", "--sample-every", "2000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    result = json.loads(out)
    for kind, app in result["apps"].items():
        assert len(app["floor_by_day"]) == 3 and app["growth_days"] == [2, 3], kind
        assert app["growth_day2_to_7"] <= result["growth_bar"], (kind, app["floor_by_day"])
        assert app["frames_rejected"] == 0 and app["frames_heard"] >= 250 and app["app_faults"] == 0, kind


def test_open311_bench_prints_its_figures():
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "open311.py"), "--json", "--nodes", "2000", "--reports", "20"]
        + ["--baseline-reports", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    result = json.loads(out)
    assert (result["nodes"], result["reports"], result["baseline_reports"]) == (2000, 20, 5)
    # measured here: each variant's reports were filed within the whole run
    assert result["indexed_reports_per_s"] >= 20 / wall and result["full_scan_reports_per_s"] >= 5 / wall
    assert result["speedup"] > 0


def test_upstream_mqtt_bench_prints_its_figures():
    # against Debian's mosquitto (make mosquitto) and bench/gateway.py's null HTTP sink
    t0 = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "upstream_mqtt.py"),
            "--json",
            "--records",
            "300",
            "--nodes",
            "10",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    result = json.loads(out)
    for name in ("http", "mqtt_plain", "mqtt_thingsboard"):
        assert result[f"{name}_records_per_s"] >= 300 / wall  # each drain took less than the whole run
        assert result[f"{name}_cpu_us_per_record"] > 0
    # one message per record on plain topics; ThingsBoard groups a batch's records (+ a connect and a
    # disconnect per device)
    assert result["mqtt_plain_messages_per_record"] >= 1.0 > result["mqtt_thingsboard_messages_per_record"]
    for name in ("mqtt_plain", "mqtt_thingsboard"):
        assert result[f"{name}_cpu_ratio"] == pytest.approx(
            result[f"{name}_cpu_us_per_record"] / result["http_cpu_us_per_record"], rel=0.02, abs=0.01
        )


def test_release_verify_bench_prints_its_figures():
    from protocol import nodelora

    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "release_verify.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    r = json.loads(out)
    mp, d = r["micropython"], r["delta"]
    assert mp["verify_us"] > 0 and mp["verify_vs_sha256_image"] == pytest.approx(
        mp["verify_us"] / mp["sha256_image_us"], rel=0.01, abs=0.1
    )
    assert mp["code_updater"] > mp["code_verifier"] > 1000
    assert mp["churn_verify"] > mp["live_after_verify"]
    assert d["delta_image_bytes"] < d["full_image_bytes"] / 5
    # frames counted here from the sizes it reports: 51-byte frames at SF12, 15 bytes of overhead
    assert d["delta_sf12"]["frames"] == -(-d["delta_image_bytes"] // (nodelora.max_payload(12) - 15))
    assert d["full_sf9"]["airtime_s"] > d["delta_sf9"]["airtime_s"]


def test_firmware_memory_bench_measures_a_lora_update_session():
    # --fuota: a lamp by unicast (FRAG, one per uplink) and a member lamp by multicast (GROUP_FRAG):
    # each completes the image, reboots (the run ends there), the install at boot refuses it (random
    # bytes, no release key) and keeps the refusal for the status request; within the bars at
    # the samples, the session's modules loaded for one frame only (frame_heap: not sampled)
    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "30"]
    out = subprocess.run(
        [*cmd, "--apps", "lighting", "--tick-ms", "5000", "--member", "--fuota"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["fuota"] is True and set(result["apps"]) == {"lighting", "lighting-member"}
    for kind, app in result["apps"].items():
        end = app["fuota_end"]
        assert end["complete"] is True and end["reboots"] == 1 and end["boot_install"] is True, (kind, end)
        assert end["status"] == [4, 2] and end["state_bytes"] > 15 and "OSError" in end["last_error"], (kind, end)
        assert app["app_faults"] == 0 and app["meets_bar"], (kind, app["code_heap"], app["runtime_heap"])
        assert 2_000 < app["frame_heap"] < 6_000, (kind, app["frame_heap"])
        assert app["frame_bound"] == app["runtime_heap"] + app["frame_heap"]
    # the member's session came by multicast: its frames were sent on the group channel
    assert result["apps"]["lighting-member"]["fuota_end"]["group_frames"] > 80
