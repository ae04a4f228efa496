"""`lumeau sim run SCENARIO.toml`: a simulated city running the real firmware against a gateway.

    results = run(load("simulator/scenarios/district.toml"), RunOptions(hours=6))
    print(results.summary()); json.dumps(results.to_dict())

What runs (all on ONE virtual clock, firmware/virtual_loop.py):

- every lamp and irrigation controller of the scenario is a real
  `firmware.runtime.Node` with the real `firmware.lighting.Lighting` /
  `firmware.irrigation.Irrigation` app, provisioned through
  `firmware.config.load` (per-node root keys derived from the seed), on a
  `firmware.hal_sim.SimHAL` whose inputs the world drives
  (simulator/world.py: sun and sky for the ambient sensor, lamp current from
  the commanded level and lamp faults, PIR from pedestrians, soil moisture
  from an FAO-56 bucket per zone that the valves actually water, flow pulses
  from the valves plus leaks and bursts, the rain sensor);
- the radio of each node is `simulator.air.NodeRadio`, a firmware Radio on
  the LoRa channel (simulator/channel.py): time on air, path loss and
  shadowing, collisions and capture, duty cycle, several gateways, downlinks
  in RX1;
- the gateway is a pluggable `simulator.gateway_link.GatewayLink`; by default
  `InProcessGateway`, the real gateway Pipeline + Store + Downlinks in the
  same loop, every reception carrying the simulated time as rx_time;
- faults (simulator/faults.py) are applied when due: lamp failure, leak,
  burst, stuck valve, node reboot (the Node is restarted on the same
  persistent storage), gateway restart, upstream outage.

`run()` returns one `simulator.metrics.Results`; `--json` prints its
`to_dict()`, and the HTML report is built from the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from simulator.gateway_link import GatewayLink
from simulator.metrics import Results
from simulator.scenario import Scenario


@dataclass(frozen=True)
class RunOptions:
    """How to run a scenario; None keeps the scenario's own value."""

    seed: int | None = None            # another draw of the same map (weather, people, shadowing, keys)
    hours: float | None = None         # run this long instead of the scenario's duration
    nodes_scale: float = 1.0           # keep this share (0 < s <= 1) of the lamps and of the controllers
    progress: bool | None = None       # a progress bar on stderr; None: when stderr is a terminal
    workdir: Path | None = None        # where the in-process gateway keeps its SQLite file (default: a temp dir)
    link: Callable[[], GatewayLink] | None = None   # the gateway link factory (default: InProcessGateway)


def run(scenario: Scenario, options: RunOptions = RunOptions()) -> Results:
    """Run a scenario to its end on a fresh virtual-time loop; the results of the run."""
    raise NotImplementedError("being built: simulator/runner.py (issue 5, S2)")


async def run_async(scenario: Scenario, options: RunOptions = RunOptions()) -> Results:
    """The same, inside a running firmware.virtual_loop.VirtualLoop."""
    raise NotImplementedError("being built: simulator/runner.py (issue 5, S2)")
