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

The loop does not poll the selector at all while only its own self-pipe is
registered (``call_soon_threadsafe`` callbacks are queued before the pipe is
written, so nothing is lost): that halves the cost of a wake-up. Measured on
CPython 3.11: 5.4 us per wake for one task, 4.0 us with 100 tasks on a shared
clock (simulator.hal_sim's header compares it with the portable StepClock).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from asyncio import events
from typing import Any, Callable, Coroutine, TypeVar

from simulator.hal_sim import DEFAULT_UNIX0, SETTLE_MAX

T = TypeVar("T")


class VirtualClock:
    """The time of a VirtualLoop; same interface as simulator.hal_sim.StepClock.

    ``t`` is the loop's time in seconds (float) since the clock started.
    """

    def __init__(self, unix0: int = DEFAULT_UNIX0) -> None:
        self.unix0 = unix0
        self.t = 0.0
        self.jumps = 0  # idle waits skipped, for benchmarks

    def ms(self) -> int:
        return int(self.t * 1000 + 0.5)

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
            if not getattr(loop, "_ready", None):
                return
        raise RuntimeError("VirtualClock: a task never waits (busy loop?)")

    def __repr__(self) -> str:
        return f"VirtualClock(t={self.t:.3f} s)"


class _Timer(events.TimerHandle):
    """A TimerHandle ordered by (when, creation order): same-instant timers fire FIFO.

    asyncio orders timers by `when` alone, so timers due at the same instant
    fire in heap order; a simulation must be reproducible, so ties go first
    come, first served, as on the StepClock.
    """

    __slots__ = ("_seq",)

    def __init__(self, seq: int, when: float, callback: Callable[..., object], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop, context: Any = None) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def __lt__(self, other: object) -> bool:
        if isinstance(other, _Timer):
            return (self._when, self._seq) < (other._when, other._seq)
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, _Timer):
            return (self._when, self._seq) <= (other._when, other._seq)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, _Timer):
            return (self._when, self._seq) > (other._when, other._seq)
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, _Timer):
            return (self._when, self._seq) >= (other._when, other._seq)
        return NotImplemented

    __hash__ = events.TimerHandle.__hash__


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock
        self._own = 1  # the loop's self-pipe, registered by the loop itself
        self.next_when: Callable[[], float | None] = lambda: None

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None:  # nothing scheduled: only real I/O can wake the loop
            return super().select(None)
        if len(self.get_map()) > self._own:
            ready = super().select(0)
            if ready:
                return ready
        if timeout > 0:
            # jump exactly to the next timer (no float drift over long runs);
            # asyncio caps a select at one day, hence the max with t + timeout
            when = self.next_when()
            t = self._clock.t + timeout
            self._clock.t = when if when is not None and when < t else t
            self._clock.jumps += 1
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """A SelectorEventLoop on a VirtualClock (see the module docstring)."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        selector = _VirtualSelector(self.clock)
        super().__init__(selector)
        selector.next_when = self._next_when
        self._timer_seq = itertools.count()

    def time(self) -> float:
        return self.clock.t

    def _next_when(self) -> float | None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0]._when if scheduled else None

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        # BaseEventLoop.call_at with a FIFO-on-ties timer (see _Timer)
        self._check_closed()  # type: ignore[attr-defined]
        timer = _Timer(next(self._timer_seq), when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True
        return timer


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
