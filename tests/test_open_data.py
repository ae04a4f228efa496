"""The ledger and open-data endpoints of a real `lumeau sink` process on 127.0.0.1 (city/open_data.py).

Records go in as a gateway sends them (POST /v1/records, gzip), the nodes'
facts by PUT /v1/nodes, a resident's report (with contact details and a
description naming a person) by Open311; then every public output is read
without a token and checked: figures worked out by hand, CSV = JSON, the
catalogue and dictionary, privacy, and fuzzed query parameters.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import select
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import formats
from gateway.model import Record
from protocol import expand
from protocol import messages as m

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "sink-ledger-token-51c"
API_KEY = "ledger-test-key-0a9"
H = 3600.0
DAY = date(2026, 11, 18)
D0 = datetime(2026, 11, 18, tzinfo=UTC).timestamp()
D1 = D0 + 24 * H

LAMP_A = {"id": "00c0ffe1", "kind": "lighting", "name": "Rue de Rivoli 12", "site": "Rue de Rivoli"}
LAMP_B = {"id": "00c0ffe2", "kind": "lighting", "name": "Rue de Rivoli 14", "site": "Rue de Rivoli"}
LAMP_C = {"id": "00c0ffe3", "kind": "lighting", "name": "Rue Saint-Honore 3", "site": "Rue Saint-Honore"}
PARK = {"id": "00c0ffe9", "kind": "irrigation", "name": "Tuileries nord", "site": "Jardin des Tuileries"}
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
DESCRIPTION = "Lampe eteinte devant chez Mme Jeanne Dupont, code porte 4B21X"


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
        # A: 50 Wh an hour, 2 detections a report; B: 30 Wh an hour, 4; C alone in its street: 2
        out.append(rec(LAMP_A["id"], 10 + k, m.LIGHT, t, {0: 50, 2: 1000 + 50 * k, 3: m.LS_ON, 5: 2}))
        out.append(rec(LAMP_B["id"], 10 + k, m.LIGHT, t, {0: 100, 2: 2000 + 30 * k, 3: m.LS_ON, 5: 4}))
        out.append(rec(LAMP_C["id"], 10 + k, m.LIGHT, t, {0: 100, 2: 500 + 20 * k, 3: m.LS_ON, 5: 2}))
    # the park: 500 L between 06:00 and 07:00
    for k, t, vol in ((1, D0, 0), (2, D0 + 6 * H, 0), (3, D0 + 7 * H, 500), (4, D1, 500)):
        out.append(rec(PARK["id"], k, m.IRRIGATION, t, {3: vol}))
    # lamp B fails at 18:00 and is repaired at 20:30
    out.append(rec(LAMP_B["id"], 100, m.EVENT, D0 + 18 * H, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1}))
    out.append(rec(LAMP_B["id"], 101, m.EVENT, D0 + 20.5 * H, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 0}))
    return out


def _start(d: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lumeau", "sink", "--db", str(d / "sink.db"), "--port", "0"]
        + ["--token-file", str(d / "token"), "--open311-keys", str(d / "keys"), "--report-rate", "100/60"]
        + list(extra),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("open-data")
    (d / "keys").write_text(API_KEY + "\n")
    (d / "token").write_text(TOKEN)
    (d / "ledger.toml").write_text('[ledger]\ntimezone = "UTC"\npresence_min_count = 5\neur_per_kwh = 0.2\n')
    p = _start(d, "--ledger-config", str(d / "ledger.toml"))
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
        assert r.status_code == 200 and r.json()["accepted"] == len(day_records()), r.text
        # a resident's report today, with every contact field and a description naming a person
        r = requests.post(
            f"{url}/open311/v2/requests.json",
            data={
                "api_key": API_KEY,
                "service_code": "lamp_out",
                "lat": 48.8630,
                "long": 2.3350,
                "description": DESCRIPTION,
                **REPORTER,
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        yield url
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(timeout=30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def get(base: str, path: str, **params) -> requests.Response:
    return requests.get(base + path, params=params, timeout=30)


def test_daily_ledger_needs_no_login_and_has_the_figures(base):
    r = get(base, "/ledger/daily.json", date=DAY.isoformat())
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["date"] == "2026-11-18" and doc["timezone"] == "UTC"
    (riv,) = [s for s in doc["streets"] if s["name"] == "Rue de Rivoli"]
    # 24 hourly intervals inside the day: 50 + 30 Wh each
    assert riv["energy_kwh"] == pytest.approx(24 * 0.08)
    # Paris on 18 November: sunrise 07:04 UTC, sunset 16:07 UTC (NOAA's equations, firmware/astro.py),
    # a night of 14.95 h
    assert riv["energy_baseline_kwh"] == pytest.approx(2 * 60 * 14.95 / 1000, abs=0.005)
    assert riv["dark_lamp_hours"] == pytest.approx(2.5, abs=0.01)  # lamp B failed 18:00-20:30, all night
    assert riv["alarms_repaired"] == 1 and riv["repair_hours_median"] == pytest.approx(2.5)
    assert riv["reduced_light_lamp_hours"] == pytest.approx(14.95, abs=0.01)  # lamp A at 50 % all night
    (park,) = doc["parks"]
    assert park["water_m3"] == pytest.approx(0.5) and park["water_baseline_m3"] == pytest.approx(0.8)
    assert park["eur_saved"] == pytest.approx(0.3 * 3.13, abs=0.01)  # the default water price
    (louvre,) = doc["districts"]
    assert louvre["lamps"] == 3 and louvre["irrigation_controllers"] == 1
    assert doc["factors"]["eur_per_kwh"] == 0.2  # from the config file
    assert "dusk" in doc["method"] and "rated power" in doc["method"]
    assert doc["licence"]["name"].startswith("Licence Ouverte") and "2.0" in doc["licence"]["name"]
    assert get(base, "/ledger/method.txt").text == doc["method"]


def test_open_data_files_agree_with_the_ledger_and_the_dictionary(base):
    j = get(base, f"/open-data/ledger/{DAY}.json").json()
    assert j == get(base, "/ledger/daily.json", date=DAY.isoformat()).json()
    r = get(base, f"/open-data/ledger/{DAY}.csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "etalab" in r.headers["Link"] and 'rel="license"' in r.headers["Link"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    dic = get(base, "/open-data/dictionary.json").json()
    assert list(rows[0]) == [c["name"] for c in dic["ledger"]]
    assert all(c["description"] and "type" in c and "unit" in c for c in dic["ledger"] + dic["presence"])
    assert [c["name"] for c in dic["reports"]] == list(j["reports"])  # the JSON's reports, every key described
    by = {(x["level"], x["name"]): x for x in rows}
    assert float(by[("city", "")]["energy_kwh"]) == pytest.approx(j["city"]["energy_kwh"])
    assert float(by[("street", "Rue de Rivoli")]["energy_kwh"]) == pytest.approx(1.92)
    assert by[("park", "Jardin des Tuileries")]["energy_kwh"] == ""  # not applicable: empty
    cat = get(base, "/open-data/catalog.json").json()
    assert DAY.isoformat() in cat["days"] and cat["licence"]["url"].startswith("https://www.etalab.gouv.fr/")
    urls = [dist["url"] for ds in cat["datasets"] for dist in ds["distributions"]]
    assert "/open-data/ledger/{date}.csv" in urls and "/open-data/presence/{date}.json" in urls


def test_presence_is_per_street_and_hour_and_withheld_below_the_minimum(base):
    j = get(base, f"/open-data/presence/{DAY}.json").json()
    assert j["min_count"] == 5
    pres = {(p["street"], p["hour"]): p["count"] for p in j["by_street_hour"]}
    assert pres[("Rue de Rivoli", 12)] == 6  # 2 + 4 in the report at 12:00
    assert all(pres[("Rue Saint-Honore", h)] is None for h in range(24))  # 2 a report, alone: withheld
    rows = list(csv.DictReader(io.StringIO(get(base, f"/open-data/presence/{DAY}.csv").text)))
    assert {r["count"] for r in rows if r["street"] == "Rue Saint-Honore"} == {""}
    assert all(r["count"] == "" or int(r["count"]) >= 5 for r in rows)


def test_no_personal_data_in_any_open_output(base):
    today = datetime.now(UTC).date().isoformat()
    outs = []
    for d in (DAY.isoformat(), today):
        outs += [
            get(base, "/ledger/daily.json", date=d).text,
            *(get(base, f"/open-data/{s}/{d}.{x}").text for s in ("ledger", "presence") for x in ("csv", "json")),
        ]
    outs += [get(base, "/open-data/catalog.json").text, get(base, "/open-data/dictionary.json").text]
    assert '"resident_requests_filed":1' in outs[5].replace(" ", "")  # today's report is counted ...
    blob = "\n".join(outs)
    for secret in [*REPORTER.values(), "Jeanne", "Dupont", "4B21X", "eteinte", "12 34 56 78"]:
        assert secret not in blob, secret  # ... and nothing of it or of its reporter is published
    for n in NODES:
        assert n["id"] not in blob and n["name"] not in blob  # aggregates: no node ids or lamp names
    assert "@" not in blob


def test_a_report_closed_by_staff_counts_as_resolved_today(base):
    reqs = requests.get(f"{base}/open311/v2/requests.json", timeout=10).json()
    (mine,) = [q for q in reqs if q["service_code"] == "lamp_out" and q["lumeau_source"] == "resident"]
    today = mine["requested_datetime"][:10]  # the UTC day it was filed (the ledger here runs in UTC)
    r = requests.post(
        f"{base}/v1/service-requests/{mine['service_request_id']}/close",
        json={"service_notice": "Lamp replaced."},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code in (200, 409), r.text  # 409: closed already (another run of this test)
    rep = get(base, "/ledger/daily.json", date=today).json()["reports"]
    assert rep["resident_requests_filed"] == 1 and rep["by_service"] == {"lamp_out": 1}
    assert rep["resident_requests_resolved"] == 1 and rep["resident_requests_open_at_end"] == 0
    assert 0 <= rep["resolve_hours_median"] < 1  # filed and closed within this test session (if closed that day)


def test_the_rest_of_the_sink_still_needs_its_token(base):
    assert requests.get(f"{base}/v1/records", timeout=10).status_code == 401
    assert requests.get(f"{base}/v1/nodes", timeout=10).status_code == 401


def test_bad_dates_and_parameters_are_refused_clearly(base):
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    for q, msg in (
        ({"date": "2026-13-01"}, "not a calendar date"),
        ({"date": "18/11/2026"}, "YYYY-MM-DD"),
        ({"date": "1999-12-31"}, "from 2000-01-01"),
        ({"date": (tomorrow + timedelta(days=1)).isoformat()}, "from 2000-01-01"),
        ({"date": DAY.isoformat(), "street": "x"}, "unknown parameter"),
    ):
        r = get(base, "/ledger/daily.json", **q)
        assert r.status_code == 400 and msg in r.json()["detail"], (q, r.text)
    assert get(base, "/ledger/daily.json", date=tomorrow.isoformat()).status_code == 200
    assert get(base, "/open-data/ledger/2026-02-30.csv").status_code == 400
    assert get(base, "/open-data/ledger/2026-11-18.xlsx").status_code == 404
    assert get(base, "/open-data/ledger/2026-11-18.csv", x="1").status_code == 400
    assert get(base, "/open-data/secrets/2026-11-18.csv").status_code == 404
    r = requests.get(base + "/ledger/daily.json?date=2026-11-18&date=2026-11-19", timeout=10)
    assert r.status_code == 400 and "twice" in r.json()["detail"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.dictionaries(
        st.sampled_from(["date", "Date", "jurisdiction_id", "x"]) | st.text(max_size=8),
        st.text(max_size=24) | st.dates(date(1990, 1, 1), date(2030, 1, 1)).map(str),
        max_size=3,
    ),
    name=st.text(max_size=16) | st.dates(date(1990, 1, 1), date(2030, 1, 1)).map(str),
    ext=st.sampled_from(["csv", "json", "xml", ""]),
)
def test_fuzz_query_parameters(base, params, name, ext):
    r = get(base, "/ledger/daily.json", **params)
    assert r.status_code in (200, 400), r.text
    ok = set(params) <= {"date"}
    if r.status_code == 400:
        assert r.json()["error"] == "bad request" and r.json()["detail"]
    else:
        assert ok and r.json()["city"]["level"] == "city"
    path = "/open-data/ledger/" + requests.utils.quote(f"{name}.{ext}" if ext else name, safe="")
    f = requests.get(base + path, timeout=30)
    assert f.status_code in (200, 400, 404), f.text
    if f.status_code == 200:
        assert ext in ("csv", "json")


def test_a_bad_ledger_config_is_named_and_refused(tmp_path):
    (tmp_path / "keys").write_text(API_KEY + "\n")
    (tmp_path / "token").write_text(TOKEN)
    for text, msg in (
        ("[ledger]\neur_per_kwh = -3\n", "eur_per_kwh"),
        ('[ledger]\ntimezone = "Nowhere/City"\n', "timezone"),
        ("[ledger]\nprice = 1\n", "price: unknown key"),
        ("[ledger\n", "not TOML"),
    ):
        (tmp_path / "l.toml").write_text(text)
        p = _start(tmp_path, "--ledger-config", str(tmp_path / "l.toml"))
        out, err = p.communicate(timeout=30)
        assert p.returncode == 2 and "l.toml" in err and msg in err, err
    p = _start(tmp_path, "--timezone", "Atlantis/Capital")
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "--timezone" in err, err
