"""The warnings of a run: a scenario the models or the nodes cannot answer for, said before it runs.

Every run collects them (the results' `warnings`, the report, the CLI's
summary); `lumeau sim run --strict` and `lumeau demo --strict` refuse to run
with any (exit 2, as for invalid input). Each is a `{"code", "text"}` dict;
the codes:

- `no_sf_margin`: a node no SF reaches a gateway with `[radio] sf_margin_db`
  of median margin (auto SF: it was given SF12 anyway), or whose fixed SF
  has less; its delivery depends on shadowing draws, not on the design.
- `flow_below_meter`: a zone's design flow (area x application rate) below
  the flow meter's floor, the irrigation app's `leak_dlpm` (0.5 L/min by
  default; a YF-S201-class Hall meter reads nothing useful below it): the
  node cannot tell the zone watering from a stuck valve (no-flow alarm).
  `leak_below_meter`: a `leak` fault slower than that floor, which no node
  can see.
- `gateway_on_node`: a gateway closer than GATEWAY_NEAR_M (horizontally) to
  a node; the path-loss models are empirical fits from tens of metres up and
  clamp below `channel.MIN_DISTANCE_M`, so such a link is not modelled.
- `far_from_origin`: a node or gateway more than FAR_M from the scenario's
  origin (`location.lat/lon`): the flat map (equirectangular around the
  origin), the sun, the weather and the climate are the origin's; usually a
  coordinate in the wrong unit.
- `dates_outside_climate`: run days outside the climate's normals period
  widened by CLIMATE_SLACK_YEARS either side (the normals describe their 30
  years; Europe warmed by about 0.3-0.5 degC a decade since, so beyond that
  the ET0 and rain aimed at are another climate's); `dates_outside_sun`:
  outside SUN_YEARS, the NOAA equations' stated accuracy (simulator/sun.py).
- `short_irrigation`: controllers in a run shorter than
  MIN_IRRIGATION_DAYS: the water saving mostly measures the starting soil
  state (`[irrigation] soil_start`), not the control (simulator/README.md).
- `short_airtime`: a run under one hour: airtime shares against the EU868
  duty cycle are meant over an hour (ETSI EN 300 220-1 observation period);
  the first reports' burst weighs too much in a shorter one.

Nothing here imports the scenario module at run time (scenario.main prints
these warnings too), so the types are named under TYPE_CHECKING.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from firmware.irrigation_cfg import SETTINGS as IRRIGATION_SETTINGS
from simulator import channel as ch

if TYPE_CHECKING:
    from simulator.scenario import Scenario

GATEWAY_NEAR_M = 3.0  # a gateway this close to a node (horizontally) sits on it
FAR_M = 20_000.0  # nodes and gateways beyond this from the origin leave its flat map and climate
CLIMATE_SLACK_YEARS = 30  # a climate's normals stand for their period and this many years either side
# the normals period behind each climate of simulator/weather.py (its CLIMATES comment)
CLIMATE_NORMALS = {"lyon": (1991, 2020), "paris": (1991, 2020), "berlin": (1991, 2020), "seville": (1981, 2010)}
SUN_YEARS = (1800, 2100)  # NOAA solar equations: about 0.01 degree within these (simulator/sun.py)
MIN_IRRIGATION_DAYS = 3.0
MIN_AIRTIME_S = 3600.0
NAMES_SHOWN = 5  # node names listed per warning, then "..."


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > NAMES_SHOWN else "")


def _w(code: str, text: str) -> dict[str, str]:
    return {"code": code, "text": text}


def scenario_warnings(sc: Scenario) -> list[dict[str, str]]:
    """What the scenario's map, radio, meters and dates ask of the models and nodes that they cannot give."""
    return [
        *_radio(sc),
        *_meters(sc),
        *_placement(sc),
        *_dates(sc),
        *_length(sc),
    ]


def _radio(sc: Scenario) -> list[dict[str, str]]:
    probe = sc.channel()
    want = sc.radio.sf_margin_db
    short: list[tuple[str, float, int]] = []
    for n in sc.nodes:
        if sc.radio.sf is None:
            best = probe.best_sf(n.node_id, want)
            if best is None:
                short.append((n.name, probe.margin_db(n.node_id, ch.SF_MAX), ch.SF_MAX))
        else:
            margin = probe.margin_db(n.node_id, n.sf)
            if margin < want:
                short.append((n.name, margin, n.sf))
    if not short:
        return []
    worst = min(short, key=lambda s: s[1])
    how = "no SF reaches" if sc.radio.sf is None else f"SF{sc.radio.sf} (the scenario's) does not reach"
    return [
        _w(
            "no_sf_margin",
            f"{len(short)} node(s) ({_names([s[0] for s in short])}): {how} a gateway with "
            f"{want:g} dB of median margin (worst: {worst[0]}, {worst[1]:.1f} dB at SF{worst[2]}); their delivery "
            "rests on shadowing luck -- move or add a gateway, or check the path-loss model (simulator/README.md)",
        )
    ]


def _meter_floor_l_min(sc: Scenario) -> float:
    fw = sc.irrigation.firmware.get("irrigation", {}) if isinstance(sc.irrigation.firmware, dict) else {}
    dlpm = fw.get("leak_dlpm", IRRIGATION_SETTINGS["leak_dlpm"][0]) if isinstance(fw, dict) else None
    if not isinstance(dlpm, (int, float)):
        dlpm = IRRIGATION_SETTINGS["leak_dlpm"][0]
    return float(dlpm) / 10.0


def _meters(sc: Scenario) -> list[dict[str, str]]:
    floor = _meter_floor_l_min(sc)
    out = []
    low = [(c.name, z.number, z.flow_l_min) for c in sc.controllers for z in c.zones if z.flow_l_min < floor]
    if low:
        slowest = min(low, key=lambda s: s[2])
        out.append(
            _w(
                "flow_below_meter",
                f"{len(low)} zone(s) ({_names([f'{c} zone {z}' for c, z, _f in low])}) flow below the meter's "
                f"floor of {floor:g} L/min (slowest: {slowest[0]} zone {slowest[1]}, {slowest[2]:.2f} L/min): the "
                "controller cannot tell them watering from a stuck valve; a bigger zone, a higher "
                "precip_rate_mm_h or a finer meter (pulses_per_l, leak_dlpm) fixes it",
            )
        )
    for f in sc.faults:
        rate = f.params.get("rate_l_min")
        if f.kind == "leak" and isinstance(rate, (int, float)) and rate < floor:
            out.append(
                _w(
                    "leak_below_meter",
                    f"faults[{f.index}]: a leak of {rate:g} L/min on {f.target} is below the meter's floor of "
                    f"{floor:g} L/min: no node can see it (its water is still counted as lost)",
                )
            )
    return out


def _placement(sc: Scenario) -> list[dict[str, str]]:
    out = []
    for g in sc.gateways:
        near = [n.name for n in sc.nodes if math.hypot(n.x - g.x, n.y - g.y) < GATEWAY_NEAR_M]
        if near:
            out.append(
                _w(
                    "gateway_on_node",
                    f"gateway {g.id} stands within {GATEWAY_NEAR_M:g} m of {_names(near)}: the path-loss models "
                    "are fitted from tens of metres up, so that link is not modelled (its margin is flattering)",
                )
            )
    far = [n.name for n in sc.nodes if math.hypot(n.x, n.y) > FAR_M]
    far += [f"gateway {g.id}" for g in sc.gateways if math.hypot(g.x, g.y) > FAR_M]
    if far:
        out.append(
            _w(
                "far_from_origin",
                f"{_names(far)}: more than {FAR_M / 1000:g} km from the map's origin (location.lat/lon): the flat "
                "map, the sun, the weather and the climate are the origin's; are the coordinates in metres?",
            )
        )
    return out


def _dates(sc: Scenario) -> list[dict[str, str]]:
    first = sc.start.year
    last = _dt.datetime.fromtimestamp(sc.end_unix, _dt.UTC).year
    out = []
    normals = CLIMATE_NORMALS.get(sc.location.climate)
    if normals is not None:
        lo, hi = normals[0] - CLIMATE_SLACK_YEARS, normals[1] + CLIMATE_SLACK_YEARS
        if first < lo or last > hi:
            out.append(
                _w(
                    "dates_outside_climate",
                    f"the run ({first}" + (f"-{last}" if last != first else "") + f") is outside {lo}-{hi}: the "
                    f"{sc.location.climate} climate is the {normals[0]}-{normals[1]} normals, which stand for "
                    f"{CLIMATE_SLACK_YEARS} years either side at most; its ET0 and rain are another era's",
                )
            )
    if first < SUN_YEARS[0] or last > SUN_YEARS[1]:
        out.append(
            _w(
                "dates_outside_sun",
                f"the run's years ({first}-{last}) are outside {SUN_YEARS[0]}-{SUN_YEARS[1]}, where the NOAA "
                "solar equations are good to 0.01 degree: sunset, sunrise and night lengths may be off",
            )
        )
    return out


def _length(sc: Scenario) -> list[dict[str, str]]:
    out = []
    days = sc.duration_s / 86400.0
    if sc.controllers and days < MIN_IRRIGATION_DAYS:
        out.append(
            _w(
                "short_irrigation",
                f"a run of {days * 24:g} h is too short for its irrigation result to mean anything (under "
                f"{MIN_IRRIGATION_DAYS:g} days the water saving mostly measures the starting soil state, "
                "[irrigation] soil_start): run a week or more, and several seeds (--seeds)",
            )
        )
    if sc.duration_s < MIN_AIRTIME_S:
        out.append(
            _w(
                "short_airtime",
                f"a run of {sc.duration_s / 60:g} min: airtime shares of the EU868 duty cycle are meant over an hour "
                "(ETSI EN 300 220-1); over a shorter run the first reports weigh too much",
            )
        )
    return out


def summary_lines(warnings: Sequence[dict[str, Any]]) -> list[str]:
    """The warnings as the CLI prints them, one line each."""
    return [f"  warning: {w['text']} [{w['code']}]" for w in warnings]
