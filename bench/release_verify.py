"""What a firmware update costs a node (issue 12): signature check, install, delta against full.

    python bench/release_verify.py [--json]

Under real MicroPython (the WebAssembly port under Node.js, modules loaded from the .mpy files
mpy-cross makes, as on a board), in one process:

- verify: Ed25519 verification of a release manifest's signature (protocol/ed25519.py, pure
  Python, SHA-512 in Python too: the port, like the ESP32 and RP2 ports, has no hashlib.sha512),
  median of 5, against the baseline sha256_image: hashlib.sha256 (C) over the whole full image,
  the least any integrity check of that image costs; ratio = verify / sha256_image;
- install: firmware/updater.install of the full lighting release into a scratch root (signature,
  manifest, every file written, hashed and read back, A/B state armed), against the baseline
  copy_image: the same bytes read and written without any check; ratio = install / copy_image;
- heap: code_verifier (protocol/ed25519.py + noderelease.py loaded, .mpy), code_updater
  (those plus firmware/updater.py and slots.py), left_after_unload (what stays once they are
  dropped, as main.py drops config.py), churn_verify (bytes allocated by one verification with
  the collector off: an upper bound for its peak), live_after_verify;
- the same verification on CPython with the `cryptography` library, for scale;
- delta: a typical fix (one module changed) shipped as a delta against the full image, bytes
  and LoRa airtime at SF9 and SF12 (51-byte frames at SF12, 115 at SF9, minus a 13-byte frame
  overhead and a 2-byte fragment index), and the 1 % duty-cycle time it takes.

WebAssembly under Node.js on this machine's CPU is much faster than an ESP32 (240 MHz Xtensa)
or an RP2040 (133 MHz Cortex-M0+): the times are for ratios; a real board is what turns them
into seconds (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.common import emit, machine  # noqa: E402
from lumeau import bundle as bundles  # noqa: E402
from lumeau import release as releases  # noqa: E402
from protocol import ed25519, nodelora  # noqa: E402

MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
NODE_MODULES = ("protocol/__init__.py", "protocol/ed25519.py", "protocol/noderelease.py",
                "firmware/__init__.py", "firmware/slots.py", "firmware/updater.py")  # fmt: skip
FRAME_OVERHEAD = 13 + 2  # SPEC §1 header and MIC, plus a fragment index

SCRIPT = r"""
import gc, json, os, sys, time, hashlib
import jsgc
sys.path.insert(0, "/proj")

async def collect():
    jsgc.collect()
    await asyncio.sleep_ms(0)
    gc.collect()
    return gc.mem_alloc()

import asyncio
with open("/img/full.lup", "rb") as f:
    img = f.read()
pub = bytes.fromhex(PUB)
mlen = (img[4] << 8) | img[5]
manifest = img[6:6 + mlen]
sig = img[6 + mlen:6 + mlen + 64]
out = {}
base0 = await collect()
from protocol import ed25519, noderelease
code_v = await collect()
out["code_verifier"] = code_v - base0
digest = hashlib.sha256(manifest).digest()


def per_call_us(f, n):
    # the port's clock ticks in whole milliseconds: time n calls
    t = time.ticks_ms()
    for _ in range(n):
        r = f()
    return time.ticks_diff(time.ticks_ms(), t) * 1000 // n, r


out["verify_us"], ok = per_call_us(lambda: ed25519.verify(pub, sig, digest), 20)
assert ok
out["sha256_image_us"] = max(1, per_call_us(lambda: hashlib.sha256(img).digest(), 200)[0])
out["sha512_block_us"] = per_call_us(lambda: ed25519.sha512(bytes(96)), 50)[0]
before = await collect()
gc.disable()
a = gc.mem_alloc()
ed25519.verify(pub, sig, digest)
out["churn_verify"] = gc.mem_alloc() - a
gc.enable()
out["live_after_verify"] = await collect() - before
from firmware import updater, slots
out["code_updater"] = await collect() - base0
_n = [0]


def install():
    _n[0] += 1
    root = "/r%d/" % _n[0]
    os.mkdir(root[:-1])
    m = updater.install("/img/full.lup", "lighting", pub, root=root, target="esp32", running="0.0.1")
    assert slots.read(root)["t"] == "s0"
    return m


def copy():
    with open("/img/full.lup", "rb") as src, open("/copy.bin", "wb") as dst:
        buf = bytearray(512)
        while True:
            n = src.readinto(buf)
            if not n:
                break
            dst.write(buf[:n])


out["install_us"], m = per_call_us(install, 5)
out["copy_image_us"] = max(1, per_call_us(copy, 50)[0])
out["files"] = len(m["files"])
del m, updater, slots, ed25519, noderelease
import firmware
for name in ("firmware.updater", "firmware.slots", "protocol.ed25519", "protocol.noderelease"):
    sys.modules.pop(name, None)
for mod, name in ((firmware, "updater"), (firmware, "slots")):
    try:
        delattr(mod, name)
    except AttributeError:
        pass
import protocol
for name in ("ed25519", "noderelease"):
    try:
        delattr(protocol, name)
    except AttributeError:
        pass
out["left_after_unload"] = await collect() - base0
print("@@result@@ " + json.dumps(out))
"""


def airtime(nbytes: int, sf: int) -> dict[str, float]:
    per = nodelora.max_payload(sf) - FRAME_OVERHEAD
    frames = -(-nbytes // per)
    ms = frames * nodelora.airtime_ms(per + FRAME_OVERHEAD, sf)
    return {"frames": frames, "airtime_s": round(ms / 1000, 1), "duty_1pct_h": round(ms / 1000 / 0.01 / 3600, 2)}


def build_images(work: Path) -> tuple[Ed25519PrivateKey, bytes, bytes, int]:
    key = Ed25519PrivateKey.generate()
    old = bundles.build("lighting", "esp32", work / "old")
    src = work / "src"
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, src / pkg)
    up = src / "firmware" / "uplink.py"
    up.write_text(up.read_text() + "\n\ndef _fix_marker():\n    return 1\n")  # a typical fix: one module
    new = bundles.build("lighting", "esp32", work / "new", source_root=src)
    full = releases.build(new, key, ["0.0.1"], None, "0.1.1")
    delta = releases.build(new, key, ["0.1.0"], old, "0.1.1")
    return key, full.image, delta.image, full.full_bytes


def run_micropython(work: Path, key: Ed25519PrivateKey, full: bytes) -> dict:
    (work / "full.lup").write_bytes(full)
    mpy = work / "mpy"
    files = [[str(work / "full.lup"), "/img/full.lup"]]
    exe = bundles.mpy_cross_executable()
    for rel in NODE_MODULES:
        out = mpy / Path(rel).with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "-s", rel, "-o", str(out), str(ROOT / rel)], check=True)
        files.append([str(out), "/proj/" + str(Path(rel).with_suffix(".mpy"))])
    pub = releases.public_bytes(key.public_key()).hex()
    script = "PUB = %r\nFACTORY = ()\n" % pub + SCRIPT
    job = {"micropython": str(MICROPYTHON_MJS), "heapsize": 64 * 1024, "files": files, "script": script}
    (work / "job.json").write_text(json.dumps(job))
    proc = subprocess.run(
        ["node", "--expose-gc", str(ROOT / "bench" / "release_verify.mjs"), str(work / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@result@@ "):
            return json.loads(line[len("@@result@@ ") :])
    raise SystemExit(f"MicroPython run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def cpython_verify(key: Ed25519PrivateKey) -> dict[str, float]:
    pub = key.public_key()
    raw = releases.public_bytes(pub)
    msg = b"\x00" * 32
    sig = key.sign(msg)
    n = 50
    t = time.perf_counter()
    for _ in range(n):
        pub.verify(sig, msg)
    lib = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for _ in range(n):
        assert ed25519.verify(raw, sig, msg)
    pure = (time.perf_counter() - t) / n
    return {"cryptography_us": round(lib * 1e6, 1), "pure_python_us": round(pure * 1e6, 1),
            "ratio": round(pure / lib, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        key, full, delta, file_bytes = build_images(work)
        mp = run_micropython(work, key, full)
    result = {
        "micropython": {
            **mp,
            "verify_vs_sha256_image": round(mp["verify_us"] / mp["sha256_image_us"], 1),
            "install_vs_copy_image": round(mp["install_us"] / mp["copy_image_us"], 1),
        },
        "cpython_verify": cpython_verify(key),
        "delta": {
            "full_image_bytes": len(full),
            "delta_image_bytes": len(delta),
            "release_file_bytes": file_bytes,
            "ratio_delta_to_full": round(len(delta) / len(full), 3),
            "full_sf9": airtime(len(full), 9),
            "delta_sf9": airtime(len(delta), 9),
            "full_sf12": airtime(len(full), 12),
            "delta_sf12": airtime(len(delta), 12),
        },
        **machine(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
