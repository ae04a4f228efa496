"""Firmware update campaigns (gateway/campaigns.py) through the real API, pipeline and store.

Real signed images (tests/campaign_helpers.py); HELLOs and reports sealed with each node's key
and ingested as a transport hands them over, with their receive time (a node's trial runs
minutes: the uplink that shows it healthy is dated after it). The delivery is the in-test
StepDelivery: it reports receiving/verifying/failed, never installed, healthy or rolled back.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from campaign_helpers import OLD_BUNDLE, StepDelivery, build_images, hello, light
from gateway_helpers import reception, registry
from waiting import wait_for

from gateway.api import Api
from gateway.campaigns import Campaigns
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import Group, NodeEntry, Registry
from gateway.service import Observers
from gateway.store import Store

TOKEN = "a-campaign-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAMPS = [1, 2, 3, 4]
PARK = 5


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return build_images(tmp_path_factory.mktemp("campaign-images"))


class Rig:
    """Store, registry, pipeline, campaigns and API as gateway/service.py wires them."""

    def __init__(self, tmp_path, delivery, **kw) -> None:
        self.tmp_path, self.delivery, self.kw = tmp_path, delivery, kw
        self.counters: dict[int, int] = {}

    async def __aenter__(self) -> Rig:
        self.store = await Store.open(self.tmp_path / "gw.db")
        path = self.tmp_path / "nodes.toml"
        if path.exists():
            self.reg = Registry.load(path)
        else:
            self.reg = registry(path, LAMPS)
            self.reg.upsert(NodeEntry(node_id=PARK, kind="irrigation", root_key=bytes(range(16))))
            self.reg.put_group(Group(name="quai", kind="street", members=list(LAMPS)), create=True)
            self.reg.put_group(Group(name="mixte", kind="custom", members=[1, PARK]), create=True)
            self.reg.save()
        self.dl = Downlinks(self.store, self.reg)
        await self.dl.start()
        self.campaigns = Campaigns(self.store, self.reg, self.delivery, **self.kw)
        await self.campaigns.load()
        self.pipe = Pipeline(self.reg, self.store, downlinks=Observers(self.dl, self.campaigns))
        self.api = Api(
            registry=self.reg,
            store=self.store,
            pipeline=self.pipe,
            downlinks=self.dl,
            token=TOKEN,
            port=0,
            campaigns=self.campaigns,
        )
        await self.api.start()
        self.campaigns.start()
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.api.port}", headers=AUTH)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.campaigns.close()
        await self.api.stop()
        await self.dl.close()
        await self.store.close()

    async def send(self, raw_of, node_id: int, *args, at: float | None = None) -> None:
        c = self.counters.get(node_id, 0)
        self.counters[node_id] = c + 1
        assert await self.pipe.ingest(reception(raw_of(node_id, c, *args), rx_time=at)) == "accepted"

    async def start(self, image: bytes, query: str, status: int = 201) -> dict:
        async with self.http.post(f"/campaigns?{query}", data=image) as r:
            doc = await r.json()
            assert r.status == status, doc
            return doc

    async def campaign(self, cid: int) -> dict:
        async with self.http.get(f"/campaigns/{cid}") as r:
            assert r.status == 200
            return await r.json()

    async def act(self, cid: int, action: str, status: int = 200) -> dict:
        async with self.http.post(f"/campaigns/{cid}/{action}") as r:
            doc = await r.json()
            assert r.status == status, doc
            return doc

    async def wait_node(self, cid: int, node: int, state: str, timeout: float = 10.0) -> dict:
        async def cond():
            doc = await self.campaign(cid)
            return doc if doc["nodes"][f"{node:08x}"]["state"] == state else None

        return await wait_for(cond, timeout, what=f"node {node} {state}")

    async def wait_state(self, cid: int, state: str, timeout: float = 10.0) -> dict:
        async def cond():
            doc = await self.campaign(cid)
            return doc if doc["state"] == state else None

        return await wait_for(cond, timeout, what=f"campaign {state}")

    async def metrics(self) -> str:
        async with self.http.get("/metrics") as r:
            return await r.text()

    async def release_of(self, node: int) -> dict:
        async with self.http.get(f"/nodes/{node:08x}") as r:
            return (await r.json())["release"]


async def on_old_release(rig: Rig) -> None:
    for n in LAMPS:
        await rig.send(hello, n, OLD_BUNDLE)


async def install(rig: Rig, node: int, bundle: str, healthy_after: float = 150.0) -> None:
    """The node boots the new release (HELLO), then reports after its trial (healthy)."""
    t = time.time()
    await rig.send(hello, node, bundle, "9.9.0", at=t)
    await rig.send(light, node, at=t + healthy_after + 1)


async def test_canaries_first_then_the_rest_until_every_node_is_healthy(tmp_path, images):
    delivery = StepDelivery(free=True)
    bundle = images.manifest["bundle"]
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        doc = await rig.start(images.image, "group=quai&canary=1")
        cid = doc["id"]
        assert doc["state"] == "running" and doc["stage"] == "canary" and doc["canary"] == 1
        assert doc["release"]["version"] == "9.9.0" and doc["release"]["bundle"] == bundle
        assert {k: v["stage"] for k, v in doc["nodes"].items()} == {
            "00000001": "canary",
            "00000002": "rest",
            "00000003": "rest",
            "00000004": "rest",
        }
        await rig.wait_node(cid, 1, "verifying")
        assert delivery.calls == [(images.image, [1])]  # the canary alone
        assert (await rig.release_of(1))["state"] == "updating"  # it holds the image: expected of it
        assert (await rig.release_of(2))["expected"] is None  # the rest: not yet
        # an uplink before the HELLO from the new release changes nothing
        await rig.send(light, 1)
        assert (await rig.campaign(cid))["nodes"]["00000001"]["state"] == "verifying"
        t = time.time()
        await rig.send(hello, 1, bundle, "9.9.0", at=t)
        await rig.wait_node(cid, 1, "installed")
        await rig.send(light, 1, at=t + 60)  # too early: its trial runs 2 min
        assert (await rig.campaign(cid))["nodes"]["00000001"]["state"] == "installed"
        assert 'lumeau_campaign_nodes{state="installed"} 1' in await rig.metrics()
        await rig.send(light, 1, at=t + 151)
        doc = await rig.wait_node(cid, 2, "verifying")
        assert doc["stage"] == "rest" and doc["nodes"]["00000001"]["state"] == "healthy"
        assert delivery.calls[1] == (images.image, [2, 3, 4])
        for n in (2, 3, 4):
            await install(rig, n, bundle)
        doc = await rig.wait_state(cid, "done")
        assert doc["stage"] == "done" and doc["counts"]["healthy"] == 4
        for n in LAMPS:
            assert (await rig.release_of(n))["state"] == "current"
        text = await rig.metrics()
        assert 'lumeau_campaigns{state="done"} 1' in text and 'lumeau_campaigns{state="running"} 0' in text
        async with rig.http.get("/campaigns") as r:
            (summary,) = (await r.json())["campaigns"]
            assert summary["id"] == cid and summary["counts"]["healthy"] == 4 and "nodes" not in summary


async def test_a_canary_that_rolls_back_halts_the_campaign_and_the_rest_get_nothing(tmp_path, images):
    delivery = StepDelivery(free=True)
    bundle = images.manifest["bundle"]
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai&canary=0.5&window_s=600"))["id"]  # 2 of 4
        await rig.wait_node(cid, 2, "verifying")
        await install(rig, 1, bundle)  # the first canary is fine
        await rig.wait_node(cid, 1, "healthy")
        # the second boots the release, crashes on its trial boots and comes back on the old one
        await rig.send(hello, 2, bundle, "9.9.0")
        await rig.wait_node(cid, 2, "installed")
        await rig.send(hello, 2, OLD_BUNDLE)
        doc = await rig.wait_state(cid, "halted")
        assert doc["nodes"]["00000002"]["state"] == "rolled_back"
        assert "canary 00000002 rolled back" in doc["reason"] and OLD_BUNDLE[:6] in doc["reason"]
        assert [ids for _, ids in delivery.calls] == [[1, 2]]  # the rest were never sent it
        assert {doc["nodes"][f"{n:08x}"]["state"] for n in (3, 4)} == {"pending"}
        assert (await rig.release_of(2))["state"] == "rolled_back"
        assert (await rig.release_of(3))["expected"] is None
        text = await rig.metrics()
        assert 'lumeau_campaigns{state="halted"} 1' in text and "lumeau_release_rollbacks_total 1" in text
        await rig.act(cid, "resume", 409)  # halted is final
        # the nodes are free for the next campaign (a fixed release)
        await rig.start(images.image, "group=quai&canary=1")


class HangingDelivery:
    """Canary 1 holds the image (verifying) while the delivery still serves canary 2, and never returns."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.cancelled = 0

    async def deliver(self, image, node_ids, report) -> None:
        self.calls.append(list(node_ids))
        report(node_ids[0], "verifying", None)
        for n in node_ids[1:]:
            report(n, "receiving", 0.4)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_a_canary_rolling_back_mid_delivery_halts_at_once(tmp_path, images):
    """A node installs once its image is complete: the halt does not wait for the delivery to return."""
    delivery = HangingDelivery()
    bundle = images.manifest["bundle"]
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai&canary=0.5&window_s=600"))["id"]  # 2 of 4
        await rig.wait_node(cid, 1, "verifying")
        await rig.send(hello, 1, bundle, "9.9.0")
        await rig.wait_node(cid, 1, "installed")
        await rig.send(hello, 1, OLD_BUNDLE)
        doc = await rig.wait_state(cid, "halted")
        assert doc["reason"].startswith("canary 00000001 rolled back"), doc["reason"]
        assert delivery.cancelled == 1 and delivery.calls == [[1, 2]]
        assert {doc["nodes"][f"{n:08x}"]["state"] for n in (2, 3, 4)} == {"pending"}


async def test_a_canary_not_healthy_within_the_window_halts(tmp_path, images):
    async with Rig(tmp_path, StepDelivery(free=True)) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai&window_s=0.3"))["id"]
        doc = await rig.wait_state(cid, "halted")
        assert "canaries not healthy within 0.3 s: 00000001" in doc["reason"]
        # never heard from the new release: its expectation is put back as it was
        assert (await rig.release_of(1))["expected"] is not None  # it held the image (verifying)


async def test_failed_delivery_to_a_canary_halts_and_undoes_its_expectation(tmp_path, images):
    async with Rig(tmp_path, StepDelivery(fail=[1], free=True)) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai"))["id"]
        doc = await rig.wait_state(cid, "halted")
        assert doc["nodes"]["00000001"]["state"] == "failed" and "canary 00000001 failed" in doc["reason"]
        assert (await rig.release_of(1))["expected"] is None


async def test_pause_cancels_the_delivery_resume_sends_again_abort_ends_it(tmp_path, images):
    delivery = StepDelivery()
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai&canary=2"))["id"]
        doc = await rig.wait_node(cid, 1, "receiving")
        assert doc["nodes"]["00000001"]["fraction"] == 0.5
        doc = await rig.act(cid, "pause")
        assert doc["state"] == "paused" and delivery.cancelled == 1
        assert {doc["nodes"][f"{n:08x}"]["state"] for n in (1, 2)} == {"pending"}
        await rig.act(cid, "pause", 409)
        assert 'lumeau_campaigns{state="paused"} 1' in await rig.metrics()
        # a second campaign on the same nodes is refused while this one is paused
        body = await rig.start(images.image, "group=quai", 409)
        assert f"campaign {cid}" in body["error"]
        await rig.act(cid, "resume")
        await wait_for(lambda: len(delivery.calls) == 2, 5, what="a second delivery")
        assert delivery.calls[1][1] == [1, 2]
        await rig.wait_node(cid, 2, "receiving")
        doc = await rig.act(cid, "abort")
        assert doc["state"] == "aborted" and delivery.cancelled == 2
        await rig.act(cid, "abort", 409)
        await rig.act(99, "pause", 404)
        assert (await rig.release_of(1))["expected"] is None


async def test_refusals_say_why_and_start_nothing(tmp_path, images):
    async with Rig(tmp_path, StepDelivery(free=True), release_key=images.public_key) as rig:
        await on_old_release(rig)
        cases = [
            (images.other_key_image, "group=quai", 400, "bad signature"),
            (images.image[:-1], "group=quai", 400, "its manifest says"),
            (b"not an image at all", "group=quai", 400, "bad magic"),
            (images.image, "group=mixte", 400, "00000005 is irrigation"),
            (images.irrigation, "group=quai", 400, "00000001 is lighting"),
            (images.image, "group=nowhere", 404, "no such group"),
            (images.image, "", 400, "group: required"),
            (images.image, "group=quai&canary=0", 400, "canary"),
            (images.image, "group=quai&canary=1.5", 400, "canary"),
            (images.image, "group=quai&canary=x", 400, "canary"),
            (images.image, "group=quai&window_s=-1", 400, "window_s"),
            (images.image, "group=quai&colour=red", 400, "colour: unknown parameter"),
        ]
        for image, query, status, why in cases:
            doc = await rig.start(image, query, status)
            assert why in doc["error"], (query, doc)
        # a node that runs a version the release does not replace
        await rig.send(hello, 3, OLD_BUNDLE, "0.0.7")
        doc = await rig.start(images.image, "group=quai", 400)
        assert "00000003 runs 0.0.7, which release 9.9.0 does not replace" in doc["error"]
        async with rig.http.get("/campaigns") as r:
            assert (await r.json())["campaigns"] == []
        async with aiohttp.ClientSession(f"http://127.0.0.1:{rig.api.port}") as anon:
            async with anon.post("/campaigns?group=quai", data=images.image) as r:
                assert r.status == 401
            async with anon.get("/campaigns") as r:
                assert r.status == 401


async def test_without_a_delivery_a_campaign_is_refused(tmp_path, images):
    async with Rig(tmp_path, None) as rig:
        doc = await rig.start(images.image, "group=quai", 409)
        assert "no release delivery" in doc["error"]


async def test_a_node_already_on_the_release_is_installed_without_a_delivery(tmp_path, images):
    delivery = StepDelivery(free=True)
    bundle = images.manifest["bundle"]
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        await rig.send(hello, 1, bundle, "9.9.0")  # flashed by wire meanwhile
        cid = (await rig.start(images.image, "group=quai"))["id"]
        doc = await rig.campaign(cid)
        assert doc["nodes"]["00000001"]["state"] == "installed"
        await rig.send(light, 1, at=time.time() + 200)
        await rig.wait_node(cid, 2, "verifying")
        assert [ids for _, ids in delivery.calls] == [[2, 3, 4]]  # the canary was not sent it again


async def test_rest_nodes_not_healthy_within_the_window_fail_and_the_campaign_ends(tmp_path, images):
    delivery = StepDelivery(free=True)
    bundle = images.manifest["bundle"]
    async with Rig(tmp_path, delivery) as rig:
        await on_old_release(rig)
        cid = (await rig.start(images.image, "group=quai&window_s=1.5"))["id"]
        await rig.wait_node(cid, 1, "verifying")
        await install(rig, 1, bundle)
        await rig.wait_node(cid, 2, "verifying")
        await install(rig, 2, bundle)  # healthy
        await rig.send(hello, 3, bundle, "9.9.0")  # installed, never reports again
        await rig.send(hello, 4, bundle, "9.9.0")
        await rig.send(hello, 4, OLD_BUNDLE)  # rolled back: the rest stage goes on
        doc = await rig.wait_state(cid, "done")
        states = {k: v["state"] for k, v in doc["nodes"].items()}
        assert states == {"00000001": "healthy", "00000002": "healthy", "00000003": "failed", "00000004": "rolled_back"}
        assert "not healthy within 1.5 s (installed)" in doc["nodes"]["00000003"]["reason"]
        assert doc["reason"] == "done with failures: 1 rolled back, 1 failed of 4" and doc["counts"]["failed"] == 1
