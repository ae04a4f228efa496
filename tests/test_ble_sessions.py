"""BLE commissioning sessions (SPEC §11 "Sessions", issue 20 finding 3): a fake node or a relay
gets nothing sealed, and the tool trusts no counter top it cannot verify (set-up: tests/ble_site.py)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from ble_sim import aioble_fake
from ble_site import KEY, OTHER_KEY, NodeUnderTest, Site, config_frame, scenario, session, settle
from hypothesis import given, settings
from hypothesis import strategies as st

from lumeau import ble_tools
from protocol import ble as pb
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing
from protocol.keys import NodeKeys

# -- a fake node (issue 20, finding 3; SPEC §11 "Sessions", §12) ------------------------------------

FAKE_ADDRESS = "C0:FF:EE:00:00:66"


class FakeNode:
    """A BLE peripheral without the node's key posing as node `real`: the attacker of SPEC §12.

    It advertises the real node's id and answers as firmware does, but with
    a key of its own; it shows a status whose tool counter top it chooses,
    keeps every frame the tool writes (`harvested`), and answers each with a
    refusal "replay: take top + 1" at the top it chooses, in the format the
    tool in front of it reads (6 bytes before sessions, 14 after). With
    `relay` it is a man in the middle: it opens the tool's session with the
    real node (changing the top in its answer) and passes every frame on.
    """

    def __init__(self, site: Site, real: NodeUnderTest, top: int, relay: bool = False) -> None:
        self.real = real
        self.top = top
        self.relay = relay
        self.harvested: list[bytes] = []
        self.sessions = 0
        self.n = site.node(real.cfg["kind"], real.cfg["node_id"], FAKE_ADDRESS, rssi=-40, key=OTHER_KEY)
        real.config_path.write_text(json.dumps(real.doc))  # the technician's file: the real node's key
        own_status = self.n.ble.status_value
        own_handle = self.n.ble.handle

        def status() -> bytes:
            v = cbor.loads(own_status())
            v[pb.ST_TOOL_TOP] = top
            return cbor.dumps(v)

        def handle(raw: bytes) -> bytes:
            if raw[:1] == b"\xa1":  # a session request
                self.sessions += 1
                answer = real.ble.handle(raw) if relay else own_handle(raw)
                return answer[:9] + top.to_bytes(4, "big") + answer[13:]
            self.harvested.append(raw)
            if relay:
                real.ble.handle(raw)  # the real node gets it at once
            refusal = bytes((0xA0, 5)) + top.to_bytes(4, "big")
            return refusal + os.urandom(8) if self.sessions else refusal

        self.n.ble.status_value = status
        self.n.ble.handle = handle


async def play(n: NodeUnderTest, frames: list[bytes]) -> list[bytes]:
    """Someone in reach connects to node `n`, opens a session of its own and writes `frames`: its answers."""
    stack = n.stack
    conn = stack.connect(central="66:66:66:66:66:66")
    await settle(1)
    h = stack.handle_of(aioble_fake.UUID(pb.CONTROL_UUID))
    got: list[bytes] = []
    dec = framing.Decoder(fr.MAX_LEN)
    stack.on_notify = lambda _h, data: got.extend(dec.feed(data))
    stack.subscribe(h)
    for raw in [b"\xa1" + os.urandom(8), *frames]:
        data = framing.encode(raw)
        for k in range(0, len(data), 20):
            stack.write(h, data[k : k + 20])
        await settle(0.5)
    if conn.is_connected():
        stack.disconnect()
    await settle(1)
    return got[1:]


def test_a_fake_node_gets_no_time_frame_the_real_node_would_take_later(tmp_path):
    """Attack (a): a keyless peripheral makes the tool seal TIME frames at counters it chooses.

    The real lamp's clock is not set (it lost power with no gateway in reach:
    dusk-to-dawn fail-safe), the very case `clock=now` is for. The fake
    harvests whatever the tool seals; forty days on it plays them to the
    real lamp. Before sessions the tool sealed a TIME at the fake's
    counter, the lamp took it and its clock went 40 days back.
    """
    import time as systime

    async def body(site: Site):
        real = site.node("lighting", time_known=False)
        fake = FakeNode(site, real, top=fr.TOOL_COUNTER_BASE + 1000)
        await settle(2)
        recorded_at = systime.time() - 40 * 86400  # the recording is 40 days old when it is played
        with pytest.raises(ble_tools.BleToolError) as e:
            await ble_tools.configure(
                FAKE_ADDRESS,
                ["clock=now"],
                config=real.config_path,
                backends=site.air.backends,
                clock=lambda: recorded_at,
            )
        fake.n.device.leave()
        answers = await play(real, fake.harvested)
        return e.value, fake.harvested, answers, real.node.time(), real.node.store.tool_window.top

    err, harvested, answers, clock, top = scenario(body, tmp_path)
    assert clock is None, f"a harvested TIME set the lamp's clock to {clock}"
    assert top == fr.TOOL_COUNTER_BASE - 1
    assert err.reason == "auth" and "not tagged with this key" in str(err)
    assert harvested == []  # the tool sealed nothing for a device it could not verify
    assert all(a[0] == pb.REFUSED for a in answers)


@pytest.mark.parametrize("lie", ["in the session", "in a refusal"])
def test_a_fake_node_in_the_middle_cannot_fill_the_tools_counter_half(tmp_path, lie):
    """Attack (b): a man in the middle steers the tool to the last tool counter, locking the real technician out.

    It relays to the real node but lies about the top: in the session's
    answer (once, the status), or in a refusal "replay, take top + 1" after
    swallowing the tool's first frame. Before sessions the tool sealed a
    CONFIG at 2^32 - 1, the real node took it, and every later tool frame
    was "exhausted".
    """

    async def body(site: Site):
        real = site.node("lighting")
        last = fr.MAX_COUNTER - 1
        fake = FakeNode(site, real, top=last, relay=True)
        if lie == "in a refusal":
            honest = fake.n.ble.handle
            fake.n.ble.status_value = real.ble.status_value

            def swallow_first(raw: bytes) -> bytes:
                if raw[:1] == b"\xa1":
                    fake.sessions += 1
                    return real.ble.handle(raw)  # an honest session: the real top
                fake.n.ble.handle = honest
                fake.harvested.append(raw)
                refusal = bytes((pb.REFUSED, pb.R_REPLAY)) + last.to_bytes(4, "big")
                return refusal + bytes(8) if fake.sessions else refusal

            fake.n.ble.handle = swallow_first
        await settle(2)
        first = await site.cli("configure", FAKE_ADDRESS, "sf=10", "--config", str(real.config_path))
        fake.n.device.leave()
        top = real.node.store.tool_window.top
        second = await site.cli("configure", "00a1b2c3", "report_interval=600", "--config", str(real.config_path))
        return first, top, fake.harvested, second, real.node.report_s

    first, top, harvested, (code, out, err), report_s = scenario(body, tmp_path)
    assert top < fr.MAX_COUNTER, "the real node's tool half was filled by a frame sealed at the fake's top"
    assert (code, err) == (0, "") and "applied report_interval=600" in out and report_s == 600
    assert first[0] == 1 and first[2].rstrip().endswith("[auth]")
    assert all(int.from_bytes(f[5:9], "big") == fr.TOOL_COUNTER_BASE for f in harvested)  # the verified top + 1


def test_a_recorded_session_answer_does_not_open_a_session(tmp_path):
    """A fake replaying a real node's session answer: the tag covers the tool's own challenge."""

    async def body(site: Site):
        real = site.node("lighting")
        await settle(2)
        recorded = real.ble.handle(b"\xa1" + b"\x33" * 8)  # someone's earlier session with the real node
        fake = FakeNode(site, real, top=fr.TOOL_COUNTER_BASE + 7)
        fake.n.ble.handle = lambda raw: recorded if raw[:1] == b"\xa1" else b"\xa0\x05" + bytes(12)
        await settle(2)
        return await site.cli("configure", FAKE_ADDRESS, "sf=10", "--config", str(real.config_path))

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "not tagged with this key" in err and err.rstrip().endswith("[auth]")


def test_a_tool_frame_is_good_for_its_own_session_only(tmp_path):
    """A genuine frame never delivered (jammed) and played in a later connection: refused, counter untouched."""

    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        nonce = session(n.ble)
        jammed = config_frame(fr.TOOL_COUNTER_BASE, {m.CFG_REPORT_INTERVAL: 86400}, echo=nonce)
        answers = await play(n, [jammed])  # a new connection: a new session, another nonce
        return answers, n.node.report_s, n.node.store.tool_window.top

    [answer], report_s, top = scenario(body, tmp_path)
    assert answer[:2] == bytes((pb.REFUSED, pb.R_ECHO)) and report_s == 900 and top == fr.TOOL_COUNTER_BASE - 1


def test_an_older_node_without_sessions_is_named(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        own = n.ble.handle
        n.ble.handle = lambda raw: b"\xa0\x01" + bytes(4) if raw[:1] == b"\xa1" else own(raw)
        await settle(2)
        return await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path))

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "its firmware predates them; update it" in err and err.rstrip().endswith("[protocol]")


class _Answers:
    """A Link stand-in whose node answers each write with the next of `answers` (the tool's parsers under fuzz)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.written: list[bytes] = []
        self.seen = ble_tools.Seen("x", 0x00A1B2C3, 1, 0, 0, None, "0.1.0", True, True, -60)

    async def exchange(self, frame: bytes) -> bytes:
        self.written.append(frame)
        return self.answers.pop(0) if self.answers else b""


@settings(max_examples=300, deadline=None)
@given(session_answer=st.binary(max_size=40), refusal=st.binary(max_size=40))
def test_fuzz_the_tool_trusts_no_answer_it_cannot_verify(session_answer, refusal):
    """Whatever a device answers, the tool raises a BleToolError; it seals a frame only after a verified session."""
    keys = NodeKeys(0x00A1B2C3, KEY)
    link = _Answers([session_answer, refusal])

    async def run() -> None:
        s = await ble_tools.open_session(link, keys)  # type: ignore[arg-type]
        await ble_tools._send(link, keys, s, m.CONFIG, lambda: {0: {0: 60}, 2: s.nonce}, s.top)  # type: ignore[arg-type]

    with pytest.raises(ble_tools.BleToolError) as e:
        asyncio.run(run())
    assert e.value.reason in ("protocol", "auth", "refused")
    assert len(link.written) == 1  # the session request only: a keyless answer gets no frame
