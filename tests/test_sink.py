"""`lumeau sink`: a real aiohttp server on 127.0.0.1 over a real SQLite file, and the real CLI process."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from city.sink import Sink
from gateway import formats
from gateway.model import Record
from protocol import expand
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "sink-test-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def record(node: int, counter: int, level: int = 40, t: float = 1_795_000_000.0) -> Record:
    body = {0: level, 1: 452, 2: 123456, 3: m.LS_ON}
    return Record(
        node_id=node,
        counter=counter,
        mtype=m.LIGHT,
        kind="light",
        rx_time=t + counter,
        body=body,
        fields=expand.expand(m.LIGHT, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


@pytest.fixture
async def sink(tmp_path):
    s = Sink(tmp_path / "sink.db", TOKEN, port=0)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as c:
        yield c


def url(sink: Sink, path: str) -> str:
    return f"http://127.0.0.1:{sink.port}{path}"


async def post_batch(http, sink, records, *, gz: bool = True, headers=AUTH, raw: bytes | None = None):
    body = raw if raw is not None else formats.native_batch(records, gateway="gw-test")
    h = dict(headers)
    if gz:
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    h["Content-Type"] = "application/json"
    async with http.post(url(sink, "/v1/records"), data=body, headers=h) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def get(http, sink, path, headers=AUTH):
    async with http.get(url(sink, path), headers=headers) as r:
        return r.status, await r.json()


async def test_auth_is_required_except_healthz(sink, http):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        async with http.get(url(sink, "/v1/stats"), headers=headers) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        status, _ = await post_batch(http, sink, [record(1, 1)], headers=headers)
        assert status == 401
    assert (await get(http, sink, "/healthz", headers={}))[0] == 200
    assert (await get(http, sink, "/v1/stats"))[1]["records"] == 0  # nothing got in without the token


async def test_batch_is_stored_and_queryable_in_arrival_order(sink, http):
    recs = [record(0xA1, 1), record(0xB2, 1), record(0xA1, 2, level=80)]
    status, body = await post_batch(http, sink, recs)
    assert (status, body) == (200, {"accepted": 3, "duplicates": 0})
    status, got = await get(http, sink, "/v1/records")
    assert status == 200
    assert [(r["node"], r["counter"]) for r in got["records"]] == [("000000a1", 1), ("000000b2", 1), ("000000a1", 2)]
    first = got["records"][0]
    assert first["id"] == "000000a1-1" and first["type"] == "light"
    assert first["fields"]["power"] == 45.2 and first["fields"]["state"] == ["on"]
    # SPEC §5's units of LIGHT, once for the page
    assert got["units"] == {
        "light": {"level": "%", "power": "W", "energy": "Wh", "burning_hours": "h", "current": "mA"}
    }
    assert first["radio"] == {"gateway": "udp:aa55", "receptions": 1, "rssi": -97.0, "snr": 7.5}
    assert got["next"] == got["records"][-1]["seq"]


async def test_a_v3_batch_is_stored_as_the_same_records_as_v2(sink, http, tmp_path):
    # the gateway's default, columnar: the sink keeps what a /2 batch of the same records would give
    recs = [record(0xA1, 1), record(0xB2, 1), record(0xA1, 2, level=80)]
    status, body = await post_batch(http, sink, None, raw=formats.native_batch_v3(recs, gateway="gw-test"))
    assert (status, body) == (200, {"accepted": 3, "duplicates": 0})
    _, got3 = await get(http, sink, "/v1/records")
    other = Sink(tmp_path / "v2.db", TOKEN, port=0)
    await other.start()
    try:
        assert (await post_batch(http, other, recs))[0] == 200
        _, got2 = await get(http, other, "/v1/records")
    finally:
        await other.stop()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "received"} for r in rs]  # noqa: E731
    assert strip(got3["records"]) == strip(got2["records"]) and got3["units"] == got2["units"]
    # resent as /2 (a gateway downgraded): the same keys, nothing stored twice
    assert (await post_batch(http, sink, recs))[1] == {"accepted": 0, "duplicates": 3}


async def test_a_v1_batch_is_stored_as_v2(sink, http):
    # a gateway from before lumeau.records/2: its records read the same afterwards
    doc = {
        "format": "lumeau.records/1",
        "records": [
            {
                "id": "000000c3-9",
                "node": "000000c3",
                "counter": 9,
                "type": "irrigation",
                "time": "2026-11-18T11:06:41.000Z",
                "alarm": False,
                "fields": {"flow": {"value": 14.5, "unit": "L/min"}, "faults": {"value": ["leak"], "unit": None}},
                "radio": {"gateway": "udp:1", "receptions": 1},
            }
        ],
    }
    status, body = await post_batch(http, sink, None, raw=json.dumps(doc).encode())
    assert (status, body) == (200, {"accepted": 1, "duplicates": 0})
    _, got = await get(http, sink, "/v1/records")
    (r,) = got["records"]
    assert r["fields"] == {"flow": 14.5, "faults": ["leak"]} and got["units"] == {"irrigation": {"flow": "L/min"}}


async def test_resends_are_deduplicated_by_idempotency_key(sink, http):
    recs = [record(7, c) for c in range(1, 6)]
    assert (await post_batch(http, sink, recs[:3]))[1] == {"accepted": 3, "duplicates": 0}
    # a resend after a timeout overlaps what was stored, and one batch repeats a record itself
    assert (await post_batch(http, sink, recs + [recs[4]]))[1] == {"accepted": 2, "duplicates": 4}
    _, got = await get(http, sink, "/v1/records?node=00000007")
    assert [r["counter"] for r in got["records"]] == [1, 2, 3, 4, 5]
    _, stats = await get(http, sink, "/v1/stats")
    assert (stats["records"], stats["duplicates"], stats["batches"], stats["nodes"]) == (5, 4, 2, 1)


async def test_plain_json_is_accepted_too(sink, http):
    assert (await post_batch(http, sink, [record(3, 1)], gz=False))[0] == 200


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda r: r.update(counter=-1), "records[1].counter"),
        (lambda r: r.update(counter=True), "records[1].counter"),
        (lambda r: r.update(node="A1"), "records[1].node"),
        (lambda r: r.update(id="000000a1-999"), "records[1].id"),
        (lambda r: r.update(time="yesterday"), "records[1].time"),
        (lambda r: r.pop("type"), "records[1].type"),
        (lambda r: r.update(fields=[1]), "records[1].fields"),
    ],
)
async def test_a_bad_record_refuses_the_whole_batch_naming_it(sink, http, mutate, where):
    doc = json.loads(formats.native_batch([record(0xA1, 1), record(0xA1, 2)]))
    mutate(doc["records"][1])
    status, body = await post_batch(http, sink, None, raw=json.dumps(doc).encode())
    assert status == 400 and body["detail"].startswith(where)
    assert (await get(http, sink, "/v1/stats"))[1]["records"] == 0  # all or nothing


@pytest.mark.parametrize(
    "raw, gz",
    [
        (b"{not json", False),
        (b"[1,2]", False),
        (b'{"records": 5}', False),
        (b'{"format": "other/9", "records": []}', False),
        (b"\x1f\x8bnot really gzip", None),
    ],
)
async def test_unreadable_bodies_are_400(sink, http, raw, gz):
    headers = dict(AUTH)
    if gz is None:
        headers["Content-Encoding"] = "gzip"
    async with http.post(url(sink, "/v1/records"), data=raw, headers=headers) as r:
        assert r.status == 400


async def test_a_gzip_bomb_is_cut_off(sink, http):
    bomb = gzip.compress(b" " * (17 * 1024 * 1024))  # 17 MiB of spaces in about 17 kB
    async with http.post(url(sink, "/v1/records"), data=bomb, headers={**AUTH, "Content-Encoding": "gzip"}) as r:
        assert r.status == 413


async def test_query_filters(sink, http):
    await post_batch(http, sink, [record(1, c, t=1_800_000_000.0) for c in range(1, 6)] + [record(2, 1)])
    _, got = await get(http, sink, "/v1/records?node=1&limit=2")
    assert [r["counter"] for r in got["records"]] == [1, 2]
    _, got2 = await get(http, sink, f"/v1/records?node=00000001&after={got['next']}")
    assert [r["counter"] for r in got2["records"]] == [3, 4, 5]
    _, got3 = await get(http, sink, "/v1/records?since=2027-01-15T08:00:03Z")  # 1_800_000_003
    assert [(r["node"], r["counter"]) for r in got3["records"]] == [("00000001", 3), ("00000001", 4), ("00000001", 5)]
    _, got4 = await get(http, sink, "/v1/records?since=1800000004&type=light")
    assert [r["counter"] for r in got4["records"]] == [4, 5]
    for bad in ("limit=0", "limit=5000", "node=xyz", "after=x", "since=never"):
        assert (await get(http, sink, f"/v1/records?{bad}"))[0] == 400


async def test_records_survive_a_restart_and_dedup_still_holds(tmp_path, http):
    s = Sink(tmp_path / "sink.db", TOKEN, port=0)
    await s.start()
    await post_batch(http, s, [record(9, 1), record(9, 2)])
    await s.stop()
    s2 = Sink(tmp_path / "sink.db", TOKEN, port=0)
    await s2.start()
    try:
        assert (await post_batch(http, s2, [record(9, 2), record(9, 3)]))[1] == {"accepted": 1, "duplicates": 1}
        _, got = await get(http, s2, "/v1/records")
        assert [r["counter"] for r in got["records"]] == [1, 2, 3]
    finally:
        await s2.stop()


async def test_ngsi_ld_upsert_creates_replaces_merges_and_reports_bad_entities(sink, http):
    up = url(sink, "/ngsi-ld/v1/entityOperations/upsert")
    e1 = {
        "id": "urn:ngsi-ld:Streetlight:lumeau-000000a1",
        "type": "Streetlight",
        "status": {"type": "Property", "value": "ok"},
        "powerState": {"type": "Property", "value": "on"},
    }
    async with http.post(up, json=[e1], headers=AUTH) as r:
        assert r.status == 201 and await r.json() == [e1["id"]]
    replaced = {"id": e1["id"], "type": "Streetlight", "status": {"type": "Property", "value": "defectiveLamp"}}
    async with http.post(up, json=[replaced], headers=AUTH) as r:
        assert r.status == 204
    async with http.get(url(sink, f"/ngsi-ld/v1/entities/{e1['id']}"), headers=AUTH) as r:
        assert await r.json() == replaced and r.headers["X-Lumeau-Updates"] == "2"
    partial = {"id": e1["id"], "type": "Streetlight", "powerState": e1["powerState"]}
    async with http.post(up + "?options=update", json=[partial], headers=AUTH) as r:
        assert r.status == 204
    async with http.get(url(sink, f"/ngsi-ld/v1/entities/{e1['id']}"), headers=AUTH) as r:
        merged = await r.json()
        assert merged["status"]["value"] == "defectiveLamp" and merged["powerState"]["value"] == "on"
    async with http.post(
        up, json=[{"type": "Device"}, {"id": "urn:ngsi-ld:Device:x", "type": "Device"}], headers=AUTH
    ) as r:
        body = await r.json()
        assert r.status == 207 and body["success"] == ["urn:ngsi-ld:Device:x"] and len(body["errors"]) == 1
    async with http.post(up, json={"id": "x"}, headers=AUTH) as r:
        assert r.status == 400
    async with http.get(url(sink, "/ngsi-ld/v1/entities?type=Device"), headers=AUTH) as r:
        assert [e["id"] for e in await r.json()] == ["urn:ngsi-ld:Device:x"]
    async with http.get(url(sink, "/ngsi-ld/v1/entities/urn:ngsi-ld:Device:none"), headers=AUTH) as r:
        assert r.status == 404


# -- the command -------------------------------------------------------------------------------


def lumeau(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lumeau", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_cli_refuses_to_run_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LUMEAU_SINK_TOKEN"}
    p = lumeau("sink", "--db", str(tmp_path / "s.db"), "--port", "0", env=env)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "no token" in err


async def test_cli_serves_until_sigterm(tmp_path, http):
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    p = lumeau("sink", "--db", str(tmp_path / "s.db"), "--port", "0", "--token-file", str(tok))
    try:
        line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), 30)
        assert line.startswith("lumeau sink: listening on http://127.0.0.1:")
        port = int(line.split(":")[3].split()[0])
        body = gzip.compress(formats.native_batch([record(5, 1)]))
        async with http.post(
            f"http://127.0.0.1:{port}/v1/records", data=body, headers={**AUTH, "Content-Encoding": "gzip"}
        ) as r:
            assert r.status == 200 and (await r.json())["accepted"] == 1
        p.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(p.wait), 30) == 0
        assert TOKEN not in p.stderr.read()  # the token is never logged
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
