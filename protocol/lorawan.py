# A Lumeau frame carried by LoRaWAN (SPEC §14): what stays of the frame when
# a LoRaWAN network server (ChirpStack) moves it.
#
#   LoRaWAN field   carries
#   FPort           the frame's vt byte (version, encrypted flag, type): 32..63
#   DevEUI          the node id, through the gateway's registry (dev_eui)
#   FRMPayload      counter (4) | body | MIC (4): the frame without vt and node id
#
# The MIC is the frame's own, computed over the whole frame (vt and node id
# included), so a frame crosses LoRaWAN unchanged end to end: the gateway
# rebuilds it with `frame_from_lorawan` and verifies it like any other, the
# node seals and verifies exactly as on its own radio. Runs on MicroPython
# (the node's modem radio uses it): no allocation beyond the result.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_HEADER_LEN = const(9)  # protocol/frame.py HEADER_LEN
_MIC_LEN = const(4)
_ELIDED = const(5)  # vt and node id: FPort and DevEUI carry them
PORT_MIN = const(0x20)  # vt of version 1 (bits 7-5 = 001): every type, both directions, both flags
PORT_MAX = const(0x3F)
OVERHEAD = const(8)  # counter + MIC: bytes of the FRMPayload that are not body
MIN_PAYLOAD = const(9)  # counter + the smallest body (a0) + MIC
MAX_PAYLOAD = const(250)  # a frame is at most 255 bytes, less the 5 elided
# The smallest FRMPayload budget: EU868 DR0-DR2 (SF12-SF10), no FOpts (LoRaWAN
# Regional Parameters RP002, "N"); a network server that piggybacks MAC
# commands in FOpts on a downlink leaves less.
FRM_BUDGET = const(51)


class CarriageError(ValueError):
    """An FPort or FRMPayload that cannot be a Lumeau frame; `reason` is a stable counter tag."""

    def __init__(self, msg, reason="malformed"):
        super().__init__(msg)
        self.reason = reason


def is_lumeau_port(fport):
    return PORT_MIN <= fport <= PORT_MAX


def frame_to_lorawan(raw):
    """A sealed frame -> (fport, node id, FRMPayload)."""
    n = len(raw)
    if n < _HEADER_LEN + 1 + _MIC_LEN or n > 255:
        raise CarriageError("frame of %d bytes" % n)
    vt = raw[0]
    if not is_lumeau_port(vt):
        raise CarriageError("vt 0x%02x is not a version 1 frame" % vt)
    return vt, int.from_bytes(raw[1:_ELIDED], "big"), raw[_ELIDED:]


def frame_from_lorawan(fport, node_id, payload):
    """(FPort, node id, FRMPayload) -> the sealed frame, ready for protocol.frame.parse/verify.

    Raises CarriageError: reason "port" for an FPort that is not Lumeau's (another
    application on the same device, a MAC-only frame), "malformed" for a payload
    too short or too long to be one.
    """
    if not is_lumeau_port(fport):
        raise CarriageError("fPort %d is not a Lumeau port (%d..%d)" % (fport, PORT_MIN, PORT_MAX), "port")
    if not 0 <= node_id <= 0xFFFFFFFF:
        raise CarriageError("node id out of range")
    n = len(payload)
    if n < MIN_PAYLOAD or n > MAX_PAYLOAD:
        raise CarriageError("FRMPayload of %d bytes (%d..%d)" % (n, MIN_PAYLOAD, MAX_PAYLOAD))
    out = bytearray(_ELIDED + n)
    out[0] = fport
    out[1:_ELIDED] = node_id.to_bytes(4, "big")
    out[_ELIDED:] = payload
    return bytes(out)
