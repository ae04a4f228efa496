# A whole lighting node on a LoRaWAN modem (firmware/radio_lorawan.py), inside
# real MicroPython: the RAK3172's AT commands simulated on the far side of the
# UART (at_modem.AtModem), the network server and gateway behind it
# (at_modem.Network: the frame rebuilt from FPort and DevEUI, SPEC §14, and
# verified with the node's key). Node code loads from .mpy, as on a board.
import asyncio

import mpnode
from at_modem import AtModem, Network
from firmware.lighting import Lighting
from firmware.radio_lorawan import LorawanRadio, ModemError, setup_commands
from firmware.runtime import Node
from protocol import messages as m
from simulator.hal_sim import SimHAL

MPY = True
H = 3600 * 1000
RADIO = {
    "type": "lorawan",
    "region": "EU868",
    "dev_eui": "70b3d57ed0000001",
    "join_eui": "0000000000000001",
    "app_key": "2b7e151628aed2a6abf7158809cf4f3c",
}


def start(tx_done_first=True):
    clock = mpnode.new_clock()
    hal = SimHAL(clock)
    net = Network(clock, mpnode.NODE_ID, mpnode.ROOT_HEX)
    modem = AtModem(hal, net, tx_done_first=tx_done_first)
    radio = LorawanRadio(hal, modem, mpnode.NODE_ID, setup_commands(RADIO))
    world = mpnode.LampWorld(hal)
    node = Node(mpnode.node_config("lighting"), hal, radio, Lighting, hello_jitter_ms=0)
    task = asyncio.create_task(node.run())
    return clock, hal, net, modem, radio, node, task, world


async def test_a_lighting_node_joins_reports_and_takes_its_time_over_the_modem():
    clock, hal, net, modem, radio, node, task, _ = start()
    await clock.run_for(2 * H)
    task.cancel()
    hal.power_off()
    # the modem was set up, then joined, before the first uplink; the key never echoed back
    names = [c.split("=")[0] for c in modem.commands]
    assert names[:10] == [
        "AT+NWM",
        "AT+NJM",
        "AT+CLASS",
        "AT+BAND",
        "AT+ADR",
        "AT+CFM",
        "AT+DEVEUI",
        "AT+APPEUI",
        "AT+APPKEY",
        "AT+JOIN",
    ], names
    assert modem.settings["BAND"] == "4" and modem.settings["APPKEY"] == RADIO["app_key"].upper()
    assert radio.joins == 1 and node.app_faults == 0, node.last_error
    # every uplink verified end to end with the node's key, in order, within the 51-byte FRMPayload
    assert net.rejected == 0
    assert net.heard[0][0] == m.HELLO
    counters = [h[1] for h in net.heard]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    assert max(h[3] for h in net.heard) <= 51
    assert 7 <= len(net.of_type(m.LIGHT)) <= 9, len(net.of_type(m.LIGHT))
    # the TIME answering HELLO came down in RX1, rebuilt with the node's id, and set the clock
    assert node.time() is not None
    assert radio.dropped == 0


async def test_a_command_comes_down_and_its_cmd_ack_goes_up():
    clock, hal, net, modem, radio, node, task, _ = start()
    await clock.run_for(20 * 60000)
    net.seal(m.COMMAND, {0: 41, 1: m.OP_SET_LEVEL, 2: [100, 600]})  # queued at the network: class A
    await clock.run_for(40 * 60000)
    task.cancel()
    hal.power_off()
    acks = net.of_type(m.CMD_ACK)
    assert acks and acks[0][2][0] == 41 and acks[0][2][1] == m.RES_OK, acks
    # the lamp went to full (1000 per mille) when the command came down, then back to its profile
    assert any(t > 20 * 60000 and v == 1000 for t, v in hal.changes("lamp")), hal.changes("lamp")


async def test_the_downlink_may_come_before_tx_done():
    """RUI3 versions differ on the order of +EVT:RX_1 and +EVT:TX_DONE: either works."""
    clock, hal, net, modem, radio, node, task, _ = start(tx_done_first=False)
    await clock.run_for(30 * 60000)
    task.cancel()
    hal.power_off()
    assert node.time() is not None and net.rejected == 0 and net.heard[0][0] == m.HELLO


async def test_garbage_foreign_ports_and_a_lost_session_do_not_stop_the_node():
    clock, hal, net, modem, radio, node, task, _ = start()
    await clock.run_for(20 * 60000)
    sent = modem.sends
    # noise on the line, a downlink that is not hex, one on another application's port
    modem.noise = b"\x00\xff\xfejunk\r\n+EVT:RX_1:-90:5:UNICAST:34:zz\r\n+EVT:RX_1:-90:5:UNICAST:2:AABB\r\n"
    await clock.run_for(20 * 60000)
    assert radio.dropped == 2 and modem.sends > sent
    # the network forgets the device (a rejoin): the next send is refused, the node joins again
    modem.joined = False
    await clock.run_for(40 * 60000)
    task.cancel()
    hal.power_off()
    assert radio.joins == 2, radio.joins
    assert node.tx_failed >= 1 and node.app_faults == 0
    counters = [h[1] for h in net.heard]
    assert counters == sorted(counters) and net.rejected == 0
    assert len(net.of_type(m.LIGHT)) >= 5


async def test_a_modem_that_refuses_is_an_error_naming_the_command_never_the_key():
    clock = mpnode.new_clock()
    hal = SimHAL(clock)

    class Refusing(AtModem):
        def _command(self, line):
            self.commands.append(line)
            self._say("AT_PARAM_ERROR")

    modem = Refusing(hal, Network(clock, mpnode.NODE_ID, mpnode.ROOT_HEX))
    radio = LorawanRadio(hal, modem, mpnode.NODE_ID, ["AT+APPKEY=" + RADIO["app_key"]])
    err = None
    t = asyncio.create_task(radio.send(b"\x22" + bytes(20)))
    await clock.run_for(5000)
    try:
        await t
    except ModemError as e:
        err = str(e)
    assert err == "AT+APPKEY: AT_PARAM_ERROR", err
    assert RADIO["app_key"] not in err


def test_the_setup_refuses_bad_keys_and_regions():
    for r, why in (
        ({"region": "MARS433"}, "radio.region"),
        ({"dev_eui": "70b3"}, "radio.dev_eui"),
        ({"app_key": "zz" * 16}, "radio.app_key"),
    ):
        try:
            setup_commands(r)
        except ValueError as e:
            assert why in str(e), e
        else:
            raise AssertionError(r)
