# The message catalogue: what travels inside a frame's CBOR body.
#
# Every body is a CBOR map with small integer keys (one byte each on the air)
# and integer values in scaled units (no floats on the air: smaller, exact,
# and a node without an FPU does not need one). This module holds only what
# both ends need to build and check a body: type numbers, keys, ranges.
# Names, units and scales for people live in protocol/expand.py, so a node
# does not carry them in its heap. SPEC.md lists both, key by key.
#
# Forward compatibility: a receiver ignores keys it does not know, so a newer
# node can add fields without breaking an older gateway. A known key with a
# wrong type or an out-of-range value is an error (MessageError).

from protocol import cbor

# Message types (frame vt bits 3-0). Bit 3 set = downlink.
HELLO = 1
LIGHT = 2
IRRIGATION = 3
EVENT = 4
STATUS = 5
CMD_ACK = 6
COMMAND = 8
CONFIG = 9
TIME = 10
ACK = 11

# Node kinds (HELLO kind).
KIND_LIGHTING = 1
KIND_IRRIGATION = 2
KIND_BRIDGE = 3

# Reset causes (HELLO rst), the union of what machine.reset_cause() reports.
RST_POWER_ON = 0
RST_HARD = 1
RST_WATCHDOG = 2
RST_DEEPSLEEP = 3
RST_SOFT = 4
RST_BROWNOUT = 5

# LIGHT state flags.
LS_ON = 0x01
LS_LAMP_FAILURE = 0x02
LS_OVER_CURRENT = 0x04
LS_CYCLING = 0x08
LS_OVERRIDE = 0x10
LS_BOOST = 0x20
LS_FAILSAFE = 0x40  # no valid time: running dusk-to-dawn on its own

# IRRIGATION valve bits: zones 1-4 are bits 0-3, the master valve bit 7.
VALVE_MASTER = 0x80
# IRRIGATION rain flags.
RAIN_SENSOR_WET = 0x01
RAIN_DELAY_ACTIVE = 0x02
# IRRIGATION fault flags.
IF_LEAK = 0x01
IF_BURST = 0x02
IF_NO_FLOW = 0x04
IF_MAX_RUNTIME = 0x08
IF_FAILSAFE = 0x10
IF_EXCESS_FLOW = 0x20

# EVENT codes.
EV_LAMP_FAILURE = 1
EV_OVER_CURRENT = 2
EV_CYCLING = 3
EV_LIGHT_FAILSAFE = 4
EV_LEAK = 10
EV_BURST = 11
EV_NO_FLOW = 12
EV_MAX_RUNTIME = 13
EV_IRRIGATION_FAILSAFE = 14
EV_EXCESS_FLOW = 15
EV_WATCHDOG_RESET = 20
EV_LOW_SUPPLY = 21
EV_STORAGE_FAULT = 22
EV_APP_EXCEPTION = 23

# EVENT severities.
SEV_INFO = 0
SEV_WARNING = 1
SEV_ALARM = 2
SEV_CRITICAL = 3

# COMMAND operations and their arguments (args, a flat list of ints).
OP_SET_LEVEL = 1  # [level %, duration s]: an override that expires
OP_SET_PROFILE = 2  # [anchor, offset min, level %, ...] steps; anchors ANCHOR_*
OP_CLEAR_FAULT = 3  # []
OP_OPEN_ZONE = 4  # [zone 1-4, minutes]; the node caps it at its hard maximum
OP_CLOSE_ALL = 5  # []
OP_RAIN_DELAY = 6  # [hours]
OP_SET_SCHEDULE = 7  # [zone, weekday mask (bit 0 Monday), start min after midnight, minutes, ...]
OP_SET_INTERVAL = 8  # [report interval s]
OP_REBOOT = 9  # []

# set_profile anchors: what a step's offset counts from.
ANCHOR_SUNSET = 0
ANCHOR_SUNRISE = 1
ANCHOR_MIDNIGHT = 2  # night midpoint, halfway between sunset and the next sunrise

# CMD_ACK results.
RES_OK = 0
RES_UNKNOWN_OP = 1
RES_BAD_ARGS = 2
RES_BUSY = 3
RES_REFUSED = 4  # valid but unsafe now (e.g. open a valve during a burst)
RES_EXPIRED = 5
RES_FAILED = 6

# CONFIG keys (a partial configuration: only the keys present change).
CFG_REPORT_INTERVAL = 0
CFG_STATUS_INTERVAL = 1
CFG_TX_POWER = 2
CFG_SF = 3
CFG_LAMP_POWER = 4
CFG_MAX_RUN = 5
CFG_CONFIRM_ALARMS = 6

# Field kinds.
U = 0  # unsigned int in [lo, hi]
I = 1  # signed int in [lo, hi]
B = 2  # byte string, length in [lo, hi]
T = 3  # text string, length in [lo, hi]
A = 4  # array of ints in [lo, hi], at most `maxlen` items
M = 5  # map of small uint keys to ints in [lo, hi], at most `maxlen` entries
V = 6  # byte string of at most `maxlen` values in [lo, hi], or NO_VALUE
# Packing small per-zone values into a byte string costs 1 byte each where a
# CBOR array of ints would cost up to 3: it is what keeps IRRIGATION in 51 bytes.

NO_VALUE = 0xFF

U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFFFFFF
I32_MIN = -0x80000000
I32_MAX = 0x7FFFFFFF

# (key, kind, lo, hi, required, maxlen)
_HELLO = (
    (0, T, 1, 16, True, 0),  # firmware version
    (1, U, 1, 3, True, 0),  # node kind
    (2, U, 0, U16, False, 0),  # capabilities bitmask
    (3, B, 4, 4, False, 0),  # config hash: first 4 bytes of SHA-256 of the config
    (4, U, 0, 7, False, 0),  # reset cause
)
_LIGHT = (
    (0, U, 0, 100, False, 0),  # level %
    (1, U, 0, U16, False, 0),  # power, 0.1 W
    (2, U, 0, U32, False, 0),  # energy counter, Wh
    (3, U, 0, U16, False, 0),  # state and fault flags
    (4, U, 0, U32, False, 0),  # burning hours, h
    (5, U, 0, U16, False, 0),  # presence detections since the last report
    (6, U, 0, U16, False, 0),  # lamp current, mA
)
_IRRIGATION = (
    (0, V, 0, 200, False, 4),  # soil moisture per zone, 0.5 % volumetric; 255: no sensor
    (1, U, 0, U8, False, 0),  # valve states
    (2, U, 0, U16, False, 0),  # flow, 0.1 L/min
    (3, U, 0, U32, False, 0),  # volume counter, L
    (4, U, 0, U8, False, 0),  # rain flags
    (5, U, 0, U16, False, 0),  # supply voltage, mV
    (6, U, 0, U16, False, 0),  # fault flags
)
_EVENT = (
    (0, U, 0, U16, True, 0),  # event code
    (1, U, 0, 3, False, 0),  # severity
    (2, I, I32_MIN, I32_MAX, False, 0),  # value, scaled per code
    (3, U, 0, U32, False, 0),  # time, Unix s (0: unknown)
    (4, U, 0, 1, False, 0),  # 1 raised, 0 cleared
    (5, U, 0, 4, False, 0),  # zone (0: the node as a whole)
)
_STATUS = (
    (0, U, 0, U32, False, 0),  # uptime, s
    (1, U, 0, U32, False, 0),  # node time, Unix s (0: unknown)
    (2, I, -200, 0, False, 0),  # RSSI of the last downlink, dBm
    (3, I, -80, 60, False, 0),  # SNR of the last downlink, 0.25 dB (the modem's step)
    (4, U, 0, U16, False, 0),  # supply voltage, mV
    (5, I, -40, 125, False, 0),  # board temperature, degC
    (6, U, 0, U32, False, 0),  # free heap, 16-byte blocks (MicroPython's GC block)
    (7, U, 0, U8, False, 0),  # uplink queue length
    (8, U, 0, U8, False, 0),  # open alarms
)
_CMD_ACK = (
    (0, U, 0, U32, True, 0),  # command id
    (1, U, 0, 15, True, 0),  # result
    (2, I, I32_MIN, I32_MAX, False, 0),  # value applied, per op
)
_COMMAND = (
    (0, U, 0, U32, True, 0),  # command id
    (1, U, 1, U8, True, 0),  # op
    (2, A, I32_MIN, I32_MAX, False, 24),  # args
    (3, U, 0, U32, False, 0),  # expires, Unix s (0: never)
)
_CONFIG = (
    (0, M, 0, U32, True, 16),  # partial config: CFG_* -> value
)
_TIME = (
    (0, U, 0, U32, True, 0),  # Unix time, s
    (1, U, 0, 999, False, 0),  # ms
)
_ACK = (
    (0, U, 0, U32, True, 0),  # acknowledged uplink counter
    (1, U, 0, U8, False, 0),  # downlinks still queued for the node
)

SPECS = {
    HELLO: _HELLO, LIGHT: _LIGHT, IRRIGATION: _IRRIGATION, EVENT: _EVENT,
    STATUS: _STATUS, CMD_ACK: _CMD_ACK, COMMAND: _COMMAND, CONFIG: _CONFIG,
    TIME: _TIME, ACK: _ACK,
}


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
    if kind == U or kind == I:
        _check_int(mtype, key, v, lo, hi)
    elif kind == V:
        if type(v) is not bytes:
            raise _bad(mtype, key, "expected bytes, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d values, at most %d" % (len(v), maxlen))
        for x in v:
            if (x < lo or x > hi) and x != NO_VALUE:
                raise _bad(mtype, key, "value %d out of range %d..%d" % (x, lo, hi))
    elif kind == B or kind == T:
        if type(v) is not (bytes if kind == B else str):
            raise _bad(mtype, key, "expected %s, got %s" % ("bytes" if kind == B else "text", type(v).__name__))
        n = len(v)
        if n < lo or n > hi:
            raise _bad(mtype, key, "length %d out of range %d..%d" % (n, lo, hi))
    elif kind == A:
        if type(v) is not list and type(v) is not tuple:
            raise _bad(mtype, key, "expected an array, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d items, at most %d" % (len(v), maxlen))
        for x in v:
            _check_int(mtype, key, x, lo, hi)
    else:  # M
        if type(v) is not dict:
            raise _bad(mtype, key, "expected a map, got %s" % type(v).__name__)
        if len(v) > maxlen:
            raise _bad(mtype, key, "%d entries, at most %d" % (len(v), maxlen))
        for k in v:
            _check_int(mtype, key, k, 0, 23)
            _check_int(mtype, key, v[k], lo, hi)


def validate(mtype, body):
    """Return the known fields of `body` (a dict), checked; unknown keys dropped."""
    spec = SPECS.get(mtype)
    if spec is None:
        raise MessageError("unknown message type %d" % mtype)
    if type(body) is not dict:
        raise MessageError("message type %d: body must be a map" % mtype)
    out = {}
    for key, kind, lo, hi, required, maxlen in spec:
        if key in body:
            v = body[key]
            _check(mtype, key, kind, lo, hi, maxlen, v)
            out[key] = v
        elif required:
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
    except cbor.CBORDecodeError as e:
        raise MessageError("message type %d: %s" % (mtype, e))
    return validate(mtype, body)


def is_alarm(mtype, body):
    """An EVENT the node sends confirmed (SPEC §6): severity alarm or critical (body key 1)."""
    return mtype == EVENT and body.get(1, 0) >= SEV_ALARM
