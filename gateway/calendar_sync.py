"""Keeps each node's calendar the one assigned to it, sending only what changed (issue 11).

The pipeline's uplink observer when calendars are configured ([calendars] in the gateway
config; the files are gateway/calendars.py's). Per node:

- the calendar assigned: the first file (in the order configured) that names the node in
  `nodes` or one of its groups in `groups` (the registry's groups, read at each decision),
  else the first file with `default = true` for the node's kind, else none;
- the calendar the node holds: the hash its EVENT calendar reports (EV_CALENDAR, info; a node
  sends one after its boot's HELLO when it holds a calendar, each time it stores one, and when
  the first fragment of the one it holds arrives); a HELLO without one following: none;
  unknown until either is heard;
- when they differ (or the node's is unknown), all its fragments are queued at once, in order,
  each a CONFIG {CF_SETTINGS: {}, CF_CALENDAR: fragment}, before the downlink queue hears of
  the uplink (like gateway/adr.py), from the BOOT_HOLD-th uplink after a boot's HELLO on (the
  node's first hour is its heap's peak); they leave one per receive window (on LoRa), so no
  store write stands between a later uplink and its answer. A node that already holds the
  calendar answers the first fragment with its EVENT: the rest is cancelled. So is the rest of
  a round when the node reboots mid-way (a HELLO), and a new round starts.
  After the last fragment, RESEND_AFTER uplinks without an EVENT with the new hash start the
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
from protocol import calendar as pc
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.calendars")

RESEND_AFTER = 3  # uplinks after the last fragment without the node's EVENT calendar confirming
# Uplinks after a node's HELLO (its boot) before a first fragment goes: a node's first hour
# has its heap's peak of the day (bench/README.md, "Calendars"), and a calendar is no hurry.
BOOT_HOLD = 8
ROUNDS_MAX = 3  # rounds per calendar version, then the node is left alone until its next HELLO
CONFIG_TTL_S = 86400.0
KIND_NAMES = {m.KIND_LIGHTING: "lighting", m.KIND_IRRIGATION: "irrigation"}


@dataclass
class NodeSync:
    target: bytes = b""  # the hash being sent
    round: list[Any] = field(default_factory=list)  # the Downlinks of this round's fragments
    waited: int = 0  # uplinks since the last fragment went
    rounds: int = 0
    held: bytes | None = None  # the hash the node reported, None: not heard yet
    applied_at: float | None = None
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
        default_factory=lambda: {
            "fragments": 0,  # queued
            "fragments_sent": 0,  # of rounds over (the current rounds' are counted by `fragments_sent`)
            "applied": 0,
            "already_held": 0,
            "rounds": 0,
            "refused": 0,
        }
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
        """A coroutine to run before the downlinks hear of this uplink, or None."""
        st = self.nodes.setdefault(nid, NodeSync())
        cal = self.assigned(nid)
        st.since_hello += 1
        drop: list[Any] = []  # fragments still queued that no longer serve
        if record.mtype == m.HELLO:  # a boot: what it holds comes next, in an EVENT calendar
            st.since_hello = 0
            st.held = b""
            if st.round:  # rebooted mid-way: its reassembly is gone, the round starts again
                drop = self._queued(st)
                self._retire(st)
                st.round, st.waited = [], 0
        elif record.mtype == m.EVENT and record.body.get(0) == m.EV_CALENDAR:
            st.held = pc.value_hash(record.body.get(2, 0))
            if st.target and st.held == st.target:
                left = sum(1 for dl in st.round if dl.state != "queued")
                if left == 1 and len(st.round) > 1:
                    self.counts["already_held"] += 1
                else:
                    self.counts["applied"] += 1
                    st.applied_at = self.clock() if self.clock is not None else None
                    log.info("calendar applied", extra={"node": f"{nid:08x}", "hash": st.target.hex()})
                drop = self._queued(st)
                self._retire(st)
                st.target, st.round, st.rounds = b"", [], 0
        if nid in self._queuing:
            return None
        if cal is None or st.held == cal.hash:
            return self._run(nid, st, drop, []) if drop else None
        if st.target != cal.hash:  # a new version (or the first): start over
            drop += self._queued(st)
            self._retire(st)
            st.target, st.round, st.waited, st.rounds = cal.hash, [], 0, 0
        if self._queued(st) or st.since_hello < self.boot_hold:
            return self._run(nid, st, drop, []) if drop else None  # still leaving, or the node just booted
        if st.round:  # every fragment left: the node's EVENT with the hash should follow
            st.waited += 1
            if st.waited <= RESEND_AFTER or st.rounds + 1 >= ROUNDS_MAX:
                return self._run(nid, st, drop, []) if drop else None
            st.rounds += 1
            self.counts["rounds"] += 1
        st.waited = 0
        return self._run(nid, st, drop, cal.fragments())

    @staticmethod
    def _queued(st: NodeSync) -> list[Any]:
        return [dl for dl in st.round if getattr(dl, "state", None) == "queued"]

    def _retire(self, st: NodeSync) -> None:
        """A node's rounds are over: count the fragments that went on the air."""
        self.counts["fragments_sent"] += sum(1 for dl in st.round if getattr(dl, "state", None) == "sent")

    def fragments_sent(self) -> int:
        """Fragments handed to a radio (or a wire) since the gateway started."""
        live = sum(1 for st in self.nodes.values() for dl in st.round if getattr(dl, "state", None) == "sent")
        return self.counts["fragments_sent"] + live

    def state(self, node_id: int) -> str | None:
        """The node's calendar state: `in_step` (it holds the calendar assigned to it), `pending` (it
        does not yet: fragments queued or leaving, or its answer awaited, or its hold after a boot),
        `failed` (ROUNDS_MAX rounds went without its confirmation: left alone until its next HELLO);
        None: no calendar is assigned to it, or it was never heard."""
        st = self.nodes.get(node_id)
        cal = self.assigned(node_id)
        if st is None or cal is None:
            return None
        if st.held == cal.hash:
            return "in_step"
        given_up = (
            st.target == cal.hash
            and bool(st.round)
            and not self._queued(st)
            and st.waited > RESEND_AFTER
            and st.rounds + 1 >= ROUNDS_MAX
        )
        return "failed" if given_up else "pending"

    async def _run(self, nid: int, st: NodeSync, drop: list[Any], frags: list[bytes]) -> None:
        """Cancel what no longer serves, then queue a round: every fragment at once, in order.

        They leave one per receive window (the downlink queue's order and LoRa's one frame
        per window), so no store write stands between a later uplink and its answer."""
        try:
            for dl in drop:
                await self.queue.cancel(dl.id)
            for i, frag in enumerate(frags):
                try:
                    dl = await self.queue.enqueue(nid, m.CONFIG, {m.CF_SETTINGS: {}, m.CF_CALENDAR: frag}, CONFIG_TTL_S)
                except Exception as e:  # a full queue, a node just removed: the round is short, resent later
                    self.counts["refused"] += 1
                    log.warning("calendar fragment not queued: %s", e, extra={"node": f"{nid:08x}"})
                    break
                st.round.append(dl)
                self.counts["fragments"] += 1
                log.info("calendar fragment %d/%d queued", i + 1, len(frags), extra={"node": f"{nid:08x}"})
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
                "state": self.state(nid),
            }
        out["counts"]["fragments_sent"] = self.fragments_sent()
        return out

    def states(self) -> dict[str, int]:
        """Nodes by calendar state (the nodes heard that have a calendar assigned)."""
        out = {"in_step": 0, "pending": 0, "failed": 0}
        for nid in self.nodes:
            s = self.state(nid)
            if s is not None:
                out[s] += 1
        return out
