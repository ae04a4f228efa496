# firmware/ble.py inside real MicroPython (modules from .mpy, as on a board),
# over the aioble stand-in (aioble_fake.py): a lighting node advertises,
# a central reads its status and configures it with a sealed CONFIG, and the
# heap the module costs is measured (printed, and bounded).
import asyncio
import sys

import aioble_fake
import mpnode
import mptest
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing
from protocol.keys import NodeKeys

MPY = True
SETTINGS = {"enabled": True, "configure": True, "adv_interval_ms": 500}


def start(clock):
    import firmware.ble
    from firmware.ble import Commissioning

    if not hasattr(firmware.ble.os, "urandom"):  # this port has none; a board's is its hardware RNG

        class Os:
            drawn = 0

            @classmethod
            def urandom(cls, n):  # distinct per call: enough for a test, no secret
                cls.drawn += 1
                return bytes((cls.drawn * 37 + i * 101) & 0xFF for i in range(n))

        firmware.ble.os = Os

    hal, node, gw, tasks, world = mpnode.start_node(clock, "lighting")
    stack = aioble_fake.Stack()
    c = Commissioning(node, stack.aioble(), aioble_fake.UUID, SETTINGS)
    tasks.append(asyncio.create_task(c.run()))
    return hal, node, tasks, stack, c


def keys():
    return NodeKeys(mpnode.NODE_ID, bytes.fromhex(mpnode.ROOT_HEX))


async def exchange(clock, stack, raw):
    """Write one frame to the control characteristic in 20-byte pieces; the decoded answer."""
    from protocol.ble import CONTROL_UUID as CONTROL

    h = stack.handle_of(aioble_fake.UUID(CONTROL))
    got = []
    dec = framing.Decoder(fr.MAX_LEN)
    stack.on_notify = lambda handle, data: got.extend(dec.feed(data))
    stack.subscribe(h)
    data = framing.encode(raw)
    for i in range(0, len(data), 20):
        stack.write(h, data[i : i + 20])
        await clock.run_for(10)
    await clock.run_for(100)
    assert len(got) == 1, got
    return got[0]


async def test_heap_of_ble_commissioning():
    # first in this file: nothing has imported firmware.ble yet
    clock = mpnode.new_clock()
    hal, node, gw, tasks, world = mpnode.start_node(clock, "lighting", lean=True)
    await clock.run_for(10000)
    await asyncio.sleep_ms(0)
    before = mptest.mem()
    from firmware.ble import Commissioning

    code = mptest.mem() - before
    # the node's parts of protocol/ only: protocol/ble.py is the tool's (this test's top
    # imports load messages, frame and cbor for the test itself, so only ble.py can say)
    assert "protocol.nodeble" in sys.modules and "protocol.ble" not in sys.modules
    from protocol.ble import STATUS_UUID as STATUS

    stack = aioble_fake.Stack()
    aioble = stack.aioble()
    uuid = aioble_fake.UUID(STATUS)
    base = mptest.mem()
    # what BLE keeps while a central is connected: the instance, its characteristics and
    # buffers, the status value; built synchronously so no clock garbage is counted
    c = Commissioning(node, aioble, aioble_fake.UUID, SETTINGS)
    aioble.register_services(c._service)
    c.alarms.write(c.alarms_value())
    stack.advertising = (0, c.adv, c.scan_response())
    stack.connect()
    c.status.write(c.status_value())
    objects = mptest.mem() - base
    tasks.append(asyncio.create_task(c.run()))
    await clock.run_for(3000)
    stack.read(stack.handle_of(uuid))
    await asyncio.sleep_ms(0)
    connected = mptest.mem() - base
    print(
        "ble.mpy code heap %d B; objects %d B built, %d B after 3 s connected (tasks, decoder, status)"
        % (code, objects, connected)
    )
    assert 0 < code < 7 * 1024, code
    assert 0 < connected < 6 * 1024, connected
    mpnode.stop(hal, tasks)


async def test_advertise_read_status_and_configure():
    from protocol import ble as bp  # not at the top: the heap test counts this module's code
    from protocol.ble import STATUS_UUID as STATUS

    clock = mpnode.new_clock()
    hal, node, tasks, stack, c = start(clock)
    await clock.run_for(60000)
    _, adv, resp = stack.advertising
    assert len(adv) == 29 and len(resp) == 30, (len(adv), len(resp))
    assert resp[18:22] == bytes((0x00, 0xA1, 0xB2, 0xC3))  # the node id after the UUID
    stack.connect()
    await clock.run_for(2000)
    st = cbor.loads(stack.read(stack.handle_of(aioble_fake.UUID(STATUS))))
    assert st[0] == mpnode.NODE_ID and st[1] == m.KIND_LIGHTING and st[3] == 0, st
    assert st[4][0] == m.LIGHT and st[6] == fr.TOOL_COUNTER_BASE - 1
    # a session (SPEC §11): the nonce and the top, tagged with the node's key over the challenge
    challenge = b"\x5a" * bp.CHALLENGE_LEN
    answer = await exchange(clock, stack, bytes((bp.SESSION,)) + challenge)
    assert len(answer) == bp.SESSION_ANSWER_LEN and answer[0] == bp.SESSION, (answer, node.last_error)
    nonce = answer[1:9]
    assert answer[-8:] == bp.tag(keys(), answer[:-8], challenge + nonce)
    counter = int.from_bytes(answer[9:13], "big") + 1
    assert counter == fr.TOOL_COUNTER_BASE
    body = {0: {m.CFG_REPORT_INTERVAL: 600}, m.CF_ECHO: nonce}
    raw = fr.seal(keys(), m.CONFIG, counter, m.encode(m.CONFIG, body))
    f, plain = fr.unseal(keys(), await exchange(clock, stack, raw))
    assert f.mtype == m.CMD_ACK and m.decode(m.CMD_ACK, plain) == {0: counter, 1: m.RES_OK}
    assert node.report_s == 600
    body = {0: {m.CFG_REPORT_INTERVAL: 30}, m.CF_ECHO: nonce}
    wrong = fr.seal(NodeKeys(mpnode.NODE_ID, bytes(16)), m.CONFIG, counter + 1, m.encode(m.CONFIG, body))
    answer = await exchange(clock, stack, wrong)
    assert answer[:6] == bytes((0xA0, 4)) + counter.to_bytes(4, "big"), answer
    assert answer[6:] == bp.tag(keys(), answer[:6], challenge + nonce)
    stale = fr.seal(keys(), m.CONFIG, counter + 1, m.encode(m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 30}}))
    answer = await exchange(clock, stack, stale)  # no nonce: not for this session
    assert answer[:2] == bytes((0xA0, bp.R_ECHO)), answer
    assert node.report_s == 600
    mpnode.stop(hal, tasks)
