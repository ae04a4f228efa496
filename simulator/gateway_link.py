"""How the simulated radios reach a gateway: the runner's pluggable gateway link.

The runner owns the air (simulator/air.py): it knows when an uplink ends and
which gateway sites heard it. A `GatewayLink` takes it from there -- hands
each hearing to a gateway as that gateway's radio would, lets the gateway
answer in the node's receive window through `LinkContext.downlink`, applies
the gateway-side faults, and finally says what the gateway stored.

Two links are meant to exist:

- `InProcessGateway` (here): the real gateway Pipeline, Store (a temporary
  SQLite file) and Downlinks in the simulation's own virtual-time loop. Fast
  and deterministic; see its docstring for what is relaxed.
- a live link (issue 5, part "live"): a real `lumeau gateway` process, fed
  through a pseudo-terminal as a radio bridge board (SPEC section 10) and over
  UDP as a Semtech packet forwarder; it implements the same protocol.

Contract (every method is called from the simulation's event loop):

    await link.start(ctx)                 # ctx: LinkContext (scenario, nodes, clock, downlinks)
    link.uplink(hearing)                  # one call per gateway site that heard an uplink, at its end
    await link.gateway_restart(site, downtime_s)   # a gateway_restart fault (the runner switches the
                                          # site off the air in the channel itself)
    await link.set_upstream(up)           # upstream_outage fault: False at its start, True at its end
    report = await link.finish()          # drain, then what the gateway stored: a GatewayReport
    await link.close()                    # release everything (also after a failed run)

`GatewayReport` is the gateway's side of the results: every record it
stored durably (with the virtual time of its commit), what reached the
upstream, and the gateway's own counters. simulator/metrics.py turns it and
the nodes' side into the results object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from simulator import channel as ch


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a gateway must know about a simulated node (its registry entry)."""

    node_id: int
    name: str
    kind: str            # "lighting" | "irrigation"
    root_key: bytes = field(repr=False)
    lat: float = 0.0
    lon: float = 0.0
    site: str = ""       # street or park id


@dataclass(slots=True)
class StoredRecord:
    """One record the gateway committed durably (the first copy of a frame)."""

    node_id: int
    counter: int
    mtype: int
    body: dict[int, Any]
    rx_time: float        # Unix s: when the uplink ended on the air (Reception.rx_time)
    stored_at: float      # Unix s, virtual: when its commit completed
    gateway_id: str


@dataclass(slots=True)
class GatewayReport:
    link: str                                   # "inprocess", "live", ...
    stored: list[StoredRecord]                  # in commit order
    delivered_upstream: int                     # records the upstream (sink) acknowledged
    queued_at_end: int                          # records still waiting for the upstream
    queue_max: int                              # most records queued at once
    counters: dict[str, Any]                    # pipeline / downlink / store counters


class LinkContext:
    """What the runner gives a link: the scenario's nodes, the clock and the way back to the air."""

    def __init__(self, nodes: Sequence[NodeInfo], gateways: Sequence[ch.GatewaySite],
                 unix_now: Callable[[], float], downlink: Callable[..., Any], workdir: Any) -> None:
        self.nodes = list(nodes)
        self.gateways = list(gateways)
        self.unix_now = unix_now     # virtual Unix time, s (float)
        # downlink(site_id, node_id, frame, uplink) -> None, or raises
        # gateway.transports.DownlinkError: puts a frame on the air in the
        # node's RX1 after `uplink` (simulator/air.py)
        self.downlink = downlink
        self.workdir = workdir       # a private temporary directory (pathlib.Path)


class GatewayLink(Protocol):
    name: str

    async def start(self, ctx: LinkContext) -> None: ...

    def uplink(self, hearing: ch.Hearing) -> None: ...

    async def gateway_restart(self, site: str, downtime_s: float) -> None: ...

    async def set_upstream(self, up: bool) -> None: ...

    async def finish(self) -> GatewayReport: ...

    async def close(self) -> None: ...
