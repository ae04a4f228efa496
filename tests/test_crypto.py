"""protocol.crypto and protocol.keys: standard constructions, checked against
published vectors and against independent implementations (hmac, cryptography)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import crypto, keys

# RFC 5869, Appendix A: test cases 1 and 3 (SHA-256).
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize("ikm,salt,info,length,okm", RFC5869)
def test_hkdf_rfc5869_vectors(ikm, salt, info, length, okm):
    out = crypto.hkdf_sha256(bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info), length)
    assert out.hex() == okm


@settings(max_examples=100, deadline=None)
@given(
    ikm=st.binary(min_size=1, max_size=64),
    salt=st.binary(max_size=64),
    info=st.binary(max_size=64),
    length=st.integers(1, 255),
)
def test_hkdf_matches_cryptography(ikm, salt, info, length):
    ref = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert crypto.hkdf_sha256(ikm, salt, info, length) == ref


@settings(max_examples=100, deadline=None)
@given(key=st.binary(max_size=100), parts=st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_hmac_portable_path_matches_stdlib(key, parts):
    ref = hmac.new(key, b"".join(parts), hashlib.sha256).digest()
    k = crypto.HmacKey(key)
    assert k._inner is not None  # CPython: the pads' hash states are copied per message
    assert k.digest(*parts, b"") == ref
    assert k.digest(b"".join(parts)) == ref
    k._inner = None  # as on MicroPython, whose sha256 has no copy()
    # Several parts force the hand-written path that boards without hmac use.
    assert k.digest(*parts, b"") == ref
    assert k.digest(b"".join(parts)) == ref


def test_ct_equal_portable_path(monkeypatch):
    monkeypatch.setattr(crypto, "_compare_digest", None)
    assert crypto.ct_equal(b"abcd", b"abcd")
    assert not crypto.ct_equal(b"abcd", b"abce")
    assert not crypto.ct_equal(b"abcd", b"abc")


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=16, max_size=16), iv=st.binary(min_size=16, max_size=16), data=st.binary(max_size=300))
def test_ctr_from_ecb_matches_cryptography_ctr(key, iv, data):
    """The board path (CTR built from ECB, as with cryptolib) equals a real CTR mode,
    including the counter wrapping past 2**128."""
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    ours = crypto.ctr_from_ecb(ecb.update, iv, data)
    ctr = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    assert ours == ctr.update(data) + ctr.finalize()
    assert crypto.aes128_ctr(key, iv, ours) == data


def test_ctr_counter_wraps():
    key = bytes(16)
    iv = b"\xff" * 16
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    ctr = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    data = bytes(40)
    assert crypto.ctr_from_ecb(ecb.update, iv, data) == ctr.update(data)


def test_aes_rejects_bad_sizes():
    with pytest.raises(ValueError):
        crypto.aes128_ctr(bytes(15), bytes(16), b"x")


def test_node_keys_are_separate_per_direction_node_and_purpose():
    root = bytes(range(16))
    a = keys.NodeKeys(1, root)
    b = keys.NodeKeys(2, root)
    assert a.mic_up.key != a.mic_down.key
    assert a.mic_up.key != b.mic_up.key  # same root key on two nodes still gives distinct keys
    assert len(a.mic_up.key) == keys._MIC_KEY_LEN and len(a.enc) == keys._ENC_KEY_LEN
    # Derivation is exactly HKDF-SHA256(root, salt, label || node id), as SPEC.md says.
    ref = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"lumeau/v1", info=b"lumeau mic up" + (1).to_bytes(4, "big")
    ).derive(root)
    assert a.mic_up.key == ref


def test_node_keys_repr_hides_key_material():
    root = bytes.fromhex("00112233445566778899aabbccddeeff")
    k = keys.NodeKeys(0x1234, root)
    text = repr(k) + str(k)
    for secret in (root, k.mic_up.key, k.mic_down.key, k.enc):
        assert secret.hex() not in text
        assert repr(secret) not in text


@pytest.mark.parametrize("node_id,root", [(-1, bytes(16)), (1 << 32, bytes(16)), (1, bytes(15)), (1, bytes(17))])
def test_node_keys_validate_inputs(node_id, root):
    with pytest.raises(ValueError):
        keys.NodeKeys(node_id, root)
