"""Open311 GeoReport v2 on `lumeau sink`: residents report faults and follow them.

Served under PREFIX (`/open311/v2`), without the sink's bearer token (these
are public endpoints; POST needs an `api_key`). Each resource answers in
JSON or XML by its extension (`services.json`, `services.xml`; none: JSON):

  GET  services.{fmt}                 the catalogue (city/catalogue.py)
  GET  services/{code}.{fmt}          a service definition with its attributes
  POST requests.{fmt}                 a report (application/x-www-form-urlencoded): 201
                                      [{service_request_id, token, service_notice, account_id}]
  GET  requests.{fmt}                 service_request_id, service_code (comma lists; ids override
                                      the rest), start_date, end_date (at most 90 days apart; default
                                      the last 90 days), status (open, closed); newest first, 1000 at most
  GET  requests/{id}.{fmt}            one request (as a list of one, as the spec says)
  GET  tokens/{token}.{fmt}           the request a report's token belongs to

Every resource takes `jurisdiction_id` (optional; another one than the
sink's is 404). Errors are the spec's list, `[{"code": 400, "description":
"..."}]` (XML `<errors><error>`), with that HTTP status: 400 bad input (all
the problems found, not only the first), 403 a missing or wrong api_key,
404 an unknown service, request, token or jurisdiction, 413 a body over
`max_body`, 429 too many submissions from one address (`Retry-After`).

Reports are matched to nodes and judged by city/matching.py and stored by
city/requests_db.py. What is served of a request never includes its
reporters' contact details (kept while it is open, erased on close), only
their count (`lumeau_reports`); `lumeau_verdict` and `lumeau_nodes` are the
verdict and the matched nodes (extensions: clients ignore unknown fields).
XML output escapes markup in every text; JSON carries it as data.
"""

from __future__ import annotations

import hmac
import math
import sqlite3
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from city import catalogue, matching, requests_db
from city.db import SinkDB
from city.matching import Bounds

PREFIX = "/open311/v2"
DEFAULT_JURISDICTION = "lumeau"
MAX_BODY = 16 * 1024  # a report is a few hundred bytes; media go by URL
MAX_FIELDS = 64
MAX_RESULTS = 1000
MAX_SPAN = timedelta(days=90)
RATE_MAX_CLIENTS = 10_000  # addresses tracked by the rate limiter (the least recent forgotten past this)
TEXT_LIMITS = {
    "description": 4000,
    "address_string": 500,
    "address_id": 64,
    "media_url": 2000,
    "email": 254,
    "phone": 40,
    "first_name": 100,
    "last_name": 100,
    "device_id": 100,
    "account_id": 100,
}
_XML_ITEMS = {"services": "service", "service_requests": "request", "errors": "error"}
_XML_LISTS = {"attributes": "attribute", "values": "value", "endpoints": "endpoint", "formats": "format"}
STARTED = time.time()  # the discovery document's changeset: the catalogue is the code's


@dataclass
class Open311Config:
    jurisdiction_id: str = DEFAULT_JURISDICTION
    api_keys: frozenset[str] = frozenset()  # none: submissions refused (403)
    radius_m: float = matching.DEFAULT_RADIUS_M
    bounds: Bounds | None = None  # None: the known nodes' box widened by matching.BOUNDS_MARGIN_M
    rate_count: int = 10  # submissions per client address ...
    rate_window_s: float = 600.0  # ... per this many seconds (a token bucket: bursts up to rate_count)
    max_body: int = MAX_BODY

    def __repr__(self) -> str:  # never the keys
        return f"Open311Config({self.jurisdiction_id!r}, keys={len(self.api_keys)}, radius={self.radius_m:g} m)"


class RateLimiter:
    """A token bucket per client address: `count` submissions, refilled over `window` seconds."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.rate = count / window if window > 0 else math.inf
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """0 when allowed (one token taken), else the seconds until the next token."""
        tokens, last = self._b.pop(key, (float(self.count), now))
        tokens = min(float(self.count), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._b[key] = (tokens - 1, now)
            ok = 0.0
        else:
            self._b[key] = (tokens, now)
            ok = (1 - tokens) / self.rate
        while len(self._b) > RATE_MAX_CLIENTS:
            self._b.popitem(last=False)
        return ok


class BadInput(Exception):
    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


def _fmt(request: web.Request) -> str:
    return request.match_info.get("fmt", "json")


def _xml(root: str, data: Any) -> bytes:
    def put(parent: ET.Element, name: str, value: Any) -> None:
        el = ET.SubElement(parent, name)
        fill(el, name, value)

    def fill(el: ET.Element, name: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(el, k, v)
        elif isinstance(value, list):
            item = _XML_ITEMS.get(name) or _XML_LISTS.get(name, "item")
            for v in value:
                put(el, item, v)
        elif isinstance(value, bool):
            el.text = "true" if value else "false"
        elif value is not None:
            el.text = str(value)

    top = ET.Element(root)
    fill(top, root, data)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="utf-8", xml_declaration=False)


def respond(fmt: str, root: str, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if fmt == "xml":
        return web.Response(
            body=_xml(root, data), status=status, content_type="text/xml", charset="utf-8", headers=headers
        )
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", charset="utf-8", headers=headers
    )


def errors(fmt: str, status: int, descriptions: list[str], headers: dict[str, str] | None = None) -> web.Response:
    fmt = fmt if fmt == "xml" else "json"
    return respond(fmt, "errors", [{"code": status, "description": d} for d in descriptions], status, headers)


def _parse_time(text: str, name: str) -> float:
    try:
        d = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            400, [f"{name}: {text[:40]!r} is not an ISO 8601 date-time (e.g. 2026-12-01T00:00:00Z)"]
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)  # the spec asks for a zone; without one, UTC
    return d.timestamp()


def check_text(name: str, value: str, limit: int) -> str:
    """`value` stripped, if it is at most `limit` characters that XML 1.0 can carry (no control
    characters); ValueError names the field otherwise. Every text the Open311 output may show
    passes here first: a report's fields, node names and sites, staff notices."""
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    for ch in value:
        o = ord(ch)
        if (o < 0x20 and ch not in "\t\n\r") or 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF) or o == 0x7F:
            raise ValueError(f"{name} contains a control character (U+{o:04X})")
    return value.strip()


def _clean(name: str, value: str) -> str:
    return check_text(name, value, TEXT_LIMITS.get(name, 200))


class Open311:
    """The GeoReport v2 routes of a sink; `add_routes(app)`."""

    def __init__(self, db: SinkDB, config: Open311Config | None = None) -> None:
        self.db = db
        self.config = config or Open311Config()
        self.limiter = RateLimiter(self.config.rate_count, self.config.rate_window_s)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        for ext in ("", ".{fmt}"):
            r.add_get(f"{PREFIX}/discovery{ext}", self.get_discovery)
            r.add_get(f"{PREFIX}/services{ext}", self.get_services)
            r.add_get(f"{PREFIX}/services/{{code:[^/.]+}}{ext}", self.get_service)
            r.add_post(f"{PREFIX}/requests{ext}", self.post_request)
            r.add_get(f"{PREFIX}/requests{ext}", self.get_requests)
            r.add_get(f"{PREFIX}/requests/{{id:[^/.]+}}{ext}", self.get_request)
            r.add_get(f"{PREFIX}/tokens/{{token:[^/.]+}}{ext}", self.get_token)

    def _check(self, request: web.Request, params: Any = None) -> str | web.Response:
        """The format, or the error response for a bad format or another jurisdiction."""
        fmt = _fmt(request)
        if fmt not in ("json", "xml"):
            return errors("json", 404, [f"format {fmt[:20]!r} is not served: use .json or .xml"])
        q = request.query if params is None else params
        jid = q.get("jurisdiction_id")
        if jid and jid != self.config.jurisdiction_id:
            return errors(fmt, 404, [f"jurisdiction_id {jid[:64]!r} not found"])
        return fmt

    # -- discovery and services ----------------------------------------------

    async def get_discovery(self, request: web.Request) -> web.Response:
        """Service discovery (wiki.open311.org/Service_Discovery): where this endpoint is, in what formats."""
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        base = f"{request.scheme}://{request.host}{PREFIX}/"
        doc = {
            "changeset": requests_db.iso(STARTED),
            "contact": "the city's Lumeau operators",
            "key_service": "api_key values are issued by the city (lumeau sink --open311-keys)",
            "endpoints": [
                {
                    "specification": "http://wiki.open311.org/GeoReport_v2",
                    "url": base,
                    "changeset": requests_db.iso(STARTED),
                    "type": "production",
                    "formats": ["application/json", "text/xml"],
                }
            ],
        }
        return respond(fmt, "discovery", doc)

    async def get_services(self, request: web.Request) -> web.Response:
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        return respond(fmt, "services", [s.as_dict() for s in catalogue.SERVICES])

    async def get_service(self, request: web.Request) -> web.Response:
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        svc = catalogue.BY_CODE.get(request.match_info["code"])
        if svc is None:
            return errors(fmt, 404, [f"service_code {request.match_info['code'][:64]!r} not found"])
        doc = {"service_code": svc.code, "attributes": [a.as_dict() for a in svc.attributes]}
        return respond(fmt, "service_definition", doc)

    # -- requests ----------------------------------------------------------

    async def post_request(self, request: web.Request) -> web.Response:
        fmt = _fmt(request)
        efmt = fmt if fmt == "xml" else "json"
        wait = self.limiter.take(request.remote or "?", time.monotonic())
        if wait:
            return errors(
                efmt,
                429,
                ["too many submissions from this address: try again later"],
                {"Retry-After": str(math.ceil(wait))},
            )
        try:
            params = await self._form(request)
        except BadInput as e:
            return errors(efmt, e.status, e.errors)
        fmt_ok = self._check(request, params)
        if isinstance(fmt_ok, web.Response):
            return fmt_ok
        key = params.get("api_key", "")
        if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.config.api_keys):
            return errors(fmt_ok, 403, ["api_key missing or not valid"])
        box = self.config.bounds or await self.db.run(requests_db.city_bounds)
        try:
            rep = self._report(params, box)
        except BadInput as e:
            return errors(fmt_ok, e.status, e.errors)
        now = time.time()
        radius = self.config.radius_m

        def submit(c: sqlite3.Connection) -> requests_db.Submitted:
            c.execute("BEGIN IMMEDIATE")
            try:
                out = requests_db.submit(c, rep, radius, now)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return out

        s = await self.db.run(submit)
        notice = s.judgement.note()
        if s.duplicate:
            notice = f"Added to open request {s.request_id}, which tracks the same fault. {notice}"
        doc = [
            {
                "service_request_id": str(s.request_id),
                "token": s.token,
                "service_notice": notice,
                "account_id": rep.contact.get("account_id") or None,
            }
        ]
        return respond(fmt_ok, "service_requests", doc, 201)

    async def _form(self, request: web.Request) -> dict[str, str]:
        limit = self.config.max_body
        if request.content_length is not None and request.content_length > limit:
            raise BadInput(413, [f"the body is larger than {limit} bytes"])
        ctype = request.content_type
        if ctype not in ("application/x-www-form-urlencoded", "application/octet-stream", ""):
            raise BadInput(400, [f"the body must be application/x-www-form-urlencoded, not {ctype[:60]!r}"])
        buf = bytearray()
        try:
            while chunk := await request.content.read(65536):
                buf += chunk
                if len(buf) > limit:
                    raise BadInput(413, [f"the body is larger than {limit} bytes"])
        except BadInput:
            raise
        except Exception as e:  # a body that does not decompress, a broken chunked encoding
            raise BadInput(400, [f"unreadable body: {str(e)[:100]}"]) from None
        try:
            pairs = urllib.parse.parse_qsl(
                bytes(buf).decode("utf-8"),
                keep_blank_values=True,
                max_num_fields=MAX_FIELDS,
                encoding="utf-8",
                errors="strict",
            )
        except UnicodeDecodeError:
            raise BadInput(400, ["the body is not UTF-8 (after percent-decoding)"]) from None
        except ValueError as e:
            raise BadInput(400, [f"the body is not a form: {str(e)[:100]}"]) from None
        out: dict[str, str] = {}
        for k, v in pairs:
            if k in out:
                raise BadInput(400, [f"{k[:40]!r} is given more than once"])
            out[k] = v
        # query parameters (api_key, jurisdiction_id) count too, as some clients send them there
        for k, v in request.query.items():
            out.setdefault(k, v)
        return out

    def _report(self, p: dict[str, str], box: Bounds | None) -> requests_db.Report:
        errs: list[str] = []
        text: dict[str, str] = {}
        for name in TEXT_LIMITS:
            try:
                text[name] = _clean(name, p.get(name, ""))
            except ValueError as e:
                errs.append(str(e))
        code = p.get("service_code", "").strip()
        svc = catalogue.BY_CODE.get(code)
        if not code:
            errs.append("service_code is required")
        elif svc is None:
            errs.append(f"service_code {code[:64]!r} not found (GET services lists them)")
        elif svc.kind is None:
            errs.append(f"service_code {code!r} is opened by the nodes themselves, not by reports")
        lat = lon = None
        has_lat, has_lon = bool(p.get("lat", "").strip()), bool(p.get("long", "").strip())
        if has_lat != has_lon:
            errs.append("lat and long go together")
        elif has_lat:
            try:
                lat, lon = float(p["lat"]), float(p["long"])
                if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
                    raise ValueError
            except ValueError:
                errs.append("lat and long must be decimal degrees (WGS 84): -90..90 and -180..180")
                lat = lon = None
            if lat is not None and lon is not None:
                if box is not None and not box.contains(lat, lon):
                    errs.append(
                        f"the position {lat:.5f},{lon:.5f} is outside the city "
                        f"({box.south:.4f},{box.west:.4f} to {box.north:.4f},{box.east:.4f})"
                    )
        if not has_lat and not text.get("address_string") and not text.get("address_id"):
            errs.append("a location is required: lat and long, address_string or address_id")
        url = text.get("media_url", "")
        if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            errs.append("media_url must be an http or https URL")
        email = text.get("email", "")
        if email and ("@" not in email or any(ch.isspace() for ch in email)):
            errs.append("email is not an e-mail address")
        attrs: dict[str, str] = {}
        known = {a.code: a for a in svc.attributes} if svc else {}
        for k, v in p.items():
            if not k.startswith("attribute["):
                continue
            name = k[len("attribute[") :].removesuffix("]")
            a = known.get(name)
            if svc is not None and a is None:
                errs.append(f"attribute {name[:40]!r} is not an attribute of {svc.code}")
            elif a is not None and a.values and v not in {key for key, _ in a.values}:
                errs.append(f"attribute {name!r}: {v[:40]!r} is not one of {', '.join(key for key, _ in a.values)}")
            elif a is not None:
                attrs[name] = v
        for a in svc.attributes if svc else ():
            if a.required and a.code not in attrs:
                errs.append(f"attribute {a.code!r} is required")
        if errs:
            raise BadInput(400, errs)
        return requests_db.Report(
            service_code=code,
            lat=lat,
            lon=lon,
            address=text["address_string"],
            address_id=text["address_id"],
            description=text["description"],
            media_url=url,
            attributes=attrs,
            contact={f: text[f] for f in requests_db.CONTACT_FIELDS if text.get(f)},
        )

    async def get_requests(self, request: web.Request) -> web.Response:
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        q = request.query
        try:
            kw = self._filters(q)
        except BadInput as e:
            return errors(fmt, e.status, e.errors)
        rows = await self.db.run(lambda c: requests_db.query(c, limit=MAX_RESULTS, **kw))
        return respond(fmt, "service_requests", [_public(r) for r in rows])

    def _filters(self, q: Any) -> dict[str, Any]:
        errs: list[str] = []
        ids_text = q.get("service_request_id", "").strip()
        if ids_text:
            ids = []
            for x in ids_text.split(",")[:MAX_RESULTS]:
                if x.strip().isascii() and x.strip().isdigit() and len(x.strip()) < 19:
                    ids.append(int(x))
                else:
                    errs.append(f"service_request_id {x[:30]!r} is not a request id")
            if errs:
                raise BadInput(400, errs)
            return {"ids": ids}  # the spec: ids override every other filter
        kw: dict[str, Any] = {}
        codes = [x.strip() for x in q.get("service_code", "").split(",") if x.strip()]
        if codes:
            kw["codes"] = codes[:100]
        statuses = [x.strip() for x in q.get("status", "").split(",") if x.strip()]
        bad = [s for s in statuses if s not in ("open", "closed")]
        if bad:
            errs.append(f"status {bad[0][:20]!r}: use open, closed or both (comma-separated)")
        kw["statuses"] = statuses
        start = end = None
        try:
            if q.get("start_date"):
                start = _parse_time(q["start_date"], "start_date")
            if q.get("end_date"):
                end = _parse_time(q["end_date"], "end_date")
        except BadInput as e:
            errs.extend(e.errors)
        span = MAX_SPAN.total_seconds()
        if start is not None and end is not None and end - start > span:
            errs.append("start_date and end_date may not be more than 90 days apart")
        if start is not None and end is not None and end < start:
            errs.append("end_date is before start_date")
        if errs:
            raise BadInput(400, errs)
        if start is None and end is None:
            start = time.time() - span
        elif start is None and end is not None:
            start = end - span
        elif end is None and start is not None:
            end = start + span
        kw["start"], kw["end"] = start, end
        return kw

    async def get_request(self, request: web.Request) -> web.Response:
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        rid = request.match_info["id"]
        if not (rid.isascii() and rid.isdigit()) or len(rid) > 18:  # "¹".isdigit() too
            return errors(fmt, 404, [f"service_request_id {rid[:30]!r} not found"])
        rows = await self.db.run(lambda c: requests_db.query(c, ids=[int(rid)], limit=1))
        if not rows:
            return errors(fmt, 404, [f"service_request_id {rid!r} not found"])
        return respond(fmt, "service_requests", [_public(rows[0])])

    async def get_token(self, request: web.Request) -> web.Response:
        fmt = self._check(request)
        if isinstance(fmt, web.Response):
            return fmt
        token = request.match_info["token"]
        rid = await self.db.run(lambda c: requests_db.token_request(c, token)) if len(token) <= 64 else None
        if rid is None:
            return errors(fmt, 404, ["token not found"])
        return respond(fmt, "service_requests", [{"service_request_id": str(rid), "token": token}])


def _public(r: dict[str, Any]) -> dict[str, Any]:
    """A stored request as GeoReport v2 serves it (no reporter data)."""
    svc = catalogue.BY_CODE.get(r["service_code"])
    return {
        "service_request_id": str(r["id"]),
        "status": r["status"],
        "status_notes": r["status_notes"],
        "service_name": svc.name if svc else r["service_code"],
        "service_code": r["service_code"],
        "description": r["description"],
        "agency_responsible": r["agency"],
        "service_notice": r["service_notice"],
        "requested_datetime": requests_db.iso(r["requested"]),
        "updated_datetime": requests_db.iso(r["updated"]),
        "expected_datetime": None,
        "address": r["address"],
        "address_id": r["address_id"],
        "zipcode": None,
        "lat": r["lat"],
        "long": r["lon"],
        "media_url": r["media_url"],
        "lumeau_verdict": r["verdict"],
        "lumeau_nodes": ",".join(orjson.loads(r["nodes"])),
        "lumeau_reports": r["reports"],
        "lumeau_source": r["source"],
    }
