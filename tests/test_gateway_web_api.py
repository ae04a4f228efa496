"""What gateway/api.py adds for the technician page, over a real aiohttp server on 127.0.0.1:
the static files (public, locked down by headers), node health, recent readings, the op
catalogue, and a command's acknowledged value. The page itself runs in tests/test_web_ui.py."""

from __future__ import annotations

import aiohttp
import pytest
from gateway_helpers import node_keys, reception, registry, seal
from waiting import wait_for

from gateway import ops
from gateway.api import API_CSP, PAGE_CSP, WEB_DIR, Api
from gateway.downlinks import Downlinks
from gateway.history import History
from gateway.pipeline import Pipeline
from gateway.service import Observers
from gateway.store import Store
from protocol import frame
from protocol import messages as m

TOKEN = "a-web-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Wire:
    """The node's end of a wired link (the DownlinkPath seam): keeps the downlinks it is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict]] = []

    async def send_downlink(self, raw: bytes, rx) -> None:
        f, body = frame.unseal(node_keys(frame.parse(raw).node_id), raw)
        self.sent.append((f.mtype, m.decode(f.mtype, body)))


async def serve(tmp_path, *, ui: bool = True, history: bool = True):
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1, 2])
    reg.save()
    d = Downlinks(s, reg)
    await d.start()
    h = History() if history else None
    p = Pipeline(reg, s, downlinks=d if h is None else Observers(d, h))
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0, history=h, ui=ui)
    await api.start()

    async def close() -> None:
        await api.stop()
        await d.close()
        await s.close()

    return api, p, close


@pytest.fixture
async def gw(tmp_path):
    api, p, close = await serve(tmp_path)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
        yield http, p
    await close()


async def test_the_page_is_public_and_locked_down_the_data_is_not(gw):
    http, _ = gw
    async with http.get("/", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/ui/"
    files = sorted(p.name for p in WEB_DIR.iterdir())
    assert "index.html" in files and "app.js" in files
    for name in ["", *files]:
        async with http.get("/ui/" + name) as r:
            assert r.status == 200, name
            body = await r.read()
            assert body == (WEB_DIR / (name or "index.html")).read_bytes()
            assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-cache"
            html = name in ("", "index.html")
            assert r.headers["Content-Security-Policy"] == (PAGE_CSP if html else API_CSP)
            assert (
                r.headers["Content-Type"].split(";")[0]
                == {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[
                    (name or "index.html").rsplit(".", 1)[1]
                ]
            )
            etag = r.headers["ETag"]
        async with http.get("/ui/" + name, headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and not await r.read()
    for probe in ["/ui/nothing.html", "/ui/%2e%2e%2fapi.py", "/ui/..%2fapi.py", "/ui/.hidden"]:
        async with http.get(probe) as r:
            assert r.status == 404 and b"import" not in await r.read(), probe
    # the data: every endpoint the page uses needs the token, and says so with the API's policy
    for path in ["/nodes", "/nodes/00000001/readings", "/ops", "/commands/1", "/ui/../nodes"]:
        async with http.get(path) as r:
            assert r.status == 401, path
            assert r.headers["Content-Security-Policy"] == API_CSP and r.headers["X-Frame-Options"] == "DENY"
    assert "unsafe-inline" not in PAGE_CSP and "script-src 'self'" in PAGE_CSP


async def test_without_the_page_nothing_is_public_but_healthz(tmp_path):
    api, _, close = await serve(tmp_path, ui=False)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
            for path in ["/", "/ui/", "/ui/app.js"]:
                async with http.get(path, allow_redirects=False) as r:
                    assert r.status == 401, path
            async with http.get("/healthz") as r:
                assert r.status == 200
    finally:
        await close()


async def test_nodes_carry_their_health(gw):
    http, p = gw
    assert await p.ingest(reception(seal(1, 1))) == "accepted"
    assert await p.ingest(reception(seal(1, 2, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1}))) == "accepted"
    async with http.get("/nodes", headers=AUTH) as r:
        nodes = {n["id"]: n for n in (await r.json())["nodes"]}
    assert nodes["00000001"]["health"]["state"] == "alarm" and nodes["00000001"]["health"]["silent_s"] < 60
    assert nodes["00000002"]["health"] == {"state": "silent", "conditions": ["silent"], "silent_s": None}


async def test_recent_readings_of_a_node(gw):
    http, p = gw
    for c in range(1, 6):
        assert await p.ingest(reception(seal(1, c), rx_time=1_795_000_000.0 + c)) == "accepted"
    assert await p.ingest(reception(seal(1, 6, m.STATUS, {0: 60, 4: 3300}), rx_time=1_795_000_010.0)) == "accepted"
    async with http.get("/nodes/00000001/readings", headers=AUTH) as r:
        doc = await r.json()
    assert doc["node"] == "00000001" and doc["per_type"] == 96
    assert [x["type"] for x in doc["readings"]] == ["light"] * 5 + ["status"]
    assert [x["fields"]["energy"]["value"] for x in doc["readings"][:5]] == [123456 + c for c in range(1, 6)]
    assert doc["readings"][5]["fields"]["supply_voltage"] == {"value": 3300, "unit": "mV"}
    async with http.get("/nodes/00000001/readings?type=light&limit=2", headers=AUTH) as r:
        assert [x["rx_time"] for x in (await r.json())["readings"]] == [1_795_000_004.0, 1_795_000_005.0]
    async with http.get("/nodes/00000002/readings", headers=AUTH) as r:
        assert r.status == 200 and (await r.json())["readings"] == []
    for path, status, why in [
        ("/nodes/000000ff/readings", 404, "no such node"),
        ("/nodes/xyz/readings", 400, "hex"),
        ("/nodes/00000001/readings?type=light,cake", 400, "unknown uplink type 'cake'"),
        ("/nodes/00000001/readings?limit=0", 400, "limit"),
    ]:
        async with http.get(path, headers=AUTH) as r:
            assert r.status == status and why in (await r.json())["error"], path


async def test_readings_without_a_history_say_so(tmp_path):
    api, _, close = await serve(tmp_path, history=False)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
            async with http.get("/nodes/00000001/readings", headers=AUTH) as r:
                assert r.status == 404 and "no history" in (await r.json())["error"]
    finally:
        await close()


async def test_the_op_catalogue(gw):
    http, _ = gw
    async with http.get("/ops", headers=AUTH) as r:
        assert r.status == 200 and (await r.json())["ops"] == ops.catalogue()


async def test_an_acked_command_shows_the_value_the_node_applied(gw):
    http, p = gw
    wire = Wire()
    assert await p.ingest(reception(seal(1, 1), transport="serial", path=wire)) == "accepted"
    async with http.post("/nodes/00000001/commands", json={"op": "set_level", "args": [100, 600]}, headers=AUTH) as r:
        cmd = await r.json()
    await wait_for(lambda: wire.sent)  # serial: sent at once
    ((mtype, body),) = wire.sent
    assert mtype == m.COMMAND and body[0] == cmd["command_id"]
    ack = seal(1, 2, m.CMD_ACK, {0: body[0], 1: m.RES_OK, 2: 45})  # the value the node answered
    assert await p.ingest(reception(ack, transport="serial", path=wire)) == "accepted"

    async def acked() -> dict | None:
        async with http.get(f"/commands/{cmd['id']}", headers=AUTH) as r:
            got = await r.json()
        return got if got["state"] == "acked" else None

    got = await wait_for(acked)
    assert got["state"] == "acked" and got["result"] == "ok" and got["value"] == 45
