"""Faults injected into a simulated run, as data.

A scenario's [[faults]] entries become `Fault` values: when (seconds after the
scenario start), what kind, which target, with what parameters, and for how
long. The runner applies them to the world (a lamp that draws no current, a
flow meter that counts with every valve shut, a gateway switched off...);
this module only parses, validates and answers "what is due / active now".

Kinds, their target and parameters (defaults in brackets):

  lamp_failure     lamp node    mode: "open" (no current) | "over_current" | "cycling" ["open"]
  leak             irrigation   rate_l_min: flow with every valve shut [2.0]
  burst            irrigation   zone: 1..4 [1]; factor: flow over the zone's expected rate [4.0]
  stuck_valve      irrigation   zone: 1..4 [1]; state: "closed" (will not open) | "open" (will not close) ["closed"]
  node_reboot      any node     cause: "power" | "watchdog" | "brownout" ["power"];
                                clock: "lost" | "kept" | "auto" ["auto": lost on a power cut,
                                kept on a watchdog or brownout reset, whose RTC runs on]
  gateway_restart  gateway id   downtime_s [60]
  upstream_outage  "upstream"   (needs duration)

Each fault takes `at` (a TOML date-time, UTC) or `after` (a duration after
the start: "90s", "6h", "2h30m", "1d"), and an optional `duration` (same
syntax) after which it clears (the lamp is repaired, the leak fixed). A
fault without duration lasts to the end of the run, except node_reboot and
gateway_restart, which are events (a gateway restart lasts downtime_s).

`expected` names what the system should report for each fault (an EVENT code
from protocol.messages, or a HELLO reset cause), so the report can match
alarms raised against faults injected. Gateway restarts and upstream outages
raise no node alarm: the check for them is that no record is lost.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import messages as m
from simulator.wording import did_you_mean, duration_text, show

LAMP_FAILURE = "lamp_failure"
LEAK = "leak"
BURST = "burst"
STUCK_VALVE = "stuck_valve"
NODE_REBOOT = "node_reboot"
GATEWAY_RESTART = "gateway_restart"
UPSTREAM_OUTAGE = "upstream_outage"

# kind -> (target class, {param: (type, default, allowed values or range)})
_LAMP_MODES = ("open", "over_current", "cycling")
_CAUSES = {"power": m.RST_POWER_ON, "watchdog": m.RST_WATCHDOG, "brownout": m.RST_BROWNOUT}
KINDS: dict[str, tuple[str, dict[str, tuple]]] = {
    LAMP_FAILURE: ("lighting", {"mode": (str, "open", _LAMP_MODES)}),
    LEAK: ("irrigation", {"rate_l_min": (float, 2.0, (0.1, 1000.0))}),
    BURST: ("irrigation", {"zone": (int, 1, (1, 4)), "factor": (float, 4.0, (1.5, 100.0))}),
    STUCK_VALVE: ("irrigation", {"zone": (int, 1, (1, 4)), "state": (str, "closed", ("closed", "open"))}),
    NODE_REBOOT: ("node", {"cause": (str, "power", tuple(_CAUSES)), "clock": (str, "auto", ("auto", "lost", "kept"))}),
    GATEWAY_RESTART: ("gateway", {"downtime_s": (float, 60.0, (1.0, 86400.0))}),
    UPSTREAM_OUTAGE: ("upstream", {}),
}
_EVENTS = {"open": m.EV_LAMP_FAILURE, "over_current": m.EV_OVER_CURRENT, "cycling": m.EV_CYCLING}


class FaultError(ValueError):
    """A fault entry that cannot be used; `key` is where (e.g. "faults[2].after")."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key = key
        self.why = why


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # seconds after the scenario start
    kind: str
    target: str  # node name, gateway id, or "upstream"
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None  # None: to the end of the run (or an instant, for events)
    index: int = 0  # position in the scenario's [[faults]]

    @property
    def end_s(self) -> float | None:
        if self.kind == GATEWAY_RESTART:
            return self.at_s + float(self.params["downtime_s"])
        if self.kind == NODE_REBOOT:
            return self.at_s
        return None if self.duration_s is None else self.at_s + self.duration_s

    def active(self, t_s: float) -> bool:
        """In effect at t (seconds after start)? Events (reboot) are never 'active'."""
        if self.kind == NODE_REBOOT or t_s < self.at_s:
            return False
        end = self.end_s
        return end is None or t_s < end

    @property
    def expected(self) -> tuple[str, int] | None:
        """("event", EV_*) or ("hello", RST_*) the node should send, None when no node alarm applies."""
        if self.kind == LAMP_FAILURE:
            return ("event", _EVENTS[self.params["mode"]])
        if self.kind == LEAK:
            return ("event", m.EV_LEAK)
        if self.kind == BURST:
            return ("event", m.EV_BURST)
        if self.kind == STUCK_VALVE:
            # Stuck shut: no flow with the valve open. Stuck open behind the master valve (the
            # simulated controllers have one): more flow than the open zone explains while
            # another zone waters (without a master valve it would be a leak, all valves shut).
            return ("event", m.EV_NO_FLOW if self.params["state"] == "closed" else m.EV_EXCESS_FLOW)
        if self.kind == NODE_REBOOT:
            return ("hello", _CAUSES[self.params["cause"]])
        return None

    @property
    def loses_clock(self) -> bool:
        """A node_reboot that leaves the node without wall time (it must get TIME again)."""
        if self.kind != NODE_REBOOT:
            return False
        c = self.params.get("clock", "auto")
        return c == "lost" or (c == "auto" and self.params["cause"] == "power")

    @property
    def shows_when(self) -> str | None:
        """The physical condition a node fault needs before any sensor can see it; None: it always shows.

        A fault whose condition never held while it lasted is latent: the report says which
        condition, and no alarm is due (simulator/world.py measures whether it held)."""
        z = self.params.get("zone")
        if self.kind == LAMP_FAILURE and self.params["mode"] != "over_current":
            return "the lamp to be lit while it is failed (a dead lamp that is meant to be off shows nothing)"
        if self.kind == BURST:
            return f"zone {z} to water while the pipe is burst (a burst shows only in flowing water)"
        if self.kind == STUCK_VALVE and self.params["state"] == "closed":
            return f"zone {z} to be opened while its valve is stuck shut"
        if self.kind == STUCK_VALVE:
            return (
                f"another zone to water while zone {z}'s valve is stuck open (behind a shut master "
                "valve it has no pressure)"
            )
        return None


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?"
    r"\s*(?:(\d+(?:\.\d+)?)s)?\s*$"
)


def parse_duration(text: Any, key: str) -> float:
    """ "1d", "6h", "2h30m", "90s", "1.5h" -> seconds; a bare number is seconds."""
    if isinstance(text, bool):
        raise FaultError(key, f'expected a duration like "2h30m", got {show(text)}')
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise FaultError(key, f'expected a duration like "2h30m", got {show(text)}')
        if text < 0:
            raise FaultError(key, "a duration cannot be negative")
        return float(text)
    if not isinstance(text, str):
        raise FaultError(key, f'expected a duration like "2h30m", got {show(text)}')
    mt = _DURATION.match(text)
    if not mt or not any(mt.groups()):
        raise FaultError(key, f'expected a duration like "90s", "6h", "2h30m" or "1d", got {show(text)}')
    d, h, mi, s = (float(g) if g else 0.0 for g in mt.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def _param(kind: str, name: str, spec: tuple, raw: Mapping[str, Any], key: str) -> Any:
    typ, default, allowed = spec
    if name not in raw:
        return default
    v = raw[name]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool):
        what = {"str": "a string", "int": "an integer", "float": "a number"}.get(typ.__name__, typ.__name__)
        raise FaultError(f"{key}.{name}", f"{kind} needs {what}, got {show(v)}")
    if typ is str:
        if v not in allowed:
            raise FaultError(
                f"{key}.{name}", f"must be one of {', '.join(allowed)}; got {show(v)}{did_you_mean(v, allowed)}"
            )
    elif not allowed[0] <= v <= allowed[1]:
        raise FaultError(f"{key}.{name}", f"must be within {allowed[0]:g}..{allowed[1]:g}, got {show(v)}")
    return v


def parse_fault(
    raw: Mapping[str, Any], index: int, start: _dt.datetime, duration_s: float, section: str = "faults"
) -> Fault:
    """One [[faults]] table -> Fault. Targets are checked by the scenario, which knows the names."""
    key = f"{section}[{index}]"
    if not isinstance(raw, Mapping):
        raise FaultError(key, "each fault is a table ([[faults]])")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise FaultError(
            f"{key}.kind", f"must be one of {', '.join(KINDS)}; got {show(kind)}{did_you_mean(kind, KINDS)}"
        )
    _cls, specs = KINDS[kind]
    allowed = {"kind", "at", "after", "target", "duration", *specs}
    for k in raw:
        if k not in allowed:
            raise FaultError(
                f"{key}.{k}",
                f"unknown key for {kind}{did_you_mean(k, allowed)} (allowed: {', '.join(sorted(allowed))})",
            )
    if ("at" in raw) == ("after" in raw):
        raise FaultError(key, "give exactly one of 'at' (a UTC date-time) or 'after' (a duration)")
    if "at" in raw:
        at = raw["at"]
        if not isinstance(at, _dt.datetime) or at.tzinfo is None:
            raise FaultError(
                f"{key}.at", f"needs a TOML date-time with an offset, e.g. 2026-06-15T22:30:00Z; got {show(at)}"
            )
        at_s = (at - start).total_seconds()
    else:
        at_s = parse_duration(raw["after"], f"{key}.after")
    if not 0 <= at_s < duration_s:
        raise FaultError(
            key,
            f"happens {duration_text(at_s)} after the start, outside the run "
            f"(from the start to {duration_text(duration_s)} after it)",
        )
    target = raw.get("target", "upstream" if kind == UPSTREAM_OUTAGE else None)
    if not isinstance(target, str) or not target:
        raise FaultError(f"{key}.target", f"{kind} needs a target (a node name or gateway id)")
    params = {name: _param(kind, name, spec, raw, key) for name, spec in specs.items()}
    dur = None
    if "duration" in raw:
        if kind in (NODE_REBOOT, GATEWAY_RESTART):
            raise FaultError(
                f"{key}.duration",
                f"{kind} is an event; " + ("use downtime_s" if kind == GATEWAY_RESTART else "it has no duration"),
            )
        dur = parse_duration(raw["duration"], f"{key}.duration")
        if dur <= 0:
            raise FaultError(f"{key}.duration", "must be positive")
    elif kind == UPSTREAM_OUTAGE:
        raise FaultError(key, "upstream_outage needs a duration")
    return Fault(at_s, kind, target, params, dur, index)


class FaultSchedule:
    """The faults of a run, in time order."""

    def __init__(self, faults: Sequence[Fault] = ()):
        self.faults = sorted(faults, key=lambda f: (f.at_s, f.index))

    @classmethod
    def parse(
        cls, raw: Sequence[Mapping[str, Any]], start: _dt.datetime, duration_s: float, section: str = "faults"
    ) -> FaultSchedule:
        if not isinstance(raw, list):
            raise FaultError(section, "must be an array of tables ([[faults]])")
        return cls([parse_fault(r, i, start, duration_s, section) for i, r in enumerate(raw)])

    def __len__(self) -> int:
        return len(self.faults)

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def due(self, t0_s: float, t1_s: float) -> list[Fault]:
        """Faults that start in [t0, t1)."""
        return [f for f in self.faults if t0_s <= f.at_s < t1_s]

    def ending(self, t0_s: float, t1_s: float) -> list[Fault]:
        """Faults that clear in [t0, t1) (durations and gateway downtimes)."""
        out = []
        for f in self.faults:
            e = f.end_s
            if e is not None and f.kind != NODE_REBOOT and t0_s <= e < t1_s:
                out.append(f)
        return out

    def active(self, target: str, t_s: float, kind: str | None = None) -> list[Fault]:
        """Faults in effect on a target at t (optionally of one kind)."""
        return [f for f in self.faults if f.target == target and (kind is None or f.kind == kind) and f.active(t_s)]

    def targets(self) -> set[str]:
        return {f.target for f in self.faults}
