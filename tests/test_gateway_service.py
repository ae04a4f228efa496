"""`lumeau gateway` as a real process: example config, config errors, UDP in, API out, graceful signals."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
from gateway_helpers import GatewayProcess, push_data, registry, seal
from waiting import wait_for_sync

from protocol import messages as m

TOKEN = "service-test-token-0123456789"


def lumeau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=60)


def test_example_config_is_printed_and_loads(tmp_path):
    r = lumeau("gateway", "--example-config")
    assert r.returncode == 0 and "[upstream]" in r.stdout
    (tmp_path / "g.toml").write_text(r.stdout)
    from gateway.config import load_config

    assert load_config(tmp_path / "g.toml").api.token is not None


def test_config_errors_exit_2_naming_file_and_key(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text(f'[api]\ntoken = "{TOKEN}"\nport = 99999\n')
    r = lumeau("gateway", "--config", str(p))
    assert r.returncode == 2 and str(p) in r.stderr and "api.port" in r.stderr
    assert lumeau("gateway").returncode == 2


def write_config(tmp_path, *, upstream: str | None = None, extra: str = "") -> object:
    p = tmp_path / "gateway.toml"
    up = (
        f'url = "{upstream}"\nbatch_max_age_s = 0.2\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\n'
        if upstream
        else "enabled = false\n"
    )
    p.write_text(f"""
[gateway]
id = "test-gw"
[log]
level = "info"
[api]
port = 0
token = "{TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
{up}
{extra}
""")
    return p


def api_get(port: int, path: str, token: str | None = TOKEN):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"} if token else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(cond, timeout=10.0):
    return wait_for_sync(cond, timeout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_frames_over_udp_are_stored_and_shown_then_a_signal_stops_it_cleanly(tmp_path, sig):
    registry(tmp_path / "nodes.toml", [1, 2]).save()
    gw = GatewayProcess(write_config(tmp_path))
    try:
        started = gw.start()
        assert started["gateway"] == "test-gw" and started["nodes"] == 2
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        frames = [seal(1, c) for c in range(1, 11)] + [seal(2, 1, m.IRRIGATION)]
        udp.sendto(push_data(frames), ("127.0.0.1", started["semtech_port"]))
        assert udp.recv(64)[3] == 0x01  # PUSH_ACK
        bad = bytearray(seal(2, 2))
        bad[-1] ^= 1
        udp.sendto(push_data([bytes(bad)], token=2), ("127.0.0.1", started["semtech_port"]))
        api = started["api_port"]
        assert api_get(api, "/healthz", token=None)[0] == 200
        assert api_get(api, "/nodes", token="wrong-token-0123456789")[0] == 401

        def node_seen():
            status, body = api_get(api, "/nodes/00000001")
            doc = json.loads(body)
            return (
                doc
                if doc.get("last_seen") and doc["readings"]["light"]["fields"]["energy"]["value"] == 123466
                else None
            )

        node = wait_for(node_seen)
        assert node["gateway"] == "udp:0102030405060708" and node["rssi"] == -80.0

        def bad_mic_counted():
            text = api_get(api, "/metrics")[1]
            return (
                'lumeau_frames_rejected_total{reason="bad_mic",transport="udp"} 1' in text
                and "\nlumeau_frames_accepted_total 11\n" in text
                and 'lumeau_transport_stat{transport="semtech"' in text
            )

        wait_for(bad_mic_counted)
        assert gw.stop(sig) == 0
        assert gw.logged(f"{sig.name} received: shutting down") and gw.logged("gateway stopped")
    finally:
        gw.kill()
    rows = sqlite3.connect(tmp_path / "gateway.db").execute("SELECT node_id, counter FROM records").fetchall()
    assert sorted(rows) == [(1, c) for c in range(1, 11)] + [(2, 1)]
    text = json.dumps(gw.lines)
    assert TOKEN not in text and (tmp_path / "nodes.toml").read_text().split('root_key = "')[1][:32] not in text


def test_a_broken_registry_stops_startup_with_a_clear_message(tmp_path):
    (tmp_path / "nodes.toml").write_text("version = 1\n")
    (tmp_path / "nodes.toml").chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "lumeau", "gateway", "--config", str(write_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "chmod 600" in r.stderr


def test_sighup_reloads_the_registry(tmp_path):
    registry(tmp_path / "nodes.toml", [1]).save()
    gw = GatewayProcess(write_config(tmp_path))
    try:
        started = gw.start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        port = started["semtech_port"]

        def metric(name: str) -> str:
            text = api_get(started["api_port"], "/metrics")[1]
            return next((ln for ln in text.splitlines() if ln.startswith(name)), "")

        udp.sendto(push_data([seal(7, 1)]), ("127.0.0.1", port))
        wait_for(lambda: metric('lumeau_frames_rejected_total{reason="unknown_node",transport="udp"}').endswith(" 1"))
        (tmp_path / "nodes.toml").write_text("not = [toml")  # a broken file: the running registry stays
        (tmp_path / "nodes.toml").chmod(0o600)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("registry not reloaded" in d.get("msg", "") for d in gw.lines))
        registry(tmp_path / "nodes.toml", [1, 7]).save()  # provisioning added node 7
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gw.logged("registry reloaded"))
        udp.sendto(push_data([seal(7, 2)], token=3), ("127.0.0.1", port))
        wait_for(lambda: metric("lumeau_frames_accepted_total") == "lumeau_frames_accepted_total 1")
        assert gw.stop() == 0
    finally:
        gw.kill()


def test_the_registry_is_reloaded_when_its_file_changes_without_a_signal(tmp_path):
    """Issue 17: a node provisioned offline while the gateway runs is known without SIGHUP."""
    registry(tmp_path / "nodes.toml", [1]).save()
    gw = GatewayProcess(write_config(tmp_path))
    try:
        started = gw.start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        port = started["semtech_port"]

        def metric(name: str) -> str:
            text = api_get(started["api_port"], "/metrics")[1]
            return next((ln for ln in text.splitlines() if ln.startswith(name)), "")

        registry(tmp_path / "nodes.toml", [1, 7]).save()  # `lumeau node provision --registry` offline
        wait_for(lambda: gw.logged("registry reloaded"))
        udp.sendto(push_data([seal(7, 1)]), ("127.0.0.1", port))
        wait_for(lambda: metric("lumeau_frames_accepted_total") == "lumeau_frames_accepted_total 1")
        # A file that does not load is refused, once, and the running registry kept.
        (tmp_path / "nodes.toml").write_text("not = [toml")
        wait_for(lambda: any("registry not reloaded" in d.get("msg", "") for d in gw.lines))
        udp.sendto(push_data([seal(7, 2)], token=3), ("127.0.0.1", port))
        wait_for(lambda: metric("lumeau_frames_accepted_total") == "lumeau_frames_accepted_total 2")
        assert sum("registry not reloaded" in d.get("msg", "") for d in gw.lines) == 1
        assert len(gw.logged("registry reloaded")) == 1
        assert gw.stop() == 0
    finally:
        gw.kill()


@pytest.mark.parametrize("version, expected", [(2, "lumeau.records/2"), (3, "lumeau.records/3")])
async def test_upstream_native_version_from_the_config_reaches_the_wire(tmp_path, version, expected):
    # [upstream] native_version picks what a receiver gets: a real HTTP receiver on 127.0.0.1 reads it.
    from aiohttp import web
    from gateway_helpers import reception

    from gateway.config import load_config
    from gateway.service import Gateway

    got: asyncio.Queue = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        got.put_nowait(json.loads(await request.read()))  # aiohttp has undone the gzip
        return web.json_response({"accepted": 1})

    app = web.Application()
    app.router.add_post("/v1/records", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry(tmp_path / "nodes.toml", [7]).save()
    cfg = load_config(
        write_config(tmp_path, upstream=f"http://127.0.0.1:{port}/v1/records", extra=f"native_version = {version}\n")
    )
    svc = Gateway(cfg)
    await svc.start()
    try:
        assert await svc.pipeline.ingest(reception(seal(7, 1))) == "accepted"
        doc = await asyncio.wait_for(got.get(), 10)
        assert doc["format"] == expected
        # batch_max_records = 0 (the default): the format's size, larger for the columnar /3
        assert svc.upstream.batch_size == (2000 if version == 3 else 500)
    finally:
        await svc.stop()
        await runner.cleanup()
