"""firmware/aio.wait_ms on CPython: its timeout is a cancellation of the waiting task, which must
never swallow a cancellation from outside (a node's task being stopped)."""

from __future__ import annotations

import asyncio

import pytest

from firmware import aio


class Hal:
    """Just the HAL's clock, in real time; `also` runs when the timer fires, before its own cancel."""

    def __init__(self) -> None:
        self.also = lambda: None

    async def sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        self.also()


async def test_the_event_wins():
    hal, ev = Hal(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, ev.set)
    assert await aio.wait_ms(hal, ev, 5000) is True


async def test_the_timeout_returns_false_and_leaves_no_cancellation_behind():
    hal, ev = Hal(), asyncio.Event()
    assert await aio.wait_ms(hal, ev, 10) is False
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0.02)  # and the task goes on undisturbed


async def test_a_cancel_from_outside_propagates():
    hal, ev = Hal(), asyncio.Event()
    t = asyncio.create_task(aio.wait_ms(hal, ev, 5000))
    await asyncio.sleep(0.01)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t


async def test_a_cancel_from_outside_in_the_instant_of_the_timeout_propagates():
    # The simulator stops a node's tasks on the same virtual millisecond as their timers: the
    # stop must win, or the node runs on after it was stopped.
    hal, ev = Hal(), asyncio.Event()
    t = asyncio.create_task(aio.wait_ms(hal, ev, 10))
    hal.also = t.cancel
    with pytest.raises(asyncio.CancelledError):
        await t
    assert t.cancelled()
