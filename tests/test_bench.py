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
        [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "0.1", "--apps", "lighting"],
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
