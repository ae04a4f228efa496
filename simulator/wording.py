"""How the scenario validator words a value in its messages: as the file writes it, in human units.

A city engineer reads these, not a Python programmer: a value is shown as
TOML writes it (`"feria-7"`, `true`, `2026-06-15`, `[1, 2]`), never as a
Python repr (`'feria-7'`, `True`, `datetime.date(2026, 6, 15)`); a duration
in s / min / h / d; an unknown name or key with the nearest known one
(difflib), since most are typos.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
from collections.abc import Iterable
from typing import Any

MAX_SHOWN = 60  # characters of a long value shown before "..."


def show(v: Any) -> str:
    """A value as a TOML file writes it (strings quoted), shortened past MAX_SHOWN characters."""
    text = _toml(v)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    return str(v)


_UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "min"), (1.0, "s"))


def duration_text(seconds: float) -> str:
    """60 -> "1 min", 5400 -> "1 h 30 min", 31622400 -> "366 d", 0.5 -> "0.5 s"."""
    if not math.isfinite(seconds):
        return show(seconds)
    if seconds < 0:
        return "-" + duration_text(-seconds)
    if seconds < 1:
        return f"{seconds:g} s"
    parts = []
    rest = float(seconds)
    for size, unit in _UNITS:
        if rest >= size:
            n = int(rest // size) if unit != "s" else rest
            parts.append(f"{n:g} {unit}")
            rest -= int(n) * size if unit != "s" else rest
            if len(parts) == 2:  # two units say it: "1 h 30 min", not "1 h 30 min 12 s"
                break
    return " ".join(parts) or "0 s"


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the nearest of the options, "" when none is near."""
    if not isinstance(word, str):
        return ""
    best = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {show(best[0])}?)" if best else ""
