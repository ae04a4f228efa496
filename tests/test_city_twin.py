"""The city platform's digital twin (city/twin.py, city/twin_web.py) from a real `lumeau sink` process.

A day of records (two streets, a park, a lamp failure the lamp itself opens and
closes a request for), the nodes' facts, and residents' reports with every
contact field and descriptions naming people and carrying markup; then the twin
is read without a token and each entity is checked: its NGSI-LD shape, its
key-values projection against the official Smart Data Models schema
(IssueTracking `service_requests`, `StreetlightGroup`, `GreenspaceRecord`,
vendored under tests/vectors/smart-data-models), its figures against the
Open311 API and the ledger, and that nothing personal is in it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from conftest import vectors_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from ngsi_ld_helpers import is_timestamp, schema_validator

from city import matching, twin
from gateway import formats, ngsi_ld
from gateway.model import Record
from protocol import expand
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "sink-twin-token-3f0"
API_KEY = "twin-test-key-81b"
H = 3600.0
DAY = date(2026, 11, 18)
D0 = datetime(2026, 11, 18, tzinfo=UTC).timestamp()
D1 = D0 + 24 * H
MODEL_DIR = {
    "service_requests": "IssueTracking-service_requests",
    "StreetlightGroup": "StreetlightGroup",
    "GreenspaceRecord": "GreenspaceRecord",
}

LAMP_A = {"id": "00d0ffe1", "kind": "lighting", "name": "Rue de Rivoli 12", "site": "Rue de Rivoli"}
LAMP_B = {"id": "00d0ffe2", "kind": "lighting", "name": "Rue de Rivoli 14", "site": "Rue de Rivoli"}
LAMP_C = {"id": "00d0ffe3", "kind": "lighting", "name": "Rue Saint-Honoré 3", "site": "Rue Saint-Honoré"}
PARK = {"id": "00d0ffe9", "kind": "irrigation", "name": "Tuileries nord", "site": "Jardin des Tuileries"}
NODES = [
    {**LAMP_A, "lat": 48.8606, "lon": 2.3376, "district": "Louvre", "rated_power_w": 60},
    {**LAMP_B, "lat": 48.8608, "lon": 2.3380, "district": "Louvre", "rated_power_w": 60},
    {**LAMP_C, "lat": 48.8630, "lon": 2.3350, "district": "Louvre", "rated_power_w": 40},
    {**PARK, "lat": 48.8635, "lon": 2.3275, "district": "Louvre", "baseline": {"l_per_day": 800}},
]
REPORTER = {
    "email": "jeanne.dupont@example.org",
    "phone": "+33 6 12 34 56 78",
    "first_name": "Jeanne",
    "last_name": "Dupont",
    "device_id": "device-7781",
    "account_id": "acct-4412",
}
DESCRIPTION = "Lampe eteinte devant chez Mme Jeanne Dupont, code porte 4B21X <script>alert(1)</script>"
# a resident's own position, 20 m from lamp C: the twin gives the lamp's place, never this one
REPORTED = (48.86318, 2.33505)


def rec(node: str, counter: int, mtype: int, t: float, body: dict) -> Record:
    return Record(
        node_id=int(node, 16),
        counter=counter,
        mtype=mtype,
        kind=expand.TYPE_NAMES[mtype],
        rx_time=t,
        body=body,
        fields=expand.expand(mtype, body),
        best_rssi=-97.0,
        best_snr=7.5,
        gateway_id="udp:aa55",
    )


def day_records() -> list[Record]:
    out = []
    for k in range(-1, 26):  # hourly, from an hour before the day to two after
        t = D0 + k * H
        out.append(rec(LAMP_A["id"], 10 + k, m.LIGHT, t, {0: 50, 2: 1000 + 50 * k, 3: m.LS_ON}))
        out.append(rec(LAMP_B["id"], 10 + k, m.LIGHT, t, {0: 100, 2: 2000 + 30 * k, 3: m.LS_ON}))
        out.append(rec(LAMP_C["id"], 10 + k, m.LIGHT, t, {0: 100, 2: 500 + 20 * k, 3: m.LS_ON}))
    for k, t, vol in ((1, D0, 0), (2, D0 + 6 * H, 0), (3, D0 + 7 * H, 500), (4, D1, 500)):
        out.append(rec(PARK["id"], k, m.IRRIGATION, t, {3: vol}))
    # lamp B fails at 18:00 (the node opens a request) and is repaired at 20:30 (it closes it)
    out.append(rec(LAMP_B["id"], 100, m.EVENT, D0 + 18 * H, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1}))
    out.append(rec(LAMP_B["id"], 101, m.EVENT, D0 + 20.5 * H, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 0}))
    return out


def post_report(url: str, **fields: Any) -> dict[str, Any]:
    r = requests.post(f"{url}/open311/v2/requests.json", data={"api_key": API_KEY, **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("twin")
    (d / "keys").write_text(API_KEY + "\n")
    (d / "token").write_text(TOKEN)
    (d / "ledger.toml").write_text('[ledger]\ntimezone = "UTC"\npublisher = "Ville de Lumeau"\n')
    p = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(d / "sink.db"), "--port", "0"]
        + ["--token-file", str(d / "token"), "--open311-keys", str(d / "keys"), "--report-rate", "1000/60"]
        + ["--ledger-config", str(d / "ledger.toml"), "--jurisdiction", "lumeau.example"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([p.stdout], [], [], 30)
        assert ready, "lumeau sink did not start within 30 s"
        line = p.stdout.readline()
        assert line.startswith("lumeau sink: listening on http://127.0.0.1:"), p.stderr.read()
        url = line.split()[4]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = requests.put(f"{url}/v1/nodes", json={"nodes": NODES}, headers=auth, timeout=10)
        assert r.status_code == 200, r.text
        r = requests.post(
            f"{url}/v1/records",
            data=gzip.compress(formats.native_batch(day_records(), gateway="gw-test")),
            headers={**auth, "Content-Encoding": "gzip", "Content-Type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        # a resident near lamp C (it reports nothing wrong), with every contact field
        post_report(
            url,
            service_code="lamp_out",
            lat=str(REPORTED[0]),
            long=str(REPORTED[1]),
            description=DESCRIPTION,
            media_url="https://photos.example.org/jeanne-dupont/lamp.jpg",
            **REPORTER,
        )
        # another, by an address where no device is: no location in the twin at all
        post_report(url, service_code="water_leak", address_string="8 rue des Rosiers, chez M. Martin", **REPORTER)
        yield url
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(timeout=30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def get(base: str, path: str, **params: Any) -> requests.Response:
    return requests.get(base + path, params=params, timeout=30)


_NAME = re.compile(r"[^\W\d_]\w*\Z")  # NGSI-LD clause 4.6.2


def check_entity(e: dict[str, Any]) -> None:
    """NGSI-LD normalised shape, then the key-values projection against the model's official schema."""
    assert e["type"] in MODEL_DIR, e["type"]
    assert e["id"].startswith("urn:ngsi-ld:") and re.fullmatch(r"[\w:.\-]+", e["id"]), e["id"]
    assert e["@context"] == list(ngsi_ld.DEFAULT_CONTEXT)
    for k, v in e.items():
        if k in ("id", "type", "@context"):
            continue
        assert _NAME.match(k), k
        assert v["type"] in ("Property", "Relationship", "GeoProperty"), k
        if v["type"] == "Relationship":
            assert v["object"].startswith("urn:ngsi-ld:"), k
            continue
        assert v["value"] is not None, k  # NGSI-LD has no null
        if isinstance(v["value"], dict) and "@type" in v["value"]:
            assert v["value"]["@type"] == "DateTime" and is_timestamp(v["value"]["@value"]), k
        if k.endswith("datetime") or k.startswith("date"):
            assert v["value"]["@type"] == "DateTime", k
        if "observedAt" in v:
            assert is_timestamp(v["observedAt"]), k
        if "unitCode" in v:
            assert v["unitCode"] in twin.UNIT_CODES.values(), k
    schema_validator(MODEL_DIR[e["type"]]).validate(ngsi_ld.key_values(e))


def test_the_schemas_accept_the_official_examples():
    """The validators are the right ones: the models' own examples pass, in both representations."""
    d = vectors_dir() / "smart-data-models" / "IssueTracking-service_requests"
    v = schema_validator("IssueTracking-service_requests")
    v.validate(json.loads((d / "example.json").read_text()))
    v.validate(ngsi_ld.key_values(json.loads((d / "example-normalized.jsonld").read_text())))
    for model in ("StreetlightGroup", "GreenspaceRecord"):
        schema_validator(model).validate(
            json.loads((vectors_dir() / "smart-data-models" / model / "example.json").read_text())
        )
    with pytest.raises(jsonschema.ValidationError, match="is not one of"):  # and they refuse what the model refuses
        v.validate({"id": "x:1", "type": "service_requests", "status": "in_progress"})


def test_service_requests_twin_matches_open311_and_validates(base):
    r = get(base, "/open-data/twin/service-requests.jsonld")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/ld+json")
    assert "etalab" in r.headers["Link"] and 'rel="license"' in r.headers["Link"]
    entities = r.json()
    for e in entities:
        check_entity(e)
    open311 = get(base, "/open311/v2/requests.json", start_date="2026-01-01T00:00:00Z").json()
    open311 += get(base, "/open311/v2/requests.json").json()
    by_id = {x["service_request_id"]: x for x in open311}
    kv = [ngsi_ld.key_values(e) for e in entities]
    assert sorted(x["service_request_id"] for x in kv) == sorted(by_id)  # every request, once
    for x in kv:
        o = by_id[x["service_request_id"]]
        assert x["id"] == "urn:ngsi-ld:Open311ServiceRequest:lumeau-" + o["service_request_id"]
        assert (x["status"], x["service_code"], x["service_name"]) == (
            o["status"],
            o["service_code"],
            o["service_name"],
        )
        assert (x["lumeau_verdict"], x["lumeau_reports"], x["lumeau_source"]) == (
            o["lumeau_verdict"],
            o["lumeau_reports"],
            o["lumeau_source"],
        )
        assert x["jurisdiction_id"] == "lumeau.example" and x["dataProvider"] == "Ville de Lumeau"
        assert datetime.fromisoformat(x["requested_datetime"]) == datetime.fromisoformat(o["requested_datetime"])
    by_code = {x["service_code"]: x for x in kv if x["lumeau_source"] == "resident"}
    # the lamp's own request, opened and closed by the node: placed at the lamp, on its street
    device = next(x for x in kv if x["lumeau_source"] == "device")
    assert device["status"] == "closed" and device["agency_responsible"] == "Lumeau"
    assert device["location"] == {"type": "Point", "coordinates": [NODES[1]["lon"], NODES[1]["lat"]]}
    assert device["areaServed"] == "Rue de Rivoli"
    # the resident's: placed at lamp C (the nearest matched device), not where the resident stood
    lamp = by_code["lamp_out"]
    assert lamp["location"]["coordinates"] == [NODES[2]["lon"], NODES[2]["lat"]]
    assert lamp["lumeau_verdict"] == matching.DEVICE_NORMAL and "field check" in lamp["status_notes"]
    # no device by that address: no place at all
    assert "location" not in by_code["water_leak"] and "areaServed" not in by_code["water_leak"]
    only_open = get(base, "/open-data/twin/service-requests.jsonld", status="open").json()
    assert {ngsi_ld.key_values(e)["status"] for e in only_open} == {"open"} and len(only_open) == 2


def test_ledger_twin_has_the_ledgers_figures_and_validates(base):
    r = get(base, f"/open-data/twin/ledger/{DAY}.jsonld")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/ld+json")
    entities = r.json()
    for e in entities:
        check_entity(e)
    ledger = get(base, "/ledger/daily.json", date=DAY.isoformat()).json()
    kv = {(x["type"], x["name"]): x for x in map(ngsi_ld.key_values, entities)}
    assert set(kv) == {
        ("StreetlightGroup", "Rue de Rivoli"),
        ("StreetlightGroup", "Rue Saint-Honoré"),
        ("GreenspaceRecord", "Jardin des Tuileries"),
    }
    streets = {s["name"]: s for s in ledger["streets"]}
    rivoli = kv[("StreetlightGroup", "Rue de Rivoli")]
    for key, attr, _unit in twin.LIGHTING_FIGURES + twin.COMMON_FIGURES:
        if streets["Rue de Rivoli"][key] is not None:
            assert rivoli[attr] == streets["Rue de Rivoli"][key], attr
    assert rivoli["energyConsumed"] == pytest.approx(1.92) and rivoli["alarmsRepaired"] == 1
    assert rivoli["repairHoursMedian"] == pytest.approx(2.5) and rivoli["lampCount"] == 2
    assert rivoli["location"]["type"] == "MultiPoint" and len(rivoli["location"]["coordinates"]) == 2
    assert rivoli["dateObservedFrom"] == "2026-11-18T00:00:00.000Z"
    assert rivoli["dateObservedTo"] == "2026-11-19T00:00:00.000Z"
    park = kv[("GreenspaceRecord", "Jardin des Tuileries")]
    assert park["waterConsumed"] == pytest.approx(0.5) and park["waterBaseline"] == pytest.approx(0.8)
    assert park["id"].endswith("-2026-11-18") and park["refGreenspace"].startswith("urn:ngsi-ld:Greenspace:")
    assert park["dateObserved"] == "2026-11-19T00:00:00.000Z"  # the day's end: a record of the whole day
    assert "energyConsumed" not in park and "waterConsumed" not in rivoli
    group = next(e for e in entities if e["type"] == "StreetlightGroup")
    units = {k: v.get("unitCode") for k, v in group.items() if isinstance(v, dict)}
    assert units["energyConsumed"] == "KWH" and units["lampAvailability"] == "P1"


def test_no_personal_data_in_the_twin(base):
    blob = "\n".join(
        [
            get(base, "/open-data/twin/service-requests.jsonld").text,
            get(base, f"/open-data/twin/ledger/{DAY}.jsonld").text,
            get(base, f"/open-data/twin/ledger/{datetime.now(UTC).date()}.jsonld").text,
        ]
    )
    secrets = [*REPORTER.values(), "Jeanne", "Dupont", "4B21X", "eteinte", "<script", "Martin", "Rosiers"]
    secrets += ["photos.example.org", str(REPORTED[0]), str(REPORTED[1])]
    for s in secrets:
        assert s not in blob, s
    assert not re.search(r"\w@\w", blob)  # no e-mail address at all (JSON-LD's "@context" aside)
    for n in NODES:
        assert n["id"] not in blob and n["name"] not in blob  # no node ids or lamp names either
    for field in ("email", "phone", "first_name", "last_name", "device_id", "account_id", "token", "description"):
        assert f'"{field}"' not in blob, field
    assert "address" not in blob and "media_url" not in blob


# Any stored request, whatever its other columns hold: only the listed ones reach the entity.
OTHER_COLUMNS = (
    "status_notes",
    "service_notice",
    "description",
    "address",
    "address_id",
    "media_url",
    "attributes",
    "lat",
    "lon",
    *("email", "phone", "first_name", "last_name", "device_id", "account_id", "token"),
)


@settings(max_examples=150, deadline=None)
@given(
    secret=st.one_of(st.text(max_size=60), st.floats(allow_nan=False), st.integers()),
    verdict=st.sampled_from([matching.CONFIRMED, matching.DEVICE_NORMAL, matching.NO_DEVICE]),
    status=st.sampled_from(["open", "closed"]),
    source=st.sampled_from(["resident", "device"]),
)
def test_fuzz_a_request_entity_carries_nothing_else(secret, verdict, status, source):
    row = {
        "id": 7,
        "service_code": "lamp_out",
        "source": source,
        "status": status,
        "verdict": verdict,
        "agency": "City services",
        "requested": D0,
        "updated": D0 + 60,
        "nodes": json.dumps(["00d0ffe3"]),
        "reports": 2,
    }
    nodes = [matching.NodeInfo("00d0ffe3", "lighting", "Lamp 3", "Rue Saint-Honoré", 48.863, 2.335)]
    bare = twin.request_entities([row], nodes, "lumeau.example", "Ville de Lumeau")[0]
    full = twin.request_entities([{**row, **dict.fromkeys(OTHER_COLUMNS, secret)}], nodes, "lumeau.example", "V")[0]
    check_entity(full)
    assert {**full, "dataProvider": bare["dataProvider"]} == bare  # the other columns change nothing
    assert set(twin.REQUEST_FIELDS).isdisjoint(OTHER_COLUMNS)
    text = json.dumps(full)
    assert "Lamp 3" not in text and "00d0ffe3" not in text  # the device's place, not its id or name


def test_bad_input_is_refused_clearly(base):
    for path, params, status, why in [
        (f"/open-data/twin/ledger/{DAY}.json", {}, 404, "jsonld"),
        ("/open-data/twin/ledger/2026-13-01.jsonld", {}, 400, "not a calendar date"),
        ("/open-data/twin/ledger/1999-12-31.jsonld", {}, 400, "from 2000-01-01"),
        ("/open-data/twin/ledger/yesterday.jsonld", {}, 400, "YYYY-MM-DD"),
        (f"/open-data/twin/ledger/{DAY}.jsonld", {"x": "1"}, 400, "no parameters"),
        ("/open-data/twin/service-requests.jsonld", {"status": "pending"}, 400, "open or closed"),
        ("/open-data/twin/service-requests.jsonld", {"email": "a"}, 400, "unknown parameter"),
        ("/open-data/twin/service-requests.jsonld?status=open&status=closed", {}, 400, "twice"),
    ]:
        r = get(base, path, **params)
        assert r.status_code == status and why in r.json()["detail"], (path, r.text)
    cat = get(base, "/open-data/catalog.json").json()
    urls = [dist["url"] for ds in cat["datasets"] for dist in ds["distributions"]]
    assert "/open-data/twin/ledger/{date}.jsonld" in urls and "/open-data/twin/service-requests.jsonld" in urls
