# Firmware updates on the node, under real MicroPython (SPEC §13): the signature check,
# every refusal leaving the node unchanged, staging into the free A/B slot, the switch at
# boot, the boot counter's rollback, and a power cut at every filesystem step.
# Images: release_vectors.py (signed on the host by tests/release_vectors_gen.py).
import hashlib
import os
import sys

import release_vectors as V

from firmware import slots, updater
from protocol import ed25519
from protocol import noderelease as rel

_n = [0]


def fresh_root():
    """A new board filesystem root holding the factory release 0.1.0."""
    _n[0] += 1
    root = "/b%d/" % _n[0]
    os.mkdir(root[:-1])
    os.mkdir(root + "relapp")
    for p, b in V.FACTORY.items():
        with open(root + p, "wb") as f:
            f.write(b)
    return root


def put(root, name, data):
    path = root + name
    with open(path, "wb") as f:
        f.write(data)
    return path


def snapshot(d):
    out = {}
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] == 0x4000:
            out.update(snapshot(p))
        else:
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).digest()
    return out


def install(root, img_name, data=None, **kw):
    img = put(root, "upd.lup", data if data is not None else getattr(V, img_name))
    return updater.install(img, "lighting", V.PUB, root=root, target="esp32", **kw)


def boot(root):
    """What boot.py does: choose the slot; then import the release's ver module from it."""
    slot = slots.select(root)
    d = slots.directory(slot, root)
    for m in ("relapp", "relapp.ver", "relapp.util"):
        sys.modules.pop(m, None)
    sys.path.insert(0, d[:-1])
    try:
        from relapp import ver

        return slot, ver.V
    except RuntimeError as e:
        return slot, "crash: %s" % e
    finally:
        sys.path.pop(0)


def refused(root, img_name, data, why):
    before = snapshot(root[:-1])
    try:
        install(root, img_name, data, running="0.1.0")
    except rel.Refused as e:
        assert why in str(e), (img_name, str(e))
    else:
        raise AssertionError("%s was installed" % img_name)
    after = snapshot(root[:-1])
    del after[root + "upd.lup"]
    before.pop(root + "upd.lup", None)
    assert after == before, (img_name, sorted(after), sorted(before))


def test_ed25519_against_the_hosts_signatures():
    import json

    mlen = (V.FULL_011[4] << 8) | V.FULL_011[5]
    manifest = V.FULL_011[6 : 6 + mlen]
    sig = V.FULL_011[6 + mlen : 6 + mlen + 64]
    digest = hashlib.sha256(manifest).digest()
    assert ed25519.verify(V.PUB, sig, digest)
    assert not ed25519.verify(V.PUB, sig, digest[:-1] + b"x")
    assert not ed25519.verify(V.PUB, sig[:63] + bytes([sig[63] ^ 0x01]), digest)
    assert not ed25519.verify(V.PUB[:31] + bytes([V.PUB[31] ^ 0x40]), sig, digest)
    assert json.loads(manifest)["version"] == "0.1.1"


def test_sha512_fallback_matches_known_answers():
    # FIPS 180-4 examples: "abc" and the 112-byte two-block message
    assert ed25519.sha512(b"abc").hex().startswith("ddaf35a193617aba")
    assert ed25519.sha512(b"").hex().startswith("cf83e1357eefb8bd")


def test_full_release_installs_switches_and_commits():
    root = fresh_root()
    assert boot(root) == ("", "0.1.0")
    m = install(root, "FULL_011", running="0.1.0")
    assert m["version"] == "0.1.1"
    st = slots.read(root)
    assert st["t"] == "s0" and st["a"] == "" and st["id"]["s0"] == m["bundle"]
    assert boot(root) == ("s0", "0.1.1")
    assert slots.running(root) == (m["bundle"], True)
    slots.commit(root)
    assert slots.read(root)["a"] == "s0"
    for _ in range(5):  # committed: no more counting, no rollback
        assert boot(root) == ("s0", "0.1.1")
    assert slots.running(root) == (m["bundle"], False)


def test_delta_carries_one_file_and_copies_the_rest():
    root = fresh_root()
    assert len(V.DELTA_011) < len(V.FULL_011)
    install(root, "DELTA_011", running="0.1.0")
    assert boot(root) == ("s0", "0.1.1")
    with open(root + "s0/relapp/util.mpy", "rb") as a, open(root + "relapp/util.mpy", "rb") as b:
        assert a.read() == b.read()


def test_delta_refused_when_the_running_files_differ():
    # a delta carries no hash for the files it copies: the signed bundle id binds them
    root = fresh_root()
    good = V.FACTORY["relapp/util.mpy"]
    put(root, "relapp/util.mpy", good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit off
    refused(root, "DELTA_011", None, "do not make the signed bundle")
    root = fresh_root()
    put(root, "relapp/util.mpy", b"M\x06short")
    refused(root, "DELTA_011", None, "util.mpy does not match its hash")


def test_a_release_on_trial_that_never_gets_healthy_rolls_back():
    root = fresh_root()
    install(root, "FULL_011", running="0.1.0")
    for _ in range(slots.MAX_BOOTS):
        assert boot(root) == ("s0", "0.1.1")
    assert boot(root) == ("", "0.1.0")  # boot MAX_BOOTS + 1: back to the factory
    st = slots.read(root)
    assert st["rb"] == "s0" and st["t"] == "" and slots.running(root) == (None, False)


def test_a_release_that_crashes_at_boot_rolls_itself_back():
    root = fresh_root()
    install(root, "FULL_011", running="0.1.0")
    boot(root)
    slots.commit(root)
    m = install(root, "CRASH_012", running="0.1.1")  # a delta on 0.1.1's bundle
    assert slots.read(root)["t"] == "s1"
    seen = [boot(root) for _ in range(slots.MAX_BOOTS + 1)]
    assert seen[: slots.MAX_BOOTS] == [("s1", "crash: release 0.1.2 crashes at boot")] * slots.MAX_BOOTS
    assert seen[-1] == ("s0", "0.1.1")
    assert slots.read(root)["rb"] == "s1"
    assert slots.running(root)[0] != m["bundle"]


def test_refusals_leave_the_node_unchanged():
    root = fresh_root()
    full = V.FULL_011
    mlen = (full[4] << 8) | full[5]
    sig_at = 6 + mlen
    cases = [
        ("OTHER_KEY", None, "bad signature"),
        ("FULL_011", full[:sig_at] + bytes([full[sig_at] ^ 1]) + full[sig_at + 1 :], "bad signature"),
        ("FULL_011", full[:20] + b"X" + full[21:], "bad signature"),  # manifest edited after signing
        ("WRONG_KIND", None, "for irrigation nodes"),
        ("WRONG_TARGET", None, "for rp2 boards"),
        ("DOWNGRADE", None, "downgrade"),
        ("NOT_REPLACING", None, "does not replace 0.1.0"),
        ("FULL_011", full[:-10], "truncated or padded"),
        ("FULL_011", full + b"\x00", "truncated or padded"),
        ("FULL_011", full[: sig_at + 30], "truncated"),
        ("FULL_011", full[:4], "bad magic"),
        ("FULL_011", b"LUP0" + full[4:], "bad magic"),
        ("FULL_011", full[:-5] + bytes([full[-5] ^ 0x80]) + full[-4:], "does not match its hash"),
        ("LYING_HASH", None, "does not match its hash"),
    ]
    for name, data, why in cases:
        refused(root, name, data, why)
    assert "ab.json" not in os.listdir(root[:-1])
    st_root = fresh_root()  # a downgrade from the running version, per the state
    install(st_root, "FULL_011", running="0.1.0")
    refused(st_root, "FULL_011", None, "already on trial")


class PowerCut(Exception):
    pass


class _Budget:
    def __init__(self, n):
        self.left = n

    def step(self):
        self.left -= 1
        if self.left < 0:
            raise PowerCut()


class _File:
    def __init__(self, f, budget):
        self.f = f
        self.b = budget

    def write(self, data):
        if self.b.left == 0:  # the cut lands inside this write: half of it reaches flash
            self.f.write(data[: len(data) // 2])
        self.b.step()
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


class _Os:
    def __init__(self, budget):
        self.b = budget

    def __getattr__(self, name):
        real = getattr(os, name)
        if name in ("rename", "remove", "mkdir", "rmdir"):

            def op(*a):
                self.b.step()
                return real(*a)

            return op
        return real


def _cut_after(n):
    b = _Budget(n)

    def fake_open(path, mode="r"):
        f = open(path, mode)
        return _File(f, b) if "w" in mode else f

    for mod in (updater, slots):
        mod.open = fake_open
        mod.os = _Os(b)
    return b


def _restore():
    for mod in (updater, slots):
        del mod.open
        mod.os = os


def test_power_cut_at_every_step_leaves_a_bootable_node():
    cuts = 0
    n = 0
    while True:
        root = fresh_root()
        put(root, "upd.lup", V.DELTA_011)
        _cut_after(n)
        try:
            updater.install(root + "upd.lup", "lighting", V.PUB, root=root, target="esp32", running="0.1.0")
            done = True
        except (PowerCut, rel.Refused):
            done = False  # a cut inside the staging surfaces as a refusal after the slot is wiped, or as the cut
        finally:
            _restore()
        # power back: the board boots the factory (not armed yet) or the new release (armed)
        slot, v = boot(root)
        assert (slot, v) in (("", "0.1.0"), ("s0", "0.1.1")), (n, slot, v)
        if done:
            break
        cuts += 1
        if slot == "":
            # and the technician's retry then completes
            install(root, "DELTA_011", running="0.1.0")
            assert boot(root)[1] == "0.1.1"
        n += 1
    print("install: power cut at each of %d steps, every time bootable" % cuts)
    assert cuts > 10
    # a cut while select() writes the boot counter, or while commit() writes the state
    for step in range(4):
        root = fresh_root()
        install(root, "FULL_011", running="0.1.0")
        _cut_after(step)
        try:
            slots.select(root)
            slots.commit(root)
        except PowerCut:
            pass
        finally:
            _restore()
        assert boot(root)[1] in ("0.1.0", "0.1.1")


class _Node:
    rx = 0
    app_faults = 0


class _Hal:
    def __init__(self):
        self.ms = 0
        self.resets = 0

    def ticks_ms(self):
        return self.ms

    async def sleep_ms(self, ms):
        self.ms += ms

    def reset(self):
        self.resets += 1


async def test_watch_commits_a_healthy_trial_and_resets_a_silent_one():
    root = fresh_root()
    install(root, "FULL_011", running="0.1.0")
    assert boot(root)[0] == "s0"
    node, hal = _Node(), _Hal()
    node.rx = 1  # the gateway answered
    assert await slots.watch(node, hal, root) is True
    assert hal.ms >= slots.HEALTHY_MS and slots.read(root)["a"] == "s0" and hal.resets == 0
    cfg = {}
    slots.prepare(cfg, root)
    assert cfg == {"bundle": bytes.fromhex(slots.read(root)["id"]["s0"][:6]), "trial": False}

    root = fresh_root()
    install(root, "FULL_011", running="0.1.0")
    boot(root)
    node, hal = _Node(), _Hal()
    node.rx, node.app_faults = 5, 1  # heard, but the app faulted: not healthy
    assert await slots.watch(node, hal, root) is False
    assert hal.resets == 1 and hal.ms >= slots.TRIAL_MS and slots.read(root)["t"] == "s0"
    cfg = {}
    slots.prepare(cfg, root)
    assert cfg["trial"] is True


def test_any_flipped_bit_or_cut_is_refused_without_a_change():
    # every byte of an image is covered: header, manifest and signature by the signature,
    # the files by their hashes, the length by the manifest
    import random

    random.seed(12)
    root = fresh_root()
    full = V.DELTA_011
    before = snapshot(root[:-1])
    for i in range(60):
        pos = random.getrandbits(16) % len(full)
        if i % 3 == 2:
            bad = full[:pos]  # cut
        else:
            bad = full[:pos] + bytes([full[pos] ^ (1 << (i % 8))]) + full[pos + 1 :]
        put(root, "upd.lup", bad)
        try:
            updater.install(root + "upd.lup", "lighting", V.PUB, root=root, target="esp32", running="0.1.0")
        except rel.Refused:
            pass
        else:
            raise AssertionError("installed with byte %d changed" % pos)
        after = snapshot(root[:-1])
        del after[root + "upd.lup"]
        assert after == before, pos


def test_a_damaged_state_file_boots_the_factory_or_fills_defaults():
    root = fresh_root()
    put(root, "ab.json", b'{"a": "s0", "t": "')  # cut mid-write (never happens: rename) or flash damage
    assert slots.select(root) == ""
    put(root, "ab.json", b'{"a": "", "t": "", "n": "x"}')
    assert slots.running(root) == (None, False)
    install(root, "FULL_011", running="0.1.0")
    assert boot(root) == ("s0", "0.1.1")
