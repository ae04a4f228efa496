"""Expected releases and rollbacks (gateway/releases.py) through the real API, pipeline and store.

HELLO frames are sealed and ingested as a transport would hand them over; the store is a
SQLite file that a second gateway opens after the first closed (a restart).
"""

from __future__ import annotations

import json
import logging
import urllib.parse

import aiohttp
import pytest
from gateway_helpers import reception, registry, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening_api import Server

from gateway.api import Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import Group, Registry
from gateway.store import Store
from protocol import messages as m

TOKEN = "a-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OLD = "aa11bb" + "0" * 58
NEW = "cc22dd" + "1" * 58
NEW_RELEASE = {"version": "0.2.0", "bundle": NEW}


def hello(node_id: int, counter: int, bundle: str | None) -> bytes:
    body = {m.H_FIRMWARE: "0.1.0", m.H_KIND: m.KIND_LIGHTING, m.H_RESET: 1}
    if bundle is not None:
        body[m.H_BUNDLE] = bytes.fromhex(bundle[:6])
    return seal(node_id, counter, m.HELLO, body)


class Gateway:
    """Store, registry, pipeline and API as the service wires them, on files in tmp_path."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path

    async def __aenter__(self) -> Gateway:
        self.store = await Store.open(self.tmp_path / "gw.db")
        path = self.tmp_path / "nodes.toml"
        if path.exists():
            self.reg = Registry.load(path)
        else:
            self.reg = registry(path, [1, 2, 3])
            self.reg.put_group(Group(name="quai", kind="street", members=[2, 3]), create=True)
            self.reg.save()
        self.dl = Downlinks(self.store, self.reg)
        await self.dl.start()
        self.pipe = Pipeline(self.reg, self.store, downlinks=self.dl)
        self.api = Api(registry=self.reg, store=self.store, pipeline=self.pipe, downlinks=self.dl, token=TOKEN, port=0)
        await self.api.start()
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.api.port}", headers=AUTH)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.api.stop()
        await self.dl.close()
        await self.store.close()

    async def node(self, node_id: int) -> dict:
        async with self.http.get(f"/nodes/{node_id:08x}") as r:
            assert r.status == 200
            return await r.json()

    async def metrics(self) -> str:
        async with self.http.get("/metrics") as r:
            return await r.text()


async def test_installed_release_is_current_then_a_rollback_is_reported(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lumeau.gateway.store")
    async with Gateway(tmp_path) as gw:
        assert await gw.pipe.ingest(reception(hello(1, 0, OLD))) == "accepted"
        rel = (await gw.node(1))["release"]
        assert isinstance(rel.pop("hello_at"), float)  # the HELLO's time
        assert rel == {"running": "aa11bb", "expected": None, "state": None, "rollbacks": 0}
        async with gw.http.put("/nodes/00000001/release", json=NEW_RELEASE) as r:
            assert r.status == 200
            assert (await r.json())["release"]["state"] == "updating"  # still on the old one
        # the node reboots into the new release (on trial): current
        assert await gw.pipe.ingest(reception(hello(1, 1, NEW))) == "accepted"
        rel = (await gw.node(1))["release"]
        assert rel["state"] == "current" and rel["running"] == "cc22dd" and rel["expected"] == NEW_RELEASE
        assert 'lumeau_nodes_release{state="current"} 1' in await gw.metrics()
        assert "rolled back" not in caplog.text
        # it crashes on its trial boots and rolls itself back: HELLO from the old release
        assert await gw.pipe.ingest(reception(hello(1, 2, OLD))) == "accepted"
        rel = (await gw.node(1))["release"]
        assert rel["state"] == "rolled_back" and rel["running"] == "aa11bb" and rel["rollbacks"] == 1
        assert rel["rolled_back_at"] is not None
        text = await gw.metrics()
        assert "lumeau_release_rollbacks_total 1" in text
        assert 'lumeau_nodes_release{state="rolled_back"} 1' in text
        lines = [r for r in caplog.records if "rolled back" in r.getMessage()]
        assert len(lines) == 1 and lines[0].node == "00000001"
        assert "0.2.0" in lines[0].getMessage() and "aa11bb" in lines[0].getMessage()
        # another HELLO from the old release: the same rollback, not told again
        assert await gw.pipe.ingest(reception(hello(1, 3, OLD))) == "accepted"
        assert (await gw.node(1))["release"]["rollbacks"] == 1
        assert len([r for r in caplog.records if "rolled back" in r.getMessage()]) == 1
        assert "lumeau_release_rollbacks_total 1" in await gw.metrics()

    # a restart keeps what was seen (the rollback's state, not the since-start counter)
    async with Gateway(tmp_path) as gw:
        rel = (await gw.node(1))["release"]
        assert rel["state"] == "rolled_back" and rel["expected"] == NEW_RELEASE and rel["running"] == "aa11bb"
        assert 'lumeau_nodes_release{state="rolled_back"} 1' in await gw.metrics()
        # the technician installs a fixed release: expected again, current once it says HELLO
        fixed = {"version": "0.2.1", "bundle": "ee33ff" + "2" * 58}
        async with gw.http.put("/nodes/1/release", json=fixed) as r:
            assert (await r.json())["release"]["state"] == "updating"
        assert await gw.pipe.ingest(reception(hello(1, 4, fixed["bundle"]))) == "accepted"
        assert (await gw.node(1))["release"]["state"] == "current"
        async with gw.http.delete("/nodes/1/release") as r:
            assert r.status == 200 and (await r.json())["release"]["state"] is None


async def test_expected_release_survives_a_restart_before_the_node_is_heard(tmp_path):
    async with Gateway(tmp_path) as gw:
        async with gw.http.put("/groups/quai/release", json=NEW_RELEASE) as r:
            assert r.status == 200
            assert (await r.json())["nodes"] == {"00000002": "updating", "00000003": "updating"}
    async with Gateway(tmp_path) as gw:  # nothing flushed by time: written before the answer
        assert (await gw.node(2))["release"]["expected"] == NEW_RELEASE
        assert await gw.pipe.ingest(reception(hello(2, 0, None))) == "accepted"  # no A/B state at all
        rel = (await gw.node(2))["release"]
        assert rel["state"] == "rolled_back" and rel["running"] is None
        assert await gw.pipe.ingest(reception(hello(3, 0, NEW))) == "accepted"
        assert (await gw.node(3))["release"]["state"] == "current"
        text = await gw.metrics()
        assert 'lumeau_nodes_release{state="current"} 1' in text
        assert 'lumeau_nodes_release{state="rolled_back"} 1' in text


async def test_bad_release_bodies_are_refused_naming_the_key(tmp_path):
    async with Gateway(tmp_path) as gw:
        for body, why in [
            ({"version": "0.2.0"}, "bundle"),
            ({"version": "0.2.0", "bundle": NEW.upper()}, "bundle"),
            ({"version": "0.2.0", "bundle": NEW[:63]}, "bundle"),
            ({"version": "v2", "bundle": NEW}, "version"),
            ({"version": 2, "bundle": NEW}, "version"),
            ({**NEW_RELEASE, "x": 1}, "x"),
            ([NEW_RELEASE], "object"),
        ]:
            async with gw.http.put("/nodes/00000001/release", json=body) as r:
                assert r.status == 400 and why in (await r.json())["error"], body
        async with gw.http.put("/nodes/00000009/release", json=NEW_RELEASE) as r:
            assert r.status == 404
        async with gw.http.put("/groups/nogroup/release", json=NEW_RELEASE) as r:
            assert r.status == 404
        assert (await gw.node(1))["release"] is None  # nothing changed


ENDPOINTS = [("PUT", "/nodes/{id}/release"), ("DELETE", "/nodes/{id}/release"), ("PUT", "/groups/{id}/release")]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("releases"))
    yield s
    s.close()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
    st.sampled_from(["0.2.0", NEW, OLD, "1.2.3.4.5", "00000001"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["version", "bundle", "x"]), inner, max_size=4)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    values.map(json.dumps),
    st.fixed_dictionaries({"version": values, "bundle": values}).map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
ids = st.one_of(st.sampled_from(["00000001", "1", "0x2", "ffffffff", "g1"]), st.text(max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(endpoint=st.sampled_from(ENDPOINTS), ident=ids, body=bodies)
def test_fuzz_release_endpoints_never_answer_5xx(srv, endpoint, ident, body):
    method, template = endpoint
    path = template.format(id=urllib.parse.quote(ident, safe="") or "%20")
    payload = body.encode("utf-8", "surrogatepass") if method == "PUT" else None
    status, headers, out = srv.request(method, path, payload)
    assert status < 500, (status, method, path, body[:200], out[:300])
    if status >= 400:
        assert headers["content-type"].startswith("application/json")
        assert isinstance(json.loads(out)["error"], str)
    else:
        assert "release" in json.loads(out)
