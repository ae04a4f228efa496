"""`lumeau frame demo` and `lumeau frame decode`: protocol frames on the command line.

demo    a protocol round trip that prints real frames, as they travel over the air and a serial
        line, and what the receiver refuses
decode  decode a frame given in hex, verifying it when the root key is given
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lumeau import __version__


def _hex(b: bytes) -> str:
    return b.hex(" ")


def cmd_frame_demo(args: argparse.Namespace) -> int:
    from protocol import expand, frame, keys, lora, serial
    from protocol import messages as m

    root = bytes.fromhex(args.root_key)
    node = keys.NodeKeys(args.node_id, root)
    print(f"Lumeau {__version__}: protocol round trip for node 0x{args.node_id:08x}")
    print("(the root key is a demo value; real keys come from provisioning and are never printed)\n")

    uplinks = [
        (m.HELLO, {0: __version__, 1: m.KIND_LIGHTING, 2: 0b11, 3: b"\x5e\x1a\x0c\x33", 4: m.RST_POWER_ON}),
        (m.LIGHT, {0: 40, 1: 452, 2: 123_456, 3: m.LS_ON | m.LS_BOOST, 4: 8_760, 5: 12, 6: 205}),
        (m.IRRIGATION, {0: bytes([62, 71, 255, 255]), 1: 0x81, 2: 145, 3: 982_311, 4: 0, 5: 24_050, 6: 0}),
        (m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 2: 3, 3: 1_795_000_000, 4: 1}),
    ]
    window = frame.ReplayWindow()
    line = serial.Decoder()
    sent = []
    for counter, (mtype, body) in enumerate(uplinks, start=1):
        raw = frame.seal(node, mtype, counter, m.encode(mtype, body))
        sent.append(raw)
        on_wire = serial.encode(raw)
        ms = lora.airtime_ms(len(raw), 12)
        print(
            f"{expand.TYPE_NAMES[mtype].upper()}  counter {counter}: {len(raw)} bytes, "
            f"{ms:.0f} ms on air at SF12 (budget {lora.max_payload(12)} bytes)"
        )
        print(f"  frame   {_hex(raw)}")
        print(f"  serial  {_hex(on_wire)}")
        # What the gateway does with it: resynchronise, verify, replay-check, decode, name.
        for payload in line.feed(on_wire):
            f, plain = frame.unseal(node, payload, window)
            fields = expand.expand(f.mtype, m.decode(f.mtype, plain))
            print("  decoded " + json.dumps({k: v["value"] for k, v in fields.items()}))
        print()

    print("What the gateway refuses:")
    try:
        frame.unseal(node, sent[1], window)
    except frame.ReplayedFrame as e:
        print(f"  the LIGHT frame heard again      -> {e.reason}: {e}")
    forged = bytearray(sent[1])
    forged[10] ^= 0x01
    try:
        frame.unseal(node, bytes(forged))
    except frame.BadMIC as e:
        print(f"  one bit changed in its body      -> {e.reason}: {e}")
    noisy = b"\x13\x37" + serial.encode(sent[0])[:7] + serial.encode(sent[2])
    got = line.feed(noisy)
    print(
        f"  garbage + a frame cut by a reset -> {len(got)} good frame recovered, "
        f"drops so far: crc {line.dropped_crc}, cobs {line.dropped_cobs}, short {line.dropped_short}"
    )
    return 0


def cmd_frame_decode(args: argparse.Namespace) -> int:
    from protocol import expand, frame, keys
    from protocol import messages as m

    try:
        raw = bytes.fromhex(args.hex.replace(" ", "").replace(":", ""))
        f = frame.parse(raw)
    except ValueError as e:
        print(f"lumeau frame decode: {e}", file=sys.stderr)
        return 2
    out: dict = {
        "type": expand.TYPE_NAMES.get(f.mtype, f.mtype),
        "node_id": f"0x{f.node_id:08x}",
        "counter": f.counter,
        "encrypted": f.encrypted,
        "length": len(raw),
        "verified": False,
    }
    body = f.body
    if args.root_key:
        try:
            body = frame.verify(keys.NodeKeys(f.node_id, bytes.fromhex(args.root_key)), f)
        except ValueError as e:
            print(f"lumeau frame decode: {e}", file=sys.stderr)
            return 1
        out["verified"] = True
    if f.encrypted and not args.root_key:
        out["body"] = body.hex()
    else:
        try:
            out["fields"] = expand.expand(f.mtype, m.decode(f.mtype, body))
        except (m.MessageError, KeyError) as e:
            out["error"] = str(e)
            out["body"] = body.hex()
    print(json.dumps(out, indent=2))
    return 0 if "error" not in out else 1


def add_subcommand(subparsers: Any) -> None:
    """Register `frame demo` and `frame decode` on the top-level subparsers (see lumeau.cli)."""
    fr = subparsers.add_parser("frame", help="inspect frames")
    frsub = fr.add_subparsers(dest="frame_command", required=True, metavar="ACTION")
    fdemo = frsub.add_parser("demo", help="a protocol round trip printing real frames and what a receiver refuses")
    fdemo.add_argument("--node-id", type=lambda s: int(s, 0), default=0x00A1B2C3, help="node id (default 0x00a1b2c3)")
    fdemo.add_argument("--root-key", default="000102030405060708090a0b0c0d0e0f", help="demo root key, 32 hex digits")
    fdemo.set_defaults(func=cmd_frame_demo)
    dec = frsub.add_parser("decode", help="decode a frame given in hex (verified if --root-key is given)")
    dec.add_argument("hex", help="the frame, hex (spaces or colons allowed)")
    dec.add_argument("--root-key", help="the node's root key, 32 hex digits: verify the MIC and decrypt")
    dec.set_defaults(func=cmd_frame_decode)
