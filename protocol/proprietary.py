"""Lumeau frames as LoRaWAN proprietary frames, for LoRa gateways that only forward LoRaWAN (SPEC §7).

A LoRa Basics Station hands on only what parses as LoRaWAN. A proprietary
frame (MType 111) is the one LoRaWAN kind with no structure after its MHDR,
so a Lumeau v1 frame travels unchanged behind one byte:

    PHYPayload = MHDR 0xE0 (MType 111, RFU 000, Major 00) | Lumeau frame (§1)

The station reports such a frame as `propdf` (its FRMPayload field holds the
whole PHYPayload, MHDR included) and sends a downlink's `pdu` as given.
Host side only: the node's prefix is its radio code's business.
"""

from __future__ import annotations

MHDR = 0xE0  # MType 111 (proprietary) << 5 | RFU 0 | Major 0 (LoRaWAN R1)
OVERHEAD = 1  # bytes added to every frame


def wrap(frame: bytes) -> bytes:
    """The PHYPayload that carries `frame`."""
    return bytes((MHDR,)) + frame


def unwrap(phy: bytes) -> bytes | None:
    """The Lumeau frame inside a PHYPayload, or None when it is not a Lumeau proprietary frame
    (another MHDR: a LoRaWAN device's data or join, or a proprietary frame of another Major)."""
    if len(phy) < 2 or phy[0] != MHDR:
        return None
    return phy[1:]
