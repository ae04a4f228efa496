"""ChirpStack southbound (gateway/transports/chirpstack.py) against Debian's real mosquitto.

ChirpStack itself cannot run here: the tests publish its documented event JSON
(tests/vectors/chirpstack/, from ChirpStack's documentation) to a real broker, as
ChirpStack's MQTT integration would, into a real Gateway (pipeline, SQLite store,
downlinks, local HTTP API), and read what the gateway publishes on the downlink
topic as ChirpStack would. The frames inside are sealed by protocol/ with the
nodes' keys, as the node's firmware seals them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from conftest import ROOT
from gateway_helpers import node_keys, root_key, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_broker import Broker, Subscriber
from waiting import wait_for

from gateway.config import ConfigError, load_config
from gateway.registry import NodeEntry, Registry, RegistryError
from gateway.service import Gateway
from gateway.transports.chirpstack import ChirpstackTransport
from protocol import frame, lorawan
from protocol import messages as m

VECTORS = ROOT / "tests" / "vectors" / "chirpstack"
UP = json.loads((VECTORS / "event-up.json").read_text())
JOIN = json.loads((VECTORS / "event-join.json").read_text())
APP = UP["deviceInfo"]["applicationId"]  # the documented application id
TOKEN = "chirpstack-test-api-token-012345"
EUI = {7: "70b3d57ed0000007", 8: "70b3d57ed0000008"}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def write_registry(tmp_path: Path, euis: dict[int, str] = EUI) -> None:
    reg = Registry(tmp_path / "nodes.toml")
    for n, eui in euis.items():
        reg.upsert(NodeEntry(node_id=n, kind="lighting", root_key=root_key(n), dev_eui=eui))
    reg.save()


def write_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(f"""
[gateway]
id = "gw-test"
[api]
port = 0
token = "{TOKEN}"
[downlinks]
collect_s = 0.0
auto_time = false
[chirpstack]
enabled = true
port = {port}
application_id = "{APP}"
backoff_initial_s = 0.05
backoff_max_s = 0.3
{extra}
""")
    return p


async def started(tmp_path: Path, port: int, extra: str = "") -> tuple[Gateway, ChirpstackTransport]:
    write_registry(tmp_path)
    gw = Gateway(load_config(write_config(tmp_path, port, extra)))
    await gw.start()
    t = next(t for t in gw.transports if isinstance(t, ChirpstackTransport))
    await wait_for(lambda: t.connected, 10, "subscribed to the broker")
    return gw, t


def up_event(node: int, raw: bytes, fcnt: int, dev_addr: str = "00189440", eui: str | None = None) -> dict:
    """ChirpStack's documented uplink event, carrying a Lumeau frame of `node`."""
    fport, node_id, payload = lorawan.frame_to_lorawan(raw)
    assert node_id == node
    ev = copy.deepcopy(UP)
    ev["deviceInfo"]["devEui"] = eui or EUI[node]
    ev["fPort"], ev["fCnt"], ev["devAddr"] = fport, fcnt, dev_addr
    ev["data"] = base64.b64encode(payload).decode()
    if fcnt == 0:
        del ev["fCnt"]  # protobuf's JSON mapping leaves a zero out, as in the documented example
    return ev


async def publish(port: int, eui: str, doc: Any, kind: str = "up", app: str = APP) -> None:
    payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(f"application/{app}/device/{eui}/event/{kind}", payload, qos=1)


def records(gw: Gateway) -> list:
    assert gw.store is not None
    return [r for _, r in gw.store.next_batch(1000)]


# ---------------------------------------------------------------- uplinks


async def test_the_documented_uplink_event_becomes_a_stored_record_with_its_radio_metadata(tmp_path, broker):
    gw, t = await started(tmp_path, broker.port)
    try:
        raw = seal(7, 42)
        await publish(broker.port, EUI[7], up_event(7, raw, fcnt=0))
        recs = await wait_for(lambda: records(gw), 5, "the record stored")
        (r,) = recs
        assert (r.node_id, r.counter, r.mtype) == (7, 42, m.LIGHT)
        assert r.body[2] == 123456 + 42  # the node's reading, verified with its own key
        # the documented rxInfo/txInfo: RSSI, SNR and the LoRa gateway that heard it
        assert (r.best_rssi, r.best_snr, r.gateway_id) == (-36, 10.5, "chirpstack:0016c001f153a14c")
        assert abs(r.rx_time - 1658136855.775) < 0.01  # the event's own time (nanoseconds dropped)
        assert t.counts["uplinks"] == 1 and gw.pipeline.received["chirpstack"] == 1
        # the documented example itself (fPort 1, one byte 0xaa) is another application's: refused, counted
        await publish(broker.port, "0101010101010101", UP)
        await wait_for(lambda: t.counts["foreign_port"] == 1, 5, "foreign port counted")
        assert gw.pipeline.rejected[("foreign_port", "chirpstack")] == 1
        assert len(records(gw)) == 1
        # and /metrics says so, under the transport's name
        assert gw.api is not None
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}") as http,
            http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
        ):
            text = await resp.text()
        assert re.search(r'lumeau_transport_stat\{transport="chirpstack",[^}]*counter="uplinks"\} 1', text), text
    finally:
        await gw.stop()


async def test_a_replayed_fcnt_is_refused_and_a_join_starts_the_session_again(tmp_path, broker):
    gw, t = await started(tmp_path, broker.port)
    try:
        first = up_event(7, seal(7, 10), fcnt=5)
        await publish(broker.port, EUI[7], first)
        await wait_for(lambda: len(records(gw)) == 1, 5, "first uplink stored")
        # the same event again (a redelivery, or someone replaying it through the broker)
        await publish(broker.port, EUI[7], first)
        await wait_for(lambda: t.counts["fcnt_replay"] == 1, 5, "replay refused")
        # a new frame with an old fCnt in the same session is refused too
        await publish(broker.port, EUI[7], up_event(7, seal(7, 11), fcnt=4))
        await wait_for(lambda: t.counts["fcnt_replay"] == 2, 5, "old fCnt refused")
        assert gw.pipeline.rejected[("replay", "chirpstack")] == 2
        (r,) = records(gw)
        assert r.receptions == 1  # a replay is not one more reception
        # the device joins again: LoRaWAN's fCnt restarts at 0, Lumeau's counter goes on
        await publish(broker.port, EUI[7], JOIN | {"deviceInfo": JOIN["deviceInfo"] | {"devEui": EUI[7]}}, "join")
        await wait_for(lambda: t.counts["joins"] == 1, 5, "join seen")
        await publish(broker.port, EUI[7], up_event(7, seal(7, 12), fcnt=0))
        await wait_for(lambda: len(records(gw)) == 2, 5, "the uplink after the join stored")
        # but a Lumeau frame already taken stays refused whatever LoRaWAN says (§4 window)
        await publish(broker.port, EUI[7], up_event(7, seal(7, 10), fcnt=1))
        await wait_for(lambda: t.counts["uplinks"] == 3, 5, "replayed frame reached the pipeline")
        await gw.pipeline.drain()
        assert len(records(gw)) == 2
    finally:
        await gw.stop()


async def test_an_unknown_dev_eui_is_refused_and_counted(tmp_path, broker):
    gw, t = await started(tmp_path, broker.port)
    try:
        ev = up_event(7, seal(7, 1), fcnt=1, eui="70b3d57effffffff")
        await publish(broker.port, "70b3d57effffffff", ev)
        await wait_for(lambda: t.counts["unknown_dev_eui"] == 1, 5, "unknown DevEUI counted")
        assert gw.pipeline.rejected[("unknown_node", "chirpstack")] == 1
        # a frame of node 7 sent under node 8's DevEUI: rebuilt as node 8's, its MIC fails
        await publish(broker.port, EUI[8], up_event(7, seal(7, 2), fcnt=1, eui=EUI[8]))
        await wait_for(lambda: gw.pipeline.rejected.get(("bad_mic", "chirpstack")) == 1, 5, "bad MIC")
        assert records(gw) == []
        # a node provisioned while the gateway runs is known at its first uplink
        write_registry(tmp_path, {**EUI, 9: "70b3d57ed0000009"})
        await gw.reload_registry()
        await publish(broker.port, "70b3d57ed0000009", up_event(9, seal(9, 1), fcnt=1, eui="70b3d57ed0000009"))
        await wait_for(lambda: len(records(gw)) == 1, 5, "the new node's record")
    finally:
        await gw.stop()


HOSTILE: list[tuple[Any, str]] = [
    (b"", "malformed"),
    (b"{", "malformed"),
    (b"[]", "malformed"),
    (b"\xff\xfe", "malformed"),
    (b"[" * 100_000 + b"]" * 100_000, "oversized"),
    (b"[" * 20_000 + b"]" * 20_000, "malformed"),  # deeper than the parser recurses
    (b'{"fPort": 34, "data": "' + b"1" * 5000 + b'"}', "malformed"),  # an integer-like string
    ({"fPort": "34", "data": "AAAA"}, "malformed"),
    ({"fPort": 34, "fCnt": -1, "data": "AAAA"}, "malformed"),
    ({"fPort": 34, "fCnt": 2**64, "data": "AAAA"}, "malformed"),
    ({"fPort": 34, "data": "not base64!"}, "malformed"),
    ({"fPort": 34, "data": 5}, "malformed"),
    ({"fPort": 34, "data": "AAAA"}, "malformed"),  # 3 bytes: no frame
    ({"fPort": 34, "data": "AAAAAAAAAAAAAAAA", "deviceInfo": {"devEui": "0000000000000001"}}, "malformed"),
    ({"fPort": 34, "data": "AAAAAAAAAAAAAAAA", "deviceInfo": []}, "malformed"),
    ({"fPort": True, "data": "AAAAAAAAAAAAAAAA"}, "malformed"),
    ({"fPort": 0, "data": ""}, "foreign_port"),
]


async def test_hostile_events_are_counted_and_logged_and_the_next_good_one_is_stored(tmp_path, broker, caplog):
    caplog.set_level(logging.INFO, "lumeau")
    gw, t = await started(tmp_path, broker.port)
    try:
        for payload, _ in HOSTILE:
            await publish(broker.port, EUI[7], payload)
        # metadata of the wrong type costs the field, not the uplink
        ev = up_event(7, seal(7, 3), fcnt=3)
        ev["rxInfo"] = [{"rssi": "loud", "snr": 1e400, "gatewayId": "../../etc"}, 7, {"rssi": -80, "snr": 2}]
        ev["txInfo"] = {"frequency": -1, "modulation": {"lora": {"spreadingFactor": 99}}}
        ev["time"] = "yesterday"
        await publish(broker.port, EUI[7], ev)
        (r,) = await wait_for(lambda: records(gw), 5, "the good uplink stored")
        assert (r.counter, r.best_rssi, r.best_snr) == (3, -80, 2)
        want: dict[str, int] = {}
        for _, reason in HOSTILE:
            want[reason] = want.get(reason, 0) + 1
        assert {k: t.counts[k] for k in want} == want
        assert t.counts["bad_field"] >= 6 and t.counts["internal_error"] == 0
        assert t.connected and t.counts["connections"] == 1  # never knocked off the broker
        assert any("rejected" in rec.getMessage() for rec in caplog.records)
    finally:
        await gw.stop()


# ---------------------------------------------------------------- downlinks


async def test_a_command_from_the_api_goes_out_on_the_downlink_topic_in_chirpstacks_format(tmp_path, broker):
    documented = set(re.findall(r'"(\w+)":', (VECTORS / "command-down.jsonc").read_text()))
    async with Subscriber(broker.port, f"application/{APP}/device/+/command/down") as sub:
        gw, t = await started(tmp_path, broker.port)
        try:
            assert gw.api is not None
            async with (
                aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}") as http,
                http.post(
                    "/nodes/00000007/commands",
                    json={"op": "set_level", "args": [30, 600], "ttl_s": 600},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp,
            ):
                cmd = await resp.json()
                assert resp.status == 201, cmd
            # class A: the command goes out in answer to the node's next uplink
            await publish(broker.port, EUI[7], up_event(7, seal(7, 1), fcnt=1))
            topic = f"application/{APP}/device/{EUI[7]}/command/down"
            (payload,) = await wait_for(lambda: sub.on(topic), 5, "the downlink published")
            doc = json.loads(payload)
            assert set(doc) == {"devEui", "confirmed", "fPort", "data"} <= documented
            assert doc["devEui"] == EUI[7] and doc["confirmed"] is False
            assert doc["fPort"] == 0x20 | m.COMMAND
            # what the node does with it: rebuild the frame, verify with its own key, decode
            raw = lorawan.frame_from_lorawan(doc["fPort"], 7, base64.b64decode(doc["data"]))
            f = frame.parse(raw)
            body = m.decode(f.mtype, frame.verify(node_keys(7), f))
            assert body[0] == cmd["command_id"] and body[1] == m.OP_SET_LEVEL and body[2] == [30, 600]
            # the node's CMD_ACK comes back through ChirpStack and closes the command
            ack = seal(7, 2, m.CMD_ACK, {0: cmd["command_id"], 1: m.RES_OK})
            await publish(broker.port, EUI[7], up_event(7, ack, fcnt=2))
            assert gw.store is not None
            await wait_for(lambda: gw.store.downlink(cmd["id"]).state == "acked", 5, "the command acked")
            assert t.counts["downlinks"] == 1
        finally:
            await gw.stop()


async def test_confirmed_downlinks_when_configured(tmp_path, broker):
    async with Subscriber(broker.port, f"application/{APP}/device/+/command/down") as sub:
        gw, _ = await started(tmp_path, broker.port, "confirmed = true")
        try:
            assert gw.downlinks is not None
            await gw.downlinks.enqueue(7, m.COMMAND, {1: m.OP_REBOOT}, ttl_s=600)
            await publish(broker.port, EUI[7], up_event(7, seal(7, 1), fcnt=1))
            (payload,) = await wait_for(lambda: sub.matching("application/"), 5, "the downlink")
            assert json.loads(bytes(payload.payload))["confirmed"] is True  # type: ignore[arg-type]
        finally:
            await gw.stop()


# ---------------------------------------------------------------- the broker's failures


async def test_the_broker_killed_and_back_the_transport_reconnects_and_events_flow(tmp_path, broker):
    gw, t = await started(tmp_path, broker.port)
    try:
        await publish(broker.port, EUI[7], up_event(7, seal(7, 1), fcnt=1))
        await wait_for(lambda: len(records(gw)) == 1, 5, "before")
        broker.kill()
        await wait_for(lambda: not t.connected, 10, "the loss noticed")
        broker.start()
        await wait_for(lambda: t.connected, 10, "reconnected with backoff")
        await publish(broker.port, EUI[7], up_event(7, seal(7, 2), fcnt=2))
        await wait_for(lambda: len(records(gw)) == 2, 5, "after")
        assert t.counts["connections"] == 2 and t.counts["connection_errors"] >= 1
    finally:
        await gw.stop()


async def test_events_published_while_the_gateway_is_away_wait_in_its_session(tmp_path, broker):
    """A persistent session (clean session false, a fixed client id): the broker keeps the QoS 1
    events of a restart, and the gateway takes them when it is back, in order."""
    gw, t = await started(tmp_path, broker.port)
    try:
        await publish(broker.port, EUI[7], up_event(7, seal(7, 1), fcnt=1))
        await wait_for(lambda: len(records(gw)) == 1, 5, "before")
        await t.stop()  # the transport goes away (a gateway restart), the broker stays
        for c in (2, 3, 4):
            await publish(broker.port, EUI[7], up_event(7, seal(7, c), fcnt=c))
        await t.start()
        await wait_for(lambda: len(records(gw)) == 4, 10, "the events kept by the broker")
        assert [r.counter for r in records(gw)] == [1, 2, 3, 4]
        assert t.counts["fcnt_replay"] == 0
    finally:
        await gw.stop()


async def test_refused_credentials_are_a_clear_error_and_no_secret_is_logged(tmp_path, caplog):
    b = Broker(tmp_path, users={"lumeau": "right-password-1"}).start()
    try:
        write_registry(tmp_path)
        cfg = write_config(tmp_path, b.port, 'username = "lumeau"\npassword = "wrong-password-9"')
        gw = Gateway(load_config(cfg))
        await gw.start()
        try:
            t = next(t for t in gw.transports if isinstance(t, ChirpstackTransport))
            await wait_for(lambda: t.counts["refused"] >= 1, 10, "refused")
            assert not t.connected
            text = caplog.text
            assert "chirpstack.username" in text and "wrong-password-9" not in text
        finally:
            await gw.stop()
    finally:
        b.stop()


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ('application_id = ""', "chirpstack.application_id: required"),
        ('application_id = "a/b"', "chirpstack.application_id: 'a/b' is not one MQTT topic level"),
        ('password = "x"', "chirpstack.password: set without a username"),
        ('ca_file = "ca.pem"', "chirpstack.ca_file: set, but chirpstack.tls is false"),
        ("keepalive_s = 1", "chirpstack.keepalive_s"),
        ("confirmd = true", "chirpstack.confirmd: unknown key (did you mean 'confirmed'?)"),
    ],
)
def test_bad_configuration_names_the_file_the_key_and_why(tmp_path, extra, why):
    p = write_config(tmp_path, 1883, extra)
    text = p.read_text().replace(f'application_id = "{APP}"\n', "") if "application_id" in extra else p.read_text()
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(str(p)) and why in str(e.value)


def test_the_registry_refuses_a_dev_eui_twice_or_malformed(tmp_path):
    with pytest.raises(RegistryError, match="dev_eui: must be 16 hex digits"):
        NodeEntry(node_id=1, kind="lighting", root_key=root_key(1), dev_eui="70b3")
    reg = Registry(tmp_path / "nodes.toml")
    reg.upsert(NodeEntry(node_id=1, kind="lighting", root_key=root_key(1), dev_eui="70B3D57ED0000001"))
    assert reg.dev_euis() == {"70b3d57ed0000001": 1}  # kept in lower case
    with pytest.raises(RegistryError, match="is node 00000001's"):
        reg.upsert(NodeEntry(node_id=2, kind="lighting", root_key=root_key(2), dev_eui="70b3d57ed0000001"))
    reg.save()
    text = (tmp_path / "nodes.toml").read_text()
    assert 'dev_eui = "70b3d57ed0000001"' in text
    (tmp_path / "nodes.toml").write_text(
        text + text.replace("[nodes.00000001]", "[nodes.00000002]").replace("version = 1\n", "")
    )
    with pytest.raises(RegistryError, match=r"nodes.00000002: dev_eui: 70b3d57ed0000001 is node 00000001's too"):
        Registry.load(tmp_path / "nodes.toml")


def test_the_example_config_shows_every_chirpstack_key():
    from dataclasses import fields

    from gateway.config import ChirpStackSection, example_config

    text = example_config()
    assert "[chirpstack]" in text
    for f in fields(ChirpStackSection):
        assert re.search(rf"^(# )?{f.name} = ", text, re.M), f.name


# ---------------------------------------------------------------- fuzz: hostile event JSON


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """The transport's message handler over a real pipeline and store (no broker: the JSON is the input)."""
    from gateway.pipeline import Pipeline
    from gateway.store import Store
    from gateway.transports.chirpstack import RegistryDevices

    d = tmp_path_factory.mktemp("chirpstack-fuzz")
    write_registry(d)
    reg = Registry.load(d / "nodes.toml")
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(d / "gw.db"))
    pipe = Pipeline(reg, store)
    t = ChirpstackTransport(pipe, "127.0.0.1", 1, application_id=APP, devices=RegistryDevices(lambda: reg))
    yield loop, t, pipe, itertools.count(1)
    loop.run_until_complete(pipe.close())
    loop.run_until_complete(store.close())
    loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
EVENT_KEYS = ["deviceInfo", "devAddr", "fPort", "fCnt", "data", "rxInfo", "txInfo", "time", "devEui", "x"]
RX_KEYS = ["gatewayId", "rssi", "snr", "uplinkId", "context"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from(EVENT_KEYS), json_values, max_size=4),
    rx_changes=st.dictionaries(st.sampled_from(RX_KEYS), json_values, max_size=3),
    garbage=st.none() | st.binary(max_size=300) | json_values,
    topic=st.sampled_from(["ok", "ok", "ok", "other-app", "bad-eui", "join", "junk"]),
)
def test_fuzz_hostile_events_never_raise_and_never_cost_the_next_valid_uplink(rig, changes, rx_changes, garbage, topic):
    loop, t, pipe, counter = rig
    n = next(counter)
    ev = up_event(7, seal(7, 10 * n), fcnt=10 * n)
    ev.update(changes)
    if isinstance(ev.get("rxInfo"), list) and ev["rxInfo"] and isinstance(ev["rxInfo"][0], dict):
        ev["rxInfo"][0].update(rx_changes)
    topics = {
        "ok": f"application/{APP}/device/{EUI[7]}/event/up",
        "other-app": f"application/x/device/{EUI[7]}/event/up",
        "bad-eui": f"application/{APP}/device/zz/event/up",
        "join": f"application/{APP}/device/{EUI[7]}/event/join",
        "junk": "#/+/\x00",
    }
    hostile = [json.dumps(ev).encode(), garbage if isinstance(garbage, bytes) else json.dumps(garbage).encode()]

    async def run() -> None:
        for payload in hostile:
            verdict = await t.handle(topics[topic], payload)
            assert isinstance(verdict, str) and verdict != "internal_error"
        # the node's next valid uplink is still taken: nothing hostile moved its Lumeau counter or
        # broke the transport (a new session, as after a join: a mutated event that kept a valid frame
        # may legitimately have moved this session's fCnt anywhere)
        good = up_event(7, seal(7, 10 * n + 5), fcnt=1, dev_addr=f"{n:08x}")
        assert await t.handle(topics["ok"], json.dumps(good).encode()) == "accepted"

    loop.run_until_complete(run())
    assert t.counts["internal_error"] == 0
    assert pipe.rejected.get(("internal_error", "chirpstack"), 0) == 0


def test_provisioning_records_the_dev_eui_in_the_registry(tmp_path):
    from lumeau.provision import ProvisionError, provision

    reg = tmp_path / "nodes.toml"
    p = provision(
        "lighting", tmp_path / "a.json", node_id=0x11, registry=reg, new_registry=True, dev_eui="70B3D57ED0000011"
    )
    assert Registry.load(reg).get(p.node_id).dev_eui == "70b3d57ed0000011"
    with pytest.raises(ProvisionError, match="dev_eui"):  # one DevEUI, one node
        provision("lighting", tmp_path / "b.json", node_id=0x12, registry=reg, dev_eui="70b3d57ed0000011")
    with pytest.raises(ProvisionError, match="16 hex digits"):
        provision("lighting", tmp_path / "c.json", node_id=0x13, registry=reg, dev_eui="70b3")


def test_a_lorawan_node_gets_its_dev_eui_in_the_registry_and_in_its_modem_config(tmp_path):
    from lumeau.provision import ProvisionError, provision

    reg = tmp_path / "nodes.toml"
    out = tmp_path / "n.json"
    provision(
        "lighting", out, node_id=0x21, registry=reg, new_registry=True, board="esp32-devkit", radio="lorawan",
        dev_eui="70B3D57ED0000021",
    )  # fmt: skip
    cfg = json.loads(out.read_text())
    assert cfg["radio"]["type"] == "lorawan" and cfg["radio"]["dev_eui"] == "70b3d57ed0000021"
    assert Registry.load(reg).get(0x21).dev_eui == "70b3d57ed0000021"
    with pytest.raises(ProvisionError, match="the template's radio.dev_eui is 70b3d57ed0000099"):
        provision(
            "lighting", tmp_path / "m.json", node_id=0x22, registry=reg, board="esp32-devkit", radio="lorawan",
            template={"radio": {"type": "lorawan", "dev_eui": "70b3d57ed0000099"}}, dev_eui="70b3d57ed0000022",
        )  # fmt: skip
    assert not (tmp_path / "m.json").exists() and Registry.load(reg).get(0x22) is None  # nothing half done
