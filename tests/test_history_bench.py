"""bench/history.py runs and prints one JSON object; its rates are checked against the CPU measured here."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from conftest import ROOT


def test_history_bench_prints_its_figures():
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "history.py"),
            "--json",
            "--frames",
            "600",
            "--nodes",
            "20",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # the bench process's, seen from here
    r = json.loads(out)
    rates = [r[f"{v}_frames_per_cpu_s"] for v in ("observer_none", "downlinks", "downlinks_history")]
    # measured here, not by the bench: each variant's 600 frames cost less CPU than the whole process
    assert all(x >= 600 / cpu for x in rates)
    # the ratios are derived from the rates reported (both rounded)
    assert abs(r["history_cost_ratio"] - rates[1] / rates[2]) < 0.01
    assert abs(r["downlinks_cost_ratio"] - rates[0] / rates[1]) < 0.01
    assert r["history_entries"] == 600  # 30 frames per node: every one kept
    assert 0 < r["history_add_us"] and 0 < r["history_add_encode_us"] and 40 < r["bytes_per_entry"] < 200
