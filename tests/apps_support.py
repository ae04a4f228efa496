"""Shared by tests/test_lighting.py and tests/test_irrigation.py: the runtime's facade for an
app (firmware/README.md, "Contracts between the runtime and the apps") on a real Store, and a
driver that runs a test body on the virtual asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from firmware.store import Store
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator import virtual_loop
from simulator.hal_sim import SimHAL


@dataclass(frozen=True)
class Event:
    t_ms: int
    code: int
    severity: int
    value: int
    active: int
    zone: int


class AppNode:
    """node.event / node.time / node.store, as the runtime gives them to an app.

    Every event is encoded as a real EVENT body, so a value out of the wire's range fails
    the test at the moment the app raises it.
    """

    def __init__(self, hal: SimHAL) -> None:
        self.hal = hal
        self.store = Store(hal)
        self.store.open()
        self.events: list[Event] = []
        # a lamp that joins a group (COMMAND join_group) reads the node's keys and wraps its
        # radio (firmware/group.py): the runtime's Node has both; this facade has keys, no radio
        self.keys = NodeKeys(1, bytes(range(16)))
        self.radio = None

    def event(self, code: int, severity: int, value: int = 0, active: int = 1, zone: int = 0) -> None:
        # the value is the app's to keep in range; the time stamp is the runtime's (it leaves
        # out a clock gone wrong, as firmware/runtime.py does)
        t = self.hal.time()
        m.encode(
            m.EVENT,
            {0: code, 1: severity, 2: value, 3: t if t is not None and 0 < t <= 0xFFFFFFFF else 0, 4: active, 5: zone},
        )
        self.events.append(Event(self.hal.ticks_ms(), code, severity, value, active, zone))

    def time(self) -> int | None:
        return self.hal.time()

    def of(self, code: int) -> list[Event]:
        return [e for e in self.events if e.code == code]


def simulate(body: Callable[[Any], Awaitable[Any]], unix0: int) -> Any:
    """Run `await body(clock)` on a fresh virtual loop whose world starts at unix0."""
    clock = virtual_loop.VirtualClock(unix0)
    return virtual_loop.run(body(clock), clock)


def start(app: Any) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(app.run())


def level_at(hal: SimHAL, name: str, t_ms: int, initial: int = 0) -> int:
    """The value output `name` had at ticks t_ms, from the HAL's history."""
    v = initial
    for t, value in hal.changes(name):
        if t > t_ms:
            break
        v = value
    return v
