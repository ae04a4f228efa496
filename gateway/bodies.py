"""Message bodies on the gateway: decoded, checked and named fast.

protocol/messages.py (`validate`) and protocol/expand.py (`expand`) are the
reference: they run on nodes too, so they stay small and generic -- one loop
over a type's spec for every body. The gateway meets tens of thousands of
bodies a second, nearly all of one shape (every key known, every value in
range, deterministic CBOR), so this module compiles each message type's spec
once into a plan for that shape:

- `check(mtype, body)` answers with the checked body in the common case and
  None for anything else (an unknown key, a value out of range or of the
  wrong type, a missing required field); the caller then asks the reference,
  which gives the same answer or the exact error message.
- `values(mtype, body)` gives `{name: value}`: the values of
  `expand.expand(mtype, body)` without the `{"value", "unit"}` wrapper (flag
  lists as tuples: they are only serialised), for the native format, where
  units travel once per batch (`UNITS`).

tests/test_gateway_bodies.py checks both against the reference on bodies
hypothesis draws from the whole spec, valid or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2

from protocol import expand
from protocol import messages as m

# ----------------------------------------------------------------- checking


def _int_range(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and lo <= v <= hi


def _packed(lo: int, hi: int, maxlen: int) -> Callable[[Any], bool]:
    # messages.V: a byte string of values in [lo, hi] or NO_VALUE; translate() deletes the allowed
    # bytes in C, so anything left over is out of range
    allowed = bytes(x for x in range(256) if lo <= x <= hi or x == m.NO_VALUE)
    return lambda v: type(v) is bytes and len(v) <= maxlen and not v.translate(None, allowed)


def _sized(kind: type, lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is kind and lo <= len(v) <= hi


_Plan = tuple[dict[int, tuple[int, int]], dict[int, Callable[[Any], bool]], tuple[int, ...]]


def _compile_check(mtype: int) -> _Plan:
    """(lo, hi) per integer field, a predicate per other field, and the required keys.

    Arrays and maps (COMMAND, CONFIG: downlinks, never on this path) get no
    predicate, so they always take the reference path.
    """
    ranges: dict[int, tuple[int, int]] = {}
    preds: dict[int, Callable[[Any], bool]] = {}
    required = []
    for key, kind, lo, hi, req, maxlen in m.SPECS[mtype]:
        if kind == m.U or kind == m.I:
            ranges[key] = (lo, hi)
        elif kind == m.V:
            preds[key] = _packed(lo, hi, maxlen)
        elif kind == m.B:
            preds[key] = _sized(bytes, lo, hi)
        elif kind == m.T:
            preds[key] = _sized(str, lo, hi)
        if req:
            required.append(key)
    return ranges, preds, tuple(required)


_CHECKS = {mtype: _compile_check(mtype) for mtype in m.SPECS}


def check(mtype: int, body: Any) -> dict[int, Any] | None:
    """`body` itself when `messages.validate` would return an equal dict; None when unsure.

    Unsure means: not a dict, an unknown message type or key (validate drops
    unknown keys: a new dict), a value validate refuses, a required key
    missing, or a field kind without a fast plan.
    """
    c = _CHECKS.get(mtype)
    if c is None or type(body) is not dict:
        return None
    ranges, preds, required = c
    for k, v in body.items():
        r = ranges.get(k)
        if r is not None:
            # bool is an int subclass: type() is, not isinstance(), as validate does
            if type(v) is int and r[0] <= v <= r[1]:
                continue
            return None
        p = preds.get(k)
        if p is None or not p(v):
            return None
    for k in required:
        if k not in body:
            return None
    return body


# Field kinds of the compiled admission path's plans (gateway/_fastadmit.c).
FAST_INT, FAST_BYTES, FAST_TEXT, FAST_PACKED = 1, 2, 3, 4


def fast_plans() -> dict[int, tuple[tuple[int, ...], tuple[tuple[int, int, int, int, bytes], ...]]]:
    """The same plans as `check`, as compact tables for gateway/_fastadmit.c.

    {mtype: (required keys, ((key, kind, lo, hi, allowed bytes), ...))} for
    the uplink types. kind FAST_INT: value in [lo, hi]; FAST_BYTES and
    FAST_TEXT: length in [lo, hi] (text: code points); FAST_PACKED: at most
    hi bytes, each in `allowed`. Arrays and maps get no entry (as in
    `check`: the reference decides). Downlink types are left out: the
    gateway never admits them.
    """
    plans = {}
    for mtype, spec in m.SPECS.items():
        if mtype & 0x08:  # protocol.frame.DOWNLINK_BIT
            continue
        fields = []
        required = []
        for key, kind, lo, hi, req, maxlen in spec:
            if kind == m.U or kind == m.I:
                fields.append((key, FAST_INT, lo, hi, b""))
            elif kind == m.V:
                allowed = bytes(x for x in range(256) if lo <= x <= hi or x == m.NO_VALUE)
                fields.append((key, FAST_PACKED, 0, maxlen, allowed))
            elif kind == m.B:
                fields.append((key, FAST_BYTES, lo, hi, b""))
            elif kind == m.T:
                fields.append((key, FAST_TEXT, lo, hi, b""))
            if req:
                required.append(key)
        plans[mtype] = (tuple(required), tuple(fields))
    return plans


def decode(mtype: int, plain: bytes) -> tuple[dict[int, Any], bytes | None]:
    """Decode and check a body exactly as protocol.messages.decode would, faster.

    Returns the checked body and, when `plain` is exactly its deterministic
    encoding (what nodes send), `plain` itself (the store keeps those bytes
    instead of encoding the body again); else None. Raises MessageError as
    messages.decode does.

    cbor2 (C) decodes; if re-encoding the result gives back exactly the same
    bytes, the input holds no duplicate keys, no trailing bytes, no tags or
    other values cbor2 would interpret, and it is cbor2's own encoding of the
    value -- which the reference decoder reads as the same value
    (tests/test_cbor.py checks that differentially). Anything else
    (non-shortest forms, indefinite lengths, duplicate keys, trailing bytes,
    tags, floats, errors) is decided by the reference codec, protocol/cbor.py,
    so the gateway accepts exactly what the protocol accepts. (cbor2's
    canonical mode would sort keys again: 4x the cost for the same answer.)
    """
    try:
        obj = cbor2.loads(plain)
        if type(obj) is dict and cbor2.dumps(obj) == plain:
            body = check(mtype, obj)
            if body is not None:
                return body, plain
            return m.validate(mtype, obj), None
    except Exception:  # cbor2 refused it, built something exotic, or the body is invalid: the reference decides
        pass
    return m.decode(mtype, plain), None


# ----------------------------------------------------------------- naming

_NO = m.NO_VALUE


def _scaled(div: float) -> Callable[[int], int | float]:
    # expand.scale: the physical value, an int when it is a whole number
    return lambda v: expand.scale(v, div)


def _tenths(v: int) -> int | float:
    # expand.scale(v, 10) for an int, without the float round trip when it is whole
    return v // 10 if v % 10 == 0 else v / 10


def _zones(div: float) -> Callable[[bytes], list]:
    table = [None if x == _NO else expand.scale(x, div) for x in range(256)]
    return lambda v: [table[x] for x in v]


def _flags(names: tuple) -> Callable[[int], tuple]:
    used = 0
    for i, n in enumerate(names):
        if n is not None:
            used |= 1 << i
    # at most 2**len(names) distinct answers (bits without a name do not matter)
    cache: dict[int, tuple] = {}

    def named(v: int) -> tuple:
        k = v & used
        t = cache.get(k)
        if t is None:
            t = cache[k] = tuple(expand.flag_names(names, k))
        return t

    return named


def _enum(table: dict) -> Callable[[Any], Any]:
    get = table.get
    return lambda v: get(v, v)


def _hex(v: bytes) -> str:
    return v.hex()


def _compile_names(mtype: int) -> dict[int, tuple[str, Callable[[Any], Any] | None]]:
    spec = {key: kind for key, kind, _lo, _hi, _req, _max in m.SPECS[mtype]}
    plan: dict[int, tuple[str, Callable[[Any], Any] | None]] = {}
    for key, name, _unit, div in expand.FIELDS[mtype]:
        conv: Callable[[Any], Any] | None
        if (mtype, key) in expand.FLAGS:
            conv = _flags(expand.FLAGS[(mtype, key)])
        elif (mtype, key) in expand.ENUMS:
            conv = _enum(expand.ENUMS[(mtype, key)])
        elif spec[key] == m.B:
            conv = _hex
        elif spec[key] == m.V:
            conv = _zones(div)
        elif div == 1:
            conv = None
        elif div == 10:
            conv = _tenths
        else:
            conv = _scaled(div)
        plan[key] = (name, conv)
    return plan


# {mtype: {key: (field name, converter to the physical value or None)}}: how values() names a body
PLANS = {mtype: _compile_names(mtype) for mtype in expand.FIELDS}

# {type name: {field name: unit}}, fields without a unit left out: the native format's "units"
UNITS: dict[str, dict[str, str]] = {
    expand.TYPE_NAMES[mtype]: {name: unit for _k, name, unit, _d in fields if unit is not None}
    for mtype, fields in expand.FIELDS.items()
}


def values(mtype: int, body: dict[int, Any]) -> dict[str, Any]:
    """Named physical values of a checked body: expand's values without their units.

    Flag lists are tuples (shared between records: never mutate them).
    """
    plan = PLANS[mtype]
    out = {}
    for k, v in body.items():
        p = plan.get(k)
        if p is not None:
            conv = p[1]
            out[p[0]] = v if conv is None else conv(v)
    return out
