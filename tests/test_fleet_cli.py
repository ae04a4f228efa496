"""`lumeau fleet update|status|pause|resume|abort` against a real gateway API with campaigns.

The API, store, pipeline and campaigns run on their own loop in a thread (tests/test_campaigns.py
Rig); the command runs here, over HTTP, as a technician runs it. The nodes' HELLOs and reports go
through the real pipeline.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from campaign_helpers import OLD_BUNDLE, StepDelivery, build_images, hello, light
from test_campaigns import LAMPS, TOKEN, Rig

from lumeau.cli import main as lumeau_main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return build_images(tmp_path_factory.mktemp("fleet-images"))


class Threaded:
    def __init__(self, tmp_path, delivery) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rig = self.run(Rig(tmp_path, delivery).__aenter__())
        self.url = f"http://127.0.0.1:{self.rig.api.port}"

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.run(self.rig.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def gw(tmp_path, monkeypatch):
    monkeypatch.setenv("LUMEAU_API_TOKEN", TOKEN)
    s = Threaded(tmp_path, StepDelivery(free=True))
    for n in LAMPS:
        s.run(s.rig.send(hello, n, OLD_BUNDLE))
    yield s
    s.close()


def fleet(gw, *args: str) -> int:
    return lumeau_main(["fleet", *args, "--gateway", gw.url])


def test_update_then_status_node_by_node_then_pause_resume_abort(gw, images, capsys):
    assert fleet(gw, "update", "--group", "quai", "--release", str(images.path), "--canary", "0.5") == 0
    out = capsys.readouterr().out
    assert "campaign 1 started: release 9.9.0 (lighting, full image" in out and "2 canary node(s)" in out
    gw.run(gw.rig.wait_node(1, 2, "verifying"))
    t = time.time()
    gw.run(gw.rig.send(hello, 1, images.manifest["bundle"], "9.9.0", at=t))
    gw.run(gw.rig.wait_node(1, 1, "installed"))
    assert fleet(gw, "status", "1") == 0
    out = capsys.readouterr().out
    assert "campaign 1: group quai, release 9.9.0" in out and "running, stage canary" in out
    assert "  00000001  canary  installed" in out and "  00000002  canary  verifying" in out
    assert "  00000003  rest    pending" in out
    assert fleet(gw, "status") == 0
    assert "1 verifying, 1 installed" in capsys.readouterr().out
    assert fleet(gw, "pause", "1") == 0
    assert "paused" in capsys.readouterr().out
    assert fleet(gw, "pause", "1") == 1
    assert "cannot pause" in capsys.readouterr().err
    assert fleet(gw, "resume", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"
    assert fleet(gw, "abort", "1") == 0
    assert "aborted (aborted by request)" in capsys.readouterr().out


def test_follow_ends_with_the_halt_and_exit_1(gw, images, capsys):
    gw.run(gw.rig.send(light, 1, at=time.time()))
    code = fleet(gw, "update", "--group", "quai", "--release", str(images.path), "--window", "0.5", "--follow")
    captured = capsys.readouterr()
    assert code == 1
    assert "halted (canaries not healthy within 0.5 s: 00000001)" in captured.out


def test_refusals_are_said(gw, images, tmp_path, capsys):
    bad = tmp_path / "bad.lup"
    bad.write_bytes(b"LUP0 nothing")
    assert fleet(gw, "update", "--group", "quai", "--release", str(bad)) == 1
    assert "not a release image" in capsys.readouterr().err
    assert fleet(gw, "update", "--group", "nowhere", "--release", str(images.path)) == 1
    assert "no such group" in capsys.readouterr().err
    assert fleet(gw, "update", "--group", "mixte", "--release", str(images.path)) == 1
    assert "00000005 is irrigation" in capsys.readouterr().err
    assert fleet(gw, "status", "7") == 1
    assert "HTTP 404 no such campaign" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        fleet(gw, "update", "--group", "quai", "--release", str(images.path), "--canary", "1.5")
    assert e.value.code == 2
