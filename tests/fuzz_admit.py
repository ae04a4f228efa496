"""A long local fuzz run of gateway/_fastadmit.c against the Python path (atheris; not part of the suite).

The suite's hypothesis tests (tests/test_gateway_admit_fast.py) run the same
differential for a few seconds; this is for minutes or hours, optionally
against a copy of the extension built with AddressSanitizer and UBSan:

    gcc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined \\
        -I$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \\
        gateway/_fastadmit.c -lcrypto -o /tmp/_fastadmit_asan.so
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \\
    ASAN_OPTIONS=detect_leaks=0 LUMEAU_FASTADMIT=/tmp/_fastadmit_asan.so \\
        .venv/bin/python tests/fuzz_admit.py -max_total_time=600

or, for the ASan build (libFuzzer's coverage does not work with a preloaded
libasan), random damage to valid frames without feedback:
`... tests/fuzz_admit.py --mutate SECONDS`. (pip install atheris first.) Most inputs are sealed with a
registered node's keys, so the fuzzer's bytes reach the CBOR decoder behind a
valid MIC; the rest are raw bytes, wrong keys, and copies.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import atheris

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from gateway import bodies  # noqa: E402
from protocol import frame  # noqa: E402
from protocol import messages as m  # noqa: E402

atheris.instrument_all()  # coverage of the reference path (Python) guides the fuzzer

from gateway_helpers import node_keys  # noqa: E402
from test_gateway_admit_fast import _reference as reference  # noqa: E402


def _load():
    path = os.environ.get("LUMEAU_FASTADMIT")
    if not path:
        from gateway import _fastadmit

        return _fastadmit
    loader = importlib.machinery.ExtensionFileLoader("gateway._fastadmit", path)
    spec = importlib.util.spec_from_file_location("gateway._fastadmit", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


class _Entry:
    def __init__(self, k) -> None:
        self.keys = k


KEYS = {n: node_keys(n) for n in (1, 2, 3, 7, 8, 9)}  # HKDF once, not per input
REG = {n: _Entry(KEYS[n]) for n in (1, 2, 3)}
REG[7] = _Entry(KEYS[8])  # keys of another node
ADM = _load().Admitter(REG, bodies.fast_plans())


def _reference(raw: bytes):
    return reference(REG, raw)  # the suite's reference: what the Python path decides


def one(data: bytes) -> None:
    # data: [how and node] [message type] [counter, 4 bytes] [body ...]; the seeds are valid frames' bodies
    if len(data) < 7:
        return
    how, node = data[0] & 0x0F, (1, 2, 3, 7, 9, 1, 2, 1)[data[0] >> 5]
    mtype, counter, body = data[1] & 0x0F, int.from_bytes(data[2:6], "big"), data[6:]
    if how == 0:
        raw = data
    else:
        try:
            raw = frame.seal(KEYS[node], mtype, counter, body, encrypt=how == 1)
        except ValueError:  # too long for a frame
            raw = body
    for _ in range(2):  # the second time through the copy memory
        got = ADM.admit(raw)
        if got is not None:
            ref = _reference(raw)
            assert ref is not None, raw.hex()
            if got[3] is None:
                assert got[:3] == ref[:3], raw.hex()
            else:
                assert got == ref, raw.hex()


def seed(directory: str) -> None:
    """Valid bodies of every uplink type, as nodes send them."""
    from gateway_helpers import IRRIGATION_BODY, LIGHT_BODY

    samples = {
        m.LIGHT: LIGHT_BODY,
        m.IRRIGATION: IRRIGATION_BODY,
        m.HELLO: {0: "1.4.2", 1: 1, 2: 7, 3: b"abcd", 4: 2},
        m.EVENT: {0: 10, 1: 2, 2: -1234, 3: 1_700_000_000, 4: 1, 5: 2},
        m.STATUS: {0: 86400, 1: 1_700_000_000, 2: -110, 3: -12, 4: 3300, 5: 31, 6: 4000, 7: 1, 8: 0},
        m.CMD_ACK: {0: 77, 1: 0, 2: -5},
    }
    os.makedirs(directory, exist_ok=True)
    for mtype, body in samples.items():
        with open(os.path.join(directory, f"type{mtype}"), "wb") as f:
            f.write(bytes([0x22, mtype]) + (1000).to_bytes(4, "big") + m.encode(mtype, body))


def mutate_loop(seconds: float, rnd_seed: int = 1) -> int:
    """Without coverage feedback: random damage to the seeds (for the ASan build, where libFuzzer's
    coverage does not work with a preloaded libasan). Returns the number of inputs run."""
    import random
    import time

    rnd = random.Random(rnd_seed)
    seeds = []
    seed("/tmp/lumeau-fuzz-seeds")
    for name in sorted(os.listdir("/tmp/lumeau-fuzz-seeds")):
        with open(os.path.join("/tmp/lumeau-fuzz-seeds", name), "rb") as f:
            seeds.append(f.read())
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        b = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 5)):
            op = rnd.randrange(5)
            if op == 0 and len(b) > 6:
                b[rnd.randrange(6, len(b))] = rnd.randrange(256)
            elif op == 1 and len(b) > 6:
                b[rnd.randrange(6, len(b))] ^= 1 << rnd.randrange(8)
            elif op == 2:
                del b[rnd.randrange(6, len(b) + 1) :]
            elif op == 3:
                i = rnd.randrange(6, len(b) + 1)
                b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 9)))
            else:
                b[0] = rnd.randrange(256)
        one(bytes(b))
        n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--mutate":
        print("inputs:", mutate_loop(float(sys.argv[2])), ADM.stats())
        sys.exit(0)
    if len(sys.argv) > 1 and not sys.argv[-1].startswith("-"):
        seed(sys.argv[-1])
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
