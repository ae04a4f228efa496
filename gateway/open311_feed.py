"""The city's open service requests, read over HTTP from its Open311 GeoReport v2 API, for the technician page.

Why HTTP and not the city platform's code: the gateway never imports city/
(DESIGN.md), and a city may run another Open311 server than `lumeau sink`.
Why through the gateway and not from the browser: the technician page keeps
its CSP (`connect-src 'self'`, nothing from another origin), the platform
needs no CORS, and one cached fetch serves every open page.

`RequestsFeed.snapshot()` answers the API's `GET /requests`: the open
requests as the platform last gave them, fetched at most every `refresh_s`
in the background (one fetch at a time; only the very first snapshot waits
for it, so a platform that hangs never holds up the page's refresh for
longer than that first `timeout_s`), each trimmed to the fields the page
shows and tied to the gateway's nodes: the ids in `lumeau_nodes` (the sink's
extension) that the registry knows, else the registry's nodes within
`radius_m` of the request's position, nearest first. A platform that does
not answer, or answers something that is not a GeoReport v2 list, leaves the
last good list in place, with `error` saying why and `fetched` saying when
that list was read. Text stays text here; the page puts it in as text nodes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("lumeau.gateway.open311")

MAX_BYTES = 4 << 20  # a GeoReport list of 1,000 requests with 4,000-character descriptions fits
MAX_REQUESTS = 1000
TEXT_LIMITS = {
    "service_request_id": 32,
    "status": 16,
    "service_code": 64,
    "service_name": 120,
    "description": 1000,  # a technician reads the start; the platform keeps the rest
    "status_notes": 500,
    "service_notice": 500,
    "agency_responsible": 120,
    "address": 200,
    "requested_datetime": 40,
    "updated_datetime": 40,
    "lumeau_verdict": 32,
    "lumeau_source": 16,
}
EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Place:
    """What the feed needs of a registered node."""

    id: str  # 8 hex digits
    lat: float | None
    lon: float | None


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _number(v: Any) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def trim(item: Any, places: Iterable[Place], radius_m: float) -> dict[str, Any] | None:
    """One GeoReport v2 request as the page shows it, or None when it is not one (no id)."""
    if not isinstance(item, dict):
        return None
    out: dict[str, Any] = {}
    for k, limit in TEXT_LIMITS.items():
        v = item.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and k == "service_request_id":
            v = str(v)
        out[k] = v[:limit] if isinstance(v, str) else None
    if not out["service_request_id"]:
        return None
    lat, lon = _number(item.get("lat")), _number(item.get("long"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    out["lat"], out["long"] = lat, lon
    reports = item.get("lumeau_reports")
    out["reports"] = reports if isinstance(reports, int) and not isinstance(reports, bool) and reports >= 0 else None
    known = {p.id: p for p in places}
    named = item.get("lumeau_nodes")
    ids: list[str] = []
    if isinstance(named, str) and named:
        ids = [x.strip().lower() for x in named.split(",")[:50] if x.strip().lower() in known]
    elif lat is not None and lon is not None:
        near = []
        for p in known.values():
            if p.lat is not None and p.lon is not None:
                d = _distance_m(lat, lon, p.lat, p.lon)
                if d <= radius_m:
                    near.append((d, p.id))
        ids = [i for _, i in sorted(near)]
    out["nodes"] = list(dict.fromkeys(ids))
    return out


class RequestsFeed:
    """The open requests of one Open311 endpoint, cached (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        jurisdiction_id: str = "",
        refresh_s: float = 30.0,
        timeout_s: float = 10.0,
        radius_m: float = 60.0,
        places: Callable[[], Iterable[Place]] = list,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.jurisdiction_id = jurisdiction_id
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self.radius_m = radius_m
        self.places = places
        self.clock = clock
        self._requests: list[dict[str, Any]] = []
        self._fetched: float | None = None  # when the list above was read
        self._tried: float | None = None  # when a fetch last ended, well or not
        self._error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def source(self) -> str:
        """The endpoint without its query or any user:password (shown on the page)."""
        u = urlsplit(self.url)
        host = u.hostname or ""
        try:
            port = f":{u.port}" if u.port else ""
        except ValueError:  # config.py refuses such a URL; never a 500 for it here
            port = ""
        return f"{u.scheme}://{host}{port}{u.path}"

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def snapshot(self, wait: bool = False) -> dict[str, Any]:
        """The latest list; starts a fetch when it is due. `wait`: return after that fetch."""
        due = self._tried is None or self.clock() - self._tried >= self.refresh_s
        if due and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._fetch(), name="lumeau-open311-fetch")
        if self._task is not None and not self._task.done() and (wait or self._tried is None):
            await asyncio.shield(self._task)  # a caller that goes away does not cancel the fetch
        return {
            "configured": True,
            "source": self.source,
            "fetched": self._fetched,
            "error": self._error,
            "requests": self._requests,
        }

    async def _fetch(self) -> None:
        params = {"status": "open"}
        if self.jurisdiction_id:
            params["jurisdiction_id"] = self.jurisdiction_id
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            async with self._session.get(
                f"{self.url}/requests.json", params=params, headers={"Accept": "application/json"}
            ) as r:
                if r.status != 200:
                    raise ValueError(f"the platform answered HTTP {r.status}")
                body = bytearray()
                while chunk := await r.content.read(MAX_BYTES + 1 - len(body)):  # read() gives a chunk at most
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise ValueError(f"the answer is over {MAX_BYTES >> 20} MiB")
            doc = _json(body)
            if not isinstance(doc, list):
                raise ValueError("the answer is not a GeoReport v2 list of requests")
            places = list(self.places())
            items = [trim(x, places, self.radius_m) for x in doc[:MAX_REQUESTS]]
            self._requests = [x for x in items if x is not None]
            self._fetched = self.clock()
            self._error = None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            why = str(e) or type(e).__name__
            if isinstance(e, aiohttp.ClientConnectionError | TimeoutError):
                why = "the platform did not answer"
            if why != self._error:  # once per change, not every refresh
                log.warning("open311 fetch failed", extra={"source": self.source, "error": why})
            self._error = why
        finally:
            self._tried = self.clock()


def _json(body: bytes | bytearray) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the answer is not JSON") from None
