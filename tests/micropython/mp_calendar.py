# Calendars on the node under real MicroPython, node code loaded from .mpy (issue 11):
# the apps follow a calendar across a year boundary and both daylight-saving changes of
# Europe/Paris; the runtime reassembles a calendar sent as CONFIG fragments, stores it,
# reports it by hash, keeps it over a reboot, and refuses corrupted, partial and oversized
# ones without changing anything. Calendars are built with protocol/calendar.py (the
# gateway's encoder runs here too); gateway/calendars.py compiles the same from TOML.
import asyncio

import mpnode
from firmware import calendar as fc
from firmware.astro import days_from_civil
from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from firmware.store import Store
from protocol import calendar as pc
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from simulator.hal_sim import SimHAL, StepClock

MPY = True
H = 3600
PARIS = 4  # UTC+1 in 15-minute units
LAT, LON = 45.76, 4.84  # Lyon


class Node:
    # the runtime's facade for an app, with the calendar the runtime would hold
    def __init__(self, hal, cal=None):
        self.hal = hal
        self.store = Store(hal)
        self.store.open()
        self.schedule = [None if cal is None else held(cal), []]

    def event(self, code, severity, value=0, active=1, zone=0):
        pass

    def time(self):
        return self.hal.time()


def utc(y, mo, d, h=0, mi=0):
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60


def held(cal):
    # what the runtime keeps and firmware/calendar.py reads: the hash, then the calendar
    return pc.digest(cal) + cal


def md(mo, d):
    return mo * 32 + d


def lighting_calendar():
    return pc.encode(
        m.KIND_LIGHTING,
        PARIS,
        pc.DST_EU,
        [
            [(m.ANCHOR_SUNSET, 0, 80), (m.ANCHOR_SUNRISE, 0, 0)],  # 0 New Year's Eve
            [(m.ANCHOR_SUNSET, 0, 60), (m.ANCHOR_SUNRISE, 0, 0)],  # 1 a dated holiday
            [(m.ANCHOR_SUNSET, 0, 40), (m.ANCHOR_SUNRISE, 0, 0)],  # 2 winter
        ],
        [
            (pc.when(rng=pc.RANGE_YEARLY, lo=md(12, 31), hi=md(12, 31)), pc.light_action(0)),
            (
                pc.when(rng=pc.RANGE_DATED, lo=days_from_civil(2027, 1, 1), hi=days_from_civil(2027, 1, 1)),
                pc.light_action(1),
            ),
            (
                pc.when(pc.DAYS_WEEKDAYS, 0x60, 0, pc.RANGE_YEARLY, md(12, 1), md(2, 28)),
                pc.light_action(pc.OWN_PROFILE),
            ),
            (pc.when(rng=pc.RANGE_YEARLY, lo=md(12, 1), hi=md(2, 28)), pc.light_action(2)),
        ],
    )


def test_civil_dates_and_paris_time():
    assert fc.civil(0) == (1970, 1, 1)
    assert fc.civil(days_from_civil(2026, 12, 31) + 1) == (2027, 1, 1)
    assert fc.civil(days_from_civil(2028, 2, 28) + 1) == (2028, 2, 29)
    for day in range(-800, 70000, 97):
        assert days_from_civil(*fc.civil(day)) == day
    cal = held(lighting_calendar())
    # 2027: summer time from 01:00 UTC on 28 March to 01:00 UTC on 31 October
    assert fc.offset(cal, utc(2027, 3, 28, 0, 59)) == 3600
    assert fc.offset(cal, utc(2027, 3, 28, 1, 0)) == 7200
    assert fc.offset(cal, utc(2027, 10, 31, 0, 59)) == 7200
    assert fc.offset(cal, utc(2027, 10, 31, 1, 0)) == 3600


def test_lighting_follows_the_calendar_over_new_year():
    t0 = utc(2026, 12, 30, 12)
    hal = SimHAL(StepClock(t0), time_known=True)
    cfg = {"location": {"lat": LAT, "lon": LON}, "lighting": {"tick_ms": 5000}}
    app = Lighting(cfg, hal, Node(hal, lighting_calendar()))
    own = Lighting(cfg, SimHAL(StepClock(t0), time_known=True), Node(hal))
    # each evening at 21:00 UTC (22:00 in Lyon) and the morning after at 06:00 UTC
    want = {
        (2026, 12, 30): 40,  # a Wednesday in winter
        (2026, 12, 31): 80,  # New Year's Eve, every year
        (2027, 1, 1): 60,  # the dated holiday (a Friday: above the weekend rule)
        (2027, 1, 2): None,  # a winter Saturday: the node's own profile
        (2027, 1, 4): 40,
        (2027, 3, 1): None,  # after the season
    }
    for (y, mo, d), level in want.items():
        for t in (utc(y, mo, d, 21), utc(y, mo, d + 1, 6) if d < 31 else utc(y + 1, 1, 1, 6)):
            dark, got = app.schedule(t)
            assert dark, (y, mo, d, t)
            assert got == (own.schedule(t)[1] if level is None else level), (y, mo, d, t, got)


async def test_lighting_app_output_with_a_calendar():
    clock = StepClock(utc(2026, 12, 31, 18))
    hal = SimHAL(clock, time_known=True)
    node = Node(hal, None)
    app = Lighting({"location": {"lat": LAT, "lon": LON}, "lighting": {"tick_ms": 5000}}, hal, node)
    task = asyncio.create_task(app.run())
    await clock.run_for(60000)
    assert hal.pwm["lamp"] == 1000  # the own profile: full power early in the night
    node.schedule[0] = held(lighting_calendar())
    app.configure({})  # what the runtime does once a calendar is stored
    await clock.run_for(60000)
    assert hal.pwm["lamp"] < 1000  # fading down to New Year's Eve's 80 %
    await clock.run_for(3600000)
    assert hal.pwm["lamp"] == 800
    task.cancel()


def irrigation_calendar():
    return pc.encode(
        m.KIND_IRRIGATION,
        PARIS,
        pc.DST_EU,
        [],
        [
            (pc.when(), pc.program_action(1, 6 * 60, 10)),  # every day 06:00 local, 10 min
            (pc.when(pc.DAYS_ODD), pc.program_action(2, 2 * 60 + 30, 5)),  # odd days 02:30 local
        ],
    )


async def irrigation_run(t0, hours):
    clock = StepClock(t0)
    hal = SimHAL(clock, time_known=True)
    hal.on_output = lambda name, value: hal.set_pulse_rate(
        "flow",
        (12 * hal.pins.get("zone1", 0) + 8 * hal.pins.get("zone2", 0)) * 450 // 60 if hal.pins.get("master") else 0,
    )
    cfg = {"irrigation": {"zones": [{"flow_dlpm": 120}, {"flow_dlpm": 80}], "tick_ms": 5000, "schedule": []}}
    app = Irrigation(cfg, hal, Node(hal, irrigation_calendar()))
    task = asyncio.create_task(app.run())
    await clock.run_for(hours * 3600000)
    task.cancel()
    opens = {}
    for name in ("zone1", "zone2"):
        opens[name] = [t0 + t // 1000 for t, v in hal.changes(name) if v == 1]
    return opens


async def test_irrigation_follows_local_time_into_summer_time():
    # 2027-03-27 (Saturday, UTC+1) 00:00 UTC to 2027-03-28 (Sunday, UTC+2) 08:00 UTC
    opens = await irrigation_run(utc(2027, 3, 27), 32)
    z1 = opens["zone1"]
    assert len(z1) == 2, z1
    assert utc(2027, 3, 27, 5) <= z1[0] < utc(2027, 3, 27, 5, 1), z1  # 06:00 CET
    assert utc(2027, 3, 28, 4) <= z1[1] < utc(2027, 3, 28, 4, 1), z1  # 06:00 CEST
    # zone 2 on odd days at 02:30: 27 March at 01:30 UTC; on the 28th (even) never
    z2 = opens["zone2"]
    assert len(z2) == 1 and utc(2027, 3, 27, 1, 30) <= z2[0] < utc(2027, 3, 27, 1, 31), z2


async def test_irrigation_follows_local_time_out_of_summer_time():
    # 2026-10-24 (Saturday, UTC+2) to 2026-10-25 (Sunday, UTC+1): 02:00-03:00 local twice on the 25th
    opens = await irrigation_run(utc(2026, 10, 24, 3), 28)
    z1 = opens["zone1"]
    assert len(z1) == 2, z1
    assert utc(2026, 10, 24, 4) <= z1[0] < utc(2026, 10, 24, 4, 1), z1  # 06:00 CEST
    assert utc(2026, 10, 25, 5) <= z1[1] < utc(2026, 10, 25, 5, 1), z1  # 06:00 CET
    # 25 is odd: 02:30 comes twice that night (00:30 and 01:30 UTC) and waters once
    z2 = opens["zone2"]
    assert len(z2) == 1 and utc(2026, 10, 25, 0, 30) <= z2[0] < utc(2026, 10, 25, 0, 31), z2


# -- the runtime: fragments over the air -------------------------------------------------------


def frags_config(frags):
    return [(m.CONFIG, {0: {}, 3: f}) for f in frags]


def hello_hashes(gw):
    # the hashes the node reported: EVENT calendar (SPEC §5 "Calendars"), one per HELLO at most
    return [pc.value_hash(e[3][2]) for e in gw.of_type(m.EVENT) if e[3][0] == m.EV_CALENDAR]


async def test_runtime_takes_stores_and_reports_a_calendar():
    clock = mpnode.new_clock()
    storage = {}
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60000)
    assert hello_hashes(gw) == []  # nothing held: no EVENT calendar after the HELLO
    cal = lighting_calendar()
    frags = pc.fragments(cal)
    assert len(frags) > 1 and max(len(f) for f in frags) <= pc.FRAG_MAX
    gw.pending = frags_config(frags)
    await clock.run_for(2 * 900 * 1000)
    h = pc.digest(cal)
    assert node.schedule == [h + cal, []], node.last_error
    assert storage["calendar.bin"] == h + cal
    assert hello_hashes(gw)[-1] == h
    assert gw.max_frame <= 51, gw.max_frame
    assert node.cfg_rejected == 0
    # the same calendar again: its first fragment is enough, answered by an EVENT calendar
    n = len(hello_hashes(gw))
    gw.pending = frags_config(frags[:1])
    await clock.run_for(2 * 900 * 1000)
    assert hello_hashes(gw)[n:] == [h]
    mpnode.stop(hal, tasks)
    # a reboot keeps it, and HELLO says so
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage, reset_cause=m.RST_SOFT)
    await clock.run_for(60000)
    assert node.schedule[0] == h + cal and hello_hashes(gw) == [h]
    mpnode.stop(hal, tasks)


def raw_config(gw, body_cbor):
    raw = fr.seal(gw.keys, m.CONFIG, gw.down, body_cbor)
    gw.down += 1
    return raw


async def test_runtime_refuses_bad_calendars_and_changes_nothing():
    clock = mpnode.new_clock()
    storage = {}
    hal, node, gw, tasks, _ = mpnode.start_node(clock, "lighting", storage=storage)
    await clock.run_for(60000)
    good = lighting_calendar()
    gw.pending = frags_config(pc.fragments(good))
    await clock.run_for(2 * 900 * 1000)
    assert node.schedule[0] == held(good)
    stored = storage["calendar.bin"]
    hellos = len(hello_hashes(gw))

    async def refused(pending):
        before = node.cfg_rejected + node.rx_rejected
        gw.pending = pending
        await clock.run_for(2 * 900 * 1000)
        assert node.schedule[0] == held(good) and storage["calendar.bin"] == stored
        assert len(hello_hashes(gw)) == hellos
        return node.cfg_rejected + node.rx_rejected - before

    other = pc.encode(m.KIND_LIGHTING, 0, 0, [[(0, 0, 50)]], [(pc.when(), pc.light_action(0))] * 2)
    frags = pc.fragments(other)
    # corrupted: one byte of a fragment changed (the hash in the first fragment no longer matches)
    bad = bytearray(frags[1])
    bad[5] ^= 0x40
    assert await refused(frags_config([frags[0], bytes(bad)] + frags[2:])) == 1
    # a fragment with no first one; then partial: the last fragment never comes
    assert await refused(frags_config(frags[1:2])) == 1
    assert await refused(frags_config(frags[:-1])) == 0
    # a valid hash over an invalid calendar (a rule naming profile 9 of 1)
    worse = bytearray(other)
    worse[-1] = 9
    data = pc.digest(bytes(worse)) + bytes(worse)
    parts = [bytes((i // 24, (len(data) + 23) // 24)) + data[i : i + 24] for i in range(0, len(data), 24)]
    assert await refused(frags_config(parts)) == 1
    # oversized: 12 fragments announced (11 at most), a fragment longer than 26 B, a wrong kind
    assert await refused(frags_config([bytes((0, 12)) + bytes(24)])) == 1
    # a fragment of 27 B: the message table refuses the CONFIG before the calendar code sees it
    seal = gw.seal

    def seal_raw(mtype, body):
        return raw_config(gw, body) if type(body) is bytes else seal(mtype, body)

    gw.seal = seal_raw
    before = node.rx_rejected
    assert await refused([(m.CONFIG, cbor.dumps({0: {}, 3: bytes((0, 1)) + bytes(25)}))]) == 1
    assert node.rx_rejected == before + 1
    gw.seal = seal
    irr = pc.encode(m.KIND_IRRIGATION, 0, 0, [], [(pc.when(), pc.program_action(1, 60, 5))])
    assert await refused(frags_config(pc.fragments(irr))) == 1
    assert node.app_faults == 0
    mpnode.stop(hal, tasks)
