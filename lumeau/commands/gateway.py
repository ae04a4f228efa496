"""`lumeau gateway`: the command line of the gateway service (gateway/service.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway import service
from gateway.config import ConfigError, example_config, load_config
from gateway.registry import RegistryError
from gateway.store import StoreError


def cmd_gateway(args: argparse.Namespace) -> int:
    if args.example_config:
        sys.stdout.write(example_config())
        return 0
    if not args.config:
        print("lumeau gateway: --config FILE is required (or --example-config to get one)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"lumeau gateway: {e}", file=sys.stderr)
        return 2
    try:
        service.run(cfg)
    except (RegistryError, StoreError, OSError) as e:
        print(f"lumeau gateway: {e}", file=sys.stderr)
        return 1
    return 0


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the gateway service (transports, durable queue, upstream, API)",
        description="Run the Lumeau gateway until SIGTERM or SIGINT. Nodes are heard through the transports "
        "its configuration enables: [semtech] packet forwarders, [basicstation] LoRa Basics Stations "
        "(WebSocket, TLS, a token per gateway), [[serial]] ports, [ble], and [chirpstack] "
        "(a ChirpStack v4 application's MQTT integration).",
    )
    p.add_argument("--config", metavar="FILE", help="the gateway's TOML configuration")
    p.add_argument(
        "--example-config",
        action="store_true",
        help="print a complete commented configuration (with a fresh API token) and exit",
    )
    p.set_defaults(func=cmd_gateway)
