"""Recent uplinks per node, kept for people: the technician page's charts and event lists.

The durable queue (gateway/store/) deletes a record once the upstream has
it, and node state keeps only the last reading of each kind; a technician
on site wants the last day of a node ("did the lamp dim at midnight?", "when
did the soil dry out?") without asking the city's platform. So the gateway
keeps, per node and message type, the last PER_TYPE uplinks it stored.

It plugs into the pipeline where the downlink queue does (the
`UplinkObserver` seam: `on_uplink(record, reception)`, called after the
commit), so it shows exactly what was stored, nothing that was rejected.

Memory: each entry is the record's receive time and its checked body in
CBOR (bodies are at most ~40 bytes on the air): about 85 bytes with Python's
object overhead (a full LIGHT report, measured by tests/test_gateway_history.py),
instead of ~400 for the decoded dict; fields are named (protocol.expand) only
when someone asks. The cost on the ingest path is one bytes concatenation
per record (the pipeline hands over the body's CBOR) or one small encoding.

Limits (named; overridable through the constructor):
- PER_TYPE = 96 uplinks per node and type: a day of 15-minute reports;
- MAX_ENTRIES = 500,000 entries in all (~42 MB; a day of reports and
  statuses for about 5,000 nodes): past it, the entries of the node heard
  least recently go first, oldest first;
- the history is memory only: it starts empty after a restart (the upstream
  holds the full series; this is a view for people, not a record).
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from typing import Any

import cbor2

from gateway.model import Reception, Record
from protocol import expand
from protocol import messages as m

PER_TYPE = 96
MAX_ENTRIES = 500_000

_TIME = struct.Struct(">d")
_TYPE_BY_NAME = {name: mtype for mtype, name in expand.TYPE_NAMES.items()}


class History:
    """`on_uplink` feeds it; `recent(node_id, types, limit)` reads it (oldest first)."""

    def __init__(self, per_type: int = PER_TYPE, max_entries: int = MAX_ENTRIES) -> None:
        if per_type < 1 or max_entries < 1:
            raise ValueError("history bounds must be positive")
        self.per_type = per_type
        self.max_entries = max_entries
        # node id -> {mtype: deque of packed (rx_time, CBOR body)}; least recently heard node first
        self._nodes: OrderedDict[int, dict[int, deque[bytes]]] = OrderedDict()
        self._count = 0
        self.evicted = 0  # entries dropped by the global bound (not by PER_TYPE rotation)

    def __len__(self) -> int:
        return self._count

    # ------------------------------------------------------------ the pipeline calls these

    def on_uplink(self, record: Record, reception: Reception) -> None:
        # The pipeline's copy of the body's encoding, when it has one (gateway/model.py): no second encoding.
        self.add(record.node_id, record.mtype, record.body, record.rx_time, getattr(record, "cbor", None))

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        pass  # the same frame again: already kept once

    # ------------------------------------------------------------

    def add(self, node_id: int, mtype: int, body: dict[int, Any], rx_time: float, encoded: bytes | None = None) -> None:
        """Keep one uplink; `encoded` is `body` in CBOR when the caller has it already."""
        nodes = self._nodes
        types = nodes.get(node_id)
        if types is None:
            types = nodes[node_id] = {}
        else:
            nodes.move_to_end(node_id)
        q = types.get(mtype)
        if q is None:
            q = types[mtype] = deque(maxlen=self.per_type)
        if len(q) < self.per_type:
            self._count += 1  # else the deque drops its oldest: the count stays
        q.append(_TIME.pack(rx_time) + (encoded if encoded is not None else cbor2.dumps(body)))
        if self._count > self.max_entries:
            self._evict()

    def _evict(self) -> None:
        """Drop entries of the least recently heard nodes, oldest first, until within the bound."""
        nodes = self._nodes
        while self._count > self.max_entries and nodes:
            node_id, types = next(iter(nodes.items()))
            oldest = min((q for q in types.values() if q), key=lambda q: _TIME.unpack_from(q[0])[0], default=None)
            if oldest is None:
                del nodes[node_id]
                continue
            oldest.popleft()
            self._count -= 1
            self.evicted += 1
            if not any(types.values()):
                del nodes[node_id]

    def forget(self, node_id: int) -> None:
        """A node removed from the registry: its history goes with it."""
        types = self._nodes.pop(node_id, None)
        if types:
            self._count -= sum(len(q) for q in types.values())

    def recent(self, node_id: int, types: list[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The node's kept uplinks of these types (names, e.g. "light"; None: all), oldest first.

        Each is {"type", "rx_time", "fields"} with fields named as the API shows
        them (protocol.expand); `limit` keeps the most recent ones. Raises
        ValueError for a type name that is not an uplink type.
        """
        wanted = None
        if types is not None:
            wanted = set()
            for name in types:
                mtype = _TYPE_BY_NAME.get(name)
                if mtype is None or not is_uplink(mtype):
                    raise ValueError(f"unknown uplink type {name!r} (known: {', '.join(uplink_type_names())})")
                wanted.add(mtype)
        out: list[tuple[float, int, bytes]] = []
        for mtype, q in self._nodes.get(node_id, {}).items():
            if wanted is None or mtype in wanted:
                out.extend((_TIME.unpack_from(e)[0], mtype, e) for e in q)
        out.sort(key=lambda t: t[0])
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return [
            {"type": expand.TYPE_NAMES[mtype], "rx_time": t, "fields": expand.expand(mtype, cbor2.loads(e[8:]))}
            for t, mtype, e in out
        ]

    def command_ack(self, node_id: int, command_id: int) -> dict[str, Any] | None:
        """The most recent CMD_ACK kept for that command (its result and value), or None."""
        for e in reversed(self._nodes.get(node_id, {}).get(m.CMD_ACK, ())):
            body = cbor2.loads(e[8:])
            if body.get(0) == command_id:
                return expand.expand(m.CMD_ACK, body)
        return None


def is_uplink(mtype: int) -> bool:
    return mtype < 8  # SPEC 1: bit 3 of the type is the direction


def uplink_type_names() -> list[str]:
    return [name for mtype, name in sorted(expand.TYPE_NAMES.items()) if is_uplink(mtype)]
