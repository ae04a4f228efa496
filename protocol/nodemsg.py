# The node's half of protocol/messages.py: the field table and the body
# checks, encode and decode, and nothing else. A node loads this module, never
# messages.py: every public name costs a node heap (a globals entry and its
# name), so the numbers the firmware needs are private const() copies in each
# firmware module (checked against messages.py by tests/test_node_consts.py).
# messages.py re-exports validate, encode, decode and MessageError and builds
# its SPECS from the table below, so there is one table and one checker.
#
# The table is one bytes object (a few hundred bytes on the node, where a
# dict of tuples took some 2.5 KB). Per message type: the type, the number of
# fields, then 4 bytes per field in key order: key; kind (messages.U, I, B, T,
# A, M, V) plus 8 when required; maxlen; the index of its (lo, hi) pair in
# _RANGES. Units and scales: protocol/SPEC.md, protocol/expand.py.

from protocol import nodecbor as cbor

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_U = const(0)
_I = const(1)
_B = const(2)
_T = const(3)
_A = const(4)
_M = const(5)
_V = const(6)
_REQUIRED = const(8)
_NO_VALUE = const(0xFF)

TABLE = (
    # HELLO (1), 6 fields
    b"\x01\x06"
    b"\x00\x0b\x00\x00"  # 0 T required: firmware version
    b"\x01\x08\x00\x01"  # 1 U required: node kind
    b"\x02\x00\x00\x02"  # 2 U: capabilities bitmask
    b"\x03\x02\x00\x03"  # 3 B: config hash: first 4 bytes of SHA-256 of the config
    b"\x04\x00\x00\x04"  # 4 U: reset cause
    b"\x05\x02\x00\x14"  # 5 B: bundle id: first 3 bytes of the running release's (SPEC §13)
    # LIGHT (2), 7 fields
    b"\x02\x07"
    b"\x00\x00\x00\x05"  # 0 U: level %
    b"\x01\x00\x00\x02"  # 1 U: power, 0.1 W
    b"\x02\x00\x00\x06"  # 2 U: energy counter, Wh
    b"\x03\x00\x00\x02"  # 3 U: state and fault flags
    b"\x04\x00\x00\x06"  # 4 U: burning hours, h
    b"\x05\x00\x00\x02"  # 5 U: presence detections since the last report
    b"\x06\x00\x00\x02"  # 6 U: lamp current, mA
    # IRRIGATION (3), 7 fields
    b"\x03\x07"
    b"\x00\x06\x04\x07"  # 0 V: soil moisture per zone, 0.5 % volumetric; 255: no sensor
    b"\x01\x00\x00\x08"  # 1 U: valve states
    b"\x02\x00\x00\x02"  # 2 U: flow, 0.1 L/min
    b"\x03\x00\x00\x06"  # 3 U: volume counter, L
    b"\x04\x00\x00\x08"  # 4 U: rain flags
    b"\x05\x00\x00\x02"  # 5 U: supply voltage, mV
    b"\x06\x00\x00\x02"  # 6 U: fault flags
    # EVENT (4), 6 fields
    b"\x04\x06"
    b"\x00\x08\x00\x02"  # 0 U required: event code
    b"\x01\x00\x00\x09"  # 1 U: severity
    b"\x02\x01\x00\x0a"  # 2 I: value, scaled per code
    b"\x03\x00\x00\x06"  # 3 U: time, Unix s (0: unknown)
    b"\x04\x00\x00\x0b"  # 4 U: 1 raised, 0 cleared
    b"\x05\x00\x00\x0c"  # 5 U: zone (0: the node as a whole)
    # STATUS (5), 9 fields
    b"\x05\x09"
    b"\x00\x00\x00\x06"  # 0 U: uptime, s
    b"\x01\x00\x00\x06"  # 1 U: node time, Unix s (0: unknown)
    b"\x02\x01\x00\x0d"  # 2 I: RSSI of the last downlink, dBm
    b"\x03\x01\x00\x0e"  # 3 I: SNR of the last downlink, 0.25 dB (the modem's step)
    b"\x04\x00\x00\x02"  # 4 U: supply voltage, mV
    b"\x05\x01\x00\x0f"  # 5 I: board temperature, degC
    b"\x06\x00\x00\x06"  # 6 U: free heap, 16-byte blocks (MicroPython's GC block)
    b"\x07\x00\x00\x08"  # 7 U: uplink queue length
    b"\x08\x00\x00\x08"  # 8 U: open alarms
    # CMD_ACK (6), 3 fields
    b"\x06\x03"
    b"\x00\x08\x00\x06"  # 0 U required: command id
    b"\x01\x08\x00\x10"  # 1 U required: result
    b"\x02\x01\x00\x0a"  # 2 I: value applied, per op
    # COMMAND (8), 4 fields
    b"\x08\x04"
    b"\x00\x08\x00\x06"  # 0 U required: command id
    b"\x01\x08\x00\x11"  # 1 U required: op
    b"\x02\x04\x18\x0a"  # 2 A: args (at most 24)
    b"\x03\x00\x00\x06"  # 3 U: expires, Unix s (0: never)
    # CONFIG (9), 4 fields
    b"\x09\x04"
    b"\x00\x0d\x10\x06"  # 0 M required: partial config: CFG_* -> value (at most 16)
    b"\x01\x00\x00\x06"  # 1 U: expires, Unix s (0: never)
    b"\x02\x02\x00\x13"  # 2 B: a commissioning session's nonce (BLE tool only)
    b"\x03\x02\x00\x15"  # 3 B: a calendar fragment: index, total, part (protocol/nodecal.py)
    # TIME (10), 4 fields
    b"\x0a\x04"
    b"\x00\x08\x00\x06"  # 0 U required: Unix time, s
    b"\x01\x00\x00\x12"  # 1 U: ms
    b"\x02\x00\x00\x06"  # 2 U: the uplink counter this TIME answers
    b"\x03\x02\x00\x13"  # 3 B: a commissioning session's nonce (BLE tool only)
    # ACK (11), 2 fields
    b"\x0b\x02"
    b"\x00\x08\x00\x06"  # 0 U required: acknowledged uplink counter
    b"\x01\x00\x00\x08"  # 1 U: downlinks still queued for the node
)
# (lo, hi) pairs, inclusive; the table's last byte per field is an index here.
RANGES = (
    1, 16,  # 0
    1, 3,  # 1
    0, 0xFFFF,  # 2
    4, 4,  # 3
    0, 7,  # 4
    0, 100,  # 5
    0, 0xFFFFFFFF,  # 6
    0, 200,  # 7
    0, 0xFF,  # 8
    0, 3,  # 9
    -0x80000000, 0x7FFFFFFF,  # 10
    0, 1,  # 11
    0, 4,  # 12
    -200, 0,  # 13
    -80, 60,  # 14
    -40, 125,  # 15
    0, 15,  # 16
    1, 0xFF,  # 17
    0, 999,  # 18
    8, 8,  # 19
    3, 3,  # 20
    3, 26,  # 21
)  # fmt: skip


class MessageError(ValueError):
    """A body that is not a valid message of its type."""


def _bad(mtype, key, why):
    return MessageError("message type %d key %d: %s" % (mtype, key, why))


def _check_int(mtype, key, v, lo, hi):
    # bool is an int subclass on CPython; True must not pass as 1
    if type(v) is not int:
        raise _bad(mtype, key, "expected an integer, got %s" % type(v).__name__)
    if v < lo or v > hi:
        raise _bad(mtype, key, "%d out of range %d..%d" % (v, lo, hi))


def _check(mtype, key, kind, lo, hi, maxlen, v):
    if kind == _U or kind == _I:
        _check_int(mtype, key, v, lo, hi)
    elif kind == _V:
        if type(v) is not bytes:
            raise _bad(mtype, key, "expected bytes, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d values, at most %d" % (len(v), maxlen))
        for x in v:
            if (x < lo or x > hi) and x != _NO_VALUE:
                raise _bad(mtype, key, "value %d out of range %d..%d" % (x, lo, hi))
    elif kind == _B or kind == _T:
        if type(v) is not (bytes if kind == _B else str):
            raise _bad(mtype, key, "expected %s, got %s" % ("bytes" if kind == _B else "text", type(v).__name__))
        n = len(v)
        if n < lo or n > hi:
            raise _bad(mtype, key, "length %d out of range %d..%d" % (n, lo, hi))
    elif kind == _A:
        if type(v) is not list and type(v) is not tuple:
            raise _bad(mtype, key, "expected an array, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d items, at most %d" % (len(v), maxlen))
        for x in v:
            _check_int(mtype, key, x, lo, hi)
    else:  # _M
        if type(v) is not dict:
            raise _bad(mtype, key, "expected a map, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d entries, at most %d" % (len(v), maxlen))
        for k in v:
            _check_int(mtype, key, k, 0, 23)
            _check_int(mtype, key, v[k], lo, hi)


def validate(mtype, body):
    """Return the known fields of `body` (a dict), checked; unknown keys dropped."""
    t = TABLE
    i = 0
    while i < len(t) and t[i] != mtype:
        i += 2 + 4 * t[i + 1]
    if i >= len(t):
        raise MessageError("unknown message type %d" % mtype)
    if type(body) is not dict:
        raise MessageError("message type %d: body must be a map" % mtype)
    out = {}
    for j in range(i + 2, i + 2 + 4 * t[i + 1], 4):
        key = t[j]
        if key in body:
            v = body[key]
            r = 2 * t[j + 3]
            _check(mtype, key, t[j + 1] & 7, RANGES[r], RANGES[r + 1], t[j + 2], v)
            out[key] = v
        elif t[j + 1] & _REQUIRED:
            raise _bad(mtype, key, "required field missing")
    return out


def encode(mtype, body):
    """Check `body` (int keys, air units) and return its deterministic CBOR."""
    checked = validate(mtype, body)
    if len(checked) != len(body):
        # A sender knows its own catalogue: an extra key is a bug, not a newer peer.
        for k in body:
            if k not in checked:
                raise MessageError("message type %d: unknown key %r" % (mtype, k))
    return cbor.dumps(checked)


def decode(mtype, data):
    """Decode and check a frame body; malformed CBOR is a MessageError too."""
    try:
        body = cbor.loads(data)
    except ValueError as e:  # cbor.CBORDecodeError
        raise MessageError("message type %d: %s" % (mtype, e))
    return validate(mtype, body)
