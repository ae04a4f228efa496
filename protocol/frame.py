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
# A node loads protocol/nodeframe.py (seal, parse, verify, ReplayWindow,
# the errors), re-exported here. Everything here runs on MicroPython: no
# allocation beyond the frame itself on the seal path, and the header is
# parsed without touching the keys so the gateway can find the node's keys
# first.

from protocol.nodeframe import (  # noqa: F401  # the node's part, re-exported
    BadMIC,
    Frame,
    FrameError,
    MalformedFrame,
    ReplayWindow,
    parse,
    seal,
    verify,
)

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

HEADER_LEN = const(9)
MIC_LEN = const(4)
MAX_LEN = 255  # a LoRa PHY payload; the regional budget is the caller's concern
MAX_COUNTER = 0xFFFFFFFF
# Downlink counters split in two halves (SPEC §4): the gateway seals with
# 0 .. TOOL_COUNTER_BASE - 1, commissioning tools over BLE (SPEC §11) with
# TOOL_COUNTER_BASE .. MAX_COUNTER, and a node keeps one replay window per
# half, so neither can make the other's frames look stale or reuse a counter.
TOOL_COUNTER_BASE = 0x80000000

DOWNLINK_BIT = 0x08

# Replay verdicts, from ReplayWindow.check().
ACCEPT = 0
DUPLICATE = 1  # already seen: the same frame heard twice (several radios, a retry)
STALE = 2  # older than the window: cannot tell a late copy from a replay

REPLAY_WINDOW = 32


class ReplayedFrame(FrameError):
    """Raised by callers that want an exception for a STALE or DUPLICATE verdict."""

    def __init__(self, msg, verdict):
        super().__init__(msg)
        self.verdict = verdict
        self.reason = "duplicate" if verdict == DUPLICATE else "replay"


def is_downlink(mtype):
    return bool(mtype & DOWNLINK_BIT)


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
