"""The technician web page in a real browser, against a real `lumeau gateway`.

All real: the gateway process (registry file, SQLite store, local API serving
gateway/web/), a packet forwarder speaking Semtech UDP to it from this test
(its nodes' frames sealed with protocol.frame, back-dated through the
forwarder's `time` so the chart has a day of reports), and Debian's Chromium,
headless, driven by Playwright. A lighting node answers the COMMAND the page
sends, in its receive window, with a CMD_ACK, as a node does.

Chromium comes from Debian (`make test` installs the `chromium` package when
it is missing); Playwright only drives it (never `playwright install`). A
machine without /usr/bin/chromium fails this test with a message saying so:
it is never skipped silently.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gateway_helpers import GatewayProcess, node_keys, root_key
from waiting import wait_for_sync

from gateway.registry import Group, NodeEntry, Registry
from protocol import frame
from protocol import messages as m

CHROMIUM = Path(os.environ.get("LUMEAU_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUT = Path(__file__).resolve().parent.parent / "out"
TOKEN = "web-ui-test-token-0123456789"
EUI = bytes.fromhex("a1a2a3a4a5a6a7a8")

LAMP, LAMP_ALARM, LAMP_NEVER, LAMP_NOWHERE, PARK = 0x11, 0x12, 0x13, 0x14, 0x21
NODES = [
    (LAMP, "lighting", "Rue Oberkampf 12", 48.86480, 2.37470),
    (LAMP_ALARM, "lighting", "Rue Oberkampf 28", 48.86530, 2.37690),
    (LAMP_NEVER, "lighting", "Rue Oberkampf 44", 48.86590, 2.37930),
    (LAMP_NOWHERE, "lighting", "Depot spare", None, None),
    (PARK, "irrigation", "Square Maurice Gardette", 48.86300, 2.37600),
]
DAY = 96  # 15-minute reports in a day: gateway/history.py keeps exactly that many per type


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def night_level(t: float) -> int:
    """A dimming profile by the hour (UTC, Paris in winter): full at dusk, 40 % at night, off by day."""
    hour = datetime.fromtimestamp(t, UTC).hour
    return 100 if 16 <= hour < 22 or 5 <= hour < 7 else 40 if hour >= 22 or hour < 5 else 0


def light_body(t: float, n: int) -> dict:
    level = night_level(t)
    watts10 = level * 6  # 60 W lamp, 0.1 W units
    flags = m.LS_ON if level else 0
    return {0: level, 1: watts10, 2: 1000 + n * 10, 3: flags, 4: 3000 + n // 4, 6: watts10 * 100 // 23}


def irrigation_body(n: int, failsafe: bool) -> dict:
    moisture = bytes((max(40, 80 - n // 3), max(30, 72 - n // 2), 0xFF, 0xFF))  # drying: 0.5 % units
    return {0: moisture, 1: 0, 2: 0, 3: 5000, 4: 0, 5: 24100 - n, 6: m.IF_FAILSAFE if failsafe else 0}


class Forwarder:
    """A LoRa packet forwarder and the nodes it hears, on one UDP socket.

    Uplinks go out as PUSH_DATA (with the forwarder's `time`); the downlink
    route is opened with PULL_DATA; PULL_RESP frames are checked with the
    node's downlink key (as a node does), answered with TX_ACK, and a COMMAND
    for LAMP gets its CMD_ACK uplink at once (result ok, value = the level).
    """

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.counters: dict[int, int] = {}
        self.commands: list[dict] = []
        self.acks: list[int] = []
        self.token = 0
        self.lock = threading.Lock()
        self._stop = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self._datagram(2, EUI)  # PULL_DATA: the downlink route

    def _datagram(self, ident: int, payload: bytes, token: bytes | None = None) -> None:
        with self.lock:
            if token is None:
                self.token = (self.token + 1) & 0xFFFF
                token = self.token.to_bytes(2, "big")
            self.sock.sendto(bytes((2,)) + token + bytes((ident,)) + payload, self.addr)

    def uplink(self, node: int, mtype: int, body: dict, at: float | None = None) -> None:
        c = self.counters[node] = self.counters.get(node, 0) + 1
        raw = frame.seal(node_keys(node), mtype, c, m.encode(mtype, body))
        rxpk = {
            "tmst": int(time.monotonic() * 1e6) & 0xFFFFFFFF,
            "time": iso(at or time.time()),
            "chan": 0,
            "rfch": 0,
            "freq": 868.1,
            "stat": 1,
            "modu": "LORA",
            "datr": "SF7BW125",
            "codr": "4/5",
            "rssi": -97 - (node % 7),
            "lsnr": 6.5,
            "size": len(raw),
            "data": base64.b64encode(raw).decode(),
        }
        self._datagram(0, EUI + json.dumps({"rxpk": [rxpk]}).encode())

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            if len(data) < 4 or data[3] != 3:  # only PULL_RESP carries a downlink
                continue
            self._datagram(5, EUI + b'{"txpk_ack":{"error":"NONE"}}', token=data[1:3])  # TX_ACK: queued for RX1
            raw = base64.b64decode(json.loads(data[4:])["txpk"]["data"])
            node = frame.parse(raw).node_id
            f, plain = frame.unseal(node_keys(node), raw)  # raises on a bad downlink MIC: the test then fails
            body = m.decode(f.mtype, plain)
            if f.mtype == m.ACK:
                self.acks.append(body[0])
            elif f.mtype == m.COMMAND:
                self.commands.append(body)
                level = body.get(2, [0])[0]
                self.uplink(node, m.CMD_ACK, {0: body[0], 1: m.RES_OK, 2: level})

    def close(self) -> None:
        self._stop = True
        self.reader.join(2)
        self.sock.close()


def api(port: int, path: str, token: str = TOKEN) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for(cond, timeout: float = 15.0, what: str = "condition"):
    return wait_for_sync(cond, timeout, what)


def write_config(tmp: Path) -> Path:
    reg = Registry(tmp / "nodes.toml")
    for node, kind, name, lat, lon in NODES:
        reg.upsert(
            NodeEntry(node_id=node, kind=kind, root_key=root_key(node), name=name, site="Paris 11e", lat=lat, lon=lon)
        )
    street = {
        "kind": "street",
        "title": "Rue Oberkampf",
        "members": [f"{n:08x}" for n in (LAMP, LAMP_ALARM, LAMP_NEVER)],
    }
    reg.put_group(Group.from_dict("oberkampf", street), create=True)
    reg.save()
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "web-ui-gw"
[api]
port = 0
token = "{TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
enabled = false
""")
    return cfg


def feed_a_day(fwd: Forwarder, now: float) -> None:
    """A day of reports for the lamps and the park; an alarm; the park falls into fail-safe."""
    # the alarmed lamp was told to run release 0.2.0 and says HELLO from its previous one: rolled back
    hello = {0: "0.1.0", 1: m.KIND_LIGHTING, 2: 3, 4: m.RST_WATCHDOG, 5: bytes.fromhex("aa11bb")}
    fwd.uplink(LAMP_ALARM, m.HELLO, hello, at=now - (DAY + 4) * 900)
    for node, kind in ((LAMP, m.KIND_LIGHTING), (PARK, m.KIND_IRRIGATION)):
        fwd.uplink(node, m.HELLO, {0: "0.1.0", 1: kind, 2: 3, 4: m.RST_POWER_ON}, at=now - (DAY + 4) * 900)
    for i in range(DAY + 4):  # more than the history keeps: the oldest 4 must be gone
        t = now - (DAY + 3 - i) * 900
        fwd.uplink(LAMP, m.LIGHT, light_body(t, i), at=t)
        fwd.uplink(LAMP_NOWHERE, m.LIGHT, light_body(t, i), at=t)
        if i % 4 == 0:
            fwd.uplink(PARK, m.IRRIGATION, irrigation_body(i, failsafe=i > DAY - 4), at=t)
        if i % 8 == 0:
            fwd.uplink(LAMP_ALARM, m.LIGHT, light_body(t, i), at=t)
        time.sleep(0.002)  # a forwarder's pace; keeps the test's socket buffer from overflowing
    fwd.uplink(LAMP, m.STATUS, {0: 86400, 1: int(now), 4: 3300, 5: 21}, at=now - 60)
    fwd.uplink(
        LAMP_ALARM, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 2: 12, 3: int(now - 120), 4: 1}, at=now - 120
    )
    fwd.uplink(PARK, m.EVENT, {0: m.EV_IRRIGATION_FAILSAFE, 1: m.SEV_WARNING, 3: int(now - 300), 4: 1}, at=now - 300)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the web page is tested in Debian's Chromium. `make test` installs it "
            "(apt-get install chromium, as root); without apt-get, install Chromium and set LUMEAU_CHROMIUM."
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the python package playwright is missing: pip install -e '.[dev]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def test_a_technician_signs_in_sees_the_nodes_and_commands_a_lamp(tmp_path, browser):
    gw = GatewayProcess(write_config(tmp_path))
    fwd = None
    try:
        started = gw.start()
        port = started["api_port"]
        fwd = Forwarder(started["semtech_port"])
        now = time.time()
        put = urllib.request.Request(
            f"http://127.0.0.1:{port}/nodes/{LAMP_ALARM:08x}/release",
            data=json.dumps({"version": "0.2.0", "bundle": "cc22dd" + "0" * 58}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(put, timeout=10) as r:
            assert json.loads(r.read())["release"]["state"] == "updating"
        feed_a_day(fwd, now)
        wait_for(
            lambda: (
                len(api(port, f"/nodes/{LAMP:08x}/readings?type=light")["readings"]) == DAY
                and api(port, f"/nodes/{LAMP_ALARM:08x}")["open_alarms"]
                and api(port, f"/nodes/{PARK:08x}")["open_alarms"]
            ),
            what="a day of readings stored",
        )
        base = f"http://127.0.0.1:{port}"

        ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        page = ctx.new_page()
        problems: list[str] = []
        refused: list[str] = []  # Chromium logs the wrong token's 401 itself: expected once

        def on_console(msg) -> None:
            if msg.type in ("error", "warning"):
                (refused if "status of 401" in msg.text else problems).append(msg.text)

        page.on("console", on_console)
        page.on("pageerror", lambda e: problems.append(str(e)))
        requests: list = []
        page.on("request", lambda r: requests.append(r))

        # The page is public and locked down; the data is not.
        resp = page.goto(base + "/")
        assert resp.url == base + "/ui/" and resp.status == 200
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert resp.headers["x-content-type-options"] == "nosniff"
        page.wait_for_selector("#login-form", state="visible")
        assert page.is_hidden("#app-view")

        # A wrong token is refused and not kept.
        page.fill("#token", "not-the-right-token-000")
        page.click("#login-button")
        page.wait_for_selector("#login-error", state="visible")
        assert "refused" in page.inner_text("#login-error")
        assert page.is_hidden("#app-view")
        assert page.evaluate("Object.keys(sessionStorage).length") == 0

        # The right one opens the page; it stays in this tab's sessionStorage only.
        page.fill("#token", TOKEN)
        page.click("#login-button")
        page.wait_for_selector("#app-view", state="visible")
        assert page.evaluate("Object.values(sessionStorage)") == [TOKEN]
        assert page.evaluate("document.cookie") == "" and page.evaluate("localStorage.length") == 0

        # Every node with a position is on the plan, coloured by its state.
        states = {
            f"{LAMP:08x}": "ok",
            f"{LAMP_ALARM:08x}": "alarm",
            f"{LAMP_NEVER:08x}": "silent",
            f"{PARK:08x}": "failsafe",
        }
        for node, state in states.items():
            page.wait_for_selector(f'#plan .node-marker[data-node="{node}"][data-state="{state}"]')
        assert page.locator(f'#plan .node-marker[data-node="{LAMP_NOWHERE:08x}"]').count() == 0
        assert "Depot spare" in page.inner_text("#unplaced")
        assert page.inner_text("#count-alarm") == "1" and page.inner_text("#count-silent") == "1"
        assert page.inner_text("#count-failsafe") == "1" and page.inner_text("#count-ok") == "2"
        page.wait_for_selector("#gateway .fact")  # rendered after the plan, once /metrics answered
        gateway = page.inner_text("#gateway")  # the gateway's own figures, from /metrics
        assert "Nodes registered\n5" in gateway and "Frames refused\n0" in gateway
        alarms = page.locator("#alarms li")
        assert alarms.count() == 2  # the lamp failure and the park's fail-safe warning
        assert "lamp failure" in alarms.nth(0).inner_text() and "Rue Oberkampf 28" in alarms.nth(0).inner_text()

        # The lamp with the alarm: its alarm in the detail.
        page.click(f'#plan .node-marker[data-node="{LAMP_ALARM:08x}"]')
        page.wait_for_selector("#detail-state[data-state='alarm']")
        assert "lamp failure" in page.inner_text("#node-alarms")
        assert "lamp failure raised" in page.inner_text("#node-events")
        release = page.locator("#facts .fact[data-release='rolled_back']")
        assert "ROLLED BACK" in release.inner_text() and "runs aa11bb, expected 0.2.0 (cc22dd)" in release.inner_text()

        # The park: its soil drying out, one line per zone with a sensor.
        page.click(f'#plan .node-marker[data-node="{PARK:08x}"]')
        page.wait_for_selector("#detail-state[data-state='failsafe']")
        page.wait_for_selector("#chart .series[data-series='zone 2']")
        assert page.locator("#chart .series").count() == 2

        # The lamp: a day of reports as a chart (the oldest beyond the history's bound are gone).
        page.click(f'#plan .node-marker[data-node="{LAMP:08x}"]')
        page.wait_for_selector(f"#detail-title:has-text('{LAMP:08x}')")
        page.wait_for_selector("#detail-state[data-state='ok']")
        assert "started firmware 0.1.0 (power on reset)" in page.inner_text("#node-events")
        page.wait_for_function("document.querySelectorAll('#chart circle.point').length === %d" % DAY)
        assert page.eval_on_selector_all("#chart-types [data-type]", "bs => bs.map(b => b.dataset.type)") == [
            "light",
            "status",
        ]
        assert page.input_value("#chart-field") == "level"
        levels = page.eval_on_selector_all("#chart circle.point title", "ts => ts.map(t => t.textContent)")
        expected = [light_body(now - (DAY - 1 - i) * 900, i + 4)[0] for i in range(DAY)]
        assert [int(t.split(": ")[1].split()[0]) for t in levels] == expected
        page.select_option("#chart-field", "power")
        page.wait_for_selector("#chart .unit:text-is('W')")

        # Send a command: set_level 80 % for 10 minutes; the node answers in its next receive window.
        assert "set level" in page.locator("#op option").all_inner_texts()
        assert "open zone" not in page.locator("#op option").all_inner_texts()  # an irrigation op
        page.select_option("#op", "set_level")
        page.fill("#arg-0-level", "180")
        page.click("#send")
        page.wait_for_selector("#command-error", state="visible")
        assert "between 0 and 100" in page.inner_text("#command-error")
        page.fill("#arg-0-level", "80")
        page.fill("#arg-0-duration", "600")
        page.click("#send")
        item = page.locator("#commands li").first
        item.wait_for()
        assert item.get_attribute("data-state") == "queued" and "set level 80, 600" in item.inner_text()
        # The lamp reports every second (the gateway answers in the receive window after an uplink,
        # when its own duty cycle allows: the ACK of the alarm above closed the sub-band for a while).
        for i in range(20):
            fwd.uplink(LAMP, m.LIGHT, light_body(time.time(), DAY + 4 + i))
            if fwd.commands:
                break
            page.wait_for_timeout(1000)
        page.wait_for_selector("#commands li[data-state='acked'][data-ok='1']", timeout=10000)
        assert "acked: ok (value 80)" in item.inner_text()
        cmd = fwd.commands[-1]
        assert cmd[1] == m.OP_SET_LEVEL and cmd[2] == [80, 600]
        assert api(port, f"/commands/{cmd[0]}")["state"] == "acked"

        # A group command to the street (issue 11), sent from the Groups card with the same bearer
        # token; its delivery and its progress member by member on the page.
        page.wait_for_selector("#groups li[data-group='oberkampf'] >> text=No group command yet.")
        group = page.locator("#groups li[data-group='oberkampf']")
        group.locator(".group-send-box > summary").click()
        form = group.locator("form.group-send")
        form.locator("select").select_option("set_level")
        form.locator("input").fill("180 900")  # out of range: said at once, nothing sent
        form.locator("button").click()
        result = form.locator(".group-send-result[data-error='1']")
        result.wait_for()
        assert result.inner_text() == "level must be between 0 and 100 %"
        assert api(port, "/groups/oberkampf/commands")["commands"] == []
        form.locator("input").fill("60 900")
        form.locator("button").click()
        form.locator(".group-send-result[data-mode='unicast']").wait_for()
        sent = form.locator(".group-send-result").inner_text()
        assert sent == "sent by unicast (3 of 3 lamps do not have the group key yet): 0 of 3 applied, 3 pending", sent
        listed = api(port, "/groups/oberkampf/commands")["commands"]
        assert [(c["op"], c["args"], c["delivery"]["mode"]) for c in listed] == [("set_level", [60, 900], "unicast")]
        for i in range(20):  # each member hears its command after its own uplink; LAMP_NEVER stays silent
            for node in (LAMP, LAMP_ALARM):
                fwd.uplink(node, m.LIGHT, light_body(time.time(), DAY + 30 + i))
            if len([c for c in fwd.commands if c[2] == [60, 900]]) == 2:
                break
            page.wait_for_timeout(1000)
        group.locator(".group-progress:text-is('2 of 3 applied, 1 pending')").wait_for(timeout=15000)
        assert "set level 60 900 · by unicast · " in group.inner_text()
        group.locator(".group-send-box").evaluate("d => d.open")  # the form stays as it was across refreshes
        group.locator("details:not(.group-send-box) > summary").click()
        member_states = group.locator(".member").evaluate_all("ls => ls.map(l => [l.dataset.node, l.dataset.state])")
        assert sorted(member_states) == sorted(
            [[f"{LAMP:08x}", "applied"], [f"{LAMP_ALARM:08x}", "applied"], [f"{LAMP_NEVER:08x}", "pending"]]
        )
        assert "Rue Oberkampf 44" in group.locator(f".member[data-node='{LAMP_NEVER:08x}']").inner_text()

        OUT.mkdir(exist_ok=True)
        page.wait_for_timeout(300)  # the detail's smooth scroll
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(OUT / "web_ui.png"), full_page=True)

        # The token travelled only as a bearer header, to this gateway.
        for r in requests:
            assert TOKEN not in r.url and r.url.startswith(base)
        data_calls = [r for r in requests if "/ui/" not in r.url and r.url != base + "/"]
        assert data_calls and all(
            r.headers.get("authorization") in (f"Bearer {TOKEN}", "Bearer not-the-right-token-000") for r in data_calls
        )

        # Signing out forgets the token.
        page.click("#logout")
        page.wait_for_selector("#login-form", state="visible")
        assert page.evaluate("sessionStorage.length") == 0
        assert not problems, problems  # no script error, no CSP violation
        assert len(refused) == 1, refused
        ctx.close()
        assert gw.stop() == 0
    finally:
        if fwd is not None:
            fwd.close()
        gw.kill()
    assert TOKEN not in json.dumps(gw.lines)
