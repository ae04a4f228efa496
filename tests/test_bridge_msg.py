"""protocol.bridge_msg: the radio bridge's serial messages (SPEC §10)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import bridge_msg as b

frames = st.binary(min_size=1, max_size=255)
sfs = st.integers(7, 12)
bws = st.sampled_from(b.BANDWIDTHS)
u32 = st.integers(0, 2**32 - 1)


@given(u32, u32, sfs, bws, st.integers(-200, 0), st.integers(-80, 60), frames)
def test_rx_round_trip(tmst, freq, sf, bw, rssi, snr, frame):
    msg = b.encode_rx(tmst, freq, sf, bw, rssi, snr, frame)
    assert len(msg) == 13 + len(frame)
    assert b.decode(msg) == (b.RX, tmst, freq, sf, bw, rssi, snr, frame)


@given(st.integers(0, 0xFFFF), frames, u32, sfs, bws, st.integers(-9, 22), st.none() | u32)
def test_tx_round_trip(tx_id, frame, freq, sf, bw, power, tmst):
    msg = b.encode_tx(tx_id, frame, freq, sf, bw, power, tmst)
    flags = 0 if tmst is None else b.TX_TIMED
    assert b.decode(msg) == (b.TX, tx_id, flags, tmst or 0, freq, sf, bw, power, frame)


@given(u32, u32, st.integers(0, 999))
def test_time_round_trip(tmst, unix_s, ms):
    msg = b.encode_time(tmst, unix_s, ms)
    assert len(msg) == 11
    assert b.decode(msg) == (b.TIME, tmst, unix_s, ms)


def test_other_messages_round_trip():
    assert b.decode(b.encode_tx_result(7, b.TX_DUTY_CYCLE)) == (b.TX_RESULT, 7, b.TX_DUTY_CYCLE, 0)
    st_msg = b.encode_status(3600, 10, 2, 5, 1, 869525000, 12, 125000, "bridge 0.1.0")
    assert b.decode(st_msg) == (b.STATUS, 3600, 10, 2, 5, 1, 869525000, 12, 125000, "bridge 0.1.0")
    assert b.decode(b.encode_rx_config(868300000, 7, 250000)) == (b.RX_CONFIG, 868300000, 7, 250000)
    assert b.decode(b.encode_ping()) == (b.PING,)


@pytest.mark.parametrize(
    "msg, words",
    [
        (b"", "empty"),
        (b"\x22\x00", "unknown bridge message type 0x22"),
        (bytes([b.RX]) + bytes(12), "need at least 14"),
        (b.encode_tx(1, b"x", 868100000, 9)[:3] + b"\x02" + b.encode_tx(1, b"x", 868100000, 9)[4:], "flags"),
        (b.encode_rx(0, 868100000, 9, 125000, -90, 0, b"x")[:9] + b"\x05" + b"\x00" * 3 + b"x", "data-rate"),
        (b.encode_rx(0, 868100000, 9, 125000, -90, 0, b"x") + bytes(255), "frame of 256 bytes"),
        (b.encode_ping() + b"\x00", "PING"),
        (b.encode_time(1, 2, 3)[:-1], "TIME of 10 bytes"),
        (b.encode_time(1, 2, 0)[:-2] + b"\x03\xe8", "milliseconds 1000"),
        (b.encode_status(1, 1, 1, 1, 1, 868100000, 9, 125000, "x")[:-1] + b"\xff", "UTF-8"),
    ],
)
def test_bad_messages_are_named(msg, words):
    with pytest.raises(b.BridgeMessageError, match=words):
        b.decode(msg)


def test_encoder_refuses_bad_parameters():
    with pytest.raises(b.BridgeMessageError):
        b.encode_rx(0, 868100000, 6, 125000, -90, 0, b"x")
    with pytest.raises(b.BridgeMessageError):
        b.encode_tx(0, b"", 868100000, 9)
    with pytest.raises(b.BridgeMessageError):
        b.dr_byte(9, 62500)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_decode_only_raises_bridge_errors(data):
    try:
        b.decode(data)
    except b.BridgeMessageError:
        pass
