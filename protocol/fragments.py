"""Fragmented delivery of a release image over LoRa (SPEC §13 "Over LoRa"; LoRaWAN TS004's scheme).

The host's side: cut an image (.lup) into N fragments of F bytes, make coded fragments (the
XOR of the uncoded fragments TS004's parity matrix line names), build the SETUP and DATA
bodies, seal them in FRAG (unicast: the node's key and downlink counter) or GROUP_FRAG
(multicast: the group's key and counter) frames, and size a session. The node's part
(layout, matrix line, the flash-backed decoder) is protocol/nodefrag.py, re-exported here.
"""

from protocol import frame
from protocol.groupcast import check_addr, mic_key
from protocol.nodefrag import Decoder, line  # the node's part
from protocol.nodefrag import parse as setup

__all__ = [
    "Decoder",
    "Encoder",
    "FRAG",
    "GROUP_FRAG",
    "OP_FRAG_STATUS",
    "line",
    "prbs23",
    "setup",
]

FRAG = 12  # downlink frame type: a fragment body to one node (its key, its downlink counter)
GROUP_FRAG = 13  # downlink frame type: a fragment body to a group (group address, key, counter)
OP_FRAG_STATUS = 11  # COMMAND [session]: CMD_ACK ok, value = fragments still missing (0: complete)
SETUP = 1
DATA = 2
SETUP_LEN = 14
DATA_HEAD = 4  # kind, session, index u16
N_MAX = 4096
SIZE_MAX = 0xFFFFFF
OVERHEAD = frame.HEADER_LEN + frame.MIC_LEN + DATA_HEAD  # 17 B around a fragment's bytes
# status answers (CMD_ACK result RES_REFUSED, value)
ST_NO_SESSION = 1  # the node holds no session with this id (rebooted, or never set up)
ST_REFUSED = 2  # the image was complete and the node's updater refused it (reason: its last_error)


def prbs23(x):
    """TS004's 23-bit pseudo-random sequence step (the node's line() has it inline: one name less)."""
    return (x >> 1) | (((x ^ (x >> 5)) & 1) << 22)


def fragment_size(max_frame):
    """The largest fragment a frame of `max_frame` bytes carries (51 B at SF12: 34 B)."""
    return max_frame - OVERHEAD


def setup_body(session, bundle, size, f, n, redundancy):
    if not (0 <= session <= 255 and len(bundle) >= 4 and 0 < size <= SIZE_MAX and 0 < f <= 255):
        raise ValueError("session set-up out of range")
    if not (0 < n <= N_MAX and (n - 1) * f < size <= n * f and 0 <= redundancy <= 0xFFFF):
        raise ValueError("set-up numbers disagree: %d B in %d fragments of %d B" % (size, n, f))
    return (
        bytes([SETUP, session])
        + bytes(bundle[:4])
        + size.to_bytes(3, "big")
        + bytes([f])
        + n.to_bytes(2, "big")
        + redundancy.to_bytes(2, "big")
    )


def data_body(session, index, data):
    if not 0 <= index <= 0xFFFF:
        raise ValueError("fragment index out of range")
    return bytes([DATA, session]) + index.to_bytes(2, "big") + bytes(data)


class Encoder:
    """An image cut into fragments of `f` bytes; fragment(i) for any i (i >= n: coded)."""

    def __init__(self, image, f):
        if not 0 < f <= 255:
            raise ValueError("fragment size must be 1..255 bytes")
        self.image = bytes(image)
        self.f = f
        self.n = max(1, -(-len(self.image) // f))
        if self.n > N_MAX:
            raise ValueError("image of %d B is %d fragments of %d B, at most %d" % (len(image), self.n, f, N_MAX))
        pad = self.image + bytes(self.n * f - len(self.image))
        self._frags = [pad[i * f : (i + 1) * f] for i in range(self.n)]

    def fragment(self, index):
        if index < self.n:
            return self._frags[index]
        bits = bytearray((self.n + 7) // 8)
        line(index - self.n + 1, self.n, bits)
        out = bytearray(self.f)
        for j in range(self.n):
            if bits[j >> 3] & (1 << (j & 7)):
                fr = self._frags[j]
                for k in range(self.f):
                    out[k] ^= fr[k]
        return bytes(out)


def seal_unicast(keys, counter, body):
    """A FRAG frame to one node, sealed as its other downlinks (SPEC §1)."""
    return frame.seal(keys, FRAG, counter, body)


def seal_group(key, addr, counter, body):
    """A GROUP_FRAG frame to group `addr`, sealed as a GROUP_COMMAND (SPEC §5 "Groups")."""
    check_addr(addr)
    n = len(body)
    if n < 1 or frame.HEADER_LEN + n + frame.MIC_LEN > frame.MAX_LEN:
        raise ValueError("body length %d does not fit a frame" % n)
    raw = bytes([(1 << 5) | GROUP_FRAG]) + addr.to_bytes(4, "big") + counter.to_bytes(4, "big") + body
    return raw + mic_key(key, addr).digest(raw)[: frame.MIC_LEN]


def frames_needed(size, f, redundancy):
    """(N, coded fragments sent up front) for an image of `size` bytes, fragments of `f` bytes."""
    n = max(1, -(-size // f))
    return n, int(-(-n * redundancy // 1))
