# The node's half of protocol/calendar.py: a compiled calendar's checks and the
# reassembly of its CONFIG fragments (SPEC §5, "Calendars"). It runs only while
# a calendar arrives, so the runtime imports it for one fragment and drops it
# again (firmware.unload): its code never stays in a node's heap. What a
# calendar means at run time (which profile tonight, which program today, the
# local time) is firmware/calendar.py.
#
# A compiled calendar ("blob", at most CAL_MAX bytes):
#   0 version (1)   1 node kind (1 lighting, 2 irrigation)
#   2 standard UTC offset, signed, 15-minute units   3 daylight saving: 0 none, 1 EU
#   4 profiles P (lighting 0..4, irrigation 0)        5 rules R (0..16)
#   P profiles: step count n (1..8), then n steps of 3 bytes:
#     anchor << 3 | (offset + 720) >> 8, (offset + 720) & 0xFF, level %
#   R rules, in priority order: a 7-byte "when", then the action
#     when: sel (bits 0-1 day type: 0 weekdays, 1 every N days, 2 odd, 3 even days of the
#           month; bits 2-3 range: 0 all year, 1 yearly month*32+day, 2 days since 1970),
#           mask (weekdays, bit 0 Monday) or N, remainder (N days: day % N == it),
#           range from (u16, big-endian), range to (u16, inclusive)
#     lighting action: 1 byte, the profile index or 0xFF (the node's own profile)
#     irrigation action: zone (1..4), start minute (u16, local), minutes (u16)
# A CONFIG fragment (key CF_CALENDAR): index, total, then its part of
# hash (4 bytes: SHA-256 of the blob, truncated) + blob.

import hashlib

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.calendar numbers, as private consts (tests/test_node_consts.py checks them)
_CAL_VERSION = const(1)
_CAL_MAX = const(256)
_FRAG_MAX = const(26)
_FRAGS_MAX = const(11)
_HASH_LEN = const(4)
_PROFILES_MAX = const(4)
_STEPS_MAX = const(8)
_RULES_MAX = const(16)
_KIND_LIGHTING = const(1)
_KIND_IRRIGATION = const(2)
_ZONES_MAX = const(4)


def check(data, kind):
    """Raise ValueError (saying why) unless `data` is a valid calendar for a node of `kind`."""
    n = len(data)
    if n < 6 or n > _CAL_MAX:
        raise ValueError("length %d not in 6..%d" % (n, _CAL_MAX))
    if data[0] != _CAL_VERSION or data[1] != kind:
        raise ValueError("version %d kind %d" % (data[0], data[1]))
    o = data[2] - 256 if data[2] > 127 else data[2]
    if o < -48 or o > 56 or data[3] > 1:
        raise ValueError("time zone")
    np, nr = data[4], data[5]
    if np > (_PROFILES_MAX if kind == _KIND_LIGHTING else 0) or nr > _RULES_MAX:
        raise ValueError("%d profiles %d rules" % (np, nr))
    i = 6
    for _ in range(np):
        if i >= n or not 1 <= data[i] <= _STEPS_MAX:
            raise ValueError("profile at %d" % i)
        for j in range(i + 1, i + 1 + 3 * data[i], 3):
            if j + 3 > n or data[j] >> 3 > 2 or (data[j] & 7) << 8 | data[j + 1] > 1440 or data[j + 2] > 100:
                raise ValueError("step at %d" % j)
        i += 1 + 3 * data[i]
    size = 8 if kind == _KIND_LIGHTING else 12
    if n != i + nr * size:
        raise ValueError("length %d, rules need %d" % (n, i + nr * size))
    for i in range(i, n, size):  # noqa: B020 (the rules start where the profiles end)
        sel, p, rem = data[i], data[i + 1], data[i + 2]
        t, r = sel & 3, sel >> 2
        a, b = data[i + 3] << 8 | data[i + 4], data[i + 5] << 8 | data[i + 6]
        if r == 1:  # month * 32 + day, both ends
            for v in (a, b):
                if not (1 <= v >> 5 <= 12 and 1 <= v & 31 <= 31):
                    r = 3
        if (
            r > 2
            or (t == 0 and not 0 < p < 128)
            or (t == 1 and not rem < p)
            or (t > 1 and p | rem)
            or (t != 1 and rem)
            or (r == 0 and a | b)
            or (r == 2 and a > b)
        ):
            raise ValueError("rule at %d" % i)
        if kind == _KIND_LIGHTING:
            if data[i + 7] >= np and data[i + 7] != 0xFF:
                raise ValueError("rule at %d: profile" % i)
        elif (
            not 1 <= data[i + 7] <= _ZONES_MAX
            or data[i + 8] << 8 | data[i + 9] >= 1440
            or not 1 <= data[i + 10] << 8 | data[i + 11] <= 1440
        ):
            raise ValueError("rule at %d: program" % i)


def join(parts, data, kind):
    """Take one CONFIG fragment (`data`) into `parts` (a list, the reassembly so far; empty to start).

    Returns the hash (4 bytes) followed by the calendar once it is whole and
    valid, else None. A fragment out of place raises ValueError and leaves
    `parts` as it was; a whole calendar that fails its hash or its checks
    raises and empties `parts`: nothing of it is kept.
    """
    n = len(data)
    if n < 3 or n > _FRAG_MAX:
        raise ValueError("fragment length %d" % n)
    i, total = data[0], data[1]
    if not 0 < total <= _FRAGS_MAX or i >= total or (i == 0 and n <= 2 + _HASH_LEN):
        raise ValueError("fragment %d of %d" % (i, total))
    if i == 0:
        parts[:] = [None] * total  # a first fragment starts afresh
    elif len(parts) != total:
        raise ValueError("fragment %d of %d: no first fragment" % (i, total))
    parts[i] = bytes(data[2:])
    if None in parts:
        return None
    data = b"".join(parts)
    del parts[:]
    if hashlib.sha256(data[_HASH_LEN:]).digest()[:_HASH_LEN] != data[:_HASH_LEN]:
        raise ValueError("hash mismatch")
    check(data[_HASH_LEN:], kind)
    return data
