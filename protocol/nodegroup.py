# The group (multicast) code a node runs, SPEC §5 "Groups": unwrap a group key
# received in a join_group COMMAND, derive the group's MIC key, and check a
# GROUP_COMMAND frame's MIC. protocol/groupcast.py (the gateway's side: keys
# from the group master, wrapping, sealing, the sizes) builds on it. Loaded
# only by a lamp that is a member of a group (firmware/group.py). Its names
# (functions and their arguments) are names a lamp has interned already
# (`mask`, `mic_key`, `verify`, `keys`, `group`, `index`, `data`, `key`, `raw`):
# a new name costs a node heap a qstr (firmware/group.py says why that matters).

from protocol.crypto import HmacKey, ct_equal, hkdf_sha256

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_MIC_LEN = const(4)


def mask(keys, group, index, data):
    """16 bytes `data` XOR the pad a group key of (address `group`, key generation `index`)
    travels under to the node of `keys`: wraps a key, and unwraps it.

    The pad is HKDF-SHA256 with the node's downlink MIC key as input key material
    (HKDF-Extract hashes it under the salt: a key hierarchy, like TS005's McKEKey
    below the node's root): unique per (node, group address, key generation), and
    one (addr, gen) has one key only, so a pad never covers two different keys.
    """
    pad = hkdf_sha256(
        keys.mic_down.key,
        b"lumeau/v1",
        b"lumeau group wrap" + keys.node_id.to_bytes(4, "big") + group.to_bytes(4, "big") + index.to_bytes(4, "big"),
        16,
    )
    out = bytearray(16)
    for n in range(16):
        out[n] = data[n] ^ pad[n]
    return bytes(out)


def mic_key(key, group):
    """The HMAC key of the frames of group address `group`: HKDF(group key, "lumeau group mic" || addr)."""
    return HmacKey(hkdf_sha256(key, b"lumeau/v1", b"lumeau group mic" + group.to_bytes(4, "big"), 32))


def verify(key, raw):
    """True when the last 4 bytes of `raw` are its MIC under the group MIC key `key` (mic_key)."""
    return ct_equal(key.digest(raw[:-_MIC_LEN])[:_MIC_LEN], raw[-_MIC_LEN:])
