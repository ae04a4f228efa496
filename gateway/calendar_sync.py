"""Keeps each node's calendar the one assigned to it, sending only what changed (issue 11).

The pipeline's uplink observer when calendars are configured ([calendars] in the gateway
config; the files are gateway/calendars.py's). Per node:

- the calendar assigned: the first file (in the order configured) that names the node in
  `nodes` or one of its groups in `groups` (the registry's groups, read at each decision),
  else the first file with `default = true` for the node's kind, else none;
- the calendar the node holds: the hash its HELLO reports (key H_CALENDAR; a node sends a
  HELLO at boot and each time it stores a calendar), unknown until one is heard;
- when they differ (or the node's is unknown), the fragments go one per uplink, in order, each
  a CONFIG {CF_SETTINGS: {}, CF_CALENDAR: fragment} queued before the downlink queue hears of
  the uplink, so it leaves in that uplink's receive window (like gateway/adr.py), from the
  BOOT_HOLD-th uplink after a boot's HELLO on (the node's first hour is its heap's peak). A node that
  already holds the calendar answers the first fragment with a HELLO: nothing more is sent.
  After the last fragment, RESEND_AFTER uplinks without a HELLO with the new hash start the
  round again (a fragment lost on the air), at most ROUNDS_MAX rounds per calendar version.

Nothing here persists: after a restart a node's calendar is unknown again, and the first
fragment (one frame) is the question the node answers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.calendars import Compiled
from gateway.model import Reception, Record
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.calendars")

RESEND_AFTER = 3  # uplinks after the last fragment without the node's HELLO confirming
# Uplinks after a node's HELLO (its boot) before a first fragment goes: a node's first hour
# has its heap's peak of the day (bench/README.md, "Calendars"), and a calendar is no hurry.
BOOT_HOLD = 8
ROUNDS_MAX = 3  # rounds per calendar version, then the node is left alone until its next HELLO
CONFIG_TTL_S = 86400.0
KIND_NAMES = {m.KIND_LIGHTING: "lighting", m.KIND_IRRIGATION: "irrigation"}


@dataclass
class NodeSync:
    target: bytes = b""  # the hash being sent
    next: int = 0  # the next fragment's index
    waited: int = 0  # uplinks since the last fragment went
    rounds: int = 0
    pending: Any = None  # the Downlink of the last fragment queued
    held: bytes | None = None  # the hash the node reported, None: not heard yet
    applied_at: float | None = None
    fragments: int = 0
    since_hello: int = BOOT_HOLD  # uplinks since its last HELLO (a node not seen booting: no hold)


@dataclass
class CalendarSync:
    calendars: list[Compiled]
    registry: Any
    downlinks: Any  # the next observer: the downlink queue (or ADR in front of it)
    queue: Any = None  # what `enqueue`s: the gateway's Downlinks
    clock: Any = None
    boot_hold: int = BOOT_HOLD
    nodes: dict[int, NodeSync] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"fragments": 0, "applied": 0, "already_held": 0, "rounds": 0, "refused": 0}
    )
    _queuing: dict[int, asyncio.Task] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.queue is None:
            self.queue = self.downlinks

    # ------------------------------------------------------------ assignment

    def assigned(self, node_id: int) -> Compiled | None:
        entry = self.registry.get(node_id)
        if entry is None:
            return None
        kind = m.KIND_LIGHTING if entry.kind == "lighting" else m.KIND_IRRIGATION if entry.kind == "irrigation" else 0
        groups = {g.name for g in self.registry.groups() if node_id in g.members}
        for c in self.calendars:
            if c.kind == kind and (node_id in c.nodes or groups.intersection(c.groups)):
                return c
        for c in self.calendars:
            if c.kind == kind and c.default:
                return c
        return None

    # ------------------------------------------------------------ the pipeline calls these

    def on_uplink(self, record: Record, reception: Reception) -> None:
        nid = record.node_id
        try:
            coro = self._decide(nid, record)
        except Exception:  # never in the way of the downlinks
            log.exception("calendar decision failed", extra={"node": f"{nid:08x}"})
            coro = None
        if coro is None:
            self.downlinks.on_uplink(record, reception)
            return
        t = asyncio.get_running_loop().create_task(coro)
        self._queuing[nid] = t
        t.add_done_callback(lambda _t: self.downlinks.on_uplink(record, reception))

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        self.downlinks.on_duplicate(node_id, counter, reception)

    def _decide(self, nid: int, record: Record) -> Any:
        st = self.nodes.setdefault(nid, NodeSync())
        cal = self.assigned(nid)
        st.since_hello += 1
        if record.mtype == m.HELLO:
            st.since_hello = 0  # a boot (or a calendar stored: then nothing is to be sent anyway)
            held = record.body.get(m.H_CALENDAR)
            st.held = held if isinstance(held, bytes) else b""
            if st.target and st.held != st.target and st.next:
                st.next = st.waited = 0  # the node restarted mid-way: its reassembly is gone
            if st.target and st.held == st.target:
                if st.fragments == 1 and cal is not None and len(cal.fragments()) > 1:
                    self.counts["already_held"] += 1
                else:
                    self.counts["applied"] += 1
                    st.applied_at = self.clock() if self.clock is not None else None
                    log.info("calendar applied", extra={"node": f"{nid:08x}", "hash": st.target.hex()})
                st.target, st.next, st.rounds, st.fragments = b"", 0, 0, 0
        if cal is None or st.held == cal.hash or nid in self._queuing:
            return None
        if st.target != cal.hash:  # a new version (or the first): start over
            st.target, st.next, st.waited, st.rounds, st.fragments = cal.hash, 0, 0, 0, 0
        if st.pending is not None and getattr(st.pending, "state", None) == "queued":
            return None  # the last fragment has not left yet
        if st.since_hello < self.boot_hold:
            return None
        frags = cal.fragments()
        if st.next >= len(frags):
            st.waited += 1
            if st.waited <= RESEND_AFTER:
                return None
            if st.rounds + 1 >= ROUNDS_MAX:
                return None
            st.rounds += 1
            st.next = st.waited = 0
            self.counts["rounds"] += 1
        i = st.next
        st.next += 1
        return self._queue_fragment(nid, st, frags[i], i, len(frags))

    async def _queue_fragment(self, nid: int, st: NodeSync, frag: bytes, i: int, n: int) -> None:
        try:
            st.pending = await self.queue.enqueue(nid, m.CONFIG, {m.CF_SETTINGS: {}, m.CF_CALENDAR: frag}, CONFIG_TTL_S)
            st.fragments += 1
            self.counts["fragments"] += 1
            log.info("calendar fragment %d/%d queued", i + 1, n, extra={"node": f"{nid:08x}"})
        except Exception as e:  # a full queue, a node just removed: tried again at its next uplink
            st.next = i
            self.counts["refused"] += 1
            log.warning("calendar fragment not queued: %s", e, extra={"node": f"{nid:08x}"})
        finally:
            if self._queuing.get(nid) is asyncio.current_task():
                del self._queuing[nid]

    def status(self) -> dict[str, Any]:
        """Per calendar and node: what is assigned, what the node holds (for the API and reports)."""
        out: dict[str, Any] = {"counts": dict(self.counts), "calendars": [], "nodes": {}}
        for c in self.calendars:
            out["calendars"].append(
                {"name": c.name, "path": c.path, "kind": KIND_NAMES[c.kind], "hash": c.hash.hex(), "bytes": len(c.blob)}
            )
        for nid, st in sorted(self.nodes.items()):
            cal = self.assigned(nid)
            out["nodes"][f"{nid:08x}"] = {
                "assigned": cal.hash.hex() if cal else None,
                "held": st.held.hex() if st.held else None,
                "in_sync": cal is not None and st.held == cal.hash,
            }
        return out
