# Firmware updates over BLE, the node's side (firmware/bleupd.py through firmware/ble.py)
# inside real MicroPython, modules from .mpy as on a board, over the aioble stand-in: a
# release image written in tagged chunks in a session, a dropped link and a reboot resumed
# from the node's offset, the node's updater installing it (SPEC §11 "Updates", §13), and
# every refusal leaving the node as it was. Images: release_vectors.py.
import asyncio
import hashlib
import os

import aioble_fake
import mpnode
import release_vectors as V
from protocol import ble as bp
from protocol import frame as fr
from protocol import serial as framing
from protocol.keys import NodeKeys

MPY = True
SETTINGS = {"enabled": True, "configure": True, "adv_interval_ms": 500}
_n = [0]


def fresh_root():
    """A board filesystem: the factory release 0.1.0 and the node's config with the release key."""
    _n[0] += 1
    root = "/u%d/" % _n[0]
    os.mkdir(root[:-1])
    os.mkdir(root + "relapp")
    for p, b in V.FACTORY.items():
        with open(root + p, "wb") as f:
            f.write(b)
    with open(root + "config.json", "w") as f:
        f.write('{"kind": "lighting", "release_key": "%s"}' % V.PUB.hex())
    return root


def snapshot(d):
    out = {}
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            out.update(snapshot(p))
        else:
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).digest()
    return out


def keys(root_hex=mpnode.ROOT_HEX):
    return NodeKeys(mpnode.NODE_ID, bytes.fromhex(root_hex))


class Board:
    """One lighting node with BLE on, its filesystem under `root`; `tool` talks to it."""

    def __init__(self, clock, root):
        import firmware.ble
        from firmware.ble import Commissioning

        if not hasattr(firmware.ble.os, "urandom"):  # this port has none; a board's is its hardware RNG

            class Os:
                drawn = 0

                @classmethod
                def urandom(cls, n):
                    cls.drawn += 1
                    return bytes((cls.drawn * 37 + i * 101) & 0xFF for i in range(n))

            firmware.ble.os = Os
        self.clock = clock
        self.hal, self.node, _gw, self.tasks, _w = mpnode.start_node(clock, "lighting")
        self.resets = []
        self.hal.reset = lambda: self.resets.append(clock.ms())  # a board's never returns
        self.stack = aioble_fake.Stack()
        self.c = Commissioning(self.node, self.stack.aioble(), aioble_fake.UUID, SETTINGS)
        self.c.fs = root  # a board's is "/"
        self.tasks.append(asyncio.create_task(self.c.run()))
        self.control = None

    async def connect(self):
        await self.clock.run_for(2000)
        self.stack.connect()
        await self.clock.run_for(100)
        self.control = self.stack.handle_of(aioble_fake.UUID(bp.CONTROL_UUID))

    async def exchange(self, raw):
        got = []
        dec = framing.Decoder(fr.MAX_LEN)
        self.stack.on_notify = lambda handle, data: got.extend(dec.feed(data))
        self.stack.subscribe(self.control)
        data = framing.encode(raw)
        for i in range(0, len(data), 64):
            self.stack.write(self.control, data[i : i + 64])
            await self.clock.run_for(5)
        await self.clock.run_for(50)
        assert len(got) == 1, (got, self.node.last_error)
        return got[0]

    async def session(self):
        challenge = bytes(range(40, 48))
        a = await self.exchange(bytes((bp.SESSION,)) + challenge)
        assert a[0] == bp.SESSION, a
        return challenge + a[1:9]

    def stop(self):
        mpnode.stop(self.hal, self.tasks)


def msg(sess, op, off, data=b"", k=None):
    m = bytes((bp.UPDATE, op)) + off.to_bytes(4, "big") + data
    return m + bp.update_tag(k or keys(), m, sess)


async def ask(b, sess, op, off, data=b"", k=None):
    """(status, offset, text) of the node's answer, its tag checked."""
    a = await b.exchange(msg(sess, op, off, data, k))
    assert a[0] == bp.UPDATE, a
    assert a[-8:] == bp.tag(keys(), a[:-8], sess), a
    return a[1], int.from_bytes(a[2:6], "big"), a[6:-8].decode()


async def send(b, sess, image, start, stop=None, chunk=236):
    held = start
    stop = len(image) if stop is None else stop
    while held < stop:
        st, held2, text = await ask(b, sess, bp.U_CHUNK, held, image[held : held + chunk])
        assert st == bp.U_HELD and held2 == min(held + chunk, len(image)), (st, held2, text)
        held = held2
    return held


def begin_args(image):
    return len(image), hashlib.sha256(image).digest()


def _big(n):
    """n bytes of a hash chain: an image-sized byte string, made as it is sent."""
    out = bytearray()
    h = b"lumeau"
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


async def test_a_64_kb_image_goes_to_flash_as_it_arrives_and_the_heap_stays_flat():
    # first in this file: nothing has loaded firmware.bleupd yet
    import mptest
    import sys

    clock = mpnode.new_clock(lean=True)  # cancelled sleeps leave at once, as on a board
    root = fresh_root()
    b = Board(clock, root)
    await b.connect()
    sess = await b.session()
    image = _big(65536)
    digest = hashlib.sha256(image).digest()
    import micropython

    print("interned names before an update message:")
    micropython.qstr_info()
    await asyncio.sleep_ms(0)
    base = mptest.mem()
    st, held, _ = await ask(b, sess, bp.U_BEGIN, len(image), digest)
    assert (st, held) == (bp.U_HELD, 0) and "firmware.bleupd" in sys.modules
    await asyncio.sleep_ms(0)
    loaded = mptest.mem() - base
    print("... and with firmware/bleupd.py loaded:")
    micropython.qstr_info()
    peak = loaded
    # the control: as many chunks, at an offset the node does not hold (answered, not written)
    for i in range(0, len(image), 236):
        await ask(b, sess, bp.U_CHUNK, 1, image[i : i + 236])
        if i % (236 * 40) == 0:
            await asyncio.sleep_ms(0)
            peak = max(peak, mptest.mem() - base)
    control = peak
    held = 0
    while held < len(image):
        st, held2, _ = await ask(b, sess, bp.U_CHUNK, held, image[held : held + 236])
        assert st == bp.U_HELD and held2 > held
        held = held2
        if held % (236 * 40) == 0:
            await asyncio.sleep_ms(0)
            peak = max(peak, mptest.mem() - base)
    assert os.stat(root + "ble.lup")[6] == len(image)
    st, _, text = await ask(b, sess, bp.U_FINISH, len(image))
    assert st == bp.U_REFUSED and "LUP1" in text or "magic" in text or "release image" in text, text
    b.stack.disconnect()
    await clock.run_for(3000)
    assert "firmware.bleupd" not in sys.modules
    await asyncio.sleep_ms(0)
    after = mptest.mem() - base
    print(
        "bleupd: %d B on the heap once loaded (code, the module's objects), at most %d B during a 64 KB "
        "transfer, %d B after the link dropped; finish said: %s; control %d" % (loaded, peak, after, text, control)
    )
    # The harness keeps every exchange's garbage counted within a test (README.md, "Memory
    # measurements"), so the heap grows with the number of exchanges either way: the control
    # shows how much. A copy of the image in RAM would add its 64 KB on top.
    assert peak - control < len(image), (control, peak)
    assert 0 < loaded < 8192, loaded
    b.stop()


async def test_an_image_sent_over_ble_resumes_after_a_lost_link_and_installs():
    clock = mpnode.new_clock()
    root = fresh_root()
    b = Board(clock, root)
    await b.connect()
    image = V.FULL_011
    sess = await b.session()
    st, held, _ = await ask(b, sess, bp.U_BEGIN, *begin_args(image))
    assert (st, held) == (bp.U_HELD, 0)
    half = await send(b, sess, image, 0, len(image) // 2)
    b.stack.disconnect()  # walked out of reach
    await clock.run_for(3000)
    assert "firmware.bleupd" not in __import__("sys").modules  # its code left with the connection
    await b.connect()
    sess2 = await b.session()
    # the old session's messages are void in the new one
    a = await b.exchange(msg(sess, bp.U_CHUNK, half, image[half : half + 100]))
    assert a[1] == bp.U_REFUSED and b"not authenticated" in a, a
    st, held, _ = await ask(b, sess2, bp.U_BEGIN, *begin_args(image))
    assert (st, held) == (bp.U_HELD, half), (st, held, half)
    # a chunk at another offset than the node's is not written: the answer says where to go on
    st, held, _ = await ask(b, sess2, bp.U_CHUNK, half + 5, image[half + 5 : half + 50])
    assert (st, held) == (bp.U_HELD, half)
    await send(b, sess2, image, half)
    st, _, text = await ask(b, sess2, bp.U_FINISH, len(image))
    assert (st, text) == (bp.U_INSTALLED, "0.1.1"), (st, text)
    # a second update before the trial is over: refused at once, not after a whole transfer
    st, _, text = await ask(b, sess2, bp.U_BEGIN, *begin_args(V.DELTA_011))
    assert st == bp.U_REFUSED and "already on trial" in text, text
    with open(root + "ab.json") as f:
        ab = __import__("json").load(f)
    assert ab["t"] == "s0" and ab["v"]["s0"] == "0.1.1", ab
    assert "ble.lup" not in os.listdir(root[:-1]) and "ble.lid" not in os.listdir(root[:-1])
    await clock.run_for(3000)
    assert len(b.resets) == 1  # into the release on trial
    b.stop()


async def test_a_transfer_survives_a_reboot_of_the_node():
    clock = mpnode.new_clock()
    root = fresh_root()
    b = Board(clock, root)
    await b.connect()
    image = V.DELTA_011
    sess = await b.session()
    await ask(b, sess, bp.U_BEGIN, *begin_args(image))
    held = await send(b, sess, image, 0, 300)
    b.stop()  # power cut
    b = Board(clock, root)
    await b.connect()
    sess = await b.session()
    st, got, _ = await ask(b, sess, bp.U_BEGIN, *begin_args(image))
    assert (st, got) == (bp.U_HELD, held)
    # another image drops what the node held of the first
    st, got, _ = await ask(b, sess, bp.U_BEGIN, *begin_args(V.FULL_011))
    assert (st, got) == (bp.U_HELD, 0)
    b.stop()


async def test_bad_releases_are_refused_with_the_node_text_and_nothing_changes():
    cases = (
        ("OTHER_KEY", "bad signature"),
        ("WRONG_TARGET", "esp32"),
        ("WRONG_KIND", "lighting"),
        ("DOWNGRADE", "downgrade"),
        ("LYING_HASH", "does not match its hash"),
    )
    for name, words in cases:
        clock = mpnode.new_clock()
        root = fresh_root()
        before = snapshot(root[:-1])
        b = Board(clock, root)
        await b.connect()
        image = getattr(V, name)
        sess = await b.session()
        await ask(b, sess, bp.U_BEGIN, *begin_args(image))
        await send(b, sess, image, 0)
        st, _, text = await ask(b, sess, bp.U_FINISH, len(image))
        assert st == bp.U_REFUSED and words in text, (name, st, text)
        assert snapshot(root[:-1]) == before, name
        await clock.run_for(3000)
        assert b.resets == []
        b.stop()
        print("%s: %s" % (name, text))


async def test_corrupted_chunks_and_unauthenticated_writes_are_refused():
    clock = mpnode.new_clock()
    root = fresh_root()
    before = snapshot(root[:-1])
    b = Board(clock, root)
    await b.connect()
    image = V.FULL_011
    # before any session
    a = await b.exchange(msg(bytes(16), bp.U_BEGIN, *begin_args(image)))
    assert a[1] == bp.U_REFUSED and b"open a session" in a, a
    assert a[-8:] == bp.tag(keys(), a[:-8], bytes(16))
    sess = await b.session()
    # another key
    other = keys("ff" * 16)
    a = await b.exchange(msg(sess, bp.U_BEGIN, *begin_args(image), k=other))
    assert a[1] == bp.U_REFUSED and b"not authenticated" in a, a
    assert "ble.lid" not in os.listdir(root[:-1])
    st, held, _ = await ask(b, sess, bp.U_BEGIN, *begin_args(image))
    held = await send(b, sess, image, 0, 400)
    # a chunk corrupted on the way: its tag fails, nothing is written
    m = bytearray(msg(sess, bp.U_CHUNK, held, image[held : held + 200]))
    m[20] ^= 0x01
    a = await b.exchange(bytes(m))
    assert a[1] == bp.U_REFUSED and b"not authenticated" in a, a
    # truncated, empty, unknown messages: answered, never a crash
    for raw in (bytes((bp.UPDATE,)), bytes((bp.UPDATE, 9)) + bytes(20), bytes((bp.UPDATE, 2, 0, 0))):
        a = await b.exchange(raw)
        assert a[0] == bp.UPDATE and a[1] == bp.U_REFUSED, a
    st, got, _ = await ask(b, sess, bp.U_CHUNK, 0, b"")
    assert (st, got) == (bp.U_HELD, held)
    # finishing early is refused, the transfer kept
    st, got, text = await ask(b, sess, bp.U_FINISH, len(image))
    assert st == bp.U_REFUSED and "incomplete" in text and got == held, text
    # an image whose bytes are not what BEGIN announced (a tool's corrupted file): refused
    bad = bytearray(image)
    bad[held + 3] ^= 0xFF
    await send(b, sess, bytes(bad), held)
    st, _, text = await ask(b, sess, bp.U_FINISH, len(image))
    assert st == bp.U_REFUSED and "hash it began with" in text, text
    assert snapshot(root[:-1]) == before
    st, got, _ = await ask(b, sess, bp.U_CHUNK, 0, image[:10])
    assert st == bp.U_REFUSED  # nothing under way any more
    await clock.run_for(3000)
    assert b.resets == []
    b.stop()


async def test_a_node_without_a_release_key_refuses_at_begin():
    clock = mpnode.new_clock()
    root = fresh_root()
    with open(root + "config.json", "w") as f:
        f.write('{"kind": "lighting"}')
    b = Board(clock, root)
    await b.connect()
    sess = await b.session()
    st, _, text = await ask(b, sess, bp.U_BEGIN, *begin_args(V.FULL_011))
    assert st == bp.U_REFUSED and "updates are disabled" in text, text
    b.stop()


async def test_a_guesser_is_dropped_after_eight_refused_update_messages():
    clock = mpnode.new_clock()
    root = fresh_root()
    b = Board(clock, root)
    await b.connect()
    sess = await b.session()
    other = keys("ee" * 16)
    for _ in range(8):
        a = await b.exchange(msg(sess, bp.U_BEGIN, *begin_args(V.FULL_011), k=other))
        assert a[1] == bp.U_REFUSED, a
    await clock.run_for(2000)
    assert b.stack.connection is None  # dropped: advertising again
    assert "ble.lid" not in os.listdir(root[:-1])
    b.stop()
