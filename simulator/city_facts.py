"""What the city platform is told about a scenario's nodes for its ledger (PUT /v1/nodes on `lumeau sink`).

Beside kind, name, site and position (what the registry carries), each
lamp declares its rated power and each irrigation controller its fixed
schedule as the ledger's baseline (city/ledger_db.py): litres a day = the
zones' design flow x minutes per zone / every_days, watered from the
schedule's start for zones x minutes (the window is given only for a daily
schedule; a schedule every n days is spread over its days). The district is
the scenario's name. Its soil-stress threshold is FAO-56's: the moisture at
which the root zone has used its readily available water (Ks < 1, as the
simulator counts stress), `theta_fc - p (theta_fc - theta_wp)`, for the
controller's first zone (a park's zones share soil and crop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def ledger_nodes(sc: Any, ids: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """PUT /v1/nodes items for every lamp and controller of a simulator.scenario.Scenario; `ids`: node
    name -> id as run (a registry's), when they may differ from the scenario's."""
    ids = ids or {}
    out: list[dict[str, Any]] = []
    for lamp in sc.lamps:
        out.append(
            {
                "id": f"{ids.get(lamp.name, lamp.node_id):08x}",
                "kind": "lighting",
                "name": lamp.name,
                "site": lamp.street,
                "lat": lamp.lat,
                "lon": lamp.lon,
                "district": sc.name,
                "rated_power_w": lamp.rated_power_w,
            }
        )
    for c in sc.controllers:
        sch = c.schedule
        baseline: dict[str, Any] = {
            "l_per_day": sum(z.flow_l_min * sch.minutes_per_zone for z in c.zones) / sch.every_days
        }
        if sch.every_days == 1:
            baseline["start"] = f"{sch.start_min // 60:02d}:{sch.start_min % 60:02d}"
            baseline["minutes"] = max(1, round(sch.minutes_per_zone * len(c.zones)))
        out.append(
            {
                "id": f"{ids.get(c.name, c.node_id):08x}",
                "kind": "irrigation",
                "name": c.name,
                "site": c.park,
                "lat": c.lat,
                "lon": c.lon,
                "district": sc.name,
                "baseline": baseline,
                "stress_vwc_pct": round(stress_vwc_pct(c.zones[0]), 2),
            }
        )
    return out


def stress_vwc_pct(zone: Any) -> float:
    """Volumetric soil moisture (%) below which FAO-56 stresses the turf (depletion past RAW)."""
    fc, wp = zone.soil.theta_fc, zone.soil.theta_wp
    return 100.0 * (fc - zone.crop.p * (fc - wp))
