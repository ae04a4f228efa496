"""Simulated Bluetooth air for BLE commissioning tests.

Nodes run the real firmware/ble.py over the aioble stand-in of
tests/micropython/aioble_fake.py (one `Stack` per node: what the node's
Bluetooth stack shows to the world). The technician's side is bleak, with
bleak's own backend seam (`BleakScanner(backend=...)`,
`BleakClient(backend=...)`, bleak >= 0.18): the backends below play the
laptop's OS Bluetooth stack, so bleak's front ends, lumeau/ble_tools.py and
the node's code run for real and meet only at the bytes and attributes a
real radio would carry:

- scanning hears each advertising node in reach every `Air.tick_s`; its raw
  advertising data and scan response are parsed as an OS stack does (AD
  structures: flags, 128-bit service UUIDs, local name, 128-bit service data,
  manufacturer data), so the node's byte layout is what the tool reads;
- connecting needs the node to advertise (in reach, not busy with another
  central); the GATT table is the one the node registered; reads return the
  attribute's value, writes go through the attribute buffer (truncated as a
  real stack does), notifications are cut to ATT_MTU - 3 and reach only a
  subscribed client; either side may drop the link.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from lumeau.ble_tools import Backends


def _load_fake() -> Any:
    # by path: tests/micropython is not a package (and must not shadow `micropython`)
    path = Path(__file__).resolve().parent / "micropython" / "aioble_fake.py"
    name = "lumeau_tests_aioble_fake"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


aioble_fake = _load_fake()

PROPS = (
    (0x0002, "read"),
    (0x0004, "write-without-response"),
    (0x0008, "write"),
    (0x0010, "notify"),
    (0x0020, "indicate"),
)


def _uuid128(le: bytes) -> str:
    h = bytes(reversed(le)).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_ad(*payloads: bytes) -> dict[str, Any]:
    """AD structures of advertising data + scan response, merged as an OS stack reports them."""
    out: dict[str, Any] = {
        "local_name": None,
        "manufacturer_data": {},
        "service_data": {},
        "service_uuids": [],
        "tx_power": None,
    }
    for p in payloads:
        i = 0
        while i < len(p):
            n = p[i]
            if n == 0 or i + 1 + n > len(p):
                break  # padding, or a truncated structure: the rest is not trusted
            t, v = p[i + 1], bytes(p[i + 2 : i + 1 + n])
            i += 1 + n
            if t in (0x06, 0x07):
                for j in range(0, len(v) - 15, 16):
                    u = _uuid128(v[j : j + 16])
                    if u not in out["service_uuids"]:
                        out["service_uuids"].append(u)
            elif t in (0x08, 0x09):
                out["local_name"] = v.decode("utf-8", "replace")
            elif t == 0x21 and len(v) >= 16:
                out["service_data"][_uuid128(v[:16])] = v[16:]
            elif t == 0xFF and len(v) >= 2:
                out["manufacturer_data"][int.from_bytes(v[:2], "little")] = v[2:]
            elif t == 0x0A and len(v) == 1:
                out["tx_power"] = int.from_bytes(v, "big", signed=True)
    return out


class Device:
    """One node's radio in the air."""

    def __init__(self, air: Air, stack: Any, rssi: int, mtu: int) -> None:
        self.air = air
        self.stack = stack
        self.address = stack.address
        self.rssi = rssi
        self.mtu = mtu
        self.in_reach = True
        self.ignore_writes = False  # the node's stack takes writes but its app never answers (hung)
        self.connects = 0
        self.client: SimClient | None = None

    def leave(self) -> None:
        """The node goes out of reach: no more advertisements, a link up is lost on both sides."""
        self.in_reach = False
        if self.stack.connection is not None:
            self.stack.disconnect()
        if self.client is not None:
            self.client._dropped()


class Air:
    """The radio environment of one test; `backends` is what the tool gets."""

    def __init__(self, tick_s: float = 0.1) -> None:
        self.tick_s = tick_s
        self.devices: dict[str, Device] = {}
        self.adapter_missing = False
        air = self

        class Scanner(SimScanner):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(air, *args, **kw)

        class Client(SimClient):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(air, *args, **kw)

        self.backends = Backends(scanner=Scanner, client=Client)

    def add(self, stack: Any, rssi: int = -60, mtu: int = 23) -> Device:
        d = self.devices[stack.address] = Device(self, stack, rssi, mtu)
        return d


class SimScanner(BaseBleakScanner):
    def __init__(self, air: Air, detection_callback, service_uuids, scanning_mode: str = "active", **kw: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.air = air
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.air.adapter_missing:
            raise BleakError("No Bluetooth adapters found.")
        self.seen_devices = {}
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen(self) -> None:
        while True:
            for d in list(self.air.devices.values()):
                adv = d.stack.advertising
                if d.in_reach and adv is not None:
                    self.heard(d, adv[1], adv[2])
            await asyncio.sleep(self.air.tick_s)

    def heard(self, d: Device, adv_data: bytes, resp_data: bytes) -> None:
        f = parse_ad(adv_data, resp_data)
        adv = AdvertisementData(
            local_name=f["local_name"],
            manufacturer_data=f["manufacturer_data"],
            service_data=f["service_data"],
            service_uuids=f["service_uuids"],
            tx_power=f["tx_power"],
            rssi=d.rssi,
            platform_data=(),
        )
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        device = self.create_or_update_device(d.address, d.address, f["local_name"], d, adv)
        self.call_detection_callbacks(device, adv)


class SimClient(BaseBleakClient):
    def __init__(self, air: Air, address_or_ble_device, **kw: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kw.pop("disconnected_callback", None),
            timeout=kw.pop("timeout", 10.0),
        )
        self.air = air
        self.device: Device | None = None
        self.conn: Any = None
        self._subs: dict[int, Callable[[bytearray], None]] = {}

    @property
    def mtu_size(self) -> int:
        return self.device.mtu if self.device is not None else 23

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        d = self.air.devices.get(self.address)
        if d is None:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        if not d.in_reach or d.stack.advertising is None:
            await asyncio.sleep(self._timeout)  # the OS keeps trying until the timeout
            raise TimeoutError
        await asyncio.sleep(0)
        stack = d.stack
        self.conn = stack.connect("AA:BB:CC:DD:EE:FF", mtu=None if d.mtu == 23 else d.mtu)
        stack.on_notify = self._notified
        stack.on_disconnect = self._dropped
        d.connects += 1
        d.client = self
        self.device = d
        services = BleakGATTServiceCollection()
        h = 1
        for svc, chars in stack.services:
            s = BleakGATTService(None, h, svc.uuid.s)
            services.add_service(s)
            for handle, c in chars:
                props: Any = [name for bit, name in PROPS if c.flags & bit]
                services.add_characteristic(
                    BleakGATTCharacteristic(c, handle, c.uuid.s, props, lambda: self.mtu_size - 3, s)
                )
            h = max((hh for hh, _ in chars), default=h) + 2
        self.services = services

    def _alive(self) -> Any:
        d = self.device
        if d is None or self.conn is None or not self.conn.is_connected() or not d.in_reach:
            raise BleakError("Not connected")
        return d.stack

    def _notified(self, handle: int, data: bytes) -> None:
        cb = self._subs.get(handle)
        if cb is not None:
            cb(bytearray(data))

    def _dropped(self) -> None:
        if self.conn is None:
            return
        self._gone()
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    def _gone(self) -> None:
        self.conn = None
        self._subs = {}

    async def disconnect(self) -> None:
        if self.conn is not None and self.device is not None:
            stack = self.device.stack
            if stack.connection is self.conn:
                stack.disconnect()
        self._gone()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def unpair(self) -> None:
        pass

    @property
    def is_connected(self) -> bool:
        return self.conn is not None and self.conn.is_connected()

    async def read_gatt_char(self, characteristic, **kwargs: Any) -> bytearray:
        stack = self._alive()
        await asyncio.sleep(0)  # a round trip
        try:
            return bytearray(stack.read(characteristic.handle))
        except OSError as e:
            raise BleakError(str(e)) from None

    async def read_gatt_descriptor(self, descriptor, **kwargs: Any) -> bytearray:
        raise BleakError("no descriptors")

    async def write_gatt_char(self, characteristic, data, response: bool) -> None:
        stack = self._alive()
        if not response and len(data) > self.mtu_size - 3:
            raise BleakError("write without response longer than the MTU")
        if len(data) > 512:
            raise BleakError("attribute value longer than 512 bytes")
        await asyncio.sleep(0)
        if self.device is not None and self.device.ignore_writes:
            return
        try:
            stack.write(characteristic.handle, bytes(data))
        except OSError as e:
            raise BleakError(str(e)) from None

    async def write_gatt_descriptor(self, descriptor, data) -> None:
        raise BleakError("no descriptors")

    async def start_notify(self, characteristic, callback, **kwargs: Any) -> None:
        stack = self._alive()
        if "notify" not in characteristic.properties:
            raise BleakError("characteristic does not notify")
        self._subs[characteristic.handle] = callback
        stack.subscribe(characteristic.handle)

    async def stop_notify(self, characteristic) -> None:
        self._subs.pop(characteristic.handle, None)
        if self.conn is not None and self.device is not None:
            self.device.stack.subscribe(characteristic.handle, False)
