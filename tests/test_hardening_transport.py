"""Issue 15, broken guarantees 1 and 2, on the Semtech UDP transport (a real socket on 127.0.0.1).

1. A flood of new gateway EUIs must not flood the log: `semtech: new forwarder` goes
   through the rate limiter like every other line caused by the network.
2. A hostile value in one rxpk (a 400-digit rssi, a 5,000-digit integer, a string
   where a number belongs, a deep structure) never costs the other frames of that
   PUSH_DATA, never reaches `internal_error`, and is counted.
"""

from __future__ import annotations

import json
import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import logs
from gateway.transports import semtech
from tests.test_transport_semtech import EUI, forwarder, live_server, rxpk  # noqa: F401  (fixture)
from tests.transport_helpers import Gateway, light_frame
from tests.waiting import wait_for


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def semtech_log():
    logger = logging.getLogger("lumeau.gateway.transports.semtech")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def gw(tmp_path):
    g = await Gateway.open(tmp_path / "gw.db")
    yield g
    await g.close()


async def test_new_forwarder_lines_are_rate_limited(gw, semtech_log):
    # a frozen monotonic clock: the limiter never refills, so the burst is all that may pass
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, monotonic=lambda: 1000.0)
    await srv.start()
    try:
        fwd = await forwarder(srv)
        n = 3 * semtech.MAX_FORWARDERS
        for i in range(n):
            fwd.send(struct.pack(">BHB", 2, i & 0xFFFF, semtech.PUSH_DATA) + i.to_bytes(8, "big") + b"{}")
            if i % 64 == 63:  # let the server keep up: the socket buffer is not what is tested here
                await wait_for(lambda i=i: srv.counts["push_data"] == i + 1)
        await wait_for(lambda: srv.counts["push_data"] == n)
    finally:
        await srv.stop()
    lines = [r for r in semtech_log.records if r.getMessage() == "semtech: new forwarder"]
    assert 1 <= len(lines) <= logs.LOG_BURST, len(lines)
    assert srv.counts["forwarders_new"] == n  # each one is still counted
    assert srv.stats()["forwarders"] == semtech.MAX_FORWARDERS


def push_text(rxpks: list[str]) -> bytes:
    return struct.pack(">BHB", 2, 7, semtech.PUSH_DATA) + EUI + ('{"rxpk": [' + ",".join(rxpks) + "]}").encode()


def with_raw(pk: dict, field: str, raw_json: str) -> str:
    """The rxpk as JSON text with `field` set to a raw JSON value (json.dumps refuses 5,000-digit ints)."""
    pk = dict(pk, **{field: "@@"})
    return json.dumps(pk).replace('"@@"', raw_json)


HOSTILE = [
    ("rssi", "9" * 400),  # OverflowError in float() before the fix
    ("rssi", "-" + "9" * 400),
    ("lsnr", "9" * 400),
    ("freq", "8" * 400),
    ("rssi", "9" * 5000),  # past Python's int-from-text limit: json.loads itself raised
    ("tmst", "9" * 5000),
    ("freq", "1e400"),  # parses as inf
    ("rssi", '"-97"'),
    ("time", "[" * 50 + "]" * 50),
    ("rsig", '[{"rssic": ' + "9" * 400 + ', "lsnr": ' + "9" * 400 + "}]"),
    ("stat", "9" * 5000),
    ("size", "9" * 5000),
]


async def test_a_hostile_value_costs_no_other_frame_and_is_counted(gw):
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0)
    await srv.start()
    try:
        fwd = await forwarder(srv)
        frames = [light_frame(node_id=0x100 + i, counter=1) for i in range(len(HOSTILE) + 2)]
        texts = [json.dumps(rxpk(frames[0]))]
        texts += [with_raw(rxpk(raw), f, v) for raw, (f, v) in zip(frames[1:], HOSTILE, strict=False)]
        texts.append(json.dumps(rxpk(frames[-1])))
        fwd.send(push_text(texts))
        assert (await fwd.recv())[3] == semtech.PUSH_ACK
        # every frame arrives: the hostile value is dropped, not the frame
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == len(frames))
        assert sorted(r.raw for _, r in gw.seen.uplinks) == sorted(frames)
        assert srv.counts["internal_error"] == 0 and srv.counts["malformed_datagrams"] == 0
        assert gw.rejected("udp").get("internal_error", 0) == 0
        assert srv.counts["rxpk_bad_field"] >= len(HOSTILE) - 2  # `stat`/`size` out of range count too
        hostile_rssi = [r for _, r in gw.seen.uplinks if r.raw == frames[1]][0]
        assert hostile_rssi.rssi is None and hostile_rssi.snr == 7.5
    finally:
        await srv.stop()


async def test_an_unexpected_failure_on_one_rxpk_is_counted_and_the_others_pass(gw, monkeypatch):
    """The last line of defence: a bug hit by one rxpk costs that rxpk only, counted as malformed."""
    srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0)
    await srv.start()
    real = semtech._parse_time

    def parse_time(v):
        if v == "boom":
            raise RuntimeError("a bug")
        return real(v)

    monkeypatch.setattr(semtech, "_parse_time", parse_time)
    try:
        fwd = await forwarder(srv)
        a, b, c = (light_frame(node_id=0x200 + i) for i in range(3))
        await fwd.push([rxpk(a), rxpk(b, time="boom"), rxpk(c)])
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 2)
        await gw.wait(lambda: gw.rejected("udp").get("malformed") == 1)
        assert [r.raw for _, r in gw.seen.uplinks] == [a, c]
        assert srv.counts["internal_error"] == 0 and srv.counts["rxpk_failed"] == 1
    finally:
        await srv.stop()


# -- fuzz: hostile structure inside a PUSH_DATA that also carries one valid frame ----------

huge_ints = st.integers(min_value=300, max_value=6000).map(lambda n: "9" * n)
hostile_values = st.one_of(
    huge_ints,
    huge_ints.map(lambda s: "-" + s),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "null", "true", "{}", "[]", '""']),
    # within the parser's nesting limit; deeper costs the datagram: see the test after this one
    st.integers(min_value=1, max_value=400).map(lambda d: "[" * d + "]" * d),
    st.integers(min_value=1, max_value=400).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.text(max_size=20).map(json.dumps),
)
fields = st.sampled_from(
    ["rssi", "lsnr", "freq", "tmst", "time", "datr", "codr", "stat", "size", "rsig", "data", "chan", "x"]
)
hostile_rxpk = st.lists(st.tuples(fields, hostile_values), min_size=1, max_size=4)


def hostile_text(raw: bytes, changes: list[tuple[str, str]], duplicate: bool) -> str:
    text = json.dumps(rxpk(raw))
    for f, v in changes:  # appended: a field given twice is a duplicate key, the last one wins
        text = text[:-1] + f', "{f}": {v}' + "}"
    if duplicate:
        text = text[:-1] + ', "rssi": -1, "rssi": "x"}'
    return text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=hostile_rxpk, duplicate=st.booleans(), where=st.integers(0, 2))
def test_fuzz_hostile_structure_never_costs_the_valid_frame(live_server, changes, duplicate, where):  # noqa: F811
    loop, srv, gw, sock = live_server
    n = srv.counts["datagrams"]
    valid = light_frame(node_id=0x300000 + n, counter=1)
    hostile = hostile_text(light_frame(node_id=0x400000 + n, counter=1), changes, duplicate)
    texts = [hostile, hostile]
    texts.insert(where, json.dumps(rxpk(valid)))
    datagram = push_text(texts)
    if len(datagram) > 65_000:
        return
    sock.send(datagram)

    async def processed():
        await wait_for(lambda: srv.counts["datagrams"] != n, 2, interval=0.001)
        await gw.seen.wait(lambda: any(r.raw == valid for r in gw.seen.receptions), 2)

    loop.run_until_complete(processed())
    assert srv.counts["internal_error"] == 0 and srv.ingestor.submit_errors == 0
    assert gw.rejected("udp").get("internal_error", 0) == 0


def test_deeper_than_the_parser_is_a_malformed_datagram_not_a_crash(live_server):  # noqa: F811
    """A PUSH_DATA whose JSON cannot be parsed at all (here: deeper than the parser recurses) has no
    frames to save: it is counted as one malformed datagram (the documented limit)."""
    loop, srv, gw, sock = live_server
    before = srv.counts["malformed_datagrams"]
    sock.send(push_text([json.dumps(rxpk(light_frame(node_id=0x500))), "[" * 30_000 + "]" * 30_000]))
    loop.run_until_complete(wait_for(lambda: srv.counts["malformed_datagrams"] == before + 1, 2))
    assert srv.counts["internal_error"] == 0


def test_stat_reports_are_bounded(live_server):  # noqa: F811
    """A `stat` object is kept for /forwarders: only small scalar values, so no hostile value is served back."""
    loop, srv, gw, sock = live_server
    stat = '{"rxnb": 2, "huge": ' + "9" * 5000 + ', "deep": [[[1]]], "time": "2026-12-07 12:00:00 GMT"}'
    eui = bytes.fromhex("aa555a00000005ee")
    sock.send(struct.pack(">BHB", 2, 9, semtech.PUSH_DATA) + eui + ('{"stat": ' + stat + "}").encode())

    def status():
        return [f for f in srv.forwarder_status() if f["eui"] == eui.hex() and f["stat"]]

    status = loop.run_until_complete(wait_for(status, 2))[0]
    assert status["stat"] == {"rxnb": 2, "time": "2026-12-07 12:00:00 GMT"}
    json.dumps(status)  # servable
