"""The ledger and open data on `lumeau sink`: public endpoints, no login, aggregates only.

  GET /ledger/daily.json?date=YYYY-MM-DD   the ledger of one local day (default: yesterday), with
                                           `method` (how every figure is computed) and `licence`
  GET /ledger/method.txt                   the method alone
  GET /open-data/catalog.json              the datasets, their stable URLs, licence, data dictionary
  GET /open-data/dictionary.json           every column: meaning, unit, type
  GET /open-data/ledger/YYYY-MM-DD.csv     one row per city / district / street / park
  GET /open-data/ledger/YYYY-MM-DD.json    the same as /ledger/daily.json
  GET /open-data/presence/YYYY-MM-DD.csv   presence counts per street and local hour; a count below
  GET /open-data/presence/YYYY-MM-DD.json  the minimum is withheld (empty / null)

A date must be a real calendar date from 2000-01-01 to tomorrow (local
time); anything else is 400 with a JSON `error`. A day is computed from the
stored records when asked (city/ledger.py; inputs read by
city/ledger_db.py) and kept in a small cache until any input changes.

Privacy by design: these outputs carry only aggregates over streets, parks
and districts. No reporter's contact or account, no description text of a
resident's report (free text can name people), no node id, no request
position; residents' reports only as counts and durations. Presence is
published per street and hour only, withheld below `presence_min_count`.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections import OrderedDict
from dataclasses import fields, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from aiohttp import web

from city import ledger_db
from city.db import SinkDB
from city.ledger import METHOD, ROW_FIELDS, Day, Settings, compute_day, day_bounds

LEDGER_PREFIX = "/ledger"
OPEN_DATA_PREFIX = "/open-data"
PUBLIC_PREFIXES = (LEDGER_PREFIX + "/", OPEN_DATA_PREFIX + "/")
FIRST_DAY = date(2000, 1, 1)
CACHE_DAYS = 64
CATALOG_DAYS = 366  # the catalogue lists at most this many days back
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

DICTIONARY: dict[str, tuple[str, str, str]] = {  # column: (type, unit, meaning)
    "date": ("date", "", "local calendar day (ISO 8601) in the platform's time zone"),
    "level": ("text", "", "city, district, street or park"),
    "name": ("text", "", "the district, street or park (empty for the city)"),
    "lamps": ("integer", "", "street lights counted in the row"),
    "irrigation_controllers": ("integer", "", "irrigation controllers counted in the row"),
    "energy_kwh": ("number", "kWh", "electricity the lamps used, from their own energy counters"),
    "energy_baseline_kwh": ("number", "kWh", "rated power from dusk to dawn over the same observed time"),
    "energy_saved_kwh": ("number", "kWh", "baseline minus used (negative: more used than the baseline)"),
    "energy_saved_pct": ("number", "%", "energy saved against the baseline"),
    "lamps_without_baseline": ("integer", "", "lamps with no declared rated power or no position"),
    "water_m3": ("number", "m3", "water through the controllers' meters, leaks included"),
    "water_baseline_m3": ("number", "m3", "the declared fixed schedule over the same observed time"),
    "water_saved_m3": ("number", "m3", "baseline minus used (negative: more used than the baseline)"),
    "water_saved_pct": ("number", "%", "water saved against the baseline"),
    "controllers_without_baseline": ("integer", "", "irrigation controllers with no declared schedule"),
    "eur_saved": ("number", "EUR", "saved kWh and m3 at the configured tariffs"),
    "kgco2_avoided": ("number", "kgCO2e", "saved kWh and m3 at the configured emission factors"),
    "lamp_availability_pct": ("number", "%", "night lamp-hours not under a lamp failure alarm"),
    "dark_lamp_hours": ("number", "h", "night lamp-hours under a lamp failure alarm (light lost)"),
    "reduced_light_lamp_hours": ("number", "h", "night lamp-hours dimmed below 100 %"),
    "soil_stress_zone_hours": ("number", "h", "zone-hours with soil moisture below the declared stress threshold"),
    "alarms_repaired": ("integer", "", "device alarms cleared this day"),
    "repair_hours_median": ("number", "h", "median time from an alarm to its clear, alarms cleared this day"),
    "repair_hours_max": ("number", "h", "longest such time"),
    "alarms_open_at_end": ("integer", "", "device alarms still open at midnight"),
    "coverage_pct": ("number", "%", "share of the node-hours covered by consecutive readings"),
    "counter_resets": ("integer", "", "intervals skipped because a node's counter went down"),
    "street": ("text", "", "presence: the street (the lamps' site)"),
    "hour": ("integer", "h", "presence: local hour of the day, 0-23"),
    "count": ("integer", "", "presence: detections reported by the street's lamps in that hour; empty: withheld"),
}
REPORT_FIELDS: dict[str, tuple[str, str, str]] = {  # the JSON's `reports` object
    "resident_requests_filed": ("integer", "", "Open311 requests filed by residents this day"),
    "by_service": ("object", "", "of those, how many per service code"),
    "by_verdict": ("object", "", "of those, how many per verdict of the devices (confirmed, device_normal, no_device)"),
    "device_requests_opened": ("integer", "", "requests opened by node alarms this day"),
    "resident_requests_resolved": ("integer", "", "residents' requests closed this day"),
    "resolve_hours_median": ("number", "h", "median time from filing to closing, requests closed this day"),
    "resolve_hours_max": ("number", "h", "longest such time"),
    "resident_requests_open_at_end": ("integer", "", "residents' requests still open at midnight"),
}
LEDGER_COLUMNS = ("date", *ROW_FIELDS)
PRESENCE_COLUMNS = ("date", "street", "hour", "count")


def load_settings(path: str | Path) -> Settings:
    """A `[ledger]` table of a TOML file; ValueError names the file, key and why."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not TOML: {e}") from None
    table = doc.get("ledger", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [ledger] must be a table")
    return settings_from(table, str(path))


def settings_from(table: dict[str, Any], where: str = "ledger") -> Settings:
    known = {f.name: f for f in fields(Settings)}
    s = Settings()
    for k, v in table.items():
        if k not in known:
            raise ValueError(f"{where}: [ledger] {k}: unknown key (known: {', '.join(sorted(known))})")
        cur = getattr(s, k)
        if k in ("timezone", "licence", "licence_url", "publisher"):
            if not isinstance(v, str) or not v or len(v) > 200:
                raise ValueError(f"{where}: [ledger] {k}: a text of 1 to 200 characters")
        elif k == "presence_min_count":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1_000_000:
                raise ValueError(f"{where}: [ledger] {k}: an integer from 1")
        elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e6:
            raise ValueError(f"{where}: [ledger] {k}: a number from 0 (was {cur!r} by default)")
        new: dict[str, Any] = {k: float(v) if isinstance(v, int) and k != "presence_min_count" else v}
        s = replace(s, **new)
    try:
        ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{where}: [ledger] timezone: {s.timezone!r} is not an IANA time zone") from None
    return s


def _bad(msg: str) -> web.Response:
    return web.json_response({"error": "bad request", "detail": msg}, status=400)


class OpenData:
    """The ledger and open-data routes over the sink's database."""

    def __init__(self, db: SinkDB, settings: Settings | None = None) -> None:
        self.db = db
        self.settings = settings or Settings()
        self._cache: OrderedDict[tuple[str, Any], Day] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{LEDGER_PREFIX}/daily.json", self.get_daily)
        r.add_get(f"{LEDGER_PREFIX}/method.txt", self.get_method)
        r.add_get(f"{OPEN_DATA_PREFIX}/catalog.json", self.get_catalog)
        r.add_get(f"{OPEN_DATA_PREFIX}/dictionary.json", self.get_dictionary)
        r.add_get(OPEN_DATA_PREFIX + "/{set:ledger|presence}/{day}", self.get_file)

    def _today(self) -> date:
        return datetime.now(self.settings.tz).date()

    def parse_date(self, text: str) -> date:
        """A calendar date from FIRST_DAY to tomorrow; ValueError says why not."""
        if not _DATE.fullmatch(text):
            raise ValueError(f"date {text[:40]!r}: give YYYY-MM-DD")
        try:
            d = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"date {text!r}: not a calendar date") from None
        last = self._today() + timedelta(days=1)
        if not FIRST_DAY <= d <= last:
            raise ValueError(f"date {text}: from {FIRST_DAY} to {last}")
        return d

    async def day(self, d: date) -> Day:
        s = self.settings
        d0, d1 = day_bounds(d, s.tz)

        def read_and_compute(c: Any) -> tuple[Any, Day | None]:
            # on the database's thread: the event loop keeps serving while a day is computed
            # (a district's day is a few tenths of a second), and days are computed one at a time
            key = (d.isoformat(), ledger_db.version(c))
            if key in self._cache:
                return key, None
            nodes, facts, readings, reqs = ledger_db.day_inputs(c, d0, d1)
            return key, compute_day(d, nodes, facts, readings, reqs, s)

        key, out = await self.db.run(read_and_compute)
        if out is None:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            return await self.day(d)  # evicted meanwhile: compute it again
        self._cache[key] = out
        while len(self._cache) > CACHE_DAYS:
            self._cache.popitem(last=False)
        return out

    def _doc(self, day: Day) -> dict[str, Any]:
        s = self.settings
        return {
            **day.to_dict(s),
            "licence": {"name": s.licence, "url": s.licence_url},
            "publisher": s.publisher,
            "dictionary": f"{OPEN_DATA_PREFIX}/dictionary.json",
            "method": METHOD,
        }

    async def get_daily(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - {"date"})
        if unknown:
            return _bad(f"unknown parameter {unknown[0][:40]!r} (only: date)")
        if len(q.getall("date", [])) > 1:
            return _bad("date given twice")
        try:
            d = self.parse_date(q["date"]) if "date" in q else self._today() - timedelta(days=1)
        except ValueError as e:
            return _bad(str(e))
        return _json(self._doc(await self.day(d)))

    async def get_method(self, request: web.Request) -> web.Response:
        return web.Response(text=METHOD, content_type="text/plain", charset="utf-8")

    async def get_dictionary(self, request: web.Request) -> web.Response:
        return _json(self.dictionary())

    def dictionary(self) -> dict[str, Any]:
        def cols(names: tuple[str, ...]) -> list[dict[str, str]]:
            return [
                {"name": n, "type": DICTIONARY[n][0], "unit": DICTIONARY[n][1], "description": DICTIONARY[n][2]}
                for n in names
            ]

        reports = [{"name": k, "type": t, "unit": u, "description": d} for k, (t, u, d) in REPORT_FIELDS.items()]
        return {"ledger": cols(LEDGER_COLUMNS), "presence": cols(PRESENCE_COLUMNS), "reports": reports}

    async def get_catalog(self, request: web.Request) -> web.Response:
        s = self.settings
        first = await self.db.run(ledger_db.first_record_time)
        last = self._today() - timedelta(days=1)
        days: list[str] = []
        if first is not None:
            d = max(datetime.fromtimestamp(first, s.tz).date(), last - timedelta(days=CATALOG_DAYS - 1))
            while d <= last:
                days.append(d.isoformat())
                d += timedelta(days=1)
        licence = {"name": s.licence, "url": s.licence_url}
        return _json(
            {
                "title": "Lumeau public-value ledger and presence counts",
                "publisher": s.publisher,
                "licence": licence,
                "timezone": s.timezone,
                "dictionary": f"{OPEN_DATA_PREFIX}/dictionary.json",
                "method": f"{LEDGER_PREFIX}/method.txt",
                "days": days,
                "datasets": [
                    {
                        "id": "ledger",
                        "title": "Daily public-value ledger: energy, water, money, CO2, service quality",
                        "licence": licence,
                        "distributions": [
                            {"format": "CSV", "url": f"{OPEN_DATA_PREFIX}/ledger/{{date}}.csv"},
                            {"format": "JSON", "url": f"{OPEN_DATA_PREFIX}/ledger/{{date}}.json"},
                        ],
                    },
                    {
                        "id": "twin-ledger",
                        "title": "The day's ledger as NGSI-LD entities: StreetlightGroup per street, "
                        "GreenspaceRecord per park (FIWARE Smart Data Models)",
                        "licence": licence,
                        "distributions": [
                            {"format": "NGSI-LD", "url": f"{OPEN_DATA_PREFIX}/twin/ledger/{{date}}.jsonld"}
                        ],
                    },
                    {
                        "id": "twin-service-requests",
                        "title": "Residents' and devices' service requests as NGSI-LD entities "
                        "(Smart Data Models IssueTracking, the Open311 mapping; no personal data)",
                        "licence": licence,
                        "distributions": [
                            {"format": "NGSI-LD", "url": f"{OPEN_DATA_PREFIX}/twin/service-requests.jsonld"}
                        ],
                    },
                    {
                        "id": "presence",
                        "title": f"Presence counts per street and hour (withheld below {s.presence_min_count})",
                        "licence": licence,
                        "distributions": [
                            {"format": "CSV", "url": f"{OPEN_DATA_PREFIX}/presence/{{date}}.csv"},
                            {"format": "JSON", "url": f"{OPEN_DATA_PREFIX}/presence/{{date}}.json"},
                        ],
                    },
                ],
            }
        )

    async def get_file(self, request: web.Request) -> web.Response:
        if request.query:
            return _bad("these files take no parameters")
        name = request.match_info["day"]
        stem, _, ext = name.rpartition(".")
        if ext not in ("csv", "json"):
            return web.json_response({"error": "not found", "detail": "files are YYYY-MM-DD.csv or .json"}, status=404)
        try:
            d = self.parse_date(stem)
        except ValueError as e:
            return _bad(str(e))
        day = await self.day(d)
        s = self.settings
        if request.match_info["set"] == "ledger":
            if ext == "json":
                return _json(self._doc(day))
            rows = [{"date": day.date, **r} for r in day.rows]
            return _csv(LEDGER_COLUMNS, rows, f"ledger-{day.date}.csv", s)
        pres = [{"date": day.date, **p} for p in day.presence]
        if ext == "json":
            return _json(
                {
                    "date": day.date,
                    "timezone": s.timezone,
                    "min_count": s.presence_min_count,
                    "licence": {"name": s.licence, "url": s.licence_url},
                    "dictionary": f"{OPEN_DATA_PREFIX}/dictionary.json",
                    "by_street_hour": day.presence,
                }
            )
        return _csv(PRESENCE_COLUMNS, pres, f"presence-{day.date}.csv", s)


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _csv(columns: tuple[str, ...], rows: list[dict[str, Any]], filename: str, s: Settings) -> web.Response:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # RFC 4180
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    resp = web.Response(text=buf.getvalue(), content_type="text/csv", charset="utf-8")
    resp.headers["Content-Disposition"] = f'inline; filename="{filename}"'
    resp.headers["Link"] = f'<{s.licence_url}>; rel="license"'
    return resp
