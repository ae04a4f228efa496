"""The simulation's clock: SimHAL sleeps for many nodes at the cost of a dict append.

`SimClock` is a simulator.virtual_loop.VirtualClock (same `t`, `ms()`,
`unix()`; the VirtualLoop still moves it) whose `sleep_ms` does not create an
asyncio timer per call. A thousand nodes each waking every few seconds would
otherwise keep thousands of TimerHandles in the loop's heap, where every
push and pop costs a dozen Python-level comparisons (profiled: the largest
single cost of a 1,000-node run). Instead:

- a sleep of `ms` goes into the bucket of its due millisecond (a dict of
  lists) and returns a plain loop future;
- the due milliseconds form a heap of ints (compared in C), and ONE loop
  timer is armed for the earliest;
- when it fires, the bucket's entries are released in the order they went to
  sleep: futures get their result (their tasks run next, as after an
  asyncio.sleep), callbacks run at the same place in that order (see
  `_release`: directly, or one call_soon for a run of them).

`call_later_ms(ms, fn)` files a callback the same way. `Ticker` is the
runner's way to tick an app (simulator/engine.py, `ticked`): its step() is
called at each due millisecond and the ticker filed again `tick_ms` later
(read from the app's settings each time, as its own loop reads them), right
where the release loop stands -- the work of a callback that re-files itself
without the two Python calls a closure and call_later_ms would cost per tick
(a thousand apps tick 8,640 times a day each). Because a callback or ticker
is released through call_soon exactly where a sleeping task would have been
woken, an app ticked this way sees the same interleaving with every other
task as its own `run()` loop would (tests/test_sim_runner.py compares whole
runs both ways). A callback that raises is reported through the loop's
exception handler, as a call_soon callback's would be; the others still
run. A step() that raises ends its ticker: the exception goes to the
ticker's future (the app's run() raises it).

Times are whole milliseconds on the loop's clock, as the HAL's are. Sleeps
of 0 ms or less yield once, like asyncio.sleep(0). Limits: one loop (the
first that calls), FIFO within a millisecond.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

from simulator.virtual_loop import VirtualClock

_FUTURE = asyncio.Future  # what loop.create_future() makes (the C class on CPython); exact type test


class Ticker:
    """step() every settings["tick_ms"] ms on a SimClock until `fut` is done (see the module docstring).

    `fut` is what the ticked app's run() awaits: cancelled (the runtime dropped
    the app) it stops the ticker; a step() that raises sets it to that
    exception.
    """

    __slots__ = ("step", "settings", "fut")

    def __init__(self, step: Callable[[], Any], settings: dict[str, Any], fut: asyncio.Future) -> None:
        self.step = step
        self.settings = settings
        self.fut = fut


class SimClock(VirtualClock):
    def __init__(self, unix0: int) -> None:
        super().__init__(unix0)
        self._buckets: dict[int, list[Any]] = {}
        self._dues: list[int] = []
        self._armed: int | None = None  # the due ms the loop timer is set for
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._firing = False  # inside _fire: it arms the timer once, at its end
        self.wakes = 0  # entries released, for benchmarks

    def _file(self, ms: int, entry: Any) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        due = self.now_ms + ms
        b = self._buckets.get(due)
        if b is None:
            self._buckets[due] = [entry]
            heapq.heappush(self._dues, due)
            if not self._firing and (self._armed is None or due < self._armed):
                if self._handle is not None:
                    self._handle.cancel()
                self._armed = due
                self._handle = loop.call_at(due / 1000, self._fire)
        else:
            b.append(entry)

    def sleep_ms(self, ms: int) -> Any:  # an awaitable, as SimHAL.sleep_ms returns it
        if ms <= 0:
            return asyncio.sleep(0)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        fut = self._loop.create_future()
        self._file(int(ms), fut)
        return fut

    def call_later_ms(self, ms: int, fn: Callable[[], Any]) -> None:
        """Call fn() (no arguments) ms from now, in turn with the sleepers of that millisecond."""
        # the path of every app tick: the bucket usually exists already
        b = self._buckets.get(self.now_ms + (ms if ms > 0 else 1))
        if b is not None:
            b.append(fn)
        else:
            self._file(max(1, int(ms)), fn)

    def start(self, ticker: Ticker) -> None:
        """Step now (an exception propagates to the caller), then every tick_ms in turn with the sleepers."""
        ticker.step()
        self._file(max(1, int(ticker.settings["tick_ms"])), ticker)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        self._armed = None
        self._firing = True
        try:
            self._release(loop)
        finally:
            self._firing = False
            if self._dues:
                self._armed = self._dues[0]
                self._handle = loop.call_at(self._armed / 1000, self._fire)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.now_ms
        dues = self._dues
        buckets = self._buckets
        # Callbacks keep their place among the woken tasks without a call_soon
        # each: while nothing released before them waits to run they run right
        # here, a run of them in one _run_all call before the next sleeper is
        # woken (what they schedule goes after everything of this bucket either
        # way, as it would through call_soon); after that, each run of
        # consecutive callbacks goes through ONE call_soon at its place.
        has_ready = getattr(loop, "has_ready_callbacks", None)  # a VirtualLoop's (simulator/virtual_loop.py)
        direct = has_ready is not None and not has_ready()
        batch: list[Any] | None = None
        future = _FUTURE
        while dues and dues[0] <= now:
            bucket = buckets.pop(heapq.heappop(dues))
            self.wakes += len(bucket)
            for entry in bucket:
                if type(entry) is future:
                    if not entry.done():  # a cancelled sleeper
                        if batch:
                            if direct:
                                self._run_all(loop, batch)
                            else:
                                loop.call_soon(self._run_all, loop, batch)
                            batch = None
                        entry.set_result(None)
                        direct = False
                elif batch is None:
                    batch = [entry]
                else:
                    batch.append(entry)
        if batch:
            if direct:
                self._run_all(loop, batch)
            else:
                loop.call_soon(self._run_all, loop, batch)

    def _run_all(self, loop: asyncio.AbstractEventLoop, entries: list[Any]) -> None:
        """A run of callbacks and tickers released together, in order (directly, or one call_soon for the run)."""
        now = self.now_ms
        buckets = self._buckets
        ticker = Ticker
        last_due = -1  # the bucket the last ticker went to: most go to the same one
        last_b: list[Any] = []
        for entry in entries:
            if type(entry) is ticker:  # inline, not a call: the hottest path of a run
                if entry.fut.done():
                    continue
                try:
                    entry.step()
                except Exception as e:
                    entry.fut.set_exception(e)
                    continue
                due = now + entry.settings["tick_ms"]
                if due == last_due:
                    last_b.append(entry)
                    continue
                b = buckets.get(due)
                if b is not None:
                    b.append(entry)
                else:
                    self._file(due - now, entry)
                    b = buckets[due]
                last_due, last_b = due, b
            else:
                try:
                    entry()
                except Exception as e:  # as a call_soon callback's would be: reported, not fatal
                    loop.call_exception_handler({"message": "SimClock callback failed", "exception": e})

    def pending(self) -> int:
        """Entries waiting in buckets (cancelled sleepers included until their due time)."""
        return sum(len(b) for b in self._buckets.values())
