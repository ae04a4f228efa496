"""firmware.config: validation, defaults, config hash, no key material in reprs."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import config
from protocol import lora
from protocol.keys import NodeKeys

ROOT = "000102030405060708090a0b0c0d0e0f"


def doc(**over) -> dict:
    d = {"node_id": 0x00A1B2C3, "kind": "lighting", "root_key": ROOT}
    d.update(over)
    return d


def raw(d: dict) -> bytes:
    return json.dumps(d).encode()


def test_minimal_config_gets_safe_defaults_and_keys():
    data = raw(doc(location={"lat": 48.85, "lon": 2.35}, lighting={"lamp_w": 60}))
    cfg = config.load(data)
    assert cfg["node_id"] == 0x00A1B2C3 and cfg["kind"] == "lighting" and cfg["kind_code"] == 1
    assert cfg["report_interval_s"] == 900 and cfg["status_interval_s"] == 21600
    assert cfg["confirm_alarms"] is True and cfg["encrypt"] is False
    r = cfg["radio"]
    assert (r["type"], r["freq_hz"], r["sf"], r["bw_hz"], r["cr"], r["tx_power"]) == (
        "lora",
        868100000,
        9,
        125000,
        5,
        14,
    )
    assert lora.band_name(r["band"]) == "g1"
    assert cfg["lighting"] == {"lamp_w": 60}  # the app's section passes through
    assert cfg["hash"] == hashlib.sha256(data).digest()[:4]
    ref = NodeKeys(0x00A1B2C3, bytes.fromhex(ROOT))
    assert cfg["keys"].mic_up.key == ref.mic_up.key and cfg["keys"].enc == ref.enc


def test_node_id_as_8_hex_digits_as_every_tool_prints_it():
    # Before: only an integer (168496141), where the gateway, its API and the tools print 0a0b0c0d.
    assert config.load(raw(doc(node_id="00a1b2c3")))["node_id"] == 0x00A1B2C3
    assert (
        config.load(raw(doc(node_id="00A1B2C3")))["keys"].mic_up.key
        == NodeKeys(0xA1B2C3, bytes.fromhex(ROOT)).mic_up.key
    )
    assert config.load(raw(doc(node_id="ffffffff")))["node_id"] == 0xFFFFFFFF


def test_hash_is_of_the_file_bytes():
    a = config.load(b'{"node_id": 1, "kind": "bridge"}')
    b = config.load(b'{"kind": "bridge", "node_id": 1}')
    assert a["hash"] != b["hash"]  # same meaning, different file: the technician sees which file is on the node


def test_no_key_material_in_the_printed_config():
    cfg = config.load(raw(doc()))
    text = repr(cfg) + str(cfg)
    keys = cfg["keys"]
    for secret in (ROOT, keys.enc.hex(), keys.mic_up.key.hex(), keys.mic_down.key.hex()):
        assert secret not in text
    assert "root_key" not in cfg


def test_bridge_needs_no_root_key_but_nodes_do():
    assert config.load(raw({"node_id": 5, "kind": "bridge"}))["keys"] is None
    with pytest.raises(config.ConfigError, match="root_key: required"):
        config.load(raw({"node_id": 5, "kind": "irrigation"}))


@pytest.mark.parametrize(
    "data, words",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b" " * 5000, "at most 4096"),
        (raw({"kind": "lighting", "root_key": ROOT}), "node_id: required"),
        (raw(doc(node_id=-1)), "node_id"),
        (raw(doc(node_id=2**32)), "node_id"),
        (raw(doc(node_id=True)), "node_id: expected an integer"),
        (raw(doc(node_id="a1b2c3")), "node_id: 'a1b2c3' is not 8 hex digits"),
        (raw(doc(node_id="0x0a1b2c")), "not 8 hex digits"),
        (raw(doc(node_id="+0a1b2c3")), "not 8 hex digits"),
        (raw(doc(node_id=" 0a1b2c ")), "not 8 hex digits"),
        (raw(doc(node_id="0a1b_2c3")), "not 8 hex digits"),
        (raw(doc(node_id="0a1b2c3g")), "not 8 hex digits"),
        (raw(doc(kind="fountain")), "kind"),
        (raw(doc(root_key="00" * 15)), "root_key"),
        (raw(doc(root_key="zz" * 16)), "root_key: not hex"),
        (raw(doc(report_interval_s=5)), "report_interval_s: 5 out of range"),
        (raw(doc(status_interval_s=10)), "status_interval_s"),
        (raw(doc(wdt_ms=60000)), "wdt_ms"),
        (raw(doc(confirm_alarms=1)), "confirm_alarms: expected true or false"),
        (raw(doc(radio={"sf": 13})), "radio.sf"),
        (raw(doc(radio={"bw_hz": 200000})), "radio.bw_hz"),
        (raw(doc(radio={"freq_hz": 915000000})), "radio.freq_hz"),
        (raw(doc(radio={"tx_power": 27})), "radio.tx_power"),
        (raw(doc(radio={"type": "wifi"})), "radio.type"),
        (raw(doc(radio=[1])), "radio: expected an object"),
        (raw(doc(location={"lat": 91, "lon": 0})), "location.lat"),
        (raw(doc(location={"lat": 10})), "location.lon: required"),
        (raw(doc(pins={"lamp": "GPIO4"})), "pins.lamp"),
        (raw(doc(lighting=3)), "lighting: expected an object"),
        (raw(doc(adc_scale={"supply": [11, 0]})), "adc_scale.supply"),
        (raw(doc(radio={"type": "uart", "uart": {"parity": 1}})), "radio.uart.parity"),
    ],
)
def test_errors_name_the_key(data, words):
    with pytest.raises(config.ConfigError) as e:
        config.load(data)
    assert words in str(e.value)


def test_read_from_a_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(raw(doc(kind="irrigation", irrigation={"zones": 2})))
    cfg = config.read(str(p))
    assert cfg["kind_code"] == 2 and cfg["irrigation"] == {"zones": 2}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
keys_used = st.sampled_from(
    [
        "node_id",
        "kind",
        "root_key",
        "radio",
        "location",
        "pins",
        "report_interval_s",
        "status_interval_s",
        "wdt_ms",
        "confirm_alarms",
        "encrypt",
        "lighting",
        "irrigation",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys_used, json_values, max_size=10), st.booleans())
def test_fuzz_only_config_errors(d, with_base):
    if with_base:
        d = {**doc(), **d}
    try:
        cfg = config.load(raw(d))
    except config.ConfigError:
        return
    assert 0 <= cfg["node_id"] <= 0xFFFFFFFF and cfg["kind"] in config.KINDS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_only_config_errors(data):
    try:
        config.load(data)
    except config.ConfigError:
        pass
