"""Open311 GeoReport v2 on `lumeau sink`: a real aiohttp server over a real SQLite file.

Reports are matched to nodes told to the sink (PUT /v1/nodes), judged by the
alarms the stored records raise, deduplicated, closed when the node clears
the fault; bad input gets the spec's errors; POST is fuzzed with hypothesis.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import urllib.parse
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from open311_helpers import API_KEY, LAMP_A, LAMP_B, NODES, PARK, event, hello, light, status

from city import catalogue
from city.open311 import PREFIX, Open311Config
from city.sink import Sink
from gateway import formats
from protocol import messages as m

TOKEN = "sink-test-token-311"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def config(**kw) -> Open311Config:
    base = {"api_keys": frozenset({API_KEY}), "rate_count": 1000, "rate_window_s": 1.0}
    base.update(kw)
    return Open311Config(**base)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as c:
        yield c


async def started(tmp_path, http, **kw) -> Sink:
    s = Sink(tmp_path / "sink.db", TOKEN, port=0, open311=config(**kw))
    await s.start()
    async with http.put(url(s, "/v1/nodes"), json={"nodes": NODES}, headers=AUTH) as r:
        assert r.status == 200, await r.text()
    return s


@pytest.fixture
async def sink(tmp_path, http):
    s = await started(tmp_path, http)
    yield s
    await s.stop()


def url(sink: Sink, path: str) -> str:
    return f"http://127.0.0.1:{sink.port}{path}"


async def records(http, sink, recs) -> None:
    body = gzip.compress(formats.native_batch(recs, gateway="gw-test"))
    h = {**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with http.post(url(sink, "/v1/records"), data=body, headers=h) as r:
        assert r.status == 200, await r.text()


async def post(http, sink, fields: dict, *, fmt: str = "json", headers=FORM):
    data = urllib.parse.urlencode({"api_key": API_KEY, **fields}).encode()
    async with http.post(url(sink, f"{PREFIX}/requests.{fmt}"), data=data, headers=headers) as r:
        body = await r.read()
        return r.status, (json.loads(body) if fmt == "json" else body)


async def get(http, sink, path: str, **params):
    async with http.get(url(sink, PREFIX + path), params=params) as r:
        body = await r.read()
        return r.status, (json.loads(body) if path.endswith(".json") else body)


def at(node: dict, north_m: float = 0.0) -> dict:
    return {"lat": str(node["lat"] + north_m / 111_195), "long": str(node["lon"])}


# -- services -----------------------------------------------------------------


async def test_services_json_and_xml(sink, http):
    st_, doc = await get(http, sink, "/services.json")
    assert st_ == 200
    codes = [s["service_code"] for s in doc]
    for code in ("lamp_out", "lamp_on_by_day", "lamp_flickering", "too_dark", "water_leak", "broken_sprinkler"):
        assert code in codes
    assert "lawn_not_watered" in codes
    assert all({"service_name", "description", "metadata", "type", "keywords", "group"} <= s.keys() for s in doc)
    st_, raw = await get(http, sink, "/services.xml")
    assert st_ == 200 and raw.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    root = ET.fromstring(raw)
    assert root.tag == "services"
    assert [e.findtext("service_code") for e in root.findall("service")] == codes
    lamp = root.find("service[service_code='lamp_out']")
    assert lamp is not None and lamp.findtext("metadata") == "true" and lamp.findtext("type") == "realtime"


async def test_service_definition_with_attributes(sink, http):
    st_, doc = await get(http, sink, "/services/lamp_out.json")
    assert st_ == 200 and doc["service_code"] == "lamp_out"
    when = next(a for a in doc["attributes"] if a["code"] == "when_seen")
    assert when["datatype"] == "singlevaluelist" and {"key": "night", "name": "At night"} in when["values"]
    st_, raw = await get(http, sink, "/services/water_leak.xml")
    root = ET.fromstring(raw)
    assert root.tag == "service_definition"
    keys = [v.findtext("key") for v in root.findall("attributes/attribute/values/value")]
    assert keys == ["drip", "stream", "flood"]
    st_, doc = await get(http, sink, "/services/pothole.json")
    assert st_ == 404 and doc[0]["code"] == 404 and "pothole" in doc[0]["description"]


async def test_jurisdiction_and_format(sink, http):
    assert (await get(http, sink, "/services.json", jurisdiction_id="lumeau"))[0] == 200
    st_, doc = await get(http, sink, "/services.json", jurisdiction_id="elsewhere")
    assert st_ == 404 and "jurisdiction_id" in doc[0]["description"]
    async with http.get(url(sink, f"{PREFIX}/services.csv")) as r:
        assert r.status == 404 and (await r.json())[0]["code"] == 404
    async with http.get(url(sink, f"{PREFIX}/services")) as r:  # no extension: JSON
        assert r.status == 200 and isinstance(await r.json(), list)


async def test_open311_needs_no_bearer_but_v1_still_does(sink, http):
    async with http.get(url(sink, "/v1/nodes")) as r:
        assert r.status == 401
    async with http.get(url(sink, "/v1/nodes"), headers=AUTH) as r:
        assert {n["id"] for n in (await r.json())["nodes"]} == {n["id"] for n in NODES}


# -- verdicts, duplicates, alarms ---------------------------------------------


async def test_alarm_opens_request_reports_join_it_clear_closes_it(sink, http):
    await records(http, sink, [event(LAMP_A["id"], 10, m.EV_LAMP_FAILURE)])
    _, reqs = await get(http, sink, "/requests.json", status="open")
    assert len(reqs) == 1
    auto = reqs[0]
    assert auto["agency_responsible"] == "Lumeau" and auto["service_code"] == "lamp_out"
    assert auto["lumeau_verdict"] == "confirmed" and auto["lumeau_source"] == "device"
    assert auto["lat"] == LAMP_A["lat"] and "Rue de Rivoli 12" in auto["address"]

    # two residents report the dark lamp: both join the node's request, each with a token of their own
    st1, r1 = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A, 8), "email": "ana@example.org"})
    st2, r2 = await post(http, sink, {"service_code": "too_dark", **at(LAMP_A, -5), "phone": "+33 6 12 34 56 78"})
    assert st1 == st2 == 201, (r1, r2)
    assert r1[0]["service_request_id"] == r2[0]["service_request_id"] == auto["service_request_id"]
    assert r1[0]["token"] != r2[0]["token"]
    assert "Confirmed by the device" in r1[0]["service_notice"]
    for r in (r1, r2):
        st_, tok = await get(http, sink, f"/tokens/{r[0]['token']}.json")
        assert st_ == 200 and tok == [{"service_request_id": auto["service_request_id"], "token": r[0]["token"]}]
    _, one = await get(http, sink, f"/requests/{auto['service_request_id']}.json")
    assert one[0]["lumeau_reports"] == 2 and one[0]["status"] == "open"

    # contact details are stored while open, never served
    for path in (f"/requests/{auto['service_request_id']}.json", f"/requests/{auto['service_request_id']}.xml"):
        _, body = await get(http, sink, path)
        text = json.dumps(body) if isinstance(body, list) else body.decode()
        assert "ana@example.org" not in text and "12 34 56" not in text
    db = sqlite3.connect(sink.db.path)
    assert db.execute("SELECT COUNT(*) FROM reporters WHERE email IS NOT NULL OR phone IS NOT NULL").fetchone()[0] == 2

    await records(http, sink, [event(LAMP_A["id"], 20, m.EV_LAMP_FAILURE, active=0)])
    _, one = await get(http, sink, f"/requests/{auto['service_request_id']}.json")
    assert one[0]["status"] == "closed"
    assert "Resolved" in one[0]["service_notice"] and LAMP_A["id"] in one[0]["service_notice"]
    assert db.execute("SELECT COUNT(*) FROM reporters WHERE email IS NOT NULL OR phone IS NOT NULL").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM reporters").fetchone()[0] == 2  # the tokens still follow the request
    db.close()
    _, closed = await get(http, sink, "/requests.json", status="closed")
    assert [r["service_request_id"] for r in closed] == [auto["service_request_id"]]


async def test_resend_of_an_alarm_record_opens_nothing_twice(sink, http):
    raise_ = event(PARK["id"], 30, m.EV_LEAK)
    await records(http, sink, [raise_])
    await records(http, sink, [raise_])  # the gateway resends after a timeout
    _, reqs = await get(http, sink, "/requests.json")
    assert [r["service_code"] for r in reqs] == ["water_leak"]


async def test_an_odd_alarm_record_is_stored_and_blocks_nothing(sink, http):
    """A record the alarm state cannot use is still stored (200); the batch's other records still count."""
    doc = {
        "format": "lumeau.records/2",
        "records": [
            {
                "id": f"{LAMP_A['id']}-900",
                "node": LAMP_A["id"],
                "counter": 900,
                "type": "event",
                "time": "2026-11-18T11:06:41.000Z",
                "alarm": True,
                "fields": {"code": "lamp_failure", "severity": "alarm", "active": 1, "zone": 2**80},
            },
            {
                "id": f"{PARK['id']}-901",
                "node": PARK["id"],
                "counter": 901,
                "type": "event",
                "time": "2026-11-18T11:06:42.000Z",
                "alarm": True,
                "fields": {"code": "leak", "severity": "critical", "active": 1, "zone": 0},
            },
        ],
    }
    async with http.post(url(sink, "/v1/records"), json=doc, headers=AUTH) as r:
        assert r.status == 200 and (await r.json())["accepted"] == 2
    _, reqs = await get(http, sink, "/requests.json")
    assert sorted(r["service_code"] for r in reqs) == ["lamp_out", "water_leak"]  # the zone read as 0


async def test_device_normal_then_alarm_confirms_and_status_closes(sink, http):
    st_, r = await post(http, sink, {"service_code": "lamp_flickering", **at(LAMP_B, 3), "description": "blinks"})
    assert st_ == 201 and "device reports normal" in r[0]["service_notice"]
    rid = r[0]["service_request_id"]
    _, one = await get(http, sink, f"/requests/{rid}.json")
    assert one[0]["lumeau_verdict"] == "device_normal"
    assert one[0]["lumeau_nodes"].split(",")[0] == LAMP_B["id"]  # nearest first; the others within 60 m follow

    await records(http, sink, [event(LAMP_B["id"], 40, m.EV_CYCLING)])
    _, reqs = await get(http, sink, "/requests.json")
    assert len(reqs) == 1, "the alarm confirms the resident's request, it does not open a second one"
    assert reqs[0]["lumeau_verdict"] == "confirmed" and "cycling" in reqs[0]["status_notes"]

    await records(http, sink, [status(LAMP_B["id"], 41, open_alarms=0)])
    _, one = await get(http, sink, f"/requests/{rid}.json")
    assert one[0]["status"] == "closed" and "no open alarm" in one[0]["service_notice"]


async def test_reboot_is_not_a_repair(sink, http):
    await records(http, sink, [event(LAMP_A["id"], 50, m.EV_LAMP_FAILURE)])
    await records(http, sink, [hello(LAMP_A["id"], 51), event(LAMP_A["id"], 52, m.EV_LAMP_FAILURE)])
    _, reqs = await get(http, sink, "/requests.json")
    assert [(r["status"], r["service_code"]) for r in reqs] == [("open", "lamp_out")]


async def test_a_node_that_says_hello_is_known_by_its_kind(tmp_path, http):
    s = Sink(tmp_path / "bare.db", TOKEN, port=0, open311=config())  # told of no node
    await s.start()
    try:
        await records(http, s, [hello("00c0ffee", 1)])
        async with http.get(url(s, "/v1/nodes"), headers=AUTH) as r:
            (n,) = (await r.json())["nodes"]
        assert (n["id"], n["kind"], n["lat"]) == ("00c0ffee", "lighting", None)
        st_, r = await post(http, s, {"service_code": "lamp_out", "address_id": "c0ffee"})
        assert st_ == 201 and "reports normal" in r[0]["service_notice"]
        # no node has a position: any position on Earth is inside (no bounds to check against)
        assert (await post(http, s, {"service_code": "lamp_out", "lat": "-33.9", "long": "151.2"}))[0] == 201
    finally:
        await s.stop()


async def test_lamp_on_by_day_confirmed_by_the_lamps_own_report(sink, http):
    noon = 1_795_003_200.0 + 3 * 3600  # 2026-11-18 12:20 UTC: broad day in Paris
    await records(http, sink, [light(LAMP_A["id"], 80, noon, level=70), light(LAMP_B["id"], 81, noon, on=False)])
    st_, r = await post(http, sink, {"service_code": "lamp_on_by_day", "address_id": LAMP_A["id"]})
    assert st_ == 201 and "Confirmed by the device" in r[0]["service_notice"] and "70 %" in r[0]["service_notice"]
    # the neighbour reports its lamp off: a report about it alone gets a field check
    st_, r = await post(http, sink, {"service_code": "lamp_on_by_day", "address_id": LAMP_B["id"]})
    assert "reports normal" in r[0]["service_notice"]
    # lit at night is what a lamp is for
    await records(http, sink, [light(LAMP_A["id"], 82, noon + 10 * 3600)])
    st_, r = await post(http, sink, {"service_code": "lamp_on_by_day", "address_id": LAMP_A["id"]})
    assert "reports normal" in r[0]["service_notice"]


async def test_a_confirmed_report_confirms_the_request_it_joins(sink, http):
    _, first = await post(http, sink, {"service_code": "lamp_on_by_day", "address_id": LAMP_A["id"]})
    rid = first[0]["service_request_id"]
    _, one = await get(http, sink, f"/requests/{rid}.json")
    assert one[0]["lumeau_verdict"] == "device_normal"
    await records(http, sink, [light(LAMP_A["id"], 90, 1_795_003_200.0 + 3 * 3600)])  # lit at noon
    _, second = await post(http, sink, {"service_code": "lamp_on_by_day", "address_id": LAMP_A["id"]})
    assert second[0]["service_request_id"] == rid
    _, one = await get(http, sink, f"/requests/{rid}.json")
    assert one[0]["lumeau_verdict"] == "confirmed" and one[0]["lumeau_reports"] == 2


async def test_no_device_nearby_and_wrong_kind(sink, http):
    # 300 m north of the lamps: inside the city, no node within 60 m
    st_, r = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A, 300)})
    assert st_ == 201 and "No monitored device nearby" in r[0]["service_notice"]
    # at the park, but a lamp fault: the irrigation controller is not of the right kind
    st_, r2 = await post(http, sink, {"service_code": "lamp_out", **at(PARK, 2)})
    assert st_ == 201
    _, one = await get(http, sink, f"/requests/{r2[0]['service_request_id']}.json")
    assert one[0]["lumeau_verdict"] == "no_device"
    assert r2[0]["service_request_id"] != r[0]["service_request_id"]  # 2 km apart: not duplicates


async def test_address_and_address_id_match(sink, http):
    await records(http, sink, [event(PARK["id"], 60, m.EV_NO_FLOW, zone=2)])
    st_, r = await post(http, sink, {"service_code": "lawn_not_watered", "address_string": "Parc MONCEAU, Paris 8e"})
    assert st_ == 201 and "Confirmed" in r[0]["service_notice"]
    _, reqs = await get(http, sink, "/requests.json")
    assert len(reqs) == 1 and reqs[0]["lumeau_reports"] == 1  # joined the node's own request
    st_, r = await post(http, sink, {"service_code": "lamp_out", "address_id": LAMP_B["id"]})
    _, one = await get(http, sink, f"/requests/{r[0]['service_request_id']}.json")
    assert one[0]["lumeau_nodes"] == LAMP_B["id"] and one[0]["lumeau_verdict"] == "device_normal"


async def test_duplicate_reports_without_device(sink, http):
    a = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A, 400)})
    b = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A, 420)})
    c = await post(http, sink, {"service_code": "lamp_on_by_day", **at(LAMP_A, 420)})
    assert a[1][0]["service_request_id"] == b[1][0]["service_request_id"] != c[1][0]["service_request_id"]
    assert "Added to open request" in b[1][0]["service_notice"]


async def test_get_requests_filters(sink, http):
    await records(http, sink, [event(PARK["id"], 70, m.EV_LEAK), event(LAMP_A["id"], 71, m.EV_LAMP_FAILURE)])
    await records(http, sink, [event(LAMP_A["id"], 72, m.EV_LAMP_FAILURE, active=0)])
    _, everything = await get(http, sink, "/requests.json")
    assert len(everything) == 2
    _, leaks = await get(http, sink, "/requests.json", service_code="water_leak")
    assert [r["service_code"] for r in leaks] == ["water_leak"]
    _, both = await get(http, sink, "/requests.json", service_code="water_leak,lamp_out", status="open,closed")
    assert len(both) == 2
    _, closed = await get(http, sink, "/requests.json", status="closed")
    assert [r["service_code"] for r in closed] == ["lamp_out"]
    ids = ",".join(r["service_request_id"] for r in everything)
    _, by_id = await get(http, sink, "/requests.json", service_request_id=ids, status="closed")  # ids override
    assert len(by_id) == 2
    _, old = await get(http, sink, "/requests.json", start_date="2020-01-01T00:00:00Z", end_date="2020-02-01T00:00:00Z")
    assert old == []
    st_, err = await get(
        http, sink, "/requests.json", start_date="2020-01-01T00:00:00Z", end_date="2020-06-01T00:00:00Z"
    )
    assert st_ == 400 and "90 days" in err[0]["description"]
    st_, err = await get(http, sink, "/requests.json", status="pending")
    assert st_ == 400 and err[0]["code"] == 400
    st_, err = await get(http, sink, "/requests.json", start_date="yesterday")
    assert st_ == 400 and "start_date" in err[0]["description"]
    st_, raw = await get(http, sink, "/requests.xml", status="open")
    root = ET.fromstring(raw)
    assert root.tag == "service_requests" and [e.findtext("service_code") for e in root.findall("request")] == [
        "water_leak"
    ]
    assert (await get(http, sink, "/requests/999999.json"))[0] == 404
    assert (await get(http, sink, "/tokens/nope.json"))[0] == 404


# -- bad input ------------------------------------------------------------------


async def test_missing_fields_are_all_listed(sink, http):
    st_, err = await post(http, sink, {"lat": "48.86"})
    assert st_ == 400
    text = " | ".join(e["description"] for e in err)
    assert "service_code is required" in text and "lat and long go together" in text
    assert all(e["code"] == 400 for e in err)
    st_, err = await post(http, sink, {"service_code": "lamp_out"})
    assert st_ == 400 and "a location is required" in err[0]["description"]
    st_, err = await post(http, sink, {"service_code": "device_fault", **at(LAMP_A)})
    assert st_ == 400 and "opened by the nodes" in err[0]["description"]
    st_, err = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A), "attribute[when_seen]": "noon"})
    assert st_ == 400 and "when_seen" in err[0]["description"]
    st_, raw = await post(http, sink, {"service_code": "nope", **at(LAMP_A)}, fmt="xml")
    root = ET.fromstring(raw)
    assert st_ == 400 and root.tag == "errors" and root.find("error/code").text == "400"


async def test_position_outside_the_city(sink, http):
    st_, err = await post(http, sink, {"service_code": "lamp_out", "lat": "45.76", "long": "4.83"})  # Lyon
    assert st_ == 400 and "outside the city" in err[0]["description"]
    st_, err = await post(http, sink, {"service_code": "lamp_out", "lat": "nan", "long": "2.3"})
    assert st_ == 400 and "decimal degrees" in err[0]["description"]


async def test_api_key_and_jurisdiction(sink, http):
    for data in ({}, {"api_key": "wrong"}):
        async with http.post(
            url(sink, f"{PREFIX}/requests.json"), data={"service_code": "lamp_out", **at(LAMP_A), **data}
        ) as r:
            assert r.status == 403 and (await r.json())[0]["code"] == 403
    st_, err = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A), "jurisdiction_id": "other"})
    assert st_ == 404


async def test_oversized_and_wrong_bodies(sink, http):
    big = {"service_code": "lamp_out", **at(LAMP_A), "description": "x" * 20_000}
    st_, err = await post(http, sink, big)
    assert st_ == 413 and err[0]["code"] == 413

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(40):
            yield b"description=" + b"y" * 1000 + b"&"

    async with http.post(url(sink, f"{PREFIX}/requests.json"), data=chunks(), headers=FORM) as r:
        assert r.status == 413
    bomb = gzip.compress(b"description=" + b"0" * 5_000_000)  # 5 MB of form in 5 kB of gzip
    assert len(bomb) < 16 * 1024
    async with http.post(
        url(sink, f"{PREFIX}/requests.json"), data=bomb, headers={**FORM, "Content-Encoding": "gzip"}
    ) as r:
        assert r.status == 413
    async with http.post(url(sink, f"{PREFIX}/requests.json"), json={"service_code": "lamp_out"}) as r:
        assert r.status == 400 and "x-www-form-urlencoded" in (await r.json())[0]["description"]
    async with http.post(url(sink, f"{PREFIX}/requests.json"), data=b"service_code=%FF%FE", headers=FORM) as r:
        assert r.status == 400 and "UTF-8" in (await r.json())[0]["description"]
    st_, err = await post(http, sink, {"service_code": "lamp_out", **at(LAMP_A), "description": "a\x00b"})
    assert st_ == 400 and "control character" in err[0]["description"]
    async with http.post(
        url(sink, f"{PREFIX}/requests.json"), data=f"api_key={API_KEY}&service_code=a&service_code=b", headers=FORM
    ) as r:
        assert r.status == 400 and "more than once" in (await r.json())[0]["description"]
    _, reqs = await get(http, sink, "/requests.json")
    assert reqs == []  # nothing half-stored


async def test_html_is_escaped_in_xml_and_kept_as_data_in_json(sink, http):
    evil = "<script>alert('x')</script> & <b>bold</b> ]]>"
    st_, r = await post(http, sink, {"service_code": "too_dark", **at(LAMP_A, 500), "description": evil})
    assert st_ == 201
    rid = r[0]["service_request_id"]
    _, raw = await get(http, sink, f"/requests/{rid}.xml")
    assert b"<script>" not in raw and b"<b>" not in raw and b"&lt;script&gt;" in raw
    assert ET.fromstring(raw).findtext("request/description") == evil
    _, doc = await get(http, sink, f"/requests/{rid}.json")
    assert doc[0]["description"] == evil


async def test_rate_limited_per_address(tmp_path, http):
    s = await started(tmp_path, http, rate_count=3, rate_window_s=3600)
    try:
        got = [(await post(http, s, {"service_code": "lamp_out", **at(LAMP_A, 500 + 30 * i)}))[0] for i in range(5)]
        assert got == [201, 201, 201, 429, 429]
        async with http.post(url(s, f"{PREFIX}/requests.json"), data={"api_key": API_KEY}, headers=FORM) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0
            assert "too many" in (await r.json())[0]["description"]
        # reads are not limited
        assert (await get(http, s, "/requests.json"))[0] == 200
    finally:
        await s.stop()


async def test_put_nodes_refuses_bad_input(sink, http):
    for bad in ({"nodes": [{"id": "xyz", "kind": "lighting"}]}, {"nodes": [{"id": "1", "kind": "toaster"}]}, [1]):
        async with http.put(url(sink, "/v1/nodes"), json=bad, headers=AUTH) as r:
            assert r.status == 400
    async with http.put(
        url(sink, "/v1/nodes"), json={"nodes": [{"id": "1", "kind": "lighting", "lat": 1}]}, headers=AUTH
    ) as r:
        assert r.status == 400 and "together" in (await r.json())["detail"]


# -- fuzz -----------------------------------------------------------------------

FIELD_NAMES = [
    "service_code",
    "lat",
    "long",
    "address_string",
    "address_id",
    "description",
    "media_url",
    "email",
    "phone",
    "first_name",
    "jurisdiction_id",
    "attribute[when_seen]",
    "attribute[x]",
]
field_values = st.one_of(
    st.sampled_from([c.code for c in catalogue.SERVICES] + ["48.8606", "2.3376", "-91", "1e400", "", "night"]),
    st.text(max_size=60),
)
forms = st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12)), field_values, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=forms, raw=st.one_of(st.none(), st.binary(max_size=300)), fmt=st.sampled_from(["json", "xml"]))
async def test_fuzz_post_requests(sink, http, form, raw, fmt):
    if raw is not None:
        async with http.post(url(sink, f"{PREFIX}/requests.{fmt}"), data=raw, headers=FORM) as r:
            status_, body = r.status, await r.read()
    else:
        status_, body = await post(http, sink, form, fmt=fmt)
        body = json.dumps(body).encode() if fmt == "json" else body
    assert status_ in (201, 400, 403, 404), body[:300]
    if fmt == "xml":
        root = ET.fromstring(body)  # always well-formed XML, whatever the input
        assert root.tag == ("service_requests" if status_ == 201 else "errors")
    else:
        doc = json.loads(body)
        assert isinstance(doc, list) and doc
        assert ("service_request_id" in doc[0]) if status_ == 201 else (doc[0]["code"] == status_)
    if status_ == 201:
        rid = (
            json.loads(body)[0]
            if fmt == "json"
            else {"service_request_id": root.findtext("request/service_request_id")}
        )["service_request_id"]
        st_, raw_xml = await get(http, sink, f"/requests/{rid}.xml")
        assert st_ == 200 and ET.fromstring(raw_xml).findtext("request/service_request_id") == rid


async def test_sink_still_serves_after_concurrent_reports(sink, http):
    res = await asyncio.gather(*(post(http, sink, {"service_code": "lamp_out", **at(LAMP_A, 600)}) for _ in range(10)))
    ids = {r[1][0]["service_request_id"] for r in res}
    assert len(ids) == 1, "ten reports of one fault make one request"
    _, one = await get(http, sink, f"/requests/{ids.pop()}.json")
    assert one[0]["lumeau_reports"] == 10


async def test_staff_close_erases_contacts_and_needs_the_token(sink, http):
    st_, r = await post(http, sink, {"service_code": "watering_in_rain", **at(PARK, 10), "first_name": "Zoé"})
    rid = r[0]["service_request_id"]
    path = f"/v1/service-requests/{rid}/close"
    async with http.post(url(sink, path), json={"service_notice": "checked"}) as resp:
        assert resp.status == 401
    async with http.post(
        url(sink, path), json={"service_notice": "Field check: the rain sensor was replaced."}, headers=AUTH
    ) as resp:
        assert resp.status == 200
    async with http.post(url(sink, path), json={"service_notice": "again"}, headers=AUTH) as resp:
        assert resp.status == 409
    async with http.post(
        url(sink, "/v1/service-requests/424242/close"), json={"service_notice": "x"}, headers=AUTH
    ) as resp:
        assert resp.status == 404
    _, one = await get(http, sink, f"/requests/{rid}.json")
    assert one[0]["status"] == "closed" and one[0]["service_notice"].startswith("Field check")
    db = sqlite3.connect(sink.db.path)
    assert db.execute("SELECT first_name FROM reporters").fetchall() == [(None,)]
    db.close()


async def test_discovery(sink, http):
    st_, doc = await get(http, sink, "/discovery.json")
    assert st_ == 200 and doc["endpoints"][0]["url"] == url(sink, PREFIX + "/")
    _, raw = await get(http, sink, "/discovery.xml")
    assert ET.fromstring(raw).findtext("endpoints/endpoint/formats/format") == "application/json"


queries = st.dictionaries(
    st.sampled_from(["service_request_id", "service_code", "start_date", "end_date", "status", "jurisdiction_id", "x"]),
    st.one_of(
        st.text(max_size=40), st.sampled_from(["open", "closed,open", "1,2,3", "2026-01-01T00:00:00Z", "lamp_out"])
    ),
    max_size=5,
)


async def test_unicode_digits_are_not_request_ids(sink, http):
    # str.isdigit() is true for "¹" and other Unicode digits that int() refuses: found by the fuzz below
    async with http.get(url(sink, PREFIX + "/requests/%C2%B9.json")) as r:
        assert r.status == 404
    async with http.get(url(sink, PREFIX + "/requests.json"), params={"service_request_id": "\u00b9"}) as r:
        assert r.status == 400 and "is not a request id" in (await r.text())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries, fmt=st.sampled_from(["json", "xml"]), rid=st.text(max_size=20))
async def test_fuzz_get_endpoints(sink, http, q, fmt, rid):
    for path in (
        f"/requests.{fmt}",
        f"/requests/{urllib.parse.quote(rid, safe='')}.{fmt}",
        f"/tokens/{urllib.parse.quote(rid, safe='')}.{fmt}",
    ):
        async with http.get(url(sink, PREFIX + path), params=q) as r:
            body = await r.read()
            assert r.status in (200, 400, 404), (path, q, body[:200])
            if r.content_type == "text/xml":
                ET.fromstring(body)
            elif r.content_type == "application/json":
                assert isinstance(json.loads(body), list)


def test_alarm_state_undoes_only_itself_on_an_odd_record(tmp_path, caplog):
    from city import sink as sink_mod
    from city.db import SCHEMA

    c = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    c.executescript(SCHEMA)
    c.execute("BEGIN")
    c.execute("INSERT INTO meta VALUES ('kept', 1)")
    odd = {"node": ["not", "an", "id"], "type": "hello", "fields": {"kind": "lighting"}}  # sqlite cannot bind it
    sink_mod.apply_alarm_state(c, "x-1", odd, 1.0, 1.0)
    sink_mod.apply_alarm_state(
        c, "00c0ffee-2", {"node": "00c0ffee", "type": "hello", "fields": {"kind": "lighting"}}, 2.0, 2.0
    )
    c.execute("COMMIT")
    assert c.execute("SELECT value FROM meta WHERE name = 'kept'").fetchone() == (1,)  # the batch's work stays
    assert c.execute("SELECT id FROM nodes").fetchall() == [("00c0ffee",)]
    assert "x-1: its alarm state was not applied" in caplog.text
    c.close()
