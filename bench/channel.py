"""Radio channel cost per packet, against the bare path-loss computation in the same run.

Workload: the first N nodes of simulator/scenarios/city.toml (two rooftop
gateways, Hata path loss, per-packet shadowing) each report every 15 minutes
(random phase, +-10 % jitter, one of three channels, the node's SF, 20-40
byte frames) for the simulated hours asked; 2 % of uplinks get an ACK
downlink in RX1 from their best gateway. Events are generated before timing.

  channel   simulator.channel.Channel: transmit every uplink in time order,
            settle as time passes, downlinks where due
  floor     for every uplink and every gateway: the distance, the path loss,
            a shadowing draw and the sensitivity test; the least any channel
            model that decides reception per gateway must do

Prints one JSON object (--json) with packets/s for both and
channel_cost_ratio = floor packets/s / channel packets/s.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine  # noqa: E402
from simulator import channel as ch  # noqa: E402
from simulator import scenario as sc  # noqa: E402

CHANNELS = (868100000, 868300000, 868500000)
INTERVAL_MS = 15 * 60 * 1000
ACK_SHARE = 0.02
Event = tuple[int, int, int, int, int]  # start_ms, node_id, length, sf, freq
T = TypeVar("T")


def workload(nodes: list, hours: float, seed: int = 1) -> list[Event]:
    """(start_ms, node_id, length, sf, freq) for every uplink, in time order."""
    rnd = random.Random(seed)
    end = int(hours * 3600 * 1000)
    out = []
    for n in nodes:
        t = rnd.randrange(INTERVAL_MS)
        while t < end:
            out.append((t, n.node_id, rnd.randint(20, 40), n.sf, rnd.choice(CHANNELS)))
            t += int(INTERVAL_MS * rnd.uniform(0.9, 1.1))
    out.sort()
    return out


def run_channel(scenario: sc.Scenario, nodes: list, events: list[Event]) -> tuple[int, int, int]:
    """Returns (uplinks on the air, delivered, downlinks sent).

    A discrete-event loop as the runner's virtual clock would do it: uplink
    starts, uplink ends (settle, maybe queue an ACK) and ACK downlinks in RX1,
    all in time order.
    """
    c = ch.Channel(scenario.gateways, scenario.radio.params, scenario.seed)
    for n in nodes:
        c.add_node(n.node_id, n.x, n.y, n.height_m)
    rnd = random.Random(2)
    pending: list[tuple[float, int, str, Any]] = []  # heap of (time_ms, seq, kind, data): "end" or "ack"
    delivered = sent = downs = seq = 0

    def run_until(t_ms: float) -> None:
        nonlocal delivered, sent, downs, seq
        while pending and pending[0][0] <= t_ms:
            t, _, kind, data = heapq.heappop(pending)
            if kind == "ack":
                downs += c.downlink(*data).refused is None
                continue
            for tx in c.settle(t):
                if isinstance(tx, ch.Uplink) and tx.refused is None:
                    sent += 1
                    if tx.delivered:
                        delivered += 1
                        best = tx.best()
                        if best is not None and rnd.random() < ACK_SHARE:  # delivered: heard by a gateway
                            seq += 1
                            at = c.rx1_start_ms(tx)
                            heapq.heappush(
                                pending, (at, seq, "ack", (best.gateway, tx.node_id, at, 13, tx.sf, tx.freq_hz))
                            )

    for start, node, length, sf, freq in events:
        run_until(start)
        tx = c.transmit(node, start, length, sf, freq)
        seq += 1
        heapq.heappush(pending, (tx.end_ms, seq, "end", None))
    run_until(math.inf)
    return sent, delivered, downs


def run_floor(scenario: sc.Scenario, nodes: list, events: list[Event]) -> int:
    params = scenario.radio.params
    model = params.path_loss
    sigma = params.shadowing_sigma_db
    gws = scenario.gateways
    where = {n.node_id: (n.x, n.y, n.height_m) for n in nodes}
    sens = {sf: ch.sensitivity_dbm(sf) for sf in range(7, 13)}
    gauss = random.Random(3).gauss
    heard = 0
    for _start, node, _length, sf, _freq in events:
        x, y, h = where[node]
        for g in gws:
            rssi = params.tx_power_dbm - model.loss_db(math.hypot(x - g.x, y - g.y), g.height_m, h) + gauss(0.0, sigma)
            heard += rssi >= sens[sf]
    return heard


def best_rate(fn: Callable[..., T], args: tuple, repeats: int) -> tuple[float, T]:
    best = math.inf
    result: T | None = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    assert result is not None, "repeats must be at least 1"
    return best, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    scenario = sc.load(ROOT / "simulator" / "scenarios" / "city.toml")
    nodes = list(scenario.nodes[: args.nodes])
    events = workload(nodes, args.hours)
    t_chan, (sent, delivered, downs) = best_rate(run_channel, (scenario, nodes, events), args.repeats)
    t_floor, _ = best_rate(run_floor, (scenario, nodes, events), args.repeats)
    n = len(events)
    chan_pps = n / t_chan
    floor_pps = n / t_floor
    chan_pps_r = round(chan_pps)
    floor_pps_r = round(floor_pps)
    result = {
        "bench": "channel",
        "scenario": "city.toml",
        "nodes": len(nodes),
        "gateways": len(scenario.gateways),
        "simulated_hours": args.hours,
        "uplinks": n,
        "uplinks_on_air": sent,
        "downlinks": downs,
        "delivery_ratio": round(delivered / sent, 4) if sent else None,
        "channel_packets_per_s": chan_pps_r,
        "floor_packets_per_s": floor_pps_r,
        "channel_cost_ratio": round(floor_pps_r / chan_pps_r, 2),
        "channel_wall_s": round(t_chan, 3),
        **machine(),
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
