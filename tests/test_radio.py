"""firmware.radio (UART over a real pseudo-terminal, memory link) and firmware.radio_lora.

radio_lora is tested above its seam: a modem object shaped like
micropython-lib's async `lora` driver (configure, send, recv -> RxPacket);
make_modem with fake `machine` and `lora` modules injected for the test only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types

import pytest
from firmware_helpers import NODE_ID, ROOT_KEY, ToyLamp, make_cfg

from firmware import radio_lora
from firmware.radio import _RECENT_MAX as RECENT_MAX  # the bound under test
from firmware.radio import UartRadio, memory_link
from firmware.radio_lora import LoRaRadio
from firmware.runtime import Node
from protocol import frame as fr
from protocol import lora
from protocol import messages as m
from protocol import serial as framing
from protocol.keys import NodeKeys
from simulator import virtual_loop
from simulator.hal_sim import SimHAL


class PtyPort:
    """The node's end of a real pseudo-terminal, non-blocking like machine.UART(timeout=0)."""

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
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    yield master, slave
    os.close(master)
    os.close(slave)


def test_uart_radio_over_a_real_pty_carries_a_node(pty):
    master, slave = pty
    keys = NodeKeys(NODE_ID, ROOT_KEY)

    async def main(clock):
        hal = SimHAL(clock)
        radio = UartRadio(hal, PtyPort(slave))
        node = Node(make_cfg(), hal, radio, ToyLamp, hello_jitter_ms=0)
        task = asyncio.create_task(node.run())
        await clock.run_for(2000)
        wire = os.read(master, 4096)
        frames = framing.Decoder().feed(wire)
        # a downlink written by the "gateway" at an arbitrary moment, in two chunks with noise before
        cmd = fr.seal(keys, m.COMMAND, 0, m.encode(m.COMMAND, {0: 3, 1: m.OP_SET_LEVEL, 2: [55, 60]}))
        enc = framing.encode(cmd)
        os.write(master, b"\x13\x37" + enc[:7])
        await clock.run_for(100)
        os.write(master, enc[7:])
        await clock.run_for(3000)
        wire2 = os.read(master, 4096)
        task.cancel()
        hal.power_off()
        return frames, framing.Decoder().feed(wire2), node

    clock = virtual_loop.VirtualClock()
    frames, frames2, node = virtual_loop.run(main(clock), clock)
    f, body = fr.unseal(keys, frames[0])
    assert f.mtype == m.HELLO and m.decode(m.HELLO, body)[1] == m.KIND_LIGHTING
    assert node.app.level == 55 and node.rx == 1
    ack = [fr.unseal(keys, raw) for raw in frames2]
    assert [(f.mtype, m.decode(f.mtype, b)) for f, b in ack] == [(m.CMD_ACK, {0: 3, 1: m.RES_OK, 2: 55})]
    assert node.radio.decoder.dropped() == 1  # the noise


def test_uart_airtime_is_the_line_time():
    r = UartRadio(SimHAL(virtual_loop.VirtualClock()), None, baud=9600)
    # 51-byte frame + CRC + COBS + delimiters = 56 bytes, 10 bits each
    assert r.airtime_ms(51) == 56 * 10 * 1000 // 9600
    assert r.band is None and r.continuous


def test_memory_link_receive_window_semantics():
    async def main(clock):
        a_hal, b_hal = SimHAL(clock), SimHAL(clock)
        node, gw = memory_link(a_hal, b_hal, sf=7)
        await gw.send(b"x" * 20)  # the node is not listening: lost
        assert node.lost == 0 and gw.lost == 1
        got = []

        async def listen():
            got.append(await node.recv(50))

        t = asyncio.create_task(listen())
        await clock.run_for(10)
        await gw.send(b"y" * 200)  # starts inside the window, ends after it: still heard
        await t
        await node.send(b"up")  # the gateway always listens
        return got, await gw.recv(0)

    clock = virtual_loop.VirtualClock()
    got, up = virtual_loop.run(main(clock), clock)
    assert got == [(b"y" * 200, -90, 20)]
    assert up == (b"up", -90, 20)


def test_memory_link_keeps_a_count_and_the_last_frames_not_all():
    async def main(clock):
        node, _gw = memory_link(SimHAL(clock), SimHAL(clock), sf=7)
        for i in range(RECENT_MAX + 5):
            await node.send(bytes([i]))
        return node

    clock = virtual_loop.VirtualClock()
    node = virtual_loop.run(main(clock), clock)
    assert node.sent == RECENT_MAX + 5
    assert node.recent == [bytes([i]) for i in range(5, RECENT_MAX + 5)]  # bounded: the newest, oldest first


class RxPacket(bytearray):
    def __init__(self, data, rssi, snr, crc_error=False):
        super().__init__(data)
        self.rssi, self.snr, self.crc_error, self.ticks_ms = rssi, snr, crc_error, 0


class FakeAsyncModem:
    """Shaped like micropython-lib lora.AsyncSX1276: configure / send / recv."""

    def __init__(self, hal):
        self.hal = hal
        self.cfg: dict = {}
        self.configured: list[dict] = []
        self.sent: list[bytes] = []
        self.inbox: list[RxPacket] = []
        self.recv_timeouts: list[int] = []

    def configure(self, cfg):
        self.cfg.update(cfg)
        self.configured.append(dict(cfg))

    async def send(self, packet):
        self.sent.append(bytes(packet))
        air = lora.airtime_ms(
            len(packet), self.cfg["sf"], int(self.cfg["bw"]) * 1000, self.cfg["coding_rate"], self.cfg["preamble_len"]
        )
        await self.hal.sleep_ms(int(air + 1))
        return self.hal.ticks_ms()

    async def recv(self, timeout_ms=None):
        self.recv_timeouts.append(timeout_ms)
        await self.hal.sleep_ms(1)
        return self.inbox.pop(0) if self.inbox else None


def test_lora_radio_configures_the_driver_like_lorawan():
    modem = FakeAsyncModem(SimHAL(virtual_loop.VirtualClock()))
    r = LoRaRadio(modem, freq_hz=868300000, sf=10, tx_power=12)
    assert modem.cfg == {
        "freq_khz": 868300,
        "sf": 10,
        "bw": "125",
        "coding_rate": 5,
        "output_power": 12,
        "preamble_len": 8,
        "crc_en": True,
        "invert_iq_tx": False,
        "invert_iq_rx": True,
    }
    assert lora.band_name(r.band) == "g1" and r.max_frame == 51
    assert r.airtime_ms(40) == lora.airtime_ms(40, 10)
    r.configure(sf=7)
    assert modem.cfg["sf"] == 7 and r.max_frame == 222
    with pytest.raises(ValueError):
        r.configure(sf=13)
    bridge = LoRaRadio(FakeAsyncModem(modem.hal), bridge=True)
    assert bridge.modem.cfg["invert_iq_tx"] is True and bridge.modem.cfg["invert_iq_rx"] is False
    # RX1 stays open 8 symbols plus margins: 8 x 4.096 ms at SF9
    assert LoRaRadio(FakeAsyncModem(modem.hal), sf=9).rx_window_ms() == 80 + 32


def test_node_on_a_lora_modem_listens_in_rx1_and_drops_crc_errors():
    keys = NodeKeys(NODE_ID, ROOT_KEY)

    async def main(clock):
        hal = SimHAL(clock)
        modem = FakeAsyncModem(hal)
        node = Node(make_cfg(), hal, LoRaRadio(modem), ToyLamp, hello_jitter_ms=0)
        bad = RxPacket(fr.seal(keys, m.TIME, 0, m.encode(m.TIME, {0: 1_800_000_000})), -120, -30, crc_error=True)
        modem.inbox += [bad]
        task = asyncio.create_task(node.run())
        await clock.run_for(5000)
        for _ in range(700):  # the next report opens the next window
            if len(modem.sent) > 1:
                break
            await clock.run_for(100)
        # a gateway's TIME answers the uplink it follows (SPEC §4, "Freshness")
        answered = fr.parse(modem.sent[-1]).counter
        body = m.encode(m.TIME, {0: 1_800_000_000, m.T_ANSWERS: answered})
        modem.inbox += [RxPacket(fr.seal(keys, m.TIME, 1, body), -101, -7)]
        await clock.run_for(5000)
        task.cancel()
        hal.power_off()
        return modem, node

    clock = virtual_loop.VirtualClock()
    modem, node = virtual_loop.run(main(clock), clock)
    assert fr.parse(modem.sent[0]).mtype == m.HELLO
    assert node.radio.crc_errors == 1
    assert node.rx == 1 and node.time() is not None
    assert node.last_rssi == -101 and node.last_snr == -7
    assert set(modem.recv_timeouts) == {node.radio.rx_window_ms()}


def test_make_modem_builds_the_driver_class_for_the_chip(monkeypatch):
    built = {}

    class Pin:
        def __init__(self, n):
            self.n = n

    class SPI:
        def __init__(self, bus, **kw):
            self.bus, self.kw = bus, kw

    class AsyncSX1262:
        def __init__(self, spi, cs, **kw):
            built.update(spi=spi, cs=cs, kw=kw)

    monkeypatch.setitem(sys.modules, "machine", types.SimpleNamespace(Pin=Pin, SPI=SPI))
    monkeypatch.setitem(sys.modules, "lora", types.SimpleNamespace(AsyncSX1262=AsyncSX1262))
    modem = radio_lora.make_modem({"chip": "sx1262"}, {"spi": 0, "cs": 9, "busy": 2, "dio1": 20, "reset": 15})
    assert isinstance(modem, AsyncSX1262)
    assert built["spi"].bus == 0 and built["cs"].n == 9
    assert {k: v.n for k, v in built["kw"].items()} == {"busy": 2, "dio1": 20, "reset": 15}
    with pytest.raises(ValueError, match="radio.chip"):
        radio_lora.make_modem({"chip": "rfm69"}, {"cs": 1})
