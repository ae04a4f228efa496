"""Semtech UDP packet forwarder protocol, version 2: the server side.

Any commercial LoRa gateway running Semtech's `lora_pkt_fwd` (or a
compatible forwarder: ChirpStack's, the Basic Station's legacy mode, the
simulator) talks to the gateway through this module. Protocol reference:
Lora-net/packet_forwarder PROTOCOL.TXT, v1.3 of the document, protocol
version 2 (v2 added TX_ACK; version 1 forwarders are accepted as well).

Datagrams, all starting with `version | token (2 bytes) | identifier`:

  PUSH_DATA 0x00  forwarder -> us: EUI (8 bytes) + JSON {"rxpk": [...], "stat": {...}}
  PUSH_ACK  0x01  us -> forwarder, at once, same token
  PULL_DATA 0x02  forwarder -> us: EUI; keepalive that opens the downlink route
  PULL_RESP 0x03  us -> forwarder (to the PULL_DATA address): JSON {"txpk": {...}}
  PULL_ACK  0x04  us -> forwarder, same token as the PULL_DATA
  TX_ACK    0x05  forwarder -> us: EUI + optional JSON {"txpk_ack": {"error": ...}}

Decisions (each one named, so the config can say otherwise):

- PUSH_ACK goes out before the packets are processed, as the protocol says.
  It is not a durability promise: the forwarder never resends a datagram
  (acks only feed its statistics), and `lora_pkt_fwd` waits up to 100 ms for
  the ack before its next push, so holding the ack until the frames are
  committed would throttle the radio without protecting anything.
- `stat` -1 (PHY CRC failed): dropped and counted as `bad_crc`, never
  passed on. `stat` 0 (sent without a PHY CRC): accepted by default
  (`accept_no_crc`), counted as `no_crc`: the frame's MIC is the integrity
  check that matters (a corrupt frame fails it like a forged one), and a
  forwarder only forwards such packets when its operator enabled
  `forward_crc_disabled`.
- Receive time: the forwarder's `time` when it sends one (GPS or NTP time on
  the gateway; the simulator's virtual time) and it lies in 2000-2100, else
  our clock.
- Downlinks: a `txpk` at the uplink's `tmst` + RX1 delay (1 s, SPEC §6), on
  the uplink's frequency, data rate and coding rate, at `tx_power` dBm
  (14: the EU868 g1 sub-band limit of 25 mW ERP), with inverted IQ
  (`invert_iq`; SPEC §10 follows LoRaWAN: nodes listen inverted, so they
  never hear each other's uplinks). It must reach the forwarder's
  just-in-time queue `send_margin` (100 ms: lora_pkt_fwd programs the radio
  40 ms ahead, plus network latency) before the window, else
  DownlinkError("too_late") and the caller keeps the downlink for the next
  uplink.
- The gateway's own EU868 duty cycle is accounted per forwarder with
  protocol.lora.DutyCycle: a downlink in a closed sub-band fails with
  DownlinkError("duty_cycle") instead of being sent illegally. It is kept
  on the forwarder's own concentrator clock (`tmst`, unwrapped per
  forwarder: `Forwarder.air_ms`), the clock its radio transmits on, not on
  ours: the same in the field, and right under the simulator's time
  compression, where the host clock runs `speed` times slower than the
  radio's. A `tmst` that steps back (a forwarder restart, a datagram out of
  order) lets no time pass: the budget never loosens for it.
- TX_ACK: an error other than NONE raises DownlinkError(error.lower()).
  Without a TX_ACK within `tx_ack_timeout` (version 1 forwarders never
  send one) the downlink counts as sent (`tx_ack_missing` counts these);
  the end-to-end check is the node's CMD_ACK/ACK anyway.

Hostile input (issue 15): a metadata value a radio cannot have (a 400-digit
rssi, an integer past MAX_INT_DIGITS, a string for a number) drops that field,
not the frame, and counts `rxpk_bad_field`; anything else one rxpk breaks costs
that rxpk only (`rxpk_failed`, rejected as "malformed"). Only a datagram whose
JSON does not parse at all (bad syntax, nesting past the parser's limit) is lost
whole, as one `malformed_datagrams`: the sender's own datagram, since nothing
heard over the air can change the JSON's structure. A `stat` report keeps only
small scalar fields. "new forwarder" lines are rate-limited (`forwarders_new`
counts them all).

Receive buffer (issue 15): the socket asks for `rcvbuf` bytes (DEFAULT_RCVBUF,
8 MiB; `[semtech] rcvbuf_bytes`), so a burst that arrives while the loop is busy
(startup, a long commit) waits in the kernel instead of being dropped. Linux
grants twice the value, capped at net.core.rmem_max unless the process has
CAP_NET_ADMIN (SO_RCVBUFFORCE is tried first); a smaller grant is logged.
stats() reports `rcvbuf_bytes` (granted) and, on Linux, the kernel's
`kernel_drops` and `socket_rx_queue_bytes` for this socket (the `drops` and
`rx_queue` columns of /proc/net/udp or udp6, found by the socket's inode); on
other systems those two are absent from stats() and /metrics, not zero.

Stopping (a restart) first reads what the kernel already queued for the socket
(up to STOP_DRAIN_MAX datagrams) and hands it on like any datagram, so a burst
that arrived while the gateway was busy is stored, not dropped with the socket
(`drained_on_stop` counts them). What arrives while no process holds the port is
lost as on any UDP port: the forwarder does not resend PUSH_DATA.

Limits: at most MAX_FORWARDERS forwarders are remembered (the least
recently heard is forgotten first); a route is valid for `route_timeout`
(60 s, six missed 10 s keepalives) after the last PULL_DATA.

Source binding (issue 15): UDP carries no authentication. Uplinks are safe
(every frame has a MIC), but before, anyone who could reach the port took over
an EUI's downlink route with one PULL_DATA. Now each gateway EUI is bound to a
source IP address (not a port: lora_pkt_fwd sends PUSH and PULL from two
ephemeral ports): the one configured in `sources`, else, with `source_binding`
"tofu" (the default), the first one it is heard from, kept for the process's
life (up to MAX_BINDINGS EUIs; past that new EUIs are refused, a bound one is
never evicted, so a flood of made-up EUIs cannot free a real one). PUSH_DATA,
PULL_DATA and TX_ACK from another address are refused (no ack, nothing done),
counted (`source_conflicts`, `<kind>_refused`) and raise an alarm: an error
line naming the EUI, its bound address and the intruder (rate-limited; the
counter is exact). "configured" refuses EUIs not in `sources`
(`source_unknown`); "off" is the old behaviour. Trust on first use trusts
whoever speaks first after a restart, and an address spoofed on the LAN still
passes: configure `sources` and keep the port on the forwarders' LAN.

One file (over 700 lines): the datagram parser, the per-forwarder state (source
binding, downlink routes) and the hostile-input counters are one protocol's server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, Ingestor, Pipeline, radio_time, report_reject
from protocol import lora

log = logging.getLogger("lumeau.gateway.transports.semtech")

TRANSPORT = "udp"

PUSH_DATA = 0x00
PUSH_ACK = 0x01
PULL_DATA = 0x02
PULL_RESP = 0x03
PULL_ACK = 0x04
TX_ACK = 0x05

VERSIONS = (1, 2)
HEADER_LEN = 4
EUI_LEN = 8

DEFAULT_PORT = 1700  # the forwarder's default serv_port_up / serv_port_down
RX1_DELAY_S = 1.0  # SPEC §6
DEFAULT_TX_POWER_DBM = 14
DEFAULT_SEND_MARGIN_S = 0.1
DEFAULT_TX_ACK_TIMEOUT_S = 0.5
DEFAULT_ROUTE_TIMEOUT_S = 60.0
MAX_FORWARDERS = 256
# Receive buffer asked for the socket: datagrams wait there while the loop is busy (startup, a
# long commit). Linux grants twice the value asked, capped at net.core.rmem_max unless the
# process may use SO_RCVBUFFORCE (CAP_NET_ADMIN); stats() reports what was granted.
DEFAULT_RCVBUF = 8 * 1024 * 1024
PROC_NET_UDP = ("/proc/net/udp", "/proc/net/udp6")
SOURCE_BINDINGS = ("tofu", "configured", "off")
STOP_DRAIN_MAX = 100_000  # datagrams read at stop: far more than an 8 MiB buffer holds
MAX_BINDINGS = 4096  # EUIs bound on first use at most; then new EUIs are refused, never a bound one evicted
MAX_INT_DIGITS = 20  # longer integers in a forwarder's JSON are no radio figure (see _parse_int)
STAT_KEYS_MAX = 32  # of a `stat` report, at most this many scalar fields are kept
STAT_TEXT_MAX = 64
TMST_MOD = 1 << 32

_DATR = re.compile(r"SF(\d{1,2})BW(\d{2,3})\Z")
_CODR = re.compile(r"4/([5-8])\Z")


@dataclass(slots=True)
class Forwarder:
    """What we know about one packet forwarder, by its EUI."""

    eui: str
    version: int = 2
    push_addr: Any = None
    pull_addr: Any = None
    last_push: float = 0.0  # monotonic
    last_pull: float = 0.0  # monotonic
    stat: dict[str, Any] = field(default_factory=dict)  # its last "stat" report
    duty: lora.DutyCycle = field(default_factory=lora.DutyCycle)  # on air_ms's clock
    air_us: int = 0  # its concentrator clock unwrapped (us since we first heard it)
    last_tmst: int | None = None

    def air_ms(self, tmst: int) -> int:
        """The forwarder's concentrator time of `tmst`, unwrapped, in ms (the duty cycle's clock).

        A step forward of less than half the counter's range is time passing (a wrap of the
        32-bit us counter included); a larger one is a step back (a restart, an old datagram):
        no time passes for it."""
        if self.last_tmst is not None:
            step = (tmst - self.last_tmst) % TMST_MOD
            if step < TMST_MOD // 2:
                self.air_us += step
        self.last_tmst = tmst
        return self.air_us // 1000


@dataclass(slots=True)
class Uplink:
    """How to answer in the receive window of one uplink: the DownlinkPath of its Reception."""

    server: SemtechServer
    eui: str
    tmst: int
    freq_mhz: float
    datr: str
    codr: str
    heard_at: float  # our monotonic clock when the PUSH_DATA arrived
    air_ms: int = 0  # the forwarder's concentrator time of tmst, unwrapped (Forwarder.air_ms)

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        await self.server.transmit(frame, self)


def _parse_int(text: str) -> int | float:
    """json.loads' parse_int: an integer longer than MAX_INT_DIGITS becomes +-inf, which no field accepts.

    Python refuses to parse an integer of more than 4,300 digits (a ValueError that would cost
    the whole datagram) and float() overflows on one above 1e308; neither is a radio's figure.
    """
    return int(text) if len(text) <= MAX_INT_DIGITS else float(text)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)  # the common case at full speed: a parse_int hook costs a call per integer
    except ValueError:
        return json.loads(data, parse_int=_parse_int)  # e.g. past Python's 4,300-digit limit; else raises again


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _stat_value(v: Any) -> bool:
    """What of a forwarder's `stat` report is kept (and served by the API): small scalars only."""
    if isinstance(v, str):
        return len(v) <= STAT_TEXT_MAX
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, int):
        return -(1 << 63) <= v < 1 << 63
    return v is None


_parse_time = radio_time  # the forwarder's `time` (a module name: tests replace it)


def udp_socket_counters(inode: int) -> tuple[int, int] | None:
    """(drops, bytes queued) of the UDP socket with this inode, from Linux's /proc/net/udp and
    udp6 (the `drops` and `rx_queue` columns); None where there is no such file (other systems)."""
    key = str(inode)
    for name in PROC_NET_UDP:
        try:
            with open(name, encoding="ascii", errors="replace") as f:
                next(f, None)  # the header
                for line in f:
                    cols = line.split()
                    if len(cols) >= 13 and cols[9] == key:
                        return int(cols[12]), int(cols[4].partition(":")[2] or "0", 16)
        except (OSError, ValueError):
            continue
    return None


def _address(host: str) -> str:
    """An IP address in one canonical text form (an IPv4-mapped IPv6 address as IPv4)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_sources(text: str) -> dict[str, str]:
    """`[semtech] sources`: "EUI=address" pairs (16 hex digits = an IP address), separated by commas
    or white space -> {eui hex: address}. Raises ValueError naming the bad pair."""
    out: dict[str, str] = {}
    for pair in text.replace(",", " ").split():
        eui, sep, host = pair.partition("=")
        eui = eui.strip().lower()
        if not sep or len(eui) != 2 * EUI_LEN or any(c not in "0123456789abcdef" for c in eui):
            raise ValueError(f"{pair!r} is not EUI=address (the EUI as 16 hex digits)")
        try:
            addr = _address(host.strip())
        except ValueError:
            raise ValueError(f"{pair!r}: {host!r} is not an IP address") from None
        if eui in out:
            raise ValueError(f"gateway EUI {eui} is listed twice")
        out[eui] = addr
    return out


def _b64(data: str) -> bytes:
    # PROTOCOL.TXT says "padded"; some forwarders omit the padding.
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


class SemtechServer(asyncio.DatagramProtocol):
    """The UDP server packet forwarders talk to; feeds uplinks to the pipeline.

    `await start()` binds (port 0 picks a free one: see `.port`), `await
    stop()` closes. Each uplink becomes a Reception(transport="udp",
    gateway_id="udp:<eui hex>") whose `path` answers in that uplink's RX1.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        *,
        rx_delay: float = RX1_DELAY_S,
        tx_power: int = DEFAULT_TX_POWER_DBM,
        invert_iq: bool = True,
        accept_no_crc: bool = True,
        send_margin: float = DEFAULT_SEND_MARGIN_S,
        tx_ack_timeout: float = DEFAULT_TX_ACK_TIMEOUT_S,
        route_timeout: float = DEFAULT_ROUTE_TIMEOUT_S,
        ingestor: Ingestor | None = None,
        trust_time: bool = False,
        rcvbuf: int = DEFAULT_RCVBUF,
        source_binding: str = "tofu",
        sources: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (wall: reception times) and `monotonic` (receive windows, routes, rate limits)
        are seams for tests, as in gateway/downlinks.py."""
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.rx_delay = rx_delay
        self.tx_power = tx_power
        self.invert_iq = invert_iq
        self.accept_no_crc = accept_no_crc
        self.send_margin = send_margin
        self.tx_ack_timeout = tx_ack_timeout
        self.route_timeout = route_timeout
        self.trust_time = trust_time  # a `time` after the present is kept (the simulator's virtual time)
        self.rcvbuf = rcvbuf  # asked for; 0: the system's default
        if source_binding not in SOURCE_BINDINGS:
            raise ValueError(f"source_binding must be one of {', '.join(SOURCE_BINDINGS)}")
        self.source_binding = source_binding
        self.sources = {eui.lower(): _address(a) for eui, a in (sources or {}).items()}  # configured
        self.learned: dict[str, str] = {}  # bound on first use
        self.rcvbuf_granted = 0
        self._inode = 0
        self.clock = clock
        self.monotonic = monotonic
        self.ingestor = ingestor or Ingestor(pipeline, TRANSPORT, log=log)
        self.forwarders: OrderedDict[str, Forwarder] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[int, tuple[str, asyncio.Future[str]]] = {}
        self._token = random.getrandbits(16)
        self._limiter = RateLimiter(clock=monotonic)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.ingestor.start()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        sock = transport.get_extra_info("socket")
        self._inode = os.fstat(sock.fileno()).st_ino
        self.rcvbuf_granted = self._size_buffer(sock)
        log.info("semtech udp listening", extra={"host": self.host, "port": self.port})

    def _size_buffer(self, sock: Any) -> int:
        """SO_RCVBUFFORCE where allowed (past rmem_max), else SO_RCVBUF; returns what was granted."""
        if self.rcvbuf > 0:
            force = getattr(socket, "SO_RCVBUFFORCE", None)
            try:
                if force is None:
                    raise PermissionError
                sock.setsockopt(socket.SOL_SOCKET, force, self.rcvbuf)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                except OSError as e:
                    log.warning("semtech: receive buffer not set: %s", e)
        granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        if granted < self.rcvbuf:
            log.warning(
                "semtech: receive buffer smaller than asked (raise net.core.rmem_max)",
                extra={"asked": self.rcvbuf, "granted": granted},
            )
        return granted

    def socket_fileno(self) -> int:
        """The listening socket's descriptor (-1 when stopped), for inspection."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        return sock.fileno() if sock is not None else -1

    async def stop(self) -> None:
        if self._transport is not None:
            self._drain_socket()
            self._transport.close()
            self._transport = None
        for _eui, fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        await self.ingestor.stop()

    def _drain_socket(self) -> None:
        """Hand on the datagrams the kernel queued before the stop (see the module docstring)."""
        assert self._transport is not None
        tsock = self._transport.get_extra_info("socket")
        if tsock is None:
            return
        sock = socket.socket(tsock.family, tsock.type, fileno=os.dup(tsock.fileno()))
        try:
            sock.setblocking(False)
            for _ in range(STOP_DRAIN_MAX):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:  # an ICMP error queued for the socket, say: the rest is still read
                    self.error_received(e)
                    continue
                self.counts["drained_on_stop"] += 1
                self.datagram_received(data, addr)
        finally:
            sock.close()

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics: datagrams and packets by outcome, forwarders known."""
        out: dict[str, Any] = dict(self.counts)
        out["forwarders"] = len(self.forwarders)
        out["ingest_waiting"] = self.ingestor.waiting()
        out["ingest_dropped"] = self.ingestor.dropped
        out["rcvbuf_bytes"] = self.rcvbuf_granted
        if self._transport is not None:
            counters = udp_socket_counters(self._inode)  # None off Linux: absent, never invented
            if counters is not None:
                out["kernel_drops"], out["socket_rx_queue_bytes"] = counters
        return out

    def forwarder_status(self) -> list[dict[str, Any]]:
        """Every known forwarder: EUI, seconds since its last PUSH/PULL, downlink route, its last `stat`."""
        now = self.monotonic()
        return [
            {
                "eui": f.eui,
                "version": f.version,
                "last_push_s": round(now - f.last_push, 1) if f.last_push else None,
                "last_pull_s": round(now - f.last_pull, 1) if f.last_pull else None,
                "downlink_route": self.route(f.eui) is not None,
                "stat": dict(f.stat),
            }
            for f in self.forwarders.values()
        ]

    # -- receiving ---------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._datagram(data, addr)
        except Exception:  # never let one datagram take the server down
            self.counts["internal_error"] += 1
            if self._limiter.allow("internal_error")[0]:
                log.exception("semtech datagram handling failed", extra={"peer": str(addr)})

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after a sendto (forwarder gone): not fatal.
        self.counts["socket_errors"] += 1
        if self._limiter.allow("socket_error")[0]:
            log.warning("semtech udp socket error: %s", exc)

    def _malformed(self, what: str, addr: Any) -> None:
        self.counts["malformed_datagrams"] += 1
        if self._limiter.allow("malformed")[0]:
            log.warning("semtech: malformed datagram: %s", what, extra={"peer": str(addr)})

    def _datagram(self, data: bytes, addr: Any) -> None:
        self.counts["datagrams"] += 1
        if len(data) < HEADER_LEN:
            return self._malformed("shorter than a header", addr)
        version, ident = data[0], data[3]
        if version not in VERSIONS:
            return self._malformed(f"protocol version {version}", addr)
        if ident in (PUSH_DATA, PULL_DATA, TX_ACK) and len(data) < HEADER_LEN + EUI_LEN:
            return self._malformed("no gateway EUI", addr)
        if ident in (PUSH_DATA, PULL_DATA, TX_ACK) and not self._source_ok(ident, data[4:12].hex(), addr):
            return  # refused: no ack, nothing processed
        if ident == PUSH_DATA:
            self._reply(data, PUSH_ACK, addr)
            self._push_data(version, data, addr)
        elif ident == PULL_DATA:
            self._reply(data, PULL_ACK, addr)
            self._pull_data(version, data, addr)
        elif ident == TX_ACK:
            self._tx_ack(data)
        else:
            self._malformed(f"identifier 0x{ident:02x} is not for a server", addr)

    def _source_ok(self, ident: int, eui: str, addr: Any) -> bool:
        """Is `addr` the source `eui` is bound to? Binds it on first use (tofu); counts and alarms."""
        if self.source_binding == "off":
            return True
        bound = self.sources.get(eui) or self.learned.get(eui)
        if bound is not None and addr[0] == bound:
            return True  # the common case, without parsing the address
        kind = {PUSH_DATA: "push_data", PULL_DATA: "pull_data", TX_ACK: "tx_ack"}[ident]
        try:
            source = _address(str(addr[0]))
        except (ValueError, TypeError, IndexError):
            source = str(addr)
        if bound is None:
            if ident == TX_ACK:
                return True  # no route was ever opened for it: _tx_ack finds nothing pending
            if self.source_binding == "configured":
                self.counts["source_unknown"] += 1
                self.counts[f"{kind}_refused"] += 1
                if self._limiter.allow("source_unknown")[0]:
                    log.warning("semtech: gateway EUI not configured: refused", extra={"eui": eui, "source": source})
                return False
            if len(self.learned) >= MAX_BINDINGS:
                self.counts["source_table_full"] += 1
                self.counts[f"{kind}_refused"] += 1
                if self._limiter.allow("source_table_full")[0]:
                    log.warning("semtech: source table full: new gateway EUI refused", extra={"eui": eui})
                return False
            self.learned[eui] = source
            self.counts["sources_learned"] += 1
            if self._limiter.allow("source_learned")[0]:
                log.info("semtech: gateway EUI bound to its first source", extra={"eui": eui, "source": source})
            return True
        if source == bound:
            return True
        self.counts["source_conflicts"] += 1
        self.counts[f"{kind}_refused"] += 1
        if self._limiter.allow("source_conflict")[0]:  # the alarm; the counter is exact
            log.error(
                "semtech: gateway EUI claimed from another source: refused",
                extra={"eui": eui, "bound": bound, "source": source, "datagram": kind},
            )
        return False

    def _reply(self, data: bytes, ident: int, addr: Any) -> None:
        if self._transport is not None:
            self._transport.sendto(bytes((data[0], data[1], data[2], ident)), addr)

    def _forwarder(self, eui: str, version: int) -> Forwarder:
        fwd = self.forwarders.get(eui)
        if fwd is None:
            if len(self.forwarders) >= MAX_FORWARDERS:
                self.forwarders.popitem(last=False)
            fwd = self.forwarders[eui] = Forwarder(eui)
            self.counts["forwarders_new"] += 1
            # rate-limited: every datagram may claim a new EUI (issue 15: 56,000 lines in 50 s)
            allowed, suppressed = self._limiter.allow("new_forwarder")
            if allowed:
                log.info("semtech: new forwarder", extra={"eui": eui, "suppressed": suppressed})
        else:
            self.forwarders.move_to_end(eui)
        fwd.version = version
        return fwd

    def _pull_data(self, version: int, data: bytes, addr: Any) -> None:
        self.counts["pull_data"] += 1
        fwd = self._forwarder(data[4:12].hex(), version)
        fwd.pull_addr = addr
        fwd.last_pull = self.monotonic()

    def _push_data(self, version: int, data: bytes, addr: Any) -> None:
        self.counts["push_data"] += 1
        heard_at = self.monotonic()
        fwd = self._forwarder(data[4:12].hex(), version)
        fwd.push_addr = addr
        fwd.last_push = heard_at
        try:
            doc = _loads(data[12:])
        except (ValueError, RecursionError):
            return self._malformed("PUSH_DATA JSON does not parse", addr)
        if not isinstance(doc, dict):
            return self._malformed("PUSH_DATA JSON is not an object", addr)
        stat = doc.get("stat")
        if isinstance(stat, dict):
            self.counts["stat_reports"] += 1
            kept = ((k, v) for k, v in stat.items() if isinstance(k, str) and len(k) <= 32 and _stat_value(v))
            fwd.stat = dict(itertools.islice(kept, STAT_KEYS_MAX))
        rxpk = doc.get("rxpk")
        if rxpk is None:
            return
        if not isinstance(rxpk, list):
            return self._malformed("rxpk is not an array", addr)
        for pk in rxpk:
            try:
                self._rxpk(fwd, pk, heard_at)
            except Exception:  # a bug hit by one rxpk costs that rxpk only, counted (issue 15)
                self.counts["rxpk_failed"] += 1
                if self._limiter.allow("rxpk_failed")[0]:
                    log.exception("semtech: rxpk handling failed", extra={"eui": fwd.eui})
                self._bad_packet("malformed", "rxpk handling failed")

    def _rxpk(self, fwd: Forwarder, pk: Any, heard_at: float) -> None:
        self.counts["rxpk"] += 1
        if not isinstance(pk, dict):
            return self._bad_packet("malformed", "rxpk entry is not an object")
        stat = pk.get("stat", 1)
        if isinstance(stat, bool) or stat not in (-1, 0, 1):
            self._bad_field("stat")  # kept: the frame's MIC is the integrity check that decides
        if stat == -1 and not isinstance(stat, bool):
            return self._bad_packet("bad_crc", "PHY CRC failed")
        if stat == 0 and not isinstance(stat, bool):
            self.counts["no_crc"] += 1
            if not self.accept_no_crc:
                return self._bad_packet("no_crc", "sent without a PHY CRC")
        data = pk.get("data")
        if not isinstance(data, str):
            return self._bad_packet("malformed", "rxpk without data")
        try:
            raw = _b64(data)
        except (binascii.Error, ValueError):
            return self._bad_packet("malformed", "rxpk data is not base64")
        tmst = pk.get("tmst")
        if isinstance(tmst, bool) or not isinstance(tmst, int) or not 0 <= tmst < TMST_MOD:
            self._bad_field("tmst", tmst)
            tmst = None
        freq = _number(pk.get("freq"))
        if freq is None or not 0 < freq < 1e5:  # MHz
            self._bad_field("freq", pk.get("freq"))
            freq = None
        datr = pk.get("datr")
        sf = None
        if isinstance(datr, str):
            m = _DATR.match(datr)
            if m:
                sf = int(m.group(1))
        codr = pk.get("codr")
        rssi = _number(pk.get("rssi"))
        if rssi is None:
            self._bad_field("rssi", pk.get("rssi"))
        snr = _number(pk.get("lsnr"))
        if snr is None:
            self._bad_field("lsnr", pk.get("lsnr"))
        rsig = pk.get("rsig")  # multi-antenna forwarders put the figures per antenna
        if (rssi is None or snr is None) and isinstance(rsig, list) and rsig and isinstance(rsig[0], dict):
            rssi = rssi if rssi is not None else _number(rsig[0].get("rssic"))
            snr = snr if snr is not None else _number(rsig[0].get("lsnr"))
        rx_time = _parse_time(pk.get("time"))
        if rx_time is None:
            self._bad_field("time", pk.get("time"))
        now = self.clock()
        if rx_time is None or (rx_time > now and not self.trust_time):
            rx_time = now  # never after the present: a node's last_seen must not leave it (issue 20)
        path = None
        if tmst is not None and freq is not None and sf is not None and isinstance(datr, str):
            path = Uplink(
                self,
                fwd.eui,
                tmst,
                freq,
                datr,
                codr if isinstance(codr, str) and _CODR.match(codr) else "4/5",
                heard_at,
                fwd.air_ms(tmst),
            )
        reception = Reception(
            raw=raw,
            transport=TRANSPORT,
            gateway_id=f"{TRANSPORT}:{fwd.eui}",
            rx_time=rx_time,
            rssi=rssi,
            snr=snr,
            freq_hz=int(round(freq * 1e6)) if freq is not None else None,
            sf=sf,
            tmst=tmst,
            path=path,
        )
        self.counts["rxpk_forwarded"] += 1
        self.ingestor.offer(reception)

    def _bad_field(self, name: str, value: Any = 0) -> None:
        """A metadata field present but unusable (a 400-digit rssi, a string for a number): the
        field is dropped, not the frame, and counted as `rxpk_bad_field` (an absent one is not)."""
        if value is not None:
            self.counts["rxpk_bad_field"] += 1

    def _bad_packet(self, reason: str, why: str) -> None:
        self.counts[f"rxpk_{reason}"] += 1
        report_reject(self.pipeline, reason, TRANSPORT, self._limiter, log, why)

    def _tx_ack(self, data: bytes) -> None:
        self.counts["tx_ack"] += 1
        token = int.from_bytes(data[1:3], "big")
        eui = data[4:12].hex()
        pending = self._pending.get(token)
        if pending is None or pending[0] != eui:
            self.counts["tx_ack_unmatched"] += 1
            return
        error = "NONE"
        body = data[12:].strip(b"\x00 \r\n\t")
        if body:
            try:
                doc = _loads(body)
                ack = doc.get("txpk_ack") if isinstance(doc, dict) else None
                if isinstance(ack, dict) and isinstance(ack.get("error"), str):
                    error = ack["error"][:40]
            except (ValueError, RecursionError):
                self.counts["tx_ack_malformed"] += 1
        fut = pending[1]
        if not fut.done():
            fut.set_result(error)

    # -- downlinks ---------------------------------------------------------

    def _next_token(self) -> int:
        for _ in range(1 << 16):
            self._token = (self._token + 1) & 0xFFFF
            if self._token not in self._pending:
                return self._token
        raise DownlinkError("busy", "every PULL_RESP token is waiting for a TX_ACK")

    def route(self, eui: str) -> Forwarder | None:
        """The forwarder a downlink for `eui` can go through now, or None."""
        fwd = self.forwarders.get(eui)
        if fwd is None or fwd.pull_addr is None or self.monotonic() - fwd.last_pull > self.route_timeout:
            return None
        return fwd

    async def transmit(self, frame: bytes, up: Uplink) -> None:
        """Schedule `frame` in the RX1 window of uplink `up`; raises DownlinkError."""
        try:
            await self._transmit(frame, up)
        except DownlinkError as e:
            self.counts[f"downlink_{e.reason}"] += 1
            raise
        self.counts["downlinks_sent"] += 1

    async def _transmit(self, frame: bytes, up: Uplink) -> None:
        if self._transport is None:
            raise DownlinkError("no_route", "server stopped")
        fwd = self.route(up.eui)
        if fwd is None:
            raise DownlinkError("no_route", f"no PULL_DATA from {up.eui} in the last {self.route_timeout:g} s")
        now = self.monotonic()
        left = up.heard_at + self.rx_delay - now
        if left < self.send_margin:
            raise DownlinkError("too_late", f"{left * 1000:.0f} ms before RX1, need {self.send_margin * 1000:.0f}")
        m = _DATR.match(up.datr)
        sf, bw_hz = int(m.group(1)), int(m.group(2)) * 1000  # type: ignore[union-attr]
        freq_hz = int(round(up.freq_mhz * 1e6))
        band = None
        try:
            band = lora.band_for(freq_hz, bw_hz)
            airtime = lora.airtime_ms(len(frame), sf, bw_hz, int(up.codr[2]))
        except ValueError:
            airtime = None  # outside EU868 or a setting lora.py does not model: no accounting
        start_ms = up.air_ms + int(self.rx_delay * 1000)  # on the radio's clock (module docstring)
        if band is not None and airtime is not None and fwd.duty.wait_ms(start_ms, band):
            raise DownlinkError(
                "duty_cycle", f"sub-band {lora.band_name(band)} closed for {fwd.duty.wait_ms(start_ms, band)} ms more"
            )
        txpk = {
            "imme": False,
            "tmst": (up.tmst + int(self.rx_delay * 1_000_000)) % TMST_MOD,
            "freq": up.freq_mhz,
            "rfch": 0,
            "powe": self.tx_power,
            "modu": "LORA",
            "datr": up.datr,
            "codr": up.codr,
            "ipol": self.invert_iq,
            "size": len(frame),
            "data": base64.b64encode(frame).decode("ascii"),
        }
        await self._send_txpk(fwd, txpk, band, airtime, start_ms)

    async def _send_txpk(
        self, fwd: Forwarder, txpk: dict[str, Any], band: int | None, airtime: Any, start_ms: int
    ) -> None:
        token = self._next_token()
        payload = (
            bytes((fwd.version, token >> 8, token & 0xFF, PULL_RESP))
            + json.dumps({"txpk": txpk}, separators=(",", ":")).encode()
        )
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[token] = (fwd.eui, fut)
        assert self._transport is not None
        try:
            self._transport.sendto(payload, fwd.pull_addr)
            try:
                error = await asyncio.wait_for(fut, self.tx_ack_timeout)
            except TimeoutError:
                self.counts["tx_ack_missing"] += 1
                error = "NONE"  # no feedback: assume it went out (and account its airtime)
        finally:
            self._pending.pop(token, None)
        if error not in ("NONE", ""):
            raise DownlinkError(error.lower(), f"forwarder {fwd.eui} refused the downlink")
        if band is not None and airtime is not None:
            fwd.duty.record(start_ms, airtime, band)

    async def transmit_now(self, frame: bytes, freq_mhz: float, sf: int) -> int:
        """Send `frame` at once (`imme`) through every forwarder with a live route: a multicast.

        LoRa class C (SPEC §5 "Groups"): the members listen all the time, so the frame goes now,
        on `freq_mhz` at SF`sf`/125 kHz, within each forwarder's duty cycle (its concentrator
        time is estimated from its last uplink plus the time since). Returns how many forwarders
        took it; raises DownlinkError when none could (no route, duty cycle spent, refused).
        """
        if self._transport is None:
            raise DownlinkError("no_route", "server stopped")
        freq_hz = int(round(freq_mhz * 1e6))
        band = lora.band_for(freq_hz)
        airtime = lora.airtime_ms(len(frame), sf)
        sent, reason, why = 0, "no_route", "no forwarder with a live route"
        for eui in list(self.forwarders):
            fwd = self.route(eui)
            if fwd is None:
                continue
            start_ms = fwd.air_us // 1000 + int((self.monotonic() - fwd.last_push) * 1000)
            if fwd.duty.wait_ms(start_ms, band):
                reason = "duty_cycle"
                why = f"sub-band {lora.band_name(band)} closed for {fwd.duty.wait_ms(start_ms, band)} ms more"
                self.counts["downlink_duty_cycle"] += 1
                continue
            txpk = {
                "imme": True,
                "freq": freq_mhz,
                "rfch": 0,
                "powe": self.tx_power,
                "modu": "LORA",
                "datr": f"SF{sf}BW125",
                "codr": "4/5",
                "ipol": self.invert_iq,
                "size": len(frame),
                "data": base64.b64encode(frame).decode("ascii"),
            }
            try:
                await self._send_txpk(fwd, txpk, band, airtime, start_ms)
            except DownlinkError as e:
                reason, why = e.reason, f"forwarder {fwd.eui} refused it ({e.reason})"
                continue
            sent += 1
            self.counts["multicasts_sent"] += 1
        if not sent:
            raise DownlinkError(reason, why)
        return sent
