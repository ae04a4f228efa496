"""bench/gateway.py runs end to end (real sink processes); what reached the sink is read from its database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from conftest import ROOT


def test_gateway_bench_prints_its_figures(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gateway.py"),
            "--json",
            "--frames",
            "600",
            "--nodes",
            "50",
            "--batch",
            "100",
            "--keep",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    r = json.loads(out)
    # Not the bench's word for it: what the sink stored, read from its database. The bench sends
    # frames round robin, 12 per node: every (node, counter) once, of the node's kind.
    c = sqlite3.connect(tmp_path / "lumeau_sink" / "sink.db")
    try:
        stored = c.execute("SELECT node, counter, type FROM records").fetchall()
    finally:
        c.close()
    assert sorted(stored) == sorted(
        (f"{n:08x}", k, "light" if n % 3 else "irrigation") for n in range(1, 51) for k in range(1, 13)
    )
    assert r["frames"] == 600 and r["receptions"] > 600 and r["floor_frames_per_s"] > 0
    for name in ("lumeau_sink", "null_sink"):
        run = r[name]
        # every frame went through: stored once, every copy counted, all delivered upstream
        assert run["accepted"] == 600 and run["duplicates"] == r["receptions"] - 600 and run["rejected"] == 0
        assert run["upstream_records_sent"] == 600
        assert abs(run["cost_ratio"] - r["floor_frames_per_s"] / run["end_to_end_frames_per_s"]) < 0.05
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    # measured as `lumeau gateway` runs: the downlinks and the history behind the pipeline, /3 upstream
    assert r["wiring"] == "service" and r["native_version"] == 3
    assert {"admit_total", "observers", "store_append_commit", "native_json", "gzip"} <= set(
        r["cpu_us_per_frame_by_stage"]
    )
    sizes = r["request_bytes_per_record"]
    assert 0 < sizes["gzip"] < sizes["json"]
