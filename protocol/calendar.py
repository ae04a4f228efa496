# Compiled calendars on the wire (SPEC §5, "Calendars"): the compact rules a
# node follows, built from what the gateway compiled (gateway/calendars.py reads
# the authored files), and their CONFIG fragments. The format, byte by byte, is
# in protocol/nodecal.py (the node's half: checks and reassembly, re-exported
# here) and in SPEC.md. Runs on MicroPython and CPython like all of protocol/.

import hashlib

from protocol.nodecal import check, join  # noqa: F401

CAL_VERSION = 1
CAL_MAX = 256  # bytes of a compiled calendar
FRAG_MAX = 26  # bytes of one fragment, its 2-byte header included: a CONFIG of 51 B (SPEC §5)
FRAGS_MAX = 11  # fragments of one calendar: 11 x 24 B carry the 4-byte hash + CAL_MAX
HASH_LEN = 4
PROFILES_MAX = 4
STEPS_MAX = 8
RULES_MAX = 16
LIGHT_RULE_LEN = 8
PROGRAM_LEN = 12

# "when" selectors (bits 0-1: day type, bits 2-3: range)
DAYS_WEEKDAYS = 0  # mask: bit 0 Monday .. bit 6 Sunday
DAYS_INTERVAL = 1  # every N days: days since 1970 % N == remainder
DAYS_ODD = 2  # odd days of the month, not the 31st nor 29 February (OpenSprinkler)
DAYS_EVEN = 3
RANGE_ALL = 0
RANGE_YEARLY = 1  # month * 32 + day .. month * 32 + day, wrapping over New Year
RANGE_DATED = 2  # days since 1970 .. days since 1970
OWN_PROFILE = 0xFF  # a lighting rule's action: the node's own profile (SET_PROFILE or provisioned)
DST_NONE = 0
DST_EU = 1  # 01:00 UTC last Sunday of March .. 01:00 UTC last Sunday of October, +1 h


def when(days=DAYS_WEEKDAYS, param=None, rem=0, rng=RANGE_ALL, lo=0, hi=0):
    """The 7-byte "when" of a rule; param (weekday mask or N) defaults to every weekday."""
    if param is None:
        param = 0x7F if days == DAYS_WEEKDAYS else 0
    return bytes((days | rng << 2, param, rem, lo >> 8, lo & 0xFF, hi >> 8, hi & 0xFF))


def step(anchor, offset_min, level):
    o = offset_min + 720
    return bytes((anchor << 3 | o >> 8, o & 0xFF, level))


def encode(kind, tz_quarters, dst, profiles, rules):
    """A compiled calendar: `profiles` a list of step lists [(anchor, offset min, level %)],
    `rules` a list of (when bytes, action bytes) in priority order; checked before returned."""
    out = bytearray((CAL_VERSION, kind, tz_quarters & 0xFF, dst, len(profiles), len(rules)))
    for p in profiles:
        out.append(len(p))
        for a, o, lv in p:
            out += step(a, o, lv)
    for w, act in rules:
        out += w + act
    blob = bytes(out)
    check(blob, kind)
    return blob


def light_action(profile):
    return bytes((profile,))


def program_action(zone, start_min, minutes):
    return bytes((zone, start_min >> 8, start_min & 0xFF, minutes >> 8, minutes & 0xFF))


def digest(blob):
    """A calendar's hash: the first 4 bytes of its SHA-256 (EVENT calendar, the first fragment)."""
    return hashlib.sha256(blob).digest()[:HASH_LEN]


def hash_value(h):
    """A calendar's hash as EVENT calendar's value (messages.EV_CALENDAR): a signed 32-bit int."""
    v = int.from_bytes(h, "big")
    return v - (1 << 32) if v >= 1 << 31 else v


def value_hash(v):
    """The hash back from EVENT calendar's value."""
    return (v & 0xFFFFFFFF).to_bytes(4, "big")


def fragments(blob):
    """The CONFIG fragments of a calendar: (index, total) + its share of hash + blob."""
    data = digest(blob) + blob
    size = FRAG_MAX - 2
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    if len(parts) > FRAGS_MAX:
        raise ValueError("calendar of %d bytes needs %d fragments, at most %d" % (len(blob), len(parts), FRAGS_MAX))
    return [bytes((i, len(parts))) + p for i, p in enumerate(parts)]
