"""The `ngsi-ld` upstream format: records -> FIWARE Smart Data Models entities, NGSI-LD normalised.

Documented for platform builders in gateway/FORMATS.md (one example per
message type); tests/test_ngsi_ld.py checks every entity against the
official schemas and the state a broker ends in after sequences of frames.

Representation (ETSI GS CIM 009): every attribute is a Property
{"type": "Property", "value": ..., "observedAt": the record's time,
"unitCode": UN/CEFACT Rec. 20 code where the value is measured}, a
Relationship {"object": urn} or a GeoProperty (GeoJSON Point, [lon, lat]).
Times are DateTime strings as clause 4.6.3 ("Supported data types for
Values") requires (UTC, milliseconds after a decimal point, "Z"); a
DateTime value is sent as a JSON-LD typed value {"@type": "DateTime",
"@value": "...Z"} (the core @context's term: a broker reads it as a time,
not a text), `observedAt` as a plain string. Entity ids:
urn:ngsi-ld:<Type>:lumeau-<node hex>[-<part>].

Each entity goes with an upsert option: `update` merges the attributes it
carries into the broker's entity (a report updates what it says, leaves the
rest), `replace` puts the whole entity in place (an Alert raised again must
lose the validTo of its previous cycle; NGSI-LD cannot drop an attribute
through an update). `ngsi_requests` groups them by option.

The device's state follows its alarms, not its last event. The store keeps
the latest cycle of each alarm of each node (gateway/store/nodes.py, in the
database with the record that changed it, so a restart loses nothing): the
mapper reads them through `alarms(node_id)` and derives, for the record it
maps, the alarms open just after it (raised at or before its counter, not
closed by then). An alarm is an EVENT of severity alarm or critical
(protocol.messages.is_alarm); warnings, info and the one-shot reports
(ONE_SHOT: a watchdog reset, a storage fault found at boot -- the node never
clears them) never set `deviceState`. An application exception is an alarm:
the node clears it once its app runs cleanly again. Without
`alarms` (a mapper on its own) the state is what the record alone says, and
left out where it cannot say (an alarm cleared: others may be open).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from gateway.formats import iso_time
from gateway.model import Record

NGSI_CONTENT_TYPE = "application/ld+json"
NGSI_CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
SDM_CONTEXT = "https://smartdatamodels.org/context.jsonld"
DEFAULT_CONTEXT = (SDM_CONTEXT, NGSI_CORE_CONTEXT)
URN_PREFIX = "urn:ngsi-ld:"
UPDATE = "update"
REPLACE = "replace"

# UN/CEFACT Recommendation 20 common codes for the units we send ("1": a ratio, 0..1).
UNIT_CODES = {
    "W": "WTT",
    "Wh": "WHR",
    "A": "AMP",
    "L/min": "L2",
    "L": "LTR",
    "mV": "2Z",
    "Cel": "CEL",
    "h": "HUR",
    "dBm": "DBM",
    "1": "C62",
}

ALARM_SEVERITIES = frozenset(("alarm", "critical"))
ONE_SHOT = frozenset(("watchdog_reset", "storage_fault"))
LAMP_ALARMS = frozenset(("lamp_failure", "over_current"))  # Streetlight status defectiveLamp
IRRIGATION_ALARMS = frozenset(("leak", "burst", "no_flow", "max_runtime", "irrigation_failsafe", "excess_flow"))
LIGHTING_EVENTS = frozenset(("lamp_failure", "over_current", "cycling", "light_failsafe"))
# IRRIGATION fault flags that are alarms of the whole node (the per-zone ones come as EVENTs)
_NODE_FAULTS = ("burst", "leak", "excess_flow")
_FLAGGED = {
    "leak": "leak",
    "burst": "burst",
    "no_flow": "no_flow",
    "max_runtime": "max_runtime",
    "excess_flow": "excess_flow",
    "irrigation_failsafe": "failsafe",
}
_SEVERITY_RANK = {"critical": 0, "alarm": 1}
# Alert's enum; an Alert is an alarm or critical, the others only name a cycle a later EVENT changed
ALERT_SEVERITY = {"info": "informational", "warning": "medium", "alarm": "high", "critical": "critical"}
# Alert's category and subCategory enums have no infrastructure faults: a street lamp's faults are
# a hazard to the road's users, an irrigation system's belong to "agriculture / irrigation".
ALERT_CATEGORY = {"lighting": ("traffic", "hazardOnRoad"), "irrigation": ("agriculture", "irrigation")}
ALERT_CATEGORY_OTHER = ("security", None)  # a bridge board, or a node of unknown kind

_CONTROLLED = {
    "lighting": ["light", "power", "energy"],
    "irrigation": ["soilMoisture", "waterFlow", "waterConsumption"],
}
_CATEGORY = {"lighting": ["actuator", "meter"], "irrigation": ["actuator", "sensor", "meter"]}

Entity = dict[str, Any]
Upsert = tuple[Entity, str]  # an entity and its upsert option (UPDATE, REPLACE)


class NodeInfo:
    """What the NGSI-LD mapping reads about a node: any object with these attributes
    (gateway.registry.NodeEntry has them), each optional."""

    kind: str | None  # "lighting" | "irrigation" | "bridge"
    name: str | None
    site: str | None  # street, park or zone
    lat: float | None
    lon: float | None
    firmware: str | None


def entity_id(etype: str, node_id: int, part: str = "") -> str:
    return f"{URN_PREFIX}{etype}:lumeau-{node_id:08x}{'-' + part if part else ''}"


def date_time(t: str) -> dict[str, str]:
    """A DateTime value as NGSI-LD types it (a JSON-LD typed value)."""
    return {"@type": "DateTime", "@value": t}


def _prop(value: Any, t: str, unit: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "Property", "value": value, "observedAt": t}
    code = UNIT_CODES.get(unit or "")
    if code:
        p["unitCode"] = code
    return p


def _when(t: str) -> dict[str, Any]:
    return {"type": "Property", "value": date_time(t)}


def _rel(obj: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": obj}


def _value(r: Record, name: str) -> Any:
    f = r.fields.get(name)
    return None if f is None else f.get("value")


def _number_ok(v: Any) -> TypeGuard[float]:  # an int or a float, finite, not a bool
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _code_name(code: Any) -> str:
    return code if isinstance(code, str) else f"event_{code}"


def _is_state_alarm(a: dict[str, Any]) -> bool:
    """An alarm that is a state of the device (open until cleared), not a one-shot report."""
    return a.get("severity") in ALARM_SEVERITIES and _code_name(a.get("code")) not in ONE_SHOT


def _worst(alarms: list[dict[str, Any]]) -> str:
    """`ok`, or the name of the most severe open alarm (the oldest of equals)."""
    if not alarms:
        return "ok"
    a = min(alarms, key=lambda a: (_SEVERITY_RANK.get(str(a.get("severity")), 9), a.get("since") or 0.0))
    return _code_name(a.get("code"))


@dataclass(slots=True)
class _View:
    """A node's alarms as they stood just after one of its records."""

    open: list[dict[str, Any]] | None  # alarms (state alarms only) open after it; None: unknown
    closed: list[dict[str, Any]]  # alarm cycles this record closed
    cycle: dict[str, dict[str, Any]]  # "code:zone" -> the latest cycle raised at or before it
    zones: list[int]  # zones with a soil sensor


def _key(a: dict[str, Any]) -> str:
    return f"{_code_name(a.get('code'))}:{a.get('zone') or 0}"


def _event_alarm(r: Record) -> dict[str, Any]:
    """The alarm an EVENT record speaks of, from the record alone."""
    t = _value(r, "time")
    return {
        "code": _value(r, "code"),
        "severity": _value(r, "severity"),
        "zone": _value(r, "zone") or 0,
        "value": _value(r, "value"),
        "time": t or None,
        "since": r.rx_time,
        "counter": r.counter,
        "until": None,
        "until_counter": None,
        "until_time": None,
        "closed_by": None,
    }


class NgsiMapper:
    """Records -> NGSI-LD entities.

    `node_info(node_id)` gives location and names (or None); `alarms(node_id)`
    the latest cycle of each of its alarms, as gateway.store.Store.node_alarms
    gives them (or None: the state comes from each record alone).
    """

    def __init__(
        self,
        node_info: Callable[[int], Any] | None = None,
        context: Sequence[str] = DEFAULT_CONTEXT,
        alarms: Callable[[int], dict[str, Any] | None] | None = None,
    ) -> None:
        self.node_info = node_info or (lambda _n: None)
        self.context = list(context)
        self.alarms = alarms

    def _info(self, node_id: int) -> tuple[Any, str | None, dict[str, Any] | None]:
        info = self.node_info(node_id)
        kind = getattr(info, "kind", None)
        lat, lon = getattr(info, "lat", None), getattr(info, "lon", None)
        loc = None
        if _number_ok(lat) and _number_ok(lon) and -90 <= lat <= 90 and -180 <= lon <= 180:
            loc = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
        return info, kind if isinstance(kind, str) else None, loc

    def _view(self, r: Record) -> _View:
        got = self.alarms(r.node_id) if self.alarms is not None else None
        if not isinstance(got, dict):
            return self._view_of_record(r)
        c = r.counter
        open_: list[dict[str, Any]] = []
        closed: list[dict[str, Any]] = []
        cycle: dict[str, dict[str, Any]] = {}
        for a in got.get("alarms") or ():
            if not isinstance(a, dict):
                continue
            raised, until = a.get("counter"), a.get("until_counter")
            if not isinstance(raised, int) or raised > c:
                continue  # raised after this record (or unreadable)
            if until is None or until > c:  # open after this record
                a = {**a, "until": None, "until_counter": None, "until_time": None, "closed_by": None}
                if _is_state_alarm(a):
                    open_.append(a)
            elif until == c:
                closed.append(a)
            k = _key(a)
            if k not in cycle or raised >= cycle[k]["counter"]:  # the latest cycle raised by now
                cycle[k] = a
        if r.kind == "event" and _value(r, "active") == 1 and _key(_event_alarm(r)) not in cycle:
            # raised here but not in the store's state (a record mapped on its own): from the record
            a = _event_alarm(r)
            cycle[_key(a)] = a
            if _is_state_alarm(a):
                open_.append(a)
        zones = got.get("zones")
        return _View(open_, closed, cycle, [z for z in zones if isinstance(z, int)] if isinstance(zones, list) else [])

    def _view_of_record(self, r: Record) -> _View:
        """What one record says of its node's alarms, without the node's state."""
        if r.kind == "event" and _value(r, "active") is not None:
            a = _event_alarm(r)
            if _value(r, "active") == 1:
                return _View([a] if _is_state_alarm(a) else None, [], {_key(a): a}, [])
            return _View(None, [], {}, [])  # cleared: others may be open
        if r.kind == "hello" or (r.kind == "status" and _value(r, "open_alarms") == 0):
            return _View([], [], {}, [])
        return _View(None, [], {}, [])

    def entities(self, r: Record) -> list[Entity]:
        """The entities one record updates (possibly none)."""
        return [e for e, _ in self.upserts(r)]

    def upserts(self, r: Record) -> list[Upsert]:
        """The entities one record updates, each with its upsert option."""
        info, kind, loc = self._info(r.node_id)
        t = iso_time(r.rx_time)
        if r.kind == "light":
            return [(e, UPDATE) for e in self._light(r, info, loc, t)]
        if r.kind == "irrigation":
            return self._irrigation(r, info, loc, t, self._view(r))
        if r.kind in ("hello", "status", "event"):
            return self._node_record(r, info, kind or _kind_of(r), loc, t, self._view(r))
        return []

    # -- the entities ------------------------------------------------------

    def _entity(
        self, etype: str, eid: str, info: Any, loc: dict[str, Any] | None, name_suffix: str | None = ""
    ) -> dict[str, Any]:
        """An entity with the node's name (+ `name_suffix`; None: no name), area and location."""
        e: dict[str, Any] = {"id": eid, "type": etype}
        name = getattr(info, "name", None)
        if isinstance(name, str) and name and name_suffix is not None:
            e["name"] = {"type": "Property", "value": name + name_suffix}
        site = getattr(info, "site", None)
        if isinstance(site, str) and site:
            e["areaServed"] = {"type": "Property", "value": site}
        if loc is not None:
            e["location"] = loc
        e["@context"] = self.context
        return e

    def _device(
        self, r: Record, info: Any, kind: str | None, loc: dict[str, Any] | None, t: str, state: str | None
    ) -> Entity:
        e = self._entity("Device", entity_id("Device", r.node_id), info, loc)
        e["controlledProperty"] = {"type": "Property", "value": _CONTROLLED.get(kind or "", [])}
        if kind in _CATEGORY:
            e["category"] = {"type": "Property", "value": _CATEGORY[kind]}
        e["supportedProtocol"] = {"type": "Property", "value": ["lora"]}
        e["dateLastValueReported"] = _when(t)
        if r.best_rssi is not None and _number_ok(r.best_rssi):
            e["rssi"] = _prop(r.best_rssi, t, "dBm")
        fw = _value(r, "firmware") if r.kind == "hello" else None
        if isinstance(fw, str):
            e["firmwareVersion"] = _prop(fw, t)
        if r.kind == "status":
            n = _value(r, "open_alarms")
            if isinstance(n, int):
                e["openAlarms"] = _prop(n, t)  # what the node counts (no such attribute in Device)
        if state is not None:
            e["deviceState"] = _prop(state, t)
        return e

    def _node_record(
        self, r: Record, info: Any, kind: str | None, loc: dict[str, Any] | None, t: str, view: _View
    ) -> list[Upsert]:
        """HELLO, STATUS, EVENT: the Device; the Alerts the record raises or closes, and the
        Streetlight or GreenspaceRecords whose state those alarms change."""
        out: list[Upsert] = [(self._device(r, info, kind, loc, t, _state(view.open)), UPDATE)]
        touched: list[dict[str, Any]] = []
        closed = view.closed
        if r.kind == "event":
            closed = [a for a in closed if _key(a) != _key(_event_alarm(r))]  # this EVENT's own, below
            here = _event_alarm(r)
            if here["severity"] in ALARM_SEVERITIES:
                cycle = view.cycle.get(_key(here))
                active = _value(r, "active")
                if active == 0:
                    if cycle is not None and cycle.get("until_counter") is not None:  # closed by now
                        out.append((self._alert(r, info, kind, loc, t, cycle), REPLACE))
                    else:  # a clear the store did not see raised: what it says, merged
                        here.update(until=r.rx_time, until_time=here["time"], since=None)
                        out.append((self._alert(r, info, kind, loc, t, here), UPDATE))
                else:  # raised, or a one-shot (issued and over at once)
                    a = cycle if cycle is not None and cycle.get("until_counter") is None else here
                    if active is None or _code_name(here["code"]) in ONE_SHOT:
                        a = {**here, "until": here["since"], "until_time": here["time"]}
                    out.append((self._alert(r, info, kind, loc, t, a), REPLACE))
            touched.append(here)
        for a in closed:
            if _is_state_alarm(a):
                out.append((self._alert(r, info, kind, loc, t, a), REPLACE))
                touched.append(a)
        codes = {_code_name(a.get("code")) for a in touched}
        if codes & LAMP_ALARMS and loc is not None and view.open is not None:
            out.append((self._streetlight_status(r, info, loc, t, view), UPDATE))
        if codes & IRRIGATION_ALARMS and view.open is not None:
            zones = sorted({a.get("zone") or 0 for a in touched if _code_name(a.get("code")) in IRRIGATION_ALARMS})
            if 0 in zones:
                zones = sorted(set(zones[1:]) | set(view.zones))
            for z in zones:
                g = self._greenspace(r, info, loc, t, z)
                g["irrigationStatus"] = _prop(_zone_state(view.open, z, ()), t)
                out.append((g, UPDATE))
        return out

    def _alert(
        self, r: Record, info: Any, kind: str | None, loc: dict[str, Any] | None, t: str, a: dict[str, Any]
    ) -> Entity:
        """The Alert of one alarm cycle: one entity per node and alarm (code and zone), so a
        resend, or the same frame through a second gateway, updates it and never adds one."""
        code, zone = _code_name(a.get("code")), a.get("zone") or 0
        e = self._entity("Alert", entity_id("Alert", r.node_id, code + (f"-z{zone}" if zone else "")), info, loc, None)
        if kind not in ALERT_CATEGORY:
            kind = "lighting" if code in LIGHTING_EVENTS else "irrigation" if code in IRRIGATION_ALARMS else kind
        category, sub = ALERT_CATEGORY.get(kind or "", ALERT_CATEGORY_OTHER)
        e["category"] = _prop(category, t)
        if sub is not None:
            e["subCategory"] = _prop(sub, t)
        e["severity"] = _prop(ALERT_SEVERITY.get(a.get("severity") or "", "high"), t)
        where = getattr(info, "name", None)
        text = code.replace("_", " ") + (f", zone {zone}" if zone else "")
        if isinstance(where, str) and where:
            text += f" at {where}"
        e["description"] = _prop(text, t)
        since = a.get("since")
        if _number_ok(since):
            e["dateIssued"] = _when(iso_time(since))
            began = a.get("time")
            e["validFrom"] = _when(iso_time(began if _number_ok(began) and began > 0 else since))
        until = a.get("until_time") or a.get("until")
        if _number_ok(until):
            e["validTo"] = _when(iso_time(until))
        e["alertSource"] = _rel(entity_id("Device", r.node_id))
        data: dict[str, Any] = {"alarm": code, "severity": a.get("severity") or "alarm", "zone": zone}
        if _number_ok(a.get("value")):
            data["value"] = a.get("value")
        if isinstance(a.get("closed_by"), str):
            data["closedBy"] = a["closed_by"]
        e["data"] = _prop(data, t)
        return e

    def _streetlight_status(self, r: Record, info: Any, loc: dict[str, Any], t: str, view: _View) -> Entity:
        e = self._entity("Streetlight", entity_id("Streetlight", r.node_id), info, loc)
        e["status"] = _prop(_lamp_status(view.open or [], ()), t)
        return e

    def _greenspace(self, r: Record, info: Any, loc: dict[str, Any] | None, t: str, zone: int) -> Entity:
        g = self._entity(
            "GreenspaceRecord", entity_id("GreenspaceRecord", r.node_id, f"z{zone}"), info, loc, f" (zone {zone})"
        )
        g["dateObserved"] = _when(t)
        g["refDevice"] = _rel(entity_id("Device", r.node_id))
        return g

    def _measurement(
        self, r: Record, info: Any, loc: dict[str, Any] | None, t: str, part: str, prop: str, value: float, unit: str
    ) -> Entity:
        e = self._entity("DeviceMeasurement", entity_id("DeviceMeasurement", r.node_id, part), info, loc, f" ({part})")
        e["controlledProperty"] = {"type": "Property", "value": prop}
        e["numValue"] = _prop(value, t, unit)
        e["unit"] = {"type": "Property", "value": UNIT_CODES[unit]}
        e["measurementType"] = {"type": "Property", "value": part}
        e["deviceType"] = {"type": "Property", "value": "sensor"}
        e["dateObserved"] = _when(t)
        e["refDevice"] = _rel(entity_id("Device", r.node_id))
        return e

    def _light(self, r: Record, info: Any, loc: dict[str, Any] | None, t: str) -> list[Entity]:
        level, power, energy = _value(r, "level"), _value(r, "power"), _value(r, "energy")
        if loc is None:  # Streetlight requires a location
            out = []
            if _number_ok(power):
                out.append(self._measurement(r, info, None, t, "power", "power", power, "W"))
            if _number_ok(energy):
                out.append(self._measurement(r, info, None, t, "energy", "energy", energy, "Wh"))
            return out
        state = _value(r, "state") or []
        e = self._entity("Streetlight", entity_id("Streetlight", r.node_id), info, loc)
        # the report's flags are the node's own snapshot of its lamp: a later LIGHT with the lamp
        # fine restores ok (EVENTs in between update the status through _node_record)
        e["status"] = _prop(_lamp_status([], state), t)
        if _number_ok(level):
            e["illuminanceLevel"] = _prop(level / 100, t, "1")
            e["powerState"] = _prop("off" if "on" not in state or level == 0 else "on" if level >= 100 else "low", t)
        if _number_ok(power):
            e["powerConsumption"] = _prop(power, t, "W")
        if _number_ok(energy):
            e["lifetimePowerConsumption"] = _prop(energy, t, "Wh")
        current = _value(r, "current")
        if _number_ok(current):
            e["current"] = _prop(current / 1000, t, "A")
        e["controllingMethod"] = {"type": "Property", "value": "individual"}
        e["observationDateTime"] = _when(t)
        # No refDevice here: the model wants an array of ids, which a plain NGSI-LD
        # Relationship cannot carry; the Device shares the node part of the id.
        return [e]

    def _irrigation(self, r: Record, info: Any, loc: dict[str, Any] | None, t: str, view: _View) -> list[Upsert]:
        out: list[Entity] = []
        faults = [f for f in (_value(r, "faults") or []) if isinstance(f, str)]
        # the report's fault flags are the node's own snapshot: an alarm they have a flag for is
        # open only if its flag is set (no_flow and max_runtime: the zone from the EVENT)
        opened = [
            a
            for a in view.open or []
            if _code_name(a.get("code")) not in _FLAGGED or _FLAGGED[_code_name(a.get("code"))] in faults
        ]
        view = _View(opened if view.open is not None else None, view.closed, view.cycle, view.zones)
        moisture = _value(r, "soil_moisture")
        if isinstance(moisture, list):
            for zone, v in enumerate(moisture, start=1):
                if not _number_ok(v):
                    continue  # no sensor in that zone
                g = self._greenspace(r, info, loc, t, zone)
                g["soilMoistureVwc"] = _prop(min(max(v / 100, 0.0), 1.0), t, "1")
                g["irrigationStatus"] = _prop(_zone_state(view.open or [], zone, faults), t)
                out.append(g)
        flow, volume = _value(r, "flow"), _value(r, "volume")
        if _number_ok(flow):
            out.append(self._measurement(r, info, loc, t, "flow", "waterFlow", flow, "L/min"))
        if _number_ok(volume):
            out.append(self._measurement(r, info, loc, t, "volume", "waterConsumption", volume, "L"))
        # the report's own fault flags count too: the node says so now, whatever EVENT was lost
        flagged = [{"code": f, "severity": "alarm", "zone": 0, "since": r.rx_time} for f in _NODE_FAULTS if f in faults]
        known = {_code_name(a.get("code")) for a in view.open or []}
        state = _worst((view.open or []) + [a for a in flagged if a["code"] not in known])
        out.append(self._device(r, info, "irrigation", loc, t, state))
        return [(e, UPDATE) for e in out]


def _state(open_alarms: list[dict[str, Any]] | None) -> str | None:
    return None if open_alarms is None else _worst(open_alarms)


def _lamp_status(open_alarms: list[dict[str, Any]], flags: Sequence[str]) -> str:
    broken = any(f in LAMP_ALARMS for f in flags) or any(_code_name(a.get("code")) in LAMP_ALARMS for a in open_alarms)
    return "defectiveLamp" if broken else "ok"


def _zone_state(open_alarms: list[dict[str, Any]], zone: int, faults: Sequence[str]) -> str:
    """ "ok", or the worst open irrigation alarm of the zone or of the whole node."""
    mine = [
        a for a in open_alarms if _code_name(a.get("code")) in IRRIGATION_ALARMS and (a.get("zone") or 0) in (0, zone)
    ]
    known = {_code_name(a.get("code")) for a in mine}
    mine += [{"code": f, "severity": "alarm", "zone": 0} for f in _NODE_FAULTS if f in faults and f not in known]
    return _worst(mine)


def _kind_of(r: Record) -> str | None:
    kind = _value(r, "kind") if r.kind == "hello" else None
    return kind if kind in _CONTROLLED else None


@dataclass(slots=True)
class NgsiRequest:
    """One upsert request: entities with distinct ids, one upsert option, and which records each came from."""

    entities: list[Entity]
    sources: dict[str, list[int]]  # entity id -> indexes of the records that produced it
    options: str = UPDATE

    def body(self) -> bytes:
        return json.dumps(self.entities, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def ngsi_requests(records: Sequence[Record], mapper: NgsiMapper) -> tuple[list[NgsiRequest], list[int]]:
    """Split records into upsert requests in which no entity id appears twice.

    Two reports of one lamp update the same entity: a broker may refuse or
    merge duplicates inside one batch operation, and a temporal store would
    lose the first value. So an entity goes into the first request, with its
    upsert option, after the last one holding the same entity; requests are
    sent in order, so each entity's updates reach the broker in counter
    order. Returns the requests and the indexes of records that map to no
    entity (delivered trivially).
    """
    requests: list[NgsiRequest] = []
    last: dict[str, int] = {}
    empty: list[int] = []
    for i, r in enumerate(records):
        ups = mapper.upserts(r)
        if not ups:
            empty.append(i)
            continue
        for e, option in ups:
            eid = e["id"]
            k = last.get(eid, -1) + 1
            while k < len(requests) and (requests[k].options != option or eid in requests[k].sources):
                k += 1
            if k == len(requests):
                requests.append(NgsiRequest([], {}, option))
            req = requests[k]
            last[eid] = k
            req.entities.append(e)
            req.sources.setdefault(eid, []).append(i)
    return requests, empty


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """The key-values (simplified) form of a normalised entity: what the Smart Data Models schemas validate."""
    out: dict[str, Any] = {}
    for k, v in entity.items():
        if k in ("id", "type") or not isinstance(v, dict) or "type" not in v:
            if k != "@context":
                out[k] = v
            continue
        if v["type"] == "Relationship":
            out[k] = v["object"]
            continue
        value = v.get("value")
        if isinstance(value, dict) and "@value" in value:  # a typed value (DateTime)
            value = value["@value"]
        out[k] = value
    return out
