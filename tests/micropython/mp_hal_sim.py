# The simulated HAL and its StepClock inside real MicroPython: virtual time,
# event chains settling within an instant, watchdog, storage, inputs.
import asyncio

from simulator.hal_sim import SimHAL, SimReset, StepClock
from protocol import messages as m


async def test_an_hour_of_one_second_sleeps():
    clock = StepClock(1782000000)
    hal = SimHAL(clock, time_known=True)
    wakes = []

    async def node():
        while True:
            await hal.sleep_ms(1000)
            wakes.append(hal.ticks_ms())

    t = asyncio.create_task(node())
    await clock.run_for(3600 * 1000)
    t.cancel()
    assert len(wakes) == 3600, len(wakes)
    assert wakes[0] == 1000 and wakes[-1] == 3600000
    assert hal.time() == 1782000000 + 3600


async def test_event_chain_settles_in_the_same_instant():
    clock = StepClock()
    log = []
    ping = asyncio.Event()

    async def a():
        for _ in range(3):
            await clock.sleep_ms(500)
            log.append(("a", clock.ms()))
            ping.set()

    async def b():
        while True:
            await ping.wait()
            ping.clear()
            for _ in range(5):
                await asyncio.sleep(0)
            log.append(("b", clock.ms()))

    asyncio.create_task(a())
    tb = asyncio.create_task(b())
    await clock.run_for(2000)
    tb.cancel()
    assert log == [("a", 500), ("b", 500), ("a", 1000), ("b", 1000), ("a", 1500), ("b", 1500)], log


async def test_watchdog_bites_a_hung_node():
    clock = StepClock()
    hal = SimHAL(clock)
    causes = []
    hal.on_reset = causes.append

    async def feeder():
        hal.wdt_start(5000)
        while True:
            hal.wdt_feed()
            await hal.sleep_ms(4000)

    t = asyncio.create_task(feeder())
    await clock.run_for(12500)
    assert hal.wdt_bites == 0
    t.cancel()
    await clock.run_for(10000)
    assert hal.wdt_bites == 1 and hal.bitten_at == 17000, hal.bitten_at
    assert causes == [m.RST_WATCHDOG]


async def test_inputs_outputs_storage():
    clock = StepClock()
    hal = SimHAL(clock)
    hal.pwm_write("lamp", 600)
    hal.set_adc("lamp_current", lambda: hal.pwm["lamp"] // 2)
    assert hal.adc_read_mv("lamp_current") == 300
    hal.set_pulse_rate("flow", 5)
    await clock.run_for(60000)
    assert hal.pulses("flow") == 300
    hal.save("ctr", b"\x01")
    hal.fail_saves = 1
    try:
        hal.save("ctr", b"\x02")
        assert False, "fault not injected"
    except OSError:
        pass
    again = SimHAL(clock, storage=hal.storage, reset_cause=m.RST_WATCHDOG)
    assert again.load("ctr") == b"\x01" and again.reset_cause() == m.RST_WATCHDOG
    try:
        again.reset()
    except Exception:
        assert False, "reset must not be an Exception"
    except SimReset as e:
        assert e.cause == m.RST_SOFT


async def test_the_wall_clock_drifts_and_is_carried_over_a_reset():
    clock = StepClock(unix0=1781524800)
    hal = SimHAL(clock, time_known=True, wall_ppm=-50.0)
    seen = []
    hal.on_time_set = lambda before, after: seen.append((before, after))
    await clock.run_for(20000000)  # 20,000 s at -50 ppm: 1 s slow
    assert hal.clock_error_ms() == -1000 and hal.time() == clock.unix() - 1
    hal.set_time(clock.unix(), 500)
    assert seen == [(-1000, 500)]
    again = SimHAL(clock)
    again.carry_clock(hal)
    assert again.clock_error_ms() == 500 and again.wall_ppm == -50.0
