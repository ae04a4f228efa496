"""`lumeau node provision`: give a node its identity and key, and tell the gateway.

- node id: given (``--node-id``), or allocated at random among the 32-bit ids the
  registry does not hold (random, not sequential: two technicians provisioning
  offline against copies of the registry almost never collide; 0 and 0xffffffff
  are never allocated);
- root key: 128 bits from ``secrets`` (the OS's CSPRNG), SPEC §3 derives the
  per-direction keys from it;
- config file: firmware/config.py's JSON (a board preset for radio and pins,
  lumeau/boards.py, and a site template for radio, pins and the app's settings, plus
  node_id, kind, root_key, key_fresh, location), validated with the node's own
  validators and refused on an unknown key (lumeau/boards.py validate), written
  with mode 0600 (it holds the key);
- registry: the gateway's registry file (gateway/registry.py, mode 0600, atomic)
  or, when a gateway runs, its API (``PUT /nodes/{id}``) so it knows the key at once.

Re-provisioning an id the registry holds ROTATES its key and says so: frames the
node sends with its old key fail verification until it is flashed with the new
config. The key is never printed unless ``show_key`` is asked for.

Nothing is lost silently (issue 17):

- an id the registry holds, or a config file that exists, is refused unless
  ``force``; with ``force`` and no template, the existing config's settings
  (radio, pins, the app's section, hand-made changes) are kept, only the key
  and the identity are new;
- a registry file that does not exist is refused unless ``new_registry`` (a
  typo in the path would otherwise start an empty registry);
- the registry file is changed under its lock, merged with what is on disk
  (gateway/registry.py `Registry.change`), so a gateway's API write and a
  provisioning never erase each other's node;
- a name another node already has is registered, with a warning
  (`Provisioned.warnings`).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.keys import ROOT_KEY_LEN

ID_MIN, ID_MAX = 1, 0xFFFFFFFE
ALLOCATION_TRIES = 1000


class ProvisionError(Exception):
    pass


@dataclass
class Provisioned:
    node_id: int
    kind: str
    root_key: bytes
    rotated: bool
    config_path: Path
    registered_in: str
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never the key
        return (
            f"Provisioned(node_id={self.node_id:08x}, kind={self.kind!r}, rotated={self.rotated}, "
            f"config_path={str(self.config_path)!r}, registered_in={self.registered_in!r})"
        )


def new_root_key() -> bytes:
    return secrets.token_bytes(ROOT_KEY_LEN)


def allocate_id(taken: Container[int]) -> int:
    for _ in range(ALLOCATION_TRIES):
        n = secrets.randbelow(ID_MAX - ID_MIN + 1) + ID_MIN
        if n not in taken:
            return n
    raise ProvisionError("could not find a free node id (is the registry nearly full?)")


def build_config(
    node_id: int,
    kind: str,
    root_key: bytes,
    template: dict | None = None,
    lat: float | None = None,
    lon: float | None = None,
    preset: dict | None = None,
) -> bytes:
    """The node's config file bytes, validated by the node's own validators (lumeau/boards.py).

    `preset` (boards.preset: radio and pins) is the base; the template's keys replace its.
    """
    from lumeau import boards

    cfg = {**(preset or {}), **(template or {})}
    for k in ("node_id", "kind", "root_key", "key_fresh"):
        cfg.pop(k, None)
    # key_fresh: this key was never used, so the node may start its counter at 0
    # (SPEC §4 "Counter persistence"); the node clears the mark once it holds state
    # node_id as 8 hex digits, the form the gateway, its API and every tool print (issue 17)
    cfg = {"node_id": f"{node_id:08x}", "kind": kind, "root_key": root_key.hex(), "key_fresh": True, **cfg}
    if lat is not None and lon is not None:
        cfg["location"] = {"lat": lat, "lon": lon}
    data = (json.dumps(cfg, indent=2, sort_keys=False) + "\n").encode()
    try:
        boards.validate(data, require_pins=False)  # pins to fill in: a warning (pins_warning)
    except boards.ConfigKeyError as e:
        raise ProvisionError(f"the node's config would not run on the node: {e}") from None
    return data


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (temporary file created O_EXCL, mode 0600)."""
    from gateway.registry import write_private as write

    write(path, data)


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def check_gateway_url(url: str) -> None:
    """Refuse a URL the root key must not travel to: https://, or http:// to this host only.

    The key goes in the request body; over plain HTTP anyone on the path reads it (issue 20).
    """
    import ipaddress
    import urllib.parse

    if "://" not in url:
        raise ProvisionError(
            f"--gateway {url!r} has no scheme: write http://{url} (a gateway on this host) or https://{url}"
        )
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname or ""
    except ValueError as e:
        raise ProvisionError(f"--gateway {url!r}: not a URL ({e})") from None
    if u.scheme == "https" and host:
        return
    if u.scheme != "http" or not host:
        raise ProvisionError(f"--gateway {url!r}: give an https:// URL (or http:// to this host)")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower().rstrip(".") in LOOPBACK_NAMES
    if not loopback:
        raise ProvisionError(
            f"--gateway {url!r}: refusing to send a root key over plain http:// to {host}; "
            "use https:// (plain http:// only to this host: localhost, 127.0.0.1, ::1)"
        )


def api_call(url: str, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read() or b"{}")
        except ValueError:
            detail = {}
        return e.code, detail
    except (urllib.error.URLError, OSError) as e:
        raise ProvisionError(f"cannot reach the gateway at {url}: {getattr(e, 'reason', e)}") from None


TOKEN_ENV = "LUMEAU_API_TOKEN"
NO_SUCH_NODE = "no such node"  # the API's 404 for a node it does not hold (gateway/api.py)


def http_error(status: int, answer: dict, url: str, what: str = "") -> str:
    """An API refusal, said so that a person knows what to do (never the token)."""
    reason = answer.get("error", "") if isinstance(answer, dict) else ""
    head = f"the gateway at {url} refused{' ' + what if what else ''}: HTTP {status}"
    if status == 401:
        return (
            f"{head}: the API token is not the gateway's; it is [api] token_file (or token) in the "
            f"gateway's config (gateway.toml): give it with --token or ${TOKEN_ENV}"
        )
    if status in (404, 405) and reason != NO_SUCH_NODE:
        return (
            f"{head} {reason}: is this the gateway's API URL? (scheme, host and port only, e.g. http://127.0.0.1:8760)"
        )
    return f"{head} {reason}".rstrip()


def provision(
    kind: str,
    out: Path,
    *,
    node_id: int | None = None,
    registry: Path | None = None,
    gateway: str | None = None,
    token: str | None = None,
    template: dict | None = None,
    name: str = "",
    site: str = "",
    lat: float | None = None,
    lon: float | None = None,
    firmware: str = "",
    dev_eui: str = "",
    force: bool = False,
    new_registry: bool = False,
    board: str | None = None,
    radio: str | None = None,
    release_key: str | None = None,
) -> Provisioned:
    from gateway.registry import NodeEntry, Registry, RegistryError
    from lumeau import boards

    if (registry is None) == (gateway is None):
        raise ProvisionError("register the node in exactly one place: --registry FILE or --gateway URL")
    if (lat is None) != (lon is None):
        raise ProvisionError("give both --lat and --lon, or neither")
    preset = None
    if radio is not None and board is None:
        raise ProvisionError(f"--radio {radio} needs --board ({', '.join(boards.BOARDS)}): the pins depend on it")
    if board is not None:
        try:
            preset = boards.preset(board, kind, radio)
        except boards.PresetError as e:
            raise ProvisionError(str(e)) from None
    if out.exists() and not force:
        raise ProvisionError(
            f"{out} already exists (a node's config: it holds its key); give another --out, "
            "or --force to replace it (its settings are kept unless --template is given)"
        )
    if force and template is None and out.exists():
        template = existing_settings(out)
        if template is not None and preset is not None:  # --board asked for: its radio and pins
            template = {k: v for k, v in template.items() if k not in ("radio", "pins")}
    key = new_root_key()

    others: list[tuple[int, str]] = []  # (id, name) of the registered nodes, for duplicate names
    old: NodeEntry | dict[str, Any] | None  # the registry's entry, or the gateway's JSON for it
    if registry is not None:
        if not new_registry and not registry.exists():
            raise ProvisionError(
                f"{registry}: no such registry file; check the path (the gateway's is [gateway] registry "
                "in its config), or give --new-registry to start a new one"
            )
        try:
            reg = Registry.load(registry)
        except RegistryError as e:
            raise ProvisionError(str(e)) from None
        if node_id is None:
            node_id = allocate_id(reg)
        old = reg.get(node_id)
        others = [(e.node_id, e.name) for e in reg]
    else:
        assert gateway is not None  # exactly one of registry and gateway, checked above
        check_gateway_url(gateway)
        if not token:
            raise ProvisionError(
                f"--gateway needs the API token (--token or ${TOKEN_ENV}): it is [api] token_file (or token) "
                "in the gateway's config"
            )
        allocate = node_id is None
        for _ in range(ALLOCATION_TRIES):
            if allocate:
                node_id = allocate_id(())  # free when the gateway does not know it (asked just below)
            status, current = api_call(gateway, token, "GET", f"/nodes/{node_id:08x}")
            if status not in (200, 404) or (status == 404 and current.get("error") != NO_SUCH_NODE):
                raise ProvisionError(http_error(status, current, gateway))
            if not (allocate and status == 200):
                break
        old = current if status == 200 else None
        status, listing = api_call(gateway, token, "GET", "/nodes")
        if status == 200:
            others = [(parse_id(n.get("id")), n.get("name", "")) for n in listing.get("nodes", [])]
    assert node_id is not None  # given, or allocated above
    old_kind = (old.kind if isinstance(old, NodeEntry) else old.get("kind")) if old is not None else None
    if old_kind is not None and old_kind != kind:
        raise ProvisionError(
            f"node {node_id:08x} is a {old_kind} node in the registry; a node does not change "
            "kind: provision a new id for the new device"
        )
    if old is not None and not force:
        raise ProvisionError(
            f"node {node_id:08x} is already registered; provisioning it again ROTATES its key (the node "
            "stops being heard until flashed with the new config): give --force to do that"
        )

    def keep(field_name: str, value: Any) -> Any:
        if value not in ("", None) or old is None:
            return value
        return getattr(old, field_name) if isinstance(old, NodeEntry) else old.get(field_name, value)

    name, site, firmware = keep("name", name) or "", keep("site", site) or "", keep("firmware", firmware) or ""
    lat, lon = keep("lat", lat), keep("lon", lon)
    dev_eui = keep("dev_eui", dev_eui.lower()) or ""
    radio_section = (template or {}).get("radio", (preset or {}).get("radio"))
    if dev_eui and isinstance(radio_section, dict) and radio_section.get("type") == "lorawan":
        # one DevEUI, two places: the modem joins with it, the gateway maps it to the node
        given = str(radio_section.get("dev_eui", dev_eui)).lower()
        if given != dev_eui:
            raise ProvisionError(f"--dev-eui {dev_eui}: the template's radio.dev_eui is {given}")
        template = {**(template or {}), "radio": {**radio_section, "dev_eui": dev_eui}}
    if release_key is not None:  # 64 hex (lumeau/release.py parse_public_key): over the template's
        template = {**(template or {}), "release_key": release_key}
    data = build_config(node_id, kind, key, template, lat, lon, preset)
    try:
        entry = NodeEntry(
            node_id=node_id,
            kind=kind,
            root_key=key,
            name=name,
            site=site,
            lat=lat,
            lon=lon,
            firmware=firmware,
            dev_eui=dev_eui,
        )
    except RegistryError as e:
        raise ProvisionError(str(e)) from None

    warnings = [
        f"node {other:08x} already has the name {name!r}: two nodes, one name"
        for other, n in others
        if name and n == name and other != node_id
    ]
    missing = boards.missing_pins(boards.validate(data, require_pins=False))
    if missing:
        warnings.append(
            f"{out}: no pins for {', '.join(missing)}: the node cannot run (and flash refuses it) until they "
            f"are in its pins section: give --board ({', '.join(boards.BOARDS)}) or a --template with them "
            "(firmware/README.md, 'Config file')"
        )

    # The registry first: a config whose key the gateway does not know is useless,
    # while a registered key without its config is fixed by provisioning again.
    if registry is not None:

        def edit(disk: Registry) -> None:  # the file as it is now, under its lock
            now = disk.get(node_id)
            if now is not None and old is None and not force:
                raise RegistryError(f"node {node_id:08x} was registered meanwhile; provision again")
            disk.upsert(entry)

        try:
            reg.change(edit, missing_ok=new_registry)
        except RegistryError as e:
            raise ProvisionError(str(e)) from None
        except OSError as e:
            raise ProvisionError(f"{registry}: cannot write: {e.strerror}") from None
        where = str(registry)
    else:
        assert gateway is not None and token  # the gateway branch above
        body = {"kind": kind, "root_key": key.hex(), "name": name, "site": site, "firmware": firmware}
        if lat is not None:
            body.update(lat=lat, lon=lon)
        if dev_eui:
            body["dev_eui"] = dev_eui
        status, answer = api_call(gateway, token, "PUT", f"/nodes/{node_id:08x}", body)
        if status not in (200, 201):
            raise ProvisionError(http_error(status, answer, gateway, f"node {node_id:08x}"))
        where = gateway
    write_private(out, data)
    return Provisioned(node_id, kind, key, old is not None, out, where, warnings)


def parse_id(value: Any) -> int:
    """A node id from the API (8 hex digits); -1 when it is not one."""
    from gateway.registry import parse_node_id

    try:
        return parse_node_id(value) if isinstance(value, str) else -1
    except ValueError:
        return -1


def existing_settings(path: Path) -> dict[str, Any] | None:
    """An existing node config's settings (what a template holds), to keep them on --force."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # not a config: replaced (--force) from the defaults
    if not isinstance(doc, dict):
        return None
    return {k: v for k, v in doc.items() if k not in ("node_id", "kind", "root_key", "key_fresh", "location")}
