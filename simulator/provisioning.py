"""The provisioning of a simulated node: the config file a technician's tool would write for it.

`firmware_config(sc, node, freq_hz)` gives the JSON (as a dict) that
`firmware.config.load` checks at boot: node id, kind, a per-node root key
derived from the run's seed (`root_key`), radio (type "sim" on one of the
scenario's channels at the node's SF), location, report interval, the app's
section, with the scenario's `[lighting.firmware]` / `[irrigation.firmware]`
tables merged in (deep). simulator/runner.py's docstring says how a run uses it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import math
from typing import Any

from firmware import irrigation as fw_irrigation
from firmware import lighting as fw_lighting
from simulator.scenario import IrrigationNode, LampNode, Scenario
from simulator.world import local_standard_offset_min

# each app's tick: the coarsest its own config allows (simulator/runner.py says why)
SIM_TICK_MS = {"lighting": fw_lighting.SETTINGS["tick_ms"][2], "irrigation": fw_irrigation.SETTINGS["tick_ms"][2]}
APPS = {"lighting": fw_lighting.Lighting, "irrigation": fw_irrigation.Irrigation}


def root_key(seed: int, node_id: int) -> bytes:
    """The node's provisioned root key: per node, derived from the run's seed (never printed)."""
    return hmac.new(f"lumeau-sim-keys:{seed}".encode(), node_id.to_bytes(4, "big"), hashlib.sha256).digest()[:16]


def _merge(into: dict[str, Any], over: Any) -> dict[str, Any]:
    for k, v in dict(over).items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k] = _merge(dict(into[k]), v)
        else:
            into[k] = v
    return into


def zone_thresholds(zone: Any) -> tuple[int, int]:
    """(skip_pct, target_pct) of a zone's moisture probe, from its soil and crop (FAO-56).

    Skip watering while the root zone still holds more than half its readily
    available water (deficit below RAW / 2: the turf is far from stress even
    if the next watering is a day away); water up to a point below field
    capacity (what the soil can hold; above it water drains away).
    """
    zr_mm = 1000.0 * zone.crop.zr_m
    raw_mm = zone.crop.p * (zone.soil.theta_fc - zone.soil.theta_wp) * zr_mm
    skip = math.ceil(100.0 * (zone.soil.theta_fc - 0.5 * raw_mm / zr_mm))
    target = max(skip, int(100.0 * zone.soil.theta_fc) - 1)
    return skip, target


def firmware_config(sc: Scenario, node: LampNode | IrrigationNode, freq_hz: int) -> dict[str, Any]:
    """The provisioned config file (as a dict) of one simulated node."""
    kind = node.kind
    settings = sc.lighting if kind == "lighting" else sc.irrigation
    cfg: dict[str, Any] = {
        "node_id": node.node_id,
        "kind": kind,
        "root_key": root_key(sc.seed, node.node_id).hex(),
        "radio": {
            "type": "sim",
            "freq_hz": freq_hz,
            "sf": node.sf,
            "bw_hz": sc.radio.params.bw_hz,
            "tx_power": int(round(sc.radio.params.tx_power_dbm)),
        },
        "location": {"lat": round(node.lat, 6), "lon": round(node.lon, 6)},
        "report_interval_s": int(round(settings.report_interval_s)),
        "key_fresh": True,  # a new key per run, as `lumeau node provision` marks it (SPEC §4)
    }
    if isinstance(node, LampNode):
        cfg["lighting"] = {"power_w": int(round(node.rated_power_w)), "tick_ms": SIM_TICK_MS["lighting"]}
    else:
        local = sc.start.astimezone(sc.location.tz)
        dst = local.dst()
        dst_min = int(dst.total_seconds() // 60) if dst else 0
        zones = []
        for z in node.zones:
            skip, target = zone_thresholds(z)
            zones.append(
                {
                    "flow_dlpm": max(1, int(round(z.flow_l_min * 10))),
                    "moisture": 1,
                    "skip_pct": skip,
                    "target_pct": target,
                }
            )
        minutes = max(1, int(round(node.schedule.minutes_per_zone)))
        local_unix = sc.start_unix + (local.utcoffset() or _dt.timedelta(0)).total_seconds()
        mask = _weekday_mask(node.schedule.every_days, local_unix)
        # all zones at the program's start: the firmware queues runs due together, one after the other
        start_std = (node.schedule.start_min - dst_min) % 1440
        cfg["irrigation"] = {
            "tick_ms": SIM_TICK_MS["irrigation"],
            "utc_offset_min": local_standard_offset_min(sc.location.tz, sc.start_unix),
            "zones": zones,
            "schedule": [[z.number, mask, start_std, minutes] for z in node.zones],
        }
        if sc.battery is not None:  # deep sleep between events, latching valves (firmware/battery.py)
            cfg["irrigation"].update(battery=1, latch_ms=int(sc.battery["latch_ms"]))
            cfg["status_interval_s"] = int(sc.battery["status_interval_s"])
    return _merge(cfg, settings.firmware)


def _weekday_mask(every_days: int, local_unix: float) -> int:
    """The program's days as a weekday mask (bit 0 Monday), as the firmware schedules.

    Every day is 127; every 7 days the weekday of the run's first watering
    day. Other periods have no weekly equivalent: the days of the run's first
    week on which (day number % every_days == 0), an approximation for runs
    longer than a week.
    """
    if every_days == 1:
        return 127
    day0 = int(local_unix // 86400)
    mask = 0
    for d in range(day0, day0 + 7):
        if d % every_days == 0:
            mask |= 1 << ((d + 3) % 7)  # 1970-01-01 was a Thursday
    return mask or 127
