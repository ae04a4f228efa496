"""Shared helpers for firmware runtime tests on CPython: config, toy apps, a test gateway.

The test gateway is deliberately small and built only from protocol/ (frame,
messages, keys): it plays the gateway's side of SPEC §4-§6 on the gateway end
of a firmware.radio.memory_link, so the node's frames are checked by the
same code the real gateway uses, not by the node's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from firmware import config
from firmware.radio import MemoryRadio
from protocol import frame as fr
from protocol import lora
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator.hal_sim import SimHAL

ROOT_KEY = bytes(range(16))
NODE_ID = 0x00A1B2C3


def make_cfg(kind: str = "lighting", **over: Any) -> dict:
    d = {
        "node_id": NODE_ID,
        "kind": kind,
        "root_key": ROOT_KEY.hex(),
        "report_interval_s": 60,
        "status_interval_s": 600,
        "key_fresh": True,  # as `lumeau node provision` writes it (SPEC §4 "Counter persistence")
    }
    d.update(over)
    return config.load(json.dumps(d).encode())


class ToyLamp:
    """A minimal lighting app honouring the runtime contract; faults on demand."""

    KIND = m.KIND_LIGHTING
    CAPS = 0x0003
    instances = 0

    def __init__(self, cfg, hal, node):
        ToyLamp.instances += 1
        self.hal, self.node = hal, node
        self.level = 40
        self.commands: list[tuple[int, list[int]]] = []
        self.settings: list[dict] = []
        self.fail_in_run_at: int | None = None  # ticks_ms at which run() raises
        self.fail_failsafe = False
        self.fail_report = False
        self.hal.pwm_write("lamp", self.level * 10)

    async def run(self):
        while True:
            if self.fail_in_run_at is not None and self.hal.ticks_ms() >= self.fail_in_run_at:
                self.hal.pwm_write("lamp", 0)  # the bug darkens the street...
                raise ZeroDivisionError("bug in the dimming profile")
            self.hal.pwm_write("lamp", self.level * 10)
            await self.hal.sleep_ms(5000)

    def report(self):
        if self.fail_report:
            raise KeyError("report")
        return m.LIGHT, {0: self.level, 3: m.LS_ON}

    def command(self, op, args):
        self.commands.append((op, args))
        if op == m.OP_SET_LEVEL and len(args) == 2 and 0 <= args[0] <= 100:
            self.level = args[0]
            return m.RES_OK, args[0]
        if op == m.OP_SET_LEVEL:
            return m.RES_BAD_ARGS, 0
        return m.RES_UNKNOWN_OP, 0

    def configure(self, settings):
        self.settings.append(dict(settings))

    def failsafe(self):
        if self.fail_failsafe:
            raise RuntimeError("failsafe broken too")
        self.hal.pwm_write("lamp", 1000)

    def open_alarms(self):
        return 0


class ToyValves:
    """A minimal irrigation app: opens zone 1 at start, faults on demand."""

    KIND = m.KIND_IRRIGATION

    def __init__(self, cfg, hal, node):
        self.hal = hal
        for z in ("master", "zone1", "zone2", "zone3", "zone4"):
            hal.pin_write(z, 0)
        self.fail_at: int | None = None
        self.fail_failsafe = False

    async def run(self):
        self.hal.pin_write("master", 1)
        self.hal.pin_write("zone1", 1)
        while True:
            if self.fail_at is not None and self.hal.ticks_ms() >= self.fail_at:
                raise IndexError("zone table")
            await self.hal.sleep_ms(1000)

    def report(self):
        return m.IRRIGATION, {1: 0x81}

    def command(self, op, args):
        return m.RES_UNKNOWN_OP, 0

    def configure(self, settings):
        pass

    def failsafe(self):
        if self.fail_failsafe:
            raise RuntimeError("failsafe broken too")
        for z in ("master", "zone1", "zone2", "zone3", "zone4"):
            self.hal.pin_write(z, 0)

    def open_alarms(self):
        return 0


@dataclass
class Heard:
    t_end: int  # gateway ticks_ms when the frame had been received
    mtype: int
    counter: int
    body: dict
    raw: bytes


@dataclass
class MiniGateway:
    """The gateway side of a memory link: verifies uplinks, answers in RX1."""

    hal: SimHAL
    radio: MemoryRadio
    keys: NodeKeys = field(default_factory=lambda: NodeKeys(NODE_ID, ROOT_KEY))
    auto_ack: bool = True  # ACK confirmed alarms in RX1
    heard: list[Heard] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    pending: list[tuple[int, dict]] = field(default_factory=list)  # downlinks for the next RX1
    raw_pending: list[bytes] = field(default_factory=list)  # raw frames for the next RX1 (replays)
    sent: list[bytes] = field(default_factory=list)
    down_counter: int = 0
    rx1_delay_ms: int = 1000
    answers: list[asyncio.Task] = field(default_factory=list, repr=False, compare=False)  # held: asyncio keeps weakrefs
    bind_time: bool = True  # fill in T_ANSWERS of a pending TIME with the uplink it answers

    def __post_init__(self):
        self.window = fr.ReplayWindow()

    def seal(self, mtype: int, body: dict) -> bytes:
        raw = fr.seal(self.keys, mtype, self.down_counter, m.encode(mtype, body))
        self.down_counter += 1
        return raw

    async def run(self):
        while True:
            r = await self.radio.recv(3_600_000)
            if r is None:
                continue
            raw = r[0]
            try:
                f, plain = fr.unseal(self.keys, raw, self.window)
                body = m.decode(f.mtype, plain)
            except (fr.FrameError, m.MessageError) as e:
                self.rejected.append(f"{type(e).__name__}: {e}")
                continue
            self.heard.append(Heard(self.hal.ticks_ms(), f.mtype, f.counter, body, raw))
            raw = list(self.raw_pending)
            self.raw_pending.clear()
            todo = list(self.pending)
            self.pending.clear()
            replies: list[bytes] = []
            alarm = f.mtype == m.EVENT and body.get(1, 0) >= m.SEV_ALARM
            if (self.auto_ack and alarm) or len(raw) + len(todo) > 1:
                # an ACK first, announcing the rest: the node keeps listening for them. Sealed
                # first too: the gateway's counters reach the node in order (SPEC §4)
                ack = {0: f.counter}
                if raw or todo:
                    ack[1] = len(raw) + len(todo)
                replies.append(self.seal(m.ACK, ack))
            replies.extend(raw)
            for mtype, b in todo:
                if mtype == m.TIME and self.bind_time and m.T_ANSWERS not in b:
                    b = {**b, m.T_ANSWERS: f.counter}  # a TIME answers the uplink it follows (SPEC §4)
                replies.append(self.seal(mtype, b))
            if replies:
                self.answers.append(asyncio.create_task(self._answer(replies)))

    async def _answer(self, replies: list[bytes]):
        await self.hal.sleep_ms(self.rx1_delay_ms)
        for raw in replies:
            self.sent.append(raw)
            await self.radio.send(raw)

    def of_type(self, mtype: int) -> list[Heard]:
        return [h for h in self.heard if h.mtype == mtype]


def airtime_ms(n: int, sf: int) -> float:
    return lora.airtime_ms(n, sf)
