# Simulated HAL and a portable virtual clock, for tests and the simulator.
#
# Runs unchanged on CPython and MicroPython. Nothing here touches hardware:
# inputs are values (or callables) set by the test or the simulated world,
# outputs are recorded, storage is a dict (or a directory), time comes from a
# clock object that many SimHALs can share.
#
# Clocks (both have the same small interface, so test code is portable):
#
#   clock.ms()             virtual milliseconds since the clock started (int)
#   clock.unix0            Unix time (s) of the world at clock.ms() == 0
#   clock.unix()           the world's true Unix time now (int s)
#   await clock.sleep_ms(n)  what SimHAL.sleep_ms uses
#   await clock.run_for(n)   let every task run for n virtual ms, then return
#
# - simulator.virtual_loop.VirtualClock (CPython only): the clock of an asyncio
#   loop whose time is virtual (simulator.virtual_loop.run / new_loop). Every
#   asyncio timer (asyncio.sleep, wait_for timeouts, the gateway's own timers
#   when it runs in the same loop) is then virtual. Use it on CPython.
# - StepClock (here, portable): a clock that advances itself. Sleepers wait on
#   an asyncio.Event kept in a heap by wake time; `run_for` lets every ready
#   task run until none is left (it inspects asyncio's run queue), then wakes
#   the earliest sleeper and jumps the time to it. Use it under MicroPython
#   (the WebAssembly port has asyncio, but its timers are the JS event loop's,
#   which cannot be made virtual). Only sleeps through the clock are virtual:
#   an asyncio.sleep / wait_for elsewhere still takes real time there.
#
# The virtual loop is chosen on CPython because it is correct for ALL asyncio
# code, not just for clock sleeps, and no slower per wake. In the MicroPython
# WebAssembly port, drive the StepClock from a task (run_for does that
# itself): awaiting from the top-level coroutine instead bounces through JS
# setTimeout on every step.
#
# Typical test (the same code under both clocks):
#
#   clock = StepClock(unix0=1782000000)          # or VirtualClock on CPython
#   hal = SimHAL(clock, time_known=True)
#   hal.set_adc("ambient", 20)                   # a value ...
#   hal.set_adc("lamp_current", lambda: hal.pwm.get("lamp", 0) // 2)  # ... or a callable
#   app = Lighting(cfg, hal, node)
#   task = asyncio.create_task(app.run())
#   await clock.run_for(24 * 3600 * 1000)        # a simulated day
#   assert hal.pwm["lamp"] == ...; hal.history   # [(ticks_ms, name, value), ...]
#
# Reboot: build a new SimHAL on the same clock with the old one's `storage`
# dict (and reset_cause=...); the old node's tasks are cancelled by the test.
# A reset that keeps the RTC running: `new.carry_clock(old)` (the wall clock
# goes on with its error); one that loses it: the new HAL without time_known.
#
# Clock error (the simulator's `clock` results): `clock_error_ms()` is the
# wall clock minus the world's true time; `on_time_set(before_ms, after_ms)`
# is called on every set_time with the error just before (None: it was not
# set) and just after.

import asyncio

from firmware.hal import HAL
from protocol import messages as _m

try:
    import heapq
except ImportError:  # some MicroPython builds name it uheapq
    import uheapq as heapq  # type: ignore[import-not-found,no-redef]  # MicroPython's name, no stubs on CPython

# Type hints for mypy (make lint) that MicroPython can carry: it parses annotations and never evaluates
# them, but it has no `typing` (nor `__future__`). So `typing` is imported for the checker only, and a
# parameter or return annotation that names one of its types is quoted (CPython evaluates those).
TYPE_CHECKING = False  # typing.TYPE_CHECKING's value at run time; mypy takes any name TYPE_CHECKING as True
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any, Protocol

    class Clock(Protocol):
        """What SimHAL needs of a clock: StepClock or simulator.virtual_loop.VirtualClock."""

        unix0: int

        def ms(self) -> int: ...

        async def sleep_ms(self, ms: int) -> None: ...

    Input = int | float | Callable[[], int | float]  # a value set by set_pin / set_adc / set_pulses, or a callable

DEFAULT_UNIX0 = 1767225600  # 2026-01-01T00:00:00Z: a fixed, documented epoch
HISTORY_MAX = 20000  # output changes kept in SimHAL.history (oldest half dropped beyond)
SETTLE_MAX = 100000  # run-queue yields per step before StepClock gives up (a busy loop)


class SimSleep(BaseException):
    """Raised by SimHAL.deepsleep(): the node's program ends there, as on a board.

    The caller boots the node again later (a new SimHAL with reset_cause
    RST_DEEPSLEEP, the old one's `storage` and `rtc`, `carry_clock(old)` and
    `wake` set to what woke it): firmware/battery.py.
    """

    def __init__(self, ms: int, flow: bool, rain: bool) -> None:
        super().__init__("simulated deep sleep, %d ms" % ms)
        self.ms = ms
        self.flow = flow
        self.rain = rain


class SimReset(BaseException):
    """Raised by SimHAL.reset(): unwinds the node like a board reset would.

    A BaseException so an app supervisor catching Exception does not swallow it.
    """

    def __init__(self, cause: int) -> None:
        super().__init__("simulated reset, cause %d" % cause)
        self.cause = cause


# -- the portable virtual clock ----------------------------------------------


def _run_queue() -> "tuple[Any, asyncio.AbstractEventLoop | None]":
    # MicroPython's asyncio keeps runnable and sleeping tasks in one pairing
    # heap, asyncio.core._task_queue, keyed by wake tick. CPython: loop._ready.
    core = getattr(asyncio, "core", None)
    q = getattr(core, "_task_queue", None) if core is not None else None
    if q is not None:
        return q, None
    try:
        loop = asyncio.get_running_loop()
    except AttributeError:
        loop = asyncio.get_event_loop()
    return None, loop


def _runnable(q: "Any", loop: "asyncio.AbstractEventLoop | None") -> bool:
    if q is not None:
        t = q.peek()
        if t is None:
            return False
        # a task keyed in the future sleeps in real time (not through the clock)
        # ticks/ticks_diff: MicroPython's asyncio only (CPython's stubs lack them; q is None there)
        return asyncio.ticks_diff(t.ph_key, asyncio.ticks()) <= 0  # type: ignore[attr-defined]
    return bool(getattr(loop, "_ready", None))


async def _yield() -> None:
    if hasattr(asyncio, "sleep_ms"):
        await asyncio.sleep_ms(0)
    else:
        await asyncio.sleep(0)


class StepClock:
    """A virtual clock that advances itself when every task is waiting on it.

    Portable (MicroPython and CPython). Time only moves inside run_for /
    run_until; between them it stands still. Many SimHALs may share one.
    """

    def __init__(self, unix0: int = DEFAULT_UNIX0) -> None:
        self.unix0 = unix0
        self._ms = 0
        self._heap: list[tuple[int, int, asyncio.Event]] = []  # (wake ms, seq, Event): one per sleep under way
        self._seq = 0
        self.steps = 0  # wake-ups delivered, for benchmarks

    def ms(self) -> int:
        return self._ms

    def unix(self) -> int:
        return self.unix0 + self._ms // 1000

    async def sleep_ms(self, ms: int) -> None:
        if ms <= 0:
            await _yield()
            return
        ev = asyncio.Event()
        self._seq += 1
        heapq.heappush(self._heap, (self._ms + int(ms), self._seq, ev))
        await ev.wait()

    async def run_for(self, ms: int) -> None:
        await self.run_until(self._ms + int(ms))

    async def run_until(self, end_ms: int) -> None:
        # Driven from a task of its own: in the WebAssembly port the top-level
        # coroutine yields through JS setTimeout (about 1 ms per yield).
        await asyncio.create_task(self._drive(end_ms))

    async def step(self, end_ms: int) -> bool:
        """Deliver the wake-ups of the next instant (if due by end_ms) and let them run.

        False when nothing sleeps until end_ms (time then moves to end_ms).
        For a driver that inspects the node between scheduler steps (the
        memory benchmark); run_for is the fast path.
        """
        return await asyncio.create_task(self._step(end_ms))

    async def _step(self, end_ms: int) -> bool:
        await self.settle()
        heap = self._heap
        if not heap or heap[0][0] > end_ms:
            if end_ms > self._ms:
                self._ms = end_ms
            return False
        when = heap[0][0]
        self._ms = when
        while heap and heap[0][0] == when:
            heapq.heappop(heap)[2].set()
            self.steps += 1
        await self.settle()
        return True

    async def settle(self) -> None:
        """Yield until no task is runnable (all wait on the clock or on events)."""
        q, loop = _run_queue()
        n = 0
        while True:
            await _yield()
            if not _runnable(q, loop):
                return
            n += 1
            if n > SETTLE_MAX:
                raise RuntimeError("StepClock: a task never waits (busy loop?)")

    async def _drive(self, end_ms: int) -> None:
        heap = self._heap
        while True:
            await self.settle()
            if not heap or heap[0][0] > end_ms:
                break
            when = heap[0][0]
            self._ms = when
            # wake everything due at this instant, in the order it went to sleep
            while heap and heap[0][0] == when:
                heapq.heappop(heap)[2].set()
                self.steps += 1
        if end_ms > self._ms:
            self._ms = end_ms


# -- the simulated HAL --------------------------------------------------------


class SimHAL(HAL):
    """firmware.hal.HAL in software: settable inputs, observable outputs.

    clock          a StepClock or a virtual_loop.VirtualClock (shared by many nodes)
    storage        dict key -> bytes; pass the previous node's dict to "reboot"
    storage_dir    optional directory instead: one file per key, atomic rename
    reset_cause    what reset_cause() answers (protocol.messages.RST_*)
    time_known     the wall clock is valid from boot (an RTC kept it); else
                   time() is None until set_time()
    drift_ppm      local oscillator error: ticks and wall time run fast (+) or slow
    wall_ppm       the wall clock's own drift on top (an RTC crystal), ppm; settable
                   later (`hal.wall_ppm = x`): ticks and sleeps keep their pace
    heap_free      what free_heap() answers (the WebAssembly port's gc.mem_free
                   is meaningless, and CPython has none)
    history_max    output changes kept in `history` (0: none, for memory benchmarks)

    Inputs (each takes a value or a callable evaluated at read time, so a
    world model can tie, say, lamp current to the PWM output):
      set_pin(name, v), set_adc(name, mv), set_pulses(name, count),
      set_pulse_rate(name, per_s)  (a counter integrated on virtual time)
    Outputs: `pins` and `pwm` dicts (last value), `history` list of
      (ticks_ms, name, value) on every change, `on_output(name, value)` hook.
    Storage: `writes` counts saves per key; `fail_saves = n` makes the next n
      saves raise OSError (storage fault injection).
    Watchdog: started by wdt_start; if not fed within its timeout (virtual
      time) it bites: `wdt_bites` counts, `bitten_at` holds ticks_ms, and
      `on_reset(RST_WATCHDOG)` is called if set (the simulator reboots the node).
    reset(): counts `resets`, calls on_reset(RST_SOFT) if set, raises SimReset.
    """

    def __init__(
        self,
        clock: "Clock",
        storage: "dict[str, bytes] | None" = None,
        storage_dir: "str | None" = None,
        reset_cause: int = _m.RST_POWER_ON,
        time_known: bool = False,
        drift_ppm: int = 0,
        wall_ppm: float = 0.0,
        heap_free: int = 100000,
        history_max: int = HISTORY_MAX,
    ) -> None:
        self.clock = clock
        self.storage = {} if storage is None else storage
        self.storage_dir = storage_dir
        self._reset_cause = reset_cause
        self.drift_ppm = drift_ppm
        self.wall_ppm = wall_ppm
        self._wall_set = 0  # ticks_ms when the wall clock was last set (wall_ppm counts from there)
        self.on_time_set: Callable[[int | None, int], object] | None = None
        self.heap_free = heap_free
        self._boot_ms = clock.ms()
        # wall clock as an offset from ticks_ms: unix ms = ticks + offset
        self._wall_offset: int | None = None
        if time_known:
            self._wall_offset = clock.unix0 * 1000 + self._boot_ms
        self._inputs: dict[str, Input] = {}
        self._rates: dict[str, tuple[float, int, int]] = {}  # name -> (per_s, count at mark, ms at mark)
        self.pins: dict[str, int] = {}
        self.pwm: dict[str, int] = {}
        self.history: list[tuple[int, str, int]] = []
        self.history_max = history_max
        self.on_output: Callable[[str, int], object] | None = None
        self.on_reset: Callable[[int], object] | None = None
        self.writes: dict[str, int] = {}
        self.fail_saves = 0
        self.wdt_timeout: int | None = None
        self.wdt_feeds = 0
        self._wdt_last = 0
        self._wdt_task: asyncio.Task[None] | None = None
        self.wdt_bites = 0
        self.bitten_at: int | None = None
        self.resets = 0
        self.time_sets = 0
        # battery nodes: RTC memory (pass the old HAL's dict on a deep-sleep wake), what woke the
        # node (firmware/hal_battery.py: 0 timer, 1 flow, 2 rain), the last deepsleep's arguments
        self.rtc: dict[str, bytes] = {}
        self.wake = 0
        self.slept: tuple[int, bool, bool] | None = None
        self.valve_pulses = 0
        self.pulse_ms = 0

    # -- time ---------------------------------------------------------------

    def ticks_ms(self) -> int:
        ms = self.clock.ms() - self._boot_ms
        if self.drift_ppm:
            ms += ms * self.drift_ppm // 1000000
        return ms

    def wall_ms(self) -> "int | None":
        """The wall clock in Unix milliseconds, None while it is not set."""
        w = self._wall_offset
        if w is None:
            return None
        t = self.ticks_ms()
        if self.wall_ppm:
            w += int((t - self._wall_set) * self.wall_ppm / 1000000)
        return t + w

    def time(self) -> "int | None":
        w = self.wall_ms()
        return None if w is None else w // 1000

    def true_ms(self) -> int:
        """The world's true Unix time, ms (what a perfect clock would read)."""
        return self.clock.unix0 * 1000 + self.clock.ms()

    def clock_error_ms(self) -> "int | None":
        """Wall clock minus true time, ms; None while the clock is not set."""
        w = self.wall_ms()
        return None if w is None else w - self.true_ms()

    def set_time(self, unix_s: int, ms: int = 0) -> None:
        before = self.clock_error_ms()
        t = self.ticks_ms()
        self._wall_offset = unix_s * 1000 + ms - t
        self._wall_set = t
        self.time_sets += 1
        if self.on_time_set is not None:
            self.on_time_set(before, unix_s * 1000 + ms - self.true_ms())

    def carry_clock(self, old: "SimHAL") -> None:
        """Go on with `old`'s wall clock, error and crystal included (a reset that kept the RTC running)."""
        w = old.wall_ms()
        self.wall_ppm = old.wall_ppm
        if w is None:
            self._wall_offset = None
            return
        t = self.ticks_ms()
        self._wall_offset = w - t
        self._wall_set = t

    def lose_time(self) -> None:
        """Forget the wall clock (RTC lost power): time() is None until set_time."""
        self._wall_offset = None

    def sleep_ms(self, ms: int) -> "Coroutine[Any, Any, None]":  # the clock's coroutine
        if self.drift_ppm:
            ms = ms * 1000000 // (1000000 + self.drift_ppm)
        return self.clock.sleep_ms(ms)

    # -- inputs (set by tests / the world) -------------------------------------

    def set_pin(self, name: str, value: "Input") -> None:
        self._inputs[name] = value

    def set_adc(self, name: str, mv: "Input") -> None:
        self._inputs[name] = mv

    def set_pulses(self, name: str, count: "Input") -> None:
        self._rates.pop(name, None)
        self._inputs[name] = count

    def set_pulse_rate(self, name: str, per_s: float) -> None:
        """Make counter `name` count `per_s` pulses per second of virtual time."""
        count = self.pulses(name)
        self._rates[name] = (per_s, count, self.clock.ms())

    def _input(self, name: str) -> "int | float":
        v = self._inputs.get(name, 0)
        return v() if callable(v) else v

    # -- HAL I/O ----------------------------------------------------------------

    def pin_read(self, name: str) -> int:
        return 1 if self._input(name) else 0

    def adc_read_mv(self, name: str) -> int:
        return int(self._input(name))

    def pulses(self, name: str) -> int:
        r = self._rates.get(name)
        if r is None:
            return int(self._input(name))
        return r[1] + int(r[0] * (self.clock.ms() - r[2]) // 1000)

    def _out(self, table: "dict[str, int]", name: str, value: int) -> None:
        if table.get(name) == value:
            return
        table[name] = value
        if self.history_max:
            h = self.history
            h.append((self.ticks_ms(), name, value))
            if len(h) > self.history_max:
                del h[: self.history_max // 2]
        if self.on_output is not None:
            self.on_output(name, value)

    def pin_write(self, name: str, value: int) -> None:
        self._out(self.pins, name, 1 if value else 0)

    def pwm_write(self, name: str, permille: int) -> None:
        if permille < 0:
            permille = 0
        elif permille > 1000:
            permille = 1000
        self._out(self.pwm, name, int(permille))

    def changes(self, name: str) -> "list[tuple[int, int]]":
        """[(ticks_ms, value), ...] of one output, from history."""
        return [(t, v) for (t, n, v) in self.history if n == name]

    # -- persistence ------------------------------------------------------------

    def _path(self, key: str) -> str:
        assert self.storage_dir is not None  # only called when storage goes to a directory
        return self.storage_dir + "/" + key

    def load(self, key: str) -> "bytes | None":
        if self.storage_dir is None:
            return self.storage.get(key)
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except OSError:
            return None

    def save(self, key: str, data: "bytes | bytearray | memoryview") -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            raise OSError("simulated storage fault writing %s" % key)
        data = bytes(data)
        self.writes[key] = self.writes.get(key, 0) + 1
        if self.storage_dir is None:
            self.storage[key] = data
            return
        import os

        tmp = self._path(key) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self._path(key))

    # -- system -------------------------------------------------------------------

    def wdt_start(self, timeout_ms: int) -> None:
        # like machine.WDT: starting again only changes the timeout
        self.wdt_timeout = timeout_ms
        self._wdt_last = self.ticks_ms()
        if self._wdt_task is None:
            self._wdt_task = asyncio.create_task(self._wdt_watch())

    def wdt_feed(self) -> None:
        self.wdt_feeds += 1
        self._wdt_last = self.ticks_ms()

    async def _wdt_watch(self) -> None:
        while True:
            assert self.wdt_timeout is not None  # wdt_start sets it before it starts this task
            due = self._wdt_last + self.wdt_timeout
            now = self.ticks_ms()
            if now >= due:
                break
            await self.clock.sleep_ms(due - now)
        self.wdt_bites += 1
        self.bitten_at = self.ticks_ms()
        self._wdt_task = None
        if self.on_reset is not None:
            self.on_reset(_m.RST_WATCHDOG)

    def reset_cause(self) -> int:
        return self._reset_cause

    def reset(self) -> None:
        self.resets += 1
        if self.on_reset is not None:
            self.on_reset(_m.RST_SOFT)
        raise SimReset(_m.RST_SOFT)

    # -- battery nodes (firmware/hal_battery.py is the board's) ----------------------------------

    def deepsleep(self, ms: int, flow: bool = False, rain: bool = False) -> None:
        """Record the sleep (`slept`) and raise SimSleep: the node's run ends here."""
        self.slept = (ms, flow, rain)
        raise SimSleep(ms, flow, rain)

    def wake_reason(self) -> int:
        return self.wake

    def rtc_save(self, data: bytes) -> None:
        self.rtc["mem"] = bytes(data)

    def rtc_load(self) -> "bytes | None":
        return self.rtc.get("mem")

    def pulse_out(self, name: str, ms: int) -> None:
        """One coil pulse of a latching valve: the simulated valve takes the position it drives
        ("zone1" opens, "zone1_close" closes: the output `zone1` shows 1 or 0); counted in
        `valve_pulses` (and `pulse_ms`) for the energy model."""
        self.valve_pulses += 1
        self.pulse_ms += ms
        if name.endswith("_close"):
            self._out(self.pins, name[:-6], 0)
        else:
            self._out(self.pins, name, 1)

    def free_heap(self) -> int:
        return self.heap_free

    def power_off(self) -> None:
        """Stop this HAL's background work (the watchdog); call when the node is torn down."""
        if self._wdt_task is not None:
            self._wdt_task.cancel()
            self._wdt_task = None

    def __repr__(self) -> str:
        return "SimHAL(t=%d ms, %d keys stored)" % (self.ticks_ms(), len(self.storage))
