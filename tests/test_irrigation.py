"""firmware/irrigation.py on the simulated HAL and a virtual clock.

The world: a mainline behind a master valve feeding up to four zones, a flow meter of 450
pulses per litre counting whatever passes (integrated on virtual time by the SimHAL), leaks,
bursts, stuck valves, and soil that gets wetter while its zone waters, read by capacitive
sensors (2800 mV dry, 1400 mV at 50 % volumetric water content). Events go through a
runtime-shaped facade on a real Store.

Over 600 lines on purpose: every test drives the one simulated world defined at the top (valves,
flow meter, soil); splitting it by feature would copy that world into each file.
"""

from __future__ import annotations

import asyncio

import pytest
from apps_support import AppNode, simulate, start
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import astro
from firmware.irrigation import Irrigation, check
from protocol import frame
from protocol import messages as m
from simulator.hal_sim import SimHAL

PPL = 450
MONDAY = astro.days_from_civil(2026, 3, 16)  # a Monday
T0 = MONDAY * 86400 + 3 * 3600  # 03:00 UTC, 04:00 at UTC+1
FLOWS = (12.0, 8.0, 20.0, 6.0)  # L/min per zone
MIN = 60_000


def zones(n=2, **extra):
    return [dict({"flow_dlpm": int(FLOWS[i] * 10)}, **extra) for i in range(n)]


def cfg_with(**section):
    section.setdefault("zones", zones())
    section.setdefault("utc_offset_min", 60)
    return {"irrigation": section}


class Water:
    """Pipes and soil. Flow through the meter: the open zones' rates while the master valve is
    open, plus a burst (mainline, behind the master) and a leak (always)."""

    def __init__(self, hal: SimHAL, master: bool = True) -> None:
        self.hal = hal
        self.master = master
        self.leak_lpm = 0.0
        self.burst_lpm = 0.0
        self.stuck: set[int] = set()  # zones whose valve never opens
        self.stuck_open: set[int] = set()  # zones whose valve never closes
        self.flows = list(FLOWS)  # L/min each zone really takes
        self.theta = [20.0, 20.0, 20.0, 20.0]  # soil moisture, % volumetric
        self.wet_per_min = 0.5  # % gained per minute of watering
        self.sensor_fault: set[int] = set()
        self._opened: dict[int, int] = {}
        hal.on_output = self._changed
        for z in range(1, 5):
            hal.set_adc(f"moisture{z}", (lambda z=z: self.moisture_mv(z)))
        self.update()

    def flowing(self) -> bool:
        return not self.master or bool(self.hal.pins.get("master"))

    def lpm(self) -> float:
        f = self.leak_lpm
        if self.flowing():
            f += self.burst_lpm
            for z in range(1, 5):
                if (self.hal.pins.get(f"zone{z}") or z in self.stuck_open) and z not in self.stuck:
                    f += self.flows[z - 1]
        return f

    def update(self) -> None:
        self.hal.set_pulse_rate("flow", self.lpm() * PPL / 60)

    def _changed(self, name: str, value: int) -> None:
        now = self.hal.ticks_ms()
        for z in range(1, 5):
            if self.hal.pins.get(f"zone{z}") and self.flowing() and z not in self.stuck:
                self._opened.setdefault(z, now)
            elif z in self._opened:
                self.theta[z - 1] += self.wet_per_min * (now - self._opened.pop(z)) / MIN
        self.update()

    def moisture_pct(self, z: int) -> float:
        extra = 0.0
        if z in self._opened:
            extra = self.wet_per_min * (self.hal.ticks_ms() - self._opened[z]) / MIN
        return self.theta[z - 1] + extra

    def moisture_mv(self, z: int) -> int:
        if z in self.sensor_fault:
            return 0  # cable cut
        return int(2800 + (1400 - 2800) * self.moisture_pct(z) / 50)

    def set(self, **kw) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        self.update()


def make(clock, cfg=None, storage=None, time_known=True, **hal_kw):
    hal = SimHAL(clock, time_known=time_known, storage=storage, **hal_kw)
    water = Water(hal, master=(cfg or cfg_with())["irrigation"].get("master", 1) == 1)
    node = AppNode(hal)
    app = Irrigation(cfg or cfg_with(), hal, node)
    return hal, water, node, app


def report(app):
    mtype, body = app.report()
    assert mtype == m.IRRIGATION
    cbor = m.encode(m.IRRIGATION, body)  # every report must be a valid IRRIGATION body ...
    assert frame.HEADER_LEN + len(cbor) + frame.MIC_LEN <= 51  # ... in a frame legal at SF12
    return body


def opened(hal, name):
    """[(open ms, close ms or None)] of one valve, from the HAL's history."""
    out = []
    for t, v in hal.changes(name):
        if v:
            out.append([t, None])
        elif out and out[-1][1] is None:
            out[-1][1] = t
    return [tuple(x) for x in out]


def until_local(unix0, hh, mm, offset_min=60):
    """ms from the node's boot (at unix0) to hh:mm local time of that day."""
    day_start = (unix0 + offset_min * 60) // 86400 * 86400 - offset_min * 60
    return (day_start + hh * 3600 + mm * 60 - unix0) * 1000


# -- schedules -----------------------------------------------------------------------------------


def test_a_day_of_schedules_runs_zones_in_turn_with_the_master_valve():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 300, 5], [1, 0x7F, 1260, 3]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        await clock.run_for(until_local(T0, 5, 2))
        b = report(app)
        assert b[1] == 0x01 | m.VALVE_MASTER and abs(b[2] - 120) <= 1  # zone 1, 12.0 L/min
        await clock.run_for(24 * 3600_000 - hal.ticks_ms())
        task.cancel()
        return hal, node, app

    hal, node, app = simulate(body, T0)
    start5 = until_local(T0, 5, 0)
    start21 = until_local(T0, 21, 0)
    assert opened(hal, "zone1") == [(start5, start5 + 10 * MIN), (start21, start21 + 3 * MIN)]
    assert opened(hal, "zone2") == [(start5 + 10 * MIN, start5 + 15 * MIN)]
    assert opened(hal, "master") == [(start5, start5 + 15 * MIN), (start21, start21 + 3 * MIN)]
    # the master opens after the zone and closes before it (hammer, and no water in a dead end)
    changes = [(n, v) for t, n, v in hal.history if t == start5 + 15 * MIN]
    assert changes == [("master", 0), ("zone2", 0)]
    expected_l = 13 * 12 + 5 * 8
    assert abs(node.store.get("vol_l") - expected_l) <= 1
    assert node.events == []
    b = report(app)
    assert b[1] == 0 and b[2] == 0 and b[3] == node.store.get("vol_l") and b[6] == 0


def test_weekday_mask():
    cfg = cfg_with(schedule=[[1, 0b0000001, 300, 2]])  # Mondays only
    for day, runs in ((MONDAY, 1), (MONDAY + 1, 0), (MONDAY + 7, 1), (MONDAY + 6, 0)):
        t0 = day * 86400 + 3 * 3600

        async def body(clock, t0=t0):
            hal, water, node, app = make(clock, cfg)
            task = start(app)
            await clock.run_for(until_local(t0, 5, 5))
            task.cancel()
            return hal

        hal = simulate(body, t0)
        assert len(opened(hal, "zone1")) == runs, day


def test_set_schedule_replaces_the_zones_it_names_and_persists():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 310, 5]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        # zone 1 twice a day, zone 2 unchanged
        assert app.command(m.OP_SET_SCHEDULE, [1, 0x7F, 240, 4, 1, 0x7F, 250, 3]) == (m.RES_OK, 3)
        assert sorted(app.schedule) == [(1, 0x7F, 240, 4), (1, 0x7F, 250, 3), (2, 0x7F, 310, 5)]
        assert app.command(m.OP_SET_SCHEDULE, [2, 0x7F, 0, 0]) == (m.RES_OK, 2)  # zone 2: none
        await clock.run_for(until_local(T0, 6, 0))
        task.cancel()
        # reboot: the schedule set over the air is the one that runs
        hal2 = SimHAL(clock, time_known=True, storage=hal.storage)
        Water(hal2)
        app2 = Irrigation(cfg, hal2, AppNode(hal2))
        return hal, app2

    hal, app2 = simulate(body, T0)
    assert [b - a for a, b in opened(hal, "zone1")] == [4 * MIN, 3 * MIN]
    assert opened(hal, "zone2") == []
    assert sorted(app2.schedule) == [(1, 0x7F, 240, 4), (1, 0x7F, 250, 3)]


@pytest.mark.parametrize(
    "args",
    [
        [],
        [1, 0x7F, 300],
        [0, 0x7F, 300, 5],
        [3, 0x7F, 300, 5],
        [1, 128, 300, 5],
        [1, -1, 300, 5],
        [1, 0x7F, 1440, 5],
        [1, 0x7F, -1, 5],
        [1, 0x7F, 300, 1441],
        [1, 0x7F, 300, -1],
        [1, 1, 1, 1] * 7,
    ],
)
def test_set_schedule_bounds(args):
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(), hal, AppNode(hal))
    assert app.command(m.OP_SET_SCHEDULE, args) == (m.RES_BAD_ARGS, 0)
    assert app.schedule == [] and "iprog" not in hal.storage


def test_at_most_eight_schedule_entries():
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(zones=zones(4)), hal, AppNode(hal))
    six = [z for i in range(6) for z in (1 + i % 4, 0x7F, 60 * i, 5)]
    assert app.command(m.OP_SET_SCHEDULE, six) == (m.RES_OK, 6)
    # zone 1 and 2 entries are replaced (4 go, 2 come): 4 left + 2 = 6 ... then two more zones
    assert app.command(m.OP_SET_SCHEDULE, [1, 1, 1, 1, 2, 1, 2, 1]) == (m.RES_OK, 4)
    assert app.command(m.OP_SET_SCHEDULE, [1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 3, 1, 1, 1, 4, 1, 1, 1, 5, 1, 2, 1, 6, 1]) == (
        m.RES_OK,
        8,
    )
    # 6 new zone-1 entries + zones 2, 3, 4 kept = 9: refused, nothing changed
    assert app.command(m.OP_SET_SCHEDULE, [1, 1, 1, 1] * 6) == (m.RES_BAD_ARGS, 0)
    assert len(app.schedule) == 8
    assert app.command(m.OP_SET_SCHEDULE, [3, 1, 7, 1, 3, 1, 8, 1, 4, 1, 9, 1]) == (m.RES_BAD_ARGS, 0)
    assert app.command(m.OP_SET_SCHEDULE, [3, 1, 7, 1, 4, 1, 9, 1]) == (m.RES_OK, 8)


class _Clock:
    unix0 = T0

    def ms(self):
        return 0


# -- soil moisture and rain ------------------------------------------------------------------------


def test_soil_moisture_skips_wet_zones_and_waters_toward_the_target():
    cfg = cfg_with(
        zones=zones(3, moisture=1, skip_pct=25, target_pct=30),
        schedule=[[1, 0x7F, 300, 40], [2, 0x7F, 300, 10], [3, 0x7F, 300, 15]],
    )

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        water.theta = [22.0, 27.0, 20.0, 20.0]  # zone 2 is wet enough: skipped
        water.sensor_fault = {3}  # zone 3's sensor is cut: runs its scheduled minutes, no more
        task = start(app)
        await clock.run_for(until_local(T0, 5, 1))
        b = report(app)
        assert b[0] == bytes([45, 54, 0xFF])  # 22.5 % after a minute, 27.0 %, no value; 0.5 % steps
        await clock.run_for(until_local(T0, 7, 0) - hal.ticks_ms())
        task.cancel()
        return hal, water

    hal, water = simulate(body, T0)
    (z1,) = opened(hal, "zone1")
    # 22 % -> 30 % at 0.5 %/min: 16 min, plus the 30 s hold; the 40-minute schedule is only a cap
    # (the sensor's 1 mV steps are 0.036 % each: the target shows a few seconds early)
    assert 16 * MIN + 20_000 <= z1[1] - z1[0] <= 16 * MIN + 33_000
    assert opened(hal, "zone2") == []
    (z3,) = opened(hal, "zone3")
    assert z3[1] - z3[0] == 15 * MIN and z3[0] == z1[1]


def test_rain_sensor_skips_and_stops_scheduled_runs_not_manual_ones():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 400, 10]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        hal.set_pin("rain", 1)
        await clock.run_for(until_local(T0, 5, 5))
        assert report(app)[4] == m.RAIN_SENSOR_WET
        assert opened(hal, "zone1") == []
        assert app.command(m.OP_OPEN_ZONE, [1, 2]) == (m.RES_OK, 2)  # an operator overrides rain
        await clock.run_for(3 * MIN)
        assert len(opened(hal, "zone1")) == 1
        hal.set_pin("rain", 0)
        await clock.run_for(until_local(T0, 6, 42) - hal.ticks_ms())
        assert hal.pins["zone2"] == 1
        hal.set_pin("rain", 1)  # rain starts mid-run
        await clock.run_for(2000)
        assert hal.pins["zone2"] == 0 and hal.pins["master"] == 0
        task.cancel()

    simulate(body, T0)


def test_rain_delay():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10]])
    storage: dict = {}

    async def today(clock):
        hal, water, node, app = make(clock, cfg, storage=storage)
        task = start(app)
        assert app.command(m.OP_RAIN_DELAY, [30]) == (m.RES_OK, 30)
        assert report(app)[4] == m.RAIN_DELAY_ACTIVE
        await clock.run_for(until_local(T0, 5, 30))  # today's run: skipped
        task.cancel()
        return opened(hal, "zone1")

    assert simulate(today, T0) == []

    # the delay survives a reboot: 30 h from 03:00 UTC still holds at 05:00 local tomorrow
    def later(days, expect_runs, more=None):
        t0 = T0 + days * 86400

        async def body(clock):
            hal, water, node, app = make(clock, cfg, storage=storage)
            task = start(app)
            await clock.run_for(until_local(t0, 5, 30))
            if more:
                more(app, hal)
            task.cancel()
            return opened(hal, "zone1"), report(app)

        runs, body_ = simulate(body, t0)
        assert len(runs) == expect_runs, days
        return body_

    assert later(1, 0)[4] == m.RAIN_DELAY_ACTIVE

    def commands(app, hal):
        assert app.command(m.OP_RAIN_DELAY, [721]) == (m.RES_BAD_ARGS, 0)
        assert app.command(m.OP_RAIN_DELAY, []) == (m.RES_BAD_ARGS, 0)
        assert app.command(m.OP_RAIN_DELAY, [720]) == (m.RES_OK, 720)
        assert report(app)[4] == m.RAIN_DELAY_ACTIVE
        assert app.command(m.OP_RAIN_DELAY, [0]) == (m.RES_OK, 0)  # cancelled
        hal.lose_time()
        assert app.command(m.OP_RAIN_DELAY, [5]) == (m.RES_REFUSED, 0)

    assert later(2, 1, commands)[4] == 0


# -- flow faults ------------------------------------------------------------------------------------


def test_leak_with_every_valve_closed():
    async def body(clock):
        hal, water, node, app = make(clock)
        task = start(app)
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_OK, 5)
        await clock.run_for(5 * MIN)
        # the pipes drain for 20 s after the valves close: not a leak
        water.set(leak_lpm=2.0)
        await clock.run_for(20_000)
        water.set(leak_lpm=0.0)
        await clock.run_for(5 * MIN)
        assert node.events == []
        water.set(leak_lpm=1.0)  # a dripping fitting: 1 L/min with everything shut
        leak_at = hal.ticks_ms()
        await clock.run_for(3 * MIN)
        b = report(app)
        assert b[6] & m.IF_LEAK and abs(b[2] - 10) <= 1
        water.set(leak_lpm=0.0)
        await clock.run_for(3 * MIN)
        task.cancel()
        return node, leak_at

    node, leak_at = simulate(body, T0)
    leak = node.of(m.EV_LEAK)
    assert [e.active for e in leak] == [1, 0]
    assert leak_at + 60_000 <= leak[0].t_ms <= leak_at + 64_000  # a window to fill, then LEAK_MS
    assert abs(leak[0].value - 10) <= 1 and leak[0].severity == m.SEV_ALARM
    assert len(node.events) == 2


def test_burst_closes_the_master_valve_within_seconds_and_locks_out():
    cfg = cfg_with(schedule=[[2, 0x7F, 300, 10]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [1, 30])
        await clock.run_for(2 * MIN)
        water.set(burst_lpm=40.0)  # a mainline pipe bursts: 52 L/min against 12 expected
        burst_at = hal.ticks_ms()
        await clock.run_for(MIN)
        task_state = report(app)
        assert task_state[1] == 0 and task_state[6] & m.IF_BURST
        # locked out: no manual run, no schedule, until someone clears it
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_REFUSED, 0)
        await clock.run_for(until_local(T0, 5, 20) - hal.ticks_ms())
        assert opened(hal, "zone2") == []
        water.set(burst_lpm=0.0)  # repaired
        assert app.command(m.OP_CLEAR_FAULT, []) == (m.RES_OK, 1)
        assert app.open_alarms() == 0
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_OK, 5)
        await clock.run_for(MIN)
        assert hal.pins["zone1"] == 1 and hal.pins["master"] == 1
        task.cancel()
        return hal, node, burst_at

    hal, node, burst_at = simulate(body, T0)
    closed = [t for t, v in hal.changes("master") if v == 0 and t > burst_at][0]
    assert closed - burst_at <= 5000  # FLOW_WINDOW + BURST_MS
    burst = node.of(m.EV_BURST)
    assert [(e.active, e.severity, e.zone) for e in burst] == [(1, m.SEV_CRITICAL, 1), (0, m.SEV_CRITICAL, 0)]
    assert burst[0].value > 3 * 120
    assert node.of(m.EV_LEAK) == []  # the master shut the burst off: no flow left


def test_burst_present_at_opening_is_caught_after_the_pipes_fill():
    async def body(clock):
        hal, water, node, app = make(clock)
        water.set(burst_lpm=60.0)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [2, 10])
        await clock.run_for(30_000)
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    ((t_open, t_close),) = opened(hal, "master")
    assert 15_000 <= t_close - t_open <= 18_000
    assert len(node.of(m.EV_BURST)) == 1


def test_no_flow_closes_the_zone_and_the_queue_goes_on():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 300, 5]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        water.stuck = {1}
        task = start(app)
        await clock.run_for(until_local(T0, 5, 10))
        assert report(app)[6] & m.IF_NO_FLOW
        water.stuck = set()  # the valve is freed
        assert app.command(m.OP_OPEN_ZONE, [1, 2]) == (m.RES_OK, 2)
        await clock.run_for(3 * MIN)
        assert not report(app)[6] & m.IF_NO_FLOW
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    start5 = until_local(T0, 5, 0)
    z1 = opened(hal, "zone1")
    assert z1[0][0] == start5 and 60_000 <= z1[0][1] - start5 <= 62_000
    assert 0 <= opened(hal, "zone2")[0][0] - z1[0][1] <= 1000  # zone 2 took over at the next tick
    nf = node.of(m.EV_NO_FLOW)
    assert [(e.active, e.zone) for e in nf] == [(1, 1), (0, 1)]
    assert len(node.events) == 2


def test_no_pressure_raises_no_flow_per_zone_once():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [1, 0x7F, 320, 10], [2, 0x7F, 340, 5]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        water.stuck = {1, 2}  # no pressure on the mainline
        task = start(app)
        await clock.run_for(until_local(T0, 6, 0))
        assert app.open_alarms() == 2
        task.cancel()
        return node

    node = simulate(body, T0)
    assert [(e.active, e.zone) for e in node.of(m.EV_NO_FLOW)] == [(1, 1), (1, 2)]


# -- more flow than the open zone explains -------------------------------------------------------


def test_a_valve_stuck_open_behind_the_master_raises_excess_flow_and_locks_out():
    """Zone 2 stuck open flows only while the master is open: 12 + 8 L/min while zone 1 waters,
    167 % of zone 1's rate -- under the burst threshold (200 %), over the excess one (130 %)."""
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 300, 5]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        water.set(stuck_open={2})
        task = start(app)
        await clock.run_for(until_local(T0, 4, 59))
        assert report(app)[6] == 0  # master closed: the stuck valve shows nothing
        await clock.run_for(3 * MIN)
        body_ = report(app)
        assert body_[1] == 0 and body_[6] & m.IF_EXCESS_FLOW and not body_[6] & m.IF_BURST
        assert water.lpm() == 0  # behind the closed master the stuck valve is dry
        assert app.open_alarms() == 1
        # needs a person: no manual run, no schedule the next morning
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_REFUSED, 0)
        await clock.run_for(until_local(T0, 5 + 24, 30) - hal.ticks_ms())
        assert hal.pins.get("master") == 0
        water.set(stuck_open=set())  # the valve is replaced
        assert app.command(m.OP_CLEAR_FAULT, []) == (m.RES_OK, 1)
        assert app.open_alarms() == 0 and not report(app)[6]
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_OK, 5)
        await clock.run_for(2 * MIN)
        assert hal.pins["zone1"] == 1 and hal.pins["master"] == 1
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    start5 = until_local(T0, 5, 0)
    ((t_open, t_close), _manual) = opened(hal, "master")
    assert t_open == start5
    # the pipes fill (15 s), then 30 s over the threshold, plus the meter's 3-tick window
    assert 44_000 <= t_close - t_open <= 49_000  # (the first tick past the fill counts its whole second)
    assert opened(hal, "zone2") == []  # the queue was dropped
    xs = node.of(m.EV_EXCESS_FLOW)
    assert [(e.active, e.severity, e.zone) for e in xs] == [(1, m.SEV_ALARM, 1), (0, m.SEV_ALARM, 0)]
    assert 190 <= xs[0].value <= 210  # 20 L/min measured, in 0.1 L/min
    assert node.of(m.EV_BURST) == [] and node.of(m.EV_LEAK) == [] and node.of(m.EV_NO_FLOW) == []


@pytest.mark.parametrize(
    "actual_over_nominal,raised",
    [
        (1.0, None),
        (1.25, None),
        (1.4, m.EV_EXCESS_FLOW),
        (1.9, m.EV_EXCESS_FLOW),
        (2.0, m.EV_EXCESS_FLOW),
        (2.2, m.EV_EXCESS_FLOW),
        (3.0, m.EV_BURST),
    ],
)
def test_excess_flow_threshold_sits_between_tolerance_and_burst(actual_over_nominal, raised):
    """The nominal flow is configured; the pipes carry `actual_over_nominal` times it for 20 min."""
    cfg = cfg_with(zones=[{"flow_dlpm": int(round(FLOWS[0] * 10 / actual_over_nominal))}])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [1, 20])
        await clock.run_for(21 * MIN)
        task.cancel()
        return node

    node = simulate(body, T0)
    codes = [e.code for e in node.events if e.active]
    assert codes == ([] if raised is None else [raised])


def test_an_excess_shorter_than_the_hold_time_or_below_the_leak_floor_raises_nothing():
    async def body(clock):
        # 1: 0.4 L/min expected, 0.6 flowing -- 150 %, but only 0.2 L/min over (leak_dlpm: 0.5)
        hal, water, node, app = make(clock, cfg_with(zones=[{"flow_dlpm": 4}]))
        water.set(flows=[0.6, 8.0, 20.0, 6.0])
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [1, 10])
        await clock.run_for(11 * MIN)
        assert node.events == []
        task.cancel()
        # 2: a neighbour's valve sticks for 20 s, then closes (debris flushed)
        hal, water, node, app = make(clock)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [1, 10])
        await clock.run_for(2 * MIN)
        water.set(stuck_open={2})  # 167 %: over the excess threshold, under the burst one
        await clock.run_for(20_000)
        water.set(stuck_open=set())
        await clock.run_for(5 * MIN)
        assert node.events == [] and hal.pins["zone1"] == 1
        task.cancel()
        return True

    assert simulate(body, T0)


def test_without_a_master_valve_a_valve_stuck_open_is_a_leak():
    cfg = cfg_with(master=0)

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        water.set(stuck_open={2})
        task = start(app)
        await clock.run_for(3 * MIN)
        task.cancel()
        return node

    node = simulate(body, T0)
    assert [(e.code, e.active) for e in node.events] == [(m.EV_LEAK, 1)]


# -- the hard maximum run time ---------------------------------------------------------------


def test_a_schedule_longer_than_the_maximum_is_cut_and_reported():
    cfg = cfg_with(max_run_min=60, schedule=[[1, 0x7F, 300, 200], [1, 0x7F, 600, 20]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        await clock.run_for(until_local(T0, 6, 5))
        assert report(app)[6] & m.IF_MAX_RUNTIME
        await clock.run_for(until_local(T0, 10, 30) - hal.ticks_ms())  # a normal run clears it
        assert not report(app)[6] & m.IF_MAX_RUNTIME
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    z1 = opened(hal, "zone1")
    assert z1[0][1] - z1[0][0] == 60 * MIN + 1000  # the limit, then the next tick
    mr = node.of(m.EV_MAX_RUNTIME)
    assert [(e.active, e.zone, e.value) for e in mr] == [(1, 1, 60), (0, 1, 60)]


def test_the_maximum_holds_even_when_the_run_logic_is_broken():
    async def body(clock):
        hal, water, node, app = make(clock)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [2, 30])
        app.configure({m.CFG_MAX_RUN: 10})  # lowered over the air during a run
        app._control = lambda now, t, dt: None  # a bug: the run would never end
        await clock.run_for(15 * MIN)
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    ((a, b),) = opened(hal, "zone2")
    assert b - a == 10 * MIN + 1000
    assert opened(hal, "master") == [(a, b)]
    assert [e.zone for e in node.of(m.EV_MAX_RUNTIME)] == [2]


def test_open_zone_is_capped_by_the_maximum():
    cfg = cfg_with(max_run_min=45)

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        assert app.command(m.OP_OPEN_ZONE, [1, 1440]) == (m.RES_OK, 45)
        await clock.run_for(50 * MIN)
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    ((a, b),) = opened(hal, "zone1")
    assert b - a == 45 * MIN
    assert node.events == []  # the run logic ended it on time: the hard limit never acted


# -- commands -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[0, 5], [3, 5], [5, 5], [1, 0], [1, 1441], [1], [1, 5, 5], []])
def test_open_zone_bounds(args):
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(), hal, AppNode(hal))
    assert app.command(m.OP_OPEN_ZONE, args) == (m.RES_BAD_ARGS, 0)
    assert not hal.pins.get("zone1") and not hal.pins.get("master")


def test_open_zone_replaces_the_current_run_and_close_all_empties_the_queue():
    cfg = cfg_with(zones=zones(3), schedule=[[1, 0x7F, 300, 10], [2, 0x7F, 300, 10], [3, 0x7F, 300, 10]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        await clock.run_for(until_local(T0, 5, 2))
        assert app.command(m.OP_OPEN_ZONE, [3, 1]) == (m.RES_OK, 1)
        await clock.run_for(2000)
        assert report(app)[1] == 0x04 | m.VALVE_MASTER
        await clock.run_for(MIN)
        assert report(app)[1] == 0x02 | m.VALVE_MASTER  # the queue goes on with zone 2
        assert app.command(m.OP_CLOSE_ALL, []) == (m.RES_OK, 0)
        assert app.command(m.OP_CLOSE_ALL, [1]) == (m.RES_BAD_ARGS, 0)
        await clock.run_for(30 * MIN)
        assert report(app)[1] == 0
        task.cancel()
        return hal

    hal = simulate(body, T0)
    assert len(opened(hal, "zone3")) == 1  # only the manual run: the queue was emptied


def test_unknown_ops_are_refused():
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(), hal, AppNode(hal))
    for op in (m.OP_SET_LEVEL, m.OP_SET_PROFILE, m.OP_SET_INTERVAL, 0, 99):
        assert app.command(op, [1, 1]) == (m.RES_UNKNOWN_OP, 0)


@settings(max_examples=300, deadline=None)
@given(op=st.integers(0, 255), args=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=24), time_known=st.booleans())
def test_any_command_from_the_air_is_answered(op, args, time_known):
    hal = SimHAL(_Clock(), time_known=time_known)
    app = Irrigation(cfg_with(zones=zones(4)), hal, AppNode(hal))
    result, value = app.command(op, args)
    assert result in (m.RES_OK, m.RES_BAD_ARGS, m.RES_UNKNOWN_OP, m.RES_REFUSED, m.RES_FAILED)
    m.encode(m.CMD_ACK, {0: 1, 1: result, 2: value})
    app.step()
    report(app)
    if not time_known:
        assert not any(hal.pins.get(f"zone{z}") for z in range(1, 5))


def test_commands_when_storage_fails_are_applied_and_reported_failed():
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(), hal, AppNode(hal))
    hal.fail_saves = 2
    assert app.command(m.OP_SET_SCHEDULE, [1, 1, 60, 5]) == (m.RES_FAILED, 1)
    assert app.command(m.OP_RAIN_DELAY, [3]) == (m.RES_FAILED, 3)
    assert app.schedule == [(1, 1, 60, 5)] and app.rain_until > 0


# -- fail-safe ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", [m.RST_POWER_ON, m.RST_WATCHDOG, m.RST_BROWNOUT])
def test_valves_close_at_boot(cause):
    hal = SimHAL(_Clock(), time_known=True, reset_cause=cause)
    hal.pins.update({"zone1": 1, "zone2": 1, "master": 1})  # as the outputs were left
    Irrigation(cfg_with(), hal, AppNode(hal))
    assert hal.pins == {"zone1": 0, "zone2": 0, "master": 0}
    assert [n for _, n, _ in hal.history][0] == "master"  # the master first


def test_time_lost_closes_the_valves():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 30]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg)
        task = start(app)
        await clock.run_for(until_local(T0, 5, 5))
        assert hal.pins["zone1"] == 1
        hal.lose_time()
        await clock.run_for(1000)
        assert hal.pins["zone1"] == 0 and hal.pins["master"] == 0
        assert report(app)[6] & m.IF_FAILSAFE
        assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_REFUSED, 0)
        await clock.run_for(16 * MIN)
        assert [e.active for e in node.of(m.EV_IRRIGATION_FAILSAFE)] == [1]
        assert app.open_alarms() == 1
        hal.set_time(T0 + hal.ticks_ms() // 1000)
        await clock.run_for(1000)
        assert not report(app)[6] & m.IF_FAILSAFE
        assert [e.active for e in node.of(m.EV_IRRIGATION_FAILSAFE)] == [1, 0]
        await clock.run_for(30 * MIN)
        assert hal.pins["zone1"] == 0  # the interrupted run is not resumed
        task.cancel()

    simulate(body, T0)


def test_no_time_at_boot_runs_nothing():
    cfg = cfg_with(schedule=[[1, 0x7F, 300, 30]])

    async def body(clock):
        hal, water, node, app = make(clock, cfg, time_known=False)
        task = start(app)
        await clock.run_for(until_local(T0, 6, 0))
        task.cancel()
        return hal, node

    hal, node = simulate(body, T0)
    assert opened(hal, "zone1") == []
    assert [e.active for e in node.of(m.EV_IRRIGATION_FAILSAFE)] == [1]


def test_an_exception_in_the_app_closes_the_valves():
    async def body(clock):
        hal, water, node, app = make(clock)

        async def supervised():
            while True:
                try:
                    await app.run()
                except Exception:
                    app.failsafe()
                    await hal.sleep_ms(60_000)

        task = asyncio.get_running_loop().create_task(supervised())
        app.command(m.OP_OPEN_ZONE, [1, 30])
        await clock.run_for(MIN)
        assert hal.pins["zone1"] == 1

        def broken(dt):
            raise MemoryError("heap fragmented")

        app._measure = broken
        await clock.run_for(2000)
        assert hal.pins["zone1"] == 0 and hal.pins["master"] == 0
        task.cancel()

    simulate(body, T0)


def test_failsafe_closes_every_valve_even_if_one_output_fails():
    hal = SimHAL(_Clock(), time_known=True)
    app = Irrigation(cfg_with(zones=zones(4)), hal, AppNode(hal))
    app.command(m.OP_OPEN_ZONE, [3, 10])
    assert hal.pins["zone3"] == 1
    real = hal.pin_write

    def flaky(name, value):
        if name == "master":
            raise OSError("I2C expander not answering")
        real(name, value)

    hal.pin_write = flaky
    app.failsafe()
    assert hal.pins["zone3"] == 0


# -- reports ---------------------------------------------------------------------------------------------


def test_report_fields_and_supply_voltage():
    cfg = cfg_with(zones=[{"flow_dlpm": 120, "moisture": 1}, {"flow_dlpm": 80}], supply_sensor=1)
    hal = SimHAL(_Clock(), time_known=True)
    Water(hal)
    hal.set_adc("moisture1", int(2800 - 1400 * 31.5 / 50))  # 31.5 %
    hal.set_adc("supply", 12150)
    app = Irrigation(cfg, hal, AppNode(hal))
    b = report(app)
    assert b[0] == bytes([63, 0xFF])
    assert b[5] == 12150 and b[1] == 0 and b[4] == 0
    hal.set_adc("moisture1", 4000)  # far past "dry": a sensor fault, not a reading
    assert report(app)[0] == bytes([0xFF, 0xFF])


def test_volume_survives_a_reboot():
    async def body(clock):
        hal, water, node, app = make(clock)
        task = start(app)
        app.command(m.OP_OPEN_ZONE, [2, 10])
        await clock.run_for(11 * MIN)
        task.cancel()
        node.store.flush(force=True)
        hal2 = SimHAL(clock, time_known=True, storage=hal.storage)
        Water(hal2)
        return report(Irrigation(cfg_with(), hal2, AppNode(hal2)))

    b = simulate(body, T0)
    assert b[3] == 80


def test_the_latched_fault_mask_is_the_protocol_s():
    from firmware import irrigation  # the node folds it into a const(); it must match protocol/messages

    assert irrigation._LATCHED == m.IF_BURST | m.IF_EXCESS_FLOW


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, word",
    [
        ({"zones": []}, "zones"),
        ({"zones": [{}] * 5}, "zones"),
        ({"zones": [{"flow_dlpm": 0}]}, "flow_dlpm"),
        ({"zones": [{"skip_pct": 40, "target_pct": 30}]}, "skip_pct"),
        ({"valves": 2}, "unknown"),
        ({"max_run_min": 0}, "max_run_min"),
        ({"schedule": [[1, 1, 1]]}, "schedule"),
        ({"zones": [{}], "schedule": [[2, 1, 1, 1]]}, "schedule"),
        ({"moist_mv_0": 1000, "moist_mv_50": 1000}, "differ"),
        ({"zones": ["a"]}, "zones"),
        ({"excess_pct": 5}, "excess_pct"),
    ],
)
def test_bad_settings_are_named(section, word):
    with pytest.raises(ValueError, match=word):
        check(section)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**7),
            st.integers(-1000, 70000),
            st.booleans(),
            st.one_of(st.none(), st.integers(0, 2**32 - 1)),
            st.integers(0, 120_000),
            st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 1440))),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_sensor_readings_never_crash_the_loop(readings):
    clock = _Clock()
    now = [0]
    clock.ms = lambda: now[0]
    hal = SimHAL(clock, time_known=True)
    cfg = cfg_with(zones=zones(4, moisture=1), supply_sensor=1, schedule=[[z, 0x7F, 60 * z, 30] for z in range(1, 5)])
    app = Irrigation(cfg, hal, AppNode(hal))
    for pulses, mv, rain, unix, dt, cmd in readings:
        hal.set_pulses("flow", pulses)  # may run backwards: a meter swapped or reset
        for z in range(1, 5):
            hal.set_adc(f"moisture{z}", mv)
        hal.set_adc("supply", mv)
        hal.set_pin("rain", rain)
        if unix is None:
            hal.lose_time()
        else:
            hal.set_time(unix)
        if cmd:
            app.command(m.OP_OPEN_ZONE, list(cmd))
        now[0] += dt
        app.step()
        open_zones = [z for z in range(1, 5) if hal.pins.get(f"zone{z}")]
        assert len(open_zones) <= 1  # one zone at a time, always
        if hal.pins.get("master"):
            assert open_zones  # never the master alone
        if unix is None:
            assert not open_zones
        report(app)
