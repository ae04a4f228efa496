"""Child process for the crash tests: ingest a burst of frames and print each acknowledgement.

    python tests/gateway_crash_child.py DB REGISTRY NODES [WINDOW_LOG_MAX]

Producers (one per node group, so several batches are committing at once)
seal LIGHT frames and hand them to the real pipeline with ingest_many; after
a batch's verdicts come back, every accepted frame is printed as
`ACK <node> <counter>` and flushed. A line is printed only after the commit,
so every printed frame was acknowledged. Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import reception, seal

from gateway.pipeline import Pipeline
from gateway.registry import Registry
from gateway.store import Store

BATCH = 16


async def produce(pipeline: Pipeline, nodes: list[int]) -> None:
    counter = 0
    while True:
        batch = [(n, counter + i) for i in range(BATCH // len(nodes) or 1) for n in nodes]
        counter += BATCH // len(nodes) or 1
        recs = [reception(seal(n, c)) for n, c in batch]
        verdicts = await pipeline.ingest_many(recs)
        out = "".join(f"ACK {n} {c}\n" for (n, c), v in zip(batch, verdicts) if v == "accepted")
        sys.stdout.write(out)
        sys.stdout.flush()


async def main() -> None:
    db, reg_path, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # an argument folds the replay-window log every few groups, as a long run does
    store = await Store.open(db, **({"window_log_max": int(sys.argv[4])} if len(sys.argv) > 4 else {}))
    pipeline = Pipeline(Registry.load(reg_path), store)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    groups = [list(range(1 + g, nodes + 1, 4)) for g in range(4)]
    await asyncio.gather(*(produce(pipeline, g) for g in groups if g))


if __name__ == "__main__":
    asyncio.run(main())
