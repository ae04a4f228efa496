"""gateway/bodies.py against the reference it stands in for (protocol.messages, protocol.expand)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import bodies
from protocol import cbor, expand
from protocol import messages as m

UPLINKS = [m.HELLO, m.LIGHT, m.IRRIGATION, m.EVENT, m.STATUS, m.CMD_ACK]
ALL_TYPES = sorted(m.SPECS)


def _field(kind: int, lo: int, hi: int, maxlen: int) -> st.SearchStrategy:
    """Values of one field: in range, at its edges, just past them, or of another type."""
    if kind in (m.U, m.I):
        good = st.integers(lo, hi) | st.sampled_from([lo, hi])
        bad = st.sampled_from([lo - 1, hi + 1, True, False, 1.0, None, b"\x01", "1"])
    elif kind == m.V:
        byte = st.integers(lo, hi) | st.just(m.NO_VALUE)
        good = st.lists(byte, max_size=maxlen).map(bytes)
        bad = st.binary(max_size=maxlen + 2) | st.lists(st.integers(0, 255), max_size=3)
    elif kind == m.B:
        good = st.binary(min_size=lo, max_size=hi)
        bad = st.binary(max_size=hi + 2) | st.text(max_size=3)
    elif kind == m.T:
        good = st.text(min_size=lo, max_size=hi)
        bad = st.text(max_size=hi + 2) | st.binary(max_size=3)
    elif kind == m.A:
        good = st.lists(st.integers(lo, hi), max_size=maxlen)
        bad = st.lists(st.integers(), max_size=maxlen + 2) | st.integers()
    else:  # M
        good = st.dictionaries(st.integers(0, 23), st.integers(lo, hi), max_size=maxlen)
        bad = st.dictionaries(st.integers(-1, 30), st.integers(), max_size=3)
    return st.one_of(good, good, good, bad)


@st.composite
def bodies_of(draw, mtype: int) -> dict:
    """Bodies mostly valid: each spec key present or not, sometimes an unknown key or a bad value."""
    body = {}
    for key, kind, lo, hi, req, maxlen in m.SPECS[mtype]:
        if draw(st.integers(0, 9)) < (9 if req else 6):
            body[key] = draw(_field(kind, lo, hi, maxlen))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.integers(0, 40))] = draw(st.integers(0, 300) | st.binary(max_size=3))
    return body


typed_bodies = st.sampled_from(ALL_TYPES).flatmap(lambda t: st.tuples(st.just(t), bodies_of(t)))


def _validate(mtype, body):
    try:
        return ("ok", m.validate(mtype, body))
    except m.MessageError:
        return ("error", None)


@settings(max_examples=600, deadline=None)
@given(typed_bodies)
def test_check_answers_only_what_validate_answers(tb):
    mtype, body = tb
    got = bodies.check(mtype, body)
    ref = _validate(mtype, body)
    if got is not None:  # when sure, it is right: the same dict validate would build
        assert ref == ("ok", got)
        assert got is body


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(UPLINKS).flatmap(lambda t: st.tuples(st.just(t), bodies_of(t))))
def test_check_is_sure_for_every_valid_body_of_known_keys(tb):
    # the point of the module: a valid uplink body with only known keys never takes the slow path
    mtype, body = tb
    ok, ref = _validate(mtype, body)
    if ok == "ok" and len(ref) == len(body):
        assert bodies.check(mtype, body) is body


@settings(max_examples=500, deadline=None)
@given(typed_bodies)
def test_decode_agrees_with_messages_decode(tb):
    mtype, body = tb
    try:
        data = cbor.dumps(body)
    except cbor.CBOREncodeError:
        return
    try:
        ref = ("ok", m.decode(mtype, data))
    except m.MessageError:
        ref = ("error", None)
    try:
        got, raw = bodies.decode(mtype, data)
        assert raw is None or raw == cbor2.dumps(got)  # the bytes handed on are the body's own encoding
        got = ("ok", got)
    except m.MessageError:
        got = ("error", None)
    assert got == ref


def test_decode_keeps_the_bytes_only_when_they_are_the_bodys_encoding():
    plain = cbor.dumps({0: 40, 1: 452})
    assert bodies.decode(m.LIGHT, plain) == ({0: 40, 1: 452}, plain)
    with_unknown = cbor.dumps({0: 40, 9: 1})  # a newer node's extra key: dropped, so not the same bytes
    assert bodies.decode(m.LIGHT, with_unknown) == ({0: 40}, None)
    non_shortest = bytes.fromhex("a1001900" + "28")  # 40 as a 2-byte integer: accepted, re-encoded
    assert bodies.decode(m.LIGHT, non_shortest) == ({0: 40}, None)
    with pytest.raises(m.MessageError):
        bodies.decode(m.LIGHT, cbor.dumps({0: 101}))


@settings(max_examples=600, deadline=None)
@given(typed_bodies)
def test_values_are_expand_without_units(tb):
    mtype, body = tb
    try:
        checked = m.validate(mtype, body)
    except m.MessageError:
        return
    want = {name: f["value"] for name, f in expand.expand(mtype, checked).items()}
    got = bodies.values(mtype, checked)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()} == want
    for name, v in got.items():  # same types too: 45 is not 45.0 in JSON
        assert type(v if not isinstance(v, tuple) else list(v)) is type(want[name]), name


def test_values_examples():
    assert bodies.values(m.LIGHT, {0: 40, 1: 452, 2: 7, 3: m.LS_ON | m.LS_BOOST | 0x8000}) == {
        "level": 40,
        "power": 45.2,
        "energy": 7,
        "state": ("on", "boost"),
    }
    assert bodies.values(m.LIGHT, {1: 450}) == {"power": 45}
    assert type(bodies.values(m.LIGHT, {1: 450})["power"]) is int
    assert bodies.values(m.IRRIGATION, {0: bytes([62, 71, 255, 0])})["soil_moisture"] == [31, 35.5, None, 0]
    assert bodies.values(m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM})["code"] == "leak"
    assert bodies.values(m.EVENT, {0: 999})["code"] == 999  # an unknown code stays a number
    assert bodies.values(m.HELLO, {0: "1.0", 1: 1, 3: b"\xde\xad\xbe\xef"})["config_hash"] == "deadbeef"


def test_units_are_expands_units():
    for mtype, fields in expand.FIELDS.items():
        units = bodies.UNITS[expand.TYPE_NAMES[mtype]]
        assert units == {name: unit for _k, name, unit, _d in fields if unit is not None}
    assert bodies.UNITS["light"]["power"] == "W" and "state" not in bodies.UNITS["light"]
