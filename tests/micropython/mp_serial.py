# COBS + CRC-16 serial framing inside real MicroPython: worked example, CRC
# check value, round trips over every chunk size, resynchronisation, memory.
import gc
from protocol import serial

MPY = True  # load protocol/ from mpy-cross output, as a board would


def test_crc_check_value():
    assert serial.crc16(b"123456789") == 0x29B1
    assert serial.crc16(b"") == 0xFFFF


def test_worked_example():
    payload = bytes([0x11, 0x22, 0x00, 0xD8])
    assert serial.crc16(payload) == 0x4B00
    wire = bytes([0x00, 0x03, 0x11, 0x22, 0x03, 0xD8, 0x4B, 0x01, 0x00])
    assert serial.encode(payload) == wire
    assert serial.Decoder().feed(wire) == [payload]


def test_round_trip_every_chunk_size():
    payloads = [b"", b"\x00", bytes(range(256)), b"\xff" * 253, b"\x01" * 300, b"lamp 17"]
    stream = b"".join(serial.encode(p) for p in payloads)
    for size in (1, 2, 3, 7, 64, 255, 256, len(stream)):
        d = serial.Decoder()
        got = []
        for i in range(0, len(stream), size):
            got.extend(d.feed(stream[i : i + size]))
        assert got == payloads, size
        assert d.frames == len(payloads) and d.dropped() == 0


def test_resync_after_garbage_and_reset():
    a = serial.encode(b"valve 3 open")
    b = serial.encode(b"valve 3 closed")
    d = serial.Decoder()
    got = d.feed(b"\x13\x37noise" + a[:6] + b + b"\xaa\xbb\x00" + a)
    assert got == [b"valve 3 closed", b"valve 3 open"]
    assert d.dropped() == 3
    bad = bytearray(a)
    bad[5] ^= 0x10
    assert d.feed(bytes(bad)) == ()
    assert d.dropped_crc >= 1


def test_overlong():
    d = serial.Decoder(max_frame=16)
    assert d.feed(serial.encode(b"x" * 17)) == ()
    assert d.dropped_overlong == 1
    assert d.feed(serial.encode(b"x" * 16)) == [b"x" * 16]


def test_encode_into_and_byte_feed_allocate_nothing():
    payload = bytes(range(1, 60))
    out = bytearray(serial.max_encoded_len(len(payload)))
    enc = serial.encode(payload)
    one = bytearray(1)  # a UART read into a reused buffer
    d = serial.Decoder()
    serial.encode_into(payload, out)  # warm up
    d.feed(one)
    if not hasattr(gc, "mem_alloc"):  # collected by CPython too when named on the command line
        return
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        n = serial.encode_into(payload, out)
        for i in range(len(enc) - 1):  # all but the final delimiter
            one[0] = enc[i]
            d.feed(one)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    assert bytes(out[:n]) == enc
    # measured 0 in MicroPython 1.27; a per-byte object would cost >= 16 B x 63
    assert used < 100, used
    one[0] = 0
    assert d.feed(one) == [payload]
