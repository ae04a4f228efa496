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
# the radio is idle and the app does not need to watch (see BatteryIrrigation.active). It
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
#
# Heap: this module is on the node for its whole life (every wake a boot), and every name it
# brings (function, attribute and parameter names, short strings) is interned for good, in
# qstr pools that double as they fill: one name past the fifth pool's 620 costs a whole sixth
# (~4.6 KB; bench/README.md). So the node's and the app's own facts of a wake live in one
# list each (`wake`, indexed by the _W_ / _N_ consts below), the steps of an awake period are
# inline in BatteryNode.run, and the methods the node asks of the app reuse names MicroPython
# or the irrigation node has already (`active`, `due`, `sleep_ms`, `state`; `active` is what
# firmware/group.py's Listener calls its sends under way too).

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
# BatteryIrrigation.wake, what the app knows of this wake
_W_TICKS = const(0)  # app steps so far
_W_FLOW_T = const(1)  # wall s of the last wake by a flow pulse (kept across sleeps)
_W_CHECK_T = const(2)  # wall s of the last re-check of a known leak (kept across sleeps)
_W_CHECK = const(3)  # 1: this wake re-checks a known leak
# BatteryNode.wake, what the node knows of this wake
_N_REP = const(0)  # wall s the next report is due, None: not planned yet
_N_STA = const(1)  # the same for the next STATUS
_N_ASKED = const(2)  # 1: a STATUS asked for the time (a wake without it)
_N_RAIN = const(3)  # 1: the rain sensor's change reported


class BatteryIrrigation(Irrigation):
    """The irrigation app on a cell: latching valves and state kept across deep sleeps."""

    def __init__(self, cfg, hal, node):
        # On a wake with a record (node.rtc[5]) the valves are as the record says: failsafe()
        # below leaves them while Irrigation.__init__ runs, then the state is restored.
        Irrigation.__init__(self, cfg, hal, node)
        w = self.wake = [0, 0, 0, 0]
        rec = getattr(node, "rtc", None)
        st = None if rec is None else rec[5]
        if st is None:
            return
        rec[5] = None  # from here failsafe() closes: an app rebuilt after a fault starts closed, as at boot
        elapsed = rec[2]  # the time asleep (BatteryNode.run)
        now = hal.ticks_ms()
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
        w[_W_FLOW_T] = st[14]
        self.max_run_min = st[15]
        w[_W_CHECK_T] = st[16]
        t = hal.time()
        if hal.wake_reason() == _WAKE_FLOW:
            w[_W_FLOW_T] = t if t is not None else 0
        if self.faults & _IF_LEAK and (t is None or t - w[_W_CHECK_T] >= _LEAK_RECHECK_MS // 1000 - 60):
            w[_W_CHECK] = 1  # the hourly look at a known leak: does it still flow?
            w[_W_CHECK_T] = t if t is not None else 0

    def _drive(self, name, v):
        ms = self.s["latch_ms"]
        if ms:
            self.hal.pulse_out(name if v else name + "_close", ms)  # a latching coil: no held current
        else:
            self.hal.pin_write(name, v)

    def failsafe(self):
        rec = getattr(self.node, "rtc", None)
        if rec is not None and rec[5] is not None:
            return  # a deep-sleep wake: the latched valves hold the state __init__ restores
        Irrigation.failsafe(self)

    def step(self):
        self.wake[_W_TICKS] += 1
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
        w = self.wake
        return [
            self._zone,
            1 if self._manual else 0,
            self._open,
            max(0, self._end - now) if self._zone else 0,
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
            w[_W_FLOW_T],
            self.max_run_min,
            w[_W_CHECK_T],
        ]

    # -- what the node asks before a sleep ------------------------------------------------------

    def active(self, now):
        """True while the app must stay awake (it watches something), else the node may sleep."""
        w = self.wake
        s = self.s
        if self.queue or w[_W_TICKS] <= _FLOW_WINDOW and self.hal.wake_reason() == _WAKE_FLOW:
            return True
        if self._open:
            if s["flow_meter"] or not s["latch_ms"]:
                return True  # burst / excess / no flow keep their mains timings; a held valve needs power
            return self.due(now) - now <= _MARGIN_MS
        if s["flow_meter"] and w[_W_TICKS] * s["tick_ms"] < _WATCH_MS:
            if self.faults & _IF_LEAK:
                return w[_W_CHECK] == 1  # the hourly re-check: LEAK_MS without flow clears it
            return self.flow > 0 or self._leak_ms > 0  # a leak being measured; a drip waits (holdoff)
        return False

    def due(self, now):
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
        """(the sleep `ms` cut to the app's next event, whether to wake on a flow pulse); every
        valve closed first if the sleep cannot be safe."""
        now = self.hal.ticks_ms()
        if self._open:
            if t is None or self.due(now) - now < _SLEEP_MIN_MS:
                self._stop_all()  # no clock, or a deadline too close to sleep through: closed is safe
            else:
                ms = min(ms, self.due(now) - now)
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
        # the flow wake: a flow meter, no known leak, valves closed and no flow wake in the last hour
        flow = self.s["flow_meter"] and not self.faults & _IF_LEAK and not self._open
        if flow and t is not None and self.wake[_W_FLOW_T]:
            flow = t - self.wake[_W_FLOW_T] >= _FLOW_HOLDOFF_S
        return ms, bool(flow)


class BatteryNode(Node):
    """The runtime of a node that deep-sleeps: one awake period per boot (see the header)."""

    def __init__(self, cfg, hal, radio, app_class=None, hello_jitter_ms=10000, watchdog=True):
        Node.__init__(self, cfg, hal, radio, app_class, hello_jitter_ms, watchdog)
        self.rtc = None  # the record this wake resumes from, None: a boot
        if hal.reset_cause() == _RST_DEEPSLEEP:
            try:
                rec = cbor.loads(hal.rtc_load())
                if rec[0] == _RTC_VERSION:
                    self.rtc = rec
            except Exception:
                pass  # none or unreadable: a boot like any other (valves closed, HELLO)
        self.active = False  # a send and its receive window under way: never cut by a sleep
        self.wake = [None, None, 0, 0]

    async def _transmit(self, it):
        self.active = True
        try:
            await Node._transmit(self, it)
        finally:
            self.active = False

    def _last_resort(self):
        Node._last_resort(self)
        ms = (self.cfg.get("irrigation") or {}).get("latch_ms", 0)
        if ms:
            for name in ("master", "zone1", "zone2", "zone3", "zone4"):
                try:
                    self.hal.pulse_out(name + "_close", ms)
                except Exception:
                    pass  # a channel this board does not have

    async def run(self):
        hal = self.hal
        rec = self.rtc
        w = self.wake
        if rec is not None:  # a wake: what the record kept
            self.hello_jitter_ms = 0  # the sender's first wait: only a real boot spreads HELLOs
            t = hal.time()
            # time asleep, kept in rec[2] for the app: from the wall clock (the RTC ran on), else
            # the planned sleep (a timer wake)
            elapsed = rec[2] = (t - rec[1]) * 1000 if t is not None and rec[1] else rec[2]
            w[_N_REP] = rec[3] or None
            w[_N_STA] = rec[4] or None
            ups = rec[6]
            now = hal.ticks_ms()
            for i in range(0, len(ups), 6):
                it = self.queue.put(ups[i], ups[i + 1], ups[i + 2], ups[i + 3] == 1, ups[i + 4] or None)
                if it is not None:
                    it.sends = ups[i + 5] >> 24
                    it.due = now + max(0, (ups[i + 5] & 0xFFFFFF) * 100 - elapsed)
            rec[6] = None
        self._wake = asyncio.Event()
        self._build_app()  # a fresh boot: every valve closed; a wake: the valves as they were
        if self.watchdog:
            hal.wdt_start(self.wdt_ms)
        self._open_store()
        self._seed ^= self.store.peek_uplink() & 0xFFFFFFFF
        if self.store.opened:
            self._apply_saved_settings()
        if rec is None:
            self._hello()
        self._spawn(self._sender())
        self._spawn(self._supervise())
        app = self.app
        tick = app.s["tick_ms"] if app is not None else 1000
        try:
            while True:
                if self.watchdog:
                    hal.wdt_feed()
                t = hal.time()  # what is due: a report, a STATUS
                if self._intervals.is_set():  # set_interval or a CONFIG changed them: count from now
                    self._intervals.clear()
                    w[_N_REP] = w[_N_STA] = None
                if t is None:
                    if rec is not None and not w[_N_ASKED]:
                        w[_N_ASKED] = 1
                        self._status()  # says "no time": the gateway answers with a TIME (SPEC §4)
                else:
                    # each planned with a jitter of +-5 %, so nodes that woke together drift apart
                    s = self.report_s
                    if w[_N_REP] is None or t >= w[_N_REP]:
                        if w[_N_REP] is not None:
                            self._report()
                        w[_N_REP] = t + s + self._rand(s // 10 + 1) - s // 20
                    s = self.status_s
                    if w[_N_STA] is None or t >= w[_N_STA]:
                        if w[_N_STA] is not None:
                            self._status()
                        w[_N_STA] = t + s + self._rand(s // 10 + 1) - s // 20
                    if self.app is not None and rec is not None and not w[_N_RAIN] and hal.wake_reason() == _WAKE_RAIN:
                        w[_N_RAIN] = 1
                        self._report()  # the rain sensor changed: say so now
                if self._reboot_at is not None and (hal.ticks_ms() >= self._reboot_at or not self.queue.has(_CMD_ACK)):
                    self._reboot()
                await hal.sleep_ms(tick)
                # asleep once nothing is being sent, nothing is due to send and the app watches nothing
                if self.active or self._reboot_at is not None:
                    continue
                now = hal.ticks_ms()
                if self.store.opened and not self.exhausted and self.queue.next(now) is not None:
                    continue
                app = self.app
                try:
                    if app is None or not app.active(now):
                        break
                except Exception as e:
                    self._app_fault(e)
                    break
            # the sleep: to the earliest of the next report, STATUS, queued uplink's retry and the app's event
            t = hal.time()
            now = hal.ticks_ms()
            ms = _SLEEP_MAX_MS
            if t is None:
                ms = self.report_s * 1000  # no clock: ask again at the report interval
            else:
                for due in (w[_N_REP], w[_N_STA]):
                    if due is not None:
                        ms = min(ms, (due - t) * 1000)
            due = self.queue.next_due()
            if due is not None and self.store.opened and not self.exhausted:
                ms = min(ms, due - now)
            app = self.app
            flow = rain = False
            if app is not None:
                try:
                    ms, flow = app.sleep_ms(ms, t)
                    rain = app.s["rain_sensor"] == 1
                except Exception as e:
                    self._app_fault(e)  # its failsafe closed the valves: sleep on the timer alone
            if ms < _SLEEP_MIN_MS:
                ms = _SLEEP_MIN_MS
            self.save(ms)
        finally:
            for t in self._tasks:
                t.cancel()
            self._app_down.set()
        hal.deepsleep(ms, flow, rain)

    def save(self, ms):
        """The record RTC memory keeps across a sleep of `ms` (see the header); totals to flash."""
        hal = self.hal
        if self.cfg.get("trial"):  # a release on trial: each wake is a trial run (SPEC §13, slots.wake)
            if __import__("firmware.slots", None, None, ("wake",)).wake(self):
                hal.reset()  # rolled back: a boot of the release before it, which says HELLO
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
                    min(it.sends, 255) << 24 | min(max(0, it.due - now) // 100, 0xFFFFFF),
                )
            )
        app = self.app
        w = self.wake
        rec = [_RTC_VERSION, t or 0, ms, w[_N_REP] or 0, w[_N_STA] or 0, None, ups]
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


def build(cfg, machine, make_radio, storage_dir):
    """(hal, awaitable main) of a battery irrigation node: firmware/main.py's build() for it."""
    from firmware.hal_battery import BatteryHAL

    hal = BatteryHAL(cfg["pins"], storage_dir, cfg.get("adc_scale"), machine)
    return hal, BatteryNode(cfg, hal, make_radio(cfg, hal, machine), BatteryIrrigation).run()
