"""bench/flash.py runs and prints its JSON object (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.board import MICROPYTHON_MJS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not MICROPYTHON_MJS.exists(), reason="needs node_modules (make setup)")
def test_flash_bench_prints_its_figures():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "flash.py"), "--json", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    r = json.loads(out)
    assert r["files"] > 10 and r["bytes"] > 10_000
    assert r["mpremote_cp_s"] > 0 and r["flash_s"] > 0 and r["reflash_unchanged_s"] > 0
    assert abs(r["flash_vs_cp_ratio"] - r["flash_s"] / r["mpremote_cp_s"]) < 0.01
    assert abs(r["reflash_vs_flash_ratio"] - r["reflash_unchanged_s"] / r["flash_s"]) < 0.01
