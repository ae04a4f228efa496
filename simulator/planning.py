"""Gateway planning (`lumeau plan`): the fewest candidate rooftops that give a city its target DER.

    sites = load_candidates("sites.csv")              # [GatewaySite], or PlanError naming row and column
    planner = Planner(scenario, sites)
    plan = planner.greedy(0.99)                        # Plan: chosen sites and their Evaluation
    best = planner.exhaustive(0.99)                    # the optimum on a small city (<= MAX_EXHAUSTIVE sites)

The model (simulator/README.md, "Gateway planning"):

- Links: every node against every candidate on the scenario's own channel
  model (`Channel.mean_rx_dbm`: its path loss, antenna heights, TX power; the
  median, no shadowing draw). A site *covers* a node when the median power
  there is at least the installation margin (`[radio] sf_margin_db`, 10 dB by
  default) above the sensitivity at SF12; with a set of sites, a node sends
  at the fastest SF with that margin at its best site (as auto SF and ADR
  pick it), SF12 if none.
- Traffic, the city's real one: each node's periodic report every
  `report_interval` of its kind, alarms (ALARMS_PER_NODE_DAY, confirmed: an
  ACK each), and downlinks (the gateway's automatic TIME every
  time_resync / max drift seconds, gateway/timesync.py's defaults, plus the
  ACKs), each downlink sent in RX1 through the node's best site.
  Frames are sized at the 51-byte report budget (every report fits it;
  an upper bound, so airtime and collisions are cautious).
- Delivery of one uplink: at each site, heard above sensitivity under the
  channel's log-normal shadowing (Phi(margin / sigma), as
  `Channel.delivery_probability`) and the site not transmitting then (half
  duplex: exp(-downlink rate x (uplink + downlink airtime))). Collisions:
  the overlap is one event for every site (pure ALOHA: clear with
  exp(-2 G), G the load on the same channel and SF of the frames a site
  hears -- LoRaSim's rule that frames below sensitivity do not collide);
  overlapped, a site still takes the frame when the interferer is
  `capture_db` weaker there (the share of G that is, by median power).
  Sites otherwise decide independently, as in the channel; the DER is the
  traffic-weighted mean of the nodes' deliveries. Left out: the preamble
  lock and the duty cycle's refusals (both cautious). `plan_check` runs the
  same traffic on the channel's event model to check the figure.
- Search: greedy set cover (the site that covers most uncovered nodes,
  ties to the larger summed margin), then greedy on DER (the site that
  raises it most) until the target is met, then reverse delete (drop any
  chosen site whose loss keeps coverage and target), then a pair swap
  (two chosen sites for one unchosen, while one meets the target; at most
  SWAP_BUDGET / nodes evaluations, so a big city gets a part of it). Why greedy: set cover
  is NP-hard; greedy is within ln(n) of the optimum in the worst case and
  usually within one site on a city (checked against `exhaustive` by the
  tests); a city has tens to hundreds of candidates, where 2^C subsets
  are out of reach.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway import timesync
from protocol import lora
from simulator import channel as ch
from simulator.metrics import FRAME_BUDGET
from simulator.scenario import MAX_COORD_M, LampNode, Scenario

FRAME_BYTES = FRAME_BUDGET  # every uplink sized at the report budget (cautious)
DOWNLINK_BYTES = 20  # a TIME or an ACK: 13 bytes of overhead and a short body
ALARMS_PER_NODE_DAY = 0.1  # confirmed alarms per node and day (a fault every ten days, a cautious figure)
TIME_RESYNC_S = timesync.DEFAULT_THRESHOLD_S / (timesync.DEFAULT_MAX_DRIFT_PPM * 1e-6)  # 20,000 s
SWAP_BUDGET = 2_000_000  # node-evaluations the pair swaps may spend (evaluations x nodes): 10k nodes, 200
GAUSS_HERMITE_3 = ((-math.sqrt(3.0), 1 / 6), (0.0, 2 / 3), (math.sqrt(3.0), 1 / 6))  # standard normal nodes, weights
POISSON_TAIL = 1e-6  # overlap counts summed until this much probability is left (counted as lost)
MAX_OVERLAPS = 60
MAX_EXHAUSTIVE = 16  # candidates: 2^16 subsets is the most the exhaustive check tries
DAY_S = 86400.0
COLUMNS = ("id", "x", "y")  # required; height_m optional (default GATEWAY_HEIGHT_M)
GATEWAY_HEIGHT_M = 30.0


class PlanError(ValueError):
    """Input a plan cannot use, or a target it cannot meet (the message says which and why)."""


def load_candidates(path: Path) -> list[ch.GatewaySite]:
    """Candidate sites from a CSV file with a header: id, x, y (metres, as the scenario), height_m optional.

    Comma- or semicolon-separated (the header says which), UTF-8 with or without a byte-order mark."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no part of "id"
    except FileNotFoundError:
        raise PlanError(f"{path}: no such candidates file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"{path}: cannot read: {e}") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = ";" if ";" in first and "," not in first else ","  # spreadsheets in French locales write ';'
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    rows_n = [(k + 1, r) for k, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_n:
        raise PlanError(f"{path}: empty: needs a header (id,x,y[,height_m]) and one row per candidate site")
    line, header = rows_n[0]
    cols = [c.strip() for c in header]
    missing = [c for c in COLUMNS if c not in cols]
    unknown = [c for c in cols if c not in (*COLUMNS, "height_m")]
    if missing or unknown:
        why = f"missing column(s) {', '.join(missing)}" if missing else f"unknown column(s) {', '.join(unknown)}"
        raise PlanError(f"{path}: row {line} (header): {why}; the columns are id, x, y and optionally height_m")
    sites: list[ch.GatewaySite] = []
    seen: dict[str, int] = {}
    for line, r in rows_n[1:]:
        if len(r) != len(cols):
            raise PlanError(f"{path}: row {line}: {len(r)} fields, the header has {len(cols)}")
        rec = dict(zip(cols, (c.strip() for c in r)))
        sid = rec["id"]
        if not sid:
            raise PlanError(f"{path}: row {line}, column id: empty")
        if sid in seen:
            raise PlanError(f"{path}: row {line}, column id: {sid!r} already on row {seen[sid]}")
        seen[sid] = line

        def num(col: str, lo: float, hi: float, line: int = line, rec: dict[str, str] = rec) -> float:
            text = rec[col].replace(",", ".") if delimiter == ";" else rec[col]  # with ';' comes a decimal comma
            try:
                v = float(text)
            except ValueError:
                raise PlanError(f"{path}: row {line}, column {col}: not a number: {rec[col]!r}") from None
            if not (math.isfinite(v) and lo <= v <= hi):
                raise PlanError(f"{path}: row {line}, column {col}: must be within {lo:g}..{hi:g}, got {rec[col]}")
            return v

        x = num("x", -MAX_COORD_M, MAX_COORD_M)
        y = num("y", -MAX_COORD_M, MAX_COORD_M)
        h = num("height_m", 1.0, 500.0) if rec.get("height_m") else GATEWAY_HEIGHT_M
        sites.append(ch.GatewaySite(sid, x, y, h))
    if not sites:
        raise PlanError(f"{path}: no candidate sites (only a header)")
    return sites


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The expected delivery with a set of sites (indices into the candidates)."""

    sites: tuple[int, ...]
    der: float
    delivery: tuple[float, ...]  # per node, in scenario order
    sf: tuple[int, ...]  # per node
    best: tuple[int, ...]  # per node: the candidate index of its best chosen site
    uplink_load: dict[int, float]  # per site: the busiest (channel, SF)'s ALOHA load G
    downlink_s_per_h: dict[int, float]  # per site: downlink airtime per hour
    downlink_limit_s_per_h: float  # the duty cycle's allowance per hour


@dataclasses.dataclass(frozen=True)
class Plan:
    target: float
    evaluation: Evaluation
    steps: tuple[str, ...]  # how the search went, one line per step


class Planner:
    """Candidate sites against a scenario's nodes and traffic (module docstring)."""

    def __init__(
        self,
        sc: Scenario,
        candidates: Sequence[ch.GatewaySite],
        margin_db: float | None = None,
        alarms_per_node_day: float = ALARMS_PER_NODE_DAY,
    ) -> None:
        if not sc.nodes:
            raise PlanError(f"{sc.file}: no nodes to plan for")
        self.sc = sc
        self.sites = list(candidates)
        p = sc.radio.params
        self.params = p
        self.margin_db = sc.radio.sf_margin_db if margin_db is None else margin_db
        channel = ch.Channel(self.sites, p, sc.seed)
        self.rx: list[list[float]] = []
        for n in sc.nodes:
            channel.add_node(n.node_id, n.x, n.y, n.height_m)
            self.rx.append(channel.mean_rx_dbm(n.node_id))
        self.sens = {sf: ch.sensitivity_dbm(sf, p.bw_hz) for sf in range(ch.SF_MIN, ch.SF_MAX + 1)}
        self.sigma = p.shadowing_sigma_db if p.shadowing == "packet" else 0.0
        self.channels = max(1, len(sc.radio.channels_hz))
        band = lora.band_for(sc.radio.channels_hz[0], p.bw_hz)
        self.dl_limit_s_per_h = 3600.0 / lora.BANDS[band][2]
        self.up_air_s = {sf: lora.airtime_ms(FRAME_BYTES, sf, p.bw_hz, p.cr_denom) / 1000 for sf in self.sens}
        self.dl_air_s = {sf: lora.airtime_ms(DOWNLINK_BYTES, sf, p.bw_hz, p.cr_denom) / 1000 for sf in self.sens}
        self.alarms_per_node_day = alarms_per_node_day
        alarm_rate = alarms_per_node_day / DAY_S
        self.up_rate = [
            1.0 / (sc.lighting if n.kind == "lighting" else sc.irrigation).report_interval_s + alarm_rate
            for n in sc.nodes
        ]
        self.dl_rate = 1.0 / TIME_RESYNC_S + alarm_rate  # a TIME now and then, an ACK per alarm
        floor = self.sens[ch.SF_MAX] + self.margin_db
        self.covers = [frozenset(i for i, row in enumerate(self.rx) if row[c] >= floor) for c in range(len(self.sites))]

    # ------------------------------------------------------------ coverage
    def unreachable(self) -> list[int]:
        """Nodes (indices) that no candidate covers with the installation margin."""
        every: set[int] = set().union(*self.covers) if self.covers else set()
        return [i for i in range(len(self.rx)) if i not in every]

    def covered(self, sites: Iterable[int]) -> bool:
        got: set[int] = set()
        for c in sites:
            got |= self.covers[c]
        return len(got) == len(self.rx)

    def _sf(self, best_rx: float) -> int:
        for sf in range(ch.SF_MIN, ch.SF_MAX + 1):
            if best_rx - self.sens[sf] >= self.margin_db:
                return sf
        return ch.SF_MAX

    # ------------------------------------------------------------ delivery
    def evaluate(self, sites: Sequence[int]) -> Evaluation:
        """The expected DER with these sites (module docstring: hearing, half duplex, a shared overlap, capture)."""
        S = tuple(sorted(sites))
        n = len(self.rx)
        sfs, best = [], []
        for i in range(n):
            row = self.rx[i]
            b = S[0]
            for c in S[1:]:
                if row[c] > row[b]:  # the first site of the set on a tie
                    b = c
            best.append(b)
            sfs.append(self._sf(row[b]))
        hear = [[self._hear(self.rx[i][c] - self.sens[sfs[i]]) for c in S] for i in range(n)]
        # offered load per (site, SF) of the frames the site hears, spread over the channels
        load = {(c, sf): 0.0 for c in S for sf in self.sens}
        dl_s = dict.fromkeys(S, 0.0)
        dl_rate = dict.fromkeys(S, 0.0)
        for i in range(n):
            w = self.up_rate[i] * self.up_air_s[sfs[i]] / self.channels
            for k, c in enumerate(S):
                load[(c, sfs[i])] += w * hear[i][k]
            dl_s[best[i]] += self.dl_rate * self.dl_air_s[sfs[i]]
            dl_rate[best[i]] += self.dl_rate
        dl_mean = {c: dl_s[c] / dl_rate[c] if dl_rate[c] else 0.0 for c in S}
        # per (site, SF): the load it hears sorted by median power, to find the part a frame does not capture
        ranked: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
        for k, c in enumerate(S):
            for sf in self.sens:
                pts = sorted(
                    (self.rx[i][c], self.up_rate[i] * self.up_air_s[sf] / self.channels * hear[i][k])
                    for i in range(n)
                    if sfs[i] == sf and hear[i][k] > 0.0
                )
                suffix = [0.0] * (len(pts) + 1)
                for j in range(len(pts) - 1, -1, -1):
                    suffix[j] = suffix[j + 1] + pts[j][1]
                ranked[(c, sf)] = ([p for p, _w in pts], suffix)
        capture = self.params.capture_db
        d_sigma = self.sigma * math.sqrt(2.0)
        spread = ((0.0, 1.0),) if d_sigma == 0 else tuple((z * d_sigma, w) for z, w in GAUSS_HERMITE_3)
        delivery = []
        for i in range(n):
            sf = sfs[i]
            own = self.up_rate[i] * self.up_air_s[sf] / self.channels
            g_any = 0.0
            sites_i: list[tuple[float, float]] = []  # (heard and not deafened, share of the load that is harmful)
            for k, c in enumerate(S):
                h = hear[i][k]
                if h <= 0.0:
                    continue
                powers, suffix = ranked[(c, sf)]
                g = max(0.0, suffix[0] - own * h)  # everything else this site hears on the channel and SF
                # harmful: not capture_db weaker at this site, the two frames' shadowing draws included
                # (their difference ~ N(0, 2 sigma^2), by 3-point Gauss-Hermite)
                floor = self.rx[i][c] - capture
                harm = 0.0
                for z, w in spread:
                    harm += w * suffix[bisect.bisect_right(powers, floor + z)]
                harm = max(0.0, harm - own * h)
                g_any = max(g_any, g)
                duplex = math.exp(-dl_rate[c] * (self.up_air_s[sf] + dl_mean[c]))
                sites_i.append((h * duplex, harm / g if g > 0 else 0.0))
            # the overlapping frames are the same for every site: K ~ Poisson(2 G) (pure ALOHA); a site
            # takes the frame when none of the K is harmful there (not capture_db weaker)
            mean_k = 2.0 * g_any
            p_k = math.exp(-mean_k)
            seen = got = 0.0
            k_over = 0
            while True:
                miss = 1.0
                for ok, q in sites_i:
                    miss *= 1.0 - ok * (1.0 - q) ** k_over
                got += p_k * (1.0 - miss)
                seen += p_k
                if seen > 1.0 - POISSON_TAIL or k_over >= MAX_OVERLAPS:
                    break
                k_over += 1
                p_k *= mean_k / k_over
            delivery.append(got)
        total = sum(self.up_rate)
        der = sum(r * d for r, d in zip(self.up_rate, delivery)) / total
        return Evaluation(
            S,
            der,
            tuple(delivery),
            tuple(sfs),
            tuple(best),
            {c: max(load[(c, sf)] for sf in self.sens) for c in S},
            {c: dl_s[c] * 3600.0 for c in S},
            self.dl_limit_s_per_h,
        )

    def _hear(self, margin: float) -> float:
        if self.sigma > 0:
            return _phi(margin / self.sigma)
        return 1.0 if margin >= 0 else 0.0

    def meets(self, sites: Sequence[int], target: float) -> Evaluation | None:
        if not self.covered(sites):
            return None
        ev = self.evaluate(sites)
        return ev if ev.der >= target else None

    # ------------------------------------------------------------ search
    def _check_reachable(self) -> None:
        lost = self.unreachable()
        if lost:
            names = [self.sc.nodes[i].name for i in lost]
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise PlanError(
                f"{len(names)} node(s) that no candidate site reaches with {self.margin_db:g} dB of margin "
                f"at SF12: {shown}"
            )

    def greedy(self, target: float) -> Plan:
        """Greedy set cover, then greedy on DER, then reverse delete (module docstring)."""
        self._check_reachable()
        steps: list[str] = []
        chosen: list[int] = []
        left = set(range(len(self.rx)))
        while left:
            c = max(
                (c for c in range(len(self.sites)) if c not in chosen),
                key=lambda c: (len(self.covers[c] & left), self._margin_sum(c, left), -c),
            )
            steps.append(f"cover: {self.sites[c].id} (+{len(self.covers[c] & left)} nodes)")
            chosen.append(c)
            left -= self.covers[c]
        ev = self.evaluate(chosen)
        while ev.der < target:
            rest = [c for c in range(len(self.sites)) if c not in chosen]
            if not rest:
                raise PlanError(self._short_of(target, ev))
            trials = [(self.evaluate([*chosen, c]), c) for c in rest]
            ev, c = max(trials, key=lambda t: (t[0].der, -t[1]))
            chosen.append(c)
            steps.append(f"der: {self.sites[c].id} (DER {ev.der:.4f})")
        for c in reversed(list(chosen)):
            fewer = [k for k in chosen if k != c]
            if fewer and (better := self.meets(fewer, target)) is not None:
                chosen, ev = fewer, better
                steps.append(f"drop: {self.sites[c].id} (DER {ev.der:.4f})")
        chosen, ev = self._swap_pairs(chosen, ev, target, steps)
        return Plan(target, ev, tuple(steps))

    def _swap_pairs(
        self, chosen: list[int], ev: Evaluation, target: float, steps: list[str]
    ) -> tuple[list[int], Evaluation]:
        """Local search: two chosen sites replaced by one unchosen that still meets the target, while any does."""
        improved = True
        budget = SWAP_BUDGET // len(self.rx)  # evaluations: the whole pass on a small city, a bounded part on a big one
        while improved and len(chosen) >= 2:
            improved = False
            for a, b in itertools.combinations(list(chosen), 2):
                keep = [k for k in chosen if k not in (a, b)]
                for c in range(len(self.sites)):
                    if c in chosen or not self.covered([*keep, c]):
                        continue
                    if budget <= 0:
                        steps.append("swap: stopped, its budget spent (SWAP_BUDGET)")
                        return chosen, ev
                    budget -= 1
                    if (better := self.meets([*keep, c], target)) is None:
                        continue
                    steps.append(f"swap: {self.sites[a].id} and {self.sites[b].id} for {self.sites[c].id}")
                    chosen, ev, improved = [*keep, c], better, True
                    break
                if improved:
                    break
        return chosen, ev

    def _margin_sum(self, c: int, nodes: set[int]) -> float:
        floor = self.sens[ch.SF_MAX]
        return sum(self.rx[i][c] - floor for i in self.covers[c] & nodes)

    def _short_of(self, target: float, ev: Evaluation) -> str:
        worst = sorted(range(len(ev.delivery)), key=lambda i: ev.delivery[i])[:5]
        names = ", ".join(f"{self.sc.nodes[i].name} {ev.delivery[i]:.3f}" for i in worst)
        return (
            f"target DER {target:g} is out of reach: the search ran out of candidates at DER {ev.der:.4f} "
            f"with {len(ev.sites)} of {len(self.sites)} sites; the worst nodes: {names}"
        )

    def exhaustive(self, target: float) -> Plan:
        """The fewest sites meeting the target, over every subset (the best DER among the fewest)."""
        self._check_reachable()
        if len(self.sites) > MAX_EXHAUSTIVE:
            raise PlanError(f"exhaustive search takes at most {MAX_EXHAUSTIVE} candidates, got {len(self.sites)}")
        tried = 0
        for k in range(1, len(self.sites) + 1):
            found: Evaluation | None = None
            for combo in itertools.combinations(range(len(self.sites)), k):
                tried += 1
                ev = self.meets(combo, target)
                if ev is not None and (found is None or ev.der > found.der):
                    found = ev
            if found is not None:
                return Plan(target, found, (f"exhaustive: {tried} subsets tried",))
        raise PlanError(self._short_of(target, self.evaluate(range(len(self.sites)))))

    # ------------------------------------------------------------ outputs
    def groups(self, ev: Evaluation) -> dict[str, dict[str, float | int]]:
        """DER per street and per park (the scenario's districts): nodes, traffic-weighted DER, worst node."""
        acc: dict[str, list[float]] = {}
        for i, n in enumerate(self.sc.nodes):
            key = f"street:{n.street}" if isinstance(n, LampNode) else f"park:{n.park}"
            a = acc.setdefault(key, [0, 0.0, 0.0, 1.0])
            a[0] += 1
            a[1] += self.up_rate[i] * ev.delivery[i]
            a[2] += self.up_rate[i]
            a[3] = min(a[3], ev.delivery[i])
        return {
            k: {"nodes": int(a[0]), "der": round(a[1] / a[2], 5), "worst": round(a[3], 5)}
            for k, a in sorted(acc.items())
        }

    def to_dict(self, plan: Plan, exhaustive: Plan | None = None) -> dict:
        ev = plan.evaluation
        sfh: dict[str, int] = {}
        for sf in ev.sf:
            sfh[f"SF{sf}"] = sfh.get(f"SF{sf}", 0) + 1
        out: dict = {
            "scenario": self.sc.name,
            "nodes": len(self.rx),
            "candidates": len(self.sites),
            "target_der": plan.target,
            "algorithm": "greedy set cover, then greedy on DER, reverse delete and pair swaps",
            "margin_db": self.margin_db,
            "der": round(ev.der, 5),
            "chosen": [
                {
                    "id": self.sites[c].id,
                    "x": self.sites[c].x,
                    "y": self.sites[c].y,
                    "height_m": self.sites[c].height_m,
                    "nodes": sum(1 for b in ev.best if b == c),
                    "uplink_load": round(ev.uplink_load[c], 5),
                    "downlink_s_per_h": round(ev.downlink_s_per_h[c], 3),
                    "airtime_margin": round(1.0 - ev.downlink_s_per_h[c] / ev.downlink_limit_s_per_h, 4),
                }
                for c in ev.sites
            ],
            "sf_histogram": dict(sorted(sfh.items(), key=lambda kv: int(kv[0][2:]))),
            "der_by_group": self.groups(ev),
            # the target is the city's DER (traffic-weighted): a street or park may still fall short of it
            "groups_below_target": sorted(k for k, g in self.groups(ev).items() if g["der"] < plan.target),
            "steps": list(plan.steps),
            "traffic": {
                "frame_bytes": FRAME_BYTES,
                "downlink_bytes": DOWNLINK_BYTES,
                "report_interval_s": {
                    "lighting": self.sc.lighting.report_interval_s,
                    "irrigation": self.sc.irrigation.report_interval_s,
                },
                "alarms_per_node_day": self.alarms_per_node_day,
                "time_resync_s": TIME_RESYNC_S,
                "channels": self.channels,
            },
        }
        if exhaustive is not None:
            out["exhaustive"] = {
                "sites": len(exhaustive.evaluation.sites),
                "chosen": [self.sites[c].id for c in exhaustive.evaluation.sites],
                "der": round(exhaustive.evaluation.der, 5),
                "gap": len(ev.sites) - len(exhaustive.evaluation.sites),
                "note": exhaustive.steps[0],
            }
        return out
