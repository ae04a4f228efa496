"""Semtech UDP packet forwarder server, driven by a real UDP client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.transports import DownlinkError, Ingestor, semtech
from protocol import lora
from tests.transport_helpers import Gateway, RecordingPipeline, downlink_frame, light_frame
from tests.waiting import wait_for

EUI = bytes.fromhex("aa555a0000000101")


class FakeForwarder(asyncio.DatagramProtocol):
    """Plays lora_pkt_fwd: sends PUSH_DATA / PULL_DATA / TX_ACK, collects what the server sends."""

    def __init__(self, version: int = 2) -> None:
        self.version = version
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self._token = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.inbox.put_nowait(data)

    def token(self) -> int:
        self._token += 1
        return self._token

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def push(self, rxpk: list | None = None, stat: dict | None = None) -> int:
        doc: dict = {}
        if rxpk is not None:
            doc["rxpk"] = rxpk
        if stat is not None:
            doc["stat"] = stat
        t = self.token()
        self.send(struct.pack(">BHB", self.version, t, semtech.PUSH_DATA) + EUI + json.dumps(doc).encode())
        ack = await self.recv()
        assert ack == struct.pack(">BHB", self.version, t, semtech.PUSH_ACK)
        return t

    async def pull(self) -> None:
        t = self.token()
        self.send(struct.pack(">BHB", self.version, t, semtech.PULL_DATA) + EUI)
        assert await self.recv() == struct.pack(">BHB", self.version, t, semtech.PULL_ACK)

    def tx_ack(self, token: int, error: str | None) -> None:
        body = b"" if error is None else json.dumps({"txpk_ack": {"error": error}}).encode()
        self.send(struct.pack(">BHB", self.version, token, semtech.TX_ACK) + EUI + body)


def rxpk(raw: bytes, **over) -> dict:
    pk = {
        "time": "2026-11-26T10:00:00.250000Z",
        "tmst": 3512348611,
        "chan": 2,
        "rfch": 0,
        "freq": 868.1,
        "stat": 1,
        "modu": "LORA",
        "datr": "SF9BW125",
        "codr": "4/5",
        "rssi": -97,
        "lsnr": 7.5,
        "size": len(raw),
        "data": base64.b64encode(raw).decode(),
    }
    pk.update(over)
    return pk


@pytest.fixture
async def gw(tmp_path):
    g = await Gateway.open(tmp_path / "gw.db")
    yield g
    await g.close()


@pytest.fixture
async def server(gw):
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0)
    await srv.start()
    yield srv, gw
    await srv.stop()


async def forwarder(srv, version: int = 2) -> FakeForwarder:
    loop = asyncio.get_running_loop()
    _, fwd = await loop.create_datagram_endpoint(lambda: FakeForwarder(version), remote_addr=("127.0.0.1", srv.port))
    return fwd


async def test_push_data_is_acked_and_every_rxpk_reaches_the_pipeline(server):
    srv, gw = server
    fwd = await forwarder(srv)
    a, b = light_frame(counter=1), light_frame(node_id=0x0B, counter=9)
    await fwd.push([rxpk(a), rxpk(b, rssi=-120, lsnr=-12.25, freq=868.3, datr="SF12BW125", tmst=7)])
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    (rec1, r1), (rec2, r2) = gw.seen.uplinks  # in the order the forwarder listed them
    assert r1.raw == a and r2.raw == b
    assert (rec1.node_id, rec1.counter, rec2.node_id, rec2.counter) == (0x00A1B2C3, 1, 0x0B, 9)
    assert r1.transport == "udp" and r1.gateway_id == "udp:" + EUI.hex()
    assert (r1.rssi, r1.snr, r1.freq_hz, r1.sf, r1.tmst) == (-97, 7.5, 868_100_000, 9, 3512348611)
    assert (r2.rssi, r2.snr, r2.freq_hz, r2.sf, r2.tmst) == (-120, -12.25, 868_300_000, 12, 7)
    assert r1.rx_time == datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert rec1.rx_time == r1.rx_time and rec1.best_rssi == -97
    assert gw.pipeline.accepted == 2 and gw.store.count() == 2


async def test_stat_only_push_and_forwarder_status_is_kept(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.push(stat={"time": "2026-11-26 10:00:00 GMT", "rxnb": 5, "rxok": 4, "txnb": 1})
    assert srv.forwarders[EUI.hex()].stat["rxok"] == 4
    assert gw.pipeline.received == {} and srv.counts["stat_reports"] == 1
    (st,) = srv.forwarder_status()
    assert (st["eui"], st["stat"]["txnb"], st["downlink_route"], st["last_pull_s"]) == (EUI.hex(), 1, False, None)
    await fwd.pull()
    assert srv.forwarder_status()[0]["downlink_route"] is True


async def test_bad_crc_is_dropped_and_counted_no_crc_is_accepted_by_default(server):
    srv, gw = server
    fwd = await forwarder(srv)
    good = light_frame(counter=2)
    await fwd.push([rxpk(light_frame(counter=1), stat=-1), rxpk(good, stat=0)])
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 1)
    assert gw.seen.receptions[0].raw == good
    assert gw.rejected("udp") == {"bad_crc": 1}
    assert srv.counts["no_crc"] == 1 and srv.counts["rxpk_bad_crc"] == 1


async def test_no_crc_packets_can_be_refused(gw):
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, accept_no_crc=False)
    await srv.start()
    try:
        fwd = await forwarder(srv)
        await fwd.push([rxpk(light_frame(), stat=0)])
        await gw.wait(lambda: gw.rejected("udp"))
        assert gw.rejected("udp") == {"no_crc": 1} and gw.seen.uplinks == []
    finally:
        await srv.stop()


async def test_unpadded_base64_and_missing_metadata(server):
    srv, gw = server
    fwd = await forwarder(srv)
    raw = light_frame(counter=3)
    data = base64.b64encode(raw).decode().rstrip("=")
    assert len(raw) % 3  # so the padding really was stripped
    await fwd.push([{"data": data}])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    assert r.raw == raw and r.rssi is None and r.sf is None and r.path is None


async def test_receive_time_from_the_forwarder_or_else_our_clock(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.push(
        [
            rxpk(light_frame(counter=1), time="2026-11-26T10:00:00.250000123Z"),  # nanoseconds
            rxpk(light_frame(counter=2), time="yesterday at noon"),
            rxpk(light_frame(counter=3), time="1970-01-01T00:00:05Z"),
        ]
    )  # a clock never set
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 3)
    ns, junk, unset = gw.seen.receptions
    assert ns.rx_time == datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert abs(junk.rx_time - time.time()) < 5 and abs(unset.rx_time - time.time()) < 5


async def test_a_forwarder_time_in_the_future_is_capped_at_the_present(server):
    # issue 20, finding 9: a reception is never dated after the present, so a node's last_seen is not
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.push([rxpk(light_frame(counter=1), time="2096-01-01T00:00:00Z")])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    assert abs(gw.seen.receptions[0].rx_time - time.time()) < 5
    await gw.store.drain()
    assert gw.store.node_state(0x00A1B2C3)["last_seen"] <= time.time()


async def test_garbage_rxpk_entries_are_counted_not_fatal(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.push([17, {"stat": 1}, {"data": "!!not base64!!"}, rxpk(light_frame(counter=4))])
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 1)
    assert gw.rejected("udp") == {"malformed": 3}


@pytest.mark.parametrize(
    "datagram",
    [
        b"\x02",
        b"\x02\x00\x01",  # shorter than a header (asyncio does not send empty datagrams)
        b"\x07\x00\x01\x00" + EUI + b"{}",  # unknown protocol version
        b"\x02\x00\x01\x00" + EUI[:3],  # PUSH_DATA without a full EUI
        b"\x02\x00\x01\x00" + EUI + b"{not json",
        b"\x02\x00\x01\x00" + EUI + b"[1, 2]",
        b"\x02\x00\x01\x00" + EUI + b"[" * 60_000,  # deeper than the JSON parser recurses
        b"\x02\x00\x01\x00" + EUI + b'{"rxpk": 5}',
        b"\x02\x00\x01\x03" + b'{"txpk": {}}',  # a PULL_RESP sent to the server
        b"\x02\x00\x01\x09" + EUI,
    ],
)
async def test_malformed_datagrams_are_counted_and_the_server_keeps_going(server, datagram):
    srv, gw = server
    fwd = await forwarder(srv)
    fwd.send(datagram)
    await wait_for(lambda: srv.counts["malformed_datagrams"] == 1)
    if len(datagram) >= 12 and datagram[0] in semtech.VERSIONS and datagram[3] == semtech.PUSH_DATA:
        assert (await fwd.recv())[3] == semtech.PUSH_ACK  # a PUSH_DATA with a header but bad JSON is still acked
    assert fwd.inbox.empty()
    await fwd.push([rxpk(light_frame(counter=5))])
    await gw.seen.wait(lambda: gw.seen.uplinks)


async def test_downlink_is_a_txpk_at_tmst_plus_rx1_and_tx_ack_none_succeeds(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.pull()
    await fwd.push([rxpk(light_frame(counter=6), tmst=1_000_000, freq=868.5, datr="SF10BW125", codr="4/6")])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    down = downlink_frame(counter=1, acked=6)
    send = asyncio.create_task(r.path.send_downlink(down, r))
    resp = await fwd.recv()
    assert resp[0] == 2 and resp[3] == semtech.PULL_RESP
    txpk = json.loads(resp[4:])["txpk"]
    assert txpk["tmst"] == 2_000_000 and txpk["imme"] is False
    assert (txpk["freq"], txpk["datr"], txpk["codr"], txpk["modu"]) == (868.5, "SF10BW125", "4/6", "LORA")
    assert base64.b64decode(txpk["data"]) == down and txpk["size"] == len(down)
    assert txpk["powe"] == 14 and txpk["ipol"] is True  # nodes listen with inverted IQ (SPEC §10)
    fwd.tx_ack(struct.unpack(">H", resp[1:3])[0], "NONE")
    await asyncio.wait_for(send, 2)
    assert srv.counts["downlinks_sent"] == 1


async def test_tmst_wraps_at_32_bits(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.pull()
    await fwd.push([rxpk(light_frame(counter=7), tmst=(1 << 32) - 400_000)])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    send = asyncio.create_task(r.path.send_downlink(downlink_frame(), r))
    resp = await fwd.recv()
    assert json.loads(resp[4:])["txpk"]["tmst"] == 600_000
    fwd.tx_ack(struct.unpack(">H", resp[1:3])[0], None)  # an empty TX_ACK means no error
    await asyncio.wait_for(send, 2)


async def test_tx_ack_error_raises_with_the_forwarders_reason(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.pull()
    await fwd.push([rxpk(light_frame(counter=8))])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    send = asyncio.create_task(r.path.send_downlink(downlink_frame(), r))
    resp = await fwd.recv()
    fwd.tx_ack(struct.unpack(">H", resp[1:3])[0], "COLLISION_PACKET")
    with pytest.raises(DownlinkError) as e:
        await asyncio.wait_for(send, 2)
    assert e.value.reason == "collision_packet"


async def test_downlink_without_pull_data_has_no_route(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.push([rxpk(light_frame(counter=9))])
    await gw.seen.wait(lambda: gw.seen.uplinks)
    r = gw.seen.receptions[0]
    with pytest.raises(DownlinkError) as e:
        await r.path.send_downlink(downlink_frame(), r)
    assert e.value.reason == "no_route"
    assert fwd.inbox.empty()


async def test_a_downlink_after_the_window_is_refused_not_sent(gw):
    now = [1000.0]  # the server's monotonic clock: the window passes when the test says so
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, rx_delay=0.15, send_margin=0.1, monotonic=lambda: now[0])
    await srv.start()
    try:
        fwd = await forwarder(srv)
        await fwd.pull()
        await fwd.push([rxpk(light_frame(counter=10))])
        await gw.seen.wait(lambda: gw.seen.uplinks)
        r = gw.seen.receptions[0]
        now[0] += 0.1  # 0.05 s before RX1, less than the margin
        with pytest.raises(DownlinkError) as e:
            await r.path.send_downlink(downlink_frame(), r)
        assert e.value.reason == "too_late"
        assert fwd.inbox.empty()
    finally:
        await srv.stop()


async def test_version_1_forwarder_gets_version_1_replies_and_no_tx_ack_is_tolerated(gw):
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, tx_ack_timeout=0.05)
    await srv.start()
    try:
        fwd = await forwarder(srv, version=1)
        await fwd.pull()
        await fwd.push([rxpk(light_frame(counter=11))])
        await gw.seen.wait(lambda: gw.seen.uplinks)
        r = gw.seen.receptions[0]
        await r.path.send_downlink(downlink_frame(), r)  # returns after tx_ack_timeout
        resp = await fwd.recv()
        assert resp[0] == 1 and resp[3] == semtech.PULL_RESP
        assert srv.counts["tx_ack_missing"] == 1
    finally:
        await srv.stop()


async def test_gateway_duty_cycle_refuses_a_second_downlink_in_a_closed_sub_band(server):
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.pull()
    await fwd.push([rxpk(light_frame(counter=12), datr="SF12BW125", freq=868.1)])
    await fwd.push([rxpk(light_frame(node_id=5, counter=1), datr="SF12BW125", freq=868.3)])
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    first, second = gw.seen.receptions
    send = asyncio.create_task(first.path.send_downlink(downlink_frame(), first))
    resp = await fwd.recv()
    fwd.tx_ack(struct.unpack(">H", resp[1:3])[0], "NONE")
    await send
    # 868.1 and 868.3 MHz share sub-band g1 (1 %): an SF12 downlink shuts it for ~99x its airtime.
    band = lora.band_for(868_300_000)
    assert srv.forwarders[EUI.hex()].duty.used_ms(band) == pytest.approx(lora.airtime_ms(len(downlink_frame()), 12))
    with pytest.raises(DownlinkError) as e:
        await second.path.send_downlink(downlink_frame(counter=2), second)
    assert e.value.reason == "duty_cycle"
    assert fwd.inbox.empty()


async def test_the_duty_cycle_runs_on_the_forwarders_clock_not_ours(server):
    # Issue 15: the duty cycle was kept on the gateway's host clock. Under the simulator's time
    # compression the radio's time (tmst) runs `speed` times faster than ours, so a budget that
    # had reopened on the air stayed closed. Here two uplinks arrive within milliseconds of ours,
    # but 200 s apart on the concentrator: the SF12 downlink's off-time (~99 x 1.5 s) is over.
    srv, gw = server
    fwd = await forwarder(srv)
    await fwd.pull()
    t0 = 4_294_000_000  # the second one wraps the 32-bit us counter: still 200 s later
    await fwd.push([rxpk(light_frame(counter=12), datr="SF12BW125", freq=868.1, tmst=t0)])
    later = (t0 + 200_000_000) % semtech.TMST_MOD
    await fwd.push([rxpk(light_frame(node_id=5, counter=1), datr="SF12BW125", freq=868.3, tmst=later)])
    await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
    for i, r in enumerate(gw.seen.receptions):
        send = asyncio.create_task(r.path.send_downlink(downlink_frame(counter=i + 1), r))
        resp = await fwd.recv()
        fwd.tx_ack(struct.unpack(">H", resp[1:3])[0], "NONE")
        await send  # the second is not refused for duty cycle
    band = lora.band_for(868_300_000)
    assert srv.forwarders[EUI.hex()].duty.used_ms(band) == pytest.approx(2 * lora.airtime_ms(len(downlink_frame()), 12))


def test_a_forwarders_clock_never_steps_back():
    f = semtech.Forwarder("0102030405060708")
    assert f.air_ms(1_000_000) == 0  # the first time heard is its zero
    assert f.air_ms(3_000_000) == 2_000
    half = semtech.TMST_MOD // 2
    assert f.air_ms(half) == (half - 1_000_000) // 1000
    assert f.air_ms(semtech.TMST_MOD - 1_000_000) == (semtech.TMST_MOD - 2_000_000) // 1000
    assert f.air_ms(4_000_000) == (semtech.TMST_MOD + 3_000_000) // 1000  # wrapped: 5 s later
    before = f.air_ms(4_000_000)
    assert f.air_ms(500) == before  # a restart (its clock from zero): no time passes
    assert f.air_ms(1_000_500) == before + 1_000  # and it counts on from there


async def test_unmatched_tx_ack_is_counted(server):
    srv, _ = server
    fwd = await forwarder(srv)
    fwd.tx_ack(4242, "NONE")
    await wait_for(lambda: srv.counts["tx_ack_unmatched"] == 1)


async def test_a_flood_is_bounded_by_the_ingest_queue():
    class Stalled(RecordingPipeline):
        async def submit(self, reception):
            await asyncio.Event().wait()  # the pipeline is at its in-flight bound and stays there

    pipe = Stalled()
    srv = semtech.SemtechServer(pipe, "127.0.0.1", 0, ingestor=Ingestor(pipe, "udp", depth=4))
    await srv.start()
    try:
        fwd = await forwarder(srv)
        await fwd.push([rxpk(light_frame(counter=c)) for c in range(1, 11)])
        # the whole datagram is handled at once: 4 fit the queue, 6 are dropped and reported
        assert pipe.rejects[("overload", "udp")] == 6
        await wait_for(lambda: srv.ingestor.waiting() == 3)  # the worker holds one, blocked in submit
        await fwd.push([rxpk(light_frame(counter=11))])
        assert pipe.rejects[("overload", "udp")] == 6  # room for exactly one more
        await fwd.push([rxpk(light_frame(counter=12))])
        assert pipe.rejects[("overload", "udp")] == 7
    finally:
        await srv.ingestor.stop(drain=False)
        await srv.stop()


# -- fuzz: arbitrary datagrams over a real socket never take the server down ---------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
rxpk_like = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()), json_values),
        "stat": st.sampled_from([-1, 0, 1, True, "1", None, 2]),
        "tmst": st.one_of(st.integers(-1, 2**33), json_values),
        "freq": st.one_of(st.floats(), json_values),
        "datr": st.one_of(st.sampled_from(["SF7BW125", "SF12BW500", "SF99BW1", "x"]), json_values),
        "codr": st.one_of(st.sampled_from(["4/5", "4/9"]), json_values),
        "rssi": json_values,
        "lsnr": json_values,
        "time": st.one_of(st.text(max_size=40), json_values),
        "rsig": json_values,
    },
)
datagrams = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda v, t, body: bytes([v, 0, 1, t]) + EUI + body,
        st.sampled_from([1, 2, 3]),
        st.integers(0, 6),
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda pks, extra: json.dumps({"rxpk": pks, **extra}).encode(),
                st.lists(rxpk_like, max_size=5),
                st.dictionaries(st.sampled_from(["stat", "x"]), json_values, max_size=2),
            ),
        ),
    ),
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """A server and a real pipeline on their own loop, fed through a real UDP socket by sync hypothesis tests."""
    loop = asyncio.new_event_loop()

    async def make():
        gw = await Gateway.open(tmp_path_factory.mktemp("fuzz") / "gw.db")
        srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0)
        await srv.start()
        return gw, srv

    gw, srv = loop.run_until_complete(make())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", srv.port))
    sock.setblocking(False)
    yield loop, srv, gw, sock
    sock.close()
    loop.run_until_complete(srv.stop())
    loop.run_until_complete(gw.close())
    loop.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datagram=datagrams)
def test_fuzz_datagrams_never_crash_the_server(live_server, datagram):
    loop, srv, gw, sock = live_server
    before = srv.counts["datagrams"]
    sock.send(datagram)

    async def processed():
        await wait_for(lambda: srv.counts["datagrams"] != before and not srv.ingestor.waiting(), 2, interval=0.001)
        await gw.pipeline.drain()

    loop.run_until_complete(processed())
    assert srv.counts["internal_error"] == 0 and srv.ingestor.submit_errors == 0
    assert gw.rejected("udp").get("internal_error", 0) == 0


def test_after_the_fuzz_a_good_packet_still_goes_through(live_server):
    loop, srv, gw, sock = live_server
    # what the fuzz tries, in a fixed sample, sent here: the test holds in any order
    before = srv.counts["datagrams"]
    hostile = [
        b"\x02",
        b"\x07\x00\x01\x00" + EUI + b"{}",
        b"\x02\x00\x01\x00" + EUI + b"[" * 60_000,
        b"\x02\x00\x01\x00" + EUI + b'{"rxpk": [{"data": "!!"}, 5]}',
    ]
    for d in hostile:
        sock.send(d)
    loop.run_until_complete(wait_for(lambda: srv.counts["datagrams"] >= before + len(hostile), 2))
    raw = light_frame(node_id=0x7777, counter=1)
    sock.send(bytes([2, 0, 9, 0]) + EUI + json.dumps({"rxpk": [rxpk(raw)]}).encode())
    loop.run_until_complete(gw.seen.wait(lambda: any(r.raw == raw for r in gw.seen.receptions), 2))
