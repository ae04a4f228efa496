"""`lumeau node update` over the wired serial path, on the virtual board (real MicroPython behind a
pseudo-terminal, simulator/board_proc.py) with a node flashed by `lumeau node flash`.

A delta release (one module changed) is uploaded, cut off midway and resumed, verified and
staged by the node's own updater, then the board resets into it on trial; a release signed by
another key is refused and leaves the board's files as they were."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lumeau import bundle as bundles
from lumeau import release as releases
from lumeau import update as updates
from simulator.board import MICROPYTHON_MJS
from simulator.board_proc import BoardProcess

pytestmark = pytest.mark.skipif(
    not MICROPYTHON_MJS.exists() or not shutil.which("node"), reason="needs Node.js and node_modules (make setup)"
)

SITE = {
    "radio": {"type": "uart", "uart": {"id": 1, "baud": 115200}},
    "pins": {"lamp": 25, "lamp_current": 34, "ambient": 35, "pir": 26, "supply": 36},
    "report_interval_s": 30,
}


def lumeau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def releases_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("upd")
    old = bundles.build("lighting", "esp32", d / "old")
    src = d / "src"
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, src / pkg)
    up = src / "firmware" / "uplink.py"
    up.write_text(up.read_text() + "\n\ndef _fix_marker():\n    return 1\n")
    new = bundles.build("lighting", "esp32", d / "new", source_root=src)
    key = Ed25519PrivateKey.generate()
    (d / "pub").write_text(releases.public_bytes(key.public_key()).hex())
    (d / "delta.lup").write_bytes(releases.build(new, key, ["0.1.0"], old, "0.1.1").image)
    # a release that crashes at boot: the node's runtime module raises on import
    rt = src / "firmware" / "runtime.py"
    good = rt.read_text()
    rt.write_text('raise RuntimeError("release 0.1.2 is broken")\n' + good)
    crash = bundles.build("lighting", "esp32", d / "crash", source_root=src)
    rt.write_text(good)
    (d / "crash.lup").write_bytes(releases.build(crash, key, ["0.1.0"], old, "0.1.2").image)
    other = Ed25519PrivateKey.generate()
    (d / "forged.lup").write_bytes(releases.build(new, other, ["0.1.0"], old, "0.1.1").image)
    return d


@pytest.fixture
def flashed(tmp_path, releases_dir):
    site = tmp_path / "site.json"
    site.write_text(json.dumps({**SITE, "release_key": (releases_dir / "pub").read_text()}))
    cfg = tmp_path / "node.json"
    p = lumeau("node", "provision", "--kind", "lighting", "--new-registry", "--registry", str(tmp_path / "n.toml"),
               "--template", str(site), "--lat", "48.85", "--lon", "2.35", "--out", str(cfg))  # fmt: skip
    assert p.returncode == 0, p.stderr
    with BoardProcess(tmp_path / "flash", uarts=[1], control=tmp_path / "ctl") as b:
        p = lumeau("node", "flash", "--port", b.port, "--settle", "2", "--timeout", "5",
                   "--bundle", str(releases_dir / "old"), "--config", str(cfg))  # fmt: skip
        assert p.returncode == 0, p.stdout + p.stderr
        yield b


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*") if p.is_file()}


def board_eval(port: str, code: str) -> str:
    p = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "exec", code],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def test_a_delta_installs_over_serial_resumes_and_boots_on_trial(flashed, releases_dir):
    old = bundles.load(releases_dir / "old")
    st = json.loads((flashed.flash_dir / "ab.json").read_text())  # written by the wired flash
    assert st["a"] == "" and st["id"] == {"": releases.bundle_id(old)}
    image = releases_dir / "delta.lup"
    with pytest.raises(updates.UpdateError, match="stopped at"):
        updates.update(flashed.port, image, log=lambda s: None, stop_after=3, settle_s=0)
    part = flashed.flash_dir / "upd.lup.part"
    assert part.stat().st_size == 3 * updates.CHUNK
    p = lumeau("node", "update", str(image), "--port", flashed.port, "--settle", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"resuming the upload at {3 * updates.CHUNK} of {image.stat().st_size} bytes" in p.stdout
    assert "installed on trial" in p.stdout and "Traceback" not in p.stdout
    assert not part.exists() and not (flashed.flash_dir / "upd.lup").exists()
    new = bundles.load(releases_dir / "new")
    slot = flashed.flash_dir / "s0"
    for f in new.files:
        if f.path.endswith(".mpy"):
            assert hashlib.sha256((slot / f.path).read_bytes()).hexdigest() == f.sha256, f.path
    # the hard reset booted it once (counted); the factory files are untouched
    deadline = time.monotonic() + 10
    while json.loads((flashed.flash_dir / "ab.json").read_text())["n"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    st = json.loads((flashed.flash_dir / "ab.json").read_text())
    assert st["t"] == "s0" and st["a"] == "" and st["n"] == 1 and st["v"]["s0"] == "0.1.1"
    for f in old.files:
        assert hashlib.sha256((flashed.flash_dir / f.path).read_bytes()).hexdigest() == f.sha256
    # the board runs the new code from its slot (a tool's soft reset is not counted as a boot)
    out = board_eval(flashed.port, "import sys\nfrom firmware import uplink\nprint(uplink._fix_marker(), sys.path[0])")
    assert out.endswith("1 /s0"), out
    assert json.loads((flashed.flash_dir / "ab.json").read_text())["n"] == 1
    # a wired flash afterwards is what boots: the A/B state names it, the slots go
    p = lumeau("node", "flash", "--port", flashed.port, "--settle", "2", "--timeout", "5",
               "--bundle", str(releases_dir / "old"))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "over-the-air slots cleared" in p.stdout
    st = json.loads((flashed.flash_dir / "ab.json").read_text())
    assert st == {"a": "", "t": "", "n": 0, "id": {"": releases.bundle_id(old)}, "v": {"": "0.1.0"}, "rb": ""}
    assert not slot.exists()


def test_a_forged_release_is_refused_and_changes_nothing(flashed, releases_dir):
    before = snapshot(flashed.flash_dir)
    p = lumeau("node", "update", str(releases_dir / "forged.lup"), "--port", flashed.port, "--settle", "0")
    assert p.returncode == 1
    assert "refused the release: bad signature" in p.stderr
    after = snapshot(flashed.flash_dir)
    assert {k: v for k, v in after.items() if not k.startswith("state/")} == {
        k: v for k, v in before.items() if not k.startswith("state/")
    }


def test_a_release_that_crashes_at_boot_rolls_back_by_itself(flashed, releases_dir):
    # boot.py arms the watchdog for a release on trial: the crash leaves the board at the REPL,
    # the watchdog resets it, each boot is counted, and after slots.MAX_BOOTS the factory boots
    p = lumeau("node", "update", str(releases_dir / "crash.lup"), "--port", flashed.port, "--settle", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    state = flashed.flash_dir / "ab.json"
    deadline = time.monotonic() + 90
    while json.loads(state.read_text())["rb"] != "s0":
        assert time.monotonic() < deadline, state.read_text()
        time.sleep(0.5)
    st = json.loads(state.read_text())
    assert st["t"] == "" and st["a"] == "" and st["n"] == 0
    # the factory release runs the node again: main.py keeps running, and no watchdog reset
    # comes in more than a watchdog period (the crashed trial sat at the REPL until it bit)
    deadline = time.monotonic() + 20
    while not flashed.control({"get": "state"})["running"]:
        assert time.monotonic() < deadline, "the rolled-back node does not run"
        time.sleep(0.2)
    boots = flashed.control({"get": "state"})["boots"]
    time.sleep(10)  # longer than the 8 s watchdog: nothing to wait for, a period to live through
    now = flashed.control({"get": "state"})
    assert now["running"] and now["boots"] == boots, now
