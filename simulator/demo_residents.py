"""Residents' reports in the demo (issue 13): after a live run, simulated residents report
some of the injected faults to the city platform through Open311, and one reports a fault
that is not there. Each report's verdict is the platform's own, from its nodes' state.

    reports = resident_reports(scenario, out)   # after the run: out/ holds sink.db, nodes.toml

`resident_reports` starts `lumeau sink` again on the run's database (with the registry, so
it knows where the nodes stand) and a key of its own for Open311, files the reports as any
GeoReport v2 client would (POST requests.json, form-encoded), reads each request back (GET
requests/{id}.json: its `lumeau_verdict`), and stops the sink. What a resident sees:

- a lamp that failed (`lamp_failure`, dark) -> "lamp_out" a few metres from it;
- a lamp that cycles (`lamp_failure` with mode cycling) -> "lamp_flickering";
- a leak or a burst in a park -> "water_leak" at the controller; a valve stuck open ->
  "broken_sprinkler";
- a mistaken resident -> "lamp_out" at the lamp farthest from every faulty one (no fault there);
- a resident past the district's edge -> "lamp_out" NOWHERE_M north of its northernmost node
  (no lamp of ours there: "no_device", the city's other services' case).

Reports go in the order of the scenario's faults, at most MAX_REAL of them, then the mistaken
one. They are filed when the run ends, so the verdict reads the nodes' state then, as a
platform reads it when a resident writes the next morning. The verdict expected
(`expected`): "confirmed" where the fault still holds at the end of the run;
"device_normal" (a field check) for the mistaken report, for a fault that ended before
(the demo's leak lasts an hour), and for a cycling lamp when the run ends by day (it cycles
only while lit, and the node clears its alarm when it stops).
"""

from __future__ import annotations

import json
import math
import secrets
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from simulator.services import Http, SinkProcess

MAX_REAL = 5
NOWHERE_M = 400.0
OFFSET_M = 8.0  # a resident stands on the pavement, not at the pole: the report is this far north
M_PER_DEG = 111_320.0
SERVICE_OF = {"leak": "water_leak", "burst": "water_leak", "stuck_valve": "broken_sprinkler"}


def _moved(lat: float, lon: float, north_m: float) -> tuple[float, float]:
    return lat + north_m / M_PER_DEG, lon


def _distance_m(a: Any, b: Any) -> float:
    dy = (a.lat - b.lat) * M_PER_DEG
    dx = (a.lon - b.lon) * M_PER_DEG * math.cos(math.radians(a.lat))
    return math.hypot(dx, dy)


def plan_reports(sc: Any, end_s: float | None = None) -> list[dict[str, Any]]:
    """The reports the demo's residents file at `end_s` (default: the scenario's end): what, where,
    and the verdict a resident should get (see the module docstring)."""
    end_s = sc.duration_s if end_s is None else end_s
    by_day = _sun_up(sc, end_s)
    nodes = {n.name: n for n in sc.nodes}
    out: list[dict[str, Any]] = []
    faulty = []
    for f in sc.faults.faults:
        node = nodes.get(f.target)
        if node is None:
            continue
        if f.kind == "lamp_failure":
            service = "lamp_flickering" if f.params.get("mode") == "cycling" else "lamp_out"
        elif f.kind in SERVICE_OF:
            service = SERVICE_OF[f.kind]
        else:
            continue
        faulty.append(node)
        holds = f.end_s is None or f.end_s >= end_s
        if service == "lamp_flickering" and by_day:
            holds = False
        if len(out) < MAX_REAL:
            out.append({"fault": f"{f.kind} {f.target}", "service_code": service, "node": node, "holds": holds})
    lamps = [n for n in sc.lamps if n not in faulty]
    if lamps:
        far = max(lamps, key=lambda n: min((_distance_m(n, x) for x in faulty), default=0.0))
        out.append({"fault": f"none (a mistaken report near {far.name})", "service_code": "lamp_out", "node": far})
    for r in out:
        r["expected"] = "confirmed" if r.get("holds") else "device_normal"
    north = max(sc.nodes, key=lambda n: n.lat)
    out.append(
        {
            "fault": f"none ({NOWHERE_M:.0f} m north of {north.name}, past the district)",
            "service_code": "lamp_out",
            "node": north,
            "north_m": NOWHERE_M,
            "expected": "no_device",
        }
    )
    return out


def _sun_up(sc: Any, t_s: float) -> bool:
    from simulator import sun

    lat, lon = sc.location.lat, sc.location.lon
    return sun.elevation_deg(lat, lon, sc.start_unix + t_s) > 0


def resident_reports(sc: Any, out: Path, end_s: float | None = None) -> list[dict[str, Any]]:
    """File the planned reports with the platform and read back each verdict (see the module doc)."""
    out = Path(out)
    keys = out / "open311.keys"
    key = "demo-residents-" + secrets.token_hex(8)
    keys.write_text(key + "\n", encoding="utf-8")
    keys.chmod(0o600)
    sink = SinkProcess(
        out / "sink.db",
        out / "sink.token",
        out / "sink-residents.log",
        nodes=out / "nodes.toml",
        extra=["--open311-keys", str(keys)],
    )
    sink.start()
    done: list[dict[str, Any]] = []
    try:
        http = Http(sink.url, (out / "sink.token").read_text(encoding="utf-8").strip())
        for i, plan in enumerate(plan_reports(sc, end_s)):
            node = plan["node"]
            lat, lon = _moved(node.lat, node.lon, plan.get("north_m", OFFSET_M))
            form = {
                "api_key": key,
                "service_code": plan["service_code"],
                "lat": f"{lat:.6f}",
                "long": f"{lon:.6f}",
                "description": f"Resident {i + 1}: {plan['service_code'].replace('_', ' ')} here",
                "email": f"resident{i + 1}@example.org",  # kept while open, never published
            }
            req = urllib.request.Request(
                sink.url + "/open311/v2/requests.json",
                data=urllib.parse.urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                filed = json.loads(r.read())[0]
            [got] = http.json(f"/open311/v2/requests/{filed['service_request_id']}.json", timeout=30)
            done.append(
                {
                    "fault": plan["fault"],
                    "service_code": plan["service_code"],
                    "near": node.name if "north_m" not in plan else f"{plan['north_m']:.0f} m N of {node.name}",
                    "request": filed["service_request_id"],
                    "verdict": got.get("lumeau_verdict"),
                    "expected": plan["expected"],
                    "notice": filed.get("service_notice") or "",
                    "reports_on_request": got.get("lumeau_reports"),
                }
            )
    finally:
        sink.stop()
        keys.unlink(missing_ok=True)
    return done


def summary(reports: list[dict[str, Any]]) -> str:
    ok = sum(r["verdict"] == r["expected"] for r in reports)
    head = "  residents' reports (Open311; verdicts by the platform, from its nodes' state):"
    lines = [f"{head} {ok}/{len(reports)} as expected"]
    for r in reports:
        lines.append(
            f"    {r['service_code']:<16} near {r['near']:<22} fault: {r['fault']} -> {r['verdict']}"
            + ("" if r["verdict"] == r["expected"] else f" (expected {r['expected']})")
        )
    return "\n".join(lines)
