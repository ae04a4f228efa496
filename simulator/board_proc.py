"""A virtual board (`lumeau sim board`) in a child process, for tests and scripts.

    with BoardProcess(tmp_path / "flash", uarts=[1]) as board:
        subprocess.run(["mpremote", "connect", board.port, "exec", "print(1)"])
        board.uart_port(1)      # the pty of vboard.UART(1)
        board.restart()         # power-cycle: same flash directory, new process

The child is the real command line, so what is tested is what a technician runs.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 30.0


class BoardProcess:
    def __init__(
        self,
        flash_dir: Path,
        *,
        fs_size: int | None = None,
        corrupt: list[str] = (),
        uarts: list[int] = (),
        name: str = "vboard",
        interrupt_grace_s: float | None = None,
        link: Path | None = None,
        control: Path | None = None,
        verbose: bool = False,
    ):
        self.flash_dir = Path(flash_dir)
        self.args = ["--dir", str(self.flash_dir), "--json", "--name", name]
        if fs_size is not None:
            self.args += ["--fs-size", str(fs_size)]
        for glob in corrupt:
            self.args += ["--corrupt", glob]
        for n in uarts:
            self.args += ["--uart", str(n)]
        if interrupt_grace_s is not None:
            self.args += ["--interrupt-grace", str(interrupt_grace_s)]
        if link is not None:
            self.args += ["--link", str(link)]
        if control is not None:
            self.args += ["--control", str(control)]
        if verbose:
            self.args.append("-v")
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    @property
    def port(self) -> str:
        return self.info["link"] or self.info["port"]

    def uart_port(self, n: int) -> str:
        return self.info["uarts"][str(n)]

    def start(self) -> BoardProcess:
        # stderr to a file: a pipe nobody reads would block a chatty board.
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lumeau", "sim", "board", *self.args],
            bufsize=0,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                err = self.stop()
                raise RuntimeError(f"virtual board did not start: {err[-2000:]}")
            if select.select([self.proc.stdout], [], [], left)[0]:
                byte = self.proc.stdout.read(1)
                if not byte:
                    continue
                line += byte
        self.info = json.loads(line)
        return self

    def control(self, request: dict) -> dict:
        """One request on the board's control socket (needs control=PATH)."""
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.info["control"])
            s.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def stop(self) -> str:
        """Power off; returns what the board logged on stderr."""
        err = ""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc.stdout.close()
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
            self.proc = None
        return err

    def restart(self) -> BoardProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> BoardProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
