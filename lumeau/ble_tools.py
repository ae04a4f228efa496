"""BLE commissioning from the technician's laptop: the work behind `lumeau node scan | check | configure`.

The commands' argparse side and output are lumeau/commands/node.py; this
module exposes `scan`, `check`, `configure` and the parsers they use.
ADDR (a target) is the node's Bluetooth address (``C0:FF:EE:00:00:01``; a UUID on macOS) or
its node id in hex (``00a1b2c3``, found by scanning for its advertisement).

The node's side is firmware/ble.py; the GATT profile and the byte layouts
are SPEC §11 ("Commissioning", protocol/ble.py), the counter rules SPEC §4:

- scan: every node advertising the commissioning service in reach, with the
  id, kind, state, open alarms, output and firmware from its scan response
  and the signal (RSSI) of its advertisement, strongest first;
- check: connects, reads the live status and the last alarms, and names every
  field (protocol/expand.py); needs no key, so nothing it shows is
  authenticated (reading is open to anyone in reach, SPEC §11);
- configure: the CONFIG keys of SPEC §5 by name (report_interval=600, ...),
  checked against the node's own limits and kind before anything is sent.
  First a session (SPEC §11, "Sessions"): the tool writes a random
  challenge, the node answers with a fresh nonce and the top of its tool
  counter window, tagged with its key over both; the tool trusts that top
  only once the tag verifies with the node's key (from its provisioned config
  file or the gateway's registry file), and seals nothing otherwise (a
  device without the key -- a fake node, or a relay that alters the answer
  -- gets no frame). Then a CONFIG frame sealed with the node's downlink key,
  carrying the nonce, with a counter from the tool half of the counter space
  (the verified top + 1), sent in clear (two tools racing offline may pick
  the same counter: the node takes one, refuses the other, and no keystream
  is ever reused); the node's answer is an uplink CMD_ACK sealed with its
  key, verified here, so "applied" is the node's word, not the radio's. A
  refusal is tagged too and trusted only when its tag verifies; it names its
  reason, and a counter taken by another tool meanwhile is retried once
  above the node's new (verified) top.
  `clock=now` sends a TIME frame with this computer's clock (UTC), the same
  way: a node with no gateway in reach (lighting in its dusk-to-dawn
  fail-safe) gets its schedule back. Freshness (SPEC §4): the CONFIG expires
  TOOL_CONFIG_TTL_S after it is sealed, and a node whose clock is set refuses
  a TIME more than messages.TIME_SLACK_S behind it (this computer's clock is
  behind, or the frame was held back).

Errors (BleToolError.reason): adapter (no Bluetooth to scan with), not_found (not in
reach), connect, timeout,
disconnected, protocol (the node's answer does not decode, or its firmware has
no sessions), auth (an answer not tagged or sealed with the key: the key is
not the node's, or the device is not that node), refused (any other refusal),
exhausted (re-key), bad_setting, no_key. Keys are never printed.

Limits: DEFAULT_SCAN_S = 5 s of scanning for `scan`, DEFAULT_TIMEOUT_S = 10 s
for finding and connecting and again for an answer; answers up to
fr.MAX_LEN bytes.

Tests drive it with bleak's backend seam (`Backends`), the real node code on
the other side (tests/test_ble_tool.py, test_ble_sessions.py, test_ble_node.py).

One file (about 700 lines): scan, check and configure share the session, the
parsers of SPEC §11 and the error classes; the byte layouts are protocol/ble.py.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from firmware import config as fwconfig
from protocol import ble as pb
from protocol import cbor, expand
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing
from protocol.keys import NodeKeys

DEFAULT_SCAN_S = 5.0
DEFAULT_TIMEOUT_S = 10.0
TOOL_CONFIG_TTL_S = 600  # a tool's CONFIG expires this long after it is sealed (SPEC §4, "Freshness")
SERVICE_UUID = pb.SERVICE_UUID
STATUS_UUID = pb.STATUS_UUID
ALARMS_UUID = pb.ALARMS_UUID
CONTROL_UUID = pb.CONTROL_UUID
SERVICE_DATA_LEN = pb.SERVICE_DATA_LEN

KINDS = {m.KIND_LIGHTING: "lighting", m.KIND_IRRIGATION: "irrigation", m.KIND_BRIDGE: "bridge"}
STATES = {pb.STATE_OK: "ok", pb.STATE_ALARM: "alarm", pb.STATE_FAILSAFE: "fail-safe"}
REFUSALS = {
    pb.R_MALFORMED: ("protocol", "the node could not read the frame"),
    pb.R_WRONG_NODE: ("refused", "the frame is for another node"),
    pb.R_UNSUPPORTED: ("refused", "the node takes only CONFIG and TIME over BLE"),
    pb.R_AUTH: ("auth", "authentication refused: the key is not this node's (re-provisioned since?)"),
    pb.R_REPLAY: ("refused", "the counter was used already"),
    pb.R_COUNTER: ("refused", "a gateway counter, not a commissioning one"),
    pb.R_DISABLED: ("refused", "this node's config does not allow configuration over BLE"),
    pb.R_STORAGE: ("refused", "applied, but the node's flash refused an uplink counter to confirm it"),
    pb.R_ECHO: ("refused", "the frame does not carry this connection's session nonce (the node restarted?)"),
}


# CONFIG keys by name (as the gateway API names them: the CFG_* constants), each with
# its limits (protocol/messages.py's, which the node applies), the node kind it is for
# (None: every kind) and the unit shown.
SETTINGS: dict[str, tuple[int, tuple[int, int], int | None, str]] = {
    "report_interval": (m.CFG_REPORT_INTERVAL, (m.REPORT_MIN_S, m.REPORT_MAX_S), None, "s"),
    "status_interval": (m.CFG_STATUS_INTERVAL, (m.STATUS_MIN_S, m.STATUS_MAX_S), None, "s"),
    "tx_power": (m.CFG_TX_POWER, (m.TX_POWER_MIN, m.TX_POWER_MAX), None, "dBm"),
    "sf": (m.CFG_SF, (m.SF_MIN, m.SF_MAX), None, ""),
    "lamp_power": (m.CFG_LAMP_POWER, (1, m.LAMP_POWER_MAX_W), m.KIND_LIGHTING, "W"),
    "max_run": (m.CFG_MAX_RUN, (1, m.DAY_MIN), m.KIND_IRRIGATION, "min"),
    "confirm_alarms": (m.CFG_CONFIRM_ALARMS, (0, 1), None, ""),
}
assert {k for k, *_ in SETTINGS.values()} == {getattr(m, n) for n in dir(m) if n.startswith("CFG_")}
NAMES = {key: name for name, (key, *_rest) in SETTINGS.items()}
BOOLEANS = {"true": 1, "yes": 1, "on": 1, "false": 0, "no": 0, "off": 0}
CLOCK = "clock"  # clock=now: not a CONFIG key, a TIME frame with this computer's clock


class BleToolError(Exception):
    """A commissioning step that failed; `reason` is one of the module docstring's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Backends:
    """bleak's backend seam: BaseBleakScanner / BaseBleakClient subclasses (None: the OS's)."""

    scanner: type | None = None
    client: type | None = None


@dataclass(frozen=True)
class Seen:
    """One node heard advertising."""

    address: str
    node_id: int
    kind: int
    state: int
    open_alarms: int
    output: int | None
    firmware: str
    time_set: bool
    configurable: bool
    rssi: int

    def json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "node": f"{self.node_id:08x}",
            "kind": KINDS.get(self.kind, self.kind),
            "state": STATES.get(self.state, self.state),
            "open_alarms": self.open_alarms,
            "output": self.output,
            "output_text": output_text(self.kind, self.output),
            "firmware": self.firmware,
            "clock_set": self.time_set,
            "configurable": self.configurable,
            "rssi": self.rssi,
        }


def parse_service_data(address: str, data: bytes, rssi: int) -> Seen:
    """The scan response's service data (SPEC §11); ValueError when it is not one."""
    if len(data) < SERVICE_DATA_LEN:
        raise ValueError(f"service data of {len(data)} bytes, need {SERVICE_DATA_LEN}")
    node_id = int.from_bytes(data[0:4], "big")
    kind, state, alarms, out, v0, v1, v2, flags = data[4:12]
    if kind not in KINDS or state not in STATES:
        raise ValueError(f"kind {kind} / state {state} unknown")
    return Seen(
        address=address,
        node_id=node_id,
        kind=kind,
        state=state,
        open_alarms=alarms,
        output=None if out == 0xFF else out,
        firmware=f"{v0}.{v1}.{v2}",
        time_set=bool(flags & pb.FL_TIME),
        configurable=bool(flags & pb.FL_CONFIGURE),
        rssi=int(rssi),
    )


def seen_from(device: BLEDevice, adv: AdvertisementData) -> Seen | None:
    """A Lumeau node from an advertisement, or None for anything else (or anything malformed)."""
    if SERVICE_UUID not in (u.lower() for u in adv.service_uuids):
        return None
    data = adv.service_data.get(SERVICE_UUID)
    if data is None:
        return None  # heard before its scan response: the next advertisement will have it
    try:
        return parse_service_data(device.address, bytes(data), adv.rssi)
    except ValueError:
        return None


def output_text(kind: int, out: int | None) -> str:
    if out is None:
        return "unknown"
    if kind == m.KIND_LIGHTING:
        return f"level {out} %"
    zones = expand.FLAGS[(m.IRRIGATION, 1)]
    names = [n for i, n in enumerate(zones) if n is not None and (out >> i) & 1]
    return "open " + "+".join(names) if names else "all closed"


# -- settings ------------------------------------------------------------------------------


def parse_settings(pairs: list[str], kind: int | None = None) -> dict[int, int]:
    """["report_interval=600", ...] -> {CFG key: value}, checked; BleToolError("bad_setting") naming the problem.

    With `kind`, a key meant for another kind of node is refused too.
    """
    if not pairs:
        raise BleToolError("bad_setting", "nothing to configure: give key=value pairs, e.g. report_interval=600")
    out: dict[int, int] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise BleToolError("bad_setting", f"{pair!r}: expected key=value")
        if name == CLOCK:
            if text.strip().lower() != "now":
                raise BleToolError("bad_setting", "clock: only clock=now (this computer's clock, UTC)")
            continue
        spec = SETTINGS.get(name)
        if spec is None:
            raise BleToolError("bad_setting", f"unknown setting {name!r} (known: {', '.join(SETTINGS)}, clock)")
        key, limits, for_kind, unit = spec
        if key in out:
            raise BleToolError("bad_setting", f"{name} given twice")
        text = text.strip().lower()
        try:
            v = BOOLEANS[text] if text in BOOLEANS else int(text, 10)
        except ValueError:
            raise BleToolError("bad_setting", f"{name}={text}: not an integer") from None
        lo, hi = limits
        if not lo <= v <= hi:
            raise BleToolError("bad_setting", f"{name}={v}: out of range {lo}..{hi}{' ' + unit if unit else ''}")
        if kind is not None and for_kind is not None and for_kind != kind:
            raise BleToolError(
                "bad_setting", f"{name} is a {KINDS[for_kind]} setting; this node is a {KINDS.get(kind, kind)} node"
            )
        out[key] = v
    return out


# -- keys -------------------------------------------------------------------------------------


def load_keys(node_id: int, config: Path | None = None, registry: Path | None = None) -> NodeKeys:
    """The node's keys from its provisioned config file or the gateway's registry file."""
    if config is not None:
        try:
            cfg = fwconfig.load(config.read_bytes())
        except OSError as e:
            raise BleToolError("no_key", f"{config}: cannot read: {e.strerror}") from None
        except fwconfig.ConfigError as e:
            raise BleToolError("no_key", f"{config}: {e}") from None
        if cfg["node_id"] != node_id or cfg["keys"] is None:
            raise BleToolError(
                "no_key", f"{config} is the config of node {cfg['node_id']:08x}, not of node {node_id:08x}"
            )
        return cfg["keys"]
    if registry is not None:
        from gateway.registry import Registry, RegistryError

        try:
            entry = Registry.load(registry, missing_ok=False).get(node_id)
        except RegistryError as e:
            raise BleToolError("no_key", str(e)) from None
        if entry is None:
            raise BleToolError("no_key", f"{registry} does not hold node {node_id:08x}")
        return entry.keys
    raise BleToolError("no_key", "configure needs the node's key: --config FILE or --registry FILE")


# -- reading the node -----------------------------------------------------------------------------


def decode_status(data: bytes) -> dict[str, Any]:
    """The status characteristic (SPEC §11) checked and named; BleToolError("protocol") otherwise."""
    try:
        v = cbor.loads(bytes(data))
        if not isinstance(v, dict):
            raise ValueError("not a map")
        node_id, kind, firmware, state = v[pb.ST_NODE], v[pb.ST_KIND], v[pb.ST_FIRMWARE], v[pb.ST_STATE]
        for x in (node_id, kind, state):
            if type(x) is not int:
                raise ValueError("id, kind and state must be integers")
        if not isinstance(firmware, str):
            raise ValueError("firmware must be text")
        status = m.validate(m.STATUS, v.get(pb.ST_STATUS, {}))
        out: dict[str, Any] = {
            "node": f"{node_id:08x}",
            "node_id": node_id,
            "kind": KINDS.get(kind, kind),
            "firmware": firmware,
            "state": STATES.get(state, state),
            "status": expand.expand(m.STATUS, status),
            "tool_counter": _int(v.get(pb.ST_TOOL_TOP, fr.TOOL_COUNTER_BASE - 1)),
            "gateway_counter": _int(v.get(pb.ST_GATEWAY_TOP, -1)),
        }
        report = v.get(pb.ST_REPORT)
        if report is not None:
            if not isinstance(report, list) or len(report) != 2 or report[0] not in (m.LIGHT, m.IRRIGATION):
                raise ValueError("report must be [LIGHT or IRRIGATION, body]")
            out["report_type"] = expand.TYPE_NAMES[report[0]]
            out["report"] = expand.expand(report[0], m.validate(report[0], report[1]))
        counts = v.get(pb.ST_COUNTERS)
        if counts is not None:
            if not isinstance(counts, list) or any(type(x) is not int for x in counts):
                raise ValueError("counters must be integers")
            names = (
                "uplinks_sent",
                "downlinks_accepted",
                "downlinks_rejected",
                "app_faults",
                "ble_applied",
                "ble_refused",
            )
            out["counters"] = dict(zip(names, counts))
        err = v.get(pb.ST_LAST_ERROR)
        if err is not None:
            out["last_error"] = str(err)
        h = v.get(pb.ST_CONFIG_HASH)
        if isinstance(h, bytes):
            out["config_hash"] = h.hex()
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise BleToolError("protocol", f"the node's status does not decode: {e}") from None


def _int(x: Any) -> int:
    if type(x) is not int:
        raise ValueError("counter tops must be integers")
    return x


def decode_alarms(data: bytes) -> list[dict[str, Any]]:
    """The alarms characteristic: EVENT bodies, oldest first, named."""
    try:
        v = cbor.loads(bytes(data))
        if not isinstance(v, list):
            raise ValueError("not an array")
        return [expand.expand(m.EVENT, m.validate(m.EVENT, e)) for e in v]
    except (ValueError, TypeError) as e:
        raise BleToolError("protocol", f"the node's alarms do not decode: {e}") from None


# -- bleak ----------------------------------------------------------------------------------------


def _scanner_kw(backends: Backends | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"service_uuids": [SERVICE_UUID]}
    if backends is not None and backends.scanner is not None:
        kw["backend"] = backends.scanner
    return kw


async def scan(timeout: float = DEFAULT_SCAN_S, backends: Backends | None = None) -> list[Seen]:
    """Every Lumeau node heard within `timeout` seconds, strongest signal first."""
    found: dict[str, Seen] = {}

    def heard(device: BLEDevice, adv: AdvertisementData) -> None:
        s = seen_from(device, adv)
        if s is not None:
            found[device.address] = s  # the latest advertisement: the state of now

    try:
        async with BleakScanner(heard, **_scanner_kw(backends)):
            await asyncio.sleep(timeout)
    except (BleakError, OSError) as e:
        raise _no_adapter(e) from None
    return sorted(found.values(), key=lambda s: (-s.rssi, s.node_id))


def _no_adapter(e: Exception) -> BleToolError:
    return BleToolError(
        "adapter",
        f"cannot scan: {e or type(e).__name__} (is there a Bluetooth adapter, switched on, "
        "and on Linux is bluetoothd running?)",
    )


def parse_target(target: str) -> tuple[str | None, int | None]:
    """(address, None) for a Bluetooth address, (None, node id) for 1-8 hex digits."""
    t = target.strip()
    if ":" in t or "-" in t:
        return t, None
    from gateway.registry import parse_node_id

    try:
        return None, parse_node_id(t)
    except ValueError:
        raise BleToolError("bad_setting", f"{target!r} is neither a Bluetooth address nor a node id") from None


async def find(target: str, timeout: float, backends: Backends | None = None) -> tuple[BLEDevice, Seen]:
    """Scan until the node named by address or node id advertises; BleToolError("not_found") after `timeout`."""
    address, node_id = parse_target(target)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[BLEDevice, Seen]] = loop.create_future()

    def heard(device: BLEDevice, adv: AdvertisementData) -> None:
        s = seen_from(device, adv)
        if s is None or done.done():
            return
        if (address is not None and device.address.lower() == address.lower()) or s.node_id == node_id:
            done.set_result((device, s))

    try:
        async with BleakScanner(heard, **_scanner_kw(backends)):
            return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        what = f"address {address}" if address is not None else f"node id {node_id:08x}"
        raise BleToolError("not_found", f"no Lumeau node with {what} in reach (scanned {timeout:g} s)") from None
    except (BleakError, OSError) as e:
        raise _no_adapter(e) from None


class Link:
    """A connection to one node: `async with Link(device, seen, timeout, backends) as link`."""

    def __init__(self, device: BLEDevice, seen: Seen, timeout: float, backends: Backends | None) -> None:
        self.device = device
        self.seen = seen
        self.timeout = timeout
        kw: dict[str, Any] = {"timeout": timeout}
        if backends is not None and backends.client is not None:
            kw["backend"] = backends.client
        self.gone = asyncio.Event()
        self.client = BleakClient(device, disconnected_callback=lambda _c: self.gone.set(), **kw)

    async def __aenter__(self) -> Link:
        try:
            await asyncio.wait_for(self.client.connect(), self.timeout)
        except TimeoutError:
            raise BleToolError("timeout", f"{self.device.address}: no connection within {self.timeout:g} s") from None
        except (BleakError, OSError) as e:
            raise BleToolError("connect", f"{self.device.address}: cannot connect: {e}") from None
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.client.is_connected:
                await asyncio.wait_for(self.client.disconnect(), self.timeout)
        except (TimeoutError, BleakError, OSError):
            pass

    def _char(self, uuid: str) -> Any:
        c = self.client.services.get_characteristic(uuid)
        if c is None:
            raise BleToolError("protocol", f"{self.device.address} has no Lumeau characteristic {uuid}")
        return c

    async def read(self, uuid: str) -> bytes:
        try:
            return bytes(await asyncio.wait_for(self.client.read_gatt_char(self._char(uuid)), self.timeout))
        except TimeoutError:
            raise BleToolError(
                "timeout", f"{self.device.address}: no answer to a read within {self.timeout:g} s"
            ) from None
        except (BleakError, OSError, EOFError) as e:
            raise BleToolError("disconnected", f"{self.device.address}: {e}") from None

    async def status(self) -> dict[str, Any]:
        return decode_status(await self.read(STATUS_UUID))

    async def alarms(self) -> list[dict[str, Any]]:
        return decode_alarms(await self.read(ALARMS_UUID))

    async def exchange(self, frame: bytes) -> bytes:
        """Write one frame to the control characteristic; return the payload of the node's framed answer."""
        char = self._char(CONTROL_UUID)
        decoder = framing.Decoder(fr.MAX_LEN)
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        def notified(_c: Any, data: bytearray) -> None:
            for payload in decoder.feed(bytes(data)):
                answers.put_nowait(payload)

        data = framing.encode(frame)
        piece = max(1, min(self.client.mtu_size - 3, pb.CONTROL_WRITE_MAX))
        try:
            await self.client.start_notify(char, notified)
            for i in range(0, len(data), piece):
                await asyncio.wait_for(
                    self.client.write_gatt_char(char, data[i : i + piece], response=True), self.timeout
                )
            gone = asyncio.ensure_future(self.gone.wait())
            got = asyncio.ensure_future(answers.get())
            try:
                await asyncio.wait({gone, got}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not got.done():
                    got.cancel()
            if got.done() and not got.cancelled():
                return got.result()
            if self.gone.is_set():
                raise BleToolError(
                    "disconnected",
                    f"{self.device.address} dropped the link before answering: "
                    "the settings may or may not be applied (check it)",
                )
            raise BleToolError(
                "timeout",
                f"{self.device.address} did not answer within {self.timeout:g} s: the "
                "settings may or may not be applied (check it)",
            )
        except TimeoutError:
            raise BleToolError(
                "timeout", f"{self.device.address} did not take the write within {self.timeout:g} s"
            ) from None
        except (BleakError, OSError, EOFError) as e:
            raise BleToolError("disconnected", f"{self.device.address}: {e}") from None


# -- the commands' work ------------------------------------------------------------------------------


async def check(
    target: str, timeout: float = DEFAULT_TIMEOUT_S, backends: Backends | None = None
) -> tuple[Seen, dict[str, Any], list[dict[str, Any]]]:
    device, seen = await find(target, timeout, backends)
    async with Link(device, seen, timeout, backends) as link:
        status = await link.status()
        alarms = await link.alarms()
    if status["node_id"] != seen.node_id:
        raise BleToolError(
            "protocol", f"{device.address} advertises node {seen.node_id:08x} but its status says {status['node']}"
        )
    return seen, status, alarms


@dataclass(frozen=True)
class Configured:
    seen: Seen
    settings: dict[int, int]
    refused: int  # bitmask of CFG keys the node's runtime refused
    clock: int | None  # the Unix time the node's clock was set to
    retried: bool  # a counter was taken by another tool meanwhile


async def configure(
    target: str,
    pairs: list[str],
    *,
    config: Path | None = None,
    registry: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    backends: Backends | None = None,
    clock: Callable[[], float] = time.time,
) -> Configured:
    parse_settings(pairs)  # a typo is found before any radio work
    set_clock = any(p.partition("=")[0].strip().lower() == CLOCK for p in pairs)
    device, seen = await find(target, timeout, backends)
    settings = parse_settings(pairs, seen.kind)
    if not seen.configurable:
        raise BleToolError("refused", f"node {seen.node_id:08x}'s config does not allow configuration over BLE")
    keys = load_keys(seen.node_id, config, registry)
    async with Link(device, seen, timeout, backends) as link:
        status = await link.status()
        if status["node_id"] != seen.node_id:
            raise BleToolError(
                "protocol", f"{device.address} advertises node {seen.node_id:08x} but its status says {status['node']}"
            )
        session = await open_session(link, keys)
        top = session.top
        refused, retried, when = 0, False, None
        if settings:
            top, refused, retried = await _send(
                link,
                keys,
                session,
                m.CONFIG,
                lambda: {
                    m.CF_SETTINGS: settings,
                    m.CF_EXPIRES: int(clock()) + TOOL_CONFIG_TTL_S,
                    m.CF_ECHO: session.nonce,
                },
                top,
            )
        if set_clock:

            def now() -> dict[int, Any]:  # read at the last moment: the answer comes within the timeout
                t = clock()
                nonlocal when
                when = int(t)
                return {m.T_UNIX: int(t), m.T_MS: int(t * 1000) % 1000, m.T_ECHO: session.nonce}

            top, _, again = await _send(link, keys, session, m.TIME, now, top)
            retried = retried or again
        return Configured(seen, settings, refused, when, retried)


@dataclass(frozen=True)
class Session:
    """A commissioning session (SPEC §11, "Sessions"): verified with the node's key."""

    challenge: bytes  # the tool's, random
    nonce: bytes  # the node's, random: every frame of the session carries it
    top: int  # the top of the node's tool counter window when it answered

    @property
    def tag_input(self) -> bytes:
        return self.challenge + self.nonce


def verified(keys: NodeKeys, answer: bytes, session: bytes) -> bool:
    n = len(answer) - pb.TAG_LEN
    return hmac.compare_digest(answer[n:], pb.tag(keys, answer[:n], session))


async def open_session(link: Link, keys: NodeKeys) -> Session:
    """Ask the node for a session; trust its nonce and counter top only when its tag verifies."""
    node = f"node {link.seen.node_id:08x}"
    challenge = os.urandom(pb.CHALLENGE_LEN)
    answer = await link.exchange(bytes((pb.SESSION,)) + challenge)
    if answer[:1] == bytes((pb.REFUSED,)) and len(answer) == 6:  # the untagged refusal of older firmware
        raise BleToolError(
            "protocol",
            f"{node} does not open commissioning sessions (SPEC §11): its firmware predates them; update it",
        )
    if answer[:1] == bytes((pb.REFUSED,)) and len(answer) == pb.REFUSAL_LEN:  # nothing to trust, nothing sent
        kind, text = REFUSALS.get(answer[1], ("refused", f"refused (reason {answer[1]})"))
        raise BleToolError(kind, f"{node} refused a session: {text}")
    if answer[:1] != bytes((pb.SESSION,)) or len(answer) != pb.SESSION_ANSWER_LEN:
        raise BleToolError("protocol", f"{node} answered a session request with {len(answer)} bytes of something else")
    nonce = answer[1 : 1 + pb.NONCE_LEN]
    if not verified(keys, answer, challenge + nonce):
        raise BleToolError(
            "auth",
            f"{node}: its answer is not tagged with this key -- the key is not this node's "
            "(re-provisioned since?), or the device is not that node; nothing was sent",
        )
    return Session(challenge, nonce, int.from_bytes(answer[1 + pb.NONCE_LEN : 5 + pb.NONCE_LEN], "big"))


async def _send(
    link: Link, keys: NodeKeys, session: Session, mtype: int, body: Callable[[], dict[int, Any]], top: int
) -> tuple[int, int, bool]:
    """One frame for the tool half, answered and verified: (the counter used, refused keys, retried)."""
    node = f"node {link.seen.node_id:08x}"
    for attempt in (0, 1):
        counter = max(top, fr.TOOL_COUNTER_BASE - 1) + 1
        if counter > fr.MAX_COUNTER:
            raise BleToolError(
                "exhausted", f"{node} used every commissioning counter: re-key it (lumeau node provision)"
            )
        answer = await link.exchange(fr.seal(keys, mtype, counter, m.encode(mtype, body())))
        if answer[:1] == bytes((pb.REFUSED,)):
            if len(answer) != pb.REFUSAL_LEN or not verified(keys, answer, session.tag_input):
                raise BleToolError(
                    "auth", f"{node}: a refusal not tagged with this node's key for this session: not trusted"
                )
            reason, top = answer[1], int.from_bytes(answer[2:6], "big")
            if reason == pb.R_REPLAY and attempt == 0:
                continue  # another tool took that counter meanwhile: once more above its top
            kind, text = REFUSALS.get(reason, ("refused", f"refused (reason {reason})"))
            raise BleToolError(kind, f"{node}: {text}")
        return counter, _confirmed(keys, answer, counter), attempt > 0
    raise AssertionError("unreachable")


def _confirmed(keys: NodeKeys, answer: bytes, counter: int) -> int:
    """Verify the node's CMD_ACK for the CONFIG with `counter`; the refused-keys bitmask."""
    try:
        f, plain = fr.unseal(keys, answer)
        if f.mtype != m.CMD_ACK or f.downlink:
            raise ValueError(f"a message of type {f.mtype}, not a CMD_ACK")
        ack = m.decode(m.CMD_ACK, plain)
    except fr.BadMIC:
        raise BleToolError("auth", "the answer is not signed with this node's key: not the node you meant?") from None
    except ValueError as e:
        raise BleToolError("protocol", f"the node's answer does not decode: {e}") from None
    if ack[m.CA_ID] != counter:
        raise BleToolError("protocol", f"the node answered for counter {ack[m.CA_ID]}, not {counter}")
    result = ack[m.CA_RESULT]
    if result not in (m.RES_OK, m.RES_BAD_ARGS):
        why = {
            m.RES_EXPIRED: " (its clock is past the frame's expiry: is this computer's clock right?)",
            m.RES_REFUSED: f" (the time is more than {m.TIME_SLACK_S} s behind the node's clock)",
        }.get(result, "")
        raise BleToolError(
            "refused", f"the node answered {expand.ENUMS[(m.CMD_ACK, m.CA_RESULT)].get(result, result)}{why}"
        )
    return ack.get(m.CA_VALUE, 0) if result == m.RES_BAD_ARGS else 0
