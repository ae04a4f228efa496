"""Signed firmware releases: what `lumeau node release` and `lumeau node release-key` do.

A release image (format: protocol/noderelease.py, SPEC §13) is built from a bundle
(`lumeau node build`): the manifest lists every .mpy file of the bundle with its size and
SHA-256, the version, the versions it may replace, target, kind and .mpy version, and is
signed with the city's Ed25519 release key (the `cryptography` library). boot.py and
main.py are the board's loader: a release never carries them (a wired flash does).

With a base bundle (`--base DIR`, the bundle the nodes run), the image is a delta: it
carries only the files whose hash changed, and names the base's bundle id.

The private key is written once, 0600, as PKCS#8 PEM; it is never printed or logged (the
messages name the file and the public key's id). The gateway never needs it: it moves
images it cannot forge. The public key (32 bytes, 64 hex digits) goes in each node's
config as "release_key".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lumeau.bundle import SOURCE_ONLY, Bundle
from protocol import noderelease as rel


class ReleaseError(Exception):
    """A release that cannot be built or a key that cannot be used; the message says why."""


def key_id(public: bytes) -> str:
    """8 hex digits naming a public key (never the private one) in messages and manifests."""
    return hashlib.sha256(b"lumeau release key" + public).hexdigest()[:8]


def generate_key(path: Path) -> bytes:
    """Write a new private key to `path` (0600, refused if it exists); the public key bytes."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReleaseError(f"{path}: exists; a release key is never overwritten (move it away first)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_bytes(key.public_key())


def public_bytes(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the release key ({e.strerror})") from None
    if mode & 0o077:
        raise ReleaseError(f"{path}: readable by others (mode {mode:o}); chmod 600 it first")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ReleaseError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path}: not an Ed25519 key")
    return key


def parse_public_key(value: str) -> str:
    """A node's `release_key` (64 lowercase hex) from 64 hex digits or a file holding them or a
    PEM Ed25519 public key (e.g. `openssl pkey -pubout`). A private key is refused: it never
    goes on a node (anyone holding one node could then sign releases)."""
    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    path = Path(value)
    if not path.is_file():
        raise ReleaseError(
            f"--release-key {value[:80]!r}: neither 64 hex digits (the public key `lumeau node release-key` "
            "prints) nor a file holding a PEM public key"
        )
    try:
        data = path.read_bytes()[:65536]
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the release key ({e.strerror})") from None
    stripped = data.strip()
    if len(stripped) == 64 and all(c in b"0123456789abcdefABCDEF" for c in stripped):
        return stripped.decode().lower()
    if b"PRIVATE KEY" in data:
        raise ReleaseError(
            f"{path}: a private key; give the public key (64 hex, printed by `lumeau node release-key`): "
            "the private key never goes on a node"
        )
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ReleaseError(f"{path}: not a PEM public key nor 64 hex digits") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise ReleaseError(f"{path}: a public key, but not Ed25519 (releases are signed with Ed25519, SPEC §13)")
    return public_bytes(pub).hex()


@dataclass(frozen=True)
class Release:
    image: bytes
    manifest: dict
    carried_bytes: int  # file bytes in the image
    full_bytes: int  # file bytes of the whole release


def release_files(bundle: Bundle) -> list:
    """[(path, size, sha256 hex)] of a bundle's files a release carries (not the loader)."""
    return sorted((f.path, f.size, f.sha256) for f in bundle.files if f.path not in SOURCE_ONLY)


def bundle_id(bundle: Bundle) -> str:
    """The bundle id (hex, SPEC §13) of the files a release of this bundle carries."""
    return rel.bundle_id([(p, h) for p, _, h in release_files(bundle)]).hex()


def factory_state(bundle: Bundle) -> bytes:
    """/ab.json after a wired flash of `bundle`: the factory release active, nothing on trial."""
    st = {"a": "", "t": "", "n": 0, "id": {"": bundle_id(bundle)}, "v": {"": bundle.firmware_version}, "rb": ""}
    return json.dumps(st, separators=(",", ":"), sort_keys=True).encode()


def build(
    bundle: Bundle, key: Ed25519PrivateKey, replaces: list[str], base: Bundle | None = None, version: str | None = None
) -> Release:
    """The signed image of a bundle (a delta against `base` when given)."""
    version = version or bundle.firmware_version
    try:
        new = rel.version_tuple(version)
        for r in replaces:
            if rel.version_tuple(r) >= new:
                raise ReleaseError(f"--replaces {r}: not older than the release's version {version}")
    except rel.Refused as e:
        raise ReleaseError(str(e)) from None
    if not replaces:
        raise ReleaseError("a release must name the versions it replaces (--replaces)")
    files = release_files(bundle)
    if len(files) > rel.MAX_FILES:
        raise ReleaseError(f"{len(files)} files, a release holds at most {rel.MAX_FILES}")
    old: dict[str, str] = {}
    base_id = None
    if base is not None:
        if (base.kind, base.target) != (bundle.kind, bundle.target):
            raise ReleaseError(
                f"--base is a {base.target} {base.kind} bundle, the release {bundle.target} {bundle.kind}"
            )
        old = {p: h for p, _, h in release_files(base)}
        base_id = bundle_id(base)
    # a file the node copies from its running release goes without its hash: the node hashes
    # it while copying, and the signed bundle id must come out of those hashes (SPEC §13)
    entries = [[p, n, "", 0] if old.get(p) == h else [p, n, h, 1] for p, n, h in files]
    manifest = {
        "format": rel.FORMAT,
        "version": version,
        "replaces": list(replaces),
        "target": bundle.target,
        "kind": bundle.kind,
        "mpy": bundle.mpy_version,
        "key": key_id(public_bytes(key.public_key())),
        "bundle": rel.bundle_id([(p, h) for p, _, h in files]).hex(),
        "base": base_id,
        "files": entries,
    }
    raw = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    if len(raw) > rel.MAX_MANIFEST:
        raise ReleaseError(f"manifest is {len(raw)} bytes, at most {rel.MAX_MANIFEST}")
    sig = key.sign(hashlib.sha256(raw).digest())
    parts = [rel.MAGIC, len(raw).to_bytes(2, "big"), raw, sig]
    carried = 0
    for p, n, _, c in entries:
        if c:
            parts.append((bundle.directory / p).read_bytes())
            carried += n
    return Release(b"".join(parts), manifest, carried, sum(n for _, n, _ in files))
