"""Issue 15, Deliver 2 (the Semtech UDP half): each gateway EUI is bound to a source address --
configured, or the first one it is heard from (trust on first use) -- and PULL_DATA / PUSH_DATA
from any other source are refused, counted and raise an alarm (a log line and a counter).

Before: any source that claimed a known EUI in PULL_DATA took over that gateway's downlinks."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from gateway.config import ConfigError, parse_config
from gateway.transports import semtech
from tests.test_transport_semtech import EUI, FakeForwarder, rxpk
from tests.transport_helpers import Gateway, light_frame
from tests.waiting import wait_for

REAL, SPOOF = "127.0.0.1", "127.0.0.2"  # two source addresses on the loopback


async def forwarder_from(srv, host: str) -> FakeForwarder:
    loop = asyncio.get_running_loop()
    _, fwd = await loop.create_datagram_endpoint(
        lambda: FakeForwarder(), local_addr=(host, 0), remote_addr=("127.0.0.1", srv.port)
    )
    return fwd


def pull(fwd: FakeForwarder, eui: bytes = EUI) -> None:
    fwd.send(struct.pack(">BHB", 2, fwd.token(), semtech.PULL_DATA) + eui)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def alarms():
    logger = logging.getLogger("lumeau.gateway.transports.semtech")
    h, level = Lines(), logger.level
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    yield h
    logger.removeHandler(h)
    logger.setLevel(level)


@pytest.fixture
async def gw(tmp_path):
    g = await Gateway.open(tmp_path / "gw.db")
    yield g
    await g.close()


async def start(gw, **kw) -> semtech.SemtechServer:
    srv = semtech.SemtechServer(gw.pipeline, "0.0.0.0", 0, **kw)
    await srv.start()
    return srv


async def test_trust_on_first_use_keeps_the_route_from_a_spoofer(gw, alarms):
    srv = await start(gw)  # the default: trust on first use
    try:
        real, spoof = await forwarder_from(srv, REAL), await forwarder_from(srv, SPOOF)
        await real.pull()
        route = srv.route(EUI.hex()).pull_addr
        pull(spoof)
        await wait_for(lambda: srv.counts["source_conflicts"] == 1)
        assert srv.route(EUI.hex()).pull_addr == route  # the downlinks still go to the real gateway
        assert srv.counts["pull_data_refused"] == 1
        # a spoofed PUSH_DATA is refused too: not acked, its frames never reach the pipeline
        spoof.send(struct.pack(">BHB", 2, 5, semtech.PUSH_DATA) + EUI + b'{"rxpk": []}')
        await wait_for(lambda: srv.counts["push_data_refused"] == 1)
        assert spoof.inbox.empty()
        # the alarm: an error line naming the EUI and both sources, and the counter in /metrics
        lines = [r for r in alarms.records if r.levelno >= logging.ERROR and "another source" in r.getMessage()]
        assert lines and lines[0].eui == EUI.hex() and lines[0].bound == REAL and lines[0].source == SPOOF
        assert srv.stats()["source_conflicts"] == 2
        # the real gateway is unaffected
        await real.push([rxpk(light_frame(counter=3))])
        await gw.seen.wait(lambda: len(gw.seen.uplinks) == 1)
    finally:
        await srv.stop()


async def test_configured_sources_bind_eui_to_address_and_refuse_unknown_euis(gw):
    other = bytes.fromhex("aa555a0000000999")
    srv = await start(gw, source_binding="configured", sources={EUI.hex(): SPOOF})
    try:
        a, b = await forwarder_from(srv, REAL), await forwarder_from(srv, SPOOF)
        pull(a)  # the EUI is configured for the other address
        await wait_for(lambda: srv.counts["source_conflicts"] == 1)
        assert srv.route(EUI.hex()) is None and a.inbox.empty()
        await b.pull()  # from its configured address: accepted
        assert srv.route(EUI.hex()) is not None
        pull(b, other)  # an EUI nobody configured: refused, counted, not a conflict
        await wait_for(lambda: srv.counts["source_unknown"] == 1)
        assert srv.route(other.hex()) is None and srv.counts["source_conflicts"] == 1
    finally:
        await srv.stop()


async def test_a_configured_source_wins_over_first_use(gw):
    srv = await start(gw, source_binding="tofu", sources={EUI.hex(): SPOOF})
    try:
        a = await forwarder_from(srv, REAL)
        pull(a)
        await wait_for(lambda: srv.counts["source_conflicts"] == 1)
        assert srv.route(EUI.hex()) is None
    finally:
        await srv.stop()


async def test_binding_off_is_the_old_behaviour(gw):
    srv = await start(gw, source_binding="off")
    try:
        real, spoof = await forwarder_from(srv, REAL), await forwarder_from(srv, SPOOF)
        await real.pull()
        await spoof.pull()
        assert srv.route(EUI.hex()).pull_addr[0] == SPOOF and srv.counts["source_conflicts"] == 0
    finally:
        await srv.stop()


async def test_a_flood_of_new_euis_cannot_evict_a_binding(gw, monkeypatch):
    monkeypatch.setattr(semtech, "MAX_BINDINGS", 8)
    srv = await start(gw)
    try:
        real, spoof = await forwarder_from(srv, REAL), await forwarder_from(srv, SPOOF)
        await real.pull()
        for i in range(50):
            pull(spoof, i.to_bytes(8, "big"))
        await wait_for(lambda: srv.counts["pull_data"] + srv.counts["source_table_full"] >= 51)
        assert srv.counts["source_table_full"] == 50 - 7
        pull(spoof)
        await wait_for(lambda: srv.counts["source_conflicts"] == 1)
        assert srv.route(EUI.hex()).pull_addr[0] == REAL
    finally:
        await srv.stop()


def test_the_binding_is_configured(tmp_path):
    base = {"api": {"enabled": False}}
    cfg = parse_config({**base, "semtech": {}}, tmp_path / "g.toml")
    assert cfg.semtech.source_binding == "tofu" and cfg.semtech.sources == ""
    cfg = parse_config(
        {
            **base,
            "semtech": {"source_binding": "configured", "sources": "AA555A0000000101=192.0.2.10, aa555a0000000102=::1"},
        },
        tmp_path / "g.toml",
    )
    assert semtech.parse_sources(cfg.semtech.sources) == {"aa555a0000000101": "192.0.2.10", "aa555a0000000102": "::1"}
    for bad in ("aa555a0000000101", "zz=192.0.2.1", "aa555a0000000101=not-an-ip", "a=1.2.3.4, a=1.2.3.5"):
        with pytest.raises(ConfigError, match="sources"):
            parse_config({**base, "semtech": {"sources": bad}}, tmp_path / "g.toml")
    with pytest.raises(ConfigError, match="source_binding"):
        parse_config({**base, "semtech": {"source_binding": "maybe"}}, tmp_path / "g.toml")
