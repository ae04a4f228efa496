"""bench/sim.py runs and prints one JSON object whose ratios follow from its own figures (no timing asserted),
and whose run is the one it names: an in-process run of the same scenario, share and hours gives its figures."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from simulator import runner
from simulator import scenario as sc_mod


def test_sim_bench_prints_its_figures():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sim.py"),
            "--json",
            "--nodes",
            "40",
            "--hours",
            "0.5",
            "--baseline-hours",
            "0.2",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    r = json.loads(out)
    assert r["bench"] == "sim" and 30 <= r["nodes"] <= 50 and r["nodes"] == r["lamps"] + r["controllers"]
    node_s = r["nodes"] * r["simulated_hours"] * 3600
    # wall_s is printed rounded to 10 ms: the rate must lie within what that rounding allows
    assert node_s / (r["wall_s"] + 0.006) <= r["node_seconds_per_wall_s"] <= node_s / max(r["wall_s"] - 0.006, 1e-3)
    cpu_rate = r["node_seconds_per_cpu_s"]
    assert abs(r["vs_bare"] - cpu_rate / r["bare_wakeups_node_seconds_per_cpu_s"]) < 0.002
    assert abs(r["steps_share"] - cpu_rate / r["steps_node_seconds_per_cpu_s"]) < 0.002
    scale = 1000 / r["nodes"] * 24 / r["simulated_hours"]
    assert abs(r["cpu_s_per_1000_nodes_24h"] - r["cpu_s"] * scale) <= 0.0005 * scale + 0.05  # cpu_s rounded to 1 ms
    assert r["meets_bar"] == (r["wall_s_per_1000_nodes_24h"] <= r["bar_s"])
    assert r["uplinks"] > 0 and 0.9 <= r["delivery_ratio"] <= 1.0
    # the same run in this process: the bench measured the run it says it did
    sc = sc_mod.load(ROOT / "simulator" / "scenarios" / "city.toml")
    opts = runner.RunOptions(nodes_scale=min(1.0, 40 / len(sc.nodes)), hours=0.5, progress=False, workers=2)
    d = runner.run(sc, opts).to_dict()
    assert r["nodes"] == len(runner.prepare(sc, opts).nodes)
    assert (r["lamps"], r["controllers"]) == (d["scenario"]["lamps"], d["scenario"]["controllers"])
    assert r["uplinks"] == d["delivery"]["on_air"] and r["delivery_ratio"] == round(d["delivery"]["ratio"], 4)
