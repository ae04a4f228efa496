"""Automatic time: when the gateway sends a node TIME on its own, and what value it carries.

Sans-I/O: `TimeSync` is told of each committed uplink (`on_uplink`) and of
each automatic TIME handed to a radio (`sent`); it answers with the reason to
send a TIME in that uplink's receive window, or None. gateway/downlinks.py
does the sending; every policy is a constructor argument (the gateway config's
`[downlinks]` keys set the main ones). SPEC §4, "Automatic time", is the
contract and holds the error budget.

When (reasons, in priority order):

- `boot`: a HELLO. The node has just reset, and a reset may have cost it the
  clock (a power cut stops an RTC that has no battery). Answered at once:
  this is how a rebooted node gets its profile back after its first uplink.
- `no_time`: the uplink says the node's clock is not set
  (`clock_unset`: LIGHT state LS_FAILSAFE, IRRIGATION faults IF_FAILSAFE,
  STATUS time 0, an EVENT without its time). Retried at the node's next
  uplink after `retry_s`, doubling per TIME that did not help up to
  `retry_max_s` (a lamp with no location in its config stays in fail-safe
  whatever its clock: it costs a TIME every few hours, not every report).
- `drift`: the node's clock is set, and the gateway's bound on its offset
  could pass `threshold_s` before the node's next uplink (three of its mean
  gaps ahead: the two refusals tried again at once come before the
  threshold too, `_ahead`), or the gateway has no
  bound (it never set nor measured that clock). At most once per
  `resync_min_s` per node; refused by the radio, tried again at the next
  two uplinks, then backing off.
- `repeat`: the same re-sync once more, at the node's next uplink. A TIME
  has no answer in the protocol, and a lost one would leave the gateway
  believing a clock set that goes on drifting until the next STATUS (6 h);
  one repeat makes that a loss of both (about 1 in 10,000 at 1 % loss).
  A `boot` or `no_time` answer needs none: the next uplink says whether the
  clock is set.

The offset (node clock minus the gateway's clock) is tracked as an interval
per node, which holds as long as the crystal's drift stays within
`max_drift_ppm` and a STATUS waits at most `report_delay_s` in the node's
queue:

- a TIME sets it to [-sync_error_s, +sync_error_s] at the instant the node
  takes it (the error budget, SPEC §4);
- it widens with time by the drift rate's interval (at first
  +-max_drift_ppm);
- a STATUS with the node's time S (whole seconds, taken when the STATUS was
  queued) measures it at the uplink's start t0 = end - time on air:
  offset in [S - t0, S + 1 - t0 + report_delay_s]; the tracked interval
  becomes its intersection with that measurement (the measurement alone if
  they disagree: someone else set the clock), and the drift rate's interval
  narrows to what the measurements since the last TIME allow (the crystal is
  the same across TIMEs, so what was learnt is kept).

Re-syncing on the bound, not on a point estimate, is what keeps the true
error under the threshold: a STATUS comes every 6 h by default, and a
100 ppm crystal drifts 2.16 s in that time.

Within the duty cycle: every automatic TIME is charged, with its time on
air, to a budget of `airtime_s_per_h` seconds of air per hour (a token
bucket; 9 s, a quarter of what EU868's 1 % sub-band allows one radio). A
`drift` re-sync waits until the bucket can pay for it, priced at the
largest TIME at the uplink's SF; a `repeat`, and a re-sync of a node
whose offset the gateway cannot bound, until it can pay and keep half the
bucket: a node known to be near the threshold goes first (after a gateway
restart every node is unknown at once). `boot` and `no_time` answers are not held
back by the bucket (a street of lamps whose power came back must all get
their time) but are charged to it (down to minus its size), so drift
re-syncs give way to them; the radio's own duty cycle is their limit (a
bridge, a forwarder and the simulator's channel refuse a TX in the
off-time, and the node's next uplink asks again). Wires (serial, BLE) have
no duty cycle and are not charged.

The TIME's value (`time_value`): on LoRa the node takes the TIME when the
frame has arrived, RX1 delay after the end of its uplink plus the TIME's own
time on air: value = uplink end (the reception's rx_time) + rx1_delay_s +
time on air. On a wire the frame goes at once: value = now.

Clock: every decision is taken on the receptions' time (an uplink's end,
a TIME's value), the radios' clock: in the field the gateway's own (a
packet forwarder's GPS time, a bridge's mapping, or the host's clock at
arrival), in a simulation the simulated one even when the gateway process
runs on real time. `clock` only serves `bound`/`offset` asked for "now".

State: one small record per node heard (at most `max_nodes`, the earliest
heard forgotten first), in memory; `save(path)` / `load(path)`
keep it across a restart (the service writes it next to its database at a
clean stop: `<database>.time.json`). A node the gateway knows nothing of
(after a crash, or a lost file) gets one `drift` TIME at its next uplink,
behind the nodes known to need one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import lora
from protocol import messages as m

BOOT = "boot"
NO_TIME = "no_time"
DRIFT = "drift"
REPEAT = "repeat"
REASONS = (BOOT, NO_TIME, DRIFT, REPEAT)

DEFAULT_THRESHOLD_S = 2.0
DEFAULT_MAX_DRIFT_PPM = 100.0
RX1_DELAY_S = 1.0  # SPEC §6
REFUSALS_FREE = 2  # drift TIMEs refused in a row that are tried again at once (then back off)
TIME_FRAME_MAX = 30  # bytes: the largest TIME frame (SPEC §5 "Sizes"), to price one before it is built


def clock_unset(mtype: int, body: dict[int, Any]) -> bool | None:
    """What an uplink says of the node's clock: True not set, False set, None nothing (HELLO, CMD_ACK).

    A lighting node's LS_FAILSAFE also covers a config without a location
    (SPEC §5 LIGHT key 3); the retry backoff keeps that case cheap."""
    if mtype == m.LIGHT:
        return bool(body.get(m.L_STATE, 0) & m.LS_FAILSAFE)
    if mtype == m.IRRIGATION:
        return bool(body.get(m.IR_FAULTS, 0) & m.IF_FAILSAFE)
    if mtype == m.STATUS:
        return not body.get(m.S_TIME, 0)
    if mtype == m.EVENT:
        return not body.get(m.E_TIME, 0)
    return None


def time_value(rx_end: float, rx1_delay_s: float, airtime_s: float) -> float:
    """The Unix time at which a node takes a TIME sent in RX1 after an uplink that ended at rx_end."""
    return rx_end + rx1_delay_s + airtime_s


_OPTIONAL = frozenset(("a_t", "s_t", "last_rx", "gap", "sent_at", "cross"))  # None: not known yet


class _Node:
    __slots__ = (
        "a_t",
        "a_lo",
        "a_hi",
        "s_t",
        "s_lo",
        "s_hi",
        "r_lo",
        "r_hi",
        "last_rx",
        "gap",
        "sent_at",
        "tries",
        "repeat",
        "fails",
        "cross",
    )

    def __init__(self, max_rate: float) -> None:
        self.a_t: float | None = None  # anchor: when the offset was last known to lie in [a_lo, a_hi]
        self.a_lo = 0.0
        self.a_hi = 0.0
        self.s_t: float | None = None  # segment start (the last TIME, or the first STATUS since): rates from it
        self.s_lo = 0.0
        self.s_hi = 0.0
        self.r_lo = -max_rate  # drift rate interval, s/s
        self.r_hi = max_rate
        self.last_rx: float | None = None
        self.gap: float | None = None  # mean time between the node's uplinks (EWMA), s
        self.sent_at: float | None = None  # when the last automatic TIME went
        self.tries = 0  # boot/no_time TIMEs since the node last said its clock is set
        self.repeat = False  # a drift re-sync went: send it once more
        self.fails = 0  # automatic TIMEs in a row the radio refused (duty cycle, too late)
        self.cross: float | None = None  # when the bound, as last computed, reaches the threshold (a cache)


class TimeSync:
    """The automatic time policy of one gateway (see the module docstring)."""

    def __init__(
        self,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        max_drift_ppm: float = DEFAULT_MAX_DRIFT_PPM,
        sync_error_s: float = 0.1,
        report_delay_s: float = 1.0,
        retry_s: float = 60.0,
        retry_max_s: float = 6 * 3600.0,
        resync_min_s: float = 600.0,
        lookahead_s: float = 900.0,
        airtime_s_per_h: float = 9.0,
        rx1_delay_s: float = RX1_DELAY_S,
        bw_hz: int = 125000,
        max_nodes: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not threshold_s > sync_error_s >= 0:
            raise ValueError(f"threshold_s ({threshold_s}) must exceed sync_error_s ({sync_error_s}) >= 0")
        if not 0 <= max_drift_ppm <= 10000:
            raise ValueError(f"max_drift_ppm must be within 0..10000, got {max_drift_ppm}")
        if airtime_s_per_h <= 0:
            raise ValueError("airtime_s_per_h must be positive")
        self.threshold_s = threshold_s
        self.max_rate = max_drift_ppm * 1e-6
        self.sync_error_s = sync_error_s
        self.report_delay_s = report_delay_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.resync_min_s = resync_min_s
        self.lookahead_s = lookahead_s  # until the node's uplink gaps are known
        self.airtime_s_per_h = airtime_s_per_h
        self.rx1_delay_s = rx1_delay_s
        self.bw_hz = bw_hz
        self.max_nodes = max_nodes
        self.clock = clock
        self._nodes: dict[int, _Node] = {}
        self._tokens = airtime_s_per_h
        self._tokens_at: float | None = None
        self.counts: dict[str, int] = {
            "boot": 0,
            "no_time": 0,
            "drift": 0,
            "repeat": 0,
            "budget_short": 0,
            "refused": 0,
            "disagreed": 0,
        }

    # ------------------------------------------------------------ what the downlinks call

    def on_uplink(
        self,
        node_id: int,
        mtype: int,
        body: dict[int, Any],
        rx_end: float,
        airtime_s: float = 0.0,
        wire: bool = False,
        sf: int | None = None,
    ) -> str | None:
        """Note a committed uplink; the reason to answer it with a TIME now, or None.

        `rx_end`: when the uplink ended (the reception's rx_time); `airtime_s`: its
        time on air (0 on a wire); `wire`: answered at once on a link without duty
        cycle; `sf`: the uplink's spreading factor (the answer's, in RX1)."""
        now = rx_end
        st = self._nodes.get(node_id)
        if st is None:
            st = self._node(node_id)
        last = st.last_rx
        if last is None:
            st.last_rx = rx_end
        elif rx_end > last:
            g = rx_end - last
            st.gap = g if st.gap is None else 0.75 * st.gap + 0.25 * g
            st.last_rx = rx_end
        if mtype == m.HELLO:
            st.repeat = False
            self._forget_clock(st)
            return self._retry(st, BOOT, now, wire)
        unset = clock_unset(mtype, body)
        if unset:
            st.repeat = False
            self._forget_clock(st)
            return self._retry(st, NO_TIME, now, wire)
        if unset is None:
            return None
        st.tries = 0
        if mtype == m.STATUS:
            self._measure(st, body[m.S_TIME], rx_end - airtime_s)
        if st.repeat:
            return self._afford(REPEAT, now, wire, sf, low=True)
        if st.fails > REFUSALS_FREE:  # a radio that keeps refusing: back off
            wait = min(self.resync_min_s * 2 ** (st.fails - REFUSALS_FREE), self.retry_max_s)
        else:  # after a TIME; a refusal or two (a radio's off-time) are tried again at the next uplink
            wait = self.resync_min_s if st.fails == 0 else 0.0
        if st.sent_at is not None and now - st.sent_at < wait:
            return None
        ahead = self._ahead(st)
        if st.cross is not None and now + ahead < st.cross:
            return None  # the common case: the bound is known to stay below the threshold till then
        b = self.bound(node_id, now + ahead)
        if b is not None and max(-b[0], b[1]) < self.threshold_s:
            st.cross = self._cross(st)
            return None
        return self._afford(DRIFT, now, wire, sf, low=b is None)

    def sent(self, node_id: int, reason: str, set_at: float, airtime_s: float = 0.0) -> None:
        """An automatic TIME was handed to a radio; the node takes it at `set_at` (its value)."""
        now = set_at
        st = self._node(node_id)
        st.sent_at = now
        if reason in (BOOT, NO_TIME):
            st.tries += 1
        st.repeat = reason == DRIFT
        st.fails = 0
        e = self.sync_error_s
        st.cross = None
        st.a_t = st.s_t = set_at
        st.a_lo = st.s_lo = -e
        st.a_hi = st.s_hi = e
        if airtime_s > 0:
            self._refill(now)
            self._tokens = max(self._tokens - airtime_s, -self.airtime_s_per_h)
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def failed(self, node_id: int, reason: str, at: float) -> None:
        """An automatic TIME could not be handed to a radio (its duty cycle, its window passed).

        Nothing changed on the node. A boot/no_time answer is asked again as after a TIME
        sent (`retry_s`, doubling); a re-sync at the next uplink twice (a radio's duty-cycle
        off-time passes), then after `resync_min_s` doubling with each refusal up to
        `retry_max_s` (a radio that cannot reach the window at all)."""
        st = self._node(node_id)
        st.sent_at = at
        st.fails += 1
        if reason in (BOOT, NO_TIME):
            st.tries += 1
        self.counts["refused"] = self.counts.get("refused", 0) + 1

    def bound(self, node_id: int, at: float | None = None) -> tuple[float, float] | None:
        """The interval the node's clock offset (s, node minus gateway) lies in at `at`; None: unknown."""
        st = self._nodes.get(node_id)
        if st is None or st.a_t is None:
            return None
        dt = max(0.0, (self.clock() if at is None else at) - st.a_t)
        return st.a_lo + st.r_lo * dt, st.a_hi + st.r_hi * dt

    def offset(self, node_id: int) -> float | None:
        """The best estimate of the node's clock offset now (the middle of its bound), s; None: unknown."""
        b = self.bound(node_id)
        return None if b is None else (b[0] + b[1]) / 2

    def due_at(self, node_id: int) -> float | None:
        """From when (the radios' clock) an uplink of the node saying its clock is set gets a `drift` or
        `repeat` TIME (if the air-time budget can pay); None: the node was never heard (its first such
        uplink gets one, unless a STATUS that measures the offset), inf: never (its bound stays under
        the threshold for good).

        What `on_uplink` decides, told ahead: a radio link that must hold its clock for the
        gateway's answer (the simulator's live link, simulator/live.py) knows which uplinks to hold
        for. The node's mean gap, which sets how far ahead the bound is looked at, is taken as it is
        now (the uplink itself moves it a little): a prediction a little late costs one refusal,
        made good at the next uplink (`failed`)."""
        st = self._nodes.get(node_id)
        if st is None:
            return None
        if st.repeat:
            return st.sent_at if st.sent_at is not None else -math.inf
        if st.fails > REFUSALS_FREE:
            wait = min(self.resync_min_s * 2 ** (st.fails - REFUSALS_FREE), self.retry_max_s)
        else:
            wait = self.resync_min_s if st.fails == 0 else 0.0
        after = st.sent_at + wait if st.sent_at is not None else -math.inf
        if st.a_t is None:
            return after
        cross = self._cross(st)
        return max(after, self._first_due(st, cross if cross is not None else math.inf))

    def _first_due(self, st: _Node, cross: float) -> float:
        """The earliest time t of the node's next uplink with t + ahead >= cross, ahead as that very
        uplink makes it: its gap enters the node's mean gap first (a report's jitter moves the mean,
        and three gaps of lookahead move with it by tens of seconds)."""
        if cross == math.inf:
            return cross
        last = st.last_rx
        if last is None:  # its first uplink leaves the gap unknown
            return cross - self.lookahead_s
        k = REFUSALS_FREE + 1
        g0 = st.gap

        def ahead_at(t: float) -> float:
            g = t - last if g0 is None else 0.75 * g0 + 0.25 * (t - last)
            return min(max(k * g, 60.0), 3600.0)

        # t + ahead_at(t) grows with t: solve it unclamped, then in the clamp's region if it falls there
        if g0 is None:
            t = (cross + k * last) / (1 + k)
        else:
            t = (cross - k * 0.75 * g0 + k * 0.25 * last) / (1 + 0.25 * k)
        a = ahead_at(t)
        if a <= 60.0:
            return cross - 60.0
        if a >= 3600.0:
            return cross - 3600.0
        return t

    def describe(self, node_id: int) -> dict[str, Any] | None:
        """What the gateway knows of the node's clock (the API's GET /time): None when never heard."""
        st = self._nodes.get(node_id)
        if st is None:
            return None
        b = self.bound(node_id)
        due = self.due_at(node_id)
        return {
            "offset_s": None if b is None else [round(b[0], 4), round(b[1], 4)],
            "drift_ppm": [round(st.r_lo * 1e6, 3), round(st.r_hi * 1e6, 3)],
            "last_time_at": st.sent_at,
            # 0: at its next uplink; null: not while the crystal keeps to what the gateway learnt
            "resync_at": None if due is None or due == math.inf else max(due, 0.0),
            "repeat": st.repeat,
            "refused": st.fails,
        }

    def nodes(self) -> list[int]:
        """The nodes heard, earliest heard first."""
        return list(self._nodes)

    def drift_ppm(self, node_id: int) -> tuple[float, float] | None:
        """The interval the node's crystal drift lies in, ppm (None: never heard)."""
        st = self._nodes.get(node_id)
        return None if st is None else (st.r_lo * 1e6, st.r_hi * 1e6)

    def airtime_s(self, length: int, sf: int | None) -> float:
        """Time on air of a downlink of `length` bytes at `sf` (0 when unknown)."""
        if sf is None:
            return 0.0
        try:
            return lora.airtime_ms(length, sf, self.bw_hz) / 1000.0
        except ValueError:
            return 0.0

    # ------------------------------------------------------------ state across restarts

    def save(self, path: Path) -> None:
        """Write the per-node state (atomically: a new file renamed over the old)."""
        nodes = {str(k): [getattr(st, f) for f in _Node.__slots__] for k, st in self._nodes.items()}
        doc = {"version": 1, "tokens": self._tokens, "tokens_at": self._tokens_at, "nodes": nodes}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)

    def load(self, path: Path) -> int:
        """Read what `save` wrote; returns the nodes restored. A missing file is no state; a bad one
        raises ValueError naming what is wrong (nothing is half-loaded)."""
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a time-sync state file: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("nodes"), dict):
            raise ValueError(f"{path}: not a version 1 time-sync state file")
        nodes: dict[int, _Node] = {}
        for k, vals in doc["nodes"].items():
            if not (
                isinstance(k, str) and k.isdigit() and isinstance(vals, list) and len(vals) == len(_Node.__slots__)
            ):
                raise ValueError(f"{path}: bad entry for node {k!r}")
            st = _Node(self.max_rate)
            for f, v in zip(_Node.__slots__, vals):
                ok = v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                if f == "repeat":
                    ok = isinstance(v, bool)
                if not ok or (v is None and f not in _OPTIONAL):
                    raise ValueError(f"{path}: node {k}: bad {f} {v!r}")
                setattr(st, f, v)
            nodes[int(k)] = st
        tokens, at = doc.get("tokens"), doc.get("tokens_at")
        if not isinstance(tokens, (int, float)) or not (at is None or isinstance(at, (int, float))):
            raise ValueError(f"{path}: bad budget")
        self._nodes = nodes
        self._tokens = max(-self.airtime_s_per_h, min(float(tokens), self.airtime_s_per_h))
        self._tokens_at = at
        return len(nodes)

    # ------------------------------------------------------------ inside

    def _node(self, node_id: int) -> _Node:
        st = self._nodes.get(node_id)
        if st is None:
            st = self._nodes[node_id] = _Node(self.max_rate)
            if len(self._nodes) > self.max_nodes:
                del self._nodes[next(iter(self._nodes))]  # the earliest heard first
        return st

    def _ahead(self, st: _Node) -> float:
        """How far ahead of an uplink the bound is looked at: REFUSALS_FREE + 1 of the node's mean gaps,
        so that every try made at once (the first, and one per refusal) comes before the bound reaches
        the threshold. Issue 11: with two gaps the third try came at the threshold, and on a radio whose
        duty cycle refuses a quarter of the TXs (the demo's bridge) a clock that drifts at its bound went
        past 2 s (2.7 s) once in a while."""
        if st.gap is None:
            return self.lookahead_s
        return min(max((REFUSALS_FREE + 1) * st.gap, 60.0), 3600.0)

    def _forget_clock(self, st: _Node) -> None:
        st.a_t = st.s_t = st.cross = None  # the rate is the crystal's: kept

    def _cross(self, st: _Node) -> float | None:
        """When the bound reaches the threshold (None: never, or unknown)."""
        a = st.a_t
        if a is None:
            return None
        t = float("inf")
        if st.r_hi > 0:
            t = a + (self.threshold_s - st.a_hi) / st.r_hi
        if st.r_lo < 0:
            t = min(t, a + (self.threshold_s + st.a_lo) / -st.r_lo)
        return t

    def _retry(self, st: _Node, reason: str, now: float, wire: bool) -> str | None:
        if st.sent_at is not None and st.tries:
            wait = min(self.retry_s * 2 ** (st.tries - 1), self.retry_max_s)
            if now - st.sent_at < wait:
                return None
        return reason

    def _refill(self, now: float) -> None:
        if self._tokens_at is not None:
            if now <= self._tokens_at:  # receptions of several radios need not come in time order
                return
            self._tokens = min(
                self.airtime_s_per_h, self._tokens + (now - self._tokens_at) * self.airtime_s_per_h / 3600.0
            )
        self._tokens_at = now

    def _afford(self, reason: str, now: float, wire: bool, sf: int | None, low: bool = False) -> str | None:
        if wire:
            return reason
        self._refill(now)
        # priced at the largest TIME at the answer's SF (SF12 when unknown), never above the bucket
        cost = min(self.airtime_s(TIME_FRAME_MAX, sf if sf is not None else 12), self.airtime_s_per_h)
        if low:
            cost = min(cost + self.airtime_s_per_h / 2, self.airtime_s_per_h)
        if self._tokens < cost:
            self.counts["budget_short"] += 1
            return None
        return reason

    def _measure(self, st: _Node, node_s: int, t0: float) -> None:
        st.cross = None
        lo, hi = node_s - t0, node_s + 1 - t0 + self.report_delay_s
        if st.a_t is not None:
            dt = max(0.0, t0 - st.a_t)
            plo, phi = st.a_lo + st.r_lo * dt, st.a_hi + st.r_hi * dt
            if max(lo, plo) <= min(hi, phi):
                lo, hi = max(lo, plo), min(hi, phi)
            else:  # the clock moved by other means (a tool, a drift beyond max_drift_ppm): start over
                self.counts["disagreed"] += 1
                st.s_t = None
                st.r_lo, st.r_hi = -self.max_rate, self.max_rate
        st.a_t, st.a_lo, st.a_hi = t0, lo, hi
        if st.s_t is None:
            st.s_t, st.s_lo, st.s_hi = t0, lo, hi
            return
        dt = t0 - st.s_t
        if dt <= 0:
            return
        rlo, rhi = (lo - st.s_hi) / dt, (hi - st.s_lo) / dt
        nlo, nhi = max(rlo, st.r_lo), min(rhi, st.r_hi)
        if nlo <= nhi:
            st.r_lo, st.r_hi = nlo, nhi
        else:  # the crystal changed (temperature): what this segment says, within the datasheet
            st.r_lo, st.r_hi = max(rlo, -self.max_rate), min(rhi, self.max_rate)
            if st.r_lo > st.r_hi:
                st.r_lo, st.r_hi = -self.max_rate, self.max_rate
