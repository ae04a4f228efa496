# The radio interface the runtime talks to, a UART implementation (wired
# node, RS-485, or a transparent modem) and an in-memory link for tests.
# LoRa modems are in firmware/radio_lora.py; the simulator brings its own.
#
#   await radio.send(frame)        returns when the frame is on the air / wire
#   await radio.recv(timeout_ms)   -> (frame bytes, rssi dBm, snr in 0.25 dB) or None
#   radio.airtime_ms(n)            time on air of n bytes at the current settings
#   radio.band                     EU868 sub-band index for protocol.lora.DutyCycle,
#                                  or None on a wire (no duty cycle)
#   radio.max_frame                largest frame allowed now (LoRa: by SF, SPEC §7)
#   radio.continuous               True: can hear a downlink at any time (a wire);
#                                  False: only in the receive window after an uplink
#   radio.configure(sf=, tx_power=)  CONFIG over the air; a wire ignores it
#
# recv() never raises for what arrives: garbage is dropped and counted.

import asyncio

from protocol import nodelora as lora

from firmware.aio import wait_ms

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_MAX_LEN = const(255)  # protocol.frame.MAX_LEN (tests/test_node_consts.py checks it)
_UART_POLL_MS = const(20)  # a 255-byte frame takes 22 ms at 115200 Bd: one poll per frame or so
_UART_READ = const(64)  # bytes read per poll
_QUEUE_MAX = const(8)  # frames buffered by a receiver that is not listening yet; older are dropped
_RECENT_MAX = const(4)  # frames a MemoryRadio keeps of those it sent (a test looks at the last ones)


class Radio:
    band = None
    max_frame = 255
    continuous = False

    async def send(self, frame):
        raise NotImplementedError

    async def recv(self, timeout_ms):
        raise NotImplementedError

    def airtime_ms(self, n):
        raise NotImplementedError

    def configure(self, sf=None, tx_power=None):
        pass


class UartRadio(Radio):
    """Frames over a serial line, COBS + CRC-16 (SPEC §8), one frame per packet.

    `port` is anything with write(bytes) and a non-blocking read(n) returning
    bytes, or None / b"" when nothing waits: machine.UART(timeout=0) on a
    board, a pyserial port with timeout=0, a pseudo-terminal in tests.
    Reception polls every _UART_POLL_MS while someone listens.
    """

    continuous = True

    def __init__(self, hal, port, baud=115200, poll_ms=_UART_POLL_MS):
        # protocol.serial is imported here, not with the module: a LoRa node (or the simulator's
        # memory link) never loads its code and names (every name costs heap, bench/README.md)
        from protocol import serial as framing

        self.hal = hal
        self.port = port
        self.baud = baud
        self.poll_ms = poll_ms
        self.decoder = framing.Decoder(_MAX_LEN)
        self._out = bytearray(framing.max_encoded_len(_MAX_LEN))
        self._queue = []  # at most _QUEUE_MAX frames
        self.dropped = 0

    def airtime_ms(self, n):
        from protocol import serial as framing

        # 10 bits a byte (8N1), COBS and CRC overhead included
        return framing.max_encoded_len(n) * 10000 // self.baud

    async def send(self, frame):
        from protocol import serial as framing

        k = framing.encode_into(frame, self._out)
        self.port.write(memoryview(self._out)[:k])
        await self.hal.sleep_ms(self.airtime_ms(len(frame)))

    def _poll(self):
        data = self.port.read(_UART_READ)
        if data:
            for f in self.decoder.feed(data):
                self._queue.append(f)
                if len(self._queue) > _QUEUE_MAX:
                    del self._queue[0]
                    self.dropped += 1

    async def recv(self, timeout_ms):
        waited = 0
        while True:
            self._poll()
            if self._queue:
                return (self._queue.pop(0), 0, 0)
            if waited >= timeout_ms:
                return None
            await self.hal.sleep_ms(self.poll_ms)
            waited += self.poll_ms


class MemoryRadio(Radio):
    """One end of an in-memory link (make a pair with memory_link); for tests.

    sf=None makes a wire: frames queue (up to _QUEUE_MAX) until read, and
    take 1 ms. With an SF it is a LoRa radio: sending takes the time on air
    at that SF (accounted by the runtime against the duty cycle of `band`),
    and unless `continuous` (a gateway, always listening) a frame is heard
    only if a recv() is in progress when its transmission starts: a receive
    window. `rssi`/`snr` are what this end reports for what it hears; `sent`
    counts frames this end sent, `recent` keeps the last _RECENT_MAX of them
    (not all: a list of every frame grew the node's heap by about 64 B an
    uplink, forever), `lost` counts those nobody heard.
    """

    def __init__(self, hal, sf=9, continuous=False, freq_hz=868100000, rssi=-90, snr=20):
        self.hal = hal
        self.sf = sf
        self.continuous = continuous or sf is None
        self.band = None if sf is None else lora.band_for(freq_hz)
        self.max_frame = _MAX_LEN if sf is None else lora.max_payload(sf)
        self.rssi = rssi
        self.snr = snr
        self.peer = None
        self._queue = []  # at most _QUEUE_MAX frames
        self._arrived = asyncio.Event()
        self._listening = 0
        self._locked = 0  # transmissions to us in progress that we started hearing
        self.sent = 0
        self.recent = []  # the last _RECENT_MAX frames sent, oldest first
        self.lost = 0
        self.tx_power = 14

    def airtime_ms(self, n):
        if self.sf is None:
            return 1
        return int(lora.airtime_ms(n, self.sf) + 0.999)

    def configure(self, sf=None, tx_power=None):
        if sf is not None and self.sf is not None:
            self.sf = sf
            self.max_frame = lora.max_payload(sf)
        if tx_power is not None:
            self.tx_power = tx_power

    async def send(self, frame):
        frame = bytes(frame)
        self.sent += 1
        recent = self.recent
        recent.append(frame)
        if len(recent) > _RECENT_MAX:
            del recent[0]
        peer = self.peer
        if peer is None or not (peer.continuous or peer._listening > 0):
            await self.hal.sleep_ms(self.airtime_ms(len(frame)))
            self.lost += 1
            return
        peer._locked += 1
        await self.hal.sleep_ms(self.airtime_ms(len(frame)))
        peer._locked -= 1
        peer._queue.append(frame)
        if len(peer._queue) > _QUEUE_MAX:
            del peer._queue[0]
        peer._arrived.set()

    async def recv(self, timeout_ms):
        self._listening += 1
        try:
            if not self._queue:
                self._arrived.clear()
                ok = await wait_ms(self.hal, self._arrived, timeout_ms)
                while not ok and self._locked:
                    # a frame started inside the window: the modem stays locked on it
                    self._arrived.clear()
                    ok = await wait_ms(self.hal, self._arrived, 10000)
            if self._queue:
                return (self._queue.pop(0), self.rssi, self.snr)
            return None
        finally:
            self._listening -= 1


def memory_link(node_hal, gateway_hal, sf=9, **kw):
    """(node end, gateway end): the gateway end always listens; sf=None makes a wire."""
    a = MemoryRadio(node_hal, sf=sf, **kw)
    b = MemoryRadio(gateway_hal, sf=sf, continuous=True, **kw)
    a.peer = b
    b.peer = a
    return a, b
