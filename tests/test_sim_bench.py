"""bench/channel.py runs and prints one JSON object with its ratio (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_channel_bench_prints_its_figures():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "channel.py"), "--json", "--nodes", "60",
                          "--hours", "2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    result = json.loads(out)
    assert result["nodes"] == 60 and result["gateways"] == 2
    # 60 nodes every 15 +- 1.5 minutes for 2 hours: 7 to 9 uplinks each.
    assert 60 * 7 <= result["uplinks"] <= 60 * 9
    assert result["uplinks_on_air"] == result["uplinks"]     # the workload keeps the duty cycle
    assert 0.9 <= result["delivery_ratio"] <= 1.0
    assert result["channel_packets_per_s"] > 0 and result["floor_packets_per_s"] > 0
    # The ratio is derived from the two rates it reports.
    assert result["channel_cost_ratio"] == round(result["floor_packets_per_s"] / result["channel_packets_per_s"], 2)
