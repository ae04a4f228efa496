# BLE commissioning on the node (SPEC §11, "Commissioning"): a technician on
# the pavement sees the node's id, kind and state in its advertisement, reads
# its live status and last alarms, and changes its settings with a CONFIG
# frame sealed with the node's own downlink key (or sets its clock with a
# TIME frame: a node without a gateway in reach keeps its dimming schedule).
#
#   c = Commissioning(node, aioble, bluetooth.UUID, cfg["ble"])   # before node.run()
#   asyncio.create_task(c.run())                                   # firmware/main.py
#
# The seam: micropython-lib's `aioble` and a UUID constructor are passed in,
# never imported here (tests pass a fake shaped like aioble, a board the real
# ones). Imported only when the config's "ble" section enables it, so a node
# without BLE carries it on flash but not in its heap.
#
# What it does:
# - advertises the commissioning service, connectable, every
#   adv_interval_ms, name "Lumeau"; the scan response holds the service data
#   (node id, kind, state, open alarms, output, firmware, flags), rebuilt
#   every _ADV_REFRESH_MS so a scan shows the state of now;
# - serves one connection at a time (the stack stops advertising while
#   connected) and drops it after _IDLE_MS without a write, after
#   _CONNECTION_MAX_MS in any case, and after _REFUSALS_MAX refused frames, so
#   a parked phone cannot hold the node and a guesser pays a reconnection
#   for every few tries;
# - status characteristic (read): a CBOR map, refreshed every
#   _STATUS_REFRESH_MS while connected; alarms characteristic (read): the last
#   _ALARMS_KEPT EVENTs of severity >= warning since boot, oldest first;
# - control characteristic (write, notify): downlink frames in the serial
#   framing of §8, written in pieces of at most CONTROL_WRITE_MAX bytes; each
#   write is answered by one framed notification stream: a session request
#   `A1 challenge` by `A1 nonce top tag`, a frame by a CMD_ACK uplink sealed
#   with the node's keys when a CONFIG or TIME was applied (command id = the
#   frame's counter, value = bitmask of refused keys), or by a refusal
#   `A0 reason top tag` when nothing was applied; an update message `A2 ...`
#   (SPEC §11 "Updates": a release image in chunks) goes to firmware/bleupd.py,
#   loaded by its dotted name only then and dropped with the connection.
# Sessions (SPEC §11, "Sessions", after OSCORE's Echo, RFC 9175): the node
# draws a random nonce for each session request and takes a tool frame only
# if it carries that nonce (CONFIG key 2, TIME key 3), so a frame sealed by a
# tool talking to someone else is worth nothing here; its answers are tagged
# with its key over the tool's challenge and the nonce, so the tool trusts a
# counter top only from this node, now. A new connection has no session.
# Counters: tool frames use the upper half of the downlink counter space
# (frame.TOOL_COUNTER_BASE) with its own replay window in the store, so they
# never collide with or outrun the gateway's downlinks (SPEC §4). The tool
# learns the window's top from the session answer (the status's key 6 is
# for people: it is not tagged).
#
# The profile both ends share (UUIDs, service data, status keys, refusal
# codes) is protocol/ble.py. Like the rest of the firmware (firmware/README.md)
# this module loads only the node's parts of protocol/ (nodeble, nodeframe,
# nodemsg, nodecbor) and keeps private const() copies of the numbers it uses,
# so a node with BLE on never loads messages.py, frame.py or ble.py, and
# cbor.py only as nodecbor's fallback (a body outside a node's CBOR subset;
# frames are decoded after their MIC verified). tests/test_node_consts.py
# checks the copies and the imports.
#
# Time: the advertising refresh is aioble's own timeout (the board's clock;
# BLE has no simulated counterpart); everything else waits through the HAL.

import asyncio
import os
import struct

from protocol import VERSION
from protocol import nodeble as bp
from protocol import nodecbor as cbor
from protocol import nodeframe as fr
from protocol import nodemsg as m
from protocol import serial as framing

from firmware import unload
from firmware.store import StorageError

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

# protocol's numbers (messages, frame, ble), as private copies
_LIGHT = const(2)
_CMD_ACK = const(6)
_CONFIG = const(9)
_TIME = const(10)
_SEV_WARNING = const(1)
_L_LEVEL = const(0)
_L_STATE = const(3)
_L_PRESENCE = const(5)
_LS_FAILSAFE = const(0x40)
_IR_VALVES = const(1)
_IR_FAULTS = const(6)
_IF_FAILSAFE = const(0x10)
_CF_SETTINGS = const(0)
_CF_ECHO = const(2)
_T_UNIX = const(0)
_T_MS = const(1)
_T_ECHO = const(3)
_CA_ID = const(0)
_CA_RESULT = const(1)
_CA_VALUE = const(2)
_RES_OK = const(0)
_RES_BAD_ARGS = const(2)
_MAX_LEN = const(255)
_TOOL_COUNTER_BASE = const(0x80000000)
_ACCEPT = const(0)
_CONTROL_WRITE_MAX = const(64)
_STATE_OK = const(0)
_STATE_ALARM = const(1)
_STATE_FAILSAFE = const(2)
_FL_TIME = const(0x01)
_FL_CONFIGURE = const(0x02)
_ST_NODE = const(0)
_ST_KIND = const(1)
_ST_FIRMWARE = const(2)
_ST_STATE = const(3)
_ST_REPORT = const(4)
_ST_STATUS = const(5)
_ST_TOOL_TOP = const(6)
_ST_GATEWAY_TOP = const(7)
_ST_COUNTERS = const(8)
_ST_LAST_ERROR = const(9)
_ST_CONFIG_HASH = const(10)
_SESSION = const(0xA1)
_CHALLENGE_LEN = const(8)
_NONCE_LEN = const(8)
_REFUSED = const(0xA0)
_R_MALFORMED = const(1)
_R_WRONG_NODE = const(2)
_R_UNSUPPORTED = const(3)
_R_AUTH = const(4)
_R_REPLAY = const(5)
_R_COUNTER = const(6)
_R_DISABLED = const(7)
_R_STORAGE = const(8)
_R_ECHO = const(9)
_UPDATE = const(0xA2)  # an update message (SPEC §11, "Updates"): firmware/bleupd.py
_U_REFUSED = const(2)

_ADV_REFRESH_MS = const(10000)
_STATUS_REFRESH_MS = const(1000)
_IDLE_MS = const(60000)
_CONNECTION_MAX_MS = const(600000)
_REFUSALS_MAX = const(8)
_ALARMS_KEPT = const(8)  # <= 23: the alarms value's CBOR array head is one byte
_ERROR_BACKOFF_MS = const(5000)  # the stack refused to advertise: try again later ...
_ERROR_BACKOFF_MAX_MS = const(300000)  # ... doubling up to 5 min
_LAST_ERROR_MAX = const(48)


class Commissioning:
    """BLE commissioning for one node; `await run()` (never returns)."""

    def __init__(self, node, aioble, uuid, settings):
        self.node = node
        self.aioble = aioble
        self.interval_us = settings["adv_interval_ms"] * 1000
        self.configure = settings["configure"]
        uuids = bp.COMMISSIONING  # service, status, alarms, control
        svc = self._svc_le = bp.uuid_le(uuids[0])
        # flags (LE general discoverable, no BR/EDR), the service, the name: 29 of 31 bytes
        self.adv = b"\x02\x01\x06\x11\x07" + svc + bytes((len(bp.NAME) + 1, 0x09)) + bp.NAME
        self._fw = bp.version_bytes(VERSION)
        service = aioble.Service(uuid(uuids[0]))
        self.status = aioble.Characteristic(service, uuid(uuids[1]), read=True)
        self.alarms = aioble.Characteristic(service, uuid(uuids[2]), read=True, initial=b"\x80")
        self.control = aioble.BufferedCharacteristic(
            service, uuid(uuids[3]), write=True, notify=True, capture=True, max_len=_CONTROL_WRITE_MAX
        )
        self._service = service
        self._registered = False
        self._ring = []  # EVENT bodies (CBOR), oldest first: at most _ALARMS_KEPT
        self._decoder = None  # per connection: 416 bytes of heap only while a central is connected
        self._last_write = 0
        self._refusals = 0
        self._sess = None  # the tool's challenge + the node's nonce: None until a session request
        # counters, for the status and the tests
        self.connections = 0
        self.applied = 0
        self.refused = 0
        node.on_event = self._on_event

    # -- what the node shows ----------------------------------------------------------

    def _on_event(self, severity, data):
        if severity < _SEV_WARNING:
            return
        ring = self._ring
        ring.append(data)
        if len(ring) > _ALARMS_KEPT:
            ring.pop(0)
        try:
            self.alarms.write(self.alarms_value())
        except Exception as e:  # an alarm must reach the queue whatever BLE does
            self.node.last_error = repr(e)

    def alarms_value(self):
        """CBOR array of the kept EVENT bodies (maps), oldest first."""
        return bytes((0x80 + len(self._ring),)) + b"".join(self._ring)

    def look(self):
        """(state, output, open alarms, report type, report body) of now; type None when unknown."""
        app = self.node.app
        if app is None:
            return _STATE_FAILSAFE, 0xFF, 0, None, None  # the runtime holds the outputs safe
        try:
            presence = getattr(app, "presence", None)
            mtype, body = app.report()
            if presence is not None:
                app.presence = presence  # report() starts a new presence count: a look must not
            alarms = app.open_alarms()
        except Exception as e:  # the runtime's next report faults the app; a look only says so
            self.node.last_error = repr(e)
            return _STATE_FAILSAFE, 0xFF, 0, None, None
        if mtype == _LIGHT:
            out = body.get(_L_LEVEL, 0xFF)
            failsafe = body.get(_L_STATE, 0) & _LS_FAILSAFE
        else:
            out = body.get(_IR_VALVES, 0xFF)
            failsafe = body.get(_IR_FAULTS, 0) & _IF_FAILSAFE
        st = _STATE_FAILSAFE if failsafe else _STATE_ALARM if alarms else _STATE_OK
        return st, out, alarms, mtype, body

    def scan_response(self):
        """The service data (SPEC §11): its 12 bytes after the service UUID say the state of now."""
        node = self.node
        st, out, alarms, _, _ = self.look()
        flags = _FL_CONFIGURE if self.configure else 0
        if node.hal.time() is not None:
            flags |= _FL_TIME
        fw = self._fw
        sd = struct.pack(">IBBBB3BB", node.node_id, node.kind, st, min(alarms, 255), out, fw[0], fw[1], fw[2], flags)
        return bytes((len(sd) + 17, 0x21)) + self._svc_le + sd

    def status_value(self):
        """CBOR map read by `lumeau node check` (keys in SPEC §11)."""
        node = self.node
        store = node.store
        st, _, _, mtype, body = self.look()
        v = {
            _ST_NODE: node.node_id,
            _ST_KIND: node.kind,
            _ST_FIRMWARE: VERSION,
            _ST_STATE: st,
            _ST_STATUS: node.status_body(),
            _ST_TOOL_TOP: store.tool_window.top,
            _ST_GATEWAY_TOP: store.window.top,
            _ST_COUNTERS: [node.tx, node.rx, node.rx_rejected, node.app_faults, self.applied, self.refused],
            _ST_CONFIG_HASH: node.cfg["hash"],
        }
        if mtype is not None:
            if mtype == _LIGHT:  # who passes by a lamp, and when, is not for anyone in reach (SPEC §11)
                body.pop(_L_PRESENCE, None)
            v[_ST_REPORT] = [mtype, body]
        if node.last_error:
            v[_ST_LAST_ERROR] = node.last_error[:_LAST_ERROR_MAX]
        return cbor.dumps(v)

    # -- configuration over BLE ------------------------------------------------------------

    def _tagged(self, answer):
        return answer + bp.tag(self.node.keys, answer, self._sess or bytes(16))

    def _refuse(self, reason):
        self._refusals += 1
        self.refused += 1
        return self._tagged(struct.pack(">BBI", _REFUSED, reason, self.node.store.tool_window.top))

    def handle(self, raw):
        """Answer one frame written to the control characteristic (bytes to frame and notify)."""
        try:
            return self._handle(raw)
        except Exception as e:  # whatever is written, the node keeps running
            self.node.last_error = repr(e)
            return self._refuse(_R_MALFORMED)

    def _handle(self, raw):
        node = self.node
        store = node.store
        if raw and raw[0] == _UPDATE:  # loaded by its dotted name: the resident node pays none of its names
            out = __import__("firmware.bleupd", None, None, ("handle",)).handle(self, raw, self._sess)
            if out[1] == _U_REFUSED:
                self._refusals += 1  # a guesser pays a reconnection for every few tries, as with frames
            return out
        if raw and raw[0] == _SESSION:
            if len(raw) != 1 + _CHALLENGE_LEN:
                return self._refuse(_R_MALFORMED)
            nonce = os.urandom(_NONCE_LEN)  # the board's random source (ESP32, RP2040: hardware)
            self._sess = bytes(raw[1:]) + nonce
            return self._tagged(bytes((_SESSION,)) + nonce + struct.pack(">I", store.tool_window.top))
        try:
            f = fr.parse(raw)
        except fr.FrameError:
            return self._refuse(_R_MALFORMED)
        if not f.downlink:
            return self._refuse(_R_MALFORMED)
        if f.node_id != node.node_id:
            return self._refuse(_R_WRONG_NODE)
        t = f.mtype
        if t != _CONFIG and t != _TIME:
            return self._refuse(_R_UNSUPPORTED)
        if f.counter < _TOOL_COUNTER_BASE:
            return self._refuse(_R_COUNTER)
        if not self.configure:
            return self._refuse(_R_DISABLED)
        try:
            body = fr.verify(node.keys, f)
        except (fr.FrameError, NotImplementedError):
            return self._refuse(_R_AUTH)
        try:
            msg = m.decode(t, body)
        except m.MessageError:
            return self._refuse(_R_MALFORMED)
        sess = self._sess
        if sess is None or msg.get(_CF_ECHO if t == _CONFIG else _T_ECHO) != sess[_CHALLENGE_LEN:]:
            return self._refuse(_R_ECHO)  # sealed for another session, or for nobody's
        if store.tool_window.check(f.counter) != _ACCEPT:
            return self._refuse(_R_REPLAY)
        try:
            store.accept_downlink(f.counter)  # persisted before acting, as any downlink
        except StorageError as e:
            node.last_error = repr(e)
            return self._refuse(_R_STORAGE)  # not persisted (or the store is not open): not acted on
        refused = 0
        res = node.fresh(t, msg, False)  # SPEC §4, "Freshness": a CONFIG's expiry, a TIME's bound
        if res:
            pass  # answered with the result, nothing applied
        elif t == _TIME:
            node.hal.set_time(msg[_T_UNIX], msg.get(_T_MS, 0))
        else:
            refused = node.apply_settings(msg[_CF_SETTINGS])
        if not res:
            self.applied += 1
            res = _RES_BAD_ARGS if refused else _RES_OK
        ack = {_CA_ID: f.counter, _CA_RESULT: res}
        if refused:
            ack[_CA_VALUE] = refused
        try:
            counter = store.next_uplink()
        except StorageError as e:
            node.last_error = repr(e)
            return self._refuse(_R_STORAGE)
        return fr.seal(node.keys, _CMD_ACK, counter, m.encode(_CMD_ACK, ack), node.encrypt)

    # -- the BLE side ------------------------------------------------------------------------

    async def run(self):
        aioble = self.aioble
        hal = self.node.hal
        backoff = _ERROR_BACKOFF_MS
        while True:
            try:
                if not self._registered:
                    aioble.register_services(self._service)
                    self._registered = True
                    self.alarms.write(self.alarms_value())
                conn = await aioble.advertise(
                    self.interval_us, adv_data=self.adv, resp_data=self.scan_response(), timeout_ms=_ADV_REFRESH_MS
                )
            except asyncio.TimeoutError:
                continue  # nobody connected: advertise the state of now
            except Exception as e:  # OSError from the stack, a controller that went away
                self.node.last_error = repr(e)
                await hal.sleep_ms(backoff)
                backoff = min(backoff * 2, _ERROR_BACKOFF_MAX_MS)
                continue
            backoff = _ERROR_BACKOFF_MS
            if conn is None:
                return  # aioble swallows a cancellation of advertise() and returns None: we were stopped
            await self._serve(conn)

    async def _serve(self, conn):
        hal = self.node.hal
        self.connections += 1
        self._decoder = framing.Decoder(_MAX_LEN)
        self._refusals = 0
        self._sess = None  # each connection asks for its own session
        start = self._last_write = hal.ticks_ms()
        task = asyncio.create_task(self._control(conn))
        try:
            while conn.is_connected():
                self.status.write(self.status_value())
                await hal.sleep_ms(_STATUS_REFRESH_MS)
                now = hal.ticks_ms()
                if (
                    now - self._last_write >= _IDLE_MS
                    or now - start >= _CONNECTION_MAX_MS
                    or self._refusals >= _REFUSALS_MAX
                ):
                    await conn.disconnect()
                    break
        except Exception as e:  # the link failed under us: advertise again
            self.node.last_error = repr(e)
        finally:
            task.cancel()
            self._decoder = None
            self._sess = None
            unload("firmware.bleupd")  # an update's code leaves with its connection (its state is on flash)

    async def _control(self, conn):
        hal = self.node.hal
        ch = self.control
        while True:
            who, data = await ch.written()
            if who is not conn:
                continue  # left over from an earlier connection
            self._last_write = hal.ticks_ms()
            dec = self._decoder
            if dec is None:
                return
            for raw in dec.feed(data):
                out = framing.encode(self.handle(raw))
                n = (conn.mtu or 23) - 3  # a notification holds ATT_MTU - 3 bytes
                try:
                    for i in range(0, len(out), n):
                        ch.notify(conn, out[i : i + n])
                except Exception as e:  # gone meanwhile: the CONFIG stands, the answer is lost
                    self.node.last_error = repr(e)
