"""A plan's DER on the channel's event model (`lumeau plan --check-hours H`): the analytic figure checked.

    der, counts = event_der(planner, plan.evaluation, hours=24, seed=1)

The same approach as bench/adr_capacity.py's `der`: the real Channel
(shadowing per packet, collisions with the preamble lock and capture, 8
demodulators per site, half duplex, duty cycle) in an event loop over every
frame in start order, no analytic shortcut. The chosen sites only; each node
at the plan's SF; the planner's traffic: a report every report interval of
the node's kind from a random phase, alarms as a Poisson process, each on a
channel drawn at random; a downlink (a TIME, an ACK per alarm) in RX1 through
the best site that heard the uplink, with the planner's downlink rate.
DER = uplinks heard by at least one site / uplinks put on the air.
"""

from __future__ import annotations

import heapq
import random

from simulator import channel as ch
from simulator.planning import DOWNLINK_BYTES, FRAME_BYTES, Evaluation, Planner

UP, DOWN = 0, 1


def event_der(planner: Planner, ev: Evaluation, hours: float, seed: int = 1) -> tuple[float, dict[str, int]]:
    """(DER, counts) of `hours` of the city's traffic on the channel with the plan's sites."""
    sc = planner.sc
    sites = [planner.sites[c] for c in ev.sites]
    channel = ch.Channel(sites, planner.params, seed)
    rnd = random.Random(f"lumeau-plan-check:{seed}")
    end_ms = hours * 3600e3
    freqs = sc.radio.channels_hz
    events: list[tuple[float, int, int, int, ch.Uplink | None]] = []  # (ms, kind, seq, node index, uplink)
    seq = 0
    alarm_rate_ms = planner.alarms_per_node_day / 86400e3
    for i, n in enumerate(sc.nodes):
        channel.add_node(n.node_id, n.x, n.y, n.height_m)
        every = 1000.0 * (sc.lighting if n.kind == "lighting" else sc.irrigation).report_interval_s
        times = [t * every + rnd.uniform(0.0, every) for t in range(int(end_ms / every) + 1)]
        t = rnd.expovariate(alarm_rate_ms) if alarm_rate_ms > 0 else end_ms
        while t < end_ms:
            times.append(t)
            t += rnd.expovariate(alarm_rate_ms)
        for t in times:
            if t < end_ms:
                seq += 1
                events.append((t, UP, seq, i, None))
    heapq.heapify(events)
    dl_share = [planner.dl_rate / r for r in planner.up_rate]  # downlinks per uplink, on average
    counts = {"uplinks": 0, "delivered": 0, "refused": 0, "downlinks": 0, "downlinks_refused": 0}
    while events:
        t, kind, _s, i, up = heapq.heappop(events)
        node = sc.nodes[i]
        if kind == UP:
            tx = channel.transmit(node.node_id, t, FRAME_BYTES, ev.sf[i], rnd.choice(freqs))
            if tx.refused is not None:
                counts["refused"] += 1
                continue
            counts["uplinks"] += 1
            if rnd.random() < dl_share[i]:
                seq += 1
                heapq.heappush(events, (channel.rx1_start_ms(tx), DOWN, seq, i, tx))
        elif up is not None:
            channel.settle(t)  # the uplink ended a second ago: its hearings are final
            best = up.best()
            if best is None:
                continue  # no site heard it: nothing to answer
            dl = channel.downlink(best.gateway, node.node_id, t, DOWNLINK_BYTES, up.sf, up.freq_hz)
            counts["downlinks" if dl.refused is None else "downlinks_refused"] += 1
    channel.settle(end_ms + 3600e3)  # every frame's fate is final
    counts["delivered"] = channel.counts.get("uplinks_delivered", 0)
    counts["uplinks"] = counts["delivered"] + channel.counts.get("uplinks_lost", 0)
    return (counts["delivered"] / counts["uplinks"] if counts["uplinks"] else 1.0), counts
