# The node runtime: one asyncio program per node, around one app.
#
#   node = Node(cfg, hal, radio, Lighting)      # cfg from firmware.config.load
#   await node.run()                            # never returns
#
# What it does (firmware/README.md has the contracts, SPEC.md the wire):
# - boot: the app is built first, so outputs reach their safe state before
#   anything slow happens; the watchdog starts; the store reserves uplink
#   counters (SPEC §4) before anything is sent; HELLO (firmware, kind,
#   capabilities, config hash, reset cause) goes first, after a random
#   delay of up to HELLO_JITTER_MS so a street of nodes powered on together
#   does not transmit at once; a watchdog reset is also reported as an EVENT.
# - the app runs as a supervised task: an exception (in run, report,
#   command, configure) calls its failsafe() (if that raises too, the
#   runtime's own last resort: lamp fully on, every valve closed), queues
#   EVENT app_exception (an alarm; the exception printed on the console, its
#   type in the value), and restarts a new app instance after a backoff
#   (APP_BACKOFF_MIN_MS doubling to APP_BACKOFF_MAX_MS). The alarm clears
#   (active 0) with the first report after that.
# - reports at the report interval, STATUS at the status interval, both
#   with jitter; EVENTs when the app raises them (alarms confirmed).
# - one sender: priority queue (firmware/uplink.py), EU868 duty cycle
#   through protocol.lora.DutyCycle (waits, never breaks the law), frame
#   size checked against the radio's limit, then the receive window: RX1
#   opens RX1_DELAY_MS after the end of the uplink (RX_EARLY_MS early).
#   A radio that hears at any time (a wire) gets a receive task instead.
# - downlinks: parse, MIC, counter (SPEC §4: on this link only the gateway's
#   half, strictly above its top -- one sender, in order; persisted before
#   acting), decode; COMMAND idempotent by id (answered with CMD_ACK and the
#   first result; refused after its expiry), CONFIG (refused after its
#   expiry; runtime keys here, app keys to app.configure; persisted), TIME
#   (only in answer to one of the node's last uplinks, sent at most
#   TIME_SLACK_S ago: `fresh`), ACK (confirms an alarm; "more queued" keeps
#   listening). A CONFIG over the air that changes SF or TX power is on trial:
#   any downlink heard keeps it; after _ADR_FALLBACK uplinks without one the
#   node returns to the previous settings, which stay saved meanwhile (SPEC §5
#   "ADR").
#   Nothing that arrives can raise out of the handler: it is counted.
# - the watchdog is fed while every runtime task is alive; a dead task (a
#   bug) stops the feeding and the board resets. App totals are flushed by
#   the store's hourly policy from the same loop.
#
# One module (over 800 lines), on purpose: the tasks above share one Node's
# state, and on the node every extra module costs a module object, its
# globals and their names in the heap; what runs only at boot already lives
# apart (firmware/config.py, lighting_cfg.py, irrigation_cfg.py, unloaded).

import asyncio

from protocol import VERSION
from protocol import nodeframe as fr
from protocol import nodelora as lora
from protocol import nodemsg as m

from firmware import aio, unload, uplink
from firmware.store import TOTALS_FLUSH_MS, CounterExhausted, NeedsRekey, StorageError, Store

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages (and frame) numbers, as private consts (tests/test_node_consts.py checks them)
_HEADER_LEN = const(9)
_MIC_LEN = const(4)
_TOOL_COUNTER_BASE = const(0x80000000)
_ACK = const(11)
_A_COUNTER = const(0)
_A_QUEUED = const(1)
_CA_ID = const(0)
_CA_RESULT = const(1)
_CA_VALUE = const(2)
_CFG_CONFIRM_ALARMS = const(6)
_CFG_LAMP_POWER = const(4)
_CFG_MAX_RUN = const(5)
_CFG_REPORT_INTERVAL = const(0)
_CFG_SF = const(3)
_CFG_STATUS_INTERVAL = const(1)
_CFG_TX_POWER = const(2)
_CF_CALENDAR = const(3)
_CF_EXPIRES = const(1)
_CF_SETTINGS = const(0)
_CMD_ACK = const(6)
_COMMAND = const(8)
_CONFIG = const(9)
_C_ARGS = const(2)
_C_EXPIRES = const(3)
_C_ID = const(0)
_C_OP = const(1)
_EVENT = const(4)
_GROUP_COMMAND = const(15)
_FRAG = const(12)  # protocol.fragments: a release's fragment to this node (SPEC §13 "Over LoRa")
_GROUP_FRAG = const(13)  # ... to one of this lamp's groups
_OP_FRAG_STATUS = const(11)
_ACK_SPREAD_S = const(60)
_EV_APP_EXCEPTION = const(23)
_EV_CALENDAR = const(24)
_EV_STORAGE_FAULT = const(22)
_EV_WATCHDOG_RESET = const(20)
_E_ACTIVE = const(4)
_E_CODE = const(0)
_E_SEVERITY = const(1)
_E_TIME = const(3)
_E_VALUE = const(2)
_E_ZONE = const(5)
_HELLO = const(1)
_H_CAPS = const(2)
_H_CONFIG_HASH = const(3)
_H_FIRMWARE = const(0)
_H_KIND = const(1)
_H_RESET = const(4)
_H_BUNDLE = const(5)
_I32_MAX = const(0x7FFFFFFF)
_I32_MIN = const(-0x80000000)
_KIND_IRRIGATION = const(2)
_KIND_LIGHTING = const(1)
_OP_REBOOT = const(9)
_OP_SET_INTERVAL = const(8)
_REPORT_MAX_S = const(86400)
_REPORT_MIN_S = const(30)
_RES_BAD_ARGS = const(2)
_RES_BUSY = const(3)
_RES_EXPIRED = const(5)
_RES_FAILED = const(6)
_RES_OK = const(0)
_RES_REFUSED = const(4)
_RST_WATCHDOG = const(2)
_SEV_ALARM = const(2)
_SEV_INFO = const(0)
_SEV_WARNING = const(1)
_SF_MAX = const(12)
_SF_MIN = const(7)
_STATUS = const(5)
_STATUS_MAX_S = const(604800)
_STATUS_MIN_S = const(300)
_S_ALARMS = const(8)
_S_HEAP = const(6)
_S_QUEUE = const(7)
_S_RSSI = const(2)
_S_SNR = const(3)
_S_SUPPLY = const(4)
_S_TIME = const(1)
_S_UPTIME = const(0)
_TIME = const(10)
_TIME_SLACK_S = const(5)
_TIME_UPLINKS = const(4)
_TX_POWER_MAX = const(14)
_TX_POWER_MIN = const(2)
_T_ANSWERS = const(2)
_T_MS = const(1)
_T_UNIX = const(0)

RX1_DELAY_MS = 1000  # SPEC §6
_RX_EARLY_MS = const(20)  # open the window this early: clock error and wake-up latency
_DOWNLINK_BURST_MAX = const(4)  # downlinks taken after one uplink when the gateway says more are queued
_HELLO_JITTER_MS = const(10000)
_REPORT_JITTER = const(10)  # reports move by up to 1/REPORT_JITTER of the interval, at random
_APP_BACKOFF_MIN_MS = const(10000)
_APP_BACKOFF_MAX_MS = const(600000)
_APP_HEALTHY_MS = const(3600000)  # an app that ran this long without a fault starts its backoff afresh
_REBOOT_GRACE_MS = const(30000)  # a reboot command waits this long at most for its CMD_ACK to go out
_REBOOT_POLL_MS = const(60000)  # without a watchdog: how often a pending reboot looks at the queue
_STORE_RETRY_MS = const(10000)  # flash refused the counter reservation: retry after 10 s ...
_STORE_RETRY_MAX_MS = const(600000)  # ... doubling up to 10 min
_IDLE_MS = const(3600000)  # longest single wait of an idle task (then it looks again)
_WIRE_LISTEN_MS = const(60000)
_ADR_FALLBACK = const(6)  # uplinks without a downlink after a CONFIG changed SF / TX power: step back (SPEC §5)


def _clamp(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


class Node:
    """The runtime of one node; also the facade an app gets as `node`."""

    def __init__(self, cfg, hal, radio, app_class=None, hello_jitter_ms=_HELLO_JITTER_MS, watchdog=True):
        self.cfg = cfg
        self.hal = hal
        self.radio = radio
        self.app_class = app_class
        self.app = None
        self.keys = cfg["keys"]
        self.node_id = cfg["node_id"]
        self.kind = cfg["kind_code"]
        self.encrypt = cfg["encrypt"]
        self.report_s = cfg["report_interval_s"]
        self.status_s = cfg["status_interval_s"]
        self.confirm_alarms = cfg["confirm_alarms"]
        self.wdt_ms = cfg["wdt_ms"]
        self.watchdog = watchdog
        self.hello_jitter_ms = hello_jitter_ms
        self.store = Store(hal, key_id=cfg.get("key_id"), fresh=cfg.get("key_fresh", False))
        self._seed = ((self.node_id * 2654435761) & 0xFFFFFFFF) | 1
        self.queue = uplink.UplinkQueue(self._rand)
        self.duty = lora.DutyCycle()
        self._app_down = asyncio.Event()
        self._intervals = asyncio.Event()
        self._tasks = []  # the node's own, at most 6: sender, supervisor, 2 periodic, receiver, flush clock
        self._app_task = None
        self._store_retry_ms = 0
        self._rekey_said = False
        self._reboot_at = None
        self.exhausted = False
        self.last_rssi = None
        self.last_snr = None
        self._adr_prev = None  # (sf, tx power) before a CONFIG changed them, until a downlink is heard
        self._adr_left = 0
        # the last uplink sent and when each of the last TIME_UPLINKS went out (ticks_ms): a TIME
        # must answer one of them (SPEC §4, "Freshness")
        self._up_last = -1
        self._up_ticks = [0] * _TIME_UPLINKS
        # counters (STATUS, tests, the simulator's report)
        self.tx = 0
        self.tx_failed = 0
        self.tx_oversize = 0
        self.rx = 0
        self.rx_rejected = 0  # malformed, bad MIC, replayed, undecodable
        self.rx_other = 0  # frames for other nodes or uplinks heard
        self.rx_replayed = 0
        self.app_faults = 0
        self._exc_open = False  # EVENT app_exception raised and not cleared yet
        self.cfg_rejected = 0
        # The node's calendar (SPEC §5 "Calendars"): [the stored calendar: its 4-byte hash then the
        # calendar (firmware/calendar.py reads it), or None; the fragments of one arriving]. One
        # attribute, named "schedule": a name MicroPython's firmware has already, since on the
        # node every new name costs heap (the qstr pool, bench/README.md); likewise the HAL key
        # "calendar.bin" (a string over 10 characters is not interned) holds the same bytes.
        self.schedule = [None, []]  # type: list
        self.last_error = None
        self.on_event = None  # optional hook(severity, EVENT body CBOR): BLE keeps the last alarms

    # -- facade for the app (firmware/README.md) -------------------------------

    def time(self):
        return self.hal.time()

    def event(self, code, severity, value=0, active=1, zone=0):
        body = {
            _E_CODE: code,
            _E_SEVERITY: severity,
            _E_VALUE: _clamp(int(value), _I32_MIN, _I32_MAX),
            _E_ACTIVE: active,
        }
        t = self.hal.time()
        if t is not None and 0 < t <= 0xFFFFFFFF:  # a clock gone wrong must not stop an alarm
            body[_E_TIME] = t
        if zone:
            body[_E_ZONE] = zone
        alarm = severity >= _SEV_ALARM
        key = None
        if code == _EV_APP_EXCEPTION:
            key = "app_exception"  # a crash loop updates one queued event, not many
        data = m.encode(_EVENT, body)
        if self.on_event is not None:
            self.on_event(severity, data)
        self.queue.put(
            _EVENT, data, uplink.PRIO_ALARM if alarm else uplink.PRIO_EVENT, alarm and self.confirm_alarms, key
        )

    # -- helpers --------------------------------------------------------------------

    def _rand(self, n):
        # xorshift32: deterministic per node (the simulator replays runs), no allocation
        x = self._seed
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._seed = x
        return x % n if n > 0 else 0

    def _spawn(self, coro):
        t = asyncio.create_task(coro)
        self._tasks.append(t)
        return t

    # -- boot and main ------------------------------------------------------------------

    async def run(self):
        hal = self.hal
        self._build_app()  # outputs safe first
        if self.watchdog:
            hal.wdt_start(self.wdt_ms)
        self._open_store()
        self._seed ^= self.store.peek_uplink() & 0xFFFFFFFF
        if self.store.opened:
            self._apply_saved_settings()
        try:
            data = hal.load("calendar.bin")
            if data is not None:
                import hashlib

                if hashlib.sha256(data[4:]).digest()[:4] == data[:4]:  # checked when it came; flash can rot
                    self.schedule[0] = data
        except Exception as e:  # unreadable: the node's own profile and schedule, and the gateway resends
            self.last_error = repr(e)
        self._hello()
        cal = self.schedule[0]
        if cal is not None:  # EVENT calendar: its hash, a signed 32-bit int (SPEC §5 "Calendars")
            v = int.from_bytes(cal[:4], "big")
            self.event(_EV_CALENDAR, _SEV_INFO, v - 0x100000000 if v > _I32_MAX else v)
        if hal.reset_cause() == _RST_WATCHDOG:
            self.event(_EV_WATCHDOG_RESET, _SEV_WARNING)
        if self.store.faults or not self.store.opened:
            sev = _SEV_WARNING if self.store.opened else _SEV_ALARM
            self.event(_EV_STORAGE_FAULT, sev, self.store.faults)
        self._spawn(self._sender())
        self._spawn(self._supervise())
        self._spawn(self._periodic(False))
        self._spawn(self._periodic(True))
        if self.radio.continuous or getattr(self.app, "group", None) is not None:
            # a wire hears at any time; a lamp in a multicast group listens between its uplinks
            # (LoRa class C, SPEC §5 "Groups"), its receive windows unchanged
            self._spawn(self._receiver())
        try:
            await self._housekeeping()
        finally:
            # a reset (or the simulator stopping the node) ends every task of
            # the node, as a board reset would
            for t in self._tasks:
                t.cancel()
            self._app_down.set()

    def _hello(self):
        body = {
            _H_FIRMWARE: VERSION,
            _H_KIND: self.kind,
            _H_CAPS: getattr(self.app_class, "CAPS", 0) & 0xFFFF,
            _H_CONFIG_HASH: self.cfg["hash"],
            _H_RESET: self.hal.reset_cause(),
        }
        if "bundle" in self.cfg:  # the release's bundle id (SPEC §13), set by main.py
            body[_H_BUNDLE] = self.cfg["bundle"]
        self.queue.put(_HELLO, m.encode(_HELLO, body), uplink.PRIO_HELLO)

    def _open_store(self):
        """Open the store; until it opens the node is stopped safely (SPEC §4).

        No counter can be trusted, so nothing is sent and no downlink is
        accepted; the app does not run (its outputs at their fail-safe: lamp
        fully on, valves closed). EV_STORAGE_FAULT (an alarm) is queued and
        goes out first once the store opens. A transient error (an I/O error
        while reading) is retried by the supervisor and the sender; NeedsRekey
        stays until the node is re-keyed, and says so on the console.
        """
        store = self.store
        try:
            store.open()
        except StorageError as e:
            self.last_error = repr(e)
            self._failsafe()
            if isinstance(e, NeedsRekey) and not self._rekey_said:
                self._rekey_said = True
                print("lumeau: cannot start: needs re-key:", e)  # lumeau node flash shows it
            return False
        path = self.cfg.get("path")
        if store.fresh and store.key_id is not None and path:
            try:  # this key's state is on flash now: the file must not let another board start at 0
                from firmware import config

                config.clear_fresh(path)
            except Exception as e:
                self.last_error = repr(e)
        return True

    async def _housekeeping(self):
        hal = self.hal
        # Feeding needs wdt/2. Without a watchdog (a simulator's choice) only
        # the totals flush and a pending reboot are left: wait for the hourly
        # flush (the store's policy) or a reboot command, then look every
        # _REBOOT_POLL_MS. (A plain Event wait: a cancel always ends it.)
        wake = None
        if not self.watchdog:
            wake = self._wake = asyncio.Event()
            self._spawn(self._flush_clock(wake))
        while True:
            alive = True
            for t in self._tasks:
                if t.done():
                    alive = False
            if alive and self.watchdog:
                hal.wdt_feed()
            try:
                self.store.flush()
            except StorageError as e:
                self.last_error = repr(e)
            if self._reboot_at is not None and (hal.ticks_ms() >= self._reboot_at or not self.queue.has(_CMD_ACK)):
                self._reboot()
            if wake is None:
                await hal.sleep_ms(self.wdt_ms // 2)
            elif self._reboot_at is not None:
                await hal.sleep_ms(_REBOOT_POLL_MS)
            else:
                await wake.wait()
                wake.clear()

    async def _flush_clock(self, wake):
        while True:
            await self.hal.sleep_ms(TOTALS_FLUSH_MS)
            wake.set()

    def _reboot(self):
        self._failsafe()
        try:
            self.store.flush(True)
        except StorageError:
            pass
        self.hal.reset()

    # -- the app -----------------------------------------------------------------------

    def _build_app(self):
        if self.app_class is None:
            return
        try:
            self.app = self.app_class(self.cfg, self.hal, self)
        except Exception as e:
            self.app = None
            self._app_fault(e)

    def _failsafe(self):
        app = self.app
        if app is not None:
            try:
                app.failsafe()
                return
            except Exception as e:
                self.last_error = repr(e)
        self._last_resort()

    def _last_resort(self):
        # The app could not make itself safe: the runtime knows the channels
        # (firmware/hal.py) and what safe means for each kind.
        hal = self.hal
        try:
            if self.kind == _KIND_LIGHTING:
                hal.pwm_write("lamp", 1000)  # a street is never left dark
            elif self.kind == _KIND_IRRIGATION:
                for name in ("master", "zone1", "zone2", "zone3", "zone4"):
                    hal.pin_write(name, 0)
        except Exception as e:
            self.last_error = repr(e)

    def _app_fault(self, err):
        self.app_faults += 1
        self.last_error = repr(err)
        try:
            import sys

            sys.print_exception(err)  # on the console (lumeau node flash shows it); CPython has none
        except Exception:
            pass
        self._failsafe()
        self.app = None
        self._app_down.set()
        # EVENT value: the index of the exception's type name in protocol.messages.APP_EXC_TYPES
        # (0: not there) << 16 | restarts (SPEC §5). One string: a tuple of the classes costs
        # far more code heap (bench/firmware_memory.py)
        try:
            t = (
                (
                    "Exception ImportError KeyError ValueError TypeError AttributeError OSError MemoryError "
                    "ZeroDivisionError IndexError NameError RuntimeError"
                )
                .split()
                .index(type(err).__name__)
            )
        except Exception:
            t = 0
        self._exc_open = True
        try:
            self.event(_EV_APP_EXCEPTION, _SEV_ALARM, t << 16 | _clamp(self.app_faults, 1, 0xFFFF))
        except Exception:
            pass

    async def _app_main(self, app):
        try:
            await app.run()
        except Exception as e:
            err = e
        else:
            err = RuntimeError("app run() returned")
        if self.app is app:
            self._app_fault(err)

    async def _supervise(self):
        hal = self.hal
        backoff = _APP_BACKOFF_MIN_MS
        retry = _STORE_RETRY_MS
        while not self.store.opened:  # stopped safely until the store opens (SPEC §4)
            await hal.sleep_ms(retry)
            retry = _clamp(retry * 2, _STORE_RETRY_MS, _STORE_RETRY_MAX_MS)
            if self.store.opened or self._open_store():
                self._apply_saved_settings()
        try:
            while True:
                if self.app is None and self.app_class is not None:
                    self._build_app()
                    if self.app is not None:
                        self._apply_saved_settings(True)
                if self.app is None:
                    if self.app_class is None:
                        while True:  # no app: nothing to supervise, ever
                            await hal.sleep_ms(_IDLE_MS)
                    await hal.sleep_ms(backoff)
                    backoff = min(backoff * 2, _APP_BACKOFF_MAX_MS)
                    continue
                self._app_down.clear()
                started = hal.ticks_ms()
                task = self._app_task = asyncio.create_task(self._app_main(self.app))
                await self._app_down.wait()
                if not task.done():
                    task.cancel()
                if hal.ticks_ms() - started >= _APP_HEALTHY_MS:
                    backoff = _APP_BACKOFF_MIN_MS
                await hal.sleep_ms(backoff)
                backoff = min(backoff * 2, _APP_BACKOFF_MAX_MS)
        finally:
            if self._app_task is not None:
                self._app_task.cancel()

    # -- periodic uplinks -------------------------------------------------------------------

    async def _periodic(self, status):
        while True:
            interval = (self.status_s if status else self.report_s) * 1000
            wait = interval + self._rand(interval // _REPORT_JITTER + 1) - interval // (2 * _REPORT_JITTER)
            self._intervals.clear()
            if await self._wait_changed(wait):
                continue  # the interval changed: start over with the new one
            if status:
                self._status()
            else:
                self._report()

    async def _wait_changed(self, ms):
        # aio.wait_ms on the intervals event, in waits of at most _IDLE_MS like
        # every idle task: a wait of hours (STATUS) otherwise kept the timers of
        # the other tasks' waits meanwhile in the heap (tests/micropython/mp_runtime.py)
        hal = self.hal
        due = hal.ticks_ms() + ms
        while True:
            left = due - hal.ticks_ms()
            if left <= 0:
                return False
            if await aio.wait_ms(hal, self._intervals, _clamp(left, 1, _IDLE_MS)):
                return True

    def _report(self):
        app = self.app
        if app is None:
            return
        try:
            mtype, body = app.report()
            data = m.encode(mtype, body)
        except Exception as e:
            self._app_fault(e)
            return
        self.queue.put(mtype, data, uplink.PRIO_REPORT, False, "report")
        if self._exc_open:  # a report after the app failed: it runs cleanly again, the alarm clears
            self._exc_open = False
            self.event(_EV_APP_EXCEPTION, _SEV_ALARM, 0, 0)

    def _status(self):
        self.queue.put(_STATUS, m.encode(_STATUS, self.status_body()), uplink.PRIO_STATUS, False, "status")

    def status_body(self):
        """The STATUS body of now (also read over BLE by a technician's tool)."""
        hal = self.hal
        t = hal.time()
        body = {
            _S_UPTIME: min(hal.ticks_ms() // 1000, 0xFFFFFFFF),
            _S_TIME: t if t is not None and 0 <= t <= 0xFFFFFFFF else 0,
            _S_HEAP: hal.free_heap() // 16,
            _S_QUEUE: min(len(self.queue), 255),
        }
        rssi = self.last_rssi
        snr = self.last_snr
        if rssi is not None and snr is not None:
            body[_S_RSSI] = _clamp(int(rssi), -200, 0)
            body[_S_SNR] = _clamp(int(snr), -80, 60)
        try:
            supply = hal.adc_read_mv("supply")
        except Exception:  # a board without a supply divider
            supply = 0
        if supply:
            body[_S_SUPPLY] = _clamp(supply, 0, 0xFFFF)
        app = self.app
        if app is not None:
            try:
                body[_S_ALARMS] = _clamp(app.open_alarms(), 0, 255)
            except Exception as e:
                self._app_fault(e)
        return body

    # -- sending ---------------------------------------------------------------------------------

    async def _sender(self):
        hal = self.hal
        q = self.queue
        await hal.sleep_ms(self._rand(self.hello_jitter_ms + 1))
        while True:
            now = hal.ticks_ms()
            q.changed.clear()
            it = None if self.exhausted else q.next(now)
            if it is None:
                due = q.next_due()
                wait = _IDLE_MS if due is None or self.exhausted else _clamp(due - now, 1, _IDLE_MS)
                await aio.wait_ms(hal, q.changed, wait)
                continue
            band = self.radio.band
            if band is not None:
                w = self.duty.wait_ms(now, band)
                if w:
                    await hal.sleep_ms(w)
                    continue  # pick again: something more urgent may have come
            await self._transmit(it)

    async def _transmit(self, it):
        hal = self.hal
        q = self.queue
        n = _HEADER_LEN + len(it.body) + _MIC_LEN
        if n > self.radio.max_frame:
            q.drop(it)  # never sendable at this data rate
            self.tx_oversize += 1
            return
        try:
            if not self.store.opened and not self._open_store():
                raise StorageError("store not opened")
            counter = self.store.next_uplink()
        except CounterExhausted as e:
            self.exhausted = True
            self.last_error = repr(e)
            return
        except StorageError as e:
            # not the item's fault: hold everything (the order stays, HELLO
            # first) and try the flash again later
            if self.store.opened:  # else _open_store said why
                self.last_error = repr(e)
            self.tx_failed += 1
            self._store_retry_ms = _clamp(self._store_retry_ms * 2, _STORE_RETRY_MS, _STORE_RETRY_MAX_MS)
            await hal.sleep_ms(self._store_retry_ms)
            return
        self._store_retry_ms = 0
        raw = fr.seal(self.keys, it.mtype, counter, it.body, self.encrypt)
        start = hal.ticks_ms()
        try:
            await self.radio.send(raw)
        except Exception as e:  # a radio driver error must not stop the node
            self.last_error = repr(e)
            self.tx_failed += 1
            q.failed(it, start)
            return
        band = self.radio.band
        if band is not None:
            self.duty.record(start, self.radio.airtime_ms(n), band)
        self.tx += 1
        self._up_last = counter
        t = hal.ticks_ms()
        self._up_ticks[counter % _TIME_UPLINKS] = t
        q.sent(it, counter, t)
        if not self.radio.continuous:
            await self._rx_window()
            p = self._adr_prev
            if p is not None:
                self._adr_left -= 1
                if self._adr_left <= 0:  # nothing heard since the change: back to what worked (saved)
                    self._adr_prev = None
                    self.radio.configure(sf=p[0], tx_power=p[1])

    async def _rx_window(self):
        radio = self.radio
        await self.hal.sleep_ms(RX1_DELAY_MS - _RX_EARLY_MS)
        window = getattr(radio, "rx_window_ms", None)
        window = window() if window is not None else 2 * _RX_EARLY_MS + 100
        left = 0
        for _ in range(_DOWNLINK_BURST_MAX):
            r = await radio.recv(window)
            if r is None:
                return
            more = self._downlink(r[0], r[1], r[2])
            left = more if more is not None else left - 1
            if left <= 0:
                return

    async def _receiver(self):
        while True:
            r = await self.radio.recv(_WIRE_LISTEN_MS)
            if r is not None:
                self._downlink(r[0], r[1], r[2])

    # -- downlinks ---------------------------------------------------------------------------------

    def _downlink(self, raw, rssi, snr):
        """Handle one received frame.

        Returns what an ACK says is still queued for this node (keep
        listening for that many), or None for any other frame.
        """
        try:
            return self._downlink_checked(raw, rssi, snr)
        except Exception as e:  # whatever arrives, the node keeps running
            self.rx_rejected += 1
            self.last_error = repr(e)
            return None

    def _downlink_checked(self, raw, rssi, snr):
        try:
            f = fr.parse(raw)
        except fr.FrameError:
            self.rx_rejected += 1
            return None
        if f.mtype == _GROUP_COMMAND or f.mtype == _GROUP_FRAG:
            # SPEC §5 "Groups": a frame for one of this lamp's groups (app.group: firmware/group.py)
            # whose MIC verifies under the group's key and whose counter is at or above the group's
            # next (written before acting) runs once; its CMD_ACK goes after a random 0..ACK_SPREAD_S
            # s, so a street does not answer at once. A frame of another group is only counted.
            g = getattr(self.app, "group", None)
            body = g.check(f) if g is not None else None
            if body is None:
                self.rx_other += 1
                return None
            if f.mtype == _GROUP_FRAG:  # an update's fragment: firmware/fuota.py, loaded by name for a session only
                if not body:
                    self.rx_rejected += 1
                    return None
                self.rx += 1
                return __import__("firmware.fuota", None, None, ("rx",)).rx(self, body)
            try:
                msg = m.decode(_COMMAND, body) if body else None
            except m.MessageError:
                msg = None
            if msg is None:
                self.rx_rejected += 1
                return None
            self.rx += 1
            res, value = self.execute(msg[_C_OP], msg.get(_C_ARGS, ()), msg.get(_C_EXPIRES, 0))
            body = {_CA_ID: msg[_C_ID], _CA_RESULT: res}
            if value:
                body[_CA_VALUE] = _clamp(int(value), _I32_MIN, _I32_MAX)
            it = self.queue.put(_CMD_ACK, m.encode(_CMD_ACK, body), uplink.PRIO_ACK)
            if it is not None:
                it.due = self.hal.ticks_ms() + self._rand(_ACK_SPREAD_S * 1000)
            return None
        if f.node_id != self.node_id or not f.downlink:
            self.rx_other += 1
            return None
        try:
            body = fr.verify(self.keys, f)
        except (fr.FrameError, NotImplementedError):
            self.rx_rejected += 1
            return None
        store = self.store
        if not store.opened:  # no window to check against: refuse everything (SPEC §4)
            self.rx_rejected += 1
            return None
        c = f.counter
        # SPEC §4: this link carries the gateway's half only (a tool's frames come over BLE), and the
        # gateway is its one sender, in order: anything at or below the top is late or replayed
        if c >= _TOOL_COUNTER_BASE or c <= store.window.top:
            self.rx_replayed += 1
            self.rx_rejected += 1
            return None
        t = f.mtype
        try:
            msg = m.decode(t, body) if t != _FRAG else None
        except m.MessageError:
            msg = None
        cid = 0
        if msg is not None and t == _COMMAND and not store.stale_command(msg[_C_ID]):
            cid = msg[_C_ID]  # executed below: the new high-water mark, persisted with the window
        try:
            store.accept_downlink(c, cid)  # persisted before acting (SPEC §4)
        except StorageError as e:
            self.last_error = repr(e)  # not acted on; the sender retries it
            self.rx_rejected += 1
            return None
        self.rx += 1
        self.last_rssi = rssi
        self.last_snr = snr
        r = self.radio
        if self._adr_prev is not None:  # heard after a change: the new settings work, keep them
            self._adr_prev = None
            self._save_radio(r.sf, r.tx_power)
        if t == _FRAG:  # counted in rx above; a refused fragment raises: rx_rejected (_downlink)
            return __import__("firmware.fuota", None, None, ("rx",)).rx(self, body)
        if msg is None:
            self.rx_rejected += 1
            return None
        if t == _COMMAND:
            self._command(msg, cid)
        elif t == _CONFIG or t == _TIME:
            res = self.fresh(t, msg, True)
            if res:
                self.rx_rejected += 1
                self.last_error = "downlink %d refused: %d" % (t, res)
            elif t == _CONFIG:
                was = None if r.continuous else (r.sf, r.tx_power)
                self.apply_settings(msg[_CF_SETTINGS])
                data = msg.get(_CF_CALENDAR)
                if data is not None:
                    # A calendar fragment (SPEC §5 "Calendars"): a whole, valid calendar is stored,
                    # applied and reported by a HELLO; anything wrong is refused (cfg_rejected) and
                    # changes nothing stored. The reassembly and checks (protocol/nodecal.py) load
                    # for this only, named by a string, and inline here: a module, method or
                    # function name in this file would cost heap at boot (MicroPython's qstrs).
                    cal = self.schedule
                    try:
                        if cal[0] is not None and len(data) > 6 and data[0] == 0 and data[2:6] == cal[0][:4]:
                            cal[1] = []  # the one it holds: say so (below), and the gateway stops sending
                            data = cal[0]
                        else:
                            data = __import__("protocol.nodecal", None, None, ("join",)).join(cal[1], data, self.kind)
                    except ValueError as e:
                        data = None
                        self.cfg_rejected += 1
                        self.last_error = repr(e)
                    finally:
                        unload("protocol.nodecal")
                    if data is not None:
                        try:
                            if data is not cal[0]:  # a new one: stored, then the app replans with it
                                self.hal.save("calendar.bin", data)
                                cal[0] = data
                                self._configure_app({})
                            # EVENT calendar: its hash, a signed 32-bit int (SPEC §5 "Calendars")
                            v = int.from_bytes(data[:4], "big")
                            self.event(_EV_CALENDAR, _SEV_INFO, v - 0x100000000 if v > _I32_MAX else v)
                        except OSError as e:  # not stored: not applied either; the gateway sends it again
                            self.last_error = repr(e)
                if was is not None and was != (r.sf, r.tx_power):  # ADR: on trial until a downlink is heard
                    self._adr_prev = was
                    self._adr_left = _ADR_FALLBACK + 1  # the window it came in counts down too
                    self._save_radio(was[0], was[1])  # a reboot meanwhile comes back to what worked
            else:
                self.hal.set_time(msg[_T_UNIX], msg.get(_T_MS, 0))
        elif t == _ACK:
            self.queue.ack(msg[_A_COUNTER])
            return msg.get(_A_QUEUED, 0)
        return None

    def fresh(self, mtype, msg, air):
        """0 when a checked CONFIG or TIME may be applied now, else the CMD_ACK result saying why not.

        SPEC §4, "Freshness": a CONFIG past its expiry is RES_EXPIRED (a node
        without a clock cannot tell and takes it: the counter rule is its
        guard then). A TIME that answers an uplink (T_ANSWERS) must name one of
        the last TIME_UPLINKS this node sent, at most TIME_SLACK_S ago
        (RES_EXPIRED otherwise); it may then set the clock anywhere: the
        gateway is the time authority, and a held-back copy is late by
        TIME_SLACK_S at most. A TIME that answers nothing comes only from a
        commissioning tool (`air` False; on the air RES_REFUSED), and never
        moves a set clock back by more than TIME_SLACK_S (RES_REFUSED).
        """
        now = self.hal.time()
        if mtype == _CONFIG:
            exp = msg.get(_CF_EXPIRES, 0)
            return _RES_EXPIRED if exp and now is not None and now > exp else 0
        c = msg.get(_T_ANSWERS)
        if c is not None:
            last = self._up_last
            if 0 <= last - c < _TIME_UPLINKS:
                if self.hal.ticks_ms() - self._up_ticks[c % _TIME_UPLINKS] <= _TIME_SLACK_S * 1000:
                    return 0
            return _RES_EXPIRED
        if air or (now is not None and msg[_T_UNIX] < now - _TIME_SLACK_S):
            return _RES_REFUSED
        return 0

    def _command(self, msg, fresh_id):
        cid = msg[_C_ID]
        prev = self.store.command_result(cid)
        if prev is not None:
            res, value = prev  # a repeat: answer again, do not execute again
        elif cid != fresh_id:
            res, value = _RES_EXPIRED, 0  # stale: at or below the mark, its result forgotten: never run again
        else:
            had = self.radio.continuous or getattr(self.app, "group", None) is not None
            res, value = self.execute(msg[_C_OP], msg.get(_C_ARGS, ()), msg.get(_C_EXPIRES, 0))
            if not had and getattr(self.app, "group", None) is not None:
                self._spawn(self._receiver())  # joined a multicast group: listen from now on (as in run)
            try:
                self.store.record_command(cid, res, value)
            except StorageError as e:
                self.last_error = repr(e)
        body = {_CA_ID: cid, _CA_RESULT: res}
        if value:
            body[_CA_VALUE] = _clamp(int(value), _I32_MIN, _I32_MAX)
        self.queue.put(_CMD_ACK, m.encode(_CMD_ACK, body), uplink.PRIO_ACK)

    def execute(self, op, args, expires):
        now = self.hal.time()
        if expires and now is not None and now > expires:
            return _RES_EXPIRED, 0
        if op == _OP_SET_INTERVAL:
            if len(args) != 1 or not _REPORT_MIN_S <= args[0] <= _REPORT_MAX_S:
                return _RES_BAD_ARGS, 0
            self._set_runtime(_CFG_REPORT_INTERVAL, args[0], True)
            return _RES_OK, args[0]
        if op == _OP_FRAG_STATUS:  # an update's session (firmware/fuota.py): what is still missing
            return __import__("firmware.fuota", None, None, ("rx",)).rx(self, list(args))
        if op == _OP_REBOOT:
            self._reboot_at = self.hal.ticks_ms() + _REBOOT_GRACE_MS
            if not self.watchdog:
                self._wake.set()
            return _RES_OK, 0
        app = self.app
        if app is None:
            return _RES_BUSY, 0  # the app is restarting after a fault
        try:
            res, value = app.command(op, list(args))
        except Exception as e:
            self._app_fault(e)
            return _RES_FAILED, 0
        return res, value

    # -- configuration over the air -------------------------------------------------------------------

    def _set_runtime(self, key, v, persist):
        """Apply one runtime CONFIG key; False if it is out of range."""
        if key == _CFG_REPORT_INTERVAL:
            if not _REPORT_MIN_S <= v <= _REPORT_MAX_S:
                return False
            self.report_s = v
            self._intervals.set()
        elif key == _CFG_STATUS_INTERVAL:
            if not _STATUS_MIN_S <= v <= _STATUS_MAX_S:
                return False
            self.status_s = v
            self._intervals.set()
        elif key == _CFG_TX_POWER:
            if not _TX_POWER_MIN <= v <= _TX_POWER_MAX:
                return False
            self.radio.configure(tx_power=v)
        elif key == _CFG_SF:
            if not _SF_MIN <= v <= _SF_MAX:
                return False
            self.radio.configure(sf=v)
        elif key == _CFG_CONFIRM_ALARMS:
            if v > 1:
                return False
            self.confirm_alarms = bool(v)
        else:
            return False
        if persist:
            try:
                self.store.set_setting(key, v)
            except StorageError as e:
                self.last_error = repr(e)
        return True

    def _save_radio(self, sf, tx_power):
        try:
            self.store.set_setting(_CFG_SF, sf)
            self.store.set_setting(_CFG_TX_POWER, tx_power)
        except StorageError as e:
            self.last_error = repr(e)

    def apply_settings(self, settings):
        """Apply and persist a CONFIG map; returns the bitmask of the runtime keys refused."""
        app_settings = {}
        refused = 0
        for key in settings:
            v = settings[key]
            if key in (_CFG_LAMP_POWER, _CFG_MAX_RUN):  # the app's CONFIG keys; the rest are the runtime's
                app_settings[key] = v
            elif not self._set_runtime(key, v, True):
                self.cfg_rejected += 1
                refused |= 1 << key
        if app_settings:
            for key in app_settings:
                try:
                    self.store.set_setting(key, app_settings[key])
                except StorageError as e:
                    self.last_error = repr(e)
            self._configure_app(app_settings)
        return refused

    def _configure_app(self, settings):
        app = self.app
        if app is None:
            return
        try:
            app.configure(settings)
        except Exception as e:
            self._app_fault(e)

    def _apply_saved_settings(self, app_only=False):
        app_settings = {}
        for key, v in self.store.settings():
            if key in (_CFG_LAMP_POWER, _CFG_MAX_RUN):  # the app's CONFIG keys; the rest are the runtime's
                app_settings[key] = v
            elif not app_only:
                self._set_runtime(key, v, False)
        if app_settings:
            self._configure_app(app_settings)

    def __repr__(self):
        return "Node(0x%08x, kind %d, tx %d, rx %d)" % (self.node_id, self.kind, self.tx, self.rx)
