"""Device-facing firmware modules type-check against MicroPython's own API.

mypy runs with MicroPython's standard library as its typeshed
(micropython-stdlib-stubs) and the ESP32 port's modules (machine,
micropython, asyncio's sleep_ms, ...; micropython-esp32-stubs) on its path,
so calling something a board does not have (a CPython-only method, a
`machine` signature that does not exist) fails here. The stubs are copied
out of the installed distributions into a temporary directory laid out the
way mypy expects (they install flat into site-packages). Errors inside the
stubs themselves are not ours and are ignored; `--check-untyped-defs`
because node code carries no annotations (README: no typing on the node).

Checked: the firmware modules of this runtime that go on a device. Add a
module to DEVICE_MODULES when it is clean.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DEVICE_MODULES = [
    "firmware/aio.py",
    "firmware/boot.py",
    "firmware/bridge.py",
    "protocol/bridge_msg.py",
    "firmware/config.py",
    "firmware/hal.py",
    "firmware/hal_machine.py",
    "firmware/main.py",
    "firmware/radio.py",
    "firmware/radio_lora.py",
    "firmware/runtime.py",
    "firmware/store.py",
    "firmware/uplink.py",
    "firmware/astro.py",
    "firmware/lighting.py",
    "firmware/irrigation.py",
    "firmware/ble.py",
]
ERROR = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+: error: ", re.M)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("mpstubs")
    typings, typeshed = base / "typings", base / "typeshed"
    for dist in ("micropython-esp32-stubs", "micropython-stdlib-stubs"):
        try:
            files = md.files(dist) or []
        except md.PackageNotFoundError:
            pytest.fail(f"{dist} is not installed: pip install -e '.[dev]'", pytrace=False)
        for f in files:
            rel = str(f)
            if not (rel.endswith(".pyi") or rel == "stdlib/VERSIONS"):
                continue
            dest = (typeshed if rel.startswith(("stdlib/", "stubs/")) else typings) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f.locate(), dest)
    return typings, typeshed


def mypy(stubs: tuple[Path, Path], files: list[str], cwd: Path = ROOT) -> tuple[str, list[str]]:
    typings, typeshed = stubs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--custom-typeshed-dir",
            str(typeshed),
            "--check-untyped-defs",
            "--no-incremental",
            "--follow-imports=silent",
            "--explicit-package-bases",
            "--no-site-packages",
            "--no-error-summary",
            "--show-error-codes",
            *files,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"MYPYPATH": str(typings), "PATH": "/usr/bin:/bin"},
    )
    ours = [
        line
        for line in proc.stdout.splitlines()
        if (mt := ERROR.match(line)) and not Path(mt["path"]).is_absolute() and not mt["path"].startswith("..")
    ]
    return proc.stdout + proc.stderr, ours


def test_device_modules_type_check_against_micropython(stubs):
    out, ours = mypy(stubs, DEVICE_MODULES)
    assert ours == [], "\n".join(ours)
    assert "error: Failed" not in out, out


def test_the_check_catches_cpython_only_calls(stubs, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import time\nimport machine\n\n\ndef f(s):\n"
        "    t = time.monotonic()\n"  # not in MicroPython's time
        "    p = machine.Pin(4, machine.Pin.OUT)\n"
        "    p.toggle_all()\n"  # no such method
        "    return 'x'.removeprefix(s), t\n"
    )
    _, ours = mypy(stubs, ["probe.py"], cwd=tmp_path)
    text = "\n".join(ours)
    assert "monotonic" in text and "toggle_all" in text, text
