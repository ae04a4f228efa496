"""How fast `lumeau sink` files a resident's report in a big city: the indexed box against a full scan.

`python bench/open311.py --json [--nodes N] [--reports R] [--baseline-reports B]`

N nodes (default 100,000: lamps on a grid 30 m apart, every tenth an
irrigation controller) in one SQLite file as the sink keeps them; R reports
(default 300) at random positions among them, each through
city/requests_db.submit in its own transaction (match, verdict, duplicate
check, store), as POST requests does. Variants, each on a fresh file:

- `indexed`: what the sink does: candidates from an index range on
  (kind, lat) around the report (requests_db.nodes_of);
- `full_scan`: the baseline: every node read, then matched in Python
  (what a naive server does); about a second a report at 100,000 nodes, so
  it runs the first B reports only (default 10).

`speedup` = indexed ÷ full_scan reports/s, both on the first B reports;
`indexed_reports_per_s` is over all R.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, machine
from city import catalogue, requests_db
from city.db import SCHEMA
from city.matching import NodeInfo

LAT0, LON0 = 48.85, 2.30
STEP_DEG = 30 / 111_195  # about 30 m


def city(n: int) -> list[NodeInfo]:
    side = int(n**0.5) + 1
    out = []
    for i in range(n):
        r, c = divmod(i, side)
        kind = "irrigation" if i % 10 == 9 else "lighting"
        out.append(
            NodeInfo(f"{i + 1:08x}", kind, f"Node {i}", f"Street {r}", LAT0 + r * STEP_DEG, LON0 + c * STEP_DEG * 1.5)
        )
    return out


def reports(nodes: list[NodeInfo], k: int, seed: int = 7) -> list[requests_db.Report]:
    rnd = random.Random(seed)
    codes = [s.code for s in catalogue.SERVICES if s.kind]
    out = []
    for _ in range(k):
        n = rnd.choice(nodes)
        assert n.lat is not None and n.lon is not None
        out.append(
            requests_db.Report(
                rnd.choice(codes), lat=n.lat + rnd.uniform(-1e-4, 1e-4), lon=n.lon + rnd.uniform(-1e-4, 1e-4)
            )
        )
    return out


def run(db: Path, nodes: list[NodeInfo], reps: list[requests_db.Report], scan: bool) -> float:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")  # as city/db.py: each report's commit is on disk
    c.execute("PRAGMA synchronous = FULL")
    c.executescript(SCHEMA)
    c.execute("BEGIN")
    requests_db.put_nodes(c, nodes, 0.0)
    c.execute("COMMIT")
    real = requests_db.nodes_of
    if scan:  # the baseline: every node, filtered in Python (matching.match keeps the right kind and radius)
        requests_db.nodes_of = lambda c, kind, near=None: requests_db.load_nodes(c)
    try:
        t0 = time.perf_counter()
        for rep in reps:
            c.execute("BEGIN IMMEDIATE")
            requests_db.submit(c, rep, 60.0, time.time())
            c.execute("COMMIT")
        return len(reps) / (time.perf_counter() - t0)
    finally:
        requests_db.nodes_of = real
        c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--reports", type=int, default=300)
    ap.add_argument("--baseline-reports", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    nodes = city(a.nodes)
    reps = reports(nodes, a.reports)
    with tempfile.TemporaryDirectory() as tmp:
        indexed = run(Path(tmp) / "i.db", nodes, reps, scan=False)
        first = reps[: a.baseline_reports]
        indexed_first = run(Path(tmp) / "i2.db", nodes, first, scan=False)
        full = run(Path(tmp) / "f.db", nodes, first, scan=True)
    result: dict[str, Any] = {
        "nodes": a.nodes,
        "reports": a.reports,
        "baseline_reports": len(first),
        "indexed_reports_per_s": round(indexed, 1),
        "full_scan_reports_per_s": round(full, 2),
        "speedup": round(indexed_first / full, 1),
        **machine(),
    }
    emit(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
