"""Shared by the Open311 tests: a small city (nodes with positions) and the records that raise and clear alarms."""

from __future__ import annotations

from gateway.model import Record
from protocol import expand
from protocol import messages as m

T0 = 1_795_000_000.0
API_KEY = "open311-test-key-7d1c"

# Rue de Rivoli: three lamps about 40 m apart; Parc Monceau: one irrigation controller
LAMP_A = {
    "id": "00a1b2c3",
    "kind": "lighting",
    "name": "Rue de Rivoli 12",
    "site": "Rue de Rivoli",
    "lat": 48.86060,
    "lon": 2.33760,
}
LAMP_B = {
    "id": "00a1b2c4",
    "kind": "lighting",
    "name": "Rue de Rivoli 14",
    "site": "Rue de Rivoli",
    "lat": 48.86085,
    "lon": 2.33805,
}
LAMP_C = {
    "id": "00a1b2c5",
    "kind": "lighting",
    "name": "Rue de Rivoli 16",
    "site": "Rue de Rivoli",
    "lat": 48.86110,
    "lon": 2.33850,
}
PARK = {
    "id": "00b2c3d4",
    "kind": "irrigation",
    "name": "Parc Monceau north",
    "site": "Parc Monceau",
    "lat": 48.87960,
    "lon": 2.30880,
}
NODES = [LAMP_A, LAMP_B, LAMP_C, PARK]


def event(node: str, counter: int, code: int, *, active: int = 1, zone: int = 0, severity: int = m.SEV_ALARM) -> Record:
    body = {0: code, 1: severity, 2: 12, 3: int(T0) + counter, 4: active, 5: zone}
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=m.EVENT,
        kind="event",
        rx_time=T0 + counter,
        body=body,
        fields=expand.expand(m.EVENT, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def status(node: str, counter: int, open_alarms: int) -> Record:
    body = {0: 100, 1: int(T0) + counter, 7: 0, 8: open_alarms}
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=m.STATUS,
        kind="status",
        rx_time=T0 + counter,
        body=body,
        fields=expand.expand(m.STATUS, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def hello(node: str, counter: int) -> Record:
    body = {0: "0.2.0", 1: m.KIND_LIGHTING, 4: m.RST_WATCHDOG}
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=m.HELLO,
        kind="hello",
        rx_time=T0 + counter,
        body=body,
        fields=expand.expand(m.HELLO, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def light(node: str, counter: int, t: float, *, on: bool = True, level: int = 100) -> Record:
    """A LIGHT report taken at Unix time `t`."""
    body = {0: level, 1: 452, 2: 123456, 3: m.LS_ON if on else 0}
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=m.LIGHT,
        kind="light",
        rx_time=t,
        body=body,
        fields=expand.expand(m.LIGHT, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )
