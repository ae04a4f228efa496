"""A release image (.lup, SPEC §13) checked at the gateway before a campaign sends it.

The gateway never holds the release key: it cannot sign, and a node checks everything itself
(firmware/updater.py). What the gateway checks is so that a wrong image is refused before any
airtime is spent on it, with a reason a person can act on:

- the image's shape: magic, manifest length, a manifest that parses (protocol/noderelease.py),
  its exact size (the manifest says how many bytes the carried files take), and every carried
  file against its SHA-256 in the manifest (a corrupted image would cost airtime for nothing);
- its signature, when the gateway is given the city's PUBLIC key ([campaigns] release_key,
  64 hex digits as `lumeau node release-key` prints): an image not signed by the city is
  refused (Ed25519 with the `cryptography` library, over SHA-256 of the manifest, as nodes do);
- every node of the group: its kind (the registry) against the manifest's; the version it
  reported in its last HELLO (else the registry's `firmware`, else unknown: the node checks)
  must be listed in `replaces` and older than the release (a node already running the
  release's bundle is fine: it is counted installed); a delta's base against the bundle id the
  node reported; the board (`[campaigns] target`, when set) against the manifest's target.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.releases import PREFIX
from protocol import noderelease as rel

MAX_IMAGE = rel.HEADER + rel.MAX_MANIFEST + rel.SIG_LEN + rel.MAX_FILES * rel.MAX_FILE
SHOWN = 5  # nodes named in a refusal at most


class ImageRefused(ValueError):
    """An image no campaign may send; the message says why."""


class Target(NamedTuple):
    node_id: int
    kind: str | None  # registry kind; None: not in the registry
    firmware: str | None  # the version it reported (or was registered with); None: unknown
    running: str | None  # the bundle id prefix (6 hex) of its last HELLO


def inspect(image: bytes, public_key: bytes | None = None) -> dict[str, Any]:
    """The manifest of a well-formed image (signed by `public_key` when given); ImageRefused otherwise."""
    if len(image) > MAX_IMAGE:
        raise ImageRefused(f"image is {len(image)} bytes, a release is at most {MAX_IMAGE}")
    try:
        mlen = rel.parse_header(image[: rel.HEADER])
        raw = image[rel.HEADER : rel.HEADER + mlen]
        sig = image[rel.HEADER + mlen : rel.HEADER + mlen + rel.SIG_LEN]
        if len(raw) != mlen or len(sig) != rel.SIG_LEN:
            raise ImageRefused(f"not a release image: truncated ({len(image)} bytes)")
        manifest = rel.parse_manifest(bytes(raw))
    except rel.Refused as e:
        raise ImageRefused(f"not a release image: {e}") from None
    if manifest["kind"] not in rel.KINDS:
        raise ImageRefused(f"manifest kind {manifest['kind'][:20]!r} is not one of {', '.join(rel.KINDS)}")
    carried = sum(f[1] for f in manifest["files"] if f[3])
    size = rel.HEADER + mlen + rel.SIG_LEN + carried
    if len(image) != size:
        raise ImageRefused(f"image is {len(image)} bytes, its manifest says {size}")
    at = rel.HEADER + mlen + rel.SIG_LEN
    for path, n, digest, carried_flag in manifest["files"]:
        if carried_flag:  # a corrupted file costs no airtime: the node would refuse it at the end
            if hashlib.sha256(image[at : at + n]).hexdigest() != digest:
                raise ImageRefused(f"{path} does not match its hash in the manifest (a corrupted image)")
            at += n
    if public_key is not None:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(bytes(sig), hashlib.sha256(raw).digest())
        except InvalidSignature:
            raise ImageRefused(
                "bad signature: not signed by this city's release key ([campaigns] release_key)"
            ) from None
    return manifest


def summary(manifest: dict[str, Any], size: int) -> dict[str, Any]:
    """What a campaign keeps of the manifest (and shows)."""
    keys = ("version", "bundle", "kind", "target", "base", "key", "replaces")
    out = {k: manifest.get(k) for k in keys}
    out["bytes"] = size
    out["delta"] = manifest.get("base") is not None
    return out


def check_nodes(manifest: dict[str, Any], nodes: list[Target], target: str = "") -> None:
    """ImageRefused naming the nodes this release is not for (the first SHOWN), and why."""
    if target and manifest["target"] != target:
        raise ImageRefused(f"release is for {manifest['target']} boards, this gateway's nodes are {target}")
    kind, version = manifest["kind"], manifest["version"]
    new = rel.version_tuple(version)
    prefix = manifest["bundle"][:PREFIX]
    base = manifest.get("base")
    bad: list[str] = []
    for t in nodes:
        nid = f"{t.node_id:08x}"
        if t.kind is None:
            bad.append(f"{nid} is not in the registry")
        elif t.kind != kind:
            bad.append(f"{nid} is {t.kind}, the release is for {kind} nodes")
        elif t.running == prefix:
            continue  # runs it already
        elif t.firmware is not None and t.firmware not in manifest["replaces"]:
            bad.append(f"{nid} runs {t.firmware}, which release {version} does not replace")
        elif t.firmware is not None and _older(t.firmware, new) is False:
            bad.append(f"{nid} runs {t.firmware}: a downgrade or the same version")
        elif base is not None and t.running is not None and t.running != base[:PREFIX]:
            bad.append(f"{nid} runs bundle {t.running}, the delta is built on {base[:PREFIX]}")
    if bad:
        more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise ImageRefused("release not for every node of the group: " + "; ".join(bad[:SHOWN]) + more)


def _older(firmware: str, new: tuple[int, ...]) -> bool | None:
    try:
        return rel.version_tuple(firmware) < new
    except rel.Refused:
        return None  # a version the node reported that is not dotted numbers: the node decides
