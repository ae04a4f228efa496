# The irrigation app's config checks (firmware/irrigation.py's check): the
# "irrigation" section's settings and the per-zone ones with their defaults
# and ranges. Boot-only: irrigation.check loads this module for the call and
# drops it again (firmware.unload), so a board does not keep it in its heap.
# Settings and schedule rules: irrigation.py's header comment.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_DAY_MIN = const(1440)
_SCHEDULE_MAX = const(8)
_ZONES_MAX = const(4)

# key: (default, lo, hi)
SETTINGS = {
    "master": (1, 0, 1),  # a master valve is fitted
    "flow_meter": (1, 0, 1),
    "pulses_per_l": (450, 1, 100000),  # YF-S201-class meters: about 450
    "max_run_min": (120, 1, _DAY_MIN),  # CONFIG CFG_MAX_RUN changes it
    "burst_pct": (250, 120, 1000),  # 250: a valve stuck open on a twin zone (200 %) is excess, not burst
    "excess_pct": (30, 10, 500),  # at or above burst_pct - 100 the burst check (faster) always wins
    "leak_dlpm": (5, 1, 10000),  # 0.1 L/min
    "no_flow_s": (60, 10, 900),
    "rain_sensor": (1, 0, 1),
    "supply_sensor": (0, 0, 1),
    "moist_mv_0": (2800, 0, 5000),  # sensor reading at 0 % volumetric water content
    "moist_mv_50": (1400, 0, 5000),  # ... and at 50 % (saturated soil)
    "utc_offset_min": (0, -720, 840),
    "tick_ms": (1000, 100, 5000),
    "battery": (0, 0, 1),  # 1: the node deep-sleeps between events (firmware/battery.py)
    "latch_ms": (0, 0, 500),  # 0: valves held open by current; else latching, driven by pulses this long
}
ZONE_SETTINGS = {
    "flow_dlpm": (100, 1, 50000),  # expected flow, 0.1 L/min
    "moisture": (0, 0, 1),  # a soil-moisture sensor is fitted
    "skip_pct": (25, 0, 100),
    "target_pct": (30, 0, 100),
}


def _ints(where, section, spec):
    out = {}
    for key in section:
        if key not in spec:
            raise ValueError("%s%s: unknown setting" % (where, key))
    for key in spec:
        d, lo, hi = spec[key]
        v = section.get(key, d)
        if v is True or v is False:
            v = int(v)
        if type(v) is not int or v < lo or v > hi:
            raise ValueError("%s%s: %r is not an integer in %d..%d" % (where, key, v, lo, hi))
        out[key] = v
    return out


def check(section, parse_schedule):
    """irrigation.check: `parse_schedule` is irrigation.parse_schedule (this module imports no firmware)."""
    rest = {}
    for k in section:
        if k != "zones" and k != "schedule":
            rest[k] = section[k]
    s = _ints("irrigation.", rest, SETTINGS)
    zones = section.get("zones", [{}] * _ZONES_MAX)
    if type(zones) is not list or not 1 <= len(zones) <= _ZONES_MAX:
        raise ValueError("irrigation.zones: a list of 1..%d zones" % _ZONES_MAX)
    s["zones"] = []
    for i in range(len(zones)):
        if type(zones[i]) is not dict:
            raise ValueError("irrigation.zones[%d]: expected an object" % i)
        z = _ints("irrigation.zones[%d]." % i, zones[i], ZONE_SETTINGS)
        if z["skip_pct"] > z["target_pct"]:
            raise ValueError("irrigation.zones[%d]: skip_pct above target_pct" % i)
        s["zones"].append(z)
    if s["moist_mv_0"] == s["moist_mv_50"]:
        raise ValueError("irrigation.moist_mv_0 and moist_mv_50 must differ")
    if s["battery"] and not s["latch_ms"]:
        # a held valve closes when its current stops, and holding it open drains a cell in days
        raise ValueError("irrigation.battery: needs latching valves (irrigation.latch_ms > 0)")
    flat = []
    for e in section.get("schedule", []):
        if type(e) is not list or len(e) != 4:
            raise ValueError("irrigation.schedule: entries are [zone, weekday mask, start min, minutes]")
        flat.extend(e)
    s["schedule"] = parse_schedule(flat, len(s["zones"])) if flat else []
    if s["schedule"] is None:
        raise ValueError(
            "irrigation.schedule: zone 1..%d, mask 0..127, start 0..1439, minutes 0..1440, "
            "at most %d entries" % (len(s["zones"]), _SCHEDULE_MAX)
        )
    return s
