"""The demo's calendar event (issue 11): a named evening on one street, through the real gateway.

`make demo` writes a lighting calendar into the run's `calendars/` directory before the run
(simulator/services.py makes it the gateway's `[calendars] dir`): on the local date of the
run's first evening, the lamps of the scenario's second street (the first takes the demo's
group command) take the "show" profile, as Lyon
does around the installations of the Fête des Lumières: full power at sunset, off an hour
later, back at 30 % an hour after the night's midpoint, then the node's usual last steps. The
gateway compiles it, sends it to those lamps as CONFIG fragments in their receive windows and
hears each one report the new hash in an EVENT calendar (gateway/calendar_sync.py); the nodes (the real
firmware) follow it that night.

After the run, `event_report` reads the gateway's own log for the nodes that reported the
calendar ("calendar applied") and works out the energy effect from the firmware's schedule
(firmware/lighting.py `schedule`, with and without the calendar, minute by minute over the
event's night, times each lamp's rated power): what the event saves against the lamps' own
profile. Presence boosts during the event are not in that figure (the lamps are off then:
a boost would raise them, the figure is the schedule's).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

FILE = "event.toml"
PROFILE = [["sunset", 0, 100], ["sunset", 60, 0], ["midnight", 60, 30], ["sunrise", -90, 100], ["sunrise", 0, 0]]


def write_event(scenario: Any, out: Path) -> dict[str, Any]:
    """Write the event's calendar for the second street's lamps; what it is, for the report."""
    # the second street: the demo's group command goes to the first (simulator/demo_group.py)
    street = scenario.streets[1] if len(scenario.streets) > 1 else scenario.streets[0]
    lamps = [n for n in scenario.lamps if n.street == street.id]
    tz = scenario.location.tz
    start = dt.datetime.fromtimestamp(scenario.start_unix, tz)
    date = start.date() if start.hour < 20 else start.date() + dt.timedelta(days=1)
    name = f"Light show on {street.name} (a named evening, as at Lyon's Fête des Lumières)"
    zone = getattr(tz, "key", None) or "UTC"
    d = out / "calendars"
    d.mkdir(parents=True, exist_ok=True)
    text = [
        "# Written by `lumeau demo` (simulator/demo_calendar.py): the gateway's [calendars] dir.",
        'kind = "lighting"',
        f"timezone = {json.dumps(zone)}",
        f"title = {json.dumps(name, ensure_ascii=False)}",
        "nodes = [" + ", ".join(f'"{n.node_id:08x}"' for n in lamps) + "]",
        "",
        "[profiles]",
        f"show = {json.dumps(PROFILE)}",
        "",
        "[[rules]]",
        f"name = {json.dumps(name, ensure_ascii=False)}",
        f'dates = ["{date.isoformat()}", "{date.isoformat()}"]',
        'profile = "show"',
    ]
    (d / FILE).write_text("\n".join(text) + "\n", encoding="utf-8")
    return {"name": name, "street": street.id, "date": date.isoformat(), "nodes": [n.node_id for n in lamps]}


def _night_wh(scenario: Any, lamp: Any, date: dt.date, held: bytes | None) -> float:
    """Wh of one lamp over the night that starts on `date`, by the firmware's schedule."""
    from firmware.lighting import Lighting
    from simulator.hal_sim import SimHAL, StepClock

    noon = int(dt.datetime.combine(date, dt.time(12), dt.UTC).timestamp())

    class Node:
        schedule: list[Any] = [held, []]

    app = Lighting(
        {"location": {"lat": lamp.lat, "lon": lamp.lon}, "lighting": {}},
        SimHAL(StepClock(noon), time_known=True),
        Node(),
    )
    pct_min = sum(app.schedule(t)[1] for t in range(noon, noon + 86400, 60))
    return lamp.rated_power_w * pct_min / 100 / 60


def event_report(scenario: Any, out: Path, event: dict[str, Any]) -> dict[str, Any]:
    """Which nodes took the calendar (the gateway's log) and the energy it changed."""
    from gateway.calendars import load

    cal = load(out / "calendars" / FILE)
    applied: set[int] = set()
    fragments = 0
    try:
        lines = (out / "gateway.log").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for ln in lines:
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if rec.get("msg") == "calendar applied" and rec.get("hash") == cal.hash.hex():
            applied.add(int(rec.get("node", "0"), 16))
        elif str(rec.get("msg", "")).startswith("calendar fragment"):
            fragments += 1
    date = dt.date.fromisoformat(event["date"])
    lamps = {n.node_id: n for n in scenario.lamps}
    own = show = 0.0
    for nid in sorted(applied):
        own += _night_wh(scenario, lamps[nid], date, None)
        show += _night_wh(scenario, lamps[nid], date, cal.hash + cal.blob)
    return {
        **event,
        "nodes": [f"{n:08x}" for n in event["nodes"]],
        "calendar_hash": cal.hash.hex(),
        "calendar_bytes": len(cal.blob),
        "fragments_per_node": len(cal.fragments()),
        "fragments_queued": fragments,
        "applied": [f"{n:08x}" for n in sorted(applied)],
        "night_kwh_own_profile": round(own / 1000, 3),
        "night_kwh_with_event": round(show / 1000, 3),
        "night_kwh_saved": round((own - show) / 1000, 3),
    }


def summary(r: dict[str, Any]) -> str:
    return (
        f"  calendar event: {r['name']} on {r['date']}: {len(r['applied'])} of {len(r['nodes'])} lamps of "
        f"{r['street']} took the calendar ({r['calendar_bytes']} B, {r['fragments_per_node']} CONFIG fragments each, "
        f"{r['fragments_queued']} queued in all, hash {r['calendar_hash']}); that night "
        f"{r['night_kwh_with_event']:.2f} kWh instead of {r['night_kwh_own_profile']:.2f} "
        f"({r['night_kwh_saved']:.2f} kWh saved by the schedule)"
    )
