"""What the benchmarks in bench/ share: where a result was measured, and how it is printed.

Each benchmark is a script (`python bench/x.py [--json]`) that puts the repository on sys.path, then
imports this module as `bench.common`.
"""

from __future__ import annotations

import json
import platform
from typing import Any


def machine() -> dict[str, str]:
    """The interpreter version and CPU architecture, the keys every result ends with."""
    return {"python": platform.python_version(), "machine": platform.machine()}


def emit(result: dict[str, Any], as_json: bool, line: str = "{k:>24}: {v}") -> None:
    """Print a result: one JSON object with --json (what `make bench` and the smoke tests read), else one
    line per key, formatted with `line`."""
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(line.format(k=k, v=v))
