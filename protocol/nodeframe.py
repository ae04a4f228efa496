# The frame code a node runs: seal, parse, verify, the replay window and
# the errors they raise. protocol/frame.py (the layout, the public
# constants, unseal) re-exports all of it; a node loads this module only, so
# frame.py's public names cost it no heap. The numbers are private const()
# copies of frame.py's (tests/test_node_consts.py checks them).

from protocol.crypto import aes128_ctr, ct_equal

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_FORMAT = const(1)  # frame format version: the vt byte's bits 7-5
_HEADER_LEN = const(9)
_MIC_LEN = const(4)
_MIN_BODY = const(1)  # the smallest CBOR map, a0
_MIN_LEN = const(_HEADER_LEN + _MIN_BODY + _MIC_LEN)
_MAX_LEN = const(255)
_MAX_COUNTER = const(0xFFFFFFFF)
_FLAG_ENCRYPTED = const(0x10)
_DOWNLINK_BIT = const(0x08)
_TYPE_MASK = const(0x0F)
_ACCEPT = const(0)
_DUPLICATE = const(1)
_STALE = const(2)
_REPLAY_WINDOW = const(32)


class FrameError(ValueError):
    """A frame that cannot be accepted; `reason` is a short stable tag for counters."""

    reason = "malformed"


class MalformedFrame(FrameError):
    reason = "malformed"


class BadMIC(FrameError):
    reason = "bad_mic"


def _iv(vt, node_id, counter):
    # Counter block: direction/type byte, node id, counter, then zeros; the
    # low bytes count blocks. Unique per (key, direction, counter) because
    # counters never repeat in a direction (see ReplayWindow and SPEC.md).
    b = bytearray(16)
    b[0] = vt & _DOWNLINK_BIT
    b[1:5] = node_id.to_bytes(4, "big")
    b[5:9] = counter.to_bytes(4, "big")
    return bytes(b)


def seal(keys, mtype, counter, body, encrypt=False):
    """Build a frame of message type `mtype` carrying the CBOR `body`.

    `keys` is a protocol.keys.NodeKeys; the direction follows from `mtype`.
    """
    if not (0 <= mtype <= _TYPE_MASK):
        raise ValueError("message type out of range")
    if not (0 <= counter <= _MAX_COUNTER):
        raise ValueError("counter out of range (32-bit; a node at the end must be re-keyed)")
    n = len(body)
    if n < _MIN_BODY or _HEADER_LEN + n + _MIC_LEN > _MAX_LEN:
        raise ValueError("body length %d does not fit a frame" % n)
    vt = (_FORMAT << 5) | mtype
    if encrypt:
        vt |= _FLAG_ENCRYPTED
    out = bytearray(_HEADER_LEN + n + _MIC_LEN)
    out[0] = vt
    out[1:5] = keys.node_id.to_bytes(4, "big")
    out[5:9] = counter.to_bytes(4, "big")
    if encrypt:
        body = aes128_ctr(keys.enc, _iv(vt, keys.node_id, counter), body)
    out[_HEADER_LEN : _HEADER_LEN + n] = body
    mic = keys.mic_key(mtype & _DOWNLINK_BIT).digest(memoryview(out)[: _HEADER_LEN + n])
    out[_HEADER_LEN + n :] = mic[:_MIC_LEN]
    return bytes(out)


class Frame:
    """A parsed, not yet verified frame. `body` is ciphertext when `encrypted`."""

    def __init__(self, raw, vt, node_id, counter):
        self.raw = raw
        self.vt = vt
        self.mtype = vt & _TYPE_MASK
        self.encrypted = bool(vt & _FLAG_ENCRYPTED)
        self.downlink = bool(vt & _DOWNLINK_BIT)
        self.node_id = node_id
        self.counter = counter

    @property
    def body(self):
        return self.raw[_HEADER_LEN:-_MIC_LEN]

    @property
    def mic(self):
        return self.raw[-_MIC_LEN:]

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
    if n > _MAX_LEN:
        raise MalformedFrame("frame too long: %d bytes, at most %d" % (n, _MAX_LEN))
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
    mic = keys.mic_key(frame.downlink).digest(raw[:-_MIC_LEN])
    if not ct_equal(mic[:_MIC_LEN], raw[-_MIC_LEN:]):
        raise BadMIC("MIC mismatch for node 0x%08x counter %d" % (frame.node_id, frame.counter))
    body = raw[_HEADER_LEN:-_MIC_LEN]
    if frame.encrypted:
        body = aes128_ctr(keys.enc, _iv(frame.vt, frame.node_id, frame.counter), body)
    return body


class ReplayWindow:
    """Per-node, per-direction replay state: the highest counter and a bitmap.

    The sliding-window scheme of IPsec (RFC 4303, 3.4.3): bit i of `mask` says
    counter `top - i` was accepted. A counter above `top` is new; one inside
    the window is accepted once (reordering between radios) and a _DUPLICATE
    after that; one below the window is _STALE. Only `commit` changes state,
    and only after the MIC verified. `top` and `mask` are plain ints so the
    gateway can persist them.
    """

    def __init__(self, top=-1, mask=0, size=_REPLAY_WINDOW):
        self.top = top
        self.mask = mask
        self.size = size

    def check(self, counter):
        if counter > self.top:
            return _ACCEPT
        back = self.top - counter
        if back >= self.size:
            return _STALE
        return _DUPLICATE if (self.mask >> back) & 1 else _ACCEPT

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
