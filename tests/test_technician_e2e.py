"""The technician's whole path, every part real and in its own process:

    lumeau node build  ->  lumeau node provision (through the running gateway's API)
      ->  lumeau node flash (mpremote's transport, the virtual board's USB REPL)
      ->  the board boots main.py: the real firmware, on real MicroPython, wired to
          the gateway through the board's UART1 (a pty the gateway opens as a serial port)
      ->  HELLO registered at the gateway (flash waits for it through the API)
      ->  the node's first LIGHT report at the sink (`lumeau sink`), via the gateway's upstream.

The first report comes one report interval after boot (30 s, the firmware's
minimum), so this test takes about half a minute by design.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gateway_helpers import GatewayProcess
from waiting import wait_for_sync

from simulator.board import MICROPYTHON_MJS
from simulator.board_proc import BoardProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not MICROPYTHON_MJS.exists(), reason="needs node_modules (make setup)")

API_TOKEN = "technician-e2e-api-token-0123"
SINK_TOKEN = "technician-e2e-sink-token-0123"
SITE = {
    "radio": {"type": "uart", "uart": {"id": 1, "baud": 115200}},
    "pins": {"lamp": 25, "lamp_current": 34, "ambient": 35, "pir": 26, "supply": 36},
    "report_interval_s": 30,
}
FIRST_REPORT_TIMEOUT_S = 60  # HELLO jitter (<= 10 s) + one report interval (30 s +- 5 %) + margin


def lumeau(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=180, env=env)


def start_sink(tmp: Path) -> tuple[subprocess.Popen, str]:
    tok = tmp / "sink.token"
    tok.write_text(SINK_TOKEN)
    tok.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(tmp / "sink.db"), "--port", "0", "--token-file", str(tok)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
    assert m, "the sink did not start"
    return proc, m.group(1).rstrip("/")


def sink_records(base: str) -> list[dict]:
    req = urllib.request.Request(f"{base}/v1/records?limit=1000", headers={"Authorization": f"Bearer {SINK_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["records"]


def api(port: int, path: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_build_provision_flash_hello_and_first_report(tmp_path):
    board = BoardProcess(tmp_path / "flash", uarts=[1], control=tmp_path / "ctl", name="rue-test-12").start()
    sink, sink_url = start_sink(tmp_path)
    (tmp_path / "upstream.token").write_text(SINK_TOKEN)
    (tmp_path / "upstream.token").chmod(0o600)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "technician-e2e"
[api]
port = 0
token = "{API_TOKEN}"
[upstream]
url = "{sink_url}/v1/records"
token_file = "upstream.token"
batch_max_age_s = 0.2
backoff_initial_s = 0.2
[[serial]]
port = "{board.uart_port(1)}"
mode = "wired"
reconnect_min_s = 0.05
reconnect_max_s = 0.2
""")
    gw = GatewayProcess(cfg)
    try:
        api_port = gw.start()["api_port"]
        gateway_url = f"http://127.0.0.1:{api_port}"

        bundle = tmp_path / "bundle"
        built = lumeau("node", "build", "--target", "esp32", "--kind", "lighting", "--out", str(bundle))
        assert built.returncode == 0, built.stderr

        site = tmp_path / "site.json"
        site.write_text(json.dumps(SITE))
        config = tmp_path / "node.json"
        env = {**__import__("os").environ, "LUMEAU_API_TOKEN": API_TOKEN}  # the token stays out of argv
        prov = lumeau(
            "node",
            "provision",
            "--kind",
            "lighting",
            "--gateway",
            gateway_url,
            "--template",
            str(site),
            "--name",
            "Rue de Test 12",
            "--site",
            "Rue de Test",
            "--lat",
            "48.8566",
            "--lon",
            "2.3522",
            "--out",
            str(config),
            env=env,
        )
        assert prov.returncode == 0, prov.stderr
        node_id = int(json.loads(config.read_text())["node_id"], 16)  # 8 hex digits, as every tool prints it
        node = api(api_port, f"/nodes/{node_id:08x}")
        assert node["kind"] == "lighting" and node["name"] == "Rue de Test 12" and "root_key" not in node
        assert node["last_seen"] is None

        t0 = time.time()
        flashed = lumeau(
            "node",
            "flash",
            "--port",
            board.port,
            "--bundle",
            str(bundle),
            "--config",
            str(config),
            "--gateway",
            gateway_url,
            "--hello-timeout",
            "40",
            env=env,
        )
        assert flashed.returncode == 0, flashed.stdout + flashed.stderr
        assert "HELLO at the gateway" in flashed.stdout

        node = api(api_port, f"/nodes/{node_id:08x}")
        assert (
            node["last_seen"] >= t0
            and node["reported_firmware"] == json.loads((bundle / "manifest.json").read_text())["firmware_version"]
        )
        assert node["bad_mic"] == 0

        records: list[dict] = []

        def a_light_report() -> bool:
            records[:] = [r for r in sink_records(sink_url) if int(r["node"], 16) == node_id]
            return any(r["type"] == "light" for r in records)

        try:
            wait_for_sync(a_light_report, FIRST_REPORT_TIMEOUT_S, interval=0.5)
        except AssertionError:
            pass  # said below, with what did arrive
        types = [r["type"] for r in records]
        assert "hello" in types, f"no HELLO at the sink: {types}"
        assert "light" in types, f"no LIGHT report at the sink within {FIRST_REPORT_TIMEOUT_S} s: {types}"
        light = next(r for r in records if r["type"] == "light")
        counters = [r["counter"] for r in records]
        assert counters == sorted(counters) and len(set(counters)) == len(counters)
        assert light["counter"] > next(r for r in records if r["type"] == "hello")["counter"]
        # The node's outputs on the board: the lamp is driven (the app runs, not a fail-safe stop).
        assert board.control({"get": "outputs"})["pwm"].get("25") is not None
    finally:
        gw.kill()
        sink.terminate()
        sink.wait(10)
        board.stop()


def crashing_sources(tmp: Path, after_ms: int) -> Path:
    """firmware/ and protocol/ as in the repository, but the lighting app raises a KeyError `after_ms` in."""
    src = tmp / "src"
    for part in ("firmware", "protocol"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    app = src / "firmware" / "lighting.py"
    text = app.read_text()
    assert text.count("    async def run(self):\n") == 1
    crash = f"    async def run(self):\n        await self.hal.sleep_ms({after_ms})\n        {{}}['e2e']\n"
    app.write_text(text.replace("    async def run(self):\n", crash))
    return src


@pytest.mark.parametrize("after_ms, seen", [(0, "console"), (6000, "gateway")])
def test_flash_fails_with_the_reason_when_the_app_crash_loops(tmp_path, after_ms, seen):
    # Issue 17 item 3 end to end: a real gateway, a real board, an app that raises. At once, flash sees
    # the traceback on the console; later than its console watch (--settle 3 s), the app_exception
    # alarm at the gateway, during --run-check.
    from lumeau import bundle as bundles

    board = BoardProcess(tmp_path / "flash", uarts=[1], control=tmp_path / "ctl", name="rue-crash-1").start()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "crash-e2e"
[api]
port = 0
token = "{API_TOKEN}"
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
        gateway_url = f"http://127.0.0.1:{gw.start()['api_port']}"
        bundle = tmp_path / "bundle"
        bundles.build("lighting", "esp32", bundle, source_root=crashing_sources(tmp_path, after_ms))
        config = tmp_path / "node.json"
        env = {**__import__("os").environ, "LUMEAU_API_TOKEN": API_TOKEN}
        prov = lumeau(
            "node", "provision", "--kind", "lighting", "--board", "vboard", "--gateway", gateway_url,
            "--out", str(config), env=env,
        )  # fmt: skip
        assert prov.returncode == 0, prov.stderr
        node_id = int(json.loads(config.read_text())["node_id"], 16)
        flashed = lumeau(
            "node", "flash", "--port", board.port, "--bundle", str(bundle), "--config", str(config),
            "--gateway", gateway_url, "--hello-timeout", "40", "--run-check", "30", env=env,
        )  # fmt: skip
        out = flashed.stdout + flashed.stderr
        assert flashed.returncode == 1, out
        if seen == "console":
            assert "the node failed to start" in flashed.stderr and "KeyError: e2e [node_failed]" in flashed.stderr
            return
        assert "HELLO at the gateway" in flashed.stdout, out
        assert f"node {node_id:08x} started, but the app raised a KeyError" in flashed.stderr, out
        assert "[app_failed]" in flashed.stderr, out
        # The node keeps its street lit while its app is down (the runtime's fail-safe).
        assert board.control({"get": "outputs"})["pwm"].get("25") == 65535  # full duty (duty_u16)
        alarms = api(int(gateway_url.rsplit(":", 1)[1]), f"/nodes/{node_id:08x}")["open_alarms"]
        assert len(alarms) == 1, alarms
    finally:
        gw.kill()
        board.stop()
