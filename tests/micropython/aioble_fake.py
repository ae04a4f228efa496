# A stand-in for micropython-lib's aioble (peripheral + server roles), for tests.
#
# Same names, signatures and behaviour as aioble where firmware/ble.py
# touches it (micropython-lib micropython/bluetooth/aioble: server.py,
# peripheral.py, device.py):
#   Service(uuid); Characteristic(service, uuid, read=, write=,
#   write_no_response=, notify=, indicate=, initial=, capture=);
#   BufferedCharacteristic(..., max_len=20, append=False);
#   register_services(*services); await advertise(interval_us, adv_data=,
#   resp_data=, connectable=, ..., timeout_ms=) -> DeviceConnection, raising
#   asyncio.TimeoutError on timeout and returning None when cancelled;
#   characteristic.read() / write(data, send_update=False) /
#   notify(connection, data=None) / await written(timeout_ms=None) ->
#   connection, or (connection, data) with capture; DeviceConnection.mtu
#   (None until an MTU exchange), is_connected(), await disconnected(
#   timeout_ms=60000, disconnect=False), await disconnect(timeout_ms=2000).
# What the BLE stack below aioble does is played by `Stack` (one per
# device, never a global): what the remote central sees and does. Like the
# real stack it keeps only the characteristic's buffer size of a write (20
# bytes unless BufferedCharacteristic says more), cuts notifications to
# ATT_MTU - 3, delivers them only to a subscribed central, and stops
# advertising while a central is connected. Writes are captured in order,
# at most WRITE_CAPTURE_QUEUE_LIMIT waiting (older ones dropped, as aioble's
# deque does).
#
# Plain MicroPython: runs in the WebAssembly port (tests/micropython) and on
# CPython (tests/ble_sim.py bridges a Stack to bleak's backend seam).

import asyncio

_FLAG_READ = 0x0002
_FLAG_WRITE_NO_RESPONSE = 0x0004
_FLAG_WRITE = 0x0008
_FLAG_NOTIFY = 0x0010
_FLAG_INDICATE = 0x0020
_FLAG_WRITE_CAPTURE = 0x10000

WRITE_CAPTURE_QUEUE_LIMIT = 10
DEFAULT_BUFFER = 20  # MicroPython's default attribute buffer (gatts_set_buffer)
ADV_PAYLOAD_MAX_LEN = 31


class UUID:
    """bluetooth.UUID for 128-bit string UUIDs (and 16-bit ints)."""

    def __init__(self, value):
        if isinstance(value, int):
            value = "0000%04x-0000-1000-8000-00805f9b34fb" % value
        self.s = value.lower()

    def __eq__(self, other):
        return isinstance(other, UUID) and other.s == self.s

    def __hash__(self):
        return hash(self.s)

    def __bytes__(self):
        return bytes(reversed(bytes.fromhex(self.s.replace("-", ""))))

    def __repr__(self):
        return "UUID('%s')" % self.s


class Service:
    def __init__(self, uuid):
        self.uuid = uuid
        self.characteristics = []


class BaseCharacteristic:
    def _register(self, stack, value_handle):
        self._stack = stack
        self._value_handle = value_handle
        stack.chars[value_handle] = self
        stack.values[value_handle] = b""
        if self._initial is not None:
            self.write(self._initial)
            self._initial = None

    def read(self):
        if self._value_handle is None:
            return self._initial or b""
        return self._stack.values[self._value_handle]

    def write(self, data, send_update=False):
        if self._value_handle is None:
            self._initial = data
            return
        self._stack.values[self._value_handle] = bytes(data)
        if send_update and self._stack.connection is not None:
            self._stack._notify(self._stack.connection, self._value_handle, None)

    async def written(self, timeout_ms=None):
        if not hasattr(self, "_write_event"):
            return None  # not writable
        while not self._queue:
            self._write_event.clear()
            if timeout_ms:
                await asyncio.wait_for(self._write_event.wait(), timeout_ms / 1000)
            else:
                await self._write_event.wait()
        return self._queue.pop(0)

    def on_read(self, connection):
        return 0


class Characteristic(BaseCharacteristic):
    def __init__(
        self,
        service,
        uuid,
        read=False,
        write=False,
        write_no_response=False,
        notify=False,
        indicate=False,
        initial=None,
        capture=False,
    ):
        service.characteristics.append(self)
        self.descriptors = []
        flags = 0
        if read:
            flags |= _FLAG_READ
        if write or write_no_response:
            flags |= (_FLAG_WRITE if write else 0) | (_FLAG_WRITE_NO_RESPONSE if write_no_response else 0)
            if capture:
                flags |= _FLAG_WRITE_CAPTURE
            self._write_event = asyncio.Event()
            self._queue = []
        if notify:
            flags |= _FLAG_NOTIFY
        if indicate:
            flags |= _FLAG_INDICATE
        self.uuid = uuid
        self.flags = flags
        self._value_handle = None
        self._initial = initial
        self._max_len = DEFAULT_BUFFER
        self._stack = None

    def notify(self, connection, data=None):
        if not (self.flags & _FLAG_NOTIFY):
            raise ValueError("Not supported")
        self._stack._notify(connection, self._value_handle, data)


class BufferedCharacteristic(Characteristic):
    def __init__(self, *args, max_len=20, append=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_len = max_len
        self._append = append


class DeviceConnection:
    def __init__(self, stack, addr):
        self.device = addr
        self.mtu = None
        self.encrypted = False
        self._stack = stack
        self._conn_handle = 0
        self._gone = asyncio.Event()

    def is_connected(self):
        return self._conn_handle is not None

    async def disconnected(self, timeout_ms=60000, disconnect=False):
        if not self.is_connected():
            return
        if disconnect:
            self._stack._drop(self, True)
            return
        if timeout_ms:
            await asyncio.wait_for(self._gone.wait(), timeout_ms / 1000)
        else:
            await self._gone.wait()

    async def disconnect(self, timeout_ms=2000):
        await self.disconnected(timeout_ms, disconnect=True)


class Stack:
    """One device's BLE stack as the remote side sees it; `aioble(stack)` is its aioble."""

    def __init__(self, address="C0:FF:EE:00:00:01"):
        self.address = address
        self.chars = {}  # value handle -> characteristic
        self.values = {}  # value handle -> bytes
        self.services = []  # [(service, [(value handle, characteristic)])]
        self.advertising = None  # (interval_us, adv_data, resp_data) while advertising
        self.connection = None
        self.subscribed = set()  # value handles the central subscribed to
        self.on_notify = None  # the central's callback(value handle, bytes)
        self.on_disconnect = None  # the central's callback() when the device drops the link
        self.notifications_dropped = 0
        self.writes_dropped = 0
        self.adv_starts = 0
        self.fail_advertise = 0  # the next n advertise() calls raise OSError (a stack fault)
        self._connect_event = asyncio.Event()
        self._next_handle = 1

    # -- what aioble calls ---------------------------------------------------------

    def register_services(self, *services):
        if self.connection is not None:
            raise OSError(16)  # EBUSY: the real stack refuses while connected
        self.chars = {}
        self.services = []
        for svc in services:
            self._next_handle += 1  # the service declaration
            handles = []
            for c in svc.characteristics:
                self._next_handle += 1  # the characteristic declaration
                h = self._next_handle
                self._next_handle += 1
                c._register(self, h)
                handles.append((h, c))
                if c.flags & (_FLAG_NOTIFY | _FLAG_INDICATE):
                    self._next_handle += 1  # its CCCD
            self.services.append((svc, handles))

    async def advertise(
        self,
        interval_us,
        adv_data=None,
        resp_data=None,
        connectable=True,
        limited_disc=False,
        br_edr=False,
        name=None,
        services=None,
        appearance=0,
        manufacturer=None,
        timeout_ms=None,
    ):
        if self.fail_advertise:
            self.fail_advertise -= 1
            raise OSError(5)
        for data in (adv_data, resp_data):
            if data is not None and len(data) > ADV_PAYLOAD_MAX_LEN:
                raise ValueError("Advertising payload too long")
        self.advertising = (interval_us, bytes(adv_data or b""), bytes(resp_data or b""))
        self.adv_starts += 1
        self._connect_event.clear()
        try:
            if timeout_ms:
                await asyncio.wait_for(self._connect_event.wait(), timeout_ms / 1000)
            else:
                await self._connect_event.wait()
        except asyncio.CancelledError:
            self.advertising = None
            return None
        except asyncio.TimeoutError:
            self.advertising = None
            raise
        return self.connection

    def aioble(self):
        """This stack's aioble: what `import aioble` gives on a board with this radio."""
        return _Aioble(self)

    # -- what the remote central does -------------------------------------------------

    def connect(self, central="AA:BB:CC:DD:EE:FF", mtu=None):
        """A central connects; mtu: the ATT MTU it negotiates (None: none exchanged, 23)."""
        if self.advertising is None:
            raise OSError("not advertising")
        self.advertising = None
        conn = DeviceConnection(self, central)
        conn.mtu = mtu
        self.connection = conn
        self.subscribed = set()
        self._connect_event.set()
        return conn

    def disconnect(self):
        """The central goes away."""
        c = self.connection
        if c is not None:
            self._drop(c, False)

    def handle_of(self, uuid):
        for h, c in self.chars.items():
            if c.uuid == uuid:
                return h
        return None

    def read(self, handle):
        c = self.chars[handle]
        if not c.flags & _FLAG_READ:
            raise OSError("read not permitted")
        c.on_read(self.connection)
        return self.values[handle]

    def write(self, handle, data):
        c = self.chars[handle]
        if not c.flags & (_FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE):
            raise OSError("write not permitted")
        data = bytes(data)[: c._max_len]  # the attribute buffer keeps no more
        if getattr(c, "_append", False):
            data = self.values[handle] + data
        self.values[handle] = data
        if c.flags & _FLAG_WRITE_CAPTURE:
            q = c._queue
            if len(q) >= WRITE_CAPTURE_QUEUE_LIMIT:
                q.pop(0)
                self.writes_dropped += 1
            q.append((self.connection, data))
        else:
            c._queue[:] = [self.connection]
        c._write_event.set()

    def subscribe(self, handle, on=True):
        if on:
            self.subscribed.add(handle)
        else:
            self.subscribed.discard(handle)

    # -- internals ------------------------------------------------------------------------

    def _notify(self, connection, handle, data):
        if connection is None or connection is not self.connection or not connection.is_connected():
            raise OSError("not connected")
        if data is None:
            data = self.values[handle]
        data = bytes(data)[: (connection.mtu or 23) - 3]  # ATT_MTU - 3
        if handle in self.subscribed and self.on_notify is not None:
            self.on_notify(handle, data)
        else:
            self.notifications_dropped += 1

    def _drop(self, conn, by_device):
        conn._conn_handle = None
        conn._gone.set()
        if self.connection is conn:
            self.connection = None
            self.subscribed = set()
        if by_device and self.on_disconnect is not None:
            self.on_disconnect()


class _Aioble:
    """The aioble module as firmware/ble.py sees it, bound to one Stack."""

    Service = Service
    Characteristic = Characteristic
    BufferedCharacteristic = BufferedCharacteristic
    DeviceConnection = DeviceConnection

    def __init__(self, stack):
        self.stack = stack

    def register_services(self, *services):
        self.stack.register_services(*services)

    async def advertise(self, interval_us, **kw):
        return await self.stack.advertise(interval_us, **kw)
