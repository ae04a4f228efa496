"""The ledger as the city platform computes it after a live run, and how it agrees with the simulator.

    led = platform_ledger(scenario, out)          # after the run: out/ holds sink.db, sink.token, nodes.toml
    agree = agreement(led, results)               # against the results' energy.total_kwh, water.total_m3

`platform_ledger` starts `lumeau sink` again on the run's database (with
the scenario's time zone), tells it each node's rated power and schedule
(simulator/city_facts.py, PUT /v1/nodes), reads GET /ledger/daily.json for
every local day the run touched, stops it, and sums the days. Nothing here
computes a ledger: the figures are the platform's, from its stored records.

Tolerances (`agreement`), and why: energy used within ENERGY_TOL of the
world's truth: the lamps' own counters are whole Wh, measured from their
current, and use before a lamp's first report or after its last is not
seen; water within WATER_TOL of the meters' truth: whole litres, flow
read in pulses, the same blind ends (tests/test_ledger_live.py).
"""

from __future__ import annotations

import json
import tomllib
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from simulator.city_facts import ledger_nodes
from simulator.services import Http, SinkProcess

ENERGY_TOL = 0.02
WATER_TOL = 0.05
SUMMED = (
    "energy_kwh",
    "energy_baseline_kwh",
    "energy_saved_kwh",
    "water_m3",
    "water_baseline_m3",
    "water_saved_m3",
    "eur_saved",
    "kgco2_avoided",
    "dark_lamp_hours",
    "reduced_light_lamp_hours",
    "alarms_repaired",
)


def platform_ledger(sc: Any, out: Path, start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """The platform's daily ledgers over [start, end) (default: the scenario's run) and their sums."""
    out = Path(out)
    start = sc.start_unix if start is None else start
    end = sc.end_unix if end is None else end
    reg = tomllib.loads((out / "nodes.toml").read_text(encoding="utf-8"))
    ids = {e.get("name", ""): int(h, 16) for h, e in reg.get("nodes", {}).items()}
    tz = sc.location.tz
    zone = getattr(tz, "key", None) or "UTC"  # a fixed offset has no IANA name: days in UTC then
    sink = SinkProcess(
        out / "sink.db",
        out / "sink.token",
        out / "sink-ledger.log",
        nodes=out / "nodes.toml",
        extra=["--timezone", zone],
    )
    sink.start()
    try:
        token = (out / "sink.token").read_text(encoding="utf-8").strip()
        req = urllib.request.Request(
            sink.url + "/v1/nodes",
            data=json.dumps({"nodes": ledger_nodes(sc, ids)}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        http = Http(sink.url, token)
        day = datetime.fromtimestamp(start, tz).date()
        last = datetime.fromtimestamp(end - 1, tz).date()
        days = []
        while day <= last:
            days.append(http.json(f"/ledger/daily.json?date={day.isoformat()}", timeout=120))
            day += timedelta(days=1)
    finally:
        code = sink.stop()
    totals = {k: round(sum(d["city"].get(k) or 0 for d in days), 4) for k in SUMMED}
    return {"timezone": zone, "days": days, "totals": totals, "sink_exit": code}


def agreement(led: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """The platform's kWh and m3 against the simulator's truth, with the tolerances."""
    out: dict[str, Any] = {}
    for what, got, truth, tol in (
        ("energy_kwh", led["totals"]["energy_kwh"], results["energy"]["total_kwh"], ENERGY_TOL),
        ("water_m3", led["totals"]["water_m3"], results["water"]["total_m3"], WATER_TOL),
    ):
        diff = (got / truth - 1) if truth else (0.0 if got == 0 else float("inf"))
        out[what] = {
            "platform": got,
            "simulator": round(truth, 4),
            "diff_pct": round(100 * diff, 3),
            "tolerance_pct": 100 * tol,
            "agree": abs(diff) <= tol,
        }
    out["agree"] = all(v["agree"] for v in out.values() if isinstance(v, dict))
    return out


def summary(led: dict[str, Any], agree: dict[str, Any]) -> str:
    t = led["totals"]
    e, w = agree["energy_kwh"], agree["water_m3"]
    return (
        f"  ledger (lumeau sink, from its records; GET /ledger/daily.json, {len(led['days'])} day(s), "
        f"{led['timezone']}): {t['energy_kwh']:.2f} kWh against {t['energy_baseline_kwh']:.2f} kWh baseline, "
        f"{t['water_m3']:.2f} m3 against {t['water_baseline_m3']:.2f} m3; {t['eur_saved']:.2f} EUR and "
        f"{t['kgco2_avoided']:.2f} kgCO2e avoided; {t['dark_lamp_hours']:.1f} dark lamp-h\n"
        f"    against the simulator: energy {e['diff_pct']:+.2f} % (tolerance {e['tolerance_pct']:g} %), "
        f"water {w['diff_pct']:+.2f} % (tolerance {w['tolerance_pct']:g} %): "
        + ("agree" if agree["agree"] else "DISAGREE")
    )
