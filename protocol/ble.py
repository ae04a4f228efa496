# BLE (protocol/SPEC.md §11): the GATT UUIDs of the frame transport (the
# gateway's gateway/transports/ble.py) and the commissioning profile a node
# (firmware/ble.py, MicroPython) and the technician's tool
# (lumeau/ble_tools.py, CPython) must agree on -- the UUIDs, the
# advertisement's name and service data, the status map's keys, the refusal
# codes. A node never loads this module: its part (the UUIDs, the name, the
# tag and the byte layouts) is protocol/nodeble.py, re-exported here, and
# firmware/ble.py keeps private const() copies of the numbers below.

from protocol.nodeble import COMMISSIONING, NAME, tag, uuid_le, version_bytes  # noqa: F401  # the node's part

# Transport: frames in the §8 framing; the service data holds the node id (4 bytes, big-endian).
TRANSPORT_SERVICE_UUID = "1d310001-5046-4915-b8a2-0ff7f1a1f6f9"
FRAMES_UUID = "1d310002-5046-4915-b8a2-0ff7f1a1f6f9"  # notify, write, write without response

# Commissioning (the strings are protocol/nodeble.py's COMMISSIONING: 1d310003- to 1d310006-...):
# the service; status (read: CBOR map, keys ST_* below); alarms (read: CBOR array of EVENT
# bodies, oldest first); control (write, notify: frames in the serial framing, §8).
SERVICE_UUID, STATUS_UUID, ALARMS_UUID, CONTROL_UUID = COMMISSIONING
# NAME, the advertised local name: protocol/nodeble.py

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

# Firmware updates over BLE (SPEC §11, "Updates"): a release image (.lup, SPEC §13) written
# in chunks on the control characteristic, in a session. The tool writes
#   UPDATE op offset(u32) data tag(8)      tag: update_tag() over the session
# and the node answers
#   UPDATE status offset(u32) text tag(8)  tag: tag() (the node's), over the session.
UPDATE = 0xA2
U_BEGIN = 1  # offset = the image's size; data = its SHA-256 (32 bytes)
U_CHUNK = 2  # offset = where data goes in the image; data = 1..UPDATE_CHUNK_MAX bytes
U_FINISH = 3  # offset = the image's size; no data: the node checks the hash and installs
U_HELD = 0  # the node holds `offset` bytes of this image (the next chunk goes there)
U_INSTALLED = 1  # installed and armed for trial (text = the version); the node resets
U_REFUSED = 2  # refused (text = why); the transfer is dropped and nothing else changed
UPDATE_HEAD = 1 + 1 + 4  # UPDATE, op or status, offset
UPDATE_CHUNK_MAX = 255 - UPDATE_HEAD - TAG_LEN  # a message is one §8 frame of at most 255 bytes
UPDATE_TEXT_MAX = 120


def update_tag(keys, message, session):
    """The tag of a tool's update message: HMAC-SHA256(downlink MIC key, message || node id || session)[:8].

    The downlink key (the node's answers use the uplink one): an answer can never pass for a
    message. UPDATE's version bits are 101, as SESSION's: never a frame's first byte.
    """
    return keys.mic_down.digest(message, keys.node_id.to_bytes(4, "big"), session)[:TAG_LEN]
