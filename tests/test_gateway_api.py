"""gateway/api.py over a real aiohttp server on 127.0.0.1: auth, nodes, commands, metrics."""

from __future__ import annotations

import re
import stat

import aiohttp
import pytest
from gateway_helpers import reception, registry, root_key, seal

from gateway.api import Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import NodeEntry, Registry
from gateway.store import Store
from protocol import frame
from protocol import messages as m

TOKEN = "a-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def gw(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1, 2])
    reg.save()
    d = Downlinks(s, reg, max_queued_per_node=2)
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0)
    await api.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
        yield http, p, reg
    await api.stop()
    await d.close()
    await s.close()


async def test_only_healthz_is_open(gw):
    http, *_ = gw
    async with http.get("/healthz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    for method, path in [
        ("GET", "/metrics"),
        ("GET", "/nodes"),
        ("GET", "/nodes/00000001"),
        ("PUT", "/nodes/00000003"),
        ("DELETE", "/nodes/00000001"),
        ("POST", "/nodes/00000001/commands"),
        ("GET", "/commands"),
        ("GET", "/commands/1"),
        ("GET", "/quarantine"),
        ("GET", "/no/such/path"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            async with http.request(method, path, headers=headers, json={}) as r:
                assert r.status == 401, (method, path, headers)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get("/no/such/path", headers=AUTH) as r:
        assert r.status == 404 and "error" in await r.json()


async def test_nodes_show_their_state_never_their_key(gw):
    http, p, _ = gw
    assert await p.ingest(reception(seal(1, 5, m.IRRIGATION), rssi=-77.0, gateway_id="udp:aa")) == "accepted"
    alarm = seal(1, 6, m.EVENT, {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: 950, 4: 1, 5: 2})
    assert await p.ingest(reception(alarm, rssi=-77.0, gateway_id="udp:aa")) == "accepted"
    async with http.get("/nodes/0x00000001", headers=AUTH) as r:
        node = await r.json()
    assert node["id"] == "00000001" and node["kind"] == "lighting"
    assert node["rssi"] == -77.0 and node["gateway"] == "udp:aa" and node["last_seen"] > 0
    assert node["supply_voltage"] == {"value": 24050, "unit": "mV"}
    assert node["readings"]["irrigation"]["fields"]["flow"] == {"value": 14.5, "unit": "L/min"}
    assert [a["fields"]["code"]["value"] for a in node["open_alarms"]] == ["burst"]
    async with http.get("/nodes", headers=AUTH) as r:
        body = await r.text()
    assert root_key(1).hex() not in body and "root_key" not in body
    assert [n["id"] for n in (await r.json())["nodes"]] == ["00000001", "00000002"]
    async with http.get("/nodes/00000009", headers=AUTH) as r:
        assert r.status == 404
    async with http.get("/nodes/nothex", headers=AUTH) as r:
        assert r.status == 400


async def test_nodes_are_added_updated_rekeyed_and_removed(gw, tmp_path):
    http, p, reg = gw
    new_key = bytes(range(100, 116))
    doc = {"kind": "irrigation", "root_key": new_key.hex(), "name": "Parc Monceau", "lat": 48.8796, "lon": 2.3088}
    async with http.put("/nodes/000000aa", json=doc, headers=AUTH) as r:
        assert r.status == 201 and "root_key" not in await r.json()
    saved = Registry.load(tmp_path / "nodes.toml")  # written at once, still private
    assert saved.get(0xAA).name == "Parc Monceau" and saved.get(0xAA).root_key == new_key
    assert stat.S_IMODE((tmp_path / "nodes.toml").stat().st_mode) == 0o600
    async with http.put("/nodes/000000aa", json={"site": "8e"}, headers=AUTH) as r:
        assert r.status == 200 and (await r.json())["site"] == "8e"
    assert Registry.load(tmp_path / "nodes.toml").get(0xAA).root_key == new_key  # key kept
    # a new root key resets the node's counters: it may start again at 0
    assert await p.ingest(reception(seal(1, 500))) == "accepted"
    other = bytes(range(50, 66))
    async with http.put("/nodes/00000001", json={"root_key": other.hex()}, headers=AUTH) as r:
        assert r.status == 200
    raw = frame.seal(NodeEntry(node_id=1, kind="lighting", root_key=other).keys, m.LIGHT, 0, m.encode(m.LIGHT, {0: 5}))
    assert await p.ingest(reception(raw)) == "accepted"
    for bad, why in [
        ({"kind": "lamp", "root_key": "00" * 16}, "kind"),
        ({"kind": "lighting"}, "root_key"),
        ({"kind": "lighting", "root_key": "zz"}, "root_key"),
        ([1], "object"),
    ]:
        async with http.put("/nodes/000000bb", json=bad, headers=AUTH) as r:
            assert r.status == 400 and why in (await r.json())["error"]
    async with http.put("/nodes/000000bb", data=b"{not json", headers=AUTH) as r:
        assert r.status == 400
    assert 0xBB not in reg
    async with http.delete("/nodes/000000aa", headers=AUTH) as r:
        assert r.status == 204
    assert Registry.load(tmp_path / "nodes.toml").get(0xAA) is None
    async with http.delete("/nodes/000000aa", headers=AUTH) as r:
        assert r.status == 404


async def test_commands_enqueue_list_status_cancel(gw):
    http, p, _ = gw
    async with http.post(
        "/nodes/00000001/commands", json={"op": "set_level", "args": [100, 600], "ttl_s": 900}, headers=AUTH
    ) as r:
        cmd = await r.json()
        assert r.status == 201, cmd
    assert cmd["op"] == "set_level" and cmd["args"] == [100, 600] and cmd["state"] == "queued"
    assert cmd["command_id"] == cmd["id"] and cmd["expires"] - cmd["created"] == 900
    async with http.post(
        "/nodes/00000001/commands", json={"type": "config", "settings": {"report_interval": 900}}, headers=AUTH
    ) as r:
        assert r.status == 201 and (await r.json())["settings"] == {"report_interval": 900}
    async with http.post("/nodes/00000001/commands", json={"type": "time"}, headers=AUTH) as r:
        assert r.status == 429  # this test's queue holds two per node
    for bad, status, why in [
        ({"op": "explode"}, 400, "unknown op"),
        ({"op": "set_level", "args": "x"}, 400, "args"),
        ({"op": 1, "args": [2**31, 0]}, 400, "out of range"),  # per-op ranges: checked at the API (issue 17)
        ({"type": "config", "settings": {"colour": 1}}, 400, "unknown setting"),
        ({"type": "mail"}, 400, "type"),
        ({"op": 1, "when": 3}, 400, "unknown field"),
    ]:
        async with http.post("/nodes/00000002/commands", json=bad, headers=AUTH) as r:
            assert r.status == status and why in (await r.json())["error"], bad
    async with http.post("/nodes/000000ff/commands", json={"op": "reboot"}, headers=AUTH) as r:
        assert r.status == 404
    async with http.get("/nodes/00000001/commands?state=queued", headers=AUTH) as r:
        assert [c["id"] for c in (await r.json())["commands"]] == [cmd["id"], cmd["id"] + 1]
    async with http.delete(f"/commands/{cmd['id']}", headers=AUTH) as r:
        assert r.status == 200 and (await r.json())["state"] == "expired"
    async with http.get(f"/commands/{cmd['id']}", headers=AUTH) as r:
        assert (await r.json())["state"] == "expired"
    async with http.delete(f"/commands/{cmd['id']}", headers=AUTH) as r:
        assert r.status == 409
    async with http.get("/commands?state=expired", headers=AUTH) as r:
        assert [c["id"] for c in (await r.json())["commands"]] == [cmd["id"]]
    async with http.get("/commands?state=lost", headers=AUTH) as r:
        assert r.status == 400
    async with http.get("/commands/999", headers=AUTH) as r:
        assert r.status == 404
    async with http.post("/nodes/00000002/commands", data=b"x" * 100_000, headers=AUTH) as r:
        assert r.status == 413


async def test_commands_are_checked_against_the_catalogue_and_never_queued_when_bad(gw):
    """Issue 17: what the node would answer `bad_args` / `unknown_op` is refused at once, naming why."""
    http, _, reg = gw
    reg.upsert(NodeEntry(5, "irrigation", root_key(5)))
    for node, bad, words in [
        ("00000001", {"op": "set_level", "args": [150, 600]}, ("level", "0..100")),
        ("00000001", {"op": "set_level", "args": [80]}, ("takes 2 arguments", "got 1")),
        ("00000001", {"op": "open_zone", "args": [1, 10]}, ("open_zone", "lighting node")),
        ("00000001", {"op": "set_level", "args": {"level": 50}}, ("'duration'", "missing")),
        ("00000005", {"op": "set_schedule", "args": [{"zone": 9, "days": 1, "start": 0, "minutes": 5}]}, ("zone",)),
        ("00000005", {"op": 42}, ("unknown op",)),
    ]:
        async with http.post(f"/nodes/{node}/commands", json=bad, headers=AUTH) as r:
            doc = await r.json()
            assert r.status == 400 and all(w in doc["error"] for w in words), (bad, doc)
    async with http.get("/commands", headers=AUTH) as r:
        assert (await r.json())["commands"] == []  # nothing queued, so nothing sent over the air
    named = {"op": "set_level", "args": {"level": 50, "duration": 600}}
    async with http.post("/nodes/00000001/commands", json=named, headers=AUTH) as r:
        assert r.status == 201 and (await r.json())["args"] == [50, 600]
    groups = {"op": "open_zone", "args": [{"zone": 2, "minutes": 10}]}
    async with http.post("/nodes/00000005/commands", json=groups, headers=AUTH) as r:
        assert r.status == 201 and (await r.json())["args"] == [2, 10]


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*)?\})? (\S+)$'
)


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """A strict reader of the text format 0.0.4: HELP and TYPE before samples, valid names and values."""
    assert text.endswith("\n")
    families: dict[str, dict[str, float]] = {}
    types: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in families, f"family {current} twice"
            families[current] = {}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current and kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
        else:
            mt = _SAMPLE.match(line)
            assert mt, f"bad sample line {line!r}"
            name, labels, value = mt.group(1), mt.group(3) or "", mt.group(7)
            if types.get(current) in ("summary", "histogram") and name in (current + "_sum", current + "_count"):
                labels = name[len(current) :] + labels
                name = current
            assert name == current and current in types, line
            assert labels not in families[name], f"duplicate sample {line!r}"
            families[name][labels] = float(value)
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total"), name
            assert all(v >= 0 for v in families[name].values())
    return families


async def test_metrics_in_prometheus_text_format(gw):
    http, p, _ = gw
    await p.ingest(reception(seal(1, 1)))
    await p.ingest(reception(seal(1, 1)))
    bad = bytearray(seal(2, 1))
    bad[-1] ^= 1
    await p.ingest(reception(bytes(bad)))
    p.reject("bad_crc", "serial")
    await p.store.drain()
    async with http.get("/metrics", headers=AUTH) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        fams = parse_prometheus(await r.text())
    assert fams["lumeau_frames_received_total"] == {'transport="inproc"': 3, 'transport="serial"': 1}
    assert fams["lumeau_frames_accepted_total"] == {"": 1}
    assert fams["lumeau_frames_duplicate_total"] == {"": 1}
    rej = fams["lumeau_frames_rejected_total"]
    assert rej['reason="bad_mic",transport="inproc"'] == 1 and rej['reason="bad_crc",transport="serial"'] == 1
    assert rej['reason="replay",transport=""'] == 0  # every known reason is exported
    assert fams["lumeau_queue_records"] == {"": 1}
    assert fams["lumeau_upstream_lag_seconds"][""] >= 0
    assert fams["lumeau_nodes_registered"] == {"": 2}
    for name in ("lumeau_queue_bytes", "lumeau_store_commits_total", "lumeau_downlink_queue_depth"):
        assert name in fams


async def test_quarantine_is_inspectable(gw):
    http, p, _ = gw
    await p.ingest(reception(seal(2, 3)))
    seqs = [s for s, _ in p.store.next_batch(10)]
    await p.store.quarantine(seqs, 422, '{"error": "bad unit"}')
    async with http.get("/quarantine", headers=AUTH) as r:
        doc = await r.json()
    assert doc["records"] == 1
    [batch] = doc["batches"]
    assert batch["status"] == 422 and batch["records"][0]["id"] == "00000002-3"


async def test_metrics_count_bad_mic_lockouts(gw):
    # issue 20, finding 8: the brute-force limiter is visible to the operator
    from gateway.micguard import BAD_MIC_BURST

    http, p, _ = gw
    for i in range(BAD_MIC_BURST + 5):
        bad = bytearray(seal(2, 1))
        bad[-4:] = i.to_bytes(4, "big")
        await p.ingest(reception(bytes(bad), gateway_id="serial:/dev/ttyS0", transport="serial"))
    async with http.get("/metrics", headers=AUTH) as r:
        fams = parse_prometheus(await r.text())
    assert fams["lumeau_mic_lockouts_total"] == {"": 1}
    assert fams["lumeau_mic_locked"] == {"": 1} and fams["lumeau_mic_tracked"] == {"": 1}
    rej = fams["lumeau_frames_rejected_total"]
    assert rej['reason="mic_lockout",transport="serial"'] == 4
    assert rej['reason="bad_mic",transport="serial"'] == BAD_MIC_BURST + 1


async def test_time_and_receive_window_endpoints(tmp_path):
    """GET /time: what the gateway knows of each clock heard and when it re-syncs it; GET
    /nodes/{id}/window: what it did with a node's latest receive window. Both need the token."""
    from gateway.timesync import TimeSync

    class Radio:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send_downlink(self, raw: bytes, rx) -> None:
            self.sent.append(raw)

    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1, 2])
    t0 = 1_800_000_000.0
    clock = [t0]
    d = Downlinks(s, reg, collect_s=0.0, clock=lambda: clock[0], timesync=TimeSync(clock=lambda: clock[0]))
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0)
    await api.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
            for path in ("/time", "/nodes/00000001/window"):
                async with http.get(path) as r:
                    assert r.status == 401
            async with http.get("/nodes/00000001/window", headers=AUTH) as r:
                assert r.status == 404 and "since the gateway started" in (await r.json())["error"]
            async with http.get("/nodes/00000009/window", headers=AUTH) as r:
                assert r.status == 404 and (await r.json())["error"] == "no such node"
            async with http.get("/nodes/not-a-node/window", headers=AUTH) as r:
                assert r.status == 400 and "error" in await r.json()
            radio = Radio()
            rx = reception(seal(1, 5), transport="udp", path=radio, rx_time=t0)
            rx.sf = 7
            assert await p.ingest(rx) == "accepted"
            await d.idle()
            assert len(radio.sent) == 1  # an offset never measured: a TIME at once
            async with http.get("/nodes/0x00000001/window", headers=AUTH) as r:
                assert await r.json() == {
                    "node": "00000001",
                    "counter": 5,
                    "answering": False,
                    "sent": 1,
                    "refused": None,
                }
            async with http.get("/time", headers=AUTH) as r:
                doc = await r.json()
            assert doc["threshold_s"] == 2.0 and doc["counts"]["drift"] == 1 and list(doc["nodes"]) == ["00000001"]
            n = doc["nodes"]["00000001"]
            assert n["repeat"] is True and n["resync_at"] == n["last_time_at"] > t0  # its repeat: next uplink
            assert n["offset_s"] == [-0.1, 0.1] and n["drift_ppm"] == [-100.0, 100.0]
            assert doc["total"] == 1
            async with http.get("/time?plan=1", headers=AUTH) as r:
                plan = await r.json()
            assert plan["resync_at"] == {"00000001": n["resync_at"]} and "nodes" not in plan
            async with http.get("/time?limit=0", headers=AUTH) as r:
                assert r.status == 400
    finally:
        await api.stop()
        await d.close()
        await s.close()
