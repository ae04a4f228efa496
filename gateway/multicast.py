"""LoRa multicast for groups of mains lamps: keys, provisioning, the choice, the frame (issue 11).

SPEC §5 "Groups" is the contract; protocol/groupcast.py the wire. What the gateway keeps,
in `<registry>.multicast.json` beside the registry (mode 0600, written atomically; it holds
the group master secret, which never leaves this file and is never logged):

- `master`: 16 random bytes, made on first use; every group key derives from it;
- per group (by name): `addr` (1..65535, never reused), `gen` (its key generation), `next`
  (the group counter of its next frame: committed to the file before a frame is sealed, so
  a crash skips a counter and never reuses one), and per member the downlink id of the
  join_group that gives it this generation's key (`join`, `gen`).

Provisioning: `provision` queues a join_group (an ordinary unicast COMMAND, resent and
acknowledged as any other, without an expiry: SPEC) for every lamp of the group that has
not acknowledged the current generation. A member that left the group makes a new
generation (a new key for everyone, so it cannot command the street any more) and is sent
a leave. A member is `provisioned` once its join's CMD_ACK says ok with this generation.

The choice (`choose`): multicast when the op is a lamp's, every member that takes it is a
lighting node (mains-powered: the registry has no battery lamps), every one of them is
provisioned, and the gateway has a radio that can send at any time (a packet forwarder:
gateway/transports/semtech.py `transmit_now`); else unicast fan-out, with the reason.

Temporary groups (`open_temporary`, `close_temporary`): a group of the gateway's own for one
update session (gateway/fuota.py: a campaign's canaries, or its rest when it is not a whole
group), of lamps that listen already (members of a group: `listening`). A fresh address, gen
0, a join_group to each member; a leave to each when the session ends. Kept under
`temporary` in the state file (by address), never in the registry, so no group name can meet
it; one left by a stopped gateway is closed (its members sent a leave) by `close_stale`.
A lamp holds at most 4 groups: one already in 4 refuses the join and is served by unicast.

Not here: the members' progress and the unicast repair (gateway/groups.py).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.downlinks import DownlinkRejected, Downlinks
from gateway.registry import Group, Registry, format_node_id, write_private
from gateway.store import Store
from protocol import fragments, groupcast
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.multicast")

RX2_MHZ = groupcast.GROUP_FREQ_HZ / 1e6  # EU868 RX2, sub-band g3 (10 %): where members listen (LoRa class C)
DEFAULT_SF = groupcast.GROUP_SF  # what a member's LoRa modem listens at (firmware/group.py Listener)
LIGHTING = "lighting"


@dataclass(frozen=True)
class Temporary:
    """A group of the gateway's own for one update session (module doc); `joins`: node -> the id
    of its join_group downlink."""

    addr: int
    members: tuple[int, ...]
    joins: dict[int, int]

    @property
    def name(self) -> str:  # for log lines, as a Group's
        return f"temporary {self.addr}"


class MulticastRadio(Protocol):
    async def transmit_now(self, frame: bytes, freq_mhz: float, sf: int) -> int: ...


class Multicast:
    def __init__(
        self,
        registry: Registry,
        store: Store,
        downlinks: Downlinks,
        radio: MulticastRadio | None = None,
        path: Path | None = None,
        sf: int = DEFAULT_SF,
    ) -> None:
        self.registry = registry
        self.store = store
        self.downlinks = downlinks
        self.radio = radio
        self.sf = sf
        p = registry.path
        self.path = path or p.with_name(f"{p.stem}.multicast.json")
        self._state: dict[str, Any] = self._load()

    # ------------------------------------------------------------ the state file

    def _load(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("groups"), dict) and isinstance(doc.get("master"), str):
                bytes.fromhex(doc["master"])
                return doc
            log.warning("multicast state unreadable: groups fall back to unicast until re-provisioned")
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("multicast state unreadable: groups fall back to unicast", extra={"why": str(e)[:200]})
        return {"master": None, "groups": {}, "last_addr": 0, "temporary": {}}

    def _save(self) -> None:
        write_private(self.path, json.dumps(self._state, separators=(",", ":")).encode("utf-8"))

    def _master(self) -> bytes:
        if not self._state.get("master"):
            self._state["master"] = secrets.token_bytes(16).hex()
        return bytes.fromhex(self._state["master"])

    def _group(self, name: str) -> dict[str, Any]:
        g = self._state["groups"].get(name)
        if g is None:
            g = self._state["groups"][name] = {"addr": self._new_addr(), "gen": 0, "next": 0, "members": {}}
        return g

    def _new_addr(self) -> int:
        addr = int(self._state.get("last_addr", 0)) + 1
        if addr > groupcast.GROUP_ADDR_MAX:
            raise ValueError("no group address left (65,535 used)")
        self._state["last_addr"] = addr
        return addr

    # ------------------------------------------------------------ provisioning

    def lamps(self, group: Group) -> list[int]:
        return [n for n in group.members if (e := self.registry.get(n)) is not None and e.kind == LIGHTING]

    def provisioned(self, name: str, node: int) -> bool:
        g = self._state["groups"].get(name)
        rec = g and g["members"].get(format_node_id(node))
        if not rec or rec.get("gen") != g["gen"]:
            return False
        dl = self.store.downlink(rec.get("join", -1))
        return bool(dl is not None and dl.state == "acked" and dl.result == m.RES_OK)

    async def provision(self, group: Group) -> dict[str, int]:
        """Queue join_group for every lamp without this generation's key; counts of what it did."""
        g = self._group(group.name)
        lamps = {format_node_id(n): n for n in self.lamps(group)}
        gone = [k for k in g["members"] if k not in lamps]
        if gone:  # a member left: a new key, so it cannot command the street any more
            g["gen"] += 1
            for k in gone:
                del g["members"][k]
                try:
                    await self.downlinks.enqueue(int(k, 16), m.COMMAND, {1: m.OP_JOIN_GROUP, 2: [g["addr"]]})
                except DownlinkRejected:
                    pass  # it keeps an old key that no longer opens anything
            log.info("group key renewed: a member left", extra={"group": group.name, "gen": g["gen"]})
        key = groupcast.group_key(self._master(), g["addr"], g["gen"])
        queued = failed = 0
        for k, n in lamps.items():
            rec = g["members"].get(k)
            if rec and rec.get("gen") == g["gen"]:
                dl = self.store.downlink(rec.get("join", -1))
                if (
                    dl is not None
                    and dl.state in ("queued", "sent", "acked")
                    and (dl.state != "acked" or dl.result == 0)
                ):
                    continue  # on its way, or done
            entry = self.registry.get(n)
            assert entry is not None
            args = groupcast.join_args(entry.keys, g["addr"], g["gen"], g["next"], key)
            try:
                dl = await self.downlinks.enqueue(n, m.COMMAND, {1: m.OP_JOIN_GROUP, 2: args})
            except DownlinkRejected as e:
                failed += 1
                log.info("join_group not queued", extra={"node": k, "why": str(e)[:120]})
                continue
            g["members"][k] = {"join": dl.id, "gen": g["gen"]}
            queued += 1
        self._save()
        return {"queued": queued, "failed": failed}

    # ------------------------------------------------------------ temporary groups

    def listening(self, node: int) -> bool:
        """Whether the node is a lamp that listens on the group channel: it holds the current key
        of one of the registry's groups (a lamp listens once it is a member: SPEC §5 "Listening")."""
        e = self.registry.get(node)
        if e is None or e.kind != LIGHTING:
            return False
        k = format_node_id(node)
        return any(k in g["members"] and self.provisioned(name, node) for name, g in self._state["groups"].items())

    async def open_temporary(self, nodes: list[int]) -> Temporary:
        """A temporary group of these lamps: its address, and a join_group queued for each (those
        the queue refused are left out of `joins`)."""
        addr = self._new_addr()
        rec: dict[str, Any] = {"gen": 0, "next": 0, "members": {}}
        self._state.setdefault("temporary", {})[str(addr)] = rec
        self._save()  # the address is taken before any key goes out
        key = groupcast.group_key(self._master(), addr, 0)
        joins: dict[int, int] = {}
        for n in nodes:
            entry = self.registry.get(n)
            assert entry is not None
            args = groupcast.join_args(entry.keys, addr, 0, rec["next"], key)
            try:
                dl = await self.downlinks.enqueue(n, m.COMMAND, {1: m.OP_JOIN_GROUP, 2: args})
            except DownlinkRejected as e:
                log.info("join_group not queued", extra={"node": format_node_id(n), "why": str(e)[:120]})
                continue
            joins[n] = dl.id
            rec["members"][format_node_id(n)] = {"join": dl.id}
        self._save()
        log.info("temporary group opened", extra={"addr": addr, "members": len(nodes)})
        return Temporary(addr, tuple(nodes), joins)

    async def close_temporary(self, t: Temporary) -> None:
        """Its members leave it (a join still queued is withdrawn, and a leave follows in case it
        went out); the group is forgotten. Its address is never used again."""
        rec = self._state.get("temporary", {}).get(str(t.addr))
        if rec is None:
            return
        for k, member in rec["members"].items():
            n = int(k, 16)
            try:
                await self.downlinks.cancel(member.get("join", -1))
                await self.downlinks.enqueue(n, m.COMMAND, {1: m.OP_JOIN_GROUP, 2: [t.addr]})
            except DownlinkRejected as e:  # a key to a group nobody sends to any more: harmless
                log.info("leave not queued", extra={"node": k, "why": str(e)[:120]})
        del self._state["temporary"][str(t.addr)]
        self._save()
        log.info("temporary group closed", extra={"addr": t.addr, "members": len(rec["members"])})

    async def close_stale(self, keep: set[int]) -> None:
        """Close the temporary groups but those of `keep` (addresses): left by a gateway stopped mid-session."""
        for a in [int(a) for a in self._state.get("temporary", {}) if int(a) not in keep]:
            members = tuple(int(k, 16) for k in self._state["temporary"][str(a)]["members"])
            await self.close_temporary(Temporary(a, members, {}))

    # ------------------------------------------------------------ the choice and the frame

    def choose(self, group: Group, kinds: tuple[str, ...]) -> tuple[str, str]:
        """("multicast" | "unicast", why) for a command of an op taken by `kinds`."""
        entries = [e for n in group.members if (e := self.registry.get(n)) is not None and e.kind in kinds]
        takers = [e.node_id for e in entries]
        if LIGHTING not in kinds or not takers:
            return "unicast", "multicast is for lamps"
        other = [e for e in entries if e.kind != LIGHTING]
        if other:
            return "unicast", f"{len(other)} member(s) taking the op are not lamps"
        if self.radio is None:
            return "unicast", "no radio that can send at any time (a packet forwarder: [semtech])"
        g = self._state["groups"].get(group.name)
        here = {format_node_id(n) for n in takers}
        if g is not None and any(k not in here for k in g["members"]):
            return "unicast", "a member left: the group key is being renewed"
        missing = [n for n in takers if not self.provisioned(group.name, n)]
        if missing:
            return "unicast", f"{len(missing)} of {len(takers)} lamps do not have the group key yet"
        return "multicast", f"all {len(takers)} lamps have the group key"

    def status(self, group: Group) -> dict[str, Any]:
        """For the API: the group's address, key generation, counter and members with the key."""
        g = self._state["groups"].get(group.name)
        lamps = self.lamps(group)
        have = sum(1 for n in lamps if self.provisioned(group.name, n))
        out: dict[str, Any] = {"lamps": len(lamps), "provisioned": have}
        if g is not None:
            out.update(addr=g["addr"], gen=g["gen"], next_counter=g["next"])
        return out

    async def send(self, group: Group, command_id: int, body: dict[int, Any]) -> None:
        """Seal and send one GROUP_COMMAND (the counter committed first); raises on failure."""
        assert self.radio is not None
        addr, counter, key = self._take_counter(group)
        raw = groupcast.seal(key, addr, counter, m.encode(m.COMMAND, {0: command_id, **body}))
        n = await self.radio.transmit_now(raw, RX2_MHZ, self.sf)
        log.info("multicast sent", extra={"group": group.name, "counter": counter, "forwarders": n})

    async def send_frame(self, group: Group | Temporary, body: bytes) -> int:
        """Seal and send one GROUP_FRAG (an update's fragment body, SPEC §13 "Over LoRa") with the
        group's next counter (committed first, as `send`); how many forwarders took it. Raises
        as the radio does (DownlinkError "duty_cycle" while the sub-band is closed)."""
        assert self.radio is not None
        addr, counter, key = self._take_counter(group)
        return await self.radio.transmit_now(fragments.seal_group(key, addr, counter, body), RX2_MHZ, self.sf)

    def _take_counter(self, group: Group | Temporary) -> tuple[int, int, bytes]:
        """(group address, the next group counter, the group key): the counter is committed to
        disk before anything is sealed with it (SPEC §4): a crash skips a counter, never reuses one."""
        if isinstance(group, Temporary):
            g = self._state["temporary"][str(group.addr)]
            addr = group.addr
        else:
            g = self._group(group.name)
            addr = g["addr"]
        counter = g["next"]
        if counter > groupcast.GROUP_COUNTER_MAX:
            raise ValueError("group counter exhausted: the key must be renewed")
        g["next"] = counter + 1
        self._save()
        return addr, counter, groupcast.group_key(self._master(), addr, g["gen"])
