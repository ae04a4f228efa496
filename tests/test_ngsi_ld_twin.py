"""The city's digital twin end to end: sealed frames in, the broker's final state out.

Each test runs the real gateway parts -- pipeline (MIC, replay window),
SQLite store (node state), upstream in the `ngsi-ld` format -- against an
NGSI-LD broker on 127.0.0.1 that merges upserts as a broker does and checks
every entity it receives against its Smart Data Model
(tests/ngsi_ld_helpers.py). The sequences are the ones a twin must survive:
an alarm raised and cleared, a warning, a reboot, a STATUS in between, two
alarms overlapping, a resend, a second gateway, a gateway restart.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import node_keys, reception, root_key
from ngsi_ld_helpers import Broker
from waiting import wait_for

from gateway.pipeline import Pipeline
from gateway.registry import NodeEntry, Registry
from gateway.store import Store, StoreError
from gateway.upstream import Upstream
from protocol import frame
from protocol import messages as m

T0 = 1_795_000_000
LAMP, PARK = 0xA1, 0xB2
DEVICE = "urn:ngsi-ld:Device:lumeau-%08x"
STREETLIGHT = f"urn:ngsi-ld:Streetlight:lumeau-{LAMP:08x}"
ALERT = "urn:ngsi-ld:Alert:lumeau-%08x-%s"


def registry(path: Path) -> Registry:
    reg = Registry(path)
    reg.upsert(
        NodeEntry(
            node_id=LAMP,
            kind="lighting",
            root_key=root_key(LAMP),
            name="Rue de Rivoli 12",
            site="Rue de Rivoli",
            lat=48.8606,
            lon=2.3376,
        )
    )
    reg.upsert(
        NodeEntry(
            node_id=PARK,
            kind="irrigation",
            root_key=root_key(PARK),
            name="Parc Monceau north",
            site="Parc Monceau",
            lat=48.8796,
            lon=-2.3088,
        )
    )
    return reg


class Node:
    """A node's uplinks as sealed frames, its counter and clock moving a minute a frame."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.counter = 0
        self.last: tuple[int, dict[int, Any]] = (0, {})

    def frame(self, mtype: int, body: dict[int, Any]) -> tuple[bytes, float]:
        self.counter += 1
        self.last = (mtype, body)
        raw = frame.seal(node_keys(self.node_id), mtype, self.counter, m.encode(mtype, body))
        return raw, self.now()

    def resend(self) -> tuple[bytes, float]:
        """The last frame's body again, with a new counter (a confirmed alarm not acknowledged)."""
        return self.frame(*self.last)

    def now(self) -> float:
        return float(T0 + 60 * self.counter)

    def event(self, code: int, sev: int, active: int | None = 1, zone: int = 0, value: int = 0) -> tuple[bytes, float]:
        body = {m.E_CODE: code, m.E_SEVERITY: sev, m.E_VALUE: value, m.E_TIME: T0 + 60 * (self.counter + 1) - 5}
        if active is not None:
            body[m.E_ACTIVE] = active
        if zone:
            body[m.E_ZONE] = zone
        return self.frame(m.EVENT, body)

    def status(self, open_alarms: int, node_time: int = 0) -> tuple[bytes, float]:
        return self.frame(m.STATUS, {m.S_UPTIME: 600, m.S_TIME: node_time, m.S_ALARMS: open_alarms})

    def hello(self) -> tuple[bytes, float]:
        kind = m.KIND_LIGHTING if self.node_id == LAMP else m.KIND_IRRIGATION
        return self.frame(m.HELLO, {m.H_FIRMWARE: "0.2.0", m.H_KIND: kind, m.H_RESET: m.RST_POWER_ON})


class Twin:
    """One gateway (store, pipeline, upstream) sending NGSI-LD to a broker."""

    def __init__(self, path: Path, broker: Broker, gateway_id: str = "test:1", **upstream_kw: Any) -> None:
        self.path = path
        self.broker = broker
        self.gateway_id = gateway_id
        self.upstream_kw = upstream_kw
        self.registry = registry(path / "nodes.toml")

    async def start(self) -> Twin:
        # a node-state flush far away: the alarms must not need it to survive a restart
        self.store = await Store.open(self.path / "gw.db", state_flush_s=3600)
        self.pipeline = Pipeline(self.registry, self.store)
        self.upstream = Upstream(
            self.store,
            self.broker.url,
            fmt="ngsi-ld",
            node_info=self.registry.get,
            max_age=0,
            backoff_base=0.02,
            backoff_max=0.1,
            **self.upstream_kw,
        )
        await self.upstream.start()
        return self

    async def stop(self) -> None:
        await self.upstream.stop()
        await self.pipeline.close()
        await self.store.close()

    async def send(self, *frames: tuple[bytes, float]) -> None:
        """Frames in; back once the broker has everything they map to."""
        for raw, t in frames:
            verdict = await self.pipeline.ingest(reception(raw, gateway_id=self.gateway_id, rx_time=t))
            assert verdict == "accepted", verdict
        self.upstream.notify()
        await wait_for(lambda: self.store.count() == 0, 10.0, "the upstream delivered everything")
        assert self.store.quarantined() == [], self.store.quarantined()
        assert self.broker.problems == []


@pytest.fixture
async def broker():
    b = Broker()
    await b.start()
    yield b
    await b.stop()
    assert b.problems == []


@pytest.fixture
async def twin(tmp_path, broker):
    t = await Twin(tmp_path, broker).start()
    yield t
    await t.stop()


def iso(t: float) -> str:
    from gateway.formats import iso_time

    return iso_time(t)


def state(broker: Broker, node: int = LAMP) -> Any:
    return broker.value(DEVICE % node, "deviceState")


def alert(broker: Broker, node: int, name: str) -> dict[str, Any]:
    from gateway.ngsi_ld import key_values

    return key_values(broker.entities[ALERT % (node, name)])


# -- the sequences ------------------------------------------------------------------------------


async def test_an_alarm_raised_then_cleared(twin, broker):
    lamp = Node(LAMP)
    await twin.send(lamp.hello(), lamp.status(0))
    assert state(broker) == "ok"
    raised = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, value=3)
    await twin.send(raised)
    assert state(broker) == "lamp_failure"
    assert broker.value(STREETLIGHT, "status") == "defectiveLamp"
    a = alert(broker, LAMP, "lamp_failure")
    assert (a["category"], a["subCategory"], a["severity"]) == ("traffic", "hazardOnRoad", "high")
    assert a["alertSource"] == DEVICE % LAMP and a["location"]["coordinates"] == [2.3376, 48.8606]
    assert a["dateIssued"] == iso(raised[1]) and a["validFrom"] == iso(raised[1] - 5) and "validTo" not in a
    assert a["data"] == {"alarm": "lamp_failure", "severity": "alarm", "zone": 0, "value": 3}
    cleared = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, active=0)
    await twin.send(cleared)
    assert state(broker) == "ok" and broker.value(STREETLIGHT, "status") == "ok"
    a = alert(broker, LAMP, "lamp_failure")
    assert a["dateIssued"] == iso(raised[1]) and a["validTo"] == iso(cleared[1] - 5)
    assert list(broker.of_type("Alert")) == [ALERT % (LAMP, "lamp_failure")]


async def test_a_warning_never_sets_the_device_state(twin, broker):
    lamp = Node(LAMP)
    # the case: a watchdog reset (a warning, never cleared by the firmware)
    await twin.send(lamp.hello(), lamp.event(m.EV_WATCHDOG_RESET, m.SEV_WARNING))
    assert state(broker) == "ok"
    await twin.send(lamp.event(m.EV_CYCLING, m.SEV_WARNING), lamp.event(m.EV_LOW_SUPPLY, m.SEV_INFO, active=None))
    assert state(broker) == "ok" and broker.of_type("Alert") == {}
    # nor does one hide an alarm
    await twin.send(lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM), lamp.event(m.EV_WATCHDOG_RESET, m.SEV_WARNING))
    assert state(broker) == "lamp_failure"
    # an application exception is an alarm until the node reports its app running again (SPEC §5)
    crash = lamp.event(m.EV_APP_EXCEPTION, m.SEV_ALARM, value=(1 << 16) | 1)
    await twin.send(crash)
    assert state(broker) == "lamp_failure"  # the older of two open alarms
    a = alert(broker, LAMP, "app_exception")
    assert a["validFrom"] == iso(crash[1] - 5) and "validTo" not in a
    await twin.send(lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, active=0))
    assert state(broker) == "app_exception"
    fixed = lamp.event(m.EV_APP_EXCEPTION, m.SEV_ALARM, active=0)
    await twin.send(fixed)
    assert state(broker) == "ok" and alert(broker, LAMP, "app_exception")["validTo"] == iso(fixed[1] - 5)


async def test_a_reboot_closes_what_the_node_forgot(twin, broker):
    lamp = Node(LAMP)
    first = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
    await twin.send(lamp.hello(), first)
    assert state(broker) == "lamp_failure"
    boot = lamp.hello()
    await twin.send(boot)
    assert state(broker) == "ok" and broker.value(STREETLIGHT, "status") == "ok"
    a = alert(broker, LAMP, "lamp_failure")
    assert a["validTo"] == iso(boot[1]) and a["data"]["closedBy"] == "hello"
    # the lamp is still broken: the node raises it again, a new cycle of the same Alert
    again = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
    await twin.send(again)
    a = alert(broker, LAMP, "lamp_failure")
    assert state(broker) == "lamp_failure" and "validTo" not in a and a["dateIssued"] == iso(again[1])


async def test_a_status_in_between(twin, broker):
    lamp = Node(LAMP)
    raised = lamp.event(m.EV_OVER_CURRENT, m.SEV_ALARM)
    await twin.send(raised, lamp.status(1))
    assert state(broker) == "over_current" and broker.value(DEVICE % LAMP, "openAlarms") == 1
    # a STATUS taken before the alarm (node clock), arriving after it, closes nothing
    await twin.send(lamp.status(0, node_time=int(raised[1]) - 30))
    assert state(broker) == "over_current" and "validTo" not in alert(broker, LAMP, "over_current")
    # the clear was lost; the next STATUS says no alarm is open
    closing = lamp.status(0, node_time=int(lamp.now()) + 55)
    await twin.send(closing)
    assert state(broker) == "ok" and broker.value(DEVICE % LAMP, "openAlarms") == 0
    assert broker.value(STREETLIGHT, "status") == "ok"
    a = alert(broker, LAMP, "over_current")
    assert a["validTo"] == iso(closing[1] - 5) and a["data"]["closedBy"] == "status"


async def test_two_overlapping_alarms(twin, broker):
    park = Node(PARK)
    report = {m.IR_MOISTURE: bytes([62, 0xFF, 70, 0xFF]), m.IR_FLOW: 0, m.IR_VOLUME: 1000, m.IR_FAULTS: 0}
    await twin.send(park.hello(), park.frame(m.IRRIGATION, report))
    zones = ("urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z1", "urn:ngsi-ld:GreenspaceRecord:lumeau-000000b2-z3")

    def zone_states() -> list[Any]:
        return [broker.value(z, "irrigationStatus") for z in zones]

    assert state(broker, PARK) == "ok" and zone_states() == ["ok", "ok"]
    await twin.send(park.event(m.EV_NO_FLOW, m.SEV_ALARM, zone=3))
    assert state(broker, PARK) == "no_flow" and zone_states() == ["ok", "no_flow"]
    await twin.send(park.event(m.EV_LEAK, m.SEV_ALARM, value=42))
    assert state(broker, PARK) == "no_flow"  # as severe, older
    await twin.send(park.event(m.EV_BURST, m.SEV_CRITICAL, value=950))
    assert state(broker, PARK) == "burst" and zone_states() == ["burst", "burst"]
    await twin.send(park.event(m.EV_BURST, m.SEV_CRITICAL, active=0))
    assert state(broker, PARK) == "no_flow" and zone_states() == ["leak", "no_flow"]
    await twin.send(park.event(m.EV_NO_FLOW, m.SEV_ALARM, active=0, zone=3))
    assert state(broker, PARK) == "leak" and zone_states() == ["leak", "leak"]
    # a report in between, its fault flags agreeing
    await twin.send(park.frame(m.IRRIGATION, {**report, m.IR_FAULTS: m.IF_LEAK}))
    assert state(broker, PARK) == "leak" and zone_states() == ["leak", "leak"]
    await twin.send(park.event(m.EV_LEAK, m.SEV_ALARM, active=0), park.frame(m.IRRIGATION, report))
    assert state(broker, PARK) == "ok" and zone_states() == ["ok", "ok"]
    alerts = broker.of_type("Alert")
    assert sorted(alerts) == [ALERT % (PARK, n) for n in ("burst", "leak", "no_flow-z3")]
    assert all("validTo" in e for e in alerts.values())
    b = alert(broker, PARK, "burst")
    assert (b["category"], b["subCategory"], b["severity"], b["data"]["value"]) == (
        "agriculture",
        "irrigation",
        "critical",
        950,
    )
    assert alert(broker, PARK, "no_flow-z3")["data"]["zone"] == 3


async def test_a_resend_and_a_second_gateway_never_duplicate_an_alert(tmp_path, broker):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = await Twin(tmp_path / "a", broker, "test:1").start()
    two = await Twin(tmp_path / "b", broker, "test:2").start()
    try:
        lamp = Node(LAMP)
        raised = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
        resent = lamp.resend()
        for gw in (one, two):  # both gateways hear everything
            await gw.send(raised, resent)
        assert list(broker.of_type("Alert")) == [ALERT % (LAMP, "lamp_failure")]
        assert alert(broker, LAMP, "lamp_failure")["dateIssued"] == iso(raised[1])
        cleared = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, active=0)
        await two.send(cleared)  # only the second gateway hears the clear
        await one.send(lamp.frame(m.LIGHT, {m.L_LEVEL: 100, m.L_STATE: m.LS_ON}))
        assert list(broker.of_type("Alert")) == [ALERT % (LAMP, "lamp_failure")]
        a = alert(broker, LAMP, "lamp_failure")
        assert a["dateIssued"] == iso(raised[1]) and a["validTo"] == iso(cleared[1] - 5)
        assert state(broker) == "ok" and broker.value(STREETLIGHT, "status") == "ok"
    finally:
        await one.stop()
        await two.stop()


async def test_the_alarm_state_survives_a_gateway_restart(tmp_path, broker):
    lamp = Node(LAMP)
    t = await Twin(tmp_path, broker).start()
    raised = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
    await t.send(raised)
    await t.stop()
    t = await Twin(tmp_path, broker).start()
    try:
        await t.send(lamp.frame(m.LIGHT, {m.L_LEVEL: 100, m.L_STATE: m.LS_ON | m.LS_LAMP_FAILURE}), lamp.status(1))
        assert state(broker) == "lamp_failure" and broker.value(STREETLIGHT, "status") == "defectiveLamp"
        cleared = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM, active=0)
        await t.send(cleared)
        a = alert(broker, LAMP, "lamp_failure")
        assert state(broker) == "ok" and a["dateIssued"] == iso(raised[1]) and a["validTo"] == iso(cleared[1] - 5)
    finally:
        await t.stop()


async def test_an_alarm_is_on_disk_with_its_record_not_at_the_next_state_flush(twin):
    # what a kill -9 right after the commit would find: the record and the node's open alarm
    lamp = Node(LAMP)
    raw, t = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
    assert await twin.pipeline.ingest(reception(raw, rx_time=t)) == "accepted"
    c = sqlite3.connect(twin.store.path)
    try:
        (row,) = c.execute("SELECT state FROM nodes WHERE node_id = ?", (LAMP,)).fetchall()
    finally:
        c.close()
    assert list(json.loads(row[0])["open_alarms"]) == [f"{m.EV_LAMP_FAILURE}:0"]


async def test_ngsi_ld_requests_are_not_gzipped_unless_asked(tmp_path, broker):
    lamp = Node(LAMP)
    t = await Twin(tmp_path, broker).start()
    try:
        await t.send(lamp.hello())
        assert broker.encodings and set(broker.encodings) == {None} and broker.refused_encoding == 0
    finally:
        await t.stop()
    zipped = Broker(accept_gzip=True)
    await zipped.start()
    (tmp_path / "z").mkdir()
    t = await Twin(tmp_path / "z", zipped, gzip=True).start()
    try:
        await t.send(lamp.status(0))
        assert set(zipped.encodings) == {"gzip"} and zipped.value(DEVICE % LAMP, "deviceState") == "ok"
    finally:
        await t.stop()
        await zipped.stop()


async def test_a_failed_alarm_write_is_left_to_the_periodic_flush_not_retried_at_once(tmp_path):
    store = await Store.open(tmp_path / "gw.db", state_flush_s=3600)
    try:
        lamp = Node(LAMP)
        raw, t = lamp.event(m.EV_LAMP_FAILURE, m.SEV_ALARM)
        rec = Pipeline(registry(tmp_path / "nodes.toml"), store)
        store.writer.parts.remove(store.nodes)  # hold the part's share back, to fail it by hand
        assert await rec.ingest(reception(raw, rx_time=t)) == "accepted"
        work = store.nodes.take(100)
        assert work is not None
        store.nodes.failed(work, StoreError("disk full"))
        assert not store.nodes.has_work()  # the writer does not spin on it
        await store.flush_state()  # the periodic flush writes it
        c = sqlite3.connect(store.path)
        try:
            (row,) = c.execute("SELECT state FROM nodes WHERE node_id = ?", (LAMP,)).fetchall()
        finally:
            c.close()
        assert list(json.loads(row[0])["open_alarms"]) == [f"{m.EV_LAMP_FAILURE}:0"]
        await rec.close()
    finally:
        await store.close()
