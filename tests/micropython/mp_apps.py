# Both apps inside real MicroPython, loaded from .mpy as on a board, through a scripted night
# and day on the simulated HAL and its StepClock: profile steps, presence, a dead lamp, time
# lost; schedules, a burst, a leak, the hard maximum, a valve stuck open behind the master.
# (Heap figures: bench/firmware_memory.py.)
import asyncio

from firmware import astro
from simulator.hal_sim import SimHAL, StepClock
from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from firmware.store import Store
from protocol import messages as m

MPY = True
MIN = 60000
LAT, LON = 48.85, 2.35


class Node:
    # the runtime's facade for an app (firmware/README.md); events are checked EVENT bodies
    def __init__(self, hal):
        self.hal = hal
        self.store = Store(hal)
        self.store.open()
        self.events = []

    def event(self, code, severity, value=0, active=1, zone=0):
        m.encode(m.EVENT, {0: code, 1: severity, 2: value, 3: self.hal.time() or 0, 4: active, 5: zone})
        self.events.append((self.hal.ticks_ms(), code, active, zone))

    def time(self):
        return self.hal.time()

    def codes(self, code):
        return [e[2] for e in self.events if e[1] == code]


def lamp_current(hal, state):
    # 60 W at 230 V: 275 mA at full power, none when the lamp is dead
    return lambda: 0 if state[0] else hal.pwm.get("lamp", 0) * 275 // 1000


async def test_lighting_night_and_day():
    day = astro.days_from_civil(2026, 3, 20)
    rise, sset = astro.sun_times(LAT, LON, 2026, 3, 20)
    rise1, _ = astro.sun_times(LAT, LON, 2026, 3, 21)
    noon = day * 86400 + 12 * 3600
    sunset = day * 86400 + sset - noon  # seconds after boot
    sunrise = (day + 1) * 86400 + rise1 - noon
    midnight = (sunset + sunrise) // 2
    clock = StepClock(noon)
    hal = SimHAL(clock, time_known=True)
    dead = [False]
    hal.set_adc("lamp_current", lamp_current(hal, dead))
    node = Node(hal)
    app = Lighting({"location": {"lat": LAT, "lon": LON}, "lighting": {"tick_ms": 2000}}, hal, node)
    task = asyncio.create_task(app.run())

    async def until(s):
        while clock.ms() < s * 1000:
            await clock.run_for(min(600000, s * 1000 - clock.ms()))

    await until(sunset - 60)
    assert hal.pwm["lamp"] == 0
    await until(sunset + 10)
    assert hal.pwm["lamp"] == 1000
    await until(midnight + 60)
    assert hal.pwm["lamp"] == 300
    hal.set_pin("pir", 1)
    await until(midnight + 64)
    hal.set_pin("pir", 0)
    assert hal.pwm["lamp"] == 1000
    await until(midnight + 200)
    assert hal.pwm["lamp"] == 300
    dead[0] = True
    await until(midnight + 300)
    assert node.codes(m.EV_LAMP_FAILURE) == [1]
    assert app.report()[1][3] & m.LS_LAMP_FAILURE
    dead[0] = False
    await until(midnight + 1300)
    assert node.codes(m.EV_LAMP_FAILURE) == [1, 0]
    hal.lose_time()  # RTC lost: dusk-to-dawn from the last known time
    await until(midnight + 1310)
    assert hal.pwm["lamp"] == 1000
    await until(sunrise + 60)
    assert hal.pwm["lamp"] == 0
    hal.set_time(noon + sunrise + 60)
    await until(86400)
    task.cancel()
    mtype, body = app.report()
    m.encode(mtype, body)
    # Wh: dimmed until the clock was lost, then full until dawn (a full night at 60 W: 708 Wh)
    full = 60 * (sunrise - sunset) // 3600
    assert full * 3 // 4 <= body[2] <= full and body[4] == (sunrise - sunset) // 3600
    print("lighting:", len(hal.history), "output changes; events", node.events, "report", body)


async def test_irrigation_day():
    monday = astro.days_from_civil(2026, 3, 16)
    t0 = monday * 86400
    clock = StepClock(t0)
    hal = SimHAL(clock, time_known=True)
    state = {"burst": 0}

    def flow_rate():
        # 450 pulses per litre; 12 and 8 L/min zones behind the master valve, plus a burst
        lpm = 0
        if hal.pins.get("master"):
            lpm = 12 * hal.pins.get("zone1", 0) + 8 * hal.pins.get("zone2", 0) + state["burst"]
        return lpm * 450 // 60

    hal.on_output = lambda name, value: hal.set_pulse_rate("flow", flow_rate())
    node = Node(hal)
    cfg = {
        "irrigation": {
            "zones": [{"flow_dlpm": 120}, {"flow_dlpm": 80}],
            "max_run_min": 30,
            "schedule": [[1, 0x7F, 300, 10], [2, 0x7F, 300, 45]],
        }
    }
    app = Irrigation(cfg, hal, node)
    task = asyncio.create_task(app.run())

    async def until(s):
        while clock.ms() < s * 1000:
            await clock.run_for(min(600000, s * 1000 - clock.ms()))

    await until(5 * 3600 + 60)
    assert hal.pins["zone1"] == 1 and hal.pins["master"] == 1
    await until(5 * 3600 + 11 * 60)
    assert hal.pins["zone2"] == 1 and hal.pins["zone1"] == 0
    await until(5 * 3600 + 45 * 60)
    # zone 2's 45 minutes were cut by the 30-minute hard maximum
    assert hal.pins["zone2"] == 0 and node.codes(m.EV_MAX_RUNTIME) == [1]
    assert app.command(m.OP_OPEN_ZONE, [1, 20]) == (m.RES_OK, 20)
    await until(5 * 3600 + 50 * 60)
    state["burst"] = 40
    hal.set_pulse_rate("flow", flow_rate())
    burst_at = clock.ms()
    await until(5 * 3600 + 51 * 60)
    closed = [t for t, v in hal.changes("master") if v == 0 and t > burst_at]
    assert closed and closed[0] - burst_at <= 5000
    assert node.codes(m.EV_BURST) == [1]
    assert app.command(m.OP_OPEN_ZONE, [1, 5]) == (m.RES_REFUSED, 0)
    state["burst"] = 0
    hal.set_pulse_rate("flow", 450 // 60)  # a valve seat leaking 1 L/min with all shut
    await until(5 * 3600 + 55 * 60)
    assert node.codes(m.EV_LEAK) == [1]
    hal.set_pulse_rate("flow", 0)
    await until(86400)
    task.cancel()
    mtype, body = app.report()
    m.encode(mtype, body)
    assert 10 * 12 + 30 * 8 + 5 * 12 <= body[3] <= 10 * 12 + 30 * 8 + 6 * 12 + 5
    assert node.codes(m.EV_LEAK) == [1, 0]
    print("irrigation: events", node.events, "report", body)


async def test_irrigation_valve_stuck_open_behind_the_master():
    # zone 2's valve sticks open at 04:00: dry while the master is shut, 8 L/min more while zone 1
    # waters (167 % of zone 1's 12 L/min: over the excess threshold, under the burst one)
    monday = astro.days_from_civil(2026, 3, 16)
    clock = StepClock(monday * 86400)
    hal = SimHAL(clock, time_known=True)
    stuck = [0]

    def flow_rate():
        lpm = 0
        if hal.pins.get("master"):
            lpm = 12 * hal.pins.get("zone1", 0) + 8 * (hal.pins.get("zone2", 0) | stuck[0])
        return lpm * 450 // 60

    hal.on_output = lambda name, value: hal.set_pulse_rate("flow", flow_rate())
    node = Node(hal)
    cfg = {
        "irrigation": {
            "zones": [{"flow_dlpm": 120}, {"flow_dlpm": 80}],
            "schedule": [[1, 0x7F, 300, 10], [2, 0x7F, 300, 10]],
        }
    }
    app = Irrigation(cfg, hal, node)
    task = asyncio.create_task(app.run())

    async def until(s):
        while clock.ms() < s * 1000:
            await clock.run_for(min(600000, s * 1000 - clock.ms()))

    await until(4 * 3600)
    stuck[0] = 1
    await until(5 * 3600 - 60)
    assert node.events == [] and app.report()[1][6] == 0  # nothing flows behind a shut master
    await until(5 * 3600 + 10)
    assert hal.pins["master"] == 1 and hal.pins["zone1"] == 1
    await until(5 * 3600 + 60)
    assert node.codes(m.EV_EXCESS_FLOW) == [1] and node.events[0][3] == 1  # raised on the open zone
    assert hal.pins["master"] == 0 and hal.pins["zone1"] == 0
    opened = [t for t, v in hal.changes("master") if v]
    shut = [t for t, v in hal.changes("master") if not v and t > opened[0]]
    assert 44000 <= shut[0] - opened[0] <= 49000  # FILL_MS + EXCESS_MS + the meter's window
    assert app.report()[1][6] & m.IF_EXCESS_FLOW and app.open_alarms() == 1
    assert app.command(m.OP_OPEN_ZONE, [2, 5]) == (m.RES_REFUSED, 0)
    await until(29 * 3600 + 30 * 60)  # the next morning's schedule is skipped too
    assert len(opened) == len([t for t, v in hal.changes("master") if v]) == 1
    stuck[0] = 0  # the valve is replaced
    assert app.command(m.OP_CLEAR_FAULT, []) == (m.RES_OK, 1)
    assert node.codes(m.EV_EXCESS_FLOW) == [1, 0] and app.open_alarms() == 0
    assert node.codes(m.EV_BURST) == [] and node.codes(m.EV_LEAK) == []
    task.cancel()
    print("irrigation, stuck valve: events", node.events)
