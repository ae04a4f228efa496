"""protocol/nodecbor.py returns or raises exactly what protocol/cbor.py does (issue 11).

The node's CBOR handles the subset its messages use and hands everything
else to cbor.py; these tests hold it to cbor.py's results and errors on the
RFC 8949 vectors, on random items of every kind, on random bytes, and on
random objects to encode. A node's own bodies never need cbor.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor, nodecbor

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(f: Any, x: Any) -> tuple:
    try:
        v = f(x)
    except Exception as e:  # the same class and message are what must agree
        return ("raises", type(e), str(e))
    return ("returns", type(v), repr(v))


def same(x: Any, encode: bool = False) -> None:
    if encode:
        assert outcome(nodecbor.dumps, x) == outcome(cbor.dumps, x), x
    else:
        assert outcome(nodecbor.loads, x) == outcome(cbor.loads, x), x.hex() if isinstance(x, bytes) else x


def vectors(name: str) -> list[dict]:
    return json.loads((ROOT / "tests" / "vectors" / "cbor" / name).read_text())


def test_rfc8949_vectors_and_failures_agree():
    for v in vectors("appendix_a.json"):
        same(bytes.fromhex(v["hex"]))
    for v in vectors("fail.json"):
        same(bytes.fromhex(v["hex"]))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(cbor.Simple, st.sampled_from([0, 7, 19, 32, 255])),
    st.just(cbor.UNDEFINED),
    st.builds(cbor.Tag, st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**20)),
)
keys = st.one_of(st.integers(min_value=-30, max_value=30), st.text(max_size=3), st.binary(max_size=3))
items = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(items)
def test_encoding_agrees(obj):
    same(obj, encode=True)


@SETTINGS
@given(items.filter(lambda o: outcome(cbor.dumps, o)[0] == "returns"), st.data())
def test_decoding_agrees_on_items_and_their_damage(obj, data):
    raw = cbor.dumps(obj)
    same(raw)
    same(bytearray(raw))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    same(raw[:cut])  # truncated
    same(raw + data.draw(st.binary(min_size=1, max_size=3)))  # trailing bytes
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    same(raw[:i] + bytes([data.draw(st.integers(min_value=0, max_value=255))]) + raw[i + 1 :])  # one byte changed


@SETTINGS
@given(st.binary(max_size=40))
def test_decoding_agrees_on_random_bytes(raw):
    same(raw)


def nested(depth: int) -> list:
    x: list = []
    for _ in range(depth - 1):
        x = [x]
    return x


def test_deep_nesting_and_odd_inputs_agree():
    for depth in (31, 32, 33):
        same(b"\x81" * depth + b"\x00")
        same(nested(depth), encode=True)
        same({0: nested(depth - 1)}, encode=True)
    for x in (
        None,
        "a0",
        5,
        memoryview(b"\xa1\x01\x02"),
        b"",
        b"\xa2\x01\x00\x01\x00",
        b"\x7f\xff",
        b"\x63\xe2\x82\xac",
    ):
        same(x)
    for x in ({True: 3}, {(1, 2): 3}, {1.0: 2}, 2**64, -(2**64) - 1, "\udc00", object()):
        same(x, encode=True)


def test_a_nodes_bodies_never_load_cbor_py():
    # the fallback is for what no Lumeau body holds: a node in service does not load cbor.py
    code = (
        "import sys\n"
        "from protocol import nodemsg\n"
        "b = nodemsg.encode(4, {0: 10, 1: 2, 2: -5, 3: 1700000000, 4: 1, 5: 2})\n"
        "assert nodemsg.decode(4, b)[2] == -5\n"
        "assert nodemsg.decode(8, nodemsg.encode(8, {0: 7, 1: 2, 2: [0, 240, 50] * 8, 3: 2**32 - 1}))[3] == 2**32 - 1\n"
        "assert nodemsg.decode(9, nodemsg.encode(9, {0: {0: 900, 3: 12}}))[0] == {0: 900, 3: 12}\n"
        "assert nodemsg.decode(1, nodemsg.encode(1, {0: '0.1.0', 1: 1, 3: b'abcd'}))[3] == b'abcd'\n"
        "assert 'protocol.cbor' not in sys.modules, 'cbor.py loaded'\n"
        "try:\n"
        "    nodemsg.decode(8, b'\\xa1\\x00\\xf9\\x3c\\x00')\n"
        "except nodemsg.MessageError as e:\n"
        "    print(e)\n"
        "assert 'protocol.cbor' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "message type 8 key 0: expected an integer, got float" in out
