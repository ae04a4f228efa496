# A LoRaWAN modem driven by AT commands over a UART (RAK3172 with RUI3
# firmware; the same module set as RAK's RUI3 AT command manual): the node's
# radio when the city already runs a LoRaWAN network (ChirpStack, SPEC §14).
# Imported only by a node whose config says radio.type "lorawan": a node on
# Lumeau's own radio never loads it.
#
# What the modem says, one line each (CR LF):
#   AT+SEND=<port>:<hex>   -> OK | AT_BUSY_ERROR | AT_NO_NETWORK_JOINED | AT_PARAM_ERROR | ...
#   AT+JOIN=1:0:10:8       -> OK, then +EVT:JOINED or +EVT:JOIN_FAILED_...
#   +EVT:TX_DONE           the uplink left (+EVT:SEND_CONFIRMED_OK/_FAILED for confirmed ones)
#   +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>   a downlink (RX_2, RX_B, RX_C alike)
#
# The frame (SPEC §14): FPort = the frame's vt byte, FRMPayload = the frame
# from its counter on; the node id rides in the DevEUI, so a downlink is
# rebuilt with this node's id, then verified by the runtime like any other.
# The modem runs the LoRaWAN MAC: join, FCnt, AppSKey encryption, the
# network's ADR and the regional duty cycle. So `band` is None (the runtime
# does not account a duty cycle the modem already enforces) and configure()
# ignores SF and power: on LoRaWAN the network server sets them.
#
# recv() never raises for what arrives: lines that are not the modem's, or
# downlinks on another port, are dropped and counted.

from binascii import hexlify, unhexlify

from protocol import nodelora as lora

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_ELIDED = const(5)  # protocol/lorawan.py: vt and node id ride in FPort and DevEUI
_PORT_MIN = const(0x20)  # protocol/lorawan.py PORT_MIN, PORT_MAX
_PORT_MAX = const(0x3F)
_FRM_BUDGET = const(51)  # protocol/lorawan.py FRM_BUDGET: EU868 DR0-DR2, without FOpts
_LORAWAN_OVERHEAD = const(13)  # MHDR, DevAddr, FCtrl, FCnt, FPort, MIC
_POLL_MS = const(20)
_READ = const(64)  # bytes read per poll
_LINE_MAX = const(600)  # the longest line: a 255-byte downlink in hex and its header
_RX_MAX = const(4)  # downlinks kept until read; older are dropped
_CMD_MS = const(2000)  # the modem answers a command within this
_TX_MS = const(20000)  # TX_DONE within this: SF12 air time, both receive windows, retries
_JOIN_MS = const(90000)  # 8 join attempts 10 s apart, and their air time
_RX_WINDOW_MS = const(4000)  # the modem reports RX1/RX2 downlinks up to ~3 s after the uplink
_BUSY_WAIT_MS = const(500)  # AT_BUSY_ERROR: the modem's receive windows are still open
_BUSY_TRIES = const(12)
_SF_FOR_AIRTIME = const(12)  # the worst case: the modem's data rate is the network's to choose

REGIONS = {"EU868": 4, "US915": 5, "AU915": 6, "KR920": 7, "AS923": 8, "IN865": 3}  # RUI3 AT+BAND


class ModemError(Exception):
    pass


def _hex(v, n, name):
    if type(v) is not str or len(v) != 2 * n:
        raise ValueError("radio.%s: expected %d hex digits" % (name, 2 * n))
    try:
        unhexlify(v)
    except ValueError:
        raise ValueError("radio.%s: expected %d hex digits" % (name, 2 * n))
    return v.upper()


def setup_commands(r):
    """The AT commands that prepare the modem before its first join, from the config's radio section.

    The keys are optional: a modem provisioned beforehand (RAK's tools) keeps its own. The app
    key goes to the modem only; it is never in an error message."""
    region = r.get("region", "EU868")
    if region not in REGIONS:
        raise ValueError("radio.region: %r is not one of %s" % (region, ", ".join(REGIONS)))
    out = ["AT+NWM=1", "AT+NJM=1", "AT+CLASS=A", "AT+BAND=%d" % REGIONS[region], "AT+ADR=1"]
    # LoRaWAN-confirmed uplinks cost a downlink each; Lumeau confirms its alarms itself (SPEC §5)
    out.append("AT+CFM=%d" % (1 if r.get("confirmed") else 0))
    for key, cmd, n in (("dev_eui", "DEVEUI", 8), ("join_eui", "APPEUI", 8), ("app_key", "APPKEY", 16)):
        if key in r:
            out.append("AT+%s=%s" % (cmd, _hex(r[key], n, key)))
    return out


class LorawanRadio:
    """The runtime's radio interface (firmware/radio.py) over an AT-command LoRaWAN modem.

    `port` is anything with write(bytes) and a non-blocking read(n) returning bytes, or
    None / b"" when nothing waits: machine.UART(timeout=0) on a board; a simulated modem
    in tests. `setup`: AT commands sent before the first join (setup_commands)."""

    band = None
    continuous = False
    max_frame = _FRM_BUDGET + _ELIDED
    sf = None
    tx_power = None

    def __init__(self, hal, port, node_id, setup=()):
        self.hal = hal
        self.port = port
        self.node_id = node_id
        self.setup = setup
        self.joined = False
        self._id = node_id.to_bytes(4, "big")
        self._buf = bytearray()
        self._lines = []  # the modem's answers, until a command takes them
        self._rx = []  # downlinks (frame, rssi, snr), at most _RX_MAX
        self.joins = 0
        self.dropped = 0  # lines and downlinks that were not ours, or not whole

    def airtime_ms(self, n):
        return int(lora.airtime_ms(n - _ELIDED + _LORAWAN_OVERHEAD, _SF_FOR_AIRTIME) + 0.999)

    def rx_window_ms(self):
        return _RX_WINDOW_MS

    def configure(self, sf=None, tx_power=None):
        pass  # LoRaWAN: the network server sets them (its ADR, in the modem's MAC)

    # -- the UART ------------------------------------------------------------------------------

    def _poll(self):
        data = self.port.read(_READ)
        if not data:
            return
        buf = self._buf
        buf.extend(data)
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line = bytes(buf[:i]).strip()
            buf[: i + 1] = b""
            if line:
                self._line(line)
        if len(buf) > _LINE_MAX:  # no end of line in sight: noise, or a modem gone mad
            self.dropped += 1
            buf[:] = b""

    def _line(self, line):
        if line.startswith(b"+EVT:RX_"):
            self._downlink(line)
        elif len(self._lines) < 8:
            self._lines.append(line)
        else:
            self.dropped += 1

    def _downlink(self, line):
        # +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
        try:
            p = line.split(b":")
            port = int(p[5])
            payload = unhexlify(p[6])
            if not _PORT_MIN <= port <= _PORT_MAX or not payload:
                raise ValueError
            frame = bytes((port,)) + self._id + payload
            r = (frame, int(p[2]), int(p[3]) * 4)  # SNR in 0.25 dB, as every radio reports it
        except (ValueError, IndexError):
            self.dropped += 1
            return
        self._rx.append(r)
        if len(self._rx) > _RX_MAX:
            del self._rx[0]
            self.dropped += 1

    async def _expect(self, timeout_ms, prefixes):
        """The first answer line starting with one of `prefixes`, or None after timeout_ms."""
        waited = 0
        while True:
            self._poll()
            lines = self._lines
            while lines:
                line = lines.pop(0)
                for p in prefixes:
                    if line.startswith(p):
                        return line
            if waited >= timeout_ms:
                return None
            await self.hal.sleep_ms(_POLL_MS)
            waited += _POLL_MS

    async def _command(self, cmd):
        self._lines = []  # what came before belongs to no one now
        self.port.write(cmd.encode() + b"\r\n")
        line = await self._expect(_CMD_MS, (b"OK", b"AT_"))
        if line != b"OK":
            name = cmd.split("=")[0]  # never the value: AT+APPKEY=... holds a key
            raise ModemError("%s: %s" % (name, line.decode() if line else "no answer"))

    # -- the radio interface ----------------------------------------------------------------------

    async def join(self):
        for cmd in self.setup:
            await self._command(cmd)
        await self._command("AT+JOIN=1:0:10:8")
        line = await self._expect(_JOIN_MS, (b"+EVT:JOIN",))
        if line != b"+EVT:JOINED":
            raise ModemError("join: %s" % (line.decode() if line else "no answer"))
        self.joined = True
        self.joins += 1

    async def send(self, frame):
        if not self.joined:
            await self.join()
        cmd = "AT+SEND=%d:%s" % (frame[0], hexlify(frame[_ELIDED:]).decode())
        tries = _BUSY_TRIES
        while True:
            try:
                await self._command(cmd)
                break
            except ModemError as e:
                if "NO_NETWORK_JOINED" in str(e):
                    self.joined = False  # the network forgot us (a rejoin request): join at the next send
                tries -= 1
                if "BUSY" not in str(e) or tries <= 0:
                    raise
                await self.hal.sleep_ms(_BUSY_WAIT_MS)  # a frame right after a downlink: RX2 still open
        line = await self._expect(_TX_MS, (b"+EVT:TX_DONE", b"+EVT:SEND"))
        if line is None or line.endswith(b"FAILED"):
            raise ModemError("send: %s" % (line.decode() if line else "no TX_DONE"))

    async def recv(self, timeout_ms):
        waited = 0
        while True:
            self._poll()
            if self._rx:
                return self._rx.pop(0)
            if waited >= timeout_ms:
                return None
            await self.hal.sleep_ms(_POLL_MS)
            waited += _POLL_MS


def make(cfg, hal, machine=None):
    """The radio of a node whose config says radio.type "lorawan" (firmware/main.py)."""
    if machine is None:
        import machine
    r = cfg["radio"]
    u = {"id": 1, "baud": 115200}
    u.update(r.get("uart", {}))
    kw = {"baudrate": u["baud"], "timeout": 0}
    for pin in ("tx", "rx"):
        if pin in u:
            kw[pin] = u[pin]
    return LorawanRadio(hal, machine.UART(u["id"], **kw), cfg["node_id"], setup_commands(r))
