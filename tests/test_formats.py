"""The native upstream format (gateway/formats.py): encoders, the receiver's check, times.

NGSI-LD, the other upstream format, is tested beside its module: tests/test_ngsi_ld.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import bodies, formats
from gateway.model import Record
from protocol import expand
from protocol import messages as m

T0 = 1_795_000_000.0


def make(node: int, counter: int, mtype: int, body: dict, **kw) -> Record:
    return Record(
        node_id=node,
        counter=counter,
        mtype=mtype,
        kind=expand.TYPE_NAMES[mtype],
        rx_time=T0 + counter,
        body=body,
        fields=expand.expand(mtype, body),
        **kw,
    )


light = make(
    0xA1,
    1,
    m.LIGHT,
    {0: 40, 1: 452, 2: 123456, 3: m.LS_ON | m.LS_BOOST, 4: 8760, 5: 3, 6: 205},
    best_rssi=-97.0,
    best_snr=7.5,
    gateway_id="udp:aa55",
)
light_broken = make(0xA1, 2, m.LIGHT, {0: 100, 1: 0, 2: 123460, 3: m.LS_ON | m.LS_LAMP_FAILURE})
light_off = make(0xA1, 3, m.LIGHT, {0: 0, 3: 0})
light_nowhere = make(0xC3, 1, m.LIGHT, {0: 70, 1: 300, 2: 5000, 3: m.LS_ON})
irrigation = make(
    0xB2,
    1,
    m.IRRIGATION,
    {0: bytes([62, 0xFF, 200, 0]), 1: 0x81, 2: 145, 3: 982311, 4: 0, 5: 24050, 6: m.IF_LEAK},
    best_rssi=-110.0,
)
hello = make(0xA1, 4, m.HELLO, {0: "0.1.0", 1: m.KIND_LIGHTING, 4: m.RST_WATCHDOG})
status = make(0xB2, 2, m.STATUS, {0: 3600, 4: 24000, 5: 21}, best_rssi=-101.0)
alarm = make(0xA1, 5, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 2: 3, 4: 1}, alarm=True)
cleared = make(0xA1, 6, m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 0})
cmd_ack = make(0xA1, 7, m.CMD_ACK, {0: 1001, 1: m.RES_OK})
ALL = [light, light_broken, light_off, light_nowhere, irrigation, hello, status, alarm, cleared, cmd_ack]


# -- native ------------------------------------------------------------------------------------


def test_native_batch_round_trips_through_the_checker():
    body = formats.native_batch([light, irrigation, alarm], gateway="gw-1", sent=T0 + 10)
    doc = json.loads(body)
    assert doc["format"] == "lumeau.records/2" and doc["gateway"] == "gw-1"
    assert doc["sent"] == "2026-11-18T11:06:50.000Z"
    checked = formats.check_native_batch(doc)
    assert [(c.key, c.node, c.counter, c.type) for c in checked] == [
        ("000000a1-1", "000000a1", 1, "light"),
        ("000000b2-1", "000000b2", 1, "irrigation"),
        ("000000a1-5", "000000a1", 5, "event"),
    ]
    assert [c.key for c in checked] == [r.idempotency_key for r in (light, irrigation, alarm)]
    assert checked[0].time == pytest.approx(light.rx_time, abs=1e-3)
    r = doc["records"][1]
    assert r["fields"]["soil_moisture"] == [31, None, 100, 0]
    assert r["fields"]["faults"] == ["leak"]
    assert doc["records"][2]["alarm"] is True
    assert r["radio"] == {"gateway": "", "receptions": 1, "rssi": -110.0}
    # units once per message type present, as protocol/expand.py names them
    assert set(doc["units"]) == {"light", "irrigation", "event"}
    assert doc["units"]["irrigation"]["soil_moisture"] == "%" and "faults" not in doc["units"]["irrigation"]
    assert checked[1].units == doc["units"]["irrigation"]


def test_native_fields_are_expands_values_and_units():
    # the /2 document says what the /1 document said, in two places: values per record, units per type
    doc = json.loads(formats.native_batch([light, irrigation, alarm]))
    for rec, r in zip((light, irrigation, alarm), doc["records"]):
        named = expand.expand(rec.mtype, rec.body)
        assert r["fields"] == {name: f["value"] for name, f in named.items()}
        for name, f in named.items():
            assert doc["units"][rec.kind].get(name) == f["unit"]


def test_a_v1_batch_is_read_as_v2():
    v1 = {
        "format": "lumeau.records/1",
        "records": [
            {
                "id": "000000a1-7",
                "node": "000000a1",
                "counter": 7,
                "type": "light",
                "time": "2026-11-18T11:06:41.000Z",
                "alarm": False,
                "fields": {"power": {"value": 45.2, "unit": "W"}, "state": {"value": ["on"], "unit": None}},
                "radio": {"gateway": "udp:1", "receptions": 1},
            }
        ],
    }
    (r,) = formats.check_native_batch(v1)
    assert r.doc["fields"] == {"power": 45.2, "state": ["on"]} and r.units == {"power": "W"}
    assert v1["records"][0]["fields"]["power"] == {"value": 45.2, "unit": "W"}  # the caller's document untouched


@pytest.mark.parametrize(
    "units", [[], {"light": []}, {"light": {"power": 3}}, {"light": {"p" * 40: "W"}}, {f"t{i}": {} for i in range(40)}]
)
def test_bad_units_are_a_format_error(units):
    doc = json.loads(formats.native_batch([light]))
    doc["units"] = units
    with pytest.raises(formats.FormatError, match="units"):
        formats.check_native_batch(doc)


def _iso_reference(t):
    from datetime import datetime

    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


@settings(max_examples=1000, deadline=None)
@given(
    st.floats(-2e9, 2.5e11)
    | st.integers(0, 2**33)
    | st.sampled_from(
        [0.0, -0.0, 0.0005, 0.9995, 0.9999995, -0.0000005, 1_795_000_000.2505, 1_795_000_000.9999996, -1.5]
    )
)
def test_iso_time_is_what_datetime_says(t):
    try:
        want = _iso_reference(t)
    except (OverflowError, OSError, ValueError):
        with pytest.raises(ValueError):
            formats.iso_time(t)
        return
    assert formats.iso_time(t) == want
    assert formats.iso_time(t) == want  # the cached second gives the same text


def _parse_reference(s):
    d = datetime.fromisoformat(s)
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


@settings(max_examples=800, deadline=None)
@given(
    st.floats(-2e9, 2.5e11).map(lambda t: formats.iso_time(t))
    | st.text(max_size=26)
    | st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}[Z+]\Z")
)
def test_parse_time_is_what_datetime_says(s):
    try:
        want = _parse_reference(s) if len(s) <= 40 else None
    except (ValueError, OverflowError, OSError):
        want = None
    if want is None:
        with pytest.raises(formats.FormatError):
            formats.parse_time(s)
    else:
        assert formats.parse_time(s) == want
        assert formats.parse_time(s) == want  # the cached second gives the same answer


@pytest.mark.parametrize("t", [float("nan"), float("inf"), -float("inf"), 1e300, 2.6e11])
def test_iso_time_refuses_what_no_calendar_holds(t):
    with pytest.raises(ValueError):
        formats.iso_time(t)


def test_iso_time_is_utc_with_milliseconds():
    assert formats.iso_time(0) == "1970-01-01T00:00:00.000Z"  # expected values from `date -u -d @<t>`
    assert formats.iso_time(1_795_000_000.2506) == "2026-11-18T11:06:40.250Z"
    assert formats.parse_time("2026-11-18T11:06:40.250Z") == 1_795_000_000.25
    assert formats.parse_time("2026-11-18T12:06:40.250+01:00") == 1_795_000_000.25
    with pytest.raises(formats.FormatError):
        formats.parse_time("18/11/2026")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.just("000000a1-1"), json_values),
        "node": st.one_of(st.just("000000a1"), json_values),
        "counter": st.one_of(st.just(1), json_values),
        "type": st.one_of(st.just("light"), json_values),
        "time": st.one_of(st.just("2026-11-18T11:06:41.000Z"), json_values),
        "fields": json_values,
        "radio": json_values,
        "alarm": json_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(
    doc=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"records": st.lists(record_like, max_size=4)},
            optional={
                "format": json_values | st.sampled_from(["lumeau.records/1", "lumeau.records/2"]),
                "units": json_values,
            },
        ),
    )
)
def test_fuzz_the_native_checker_answers_with_a_format_error_or_records(doc):
    try:
        out = formats.check_native_batch(doc)
    except formats.FormatError as e:
        assert str(e)
        return
    for r in out:  # what passed really is a record
        assert r.key == f"{r.node}-{r.counter}" and isinstance(r.time, float)


# -- native /3 (columnar) ----------------------------------------------------------------------

ALL = [light, light_broken, light_off, light_nowhere, irrigation, status, alarm]


def test_v3_says_what_v2_says_record_for_record():
    # the receiver reads both into the same /2-shaped documents, keys, times and units
    v3 = formats.check_native_batch(json.loads(formats.native_batch_v3(ALL, "gw-1", T0)))
    v2 = formats.check_native_batch(json.loads(formats.native_batch(ALL, "gw-1", T0)))
    assert [(r.key, r.node, r.counter, r.type, r.time, r.units, r.doc) for r in v3] == [
        (r.key, r.node, r.counter, r.type, r.time, r.units, r.doc) for r in v2
    ]
    # and the values are expand's, field for field (absent fields stay absent)
    for rec, r in zip(ALL, v3):
        assert r.doc["fields"] == {n: f["value"] for n, f in expand.expand(rec.mtype, rec.body).items()}


def test_v3_is_columnar_and_smaller():
    doc = json.loads(formats.native_batch_v3([light, light_off, irrigation], "gw-1", T0))
    assert doc["format"] == "lumeau.records/3" and doc["columns"] == list(formats.V3_COLUMNS)
    assert set(doc["types"]) == {"light", "irrigation"}
    names = doc["types"]["light"]["fields"]
    assert names == [name for _k, name, _u, _d in expand.FIELDS[m.LIGHT]]
    assert doc["types"]["light"]["units"]["power"] == "W"
    row = doc["records"][1]  # light_off: level and state only, the rest null
    assert row[:5] == ["light", "000000a1", 3, formats.iso_time(light_off.rx_time), False]
    assert dict(zip(names, row[5])) == {n: None for n in names} | {"level": 0, "state": []}
    many = [make(0xA1, c, m.LIGHT, light.body) for c in range(1, 201)]
    assert len(formats.native_batch_v3(many)) < 0.75 * len(formats.native_batch(many))


def test_v3_unknown_radio_figures_are_null_and_left_out_by_the_receiver():
    r = make(0xA1, 9, m.LIGHT, light.body, best_rssi=float("nan"))
    doc = json.loads(formats.native_batch_v3([r]))
    assert doc["records"][0][8:] == [None, None]
    (c,) = formats.check_native_batch(doc)
    assert c.doc["radio"] == {"gateway": "", "receptions": 1}


def test_v3_columns_are_found_by_name():
    # a later version may add or reorder columns: the receiver reads them by name
    doc = json.loads(formats.native_batch_v3([light, irrigation]))
    order = list(reversed(doc["columns"])) + ["extra"]
    doc["records"] = [
        [dict(zip(doc["columns"], row))[c] if c != "extra" else 1 for c in order] for row in doc["records"]
    ]
    doc["columns"] = order
    assert [r.doc for r in formats.check_native_batch(doc)] == [
        r.doc for r in formats.check_native_batch(json.loads(formats.native_batch_v3([light, irrigation])))
    ]


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d.update(columns=["type"]), "columns"),
        (lambda d: d.update(types=[]), "types"),
        (lambda d: d["types"]["light"].update(fields="level"), "types.light.fields"),
        (lambda d: d["types"]["light"].update(units={"level": 3}), "units.light"),
        (lambda d: d["records"][1].pop(), "records[1]"),
        (lambda d: d["records"][1].__setitem__(0, "status"), "records[1].type"),
        (lambda d: d["records"][1][5].pop(), "records[1].values"),
        (lambda d: d["records"][1].__setitem__(2, -1), "records[1].counter"),
        (lambda d: d["records"][1].__setitem__(1, "A1"), "records[1].node"),
        (lambda d: d["records"][1].__setitem__(3, "yesterday"), "records[1].time"),
        (lambda d: d["records"][1].__setitem__(4, "no"), "records[1].alarm"),
    ],
)
def test_a_bad_v3_batch_is_a_format_error_naming_where(mutate, where):
    doc = json.loads(formats.native_batch_v3([light, light_broken]))
    mutate(doc)
    with pytest.raises(formats.FormatError) as e:
        formats.check_native_batch(doc)
    assert str(e.value).startswith(where)


def test_native_encoder_by_version():
    assert formats.native_encoder(3) is formats.native_batch_v3 and formats.native_encoder(2) is formats.native_batch
    with pytest.raises(ValueError):
        formats.native_encoder(1)


v3_row = st.lists(
    st.one_of(
        st.sampled_from(["light", "000000a1", 1, "2026-11-18T11:06:41.000Z", False]),
        json_values,
        st.lists(json_values, max_size=8),
    ),
    min_size=0,
    max_size=11,
)


@settings(max_examples=500, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {"format": st.just("lumeau.records/3"), "records": st.lists(v3_row, max_size=4)},
        optional={
            "columns": st.one_of(st.just(list(formats.V3_COLUMNS)), json_values),
            "types": st.one_of(st.just({"light": {"fields": ["level", "power"]}}), json_values),
        },
    )
)
def test_fuzz_the_v3_checker_answers_with_a_format_error_or_records(doc):
    try:
        out = formats.check_native_batch(doc)
    except formats.FormatError as e:
        assert str(e)
        return
    for r in out:
        assert r.key == f"{r.node}-{r.counter}" and isinstance(r.time, float) and isinstance(r.doc["fields"], dict)


def test_the_native_examples_in_formats_md_are_valid_and_say_the_same():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "gateway" / "FORMATS.md").read_text()
    docs = {
        d["format"]: d
        for d in (json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S))
        if isinstance(d, dict) and "format" in d
    }
    v3, v2 = (formats.check_native_batch(docs[f]) for f in ("lumeau.records/3", "lumeau.records/2"))
    assert (
        [(r.key, r.time, r.units) for r in v3]
        == [(r.key, r.time, r.units) for r in v2]
        == [("00a1b2c3-42", formats.parse_time("2026-11-18T11:06:41.000Z"), bodies.UNITS["light"])]
    )
    assert v3[0].doc["fields"] == v2[0].doc["fields"] and v3[0].doc["radio"] == v2[0].doc["radio"]
    assert docs["lumeau.records/3"]["types"]["light"]["fields"] == formats._V3_PLANS[m.LIGHT][0]
