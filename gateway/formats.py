"""What the gateway sends upstream in its native JSON format, and the times both formats write.

Documented for platform builders in gateway/FORMATS.md; this module is the
one place that builds (and, for the sink, checks) the native format. The
other wire format, NGSI-LD entities, is gateway/ngsi_ld.py (one wire format
per file, each beside its test: tests/test_formats.py, tests/test_ngsi_ld.py).

Native, two versions (the gateway sends /3 unless told otherwise):

- `lumeau.records/3` (`native_batch_v3`): columnar. Per message type in the
  batch its field names and units once; then one array per record, in
  arrival order: the columns named by "columns", the values in the order of
  their type's "fields". No object per record and no field name repeated:
  about half the encoding CPU and a third fewer bytes than /2.
- `lumeau.records/2` (`native_batch`): one object per record with its
  fields by name (physical values, gateway/bodies.py), the units of every
  field once per message type in the batch.

Both carry an idempotency key per record ("<node id hex>-<counter>", or
"<node id hex>-g<key_gen>-<counter>" once the node was re-keyed: SPEC §4;
/2 writes it, /3 leaves the receiver to join node, key_gen and counter) so a
receiver can drop resends. Receivers accept /3, /2 and `lumeau.records/1` (units
with every value) and read each as /2 (`check_native_batch`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import bodies
from gateway.model import Record

NATIVE_FORMAT = "lumeau.records/2"
NATIVE_FORMAT_V1 = "lumeau.records/1"  # still accepted: units with every value
NATIVE_FORMAT_V3 = "lumeau.records/3"  # columnar: what the gateway sends by default
NATIVE_VERSIONS = (2, 3)
DEFAULT_NATIVE_VERSION = 3
# /3: what each record's array holds, in this order (a receiver finds them by name in "columns",
# so a later version can add columns)
V3_COLUMNS = ("type", "node", "counter", "time", "alarm", "values", "gateway", "receptions", "rssi", "snr")
# /3: added at the end of "columns" only in a batch holding a record of a re-keyed node (key
# generation > 0), so batches of nodes never re-keyed are byte for byte as before; absent: 0
V3_KEY_GEN = "key_gen"
NATIVE_CONTENT_TYPE = "application/json"

# Limits a receiver enforces on a native record (the sink does).
KEY_MAX = 64
TYPE_MAX = 32
MAX_COUNTER = 0xFFFFFFFF
MAX_KEY_GEN = 0xFFFFFFFF  # gateway/registry.py MAX_KEY_GEN
UNITS_TYPES_MAX = 32  # message types in a batch's "units"
UNITS_FIELDS_MAX = 64  # fields per type there
UNIT_MAX = 32  # characters of a field name or a unit
_NODE = re.compile(r"[0-9a-f]{8}\Z")

# iso_time: the text up to the second, by Unix second. Records of a batch come from a few
# seconds, so the cache is small; it is emptied when it holds ISO_CACHE_MAX seconds.
ISO_CACHE_MAX = 4096
_iso_seconds: dict[int, str] = {}
_ISO_MS = [".%03dZ" % ms for ms in range(1000)]


class FormatError(ValueError):
    """A document that does not follow the format; the message names where and why."""


def iso_time(t: float) -> str:
    """Unix seconds -> ISO 8601 UTC with milliseconds, e.g. 2026-11-26T10:00:00.250Z.

    The same text as `datetime.fromtimestamp(t, timezone.utc)` gives (its
    microseconds rounded half to even, then truncated to milliseconds), with
    the part up to the second computed once per second (ISO_CACHE_MAX).
    ValueError for a time datetime cannot hold (NaN, beyond year 9999).
    """
    try:
        frac, whole = math.modf(t)
        us = round(frac * 1e6)  # as datetime does: half to even, and carried into the seconds
        if us >= 1_000_000:
            us -= 1_000_000
            whole += 1.0
        elif us < 0:
            us += 1_000_000
            whole -= 1.0
        sec = int(whole)
    except (ValueError, OverflowError, TypeError) as e:  # NaN, infinities, not a number
        raise ValueError(f"time {t!r} out of range") from e
    head = _iso_seconds.get(sec)
    if head is None:
        try:
            head = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        except (OverflowError, OSError, ValueError) as e:
            raise ValueError(f"time {t!r} out of range") from e
        if len(_iso_seconds) >= ISO_CACHE_MAX:
            _iso_seconds.clear()
        _iso_seconds[sec] = head
    return head + _ISO_MS[us // 1000]


_parsed_seconds: dict[str, int] = {}  # "2026-11-18T11:06:41" -> Unix seconds (UTC), at most ISO_CACHE_MAX


def parse_time(s: Any) -> float:
    """ISO 8601 (with a zone; a bare time is UTC) -> Unix seconds; FormatError otherwise.

    What iso_time writes (UTC, milliseconds, "Z") is read with the second
    cached; anything else goes through datetime.fromisoformat.
    """
    if type(s) is str and len(s) == 24 and s[19] == "." and s[23] == "Z" and s.isascii() and s[20:23].isdigit():
        head = s[:19]
        sec = _parsed_seconds.get(head)
        if sec is None:
            try:
                sec = int(datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp())
            except ValueError:
                sec = None
            else:
                if len(_parsed_seconds) >= ISO_CACHE_MAX:
                    _parsed_seconds.clear()
                _parsed_seconds[head] = sec
        if sec is not None:
            # one correctly rounded division, as datetime.timestamp() does
            return (sec * 1000 + int(s[20:23])) / 1000
    if not isinstance(s, str) or len(s) > 40:
        raise FormatError("time must be an ISO 8601 string")
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        raise FormatError(f"time {s!r} is not ISO 8601") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


# ----------------------------------------------------------------- native JSON


def native_record(r: Record) -> dict[str, Any]:
    """One record in the native format (see FORMATS.md); its fields are named from `r.body`."""
    radio: dict[str, Any] = {"gateway": r.gateway_id, "receptions": r.receptions}
    if r.best_rssi is not None:
        radio["rssi"] = r.best_rssi
    if r.best_snr is not None:
        radio["snr"] = r.best_snr
    node = "%08x" % r.node_id
    out = {
        "id": r.idempotency_key,
        "node": node,
        "counter": r.counter,
        "type": r.kind,
        "time": iso_time(r.rx_time),
        "alarm": r.alarm,
        "fields": bodies.values(r.mtype, r.body),
        "radio": radio,
    }
    if r.key_gen:  # only after a re-key: records of nodes never re-keyed are as before
        out["key_gen"] = r.key_gen
    return out


def native_batch(records: Iterable[Record], gateway: str = "", sent: float | None = None) -> bytes:
    """A batch request body (UTF-8 JSON, orjson: the upstream's main cost before it was used).

    ValueError or TypeError for a record that cannot be encoded (a time no
    calendar holds); non-finite radio figures are written as null.
    """
    recs = [native_record(r) for r in records]
    doc: dict[str, Any] = {"format": NATIVE_FORMAT}
    if gateway:
        doc["gateway"] = gateway
    if sent is not None:
        doc["sent"] = iso_time(sent)
    doc["units"] = {k: bodies.UNITS[k] for k in {r["type"] for r in recs} if k in bodies.UNITS}
    doc["records"] = recs
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as e:  # a TypeError: e.g. an integer beyond 64 bits
        raise TypeError(str(e)) from None


# /3: per message type, its field names (body-key order) and a function body -> values array,
# generated from gateway/bodies.py's naming plans (the same values as `bodies.values`, in an
# array): one straight-line function per type instead of a loop with a lookup per field
def _compile_v3(plan: dict[int, tuple[str, Callable[[Any], Any] | None]]) -> tuple[list[str], Callable[[dict], list]]:
    env: dict[str, Any] = {}
    lines, cols = [], []
    for i, (key, (_name, conv)) in enumerate(plan.items()):
        lines.append(f"    v{i} = g({key!r})")
        if conv is None:
            cols.append(f"v{i}")
        else:
            env[f"c{i}"] = conv
            cols.append(f"None if v{i} is None else c{i}(v{i})")
    src = "def values(b):\n    g = b.get\n" + "\n".join(lines) + f"\n    return [{', '.join(cols)}]\n"
    exec(compile(src, "<lumeau.records/3 values>", "exec"), env)
    return [name for name, _conv in plan.values()], env["values"]


_V3_PLANS = {mtype: _compile_v3(plan) for mtype, plan in bodies.PLANS.items()}


def native_batch_v3(records: Iterable[Record], gateway: str = "", sent: float | None = None) -> bytes:
    """A `lumeau.records/3` batch (columnar, FORMATS.md); same errors as `native_batch`."""
    rows: list[tuple[Any, ...]] = []
    types: dict[str, int] = {}
    plans = _V3_PLANS
    iso = iso_time
    gens: list[int] = []  # each record's key generation, in order
    for r in records:
        mtype = r.mtype
        kind = r.kind
        if kind not in types:
            types[kind] = mtype
        gens.append(r.key_gen)
        # values: null where the body does not carry the field
        rows.append(
            (
                kind,
                "%08x" % r.node_id,
                r.counter,
                iso(r.rx_time),
                r.alarm,
                plans[mtype][1](r.body),
                r.gateway_id,
                r.receptions,
                r.best_rssi,
                r.best_snr,
            )
        )
    columns: tuple[str, ...] = V3_COLUMNS
    if any(gens):  # a re-keyed node among them: its generation joins the key (rare, so a second pass)
        columns = (*V3_COLUMNS, V3_KEY_GEN)
        rows = [(*row, g) for row, g in zip(rows, gens)]
    doc: dict[str, Any] = {"format": NATIVE_FORMAT_V3}
    if gateway:
        doc["gateway"] = gateway
    if sent is not None:
        doc["sent"] = iso_time(sent)
    doc["types"] = {
        kind: {"fields": plans[mtype][0], "units": bodies.UNITS.get(kind, _NO_UNITS)} for kind, mtype in types.items()
    }
    doc["columns"] = columns
    doc["records"] = rows
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as e:  # a TypeError: e.g. an integer beyond 64 bits
        raise TypeError(str(e)) from None


def native_encoder(version: int) -> Callable[..., bytes]:
    """`native_batch_v3` or `native_batch` for a format version (NATIVE_VERSIONS)."""
    if version == 3:
        return native_batch_v3
    if version == 2:
        return native_batch
    raise ValueError(f"native format version must be one of {NATIVE_VERSIONS}, not {version!r}")


@dataclass(slots=True)
class NativeRecord:
    """A native record as a receiver checked it; `doc` is in the /2 shape (fields by name, plain values)."""

    key: str
    node: str
    counter: int
    type: str
    time: float
    doc: dict[str, Any]
    units: dict[str, str]  # the units of this record's type (shared by the records of a type)


def check_native_batch(doc: Any, max_records: int = 10_000) -> list[NativeRecord]:
    """Check a parsed native batch (/2, or /1 read as /2); FormatError names the first problem
    ("records[3].counter: ...")."""
    if not isinstance(doc, dict):
        raise FormatError("the body must be a JSON object")
    fmt = doc.get("format", NATIVE_FORMAT)
    if fmt != NATIVE_FORMAT and fmt != NATIVE_FORMAT_V1 and fmt != NATIVE_FORMAT_V3:
        raise FormatError(f"format {fmt!r} is not {NATIVE_FORMAT_V3!r}, {NATIVE_FORMAT!r} or {NATIVE_FORMAT_V1!r}")
    recs = doc.get("records")
    if not isinstance(recs, list):
        raise FormatError("records must be an array")
    if len(recs) > max_records:
        raise FormatError(f"{len(recs)} records in one batch, at most {max_records}")
    if fmt == NATIVE_FORMAT_V3:
        return _check_v3(doc, recs)
    if fmt == NATIVE_FORMAT_V1:
        return [_from_v1(_check_record(i, r, {})) for i, r in enumerate(recs)]
    units = _check_units(doc.get("units", {}))
    return [_check_record(i, r, units) for i, r in enumerate(recs)]


def _short_str(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= UNIT_MAX


def _check_units(units: Any) -> dict[str, dict[str, str]]:
    if not isinstance(units, dict) or len(units) > UNITS_TYPES_MAX:
        raise FormatError(f"units: must be an object of at most {UNITS_TYPES_MAX} message types")
    for kind, per_field in units.items():
        if (
            not isinstance(per_field, dict)
            or len(per_field) > UNITS_FIELDS_MAX
            or not all(_short_str(k) and _short_str(u) for k, u in per_field.items())
        ):
            raise FormatError(
                f"units.{kind}: must map at most {UNITS_FIELDS_MAX} field names to units "
                f"(strings of at most {UNIT_MAX} characters)"
            )
    return units


def _from_v1(r: NativeRecord) -> NativeRecord:
    """A /1 record ({"value", "unit"} per field) in the /2 shape."""
    fields, units = {}, {}
    for name, f in r.doc.get("fields", {}).items():
        if isinstance(f, dict) and "value" in f:
            fields[name] = f["value"]
            if _short_str(f.get("unit")) and _short_str(name):
                units[name] = f["unit"]
        else:
            fields[name] = f
    r.doc = {**r.doc, "fields": fields}
    r.units = units
    return r


def _check_v3(doc: dict[str, Any], recs: list[Any]) -> list[NativeRecord]:
    """A /3 batch's records, each checked as a /2 record would be and given in the /2 shape.

    The checks of `_check_record`, on the row's cells directly (the sink's cost per record is
    mostly here: no intermediate object per record).
    """
    cols = doc.get("columns")
    if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
        raise FormatError("columns: must be an array of names")
    try:
        at = [cols.index(c) for c in V3_COLUMNS]
    except ValueError:
        raise FormatError(f"columns: must name {', '.join(V3_COLUMNS)}") from None
    i_type, i_node, i_counter, i_time, i_alarm, i_values, i_gw, i_rx, i_rssi, i_snr = at
    i_gen = cols.index(V3_KEY_GEN) if V3_KEY_GEN in cols else -1  # optional: 0 without it
    types = doc.get("types")
    if not isinstance(types, dict) or len(types) > UNITS_TYPES_MAX:
        raise FormatError(f"types: must be an object of at most {UNITS_TYPES_MAX} message types")
    fields: dict[str, list[str]] = {}
    units: dict[str, dict[str, str]] = {}
    for kind, t in types.items():
        if not 0 < len(kind) <= TYPE_MAX:
            raise FormatError(f"types: a message type is a name of 1..{TYPE_MAX} characters, not {kind[:40]!r}")
        names = t.get("fields") if isinstance(t, dict) else None
        if not isinstance(names, list) or len(names) > UNITS_FIELDS_MAX or not all(_short_str(n) for n in names):
            raise FormatError(
                f"types.{kind}.fields: must be an array of at most {UNITS_FIELDS_MAX} names "
                f"(strings of at most {UNIT_MAX} characters)"
            )
        fields[kind] = names
        units[kind] = t.get("units", {})
    units = _check_units(units)
    n = len(cols)
    node_ok = _NODE.match
    out = []
    for i, row in enumerate(recs):
        if type(row) is not list or len(row) != n:
            raise FormatError(f"records[{i}]: must be an array of {n} values (columns)")
        kind = row[i_type]
        names = fields.get(kind) if type(kind) is str else None
        if names is None:
            raise FormatError(f"records[{i}].type: {kind!r} is not among types")
        node, counter = row[i_node], row[i_counter]
        if type(node) is not str or not node_ok(node):
            raise FormatError(f"records[{i}].node: must be 8 lower-case hex digits")
        if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
            raise FormatError(f"records[{i}].counter: must be an integer 0..{MAX_COUNTER}")
        when = row[i_time]
        try:
            t = parse_time(when)
        except FormatError as e:
            raise FormatError(f"records[{i}].time: {e}") from None
        alarm = row[i_alarm]
        if type(alarm) is not bool:
            raise FormatError(f"records[{i}].alarm: must be true or false")
        vals = row[i_values]
        if type(vals) is not list or len(vals) != len(names):
            raise FormatError(f"records[{i}].values: must be an array of {len(names)} values (types.{kind}.fields)")
        radio: dict[str, Any] = {"gateway": row[i_gw], "receptions": row[i_rx]}
        v = row[i_rssi]
        if v is not None:
            radio["rssi"] = v
        v = row[i_snr]
        if v is not None:
            radio["snr"] = v
        rec = {
            "id": "",
            "node": node,
            "counter": counter,
            "type": kind,
            "time": when,
            "alarm": alarm,
            "fields": {name: v for name, v in zip(names, vals) if v is not None},
            "radio": radio,
        }
        gen = row[i_gen] if i_gen >= 0 else 0
        if gen == 0 and type(gen) is int:
            key = node + "-" + str(counter)  # at most 19 characters: within KEY_MAX
        else:
            if type(gen) is not int or not 0 < gen <= MAX_KEY_GEN:
                raise FormatError(f"records[{i}].key_gen: must be an integer 0..{MAX_KEY_GEN}")
            key = idempotency_key(node, gen, counter)  # at most 30 characters
            rec["key_gen"] = gen
        rec["id"] = key
        out.append(NativeRecord(key, node, counter, kind, t, rec, units.get(kind, _NO_UNITS)))
    return out


def idempotency_key(node: str, key_gen: int, counter: int) -> str:
    """A record's idempotency key from its node (8 hex digits), key generation and counter
    (Record.idempotency_key; SPEC §4): generation 0 keeps the ids of before generations."""
    return f"{node}-{counter}" if key_gen == 0 else f"{node}-g{key_gen}-{counter}"


_NO_UNITS: dict[str, str] = {}


def _check_record(i: int, r: Any, units: dict[str, dict[str, str]]) -> NativeRecord:
    where = f"records[{i}]"
    if not isinstance(r, dict):
        raise FormatError(f"{where}: must be an object")
    node, counter, key, kind = r.get("node"), r.get("counter"), r.get("id"), r.get("type")
    if not isinstance(node, str) or not _NODE.match(node):
        raise FormatError(f"{where}.node: must be 8 lower-case hex digits")
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter <= MAX_COUNTER:
        raise FormatError(f"{where}.counter: must be an integer 0..{MAX_COUNTER}")
    gen = r.get("key_gen", 0)
    if isinstance(gen, bool) or not isinstance(gen, int) or not 0 <= gen <= MAX_KEY_GEN:
        raise FormatError(f"{where}.key_gen: must be an integer 0..{MAX_KEY_GEN}")
    if not isinstance(key, str) or len(key) > KEY_MAX:
        raise FormatError(f"{where}.id: must be a string of at most {KEY_MAX} characters")
    want = idempotency_key(node, gen, counter)
    if key != want:
        what = "node-counter" if gen == 0 else "node-g<key_gen>-counter"
        raise FormatError(f"{where}.id: {key[:KEY_MAX]!r} is not {what} ({want})")
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
    return NativeRecord(key, node, counter, kind, t, r, units.get(kind, _NO_UNITS))
