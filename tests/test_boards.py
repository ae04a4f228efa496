"""lumeau/boards.py: board presets and the laptop-side config check (issue 17, "Configs that run").

The key lists in lumeau/boards.py are checked against the firmware's source (the node's
validator, its HAL channel names, the LoRa modem's pins), and against firmware/README.md's
schema: every key documented, every example valid.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firmware import irrigation, lighting
from lumeau import boards

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "firmware" / "README.md"
KEY = "000102030405060708090a0b0c0d0e0f"


def config(kind: str = "lighting", board: str = "vboard", radio: str | None = None, **extra: object) -> dict:
    return {"node_id": 0x0A0B0C0D, "kind": kind, "root_key": KEY, **boards.preset(board, kind, radio), **extra}


def documented_keys() -> set[str]:
    keys = set(boards.TOP_KEYS)
    keys |= {f"radio.{k}" for k in boards.RADIO_KEYS} | {f"radio.uart.{k}" for k in boards.UART_KEYS}
    keys |= {f"ble.{k}" for k in boards.BLE_KEYS} | {f"location.{k}" for k in boards.LOCATION_KEYS}
    pins = set(boards.RADIO_PINS).union(*boards.APP_PINS.values())
    keys |= {f"pins.{p}" for p in pins}
    keys |= {f"lighting.{k}" for k in boards.app_settings("lighting")}
    keys |= {f"irrigation.{k}" for k in boards.app_settings("irrigation")}
    keys |= {f"irrigation.zones[i].{k}" for k in boards.zone_settings()}
    return keys


def test_every_key_the_validators_know_is_documented_in_the_firmware_readme():
    text = README.read_text()
    schema = text[text.index("## Config file") : text.index("## Modules")]
    missing = sorted(k for k in documented_keys() if f"`{k}`" not in schema)
    assert not missing, f"firmware/README.md 'Config file' does not document: {missing}"


def readme_examples() -> list[tuple[str, str]]:
    text = README.read_text()
    found = re.findall(r"#### Example: (.+?)\n\n```json\n(.*?)\n```", text, re.S)
    assert len(found) >= 3, found
    return found


def test_every_board_has_a_readme_example_and_each_validates():
    examples = readme_examples()
    for board in boards.BOARDS:
        assert any(f"--board {board}" in title for title, _ in examples), board
    for title, body in examples:
        assert boards.validate(body)["kind"] in title  # raises on any error, missing pins included


@pytest.mark.parametrize("board", boards.BOARDS)
@pytest.mark.parametrize("kind", ["lighting", "irrigation", "bridge"])
@pytest.mark.parametrize("radio", boards.RADIOS)
def test_every_preset_is_checked_by_the_nodes_validator(board, kind, radio):
    try:
        p = boards.preset(board, kind, radio)
    except boards.PresetError as e:  # the combinations that cannot run, said so
        assert (board == "vboard" and radio in ("lora", "lorawan")) or (kind == "bridge" and radio != "lora"), e
        return
    doc = {"node_id": 7, "kind": kind, **p}
    if kind != "bridge":
        doc["root_key"] = KEY
    cfg = boards.validate(json.dumps(doc))
    assert cfg["radio"]["type"] == radio and boards.missing_pins(cfg) == []


def test_default_radio_and_unknown_board():
    assert boards.preset("esp32-devkit", "lighting")["radio"]["type"] == "lora"
    assert boards.preset("vboard", "lighting")["radio"]["type"] == "uart"
    with pytest.raises(boards.PresetError, match="did you mean 'rp2-pico'"):
        boards.preset("rp2-pic", "lighting")
    with pytest.raises(boards.PresetError, match="no SPI devices"):
        boards.preset("vboard", "lighting", "lora")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(report_intervall_s=60),
            "report_intervall_s: unknown key (did you mean 'report_interval_s'?)",
        ),
        (lambda c: c["pins"].update(lamp_curent=34), "pins.lamp_curent: unknown key (did you mean 'lamp_current'?)"),
        (
            lambda c: c.update(lighting={"profle": [[0, 0, 100]]}),
            "lighting.profle: unknown key (did you mean 'profile'?)",
        ),
        (lambda c: c["radio"].update(sff=9), "radio.sff: unknown key (did you mean 'sf'?)"),
        (lambda c: c["radio"]["uart"].update(bauds=9600), "radio.uart.bauds: unknown key (did you mean 'baud'?)"),
        (lambda c: c.update(ble={"enable": True}), "ble.enable: unknown key (did you mean 'enabled'?)"),
        (lambda c: c.update(adc_scale={"suply": [11, 1]}), "adc_scale.suply: unknown key (did you mean 'supply'?)"),
        (lambda c: c["pins"].update(zone1=5), "pins.zone1: unknown key"),  # an irrigation pin on a lamp
        (lambda c: c.update(irrigation={}), "irrigation: a lighting node has no irrigation section"),
        (lambda c: c["pins"].pop("pir"), "pins: pir missing"),
        (lambda c: c.update(lighting={"fade_s": 9999}), "lighting.fade_s: 9999 is not an integer in 0..600"),
        (lambda c: c.update(report_interval_s=5), "report_interval_s: 5 out of range 30..86400"),
    ],
)
def test_unknown_keys_bad_values_and_missing_pins_are_refused_with_what_to_do(change, message):
    cfg = config()
    change(cfg)
    with pytest.raises(boards.ConfigKeyError) as e:
        boards.validate(json.dumps(cfg))
    assert message in str(e.value)


def test_irrigation_zone_keys_and_pins_follow_the_zones():
    cfg = config("irrigation", irrigation={"zones": [{"flow_dlmp": 100}]})
    with pytest.raises(
        boards.ConfigKeyError, match=r"irrigation.zones\[0\].flow_dlmp: unknown key \(did you mean 'flow_dlpm'"
    ):
        boards.validate(json.dumps(cfg))
    cfg = config("irrigation", irrigation={"zones": [{}, {"moisture": 1}], "master": 0})
    for p in ("zone3", "zone4", "master", "moisture1", "moisture2"):
        del cfg["pins"][p]
    with pytest.raises(boards.ConfigKeyError, match="pins: moisture2 missing"):
        boards.validate(json.dumps(cfg))
    cfg["irrigation"]["zones"][1]["moisture"] = 0
    assert boards.validate(json.dumps(cfg))["irrigation"]["zones"][1]["flow_dlpm"] == 100


# -- the key lists match the firmware's source --------------------------------------------------


def string_args(path: Path, func_names: set[str]) -> set[str]:
    """Config keys the firmware reads: d["k"], d.get("k"), d.pop("k"), _int/_num/_bool/_section(d, "k")."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for fn in ast.walk(tree):
        if not (isinstance(fn, ast.FunctionDef) and fn.name in func_names):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                if isinstance(node.slice.value, str):
                    out.add(node.slice.value)
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                args = node.args
                if name in ("get", "pop") and args and isinstance(args[0], ast.Constant):
                    out.add(args[0].value)
                elif name in ("_int", "_num", "_bool", "_section") and len(args) > 1:
                    if isinstance(args[1], ast.Constant):
                        out.add(args[1].value)
    return out


def test_the_top_level_and_radio_keys_are_the_validators():
    from firmware import config as fwconfig

    read = string_args(ROOT / "firmware" / "config.py", {"load", "_radio"})
    read |= set(fwconfig.DEFAULTS) | set(fwconfig.RADIO_DEFAULTS)
    derived = {"kind_code", "keys", "key_id", "hash", "band", "path"}  # the loader's own results
    known = set(boards.TOP_KEYS) | set(boards.RADIO_KEYS) | set(boards.BLE_KEYS) | set(boards.LOCATION_KEYS)
    assert read - derived <= known, sorted(read - derived - known)
    assert set(boards.TOP_KEYS) <= read | {"chip"}, sorted(set(boards.TOP_KEYS) - read)
    # radio.chip and the modem's pins are read by firmware/radio_lora.py make_modem
    lora = string_args(ROOT / "firmware" / "radio_lora.py", {"make_modem"})
    src = (ROOT / "firmware" / "radio_lora.py").read_text()
    for chip in boards.LORA_CHIPS:
        assert f'"{chip}"' in src
    assert "chip" in lora and {"cs", "spi"} <= lora
    for pin in boards.RADIO_PINS:
        assert f'"{pin}"' in src, pin


def test_the_pin_names_are_the_hal_channels_the_node_reads():
    read: set[str] = set()
    for name in ("lighting.py", "irrigation.py", "runtime.py"):
        src = (ROOT / "firmware" / name).read_text()
        read |= set(re.findall(r'(?:hal\.(?:pin_read|pin_write|pwm_write|adc_read_mv|pulses)|_drive)\("(\w+)"', src))
        for tup in re.findall(r"_(?:ZONE|MOIST)_NAMES = \(([^)]*)\)", src):
            read |= set(re.findall(r'"(\w+)"', tup))
    # a latching valve's close input: firmware/battery.py drives name + "_close"
    assert 'name + "_close"' in (ROOT / "firmware" / "battery.py").read_text()
    read |= {v + "_close" for v in read if v == "master" or v.startswith("zone")}
    known = set().union(*boards.APP_PINS.values())
    assert read == known, (sorted(read - known), sorted(known - read))
    adc = set()
    for name in ("lighting.py", "irrigation.py", "runtime.py"):
        adc |= set(re.findall(r'adc_read_mv\("(\w+)"', (ROOT / "firmware" / name).read_text()))
    assert adc <= set(boards.ADC_PINS)


def test_app_keys_are_the_apps_tables():
    assert set(lighting.SETTINGS) < set(boards.app_settings("lighting"))
    assert set(irrigation.SETTINGS) < set(boards.app_settings("irrigation"))
    assert boards.zone_settings() == tuple(irrigation.ZONE_SETTINGS)


# -- the CLI --------------------------------------------------------------------------------------


def lumeau(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumeau", *args], capture_output=True, text=True, timeout=120)


def provision(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    reg = tmp_path / "nodes.toml"
    new = () if reg.exists() else ("--new-registry",)
    return lumeau("node", "provision", "--registry", str(reg), *new, "--out", str(tmp_path / "node.json"), *args)


@pytest.mark.parametrize("board", boards.BOARDS)
def test_provision_board_writes_a_config_that_runs_on_it(tmp_path, board):
    proc = provision(tmp_path, "--kind", "irrigation", "--board", board)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    doc = json.loads((tmp_path / "node.json").read_text())
    want = boards.preset(board, "irrigation")
    assert doc["radio"] == want["radio"] and doc["pins"] == want["pins"]
    boards.validate((tmp_path / "node.json").read_bytes())


def test_provision_radio_uart_and_refusals(tmp_path):
    proc = provision(tmp_path, "--kind", "lighting", "--board", "esp32-devkit", "--radio", "uart")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "node.json").read_text())["radio"]["type"] == "uart"
    (tmp_path / "node.json").unlink()
    proc = provision(tmp_path, "--kind", "lighting", "--board", "vboard", "--radio", "lora")
    assert proc.returncode == 1 and "not available on vboard" in proc.stderr and "--uart 1=PATH" in proc.stderr
    proc = provision(tmp_path, "--kind", "lighting", "--radio", "uart")
    assert proc.returncode == 1 and "needs --board" in proc.stderr
    assert not (tmp_path / "node.json").exists()


def test_provision_without_pins_warns_what_to_do(tmp_path):
    proc = provision(tmp_path, "--kind", "lighting")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "no pins for cs, dio0, lamp, pir" in proc.stderr and "--board" in proc.stderr


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ({"report_intervall_s": 60}, "did you mean 'report_interval_s'?"),
        ({"pins": {"lamp_curent": 34}}, "did you mean 'lamp_current'?"),
        ({"lighting": {"profle": [[0, 0, 100]]}}, "did you mean 'profile'?"),
    ],
)
def test_provision_refuses_a_misspelled_key_before_writing_anything(tmp_path, site, message):
    reg = tmp_path / "nodes.toml"
    assert provision(tmp_path, "--kind", "lighting", "--board", "vboard").returncode == 0
    (tmp_path / "node.json").unlink()
    before = reg.read_bytes()
    (tmp_path / "site.json").write_text(json.dumps(site))
    proc = provision(tmp_path, "--kind", "lighting", "--board", "vboard", "--template", str(tmp_path / "site.json"))
    assert proc.returncode == 1 and message in proc.stderr
    assert not (tmp_path / "node.json").exists() and reg.read_bytes() == before


def test_provision_help_names_the_boards_and_the_schema():
    out = lumeau("node", "provision", "--help").stdout
    for board in boards.BOARDS:
        assert board in out
    assert "firmware/README.md" in out and "--radio" in out
