# Battery irrigation nodes (firmware/battery.py) under real MicroPython, from .mpy: deep sleep
# cycles on the StepClock, each wake cause (timer for a report and for a schedule, a flow pulse,
# the rain sensor), latching valves, state across sleeps, and the safety rule: a valve left open
# across a sleep always has a wake before its maximum run time.
import asyncio

import mpnode
from firmware.battery import BatteryIrrigation, BatteryNode
from firmware.radio import MemoryRadio, memory_link
from protocol import messages as m
from simulator.hal_sim import SimHAL, SimReset, SimSleep

MPY = True
S = 1000
MIN = 60 * S
H = 60 * MIN
VALVES = ("master", "zone1", "zone2")


class Cell:
    """One battery node and its gateway across deep sleeps: each wake is a new SimHAL and BatteryNode
    (a board boots again), with the old HAL's storage, RTC memory and latched valve positions."""

    def __init__(self, clock, flow_meter=1, schedule=None, max_run_min=120, zones=None):
        self.clock = clock
        section = {
            "zones": zones or [{"flow_dlpm": 120}, {"flow_dlpm": 80}],
            "schedule": schedule if schedule is not None else [[1, 127, 300, 20]],  # 05:00, 20 min
            "utc_offset_min": 0,
            "battery": 1,
            "latch_ms": 40,
            "flow_meter": flow_meter,
            "max_run_min": max_run_min,
        }
        self.cfg = mpnode.node_config("irrigation", **section)
        self.storage = {}
        self.rtc = {}
        self.hal = None
        self.gw_hal = SimHAL(clock)
        self.node_radio, gw_radio = memory_link(None, self.gw_hal, sf=9)
        self.gw = mpnode.MiniGateway(self.gw_hal, gw_radio, clock=clock)
        self.gw_task = asyncio.create_task(self.gw.run())
        self.sleeps = []  # (ticks when it slept, SimSleep)
        self.boots = 0
        self.pulses = 0
        self.leak_lpm = 0
        self.hals = []
        self.boot_at = []  # clock ms of each boot: a HAL's ticks_ms start at 0 there
        self.cause = 0  # what a wake before the timer was: 1 flow, 2 rain
        self.resets = 0

    def boot(self, cause=m.RST_POWER_ON, wake=0):
        old = self.hal
        hal = SimHAL(self.clock, storage=self.storage, reset_cause=cause, time_known=old is None)
        if old is not None:
            hal.carry_clock(old)
            for v in VALVES:  # a latching valve stays where its last pulse put it
                if v in old.pins:
                    hal.pins[v] = old.pins[v]
        hal.rtc = self.rtc
        hal.wake = wake
        self.world = mpnode.WaterWorld(hal)
        self.hal = hal
        hal.on_output = self._flows
        self._flows()
        radio = MemoryRadio(hal, sf=9)
        radio.peer = self.gw.radio
        self.gw.radio.peer = radio
        self.hals.append(hal)
        self.boot_at.append(self.clock.ms())
        self.node = BatteryNode(self.cfg, hal, radio, BatteryIrrigation, hello_jitter_ms=0, watchdog=False)
        self.boots += 1
        self.done = []
        self.task = asyncio.create_task(self._live(self.node))

    def _flows(self, name=None, value=None):
        hal = self.hal
        lpm = self.leak_lpm
        if hal.pins.get("master", 0):
            for z in range(2):
                if hal.pins.get("zone%d" % (z + 1), 0):
                    lpm += (12, 8)[z]
        hal.set_pulse_rate("flow", lpm * 450 / 60)

    async def _live(self, node):
        try:
            await node.run()
        except SimSleep as s:
            self.sleeps.append((self.clock.ms(), s))
            self.pulses += self.hal.valve_pulses
        except SimReset:
            self.resets += 1  # the board resets instead of sleeping (a release rolled back)
        self.done.append(1)

    async def until_asleep(self, limit_ms=3 * H):
        end = self.clock.ms() + limit_ms
        while not self.done:
            assert self.clock.ms() < end, "the node never slept"
            await self.clock.run_for(S)
        return self.sleeps[-1][1]

    async def sleep_through(self, until_ms=None):
        """Let the last sleep run to its timer (or to `until_ms`, earlier), then wake the node."""
        at, s = self.sleeps[-1]
        wake_at = at + s.ms if until_ms is None else min(until_ms, at + s.ms)
        await self.clock.run_until(wake_at)
        self.boot(m.RST_DEEPSLEEP, 0 if until_ms is None or until_ms >= at + s.ms else self.cause)

    def changes(self, name):
        """(clock ms, value) of every change of output `name`, over every boot."""
        out = []
        for i in range(len(self.hals)):
            for t, n, v in self.hals[i].history:
                if n == name:
                    out.append((self.boot_at[i] + t, v))
        return out

    async def until(self, pred, cycles=20):
        """Sleep and wake (timer) until pred() holds after a sleep."""
        for _ in range(cycles):
            if pred():
                return
            await self.sleep_through()
            await self.until_asleep()
        assert pred(), "never"

    def stop(self):
        self.task.cancel()
        self.gw_task.cancel()
        for h in self.hals:
            h.power_off()


def valve(hal, name):
    return hal.pins.get(name, 0)


async def test_a_sleep_cycle_reports_on_timer_wakes_without_hello():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 12 * 3600)  # noon: no watering due for hours
    c = Cell(clock)
    c.boot()
    s = await c.until_asleep()
    first = c.hals[0]
    # a real boot: every valve closed by a close pulse, HELLO sent and answered by TIME
    assert first.valve_pulses == 3 and all(valve(first, v) == 0 for v in VALVES), first.pins
    assert [h[1] for h in c.gw.heard] == [m.HELLO], c.gw.heard
    assert first.time() is not None
    assert 900 * 0.9 * S <= s.ms <= 900 * 1.1 * S, s.ms  # the next report is the earliest event
    assert s.flow and s.rain  # a leak or rain wakes it too
    awake = c.sleeps[0][0]
    assert awake < 10 * S, awake  # HELLO, its receive window, done
    for _ in range(6):
        await c.sleep_through()
        await c.until_asleep()
    c.stop()
    types = [h[1] for h in c.gw.heard]
    assert types.count(m.HELLO) == 1 and types.count(m.IRRIGATION) == 6, types
    counters = [h[2] for h in c.gw.heard]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    assert c.gw.rejected == 0
    # a timer wake closes nothing (no pulse) and stays awake only for its report and receive window
    assert all(h.valve_pulses == 0 for h in c.hals[1:])
    for i in range(1, len(c.sleeps)):
        woke = c.sleeps[i - 1][0] + c.sleeps[i - 1][1].ms
        assert c.sleeps[i][0] - woke <= 5 * S, (i, c.sleeps[i][0] - woke)
    assert all(h.reset_cause() == m.RST_DEEPSLEEP for h in c.hals[1:])


async def test_a_timer_wake_starts_the_schedule_and_stays_awake_while_watering():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 4 * 3600 + 50 * 60)  # 04:50, watering at 05:00
    c = Cell(clock)
    c.boot()
    s = await c.until_asleep()
    start = 5 * 3600 - (4 * 3600 + 50 * 60)  # s from the clock's start to 05:00
    # (MiniGateway's TIME has whole seconds: the node's clock may run up to 2 s behind)
    assert start * S <= c.sleeps[0][0] + s.ms <= start * S + 4 * S, (c.sleeps[0][0], s.ms)
    await c.sleep_through()
    s = await c.until_asleep(30 * MIN)
    woke = c.hals[1]
    opened = [t for t, v in c.changes("zone1") if v == 1]
    closed = [t for t, v in c.changes("zone1") if v == 0 and t > 0]
    assert opened and start * S <= opened[0] <= start * S + 5 * S, woke.history
    assert closed and 20 * MIN <= closed[0] - opened[0] <= 20 * MIN + 3 * S, (opened, closed)
    # latching: two pulses per valve (open, close), no held output; awake the whole run (flow meter)
    assert woke.valve_pulses == 4, woke.valve_pulses
    assert c.sleeps[1][0] >= closed[0]
    assert valve(woke, "zone1") == 0 and valve(woke, "master") == 0
    # the run went into the volume total
    reports = c.gw.of_type(m.IRRIGATION)
    c.stop()
    assert c.node.store.get("vol_l") >= 230, c.node.store.get("vol_l")  # 12 L/min for 20 min
    assert c.node.app.faults == 0 and not c.node.app._noflow, reports


async def test_a_valve_open_across_a_sleep_wakes_before_its_maximum_run_time():
    # no flow meter: the node sleeps with the valve latched open; the run (40 min) is longer than
    # the valve's maximum (30 min): the wake must come before the maximum, and the valve close there
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 5 * 3600 - 5)
    c = Cell(clock, flow_meter=0, schedule=[[1, 127, 300, 40]], max_run_min=30)
    c.boot()
    await c.until_asleep()
    await c.until(lambda: valve(c.hal, "zone1"))
    opened_at = [t for t, v in c.changes("zone1") if v == 1][0]
    open_sleeps = 0
    for _ in range(10):
        at, s = c.sleeps[-1]
        if not valve(c.hal, "zone1"):
            break
        # the rule: a valve open across a sleep has a wake before its maximum run time
        assert at + s.ms <= opened_at + 30 * MIN - 29 * S, (at, s.ms, opened_at)
        open_sleeps += 1
        await c.sleep_through()
        await c.until_asleep(45 * MIN)
    closed = [t for t, v in c.changes("zone1") if v == 0 and t > opened_at]
    c.stop()
    assert open_sleeps >= 1  # it did sleep with the valve open (the point of a latching valve on a cell)
    assert 5 * S <= opened_at <= 10 * S, opened_at
    assert closed and 30 * MIN - 31 * S <= closed[0] - opened_at <= 30 * MIN + 2 * S, (opened_at, closed)
    assert any(h[1] == m.EVENT and h[3][0] == m.EV_MAX_RUNTIME for h in c.gw.heard), c.gw.heard


async def test_a_short_run_sleeps_through_and_closes_at_its_end():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 5 * 3600 - 5)
    c = Cell(clock, flow_meter=0, schedule=[[1, 127, 300, 10]])
    c.boot()
    await c.until_asleep()
    await c.until(lambda: valve(c.hal, "zone1"))  # open, asleep
    at, s = c.sleeps[-1]
    assert s.ms <= 10 * MIN and not s.flow, s.ms  # no flow meter: no flow wake
    await c.until(lambda: not valve(c.hal, "zone1"))
    c.stop()
    opened = [t for t, v in c.changes("zone1") if v == 1][0]
    closed = [t for t, v in c.changes("zone1") if v == 0 and t > opened]
    assert closed and 10 * MIN <= closed[0] - opened <= 10 * MIN + 3 * S, (opened, closed)
    assert not any(h[1] == m.EVENT for h in c.gw.heard), c.gw.heard
    assert sum(h.valve_pulses for h in c.hals) == 3 + 4  # closed at boot; zone and master open, close


async def test_a_power_cut_while_asleep_with_a_valve_open_closes_it_at_boot():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 5 * 3600 - 5)
    c = Cell(clock, flow_meter=0, schedule=[[1, 127, 300, 10]])
    c.boot()
    await c.until_asleep()
    await c.until(lambda: valve(c.hal, "zone1"))
    await c.clock.run_for(MIN)
    c.boot(m.RST_POWER_ON)  # not a deep-sleep wake: RTC memory is not trusted, every valve closes
    await c.until_asleep()
    c.stop()
    assert valve(c.hal, "zone1") == 0 and valve(c.hal, "master") == 0
    assert c.hal.valve_pulses == 3
    assert [h[1] for h in c.gw.heard].count(m.HELLO) == 2


async def test_a_flow_pulse_wakes_it_and_a_leak_is_raised_then_rechecked_hourly():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 12 * 3600)
    c = Cell(clock)
    c.boot()
    s = await c.until_asleep()
    assert s.flow
    at = c.sleeps[-1][0]
    c.leak_lpm = 2  # a pipe leaks behind the closed valves: the meter's first pulse wakes the node
    c.cause = 1
    await c.sleep_through(at + 2 * MIN)
    assert c.hal.wake_reason() == 1
    s = await c.until_asleep(10 * MIN)
    leaks = [h for h in c.gw.of_type(m.EVENT) if h[3][0] == m.EV_LEAK]
    assert leaks and leaks[0][3][4] == 1, c.gw.heard
    awake = c.sleeps[-1][0] - (at + 2 * MIN)
    assert 60 * S <= awake <= 100 * S, awake  # LEAK_MS of flow measured, the alarm sent and acknowledged
    assert not s.flow and s.ms <= H, s.ms  # a known leak: no flow wake, an hourly re-check
    # the leak is fixed: the hourly re-check clears it
    c.leak_lpm = 0
    await c.sleep_through()
    s = await c.until_asleep(10 * MIN)
    leaks = [h for h in c.gw.of_type(m.EVENT) if h[3][0] == m.EV_LEAK]
    assert len(leaks) == 2 and leaks[1][3][4] == 0, leaks
    # the flow wake is armed again once the hour after the last flow wake is over
    await c.until(lambda: c.sleeps[-1][1].flow, 8)
    c.stop()
    assert c.sleeps[-1][0] - (at + 2 * MIN) <= 75 * MIN


async def test_a_drip_below_the_leak_rate_does_not_keep_it_awake():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 12 * 3600)
    c = Cell(clock)
    c.boot()
    await c.until_asleep()
    at = c.sleeps[-1][0]
    c.leak_lpm = 0.2  # under leak_dlpm (0.5 L/min)
    c.cause = 1
    await c.sleep_through(at + MIN)
    s = await c.until_asleep(10 * MIN)
    c.stop()
    assert c.sleeps[-1][0] - (at + MIN) <= 70 * S
    assert not s.flow  # no flow wake for an hour: a drip would wake it for every pulse
    assert not [h for h in c.gw.of_type(m.EVENT) if h[3][0] == m.EV_LEAK]


async def test_the_rain_sensor_wakes_it_and_the_report_says_wet():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 12 * 3600)
    c = Cell(clock)
    c.boot()
    await c.until_asleep()
    at = c.sleeps[-1][0]
    c.cause = 2
    await c.sleep_through(at + 3 * MIN)
    c.hal.set_pin("rain", 1)
    s = await c.until_asleep(5 * MIN)
    c.stop()
    reports = c.gw.of_type(m.IRRIGATION)
    assert reports and reports[-1][3][4] & 1, reports  # RAIN_SENSOR_WET
    assert reports[-1][0] - (at + 3 * MIN) <= 5 * S
    assert s.rain


async def test_a_rain_wake_stops_a_run_in_progress():
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 5 * 3600 - 5)
    c = Cell(clock, flow_meter=0, schedule=[[1, 127, 300, 30]])
    c.boot()
    await c.until_asleep()
    await c.until(lambda: valve(c.hal, "zone1"))
    at = c.sleeps[-1][0]
    c.cause = 2
    await c.sleep_through(at + 5 * MIN)
    c.hal.set_pin("rain", 1)
    await c.until_asleep(5 * MIN)
    c.stop()
    assert valve(c.hal, "zone1") == 0 and valve(c.hal, "master") == 0
    closed = [t for t, v in c.changes("zone1") if v == 0 and t > at]
    assert closed and closed[0] - (at + 5 * MIN) <= 3 * S, closed


async def test_an_app_failing_as_the_node_plans_its_sleep_closes_the_valves_first():
    # no flow meter: the node sleeps with the valve latched open (a 40-minute run, a report wake
    # within it); if the app fails while the node plans the sleep, the fault closes every valve,
    # the node sleeps on its timer alone, and the next wake says so (EVENT app_exception)
    clock = mpnode.new_clock(mpnode.MIDSUMMER + 5 * 3600 - 5)
    c = Cell(clock, flow_meter=0, schedule=[[1, 127, 300, 40]])
    c.boot()
    await c.until_asleep()
    await c.until(lambda: valve(c.hal, "zone1"))  # open, asleep

    def failing(self, ms, t):
        raise ValueError("planning failed")

    planned = BatteryIrrigation.sleep_ms
    BatteryIrrigation.sleep_ms = failing
    try:
        await c.sleep_through()
        s = await c.until_asleep()
    finally:
        BatteryIrrigation.sleep_ms = planned
    woke = c.hal
    assert c.node.app_faults == 1 and "planning failed" in c.node.last_error, c.node.last_error
    assert valve(woke, "zone1") == 0 and valve(woke, "master") == 0, woke.pins
    assert woke.valve_pulses >= 2, woke.valve_pulses  # closed by pulses (latching valves)
    assert not s.flow and not s.rain  # the timer alone
    await c.sleep_through()
    await c.until_asleep()
    c.stop()
    assert any(h[1] == m.EVENT and h[3][0] == m.EV_APP_EXCEPTION for h in c.gw.heard), c.gw.heard
    assert valve(c.hal, "zone1") == 0


async def test_a_release_on_trial_commits_at_an_answered_wake_and_rolls_back_after_silent_ones():
    # a battery node never stays up slots.HEALTHY_MS: each wake that sent something is a trial run
    # (firmware/slots.py wake): heard and no fault commits, silence counts as a boot of the trial
    import os

    from firmware import slots

    def on_trial():
        slots.write({"a": "", "t": "s0", "n": 1, "id": {"s0": "ab" * 32}, "v": {}, "rb": ""})

    clock = mpnode.new_clock(mpnode.MIDSUMMER + 12 * 3600)
    c = Cell(clock)
    c.cfg["trial"] = True  # what main.py's release_state says while a release is on trial
    try:
        on_trial()
        c.boot()
        await c.until_asleep()  # HELLO, answered by a TIME: a verified downlink
        assert c.node.rx >= 1 and c.node.app_faults == 0
        st = slots.read()
        assert st["a"] == "s0" and st["t"] == "" and st["rb"] == "", st

        on_trial()  # the next release on trial, and a gateway that no longer answers
        c.gw_task.cancel()
        for n in (2, 3):
            await c.sleep_through()
            await c.until_asleep()
            assert c.node.tx >= 1 and c.node.rx == 0
            st = slots.read()
            assert st["t"] == "s0" and st["n"] == n, st  # counted, still on trial
            assert c.resets == 0
        await c.sleep_through()
        await c.until_asleep()
        st = slots.read()
        assert st["t"] == "" and st["rb"] == "s0" and st["a"] == "", st  # rolled back
        assert c.resets == 1 and len(c.sleeps) == 3  # it reset (a boot says HELLO) instead of sleeping

        # a wake that sends nothing proves nothing: no count
        on_trial()
        node = BatteryNode(c.cfg, c.hal, None, BatteryIrrigation, hello_jitter_ms=0, watchdog=False)
        assert node.tx == 0 and slots.wake(node) is False and slots.read()["n"] == 1
    finally:
        c.stop()
        for p in ("/ab.json", "/ab.tmp"):
            try:
                os.remove(p)
            except OSError:
                pass
