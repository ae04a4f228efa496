# A LoRa modem shaped like micropython-lib's async `lora` driver (the seam under
# firmware/radio_lora.py): configure(dict) changes the keys given, await send(packet),
# await recv(timeout_ms) -> RxPacket or None, standby() ends a recv() under way (its
# "soft IRQ": the recv returns None). Plain MicroPython (and CPython), on a SimHAL clock.
#
# The air is the test's: `air(frame, channel)` is a transmission starting now on
# (freq_khz, sf) with downlink IQ; the modem hears it only while a recv() is under way
# on that channel with inverted IQ, as a real receiver. `rx1` holds the gateway's
# answers to the next uplink: one is heard by a recv() started on the channel of the
# last uplink (its receive window). The driver serves one operation at a time (its
# AsyncModem blocks each on one ThreadSafeFlag): an operation or a configure() while
# another is under way is counted in `overlaps`, which a test asserts stays 0.
import asyncio

from firmware.aio import wait_ms
from protocol import lora


class RxPacket(bytearray):
    def __init__(self, data, rssi=-95, snr=24):
        super().__init__(data)
        self.rssi = rssi
        self.snr = snr
        self.crc_error = False
        self.ticks_ms = 0


class AirModem:
    def __init__(self, hal):
        self.hal = hal
        self.cfg = {}
        self.op = None  # "send" / "recv": the operation under way
        self.overlaps = 0
        self.sent = []  # (ticks_ms, channel, frame)
        self.recvs = []  # (channel, timeout_ms) of each recv() started
        self.rx1 = []
        self.heard = 0
        self.lost = 0
        self.cut = 0  # recv() calls ended by standby()
        self.fail_sends = 0  # the next sends raise OSError
        self._ev = asyncio.Event()
        self._got = None

    def channel(self):
        return (self.cfg["freq_khz"], self.cfg["sf"])

    def _enter(self, op):
        if self.op is not None:
            self.overlaps += 1
        self.op = op

    def configure(self, cfg):
        if self.op is not None:
            self.overlaps += 1
        self.cfg.update(cfg)

    async def send(self, packet):
        if self.fail_sends:  # the driver raising (an SPI fault): nothing on the air
            self.fail_sends -= 1
            raise OSError(5)
        self._enter("send")
        c = self.cfg
        self.sent.append((self.hal.ticks_ms(), self.channel(), bytes(packet)))
        t = lora.airtime_ms(len(packet), c["sf"], int(c["bw"]) * 1000, c["coding_rate"], c["preamble_len"])
        await self.hal.sleep_ms(int(t) + 1)
        self.op = None
        return self.hal.ticks_ms()

    async def recv(self, timeout_ms=None):
        self._enter("recv")
        ch = self.channel()
        self.recvs.append((ch, timeout_ms))
        self._got = None
        self._ev = asyncio.Event()
        if self.rx1 and self.sent and ch == self.sent[-1][1]:
            await self.hal.sleep_ms(30)  # the downlink's preamble, in the window
            self._got = self.rx1.pop(0)
        else:
            await wait_ms(self.hal, self._ev, timeout_ms)
        self.op = None
        got = self._got
        self._got = None
        if got is None:
            return None
        self.heard += 1
        return RxPacket(got)

    def standby(self):
        if self.op == "recv":
            self.cut += 1
            self._ev.set()  # the recv() under way returns None

    def air(self, frame, channel):
        """A downlink transmitted now on `channel`: True if this modem hears it."""
        if self.op == "recv" and self.channel() == channel and self.cfg["invert_iq_rx"] and self._got is None:
            self._got = bytes(frame)
            self._ev.set()
            return True
        self.lost += 1
        return False
