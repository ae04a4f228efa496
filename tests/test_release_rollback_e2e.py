"""The issue's promise, every part real and in its own process: "a release that crashes on boot
rolls itself back, and the gateway sees it and reports it".

    lumeau gateway (serial transport on the virtual board's UART1, SQLite store, API)
      -> lumeau node provision --gateway --release-key (the city's public key in the config)
      -> lumeau node flash --gateway (waits for the node's HELLO, bundle id of the factory release)
      -> lumeau node update CRASH.lup --gateway --node (the gateway now expects that release)
      -> the release crashes at boot, the watchdog and the boot counter roll it back (SPEC §13)
      -> the node's HELLO from the factory release: rolled_back in the API, /metrics and the log
      -> the gateway killed (-9) and started again: the node's state still says rolled_back.

The rollback takes MAX_BOOTS watchdog periods (about half a minute) by design.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway_helpers import GatewayProcess
from waiting import wait_for_sync

from lumeau import bundle as bundles
from lumeau import release as releases
from simulator.board import MICROPYTHON_MJS
from simulator.board_proc import BoardProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not MICROPYTHON_MJS.exists() or not shutil.which("node"), reason="needs Node.js and node_modules (make setup)"
)
TOKEN = "release-e2e-api-token-0123456789"
SITE = {
    "radio": {"type": "uart", "uart": {"id": 1, "baud": 115200}},
    "pins": {"lamp": 25, "lamp_current": 34, "ambient": 35, "pir": 26, "supply": 36},
    "report_interval_s": 30,
}


def lumeau(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUMEAU_API_TOKEN": TOKEN}  # the token stays out of argv
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=180, env=env)


def api(port: int, path: str, text: bool = False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    return body if text else json.loads(body)


def test_a_release_that_crashes_at_boot_is_reported_rolled_back(tmp_path):
    d = tmp_path / "rel"
    old = bundles.build("lighting", "esp32", d / "old")
    src = d / "src"
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, src / pkg)
    rt = src / "firmware" / "runtime.py"
    rt.write_text('raise RuntimeError("release 0.1.2 is broken")\n' + rt.read_text())
    crash = bundles.build("lighting", "esp32", d / "crash", source_root=src)
    key = Ed25519PrivateKey.generate()
    image = d / "crash.lup"
    built = releases.build(crash, key, ["0.1.0"], old, "0.1.2")
    image.write_bytes(built.image)
    old_id = releases.bundle_id(old)

    board = BoardProcess(tmp_path / "flash", uarts=[1], control=tmp_path / "ctl").start()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "release-e2e"
[api]
port = 0
token = "{TOKEN}"
[upstream]
enabled = false
[[serial]]
port = "{board.uart_port(1)}"
mode = "wired"
reconnect_min_s = 0.05
reconnect_max_s = 0.2
""")
    gw = GatewayProcess(cfg)
    try:
        port = gw.start()["api_port"]
        url = f"http://127.0.0.1:{port}"
        site, config = tmp_path / "site.json", tmp_path / "node.json"
        site.write_text(json.dumps(SITE))
        pub = releases.public_bytes(key.public_key()).hex()
        p = lumeau("node", "provision", "--kind", "lighting", "--gateway", url, "--template", str(site),
                   "--release-key", pub, "--lat", "48.85", "--lon", "2.35", "--out", str(config))  # fmt: skip
        assert p.returncode == 0, p.stderr
        node = json.loads(config.read_text())["node_id"]
        assert json.loads(config.read_text())["release_key"] == pub
        p = lumeau("node", "flash", "--port", board.port, "--bundle", str(d / "old"), "--config", str(config),
                   "--gateway", url, "--hello-timeout", "40")  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        assert api(port, f"/nodes/{node}")["release"]["running"] == old_id[:6]

        p = lumeau("node", "update", str(image), "--port", board.port, "--settle", "1", "--gateway", url,
                   "--node", node)  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        assert "expected on 0.1.2" in p.stdout
        rel = api(port, f"/nodes/{node}")["release"]
        assert rel["expected"] == {"version": "0.1.2", "bundle": built.manifest["bundle"]}
        assert rel["state"] == "updating"

        def rolled_back() -> dict | None:
            r = api(port, f"/nodes/{node}")["release"]
            return r if r["state"] == "rolled_back" else None

        rel = wait_for_sync(rolled_back, 120, what="the rollback reported by the gateway", interval=0.5)
        assert rel["running"] == old_id[:6] and rel["rollbacks"] == 1
        metrics = api(port, "/metrics", text=True)
        assert "lumeau_release_rollbacks_total 1" in metrics
        assert 'lumeau_nodes_release{state="rolled_back"} 1' in metrics
        lines = [x for x in gw.lines if str(x.get("msg", "")).startswith("node rolled back")]
        assert len(lines) == 1 and lines[0]["node"] == node and lines[0]["level"] == "warning"
        assert "0.1.2" in lines[0]["msg"] and old_id[:6] in lines[0]["msg"]
        assert pub not in json.dumps(gw.lines)

        assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
        port = gw.start()["api_port"]
        rel = api(port, f"/nodes/{node}")["release"]
        assert rel["state"] == "rolled_back" and rel["expected"]["version"] == "0.1.2"
        assert 'lumeau_nodes_release{state="rolled_back"} 1' in api(port, "/metrics", text=True)
    finally:
        gw.kill()
        board.stop()
