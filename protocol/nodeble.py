# The node's half of protocol/ble.py: what firmware/ble.py needs of the
# commissioning profile (SPEC §11) beyond numbers -- its UUIDs, the
# advertised name, the answers' tag and two byte layouts. protocol/ble.py
# re-exports all of it; a node whose config enables BLE loads this module
# only, so ble.py's public names (status keys, refusal codes...) cost it no
# heap: firmware/ble.py keeps private const() copies of the numbers it uses
# (tests/test_node_consts.py checks them).

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_TAG_LEN = const(8)  # ble.TAG_LEN

# The commissioning service and its characteristics, in this order: service,
# status (read), alarms (read), control (write, notify); protocol/ble.py names them.
COMMISSIONING = (
    "1d310003-5046-4915-b8a2-0ff7f1a1f6f9",
    "1d310004-5046-4915-b8a2-0ff7f1a1f6f9",
    "1d310005-5046-4915-b8a2-0ff7f1a1f6f9",
    "1d310006-5046-4915-b8a2-0ff7f1a1f6f9",
)
NAME = b"Lumeau"  # the advertised local name


def tag(keys, answer, session):
    """The tag of a node's answer: HMAC-SHA256(uplink MIC key, answer || node id || session)[:8].

    `answer` starts with SESSION or REFUSED (version bits 101: never a frame's
    first byte, so a tag is never a frame's MIC); `session` is the tool's
    challenge and the node's nonce (16 bytes; zeros before any session).
    """
    return keys.mic_up.digest(answer, keys.node_id.to_bytes(4, "big"), session)[:_TAG_LEN]


def uuid_le(uuid):
    """A 128-bit UUID's bytes as advertising data carries them: little-endian."""
    return bytes(reversed(bytes.fromhex(uuid.replace("-", ""))))


def version_bytes(text):
    """The service data's firmware field: "x.y.z" -> 3 bytes (anything else counts as 0)."""
    out = bytearray(3)
    i = 0
    for part in text.split("."):
        if i < 3:
            try:
                out[i] = int(part) & 0xFF
            except ValueError:
                pass
        i += 1
    return bytes(out)
