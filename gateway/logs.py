"""Structured logging for the gateway: one JSON object per line.

Every line has `time` (Unix s), `level`, `logger`, `msg`, plus the `extra`
fields given at the call site (`log.info("...", extra={"node": "00a1b2c3"})`).

Keys never reach a log: the formatter replaces the value of any field whose
name looks like a secret (SECRET_NAMES) with "<redacted>", and bytes values
are never printed (only their length), so a root key passed by mistake shows
as `<16 bytes>`. The objects that hold keys (`protocol.keys.NodeKeys`,
`gateway.registry.NodeEntry`) also hide them in their reprs.

A log file is created (or tightened) mode 0600, or 0640 with the configured
group (gateway/files.py).

Rejections from the air are logged through `RateLimiter`: an attacker or a
noisy radio must not be able to fill the disk with log lines. Limits (per
reason): LOG_BURST lines at once, then LOG_RATE lines per second; the number
of suppressed lines is reported in the next line that gets through.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from gateway import files

SECRET_NAMES = ("key", "token", "secret", "password", "passwd", "authorization")
LOG_BURST = 20
LOG_RATE = 1.0  # lines per second per reason after the burst

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _is_secret(name: str) -> bool:
    n = name.lower()
    return any(s in n for s in SECRET_NAMES)


def _safe(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): "<redacted>" if _is_secret(str(k)) else _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = "<redacted>" if _is_secret(k) else _safe(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def setup(level: str = "info", stream: IO[str] | None = None, path: str | None = None) -> logging.Handler:
    """Send the `lumeau` loggers to one JSON-lines handler (a file, or stderr); returns it."""
    handler: logging.Handler
    if path and path != "-":
        files.create(path)  # 0600 (0640 with [gateway] file_group) whatever the umask (issue 15)
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("lumeau")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


class RateLimiter:
    """Token buckets by key (e.g. a rejection reason): `allow(key)` -> (allowed, suppressed since last).

    The number of keys is bounded by the caller (reasons are a fixed set).
    """

    def __init__(
        self, burst: int = LOG_BURST, rate: float = LOG_RATE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.rate = rate
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill, suppressed]

    def allow(self, key: str) -> tuple[bool, int]:
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = [float(self.burst), now, 0]
        b[0] = min(float(self.burst), b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            suppressed = int(b[2])
            b[2] = 0
            return True, suppressed
        b[2] += 1
        return False, 0
