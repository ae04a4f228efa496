# The few asyncio helpers node code needs that differ between MicroPython
# and CPython, built on the HAL's clock so they stay virtual in the simulator
# (firmware/README.md: a timeout must never be asyncio.wait_for, whose timer
# is real time under MicroPython's StepClock).

import asyncio

# MicroPython's task queues are pairing heaps (py/pairheap.h, used by _asyncio's
# TaskQueue): a task popped from one keeps its `child` and `child_last`
# pointers, and a push never clears `child_last`. The collector follows them,
# so a task that was once another's parent in a queue keeps that one alive
# after both are done, and that one the next: a chain of finished tasks with
# their coroutines. wait_ms's timer tasks formed such chains (some 100 of them,
# 22 KB, on a lamp listening between uplinks: bench/README.md, "the member's
# runtime heap"). So a timer as it starts and as it ends, and a waiter before
# it waits, is made for an instant the parent of `peer`, a task that never
# runs (drop): its pointers then hold only that one. What is left is at most
# one finished task per live task (no chain). The names are ones the node has
# interned already (`queue`, `peer`, `drop`); CPython's tasks hold no such
# pointers (its _asyncio has no TaskQueue).
try:
    from _asyncio import Task, TaskQueue

    queue = TaskQueue()
    peer = Task(None)  # type: ignore[arg-type,var-annotated]  # a task that never runs
except ImportError:
    queue = None  # type: ignore[assignment]  # CPython: no TaskQueue, nothing to drop


def _uncancel(task):
    # CPython 3.11 counts cancellations; a handled one must be withdrawn or a
    # later asyncio.timeout() in the same task misfires. What is left counts
    # cancellations from outside that came in the same instant as our own
    # (MicroPython has no count: there, the two merge into one).
    if hasattr(task, "uncancel"):
        return task.uncancel()
    return 0


def drop(task):
    # `task` (running: in no queue) lets go of the tasks its queue pointers still hold (above)
    if queue is not None:
        queue.push(peer, 1)
        queue.push(task, 0)  # sorts first: the parent of peer
        queue.pop()
        queue.pop()  # both out again, the queue empty


async def _timer(hal, ms, waiter):
    me = asyncio.current_task()
    drop(me)  # just popped from the run queue, to sleep for the whole wait
    try:
        await hal.sleep_ms(ms)
        waiter.cancel()
    finally:
        drop(me)  # fired or cancelled: done, and held by nothing it points at


async def wait_ms(hal, event, ms):
    """Wait until `event` is set or `ms` ms passed on the HAL's clock.

    Returns True if the event is set, False on timeout. One small task per
    call: meant for waits that last seconds, not for hot loops.
    """
    if event.is_set():
        return True
    if ms <= 0:
        return False
    me = asyncio.current_task()
    timer = asyncio.create_task(_timer(hal, ms, me))
    drop(me)  # it may wait for long: holding nothing it does not need
    try:
        await event.wait()
        return True
    except asyncio.CancelledError:
        # the timer is done once it has cancelled us (it ends in the same step); if it is not,
        # the cancel came from outside
        if not timer.done() or _uncancel(me):
            raise  # cancelled from outside (also in the instant the timer fired): propagate
        return event.is_set()
    finally:
        timer.cancel()  # nothing if it is done
