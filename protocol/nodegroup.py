# The group (multicast) code a node runs, SPEC §5 "Groups": unwrap a group key
# received in a join_group COMMAND, derive the group's MIC key, and check a
# GROUP_COMMAND frame's MIC. protocol/groupcast.py (the gateway's side: keys
# from the group master, wrapping, sealing, the sizes) re-exports it. Loaded
# only by a lamp that is a member of a group (firmware/group.py).

from protocol.crypto import HmacKey, ct_equal, hkdf_sha256

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_MIC_LEN = const(4)


def _b4(v):
    return v.to_bytes(4, "big")


def wrap_pad(keys, addr, gen):
    """The 16-byte pad a group key of (addr, gen) travels under to the node of `keys`.

    HKDF-SHA256 with the node's downlink MIC key as input key material (HKDF-Extract
    hashes it under the salt: a key hierarchy, like TS005's McKEKey below the
    node's root): unique per (node, group address, key generation), and one
    (addr, gen) has one key only, so a pad never covers two different keys.
    """
    return hkdf_sha256(
        keys.mic_down.key, b"lumeau/v1", b"lumeau group wrap" + _b4(keys.node_id) + _b4(addr) + _b4(gen), 16
    )


def xor16(a, b):
    out = bytearray(16)
    for i in range(16):
        out[i] = a[i] ^ b[i]
    return bytes(out)


def mic_key(group_key, addr):
    """The HMAC key of the group's frames: HKDF(group key, "lumeau group mic" || addr)."""
    return HmacKey(hkdf_sha256(group_key, b"lumeau/v1", b"lumeau group mic" + _b4(addr), 32))


def mic_ok(mkey, raw):
    """True when the last 4 bytes of `raw` are its MIC under the group MIC key `mkey`."""
    return ct_equal(mkey.digest(raw[:-_MIC_LEN])[:_MIC_LEN], raw[-_MIC_LEN:])
