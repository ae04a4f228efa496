"""What state a node is in, in one word, for people: the technician page's colours.

Derived from the node state the store keeps (what the node last said) and
the clock, in one place so every client of the API agrees:

- `alarm`: an alarm (EVENT severity alarm or critical) raised and not cleared;
- `failsafe`: the node said it runs in fail-safe -- a lamp following
  dusk-to-dawn without a valid time, valves shut after a fault: the
  LIGHT state or IRRIGATION faults flag, or an open fail-safe event;
- `silent`: not heard for SILENT_AFTER_S, or never heard since provisioning;
- `ok`: none of these.

A node can be in several at once (`conditions` lists them all, plus
`warning` for an open event of severity warning); `state` is the one that
needs a person first, in that order: alarm, failsafe, silent. A silent node
keeps showing the alarm or fail-safe it last reported: it is still the best
knowledge, and the reason to go and look.

Limit: SILENT_AFTER_S = 2,700 s, three missed reports at the firmware's
default 15-minute interval (firmware/config.py); `[api] silent_after_s`.
"""

from __future__ import annotations

from typing import Any

SILENT_AFTER_S = 2700.0
STATES = ("alarm", "failsafe", "silent", "ok")  # most urgent first

_ALARM_SEVERITIES = frozenset(("alarm", "critical"))
_FAILSAFE_EVENTS = frozenset(("light_failsafe", "irrigation_failsafe"))


def _value(fields: dict[str, Any], name: str) -> Any:
    f = fields.get(name)
    return f.get("value") if isinstance(f, dict) else None


def assess(state: dict[str, Any] | None, now: float, silent_after_s: float = SILENT_AFTER_S) -> dict[str, Any]:
    """{"state": one of STATES, "conditions": [...], "silent_s": seconds since last heard or None}.

    `state` is a node state as `Store.node_state` returns it (None: never heard).
    """
    st = state or {}
    conditions: list[str] = []
    alarms = (
        list((st.get("open_alarms") or {}).values())
        if isinstance(st.get("open_alarms"), dict)
        else list(st.get("open_alarms") or [])
    )
    severities = {_value(a.get("fields", {}), "severity") for a in alarms}
    codes = {_value(a.get("fields", {}), "code") for a in alarms}
    if severities & _ALARM_SEVERITIES:
        conditions.append("alarm")
    readings = st.get("readings") or {}
    light = _value(readings.get("light", {}).get("fields", {}), "state") or []
    faults = _value(readings.get("irrigation", {}).get("fields", {}), "faults") or []
    if codes & _FAILSAFE_EVENTS or "failsafe" in light or "failsafe" in faults:
        conditions.append("failsafe")
    last_seen = st.get("last_seen")
    silent_s = None if last_seen is None else max(0.0, now - last_seen)
    if silent_s is None or silent_s > silent_after_s:
        conditions.append("silent")
    if "warning" in severities:
        conditions.append("warning")
    state_word = next((s for s in STATES if s in conditions), "ok")
    return {"state": state_word, "conditions": conditions, "silent_s": silent_s}
