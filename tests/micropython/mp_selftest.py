# Runs under real MicroPython (WebAssembly port): checks the environment the node code sees.
import os
import struct
import sys

import mptest


def test_is_micropython():
    assert sys.implementation.name == "micropython", sys.implementation
    assert "/proj" in sys.path
    import protocol  # the project root (/proj) is importable

    assert protocol.__file__.startswith("/proj/protocol/"), protocol.__file__


def test_sha256_known_answer():
    import hashlib

    h = hashlib.sha256(b"ab")
    h.update(b"c")  # FIPS 180-2 "abc"
    assert h.digest() == bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_hmac_sha256_if_available():
    try:
        import hmac
    except ImportError:
        print("hmac: not available (protocol must build HMAC from hashlib)")
        return
    import hashlib

    # RFC 4231 test case 2
    mac = hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).digest()
    assert mac == bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    print("hmac: available")


def test_struct_half_float():
    assert struct.pack(">e", 1.5) == b"\x3e\x00"
    assert struct.unpack(">e", b"\x7b\xff")[0] == 65504.0
    assert struct.pack(">Q", 2**64 - 1) == b"\xff" * 8  # big ints for CBOR uint64


async def test_asyncio_sleep_and_gather():
    import asyncio
    import time

    async def tick(ms, value):
        await asyncio.sleep_ms(ms)
        return value

    t0 = time.ticks_ms()
    await asyncio.sleep(0.01)
    assert await asyncio.gather(tick(20, "a"), tick(10, "b")) == ["a", "b"]
    assert time.ticks_diff(time.ticks_ms(), t0) >= 25


def test_missing_file_errno_is_emscriptens():
    # Port quirk: FS errors carry emscripten's errno numbers (ENOENT = 44), not MicroPython's
    # errno constants (errno.ENOENT = 2). Node code should not compare OSError.errno.
    import errno

    try:
        open("/no/such/file")
    except OSError as e:
        print("open missing file: errno", e.errno, "errno.ENOENT =", errno.ENOENT)
        assert e.errno in (errno.ENOENT, 44)
    else:
        assert False, "open() of a missing file succeeded"


def test_load_json_vectors():
    try:
        os.stat(mptest.VECTORS + "/cbor/appendix_a.json")
    except OSError:
        print("vectors not mounted: checking that load_json fails clearly")
        try:
            mptest.load_json("cbor/appendix_a.json")
        except OSError as e:
            assert "tests/vectors" in str(e)
            return
        assert False, "load_json succeeded without vectors"
    items = mptest.load_json("cbor/appendix_a.json")
    assert isinstance(items, list) and len(items) > 50
    assert {"hex", "roundtrip"} <= set(items[0])


def test_mem_reports_heap_use():
    before = mptest.mem()
    keep = [bytearray(100) for _ in range(100)]
    after = mptest.mem()
    assert isinstance(before, int) and before > 0
    assert after - before >= 100 * 100, (before, after)
    del keep


def test_heap_grows_past_initial_size():
    # The harness starts with a 128 KB heap, like a small board; the port grows it on demand,
    # so memory bounds are asserted on mptest.mem(), never on MemoryError.
    before = mptest.mem()
    keep = [bytearray(1024) for _ in range(300)]
    assert mptest.mem() - before >= 300 * 1024
    del keep
