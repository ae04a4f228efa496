"""A campaign survives a gateway restart: the real service (gateway/service.py `Gateway`, from a
TOML config: SQLite store, registry file, API, Semtech UDP transport), stopped in the middle of
the rest stage's delivery, then a real `lumeau gateway` process on the same files (its
LoRa delivery resumes the rest stage; nothing answers it), then the service again with a delivery: it
resumes, sends the rest again, and the campaign ends once their HELLOs and reports, as a packet
forwarder hands them over, show them healthy.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import aiohttp
from campaign_helpers import OLD_BUNDLE, StepDelivery, build_images, hello, light
from gateway_helpers import GatewayProcess, push_data, registry
from waiting import wait_for, wait_for_sync

from gateway.config import load_config
from gateway.registry import Group
from gateway.service import Gateway

TOKEN = "campaign-service-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Air:
    """A packet forwarder: sealed frames to the gateway's Semtech UDP port, counters kept per node."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.counters: dict[int, int] = {}
        self.token = 0

    def send(self, port: int, raw_of, node_id: int, *args) -> None:
        c = self.counters.get(node_id, 0)
        self.counters[node_id] = c + 1
        self.token += 1
        self.sock.sendto(push_data([raw_of(node_id, c, *args)], token=self.token), ("127.0.0.1", port))


def semtech_port(gw: Gateway) -> int:
    return next(t.port for t in gw.transports if type(t).__name__ == "SemtechServer")


async def campaign(http: aiohttp.ClientSession, cid: int) -> dict:
    async with http.get(f"/campaigns/{cid}") as r:
        assert r.status == 200
        return await r.json()


async def until_node(http, cid: int, node: int, state: str, poke=None, timeout: float = 15.0) -> dict:
    """Wait for a node's state; `poke()` (an uplink, say) between looks."""

    async def cond():
        doc = await campaign(http, cid)
        if doc["nodes"][f"{node:08x}"]["state"] == state:
            return doc
        if poke is not None:
            poke()
        await asyncio.sleep(0.1)
        return None

    return await wait_for(cond, timeout, what=f"node {node} {state}")


def write_config(tmp_path) -> None:
    reg = registry(tmp_path / "nodes.toml", [1, 2, 3])
    reg.put_group(Group(name="quai", kind="street", members=[1, 2, 3]), create=True)
    reg.save()
    (tmp_path / "gateway.toml").write_text(f"""
[gateway]
id = "campaign-gw"
[api]
port = 0
token = "{TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
enabled = false
[campaigns]
window_s = 60.0
""")


async def test_a_running_campaign_resumes_after_the_gateway_restarts(tmp_path):
    images = build_images(tmp_path / "img")
    bundle = images.manifest["bundle"]
    write_config(tmp_path)
    cfg = load_config(tmp_path / "gateway.toml")
    air = Air()

    # 1. the service runs the canary stage; the rest's delivery is under way when it stops
    first = StepDelivery(free=True)
    gw = Gateway(cfg, delivery=first)
    await gw.start()
    try:
        assert gw.api is not None
        port = semtech_port(gw)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}", headers=AUTH) as http:
            for n in (1, 2, 3):
                air.send(port, hello, n, OLD_BUNDLE)
            await wait_for(lambda: all(gw.store.node_state(n) for n in (1, 2, 3)), 10, what="the HELLOs stored")
            async with http.post("/campaigns?group=quai&canary=1&healthy_after_s=0.4", data=images.image) as r:
                doc = await r.json()
                assert r.status == 201, doc
            cid = doc["id"]
            await until_node(http, cid, 1, "verifying")
            first.free = False  # the rest's delivery will hang mid-way
            air.send(port, hello, 1, bundle, "9.9.0")
            await until_node(http, cid, 1, "installed")
            await until_node(http, cid, 1, "healthy", poke=lambda: air.send(port, light, 1))
            doc = await until_node(http, cid, 2, "receiving")
            assert doc["stage"] == "rest" and doc["nodes"]["00000003"]["fraction"] == 0.5
            assert [ids for _, ids in first.calls] == [[1], [2, 3]]
    finally:
        await gw.stop()
    assert first.cancelled == 1

    # 2. a real `lumeau gateway` process on the same files: it resumes the rest stage through
    # its own LoRa delivery (gateway/fuota.py), which no radio here answers
    proc = GatewayProcess(tmp_path / "gateway.toml")
    started = proc.start()
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{started['api_port']}/campaigns/{cid}", headers=AUTH)
        with urllib.request.urlopen(req, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["state"] == "running" and doc["stage"] == "rest"
        assert doc["nodes"]["00000001"]["state"] == "healthy"
        assert {doc["nodes"][k]["state"] for k in ("00000002", "00000003")} <= {"pending", "receiving"}
        wait_for_sync(lambda: proc.logged("campaign delivering"), 10)
    finally:
        assert proc.stop() == 0

    # 3. the service again, with a delivery: it resumes the rest and the nodes' HELLOs end it
    second = StepDelivery(free=True)
    gw = Gateway(cfg, delivery=second)
    await gw.start()
    try:
        assert gw.api is not None
        port = semtech_port(gw)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}", headers=AUTH) as http:
            await until_node(http, cid, 3, "verifying")
            assert [ids for _, ids in second.calls] == [[2, 3]]
            for n in (2, 3):
                air.send(port, hello, n, bundle, "9.9.0")
            for n in (2, 3):
                await until_node(http, cid, n, "healthy", poke=lambda n=n: air.send(port, light, n))
            doc = await wait_for(lambda: _state(http, cid, "done"), 10, what="the campaign done")
            assert doc["counts"]["healthy"] == 3
            async with http.get("/metrics") as r:
                text = await r.text()
            assert 'lumeau_campaigns{state="done"} 1' in text
            async with http.get("/nodes/00000002") as r:
                assert (await r.json())["release"]["state"] == "current"
    finally:
        await gw.stop()


async def _state(http, cid: int, state: str) -> dict | None:
    doc = await campaign(http, cid)
    return doc if doc["state"] == state else None


class Child(GatewayProcess):
    """tests/campaign_gateway_child.py: the service with a delivery, as a process we can kill -9."""

    def __init__(self, config, mode: str) -> None:
        super().__init__(config)
        self.mode = mode

    def start(self, timeout: float = 20.0) -> dict:
        import subprocess
        import sys
        import threading
        from pathlib import Path

        child = Path(__file__).with_name("campaign_gateway_child.py")
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, str(child), str(self.config), self.mode],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return wait_for_sync(lambda: next(iter(self.logged("gateway started")), None), timeout, "the child's start")


def get(port: int, path: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=AUTH)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def node_state(port: int, cid: int, node: int) -> str:
    return get(port, f"/campaigns/{cid}")["nodes"][f"{node:08x}"]["state"]


def test_a_campaign_survives_kill_9_mid_delivery(tmp_path):
    images = build_images(tmp_path / "img")
    bundle = images.manifest["bundle"]
    write_config(tmp_path)
    air = Air()
    gw = Child(tmp_path / "gateway.toml", "hold-after-first")
    try:
        started = gw.start()
        api, udp = started["api_port"], started["semtech_port"]
        for n in (1, 2, 3):
            air.send(udp, hello, n, OLD_BUNDLE)
        wait_for_sync(lambda: all(get(api, f"/nodes/{n:08x}")["release"] for n in (1, 2, 3)), 10, "HELLOs stored")
        req = urllib.request.Request(
            f"http://127.0.0.1:{api}/campaigns?group=quai&canary=1&healthy_after_s=0.4",
            data=images.image,
            headers=AUTH,
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            cid = json.loads(r.read())["id"]
        wait_for_sync(lambda: node_state(api, cid, 1) == "verifying", 10, "the canary holds the image")
        air.send(udp, hello, 1, bundle, "9.9.0")

        def healthy() -> bool:
            if node_state(api, cid, 1) == "healthy":
                return True
            air.send(udp, light, 1)
            return False

        wait_for_sync(healthy, 15, "the canary healthy", interval=0.2)
        wait_for_sync(lambda: node_state(api, cid, 3) == "receiving", 10, "the rest receiving")
        gw.proc.kill()  # kill -9 in the middle of the rest's delivery
        gw.proc.wait(10)
    finally:
        gw.kill()

    gw = Child(tmp_path / "gateway.toml", "free")
    try:
        started = gw.start()
        api, udp = started["api_port"], started["semtech_port"]
        doc = get(api, f"/campaigns/{cid}")
        assert doc["stage"] == "rest" and doc["nodes"]["00000001"]["state"] == "healthy"
        wait_for_sync(lambda: node_state(api, cid, 3) == "verifying", 10, "the rest sent again")
        for n in (2, 3):
            air.send(udp, hello, n, bundle, "9.9.0")

        def done() -> bool:
            if get(api, f"/campaigns/{cid}")["state"] == "done":
                return True
            for n in (2, 3):
                air.send(udp, light, n)
            return False

        wait_for_sync(done, 15, "the campaign done", interval=0.2)
        assert gw.stop() == 0
    finally:
        gw.kill()
