"""What faults did to each node, kept by the world as it happens (simulator/world.py).

The report separates the saving the control earns from what faults did
(simulator/savings.py). For that each lamp and each irrigation controller
keeps a ledger of the time a fault affected it and of what flowed or lit
in that time; savings.py excludes that node-time from both the controlled
and the baseline sums and lists the faults' effects apart.

A lamp is fault-affected while a `lamp_failure` is in effect on it. An
irrigation zone is fault-affected while a burst or a stuck valve is in
effect on it, and while its controller is latched shut by a burst or an
excess-flow alarm (firmware/irrigation.py: until a person clears it, which
outlasts the fault itself). A leak affects no zone's watering (the valves
work as commanded); its water is counted as lost. Reboots, gateway restarts
and upstream outages are not excluded: the nodes keep controlling alone
through them, and what that costs is part of the control's result.

Everything here is plain data (lists and floats), so the per-node ledgers of
a run on several processes (simulator/parallel.py) travel back as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def close_interval(intervals: list[list[float]], t: float) -> None:
    """End the open interval (the last one, if its end is None) at t."""
    if intervals and intervals[-1][1] is None:
        intervals[-1][1] = t


def open_interval(intervals: list[list[float]], t: float) -> None:
    if not intervals or intervals[-1][1] is not None:
        intervals.append([t, None])  # type: ignore[list-item]


def finished(intervals: list[list[float]], end: float) -> list[tuple[float, float]]:
    """The intervals with an open one ended at `end`, empty ones dropped."""
    out = []
    for a, b in intervals:
        b = end if b is None else b
        if b > a:
            out.append((a, b))
    return out


@dataclass
class LampLedger:
    """A lamp's time under a lamp_failure and what it drew (and should have drawn) then."""

    fault_intervals: list[list[float]] = field(default_factory=list)  # [start, end or None], Unix s
    fault_wh: float = 0.0  # drawn from the mains while failed
    healthy_fault_wh: float = 0.0  # a healthy lamp at the commanded level, same time
    dark_s: float = 0.0  # commanded lit (level > 0) and giving no light

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ZoneLedger:
    """One irrigation zone: fault-affected time, water applied in and out of it, turf stress."""

    affected: list[list[float]] = field(default_factory=list)  # [start, end or None], Unix s
    applied_clean_l: float = 0.0  # reached the turf while the zone was not fault-affected
    applied_affected_l: float = 0.0
    stress_clean_s: float = 0.0  # root zone past readily available water (FAO-56 Ks < 1)
    stress_affected_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SoilDay:
    """One weather day of one controller's zones: available water (fraction of TAW) and stress."""

    day: int  # days since 1970-01-01, the weather model's
    start: list[float]  # per zone, 1 = field capacity, 0 = wilting point
    end: list[float]
    stress_s: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_fraction(dr_mm: float, taw_mm: float) -> float:
    """Share of the total available water still in the root zone (1 - Dr / TAW)."""
    return max(0.0, min(1.0, 1.0 - dr_mm / taw_mm)) if taw_mm > 0 else 0.0
