"""The simulator's live link: a real `lumeau gateway` process (pty as a radio bridge, UDP as a
Semtech packet forwarder) and a real `lumeau sink`, driven by simulated radios on a virtual clock.

Real parts throughout: child processes, a pseudo-terminal, UDP sockets on 127.0.0.1, SQLite files,
HTTP. The simulated side is the channel (simulator/channel.py) and frames sealed with each node's
own key; what is checked is what reached the sink.

One file (over 600 lines): each case starts the same gateway and sink
processes; apart they would repeat that set-up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import bridge_msg as bm
from protocol import expand, frame, keys
from protocol import messages as m
from protocol import serial as framing
from simulator import channel as ch
from simulator.gateway_link import LinkContext, NodeInfo
from simulator.live import LiveGateway
from simulator.live_radio import BridgeBoard, PacketForwarder
from simulator.services import metric_sum, parse_metrics
from simulator.sink_records import SinkRecordError, body_from_fields
from simulator.virtual_loop import VirtualClock, VirtualLoop

T0 = 1_781_524_800  # 2026-06-15 12:00 UTC: months away from this machine's clock, so a wrong time shows


# ---------------------------------------------------------------- records back from the sink


def _value(spec: tuple, mtype: int) -> st.SearchStrategy:
    key, kind, lo, hi, _req, maxlen = spec
    flags = expand.FLAGS.get((mtype, key))
    if flags is not None:  # only the bits the format names survive it (an unnamed bit is not sent upstream)
        known = [i for i, n in enumerate(flags) if n is not None]
        return st.lists(st.sampled_from(known), unique=True).map(lambda bits: sum(1 << b for b in bits))
    if kind in (m.U, m.I):
        return st.integers(lo, hi)
    if kind == m.B:
        return st.binary(min_size=lo, max_size=hi)
    if kind == m.T:
        return st.text(min_size=lo, max_size=hi).filter(lambda t: len(t.encode()) <= hi)
    if kind == m.V:
        return st.lists(st.one_of(st.integers(lo, hi), st.just(m.NO_VALUE)), max_size=maxlen).map(bytes)
    raise AssertionError(kind)


@st.composite
def uplink_bodies(draw):
    mtype = draw(st.sampled_from([m.HELLO, m.LIGHT, m.IRRIGATION, m.EVENT, m.STATUS, m.CMD_ACK]))
    body = {}
    for spec in m.SPECS[mtype]:
        if spec[4] or draw(st.booleans()):
            body[spec[0]] = draw(_value(spec, mtype))
    return mtype, body


@settings(max_examples=400, deadline=None)
@given(uplink_bodies())
def test_sink_fields_map_back_to_the_exact_body(mb):
    """What the sink holds (named fields, JSON) gives back the very body the node sent."""
    mtype, body = mb
    try:
        body = m.decode(mtype, m.encode(mtype, body))
    except m.MessageError:
        assume(False)
    fields = json.loads(json.dumps(expand.expand(mtype, body)))  # through JSON, as the sink stores it
    assert body_from_fields(mtype, fields) == body


def test_a_field_that_does_not_map_back_is_named():
    with pytest.raises(SinkRecordError, match="light.level"):
        body_from_fields(m.LIGHT, {"level": {"value": 40.5, "unit": "%"}})
    with pytest.raises(SinkRecordError, match="light.state"):
        body_from_fields(m.LIGHT, {"state": {"value": ["on", "sparkling"], "unit": None}})


def test_prometheus_text_is_read_with_labels():
    text = (
        '# HELP x y\nlumeau_frames_received_total{transport="bridge"} 3\n'
        'lumeau_frames_received_total{transport="udp"} 4.0\nlumeau_queue_records 0\n'
        'lumeau_transport_stat{transport="serial",instance="/dev/pts/3",counter="connected"} 1\nbroken line\n'
    )
    s = parse_metrics(text)
    assert metric_sum(s, "lumeau_frames_received_total") == 7
    assert metric_sum(s, "lumeau_frames_received_total", transport="udp") == 4
    assert metric_sum(s, "lumeau_transport_stat", instance="/dev/pts/3", counter="connected") == 1


# ---------------------------------------------------------------- the front-ends on their own


class Resolver:
    """Stands in for the link's resolve(): records requests, answers with a scripted reason."""

    def __init__(self, answer=None) -> None:
        self.calls: list[tuple] = []
        self.answer = answer

    def __call__(self, site, tmst, node, raw):
        self.calls.append((site, tmst, node, raw))
        return self.answer


def _read_packets(fd: int, n: int, timeout: float = 3.0) -> list[bytes]:
    dec = framing.Decoder(400)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while len(got) < n and time.monotonic() < deadline:
        try:
            got += dec.feed(os.read(fd, 4096))
        except BlockingIOError:
            time.sleep(0.005)
    return got


def _readable(fd, timeout: float = 3.0) -> bool:
    """Wait until fd (or an object with fileno()) has something to read, or the deadline."""
    return bool(select.select([fd], [], [], timeout)[0])


def _until(cond, timeout: float = 3.0) -> bool:
    """Poll cond() until it is true or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _host_side(board: BridgeBoard) -> int:
    """The gateway's end of the board's line (what `lumeau gateway` opens)."""
    import tty

    fd = os.open(board.path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def test_bridge_board_speaks_spec_section_10():
    answer = Resolver()
    board = BridgeBoard("gw-a", answer)
    host = _host_side(board)
    try:
        board.boot(5_000_000)
        board.time_sync(5_000_000, T0 + 5.0)
        raw = frame.seal(keys.NodeKeys(7, bytes(16)), m.LIGHT, 3, m.encode(m.LIGHT, {0: 40}))
        rx1 = board.forward(raw, 7_250_000, T0 + 7.25, 868_300_000, 9, -101.4, -3.3)
        status, tm, rx = (bm.decode(p) for p in _read_packets(host, 3))
        assert status[0] == bm.STATUS and status[1] == 0  # uptime 0 at boot
        assert tm == (bm.TIME, 0, T0 + 5, 0)
        assert rx == (bm.RX, 2250, 868_300_000, 9, 125_000, -101, -13, raw)
        assert rx1 == 3250  # the board's clock when that uplink's RX1 opens
        # the gateway asks for a timed TX in RX1: handed to the link, answered with TX_RESULT sent
        down = frame.seal(keys.NodeKeys(7, bytes(16)), m.ACK, 1, m.encode(m.ACK, {0: 3}))
        os.write(
            host,
            framing.encode(bm.encode_tx(9, down, 868_300_000, 9, 125_000, 14, 3250))
            + framing.encode(bm.encode_tx(10, down, 868_300_000, 9, 125_000, 14, None))
            + framing.encode(bm.encode_ping())
            + b"\x00garbage\x00"
            + framing.encode(b"\x85?"),
        )
        assert _readable(board)
        board.on_readable(8_000_000)
        res1, res2, st2 = (bm.decode(p) for p in _read_packets(host, 3))
        assert answer.calls == [("gw-a", 3250, 7, down)]
        assert res1 == (bm.TX_RESULT, 9, bm.TX_SENT, 3250)
        assert res2 == (bm.TX_RESULT, 10, bm.TX_BAD_REQUEST, 0)  # "now" reaches no node: they only listen in RX1
        assert st2[0] == bm.STATUS and st2[4] == 1 and st2[5] == 1  # one TX sent, one refused
        assert board.counts["host_errors"] == 1  # the unknown message; the garbage is line noise to the decoder
        assert board.decoder.dropped_crc + board.decoder.dropped_cobs + board.decoder.dropped_short >= 1
        # the link says the window has passed: the bridge's own code for it
        answer.answer = "too_late"
        os.write(host, framing.encode(bm.encode_tx(11, down, 868_300_000, 9, 125_000, 14, 3250)))
        assert _readable(board)
        board.on_readable(9_000_000)
        assert bm.decode(_read_packets(host, 1)[0]) == (bm.TX_RESULT, 11, bm.TX_TOO_LATE, 0)
    finally:
        os.close(host)
        board.close()


def test_packet_forwarder_speaks_semtech_udp_v2():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(2)
    answer = Resolver()
    fwd = PacketForwarder("gw-b", bytes.fromhex("0016c001ff100001"), answer, channels_hz=(868_100_000, 868_500_000))
    fwd.connect("127.0.0.1", server.getsockname()[1])
    try:
        fwd.boot(1_000_000)
        pull, _ = server.recvfrom(4096)
        assert pull[0] == 2 and pull[3] == 0x02 and pull[4:12] == fwd.eui
        stat, _ = server.recvfrom(4096)
        assert stat[3] == 0x00 and "stat" in json.loads(stat[12:])
        raw = bytes(range(20))
        rx1 = fwd.forward(raw, 3_000_000, T0 + 3.0, 868_500_000, 10, -117.6, -9.44)
        push, addr = server.recvfrom(4096)
        pk = json.loads(push[12:])["rxpk"][0]
        assert pk["time"] == "2026-06-15T12:00:03.000000Z"  # the simulated time travels as radio metadata
        assert (pk["tmst"], pk["freq"], pk["chan"], pk["datr"], pk["rssi"], pk["lsnr"]) == (
            2_000_000,
            868.5,
            1,
            "SF10BW125",
            -118,
            -9.4,
        )
        assert base64.b64decode(pk["data"]) == raw and rx1 == 3_000_000
        # PULL_RESP: handed to the link, then TX_ACK with the same token and the link's verdict
        down = frame.seal(keys.NodeKeys(7, bytes(16)), m.ACK, 1, m.encode(m.ACK, {0: 3}))

        def pull_resp(token: int, data: bytes) -> None:
            txpk = {
                "imme": False,
                "tmst": rx1,
                "freq": 868.5,
                "datr": "SF10BW125",
                "size": len(data),
                "data": base64.b64encode(data).decode(),
            }
            server.sendto(bytes((2, token >> 8, token & 0xFF, 0x03)) + json.dumps({"txpk": txpk}).encode(), addr)
            assert _readable(fwd)
            fwd.on_readable(4_000_000)
            ack, _ = server.recvfrom(4096)
            assert ack[:4] == bytes((2, token >> 8, token & 0xFF, 0x05)) and ack[4:12] == fwd.eui
            return json.loads(ack[12:])["txpk_ack"]["error"]

        assert pull_resp(0xABCD, down) == "NONE"
        answer.answer = "duty_cycle"
        assert pull_resp(0xABCE, down) == "DUTY_CYCLE"
        assert answer.calls == [("gw-b", rx1, 7, down)] * 2
        assert pull_resp(0xABCF, b"abc") == "TX_FREQ"  # not a frame: no node to send it to
        assert len(answer.calls) == 2
        # junk from the network is counted, never fatal
        server.sendto(b"\x07", addr)
        server.sendto(bytes((2, 0, 1, 0x03)) + b"{not json", addr)

        def both_read() -> bool:
            fwd.on_readable(5_000_000)
            return fwd.counts["malformed"] >= 2

        assert _until(both_read)
        assert fwd.counts["malformed"] == 2
    finally:
        fwd.close()
        server.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_fuzz_whatever_the_gateway_writes_the_bridge_board_stands(chunks):
    board = BridgeBoard("gw-f", Resolver("busy"))
    host = _host_side(board)
    try:
        for c in chunks:
            os.write(host, c)
            os.write(host, framing.encode(c))
        if chunks:
            assert _readable(board)
        board.on_readable(1_000_000)  # must not raise
        os.write(host, framing.encode(bm.encode_ping()))
        assert _readable(board)
        board.on_readable(2_000_000)
        assert any(bm.decode(p)[0] == bm.STATUS for p in _read_packets(host, 1))
    finally:
        os.close(host)
        board.close()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda tok, body: bytes((2, tok >> 8, tok & 0xFF, 0x03)) + body,
                st.integers(0, 0xFFFF),
                st.one_of(
                    st.binary(max_size=100),
                    st.recursive(
                        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                        max_leaves=10,
                    ).map(lambda d: json.dumps({"txpk": d}).encode()),
                    st.just(b'{"txpk":' * 3000),
                ),
            ),
        ),
        max_size=5,
    )
)
def test_fuzz_whatever_the_network_sends_the_forwarder_stands(datagrams):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    fwd = PacketForwarder("gw-f", bytes(8), Resolver("busy"))
    fwd.connect("127.0.0.1", server.getsockname()[1])
    try:
        for d in datagrams:
            server.sendto(d, fwd.sock.getsockname())
        if datagrams:
            assert _readable(fwd)
        fwd.on_readable(1_000_000)  # must not raise; every PULL_RESP-shaped datagram gets its TX_ACK
    finally:
        fwd.close()
        server.close()


# ---------------------------------------------------------------- the link against the real processes

NODES = [
    NodeInfo(0x0100 + i, f"lamp-{i}", "lighting", bytes((i * 7 + j) & 0xFF for j in range(16)), 45.75, 4.83, "street")
    for i in range(3)
]
SITES = [ch.GatewaySite("gw-west", -90, 0, 20), ch.GatewaySite("gw-east", 90, 0, 20)]


def _drive(tmp_path: Path, uplinks: int, alarm_at: int, speed: float | None):
    """Three lamps send LIGHT reports every 60 s (one ALARM among them) through both sites, live."""
    channel = ch.Channel(SITES, seed=3)
    for i, n in enumerate(NODES):
        channel.add_node(n.node_id, -40 + 40 * i, 20)
    downlinks: list[tuple] = []
    sent: dict[tuple[int, int], float] = {}  # (node, counter) -> simulated end of the uplink, Unix s

    def downlink(site, node, raw, uplink):
        t = asyncio.get_running_loop().time()
        assert t < channel.rx1_start_ms(uplink) / 1000  # put on the air before its window opens
        downlinks.append((site, node, raw))

    async def main():
        loop = asyncio.get_running_loop()
        ctx = LinkContext(NODES, SITES, T0, lambda: T0 + loop.time(), downlink, tmp_path)
        link = LiveGateway(tmp_path / "out", speed=speed)
        try:
            await link.start(ctx)
            for k in range(uplinks):
                for n in NODES:
                    nk = keys.NodeKeys(n.node_id, n.root_key)
                    counter = k + 1
                    if k == alarm_at and n is NODES[0]:
                        body = m.encode(m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 3: T0 + int(loop.time()), 4: 1})
                        raw = frame.seal(nk, m.EVENT, counter, body)
                    else:
                        raw = frame.seal(nk, m.LIGHT, counter, m.encode(m.LIGHT, {0: 40, 2: 1000 + k}))
                    up = channel.transmit(n.node_id, loop.time() * 1000, len(raw), 9, 868_100_000, raw)
                    await asyncio.sleep(up.airtime_ms / 1000 + 0.001)
                    for tx in channel.settle(loop.time() * 1000):
                        if any(h.ok for h in tx.hearings):
                            sent[(tx.node_id, counter)] = T0 + tx.end_us / 1e6
                        for h in tx.hearings:
                            if h.ok:
                                link.uplink(h)
                    await asyncio.sleep(20)
            report = await link.finish()
        finally:
            await link.close()
        return link, report

    loop = VirtualLoop(VirtualClock(T0))
    try:
        return (*loop.run_until_complete(main()), sent, downlinks)
    finally:
        loop.close()


def test_live_link_through_a_real_gateway_and_sink(tmp_path):
    link, report, sent, downlinks = _drive(tmp_path, uplinks=12, alarm_at=4, speed=None)
    # every uplink a site heard is at the sink exactly once, dated in simulated time
    got = {(r.node_id, r.counter): r for r in report.stored}
    assert set(got) == set(sent) and len(report.stored) == len(sent)
    for key, t in sent.items():
        assert abs(got[key].rx_time - t) < 0.002, key
    assert {r.gateway_id.split(":")[0] for r in report.stored} == {"serial", "udp"}  # both transports carried some
    assert report.delivered_upstream == len(sent) and report.queued_at_end == 0
    c = report.counters
    assert c["received"] == sum(c["live_handed_over"].values())  # the gateway read every copy we handed over
    assert c["accepted"] == len(sent) and c["duplicates"] == c["received"] - len(sent)
    # the alarm was acknowledged in its receive window, through one of the two sites; each lamp's clock
    # (set, but never measured by this gateway) was re-synced at its first uplink and once more at the
    # next (gateway/timesync.py): the link held its clock for those windows (GET /time), and nothing
    # the gateway sent came too late
    assert c["downlinks_acks_sent"] == 1 and c["downlinks_time_auto"] == 2 * len(NODES)
    assert c["live_holds_answered"] == len(downlinks) == 1 + 2 * len(NODES) and c.get("live_downlinks_late", 0) == 0
    assert c["live_holds"] == c["live_holds_answered"] + c.get("live_holds_unanswered", 0)
    got_by = {}
    for _site, node, raw in downlinks:
        n = next(x for x in NODES if x.node_id == node)
        f, body = frame.unseal(keys.NodeKeys(node, n.root_key), raw)
        got_by.setdefault(node, []).append((f.mtype, m.decode(f.mtype, body)))
    assert [t for t, _b in got_by[NODES[1].node_id]] == [m.TIME, m.TIME]
    (ack,) = [b for t, b in got_by[NODES[0].node_id] if t == m.ACK]
    assert ack[0] == 5
    # the alarm itself, as the platform got it
    (alarm,) = [r for r in report.stored if r.mtype == m.EVENT]
    assert alarm.body[0] == m.EV_LAMP_FAILURE and alarm.body[1] == m.SEV_ALARM
    assert link.exit_codes == {"gateway": 0, "sink": 0}
    # keys only in the registry file (0600), never in a log
    out = tmp_path / "out"
    assert oct((out / "nodes.toml").stat().st_mode & 0o777) == "0o600"
    logs = (out / "gateway.log").read_text() + (out / "sink.log").read_text()
    assert all(n.root_key.hex() not in logs for n in NODES)


def test_a_command_queued_at_the_gateway_goes_out_in_the_next_receive_window(tmp_path):
    """A downlink an operator queued through the gateway's API: the link holds the clock after that node's
    next uplink (any uplink, not only alarms) and the COMMAND reaches the air in RX1."""
    channel = ch.Channel(SITES, seed=5)
    for i, n in enumerate(NODES):
        channel.add_node(n.node_id, -40 + 40 * i, 20)
    got: list[tuple] = []

    def downlink(site, node, raw, uplink):
        assert asyncio.get_running_loop().time() < channel.rx1_start_ms(uplink) / 1000
        got.append((site, node, raw))

    async def main():
        loop = asyncio.get_running_loop()
        ctx = LinkContext(NODES, SITES, T0, lambda: T0 + loop.time(), downlink, tmp_path)
        link = LiveGateway(tmp_path / "out", speed=None)
        try:
            await link.start(ctx)
            target = NODES[1]
            link.services.api.post(f"/nodes/{target.node_id:08x}/commands", {"op": "set_level", "args": [100, 600]})
            deadline = time.monotonic() + 5
            while target.node_id not in link._open_nodes and time.monotonic() < deadline:
                time.sleep(0.05)  # the link's poller has seen the queue (real time; the clock stands)
            nk = keys.NodeKeys(target.node_id, target.root_key)
            for counter in (1, 2):
                raw = frame.seal(nk, m.LIGHT, counter, m.encode(m.LIGHT, {0: 40, 2: 100 + counter}))
                up = channel.transmit(target.node_id, loop.time() * 1000, len(raw), 9, 868_100_000, raw)
                await asyncio.sleep(up.airtime_ms / 1000 + 0.001)
                for tx in channel.settle(loop.time() * 1000):
                    for h in tx.hearings:
                        if h.ok:
                            link.uplink(h)
                await asyncio.sleep(30)
            return await link.finish()
        finally:
            await link.close()

    loop = VirtualLoop(VirtualClock(T0))
    try:
        report = loop.run_until_complete(main())
    finally:
        loop.close()
    assert report.counters["live_holds"] >= 1 and report.counters["live_holds_answered"] >= 1
    commands = []
    for _site, node, raw in got:
        f, body = frame.unseal(keys.NodeKeys(node, NODES[1].root_key), raw)
        if f.mtype == m.COMMAND:
            commands.append(m.decode(m.COMMAND, body))
    assert commands and commands[0][1] == m.OP_SET_LEVEL and list(commands[0][2]) == [100, 600]


def test_a_hold_with_nothing_to_send_ends_when_the_gateway_says_so(tmp_path):
    """Issue 11: the link held its clock a full real second (the gateway's deadline) after every uplink
    of a node with a downlink open that the gateway would not send (a COMMAND awaiting its CMD_ACK, a
    duty cycle spent): 97 s of the demo's 136 s. It now asks the gateway (GET /nodes/{id}/window) and
    goes on as soon as the gateway is done with the window."""
    channel = ch.Channel(SITES, seed=5)
    for i, n in enumerate(NODES):
        channel.add_node(n.node_id, -40 + 40 * i, 20)
    got: list[tuple] = []

    def downlink(site, node, raw, uplink):
        assert asyncio.get_running_loop().time() < channel.rx1_start_ms(uplink) / 1000
        got.append((site, node, raw))

    async def main():
        loop = asyncio.get_running_loop()
        ctx = LinkContext(NODES, SITES, T0, lambda: T0 + loop.time(), downlink, tmp_path)
        link = LiveGateway(tmp_path / "out", speed=None)
        try:
            await link.start(ctx)
            target = NODES[2]
            link.services.api.post(f"/nodes/{target.node_id:08x}/commands", {"op": "set_level", "args": [100, 600]})
            deadline = time.monotonic() + 5
            while target.node_id not in link._open_nodes and time.monotonic() < deadline:
                time.sleep(0.05)  # the link's poller has seen the queue (real time; the clock stands)
            nk = keys.NodeKeys(target.node_id, target.root_key)
            # the COMMAND, the unknown clock's re-sync, its repeat; then the COMMAND waits for its CMD_ACK
            # (never sent here) and is not due again for RETRY_AFTER_S of the gateway's real time
            for counter in (1, 2, 3, 4, 5):
                raw = frame.seal(nk, m.LIGHT, counter, m.encode(m.LIGHT, {0: 40, 2: 100 + counter}))
                up = channel.transmit(target.node_id, loop.time() * 1000, len(raw), 9, 868_100_000, raw)
                await asyncio.sleep(up.airtime_ms / 1000 + 0.001)
                for tx in channel.settle(loop.time() * 1000):
                    for h in tx.hearings:
                        if h.ok:
                            link.uplink(h)
                await asyncio.sleep(30)
            return link, await link.finish()
        finally:
            await link.close()

    loop = VirtualLoop(VirtualClock(T0))
    try:
        link, report = loop.run_until_complete(main())
    finally:
        loop.close()
    c = report.counters
    kinds = []
    for _site, node, raw in got:
        f, _body = frame.unseal(keys.NodeKeys(node, NODES[2].root_key), raw)
        kinds.append(f.mtype)
    assert kinds == [m.COMMAND, m.TIME, m.TIME] and c["live_holds_answered"] == 3
    assert c["live_holds_ended_by_gateway"] >= 1 and c["live_holds_unanswered"] == c["live_holds_ended_by_gateway"]
    # each ended well before the 1 s deadline (a commit and a look at the API: tens of ms)
    assert c["live_holds_unanswered_real_s"] < 0.5 * c["live_holds_unanswered"]
    assert c.get("live_downlinks_late", 0) == 0


def test_a_gateway_that_dies_mid_run_is_said_clearly(tmp_path):
    import signal

    from simulator.services import ServiceError

    async def main():
        loop = asyncio.get_running_loop()
        ctx = LinkContext(NODES, SITES, T0, lambda: T0 + loop.time(), lambda *a: None, tmp_path)
        link = LiveGateway(tmp_path / "out", speed=None)
        try:
            await link.start(ctx)
            link.services.gateway.proc.send_signal(signal.SIGKILL)  # the process this link started
            link.services.gateway.proc.wait(10)
            await asyncio.sleep(120)  # the pacer notices
            with pytest.raises(ServiceError, match="gateway process exited"):
                await link.finish()
        finally:
            await link.close()
        return link

    loop = VirtualLoop(VirtualClock(T0))
    try:
        link = loop.run_until_complete(main())
    finally:
        loop.close()
    assert link.exit_codes["gateway"] == -9 and link.exit_codes["sink"] == 0
    assert not link.services.sink.running and not link.services.gateway.running


# ---------------------------------------------------------------- the main job, end to end

DISTRICT = Path(__file__).resolve().parent.parent / "simulator" / "scenarios" / "district.toml"
DEMO_TIMEOUT_S = 300


def _plain(v):
    """A field's value in either native format version (/1: {"value", "unit"}; /2: the value)."""
    return v["value"] if isinstance(v, dict) else v


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`lumeau demo` itself, as `make demo` runs it, on the full district (24 h, eight faults).

    Uncapped speed (--speed 0): the virtual clock only waits for the gateway where a downlink may
    come; the run takes about half a minute on this machine."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "lumeau", "demo", "--out", str(out), "--speed", "0"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout, json.loads((out / "results.json").read_text())


def _sink_records(out: Path) -> list[dict]:
    import sqlite3

    c = sqlite3.connect(out / "sink.db")
    try:
        return [json.loads(doc) for (doc,) in c.execute("SELECT doc FROM records ORDER BY seq")]
    finally:
        c.close()


def _node_ids(out: Path) -> dict[str, int]:
    import tomllib

    reg = tomllib.loads((out / "nodes.toml").read_text())
    return {entry["name"]: int(hexid, 16) for hexid, entry in reg["nodes"].items()}


def test_demo_every_injected_fault_raises_its_alarm_at_the_sink(demo):
    from simulator.scenario import load

    out, stdout, results = demo
    sc = load(DISTRICT)
    ids = _node_ids(out)
    records = _sink_records(out)
    events = expand.ENUMS[(m.EVENT, 0)]
    causes = expand.ENUMS[(m.HELLO, 4)]
    # The district is scripted (a dry spell, faults where water flows) so that every fault shows with
    # its own seed. A fault that cannot show by physics (a burst in a zone that never waters) would
    # be reported latent with its reason (simulator/metrics.py); the district has none, and nothing
    # else excuses a missing alarm.
    latent = [f for f in results["alarms"]["faults"] if f["expected"] and not f["manifested"]]
    assert latent == [], latent
    assert {f.kind for f in sc.faults.faults} >= {"lamp_failure", "burst", "stuck_valve", "leak", "node_reboot"}
    checked = 0
    for f in sc.faults.faults:
        if f.expected is None:
            continue
        kind, code = f.expected
        node = f"{ids[f.target]:08x}"
        at = sc.start_unix + f.at_s
        hits = [
            r
            for r in records
            if r["node"] == node
            and datetime_unix(r["time"]) >= at
            and (
                (
                    kind == "event"
                    and r["type"] == "event"
                    and _plain(r["fields"]["code"]) == events[code]
                    and _plain(r["fields"].get("active", 1)) in (1, True)
                )
                or (kind == "hello" and r["type"] == "hello" and _plain(r["fields"].get("reset_cause")) == causes[code])
            )
        ]
        assert hits, f"{f.kind} on {f.target} at {f.at_s / 3600:g} h: no {kind} {code} at the sink"
        checked += 1
    assert checked == sum(1 for f in sc.faults.faults if f.expected is not None) >= 6
    assert results["alarms"]["detected"] == results["alarms"]["expected"] == checked


def datetime_unix(text: str) -> float:
    from simulator.sink_records import parse_time

    return parse_time(text)


def test_demo_clocks_stay_within_the_bar_through_the_real_gateway(demo):
    """Issue 11's bar, through the real gateway process: every node's clock within 2 s all day after its
    first TIME (the demo reached 3.9-5.0 s while the live link did not hold for the gateway's drift
    re-syncs); the windows the link held for were answered or ended by the gateway, not by the clock."""
    _out, stdout, results = demo
    ck, gw = results["clock"], results["gateway"]
    assert ck["nodes_synced"] == results["scenario"]["lamps"] + results["scenario"]["controllers"]
    assert ck["max_error_s"] <= 2.0, ck["worst_node"]
    assert ck["never_restored"] == [] and ck["reboot_to_profile_s"] <= 15.0
    assert ck["time_taken"] >= 0.9 * ck["time_downlinks_sent"]  # taken, not only sent
    assert gw["downlinks_time_auto"] == ck["time_downlinks_sent"] and gw["downlinks_rerouted"] >= 1
    assert gw["live_holds"] == gw["live_holds_answered"] + gw.get("live_holds_unanswered", 0)
    assert gw.get("live_holds_unanswered", 0) - gw.get("live_holds_ended_by_gateway", 0) <= 5  # at the deadline
    assert "ended by the gateway with nothing to send" in stdout


def test_demo_delivery_frames_and_totals(demo):
    from simulator.scenario import load

    out, stdout, results = demo
    sc = load(DISTRICT)
    assert results["run"]["link"] == "live"
    assert results["delivery"]["ratio"] >= 0.95
    assert results["frames"]["over_budget"] == 0 and max(results["frames"]["largest"].values()) <= 51
    # the sink holds exactly what the results say the platform got, dated in simulated time
    records = _sink_records(out)
    assert len(records) == results["delivery"]["stored"] == results["totals"]["uplinks"]["at_platform"]
    # nothing lost between the air and the platform, across the upstream outage and the site restart
    assert len(records) == results["totals"]["uplinks"]["heard"]
    assert len({r["id"] for r in records}) == len(records)
    times = [datetime_unix(r["time"]) for r in records]
    assert sc.start_unix <= min(times) and max(times) <= sc.end_unix + 60
    # totals at the sink, computed here from the sink's own file, equal the nodes' own counters
    last: dict[tuple[str, str], tuple[int, float]] = {}
    for r in records:
        field = {"light": "energy", "irrigation": "volume"}.get(r["type"])
        if field and field in r["fields"]:
            key = (r["node"], r["type"])
            if key not in last or r["counter"] > last[key][0]:
                last[key] = (r["counter"], _plain(r["fields"][field]))
    wh = sum(v for (_n, t), (_c, v) in last.items() if t == "light")
    litres = sum(v for (_n, t), (_c, v) in last.items() if t == "irrigation")
    t = results["totals"]
    assert (wh, litres) == (t["energy_wh"]["nodes"], t["water_l"]["nodes"])
    assert t["agree"] and not t["mismatches"]
    assert t["uplinks"]["queued_at_end"] == 0
    assert "gateway exit 0, sink exit 0" in stdout


def test_demo_ledger_of_the_platform_agrees_with_the_simulator(demo):
    """The ledger `lumeau sink` computes from its records after the run (simulator/demo_ledger.py)."""
    out, stdout, results = demo
    led = results["platform_ledger"]
    agree = led["agreement"]
    assert agree["agree"], agree
    assert abs(agree["energy_kwh"]["diff_pct"]) <= 2 and abs(agree["water_m3"]["diff_pct"]) <= 5
    assert agree["energy_kwh"]["simulator"] == pytest.approx(results["energy"]["total_kwh"], abs=1e-4)
    assert agree["water_m3"]["simulator"] == pytest.approx(results["water"]["total_m3"], abs=1e-4)
    assert [d["date"] for d in led["days"]] == ["2026-06-15", "2026-06-16"] and led["sink_exit"] == 0
    t = led["totals"]
    assert t["energy_baseline_kwh"] == pytest.approx(results["energy"]["total_baseline_kwh"], rel=0.01)
    assert t["water_baseline_m3"] == pytest.approx(results["water"]["total_baseline_m3"], rel=0.01)
    assert "against the simulator: energy" in stdout and ": agree" in stdout


def test_demo_report_has_the_numbers_and_the_plots(demo):
    from simulator.report import PLOTS

    out, stdout, results = demo
    html = (out / "report.html").read_text()
    en, wa = results["energy"], results["water"]
    assert f"{en['saved_kwh']:.1f} kWh saved" in html and f"{en['saved_pct']:.0f} %" in html
    assert f"{wa['saved_m3']:.2f} m\u00b3 saved" in html
    assert f"{results['delivery']['ratio_pct']:.2f} %" in html
    assert html.count("data:image/png;base64,") == len(PLOTS)  # self-contained
    for name in PLOTS:
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert "report.html" in stdout and f"{en['saved_kwh']:.1f} kWh saved" in stdout


def test_report_of_a_short_in_process_run(tmp_path):
    """The report is the results object's, whatever the link: two in-process hours of the district."""
    from simulator.report import PLOTS, write_report
    from simulator.runner import RunOptions, run
    from simulator.scenario import load

    sc = load(DISTRICT)
    results = run(sc, RunOptions(hours=2, progress=False, workdir=tmp_path / "gw")).to_dict()
    path = write_report(results, tmp_path / "report", sc)
    html = path.read_text()
    assert path.name == "report.html" and html.count("data:image/png;base64,") == len(PLOTS)
    assert "real gateway pipeline and store in the simulator" in html and "lumeau sink" not in html
    assert f"{results['delivery']['stored']:,} of {results['delivery']['settled']:,}" in html
    assert f"{results['energy']['baseline_kwh']:.1f} kWh" in html
    assert sorted(p.name for p in (tmp_path / "report" / "plots").iterdir()) == sorted(f"{n}.png" for n in PLOTS)


def test_demo_residents_reports_get_the_platforms_verdicts(demo):
    """Residents report faults through Open311 after the run (simulator/demo_residents.py, issue 13)."""
    out, stdout, results = demo
    reports = results["resident_reports"]
    # every injected lamp, water and valve fault is reported, then a mistaken resident and one past the edge
    assert [r["service_code"] for r in reports] == [
        "lamp_out",
        "lamp_flickering",
        "water_leak",
        "broken_sprinkler",
        "water_leak",
        "lamp_out",
        "lamp_out",
    ]
    assert all(r["verdict"] == r["expected"] for r in reports), reports
    # the three verdicts a resident can get, each from the nodes' own state at the run's end
    assert {r["verdict"] for r in reports} == {"confirmed", "device_normal", "no_device"}
    assert next(r for r in reports if r["near"] == "republique-05")["verdict"] == "confirmed"
    assert next(r for r in reports if r["fault"].startswith("leak"))["verdict"] == "device_normal"  # ended at 18 h
    assert "residents' reports (Open311" in stdout and "7/7 as expected" in stdout
    report = (out / "report.html").read_text()
    assert "<h2>Residents' reports</h2>" in report and "<h2>The city platform's ledger</h2>" in report
    assert "resident1@example.org" not in report  # contacts are never published


@pytest.fixture(scope="module")
def release_image(tmp_path_factory) -> bytes:
    """A signed full release image of today's lighting bundle (version 9.9.0)."""
    from lumeau import bundle as bundles
    from lumeau import release as releases

    d = tmp_path_factory.mktemp("live-rel")
    bundles.build("lighting", "esp32", d / "b")
    releases.generate_key(d / "city.pem")
    return releases.build(bundles.load(d / "b"), releases.load_key(d / "city.pem"), ["0.0.1"], None, "9.9.0").image


def test_an_update_campaigns_fragments_go_out_in_the_held_receive_windows(tmp_path, release_image):
    """A campaign sends a lamp its image by unicast: a FRAG in each receive window after its uplinks
    (gateway/fuota.py), when nothing queued is due. The link holds its clock for the windows of a node
    receiving an image in a running campaign (GET /campaigns) as for queued downlinks: before, those
    fragments came after the window and were refused too late."""
    import urllib.request

    from protocol import fragments as fz

    channel = ch.Channel(SITES, seed=5)
    for i, n in enumerate(NODES):
        channel.add_node(n.node_id, -40 + 40 * i, 20)
    got: list[tuple] = []

    def downlink(site, node, raw, uplink):
        assert asyncio.get_running_loop().time() < channel.rx1_start_ms(uplink) / 1000
        got.append((site, node, raw))

    target = NODES[0]

    async def main():
        loop = asyncio.get_running_loop()
        ctx = LinkContext(NODES, SITES, T0, lambda: T0 + loop.time(), downlink, tmp_path)
        link = LiveGateway(tmp_path / "out", speed=None)
        try:
            await link.start(ctx)
            api = link.services.api
            api.post("/groups", {"name": "upd", "kind": "street", "members": [f"{target.node_id:08x}"]})
            token = (tmp_path / "out" / "api.token").read_text().strip()
            req = urllib.request.Request(
                api.base + "/campaigns?group=upd&canary=1",
                data=release_image,
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 201
            deadline = time.monotonic() + 10
            while target.node_id not in link._updating and time.monotonic() < deadline:
                time.sleep(0.05)  # the link's poller has seen the campaign (real time; the clock stands)
            assert target.node_id in link._updating
            nk = keys.NodeKeys(target.node_id, target.root_key)
            answered: set[int] = set()
            for counter in range(1, 11):
                # the lamp answers the group's join_group (queued with the group, open until answered:
                # the link would hold for it) with its next uplink; else a LIGHT report
                cmds = [
                    m.decode(m.COMMAND, b)
                    for f, b in (frame.unseal(nk, raw) for _s, _n, raw in got)
                    if f.mtype == m.COMMAND
                ]
                todo = [c for c in cmds if c[0] not in answered]
                if todo:
                    answered.add(todo[0][0])
                    raw = frame.seal(nk, m.CMD_ACK, counter, m.encode(m.CMD_ACK, {0: todo[0][0], 1: 0}))
                else:
                    raw = frame.seal(nk, m.LIGHT, counter, m.encode(m.LIGHT, {0: 40, 2: 100 + counter}))
                up = channel.transmit(target.node_id, loop.time() * 1000, len(raw), 9, 868_100_000, raw)
                await asyncio.sleep(up.airtime_ms / 1000 + 0.001)
                for tx in channel.settle(loop.time() * 1000):
                    for h in tx.hearings:
                        if h.ok:
                            link.uplink(h)
                await asyncio.sleep(30)
            return await link.finish()
        finally:
            await link.close()

    loop = VirtualLoop(VirtualClock(T0))
    try:
        report = loop.run_until_complete(main())
    finally:
        loop.close()
    kinds = [frame.unseal(keys.NodeKeys(node, target.root_key), raw)[0].mtype for _s, node, raw in got]
    # the join_group, the clock's TIMEs, then fragments in every window, held for (without the hold
    # the windows after the TIMEs got nothing: 4 fragments of 10 uplinks)
    assert kinds[0] == m.COMMAND and kinds.count(fz.FRAG) >= 6, kinds
    assert kinds[-3:] == [fz.FRAG] * 3, kinds
    assert report.counters.get("live_downlinks_late", 0) == 0, report.counters
