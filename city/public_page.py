"""The public page of `lumeau sink`: map, ledger, open requests and a report form, no login.

Static files from city/web/ under PAGE_PREFIX, read once at start, served
with a strict CSP (PAGE_CSP: scripts, styles and data from this origin only,
no inline code) and the usual security headers. `/` redirects to the page.

The page's language is chosen by the server so that `<html lang>` is right
before any script runs: `?lang=fr|en`, else the first of those in
Accept-Language, else English. The scripts translate the rest.

Two public JSON documents feed the page beside Open311 and the ledger:

  GET /public/nodes.json    the nodes' kind, site, position and whether an alarm is open:
                            no id, no name (as the open data, city/open_data.py)
  GET /public/config.json   the jurisdiction and the page key (below)

Submissions go to Open311 (`POST /open311/v2/requests.json`, form-encoded)
like any GeoReport v2 client's, with the *page key*: an api_key the sink
makes at start (random, one per process) and accepts beside the city's
keys. It is public by design -- anyone who opens the page reads it -- so it
is no secret and no authentication: what guards submissions is Open311's
rate limit per client address (--report-rate), which the page's
submissions share with every other client's.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from hashlib import sha256
from pathlib import Path
from typing import Any

from aiohttp import web

from city import requests_db
from city.open311 import Open311

PAGE_PREFIX = "/public/"
WEB_DIR = Path(__file__).with_name("web")
WEB_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
LANGS = ("en", "fr")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "geolocation=(), camera=(), microphone=()",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DATA_CSP = "default-src 'none'; frame-ancestors 'none'"


def new_page_key() -> str:
    return "public-page-" + secrets.token_urlsafe(18)


def pick_lang(query: str | None, accept: str) -> str:
    """`?lang=` if it is one we have, else the best of Accept-Language we have (q-values honoured), else en."""
    if query in LANGS:
        return query
    best, best_q = "en", -1.0
    for i, part in enumerate(accept.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        m = re.search(r"q=([^;,\s]*)", params)
        try:
            q = float(m.group(1)) if m else 1.0
        except ValueError:  # a malformed weight: that entry is ignored
            continue
        if not 0 <= q <= 1:
            continue
        base = tag.strip().lower().split("-")[0]
        if base in LANGS and q > 0 and q - i * 1e-6 > best_q:  # equal q: the first listed wins
            best, best_q = base, q - i * 1e-6
    return best


def _load() -> dict[str, tuple[bytes, str, str]]:
    out = {}
    for p in sorted(WEB_DIR.iterdir()) if WEB_DIR.is_dir() else ():
        ctype = WEB_TYPES.get(p.suffix)
        if ctype is not None and p.is_file():
            body = p.read_bytes()
            out[p.name] = (body, ctype, '"%s"' % sha256(body).hexdigest()[:32])
    if "index.html" not in out:
        raise FileNotFoundError(f"the public page is missing: {WEB_DIR / 'index.html'}")
    return out


class PublicPage:
    """The page's routes; `add_routes(app)`. `page_key` must be among `open311`'s accepted keys."""

    def __init__(self, open311: Open311, page_key: str) -> None:
        self.open311 = open311
        self.page_key = page_key
        self._files = _load()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.root)
        r.add_get(PAGE_PREFIX + "nodes.json", self.nodes)
        r.add_get(PAGE_PREFIX + "config.json", self.config)
        r.add_get(PAGE_PREFIX + "{name:.*}", self.file)  # only the files read at start are ever served

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(PAGE_PREFIX, headers=SECURITY_HEADERS)

    async def file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"] or "index.html"
        f = self._files.get(name)
        if f is None:
            return web.json_response({"error": "no such file"}, status=404, headers=SECURITY_HEADERS)
        body, ctype, etag = f
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        if ctype == "text/html":
            lang = pick_lang(request.query.get("lang"), request.headers.get("Accept-Language", ""))
            body = body.replace(b'<html lang="en">', f'<html lang="{lang}">'.encode(), 1)
            headers["Content-Security-Policy"] = PAGE_CSP
            headers["Content-Language"] = lang
            headers["Vary"] = "Accept-Language"
        else:
            headers["ETag"] = etag
            if etag in request.headers.get("If-None-Match", ""):
                return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)

    async def config(self, request: web.Request) -> web.Response:
        cfg = self.open311.config
        doc = {
            "jurisdiction_id": cfg.jurisdiction_id,
            "api_key": self.page_key,  # public by design: see the module's docstring
            "rate_count": cfg.rate_count,
            "rate_window_s": cfg.rate_window_s,
        }
        return web.json_response(doc, headers={**SECURITY_HEADERS, "Content-Security-Policy": DATA_CSP})

    async def nodes(self, request: web.Request) -> web.Response:
        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            alarmed = {a.node for a in requests_db.open_alarms(c)}
            return [
                {"kind": n.kind, "site": n.site, "lat": n.lat, "lon": n.lon, "fault": n.id in alarmed}
                for n in requests_db.load_nodes(c)
                if n.lat is not None and n.lon is not None
            ]

        doc = {"nodes": await self.open311.db.run(read)}
        return web.json_response(doc, headers={**SECURITY_HEADERS, "Content-Security-Policy": DATA_CSP})
