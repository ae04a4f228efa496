"""Debian's real mosquitto, started by the tests on a free 127.0.0.1 port; and a recording subscriber.

`Broker(tmp_path)` writes a mosquitto.conf (anonymous, or a password file made
with mosquitto_passwd, optionally TLS with a client certificate), starts
`mosquitto -c conf` and waits until the port accepts. `kill()` is SIGKILL (the
broker dies mid-whatever); `start()` again brings it back on the same port.
Installed by `make mosquitto` (the Makefile); without it these tests fail
saying so, never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiomqtt

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    # mosquitto cannot listen on port 0 and tell us: take one the kernel hands out, then give it back
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path: Path, *, users: dict[str, str] | None = None, tls: dict[str, Path] | None = None):
        if not os.access(MOSQUITTO, os.X_OK):
            raise AssertionError(f"{MOSQUITTO} is missing: run `make mosquitto` (apt-get install mosquitto)")
        self.dir = tmp_path / f"broker-{id(self):x}"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root", "log_dest stderr"]
        lines.append("log_type error")
        lines.append("log_type warning")
        if users:
            pw = self.dir / "passwd"
            for i, (u, p) in enumerate(users.items()):
                subprocess.run(
                    [MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(pw), u, p],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
            lines += ["require_certificate true", "use_identity_as_username true"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited ({self.proc.returncode}): {self.log.read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not accept on port {self.port} within {timeout:g} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Subscriber:
    """An aiomqtt client that records every message on `topics` (reconnecting after a broker restart)."""

    def __init__(self, port: int, *topics: str, **client: Any) -> None:
        self.port = port
        self.topics = topics
        self.client_kw = client
        self.messages: list[aiomqtt.Message] = []
        self.ready = asyncio.Event()
        self.subscribed = 0  # connections on which the subscriptions were made
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, **self.client_kw) as c:
                    for t in self.topics:
                        await c.subscribe(t, qos=1)
                    self.subscribed += 1
                    self.ready.set()
                    async for msg in c.messages:
                        self.messages.append(msg)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    def on(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if m.topic.value == topic]  # type: ignore[arg-type]

    def matching(self, prefix: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.value.startswith(prefix)]
