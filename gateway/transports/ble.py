"""BLE transport: nodes within Bluetooth LE reach, through bleak.

The GATT profile is specified in protocol/SPEC.md ("BLE"): a node advertises
the Lumeau service (SERVICE_UUID), with its node id in the service data of
its scan response; the service has one characteristic (FRAMES_UUID) that
carries the serial framing of SPEC §8 as a byte stream -- uplinks as
notifications, downlinks as writes -- cut into pieces of any size, so it
works at every ATT MTU (20-byte notifications at the default MTU of 23) and
resynchronises after anything lost, with the same decoder as a serial line.

What this module does:
- scans for advertisements of the service: continuously, or, with
  `scan_interval`, for `scan_window` (5 s: nodes advertise every 0.1-1 s)
  every `scan_interval` seconds -- links already up stay up, scanning only
  finds new nodes, and many adapters connect more reliably while not
  scanning. A missing adapter is retried (backoff up to `retry_max`), not
  fatal: the other transports keep running;
- connects to each node it hears, at most `max_connections` at a time
  (7: what common controllers handle with BlueZ), only when its
  advertisement names a node id (service data) that `node_filter` accepts
  -- by default, a node in the pipeline's registry (issue 20: a device
  advertising the service is not thereby a node; anything else is counted
  in `filtered`);
- binds each link to the node id it advertised: a frame of another node
  arriving over it (a relayed LoRa frame) is rejected as `wrong_node`
  before the pipeline, so a relay never becomes a node's downlink path;
- drops a link when the pipeline locks its (link, node) out after too many
  bad MICs (gateway/micguard.py) and does not connect that node id over
  BLE, from any address, until the lockout ends (`mic_lockout_disconnects`);
- turns notifications into frames (protocol.serial.Decoder per link) and
  hands them to the pipeline as Reception(transport="ble",
  gateway_id="ble:<address>", rssi=the node's last advertisement RSSI);
  line errors become rejections (bad_crc, bad_cobs, oversized);
- writes downlinks at once (write with response: acknowledged by the
  node's stack) -- each link is the DownlinkPath of its receptions;
- when a link drops (the node left, rebooted, or disconnected to save
  power), it reconnects the next time the node advertises, after a backoff
  per address from `retry_min` (2 s) doubling to `retry_max` (60 s) while
  connecting keeps failing.

The seam for tests is bleak's own: `scanner_backend` and `client_backend`
are passed as `backend=` to BleakScanner and BleakClient (bleak >= 0.18),
so everything above the OS Bluetooth stack runs for real in the tests.

Limits: MAX_TRACKED (4096) addresses remembered for RSSI and backoff (the
oldest forgotten first); notifications are queued through the shared
Ingestor (bounded, overload counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from gateway.logs import RateLimiter
from gateway.model import Reception
from gateway.transports import DownlinkError, Ingestor, LineDrops, Pipeline, report_reject
from protocol import serial as framing
from protocol.ble import FRAMES_UUID
from protocol.ble import TRANSPORT_SERVICE_UUID as SERVICE_UUID

log = logging.getLogger("lumeau.gateway.transports.ble")

TRANSPORT = "ble"

DEFAULT_MAX_CONNECTIONS = 7
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_RETRY_MIN_S = 2.0
DEFAULT_RETRY_MAX_S = 60.0
DEFAULT_WRITE_TIMEOUT_S = 5.0
DEFAULT_SCAN_WINDOW_S = 5.0
WRITE_MAX = 512  # the longest attribute value a write with response carries (ATT)
MAX_TRACKED = 4096


def advertised_node_id(adv: AdvertisementData) -> int | None:
    """The node id in the Lumeau service data (4 bytes, big-endian), if the node sent one."""
    data = adv.service_data.get(SERVICE_UUID)
    if data is None or len(data) != 4:
        return None
    return int.from_bytes(data, "big")


class BleLink:
    """One connection to one node: reads its notifications, writes its downlinks."""

    def __init__(self, owner: BleTransport, device: BLEDevice, node_id: int) -> None:
        self.owner = owner
        self.device = device
        self.node_id = node_id  # the node it advertised: the only one whose frames it carries
        self._node_bytes = node_id.to_bytes(4, "big")
        self.address = device.address
        self.gateway_id = f"{TRANSPORT}:{device.address}"
        self.decoder = framing.Decoder(owner.max_frame)
        self._client: BleakClient | None = None
        self._char: BleakGATTCharacteristic | None = None
        self._gone = asyncio.Event()
        self._write_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._char is not None and not self._gone.is_set()

    async def run(self) -> None:
        """Connect, subscribe, and return when the link is gone (raises if connecting failed)."""
        o = self.owner
        kw: dict[str, Any] = {"timeout": o.connect_timeout}
        if o.client_backend is not None:
            kw["backend"] = o.client_backend
        if o.adapter:
            kw["bluez"] = {"adapter": o.adapter}
        client = BleakClient(self.device, disconnected_callback=lambda _c: self._gone.set(), **kw)
        await asyncio.wait_for(client.connect(), o.connect_timeout)
        self._client = client
        try:
            char = client.services.get_characteristic(FRAMES_UUID)
            if char is None:
                raise BleakError(f"{self.address} has no Lumeau frames characteristic")
            await client.start_notify(char, self._on_notify)
            self._char = char
            o.counts["connects"] += 1
            log.info("ble node connected", extra={"address": self.address, "transport": TRANSPORT})
            await self._gone.wait()
        finally:
            self._char = None
            self._gone.set()
            if client.is_connected:
                try:
                    await asyncio.wait_for(client.disconnect(), o.connect_timeout)
                except (TimeoutError, BleakError, OSError):
                    pass

    async def close(self) -> None:
        self._gone.set()

    def drop(self) -> None:
        """End the link now (from a callback): `run` returns and disconnects."""
        self._gone.set()

    def _on_notify(self, _char: BleakGATTCharacteristic, data: bytearray) -> None:
        o = self.owner
        try:
            o.counts["notifications"] += 1
            o.counts["bytes"] += len(data)
            payloads = self.decoder.feed(data)
            o.drops.report(self.decoder)
            rssi = o.rssi.get(self.address)
            for raw in payloads:
                o.counts["packets"] += 1
                if len(raw) >= 5 and raw[1:5] != self._node_bytes:
                    o.counts["wrong_node"] += 1
                    report_reject(
                        o.pipeline,
                        "wrong_node",
                        TRANSPORT,
                        o.limiter,
                        log,
                        f"node {int.from_bytes(raw[1:5], 'big'):08x} over the link of node {self.node_id:08x}",
                    )
                    continue
                o.ingestor.offer(
                    Reception(
                        raw=raw,
                        transport=TRANSPORT,
                        gateway_id=self.gateway_id,
                        rx_time=self.owner.clock(),
                        rssi=rssi,
                        path=self,
                    )
                )
        except Exception:  # a notification must never take the link down
            self.decoder.reset()
            o.counts["internal_error"] += 1
            if o.limiter.allow("internal_error")[0]:
                log.exception("ble notification handling failed", extra={"address": self.address})

    async def send_downlink(self, frame: bytes, reception: Reception) -> None:
        """Write `frame` to the node now; raises DownlinkError when the link is down or stuck."""
        o = self.owner
        try:
            await self._send(frame)
        except DownlinkError as e:
            o.counts[f"downlink_{e.reason}"] += 1
            raise
        o.counts["downlinks_sent"] += 1

    async def _send(self, frame: bytes) -> None:
        data = framing.encode(frame)
        async with self._write_lock:  # the pieces of two frames never interleave
            client, char = self._client, self._char
            if client is None or char is None or not self.connected:
                raise DownlinkError("disconnected", f"no BLE link to {self.address}")
            try:
                for i in range(0, len(data), WRITE_MAX):
                    await asyncio.wait_for(
                        client.write_gatt_char(char, data[i : i + WRITE_MAX], response=True), self.owner.write_timeout
                    )
            except TimeoutError:
                raise DownlinkError("timeout", f"{self.address} did not acknowledge the write") from None
            except (BleakError, OSError, EOFError) as e:
                raise DownlinkError("disconnected", f"{self.address}: {e}") from e


class BleTransport:
    """Scans for Lumeau nodes and keeps links to them. `await start()`, `await stop()`."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        adapter: str | None = None,
        node_filter: Callable[[int], bool] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        retry_min: float = DEFAULT_RETRY_MIN_S,
        retry_max: float = DEFAULT_RETRY_MAX_S,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_S,
        max_frame: int = framing.DEFAULT_MAX_FRAME,
        scan_interval: float | None = None,
        scan_window: float = DEFAULT_SCAN_WINDOW_S,
        scanner_backend: type | None = None,
        client_backend: type | None = None,
        ingestor: Ingestor | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (wall: reception times) and `monotonic` (reconnection backoff, rate limits)
        are seams for tests, as in gateway/downlinks.py."""
        if max_connections < 1 or not 0 < retry_min <= retry_max:
            raise ValueError("need max_connections >= 1 and 0 < retry_min <= retry_max")
        if scan_window <= 0 or (scan_interval is not None and scan_interval <= 0):
            raise ValueError("scan_window and scan_interval must be positive")
        self.pipeline = pipeline
        self.adapter = adapter
        self.node_filter = node_filter if node_filter is not None else self._registered
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.write_timeout = write_timeout
        self.max_frame = max_frame
        self.scan_interval = scan_interval
        self.scan_window = scan_window
        self.scanner_backend = scanner_backend
        self.client_backend = client_backend
        self.clock = clock
        self.monotonic = monotonic
        self.ingestor = ingestor or Ingestor(pipeline, TRANSPORT, log=log)
        self.limiter = RateLimiter(clock=monotonic)
        self.drops = LineDrops(pipeline, TRANSPORT, self.limiter, log)
        self.counts: Counter[str] = Counter()
        self.links: dict[str, BleLink] = {}
        self.rssi: OrderedDict[str, float] = OrderedDict()
        self._retry: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (not before, last delay)
        self._banned: OrderedDict[int, float] = OrderedDict()  # node id -> monotonic end of its MIC lockout
        guard = getattr(pipeline, "mic_guard", None)
        if guard is not None:
            guard.listeners.append(self._on_mic_lockout)
        self._tasks: set[asyncio.Task[None]] = set()
        self._scanner: BleakScanner | None = None
        self._scan_task: asyncio.Task[None] | None = None
        self.scanning = False

    async def start(self) -> None:
        self.ingestor.start()
        kw: dict[str, Any] = {"service_uuids": [SERVICE_UUID]}
        if self.scanner_backend is not None:
            kw["backend"] = self.scanner_backend
        if self.adapter:
            kw["bluez"] = {"adapter": self.adapter}
        self._scanner = BleakScanner(self._on_advertisement, **kw)
        self._scan_task = asyncio.create_task(self._scan_loop(), name="ble-scan")

    async def _scan_loop(self) -> None:
        assert self._scanner is not None
        delay = self.retry_min
        while True:
            try:
                await self._scanner.start()
            except (BleakError, OSError) as e:  # no adapter (yet), or it is busy
                self.counts["scan_errors"] += 1
                if self.limiter.allow("scan_error")[0]:
                    log.error("ble scan cannot start, retrying in %.0f s: %s", delay, e, extra={"transport": TRANSPORT})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_min
            self.scanning = True
            self.counts["scans"] += 1
            if self.scan_interval is None:
                log.info("ble scanning", extra={"service": SERVICE_UUID, "transport": TRANSPORT})
                return  # continuously from now on
            await asyncio.sleep(self.scan_window)
            await self._stop_scanner()
            await asyncio.sleep(max(0.0, self.scan_interval - self.scan_window))

    async def _stop_scanner(self) -> None:
        if self.scanning and self._scanner is not None:
            self.scanning = False
            try:
                await self._scanner.stop()
            except (BleakError, OSError):
                pass

    def _registered(self, node_id: int) -> bool:
        """The default node_filter: the node is in the pipeline's registry (asked at each advertisement)."""
        registry = getattr(self.pipeline, "registry", None)
        return registry is not None and registry.get(node_id) is not None

    def _on_mic_lockout(self, gateway_id: str, node_id: int, seconds: float) -> None:
        """The pipeline locked (link, node) out: drop the link, keep that node off BLE until it ends."""
        if not gateway_id.startswith(TRANSPORT + ":"):
            return
        self._remember(self._banned, node_id, self.monotonic() + seconds)
        link = self.links.get(gateway_id[len(TRANSPORT) + 1 :])
        if link is not None:
            self.counts["mic_lockout_disconnects"] += 1
            log.warning(
                "ble link dropped: too many bad MICs",
                extra={"address": link.address, "node": f"{node_id:08x}", "lockout_s": seconds},
            )
            link.drop()

    async def stop(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            await asyncio.gather(self._scan_task, return_exceptions=True)
            self._scan_task = None
        await self._stop_scanner()
        self._scanner = None
        for link in list(self.links.values()):
            await link.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.connect_timeout)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingestor.stop()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        out.update({f"dropped_{r}": n for r, n in self.drops.counts.items()})
        out["links"] = len(self.links)
        out["scanning"] = int(self.scanning)
        out["ingest_dropped"] = self.ingestor.dropped
        return out

    # -- scanning ----------------------------------------------------------

    @staticmethod
    def _remember(d: OrderedDict, key: Any, value: Any) -> None:
        d[key] = value
        d.move_to_end(key)
        while len(d) > MAX_TRACKED:
            d.popitem(last=False)

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        try:
            self._advertisement(device, adv)
        except Exception:  # whatever a radio neighbour advertises, scanning goes on
            self.counts["internal_error"] += 1
            if self.limiter.allow("internal_error")[0]:
                log.exception("ble advertisement handling failed")

    def _advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        if SERVICE_UUID not in (u.lower() for u in adv.service_uuids):
            return  # the OS filter let something else through
        self.counts["advertisements"] += 1
        addr = device.address
        self._remember(self.rssi, addr, float(adv.rssi))
        if addr in self.links:
            return
        node_id = advertised_node_id(adv)
        if node_id is None or not self.node_filter(node_id):
            self.counts["filtered"] += 1
            return
        banned = self._banned.get(node_id)
        if banned is not None:
            if self.monotonic() < banned:
                self.counts["mic_lockout_refused"] += 1
                return
            del self._banned[node_id]
        not_before, _ = self._retry.get(addr, (0.0, 0.0))
        if self.monotonic() < not_before:
            return
        if len(self.links) >= self.max_connections:
            self.counts["connection_limit"] += 1
            return
        link = self.links[addr] = BleLink(self, device, node_id)
        task = asyncio.get_running_loop().create_task(self._keep(link), name=f"ble-{addr}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep(self, link: BleLink) -> None:
        addr = link.address
        ok = False
        try:
            await link.run()
            ok = True
        except asyncio.CancelledError:
            raise
        except (TimeoutError, BleakError, OSError, EOFError) as e:
            self.counts["connect_failures"] += 1
            if self.limiter.allow("connect_failure")[0]:
                log.warning("ble connection to %s failed: %s", addr, e, extra={"transport": TRANSPORT})
        except Exception:
            self.counts["internal_error"] += 1
            if self.limiter.allow("internal_error")[0]:
                log.exception("ble link failed", extra={"address": addr})
        finally:
            self.links.pop(addr, None)
        if ok:
            self.counts["disconnects"] += 1
            log.info("ble node disconnected", extra={"address": addr, "transport": TRANSPORT})
            self._remember(self._retry, addr, (self.monotonic() + self.retry_min, 0.0))
        else:
            _, last = self._retry.get(addr, (0.0, 0.0))
            delay = min(self.retry_max, max(self.retry_min, last * 2))
            self._remember(self._retry, addr, (self.monotonic() + delay, delay))
