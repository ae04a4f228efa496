# A node behind LoRa Basics Station gateways, under real MicroPython (SPEC §7 "Through LoRa
# Basics Station gateways"; config radio.basics_station -> firmware/radio_lora.py `wrapper`,
# protocol/nodelora.py `wrapper`): each frame goes out as a LoRaWAN proprietary frame, 0xE0
# then the v1 frame unchanged; a downlink with 0xE0 before it is taken; payload limits and
# times on air count the byte. A node not so configured sends exactly what it did. On
# air_modem.AirModem (shaped like micropython-lib's async `lora` modem); node code from .mpy.
import json

import mpnode
from air_modem import AirModem
from firmware import config
from firmware.lighting import Lighting
from firmware.radio_lora import LoRaRadio
from firmware.runtime import Node
from protocol import frame as fr
from protocol import lora
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator.hal_sim import SimHAL

MPY = True
S = 1000
KEYS = NodeKeys(mpnode.NODE_ID, bytes.fromhex(mpnode.ROOT_HEX))


def _cfg(station):
    d = {
        "node_id": mpnode.NODE_ID,
        "kind": "lighting",
        "root_key": mpnode.ROOT_HEX,
        "key_fresh": True,
        "location": {"lat": 48.8566, "lon": 2.3522},
        "lighting": {"full_ma": 500},
    }
    if station is not None:
        d["radio"] = {"type": "lora", "basics_station": station}
    return config.load(json.dumps(d).encode())


def _boot(station):
    cfg = _cfg(station)
    clock = mpnode.new_clock()
    hal = SimHAL(clock, storage={})
    modem = AirModem(hal)
    r = cfg["radio"]
    radio = LoRaRadio(modem, r["freq_hz"], r["sf"], wrapper=r["basics_station"])
    node = Node(cfg, hal, radio, Lighting, hello_jitter_ms=0)
    return clock, hal, modem, node


async def _until(clock, cond, seconds):
    for _ in range(seconds):
        if cond():
            return
        await clock.run_for(S)
    raise AssertionError("not within %d s" % seconds)


def _down(counter, body, wrapped):
    raw = fr.seal(KEYS, m.COMMAND, counter, m.encode(m.COMMAND, body))
    return (b"\xe0" + raw) if wrapped else raw


async def _run(station, wrapped_down):
    import asyncio

    clock, hal, modem, node = _boot(station)
    task = asyncio.create_task(node.run())
    await _until(clock, lambda: len(modem.sent) >= 1, 10)
    # a COMMAND in the RX1 of the next uplink
    modem.rx1.append(_down(1, {0: 5, 1: m.OP_SET_LEVEL, 2: [40, 600]}, wrapped_down))
    await _until(clock, lambda: node.rx >= 1 or node.rx_rejected >= 1, 1200)
    await _until(clock, lambda: len(modem.sent) >= 3 or node.rx_rejected >= 1, 120)
    task.cancel()
    hal.power_off()
    return node, modem


async def test_a_configured_node_sends_proprietary_frames_and_takes_wrapped_downlinks():
    node, modem = await _run(True, True)
    assert node.radio.max_frame == lora.max_payload(9) - 1  # the MHDR's byte counts against the limit
    assert node.radio.airtime_ms(20) == lora.airtime_ms(21, 9)
    assert len(modem.sent) >= 3 and node.rx == 1 and node.rx_rejected == 0
    w = fr.ReplayWindow()
    types = []
    for _, _, phy in modem.sent:
        assert phy[0] == 0xE0, phy  # MHDR: MType 111 proprietary, Major 0
        f, plain = fr.unseal(KEYS, phy[1:], w)  # the v1 frame unchanged behind it
        types.append(f.mtype)
        if f.mtype == m.CMD_ACK:
            ack = m.decode(m.CMD_ACK, plain)
            assert ack[0] == 5 and ack[1] == m.RES_OK and ack[2] == 40
    assert types[0] == m.HELLO and m.CMD_ACK in types


async def test_an_unconfigured_node_sends_bare_frames_as_before():
    for station in (None, False):
        node, modem = await _run(station, False)
        assert node.radio.max_frame == lora.max_payload(9) and node.radio.wrapper is False
        assert len(modem.sent) >= 3 and node.rx == 1
        w = fr.ReplayWindow()
        for _, _, phy in modem.sent:
            assert phy[0] >> 5 == 1, phy  # the v1 header first: no MHDR
            fr.unseal(KEYS, phy, w)


async def test_a_configured_node_still_takes_a_bare_downlink():
    # no v1 frame starts with 0xE0: a downlink without the MHDR is the frame as it always was
    node, modem = await _run(True, False)
    assert node.rx == 1 and node.rx_rejected == 0


def test_the_config_flag_is_checked():
    assert _cfg(None)["radio"]["basics_station"] is False
    for bad, why in (
        ({"type": "lora", "basics_station": 1}, "radio.basics_station: expected true or false"),
        ({"type": "uart", "basics_station": True}, "radio.basics_station: only for radio.type lora"),
    ):
        d = {"node_id": 1, "kind": "lighting", "root_key": mpnode.ROOT_HEX, "radio": bad}
        try:
            config.load(json.dumps(d).encode())
        except config.ConfigError as e:
            assert str(e).startswith(why), str(e)
        else:
            raise AssertionError("accepted %r" % bad)
    d = {"node_id": 1, "kind": "bridge", "radio": {"basics_station": True}}
    try:
        config.load(json.dumps(d).encode())
    except config.ConfigError as e:
        assert "a node's setting" in str(e), str(e)
    else:
        raise AssertionError("a bridge took basics_station")
