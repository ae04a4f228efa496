# Per-node session keys, derived from the node's provisioned root key.
#
# One 128-bit root key is provisioned per node; every key used on the air is
# derived from it with HKDF-SHA256 (RFC 5869), bound to the node id and to
# its purpose, so a frame sealed for one direction or one node never verifies
# for another. See protocol/SPEC.md, "Keys".

from protocol.crypto import HmacKey, hkdf_sha256

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

ROOT_KEY_LEN = 16
_MIC_KEY_LEN = const(32)  # full SHA-256 block-size key: no reason to derive less
_ENC_KEY_LEN = const(16)  # AES-128

# HKDF salt b"lumeau/v1" and info labels b"lumeau mic up", b"lumeau mic down",
# b"lumeau enc" (+ the node id), SPEC "Keys": written inline below, since a
# module-level name costs a node heap and only NodeKeys uses them.


def _info(label, node_id):
    return label + node_id.to_bytes(4, "big")


class NodeKeys:
    """The derived keys of one node.

    `mic_up` / `mic_down` are HmacKey objects (pads precomputed); `enc` is the
    raw AES-128 key. The root key itself is not kept. `__repr__` never shows
    key material, so a NodeKeys can be logged safely.
    """

    def __init__(self, node_id, root_key):
        if not (0 <= node_id <= 0xFFFFFFFF):
            raise ValueError("node id must be a 32-bit unsigned integer")
        root_key = bytes(root_key)
        if len(root_key) != ROOT_KEY_LEN:
            raise ValueError("root key must be 16 bytes")
        self.node_id = node_id
        self.mic_up = HmacKey(hkdf_sha256(root_key, b"lumeau/v1", _info(b"lumeau mic up", node_id), _MIC_KEY_LEN))
        self.mic_down = HmacKey(hkdf_sha256(root_key, b"lumeau/v1", _info(b"lumeau mic down", node_id), _MIC_KEY_LEN))
        self.enc = hkdf_sha256(root_key, b"lumeau/v1", _info(b"lumeau enc", node_id), _ENC_KEY_LEN)

    def mic_key(self, downlink):
        return self.mic_down if downlink else self.mic_up

    def __repr__(self):
        return "NodeKeys(node_id=0x%08x, <keys hidden>)" % self.node_id
