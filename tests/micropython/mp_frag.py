# An update over LoRa on a lamp, under real MicroPython (SPEC §13 "Over LoRa"; firmware/fuota.py,
# protocol/nodefrag.py, the hook in firmware/runtime.py): a group's fragments (GROUP_FRAG) and a
# node's own (FRAG) are reassembled in flash, lost ones recovered from coded fragments, the node
# reboots and the image goes through firmware/updater.py in a boot of its own (boot(), which
# main.py's release_state() calls at boot). A truncated or corrupted fragment,
# another session's, a replayed counter are refused and change nothing; a badly signed image is
# refused by the updater, nothing is armed and the status says so; a SETUP for the release the
# node runs opens nothing. Node code from .mpy, as on a board.
import json
import os
import sys

import mpnode
import release_vectors as V
from protocol import fragments as fz
from protocol import groupcast as gc
from protocol import messages as m

MPY = True
S = 1000
MASTER = bytes(range(16, 32))
ADDR = 7
SID = 5
F = 34  # SF12's fragment: 51-byte frames
BUNDLE = bytes.fromhex(json.loads(V.FULL_011[6 : 6 + int.from_bytes(V.FULL_011[4:6], "big")])["bundle"])


def _key():
    return gc.group_key(MASTER, ADDR, 1)


def _board():
    # the factory release 0.1.0 active, the city's release key in the node's config
    with open("/config.json", "w") as f:
        json.dump({"release_key": V.PUB.hex(), "kind": "lighting"}, f)
    with open("/ab.json", "w") as f:
        json.dump({"a": "", "t": "", "n": 0, "id": {"": V.BUNDLE_010}, "v": {"": "0.1.0"}, "rb": ""}, f)
    for p in V.FACTORY:
        d = "/" + p.split("/")[0]
        try:
            os.mkdir(d)
        except OSError:
            pass
        with open("/" + p, "wb") as f:
            f.write(V.FACTORY[p])


def _ab():
    with open("/ab.json") as f:
        return json.load(f)


async def _member(storage=None):
    _board()
    clock = mpnode.new_clock()
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    args = gc.join_args(node.keys, ADDR, 1, 0, _key())
    gw.pending.append((m.COMMAND, {0: 1, 1: m.OP_JOIN_GROUP, 2: args}))
    for _ in range(3600):
        if node.app.group is not None and node.app.group.slots:
            break
        await clock.run_for(S)
    assert node.app.group.slots, "join_group never taken"
    return clock, hal, node, gw, tasks


class Group:
    def __init__(self, node):
        self.node = node
        self.counter = 0

    def send(self, body, counter=None):
        c = self.counter if counter is None else counter
        raw = fz.seal_group(_key(), ADDR, c, body)
        if counter is None:
            self.counter += 1
        self.node._downlink(raw, -80, 5)
        return raw


def _status(node, sid=SID):
    return node.execute(fz.OP_FRAG_STATUS, [sid], 0)


def _boot():
    # what main.py does at boot (slots.prepare): install the complete image, in a boot of its own
    from firmware import updater

    assert "/frag.setup" in ["/" + e for e in os.listdir("/")]
    assert updater.boot()
    for name in ("firmware.updater", "firmware.slots", "protocol.noderelease", "protocol.ed25519"):
        sys.modules.pop(name, None)  # the board resets after it


async def test_a_member_recovers_lost_fragments_from_coded_ones_and_installs():
    clock, hal, node, gw, tasks = await _member()
    g = Group(node)
    enc = fz.Encoder(V.FULL_011, F)
    assert _status(node) == (m.RES_REFUSED, fz.ST_NO_SESSION)
    assert "firmware.fuota" not in sys.modules  # its code left the heap again
    g.send(fz.setup_body(SID, BUNDLE, len(V.FULL_011), F, enc.n, 4))
    assert "firmware.fuota" not in sys.modules and "protocol.nodefrag" not in sys.modules  # so after every frame
    with open("/frag.setup", "rb") as f:
        assert len(f.read()) == 14  # the session is on flash
    lost = {1, 4, 9, enc.n - 1}
    for i in range(enc.n):
        if i not in lost:
            g.send(fz.data_body(SID, i, enc.fragment(i)))
    assert _status(node) == (m.RES_OK, len(lost)), _status(node)
    k = enc.n
    while node._reboot_at is None:
        assert k < enc.n + len(lost) + 10, "coded fragments did not converge"
        g.send(fz.data_body(SID, k, enc.fragment(k)))
        k += 1
    assert "firmware.fuota" not in sys.modules and "firmware.updater" not in sys.modules
    assert _status(node) == (m.RES_OK, 0)  # complete, the install waits for the reboot
    with open("/frag.setup", "rb") as f:
        assert len(f.read()) == 15
    _boot()
    st = _ab()
    assert st["t"] == "s0" and st["v"]["s0"] == "0.1.1", st  # armed: the next boot tries it
    with open("/s0/relapp/ver.mpy", "rb") as f:
        assert f.read() == V.FULL_011[-35:]
    assert not [e for e in os.listdir("/") if e.startswith("frag.")]  # installed: the session's files gone
    assert "firmware.fuota" not in sys.modules and "protocol.nodefrag" not in sys.modules
    mpnode.stop(hal, tasks)
    os.remove("/ab.json")


async def test_bad_fragments_are_refused_and_change_nothing():
    clock, hal, node, gw, tasks = await _member()
    g = Group(node)
    enc = fz.Encoder(V.FULL_011, F)
    g.send(fz.setup_body(SID, BUNDLE, len(V.FULL_011), F, enc.n, 4))
    g.send(fz.data_body(SID, 0, enc.fragment(0)))
    before = _status(node)
    assert before == (m.RES_OK, enc.n - 1)
    rej = node.rx_rejected
    g.send(fz.data_body(SID, 1, enc.fragment(1)[:-3]))  # truncated (sealed as such)
    assert node.rx_rejected == rej + 1 and "34" in node.last_error, node.last_error
    g.send(fz.data_body(SID + 1, 1, enc.fragment(1)))  # another session's
    assert node.rx_rejected == rej + 2 and "session" in node.last_error, node.last_error
    raw = bytearray(fz.seal_group(_key(), ADDR, g.counter, fz.data_body(SID, 1, enc.fragment(1))))
    raw[12] ^= 0x40  # corrupted on the air: the MIC fails
    node._downlink(bytes(raw), -80, 5)
    assert node.rx_rejected == rej + 3
    node._downlink(bytes(raw[:-6]), -80, 5)  # cut short on the air
    assert node.rx_rejected == rej + 4
    g.send(fz.data_body(SID, 1, enc.fragment(1)), counter=0)  # a replayed counter
    assert node.rx_rejected == rej + 5
    assert _status(node) == before  # none of it was taken
    g.send(fz.data_body(SID, 1, enc.fragment(1)))  # the genuine one still is
    assert _status(node) == (m.RES_OK, enc.n - 2)
    assert _ab()["t"] == ""
    mpnode.stop(hal, tasks)


async def test_unicast_fragments_and_a_bad_signature_refused_by_the_updater():
    _board()
    clock = mpnode.new_clock()
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting")
    await clock.run_for(60 * S)
    bad = bytearray(V.FULL_011)
    mlen = int.from_bytes(bad[4:6], "big")
    bad[6 + mlen + 10] ^= 1  # the signature
    enc = fz.Encoder(bytes(bad), F)
    c = [node.store.window.top + 1]

    def send(body):
        node._downlink(fz.seal_unicast(node.keys, c[0], body), -80, 5)
        c[0] += 1

    send(fz.setup_body(SID, BUNDLE, len(bad), F, enc.n, 2))
    for i in range(enc.n):
        if i != 3:
            send(fz.data_body(SID, i, enc.fragment(i)))
    rej = node.rx_rejected
    node._downlink(fz.seal_unicast(node.keys, c[0] - 1, fz.data_body(SID, 3, enc.fragment(3))), -80, 5)
    assert node.rx_rejected == rej + 1 and _status(node) == (m.RES_OK, 1)  # a replayed counter
    k = enc.n
    while node._reboot_at is None:
        assert k < enc.n + 12
        send(fz.data_body(SID, k, enc.fragment(k)))
        k += 1
    mpnode.stop(hal, tasks)  # the reboot
    _boot()
    assert _ab()["t"] == ""  # nothing armed
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=hal.storage)
    await clock.run_for(60 * S)
    assert _status(node) == (m.RES_REFUSED, fz.ST_REFUSED)
    assert "signature" in node.last_error, node.last_error
    assert "firmware.fuota" not in sys.modules  # the refusal is on flash
    c[0] = node.store.window.top + 1
    send(fz.setup_body(SID + 1, BUNDLE, len(bad), F, enc.n, 2))  # a new session starts afresh
    assert _status(node, SID + 1) == (m.RES_OK, enc.n)
    mpnode.stop(hal, tasks)


async def test_a_reboot_mid_session_resumes_where_it_was():
    storage = {}
    clock, hal, node, gw, tasks = await _member(storage)
    g = Group(node)
    enc = fz.Encoder(V.FULL_011, F)
    sid = SID + 2
    g.send(fz.setup_body(sid, BUNDLE, len(V.FULL_011), F, enc.n, 4))
    half = enc.n // 2
    for i in range(half):
        if i != 2:
            g.send(fz.data_body(sid, i, enc.fragment(i)))
    g.send(fz.data_body(sid, enc.n, enc.fragment(enc.n)))  # a coded one, kept as a row
    before = _status(node, sid)
    assert before == (m.RES_OK, enc.n - (half - 1)), before
    # the reboot: a new node from the same flash; the session code and its heap are gone
    mpnode.stop(hal, tasks)
    sys.modules.pop("firmware.fuota", None)
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    g.node = node
    assert _status(node, sid) == before  # read back from /frag.setup, /frag.image, /frag.coded
    for i in range(half, enc.n):
        g.send(fz.data_body(sid, i, enc.fragment(i)))
    k = enc.n + 1
    while node._reboot_at is None:
        assert k < enc.n + 12, "the resumed session did not converge"
        g.send(fz.data_body(sid, k, enc.fragment(k)))
        k += 1
    _boot()
    assert _ab()["t"] == "s0"
    mpnode.stop(hal, tasks)
    os.remove("/ab.json")


async def test_a_setup_for_the_running_release_opens_no_session():
    clock, hal, node, gw, tasks = await _member()
    g = Group(node)
    enc = fz.Encoder(V.FULL_011, F)
    node.cfg["bundle"] = BUNDLE[:3]  # what main.py puts there (slots.prepare): HELLO's bundle id
    rx = node.rx
    g.send(fz.setup_body(SID, BUNDLE, len(V.FULL_011), F, enc.n, 4))  # a repeat after the install
    assert node.rx == rx + 1  # heard and checked (MIC, counter), then ignored
    assert "firmware.fuota" not in sys.modules and "protocol.nodefrag" not in sys.modules
    assert not [e for e in os.listdir("/") if e.startswith("frag.")]
    assert _status(node) == (m.RES_REFUSED, fz.ST_NO_SESSION)
    g.send(fz.data_body(SID, 0, enc.fragment(0)))  # its fragments are strays
    assert "not this node's session" in node.last_error, node.last_error
    other = bytes([BUNDLE[0] ^ 1]) + BUNDLE[1:]
    g.send(fz.setup_body(SID, other, len(V.FULL_011), F, enc.n, 4))  # another release: a session
    assert _status(node) == (m.RES_OK, enc.n)
    mpnode.stop(hal, tasks)


def test_an_install_cut_short_is_tried_once_more_then_refused():
    # /frag.setup's 15th byte: 2 an install began (a power cut: tried again), 3 the second one
    # began too (a crash each time, say): refused, so the board does not loop on it
    from firmware import updater

    enc = fz.Encoder(V.FULL_011, F)
    setup = fz.setup_body(SID, BUNDLE, len(V.FULL_011), F, enc.n, 4)
    for mark, armed in ((b"\x03", False), (b"\x02", True)):
        _board()
        with open("/frag.image", "wb") as f:
            f.write(V.FULL_011)
        with open("/frag.setup", "wb") as f:
            f.write(setup + mark)
        assert updater.boot()
        assert _ab()["t"] == ("s0" if armed else ""), _ab()
        if armed:
            assert not [e for e in os.listdir("/") if e.startswith("frag.")]
        else:
            with open("/frag.setup", "rb") as f:
                b = f.read()
            assert b[:14] == setup and b[14] == 1 and b"cut short" in b[15:], b
            assert "/frag.image" not in ["/" + e for e in os.listdir("/")]
    os.remove("/ab.json")


def test_an_image_complete_while_a_release_is_on_trial_is_refused_at_once():
    # the install would refuse it after the signature; refused before it, it never runs under the
    # trial's boot watchdog (boot.py, 8 s)
    from firmware import updater

    enc = fz.Encoder(V.FULL_011, F)
    setup = fz.setup_body(SID, BUNDLE, len(V.FULL_011), F, enc.n, 4)
    _board()
    st = _ab()
    st["t"] = "s1"
    with open("/ab.json", "w") as f:
        json.dump(st, f)
    with open("/frag.image", "wb") as f:
        f.write(V.FULL_011)
    with open("/frag.setup", "wb") as f:
        f.write(setup + b"\x00")
    assert updater.boot()
    with open("/frag.setup", "rb") as f:
        b = f.read()
    assert b[14] == 1 and b"on trial" in b[15:], b
    assert _ab()["t"] == "s1" and "/frag.image" not in ["/" + e for e in os.listdir("/")]
    os.remove("/ab.json")
    os.remove("/frag.setup")
