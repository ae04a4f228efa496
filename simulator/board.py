"""The virtual board: a pseudo-terminal that behaves like a MicroPython board on USB.

`lumeau sim board` opens a pty and answers on it exactly as a board's USB serial
REPL does, backed by real MicroPython (the WebAssembly port under Node.js, see
board_engine.mjs), so mpremote, `lumeau node flash` and a terminal work against it
unchanged:

- friendly REPL (``>>>``, ``...`` continuation, Ctrl-E paste mode), raw REPL
  (Ctrl-A; ``OK``, output, ``\\x04``, traceback, ``\\x04``, ``>``) and raw-paste mode
  (``\\x05A\\x01``, window flow control) as in MicroPython's shared/runtime/pyexec.c;
- Ctrl-C interrupts a running program (KeyboardInterrupt where it waits: asyncio,
  time.sleep); Ctrl-D at an empty prompt, ``sys.exit()`` or ``machine.soft_reset()``
  soft-reset the board: a fresh interpreter, ``MPY: soft reboot``, ``boot.py``, and
  ``main.py`` unless the raw REPL is active (so tools get a clean raw REPL);
- power-on runs ``boot.py`` then ``main.py``; ``machine.reset()`` and a watchdog that
  was not fed (``machine.WDT``) hard-reset it;
- a filesystem of ``fs_size`` bytes (4 KiB blocks) mirrored in a host directory: files
  survive resets and restarts of the board, and a full board fails writes with
  ``OSError: 28`` (ENOSPC) as littlefs on a board does;
- ``corrupt`` globs (board paths) flip one bit of each matching file when it is
  written, to test that a flashing tool verifies what it wrote;
- ``machine`` emulates the peripherals (Pin, PWM, ADC, UART, RTC, WDT) so a node's own
  main.py and board HAL run unchanged; inputs are set and outputs read on a control
  socket; UARTs are more ptys (``--uart 1=PATH``): the hook through which a node's
  serial link or radio reaches a gateway. simulator/vboard/README.md has it all.

Limits (all named here): a program stuck in a loop that never waits cannot see
Ctrl-C; after ``interrupt_grace_s`` the board is hard-reset instead and that boot
skips ``main.py`` (as holding a board's safe-boot button would), so a stuck
``main.py`` cannot lock a tool out. Console output waiting for a reader is buffered
up to board_host.OUTPUT_BUFFER_MAX bytes per pty, then dropped, as a USB serial port with no
host drops it. ``sys.stdin`` is not connected to the serial line (the REPL is).

One file (about 600 lines): the pty, the REPL state machine and the
bridge to the engine are one protocol, read top to bottom against pyexec.c.
"""

from __future__ import annotations

import asyncio
import codeop
import contextlib
import json
import logging
import os
import signal
import struct
import warnings
from typing import Any

from simulator.board_host import (
    BLOCK_SIZE,
    DEFAULT_FS_SIZE,
    DEFAULT_HEAP,
    INTERRUPT_GRACE_S,
    MICROPYTHON_MJS,
    VBOARD_DIR,
    BoardError,
    BoardOptions,
    Engine,
    Pty,
    node_executable,
)

# the board's options and paths are board_host's; named here too for the board's users
__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_FS_SIZE",
    "DEFAULT_HEAP",
    "INTERRUPT_GRACE_S",
    "MICROPYTHON_MJS",
    "VBOARD_DIR",
    "BoardError",
    "BoardOptions",
    "VirtualBoard",
    "needs_more_input",
    "serve",
]

log = logging.getLogger("lumeau.board")

RAW_PASTE_WINDOW = 128  # MICROPY_REPL_STDIN_BUFFER_MAX (256) / 2, as most ports

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5

# Results of an execution, from simulator/vboard/_vbdrv.py.
OK, ERROR, EXIT, INTERRUPT, ABSENT = "ok", "error", "exit", "interrupt", "absent"


def needs_more_input(src: str) -> bool:
    """Whether the friendly REPL shows ``...`` for more (pyexec's mp_repl_continue_with_input).

    CPython's codeop decides; MicroPython's grammar is a subset, and anything codeop
    calls invalid is handed to MicroPython, which reports it as the board would.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return codeop.compile_command(src, "<stdin>", "single") is None
        except (SyntaxError, ValueError, OverflowError):
            return False


class _Reset(Exception):
    def __init__(self, cause: str):
        self.cause = cause


FORCED_EXIT = "forced_exit"


class VirtualBoard:
    """The board: ptys, one Engine per boot, and the REPL protocol (pyexec) on the console."""

    def __init__(self, opts: BoardOptions):
        self.opts = opts
        self.mode = "friendly"  # or "raw": survives soft resets, as pyexec_mode_kind does
        self.console: Pty | None = None
        self.uarts: dict[int, Pty] = {}
        self.banner = b""
        self.info: dict = {}
        self.boots = 0
        self.ready = asyncio.Event()  # the first boot's engine is up
        self._inq = bytearray()
        self._in_event = asyncio.Event()
        self._engine: Engine | None = None
        self._exec_future: asyncio.Future[str] | None = None
        self._print_eof = False
        self._error_marked = False
        self._escalation: asyncio.TimerHandle | None = None
        self._safe_boot = False
        self._wdt_ms: int | None = None
        self._wdt_timer: asyncio.TimerHandle | None = None
        self._session: asyncio.Task | None = None
        self._next_cause: str | None = None
        self.inputs: dict[tuple[str, int], int] = {}  # the world: survives resets
        self.outputs: dict[str, dict[int, int]] = {"out": {}, "pwm": {}}
        self._control_server: asyncio.AbstractServer | None = None
        self._interrupts_sent = 0  # Ctrl-C sent to the engine during the current execution
        self._booting = False  # from power-on/reset until main.py starts (or the REPL)
        self._boot_interrupt = False  # a Ctrl-C that arrived while booting: it is main.py's

    # -- lifecycle ------------------------------------------------------------------

    async def serve(self) -> None:
        """Power the board on and run it until cancelled."""
        node_executable()  # fail fast with a clear message
        self.opts.flash_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self.console = Pty(self.opts.link)
        loop.add_reader(self.console.master, self._on_console)
        for n, link in self.opts.uart_links.items():
            self.uarts[n] = Pty(link)
            loop.add_reader(self.uarts[n].master, self._on_uart, n)
        if self.opts.control is not None:
            self.opts.control.unlink(missing_ok=True)
            self._control_server = await asyncio.start_unix_server(self._control_client, path=str(self.opts.control))
            os.chmod(self.opts.control, 0o600)
        cause = "power_on"
        try:
            while True:
                self._next_cause = None
                self._session = asyncio.create_task(self._run_session(cause))
                try:
                    cause = await self._session
                except asyncio.CancelledError:
                    if self._next_cause is None:
                        raise
                    cause = self._next_cause
                if cause == "soft":
                    self.console.write(b"MPY: soft reboot\r\n")
                else:
                    self.mode = "friendly"  # RAM is cleared: pyexec starts in the friendly REPL
        finally:
            if self._session and not self._session.done():
                self._session.cancel()
                with contextlib.suppress(BaseException):
                    await self._session
            if self._engine:
                await self._engine.stop()
            self._cancel_timers()
            if self._control_server is not None:
                self._control_server.close()
                if self.opts.control is not None:
                    self.opts.control.unlink(missing_ok=True)
            for pty in [self.console, *self.uarts.values()]:
                if pty is not None:
                    with contextlib.suppress(Exception):
                        loop.remove_reader(pty.master)
                    pty.close()

    def _cancel_timers(self) -> None:
        for h in (self._escalation, self._wdt_timer):
            if h is not None:
                h.cancel()
        self._escalation = None

    def _reset(self, cause: str) -> None:
        """Hard reset from outside the session: watchdog, machine.reset(), stuck program, crash."""
        if self._next_cause is not None or self._session is None or self._session.done():
            return
        log.info("virtual board %s: hard reset (%s)", self.opts.name, cause)
        self._next_cause = cause
        if self._wdt_timer is not None:
            self._wdt_timer.cancel()
        self._wdt_ms = None  # a hard reset stops the watchdog (a soft reset does not)
        self._session.cancel()

    async def _run_session(self, cause: str) -> str:
        engine = Engine(self.opts, cause, self._engine_frame, self._engine_died)
        self._engine = engine
        self.boots += 1
        try:
            self._booting = True
            self._boot_interrupt = False
            self.info = await engine.start()
            for (kind, pin), value in self.inputs.items():  # the world did not reset
                engine.send("P", json.dumps({"kind": kind, "pin": pin, "value": value}))
            self.banner = self.info["banner"].encode()
            self.ready.set()
            if await self._exec_file("boot.py") == EXIT:
                return "soft"
            self._booting = False
            if self.mode == "friendly" and not self._safe_boot:
                # A Ctrl-C sent while the board was booting (a tool connecting right
                # after a reset) must stop main.py, or a main.py that runs forever
                # would lock the tool out: the board's own window here is microseconds.
                if await self._exec_file("main.py", interrupt=self._boot_interrupt) == EXIT:
                    return "soft"
            elif self._boot_interrupt:
                self._inq[0:0] = bytes([CTRL_C])
            self._boot_interrupt = False
            self._safe_boot = False
            while True:
                ret = await (self._raw_repl() if self.mode == "raw" else self._friendly_repl())
                if ret == FORCED_EXIT:
                    return "soft"
        finally:
            self._exec_future = None
            if self._escalation is not None:
                self._escalation.cancel()
                self._escalation = None
            await engine.stop(kill=self._next_cause is not None)
            self._engine = None

    # -- the serial line ------------------------------------------------------------

    def _on_console(self) -> None:
        assert self.console is not None
        try:
            data = os.read(self.console.master, 4096)
        except (BlockingIOError, OSError):
            return
        running = self._exec_future is not None and not self._exec_future.done()
        for b in data:
            if b == CTRL_C and running:
                # The interrupt character never reaches the input buffer while code runs.
                self._interrupt()
            elif b == CTRL_C and self._booting:
                self._boot_interrupt = True
            else:
                self._inq.append(b)
        self._in_event.set()

    def _interrupt(self) -> None:
        assert self._engine is not None
        self._engine.send("C")
        self._interrupts_sent += 1
        if self._escalation is None:
            self._escalation = asyncio.get_running_loop().call_later(self.opts.interrupt_grace_s, self._stuck)

    def _stuck(self) -> None:
        self._escalation = None
        if self._exec_future is not None and not self._exec_future.done():
            log.warning(
                "virtual board %s: program ignored Ctrl-C for %g s (a loop that never waits); "
                "hard reset, main.py skipped once",
                self.opts.name,
                self.opts.interrupt_grace_s,
            )
            self._safe_boot = True
            self._reset("hard")

    def _on_uart(self, n: int) -> None:
        try:
            data = os.read(self.uarts[n].master, 4096)
        except (BlockingIOError, OSError):
            return
        if self._engine is not None and data:
            self._engine.send("U", bytes([n]) + data)

    def _write(self, data: bytes) -> None:
        assert self.console is not None
        self.console.write(data)

    async def _getc(self) -> int:
        while not self._inq:
            self._in_event.clear()
            await self._in_event.wait()
        c = self._inq[0]
        del self._inq[0]
        return c

    # -- the engine -------------------------------------------------------------------

    def _engine_frame(self, engine: Engine, ftype: str, payload: bytes) -> None:
        if engine is not self._engine:
            return
        if ftype == "O":
            self._write(payload)
        elif ftype == "E":
            if self._print_eof:
                self._write(b"\x04")
            self._error_marked = True
        elif ftype == "D":
            if self._exec_future is not None and not self._exec_future.done():
                done = json.loads(payload)
                # Ctrl-C still in flight when the code ended: the board would find it
                # in its input buffer afterwards (while booting: main.py gets it).
                if self._interrupts_sent > done.get("interrupts", 0):
                    if self._booting:
                        self._boot_interrupt = True
                    else:
                        self._inq[0:0] = bytes([CTRL_C])
                        self._in_event.set()
                self._exec_future.set_result(done["status"])
        elif ftype == "U":
            pty = self.uarts.get(payload[0])
            if pty is not None:
                pty.write(payload[1:])
        elif ftype == "R":
            self._reset(json.loads(payload).get("kind", "hard"))
        elif ftype == "W":
            msg = json.loads(payload)
            if "timeout" in msg:
                self._wdt_ms = max(1, int(msg["timeout"]))
            self._arm_watchdog()
        elif ftype == "P":
            msg = json.loads(payload)
            self.outputs.setdefault(msg["kind"], {})[int(msg["pin"])] = int(msg["value"])
        elif ftype == "L":
            log.info("virtual board %s: %s", self.opts.name, payload.decode("utf-8", "replace"))

    # -- inputs and outputs (machine.Pin/ADC/PWM on the board) ----------------------

    INPUT_KINDS = ("pin", "adc", "pulses")

    def set_input(self, kind: str, pin: int, value: int) -> None:
        """A digital level, an ADC voltage (mV), or pulses to deliver to a Pin.irq."""
        if kind not in self.INPUT_KINDS:
            raise ValueError(f"input kind must be one of {', '.join(self.INPUT_KINDS)}")
        if kind != "pulses":
            self.inputs[(kind, pin)] = value
        if self._engine is not None:
            self._engine.send("P", json.dumps({"kind": kind, "pin": pin, "value": value}))

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """JSON lines: {"set": "pin"|"adc"|"pulses", "pin": N, "value": V} or {"get": "outputs"}."""
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if "set" in req:
                        self.set_input(str(req["set"]), int(req["pin"]), int(req["value"]))
                        answer: dict = {"ok": True}
                    elif req.get("get") == "outputs":
                        answer = {k: {str(p): v for p, v in d.items()} for k, d in self.outputs.items()}
                    elif req.get("get") == "state":
                        answer = {
                            "boots": self.boots,
                            "mode": self.mode,
                            "running": self._exec_future is not None and not self._exec_future.done(),
                        }
                    else:
                        answer = {"error": 'expected {"set": ...} or {"get": "outputs"|"state"}'}
                except (ValueError, KeyError, TypeError) as e:
                    answer = {"error": str(e)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _arm_watchdog(self) -> None:
        if self._wdt_timer is not None:
            self._wdt_timer.cancel()
        if self._wdt_ms is not None:
            self._wdt_timer = asyncio.get_running_loop().call_later(self._wdt_ms / 1000, self._reset, "watchdog")

    def _engine_died(self, engine: Engine, rc: int | None) -> None:
        if engine is self._engine:
            log.warning(
                "virtual board %s: MicroPython engine exited (code %s): %s",
                self.opts.name,
                rc,
                " | ".join(engine.stderr_tail[-3:]),
            )
            self._reset("hard")

    async def _exec(self, ftype: str, job: dict, print_eof: bool, interrupt: bool = False) -> str:
        assert self._engine is not None
        self._print_eof = print_eof
        self._error_marked = False
        self._interrupts_sent = 0
        self._exec_future = asyncio.get_running_loop().create_future()
        self._engine.send(ftype, json.dumps(job))
        if interrupt:
            self._interrupt()
        try:
            status = await self._exec_future
        finally:
            self._exec_future = None
            if self._escalation is not None:
                self._escalation.cancel()
                self._escalation = None
        if print_eof:
            self._write(b"\x04" if self._error_marked else b"\x04\x04")
        return status

    async def _exec_file(self, path: str, interrupt: bool = False) -> str:
        return await self._exec("F", {"path": path}, print_eof=False, interrupt=interrupt)

    async def _exec_source(self, src: bytes, mode: str, print_eof: bool) -> str:
        text = src.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        return await self._exec("X", {"src": text, "name": "<stdin>", "mode": mode}, print_eof)

    # -- REPLs (shared/runtime/pyexec.c) ------------------------------------------------

    async def _raw_repl(self) -> str | None:
        self._write(b"raw REPL; CTRL-B to exit\r\n")
        line = bytearray()
        self._write(b">")
        while True:
            c = await self._getc()
            if c == CTRL_A:
                if len(line) == 2 and line[0] == CTRL_E:
                    if await self._raw_paste(line[1]) == FORCED_EXIT:
                        return FORCED_EXIT
                else:
                    self._write(b"raw REPL; CTRL-B to exit\r\n")
                line.clear()
                self._write(b">")
            elif c == CTRL_B:
                self._write(b"\r\n")
                self.mode = "friendly"
                return None
            elif c == CTRL_C:
                line.clear()
            elif c == CTRL_D:
                self._write(b"OK")
                if not line:
                    self._write(b"\r\n")
                    return FORCED_EXIT
                if await self._exec_source(bytes(line), "exec", print_eof=True) == EXIT:
                    return FORCED_EXIT
                line.clear()
                self._write(b">")
            else:
                line.append(c)

    async def _raw_paste(self, command: int) -> str | None:
        if command != ord("A"):
            self._write(b"R\x00")
            return None
        self._write(b"R\x01" + struct.pack("<H", RAW_PASTE_WINDOW) + b"\x01")
        data = bytearray()
        remain = RAW_PASTE_WINDOW
        while True:
            c = await self._getc()
            if c == CTRL_C:
                # The reader raises KeyboardInterrupt: end mark, then an exec that failed.
                self._write(b"\x04\x04KeyboardInterrupt: \r\n\x04")
                return None
            if c == CTRL_D:
                break
            data.append(c)
            remain -= 1
            if remain == 0:
                self._write(b"\x01")
                remain = RAW_PASTE_WINDOW
        self._write(b"\x04")
        return FORCED_EXIT if await self._exec_source(bytes(data), "exec", print_eof=True) == EXIT else None

    async def _friendly_repl(self) -> str | None:
        while True:  # friendly_repl_reset
            self._write(self.banner + b'\r\nType "help()" for more information.\r\n')
            while True:  # input_restart
                line, ret = await self._readline(b">>> ")
                mode = "single"
                if ret == CTRL_A:
                    self._write(b"\r\n")
                    self.mode = "raw"
                    return None
                if ret == CTRL_B:
                    self._write(b"\r\n")
                    break
                if ret in (CTRL_C,):
                    self._write(b"\r\n")
                    continue
                if ret == CTRL_D:
                    self._write(b"\r\n")
                    return FORCED_EXIT
                if ret == CTRL_E:
                    pasted = await self._paste_mode()
                    if pasted is None:
                        continue
                    line, mode = pasted, "exec"
                elif not line:
                    continue
                else:
                    cancelled = False
                    while needs_more_input(line.decode("utf-8", "replace")):
                        more, ret = await self._readline(b"... ")
                        if ret == CTRL_C:
                            self._write(b"\r\n")
                            cancelled = True
                            break
                        if ret == CTRL_D:
                            break
                        line += b"\n" + more
                    if cancelled:
                        continue
                if await self._exec_source(line, mode, print_eof=False) == EXIT:
                    return FORCED_EXIT

    async def _paste_mode(self) -> bytes | None:
        self._write(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
        buf = bytearray()
        while True:
            c = await self._getc()
            if c == CTRL_C:
                self._write(b"\r\n")
                return None
            if c == CTRL_D:
                self._write(b"\r\n")
                return bytes(buf)
            buf.append(c)
            self._write(b"\r\n=== " if c == 13 else bytes([c]))

    async def _readline(self, prompt: bytes) -> tuple[bytes, int | None]:
        """A line with echo and backspace (shared/readline, without history or completion)."""
        self._write(prompt)
        buf = bytearray()
        last = 0
        while True:
            c = await self._getc()
            if c == CTRL_C:
                return b"", CTRL_C
            if c in (CTRL_A, CTRL_B, CTRL_D, CTRL_E):
                if not buf:
                    return b"", c
            elif c == 13 or (c == 10 and last != 13):
                self._write(b"\r\n")
                return bytes(buf), None
            elif c in (8, 127):
                if buf:
                    del buf[-1]
                    self._write(b"\x08 \x08")
            elif c == 27:  # an escape sequence (arrow keys): read and ignore it
                c2 = await self._getc()
                if c2 in (ord("["), ord("O")):
                    while not (0x40 <= (await self._getc()) <= 0x7E):
                        pass
            elif c >= 32 or c == 9:
                buf.append(c)
                self._write(bytes([c]))
            last = c


# -- `lumeau sim board` (lumeau/commands/sim.py parses its options) -------------------------


def serve(opts: BoardOptions, as_json: bool = False) -> int:
    """Run the board until SIGINT or SIGTERM; print its ready line (JSON with as_json). Raises BoardError."""
    return asyncio.run(_main(opts, as_json))


async def _main(opts: BoardOptions, as_json: bool) -> int:
    board = VirtualBoard(opts)
    task = asyncio.create_task(board.serve())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    ready = asyncio.create_task(board.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises BoardError
        return 1
    assert board.console is not None
    info: dict[str, Any] = {
        "event": "ready",
        "port": board.console.path,
        "link": str(opts.link) if opts.link else None,
        "control": str(opts.control) if opts.control else None,
        "uarts": {str(n): p.path for n, p in board.uarts.items()},
        "flash": str(opts.flash_dir),
        "fs_size": opts.fs_size,
        "banner": board.banner.decode(),
    }
    if as_json:
        print(json.dumps(info), flush=True)
    else:
        uarts = "".join(f", UART{n} on {p}" for n, p in info["uarts"].items())
        print(
            f"virtual board {opts.name} on {info['port']}{' (' + info['link'] + ')' if opts.link else ''}"
            f"{uarts}; flash {opts.flash_dir} ({opts.fs_size // 1024} KiB); Ctrl-C here to power off",
            flush=True,
        )
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
