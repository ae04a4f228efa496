"""The NGSI-LD mapping (gateway/ngsi_ld.py): every entity valid against its Smart Data Model, what it says.

Each entity is checked for its NGSI-LD shape and against the official schema
(tests/ngsi_ld_helpers.py says how). The state sequences end to end, frames
to a broker, are in tests/test_ngsi_ld_twin.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ngsi_ld_helpers import MODELS, check, check_shape, validators

from gateway import ngsi_ld
from gateway.formats import iso_time
from gateway.model import Record
from gateway.store.nodes import NodeStates
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


LAMP = SimpleNamespace(
    kind="lighting", name="Rue de Rivoli 12", site="Rue de Rivoli", lat=48.8606, lon=2.3376, firmware="0.1.0"
)
PARK = SimpleNamespace(
    kind="irrigation", name="Parc Monceau north", site="Parc Monceau", lat=48.8796, lon=2.3088, firmware="0.1.0"
)
NOWHERE = SimpleNamespace(kind="lighting", name=None, site=None, lat=None, lon=None, firmware=None)
NODES = {0xA1: LAMP, 0xB2: PARK, 0xC3: NOWHERE}


def event(node: int, counter: int, code: int, sev: int, active: int | None = 1, zone: int = 0, **kw) -> Record:
    body = {0: code, 1: sev, 2: 3, 3: int(T0) + counter - 1}
    if active is not None:
        body[4] = active
    if zone:
        body[5] = zone
    return make(node, counter, m.EVENT, body, alarm=sev >= m.SEV_ALARM, **kw)


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
status = make(0xB2, 2, m.STATUS, {0: 3600, 4: 24000, 5: 21, 8: 1}, best_rssi=-101.0)
status_clear = make(0xB2, 3, m.STATUS, {0: 3700, 8: 0})
alarm = event(0xA1, 5, m.EV_LAMP_FAILURE, m.SEV_ALARM)
cleared = event(0xA1, 6, m.EV_LAMP_FAILURE, m.SEV_ALARM, active=0)
leak = event(0xB2, 4, m.EV_LEAK, m.SEV_ALARM)
no_flow = event(0xB2, 5, m.EV_NO_FLOW, m.SEV_ALARM, zone=2)
watchdog = event(0xA1, 7, m.EV_WATCHDOG_RESET, m.SEV_WARNING)
one_shot = event(0xA1, 8, m.EV_STORAGE_FAULT, m.SEV_ALARM)  # a storage fault found at boot: never cleared
cmd_ack = make(0xA1, 9, m.CMD_ACK, {0: 1001, 1: m.RES_OK})
ALL = [
    light,
    light_broken,
    light_off,
    light_nowhere,
    irrigation,
    hello,
    status,
    status_clear,
    alarm,
    cleared,
    leak,
    no_flow,
    watchdog,
    one_shot,
    cmd_ack,
]


class Wake:
    def wake(self) -> None:
        pass


def folded(records: list[Record]) -> NodeStates:
    """The store's node state after `records` (gateway/store/nodes.py, without a database)."""
    states = NodeStates(Wake())  # type: ignore[arg-type]
    for r in records:
        states.note(r)
    return states


def mapper(records: list[Record] | None = None) -> ngsi_ld.NgsiMapper:
    """A mapper as the upstream has one: node info, and the node state after `records` (default ALL)."""
    return ngsi_ld.NgsiMapper(NODES.get, alarms=folded(ALL if records is None else records).alarms)


def stateless() -> ngsi_ld.NgsiMapper:
    return ngsi_ld.NgsiMapper(NODES.get)


def kv(e: dict) -> dict:
    return ngsi_ld.key_values(e)


def of_type(ents: list[dict], etype: str) -> list[dict]:
    return [e for e in ents if e["type"] == etype]


# -- the validator itself ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["Streetlight", "GreenspaceRecord", "DeviceMeasurement", "Alert"])
def test_official_examples_validate(vectors, model):
    example = json.loads((vectors / "smart-data-models" / model / "example.json").read_text())
    validators()[model].validate(example)


@pytest.mark.parametrize(
    "model, change",
    [
        ("Streetlight", lambda e: e.pop("location")),
        ("Streetlight", lambda e: e.update(illuminanceLevel=1.5)),
        ("Streetlight", lambda e: e.update(status="fine")),
        ("GreenspaceRecord", lambda e: e.update(soilMoistureVwc=31)),
        ("Device", lambda e: e.update(controlledProperty=["light", "magic"])),
        ("Device", lambda e: e.update(rssi="-97")),
        ("DeviceMeasurement", lambda e: e.update(dateObserved="Tuesday")),
        ("Alert", lambda e: e.update(severity="catastrophic")),
        ("Alert", lambda e: e.update(category="lighting")),
        ("Alert", lambda e: e.pop("dateIssued")),
        ("Alert", lambda e: e.update(validTo="soon")),
    ],
)
def test_the_validator_catches_broken_entities(model, change):
    entity = kv(next(x for r in ALL for x in mapper().entities(r) if x["type"] == model))
    validators()[model].validate(entity)
    change(entity)
    with pytest.raises(jsonschema.ValidationError):
        validators()[model].validate(entity)


def test_the_shape_check_catches_an_untyped_date_time():
    e = mapper().entities(light)[0]
    check_shape(e)
    e["observationDateTime"] = {"type": "Property", "value": iso_time(light.rx_time)}
    with pytest.raises(AssertionError):
        check_shape(e)


# -- every entity we produce is valid ----------------------------------------------------------


@pytest.mark.parametrize("rec", ALL, ids=lambda r: f"{r.kind}-{r.node_id:x}-{r.counter}")
@pytest.mark.parametrize("how", ["with node state", "stateless"])
def test_every_entity_is_valid_ngsi_ld_and_valid_against_its_model(rec, how):
    for e, option in (mapper() if how == "with node state" else stateless()).upserts(rec):
        # an update may leave out what the broker's entity holds already (an Alert cleared by a
        # record whose raise the mapper did not see): every entity that replaces is complete
        check(e, partial=option == ngsi_ld.UPDATE and e["type"] == "Alert")


def test_every_model_is_exercised():
    produced = {e["type"] for r in ALL for e in mapper().entities(r)}
    assert produced == set(MODELS)


# -- what the mapping says ---------------------------------------------------------------------


def test_streetlight_mapping():
    (e,) = mapper([]).entities(light)
    assert e["id"] == "urn:ngsi-ld:Streetlight:lumeau-000000a1"
    s = kv(e)
    assert s["location"] == {"type": "Point", "coordinates": [2.3376, 48.8606]}  # GeoJSON is lon, lat
    assert (s["status"], s["powerState"], s["illuminanceLevel"]) == ("ok", "low", 0.4)
    assert (s["powerConsumption"], s["lifetimePowerConsumption"], s["current"]) == (45.2, 123456, 0.205)
    units = [e[k]["unitCode"] for k in ("powerConsumption", "lifetimePowerConsumption", "current", "illuminanceLevel")]
    assert units == ["WTT", "WHR", "AMP", "C62"]
    assert e["status"]["observedAt"] == iso_time(light.rx_time)
    assert e["observationDateTime"]["value"] == {"@type": "DateTime", "@value": iso_time(light.rx_time)}
    assert (s["name"], s["areaServed"]) == ("Rue de Rivoli 12", "Rue de Rivoli")
    broken = kv(mapper([]).entities(light_broken)[0])
    assert (broken["status"], broken["powerState"]) == ("defectiveLamp", "on")
    assert kv(mapper([]).entities(light_off)[0])["powerState"] == "off"


def test_a_lamp_report_says_the_lamp_as_the_node_sees_it():
    # its flags are the node's own snapshot: a later LIGHT with the lamp fine restores ok, whatever
    # EVENT this gateway missed (the clear heard by another gateway only)
    fine = make(0xA1, 10, m.LIGHT, {0: 100, 3: m.LS_ON})
    assert kv(mapper([alarm, fine]).entities(fine)[0])["status"] == "ok"
    broken = make(0xA1, 10, m.LIGHT, {0: 100, 3: m.LS_ON | m.LS_OVER_CURRENT})
    assert kv(mapper([broken]).entities(broken)[0])["status"] == "defectiveLamp"


def test_an_irrigation_report_corrects_an_alarm_whose_flag_it_clears():
    report = make(0xB2, 6, m.IRRIGATION, {0: bytes([62, 70, 0xFF, 0xFF]), 6: 0})
    ents = mapper([leak, no_flow, report]).entities(report)
    assert kv(of_type(ents, "Device")[0])["deviceState"] == "ok"
    assert {kv(e)["irrigationStatus"] for e in of_type(ents, "GreenspaceRecord")} == {"ok"}


def test_a_lamp_without_location_is_sent_as_measurements():
    ents = mapper().entities(light_nowhere)
    assert [(e["type"], kv(e)["controlledProperty"], kv(e)["numValue"]) for e in ents] == [
        ("DeviceMeasurement", "power", 30),
        ("DeviceMeasurement", "energy", 5000),
    ]
    assert all("location" not in e for e in ents)


def test_irrigation_mapping():
    ents = mapper([irrigation]).entities(irrigation)
    by_id = {e["id"]: kv(e) for e in ents}
    z1 = by_id["urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z1"]
    assert z1["soilMoistureVwc"] == 0.31 and z1["refDevice"] == "urn:ngsi-ld:Device:lumeau-000000b2"
    assert z1["irrigationStatus"] == "leak"  # the report's own leak flag: the whole node
    assert by_id["urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z3"]["soilMoistureVwc"] == 1.0
    assert by_id["urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z4"]["soilMoistureVwc"] == 0.0
    assert "urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z2" not in by_id  # 0xff: no sensor in zone 2
    flow = by_id["urn:ngsi-ld:DeviceMeasurement:lumeau-000000b2-flow"]
    assert (flow["numValue"], flow["unit"], flow["controlledProperty"]) == (14.5, "L2", "waterFlow")
    vol = by_id["urn:ngsi-ld:DeviceMeasurement:lumeau-000000b2-volume"]
    assert (vol["numValue"], vol["unit"], vol["controlledProperty"]) == (982311, "LTR", "waterConsumption")
    dev = by_id["urn:ngsi-ld:Device:lumeau-000000b2"]
    assert dev["deviceState"] == "leak" and dev["rssi"] == -110.0
    assert dev["controlledProperty"] == ["soilMoisture", "waterFlow", "waterConsumption"]


def test_a_zone_alarm_shows_on_its_zone_only():
    report = make(0xB2, 6, m.IRRIGATION, {0: bytes([62, 70, 0xFF, 0xFF]), 6: m.IF_NO_FLOW})
    ents = mapper([no_flow, report]).entities(report)
    zones = {e["id"][-2:]: kv(e)["irrigationStatus"] for e in of_type(ents, "GreenspaceRecord")}
    assert zones == {"z1": "ok", "z2": "no_flow"}
    assert kv(of_type(ents, "Device")[0])["deviceState"] == "no_flow"


def test_units_on_every_measured_attribute():
    for r in ALL:
        for e in mapper().entities(r):
            for k in ("rssi", "numValue", "powerConsumption", "lifetimePowerConsumption", "current"):
                if k in e:
                    assert "unitCode" in e[k], (e["id"], k)
            if "rssi" in e:
                assert e["rssi"]["unitCode"] == "DBM"


def test_device_mapping_of_hello_and_status():
    h = kv(of_type(mapper().entities(hello), "Device")[0])
    assert h["firmwareVersion"] == "0.1.0" and h["controlledProperty"] == ["light", "power", "energy"]
    s = of_type(mapper().entities(status), "Device")[0]
    assert kv(s)["rssi"] == -101.0 and kv(s)["dateLastValueReported"] == iso_time(status.rx_time)
    assert s["dateLastValueReported"]["value"]["@type"] == "DateTime"
    assert kv(s)["openAlarms"] == 1 and s["openAlarms"]["observedAt"] == iso_time(status.rx_time)
    assert mapper().entities(cmd_ack) == []


def test_device_state_follows_the_open_alarms_not_the_last_event():
    def state(records: list[Record], r: Record, how: Any = mapper) -> Any:
        ents = of_type((how(records) if how is mapper else how()).entities(r), "Device")
        return kv(ents[0]).get("deviceState")

    assert state([alarm], alarm) == "lamp_failure"
    assert state([alarm, cleared], cleared) == "ok"
    assert state([watchdog], watchdog) == "ok"  # a warning never sets it
    assert state([alarm, watchdog], watchdog) == "lamp_failure"  # ...nor hides an alarm
    assert state([one_shot], one_shot) == "ok"  # a one-shot alarm is an Alert, not a state
    assert state([alarm, hello], hello) == "ok"  # the node restarted: it raises again what holds
    # a STATUS counting one alarm leaves it; one counting none closes it
    lamp_status = make(0xA1, 11, m.STATUS, {8: 1})
    assert state([alarm, lamp_status], lamp_status) == "lamp_failure"
    lamp_clear = make(0xA1, 12, m.STATUS, {8: 0})
    assert state([alarm, lamp_status, lamp_clear], lamp_clear) == "ok"
    # two alarms: the most severe shows, the other comes back when it clears
    burst = event(0xB2, 7, m.EV_BURST, m.SEV_CRITICAL)
    burst_clear = event(0xB2, 8, m.EV_BURST, m.SEV_CRITICAL, active=0)
    assert state([leak, burst], burst) == "burst"
    assert state([leak, burst, burst_clear], burst_clear) == "leak"
    # a record mapped after later ones arrived (a backlog) says the state at its own counter
    assert state([alarm, cleared], alarm) == "lamp_failure"
    # without node state: what the record alone says, nothing where it cannot say
    assert state([], alarm, stateless) == "lamp_failure"
    assert state([], cleared, stateless) is None
    assert state([], status_clear, stateless) == "ok"


def test_alerts_open_and_close():
    raised = of_type(mapper([alarm]).entities(alarm), "Alert")
    (a,) = raised
    assert a["id"] == "urn:ngsi-ld:Alert:lumeau-000000a1-lamp_failure"
    v = kv(a)
    assert (v["category"], v["subCategory"], v["severity"]) == ("traffic", "hazardOnRoad", "high")
    assert v["alertSource"] == "urn:ngsi-ld:Device:lumeau-000000a1" and a["alertSource"]["type"] == "Relationship"
    assert v["dateIssued"] == iso_time(alarm.rx_time) and v["validFrom"] == iso_time(T0 + 4)  # node clock
    assert "validTo" not in v and v["location"]["coordinates"] == [2.3376, 48.8606]
    assert v["data"] == {"alarm": "lamp_failure", "severity": "alarm", "zone": 0, "value": 3}
    assert a["dateIssued"]["value"]["@type"] == "DateTime"
    (c,) = of_type(mapper([alarm, cleared]).entities(cleared), "Alert")
    assert c["id"] == a["id"]
    assert kv(c)["validTo"] == iso_time(T0 + 5) and kv(c)["dateIssued"] == v["dateIssued"]
    # the irrigation ones, with their zone
    (z,) = of_type(mapper([no_flow]).entities(no_flow), "Alert")
    assert z["id"] == "urn:ngsi-ld:Alert:lumeau-000000b2-no_flow-z2"
    assert (kv(z)["category"], kv(z)["subCategory"], kv(z)["data"]["zone"]) == ("agriculture", "irrigation", 2)
    # warnings are not alerts; a one-shot alarm is issued and over at once
    assert of_type(mapper([watchdog]).entities(watchdog), "Alert") == []
    (x,) = of_type(mapper([one_shot]).entities(one_shot), "Alert")
    assert kv(x)["validFrom"] == kv(x)["validTo"]


def test_raised_alerts_replace_so_a_new_cycle_loses_the_old_validto():
    ups = {e["id"]: opt for e, opt in mapper([alarm]).upserts(alarm)}
    assert ups["urn:ngsi-ld:Alert:lumeau-000000a1-lamp_failure"] == ngsi_ld.REPLACE
    assert ups["urn:ngsi-ld:Device:lumeau-000000a1"] == ngsi_ld.UPDATE
    # a clear the state never saw raised: merged, not replaced (it does not know when it began)
    ((e, opt),) = [(e, o) for e, o in stateless().upserts(cleared) if e["type"] == "Alert"]
    assert opt == ngsi_ld.UPDATE and "dateIssued" not in e and "validTo" in e


def test_a_resent_raise_keeps_the_first_issue_time():
    resent = event(0xA1, 13, m.EV_LAMP_FAILURE, m.SEV_ALARM)
    resent.body[3] = alarm.body[3]  # the same body, a new counter
    (a,) = of_type(mapper([alarm, resent]).entities(resent), "Alert")
    assert kv(a)["dateIssued"] == iso_time(alarm.rx_time)
    # the same after an earlier cycle of the same alarm (raised, cleared, raised again, resent)
    again = event(0xA1, 14, m.EV_LAMP_FAILURE, m.SEV_ALARM)
    again_resent = event(0xA1, 15, m.EV_LAMP_FAILURE, m.SEV_ALARM)
    again_resent.body[3] = again.body[3]
    (a,) = of_type(mapper([alarm, cleared, again, again_resent]).entities(again_resent), "Alert")
    assert kv(a)["dateIssued"] == iso_time(again.rx_time) and "validTo" not in kv(a)


def test_an_alarm_raised_after_the_counters_restarted_is_open():
    # a node re-keyed (its counters start again) without a HELLO the gateway heard
    before = event(0xA1, 100, m.EV_LAMP_FAILURE, m.SEV_ALARM)
    after = event(0xA1, 3, m.EV_LAMP_FAILURE, m.SEV_ALARM)
    ents = mapper([before, after]).entities(after)
    assert kv(of_type(ents, "Device")[0])["deviceState"] == "lamp_failure"
    assert kv(of_type(ents, "Alert")[0])["dateIssued"] == iso_time(after.rx_time)


def test_status_and_hello_close_the_alerts_they_close():
    lamp_clear = make(0xA1, 12, m.STATUS, {1: int(T0) + 100, 8: 0})
    ents = mapper([alarm, lamp_clear]).entities(lamp_clear)
    (a,) = of_type(ents, "Alert")
    assert kv(a)["validTo"] == iso_time(T0 + 100) and kv(a)["data"]["closedBy"] == "status"
    assert kv(of_type(ents, "Streetlight")[0])["status"] == "ok"
    # an alarm raised after the STATUS was taken (node clock) is not closed by it
    late = make(0xA1, 12, m.STATUS, {1: int(T0) + 1, 8: 0})
    assert of_type(mapper([alarm, late]).entities(late), "Alert") == []
    boot = make(0xA1, 12, m.HELLO, {0: "0.1.0", 1: m.KIND_LIGHTING})
    (b,) = of_type(mapper([alarm, boot]).entities(boot), "Alert")
    assert kv(b)["data"]["closedBy"] == "hello" and kv(b)["validTo"] == iso_time(boot.rx_time)


def test_lamp_and_irrigation_events_update_the_streetlight_and_the_greenspace_records():
    s = of_type(mapper([alarm]).entities(alarm), "Streetlight")
    assert [kv(e)["status"] for e in s] == ["defectiveLamp"] and set(s[0]) >= {"location", "status"}
    assert [kv(e)["status"] for e in of_type(mapper([alarm, cleared]).entities(cleared), "Streetlight")] == ["ok"]
    # a leak (the whole node) shows on every zone with a sensor; no_flow on its zone
    g = of_type(mapper([irrigation, leak]).entities(leak), "GreenspaceRecord")
    assert {e["id"][-2:]: kv(e)["irrigationStatus"] for e in g} == {"z1": "leak", "z3": "leak", "z4": "leak"}
    g = of_type(mapper([irrigation, no_flow]).entities(no_flow), "GreenspaceRecord")
    assert {e["id"][-2:]: kv(e)["irrigationStatus"] for e in g} == {"z2": "no_flow"}


def test_requests_never_repeat_an_entity_and_keep_each_entitys_order():
    records = [light, irrigation, light_broken, cmd_ack, light_off, status, alarm, cleared]
    reqs, empty = ngsi_ld.ngsi_requests(records, mapper())
    assert empty == [3]
    for req in reqs:
        ids = [e["id"] for e in req.entities]
        assert len(ids) == len(set(ids))
        assert json.loads(req.body()) == req.entities
        assert req.options in (ngsi_ld.UPDATE, ngsi_ld.REPLACE)
        assert all(e["type"] == "Alert" for e in req.entities) or req.options == ngsi_ld.UPDATE

    def where(eid: str) -> list[tuple[int, list[int]]]:
        return [(k, req.sources[eid]) for k, req in enumerate(reqs) if eid in req.sources]

    # the reports of lamp a1 (three LIGHTs, then two EVENTs' status) go out in that order
    lamp = where("urn:ngsi-ld:Streetlight:lumeau-000000a1")
    assert [s for _, s in lamp] == [[0], [2], [4], [6], [7]] and [k for k, _ in lamp] == sorted(k for k, _ in lamp)
    alert = where("urn:ngsi-ld:Alert:lumeau-000000a1-lamp_failure")
    assert [s for _, s in alert] == [[6], [7]] and alert[0][0] < alert[1][0]
    # the irrigation record and the park's STATUS share the park's Device entity: two requests
    dev = where("urn:ngsi-ld:Device:lumeau-000000b2")
    assert [s for _, s in dev] == [[1], [5]]


def test_mapping_tolerates_registry_entries_with_bad_or_missing_fields():
    odd = ngsi_ld.NgsiMapper(lambda n: SimpleNamespace(kind=None, name=3, lat=float("nan"), lon=2.0))
    assert [e["type"] for e in odd.entities(light)] == ["DeviceMeasurement", "DeviceMeasurement"]
    assert ngsi_ld.NgsiMapper().entities(status)[0]["controlledProperty"]["value"] == []
    for e, option in ngsi_ld.NgsiMapper().upserts(alarm):
        check(e, partial=option == ngsi_ld.UPDATE and e["type"] == "Alert")


def test_a_store_state_that_is_odd_does_not_break_the_mapping():
    weird = ngsi_ld.NgsiMapper(
        NODES.get, alarms=lambda n: {"alarms": [{"code": 1, "counter": "x"}, {}, None, 7], "zones": 7}
    )
    for r in ALL:
        for e, option in weird.upserts(r):
            check(e, partial=option == ngsi_ld.UPDATE and e["type"] == "Alert")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([m.EV_LAMP_FAILURE, m.EV_LEAK, m.EV_BURST, m.EV_NO_FLOW, m.EV_WATCHDOG_RESET, 99]),
            st.integers(0, 3),
            st.sampled_from([None, 0, 1]),
            st.integers(0, 4),
        ),
        max_size=12,
    ),
    st.sampled_from([0xA1, 0xB2, 0xC3, 0xD4]),
)
def test_any_event_sequence_maps_to_valid_entities(events, node):
    records = [
        make(node, i + 1, m.EVENT, {0: code, 1: sev, **({4: act} if act is not None else {}), **({5: z} if z else {})})
        for i, (code, sev, act, z) in enumerate(events)
    ]
    records.append(make(node, len(records) + 1, m.STATUS, {8: 0}))
    # mapped as each arrives (an upstream that keeps up; a backlog sees each alarm's latest cycle)
    states = folded([])
    mp = ngsi_ld.NgsiMapper(NODES.get, alarms=states.alarms)
    open_now: dict[tuple[int, int], int] = {}  # (code, zone) -> severity of its latest raise
    for r in records:
        states.note(r)
        ups = mp.upserts(r)
        for e, option in ups:
            check(e, partial=option == ngsi_ld.UPDATE and e["type"] == "Alert")
        ents = [e for e, _ in ups]
        if r.kind == "event" and 4 in r.body:
            key = (r.body[0], r.body.get(5, 0))
            if r.body[4]:
                open_now[key] = r.body[1]
            else:
                open_now.pop(key, None)
        elif r.kind == "status":
            open_now.clear()
        alarms = [k for k, sev in open_now.items() if sev >= m.SEV_ALARM and k[0] != m.EV_WATCHDOG_RESET]
        state = kv(of_type(ents, "Device")[0])["deviceState"]
        assert (state == "ok") == (not alarms), (r, state, open_now)


# -- FORMATS.md's examples are what the mapping gives ---------------------------------------------

DOC_LAMP, DOC_PARK = 0x00A1B2C3, 0x00B2C3D4
DOC_NODES = {
    DOC_LAMP: SimpleNamespace(kind="lighting", name="Rue de Rivoli 12", site="Rue de Rivoli", lat=48.8606, lon=2.3376),
    DOC_PARK: SimpleNamespace(
        kind="irrigation", name="Parc Monceau north", site="Parc Monceau", lat=48.8796, lon=2.3088
    ),
}


def doc_record(node: int, counter: int, mtype: int, body: dict) -> Record:
    return make(node, counter, mtype, body, best_rssi=-97.0, alarm=m.is_alarm(mtype, body))


DOC_EXAMPLES = {  # name: (records before it, the record)
    "light": ([], doc_record(DOC_LAMP, 42, m.LIGHT, {0: 40, 1: 452, 2: 123456, 3: m.LS_ON | m.LS_BOOST, 6: 205})),
    "irrigation": ([], doc_record(DOC_PARK, 17, m.IRRIGATION, {0: bytes([62, 0xFF, 0xFF, 0xFF]), 2: 145, 6: 0})),
    "hello": ([], doc_record(DOC_LAMP, 1, m.HELLO, {0: "0.2.0", 1: m.KIND_LIGHTING, 4: m.RST_POWER_ON})),
    "event-raised": ([], doc_record(DOC_LAMP, 43, m.EVENT, {0: 1, 1: 2, 2: 12, 3: int(T0) + 40, 4: 1})),
    "event-cleared": (["event-raised"], doc_record(DOC_LAMP, 50, m.EVENT, {0: 1, 1: 2, 2: 0, 3: int(T0) + 48, 4: 0})),
    "status": (["event-raised"], doc_record(DOC_LAMP, 44, m.STATUS, {0: 86400, 1: int(T0) + 43, 8: 0})),
}


def doc_blocks() -> dict[str, Any]:
    text = (Path(__file__).parent.parent / "gateway" / "FORMATS.md").read_text()
    found = re.findall(r"<!-- ngsi-ld example: ([\w-]+) -->\n```json\n(.*?)\n```", text, re.S)
    return {name: json.loads(block) for name, block in found}


def test_the_examples_in_formats_md_are_what_the_mapping_gives():
    blocks = doc_blocks()
    assert set(blocks) == set(DOC_EXAMPLES)
    for name, (before, r) in DOC_EXAMPLES.items():
        states = folded([DOC_EXAMPLES[b][1] for b in before] + [r])
        ups = ngsi_ld.NgsiMapper(DOC_NODES.get, alarms=states.alarms).upserts(r)
        assert blocks[name] == [e for e, _ in ups], name
        for e, option in ups:
            check(e)
            assert option == (ngsi_ld.REPLACE if e["type"] == "Alert" else ngsi_ld.UPDATE)
    # every message type the mapping knows has one
    assert {r.kind for _, r in DOC_EXAMPLES.values()} == {"light", "irrigation", "hello", "event", "status"}
