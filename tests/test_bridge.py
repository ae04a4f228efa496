"""firmware.bridge: a radio bridge on a real pseudo-terminal, with a driver-shaped modem.

The host side speaks SPEC §10 through protocol.bridge_msg and protocol.serial
over the pty's master end; the modem is shaped like micropython-lib's async
lora driver (the only seam: no radio chip here).
"""

from __future__ import annotations

import asyncio
import os
import random
import select

import pytest
from test_radio import PtyPort, RxPacket

from firmware.aio import wait_ms
from firmware.bridge import Bridge
from firmware.radio_lora import LoRaRadio
from protocol import bridge_msg as bm
from protocol import lora
from protocol import serial as framing
from simulator import virtual_loop
from simulator.hal_sim import SimHAL


class AirModem:
    """micropython-lib AsyncModem shape; `air()` delivers a packet to a pending recv."""

    def __init__(self, hal):
        self.hal = hal
        self.cfg: dict = {}
        self.sent: list[tuple[int, dict, bytes]] = []  # (ticks at start, config, frame)
        self._inbox: list[RxPacket] = []
        self._ev = asyncio.Event()

    def configure(self, cfg):
        self.cfg.update(cfg)

    def air(self, pkt: RxPacket):
        self._inbox.append(pkt)
        self._ev.set()

    async def send(self, packet):
        self.sent.append((self.hal.ticks_ms(), dict(self.cfg), bytes(packet)))
        air = lora.airtime_ms(len(packet), self.cfg["sf"], int(self.cfg["bw"]) * 1000)
        await self.hal.sleep_ms(int(air) + 1)

    async def recv(self, timeout_ms=None):
        if not self._inbox:
            self._ev.clear()
            await wait_ms(self.hal, self._ev, timeout_ms)
        return self._inbox.pop(0) if self._inbox else None


class Host:
    """The gateway's end of the USB line."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.dec = framing.Decoder(512)
        self.got: list[tuple] = []

    def send(self, msg: bytes):
        os.write(self.fd, framing.encode(msg))

    def read(self) -> list[tuple]:
        # The kernel hands bytes written to a pty's slave to its master asynchronously (the tty
        # flip buffer), so "written before the virtual clock stopped" is not "readable now":
        # read until the line has been quiet for 50 ms of real time.
        data = b""
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        new = [bm.decode(p) for p in self.dec.feed(data)]
        self.got += new
        return new


@pytest.fixture
def line():
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    yield master, slave
    os.close(master)
    os.close(slave)


def run_bridge(line, script, sf=9):
    master, slave = line

    async def main(clock):
        hal = SimHAL(clock)
        modem = AirModem(hal)
        radio = LoRaRadio(modem, freq_hz=868100000, sf=sf, bridge=True)
        bridge = Bridge(hal, radio, PtyPort(slave))
        task = asyncio.create_task(bridge.run())
        host = Host(master)
        try:
            return await script(clock, hal, modem, bridge, host)
        finally:
            task.cancel()
            hal.power_off()

    clock = virtual_loop.VirtualClock()
    return virtual_loop.run(main(clock), clock)


FRAME = bytes.fromhex("2200a1b2c30000002aa4001828011901c4021a0001e240031821323ebdce")
ACK = bytes.fromhex("2b00a1b2c300000008a100182ae21c8980")


def test_frames_heard_go_to_the_host_with_metadata_and_a_timed_downlink_hits_rx1(line):
    async def script(clock, hal, modem, bridge, host):
        await clock.run_for(1000)
        status = host.read()
        modem.air(RxPacket(FRAME, -97, 29))
        modem.air(RxPacket(b"\x00" * 20, -130, -40, crc_error=True))
        await clock.run_for(50)
        rx = host.read()
        tmst = rx[0][1]
        host.send(bm.encode_tx(7, ACK, 868100000, 9, 125000, 14, tmst_ms=tmst + 1000))
        await clock.run_for(2000)
        res = host.read()
        host.send(bm.encode_ping())
        await clock.run_for(50)
        return status, rx, tmst, res, host.read(), modem.sent

    status, rx, tmst, res, status2, sent = run_bridge(line, script)
    assert status[0][0] == bm.STATUS and status[0][-1] == "bridge 0.1.0"
    assert rx == [(bm.RX, tmst, 868100000, 9, 125000, -97, 29, FRAME)]
    assert 1000 <= tmst <= 1050
    assert res == [(bm.TX_RESULT, 7, bm.TX_SENT, tmst + 1000)]
    ((start, cfg, frame),) = sent
    assert start == tmst + 1000 and frame == ACK
    assert cfg["invert_iq_tx"] is True  # downlinks inverted, as LoRaWAN
    _, _, rx_ok, rx_dropped, tx_ok, tx_refused, freq, sf, bw, _ = status2[0]
    assert (rx_ok, rx_dropped, tx_ok, tx_refused, freq, sf) == (1, 1, 1, 0, 868100000, 9)


def test_tx_requests_the_bridge_must_refuse(line):
    async def script(clock, hal, modem, bridge, host):
        await clock.run_for(1000)
        host.read()
        now = hal.ticks_ms()
        host.send(bm.encode_tx(1, ACK, 868100000, 9, tmst_ms=now - 5))  # past
        host.send(bm.encode_tx(2, ACK, 868100000, 9, tmst_ms=now + 20_000))  # too far ahead
        host.send(bm.encode_tx(3, ACK, 915000000, 9))  # not EU868
        host.send(bm.encode_tx(4, bytes(60), 868100000, 12))  # 60 B > 51 at SF12
        host.send(bm.encode_tx(5, ACK, 868100000, 12, tmst_ms=now + 500))  # ok, SF12 takes long
        host.send(bm.encode_tx(6, ACK, 868300000, 9, tmst_ms=now + 600))  # radio held by 5
        await clock.run_for(3000)
        host.send(bm.encode_tx(8, ACK, 868500000, 7))  # same sub-band g1, in its off-time
        host.send(bm.encode_tx(9, ACK, 869525000, 12))  # g3 (RX2) is open
        await clock.run_for(5000)
        host.send(b"\x22garbage")
        host.send(bm.encode_status(1, 1, 1, 1, 1, 868100000, 9, 125000, "x"))  # wrong direction
        await clock.run_for(100)
        return host.read(), modem.sent, bridge

    got, sent, bridge = run_bridge(line, script)
    results = {m[1]: m[2] for m in got if m[0] == bm.TX_RESULT}
    assert results == {
        1: bm.TX_TOO_LATE,
        2: bm.TX_TOO_EARLY,
        3: bm.TX_BAD_REQUEST,
        4: bm.TX_BAD_REQUEST,
        5: bm.TX_SENT,
        6: bm.TX_BUSY,
        8: bm.TX_DUTY_CYCLE,
        9: bm.TX_SENT,
    }
    assert [s[2] for s in sent] == [ACK, ACK]
    # the RX2 transmission retuned the modem and reception came back to 868.1 SF9
    assert sent[1][1]["freq_khz"] == 869525 and sent[1][1]["sf"] == 12
    assert bridge.radio.modem.cfg["freq_khz"] == 868100 and bridge.radio.modem.cfg["sf"] == 9
    assert bridge.host_errors == 2 and bridge.tx_refused == 6


def test_rx_config_retunes_and_answers_status(line):
    async def script(clock, hal, modem, bridge, host):
        await clock.run_for(100)
        host.read()
        host.send(bm.encode_rx_config(869525000, 12))
        host.send(bm.encode_rx_config(915000000, 12))  # refused, status unchanged
        await clock.run_for(100)
        return host.read(), modem.cfg

    got, cfg = run_bridge(line, script)
    assert [g[6:9] for g in got] == [(869525000, 12, 125000)] * 2
    assert cfg["freq_khz"] == 869525 and cfg["sf"] == 12


def test_status_every_minute_and_host_noise_does_not_stop_the_bridge(line):
    async def script(clock, hal, modem, bridge, host):
        os.write(host.fd, random.Random(7).randbytes(3000))  # noise, the same on every run
        await clock.run_for(3 * 60_000 + 500)
        modem.air(RxPacket(FRAME, -80, 10))
        await clock.run_for(100)
        return host.read(), hal

    got, hal = run_bridge(line, script)
    assert [g[0] for g in got].count(bm.STATUS) == 4
    assert got[-1][0] == bm.RX
    assert hal.wdt_bites == 0
