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

Not here (yet): LoRa multicast for mains-powered lamps (a group address and key), the
technician page's group view.
"""

from __future__ import annotations

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
from gateway.registry import Group, Registry, format_node_id, write_private
from gateway.store import Store
from protocol import expand
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.groups")

MAX_KEPT = 1000
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
    ) -> None:
        self.registry = registry
        self.store = store
        self.downlinks = downlinks
        self.clock = clock
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
                id_ = rec["id"]
                if not isinstance(id_, int) or not isinstance(rec.get("members"), dict):
                    raise ValueError("bad record")
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash: that command's record is lost, nothing else
            self._commands[id_] = rec
            self._commands.move_to_end(id_)
        while len(self._commands) > MAX_KEPT:
            self._commands.popitem(last=False)

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
        """Queue one COMMAND per member that can take it; returns the record with its progress."""
        op, args, ttl = parse_request(doc)
        kinds = _OP_KINDS[op]
        try:
            flat = ops.check_command(op, args, kinds[0])  # the arguments, once: wrong for one, wrong for all
        except ops.CommandRefused as e:
            raise GroupCommandError(str(e)) from None
        body: dict[int, Any] = {1: op}
        if flat:
            body[2] = flat
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
        id_ = (max(self._commands) + 1) if self._commands else 1
        rec = {
            "id": id_,
            "group": group.name,
            "op": OP_NAMES[op],
            "args": flat,
            "created": self.clock(),
            "members": members,
        }
        self._commands[id_] = rec
        while len(self._commands) > MAX_KEPT:
            self._commands.popitem(last=False)
        self._append(rec)
        queued = sum(1 for v in members.values() if "downlink" in v)
        log.info("group command queued", extra={"group": group.name, "op": rec["op"], "queued": queued})
        return self.progress(id_) or rec

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
            if "skipped" in v:
                item.update(state="skipped", reason=v["skipped"])
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
            counts[item["state"]] += 1
            members.append(item)
        return {
            "id": rec["id"],
            "group": rec["group"],
            "op": rec["op"],
            "args": rec["args"],
            "created": rec["created"],
            "progress": counts,
            "members": members,
        }
