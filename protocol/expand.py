# Names, units and scales of the message catalogue, for people and platforms.
#
# The gateway turns a checked body (protocol.messages.decode) into named
# fields with units; names can also be turned back into keys for downlinks
# composed through the API. Kept out of protocol/messages.py so nodes do not
# load these strings into their heap. Units are UCUM-style symbols.

from protocol import messages as m

# (key, name, unit or None, divisor: physical value = air value / divisor)
FIELDS = {
    m.HELLO: (
        (0, "firmware", None, 1),
        (1, "kind", None, 1),
        (2, "capabilities", None, 1),
        (3, "config_hash", None, 1),
        (4, "reset_cause", None, 1),
        (5, "bundle", None, 1),
    ),
    m.LIGHT: (
        (0, "level", "%", 1),
        (1, "power", "W", 10),
        (2, "energy", "Wh", 1),
        (3, "state", None, 1),
        (4, "burning_hours", "h", 1),
        (5, "presence_count", None, 1),
        (6, "current", "mA", 1),
    ),
    m.IRRIGATION: (
        (0, "soil_moisture", "%", 2),
        (1, "valves", None, 1),
        (2, "flow", "L/min", 10),
        (3, "volume", "L", 1),
        (4, "rain", None, 1),
        (5, "supply_voltage", "mV", 1),
        (6, "faults", None, 1),
    ),
    m.EVENT: (
        (0, "code", None, 1),
        (1, "severity", None, 1),
        (2, "value", None, 1),
        (3, "time", "s", 1),
        (4, "active", None, 1),
        (5, "zone", None, 1),
    ),
    m.STATUS: (
        (0, "uptime", "s", 1),
        (1, "time", "s", 1),
        (2, "rssi", "dBm", 1),
        (3, "snr", "dB", 4),
        (4, "supply_voltage", "mV", 1),
        (5, "temperature", "Cel", 1),
        (6, "free_heap", "By", 1 / 16),
        (7, "queue_length", None, 1),
        (8, "open_alarms", None, 1),
    ),
    m.CMD_ACK: ((0, "command_id", None, 1), (1, "result", None, 1), (2, "value", None, 1)),
    m.COMMAND: ((0, "command_id", None, 1), (1, "op", None, 1), (2, "args", None, 1), (3, "expires", "s", 1)),
    m.CONFIG: (
        (0, "settings", None, 1),
        (1, "expires", "s", 1),
        (2, "echo", None, 1),
        (3, "calendar_fragment", None, 1),
    ),
    m.TIME: ((0, "time", "s", 1), (1, "ms", "ms", 1), (2, "answers", None, 1), (3, "echo", None, 1)),
    m.ACK: ((0, "counter", None, 1), (1, "pending", None, 1)),
}

TYPE_NAMES = {
    m.HELLO: "hello",
    m.LIGHT: "light",
    m.IRRIGATION: "irrigation",
    m.EVENT: "event",
    m.STATUS: "status",
    m.CMD_ACK: "cmd_ack",
    m.COMMAND: "command",
    m.CONFIG: "config",
    m.TIME: "time",
    m.ACK: "ack",
}

# Bit flags, least significant bit first; None marks an unused bit.
FLAGS = {
    (m.LIGHT, 3): ("on", "lamp_failure", "over_current", "cycling", "override", "boost", "failsafe"),
    (m.IRRIGATION, 1): ("zone1", "zone2", "zone3", "zone4", None, None, None, "master"),
    (m.IRRIGATION, 4): ("rain_sensor_wet", "rain_delay"),
    (m.IRRIGATION, 6): ("leak", "burst", "no_flow", "max_runtime", "failsafe", "excess_flow"),
}

# Enumerations shown by name.
ENUMS = {
    (m.HELLO, 1): {m.KIND_LIGHTING: "lighting", m.KIND_IRRIGATION: "irrigation", m.KIND_BRIDGE: "bridge"},
    (m.HELLO, 4): {
        m.RST_POWER_ON: "power_on",
        m.RST_HARD: "hard",
        m.RST_WATCHDOG: "watchdog",
        m.RST_DEEPSLEEP: "deepsleep",
        m.RST_SOFT: "soft",
        m.RST_BROWNOUT: "brownout",
    },
    (m.EVENT, 0): {
        m.EV_LAMP_FAILURE: "lamp_failure",
        m.EV_OVER_CURRENT: "over_current",
        m.EV_CYCLING: "cycling",
        m.EV_LIGHT_FAILSAFE: "light_failsafe",
        m.EV_LEAK: "leak",
        m.EV_BURST: "burst",
        m.EV_NO_FLOW: "no_flow",
        m.EV_MAX_RUNTIME: "max_runtime",
        m.EV_IRRIGATION_FAILSAFE: "irrigation_failsafe",
        m.EV_EXCESS_FLOW: "excess_flow",
        m.EV_WATCHDOG_RESET: "watchdog_reset",
        m.EV_LOW_SUPPLY: "low_supply",
        m.EV_STORAGE_FAULT: "storage_fault",
        m.EV_APP_EXCEPTION: "app_exception",
        m.EV_CALENDAR: "calendar",
    },
    (m.EVENT, 1): {m.SEV_INFO: "info", m.SEV_WARNING: "warning", m.SEV_ALARM: "alarm", m.SEV_CRITICAL: "critical"},
    (m.CMD_ACK, 1): {
        m.RES_OK: "ok",
        m.RES_UNKNOWN_OP: "unknown_op",
        m.RES_BAD_ARGS: "bad_args",
        m.RES_BUSY: "busy",
        m.RES_REFUSED: "refused",
        m.RES_EXPIRED: "expired",
        m.RES_FAILED: "failed",
    },
    (m.COMMAND, 1): {
        m.OP_SET_LEVEL: "set_level",
        m.OP_SET_PROFILE: "set_profile",
        m.OP_CLEAR_FAULT: "clear_fault",
        m.OP_OPEN_ZONE: "open_zone",
        m.OP_CLOSE_ALL: "close_all",
        m.OP_RAIN_DELAY: "rain_delay",
        m.OP_SET_SCHEDULE: "set_schedule",
        m.OP_SET_INTERVAL: "set_interval",
        m.OP_REBOOT: "reboot",
        m.OP_JOIN_GROUP: "join_group",
    },
}


def flag_names(names, v):
    """The names of the bits set in `v` (names[i] for bit i; None: a bit without a name)."""
    return [n for i, n in enumerate(names) if n is not None and (v >> i) & 1]


def scale(v, div):
    """An air value divided by its scale: an int when it is a whole number, else a float."""
    x = v / div
    return int(x) if x == int(x) else x


def _physical(v, div):
    if isinstance(v, bytes):  # packed per-zone values (messages.V)
        return [None if x == m.NO_VALUE else scale(x, div) for x in v]
    if div == 1:
        return v
    return scale(v, div)


def expand(mtype, body):
    """Named fields with units of a checked body: {name: {"value": v, "unit": u}}.

    Scaled fields become physical numbers, bitmasks lists of flag names,
    enumerations their names (an unknown code stays a number), bytes hex.
    """
    out = {}
    for key, name, unit, div in FIELDS[mtype]:
        if key not in body:
            continue
        v = body[key]
        flags = FLAGS.get((mtype, key))
        enum = ENUMS.get((mtype, key))
        if flags is not None:
            v = flag_names(flags, v)
        elif enum is not None:
            v = enum.get(v, v)
        elif isinstance(v, bytes) and m.SPECS[mtype][key][1] == m.B:
            v = v.hex()
        else:
            v = _physical(v, div)
        out[name] = {"value": v, "unit": unit}
    return out


def keys_for(mtype, named):
    """Turn {name: air value} into {key: air value}, for bodies composed by name."""
    by_name = {name: key for key, name, _unit, _div in FIELDS[mtype]}
    out = {}
    for name, v in named.items():
        if name not in by_name:
            raise m.MessageError("message type %d has no field %r" % (mtype, name))
        out[by_name[name]] = v
    return out
