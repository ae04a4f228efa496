"""The MQTT upstream's wire shapes: records -> messages, and commands in. Sans-I/O.

Pure functions only (no socket, no clock, no store): gateway/upstream_mqtt.py
does the I/O and calls these. Two shapes (config `[mqtt] shape`):

ThingsBoard Gateway MQTT API (`thingsboard`), as ThingsBoard documents it
("MQTT Gateway API Reference"):
  v1/gateway/connect      {"device": "0000000a", "type": "lighting"}: once per device and
                          connection, before its first data (the type is the device profile)
  v1/gateway/disconnect   {"device": "0000000a"}: every connected device at a clean stop
  v1/gateway/attributes   {"0000000a": {"kind", "name", "site", "lat", "lon", ...}}: registry
                          facts at connect; a HELLO's values (firmware, reset cause, ...)
  v1/gateway/telemetry    {"0000000a": [{"ts": ms, "values": {...}}, ...], ...}: a batch's
                          records grouped by device, each device's in arrival order; split into
                          several messages under `max_payload_bytes` (ThingsBoard's default MQTT
                          limit is 64 KiB)
  v1/gateway/rpc          in: {"device", "data": {"id", "method", "params"}}; out, the reply:
                          {"device", "id", "data": {...}}
The device name is the node id (8 hex digits): stable for the node's life, whatever the
registry later calls it; the registry's name travels as an attribute.

Plain topics (`plain`), under `lumeau/<site>` (the gateway's site, `[mqtt] site`):
  lumeau/<site>/<node>/<type>    one record as in the native format (gateway/FORMATS.md, /2
                                 record object: "id", "node", "counter", "time", "fields", ...),
                                 retained (a subscriber gets each node's last state of each type
                                 at once), except cmd_ack (an answer, not a state)
  lumeau/<site>/status           "online" / "offline", retained; "offline" is also the gateway's
                                 MQTT will, so a lost gateway shows as offline
  lumeau/<site>/<node>/command   in: the local HTTP API's command document (gateway/api.py,
                                 POST /nodes/{id}/commands) plus an optional "request_id"
  lumeau/<site>/<node>/reply     out: {"request_id", "state": "queued", "command": {...}} or
                                 {"request_id", "error"} at once; {"request_id", "state": "acked",
                                 "result", "value"} when the node's CMD_ACK is delivered

A command (RPC or plain) becomes the same document the HTTP API takes, and
gateway/upstream_mqtt.py queues it through the same function (`api.queue_command`,
which POST /nodes/{id}/commands calls): one validation, one expiry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import bodies, formats
from gateway.api import BodyError, parse_body
from gateway.model import Record
from protocol import messages as m

PLAIN = "plain"
THINGSBOARD = "thingsboard"
SHAPES = (PLAIN, THINGSBOARD)

TB_CONNECT = "v1/gateway/connect"
TB_DISCONNECT = "v1/gateway/disconnect"
TB_ATTRIBUTES = "v1/gateway/attributes"
TB_TELEMETRY = "v1/gateway/telemetry"
TB_RPC = "v1/gateway/rpc"
TB_DEFAULT_MAX_PAYLOAD = 65536  # ThingsBoard's default MQTT payload limit (transport.mqtt.netty.max_payload_size)

PREFIX = "lumeau"
REQUEST_MAX = 16 * 1024  # bytes of an RPC or command message; a command document is far smaller
REQUEST_ID_MAX = 64  # characters of a plain command's request_id
# Kinds whose values go to telemetry under their own names; the others' values are prefixed by their
# kind ("event_code", "cmd_ack_result"), so an event's "value" never reads as a lamp's reading.
UNPREFIXED = frozenset(("light", "irrigation", "status"))
_SITE = re.compile(r"[^/+#\x00]{1,64}\Z")
_NODE = re.compile(r"[0-9a-f]{8}\Z")


@dataclass(frozen=True, slots=True)
class Publish:
    """One MQTT message to send (QoS 1)."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """A command asked over MQTT, as the HTTP API's document for `node_id`; `reply` says how to answer."""

    node_id: int
    doc: dict[str, Any]
    reply: ReplyTo


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the answers to one command go: a ThingsBoard RPC (device, id) or a plain request."""

    shape: str
    node_id: int
    request_id: Any  # the RPC's id, or the plain request_id (None: none given)


class RequestError(ValueError):
    """A command message that cannot be taken; `reply` is where to say so (None: it cannot be answered)."""

    def __init__(self, msg: str, reply: ReplyTo | None = None) -> None:
        super().__init__(msg)
        self.reply = reply


def check_site(site: str) -> str | None:
    """Why `site` cannot be a topic level (None: it can)."""
    if not _SITE.match(site):
        return f"{site!r} must be 1 to 64 characters without '/', '+', '#' (one topic level)"
    return None


def device_name(node_id: int) -> str:
    return "%08x" % node_id


def node_of_device(name: Any) -> int | None:
    """The node id a ThingsBoard device name (or a plain topic's node level) stands for, or None."""
    if isinstance(name, str) and _NODE.match(name):
        return int(name, 16)
    return None


def _json(doc: Any) -> bytes:
    return orjson.dumps(doc)


# ----------------------------------------------------------------- ThingsBoard


def tb_connect(node_id: int, kind: str) -> Publish:
    return Publish(TB_CONNECT, _json({"device": device_name(node_id), "type": kind}))


def tb_disconnect(node_id: int) -> Publish:
    return Publish(TB_DISCONNECT, _json({"device": device_name(node_id)}))


def tb_attributes(per_device: Mapping[int, Mapping[str, Any]]) -> Publish:
    return Publish(TB_ATTRIBUTES, _json({device_name(n): dict(a) for n, a in per_device.items()}))


def tb_values(r: Record) -> dict[str, Any]:
    """A record's telemetry values: its fields by name (prefixed by kind but for readings), and radio."""
    values = bodies.values(r.mtype, r.body)
    if r.kind not in UNPREFIXED:
        values = {f"{r.kind}_{k}": v for k, v in values.items()}
    if r.alarm:
        values["alarm"] = True
    if r.best_rssi is not None:
        values["rssi"] = r.best_rssi
    if r.best_snr is not None:
        values["snr"] = r.best_snr
    return values


def tb_telemetry(records: Sequence[Record], max_payload: int = TB_DEFAULT_MAX_PAYLOAD) -> list[Publish]:
    """Telemetry messages for `records` (in order), each at most `max_payload` bytes.

    ValueError when one record alone does not fit (or cannot be encoded: TypeError):
    the caller quarantines it."""
    out: list[Publish] = []
    chunk: dict[str, list[bytes]] = {}
    size = 2  # {}
    for r in records:
        dev = device_name(r.node_id)
        entry = _json({"ts": int(r.rx_time * 1000), "values": tb_values(r)})
        # what this entry adds: `"dev":[` ... `]` and a comma, or `,entry` inside the device's array
        grow = len(entry) + (1 if dev in chunk else len(dev) + 6)
        if 2 + len(dev) + 6 + len(entry) > max_payload:
            raise ValueError(f"record {r.idempotency_key} is {len(entry)} bytes: over max_payload_bytes")
        if size + grow > max_payload and chunk:
            out.append(_tb_chunk(chunk))
            chunk, size = {}, 2
            grow = len(entry) + len(dev) + 6
        chunk.setdefault(dev, []).append(entry)
        size += grow
    if chunk:
        out.append(_tb_chunk(chunk))
    return out


def _tb_chunk(chunk: dict[str, list[bytes]]) -> Publish:
    # assembled from the entries already encoded: each record is encoded once
    parts = [b'"' + dev.encode() + b'":[' + b",".join(es) + b"]" for dev, es in chunk.items()]
    return Publish(TB_TELEMETRY, b"{" + b",".join(parts) + b"}")


def tb_hello_attributes(r: Record) -> dict[str, Any]:
    """A HELLO's values as client attributes (firmware, kind, capabilities, config hash, reset cause)."""
    return {f"hello_{k}": (list(v) if isinstance(v, tuple) else v) for k, v in bodies.values(r.mtype, r.body).items()}


def tb_rpc_reply(reply: ReplyTo, data: Mapping[str, Any]) -> Publish:
    return Publish(TB_RPC, _json({"device": device_name(reply.node_id), "id": reply.request_id, "data": dict(data)}))


def parse_tb_rpc(payload: bytes) -> Command | None:
    """A ThingsBoard RPC to a device -> the HTTP API's command document. Raises RequestError.

    None for a reply (`{"device", "id", "data"}`): on v1/gateway/rpc the gateway hears its own
    replies when the broker is a plain one (mosquitto relays them back; ThingsBoard does not).

    `method` is a COMMAND op by name (`set_level`, as GET /ops lists them) or `config` /
    `time`; `params` the op's arguments (a list as on the air, or an object of named
    ones), a config's settings object, or nothing. An object may carry `ttl_s`.
    """
    doc = _strict(payload, "RPC")
    if not isinstance(doc, dict):
        raise RequestError("an RPC must be a JSON object")
    device = doc.get("device")
    data = doc.get("data")
    if "id" in doc and not (isinstance(data, dict) and "method" in data):
        return None
    node_id = node_of_device(device)
    rpc_id = data.get("id") if isinstance(data, dict) else None
    ok_id = isinstance(rpc_id, int) and not isinstance(rpc_id, bool) and 0 <= rpc_id < 2**63
    if node_id is None:
        raise RequestError(f"device {str(device)[:40]!r} is not a Lumeau node (8 hex digits)")
    if not isinstance(data, dict) or not ok_id:
        raise RequestError("an RPC needs data with an integer id")
    reply = ReplyTo(THINGSBOARD, node_id, rpc_id)
    method = data.get("method")
    params = data.get("params")
    if not isinstance(method, str) or not method:
        raise RequestError("method must be an operation name", reply)
    out: dict[str, Any]
    if method == "time":
        out = {"type": "time"}
        if isinstance(params, dict) and "ttl_s" in params:
            out["ttl_s"] = params["ttl_s"]
    elif method == "config":
        if not isinstance(params, dict):
            raise RequestError("config params must be an object of settings", reply)
        settings = dict(params)
        ttl = settings.pop("ttl_s", None)
        out = {"type": "config", "settings": settings}
        if ttl is not None:
            out["ttl_s"] = ttl
    else:
        out = {"op": method}
        if isinstance(params, dict):
            args = dict(params)
            ttl = args.pop("ttl_s", None)
            if ttl is not None:
                out["ttl_s"] = ttl
            if args:
                out["args"] = args
        elif isinstance(params, list):
            out["args"] = params
        elif params not in (None, "", {}):
            raise RequestError("params must be a list or an object of arguments", reply)
    return Command(node_id, out, reply)


# ----------------------------------------------------------------- plain topics


def plain_base(site: str) -> str:
    return f"{PREFIX}/{site}"


def plain_status(site: str, online: bool) -> Publish:
    return Publish(f"{PREFIX}/{site}/status", b"online" if online else b"offline", retain=True)


def plain_record(site: str, r: Record) -> Publish:
    doc = formats.native_record(r)
    return Publish(f"{PREFIX}/{site}/{device_name(r.node_id)}/{r.kind}", _json(doc), retain=r.kind != "cmd_ack")


def plain_command_filter(site: str) -> str:
    return f"{PREFIX}/{site}/+/command"


def plain_reply(reply: ReplyTo, site: str, doc: Mapping[str, Any]) -> Publish:
    return Publish(
        f"{PREFIX}/{site}/{device_name(reply.node_id)}/reply", _json({"request_id": reply.request_id, **doc})
    )


def parse_plain_command(site: str, topic: str, payload: bytes) -> Command:
    """A message on lumeau/<site>/<node>/command -> the HTTP API's command document. Raises RequestError."""
    levels = topic.split("/")
    node_id = node_of_device(levels[2]) if len(levels) == 4 and levels[3] == "command" else None
    if node_id is None or levels[:2] != [PREFIX, site]:
        raise RequestError(f"topic {topic[:80]!r} is not {PREFIX}/{site}/<node: 8 hex digits>/command")
    reply = ReplyTo(PLAIN, node_id, None)
    doc = _strict(payload, "command", reply)
    if not isinstance(doc, dict):
        raise RequestError("a command must be a JSON object", reply)
    doc = dict(doc)
    request_id = doc.pop("request_id", None)
    if request_id is not None:
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)) or len(str(request_id)) > 64:
            raise RequestError(f"request_id must be text or an integer of at most {REQUEST_ID_MAX} characters", reply)
        reply = ReplyTo(PLAIN, node_id, request_id)
    return Command(node_id, doc, reply)


# ----------------------------------------------------------------- both


def _strict(payload: bytes, what: str, reply: ReplyTo | None = None) -> Any:
    if len(payload) > REQUEST_MAX:
        raise RequestError(f"the {what} is {len(payload)} bytes, more than {REQUEST_MAX}", reply)
    try:
        return parse_body(payload)  # the local API's strict JSON: one parser for hostile input
    except BodyError as e:
        raise RequestError(f"the {what} is refused: {e}", reply) from None


def ack_answer(r: Record) -> dict[str, Any]:
    """What a CMD_ACK says, for a reply: {"success", "result", "value"?, "command_id"}."""
    v = bodies.values(m.CMD_ACK, r.body)
    out = {"success": v.get("result") == "ok", **v}
    return out


def command_id_of(r: Record) -> int | None:
    """The command id a CMD_ACK answers."""
    cid = r.body.get(0) if r.mtype == m.CMD_ACK else None
    return cid if isinstance(cid, int) else None
