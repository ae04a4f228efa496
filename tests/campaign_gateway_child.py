"""Child process for the kill -9 campaign test: `lumeau gateway` as the service runs it, with a
delivery (the in-test kind: gateway/fuota.py is another branch's).

    python tests/campaign_gateway_child.py CONFIG MODE

MODE `hold-after-first`: the first delivery reports receiving then verifying for its nodes, every
later one reports receiving 50 % and hangs (so the test can kill the process mid-delivery);
MODE `free`: every delivery runs through. Logs JSON lines on stderr as `lumeau gateway` does
("gateway started" with the bound ports).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import logs
from gateway.config import load_config
from gateway.service import Gateway


class ChildDelivery:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0

    async def deliver(
        self, image: bytes, node_ids: Sequence[int], report: Callable[[int, str, float | None], None]
    ) -> None:
        self.calls += 1
        for n in node_ids:
            report(n, "receiving", 0.5)
        if self.mode == "hold-after-first" and self.calls > 1:
            await asyncio.Event().wait()  # hangs until cancelled (or the process is killed)
        for n in node_ids:
            report(n, "verifying", None)


def main() -> None:
    cfg = load_config(sys.argv[1])
    logs.setup(cfg.log.level)
    asyncio.run(Gateway(cfg, delivery=ChildDelivery(sys.argv[2])).run())


if __name__ == "__main__":
    main()
