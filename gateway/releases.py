"""Which firmware release each node runs, against the one it is expected to run (SPEC §13).

A node's HELLO carries the first 3 bytes of its running release's bundle id (key 5). The
expected release is set by a person (`PUT /nodes/{id}/release`, `PUT /groups/{name}/release`,
`lumeau node expect`, or `lumeau node update --gateway` once an install is armed): the
release's version and its 64-hex bundle id, as in the image's manifest. Per node, kept in
its node state in the store (gateway/store/nodes.py, key "release"), so it survives a
restart:

    {"running": "a1b2c3" | null, "expected": {"version", "bundle"} | null,
     "state": "current" | "updating" | "rolled_back" | null, "since": t, "rolled_back_at": t,
     "rollbacks": n, "hello_at": t (its last HELLO)}

- setting the expected release: "current" when the node's last HELLO already reported it,
  else "updating";
- a HELLO reporting the expected bundle id: "current";
- a HELLO reporting another one (or none) while a release is expected: "rolled_back". A
  release that crashes on its trial boots rolls itself back (SPEC §13, firmware/slots.py)
  and the node says HELLO from the release it ran before: that is the case this catches.
  A node re-flashed by wire with another release shows the same; setting the expected
  release again clears it;
- no expected release: state null (the gateway only records what runs).

Why state, not a check of versions: HELLO has only the 3 bytes of bundle id (its worst case
is 51 B: protocol/SPEC.md, HELLO), and they are what changes when a release rolls back.
"""

from __future__ import annotations

import re
from typing import Any

BUNDLE = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"[0-9]{1,5}(\.[0-9]{1,5}){0,3}")  # dotted numbers, as manifests say
PREFIX = 6  # hex digits of the bundle id a HELLO carries (3 bytes)
STATES = ("current", "updating", "rolled_back")


class ReleaseError(ValueError):
    """An expected release that cannot be used; the message names the key and why."""


def parse_expected(doc: Any) -> dict[str, str]:
    """{"version", "bundle"} from an API body (or a manifest: other keys ignored only there)."""
    if not isinstance(doc, dict):
        raise ReleaseError('the body must be a JSON object {"version": ..., "bundle": ...}')
    extra = sorted(k for k in doc if k not in ("version", "bundle"))
    if extra:
        raise ReleaseError(f"{extra[0]}: unknown key (expected version and bundle)")
    return from_manifest(doc)


def from_manifest(doc: dict[str, Any]) -> dict[str, str]:
    """The expected release a release image's manifest names (SPEC §13: version, bundle)."""
    version, bundle = doc.get("version"), doc.get("bundle")
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise ReleaseError('version: dotted numbers required, e.g. "0.2.0"')
    if not isinstance(bundle, str) or not BUNDLE.fullmatch(bundle):
        raise ReleaseError("bundle: the release's bundle id, 64 lowercase hex digits, required")
    return {"version": version, "bundle": bundle}


def expect(rel: dict[str, Any] | None, expected: dict[str, str] | None, now: float) -> dict[str, Any]:
    """A node's release state once `expected` is set (None: cleared)."""
    out = dict(rel or {"running": None, "rollbacks": 0})
    out["expected"] = expected
    out["since"] = now
    out["rolled_back_at"] = None
    if expected is None:
        out["state"] = None
    else:
        out["state"] = "current" if runs(out.get("running"), expected["bundle"]) else "updating"
    return out


def hello_running(bundle: Any) -> str | None:
    """The running release a HELLO names: its key 5 (bytes) as hex, the first PREFIX digits of a
    bundle id; None when the HELLO has none (no A/B state, SPEC §5 HELLO) or it is not bytes.
    The one parse of it: the node state (on_hello) and campaigns (gateway/campaigns.py) use it."""
    return bundle.hex() if isinstance(bundle, (bytes, bytearray)) else None


def runs(running: str | None, bundle: str) -> bool:
    """Whether a node reporting `running` (hello_running) runs the release of bundle id `bundle`
    (64 hex digits): the 3 bytes a HELLO has are all there is to compare."""
    return running is not None and running == bundle[:PREFIX]


def on_hello(rel: dict[str, Any] | None, bundle: Any, now: float) -> tuple[dict[str, Any], bool]:
    """Fold a HELLO's bundle id (bytes or None) in; returns (new state, True when it rolled back now).
    `hello_at` is the HELLO's time (gateway/fuota.py: a reboot during an update session)."""
    out = dict(rel or {"expected": None, "state": None, "rollbacks": 0})
    out["running"] = hello_running(bundle)
    out["hello_at"] = now
    exp = out.get("expected")
    if not exp:
        return out, False
    if runs(out["running"], exp["bundle"]):
        if out.get("state") != "current":
            out["state"], out["since"] = "current", now
        return out, False
    if out.get("state") == "rolled_back":
        return out, False  # told once per rollback: the node may say HELLO again from there
    out["state"], out["since"], out["rolled_back_at"] = "rolled_back", now, now
    out["rollbacks"] = int(out.get("rollbacks") or 0) + 1
    return out, True
