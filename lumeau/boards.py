"""Board presets and the laptop-side check of a node's config (issue 17, "Configs that run").

- PRESETS: one table, board -> radio -> the config's ``radio`` and ``pins`` sections
  that run on that board (`lumeau node provision --board B --radio R`). Pins name
  the HAL channels (firmware/hal_machine.py) and, for a LoRa radio, the modem's
  SPI bus and pins (firmware/radio_lora.py make_modem).
- validate(data): the node's own validators (firmware/config.py `load`, then the
  app's `check`: firmware/lighting.py or firmware/irrigation.py, whose tables are
  lighting_cfg.py / irrigation_cfg.py), preceded by an unknown-key check with a
  "did you mean" suggestion. The node itself ignores an unknown top-level key and
  has no room for this check (its heap is at its bar), so the key lists live
  here; tests/test_boards.py checks them against the firmware's source and
  firmware/README.md's schema.

`lumeau node provision` and `lumeau node flash` call validate(), so a misspelled
key (``report_intervall_s``, ``pins.lamp_curent``, ``lighting.profle``) is
refused before anything is written or flashed.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

# -- the schema's key lists (firmware/config.py load; firmware/README.md "Config file") --------

TOP_KEYS = (
    "node_id",
    "kind",
    "root_key",
    "radio",
    "location",
    "report_interval_s",
    "status_interval_s",
    "confirm_alarms",
    "encrypt",
    "wdt_ms",
    "key_fresh",
    "pins",
    "adc_scale",
    "ble",
    "release_key",
    "lighting",
    "irrigation",
)
# the second line: radio.type "lorawan" (firmware/radio_lorawan.py), an AT-command LoRaWAN modem on radio.uart;
# the last: a "lora" node behind LoRa Basics Station gateways (SPEC §7, firmware/README.md)
RADIO_KEYS = (
    *("type", "freq_hz", "sf", "bw_hz", "cr", "tx_power", "chip", "uart"),
    *("region", "dev_eui", "join_eui", "app_key", "confirmed"),
    "basics_station",
)
UART_KEYS = ("id", "baud", "tx", "rx")
BLE_KEYS = ("enabled", "configure", "adv_interval_ms")
LOCATION_KEYS = ("lat", "lon")
LORA_CHIPS = ("sx1276", "sx1277", "sx1278", "sx1279", "sx1261", "sx1262")  # firmware/radio_lora.py
# pins: the modem's (firmware/radio_lora.py make_modem) and the HAL channels each kind reads
RADIO_PINS = ("spi", "cs", "dio0", "dio1", "busy", "reset")
APP_PINS = {
    "lighting": ("lamp", "lamp_current", "ambient", "pir", "supply"),
    "irrigation": (
        "master",
        "zone1",
        "zone2",
        "zone3",
        "zone4",
        "flow",
        "rain",
        "moisture1",
        "moisture2",
        "moisture3",
        "moisture4",
        "supply",
        # latching valves (irrigation.latch_ms > 0): the H-bridge input that closes each valve
        "master_close",
        "zone1_close",
        "zone2_close",
        "zone3_close",
        "zone4_close",
    ),
    "bridge": (),
}
ADC_PINS = ("lamp_current", "ambient", "supply", "moisture1", "moisture2", "moisture3", "moisture4")
LIGHTING_EXTRA = ("profile",)  # lighting.SETTINGS' keys plus these
IRRIGATION_EXTRA = ("zones", "schedule")  # irrigation.SETTINGS' keys plus these


class ConfigKeyError(ValueError):
    """A node config the node would not run as written; the message names the key."""


def suggest(key: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _keys(where: str, section: Any, known: tuple[str, ...] | list[str]) -> None:
    if not isinstance(section, dict):
        return  # the node's validator says what is wrong with it
    for key in section:
        if key not in known:
            raise ConfigKeyError(f"{where}{key}: unknown key{suggest(str(key), known)}")


def app_settings(kind: str) -> tuple[str, ...]:
    """The keys of the app's section: the app's own table (SETTINGS) and its lists."""
    if kind == "lighting":
        from firmware import lighting

        return tuple(lighting.SETTINGS) + LIGHTING_EXTRA
    if kind == "irrigation":
        from firmware import irrigation

        return tuple(irrigation.SETTINGS) + IRRIGATION_EXTRA
    return ()


def zone_settings() -> tuple[str, ...]:
    from firmware import irrigation

    return tuple(irrigation.ZONE_SETTINGS)


def check_keys(raw: dict[str, Any]) -> None:
    """Every key of the config is one the node knows, for its kind; else ConfigKeyError."""
    _keys("", raw, TOP_KEYS)
    rk = raw.get("release_key")
    if rk is not None and not (isinstance(rk, str) and re.fullmatch(r"[0-9a-fA-F]{64}", rk)):
        raise ConfigKeyError("release_key: expected 64 hex digits (the public key `lumeau node release-key` prints)")
    kind = raw.get("kind")
    radio = raw.get("radio")
    _keys("radio.", radio, RADIO_KEYS)
    if isinstance(radio, dict):
        _keys("radio.uart.", radio.get("uart"), UART_KEYS)
        chip = radio.get("chip")
        if chip is not None and chip not in LORA_CHIPS:
            raise ConfigKeyError(f"radio.chip: {chip!r} is not a known chip{suggest(str(chip), LORA_CHIPS)}")
    _keys("ble.", raw.get("ble"), BLE_KEYS)
    _keys("location.", raw.get("location"), LOCATION_KEYS)
    pins = APP_PINS.get(kind, ()) + RADIO_PINS if isinstance(kind, str) else RADIO_PINS
    _keys("pins.", raw.get("pins"), pins)
    _keys("adc_scale.", raw.get("adc_scale"), ADC_PINS)
    for app in ("lighting", "irrigation"):
        if app in raw and kind != app:
            raise ConfigKeyError(f"{app}: a {kind} node has no {app} section")
    if kind in ("lighting", "irrigation"):
        section = raw.get(kind)
        _keys(f"{kind}.", section, app_settings(kind))
        if kind == "irrigation" and isinstance(section, dict) and isinstance(section.get("zones"), list):
            for i, zone in enumerate(section["zones"]):
                _keys(f"irrigation.zones[{i}].", zone, zone_settings())


def required_pins(cfg: dict[str, Any], app: dict[str, Any]) -> list[str]:
    """The pins the node reads for this config (its radio and its app's settings)."""
    need: list[str] = []
    if cfg["radio"]["type"] == "lora":
        chip = cfg["radio"].get("chip", "sx1276")
        need += ["cs", "dio0"] if chip.startswith("sx127") else ["cs", "busy", "dio1"]
    if cfg["kind"] == "lighting":
        need += ["lamp", "pir"]
        if app["current_sensor"]:
            need.append("lamp_current")
        if app["ambient_sensor"]:
            need.append("ambient")
    elif cfg["kind"] == "irrigation":
        if app["master"]:
            need.append("master")
        need += [f"zone{i + 1}" for i in range(len(app["zones"]))]
        if app["flow_meter"]:
            need.append("flow")
        if app["rain_sensor"]:
            need.append("rain")
        need += [f"moisture{i + 1}" for i, z in enumerate(app["zones"]) if z["moisture"]]
        if app.get("latch_ms"):  # a latching valve has a second input: the pulse that closes it
            need += [f"{p}_close" for p in need if p == "master" or p.startswith("zone")]
    return need


def missing_pins(cfg: dict[str, Any]) -> list[str]:
    """The pins a validated config (validate's result) lacks for its radio and app."""
    return [p for p in required_pins(cfg, cfg.get(cfg["kind"]) or {}) if p not in cfg["pins"]]


def validate(data: bytes | str, require_pins: bool = True) -> dict[str, Any]:
    """The node's config, checked as the node checks it plus unknown keys and missing pins.

    Returns firmware/config.py's dict, with the app's checked section under its kind.
    Raises ConfigKeyError naming the key and what to do. `require_pins=False`: a
    config whose pins are still to be filled in passes (missing_pins tells them).
    """
    from firmware import config as fwconfig

    if isinstance(data, str):
        data = data.encode()
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ConfigKeyError(f"config file is not valid JSON: {e}") from None
    if isinstance(raw, dict):
        check_keys(raw)
    try:
        cfg = fwconfig.load(data)
    except fwconfig.ConfigError as e:
        raise ConfigKeyError(str(e)) from None
    app: dict[str, Any] = {}
    if cfg["kind"] == "lighting":
        from firmware import lighting

        check = lighting.check
    elif cfg["kind"] == "irrigation":
        from firmware import irrigation

        check = irrigation.check
    else:
        check = None
    if check is not None:
        try:
            app = check(cfg.get(cfg["kind"]) or {})
        except ValueError as e:
            raise ConfigKeyError(str(e)) from None
        cfg[cfg["kind"]] = app
    missing = missing_pins(cfg)
    if missing and require_pins:
        raise ConfigKeyError(
            f"pins: {', '.join(missing)} missing: this {cfg['kind']} node reads "
            f"{'them' if len(missing) > 1 else 'it'} (give the GPIO numbers, or provision with --board for a preset)"
        )
    return cfg


# -- board presets -----------------------------------------------------------------------------

RADIOS = ("lora", "uart", "lorawan")
DEFAULT_RADIO = {"esp32-devkit": "lora", "rp2-pico": "lora", "vboard": "uart"}

# The ESP32 DevKit's pins per kind; the virtual board (simulator/vboard) emulates an ESP32 with
# the same numbering, so its preset uses them too (presets are deep-copied when given out).
ESP32_PINS: dict[str, dict[str, int]] = {
    "lighting": {"lamp": 25, "pir": 26, "lamp_current": 34, "ambient": 35, "supply": 36},
    "irrigation": {
        "master": 22,
        "zone1": 25,
        "zone2": 26,
        "zone3": 27,
        "zone4": 21,
        "flow": 13,
        "rain": 33,
        "moisture1": 34,
        "moisture2": 35,
        "moisture3": 39,
        "moisture4": 32,
        "supply": 36,
    },
    "bridge": {},
}

# board -> {"radio": {radio type -> the config's radio section and its pins}, "pins": {kind -> pins}}
# ESP32 DevKit: an SX1276 on VSPI (SPI 2: SCK 18, MOSI 23, MISO 19), ADC on ADC1 (GPIO 32..39,
# usable with Wi-Fi), wired link on UART2. Pico: an SX1276 on SPI 0 (SCK 18, MOSI 19, MISO 16),
# ADC on GPIO 26..28 (three inputs: no moisture sensors on zones 3 and 4), wired link on UART1.
# Virtual board (`lumeau sim board --uart 1=PATH`): the ESP32's pins, wired link on UART1 (no SPI
# devices: no LoRa).
PRESETS: dict[str, dict[str, Any]] = {
    "esp32-devkit": {
        "radio": {
            "lora": {
                "radio": {"type": "lora", "chip": "sx1276"},
                "pins": {"spi": 2, "cs": 5, "reset": 14, "dio0": 4},
            },
            "uart": {"radio": {"type": "uart", "uart": {"id": 2, "baud": 115200, "tx": 17, "rx": 16}}, "pins": {}},
            "lorawan": {
                "radio": {"type": "lorawan", "region": "EU868", "uart": {"id": 2, "baud": 115200, "tx": 17, "rx": 16}},
                "pins": {},
            },
        },
        "pins": ESP32_PINS,
    },
    "rp2-pico": {
        "radio": {
            "lora": {
                "radio": {"type": "lora", "chip": "sx1276"},
                "pins": {"spi": 0, "cs": 17, "reset": 20, "dio0": 21},
            },
            "uart": {"radio": {"type": "uart", "uart": {"id": 1, "baud": 115200, "tx": 4, "rx": 5}}, "pins": {}},
            "lorawan": {
                "radio": {"type": "lorawan", "region": "EU868", "uart": {"id": 1, "baud": 115200, "tx": 4, "rx": 5}},
                "pins": {},
            },
        },
        "pins": {
            "lighting": {"lamp": 15, "pir": 14, "lamp_current": 26, "ambient": 27, "supply": 28},
            "irrigation": {
                "master": 6,
                "zone1": 7,
                "zone2": 8,
                "zone3": 9,
                "zone4": 10,
                "flow": 11,
                "rain": 12,
                "moisture1": 26,
                "moisture2": 27,
                "supply": 28,
            },
            "bridge": {},
        },
    },
    "vboard": {
        "radio": {"uart": {"radio": {"type": "uart", "uart": {"id": 1, "baud": 115200}}, "pins": {}}},
        "pins": ESP32_PINS,
    },
}
BOARDS = tuple(PRESETS)


class PresetError(ValueError):
    pass


def preset(board: str, kind: str, radio: str | None = None) -> dict[str, Any]:
    """The config sections (radio, pins) that run a `kind` node on `board` with `radio`."""
    if board not in PRESETS:
        raise PresetError(f"--board {board!r}: one of {', '.join(BOARDS)}{suggest(board, BOARDS)}")
    radio = radio or DEFAULT_RADIO[board]
    choices = PRESETS[board]["radio"]
    if radio not in choices:
        why = " (the virtual board has no SPI devices: its link is UART1, --uart 1=PATH)" if board == "vboard" else ""
        raise PresetError(f"--radio {radio} is not available on {board}: use {', '.join(choices)}{why}")
    r = choices[radio]
    if kind == "bridge" and radio != "lora":
        raise PresetError(f"--radio {radio}: a bridge is the gateway's LoRa radio; it needs --radio lora")
    pins = {**PRESETS[board]["pins"][kind], **r["pins"]}
    return json.loads(json.dumps({"radio": r["radio"], "pins": pins}))  # a deep copy
