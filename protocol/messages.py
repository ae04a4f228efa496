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

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

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

# Value ranges, inclusive, defined here once: the node refuses a CONFIG value
# or COMMAND argument outside them (firmware/), the gateway's op catalogue
# (gateway/ops.py) and the technician's tool (lumeau/ble_tools.py) show them.
# A report at most every 30 s keeps a node inside 1 % duty cycle at SF12 with
# room for retries; at least once a day keeps it visible. STATUS is rarer.
REPORT_MIN_S = 30  # CFG_REPORT_INTERVAL, OP_SET_INTERVAL
REPORT_MAX_S = 86400
STATUS_MIN_S = 300  # CFG_STATUS_INTERVAL
STATUS_MAX_S = 7 * 86400
TX_POWER_MIN = 2  # CFG_TX_POWER, dBm
TX_POWER_MAX = 14  # EU868 ERP limit for the g1 sub-band (25 mW ~ 14 dBm)
SF_MIN = 7  # CFG_SF: EU868's data rates (the modem itself goes down to SF6)
SF_MAX = 12
# CFG_CONFIRM_ALARMS: 0..1
LAMP_POWER_MAX_W = 2000  # CFG_LAMP_POWER, 1..this
DAY_MIN = 1440  # CFG_MAX_RUN and OP_OPEN_ZONE 1..this min; a schedule's start below it, its minutes 0..it
OVERRIDE_MAX_S = 86400  # OP_SET_LEVEL duration, 0..this (0 cancels)
OFFSET_MAX_MIN = 720  # OP_SET_PROFILE step offset, -this..this
PROFILE_STEPS_MAX = 8  # OP_SET_PROFILE steps of 3 args (a COMMAND carries at most 24 args)
ZONES_MAX = 4  # irrigation zones, numbered from 1
RAIN_DELAY_MAX_H = 720  # OP_RAIN_DELAY hours, 0..this (0 cancels)
SCHEDULE_GROUPS_MAX = 6  # OP_SET_SCHEDULE groups of 4 args
SCHEDULE_MAX = 8  # schedule entries an irrigation node keeps

# Freshness of downlinks (SPEC §4, "Freshness"). A TIME from the gateway
# answers an uplink (T_ANSWERS): the node takes it only when it names one of
# its last TIME_UPLINKS uplinks and that uplink went out at most TIME_SLACK_S
# ago, so a TIME held back by an attacker sets the clock late by at most that.
# A TIME that answers nothing (a commissioning tool's) never moves a clock that
# is set back by more than TIME_SLACK_S. CONFIG and COMMAND carry an expiry.
TIME_SLACK_S = 5
TIME_UPLINKS = 4

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

# Body keys, per message type: what each field's small integer means (units
# and scales in the comments of SPECS below and in protocol/expand.py).
# HELLO
H_FIRMWARE = const(0)
H_KIND = const(1)
H_CAPS = const(2)
H_CONFIG_HASH = const(3)
H_RESET = const(4)
# LIGHT
L_LEVEL = const(0)
L_POWER = const(1)
L_ENERGY = const(2)
L_STATE = const(3)
L_HOURS = const(4)
L_PRESENCE = const(5)
L_CURRENT = const(6)
# IRRIGATION
IR_MOISTURE = const(0)
IR_VALVES = const(1)
IR_FLOW = const(2)
IR_VOLUME = const(3)
IR_RAIN = const(4)
IR_SUPPLY = const(5)
IR_FAULTS = const(6)
# EVENT
E_CODE = const(0)
E_SEVERITY = const(1)
E_VALUE = const(2)
E_TIME = const(3)
E_ACTIVE = const(4)
E_ZONE = const(5)
# STATUS
S_UPTIME = const(0)
S_TIME = const(1)
S_RSSI = const(2)
S_SNR = const(3)
S_SUPPLY = const(4)
S_TEMP = const(5)
S_HEAP = const(6)
S_QUEUE = const(7)
S_ALARMS = const(8)
# CMD_ACK
CA_ID = const(0)
CA_RESULT = const(1)
CA_VALUE = const(2)
# COMMAND
C_ID = const(0)
C_OP = const(1)
C_ARGS = const(2)
C_EXPIRES = const(3)
# CONFIG
CF_SETTINGS = const(0)
CF_EXPIRES = const(1)
CF_ECHO = const(2)
# TIME
T_UNIX = const(0)
T_MS = const(1)
T_ANSWERS = const(2)
T_ECHO = const(3)
# ACK
A_COUNTER = const(0)
A_QUEUED = const(1)

# (key, kind, lo, hi, required, maxlen)
SPECS = {
    HELLO: (
        (H_FIRMWARE, T, 1, 16, True, 0),  # firmware version
        (H_KIND, U, 1, 3, True, 0),  # node kind
        (H_CAPS, U, 0, U16, False, 0),  # capabilities bitmask
        (H_CONFIG_HASH, B, 4, 4, False, 0),  # config hash: first 4 bytes of SHA-256 of the config
        (H_RESET, U, 0, 7, False, 0),  # reset cause
    ),
    LIGHT: (
        (L_LEVEL, U, 0, 100, False, 0),  # level %
        (L_POWER, U, 0, U16, False, 0),  # power, 0.1 W
        (L_ENERGY, U, 0, U32, False, 0),  # energy counter, Wh
        (L_STATE, U, 0, U16, False, 0),  # state and fault flags
        (L_HOURS, U, 0, U32, False, 0),  # burning hours, h
        (L_PRESENCE, U, 0, U16, False, 0),  # presence detections since the last report
        (L_CURRENT, U, 0, U16, False, 0),  # lamp current, mA
    ),
    IRRIGATION: (
        (IR_MOISTURE, V, 0, 200, False, 4),  # soil moisture per zone, 0.5 % volumetric; 255: no sensor
        (IR_VALVES, U, 0, U8, False, 0),  # valve states
        (IR_FLOW, U, 0, U16, False, 0),  # flow, 0.1 L/min
        (IR_VOLUME, U, 0, U32, False, 0),  # volume counter, L
        (IR_RAIN, U, 0, U8, False, 0),  # rain flags
        (IR_SUPPLY, U, 0, U16, False, 0),  # supply voltage, mV
        (IR_FAULTS, U, 0, U16, False, 0),  # fault flags
    ),
    EVENT: (
        (E_CODE, U, 0, U16, True, 0),  # event code
        (E_SEVERITY, U, 0, 3, False, 0),  # severity
        (E_VALUE, I, I32_MIN, I32_MAX, False, 0),  # value, scaled per code
        (E_TIME, U, 0, U32, False, 0),  # time, Unix s (0: unknown)
        (E_ACTIVE, U, 0, 1, False, 0),  # 1 raised, 0 cleared
        (E_ZONE, U, 0, 4, False, 0),  # zone (0: the node as a whole)
    ),
    STATUS: (
        (S_UPTIME, U, 0, U32, False, 0),  # uptime, s
        (S_TIME, U, 0, U32, False, 0),  # node time, Unix s (0: unknown)
        (S_RSSI, I, -200, 0, False, 0),  # RSSI of the last downlink, dBm
        (S_SNR, I, -80, 60, False, 0),  # SNR of the last downlink, 0.25 dB (the modem's step)
        (S_SUPPLY, U, 0, U16, False, 0),  # supply voltage, mV
        (S_TEMP, I, -40, 125, False, 0),  # board temperature, degC
        (S_HEAP, U, 0, U32, False, 0),  # free heap, 16-byte blocks (MicroPython's GC block)
        (S_QUEUE, U, 0, U8, False, 0),  # uplink queue length
        (S_ALARMS, U, 0, U8, False, 0),  # open alarms
    ),
    CMD_ACK: (
        (CA_ID, U, 0, U32, True, 0),  # command id
        (CA_RESULT, U, 0, 15, True, 0),  # result
        (CA_VALUE, I, I32_MIN, I32_MAX, False, 0),  # value applied, per op
    ),
    COMMAND: (
        (C_ID, U, 0, U32, True, 0),  # command id
        (C_OP, U, 1, U8, True, 0),  # op
        (C_ARGS, A, I32_MIN, I32_MAX, False, 24),  # args
        (C_EXPIRES, U, 0, U32, False, 0),  # expires, Unix s (0: never)
    ),
    CONFIG: (
        (CF_SETTINGS, M, 0, U32, True, 16),  # partial config: CFG_* -> value
        (CF_EXPIRES, U, 0, U32, False, 0),  # expires, Unix s (0: never)
        (CF_ECHO, B, 8, 8, False, 0),  # a commissioning session's nonce (BLE tool only)
    ),
    TIME: (
        (T_UNIX, U, 0, U32, True, 0),  # Unix time, s
        (T_MS, U, 0, 999, False, 0),  # ms
        (T_ANSWERS, U, 0, U32, False, 0),  # the uplink counter this TIME answers
        (T_ECHO, B, 8, 8, False, 0),  # a commissioning session's nonce (BLE tool only)
    ),
    ACK: (
        (A_COUNTER, U, 0, U32, True, 0),  # acknowledged uplink counter
        (A_QUEUED, U, 0, U8, False, 0),  # downlinks still queued for the node
    ),
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
