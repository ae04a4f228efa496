"""`lumeau sink`: the command line of the embedded upstream (city/sink.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from city import matching, open311, open_data, sink
from city.ledger import Settings


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sink",
        help="the embedded city platform: what gateways send (SQLite), residents' reports (Open311), the ledger",
        description=sink.__doc__.split("\n\n")[0] if sink.__doc__ else None,
    )
    p.add_argument("--db", default="lumeau-sink.db", help="SQLite file (default: lumeau-sink.db)")
    p.add_argument("--host", default=sink.DEFAULT_HOST, help=f"address to bind (default {sink.DEFAULT_HOST})")
    p.add_argument(
        "--port", type=int, default=sink.DEFAULT_PORT, help=f"port (default {sink.DEFAULT_PORT}; 0 picks one)"
    )
    p.add_argument("--token-file", help=f"file holding the bearer token (or set {sink.TOKEN_ENV})")
    p.add_argument("--no-auth", action="store_true", help="accept requests without a token (local experiments only)")
    o = p.add_argument_group("Open311 GeoReport v2 (served under /open311/v2/, see city/README.md)")
    o.add_argument(
        "--nodes",
        metavar="REGISTRY",
        help="node registry (TOML) whose kinds, names, sites and positions reports are matched against "
        "(keys are not kept); nodes can also be sent with PUT /v1/nodes",
    )
    o.add_argument(
        "--open311-keys",
        metavar="FILE",
        help="file of api_key values allowed to POST requests, one a line "
        "(without it, only the public page's own key is accepted: city/README.md)",
    )
    o.add_argument("--jurisdiction", default=open311.DEFAULT_JURISDICTION, help="jurisdiction_id (default %(default)s)")
    o.add_argument(
        "--match-radius",
        type=float,
        default=matching.DEFAULT_RADIUS_M,
        metavar="M",
        help="metres around a report's position where nodes match it (default %(default)g)",
    )
    o.add_argument(
        "--city-bounds",
        metavar="S,W,N,E",
        help="positions accepted in reports, in degrees (default: the nodes' box plus 1 km)",
    )
    o.add_argument(
        "--report-rate",
        default="10/600",
        metavar="N/SECONDS",
        help="submissions allowed per client address (default %(default)s: 10 per 10 minutes, bursts of 10)",
    )
    led = p.add_argument_group(
        "public-value ledger and open data (served under /ledger/ and /open-data/; the NGSI-LD twin of the "
        "requests and the ledger under /open-data/twin/)"
    )
    led.add_argument(
        "--ledger-config",
        metavar="TOML",
        help="a file with a [ledger] table: timezone, eur_per_kwh, kgco2_per_kwh, eur_per_m3, kgco2_per_m3, "
        "default_rated_power_w, presence_min_count, licence, licence_url, publisher "
        "(defaults and their sources: city/README.md)",
    )
    led.add_argument("--timezone", help="the ledger's local day, an IANA zone (default Europe/Paris)")
    p.set_defaults(func=cmd_sink)


def open311_config(args: argparse.Namespace) -> open311.Open311Config:
    """The Open311 settings from the command line; ValueError names the option and why."""
    keys: frozenset[str] = frozenset()
    if args.open311_keys:
        lines = Path(args.open311_keys).read_text(encoding="utf-8").splitlines()
        keys = frozenset(x.strip() for x in lines if x.strip() and not x.strip().startswith("#"))
        if not keys:
            raise ValueError(f"--open311-keys {args.open311_keys}: no key in the file")
    if not args.match_radius > 0:
        raise ValueError(f"--match-radius {args.match_radius}: must be more than 0 m")
    try:
        n, _, secs = args.report_rate.partition("/")
        count, window = int(n), float(secs)
        if count < 1 or not window > 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"--report-rate {args.report_rate!r}: give N/SECONDS, e.g. 10/600") from None
    bounds = matching.Bounds.parse(args.city_bounds) if args.city_bounds else None
    return open311.Open311Config(
        jurisdiction_id=args.jurisdiction,
        api_keys=keys,
        radius_m=args.match_radius,
        bounds=bounds,
        rate_count=count,
        rate_window_s=window,
    )


def registry_nodes(path: str) -> list[matching.NodeInfo]:
    """The public facts of a registry's nodes (kind, name, site, position); its keys are dropped here."""
    from gateway.registry import Registry

    return sink.node_infos([e.public() for e in Registry.load(path, missing_ok=False)])


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{args.token_file}: empty token file")
        return token
    return os.environ.get(sink.TOKEN_ENV) or None


def cmd_sink(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
        config = open311_config(args)
        nodes = registry_nodes(args.nodes) if args.nodes else None
        ledger = open_data.load_settings(args.ledger_config) if args.ledger_config else Settings()
        if args.timezone:  # over the file's: checked as the file's would be
            tz = open_data.settings_from({"timezone": args.timezone}, "--timezone").timezone
            ledger = dataclasses.replace(ledger, timezone=tz)
    except (OSError, ValueError) as e:
        print(f"lumeau sink: {e}", file=sys.stderr)
        return 2
    if token is None and not args.no_auth:
        print(
            f"lumeau sink: no token: give --token-file or set {sink.TOKEN_ENV} (or --no-auth for local experiments)",
            file=sys.stderr,
        )
        return 2
    if not logging.getLogger("lumeau").handlers:
        from gateway import logs

        logs.setup()
    return asyncio.run(
        sink.serve(
            sink.Sink(args.db, token, host=args.host, port=args.port, open311=config, nodes=nodes, ledger=ledger)
        )
    )
