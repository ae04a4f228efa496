# BLE (protocol/SPEC.md §11): the GATT UUIDs of the frame transport (the
# gateway's gateway/transports/ble.py) and the commissioning profile a node
# (firmware/ble.py, MicroPython) and the technician's tool
# (lumeau/ble_tools.py, CPython) must agree on -- the UUIDs, the
# advertisement's name and service data, the status map's keys, the refusal
# codes. Imported only by a node whose config enables BLE, so a node without
# it carries this on flash but not in its heap.

# Transport: frames in the §8 framing; the service data holds the node id (4 bytes, big-endian).
TRANSPORT_SERVICE_UUID = "1d310001-5046-4915-b8a2-0ff7f1a1f6f9"
FRAMES_UUID = "1d310002-5046-4915-b8a2-0ff7f1a1f6f9"  # notify, write, write without response

# Commissioning
SERVICE_UUID = "1d310003-5046-4915-b8a2-0ff7f1a1f6f9"
STATUS_UUID = "1d310004-5046-4915-b8a2-0ff7f1a1f6f9"  # read: CBOR map, keys ST_* below
ALARMS_UUID = "1d310005-5046-4915-b8a2-0ff7f1a1f6f9"  # read: CBOR array of EVENT bodies, oldest first
CONTROL_UUID = "1d310006-5046-4915-b8a2-0ff7f1a1f6f9"  # write, notify: frames in the serial framing (§8)
NAME = b"Lumeau"  # the advertised local name

CONTROL_WRITE_MAX = 64  # the node's stack keeps at most this much of one write
SERVICE_DATA_LEN = 12  # node id u32, kind, state, open alarms, output, firmware x.y.z, flags

# state in the service data and the status
STATE_OK = 0
STATE_ALARM = 1
STATE_FAILSAFE = 2

# flags byte of the service data
FL_TIME = 0x01  # the node's wall clock is set
FL_CONFIGURE = 0x02  # it accepts CONFIG over BLE

# keys of the status characteristic's map
ST_NODE = 0  # node id
ST_KIND = 1  # node kind (messages.KIND_*)
ST_FIRMWARE = 2  # firmware version, text
ST_STATE = 3  # STATE_*
ST_REPORT = 4  # [LIGHT or IRRIGATION, the report body of now]
ST_STATUS = 5  # the STATUS body of now
ST_TOOL_TOP = 6  # top of the tool half's replay window (SPEC §4): the next tool counter is above it
ST_GATEWAY_TOP = 7  # top of the gateway's replay window
ST_COUNTERS = 8  # [uplinks sent, downlinks accepted, rejected, app faults, BLE applied, BLE refused]
ST_LAST_ERROR = 9  # the last error, text, cut short
ST_CONFIG_HASH = 10  # the config hash, 4 bytes (as in HELLO)

# Sessions (SPEC §11, "Sessions"): the tool writes SESSION challenge(8); the node draws a
# nonce and answers SESSION nonce(8) top(u32) tag. A tool frame carries the nonce (CONFIG
# key 2, TIME key 3: messages.CF_ECHO, T_ECHO); every answer that is not a frame is tagged.
SESSION = 0xA1
CHALLENGE_LEN = 8
NONCE_LEN = 8
TAG_LEN = 8
SESSION_ANSWER_LEN = 1 + NONCE_LEN + 4 + TAG_LEN

# A refusal notified on the control characteristic: REFUSED reason top(u32) tag.
REFUSED = 0xA0
REFUSAL_LEN = 1 + 1 + 4 + TAG_LEN
R_MALFORMED = 1  # not a frame, not a downlink, or a body that is not a CONFIG
R_WRONG_NODE = 2
R_UNSUPPORTED = 3  # a message type other than CONFIG or TIME
R_AUTH = 4  # the MIC does not verify with this node's key
R_REPLAY = 5  # the counter was used already: take top + 1
R_COUNTER = 6  # a gateway counter (below TOOL_COUNTER_BASE)
R_DISABLED = 7  # the config says no configuration over BLE
R_STORAGE = 8  # applied, but no uplink counter to sign the answer with
R_ECHO = 9  # the frame does not carry the nonce of this connection's session


def tag(keys, answer, session):
    """The tag of a node's answer: HMAC-SHA256(uplink MIC key, answer || node id || session)[:8].

    `answer` starts with SESSION or REFUSED (version bits 101: never a frame's
    first byte, so a tag is never a frame's MIC); `session` is the tool's
    challenge and the node's nonce (16 bytes; zeros before any session).
    """
    return keys.mic_up.digest(answer, keys.node_id.to_bytes(4, "big"), session)[:TAG_LEN]


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
