"""Calendars authored at the gateway, compiled to the compact rules a node follows (issue 11).

A calendar is a TOML file (gateway/README.md, "Calendars", documents every key):

    kind = "lighting"                  # or "irrigation"
    timezone = "Europe/Paris"          # IANA name: compiled to a UTC offset + EU summer time
    nodes = ["0a000001"]               # the nodes it is for, by id ...
    groups = ["rue-merciere"]          # ... and by group (gateway/registry.py); or default = true

    [profiles]                         # lighting: named profiles, steps [anchor, offset min, level %]
    festival = [["sunset", 0, 100], ["sunset", 150, 0], ["sunset", 390, 100], ["sunrise", 0, 0]]

    [[rules]]                          # lighting: first match wins (TALQ CalendarRule priority)
    name = "Fête des Lumières"
    dates = ["2026-12-05", "2026-12-08"]
    profile = "festival"

    [[programs]]                       # irrigation: every program that matches runs (OpenSprinkler)
    zone = 1
    start = "06:00"
    minutes = 20
    days = "odd"
    season = ["05-01", "09-30"]

Days are chosen by at most one of `weekdays`, `every_days` (+ `start_date`), `days` ("odd",
"even") or `rrule` (RFC 5545 RRULE, python-dateutil), and limited by at most one of `season`
(["MM-DD", "MM-DD"], every year, may wrap over New Year), `dates` (["YYYY-MM-DD",
"YYYY-MM-DD"]) or `date`. An RRULE the node's rules express directly (FREQ=WEEKLY;BYDAY=...,
FREQ=DAILY;INTERVAL=N, FREQ=YEARLY;BYMONTH=M;BYMONTHDAY=D) becomes one recurring rule; any
other (BYEASTER, BYSETPOS, COUNT, ...) is expanded by dateutil into its dates within
`horizon_days` of the compile date, consecutive days merged into one dated rule each, so the
gateway compiles it again as time passes (the hash changes, the node gets the new rules).

Why TOML + RRULE and not an iCalendar file: the rest of the gateway's configuration is TOML,
a calendar here is a handful of rules a person edits by hand, and its errors must name the
key; RRULE, the part of iCalendar every calendar tool speaks, is accepted where recurrence
needs it, through python-dateutil (the reference implementation in Python, maintained since
2003), not a parser of our own.

Every error is a CalendarError "FILE: KEY: why".
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dateutil import rrule as du_rrule  # type: ignore[import-untyped]  # no stubs installed

from protocol import calendar as pc
from protocol import messages as m

KINDS = {"lighting": m.KIND_LIGHTING, "irrigation": m.KIND_IRRIGATION}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ANCHORS = {"sunset": m.ANCHOR_SUNSET, "sunrise": m.ANCHOR_SUNRISE, "midnight": m.ANCHOR_MIDNIGHT}
HORIZON_DAYS = 400
EPOCH = dt.date(1970, 1, 1)
_TOP = {"kind", "timezone", "nodes", "groups", "default", "horizon_days", "title", "profiles", "rules", "programs"}
_WHEN = {"name", "weekdays", "every_days", "start_date", "days", "rrule", "season", "dates", "date"}
_RULE = _WHEN | {"profile"}
_PROGRAM = _WHEN | {"zone", "start", "minutes"}
_RRULE_DAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}


class CalendarError(ValueError):
    """A calendar file that cannot be compiled: says the file, the key and why."""


@dataclass(frozen=True)
class Compiled:
    """A calendar file compiled for its nodes."""

    path: str
    name: str
    kind: int
    blob: bytes
    hash: bytes
    nodes: tuple[int, ...] = ()
    groups: tuple[str, ...] = ()
    default: bool = False
    rule_names: tuple[str, ...] = ()
    profiles: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    def fragments(self) -> list[bytes]:
        return pc.fragments(self.blob)


class _Where:
    def __init__(self, path: str) -> None:
        self.path = path

    def err(self, key: str, why: str) -> CalendarError:
        return CalendarError(f"{self.path}: {key}: {why}")


def _date(w: _Where, key: str, v: Any) -> dt.date:
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return v
    if isinstance(v, str):
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise w.err(key, f"{str(v)[:40]!r} is not a date YYYY-MM-DD")


def _month_day(w: _Where, key: str, v: Any) -> int:
    mt = re.fullmatch(r"(\d\d)-(\d\d)", v) if isinstance(v, str) else None
    if mt is not None:
        month, day = int(mt[1]), int(mt[2])
        try:
            dt.date(2000, month, day)  # a leap year: 02-29 is a day
            return month * 32 + day
        except ValueError:
            pass
    raise w.err(key, f"{str(v)[:40]!r} is not a day of the year MM-DD")


def _int(w: _Where, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise w.err(key, f"{repr(v)[:40]} is not an integer in {lo}..{hi}")
    return v


def _days(d: dt.date) -> int:
    return (d - EPOCH).days


def _last_sunday_1h(year: int, month: int) -> int:
    d = dt.date(year, month, 31)
    d -= dt.timedelta(days=(d.weekday() + 1) % 7)  # back to Sunday (weekday 6)
    return int(dt.datetime(d.year, d.month, d.day, 1, tzinfo=dt.UTC).timestamp())


def offset_s(tz_quarters: int, dst: int, t: int) -> int:
    """Local time minus UTC at Unix time t, as the node computes it (firmware/calendar.py `offset`)."""
    o = tz_quarters * 900
    if dst == pc.DST_EU:
        y = dt.datetime.fromtimestamp(t, dt.UTC).year
        if _last_sunday_1h(y, 3) <= t < _last_sunday_1h(y, 10):
            o += 3600
    return o


def timezone(w: _Where, name: Any) -> tuple[int, int]:
    """(standard offset in 15-minute units, DST rule) that match the IANA zone for the coming years."""
    if not isinstance(name, str):
        raise w.err("timezone", "must be an IANA time zone name such as Europe/Paris")
    try:
        zone = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise w.err("timezone", f"{name[:60]!r} is not a known IANA time zone") from None
    year = dt.date.today().year
    offs = [
        int(dt.datetime(year, mo, 15, 12, tzinfo=dt.UTC).astimezone(zone).utcoffset().total_seconds())  # type: ignore[union-attr]
        for mo in (1, 7)
    ]
    std = min(offs)
    if std % 900:
        raise w.err("timezone", f"{name}: UTC offset {std} s is not a multiple of 15 minutes")
    rule = pc.DST_NONE if offs[0] == offs[1] else pc.DST_EU
    start = int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp())
    for t in range(start, start + 3 * 366 * 86400, 1800):
        ref = dt.datetime.fromtimestamp(t, zone).utcoffset()
        if ref is None or offset_s(std // 900, rule, t) != int(ref.total_seconds()):
            raise w.err(
                "timezone",
                f"{name}: its clock changes are not EU summer time (last Sunday of March to last Sunday "
                f"of October, 01:00 UTC); the node knows only a fixed offset or that rule",
            )
    return std // 900, rule


def _rrule(w: _Where, key: str, text: Any, start: dt.date, horizon: int) -> list[tuple[bytes, str]]:
    """[(when, how)] for an RRULE: one recurring rule when the node expresses it, else dated ranges."""
    if not isinstance(text, str) or not text.strip():
        raise w.err(key, "must be an RFC 5545 RRULE such as FREQ=WEEKLY;BYDAY=SA,SU")
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[6:]
    try:
        rule = du_rrule.rrulestr(body, dtstart=dt.datetime.combine(start, dt.time()))
    except (ValueError, TypeError) as e:
        raise w.err(key, f"not a valid RRULE: {e}") from None
    parts: dict[str, str] = {}
    for p in body.upper().split(";"):
        k, _, v = p.partition("=")
        parts[k] = v
    names = set(parts) - {"WKST"}
    if (
        names == {"FREQ", "BYDAY"}
        and parts["FREQ"] == "WEEKLY"
        and all(d in _RRULE_DAYS for d in parts["BYDAY"].split(","))
    ):
        mask = sum(1 << _RRULE_DAYS[d] for d in parts["BYDAY"].split(","))
        return [(pc.when(pc.DAYS_WEEKDAYS, mask), "weekly")]
    if names <= {"FREQ", "INTERVAL"} and parts["FREQ"] == "DAILY":
        n = int(parts.get("INTERVAL", "1"))
        if 1 <= n <= 255:
            d0 = _days(start)
            return [(pc.when(pc.DAYS_INTERVAL, n, d0 % n), f"every {n} days")]
    if names == {"FREQ", "BYMONTH", "BYMONTHDAY"} and parts["FREQ"] == "YEARLY":
        try:
            md = int(parts["BYMONTH"]) * 32 + int(parts["BYMONTHDAY"])
            if 1 <= int(parts["BYMONTHDAY"]) <= 31:
                return [(pc.when(rng=pc.RANGE_YEARLY, lo=md, hi=md), "yearly")]
        except ValueError:
            pass
    today = dt.date.today()
    lo = dt.datetime.combine(max(today, start), dt.time())
    hi = dt.datetime.combine(today + dt.timedelta(days=horizon), dt.time())
    days = sorted({_days(x.date()) for x in rule.between(lo, hi, inc=True)})
    spans: list[list[int]] = []
    for d in days:
        if spans and d == spans[-1][1] + 1:
            spans[-1][1] = d  # consecutive days: one dated rule
        else:
            spans.append([d, d])
    if not spans:
        raise w.err(key, f"{body[:60]!r} has no date within {horizon} days of today")
    return [(pc.when(rng=pc.RANGE_DATED, lo=a, hi=b), "dates") for a, b in spans]


def _whens(w: _Where, key: str, d: dict[str, Any], horizon: int) -> list[bytes]:
    """The "when"s of one rule or program (several only for an expanded RRULE)."""
    chosen = [k for k in ("weekdays", "every_days", "days", "rrule") if k in d]
    if len(chosen) > 1:
        raise w.err(f"{key}.{chosen[1]}", f"only one of weekdays, every_days, days, rrule (also {chosen[0]})")
    ranges = [k for k in ("season", "dates", "date") if k in d]
    if len(ranges) > 1:
        raise w.err(f"{key}.{ranges[1]}", f"only one of season, dates, date (also {ranges[0]})")
    if "start_date" in d and "every_days" not in d and "rrule" not in d:
        raise w.err(f"{key}.start_date", "only with every_days or rrule")
    days, param, rem = pc.DAYS_WEEKDAYS, 0x7F, 0
    if "weekdays" in d:
        v = d["weekdays"]
        if not isinstance(v, list) or not v or any(x not in WEEKDAYS for x in v):
            raise w.err(f"{key}.weekdays", f"must be a non-empty list of {', '.join(WEEKDAYS)}")
        param = sum(1 << WEEKDAYS.index(x) for x in v)
    elif "every_days" in d:
        n = _int(w, f"{key}.every_days", d["every_days"], 1, 255)
        ref = _date(w, f"{key}.start_date", d["start_date"]) if "start_date" in d else EPOCH
        days, param, rem = pc.DAYS_INTERVAL, n, _days(ref) % n
    elif "days" in d:
        if d["days"] not in ("odd", "even"):
            raise w.err(f"{key}.days", f"{str(d['days'])[:20]!r} is not odd or even")
        days, param = (pc.DAYS_ODD if d["days"] == "odd" else pc.DAYS_EVEN), 0
    rng, lo, hi = pc.RANGE_ALL, 0, 0
    if "season" in d:
        v = d["season"]
        if not isinstance(v, list) or len(v) != 2:
            raise w.err(f"{key}.season", 'must be ["MM-DD", "MM-DD"] (first and last day, every year)')
        rng, lo, hi = pc.RANGE_YEARLY, _month_day(w, f"{key}.season", v[0]), _month_day(w, f"{key}.season", v[1])
    elif "dates" in d:
        v = d["dates"]
        if not isinstance(v, list) or len(v) != 2:
            raise w.err(f"{key}.dates", 'must be ["YYYY-MM-DD", "YYYY-MM-DD"] (first and last day)')
        a, b = _date(w, f"{key}.dates", v[0]), _date(w, f"{key}.dates", v[1])
        if b < a:
            raise w.err(f"{key}.dates", f"ends ({b}) before it starts ({a})")
        rng, lo, hi = pc.RANGE_DATED, _days(a), _days(b)
    elif "date" in d:
        a = _date(w, f"{key}.date", d["date"])
        rng, lo, hi = pc.RANGE_DATED, _days(a), _days(a)
    if rng == pc.RANGE_DATED and not (0 <= lo and hi <= 0xFFFF):
        raise w.err(f"{key}.dates", "must be within 1970..2149")
    if "rrule" in d:
        if ranges:
            raise w.err(f"{key}.{ranges[0]}", "not with rrule (an RRULE carries its own bounds: UNTIL, COUNT)")
        start = _date(w, f"{key}.start_date", d["start_date"]) if "start_date" in d else dt.date.today()
        return [wh for wh, _how in _rrule(w, f"{key}.rrule", d["rrule"], start, horizon)]
    return [pc.when(days, param, rem, rng, lo, hi)]


def _steps(w: _Where, key: str, v: Any) -> list[tuple[int, int, int]]:
    if not isinstance(v, list) or not 1 <= len(v) <= pc.STEPS_MAX:
        raise w.err(key, f"must be a list of 1..{pc.STEPS_MAX} steps [anchor, offset min, level %]")
    out = []
    for i, s in enumerate(v):
        k = f"{key}[{i}]"
        if not isinstance(s, list) or len(s) != 3 or s[0] not in ANCHORS:
            raise w.err(k, f"must be [anchor, offset min, level %], anchor one of {', '.join(ANCHORS)}")
        off = _int(w, k, s[1], -m.OFFSET_MAX_MIN, m.OFFSET_MAX_MIN)
        out.append((ANCHORS[s[0]], off, _int(w, k, s[2], 0, 100)))
    return out


def _hhmm(w: _Where, key: str, v: Any) -> int:
    mt = re.fullmatch(r"(\d\d):(\d\d)", v) if isinstance(v, str) else None
    if mt is None or int(mt[1]) > 23 or int(mt[2]) > 59:
        raise w.err(key, f"{str(v)[:20]!r} is not a local time HH:MM")
    return int(mt[1]) * 60 + int(mt[2])


def _table_list(w: _Where, key: str, v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or any(not isinstance(x, dict) for x in v):
        raise w.err(key, f"must be an array of tables ([[{key}]])")
    return v


def compile_doc(doc: dict[str, Any], path: str = "<calendar>") -> Compiled:
    """Compile a parsed calendar file; CalendarError names the file, the key and why."""
    w = _Where(path)
    unknown = sorted(set(doc) - _TOP)
    if unknown:
        raise w.err(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP))})")
    kind_name = doc.get("kind")
    if kind_name not in KINDS:
        raise w.err("kind", f"must be one of {', '.join(KINDS)}")
    kind = KINDS[kind_name]
    if "timezone" not in doc:
        raise w.err("timezone", "required (an IANA name such as Europe/Paris)")
    tzq, dst = timezone(w, doc["timezone"])
    horizon = _int(w, "horizon_days", doc.get("horizon_days", HORIZON_DAYS), 1, 3660)
    nodes: list[int] = []
    for v in doc.get("nodes", []) if isinstance(doc.get("nodes", []), list) else [None]:
        try:
            nodes.append(int(v, 16) if isinstance(v, str) else -1)
        except ValueError:
            nodes.append(-1)
        if not 0 <= nodes[-1] <= 0xFFFFFFFF:
            raise w.err("nodes", f"{str(v)[:20]!r} is not a node id (8 hex digits)")
    groups = doc.get("groups", [])
    if not isinstance(groups, list) or any(not isinstance(g, str) for g in groups):
        raise w.err("groups", "must be a list of group names")
    default = doc.get("default", False)
    if not isinstance(default, bool):
        raise w.err("default", "must be true or false")
    profiles: dict[str, list[tuple[int, int, int]]] = {}
    rules: list[tuple[bytes, bytes]] = []
    names: list[str] = []
    if kind == m.KIND_LIGHTING:
        if "programs" in doc:
            raise w.err("programs", "irrigation only (a lighting calendar has [[rules]])")
        raw = doc.get("profiles", {})
        if not isinstance(raw, dict) or len(raw) > pc.PROFILES_MAX:
            raise w.err("profiles", f"must be a table of at most {pc.PROFILES_MAX} named profiles")
        for name, steps in raw.items():
            profiles[name] = _steps(w, f"profiles.{name}", steps)
        index = {name: i for i, name in enumerate(profiles)}
        for i, r in enumerate(_table_list(w, "rules", doc.get("rules", []))):
            key = f"rules[{i}]"
            bad = sorted(set(r) - _RULE)
            if bad:
                raise w.err(f"{key}.{bad[0]}", f"unknown key (known: {', '.join(sorted(_RULE))})")
            p = r.get("profile")
            if p == "own":
                act = pc.OWN_PROFILE
            elif p in index:
                act = index[p]
            else:
                raise w.err(f"{key}.profile", f'{str(p)[:40]!r} is not a profile of [profiles] (or "own")')
            for wh in _whens(w, key, r, horizon):
                rules.append((wh, pc.light_action(act)))
                names.append(str(r.get("name", key)))
    else:
        for k in ("profiles", "rules"):
            if k in doc:
                raise w.err(k, "lighting only (an irrigation calendar has [[programs]])")
        for i, r in enumerate(_table_list(w, "programs", doc.get("programs", []))):
            key = f"programs[{i}]"
            bad = sorted(set(r) - _PROGRAM)
            if bad:
                raise w.err(f"{key}.{bad[0]}", f"unknown key (known: {', '.join(sorted(_PROGRAM))})")
            for req in ("zone", "start", "minutes"):
                if req not in r:
                    raise w.err(f"{key}.{req}", "required")
            act = pc.program_action(
                _int(w, f"{key}.zone", r["zone"], 1, m.ZONES_MAX),
                _hhmm(w, f"{key}.start", r["start"]),
                _int(w, f"{key}.minutes", r["minutes"], 1, m.DAY_MIN),
            )
            for wh in _whens(w, key, r, horizon):
                rules.append((wh, act))
                names.append(str(r.get("name", key)))
    if len(rules) > pc.RULES_MAX:
        raise w.err(
            "rules" if kind == m.KIND_LIGHTING else "programs",
            f"{len(rules)} compiled rules (RRULEs expanded), at most {pc.RULES_MAX}",
        )
    blob = pc.encode(kind, tzq, dst, list(profiles.values()), rules)
    try:
        pc.fragments(blob)
    except ValueError as e:
        raise w.err("rules", str(e)) from None
    return Compiled(
        path=path,
        name=str(doc.get("title") or Path(path).stem),
        kind=kind,
        blob=blob,
        hash=pc.digest(blob),
        nodes=tuple(nodes),
        groups=tuple(groups),
        default=default,
        rule_names=tuple(names),
        profiles=profiles,
    )


def load(path: str | Path) -> Compiled:
    """Read and compile one calendar file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise CalendarError(f"{p}: cannot read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CalendarError(f"{p}: not valid TOML: {e}") from None
    return compile_doc(doc, str(p))


def load_dir(path: str | Path) -> list[Compiled]:
    """Every calendar file (*.toml) of a directory, compiled, in name order."""
    p = Path(path)
    if not p.is_dir():
        raise CalendarError(f"{p}: not a directory of calendar files")
    out = [load(f) for f in sorted(p.glob("*.toml"))]
    seen: dict[tuple[int, int], str] = {}
    for c in out:
        for nid in c.nodes:
            prev = seen.setdefault((c.kind, nid), c.path)
            if prev != c.path:
                raise CalendarError(f"{c.path}: nodes: node {nid:08x} is in {prev} already")
    return out
