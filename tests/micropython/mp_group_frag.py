# A temporary update group's fragments on a lamp that is not in it, under real MicroPython (SPEC
# §13 "Over LoRa", gateway/fuota.py: a campaign's canaries get the image on a group of their own):
# a lamp of the street (a member of group 7) hears the GROUP_FRAG frames of group 9, whose key it
# was never given. firmware/runtime.py hands them to firmware/group.py `check`, which finds no
# such group: the frame is counted rx_other and dropped before any update code is loaded, no
# session file is written, the group's counter is not touched, and a frame of its own group after
# them is still taken. Then the lamp is given group 9 (as a canary is): the same session opens.
# Node code from .mpy, as on a board.
import os
import sys

import mpnode
from protocol import fragments as fz
from protocol import groupcast as gc
from protocol import messages as m

MPY = True
S = 1000
MASTER = bytes(range(16, 32))
STREET = 7
CANARIES = 9
SID = 3
F = 34
IMAGE = bytes(range(256)) * 4  # what the session carries does not matter here: it must not open


def _key(addr):
    return gc.group_key(MASTER, addr, 0 if addr == CANARIES else 1)


async def _join(clock, node, gw, cid, addr, gen):
    args = gc.join_args(node.keys, addr, gen, 0, _key(addr))
    gw.pending.append((m.COMMAND, {0: cid, 1: m.OP_JOIN_GROUP, 2: args}))
    for _ in range(3600):
        g = node.app.group
        if g is not None and any(s[0] == addr for s in g.slots):
            return
        await clock.run_for(S)
    raise AssertionError("join_group never taken")


def _files():
    return sorted(e for e in os.listdir("/") if e.startswith("frag"))


async def test_fragments_of_a_group_the_lamp_is_not_in_are_dropped_before_any_session():
    clock = mpnode.new_clock()
    storage = {}
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    await _join(clock, node, gw, 1, STREET, 1)
    assert [s[0] for s in node.app.group.slots] == [STREET]
    stored = storage["group"]
    enc = fz.Encoder(IMAGE, F)
    frames = [fz.setup_body(SID, bytes(4), len(IMAGE), F, enc.n, 2)]
    frames += [fz.data_body(SID, i, enc.fragment(i)) for i in range(enc.n + 2)]
    other, rej, rx = node.rx_other, node.rx_rejected, node.rx
    for c, body in enumerate(frames):
        node._downlink(fz.seal_group(_key(CANARIES), CANARIES, c, body), -80, 5)
    assert node.rx_other == other + len(frames), (node.rx_other - other, len(frames))
    assert node.rx_rejected == rej and node.rx == rx
    assert "firmware.fuota" not in sys.modules  # (protocol.nodefrag is this test's: protocol.fragments uses it)
    assert _files() == [], _files()
    assert storage["group"] == stored  # its group's record (and counter) untouched
    assert node.execute(fz.OP_FRAG_STATUS, [SID], 0) == (m.RES_REFUSED, fz.ST_NO_SESSION)
    # its own group's frames are still taken
    node._downlink(fz.seal_group(_key(STREET), STREET, 0, frames[0]), -80, 5)
    assert node.rx == rx + 1 and node.execute(fz.OP_FRAG_STATUS, [SID], 0) == (m.RES_OK, enc.n)
    mpnode.stop(hal, tasks)
    for f in _files():
        os.remove("/" + f)


async def test_a_canary_given_the_temporary_group_takes_its_fragments():
    clock = mpnode.new_clock()
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage={})
    await clock.run_for(60 * S)
    await _join(clock, node, gw, 1, STREET, 1)
    await _join(clock, node, gw, 2, CANARIES, 0)
    assert sorted(s[0] for s in node.app.group.slots) == [STREET, CANARIES]
    enc = fz.Encoder(IMAGE, F)
    rx = node.rx
    node._downlink(
        fz.seal_group(_key(CANARIES), CANARIES, 0, fz.setup_body(SID, bytes(4), len(IMAGE), F, enc.n, 2)), -80, 5
    )
    node._downlink(fz.seal_group(_key(CANARIES), CANARIES, 1, fz.data_body(SID, 0, enc.fragment(0))), -80, 5)
    assert node.rx == rx + 2
    assert node.execute(fz.OP_FRAG_STATUS, [SID], 0) == (m.RES_OK, enc.n - 1)
    # the leave (join_group [addr]): the group is gone from the lamp, its street stays
    gw.pending.append((m.COMMAND, {0: 3, 1: m.OP_JOIN_GROUP, 2: [CANARIES]}))
    for _ in range(3600):
        if [s[0] for s in node.app.group.slots] == [STREET]:
            break
        await clock.run_for(S)
    assert [s[0] for s in node.app.group.slots] == [STREET]
    mpnode.stop(hal, tasks)
    for f in _files():
        os.remove("/" + f)
