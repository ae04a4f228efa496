"""Update campaigns on the technician page (gateway/web/campaigns.js) in Debian's Chromium.

The page is served by the real API with campaigns (tests/test_campaigns.py Rig, on its own
loop in a thread: the in-test StepDelivery reports receiving/verifying as FUOTA would); the
technician starts a campaign from the page with a real signed image, watches the canary's
progress, the nodes' HELLOs through the real pipeline move it to installed and healthy, then
pauses, resumes and aborts it from the page; a bad image is refused with the gateway's reason.
"""

from __future__ import annotations

import time

import pytest
from campaign_helpers import OLD_BUNDLE, StepDelivery, build_images, hello, light
from playwright.sync_api import expect
from test_campaigns import LAMPS, TOKEN
from test_fleet_cli import Threaded
from test_web_ui import OUT, browser  # noqa: F401  (the Chromium fixture)

TIMEOUT = 15_000  # ms: the page refreshes every 5 s


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return build_images(tmp_path_factory.mktemp("web-campaign-images"))


def test_a_technician_runs_a_campaign_from_the_page(tmp_path, images, browser):  # noqa: F811
    delivery = StepDelivery()
    gw = Threaded(tmp_path, delivery)
    try:
        for n in LAMPS:
            gw.run(gw.rig.send(hello, n, OLD_BUNDLE))
        page = browser.new_context().new_page()
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(gw.url + "/")
        page.fill("#token", TOKEN)
        page.click("#login-button")
        page.wait_for_selector("#app-view", state="visible")
        expect(page.locator("#no-campaigns")).to_be_visible()

        # a file that is no release: the gateway's reason, nothing started
        bad = tmp_path / "notes.lup"
        bad.write_bytes(b"LUP1\x00\x05hello")
        page.click(".campaigns-card summary")
        expect(page.locator("#campaign-group option")).to_have_count(2, timeout=TIMEOUT)
        page.select_option("#campaign-group", "quai")
        page.set_input_files("#campaign-image", str(bad))
        page.click("#campaign-start")
        expect(page.locator("#campaign-error")).to_contain_text("not a release image")
        assert gw.rig.campaigns.all() == []

        page.set_input_files("#campaign-image", str(images.path))
        page.fill("#campaign-canary", "1")
        page.click("#campaign-start")
        item = page.locator('#campaigns li[data-campaign="1"]')
        expect(item).to_contain_text("9.9.0 → quai", timeout=TIMEOUT)
        expect(item.locator("[data-campaign-state]")).to_have_text("running")
        canary = item.locator('li[data-node="00000001"]')
        expect(canary.locator(".badge")).to_have_text("receiving 50 %", timeout=TIMEOUT)
        expect(canary.locator("progress")).to_have_count(1)
        expect(item.locator('li[data-node="00000002"] .badge')).to_have_text("pending")

        gw.loop.call_soon_threadsafe(delivery.step)
        gw.loop.call_soon_threadsafe(delivery.step)
        expect(canary.locator(".badge")).to_have_text("verifying", timeout=TIMEOUT)
        t = time.time()
        gw.run(gw.rig.send(hello, 1, images.manifest["bundle"], "9.9.0", at=t))
        expect(canary.locator(".badge")).to_have_text("installed", timeout=TIMEOUT)
        gw.run(gw.rig.send(light, 1, at=t + 151))
        expect(canary.locator(".badge")).to_have_text("healthy", timeout=TIMEOUT)
        expect(item.locator('li[data-node="00000003"] .badge')).to_have_text("receiving 50 %", timeout=TIMEOUT)
        expect(item).to_contain_text("stage rest")
        OUT.mkdir(exist_ok=True)
        item.screenshot(path=str(OUT / "web_campaigns.png"))  # for people: how the card looks

        item.locator('button[data-action="pause"]').click()
        expect(item.locator("[data-campaign-state]")).to_have_text("paused", timeout=TIMEOUT)
        expect(item.locator('li[data-node="00000003"] .badge')).to_have_text("pending")
        item.locator('button[data-action="resume"]').click()
        expect(item.locator("[data-campaign-state]")).to_have_text("running", timeout=TIMEOUT)
        item.locator('button[data-action="abort"]').click()
        expect(item.locator("[data-campaign-state]")).to_have_text("aborted", timeout=TIMEOUT)
        expect(item).to_contain_text("aborted by request")
        expect(item.locator("button")).to_have_count(0)
        assert gw.rig.campaigns.get(1).state == "aborted"
        assert problems == []
    finally:
        gw.close()
