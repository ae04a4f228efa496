"""gateway/timesync.py, automatic time (SPEC §4): when the gateway sends TIME, offset tracking, the value.

The policy is sans-I/O: these tests feed it uplinks with their times and check its answers; the
last ones run it behind the real Downlinks and Pipeline and read the TIME frames a radio got.
"""

from __future__ import annotations

import json

import pytest
from gateway_helpers import LIGHT_BODY, node_keys, reception, registry, seal
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.timesync import BOOT, DRIFT, NO_TIME, REPEAT, TimeSync, clock_unset, time_value
from protocol import frame, lora
from protocol import messages as m

T0 = 1_800_000_000.0
NODE = 1
LIGHT_OK = {**LIGHT_BODY}
LIGHT_NO_TIME = {**LIGHT_BODY, 3: m.LS_ON | m.LS_FAILSAFE}


def status(node_s: int) -> dict[int, int]:
    return {m.S_UPTIME: 100, m.S_TIME: node_s, m.S_HEAP: 100, m.S_QUEUE: 0}


def test_what_each_uplink_says_of_the_clock():
    assert clock_unset(m.LIGHT, LIGHT_NO_TIME) is True
    assert clock_unset(m.LIGHT, LIGHT_OK) is False
    assert clock_unset(m.IRRIGATION, {6: m.IF_FAILSAFE}) is True
    assert clock_unset(m.IRRIGATION, {6: 0x01}) is False
    assert clock_unset(m.STATUS, status(0)) is True
    assert clock_unset(m.STATUS, status(int(T0))) is False
    assert clock_unset(m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM}) is True  # a node with time dates its events
    assert clock_unset(m.EVENT, {0: m.EV_LEAK, 1: m.SEV_ALARM, 3: int(T0)}) is False
    assert clock_unset(m.HELLO, {0: "0.1.0", 1: 1}) is None  # HELLO: a reset, answered as such
    assert clock_unset(m.CMD_ACK, {0: 1, 1: 0}) is None


def test_a_hello_is_answered_at_once_and_a_node_without_time_is_retried_with_backoff():
    ts = TimeSync(retry_s=60.0, retry_max_s=600.0)
    assert ts.on_uplink(NODE, m.HELLO, {}, T0) == BOOT
    ts.sent(NODE, BOOT, T0 + 1.1)
    # the TIME was lost: the next report still says fail-safe; asked again after retry_s, then 2x, 4x ...
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, T0 + 30) is None
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, T0 + 61.1) == NO_TIME
    ts.sent(NODE, NO_TIME, T0 + 62)
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, T0 + 62 + 119) is None  # 2 tries: 120 s
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, T0 + 62 + 121) == NO_TIME
    ts.sent(NODE, NO_TIME, T0 + 200)
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, T0 + 200 + 239) is None
    # the node says its clock is set: the backoff is over, the bound takes over (just set: nothing to do)
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, T0 + 500) is None
    assert ts.counts["boot"] == 1 and ts.counts["no_time"] == 2


def test_the_backoff_stops_at_retry_max():
    ts = TimeSync(retry_s=60.0, retry_max_s=300.0)
    t = T0
    for _ in range(8):  # a lamp with no location: fail-safe whatever its clock
        assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, t) == NO_TIME
        ts.sent(NODE, NO_TIME, t + 1)
        t += 301
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_NO_TIME, t - 2) is None


def test_a_synced_clock_is_resynced_before_its_bound_passes_the_threshold_then_once_more():
    ts = TimeSync(threshold_s=2.0, max_drift_ppm=100.0, sync_error_s=0.1, resync_min_s=600.0)
    ts.on_uplink(NODE, m.HELLO, {}, T0)
    ts.sent(NODE, BOOT, T0 + 1)
    assert ts.bound(NODE, T0 + 1) == pytest.approx((-0.1, 0.1))
    # 100 ppm: the bound reaches 2 s 19,000 s after the TIME; with reports every 900 s the gateway
    # acts two to three gaps ahead (three tries before the threshold: the first and two refused ones)
    t = T0
    reasons = []
    while t < T0 + 20_000:
        t += 900
        r = ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t)
        if r is not None:
            reasons.append((r, t - T0))
            ts.sent(NODE, r, t + 1)
    assert reasons[0][0] == DRIFT and 19_000 - 3 * 900 <= reasons[0][1] <= 19_000 - 2 * 900
    assert reasons[1] == (REPEAT, reasons[0][1] + 900)  # a TIME has no answer: sent twice
    assert len(reasons) == 2
    lo, hi = ts.bound(NODE, T0 + 20_000)
    assert max(-lo, hi) < 2.0


def test_a_status_measures_the_offset_and_a_clock_far_off_is_resynced_at_once():
    ts = TimeSync(resync_min_s=0.0)
    ts.on_uplink(NODE, m.HELLO, {}, T0)
    ts.sent(NODE, BOOT, T0 + 1)
    # a clock 5 s ahead an hour later (set by hand, or a crystal far out of its datasheet)
    t = T0 + 3600
    assert ts.on_uplink(NODE, m.STATUS, status(int(t + 5)), t + 0.06, airtime_s=0.06) == DRIFT
    assert ts.counts["disagreed"] == 1
    lo, hi = ts.bound(NODE, t)
    assert 4.0 <= lo <= 5.0 and 5.0 <= hi <= 7.0


def test_statuses_narrow_the_drift_rate_and_spare_a_slow_crystal():
    """Whole seconds every 6 h learn a crystal only over long stretches: with a 10 s threshold a
    5 ppm clock is soon known well enough to be re-synced far less often than 100 ppm would need."""
    ts = TimeSync(threshold_s=10.0, report_delay_s=0.0)
    ts.on_uplink(NODE, m.HELLO, {}, T0)
    ts.sent(NODE, BOOT, T0)
    set_at = T0  # the node's clock: exact when set, then 5 ppm fast
    syncs = []
    for k in range(1, 6 * 96):  # a report every 15 min and a STATUS every 6 h, for 6 days
        t = T0 + k * 900.0
        node = t + 5e-6 * (t - set_at)
        if k % 24 == 0:
            r = ts.on_uplink(NODE, m.STATUS, status(int(node)), t)
        else:
            r = ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t)
        if r is not None:
            ts.sent(NODE, r, t)
            set_at = t
            syncs.append((r, k))
        lo, hi = ts.bound(NODE, t)
        assert lo <= node - t <= hi  # the bound always holds the truth
    lo, hi = ts.drift_ppm(NODE)
    assert lo <= 5.0 <= hi and hi < 20.0
    # 100 ppm would need a re-sync (and its repeat) every 27 h: 10 TIMEs in 6 days
    assert len(syncs) <= 4, syncs


def test_drift_resyncs_stay_within_the_airtime_budget_but_boot_answers_do_not_wait():
    ts = TimeSync(airtime_s_per_h=1.0, resync_min_s=0.0)
    sf12 = lora.airtime_ms(30, 12) / 1000
    assert ts.on_uplink(2, m.LIGHT, LIGHT_OK, T0, sf=12) == DRIFT  # unknown offset: one re-sync
    ts.sent(2, DRIFT, T0 + 1, sf12)
    assert ts.on_uplink(3, m.LIGHT, LIGHT_OK, T0 + 10, sf=12) is None  # the bucket cannot pay
    assert ts.counts["budget_short"] == 1
    for n in range(4, 8):  # a street whose power came back: every HELLO answered, each charged
        assert ts.on_uplink(n, m.HELLO, {}, T0 + 20, sf=12) == BOOT
        ts.sent(n, BOOT, T0 + 21, sf12)
    assert ts.on_uplink(3, m.LIGHT, LIGHT_OK, T0 + 3600, sf=12) is None  # still paying for the HELLOs
    assert ts.on_uplink(3, m.LIGHT, LIGHT_OK, T0 + 3 * 3600, sf=12) == DRIFT
    # a wire has no duty cycle
    assert ts.on_uplink(9, m.LIGHT, LIGHT_OK, T0 + 3 * 3600, wire=True) == DRIFT


def test_state_survives_a_restart_and_a_bad_file_is_refused_whole(tmp_path):
    ts = TimeSync()
    ts.on_uplink(NODE, m.HELLO, {}, T0)
    ts.sent(NODE, BOOT, T0 + 1, 0.05)
    ts.on_uplink(NODE, m.STATUS, status(int(T0 + 3600)), T0 + 3600.1, airtime_s=0.05)
    path = tmp_path / "gw.db.time.json"
    ts.save(path)
    again = TimeSync()
    assert again.load(path) == 1
    assert again.bound(NODE, T0 + 7200) == ts.bound(NODE, T0 + 7200)
    assert again.load(tmp_path / "none.json") == 0
    doc = json.loads(path.read_text())
    doc["nodes"]["1"][0] = "soon"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="bad a_t"):
        again.load(path)
    assert again.bound(NODE, T0 + 7200) == ts.bound(NODE, T0 + 7200)  # nothing half-loaded
    path.write_text("{")
    with pytest.raises(ValueError, match="not a time-sync state file"):
        again.load(path)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([m.HELLO, m.LIGHT, m.IRRIGATION, m.EVENT, m.STATUS, m.CMD_ACK]),
            st.dictionaries(st.integers(0, 8), st.integers(0, 2**32 - 1), max_size=6),
            st.floats(-1e6, 1e6, allow_nan=False),
            st.one_of(st.none(), st.integers(7, 12)),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_any_sequence_of_uplinks_gives_a_reason_or_none_and_never_raises(ups):
    ts = TimeSync()
    for mtype, body, dt, sf, send in ups:
        r = ts.on_uplink(NODE, mtype, body, T0 + dt, 0.1, False, sf)
        assert r in (None, BOOT, NO_TIME, DRIFT, REPEAT)
        if r is not None and send:
            ts.sent(NODE, r, T0 + dt + 1, 0.1)
        b = ts.bound(NODE, T0 + dt)
        assert b is None or b[0] <= b[1]


def test_time_value_is_the_instant_the_node_takes_the_frame():
    assert time_value(T0, 1.0, 0.0616) == pytest.approx(T0 + 1.0616)


# -- behind the real downlinks ------------------------------------------------------------------


class Radio:
    def __init__(self) -> None:
        self.sent: list[tuple[int, dict]] = []

    async def send_downlink(self, raw: bytes, rx) -> None:
        f, body = frame.unseal(node_keys(frame.parse(raw).node_id), raw)
        self.sent.append((f.mtype, m.decode(f.mtype, body), len(raw)))


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def gw(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", range(1, 3))
    clock = Clock()
    d = Downlinks(s, reg, collect_s=0.0, clock=clock, timesync=TimeSync(clock=clock))
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    yield p, d, clock
    await d.close()
    await p.close()
    await s.close()


async def test_on_lora_a_hello_gets_a_time_for_the_instant_the_node_takes_it(gw):
    """SPEC §4 "Automatic time": value = uplink end + RX1 delay + the TIME's own time on air."""
    p, d, clock = gw
    radio = Radio()
    hello = seal(NODE, 5, m.HELLO, {0: "0.1.0", 1: 1, 4: m.RST_POWER_ON})
    rx = reception(hello, transport="udp", path=radio, rx_time=T0 - 0.2)  # the answer goes 0.2 s later
    rx.sf = 9
    clock.t = T0
    assert await p.ingest(rx) == "accepted"
    await d.idle()
    [(mtype, body, n)] = radio.sent
    assert mtype == m.TIME and body[m.T_ANSWERS] == 5
    value = body[m.T_UNIX] + body[m.T_MS] / 1000
    expected = T0 - 0.2 + 1.0 + lora.airtime_ms(n, 9) / 1000
    assert abs(value - expected) <= 0.001  # the millisecond the body carries
    assert d.counts["time_auto"] == 1 and d.timesync.counts["boot"] == 1
    # the next report says the clock is set: nothing more to say
    rx = reception(seal(NODE, 6), transport="udp", path=radio, rx_time=T0 + 900)
    rx.sf = 9
    clock.t = T0 + 900.2
    await p.ingest(rx)
    await d.idle()
    assert len(radio.sent) == 1


async def test_an_alarm_from_a_node_without_time_gets_its_ack_first_and_the_time_next(gw):
    p, d, clock = gw
    radio = Radio()
    alarm = seal(NODE, 7, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 2: 0, 4: 1})  # no time: key 3 absent
    rx = reception(alarm, transport="udp", path=radio, rx_time=T0)
    rx.sf = 7
    assert await p.ingest(rx) == "accepted"
    await d.idle()
    assert [t for t, _b, _n in radio.sent] == [m.ACK]  # one frame per LoRa window
    rx = reception(seal(NODE, 8, body=LIGHT_NO_TIME), transport="udp", path=radio, rx_time=T0 + 900)
    rx.sf = 7
    clock.t = T0 + 900.1
    await p.ingest(rx)
    await d.idle()
    assert [t for t, _b, _n in radio.sent] == [m.ACK, m.TIME] and radio.sent[1][1][m.T_ANSWERS] == 8


async def test_a_queued_time_is_served_by_the_automatic_one(gw):
    p, d, clock = gw
    radio = Radio()
    dl = await d.enqueue(NODE, m.TIME, {})
    rx = reception(seal(NODE, 9, m.HELLO, {0: "0.1.0", 1: 1}), transport="serial", path=radio, rx_time=T0)
    await p.ingest(rx)
    await d.idle()
    assert [t for t, _b, _n in radio.sent] == [m.TIME]
    assert radio.sent[0][1] == {0: int(T0), 1: 0, 2: 9}  # on a wire: now
    assert p.store.downlink(dl.id).state == "sent"


def test_a_resync_the_radio_refuses_is_tried_again_at_once_twice_then_backs_off():
    ts = TimeSync(resync_min_s=600.0, retry_max_s=6 * 3600.0)
    t = T0
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t) == DRIFT  # unknown offset
    tried = []
    for _ in range(12):
        r = ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t)
        if r is not None:
            tried.append(t - T0)
            ts.failed(NODE, r, t)  # the radio is in its off-time, or the window has passed
        t += 900
    # at once (0), at the next two uplinks, then 1200 s, 2400 s ... after the last refusal
    assert tried[:3] == [0, 900, 1800] and tried[3] >= 1800 + 1200 and tried[4] - tried[3] >= 2400
    assert ts.bound(NODE) is None  # nothing reached the node
    ts.sent(NODE, DRIFT, t)
    assert ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t + 900) == REPEAT


async def test_the_service_keeps_what_it_knows_of_the_clocks_across_a_restart(tmp_path, caplog):
    from test_gateway_service import write_config

    from gateway.config import load_config
    from gateway.service import Gateway

    registry(tmp_path / "nodes.toml", [7]).save()
    cfg = load_config(write_config(tmp_path, extra="[downlinks]\ntime_resync_s = 1.5\n"))
    svc = Gateway(cfg)
    await svc.start()
    try:
        assert svc.timesync is not None and svc.timesync.threshold_s == 1.5
        assert await svc.pipeline.ingest(reception(seal(7, 1, m.STATUS, status(int(T0))), rx_time=T0)) == "accepted"
        known = svc.timesync.bound(7, T0 + 60)
        assert known is not None
    finally:
        await svc.stop()
    state = cfg.gateway.database.with_name(cfg.gateway.database.name + ".time.json")
    assert state.exists()
    svc = Gateway(cfg)
    await svc.start()
    try:
        assert svc.timesync.bound(7, T0 + 60) == known
    finally:
        await svc.stop()
    state.write_text("not json")  # a damaged file costs a re-sync per node, not the start
    svc = Gateway(cfg)
    await svc.start()
    try:
        assert svc.timesync.bound(7, T0 + 60) is None
        assert "time-sync state not loaded" in caplog.text
    finally:
        await svc.stop()
    off = load_config(write_config(tmp_path, extra="[downlinks]\nauto_time = false\n"))
    svc = Gateway(off)
    await svc.start()
    try:
        assert svc.timesync is None and svc.downlinks.timesync is None
    finally:
        await svc.stop()


# -- told ahead: when a node's next uplink gets a re-sync (GET /time; the simulator's live link) ----


@settings(max_examples=200, deadline=None)
@given(
    ppm=st.floats(-100.0, 100.0),
    gap=st.sampled_from([10.0, 300.0, 900.0, 1800.0, 3000.0]),
    refuse=st.lists(st.booleans(), min_size=40, max_size=40),
    jitter=st.lists(st.floats(-0.2, 0.2), min_size=40, max_size=40),
)
@example(ppm=0.0, gap=300.0, refuse=[False] * 40, jitter=[0.2, -0.2, 0.1, -0.1, 0.0] * 8)
@example(ppm=-90.0, gap=900.0, refuse=[False, True] * 20, jitter=[0.15, -0.2, 0.05, 0.2] * 10)
def test_due_at_says_ahead_which_uplinks_get_a_resync(ppm, gap, refuse, jitter):
    """`due_at`, asked before an uplink, says what `on_uplink` then decides: a radio link that holds its
    clock for the gateway's answer holds for exactly those uplinks (none missed; none held in vain but
    a STATUS's, whose measurement may show the clock better than the bound feared)."""
    ts = TimeSync(airtime_s_per_h=36.0)  # a budget that never refuses: only the timing is asked about
    assert ts.due_at(NODE) is None  # never heard: its first uplink gets one (the offset is unknown)
    set_at, offset = T0, 0.0  # the node's clock: offset at set_at, then ppm
    t = T0
    decided = 0
    for k, (no, j) in enumerate(zip(refuse * 3, jitter * 3)):
        t += gap * (1 + j)  # a report's jitter moves the node's mean gap, and the lookahead with it
        node = t + offset + ppm * 1e-6 * (t - set_at)
        due = ts.due_at(NODE)
        predicted = due is None or t >= due
        if k % max(1, int(21600 / gap)) == 5:  # a STATUS every 6 h
            # its measurement can only narrow the bound: a re-sync predicted may be spared, none comes unforeseen
            r = ts.on_uplink(NODE, m.STATUS, status(int(node)), t)
            assert r not in (DRIFT, REPEAT) or predicted, (k, r, due, t)
        else:
            r = ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, t)
            if due is None or abs(t - due) > 1e-3:  # exactly at the due time, rounding decides either way
                assert (r in (DRIFT, REPEAT)) == predicted, (k, r, due, t)
        if r is not None:
            decided += 1
            if no and r != REPEAT:
                ts.failed(NODE, r, t)
            else:
                ts.sent(NODE, r, t + 1)
                set_at, offset = t + 1, 0.0
    assert decided >= 1
    d = ts.describe(NODE)
    assert d is not None and d["resync_at"] is None or d["resync_at"] >= 0


def test_describe_says_what_the_gateway_knows_of_a_clock():
    ts = TimeSync(threshold_s=2.0, max_drift_ppm=100.0, sync_error_s=0.1, clock=lambda: T0 + 901 + 3600)
    assert ts.describe(NODE) is None and ts.nodes() == []
    ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, T0)
    d = ts.describe(NODE)
    assert d["offset_s"] is None and d["resync_at"] == 0.0  # never set nor measured: at its next uplink
    ts.sent(NODE, DRIFT, T0 + 1)
    d = ts.describe(NODE)
    assert d["repeat"] is True and d["resync_at"] == T0 + 1  # the repeat: any uplink from now
    ts.on_uplink(NODE, m.LIGHT, LIGHT_OK, T0 + 900)
    ts.sent(NODE, REPEAT, T0 + 901)
    d = ts.describe(NODE)
    # 1.9 s of room at 100 ppm is 19,000 s; the gateway looks 60 s ahead until it knows the node's gaps
    # (two of them: one mean gap of 900 s so far)
    assert d["repeat"] is False and d["resync_at"] == pytest.approx(T0 + 901 + 19_000 - 1800)
    assert d["drift_ppm"] == [-100.0, 100.0] and d["offset_s"] == pytest.approx([-0.46, 0.46])  # an hour on
    assert ts.nodes() == [NODE]


async def test_the_receive_window_says_what_the_gateway_did_with_it(gw):
    """GET /nodes/{id}/window: sent, refused and why, or nothing to say; and when the answer is made."""
    from gateway.transports import DownlinkError

    p, d, clock = gw
    radio = Radio()

    class Closed:
        async def send_downlink(self, raw: bytes, rx) -> None:
            raise DownlinkError("duty_cycle", "sub-band g1 closed")

    assert d.window(NODE) is None
    for counter, path, want in (
        (20, Closed(), {"counter": 20, "answering": False, "sent": 0, "refused": "duty_cycle"}),
        (21, radio, {"counter": 21, "answering": False, "sent": 1, "refused": None}),  # the unknown offset's TIME
        (22, radio, {"counter": 22, "answering": False, "sent": 1, "refused": None}),  # its repeat
        (23, radio, {"counter": 23, "answering": False, "sent": 0, "refused": None}),  # nothing to say
    ):
        rx = reception(seal(NODE, counter), transport="udp", path=path, rx_time=T0 + 900 * counter)
        rx.sf = 7
        clock.t = T0 + 900 * counter + 0.1
        assert await p.ingest(rx) == "accepted"
        if want["sent"] or want["refused"]:
            assert d.window(NODE)["answering"] is True  # committed; the answer is being made
        await d.idle()
        assert d.window(NODE) == want
    assert [t for t, _b, _n in radio.sent] == [m.TIME, m.TIME]
    # a wire has no receive window: it leaves the radio's alone
    await p.ingest(reception(seal(NODE, 24), transport="serial", path=radio, rx_time=T0 + 900 * 24))
    await d.idle()
    assert d.window(NODE)["counter"] == 23
