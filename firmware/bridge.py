# Radio bridge firmware: a LoRa board on the gateway's USB port (SPEC §10).
#
#   bridge = Bridge(hal, radio, port)   # radio: radio_lora.LoRaRadio(modem, bridge=True)
#   await bridge.run()                  # port: write(bytes) + non-blocking read(n)
#
# Every frame the modem hears (with a good PHY CRC) goes to the host as an
# RX message with the bridge time at which reception ended, frequency, data
# rate, RSSI and SNR; the bridge never looks inside frames and holds no keys.
# The host's TX requests are checked (EU868 channel, frame size for the data
# rate, duty cycle of the sub-band, one transmission at a time, not in the
# past nor more than TX_AHEAD_MAX_MS ahead), transmitted at the requested
# bridge time, and answered with exactly one TX_RESULT. A TX on another
# channel or data rate retunes the modem for its duration, then reception
# resumes on the receive channel. STATUS goes out at start, every
# STATUS_EVERY_MS, and on PING or RX_CONFIG. Nothing the host sends can stop
# the bridge: a bad message is counted (`host_errors`) and dropped.

import asyncio

from protocol import VERSION
from protocol import bridge_msg as bm
from protocol import nodelora as lora
from protocol import serial as framing

FIRMWARE = "bridge " + VERSION
STATUS_EVERY_MS = 60000
SERIAL_POLL_MS = 5  # host messages are read this often; a TX is due at least 1 s after its request
LISTEN_MS = 60000  # one modem recv() call; then it is simply called again
SERIAL_MAX = 300  # the longest bridge message (TX: 14 + 255) fits with room to spare
U32 = 0xFFFFFFFF


def _delta32(a, b):
    """a - b for two u32 clock values, as a signed difference (wraps like ticks_diff)."""
    d = (a - b) & U32
    return d - 0x100000000 if d & 0x80000000 else d


class Bridge:
    def __init__(self, hal, radio, port, watchdog_ms=8000):
        self.hal = hal
        self.radio = radio
        self.port = port
        self.watchdog_ms = watchdog_ms
        self.decoder = framing.Decoder(SERIAL_MAX)
        self._out = bytearray(framing.max_encoded_len(SERIAL_MAX))
        self.duty = lora.DutyCycle()
        self._rx_cfg = (radio.freq_hz, radio.sf, radio.bw_hz)
        self._tx_task = None
        self.rx_ok = 0
        self.rx_dropped = 0
        self.tx_ok = 0
        self.tx_refused = 0
        self.host_errors = 0

    def now32(self):
        return self.hal.ticks_ms() & U32

    def _write(self, msg):
        n = framing.encode_into(msg, self._out)
        self.port.write(memoryview(self._out)[:n])

    def _status(self):
        r = self.radio
        self._write(
            bm.encode_status(
                self.hal.ticks_ms() // 1000,
                self.rx_ok,
                self.rx_dropped,
                self.tx_ok,
                self.tx_refused,
                r.freq_hz,
                r.sf,
                r.bw_hz,
                FIRMWARE,
            )
        )

    async def run(self):
        hal = self.hal
        if self.watchdog_ms:
            hal.wdt_start(self.watchdog_ms)
        self._status()
        tasks = [asyncio.create_task(self._radio_loop()), asyncio.create_task(self._host_loop())]
        try:
            last = hal.ticks_ms()
            while True:
                alive = True
                for t in tasks:
                    if t.done():
                        alive = False
                if alive and self.watchdog_ms:
                    hal.wdt_feed()
                now = hal.ticks_ms()
                if now - last >= STATUS_EVERY_MS:
                    last = now
                    self._status()
                await hal.sleep_ms(self.watchdog_ms // 2 if self.watchdog_ms else STATUS_EVERY_MS)
        finally:
            for t in tasks:
                t.cancel()
            if self._tx_task is not None:
                self._tx_task.cancel()

    # -- air to host --------------------------------------------------------

    async def _radio_loop(self):
        radio = self.radio
        while True:
            before = getattr(radio, "crc_errors", 0)
            r = await radio.recv(LISTEN_MS)
            self.rx_dropped += getattr(radio, "crc_errors", 0) - before
            if r is None:
                continue
            raw, rssi, snr = r
            try:
                msg = bm.encode_rx(self.now32(), radio.freq_hz, radio.sf, radio.bw_hz, int(rssi), int(snr), raw)
            except bm.BridgeMessageError:
                self.rx_dropped += 1  # an empty or oversized packet: nothing a gateway can use
                continue
            self.rx_ok += 1
            self._write(msg)

    # -- host to air ---------------------------------------------------------

    async def _host_loop(self):
        hal = self.hal
        while True:
            data = self.port.read(64)
            if data:
                for payload in self.decoder.feed(data):
                    self._host_message(payload)
            else:
                await hal.sleep_ms(SERIAL_POLL_MS)

    def _host_message(self, payload):
        try:
            msg = bm.decode(payload)
        except bm.BridgeMessageError:
            self.host_errors += 1
            return
        t = msg[0]
        if t == bm.TX:
            self._tx_request(msg)
        elif t == bm.RX_CONFIG:
            try:
                lora.band_for(msg[1], msg[3])
                self.radio.configure(sf=msg[2], freq_hz=msg[1], bw_hz=msg[3])
                self._rx_cfg = (msg[1], msg[2], msg[3])
            except ValueError:
                self.host_errors += 1
            self._status()
        elif t == bm.PING:
            self._status()
        else:
            self.host_errors += 1  # a bridge-to-host message sent to us

    def _refuse(self, tx_id, result):
        self.tx_refused += 1
        self._write(bm.encode_tx_result(tx_id, result))

    def _tx_request(self, msg):
        _, tx_id, flags, tmst, freq, sf, bw, power, frame = msg
        try:
            band = lora.band_for(freq, bw)
            too_long = len(frame) > lora.max_payload(sf)
        except ValueError:
            return self._refuse(tx_id, bm.TX_BAD_REQUEST)
        if too_long:
            return self._refuse(tx_id, bm.TX_BAD_REQUEST)
        if self._tx_task is not None and not self._tx_task.done():
            return self._refuse(tx_id, bm.TX_BUSY)
        delay = 0
        if flags & bm.TX_TIMED:
            delay = _delta32(tmst, self.now32())
            if delay < 0:
                return self._refuse(tx_id, bm.TX_TOO_LATE)
            if delay > bm.TX_AHEAD_MAX_MS:
                return self._refuse(tx_id, bm.TX_TOO_EARLY)
        if self.duty.wait_ms(self.hal.ticks_ms() + delay, band):
            return self._refuse(tx_id, bm.TX_DUTY_CYCLE)
        self._tx_task = asyncio.create_task(self._transmit(tx_id, delay, freq, sf, bw, power, band, frame))

    async def _transmit(self, tx_id, delay, freq, sf, bw, power, band, frame):
        hal = self.hal
        radio = self.radio
        if delay:
            await hal.sleep_ms(delay)
        retune = (freq, sf, bw) != self._rx_cfg
        try:
            radio.configure(sf=sf, tx_power=power, freq_hz=freq, bw_hz=bw)
            start = hal.ticks_ms()
            await radio.send(frame)
        except Exception:
            self.tx_refused += 1
            self._write(bm.encode_tx_result(tx_id, bm.TX_RADIO_ERROR))
            return
        finally:
            if retune:
                f, s, b = self._rx_cfg
                try:
                    radio.configure(sf=s, freq_hz=f, bw_hz=b)
                except Exception:
                    pass
        self.duty.record(start, radio.airtime_ms(len(frame)), band)
        self.tx_ok += 1
        self._write(bm.encode_tx_result(tx_id, bm.TX_SENT, start))
