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
complete plus `install_s` (the updater's checks and the reboot into the trial). No bad
release here (`rollbacks` 0: a release that fails its trial rolls back on the node, SPEC §13;
stopping a campaign on its canaries is the campaign's, gateway/campaigns.py). This is a model
of the radio exchange with the protocol's sizes and rules, not a run of the firmware: the
lamp's side runs under real MicroPython in tests/micropython/mp_frag.py.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from typing import Any

from protocol import fragments as fz
from protocol import frame, groupcast, lora, nodefrag
from protocol import messages as m

RX2_HZ = groupcast.GROUP_FREQ_HZ
REPORT_BYTES = 40  # a lamp's LIGHT report (as simulator/group_delivery.py)
DEAF_AFTER_S = 1.1  # a member listens again 1.1 s after its uplink (SPEC §5 "Groups", "Listening")
STATUS_BYTES = frame.HEADER_LEN + len(m.encode(m.COMMAND, {0: 1001, 1: fz.OP_FRAG_STATUS, 2: [255], 3: 1800003600}))
STATUS_BYTES += frame.MIC_LEN


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
    d.img.flush()
    d.img.seek(0)
    return bytes(d.img.read())


def simulate(sets: UpdateSettings) -> dict[str, Any]:
    """The `update` section."""
    with tempfile.TemporaryDirectory(prefix="lumeau-update-") as tmp:
        st = _Street(sets, tmp)
        try:
            return st.run()
        finally:
            for d in st.dec:
                d.close()


def summary_lines(u: dict[str, Any]) -> list[str]:
    """The section in `lumeau sim run`'s text summary."""

    def h(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} h"

    return [
        f"  update of {u['members']} lamps by multicast ({u['image_bytes']} B, {u['fragments']} fragments"
        f" + {u['coded_up_front']} coded, loss {u['loss']:.0%}): {u['nodes_updated']} updated,"
        f" 95 % {h(u['hours_to_95'])}, 100 % {h(u['hours_to_100'])}; {u['repairs']} repair rounds"
        f" ({u['repair_frames']} frames), {u['airtime_s']:.0f} s of air = {u['airtime_share_of_limit']:.0%}"
        f" of the duty cycle's limit, {u['rollbacks']} rollbacks",
    ]
