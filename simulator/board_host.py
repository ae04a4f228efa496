"""The host side of the virtual board's hardware: its pseudo-terminals and its interpreter process.

`Pty` is a serial port as a USB board shows one (the console, and each
connected UART); `Engine` is one boot of the board's MicroPython, a Node.js
process running board_engine.mjs, spoken to in frames (a type letter and a
length) on a pipe. simulator/board.py builds the board, its REPL protocol and
its resets on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import struct
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lumeau.board")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENGINE = HERE / "board_engine.mjs"
VBOARD_DIR = HERE / "vboard"
MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"

DEFAULT_FS_SIZE = 2 * 1024 * 1024  # about what an ESP32 with 4 MB flash leaves for files
BLOCK_SIZE = 4096  # littlefs block on ESP32 / RP2040 flash
DEFAULT_HEAP = 128 * 1024  # initial GC heap; the WebAssembly port grows it on demand
INTERRUPT_GRACE_S = 3.0  # Ctrl-C not honoured within this: hard reset, safe boot
ENGINE_BOOT_TIMEOUT_S = 20.0
OUTPUT_BUFFER_MAX = 64 * 1024  # per pty, when nobody reads
MACHINE = "Lumeau virtual board with WebAssembly"


class BoardError(RuntimeError):
    """The virtual board cannot run (no Node.js, no MicroPython, engine crash at boot)."""


@dataclass
class BoardOptions:
    flash_dir: Path
    fs_size: int = DEFAULT_FS_SIZE
    link: Path | None = None
    uart_links: dict[int, Path | None] = field(default_factory=dict)
    corrupt: list[str] = field(default_factory=list)
    heap: int = DEFAULT_HEAP
    name: str = "vboard"
    interrupt_grace_s: float = INTERRUPT_GRACE_S
    control: Path | None = None  # Unix socket: set inputs, read outputs (JSON lines)


def node_executable() -> str:
    node = os.environ.get("LUMEAU_NODE") or shutil.which("node")
    if not node or not shutil.which(node):
        raise BoardError(
            "Node.js not found: the virtual board runs MicroPython's WebAssembly port "
            "under Node.js 20 (set LUMEAU_NODE, or install Node.js and run `make setup`)"
        )
    if not MICROPYTHON_MJS.exists():
        raise BoardError(f"{MICROPYTHON_MJS} is missing: run `make setup` (npm ci)")
    return node


class Pty:
    """A pseudo-terminal pair: the board holds the master; clients open ``path``.

    The board also keeps the slave open, so a client closing the port does not
    hang the line up (reads on the master would fail with EIO), and sets it raw:
    no echo, no newline translation, like a USB serial port.
    """

    def __init__(self, link: Path | None):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.link = link
        if link is not None:
            if link.exists() and not link.is_symlink():
                os.close(self.master)
                os.close(self.slave)
                raise BoardError(f"{link} exists and is not a symlink: not replacing it")
            link.unlink(missing_ok=True)
            link.symlink_to(self.path)
        self._out = bytearray()
        self._writing = False
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if len(self._out) + len(data) > OUTPUT_BUFFER_MAX:
            self.dropped += len(data)
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._out:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("pty write: %s", e)
                self._out.clear()
                break
            del self._out[:n]
        if self._out and not self._writing:
            loop.add_writer(self.master, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(self.master)
            self._writing = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_writer(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link is not None and self.link.is_symlink():
            self.link.unlink(missing_ok=True)


class Engine:
    """One boot of the board's interpreter: a Node.js process running board_engine.mjs."""

    def __init__(
        self,
        opts: BoardOptions,
        reset_cause: str,
        on_frame: Callable[[Engine, str, bytes], None],
        on_exit: Callable[[Engine, int], None],
    ):
        self.opts = opts
        self.reset_cause = reset_cause
        self.on_frame = on_frame  # every frame but the boot report
        self.on_exit = on_exit  # the process ended after booting, and nobody stopped it
        self.proc: asyncio.subprocess.Process | None = None
        self._wfd = -1
        self._out = bytearray()
        self._writing = False
        self.booted: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task] = []
        self.stopping = False
        self.stderr_tail: list[str] = []

    async def start(self) -> dict:
        opts = self.opts
        cfg = {
            "micropython": str(MICROPYTHON_MJS),
            "fsdir": str(opts.flash_dir),
            "fs_size": opts.fs_size,
            "block_size": BLOCK_SIZE,
            "corrupt": opts.corrupt,
            "heap": opts.heap,
            "reset_cause": self.reset_cause,
            "vboard_dir": str(VBOARD_DIR),
            "machine": MACHINE,
            "name": opts.name,
            "uarts": sorted(opts.uart_links),
        }
        r, w = os.pipe()
        os.set_blocking(r, False)  # the engine polls it between steps of the board's code
        os.set_blocking(w, False)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                node_executable(),
                str(ENGINE),
                json.dumps(cfg),
                stdin=r,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(r)
        self._wfd = w
        self._tasks = [asyncio.create_task(self._read_frames()), asyncio.create_task(self._read_stderr())]
        try:
            return await asyncio.wait_for(asyncio.shield(self.booted), ENGINE_BOOT_TIMEOUT_S)
        except TimeoutError:
            raise BoardError(f"the MicroPython engine did not boot within {ENGINE_BOOT_TIMEOUT_S:g} s") from None

    def send(self, ftype: str, payload: bytes | str = b"") -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        self._out += ftype.encode() + struct.pack(">I", len(payload)) + payload
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._out:
            try:
                n = os.write(self._wfd, self._out)
            except BlockingIOError:
                break
            except OSError:  # the engine is gone; its reader reports it
                self._out.clear()
                break
            del self._out[:n]
        if self._out and not self._writing:
            loop.add_writer(self._wfd, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(self._wfd)
            self._writing = False

    async def _read_frames(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            while True:
                head = await self.proc.stdout.readexactly(5)
                payload = await self.proc.stdout.readexactly(struct.unpack(">I", head[1:])[0])
                ftype = chr(head[0])
                if ftype == "B":
                    if not self.booted.done():
                        self.booted.set_result(json.loads(payload))
                else:
                    self.on_frame(self, ftype, payload)
        except asyncio.IncompleteReadError:
            pass
        rc = await self.proc.wait()
        if not self.booted.done():
            tail = "\n".join(self.stderr_tail[-10:])
            self.booted.set_exception(BoardError(f"the MicroPython engine exited with code {rc} at boot:\n{tail}"))
        elif not self.stopping:
            self.on_exit(self, rc)

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()[:300]  # Node prints whole minified lines
            if text.strip():
                self.stderr_tail = (self.stderr_tail + [text])[-50:]
                log.debug("engine: %s", text)

    async def stop(self, kill: bool = False) -> None:
        self.stopping = True
        if self.proc and self.proc.returncode is None:
            if kill:
                self.proc.kill()
            else:
                self.send("Q")
            try:
                await asyncio.wait_for(self.proc.wait(), 2.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_writer(self._wfd)
        if self._wfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._wfd)
            self._wfd = -1
