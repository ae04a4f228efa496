"""Calendars on the technician page (gateway/web/calendars.js, GET /calendars; issue 11 item 6):
a real `lumeau gateway` process with `[calendars]`, two lamps over a real Semtech UDP
forwarder (one reports holding the calendar, one does not), and Debian's Chromium."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from gateway_helpers import GatewayProcess, root_key
from playwright.sync_api import expect
from test_calendars import LYON
from test_web_ui import Forwarder, browser  # noqa: F401  (the Chromium fixture)
from waiting import wait_for_sync

from gateway.registry import Group, NodeEntry, Registry
from protocol import calendar as pc
from protocol import messages as m

TOKEN = "web-calendars-token-0123456789"
HOLDS, WAITS = 0x51, 0x52


def write_config(tmp: Path) -> Path:
    reg = Registry(tmp / "nodes.toml")
    for node, name in ((HOLDS, "Quai Saint-Antoine 4"), (WAITS, "Rue Mercière 9")):
        reg.upsert(NodeEntry(node_id=node, kind="lighting", root_key=root_key(node), name=name, site="Lyon 2e"))
    reg.put_group(Group.from_dict("rue-merciere", {"kind": "street", "members": [f"{HOLDS:08x}", f"{WAITS:08x}"]}))
    reg.save()
    (tmp / "calendars").mkdir()
    (tmp / "calendars" / "lyon.toml").write_text(LYON, encoding="utf-8")
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "web-calendars-gw"
[api]
port = 0
token = "{TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
enabled = false
[calendars]
dir = "{tmp / "calendars"}"
""")
    return cfg


def api(port: int, path: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_the_page_shows_which_nodes_hold_their_calendar(tmp_path, browser):  # noqa: F811
    gw = GatewayProcess(write_config(tmp_path))
    fwd = None
    try:
        started = gw.start()
        port = started["api_port"]
        cal = api(port, "/calendars")["calendars"][0]
        fwd = Forwarder(started["semtech_port"])
        now = time.time()
        hello = {0: "0.1.0", 1: m.KIND_LIGHTING, 4: m.RST_POWER_ON}
        for node in (HOLDS, WAITS):
            fwd.uplink(node, m.HELLO, hello, at=now - 60)
        held = {0: m.EV_CALENDAR, 1: m.SEV_INFO, 2: pc.hash_value(bytes.fromhex(cal["hash"])), 4: 1}
        fwd.uplink(HOLDS, m.EVENT, held, at=now - 30)
        wait_for_sync(
            lambda: (
                api(port, "/calendars")["nodes"].get(f"{HOLDS:08x}", {}).get("in_sync")
                and f"{WAITS:08x}" in api(port, "/calendars")["nodes"]
            ),
            20,
            "the gateway saw one lamp holding the calendar",
        )

        page = browser.new_context().new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#token", TOKEN)
        page.click("#login-button")
        page.wait_for_selector("#app-view", state="visible")

        item = page.locator(f'#calendars li[data-calendar="{cal["name"]}"]')
        expect(item).to_contain_text("1 of 2 nodes hold it")
        expect(item).to_contain_text(f"lighting · {cal['bytes']} B")
        waiting = item.locator("button.node-link")
        expect(waiting).to_have_count(1)
        expect(waiting).to_have_text("Rue Mercière 9")
        waiting.click()  # the lamp still waiting: its view says so
        expect(page.locator("#facts")).to_contain_text(f"{cal['name']}: pending (holds none)")
        page.locator(f'#nodes tr[data-node="{HOLDS:08x}"]').first.click()
        expect(page.locator("#facts")).to_contain_text(f"{cal['name']}: held (in step)")
        assert api(port, "/calendars")["nodes"][f"{WAITS:08x}"]["state"] == "pending"
        # a node the gateway gave up on (3 rounds unconfirmed; gateway/calendar_sync.py `state`), in the
        # page's own module: its fact, and the card lists it apart from the nodes still waiting
        failed = page.evaluate(
            """async ([doc]) => {
                const c = await import("/ui/calendars.js");
                c.renderCalendars(doc, new Map([["00000052", { name: "Rue Mercière 9" }]]), () => {});
                const card = document.querySelector("#calendars .calendar-failed");
                return [c.calendarFact(c.calendarsByNode(doc), "00000052"), card && card.textContent];
            }""",
            [
                {
                    "calendars": [cal],
                    "nodes": {"00000052": {"assigned": cal["hash"], "held": None, "in_sync": False, "state": "failed"}},
                }
            ],
        )
        assert failed == [
            f"{cal['name']}: failed (holds none; 3 rounds unconfirmed, sent again after its next boot)",
            "Failed (again at their next boot): Rue Mercière 9",
        ]
        assert problems == []
    finally:
        if fwd is not None:
            fwd.close()
        gw.kill()
