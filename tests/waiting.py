"""Waiting on a condition with a deadline, not on the clock.

A test that sleeps a fixed time and then asserts is slow when the machine is
quick and flaky when it is busy. These wait for what the test is about, and
fail with a clear message once the deadline passes. A test about time itself
(a batch age, a receive window) uses the component's clock seam instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_for(
    cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition", interval: float = 0.005
) -> Any:
    """Poll `cond` on the running loop until it is truthy (returned), or fail after `timeout` s.

    `cond` may be a coroutine function (e.g. a query through an HTTP API)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met in {timeout:g} s")
        await asyncio.sleep(interval)


def wait_for_sync(
    cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """As wait_for, for tests that drive another process or thread without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met in {timeout:g} s")
        time.sleep(interval)
