"""What reached the city platform: records read back from `lumeau sink`, in the simulator's terms.

The sink keeps each record as the gateway sent it (gateway/FORMATS.md,
`lumeau.records/1`): named fields with units. The simulator's results work
on message bodies with the protocol's integer keys (protocol/messages.py),
the same shape the in-process gateway hands over, so `body_from_fields`
undoes protocol.expand.expand exactly: scaled values back to air units,
flag lists to bit masks, enumeration names to codes, hex to bytes, per-zone
lists to packed bytes. tests/test_sim_live.py checks the round trip on
every uplink message type with hypothesis.

    records = fetch_records(http)         # every record, in arrival order (pages of PAGE records)
    stats = http.json("/v1/stats")
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from protocol import expand
from protocol import messages as m

PAGE = 1000  # records per GET /v1/records (the sink's QUERY_LIMIT_MAX)
MTYPES = {name: mtype for mtype, name in expand.TYPE_NAMES.items()}


class SinkRecordError(ValueError):
    """A record from the sink that does not map back to a message body (names the record and field)."""


def parse_time(text: str) -> float:
    """Unix seconds from the format's ISO 8601 UTC time ("2026-06-15T12:00:00.123Z")."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _air(value: Any, div: float) -> int:
    x = value * div
    r = round(x)
    if abs(x - r) > 1e-6 * max(1.0, abs(x)):
        raise ValueError(f"{value!r} is not a multiple of 1/{div:g}")
    return int(r)


def body_from_fields(mtype: int, fields: dict[str, Any]) -> dict[int, Any]:
    """The inverse of protocol.expand.expand: {name: {"value", "unit"}} -> {key: air value}."""
    specs = m.SPECS[mtype]
    body: dict[int, Any] = {}
    for key, name, _unit, div in expand.FIELDS[mtype]:
        if name not in fields:
            continue
        v = fields[name]["value"] if isinstance(fields[name], dict) else fields[name]
        try:
            flags = expand.FLAGS.get((mtype, key))
            enum = expand.ENUMS.get((mtype, key))
            kind = specs[key][1]
            if flags is not None:
                mask = 0
                for flag in v:
                    mask |= 1 << flags.index(flag)
                body[key] = mask
            elif enum is not None:
                body[key] = v if isinstance(v, int) else {n: c for c, n in enum.items()}[v]
            elif kind == m.B:
                body[key] = bytes.fromhex(v)
            elif kind == m.V:
                body[key] = bytes(m.NO_VALUE if x is None else _air(x, div) for x in v)
            elif kind in (m.U, m.I):
                body[key] = _air(v, div)
            else:  # text, arrays, maps travel as they are
                body[key] = v
        except (KeyError, ValueError, TypeError) as e:
            raise SinkRecordError(f"{expand.TYPE_NAMES[mtype]}.{name}: {v!r} does not map back: {e}") from None
    return body


def mtype_of(record: dict[str, Any]) -> int:
    try:
        return MTYPES[record["type"]]
    except KeyError:
        raise SinkRecordError(f"record {record.get('id')!r}: unknown type {record.get('type')!r}") from None


def iter_records(http: Any, after: int = 0) -> Iterator[dict[str, Any]]:
    """Every record the sink holds after `after`, oldest first (GET /v1/records, paged)."""
    while True:
        page = http.json(f"/v1/records?after={after}&limit={PAGE}")
        recs = page.get("records", [])
        yield from recs
        if len(recs) < PAGE or page.get("next") is None:
            return
        after = int(page["next"])


def fetch_records(http: Any) -> list[dict[str, Any]]:
    return list(iter_records(http))
