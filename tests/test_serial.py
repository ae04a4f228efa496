"""protocol.serial: COBS framing with CRC-16/CCITT-FALSE and the streaming decoder."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import serial

# ------------------------------------------------- independent references


def ref_crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE via CPython's C binascii.crc_hqx (poly 0x1021, not reflected)."""
    return binascii.crc_hqx(data, 0xFFFF)


def ref_cobs_encode(data: bytes) -> bytes:
    """COBS straight from the definition (Cheshire & Baker): append the phantom
    zero, cut after every zero or every 254 non-zero bytes, and write each piece
    as (length + 1) followed by its non-zero bytes.  A 254-byte piece gets code
    0xFF and implies no zero."""
    out = bytearray()
    block = bytearray()
    for b in data + b"\x00":
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out.append(0xFF)
                out += block
                block = bytearray()
    # A piece that is still open here had no terminating zero: only possible
    # when the phantom zero closed it, so nothing is left over.
    assert not block
    return bytes(out)


def ref_cobs_decode(enc: bytes) -> bytes:
    """Inverse of ref_cobs_encode: every block but a full (0xFF) one ends in a
    zero; the last such zero is the phantom and is removed."""
    out = bytearray()
    i = 0
    code = None
    while i < len(enc):
        code = enc[i]
        assert code != 0 and i + code <= len(enc), "invalid COBS"
        out += enc[i + 1 : i + code]
        i += code
        if code != 0xFF:
            out.append(0)
    if code is not None and code != 0xFF:
        del out[-1]
    return bytes(out)


def ref_frame(payload: bytes) -> bytes:
    return b"\x00" + ref_cobs_encode(payload + ref_crc(payload).to_bytes(2, "big")) + b"\x00"


# ------------------------------------------------- CRC


def test_crc_check_value():
    assert serial.crc16(b"123456789") == 0x29B1
    assert ref_crc(b"123456789") == 0x29B1


def test_crc_empty_is_init():
    assert serial.crc16(b"") == 0xFFFF


@given(st.binary(max_size=300), st.binary(max_size=50))
def test_crc_matches_reference_and_continues(a, b):
    assert serial.crc16(a) == ref_crc(a)
    assert serial.crc16(b, serial.crc16(a)) == serial.crc16(a + b)
    # residue: CRC over payload + its CRC (big-endian) is 0 because xorout is 0
    assert serial.crc16(a + ref_crc(a).to_bytes(2, "big")) == 0


# ------------------------------------------------- COBS reference vs. published examples


@pytest.mark.parametrize(
    "raw, enc",
    [
        # The examples in the Wikipedia COBS article (they follow the paper).
        ("00", "0101"),
        ("0000", "010101"),
        ("001100", "01021101"),
        ("11220033", "0311220233"),
        ("11223344", "0511223344"),
        ("11000000", "0211010101"),
        # 255 bytes 01..FF: a full 254 block, then FF with the phantom zero
        (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
        # 02..FF 00: full block, then an empty piece for the real zero, then the phantom
        (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
        # 03..FF 00 01
        (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
        # 01..FE (254 bytes): the paper's code ends with a 01 for the phantom zero;
        # Wikipedia shows the shorter form without it (ff 01..fe), which the
        # decoder accepts too (test_decoder_accepts_short_form_after_full_block).
        (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex() + "01"),
    ],
)
def test_reference_cobs_on_published_examples(raw, enc):
    raw, enc = bytes.fromhex(raw), bytes.fromhex(enc)
    assert ref_cobs_encode(raw) == enc
    assert ref_cobs_decode(enc) == raw


# ------------------------------------------------- worked example (used in SPEC.md)


def test_worked_example():
    """Payload 11 22 00 D8 (4 bytes, one of them zero).

    1. CRC-16/CCITT-FALSE(11 22 00 D8) = 0x4B00 (checked with binascii.crc_hqx),
       appended big-endian:            11 22 00 D8 4B 00
    2. COBS, with the phantom zero at the end: 11 22 00 D8 4B 00 [00]
       pieces ending at each zero: "11 22" | "D8 4B" | "" ->
       03 11 22 | 03 D8 4B | 01
    3. Delimiters:                      00 03 11 22 03 D8 4B 01 00
    """
    payload = bytes.fromhex("112200d8")
    assert ref_crc(payload) == 0x4B00
    assert serial.crc16(payload) == 0x4B00
    wire = bytes.fromhex("00 03 11 22 03 d8 4b 01 00")
    assert serial.encode(payload) == wire
    assert ref_frame(payload) == wire
    d = serial.Decoder()
    assert d.feed(wire) == [payload]


def test_second_worked_example():
    """11 22 00 33 -> CRC 0x0745 -> 11 22 00 33 07 45 -> 03 11 22 | 04 33 07 45."""
    payload = bytes.fromhex("11220033")
    assert ref_crc(payload) == 0x0745
    assert serial.encode(payload) == bytes.fromhex("00 03 11 22 04 33 07 45 00")


def test_empty_payload():
    # CRC of nothing is 0xFFFF: 00 | 03 FF FF | 00
    assert serial.encode(b"") == bytes.fromhex("0003ffff00")
    assert serial.Decoder().feed(bytes.fromhex("0003ffff00")) == [b""]


# ------------------------------------------------- encoder


@settings(max_examples=300)
@given(st.binary(max_size=1100))
def test_encode_matches_reference(payload):
    enc = serial.encode(payload)
    assert enc == ref_frame(payload)
    assert enc[0] == 0 and enc[-1] == 0 and 0 not in enc[1:-1]
    assert len(enc) <= serial.max_encoded_len(len(payload))


@pytest.mark.parametrize("n", [0, 1, 250, 251, 252, 253, 254, 255, 256, 505, 506, 507, 508, 509, 1000])
@pytest.mark.parametrize("fill", [0x00, 0x01, 0xFF])
def test_block_boundaries(n, fill):
    payload = bytes([fill]) * n
    enc = serial.encode(payload)
    assert enc == ref_frame(payload)
    d = serial.Decoder(max_frame=1000)
    assert d.feed(enc) == [payload]


def test_max_encoded_len_is_reached():
    # 252 non-zero bytes whose CRC has no zero byte: 254 non-zero bytes to stuff
    payload = bytes(range(1, 253))
    assert 0 not in ref_crc(payload).to_bytes(2, "big")
    assert len(serial.encode(payload)) == serial.max_encoded_len(252) == 258


def test_encode_into_preallocated():
    buf = bytearray(serial.max_encoded_len(100))
    payload = bytes(range(100))
    k = serial.encode_into(payload, buf)
    assert bytes(buf[:k]) == serial.encode(payload)
    with pytest.raises(ValueError, match="too small"):
        serial.encode_into(payload, bytearray(50))


# ------------------------------------------------- decoder


def chunked(data, cuts):
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    prev = 0
    for c in cuts + [len(data)]:
        yield data[prev:c]
        prev = c


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=600), max_size=8),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=30),
)
def test_round_trip_any_chunking(payloads, cuts):
    stream = b"".join(serial.encode(p) for p in payloads)
    d = serial.Decoder(max_frame=600)
    got = []
    for part in chunked(stream, cuts):
        got.extend(d.feed(part))
    assert got == payloads
    assert d.frames == len(payloads) and d.dropped() == 0


def test_byte_by_byte_allocates_no_result():
    d = serial.Decoder()
    enc = serial.encode(b"hello")
    results = [d.feed(enc[i : i + 1]) for i in range(len(enc))]
    assert all(r is results[0] for r in results[:-1]) and results[0] == ()
    assert results[-1] == [b"hello"]


def test_empty_frames_are_not_errors():
    d = serial.Decoder()
    assert d.feed(b"\x00" * 10) == ()
    assert d.feed(b"\x00\x00" + serial.encode(b"x") + b"\x00\x00") == [b"x"]
    assert d.dropped() == 0


@settings(max_examples=200)
@given(st.binary(max_size=300), st.binary(max_size=300), st.lists(st.binary(max_size=100), min_size=1, max_size=5))
def test_garbage_before_and_between(garbage1, garbage2, payloads):
    # Hypothesis likes tiny structured inputs such as 03 ff ff, which IS a
    # valid frame (the empty payload); garbage must not be a frame by accident.
    assume(not serial.Decoder().feed(b"\x00" + garbage1 + b"\x00"))
    assume(not serial.Decoder().feed(b"\x00" + garbage2 + b"\x00"))
    stream = garbage1
    for p in payloads:
        stream += serial.encode(p) + garbage2
    d = serial.Decoder()
    got = list(d.feed(stream))
    # Each garbage run ends at the next frame's leading delimiter and is
    # dropped (counted), never glued to a frame; the trailing run may still
    # be pending.  A random run passes CRC-16 with p = 2^-16 only.
    assert got == payloads
    assert d.frames == len(payloads)


def test_garbage_is_counted():
    d = serial.Decoder()
    frame = serial.encode(b"reading")
    got = d.feed(b"\x13\x37\x42" + frame + b"\x05\xaa" + frame)
    assert got == [b"reading", b"reading"]
    assert d.dropped_cobs == 2  # both garbage runs announce more bytes than they have
    assert ref_crc(b"") != 0xAABB  # aa bb is not the CRC of b""
    assert d.feed(b"\x03\xaa\xbb" + frame) == [b"reading"]  # well-formed COBS, bad CRC
    assert d.dropped_crc == 1 and d.dropped() == 3


def test_frame_cut_by_reset():
    """The sender resets mid-frame and starts again: the cut frame ends at the
    new frame's leading 00 and is dropped; the new frame is delivered."""
    first = serial.encode(b"lamp 17 dim 40%\x00\x01")
    second = serial.encode(b"valve 3 closed")
    for k in range(2, len(first) - 1):  # at least one byte of body, not the whole body
        d = serial.Decoder()
        assert d.feed(first[:k] + second) == [b"valve 3 closed"], k
        assert d.dropped() == 1, k
        assert d.frames == 1


def test_frame_missing_only_trailing_delimiter_is_still_whole():
    first = serial.encode(b"a")
    d = serial.Decoder()
    assert d.feed(first[:-1] + serial.encode(b"b")) == [b"a", b"b"]


def test_bit_flips_are_detected():
    payload = bytes(range(40)) + b"\x00" * 5 + b"Lumeau"
    enc = serial.encode(payload)
    other = serial.encode(b"next")
    for bit in range(8, (len(enc) - 1) * 8):  # every bit of the body
        bad = bytearray(enc)
        bad[bit // 8] ^= 1 << (bit % 8)
        d = serial.Decoder()
        got = d.feed(bytes(bad) + other)
        assert got == [b"next"], bit
        assert d.dropped() >= 1, bit
    # The counters say why: mostly CRC, some COBS (a code byte hit), and a
    # flip that makes a 0x00 splits the frame into two bad pieces.


def test_bit_flip_counts_by_kind():
    enc = serial.encode(b"\x11\x22\x00\xd8")  # 00 03 11 22 03 d8 4b 01 00
    d = serial.Decoder()
    bad = bytearray(enc)
    bad[2] ^= 0x01  # data byte 11 -> 10
    d.feed(bytes(bad))
    assert (d.dropped_crc, d.dropped_cobs) == (1, 0)
    bad = bytearray(enc)
    bad[1] = 0x09  # code byte now points past the end
    d.feed(bytes(bad))
    assert (d.dropped_crc, d.dropped_cobs) == (1, 1)


def test_overlong_dropped_and_next_frame_kept():
    d = serial.Decoder(max_frame=16)
    assert d.feed(serial.encode(bytes(range(1, 17)))) == [bytes(range(1, 17))]  # exactly max
    assert d.feed(serial.encode(bytes(range(1, 18)))) == ()  # one too many
    assert d.dropped_overlong == 1
    assert d.feed(serial.encode(b"\x00" * 17)) == ()  # via implied zeros
    assert d.dropped_overlong == 2
    assert d.feed(serial.encode(b"ok")) == [b"ok"]
    assert d.dropped() == 2


def test_overlong_stream_without_delimiter_stays_bounded():
    d = serial.Decoder(max_frame=64)
    size = len(d._buf)
    for _ in range(100):
        assert d.feed(b"\x01\x02\x03" * 100) == ()
    assert len(d._buf) == size
    assert d.dropped_overlong == 1
    assert d.feed(serial.encode(b"after")) == [b"after"]


def test_short_frames():
    d = serial.Decoder()
    assert d.feed(b"\x00\x01\x00") == ()  # decodes to nothing
    assert d.feed(b"\x00\x02\x41\x00") == ()  # one byte: no room for a CRC
    assert d.dropped_short == 2 and d.dropped() == 2


def test_decoder_accepts_short_form_after_full_block():
    # payload + CRC = 254 non-zero bytes: the encoder ends with ... ff-block 01,
    # a sender using the shorter form omits the 01; both decode the same.
    payload = bytes(range(1, 253))
    enc = serial.encode(payload)
    assert enc[-2:] == b"\x01\x00"
    d = serial.Decoder()
    assert d.feed(enc[:-2] + b"\x00") == [payload]


def test_reset_forgets_partial_frame():
    d = serial.Decoder()
    enc = serial.encode(b"abc")
    d.feed(enc[:4])
    d.reset()
    assert d.feed(enc[4:]) == ()  # the tail alone is not a frame
    assert d.feed(enc) == [b"abc"]


def test_default_max_frame():
    assert serial.DEFAULT_MAX_FRAME == 512
    d = serial.Decoder()
    assert d.feed(serial.encode(b"\xaa" * 512)) == [b"\xaa" * 512]
    assert d.feed(serial.encode(b"\xaa" * 513)) == ()
    assert d.dropped_overlong == 1


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("good"), st.binary(max_size=32)),
            st.tuples(st.just("long"), st.binary(min_size=33, max_size=80)),
            st.tuples(st.just("junk"), st.lists(st.integers(1, 255), min_size=1, max_size=40).map(bytes)),
            st.tuples(st.just("cut"), st.binary(max_size=32)),
        ),
        max_size=12,
    ),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=20),
)
def test_mixed_stream_any_chunking(items, cuts):
    """Good, overlong, garbage and cut frames in any order and chunking: exactly
    the good frames come out, in order, and every bad one is counted once."""
    stream, want, bad = b"", [], 0
    for kind, data in items:
        if kind == "junk":
            assume(not serial.Decoder().feed(b"\x00" + data + b"\x00"))
            stream += b"\x00" + data  # ended by the next leading delimiter (or left pending)
            bad += 1
        elif kind == "cut":
            enc = serial.encode(data)
            stream += enc[: max(2, len(enc) // 2)]
            bad += 1
        else:
            stream += serial.encode(data)
            if kind == "good":
                want.append(data)
            else:
                bad += 1
    stream += b"\x00"  # close whatever is still open
    d = serial.Decoder(max_frame=32)
    got = []
    for part in chunked(stream, cuts):
        got.extend(d.feed(part))
    assert got == want
    assert d.frames == len(want)
    assert d.dropped() == bad
