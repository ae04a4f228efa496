"""`lumeau sink`: the command line of the embedded upstream (city/sink.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from city import sink


def add_subcommand(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sink",
        help="run the embedded upstream: receive what a gateway sends, in SQLite",
        description=sink.__doc__.split("\n\n")[0] if sink.__doc__ else None,
    )
    p.add_argument("--db", default="lumeau-sink.db", help="SQLite file (default: lumeau-sink.db)")
    p.add_argument("--host", default=sink.DEFAULT_HOST, help=f"address to bind (default {sink.DEFAULT_HOST})")
    p.add_argument(
        "--port", type=int, default=sink.DEFAULT_PORT, help=f"port (default {sink.DEFAULT_PORT}; 0 picks one)"
    )
    p.add_argument("--token-file", help=f"file holding the bearer token (or set {sink.TOKEN_ENV})")
    p.add_argument("--no-auth", action="store_true", help="accept requests without a token (local experiments only)")
    p.set_defaults(func=cmd_sink)


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
    return asyncio.run(sink.serve(sink.Sink(args.db, token, host=args.host, port=args.port)))
