"""The node registry: which nodes exist, their root keys and where they are.

One file (over 600 lines): nodes, groups and key generations share one file format and one lock.

A TOML file written by provisioning (and by the local API), one table per
node keyed by its id in hex:

    # Lumeau node registry: holds root keys. Mode 0600.
    version = 1

    [nodes.00a1b2c3]
    kind = "lighting"                      # lighting | irrigation | bridge
    root_key = "000102030405060708090a0b0c0d0e0f"  # 16 bytes, hex
    name = "Rue de Rivoli 12"              # optional, for people
    site = "Rue de Rivoli"                 # optional: street, park or zone
    lat = 48.8606                          # optional, degrees (WGS 84)
    lon = 2.3376
    firmware = "0.1.0"                     # optional: as provisioned
    key_gen = 1                            # written by the gateway and the tools, never by hand
    dev_eui = "70b3d57ed0000001"           # optional: its LoRaWAN DevEUI (ChirpStack southbound)

`dev_eui` (16 hex digits, unique in the registry) maps a node behind a LoRaWAN
network server to its node id: the ChirpStack transport (gateway/transports/
chirpstack.py, SPEC §14) knows devices by DevEUI, frames by node id.

`key_gen` is the node's key generation (SPEC §4, "Re-keying"): 0 for a node
never re-keyed (and then left out of the file), one more each time its
root key changes. Records carry it in their idempotency key, so the
records of a re-keyed node, whose counters start again at 0, are never
taken for resends of the old key's. It is bumped in one place, here: by
`upsert` when a node's key changes, and by `change` and `replace_all` for a
key that changed in the file (edited by hand) without a bump. A node removed
leaves its next generation in a `[retired]` table (id = generation), so the
same id registered again later starts there, not at 0:

    [retired]
    00a1b2c4 = 1                           # removed at generation 0

At most MAX_NODES ids are remembered there (the oldest forgotten first).

What the node reports about itself (last seen, firmware it runs, readings)
is node state in the store, not here: this file changes only when a person
or provisioning changes it.

Security: the file must not be readable by group or others (loading one that
is fails, naming the file and the fix, as ssh does with keys); `save()`
writes a new file with mode 0600, fsyncs it and renames it over the old one,
so a crash leaves the old or the new registry, never half of one. Root keys
never appear in reprs, logs or `public()`.

Several writers, one file (issue 17): the gateway's API and `lumeau node
provision | remove` on the same file, while the gateway runs. Every write goes
through `Registry.change()`: under an exclusive lock (flock on a `.NAME.lock`
file beside it) it re-reads the file, applies the one change to what is on disk
and writes the result, then the in-memory registry takes the file's nodes. A
node added to the file meanwhile is kept (and the gateway knows it from then on),
never erased by a write from an older copy.

Limits: MAX_NODES = 100,000 nodes per registry (a city district per
gateway; loading and lookups are dict-sized, not the problem: a bound keeps
a hostile or broken file from exhausting memory).

Groups (issue 11): named sets of registered nodes, one table each, in the same file (and
written by the same locked merge, `Registry.change`):

    [groups.rue-de-rivoli]
    kind = "street"                        # street | park | district | custom
    members = ["00a1b2c3", "00a1b2c4"]     # registered node ids, hex, each once
    title = "Rue de Rivoli"                # optional, for people

A name is 1 to 64 of a-z, 0-9, `-`, `_` (it is a URL path segment), starting with a
letter or digit. A group naming a node the registry does not hold is refused on load
and on change (naming group and node); removing a node takes it out of its groups.
Limits: MAX_GROUPS = 1,000 groups, MAX_MEMBERS = 10,000 members per group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from protocol.keys import ROOT_KEY_LEN, NodeKeys

FORMAT_VERSION = 1
MAX_NODES = 100_000
KINDS = ("lighting", "irrigation", "bridge")  # protocol.messages KIND_* 1, 2, 3
TEXT_MAX = 128
LOCK_WAIT_S = 10.0
_T = TypeVar("_T")
_FIELDS = ("kind", "root_key", "name", "site", "lat", "lon", "firmware", "key_gen", "dev_eui")
DEV_EUI = re.compile(r"[0-9a-f]{16}")
MAX_KEY_GEN = 0xFFFFFFFF  # re-keyings of one node: never reached; bounds what a file may say
GROUP_KINDS = ("street", "park", "district", "custom")
MAX_GROUPS = 1000
MAX_MEMBERS = 10_000
GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_GROUP_FIELDS = ("kind", "members", "title")


def file_stamp(path: str | Path) -> tuple[int, int, int, int] | None:
    """What tells that a registry file changed under a reader: (device, inode, size, mtime ns).

    None when there is no file. A save (write_private: a new file renamed over the old one)
    always gives a new inode; an edit in place changes the size or the mtime.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class RegistryError(ValueError):
    """A registry file or entry that cannot be used; the message names file, node, key and why."""


def parse_node_id(value: Any) -> int:
    """A node id from an int or a hex string ("00a1b2c3" or "0x00a1b2c3")."""
    if isinstance(value, bool):
        raise ValueError("node id must be an integer or hex text")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        s = value.strip().lower()
        s = s[2:] if s.startswith("0x") else s
        if not s or len(s) > 8 or any(c not in "0123456789abcdef" for c in s):
            raise ValueError(f"node id {value!r} is not 1 to 8 hex digits")
        n = int(s, 16)
    else:
        raise ValueError("node id must be an integer or hex text")
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"node id {value!r} is not a 32-bit unsigned integer")
    return n


def format_node_id(node_id: int) -> str:
    return f"{node_id:08x}"


@dataclass(slots=True)
class NodeEntry:
    """One provisioned node. `keys` are derived from `root_key` on creation."""

    node_id: int
    kind: str
    root_key: bytes = field(repr=False)
    name: str = ""
    site: str = ""
    lat: float | None = None
    lon: float | None = None
    firmware: str = ""
    key_gen: int = 0  # key generation: see the module doc
    dev_eui: str = ""  # LoRaWAN DevEUI, 16 lower-case hex digits; "" for a node not behind LoRaWAN
    keys: NodeKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"node {self.node_id:08x}" if isinstance(self.node_id, int) else "node"
        if isinstance(self.node_id, bool) or not isinstance(self.node_id, int) or not 0 <= self.node_id <= 0xFFFFFFFF:
            raise RegistryError(f"{where}: id must be a 32-bit unsigned integer")
        if self.kind not in KINDS:
            raise RegistryError(f"{where}: kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.root_key, (bytes, bytearray)) or len(self.root_key) != ROOT_KEY_LEN:
            raise RegistryError(f"{where}: root_key: must be {ROOT_KEY_LEN} bytes")
        self.root_key = bytes(self.root_key)
        for name in ("name", "site", "firmware"):
            v = getattr(self, name)
            if not isinstance(v, str) or len(v) > TEXT_MAX:
                raise RegistryError(f"{where}: {name}: must be text of at most {TEXT_MAX} characters")
        for name, lim in (("lat", 90.0), ("lon", 180.0)):
            v = getattr(self, name)
            if v is None:
                continue
            # the range first: math.isfinite() of a 400-digit integer raises OverflowError (issue 15)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= lim:
                raise RegistryError(f"{where}: {name}: must be a number of degrees within +-{lim:g}")
            setattr(self, name, float(v))
        if (self.lat is None) != (self.lon is None):
            raise RegistryError(f"{where}: lat and lon go together")
        g = self.key_gen
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= MAX_KEY_GEN:
            raise RegistryError(f"{where}: key_gen: must be an integer 0..{MAX_KEY_GEN}")
        if not isinstance(self.dev_eui, str) or (self.dev_eui and not DEV_EUI.fullmatch(self.dev_eui.lower())):
            raise RegistryError(f"{where}: dev_eui: must be 16 hex digits (the LoRaWAN DevEUI)")
        self.dev_eui = self.dev_eui.lower()
        self.keys = NodeKeys(self.node_id, self.root_key)

    @classmethod
    def from_dict(cls, node_id: int, d: dict[str, Any]) -> NodeEntry:
        """From a TOML table or API JSON; root_key as 32 hex digits."""
        where = f"node {node_id:08x}"
        if not isinstance(d, dict):
            raise RegistryError(f"{where}: must be a table")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise RegistryError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_FIELDS)})")
        for req in ("kind", "root_key"):
            if req not in d:
                raise RegistryError(f"{where}: {req}: required")
        rk = d["root_key"]
        try:
            if not isinstance(rk, str) or len(rk) != 2 * ROOT_KEY_LEN:
                raise ValueError
            key = bytes.fromhex(rk)
        except ValueError:
            raise RegistryError(f"{where}: root_key: must be {2 * ROOT_KEY_LEN} hex digits") from None
        return cls(
            node_id=node_id,
            kind=d["kind"],
            root_key=key,
            name=d.get("name", ""),
            site=d.get("site", ""),
            lat=d.get("lat"),
            lon=d.get("lon"),
            firmware=d.get("firmware", ""),
            key_gen=d.get("key_gen", 0),
            dev_eui=d.get("dev_eui", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """The TOML table (with the key: only for the registry file)."""
        d: dict[str, Any] = {"kind": self.kind, "root_key": self.root_key.hex()}
        for name in ("name", "site", "firmware", "dev_eui"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        if self.lat is not None:
            d["lat"] = self.lat
            d["lon"] = self.lon
        if self.key_gen:  # left out at 0: the file of a node never re-keyed is as before
            d["key_gen"] = self.key_gen
        return d

    def public(self) -> dict[str, Any]:
        """Everything but the key, for the API (key_gen always: it is in the records' ids)."""
        d = self.to_dict()
        del d["root_key"]
        d["id"] = format_node_id(self.node_id)
        d["key_gen"] = self.key_gen
        return d


def _load_retired(path: Path, table: Any) -> dict[int, int]:
    """The `[retired]` table of a registry file: node id (hex) -> key generation."""
    if not isinstance(table, dict):
        raise RegistryError(f"{path}: retired: must be a table of node id = key generation")
    if len(table) > MAX_NODES:
        raise RegistryError(f"{path}: retired: {len(table)} ids, at most {MAX_NODES}")
    out: dict[int, int] = {}
    for k, g in table.items():
        try:
            n = parse_node_id(k)
        except ValueError as e:
            raise RegistryError(f"{path}: retired.{str(k)[:40]}: {e}") from None
        if isinstance(g, bool) or not isinstance(g, int) or not 0 < g <= MAX_KEY_GEN:
            raise RegistryError(f"{path}: retired.{k}: must be a key generation 1..{MAX_KEY_GEN}")
        out[n] = g
    return out


class GroupExists(RegistryError):
    """A group created under a name already in use."""


def check_group_name(name: Any) -> str:
    """`name` if it is a valid group name, else RegistryError saying what a name is."""
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
        shown = repr(name)[:70]
        raise RegistryError(
            f"group name {shown} is not 1 to 64 of a-z, 0-9, '-', '_' (starting with a letter or digit)"
        )
    return name


@dataclass(slots=True)
class Group:
    """A named set of nodes (street, park, district, custom); members in the order given."""

    name: str
    kind: str
    members: list[int]
    title: str = ""

    def __post_init__(self) -> None:
        check_group_name(self.name)
        where = f"group {self.name}"
        if self.kind not in GROUP_KINDS:
            raise RegistryError(f"{where}: kind: {str(self.kind)[:40]!r} is not one of {', '.join(GROUP_KINDS)}")
        if not isinstance(self.title, str) or len(self.title) > TEXT_MAX:
            raise RegistryError(f"{where}: title: must be text of at most {TEXT_MAX} characters")
        if not isinstance(self.members, list):
            raise RegistryError(f"{where}: members: must be a list of node ids")
        if len(self.members) > MAX_MEMBERS:
            raise RegistryError(f"{where}: members: {len(self.members)} nodes, at most {MAX_MEMBERS}")
        seen: set[int] = set()
        for n in self.members:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 0xFFFFFFFF:
                raise RegistryError(f"{where}: members: {n!r} is not a node id")
            if n in seen:
                raise RegistryError(f"{where}: members: node {n:08x} is listed twice")
            seen.add(n)

    @classmethod
    def from_dict(cls, name: str, d: Any) -> Group:
        """From a TOML table or API JSON; members as hex ids (or integers)."""
        check_group_name(name)
        where = f"group {name}"
        if not isinstance(d, dict):
            raise RegistryError(f"{where}: must be a table")
        unknown = sorted(set(d) - set(_GROUP_FIELDS))
        if unknown:
            raise RegistryError(f"{where}: unknown key {str(unknown[0])[:40]!r} (known: {', '.join(_GROUP_FIELDS)})")
        for req in ("kind", "members"):
            if req not in d:
                raise RegistryError(f"{where}: {req}: required")
        raw = d["members"]
        if not isinstance(raw, list):
            raise RegistryError(f"{where}: members: must be a list of node ids")
        if len(raw) > MAX_MEMBERS:
            raise RegistryError(f"{where}: members: {len(raw)} nodes, at most {MAX_MEMBERS}")
        members = []
        for v in raw:
            try:
                members.append(parse_node_id(v))
            except ValueError as e:
                raise RegistryError(f"{where}: members: {str(e)[:120]}") from None
        return cls(name=name, kind=d["kind"], members=members, title=d.get("title", ""))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "members": [format_node_id(n) for n in self.members]}
        if self.title:
            d["title"] = self.title
        return d

    def public(self) -> dict[str, Any]:
        return {"name": self.name, **self.to_dict()}


# Exclusive creation: a file or symlink planted at the temporary name makes the open fail (never
# followed, never truncated); O_NOFOLLOW where the OS has it, for the same reason.
_EXCL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TMP_TRIES = 16


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600: new file, fsync, rename, fsync the directory.

    The temporary file (same directory, random name) is created with O_CREAT | O_EXCL, mode
    0600 (issue 20): before, a predictable name opened without O_EXCL followed a symlink
    planted there, and the root keys went wherever it pointed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, _EXCL_FLAGS, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path.parent}: cannot create a temporary file for {path.name}")
    try:
        try:
            os.fchmod(fd, 0o600)  # O_CREAT's mode is reduced by the umask; this is not
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Registry:
    """The nodes of one gateway, loaded from and saved to one TOML file."""

    def __init__(
        self, path: str | Path, entries: dict[int, NodeEntry] | None = None, groups: dict[str, Group] | None = None
    ) -> None:
        self.path = Path(path)
        self._entries: dict[int, NodeEntry] = dict(entries or {})
        self._groups: dict[str, Group] = dict(groups or {})
        # removed nodes: id -> the key generation it takes if it is registered again (module doc)
        self._retired: dict[int, int] = {}
        # the pipeline's hot path: a bound dict lookup
        self.get = self._entries.get

    @classmethod
    def load(cls, path: str | Path, *, missing_ok: bool = True) -> Registry:
        """Read and check the file; a missing file is an empty registry when `missing_ok`."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise RegistryError(f"{path}: registry file not found") from None
        if st.st_mode & 0o077:
            raise RegistryError(
                f"{path}: holds root keys but is accessible to group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise RegistryError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise RegistryError(f"{path}: cannot read: {e.strerror}") from None
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise RegistryError(f"{path}: version: {version!r} is not supported (this gateway reads {FORMAT_VERSION})")
        unknown = sorted(set(data) - {"version", "nodes", "groups", "retired"})
        if unknown:
            raise RegistryError(
                f"{path}: unknown top-level key {unknown[0]!r} (known: version, nodes, groups, retired)"
            )
        nodes = data.get("nodes", {})
        if not isinstance(nodes, dict):
            raise RegistryError(f"{path}: nodes: must be a table of node tables")
        if len(nodes) > MAX_NODES:
            raise RegistryError(f"{path}: nodes: {len(nodes)} nodes, at most {MAX_NODES}")
        entries: dict[int, NodeEntry] = {}
        for key, table in nodes.items():
            try:
                node_id = parse_node_id(key)
            except ValueError as e:
                raise RegistryError(f"{path}: nodes.{key}: {e}") from None
            if node_id in entries:
                raise RegistryError(f"{path}: nodes.{key}: node {node_id:08x} is listed twice")
            try:
                entries[node_id] = NodeEntry.from_dict(node_id, table)
            except RegistryError as e:
                raise RegistryError(f"{path}: nodes.{key}: {str(e).split(': ', 1)[1]}") from None
        eui_of: dict[str, int] = {}
        for node_id, entry in entries.items():
            eui = entry.dev_eui
            if eui:
                if eui in eui_of:
                    raise RegistryError(f"{path}: nodes.{node_id:08x}: dev_eui: {eui} is node {eui_of[eui]:08x}'s too")
                eui_of[eui] = node_id
        reg = cls(path, entries)
        reg._retired = _load_retired(path, data.get("retired", {}))
        groups = data.get("groups", {})
        if not isinstance(groups, dict):
            raise RegistryError(f"{path}: groups: must be a table of group tables")
        if len(groups) > MAX_GROUPS:
            raise RegistryError(f"{path}: groups: {len(groups)} groups, at most {MAX_GROUPS}")
        for name, table in groups.items():
            try:
                reg.put_group(Group.from_dict(name, table))
            except RegistryError as e:
                raise RegistryError(f"{path}: groups: {e}") from None
        return reg

    def save(self) -> None:
        """Write the registry atomically with mode 0600 (new file, fsync, rename, fsync dir)."""
        doc: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "nodes": {format_node_id(n): self._entries[n].to_dict() for n in sorted(self._entries)},
        }
        if self._groups:
            doc["groups"] = {g: self._groups[g].to_dict() for g in sorted(self._groups)}
        retired = {format_node_id(n): g for n, g in self._retired.items() if n not in self._entries}
        if retired:
            doc["retired"] = dict(sorted(retired.items()))
        text = (
            "# Lumeau node registry: holds root keys. Keep it mode 0600.\n"
            "# Written by provisioning and the gateway's API; see gateway/registry.py.\n" + tomli_w.dumps(doc)
        )
        write_private(self.path, text.encode("utf-8"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's write lock (flock on `.NAME.lock` beside the file, mode 0600)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"{self.path}: another writer holds {lock} for over {LOCK_WAIT_S:g} s; "
                            "try again (a stuck `lumeau node` command?)"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def change(self, edit: Callable[[Registry], _T], *, missing_ok: bool = True) -> tuple[_T, list[int]]:
        """Apply `edit` to the file as it is now, under the lock; save; take the file's nodes.

        `edit` gets a fresh copy read from disk (not this object) and changes it; if it
        raises, nothing is written and this registry is unchanged. Returns what `edit`
        returned and the ids whose root key differs from this registry's before (a
        change made on disk, or by `edit`): their counters start again (SPEC §2).
        """
        with self.locked():
            if missing_ok and not self.path.exists():  # no file (yet): what this registry holds
                fresh = Registry(self.path, self._entries, self._groups)
                fresh._retired = dict(self._retired)
            else:
                fresh = Registry.load(self.path, missing_ok=False)
            result = edit(fresh)
            self.carry_key_gens(fresh)  # a key changed on disk by hand: its bump is saved with this write
            fresh.save()
        return result, self.replace_all(fresh)

    def carry_key_gens(self, other: Registry) -> list[int]:
        """Give `other`'s nodes (a newer state of this registry) a key generation past this one's
        wherever the root key changed without one; returns the ids bumped.

        A node whose key is the same never goes back to a lower generation either.
        """
        bumped = []
        for n, e in other._entries.items():
            old = self._entries.get(n)
            if old is None:  # new here: past the generations of its id before a removal
                if e.key_gen < self._retired.get(n, 0):
                    e.key_gen = self._retired[n]
                    bumped.append(n)
                continue
            if old.root_key != e.root_key:
                if e.key_gen <= old.key_gen:
                    e.key_gen = old.key_gen + 1
                    bumped.append(n)
            elif e.key_gen < old.key_gen:
                e.key_gen = old.key_gen
                bumped.append(n)
        return bumped

    def replace_all(self, other: Registry) -> list[int]:
        """Take `other`'s nodes (a reloaded file) in place; returns the ids whose root key changed.

        In place, so everyone holding `registry.get` sees the new nodes at once. Key
        generations are carried first (`carry_key_gens`): in memory only, unless the caller
        saves `other`.
        """
        self.carry_key_gens(other)
        rekeyed = [
            n for n, e in other._entries.items() if n in self._entries and self._entries[n].root_key != e.root_key
        ]
        self._entries.clear()
        self._entries.update(other._entries)
        self._groups.clear()
        self._groups.update(other._groups)
        for n, g in self._retired.items():  # what this registry retired and the other does not know
            if n not in other._entries:
                other._retired[n] = max(g, other._retired.get(n, 0))
        self._retired = other._retired
        return rekeyed

    def upsert(self, entry: NodeEntry) -> NodeEntry | None:
        """Add or replace a node (not saved: call save()); returns the entry it replaced.

        A new root key for a registered node takes the next key generation (`entry.key_gen`
        is set), and the same key keeps the generation it had.
        """
        old = self._entries.get(entry.node_id)
        if old is None and len(self._entries) >= MAX_NODES:
            raise RegistryError(f"{self.path}: at most {MAX_NODES} nodes")
        if entry.dev_eui:
            other = self.dev_euis().get(entry.dev_eui)
            if other is not None and other != entry.node_id:
                raise RegistryError(f"node {entry.node_id:08x}: dev_eui: {entry.dev_eui} is node {other:08x}'s")
        if old is not None:
            if old.root_key != entry.root_key:
                entry.key_gen = max(entry.key_gen, old.key_gen + 1)
            else:
                entry.key_gen = max(entry.key_gen, old.key_gen)
        else:  # an id removed before: its counters restart, as after a re-key
            entry.key_gen = max(entry.key_gen, self._retired.pop(entry.node_id, 0))
        self._entries[entry.node_id] = entry
        return old

    def dev_euis(self) -> dict[str, int]:
        """DevEUI (16 lower-case hex digits) -> node id, of the nodes that have one."""
        return {e.dev_eui: n for n, e in self._entries.items() if e.dev_eui}

    def remove(self, node_id: int) -> NodeEntry | None:
        """Remove a node (not saved), and take it out of every group; its id's next key
        generation is remembered (`retired`)."""
        old = self._entries.pop(node_id, None)
        if old is not None:
            self._retired.pop(node_id, None)  # to the end: the newest
            self._retired[node_id] = min(old.key_gen + 1, MAX_KEY_GEN)
            while len(self._retired) > MAX_NODES:
                del self._retired[next(iter(self._retired))]
            for name, g in list(self._groups.items()):
                if node_id in g.members:
                    self._groups[name] = Group(g.name, g.kind, [n for n in g.members if n != node_id], g.title)
        return old

    # ------------------------------------------------------------ groups

    def groups(self) -> list[Group]:
        """Every group, by name."""
        return [self._groups[g] for g in sorted(self._groups)]

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def put_group(self, group: Group, *, create: bool = False) -> Group | None:
        """Add or replace a group (not saved); returns the one it replaced.

        Every member must be a node of this registry; `create` refuses a name already used.
        """
        old = self._groups.get(group.name)
        if old is not None and create:
            raise GroupExists(f"group {group.name}: a group of that name exists (replace it, or pick another name)")
        if old is None and len(self._groups) >= MAX_GROUPS:
            raise RegistryError(f"{self.path}: at most {MAX_GROUPS} groups")
        for n in group.members:
            if n not in self._entries:
                raise RegistryError(f"group {group.name}: members: node {n:08x} is not in the registry")
        self._groups[group.name] = group
        return old

    def remove_group(self, name: str) -> Group | None:
        return self._groups.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(list(self._entries.values()))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r}, {len(self._entries)} nodes)"
