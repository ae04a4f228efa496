"""Message catalogue: validation, forward compatibility, expansion, air budget."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import expand, frame, keys, lora
from protocol import messages as m

K = keys.NodeKeys(7, bytes(16))

# Realistic maxima of a periodic report: a 250 W lamp metered for 10 years,
# 100 m3/h of flow, a 4-zone controller on 24 V, a board with 4 MB of heap.
LIGHT_MAX = {0: 100, 1: 2500, 2: 25_000_000, 3: 0x7F, 4: 100_000, 5: 5000, 6: 2000}
IRRIGATION_MAX = {0: bytes([200, 200, 200, 200]), 1: 0x8F, 2: 16_667, 3: 100_000_000, 4: 0x03, 5: 30_000, 6: 0x1F}
STATUS_MAX = {0: 0xFFFFFFFF, 1: 0xFFFFFFFF, 2: -137, 3: -80, 4: 30_000, 5: -40, 6: 4 * 1024 * 1024 // 16, 7: 255, 8: 13}
PERIODIC = {m.LIGHT: LIGHT_MAX, m.IRRIGATION: IRRIGATION_MAX, m.STATUS: STATUS_MAX}

# Cayenne LPP (myDevices, with the extended types of the CayenneLPP library):
# each reading costs channel (1) + type (1) + data. The same readings, at the
# closest LPP type and resolution.
LPP_SIZE = {
    "digital": 3,
    "percentage": 3,
    "power": 4,
    "energy": 6,
    "generic": 6,
    "current": 4,
    "humidity": 3,
    "analog": 4,
    "voltage": 4,
    "unixtime": 6,
    "temperature": 4,
}
LPP_READINGS = {
    m.LIGHT: ["percentage", "power", "energy", "digital", "generic", "generic", "current"],
    m.IRRIGATION: ["humidity"] * 4 + ["digital", "analog", "generic", "digital", "voltage", "digital"],
    m.STATUS: ["generic", "unixtime", "analog", "analog", "voltage", "temperature", "generic", "digital", "digital"],
}


def absolute_max(mtype):
    """Every field of the type at the most expensive value its range allows."""
    body = {}
    for key, kind, lo, hi, _req, maxlen in m.SPECS[mtype]:
        if kind in (m.U, m.I):
            body[key] = max((lo, hi), key=lambda v: len(cbor2.dumps(v)))
        elif kind == m.V:
            body[key] = bytes([hi]) * maxlen
    return body


@pytest.mark.parametrize("mtype", sorted(PERIODIC))
def test_periodic_reports_fit_sf12_and_beat_cayenne_lpp(mtype, capsys):
    realistic = len(frame.seal(K, mtype, 0xFFFFFFFF, m.encode(mtype, PERIODIC[mtype])))
    worst = len(frame.seal(K, mtype, 0xFFFFFFFF, m.encode(mtype, absolute_max(mtype))))
    body = realistic - frame.HEADER_LEN - frame.MIC_LEN
    lpp = sum(LPP_SIZE[t] for t in LPP_READINGS[mtype])
    with capsys.disabled():
        print(
            f"\n  {expand.TYPE_NAMES[mtype]:>10}: frame {realistic} B (worst case {worst} B), "
            f"body {body} B vs Cayenne LPP {lpp} B; budget {lora.max_payload(12)} B at SF12"
        )
    assert worst <= lora.max_payload(12) == 51
    assert body < lpp


def test_round_trip_every_type():
    bodies = {
        m.HELLO: {0: "1.0.0", 1: m.KIND_LIGHTING, 2: 3, 3: b"\x01\x02\x03\x04", 4: m.RST_WATCHDOG},
        m.LIGHT: LIGHT_MAX,
        m.IRRIGATION: IRRIGATION_MAX,
        m.STATUS: STATUS_MAX,
        m.EVENT: {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: -5, 3: 1_800_000_000, 4: 1, 5: 2},
        m.CMD_ACK: {0: 77, 1: m.RES_REFUSED, 2: -1},
        m.COMMAND: {0: 77, 1: m.OP_SET_PROFILE, 2: [0, -30, 100, 0, 120, 50], 3: 0},
        m.CONFIG: {0: {m.CFG_REPORT_INTERVAL: 900, m.CFG_SF: 12}},
        m.TIME: {0: 1_800_000_000, 1: 250},
        m.ACK: {0: 123456, 1: 2},
    }
    assert set(bodies) == set(m.SPECS)
    for mtype, body in bodies.items():
        data = m.encode(mtype, body)
        assert data == cbor2.dumps(body, canonical=True)  # deterministic, as the spec says
        assert m.decode(mtype, data) == {k: (list(v) if isinstance(v, tuple) else v) for k, v in body.items()}


def test_unknown_keys_are_ignored_on_receive_but_refused_on_send():
    data = cbor2.dumps({0: 50, 23: "from a newer node", 100: [1, 2]})
    assert m.decode(m.LIGHT, data) == {0: 50}
    with pytest.raises(m.MessageError, match="unknown key"):
        m.encode(m.LIGHT, {0: 50, 23: 1})


@pytest.mark.parametrize(
    "mtype,body,why",
    [
        (m.LIGHT, {0: 101}, "out of range"),
        (m.LIGHT, {0: -1}, "out of range"),
        (m.LIGHT, {0: True}, "integer"),
        (m.LIGHT, {0: 50.0}, "integer"),
        (m.LIGHT, {2: 1 << 32}, "out of range"),
        (m.HELLO, {1: 1}, "required"),
        (m.HELLO, {0: "x" * 17, 1: 1}, "length"),
        (m.HELLO, {0: b"1.0", 1: 1}, "text"),
        (m.HELLO, {0: "1.0", 1: 1, 3: b"\x00"}, "length"),
        (m.IRRIGATION, {0: bytes([201])}, "out of range"),
        (m.IRRIGATION, {0: bytes(5)}, "at most"),
        (m.IRRIGATION, {0: [1, 2]}, "bytes"),
        (m.COMMAND, {0: 1, 1: 0}, "out of range"),
        (m.COMMAND, {0: 1, 1: 1, 2: list(range(25))}, "at most"),
        (m.COMMAND, {0: 1, 1: 1, 2: "x"}, "array"),
        (m.CONFIG, {0: {24: 1}}, "out of range"),
        (m.CONFIG, {0: [1]}, "map"),
        (m.STATUS, {3: 61}, "out of range"),
    ],
)
def test_invalid_fields_are_rejected_with_the_key_named(mtype, body, why):
    with pytest.raises(m.MessageError, match=why) as e:
        m.validate(mtype, body)
    assert "key" in str(e.value)


def test_bad_bodies():
    with pytest.raises(m.MessageError, match="map"):
        m.decode(m.LIGHT, cbor2.dumps([1, 2]))
    with pytest.raises(m.MessageError):
        m.decode(m.LIGHT, b"\xa1\x00")  # truncated CBOR
    with pytest.raises(m.MessageError, match="unknown message type"):
        m.validate(7, {})
    assert isinstance(m.MessageError("x"), ValueError)


@settings(max_examples=300, deadline=None)
@given(mtype=st.sampled_from(sorted(m.SPECS)), data=st.binary(max_size=60))
def test_decode_arbitrary_bytes_only_raises_message_error(mtype, data):
    try:
        m.decode(mtype, data)
    except m.MessageError:
        pass


def test_catalogue_keys_are_dense_and_expand_names_every_field():
    for mtype, spec in m.SPECS.items():
        assert [f[0] for f in spec] == list(range(len(spec)))
        assert [f[0] for f in expand.FIELDS[mtype]] == list(range(len(spec)))


def test_expand_gives_named_physical_values_with_units():
    light = expand.expand(m.LIGHT, {0: 40, 1: 452, 2: 1234, 3: m.LS_ON | m.LS_BOOST})
    assert light["level"] == {"value": 40, "unit": "%"}
    assert light["power"] == {"value": 45.2, "unit": "W"}
    assert light["energy"] == {"value": 1234, "unit": "Wh"}
    assert light["state"]["value"] == ["on", "boost"]
    irr = expand.expand(m.IRRIGATION, {0: bytes([61, 255]), 1: 0x81, 2: 125})
    assert irr["soil_moisture"] == {"value": [30.5, None], "unit": "%"}
    assert irr["valves"]["value"] == ["zone1", "master"]
    assert irr["flow"] == {"value": 12.5, "unit": "L/min"}
    st_ = expand.expand(m.STATUS, {3: -22, 6: 100})
    assert st_["snr"]["value"] == -5.5 and st_["free_heap"]["value"] == 1600
    ev = expand.expand(m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM, 0 + 4: 1})
    assert ev["code"]["value"] == "leak" and ev["severity"]["value"] == "alarm"
    assert expand.expand(m.EVENT, {0: 999})["code"]["value"] == 999  # a newer code stays a number
    assert expand.expand(m.HELLO, {0: "1.2.3", 1: 2, 3: b"\xde\xad\xbe\xef"})["config_hash"]["value"] == "deadbeef"


def test_keys_for_maps_names_to_keys():
    assert expand.keys_for(m.COMMAND, {"command_id": 5, "op": m.OP_CLOSE_ALL}) == {0: 5, 1: m.OP_CLOSE_ALL}
    with pytest.raises(m.MessageError, match="no field"):
        expand.keys_for(m.COMMAND, {"nope": 1})
