"""bench/outage.py at 20,000 frames: an upstream outage under the queue bound, then the drain (issue 15, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

FRAMES, BOUND, ALARM_EVERY = 20_000, 15_000, 100


def test_an_outage_keeps_memory_flat_follows_the_bound_and_drains_in_per_node_order(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "outage.py"),
            "--json",
            "--frames",
            str(FRAMES),
            "--nodes",
            "200",
            "--max-records",
            str(BOUND),
            "--alarm-every",
            str(ALARM_EVERY),
            "--drain-timeout",
            "300",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    r = json.loads(out)
    assert r["accepted"] == FRAMES and r["rejected"] == 0
    # the upstream was down throughout the ingest: nothing delivered, the bound held by evicting routine records
    assert r["sent_during_outage"] == 0 and r["refused_while_down"] >= 1
    assert r["records_queued_peak"] == BOUND and r["evicted_total"] == FRAMES - BOUND
    # alarms are never evicted: every one arrives
    assert r["alarms_sent"] == FRAMES // ALARM_EVERY == r["alarms_delivered"]
    # the drain: in per-node order, all that was kept (a batch held by the upstream when its records
    # were evicted is still delivered: more, never less)
    assert r["order_violations"] == 0 and r["nodes_delivered"] == 200
    assert BOUND <= r["delivered"] <= FRAMES
    # memory: under the stated bound, and flat once the first tenth is in
    assert r["rss_mb_peak_ingest"] < r["rss_bound_mb"] == 100 and r["rss_mb_peak_drain"] < 100
    tenths = r["rss_mb_by_tenth"]
    assert len(tenths) == 10 and max(tenths) - tenths[1] < 25, tenths
    assert r["drain_records_per_s"] > 0 and r["ingest_frames_per_s"] > 0
