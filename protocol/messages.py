# The message catalogue: what travels inside a frame's CBOR body.
#
# Every body is a CBOR map with small integer keys (one byte each on the air)
# and integer values in scaled units (no floats on the air: smaller, exact,
# and a node without an FPU does not need one). This module holds what both
# ends need to build and check a body: type numbers, keys, ranges. A node
# loads only protocol/nodemsg.py (the field table, the checks, encode and
# decode, all re-exported here) and keeps private const() copies of the
# numbers it uses, so these names cost it no heap. Names, units and scales
# for people live in protocol/expand.py. SPEC.md lists both, key by key.
#
# Forward compatibility: a receiver ignores keys it does not know, so a newer
# node can add fields without breaking an older gateway. A known key with a
# wrong type or an out-of-range value is an error (MessageError).

from protocol.nodemsg import RANGES, TABLE, MessageError, decode, encode, validate  # noqa: F401

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
GROUP_COMMAND = 15  # a COMMAND body to a group address, multicast (SPEC §5 "Groups"; protocol/groupcast.py)

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
# EV_CALENDAR (info): the node holds a calendar (SPEC §5 "Calendars"); value: its 4-byte hash as a
# signed 32-bit integer (protocol/calendar.py hash_value); sent at boot, when one is stored, and
# when the first fragment of the one it holds arrives. Not in HELLO: HELLO has no byte to spare.
EV_CALENDAR = 24
# EV_APP_EXCEPTION's value: APP_EXC_TYPES index << 16 | the app's restarts (0xFFFF at most);
# the index of the exception's type name here, 0 for any other (SPEC §5).
APP_EXC_TYPES = (
    "Exception",
    "ImportError",
    "KeyError",
    "ValueError",
    "TypeError",
    "AttributeError",
    "OSError",
    "MemoryError",
    "ZeroDivisionError",
    "IndexError",
    "NameError",
    "RuntimeError",
)

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
OP_JOIN_GROUP = 10  # [addr, gen, next, w0..w3] or [addr] (leave): a group key, wrapped (SPEC §5 "Groups")

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
H_BUNDLE = const(5)
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
CF_CALENDAR = const(3)
# TIME
T_UNIX = const(0)
T_MS = const(1)
T_ANSWERS = const(2)
T_ECHO = const(3)
# ACK
A_COUNTER = const(0)
A_QUEUED = const(1)

# The field table lives in protocol/nodemsg.py (one compact table a node
# carries; the checks, encode and decode are there too). SPECS is that table
# for CPython readers: {message type: ((key, kind, lo, hi, required, maxlen), ...)}.


def _fields(table, ranges):
    specs = {}
    i = 0
    while i < len(table):
        n = table[i + 1]
        out = []
        for j in range(i + 2, i + 2 + 4 * n, 4):
            r = 2 * table[j + 3]
            out.append((table[j], table[j + 1] & 7, ranges[r], ranges[r + 1], bool(table[j + 1] & 8), table[j + 2]))
        specs[table[i]] = tuple(out)
        i += 2 + 4 * n
    return specs


SPECS = _fields(TABLE, RANGES)


def is_alarm(mtype, body):
    """An EVENT the node sends confirmed (SPEC §6): severity alarm or critical (body key 1)."""
    return mtype == EVENT and body.get(1, 0) >= SEV_ALARM
