"""A GeoReport v2 client from PyPI that we did not write, against a real `lumeau sink` process.

`georeport` (PyPI, 0.3.1; requests + xmltodict) reads services, service
definitions and requests in JSON and in XML, and that is what it is used
for here, unchanged. It cannot submit (its README: "does not currently
support the creation of new 311 service requests"), and the two older
clients on PyPI, `open311` 1.1 and `three` 0.8.0, are Python 2 only (they
fail to import on 3.11). So the submissions go as the spec writes them
with `requests` (the HTTP library georeport itself uses): a form-encoded
POST with api_key, followed by GET tokens/{token}.

`civicbot` (PyPI, 0.4.0, MIT; stdlib urllib only) has a GeoReport v2 client
that does submit: `civicbot.open311.Open311Client.create_request` (dry-run
unless `dry_run=False, confirm="SEND"` and an `api_key`). The `test_civicbot_*`
tests use it unchanged, against a sink of their own, for the whole life of a
report: services and definitions, a POST validated against the live
definition, the token, following the request to its close (by the node, and
by staff), a second reporter joining, and the spec's errors as it surfaces
them (its `HttpError` with the error list in `body`).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from civicbot.http import HttpError, HttpTransport, RateLimiter
from civicbot.open311 import Open311Client, Open311Error
from civicbot.registry import Endpoint
from georeport import GeoReport
from open311_helpers import API_KEY, LAMP_A, LAMP_C, NODES, PARK, event

from gateway import formats
from gateway.registry import NodeEntry, Registry
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "sink-client-token-9e1"


@pytest.fixture(scope="module")
def sink_url(tmp_path_factory):
    yield from run_sink(tmp_path_factory.mktemp("open311-client"))


@pytest.fixture(scope="module")
def civic_url(tmp_path_factory):
    """A sink of its own for civicbot's tests, so that their reports never join georeport's."""
    yield from run_sink(tmp_path_factory.mktemp("open311-civicbot"))


def run_sink(d: Path):
    """A `lumeau sink` process on a free port with the four nodes; yields its URL, stops it after."""
    reg = Registry(d / "nodes.toml")
    for n in NODES:
        reg.upsert(
            NodeEntry(
                node_id=int(n["id"], 16),
                kind=n["kind"],
                root_key=secrets.token_bytes(16),
                name=n["name"],
                site=n["site"],
                lat=n["lat"],
                lon=n["lon"],
            )
        )
    reg.save()
    (d / "keys").write_text(f"# who may submit\n{API_KEY}\n")
    (d / "token").write_text(TOKEN)
    p = subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(d / "sink.db"), "--port", "0"]
        + ["--token-file", str(d / "token"), "--nodes", str(d / "nodes.toml"), "--open311-keys", str(d / "keys")]
        + ["--jurisdiction", "paris.example", "--report-rate", "100/60"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([p.stdout], [], [], 30)  # its listening line, within a deadline
        assert ready, "lumeau sink did not start within 30 s"
        line = p.stdout.readline()
        assert line.startswith("lumeau sink: listening on http://127.0.0.1:"), p.stderr.read()
        yield line.split()[4]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(timeout=30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert API_KEY not in p.stderr.read()  # no key in the log


def client(sink_url: str, fmt: str) -> GeoReport:
    return GeoReport(f"{sink_url}/open311/v2", jurisdiction="paris.example", api_key=API_KEY, output_format=fmt)


def submit(sink_url: str, **fields) -> dict:
    """POST requests as the spec writes it: form-encoded, api_key and jurisdiction_id in the form."""
    r = requests.post(
        f"{sink_url}/open311/v2/requests.json",
        data={"api_key": API_KEY, "jurisdiction_id": "paris.example", **fields},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()[0]


def send_records(sink_url: str, recs) -> None:
    r = requests.post(
        f"{sink_url}/v1/records",
        data=gzip.compress(formats.native_batch(recs, gateway="gw-client")),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_client_reads_services_and_definitions(sink_url, fmt):
    c = client(sink_url, fmt)
    services = c.get_service_list()
    codes = [s["service_code"] for s in services]
    assert {"lamp_out", "lamp_on_by_day", "water_leak", "broken_sprinkler", "lawn_not_watered"} <= set(codes)
    lamp = next(s for s in services if s["service_code"] == "lamp_out")
    assert lamp["service_name"] == "Street lamp out" and str(lamp["metadata"]).lower() == "true"
    definition = c.get_service_definition("lamp_out")
    assert definition["service_code"] == "lamp_out"
    attrs = definition["attributes"]
    attrs = attrs["attribute"] if fmt == "xml" else attrs  # xmltodict keeps the XML nesting
    assert "when_seen" in [a["code"] for a in attrs]


def test_client_follows_a_report_until_the_node_clears_the_fault(sink_url):
    # a resident reports a dark lamp the node does not (yet) report: a field check is needed
    sub = submit(
        sink_url, service_code="lamp_out", lat=str(LAMP_A["lat"]), long=str(LAMP_A["lon"]), email="r@example.org"
    )
    rid = sub["service_request_id"]
    tok = requests.get(f"{sink_url}/open311/v2/tokens/{sub['token']}.json", timeout=10).json()
    assert tok[0]["service_request_id"] == rid
    for fmt in ("json", "xml"):
        req = client(sink_url, fmt).get_service_request(rid)
        assert req["status"] == "open" and req["service_code"] == "lamp_out"
        assert req["lumeau_verdict"] == "device_normal" and "email" not in req
    # the node raises lamp failure: the same request is now confirmed; a neighbour's report joins it
    send_records(sink_url, [event(LAMP_A["id"], 100, m.EV_LAMP_FAILURE)])
    assert client(sink_url, "json").get_service_request(rid)["lumeau_verdict"] == "confirmed"
    sub2 = submit(sink_url, service_code="too_dark", address_string="12 rue de Rivoli")
    assert sub2["service_request_id"] == rid and sub2["token"] != sub["token"]
    listed = client(sink_url, "json").get_service_requests(service_request_id=rid)
    assert [r["lumeau_reports"] for r in listed] == [2]
    # the node reports the fault cleared: closed with a notice, seen in both formats
    send_records(sink_url, [event(LAMP_A["id"], 101, m.EV_LAMP_FAILURE, active=0)])
    for fmt in ("json", "xml"):
        req = client(sink_url, fmt).get_service_request(rid)
        assert req["status"] == "closed" and "Resolved" in req["service_notice"]
    closed = client(sink_url, "json").get_service_requests(status="closed", service_code="lamp_out")
    assert rid in [r["service_request_id"] for r in closed]


def test_client_sees_requests_the_nodes_opened(sink_url):
    send_records(sink_url, [event(PARK["id"], 200, m.EV_LEAK)])
    for fmt in ("json", "xml"):
        reqs = client(sink_url, fmt).get_service_requests(status="open", service_code="water_leak")
        reqs = reqs if isinstance(reqs, list) else [reqs]  # xmltodict: one element is not a list
        assert [(r["agency_responsible"], r["lumeau_source"]) for r in reqs] == [("Lumeau", "device")]


def test_client_gets_the_spec_errors(sink_url):
    with pytest.raises(requests.HTTPError) as e:
        client(sink_url, "json").get_service_request("999999")
    assert e.value.response.status_code == 404 and e.value.response.json()[0]["code"] == 404
    r = requests.post(f"{sink_url}/open311/v2/requests.json", data={"service_code": "lamp_out"}, timeout=10)
    assert r.status_code == 403 and r.json() == [{"code": 403, "description": "api_key missing or not valid"}]
    r = requests.post(
        f"{sink_url}/open311/v2/requests.xml",
        data={"api_key": API_KEY, "service_code": "lamp_out", "lat": "40.7", "long": "-74.0"},
        timeout=10,
    )
    assert r.status_code == 400 and b"<errors><error><code>400</code>" in r.content


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--report-rate", "lots"], "--report-rate 'lots': give N/SECONDS"),
        (["--city-bounds", "48.9,2.2"], "give south,west,north,east"),
        (["--match-radius", "0"], "--match-radius 0.0: must be more than 0 m"),
        (["--open311-keys", "/nonexistent/keys"], "/nonexistent/keys"),
        (["--nodes", "/nonexistent/nodes.toml"], "/nonexistent/nodes.toml"),
    ],
)
def test_cli_refuses_bad_open311_options(tmp_path, args, why):
    p = subprocess.run(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(tmp_path / "s.db"), "--port", "0", "--no-auth", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and why in p.stderr, p.stderr


# -- civicbot: a client that submits -------------------------------------------------------------


def civic(url: str) -> Open311Client:
    """civicbot's client for this sink: an Endpoint as its registry describes a city, no politeness delay."""
    city = Endpoint(id="lumeau-test", name="Lumeau test city", base_url=f"{url}/open311/v2", write=True)
    return Open311Client(city, HttpTransport(rate_limiter=RateLimiter(min_interval=0)), jurisdiction_id="paris.example")


def civic_submit(c: Open311Client, code: str, **fields) -> dict:
    """A real submission through civicbot (its three gates open), checked against the live definition."""
    prepared = c.create_request(code, dry_run=False, confirm="SEND", api_key=API_KEY, validate_remote=True, **fields)
    assert not prepared.dry_run and prepared.form["api_key"] == API_KEY
    assert prepared.redacted_form()["api_key"] == "***"
    answer = prepared.response
    assert isinstance(answer, list) and len(answer) == 1, answer
    return answer[0]


def test_civicbot_reads_the_catalogue(civic_url):
    c = civic(civic_url)
    codes = {s["service_code"] for s in c.list_services()}
    assert {"lamp_out", "too_dark", "water_leak", "broken_sprinkler", "lawn_not_watered"} <= codes
    definition = c.get_service_definition("lamp_out")
    assert [a["code"] for a in definition["attributes"]] == ["when_seen", "how_many"]
    # civicbot checks attribute values against the live definition before sending anything
    with pytest.raises(Open311Error, match="when_seen"):
        c.create_request(
            "lamp_out", validate_remote=True, lat=LAMP_C["lat"], lng=LAMP_C["lon"], attributes={"when_seen": "noon"}
        )


def test_civicbot_submits_and_follows_a_report_to_its_close(civic_url):
    c = civic(civic_url)
    first = civic_submit(
        c,
        "lamp_out",
        lat=LAMP_C["lat"],
        lng=LAMP_C["lon"],
        description="<b>Dark</b> since Monday",
        attributes={"when_seen": "night", "how_many": "one"},
        email="resident@example.org",
        first_name="Ada",
    )
    rid, token = first["service_request_id"], first["token"]
    assert "field check" in first["service_notice"]  # the lamp reports nothing wrong (yet)
    assert c.get_token(token) == [{"service_request_id": rid, "token": token}]
    req = c.get_request(rid)
    assert req["status"] == "open" and req["service_code"] == "lamp_out"
    assert req["description"] == "<b>Dark</b> since Monday"  # data, as sent
    assert req["lumeau_verdict"] == "device_normal" and req["lumeau_nodes"].split(",")[0] == LAMP_C["id"]
    assert not {"email", "first_name", "phone", "account_id"} & set(req)
    # a neighbour reports the same lamp by its address: the report joins the open request
    second = civic_submit(c, "lamp_out", address_string="16 rue de Rivoli", description="still dark")
    assert second["service_request_id"] == rid and second["token"] != token
    assert c.get_request(rid)["lumeau_reports"] == 2
    # the lamp raises its failure: the same request is confirmed by the device
    send_records(civic_url, [event(LAMP_C["id"], 300, m.EV_LAMP_FAILURE)])
    assert c.get_request(rid)["lumeau_verdict"] == "confirmed"
    assert rid in [r["service_request_id"] for r in c.list_requests(status="open", service_code="lamp_out")]
    # the node reports it repaired: closed with the notice, for both reporters
    send_records(civic_url, [event(LAMP_C["id"], 301, m.EV_LAMP_FAILURE, active=0)])
    closed = c.list_requests(service_request_ids=[rid])
    assert [(r["status"], "Resolved" in r["service_notice"]) for r in closed] == [("closed", True)]
    assert c.get_token(second["token"])[0]["service_request_id"] == rid
    assert rid not in [r["service_request_id"] for r in c.list_requests(status="open")]


def test_civicbot_follows_a_report_no_device_can_see(civic_url):
    c = civic(civic_url)
    sub = civic_submit(c, "water_leak", address_string="Square du Temple", attributes={"water_amount": "stream"})
    rid = sub["service_request_id"]
    assert c.get_request(rid)["lumeau_verdict"] == "no_device"
    # city staff close it after the field check; the resident sees the notice through the client
    r = requests.post(
        f"{civic_url}/v1/service-requests/{rid}/close",
        json={"service_notice": "Valve replaced on site"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    req = c.get_request(rid)
    assert (req["status"], req["service_notice"]) == ("closed", "Valve replaced on site")


def test_civicbot_surfaces_the_spec_errors(civic_url):
    c = civic(civic_url)
    city = Endpoint(id="lumeau-test", name="x", base_url=f"{civic_url}/open311/v2", write=True)
    wrong_key = Open311Client(city, HttpTransport(rate_limiter=RateLimiter(min_interval=0)))
    with pytest.raises(HttpError) as e:
        wrong_key.create_request("lamp_out", dry_run=False, confirm="SEND", api_key="not-a-key", lat=48.86, lng=2.34)
    assert e.value.status == 403 and json.loads(e.value.body) == [
        {"code": 403, "description": "api_key missing or not valid"}
    ]
    with pytest.raises(HttpError) as e:  # New York is not in this city
        c.create_request("lamp_out", dry_run=False, confirm="SEND", api_key=API_KEY, lat=40.7, lng=-74.0)
    assert e.value.status == 400 and "outside" in json.loads(e.value.body)[0]["description"]
    with pytest.raises(HttpError) as e:
        c.get_request("424242")
    assert e.value.status == 404 and json.loads(e.value.body)[0]["code"] == 404
    assert c.list_requests(service_code="lamp_flickering") == []  # nothing stored by the refusals
