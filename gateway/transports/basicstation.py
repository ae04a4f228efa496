"""LoRa Basics Station LNS protocol: the server side, over WebSocket with TLS and per-gateway tokens.

(Over 600 lines: one protocol's server -- discovery, the muxs connection, message checks, RX1 downlinks.)

Current commercial gateways run Semtech's Basics Station instead of (or beside)
the UDP packet forwarder; it connects out to its LNS over a WebSocket, so it is
authenticated by design: TLS with our certificate, and a token per gateway in
the `Authorization` header (the station's `tc.key` holds the header line,
`Authorization: Bearer <token>`).

Exchanges (Basics Station docs, "The LNS Protocol"):

  GET /router-info (WebSocket)   station -> {"router": <EUI>}; we answer
                                 {"router", "muxs", "uri": "wss://<host>/router-<eui>"}
                                 or {"router", "error"}, then close
  GET /router-<eui> (WebSocket)  the muxs connection, kept open:
    version        station -> us; we answer `router_config` (EU868, Lumeau's channels)
    propdf         station -> us: a proprietary frame, a Lumeau frame behind MHDR 0xE0
                   (protocol/proprietary.py, SPEC §7) -> a Reception for the pipeline
    updf, jreq, rejoin   LoRaWAN devices' frames: not ours, counted (`foreign_<msgtype>`), ignored
    dnmsg          us -> station: a downlink in the uplink's RX1 (class A: dC 0,
                   `xtime`/`rctx` of the uplink, RxDelay, RX1DR = the uplink's DR, RX1Freq = its Freq)
    dntxed         station -> us: the downlink `diid` went out: send_downlink returns

Decisions:

- Both endpoints need the gateway's token; an unknown router EUI, a missing or
  wrong token are refused and counted (`auth_refused`, `unknown_router`): HTTP
  403 before the upgrade on the muxs; on discovery, 403 before the upgrade
  without any known token, and an `error` answer when the token is another
  gateway's. At most MAX_DISCOVERING discovery exchanges run at once (503).
  The token is compared with hmac.compare_digest against the exact header value
  `Bearer <token>`; it is never logged. A second connection for an EUI
  replaces the first (a station reconnecting after a lost link).
- Duty cycle: router_config leaves `nodc` false, so the station enforces
  EU868's duty cycle on its own clock; a downlink it cannot send never gets a
  `dntxed`, which raises DownlinkError("timeout") after `dntxed_timeout` past
  RX1 (the caller keeps it for the next uplink).
- Receive time: upinfo `rxtime` (the station's UTC seconds) when it lies in
  2000-2100 and not after our clock (unless `trust_time`), else our clock.
- Hostile input: anything the station sends that is not a JSON object of the
  expected shape (bad syntax, nesting past the parser, huge integers, wrong
  types) is counted (`malformed`, `bad_field`) and logged rate-limited; a
  metadata field that does not fit is dropped, not the frame. Messages are at
  most `max_message_bytes`; a larger one closes that connection (aiohttp).
- Backpressure: each connection awaits `pipeline.submit` for its frames, so
  a pipeline at its in-flight bound slows the station's TCP stream instead
  of dropping frames (UDP needs transports.Ingestor's bounded queue; TCP
  does not).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, Pipeline, report_reject
from protocol import lora, proprietary

log = logging.getLogger("lumeau.gateway.transports.basicstation")

TRANSPORT = "basicstation"
DEFAULT_PORT = 8887  # no registered port; ChirpStack's gateway bridge uses 3001
RX1_DELAY_S = 1  # SPEC §6; whole seconds, as the LNS protocol's RxDelay
DEFAULT_SEND_MARGIN_S = 0.1
DEFAULT_DNTXED_TIMEOUT_S = 3.0  # after RX1: the frame's airtime (2.5 s at SF12) and the link
DEFAULT_MAX_MESSAGE_BYTES = 65536
MAX_INT_DIGITS = 20
TIME_RANGE = (946_684_800.0, 4_102_444_800.0)  # 2000-2100: a station clock that was set
EU868_DRS = ((12, 125), (11, 125), (10, 125), (9, 125), (8, 125), (7, 125), (7, 250))  # DR0..DR6
FREQ_RANGE_HZ = (863_000_000, 870_000_000)
TEXT_MAX = 64  # of the station's version strings, what is kept
MAX_DISCOVERING = 64  # discovery exchanges at once; more are answered 503 (each is one message)
DISCOVERY_TIMEOUT_S = 10.0  # for the station's one discovery message


def parse_router(v: Any) -> str | None:
    """A router (gateway) EUI as the station sends it -> 16 lower-case hex digits, or None.

    Accepted: an integer (0..2^64-1), 16 hex digits with or without "-" or ":" between
    bytes, and the ID6 form ("b827:ebff:fe61:3f15", "::1", with "::" for zero groups)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return f"{v:016x}" if 0 <= v < 1 << 64 else None
    if not isinstance(v, str) or len(v) > 40:
        return None
    s = v.strip().lower()
    plain = s.replace("-", "").replace(":", "")
    if len(plain) == 16 and ("::" not in s) and s.count(":") != 3 and _hex(plain):
        return plain
    if ":" in s:  # ID6: four groups of up to 4 hex digits, "::" standing for zero groups
        if s.count("::") > 1:
            return None
        head, _, tail = s.partition("::") if "::" in s else (s, "", "")
        hg = head.split(":") if head else []
        tg = tail.split(":") if tail else []
        if "::" in s:
            groups = hg + ["0"] * (4 - len(hg) - len(tg)) + tg
            if len(hg) + len(tg) > 3:
                return None
        else:
            groups = hg
        if len(groups) != 4 or not all(0 < len(g) <= 4 and _hex(g) for g in groups):
            return None
        return "".join(g.zfill(4) for g in groups)
    return None


def _hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def id6(eui: str) -> str:
    """An EUI (16 hex digits) in the ID6 form the station logs."""
    return ":".join(eui[i : i + 4].lstrip("0") or "0" for i in range(0, 16, 4))


def parse_tokens(text: str, min_len: int = 16) -> dict[str, str]:
    """The tokens file: one `EUI token` per line (the EUI as parse_router accepts it), `#` comments.

    Raises ValueError naming the line (never the token)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {n}: expected `EUI token`")
        eui = parse_router(parts[0])
        if eui is None:
            raise ValueError(f"line {n}: {parts[0]!r} is not a gateway EUI (16 hex digits)")
        if len(parts[1]) < min_len:
            raise ValueError(f"line {n}: the token is shorter than {min_len} characters")
        if eui in out:
            raise ValueError(f"line {n}: gateway EUI {eui} is listed twice")
        out[eui] = parts[1]
    return out


def router_config(channels_hz: tuple[int, ...] = lora.DEFAULT_CHANNELS_HZ, now: float | None = None) -> dict[str, Any]:
    """router_config for EU868 with Lumeau's channels (protocol/lora.py) on one SX1301 radio.

    Every channel listens on all SFs (multi-SF channels) at 125 kHz; the radio is centred on
    the channels, which must lie within +-400 kHz of it (the SX1301's IF range)."""
    centre = (min(channels_hz) + max(channels_hz)) // 2
    if max(channels_hz) - min(channels_hz) > 800_000 or len(channels_hz) > 8:
        raise ValueError("channels must fit one radio: at most 8 within 800 kHz")
    conf: dict[str, Any] = {
        "radio_0": {"enable": True, "freq": centre},
        "radio_1": {"enable": False, "freq": centre},
        "chan_Lora_std": {"enable": False},
        "chan_FSK": {"enable": False},
    }
    for i in range(8):
        if i < len(channels_hz):
            conf[f"chan_multiSF_{i}"] = {"enable": True, "radio": 0, "if": channels_hz[i] - centre}
        else:
            conf[f"chan_multiSF_{i}"] = {"enable": False}
    drs = [[sf, bw, 0] for sf, bw in EU868_DRS] + [[0, 0, 0]] + [[-1, 0, 0]] * 8  # DR7 FSK, DR8-15 unused
    return {
        "msgtype": "router_config",
        "NetID": None,
        "JoinEui": None,
        "region": "EU863",
        "hwspec": "sx1301/1",
        "freq_range": list(FREQ_RANGE_HZ),
        "DRs": drs,
        "sx1301_conf": [conf],
        "nocca": True,
        "nodc": False,  # the station keeps EU868's duty cycle
        "nodwell": True,
        "MuxTime": time.time() if now is None else now,
    }


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)  # huge: +-inf, which no field takes


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text, parse_int=_parse_int)  # past Python's 4,300 digits; else raises again


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _int(v: Any, lo: int, hi: int) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < hi:
        return None
    return v


@dataclass(slots=True)
class Station:
    """One connected station (its muxs WebSocket)."""

    eui: str
    ws: web.WebSocketResponse
    connected_at: float  # monotonic
    last_heard: float = 0.0
    version: dict[str, str] = field(default_factory=dict)
    configured: bool = False
    token: bytes = b""  # the header value it was let in with (set_tokens compares)


@dataclass(slots=True)
class Uplink:
    """How to answer in one propdf's RX1: the DownlinkPath of its Reception."""

    server: BasicStationServer
    eui: str
    xtime: int
    rctx: int
    dr: int
    freq_hz: int
    heard_at: float  # our monotonic clock when the propdf arrived

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        await self.server.transmit(frame, self)


class BasicStationServer:
    """The LNS endpoints stations connect to; feeds their propdf frames to the pipeline.

    `await start()` binds (port 0 picks a free one: see `.port`), `await stop()` closes.
    Each uplink becomes a Reception(transport="basicstation", gateway_id="basicstation:<eui>")
    whose `path` answers in that uplink's RX1.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        tokens: dict[str, str],
        ssl_context: ssl.SSLContext | None,
        rx_delay: int = RX1_DELAY_S,
        send_margin: float = DEFAULT_SEND_MARGIN_S,
        dntxed_timeout: float = DEFAULT_DNTXED_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channels_hz: tuple[int, ...] = lora.DEFAULT_CHANNELS_HZ,
        trust_time: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ssl_context` None serves plain ws:// (only behind a TLS-terminating proxy, or in tests)."""
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self._tokens = {parse_router(k) or k: ("Bearer " + v).encode() for k, v in tokens.items()}
        self.ssl_context = ssl_context
        self.rx_delay = int(rx_delay)
        self.send_margin = send_margin
        self.dntxed_timeout = dntxed_timeout
        self.max_message_bytes = max_message_bytes
        self.channels_hz = tuple(channels_hz)
        router_config(self.channels_hz)  # raises now on a plan one radio cannot listen to
        self.trust_time = trust_time
        self.clock = clock
        self.monotonic = monotonic
        self.stations: dict[str, Station] = {}
        self.counts: Counter[str] = Counter()
        self._pending: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._diid = itertools.count(1)
        self._limiter = RateLimiter(clock=monotonic)
        self._runner: web.AppRunner | None = None
        self._discovering = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/router-info", self._discovery)
        app.router.add_get("/router-{router}", self._muxs)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("basicstation listening", extra={"host": self.host, "port": self.port, "tls": bool(self.ssl_context)})

    async def stop(self) -> None:
        for st in list(self.stations.values()):
            await st.ws.close()
        self.stations.clear()
        for _eui, fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out["stations_connected"] = len(self.stations)
        return out

    def station_status(self) -> list[dict[str, Any]]:
        now = self.monotonic()
        return [
            {
                "eui": s.eui,
                "connected_s": round(now - s.connected_at, 1),
                "last_heard_s": round(now - s.last_heard, 1) if s.last_heard else None,
                "configured": s.configured,
                "version": dict(s.version),
            }
            for s in self.stations.values()
        ]

    # -- authentication ----------------------------------------------------

    async def set_tokens(self, tokens: dict[str, str]) -> int:
        """Take a new token table (a reload): a station whose token changed or was removed is
        disconnected at once (it must come back with the new one). Returns how many were."""
        self._tokens = {parse_router(k) or k: ("Bearer " + v).encode() for k, v in tokens.items()}
        gone = [st for st in self.stations.values() if st.token != self._tokens.get(st.eui)]
        for st in gone:
            self.counts["revoked"] += 1
            await st.ws.close(message=b"token revoked")
        return len(gone)

    def _authorized(self, eui: str | None, request: web.Request) -> str | None:
        """None when `request` carries `eui`'s token; else why not (counted, logged rate-limited)."""
        want = self._tokens.get(eui) if eui is not None else None
        if want is None:
            self.counts["unknown_router"] += 1
            why = "unknown router"
        else:
            got = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if hmac.compare_digest(got, want):
                return None
            self.counts["auth_refused"] += 1
            why = "wrong or missing token"
        if self._limiter.allow("refused")[0]:
            log.warning("basicstation: connection refused: %s", why, extra={"eui": eui, "peer": request.remote})
        return why

    # -- discovery ---------------------------------------------------------

    def _any_token(self, request: web.Request) -> bool:
        """Does the request carry one of the known tokens? Every one is compared (no early exit)."""
        got = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return sum(hmac.compare_digest(got, want) for want in self._tokens.values()) > 0

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        # Strangers get no WebSocket at all: the EUI is only known from the first message, so the
        # token is checked against all of them first, and against the EUI's own once it is named.
        if not self._any_token(request):
            self.counts["auth_refused"] += 1
            if self._limiter.allow("refused")[0]:
                log.warning("basicstation: discovery refused: no known token", extra={"peer": request.remote})
            raise web.HTTPForbidden(text="wrong or missing token")
        if self._discovering >= MAX_DISCOVERING:
            self.counts["discovery_busy"] += 1
            raise web.HTTPServiceUnavailable(text="busy")
        ws = web.WebSocketResponse(max_msg_size=4096, heartbeat=None)
        self._discovering += 1
        try:
            await ws.prepare(request)
            return await self._discover(request, ws)
        finally:
            self._discovering -= 1

    async def _discover(self, request: web.Request, ws: web.WebSocketResponse) -> web.StreamResponse:
        self.counts["discovery"] += 1
        try:
            msg = await asyncio.wait_for(ws.receive(), DISCOVERY_TIMEOUT_S)
            if msg.type != WSMsgType.TEXT:  # closed, too large (aiohttp closed it), binary: no answer
                self._malformed(f"router-info message of type {msg.type.name}")
                return ws
            doc = _loads(msg.data)
            router = doc.get("router") if isinstance(doc, dict) else None
            eui = parse_router(router)
            if eui is None:
                self._malformed("router-info without a router EUI")
                await ws.send_json({"router": 0, "error": "no router EUI"})
            elif (why := self._authorized(eui, request)) is not None:
                await ws.send_json({"router": id6(eui), "error": f"refused: {why}"})
            else:
                scheme = "wss" if self.ssl_context is not None else "ws"
                uri = f"{scheme}://{request.host}/router-{eui}"
                await ws.send_json({"router": id6(eui), "muxs": "muxs-::0", "uri": uri})
        except (TimeoutError, ValueError, RecursionError):
            self._malformed("router-info request does not parse")
        except ConnectionError:  # the station went away before the answer
            self.counts["discovery_lost"] += 1
        finally:
            await ws.close()
        return ws

    # -- the muxs connection -----------------------------------------------

    async def _muxs(self, request: web.Request) -> web.StreamResponse:
        eui = parse_router(request.match_info["router"])
        why = self._authorized(eui, request)
        if why is not None:
            raise web.HTTPForbidden(text=why) if eui is not None else web.HTTPNotFound(text=why)
        assert eui is not None
        ws = web.WebSocketResponse(max_msg_size=self.max_message_bytes, heartbeat=30.0)
        await ws.prepare(request)
        old = self.stations.get(eui)
        st = self.stations[eui] = Station(eui, ws, self.monotonic(), token=self._tokens[eui])
        self.counts["connections"] += 1
        if old is not None:
            self.counts["replaced"] += 1
            await old.ws.close()
        if self._limiter.allow("connected")[0]:
            log.info("basicstation: station connected", extra={"eui": eui, "peer": request.remote})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    st.last_heard = self.monotonic()
                    try:
                        await self._message(st, msg.data)
                    except ConnectionError:  # an answer (router_config) to a station already gone
                        break
                    except Exception:  # one message must never take the connection down
                        self.counts["internal_error"] += 1
                        if self._limiter.allow("internal_error")[0]:
                            log.exception("basicstation: message handling failed", extra={"eui": eui})
                elif msg.type == WSMsgType.BINARY:
                    self._malformed("binary message")
                elif msg.type == WSMsgType.ERROR:
                    self._malformed("websocket error (a message over max_message_bytes?)")
        finally:
            if self.stations.get(eui) is st:
                del self.stations[eui]
            self.counts["disconnections"] += 1
        return ws

    def _malformed(self, what: str) -> None:
        self.counts["malformed"] += 1
        if self._limiter.allow("malformed")[0]:
            log.warning("basicstation: malformed message: %s", what)

    async def _message(self, st: Station, text: str) -> None:
        self.counts["messages"] += 1
        try:
            doc = _loads(text)
        except (ValueError, RecursionError):
            return self._malformed("JSON does not parse")
        if not isinstance(doc, dict):
            return self._malformed("not a JSON object")
        kind = doc.get("msgtype")
        if kind == "propdf":
            reception = self._propdf(st, doc)
            if reception is not None:
                await self._submit(reception)
        elif kind == "version":
            st.version = {
                k: v[:TEXT_MAX]
                for k in ("station", "firmware", "package", "model", "features")
                if isinstance(v := doc.get(k), str)
            }
            await st.ws.send_str(json.dumps(router_config(self.channels_hz, self.clock())))
            st.configured = True
            self.counts["router_config_sent"] += 1
        elif kind == "dntxed":
            self._dntxed(st, doc)
        elif kind in ("updf", "jreq", "rejoin"):
            self.counts[f"foreign_{kind}"] += 1  # a LoRaWAN device's frame: not ours
        elif kind in ("timesync", "rmtsh", "getxtime", "runcmd", "event"):
            self.counts[f"ignored_{kind}"] += 1
        else:
            self.counts["unknown_msgtype"] += 1
            if self._limiter.allow("unknown_msgtype")[0]:
                log.warning("basicstation: unknown msgtype", extra={"eui": st.eui, "msgtype": str(kind)[:32]})

    def _bad_field(self, value: Any) -> None:
        if value is not None:
            self.counts["bad_field"] += 1

    async def _submit(self, reception: Reception) -> None:
        """Hand a reception on, awaiting the pipeline: over TCP a station is slowed, never dropped."""
        try:
            await self.pipeline.submit(reception)
        except asyncio.CancelledError:
            raise
        except Exception:  # a pipeline bug must not stop the radio
            self.counts["submit_errors"] += 1
            if self._limiter.allow("submit_error")[0]:
                log.exception("pipeline.submit raised", extra={"transport": TRANSPORT})

    def _propdf(self, st: Station, doc: dict[str, Any]) -> Reception | None:
        self.counts["propdf"] += 1
        payload = doc.get("FRMPayload")
        try:
            phy = bytes.fromhex(payload) if isinstance(payload, str) and len(payload) <= 1024 else None
        except ValueError:
            phy = None
        if phy is None:
            self.counts["propdf_malformed"] += 1
            report_reject(self.pipeline, "malformed", TRANSPORT, self._limiter, log, "propdf without hex")
            return None
        raw = proprietary.unwrap(phy)
        if raw is None:
            self.counts["foreign_propdf"] += 1  # another proprietary protocol on the same air
            return None
        heard_at = self.monotonic()
        up = doc.get("upinfo")
        up = up if isinstance(up, dict) else {}
        rssi = _number(up.get("rssi"))
        if rssi is None:
            self._bad_field(up.get("rssi"))
        snr = _number(up.get("snr"))
        if snr is None:
            self._bad_field(up.get("snr"))
        dr = _int(doc.get("DR"), 0, len(EU868_DRS))
        if dr is None:
            self._bad_field(doc.get("DR"))
        freq = _int(doc.get("Freq"), FREQ_RANGE_HZ[0], FREQ_RANGE_HZ[1] + 1)
        if freq is None:
            self._bad_field(doc.get("Freq"))
        xtime = _int(up.get("xtime"), 0, 1 << 63)
        if xtime is None:
            self._bad_field(up.get("xtime"))
        rctx = _int(up.get("rctx"), -(1 << 63), 1 << 63)
        if rctx is None:
            self._bad_field(up.get("rctx"))
        now = self.clock()
        rx_time = _number(up.get("rxtime"))
        if rx_time is None or not TIME_RANGE[0] <= rx_time < TIME_RANGE[1]:
            self._bad_field(up.get("rxtime"))
            rx_time = now
        elif rx_time > now and not self.trust_time:
            rx_time = now  # never after the present
        path = None
        if dr is not None and freq is not None and xtime is not None:
            path = Uplink(self, st.eui, xtime, rctx or 0, dr, freq, heard_at)
        reception = Reception(
            raw=raw,
            transport=TRANSPORT,
            gateway_id=f"{TRANSPORT}:{st.eui}",
            rx_time=rx_time,
            rssi=rssi,
            snr=snr,
            freq_hz=freq,
            sf=EU868_DRS[dr][0] if dr is not None else None,
            path=path,
        )
        self.counts["propdf_forwarded"] += 1
        return reception

    def _dntxed(self, st: Station, doc: dict[str, Any]) -> None:
        self.counts["dntxed"] += 1
        diid = _int(doc.get("diid"), 0, 1 << 63)
        pending = self._pending.get(diid) if diid is not None else None
        if pending is None or pending[0] != st.eui:
            self.counts["dntxed_unmatched"] += 1
            return
        if not pending[1].done():
            pending[1].set_result(None)

    # -- downlinks ---------------------------------------------------------

    async def transmit(self, frame: bytes, up: Uplink) -> None:
        """Send `frame` in the RX1 window of uplink `up`; returns on dntxed, raises DownlinkError."""
        try:
            await self._transmit(frame, up)
        except DownlinkError as e:
            self.counts[f"downlink_{e.reason}"] += 1
            raise
        self.counts["downlinks_sent"] += 1

    async def _transmit(self, frame: bytes, up: Uplink) -> None:
        st = self.stations.get(up.eui)
        if st is None or st.ws.closed:
            raise DownlinkError("no_route", f"station {up.eui} is not connected")
        left = up.heard_at + self.rx_delay - self.monotonic()
        if left < self.send_margin:
            raise DownlinkError("too_late", f"{left * 1000:.0f} ms before RX1, need {self.send_margin * 1000:.0f}")
        diid = next(self._diid)
        msg = {
            "msgtype": "dnmsg",
            "DevEui": "00-00-00-00-00-00-00-00",  # no LoRaWAN device: the station only logs it
            "dC": 0,  # class A: answer in the uplink's receive window
            "diid": diid,
            "pdu": proprietary.wrap(frame).hex(),
            "RxDelay": self.rx_delay,
            "RX1DR": up.dr,
            "RX1Freq": up.freq_hz,
            "priority": 0,
            "xtime": up.xtime,
            "rctx": up.rctx,
            "MuxTime": self.clock(),
        }
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[diid] = (up.eui, fut)
        try:
            try:
                await st.ws.send_str(json.dumps(msg, separators=(",", ":")))
            except (ConnectionError, RuntimeError) as e:
                raise DownlinkError("disconnected", f"station {up.eui}: {e}") from None
            try:
                await asyncio.wait_for(fut, left + self.dntxed_timeout)
            except TimeoutError:
                self.counts["dntxed_missing"] += 1
                raise DownlinkError("timeout", f"no dntxed from station {up.eui}") from None
        finally:
            self._pending.pop(diid, None)
