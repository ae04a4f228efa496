"""Checking NGSI-LD entities, and a small NGSI-LD broker for end-to-end tests (tests/test_ngsi_ld*.py).

The Smart Data Models JSON Schemas validate the key-values representation of
an entity; the gateway sends the normalised one. So each entity is checked
twice: its NGSI-LD shape (`check_shape`: every attribute a Property,
Relationship or GeoProperty with a value / object, DateTime values typed,
observedAt a UTC timestamp, unitCode from the table, a @context), and its
key-values projection against its model's schema (`validators`), read
offline from tests/vectors/smart-data-models with the three remote $refs
resolved to the local copies.

`Broker` is an NGSI-LD context broker reduced to what the gateway uses:
`POST /ngsi-ld/v1/entityOperations/upsert?options=update|replace` (update:
the attributes sent replace those of the same name, the others stay;
replace: the entity sent replaces the stored one; a new id is created) and
`GET /ngsi-ld/v1/entities/{id}`. It checks every entity it receives with the
two checks above and refuses a request body with a Content-Encoding, as a
broker that does not decode one does (415).
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from typing import Any

import jsonschema
from aiohttp import web
from conftest import vectors_dir
from referencing import Registry, Resource

from gateway import ngsi_ld

REMOTE = {
    "https://smart-data-models.github.io/data-models/common-schema.json": "common-schema.json",
    "https://smart-data-models.github.io/dataModel.Device/device-schema.json": "device-schema.json",
    "https://smart-data-models.github.io/dataModel.Alert/alert-schema.json": "alert-schema.json",
}
MODELS = ("Streetlight", "GreenspaceRecord", "Device", "DeviceMeasurement", "Alert")
DATE_TIME_ATTRS = ("dateLastValueReported", "observationDateTime", "dateObserved", "dateIssued", "validFrom", "validTo")
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"


# NGSI-LD clause 4.6.3: every component, UTC ("Z"), a fraction of at most six digits after a point
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")


def is_timestamp(s: Any) -> bool:
    """A DateTime string as NGSI-LD clause 4.6.3 defines it (and a real date)."""
    if not isinstance(s, str) or not _DATE_TIME.match(s):
        return False
    try:
        datetime.fromisoformat(s)
    except ValueError:
        return False
    return True


@functools.cache
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    return {model: schema_validator(model) for model in MODELS}


@functools.cache
def schema_validator(model: str) -> jsonschema.Draft202012Validator:
    """The validator of one vendored model (its folder under tests/vectors/smart-data-models), offline."""
    d = vectors_dir() / "smart-data-models"
    registry = Registry().with_resources(
        [(uri, Resource.from_contents(json.loads((d / name).read_text()))) for uri, name in REMOTE.items()]
    )
    # jsonschema only checks "date-time" with an optional package installed: check it here instead.
    checker = jsonschema.FormatChecker()
    checker.checks("date-time", raises=ValueError)(lambda s: not isinstance(s, str) or _strict_timestamp(s))
    schema = json.loads((d / model / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=checker)


def _strict_timestamp(s: str) -> bool:
    datetime.fromisoformat(s)
    return "T" in s


# NGSI-LD clause 4.6.2: an attribute name is a letter, then letters, digits and "_"
_NAME = re.compile(r"[^\W\d_]\w*\Z")


def _no_null(v: Any, where: str) -> None:
    """NGSI-LD admits no JSON null in a value (5.2.1: expansion would drop it)."""
    assert v is not None, where
    if isinstance(v, dict):
        for k, x in v.items():
            _no_null(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _no_null(x, f"{where}[{i}]")


def check_shape(e: dict[str, Any]) -> None:
    """The NGSI-LD normalised shape of one entity as the gateway sends it (AssertionError if not)."""
    assert e["id"].startswith("urn:ngsi-ld:" + e["type"] + ":lumeau-"), e["id"]
    assert e["@context"] == list(ngsi_ld.DEFAULT_CONTEXT)
    _no_null(e, e["id"])
    for k, v in e.items():
        if k in ("id", "type", "@context"):
            continue
        assert _NAME.match(k), k
        assert v["type"] in ("Property", "Relationship", "GeoProperty"), k
        if v["type"] == "Relationship":
            assert isinstance(v["object"], str) and v["object"].startswith("urn:ngsi-ld:"), k
        else:
            assert "value" in v and v["value"] is not None, k
        if k in DATE_TIME_ATTRS:  # NGSI-LD: a DateTime value is a JSON-LD typed value
            assert set(v["value"]) == {"@type", "@value"} and v["value"]["@type"] == "DateTime", k
            assert is_timestamp(v["value"]["@value"]), k
        if "observedAt" in v:  # a plain string (a temporal property of the attribute)
            assert is_timestamp(v["observedAt"]), k
        if "unitCode" in v:
            assert v["unitCode"] in ngsi_ld.UNIT_CODES.values(), k


def check(e: dict[str, Any], partial: bool = False) -> None:
    """Both checks: NGSI-LD shape, and the key-values projection against the model's schema.

    `partial`: an update merged into an entity the broker may hold already: the attributes it
    carries must be valid, the model's required ones may be missing."""
    check_shape(e)
    v = validators()[e["type"]]
    if not partial:
        v.validate(ngsi_ld.key_values(e))
        return
    for err in v.iter_errors(ngsi_ld.key_values(e)):
        if err.validator != "required":
            raise err


class Broker:
    """See the module docstring. `entities` is its state; `upserts` what it received, in order."""

    def __init__(self, accept_gzip: bool = False) -> None:
        self.accept_gzip = accept_gzip
        self.entities: dict[str, dict[str, Any]] = {}
        self.upserts: list[tuple[str, list[dict[str, Any]]]] = []  # (options, entities) per request
        self.problems: list[str] = []  # entities that failed a check (answered 400)
        self.refused_encoding = 0
        self.encodings: list[str | None] = []  # each upsert's Content-Encoding
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post(UPSERT, self._upsert)
        app.router.add_get("/ngsi-ld/v1/entities/{id}", self._get)
        self._runner = web.AppRunner(app, auto_decompress=accept_gzip)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{UPSERT}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    def of_type(self, etype: str) -> dict[str, dict[str, Any]]:
        return {i: e for i, e in self.entities.items() if e["type"] == etype}

    def value(self, eid: str, attr: str) -> Any:
        """An attribute's value in the key-values sense (a typed value's @value); None if absent."""
        return ngsi_ld.key_values(self.entities[eid]).get(attr) if eid in self.entities else None

    async def _upsert(self, request: web.Request) -> web.Response:
        self.encodings.append(request.headers.get("Content-Encoding"))
        if request.headers.get("Content-Encoding") and not self.accept_gzip:
            self.refused_encoding += 1
            return web.json_response({"title": "Content-Encoding not supported"}, status=415)
        if request.headers.get("Content-Type") != ngsi_ld.NGSI_CONTENT_TYPE:  # @context in the body: JSON-LD
            self.problems.append(f"Content-Type {request.headers.get('Content-Type')}")
            return web.json_response({"title": "Content-Type"}, status=415)
        options = request.query.get("options", "replace")
        if options not in ("update", "replace"):
            return web.json_response({"title": f"options={options}"}, status=400)
        body = json.loads(await request.read())
        ids = [e.get("id") for e in body]
        if len(ids) != len(set(ids)):
            self.problems.append(f"an entity twice in one request: {ids}")
            return web.json_response({"title": "BadRequestData"}, status=400)
        after = {}
        for e in body:
            old = self.entities.get(e["id"])
            merged = {**old, **e} if old is not None and options == "update" else dict(e)
            try:  # what it sends, and what the broker then holds
                check(e, partial=options == "update")
                check(merged, partial=old is None and options == "update")
            except (AssertionError, jsonschema.ValidationError, KeyError) as err:
                self.problems.append(f"{e.get('id')}: {err}")
                return web.json_response({"title": "BadRequestData", "detail": str(err)[:500]}, status=400)
            after[e["id"]] = merged
        self.upserts.append((options, body))
        created = [i for i in after if i not in self.entities]
        self.entities.update(after)
        return web.json_response(created, status=201) if created else web.Response(status=204)

    async def _get(self, request: web.Request) -> web.Response:
        e = self.entities.get(request.match_info["id"])
        return web.json_response(e) if e is not None else web.json_response({"title": "not found"}, status=404)
