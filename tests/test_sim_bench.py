"""bench/channel.py runs and prints one JSON object with its ratio (no timing is asserted), its rates follow
from its totals, and its delivery agrees with the channel model's own link budget for those nodes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from simulator import channel as ch
from simulator import scenario as sc_mod


def test_channel_bench_prints_its_figures():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "channel.py"),
            "--json",
            "--nodes",
            "60",
            "--hours",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["nodes"] == 60 and result["gateways"] == 2
    # 60 nodes every 15 +- 1.5 minutes for 2 hours: 7 to 9 uplinks each.
    assert 60 * 7 <= result["uplinks"] <= 60 * 9
    assert result["uplinks_on_air"] == result["uplinks"]  # the workload keeps the duty cycle
    assert 0.9 <= result["delivery_ratio"] <= 1.0
    assert result["channel_packets_per_s"] > 0 and result["floor_packets_per_s"] > 0
    # The ratio is derived from the two rates it reports.
    assert result["channel_cost_ratio"] == round(result["floor_packets_per_s"] / result["channel_packets_per_s"], 2)
    # The rate is the uplinks over the time it reports (wall time printed rounded to 1 ms).
    n, t = result["uplinks"], result["channel_wall_s"]
    assert n / (t + 0.0006) <= result["channel_packets_per_s"] <= n / max(t - 0.0006, 1e-6)
    # Delivery against the model's link budget for the same nodes: collisions only lower it, and
    # 60 nodes every 15 minutes leave few of them.
    scenario = sc_mod.load(ROOT / "simulator" / "scenarios" / "city.toml")
    channel = ch.Channel(scenario.gateways, scenario.radio.params, scenario.seed)
    nodes = scenario.nodes[:60]
    for node in nodes:
        channel.add_node(node.node_id, node.x, node.y, node.height_m)
    expected = sum(channel.delivery_probability(node.node_id, node.sf) for node in nodes) / len(nodes)
    assert expected - 0.05 <= result["delivery_ratio"] <= expected + 0.01
    # ACKs go to about 2 % of the delivered uplinks
    assert 0 < result["downlinks"] <= 0.1 * result["uplinks_on_air"]
