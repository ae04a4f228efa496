"""The gateway's configuration: one TOML file, checked before anything starts.

`load_config(path)` returns a `GatewayConfig` or raises `ConfigError` whose
message names the file, the key and why (`gateway.toml: api.port: 70000 is
not a port number (1..65535)`). Unknown keys are errors (a typo must not
silently fall back to a default), with the closest known key suggested.

Relative paths are relative to the config file's directory, so a deployment
directory can be moved as a whole. Secrets (API and upstream tokens) come
from `token_file` (preferred: the file must be mode 0600 or stricter) or
`token`; they are held in `Secret` objects that never show in reprs or logs.
The MQTT upstream's credentials (`[mqtt] username`, `password`) likewise, each
from its `_file` key or the value itself (no length rule: the broker decides).

`example_config()` is the complete commented configuration printed by
`lumeau gateway --example-config`; it loads as is (tests check that, and
that it mentions every key), with a fresh random API token each time.

One file (over 600 lines): every section's declarations are both the validator and the example.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import secrets
import socket
import stat
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway import files
from gateway.notify_config import NotifyConfig, NotifyConfigError, example_notify, parse_notify
from gateway.pipeline import DEFAULT_MAX_INFLIGHT
from gateway.secret import Secret
from gateway.store import DEFAULT_GROUP_MAX, DEFAULT_MAX_RECORDS, DEFAULT_QUARANTINE_MAX, DEFAULT_RESERVE_BYTES
from gateway.timesync import DEFAULT_MAX_DRIFT_PPM, DEFAULT_THRESHOLD_S

TOKEN_MIN_LEN = 16  # characters: a bearer token shorter than this is guessable
LOG_LEVELS = ("debug", "info", "warning", "error")
UPSTREAM_FORMATS = ("native", "ngsi-ld")
SERIAL_MODES = ("auto", "wired", "bridge")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


# ---------------------------------------------------------------- checks

Check = Callable[[Any], str | None]  # returns why the value is wrong, or None


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"{v} must be positive"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"{v} must not be negative"


def _port(v: Any) -> str | None:
    return None if 1 <= v <= 65535 else f"{v} is not a port number (1..65535)"


def _port0(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else f"{v} is not a port number (0..65535; 0 picks a free one)"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"{v!r} is not one of {', '.join(choices)}"

    return check


def _nonempty(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def _host(v: Any) -> str | None:
    if not v.strip():
        return "must not be empty"
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if v != "localhost" and not all(p.isalnum() or "-" in p for p in v.split(".")):
            return f"{v!r} is neither an IP address nor a host name"
    return None


def _group(v: Any) -> str | None:
    if v == "":
        return None
    try:
        files.group_id(v)
    except ValueError as e:
        return str(e)
    return None


def _sources(v: Any) -> str | None:
    from gateway.transports.semtech import parse_sources

    try:
        parse_sources(v)
    except ValueError as e:
        return str(e)
    return None


def _mqtt_site(v: Any) -> str | None:
    from gateway.mqtt_shapes import check_site

    return None if v == "" else check_site(v)


def _url(v: Any) -> str | None:
    if not (v.startswith("http://") or v.startswith("https://")):
        return f"{v!r} must start with http:// or https://"
    return None


def _range(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"{v} is outside {lo:g}..{hi:g}"

    return check


def opt(default: Any, help: str, check: Check | None = None, kind: str = "") -> Any:
    """A config key: default, one-line help (for the example), check, special kind ("path", "secret")."""
    return field(default=default, metadata={"help": help, "check": check, "kind": kind})


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class GatewaySection:
    id: str = opt("", "name of this gateway in logs and records (default: the host name)")
    database: Path = opt(
        Path("gateway.db"), "the SQLite database: durable queue, replay windows, downlinks", kind="path"
    )
    registry: Path = opt(Path("nodes.toml"), "the node registry written by provisioning (mode 0600)", kind="path")
    file_group: str = opt(
        "", "group that may read the database and the log (mode 0640); empty: the owner only (0600)", _group
    )
    trust_radio_time: bool = opt(
        False,
        "take radios' own times (a bridge's TIME, a forwarder's `time`) even far from this host's clock: "
        "only for the simulator's virtual time (otherwise a bridge TIME beyond 5 s is refused and no "
        "reception is dated after the present)",
    )


@dataclass(frozen=True)
class LogSection:
    level: str = opt("info", "debug | info | warning | error", _one_of(*LOG_LEVELS))
    file: str = opt("-", 'JSON lines go here; "-" is standard error')


@dataclass(frozen=True)
class QueueSection:
    max_records: int = opt(
        DEFAULT_MAX_RECORDS,
        "records kept while the upstream is away (~110 B each); "
        "when full: oldest routine telemetry first, alarms never",
        _positive,
    )
    quarantine_max_records: int = opt(
        DEFAULT_QUARANTINE_MAX, "records of refused (4xx) batches kept for inspection", _non_negative
    )
    group_max: int = opt(DEFAULT_GROUP_MAX, "records per transaction at most (one fsync each)", _positive)
    reserve_bytes: int = opt(
        DEFAULT_RESERVE_BYTES,
        "disk space reserved beside the database for alarms: released when the disk fills "
        "(only alarms are stored then), re-made when room returns; 0: none",
        _non_negative,
    )


@dataclass(frozen=True)
class PipelineSection:
    max_inflight: int = opt(
        DEFAULT_MAX_INFLIGHT, "receptions queued or committing before transports are slowed down", _positive
    )


@dataclass(frozen=True)
class DownlinksSection:
    default_ttl_s: float = opt(3600.0, "a queued downlink expires after this unless the request says", _positive)
    max_attempts: int = opt(3, "times a COMMAND is sent without a CMD_ACK before it is failed", _positive)
    max_queued_per_node: int = opt(16, "downlinks waiting per node at most", _positive)
    collect_s: float = opt(
        0.2,
        "after a LoRa uplink, wait this long for other radios' copies and answer through the best one",
        _range(0.0, 0.8),
    )
    ack_alarms: bool = opt(True, "acknowledge confirmed alarms (SPEC 6) once they are stored")
    auto_time: bool = opt(True, "send TIME on its own: to nodes without valid time, and to re-sync drift (SPEC 4)")
    time_resync_s: float = opt(
        DEFAULT_THRESHOLD_S,
        "re-sync a node's clock before its offset could pass this many seconds",
        _range(0.5, 3600.0),
    )
    time_max_drift_ppm: float = opt(
        DEFAULT_MAX_DRIFT_PPM, "the worst crystal drift the re-sync plans for, ppm", _range(1.0, 10000.0)
    )
    time_airtime_s_per_h: float = opt(
        9.0, "air time per hour automatic TIMEs may use (within the 1 % duty cycle)", _range(0.1, 36.0)
    )
    multicast_repair_s: float = opt(
        120.0,
        "a group multicast's member without an ok CMD_ACK after this many seconds gets it by unicast",
        _range(0.05, 86400.0),
    )


@dataclass(frozen=True)
class FuotaSection:
    """Release images over LoRa: fragments with forward error correction (gateway/fuota.py; SPEC 13)."""

    redundancy: float = opt(
        0.25, "coded fragments sent after the image's N fragments, as a share of N", _range(0.0, 4.0)
    )
    margin: int = opt(2, "coded fragments a repair sends beyond what the worst node misses", _range(0, 1000))
    max_rounds: int = opt(4, "status + repair rounds after the first pass before a node is failed", _range(0, 100))
    duty_cycle: float = opt(
        0.1, "share of the time multicast fragments may use (869.525 MHz, sub-band g3: 10 %)", _range(0.001, 0.1)
    )
    status_timeout_s: float = opt(
        7200.0, "wait this long for a node's answer to a status request (it comes after its next uplink)", _positive
    )
    session_timeout_s: float = opt(
        604800.0, "unicast: the fragments of one pass must go out in the node's receive windows within this", _positive
    )


@dataclass(frozen=True)
class CalendarsSection:
    """Lighting and irrigation calendars (gateway/calendars.py, gateway/calendar_sync.py; SPEC 5 "Calendars")."""

    dir: Path | None = opt(
        None,
        "directory of calendar files (*.toml, in name order: the first that names a node wins); unset: off",
        kind="path",
    )


def _release_key(v: Any) -> str | None:
    if v == "" or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
        return None
    return "the city's PUBLIC release key: 64 lowercase hex digits (`lumeau node release-key` prints it), or empty"


@dataclass(frozen=True)
class CampaignsSection:
    """Firmware update campaigns (gateway/campaigns.py; gateway/README.md "Campaigns")."""

    release_key: str = opt(
        "",
        "the city's PUBLIC release key (64 hex): images not signed by it are refused; empty: not checked here",
        _release_key,
    )
    target: str = opt(
        "", "the nodes' board (esp32, rp2): a release for another is refused; empty: any", _one_of("", "esp32", "rp2")
    )
    healthy_after_s: float = opt(
        150.0, "a node is healthy once it reports this long after its HELLO from the new release", _range(1.0, 86400.0)
    )
    window_s: float = opt(
        7200.0,
        "canaries must be healthy within this long after their delivery, or the campaign halts",
        _range(1.0, 30 * 86400.0),
    )


@dataclass(frozen=True)
class AdrSection:
    """Adaptive data rate (gateway/adr.py; SPEC 5 "ADR"): off unless enabled; defaults ChirpStack's."""

    enabled: bool = opt(False, "set LoRa nodes' SF and TX power by CONFIG from the SNR of their uplinks")
    margin_db: float = opt(10.0, "installation margin kept above the demodulation floor, dB", _range(0.0, 40.0))
    step_db: float = opt(3.0, "margin per step: one SF faster, or power_step_db less power at SF7", _range(0.5, 20.0))
    history: int = opt(20, "uplinks whose SNR is kept per node", _range(1, 1000))
    min_uplinks: int = opt(20, "uplinks at the current settings before any change (at most history)", _range(1, 1000))
    statistic: str = opt("max", "the SNR of the history used: max (ChirpStack) or mean", _one_of("max", "mean"))
    sf_policy: str = opt(
        "fastest",
        "fastest: each node's fastest SF; balanced: spread the airtime of all nodes over the SFs",
        _one_of("fastest", "balanced"),
    )
    tx_power_min: int = opt(2, "lowest TX power set, dBm", _range(2, 14))
    tx_power_max: int = opt(14, "highest TX power set (and assumed for a node not yet set), dBm", _range(2, 14))
    power_step_db: int = opt(2, "TX power step, dB", _range(1, 12))
    raise_sf: bool = opt(True, "at full power and short of margin, move a node to a slower SF")
    penalty_db: float = opt(3.0, "margin added to a node each time it stepped back after losing uplinks", _range(0, 20))
    max_active: int = opt(
        0,
        "nodes with a change under way at once (each costs 2 downlinks of the gateway's duty cycle); 0: no limit",
        _range(0, 100000),
    )


@dataclass(frozen=True)
class ApiSection:
    enabled: bool = opt(True, "the local HTTP API and /metrics")
    host: str = opt("127.0.0.1", "listen address; keep it local unless a reverse proxy adds TLS", _host)
    port: int = opt(8760, "listen port", _port0)
    token_file: Path | None = opt(None, "file holding the bearer token (mode 0600); or set token", kind="path")
    token: Secret | None = opt(None, f"the bearer token itself, at least {TOKEN_MIN_LEN} characters", kind="secret")
    ui: bool = opt(
        True, "serve the technician web page at / (static files; its data comes through this API, with the token)"
    )
    silent_after_s: float = opt(
        2700.0,
        "a node not heard for this long is shown as silent (three missed reports at the default 15 minutes)",
        _positive,
    )


@dataclass(frozen=True)
class UpstreamSection:
    enabled: bool = opt(True, "send records upstream (off: they stay queued, bounded)")
    url: str = opt(
        "http://127.0.0.1:8088/v1/records",
        "where batches go (the default is `lumeau sink`); "
        "for ngsi-ld the broker's .../ngsi-ld/v1/entityOperations/upsert",
        _url,
    )
    format: str = opt("native", "native | ngsi-ld", _one_of(*UPSTREAM_FORMATS))
    native_version: int = opt(
        3,
        "native format version (gateway/FORMATS.md): 3 is columnar, about half the bytes "
        "and CPU; 2 (one object per record) for receivers written against /2",
        _range(2, 3),
    )
    token_file: Path | None = opt(None, "file holding the upstream's bearer token (mode 0600)", kind="path")
    token: Secret | None = opt(None, "the upstream's bearer token itself", kind="secret")
    batch_max_records: int = opt(
        0,
        "a batch is sent when it holds this many records; 0: by format, 2000 for "
        "native /3 (~90 kB gzipped), 500 for /2 and ngsi-ld (below 1 MB request limits)",
        _range(0, 10_000),
    )
    batch_max_age_s: float = opt(5.0, "or when its oldest record waited this long (alarms go at once)", _positive)
    timeout_s: float = opt(30.0, "a request taking longer is retried", _positive)
    gzip_level: int = opt(1, "0 (off) to 9; 1 already shrinks telemetry JSON 8-10x", _range(0, 9))
    gzip: str = opt(
        "auto",
        "auto | on | off: gzip request bodies; auto: on for native (lumeau sink takes it), off for "
        "ngsi-ld (brokers differ; on only for one known to decode Content-Encoding: gzip)",
        _one_of("auto", "on", "off"),
    )
    backoff_initial_s: float = opt(1.0, "first retry delay; doubled per failure, with jitter", _positive)
    backoff_max_s: float = opt(60.0, "retry delay at most", _positive)
    max_retry_after_s: float = opt(900.0, "a Retry-After longer than this is capped", _positive)
    tenant: str = opt("", "NGSI-LD tenant (NGSILD-Tenant header), empty for none")


@dataclass(frozen=True)
class MqttSection:
    """The MQTT upstream (gateway/upstream_mqtt.py): instead of [upstream], to an MQTT broker."""

    enabled: bool = opt(False, "send records to an MQTT broker instead of [upstream] (which then must not be enabled)")
    host: str = opt("127.0.0.1", "the broker's host name or address", _host)
    port: int = opt(1883, "the broker's port (8883: MQTT over TLS)", _port)
    shape: str = opt(
        "plain",
        "plain: lumeau/<site>/<node>/<type> topics; thingsboard: ThingsBoard's Gateway MQTT API (v1/gateway/...)",
        _one_of("plain", "thingsboard"),
    )
    site: str = opt("", "the <site> topic level (plain); empty: the gateway's id", _mqtt_site)
    commands: bool = opt(
        True,
        "take commands (ThingsBoard RPCs, plain command topic) from whoever the broker lets publish there: "
        "restrict it with the broker's ACL; false: refused with an error reply",
    )
    client_id: str = opt("", "MQTT client identifier; empty: lumeau-<site>")
    username_file: Path | None = opt(
        None, "file holding the user name (mode 0600); ThingsBoard: the access token", kind="path"
    )
    username: Secret | None = opt(
        None, "the user name itself (ThingsBoard: the gateway device's access token)", kind="credential"
    )
    password_file: Path | None = opt(None, "file holding the password (mode 0600)", kind="path")
    password: Secret | None = opt(None, "the password itself", kind="credential")
    tls: bool = opt(False, "connect over TLS (the broker's certificate checked against the system's CAs or ca_file)")
    ca_file: Path | None = opt(None, "PEM file of the CA(s) the broker's certificate must chain to", kind="path")
    cert_file: Path | None = opt(
        None, "client certificate (PEM) for brokers that authenticate by certificate", kind="path"
    )
    key_file: Path | None = opt(None, "the client certificate's private key (PEM, mode 0600)", kind="path")
    keepalive_s: int = opt(
        60, "MQTT keep-alive: the broker drops a silent connection after 1.5 times this", _range(5, 3600)
    )
    batch_max_records: int = opt(
        500, "records published per batch at most (each acknowledged before the next)", _range(1, 10_000)
    )
    batch_max_age_s: float = opt(
        1.0, "a smaller batch goes when its oldest record waited this long (alarms at once)", _non_negative
    )
    timeout_s: float = opt(30.0, "a PUBACK not back within this counts as a lost connection", _positive)
    max_payload_bytes: int = opt(
        65536,
        "ThingsBoard telemetry messages are split below this (ThingsBoard's default limit)",
        _range(256, 268435455),
    )
    backoff_initial_s: float = opt(1.0, "first reconnect delay; doubled per failure, with jitter", _positive)
    backoff_max_s: float = opt(60.0, "reconnect delay at most", _positive)


@dataclass(frozen=True)
class SemtechSection:
    enabled: bool = opt(False, "listen for Semtech UDP packet forwarders (any commercial LoRa gateway)")
    host: str = opt("0.0.0.0", "listen address: the LAN the forwarders are on", _host)
    port: int = opt(1700, "the forwarders' serv_port_up and serv_port_down", _port0)
    rx_delay_s: float = opt(1.0, "RX1 delay after an uplink (SPEC 6)", _range(0.1, 15.0))
    tx_power_dbm: int = opt(14, "downlink transmit power (EU868 g1: 14 dBm ERP at most)", _range(0, 30))
    invert_iq: bool = opt(
        True,
        "downlink IQ polarity inverted (the LoRaWAN convention, so nodes do not hear "
        "each other); must match what the nodes listen for",
    )
    accept_no_crc: bool = opt(True, "accept packets sent without a PHY CRC (stat 0): the MIC still checks them")
    rcvbuf_bytes: int = opt(
        8 * 1024 * 1024,
        "socket receive buffer asked for (0: the system's); Linux caps it at net.core.rmem_max "
        "without CAP_NET_ADMIN; what was granted and the kernel's drops are in /metrics",
        _non_negative,
    )
    source_binding: str = opt(
        "tofu",
        "tofu: each gateway EUI is bound to the address it is first heard from; configured: only the "
        "EUIs in `sources`; off: any source (spoofable); PUSH/PULL_DATA from another address are refused",
        _one_of("tofu", "configured", "off"),
    )
    sources: str = opt("", 'gateway EUI = its source IP, e.g. "aa555a0000000101=192.0.2.10, ..."', _sources)


@dataclass(frozen=True)
class BasicStationSection:
    """LoRa Basics Station LNS endpoint (gateway/transports/basicstation.py): WebSocket, TLS, a token per gateway."""

    enabled: bool = opt(False, "accept LoRa Basics Stations (the LNS protocol over WebSocket)")
    host: str = opt("0.0.0.0", "listen address", _host)
    port: int = opt(8887, "listen port; the station's tc.uri is wss://<this host>:<port>/router-info", _port0)
    tokens_file: Path | None = opt(
        None,
        "file of `EUI token` lines, one per gateway (mode 0600); a station's tc.key holds "
        "`Authorization: Bearer <token>`",
        kind="path",
    )
    tls: bool = opt(
        True, "serve wss:// with cert_file and key_file; false only behind a TLS-terminating proxy on this host"
    )
    cert_file: Path | None = opt(
        None, "the server certificate chain (PEM); stations trust it through tc.trust", kind="path"
    )
    key_file: Path | None = opt(None, "its private key (PEM, mode 0600)", kind="path")
    rx_delay_s: int = opt(1, "RX1 delay after an uplink, whole seconds (SPEC 6)", _range(1, 15))
    dntxed_timeout_s: float = opt(
        3.0, "a downlink without the station's dntxed this long after RX1 stays queued", _positive
    )
    max_message_bytes: int = opt(65536, "a larger WebSocket message closes the connection", _range(1024, 1 << 24))


def _mqtt_level(v: Any) -> str | None:
    if not v:
        return "required: the ChirpStack application's id (a UUID, in its web interface)"
    if any(c in v for c in "/+#\0") or len(v) > 128:
        return f"{v!r} is not one MQTT topic level (no / + # and at most 128 characters)"
    return None


@dataclass(frozen=True)
class ChirpStackSection:
    """ChirpStack v4 southbound (gateway/transports/chirpstack.py, SPEC 14): nodes behind a LoRaWAN network."""

    enabled: bool = opt(False, "read uplinks from a ChirpStack v4 application's MQTT integration")
    host: str = opt("127.0.0.1", "the broker ChirpStack's MQTT integration publishes to", _host)
    port: int = opt(1883, "the broker's port (8883: MQTT over TLS)", _port)
    application_id: str = opt("", "the ChirpStack application's id (UUID): application/<id>/device/...")
    client_id: str = opt("", "MQTT client identifier (a persistent session); empty: lumeau-<application_id>")
    username_file: Path | None = opt(None, "file holding the broker user name (mode 0600)", kind="path")
    username: Secret | None = opt(None, "the broker user name itself", kind="credential")
    password_file: Path | None = opt(None, "file holding the broker password (mode 0600)", kind="path")
    password: Secret | None = opt(None, "the broker password itself", kind="credential")
    tls: bool = opt(False, "connect over TLS (the broker's certificate checked against the system's CAs or ca_file)")
    ca_file: Path | None = opt(None, "PEM file of the CA(s) the broker's certificate must chain to", kind="path")
    cert_file: Path | None = opt(None, "client certificate (PEM), for brokers that ask for one", kind="path")
    key_file: Path | None = opt(None, "the client certificate's private key (PEM, mode 0600)", kind="path")
    keepalive_s: int = opt(60, "MQTT keep-alive", _range(5, 3600))
    confirmed: bool = opt(
        False, "send downlinks as LoRaWAN confirmed data (Lumeau's CMD_ACK already confirms end to end)"
    )
    max_event_bytes: int = opt(
        65536, "an event larger than this is refused (counted as oversized)", _range(256, 1 << 24)
    )
    backoff_initial_s: float = opt(1.0, "first reconnect delay; doubled per failure, with jitter", _positive)
    backoff_max_s: float = opt(60.0, "reconnect delay at most", _positive)


@dataclass(frozen=True)
class SerialPortSection:
    port: str = opt("", "device path, e.g. /dev/ttyUSB0 (required)", _nonempty)
    baudrate: int = opt(115200, "line speed", _positive)
    mode: str = opt(
        "auto",
        "auto: tell by what arrives; wired: nodes on the line (UART, RS-485); bridge: a LoRa radio bridge board",
        _one_of(*SERIAL_MODES),
    )
    reconnect_min_s: float = opt(0.2, "first retry when the port is missing; doubled up to reconnect_max_s", _positive)
    reconnect_max_s: float = opt(5.0, "retry opening a missing port at least this often", _positive)


@dataclass(frozen=True)
class BleSection:
    enabled: bool = opt(False, "talk to nodes in Bluetooth LE reach (bleak)")
    adapter: str = opt("", "the adapter, e.g. hci1; empty: the system's default")
    scan_interval_s: float = opt(
        30.0, "scan for nodes advertising the Lumeau service this often; 0: continuously", _non_negative
    )
    scan_window_s: float = opt(5.0, "each scan lasts this long", _positive)
    max_connections: int = opt(7, "nodes connected at once (adapters manage 7 to 10)", _range(1, 32))


def _url_or_empty(v: Any) -> str | None:
    if v == "":
        return None
    try:
        u = urlsplit(v)
        u.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as e:
        return f"{v!r} is not a URL: {e}"
    if not u.hostname:
        return f"{v!r} has no host"
    return _url(v)


@dataclass(frozen=True)
class Open311Section:
    """The city's Open311 API, read for the technician page (gateway/open311_feed.py)."""

    url: str = opt(
        "",
        "GeoReport v2 endpoint whose open service requests the technician page shows beside the nodes "
        '(lumeau sink: "http://127.0.0.1:8088/open311/v2"); empty: none',
        _url_or_empty,
    )
    jurisdiction_id: str = opt("", "jurisdiction_id to ask for; empty: the server's default")
    refresh_s: float = opt(30.0, "read the requests at most this often (every open page shares one read)", _positive)
    timeout_s: float = opt(10.0, "a read taking longer fails (the page keeps the last list)", _positive)
    radius_m: float = opt(
        60.0,
        "a request that names no node (a server other than lumeau sink) is shown beside the nodes this close",
        _positive,
    )


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    gateway: GatewaySection
    log: LogSection
    queue: QueueSection
    pipeline: PipelineSection
    downlinks: DownlinksSection
    api: ApiSection
    upstream: UpstreamSection
    semtech: SemtechSection
    serial: tuple[SerialPortSection, ...]
    ble: BleSection
    adr: AdrSection = field(default_factory=AdrSection)
    calendars: CalendarsSection = field(default_factory=CalendarsSection)
    fuota: FuotaSection = field(default_factory=FuotaSection)
    campaigns: CampaignsSection = field(default_factory=CampaignsSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    chirpstack: ChirpStackSection = field(default_factory=ChirpStackSection)
    basicstation: BasicStationSection = field(default_factory=BasicStationSection)
    notify: NotifyConfig = field(default_factory=NotifyConfig)  # gateway/notify_config.py
    open311: Open311Section = field(default_factory=Open311Section)


_SECTIONS: dict[str, type] = {
    "gateway": GatewaySection,
    "log": LogSection,
    "queue": QueueSection,
    "pipeline": PipelineSection,
    "downlinks": DownlinksSection,
    "api": ApiSection,
    "upstream": UpstreamSection,
    "semtech": SemtechSection,
    "ble": BleSection,
    "adr": AdrSection,
    "calendars": CalendarsSection,
    "fuota": FuotaSection,
    "campaigns": CampaignsSection,
    "mqtt": MqttSection,
    "chirpstack": ChirpStackSection,
    "basicstation": BasicStationSection,
    "open311": Open311Section,
}
_ARRAYS: dict[str, type] = {"serial": SerialPortSection}


# ---------------------------------------------------------------- loading


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(t, t.__name__)


def _read_secret_file(p: Path, where: str, min_len: int = TOKEN_MIN_LEN) -> Secret:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{where}: {p} does not exist") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{where}: {p} holds a secret but is accessible to group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}"
        )
    try:
        value = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read {p}: {e}") from None
    if len(value) < max(min_len, 1):
        if min_len <= 1:
            raise ConfigError(f"{where}: {p} is empty")
        raise ConfigError(f"{where}: the token in {p} is shorter than {TOKEN_MIN_LEN} characters")
    return Secret(value)


def _section(cls: type, data: Any, where: str, base: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise ConfigError(f"{where}.{key}: unknown key{hint}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        kind = f.metadata["kind"]
        default = f.default
        assert default is not MISSING  # every field is made by opt(), which gives it a default
        if name not in data:
            if kind == "path" and default is not None:  # defaults are relative to the file too
                values[name] = base / default
            continue
        v = data[name]
        key = f"{where}.{name}"
        if kind == "path":
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{key}: must be a path (text)")
            p = Path(v).expanduser()
            values[name] = p if p.is_absolute() else base / p
            continue
        if kind == "secret":
            if not isinstance(v, str):
                raise ConfigError(f"{key}: must be text")
            if len(v) < TOKEN_MIN_LEN:
                raise ConfigError(f"{key}: shorter than {TOKEN_MIN_LEN} characters: too easy to guess")
            values[name] = Secret(v)
            continue
        if kind == "credential":  # a broker's user name or password: text, its length the broker's business
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{key}: must be non-empty text")
            values[name] = Secret(v)
            continue
        want = type(default)
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if type(v) is not want:
            raise ConfigError(f"{key}: must be {_type_name(want)}, got {v!r}")
        if want is float and not math.isfinite(v):
            raise ConfigError(f"{key}: must be a finite number")
        check = f.metadata["check"]
        if check is not None:
            why = check(v)
            if why:
                raise ConfigError(f"{key}: {why}")
        values[name] = v
    if "token" in known:
        if "token" in values and "token_file" in values:
            raise ConfigError(f"{where}: set token or token_file, not both")
        if "token_file" in values:
            values["token"] = _read_secret_file(values["token_file"], f"{where}.token_file")
    for name, f in known.items():
        if f.metadata["kind"] == "credential" and f"{name}_file" in known:
            if name in values and f"{name}_file" in values:
                raise ConfigError(f"{where}: set {name} or {name}_file, not both")
            if f"{name}_file" in values:
                values[name] = _read_secret_file(values[f"{name}_file"], f"{where}.{name}_file", 1)
    return cls(**values)


def parse_config(data: dict[str, Any], path: Path) -> GatewayConfig:
    """Check a parsed TOML document; `path` names it in errors and anchors relative paths."""
    base = path.absolute().parent
    name = str(path)
    for key in data:
        if key not in _SECTIONS and key not in _ARRAYS and key != "notify":
            close = difflib.get_close_matches(key, [*_SECTIONS, *_ARRAYS, "notify"], n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"{name}: [{key}]: unknown section{hint}")
    try:
        out: dict[str, Any] = {}
        for sec, cls in _SECTIONS.items():
            out[sec] = _section(cls, data.get(sec, {}), sec, base)
        ports = data.get("serial", [])
        if not isinstance(ports, list):
            raise ConfigError("serial: must be an array of tables ([[serial]])")
        out["serial"] = tuple(_section(SerialPortSection, p, f"serial[{i}]", base) for i, p in enumerate(ports))
        for i, p in enumerate(out["serial"]):
            if "port" not in ports[i]:
                raise ConfigError(f"serial[{i}].port: required")
            if p.reconnect_min_s > p.reconnect_max_s:
                raise ConfigError(f"serial[{i}].reconnect_min_s: larger than reconnect_max_s")
        seen = set()
        for i, p in enumerate(out["serial"]):
            if p.port in seen:
                raise ConfigError(f"serial[{i}].port: {p.port} is listed twice")
            seen.add(p.port)
        out["notify"] = parse_notify(data.get("notify", {}), base)  # its own module: rules are lists of tables
    except (ConfigError, NotifyConfigError) as e:
        raise ConfigError(f"{name}: {e}") from None
    gw = out["gateway"]
    if not gw.id:
        out["gateway"] = dataclasses.replace(gw, id=socket.gethostname() or "gateway")  # keeps every other key
    api = out["api"]
    if api.enabled and api.token is None:
        raise ConfigError(f"{name}: api.token: required when the API is enabled (set token_file or token)")
    if out["upstream"].backoff_initial_s > out["upstream"].backoff_max_s:
        raise ConfigError(f"{name}: upstream.backoff_initial_s: larger than backoff_max_s")
    out["mqtt"], out["upstream"] = _check_mqtt(out["mqtt"], out["upstream"], data, name, out["gateway"].id)
    _check_chirpstack(out["chirpstack"], name)
    _check_basicstation(out["basicstation"], name)
    cal_dir = out["calendars"].dir
    if cal_dir is not None:
        from gateway.calendars import CalendarError, load_dir

        try:
            load_dir(cal_dir)  # compiled again when the gateway starts: an error must stop it here
        except CalendarError as e:
            raise ConfigError(f"{name}: calendars.dir: {e}") from None
    adr = out["adr"]
    if adr.min_uplinks > adr.history:
        raise ConfigError(f"{name}: adr.min_uplinks: larger than adr.history")
    if adr.tx_power_min > adr.tx_power_max:
        raise ConfigError(f"{name}: adr.tx_power_min: larger than adr.tx_power_max")
    return GatewayConfig(path=path, **out)


def _check_mqtt(
    mq: MqttSection, up: UpstreamSection, data: dict[str, Any], name: str, gateway_id: str
) -> tuple[MqttSection, UpstreamSection]:
    """The MQTT section's cross-key rules; with it enabled, [upstream] is off unless set on (an error)."""
    if not mq.site:
        mq = dataclasses.replace(mq, site=gateway_id)
        from gateway.mqtt_shapes import check_site

        why = check_site(mq.site)
        if why:
            raise ConfigError(f"{name}: mqtt.site: empty, and the gateway id {why}; set mqtt.site")
    _check_broker(mq, "mqtt", name)
    if mq.enabled:
        if data.get("upstream", {}).get("enabled") is True:
            raise ConfigError(
                f"{name}: mqtt.enabled: the store has one upstream, and [upstream] enabled = true is set too; "
                "set one of them to false (a record leaves the queue once, when its upstream acknowledged it)"
            )
        up = dataclasses.replace(up, enabled=False)
    return mq, up


def _check_broker(sec: MqttSection | ChirpStackSection, prefix: str, name: str) -> None:
    """The rules an MQTT client section shares: credentials, backoff, TLS files that load."""
    if sec.password is not None and sec.username is None:
        raise ConfigError(f"{name}: {prefix}.password: set without a username")
    if sec.backoff_initial_s > sec.backoff_max_s:
        raise ConfigError(f"{name}: {prefix}.backoff_initial_s: larger than backoff_max_s")
    if (sec.cert_file is None) != (sec.key_file is None):
        raise ConfigError(f"{name}: {prefix}.cert_file: a client certificate needs both cert_file and key_file")
    for key in ("ca_file", "cert_file", "key_file"):
        p = getattr(sec, key)
        if p is not None and not sec.tls:
            raise ConfigError(f"{name}: {prefix}.{key}: set, but {prefix}.tls is false (the file would not be used)")
        if p is not None and not p.is_file():
            raise ConfigError(f"{name}: {prefix}.{key}: {p} does not exist")
    if sec.key_file is not None and sec.key_file.stat().st_mode & 0o077:
        raise ConfigError(
            f"{name}: {prefix}.key_file: {sec.key_file} holds a private key but is accessible to group or others; "
            f"run: chmod 600 {sec.key_file}"
        )
    if sec.tls:
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=str(sec.ca_file) if sec.ca_file else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{name}: {prefix}.ca_file: not a usable PEM CA file: {e}") from None
        if sec.cert_file is not None:
            try:
                ctx.load_cert_chain(str(sec.cert_file), str(sec.key_file))
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(
                    f"{name}: {prefix}.cert_file: the certificate and key_file do not load together: {e}"
                ) from None


def _check_chirpstack(cs: ChirpStackSection, name: str) -> None:
    _check_broker(cs, "chirpstack", name)
    if cs.enabled:
        why = _mqtt_level(cs.application_id)
        if why:
            raise ConfigError(f"{name}: chirpstack.application_id: {why}")


def _check_basicstation(bs: BasicStationSection, name: str) -> None:
    """[basicstation] enabled: a tokens file that loads (0600), and with tls a certificate and key that load."""
    if not bs.enabled:
        return
    if bs.tokens_file is None:
        raise ConfigError(f"{name}: basicstation.tokens_file: required: every station needs its own token")
    try:
        load_station_tokens(bs.tokens_file)
    except ValueError as e:
        raise ConfigError(f"{name}: basicstation.tokens_file: {e}") from None
    if not bs.tls:
        for key in ("cert_file", "key_file"):
            if getattr(bs, key) is not None:
                raise ConfigError(f"{name}: basicstation.{key}: set, but basicstation.tls is false")
        return
    for key in ("cert_file", "key_file"):
        p = getattr(bs, key)
        if p is None:
            raise ConfigError(f"{name}: basicstation.{key}: required with tls = true (stations connect over wss://)")
        if not p.is_file():
            raise ConfigError(f"{name}: basicstation.{key}: {p} does not exist")
    assert bs.key_file is not None
    if bs.key_file.stat().st_mode & 0o077:
        raise ConfigError(
            f"{name}: basicstation.key_file: {bs.key_file} holds a private key but is accessible to group or "
            f"others; run: chmod 600 {bs.key_file}"
        )
    try:
        station_tls_context(bs.cert_file, bs.key_file)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{name}: basicstation.cert_file: the certificate and key_file do not load together: {e}"
        ) from None


def load_station_tokens(p: Path) -> dict[str, str]:
    """[basicstation] tokens_file -> {gateway EUI hex: token}; ValueError says why (never a token)."""
    from gateway.transports.basicstation import parse_tokens

    try:
        st = p.stat()
    except FileNotFoundError:
        raise ValueError(f"{p} does not exist") from None
    if st.st_mode & 0o077:
        raise ValueError(
            f"{p} holds secrets but is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {p}"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {p}: {e}") from None
    try:
        tokens = parse_tokens(text, TOKEN_MIN_LEN)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    if not tokens:
        raise ValueError(f"{p} lists no gateway (one `EUI token` line per gateway)")
    return tokens


def station_tls_context(cert_file: Path | None, key_file: Path | None) -> Any:
    """The server-side TLS context for [basicstation]; raises OSError (ssl.SSLError is one) on bad files."""
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(data, path)


# ---------------------------------------------------------------- the example


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Path):
        return f'"{v}"'
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _example_section(header: str, cls: type, overrides: dict[str, str], commented: set[str]) -> list[str]:
    lines = [header]
    for f in fields(cls):
        help_ = f.metadata["help"]
        value = overrides.get(f.name, _toml_value(f.default) if f.default is not None else '""')
        prefix = "# " if f.name in commented else ""
        lines.append(f"{prefix}{f.name} = {value}".ljust(44) + f"  # {help_}")
    return lines + [""]


def example_config() -> str:
    """A complete, commented configuration that loads as is (fresh API token each call)."""
    token = secrets.token_urlsafe(32)
    out = [
        "# Lumeau gateway configuration (TOML). Print a fresh one with:",
        "#   lumeau gateway --example-config > gateway.toml",
        "# Relative paths are relative to this file. Every key is shown with its default;",
        "# commented keys are alternatives. Secrets: prefer token_file (mode 0600).",
        "",
    ]
    out += _example_section("[gateway]", GatewaySection, {"id": '"gateway-1"'}, set())
    out += _example_section("[log]", LogSection, {}, set())
    out += _example_section("[queue]", QueueSection, {}, set())
    out += _example_section("[pipeline]", PipelineSection, {}, set())
    out += _example_section("[downlinks]", DownlinksSection, {}, set())
    out += _example_section("[api]", ApiSection, {"token_file": '"api.token"', "token": f'"{token}"'}, {"token_file"})
    out += _example_section(
        "[upstream]",
        UpstreamSection,
        {"token_file": '"upstream.token"', "token": '"the-upstream-bearer-token"'},
        {"token_file", "token"},
    )
    out += _example_section("[semtech]", SemtechSection, {}, set())
    out += ["# One [[serial]] table per serial port (radio bridge boards, wired nodes):"]
    ex = _example_section("[[serial]]", SerialPortSection, {"port": '"/dev/ttyUSB0"'}, set())
    out += ["# " + line if line else "" for line in ex]
    out += _example_section("[ble]", BleSection, {}, set())
    out += _example_section("[adr]", AdrSection, {}, set())
    out += _example_section("[calendars]", CalendarsSection, {"dir": '"calendars"'}, {"dir"})
    out += _example_section("[fuota]", FuotaSection, {}, set())
    out += _example_section("[campaigns]", CampaignsSection, {"release_key": '"' + "0" * 64 + '"'}, {"release_key"})
    out += ['# MQTT upstream (gateway/README.md, "MQTT upstream"): instead of [upstream] when enabled.']
    out += _example_section(
        "[mqtt]",
        MqttSection,
        {
            "username_file": '"mqtt.user"',
            "username": '"lumeau-gateway"',
            "password_file": '"mqtt.password"',
            "password": '"the-broker-password"',
            "ca_file": '"ca.pem"',
            "cert_file": '"client.pem"',
            "key_file": '"client.key"',
        },
        {"username_file", "username", "password_file", "password", "ca_file", "cert_file", "key_file"},
    )
    out += [
        '# ChirpStack v4 southbound (gateway/README.md, "ChirpStack"): nodes behind a LoRaWAN network server;',
        "# each node's DevEUI is its dev_eui in the registry.",
    ]
    out += _example_section(
        "[chirpstack]",
        ChirpStackSection,
        {
            "application_id": '"17c82e96-be03-4f38-aef3-f83d48582d97"',
            "username_file": '"chirpstack.user"',
            "username": '"lumeau"',
            "password_file": '"chirpstack.password"',
            "password": '"the-broker-password"',
            "ca_file": '"ca.pem"',
            "cert_file": '"client.pem"',
            "key_file": '"client.key"',
        },
        {"username_file", "username", "password_file", "password", "ca_file", "cert_file", "key_file"},
    )
    out += [
        '# LoRa Basics Station LNS endpoint (gateway/README.md, "Basics Station"): stations connect',
        "# to wss://<host>:<port>/router-info; each gateway EUI has its own token in tokens_file.",
    ]
    out += _example_section(
        "[basicstation]",
        BasicStationSection,
        {"tokens_file": '"station.tokens"', "cert_file": '"lns.pem"', "key_file": '"lns.key"'},
        {"tokens_file", "cert_file", "key_file"},
    )
    out += ["# The city's residents' requests on the technician page, read over HTTP (gateway/README.md):"]
    out += _example_section("[open311]", Open311Section, {"url": '"http://127.0.0.1:8088/open311/v2"'}, {"url"})
    out += [example_notify()]
    return "\n".join(out).rstrip() + "\n"


__all__ = ["ConfigError", "GatewayConfig", "Secret", "example_config", "load_config", "parse_config"]
