"""The city's service requests beside the nodes on the technician page (gateway/open311_feed.py, GET /requests).

End to end, all real: a `lumeau sink` process (the city platform: Open311,
requests opened by residents and by a node's alarm), a `lumeau gateway`
process whose `[open311] url` points at it (the gateway reads the requests
over HTTP: it never imports city/), and Debian's Chromium through Playwright
on the gateway's page. Then the feed alone against a small HTTP server that
answers badly, and hypothesis on what it accepts.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from gateway_helpers import GatewayProcess, root_key
from hypothesis import given, settings
from hypothesis import strategies as st
from playwright.sync_api import expect
from test_web_ui import browser  # noqa: F401  (the Chromium fixture)
from waiting import wait_for, wait_for_sync

from gateway import formats
from gateway.config import ConfigError, parse_config
from gateway.model import Record
from gateway.open311_feed import Place, RequestsFeed, trim
from gateway.registry import NodeEntry, Registry
from protocol import expand
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
TOKEN = "web-requests-token-0123456789"
SINK_TOKEN = "web-requests-sink-token-55"
API_KEY = "web-requests-key-7d"
LAMP, LAMP_ALARM, PARK = 0x31, 0x32, 0x41
NODES = [
    (LAMP, "lighting", "Rue Oberkampf 12", "Rue Oberkampf", 48.86480, 2.37470),
    (LAMP_ALARM, "lighting", "Rue Oberkampf 28", "Rue Oberkampf", 48.86530, 2.37690),
    (PARK, "irrigation", "Square Maurice Gardette", "Square Maurice Gardette", 48.86300, 2.37600),
]
MARKUP = '<img src=x onerror="window.__pwned=1">Lamp <b>dark</b> & "cold"'


def event(node: int, counter: int, active: int) -> Record:
    body = {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 2: 12, 3: 1_795_000_000 + counter, 4: active}
    return Record(
        node_id=node,
        counter=counter,
        mtype=m.EVENT,
        kind="event",
        rx_time=1_795_000_000.0 + counter,
        body=body,
        fields=expand.expand(m.EVENT, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def start_sink(d: Path) -> tuple[subprocess.Popen, str]:
    (d / "keys").write_text(API_KEY + "\n")
    (d / "sink.token").write_text(SINK_TOKEN)
    p = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(d / "sink.db"), "--port", "0"]
        + ["--token-file", str(d / "sink.token"), "--nodes", str(d / "nodes.toml")]
        + ["--open311-keys", str(d / "keys"), "--report-rate", "100/60", "--jurisdiction", "paris11.example"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([p.stdout], [], [], 30)
    assert ready, "lumeau sink did not start within 30 s"
    line = p.stdout.readline()
    assert line.startswith("lumeau sink: listening on http://127.0.0.1:"), p.stderr.read()
    return p, line.split()[4]


def stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_gateway(d: Path, open311_url: str | None) -> Path:
    reg = Registry(d / "nodes.toml")
    for node, kind, name, site, lat, lon in NODES:
        reg.upsert(NodeEntry(node_id=node, kind=kind, root_key=root_key(node), name=name, site=site, lat=lat, lon=lon))
    reg.save()
    cfg = d / "gateway.toml"
    o311 = f'[open311]\nurl = "{open311_url}"\njurisdiction_id = "paris11.example"\nrefresh_s = 0.5\n'
    cfg.write_text(
        f'[gateway]\nid = "requests-gw"\n[api]\nport = 0\ntoken = "{TOKEN}"\n'
        '[semtech]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n[upstream]\nenabled = false\n'
        + (o311 if open311_url else "")
    )
    return cfg


def api(port: int, path: str, token: str = TOKEN) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def report(sink: str, **fields: Any) -> str:
    r = requests.post(f"{sink}/open311/v2/requests.json", data={"api_key": API_KEY, **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()[0]["service_request_id"]


def send(sink: str, recs: list[Record]) -> None:
    r = requests.post(
        f"{sink}/v1/records",
        data=gzip.compress(formats.native_batch(recs, gateway="requests-gw")),
        headers={
            "Authorization": f"Bearer {SINK_TOKEN}",
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text


def test_the_technician_page_shows_the_citys_requests_beside_the_nodes(tmp_path, browser):  # noqa: F811
    cfg_dir = tmp_path
    write_gateway(cfg_dir, None)  # the registry first: the sink reads its nodes from it
    sink_proc, sink = start_sink(cfg_dir)
    gw = GatewayProcess(write_gateway(cfg_dir, f"{sink}/open311/v2"))
    try:
        # the city: the lamp with the alarm opens its own request; a resident reports the other lamp
        # (with markup in the description and an e-mail); another reports a leak where no node is
        send(sink, [event(LAMP_ALARM, 1, 1)])
        resident = report(
            sink,
            service_code="lamp_out",
            lat="48.86482",
            long="2.37472",
            description=MARKUP,
            email="resident@example.org",
        )
        nowhere = report(sink, service_code="water_leak", address_string="Place du Tertre")
        port = gw.start()["api_port"]
        base = f"http://127.0.0.1:{port}"
        doc = wait_for_sync(lambda: (d := api(port, "/requests"))["fetched"] and d, 15, "the gateway's first read")
        assert doc["configured"] and doc["error"] is None and doc["source"] == f"{sink}/open311/v2"
        by_id = {r["service_request_id"]: r for r in doc["requests"]}
        assert by_id[resident]["nodes"] == [f"{LAMP:08x}"] and by_id[resident]["description"] == MARKUP
        assert by_id[nowhere]["nodes"] == [] and "email" not in json.dumps(doc)
        with pytest.raises(urllib.error.HTTPError) as e:
            api(port, "/requests", token="not-the-token-000000")
        assert e.value.code == 401  # the page's data needs the token, as every API call does

        ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = ctx.new_page()
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        seen: list[str] = []
        page.on("request", lambda r: seen.append(r.url))
        page.goto(base + "/")
        page.fill("#token", TOKEN)
        page.click("#login-button")
        page.wait_for_selector("#app-view", state="visible")

        # the side card: the three open requests, newest first, each with its verdict and nodes
        expect(page.locator("#requests li.request")).to_have_count(3)
        assert page.inner_text("#request-total") == "3"
        items = page.locator("#requests li.request")
        assert items.evaluate_all("ls => ls.map(l => l.dataset.request)") == [nowhere, resident, by_id_device(doc)]
        res = page.locator(f"#requests li[data-request='{resident}']")
        assert res.locator(".description").inner_text() == MARKUP  # the markup as text ...
        assert page.locator("#requests img, #requests .description b").count() == 0  # ... never as elements
        assert page.evaluate("window.__pwned === undefined")
        assert "device reports normal" in res.inner_text() and "from a resident" in res.inner_text()
        dev = page.locator(f"#requests li[data-request='{by_id_device(doc)}']")
        assert "confirmed by the device" in dev.inner_text() and "opened by the device" in dev.inner_text()
        assert "No registered node near it." in page.locator(f"#requests li[data-request='{nowhere}']").inner_text()
        assert f"From {sink}/open311/v2" in page.inner_text("#requests-note")
        # the nodes table counts each node's requests
        counts = page.eval_on_selector_all(
            "#nodes tbody tr", "rs => rs.map(r => [r.dataset.node, r.querySelector('.requests-count').textContent])"
        )
        assert sorted(counts) == [[f"{LAMP:08x}", "1"], [f"{LAMP_ALARM:08x}", "1"], [f"{PARK:08x}", "–"]]

        # the plan marks the nodes the requests concern, with their count (named for screen readers)
        marker = page.locator(f"#plan .node-marker[data-node='{LAMP:08x}']")
        assert marker.get_attribute("data-requests") == "1" and marker.locator(".request-badge").text_content() == "1"
        assert marker.get_attribute("aria-label").endswith("· 1 service request")
        assert page.locator(f"#plan .node-marker[data-node='{PARK:08x}'] .request-badge").count() == 0

        # a request's node link opens the node, whose detail lists the request
        res.locator(f"button.node-link[data-node='{LAMP:08x}']").click()
        page.wait_for_selector(f"#detail-title:has-text('{LAMP:08x}')")
        page.wait_for_selector(f"#node-requests li[data-request='{resident}']")
        assert page.locator("#node-requests li").count() == 1 and page.is_hidden("#node-no-requests")
        assert page.locator("#node-requests .description").inner_text() == MARKUP

        OUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUT / "web_requests.png"), full_page=True)

        # the lamp reports its fault repaired: the platform closes the request and the page drops it
        send(sink, [event(LAMP_ALARM, 2, 0)])
        expect(page.locator("#requests li.request")).to_have_count(2, timeout=20000)
        assert page.locator(f"#requests li[data-request='{by_id_device(doc)}']").count() == 0
        expect(page.locator(f"#plan .node-marker[data-node='{LAMP_ALARM:08x}'] .request-badge")).to_have_count(0)

        # the platform goes away: the page says so and keeps the last list it had
        stop(sink_proc)
        expect(page.locator("#requests-note")).to_have_attribute("data-error", "1", timeout=20000)
        assert "did not answer" in page.inner_text("#requests-note")
        assert page.locator("#requests li.request").count() == 2

        # the page only ever talked to its gateway (the gateway read the platform)
        assert seen and all(u.startswith(base) for u in seen), [u for u in seen if not u.startswith(base)]
        assert not [p for p in problems if "status of 401" not in p], problems
        ctx.close()
        assert gw.stop() == 0
    finally:
        gw.kill()
        if sink_proc.poll() is None:
            stop(sink_proc)
    assert TOKEN not in json.dumps(gw.lines)


def by_id_device(doc: dict[str, Any]) -> str:
    return next(r["service_request_id"] for r in doc["requests"] if r["lumeau_source"] == "device")


def test_without_open311_the_api_says_so(tmp_path):
    gw = GatewayProcess(write_gateway(tmp_path, None))
    try:
        port = gw.start()["api_port"]
        assert api(port, "/requests") == {"configured": False, "requests": []}
        assert gw.stop() == 0
    finally:
        gw.kill()


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ('url = "ftp://city.example/open311"', "open311.url: 'ftp://city.example/open311' must start with http://"),
        ('url = "http://x/open311/v2"\nrefresh_s = 0', "open311.refresh_s: 0.0 must be positive"),
        ('urls = "http://x"', "open311.urls: unknown key (did you mean 'url'?)"),
        ('url = "http://city.example:99999/open311"', "open311.url: 'http://city.example:99999/open311' is not a URL"),
        ('url = "http:///open311"', "open311.url: 'http:///open311' has no host"),
    ],
)
def test_bad_open311_config_is_named(tmp_path, section, why):
    import tomllib

    text = f'[api]\ntoken = "{TOKEN}"\n[open311]\n{section}\n'
    with pytest.raises(ConfigError, match=re.escape("gateway.toml: " + why)):
        parse_config(tomllib.loads(text), tmp_path / "gateway.toml")


# -- the feed alone ---------------------------------------------------------------------------


class Platform:
    """An Open311 server on 127.0.0.1 whose next answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b"[]"
        self.queries: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/open311/v2/requests.json", self.requests)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def requests(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        return web.Response(status=self.status, body=self.body, content_type="application/json")

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/open311/v2"


async def test_the_feed_keeps_the_last_good_list_when_the_platform_answers_badly():
    plat = Platform()
    await plat.start()
    now = [1000.0]
    places = [Place("00000031", 48.8648, 2.3747), Place("00000032", 48.8653, 2.3769), Place("00000099", None, None)]
    feed = RequestsFeed(plat.url + "/", jurisdiction_id="j1", refresh_s=30, places=lambda: places, clock=lambda: now[0])
    try:
        # a GeoReport server that is not lumeau sink: no lumeau_nodes, so placed by position (60 m)
        plat.body = json.dumps(
            [
                {
                    "service_request_id": 12,
                    "status": "open",
                    "service_name": "Dark",
                    "lat": "48.86481",
                    "long": 2.37471,
                },
                {"service_request_id": "13", "status": "open", "lat": 10.0, "long": 10.0},
                {"status": "open"},  # no id: not a request
                "junk",
            ]
        ).encode()
        snap = await feed.snapshot(wait=True)
        assert [(r["service_request_id"], r["nodes"]) for r in snap["requests"]] == [("12", ["00000031"]), ("13", [])]
        assert snap["error"] is None and snap["fetched"] == 1000.0 and snap["source"] == plat.url
        assert plat.queries == [{"status": "open", "jurisdiction_id": "j1"}]
        now[0] += 10  # within refresh_s: no second read
        await feed.snapshot(wait=True)
        assert len(plat.queries) == 1
        # due again: the caller gets the list it had at once, the read goes on in the background
        plat.body = json.dumps([{"service_request_id": "14", "status": "open"}]).encode()
        now[0] += 31
        assert [r["service_request_id"] for r in (await feed.snapshot())["requests"]] == ["12", "13"]
        await wait_for(lambda: len(plat.queries) == 2, 10, "the background read")
        assert [r["service_request_id"] for r in (await feed.snapshot(wait=True))["requests"]] == ["14"]
        plat.body = b"[]"
        now[0] += 31
        snap = await feed.snapshot(wait=True)
        good, fetched = snap["requests"], snap["fetched"]
        for status, body, why in [
            (500, b"[]", "HTTP 500"),
            (200, b"<html>", "not JSON"),
            (200, b'{"requests": []}', "not a GeoReport v2 list"),
            (200, b"[" + b'{"service_request_id": "1"},' * 200_000 + b"{}]", "over 4 MiB"),
        ]:
            plat.status, plat.body = status, body
            now[0] += 31
            snap = await feed.snapshot(wait=True)
            assert why in snap["error"] and snap["requests"] == good and snap["fetched"] == fetched, snap["error"]
        await plat.runner.cleanup()  # gone altogether
        now[0] += 31
        snap = await feed.snapshot(wait=True)
        assert snap["error"] == "the platform did not answer" and snap["requests"] == good
    finally:
        await feed.close()
        await plat.runner.cleanup()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=20), kids, max_size=5),
    max_leaves=20,
)
_FIELDS = st.sampled_from(
    ["service_request_id", "status", "description", "lat", "long", "lumeau_nodes", "lumeau_reports", "address"]
)


@settings(max_examples=300, deadline=None)
@given(item=st.one_of(_JSON, st.dictionaries(_FIELDS, _JSON, max_size=8)))
def test_fuzz_trim_takes_anything_and_gives_only_its_fields(item):
    places = [Place("00000031", 48.8648, 2.3747)]
    out = trim(item, places, 60.0)
    if out is None:
        return
    assert isinstance(out["service_request_id"], str) and out["service_request_id"]
    for k, v in out.items():
        if k in ("lat", "long"):
            assert v is None or isinstance(v, float)
        elif k == "nodes":
            assert set(v) <= {"00000031"}
        elif k == "reports":
            assert v is None or (isinstance(v, int) and v >= 0)
        else:
            assert v is None or (isinstance(v, str) and len(v) <= 1000)
    json.dumps(out, allow_nan=False)  # what the API answers is strict JSON
