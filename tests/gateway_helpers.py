"""Helpers for the gateway core tests (config, registry, store, pipeline, downlinks, API).

Real parts only: frames sealed by protocol/, a real Registry file, a real
SQLite store in a temporary directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from waiting import wait_for_sync

from gateway.model import Reception, Record
from gateway.registry import NodeEntry, Registry
from protocol import expand, frame, keys
from protocol import messages as m
from protocol.messages import is_alarm


def root_key(node_id: int) -> bytes:
    """A distinct root key per node (per-node keys are the point)."""
    return bytes((node_id + i * 37) & 0xFF for i in range(16))


def node_keys(node_id: int) -> keys.NodeKeys:
    return keys.NodeKeys(node_id, root_key(node_id))


def registry(path: Path, node_ids: range | list[int], kind: str = "lighting") -> Registry:
    reg = Registry(path)
    for n in node_ids:
        reg.upsert(NodeEntry(node_id=n, kind=kind, root_key=root_key(n)))
    return reg


LIGHT_BODY = {0: 40, 1: 452, 2: 123456, 3: m.LS_ON | m.LS_BOOST, 4: 8760, 5: 3, 6: 205}
IRRIGATION_BODY = {0: b"\x3e\x47\xff\xff", 1: 0x81, 2: 145, 3: 982311, 4: 0, 5: 24050, 6: 0}


def seal(node_id: int, counter: int, mtype: int = m.LIGHT, body: dict | None = None, encrypt: bool = False) -> bytes:
    if body is None:
        body = {**LIGHT_BODY, 2: 123456 + counter} if mtype == m.LIGHT else IRRIGATION_BODY
    return frame.seal(node_keys(node_id), mtype, counter, m.encode(mtype, body), encrypt=encrypt)


def reception(
    raw: bytes,
    gateway_id: str = "test:1",
    rssi: float | None = -90.0,
    snr: float | None = 7.5,
    transport: str = "inproc",
    path: Any = None,
    rx_time: float | None = None,
) -> Reception:
    return Reception(
        raw=raw,
        transport=transport,
        gateway_id=gateway_id,
        rx_time=time.time() if rx_time is None else rx_time,
        rssi=rssi,
        snr=snr,
        path=path,
    )


def record(node_id: int, counter: int, mtype: int = m.LIGHT, body: dict | None = None) -> Record:
    if body is None:
        body = (
            dict(LIGHT_BODY)
            if mtype == m.LIGHT
            else (IRRIGATION_BODY if mtype == m.IRRIGATION else {0: m.EV_LEAK, 1: m.SEV_ALARM, 4: 1})
        )
    body = m.validate(mtype, body)
    return Record(
        node_id=node_id,
        counter=counter,
        mtype=mtype,
        kind=expand.TYPE_NAMES[mtype],
        rx_time=time.time(),
        body=body,
        fields=expand.expand(mtype, body),
        best_rssi=-90.0,
        gateway_id="test:1",
        alarm=is_alarm(mtype, body),
    )


def alarm_record(node_id: int, counter: int) -> Record:
    return record(node_id, counter, m.EVENT, {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: 950, 4: 1, 5: 2})


def event_record(node_id: int, counter: int) -> Record:
    return record(node_id, counter, m.EVENT, {0: m.EV_WATCHDOG_RESET, 1: m.SEV_WARNING})


# ---------------------------------------------------------------- a real `lumeau gateway` process


def push_data(
    raw_frames: list[bytes],
    eui: bytes = bytes.fromhex("0102030405060708"),
    token: int = 1,
    rssi: float = -80.0,
    tmst: int = 1_000_000,
) -> bytes:
    """A Semtech PUSH_DATA datagram (protocol v2) carrying `raw_frames` as rxpk."""
    import base64
    import json

    rxpk = [
        {
            "tmst": tmst + i,
            "chan": 0,
            "rfch": 0,
            "freq": 868.1,
            "stat": 1,
            "modu": "LORA",
            "datr": "SF7BW125",
            "codr": "4/5",
            "rssi": rssi,
            "lsnr": 7.5,
            "size": len(r),
            "data": base64.b64encode(r).decode(),
        }
        for i, r in enumerate(raw_frames)
    ]
    return bytes((2, token >> 8, token & 0xFF, 0)) + eui + json.dumps({"rxpk": rxpk}).encode()


class GatewayProcess:
    """`lumeau gateway --config FILE` as a child process; its JSON log lines read from stderr.

    A thread keeps reading stderr (a full pipe would stall the gateway).
    `start()` returns the "gateway started" line (bound ports in it).
    """

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = None
        self.lines: list[dict] = []
        self._reader = None

    def start(self, timeout: float = 20.0) -> dict:
        import subprocess
        import sys
        import threading

        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lumeau", "gateway", "--config", str(self.config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

        def started() -> dict | None:
            for doc in list(self.lines):
                if doc.get("msg") == "gateway started":
                    return doc
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"gateway exited ({self.proc.returncode}): {self.lines[-3:]}")
            return None

        return wait_for_sync(started, timeout, what="the gateway's start", interval=0.02)

    def _read(self) -> None:
        import json

        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"raw": line.rstrip("\n")})

    def logged(self, msg: str) -> list[dict]:
        return [d for d in self.lines if d.get("msg") == msg]

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int:
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM if sig is None else sig)
        self.proc.wait(timeout)
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
