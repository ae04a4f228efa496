# The irrigation app: up to 4 zones and a master valve, weekly schedules,
# soil-moisture control, rain sensor and rain delay, a flow meter with volume
# accounting and leak / burst / no-flow alarms, a hard maximum run time per
# valve, and valves that close whenever anything is in doubt. Contract with
# the runtime: firmware/README.md.
#
# Runs. One zone waters at a time (line pressure is sized for one); the
# master valve is open exactly while a zone is. Scheduled runs that fall due
# together queue (at most _QUEUE_MAX) and run one after the other. A manual
# open_zone replaces the current run (capped at max_run_min) and bypasses rain
# and moisture checks (an operator on site wants the valve to open); the queue
# resumes after it.
#
# Schedules: at most _SCHEDULE_MAX entries (zone, weekday mask bit 0 Monday, start
# minute, minutes) on the node's local standard time, UTC + utc_offset_min (no
# daylight saving). Each entry starts at most once a local day; a start minute
# that a clock jump skips is not caught up. A node holding a calendar
# (node.schedule, firmware/calendar.py) runs the calendar's programs instead, on
# the calendar's local time (daylight saving included), each at most once a
# local day; the same skips and caps apply. A scheduled run is skipped when the
# rain sensor is wet, a rain delay is active, or the zone's soil moisture is
# at or above skip_pct; it stops early when the sensor turns wet, a rain delay
# starts, or the moisture has stayed at or above target_pct for MOIST_HOLD_MS
# (skip_pct <= target_pct: a hysteresis band, so a wet zone is not started and
# a started one is brought up to the target). The scheduled minutes are the
# cap: a sensor that lags or fails cannot extend a run.
#
# Flow (pulses_per_l from the meter's K-factor; rate over FLOW_WINDOW ticks):
#   leak      flow >= leak_dlpm with every valve closed for LEAK_MS, after
#             DRAIN_MS for the pipes to drain; clears after LEAK_MS below;
#   burst     flow above burst_pct % of the zone's expected rate for BURST_MS,
#             once the pipes had FILL_MS to fill: master and zones close at
#             once and stay closed (open_zone refused, schedules skipped) until
#             clear_fault: a burst pipe needs a person;
#   excess    more flow than the open zone explains: above (100 + excess_pct) %
#             of its expected rate and at least leak_dlpm over it, for
#             EXCESS_MS once the pipes had FILL_MS to fill (a valve stuck open
#             behind the master valve, which flows only while another zone
#             waters; a leak between the master and the zone valves): master
#             and zones close and stay closed until clear_fault, as for a
#             burst (the node cannot tell which valve is stuck; only a person
#             can). No separate "flow with the master open and every zone
#             shut" check: the master never stays open without a zone (hard
#             maximum, below). The expected rate is the configured nominal
#             flow_dlpm, not one learned from the first waterings: a valve
#             already stuck at commissioning would be learned as normal, and a
#             learned figure costs RAM and flash writes. excess_pct (default 30) covers
#             sprinkler flow with line pressure (flow ~ sqrt(pressure): +-30 %
#             pressure is about +-15 % flow) and a Hall meter's +-10 %; a
#             burst (burst_pct, 2 s) is caught first, being the faster check.
#             burst_pct's default (250) sits above twice a zone's flow, so a
#             valve stuck open on a zone like the open one reads as excess,
#             and a rupture between 130 and 250 % still closes within 30 s
#             (EXCESS_MS; the excess must be at least leak_dlpm, the meter's
#             floor: 0.5 L/min by default, 0.25 L over the hold);
#   no flow   below NO_FLOW_PCT % of the expected rate for no_flow_s with a
#             zone open (stuck valve, no pressure): that zone closes, the
#             queue goes on; clears when the zone flows at FLOW_OK_PCT %.
# Hard maximum: every tick, any zone valve open longer than max_run_min (and
# the master valve open with no zone) is closed and EV_MAX_RUNTIME raised,
# whatever the schedule or command said; it is separate from the run logic on
# purpose (a schedule longer than the maximum is cut and reported). It clears
# when that zone next finishes a run normally, or on clear_fault.
#
# Fail-safe (IF_FAILSAFE): valves are closed at construction (boot, watchdog
# reset, app restart), by failsafe() (the runtime calls it on an exception),
# and whenever wall time is unknown (no schedules, rain delay or open_zone
# without it); EV_IRRIGATION_FAILSAFE after FAILSAFE_EVENT_MS without time.
# Volume (L) lives in node.store's totals; schedules and the rain delay in the
# HAL's key-value storage under "iprog", written only when a command changes
# them.

from protocol import nodecbor as cbor
from firmware import unload

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_CFG_MAX_RUN = const(5)
_DAY_MIN = const(1440)
_EV_BURST = const(11)
_EV_EXCESS_FLOW = const(15)
_EV_IRRIGATION_FAILSAFE = const(14)
_EV_LEAK = const(10)
_EV_MAX_RUNTIME = const(13)
_EV_NO_FLOW = const(12)
_IF_BURST = const(0x02)
_IF_EXCESS_FLOW = const(0x20)
_IF_FAILSAFE = const(0x10)
_IF_LEAK = const(0x01)
_IF_MAX_RUNTIME = const(0x08)
_IF_NO_FLOW = const(0x04)
_IRRIGATION = const(3)
_IR_FAULTS = const(6)
_IR_FLOW = const(2)
_IR_MOISTURE = const(0)
_IR_RAIN = const(4)
_IR_SUPPLY = const(5)
_IR_VALVES = const(1)
_IR_VOLUME = const(3)
_KIND_IRRIGATION = const(2)
_NO_VALUE = const(255)
_OP_CLEAR_FAULT = const(3)
_OP_CLOSE_ALL = const(5)
_OP_OPEN_ZONE = const(4)
_OP_RAIN_DELAY = const(6)
_OP_SET_SCHEDULE = const(7)
_RAIN_DELAY_ACTIVE = const(0x02)
_RAIN_DELAY_MAX_H = const(0x2D0)
_RAIN_SENSOR_WET = const(0x01)
_RES_BAD_ARGS = const(2)
_RES_FAILED = const(6)
_RES_OK = const(0)
_RES_REFUSED = const(4)
_RES_UNKNOWN_OP = const(1)
_SCHEDULE_GROUPS_MAX = const(6)
_SCHEDULE_MAX = const(8)
_RULES_MAX = const(16)  # protocol.calendar.RULES_MAX: a calendar's programs
_SEV_ALARM = const(2)
_SEV_CRITICAL = const(3)
_SEV_WARNING = const(1)
_VALVE_MASTER = const(0x80)
_ZONES_MAX = const(4)

_QUEUE_MAX = const(8)
_FLOW_WINDOW = const(3)
_FILL_MS = const(15000)
_BURST_MS = const(2000)
_EXCESS_MS = const(30000)
_LEAK_MS = const(60000)
_DRAIN_MS = const(30000)
_NO_FLOW_PCT = const(10)
_FLOW_OK_PCT = const(50)
_MOIST_HOLD_MS = const(30000)
_MV_RAIL = const(100)  # a sensor within 100 mV of 0 V or 3.3 V is stuck, not reading
_FAILSAFE_EVENT_MS = const(900000)
_LATCHED = const(0x22)  # _IF_BURST | _IF_EXCESS_FLOW: valves stay closed until clear_fault
# HAL storage: "iprog", the program set over the air (written inline: a name would cost heap)
_ZONE_NAMES = ("zone1", "zone2", "zone3", "zone4")
_MOIST_NAMES = ("moisture1", "moisture2", "moisture3", "moisture4")


def parse_schedule(args, nzones, old=()):
    """Apply set_schedule args (groups of 4) to the entries `old`; None if invalid."""
    n = len(args)
    if n == 0 or n % 4 or n > 4 * _SCHEDULE_GROUPS_MAX:
        return None
    named = 0
    new = []
    for i in range(0, n, 4):
        z, mask, start, mins = args[i], args[i + 1], args[i + 2], args[i + 3]
        for v in (z, mask, start, mins):
            if type(v) is not int:
                return None
        if not (1 <= z <= nzones and 0 <= mask <= 127 and 0 <= start < _DAY_MIN and 0 <= mins <= _DAY_MIN):
            return None
        named |= 1 << z
        if mins:
            new.append((z, mask, start, mins))
    out = [e for e in old if not named >> e[0] & 1] + new
    return out if len(out) <= _SCHEDULE_MAX else None


def check(section):
    """Validated settings of the config's "irrigation" section (ValueError names the key).

    The checks and their tables (SETTINGS, ZONE_SETTINGS) are in
    firmware/irrigation_cfg.py: loaded for the call and dropped again after
    it on a board (firmware.unload), since they run at boot only.
    """
    from firmware import irrigation_cfg

    try:
        return irrigation_cfg.check(section, parse_schedule)
    finally:
        unload("irrigation_cfg")


def __getattr__(name):
    # irrigation.SETTINGS and irrigation.ZONE_SETTINGS, for the tools and the simulator (CPython)
    if name in ("SETTINGS", "ZONE_SETTINGS"):
        from firmware import irrigation_cfg

        return getattr(irrigation_cfg, name)
    raise AttributeError(name)


class Irrigation:
    KIND = _KIND_IRRIGATION

    def __init__(self, cfg, hal, node):
        self.hal = hal
        self.node = node
        s = check(cfg.get("irrigation") or {})
        self.s = s
        self.zones = s["zones"]
        self._nzones = len(self.zones)
        self.schedule = s["schedule"]
        self.rain_until = 0  # Unix s; 0: no rain delay
        try:  # the program set over the air, if any (HAL storage "iprog")
            data = hal.load("iprog")
            if data is not None:  # (no reason to load the full CBOR codec for None)
                rec = cbor.loads(data)
                sched = parse_schedule(rec[1], self._nzones) if rec[1] else []
                if type(rec[0]) is int and sched is not None:
                    self.rain_until, self.schedule = rec[0], sched
        except Exception:
            pass  # unreadable: the provisioned schedule stands
        self._done = [-1] * _RULES_MAX  # local day each entry (or calendar program) last started
        self._last_min = -1
        self._open = 0  # valve bits as reported: zones 0-3, VALVE_MASTER
        self._since = [0] * _ZONES_MAX
        self.faults = 0  # IF_LEAK | IF_BURST | IF_EXCESS_FLOW | IF_FAILSAFE here; per-zone ones below
        self._noflow = 0  # zones (bit z-1) with no flow raised
        self._maxrun = 0  # zones whose maximum run time was hit
        self._fs_raised = False
        self.queue = []  # (zone, minutes) waiting to run: at most QUEUE_MAX
        self._zone = 0  # the zone of the current run, 0: none
        self._end = self._start = self._closed_at = 0
        self._manual = False
        self._burst_ms = self._noflow_ms = self._moist_ms = self._excess_ms = 0
        self._leak_ms = self._noleak_ms = 0
        self._pulses = None  # the flow meter's count at the last tick
        self._vol_p = 0  # pulses below one litre
        self._win_p = [0] * _FLOW_WINDOW  # pulses and ms of the last ticks: the flow's window
        self._win_ms = [0] * _FLOW_WINDOW
        self._win_i = 0
        self.flow = 0  # 0.1 L/min
        self._last_ms = self._no_time_ms = hal.ticks_ms()
        self.max_run_min = s["max_run_min"]
        self.failsafe()

    # -- valves -----------------------------------------------------------------------------

    def _valves(self, zone):
        """Open exactly `zone` (0: none) with the master valve; close the master first."""
        hal = self.hal
        want = (1 << (zone - 1) | (_VALVE_MASTER if self.s["master"] else 0)) if zone else 0
        have = self._open
        if have & _VALVE_MASTER and not want & _VALVE_MASTER:
            self._drive("master", 0)
        for i in range(self._nzones):
            bit = 1 << i
            if (have ^ want) & bit:
                self._drive(_ZONE_NAMES[i], 1 if want & bit else 0)
                if want & bit:
                    self._since[i] = hal.ticks_ms()
        if want & _VALVE_MASTER and not have & _VALVE_MASTER:
            self._drive("master", 1)
        if have and not want:
            self._closed_at = hal.ticks_ms()
        self._open = want

    def _drive(self, name, v):
        # one valve output; firmware/battery.py drives latching valves by pulses instead
        self.hal.pin_write(name, v)

    def _run(self, zone, secs, manual):
        self._zone = zone
        self._manual = manual
        self._start = now = self.hal.ticks_ms()
        self._end = now + secs * 1000
        self._burst_ms = self._noflow_ms = self._moist_ms = self._excess_ms = 0
        self._valves(zone)

    def _stop(self):
        self._zone = 0
        self._valves(0)

    def _stop_all(self):
        self.queue = []
        self._stop()

    # -- inputs --------------------------------------------------------------------------------

    def moisture(self, z):
        """Soil moisture of zone z (1-based) in 0.5 % steps (0..200), or None (no sensor, fault)."""
        if not self.zones[z - 1]["moisture"]:
            return None
        s = self.s
        mv = self.hal.adc_read_mv(_MOIST_NAMES[z - 1])
        v = (mv - s["moist_mv_0"]) * 100 // (s["moist_mv_50"] - s["moist_mv_0"])
        if mv < _MV_RAIL or mv > 3300 - _MV_RAIL or v < -20 or v > 200:
            return None  # stuck at a rail (cut or shorted cable) or far outside the calibration
        return 0 if v < 0 else 200 if v > 200 else v

    def _rain_flags(self, t):
        f = 0
        if self.s["rain_sensor"] and self.hal.pin_read("rain"):
            f = _RAIN_SENSOR_WET
        if t is not None and t < self.rain_until:
            f |= _RAIN_DELAY_ACTIVE
        return f

    def _measure(self, dt):
        p = self.hal.pulses("flow")
        d = 0 if self._pulses is None or p < self._pulses else p - self._pulses
        self._pulses = p
        ppl = self.s["pulses_per_l"]
        self._vol_p += d
        if self._vol_p >= ppl:
            self.node.store.add("vol_l", self._vol_p // ppl)
            self._vol_p %= ppl
        i = self._win_i
        self._win_p[i] = d
        self._win_ms[i] = dt
        self._win_i = (i + 1) % _FLOW_WINDOW
        t = sum(self._win_ms)
        self.flow = sum(self._win_p) * 600000 // (ppl * t) if t else 0

    # -- the control loop ---------------------------------------------------------------------

    async def run(self):
        while True:
            self.step()
            await self.hal.sleep_ms(self.s["tick_ms"])

    def step(self):
        hal = self.hal
        now = hal.ticks_ms()
        dt = now - self._last_ms
        self._last_ms = now
        if self.s["flow_meter"]:
            self._measure(dt)
        t = hal.time()
        if t is None:
            if self._open or self.queue:
                self._stop_all()
            self.faults |= _IF_FAILSAFE
            if not self._fs_raised and now - self._no_time_ms >= _FAILSAFE_EVENT_MS:
                self._fs_raised = True
                self.node.event(_EV_IRRIGATION_FAILSAFE, _SEV_WARNING, 0, 1)
        else:
            self._no_time_ms = now
            self.faults &= ~_IF_FAILSAFE
            if self._fs_raised:
                self._fs_raised = False
                self.node.event(_EV_IRRIGATION_FAILSAFE, _SEV_WARNING, 0, 0)
            self._due(t)
            self._control(now, t, dt)
        # the hard maximum, whatever the run logic above decided (the header says why)
        limit = self.max_run_min * 60000
        for i in range(self._nzones):
            if self._open & (1 << i) and now - self._since[i] > limit:
                if self._zone == i + 1:
                    self._zone = 0
                self._valves(0)
                if not self._maxrun & (1 << i):
                    self._maxrun |= 1 << i
                    self.node.event(_EV_MAX_RUNTIME, _SEV_ALARM, self.max_run_min, 1, i + 1)
        if self._open == _VALVE_MASTER:
            self._valves(0)  # a master valve never stays open on its own
        if self.s["flow_meter"]:
            self._flow_faults(now, dt)

    def _due(self, t):
        if t // 60 == self._last_min:
            return
        self._last_min = t // 60  # a new minute (UTC: the same minutes as any local time's)
        cal = getattr(self.node, "schedule", None)  # the runtime's [stored calendar or None, ...]
        cal = cal[0] if cal and cal[0] and cal[0][9] else None
        if cal is not None:
            # a calendar's programs replace the weekly schedule, on the calendar's local time. Its
            # code loads for this, once a minute, by a string (a name here costs heap at boot: a
            # qstr) and leaves again (firmware.unload): the node keeps only the calendar's bytes
            c = __import__("firmware.calendar", None, None, ("schedule",))
            lt = t + c.offset(cal, t)
            for z, mins in c.schedule(cal, lt // 86400, lt % 86400 // 60, self._done):
                if len(self.queue) < _QUEUE_MAX:
                    self.queue.append((z, mins))
            unload("firmware.calendar")  # dotted: a short string would cost a qstr
            return
        lt = t + self.s["utc_offset_min"] * 60
        day = lt // 86400
        minute = lt % 86400 // 60
        wd = (day + 3) % 7  # 1970-01-01 was a Thursday; bit 0 is Monday
        for i in range(len(self.schedule)):
            z, mask, start, mins = self.schedule[i]
            if start == minute and mask >> wd & 1 and self._done[i] != day:
                self._done[i] = day
                if len(self.queue) < _QUEUE_MAX:
                    self.queue.append((z, mins))

    def _control(self, now, t, dt):
        rain = self._rain_flags(t)
        z = self._zone
        if z:
            stop = now >= self._end
            if not self._manual:
                v = self.moisture(z)
                if v is not None and v >= self.zones[z - 1]["target_pct"] * 2:
                    self._moist_ms += dt
                else:
                    self._moist_ms = 0
                stop = stop or rain or self._moist_ms >= _MOIST_HOLD_MS
            if stop:
                if now >= self._end and self._maxrun & (1 << (z - 1)):
                    self._maxrun &= ~(1 << (z - 1))  # ran its course normally: the limit holds again
                    self.node.event(_EV_MAX_RUNTIME, _SEV_ALARM, self.max_run_min, 0, z)
                self._zone = 0
        while not self._zone and self.queue:
            z, mins = self.queue.pop(0)
            if rain or self.faults & _LATCHED:
                continue  # skipped: rain, or a fault that needs a person
            v = self.moisture(z)
            if v is None or v < self.zones[z - 1]["skip_pct"] * 2:  # else wet enough: skipped
                self._run(z, mins * 60, False)  # from one zone to the next: the master stays open
        if not self._zone and self._open:
            self._stop()

    def _flow_faults(self, now, dt):
        flow = self.flow
        z = self._zone
        if z and self._open:
            expect = self.zones[z - 1]["flow_dlpm"]
            bit = 1 << (z - 1)
            filled = now - self._start >= _FILL_MS
            if filled and flow * 100 > expect * self.s["burst_pct"]:
                self._burst_ms += dt
                if self._burst_ms >= _BURST_MS:
                    self._latch(_IF_BURST, _EV_BURST, _SEV_CRITICAL, flow, z)
                    return
            else:
                self._burst_ms = 0
            if filled and flow * 100 > expect * (100 + self.s["excess_pct"]) and flow - expect >= self.s["leak_dlpm"]:
                self._excess_ms += dt
                if self._excess_ms >= _EXCESS_MS:
                    self._latch(_IF_EXCESS_FLOW, _EV_EXCESS_FLOW, _SEV_ALARM, flow, z)
                    return
            else:
                self._excess_ms = 0
            if flow * 100 < expect * _NO_FLOW_PCT:
                if now > self._start:  # the tick that opened the valve saw no water yet
                    self._noflow_ms += dt
                if self._noflow_ms >= self.s["no_flow_s"] * 1000:
                    self._stop()
                    if not self._noflow & bit:
                        self._noflow |= bit
                        self.node.event(_EV_NO_FLOW, _SEV_ALARM, flow, 1, z)
            else:
                self._noflow_ms = 0
                if self._noflow & bit and flow * 100 >= expect * _FLOW_OK_PCT:
                    self._noflow &= ~bit
                    self.node.event(_EV_NO_FLOW, _SEV_ALARM, flow, 0, z)
        elif not self._open and now - self._closed_at >= _DRAIN_MS:
            if flow >= self.s["leak_dlpm"]:
                self._leak_ms += dt
                self._noleak_ms = 0
                if self._leak_ms >= _LEAK_MS and not self.faults & _IF_LEAK:
                    self.faults |= _IF_LEAK
                    self.node.event(_EV_LEAK, _SEV_ALARM, flow, 1)
            else:
                self._noleak_ms += dt
                self._leak_ms = 0
                if self._noleak_ms >= _LEAK_MS and self.faults & _IF_LEAK:
                    self.faults &= ~_IF_LEAK
                    self.node.event(_EV_LEAK, _SEV_ALARM, flow, 0)

    def _latch(self, bit, code, sev, flow, z):
        """A fault that needs a person: every valve closed until clear_fault."""
        self._stop_all()
        self.faults |= bit
        self.node.event(code, sev, flow, 1, z)

    # -- the runtime's interface ----------------------------------------------------------------

    def report(self):
        t = self.hal.time()
        moist = bytearray(self._nzones)
        for i in range(self._nzones):
            v = self.moisture(i + 1)
            moist[i] = _NO_VALUE if v is None else v
        f = self.faults
        if self._noflow:
            f |= _IF_NO_FLOW
        if self._maxrun:
            f |= _IF_MAX_RUNTIME
        body = {_IR_MOISTURE: bytes(moist), _IR_VALVES: self._open, _IR_RAIN: self._rain_flags(t), _IR_FAULTS: f}
        if self.s["flow_meter"]:
            body[_IR_FLOW] = min(self.flow, 0xFFFF)
            body[_IR_VOLUME] = self.node.store.get("vol_l") & 0xFFFFFFFF
        if self.s["supply_sensor"]:
            body[_IR_SUPPLY] = min(max(self.hal.adc_read_mv("supply"), 0), 0xFFFF)
        return _IRRIGATION, body

    def command(self, op, args):
        try:
            return self._command(op, args)
        except (TypeError, ValueError, IndexError):
            return _RES_BAD_ARGS, 0

    def _command(self, op, args):
        t = self.hal.time()
        n = len(args)
        if op == _OP_OPEN_ZONE:
            if n != 2 or not (1 <= args[0] <= self._nzones and 1 <= args[1] <= _DAY_MIN):
                return _RES_BAD_ARGS, 0
            if t is None or self.faults & _LATCHED:
                return _RES_REFUSED, 0
            mins = min(args[1], self.max_run_min)
            self._run(args[0], mins * 60, True)
            return _RES_OK, mins
        if op == _OP_CLOSE_ALL:
            if n:
                return _RES_BAD_ARGS, 0
            self._stop_all()
            return _RES_OK, 0
        if op == _OP_RAIN_DELAY:
            if n != 1 or not 0 <= args[0] <= _RAIN_DELAY_MAX_H:
                return _RES_BAD_ARGS, 0
            if t is None:
                return _RES_REFUSED, 0
            self.rain_until = t + args[0] * 3600 if args[0] else 0
            return self._saved(args[0])
        if op == _OP_SET_SCHEDULE:
            sched = parse_schedule(args, self._nzones, self.schedule)
            if sched is None:
                return _RES_BAD_ARGS, 0
            self.schedule = sched
            self._done = [-1] * _RULES_MAX
            return self._saved(len(sched))
        if op == _OP_CLEAR_FAULT:
            if n:
                return _RES_BAD_ARGS, 0
            count = 0
            for bit, code in ((_IF_LEAK, _EV_LEAK), (_IF_BURST, _EV_BURST), (_IF_EXCESS_FLOW, _EV_EXCESS_FLOW)):
                if self.faults & bit:
                    self.faults &= ~bit
                    count += 1
                    self.node.event(code, _SEV_CRITICAL if bit == _IF_BURST else _SEV_ALARM, 0, 0)
            for i in range(self._nzones):
                for mask, code in ((self._noflow, _EV_NO_FLOW), (self._maxrun, _EV_MAX_RUNTIME)):
                    if mask >> i & 1:
                        count += 1
                        self.node.event(code, _SEV_ALARM, 0, 0, i + 1)
            self._noflow = self._maxrun = 0
            self._leak_ms = self._noleak_ms = 0
            return _RES_OK, count
        return _RES_UNKNOWN_OP, 0

    def _saved(self, value):
        """The program (schedule, rain delay) to HAL storage "iprog", read back at boot (__init__)."""
        flat = []
        for e in self.schedule:
            flat.extend(e)
        try:
            self.hal.save("iprog", cbor.dumps([self.rain_until, flat]))
        except OSError:
            return _RES_FAILED, value  # applied, but lost at the next reboot
        return _RES_OK, value

    def configure(self, settings):
        if not settings:  # a new calendar (the runtime says so with {}): its programs start afresh
            self._done = [-1] * _RULES_MAX
        v = settings.get(_CFG_MAX_RUN)
        if v is not None and 1 <= v <= _DAY_MIN:
            self.max_run_min = v

    def failsafe(self):
        """Every valve closed, master first; the run and queue dropped. Never raises."""
        self.queue = []
        self._zone = 0
        self._open = 0
        for name in ("master",) + _ZONE_NAMES[: self._nzones]:
            try:
                self._drive(name, 0)
            except Exception:
                pass
        try:
            self._closed_at = self.hal.ticks_ms()
        except Exception:
            pass

    def open_alarms(self):
        n = bin(self._noflow).count("1") + bin(self._maxrun).count("1")
        if self.faults & _IF_LEAK:
            n += 1
        if self.faults & _IF_BURST:
            n += 1
        if self.faults & _IF_EXCESS_FLOW:
            n += 1
        return n + (1 if self._fs_raised else 0)
