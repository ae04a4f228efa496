"""bench/flash.py runs and prints its JSON object, checked against a bundle built here and the wall time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator.board import MICROPYTHON_MJS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not MICROPYTHON_MJS.exists(), reason="needs node_modules (make setup)")
def test_flash_bench_prints_its_figures(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "flash.py"), "--json", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    r = json.loads(out)
    # what it flashed is the lighting bundle, built here as `lumeau node build` builds it
    from lumeau import bundle

    b = bundle.build("lighting", "esp32", tmp_path / "bundle")
    assert (r["files"], r["bytes"]) == (len(b.files), sum(f.size for f in b.files))
    assert r["files"] > 10 and r["bytes"] > 10_000
    # measured here, not by the bench: one round (copy, flash, reflash) took less than the whole run
    assert r["mpremote_cp_s"] + r["flash_s"] + r["reflash_unchanged_s"] < wall
    assert r["mpremote_cp_s"] > 0 and r["flash_s"] > 0 and r["reflash_unchanged_s"] > 0
    assert abs(r["flash_vs_cp_ratio"] - r["flash_s"] / r["mpremote_cp_s"]) < 0.01
    assert abs(r["reflash_vs_flash_ratio"] - r["reflash_unchanged_s"] / r["flash_s"]) < 0.01
