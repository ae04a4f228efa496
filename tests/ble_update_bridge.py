"""A node under real MicroPython on the simulated Bluetooth air of tests/ble_sim.py.

tests/micropython/bridge.mjs runs tests/micropython/blebridge.py -- the real node firmware
(runtime, lighting app, firmware/ble.py, firmware/bleupd.py, the updater), loaded from .mpy
files compiled by mpy-cross as on a board -- inside MicroPython's WebAssembly port, and
answers one request at a time on a pipe. `RemoteStack` stands where ble_sim's Device expects
an aioble_fake.Stack, so bleak's backends (ble_sim.Air), lumeau/ble_tools.py and the CLI run
unchanged against it and meet the node only at the bytes a radio would carry. The node's
time is its own StepClock: it moves while the host polls the advertisement (`tick_ms` per
poll) and a little after each write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conftest import ROOT

MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
BRIDGE = ROOT / "tests" / "micropython" / "bridge.mjs"
MARK = "@@bridge@@ "
SIM_FILES = ("simulator/__init__.py", "simulator/hal_sim.py")


def problem() -> str | None:
    if not (os.environ.get("LUMEAU_NODE") or shutil.which("node")):
        return "Node.js not found: run `make test` (MicroPython's WebAssembly port runs under Node.js)"
    if not MICROPYTHON_MJS.exists():
        return "node_modules missing: run `make test` (npm ci)"
    return None


def build_job(workdir: Path) -> Path:
    """The bridge's job: protocol/ and firmware/ as .mpy (mpy-cross), the test helpers as source."""
    from lumeau.bundle import mpy_cross_executable

    files = []
    for pkg in ("protocol", "firmware"):
        for src in sorted((ROOT / pkg).rglob("*.py")):
            rel = src.relative_to(ROOT)
            out = workdir / rel.with_suffix(".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([mpy_cross_executable(), "-o", str(out), str(rel)], cwd=ROOT, check=True)
            files.append([str(out), f"/proj/{rel.with_suffix('.mpy').as_posix()}"])
    for f in SIM_FILES:
        files.append([str(ROOT / f), f"/proj/{f}"])
    for name in ("blebridge.py", "aioble_fake.py", "mpnode.py", "release_vectors.py"):
        files.append([str(ROOT / "tests" / "micropython" / name), f"/tests/{name}"])
    job = {
        "micropython": str(MICROPYTHON_MJS),
        "heapsize": 512 * 1024,
        "files": files,
        "sys_path": ["/tests", "/proj"],
        "module": "blebridge",
    }
    path = workdir / "job.json"
    path.write_text(json.dumps(job))
    return path


class Conn:
    def __init__(self, stack: RemoteStack) -> None:
        self.stack = stack
        self.up = True

    def is_connected(self) -> bool:
        return self.up


class RemoteStack:
    """The node's Bluetooth stack across the pipe, shaped as aioble_fake.Stack for ble_sim."""

    def __init__(self, job: Path, address: str = "C0:FF:EE:00:00:01", tick_ms: int = 200) -> None:
        node = os.environ.get("LUMEAU_NODE") or shutil.which("node") or "node"
        self.proc = subprocess.Popen(
            [node, str(BRIDGE), str(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=tempfile.TemporaryFile(),
            cwd=ROOT,
        )
        self.address = address
        self.tick_ms = tick_ms
        self.connection: Conn | None = None
        self.services: list[Any] = []
        self.on_notify: Any = None
        self.on_disconnect: Any = None
        self.writes = 0
        self.drop_at_write: int | None = None  # the link is lost at this write (a walk out of reach)
        self._read_answer()

    def _read_answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"the MicroPython bridge exited ({self.proc.poll()}): {self.stderr()}")
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])

    def stderr(self) -> str:
        err = self.proc.stderr
        assert err is not None and not isinstance(err, int)
        err.seek(0)
        return err.read().decode("utf-8", "replace")[-3000:]

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        out = self._read_answer()
        if "error" in out:
            raise RuntimeError(f"the node's side failed:\n{out['error']}")
        for ev in out["events"]:
            if ev[0] == "n" and self.on_notify is not None:
                self.on_notify(ev[1], bytes.fromhex(ev[2]))
            elif ev[0] == "d":
                self._gone()
                if self.on_disconnect is not None:
                    self.on_disconnect()
        if not out["connected"] and self.connection is not None:
            self._gone()
        return out

    def _gone(self) -> None:
        if self.connection is not None:
            self.connection.up = False
            self.connection = None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # -- what ble_sim calls -----------------------------------------------------------

    def boot(self, config: str | None = None) -> None:
        self.call(op="boot", **({} if config is None else {"config": config}))

    @property
    def advertising(self) -> tuple[int, bytes, bytes] | None:
        if self.connection is not None:
            return None
        adv = self.call(op="tick", ms=self.tick_ms)["adv"]
        return None if adv is None else (0, bytes.fromhex(adv[0]), bytes.fromhex(adv[1]))

    def connect(self, central: str = "AA:BB:CC:DD:EE:FF", mtu: int | None = None) -> Conn:
        out = self.call(op="connect", central=central, mtu=mtu)
        self.services = [
            (
                SimpleNamespace(uuid=SimpleNamespace(s=svc)),
                [(h, SimpleNamespace(uuid=SimpleNamespace(s=u), flags=flags)) for h, u, flags in chars],
            )
            for svc, chars in out["services"]
        ]
        self.connection = Conn(self)
        return self.connection

    def read(self, handle: int) -> bytes:
        return bytes.fromhex(self.call(op="read", h=handle)["value"])

    def write(self, handle: int, data: bytes) -> None:
        self.writes += 1
        if self.drop_at_write is not None and self.writes >= self.drop_at_write:
            self.drop_at_write = None
            self.disconnect()
            raise OSError("link lost")
        self.call(op="write", h=handle, data=bytes(data).hex())

    def subscribe(self, handle: int, on: bool = True) -> None:
        self.call(op="subscribe", h=handle, on=on)

    def disconnect(self) -> None:
        self.call(op="disconnect")
        self._gone()

    def state(self) -> dict[str, Any]:
        return self.call(op="state")
