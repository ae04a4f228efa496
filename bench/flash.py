"""Flashing a node: `lumeau node flash` against a plain `mpremote fs cp` of the same bundle.

    python bench/flash.py --json [--kind lighting] [--repeats R]

On the virtual board (`lumeau sim board`: real MicroPython behind a real pty), a
fresh board each round:

- baseline  mpremote's `fs mkdir` + `fs cp FILE :FILE` for every bundle file, through
  its transport in this process (what a technician would do by hand: no
  verification, no resume; CLI start-up excluded);
- flash     lumeau.flash.flash(): hashes on the board first, writes FILE.part,
  hashes it on the board, renames it into place (reset and HELLO wait excluded);
- reflash   the same flash again: every file unchanged, nothing written.

Ratios: flash_vs_cp = flash s / baseline s (the price of verification and safe
replacement; below 1 when the larger write chunk wins it back), reflash_vs_flash =
reflash s / flash s (what idempotence saves). Best of R rounds each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import emit  # noqa: E402
from lumeau import bundle as bundles  # noqa: E402
from lumeau import flash as fl  # noqa: E402
from simulator.board_proc import BoardProcess  # noqa: E402


def mpremote_copy(port: str, b: bundles.Bundle) -> float:
    """What `mpremote fs mkdir ... + fs cp ...` does, in-process (no CLI start-up in the figure)."""
    from mpremote.transport_serial import SerialTransport

    t0 = time.perf_counter()
    t = SerialTransport(port, baudrate=115200)
    t.enter_raw_repl(soft_reset=True)
    for d in sorted({str(Path(f.path).parent) for f in b.files} - {"."}):
        t.fs_mkdir(d)
    for f in b.files:
        t.fs_writefile(f.path, b.local(f).read_bytes())  # mpremote's fs cp: 256-byte chunks
    t.exit_raw_repl()
    t.close()
    return time.perf_counter() - t0


def one_round(tmp: Path, b: bundles.Bundle, i: int) -> tuple[float, float, float]:
    with BoardProcess(tmp / f"cp{i}") as board:
        cp = mpremote_copy(board.port, b)
    with BoardProcess(tmp / f"fl{i}") as board:
        t0 = time.perf_counter()
        report = fl.flash(board.port, b.directory, reset=False, log=lambda s: None)
        t1 = time.perf_counter()
        again = fl.flash(board.port, b.directory, reset=False, log=lambda s: None)
        t2 = time.perf_counter()
    assert len(report.copied) == len(b.files) and not again.copied
    return cp, t1 - t0, t2 - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--kind", default="lighting", choices=bundles.KINDS)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lumeau-bench-flash-") as d:
        tmp = Path(d)
        b = bundles.build(args.kind, "esp32", tmp / "bundle")
        rounds = [one_round(tmp, b, i) for i in range(args.repeats)]
    cp, flash, reflash = (min(r[k] for r in rounds) for k in range(3))
    size = sum(f.size for f in b.files)
    result = {
        "kind": args.kind,
        "files": len(b.files),
        "bytes": size,
        "repeats": args.repeats,
        "mpremote_cp_s": round(cp, 3),
        "flash_s": round(flash, 3),
        "reflash_unchanged_s": round(reflash, 3),
        "flash_bytes_per_s": round(size / flash),
        "flash_vs_cp_ratio": round(flash / cp, 3),
        "reflash_vs_flash_ratio": round(reflash / flash, 3),
    }
    emit(result, args.json, "{k:24} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
