"""Protocol cost per frame, against the floor of the same work done with C libraries.

One round = encode a body, seal the frame (MIC), then on the receiving side
parse, verify the MIC, replay-check and decode the body. Three variants run on
the same frames in the same process:

  lumeau        protocol/ as nodes run it: pure-Python CBOR, frame, messages
  lumeau_cbor2  the gateway's choice: protocol/frame + messages.validate, cbor2 codec
  floor         cbor2.dumps + hmac.digest, then hmac.digest + compare_digest + cbor2.loads:
                the least any implementation of this wire format can do in CPython

Prints one JSON object (--json) with frames/s per variant and ratios to the floor.
"""

from __future__ import annotations

import argparse
import hmac
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2

from protocol import cbor, frame, keys
from protocol import messages as m


def make_bodies(n: int, seed: int = 1) -> list[tuple[int, dict]]:
    rnd = random.Random(seed)
    out: list[tuple[int, dict[int, Any]]] = []
    for _ in range(n):
        if rnd.random() < 0.6:
            out.append(
                (
                    m.LIGHT,
                    {
                        0: rnd.randint(0, 100),
                        1: rnd.randint(0, 2500),
                        2: rnd.randint(0, 10**7),
                        3: rnd.randint(0, 0x7F),
                        4: rnd.randint(0, 50_000),
                        5: rnd.randint(0, 500),
                        6: rnd.randint(0, 2000),
                    },
                )
            )
        else:
            out.append(
                (
                    m.IRRIGATION,
                    {
                        0: bytes(rnd.randint(0, 200) for _ in range(4)),
                        1: rnd.randint(0, 0x8F),
                        2: rnd.randint(0, 5000),
                        3: rnd.randint(0, 10**8),
                        4: rnd.randint(0, 3),
                        5: rnd.randint(11000, 26000),
                        6: 0,
                    },
                )
            )
    return out


def run_lumeau(k: keys.NodeKeys, bodies: list[tuple[int, dict]]) -> None:
    w = frame.ReplayWindow()
    for counter, (mtype, body) in enumerate(bodies):
        raw = frame.seal(k, mtype, counter, m.encode(mtype, body))
        f, plain = frame.unseal(k, raw, w)
        m.decode(f.mtype, plain)


def run_lumeau_cbor2(k: keys.NodeKeys, bodies: list[tuple[int, dict]]) -> None:
    w = frame.ReplayWindow()
    for counter, (mtype, body) in enumerate(bodies):
        raw = frame.seal(k, mtype, counter, cbor2.dumps(m.validate(mtype, body), canonical=True))
        f, plain = frame.unseal(k, raw, w)
        m.validate(f.mtype, cbor2.loads(plain))


def run_floor(k: keys.NodeKeys, bodies: list[tuple[int, dict]]) -> None:
    key = k.mic_up.key
    for counter, (mtype, body) in enumerate(bodies):
        head = bytes((0x20 | mtype,)) + k.node_id.to_bytes(4, "big") + counter.to_bytes(4, "big")
        msg = head + cbor2.dumps(body, canonical=True)
        raw = msg + hmac.digest(key, msg, "sha256")[:4]
        if not hmac.compare_digest(hmac.digest(key, raw[:-4], "sha256")[:4], raw[-4:]):
            raise AssertionError
        cbor2.loads(raw[9:-4])


def frames_per_s(
    fn: Callable[[keys.NodeKeys, list[tuple[int, dict]]], None],
    k: keys.NodeKeys,
    bodies: list[tuple[int, dict]],
    repeats: int,
) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(k, bodies)
        best = min(best, time.perf_counter() - t0)
    return len(bodies) / best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output)")
    p.add_argument("--frames", type=int, default=5000, help="frames per round (default 5000)")
    p.add_argument("--repeats", type=int, default=5, help="rounds per variant; the best is kept (default 5)")
    args = p.parse_args()

    k = keys.NodeKeys(0x00A1B2C3, bytes(range(16)))
    bodies = make_bodies(args.frames)
    # The variants must do the same work: check they produce the same bytes first.
    for _mtype, body in bodies[:50]:
        assert cbor.dumps(body) == cbor2.dumps(body, canonical=True)
    sizes = [len(frame.seal(k, t, 0, m.encode(t, b))) for t, b in bodies]

    result = {
        "bench": "protocol",
        "python": platform.python_version(),
        "frames": args.frames,
        "mean_frame_bytes": round(sum(sizes) / len(sizes), 1),
        "max_frame_bytes": max(sizes),
    }
    floor = frames_per_s(run_floor, k, bodies, args.repeats)
    ours = frames_per_s(run_lumeau, k, bodies, args.repeats)
    ours_c = frames_per_s(run_lumeau_cbor2, k, bodies, args.repeats)
    result.update(
        {
            "floor_frames_per_s": round(floor),
            "lumeau_frames_per_s": round(ours),
            "lumeau_cbor2_frames_per_s": round(ours_c),
            "lumeau_cost_ratio": round(floor / ours, 2),
            "lumeau_cbor2_cost_ratio": round(floor / ours_c, 2),
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
