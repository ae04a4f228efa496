"""Values that cross module boundaries in the gateway.

Data flows one way: a transport builds a `Reception`; the pipeline turns it
into a `Record` (or a rejection reason); the store keeps records until the
upstream answered 2xx. Downlinks travel back as `Downlink` through the
`DownlinkPath` the reception came with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class DownlinkPath(Protocol):
    """How to answer a node on the path its uplink came in on.

    Serial and BLE send at once; the Semtech packet forwarder schedules a
    `txpk` at the uplink's concentrator timestamp plus the receive delay.
    """

    async def send_downlink(self, frame: bytes, reception: Reception) -> None: ...


@dataclass(slots=True)
class Reception:
    """One frame as heard by one radio (or read from one wire)."""

    raw: bytes
    transport: str  # "serial", "udp", "ble", "inproc"
    gateway_id: str  # which radio/port/forwarder heard it, e.g. "udp:0102030405060708"
    rx_time: float  # Unix seconds; the radio's own time when it sends one (the simulator's virtual time)
    rssi: float | None = None  # dBm
    snr: float | None = None  # dB
    freq_hz: int | None = None
    sf: int | None = None
    tmst: int | None = None  # concentrator counter, microseconds (Semtech); for downlink timing
    path: DownlinkPath | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class Record:
    """A verified, decoded uplink, as stored durably and sent upstream."""

    node_id: int
    counter: int
    mtype: int
    kind: str  # "light", "irrigation", "event", "hello", "status", "cmd_ack"
    rx_time: float
    body: dict[int, Any]  # the checked body, int keys, air units (lossless)
    # protocol.expand.expand(): named values with units. Filled by the store when it hands
    # records out (next_batch unless named=False, quarantined); the pipeline leaves it empty
    # so the ingest path only does what durability needs, and each record is expanded once.
    fields: dict[str, dict[str, Any]]
    receptions: int = 1
    best_rssi: float | None = None
    best_snr: float | None = None
    gateway_id: str = ""
    alarm: bool = False  # an EVENT with severity >= alarm: never evicted when the queue is full
    # The body's deterministic CBOR when the pipeline has it at hand (the frame carried exactly
    # that encoding, as nodes send it): the store keeps these bytes instead of encoding the body
    # again. None: the store encodes `body`.
    cbor: bytes | None = field(default=None, repr=False, compare=False)
    # The key generation of the root key that verified the frame (gateway/registry.py, SPEC §4
    # "Re-keying"): a re-keyed node starts its counters again, so the counter alone is not unique.
    key_gen: int = 0

    @property
    def idempotency_key(self) -> str:
        """Unique per uplink of a node: `<node>-<counter>` under the node's first key (the ids
        platforms knew before generations), `<node>-g<gen>-<counter>` after a re-key (SPEC §4)."""
        if self.key_gen:
            return f"{self.node_id:08x}-g{self.key_gen}-{self.counter}"
        return f"{self.node_id:08x}-{self.counter}"


@dataclass(slots=True)
class Downlink:
    """A queued downlink for one node."""

    id: int  # store row id
    node_id: int
    mtype: int  # COMMAND, CONFIG, TIME (ACKs are made on the fly)
    body: dict[int, Any]
    created: float
    expires: float
    command_id: int | None = None  # COMMAND only: matched with CMD_ACK
    attempts: int = 0
    state: str = "queued"  # queued | sent | acked | expired | failed
    result: int | None = None
