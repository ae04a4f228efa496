"""The results of a simulated run: one object for `lumeau sim run --json` and the HTML report.

`Results.to_dict()` is the JSON (stable keys, plain numbers, lists and
dicts); `Results.summary()` the text the CLI prints. Sections:

  scenario   name, file, seed, start, hours, node counts, gateways
  run        wall seconds, simulated node-seconds per wall second, the link used
  delivery   uplinks put on the air, stored by the gateway, ratio (overall, per kind,
             per node), refused by the channel (duty cycle, too long), lost on the air
  latency_s  uplink end -> durable commit at the gateway: count, mean, p50, p95, p99, max,
             and a histogram
  airtime    per node: seconds on the air and the fraction of its EU868 duty-cycle limit
  frames     largest frame per message type (bytes, header and MIC included) against 51
  alarms     one entry per injected fault: the alarm it should raise (Fault.expected),
             whether the gateway stored it, and how long after the fault; alarms raised
             with no fault behind them
  energy     kWh the lamps used (measured by the world), the always-full-power baseline,
             kWh and % saved, and kWh as the gateway's records report it
  water      m3 through the meters, the fixed-schedule baseline, m3 and % saved, and m3
             as the gateway's records report it
  totals     gateway vs nodes' own counters (uplinks, energy Wh, water L), and whether
             they agree
  gateway    pipeline, downlink and store counters of the link
  series     hourly values for plots (uplinks, stored, energy and baseline, water)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Results:
    sections: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.sections

    def __getitem__(self, key: str) -> Any:
        return self.sections[key]
