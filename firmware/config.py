# The node's provisioned configuration: one JSON file written by the
# technician tooling, read once at boot.
#
#   {
#     "node_id": "00a0b3c3",            required: 8 hex digits as every tool prints
#                                       it (an integer, 10531523, is read too)
#     "kind": "lighting",               required: lighting | irrigation | bridge
#     "root_key": "000102...0e0f",      required except for a bridge: 32 hex digits
#     "radio": {"type": "lora", "freq_hz": 868100000, "sf": 9, "bw_hz": 125000,
#               "cr": 5, "tx_power": 14, "chip": "sx1276"},
#     "location": {"lat": 48.8566, "lon": 2.3522},
#     "report_interval_s": 900, "status_interval_s": 21600,
#     "confirm_alarms": true, "encrypt": false, "wdt_ms": 8000,
#     "pins": {"lamp": 25, "pir": 26, ...},     for the board HAL
#     "adc_scale": {"supply": [11, 1]},         voltage dividers in front of ADC inputs
#     (radio "uart": {"id": 1, "baud": 115200, "tx": 17, "rx": 16} for a wired node)
#     (radio "lorawan": an AT-command LoRaWAN modem on "uart", firmware/radio_lorawan.py)
#     (radio "basics_station": true: a "lora" node behind LoRa Basics Station gateways sends
#      each frame as a LoRaWAN proprietary frame, 0xE0 before it, SPEC §7; default false)
#     "key_fresh": true,                written by `lumeau node provision` with a new
#                                       key: the uplink counter may start at 0 when
#                                       no state of this key is on the board (SPEC §4
#                                       "Counter persistence"); the node clears it
#                                       once it holds state (clear_fresh)
#     "release_key": "03a1...b8",       the city's Ed25519 release public key, 64 hex
#                                       digits: firmware updates (SPEC §13); read by
#                                       firmware/updater.py, not kept in the dict
#     "ble": {"enabled": false, "configure": true, "adv_interval_ms": 500},
#                                       BLE commissioning (firmware/ble.py); off by default
#     "lighting": {...}, "irrigation": {...}     the app's own section
#   }
#
# load(data) validates everything the runtime uses, fills safe defaults, and
# returns a plain dict; an error is a ConfigError naming the key and why.
# The app sections are passed through as dicts: each app validates its own.
# The root key never stays in the dict: it becomes cfg["keys"], a
# protocol.keys.NodeKeys whose repr hides key material, so printing a config
# cannot leak it. cfg["key_id"] is key_id(root): 8 bytes of SHA-256 over a
# label and the key (never the key), stored beside the uplink counter so the
# counter state is known to be this key's. The config hash (first 4 bytes of SHA-256 of the file's
# bytes, SPEC §5 HELLO) is cfg["hash"].

import hashlib
import json

from protocol import nodelora as lora
from protocol.keys import NodeKeys

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages (and lora) numbers, as private consts (tests/test_node_consts.py checks them)
_CR_DENOM_MAX = const(8)
_CR_DENOM_MIN = const(5)
_KIND_BRIDGE = const(3)
_KIND_IRRIGATION = const(2)
_KIND_LIGHTING = const(1)
_REPORT_MAX_S = const(86400)
_REPORT_MIN_S = const(30)
_SF_MAX = const(12)
_SF_MIN = const(7)
_STATUS_MAX_S = const(604800)
_STATUS_MIN_S = const(300)
_TX_POWER_MAX = const(14)
_TX_POWER_MIN = const(2)
# Limits; those a CONFIG frame can change are protocol.messages' (REPORT_MIN_S, ...).
_WDT_MIN_MS = const(2000)  # below that a slow flash write could bite
_WDT_MAX_MS = const(8388)  # the ESP32 and RP2040 both accept this; the RP2040 caps at 8.3 s
_MAX_FILE = const(4096)  # a config file larger than this is refused before parsing

KINDS = ("lighting", "irrigation", "bridge")
KIND_CODES = {"lighting": _KIND_LIGHTING, "irrigation": _KIND_IRRIGATION, "bridge": _KIND_BRIDGE}
RADIO_TYPES = ("lora", "uart", "sim", "lorawan")

DEFAULTS = {
    "report_interval_s": 900,
    "status_interval_s": 21600,
    "confirm_alarms": True,
    "encrypt": False,
    "wdt_ms": 8000,
    "key_fresh": False,
}
# BLE commissioning (firmware/ble.py, SPEC §11): off unless asked for, so a
# board without Bluetooth, or a node whose heap is tight, never loads it.
# "configure": accept authenticated CONFIG frames from a technician's tool.
# Advertising interval: the Bluetooth Core's limits, 20 ms .. 10.24 s. (A
# radio bridge ignores the section.) Kept short: every node loads this file.
# Defaults: {"enabled": false, "configure": true, "adv_interval_ms": 500}.

RADIO_DEFAULTS = {
    "type": "lora",
    "freq_hz": 868100000,
    "sf": 9,
    "bw_hz": 125000,
    "cr": 5,
    "tx_power": 14,
    # a name longer than 10 characters: mpy-cross stores it as a string, not an interned name
    "basics_station": False,
}


class ConfigError(ValueError):
    """The config file is unusable; the message names the key and why."""


def config_hash(data):
    return hashlib.sha256(data).digest()[:4]


def key_id(root):
    """The root key's id stored with the counter state: a hash, never the key."""
    return hashlib.sha256(b"lumeau key id\x00" + root).digest()[:8]


def cleared(data):
    """The config file's bytes with the fresh mark cleared, or None if not marked.

    The node (clear_fresh) and `lumeau node flash` compute the same bytes, so
    the laptop knows the board's cleared file for the config it flashed.
    """
    data = bytes(data)
    new = data.replace(b'"key_fresh": true', b'"key_fresh": false')
    if new == data:
        if not json.loads(data).get("key_fresh"):
            return None
        raw = json.loads(data)  # marked, spelled otherwise: rewrite it
        raw["key_fresh"] = False
        new = json.dumps(raw).encode()
    return new


def clear_fresh(path="config.json"):
    """Clear the fresh mark in the config file (atomic: tmp + rename); True if it changed.

    Called by the runtime once the counter state of a fresh key is on flash,
    so that this file, copied to another board, cannot start at 0 there.
    """
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    new = cleared(data)
    if new is None:
        return False
    import os

    with open(path + ".tmp", "wb") as f:
        f.write(new)
    os.rename(path + ".tmp", path)
    return True


def _int(d, key, lo, hi, where=""):
    v = d[key]
    if type(v) is not int:  # bool is an int subclass on CPython
        raise ConfigError("%s%s: expected an integer, got %r" % (where, key, v))
    if v < lo or v > hi:
        raise ConfigError("%s%s: %d out of range %d..%d" % (where, key, v, lo, hi))
    return v


def _num(d, key, lo, hi, where=""):
    v = d[key]
    if type(v) is not int and type(v) is not float:
        raise ConfigError("%s%s: expected a number, got %r" % (where, key, v))
    if v < lo or v > hi:
        raise ConfigError("%s%s: %r out of range %r..%r" % (where, key, v, lo, hi))
    return v


def _bool(d, key, where=""):
    v = d[key]
    if v is not True and v is not False:
        raise ConfigError("%s%s: expected true or false, got %r" % (where, key, v))
    return v


def _section(d, key):
    v = d.get(key)
    if v is None:
        return {}
    if type(v) is not dict:
        raise ConfigError("%s: expected an object" % key)
    return v


def _radio(r):
    out = dict(RADIO_DEFAULTS)
    out.update(r)
    if out["type"] not in RADIO_TYPES:
        raise ConfigError("radio.type: %r is not one of %s" % (out["type"], ", ".join(RADIO_TYPES)))
    _int(out, "sf", _SF_MIN, _SF_MAX, "radio.")
    bw = _int(out, "bw_hz", 125000, 500000, "radio.")
    if bw not in (125000, 250000, 500000):  # protocol.lora.BANDWIDTHS_HZ
        raise ConfigError("radio.bw_hz: %d is not 125000, 250000 or 500000" % bw)
    _int(out, "cr", _CR_DENOM_MIN, _CR_DENOM_MAX, "radio.")
    _int(out, "tx_power", _TX_POWER_MIN, _TX_POWER_MAX, "radio.")
    if _bool(out, "basics_station", "radio.") and out["type"] != "lora":
        raise ConfigError(
            "radio.basics_station: only for radio.type lora (a LoRa modem the node drives), not %r" % out["type"]
        )
    uart = out.get("uart", {})
    if type(uart) is not dict:
        raise ConfigError("radio.uart: expected an object")
    for k in uart:
        if k not in ("id", "baud", "tx", "rx"):
            raise ConfigError("radio.uart.%s: unknown (id, baud, tx, rx)" % k)
        _int(uart, k, 0, 4000000, "radio.uart.")
    freq = _int(out, "freq_hz", 0, 0xFFFFFFFF, "radio.")
    try:
        out["band"] = lora.band_for(freq, bw)
    except ValueError as e:
        raise ConfigError("radio.freq_hz: %s" % e)
    return out


def load(data):
    """Parse and validate the config file's bytes; returns the config dict."""
    if type(data) is str:
        data = data.encode()
    data = bytes(data)
    if len(data) > _MAX_FILE:
        raise ConfigError("config file is %d bytes, at most %d" % (len(data), _MAX_FILE))
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ConfigError("config file is not valid JSON: %s" % e)
    if type(raw) is not dict:
        raise ConfigError("config file must hold a JSON object")
    for key in ("node_id", "kind"):
        if key not in raw:
            raise ConfigError("%s: required" % key)
    cfg = dict(DEFAULTS)  # type: dict
    cfg.update(raw)
    node_id = cfg["node_id"]
    if type(node_id) is str:  # "00a0b3c3": the id as the gateway, the API and the tools print it
        try:
            if len(node_id) != 8 or node_id.strip("0123456789abcdefABCDEF"):
                raise ValueError  # int() alone takes "0x..", signs, spaces and "_"
            cfg["node_id"] = int(node_id, 16)
        except ValueError:
            raise ConfigError("node_id: %r is not 8 hex digits" % node_id)
    node_id = _int(cfg, "node_id", 0, 0xFFFFFFFF)
    kind = cfg["kind"]
    if kind not in KINDS:
        raise ConfigError("kind: %r is not one of %s" % (kind, ", ".join(KINDS)))
    cfg["kind_code"] = KIND_CODES[kind]
    _int(cfg, "report_interval_s", _REPORT_MIN_S, _REPORT_MAX_S)
    _int(cfg, "status_interval_s", _STATUS_MIN_S, _STATUS_MAX_S)
    _int(cfg, "wdt_ms", _WDT_MIN_MS, _WDT_MAX_MS)
    _bool(cfg, "confirm_alarms")
    _bool(cfg, "encrypt")
    _bool(cfg, "key_fresh")
    cfg["radio"] = _radio(_section(cfg, "radio"))
    if kind == "bridge" and cfg["radio"]["basics_station"]:
        raise ConfigError(
            "radio.basics_station: a node's setting; a radio bridge forwards the frames it hears as they are"
        )
    ble = {"enabled": False, "configure": True, "adv_interval_ms": 500}
    for k in _section(cfg, "ble"):
        if k not in ble:
            raise ConfigError("ble.%s: unknown" % k)
    ble.update(cfg.get("ble") or {})
    _bool(ble, "enabled", "ble.")
    _bool(ble, "configure", "ble.")
    _int(ble, "adv_interval_ms", 20, 10240, "ble.")
    cfg["ble"] = ble
    loc = _section(cfg, "location")
    if loc:
        for k in ("lat", "lon"):
            if k not in loc:
                raise ConfigError("location.%s: required when location is given" % k)
        _num(loc, "lat", -90, 90, "location.")
        _num(loc, "lon", -180, 180, "location.")
    cfg["location"] = loc
    pins = _section(cfg, "pins")
    for name in pins:
        _int(pins, name, 0, 255, "pins.")
    cfg["pins"] = pins
    scale = _section(cfg, "adc_scale")
    for name in scale:
        v = scale[name]
        if type(v) is not list or len(v) != 2 or type(v[0]) is not int or type(v[1]) is not int or v[0] < 1 or v[1] < 1:
            raise ConfigError("adc_scale.%s: expected [multiplier, divisor], positive integers" % name)
    cfg["adc_scale"] = scale
    _section(cfg, "lighting")
    _section(cfg, "irrigation")
    root = cfg.pop("root_key", None)
    if root is None:
        if kind != "bridge":
            raise ConfigError("root_key: required")
        cfg["keys"] = None
        cfg["key_id"] = None
    else:
        if type(root) is not str or len(root) != 32:
            raise ConfigError("root_key: expected 32 hex digits (16 bytes)")
        try:
            root_bytes = bytes.fromhex(root)
        except ValueError:
            raise ConfigError("root_key: not hexadecimal")
        cfg["keys"] = NodeKeys(node_id, root_bytes)
        cfg["key_id"] = key_id(root_bytes)
    # the city's release public key (SPEC §13): firmware/updater.py reads it from the file
    # during an update; 64 characters the node does not keep in its heap meanwhile
    cfg.pop("release_key", None)
    cfg["hash"] = config_hash(data)
    return cfg


def read(path="config.json"):
    """Load the config from the board's filesystem (boot.py / main.py)."""
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    cfg = load(data)
    cfg["path"] = path  # where clear_fresh rewrites it
    return cfg
