"""Serial transport on real pseudo-terminals: the test holds the master side, the gateway opens the slave.

A device that vanishes and comes back is a pty closed and a new one created
behind the same symlink (as udev's /dev/serial/by-id/... links behave when a
USB board is replugged).

One file (over 600 lines): every case drives the same pty fixtures; split by
concern they would copy them.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.bridge import Bridge
from firmware.radio_lora import LoRaRadio
from gateway.transports import DownlinkError
from gateway.transports.serial import SerialTransport
from protocol import bridge_msg as bm
from protocol import lora
from protocol import serial as framing
from simulator.hal_sim import SimHAL
from tests.transport_helpers import Gateway, downlink_frame, light_frame
from tests.waiting import wait_for


class PtyDevice:
    """The far end of a serial line: a pty master, reachable by the gateway at `link`."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.rx = framing.Decoder()
        self.plug()

    def plug(self) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before the gateway configures the port
        name = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        tmp.replace(self.link)

    def unplug(self) -> None:
        os.close(self.master)
        self.master = -1
        self.link.unlink(missing_ok=True)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    async def read_packets(self, n: int = 1, timeout: float = 3.0) -> list[bytes]:
        got: list[bytes] = []

        def read() -> bool:
            try:
                got.extend(self.rx.feed(os.read(self.master, 4096)))
            except BlockingIOError:
                pass
            return len(got) >= n

        await wait_for(read, timeout, what=f"{n} packets from the gateway")
        return got

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
async def gw(tmp_path):
    g = await Gateway.open(tmp_path / "gw.db")
    yield g
    await g.close()


@pytest.fixture
async def line(tmp_path, gw):
    dev = PtyDevice(tmp_path / "ttyLUMEAU0")
    t = SerialTransport(gw.pipeline, str(dev.link), reconnect_min=0.02, reconnect_max=0.1)
    await t.start()
    await t.wait_connected(3)
    yield dev, t, gw
    await t.stop()
    dev.close()


async def test_wired_frames_reach_the_pipeline_and_are_stored(line):
    dev, t, gw = line
    frames = [light_frame(counter=c) for c in range(1, 4)]
    dev.write(b"".join(framing.encode(f) for f in frames))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 3)
    assert [r.raw for r in gw.seen.receptions] == frames
    r = gw.seen.receptions[0]
    assert r.transport == "serial" and r.gateway_id == f"serial:{dev.link}" and r.path is t
    assert r.rssi is None and r.tmst is None
    assert [rec.counter for rec, _ in gw.seen.uplinks] == [1, 2, 3]
    assert gw.pipeline.accepted == 3 and gw.store.count() == 3


async def test_frames_cut_at_every_byte_boundary_are_reassembled(line):
    dev, t, gw = line
    wire = b"".join(framing.encode(light_frame(counter=c)) for c in range(1, 6))
    for i in range(len(wire)):  # one byte per write: the worst a UART can do
        dev.write(wire[i : i + 1])
        if i % 7 == 0:
            await asyncio.sleep(0)
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 5)
    assert [rec.counter for rec, _ in gw.seen.uplinks] == [1, 2, 3, 4, 5]


async def test_line_noise_is_rejected_by_reason_and_good_frames_survive_it(line):
    dev, t, gw = line
    good1, good2, good3 = (light_frame(counter=c) for c in (1, 2, 3))
    flipped = bytearray(framing.encode(light_frame(counter=9)))
    flipped[-3] ^= 0x40  # one bit changed in a data byte on the wire: the CRC catches it
    assert flipped[-3] != 0
    startup_garbage = b"\x05garb"  # a well-formed COBS block with no valid CRC
    bad_cobs = b"\x00\x09\x01\x02\x00"  # a code byte pointing past the end of the packet
    overlong = framing.encode(bytes(range(1, 256)) * 3)  # 765 bytes: more than the 512 allowed
    cut = framing.encode(good2)[:9]  # a sender reset mid-packet: the next leading 00 ends it
    too_short = b"\x00\x01\x00"  # one byte after COBS: no room for a CRC
    dev.write(
        startup_garbage
        + framing.encode(good1)
        + bytes(flipped)
        + bad_cobs
        + overlong
        + cut
        + framing.encode(good2)
        + too_short
        + framing.encode(good3)
    )
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 3)
    await gw.wait(lambda: sum(gw.rejected("serial").values()) == 6)
    assert [r.raw for r in gw.seen.receptions] == [good1, good2, good3]
    assert gw.rejected("serial") == {"bad_crc": 3, "bad_cobs": 2, "oversized": 1}
    s = t.stats()
    assert (s["dropped_bad_crc"], s["dropped_bad_cobs"], s["dropped_oversized"], s["packets"]) == (3, 2, 1, 3)


async def test_a_frame_the_pipeline_refuses_is_counted_there(line):
    dev, t, gw = line
    forged = bytearray(light_frame(counter=1))
    forged[10] ^= 1  # valid on the line (the CRC is computed over the forged bytes), bad MIC
    dev.write(framing.encode(bytes(forged)) + framing.encode(b"\x01\x02"))
    await gw.wait(lambda: sum(gw.rejected("serial").values()) == 2)
    assert gw.rejected("serial") == {"bad_mic": 1, "malformed": 1}


async def test_downlink_is_written_to_the_line_at_once(line):
    dev, t, gw = line
    dev.write(framing.encode(light_frame(counter=1)))
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    down = [downlink_frame(counter=c) for c in (1, 2)]
    await asyncio.gather(*(r.path.send_downlink(d, r) for d in down))
    got = await dev.read_packets(2)
    assert sorted(got) == sorted(down)  # each packet intact: two writers never interleave
    assert t.stats()["downlinks_sent"] == 2


async def test_device_vanishes_and_comes_back(line):
    dev, t, gw = line
    dev.write(framing.encode(light_frame(counter=1)))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 1)
    r = gw.seen.receptions[0]

    dev.unplug()
    await wait_for(lambda: not t.connected, 3)
    with pytest.raises(DownlinkError) as e:
        await r.path.send_downlink(downlink_frame(), r)
    assert e.value.reason == "disconnected"
    await wait_for(lambda: t.stats().get("open_failures", 0) >= 2, 3)  # reopen attempts fail while it is away
    assert not t.connected

    dev.plug()
    await t.wait_connected(3)
    dev.write(framing.encode(light_frame(counter=2)))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    await r.path.send_downlink(downlink_frame(counter=5), r)
    assert await dev.read_packets(1) == [downlink_frame(counter=5)]
    s = t.stats()
    assert s["connects"] == 2 and s["disconnects"] == 1


async def test_a_port_missing_at_start_is_waited_for(tmp_path, gw):
    link = tmp_path / "ttyLATE"
    t = SerialTransport(gw.pipeline, str(link), reconnect_min=0.02, reconnect_max=0.05)
    await t.start()
    try:
        await wait_for(lambda: t.stats().get("open_failures", 0) >= 2, 3)
        assert not t.connected
        dev = PtyDevice(link)
        try:
            await t.wait_connected(3)
            dev.write(framing.encode(light_frame(counter=1)))
            await gw.seen.wait(lambda: gw.seen.uplinks)
        finally:
            dev.close()
    finally:
        await t.stop()


async def test_port_is_exclusive(line, gw):
    dev, t, _ = line
    other = SerialTransport(gw.pipeline, str(dev.link), reconnect_min=0.02, reconnect_max=0.05)
    await other.start()
    try:
        await wait_for(lambda: other.stats().get("open_failures", 0) >= 1, 3)
        assert not other.connected
    finally:
        await other.stop()


async def test_a_pipeline_that_raises_does_not_make_the_port_deaf(tmp_path):
    class Broken:
        calls = 0
        got: list = []

        async def submit(self, reception):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("store closed under us")
            Broken.got.append(reception.raw)

        def reject(self, *a, **kw):
            pass

    dev = PtyDevice(tmp_path / "ttyBROKEN")
    t = SerialTransport(Broken(), str(dev.link), reconnect_min=0.02, reconnect_max=0.05)  # type: ignore[arg-type]
    await t.start()
    try:
        await t.wait_connected(3)
        dev.write(framing.encode(light_frame(counter=1)))
        await wait_for(lambda: t.stats().get("connects", 0) >= 2 and t.connected, 3)  # reopened
        dev.write(framing.encode(light_frame(counter=2)))
        await wait_for(lambda: Broken.got, 3)
        assert Broken.got == [light_frame(counter=2)] and t.stats()["internal_error"] == 1
    finally:
        await t.stop()
        dev.close()


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(ValueError, match="mode"):
        SerialTransport(None, "/dev/null", mode="modem")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect"):
        SerialTransport(None, "/dev/null", reconnect_min=0)  # type: ignore[arg-type]


# -- radio bridge: the real bridge firmware (firmware/bridge.py) on the far end of the pty -------
#
# The bridge runs on the simulated HAL with a real-time clock (the gateway's loop is real time)
# and a modem shaped like micropython-lib's async lora driver: the only seam, as on F1's tests.


class RealClock:
    """The clock interface of simulator.hal_sim, on real time."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.unix0 = int(time.time())

    def ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def unix(self) -> int:
        return self.unix0 + self.ms() // 1000

    async def sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)


class RxPacket(bytearray):
    def __init__(self, data: bytes, rssi: int, snr_q: int) -> None:
        super().__init__(data)
        self.rssi, self.snr, self.crc_error, self.ticks_ms = rssi, snr_q, False, 0


class Modem:
    """micropython-lib AsyncModem shape: configure / send / recv; `air()` is a node transmitting."""

    def __init__(self, hal: SimHAL) -> None:
        self.hal = hal
        self.cfg: dict = {}
        self.sent: list[tuple[int, dict, bytes]] = []  # (bridge ticks at start, config, frame)
        self._inbox: list[RxPacket] = []
        self._ev = asyncio.Event()

    def configure(self, cfg: dict) -> None:
        self.cfg.update(cfg)

    def air(self, pkt: RxPacket) -> None:
        self._inbox.append(pkt)
        self._ev.set()

    async def send(self, packet) -> None:
        self.sent.append((self.hal.ticks_ms(), dict(self.cfg), bytes(packet)))
        await asyncio.sleep(lora.airtime_ms(len(packet), self.cfg["sf"], int(self.cfg["bw"]) * 1000) / 1000)

    async def recv(self, timeout_ms=None):
        if not self._inbox:
            self._ev.clear()
            try:
                await asyncio.wait_for(self._ev.wait(), None if timeout_ms is None else timeout_ms / 1000)
            except TimeoutError:
                return None
        return self._inbox.pop(0) if self._inbox else None


class MasterPort:
    """The bridge board's end of the USB line: the pty master, non-blocking like machine.UART.

    `host_messages`: the types of the host's messages the board has read so far (the board
    handles what it read before it next yields, so a test can wait for one).
    """

    def __init__(self, dev: PtyDevice) -> None:
        self.dev = dev
        self.host_messages: list[int] = []
        self._heard = framing.Decoder()

    def write(self, data) -> int:
        self.dev.write(bytes(data))
        return len(data)

    def read(self, n: int):
        try:
            data = os.read(self.dev.master, n)
        except (BlockingIOError, OSError):
            return None
        self.host_messages.extend(p[0] for p in self._heard.feed(data) if p)
        return data or None


@pytest.fixture
async def bridge_line(tmp_path, gw):
    dev = PtyDevice(tmp_path / "ttyBRIDGE")
    hal = SimHAL(RealClock())
    modem = Modem(hal)
    board = Bridge(hal, LoRaRadio(modem, freq_hz=868_100_000, sf=9, bridge=True), MasterPort(dev), watchdog_ms=0)
    # RX1 shortened from 1 s to keep the test fast: the timing logic is the same
    t = SerialTransport(gw.pipeline, str(dev.link), mode="bridge", rx_delay=0.3, reconnect_min=0.02, reconnect_max=0.05)
    await t.start()
    await t.wait_connected(3)
    running = asyncio.create_task(board.run())
    yield t, board, modem, gw
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    hal.power_off()
    await t.stop()
    dev.close()


async def test_bridge_frames_reach_the_pipeline_with_reception_metadata(bridge_line):
    t, board, modem, gw = bridge_line
    await gw.wait(lambda: t.bridge_status.get("firmware", "").startswith("bridge"))  # STATUS at start / PING
    modem.air(RxPacket(light_frame(counter=1), -97, 29))
    modem.air(RxPacket(light_frame(node_id=0x0C, counter=4), -121, -50))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    (rec, r), (_, r2) = gw.seen.uplinks
    assert r.raw == light_frame(counter=1) and rec.counter == 1
    assert r.transport == "bridge" and r.gateway_id == f"serial:{t.port}"
    assert (r.rssi, r.snr, r.freq_hz, r.sf) == (-97, 7.25, 868_100_000, 9)
    assert (r2.rssi, r2.snr) == (-121, -12.5)
    assert rec.best_rssi == -97
    assert t.stats()["bridge_rx"] == 2


async def test_bridge_downlink_is_transmitted_in_rx1_with_inverted_iq(bridge_line):
    t, board, modem, gw = bridge_line
    modem.air(RxPacket(light_frame(counter=1), -97, 29))
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    down = downlink_frame(counter=1, acked=1)
    await r.path.send_downlink(down, r)  # returns once the bridge reported TX_SENT
    ((start, cfg, sent),) = modem.sent
    assert sent == down
    assert 300 <= start - r.path.tmst < 340  # RX1: rx_delay after the end of the uplink, bridge time
    assert (cfg["freq_khz"], cfg["sf"], cfg["bw"], cfg["invert_iq_tx"]) == (868_100, 9, "125", True)
    assert t.stats()["downlinks_sent"] == 1 and board.tx_ok == 1


async def test_bridge_refusals_reach_the_caller_with_their_reason(bridge_line):
    t, board, modem, gw = bridge_line
    modem.air(RxPacket(light_frame(counter=1), -97, 29))
    modem.air(RxPacket(light_frame(node_id=0x0E, counter=1), -98, 20))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    a, b = gw.seen.receptions
    # two windows a few ms apart: the radio is still busy with the first transmission
    first = asyncio.create_task(a.path.send_downlink(downlink_frame(counter=1), a))
    await gw.wait(lambda: bm.TX in board.port.host_messages)  # a's TX request is with the bridge
    with pytest.raises(DownlinkError) as e:
        await b.path.send_downlink(downlink_frame(node_id=0x0E, counter=1), b)
    assert e.value.reason == "busy"
    await first
    # the first downlink shut the g1 sub-band for 99x its airtime: the bridge keeps the law
    modem.air(RxPacket(light_frame(node_id=0x0D, counter=1), -99, 20))
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 3)
    c = gw.seen.receptions[2]
    with pytest.raises(DownlinkError) as e:
        await c.path.send_downlink(downlink_frame(node_id=0x0D, counter=1), c)
    assert e.value.reason == "duty_cycle"
    assert len(modem.sent) == 1 and board.tx_refused == 2
    assert t.stats()["downlink_busy"] == 1 and t.stats()["downlink_duty_cycle"] == 1


async def test_bridge_downlink_after_the_window_is_not_sent(bridge_line):
    t, board, modem, gw = bridge_line
    modem.air(RxPacket(light_frame(counter=1), -97, 29))
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    later = t.monotonic() + 0.3  # RX1 (0.3 s after the uplink here) has passed, on the transport's clock
    t.monotonic = lambda: later
    with pytest.raises(DownlinkError) as e:
        await r.path.send_downlink(downlink_frame(), r)
    assert e.value.reason == "too_late" and modem.sent == []


async def test_bridge_unplugged_during_a_downlink(bridge_line, tmp_path):
    t, board, modem, gw = bridge_line
    modem.air(RxPacket(light_frame(counter=1), -97, 29))
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    send = asyncio.create_task(r.path.send_downlink(downlink_frame(), r))
    await gw.wait(lambda: bm.TX in board.port.host_messages)  # the request is with the bridge
    board.port.dev.unplug()
    with pytest.raises(DownlinkError) as e:
        await asyncio.wait_for(send, 3)
    assert e.value.reason == "disconnected"


async def test_a_port_in_the_wrong_mode_says_so(tmp_path, gw):
    dev = PtyDevice(tmp_path / "ttyMIX")
    wired = SerialTransport(gw.pipeline, str(dev.link), mode="wired", reconnect_min=0.02, reconnect_max=0.05)
    await wired.start()
    try:
        await wired.wait_connected(3)
        rx = bm.encode_rx(1000, 868_100_000, 9, 125_000, -90, 10, light_frame(counter=1))
        dev.write(framing.encode(rx) + framing.encode(bm.encode_status(1, 0, 0, 0, 0, 868_100_000, 9, 125_000, "b")))
        await gw.wait(lambda: gw.rejected("serial").get("wrong_mode") == 2)
        assert gw.seen.uplinks == []
    finally:
        await wired.stop()
        dev.close()


async def test_auto_mode_takes_wired_frames_and_bridge_messages_on_one_port(tmp_path, gw):
    dev = PtyDevice(tmp_path / "ttyAUTO")
    t = SerialTransport(gw.pipeline, str(dev.link), reconnect_min=0.02, reconnect_max=0.05)
    await t.start()
    try:
        await t.wait_connected(3)
        rx = bm.encode_rx(1000, 868_300_000, 10, 125_000, -90, 10, light_frame(node_id=2, counter=1))
        bad = bytes([bm.RX, 1, 2])  # an RX message cut short
        dev.write(
            framing.encode(light_frame(node_id=1, counter=1))
            + framing.encode(rx)
            + framing.encode(bad)
            + framing.encode(bytes([bm.TX]) + bytes(20))
        )  # a host-to-bridge message echoed back
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
        assert [(r.transport, r.sf) for r in gw.seen.receptions] == [("serial", None), ("bridge", 10)]
        await gw.wait(lambda: gw.rejected("bridge").get("malformed") == 2)
    finally:
        await t.stop()
        dev.close()


async def test_a_bridge_that_knows_the_time_dates_its_frames(tmp_path, gw):
    """TIME (SPEC §10) maps the bridge's counter to Unix time: RX are dated by their tmst, not on arrival."""
    dev = PtyDevice(tmp_path / "ttyTIME")
    # trust_time: the simulator's virtual clock, far from this machine's (the test below is the default)
    t = SerialTransport(
        gw.pipeline, str(dev.link), mode="bridge", reconnect_min=0.02, reconnect_max=0.05, trust_time=True
    )
    await t.start()
    try:
        await t.wait_connected(3)
        t0 = 1_781_524_800  # 2026-06-15 12:00:00 UTC, far from this machine's clock

        def rx(tmst: int, counter: int) -> bytes:
            return framing.encode(bm.encode_rx(tmst, 868_100_000, 9, 125_000, -90, 10, light_frame(counter=counter)))

        status = framing.encode(bm.encode_status(5, 0, 0, 0, 0, 868_100_000, 9, 125_000, "sim"))
        # the counter wraps between the TIME and the second frame: still dated right
        dev.write(
            status + framing.encode(bm.encode_time(0xFFFFFF00, t0, 500)) + rx(0xFFFFFF00 + 1500, 1) + rx(0x0000_0100, 2)
        )
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
        (_, r1), (_, r2) = gw.seen.uplinks
        assert r1.rx_time == pytest.approx(t0 + 2.0)
        assert r2.rx_time == pytest.approx(t0 + 0.5 + 0x200 / 1000)
        # the bridge restarted (uptime went back) without a new TIME: our clock again
        dev.write(framing.encode(bm.encode_status(0, 0, 0, 0, 0, 868_100_000, 9, 125_000, "sim")) + rx(10, 3))
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 3)
        assert abs(gw.seen.uplinks[2][1].rx_time - time.time()) < 5
        assert t.stats()["bridge_time"] == 1
    finally:
        await t.stop()
        dev.close()


async def test_a_bridge_time_far_from_the_host_clock_is_refused_and_last_seen_stays_in_the_present(tmp_path, gw):
    """Issue 20, finding 9: bridge TIME is unauthenticated. Before, a TIME of 2096 made the node's
    last_seen 2096: it could never be reported silent."""
    dev = PtyDevice(tmp_path / "ttyT2096")
    t = SerialTransport(gw.pipeline, str(dev.link), mode="bridge", reconnect_min=0.02, reconnect_max=0.05)
    await t.start()
    try:
        await t.wait_connected(3)
        y2096 = 3_976_214_400  # 2096-01-01 00:00:00 UTC

        def rx(tmst: int, counter: int) -> bytes:
            return framing.encode(bm.encode_rx(tmst, 868_100_000, 9, 125_000, -90, 10, light_frame(counter=counter)))

        dev.write(framing.encode(bm.encode_time(1000, y2096, 0)) + rx(2000, 1))
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 1)
        assert abs(gw.seen.uplinks[0][1].rx_time - time.time()) < 5
        await gw.store.drain()
        assert gw.store.node_state(0x00A1B2C3)["last_seen"] <= time.time()
        assert t.stats()["bridge_time_refused"] == 1 and t.stats().get("bridge_time", 0) == 0
        # a TIME within the bound is taken; an RX whose tmst runs far ahead of it is still not dated
        # after the present
        now = time.time()
        dev.write(framing.encode(bm.encode_time(5000, int(now), 0)) + rx(5000 + 86_400_000, 2))
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
        assert gw.seen.uplinks[1][1].rx_time <= time.time()
        assert t.stats()["bridge_time"] == 1
        from gateway.transports.serial import BRIDGE_TIME_SKEW_S

        assert BRIDGE_TIME_SKEW_S == 5.0  # the bound, named
    finally:
        await t.stop()
        dev.close()


# -- fuzz: arbitrary bytes on the line never take the transport down --------------------------


@pytest.fixture(scope="module")
def live_line(tmp_path_factory):
    loop = asyncio.new_event_loop()
    d = tmp_path_factory.mktemp("fuzz")

    async def make():
        gw = await Gateway.open(d / "gw.db")
        dev = PtyDevice(d / "ttyFUZZ")
        t = SerialTransport(gw.pipeline, str(dev.link), reconnect_min=0.02, reconnect_max=0.05)
        await t.start()
        await t.wait_connected(3)
        return gw, dev, t

    gw, dev, t = loop.run_until_complete(make())
    yield loop, gw, dev, t
    loop.run_until_complete(t.stop())
    loop.run_until_complete(gw.close())
    dev.close()
    loop.close()


chunks = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=1, max_size=300).map(framing.encode),  # well-framed garbage reaches the pipeline
        st.builds(
            lambda t, rest: framing.encode(bytes([t]) + rest),  # bridge-message-looking garbage
            st.integers(0x80, 0x9F),
            st.binary(max_size=40),
        ),
        st.builds(
            lambda c, cut: framing.encode(light_frame(node_id=0x4242, counter=c))[:cut],
            st.integers(1, 2**31),
            st.integers(0, 60),
        ),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=chunks)
def test_fuzz_serial_bytes_never_crash_the_transport(live_line, parts):
    loop, gw, dev, t = live_line
    data = b"".join(parts)
    target = t.counts["bytes"] + len(data)
    dev.write(data)

    async def consumed() -> None:
        await wait_for(lambda: t.counts["bytes"] >= target, 3, interval=0.001)
        await gw.pipeline.drain()

    loop.run_until_complete(consumed())
    assert t.connected and t.counts["internal_error"] == 0
    assert gw.rejected("serial").get("internal_error", 0) == 0


# What the fuzz tries, in a fixed sample: the follow-up below sends it itself, so it holds in any order
HOSTILE = [
    b"\x13\x37" * 60,  # noise with no delimiter
    framing.encode(light_frame(node_id=0x5151, counter=7))[:20],  # a frame cut short
    framing.encode(bytes(300)),  # longer than any frame
    framing.encode(bytes([0x80]) + b"\x01\x02"),  # bridge-message-looking garbage
    b"\x00\x00\x00",  # empty frames
]


def test_after_the_fuzz_a_good_frame_still_goes_through(live_line):
    loop, gw, dev, t = live_line
    dev.write(b"".join(HOSTILE))
    raw = light_frame(node_id=0x5151, counter=1)
    dev.write(framing.encode(raw))
    loop.run_until_complete(gw.seen.wait(lambda: any(r.raw == raw for r in gw.seen.receptions), 3))
    assert t.connected and t.counts["internal_error"] == 0
