"""Adaptive data rate, network side: which SF and TX power each LoRa node should use.

Sans-I/O: `Adr.observe(node_id, counter, snr_db, sf)` is told of every
uplink heard (every copy: the best SNR of a frame counts) and answers with
the `Action` to take, if any; `AdrObserver` (below) wires it between the
pipeline and the downlink queue. No clock, no store: the state is rebuilt
from the uplinks after a restart (below).

The algorithm (after ChirpStack's default ADR, itself Semtech's
recommendation; policies are constructor arguments, defaults ChirpStack's):

- per node, the SNR of its last `history` uplinks (the best copy of each);
  nothing is decided before `min_uplinks` of them at the current settings;
- margin = SNR statistic (`statistic`: "max" as ChirpStack, or "mean")
  - the demodulation floor of the current SF (`required_snr_db`, the
  SX1276 datasheet's as ChirpStack's) - `margin_db` (the installation
  margin) - the node's penalty (below);
- steps = floor(margin / `step_db`): each positive step lowers the SF by one
  (SF first: it saves airtime), then, at `sf_min`, lowers the TX power by
  `power_step_db` down to `tx_power_min`; each negative step raises the TX
  power by `power_step_db` up to `tx_power_max`, then (unlike ChirpStack, which
  leaves that to the device: we own both ends) raises the SF by one;
- all steps at once, in one CONFIG (SPEC §5: keys 3 spreading factor, 2 TX
  power), sent in the receive window of the uplink that decided it;
- at most `max_active` nodes (0: no limit) with a change under way (sent, or
  on trial): each change costs the gateway two downlinks, and a gateway's own
  duty cycle carries only a few dozen an hour at SF12.

Never unreachable (SPEC §5 "ADR"): a node that applied an SF or TX power from
a CONFIG keeps the settings it had before, and returns to them by itself
after FALLBACK_UPLINKS uplinks without hearing any downlink
(firmware/runtime.py). So the gateway confirms each change: the first uplink
heard at the new settings is answered with a downlink (a TIME: it has no
other effect, and the node takes any authenticated downlink as proof that
the gateway hears it). Then:

- the CONFIG never arrived (uplinks keep coming at the old SF, for
  FALLBACK_UPLINKS of them): the change is forgotten; the history decides
  again;
- the node stepped back (an uplink at the old SF after the change was seen,
  or, for a TX-power-only change, a gap of at least FALLBACK_UPLINKS
  counters): the gateway takes the old settings back, and, if uplinks were
  lost (a counter gap), adds `penalty_db` to that node's margin (up to
  `penalty_max_db`): the next change of that node needs more room; either
  way it lets min_uplinks x 2^fallbacks (up to x 32) uplinks pass before the
  next change, so a node whose confirmations cannot leave (the gateway's own
  duty cycle spent) is not tried again and again;
- after FALLBACK_UPLINKS uplinks heard at the new settings the change is
  final (a node that missed the confirmation would have stepped back).

What the gateway cannot see: the node's TX power (an uplink carries its SF,
not its power). It believes what it last set, or `tx_power_max` for a node
it has not set (after a restart too): a wrong belief errs towards more power.
A node whose SF changes without the gateway (a technician's tool, a reboot
into older settings) is taken at its word: history cleared.

Limits: one channel plan (EU868 SF7..12 at 125 kHz); per-node state is a few
hundred bytes (the SNR history); nodes heard without SNR or SF (serial, BLE)
are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.model import Reception, Record
from protocol import lora
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.adr")

# The demodulation floor (SNR, dB) per SF at 125 kHz: SX1276 datasheet, as ChirpStack's EU868 table.
REQUIRED_SNR_DB: dict[int, float] = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
# Uplinks without any downlink heard after which a node steps back to its previous settings:
# firmware/runtime.py's _ADR_FALLBACK (SPEC §5, "ADR").
FALLBACK_UPLINKS = 6
STATISTICS = ("max", "mean")
SF_POLICIES = ("fastest", "balanced")

# The Adr arguments gateway/config.py's [adr] section sets (enabled aside).
ADR_KEYS = (
    "margin_db",
    "step_db",
    "history",
    "min_uplinks",
    "statistic",
    "sf_policy",
    "tx_power_min",
    "tx_power_max",
    "power_step_db",
    "raise_sf",
    "penalty_db",
    "max_active",
)

CONFIG = "config"  # Action.kind: send a CONFIG with `settings`
CONFIRM = "confirm"  # Action.kind: send any downlink (the node takes it as proof it is heard)


@dataclass(frozen=True, slots=True)
class Action:
    node_id: int
    kind: str  # CONFIG | CONFIRM
    settings: Mapping[int, int]  # CONFIG settings (CFG_SF, CFG_TX_POWER); for CONFIRM the settings confirmed
    reason: str = ""


class _Node:
    __slots__ = (
        "sf",
        "power",
        "snr",
        "last",
        "pending",
        "pending_seen",
        "trial",
        "trial_heard",
        "penalty",
        "fallbacks",
        "wait",
    )

    def __init__(self, sf: int, power: int) -> None:
        self.sf = sf
        self.power = power
        self.snr: OrderedDict[int, float] = OrderedDict()  # counter -> best SNR, oldest first
        self.last = -1  # highest counter heard
        self.pending: tuple[int, int] | None = None  # (sf, power) sent, not yet seen applied
        self.pending_seen = 0  # uplinks heard at the old settings since
        self.trial: tuple[int, int] | None = None  # (sf, power) before a change seen applied, until final
        self.trial_heard = 0
        self.penalty = 0.0
        self.fallbacks = 0
        self.wait = 0  # uplinks to let pass before the next change (after a step-back)


class Adr:
    def __init__(
        self,
        *,
        margin_db: float = 10.0,
        step_db: float = 3.0,
        history: int = 20,
        min_uplinks: int = 20,
        statistic: str = "max",
        required_snr_db: Mapping[int, float] = REQUIRED_SNR_DB,
        sf_min: int = m.SF_MIN,
        sf_max: int = m.SF_MAX,
        tx_power_min: int = m.TX_POWER_MIN,
        tx_power_max: int = m.TX_POWER_MAX,
        power_step_db: int = 2,
        raise_sf: bool = True,
        penalty_db: float = 3.0,
        penalty_max_db: float = 9.0,
        fallback_uplinks: int = FALLBACK_UPLINKS,
        sf_policy: str = "fastest",
        frame_bytes: int = 40,
        max_active: int = 0,
    ) -> None:
        if sf_policy not in SF_POLICIES:
            raise ValueError(f"sf_policy must be one of {SF_POLICIES}, got {sf_policy!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if not m.SF_MIN <= sf_min <= sf_max <= m.SF_MAX:
            raise ValueError(f"need {m.SF_MIN} <= sf_min <= sf_max <= {m.SF_MAX}")
        if not m.TX_POWER_MIN <= tx_power_min <= tx_power_max <= m.TX_POWER_MAX:
            raise ValueError(f"need {m.TX_POWER_MIN} <= tx_power_min <= tx_power_max <= {m.TX_POWER_MAX}")
        missing = [sf for sf in range(sf_min, sf_max + 1) if sf not in required_snr_db]
        if missing:
            raise ValueError(f"required_snr_db has no value for SF {missing}")
        if max_active < 0:
            raise ValueError("max_active must be >= 0 (0: no limit)")
        if step_db <= 0 or power_step_db <= 0 or not 1 <= min_uplinks <= history or fallback_uplinks < 1:
            raise ValueError("step_db, power_step_db > 0; 1 <= min_uplinks <= history; fallback_uplinks >= 1")
        self.margin_db = margin_db
        self.step_db = step_db
        self.history = history
        self.min_uplinks = min_uplinks
        self.statistic = statistic
        self.required_snr_db = dict(required_snr_db)
        self.sf_min, self.sf_max = sf_min, sf_max
        self.tx_power_min, self.tx_power_max = tx_power_min, tx_power_max
        self.power_step_db = power_step_db
        self.raise_sf = raise_sf
        self.penalty_db = penalty_db
        self.penalty_max_db = penalty_max_db
        self.fallback_uplinks = fallback_uplinks
        self.sf_policy = sf_policy
        self.max_active = max_active
        self._active: set[int] = set()  # nodes with a change pending or on trial
        self.airtime_ms = {sf: lora.airtime_ms(frame_bytes, sf) for sf in range(m.SF_MIN, m.SF_MAX + 1)}
        self._nodes: dict[int, _Node] = {}
        self._plan: dict[int, int] = {}  # balanced: node -> SF, from every node's SNR (plan())
        self._plan_age = 0  # uplinks observed since the plan was made
        self._plan_nodes: set[int] = set()  # the nodes the plan considered (some fit no SF)
        self.counts: dict[str, int] = {
            "changes": 0,
            "confirms": 0,
            "fallbacks": 0,
            "fallbacks_with_loss": 0,
            "lost_configs": 0,
        }

    # ------------------------------------------------------------ what the gateway tells it

    def observe(
        self, node_id: int, counter: int, snr_db: float | None, sf: int | None, held: bool = False
    ) -> Action | None:
        """One copy of an uplink; the action to take now, if any (a repeated copy only refines the SNR).

        `held`: the CONFIG last decided for this node is still waiting in the downlink queue (the
        gateway's duty cycle, other downlinks first): uplinks at the old settings do not count it lost.
        """
        if snr_db is None or sf is None or not self.sf_min <= sf <= m.SF_MAX or not math.isfinite(snr_db):
            return None
        st = self._nodes.get(node_id)
        if st is None:
            st = self._nodes[node_id] = _Node(sf, self.tx_power_max)
        if counter <= st.last:  # another copy (or a late one): keep the best SNR, decide nothing
            if counter in st.snr and snr_db > st.snr[counter]:
                st.snr[counter] = snr_db
            return None
        self._plan_age += 1
        gap = counter - st.last - 1 if st.last >= 0 else 0
        st.last = counter
        action = self._settings_heard(node_id, st, sf, gap, held)
        st.snr[counter] = snr_db
        while len(st.snr) > self.history:
            st.snr.popitem(last=False)
        if st.pending is None and st.trial is None:
            self._active.discard(node_id)
        action = action or self._decide(node_id, st)
        if st.pending is not None or st.trial is not None:
            self._active.add(node_id)
        return action

    def forget(self, node_id: int) -> None:
        """A node re-provisioned or removed: start afresh."""
        self._nodes.pop(node_id, None)
        self._active.discard(node_id)

    def settings(self, node_id: int) -> tuple[int, int] | None:
        """(SF, TX power dBm) the gateway believes the node uses, or None if never heard by radio."""
        st = self._nodes.get(node_id)
        return None if st is None else (st.sf, st.power)

    def snapshot(self) -> dict[int, dict[str, Any]]:
        """Per node: believed settings, SNR samples, penalty, fallbacks (the API and the simulator show it)."""
        return {
            nid: {
                "sf": st.sf,
                "tx_power": st.power,
                "uplinks": len(st.snr),
                "pending": st.pending,
                "trial": st.trial is not None,
                "penalty_db": st.penalty,
                "fallbacks": st.fallbacks,
                "wait": st.wait,
            }
            for nid, st in self._nodes.items()
        }

    # ------------------------------------------------------------ the state machine

    def _settings_heard(self, node_id: int, st: _Node, sf: int, gap: int, held: bool) -> Action | None:
        """Follow what the node really uses: a CONFIG applied, lost, or stepped back from."""
        if st.pending is not None:
            new_sf, new_power = st.pending
            applied = sf == new_sf if new_sf != st.sf else sf == st.sf  # power-only: taken as applied
            if applied:
                st.trial = (st.sf, st.power)
                st.trial_heard = 0
                st.sf, st.power = new_sf, new_power
                st.pending = None
                st.snr.clear()
                self.counts["confirms"] += 1
                return Action(node_id, CONFIRM, {m.CFG_SF: st.sf, m.CFG_TX_POWER: st.power}, "first uplink heard")
            if sf == st.sf:
                st.pending_seen += 0 if held else 1
                if st.pending_seen > self.fallback_uplinks:  # the CONFIG never arrived
                    st.pending = None
                    self.counts["lost_configs"] += 1
                return None
            st.pending = None  # neither old nor new: someone else set it (below)
        if st.trial is not None:
            old_sf, old_power = st.trial
            stepped_back = (sf == old_sf and sf != st.sf) or gap >= self.fallback_uplinks
            if stepped_back:
                log.info(
                    "node stepped back from SF%d/%d dBm to SF%d/%d dBm",
                    st.sf,
                    st.power,
                    old_sf,
                    old_power,
                    extra={"node": f"{node_id:08x}"},
                )
                st.sf, st.power = old_sf, old_power
                st.trial = None
                st.fallbacks += 1
                self.counts["fallbacks"] += 1
                if gap > 0:  # uplinks were lost at the new settings: ask for more room next time
                    st.penalty = min(self.penalty_max_db, st.penalty + self.penalty_db)
                    self.counts["fallbacks_with_loss"] += 1
                # and wait longer each time (a confirmation that could not leave: the gateway's own
                # duty cycle is spent): min_uplinks x 2, 4, ... 32 uplinks before the next change
                st.wait = self.min_uplinks * (1 << min(st.fallbacks, 5))
                st.snr.clear()
                return None
            st.trial_heard += 1
            if st.trial_heard >= self.fallback_uplinks:
                st.trial = None  # final: a node that missed the confirmation would have stepped back
        if sf != st.sf:  # changed without us (a tool, a reboot into older settings): take its word
            st.sf = sf
            st.trial = None
            st.snr.clear()
        return None

    def _decide(self, node_id: int, st: _Node) -> Action | None:
        if st.wait > 0:
            st.wait -= 1
            return None
        if st.pending is not None or st.trial is not None or len(st.snr) < self.min_uplinks:
            return None
        if self.max_active and len(self._active) >= self.max_active:
            return None  # enough changes under way: their downlinks share the gateway's duty cycle
        values = st.snr.values()
        stat = max(values) if self.statistic == "max" else sum(values) / len(values)
        want = self._planned(node_id) if self.sf_policy == "balanced" else None
        sf, power = self.target(stat - st.penalty, st.sf, st.power, want)
        if (sf, power) == (st.sf, st.power):
            return None
        st.pending = (sf, power)
        st.pending_seen = 0
        self.counts["changes"] += 1
        settings = {}
        if sf != st.sf:
            settings[m.CFG_SF] = sf
        if power != st.power:
            settings[m.CFG_TX_POWER] = power
        return Action(node_id, CONFIG, settings, f"SNR {stat:.1f} dB at SF{st.sf}, {st.power} dBm")

    def target(self, snr_db: float, sf: int, power: int, want: int | None = None) -> tuple[int, int]:
        """(SF, TX power) for a node heard at `snr_db` (the statistic) while at (sf, power).

        margin(s, p) = snr_db + (p - power) - required_snr_db[s] - margin_db.
        - SF first, ChirpStack's steps: from the current SF, each step to the next faster SF spends
          step_db of margin (or the floors' difference, if larger; nothing if the faster SF's floor
          is no higher: a receiver table that is not monotonic); at sf_min, each full step_db left
          lowers the power by power_step_db. With the datasheet's floors (2.5 dB apart) that is
          exactly ChirpStack's floor(margin / 3).
        - None fits: the power goes up until the current SF fits again (whole power_step_db), up to
          tx_power_max; still none at tx_power_max: the fastest slower SF that fits there, else the
          most robust SF (raise_sf; ChirpStack leaves that to the device).
        - `want` (sf_policy "balanced"): that SF if it fits at tx_power_max, with the power it needs.
        """
        hi = self.sf_max if self.raise_sf else min(max(sf, self.sf_min), self.sf_max)
        sfs = range(self.sf_min, hi + 1)

        def margin(s: int, p: int) -> float:
            return snr_db + (p - power) - self.required_snr_db[s] - self.margin_db

        def power_for(s: int) -> int:
            short = -margin(s, power)
            if short <= 0:
                if s != self.sf_min:
                    return power
                return max(self.tx_power_min, power - math.floor(-short / self.step_db) * self.power_step_db)
            return min(self.tx_power_max, power + math.ceil(short / self.power_step_db) * self.power_step_db)

        if want is not None and self.sf_min <= want <= hi and margin(want, self.tx_power_max) >= 0:
            return want, power_for(want)
        s = min(max(sf, self.sf_min), hi)
        avail = margin(s, power)
        while s > self.sf_min:
            diff = self.required_snr_db[s - 1] - self.required_snr_db[s]
            if diff <= 0:  # as robust and faster: free
                s -= 1
                avail = margin(s, power)
                continue
            cost = max(self.step_db, diff)
            if avail < cost:
                break
            avail -= cost
            s -= 1
        if avail >= 0:
            if s == self.sf_min:
                power = max(self.tx_power_min, power - math.floor(avail / self.step_db) * self.power_step_db)
            return s, power
        p = power_for(s)
        if margin(s, p) >= 0:
            return s, p
        slower = [x for x in sfs if x > s and margin(x, p) >= 0]
        if slower:
            return min(slower), p
        return min(sfs, key=lambda x: (self.required_snr_db[x], -x)), p

    # ------------------------------------------------------------ balanced SFs

    def _planned(self, node_id: int) -> int | None:
        n = len(self._nodes)
        if node_id not in self._plan_nodes or self._plan_age > n // 2:
            self._plan_nodes = {nid for nid, st in self._nodes.items() if st.snr}
            self._plan = self.plan()
            self._plan_age = 0
        return self._plan.get(node_id)

    def plan(self) -> dict[int, int]:
        """An SF per node that spreads the airtime over the SFs (sf_policy "balanced").

        SFs are orthogonal: each is its own ALOHA channel, whose losses grow with
        its load (nodes x time on air). "fastest" puts each node on its fastest
        SF, which crowds the SFs that the outer ring of a cell must use while
        the faster ones stay empty. Here the nodes are placed weakest first,
        each on the SF it can use (margin >= 0 at tx_power_max) that adds the
        least to the expected collisions, (2 n_s + 1) x airtime_s (ties: the
        faster SF): the airtime of the SFs a node may use evens out, and a node
        with room to spare still takes a fast, empty SF. Nodes are assumed to
        send alike (same rate, frame_bytes).
        """
        rows = []
        for nid, st in self._nodes.items():
            if not st.snr:
                continue
            values = st.snr.values()
            stat = max(values) if self.statistic == "max" else sum(values) / len(values)
            rows.append((stat + self.tx_power_max - st.power - st.penalty, nid))
        rows.sort()
        count = dict.fromkeys(self.airtime_ms, 0)
        out = {}
        for snr, nid in rows:
            ok = [s for s in range(self.sf_min, self.sf_max + 1) if snr - self.required_snr_db[s] - self.margin_db >= 0]
            if not ok:  # nothing fits: target() takes the most robust SF; its airtime counts there
                count[min(range(self.sf_min, self.sf_max + 1), key=lambda s: (self.required_snr_db[s], -s))] += 1
                continue
            s = min(ok, key=lambda s: ((2 * count[s] + 1) * self.airtime_ms[s], s))
            count[s] += 1
            out[nid] = s
        return out


# ---------------------------------------------------------------- wiring


class DownlinkQueue(Protocol):
    """What AdrObserver needs of gateway.downlinks.Downlinks."""

    async def enqueue(self, node_id: int, mtype: int, body: dict[int, Any], ttl_s: float | None = None) -> Any: ...

    def on_uplink(self, record: Record, reception: Reception) -> None: ...

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None: ...


class AdrObserver:
    """The pipeline's uplink observer when ADR is on: ADR first, then the downlink queue.

    An action is queued (`Downlinks.enqueue`: a CONFIG with the new settings,
    or a TIME as the confirmation) before the downlink queue hears of the
    uplink, so it goes out in that uplink's receive window. A queue that
    refuses it (full) is logged; ADR then sees the CONFIG as lost.
    """

    def __init__(self, adr: Adr, downlinks: DownlinkQueue, config_ttl_s: float = 86400.0) -> None:
        self.adr = adr
        self.downlinks = downlinks
        self.config_ttl_s = config_ttl_s
        self._queuing: dict[int, asyncio.Task] = {}  # node -> its action being queued
        self._configs: dict[int, Any] = {}  # node -> its last CONFIG (a gateway.model.Downlink), while queued
        self.refused = 0

    def on_uplink(self, record: Record, reception: Reception) -> None:
        nid = record.node_id
        self._act(self.adr.observe(nid, record.counter, reception.snr, reception.sf, self._held(nid)))
        t = self._queuing.get(record.node_id)
        if t is None:
            self.downlinks.on_uplink(record, reception)
        else:
            t.add_done_callback(lambda _t: self.downlinks.on_uplink(record, reception))

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        self._act(self.adr.observe(node_id, counter, reception.snr, reception.sf, self._held(node_id)))
        self.downlinks.on_duplicate(node_id, counter, reception)

    def _act(self, action: Action | None) -> None:
        if action is None:
            return
        nid = action.node_id
        if action.kind == CONFIG:
            coro = self.downlinks.enqueue(nid, m.CONFIG, {m.CF_SETTINGS: dict(action.settings)}, self.config_ttl_s)
        else:
            coro = self.downlinks.enqueue(nid, m.TIME, {})
        t = asyncio.get_running_loop().create_task(self._queue(nid, action, coro))
        self._queuing[nid] = t

    def _held(self, nid: int) -> bool:
        dl = self._configs.get(nid)
        if dl is None:
            return False
        if getattr(dl, "state", None) == "queued":
            return True
        del self._configs[nid]
        return False

    async def _queue(self, nid: int, action: Action, coro: Any) -> None:
        try:
            dl = await coro
            if action.kind == CONFIG and dl is not None:
                self._configs[nid] = dl
            log.info("adr %s %s (%s)", action.kind, dict(action.settings), action.reason, extra={"node": f"{nid:08x}"})
        except Exception as e:  # a full queue, a node just removed: the state machine sees the CONFIG lost
            self.refused += 1
            log.warning("adr %s not queued: %s", action.kind, e, extra={"node": f"{nid:08x}"})
        finally:
            if self._queuing.get(nid) is asyncio.current_task():
                del self._queuing[nid]

    async def idle(self) -> None:
        """Wait until every action is queued (tests, shutdown)."""
        while self._queuing:
            await asyncio.gather(*list(self._queuing.values()), return_exceptions=True)
