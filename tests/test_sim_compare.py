"""`lumeau sim compare` and `lumeau sim run --json --no-wall-clock` (issue 18: runs easy to compare)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

from simulator import compare

SMALL = """
[scenario]
name = "small"
seed = 3
start = 2026-06-15T18:00:00Z
duration = "2h"

[location]
lat = 45.7578
lon = 4.8320
timezone = "Europe/Paris"

[[gateways]]
id = "gw"
x = 0.0
y = 0.0

[[streets]]
id = "rue"
points = [[-50, 10], [50, 10]]
lamps = 3
"""


def lumeau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_two_runs_of_one_seed_print_the_same_json_without_wall_clock(tmp_path):
    sc = tmp_path / "small.toml"
    sc.write_text(SMALL)
    a = lumeau("run", str(sc), "--json", "--no-wall-clock", "--no-progress")
    b = lumeau("run", str(sc), "--json", "--no-wall-clock", "--no-progress")
    assert a.returncode == b.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    doc = json.loads(a.stdout)
    assert "run" not in doc and doc["scenario"]["name"] == "small"
    # with the wall clock the outputs differ in the `run` section only
    c = json.loads(lumeau("run", str(sc), "--json", "--no-progress").stdout)
    assert c.pop("run")["wall_s"] > 0 and c == doc
    # another seed is another run, and compare says where
    (tmp_path / "a.json").write_text(a.stdout)
    other = lumeau("run", str(sc), "--json", "--seed", "4", "--no-progress")
    (tmp_path / "b.json").write_text(other.stdout)
    same = lumeau("compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert same.returncode == 0 and same.stdout.rstrip().endswith(f"0 of {len(compare.FIGURES)} figures differ (*)")
    png = tmp_path / "cmp.png"
    diff = lumeau("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--plot", str(png))
    assert diff.returncode == 0, diff.stderr
    seed_line = next(ln for ln in diff.stdout.splitlines() if "run: seed" in ln)
    assert seed_line.startswith("*") and seed_line.split()[-3:] == ["3", "4", "+1"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alone = lumeau("run", str(sc), "--no-wall-clock")
    assert alone.returncode == 2 and "goes with --json" in alone.stderr


def test_compare_names_a_bad_file_and_exits_2(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"scenario": {"name": "x"}, "delivery": {"ratio_pct": 99.0}}))
    for name, text, why in (
        ("missing.json", None, "cannot read"),
        ("text.json", "not json", "not JSON"),
        ("list.json", "[1, 2]", "not a simulator results object"),
    ):
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        r = lumeau("compare", str(good), str(p))
        assert r.returncode == 2 and name in r.stderr and why in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_compare_shows_what_an_older_file_lacks_as_a_dash():
    old = {"scenario": {"name": "x", "seed": 1, "hours": 1}, "delivery": {"ratio_pct": 99.0}}
    new = {
        "scenario": {"name": "x", "seed": 1, "hours": 1},
        "delivery": {"ratio_pct": 98.0},
        "water": {"saved_pct": 12.5},
    }
    text = compare.table(old, new)
    line = next(ln for ln in text.splitlines() if "water: saved by the control, %" in ln)
    assert line.startswith("*") and line.split()[-2:] == ["-", "12.5"]
    stored = next(ln for ln in text.splitlines() if "uplinks stored" in ln)
    assert stored.split()[-1] == "-1.00"
