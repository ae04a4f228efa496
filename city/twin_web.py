"""The digital twin's open-data routes (entities built by city/twin.py), public like the rest of /open-data/.

  GET /open-data/twin/service-requests.jsonld[?status=open|closed]
        the newest MAX_REQUESTS Open311 requests as `service_requests` entities
  GET /open-data/twin/ledger/YYYY-MM-DD.jsonld
        that local day's StreetlightGroup (per street) and GreenspaceRecord (per park) entities

Both answer a JSON array of NGSI-LD entities, normalised, each with its
@context (`application/ld+json`, as a broker's GET /ngsi-ld/v1/entities),
with the licence in a `Link` header as the CSV files have it. Bad input is
400 `{"error", "detail"}` as in city/open_data.py.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from city import requests_db, twin
from city.db import SinkDB
from city.open_data import OPEN_DATA_PREFIX, OpenData

TWIN_PREFIX = OPEN_DATA_PREFIX + "/twin"
MAX_REQUESTS = 1000  # as GET requests: the newest first
LD_JSON = "application/ld+json"


def _bad(detail: str) -> web.Response:
    return web.json_response({"error": "bad request", "detail": detail}, status=400)


class TwinRoutes:
    """The twin's routes over the sink's database and its ledger (OpenData, for the day cache)."""

    def __init__(self, db: SinkDB, open_data: OpenData, jurisdiction_id: str) -> None:
        self.db = db
        self.open_data = open_data
        self.jurisdiction_id = jurisdiction_id

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{TWIN_PREFIX}/service-requests.jsonld", self.get_requests)
        app.router.add_get(TWIN_PREFIX + "/ledger/{day}", self.get_ledger)

    def _answer(self, entities: list[dict[str, Any]]) -> web.Response:
        resp = web.Response(body=orjson.dumps(entities), content_type=LD_JSON)
        resp.headers["Link"] = f'<{self.open_data.settings.licence_url}>; rel="license"'
        return resp

    async def get_requests(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - {"status"})
        if unknown:
            return _bad(f"unknown parameter {unknown[0][:40]!r} (only: status)")
        statuses = q.getall("status", [])
        if len(statuses) > 1:
            return _bad("status given twice")
        if statuses and statuses[0] not in ("open", "closed"):
            return _bad(f"status {statuses[0][:20]!r}: use open or closed")

        def read(c: Any) -> tuple[list[dict[str, Any]], list[Any]]:
            return requests_db.query(c, statuses=statuses, limit=MAX_REQUESTS), requests_db.load_nodes(c)

        rows, nodes = await self.db.run(read)
        publisher = self.open_data.settings.publisher
        return self._answer(twin.request_entities(rows, nodes, self.jurisdiction_id, publisher))

    async def get_ledger(self, request: web.Request) -> web.Response:
        if request.query:
            return _bad("these files take no parameters")
        stem, _, ext = request.match_info["day"].rpartition(".")
        if ext != "jsonld":
            return web.json_response({"error": "not found", "detail": "files are YYYY-MM-DD.jsonld"}, status=404)
        try:
            d = self.open_data.parse_date(stem)
        except ValueError as e:
            return _bad(str(e))
        day = await self.open_data.day(d)
        nodes = await self.db.run(requests_db.load_nodes)
        return self._answer(twin.ledger_entities(day, nodes, self.open_data.settings))
