"""Helpers for the transport tests: real frames, and the real pipeline and store.

Transports are tested against gateway.pipeline.Pipeline over a real SQLite
store; what reached the pipeline is seen through its downlink-observer seam
(`on_uplink(record, reception)`), where gateway/downlinks.py plugs in.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gateway.model import Reception, Record
from gateway.pipeline import Pipeline
from gateway.store import Store
from protocol import frame, keys
from protocol import messages as m
from tests.waiting import wait_for

ROOT_KEY = bytes(range(16))


def node_keys(node_id: int) -> keys.NodeKeys:
    return keys.NodeKeys(node_id, ROOT_KEY)


def light_frame(node_id: int = 0x00A1B2C3, counter: int = 1, level: int = 40) -> bytes:
    body = m.encode(m.LIGHT, {0: level, 1: 452, 2: 123456, 3: m.LS_ON})
    return frame.seal(node_keys(node_id), m.LIGHT, counter, body)


def downlink_frame(node_id: int = 0x00A1B2C3, counter: int = 1, acked: int = 1) -> bytes:
    return frame.seal(node_keys(node_id), m.ACK, counter, m.encode(m.ACK, {0: acked}))


class KeyTable:
    """The registry as the pipeline sees it: node id -> entry with `.keys`.

    Every node id in `known` (all of them when None) is provisioned with ROOT_KEY.
    """

    def __init__(self, known: set[int] | None = None) -> None:
        self.known = known
        self._cache: dict[int, Any] = {}

    def get(self, node_id: int) -> Any:
        if self.known is not None and node_id not in self.known:
            return None
        e = self._cache.get(node_id)
        if e is None:
            e = self._cache[node_id] = SimpleNamespace(keys=node_keys(node_id))
        return e


class Changes:
    """Something tests can wait on until a condition holds."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait(self, cond: Callable[[], Any], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not cond():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


class Observer(Changes):
    """Plugs into the pipeline where the downlink queue would: sees every accepted uplink."""

    def __init__(self) -> None:
        super().__init__()
        self.uplinks: list[tuple[Record, Reception]] = []
        self.duplicates: list[tuple[int, int, Reception]] = []

    def on_uplink(self, record: Record, reception: Reception) -> None:
        self.uplinks.append((record, reception))
        self.changed()

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        self.duplicates.append((node_id, counter, reception))
        self.changed()

    @property
    def receptions(self) -> list[Reception]:
        return [r for _, r in self.uplinks]


class Gateway:
    """A real pipeline over a real store, and what it saw."""

    def __init__(self, pipeline: Pipeline, store: Store, seen: Observer) -> None:
        self.pipeline = pipeline
        self.store = store
        self.seen = seen

    def rejected(self, transport: str) -> dict[str, int]:
        return {r: n for (r, t), n in self.pipeline.rejected.items() if t == transport}

    async def wait(self, cond: Callable[[], Any], timeout: float = 5.0) -> None:
        # Rejections do not go through the observer: poll briefly for them too.
        await wait_for(cond, timeout)

    @classmethod
    async def open(cls, path: Path, known: set[int] | None = None) -> Gateway:
        store = await Store.open(path)
        seen = Observer()
        return cls(Pipeline(KeyTable(known), store, downlinks=seen), store, seen)

    async def close(self) -> None:
        await self.pipeline.close()
        await self.store.close()


class RecordingPipeline(Changes):
    """A stand-in pipeline for the few tests that need one that misbehaves (stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.receptions: list[Reception] = []
        self.rejects: Counter[tuple[str, str]] = Counter()

    async def submit(self, reception: Reception) -> None:
        self.receptions.append(reception)
        self.changed()

    def reject(self, reason: str, transport: str, detail: str | None = None) -> None:
        self.rejects[(reason, transport)] += 1
        self.changed()
