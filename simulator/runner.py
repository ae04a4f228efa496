"""`lumeau sim run SCENARIO.toml`: a simulated city running the real firmware against a gateway.

    results = run(load("simulator/scenarios/district.toml"), RunOptions(hours=6))
    print(results.summary()); json.dumps(results.to_dict())

What runs (all on ONE virtual clock, simulator/virtual_loop.py):

- every lamp and irrigation controller of the scenario is a real
  `firmware.runtime.Node` with the real `firmware.lighting.Lighting` /
  `firmware.irrigation.Irrigation` app, provisioned through
  `firmware.config.load` (per-node root keys derived from the seed), on a
  `simulator.hal_sim.SimHAL` whose inputs the world drives
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
  persistent storage, its clock lost on a power cut), gateway restart,
  upstream outage.

`run()` returns one `simulator.metrics.Results`; `--json` prints its
`to_dict()`, and the HTML report is built from the same object.

The machinery is simulator/engine.py (`Simulation`, shared with the
parallel run of simulator/parallel.py); this module is the entry point.

How the firmware is driven, and what is chosen for speed (named below):

- one SimClock (simulator/simclock.py) for every SimHAL: a node's sleeps
  cost a dict append, not an asyncio timer each;
- the apps are ticked by the clock instead of each looping in a task of its
  own (`ticked`): their own `run()` is `step()` then `hal.sleep_ms(tick_ms)`
  forever (firmware/README.md names `step()` for drivers that tick an app
  themselves); the ticked app does exactly that through a
  `simclock.Ticker`, and a `step()` that raises ends its `run()` with
  that exception, so the runtime's supervision (fail-safe, EVENT
  app_exception, restart with backoff) is the real one;
- each app's tick is the coarsest its own config allows (`SIM_TICK_MS`:
  lighting 10 s, irrigation 5 s) unless the scenario's firmware table sets
  `tick_ms`; the PIR's hold time follows (simulator/world.py);
- `Node(..., watchdog=False)`, as the runtime offers for simulations of many
  nodes (feeding is its most frequent wake-up);
- the runtime and the apps as subclasses whose fields are `__slots__`
  (simulator/slots.py, for the runtime and `ticked`: the fields their code assigns, read from the
  source), and the HAL's and the world's hottest fields likewise
  (simulator/world.py): a step touches some thirty fields of its node, and
  a slot is a fixed offset where an instance dict of forty-odd keys costs a
  hashed lookup (12-19 % of a city area's CPU, more with more nodes; bench/sim_area.py);
- nodes power up at seeded whole seconds spread over BOOT_SPREAD_S, as a
  network whose nodes booted at different times, so the first reports do
  not all collide (whole seconds: nodes whose ticks fall in the same
  millisecond are woken together, one loop timer for all); every node's wall clock is set at commissioning and
  drifts by its own crystal's rate (+-100 ppm, drawn per node from the seed; engine.CLOCK_DRIFT_PPM),
  which the gateway's automatic time (gateway/timesync.py) corrects; the results' `clock` section.

Node provisioning (simulator/provisioning.py): `firmware_config()` writes the JSON a technician's tool
would (node id, kind, a per-node root key derived from the seed, radio:
type "sim" on one of the scenario's channels at the node's SF, location,
report interval, the app's section) and `firmware.config.load` checks it;
the scenario's `[lighting.firmware]` / `[irrigation.firmware]` tables are
merged into it (deep: `[lighting.firmware.lighting] tick_ms = 1000`).
Irrigation: zones' expected flow from the park's design rate, a moisture
probe in every zone (`zone_thresholds`: skip while the deficit is below
half the soil's readily available water, FAO-56 RAW, and water up to just
below field capacity); the park's program on the node's
local standard time (utc_offset_min), all zones queued at the start minute.

Options: `--seed` redraws the run's randomness (weather, pedestrians,
shadowing, keys, boot instants) on the scenario's map; `--hours` shortens or
lengthens it (faults after the end are dropped); `--nodes-scale s` keeps an
even share s of the lamps and of the controllers (fault targets always kept).

Limits: BOOT_SPREAD_S, PROGRESS_STEP_S; one gateway link per run; the run
must start on a fresh loop whose SimClock is at the scenario's start.
"""

from __future__ import annotations

from simulator.engine import BOOT_SPREAD_S, OFF_GRID_S, PROGRESS_STEP_S, RunOptions, Simulation, new_loop, prepare
from simulator.metrics import Results
from simulator.parallel import run_parallel
from simulator.provisioning import APPS, SIM_TICK_MS, firmware_config, root_key, zone_thresholds
from simulator.scenario import Scenario
from simulator.simclock import SimClock
from simulator.virtual_loop import run as run_virtual

__all__ = [
    "APPS",
    "BOOT_SPREAD_S",
    "OFF_GRID_S",
    "PROGRESS_STEP_S",
    "SIM_TICK_MS",
    "RunOptions",
    "Simulation",
    "firmware_config",
    "new_loop",
    "prepare",
    "root_key",
    "run",
    "run_async",
    "zone_thresholds",
]

_DEFAULT_OPTIONS = RunOptions()  # the scenario's own settings; RunOptions is frozen, so one shared default is safe


def run(scenario: Scenario, options: RunOptions = _DEFAULT_OPTIONS) -> Results:
    """Run a scenario to its end on a fresh virtual-time loop; the results of the run."""
    if options.workers > 1:
        return run_parallel(scenario, options)
    sim = Simulation(scenario, options)
    return run_virtual(sim.run(), SimClock(unix0=int(sim.sc.start_unix)))


async def run_async(scenario: Scenario, options: RunOptions = _DEFAULT_OPTIONS) -> Results:
    """The same, inside a running loop made by new_loop(prepare(scenario, options))."""
    return await Simulation(scenario, options).run()
