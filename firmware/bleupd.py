# Firmware updates over BLE, the node's side (SPEC §11, "Updates"): a technician's
# laptop writes a release image (.lup, SPEC §13) in chunks on the commissioning
# control characteristic, in a session; the node appends each chunk to a flash
# file as it arrives (never the whole image in RAM), says how much it holds (so a
# dropped link, or a reboot, resumes where it stopped), and on FINISH checks the
# image's hash and runs its own updater (firmware/updater.py): the signature, the
# manifest, every file; then it answers and resets into the trial.
#
#   answer = bleupd.handle(commissioning, raw, session)   # firmware/ble.py
#
# Loaded by its dotted name only when an update message arrives (firmware/ble.py),
# and dropped when the connection ends: the resident node pays none of its names
# (the lighting node is at its interned-name limit, bench/firmware_memory.py).
# It keeps no state of its own: the transfer is two flash files,
#   ble.lid  the image's size (u32, big-endian) and SHA-256, from BEGIN;
#   ble.lup  the bytes received so far, in order;
# so the offset a tool resumes from is the second file's size, whatever happened
# between (a lost link, a new session, a power cut).
#
# Authentication (no new crypto): every message is tagged with the node's downlink
# MIC key over the session's challenge and nonce (protocol.ble.update_tag), and
# every answer with its uplink key (nodeble.tag), as the session answers are. A
# message from another session (recorded, or a tool talking to someone else) does
# not verify; within a session a chunk is written only at the offset the node
# holds, so a replayed chunk adds nothing.

import hashlib
import json
import os
import struct

from protocol import nodeble as bp

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_UPDATE = const(0xA2)
_U_BEGIN = const(1)
_U_CHUNK = const(2)
_U_FINISH = const(3)
_U_HELD = const(0)
_U_INSTALLED = const(1)
_U_REFUSED = const(2)
_UPDATE_HEAD = const(6)
_TAG_LEN = const(8)
_UPDATE_TEXT_MAX = const(120)
_IMAGE_MAX = const(4300000)  # 64 files of 64 KiB, a 4 KB manifest, header and signature
_SPARE = const(16384)  # flash left free beside the image: the slot it is staged into needs room too
_RESET_MS = const(1500)  # the answer's notifications go out before the reset


def _answer(c, session, status, held, text=""):
    a = struct.pack(">BBI", _UPDATE, status, held) + text.encode()[:_UPDATE_TEXT_MAX]
    return a + bp.tag(c.node.keys, a, session or bytes(16))


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _drop(root):
    for p in ("ble.lup", "ble.lid"):
        try:
            os.remove(root + p)
        except OSError:
            pass


def _config(root):
    with open(root + "config.json") as f:
        return json.load(f)


def handle(c, raw, session):
    """One update message written to the control characteristic; the answer's bytes."""
    root = getattr(c, "fs", "/")
    keys = c.node.keys
    n = len(raw) - _TAG_LEN
    if session is None or n < _UPDATE_HEAD:
        return _answer(c, session, _U_REFUSED, 0, "not authenticated: open a session first")
    # the tool's tag, with the downlink key (protocol.ble.update_tag)
    if keys.mic_down.digest(raw[:n], keys.node_id.to_bytes(4, "big"), session)[:_TAG_LEN] != raw[n:]:
        c.refused += 1
        return _answer(c, session, _U_REFUSED, 0, "not authenticated: not this node's key or session")
    op, off = struct.unpack(">BI", raw[1:_UPDATE_HEAD])
    data = raw[_UPDATE_HEAD:n]
    lup = root + "ble.lup"
    try:
        if op == _U_BEGIN:
            return _begin(c, session, root, raw[2:_UPDATE_HEAD] + data, off)
        try:
            with open(root + "ble.lid", "rb") as f:
                ident = f.read()
        except OSError:
            return _answer(c, session, _U_REFUSED, 0, "no update under way: begin again")
        size = struct.unpack(">I", ident[:4])[0]
        held = max(_size(lup), 0)
        if op == _U_CHUNK:
            if off == held and data and held + len(data) <= size:
                with open(lup, "ab") as f:
                    f.write(data)
                held += len(data)
            return _answer(c, session, _U_HELD, held)  # elsewhere: not written, the tool goes on from here
        if op == _U_FINISH:
            return _finish(c, session, root, ident, size, held)
        return _answer(c, session, _U_REFUSED, held, "unknown update message %d" % op)
    except OSError as e:
        _drop(root)
        return _answer(c, session, _U_REFUSED, 0, "storage: %r" % e)


def _begin(c, session, root, ident, size):
    if len(ident) != 36 or not 0 < size <= _IMAGE_MAX:
        return _answer(c, session, _U_REFUSED, 0, "malformed begin (size %d)" % size)
    try:
        k = _config(root).get("release_key")
    except (OSError, ValueError):
        k = None
    if type(k) is not str or len(k) != 64:
        return _answer(c, session, _U_REFUSED, 0, "no release_key in the node's config: updates are disabled")
    try:
        with open(root + "ab.json") as f:
            trial = json.load(f).get("t")
    except (OSError, ValueError, AttributeError):
        trial = None  # no A/B state: the factory release runs
    if trial:  # the updater would refuse it after the whole transfer (firmware/slots.py)
        return _answer(c, session, _U_REFUSED, 0, "a release is already on trial: update once it is committed")
    lid = root + "ble.lid"
    try:
        with open(lid, "rb") as f:
            same = f.read() == ident
    except OSError:
        same = False
    held = _size(root + "ble.lup")
    if not same or held > size:
        _drop(root)  # another image: start over
        with open(lid, "wb") as f:
            f.write(ident)
        held = 0
    held = max(held, 0)
    st = os.statvfs(root)
    free = st[0] * st[4]
    if size - held + _SPARE > free:
        return _answer(c, session, _U_REFUSED, held, "flash full: %d bytes free, the image needs %d" % (free, size))
    return _answer(c, session, _U_HELD, held)


def _finish(c, session, root, ident, size, held):
    if held != size:
        return _answer(c, session, _U_REFUSED, held, "image incomplete: %d of %d bytes" % (held, size))
    lup = root + "ble.lup"
    h = hashlib.sha256()
    buf = bytearray(512)
    with open(lup, "rb") as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(buf[:k] if k < 512 else buf)
    if h.digest() != ident[4:]:
        _drop(root)
        return _answer(c, session, _U_REFUSED, 0, "the image does not match the hash it began with: send it again")
    from firmware import unload, updater
    from protocol.noderelease import Refused

    try:
        cfg = _config(root)
        m = updater.install(lup, cfg["kind"], bytes.fromhex(cfg["release_key"]), root=root)
    except Refused as e:
        return _answer(c, session, _U_REFUSED, 0, str(e))
    except Exception as e:  # whatever went wrong, the node keeps running its release
        c.node.last_error = repr(e)
        return _answer(c, session, _U_REFUSED, 0, "install failed: %r" % e)
    finally:
        _drop(root)
        unload("updater", "slots", "protocol.ed25519", "protocol.noderelease")
    import asyncio

    asyncio.create_task(_reset(c.node.hal))
    return _answer(c, session, _U_INSTALLED, size, m["version"])


async def _reset(hal):
    await hal.sleep_ms(_RESET_MS)
    hal.reset()  # boot.py boots the new release on trial (firmware/slots.py)
