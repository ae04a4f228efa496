"""The saving the control earns, apart from what faults did: the results' energy and water.

A burst pipe latches its controller shut (firmware/irrigation.py), so its
zones stop watering until a person comes; a dead lamp draws nothing. Set
against a baseline that waters and lights regardless, both look like
savings, and they are the opposite: value destroyed. So the headline saving
is computed over the node-time no fault affected (simulator/ledger.py says
which: a lamp under a lamp_failure; a zone with a burst or stuck valve, or
whose controller is latched), leaving that time out of BOTH sums:

    control saving = (baseline - used) over every lamp's / zone's unaffected time
    control %      = that / the baseline over the same time

With no fault injected nothing is left out and the control saving is the
plain one (baseline - used over the whole run). What the faults did is
listed apart, as value destroyed and service lost:

- lighting: dark lamp-hours (a lamp commanded lit that gave no light), the
  energy a failed lamp did not draw (not a saving) and what an
  over-current lamp wasted;
- irrigation: water lost to leaks and bursts (through the meter, not onto
  the turf), water the fixed schedule would have given the fault-affected
  zones that they did not get, and zone-hours of turf stress (FAO-56
  Ks < 1: the root zone past its readily available water) while affected.

The gross figures (baseline - used over everything) stay in the results as
`gross_saved_*`, named for what they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simulator.baseline import IrrigationBaseline, LightingBaseline, irrigation_baseline, night_hours
from simulator.ledger import finished


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def energy_section(
    sc: Any, accounts: Mapping[str, Mapping[str, Any]], used_kwh: float, lb: LightingBaseline, reported_kwh: float
) -> dict[str, Any]:
    """The results' `energy`: the control's saving (headline), the gross one, the faults' effects."""
    end = sc.end_unix
    excl_base_kwh = 0.0
    excl_lamp_h = 0.0
    excl_used_kwh = 0.0
    dark_h = 0.0
    not_drawn = 0.0
    wasted = 0.0
    lamps_affected = 0
    for lamp in sc.lamps:
        led = (accounts.get(lamp.name) or {}).get("lamp")
        if not led or not led["fault_intervals"]:
            continue
        lamps_affected += 1
        h = sum(night_hours(lamp.lat, lamp.lon, a, b) for a, b in finished(led["fault_intervals"], end))
        excl_lamp_h += h
        excl_base_kwh += lamp.rated_power_w * h / 1000.0
        excl_used_kwh += led["fault_wh"] / 1000.0
        dark_h += led["dark_s"] / 3600.0
        diff = (led["fault_wh"] - led["healthy_fault_wh"]) / 1000.0
        if diff < 0:
            not_drawn -= diff
        else:
            wasted += diff
    base = lb.kwh - excl_base_kwh
    used = used_kwh - excl_used_kwh
    gross = lb.kwh - used_kwh
    return {
        # the headline: the control's own saving, fault-affected lamp-time left out of both sums
        "kwh": used,
        "baseline_kwh": base,
        "saved_kwh": base - used,
        "saved_pct": 100.0 * _ratio(base - used, base),
        "coverage": _ratio(lb.lamp_hours - excl_lamp_h, lb.lamp_hours),
        # everything, faults included
        "total_kwh": used_kwh,
        "total_baseline_kwh": lb.kwh,
        "gross_saved_kwh": gross,
        "gross_saved_pct": 100.0 * _ratio(gross, lb.kwh),
        "lamp_hours_baseline": lb.lamp_hours,
        "reported_kwh": reported_kwh,
        "faults": {
            "lamps_affected": lamps_affected,
            "excluded_lamp_hours": excl_lamp_h,
            "excluded_baseline_kwh": excl_base_kwh,
            "excluded_kwh": excl_used_kwh,
            "dark_lamp_hours": dark_h,
            "not_drawn_kwh": not_drawn,
            "wasted_kwh": wasted,
        },
    }


def zone_exclusions(sc: Any, accounts: Mapping[str, Mapping[str, Any]]) -> dict[str, list[list[tuple[float, float]]]]:
    """Controller name -> per zone the fault-affected intervals (for irrigation_baseline's exclude)."""
    out = {}
    for c in sc.controllers:
        zones = (accounts.get(c.name) or {}).get("zones") or []
        ivs = [finished(z["affected"], sc.end_unix) for z in zones]
        if any(ivs):
            out[c.name] = ivs
    return out


def water_section(
    sc: Any,
    accounts: Mapping[str, Mapping[str, Any]],
    weather: Any,
    meter_l: float,
    applied_l: float,
    reported_l: float,
) -> dict[str, Any]:
    """The results' `water`: the control's saving (headline), the gross one, the faults' effects."""
    start, end = sc.start_unix, sc.end_unix
    exclude = zone_exclusions(sc, accounts)
    ib: IrrigationBaseline = irrigation_baseline(sc.controllers, start, end, sc.location.tz, weather, exclude)
    clean_l = affected_l = 0.0
    stress_clean_s = stress_affected_s = 0.0
    affected_zone_s = 0.0
    zones_affected = 0
    for c in sc.controllers:
        for z in (accounts.get(c.name) or {}).get("zones") or []:
            clean_l += z["applied_clean_l"]
            affected_l += z["applied_affected_l"]
            stress_clean_s += z["stress_clean_s"]
            stress_affected_s += z["stress_affected_s"]
            ivs = finished(z["affected"], end)
            if ivs:
                zones_affected += 1
                affected_zone_s += sum(b - a for a, b in ivs)
    base = ib.m3 - ib.excluded_m3
    used = clean_l / 1000.0
    lost = (meter_l - applied_l) / 1000.0
    gross = ib.m3 - meter_l / 1000.0
    zone_s = ib.zones * (end - start)
    return {
        # the headline: water applied by the control against the schedule, fault-affected zone-time left out
        "m3": used,
        "baseline_m3": base,
        "saved_m3": base - used,
        "saved_pct": 100.0 * _ratio(base - used, base),
        "coverage": _ratio(zone_s - affected_zone_s, zone_s),
        "stress_zone_hours": stress_clean_s / 3600.0,
        "baseline_stress_zone_hours": ib.stress_zone_h,
        # everything, faults included
        "total_m3": meter_l / 1000.0,
        "applied_m3": applied_l / 1000.0,
        "total_baseline_m3": ib.m3,
        "gross_saved_m3": gross,
        "gross_saved_pct": 100.0 * _ratio(gross, ib.m3),
        "baseline_runs": ib.runs,
        "baseline_wasted_m3": ib.wasted_m3,
        "lost_m3": lost,
        "reported_m3": reported_l / 1000.0,
        "faults": {
            "zones_affected": zones_affected,
            "affected_zone_hours": affected_zone_s / 3600.0,
            "lost_m3": lost,
            "baseline_m3_while_affected": ib.excluded_m3,
            "applied_m3_while_affected": affected_l / 1000.0,
            "not_delivered_m3": max(0.0, ib.excluded_m3 - affected_l / 1000.0),
            "stress_zone_hours": stress_affected_s / 3600.0,
        },
    }


def days_section(sc: Any, accounts: Mapping[str, Mapping[str, Any]], weather: Any) -> list[dict[str, Any]]:
    """Per weather day of the run: ET0, rain, Tmin/Tmax, night length, soil water at its start
    and end (mean over the zones, share of the available water), zone-hours of stress."""
    soil: dict[int, list[Any]] = {}
    for c in sc.controllers:
        for d in (accounts.get(c.name) or {}).get("days") or []:
            soil.setdefault(d["day"], []).append(d)
    out = []
    t = sc.start_unix
    while t < sc.end_unix:
        d = weather.day(t)
        nxt = d.start + 86400.0
        lo, hi = max(d.start, sc.start_unix), min(nxt, sc.end_unix)
        recs = soil.get(d.day, [])
        starts = [v for r in recs for v in r["start"]]
        ends = [v for r in recs for v in r["end"]]
        out.append(
            {
                "day": d.day,
                "date": _date(d.day),
                "hours_in_run": round((hi - lo) / 3600.0, 3),
                "et0_mm": round(d.et0_mm, 3),
                "rain_mm": round(weather.rain_mm(d.start, nxt), 3),
                "tmin_c": round(d.tmin_c, 2),
                "tmax_c": round(d.tmax_c, 2),
                # the night that begins this evening (dusk to dawn; polar nights and days as baseline.py)
                "night_h": round(
                    night_hours(sc.location.lat, sc.location.lon, d.sunset - 3600.0, d.sunset + 82800.0), 3
                ),
                "soil_start": round(sum(starts) / len(starts), 4) if starts else None,
                "soil_end": round(sum(ends) / len(ends), 4) if ends else None,
                "stress_zone_hours": round(sum(s for r in recs for s in r["stress_s"]) / 3600.0, 3),
            }
        )
        t = nxt
    return out


def _date(day: int) -> str:
    import datetime as dt

    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
