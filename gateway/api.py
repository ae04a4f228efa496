"""The gateway's local HTTP API and Prometheus metrics (aiohttp).

Bound to 127.0.0.1 by default. Every endpoint but `/healthz` needs
`Authorization: Bearer <token>` (compared in constant time; 401 otherwise,
with `WWW-Authenticate: Bearer`). JSON in and out; errors are
`{"error": "..."}` with a 4xx status.

  GET    /healthz                  liveness: {"status": "ok"}, no auth
  GET    /  and  /ui/...           the technician web page (static files from gateway/web/, no auth:
                                   they hold no data; the page asks for the token and sends it as
                                   bearer); `[api] ui = false` turns it off
  GET    /metrics                  Prometheus text format (version 0.0.4)
  GET    /nodes                    every registered node, with its state
  GET    /nodes/{id}               one node: registry entry (never the key; its key_gen, the
                                   key generation in its records' ids, SPEC §4), last seen,
                                   RSSI/SNR and gateway of the best reception, supply
                                   voltage, firmware, last readings, open alarms, downlinks waiting,
                                   release {"running", "expected", "state", ...} (null: no HELLO
                                   with a bundle id and no release expected yet),
                                   health {"state": ok|alarm|silent|failsafe, "conditions", "silent_s"}
                                   (gateway/health.py)
  PUT    /nodes/{id}/release       the release the node should run (gateway/releases.py): {"version":
                                   "0.2.0", "bundle": 64 hex (the image manifest's)}; 200 with its
                                   "release" {"running", "expected", "state": current | updating |
                                   rolled_back, "since", "rolled_back_at", "rollbacks", "hello_at"}, on disk
                                   before the answer; 400 bad body, 404 unknown node
  DELETE /nodes/{id}/release       forget the expected release (state null); 200 with "release"
  PUT    /groups/{name}/release    the same for every member: {"release": {...}, "nodes": {id: state}}
  GET    /nodes/{id}/readings      its recent uplinks, oldest first (gateway/history.py: the last
                                   96 per type): ?type=light,status (default: all) &limit=N
  PUT    /nodes/{id}               add or update a node: {"kind", "root_key" (32 hex; needed
                                   to add, optional to update: a new key resets the node's
                                   counters and takes the next key_gen, which a body may
                                   not set), "name", "site", "lat", "lon", "firmware",
                                   "dev_eui" (a LoRaWAN DevEUI, 16 hex digits: ChirpStack)};
                                   saved to the registry file at once, merged with the file as it
                                   is (Registry.change: a node added to it offline is kept, and
                                   known from then on). 201 added, 200 updated.
  DELETE /nodes/{id}               remove a node from the registry (204), merged the same way
  POST   /nodes/{id}/commands      queue a downlink (201):
                                     {"op": "set_level", "args": [100, 600], "ttl_s": 600}
                                     {"type": "config", "settings": {"report_interval": 900}}
                                     {"type": "time"}
                                     {"op": "set_level", "args": {"level": 50, "duration": 600}}
                                   op by name (protocol/expand.py) or number; args as on the air
                                   or named as GET /ops describes them (an object, or a list of
                                   one object per group); checked against the op catalogue (the
                                   node's kind, argument count and ranges: gateway/ops.py) and
                                   refused at once, never sent; 404 unknown node, 400 bad body or
                                   a command the node would refuse (naming the argument), 429 the
                                   node's queue is full
  GET    /nodes/{id}/commands      that node's downlinks, oldest first (?state=queued,sent)
  GET    /commands                 all downlinks (?state=...&limit=...)
  GET    /commands/{id}            one downlink and its state (queued, sent, acked, failed, expired);
                                   an acked COMMAND has its "result" and, while the history holds
                                   the CMD_ACK, its "value"
  DELETE /commands/{id}            expire a queued downlink now
  GET    /quarantine               batches the upstream refused (?limit=), with their records
  GET    /ops                      the COMMAND ops with their arguments, for forms (gateway/ops.py)
  GET    /groups                   every group: {"groups": [{"name", "kind", "members", "title"}]}
  POST   /groups                   create a group: {"name", "kind" (street|park|district|custom),
                                   "members": [node ids], "title"}; 201, 409 the name is taken,
                                   400 a bad name or kind, or a member not in the registry
  GET    /groups/{name}            one group, with "multicast": {"lamps", "provisioned" (lamps holding the
                                   group key), "addr", "gen", "next_counter", "delivery": {"mode":
                                   "multicast"|"unicast", "reason"} for a lamp's op} (gateway/multicast.py)
  PUT    /groups/{name}            create (201) or update (200) a group; fields not given are kept
  DELETE /groups/{name}            remove a group (204; its nodes stay registered)
                                   (groups are saved in the registry file by Registry.change)
  POST   /groups/{name}/commands   one COMMAND for every member (201): {"op", "args", "ttl_s"} as
                                   for a node; by LoRa multicast when every member is a lamp with
                                   the group key, else unicast fan-out through each member's
                                   downlink queue ("delivery": {"mode", "reason"}); members of a
                                   kind the op is not for are "skipped" (gateway/groups.py); 400
                                   bad op or arguments, nothing queued
  GET    /groups/{name}/commands   the group's commands with their progress counts
  POST   /groups/{name}/multicast  give the group key to its lamps that lack it (join_group by unicast;
                                   also done when a group is saved): {"provisioning": {"queued",
                                   "failed"}, "multicast"}; 409 without a packet forwarder
  GET    /calendars                the calendars compiled ([calendars], gateway/calendar_sync.py)
                                   and per node seen: hash assigned, hash held, in_sync; counters;
                                   404 when off
  GET    /time                     automatic time (gateway/timesync.py): {"threshold_s", "at", "counts",
                                   "nodes": {id: {"offset_s": [lo, hi] (null: unknown), "drift_ppm":
                                   [lo, hi], "last_time_at", "resync_at" (from when its uplinks get a
                                   re-sync; 0: its next one; null: not foreseen), "repeat", "refused"}}}
                                   for the nodes heard (?limit=; "total": how many); ?plan=1:
                                   {"resync_at": {id: t}} for every node heard, nothing else per
                                   node (the simulator's live link reads it); 404 when auto_time is off
  GET    /nodes/{id}/window        its latest radio uplink's receive window: {"counter", "answering"
                                   (the answer still being made), "sent" (frames handed to a radio),
                                   "refused" (why the last refused one was, or null)}; 404 none since
                                   the gateway started
  GET    /alarms                   alarm cycles told of by notifications ([notify], gateway/notify.py),
                                   open ones (?all=1: cleared too): node, code, zone, severity,
                                   raised, acked, acked_by, escalate_at, escalated; 404 when off
  POST   /alarms/{id}/{code}/ack   acknowledge a node's open alarm (code by name, e.g. leak):
                                   no escalation follows; body optional {"zone": n, "by": "name"}
                                   (default: every zone, by "api"); 200 {"acked": [cycles]},
                                   404 no open alarm of that code was told of (or notifications off)
  GET    /notifications            the notification outbox, oldest first (?state=pending,sent,...
                                   &limit=): kind, channel, recipient (a webhook: scheme and host
                                   only), state, attempts, last error
  GET    /groups/{name}/commands/{id}  one group command: per member applied, pending, failed
                                   (with the reason) or skipped, and the counts
  POST   /campaigns?group=G&...     firmware update campaigns (gateway/campaigns.py; their routes and
  GET    /campaigns[/{id}]         bodies: gateway/campaigns_api.py): the release image as the body,
  POST   /campaigns/{id}/pause|resume|abort   canaries first, per-node progress
  GET    /requests                 the city's open service requests, read over HTTP from its Open311
                                   API ([open311] url; gateway/open311_feed.py), each with the
                                   registered nodes it concerns: {"configured", "source", "fetched",
                                   "error", "requests": [{service_request_id, status, service_code,
                                   service_name, description, status_notes, requested_datetime,
                                   updated_datetime, address, lat, long, lumeau_verdict,
                                   lumeau_source, reports, nodes: [ids]}]}; {"configured": false}
                                   without [open311]

Node ids are 8 hex digits (`00a1b2c3`, or with `0x`). Limits: request bodies
up to MAX_BODY (64 KiB); list endpoints return at most LIST_MAX items.

Hostile input (issue 15): bodies are strict JSON (`parse_body`): UTF-8, no key
given twice, no NaN or Infinity, integers of at most MAX_INT_DIGITS digits,
nesting within the parser's limit; anything else is a 400 naming the problem.
The token is accepted only in its exact form `Bearer <token>`: HTTP parsers drop
trailing whitespace from a header, so a connection that sent an Authorization
line ending in a space or tab is refused (401) for its whole life. A bug in a
handler answers a JSON 500 ("internal error"; the traceback only in the log).

Every response carries security headers (SECURITY_HEADERS), errors included,
and also the 400 aiohttp answers itself to a request it cannot parse (an
unknown method, a bad header line, TLS on the HTTP port: StrictHandler): no sniffing,
no framing, no referrer; a Content-Security-Policy that allows nothing on
API answers and, on the web page, only its own scripts, styles and API
(PAGE_CSP: no inline code, no other origin). The static files are read once
at start, served with an ETag and revalidated on every load (no-cache).

One file (over 600 lines): the route table below is the API's documentation;
its handlers sit beside it. Metrics live in metrics.py.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from hashlib import sha256
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import health, ops, releases
from gateway.campaigns import Campaigns
from gateway.campaigns_api import CampaignRoutes
from gateway.downlinks import DownlinkRejected, Downlinks
from gateway.fuota import FuotaDelivery, FuotaSettings
from gateway.groups import REPAIR_AFTER_S, GroupCommandError, GroupCommands
from gateway.history import History
from gateway.logs import RateLimiter
from gateway.metrics import Metrics, calendar_families, snake, upstream_families
from gateway.model import Downlink, Record
from gateway.multicast import Multicast
from gateway.notify import Notifier, redact
from gateway.notify_rules import Target
from gateway.open311_feed import RequestsFeed
from gateway.pipeline import REASONS, Pipeline
from gateway.registry import (
    Group,
    GroupExists,
    NodeEntry,
    Registry,
    RegistryError,
    check_group_name,
    format_node_id,
    parse_node_id,
)
from gateway.store import Store, StoreError
from protocol import expand
from protocol import messages as m

log = logging.getLogger("lumeau.gateway.api")

MAX_BODY = 64 * 1024
MAX_INT_DIGITS = 20  # a JSON integer with more digits is refused (no field needs one: 2**64 has 20)
LIST_MAX = 1000
PUBLIC = frozenset(("/healthz",))
UI_PREFIX = "/ui/"
WEB_DIR = Path(__file__).with_name("web")
WEB_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

OPS = {name: op for op, name in expand.ENUMS[(m.COMMAND, 1)].items()}
OP_NAMES = expand.ENUMS[(m.COMMAND, 1)]
RESULT_NAMES = expand.ENUMS[(m.CMD_ACK, 1)]
# CONFIG keys by name, from protocol.messages' CFG_* constants: report_interval, tx_power, ...
CONFIG_KEYS = {n[4:].lower(): getattr(m, n) for n in dir(m) if n.startswith("CFG_")}
CONFIG_NAMES = {v: k for k, v in CONFIG_KEYS.items()}
DOWNLINK_TYPES = {m.COMMAND: "command", m.CONFIG: "config", m.TIME: "time"}


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=status)


def _lock_down(resp: web.StreamResponse) -> None:
    resp.headers.update(SECURITY_HEADERS)
    resp.headers.setdefault("Content-Security-Policy", API_CSP)


class BodyError(ValueError):
    """A request body the API refuses before looking at it (400)."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BodyError(f"numbers have at most {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise BodyError("numbers must be finite")
    return v


def _constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise BodyError(f"key {k[:40]!r} is given twice")
            seen.add(k)
    return out


def parse_body(data: bytes) -> Any:
    """Strict JSON for request bodies: UTF-8, no duplicate keys, no NaN or infinities, integers of at
    most MAX_INT_DIGITS digits, nesting within the parser's limit. Raises BodyError naming the problem."""
    try:
        return json.loads(
            data.decode("utf-8"),
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("the body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BodyError(f"the body must be JSON: {str(e)[:80]}") from None


# An Authorization header line ending in whitespace: the HTTP parser strips it (RFC 9110
# 5.5), so the handler never sees it; StrictHandler looks at the bytes on the wire instead.
_AUTH_WS = re.compile(rb"\nauthorization[ \t]*:[^\r\n]*[ \t]\r?\n", re.IGNORECASE)
_TAIL_MAX = 8192
_HTTP_ERRORS = RateLimiter()  # requests aiohttp could not parse, in every API of the process


class StrictHandler(web.RequestHandler):
    """aiohttp's connection handler with two changes: errors it answers itself (a request it
    cannot parse: an unknown method, a bad header, TLS on the HTTP port) are JSON with the
    security headers, and a connection that sent `Authorization: ...<space>` is marked."""

    __slots__ = ("auth_whitespace", "_tail")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auth_whitespace = False
        self._tail = b""

    def data_received(self, data: bytes) -> None:
        if not self.auth_whitespace:
            buf = self._tail + data
            if _AUTH_WS.search(buf):
                self.auth_whitespace = True
            nl = buf.rfind(b"\n")
            self._tail = buf[nl:][-_TAIL_MAX:] if nl >= 0 else buf[-_TAIL_MAX:]
        super().data_received(data)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        # Not aiohttp's own handle_error: it logs each of these (a traceback to stderr), unlimited,
        # for anyone who can reach the port. Rate-limited here, as every line the network causes.
        if request.writer.output_size > 0:
            raise ConnectionError("a response was begun: no error response can follow")
        allowed, suppressed = _HTTP_ERRORS.allow(f"http_{status}")
        if allowed:
            why = message or (repr(exc) if exc is not None else "")
            log.warning(
                "http request refused",
                extra={"status": status, "why": why[:200], "peer": str(request.remote), "suppressed": suppressed},
            )
        try:
            reason = HTTPStatus(status).phrase.lower()
        except ValueError:
            reason = "error"
        resp = _error(status, reason)
        _lock_down(resp)
        resp.force_close()
        return resp


class _StrictServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return StrictHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections are StrictHandlers (aiohttp has no parameter for the class)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _StrictServer  # same layout: only __call__ differs
        return server


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def ack_args(doc: Any) -> tuple[int | None, str]:
    """(zone or None, by) from the optional body of POST /alarms/{id}/{code}/ack; ValueError saying why."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or set(doc) - {"zone", "by"}:
        raise ValueError('the body is optional: {"zone": n, "by": "name"}')
    zone = doc.get("zone")
    if zone is not None and (type(zone) is not int or not 0 <= zone <= 255):
        raise ValueError("zone must be an integer 0..255")
    by = doc.get("by", "api")
    if not isinstance(by, str) or not 1 <= len(by) <= 64 or not by.isprintable():
        raise ValueError("by must be 1 to 64 printable characters")
    return zone, by


def downlink_json(dl: Downlink) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": dl.id,
        "node": format_node_id(dl.node_id),
        "type": DOWNLINK_TYPES.get(dl.mtype, dl.mtype),
        "state": dl.state,
        "attempts": dl.attempts,
        "created": dl.created,
        "expires": dl.expires,
    }
    if dl.mtype == m.COMMAND:
        op = dl.body.get(1)
        op_name = OP_NAMES.get(op, op) if op is not None else None
        out.update(command_id=dl.command_id, op=op_name, args=list(dl.body.get(2, [])))
        if dl.result is not None:
            out["result"] = RESULT_NAMES.get(dl.result, dl.result)
    elif dl.mtype == m.CONFIG:
        out["settings"] = {CONFIG_NAMES.get(k, str(k)): v for k, v in dl.body.get(0, {}).items()}
    return out


def record_json(seq: int, r: Record) -> dict[str, Any]:
    return {
        "seq": seq,
        "id": r.idempotency_key,
        "node": format_node_id(r.node_id),
        "counter": r.counter,
        "type": r.kind,
        "rx_time": r.rx_time,
        "fields": _json_safe(r.fields),
        "receptions": r.receptions,
        "rssi": r.best_rssi,
        "snr": r.best_snr,
        "gateway": r.gateway_id,
    }


def parse_downlink_request(doc: Any, node_kind: str | None = None) -> tuple[int, dict[int, Any], float | None]:
    """API JSON -> (mtype, body, ttl_s). Raises DownlinkRejected naming the problem.

    With the node's kind, a COMMAND is checked against the op catalogue (gateway/ops.py):
    kind, argument count and ranges; named arguments become the list on the air.
    """
    if not isinstance(doc, dict):
        raise DownlinkRejected("the request must be a JSON object")
    ttl = doc.get("ttl_s")
    if ttl is not None and (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or (isinstance(ttl, float) and not math.isfinite(ttl))
    ):
        raise DownlinkRejected("ttl_s must be a number of seconds")
    kind = doc.get("type", "command")
    allowed = {
        "command": {"type", "op", "args", "ttl_s"},
        "config": {"type", "settings", "ttl_s"},
        "time": {"type", "ttl_s"},
    }
    if not isinstance(kind, str) or kind not in allowed:  # a list or an object is no type (and unhashable)
        raise DownlinkRejected(f"type {str(kind)[:40]!r} is not one of command, config, time")
    extra = sorted(set(doc) - allowed[kind])
    if extra:
        raise DownlinkRejected(f"unknown field {extra[0]!r} for a {kind}")
    if kind == "time":
        return m.TIME, {}, ttl
    if kind == "config":
        settings = doc.get("settings")
        if not isinstance(settings, dict) or not settings:
            raise DownlinkRejected("settings must be a non-empty object")
        body: dict[int, Any] = {}
        for name, v in settings.items():
            key = CONFIG_KEYS.get(name)
            if key is None:
                raise DownlinkRejected(f"unknown setting {name!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
            body[key] = v
        return m.CONFIG, {0: body}, ttl
    op = doc.get("op")
    if isinstance(op, str):
        if op not in OPS:
            raise DownlinkRejected(f"unknown op {op!r} (known: {', '.join(OPS)})")
        op = OPS[op]
    if isinstance(op, bool) or not isinstance(op, int):
        raise DownlinkRejected("op must be an operation name or number")
    args = doc.get("args", [])
    if node_kind is not None:
        try:
            args = ops.check_command(op, args, node_kind)
        except ops.CommandRefused as e:
            raise DownlinkRejected(str(e)) from None
    elif not isinstance(args, list):
        raise DownlinkRejected("args must be a list of integers")
    body = {1: op}
    if args:
        body[2] = args
    return m.COMMAND, body, ttl


async def queue_command(registry: Registry, downlinks: Downlinks, node_id: int, doc: Any) -> Downlink:
    """Queue a downlink from a command document (`POST /nodes/{id}/commands`' body): the one path
    every command takes, from this API or from the MQTT upstream (gateway/upstream_mqtt.py).
    Raises DownlinkRejected (404 unknown node, 400 bad document, 429 queue full)."""
    entry = registry.get(node_id)
    if entry is None:
        raise DownlinkRejected(f"node {node_id:08x} is not in the registry", 404)
    mtype, body, ttl = parse_downlink_request(doc, entry.kind)
    return await downlinks.enqueue(node_id, mtype, body, ttl)


def _load_web() -> dict[str, tuple[bytes, str, str]]:
    """The page's files, read once: name -> (bytes, content type, ETag). Only known file types."""
    out = {}
    for p in sorted(WEB_DIR.iterdir()) if WEB_DIR.is_dir() else ():
        ctype = WEB_TYPES.get(p.suffix)
        if ctype is not None and p.is_file():
            body = p.read_bytes()
            out[p.name] = (body, ctype, '"%s"' % sha256(body).hexdigest()[:32])
    if "index.html" not in out:
        raise FileNotFoundError(f"the technician page is missing: {WEB_DIR / 'index.html'}")
    return out


class Api:
    """The HTTP server: `await start()` binds (port 0 picks a free one: see `.port`), `await stop()`."""

    def __init__(
        self,
        *,
        registry: Registry,
        store: Store,
        pipeline: Pipeline,
        downlinks: Downlinks,
        token: str,
        host: str = "127.0.0.1",
        port: int = 8760,
        upstream: Any = None,
        transports: Iterable[Any] = (),
        clock: Callable[[], float] = time.time,
        history: History | None = None,
        ui: bool = True,
        silent_after_s: float = health.SILENT_AFTER_S,
        notifier: Notifier | None = None,
        requests_feed: RequestsFeed | None = None,
        multicast_repair_s: float = REPAIR_AFTER_S,
        calendars: Any = None,
        campaigns: Campaigns | None = None,
        fuota: FuotaSettings | None = None,
    ) -> None:
        if not token:
            raise ValueError("the API needs a token")
        self.history = history
        self.notifier = notifier
        self.requests_feed = requests_feed
        self.calendars = calendars  # gateway/calendar_sync.py CalendarSync, None when [calendars] is off
        self.campaigns = campaigns  # gateway/campaigns.py; None: the campaign endpoints answer 404
        self.silent_after_s = silent_after_s
        self.registry = registry
        self.store = store
        self.pipeline = pipeline
        self.downlinks = downlinks
        self.upstream = upstream
        self.transports = list(transports)
        self.host = host
        self.port = port
        self.clock = clock
        self._token = ("Bearer " + token).encode()
        self._limiter = RateLimiter()
        self._runner: web.AppRunner | None = None
        self.started = clock()
        self._web = _load_web() if ui else {}
        # multicast through the first transport that can send at any time (a packet forwarder)
        radio = next((t for t in self.transports if hasattr(t, "transmit_now")), None)
        self.multicast = Multicast(registry, store, downlinks, radio)
        self.groups = GroupCommands(
            registry, store, downlinks, clock=clock, multicast=self.multicast, repair_after_s=multicast_repair_s
        )
        # release images over LoRa (gateway/fuota.py): what campaigns deliver through
        self.fuota = FuotaDelivery(registry, store, downlinks, self.multicast, fuota)
        app = web.Application(middlewares=[self._headers, self._auth], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/healthz", self.healthz)
        if ui:
            r.add_get("/", self.ui_root)
            r.add_get(UI_PREFIX + "{name:[A-Za-z0-9_.-]*}", self.ui_file)
        r.add_get("/metrics", self.metrics)
        r.add_get("/nodes", self.list_nodes)
        r.add_get("/nodes/{id}", self.get_node)
        r.add_put("/nodes/{id}", self.put_node)
        r.add_delete("/nodes/{id}", self.delete_node)
        r.add_post("/nodes/{id}/commands", self.post_command)
        r.add_get("/nodes/{id}/commands", self.node_commands)
        r.add_get("/commands", self.list_commands)
        r.add_get("/commands/{id}", self.get_command)
        r.add_delete("/commands/{id}", self.delete_command)
        r.add_get("/quarantine", self.quarantine)
        r.add_get("/nodes/{id}/readings", self.node_readings)
        r.add_put("/nodes/{id}/release", self.put_node_release)
        r.add_delete("/nodes/{id}/release", self.delete_node_release)
        r.add_put("/groups/{name}/release", self.put_group_release)
        r.add_get("/ops", self.list_ops)
        r.add_get("/groups", self.list_groups)
        r.add_post("/groups", self.post_group)
        r.add_get("/groups/{name}", self.get_group)
        r.add_put("/groups/{name}", self.put_group)
        r.add_delete("/groups/{name}", self.delete_group)
        r.add_post("/groups/{name}/commands", self.post_group_command)
        r.add_get("/groups/{name}/commands", self.group_commands)
        r.add_get("/groups/{name}/commands/{id}", self.get_group_command)
        r.add_post("/groups/{name}/multicast", self.post_group_multicast)
        r.add_get("/calendars", self.list_calendars)
        r.add_get("/time", self.get_time)
        r.add_get("/nodes/{id}/window", self.node_window)
        r.add_get("/alarms", self.list_alarms)
        r.add_post("/alarms/{id}/{code}/ack", self.ack_alarm)
        r.add_get("/notifications", self.list_notifications)
        r.add_get("/requests", self.list_requests)
        CampaignRoutes(campaigns).add(r)
        self.app = app

    async def start(self) -> None:
        self._runner = _Runner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound one: port 0 picks a free port
        log.info("api listening", extra={"host": self.host, "port": self.port})
        self.groups.start()  # multicasts still waiting for their unicast repair

    async def stop(self) -> None:
        await self.groups.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.requests_feed is not None:
            await self.requests_feed.close()

    # ------------------------------------------------------------ auth

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:  # redirects, 405s: headers on those too
            resp = e
        except Exception:  # a bug: a JSON 500 with the headers, the details only in the log
            if self._limiter.allow("internal_error")[0]:
                log.exception("api handler failed", extra={"method": request.method, "path": request.path[:200]})
            resp = _error(500, "internal error")
        _lock_down(resp)
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    def _public(self, path: str) -> bool:
        return path in PUBLIC or (bool(self._web) and (path == "/" or path.startswith(UI_PREFIX)))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self._public(request.path):
            got = request.headers.get("Authorization", "").encode("utf-8", "replace")
            exact = not getattr(request.protocol, "auth_whitespace", False)  # no trailing space
            if not hmac.compare_digest(got, self._token) or not exact:
                return web.json_response(
                    {"error": "a valid bearer token is needed"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="lumeau-gateway"'},
                )
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return _error(e.status, e.reason)
            raise

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _node_id(request: web.Request) -> int:
        try:
            return parse_node_id(request.match_info["id"])
        except ValueError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(e)}), content_type="application/json") from None

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return parse_body(await request.read())
        except BodyError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(e)}), content_type="application/json") from None

    @staticmethod
    def _limit(request: web.Request) -> int:
        try:
            n = int(request.query.get("limit", LIST_MAX))
        except ValueError:
            n = -1
        if not 1 <= n <= LIST_MAX:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"limit must be 1..{LIST_MAX}"}), content_type="application/json"
            )
        return n

    @staticmethod
    def _states(request: web.Request) -> list[str] | None:
        s = request.query.get("state")
        if not s:
            return None
        states = s.split(",")
        bad = [x for x in states if x not in ("queued", "sent", "acked", "failed", "expired")]
        if bad:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"unknown state {bad[0]!r}"}), content_type="application/json"
            )
        return states

    def _node_json(self, entry: NodeEntry) -> dict[str, Any]:
        out = entry.public()
        st = self.store.node_state(entry.node_id) or {}
        readings = st.get("readings", {})
        supply = None
        for kind in ("status", "irrigation"):
            f = readings.get(kind, {}).get("fields", {})
            if "supply_voltage" in f:
                supply = f["supply_voltage"]
                break
        out.update(
            last_seen=st.get("last_seen"),
            rssi=st.get("rssi"),
            snr=st.get("snr"),
            gateway=st.get("gateway_id"),
            reported_firmware=st.get("firmware"),
            release=st.get("release"),
            supply_voltage=supply,
            readings=readings,
            open_alarms=list(st.get("open_alarms", {}).values()),
            downlinks_waiting=self.downlinks.pending(entry.node_id),
            bad_mic=self.pipeline.bad_mic_by_node.get(entry.node_id, 0),
            health=health.assess(st or None, self.clock(), self.silent_after_s),
        )
        return _json_safe(out)

    async def _change_registry(self, edit: Callable[[Registry], Any]) -> tuple[Any, web.Response | None]:
        """Edit the registry through its locked merge with the file (gateway/registry.py).

        Returns (what `edit` returned, None), or (None, the error response). Nodes whose key
        the change replaced (here or in the file meanwhile) get fresh counter windows."""
        try:
            done, rekeyed = self.registry.change(edit)
        except GroupExists as e:
            return None, _error(409, str(e))
        except RegistryError as e:
            return None, _error(400, str(e))
        except OSError as e:
            return None, _error(500, f"registry not saved: {e}")
        await self.pipeline.reset_nodes(rekeyed)  # all forgotten before the first await
        for n in rekeyed:
            log.info("node re-keyed: counters reset", extra={"node": format_node_id(n)})
        return done, None

    # ------------------------------------------------------------ handlers

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_nodes(self, request: web.Request) -> web.Response:
        limit = self._limit(request)
        entries = sorted(self.registry, key=lambda e: e.node_id)[:limit]
        return web.json_response({"nodes": [self._node_json(e) for e in entries], "total": len(self.registry)})

    async def get_node(self, request: web.Request) -> web.Response:
        entry = self.registry.get(self._node_id(request))
        if entry is None:
            return _error(404, "no such node")
        return web.json_response(self._node_json(entry))

    async def put_node(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        doc = await self._body(request)
        if not isinstance(doc, dict):
            return _error(400, "the body must be a JSON object")
        if "key_gen" in doc:  # counted by the registry on each new key (SPEC §4): never set by a client
            return _error(400, f"node {node_id:08x}: key_gen: set by the gateway when the root key changes")

        def edit(reg: Registry) -> tuple[NodeEntry, NodeEntry | None]:
            # on the file as it is now (issue 17): a node provisioned offline meanwhile is kept
            old = reg.get(node_id)
            merged = dict(old.to_dict()) if old is not None else {}
            merged.update(doc)
            if "root_key" not in merged:
                raise RegistryError(f"node {node_id:08x}: root_key: required to add a node")
            entry = NodeEntry.from_dict(node_id, merged)
            reg.upsert(entry)
            return entry, old

        done, refused = await self._change_registry(edit)
        if refused is not None:
            return refused
        entry, old = done
        log.info("node %s", "updated" if old else "added", extra={"node": format_node_id(node_id)})
        return web.json_response(self._node_json(entry), status=200 if old else 201)

    async def delete_node(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        old, refused = await self._change_registry(lambda reg: reg.remove(node_id))
        if refused is not None:
            return refused
        if old is None:
            return _error(404, "no such node")
        if self.history is not None:
            self.history.forget(node_id)
        log.info("node removed", extra={"node": format_node_id(node_id)})
        return web.Response(status=204)

    async def post_command(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        doc = await self._body(request)
        try:
            dl = await queue_command(self.registry, self.downlinks, node_id, doc)
        except DownlinkRejected as e:
            return _error(e.status, str(e))
        return web.json_response(downlink_json(dl), status=201)

    async def node_commands(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        dls = self.store.downlinks(node_id=node_id, states=self._states(request), limit=self._limit(request))
        return web.json_response({"commands": [downlink_json(d) for d in dls]})

    async def list_commands(self, request: web.Request) -> web.Response:
        dls = self.store.downlinks(states=self._states(request), limit=self._limit(request))
        return web.json_response({"commands": [downlink_json(d) for d in dls]})

    def _command_id(self, request: web.Request) -> int:
        text = request.match_info["id"]
        if text.isascii() and text.isdigit() and len(text) <= 18:  # an SQLite integer: 63 bits
            return int(text)
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "command ids are integers of 1 to 18 digits"}), content_type="application/json"
        )

    async def get_command(self, request: web.Request) -> web.Response:
        dl = self.store.downlink(self._command_id(request))
        if dl is None:
            return _error(404, "no such command")
        out = downlink_json(dl)
        if dl.state == "acked" and dl.command_id is not None and self.history is not None:
            ack = self.history.command_ack(dl.node_id, dl.command_id)
            if ack is not None and "value" in ack:
                out["value"] = ack["value"]["value"]
        return web.json_response(out)

    async def delete_command(self, request: web.Request) -> web.Response:
        id_ = self._command_id(request)
        dl = await self.downlinks.cancel(id_)
        if dl is None:
            return _error(404 if self.store.downlink(id_) is None else 409, "no such open command")
        return web.json_response(downlink_json(dl))

    async def quarantine(self, request: web.Request) -> web.Response:
        limit = min(self._limit(request), 100)
        batches = self.store.quarantined(limit)
        for b in batches:
            b["records"] = [record_json(s, r) for s, r in b["records"]]
        return web.json_response({"batches": batches, "records": self.store.quarantine_count()})

    async def node_readings(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        if self.registry.get(node_id) is None:
            return _error(404, "no such node")
        types = request.query.get("type")
        limit = self._limit(request) if "limit" in request.query else None
        if self.history is None:
            return _error(404, "this gateway keeps no history")
        try:
            readings = self.history.recent(node_id, types.split(",") if types else None, limit)
        except ValueError as e:
            return _error(400, str(e))
        return web.json_response(
            {"node": format_node_id(node_id), "per_type": self.history.per_type, "readings": _json_safe(readings)}
        )

    async def list_ops(self, request: web.Request) -> web.Response:
        return web.json_response({"ops": ops.catalogue()})

    # ------------------------------------------------------------ groups (gateway/groups.py)

    @staticmethod
    def _group_name(request: web.Request) -> str:
        try:
            return check_group_name(request.match_info["name"])
        except RegistryError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(e)}), content_type="application/json") from None

    async def _save_group(self, name: str, doc: Any, create: bool) -> web.Response:
        if not isinstance(doc, dict):
            return _error(400, "the body must be a JSON object")

        def edit(reg: Registry) -> tuple[Group, Group | None]:
            old = reg.group(name)
            merged = dict(old.to_dict()) if old is not None and not create else {}
            merged.update(doc)
            group = Group.from_dict(name, merged)
            return group, reg.put_group(group, create=create)

        done, refused = await self._change_registry(edit)
        if refused is not None:
            return refused
        group, old = done
        log.info("group %s", "updated" if old else "added", extra={"group": name, "members": len(group.members)})
        out = group.public()
        if self.multicast.radio is not None and self.multicast.lamps(group):
            out["provisioning"] = await self.multicast.provision(group)  # the key to its lamps (join_group)
        return web.json_response(out, status=200 if old else 201)

    # ------------------------------------------------------------ releases

    async def _expected(self, request: web.Request) -> dict[str, str]:
        try:
            return releases.parse_expected(await self._body(request))
        except releases.ReleaseError as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(e)}), content_type="application/json") from None

    async def _set_release(self, node_ids: list[int], expected: dict[str, str] | None) -> dict[int, dict[str, Any]]:
        rels = await self.store.expect_release(node_ids, expected, self.clock())
        log.info(
            "expected release %s",
            "set" if expected else "cleared",
            extra={
                "nodes": len(node_ids),
                "node": format_node_id(node_ids[0]) if len(node_ids) == 1 else None,
                "version": expected and expected["version"],
            },
        )
        return rels

    async def put_node_release(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        expected = await self._expected(request)
        if node_id not in self.registry:
            return _error(404, "no such node")
        try:
            rel = (await self._set_release([node_id], expected))[node_id]
        except StoreError as e:
            return _error(503, f"not saved: {e}")
        return web.json_response({"id": format_node_id(node_id), "release": rel})

    async def delete_node_release(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        if node_id not in self.registry:
            return _error(404, "no such node")
        try:
            rel = (await self._set_release([node_id], None))[node_id]
        except StoreError as e:
            return _error(503, f"not saved: {e}")
        return web.json_response({"id": format_node_id(node_id), "release": rel})

    async def put_group_release(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        expected = await self._expected(request)
        g = self.registry.group(name)
        if g is None:
            return _error(404, "no such group")
        if not g.members:
            return web.json_response({"group": name, "release": expected, "nodes": {}})
        try:
            rels = await self._set_release(list(g.members), expected)
        except StoreError as e:
            return _error(503, f"not saved: {e}")
        states = {format_node_id(n): r["state"] for n, r in rels.items()}
        return web.json_response({"group": name, "release": expected, "nodes": states})

    async def post_group_multicast(self, request: web.Request) -> web.Response:
        g = self.registry.group(self._group_name(request))
        if g is None:
            return _error(404, "no such group")
        if self.multicast.radio is None:
            return _error(409, "no radio that can send at any time (a packet forwarder: [semtech])")
        done = await self.multicast.provision(g)
        return web.json_response({"provisioning": done, "multicast": self.multicast.status(g)})

    async def list_groups(self, request: web.Request) -> web.Response:
        return web.json_response({"groups": [g.public() for g in self.registry.groups()]})

    async def post_group(self, request: web.Request) -> web.Response:
        doc = await self._body(request)
        if not isinstance(doc, dict):
            return _error(400, "the body must be a JSON object")
        doc = dict(doc)
        try:
            name = check_group_name(doc.pop("name", None))
        except RegistryError as e:
            return _error(400, str(e))
        return await self._save_group(name, doc, create=True)

    async def get_group(self, request: web.Request) -> web.Response:
        g = self.registry.group(self._group_name(request))
        if g is None:
            return _error(404, "no such group")
        kinds = ("lighting",)  # what a lamp's op would take: the group's delivery for set_level
        mode, why = self.multicast.choose(g, kinds)
        return web.json_response(
            {**g.public(), "multicast": {**self.multicast.status(g), "delivery": {"mode": mode, "reason": why}}}
        )

    async def put_group(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        return await self._save_group(name, await self._body(request), create=False)

    async def delete_group(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        old, refused = await self._change_registry(lambda reg: reg.remove_group(name))
        if refused is not None:
            return refused
        if old is None:
            return _error(404, "no such group")
        log.info("group removed", extra={"group": name})
        return web.Response(status=204)

    async def post_group_command(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        doc = await self._body(request)
        g = self.registry.group(name)
        if g is None:
            return _error(404, "no such group")
        try:
            out = await self.groups.command(g, doc)
        except GroupCommandError as e:
            return _error(e.status, str(e))
        except OSError as e:
            return _error(500, f"group command queued but its record not saved: {e}")
        return web.json_response(out, status=201)

    async def group_commands(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        if self.registry.group(name) is None:
            return _error(404, "no such group")
        return web.json_response({"commands": self.groups.commands(name)})

    async def get_group_command(self, request: web.Request) -> web.Response:
        name = self._group_name(request)
        out = self.groups.progress(self._command_id(request), name)
        if out is None:
            return _error(404, "no such group command")
        return web.json_response(out)

    # ------------------------------------------------------------ the web page

    # ------------------------------------------------------------ calendars

    async def list_calendars(self, request: web.Request) -> web.Response:
        """The calendars compiled, and per node seen: the hash assigned, the one it holds, in sync;
        `configured` false (and nothing else) when `[calendars]` is off."""
        if self.calendars is None:  # 200, as GET /requests: the page asks on every refresh
            return web.json_response({"configured": False, "calendars": [], "nodes": {}, "counts": {}})
        return web.json_response({"configured": True, **self.calendars.status()})

    async def get_time(self, request: web.Request) -> web.Response:
        """Automatic time (gateway/timesync.py): per node heard, its offset's bound, drift, next re-sync."""
        ts = self.downlinks.timesync
        if ts is None:
            return _error(404, "automatic time is off ([downlinks] auto_time = false)")
        heard = ts.nodes()
        head = {"threshold_s": ts.threshold_s, "at": ts.clock(), "total": len(heard), "counts": dict(ts.counts)}
        if request.query.get("plan") == "1":  # only when each re-sync falls due: small enough for every node
            plan = {}
            for node_id in heard:
                d = ts.describe(node_id)
                if d is not None:
                    plan[format_node_id(node_id)] = d["resync_at"]
            return web.json_response({**head, "resync_at": plan})
        nodes = {}
        for node_id in heard[: self._limit(request)]:
            d = ts.describe(node_id)
            if d is not None:
                nodes[format_node_id(node_id)] = d
        return web.json_response({**head, "nodes": nodes})

    async def node_window(self, request: web.Request) -> web.Response:
        node_id = self._node_id(request)
        if self.registry.get(node_id) is None:
            return _error(404, "no such node")
        w = self.downlinks.window(node_id)
        if w is None:
            return _error(404, "no radio uplink of this node since the gateway started")
        return web.json_response({"node": format_node_id(node_id), **w})

    # ------------------------------------------------------------ alarm notifications

    def _notifier(self) -> Notifier:
        if self.notifier is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "alarm notifications are off ([notify] enabled = false)"}),
                content_type="application/json",
            )
        return self.notifier

    async def list_alarms(self, request: web.Request) -> web.Response:
        n = self._notifier()
        rows = n.table.alarms(open_only=request.query.get("all") not in ("1", "true"), limit=self._limit(request))
        for r in rows:
            r["node"] = format_node_id(r.pop("node_id"))
        return web.json_response({"alarms": _json_safe(rows)})

    async def ack_alarm(self, request: web.Request) -> web.Response:
        n = self._notifier()
        node_id = self._node_id(request)
        code = request.match_info["code"]
        try:
            zone, by = ack_args(await self._body(request) if request.can_read_body else None)
        except ValueError as e:
            return _error(400, str(e))
        cycles = await n.ack(node_id, code, zone, by)
        if not cycles:
            return _error(404, f"no open {code} alarm of node {format_node_id(node_id)} waits for an acknowledgement")
        return web.json_response({"acked": cycles})

    async def list_notifications(self, request: web.Request) -> web.Response:
        n = self._notifier()
        s = request.query.get("state")
        states = tuple(s.split(",")) if s else None
        rows = n.table.outbox(states, limit=self._limit(request))
        shown = [r.public(redact(Target(r.channel, r.recipient))) for r in rows]  # a webhook: scheme and host
        return web.json_response({"notifications": shown, "counts": n.table.counts()})

    async def ui_root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(UI_PREFIX)

    async def ui_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"] or "index.html"
        f = self._web.get(name)
        if f is None:
            return _error(404, "no such file")
        body, ctype, etag = f
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if ctype == "text/html":
            headers["Content-Security-Policy"] = PAGE_CSP
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)

    # ------------------------------------------------------------ metrics

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.render_metrics(),
            content_type="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
            charset="utf-8",
        )

    def render_metrics(self) -> str:
        p, s, d = self.pipeline, self.store, self.downlinks
        x = Metrics()
        x.family(
            "lumeau_frames_received_total",
            "counter",
            "Receptions handed to the pipeline, by transport.",
            [({"transport": t}, n) for t, n in sorted(p.received.items())],
        )
        x.family("lumeau_frames_accepted_total", "counter", "Frames verified and durably stored.", [({}, p.accepted)])
        x.family(
            "lumeau_frames_duplicate_total",
            "counter",
            "Copies of stored frames heard again (other radios, retries).",
            [({}, p.duplicates)],
        )
        rejected = dict(p.rejected)
        for reason in REASONS:  # known reasons are always present, so alerts can use rate()
            if not any(r == reason for r, _t in rejected):
                rejected[(reason, "")] = 0
        x.family(
            "lumeau_frames_rejected_total",
            "counter",
            "Receptions rejected, by reason and transport.",
            [({"reason": r, "transport": t}, n) for (r, t), n in sorted(rejected.items())],
        )
        x.family("lumeau_pipeline_inflight", "gauge", "Receptions queued or committing.", [({}, p.inflight)])
        x.family(
            "lumeau_release_rollbacks_total",
            "counter",
            "Nodes seen back on another release than the one expected (a rollback), since start.",
            [({}, s.release_rollbacks)],
        )
        by_state = s.release_states()
        x.family(
            "lumeau_nodes_release",
            "gauge",
            "Nodes with an expected release, by state (current, updating, rolled_back).",
            [({"state": k}, v) for k, v in by_state.items()],
        )
        if self.campaigns is not None:
            by_state, by_node = self.campaigns.figures()
            x.family(
                "lumeau_campaigns",
                "gauge",
                "Firmware update campaigns kept, by state (running, paused, done, halted, aborted).",
                [({"state": k}, v) for k, v in by_state.items()],
            )
            x.family(
                "lumeau_campaign_nodes",
                "gauge",
                "Nodes of running and paused campaigns, by state (pending ... healthy, rolled_back, failed).",
                [({"state": k}, v) for k, v in by_node.items()],
            )
        guard = p.mic_guard.stats()
        x.family(
            "lumeau_mic_lockouts_total",
            "counter",
            "(link, node) lockouts started after too many bad MICs (gateway/micguard.py).",
            [({}, guard["lockouts"])],
        )
        x.family(
            "lumeau_mic_locked",
            "gauge",
            "(link, node) pairs locked out now; their receptions are rejected as mic_lockout.",
            [({}, guard["locked"])],
        )
        x.family(
            "lumeau_mic_tracked",
            "gauge",
            "(link, node) pairs with a bad-MIC bucket (bounded by MAX_TRACKED).",
            [({}, guard["tracked"])],
        )
        x.family(
            "lumeau_admission_path",
            "gauge",
            "1 for the admission path in use: compiled (gateway/_fastadmit.c) or python (the fallback).",
            [({"path": q}, int(p.admission_path == q)) for q in ("compiled", "python")],
        )
        x.family(
            "lumeau_admission_compiled_total",
            "counter",
            "Receptions the compiled path answered, recognised as a copy, or left to the Python path.",
            [({"outcome": o}, n) for o, n in p.admission_counts().items()],
        )
        x.family("lumeau_queue_records", "gauge", "Records waiting for the upstream.", [({}, s.count())])
        x.family("lumeau_queue_max_records", "gauge", "The queue's bound.", [({}, s.max_records)])
        x.family("lumeau_queue_bytes", "gauge", "Database and WAL size on disk.", [({}, s.size_bytes())])
        x.family(
            "lumeau_queue_evicted_total",
            "counter",
            "Records evicted or dropped because the queue was full.",
            [({}, s.evicted_total)],
        )
        x.family(
            "lumeau_quarantine_records",
            "gauge",
            "Records of batches the upstream refused (4xx).",
            [({}, s.quarantine_count())],
        )
        x.family("lumeau_quarantined_total", "counter", "Records ever quarantined.", [({}, s.quarantined_total)])
        oldest = s.oldest_rx_time()
        lag = max(0.0, self.clock() - oldest) if oldest is not None else 0.0
        x.family(
            "lumeau_upstream_lag_seconds",
            "gauge",
            "Age of the oldest record not yet accepted upstream (0: all delivered).",
            [({}, lag)],
        )
        x.family("lumeau_store_commits_total", "counter", "Store transactions (group commits).", [({}, s.commits)])
        x.family("lumeau_store_commit_seconds_total", "counter", "Time spent committing.", [({}, s.commit_seconds)])
        x.family("lumeau_store_committed_records_total", "counter", "Records committed.", [({}, s.committed_records)])
        full = s.full_figures()
        x.family(
            "lumeau_store_full",
            "gauge",
            "1 while the disk is full: only alarms are stored (gateway/README.md, disk full).",
            [({}, int(s.full))],
        )
        x.family("lumeau_store_full_events_total", "counter", "Times the disk went full.", [({}, full["full_events"])])
        x.family(
            "lumeau_store_commit_failures_total",
            "counter",
            "Group commits that failed, by cause (full: no room; other: I/O error or a bug).",
            [({"cause": "full"}, full["commit_failures_full"]), ({"cause": "other"}, full["commit_failures_other"])],
        )
        x.family(
            "lumeau_store_refused_full_total",
            "counter",
            "Records refused without being written while the disk was full (counted as store_error).",
            [({}, full["refused_full"])],
        )
        x.family(
            "lumeau_downlink_queue_depth", "gauge", "Downlinks queued or awaiting their answer.", [({}, d.depth())]
        )
        x.family(
            "lumeau_downlinks_total",
            "counter",
            "Downlink outcomes.",
            [({"outcome": k}, v) for k, v in sorted(d.counts.items())],
        )
        x.family("lumeau_nodes_registered", "gauge", "Nodes in the registry.", [({}, len(self.registry))])
        x.family("lumeau_uptime_seconds", "gauge", "Since the API started.", [({}, self.clock() - self.started)])
        stats = getattr(self.upstream, "stats", None)
        if callable(stats):
            upstream_families(x, stats())
        samples: list[tuple[dict[str, str], float]] = []
        for t in self.transports:
            stats = getattr(t, "stats", None)
            if not callable(stats):
                continue
            kind = snake(type(t).__name__).removesuffix("_transport").removesuffix("_server")
            instance = str(getattr(t, "port", "") or "")
            for k, v in sorted(stats().items()):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    samples.append(({"transport": kind, "instance": instance, "counter": k}, v))
        x.family("lumeau_transport_stat", "gauge", "Transport counters and states (transports' stats()).", samples)
        if self.calendars is not None:
            calendar_families(x, self.calendars)
        if self.notifier is not None:
            n = self.notifier
            x.family(
                "lumeau_notifications_total",
                "counter",
                "Alarm notification outcomes since start: sent, retried (a failed attempt), failed (refused for good).",
                [({"outcome": k}, n.counts[k]) for k in ("sent", "retried", "failed")],
            )
            counts = n.table.counts()
            x.family(
                "lumeau_notification_outbox",
                "gauge",
                "Notification outbox rows by state (pending: waiting or retrying; collecting: open digests).",
                [
                    ({"state": k}, counts.get(k, 0))
                    for k in ("pending", "collecting", "sent", "failed", "skipped", "digested")
                ],
            )
        return x.text()

    async def list_requests(self, request: web.Request) -> web.Response:
        if self.requests_feed is None:
            return web.json_response({"configured": False, "requests": []})
        return web.json_response(await self.requests_feed.snapshot())
