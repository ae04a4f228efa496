"""An asyncio event loop whose clock is virtual (CPython only: tests and the simulator).

``VirtualLoop`` is a ``SelectorEventLoop`` whose ``time()`` is a
``VirtualClock``. Whenever the loop would block waiting for its next timer,
the clock jumps to that timer instead, so every asyncio timer in the loop
(``asyncio.sleep``, ``wait_for`` timeouts, the firmware's ``hal.sleep_ms``,
a gateway running in the same loop) runs on virtual time and a simulated day
passes in well under a second. Ordering is exactly asyncio's: callbacks due
at the same instant run in the order they were scheduled.

    clock = VirtualClock(unix0=1782000000)
    hal = SimHAL(clock, time_known=True)
    run(main(hal), clock)                # or: loop = new_loop(clock)

Real I/O still works: file descriptors registered with the loop (sockets, a
pseudo-terminal) are polled without blocking before each jump, and when no
timer is pending the loop blocks on them for real. What virtual time cannot
do is wait for I/O that is not ready yet while timers are pending (a reply
from another process): the clock jumps past it. For a sim that talks to an
out-of-process gateway, pace the clock in real time instead (issue 5).

How, with asyncio's public API only: ``VirtualLoop.call_at`` (which
``call_later``, ``asyncio.sleep`` and timeouts go through) keeps the timers
in a heap of its own, ordered by (when, creation), so asyncio's own timer
heap stays empty and the loop hands its selector no timeout when idle. The
selector (``_VirtualSelector``, passed to ``SelectorEventLoop``) then moves
the clock to the next timer and queues the timers due with ``call_soon``.
The one read of asyncio's internals is ``has_ready_callbacks`` (whether the
ready queue is empty; asyncio has no public way to ask), used by
``VirtualClock.settle`` and simulator/simclock.py. With real I/O, a timer
due in the same turn as an I/O event runs just before that event's
callback, not just after as in asyncio; virtual-time runs without I/O are
ordered exactly as asyncio would order them.

The loop does not poll the selector at all while only its own self-pipe is
registered (``call_soon_threadsafe`` callbacks are queued before the pipe is
written, so nothing is lost): that halves the cost of a wake-up.
bench/sim.py's `bare` baseline measures a crowd of tasks on this loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple, Unpack

from simulator.hal_sim import DEFAULT_UNIX0, SETTLE_MAX

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
MAX_JUMP_S = 24 * 3600.0  # the longest wait asyncio asks a selector for (base_events.MAXIMUM_SELECT_TIMEOUT)


class VirtualClock:
    """The time of a VirtualLoop; same interface as simulator.hal_sim.StepClock.

    ``t`` is the loop's time in seconds (float) since the clock started.
    """

    # `t` is a property whose setter also keeps `now_ms` (int(t * 1000 + 0.5), the whole
    # millisecond every HAL reads) and `unix_now` (unix0 + t): the time moves once per loop
    # jump, while a thousand nodes read it at every tick (simulator/world.py).
    now_ms: int
    unix_now: float

    def __init__(self, unix0: int = DEFAULT_UNIX0) -> None:
        self.unix0 = unix0
        self.t = 0.0
        self.jumps = 0  # idle waits skipped, for benchmarks

    @property
    def t(self) -> float:
        return self._t

    @t.setter
    def t(self, value: float) -> None:
        self._t = value
        self.now_ms = int(value * 1000 + 0.5)
        self.unix_now = self.unix0 + value

    def ms(self) -> int:
        return self.now_ms

    def unix(self) -> int:
        return self.unix0 + int(self.t)

    async def sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000 if ms > 0 else 0)

    async def run_for(self, ms: int) -> None:
        """Run every task until `ms` from now, including what is due at that instant."""
        await asyncio.sleep(ms / 1000)
        await self.settle()

    async def run_until(self, end_ms: int) -> None:
        await self.run_for(max(0, end_ms - self.ms()))

    async def settle(self) -> None:
        """Yield until no callback is ready: what is due now has run (as StepClock.settle)."""
        loop = asyncio.get_running_loop()
        for _ in range(SETTLE_MAX):
            await asyncio.sleep(0)
            has_ready = getattr(loop, "has_ready_callbacks", None)
            if has_ready is None or not has_ready():
                return
        raise RuntimeError("VirtualClock: a task never waits (busy loop?)")

    def __repr__(self) -> str:
        return f"VirtualClock(t={self.t:.3f} s)"


class _VirtualSelector(selectors.DefaultSelector):
    """The loop's selector: where the loop would wait, the clock jumps to the next timer instead.

    asyncio's own timer heap stays empty (VirtualLoop.call_at keeps the
    timers), so the loop asks for a select with no timeout when it is idle and
    with 0 when callbacks are ready. Here the clock moves to the next timer
    (in steps of at most MAX_JUMP_S, as asyncio caps a select) and the timers
    due by then go to the loop's ready queue through call_soon, in (when,
    creation) order: where asyncio itself would put them, before the batch of
    callbacks the loop runs next.
    """

    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop
        self._own = 1  # the loop's self-pipe, registered by the loop itself

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        loop = self._loop
        clock = loop.clock
        when = loop.next_timer()
        if timeout is None:  # nothing ready: wait for the next timer, or for real I/O if there is none
            if when is None:
                return super().select(None)
            timeout = min(max(0.0, when - clock.t), MAX_JUMP_S)
        if len(self.get_map()) > self._own:
            ready = super().select(0)
            if ready:
                loop.release_due()
                return ready
        if timeout > 0 and when is not None:
            # jump exactly to the next timer (no float drift over long runs)
            t = clock.t + timeout
            clock.t = when if when < t else t
            clock.jumps += 1
        loop.release_due()
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop on a VirtualClock (see the module docstring).

    Public asyncio API only, but for the loop's ready queue, which asyncio
    offers no public way to see or fill: `has_ready_callbacks` looks at it,
    and `release_due` appends due timer handles to it, as asyncio does.
    """

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self._vl_timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._vl_seq = itertools.count()
        # what asyncio's loop adds to "now" when it picks the due timers (BaseEventLoop.__init__)
        self._vl_resolution = time.get_clock_info("monotonic").resolution
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.clock._t  # the property's field: asyncio asks for the time at every timer

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[Ts]], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        # Timers due at the same instant fire first come, first served (asyncio orders them by
        # `when` alone, in heap order): a simulation must be reproducible, as on the StepClock.
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        if context is None:
            context = contextvars.copy_context()
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._vl_timers, (when, next(self._vl_seq), timer))
        return timer

    def next_timer(self) -> float | None:
        """When the next timer that is not cancelled is due (None: no timer)."""
        timers = self._vl_timers
        while timers and timers[0][2].cancelled():
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def release_due(self) -> None:
        """Queue every timer due now (within the clock's resolution, as asyncio) to run, in order."""
        timers = self._vl_timers
        end = self.clock.t + self._vl_resolution
        # The timer handle itself goes to the ready queue, as asyncio's own loop puts its due
        # timers there (BaseEventLoop._run_once): it runs its callback in its context, and
        # is skipped if cancelled by then -- what a call_soon(_fire, ...) did, without a
        # second handle per timer (a run fires hundreds of thousands).
        ready = self._ready  # type: ignore[attr-defined]  # no public API appends a handle
        while timers and timers[0][0] < end:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled():
                ready.append(timer)

    def has_ready_callbacks(self) -> bool:
        """Whether callbacks wait in the ready queue (what runs before anything scheduled now)."""
        return bool(self._ready)  # type: ignore[attr-defined]  # no public API says this

    def close(self) -> None:
        super().close()
        self._vl_timers.clear()


def new_loop(clock: VirtualClock | None = None) -> VirtualLoop:
    return VirtualLoop(clock)


def run(main: Coroutine[Any, Any, T], clock: VirtualClock | None = None) -> T:
    """asyncio.run for a virtual clock: run `main` to completion, cancel leftovers, close."""
    loop = VirtualLoop(clock)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
