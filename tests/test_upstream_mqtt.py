"""The MQTT upstream against Debian's real mosquitto (tests/mqtt_broker.py), draining a real store.

Frames sealed by protocol/ go into a real Gateway (pipeline, SQLite store,
downlinks) configured with [mqtt]; a recording subscriber on the same broker
reads what the gateway publishes, in both shapes. Commands come in as the
platform would send them (a ThingsBoard RPC, a plain command message) and a
sealed CMD_ACK from the node closes the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiomqtt
import pytest
from gateway_helpers import reception, record, registry, seal
from mqtt_broker import Broker, Subscriber
from waiting import wait_for

from gateway import mqtt_shapes as ms
from gateway.config import load_config
from gateway.service import Gateway
from gateway.store import Store
from gateway.upstream_mqtt import MqttUpstream
from protocol import messages as m

TOKEN = "mqtt-test-api-token-0123456789"
FAST = dict(backoff_base=0.05, backoff_max=0.3, max_age=0.02, timeout=5.0)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    yield s
    await s.close()


def write_config(tmp_path: Path, port: int, shape: str, extra: str = "") -> Path:
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
[mqtt]
enabled = true
port = {port}
shape = "{shape}"
site = "parc-nord"
batch_max_age_s = 0.05
backoff_initial_s = 0.05
backoff_max_s = 0.5
{extra}
""")
    return p


async def started_gateway(tmp_path: Path, port: int, shape: str, nodes=(7, 8), extra: str = "") -> Gateway:
    registry(tmp_path / "nodes.toml", list(nodes)).save()
    gw = Gateway(load_config(write_config(tmp_path, port, shape, extra)))
    await gw.start()
    return gw


def per_node(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for n, c in pairs:
        out.setdefault(n, []).append(c)
    return out


# ---------------------------------------------------------------- frames in -> telemetry out


async def test_plain_frames_in_become_retained_per_node_topics_in_order(tmp_path, broker):
    async with Subscriber(broker.port, "lumeau/#") as sub:
        gw = await started_gateway(tmp_path, broker.port, "plain")
        try:
            assert gw.upstream.url == f"mqtt://127.0.0.1:{broker.port}"
            for c in range(1, 6):
                for n in (7, 8):
                    assert await gw.pipeline.ingest(reception(seal(n, c))) == "accepted"
            await wait_for(lambda: len(sub.matching("lumeau/parc-nord/0000000")) >= 10, 10, "10 records published")
            await wait_for(lambda: gw.store.count() == 0, 5, "the store emptied after the PUBACKs")
        finally:
            await gw.stop()
        docs = [json.loads(bytes(x.payload)) for x in sub.matching("lumeau/parc-nord/0000000")]
        topics = {x.topic.value for x in sub.matching("lumeau/parc-nord/0000000")}
        assert topics == {"lumeau/parc-nord/00000007/light", "lumeau/parc-nord/00000008/light"}
        assert per_node([(int(d["node"], 16), d["counter"]) for d in docs]) == {7: [1, 2, 3, 4, 5], 8: [1, 2, 3, 4, 5]}
        d = docs[0]
        assert d["id"] == "00000007-1" and d["type"] == "light" and d["fields"]["level"] == 40
        assert d["fields"]["power"] == 45.2 and d["radio"]["rssi"] == -90.0
        # the gateway said online, and at its clean stop offline (both retained)
        assert sub.on("lumeau/parc-nord/status")[:1] == [b"online"]
        await wait_for(lambda: sub.on("lumeau/parc-nord/status")[-1:] == [b"offline"], 5, "offline at the stop")
    # a subscriber arriving later gets each node's last state at once (retained)
    async with Subscriber(broker.port, "lumeau/parc-nord/+/light", "lumeau/parc-nord/status") as late:
        await wait_for(lambda: len(late.messages) >= 3, 5, "the retained messages")
        last = {x.topic.value: json.loads(bytes(x.payload))["counter"] for x in late.matching("lumeau/parc-nord/0")}
        assert last == {"lumeau/parc-nord/00000007/light": 5, "lumeau/parc-nord/00000008/light": 5}
        assert all(x.retain for x in late.messages)
        assert late.on("lumeau/parc-nord/status") == [b"offline"]


async def test_thingsboard_frames_in_connect_the_device_then_telemetry_with_ms_timestamps(tmp_path, broker):
    async with Subscriber(broker.port, "v1/gateway/#") as sub:
        gw = await started_gateway(tmp_path, broker.port, "thingsboard")
        try:
            hello = seal(7, 1, m.HELLO, {0: "1.4.0", 1: m.KIND_LIGHTING, 2: 0, 4: 1})
            assert await gw.pipeline.ingest(reception(hello, rx_time=1_700_000_000.25)) == "accepted"
            for c in range(2, 5):
                assert await gw.pipeline.ingest(reception(seal(7, c), rx_time=1_700_000_000 + c)) == "accepted"
            await wait_for(lambda: gw.store.count() == 0, 10, "all delivered")
            await wait_for(lambda: sum(len(json.loads(p)["00000007"]) for p in sub.on(ms.TB_TELEMETRY)) >= 3, 5)
        finally:
            await gw.stop()
        order = [x.topic.value for x in sub.messages]
        assert order[0] == ms.TB_CONNECT  # before any data of the device
        assert json.loads(sub.on(ms.TB_CONNECT)[0]) == {"device": "00000007", "type": "lighting"}
        attrs = [json.loads(p) for p in sub.on(ms.TB_ATTRIBUTES)]
        merged = {k: v for a in attrs for k, v in a["00000007"].items()}
        assert merged["kind"] == "lighting" and merged["hello_firmware"] == "1.4.0"
        entries = [e for p in sub.on(ms.TB_TELEMETRY) for e in json.loads(p)["00000007"]]
        assert [e["ts"] for e in entries] == [1_700_000_002_000, 1_700_000_003_000, 1_700_000_004_000]
        assert entries[0]["values"]["level"] == 40 and entries[0]["values"]["state"] == ["on", "boost"]
        assert "root_key" not in json.dumps(attrs)
        await wait_for(lambda: sub.on(ms.TB_DISCONNECT), 5, "the disconnect at the clean stop")
        assert json.loads(sub.on(ms.TB_DISCONNECT)[0]) == {"device": "00000007"}


async def test_lumeau_gateway_process_udp_frames_in_mqtt_out_and_offline_at_sigterm(tmp_path, broker):
    # the real `lumeau gateway` process, frames from a packet forwarder over UDP
    import socket

    from gateway_helpers import GatewayProcess, push_data

    registry(tmp_path / "nodes.toml", [7]).save()
    cfg = write_config(tmp_path, broker.port, "plain", extra="")
    cfg.write_text(cfg.read_text() + '[semtech]\nenabled = true\nhost = "127.0.0.1"\nport = 0\n')
    async with Subscriber(broker.port, "lumeau/parc-nord/#") as sub:
        gw = GatewayProcess(cfg)
        try:
            started = await asyncio.to_thread(gw.start)
            assert started["upstream"] == f"mqtt://127.0.0.1:{broker.port}"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(push_data([seal(7, c) for c in (1, 2, 3)]), ("127.0.0.1", started["semtech_port"]))
            await wait_for(lambda: len(sub.on("lumeau/parc-nord/00000007/light")) == 3, 15, "3 records")
            assert [json.loads(p)["counter"] for p in sub.on("lumeau/parc-nord/00000007/light")] == [1, 2, 3]
            assert await asyncio.to_thread(gw.stop) == 0
            await wait_for(lambda: sub.on("lumeau/parc-nord/status")[-1:] == [b"offline"], 5, "offline")
            assert "connected to the MQTT broker" in {d.get("msg") for d in gw.lines}
        finally:
            gw.kill()


# ---------------------------------------------------------------- commands in, CMD_ACK out


async def rpc(port: int, doc: dict | bytes, topic: str = ms.TB_RPC) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(topic, doc if isinstance(doc, bytes) else json.dumps(doc).encode(), qos=1)


def replies(sub: Subscriber, rpc_id: int) -> list[dict]:
    out = []
    for p in sub.on(ms.TB_RPC):
        try:
            d = json.loads(p)
        except ValueError:
            continue  # the junk the test itself sent
        if (
            isinstance(d, dict)
            and isinstance(d.get("data"), dict)
            and d.get("id") == rpc_id
            and "method" not in d.get("data", {})
        ):
            out.append(d)
    return out


async def test_an_rpc_becomes_a_checked_downlink_and_the_cmd_ack_its_reply(tmp_path, broker):
    async with Subscriber(broker.port, ms.TB_RPC) as sub:
        gw = await started_gateway(tmp_path, broker.port, "thingsboard")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            call = {
                "device": "00000007",
                "data": {"id": 42, "method": "set_level", "params": {"level": 30, "duration": 600}},
            }
            await rpc(broker.port, call)
            dls = await wait_for(lambda: gw.store.downlinks(node_id=7), 5, "the downlink queued")
            dl = dls[0]
            assert dl.mtype == m.COMMAND and dl.state == "queued" and dl.body[1] == 1  # set_level
            assert dl.body[2] == [30, 600]  # named arguments, as the API takes them
            # the node executes it and answers (a sealed CMD_ACK frame through the pipeline)
            ack = seal(7, 1, m.CMD_ACK, {0: dl.command_id, 1: m.RES_OK})
            assert await gw.pipeline.ingest(reception(ack)) == "accepted"
            got = await wait_for(lambda: replies(sub, 42), 10, "the RPC reply")
            assert got[0]["device"] == "00000007"
            assert got[0]["data"]["success"] is True and got[0]["data"]["result"] == "ok"
            assert got[0]["data"]["command_id"] == dl.command_id
            await wait_for(lambda: gw.store.downlink(dl.id).state == "acked", 5, "the downlink acked")
            # a command the node would refuse is refused at once, the way the HTTP API refuses it
            await rpc(broker.port, {"device": "00000007", "data": {"id": 43, "method": "set_level", "params": [500]}})
            bad = await wait_for(lambda: replies(sub, 43), 5, "the refusal")
            assert bad[0]["data"]["success"] is False and "level" in bad[0]["data"]["error"]
            assert len(gw.store.downlinks(node_id=7)) == 1
        finally:
            await gw.stop()


async def test_a_plain_command_is_answered_queued_then_acked_on_the_reply_topic(tmp_path, broker):
    async with Subscriber(broker.port, "lumeau/parc-nord/+/reply") as sub:
        gw = await started_gateway(tmp_path, broker.port, "plain")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            cmd = {"op": "set_level", "args": [20, 60], "request_id": "r-1"}
            await rpc(broker.port, cmd, "lumeau/parc-nord/00000008/command")
            first = await wait_for(lambda: sub.on("lumeau/parc-nord/00000008/reply"), 5, "queued")
            q = json.loads(first[0])
            assert q["request_id"] == "r-1" and q["state"] == "queued" and q["command"]["op"] == "set_level"
            ack = seal(8, 1, m.CMD_ACK, {0: q["command"]["command_id"], 1: m.RES_OK})
            assert await gw.pipeline.ingest(reception(ack)) == "accepted"
            both = await wait_for(lambda: len(sub.on("lumeau/parc-nord/00000008/reply")) >= 2 or None, 10, "acked")
            del both
            a = json.loads(sub.on("lumeau/parc-nord/00000008/reply")[1])
            assert a["request_id"] == "r-1" and a["state"] == "acked" and a["success"] is True
        finally:
            await gw.stop()


async def test_an_rpc_whose_command_expires_unanswered_is_answered_so(tmp_path, broker):
    async with Subscriber(broker.port, ms.TB_RPC) as sub:
        gw = await started_gateway(tmp_path, broker.port, "thingsboard")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            call = {"device": "00000008", "data": {"id": 77, "method": "clear_fault", "params": {"ttl_s": 1}}}
            await rpc(broker.port, call)
            (dl,) = await wait_for(lambda: gw.store.downlinks(node_id=8), 5, "queued")
            # the node never answers: the downlink queue expires it after its ttl, and the RPC hears so
            got = await wait_for(lambda: replies(sub, 77), 10, "the expiry's reply")
            assert got[0]["data"] == {
                "success": False,
                "state": "expired",
                "error": "the command expired without an answer",
            }
            assert gw.store.downlink(dl.id).state == "expired"
        finally:
            await gw.stop()


async def test_commands_false_refuses_every_rpc_with_an_error_reply(tmp_path, broker):
    async with Subscriber(broker.port, ms.TB_RPC) as sub:
        gw = await started_gateway(tmp_path, broker.port, "thingsboard", extra="commands = false")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            await rpc(broker.port, {"device": "00000007", "data": {"id": 9, "method": "clear_fault"}})
            got = await wait_for(lambda: replies(sub, 9), 5, "the refusal")
            assert got[0]["data"] == {"success": False, "error": "this gateway takes no commands over MQTT"}
            assert gw.store.downlinks() == []
        finally:
            await gw.stop()


async def test_malformed_rpcs_and_unknown_devices_get_an_error_and_nothing_breaks(tmp_path, broker, caplog):
    caplog.set_level(logging.WARNING, "lumeau.gateway.upstream_mqtt")
    async with Subscriber(broker.port, ms.TB_RPC) as sub:
        gw = await started_gateway(tmp_path, broker.port, "thingsboard")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            for junk in (b"not json", b"\xff\xfe", b"[]", b'{"device": 7}', b'{"a":1,"a":2}', b"{" * 5000):
                await rpc(broker.port, junk)
            await rpc(broker.port, {"device": "00000063", "data": {"id": 5, "method": "set_level", "params": [5]}})
            await rpc(broker.port, {"device": "00000007", "data": {"id": 6, "method": "explode"}})
            unknown = await wait_for(lambda: replies(sub, 5), 5, "the unknown device's reply")
            assert unknown[0]["data"]["success"] is False and "not in the registry" in unknown[0]["data"]["error"]
            bad_op = await wait_for(lambda: replies(sub, 6), 5, "the bad op's reply")
            assert "unknown op 'explode'" in bad_op[0]["data"]["error"]
            await wait_for(lambda: gw.upstream.commands_refused >= 8, 5, "every refusal counted")
            assert gw.upstream.connected and gw.upstream._task is not None and not gw.upstream._task.done()
            assert gw.store.downlinks() == []
            assert any("MQTT command refused" in r.getMessage() for r in caplog.records)
            # and a good one still goes through
            await rpc(broker.port, {"device": "00000007", "data": {"id": 7, "method": "clear_fault"}})
            await wait_for(lambda: gw.store.downlinks(node_id=7), 5, "the good command queued")
        finally:
            await gw.stop()


async def test_a_flood_of_commands_costs_bounded_work_and_records_still_flow(tmp_path, broker):
    async with Subscriber(broker.port, "lumeau/parc-nord/00000007/light") as sub:
        gw = await started_gateway(tmp_path, broker.port, "plain")
        try:
            await wait_for(lambda: gw.upstream.connected, 5, "connected")
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                for i in range(500):
                    doc = {"op": "clear_fault", "request_id": i}
                    await c.publish("lumeau/parc-nord/00000007/command", json.dumps(doc).encode(), qos=1)
            up = gw.upstream
            await wait_for(lambda: up.commands_in + up.commands_dropped == 500, 20, "every message taken or dropped")
            # each command taken is answered once: queued, or refused
            await wait_for(lambda: up.replies == up.commands_in, 20, "every command taken answered")
            # the node's queue holds at most 16: the rest were refused (429), none lost track of
            assert len(gw.store.downlinks(node_id=7)) == 16 and up.commands_refused == up.commands_in - 16
            assert up.connected and not up._task.done()
            text = gw.api.render_metrics()
            assert "lumeau_upstream_connected 1" in text
            assert f'lumeau_upstream_commands_total{{outcome="refused"}} {up.commands_refused}' in text
            assert await gw.pipeline.ingest(reception(seal(7, 1))) == "accepted"
            await wait_for(lambda: sub.messages, 5, "a record still delivered")
        finally:
            await gw.stop()


# ---------------------------------------------------------------- failures


async def test_the_broker_killed_mid_burst_loses_nothing_and_keeps_per_node_order(tmp_path, broker, store):
    # The gateway's promise ends at the broker's PUBACK: what the broker acknowledged and then lost in
    # its SIGKILL (queued for a slow subscriber) is the broker's to keep (persistence, a cluster).
    # Everything it had not acknowledged must still be in the store, and arrive, in order, after it is back.
    records = [record(n, c) for c in range(1, 601) for n in (1, 2, 3)]
    for r in records:
        await store.append(r)
    async with Subscriber(broker.port, "lumeau/site/#") as sub:
        # reconnecting after 1-2 s: the subscriber (50 ms) is back on the restarted broker first
        slow = {**FAST, "backoff_base": 2.0, "backoff_max": 2.0}
        up = MqttUpstream(store, "127.0.0.1", broker.port, site="site", batch_size=50, **slow)
        await up.start()
        try:
            await wait_for(lambda: up.records_sent >= 300, 15, "a part of the burst delivered")
            broker.kill()  # mid-burst: messages in flight, a batch unacknowledged
            await wait_for(lambda: not up.connected, 5, "the loss noticed")
            acked = up.records_sent

            # the deletes of what was acknowledged before the kill are tasks of the upstream's, maybe not
            # yet submitted to the store: wait for the count (more gone than acked would never match)
            # nothing unacknowledged left the store: exactly what the broker acknowledged is gone
            def queued() -> list[str]:
                return [r.idempotency_key for _, r in store.next_batch(10_000)]

            await wait_for(lambda: len(queued()) == len(records) - acked, 5, "the acknowledged records deleted")
            held = queued()
            assert len(held) == len(records) - acked > 0
            broker.start()
            await wait_for(lambda: sub.subscribed == 2, 5, "the subscriber back")
            before = len(sub.matching("lumeau/site/0"))
            await wait_for(lambda: store.count() == 0, 30, "the rest delivered after the restart")
        finally:
            await up.stop()

        def ids(start: int = 0) -> list[str]:
            return [json.loads(bytes(x.payload))["id"] for x in sub.matching("lumeau/site/0")[start:]]

        await wait_for(lambda: set(held) <= set(ids()), 10, "every held record at the subscriber")
    assert up.connections == 2 and up.records_sent >= len(records)
    # after the restart: the held records, whole, each node's in order (a resent batch may repeat some)
    after = [i for i in ids(before) if i in set(held)]
    assert set(after) == set(held)
    for stream in (ids(), after):  # and across the kill, a node's records never go backwards
        firsts: dict[str, list[int]] = {}
        seen: set[str] = set()
        for i in stream:
            if i not in seen:
                seen.add(i)
                firsts.setdefault(i[:8], []).append(int(i[9:]))
        assert all(c == sorted(c) for c in firsts.values())
    firsts_after: dict[str, list[int]] = {}
    for i in dict.fromkeys(after):
        firsts_after.setdefault(i[:8], []).append(int(i[9:]))
    want = {}
    for k in held:
        want.setdefault(k[:8], []).append(int(k[9:]))
    assert firsts_after == want


async def test_refused_credentials_are_a_clear_error_and_the_records_stay_queued(tmp_path, store, caplog):
    b = Broker(tmp_path, users={"lumeau": "right-password-1"}).start()
    caplog.set_level(logging.INFO, "lumeau.gateway.upstream_mqtt")
    try:
        for c in range(1, 11):
            await store.append(record(5, c))
        up = MqttUpstream(store, "127.0.0.1", b.port, username="lumeau", password="wrong-password-9", **FAST)
        await up.start()
        try:
            await wait_for(lambda: up.responses.get("refused", 0) >= 2, 10, "refusals, retried")
            assert store.count() == 10 and up.records_sent == 0 and not up.connected
        finally:
            await up.stop()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and "refused the connection" in errors[0].getMessage()
        assert "mqtt.password" in errors[0].getMessage()
        assert "wrong-password-9" not in caplog.text and "wrong-password-9" not in repr(up)
        # the right password: the same records go
        up = MqttUpstream(store, "127.0.0.1", b.port, username="lumeau", password="right-password-1", **FAST)
        await up.start()
        try:
            await wait_for(lambda: store.count() == 0, 10, "delivered with the right password")
        finally:
            await up.stop()
    finally:
        b.stop()


async def test_tls_with_a_client_certificate(tmp_path, store):
    import subprocess

    from gateway.upstream_mqtt import tls_context

    d = tmp_path / "pki"
    d.mkdir()

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    sh(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        sh(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        sh(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    b = Broker(tmp_path, tls={"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}).start()
    try:
        await store.append(record(9, 1))
        # without the client certificate the broker refuses the handshake: retried, nothing lost
        up = MqttUpstream(store, "127.0.0.1", b.port, tls=tls_context(d / "ca.pem", None, None), **FAST)
        await up.start()
        try:
            await wait_for(lambda: up.retries >= 1, 10, "a failed handshake")
            assert store.count() == 1
        finally:
            await up.stop()
        ctx = tls_context(d / "ca.pem", d / "client.pem", d / "client.key")
        up = MqttUpstream(store, "127.0.0.1", b.port, tls=ctx, **FAST)
        assert up.url.startswith("mqtts://")
        await up.start()
        try:
            await wait_for(lambda: store.count() == 0, 10, "delivered over TLS")
        finally:
            await up.stop()
    finally:
        b.stop()


async def test_a_record_that_cannot_be_encoded_is_quarantined_alone(tmp_path, broker, store):
    bad = record(4, 2)
    bad.rx_time = 1e300  # no timestamp holds it (ms beyond 64 bits)
    for r in (record(4, 1), bad, record(4, 3)):
        await store.append(r)
    async with Subscriber(broker.port, "v1/gateway/telemetry") as sub:
        up = MqttUpstream(store, "127.0.0.1", broker.port, shape="thingsboard", **FAST)
        await up.start()
        try:
            await wait_for(lambda: store.count() == 0, 10, "delivered or quarantined")
            await wait_for(lambda: sub.messages, 5)
        finally:
            await up.stop()
    assert up.quarantined_records == 1 and store.quarantine_count() == 1
    (q,) = store.quarantined()
    assert q["status"] == 0 and "cannot encode" in q["response"]
    sent = [e for p in sub.on(ms.TB_TELEMETRY) for e in json.loads(p)["00000004"]]
    assert len(sent) == 2
