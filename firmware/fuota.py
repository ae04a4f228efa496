# An update over LoRa on the node (SPEC §13 "Over LoRa"): a fragment session's frames and
# status, reassembly into a flash file, then the updater. Loaded by string name
# (firmware/runtime.py: __import__("firmware.fuota")) at the first fragment frame or status
# request, so a node without a session loads none of its names (the lighting node's qstr
# pool is full, SPEC §13 "Sizes"). The frames reach rx() already checked: MIC under the
# node's or the group's key, counter at or above the next one, written before acting.
#
# Heap during a session: the decoder's two bitmaps of N bits, a list entry per kept coded row,
# two F-byte buffers; the image and the coded rows live in /frag.lup and /frag.rows.
# When the image is complete it goes to firmware/updater.py install() (signature, manifest,
# every hash; a refusal wipes the free slot) and the node reboots into the trial.

import os

from protocol import nodefrag as nf

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.fragments / messages numbers, as private consts (tests/test_node_consts.py checks them)
_SETUP = const(1)
_DATA = const(2)
_DATA_HEAD = const(4)
_ST_NO_SESSION = const(1)
_ST_REFUSED = const(2)
_RES_OK = const(0)
_RES_REFUSED = const(4)
_OP_REBOOT = const(9)
_IMG = "/frag.lup"
_ST = "/frag.st"  # the session's SETUP body: a reboot (or a battery node's deep sleep) resumes it
_ROWS = "/frag.rows"
_KINDS = ("", "lighting", "irrigation")

# the session: [id, bundle prefix (4 bytes), Decoder, refused]; None when there is none
_s = None


def _drop():
    global _s
    if _s is not None:
        _s[2].close()
    _s = None
    for p in (_ST, _IMG, _ROWS):
        try:
            os.remove(p)
        except OSError:
            pass


def _open(x, resume):
    # the session of SETUP body x; resume: its files after a reboot or a deep sleep
    sid, b, size, f, n, _ = nf.setup(x)
    return [sid, b, nf.Decoder(_IMG, _ROWS, size, f, n, resume), False]


def rx(node, x):
    """A fragment frame's body (bytes), or a status request's COMMAND args (a list): for the
    latter (result, value). A body that is refused raises ValueError (the runtime counts it
    rx_rejected, its text in last_error) and changes nothing. Without a session (none, or
    done) this module leaves the heap again: a status request after the update's reboot, or
    a stray fragment, does not keep its code."""
    try:
        return _rx(node, x)
    finally:
        if _s is None:
            from firmware import unload

            unload("fuota", "protocol.nodefrag")


def _rx(node, x):
    global _s
    if _s is None:
        try:
            with open(_ST, "rb") as f:
                _s = _open(f.read(), True)
        except (OSError, ValueError):
            pass  # none, or unreadable: no session
    if type(x) is list or type(x) is tuple:
        if _s is None or len(x) != 1 or x[0] != _s[0]:
            return _RES_REFUSED, _ST_NO_SESSION
        if _s[3]:
            return _RES_REFUSED, _ST_REFUSED
        return _RES_OK, _s[2].missing
    k = x[0]
    if k == _SETUP:
        sid, b = nf.setup(x)[:2]  # refused (ValueError) before anything changes
        if _s is not None and _s[0] == sid and _s[1] == b:
            return None  # the set-up again (repeated for nodes that missed it)
        _drop()
        _s = _open(x, False)
        with open(_ST, "wb") as f:
            f.write(x)
        return None
    if k != _DATA or len(x) < _DATA_HEAD:
        raise ValueError("not a fragment frame")
    if _s is None or x[1] != _s[0]:
        raise ValueError("fragment of session %d: not this node's session" % x[1])
    if _s[3]:
        return None
    d = _s[2]
    if d.add(int.from_bytes(x[2:4], "big"), x[_DATA_HEAD:]):  # a wrong length raises, nothing written
        _install(node)
    return None


def _install(node):
    global _s
    s = _s
    s[2].close()
    from firmware import unload, updater

    try:
        m = updater.install(_IMG, _KINDS[node.kind], updater.release_key())
        if m["bundle"][:8] != s[1].hex():  # signed and for this node all the same: say so, the signature decides
            node.last_error = "release %s, the session was set up for %s" % (m["bundle"][:8], s[1].hex())
    except Exception as e:  # refused (signature, manifest, hashes) or storage: nothing armed
        s[3] = True
        node.last_error = repr(e)
        return
    finally:
        for p in (_ST, _IMG, _ROWS):
            try:
                os.remove(p)
            except OSError:
                pass
        unload("updater", "slots", "protocol.noderelease", "protocol.ed25519")
    _s = None  # done: the reboot forgets it anyway
    node.execute(_OP_REBOOT, (), 0)  # armed: reboot into the trial once the queue is out, as a reboot command
