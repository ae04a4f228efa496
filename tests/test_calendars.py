"""Calendars (issue 11): the gateway's compiler (gateway/calendars.py), its errors, the wire
format (protocol/calendar.py, protocol/nodecal.py) fuzzed with hypothesis, the node's date and
time arithmetic (firmware/calendar.py) against the zone database, the gateway sending only what
changed (gateway/calendar_sync.py, with the real pipeline, store and downlink queue), the
`[calendars]` config section and `lumeau calendar check`. The node side under real MicroPython:
tests/micropython/mp_calendar.py."""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from pathlib import Path

import pytest
from gateway_helpers import node_keys, reception, registry, root_key, seal
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import wait_for

from firmware import calendar as fc
from gateway.calendar_sync import CalendarSync
from gateway.calendars import CalendarError, compile_doc, load, load_dir
from gateway.config import ConfigError, example_config, load_config
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import Group, NodeEntry
from gateway.store import Store
from lumeau.cli import main as lumeau_main
from protocol import calendar as pc
from protocol import frame, nodecal
from protocol import messages as m

HEAD = 'kind = "lighting"\ntimezone = "Europe/Paris"\n'
LYON = """
kind = "lighting"
timezone = "Europe/Paris"
groups = ["rue-merciere"]
nodes = ["00000003"]

[profiles]
festival = [["sunset", 0, 100], ["sunset", 150, 0], ["sunset", 390, 100], ["sunrise", 0, 0]]
holiday = [["sunset", 0, 100], ["sunrise", 0, 0]]

[[rules]]
name = "Fête des Lumières"
dates = ["2026-12-05", "2026-12-08"]
profile = "festival"

[[rules]]
name = "Christmas"
rrule = "FREQ=YEARLY;BYMONTH=12;BYMONTHDAY=25"
profile = "holiday"

[[rules]]
name = "winter weekends"
season = ["12-01", "02-28"]
weekdays = ["sat", "sun"]
profile = "own"

[[rules]]
name = "winter"
season = ["11-15", "02-28"]
profile = "holiday"
"""

PARK = """
kind = "irrigation"
timezone = "Europe/Paris"
default = true

[[programs]]
name = "lawn"
zone = 1
start = "06:00"
minutes = 20
days = "odd"
season = ["05-01", "09-30"]

[[programs]]
name = "beds"
zone = 2
start = "21:30"
minutes = 10
every_days = 3
start_date = "2026-05-02"
"""


def days(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------- compiling


def test_lighting_calendar_compiles_and_says_what_the_file_says(tmp_path: Path) -> None:
    c = load(write(tmp_path, "lyon.toml", LYON))
    assert c.kind == m.KIND_LIGHTING and c.groups == ("rue-merciere",) and c.nodes == (3,)
    assert c.rule_names == ("Fête des Lumières", "Christmas", "winter weekends", "winter")
    assert c.blob[2] == 4 and c.blob[3] == pc.DST_EU  # UTC+1 in quarters, EU summer time
    pc.check(c.blob, m.KIND_LIGHTING)
    held = c.hash + c.blob

    def profile(y: int, mo: int, d: int) -> list | None:
        return fc.profile(held, days(dt.date(y, mo, d)))

    festival = [(0, 0, 100), (0, 150, 0), (0, 390, 100), (1, 0, 0)]
    holiday = [(0, 0, 100), (1, 0, 0)]
    assert profile(2026, 12, 4) == holiday  # a Friday in winter
    assert profile(2026, 12, 5) == festival and profile(2026, 12, 8) == festival  # Saturday too: first match
    assert profile(2026, 12, 12) is None  # a winter Saturday: the node's own profile
    assert profile(2026, 12, 25) == holiday and profile(2027, 12, 25) == holiday  # every year
    assert profile(2027, 1, 1) == holiday  # the season wraps over New Year
    assert profile(2027, 3, 1) is None and profile(2027, 6, 21) is None


def test_irrigation_calendar_programs(tmp_path: Path) -> None:
    c = load(write(tmp_path, "park.toml", PARK))
    assert c.default and c.kind == m.KIND_IRRIGATION
    held = c.hash + c.blob

    def runs(y: int, mo: int, d: int, minute: int) -> list:
        return fc.schedule(held, days(dt.date(y, mo, d)), minute, [-1] * pc.RULES_MAX)

    assert runs(2026, 7, 1, 360) == [(1, 20)]  # odd day in season, 06:00
    assert runs(2026, 7, 2, 360) == []  # even
    assert runs(2026, 7, 31, 360) == []  # the 31st is never an odd day (OpenSprinkler)
    assert runs(2026, 10, 1, 360) == []  # out of season
    assert runs(2026, 5, 2, 21 * 60 + 30) == [(2, 10)] and runs(2026, 5, 5, 21 * 60 + 30) == [(2, 10)]
    assert runs(2026, 5, 3, 21 * 60 + 30) == []


def test_rrules_become_rules_or_dates() -> None:
    base = {"kind": "lighting", "timezone": "Europe/Paris", "profiles": {"p": [["sunset", 0, 50]]}}

    def rules(rrule: str, **extra: object) -> bytes:
        c = compile_doc({**base, "rules": [{"rrule": rrule, "profile": "p", **extra}]})
        return c.blob[6 + 1 + 3 :]

    assert rules("FREQ=WEEKLY;BYDAY=SA,SU")[:2] == bytes((pc.DAYS_WEEKDAYS, 0x60))
    r = rules("FREQ=DAILY;INTERVAL=3", start_date="2026-05-02")
    assert r[:3] == bytes((pc.DAYS_INTERVAL, 3, days(dt.date(2026, 5, 2)) % 3))
    assert rules("RRULE:FREQ=YEARLY;BYMONTH=7;BYMONTHDAY=14")[0] == pc.RANGE_YEARLY << 2
    # Easter Monday: no yearly rule on the node, so its dates within the horizon
    c = compile_doc({**base, "horizon_days": 3000, "rules": [{"rrule": "FREQ=YEARLY;BYEASTER=1", "profile": "p"}]})
    dated = [c.blob[i : i + 8] for i in range(10, len(c.blob), 8)]
    assert len(dated) >= 7 and all(w[0] == pc.RANGE_DATED << 2 for w in dated)
    first = min((w[3] << 8) | w[4] for w in dated)
    d = dt.date(1970, 1, 1) + dt.timedelta(days=first)
    assert d.weekday() == 0 and d.month in (3, 4)  # a Monday in spring


BAD = [
    ('kind = "lamp"\ntimezone = "Europe/Paris"', "kind: must be one of lighting, irrigation"),
    ('kind = "lighting"', "timezone: required"),
    ('kind = "lighting"\ntimezone = "Mars/Olympus"', "timezone: 'Mars/Olympus' is not a known IANA time zone"),
    ('kind = "lighting"\ntimezone = "America/New_York"', "timezone: America/New_York: its clock changes are not EU"),
    ('kind = "lighting"\ntimezone = "Europe/Paris"\ncolour = 1', "colour: unknown key"),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[profiles]\np = [["dusk", 0, 50]]',
        "profiles.p[0]: must be [anchor, offset min, level %]",
    ),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[profiles]\np = [["sunset", 900, 50]]',
        "profiles.p[0]: 900 is not an integer in -720..720",
    ),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]]\nprofile = "nope"',
        "rules[0].profile: 'nope' is not a profile of [profiles]",
    ),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]]\nprofile = "own"\nseason = ["12-01", "02-30"]',
        "rules[0].season: '02-30' is not a day of the year MM-DD",
    ),
    (
        HEAD + '[[rules]]\nprofile = "own"\ndates = ["2026-12-08", "2026-12-05"]',
        "rules[0].dates: ends (2026-12-05) before it starts (2026-12-08)",
    ),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]]\nprofile = "own"\nweekdays = ["sat"]\ndays = "odd"',
        "rules[0].days: only one of weekdays, every_days, days, rrule (also weekdays)",
    ),
    (
        'kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]]\nprofile = "own"\nrrule = "FREQ=SOMETIMES"',
        "rules[0].rrule: not a valid RRULE",
    ),
    (
        HEAD + '[[rules]]\nprofile = "own"\nrrule = "FREQ=WEEKLY;BYDAY=MO;COUNT=40"',
        "rules: 40 compiled rules (RRULEs expanded), at most 16",
    ),
    (
        'kind = "irrigation"\ntimezone = "Europe/Paris"\n[[programs]]\nzone = 1\nminutes = 5',
        "programs[0].start: required",
    ),
    (
        'kind = "irrigation"\ntimezone = "Europe/Paris"\n[[programs]]\nzone = 5\nstart = "06:00"\nminutes = 5',
        "programs[0].zone: 5 is not an integer in 1..4",
    ),
    (
        'kind = "irrigation"\ntimezone = "Europe/Paris"\n[[programs]]\nzone = 1\nstart = "25:00"\nminutes = 5',
        "programs[0].start: '25:00' is not a local time HH:MM",
    ),
    ('kind = "irrigation"\ntimezone = "Europe/Paris"\n[profiles]\n', "profiles: lighting only"),
    ('kind = "lighting"\ntimezone = "Europe/Paris"\nnodes = ["xyz"]', "nodes: 'xyz' is not a node id"),
    ('kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]\n', "not valid TOML"),
]


@pytest.mark.parametrize(("text", "why"), BAD)
def test_bad_calendar_files_say_file_key_and_why(tmp_path: Path, text: str, why: str) -> None:
    p = write(tmp_path, "bad.toml", text)
    with pytest.raises(CalendarError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: ") and why in str(e.value), str(e.value)


def test_too_many_profiles_and_a_node_in_two_files(tmp_path: Path) -> None:
    profiles = "\n".join(f'p{i} = [["sunset", 0, 50]]' for i in range(5))
    p = write(tmp_path, "big.toml", f'kind = "lighting"\ntimezone = "UTC"\n[profiles]\n{profiles}')
    with pytest.raises(CalendarError, match="profiles: must be a table of at most 4"):
        load(p)
    d = tmp_path / "cal"
    d.mkdir()
    write(d, "a.toml", 'kind = "lighting"\ntimezone = "UTC"\nnodes = ["00000001"]')
    write(d, "b.toml", 'kind = "lighting"\ntimezone = "UTC"\nnodes = ["00000001"]')
    with pytest.raises(CalendarError, match=r"b\.toml: nodes: node 00000001 is in .*a\.toml already"):
        load_dir(d)


def test_time_zones_without_summer_time_and_quarter_hours() -> None:
    base = {"kind": "irrigation", "programs": []}
    assert compile_doc({**base, "timezone": "Asia/Kolkata"}).blob[2:4] == bytes((22, 0))  # +5:30
    assert compile_doc({**base, "timezone": "UTC"}).blob[2:4] == bytes((0, 0))
    with pytest.raises(CalendarError, match="timezone: Australia/Sydney: its clock changes are not EU"):
        compile_doc({**base, "timezone": "Australia/Sydney"}, "x.toml")


def test_node_local_time_matches_the_zone_database() -> None:
    # firmware/calendar.py's offset (the node's) against zoneinfo, every 20 min over 4 years
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    held = bytes(4) + pc.encode(m.KIND_IRRIGATION, 4, pc.DST_EU, [], [])
    t0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    for t in range(t0, t0 + 4 * 366 * 86400, 1200):
        ref = dt.datetime.fromtimestamp(t, paris).utcoffset()
        assert ref is not None and fc.offset(held, t) == ref.total_seconds(), t
    for day in range(-1000, 80000, 13):
        d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        assert fc.civil(day) == (d.year, d.month, d.day)


def test_every_fragment_fits_a_51_byte_config() -> None:
    rules = [(pc.when(rng=pc.RANGE_DATED, lo=20000 + i, hi=20001 + i), pc.light_action(i % 4)) for i in range(16)]
    profiles = [[(0, -720 + 90 * k, 100 - k) for k in range(8)] for _ in range(4)]
    blob = pc.encode(m.KIND_LIGHTING, -48, 0, profiles, rules)
    assert len(blob) <= pc.CAL_MAX
    frags = pc.fragments(blob)
    assert len(frags) <= pc.FRAGS_MAX
    keys = node_keys(1)
    for i, f in enumerate(frags):
        raw = frame.seal(keys, m.CONFIG, 0xFFFFFFFF, m.encode(m.CONFIG, {0: {}, 1: 0xFFFFFFFF, 3: f}))
        assert len(raw) <= 51, (i, len(raw))
    parts: list = []
    got = [nodecal.join(parts, f, m.KIND_LIGHTING) for f in frags]
    assert got[:-1] == [None] * (len(frags) - 1) and got[-1] == pc.digest(blob) + blob


# ---------------------------------------------------------------- fuzz


@st.composite
def calendars(draw: st.DrawFn) -> tuple[int, bytes]:
    kind = draw(st.sampled_from([m.KIND_LIGHTING, m.KIND_IRRIGATION]))
    np = draw(st.integers(1, pc.PROFILES_MAX)) if kind == m.KIND_LIGHTING else 0
    step = st.tuples(st.integers(0, 2), st.integers(-720, 720), st.integers(0, 100))
    profiles = [draw(st.lists(step, min_size=1, max_size=pc.STEPS_MAX)) for _ in range(np)]
    md = st.tuples(st.integers(1, 12), st.integers(1, 31)).map(lambda x: x[0] * 32 + x[1])
    rules = []
    room = (pc.CAL_MAX - 6 - sum(1 + 3 * len(p) for p in profiles)) // (8 if kind == m.KIND_LIGHTING else 12)
    for _ in range(draw(st.integers(0, min(pc.RULES_MAX, room)))):
        t = draw(st.integers(0, 3))
        param = draw(st.integers(1, 127)) if t == 0 else draw(st.integers(1, 255)) if t == 1 else 0
        rem = draw(st.integers(0, param - 1)) if t == 1 else 0
        r = draw(st.integers(0, 2))
        lo, hi = (
            (0, 0)
            if r == 0
            else (draw(md), draw(md))
            if r == 1
            else sorted(draw(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2)))
        )
        w = pc.when(t, param, rem, r, lo, hi)
        if kind == m.KIND_LIGHTING:
            act = pc.light_action(draw(st.sampled_from([*range(np), pc.OWN_PROFILE])))
        else:
            act = pc.program_action(draw(st.integers(1, 4)), draw(st.integers(0, 1439)), draw(st.integers(1, 1440)))
        rules.append((w, act))
    tz = draw(st.integers(-48, 56))
    return kind, pc.encode(kind, tz, draw(st.integers(0, 1)), profiles, rules)


@settings(max_examples=300, deadline=None)
@given(calendars(), st.integers(0, 0xFFFF), st.integers(0, 4_000_000_000))
def test_any_valid_calendar_round_trips_and_evaluates(cal: tuple[int, bytes], day: int, t: int) -> None:
    kind, blob = cal
    parts: list = []
    out = [nodecal.join(parts, f, kind) for f in pc.fragments(blob)]
    assert out[-1] == pc.digest(blob) + blob and parts == []
    held = out[-1]
    assert -12 * 3600 <= fc.offset(held, t) <= 15 * 3600
    if kind == m.KIND_LIGHTING:
        p = fc.profile(held, day)
        assert p is None or 1 <= len(p) <= pc.STEPS_MAX
    else:
        for zone, mins in fc.schedule(held, day, 360, [-1] * pc.RULES_MAX):
            assert 1 <= zone <= 4 and 1 <= mins <= 1440


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([1, 2]))
def test_random_bytes_are_refused_cleanly(data: bytes, kind: int) -> None:
    try:
        nodecal.check(data, kind)
    except ValueError:
        return
    # what passes the checks is a calendar the node can evaluate without an error
    held = bytes(4) + data
    fc.offset(held, 1_800_000_000)
    if kind == m.KIND_LIGHTING:
        fc.profile(held, 20000)
    else:
        fc.schedule(held, 20000, 0, [-1] * pc.RULES_MAX)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=14), st.sampled_from([1, 2]))
def test_random_fragments_never_give_a_bad_calendar(frags: list[bytes], kind: int) -> None:
    parts: list = []
    for f in frags:
        try:
            got = nodecal.join(parts, f, kind)
        except ValueError:
            continue
        if got is not None:  # only a whole calendar whose hash and checks pass
            assert pc.digest(got[4:]) == got[:4]
            nodecal.check(got[4:], kind)


# ---------------------------------------------------------------- the gateway sends what changed


class Radio:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict]] = []

    async def send_downlink(self, raw: bytes, rx: object) -> None:
        f, body = frame.unseal(node_keys(frame.parse(raw).node_id), raw)
        self.sent.append((f.mtype, m.decode(f.mtype, body)))


@pytest.fixture
async def gateway(tmp_path: Path):
    store = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", range(1, 4))
    reg.upsert(NodeEntry(node_id=9, kind="irrigation", root_key=root_key(9)))
    reg.put_group(Group(name="rue-merciere", kind="street", members=[1, 2]), create=True)
    d = Downlinks(store, reg, collect_s=0.0)
    await d.start()
    cal = load(write(tmp_path, "lyon.toml", LYON))
    sync = CalendarSync([cal], reg, d, boot_hold=0)
    p = Pipeline(reg, store, downlinks=sync)
    yield p, d, sync, cal
    await d.close()
    await p.close()
    await store.close()


async def up(p, d, node: int, counter: int, radio: Radio, mtype: int = m.LIGHT, body: dict | None = None) -> None:
    sync = p.downlinks
    await p.ingest(reception(seal(node, counter, mtype, body), transport="udp", path=radio))
    await wait_for(lambda: not sync._queuing)  # the fragment queued, then the downlinks hear of the uplink
    await d.idle()


def hello() -> dict:
    return {0: "0.1.0", 1: m.KIND_LIGHTING, 4: m.RST_POWER_ON}


def held(h: bytes) -> dict:
    """EVENT calendar: the node holds the calendar of hash h."""
    return {0: m.EV_CALENDAR, 1: m.SEV_INFO, 2: pc.hash_value(h), 4: 1}


async def test_fragments_go_one_per_uplink_until_the_node_reports_the_hash(gateway) -> None:
    p, d, sync, cal = gateway
    radio = Radio()
    await up(p, d, 1, 1, radio, m.HELLO, hello())
    n = len(cal.fragments())
    for c in range(2, 2 + n + 1):
        await up(p, d, 1, c, radio)
    frags = [b[3] for t, b in radio.sent if t == m.CONFIG]
    assert frags == cal.fragments()  # in order, one per window, each exactly once
    parts: list = []
    got = [nodecal.join(parts, f, m.KIND_LIGHTING) for f in frags][-1]
    assert got == cal.hash + cal.blob
    await up(p, d, 1, 20, radio, m.EVENT, held(cal.hash))
    before = len(radio.sent)
    for c in range(21, 30):
        await up(p, d, 1, c, radio)
    assert len(radio.sent) == before  # in sync: nothing more
    assert sync.counts["applied"] == 1 and sync.status()["nodes"]["00000001"]["in_sync"]


async def test_a_node_that_holds_it_gets_one_fragment_and_others_nothing(gateway) -> None:
    p, d, sync, cal = gateway
    radio = Radio()
    await up(p, d, 2, 1, radio, m.EVENT, held(cal.hash))  # group member, already in sync (no boot seen)
    await up(p, d, 2, 2, radio)
    await up(p, d, 9, 1, radio, m.IRRIGATION)  # an irrigation node: a lighting calendar is not for it
    await up(p, d, 9, 2, radio, m.IRRIGATION)
    assert radio.sent == []
    # node 3 (named in `nodes`), calendar unknown (a gateway restarted): the first fragment asks
    await up(p, d, 3, 1, radio)
    assert [t for t, _ in radio.sent] == [m.CONFIG]
    await up(p, d, 3, 2, radio, m.EVENT, held(cal.hash))  # "I hold that one"
    await up(p, d, 3, 3, radio)
    assert len(radio.sent) == 1 and sync.counts["already_held"] == 1


async def test_lost_fragments_start_a_new_round_and_a_reboot_restarts(gateway) -> None:
    p, d, sync, cal = gateway
    radio = Radio()
    n = len(cal.fragments())
    await up(p, d, 1, 1, radio, m.HELLO, hello())
    await up(p, d, 1, 2, radio)
    await up(p, d, 1, 3, radio, m.HELLO, hello())  # rebooted mid-way: its reassembly is gone
    c = 4
    while len([1 for t, _ in radio.sent if t == m.CONFIG]) < 2 + n:
        await up(p, d, 1, c, radio)
        c += 1
    frags = [b[3] for t, b in radio.sent if t == m.CONFIG]
    assert frags[:2] == cal.fragments()[:2] and frags[2:] == cal.fragments()  # from the first again
    for _ in range(5):  # no HELLO with the hash after the last one: sent again from the first
        await up(p, d, 1, c, radio)
        c += 1
    frags = [b[3] for t, b in radio.sent if t == m.CONFIG]
    assert frags[2 + n] == cal.fragments()[0] and sync.counts["rounds"] == 1


# ---------------------------------------------------------------- config and CLI


def test_config_section_compiles_the_directory(tmp_path: Path) -> None:
    d = tmp_path / "calendars"
    d.mkdir()
    write(d, "lyon.toml", LYON)
    conf = write(tmp_path, "gw.toml", '[api]\nenabled = false\n[calendars]\ndir = "calendars"\n')
    assert load_config(conf).calendars.dir == d
    write(d, "zz.toml", 'kind = "lighting"\ntimezone = "Europe/Paris"\n[[rules]]\nprofile = "gone"')
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert f"calendars.dir: {d / 'zz.toml'}: rules[0].profile:" in str(e.value)
    write(tmp_path, "gw2.toml", '[api]\nenabled = false\n[calendars]\ndir = "nowhere"\n')
    with pytest.raises(ConfigError, match="calendars.dir: .*nowhere: not a directory"):
        load_config(tmp_path / "gw2.toml")
    assert "[calendars]" in example_config()


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "lyon.toml", LYON)
    assert lumeau_main(["calendar", "check", str(p), "--on", "2026-12-04", "--days", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hash"] == load(p).hash.hex() and out["fragments"] == 3
    assert [x["profile"] for x in out["plan"]] == ["holiday", "festival", "festival"]
    bad = write(tmp_path, "bad.toml", 'kind = "lighting"')
    assert lumeau_main(["calendar", "check", str(bad)]) == 1
    assert f"{bad}: timezone: required" in capsys.readouterr().err


# ---------------------------------------------------------------- the demo's event


def test_demo_event_is_written_reported_and_shown(tmp_path: Path) -> None:
    from simulator.demo_calendar import event_report, summary, write_event
    from simulator.report import _calendar_section
    from simulator.scenario import load as load_scenario

    sc = load_scenario(Path(__file__).resolve().parent.parent / "simulator" / "scenarios" / "district.toml")
    ev = write_event(sc, tmp_path)
    quai = [n.node_id for n in sc.lamps if n.street == sc.streets[1].id]  # the second street
    assert ev["nodes"] == quai and ev["date"] == "2026-06-15"
    cal = load(tmp_path / "calendars" / "event.toml")  # what the gateway will compile
    assert cal.nodes == tuple(quai) and len(cal.fragments()) == 2
    # the gateway's log says two lamps took it (one line for another hash does not count)
    log = [
        {"msg": "calendar fragment 1/2 queued", "node": f"{quai[0]:08x}"},
        {"msg": "calendar applied", "node": f"{quai[0]:08x}", "hash": cal.hash.hex()},
        {"msg": "calendar applied", "node": f"{quai[1]:08x}", "hash": cal.hash.hex()},
        {"msg": "calendar applied", "node": f"{quai[2]:08x}", "hash": "00000000"},
    ]
    (tmp_path / "gateway.log").write_text("\n".join(json.dumps(x) for x in log) + "\nnot json\n")
    r = event_report(sc, tmp_path, ev)
    assert r["applied"] == [f"{quai[0]:08x}", f"{quai[1]:08x}"] and r["fragments_queued"] == 1
    # off from an hour after sunset to an hour after the midpoint: well under the own profile
    assert 0 < r["night_kwh_with_event"] < 0.7 * r["night_kwh_own_profile"]
    assert r["night_kwh_saved"] == pytest.approx(r["night_kwh_own_profile"] - r["night_kwh_with_event"], abs=0.002)
    assert f"2 of {len(quai)} lamps of {sc.streets[1].id} took the calendar" in summary(r)
    html = "\n".join(_calendar_section(r))
    assert "Calendar event" in html and "not (yet):" in html and f"{quai[2]:08x}" in html


async def test_no_fragment_in_a_nodes_first_uplinks_after_boot(gateway) -> None:
    p, d, sync, cal = gateway
    sync.boot_hold = 8
    radio = Radio()
    await up(p, d, 1, 1, radio, m.HELLO, hello())
    for c in range(2, 9):
        await up(p, d, 1, c, radio)
    assert radio.sent == []  # HELLO + 7 uplinks: the node's first hour is its heap's peak
    await up(p, d, 1, 9, radio)
    assert [b[3] for t, b in radio.sent if t == m.CONFIG] == cal.fragments()[:1]


async def test_api_lists_calendars_and_nodes_in_sync(gateway, tmp_path: Path) -> None:
    import aiohttp

    from gateway.api import Api

    p, d, sync, cal = gateway
    radio = Radio()
    await up(p, d, 2, 1, radio, m.EVENT, held(cal.hash))
    await up(p, d, 1, 1, radio, m.HELLO, hello())
    token = "a-test-token-0123456789"
    apis = [
        Api(registry=sync.registry, store=d.store, pipeline=p, downlinks=d, token=token, port=0, calendars=c)
        for c in (sync, None)
    ]
    for api in apis:
        await api.start()
    try:
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{apis[0].port}/calendars", headers=auth) as r:
                assert r.status == 200
                doc = await r.json()
            async with http.get(f"http://127.0.0.1:{apis[1].port}/calendars", headers=auth) as r:
                assert r.status == 200 and await r.json() == {
                    "configured": False,
                    "calendars": [],
                    "nodes": {},
                    "counts": {},
                }
    finally:
        for api in apis:
            await api.stop()
    assert doc["calendars"][0]["hash"] == cal.hash.hex() and doc["calendars"][0]["kind"] == "lighting"
    assert doc["nodes"]["00000002"] == {
        "assigned": cal.hash.hex(),
        "held": cal.hash.hex(),
        "in_sync": True,
        "state": "in_step",
    }
    assert doc["nodes"]["00000001"]["state"] == "pending" and doc["counts"]["fragments_sent"] == 1
    assert doc["nodes"]["00000001"]["in_sync"] is False and doc["counts"]["fragments"] == len(cal.fragments())


async def test_calendar_states_and_their_metrics(gateway, tmp_path: Path) -> None:
    """Per node: in_step, pending, failed (ROUNDS_MAX rounds unconfirmed); /metrics counts them and the
    fragments queued and sent."""
    import aiohttp

    from gateway.api import Api
    from gateway.calendar_sync import ROUNDS_MAX
    from simulator.services import metric_sum, parse_metrics

    p, d, sync, cal = gateway
    radio = Radio()
    n = len(cal.fragments())
    await up(p, d, 2, 1, radio, m.EVENT, held(cal.hash))  # holds it
    await up(p, d, 9, 1, radio, m.IRRIGATION)  # no calendar for it: no state
    c = 1
    await up(p, d, 1, c, radio, m.HELLO, hello())
    states = []
    while len([1 for t, _ in radio.sent if t == m.CONFIG]) < ROUNDS_MAX * n or sync.state(1) != "failed":
        c += 1
        await up(p, d, 1, c, radio)  # every fragment lost: the node never says it holds the calendar
        states.append(sync.state(1))
        assert c < 100, states
    assert set(states[:-1]) == {"pending"} and states[-1] == "failed"
    assert (sync.state(2), sync.state(9), sync.state(3)) == ("in_step", None, None)  # 3: never heard
    sent = ROUNDS_MAX * n
    assert sync.counts["rounds"] == ROUNDS_MAX - 1 and sync.fragments_sent() == sent
    token = "a-test-token-0123456789"
    api = Api(registry=sync.registry, store=d.store, pipeline=p, downlinks=d, token=token, port=0, calendars=sync)
    await api.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{api.port}"
            async with http.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
                samples = parse_metrics(await r.text())
            async with http.get(url + "/calendars", headers={"Authorization": f"Bearer {token}"}) as r:
                doc = await r.json()
    finally:
        await api.stop()
    assert {s: metric_sum(samples, "lumeau_calendar_nodes", state=s) for s in ("in_step", "pending", "failed")} == {
        "in_step": 1,
        "pending": 0,
        "failed": 1,
    }
    assert metric_sum(samples, "lumeau_calendar_fragments_total", outcome="queued") == sent
    assert metric_sum(samples, "lumeau_calendar_fragments_total", outcome="sent") == sent
    assert metric_sum(samples, "lumeau_calendar_events_total", outcome="rounds") == ROUNDS_MAX - 1
    assert doc["nodes"]["00000001"]["state"] == "failed" and doc["counts"]["fragments_sent"] == sent
    # a reboot: the node is tried again (pending), and a confirmation puts it in step
    await up(p, d, 1, c + 1, radio, m.HELLO, hello())
    assert sync.state(1) == "pending"
    await up(p, d, 1, c + 2, radio, m.EVENT, held(cal.hash))
    assert sync.state(1) == "in_step" and sync.states() == {"in_step": 2, "pending": 0, "failed": 0}
    # what went before the reboot is still counted, and the new round's first fragment (the question)
    assert sync.fragments_sent() == sent + 1 and sync.counts["already_held"] == 1
