# Firmware release images (SPEC §13): the format and the node's checks.
#
# An image is one byte string, so every transport moves it the same way
# (serial today; BLE and LoRa fragments later) and a receiver can resume it
# by offset:
#
#   0   4  magic b"LUP1"
#   4   2  manifest length M, big-endian (1..MAX_MANIFEST)
#   6   M  manifest: UTF-8 JSON (below)
#   6+M 64 Ed25519 signature by the city's release key over SHA-256(manifest)
#   ...    the carried files' bytes, in manifest order
#
# Manifest: {"format": 1, "version": "0.1.1", "replaces": ["0.1.0"],
#   "target": "esp32", "kind": "lighting", "mpy": 6, "key": "<8 hex>",
#   "bundle": "<64 hex>", "base": "<64 hex>" | null,
#   "files": [["firmware/runtime.mpy", size, "<sha256 hex>", carried 0|1], ...]}
# "files" lists the WHOLE release; a delta carries only the changed files
# (carried 1) and names in "base" the bundle id it applies to: the others
# (carried 0) are copied from the running release, and their hash may be
# left out ("", 70 bytes less per file): the node hashes each copied file
# and the bundle id, signed, must then come out of the hashes it got.
# bundle id = SHA-256 over "path sha256\n" for every file, sorted by path:
# the same for a delta and a full image of one release (HELLO key 5 carries
# its first 3 bytes).
#
# Loaded by the node only during an update (firmware/updater.py), and by the
# host's tools (lumeau/release.py builds and signs images).

import hashlib
import json

MAGIC = b"LUP1"
FORMAT = 1
HEADER = 6
SIG_LEN = 64
MAX_MANIFEST = 4096
MAX_FILES = 64
MAX_FILE = 65536
KINDS = ("lighting", "irrigation", "bridge")


class Refused(Exception):
    """An image the node must not install; the message says why (a refusal, never a crash)."""


def version_tuple(v):
    """(0, 1, 1) for "0.1.1"; Refused for anything else."""
    try:
        parts = tuple(int(p) for p in v.split("."))
    except (ValueError, AttributeError):
        raise Refused("version %r is not dotted numbers" % (v,))
    if not parts or len(parts) > 4 or min(parts) < 0:
        raise Refused("version %r is not dotted numbers" % (v,))
    return parts


def bundle_id(files):
    """SHA-256 over "path sha256\\n" lines sorted by path; files = [(path, sha256 hex), ...]."""
    h = hashlib.sha256()
    for path, digest in sorted(files):
        h.update(("%s %s\n" % (path, digest)).encode())
    return h.digest()


def _path_ok(p):
    if type(p) is not str or not 0 < len(p) <= 64 or p[0] == "/" or ".." in p:
        return False
    for c in p:
        if not (c.isalpha() or c.isdigit() or c in "_./-"):
            return False
    return p.endswith(".mpy")


def parse_header(head):
    """The manifest length M from the first 6 bytes; Refused when they are not an image's."""
    if len(head) < HEADER or bytes(head[:4]) != MAGIC:
        raise Refused("not a release image (bad magic)")
    m = (head[4] << 8) | head[5]
    if not 0 < m <= MAX_MANIFEST:
        raise Refused("manifest length %d out of range" % m)
    return m


def check_signature(manifest, sig, public_key, verify):
    """Refused unless `sig` signs SHA-256(manifest) under `public_key` (verify: ed25519.verify)."""
    if len(sig) != SIG_LEN:
        raise Refused("truncated signature")
    if not verify(public_key, sig, hashlib.sha256(manifest).digest()):
        raise Refused("bad signature (not signed by this city's release key)")


def parse_manifest(manifest):
    """The manifest as a dict with its files checked for shape; Refused otherwise."""
    try:
        m = json.loads(manifest)
    except (ValueError, UnicodeError):
        raise Refused("manifest is not JSON")
    if type(m) is not dict or m.get("format") != FORMAT:
        raise Refused("manifest format not supported")
    for k in ("version", "target", "kind", "bundle"):
        if type(m.get(k)) is not str:
            raise Refused("manifest: %s missing" % k)
    version_tuple(m["version"])
    rep = m.get("replaces")
    if type(rep) is not list or not rep:
        raise Refused("manifest: replaces missing")
    files = m.get("files")
    if type(files) is not list or not 0 < len(files) <= MAX_FILES:
        raise Refused("manifest: files missing")
    ids = []
    for f in files:
        if type(f) is not list or len(f) != 4 or not _path_ok(f[0]):
            raise Refused("manifest: bad file entry")
        if f[3] not in (0, 1):
            raise Refused("manifest: bad carried flag for %s" % f[0])
        if type(f[1]) is not int or not 0 <= f[1] <= MAX_FILE or type(f[2]) is not str:
            raise Refused("manifest: bad size or hash for %s" % f[0])
        if len(f[2]) != 64 and (f[3] or f[2]):  # only a copied file's hash may be left out
            raise Refused("manifest: bad size or hash for %s" % f[0])
        ids.append((f[0], f[2]))
    if len(m["bundle"]) != 64:
        raise Refused("manifest: bad bundle id")
    if all(h for _, h in ids):
        check_bundle(m, ids)
    return m


def check_bundle(m, ids):
    """Refused unless the bundle id signed in the manifest is the one of ids [(path, sha256 hex)]."""
    if bundle_id(ids).hex() != m["bundle"]:
        raise Refused("the files do not make the signed bundle %s (the running files differ?)" % m["bundle"][:6])


def check_applicable(m, kind, target, mpy, running, running_bundle):
    """Refused unless the release is for this node: kind, target, .mpy version, an upgrade
    from the running version, and (a delta) built against the running bundle when the node
    knows it (a factory release flashed by wire may not: each copied file's hash still guards)."""
    if m["kind"] != kind:
        raise Refused("release is for %s nodes, this node is %s" % (m["kind"], kind))
    if m["target"] != target:
        raise Refused("release is for %s boards, this board is %s" % (m["target"], target))
    if m.get("mpy") != mpy:
        raise Refused("release is .mpy v%s, this MicroPython loads v%s" % (m.get("mpy"), mpy))
    if version_tuple(m["version"]) <= version_tuple(running):
        raise Refused("downgrade or same version refused (%s -> %s)" % (running, m["version"]))
    if running not in m["replaces"]:
        raise Refused("release %s does not replace %s" % (m["version"], running))
    base = m.get("base")
    if base is not None and running_bundle is not None and base != running_bundle:
        raise Refused("delta built for another bundle than the running one")
