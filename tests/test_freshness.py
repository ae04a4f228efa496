"""Issue 20, freshness: late downlinks, TIME and CONFIG that expire, re-keying both ends (SPEC §4).

Each attack of the review is played against the real firmware runtime (and
the real gateway where the gateway is the party at fault); each test failed
on the code before the fix. Bodies of recorded frames are built with plain
CBOR and integer keys, as a recording holds them.
"""

from __future__ import annotations

import asyncio
import json

from firmware_helpers import ROOT_KEY, ToyLamp, make_cfg
from test_runtime import MIN, World, run

from firmware import ble as node_ble
from firmware.radio import memory_link
from firmware.runtime import Node
from firmware.store import Store
from gateway.downlinks import Downlinks
from gateway.model import Reception
from gateway.pipeline import Pipeline
from gateway.registry import NodeEntry, Registry
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator import virtual_loop
from simulator.gateway_link import open_sim_store
from simulator.hal_sim import SimHAL

DAY_MS = 86_400_000
KEYS = NodeKeys(0x00A1B2C3, ROOT_KEY)


def recorded(mtype: int, counter: int, body: dict) -> bytes:
    """A genuine gateway frame, as an attacker records it (and jams it) on the air."""
    return fr.seal(KEYS, mtype, counter, cbor.dumps(body))


# -- finding 1: late, out-of-order gateway downlinks ------------------------------------------------


def test_a_recorded_time_and_command_delivered_ten_days_late_are_refused():
    """The review's attack: TIME (10) and COMMAND (11) jammed, delivered ten days later under top 20."""

    async def main(clock):
        w = World(clock, cfg=make_cfg(report_interval_s=3600, status_interval_s=86400))
        node = w.boot(time_known=True)
        await clock.run_for(30_000)
        then = node.time()
        up = w.gw.heard[-1].counter
        time_10 = recorded(m.TIME, 10, {0: then, 1: 0, 2: up})
        cmd_11 = recorded(m.COMMAND, 11, {0: 500, 1: m.OP_SET_LEVEL, 2: [5, 3600], 3: then + 3600})
        w.gw.down_counter = 20  # the gateway went on; the node's top reaches 20
        w.gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 86400}}))
        await clock.run_for(2 * 3600_000)
        assert node.store.window.top == 20
        await clock.run_for(10 * DAY_MS)
        before = node.time()
        w.gw.raw_pending += [time_10, cmd_11]  # after the gateway's ACK (21) of the next uplink
        await clock.run_for(2 * 3600_000)
        await w.stop()
        return node, before, then

    node, before, then = run(main)
    assert node.time() >= before > then + 10 * 86400  # the clock did not go back ten days
    assert node.app.commands == []  # and the command never ran
    assert node.rx_replayed == 2 and node.store.window.top == 21


def test_a_time_and_a_config_never_delivered_are_refused_when_they_arrive_late():
    """Above the top (the gateway sent nothing since), but stale: TIME answers an old uplink, CONFIG expired."""

    async def main(clock):
        w = World(clock, cfg=make_cfg(report_interval_s=3600, status_interval_s=86400))
        node = w.boot(time_known=True)
        await clock.run_for(30_000)
        then = node.time()
        up = w.gw.heard[-1].counter
        time_5 = recorded(m.TIME, 5, {0: then, 1: 0, 2: up})
        config_6 = recorded(m.CONFIG, 6, {0: {m.CFG_REPORT_INTERVAL: 86400}, 1: then + 3600})
        await clock.run_for(10 * DAY_MS)
        before = node.time()
        w.gw.raw_pending.append(time_5)
        await clock.run_for(3600_000)
        w.gw.raw_pending.append(config_6)
        await clock.run_for(3600_000)
        await w.stop()
        return node, before

    node, before = run(main)
    assert node.time() >= before  # not set back
    assert node.report_s == 3600 and node.store.settings() == []  # not applied
    assert node.rx_rejected == 2 and node.store.window.top == 6


def test_a_time_that_answers_nothing_is_refused_on_the_air_and_a_fresh_answer_is_taken():
    async def main(clock):
        w = World(clock, cfg=make_cfg(report_interval_s=3600, status_interval_s=86400))
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.bind_time = False
        w.gw.pending.append((m.TIME, {0: 1_800_000_000}))  # an old-style TIME: answers no uplink
        await clock.run_for(2 * 3600_000)
        unbound = node.time(), node.rx, len(w.gw.sent)
        w.gw.bind_time = True  # the same, naming the uplink it answers (in its RX1)
        w.gw.pending.append((m.TIME, {0: 1_800_000_000}))
        await clock.run_for(2 * 3600_000)
        await w.stop()
        return node, unbound

    node, unbound = run(main)
    assert unbound == (None, 1, 1)  # delivered and authentic, yet not taken
    assert node.time() is not None and 1_800_000_000 <= node.time() <= 1_800_007_200


def test_a_time_answering_an_uplink_is_taken_only_within_the_slack():
    clock = virtual_loop.VirtualClock()
    loop = virtual_loop.new_loop(clock)
    hal = SimHAL(clock, time_known=True)
    radio, _ = memory_link(hal, SimHAL(clock))
    node = Node(make_cfg(), hal, radio, ToyLamp, hello_jitter_ms=0)
    node.store.open()
    t0 = hal.time()
    assert node.fresh(m.TIME, {0: t0 - 3600, 2: 0}, True) == m.RES_EXPIRED  # nothing sent yet
    node._up_last = 9
    node._up_ticks[9 % m.TIME_UPLINKS] = hal.ticks_ms()
    node._up_ticks[6 % m.TIME_UPLINKS] = hal.ticks_ms()
    assert node.fresh(m.TIME, {0: t0 - 3600, 2: 9}, True) == 0  # the gateway may set it back: it is fresh
    assert node.fresh(m.TIME, {0: t0, 2: 6}, True) == 0  # one of the last TIME_UPLINKS
    assert node.fresh(m.TIME, {0: t0, 2: 5}, True) == m.RES_EXPIRED  # older than those
    assert node.fresh(m.TIME, {0: t0, 2: 10}, True) == m.RES_EXPIRED  # never sent
    assert node.fresh(m.TIME, {0: t0}, True) == m.RES_REFUSED  # on the air a TIME answers an uplink
    loop.run_until_complete(clock.run_for(m.TIME_SLACK_S * 1000 + 1))
    assert node.fresh(m.TIME, {0: t0, 2: 9}, True) == m.RES_EXPIRED  # held back past the slack
    loop.close()


def test_tool_half_counters_are_refused_on_the_air():
    """A tool's frame (recorded over BLE, never delivered) replayed on the radio: not this link's half."""

    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.raw_pending.append(recorded(m.CONFIG, fr.TOOL_COUNTER_BASE + 7, {0: {m.CFG_REPORT_INTERVAL: 86400}}))
        await clock.run_for(2 * MIN)
        await w.stop()
        return node

    node = run(main)
    assert node.report_s == 60 and node.rx_replayed == 1 and node.store.tool_window.top == fr.TOOL_COUNTER_BASE - 1


# -- the tool's TIME and CONFIG over BLE ---------------------------------------------------------------


def _commissioned_node(time_known=True):
    from ble_sim import aioble_fake

    clock = virtual_loop.VirtualClock()
    loop = virtual_loop.new_loop(clock)
    hal = SimHAL(clock, time_known=time_known)
    radio, _ = memory_link(hal, SimHAL(clock))
    cfg = make_cfg(ble={"enabled": True})
    node = Node(cfg, hal, radio, ToyLamp, hello_jitter_ms=0)
    node.store.open()
    ble = node_ble.Commissioning(node, aioble_fake.Stack().aioble(), aioble_fake.UUID, cfg["ble"])
    return loop, hal, node, ble


def _answer(ble, mtype: int, counter: int, body: dict) -> int:
    nonce = ble.handle(b"\xa1" + bytes(8))[1:9]  # a session, as a tool opens one (SPEC §11 "Sessions")
    out = ble.handle(recorded(mtype, counter, {**body, (m.CF_ECHO if mtype == m.CONFIG else m.T_ECHO): nonce}))
    f, plain = fr.unseal(KEYS, out)
    return m.decode(m.CMD_ACK, plain)[m.CA_RESULT]


def test_a_tool_time_never_sets_a_set_clock_back_by_more_than_the_slack():
    loop, hal, node, ble = _commissioned_node()
    t0 = hal.time()
    base = fr.TOOL_COUNTER_BASE
    assert _answer(ble, m.TIME, base, {0: t0 - 40 * 86400}) == m.RES_REFUSED  # a 40-day-old recording
    assert abs(hal.time() - t0) <= 1
    assert _answer(ble, m.TIME, base + 1, {0: t0 - m.TIME_SLACK_S}) == m.RES_OK  # within the slack
    assert _answer(ble, m.TIME, base + 2, {0: t0 + 7200}) == m.RES_OK  # forward: fine
    assert abs(hal.time() - (t0 + 7200)) <= 1
    loop.close()
    loop, hal, node, ble = _commissioned_node(time_known=False)
    assert _answer(ble, m.TIME, base, {0: 1_800_000_000}) == m.RES_OK  # no clock: the tool is the reason
    assert hal.time() == 1_800_000_000
    loop.close()


def test_an_expired_tool_config_is_answered_expired_and_not_applied():
    loop, hal, node, ble = _commissioned_node()
    t0 = hal.time()
    base = fr.TOOL_COUNTER_BASE
    assert _answer(ble, m.CONFIG, base, {0: {m.CFG_REPORT_INTERVAL: 600}, 1: t0 - 1}) == m.RES_EXPIRED
    assert node.report_s == 60 and ble.applied == 0
    assert _answer(ble, m.CONFIG, base + 1, {0: {m.CFG_REPORT_INTERVAL: 600}, 1: t0 + 600}) == m.RES_OK
    assert node.report_s == 600
    loop.close()


# -- finding 10: counter 0 after BLE commissioning ---------------------------------------------------


def test_gateway_counter_0_is_accepted_after_commissioning_and_a_reboot():
    loop, hal, node, ble = _commissioned_node()
    assert _answer(ble, m.CONFIG, fr.TOOL_COUNTER_BASE, {0: {m.CFG_REPORT_INTERVAL: 600}}) == m.RES_OK
    storage = hal.storage
    loop.close()
    clock = virtual_loop.VirtualClock()
    loop = virtual_loop.new_loop(clock)
    hal = SimHAL(clock, time_known=True, storage=storage)  # the reboot: same flash
    radio, _ = memory_link(hal, SimHAL(clock))
    node = Node(make_cfg(), hal, radio, ToyLamp, hello_jitter_ms=0)
    node.store.open()
    assert node.store.window.top == -1 and node.store.tool_window.top == fr.TOOL_COUNTER_BASE
    asyncio.set_event_loop(loop)
    try:
        node._build_app()
        node._downlink(recorded(m.COMMAND, 0, {0: 1, 1: m.OP_SET_LEVEL, 2: [70, 60]}), -90, 0)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert node.rx == 1 and node.app.commands == [(m.OP_SET_LEVEL, [70, 60])]
    again = Store(hal)
    again.open()
    assert again.window.top == 0


# -- finding 7: re-keying resets both ends consistently, end to end -----------------------------------


class _Wire:
    """The gateway's serial path to the node (DownlinkPath): a wire, the node always listening."""

    def __init__(self, radio) -> None:
        self.radio = radio

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        await self.radio.send(frame)


def test_after_a_rekey_the_node_takes_the_gateways_downlinks(tmp_path):
    """The real gateway (registry, pipeline, store, downlinks) and the real node runtime on one wire."""
    new_key = bytes(reversed(ROOT_KEY))

    async def main(clock):
        storage: dict[str, bytes] = {}
        reg = Registry(tmp_path / "registry.toml", {KEYS.node_id: NodeEntry(KEYS.node_id, "lighting", ROOT_KEY)})
        store = await open_sim_store(tmp_path / "gw.db")
        downlinks = Downlinks(store, reg, clock=lambda: clock.unix0 + clock.ms() / 1000)
        await downlinks.start()
        pipeline = Pipeline(reg, store, downlinks=downlinks)
        gw_hal = SimHAL(clock, time_known=True)
        tasks: list[asyncio.Task] = []

        def boot(root_key: bytes) -> Node:
            for t in tasks:
                t.cancel()
            hal = SimHAL(clock, storage=storage)
            radio, gw_radio = memory_link(hal, gw_hal, sf=None)
            node = Node(make_cfg(root_key=root_key.hex()), hal, radio, ToyLamp, hello_jitter_ms=0)
            wire = _Wire(gw_radio)

            async def feed():
                while True:
                    r = await gw_radio.recv(3_600_000)
                    if r is not None:
                        await pipeline.ingest(
                            Reception(r[0], "serial", "serial:test", clock.unix0 + clock.ms() / 1000, path=wire)
                        )

            tasks[:] = [asyncio.create_task(node.run()), asyncio.create_task(feed())]
            return node

        node = boot(ROOT_KEY)
        await clock.run_for(MIN)
        for i in range(3):
            await downlinks.enqueue(KEYS.node_id, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 120 + i}})
            await clock.run_for(3 * MIN)
        assert node.report_s == 122 and node.store.window.top >= 2
        old_top = node.store.window.top
        # the re-key: `lumeau node provision` writes the new key to the registry (the API's PUT) and
        # the node's config; the gateway forgets the node's counters; the node reboots on its new config
        reg.upsert(NodeEntry(KEYS.node_id, "lighting", new_key))
        await pipeline.reset_node(KEYS.node_id)
        node = boot(new_key)
        await clock.run_for(MIN)
        dl = await downlinks.enqueue(KEYS.node_id, m.COMMAND, {1: m.OP_SET_LEVEL, 2: [80, 600]})
        cfg = await downlinks.enqueue(KEYS.node_id, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 300}})
        await clock.run_for(5 * MIN)
        await downlinks.enqueue(KEYS.node_id, m.TIME, {})
        await clock.run_for(6 * MIN)  # the TIME answers the next report
        state = store.downlink(dl.id).state, store.downlink(cfg.id).state
        for t in tasks:
            t.cancel()
        await downlinks.close()
        await pipeline.close()
        await store.close()
        return node, old_top, state

    clock = virtual_loop.VirtualClock(unix0=1_782_000_000)
    node, old_top, state = virtual_loop.run(main(clock), clock)
    assert state == ("acked", "sent")
    assert node.app.commands == [(m.OP_SET_LEVEL, [80, 600])] and node.report_s == 300
    assert node.store.window.top > old_top  # the gateway went on above the node's top
    assert node.rx_rejected == 0 and node.time() is not None  # and its TIME answered a fresh uplink
    json.dumps(state)
