"""firmware/radio_lorawan.py under CPython: over a real pseudo-terminal, the RAK3172 simulated on
the far side speaking RUI3's AT commands (tests/micropython/at_modem.py, the same modem the
MicroPython tests use), and the board wiring (firmware/main.py's make_radio, lumeau/boards.py).
The whole-node behaviour under real MicroPython is tests/micropython/mp_lorawan.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from conftest import ROOT
from firmware_helpers import NODE_ID, ROOT_KEY, ToyLamp, make_cfg
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hal_machine import fake_machine

from firmware import main as board_main
from firmware.radio_lorawan import LorawanRadio, setup_commands
from firmware.runtime import Node
from lumeau import boards
from protocol import messages as m
from simulator import virtual_loop
from simulator.hal_sim import SimHAL

sys.path.insert(0, str(ROOT / "tests" / "micropython"))
from at_modem import AtModem, Network

HOSTILE_LINES = [
    b"+EVT:RX_1:-90:5:UNICAST:34:zz\r\n",
    b"+EVT:RX_1:-90:5:UNICAST:300:AABB\r\n",
    b"+EVT:RX_1:x:y:UNICAST:34:AABB\r\n",
    b"+EVT:RX_2\r\n",
    b"+EVT:RX_1:-90:5:UNICAST:34:" + b"AB" * 400 + b"\r\n",
    b"+EVT:RX_C:-90:5:UNICAST:40:00000001A0AABBCCDD\r\n",
    b"\xff" * 700,
    b"OK\r\n" * 20,
]


class PtyPort:
    """One end of a real pseudo-terminal, non-blocking like machine.UART(timeout=0)."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)

    def write(self, data) -> int:
        return os.write(self.fd, bytes(data))

    def read(self, n: int) -> bytes | None:
        try:
            return os.read(self.fd, n) or None
        except BlockingIOError:
            return None


@pytest.fixture
def pty():
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    yield master, slave
    os.close(master)
    os.close(slave)


def test_a_node_over_a_real_pty_joins_reports_and_takes_a_command(pty):
    master, slave = pty

    async def main(clock):
        hal = SimHAL(clock)
        net = Network(clock, NODE_ID, ROOT_KEY.hex())
        modem = AtModem(hal, net)
        far = PtyPort(master)

        async def modem_side():  # the module on the other end of the wire
            while True:
                data = far.read(256)
                if data:
                    modem.write(data)
                out = modem.read(256)
                if out:
                    far.write(out)
                await hal.sleep_ms(5)

        radio = LorawanRadio(hal, PtyPort(slave), NODE_ID, setup_commands({"region": "EU868"}))
        node = Node(make_cfg(), hal, radio, ToyLamp, hello_jitter_ms=0)
        tasks = [asyncio.create_task(modem_side()), asyncio.create_task(node.run())]
        await clock.run_for(90_000)
        net.seal(m.COMMAND, {0: 3, 1: m.OP_SET_LEVEL, 2: [55, 60]})
        await clock.run_for(300_000)
        for t in tasks:
            t.cancel()
        hal.power_off()
        return net, modem, radio, node

    clock = virtual_loop.VirtualClock()
    net, modem, radio, node = virtual_loop.run(main(clock), clock)
    assert [c.split("=")[0] for c in modem.commands][:7] == [
        "AT+NWM", "AT+NJM", "AT+CLASS", "AT+BAND", "AT+ADR", "AT+CFM", "AT+JOIN",
    ]  # fmt: skip
    assert net.rejected == 0 and net.heard[0][0] == m.HELLO
    assert node.time() is not None  # the TIME came down in RX1 over the wire
    assert node.app.level == 55
    acks = net.of_type(m.CMD_ACK)
    assert acks and acks[0][2] == {0: 3, 1: m.RES_OK, 2: 55}
    assert radio.dropped == 0 and radio.joins == 1


def test_a_board_node_with_a_lorawan_modem_is_wired_to_its_uart(monkeypatch, tmp_path):
    mach = fake_machine()
    opened = []

    class UART:
        def __init__(self, uid, **kw):
            opened.append((uid, kw))

        def write(self, data):
            return len(data)

        def read(self, n):
            return None

    mach.UART = UART
    doc = {
        "node_id": 7,
        "kind": "lighting",
        "root_key": "00" * 16,
        **boards.preset("esp32-devkit", "lighting", "lorawan"),
    }
    doc["radio"].update(dev_eui="70b3d57ed0000007", app_key="2b7e151628aed2a6abf7158809cf4f3c")
    cfg = boards.validate(json.dumps(doc))  # the provisioning tools' check: keys known, pins present
    radio = board_main.make_radio(cfg, None, mach)
    assert isinstance(radio, LorawanRadio) and radio.node_id == 7
    assert opened == [(2, {"baudrate": 115200, "timeout": 0, "tx": 17, "rx": 16})]
    assert "AT+DEVEUI=70B3D57ED0000007" in radio.setup and "AT+BAND=4" in radio.setup
    assert radio.band is None and radio.max_frame == 56 and not radio.continuous


def test_lorawan_presets_exist_where_a_uart_does_and_never_for_a_bridge():
    assert boards.preset("rp2-pico", "irrigation", "lorawan")["radio"]["uart"]["id"] == 1
    with pytest.raises(boards.PresetError, match="needs --radio lora"):
        boards.preset("esp32-devkit", "bridge", "lorawan")


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80) | st.sampled_from(HOSTILE_LINES), max_size=12))
def test_fuzz_whatever_the_modem_says_the_radio_never_raises(chunks):
    """Line noise, half lines, overlong lines, malformed events: dropped and counted, never raised."""

    class Port:
        def __init__(self) -> None:
            self.data = list(chunks)

        def write(self, data):
            return len(data)

        def read(self, n):
            return self.data.pop(0) if self.data else None

    radio = LorawanRadio(None, Port(), NODE_ID)
    heard = []
    for _ in range(len(chunks) + 8):
        coro = radio.recv(0)  # one poll, no sleep: the radio's public entry point
        try:
            coro.send(None)
        except StopIteration as stop:
            if stop.value is not None:
                heard.append(stop.value)
    for frame, rssi, snr in heard:
        assert 0x20 <= frame[0] <= 0x3F and frame[1:5] == NODE_ID.to_bytes(4, "big") and len(frame) > 5
        assert isinstance(rssi, int) and isinstance(snr, int)


def test_the_memory_bench_measures_a_node_on_a_lorawan_modem():
    """bench/firmware_memory.py --lorawan: the node on radio_lorawan and the simulated modem, under MicroPython."""
    import subprocess

    cmd = [sys.executable, str(ROOT / "bench" / "firmware_memory.py"), "--json", "--hours", "3", "--lorawan"]
    out = subprocess.run(
        [*cmd, "--apps", "lighting", "--tick-ms", "5000"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    result = json.loads(out)
    app = result["apps"]["lighting"]
    assert result["lorawan"] is True and app["radio"] == "lorawan"
    assert app["app_faults"] == 0 and app["frames_rejected"] == 0 and app["frames_heard"] >= 10
    assert app["max_frame_bytes"] <= 56  # 51 bytes of FRMPayload and the 5 that ride in FPort and DevEUI
    assert app["meets_bar"], app
