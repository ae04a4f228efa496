"""protocol/lorawan.py: a Lumeau frame carried in LoRaWAN's FPort and FRMPayload (SPEC §14)."""

from __future__ import annotations

import pytest
from conftest import ROOT
from hypothesis import given
from hypothesis import strategies as st

from protocol import frame, keys, lorawan
from protocol import messages as m

SPEC = ROOT / "protocol" / "SPEC.md"
KEYS = keys.NodeKeys(0x00A1B2C3, bytes(range(16)))


def spec_example() -> dict[str, str]:
    import re

    block = re.search(r"^```example lorawan\n(.*?)^```", SPEC.read_text(), re.M | re.S)
    assert block, "SPEC.md has no lorawan example"
    out = {}
    for line in block.group(1).strip().splitlines():
        name, _, value = line.partition(" ")
        out[name] = value.strip()
    return out


def test_the_spec_example_is_what_the_code_does():
    ex = spec_example()
    raw = bytes.fromhex(ex["frame"].replace(" ", ""))
    fport, node_id, payload = lorawan.frame_to_lorawan(raw)
    assert fport == int(ex["fport"], 0)
    assert node_id == int(ex["node_id"], 0)
    assert payload.hex() == ex["frm_payload"].replace(" ", "")
    assert lorawan.frame_from_lorawan(fport, node_id, payload) == raw
    # and it is a real frame of that node: the MIC verifies over the rebuilt header
    k = keys.NodeKeys(node_id, bytes.fromhex(ex["root_key"]))
    f = frame.parse(raw)
    assert m.decode(f.mtype, frame.verify(k, f))


@given(
    mtype=st.sampled_from([m.LIGHT, m.IRRIGATION, m.CMD_ACK, m.COMMAND, m.ACK]),
    counter=st.integers(0, 0xFFFFFFFF),
    encrypt=st.booleans(),
)
def test_every_frame_crosses_unchanged(mtype, counter, encrypt):
    body = {
        m.LIGHT: {0: 40, 1: 452, 2: 123456, 3: 1, 4: 8760, 5: 3, 6: 205},
        m.IRRIGATION: {0: b"\x3e\x47\xff\xff", 1: 0x81, 2: 145, 3: 982311, 4: 0, 5: 24050, 6: 0},
        m.CMD_ACK: {0: 7, 1: 0},
        m.COMMAND: {0: 7, 1: 1, 2: [30, 600]},
        m.ACK: {0: 3, 1: 0},
    }[mtype]
    raw = frame.seal(KEYS, mtype, counter, m.encode(mtype, body), encrypt=encrypt and not frame.is_downlink(mtype))
    fport, node_id, payload = lorawan.frame_to_lorawan(raw)
    assert lorawan.PORT_MIN <= fport <= lorawan.PORT_MAX and node_id == KEYS.node_id
    assert len(payload) == len(raw) - 5 == len(raw) - frame.HEADER_LEN - frame.MIC_LEN + lorawan.OVERHEAD
    back = lorawan.frame_from_lorawan(fport, node_id, payload)
    assert back == raw
    f = frame.parse(back)
    assert m.decode(mtype, frame.verify(KEYS, f)) is not None


def test_a_frame_for_another_node_does_not_verify():
    """The node id is not on the air: a DevEUI mapped to the wrong node gives a frame whose MIC fails."""
    raw = frame.seal(KEYS, m.LIGHT, 5, m.encode(m.LIGHT, {0: 40, 1: 452, 2: 1, 3: 1, 4: 1, 5: 3, 6: 205}))
    fport, _, payload = lorawan.frame_to_lorawan(raw)
    other = lorawan.frame_from_lorawan(fport, 0x00A1B2C4, payload)
    with pytest.raises(frame.BadMIC):
        frame.verify(keys.NodeKeys(0x00A1B2C4, bytes(range(16))), frame.parse(other))


@pytest.mark.parametrize("fport", [0, 1, 0x1F, 0x40, 223, 224, 255])
def test_other_ports_are_not_lumeau(fport):
    with pytest.raises(lorawan.CarriageError) as e:
        lorawan.frame_from_lorawan(fport, 1, bytes(12))
    assert e.value.reason == "port"


@pytest.mark.parametrize("n", [0, 1, 8, 251, 400])
def test_payloads_that_cannot_be_a_frame_are_malformed(n):
    with pytest.raises(lorawan.CarriageError) as e:
        lorawan.frame_from_lorawan(0x22, 1, bytes(n))
    assert e.value.reason == "malformed"


def test_every_frame_within_the_radio_budget_leaves_5_bytes_spare_over_lorawan():
    """SPEC §5 "Sizes": the worst periodic report (STATUS) is a 51-byte frame with 13 bytes of
    overhead; carried by LoRaWAN the overhead is 8, so the same report takes 46 of the 51."""
    for n in range(1, 51 - frame.HEADER_LEN - frame.MIC_LEN + 1):  # every body size a 51-byte frame can hold
        raw = frame.seal(KEYS, m.LIGHT, 0xFFFFFFFF, b"\xa0".ljust(n, b"\x00"))
        _, _, payload = lorawan.frame_to_lorawan(raw)
        assert len(payload) == n + lorawan.OVERHEAD <= lorawan.FRM_BUDGET - 5
