"""How a bench prints its result: one JSON object (--json), or one `key: value` line per figure."""

from __future__ import annotations

import json
from typing import Any


def emit(result: dict[str, Any], as_json: bool, width: int = 24) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>{width}}: {v}")
