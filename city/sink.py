"""`lumeau sink`: the embedded upstream -- an HTTP receiver that keeps what the gateway sends.

It is the default upstream of the gateway and of the end-to-end tests: a
real HTTP server, so the gateway's upstream is exercised exactly as against
a city platform. It stores in SQLite (city/db.py: WAL, synchronous=FULL) and answers 2xx
only after the transaction is on disk, so a record the gateway deleted after
a 2xx is never lost here either.

Endpoints (all but /healthz need `Authorization: Bearer <token>`):

  POST /v1/records        a native batch (gateway/FORMATS.md: lumeau.records/3,
                          /2, or /1; all read as /2), gzip or not; records
                          deduplicated by idempotency key ("id"), so a
                          resend after a crash or a timeout stores nothing
                          twice; each record kept as one JSON document in
                          the /2 shape, the units of each message type once.
                          200 {"accepted": n, "duplicates": d}.
                          400 names the first bad record (the gateway then
                          isolates and quarantines it).
  GET  /v1/records        ?node=<8 hex>&type=<kind>&after=<seq>&since=<ISO or Unix s>&limit=<1..1000>
                          records in arrival order with their `seq` and
                          `received` time, "units" (per message type among
                          them, as in a batch) and "next" (the last seq, to
                          pass as `after`).
  GET  /v1/stats          counts: records, nodes, duplicates, batches, entities.
  POST /ngsi-ld/v1/entityOperations/upsert
                          NGSI-LD batch upsert (replace, or ?options=update to
                          merge attributes): 201 with the ids created, 204
                          when all existed, 207 with per-entity errors.
  GET  /ngsi-ld/v1/entities/{id}, GET /ngsi-ld/v1/entities?type=&limit=
  PUT  /v1/nodes          the nodes' public facts: {"nodes": [{"id", "kind", "name",
                          "site", "lat", "lon"}]} (no keys), upserted; what reports
                          are matched against (`lumeau sink --nodes` loads a registry).
                          Optional, for the ledger (city/ledger_db.py): "district",
                          "rated_power_w" (a lamp), "baseline" and "stress_vwc_pct"
                          (an irrigation controller).
  GET  /v1/nodes          them, with their open alarms.
  POST /v1/service-requests/{id}/close
                          city staff close a request after a field check:
                          {"service_notice": "..."}; its reporters' contact
                          details are erased. 200, 404 unknown, 409 closed already.
  GET  /healthz           liveness, no auth.

Open311 GeoReport v2 (city/open311.py) under /open311/v2/, without the
bearer token: residents' reports, matched to the nodes and judged by them;
node alarms open requests by themselves.

The public-value ledger and open data (city/open_data.py) under /ledger/
and /open-data/, without the bearer token: daily aggregates only; the
digital twin of the requests and the ledger as NGSI-LD entities
(city/twin.py, city/twin_web.py) under /open-data/twin/.

The public page (city/public_page.py, files in city/web/) under /public/
(`/` redirects there), without the bearer token: map, ledger, open
requests and a report form, in French and English.

Limits: request bodies up to MAX_BODY (16 MiB after decompression: a gzip
bomb is cut off there; a 500-record batch is about 300 kB); a native batch
up to MAX_BATCH records; queries up to QUERY_LIMIT_MAX rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hmac
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from city import ledger_db, matching, requests_db
from city.db import SinkDB, bump
from city.ledger import Facts, Settings
from city.open311 import PREFIX as OPEN311_PREFIX
from city.open311 import Open311, Open311Config, check_text
from city.open_data import PUBLIC_PREFIXES, OpenData
from city.public_page import PAGE_PREFIX, PublicPage, new_page_key
from city.twin_web import TwinRoutes
from gateway import formats

log = logging.getLogger("lumeau.city.sink")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8088
MAX_BODY = 16 * 1024 * 1024
MAX_BATCH = 10_000
QUERY_LIMIT_DEFAULT = 100
QUERY_LIMIT_MAX = 1000
TOKEN_ENV = "LUMEAU_SINK_TOKEN"
GC_THRESHOLDS = (20_000, 20, 50)  # as gateway/service.py's, for the same reason


def _problem(status: int, title: str, detail: str = "", **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": title}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(body, status=status)


class Sink:
    """The sink as an aiohttp application; `await start()` serves it, `await stop()` ends it."""

    def __init__(
        self,
        db_path: str | Path,
        token: str | None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        open311: Open311Config | None = None,
        nodes: list[matching.NodeInfo] | None = None,
        ledger: Settings | None = None,
    ) -> None:
        self.db = SinkDB(Path(db_path))
        self._token = token.encode() if token else None
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._auth])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_post("/v1/records", self.post_records)
        self.app.router.add_get("/v1/records", self.get_records)
        self.app.router.add_get("/v1/stats", self.get_stats)
        self.app.router.add_post("/ngsi-ld/v1/entityOperations/upsert", self.upsert_entities)
        self.app.router.add_get("/ngsi-ld/v1/entities/{id}", self.get_entity)
        self.app.router.add_get("/ngsi-ld/v1/entities", self.get_entities)
        self.app.router.add_put("/v1/nodes", self.put_nodes)
        self.app.router.add_get("/v1/nodes", self.get_nodes)
        self.app.router.add_post("/v1/service-requests/{id:[0-9]{1,18}}/close", self.close_request)
        # The public page submits with a key of its own, public by design (city/public_page.py)
        page_key = new_page_key()
        o311 = open311 or Open311Config()
        o311 = dataclasses.replace(o311, api_keys=o311.api_keys | {page_key})
        self.open311 = Open311(self.db, o311)
        self.open311.add_routes(self.app)
        self.page = PublicPage(self.open311, page_key)
        self.page.add_routes(self.app)
        self.open_data = OpenData(self.db, ledger)
        self.open_data.add_routes(self.app)
        TwinRoutes(self.db, self.open_data, o311.jurisdiction_id).add_routes(self.app)
        self._initial_nodes = nodes or []
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"Sink({self.db.path}, {self.host}:{self.port}, token={'<set>' if self._token else None})"

    async def start(self) -> int:
        """Serve; returns the bound port (pass port 0 for a free one)."""
        await self.db.run(lambda c: None)  # open (and create) the database before accepting anything
        if self._initial_nodes:
            await self.db.run(lambda c: requests_db.put_nodes(c, self._initial_nodes, time.time()))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound one: port 0 picks a free port
        log.info("sink listening", extra={"host": self.host, "port": self.port, "db": str(self.db.path)})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.db.close()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        path = request.path
        public = path in ("/healthz", "/") or path.startswith((OPEN311_PREFIX + "/", PAGE_PREFIX, *PUBLIC_PREFIXES))
        if self._token is not None and not public:
            got = request.headers.get("Authorization", "")
            scheme, _, value = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
                resp = _problem(401, "unauthorized", "a valid bearer token is required")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="lumeau-sink"'
                return resp
        return await handler(request)

    async def _json_body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise
        except Exception as e:  # e.g. a body that does not decompress
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "unreadable body", "detail": str(e)[:200]}), content_type="application/json"
            ) from None
        try:
            return orjson.loads(raw)
        except (ValueError, RecursionError) as e:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body is not JSON", "detail": str(e)[:200]}), content_type="application/json"
            ) from None

    # -- native records ----------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def post_records(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        try:
            recs = formats.check_native_batch(doc, MAX_BATCH)
        except formats.FormatError as e:
            return _problem(400, "invalid batch", str(e))
        now = time.time()
        dumps = orjson.dumps
        try:
            rows = [(r.key, r.node, r.counter, r.type, r.time, now, dumps(r.doc).decode()) for r in recs]
        except orjson.JSONEncodeError as e:  # e.g. an integer beyond 64 bits in a field
            return _problem(400, "invalid batch", f"a record cannot be stored: {e}")
        # the records that may open or close an alarm (and so a service request), in arrival order
        alarmy = [(r.key, r.doc, r.time) for r in recs if r.type in ("event", "status", "hello")]
        units = {r.type: r.units for r in recs if r.units}
        unit_rows = [(k, json.dumps(u, sort_keys=True)) for k, u in units.items()]

        def insert(c: sqlite3.Connection) -> int:
            c.execute("BEGIN IMMEDIATE")
            try:
                seen: set[str] = set()
                if alarmy:
                    keys = [k for k, _d, _t in alarmy]
                    for i in range(0, len(keys), 500):
                        part = keys[i : i + 500]
                        q = f"SELECT key FROM records WHERE key IN ({','.join('?' * len(part))})"
                        seen.update(k for (k,) in c.execute(q, part))
                before = c.total_changes
                c.executemany(
                    "INSERT OR IGNORE INTO records (key, node, counter, type, t, received, doc) VALUES (?,?,?,?,?,?,?)",
                    rows,
                )
                added = c.total_changes - before
                c.executemany(
                    "INSERT INTO units VALUES (?, ?) ON CONFLICT (type) DO UPDATE SET units = "
                    "excluded.units WHERE units != excluded.units",
                    unit_rows,
                )
                bump(c, "duplicates", len(rows) - added)
                bump(c, "batches", 1)
                for k, d, t in alarmy:  # a resend changes nothing: only records new to the sink count
                    if k not in seen:
                        seen.add(k)
                        apply_alarm_state(c, k, d, t, now)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return added

        added = await self.db.run(insert)
        return web.json_response({"accepted": added, "duplicates": len(rows) - added})

    async def get_records(self, request: web.Request) -> web.Response:
        q = request.query
        where: list[str] = []
        args: list[str | int | float] = []
        try:
            if "node" in q:
                node = q["node"].lower().removeprefix("0x").rjust(8, "0")
                if len(node) != 8 or any(ch not in "0123456789abcdef" for ch in node):
                    raise ValueError("node must be up to 8 hex digits")
                where.append("node = ?")
                args.append(node)
            if "type" in q:
                where.append("type = ?")
                args.append(q["type"])
            if "after" in q:
                where.append("seq > ?")
                args.append(int(q["after"]))
            if "since" in q:
                s = q["since"]
                try:
                    since = float(s)
                except ValueError:
                    since = formats.parse_time(s)
                where.append("t >= ?")
                args.append(since)
            limit = int(q.get("limit", QUERY_LIMIT_DEFAULT))
            if not 1 <= limit <= QUERY_LIMIT_MAX:
                raise ValueError(f"limit must be 1..{QUERY_LIMIT_MAX}")
        except ValueError as e:
            return _problem(400, "bad query", str(e))
        sql = "SELECT seq, received, doc FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq LIMIT ?"

        def query(c: sqlite3.Connection) -> tuple[list[tuple], dict[str, str]]:
            return c.execute(sql, (*args, limit)).fetchall(), dict(c.execute("SELECT type, units FROM units"))

        rows, units = await self.db.run(query)
        out = []
        for seq, received, doc in rows:
            d = orjson.loads(doc)
            d["seq"] = seq
            d["received"] = formats.iso_time(received)
            out.append(d)
        kinds = {d.get("type") for d in out}
        return web.json_response(
            {
                "records": out,
                "units": {k: orjson.loads(u) for k, u in units.items() if k in kinds},
                "next": rows[-1][0] if rows else None,
            }
        )

    async def get_stats(self, request: web.Request) -> web.Response:
        def stats(c: sqlite3.Connection) -> dict[str, Any]:
            meta = dict(c.execute("SELECT name, value FROM meta"))
            n, nodes = c.execute("SELECT COUNT(*), COUNT(DISTINCT node) FROM records").fetchone()
            last = c.execute("SELECT MAX(received) FROM records").fetchone()[0]
            return {
                "records": n,
                "nodes": nodes,
                "duplicates": meta.get("duplicates", 0),
                "batches": meta.get("batches", 0),
                "entities": c.execute("SELECT COUNT(*) FROM entities").fetchone()[0],
                "entity_updates": meta.get("entity_updates", 0),
                "last_received": formats.iso_time(last) if last else None,
            }

        return web.json_response(await self.db.run(stats))

    # -- nodes (what residents' reports are matched against) -----------------

    async def put_nodes(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        items = doc.get("nodes") if isinstance(doc, dict) else None
        try:
            nodes = node_infos(items)
            facts = node_facts(items, nodes)
        except ValueError as e:
            return _problem(400, "invalid nodes", str(e))

        def put(c: sqlite3.Connection) -> int:
            now = time.time()
            c.execute("BEGIN IMMEDIATE")
            try:
                n = requests_db.put_nodes(c, nodes, now)
                ledger_db.put_facts(c, facts, now)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return n

        return web.json_response({"nodes": await self.db.run(put)})

    async def get_nodes(self, request: web.Request) -> web.Response:
        def read(c: sqlite3.Connection) -> tuple[list[matching.NodeInfo], list[matching.Alarm]]:
            return requests_db.load_nodes(c), requests_db.open_alarms(c)

        nodes, alarms = await self.db.run(read)
        by: dict[str, list[dict[str, Any]]] = {}
        for a in alarms:
            by.setdefault(a.node, []).append({"alarm": a.alarm, "zone": a.zone})
        return web.json_response({"nodes": [{**n.__dict__, "open_alarms": by.get(n.id, [])} for n in nodes]})

    async def close_request(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        notice = doc.get("service_notice") if isinstance(doc, dict) else None
        try:
            notice = check_text("service_notice", notice, 2000) if isinstance(notice, str) else ""
            if not notice:
                raise ValueError("service_notice: a text of 1 to 2000 characters")
        except ValueError as e:
            return _problem(400, "invalid close", str(e))
        rid = int(request.match_info["id"])
        now = time.time()

        def close(c: sqlite3.Connection) -> str | None:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT status FROM service_requests WHERE id = ?", (rid,)).fetchone()
                if row is not None and row[0] == "open":
                    requests_db.close(c, rid, notice, now)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return row[0] if row else None

        was = await self.db.run(close)
        if was is None:
            return _problem(404, "not found", f"no service request {rid}")
        if was != "open":
            return _problem(409, "already closed", f"service request {rid} is closed")
        return web.json_response({"service_request_id": str(rid), "status": "closed"})

    # -- NGSI-LD -----------------------------------------------------------

    async def upsert_entities(self, request: web.Request) -> web.Response:
        doc = await self._json_body(request)
        if not isinstance(doc, list):
            return web.json_response(
                {
                    "type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData",
                    "title": "the body must be an array of entities",
                },
                status=400,
            )
        merge = "update" in request.query.get("options", "").split(",")
        good: list[tuple[str, str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        for i, e in enumerate(doc):
            eid = e.get("id") if isinstance(e, dict) else None
            etype = e.get("type") if isinstance(e, dict) else None
            if not isinstance(eid, str) or ":" not in eid or not isinstance(etype, str) or not etype:
                errors.append(
                    {
                        "entityId": eid if isinstance(eid, str) else f"#{i}",
                        "error": {
                            "type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData",
                            "title": "an entity needs a URI id and a type",
                        },
                    }
                )
                continue
            good.append((eid, etype, e))
        now = time.time()

        def upsert(c: sqlite3.Connection) -> list[str]:
            created = []
            c.execute("BEGIN IMMEDIATE")
            try:
                for eid, etype, e in good:
                    row = c.execute("SELECT doc FROM entities WHERE id = ?", (eid,)).fetchone()
                    if row is None:
                        created.append(eid)
                        c.execute("INSERT INTO entities VALUES (?,?,?,?,1)", (eid, etype, json.dumps(e), now))
                        continue
                    if merge:
                        old = json.loads(row[0])
                        old.update(e)
                        e = old
                    c.execute(
                        "UPDATE entities SET type = ?, doc = ?, updated = ?, updates = updates + 1 WHERE id = ?",
                        (etype, json.dumps(e), now, eid),
                    )
                bump(c, "entity_updates", len(good))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return created

        created = await self.db.run(upsert)
        if errors:
            return web.json_response({"success": [g[0] for g in good], "errors": errors}, status=207)
        if created:
            return web.json_response(created, status=201)
        return web.Response(status=204)

    async def get_entity(self, request: web.Request) -> web.Response:
        eid = request.match_info["id"]
        row = await self.db.run(
            lambda c: c.execute("SELECT doc, updates FROM entities WHERE id = ?", (eid,)).fetchone()
        )
        if row is None:
            return web.json_response(
                {"type": "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound", "title": f"no entity {eid}"},
                status=404,
            )
        resp = web.json_response(json.loads(row[0]))
        resp.headers["X-Lumeau-Updates"] = str(row[1])
        return resp

    async def get_entities(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", QUERY_LIMIT_DEFAULT))
            if not 1 <= limit <= QUERY_LIMIT_MAX:
                raise ValueError
        except ValueError:
            return _problem(400, "bad query", f"limit must be 1..{QUERY_LIMIT_MAX}")
        etype = request.query.get("type")
        sql, args = "SELECT doc FROM entities", []
        if etype:
            sql += " WHERE type = ?"
            args.append(etype)
        sql += " ORDER BY id LIMIT ?"
        rows = await self.db.run(lambda c: c.execute(sql, (*args, limit)).fetchall())
        return web.json_response([json.loads(r[0]) for r in rows])


def apply_alarm_state(c: sqlite3.Connection, key: str, doc: dict[str, Any], t: float, now: float) -> None:
    """What a new record changes in the nodes' alarms and service requests. Derived state: a record
    it cannot be applied to (odd values) is still stored, and this part alone is undone and logged,
    so one strange record never blocks a batch (the gateway would resend it forever)."""
    c.execute("SAVEPOINT alarm_state")
    try:
        fields = doc.get("fields")
        if doc.get("type") == "hello" and isinstance(fields, dict) and fields.get("kind") in NODE_KINDS:
            requests_db.note_node(c, doc["node"], fields["kind"], now)
        ch = matching.alarm_change(doc, t)
        if ch is not None:
            requests_db.apply_change(c, ch, now)
    except (sqlite3.Error, ValueError, TypeError, OverflowError) as e:
        c.execute("ROLLBACK TO alarm_state")
        log.warning("record %s: its alarm state was not applied: %s", key, str(e)[:200])
    c.execute("RELEASE alarm_state")


NODE_KINDS = ("lighting", "irrigation", "bridge")  # gateway/registry.py KINDS
MAX_NODES = 100_000


def node_infos(items: Any) -> list[matching.NodeInfo]:
    """Checked node facts from a PUT /v1/nodes body or a registry's public entries; ValueError names the bad one."""
    if not isinstance(items, list):
        raise ValueError("nodes must be a list")
    if len(items) > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} nodes")
    out = []
    for i, d in enumerate(items):
        where = f"nodes[{i}]"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: not an object")
        nid = d.get("id")
        if not isinstance(nid, str):
            raise ValueError(f"{where}.id: 8 hex digits required")
        nid = nid.lower().removeprefix("0x").rjust(8, "0")
        if len(nid) != 8 or any(ch not in "0123456789abcdef" for ch in nid):
            raise ValueError(f"{where}.id: 8 hex digits required")
        kind = d.get("kind")
        if kind not in NODE_KINDS:
            raise ValueError(f"{where}.kind: one of {', '.join(NODE_KINDS)}")
        text = {}
        for k in ("name", "site"):
            v = d.get(k) or ""
            if not isinstance(v, str):
                raise ValueError(f"{where}.{k}: a text of at most 128 characters")
            text[k] = check_text(f"{where}.{k}", v, 128)
        lat, lon = d.get("lat"), d.get("lon")
        if (lat is None) != (lon is None):
            raise ValueError(f"{where}: lat and lon go together")
        if lat is not None and lon is not None:
            ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (lat, lon))
            if not ok or not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"{where}: lat -90..90 and lon -180..180, in degrees")
            lat, lon = float(lat), float(lon)
        out.append(matching.NodeInfo(nid, kind, text["name"], text["site"], lat, lon))
    return out


def node_facts(items: Any, nodes: list[matching.NodeInfo]) -> list[tuple[str, Facts]]:
    """The ledger facts (district, rated power, watering baseline, stress threshold) the checked
    items declare (city/ledger_db.py); ValueError names the bad one."""
    out = []
    for i, (d, n) in enumerate(zip(items, nodes, strict=True)):
        f = ledger_db.parse_facts(f"nodes[{i}]", d, n.kind)
        if f is not None:
            out.append((n.id, f))
    return out


async def serve(sink: Sink) -> int:
    """Run `sink` until SIGINT or SIGTERM; the exit status of `lumeau sink` (1: cannot listen)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await sink.start()
    except OSError as e:
        print(f"lumeau sink: cannot listen on {sink.host}:{sink.port}: {e}", file=sys.stderr)
        await sink.db.close()
        return 1
    # As the gateway does (gateway/service.py): what lives as long as the process out of the
    # collector's way, the young generation collected less often -- a batch is thousands of
    # short-lived containers (bench/README.md, gateway.py: the sink's CPU per record)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # One line on stdout that scripts (and tests) can wait for, with the real port.
    print(f"lumeau sink: listening on http://{sink.host}:{port} (db {sink.db.path})", flush=True)
    await stop.wait()
    await sink.stop()
    return 0
