"""firmware/manifest.py lists exactly what each kind of device imports; main.py wires a board.

The import closure is computed from the source with `ast` (every import,
also inside functions), starting from main.py and the modules main.build()
imports for that kind, so a module added to the node without a manifest
entry (or left in the manifest after it stopped being used) fails here.
"""

from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

import pytest
from conftest import ROOT
from test_hal_machine import FakeTime, fake_machine

from firmware import main as board_main
from firmware import manifest
from firmware.bridge import Bridge
from firmware.radio import UartRadio
from firmware.radio_lora import LoRaRadio

# What main.read_config(), main.build() and main.release_state() import for each kind, beyond main.py's
# own top-level imports (boot.py imports firmware.slots too), and firmware.updater (`lumeau node update`).
ENTRIES = {
    "lighting": [
        "firmware.config",
        "firmware.hal_machine",
        "firmware.radio",
        "firmware.radio_lora",
        "firmware.radio_lorawan",
        "firmware.runtime",
        "firmware.lighting",
        "firmware.ble",
        "firmware.slots",
        "firmware.updater",
    ],
    "irrigation": [
        "firmware.config",
        "firmware.hal_machine",
        "firmware.radio",
        "firmware.radio_lora",
        "firmware.radio_lorawan",
        "firmware.runtime",
        "firmware.irrigation",
        "firmware.ble",
        "firmware.battery",  # irrigation.battery = 1 (main.build)
        "firmware.hal_battery",
        "firmware.slots",
        "firmware.updater",
    ],
    "bridge": [
        "firmware.config",
        "firmware.hal_machine",
        "firmware.radio",
        "firmware.radio_lora",
        "firmware.bridge",
        "firmware.slots",
        "firmware.updater",  # main.release_state installs an image completed over LoRa, for every kind
    ],
}


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    out = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # from firmware import astro
        elif (  # __import__("firmware.calendar", ...): a module named by a string (no qstr at boot)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.add(node.args[0].value)
    return {name for name in out if name.split(".")[0] in ("firmware", "protocol")}


def module_file(name: str) -> Path | None:
    p = ROOT / Path(*name.split(".")).with_suffix(".py")
    return p if p.exists() else None


def closure(kind: str) -> set[Path]:
    seen: set[Path] = set()
    # main.py imports per kind inside its functions: its top level plus ENTRIES[kind]
    todo = list(imports_of(ROOT / "firmware" / "main.py", True)) + ENTRIES[kind] + ["firmware", "protocol"]
    while todo:
        name = todo.pop()
        f = module_file(name)
        if f is None and (ROOT / Path(*name.split(".")) / "__init__.py").exists():
            f = ROOT / Path(*name.split(".")) / "__init__.py"
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += imports_of(f)
        parts = name.split(".")
        if len(parts) > 1:  # importing firmware.x runs firmware/__init__.py
            todo.append(parts[0])
    return seen


@pytest.mark.parametrize("kind", sorted(manifest.FIRMWARE))
def test_manifest_is_the_import_closure(kind):
    listed = {ROOT / src for src, _ in manifest.device_files(kind)} - {
        ROOT / "firmware" / "main.py",
        ROOT / "firmware" / "boot.py",
    }
    needed = closure(kind)
    assert sorted(p.relative_to(ROOT).as_posix() for p in needed - listed) == []  # missing on the device
    assert sorted(p.relative_to(ROOT).as_posix() for p in listed - needed) == []  # carried for nothing
    assert all((ROOT / src).exists() for src, _ in manifest.device_files(kind))


def test_device_paths():
    files = dict(manifest.device_files("bridge"))
    assert files["firmware/main.py"] == "/main.py" and files["firmware/boot.py"] == "/boot.py"
    assert files["firmware/bridge.py"] == "/firmware/bridge.py"
    assert files["protocol/nodelora.py"] == "/protocol/nodelora.py"
    assert "simulator/hal_sim.py" not in files and "protocol/expand.py" not in files


def test_manifest_freezes_under_micropythons_manifest_tool():
    calls: list[tuple] = []
    g = {
        "freeze": lambda *a, **k: None,
        "require": lambda name: calls.append(("require", name)),
        "package": lambda name, files=None, base_path=".": calls.append(("package", name, tuple(files), base_path)),
        "__file__": str(ROOT / "firmware" / "manifest.py"),
    }
    exec(compile((ROOT / "firmware" / "manifest.py").read_text(), "manifest.py", "exec"), g)
    assert ("require", "lora-sx127x") in calls and ("require", "lora-async") in calls
    pkgs = {c[1]: c[2] for c in calls if c[0] == "package"}
    assert set(pkgs["protocol"]) == set(manifest.PROTOCOL).union(*manifest.PROTOCOL_FOR.values())
    assert "bridge.py" in pkgs["firmware"] and "hal_sim.py" not in pkgs["firmware"]


def cfg_for(kind: str, radio: dict) -> dict:
    from firmware import config

    d = {"node_id": 7, "kind": kind, "radio": radio, "pins": {"lamp": 25, "zone1": 12, "cs": 18, "dio0": 26}}
    if kind != "bridge":
        d["root_key"] = "00" * 16
    return config.load(json.dumps(d).encode())


def test_build_a_wired_lighting_node(monkeypatch, tmp_path):
    mach = fake_machine()
    opened = []

    class UART:
        def __init__(self, uid, **kw):
            opened.append((uid, kw))

    mach.UART = UART
    monkeypatch.setattr(board_main, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(
        "firmware.hal_machine.MachineHAL.__init__.__defaults__", ("/state", None, None, FakeTime()), raising=False
    )
    cfg = cfg_for("lighting", {"type": "uart", "uart": {"id": 2, "baud": 9600, "tx": 17}})
    hal, coro = board_main.build(cfg, machine=mach)
    coro.close()
    assert opened == [(2, {"baudrate": 9600, "timeout": 0, "tx": 17})]
    assert isinstance(board_main.make_radio(cfg, hal, mach), UartRadio)


def test_build_a_bridge_on_a_lora_modem(monkeypatch, tmp_path):
    mach = fake_machine()
    made = []

    class AsyncSX1276:
        def __init__(self, spi, cs, **kw):
            made.append(kw)

        def configure(self, cfg):
            self.cfg = cfg

    mach.SPI = lambda bus, **kw: ("spi", bus)
    monkeypatch.setitem(sys.modules, "machine", mach)
    monkeypatch.setitem(sys.modules, "lora", types.SimpleNamespace(AsyncSX1276=AsyncSX1276))
    monkeypatch.setattr(board_main, "StdioPort", lambda: None)
    monkeypatch.setattr(board_main, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(
        "firmware.hal_machine.MachineHAL.__init__.__defaults__", ("/state", None, None, FakeTime()), raising=False
    )
    cfg = cfg_for("bridge", {"type": "lora", "sf": 7, "freq_hz": 869525000})
    hal, coro = board_main.build(cfg, machine=mach)
    frame = coro.cr_frame
    bridge = frame.f_locals["self"]
    coro.close()
    assert isinstance(bridge, Bridge) and isinstance(bridge.radio, LoRaRadio)
    assert bridge.radio.modem.cfg["freq_khz"] == 869525 and bridge.radio.modem.cfg["invert_iq_tx"] is True
    assert list(made[0]) == ["dio0"]


def test_main_without_a_config_says_why_and_returns(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(board_main, "CONFIG_PATH", str(tmp_path / "missing.json"))
    board_main.main()
    assert "cannot start" in capsys.readouterr().out


def test_main_unloads_the_config_module_once_the_node_is_built(monkeypatch, tmp_path):
    # boot-only code leaves the heap (issue 11): main() drops firmware.config after build()
    import firmware

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"node_id": 1, "kind": "lighting", "root_key": "00" * 16, "radio": {"type": "uart"}}))
    monkeypatch.setattr(board_main, "CONFIG_PATH", str(path))
    calls: list[object] = []
    monkeypatch.setattr(board_main, "build", lambda cfg: (calls.append(("build", cfg["kind"])), (None, "coro"))[1])
    monkeypatch.setattr(firmware, "unload", lambda *names: calls.append(("unload", names)))
    monkeypatch.setattr(board_main.asyncio, "run", lambda coro: calls.append(("run", coro)))
    board_main.main()
    # release_state() reads the A/B state (none here: the factory release) and drops slots.py first
    assert calls == [("unload", ("slots",)), ("build", "lighting"), ("unload", ("config",)), ("run", "coro")]


def test_unload_is_a_no_op_on_cpython():
    # CPython keeps its modules: a reloaded module would bring new exception classes
    import firmware
    from firmware import config

    firmware.unload("config")
    assert sys.modules["firmware.config"] is config


def test_a_release_on_trial_runs_with_the_health_watch(monkeypatch, tmp_path):
    # main.release_state() marks a trial (firmware/slots.py, SPEC §13); build() then runs the
    # node beside slots.watch, which commits the release once healthy
    from firmware import slots

    mach = fake_machine()
    mach.UART = lambda uid, **kw: None
    monkeypatch.setattr(board_main, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(
        "firmware.hal_machine.MachineHAL.__init__.__defaults__", ("/state", None, None, FakeTime()), raising=False
    )
    (tmp_path / "ab.json").write_text(json.dumps({"a": "", "t": "s1", "n": 1, "id": {"s1": "ab" * 32}, "v": {}}))
    cfg = cfg_for("lighting", {"type": "uart"})
    slots.prepare(cfg, str(tmp_path) + "/")
    assert cfg["trial"] is True and cfg["bundle"] == bytes.fromhex("ababab")
    seen = []
    monkeypatch.setattr(slots, "on_trial", lambda node, hal, coro: (seen.append(node), coro.close(), "watched")[2])
    hal, coro = board_main.build(cfg, machine=mach)
    assert coro == "watched" and seen and seen[0].cfg is cfg
    cfg["trial"] = False
    hal, coro = board_main.build(cfg, machine=mach)
    coro.close()
    assert len(seen) == 1
