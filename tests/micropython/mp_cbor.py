# protocol/cbor.py inside real MicroPython: conformance vectors, round trips, and the places
# where MicroPython differs from CPython (UTF-8 checks, struct '>e' overflow, bool vs int, `in`).
import math
import struct
from binascii import a2b_base64, unhexlify

import mptest
from protocol import cbor

U64 = (1 << 64) - 1


def same(a, b):
    # Tells bool from int and -0.0 from 0.0; NaN equals NaN.
    if type(a) is not type(b):
        return False
    if type(a) is float:
        if a != a or b != b:
            return a != a and b != b
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if type(a) is list:
        if len(a) != len(b):
            return False
        for i in range(len(a)):
            if not same(a[i], b[i]):
                return False
        return True
    if type(a) is dict:
        if len(a) != len(b):
            return False
        for k in a:
            if k not in b or not same(a[k], b[k]):
                return False
        return True
    if type(a) is cbor.Tag:
        return a.tag == b.tag and same(a.value, b.value)
    return a == b


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised by %r" % (exc.__name__, args))


def appendix():
    return mptest.load_json("cbor/appendix_a.json")


def test_appendix_decodes_to_expected_values():
    checked = 0
    for item in appendix():
        raw = unhexlify(item["hex"])
        assert a2b_base64(item["cbor"].encode()) == raw, item["hex"]
        if raw == b"\xf8\x18":
            continue  # test_f818_is_not_well_formed
        value = cbor.loads(raw)
        if "decoded" in item:
            # MicroPython 1.27's json parses every float of the file exactly, so compare exactly.
            assert same(value, item["decoded"]), (item["hex"], value, item["decoded"])
            checked += 1
    assert checked > 50


def test_appendix_diagnostic_items():
    expect = {
        "f97c00": math.inf,
        "f9fc00": -math.inf,
        "fa7f800000": math.inf,
        "f7": cbor.UNDEFINED,
        "f0": cbor.Simple(16),
        "f8ff": cbor.Simple(255),
        "c11a514b67b0": cbor.Tag(1, 1363896240),
        "c1fb41d452d9ec200000": cbor.Tag(1, 1363896240.5),
        "d74401020304": cbor.Tag(23, b"\x01\x02\x03\x04"),
        "d82076687474703a2f2f7777772e6578616d706c652e636f6d": cbor.Tag(32, "http://www.example.com"),
        "5f42010243030405ff": b"\x01\x02\x03\x04\x05",
        "a201020304": {1: 2, 3: 4},
    }
    for hexstr, value in expect.items():
        assert same(cbor.loads(unhexlify(hexstr)), value), hexstr
    assert cbor.loads(b"\xf7") is cbor.UNDEFINED
    for hexstr in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        x = cbor.loads(unhexlify(hexstr))
        assert x != x


def test_f818_is_not_well_formed():
    # RFC 8949 section 3.3 (RFC 7049 allowed it); neither direction produces it.
    e = raises(cbor.CBORDecodeError, cbor.loads, b"\xf8\x18")
    assert "two-byte" in str(e)
    raises(cbor.CBOREncodeError, cbor.dumps, cbor.Simple(24))


def test_appendix_reencodes():
    for item in appendix():
        raw = unhexlify(item["hex"])
        if raw == b"\xf8\x18":
            continue
        value = cbor.loads(raw)
        if type(value) is int and not -U64 - 1 <= value <= U64:
            raises(cbor.CBOREncodeError, cbor.dumps, value)  # bignum beyond the encoder's range
            continue
        out = cbor.dumps(value)
        # test_cbor.py checks against cbor2 that `roundtrip` marks exactly the deterministic items.
        if item["roundtrip"]:
            assert out == raw, (item["hex"], out)
        else:
            assert out != raw and same(cbor.loads(out), value), item["hex"]


def test_fail_vectors_rejected():
    items = mptest.load_json("cbor/fail.json")
    assert len(items) > 500
    for item in items:
        e = raises(cbor.CBORDecodeError, cbor.loads, unhexlify(item["hex"]))
        assert "at offset" in str(e) and e.offset is not None, item["hex"]


def test_nested_roundtrip():
    x = {
        0: 40,
        1: [452, -1, -(1 << 64), U64, 0.0, -0.0, 1.5, 1.1, 100000.0, 1e300, math.inf],
        2: {"zone": "pelouse nord", "ok": True, "raw": b"\x00\xff", "none": None},
        3: [[], {}, [[[b""]]], cbor.Tag(1, 1700000000), cbor.Simple(7), cbor.UNDEFINED],
        -5: "水💧",
        "k": (1, 2),
    }
    data = cbor.dumps(x)
    assert cbor.dumps(cbor.loads(data)) == data
    y = cbor.loads(data)
    x["k"] = [1, 2]  # tuples come back as lists
    assert same(y, x)
    nan = cbor.loads(cbor.dumps([math.nan]))[0]
    assert nan != nan and cbor.dumps(math.nan) == b"\xf9\x7e\x00"


def test_map_keys_sorted_bytewise():
    assert cbor.dumps({24: 1, -1: 2, "b": 3, 1000: 4}) == unhexlify("a41818011903e8042002616203")


def test_bool_is_not_int_here():
    # On MicroPython isinstance(True, int) is False; the encoder must not care.
    assert cbor.dumps([True, False, 1, 0]) == b"\x84\xf5\xf4\x01\x00"
    assert same(cbor.loads(b"\x82\xf5\x01"), [True, 1])


def test_utf8_checked_by_hand():
    # MicroPython's str(b, "utf-8") accepts overlongs, surrogates and code points past U+10FFFF.
    for bad in (
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\xf4\x90\x80\x80",
        b"\xf0\x80\x80\xaf",
        b"\xc3\x28",
        b"\xe6\xb0",
        b"\xff",
    ):
        e = raises(cbor.CBORDecodeError, cbor.loads, bytes([0x60 | len(bad)]) + bad)
        assert "UTF-8" in str(e), bad
    for good in (b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xc3\xbc"):
        assert cbor.loads(bytes([0x60 | len(good)]) + good) == str(good, "utf-8")
    raises(cbor.CBORDecodeError, cbor.loads, b"\x7f\x61\xc3\x61\xbc\xff")  # chunk splits a character


def test_half_floats_shortest():
    # Every half value must come out as a half. MicroPython 1.27's struct.pack(">e") gets the
    # subnormals 0x0200..0x03ff wrong and packs out-of-range values as garbage without raising,
    # which is why the module converts from float32 bits by hand.
    for bits in range(0x10000):
        raw = struct.pack(">H", bits)
        x = struct.unpack(">e", raw)[0]
        if x == x:
            assert cbor.dumps(x) == b"\xf9" + raw, hex(bits)
    cases = (
        (1e6, "fa49742400"),
        (65520.0, "fa477ff000"),
        (2.0**-25, "fa33000000"),
        (1e300, "fb7e37e43c8800759c"),
        (-0.0, "f98000"),
    )
    for x, hexstr in cases:
        assert cbor.dumps(x) == unhexlify(hexstr), x


def test_float32_values_shortest():
    # A spread of float32 patterns (range() cannot go past 2**31 on this port: a while loop).
    bits = 0
    while bits < (1 << 32):
        raw = bits.to_bytes(4, "big")
        x = struct.unpack(">f", raw)[0]
        if x == x:
            out = cbor.dumps(x)
            assert (len(out) == 3 or out == b"\xfa" + raw) and cbor.loads(out) == x, hex(bits)
        bits += 7919 * 13


def test_maps_reject_duplicates_and_unhashable_keys():
    # `[1] in {}` is False here rather than a TypeError: the decoder must still reject.
    e = raises(cbor.CBORDecodeError, cbor.loads, unhexlify("a18000"))
    assert "unhashable" in str(e)
    e = raises(cbor.CBORDecodeError, cbor.loads, unhexlify("a1c18000"))
    assert "unhashable" in str(e)
    e = raises(cbor.CBORDecodeError, cbor.loads, unhexlify("a201000101"))
    assert "duplicate" in str(e) and e.offset == 3


def test_hostile_lengths_and_depth():
    for head in (0x5B, 0x7B, 0x9B, 0xBB):
        raises(cbor.CBORDecodeError, cbor.loads, bytes([head]) + b"\xff" * 8)
    e = raises(cbor.CBORDecodeError, cbor.loads, b"\x81" * 10000 + b"\x00")
    assert "nesting deeper than %d" % cbor.MAX_DEPTH in str(e)
    assert cbor.loads(b"\x81" * cbor.MAX_DEPTH + b"\x00") is not None
    deep = 0
    for _ in range(cbor.MAX_DEPTH + 1):
        deep = [deep]
    raises(cbor.CBOREncodeError, cbor.dumps, deep)


def test_errors_are_value_errors():
    assert issubclass(cbor.CBORDecodeError, ValueError) and issubclass(cbor.CBOREncodeError, ValueError)
    e = raises(ValueError, cbor.loads, b"\x00\x00")
    assert str(e) == "trailing bytes: 1 after the item at offset 1"
    e = raises(cbor.CBORDecodeError, cbor.loads, b"\x1a\x00\x00")
    assert str(e) == "truncated: need 4 bytes, 2 left at offset 1"
    raises(cbor.CBOREncodeError, cbor.dumps, {1, 2})
    raises(cbor.CBOREncodeError, cbor.dumps, 1 << 64)


def test_mutated_vectors_only_raise_decode_errors():
    # No hypothesis here: every truncation and a set of byte substitutions of each vector.
    # Guards against port-specific exceptions (e.g. range() overflowing past 2**31).
    subs = (
        0x00,
        0x18,
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
        0xDB,
        0xF8,
        0xF9,
        0xFB,
        0xFF,
        0x80,
        0xED,
        0xC0,
    )
    seeds = [unhexlify(item["hex"]) for item in appendix()]
    seeds.append(cbor.dumps({0: [1, -2, 1.5, "é", b"\x00"], "x": {1: cbor.Tag(7, [])}}))
    outcomes = 0
    for raw in seeds:
        cases = [raw[:i] for i in range(len(raw))]
        for i in range(len(raw)):
            for b in subs:
                cases.append(raw[:i] + bytes([b]) + raw[i + 1 :])
        for data in cases:
            try:
                cbor.loads(data)
            except cbor.CBORDecodeError as e:
                assert e.offset is not None and 0 <= e.offset <= len(data)
            outcomes += 1
    assert outcomes > 10000
