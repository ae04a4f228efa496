"""`lumeau sim ...`: the simulator's command group.

Each module in SIM_ACTIONS defines ``add_action(actions)`` adding its own action
parser (with ``func`` set), so a new action is one line here.
"""

from __future__ import annotations

import importlib

SIM_ACTIONS: list[str] = [
    "simulator.board",  # lumeau sim board: a virtual MicroPython board on a pty
    "simulator.runner",  # lumeau sim run: a scenario, the real firmware against the real gateway
    "simulator.demo",  # lumeau sim demo: the main job (also `lumeau demo`)
]


def add_subcommand(subparsers) -> None:
    sim = subparsers.add_parser("sim", help="the simulator: virtual boards and simulated cities",
                                description="Host-side simulation: virtual boards running the real firmware.")
    actions = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    for name in SIM_ACTIONS:
        importlib.import_module(name).add_action(actions)
