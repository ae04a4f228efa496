"""Pedestrians in a street, and what the lamps' motion sensors see of them.

People arrive in each street as a non-homogeneous Poisson process whose
rate is constant within each local hour: rate(h) = peak_per_h x profile[h].
Within an hour the gaps between arrivals are exponential (the standard
construction of a piecewise-constant-rate Poisson process). A pedestrian
enters either at an end of the street (ENTER_AT_END of them) or anywhere
along it (a door, a side street), walks at a speed drawn from N(1.34, 0.26)
m/s clipped to 0.6-2.2 m/s (the mean and spread of adult walking speeds in
R. L. Knoblauch, M. T. Pietrucha, M. Nitzburg, "Field studies of pedestrian
walking speed and start-up time", Transportation Research Record 1538, 1996),
and leaves at the far end.

A lamp's PIR sensor (passive infrared, looking down from the pole) is high
while someone is within `range_m` of the pole along the street, and for
`hold_s` after the last one left (the retrigger time of common PIR modules);
overlapping intervals merge.

The default hourly profile is a named, illustrative shape for a residential
street with shops: quiet from 1 to 5 (3-8 % of the peak), a morning rise,
a midday plateau, the busiest hours from 17 to 20, tailing off to midnight.
Scenarios may give their own 24 values. Limits: no cars or bicycles, no
groups (people arrive one by one), no stops on the way.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PROFILE = (
    0.15,
    0.08,
    0.05,
    0.03,
    0.03,
    0.06,
    0.20,
    0.45,
    0.60,
    0.50,
    0.50,
    0.60,
    0.70,
    0.65,
    0.60,
    0.65,
    0.80,
    0.95,
    1.00,
    0.90,
    0.70,
    0.50,
    0.35,
    0.25,
)
WALK_MEAN_M_S = 1.34
WALK_SD_M_S = 0.26
WALK_MIN_M_S = 0.6
WALK_MAX_M_S = 2.2
ENTER_AT_END = 0.7
PIR_RANGE_M = 8.0
PIR_HOLD_S = 3.0


@dataclass(frozen=True, slots=True)
class Pedestrian:
    enter: float  # Unix seconds
    s0: float  # where along the street (m from its first point)
    direction: int  # +1 towards the street's end, -1 towards its start
    speed: float  # m/s

    def leave(self, length_m: float) -> float:
        far = length_m - self.s0 if self.direction > 0 else self.s0
        return self.enter + far / self.speed


def _validate_profile(profile: Sequence[float]) -> tuple[float, ...]:
    if len(profile) != 24 or any(not (v >= 0.0) for v in profile):
        raise ValueError("an hourly profile needs 24 values >= 0 (local hours 0..23)")
    return tuple(float(v) for v in profile)


class StreetPresence:
    """Pedestrians of one street over [start, end), drawn from (seed, street id)."""

    def __init__(
        self,
        street_id: str,
        length_m: float,
        peak_per_h: float,
        start: float,
        end: float,
        seed: int,
        tz: _dt.tzinfo = _dt.UTC,
        profile: Sequence[float] = DEFAULT_PROFILE,
    ):
        if length_m <= 0:
            raise ValueError(f"street {street_id}: length must be positive")
        if peak_per_h < 0:
            raise ValueError(f"street {street_id}: peak_per_h must be >= 0")
        if end <= start:
            raise ValueError("end must be after start")
        self.street_id = street_id
        self.length_m = float(length_m)
        self.profile = _validate_profile(profile)
        rng = random.Random(f"lumeau-presence:{seed}:{street_id}")
        people: list[Pedestrian] = []
        t = float(start)
        while t < end:
            local = _dt.datetime.fromtimestamp(t, tz)
            seg_end = min(end, t + 3600.0 - (local.minute * 60 + local.second + local.microsecond / 1e6))
            rate = peak_per_h * self.profile[local.hour] / 3600.0
            if rate > 0.0:
                a = t + rng.expovariate(rate)
                while a < seg_end:
                    people.append(self._person(rng, a))
                    a += rng.expovariate(rate)
            t = seg_end
        self.pedestrians = people

    def _person(self, rng: random.Random, at: float) -> Pedestrian:
        speed = min(WALK_MAX_M_S, max(WALK_MIN_M_S, rng.gauss(WALK_MEAN_M_S, WALK_SD_M_S)))
        if rng.random() < ENTER_AT_END:
            if rng.random() < 0.5:
                return Pedestrian(at, 0.0, 1, speed)
            return Pedestrian(at, self.length_m, -1, speed)
        return Pedestrian(at, rng.random() * self.length_m, 1 if rng.random() < 0.5 else -1, speed)

    def count(self, t0: float, t1: float) -> int:
        """People who entered the street in [t0, t1)."""
        return sum(1 for p in self.pedestrians if t0 <= p.enter < t1)

    def pir_intervals(
        self,
        lamp_s: Sequence[float],
        range_m: float = PIR_RANGE_M,
        hold_s: float = PIR_HOLD_S,
        t0: float = -math.inf,
        t1: float = math.inf,
    ) -> list[list[tuple[float, float]]]:
        """For each lamp at distance s along the street: when its PIR output is high.

        Returns one list per lamp (in the order given) of merged (rise, fall)
        Unix-second intervals, keeping those that overlap [t0, t1).
        """
        if range_m <= 0 or hold_s < 0:
            raise ValueError("range_m must be > 0 and hold_s >= 0")
        order = sorted(range(len(lamp_s)), key=lambda i: lamp_s[i])
        pos = [float(lamp_s[i]) for i in order]
        raw: list[list[tuple[float, float]]] = [[] for _ in pos]
        for p in self.pedestrians:
            if p.enter >= t1:
                break
            lo, hi = (p.s0, self.length_m) if p.direction > 0 else (0.0, p.s0)
            # Lamps whose detection zone the walk crosses.
            i0 = bisect.bisect_left(pos, lo - range_m)
            i1 = bisect.bisect_right(pos, hi + range_m)
            for k in range(i0, i1):
                a = max(lo, pos[k] - range_m)
                b = min(hi, pos[k] + range_m)
                if b < a:
                    continue
                if p.direction > 0:
                    rise = p.enter + (a - p.s0) / p.speed
                    fall = p.enter + (b - p.s0) / p.speed
                else:
                    rise = p.enter + (p.s0 - b) / p.speed
                    fall = p.enter + (p.s0 - a) / p.speed
                fall += hold_s
                if fall > t0 and rise < t1:
                    raw[k].append((rise, fall))
        out: list[list[tuple[float, float]]] = [[] for _ in pos]
        for k, ivs in enumerate(raw):
            ivs.sort()
            merged: list[tuple[float, float]] = []
            for r, f in ivs:
                if merged and r <= merged[-1][1]:
                    if f > merged[-1][1]:
                        merged[-1] = (merged[-1][0], f)
                else:
                    merged.append((r, f))
            out[order[k]] = merged
        return out
