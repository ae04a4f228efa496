"""A release image to a street of lamps by LoRa multicast, with packet loss (issue 12 item 6).

`lumeau sim run` adds an `update` section to its results when the scenario has an
`[update]` table (simulator/README.md): a street of `members` mains lamps, members of one
group, is sent an image of `image_bytes` (default 2,758 B: a typical delta, SPEC §13) in a
fragment session (SPEC §13 "Over LoRa") `at_s` after the start, as gateway/fuota.py sends it:

- the SETUP, the N uncoded fragments and `redundancy` x N coded ones as GROUP_FRAG frames at
  `multicast_sf` on 869.525 MHz (g3, 10 %), one every T / duty (the gateway's off-time,
  protocol.lora.DutyCycle, in the band);
- then each lamp not known complete is asked `frag_status` by unicast: the COMMAND in the
  RX1 window after its next report, its CMD_ACK with its next report (either lost: the next
  report again); when every one has answered, as many coded fragments as the worst one
  misses plus `margin` go by multicast; at most `max_rounds` rounds.

Each lamp takes each frame unless it is lost (probability `loss`, the scenario's seed) or
the lamp is deaf: transmitting its own report, and for 1.1 s after it (firmware/group.py's Listener:
its RX1). Its fragments go through the node's own decoder (protocol/nodefrag.py, the code a
lamp runs, with its files in a temporary directory): a lamp is `updated` once its image is
complete plus `install_s` (the updater's checks and the reboot into the trial).

With `park_valves` > 0, an irrigation park is updated beside it by unicast (section `park`),
as gateway/fuota.py sends to a class-A node: the SETUP and fragments of
fz.fragment_size(51 B) one per receive window after each heard uplink (every
`park_report_s`, give or take 5 %, as the firmware jitters it), in the RX1 band's 1 % duty
cycle (a window the band has closed sends nothing: the frame waits for a later one, as the
gateway's filler puts it back), then the `frag_status` exchange and coded repairs per
valve. One gateway serves the park.

With `bad_release`, a release that fails its trial goes through a campaign's stages
(section `bad_release`): the canaries are gateway/campaigns.py's `canary_count` of the
street (the gateway's own rule); they are a part of the group, so gateway/fuota.py sends them
the image by unicast (a multicast would reach every lamp holding the key). Each canary that
completes the image boots the trial (HELLO: installed), fails it and boots its previous
release `rollback_s` later, its HELLO naming the old bundle: the gateway marks it rolled back
and halts the campaign at once, even while the stage's delivery still runs (gateway/campaigns.py
`_judge` and `_deliver_watching`, modelled here: driving them takes a store, a registry and a
signed image, not the simulator's). If either HELLO is lost the gateway takes the rollback
for a reboot mid-transfer, and the halt waits for the end of `window_s` after the canaries'
delivery. The rest of the street is never sent a fragment.

This is a model of the radio exchange with the protocol's sizes and rules, not a run of the
firmware: the node's side runs under real MicroPython in tests/micropython/mp_frag.py.
"""

from __future__ import annotations

import heapq
import math
import random
import tempfile
from dataclasses import dataclass
from typing import Any

from gateway.campaigns import WINDOW_S, canary_count
from protocol import fragments as fz
from protocol import frame, groupcast, lora, nodefrag
from protocol import messages as m

RX2_HZ = groupcast.GROUP_FREQ_HZ
REPORT_BYTES = 40  # a lamp's LIGHT report (as simulator/group_delivery.py)
DEAF_AFTER_S = 1.1  # a member listens again 1.1 s after its uplink (SPEC §5 "Groups", "Listening")
STATUS_BYTES = frame.HEADER_LEN + len(m.encode(m.COMMAND, {0: 1001, 1: fz.OP_FRAG_STATUS, 2: [255], 3: 1800003600}))
STATUS_BYTES += frame.MIC_LEN
UNICAST_FRAME = lora.max_payload(12)  # gateway/fuota.py: a unicast fragment fits any data rate
RX1_HZ = lora.DEFAULT_CHANNELS_HZ[0]  # the uplinks' channels, g1 (1 %): RX1 answers on them
HORIZON_S = 60 * 86400.0  # a unicast session still open after this is cut short (never, as run)


@dataclass(frozen=True)
class UpdateSettings:
    members: int = 60
    at_s: float = 3600.0
    image_bytes: int = 2758
    sf: int = 9  # the lamps' uplink SF (their status exchange)
    multicast_sf: int = 9
    report_s: float = 900.0
    loss: float = 0.05
    redundancy: float = 0.25
    margin: int = 2
    max_rounds: int = 4
    duty_cycle: float = 0.1
    install_s: float = 60.0
    seed: int = 1
    park_valves: int = 0  # 0: no park
    park_image_bytes: int = 2758
    park_sf: int = 10
    park_report_s: float = 900.0
    bad_release: bool = False
    canary: float = 1  # a count or a share of the street (gateway/campaigns.py canary_count)
    rollback_s: float = 5400.0  # from the trial boot to the previous release's HELLO (3 x 30 min)
    window_s: float = WINDOW_S


def _hours(times: list[float | None], q: float, n: int) -> float | None:
    done = sorted(t for t in times if t is not None)
    k = max(1, -(-int(q * 100) * n // 100))
    return round(done[k - 1] / 3600, 3) if len(done) >= k else None


class _Street:
    def __init__(self, s: UpdateSettings, tmp: str) -> None:
        self.s = s
        self.rng = random.Random(s.seed)
        image = self.rng.randbytes(s.image_bytes)
        self.f = fz.fragment_size(lora.max_payload(s.multicast_sf))
        self.enc = fz.Encoder(image, self.f)
        self.n = self.enc.n
        self.coded = math.ceil(self.n * s.redundancy)
        self.dec = [
            nodefrag.Decoder(f"{tmp}/{i}.img", f"{tmp}/{i}.rows", s.image_bytes, self.f, self.n)
            for i in range(s.members)
        ]
        self.image = image
        self.phase = [self.rng.uniform(0, s.report_s) for _ in range(s.members)]
        self.complete: list[float | None] = [None] * s.members
        self.duty = lora.DutyCycle()
        self.t = s.at_s
        self.frames = 0
        self.mc_air_s = 0.0
        self.status_air_s = 0.0
        self.repair_frames = 0
        self.rounds = 0
        self.lost = 0
        self.deaf = 0

    def _deaf(self, i: int, a: float, b: float) -> bool:
        """Lamp i sends a report (and holds RX1) somewhere in [a, b)?"""
        s = self.s
        rep = _air(REPORT_BYTES, s.sf) + DEAF_AFTER_S
        k = math.floor((a - self.phase[i] - rep) / s.report_s) + 1
        start = self.phase[i] + k * s.report_s
        return start < b

    def _send(self, index: int | None) -> None:
        """One GROUP_FRAG (index None: the SETUP) at the next instant the band allows."""
        body = (
            fz.setup_body(1, bytes(4), len(self.image), self.f, self.n, self.coded)
            if index is None
            else fz.data_body(1, index, self.enc.fragment(index))
        )
        size = frame.HEADER_LEN + len(body) + frame.MIC_LEN
        band = lora.band_for(RX2_HZ)
        self.t += self.duty.wait_ms(int(self.t * 1000), band) / 1000
        air = lora.airtime_ms(size, self.s.multicast_sf)
        self.duty.record(int(self.t * 1000), air, band)
        start, end = self.t, self.t + air / 1000
        self.frames += 1
        self.mc_air_s += air / 1000
        # the gateway paces at T / duty (gateway/fuota.py): the band's own off-time
        self.t = start + air / 1000 / self.s.duty_cycle
        if index is None:
            return
        for i, d in enumerate(self.dec):
            if self.complete[i] is not None:
                continue
            if self.rng.random() < self.s.loss:
                self.lost += 1
                continue
            if self._deaf(i, start, end):
                self.deaf += 1
                continue
            if d.add(index, self.enc.fragment(index)):
                self.complete[i] = end

    def _next_report(self, i: int, after: float) -> float:
        k = math.floor((after - self.phase[i]) / self.s.report_s) + 1
        return self.phase[i] + k * self.s.report_s

    def _status(self, pending: list[int]) -> dict[int, tuple[float, int]]:
        """Each lamp's (time its answer is heard, fragments missing then)."""
        s = self.s
        out: dict[int, tuple[float, int]] = {}
        for i in pending:
            t = self.t
            for _ in range(2):  # the COMMAND after one report, the CMD_ACK with a later one
                while True:
                    t = self._next_report(i, t)
                    self.status_air_s += _air(STATUS_BYTES, s.sf)
                    if self.rng.random() >= s.loss and self.rng.random() >= s.loss:
                        break
            done = self.complete[i]
            missing = 0 if done is not None and done <= t else self.dec[i].missing
            out[i] = (t, missing)
        return out

    def run(self) -> dict[str, Any]:
        s = self.s
        self._send(None)
        for k in range(self.n + self.coded):
            self._send(k)
        nxt = self.n + self.coded
        pending = [i for i in range(s.members)]
        for rnd in range(s.max_rounds + 1):
            answers = self._status(pending)
            self.t = max([self.t] + [a[0] for a in answers.values()])
            pending = [i for i, (_, k) in answers.items() if k > 0]
            if not pending or rnd == s.max_rounds:
                break
            self.rounds += 1
            need = max(answers[i][1] for i in pending) + s.margin
            self._send(None)
            for k in range(nxt, nxt + need):
                self._send(k)
                self.repair_frames += 1
            nxt += need
        end = self.t
        updated = [None if c is None else c + s.install_s - s.at_s for c in self.complete]
        good = sum(1 for i, d in enumerate(self.dec) if self.complete[i] is not None and _read(d) == self.image)
        elapsed = max(1.0, end - s.at_s)
        limit = s.duty_cycle * elapsed
        return {
            "members": s.members,
            "image_bytes": s.image_bytes,
            "fragment_bytes": self.f,
            "fragments": self.n,
            "coded_up_front": self.coded,
            "multicast_sf": s.multicast_sf,
            "loss": s.loss,
            "nodes_updated": sum(1 for u in updated if u is not None),
            "images_intact": good,
            "hours_to_95": _hours(updated, 0.95, s.members),
            "hours_to_100": _hours(updated, 1.0, s.members),
            "session_hours": round(elapsed / 3600, 3),
            "frames": self.frames,
            "airtime_s": round(self.mc_air_s, 1),
            "duty_cycle_limit_s": round(limit, 1),
            "airtime_share_of_limit": round(self.mc_air_s / limit, 3),
            "status_airtime_s": round(self.status_air_s, 1),
            "repairs": self.rounds,
            "repair_frames": self.repair_frames,
            "frames_lost": self.lost,
            "frames_missed_deaf": self.deaf,
            "rollbacks": 0,
        }


def _air(n: int, sf: int) -> float:
    return lora.airtime_ms(n, sf) / 1000


def _read(d: nodefrag.Decoder) -> bytes:
    d.target.flush()
    d.target.seek(0)
    return bytes(d.target.read())


class _Unicast:
    """Class-A nodes sent an image by unicast, one frame per receive window (gateway/fuota.py `_node`)."""

    def __init__(
        self, nodes: int, image_bytes: int, sf: int, report_s: float, s: UpdateSettings, seed: int, tmp: str
    ) -> None:
        self.s, self.nodes, self.sf, self.report_s = s, nodes, sf, report_s
        self.rng = random.Random(seed)
        self.image = self.rng.randbytes(image_bytes)
        self.f = fz.fragment_size(UNICAST_FRAME)
        self.enc = fz.Encoder(self.image, self.f)
        self.n = self.enc.n
        self.coded = math.ceil(self.n * s.redundancy)
        self.setup = fz.setup_body(1, bytes(4), image_bytes, self.f, self.n, self.coded)
        self.dec = [
            nodefrag.Decoder(f"{tmp}/u{seed}-{i}.img", f"{tmp}/u{seed}-{i}.rows", image_bytes, self.f, self.n)
            for i in range(nodes)
        ]
        self.has_setup = [False] * nodes
        self.queue: list[list[int | None]] = [[None, *range(self.n + self.coded)] for _ in range(nodes)]
        self.next_coded = [self.n + self.coded] * nodes
        self.rounds = [0] * nodes
        self.asked = [False] * nodes  # the status COMMAND reached the node: it answers next uplink
        self.complete: list[float | None] = [None] * nodes
        self.verified: list[float | None] = [None] * nodes  # the gateway heard "nothing missing"
        self.failed = [False] * nodes
        self.duty = lora.DutyCycle()
        self.band = lora.band_for(RX1_HZ)
        self.frames = self.repair_frames = self.refused = self.lost = 0
        self.air_s = 0.0
        self.end = s.at_s

    def _downlink(self, t: float, body_bytes: int) -> bool:
        """A frame in the RX1 window after an uplink at t: sent (True) unless the band is closed."""
        start = int((t + 1.0) * 1000)
        if self.duty.wait_ms(start, self.band):
            self.refused += 1
            return False
        air = lora.airtime_ms(frame.HEADER_LEN + body_bytes + frame.MIC_LEN, self.sf)
        self.duty.record(start, air, self.band)
        self.frames += 1
        self.air_s += air / 1000
        return True

    def _window(self, i: int, t: float) -> None:
        s = self.s
        if self.asked[i]:  # its CMD_ACK rides this uplink (heard: the caller checked)
            self.asked[i] = False
            k = self.dec[i].missing if self.has_setup[i] else self.n
            if self.complete[i] is not None:
                k = 0
            if k == 0:
                self.verified[i] = t
            elif self.rounds[i] == s.max_rounds:
                self.failed[i] = True
            else:
                self.rounds[i] += 1
                c = self.next_coded[i]
                self.queue[i] = ([None] if k >= self.n else []) + list(range(c, c + k + s.margin))
                self.next_coded[i] = c + k + s.margin
                self.repair_frames += k + s.margin
            return
        q = self.queue[i]
        if not q:  # the status request (a queued COMMAND waits for an open window)
            if self._downlink(t, STATUS_BYTES - frame.HEADER_LEN - frame.MIC_LEN):
                if self.rng.random() >= s.loss:
                    self.asked[i] = True
            return
        x = q[0]
        body = self.setup if x is None else fz.data_body(1, x, self.enc.fragment(x))
        if not self._downlink(t, len(body)):
            return  # refused: put back, first in a later window (gateway/downlinks.py Filler.put_back)
        q.pop(0)
        if self.rng.random() < s.loss:
            self.lost += 1
            return
        if x is None:
            self.has_setup[i] = True
        elif self.has_setup[i] and self.complete[i] is None and self.dec[i].add(x, self.enc.fragment(x)):
            self.complete[i] = t + 1.0

    def run(self) -> None:
        s = self.s
        heap = [(s.at_s + self.rng.uniform(0, self.report_s), i) for i in range(self.nodes)]
        heapq.heapify(heap)
        while heap:
            t, i = heapq.heappop(heap)
            if t - s.at_s > HORIZON_S:
                self.failed[i] = True
                continue
            if self.rng.random() >= s.loss:  # the uplink heard: a receive window
                self._window(i, t)
            if self.verified[i] is None and not self.failed[i]:
                # each report moves by up to a tenth of the interval (firmware/runtime.py _REPORT_JITTER)
                heapq.heappush(heap, (t + self.report_s * (1 + self.rng.uniform(-0.05, 0.05)), i))
            else:
                self.end = max(self.end, t)

    def updated(self) -> list[float | None]:
        return [None if c is None else c + self.s.install_s - self.s.at_s for c in self.complete]

    def section(self, what: str) -> dict[str, Any]:
        s = self.s
        updated = self.updated()
        good = sum(1 for i, d in enumerate(self.dec) if self.complete[i] is not None and _read(d) == self.image)
        elapsed = max(1.0, self.end - s.at_s)
        limit = elapsed / lora.BANDS[self.band][2]
        return {
            what: self.nodes,
            "image_bytes": len(self.image),
            "fragment_bytes": self.f,
            "fragments": self.n,
            "coded_up_front": self.coded,
            "sf": self.sf,
            "report_interval_s": self.report_s,
            "nodes_updated": sum(1 for u in updated if u is not None),
            "images_intact": good,
            "failed": sum(self.failed),
            "hours_to_95": _hours(updated, 0.95, self.nodes),
            "hours_to_100": _hours(updated, 1.0, self.nodes),
            "session_hours": round(elapsed / 3600, 3),
            "frames": self.frames,
            "airtime_s": round(self.air_s, 1),
            "duty_cycle_limit_s": round(limit, 1),
            "airtime_share_of_limit": round(self.air_s / limit, 3),
            "refused_by_duty_cycle": self.refused,
            "repairs": sum(self.rounds),
            "repair_frames": self.repair_frames,
            "frames_lost": self.lost,
        }

    def close(self) -> None:
        for d in self.dec:
            d.close()


def _park(s: UpdateSettings, tmp: str) -> dict[str, Any]:
    u = _Unicast(s.park_valves, s.park_image_bytes, s.park_sf, s.park_report_s, s, s.seed + 1, tmp)
    try:
        u.run()
        return u.section("valves")
    finally:
        u.close()


def _bad_release(s: UpdateSettings, tmp: str) -> dict[str, Any]:
    """The canary stage of a release that fails its trial, and the campaign's halt."""
    k = canary_count(s.canary, s.members)
    u = _Unicast(k, s.image_bytes, s.sf, s.report_s, s, s.seed + 2, tmp)
    try:
        u.run()
        sec = u.section("canaries")
    finally:
        u.close()
    rng = random.Random(s.seed + 3)
    delivered = u.end  # the stage's delivery returned: every canary verifying or failed
    rolled = [c + s.install_s + s.rollback_s for c in u.complete if c is not None]
    # rolled back in the gateway's eyes: its trial boot's HELLO (installed) and then the old
    # bundle's HELLO both heard; the runner halts at once, cutting the delivery short
    heard = [t for t in rolled if rng.random() >= s.loss and rng.random() >= s.loss]
    if any(u.failed):
        halt, reason = delivered, "a canary failed (delivery)"
    elif heard:
        halt, reason = min(heard), "a canary rolled back (its HELLO names the previous bundle)"
    else:  # taken for reboots mid-transfer: the window after the delivery decides
        halt, reason = delivered + s.window_s, f"canaries not healthy within {s.window_s:g} s"
    return {
        **sec,
        "transport": "unicast (a part of the group: a multicast would reach every lamp)",
        "rollbacks": len(rolled),
        "rollbacks_seen": sum(1 for t in heard if t <= halt),
        "campaign": "halted",
        "reason": reason,
        "hours_to_halt": round((halt - s.at_s) / 3600, 3),
        "nodes_never_sent": s.members - k,
    }


def simulate(sets: UpdateSettings) -> dict[str, Any]:
    """The `update` section: the street by multicast, and the park and a bad release when asked."""
    with tempfile.TemporaryDirectory(prefix="lumeau-update-") as tmp:
        st = _Street(sets, tmp)
        try:
            out = st.run()
        finally:
            for d in st.dec:
                d.close()
        if sets.park_valves:
            out["park"] = _park(sets, tmp)
        if sets.bad_release:
            bad = out["bad_release"] = _bad_release(sets, tmp)
            out["rollbacks"] = bad["rollbacks"]
        return out


def summary_lines(u: dict[str, Any]) -> list[str]:
    """The section in `lumeau sim run`'s text summary."""

    def h(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} h"

    out = [
        f"  update of {u['members']} lamps by multicast ({u['image_bytes']} B, {u['fragments']} fragments"
        f" + {u['coded_up_front']} coded, loss {u['loss']:.0%}): {u['nodes_updated']} updated,"
        f" 95 % {h(u['hours_to_95'])}, 100 % {h(u['hours_to_100'])}; {u['repairs']} repair rounds"
        f" ({u['repair_frames']} frames), {u['airtime_s']:.0f} s of air = {u['airtime_share_of_limit']:.0%}"
        f" of the duty cycle's limit, {u['rollbacks']} rollbacks",
    ]
    p = u.get("park")
    if p:
        out.append(
            f"  park of {p['valves']} valves by unicast ({p['fragments']} fragments of {p['fragment_bytes']} B"
            f" + {p['coded_up_front']} coded, one per receive window): {p['nodes_updated']} updated,"
            f" 95 % {h(p['hours_to_95'])}, 100 % {h(p['hours_to_100'])}; {p['repairs']} repairs,"
            f" {p['airtime_s']:.0f} s of air = {p['airtime_share_of_limit']:.0%} of the RX1 band's limit"
        )
    b = u.get("bad_release")
    if b:
        out.append(
            f"  bad release: {b['canaries']} canar{'y' if b['canaries'] == 1 else 'ies'} by unicast,"
            f" {b['rollbacks']} rolled back; campaign"
            f" {b['campaign']} after {h(b['hours_to_halt'])} ({b['reason']}), {b['nodes_never_sent']} lamps never sent"
        )
    return out
