"""A city split where the radio allows: one area per gateway, with the nodes that hear it best.

    parts = split(prepare(scenario, options))     # [Area(gateway, scenario), ...], in gateway order

Each node belongs to the area of its best gateway: the highest median
received power (`Channel.mean_rx_dbm`: path loss and antenna heights, no
shadowing draw), the first gateway of the file on a tie. An area is itself
a scenario -- that gateway alone, its nodes with their ids, names, places
and spreading factors unchanged (the SF was chosen against the best gateway,
which is the area's), the faults that concern them -- and runs on the
existing in-process engine (`simulator.runner.run`: the real firmware,
channel and gateway), so an area's run is any scenario's run.

What the split leaves out, and so what the border costs (simulator/README.md,
"City scale"): each area has a channel of its own, as if every area had a
channel plan of its own -- a node's frames never collide with, capture, or
occupy a demodulator against another area's frames (optimistic). With
`border="halo"` (the default) an area's channel also has the neighbour
gateways its nodes may reach, so a border node keeps their reception
(macro-diversity), while those gateways see only this area's traffic; with
`border="own"` a node is heard only by its own area's gateway (pessimistic).
The bench (bench/city_dask.py) measures both against one undivided run.

Areas without nodes are left out. Faults: a node's go with its node, a
gateway's with its gateway, an upstream outage to every area (each area has
its own gateway link, so each sees the outage).
"""

from __future__ import annotations

import dataclasses

from simulator.channel import sensitivity_dbm
from simulator.faults import FaultSchedule
from simulator.scenario import Scenario

UPSTREAM_TARGET = "upstream"
HALO_SIGMAS = 3.0  # a neighbour gateway joins an area if a node of it reaches it within this many shadowing sigmas
BORDERS = ("halo", "own")


@dataclasses.dataclass(frozen=True)
class Area:
    index: int  # the gateway's place in the file
    gateway: str
    scenario: Scenario

    @property
    def nodes(self) -> int:
        return len(self.scenario.nodes)


def best_gateways(sc: Scenario) -> dict[str, str]:
    """Each node's best gateway by median received power (node name -> gateway id)."""
    channel = sc.channel()
    out = {}
    for n in sc.nodes:
        rx = channel.mean_rx_dbm(n.node_id)
        best = max(range(len(rx)), key=lambda k: (rx[k], -k))  # the first gateway on a tie
        out[n.name] = sc.gateways[best].id
    return out


def split(sc: Scenario, border: str = "halo") -> list[Area]:
    """The scenario's areas, in the file's gateway order (see the module docstring).

    border "halo": an area's channel also has every other gateway that one of its nodes may reach
    (median power within HALO_SIGMAS shadowing sigmas of the sensitivity at its SF), so a border
    node keeps the neighbour gateways' reception; "own": the area's gateway alone."""
    if border not in BORDERS:
        raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    best = best_gateways(sc)
    channel = sc.channel()
    reach = HALO_SIGMAS * sc.radio.params.shadowing_sigma_db
    areas = []
    for k, gw in enumerate(sc.gateways):
        lamps = tuple(n for n in sc.lamps if best[n.name] == gw.id)
        controllers = tuple(n for n in sc.controllers if best[n.name] == gw.id)
        if not lamps and not controllers:
            continue
        names = {n.name for n in lamps + controllers}
        sites = [gw]
        if border == "halo":
            heard = set()
            for n in lamps + controllers:
                floor = sensitivity_dbm(n.sf, sc.radio.params.bw_hz) - reach
                heard |= {j for j, p in enumerate(channel.mean_rx_dbm(n.node_id)) if p >= floor}
            sites += [g for j, g in enumerate(sc.gateways) if j in heard and j != k]
        ids = {g.id for g in sites}
        faults = FaultSchedule(
            [f for f in sc.faults if f.target in names or f.target in ids or f.target == UPSTREAM_TARGET]
        )
        part = dataclasses.replace(
            sc,
            name=f"{sc.name}.{gw.id}",
            gateways=tuple(sites),
            lamps=lamps,
            controllers=controllers,
            faults=faults,
        )
        areas.append(Area(k, gw.id, part))
    return areas
