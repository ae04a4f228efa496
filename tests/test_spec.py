"""Every worked example in protocol/SPEC.md is a test vector checked here."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import ROOT

from protocol import bridge_msg, frame, keys, lora, nodelora, proprietary, serial
from protocol import messages as m

SPEC = ROOT / "protocol" / "SPEC.md"
BLOCK = re.compile(r"^```example (\S+)\n(.*?)^```", re.M | re.S)


def examples(kind: str) -> list[dict[str, str]]:
    out = []
    for k, text in BLOCK.findall(SPEC.read_text()):
        if k == kind:
            fields = {}
            for line in text.strip().splitlines():
                name, _, value = line.partition(" ")
                fields[name] = value.strip()
            out.append(fields)
    return out


def unhex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_spec_has_examples_of_every_kind():
    kinds = {k for k, _ in BLOCK.findall(SPEC.read_text())}
    assert kinds == {
        "key-derivation",
        "frame",
        "airtime",
        "serial",
        "bridge",
        "lorawan",
        "group",
        "basicstation",
    }  # group: test_groupcast.py
    assert len(examples("frame")) >= 4


@pytest.mark.parametrize("ex", examples("key-derivation"))
def test_key_derivation_example(ex):
    k = keys.NodeKeys(int(ex["node_id"], 0), unhex(ex["root_key"]))
    assert k.mic_up.key == unhex(ex["mic_up"])
    assert k.mic_down.key == unhex(ex["mic_down"])
    assert k.enc == unhex(ex["enc"])


@pytest.mark.parametrize("ex", examples("frame"), ids=lambda ex: ex["name"])
def test_frame_example(ex):
    k = keys.NodeKeys(int(ex["node_id"], 0), unhex(ex["root_key"]))
    mtype, counter = int(ex["type"]), int(ex["counter"])
    body = ast.literal_eval(ex["body"])
    cbor = m.encode(mtype, body)
    assert cbor == unhex(ex["cbor"])
    raw = frame.seal(k, mtype, counter, cbor, encrypt=ex["encrypt"] == "yes")
    assert raw == unhex(ex["frame"])
    # and the receiving side gets the body back from the documented bytes
    f, plain = frame.unseal(k, unhex(ex["frame"]))
    assert (f.mtype, f.counter) == (mtype, counter)
    assert m.decode(mtype, plain) == {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in body.items()}


@pytest.mark.parametrize("ex", examples("airtime"), ids=lambda ex: f"SF{ex['sf']}")
def test_airtime_example(ex):
    assert lora.airtime_ms(int(ex["payload"]), int(ex["sf"])) == pytest.approx(float(ex["airtime_ms"]), abs=1e-3)


@pytest.mark.parametrize("ex", examples("serial"))
def test_serial_example(ex):
    payload = unhex(ex["payload"])
    assert serial.crc16(payload).to_bytes(2, "big") == unhex(ex["crc"])
    assert serial.encode(payload) == unhex(ex["encoded"])
    assert serial.Decoder().feed(unhex(ex["encoded"])) == [payload]


def _bridge_decoded(text: str) -> tuple:
    """Parse `RX tmst=1 ... frame=<hex>` (frame last: its hex has spaces) into decode()'s tuple."""
    name, _, rest = text.partition(" ")
    head, _, frame_hex = rest.partition("frame=")
    values = [int(kv.partition("=")[2]) for kv in head.split()]
    mtype = getattr(bridge_msg, name)
    return (mtype, *values) + ((unhex(frame_hex),) if frame_hex else ())


@pytest.mark.parametrize("ex", examples("bridge"), ids=lambda ex: ex["name"])
def test_bridge_example(ex):
    message = unhex(ex["message"])
    want = _bridge_decoded(ex["decoded"])
    assert bridge_msg.decode(message) == want
    kind = want[0]
    if kind == bridge_msg.RX:
        _, tmst, freq, sf, bw, rssi, snr, raw = want
        assert bridge_msg.encode_rx(tmst, freq, sf, bw, rssi, snr, raw) == message
        frame.parse(raw)  # a real frame rides inside
    elif kind == bridge_msg.TX:
        _, tx_id, flags, tmst, freq, sf, bw, power, raw = want
        assert bridge_msg.encode_tx(tx_id, raw, freq, sf, bw, power, tmst if flags else None) == message
        frame.parse(raw)
    elif kind == bridge_msg.TIME:
        assert bridge_msg.encode_time(*want[1:]) == message
    else:
        assert bridge_msg.encode_tx_result(*want[1:]) == message


@pytest.mark.parametrize("ex", examples("basicstation"))
def test_basicstation_example(ex):
    raw, phy = unhex(ex["frame"]), unhex(ex["phy"])
    assert nodelora.wrapper(raw) == proprietary.wrap(raw) == phy  # the node's rule and the gateway's
    assert nodelora.wrapper(phy, True) == proprietary.unwrap(phy) == raw
