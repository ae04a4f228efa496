# The radio bridge's serial messages (protocol/SPEC.md §10), both directions.
#
# Shared by the bridge firmware (firmware/bridge.py, MicroPython) and the
# gateway's serial transport (CPython): build and parse, nothing else. Each
# message is the payload of one serial packet (COBS + CRC-16, SPEC §8). The
# first byte is the message type, 0x80..0x9F: never a frame's first byte
# (a v1 frame starts with 0x20..0x3F), so a bridge and a wired node on the
# wrong port setting are told apart at the first packet.

import struct

RX = 0x80  # bridge -> host: a LoRa frame heard, with reception metadata
TX_RESULT = 0x81  # bridge -> host: what became of a TX request
STATUS = 0x82  # bridge -> host: counters and settings (periodic, and on PING / RX_CONFIG)
TIME = 0x83  # bridge -> host: the Unix time its clock `tmst` stands for (only a bridge that knows the time)
TX = 0x90  # host -> bridge: transmit a frame, now or at a bridge time
RX_CONFIG = 0x91  # host -> bridge: listen on another channel / data rate
PING = 0x92  # host -> bridge: answer with STATUS

# TX flags
TX_TIMED = 0x01  # start at `tmst` (bridge ms clock); else as soon as possible

# TX_RESULT codes
TX_SENT = 0
TX_TOO_LATE = 1  # `tmst` already passed when the request was due
TX_TOO_EARLY = 2  # `tmst` more than TX_AHEAD_MAX_MS ahead
TX_DUTY_CYCLE = 3  # the sub-band is closed (EU868 off-time), nothing sent
TX_BUSY = 4  # another transmission holds the radio at that time
TX_BAD_REQUEST = 5  # frequency outside EU868, frame too long for the data rate, bad data rate
TX_RADIO_ERROR = 6

TX_AHEAD_MAX_MS = 10000  # a timed TX further ahead is refused: the host's clock mapping is wrong

BANDWIDTHS = (125000, 250000, 500000)  # data-rate byte bits 4-5

_RX_HEAD = ">BIIBhb"  # type, tmst, freq, dr, rssi, snr
_RX_LEN = 13
_TX_HEAD = ">BHBIIBb"  # type, id, flags, tmst, freq, dr, power
_TX_LEN = 14
_RES = ">BHBI"  # type, id, result, tmst of the start (0 when not sent)
_STATUS_HEAD = ">BIIIIIIB"  # type, uptime s, rx ok, rx dropped, tx ok, tx refused, freq, dr
_STATUS_LEN = 26
_RXCFG = ">BIB"  # type, freq, dr
_TIME = ">BIIH"  # type, tmst, Unix s, ms

FRAME_MAX = 255


class BridgeMessageError(ValueError):
    """A serial payload that is not a valid bridge message."""


def dr_byte(sf, bw_hz=125000):
    if not 7 <= sf <= 12:
        raise BridgeMessageError("spreading factor %r outside 7..12" % (sf,))
    for i in range(3):
        if BANDWIDTHS[i] == bw_hz:
            return sf | (i << 4)
    raise BridgeMessageError("bandwidth %r Hz not 125/250/500 kHz" % (bw_hz,))


def dr_parse(b):
    sf = b & 0x0F
    bw = (b >> 4) & 0x03
    if not 7 <= sf <= 12 or bw > 2 or b & 0xC0:
        raise BridgeMessageError("bad data-rate byte 0x%02x" % b)
    return sf, BANDWIDTHS[bw]


def _frame(frame):
    n = len(frame)
    if n < 1 or n > FRAME_MAX:
        raise BridgeMessageError("frame of %d bytes, need 1..%d" % (n, FRAME_MAX))


def encode_rx(tmst_ms, freq_hz, sf, bw_hz, rssi_dbm, snr_q, frame):
    """RX: `snr_q` in 0.25 dB steps (the modem's), `rssi_dbm` whole dBm, tmst mod 2^32."""
    _frame(frame)
    if not -128 <= snr_q <= 127 or not -32768 <= rssi_dbm <= 32767:
        raise BridgeMessageError("rssi/snr out of range")
    return struct.pack(_RX_HEAD, RX, tmst_ms & 0xFFFFFFFF, freq_hz, dr_byte(sf, bw_hz), rssi_dbm, snr_q) + bytes(frame)


def encode_tx(tx_id, frame, freq_hz, sf, bw_hz=125000, power_dbm=14, tmst_ms=None):
    """TX: immediately when tmst_ms is None, else at that bridge time."""
    _frame(frame)
    flags = 0 if tmst_ms is None else TX_TIMED
    return struct.pack(
        _TX_HEAD, TX, tx_id & 0xFFFF, flags, (tmst_ms or 0) & 0xFFFFFFFF, freq_hz, dr_byte(sf, bw_hz), power_dbm
    ) + bytes(frame)


def encode_tx_result(tx_id, result, tmst_ms=0):
    return struct.pack(_RES, TX_RESULT, tx_id & 0xFFFF, result, tmst_ms & 0xFFFFFFFF)


def encode_status(uptime_s, rx_ok, rx_dropped, tx_ok, tx_refused, freq_hz, sf, bw_hz, firmware):
    return (
        struct.pack(_STATUS_HEAD, STATUS, uptime_s, rx_ok, rx_dropped, tx_ok, tx_refused, freq_hz, dr_byte(sf, bw_hz))
        + firmware.encode()
    )


def encode_time(tmst_ms, unix_s, ms=0):
    """TIME: the bridge's clock read `tmst_ms` at Unix time `unix_s` + `ms` / 1000."""
    if not 0 <= ms <= 999 or not 0 <= unix_s <= 0xFFFFFFFF:
        raise BridgeMessageError("TIME needs 0 <= ms <= 999 and a u32 Unix time")
    return struct.pack(_TIME, TIME, tmst_ms & 0xFFFFFFFF, unix_s, ms)


def encode_rx_config(freq_hz, sf, bw_hz=125000):
    return struct.pack(_RXCFG, RX_CONFIG, freq_hz, dr_byte(sf, bw_hz))


def encode_ping():
    return bytes((PING,))


def decode(payload):
    """Parse one bridge message into a tuple whose first item is its type.

    RX        (RX, tmst_ms, freq_hz, sf, bw_hz, rssi_dbm, snr_q, frame)
    TX        (TX, tx_id, flags, tmst_ms, freq_hz, sf, bw_hz, power_dbm, frame)
    TX_RESULT (TX_RESULT, tx_id, result, tmst_ms)
    STATUS    (STATUS, uptime_s, rx_ok, rx_dropped, tx_ok, tx_refused, freq_hz, sf, bw_hz, firmware)
    TIME      (TIME, tmst_ms, unix_s, ms)
    RX_CONFIG (RX_CONFIG, freq_hz, sf, bw_hz)
    PING      (PING,)
    Raises BridgeMessageError naming what is wrong.
    """
    n = len(payload)
    if n == 0:
        raise BridgeMessageError("empty message")
    t = payload[0]
    try:
        if t == RX:
            if n < _RX_LEN + 1:
                raise BridgeMessageError("RX of %d bytes, need at least %d" % (n, _RX_LEN + 1))
            _, tmst, freq, dr, rssi, snr = struct.unpack_from(_RX_HEAD, payload, 0)
            frame = bytes(payload[_RX_LEN:])
            _frame(frame)
            sf, bw = dr_parse(dr)
            return (RX, tmst, freq, sf, bw, rssi, snr, frame)
        if t == TX:
            if n < _TX_LEN + 1:
                raise BridgeMessageError("TX of %d bytes, need at least %d" % (n, _TX_LEN + 1))
            _, tx_id, flags, tmst, freq, dr, power = struct.unpack_from(_TX_HEAD, payload, 0)
            if flags & ~TX_TIMED:
                raise BridgeMessageError("TX flags 0x%02x: unknown bits" % flags)
            frame = bytes(payload[_TX_LEN:])
            _frame(frame)
            sf, bw = dr_parse(dr)
            return (TX, tx_id, flags, tmst, freq, sf, bw, power, frame)
        if t == TX_RESULT:
            if n != 8:
                raise BridgeMessageError("TX_RESULT of %d bytes, need 8" % n)
            _, tx_id, result, tmst = struct.unpack_from(_RES, payload, 0)
            return (TX_RESULT, tx_id, result, tmst)
        if t == STATUS:
            if n < _STATUS_LEN:
                raise BridgeMessageError("STATUS of %d bytes, need at least %d" % (n, _STATUS_LEN))
            v = struct.unpack_from(_STATUS_HEAD, payload, 0)
            sf, bw = dr_parse(v[7])
            fw = bytes(payload[_STATUS_LEN:]).decode()
            return (STATUS, v[1], v[2], v[3], v[4], v[5], v[6], sf, bw, fw)
        if t == TIME:
            if n != 11:
                raise BridgeMessageError("TIME of %d bytes, need 11" % n)
            _, tmst, unix_s, ms = struct.unpack_from(_TIME, payload, 0)
            if ms > 999:
                raise BridgeMessageError("TIME milliseconds %d above 999" % ms)
            return (TIME, tmst, unix_s, ms)
        if t == RX_CONFIG:
            if n != 6:
                raise BridgeMessageError("RX_CONFIG of %d bytes, need 6" % n)
            _, freq, dr = struct.unpack_from(_RXCFG, payload, 0)
            sf, bw = dr_parse(dr)
            return (RX_CONFIG, freq, sf, bw)
        if t == PING:
            if n != 1:
                raise BridgeMessageError("PING of %d bytes, need 1" % n)
            return (PING,)
    except UnicodeError:
        raise BridgeMessageError("STATUS firmware version is not UTF-8")
    raise BridgeMessageError("unknown bridge message type 0x%02x" % t)
