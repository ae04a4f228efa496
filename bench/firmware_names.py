"""The names (qstrs) each node app's modules intern, and the ones an app adds over another.

    python bench/firmware_names.py [--json] [--apps irrigation-battery] [--against irrigation]

MicroPython interns a module's function, class, attribute, parameter and global names and its
short string constants (up to 10 characters; local variable names are not kept in a .mpy) when
it loads the module's .mpy, for good, into pools of 20, 40, 80, 160, 320 names (620 in all),
then 640: one name past 620 costs a whole sixth pool, about 4.6 KB of heap
(bench/firmware_memory.py's `qstr_pool`, bench/README.md "Heap room"). This bench says which
names those are, so a name diet knows where to cut.

Per app: the device imports of bench/firmware_memory.py (the same modules in the same order,
config imported then unloaded), loaded from .mpy in the MicroPython WebAssembly port
(firmware_names.mjs), and micropython.qstr_info(1)'s names after them, less the ones the bare
interpreter with asyncio holds. With --against, the names each app holds that the other app's
closure does not, each with the modules whose .mpy carries it (from the .mpy's qstr table;
a module's path and dotted name come from the import itself). Names the node interns later (a
module loaded by name, an app's config checks) are not counted here, as in firmware_memory.py's
code heap. Names are counted, not timed:
the ratio printed is each app's names to the 620 of five pools (`fifth_pool_ratio`; above 1.0
a sixth pool is open), and `left` the names it may still add before that.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import firmware_memory as fm

RUNNER = fm.ROOT / "bench" / "firmware_names.mjs"
POOLS = (20, 40, 80, 160, 320)  # then 640: MicroPython doubles each new pool
FIVE_POOLS = sum(POOLS)


def device_imports(kind: str) -> str:
    """What firmware_memory.run_app imports as the device's modules for `kind` (kept in step with it)."""
    module, cls = fm.APP_CLASS[kind]
    return (
        "import firmware\n"
        f"from firmware import config, hal_machine, radio, radio_lora, runtime\nfrom {module} import {cls}\n"
        + ("from firmware import hal_battery\n" if kind == "irrigation-battery" else "")
        + ("from firmware import group\n" if kind == "lighting-member" else "")
        + "del config\nfirmware.unload('config')\n"
    )


def _vuint(b: bytes, i: int) -> tuple[int, int]:
    v = 0
    while True:
        c = b[i]
        i += 1
        v = v << 7 | c & 0x7F
        if not c & 0x80:
            return v, i


def mpy_names(path: Path) -> list[str]:
    """The names in a .mpy's qstr table (format 6: header, counts, then each name), static ones left out."""
    b = path.read_bytes()
    if b[:2] != b"M\x06":
        raise ValueError(f"{path}: not a version 6 .mpy")
    n, i = _vuint(b, 4)
    _, i = _vuint(b, i)
    out = []
    for _ in range(n):
        v, i = _vuint(b, i)
        if v & 1:
            continue  # an index into the static (built-in) names
        out.append(b[i : i + (v >> 1)].decode())
        i += (v >> 1) + 1
    return out


def names_of(kind: str, built: dict[str, Path]) -> tuple[list[str], dict[str, int]]:
    """(names the app's device modules interned, in order; qstr_info's summary: pools, qstrs, bytes)."""
    job = {
        "micropython": str(fm.MICROPYTHON_MJS),
        "heapsize": fm.HEAP,
        "files": [[str(p), "/proj/" + rel[:-3] + ".mpy"] for rel, p in built.items()],
        "device_imports": device_imports(kind),
    }
    r = fm.run_job(["node", str(RUNNER)], job, kind, timeout=300)
    bare = set(re.findall(r"^Q\((.*)\)\r?$", r["bare"], re.M))
    after = re.findall(r"^Q\((.*)\)\r?$", r["after"], re.M)
    m = re.search(r"n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", r["after"])
    if m is None:
        raise RuntimeError(f"{kind}: no qstr_info summary in {r['after'][:200]!r}")
    pools, qstrs, _, total = map(int, m.groups())
    info = {"pools": pools, "qstrs": qstrs, "bytes": total, "left": FIVE_POOLS - qstrs}
    return [n for n in after if n not in bare], info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--apps", default="irrigation-battery", help=f"apps, of: {', '.join(fm.APP_CLASS)}")
    ap.add_argument("--against", default="irrigation", help="list the names each app holds that this app does not")
    args = ap.parse_args(argv)
    apps = [a for a in args.apps.split(",") if a]
    for a in apps + [args.against]:
        if a not in fm.APP_CLASS:
            ap.error(f"{a!r} is not one of {', '.join(fm.APP_CLASS)}")
    with tempfile.TemporaryDirectory(prefix="lumeau-names-") as tmp:
        built = fm.compile_all(Path(tmp))
        carriers: dict[str, list[str]] = {}
        for rel, p in built.items():
            for n in mpy_names(p):
                carriers.setdefault(n, []).append(rel)
        base, base_info = names_of(args.against, built)
        report: dict = {"pool_sizes": list(POOLS), "against": {"app": args.against, "info": base_info}, "apps": {}}
        for kind in apps:
            got, info = names_of(kind, built) if kind != args.against else (base, base_info)
            held = set(base)
            extra = [n for n in got if n not in held]
            report["apps"][kind] = {
                **info,
                "fifth_pool_ratio": round(info["qstrs"] / FIVE_POOLS, 3),
                "names_over_bare": len(got),
                "extra": [{"name": n, "modules": carriers.get(n, [])} for n in extra],
            }
    if args.json:
        print(json.dumps(report))
        return 0
    b = base_info
    print(f"{args.against}: {b['qstrs']} names in {b['pools']} pools ({b['bytes']} B), {b['left']} left before a 6th")
    for kind, r in report["apps"].items():
        print(
            f"{kind}: {r['qstrs']} names in {r['pools']} pools ({r['bytes']} B), {r['left']} left before a 6th"
            f" (ratio to 620: {r['fifth_pool_ratio']}); {len(r['extra'])} that {args.against} does not hold:"
        )
        for e in r["extra"]:
            print(f"  {e['name']:34s} {' '.join(e['modules']) or '(module name or path)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
