# What a stored calendar (protocol/nodecal.py has its format, SPEC §5
# "Calendars") says at run time: the local time, which lighting profile a
# night takes, which irrigation programs start at a minute. Loaded only on a
# node that holds a calendar. `cal` is what the runtime keeps (node.schedule[0]):
# the 4-byte hash, then the calendar; it is read in place, nothing is built
# from it. Every name here costs a node heap (MicroPython's qstr pool), so
# there are few.
#
# Dates: days since 1970-01-01 (a Thursday), the civil calendar (proleptic
# Gregorian; the inverse of Howard Hinnant's days_from_civil). Local time:
# UTC + the standard offset, + 1 h in EU summer time (from 01:00 UTC on the
# last Sunday of March to 01:00 UTC on the last Sunday of October, Directive
# 2000/84/EC), the only daylight-saving rule the gateway compiles to.


def civil(day):
    """(year, month, day of month) of `day` (days since 1970-01-01)."""
    z = day + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, doy - (153 * mp + 2) // 5 + 1


def offset(cal, t):
    """Local time minus UTC, in seconds, at Unix time t."""
    o = cal[6]
    o = (o - 256 if o > 127 else o) * 900
    if cal[7]:
        day = t // 86400
        _, m, d = civil(day)
        if 3 < m < 10:
            return o + 3600
        if m == 3 or m == 10:
            # the last Sunday (weekday 6, Monday 0) of the month: 31 minus the days from it to the 31st
            last = 31 - ((day + 3 + 31 - d) % 7 + 1) % 7
            after = d > last or (d == last and t % 86400 >= 3600)
            if after == (m == 3):
                return o + 3600
    return o


def _when(cal, i, day):
    sel = cal[i]
    p = cal[i + 1]
    t = sel & 3
    _, m, d = civil(day)
    if t == 0:
        if not p >> (day + 3) % 7 & 1:
            return False
    elif t == 1:
        if day % p != cal[i + 2]:
            return False
    elif t == 2:  # odd days, not the 31st nor 29 February (OpenSprinkler: no two days in a row)
        if not d & 1 or d == 31 or (m == 2 and d == 29):
            return False
    elif d & 1:
        return False
    sel >>= 2
    a = cal[i + 3] << 8 | cal[i + 4]
    p = cal[i + 5] << 8 | cal[i + 6]
    if sel == 1:
        d += m * 32
        return a <= d <= p if a <= p else d >= a or d <= p  # a season over New Year wraps
    return sel == 0 or a <= day <= p


def profile(cal, day):
    """The steps [(anchor, offset min, level %), ...] of the night starting on local date
    `day`, from the first rule that matches; None: the node's own profile."""
    i = 10
    for _ in range(cal[8]):
        i += 1 + 3 * cal[i]
    for _ in range(cal[9]):
        if _when(cal, i, day):
            p = cal[i + 7]
            if p == 0xFF:
                return None
            i = 10
            for _ in range(p):
                i += 1 + 3 * cal[i]
            p = []
            for k in range(i + 1, i + 1 + 3 * cal[i], 3):
                p.append((cal[k] >> 3, ((cal[k] & 7) << 8 | cal[k + 1]) - 720, cal[k + 2]))
            return p
        i += 8
    return None


def schedule(cal, day, minute, done):
    """[(zone, minutes), ...] of the irrigation programs starting at local `minute` of `day`:
    every rule that matches; `done` (one slot per rule) keeps each to once a local day."""
    p = []
    i = 10
    for k in range(cal[9]):
        if cal[i + 8] << 8 | cal[i + 9] == minute and done[k] != day and _when(cal, i, day):
            done[k] = day
            p.append((cal[i + 7], cal[i + 10] << 8 | cal[i + 11]))
        i += 12
    return p
