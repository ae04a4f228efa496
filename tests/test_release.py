"""Signed releases on the host (lumeau/release.py, `lumeau node release-key|release`) and the
node-side checks they feed (protocol/ed25519.py, protocol/noderelease.py) run on CPython
against the `cryptography` library. The same checks under real MicroPython:
tests/micropython/mp_release.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import release_vectors_gen
from conftest import ROOT
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from lumeau import bundle as bundles
from lumeau import release as releases
from protocol import ed25519, expand, nodemsg
from protocol import noderelease as rel

LUMEAU = [sys.executable, "-m", "lumeau"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LUMEAU, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_committed_vectors_are_what_the_generator_makes():
    ns: dict = {}
    exec((ROOT / "tests" / "micropython" / "release_vectors.py").read_text(), ns)
    for name, v in release_vectors_gen.vectors().items():
        assert ns[name] == v, f"{name}: run .venv/bin/python tests/release_vectors_gen.py"


def test_pure_python_ed25519_agrees_with_cryptography():
    for i in range(20):
        key = Ed25519PrivateKey.generate()
        pub = releases.public_bytes(key.public_key())
        msg = os.urandom(i * 7)
        sig = key.sign(msg)
        assert ed25519.verify(pub, sig, msg)
        assert not ed25519.verify(pub, sig, msg + b"!")
        bad = bytearray(sig)
        bad[i % 64] ^= 1 << (i % 8)
        assert not ed25519.verify(pub, bytes(bad), msg)
    # S >= L (a malleable twin of a valid signature) is refused
    key = Ed25519PrivateKey.generate()
    pub = releases.public_bytes(key.public_key())
    sig = key.sign(b"m")
    s = int.from_bytes(sig[32:], "little") + ed25519._L
    assert not ed25519.verify(pub, sig[:32] + s.to_bytes(32, "little"), b"m")


def test_sha512_fallback_agrees_with_hashlib():
    for n in (0, 1, 55, 96, 111, 112, 127, 128, 129, 300):
        m = os.urandom(n)
        assert ed25519.sha512(m) == hashlib.sha512(m).digest()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=40), st.binary(min_size=0, max_size=70), st.binary(max_size=40))
def test_verify_never_raises_on_garbage(pub, sig, msg):
    assert ed25519.verify(pub, sig, msg) in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_manifest_parser_refuses_garbage_clearly(raw):
    try:
        rel.parse_manifest(raw)
    except rel.Refused as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["format", "version", "replaces", "files", "bundle", "kind"]), st.integers()))
def test_manifest_shapes_refused(doc):
    with pytest.raises(rel.Refused):
        rel.parse_manifest(json.dumps(doc).encode())


def test_hello_with_the_bundle_id_fits_51_bytes():
    worst = nodemsg.encode(1, {0: "9" * 16, 1: 3, 2: 0xFFFF, 3: b"abcd", 4: 7, 5: b"\xff\xff\xff"})
    assert len(worst) + 13 <= 51  # 13: header and MIC (SPEC §1)
    with pytest.raises(ValueError):
        nodemsg.encode(1, {0: "0.1.0", 1: 1, 5: b"abcd"})  # exactly 3 bytes
    # the gateway names it: a rollback shows as the previous bundle id in the next HELLO
    assert expand.expand(1, {0: "0.1.1", 1: 1, 5: b"\x8c\x83\x2f"})["bundle"]["value"] == "8c832f"


@pytest.fixture(scope="module")
def bundles_dir(tmp_path_factory) -> Path:
    """A bundle of today's sources, and one of a 'typical fix' (one module changed)."""
    d = tmp_path_factory.mktemp("rel")
    bundles.build("lighting", "esp32", d / "old")
    src = d / "src"
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, src / pkg)
    up = src / "firmware" / "uplink.py"
    up.write_text(up.read_text() + "\n\ndef _fix_marker():\n    return 1\n")  # one module changes
    bundles.build("lighting", "esp32", d / "new", source_root=src)
    return d


def test_release_key_is_private_and_never_printed(tmp_path):
    p = run("node", "release-key", "--out", str(tmp_path / "k" / "release.pem"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    key_file = tmp_path / "k" / "release.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    body = "".join(key_file.read_text().splitlines()[1:-1])
    assert body not in p.stdout + p.stderr
    assert '"release_key": "' in p.stdout
    again = run("node", "release-key", "--out", str(key_file), cwd=tmp_path)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert body in key_file.read_text().replace("\n", "")  # untouched
    key_file.chmod(0o644)
    with pytest.raises(releases.ReleaseError, match="readable by others"):
        releases.load_key(key_file)


def test_release_full_and_delta(tmp_path, bundles_dir):
    key = tmp_path / "release.pem"
    assert run("node", "release-key", "--out", str(key), cwd=tmp_path).returncode == 0
    pub = releases.public_bytes(releases.load_key(key).public_key())
    full = run(
        "node", "release", "--key", str(key), "--bundle", str(bundles_dir / "new"), "--replaces", "0.0.9",
        "--version", "0.1.1", "--out", str(tmp_path / "full.lup"), cwd=tmp_path,
    )  # fmt: skip
    assert full.returncode == 0, full.stderr
    delta = run(
        "node", "release", "--key", str(key), "--bundle", str(bundles_dir / "new"), "--replaces", "0.1.0",
        "--version", "0.1.1", "--base", str(bundles_dir / "old"), "--out", str(tmp_path / "delta.lup"), cwd=tmp_path,
    )  # fmt: skip
    assert delta.returncode == 0, delta.stderr
    assert re.search(r", 1 of \d+ files,", delta.stdout), delta.stdout
    images = {}
    for name in ("full", "delta"):
        img = (tmp_path / f"{name}.lup").read_bytes()
        mlen = rel.parse_header(img[:6])
        manifest = img[6 : 6 + mlen]
        rel.check_signature(manifest, img[6 + mlen : 6 + mlen + 64], pub, ed25519.verify)
        images[name] = (img, rel.parse_manifest(manifest))
    (fimg, fm), (dimg, dm) = images["full"], images["delta"]
    assert fm["bundle"] == dm["bundle"]  # one release, two ways to ship it
    assert dm["base"] == rel.bundle_id([(f.path, f.sha256) for f in bundles.load(bundles_dir / "old").files
                                        if f.path not in bundles.SOURCE_ONLY]).hex()  # fmt: skip
    assert [f[0] for f in dm["files"] if f[3]] == ["firmware/uplink.mpy"]
    assert all(f[0].endswith(".mpy") for f in fm["files"])  # boot.py and main.py are the loader
    assert len(dimg) * 5 < len(fimg)
    # another key's signature does not pass
    other = releases.public_bytes(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(rel.Refused, match="bad signature"):
        rel.check_signature(fimg[6 : 6 + rel.parse_header(fimg)], fimg[6 + rel.parse_header(fimg) :][:64], other,
                            ed25519.verify)  # fmt: skip


def test_release_refuses_a_version_it_would_not_replace(tmp_path, bundles_dir):
    key = tmp_path / "k.pem"
    releases.generate_key(key)
    p = run("node", "release", "--key", str(key), "--bundle", str(bundles_dir / "new"), "--replaces", "0.2.0",
            "--version", "0.1.1", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 1 and "not older" in p.stderr
