"""What the gateway sends upstream: the native JSON format and NGSI-LD entities.

Both are documented for platform builders in gateway/FORMATS.md; this module
is the one place that builds (and, for the sink, checks) them.

Native (`lumeau.records/1`): one JSON object per batch, one entry per
record, named fields with units (protocol/expand.py), and an idempotency key
per record ("<node id hex>-<counter>") so a receiver can drop resends.

NGSI-LD (`ngsi-ld`): FIWARE Smart Data Models entities in the NGSI-LD
normalised representation, for `POST /ngsi-ld/v1/entityOperations/upsert`
(see the NGSI-LD section below).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

from gateway.model import Record

NATIVE_FORMAT = "lumeau.records/1"
NATIVE_CONTENT_TYPE = "application/json"

# Limits a receiver enforces on a native record (the sink does).
KEY_MAX = 64
TYPE_MAX = 32
MAX_COUNTER = 0xFFFFFFFF
_NODE = re.compile(r"[0-9a-f]{8}\Z")


class FormatError(ValueError):
    """A document that does not follow the format; the message names where and why."""


def iso_time(t: float) -> str:
    """Unix seconds -> ISO 8601 UTC with milliseconds, e.g. 2026-11-26T10:00:00.250Z."""
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_time(s: Any) -> float:
    """ISO 8601 (with a zone; a bare time is UTC) -> Unix seconds; FormatError otherwise."""
    if not isinstance(s, str) or len(s) > 40:
        raise FormatError("time must be an ISO 8601 string")
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        raise FormatError(f"time {s!r} is not ISO 8601") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


# ----------------------------------------------------------------- native JSON

def native_record(r: Record) -> dict[str, Any]:
    """One record in the native format (see FORMATS.md)."""
    radio: dict[str, Any] = {"gateway": r.gateway_id, "receptions": r.receptions}
    if r.best_rssi is not None:
        radio["rssi"] = r.best_rssi
    if r.best_snr is not None:
        radio["snr"] = r.best_snr
    return {
        "id": r.idempotency_key,
        "node": f"{r.node_id:08x}",
        "counter": r.counter,
        "type": r.kind,
        "time": iso_time(r.rx_time),
        "alarm": r.alarm,
        "fields": r.fields,
        "radio": radio,
    }


def native_batch(records: Iterable[Record], gateway: str = "", sent: float | None = None) -> bytes:
    """A batch request body (UTF-8 JSON)."""
    doc: dict[str, Any] = {"format": NATIVE_FORMAT, "records": [native_record(r) for r in records]}
    if gateway:
        doc["gateway"] = gateway
    if sent is not None:
        doc["sent"] = iso_time(sent)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(slots=True)
class NativeRecord:
    """A native record as a receiver checked it."""

    key: str
    node: str
    counter: int
    type: str
    time: float
    doc: dict[str, Any]


def check_native_batch(doc: Any, max_records: int = 10_000) -> list[NativeRecord]:
    """Check a parsed native batch; FormatError names the first problem ("records[3].counter: ...")."""
    if not isinstance(doc, dict):
        raise FormatError("the body must be a JSON object")
    fmt = doc.get("format", NATIVE_FORMAT)
    if fmt != NATIVE_FORMAT:
        raise FormatError(f"format {fmt!r} is not {NATIVE_FORMAT!r}")
    recs = doc.get("records")
    if not isinstance(recs, list):
        raise FormatError("records must be an array")
    if len(recs) > max_records:
        raise FormatError(f"{len(recs)} records in one batch, at most {max_records}")
    return [_check_record(i, r) for i, r in enumerate(recs)]


def _check_record(i: int, r: Any) -> NativeRecord:
    where = f"records[{i}]"
    if not isinstance(r, dict):
        raise FormatError(f"{where}: must be an object")
    node, counter, key, kind = r.get("node"), r.get("counter"), r.get("id"), r.get("type")
    if not isinstance(node, str) or not _NODE.match(node):
        raise FormatError(f"{where}.node: must be 8 lower-case hex digits")
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter <= MAX_COUNTER:
        raise FormatError(f"{where}.counter: must be an integer 0..{MAX_COUNTER}")
    if not isinstance(key, str) or len(key) > KEY_MAX:
        raise FormatError(f"{where}.id: must be a string of at most {KEY_MAX} characters")
    if key != f"{node}-{counter}":
        raise FormatError(f"{where}.id: {key!r} is not node-counter ({node}-{counter})")
    if not isinstance(kind, str) or not 0 < len(kind) <= TYPE_MAX:
        raise FormatError(f"{where}.type: must be a string of 1..{TYPE_MAX} characters")
    try:
        t = parse_time(r.get("time"))
    except FormatError as e:
        raise FormatError(f"{where}.time: {e}") from None
    if not isinstance(r.get("fields", {}), dict):
        raise FormatError(f"{where}.fields: must be an object")
    if not isinstance(r.get("radio", {}), dict):
        raise FormatError(f"{where}.radio: must be an object")
    if not isinstance(r.get("alarm", False), bool):
        raise FormatError(f"{where}.alarm: must be true or false")
    return NativeRecord(key, node, counter, kind, t, r)
