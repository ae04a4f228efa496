"""gateway/mqtt_shapes.py, sans-I/O: the wire shapes, and hostile RPC / command payloads (hypothesis).

Network input (an RPC or a command message, from anyone who may publish on the
broker) either becomes the local API's command document, or is refused with
RequestError; the document then meets the API's own checks, which refuse with
DownlinkRejected. Nothing else may escape, and nothing may hang.
"""

from __future__ import annotations

import json

import pytest
from gateway_helpers import record
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import mqtt_shapes as ms
from gateway.api import parse_downlink_request
from gateway.config import ConfigError, load_config
from gateway.downlinks import DownlinkRejected
from protocol import messages as m

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
methods = st.sampled_from(["set_level", "set_profile", "clear_fault", "open_zone", "config", "time", "reboot", "x", ""])
rpcs = st.fixed_dictionaries(
    {
        "device": st.sampled_from(["00000007", "0000000G", "7", "", "ffffffff"]) | json_values,
        "data": st.fixed_dictionaries(
            {"id": st.integers(-5, 2**64) | json_values, "method": methods | json_values, "params": json_values}
        )
        | json_values,
    }
)


def check_command(cmd: ms.Command | None) -> None:
    if cmd is None:
        return
    assert 0 <= cmd.node_id <= 0xFFFFFFFF and isinstance(cmd.doc, dict)
    for kind in ("lighting", "irrigation"):
        try:
            mtype, body, _ttl = parse_downlink_request(cmd.doc, kind)
        except DownlinkRejected:
            continue
        assert mtype in (m.COMMAND, m.CONFIG, m.TIME) and isinstance(body, dict)


@settings(max_examples=400, deadline=None)
@given(st.one_of(rpcs.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)))
def test_any_rpc_payload_is_a_command_a_reply_or_a_refusal(payload: bytes) -> None:
    try:
        cmd = ms.parse_tb_rpc(payload)
    except ms.RequestError as e:
        assert str(e)
        if e.reply is not None:  # an answer can only go to a device and id the RPC named
            assert e.reply.shape == ms.THINGSBOARD and isinstance(e.reply.request_id, int)
        return
    check_command(cmd)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["lumeau/s1/00000007/command", "lumeau/s1/7/command", "lumeau/s2/00000007/command", "x"]),
    st.one_of(
        st.dictionaries(
            st.sampled_from(["op", "args", "type", "settings", "ttl_s", "request_id", "z"]), json_values
        ).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=100),
    ),
)
def test_any_plain_command_is_a_command_or_a_refusal(topic: str, payload: bytes) -> None:
    try:
        cmd = ms.parse_plain_command("s1", topic, payload)
    except ms.RequestError as e:
        assert str(e)
        return
    assert topic == "lumeau/s1/00000007/command" and cmd.node_id == 7
    check_command(cmd)


def test_rpc_shapes_map_to_the_api_document() -> None:
    def doc(data: dict) -> dict:
        cmd = ms.parse_tb_rpc(json.dumps({"device": "0000002a", "data": {"id": 3, **data}}).encode())
        assert cmd is not None and cmd.node_id == 42 and cmd.reply.request_id == 3
        return cmd.doc

    assert doc({"method": "set_level", "params": [50, 600]}) == {"op": "set_level", "args": [50, 600]}
    assert doc({"method": "set_level", "params": {"level": 5, "duration": 9, "ttl_s": 60}}) == {
        "op": "set_level",
        "args": {"level": 5, "duration": 9},
        "ttl_s": 60,
    }
    assert doc({"method": "clear_fault"}) == {"op": "clear_fault"}
    assert doc({"method": "config", "params": {"report_interval": 900}}) == {
        "type": "config",
        "settings": {"report_interval": 900},
    }
    assert doc({"method": "time"}) == {"type": "time"}
    # a reply on the same topic (the gateway's own, relayed by a plain broker) is not an RPC
    assert ms.parse_tb_rpc(b'{"device": "0000002a", "id": 3, "data": {"success": true}}') is None


def test_telemetry_is_split_under_the_payload_limit_in_order() -> None:
    records = [record(n, c) for c in range(1, 41) for n in (1, 2, 3)]
    pubs = ms.tb_telemetry(records, max_payload=1500)
    assert len(pubs) > 1 and all(len(p.payload) <= 1500 and p.topic == ms.TB_TELEMETRY for p in pubs)
    got: list[tuple[str, int]] = []
    for p in pubs:
        for dev, entries in json.loads(p.payload).items():
            got += [(dev, e["values"]["energy"]) for e in entries]
    for n in (1, 2, 3):
        assert [v for d, v in got if d == "%08x" % n] == [r.body[2] for r in records if r.node_id == n]
    assert len(got) == len(records)
    with pytest.raises(ValueError, match="over max_payload_bytes"):
        ms.tb_telemetry(records[:1], max_payload=100)


def test_values_are_named_prefixed_by_kind_except_readings() -> None:
    ev = record(1, 1, m.EVENT)
    v = ms.tb_values(ev)
    assert v["event_code"] == "leak" and v["alarm"] is True and "code" not in v
    assert ms.tb_values(record(1, 2))["level"] == 40
    p = ms.plain_record("s", ev)
    assert p.topic == "lumeau/s/00000001/event" and p.retain
    ack = record(1, 3, m.CMD_ACK, {0: 9, 1: m.RES_OK})
    assert not ms.plain_record("s", ack).retain  # an answer, not a state
    assert ms.ack_answer(ack) == {"success": True, "command_id": 9, "result": "ok"}


@pytest.mark.parametrize(
    "section, key, why",
    [
        ("enabled = true\n[upstream]\nenabled = true", "mqtt.enabled", "one upstream"),
        ('shape = "sparkplug"', "mqtt.shape", "not one of"),
        ('site = "a/b"', "mqtt.site", "one topic level"),
        ('password = "p"', "mqtt.password", "without a username"),
        ('tls = true\ncert_file = "c.pem"', "mqtt.cert_file", "both cert_file and key_file"),
        ('ca_file = "ca.pem"', "mqtt.ca_file", "mqtt.tls is false"),
        ('tls = true\nca_file = "nope.pem"', "mqtt.ca_file", "does not exist"),
        ('tls = true\nca_file = "junk.pem"', "mqtt.ca_file", "not a usable PEM"),
        ('username = "u"\nusername_file = "u.txt"', "mqtt", "not both"),
        ("port = 0", "mqtt.port", "not a port"),
    ],
)
def test_mqtt_config_errors_name_file_key_and_why(tmp_path, section, key, why) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "u.txt").write_text("u\n")
    p = tmp_path / "g.toml"
    p.write_text(f'[api]\ntoken = "mqtt-config-token-0123456789"\n[mqtt]\n{section}\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and key in str(e.value) and why in str(e.value)


def test_mqtt_enabled_turns_the_http_upstream_off_and_reads_secrets_from_files(tmp_path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    p = tmp_path / "g.toml"
    p.write_text(
        '[gateway]\nid = "gw-1"\n[api]\ntoken = "mqtt-config-token-0123456789"\n'
        '[mqtt]\nenabled = true\nshape = "thingsboard"\nusername = "TB_ACCESS_TOKEN"\npassword_file = "pw"\n'
    )
    cfg = load_config(p)
    assert cfg.mqtt.enabled and not cfg.upstream.enabled and cfg.mqtt.site == "gw-1"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg) and "TB_ACCESS_TOKEN" not in repr(cfg)
    (tmp_path / "pw").chmod(0o644)
    with pytest.raises(ConfigError, match=r"mqtt.password_file: .*chmod 600"):
        load_config(p)
