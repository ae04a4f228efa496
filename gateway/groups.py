"""Group commands (issue 11): one COMMAND for a named group, delivered by unicast fan-out.

A group (a street, a park, a district, or any set: gateway/registry.py `Group`) is
commanded as a whole: "100 % for 2 h" to every lamp of a street, a rain day to every
controller of a park. The gateway turns it into one COMMAND per member, queued through
the ordinary downlink queue (gateway/downlinks.py `enqueue`), so each goes out in that
member's own receive window after its next uplink (at once on serial and BLE) and is
resent, acknowledged, failed or expired exactly as a single node's command is.

Members whose kind cannot take the op (a lamp told to water) are `skipped`, never sent:
the op catalogue says which kinds take an op (gateway/ops.py). The arguments are checked
once against the catalogue for the first kind that takes the op: a bad argument refuses
the whole group command (400), nothing is queued. A member whose queue is full (or that
left the registry meanwhile) is `failed` at once, with the reason; the others go on.

Progress per member comes from that member's downlink in the store, read when asked:
  pending   queued or sent, no CMD_ACK yet
  applied   CMD_ACK with result ok
  failed    CMD_ACK with another result (named), no answer after the retries, expired,
            or refused when queued (the reason)
  skipped   the member's kind cannot take the op

Persistence: the record of each group command (its members and their downlink ids) is a
JSON line appended to the log beside the registry (`NAME.group-commands.jsonl`, mode
0600, fsynced), read again at start: a restarted gateway still answers
`GET /groups/{name}/commands/{id}`. The log keeps the last MAX_KEPT commands (it is
rewritten, atomically, when it holds twice that many lines).

Delivery per group (issue 11; SPEC §5 "Groups"; gateway/multicast.py `choose`): by LoRa
multicast when every member that takes the op is a mains lamp holding the group key and a
packet forwarder can send at any time, else by the unicast fan-out above. The record says
which (`delivery`: mode and reason). A multicast command goes out at once as one
GROUP_COMMAND whose command id is MCAST_ID_BASE + the group command's id; each member
answers with a CMD_ACK of that id after a random 0-60 s (`applied` on ok). Members without
an ok answer `repair_after_s` (120 s) later get the command by unicast, as above (a member
that applied it but whose answer was lost applies it again). Answers and repairs are
appended to the log as lines of their own. The key reaches the lamps when a group is saved
through the API, or on POST /groups/{name}/multicast (gateway/api.py), never in the middle
of a command: its joins would take the windows (and the gateway's duty cycle) that the
command's own unicast needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import ops
from gateway.downlinks import DownlinkRejected, Downlinks
from gateway.model import Record
from gateway.multicast import Multicast
from gateway.registry import Group, Registry, format_node_id, write_private
from gateway.store import Store
from gateway.transports import DownlinkError
from protocol import expand, groupcast
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.groups")

MAX_KEPT = 1000
REPAIR_AFTER_S = 120.0  # a multicast's member without an ok CMD_ACK by then gets it by unicast
STATES = ("applied", "pending", "failed", "skipped")
OP_NAMES = expand.ENUMS[(m.COMMAND, 1)]
OPS = {name: op for op, name in OP_NAMES.items()}
RESULT_NAMES = expand.ENUMS[(m.CMD_ACK, 1)]
_OP_KINDS = {o["op"]: tuple(o["kinds"]) for o in ops.catalogue()}
_FIELDS = ("op", "args", "ttl_s")


class GroupCommandError(ValueError):
    """A group command that cannot be queued; `status` is the HTTP status the API answers."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


def parse_request(doc: Any) -> tuple[int, Any, float | None]:
    """API JSON {"op", "args", "ttl_s"} -> (op, args as given, ttl_s). Raises GroupCommandError."""
    if not isinstance(doc, dict):
        raise GroupCommandError("the request must be a JSON object")
    extra = sorted(set(doc) - set(_FIELDS))
    if extra:
        raise GroupCommandError(f"unknown field {str(extra[0])[:40]!r} (known: {', '.join(_FIELDS)})")
    op = doc.get("op")
    if isinstance(op, str):
        if op not in OPS:
            raise GroupCommandError(f"unknown op {op[:40]!r} (known: {', '.join(OPS)})")
        op = OPS[op]
    if isinstance(op, bool) or not isinstance(op, int) or op not in _OP_KINDS:
        raise GroupCommandError(f"op must be one of {', '.join(OPS)} (a name or its number)")
    ttl = doc.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= 30 * 86400):
        raise GroupCommandError("ttl_s must be a number of seconds within 0..2592000 (30 days)")
    return op, doc.get("args", []), ttl


class GroupCommands:
    """Fans group commands out to their members and reports their progress."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        downlinks: Downlinks,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        multicast: Multicast | None = None,
        repair_after_s: float = REPAIR_AFTER_S,
    ) -> None:
        self.registry = registry
        self.store = store
        self.downlinks = downlinks
        self.clock = clock
        self.multicast = multicast
        self.repair_after_s = repair_after_s
        self._repairs: set[asyncio.Task[None]] = set()
        downlinks.cmd_ack_listeners.append(self._on_cmd_ack)
        # (node id, command id) -> (group command id, member): a unicast member's CMD_ACK dates its answer
        self._unicast: dict[tuple[int, int], tuple[int, str]] = {}
        p = registry.path
        self.log_path = log_path or p.with_name(f"{p.stem}.group-commands.jsonl")
        self._commands: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lines = 0
        self._torn = False  # the log ends in a torn line (a crash mid-write): end it before appending
        self._load()

    # ------------------------------------------------------------ the log

    def _load(self) -> None:
        try:
            text = self.log_path.read_text("utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            log.warning("group command log unreadable: progress of old commands lost", extra={"why": str(e)[:200]})
            return
        self._torn = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            self._lines += 1
            try:
                rec = json.loads(line)
                if "ack" in rec or "repair" in rec:
                    self._replay(rec)
                    continue
                id_ = rec["id"]
                if (
                    not isinstance(id_, int)
                    or not isinstance(rec.get("members"), dict)
                    or not all(isinstance(v, dict) for v in rec["members"].values())
                    or not isinstance(rec.get("group"), str)
                    or not isinstance(rec.get("op"), str)
                    or not isinstance(rec.get("args"), list)
                ):
                    raise ValueError("bad record")
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: that command's record is lost, nothing else
            self._commands[id_] = rec
            self._commands.move_to_end(id_)
        while len(self._commands) > MAX_KEPT:
            self._commands.popitem(last=False)
        for id_ in self._commands:
            self._index(id_)

    def _replay(self, line: dict[str, Any]) -> None:
        # a multicast's answer or repair, logged after its command's own line
        if "ack" in line:
            rec = self._commands.get(line["ack"])
            v = rec and rec["members"].get(line.get("node"))
            if v is not None and isinstance(line.get("result"), int):
                v["ack"] = line["result"]
                if isinstance(line.get("at"), (int, float)):
                    v["at"] = line["at"]
        else:
            rec = self._commands.get(line["repair"])
            if rec is not None and isinstance(line.get("members"), dict):
                for node, dl in line["members"].items():
                    if node in rec["members"] and isinstance(dl, int):
                        rec["members"][node]["downlink"] = dl
                rec["repaired"] = True

    def _append(self, rec: dict[str, Any]) -> None:
        if self._lines >= 2 * MAX_KEPT:
            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self._commands.values())
            write_private(self.log_path, text.encode("utf-8"))
            self._lines = len(self._commands)
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.log_path, flags, 0o600)
        try:
            line = ("\n" if self._torn else "") + json.dumps(rec, separators=(",", ":")) + "\n"
            view = memoryview(line.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            self._torn = False
        finally:
            os.close(fd)
        self._lines += 1

    # ------------------------------------------------------------ commanding

    async def command(self, group: Group, doc: Any) -> dict[str, Any]:
        """Queue one COMMAND per member that can take it, or multicast it; the record with its progress."""
        op, args, ttl = parse_request(doc)
        kinds = _OP_KINDS[op]
        try:
            flat = ops.check_command(op, args, kinds[0])  # the arguments, once: wrong for one, wrong for all
        except ops.CommandRefused as e:
            raise GroupCommandError(str(e)) from None
        body: dict[int, Any] = {1: op}
        if flat:
            body[2] = flat
        id_ = (max(self._commands) + 1) if self._commands else 1
        now = self.clock()
        mode, why = ("unicast", "multicast is off") if self.multicast is None else self.multicast.choose(group, kinds)
        members: dict[str, dict[str, Any]] = {}
        if mode == "multicast":
            assert self.multicast is not None
            expires = int(now + (self.downlinks.default_ttl_s if ttl is None else ttl))
            try:
                await self.multicast.send(group, groupcast.MCAST_ID_BASE + id_, {**body, 3: expires})
            except (DownlinkError, ValueError, OSError) as e:
                mode, why = "unicast", f"the multicast could not go: {str(e)[:160]}"
            else:
                for n in group.members:
                    entry = self.registry.get(n)
                    key = format_node_id(n)
                    if entry is None:
                        members[key] = {"failed": "not in the registry"}
                    elif entry.kind not in kinds:
                        members[key] = {
                            "skipped": f"{OP_NAMES[op]} is for {' and '.join(kinds)} nodes, not {entry.kind}"
                        }
                    else:
                        members[key] = {"multicast": True}
        if mode == "unicast":
            members = await self._fan_out(group, kinds, op, body, ttl)
        rec: dict[str, Any] = {
            "id": id_,
            "group": group.name,
            "op": OP_NAMES[op],
            "args": flat,
            "created": now,
            "members": members,
            "delivery": {"mode": mode, "reason": why},
        }
        if mode == "multicast":
            rec["ttl_s"] = ttl
            rec["repair_at"] = now + self.repair_after_s
        self._commands[id_] = rec
        while len(self._commands) > MAX_KEPT:
            _old, gone = self._commands.popitem(last=False)
            for key, v in gone["members"].items():
                if isinstance(v.get("downlink"), int):
                    self._unicast.pop((int(key, 16), v["downlink"]), None)
        self._append(rec)
        self._index(id_)
        if mode == "multicast":
            self._schedule_repair(id_)
        log.info("group command", extra={"group": group.name, "op": rec["op"], "mode": mode, "members": len(members)})
        return self.progress(id_) or rec

    async def _fan_out(
        self, group: Group, kinds: tuple[str, ...], op: int, body: dict[int, Any], ttl: float | None
    ) -> dict[str, dict[str, Any]]:
        members: dict[str, dict[str, Any]] = {}
        for n in group.members:
            key = format_node_id(n)
            entry = self.registry.get(n)
            if entry is None:
                members[key] = {"failed": "not in the registry"}
                continue
            if entry.kind not in kinds:
                members[key] = {"skipped": f"{OP_NAMES[op]} is for {' and '.join(kinds)} nodes, not {entry.kind}"}
                continue
            try:
                dl = await self.downlinks.enqueue(n, m.COMMAND, body, ttl)
            except DownlinkRejected as e:
                members[key] = {"failed": str(e)}
                continue
            members[key] = {"downlink": dl.id}
        return members

    def _index(self, id_: int) -> None:
        rec = self._commands.get(id_)
        for key, v in (rec or {}).get("members", {}).items():
            dl = v.get("downlink")
            if isinstance(dl, int):
                try:
                    self._unicast[(int(key, 16), dl)] = (id_, key)
                except ValueError:
                    pass

    # ------------------------------------------------------------ a multicast's answers and repairs

    def _on_cmd_ack(self, record: Record) -> None:
        cid = record.body.get(0)
        if not isinstance(cid, int):
            return
        if cid < groupcast.MCAST_ID_BASE:
            # a member's own COMMAND (fan-out or repair): its state comes from the store; note when
            # it answered, on the reception's clock (memory only: `answered_at` of the progress)
            hit = self._unicast.get((record.node_id, cid))
            rec = self._commands.get(hit[0]) if hit else None
            if rec is not None and hit is not None and hit[1] in rec["members"]:
                rec["members"][hit[1]].setdefault("at", record.rx_time)
            return
        rec = self._commands.get(cid - groupcast.MCAST_ID_BASE)
        key = format_node_id(record.node_id)
        v = rec["members"].get(key) if rec is not None else None
        if v is None or not v.get("multicast") or v.get("ack") == m.RES_OK:
            return
        v["ack"] = record.body.get(1, -1)
        v["at"] = record.rx_time
        try:
            self._append({"ack": cid - groupcast.MCAST_ID_BASE, "node": key, "result": v["ack"], "at": v["at"]})
        except OSError as e:
            log.warning("a multicast answer not logged", extra={"why": str(e)[:200]})

    def _schedule_repair(self, id_: int) -> None:
        try:
            t = asyncio.get_running_loop().create_task(self._repair(id_))
        except RuntimeError:
            return  # no loop (a tool reading the log): start() schedules it
        self._repairs.add(t)
        t.add_done_callback(self._repairs.discard)

    def start(self) -> None:
        """Schedule the repairs of multicasts still waiting for theirs (after a restart)."""
        for id_, rec in self._commands.items():
            if rec.get("delivery", {}).get("mode") == "multicast" and not rec.get("repaired"):
                self._schedule_repair(id_)

    async def close(self) -> None:
        for t in list(self._repairs):
            t.cancel()
        for t in list(self._repairs):
            try:
                await t
            except asyncio.CancelledError:
                pass

    async def _repair(self, id_: int) -> None:
        rec = self._commands.get(id_)
        if rec is None:
            return
        await asyncio.sleep(max(0.0, rec.get("repair_at", 0) - self.clock()))
        op = OPS.get(rec["op"])
        body: dict[int, Any] = {1: op}
        if rec["args"]:
            body[2] = rec["args"]
        done: dict[str, int] = {}
        for key, v in rec["members"].items():
            if not v.get("multicast") or v.get("ack") == m.RES_OK or "downlink" in v:
                continue
            entry = self.registry.get(int(key, 16))
            if entry is None or entry.kind not in _OP_KINDS.get(op or 0, ()):
                continue
            try:
                dl = await self.downlinks.enqueue(entry.node_id, m.COMMAND, body, rec.get("ttl_s"))
            except DownlinkRejected as e:
                v["failed"] = f"repair not queued: {e}"
                continue
            v["downlink"] = done[key] = dl.id
        rec["repaired"] = True
        self._append({"repair": id_, "members": done})
        self._index(id_)
        log.info("multicast repaired by unicast", extra={"group": rec["group"], "members": len(done)})

    def commands(self, group: str) -> list[dict[str, Any]]:
        """The group's commands still in the log, oldest first, with their progress counts."""
        out = []
        for id_, rec in self._commands.items():
            if rec.get("group") == group:
                p = self.progress(id_)
                if p is not None:
                    out.append({k: v for k, v in p.items() if k != "members"})
        return out

    def progress(self, id_: int, group: str | None = None) -> dict[str, Any] | None:
        """The command `id_` (of `group`, when given) with each member's state and the counts."""
        rec = self._commands.get(id_)
        if rec is None or (group is not None and rec.get("group") != group):
            return None
        counts = dict.fromkeys(STATES, 0)
        members = []
        for node, v in rec["members"].items():
            item: dict[str, Any] = {"node": node}
            if v.get("multicast"):
                item["via"] = "multicast"
            if "skipped" in v:
                item.update(state="skipped", reason=v["skipped"])
            elif v.get("multicast") and v.get("ack") == m.RES_OK:
                item.update(state="applied")
            elif v.get("multicast") and "downlink" not in v and "failed" not in v:
                if "ack" in v:
                    res = v["ack"] if isinstance(v["ack"], int) else -1
                    item.update(state="failed", reason=f"the node answered {RESULT_NAMES.get(res, res)}")
                else:
                    item.update(state="pending", downlink="multicast")
            elif "failed" in v:
                item.update(state="failed", reason=v["failed"])
            else:
                dl = self.store.downlink(v.get("downlink", -1))
                item["command"] = v.get("downlink")
                if dl is None:
                    item.update(state="failed", reason="its downlink is no longer in the store")
                elif dl.state in ("queued", "sent"):
                    item.update(state="pending", downlink=dl.state, attempts=dl.attempts)
                elif dl.state == "acked" and dl.result == m.RES_OK:
                    item.update(state="applied")
                elif dl.state == "acked":
                    res = dl.result if dl.result is not None else -1
                    item.update(state="failed", reason=f"the node answered {RESULT_NAMES.get(res, res)}")
                else:
                    item.update(state="failed", reason=f"downlink {dl.state}", attempts=dl.attempts)
            if isinstance(v.get("at"), (int, float)) and item["state"] in ("applied", "failed"):
                item["answered_at"] = v["at"]  # the CMD_ACK's reception time
            counts[item["state"]] += 1
            members.append(item)
        return {
            "id": rec["id"],
            "group": rec["group"],
            "op": rec["op"],
            "args": rec["args"],
            "created": rec["created"],
            "progress": counts,
            "delivery": rec.get("delivery", {"mode": "unicast", "reason": "before multicast"}),
            "members": members,
        }
