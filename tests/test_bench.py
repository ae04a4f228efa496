"""Benchmarks run and print one JSON object with their ratios (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_protocol_bench_prints_its_figures():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "protocol.py"), "--json", "--frames", "200",
                          "--repeats", "1"], capture_output=True, text=True, timeout=120, check=True).stdout
    result = json.loads(out)
    for key in ("floor_frames_per_s", "lumeau_frames_per_s", "lumeau_cbor2_frames_per_s"):
        assert result[key] > 0
    # the ratio is derived from the two rates it reports (both rounded)
    assert abs(result["lumeau_cost_ratio"] - result["floor_frames_per_s"] / result["lumeau_frames_per_s"]) < 0.02
    assert result["max_frame_bytes"] <= 51
