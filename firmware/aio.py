# The few asyncio helpers node code needs that differ between MicroPython
# and CPython, built on the HAL's clock so they stay virtual in the simulator
# (firmware/README.md: a timeout must never be asyncio.wait_for, whose timer
# is real time under MicroPython's StepClock).

import asyncio


def _uncancel(task):
    # CPython 3.11 counts cancellations; a handled one must be withdrawn or a
    # later asyncio.timeout() in the same task misfires. What is left counts
    # cancellations from outside that came in the same instant as our own
    # (MicroPython has no count: there, the two merge into one).
    if hasattr(task, "uncancel"):
        return task.uncancel()
    return 0


async def _timer(hal, ms, waiter, box):
    await hal.sleep_ms(ms)
    box[0] = True
    waiter.cancel()


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
    box = [False]
    timer = asyncio.create_task(_timer(hal, ms, me, box))
    try:
        await event.wait()
        return True
    except asyncio.CancelledError:
        if not box[0] or _uncancel(me):
            raise  # cancelled from outside (also in the instant the timer fired): propagate
        return event.is_set()
    finally:
        if not box[0]:
            timer.cancel()
