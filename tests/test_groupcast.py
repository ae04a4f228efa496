"""LoRa multicast groups (SPEC §5 "Groups"): keys, the wrapped join, GROUP_COMMAND frames.

The lamp's side runs under real MicroPython in tests/micropython/mp_group.py; here the same
node code (firmware/group.py) is fuzzed on CPython with hypothesis: whatever arrives,
a frame that is not genuine and fresh changes nothing, and a join never raises.
"""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.group import Groups
from protocol import frame, groupcast, lora
from protocol import messages as m
from protocol.keys import NodeKeys

MASTER = bytes(range(16, 32))
ROOT_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
KEYS = NodeKeys(0x00A1B2C3, ROOT_KEY)


class Flash:
    """A HAL's storage, nothing else (what group uses); `fail` makes writes raise."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.fail = False

    def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    def save(self, key: str, data: bytes) -> None:
        if self.fail:
            raise OSError(5, "EIO")
        self.data[key] = bytes(data)


def _spec_example() -> dict[str, str]:
    text = (ROOT / "protocol" / "SPEC.md").read_text()
    block = re.search(r"^```example group\n(.*?)^```", text, re.M | re.S)
    assert block, "SPEC.md has no `example group` block"
    out = {}
    for line in block.group(1).splitlines():
        k, _, v = line.partition(" ")
        out[k] = v.strip()
    return out


def test_spec_example_is_what_the_code_makes():
    ex = _spec_example()
    master = bytes.fromhex(ex["master"])
    addr, gen = int(ex["addr"]), int(ex["gen"])
    key = groupcast.group_key(master, addr, gen)
    assert key.hex() == ex["group_key"]
    keys = NodeKeys(int(ex["node_id"], 16), bytes.fromhex(ex["root_key"]))
    assert groupcast.wrap_pad(keys, addr, gen).hex() == ex["pad"]
    args = groupcast.join_args(keys, addr, gen, int(ex["next"]), key)
    assert args == [int(x) for x in ex["join_args"].split(",")]
    body = m.encode(m.COMMAND, {0: int(ex["command_id"]), 1: m.OP_SET_LEVEL, 2: [100, 7200], 3: int(ex["expires"])})
    raw = groupcast.seal(key, addr, int(ex["counter"]), body)
    assert raw.hex(" ") == ex["frame"]
    assert groupcast.open_frame(key, raw) == (addr, int(ex["counter"]), body)


def test_join_unwraps_to_the_key_for_its_node_only():
    key = groupcast.group_key(MASTER, 7, 1)
    args = groupcast.join_args(KEYS, 7, 1, 42, key)
    assert groupcast.unwrap_args(KEYS, args) == (7, 1, 42, key)
    stranger = NodeKeys(0x00A1B2C4, ROOT_KEY)  # same root key, another node: another pad
    assert groupcast.unwrap_args(stranger, args)[3] != key
    assert key.hex() not in repr(args) and bytes(16) != groupcast.wrap_pad(KEYS, 7, 1)
    # one (addr, gen) has one key; a new generation is another key, under another pad
    assert groupcast.group_key(MASTER, 7, 2) != key
    assert groupcast.wrap_pad(KEYS, 7, 2) != groupcast.wrap_pad(KEYS, 7, 1)


def test_join_fits_51_bytes_within_the_documented_ranges():
    worst = {0: 0xFFFF, 1: m.OP_JOIN_GROUP, 2: [groupcast.GROUP_ADDR_MAX, 255, 0xFFFF] + [-(2**31)] * 4}
    n = frame.HEADER_LEN + len(m.encode(m.COMMAND, worst)) + frame.MIC_LEN
    assert n <= lora.max_payload(12) == 51, n
    top = {
        0: 0xFFFFFFFF,
        1: m.OP_JOIN_GROUP,
        2: [0xFFFF, groupcast.GROUP_GEN_MAX, groupcast.GROUP_COUNTER_MAX] + [-(2**31)] * 4,
    }
    n = frame.HEADER_LEN + len(m.encode(m.COMMAND, top)) + frame.MIC_LEN
    assert n <= lora.max_payload(9), n  # the worst case of all still fits SF9 (SPEC: sizes)


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="master"):
        groupcast.group_key(b"short", 7, 1)
    with pytest.raises(ValueError, match="group address"):
        groupcast.group_key(MASTER, 0, 1)
    with pytest.raises(ValueError, match="rotate"):
        groupcast.join_args(KEYS, 7, 1, groupcast.GROUP_COUNTER_MAX + 1, bytes(16))
    key = groupcast.group_key(MASTER, 7, 1)
    raw = groupcast.seal(key, 7, 3, b"\xa0")
    with pytest.raises(frame.BadMIC):
        groupcast.open_frame(groupcast.group_key(MASTER, 7, 2), raw)
    with pytest.raises(frame.MalformedFrame):
        groupcast.open_frame(key, frame.seal(KEYS, m.COMMAND, 1, b"\xa0"))


def _member(next_counter: int = 0) -> tuple[Groups, Flash, bytes]:
    flash = Flash()
    g = Groups(flash, KEYS)
    key = groupcast.group_key(MASTER, 7, 1)
    assert g.join(groupcast.join_args(KEYS, 7, 1, next_counter, key)) == (m.RES_OK, 1)
    return g, flash, key


def test_member_takes_each_counter_once_and_persists_before_acting():
    g, flash, key = _member(5)
    body = m.encode(m.COMMAND, {0: groupcast.MCAST_ID_BASE, 1: m.OP_SET_LEVEL, 2: [100, 7200]})
    assert g.check(frame.parse(groupcast.seal(key, 7, 4, body))) is False  # before the join's counter
    assert g.check(frame.parse(groupcast.seal(key, 7, 5, body))) == body
    assert g.check(frame.parse(groupcast.seal(key, 7, 5, body))) is False  # replay
    assert Groups(flash, KEYS).slots[0][2] == 6  # a reboot keeps the next counter
    flash.fail = True  # not written: not acted on, and the counter is not used up
    assert g.check(frame.parse(groupcast.seal(key, 7, 9, body))) is False
    flash.fail = False
    assert g.slots[0][2] == 6 and g.check(frame.parse(groupcast.seal(key, 7, 9, body))) == body
    assert g.check(frame.parse(groupcast.seal(groupcast.group_key(MASTER, 8, 1), 8, 20, body))) is None


def test_join_limits():
    g = Groups(Flash(), KEYS)
    for addr in range(1, 5):
        assert g.join(groupcast.join_args(KEYS, addr, 0, 0, groupcast.group_key(MASTER, addr, 0)))[0] == m.RES_OK
    assert g.join(groupcast.join_args(KEYS, 5, 0, 0, groupcast.group_key(MASTER, 5, 0))) == (m.RES_REFUSED, 0)
    assert g.join([5]) == (m.RES_OK, 0) and len(g.slots) == 4  # leaving a group not joined: fine
    assert g.join([1]) == (m.RES_OK, 0) and len(g.slots) == 3
    assert g.join([0]) == (m.RES_BAD_ARGS, 0) and g.join([]) == (m.RES_BAD_ARGS, 0)
    assert g.join([7, -1, 0, 0, 0, 0, 0]) == (m.RES_BAD_ARGS, 0)


ints = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(ints, max_size=24))
def test_fuzz_join_never_raises(args: list[int]) -> None:
    g, flash, _ = _member()
    before = dict(flash.data)
    res, _v = g.join(args)
    assert res in (m.RES_OK, m.RES_BAD_ARGS, m.RES_REFUSED)
    if res != m.RES_OK:
        assert flash.data == before


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 40))
def test_fuzz_group_frames_from_the_air(raw: bytes, flip: int) -> None:
    """Random bytes, and genuine frames with one bit flipped: never accepted, nothing changes."""
    g, flash, key = _member()
    before = dict(flash.data)
    genuine = bytearray(groupcast.seal(key, 7, 3, m.encode(m.COMMAND, {0: 1, 1: 1, 2: [1, 1]})))
    genuine[flip % len(genuine)] ^= 1 << (flip % 8)
    for data in (raw, bytes(genuine)):
        try:
            f = frame.parse(data)
        except frame.FrameError:
            continue
        assert g.check(f) in (None, False)
        try:
            groupcast.open_frame(key, data)
        except frame.FrameError:
            pass
        else:
            raise AssertionError("a mutated frame verified")
    assert flash.data == before and g.slots[0][2] == 0
