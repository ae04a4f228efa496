"""The city platform's digital twin: residents' requests and the ledger as NGSI-LD entities (no I/O).

Served as open data by city/twin_web.py; documented in city/README.md ("Digital
twin"). Representation as the gateway's (gateway/ngsi_ld.py, ETSI GS CIM 009,
normalised): every attribute a Property, Relationship or GeoProperty, DateTime
values as JSON-LD typed values, `observedAt` on measured figures, UN/CEFACT
Rec. 20 unit codes, the Smart Data Models and NGSI-LD core @context.

Models (FIWARE Smart Data Models; tests/test_city_twin.py validates every
entity's key-values projection against the official schema):

- `service_requests` (dataModel.IssueTracking, the Open311 mapping): one per
  Open311 request. The type is the schema's enum; the id follows the model's
  NGSI-LD example (`urn:ngsi-ld:Open311ServiceRequest:...`).
- `StreetlightGroup` (dataModel.Streetlighting): one per street (the lamps'
  `site`), its location the MultiPoint of the street's lamps, carrying the
  day's ledger figures.
- `GreenspaceRecord` (dataModel.ParksAndGardens): one per park and day, the
  day's water figures and soil-stress hours.

Privacy by design, as the rest of the open data (city/README.md, "Privacy by
design"), because everything here is published without a login: never a
reporter's contact fields, account or device, never a token, never what a
resident typed (description, address, media URL, attributes: free text can
name people), never a reported position, and never a node's id or name.
A request's `location` is the position of the city's nearest matched device
(public on the map already), or none; its `status_notes` is the verdict in
fixed words; the `service_notice` is left out (it names nodes, and staff write
it freely). Builders read only the fields named below: nothing else of a
stored request can leak through them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from city import catalogue, matching
from city.ledger import Day, Settings
from gateway.formats import iso_time
from gateway.ngsi_ld import DEFAULT_CONTEXT, URN_PREFIX, date_time

Entity = dict[str, Any]

REQUEST_TYPE = "service_requests"  # the IssueTracking schema's enum (dataModel.IssueTracking/service_requests)
REQUEST_ID_PREFIX = URN_PREFIX + "Open311ServiceRequest:lumeau-"  # as the model's NGSI-LD example
GROUP_ID_PREFIX = URN_PREFIX + "StreetlightGroup:lumeau-street-"
RECORD_ID_PREFIX = URN_PREFIX + "GreenspaceRecord:lumeau-park-"
GREENSPACE_ID_PREFIX = URN_PREFIX + "Greenspace:lumeau-park-"

# UN/CEFACT Recommendation 20 codes of the ledger's units
UNIT_CODES = {"kWh": "KWH", "m3": "MTQ", "h": "HUR", "%": "P1", "kg": "KGM"}

# The verdict in fixed words: the stored status_notes name nodes, which the open data never does
VERDICT_NOTES = {
    matching.CONFIRMED: "Confirmed by the device: it reports a matching fault.",
    matching.DEVICE_NORMAL: "The device reports normal operation: a field check is needed.",
    matching.NO_DEVICE: "No monitored device nearby: a field check is needed.",
}

# What a request entity may be built from (a stored request's public columns, see request_entity)
REQUEST_FIELDS = (
    "id",
    "service_code",
    "source",
    "status",
    "verdict",
    "agency",
    "requested",
    "updated",
    "nodes",
    "reports",
)

# ledger row key -> (attribute, unit); StreetlightGroup and GreenspaceRecord carry those of their kind
LIGHTING_FIGURES = (
    ("lamps", "lampCount", None),
    ("energy_kwh", "energyConsumed", "kWh"),
    ("energy_baseline_kwh", "energyBaseline", "kWh"),
    ("energy_saved_kwh", "energySaved", "kWh"),
    ("energy_saved_pct", "energySavedPercent", "%"),
    ("lamp_availability_pct", "lampAvailability", "%"),
    ("dark_lamp_hours", "darkLampHours", "h"),
    ("reduced_light_lamp_hours", "reducedLightLampHours", "h"),
)
IRRIGATION_FIGURES = (
    ("irrigation_controllers", "controllerCount", None),
    ("water_m3", "waterConsumed", "m3"),
    ("water_baseline_m3", "waterBaseline", "m3"),
    ("water_saved_m3", "waterSaved", "m3"),
    ("water_saved_pct", "waterSavedPercent", "%"),
    ("soil_stress_zone_hours", "soilStressZoneHours", "h"),
)
COMMON_FIGURES = (
    ("eur_saved", "eurSaved", None),  # euros: Rec. 20 has no currency code; the name says it
    ("kgco2_avoided", "co2Avoided", "kg"),
    ("alarms_repaired", "alarmsRepaired", None),
    ("repair_hours_median", "repairHoursMedian", "h"),
    ("repair_hours_max", "repairHoursMax", "h"),
    ("alarms_open_at_end", "alarmsOpenAtEnd", None),
    ("coverage_pct", "coveragePercent", "%"),
)


def slug(name: str) -> str:
    """A name as an id part: ASCII letters, digits and '-', and a short hash of the exact name,
    so that "Rue de l'Église" and "Rue de l Eglise" stay two entities."""
    t = unicodedata.normalize("NFKD", name)
    t = "".join(ch for ch in t if not unicodedata.combining(ch)).lower()
    base = re.sub(r"[^a-z0-9]+", "-", t).strip("-")[:60] or "x"
    return f"{base}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _prop(value: Any, observed: str | None = None, unit: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "Property", "value": value}
    if observed:
        p["observedAt"] = observed
    if unit:
        p["unitCode"] = UNIT_CODES[unit]
    return p


def _when(t: str) -> dict[str, Any]:
    return {"type": "Property", "value": date_time(t)}


def _point(lat: float, lon: float) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def _multipoint(points: Sequence[tuple[float, float]]) -> dict[str, Any]:
    coords = sorted({(lon, lat) for lat, lon in points})
    return {"type": "GeoProperty", "value": {"type": "MultiPoint", "coordinates": [list(c) for c in coords]}}


def request_entity(
    r: Mapping[str, Any], nodes: Mapping[str, matching.NodeInfo], jurisdiction: str, publisher: str
) -> Entity:
    """One stored request (requests_db.query's dict) as a `service_requests` entity. Reads only
    REQUEST_FIELDS; `nodes` by id, for the position and site of the nearest matched device."""
    svc = catalogue.BY_CODE.get(r["service_code"])
    rid = str(r["id"])
    e: Entity = {
        "id": REQUEST_ID_PREFIX + rid,
        "type": REQUEST_TYPE,
        "service_request_id": _prop(rid),
        "jurisdiction_id": _prop(jurisdiction),
        "service_code": _prop(r["service_code"]),
        "service_name": _prop(svc.name if svc else r["service_code"]),
        "status": _prop(r["status"]),
        "status_notes": _prop(VERDICT_NOTES.get(r["verdict"], VERDICT_NOTES[matching.NO_DEVICE])),
        "agency_responsible": _prop(r["agency"]),
        # whole seconds, as Open311 gives them: the same instant in both
        "requested_datetime": _when(iso_time(int(r["requested"]))),
        "updated_datetime": _when(iso_time(int(r["updated"]))),
        "dataProvider": _prop(publisher),
        "lumeau_verdict": _prop(r["verdict"]),
        "lumeau_reports": _prop(int(r["reports"])),
        "lumeau_source": _prop(r["source"]),
    }
    matched = [nodes[i] for i in json.loads(r["nodes"] or "[]") if i in nodes]
    placed = next((n for n in matched if n.lat is not None and n.lon is not None), None)
    if placed is not None and placed.lat is not None and placed.lon is not None:
        e["location"] = _point(placed.lat, placed.lon)
    site = next((n.site for n in matched if n.site), "")
    if site:
        e["areaServed"] = _prop(site)
    e["@context"] = list(DEFAULT_CONTEXT)
    return e


def request_entities(
    rows: Iterable[Mapping[str, Any]], nodes: Iterable[matching.NodeInfo], jurisdiction: str, publisher: str
) -> list[Entity]:
    by_id = {n.id: n for n in nodes}
    return [request_entity(r, by_id, jurisdiction, publisher) for r in rows]


def _figures(e: Entity, row: Mapping[str, Any], table: Sequence[tuple[str, str, str | None]], t: str) -> None:
    for key, attr, unit in table:
        v = row.get(key)
        if v is not None:  # NGSI-LD has no null: a figure the day cannot give is left out
            e[attr] = _prop(v, t, unit)


def ledger_entities(day: Day, nodes: Iterable[matching.NodeInfo], s: Settings) -> list[Entity]:
    """The day's ledger rows of streets (StreetlightGroup) and parks (GreenspaceRecord).

    A street or park with no positioned node has no location: a StreetlightGroup needs one, so
    that street is left out (its figures stay in the CSV/JSON files and the city's totals)."""
    places: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for n in nodes:
        if n.lat is not None and n.lon is not None and n.kind in (catalogue.LIGHTING, catalogue.IRRIGATION):
            level = "street" if n.kind == catalogue.LIGHTING else "park"
            places.setdefault((level, n.site or "(no site)"), []).append((n.lat, n.lon))
    observed = iso_time(day.end)
    start, end = _when(iso_time(day.start)), _when(observed)
    out: list[Entity] = []
    for row in day.rows:
        level, name = row["level"], row["name"]
        points = places.get((level, name))
        if level not in ("street", "park") or not points:
            continue
        e: Entity
        if level == "street":
            e = {"id": GROUP_ID_PREFIX + slug(name), "type": "StreetlightGroup"}
            _figures(e, row, LIGHTING_FIGURES, observed)
        else:
            e = {"id": f"{RECORD_ID_PREFIX}{slug(name)}-{day.date}", "type": "GreenspaceRecord"}
            e["dateObserved"] = _when(observed)
            e["refGreenspace"] = {"type": "Relationship", "object": GREENSPACE_ID_PREFIX + slug(name)}
            _figures(e, row, IRRIGATION_FIGURES, observed)
        _figures(e, row, COMMON_FIGURES, observed)
        e["name"] = _prop(name)
        e["location"] = _multipoint(points)
        e["dateObservedFrom"], e["dateObservedTo"] = start, end
        e["dataProvider"] = _prop(s.publisher)
        e["@context"] = list(DEFAULT_CONTEXT)
        out.append(e)
    return out
