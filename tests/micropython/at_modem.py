# A RAK3172 (RUI3 firmware) LoRaWAN modem, simulated on the far side of the
# node's UART, with the network behind it (a LoRaWAN network server and the
# Lumeau gateway as one): plain MicroPython, also runs under CPython.
#
# The node's radio (firmware/radio_lorawan.py) writes AT commands with
# write() and polls read(); the modem answers as RUI3's AT command manual
# says: OK or an AT_..._ERROR status, +EVT:JOINED after a join, +EVT:TX_DONE
# once an uplink's air time has passed, +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
# for a downlink in RX1. Timed on the node's simulated clock (hal.ticks_ms).
# Class A, as LoRaWAN has it: at most one downlink after each uplink, the
# first the network holds when RX1 opens (ChirpStack takes what the
# application enqueued until then); the others wait for the next uplinks.
# The modem is busy (AT_BUSY_ERROR) until its receive windows are over.
from binascii import hexlify, unhexlify

from protocol import frame as fr
from protocol import messages as m
from protocol.keys import NodeKeys

COMMANDS_KEPT = 64
SETTINGS = ("NWM", "NJM", "CLASS", "BAND", "ADR", "CFM", "DEVEUI", "APPEUI", "APPKEY")


class Network:
    """The network side: rebuilds each uplink's Lumeau frame (FPort = vt, DevEUI -> node id),
    verifies it with the node's key as the gateway does, answers a HELLO with a TIME."""

    def __init__(self, clock, node_id, root_hex, keep=True):
        self.keep = keep  # False: count, do not keep what was heard (memory benchmark)
        self.count = 0
        self.max_frame = 0  # the longest Lumeau frame rebuilt (FRMPayload + 5)
        self.clock = clock
        self.node_id = node_id
        self.keys = NodeKeys(node_id, bytes.fromhex(root_hex))
        self.window = fr.ReplayWindow()
        self.heard = []  # (mtype, counter, body, FRMPayload length)
        self.rejected = 0
        self.queue = []  # sealed downlink frames, next first
        self.down = 0

    def seal(self, mtype, body):
        raw = fr.seal(self.keys, mtype, self.down, m.encode(mtype, body))
        self.down += 1
        self.queue.append(raw)
        return raw

    def uplink(self, fport, payload):
        raw = bytes((fport,)) + self.node_id.to_bytes(4, "big") + payload
        try:
            f, plain = fr.unseal(self.keys, raw, self.window)
            body = m.decode(f.mtype, plain)
        except ValueError:
            self.rejected += 1
            return
        self.count += 1
        self.max_frame = max(self.max_frame, len(raw))
        if self.keep:
            self.heard.append((f.mtype, f.counter, body, len(payload)))
        if f.mtype == m.HELLO:
            self.seal(m.TIME, {0: self.clock.unix(), 2: f.counter})  # answers this uplink (SPEC §4)

    def of_type(self, mtype):
        return [h for h in self.heard if h[0] == mtype]


class AtModem:
    def __init__(self, hal, network, join_ms=6000, rssi=-97, snr=6, tx_done_first=True, keep=True):
        self.hal = hal
        self.keep = keep  # False: keep no command lines (memory benchmark: the harness's heap counts)
        self.network = network
        self.join_ms = join_ms
        self.rssi = rssi
        self.snr = snr
        self.tx_done_first = tx_done_first  # RUI3 versions differ on which event comes first
        self.joined = False
        self.settings = {}
        self.commands = []  # the first COMMANDS_KEPT command lines received (the app key masked)
        self._in = bytearray()
        self._out = []  # (due ms, bytes), in due order
        self._busy_until = 0
        self.noise = b""  # bytes to send before the next answer (a test's garbage)
        self.sends = 0

    # -- the UART, as the node sees it ---------------------------------------------------------

    def write(self, data):
        self._in.extend(data)
        while True:
            i = self._in.find(b"\r\n")
            if i < 0:
                break
            line = bytes(self._in[:i]).decode()
            self._in[: i + 2] = b""
            self._command(line)
        return len(data)

    def read(self, n):
        now = self.hal.ticks_ms()
        out = bytearray()
        while self._out and self._out[0][0] <= now and len(out) < n:
            due, data = self._out.pop(0)
            if data is None:  # an RX1 slot: what the network holds now goes down
                data = self._rx_line()
                if data is None:
                    continue
            take = n - len(out)
            out.extend(data[:take])
            if len(data) > take:
                self._out.insert(0, (due, data[take:]))
        return bytes(out) or None

    # -- the modem -----------------------------------------------------------------------------

    def _rx_line(self):
        if not self.network.queue:
            return None
        raw = self.network.queue.pop(0)
        line = "+EVT:RX_1:%d:%d:UNICAST:%d:%s" % (self.rssi, self.snr, raw[0], hexlify(raw[5:]).decode().upper())
        return line.encode() + b"\r\n"

    def _say(self, text, delay_ms=0):
        due = self.hal.ticks_ms() + delay_ms
        if text is None:
            data = None
        else:
            data = self.noise + text.encode() + b"\r\n"
            self.noise = b""
        i = len(self._out)
        while i > 0 and self._out[i - 1][0] > due:
            i -= 1
        self._out.insert(i, (due, data))

    def _command(self, line):
        name, _, value = line.partition("=")
        if self.keep and len(self.commands) < COMMANDS_KEPT:  # a week of uplinks must not grow the heap
            self.commands.append(name + "=****" if name == "AT+APPKEY" else line)
        if not name.startswith("AT+"):
            self._say("AT_ERROR")
            return
        cmd = name[3:]
        if cmd in SETTINGS:
            if not value:
                self._say("AT_PARAM_ERROR")
                return
            if cmd in ("DEVEUI", "APPEUI", "APPKEY"):
                try:
                    unhexlify(value)
                except ValueError:
                    self._say("AT_PARAM_ERROR")
                    return
            self.settings[cmd] = value
            self._say("OK")
        elif cmd == "JOIN":
            self._say("OK")
            self.joined = True
            self._say("+EVT:JOINED", self.join_ms)
        elif cmd == "SEND":
            self._send(value)
        else:
            self._say("AT_ERROR")

    def _send(self, value):
        now = self.hal.ticks_ms()
        if not self.joined:
            self._say("AT_NO_NETWORK_JOINED")
            return
        if now < self._busy_until:
            self._say("AT_BUSY_ERROR")
            return
        port, _, hexdata = value.partition(":")
        try:
            fport = int(port)
            payload = unhexlify(hexdata)
        except ValueError:
            self._say("AT_PARAM_ERROR")
            return
        if not 1 <= fport <= 223 or len(payload) > 51:  # EU868 DR0-DR2
            self._say("AT_PARAM_ERROR")
            return
        self.sends += 1
        self._say("OK")
        air = 1500  # SF12 on air, about
        self._busy_until = now + air + 3000  # until RX2 is over
        self.network.uplink(fport, payload)
        # class A: RX1 opens 1 s after the uplink; the line comes once the frame is in (about 0.4 s)
        self._say(None, air + 1000 + 400)
        self._say("+EVT:TX_DONE", air if self.tx_done_first else air + 3000)
