"""gateway/downlinks.py with the real pipeline and store: ACKs, commands, CMD_ACK, retries, expiry, paths."""

from __future__ import annotations

import asyncio

import pytest
from gateway_helpers import node_keys, reception, registry, seal
from waiting import wait_for

from gateway.downlinks import RETRY_AFTER_S, DownlinkRejected, Downlinks
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.transports import DownlinkError
from protocol import frame
from protocol import messages as m

NODE = 1


class Radio:
    """The DownlinkPath seam (gateway/model.py): what a transport's send_downlink receives."""

    def __init__(self, name: str, fail: int = 0) -> None:
        self.name = name
        self.sent: list[tuple[int, int, dict]] = []  # (mtype, counter, body) as the node would read them
        self.fail = fail

    async def send_downlink(self, raw: bytes, rx) -> None:
        if self.fail:
            self.fail -= 1
            raise DownlinkError("no_route", "test")
        f, body = frame.unseal(node_keys(frame.parse(raw).node_id), raw)  # the downlink key, as a node checks
        assert f.downlink
        self.sent.append((f.mtype, f.counter, m.decode(f.mtype, body)))


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def gw(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", range(1, 4))
    clock = Clock()
    d = Downlinks(s, reg, collect_s=0.05, max_attempts=2, clock=clock)
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    yield p, d, clock
    await d.close()
    await p.close()
    await s.close()


def alarm(counter: int, node: int = NODE) -> bytes:
    return seal(node, counter, m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM, 2: 120, 4: 1, 5: 1})


async def uplink(p, d, raw, radio, transport="udp", rssi=-90.0):
    v = await p.ingest(reception(raw, transport=transport, path=radio, gateway_id=radio.name, rssi=rssi))
    await d.idle()
    return v


async def test_a_stored_alarm_is_acknowledged(gw):
    p, d, _ = gw
    radio = Radio("serial:a")
    assert await uplink(p, d, alarm(17), radio, "serial") == "accepted"
    assert radio.sent == [(m.ACK, 0, {0: 17, 1: 0})]
    assert await uplink(p, d, seal(NODE, 18), radio, "serial") == "accepted"  # routine: nothing to say
    assert len(radio.sent) == 1
    assert await uplink(p, d, alarm(17), radio, "serial") == "duplicate"  # only stored frames are acked
    assert len(radio.sent) == 1 and d.counts["acks_sent"] == 1


async def test_lora_answers_once_per_window_through_the_best_radio(gw):
    p, d, _ = gw
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_SET_LEVEL, 2: [100, 600]}, ttl_s=600)
    near, far = Radio("udp:near"), Radio("udp:far")
    raw = alarm(30)
    verdicts = await asyncio.gather(
        p.ingest(reception(raw, transport="udp", path=far, gateway_id="udp:far", rssi=-118.0)),
        p.ingest(reception(raw, transport="udp", path=near, gateway_id="udp:near", rssi=-71.0)),
    )
    await d.idle()
    assert sorted(verdicts) == ["accepted", "duplicate"]
    # one frame per receive window, through the radio that heard the node best; nothing else can follow
    # in this window, so the ACK does not keep the node listening
    assert far.sent == [] and near.sent == [(m.ACK, 0, {0: 30, 1: 0})]
    await uplink(p, d, seal(NODE, 31), far)
    assert far.sent == [(m.COMMAND, 1, {0: dl.id, 1: m.OP_SET_LEVEL, 2: [100, 600], 3: int(dl.expires)})]
    assert p.store.downlink(dl.id).state == "sent"


async def test_an_ack_the_best_radio_refuses_goes_through_the_next_one(gw):
    # Issue 15: an alarm's ACK refused on one radio was never retried through another that heard
    # the uplink, so the node resent the alarm (its airtime) though a second forwarder could answer.
    p, d, _ = gw
    near, mid, far = Radio("udp:near", fail=1), Radio("udp:mid", fail=1), Radio("udp:far")
    relay = Radio("ble:relay")
    raw = alarm(60)
    await asyncio.gather(
        p.ingest(reception(raw, transport="udp", path=far, gateway_id="udp:far", rssi=-118.0)),
        p.ingest(reception(raw, transport="udp", path=near, gateway_id="udp:near", rssi=-71.0)),
        p.ingest(reception(raw, transport="udp", path=mid, gateway_id="udp:mid", rssi=-95.0)),
        p.ingest(reception(raw, transport="ble", path=relay, gateway_id="ble:relay", rssi=-40.0)),
    )
    await d.idle()
    # best first: near refused, mid refused, far took it (each try spent a downlink counter);
    # the BLE copy never takes the answer (path binding)
    assert near.sent == [] and mid.sent == [] and relay.sent == []
    assert far.sent == [(m.ACK, 2, {0: 60, 1: 0})]
    assert d.counts["acks_sent"] == 1 and d.counts["acks_rerouted"] == 1 and d.counts["send_errors"] == 2
    # every radio refuses: no ACK, nothing lost but the frame; the node's retry gets a new chance
    a, b = Radio("udp:a", fail=5), Radio("udp:b", fail=5)
    raw = alarm(61)
    await asyncio.gather(
        p.ingest(reception(raw, transport="udp", path=a, gateway_id="udp:a", rssi=-80.0)),
        p.ingest(reception(raw, transport="udp", path=b, gateway_id="udp:b", rssi=-90.0)),
    )
    await d.idle()
    assert a.sent == b.sent == [] and d.counts["acks_sent"] == 1 and d.counts["send_errors"] == 4


async def test_on_a_wire_the_ack_announces_what_follows(gw):
    p, d, _ = gw
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_CLOSE_ALL})
    radio = Radio("serial:a")
    await uplink(p, d, alarm(40), radio, "serial")
    assert [(t, b.get(1) if t == m.ACK else b[0]) for t, _c, b in radio.sent] == [(m.ACK, 1), (m.COMMAND, dl.id)]


async def test_cmd_ack_settles_the_command(gw):
    p, d, _ = gw
    radio = Radio("serial:a")
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_OPEN_ZONE, 2: [2, 15]})
    await uplink(p, d, seal(NODE, 1), radio, "serial")
    assert radio.sent[0][0] == m.COMMAND and radio.sent[0][2][0] == dl.id
    await uplink(p, d, seal(NODE, 2, m.CMD_ACK, {0: dl.id, 1: m.RES_OK, 2: 15}), radio, "serial")
    got = p.store.downlink(dl.id)
    assert (got.state, got.result, got.attempts) == ("acked", m.RES_OK, 1)
    assert d.pending(NODE) == 0 and d.counts["acked"] == 1
    await uplink(p, d, seal(NODE, 3, m.CMD_ACK, {0: dl.id, 1: m.RES_OK}), radio, "serial")  # a repeat
    assert d.counts["unmatched_cmd_acks"] == 1


async def test_unanswered_commands_are_retried_then_failed(gw):
    p, d, clock = gw
    radio = Radio("udp:a")
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_REBOOT})
    await uplink(p, d, seal(NODE, 1), radio)
    await uplink(p, d, seal(NODE, 2), radio)  # too soon: its CMD_ACK may be this very uplink
    assert len(radio.sent) == 1
    clock.t += RETRY_AFTER_S
    await uplink(p, d, seal(NODE, 3), radio)
    assert [(t, b[0]) for t, _c, b in radio.sent] == [(m.COMMAND, dl.id)] * 2  # same id: the node runs it once
    assert [c for _t, c, _b in radio.sent] == [0, 1]  # new frame counters
    clock.t += 60
    await uplink(p, d, seal(NODE, 4), radio)
    assert len(radio.sent) == 2  # max_attempts = 2
    await d.sweep()
    assert p.store.downlink(dl.id).state == "failed" and d.counts["failed"] == 1


async def test_expired_downlinks_are_reported(gw):
    p, d, clock = gw
    dl = await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}}, ttl_s=30)
    clock.t += 31
    await d.sweep()
    assert p.store.downlink(dl.id).state == "expired" and d.counts["expired"] == 1
    radio = Radio("udp:a")
    await uplink(p, d, seal(NODE, 1), radio)
    assert radio.sent == []


async def test_the_sweep_sleeps_while_nothing_is_open_and_wakes_for_a_queued_downlink(tmp_path, monkeypatch):
    # An idle gateway (and the simulator, which runs a day in seconds) sets no timer a second.
    from gateway import downlinks as dmod

    monkeypatch.setattr(dmod, "SWEEP_S", 0.02)
    s = await Store.open(tmp_path / "gw.db")
    clock = Clock()
    d = Downlinks(s, registry(tmp_path / "nodes.toml", [NODE]), clock=clock)
    sweeps = []
    real = d.sweep

    async def counted() -> None:
        sweeps.append(clock.t)
        await real()

    d.sweep = counted
    await d.start()
    try:
        await asyncio.sleep(0.2)  # ten sweep periods: what is checked is that none ran in them
        assert sweeps == []  # parked on the event: ten sweeps would have run
        dl = await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}}, ttl_s=30)
        clock.t += 31
        await wait_for(lambda: s.downlink(dl.id).state == "expired")
        assert sweeps  # the loop's own sweep expired it
        n = len(sweeps)
        await asyncio.sleep(0.2)  # ten sweep periods again, for the same absence
        assert len(sweeps) <= n + 1  # nothing open again: parked after at most the sweep in flight
    finally:
        await d.close()
        await s.close()


async def test_serial_nodes_get_downlinks_at_once_and_time_answers_the_next_uplink(gw):
    p, d, clock = gw
    radio = Radio("serial:a")
    await uplink(p, d, seal(NODE, 1), radio, "serial")
    clock.t += 600.25  # within LAST_RX_TTL_S: the wire is still the node's route
    dl = await d.enqueue(NODE, m.TIME, {})
    cfg = await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}})
    await d.idle()
    # the CONFIG at once, with its expiry; the TIME has no uplink of now to answer (SPEC §4): it waits
    assert radio.sent == [(m.CONFIG, 0, {0: {0: 900}, 1: int(cfg.expires)})]
    assert p.store.downlink(dl.id).state == "queued" and p.store.downlink(cfg.id).state == "sent"  # no answer exists
    clock.t += 60
    await uplink(p, d, seal(NODE, 2), radio, "serial")
    assert radio.sent[1:] == [(m.TIME, 1, {0: int(clock.t), 1: 250, 2: 2})]  # filled in when sent, answering 2
    assert p.store.downlink(dl.id).state == "sent"


async def test_a_failed_send_keeps_the_downlink_and_never_reuses_a_counter(gw):
    p, d, _ = gw
    radio = Radio("serial:a", fail=1)
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_CLOSE_ALL})
    await uplink(p, d, seal(NODE, 1), radio, "serial")
    assert radio.sent == [] and p.store.downlink(dl.id).state == "queued" and d.counts["send_errors"] == 1
    await uplink(p, d, seal(NODE, 2), radio, "serial")
    assert radio.sent == [(m.COMMAND, 1, {0: dl.id, 1: m.OP_CLOSE_ALL, 3: int(dl.expires)})]  # counter 0 was spent


async def test_enqueue_refuses_what_cannot_be_sent(gw):
    _p, d, _ = gw
    with pytest.raises(DownlinkRejected) as e:
        await d.enqueue(99, m.COMMAND, {1: m.OP_REBOOT})
    assert e.value.status == 404
    with pytest.raises(DownlinkRejected, match="key 2"):
        await d.enqueue(NODE, m.COMMAND, {1: m.OP_SET_LEVEL, 2: ["full"]})
    with pytest.raises(DownlinkRejected, match="cannot be queued"):
        await d.enqueue(NODE, m.ACK, {0: 1})
    for _ in range(d.max_queued_per_node):
        await d.enqueue(2, m.COMMAND, {1: m.OP_REBOOT})
    with pytest.raises(DownlinkRejected) as e:
        await d.enqueue(2, m.COMMAND, {1: m.OP_REBOOT})
    assert e.value.status == 429


async def test_concurrent_enqueues_respect_the_per_node_limit(gw):
    # requests arriving together (API, MQTT commands) each await the store: the limit must still hold
    _p, d, _ = gw
    got = await asyncio.gather(
        *(d.enqueue(3, m.COMMAND, {1: m.OP_REBOOT}) for _ in range(d.max_queued_per_node + 10)),
        return_exceptions=True,
    )
    refused = [g for g in got if isinstance(g, DownlinkRejected)]
    assert len(got) - len(refused) == d.max_queued_per_node == d.pending(3)
    assert len(refused) == 10 and all(e.status == 429 for e in refused)


async def test_queued_downlinks_survive_a_restart(tmp_path):
    reg = registry(tmp_path / "nodes.toml", [NODE])
    s = await Store.open(tmp_path / "gw.db")
    d = Downlinks(s, reg)
    await d.start()
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_RAIN_DELAY, 2: [24]})
    await d.close()
    await s.close()
    s = await Store.open(tmp_path / "gw.db")
    d = Downlinks(s, reg, collect_s=0)
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    radio = Radio("udp:a")
    await uplink(p, d, seal(NODE, 1), radio)
    assert radio.sent[0][2][0] == dl.id and radio.sent[0][1] == 0
    await d.close()
    await s.close()


async def test_on_a_wire_unanswered_commands_are_resent_without_waiting_for_an_uplink(gw):
    from gateway.downlinks import ACK_TIMEOUT_S

    p, d, clock = gw
    radio = Radio("serial:a")
    await uplink(p, d, seal(NODE, 1), radio, "serial")
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_SET_INTERVAL, 2: [900]})
    await d.idle()
    assert len(radio.sent) == 1
    await d.sweep()
    assert len(radio.sent) == 1  # its CMD_ACK may still come
    clock.t += ACK_TIMEOUT_S
    await d.sweep()
    await d.idle()
    assert [b[0] for _t, _c, b in radio.sent] == [dl.id, dl.id] and p.store.downlink(dl.id).attempts == 2


async def test_an_ack_that_arrives_while_the_send_still_waits_is_not_overwritten(gw):
    """A forwarder's TX_ACK can take longer than the node's answer: the command stays acked."""
    p, d, _ = gw

    class SlowRadio(Radio):
        async def send_downlink(self, raw, rx):
            await super().send_downlink(raw, rx)
            if self.sent[-1][0] == m.COMMAND:  # the node answers before the transport returns
                cmd_id = self.sent[-1][2][0]
                ack = seal(NODE, 2, m.CMD_ACK, {0: cmd_id, 1: m.RES_OK, 2: 80})
                task = asyncio.ensure_future(
                    p.ingest(reception(ack, transport="serial", path=self, gateway_id=self.name))
                )
                await asyncio.sleep(0.1)
                await task

    radio = SlowRadio("serial:slow")
    dl = await d.enqueue(NODE, m.COMMAND, {1: m.OP_SET_LEVEL, 2: [80, 600]})
    await uplink(p, d, seal(NODE, 1), radio, "serial")
    await d.idle()
    got = p.store.downlink(dl.id)
    assert (got.state, got.result) == ("acked", m.RES_OK)
    assert d.pending(NODE) == 0


# ---------------------------------------------------------------- path binding (issue 20, finding 2)


async def test_a_ble_relay_of_a_lora_alarm_does_not_take_the_downlinks(gw):
    # The attack: a device relays a copy of a LoRa alarm over BLE, claiming -45 dBm. Before the
    # fix the best-RSSI choice ran across transports, so the BLE copy won: ACK, CONFIG and TIME
    # went to the relay (immediate: everything due at once) and were marked sent.
    p, d, _ = gw
    cfg = await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}})
    tim = await d.enqueue(NODE, m.TIME, {})
    lora, relay = Radio("udp:mast"), Radio("ble:66:66:66:66:66:66")
    raw = alarm(50)
    verdicts = await asyncio.gather(
        p.ingest(reception(raw, transport="udp", path=lora, gateway_id=lora.name, rssi=-112.0)),
        p.ingest(reception(raw, transport="ble", path=relay, gateway_id=relay.name, rssi=-45.0)),
    )
    await d.idle()
    assert verdicts == ["accepted", "duplicate"]
    assert relay.sent == []
    assert lora.sent == [(m.ACK, 0, {0: 50, 1: 0})]  # one frame per LoRa window, on the radio path
    assert p.store.downlink(cfg.id).state == "queued" and p.store.downlink(tim.id).state == "queued"
    # the next uplinks, heard on the radio only, carry the CONFIG then the TIME -- still not the relay
    await uplink(p, d, seal(NODE, 51), lora, rssi=-112.0)
    await uplink(p, d, seal(NODE, 52), lora, rssi=-112.0)
    assert [t for t, _c, _b in lora.sent] == [m.ACK, m.CONFIG, m.TIME] and relay.sent == []
    assert d.counts["path_switches_refused"] >= 1


async def test_a_duplicate_heard_first_never_switches_the_transport(gw):
    # The relay's copy may reach the pipeline while the radio copy's commit is in flight (the
    # "early" copies): it still does not take the answer from the transport that was committed.
    p, d, _ = gw
    lora, relay = Radio("udp:mast"), Radio("ble:66:66:66:66:66:66")
    raw = alarm(60)
    first = asyncio.ensure_future(
        p.ingest(reception(raw, transport="udp", path=lora, gateway_id=lora.name, rssi=-110.0))
    )
    await asyncio.sleep(0)
    assert await p.ingest(reception(raw, transport="ble", path=relay, gateway_id=relay.name, rssi=-40.0)) == "duplicate"
    assert await first == "accepted"
    await d.idle()
    assert relay.sent == [] and lora.sent == [(m.ACK, 0, {0: 60, 1: 0})]


async def test_copies_of_an_uplink_with_nothing_to_say_are_not_kept(gw):
    # The copies heard with the first one (in one batch, before its commit) wait for the path
    # choice; when the commit has nothing to say they choose nothing and must not stay behind
    # (a city's gateway hears each uplink some fifteen times: simulator/air.py, bench/README.md).
    import gc
    import weakref

    p, d, _ = gw
    radios = [Radio(f"udp:r{i}") for i in range(5)]
    raw = seal(NODE, 70)
    verdicts = await p.ingest_many(
        [reception(raw, transport="udp", path=r, gateway_id=r.name, rssi=-100.0 + i) for i, r in enumerate(radios)]
    )
    await d.idle()
    assert verdicts == ["accepted"] + ["duplicate"] * 4
    assert all(r.sent == [] for r in radios)
    refs = [weakref.ref(r) for r in radios]
    del radios
    gc.collect()
    assert [ref() for ref in refs] == [None] * 5


async def test_the_last_receive_record_expires_and_a_radio_uplink_replaces_it(gw):
    from gateway.downlinks import LAST_RX_TTL_S

    p, d, clock = gw
    wire, lora = Radio("ble:aa"), Radio("udp:mast")
    await uplink(p, d, seal(NODE, 1), wire, "ble")
    clock.t += LAST_RX_TTL_S + 1  # the BLE node left (or a relay spoke once) long ago
    await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 900}})
    await d.idle()
    assert wire.sent == []  # not pushed to a stale link: it waits for the next uplink
    await uplink(p, d, seal(NODE, 2), lora)
    assert [t for t, _c, _b in lora.sent] == [m.CONFIG]
    # an uplink over the radio forgets an immediate link at once: later downlinks wait for the radio
    await uplink(p, d, seal(NODE, 3), wire, "ble")
    await uplink(p, d, seal(NODE, 4), lora)
    await d.enqueue(NODE, m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 600}})
    await d.idle()
    assert wire.sent == []


async def test_a_time_or_a_queued_downlink_the_best_radio_refuses_goes_through_the_next_one(tmp_path):
    """Issue 11: an automatic TIME refused by the best radio (its duty cycle's off-time) was not tried
    through the other radio that heard the uplink; three refusals in a row (one per uplink) and the
    re-sync backed off while the clock went past its threshold (the demo's 3.3 s). A queued downlink
    (a calendar fragment) went the same way."""
    from gateway.timesync import TimeSync

    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", range(1, 3))
    clock = Clock()
    d = Downlinks(s, reg, collect_s=0.05, clock=clock, timesync=TimeSync(clock=clock))
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    try:
        for counter, want in ((40, m.TIME), (41, m.TIME), (42, m.CONFIG)):  # the re-sync, its repeat, a CONFIG
            if want == m.CONFIG:
                await d.enqueue(NODE, m.CONFIG, {0: {1: 600}})
            near, far = Radio("udp:near", fail=1), Radio("udp:far")
            raw = seal(NODE, counter)
            copies = []
            for radio, rssi in ((near, -70.0), (far, -110.0)):
                rx = reception(raw, transport="udp", path=radio, gateway_id=radio.name, rssi=rssi, rx_time=clock.t)
                rx.sf = 7
                copies.append(p.ingest(rx))
            await asyncio.gather(*copies)
            await d.idle()
            assert near.sent == [] and [t for t, _c, _b in far.sent] == [want], counter
            assert d.window(NODE) == {"counter": counter, "answering": False, "sent": 1, "refused": "no_route"}
            clock.t += 900
        assert d.counts["time_auto"] == 2 and d.counts["rerouted"] == 3 and d.timesync.counts["refused"] == 0
    finally:
        await d.close()
        await p.close()
        await s.close()
