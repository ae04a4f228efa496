"""The public page of a real `lumeau sink` process, in Debian's Chromium driven by Playwright.

All real: the sink process (SQLite file, its nodes put by PUT /v1/nodes, a
day of records posted as a gateway posts them, a resident's report), and
Chromium, headless (never `playwright install`: /usr/bin/chromium, as
tests/test_web_ui.py). The page is read as a resident would: no token.
"""

from __future__ import annotations

import gzip
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_web_ui import CHROMIUM, CHROMIUM_ARGS

from city.public_page import pick_lang
from gateway import formats
from gateway.model import Record
from protocol import expand
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "public-page-token-2b7"
API_KEY = "public-page-city-key-91"
H = 3600.0
D0 = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC).timestamp()
DAY = datetime.fromtimestamp(D0, UTC).date().isoformat()

LAMPS = [
    {
        "id": "00d0e001",
        "kind": "lighting",
        "name": "Rue de Rivoli 12",
        "site": "Rue de Rivoli",
        "lat": 48.8606,
        "lon": 2.3376,
    },
    {
        "id": "00d0e002",
        "kind": "lighting",
        "name": "Rue de Rivoli 14",
        "site": "Rue de Rivoli",
        "lat": 48.8608,
        "lon": 2.3380,
    },
    {
        "id": "00d0e003",
        "kind": "lighting",
        "name": "Rue Saint-Honoré 3",
        "site": "Rue Saint-Honoré",
        "lat": 48.8630,
        "lon": 2.3350,
    },
]
PARK = {
    "id": "00d0e009",
    "kind": "irrigation",
    "name": "Tuileries nord",
    "site": "Jardin des Tuileries",
    "lat": 48.8635,
    "lon": 2.3275,
}
NODES = [{**n, "district": "Louvre", "rated_power_w": 60} for n in LAMPS] + [
    {**PARK, "district": "Louvre", "baseline": {"l_per_day": 800}}
]
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def rec(node: str, counter: int, mtype: int, t: float, body: dict) -> Record:
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=mtype,
        kind=expand.TYPE_NAMES[mtype],
        rx_time=t,
        body=body,
        fields=expand.expand(mtype, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def day_records() -> list[Record]:
    out = []
    for k in range(-1, 26):
        t = D0 + k * H
        for i, lamp in enumerate(LAMPS):
            out.append(rec(lamp["id"], 10 + k, m.LIGHT, t, {0: 100, 2: 1000 + (20 + 10 * i) * k, 3: m.LS_ON}))
    for k, t, vol in ((1, D0, 0), (2, D0 + 6 * H, 0), (3, D0 + 7 * H, 500), (4, D0 + 24 * H, 500)):
        out.append(rec(PARK["id"], k, m.IRRIGATION, t, {3: vol}))
    # lamp 3 fails now, and is still out: the map marks it, its request is confirmed
    now = time.time()
    out.append(rec(LAMPS[2]["id"], 200, m.EVENT, now - 60, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1}))
    return out


def start_sink(d: Path, rate: str) -> tuple[subprocess.Popen, str]:
    (d / "keys").write_text(API_KEY + "\n")
    (d / "token").write_text(TOKEN)
    (d / "ledger.toml").write_text('[ledger]\ntimezone = "UTC"\n')
    p = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(d / "sink.db"), "--port", "0"]
        + ["--token-file", str(d / "token"), "--open311-keys", str(d / "keys"), "--report-rate", rate]
        + ["--ledger-config", str(d / "ledger.toml")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([p.stdout], [], [], 30)
    if not ready:
        p.kill()
        pytest.fail("lumeau sink did not start within 30 s")
    line = p.stdout.readline()
    if not line.startswith("lumeau sink: listening on http://127.0.0.1:"):
        p.kill()
        pytest.fail(f"lumeau sink did not start: {p.stderr.read()}")
    return p, line.split()[4]


def stop_sink(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    p, url = start_sink(tmp_path_factory.mktemp("public-page"), "20/600")
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = requests.put(f"{url}/v1/nodes", json={"nodes": NODES}, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        batch = day_records()
        r = requests.post(
            f"{url}/v1/records",
            data=gzip.compress(formats.native_batch(batch, gateway="gw-test")),
            headers={**auth, "Content-Encoding": "gzip", "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200 and r.json()["accepted"] == len(batch), r.text
        # a resident's report through Open311 with the city's key, with markup in its description
        r = requests.post(
            f"{url}/open311/v2/requests.json",
            data={
                "api_key": API_KEY,
                "service_code": "water_leak",
                "lat": 48.8635,
                "long": 2.3276,
                "description": EVIL,
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        yield url
    finally:
        stop_sink(p)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the public page is tested in Debian's Chromium (see tests/test_web_ui.py)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, locale: str = "en-GB"):
    ctx = browser.new_context(viewport={"width": 1200, "height": 1000}, locale=locale)
    page = ctx.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(f"{msg.text} {msg.location}") if msg.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    others: list[str] = []
    origin = url.split("/public")[0].rstrip("/")
    page.on("request", lambda r: None if r.url.startswith(origin) else others.append(r.url))
    resp = page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    return ctx, page, resp, problems, others


def test_pick_lang_from_query_then_accept_language():
    assert pick_lang("fr", "en") == "fr"
    assert pick_lang("de", "fr-FR,fr;q=0.9,en;q=0.8") == "fr"
    assert pick_lang(None, "de-DE, en;q=0.5, fr;q=0.7") == "fr"
    assert pick_lang(None, "de") == "en"
    assert pick_lang(None, "fr;q=0, en;q=0.1") == "en"
    assert pick_lang(None, "fr;q=abc, en") == "en"
    assert pick_lang(None, "") == "en"


def test_the_page_is_public_and_locked_down(sink):
    r = requests.get(sink + "/", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/public/"
    r = requests.get(sink + "/public/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "http" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in r.text and "style=" not in r.text and "<style" not in r.text  # nothing inline
    assert requests.get(sink + "/public/..%2Fsink.db", timeout=10).status_code == 404
    assert requests.get(sink + "/public/nope.js", timeout=10).status_code == 404
    # the map's nodes: no id, no name
    nodes = requests.get(sink + "/public/nodes.json", timeout=10).json()["nodes"]
    assert len(nodes) == 4 and all(set(n) == {"kind", "site", "lat", "lon", "fault"} for n in nodes)
    assert [n["fault"] for n in nodes if n["site"] == "Rue Saint-Honoré"] == [True]
    # the staff endpoints still need the token
    assert requests.get(sink + "/v1/nodes", timeout=10).status_code == 401


def test_a_resident_reads_the_map_ledger_and_requests_and_reports(sink, browser):
    ctx, page, resp, problems, others = open_page(browser, sink + "/public/", locale="en-GB")
    try:
        assert resp.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.get_attribute("html", "lang") == "en"
        # the map: one marker per node with a position, the failed lamp marked
        markers = page.locator("#map .marker")
        assert markers.count() == 4
        assert page.locator("#map .marker.fault").count() == 1
        assert "Rue Saint-Honoré" in page.locator("#map .marker.fault").get_attribute("aria-label")
        assert page.locator("#map .marker[data-kind='irrigation']").count() == 1
        labels = sorted(page.locator("#map .site-label").all_text_contents())
        assert labels == ["Jardin des Tuileries", "Rue Saint-Honoré", "Rue de Rivoli"]
        # the first Tab reaches the skip link, which leads to the form
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Enter")
        assert page.evaluate("location.hash") == "#report"
        # the ledger: a bar per figure, and the same figures in a table
        assert page.locator("#energy-chart .bar-row .bar-used").count() == 2  # two streets
        assert page.locator("#water-chart .bar-row .bar-base").count() == 1
        rows = page.locator("#energy-table tbody tr")
        assert rows.count() == 2
        riv = page.locator("#energy-table tbody tr", has_text="Rue de Rivoli").inner_text()
        assert "1.2" in riv  # 24 h x (20 + 30) Wh = 1.2 kWh
        park = page.locator("#water-table tbody tr").inner_text()
        assert "0.5" in park and "0.8" in park
        assert "dusk" in page.locator("#ledger-method").text_content()
        # the open requests: the leak (with its markup as text) and the lamp opened by the node
        page.wait_for_selector("#requests li:nth-child(2)")
        desc = page.locator("#requests .description", has_text="pwned")
        assert desc.count() == 1 and desc.inner_text() == EVIL
        assert page.evaluate("window.pwned") is None
        assert page.locator("#requests img").count() == 0
        assert "opened by the equipment itself" in page.locator("#requests").inner_text()

        # the keyboard: a marker picks its position; Tab goes through the form in order; Enter submits
        page.locator("#map .marker.fault").focus()
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "service"
        assert page.input_value("#service") == "lamp_out"
        assert page.input_value("#lat") == "48.863000"
        order = []
        for _ in range(6):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id"))
        assert order == ["lat", "long", "address", "description", "email", "submit"]
        page.locator("#description").fill("Dark since yesterday")
        page.locator("#email").focus()
        page.keyboard.press("Enter")
        result = page.locator("#result")
        assert result.get_attribute("aria-live") == "polite"
        page.wait_for_selector("#result .ok")
        text = result.inner_text()
        assert "Thank you" in text and "token" in text and "confirmed by the equipment" in text
        assert "Added to open request" in text  # the lamp had opened a request itself: the report joins it
        rid = text.split("request ")[1].split(" ")[0]
        page.wait_for_selector(f'#requests li[data-id="{rid}"] >> text="1 report"')
        # by address, with no device there, and markup in the description: shown as text
        page.select_option("#service", "damaged_lamp_post")
        page.fill("#address", "Place Vendome")
        page.fill("#description", "Bent post <b>really</b>")
        page.click("#submit")
        page.wait_for_selector("#result >> text=no equipment nearby")
        rid2 = result.inner_text().split("request ")[1].split(" ")[0]
        assert rid2 != rid
        item = page.locator(f'#requests li[data-id="{rid2}"]')
        item.wait_for()
        assert "Bent post <b>really</b>" in item.inner_text() and item.locator("b").count() == 0
        # every control has a label
        unlabelled = page.evaluate(
            "[...document.querySelectorAll('input, select, textarea')].filter((e) => !e.labels.length).map((e) => e.id)"
        )
        assert unlabelled == []

        # a report without a location is refused with the server's reasons, announced
        page.select_option("#service", "too_dark")
        page.click("#submit")
        page.wait_for_selector("#result .error")
        assert "location is required" in result.inner_text()

        # language: switch to French by the link
        page.click("#lang-fr")
        page.wait_for_selector("body[data-ready='1']")
        assert page.get_attribute("html", "lang") == "fr"
        assert page.locator("#report-h").inner_text() == "Signaler un problème"
        assert "Lampadaire éteint" in page.locator("#service").inner_text()
        assert "confirmé par l’équipement" in page.locator("#requests").inner_text()
        assert page.get_attribute("#lang-fr", "aria-current") == "page"
        # Chromium logs the refused report's 400 itself: expected once, nothing else
        refused = [x for x in problems if "status of 400" in x and "/open311/v2/requests.json" in x]
        assert len(refused) == 1 and [x for x in problems if x not in refused] == [] and others == []
    finally:
        ctx.close()


CONTRAST_JS = """() => {
  const rgb = (c) => (c.match(/[0-9.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const bg = (el) => {
    for (; el; el = el.parentElement) {
      const st = getComputedStyle(el);
      if (el instanceof SVGElement && el.tagName !== "svg") continue;
      const c = rgb(st.backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const st = getComputedStyle(el);
    let fg = rgb(el instanceof SVGElement ? st.fill : st.color).slice(0, 3);
    // SVG text sits on the map's background, or on the page's (the charts have none of their own)
    const plate = el instanceof SVGElement && el.ownerSVGElement.querySelector(".map-bg");
    const back = plate ? rgb(getComputedStyle(plate).fill) : bg(el);
    const [a, b] = [lum(fg), lum(back.length >= 3 ? back : [255, 255, 255])].sort((x, y) => y - x);
    out.push([el.tagName + (el.id ? "#" + el.id : ""), (a + 0.05) / (b + 0.05)]);
  }
  return out;
}"""


def test_text_contrast_is_at_least_aa(sink, browser):
    ctx, page, _resp, _problems, _ = open_page(browser, sink + "/public/")
    try:
        ratios = page.evaluate(CONTRAST_JS)
        assert len(ratios) > 50  # the page's texts were found
        low = [(tag, round(r, 2)) for tag, r in ratios if r < 4.5]
        assert low == []
    finally:
        ctx.close()


def test_french_by_default_from_the_browser_language(sink, browser):
    ctx, page, _resp, problems, _ = open_page(browser, sink + "/public/", locale="fr-FR")
    try:
        assert page.get_attribute("html", "lang") == "fr"
        assert page.locator("h1").inner_text() == "L’éclairage et l’arrosage de votre ville"
        assert page.locator("#energy-table thead th").first.inner_text() == "Rue"
        riv = page.locator("#energy-table tbody tr", has_text="Rue de Rivoli").inner_text()
        assert "1,2" in riv  # French decimals
        assert problems == []
    finally:
        ctx.close()


def test_the_page_key_is_rate_limited_like_any_client(tmp_path, browser):
    p, url = start_sink(tmp_path, "3/600")
    try:
        r = requests.put(f"{url}/v1/nodes", json={"nodes": NODES}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        key = requests.get(url + "/public/config.json", timeout=10).json()["api_key"]
        assert key.startswith("public-page-") and key != API_KEY
        codes = send_until_refused(url, key)
        assert codes == [201, 201, 201, 429]
        # the page says so, in the live region, and keeps what the resident typed
        ctx, page, _resp, _problems, _ = open_page(browser, url + "/public/")
        try:
            page.fill("#address", "Rue de Rivoli 12")
            page.fill("#description", "Still dark")
            page.click("#submit")
            page.wait_for_selector("#result .error")
            assert "Too many reports" in page.inner_text("#result")
            assert page.input_value("#description") == "Still dark"
        finally:
            ctx.close()
    finally:
        stop_sink(p)


def send_until_refused(url: str, key: str) -> list[int]:
    codes = []
    for _ in range(8):
        r = requests.post(
            url + "/open311/v2/requests.json",
            data={"api_key": key, "service_code": "lamp_out", "address_string": "Rue de Rivoli 12"},
            timeout=10,
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) > 0
            break
    return codes


@given(st.one_of(st.none(), st.text(max_size=10)), st.text(max_size=200))
def test_fuzz_pick_lang_is_en_or_fr(query, accept):
    assert pick_lang(query, accept) in ("en", "fr")


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40), accept=HEADER_TEXT)
def test_fuzz_public_paths_and_languages(sink, name, accept):
    r = requests.get(
        sink + "/public/" + requests.utils.quote(name, safe=""),
        headers={"Accept-Language": accept.strip()},  # requests refuses edge whitespace itself
        params={"lang": accept[:8]},
        timeout=10,
    )
    assert r.status_code in (200, 404), r.text[:200]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    if r.status_code == 200 and r.headers["Content-Type"].startswith("text/html"):
        assert r.headers["Content-Language"] in ("en", "fr")
        assert f'<html lang="{r.headers["Content-Language"]}">' in r.text
        assert "unsafe" not in r.headers["Content-Security-Policy"]
