"""`lumeau node provision --release-key PUBHEX|FILE`: the release public key in the node's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.registry import Registry
from lumeau import release
from lumeau.cli import main as lumeau_main


def provision(tmp_path: Path, *extra: str, out: str = "node.json") -> int:
    return lumeau_main(
        [
            "node",
            "provision",
            "--kind",
            "lighting",
            "--new-registry",
            "--registry",
            str(tmp_path / "nodes.toml"),
            "--out",
            str(tmp_path / out),
            *extra,
        ]
    )


def test_the_public_key_from_release_key_hex_or_a_pem_file_lands_in_the_config(tmp_path, capsys):
    priv = tmp_path / "release.pem"
    pub = release.generate_key(priv)
    assert provision(tmp_path, "--release-key", pub.hex().upper()) == 0
    assert json.loads((tmp_path / "node.json").read_text())["release_key"] == pub.hex()

    pem = tmp_path / "release.pub.pem"
    key = release.load_key(priv).public_key()
    pem.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    template = tmp_path / "site.json"
    template.write_text(json.dumps({"release_key": "00" * 32, "report_interval_s": 600}))
    args = ("--release-key", str(pem), "--template", str(template))
    assert provision(tmp_path, *args, out="node2.json") == 0
    cfg = json.loads((tmp_path / "node2.json").read_text())
    assert cfg["release_key"] == pub.hex() and cfg["report_interval_s"] == 600  # over the template's, the rest kept
    assert pub.hex() not in capsys.readouterr().out  # the config has it; the output does not need it
    assert len(Registry.load(tmp_path / "nodes.toml")) == 2


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda d: "ab" * 31, "neither 64 hex digits"),
        (lambda d: "zz" * 32, "neither 64 hex digits"),
        (lambda d: str(d / "missing.pem"), "neither 64 hex digits"),
        (lambda d: _write(d / "junk.pem", b"-----BEGIN PUBLIC KEY-----\nnope\n"), "not a PEM public key"),
        (lambda d: _write(d / "priv.pem", _ed25519_private()), "a private key"),
        (lambda d: _write(d / "ec.pem", _ec_public()), "not Ed25519"),
    ],
)
def test_a_bad_release_key_is_refused_and_nothing_is_written(tmp_path, capsys, make, why):
    assert provision(tmp_path, "--release-key", make(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("lumeau node provision: ") and why in err
    assert "PRIVATE" not in err
    assert not (tmp_path / "node.json").exists() and not (tmp_path / "nodes.toml").exists()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _ed25519_private() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ec_public() -> bytes:
    return (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
