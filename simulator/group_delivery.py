"""One group command to a street of lamps: unicast fan-out against LoRa multicast (issue 11).

`lumeau sim run` adds a `group_command` section to its results when the scenario has a
`[group_command]` table (simulator/README.md): a street of `members` mains lamps is told
`op` (default "100 % for 2 h", set_level [100, 7200]) at `at_s` after the start, once by
unicast fan-out and once by multicast, and the section gives, per delivery, the time until
95 % and 100 % of the members applied it (at the lamp) and confirmed it (the gateway has
its CMD_ACK), the gateway's airtime and downlinks, and the duty cycle's verdict.

The exchange follows SPEC §5 "Groups" and §6, with the law of the air of protocol/lora.py:

- unicast: each lamp reports every `report_s` (phases drawn per lamp); its COMMAND goes in
  the RX1 window after its next uplink, on the uplink's channel (sub-band g1, 1 %: the
  gateway's own off-time, protocol.lora.DutyCycle, is shared by every downlink it sends
  there), one downlink per window; the lamp applies it on reception and answers with a
  CMD_ACK at once; a lost COMMAND or CMD_ACK is sent again at the next uplink;
- multicast: one GROUP_COMMAND on 869.525 MHz (g3, 10 %) at `multicast_sf`; each member
  applies it on reception and answers after a random 0..ACK_SPREAD_S s (CMD_ACKs on one of
  the three channels at the lamp's SF; two that overlap on one channel and SF are both
  lost: no capture, pessimistic); members still unconfirmed `repair_after_s` later get the
  unicast repair above (a member that applied it but whose CMD_ACK was lost applies it
  again; its first application counts).

Every frame is lost with probability `loss` (drawn from the scenario's seed), on top of the
collisions above. This is a model of the radio exchange with the protocol's sizes and
rules, not a run of the firmware: the firmware's part (a member takes a GROUP_COMMAND once,
refuses replays and strangers) runs under real MicroPython in tests/micropython/mp_group.py.
Provisioning the group key (one join_group per member, by unicast, done once before the
command) is counted apart, as `provisioning`.
"""

from __future__ import annotations

import heapq
import random
import statistics
from dataclasses import dataclass, replace
from typing import Any

from protocol import frame, groupcast, lora
from protocol import messages as m

RX1_DELAY_S = 1.0
RX2_HZ = groupcast.GROUP_FREQ_HZ  # EU868 RX2: sub-band g3, 10 %
UPLINK_HZ = lora.DEFAULT_CHANNELS_HZ
CMD_ACK_BYTES = 19  # a CMD_ACK of a multicast id: 13 + {0: 0x8000_00nn, 1: 0, 2: 100}
REPORT_BYTES = 40  # a lamp's LIGHT report (SPEC §5 "Sizes": 44 B at most)


@dataclass(frozen=True)
class GroupCommandSettings:
    members: int = 60
    at_s: float = 3600.0
    op: int = m.OP_SET_LEVEL
    args: tuple[int, ...] = (100, 7200)
    sf: int = 9  # the lamps' uplink SF
    multicast_sf: int = 9
    report_s: float = 900.0
    loss: float = 0.05
    repair_after_s: float = 120.0
    seed: int = 1
    runs: int = 21  # streets drawn (lamp phases, losses): the section gives the median and the worst


def _command_bytes(sets: GroupCommandSettings, multicast: bool) -> int:
    body = {0: groupcast.MCAST_ID_BASE + 1 if multicast else 1001, 1: sets.op, 2: list(sets.args), 3: 1800003600}
    return frame.HEADER_LEN + len(m.encode(m.COMMAND, body)) + frame.MIC_LEN


def _air_s(n: int, sf: int) -> float:
    return lora.airtime_ms(n, sf) / 1000.0


def _pct_time(times: list[float | None], q: float, n: int) -> float | None:
    done = sorted(t for t in times if t is not None)
    k = max(1, -(-int(q * 100) * n // 100))  # ceil(q n): 95 % of 60 is 57 members
    return round(done[k - 1], 1) if len(done) >= k else None


class _Run:
    def __init__(self, sets: GroupCommandSettings, multicast: bool) -> None:
        self.s = sets
        self._multicast = multicast
        self.rng = random.Random(sets.seed * 2 + int(multicast))  # the caller varies sets.seed per run
        self.duty = lora.DutyCycle()  # the gateway's radio
        self.applied: list[float | None] = [None] * sets.members
        self.confirmed: list[float | None] = [None] * sets.members
        self.pending: set[int] = set()
        self.air_s = 0.0
        self.downlinks = 0
        self.refused_by_duty = 0
        self.acks_lost = 0
        self.unicast_cmd = _command_bytes(sets, False)
        self.mcast_cmd = _command_bytes(sets, True)
        self.phase = [self.rng.uniform(0, sets.report_s) for _ in range(sets.members)]
        self.ack_air: list[tuple[float, float, int]] = []  # (start, end, channel) of CMD_ACKs in flight

    def _lost(self) -> bool:
        return self.rng.random() < self.s.loss

    def _gw_send(self, t: float, n: int, sf: int, hz: int) -> bool:
        band = lora.band_for(hz)
        now_ms = int(t * 1000)
        if self.duty.wait_ms(now_ms, band):
            self.refused_by_duty += 1
            return False
        air = lora.airtime_ms(n, sf)
        self.duty.record(now_ms, air, band)
        self.air_s += air / 1000.0
        self.downlinks += 1
        return True

    def _ack(self, i: int, t: float) -> None:
        """Lamp i sends a CMD_ACK at t: heard unless lost or overlapping another on its channel."""
        ch = self.rng.randrange(len(UPLINK_HZ))
        end = t + _air_s(CMD_ACK_BYTES, self.s.sf)
        hit = False
        for a, b, c in self.ack_air:
            if c == ch and a < end and t < b:
                hit = True
        self.ack_air = [x for x in self.ack_air if x[1] > t - 60] + [(t, end, ch)]
        if hit or self._lost():
            self.acks_lost += 1
            return
        if self.confirmed[i] is None:
            self.confirmed[i] = end
        self.pending.discard(i)

    def run(self) -> dict[str, Any]:
        s = self.s
        t0 = s.at_s
        events: list[tuple[float, int, int]] = []  # (time, kind, lamp): 0 uplink, 1 CMD_ACK
        horizon = t0 + 48 * s.report_s
        for i in range(s.members):
            k = int((t0 - self.phase[i]) // s.report_s) + 1
            heapq.heappush(events, (self.phase[i] + k * s.report_s, 0, i))
        self.pending = set(range(s.members))
        repair_at = t0
        if self._multicast:
            self.pending = set(range(s.members))
            if self._gw_send(t0, self.mcast_cmd, s.multicast_sf, RX2_HZ):
                end = t0 + _air_s(self.mcast_cmd, s.multicast_sf)
                for i in range(s.members):
                    if not self._lost():
                        self.applied[i] = end
                        delay = self.rng.uniform(0, groupcast.ACK_SPREAD_S)
                        heapq.heappush(events, (end + delay, 1, i))
            repair_at = t0 + s.repair_after_s
        while events and self.pending:
            t, kind, i = heapq.heappop(events)
            if t > horizon:
                break
            if kind == 1:
                self._ack(i, t)
                continue
            heapq.heappush(events, (t + s.report_s, 0, i))  # the lamp's next report
            if i not in self.pending or t < repair_at:
                continue
            # the lamp's uplink ends; RX1 one second later on its channel (g1): one downlink
            end_up = t + _air_s(REPORT_BYTES, s.sf)
            hz = UPLINK_HZ[self.rng.randrange(len(UPLINK_HZ))]
            tx = end_up + RX1_DELAY_S
            if self._lost():  # the uplink itself was not heard: no window to answer in
                continue
            if not self._gw_send(tx, self.unicast_cmd, s.sf, hz) or self._lost():
                continue
            got = tx + _air_s(self.unicast_cmd, s.sf)
            if self.applied[i] is None:
                self.applied[i] = got
            # answered as soon as the lamp's own off-time after its report allows (g1, 1 %)
            self._ack(i, got + max(0.0, _air_s(REPORT_BYTES, s.sf) * 99 - (got - t)))
        return self._section()

    def _section(self) -> dict[str, Any]:
        s = self.s
        t0 = s.at_s
        rel_a = [None if x is None else x - t0 for x in self.applied]
        rel_c = [None if x is None else x - t0 for x in self.confirmed]
        return {
            "applied_95_s": _pct_time(rel_a, 0.95, s.members),
            "applied_100_s": _pct_time(rel_a, 1.0, s.members),
            "confirmed_95_s": _pct_time(rel_c, 0.95, s.members),
            "confirmed_100_s": _pct_time(rel_c, 1.0, s.members),
            "applied": sum(1 for x in self.applied if x is not None),
            "downlinks": self.downlinks,
            "gateway_airtime_s": round(self.air_s, 3),
            "refused_by_duty_cycle": self.refused_by_duty,
            "cmd_acks_lost": self.acks_lost,
        }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the runs of each figure, and the worst of the times (None: not all applied)."""
    out: dict[str, Any] = {"runs": len(runs)}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        if any(v is None for v in vals):
            out[k] = None
            continue
        out[k] = round(statistics.median(vals), 3)
        if k.endswith("_s") and k != "gateway_airtime_s":
            out[k.replace("_s", "_worst_s")] = max(vals)
    return out


def simulate(sets: GroupCommandSettings) -> dict[str, Any]:
    """The `group_command` section: unicast and multicast for the same street and seed."""
    out: dict[str, Any] = {
        "members": sets.members,
        "op": {"op": sets.op, "args": list(sets.args)},
        "lamp_sf": sets.sf,
        "multicast_sf": sets.multicast_sf,
        "report_s": sets.report_s,
        "loss": sets.loss,
        "repair_after_s": sets.repair_after_s,
        "seed": sets.seed,
        "frame_bytes": {"unicast": _command_bytes(sets, False), "multicast": _command_bytes(sets, True)},
    }
    for mode in ("unicast", "multicast"):
        runs = [_Run(replace(sets, seed=sets.seed * 1000 + k), mode == "multicast").run() for k in range(sets.runs)]
        out[mode] = _summary(runs)
    # provisioning: one join_group per member by unicast, before the command (counted apart)
    join = frame.HEADER_LEN + len(m.encode(m.COMMAND, {0: 1001, 1: m.OP_JOIN_GROUP, 2: [1, 1, 0] + [-(2**31)] * 4}))
    join += frame.MIC_LEN
    out["provisioning"] = {
        "join_frames": sets.members,
        "join_bytes": join,
        "gateway_airtime_s": round(sets.members * _air_s(join, sets.sf), 3),
    }
    return out


def summary_lines(gc: dict[str, Any]) -> list[str]:
    """The section in `lumeau sim run`'s text summary: the medians, unicast against multicast."""

    def t(v: float | None) -> str:
        return "never" if v is None else f"{v / 60:.1f} min"

    out = [f"  group command to {gc['members']} lamps (median of {gc['unicast']['runs']} draws; applied / confirmed):"]
    for mode in ("unicast", "multicast"):
        r = gc[mode]
        out.append(
            f"    {mode:9}: 95 % {t(r['applied_95_s'])} / {t(r['confirmed_95_s'])}, 100 % {t(r['applied_100_s'])}"
            f" / {t(r['confirmed_100_s'])}; {r['downlinks']} downlinks, {r['gateway_airtime_s']:.1f} s of air"
        )
    return out
