# A member lamp's continuous receive on a LoRa modem, under real MicroPython (SPEC §5
# "Groups", "Listening"; firmware/group.py Listener over firmware/radio_lora.py): tested above the
# driver, on air_modem.AirModem (shaped like micropython-lib's async `lora` modem). A member
# hears a GROUP_COMMAND on the group channel between its uplinks; its uplinks and their
# receive windows stay on the uplink channel and still carry unicast downlinks; the driver
# never serves two operations at once; a lamp in no group never listens, until it joins.
# Node code from .mpy, as on a board.
import asyncio

import mpnode
from air_modem import AirModem
from firmware.group import Groups
from firmware.lighting import Lighting
from firmware.radio_lora import LoRaRadio
from firmware.runtime import Node
from protocol import frame as fr
from protocol import groupcast as gc
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator.hal_sim import SimHAL

MPY = True
S = 1000
ADDR = 7
MCAST_ID = gc.MCAST_ID_BASE + 1
KEY = gc.group_key(bytes(range(16, 32)), ADDR, 1)
KEYS = NodeKeys(mpnode.NODE_ID, bytes.fromhex(mpnode.ROOT_HEX))
GROUP_CH = (gc.GROUP_FREQ_HZ // 1000, gc.GROUP_SF)
UP_CH = (868100, 9)


def _group_frame(counter, cid=MCAST_ID):
    body = m.encode(m.COMMAND, {0: cid, 1: m.OP_SET_LEVEL, 2: [100, 7200]})
    return gc.seal(KEY, ADDR, counter, body)


def _down(counter, body):
    return fr.seal(KEYS, m.COMMAND, counter, m.encode(m.COMMAND, body))


def _boot(member):
    clock = mpnode.new_clock()
    hal = SimHAL(clock, storage={})
    if member:
        res = Groups(hal, KEYS).join(gc.join_args(KEYS, ADDR, 1, 0, KEY))
        assert res[0] == m.RES_OK, res
    modem = AirModem(hal)
    node = Node(mpnode.node_config("lighting"), hal, LoRaRadio(modem), Lighting, hello_jitter_ms=0)
    return clock, hal, modem, node, asyncio.create_task(node.run())


def _acks(modem, ticks=False):
    """The command ids of the CMD_ACKs the node sent, in order (ticks: (ticks_ms, id))."""
    out = []
    w = fr.ReplayWindow()
    for t, _, raw in modem.sent:
        f, plain = fr.unseal(KEYS, raw, w)
        if f.mtype == m.CMD_ACK:
            cid = m.decode(m.CMD_ACK, plain)[0]
            out.append((t, cid) if ticks else cid)
    return out


async def _until(clock, cond, seconds):
    for _ in range(seconds):
        if cond():
            return
        await clock.run_for(S)
    raise AssertionError("not within %d s" % seconds)


def _listening(modem):
    return modem.op == "recv" and modem.channel() == GROUP_CH


async def test_a_member_hears_group_frames_between_uplinks_and_keeps_its_windows():
    clock, hal, modem, node, task = _boot(True)
    await clock.run_for(10)  # the app is built first, its groups loaded
    radio = node.radio
    assert type(radio) is not LoRaRadio and radio.modem is modem  # the member's Listener
    await _until(clock, lambda: _listening(modem), 30)
    assert len(modem.sent) == 1  # the HELLO, then its window, then the group channel
    c = modem.cfg
    assert c["invert_iq_rx"] is True and c["bw"] == "125" and c["coding_rate"] == 5  # as the gateway sends
    # a unicast COMMAND waits at the gateway for the next uplink's RX1
    modem.rx1.append(_down(1, {0: 5, 1: m.OP_SET_LEVEL, 2: [50, 60]}))
    t0 = hal.ticks_ms()
    assert modem.air(_group_frame(0), GROUP_CH)
    await clock.run_for(S)
    g = node.app.group
    assert g.slots[0][2] == 1 and radio.rx == 1 and node.rx == 1
    # the group command's CMD_ACK goes within 60 s; the unicast COMMAND in its RX1, then its CMD_ACK
    await _until(clock, lambda: _acks(modem) == [MCAST_ID, 5], 180)
    # each sent when due, not held back by the listening (a send stops it at once): the group
    # command's within ACK_SPREAD_S, the unicast's after the 1 % duty cycle's wait (99 x the
    # first ACK's time on air, some 18 s), never at the end of a 60 s listening recv()
    (ta, _), (tb, _) = _acks(modem, True)
    assert ta - t0 <= gc.ACK_SPREAD_S * S + 100 and modem.cut >= 1
    air = radio.airtime_ms(len(modem.sent[-2][2]))
    assert tb - ta <= 100 * air + S, (tb - ta, air)
    await _until(clock, lambda: _listening(modem), 5)
    assert modem.air(_group_frame(1, MCAST_ID + 1), GROUP_CH)
    await clock.run_for(S)
    assert g.slots[0][2] == 2 and radio.rx == 2
    await _until(clock, lambda: _acks(modem)[-1:] == [MCAST_ID + 1], 90)
    await _until(clock, lambda: _listening(modem), 5)  # after that uplink's window
    task.cancel()
    hal.power_off()
    assert modem.overlaps == 0
    assert [c for _, c, _ in modem.sent] == [UP_CH] * len(modem.sent)  # every uplink where it was
    windows = [r for r in modem.recvs if r[1] < 1000]
    assert len(windows) >= len(modem.sent) and {c for c, _ in windows} == {UP_CH}
    assert {c for c, t in modem.recvs if t >= 1000} == {GROUP_CH}
    assert node.tx == len(modem.sent) and node.rx == 3 and node.rx_rejected == 0


async def test_a_lamp_in_no_group_never_listens_until_it_joins():
    clock, hal, modem, node, task = _boot(False)
    await clock.run_for(60 * S)
    assert type(node.radio) is LoRaRadio
    window = node.radio.rx_window_ms()
    assert not modem.air(_group_frame(0), GROUP_CH)  # nobody listens
    assert modem.op is None and {r for r in modem.recvs} == {(UP_CH, window)}
    # join_group in the RX1 of the next uplink: from then on it listens
    args = gc.join_args(KEYS, ADDR, 1, 0, KEY)
    modem.rx1.append(_down(1, {0: 9, 1: m.OP_JOIN_GROUP, 2: args}))
    await _until(clock, lambda: 9 in _acks(modem) or _listening(modem), 1000)
    await _until(clock, lambda: _listening(modem), 70)
    assert type(node.radio) is not LoRaRadio
    assert modem.air(_group_frame(0), GROUP_CH)
    await clock.run_for(S)
    assert node.app.group.slots[0][2] == 1
    task.cancel()
    hal.power_off()
    assert modem.overlaps == 0


async def test_a_driver_error_on_send_leaves_the_member_listening():
    clock, hal, modem, node, task = _boot(True)
    await _until(clock, lambda: _listening(modem), 30)
    modem.fail_sends = 1
    assert modem.air(_group_frame(0), GROUP_CH)  # its CMD_ACK's send raises
    await _until(clock, lambda: node.tx_failed == 1, 70)
    await _until(clock, lambda: _listening(modem), 5)
    assert modem.air(_group_frame(1, MCAST_ID + 1), GROUP_CH)
    await clock.run_for(S)
    assert node.app.group.slots[0][2] == 2
    await _until(clock, lambda: MCAST_ID + 1 in _acks(modem), 130)  # and its uplinks go on
    task.cancel()
    hal.power_off()
    assert modem.overlaps == 0
