"""Frame v1: layout, MIC, direction and node binding, encryption, replay window."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from protocol import frame, keys
from protocol import messages as m

ROOT = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NODE = 0x00A1B2C3
K = keys.NodeKeys(NODE, ROOT)


def test_layout_is_byte_exact():
    body = bytes.fromhex("a10018 64".replace(" ", ""))
    raw = frame.seal(K, m.LIGHT, 0x01020304, body)
    assert raw[0] == 0x22  # version 1 in bits 7-5, type 2, not encrypted
    assert raw[1:5] == NODE.to_bytes(4, "big")
    assert raw[5:9] == bytes([1, 2, 3, 4])
    assert raw[9:-4] == body
    # The MIC is HMAC-SHA256 with the uplink key over everything before it, first 4 bytes.
    assert raw[-4:] == hmac.new(K.mic_up.key, raw[:-4], hashlib.sha256).digest()[:4]
    assert len(raw) == frame.HEADER_LEN + len(body) + frame.MIC_LEN


@settings(max_examples=200, deadline=None)
@given(
    mtype=st.sampled_from(sorted(m.SPECS)),
    counter=st.integers(0, 0xFFFFFFFF),
    body=st.binary(min_size=1, max_size=frame.MAX_LEN - 13),
    encrypt=st.booleans(),
)
def test_seal_unseal_round_trip(mtype, counter, body, encrypt):
    raw = frame.seal(K, mtype, counter, body, encrypt=encrypt)
    f, plain = frame.unseal(K, raw)
    assert (f.mtype, f.node_id, f.counter, f.encrypted, f.downlink) == (mtype, NODE, counter, encrypt, mtype >= 8)
    assert plain == body
    if encrypt and len(body) >= 8:
        assert f.body != body  # the air does not carry the plaintext


@settings(max_examples=100, deadline=None)
@given(body=st.binary(min_size=1, max_size=40), pos=st.data(), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_rejected(body, pos, bit):
    raw = bytearray(frame.seal(K, m.LIGHT, 5, body))
    i = pos.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << bit
    with pytest.raises(frame.FrameError):
        frame.unseal(K, bytes(raw))


def test_uplink_cannot_be_reflected_as_downlink():
    raw = bytearray(frame.seal(K, m.CMD_ACK, 9, b"\xa2\x00\x01\x01\x00"))
    raw[0] |= frame.DOWNLINK_BIT  # same bytes, claimed downlink: the other key must be used
    with pytest.raises(frame.BadMIC):
        frame.unseal(K, bytes(raw))


def test_frame_of_one_node_does_not_verify_for_another_with_the_same_root():
    other = keys.NodeKeys(NODE + 1, ROOT)
    raw = bytearray(frame.seal(K, m.LIGHT, 1, b"\xa0"))
    raw[1:5] = other.node_id.to_bytes(4, "big")
    with pytest.raises(frame.BadMIC):
        frame.unseal(other, bytes(raw))
    with pytest.raises(frame.BadMIC):  # keys of the wrong node named explicitly
        frame.verify(other, frame.parse(frame.seal(K, m.LIGHT, 1, b"\xa0")))


def test_encrypted_ciphertext_depends_on_counter_and_direction():
    body = b"\xa1\x00\x18\x64" * 4
    c1 = frame.seal(K, m.LIGHT, 1, body, encrypt=True)[9:-4]
    c2 = frame.seal(K, m.LIGHT, 2, body, encrypt=True)[9:-4]
    c3 = frame.seal(K, m.COMMAND, 1, body, encrypt=True)[9:-4]
    assert len({c1, c2, c3, body}) == 4


@pytest.mark.parametrize(
    "raw,why",
    [
        (b"", "too short"),
        (bytes(13), "too short"),
        (b"\x22" + bytes(300), "too long"),
        (b"\x42" + bytes(20), "version"),
    ],
)
def test_malformed_frames_have_clear_errors(raw, why):
    with pytest.raises(frame.MalformedFrame, match=why):
        frame.parse(raw)


def test_seal_refuses_what_cannot_be_sent():
    with pytest.raises(ValueError, match="counter"):
        frame.seal(K, m.LIGHT, 1 << 32, b"\xa0")
    with pytest.raises(ValueError, match="does not fit"):
        frame.seal(K, m.LIGHT, 1, bytes(frame.MAX_LEN))
    with pytest.raises(ValueError, match="does not fit"):
        frame.seal(K, m.LIGHT, 1, b"")
    with pytest.raises(ValueError, match="type"):
        frame.seal(K, 16, 1, b"\xa0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_verify_and_never_crash(data):
    with pytest.raises(frame.FrameError):
        frame.unseal(K, data)


def test_unseal_with_window_reports_duplicates_and_replays():
    w = frame.ReplayWindow()
    frames = {c: frame.seal(K, m.LIGHT, c, b"\xa0") for c in (100, 99, 140)}
    frame.unseal(K, frames[100], w)
    frame.unseal(K, frames[99], w)  # reordered between radios: still accepted once
    with pytest.raises(frame.ReplayedFrame) as e:
        frame.unseal(K, frames[99], w)
    assert e.value.verdict == frame.DUPLICATE and e.value.reason == "duplicate"
    frame.unseal(K, frames[140], w)
    with pytest.raises(frame.ReplayedFrame) as e:
        frame.unseal(K, frames[100], w)  # 40 behind the top: outside the 32-wide window
    assert e.value.verdict == frame.STALE and e.value.reason == "replay"


def test_window_does_not_move_on_a_bad_mic():
    w = frame.ReplayWindow()
    raw = bytearray(frame.seal(K, m.LIGHT, 1000, b"\xa0"))
    raw[-1] ^= 1
    with pytest.raises(frame.BadMIC):
        frame.unseal(K, bytes(raw), w)
    assert w.top == -1
    frame.unseal(K, frame.seal(K, m.LIGHT, 5, b"\xa0"), w)


class WindowModel(RuleBasedStateMachine):
    """ReplayWindow against a reference that remembers every accepted counter."""

    @initialize(size=st.sampled_from([1, 8, 32, 64]))
    def start(self, size):
        self.w = frame.ReplayWindow(size=size)
        self.size = size
        self.seen: set[int] = set()

    @rule(c=st.integers(0, 200))
    def offer(self, c):
        top = max(self.seen, default=-1)
        if c in self.seen and c > top - self.size:
            expected = frame.DUPLICATE
        elif c <= top - self.size:
            expected = frame.STALE
        else:
            expected = frame.ACCEPT
        assert self.w.check(c) == expected
        if expected == frame.ACCEPT:
            self.w.commit(c)
            self.seen.add(c)

    @invariant()
    def state_is_bounded(self):
        if hasattr(self, "w"):
            assert self.w.mask < (1 << self.size)


TestWindowModel = WindowModel.TestCase
TestWindowModel.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
