"""Helpers for the gateway core tests (config, registry, store, pipeline, downlinks, API).

Real parts only: frames sealed by protocol/, a real Registry file, a real
SQLite store in a temporary directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.model import Reception, Record
from gateway.registry import NodeEntry, Registry
from gateway.store import is_alarm
from protocol import expand, frame, keys
from protocol import messages as m


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


def reception(raw: bytes, gateway_id: str = "test:1", rssi: float | None = -90.0, snr: float | None = 7.5,
              transport: str = "inproc", path: Any = None, rx_time: float | None = None) -> Reception:
    return Reception(raw=raw, transport=transport, gateway_id=gateway_id,
                     rx_time=time.time() if rx_time is None else rx_time, rssi=rssi, snr=snr, path=path)


def record(node_id: int, counter: int, mtype: int = m.LIGHT, body: dict | None = None) -> Record:
    if body is None:
        body = dict(LIGHT_BODY) if mtype == m.LIGHT else (
            IRRIGATION_BODY if mtype == m.IRRIGATION else {0: m.EV_LEAK, 1: m.SEV_ALARM, 4: 1})
    body = m.validate(mtype, body)
    return Record(node_id=node_id, counter=counter, mtype=mtype, kind=expand.TYPE_NAMES[mtype], rx_time=time.time(),
                  body=body, fields=expand.expand(mtype, body), best_rssi=-90.0, gateway_id="test:1",
                  alarm=is_alarm(mtype, body))


def alarm_record(node_id: int, counter: int) -> Record:
    return record(node_id, counter, m.EVENT, {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: 950, 4: 1, 5: 2})


def event_record(node_id: int, counter: int) -> Record:
    return record(node_id, counter, m.EVENT, {0: m.EV_WATCHDOG_RESET, 1: m.SEV_WARNING})
