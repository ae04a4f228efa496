# Frame v1: the authenticated envelope every Lumeau message travels in.
#
#   offset  size  field
#   0       1     vt: version (bits 7-5, = 1), encrypted flag (bit 4),
#                 message type (bits 3-0; bit 3 set = downlink)
#   1       4     node id, big-endian
#   5       4     frame counter of this direction, big-endian
#   9       n     body: a CBOR map (AES-128-CTR ciphertext when encrypted)
#   9+n     4     MIC: HMAC-SHA256(direction's MIC key, bytes 0..9+n)[:4]
#
# The full layout, key derivation and replay rules are in protocol/SPEC.md.
# Everything here runs on MicroPython: no allocation beyond the frame itself
# on the seal path, and the header is parsed without touching the keys so the
# gateway can find the node's keys first.

from protocol.crypto import aes128_ctr, ct_equal

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_FORMAT = const(1)  # frame format version: the vt byte's bits 7-5
HEADER_LEN = const(9)
MIC_LEN = const(4)
_MIN_BODY = const(1)  # the smallest CBOR map, a0
_MIN_LEN = const(HEADER_LEN + _MIN_BODY + MIC_LEN)
MAX_LEN = 255  # a LoRa PHY payload; the regional budget is the caller's concern
MAX_COUNTER = 0xFFFFFFFF
# Downlink counters split in two halves (SPEC §4): the gateway seals with
# 0 .. TOOL_COUNTER_BASE - 1, commissioning tools over BLE (SPEC §11) with
# TOOL_COUNTER_BASE .. MAX_COUNTER, and a node keeps one replay window per
# half, so neither can make the other's frames look stale or reuse a counter.
TOOL_COUNTER_BASE = 0x80000000

_FLAG_ENCRYPTED = const(0x10)
DOWNLINK_BIT = 0x08
_TYPE_MASK = const(0x0F)

# Replay verdicts, from ReplayWindow.check().
ACCEPT = 0
DUPLICATE = 1  # already seen: the same frame heard twice (several radios, a retry)
STALE = 2  # older than the window: cannot tell a late copy from a replay

REPLAY_WINDOW = 32


class FrameError(ValueError):
    """A frame that cannot be accepted; `reason` is a short stable tag for counters."""

    reason = "malformed"


class MalformedFrame(FrameError):
    reason = "malformed"


class BadMIC(FrameError):
    reason = "bad_mic"


class ReplayedFrame(FrameError):
    """Raised by callers that want an exception for a STALE or DUPLICATE verdict."""

    def __init__(self, msg, verdict):
        super().__init__(msg)
        self.verdict = verdict
        self.reason = "duplicate" if verdict == DUPLICATE else "replay"


def is_downlink(mtype):
    return bool(mtype & DOWNLINK_BIT)


def _iv(vt, node_id, counter):
    # Counter block: direction/type byte, node id, counter, then zeros; the
    # low bytes count blocks. Unique per (key, direction, counter) because
    # counters never repeat in a direction (see ReplayWindow and SPEC.md).
    b = bytearray(16)
    b[0] = vt & DOWNLINK_BIT
    b[1:5] = node_id.to_bytes(4, "big")
    b[5:9] = counter.to_bytes(4, "big")
    return bytes(b)


def seal(keys, mtype, counter, body, encrypt=False):
    """Build a frame of message type `mtype` carrying the CBOR `body`.

    `keys` is a protocol.keys.NodeKeys; the direction follows from `mtype`.
    """
    if not (0 <= mtype <= _TYPE_MASK):
        raise ValueError("message type out of range")
    if not (0 <= counter <= MAX_COUNTER):
        raise ValueError("counter out of range (32-bit; a node at the end must be re-keyed)")
    n = len(body)
    if n < _MIN_BODY or HEADER_LEN + n + MIC_LEN > MAX_LEN:
        raise ValueError("body length %d does not fit a frame" % n)
    vt = (_FORMAT << 5) | mtype
    if encrypt:
        vt |= _FLAG_ENCRYPTED
    out = bytearray(HEADER_LEN + n + MIC_LEN)
    out[0] = vt
    out[1:5] = keys.node_id.to_bytes(4, "big")
    out[5:9] = counter.to_bytes(4, "big")
    if encrypt:
        body = aes128_ctr(keys.enc, _iv(vt, keys.node_id, counter), body)
    out[HEADER_LEN : HEADER_LEN + n] = body
    mic = keys.mic_key(mtype & DOWNLINK_BIT).digest(memoryview(out)[: HEADER_LEN + n])
    out[HEADER_LEN + n :] = mic[:MIC_LEN]
    return bytes(out)


class Frame:
    """A parsed, not yet verified frame. `body` is ciphertext when `encrypted`."""

    def __init__(self, raw, vt, node_id, counter):
        self.raw = raw
        self.vt = vt
        self.mtype = vt & _TYPE_MASK
        self.encrypted = bool(vt & _FLAG_ENCRYPTED)
        self.downlink = bool(vt & DOWNLINK_BIT)
        self.node_id = node_id
        self.counter = counter

    @property
    def body(self):
        return self.raw[HEADER_LEN:-MIC_LEN]

    @property
    def mic(self):
        return self.raw[-MIC_LEN:]

    def __repr__(self):
        return "Frame(type=%d, node=0x%08x, counter=%d, %d bytes%s)" % (
            self.mtype,
            self.node_id,
            self.counter,
            len(self.raw),
            ", encrypted" if self.encrypted else "",
        )


def parse(raw):
    """Split a frame into its header fields without verifying anything."""
    raw = bytes(raw)
    n = len(raw)
    if n < _MIN_LEN:
        raise MalformedFrame("frame too short: %d bytes, need at least %d" % (n, _MIN_LEN))
    if n > MAX_LEN:
        raise MalformedFrame("frame too long: %d bytes, at most %d" % (n, MAX_LEN))
    vt = raw[0]
    if vt >> 5 != _FORMAT:
        raise MalformedFrame("unsupported frame version %d" % (vt >> 5))
    return Frame(raw, vt, int.from_bytes(raw[1:5], "big"), int.from_bytes(raw[5:9], "big"))


def verify(keys, frame):
    """Check the MIC of a parsed frame and return its plaintext CBOR body.

    Raises BadMIC if the frame was not sealed with these keys, for this node,
    in this direction. Replay checking is separate (ReplayWindow), because the
    window must only move after the MIC is known good.
    """
    if frame.node_id != keys.node_id:
        raise BadMIC("frame for node 0x%08x checked with keys of 0x%08x" % (frame.node_id, keys.node_id))
    raw = frame.raw
    mic = keys.mic_key(frame.downlink).digest(raw[:-MIC_LEN])
    if not ct_equal(mic[:MIC_LEN], raw[-MIC_LEN:]):
        raise BadMIC("MIC mismatch for node 0x%08x counter %d" % (frame.node_id, frame.counter))
    body = raw[HEADER_LEN:-MIC_LEN]
    if frame.encrypted:
        body = aes128_ctr(keys.enc, _iv(frame.vt, frame.node_id, frame.counter), body)
    return body


class ReplayWindow:
    """Per-node, per-direction replay state: the highest counter and a bitmap.

    The sliding-window scheme of IPsec (RFC 4303, 3.4.3): bit i of `mask` says
    counter `top - i` was accepted. A counter above `top` is new; one inside
    the window is accepted once (reordering between radios) and a DUPLICATE
    after that; one below the window is STALE. Only `commit` changes state,
    and only after the MIC verified. `top` and `mask` are plain ints so the
    gateway can persist them.
    """

    def __init__(self, top=-1, mask=0, size=REPLAY_WINDOW):
        self.top = top
        self.mask = mask
        self.size = size

    def check(self, counter):
        if counter > self.top:
            return ACCEPT
        back = self.top - counter
        if back >= self.size:
            return STALE
        return DUPLICATE if (self.mask >> back) & 1 else ACCEPT

    def commit(self, counter):
        if counter > self.top:
            shift = counter - self.top
            if shift >= self.size:
                self.mask = 1
            else:
                self.mask = ((self.mask << shift) | 1) & ((1 << self.size) - 1)
            self.top = counter
        else:
            self.mask |= 1 << (self.top - counter)


def unseal(keys, raw, window=None):
    """Parse, verify and replay-check in one step; returns (frame, plaintext body).

    With a `window`, a DUPLICATE or STALE counter raises ReplayedFrame and the
    window is updated on success. Convenient for nodes; the gateway runs the
    steps separately to count and dedup between them.
    """
    frame = parse(raw)
    body = verify(keys, frame)
    if window is not None:
        verdict = window.check(frame.counter)
        if verdict != ACCEPT:
            raise ReplayedFrame(
                "%s counter %d (highest seen %d)"
                % ("duplicate" if verdict == DUPLICATE else "stale", frame.counter, window.top),
                verdict,
            )
        window.commit(frame.counter)
    return frame, body
