# Multicast groups on a lamp under real MicroPython (SPEC §5 "Groups"; firmware/group.py,
# firmware/runtime.py `_group`): a join_group COMMAND gives the lamp its group key wrapped under
# its own key; a GROUP_COMMAND under that key is applied once and answered by a CMD_ACK; a
# replayed, forged or other group's frame, or one under a key the lamp was not given, changes
# nothing -- also after a reboot. Node code from .mpy, as on a board.
import asyncio

import mpnode
from protocol import groupcast as gc
from protocol import messages as m
from protocol.keys import NodeKeys

MPY = True
S = 1000
MASTER = bytes(range(16, 32))
ADDR = 7
MCAST_ID = gc.MCAST_ID_BASE + 1


def _key(addr=ADDR, gen=1):
    return gc.group_key(MASTER, addr, gen)


def _frame(counter, level=100, dur=7200, cid=MCAST_ID, addr=ADDR, key=None):
    body = m.encode(m.COMMAND, {0: cid, 1: m.OP_SET_LEVEL, 2: [level, dur]})
    return gc.seal(key or _key(addr), addr, counter, body)


async def _join(clock, node, gw, cid, keys=None, addr=ADDR, gen=1, nxt=0):
    args = gc.join_args(keys or node.keys, addr, gen, nxt, _key(addr, gen))
    gw.pending.append((m.COMMAND, {0: cid, 1: m.OP_JOIN_GROUP, 2: args}))
    for _ in range(3600):
        for h in gw.of_type(m.CMD_ACK):
            if h[3][0] == cid:
                return h[3]
        await clock.run_for(S)
    raise AssertionError("join_group was never answered")


async def _send(clock, gw, raw):
    rx = gw.radio.peer  # the lamp's radio end
    asyncio.create_task(gw.radio.send(raw))
    await clock.run_for(2 * S)
    return rx


async def _started(storage=None):
    clock = mpnode.new_clock()
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    return clock, hal, node, gw, tasks


async def test_a_member_applies_a_group_command_once_and_answers():
    storage = {}
    clock, hal, node, gw, tasks = await _started(storage)
    ack = await _join(clock, node, gw, 1)
    assert ack[1] == m.RES_OK and ack.get(2) == 1, ack  # value: the key generation taken
    assert "group" in storage and len(storage["group"]) == 28
    app = node.app
    await _send(clock, gw, _frame(0))
    assert app._ovr == 100 and app._ovr_until > 0, (app._ovr, app._ovr_until)
    until = app._ovr_until
    rx = node.rx
    for _ in range(120):  # the CMD_ACK goes within ACK_SPREAD_S
        if any(h[3][0] == MCAST_ID for h in gw.of_type(m.CMD_ACK)):
            break
        await clock.run_for(S)
    acks = [h[3] for h in gw.of_type(m.CMD_ACK) if h[3][0] == MCAST_ID]
    assert acks == [{0: MCAST_ID, 1: m.RES_OK, 2: 100}], acks
    # the same frame again, and after a reboot: refused, nothing changes
    rejected = node.rx_rejected
    await _send(clock, gw, _frame(0))
    assert app._ovr_until == until and node.rx == rx and node.rx_rejected == rejected + 1
    mpnode.stop(hal, tasks)
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60 * S)
    assert node.app.group is not None and node.app.group.slots[0][2] == 1  # next counter, from flash
    await _send(clock, gw, _frame(0, level=10))
    assert node.app._ovr_until < 0, "a replay after a reboot was applied"
    await _send(clock, gw, _frame(1, level=40, cid=MCAST_ID + 1))
    assert node.app._ovr == 40  # the next one is taken
    mpnode.stop(hal, tasks)


async def test_forged_other_group_and_wrong_key_change_nothing():
    clock, hal, node, gw, tasks = await _started()
    await _join(clock, node, gw, 1, nxt=5)
    app = node.app
    raw = bytearray(_frame(5))
    raw[-1] ^= 1  # a forged MIC
    other = node.rx_other
    rej = node.rx_rejected
    await _send(clock, gw, bytes(raw))
    await _send(clock, gw, _frame(4))  # below the counter the join gave: sent before it joined
    await _send(clock, gw, _frame(9, key=_key(gen=2)))  # a key this lamp was not given
    await _send(clock, gw, _frame(9, addr=8))  # another group's frame, under its own key
    assert app._ovr_until < 0
    assert node.rx_rejected == rej + 3 and node.rx_other == other + 1, (node.rx_rejected - rej, node.rx_other - other)
    assert app.group.slots[0][2] == 5
    await _send(clock, gw, _frame(5))
    assert app._ovr == 100  # the genuine frame still works after all that
    mpnode.stop(hal, tasks)


async def test_a_key_wrapped_for_another_node_does_not_open_the_group():
    clock, hal, node, gw, tasks = await _started()
    stranger = NodeKeys(0x00A1B2C4, bytes(range(16)))
    ack = await _join(clock, node, gw, 1, keys=stranger)
    assert ack[1] == m.RES_OK  # the lamp cannot tell: the pad it removes is not the one applied
    await _send(clock, gw, _frame(0))
    assert node.app._ovr_until < 0
    mpnode.stop(hal, tasks)


async def test_leave_and_older_generation_refused():
    clock, hal, node, gw, tasks = await _started()
    await _join(clock, node, gw, 1, gen=3)
    ack = await _join(clock, node, gw, 2, gen=2)
    assert ack[1] == m.RES_REFUSED and ack[2] == 3, ack
    gw.pending.append((m.COMMAND, {0: 3, 1: m.OP_JOIN_GROUP, 2: [ADDR]}))
    for _ in range(3600):
        if not node.app.group.slots:
            break
        await clock.run_for(S)
    assert node.app.group.slots == []
    await _send(clock, gw, _frame(0, key=_key(gen=3)))
    assert node.app._ovr_until < 0
    mpnode.stop(hal, tasks)
