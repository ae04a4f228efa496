"""How many nodes one gateway serves at DER >= 0.9: ADR against fixed SF12, in the same run.

LoRaSim's capacity experiment (T. Bor, U. Roedig, T. Voigt, J. M. Alonso, "Do
LoRa Low-Power Wide-Area Networks Scale?", MSWiM 2016; its loraDir.py) on the
simulator's channel model (simulator/channel.py):

- one gateway, one 125 kHz channel (868.1 MHz), the log-distance path loss
  with LoRaSim's parameters, LoRaSim's sensitivity table, 14 dBm;
- nodes uniform over the disk that SF12 just covers (radius where the median
  received power equals SF12's sensitivity);
- each node sends a 20-byte PHY payload, exponential inter-arrival times of
  mean 1,000 s ("every 16.7 min on average"); a node that the EU868 1 %
  duty cycle holds back sends as soon as it may (LoRaSim has no duty cycle);
- shadowing: none, as LoRaSim's loraDir.py (its variance is 0): a node inside
  the disk always reaches the gateway but for collisions. `--sigma 3.57`
  adds FLoRa's per-packet shadowing (then the disk's edge itself loses packets
  at SF12, and the DER bar may be out of reach at any load);
- DER (data extraction rate) = uplinks the gateway received / uplinks sent.

Variants, each searched for the largest node count with DER >= 0.9 (a
bisection on N; the same seed places the first N nodes the same way in
every variant):

- `sf12`: every node at SF12, 14 dBm (LoRaSim's fixed-SF12 setting, the baseline);
- `adr`: every node starts at SF12 and gateway.adr.Adr (the gateway's code)
  sets its SF and TX power from the SNR of its uplinks, heard on the channel
  model, until it stops changing; then the DER is measured at those settings.
  The policy is gateway.adr's with an installation margin of `--margin` dB
  over the channel's own demodulation floor (its sensitivity minus its noise
  floor: the receiver the channel models, not the datasheet's);
- `adr_chirpstack`: the same with ChirpStack's defaults (10 dB installation
  margin over the SX1276 datasheet's floor), for reference.

How the DER is counted: the real Channel (collisions, preamble lock,
capture, 8 demodulators, duty cycle) in an event loop over every uplink, in
start order: no analytic shortcut. ADR's convergence uplinks are drawn from
the channel's reception model without collisions (they only feed the SNR
history); the DER run then starts from converged settings.

Prints one JSON object (--json): per variant the capacity (nodes), the SF
histogram at that capacity, and `capacity_ratio` = variant capacity / sf12
capacity.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402
from gateway import adr as adr_mod  # noqa: E402
from protocol import lora  # noqa: E402
from simulator import channel as ch  # noqa: E402

FREQ = 868100000
LENGTH = 20  # bytes, LoRaSim's packet
MEAN_INTERVAL_MS = 1_000_000.0  # LoRaSim's avgSendTime: 16.7 min
DER_BAR = 0.9
TX_POWER = 14


def lorasim_radius(params: ch.RadioParams) -> float:
    """LoRaSim's loraDir.py maxDist for SF12: d0 * e ** ((Ptx - sensitivity - L(d0)) / (10 gamma)).

    Its base is e where the path loss it inverts uses 10: the disk it draws
    nodes in is about 104 m, where SF7 reaches every node, not the 360 m
    that SF12 reaches under its own path-loss model.
    """
    pl = params.path_loss
    assert isinstance(pl, ch.LogDistance)
    return pl.d0_m * math.e ** (
        (params.tx_power_dbm - ch.sensitivity_dbm(12, params.bw_hz) - pl.pl_d0_db) / (10.0 * pl.gamma)
    )


def disk_radius(params: ch.RadioParams) -> float:
    """Where the median received power at the node's TX power equals SF12's sensitivity (bisection)."""
    target = params.tx_power_dbm - ch.sensitivity_dbm(12, params.bw_hz)
    lo, hi = 1.0, 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if params.path_loss.loss_db(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo


def place(n: int, radius: float, seed: int) -> list[tuple[float, float]]:
    """n points uniform over the disk; the first k are the same for every n (one stream)."""
    rnd = random.Random(f"adr-capacity-place:{seed}")
    out = []
    for _ in range(n):
        r = radius * math.sqrt(rnd.random())
        a = rnd.uniform(0.0, 2.0 * math.pi)
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def converge(
    policy: adr_mod.Adr | None, c: ch.Channel, n: int, sigma: float, seed: int
) -> tuple[list[tuple[int, int]], int]:
    """(SF, TX power) per node, and the CONFIGs it took: SF12 at 14 dBm, then what ADR makes of the SNR.

    Rounds of one uplink per node (an SNR draw from the channel's reception
    model, no collisions), each heard uplink told to the policy, each CONFIG
    applied at once, until no CONFIG for 2 x history rounds (or 40 x history
    rounds: a policy that keeps changing its mind is cut off there).
    """
    if policy is None:
        return [(12, TX_POWER)] * n, 0
    rnd = random.Random(f"adr-capacity-snr:{seed}")
    noise = ch.noise_floor_dbm(c.params.bw_hz, c.params.noise_figure_db)
    sens = {sf: ch.sensitivity_dbm(sf, c.params.bw_hz) for sf in range(7, 13)}
    gain = [c.mean_rx_dbm(nid)[0] - TX_POWER for nid in range(n)]  # received power per dBm sent
    sf = [12] * n
    power = [TX_POWER] * n
    counter = 0
    quiet = rounds = configs = 0
    while quiet < 2 * policy.history and rounds < 40 * policy.history:
        rounds += 1
        counter += 1
        changed = False
        for nid in range(n):
            rssi = gain[nid] + power[nid] + (rnd.gauss(0.0, sigma) if sigma else 0.0)
            if rssi < sens[sf[nid]]:
                continue  # not heard: the gateway learns nothing (the node's step-back is not modelled here)
            act = policy.observe(nid, counter, rssi - noise, sf[nid])
            if act is not None and act.kind == adr_mod.CONFIG:
                sf[nid] = act.settings.get(3, sf[nid])
                power[nid] = act.settings.get(2, power[nid])
                changed = True
                configs += 1
        quiet = 0 if changed else quiet + 1
    return list(zip(sf, power)), configs


def der(
    settings: list[tuple[int, int]], xy: list[tuple[float, float]], params: ch.RadioParams, hours: float, seed: int
) -> float:
    """Uplinks received / uplinks sent, on the full channel model, for `hours` of LoRaSim traffic."""
    c = ch.Channel([ch.GatewaySite("gw", 0.0, 0.0, 0.0)], params, seed)
    for nid, ((x, y), (_sf, power)) in enumerate(zip(xy, settings)):
        c.add_node(nid, x, y, 0.0, tx_power_dbm=power)
    rnd = random.Random(f"adr-capacity-traffic:{seed}")
    end = hours * 3600e3
    events: list[tuple[float, int, int]] = []
    for nid, (sf, _p) in enumerate(settings):
        air = lora.airtime_ms(LENGTH, sf, params.bw_hz)
        off = air * 99.0  # EU868 g1 sub-band, 1 %: the next start waits this long after an end
        t = rnd.expovariate(1.0 / MEAN_INTERVAL_MS)
        free = 0.0
        while t < end:
            s = max(t, free)
            events.append((s, nid, sf))
            free = s + air + off + 1.0
            t += rnd.expovariate(1.0 / MEAN_INTERVAL_MS)
    events.sort()
    ends: list[float] = []
    sent = got = 0
    for start, nid, sf in events:
        while ends and ends[0] <= start:
            for tx in c.settle(heapq.heappop(ends)):
                if isinstance(tx, ch.Uplink) and tx.refused is None:
                    sent += 1
                    got += tx.delivered
        tx = c.transmit(nid, start, LENGTH, sf, FREQ)
        if tx.refused is None:
            heapq.heappush(ends, tx.end_ms)
    for tx in c.settle(end + 3600e3):
        if isinstance(tx, ch.Uplink) and tx.refused is None:
            sent += 1
            got += tx.delivered
    return got / sent if sent else 1.0


def capacity(
    make_policy: Any, params: ch.RadioParams, radius: float, hours: float, seed: int, hi: int
) -> dict[str, Any]:
    """The largest N with DER >= DER_BAR (bisection; DER falls with N), with its SF histogram."""
    sigma = params.shadowing_sigma_db if params.shadowing == "packet" else 0.0
    xy_all = place(hi, radius, seed)
    probe = ch.Channel([ch.GatewaySite("gw", 0.0, 0.0, 0.0)], params, seed)
    for nid, (x, y) in enumerate(xy_all):
        probe.add_node(nid, x, y, 0.0, tx_power_dbm=TX_POWER)
    settings_all, configs = converge(make_policy(), probe, hi, sigma, seed)
    cache: dict[int, float] = {}

    def ok(n: int) -> bool:
        if n not in cache:
            cache[n] = der(settings_all[:n], xy_all[:n], params, hours, seed)
        return cache[n] >= DER_BAR

    lo, top = 0, hi
    if ok(top):
        lo = top
    else:
        step = 1
        while step < top and ok(step):
            lo = step
            step *= 2
        top = min(step, top)
        while top - lo > max(1, lo // 100):  # 1 % resolution
            mid = (lo + top) // 2
            if ok(mid):
                lo = mid
            else:
                top = mid
    hist: dict[str, int] = {}
    powers: dict[str, int] = {}
    for sf, p in settings_all[:lo]:
        hist[f"SF{sf}"] = hist.get(f"SF{sf}", 0) + 1
        powers[f"{p}dBm"] = powers.get(f"{p}dBm", 0) + 1
    return {
        "capacity_nodes": lo,
        "der_at_capacity": round(cache.get(lo, 1.0), 4),
        "der_one_more_step": round(cache.get(top, 0.0), 4) if top != lo else None,
        "sf_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0][2:]))),
        "tx_power_histogram": dict(sorted(powers.items(), key=lambda kv: -int(kv[0][:-3]))),
        "der_evaluations": len(cache),
        "configs_to_converge": configs,
    }


def channel_floor(params: ch.RadioParams) -> dict[int, float]:
    """The demodulation floor the channel models: sensitivity minus noise floor, per SF."""
    noise = ch.noise_floor_dbm(params.bw_hz, params.noise_figure_db)
    return {sf: ch.sensitivity_dbm(sf, params.bw_hz) - noise for sf in range(7, 13)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--hours", type=float, default=12.0, help="simulated hours per DER measurement")
    ap.add_argument("--margin", type=float, default=0.0, help="installation margin dB of the adr variants")
    ap.add_argument("--sigma", type=float, default=0.0, help="per-packet shadowing dB (LoRaSim: 0)")
    ap.add_argument("--max-nodes", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variants", default="sf12,adr,adr_fastest,adr_chirpstack")
    ap.add_argument(
        "--disk",
        default="sf12",
        choices=("sf12", "lorasim"),
        help="sf12: the disk SF12 reaches on the channel model; lorasim: LoRaSim's own (smaller) disk",
    )
    args = ap.parse_args(argv)

    params = ch.RadioParams(shadowing_sigma_db=args.sigma)
    radius = disk_radius(params) if args.disk == "sf12" else lorasim_radius(params)
    floor = channel_floor(params)
    policies: dict[str, Any] = {
        "sf12": lambda: None,
        "adr": lambda: adr_mod.Adr(
            margin_db=args.margin, required_snr_db=floor, sf_policy="balanced", frame_bytes=LENGTH
        ),
        "adr_fastest": lambda: adr_mod.Adr(margin_db=args.margin, required_snr_db=floor),
        "adr_chirpstack": lambda: adr_mod.Adr(),
    }
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for name in args.variants.split(","):
        out[name] = capacity(policies[name], params, radius, args.hours, args.seed, args.max_nodes)
    base = out.get("sf12", {}).get("capacity_nodes")
    for r in out.values():
        if base:
            r["capacity_ratio"] = round(r["capacity_nodes"] / base, 2)
    result = {
        "bench": "adr_capacity",
        "disk": args.disk,
        "disk_radius_m": round(radius, 1),
        "payload_b": LENGTH,
        "mean_interval_s": MEAN_INTERVAL_MS / 1000,
        "shadowing_sigma_db": args.sigma,
        "adr_margin_db": args.margin,
        "simulated_hours": args.hours,
        "der_bar": DER_BAR,
        **out,
        "wall_s": round(time.perf_counter() - t0, 1),
        **machine(),
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
