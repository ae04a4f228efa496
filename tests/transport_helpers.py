"""Helpers for the transport tests: real frames, and a pipeline that records what it gets."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway.model import Reception
from protocol import frame, keys
from protocol import messages as m

ROOT_KEY = bytes(range(16))


def node_keys(node_id: int) -> keys.NodeKeys:
    return keys.NodeKeys(node_id, ROOT_KEY)


def light_frame(node_id: int = 0x00A1B2C3, counter: int = 1, level: int = 40) -> bytes:
    body = m.encode(m.LIGHT, {0: level, 1: 452, 2: 123456, 3: m.LS_ON})
    return frame.seal(node_keys(node_id), m.LIGHT, counter, body)


def downlink_frame(node_id: int = 0x00A1B2C3, counter: int = 1, acked: int = 1) -> bytes:
    return frame.seal(node_keys(node_id), m.ACK, counter, m.encode(m.ACK, {0: acked}))


class RecordingPipeline:
    """Records receptions and rejections the way a transport reports them.

    It checks what only the pipeline can check (the MIC, with the test key),
    so a transport that mangled a frame's bytes is caught here too.
    """

    def __init__(self) -> None:
        self.receptions: list[Reception] = []
        self.rejects: Counter[tuple[str, str]] = Counter()
        self._changed = asyncio.Event()

    async def ingest(self, reception: Reception) -> str:
        self.receptions.append(reception)
        self._changed.set()
        try:
            f = frame.parse(reception.raw)
            frame.verify(node_keys(f.node_id), f)
        except frame.FrameError as e:
            return e.reason
        return "accepted"

    def reject(self, reason: str, transport: str) -> None:
        self.rejects[(reason, transport)] += 1
        self._changed.set()

    async def wait(self, cond, timeout: float = 5.0) -> None:
        """Wait until cond() is true (checked after every ingest/reject)."""
        async def loop() -> None:
            while not cond():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)
