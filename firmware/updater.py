# Install a release image (SPEC §13) into the free A/B slot.
#
# install() checks, in this order, and refuses (protocol.noderelease.Refused)
# with nothing changed on the node but the free slot's scratch files:
#   1. the header and the signature (Ed25519, the city's release key from
#      /config.json "release_key"), before the manifest is even parsed;
#   2. the manifest: kind, target, .mpy version, an upgrade from the running
#      version that it says it replaces, a delta's base bundle;
#   3. the image size against the manifest (truncated or padded);
#   4. every file as it is written to the slot, and again read back from flash;
#      files a delta does not carry are copied from the running slot, each
#      checked against the new manifest's hash.
# Only then is the slot armed for trial in /ab.json (one atomic rename,
# firmware/slots.py); the caller reboots. Imported only for an update, and
# unloaded after it (firmware.unload("updater", "slots")). boot() is the end of an
# update over LoRa (firmware/fuota.py's files), called at boot by main.py release_state().

import hashlib
import os
import sys

from firmware import slots
from protocol import VERSION, ed25519
from protocol import noderelease as rel

_CHUNK = 512
# sys.platform -> release target; the virtual board (simulator/vboard, `webassembly`) stands
# in for an ESP32: node code is bytecode only, the same .mpy for both (lumeau/bundle.py).
_TARGETS = {"esp32": "esp32", "rp2": "rp2", "webassembly": "esp32"}


def _mkdirs(path):
    d = ""
    for part in path.split("/")[1:-1]:
        d += "/" + part
        try:
            os.mkdir(d)
        except OSError:
            pass  # exists


def wipe(path):
    """Remove a directory tree (the free slot); missing is fine."""
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            wipe(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _hash_file(path, buf):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf[:n] if n < len(buf) else buf)
    return h.digest().hex()


def _copy(src, dst, size, buf):
    """size bytes from the open file src into the new file dst; their SHA-256 hex."""
    h = hashlib.sha256()
    with open(dst, "wb") as out:
        left = size
        while left:
            n = src.readinto(buf if left >= len(buf) else memoryview(buf)[:left])
            if not n:
                raise rel.Refused("truncated image")
            chunk = memoryview(buf)[:n]
            h.update(chunk)
            out.write(chunk)
            left -= n
    return h.digest().hex()


def release_key(config_path="/config.json"):
    import json

    with open(config_path) as f:
        k = json.load(f).get("release_key")
    if type(k) is not str or len(k) != 64:
        raise rel.Refused("no release_key in the node's config: updates are disabled")
    return bytes.fromhex(k)


def install(image, kind, public_key, root="/", target=None, running=None, mpy=None):
    """Check the image file, stage it into the free slot and arm it; the manifest dict."""
    if target is None:
        target = _TARGETS.get(sys.platform, sys.platform)
    if mpy is None:
        mpy = sys.implementation._mpy & 0xFF
    size = os.stat(image)[6]
    buf = bytearray(_CHUNK)
    with open(image, "rb") as f:
        mlen = rel.parse_header(f.read(rel.HEADER))
        manifest = f.read(mlen)
        if len(manifest) != mlen:
            raise rel.Refused("truncated image")
        rel.check_signature(manifest, f.read(rel.SIG_LEN), public_key, ed25519.verify)
        m = rel.parse_manifest(manifest)
        del manifest
        st = slots.read(root)
        if st["t"]:
            raise rel.Refused("a release is already on trial")
        active = st["a"]
        if running is None:
            running = st["v"].get(active) or VERSION
        rel.check_applicable(m, kind, target, mpy, running, st["id"].get(active))
        want = rel.HEADER + mlen + rel.SIG_LEN + sum(e[1] for e in m["files"] if e[3])
        if size != want:
            raise rel.Refused("image is %d bytes, its manifest says %d (truncated or padded)" % (size, want))
        free = "s1" if active == "s0" else "s0"
        base = root + free
        src_dir = slots.directory(active, root)
        got_all = []
        try:
            wipe(base)
            for path, n, digest, carried in m["files"]:
                dst = base + "/" + path
                _mkdirs(dst)
                if carried:
                    got = _copy(f, dst, n, buf)
                else:
                    try:
                        with open(src_dir + path, "rb") as src:
                            got = _copy(src, dst, n, buf)
                    except (OSError, rel.Refused):
                        got = None  # missing or short in the running slot
                if got is None or (digest and got != digest):
                    raise rel.Refused("%s does not match its hash in the manifest" % path)
                got_all.append((path, got))
            rel.check_bundle(m, got_all)  # a delta's copied files: the signed bundle id binds them
            for path, digest in got_all:  # read back from flash: what will boot
                if _hash_file(base + "/" + path, buf) != digest:
                    raise rel.Refused("%s reads back wrong from flash" % path)
        except BaseException as e:
            wipe(base)
            if isinstance(e, OSError):
                raise rel.Refused("storage: %r" % e)
            raise
    st["t"] = free
    st["n"] = 0
    st["id"][free] = m["bundle"]
    st["v"][free] = m["version"]
    slots.write(st, root)  # armed: the next boot tries it
    return m


def boot(root="/"):
    """At boot, before the node's code loads (main.py release_state()): an
    image that came over LoRa complete (firmware/fuota.py's files, /frag.setup's 15th byte 0)
    is installed here, in a boot of its own, the heap free of the node's code. True when there
    was one: the caller then resets the board, so the names interned here (qstrs are never
    freed) leave with it and the next boot selects the release on trial. A refusal stays in
    /frag.setup (15th byte 1, the reason) for FRAG_STATUS and last_error. An install under way
    is 2 there (3: the second try), so one cut short (power) is tried once more and one that
    crashes the board is not retried forever."""
    st = root + "frag.setup"
    try:
        with open(st, "rb") as f:
            b = f.read()
    except OSError:
        return False
    if len(b) != 15 or b[14] == 1:
        return False
    why = None
    if b[14] >= 3:  # two installs began and never ended (power cut, crash): no boot loop
        why = "install cut short twice, not tried again"
    elif slots.read(root)["t"]:  # install() refuses it too, after the signature: not under a trial's watchdog
        why = "a release is already on trial"
    else:
        with open(st, "wb") as f:  # an install begins: 2, then 3 (the second)
            f.write(b[:14] + (b"\x03" if b[14] == 2 else b"\x02"))
        try:
            import json

            with open(root + "config.json") as f:
                kind = json.load(f).get("kind")
            m = install(root + "frag.image", kind, release_key(root + "config.json"), root)
            if m["bundle"][:8] != b[2:6].hex():  # signed and for this node all the same: the signature decides
                print("lumeau: release %s, the session was set up for %s" % (m["bundle"][:8], b[2:6].hex()))
        except Exception as e:  # refused (signature, manifest, hashes) or storage: nothing armed
            why = repr(e)
    for p in ("frag.image", "frag.coded", "frag.setup"):
        try:
            os.remove(root + p)
        except OSError:
            pass
    if why is not None:
        with open(st, "wb") as f:
            f.write(b[:14] + b"\x01" + why.encode()[:120])
    return True
