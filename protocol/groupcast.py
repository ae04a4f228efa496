# LoRa multicast to a group of mains-powered lamps (issue 11; SPEC §5 "Groups").
#
# A group has an address (1..GROUP_ADDR_MAX) and, per key generation `gen`, one
# 128-bit group key derived from the gateway's group master secret:
#
#   group key = HKDF-SHA256(master, "lumeau/v1", "lumeau group key" || addr (4) || gen (4), 16)
#
# (derived, not drawn: one (addr, gen) has exactly one key, so the pad a key travels
# under, wrap_pad below (protocol/nodegroup.py `mask`), never covers two different keys, even after a
# gateway database is restored from a backup). The key reaches each member in a unicast
# COMMAND `join_group` (OP_JOIN_GROUP), wrapped under that member's own key: never in
# clear. A GROUP_COMMAND frame is the ordinary frame layout (SPEC §1) with the group
# address where the node id goes, the group counter, a COMMAND body, and the MIC under
# the group's MIC key. The node side is protocol/nodegroup.py + firmware/group.py;
# the gateway's is gateway/groups.py and gateway/multicast.py.

from protocol import frame
from protocol.crypto import hkdf_sha256
from protocol.messages import GROUP_COMMAND, OP_JOIN_GROUP
from protocol.nodegroup import mask, mic_key, verify  # the node's part

mic_ok = verify  # mic_ok(mic key, raw): the frame's MIC checks

GROUP_ADDR_MIN = 1
GROUP_ADDR_MAX = 0xFFFF  # 3 bytes of CBOR at most: the join COMMAND must fit 51 B
GROUP_GEN_MAX = 0x7FFFFFFF  # an int32 COMMAND argument
GROUP_COUNTER_MAX = 0x7FFFFFFE  # `next` is an int32 argument: the gateway rotates the key (gen + 1) before
GROUP_KEY_LEN = 16
GROUPS_MAX = 4  # groups a lamp can be a member of at once (LoRaWAN TS005 has 4 slots too)
MCAST_ID_BASE = 0x80000000  # command ids of multicast commands: CMD_ACK 0 >= this names a group command
ACK_SPREAD_S = 60  # a member answers a GROUP_COMMAND with a CMD_ACK after a random 0..this s
JOIN_ARGS = 7  # [addr, gen, next, w0, w1, w2, w3]
GROUP_FREQ_HZ = 869525000  # GROUP_COMMANDs go on EU868's RX2 channel (sub-band g3, 10 %), where members listen
GROUP_SF = 9  # ... at SF9 (SPEC §5 "Groups"; gateway/multicast.py sends there)


def group_key(master, addr, gen):
    """The key of group `addr` at generation `gen`, from the gateway's 16-byte group master."""
    master = bytes(master)
    if len(master) != GROUP_KEY_LEN:
        raise ValueError("the group master secret must be 16 bytes")
    check_addr(addr)
    if not 0 <= gen <= GROUP_GEN_MAX:
        raise ValueError("group key generation out of range 0..%d" % GROUP_GEN_MAX)
    return hkdf_sha256(master, b"lumeau/v1", b"lumeau group key" + addr.to_bytes(4, "big") + gen.to_bytes(4, "big"), 16)


def check_addr(addr):
    if type(addr) is not int or not GROUP_ADDR_MIN <= addr <= GROUP_ADDR_MAX:
        raise ValueError("group address must be an integer %d..%d" % (GROUP_ADDR_MIN, GROUP_ADDR_MAX))


def wrap_pad(keys, addr, gen):
    """The 16-byte pad a group key of (addr, gen) travels under to the node of `keys`
    (protocol/nodegroup.py `mask` XORs a key with it)."""
    return mask(keys, addr, gen, bytes(16))


def xor16(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def _words(b):
    # 16 bytes -> four signed int32 (COMMAND arguments are int32)
    out = []
    for i in range(0, 16, 4):
        v = int.from_bytes(b[i : i + 4], "big")
        out.append(v - (1 << 32) if v >= 1 << 31 else v)
    return out


def _unwords(ws):
    out = bytearray(16)
    for i in range(4):
        out[4 * i : 4 * i + 4] = (ws[i] & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(out)


def join_args(keys, addr, gen, next_counter, key):
    """The join_group arguments giving `key` (addr, gen) to the node of `keys`, wrapped.

    `next_counter` is the group counter of the group's next frame: the member takes
    only counters at or above it, so frames sent before it joined never count.
    """
    check_addr(addr)
    if not 0 <= next_counter <= GROUP_COUNTER_MAX:
        raise ValueError("group counter out of range 0..%d: rotate the group key" % GROUP_COUNTER_MAX)
    if len(key) != GROUP_KEY_LEN:
        raise ValueError("a group key is 16 bytes")
    return [addr, gen, next_counter] + _words(mask(keys, addr, gen, key))


def unwrap_args(keys, args):
    """join_group arguments -> (addr, gen, next counter, group key); what a member does."""
    if len(args) != JOIN_ARGS:
        raise ValueError("join_group takes %d arguments" % JOIN_ARGS)
    addr, gen, nxt = args[0], args[1], args[2]
    return addr, gen, nxt, mask(keys, addr, gen, _unwords(args[3:]))


def join_body(keys, command_id, addr, gen, next_counter, key):
    """The COMMAND body of a join (no expiry: it would not fit 51 B, and a join is idempotent)."""
    return {0: command_id, 1: OP_JOIN_GROUP, 2: join_args(keys, addr, gen, next_counter, key)}


def seal(key, addr, counter, body):
    """A GROUP_COMMAND frame: `body` (COMMAND CBOR) to group `addr`, with group counter `counter`."""
    check_addr(addr)
    if not 0 <= counter <= GROUP_COUNTER_MAX:
        raise ValueError("group counter out of range")
    n = len(body)
    if n < 1 or frame.HEADER_LEN + n + frame.MIC_LEN > frame.MAX_LEN:
        raise ValueError("body length %d does not fit a frame" % n)
    head = bytes([(1 << 5) | GROUP_COMMAND]) + addr.to_bytes(4, "big") + counter.to_bytes(4, "big")
    raw = head + bytes(body)
    return raw + mic_key(key, addr).digest(raw)[: frame.MIC_LEN]


def open_frame(key, raw):
    """Check a GROUP_COMMAND frame against a group key -> (addr, counter, body CBOR).

    Raises frame.MalformedFrame (not a group frame) or frame.BadMIC. Replay is the
    caller's: a member keeps the next counter it takes per group (SPEC §5 "Groups").
    """
    f = frame.parse(raw)
    if f.mtype != GROUP_COMMAND or f.encrypted:
        raise frame.MalformedFrame("not a GROUP_COMMAND frame (type %d)" % f.mtype)
    if not verify(mic_key(key, f.node_id), f.raw):
        raise frame.BadMIC("group MIC mismatch for group %d counter %d" % (f.node_id, f.counter))
    return f.node_id, f.counter, f.body
