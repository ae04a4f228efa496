"""Issue 15, Deliver 8: the Semtech socket's receive buffer is configurable, and the kernel's drop
count for that socket (Linux: the `drops` column of /proc/net/udp for its inode) is in /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys

import pytest
from gateway_helpers import registry

from gateway.api import Api
from gateway.config import ConfigError, parse_config
from gateway.downlinks import Downlinks
from gateway.transports import semtech
from tests.test_transport_semtech import EUI, rxpk
from tests.transport_helpers import Gateway, light_frame
from tests.waiting import wait_for

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/net/udp is Linux's")


def effective(srv: semtech.SemtechServer) -> int:
    return srv.stats()["rcvbuf_bytes"]


async def test_the_receive_buffer_is_what_the_config_asks(tmp_path):
    gw = await Gateway.open(tmp_path / "gw.db")
    sizes = {}
    try:
        for want in (32 * 1024, 96 * 1024):  # below any rmem_max: what the kernel grants (Linux: twice)
            srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, rcvbuf=want)
            await srv.start()
            sock = socket.socket(fileno=srv.socket_fileno())
            try:
                sizes[want] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            finally:
                sock.detach()
            assert effective(srv) == sizes[want] >= want
            await srv.stop()
    finally:
        await gw.close()
    assert sizes[32 * 1024] < sizes[96 * 1024]
    assert semtech.DEFAULT_RCVBUF >= 4 * 1024 * 1024


def test_the_receive_buffer_is_a_config_option(tmp_path):
    base = {"api": {"enabled": False}, "semtech": {"enabled": True}}
    cfg = parse_config(base, tmp_path / "g.toml")
    assert cfg.semtech.rcvbuf_bytes == semtech.DEFAULT_RCVBUF
    cfg = parse_config({**base, "semtech": {"rcvbuf_bytes": 65536}}, tmp_path / "g.toml")
    assert cfg.semtech.rcvbuf_bytes == 65536
    with pytest.raises(ConfigError, match="rcvbuf_bytes"):
        parse_config({**base, "semtech": {"rcvbuf_bytes": -1}}, tmp_path / "g.toml")


@linux
def test_kernel_drops_are_counted_and_exported(tmp_path):
    """The loop does not run while a burst arrives: a small buffer overflows and the kernel drops."""
    loop = asyncio.new_event_loop()

    async def make():
        gw = await Gateway.open(tmp_path / "gw.db")
        srv = semtech.SemtechServer(gw.pipeline, "127.0.0.1", 0, rcvbuf=4096)
        await srv.start()
        return gw, srv

    gw, srv = loop.run_until_complete(make())
    try:
        assert srv.stats()["kernel_drops"] == 0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", srv.port))
        raw = light_frame(counter=1)
        datagram = struct.pack(">BHB", 2, 1, semtech.PUSH_DATA) + EUI + json.dumps({"rxpk": [rxpk(raw)]}).encode()
        for _ in range(500):
            sock.send(datagram)
        sock.close()
        drops = srv.stats()["kernel_drops"]
        assert drops > 0 and srv.stats()["socket_rx_queue_bytes"] > 0
        # what the kernel kept is still read: drops + datagrams seen = what was sent
        loop.run_until_complete(wait_for(lambda: srv.counts["datagrams"] + drops == 500, 5))

        async def metrics() -> str:
            reg = registry(tmp_path / "nodes.toml", [1])
            d = Downlinks(gw.store, reg)
            api = Api(registry=reg, store=gw.store, pipeline=gw.pipeline, downlinks=d, token="t" * 20, transports=[srv])
            return api.render_metrics()

        text = loop.run_until_complete(metrics())
        line = f'lumeau_transport_stat{{transport="semtech",instance="{srv.port}",counter="kernel_drops"}} {drops}'
        assert line in text.splitlines(), [x for x in text.splitlines() if "kernel" in x]
    finally:
        loop.run_until_complete(srv.stop())
        loop.run_until_complete(gw.close())
        loop.close()


def test_elsewhere_the_drop_count_is_absent_not_invented(monkeypatch):
    monkeypatch.setattr(semtech, "PROC_NET_UDP", ("/nonexistent/udp",))
    assert semtech.udp_socket_counters(12345) is None


@linux
def test_five_restarts_under_bursts_lose_no_datagram_the_kernel_queued(tmp_path):
    """Deliver 8: a burst that the kernel queued for the socket while the gateway was busy (here:
    stopped with SIGSTOP) and then told to stop is read and stored before the socket closes --
    five restarts in a row, every frame kept."""
    import os
    import signal
    import sqlite3

    from gateway_helpers import GatewayProcess, push_data, seal

    nodes = list(range(1, 9))
    registry(tmp_path / "nodes.toml", nodes).save()
    db = tmp_path / "gw.db"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "burst"
database = "{db}"
[api]
enabled = false
[upstream]
enabled = false
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
""")
    gw = GatewayProcess(cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    try:
        for run in range(5):
            started = gw.start()
            port = started["semtech_port"]
            os.kill(gw.proc.pid, signal.SIGSTOP)  # busy: the burst waits in the kernel's buffer
            for i in range(1, 51):
                counter = run * 100 + i
                sock.sendto(push_data([seal(n, counter) for n in nodes], token=counter), ("127.0.0.1", port))
                sent += len(nodes)
            os.kill(gw.proc.pid, signal.SIGTERM)  # the restart begins with the burst unread
            os.kill(gw.proc.pid, signal.SIGCONT)
            assert gw.proc.wait(30) == 0
            gw.kill()  # already gone: joins its log reader
    finally:
        sock.close()
        gw.kill()
    with sqlite3.connect(db) as c:
        stored = c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    assert stored == sent == 5 * 50 * len(nodes)
