"""simulator.hal_sim (SimHAL, StepClock) and simulator.virtual_loop on CPython.

Clock tests run under both clocks: the virtual asyncio loop (what CPython
tests and the simulator use) and the portable StepClock (what MicroPython uses).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from firmware.hal import HAL
from protocol import messages as m
from simulator import virtual_loop
from simulator.hal_sim import SimHAL, SimReset, StepClock

DAY_MS = 24 * 3600 * 1000


def drive(kind: str, make_main, unix0: int = 1_782_000_000):
    """Run make_main(clock) to completion on a fresh clock of the given kind."""
    if kind == "loop":
        clock = virtual_loop.VirtualClock(unix0)
        return virtual_loop.run(make_main(clock), clock), clock
    clock = StepClock(unix0)
    return asyncio.run(make_main(clock)), clock


CLOCKS = pytest.mark.parametrize("kind", ["loop", "step"])


@CLOCKS
def test_a_day_of_one_second_sleeps_is_fast_and_exact(kind):
    async def main(clock):
        hal = SimHAL(clock)
        wakes = []

        async def node():
            while True:
                await hal.sleep_ms(1000)
                wakes.append(hal.ticks_ms())

        task = asyncio.create_task(node())
        await clock.run_for(DAY_MS)
        task.cancel()
        return wakes

    t0 = time.perf_counter()
    wakes, clock = drive(kind, main)
    wall = time.perf_counter() - t0
    assert len(wakes) == 86400
    assert wakes[0] == 1000 and wakes[-1] == DAY_MS
    assert all(b - a == 1000 for a, b in zip(wakes, wakes[1:]))
    assert clock.ms() == DAY_MS
    # not a timing assertion on speed, only that time was not real
    assert wall < 60


@CLOCKS
def test_event_chains_settle_before_time_moves(kind):
    """A task woken by the clock can wake another through an Event in the same instant."""

    async def main(clock):
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
                for _ in range(5):  # several plain yields before recording
                    await asyncio.sleep(0)
                log.append(("b", clock.ms()))

        ta, tb = asyncio.create_task(a()), asyncio.create_task(b())
        await clock.run_for(2000)
        tb.cancel()
        return log, ta.done()

    (log, a_done), _ = drive(kind, main)
    assert log == [("a", 500), ("b", 500), ("a", 1000), ("b", 1000), ("a", 1500), ("b", 1500)]
    assert a_done


@CLOCKS
def test_same_instant_wakes_in_sleep_order_and_nodes_share_time(kind):
    async def main(clock):
        order = []
        hals = [SimHAL(clock) for _ in range(5)]

        async def node(i):
            await hals[i].sleep_ms(100)
            order.append(i)

        tasks = [asyncio.create_task(node(i)) for i in range(5)]
        await clock.run_for(100)
        for t in tasks:
            await t  # done: each woke at 100
        return order, [h.ticks_ms() for h in hals]

    (order, ticks), _ = drive(kind, main)
    assert order == [0, 1, 2, 3, 4]
    assert ticks == [100] * 5


@CLOCKS
def test_watchdog_bites_when_not_fed_and_not_when_fed(kind):
    async def main(clock):
        fed, starved = SimHAL(clock), SimHAL(clock)
        causes = []
        starved.on_reset = causes.append

        async def feeder(hal, period):
            hal.wdt_start(5000)
            while True:
                hal.wdt_feed()
                await hal.sleep_ms(period)

        t1 = asyncio.create_task(feeder(fed, 4000))
        t2 = asyncio.create_task(feeder(starved, 4000))
        await clock.run_for(12500)
        t2.cancel()  # the starved node hangs from here on
        await clock.run_for(10000)
        t1.cancel()
        fed.power_off()
        starved.power_off()
        return fed, starved, causes

    (fed, starved, causes), _ = drive(kind, main)
    assert fed.wdt_bites == 0 and fed.wdt_feeds >= 5
    assert starved.wdt_bites == 1
    # last feed at 12000 ms, timeout 5000 ms
    assert starved.bitten_at == 17000
    assert causes == [m.RST_WATCHDOG]


def test_virtual_loop_makes_every_asyncio_timer_virtual():
    async def main(clock):
        never = asyncio.Event()
        t0 = clock.ms()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(never.wait(), timeout=3600)
        return clock.ms() - t0

    t0 = time.perf_counter()
    elapsed, _ = drive("loop", main)
    assert elapsed == 3_600_000
    assert time.perf_counter() - t0 < 5


def test_virtual_loop_still_serves_real_io():
    """A real socket written by another thread is read while virtual timers are pending."""

    async def main(clock):
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(100)))
        ticker_runs = 0

        async def ticker():
            nonlocal ticker_runs
            while True:
                await asyncio.sleep(1)
                ticker_runs += 1

        t = asyncio.create_task(ticker())
        # no timers left would block for real; with a ticker, time jumps but
        # the socket is polled before every jump
        threading.Timer(0.05, lambda: b.send(b"frame")).start()
        data = await asyncio.wait_for(got, timeout=10**9)
        t.cancel()
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        return data, ticker_runs

    (data, runs), _ = drive("loop", main)
    assert data == b"frame"
    assert runs > 0


def test_step_clock_run_for_with_nothing_sleeping_just_moves_time():
    async def main(clock):
        await clock.run_for(1234)
        await clock.run_until(1000)  # in the past: no-op
        return clock.ms(), clock.unix()

    (ms, unix), clock = drive("step", main, unix0=1000)
    assert ms == 1234 and unix == 1001


def test_simhal_is_a_hal():
    hal = SimHAL(StepClock())
    assert isinstance(hal, HAL)
    assert "key" not in repr(hal).lower() or "keys stored" in repr(hal)


def test_inputs_values_callables_and_pulse_rates():
    async def main(clock):
        hal = SimHAL(clock)
        assert hal.pin_read("pir") == 0 and hal.adc_read_mv("ambient") == 0 and hal.pulses("flow") == 0
        hal.set_pin("pir", 1)
        hal.set_adc("ambient", 1234.7)
        hal.pwm_write("lamp", 400)
        hal.set_adc("lamp_current", lambda: hal.pwm["lamp"] // 2)
        assert (hal.pin_read("pir"), hal.adc_read_mv("ambient"), hal.adc_read_mv("lamp_current")) == (1, 1234, 200)
        hal.pwm_write("lamp", 1000)
        assert hal.adc_read_mv("lamp_current") == 500
        hal.set_pulses("flow", 10)
        hal.set_pulse_rate("flow", 7.5)  # 450 pulses a minute
        await clock.run_for(60_000)
        assert hal.pulses("flow") == 10 + 450
        hal.set_pulse_rate("flow", 0)
        await clock.run_for(60_000)
        assert hal.pulses("flow") == 460
        return True

    assert drive("step", main)[0]


def test_outputs_record_changes_only():
    clock = StepClock()
    hal = SimHAL(clock)
    seen = []
    hal.on_output = lambda n, v: seen.append((n, v))
    hal.pin_write("zone1", 1)
    hal.pin_write("zone1", True)  # same level: not a change
    hal.pin_write("zone1", 0)
    hal.pwm_write("lamp", 1500)  # clamped
    hal.pwm_write("lamp", -3)
    assert hal.pins == {"zone1": 0} and hal.pwm == {"lamp": 0}
    assert seen == [("zone1", 1), ("zone1", 0), ("lamp", 1000), ("lamp", 0)]
    assert hal.changes("zone1") == [(0, 1), (0, 0)]


@pytest.mark.parametrize("on_disk", [False, True])
def test_storage_survives_reboot_and_faults_are_injectable(tmp_path, on_disk):
    clock = StepClock()
    d = str(tmp_path) if on_disk else None
    hal = SimHAL(clock, storage_dir=d)
    assert hal.load("ctr") is None
    hal.save("ctr", b"\x00\x01")
    hal.save("ctr", bytearray(b"\x00\x02"))
    hal.fail_saves = 1
    with pytest.raises(OSError):
        hal.save("ctr", b"\xff")
    assert hal.load("ctr") == b"\x00\x02"  # the failed write changed nothing
    assert hal.writes == {"ctr": 2}
    if on_disk:
        assert sorted(os.listdir(tmp_path)) == ["ctr"]  # no temp file left behind
    again = SimHAL(clock, storage=hal.storage, storage_dir=d, reset_cause=m.RST_WATCHDOG)
    assert again.load("ctr") == b"\x00\x02"
    assert again.reset_cause() == m.RST_WATCHDOG and hal.reset_cause() == m.RST_POWER_ON


def test_wall_clock_unknown_until_set_and_ticks_restart_on_reboot():
    async def main(clock):
        hal = SimHAL(clock)
        assert hal.time() is None
        await clock.run_for(5000)
        hal.set_time(1_800_000_000, 500)
        await clock.run_for(1500)
        assert hal.time() == 1_800_000_002
        hal.lose_time()
        assert hal.time() is None
        rebooted = SimHAL(clock, time_known=True)
        assert rebooted.ticks_ms() == 0 and hal.ticks_ms() == 6500
        assert rebooted.time() == clock.unix0 + 6
        return True

    assert drive("step", main)[0]


def test_drift_makes_the_local_clock_run_fast():
    async def main(clock):
        hal = SimHAL(clock, time_known=True, drift_ppm=100)  # +100 ppm: 8.64 s a day
        await clock.run_for(DAY_MS)
        local = hal.ticks_ms()
        # a sleep of N local ms is shorter in true time
        t0 = clock.ms()
        await asyncio.gather(hal.sleep_ms(1_000_100), clock.run_for(1_000_000))
        return local, clock.ms() - t0, hal.time() - clock.unix()

    (local, true_ms, skew), _ = drive("step", main)
    assert local == DAY_MS + 8640
    assert true_ms == 1_000_000
    assert skew == 8  # 8.74 s ahead, in whole seconds


def test_reset_unwinds_past_exception_handlers():
    hal = SimHAL(StepClock())
    causes = []
    hal.on_reset = causes.append
    with pytest.raises(SimReset) as e:
        try:
            hal.reset()
        except Exception:  # an app's catch-all must not swallow a reset
            pytest.fail("reset caught as an Exception")
    assert e.value.cause == m.RST_SOFT and causes == [m.RST_SOFT] and hal.resets == 1
