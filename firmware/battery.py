# Battery power mode for the irrigation node (config `irrigation.battery` = 1): the node
# deep-sleeps between events, as a LoRaWAN class A valve controller on one Li-SOCl2 cell does.
# Loaded only on such a node (firmware/main.py): a mains node never pays for it.
#
# A deep sleep is a reset: the board boots again from main.py at every wake. What must
# survive (the open valve and its deadlines, the queued runs, the schedule entries done
# today, faults, when the next report and STATUS are due, the uplinks still queued) goes to
# RTC memory (`hal.rtc_save`, `hal.rtc_load`) just before the sleep; counters, totals and the
# program stay on flash as on a mains node (firmware/store.py). A record is trusted only after
# a deep-sleep reset: after any other reset the node boots as a mains node does (HELLO, every
# valve closed).
#
# An awake period: the app steps every tick, due reports / STATUS are queued, the sender
# sends everything due, each uplink followed by its receive window (the only time the node
# hears downlinks: class A, SPEC §6 "Battery nodes"). The node sleeps once nothing is due,
# the radio is idle and the app does not need to watch (see BatteryIrrigation.awake). It
# wakes on its timer (the earliest of: next report, STATUS, schedule start, run end, the
# retry of a queued uplink, the hourly re-check of a known leak), on a flow pulse (a leak
# while closed) and on a rain sensor change.
#
# Safety: the valves are latching (or held: then the node never sleeps with one open, since
# a held valve closes by itself when its current stops... and so would drain the cell: a
# held valve is the wrong part for this mode, `lumeau node provision` says so). With a flow
# meter the node stays awake while a valve is open, so burst, excess and no-flow keep their
# mains timings. Without one it sleeps with the valve open, always with a wake before the
# run's end and _MARGIN_MS before the valve's maximum run time (sleep_ms below); a valve
# whose deadline cannot be met, or a node without wall time, closes every valve first.
# After a reset that is not a deep-sleep wake every valve is closed (pulses), as at boot.

import asyncio

from protocol import nodecbor as cbor

from firmware.irrigation import Irrigation
from firmware.runtime import Node

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_RST_DEEPSLEEP = const(3)
_IF_LEAK = const(0x01)
_DAY_MIN = const(1440)
_CMD_ACK = const(6)
_FLOW_WINDOW = const(3)  # firmware/irrigation.py's

_RTC_VERSION = const(1)
_MARGIN_MS = const(30000)  # wake this long before a valve's maximum run time at the latest
_SLEEP_MIN_MS = const(1000)
_SLEEP_MAX_MS = const(21600000)  # 6 h: a wake at least this often, whatever is due
_LEAK_RECHECK_MS = const(3600000)  # a known leak: flow wake off, re-checked hourly
_FLOW_HOLDOFF_S = const(3600)  # a flow wake that found no leak: no flow wake for an hour (a drip)
_WATCH_MS = const(65000)  # a wake that watches the flow: LEAK_MS (irrigation.py) and a few ticks
_FILL_DONE = const(60000)
_WAKE_FLOW = const(1)
_WAKE_RAIN = const(2)


def _ticks_left(due, now):
    return due - now if due > now else 0


class BatteryIrrigation(Irrigation):
    """The irrigation app on a cell: latching valves and state kept across deep sleeps."""

    def __init__(self, cfg, hal, node):
        rec = getattr(node, "rtc", None)
        self._resume = rec is not None and rec[5] is not None  # the valves are as the record says
        self._latch_ms = (cfg.get("irrigation") or {}).get("latch_ms", 0)
        Irrigation.__init__(self, cfg, hal, node)
        self._resume = False
        self._flow_wake_t = 0  # wall s of the last wake by a flow pulse
        self._check_t = 0  # wall s of the last re-check of a known leak
        self._leak_check = False
        self._awake_ticks = 0
        if rec is not None and rec[5] is not None:
            self._restore(rec[5], node.elapsed_ms)
            rec[5] = None  # an app rebuilt after a fault starts closed, as at boot

    def _drive(self, name, v):
        ms = self._latch_ms
        if ms:
            self.hal.pulse_out(name if v else name + "_close", ms)  # a latching coil: no held current
        else:
            self.hal.pin_write(name, v)

    def failsafe(self):
        if self._resume:
            return  # a deep-sleep wake: the latched valves hold the state restored below
        Irrigation.failsafe(self)

    def step(self):
        self._awake_ticks += 1
        Irrigation.step(self)

    # -- across a deep sleep ----------------------------------------------------------------

    def state(self):
        """What RTC memory keeps of the app (a list, CBOR-encoded with the node's record)."""
        now = self.hal.ticks_ms()
        ran = []
        for i in range(self._nzones):
            ran.append(now - self._since[i] if self._open >> i & 1 else 0)
        flat = []
        for z, mins in self.queue:
            flat.append(z)
            flat.append(mins)
        return [
            self._zone,
            1 if self._manual else 0,
            self._open,
            _ticks_left(self._end, now) if self._zone else 0,
            ran,
            flat,
            self._done,
            self._last_min,
            self.faults,
            self._noflow,
            self._maxrun,
            1 if self._fs_raised else 0,
            self._vol_p,
            now - self._closed_at if not self._open else 0,
            self._flow_wake_t,
            self.max_run_min,
            self._check_t,
        ]

    def _restore(self, st, elapsed):
        now = self.hal.ticks_ms()
        self._zone, manual, self._open, end_left, ran, flat = st[0], st[1], st[2], st[3], st[4], st[5]
        self._manual = manual == 1
        self._end = now + end_left - elapsed
        for i in range(self._nzones):
            if self._open >> i & 1:
                self._since[i] = now - ran[i] - elapsed  # the hard maximum counts the sleep too
        self._start = now - _FILL_DONE  # the pipes filled long ago: flow checks from the first tick
        self.queue = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        self._done = st[6]
        self._last_min = st[7]
        self.faults, self._noflow, self._maxrun = st[8], st[9], st[10]
        self._fs_raised = st[11] == 1
        self._vol_p = st[12]
        self._closed_at = now - st[13] - elapsed
        self._flow_wake_t = st[14]
        self.max_run_min = st[15]
        self._check_t = st[16]
        t = self.hal.time()
        if self.hal.wake_reason() == _WAKE_FLOW:
            self._flow_wake_t = t if t is not None else 0
        if self.faults & _IF_LEAK and (t is None or t - self._check_t >= _LEAK_RECHECK_MS // 1000 - 60):
            self._leak_check = True  # the hourly look at a known leak: does it still flow?
            self._check_t = t if t is not None else 0

    # -- what the node asks before a sleep ------------------------------------------------------

    def awake(self, now):
        """True while the app must stay awake (it watches something), else the node may sleep."""
        if self.queue or self._awake_ticks <= _FLOW_WINDOW and self.hal.wake_reason() == _WAKE_FLOW:
            return True
        if self._open:
            if self.s["flow_meter"] or not self._latch_ms:
                return True  # burst / excess / no flow keep their mains timings; a held valve needs power
            return self._deadline(now) - now <= _MARGIN_MS
        if self.s["flow_meter"] and self._awake_ticks * self.s["tick_ms"] < _WATCH_MS:
            if self.faults & _IF_LEAK:
                return self._leak_check  # the hourly re-check: LEAK_MS without flow clears it
            return self.flow > 0 or self._leak_ms > 0  # a leak being measured; a drip waits (holdoff)
        return False

    def _deadline(self, now):
        """ticks_ms by which the open run must be looked at: its end, or the maximum run time's margin."""
        d = self._end if self._zone else now
        limit = self.max_run_min * 60000
        for i in range(self._nzones):
            if self._open >> i & 1:
                m = self._since[i] + limit - _MARGIN_MS
                if m < d:
                    d = m
        return d

    def sleep_ms(self, ms, t):
        """The sleep `ms` cut to the app's next event; every valve closed first if it cannot be safe."""
        now = self.hal.ticks_ms()
        if self._open:
            if t is None or self._deadline(now) - now < _SLEEP_MIN_MS:
                self._stop_all()  # no clock, or a deadline too close to sleep through: closed is safe
            else:
                ms = min(ms, self._deadline(now) - now)
        if self.faults & _IF_LEAK:
            ms = min(ms, _LEAK_RECHECK_MS)
        if t is not None and self.schedule:
            lt = t + self.s["utc_offset_min"] * 60
            day = lt // 86400
            minute = lt % 86400 // 60
            best = 8 * _DAY_MIN
            for _z, mask, start, _m in self.schedule:
                for d in range(8):
                    wd = (day + d + 3) % 7
                    ahead = d * _DAY_MIN + start - minute
                    if mask >> wd & 1 and (ahead > 0 or ahead == 0 and self._last_min != t // 60):
                        if ahead < best:
                            best = ahead
                        break
            # wake within the start minute (the minute's first seconds are past when ahead == 0)
            ms = min(ms, (best * 60 - lt % 60) * 1000 + 1000 if best else 1000)
        return ms

    def wake_on_flow(self, t):
        """Arm the flow wake: a flow meter, no known leak, and no flow wake in the last hour."""
        if not self.s["flow_meter"] or self.faults & _IF_LEAK or self._open:
            return False
        return t is None or not self._flow_wake_t or t - self._flow_wake_t >= _FLOW_HOLDOFF_S


class BatteryNode(Node):
    """The runtime of a node that deep-sleeps: one awake period per boot (see the header)."""

    def __init__(self, cfg, hal, radio, app_class=None, hello_jitter_ms=10000, watchdog=True):
        Node.__init__(self, cfg, hal, radio, app_class, hello_jitter_ms, watchdog)
        self.rtc = None
        self.elapsed_ms = 0
        if hal.reset_cause() == _RST_DEEPSLEEP:
            try:
                rec = cbor.loads(hal.rtc_load())
                if rec[0] == _RTC_VERSION:
                    self.rtc = rec
            except Exception:
                pass  # none or unreadable: a boot like any other (valves closed, HELLO)
        self._busy = False
        self._next_rep = self._next_sta = None  # wall s
        self._asked = self._rain_said = False
        self._latch_ms = (cfg.get("irrigation") or {}).get("latch_ms", 0)

    async def _transmit(self, it):
        self._busy = True  # the send and its receive window: never cut by a sleep
        try:
            await Node._transmit(self, it)
        finally:
            self._busy = False

    def _last_resort(self):
        Node._last_resort(self)
        if self._latch_ms:
            for name in ("master", "zone1", "zone2", "zone3", "zone4"):
                try:
                    self.hal.pulse_out(name + "_close", self._latch_ms)
                except Exception:
                    pass  # a channel this board does not have

    def _resume(self):
        rec = self.rtc
        t = self.hal.time()
        # time asleep: from the wall clock (the RTC ran on), else the planned sleep (a timer wake)
        self.elapsed_ms = (t - rec[1]) * 1000 if t is not None and rec[1] else rec[2]
        self._next_rep = rec[3] or None
        self._next_sta = rec[4] or None
        ups = rec[6]
        now = self.hal.ticks_ms()
        for i in range(0, len(ups), 6):
            it = self.queue.put(ups[i], ups[i + 1], ups[i + 2], ups[i + 3] == 1, ups[i + 4] or None)
            if it is not None:
                it.sends = ups[i + 5] >> 24
                it.due = now + max(0, (ups[i + 5] & 0xFFFFFF) * 100 - self.elapsed_ms)

    async def run(self):
        hal = self.hal
        if self.rtc is not None:
            self.hello_jitter_ms = 0  # the sender's first wait: only a real boot spreads HELLOs
            self._resume()
        self._wake = asyncio.Event()
        self._build_app()  # a fresh boot: every valve closed; a wake: the valves as they were
        if self.watchdog:
            hal.wdt_start(self.wdt_ms)
        self._open_store()
        self._seed ^= self.store.peek_uplink() & 0xFFFFFFFF
        if self.store.opened:
            self._apply_saved_settings()
        if self.rtc is None:
            self._hello()
        self._spawn(self._sender())
        self._spawn(self._supervise())
        app = self.app
        tick = app.s["tick_ms"] if app is not None else 1000
        try:
            while True:
                if self.watchdog:
                    hal.wdt_feed()
                self._dues()
                if self._reboot_at is not None and (hal.ticks_ms() >= self._reboot_at or not self.queue.has(_CMD_ACK)):
                    self._reboot()
                await hal.sleep_ms(tick)
                if self._may_sleep():
                    break
            ms, flow, rain = self._plan()
            self._save(ms)
        finally:
            for t in self._tasks:
                t.cancel()
            self._app_down.set()
        hal.deepsleep(ms, flow, rain)

    def _jittered(self, s):
        return s + self._rand(s // 10 + 1) - s // 20

    def _dues(self):
        t = self.hal.time()
        if self._intervals.is_set():  # set_interval or a CONFIG changed them: count from now
            self._intervals.clear()
            self._next_rep = self._next_sta = None
        if t is None:
            if self.rtc is not None and not self._asked:
                self._asked = True
                self._status()  # says "no time": the gateway answers with a TIME (SPEC §4)
            return
        if self._next_rep is None or t >= self._next_rep:
            if self._next_rep is not None:
                self._report()
            self._next_rep = t + self._jittered(self.report_s)
        if self._next_sta is None or t >= self._next_sta:
            if self._next_sta is not None:
                self._status()
            self._next_sta = t + self._jittered(self.status_s)
        app = self.app
        if app is not None and self.rtc is not None and not self._rain_said and self.hal.wake_reason() == _WAKE_RAIN:
            self._rain_said = True
            self._report()  # the rain sensor changed: say so now

    def _may_sleep(self):
        if self._busy or self._reboot_at is not None:
            return False
        now = self.hal.ticks_ms()
        if self.store.opened and not self.exhausted and self.queue.next(now) is not None:
            return False
        app = self.app
        try:
            return app is None or not app.awake(now)
        except Exception as e:
            self._app_fault(e)
            return True

    def _plan(self):
        """(sleep ms, wake on flow, wake on rain)."""
        hal = self.hal
        t = hal.time()
        now = hal.ticks_ms()
        ms = _SLEEP_MAX_MS
        if t is None:
            ms = self.report_s * 1000  # no clock: ask again at the report interval
        else:
            for due in (self._next_rep, self._next_sta):
                if due is not None:
                    ms = min(ms, (due - t) * 1000)
        due = self.queue.next_due()
        if due is not None and self.store.opened and not self.exhausted:
            ms = min(ms, due - now)
        app = self.app
        flow = rain = False
        if app is not None:
            try:
                ms = app.sleep_ms(ms, t)
                flow = app.wake_on_flow(t)
                rain = app.s["rain_sensor"] == 1
            except Exception as e:
                self._app_fault(e)  # its failsafe closed the valves: sleep on the timer alone
                app = None
        return (ms if ms > _SLEEP_MIN_MS else _SLEEP_MIN_MS), flow, rain

    def _save(self, ms):
        """The record RTC memory keeps across the sleep (see the header); totals to flash."""
        hal = self.hal
        now = hal.ticks_ms()
        t = hal.time()
        ups = []
        for it in self.queue.items:
            ups.extend(
                (
                    it.mtype,
                    it.body,
                    it.prio,
                    1 if it.confirmed else 0,
                    it.key or 0,
                    min(it.sends, 255) << 24 | min(_ticks_left(it.due, now) // 100, 0xFFFFFF),
                )
            )
        app = self.app
        rec = [_RTC_VERSION, t or 0, ms, self._next_rep or 0, self._next_sta or 0, None, ups]
        if app is not None:
            try:
                rec[5] = app.state()
            except Exception as e:
                self._app_fault(e)
        try:
            hal.rtc_save(cbor.dumps(rec))
        except Exception as e:  # lost: the next wake is a boot (valves closed, HELLO)
            self.last_error = repr(e)
            self._failsafe()
        try:
            self.store.flush(True)
        except Exception as e:
            self.last_error = repr(e)


def build(cfg, machine, make_radio, state_dir):
    """(hal, awaitable main) of a battery irrigation node: firmware/main.py's build() for it."""
    from firmware.hal_battery import BatteryHAL

    hal = BatteryHAL(cfg["pins"], state_dir, cfg.get("adc_scale"), machine)
    return hal, BatteryNode(cfg, hal, make_radio(cfg, hal, machine), BatteryIrrigation).run()
