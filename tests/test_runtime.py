"""firmware.runtime on CPython: a node on a virtual clock talking to a test gateway.

Every frame the node sends is verified by protocol/ on the gateway side
(tests/firmware_helpers.MiniGateway), so counters, MICs and bodies are
checked by the receiver's code, not by the node's own bookkeeping.

One file (over 600 lines): every case runs the same node on the same
MiniGateway fixtures; the app-specific cases live in test_lighting/irrigation.
"""

from __future__ import annotations

import asyncio

import pytest
from firmware_helpers import ROOT_KEY, MiniGateway, ToyLamp, ToyValves, make_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from firmware import runtime, uplink
from firmware.radio import memory_link
from firmware.runtime import Node
from firmware.store import R
from protocol import frame as fr
from protocol import lora
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator import virtual_loop
from simulator.hal_sim import SimHAL, SimReset

MIN = 60_000


class World:
    """A clock, one node (rebootable on the same flash) and the test gateway."""

    def __init__(self, clock, cfg=None, app=ToyLamp, sf=9, **node_kw):
        self.clock = clock
        self.cfg = cfg or make_cfg()
        self.app = app
        self.sf = sf
        self.node_kw = {"hello_jitter_ms": 0, **node_kw}
        self.storage: dict[str, bytes] = {}
        self.gw_hal = SimHAL(clock)
        self.node_task: asyncio.Task | None = None
        self.gw_task: asyncio.Task | None = None
        self.ended: BaseException | None = None

    def boot(self, reset_cause=m.RST_POWER_ON, **hal_kw) -> Node:
        if self.node_task is not None:
            self.node_task.cancel()
            self.hal.power_off()
        self.hal = SimHAL(self.clock, storage=self.storage, reset_cause=reset_cause, **hal_kw)
        node_radio, gw_radio = memory_link(self.hal, self.gw_hal, sf=self.sf)
        if self.gw_task is None:
            self.gw = MiniGateway(self.gw_hal, gw_radio)
        else:  # the same gateway (its replay window, its counter) on the new link
            self.gw_task.cancel()
            self.gw.radio = gw_radio
        self.gw_task = asyncio.create_task(self.gw.run())
        self.node = Node(self.cfg, self.hal, node_radio, self.app, **self.node_kw)
        self.node_task = asyncio.create_task(self._run(self.node))
        return self.node

    async def _run(self, node):
        try:
            await node.run()
        except SimReset as e:
            self.ended = e

    async def stop(self):
        for t in (self.node_task, self.gw_task):
            if t is not None:
                t.cancel()
        self.hal.power_off()
        await asyncio.sleep(0)


def run(main, **kw):
    clock = virtual_loop.VirtualClock(unix0=1_782_000_000)
    return virtual_loop.run(main(clock, **kw), clock)


def test_boot_hello_first_then_reports_and_status():
    async def main(clock):
        w = World(clock)
        w.boot()
        await clock.run_for(20 * MIN)
        await w.stop()
        return w

    w = run(main)
    heard = w.gw.heard
    assert w.gw.rejected == []
    hello = heard[0]
    assert hello.mtype == m.HELLO
    assert hello.body == {0: protocol.VERSION, 1: m.KIND_LIGHTING, 2: ToyLamp.CAPS, 3: w.cfg["hash"], 4: m.RST_POWER_ON}
    reports = w.gw.of_type(m.LIGHT)
    assert 18 <= len(reports) <= 21  # every 60 s +-5 %
    gaps = [b.t_end - a.t_end for a, b in zip(reports, reports[1:])]
    assert all(57_000 - 1000 <= g <= 63_000 + 1000 for g in gaps), gaps
    assert reports[0].body == {0: 40, 3: m.LS_ON}
    status = w.gw.of_type(m.STATUS)
    assert len(status) == 1 or len(status) == 2
    assert status[0].body[7] >= 0 and status[0].body[0] >= 570
    assert [h.counter for h in heard] == list(range(len(heard)))


def test_hello_names_the_running_release_bundle():
    # SPEC §13: main.py puts the running release's bundle id (3 bytes) in cfg; HELLO key 5 carries it
    async def main(clock):
        cfg = make_cfg()
        cfg["bundle"] = b"\x8c\x83\x2f"
        w = World(clock, cfg=cfg)
        w.boot()
        await clock.run_for(1 * MIN)
        await w.stop()
        return w

    w = run(main)
    hello = w.gw.heard[0]
    assert hello.mtype == m.HELLO and hello.body[m.H_BUNDLE] == b"\x8c\x83\x2f"
    assert len(hello.raw) <= 51


def test_reboot_counter_continuity_and_watchdog_reset_reported():
    async def main(clock):
        w = World(clock)
        w.boot()
        await clock.run_for(5 * MIN)
        first_boot = [h.counter for h in w.gw.heard]
        w.boot(reset_cause=m.RST_WATCHDOG)
        await clock.run_for(5 * MIN)
        w.boot(reset_cause=m.RST_SOFT)
        await clock.run_for(5 * MIN)
        await w.stop()
        return w, first_boot

    w, first_boot = run(main)
    counters = [h.counter for h in w.gw.heard]
    assert w.gw.rejected == []  # the gateway's replay window accepted every frame
    assert counters == sorted(set(counters))
    hellos = w.gw.of_type(m.HELLO)
    assert [h.body[4] for h in hellos] == [m.RST_POWER_ON, m.RST_WATCHDOG, m.RST_SOFT]
    assert [h.counter for h in hellos] == [0, R, 2 * R]  # each boot starts at the reservation
    assert first_boot == list(range(len(first_boot)))
    ev = [h.body for h in w.gw.of_type(m.EVENT)]
    assert {0: m.EV_WATCHDOG_RESET, 1: m.SEV_WARNING, 2: 0, 4: 1} in ev
    assert w.hal.writes["fc"] == 1  # one reservation write per boot


def test_downlink_replay_rejected_and_command_idempotent_by_id():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.COMMAND, {0: 77, 1: m.OP_SET_LEVEL, 2: [90, 600]}))
        await clock.run_for(2 * MIN)
        app = node.app
        assert app.commands == [(m.OP_SET_LEVEL, [90, 600])] and app.level == 90
        cmd_frame = next(raw for raw in w.gw.sent if fr.parse(raw).mtype == m.COMMAND)
        # the recorded frame replayed: rejected by the replay window, not executed
        w.gw.raw_pending.append(cmd_frame)
        await clock.run_for(2 * MIN)
        assert node.rx_replayed == 1 and len(app.commands) == 1
        # the same command id in a new frame (the gateway lost our CMD_ACK): answered, not re-run
        w.gw.pending.append((m.COMMAND, {0: 77, 1: m.OP_SET_LEVEL, 2: [10, 600]}))
        await clock.run_for(2 * MIN)
        assert len(app.commands) == 1 and app.level == 90
        # ... also after a reboot
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.COMMAND, {0: 77, 1: m.OP_SET_LEVEL, 2: [10, 600]}))
        await clock.run_for(2 * MIN)
        assert node.app.commands == []
        w.gw.pending.append((m.COMMAND, {0: 78, 1: m.OP_SET_LEVEL, 2: [101, 600]}))
        w.gw.pending.append((m.COMMAND, {0: 79, 1: 200, 2: []}))
        await clock.run_for(2 * MIN)
        await w.stop()
        return w

    w = run(main)
    acks = [h.body for h in w.gw.of_type(m.CMD_ACK)]
    assert acks == [
        {0: 77, 1: m.RES_OK, 2: 90},
        {0: 77, 1: m.RES_OK, 2: 90},
        {0: 77, 1: m.RES_OK, 2: 90},
        {0: 78, 1: m.RES_BAD_ARGS},
        {0: 79, 1: m.RES_UNKNOWN_OP},
    ]


def test_expired_command_refused_and_time_sync():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        assert node.time() is None
        w.gw.pending.append((m.TIME, {0: 1_800_000_000, 1: 250}))
        await clock.run_for(MIN)
        t = node.time()
        w.gw.pending.append((m.COMMAND, {0: 5, 1: m.OP_SET_LEVEL, 2: [80, 60], 3: 1_800_000_001}))
        await clock.run_for(2 * MIN)
        await w.stop()
        return w, node, t

    w, node, t = run(main)
    assert t is not None and 1_800_000_000 <= t <= 1_800_000_060
    assert w.gw.of_type(m.CMD_ACK)[-1].body == {0: 5, 1: m.RES_EXPIRED}
    assert node.app.commands == []
    # once the time is known, the STATUS and event bodies carry it
    assert node.hal.time() >= 1_800_000_100


def test_duty_cycle_respected_at_sf12():
    """Alarms raised faster than the law allows go out no faster than EU868's off-time."""

    async def main(clock):
        w = World(clock, sf=12)
        node = w.boot()
        w.gw.auto_ack = True

        async def storm():
            for i in range(12):
                node.event(m.EV_LAMP_FAILURE, m.SEV_WARNING, i)
                await w.hal.sleep_ms(5000)

        storm_task = asyncio.create_task(storm())
        await clock.run_for(60 * MIN)
        await storm_task  # done: 12 events 5 s apart
        await w.stop()
        return w

    w = run(main)
    heard = w.gw.heard
    assert len(w.gw.of_type(m.EVENT)) == 12  # all delivered in the end
    starts = []
    for h in heard:
        air = lora.airtime_ms(len(h.raw), 12)
        starts.append((h.t_end - air, air))
    for (s0, a0), (s1, _) in zip(starts, starts[1:]):
        # 1 % sub-band: the next frame starts no earlier than T/d after the previous start
        assert s1 >= s0 + a0 * 100 - 1, (s0, a0, s1)
    total_air = sum(a for _, a in starts)
    # from the first start to the band reopening after the last frame
    span = starts[-1][0] + starts[-1][1] * 100 - starts[0][0]
    assert total_air / span <= 0.01 + 1e-9
    assert total_air / span > 0.009  # and the node did not wait much longer than it had to


def test_confirmed_alarm_resent_with_backoff_until_given_up():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        w.gw.auto_ack = False
        await clock.run_for(10_000)
        node.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, 123)
        await clock.run_for(4 * 3600_000)
        await w.stop()
        return w, node

    w, node = run(main)
    alarms = w.gw.of_type(m.EVENT)
    assert len(alarms) == uplink._CONFIRM_MAX_SENDS
    assert all(a.body[0] == m.EV_LAMP_FAILURE and a.body[2] == 123 for a in alarms)
    assert len({a.counter for a in alarms}) == len(alarms)  # same body, new counter each time
    gaps = [b.t_end - a.t_end for a, b in zip(alarms, alarms[1:])]
    assert all(b > a for a, b in zip(gaps, gaps[1:-1])), gaps  # backing off
    assert gaps[0] >= uplink._BACKOFF_MS and max(gaps) <= uplink._BACKOFF_MAX_MS * 1.25 + 5000
    assert node.queue.unconfirmed == 1 and len(node.queue) == 0


def test_confirmed_alarm_stops_when_acknowledged():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        w.gw.auto_ack = False
        await clock.run_for(10_000)
        node.event(m.EV_BURST, m.SEV_CRITICAL, 900, zone=2)
        await clock.run_for(100_000)  # two sends unacknowledged
        w.gw.auto_ack = True
        await clock.run_for(3600_000)
        await w.stop()
        return w, node

    w, node = run(main)
    alarms = w.gw.of_type(m.EVENT)
    assert len(alarms) == 3
    assert alarms[0].body[5] == 2
    assert node.queue.acked == 1 and node.queue.unconfirmed == 0


def test_app_exception_fail_safe_lamp_on_event_and_restart():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(10_000)
        app = node.app
        assert w.hal.pwm["lamp"] == 400
        app.fail_in_run_at = w.hal.ticks_ms() + 20_000
        await clock.run_for(22_000)
        lamp_after_fault = w.hal.pwm["lamp"]
        assert node.app is None  # in backoff
        await clock.run_for(runtime._APP_BACKOFF_MIN_MS + 10_000)
        restarted = node.app
        await w.stop()
        return w, node, app, lamp_after_fault, restarted

    w, node, app, lamp_after_fault, restarted = run(main)
    assert lamp_after_fault == 1000  # the bug set it dark; failsafe put it fully on
    changes = w.hal.changes("lamp")
    i_dark = next(i for i, (_, v) in enumerate(changes) if v == 0)
    assert changes[i_dark + 1][1] == 1000 and changes[i_dark + 1][0] == changes[i_dark][0]  # same instant
    assert node.app_faults == 1 and "ZeroDivisionError" in node.last_error
    ev = w.gw.of_type(m.EVENT)[0]
    assert ev.body[0] == m.EV_APP_EXCEPTION and ev.body[1] == m.SEV_ALARM and ev.body[4] == 1
    # the value: the exception's type (SPEC §5) and the restarts so far
    assert ev.body[2] == m.APP_EXC_TYPES.index("ZeroDivisionError") << 16 | 1
    assert restarted is not None and restarted is not app


def test_failsafe_that_raises_falls_back_to_the_runtime_last_resort():
    async def main(clock):
        w = World(clock, cfg=make_cfg("irrigation"), app=ToyValves)
        node = w.boot()
        await clock.run_for(5000)
        assert w.hal.pins["zone1"] == 1 and w.hal.pins["master"] == 1
        node.app.fail_failsafe = True
        node.app.fail_at = w.hal.ticks_ms()
        await clock.run_for(3000)
        pins = dict(w.hal.pins)
        await w.stop()
        return node, pins

    node, pins = run(main)
    assert pins == {"master": 0, "zone1": 0, "zone2": 0, "zone3": 0, "zone4": 0}
    assert "failsafe broken" in node.last_error


def test_report_exception_is_an_app_fault_too():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(5000)
        node.app.fail_report = True
        await clock.run_for(2 * MIN)
        await w.stop()
        return w, node

    w, node = run(main)
    assert node.app_faults >= 1 and "KeyError" in node.last_error
    assert w.hal.pwm["lamp"] in (1000, 400)  # failsafe, then a fresh app
    assert w.gw.of_type(m.EVENT)[0].body[0] == m.EV_APP_EXCEPTION


def test_config_over_the_air_applies_and_persists():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append(
            (m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 300, m.CFG_LAMP_POWER: 90, m.CFG_TX_POWER: 99, m.CFG_SF: 10}})
        )
        await clock.run_for(2 * MIN)
        assert node.report_s == 300 and node.cfg_rejected == 1 and node.radio.sf == 10
        w.gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 3600}}))  # heard: SF10 kept (SPEC §5 ADR)
        assert node.app.settings == [{m.CFG_LAMP_POWER: 90}]
        t0 = len(w.gw.of_type(m.LIGHT))
        await clock.run_for(30 * MIN)
        n_reports = len(w.gw.of_type(m.LIGHT)) - t0
        node = w.boot()  # settings survive a reboot
        await clock.run_for(1000)
        persisted = (node.report_s, node.radio.sf, node.app.settings)
        await w.stop()
        return n_reports, persisted

    n_reports, persisted = run(main)
    assert 5 <= n_reports <= 7
    assert persisted == (300, 10, [{m.CFG_LAMP_POWER: 90}])


def test_reboot_command_answers_then_resets():
    async def main(clock):
        w = World(clock)
        w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.COMMAND, {0: 9, 1: m.OP_REBOOT}))
        await clock.run_for(3 * MIN)
        await w.stop()
        return w

    w = run(main)
    assert w.gw.of_type(m.CMD_ACK)[0].body == {0: 9, 1: m.RES_OK}
    assert isinstance(w.ended, SimReset) and w.hal.resets == 1
    assert w.hal.pwm["lamp"] == 1000  # failsafe before the reset


def test_dead_runtime_task_stops_feeding_and_the_watchdog_bites():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        causes = []
        w.hal.on_reset = causes.append
        await clock.run_for(MIN)
        assert w.hal.wdt_bites == 0 and w.hal.wdt_feeds > 10
        node._tasks[0].cancel()  # the sender dies (a bug)
        await clock.run_for(MIN)
        await w.stop()
        return w, causes

    w, causes = run(main)
    assert w.hal.wdt_bites == 1 and causes == [m.RST_WATCHDOG]


def test_storage_fault_at_boot_holds_sending_until_flash_works():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        w.hal.fail_saves = 3  # the reservation at boot and two retries fail
        await clock.run_for(10 * MIN)
        await w.stop()
        return w, node

    # fail_saves set after boot() ran? boot only creates the task: run() has not started yet
    w, node = run(main)
    assert w.gw.heard and w.gw.heard[0].mtype == m.HELLO
    assert w.gw.heard[0].counter == 0
    assert node.tx_failed >= 1  # the sender and the supervisor both retry the flash
    assert w.gw.rejected == []
    # the node was stopped safely meanwhile, and says so first once it can (SPEC §4)
    ev = [h.body for h in w.gw.of_type(m.EVENT) if h.body[m.E_CODE] == m.EV_STORAGE_FAULT]
    assert ev and ev[0][m.E_SEVERITY] == m.SEV_ALARM


def test_oversize_frames_are_dropped_not_sent():
    class Chatty(ToyLamp):
        def report(self):
            return m.STATUS, {
                0: 2**32 - 1,
                1: 2**32 - 1,
                2: -200,
                3: -80,
                4: 65535,
                5: -40,
                6: 2**32 - 1,
                7: 255,
                8: 255,
            }

    async def main(clock):
        cfg = make_cfg()
        w = World(clock, cfg=cfg, app=Chatty, sf=12)
        node = w.boot()
        await clock.run_for(6 * MIN)
        await w.stop()
        return node

    node = run(main)
    assert node.tx_oversize == 0  # STATUS at its worst is 51 bytes: fits SF12 exactly
    assert node.tx >= 2


def test_wired_node_hears_downlinks_at_any_time():
    async def main(clock):
        w = World(clock, sf=None)
        node = w.boot()
        await clock.run_for(10_000)
        gw = w.gw
        raw = gw.seal(m.COMMAND, {0: 1, 1: m.OP_SET_LEVEL, 2: [70, 60]})
        await gw.radio.send(raw)  # not in any receive window
        await clock.run_for(1000)
        await w.stop()
        return node

    node = run(main)
    assert node.app.level == 70 and node.rx == 1


def _node_for_fuzz():
    clock = virtual_loop.VirtualClock()
    loop = virtual_loop.new_loop(clock)
    hal = SimHAL(clock)
    node_radio, _ = memory_link(hal, SimHAL(clock))
    node = Node(make_cfg(), hal, node_radio, ToyLamp, hello_jitter_ms=0)
    node.store.open()
    return loop, node


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_downlink_bytes_never_raise(data):
    loop, node = _node_for_fuzz()
    try:
        asyncio.set_event_loop(loop)
        node._downlink(data, -100, 0)
        assert node.rx == 0
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 30), st.integers(0, 7), st.sampled_from([m.COMMAND, m.CONFIG, m.TIME, m.ACK]))
def test_fuzz_bit_flips_in_authentic_downlinks_are_rejected(byte, bit, mtype):
    loop, node = _node_for_fuzz()
    bodies = {
        m.COMMAND: {0: 1, 1: m.OP_SET_LEVEL, 2: [1, 2]},
        m.CONFIG: {0: {0: 120}},
        m.TIME: {0: 1_800_000_000},
        m.ACK: {0: 3},
    }
    raw = bytearray(fr.seal(NodeKeys(node.node_id, ROOT_KEY), mtype, 5, m.encode(mtype, bodies[mtype])))
    byte %= len(raw)
    raw[byte] ^= 1 << bit
    try:
        asyncio.set_event_loop(loop)
        node._downlink(bytes(raw), -100, 0)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert node.rx == 0 and node.rx_rejected + node.rx_other == 1


@pytest.mark.parametrize("mtype", [m.COMMAND, m.TIME])
def test_downlinks_sealed_for_another_node_or_direction_are_ignored(mtype):
    loop, node = _node_for_fuzz()
    other = NodeKeys(node.node_id + 1, ROOT_KEY)
    mine = NodeKeys(node.node_id, ROOT_KEY)
    body = m.encode(mtype, {0: 1, 1: 1} if mtype == m.COMMAND else {0: 5})
    try:
        asyncio.set_event_loop(loop)
        node._downlink(fr.seal(other, mtype, 1, body), 0, 0)  # another node's frame
        node._downlink(fr.seal(mine, m.LIGHT, 1, m.encode(m.LIGHT, {0: 1})), 0, 0)  # an uplink
        wrong_key = NodeKeys(node.node_id, bytes(16))
        node._downlink(fr.seal(wrong_key, mtype, 1, body), 0, 0)  # forged
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert node.rx == 0 and node.rx_other == 2 and node.rx_rejected == 1


def test_without_a_watchdog_housekeeping_wakes_for_the_hourly_flush_and_a_reboot_command():
    # a simulator's node (watchdog=False) sleeps to the next totals flush instead of every
    # minute, yet a reboot command still resets it once its CMD_ACK is out
    async def main(clock):
        w = World(clock, watchdog=False)
        node = w.boot()
        node.store.add("wh", 5)
        await clock.run_for(59 * MIN)
        assert "tot" not in w.storage  # not due yet
        await clock.run_for(2 * MIN)
        assert "tot" in w.storage  # flushed at the hour
        w.gw.pending.append((m.COMMAND, {0: 9, 1: m.OP_REBOOT}))
        await clock.run_for(20 * MIN)
        await w.stop()
        return w

    w = run(main)
    assert w.gw.of_type(m.CMD_ACK)[0].body == {0: 9, 1: m.RES_OK}
    assert isinstance(w.ended, SimReset) and w.hal.resets == 1 and w.hal.wdt_feeds == 0


# -- issue 20: counters never restart under a key; storage faults; the command-id mark ----------------


def test_config_moved_to_a_replacement_board_never_restarts_the_counter(tmp_path):
    import json

    from firmware import config

    path = tmp_path / "config.json"
    doc = {"node_id": 0x00A1B2C3, "kind": "lighting", "root_key": ROOT_KEY.hex(), "key_fresh": True}
    path.write_text(json.dumps(doc, indent=2))

    async def main(clock):
        a = World(clock, cfg=config.read(str(path)))
        a.boot()
        await clock.run_for(5 * MIN)
        await a.stop()
        # the first board holds state for the key now, and its file says so
        assert json.loads(path.read_text())["key_fresh"] is False
        b = World(clock, cfg=config.read(str(path)))  # the same file on a blank board
        node = b.boot()
        await clock.run_for(30 * MIN)
        await b.stop()
        return a, b, node

    a, b, node = run(main)
    assert a.gw.heard and a.gw.heard[0].counter == 0
    assert b.gw.heard == [] and node.tx == 0  # counter 0 again would reuse the keystream
    assert "NeedsRekey" in node.last_error
    assert b.hal.pwm["lamp"] == 1000 and node._app_task is None  # stopped safely: lamp fully on


def test_storage_failure_at_boot_refuses_replayed_downlinks_and_keeps_the_window():
    # a wire (continuous radio): downlinks can arrive before the store opens
    async def main(clock):
        w = World(clock, sf=None)
        node = w.boot()
        await clock.run_for(30_000)
        for cid in (1, 2):
            w.gw.pending.append((m.COMMAND, {0: cid, 1: m.OP_SET_LEVEL, 2: [50 + cid, 600]}))
            await clock.run_for(5 * MIN)
        assert [c[1][0] for c in node.app.commands] == [51, 52]
        old = [raw for raw in w.gw.sent if fr.parse(raw).mtype == m.COMMAND]
        top = node.store.window.top
        node = w.boot()
        w.hal.fail_saves = 3  # the counter reservation fails at boot, and twice more (run() has not started)
        await clock.run_for(1000)
        assert not node.store.opened
        for raw in old:  # replayed while the store is closed
            await w.gw.radio.send(raw)
            await clock.run_for(1000)
        assert node.app.commands == [] and node.rx == 0
        await clock.run_for(20 * MIN)  # the flash recovers
        assert node.store.opened and node.store.window.top >= top  # (+ the ACK of the storage alarm)
        for raw in old:
            await w.gw.radio.send(raw)
            await clock.run_for(1000)
        await w.stop()
        return node

    node = run(main)
    assert node.app.commands == [] and node.rx_replayed == 2


def test_a_downlink_whose_window_cannot_be_persisted_is_not_acted_on():
    async def main(clock):
        w = World(clock, sf=None)
        node = w.boot()
        await clock.run_for(30_000)
        raw = w.gw.seal(m.COMMAND, {0: 9, 1: m.OP_SET_LEVEL, 2: [20, 600]})
        w.hal.fail_saves = 1
        await w.gw.radio.send(raw)
        await clock.run_for(1000)
        failed = (list(node.app.commands), node.last_error)
        await w.gw.radio.send(raw)  # the gateway's retry, once the flash works
        await clock.run_for(5 * MIN)
        await w.stop()
        return w, node, failed

    w, node, (cmds, err) = run(main)
    assert cmds == [] and "StorageError" in err
    assert node.app.commands == [(m.OP_SET_LEVEL, [20, 600])]
    assert [h.body for h in w.gw.of_type(m.CMD_ACK)] == [{0: 9, 1: m.RES_OK, 2: 20}]


def test_a_retry_of_an_old_command_id_after_newer_ones_never_runs_again():
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        for cid in range(1, 6):
            w.gw.pending.append((m.COMMAND, {0: cid, 1: m.OP_SET_LEVEL, 2: [10 * cid, 600]}))
            await clock.run_for(2 * MIN)
        # the gateway retries id 1 (its CMD_ACK was lost), after ids 2-5 ran
        w.gw.pending.append((m.COMMAND, {0: 1, 1: m.OP_SET_LEVEL, 2: [10, 600]}))
        await clock.run_for(2 * MIN)
        level = node.app.level
        node = w.boot()  # ... and after a reboot
        await clock.run_for(30_000)
        w.gw.pending.append((m.COMMAND, {0: 1, 1: m.OP_SET_LEVEL, 2: [10, 600]}))
        await clock.run_for(2 * MIN)
        await w.stop()
        return w, node, level

    w, node, level = run(main)
    assert level == 50 and node.app.commands == []  # id 5's level stays
    acks = [h.body for h in w.gw.of_type(m.CMD_ACK)]
    assert acks[-2:] == [{0: 1, 1: m.RES_EXPIRED}, {0: 1, 1: m.RES_EXPIRED}]


# -- issue 17: an app's exception says why, and its alarm clears -------------------------------


def test_app_exception_prints_on_the_console_and_names_its_type(monkeypatch):
    # Before: the EVENT carried only a count and nothing was printed (issue 17).
    import sys

    printed: list[BaseException] = []
    monkeypatch.setattr(sys, "print_exception", printed.append, raising=False)  # MicroPython's

    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(5000)
        node.app.fail_report = True
        await clock.run_for(2 * MIN)
        await w.stop()
        return w, node

    w, node = run(main)
    assert printed and isinstance(printed[0], KeyError)
    ev = w.gw.of_type(m.EVENT)[0]
    assert ev.body[0] == m.EV_APP_EXCEPTION and ev.body[2] >> 16 == m.APP_EXC_TYPES.index("KeyError")
    assert 1 <= ev.body[2] & 0xFFFF <= node.app_faults


@pytest.mark.parametrize(
    ("err", "name"),
    [
        (ImportError("no module named 'lora'"), "ImportError"),
        (KeyError("lamp"), "KeyError"),
        (RuntimeError("app run() returned"), "RuntimeError"),
        (NotImplementedError(), "Exception"),  # the type's own name only: 0
        (StopIteration(), "Exception"),  # none of the table: 0
    ],
)
def test_app_exception_type_codes(err, name):
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(1000)
        node._app_fault(err)
        await clock.run_for(30_000)
        await w.stop()
        return w

    w = run(main)
    ev = [h.body for h in w.gw.of_type(m.EVENT) if h.body[0] == m.EV_APP_EXCEPTION]
    assert ev and ev[0][2] == m.APP_EXC_TYPES.index(name) << 16 | 1


def test_app_exception_alarm_clears_after_the_app_runs_cleanly_again():
    # Before: the alarm stayed open after the fix (issue 17): nothing ever sent active 0.
    async def main(clock):
        w = World(clock)
        node = w.boot()
        await clock.run_for(5000)
        node.app.fail_report = True
        await clock.run_for(2 * MIN)  # one fault, then the app restarts (a fresh ToyLamp reports fine)
        await clock.run_for(runtime._APP_BACKOFF_MIN_MS + 3 * MIN)
        await w.stop()
        return w, node

    w, node = run(main)
    ev = [h for h in w.gw.of_type(m.EVENT) if h.body[0] == m.EV_APP_EXCEPTION]
    assert node.app_faults == 1 and node.app is not None
    assert [e.body[4] for e in ev] == [1, 0]  # raised, then cleared
    cleared = ev[1]
    assert cleared.body[1] == m.SEV_ALARM and cleared.body[2] == 0
    reports = [h for h in w.gw.of_type(m.LIGHT) if h.counter > ev[0].counter]
    assert reports and reports[0].counter == cleared.counter + 1  # queued with the first report (before it)
    assert not node._exc_open
