"""The ``lumeau`` command: one entry point, a subcommand per job.

Subcommands so far:
  demo           the main job: a simulated district running the real firmware against a
                 real gateway process and the embedded sink, with a report (simulator/demo.py)
  frame demo     a protocol round trip that prints real frames, as they travel over the
                 air and a serial line, and what the receiver refuses (lumeau/commands/frame.py)
  frame decode   decode a frame given in hex, verifying it when the root key is given
The other subcommands come from COMMAND_MODULES below.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from lumeau import __version__

# Modules that add their own subcommands: each defines
# `add_subcommand(subparsers) -> None`, setting `func` on its parser. Imported
# only when the parser is built, so `lumeau --help` stays the one place that
# lists every command.
COMMAND_MODULES: list[str] = [
    "lumeau.commands.frame",
    "lumeau.commands.sim",
    "lumeau.commands.sink",
    "lumeau.commands.gateway",
    "lumeau.commands.node",
    "lumeau.commands.group",
    "lumeau.commands.fleet",
    "lumeau.commands.plan",
    "lumeau.commands.calendar",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lumeau", description="Lumeau: street lighting and irrigation nodes, gateway and simulator."
    )
    p.add_argument("--version", action="version", version=f"lumeau {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subcommand(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
