# Cryptographic primitives for the wire protocol, on MicroPython and CPython.
#
# Only standard constructions: HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869)
# and AES-128 in CTR mode (NIST SP 800-38A). Nothing here is home-made
# cryptography; it is the glue a board needs because its firmware may lack
# micropython-lib's `hmac` and its `cryptolib` offers ECB and CBC only.
#
# On CPython the C implementations (hmac.digest, `cryptography`) are used when
# present; the portable code paths stay tested on CPython too.

import hashlib

try:
    from hmac import compare_digest as _compare_digest
    from hmac import digest as _hmac_digest
except ImportError:  # MicroPython: micropython-lib hmac has neither
    _compare_digest = None
    _hmac_digest = None

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_BLOCK = const(64)  # SHA-256 block size in bytes


def _xor_byte(data, value):
    out = bytearray(data)
    for i in range(len(out)):
        out[i] ^= value
    return bytes(out)


class HmacKey:
    """An HMAC-SHA256 key with its pads computed once.

    Where hash states can be copied (CPython), the padded keys are hashed
    once too (RFC 2104, section 4): a MIC then costs two SHA-256 blocks and
    no HMAC set-up -- 0.6 us where hmac.digest takes 1.5 us under OpenSSL 3,
    on the gateway's hot path. MicroPython's sha256 objects cannot be
    copied, so the best a node can do is keep the padded keys instead of
    re-deriving them for every frame.
    """

    def __init__(self, key):
        key = bytes(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        self.key = key
        key = key + bytes(_BLOCK - len(key))
        self._ipad = _xor_byte(key, 0x36)
        self._opad = _xor_byte(key, 0x5C)
        inner = hashlib.sha256(self._ipad)
        if hasattr(inner, "copy"):
            self._inner = inner
            self._outer = hashlib.sha256(self._opad)
        else:
            self._inner = None

    def digest(self, *parts):
        inner = self._inner
        if inner is not None:
            h = inner.copy()
            for p in parts:
                h.update(p)
            o = self._outer.copy()
            o.update(h.digest())
            return o.digest()
        if _hmac_digest is not None and len(parts) == 1:
            return _hmac_digest(self.key, parts[0], "sha256")
        h = hashlib.sha256(self._ipad)
        for p in parts:
            h.update(p)
        return hashlib.sha256(self._opad + h.digest()).digest()


def hmac_sha256(key, msg):
    return HmacKey(key).digest(msg)


def hkdf_sha256(ikm, salt, info, length):
    """HKDF-SHA256 extract-then-expand (RFC 5869)."""
    if length > 255 * 32:
        raise ValueError("hkdf: length too large")
    if not salt:
        salt = bytes(32)  # RFC 5869 2.2: a string of HashLen zeros
    prk = HmacKey(hmac_sha256(salt, ikm))
    out = b""
    t = b""
    i = 1
    while len(out) < length:
        t = prk.digest(t + info + bytes((i,)))
        out += t
        i += 1
    return out[:length]


def ct_equal(a, b):
    """Compare two byte strings in time independent of where they differ."""
    if _compare_digest is not None:
        return _compare_digest(a, b)
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def ctr_from_ecb(encrypt_block, iv, data):
    """AES-CTR built from a raw block encryption (SP 800-38A, 6.5).

    The 16-byte counter block is incremented as one big-endian integer, as
    `cryptography`'s CTR mode does, so both sides produce the same stream.
    """
    out = bytearray(data)
    ctr = int.from_bytes(iv, "big")
    for off in range(0, len(out), 16):
        ks = encrypt_block(ctr.to_bytes(16, "big"))
        for j in range(min(16, len(out) - off)):
            out[off + j] ^= ks[j]
        ctr = (ctr + 1) & ((1 << 128) - 1)
    return bytes(out)


def aes128_ctr(key, iv, data):
    """Encrypt or decrypt `data` with AES-128-CTR (the same operation both ways)."""
    if len(key) != 16 or len(iv) != 16:
        raise ValueError("aes128_ctr: key and iv must be 16 bytes")
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        pass
    else:
        enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return enc.update(data) + enc.finalize()
    try:
        import cryptolib
    except ImportError:
        raise NotImplementedError("encryption needs cryptolib (or cryptography on CPython)")
    ecb = cryptolib.aes(key, 1)  # mode 1 = ECB; every board that has cryptolib has it
    return ctr_from_ecb(ecb.encrypt, iv, data)
