# The street-lighting app: a dimming profile on the astronomical clock, presence
# boost, lamp fault detection, energy and burning hours, and a fail-safe that
# never leaves a street dark. Contract with the runtime: firmware/README.md.
#
# Profile. Up to _PROFILE_STEPS_MAX steps (anchor, offset min, level %), anchors
# protocol.messages.ANCHOR_* (sunset, sunrise, night midpoint = "virtual
# midnight", halfway between sunset and the next sunrise). Each local night is
# planned once, noon to noon (local mean solar time from the longitude). An
# offset counted into the night stops at its other end (sunset + 4 h on a
# 3-hour night falls at sunrise; sunrise - 90 min no earlier than sunset; the
# midpoint's steps stay within the night). Steps are then taken in profile
# order and a step that would fall before the one ahead of it is moved up to
# it, so a short summer night skips steps instead of reordering them. The
# level is that of the latest step at or before now (0 before the first); a
# profile ends with an off step (no off step: the last level holds until
# local noon, when the next plan starts dark). Polar night: the night runs
# noon to noon; polar day: no night, lamp off.
# DEFAULT_PROFILE: 100 % at sunset, 50 % four hours later (about 23:00 at
# mid-latitudes in spring), 30 % from virtual midnight, 100 % from 90 minutes
# before sunrise, off at sunrise: about 35 % less energy than full power all
# night at 48 N in spring (tests/test_lighting.py measures it). Night dimming
# and presence-based dimming are reported to save 25-80 % against full power
# all night, depending on the profile (../shared/DESIGN.md).
#
# Presence: a PIR high (polled every tick; PIR modules hold their output for
# 2 s or more) raises the lamp at once to boost_level for boost_s, while it is
# dark; every decrease of the output then fades at 100 % per fade_s.
#
# Faults, from the lamp current (mA = mV * ma_per_v / 1000), checked while
# the lamp has been on settle_s (driver start-up, HID warm-up):
#   lamp failure  current below fail_pct % of expected (full_ma x level) for
#                 FAIL_MS; clears after CLEAR_MS of normal current;
#   over-current  current above over_pct % of expected + 10 % of full_ma for
#                 OVER_MS (also current drawn while commanded off: stuck
#                 relay, failed driver); clears after CLEAR_MS. The lamp is
#                 left on: a dark street is worse than a tripped breaker;
#   cycling       CYCLE_N outages (normal -> low) within CYCLE_MS while on
#                 (an HID lamp at end of life, a driver in thermal cut-out);
#                 replaces a lamp-failure alarm; clears after CYCLE_MS without
#                 an outage.
# Each raises one EVENT and one clearing EVENT (protocol.messages EV_*).
#
# Energy = rated power x level x time (DESIGN.md: LED drivers are close to
# linear over the dimming range that matters); current x mains voltage would
# need the power factor, which the node does not measure. Nothing is counted
# while the lamp has failed. Wh and burning seconds live in node.store's
# totals (written hourly by the store).
#
# Fail-safe (LS_FAILSAFE): without valid wall time (or without a location in
# the config) the lamp runs dusk-to-dawn at 100 %, no dimming on a clock it
# cannot trust: from the last known time carried on by the monotonic clock for
# up to HOLDOVER_MS, else from the ambient light sensor with hysteresis (dark
# below ambient_on_mv, light above ambient_off_mv, each held AMBIENT_MS; the
# first reading decides at once, dark inside the band), else fully on.
# EV_LIGHT_FAILSAFE after FAILSAFE_EVENT_MS in that state. failsafe() (called
# at construction and by the runtime after an app exception) drops any
# override and turns the lamp fully on unless the clock says it is day.

from protocol import nodecbor as cbor
from firmware import astro, unload

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_ANCHOR_MIDNIGHT = const(2)
_ANCHOR_SUNRISE = const(1)
_ANCHOR_SUNSET = const(0)
_CFG_LAMP_POWER = const(4)
_EV_CYCLING = const(3)
_EV_LAMP_FAILURE = const(1)
_EV_LIGHT_FAILSAFE = const(4)
_EV_OVER_CURRENT = const(2)
_KIND_LIGHTING = const(1)
_LAMP_POWER_MAX_W = const(2000)
_LIGHT = const(2)
_LS_BOOST = const(0x20)
_LS_CYCLING = const(0x08)
_LS_FAILSAFE = const(0x40)
_LS_LAMP_FAILURE = const(0x02)
_LS_ON = const(0x01)
_LS_OVERRIDE = const(0x10)
_LS_OVER_CURRENT = const(0x04)
_L_CURRENT = const(6)
_L_ENERGY = const(2)
_L_HOURS = const(4)
_L_LEVEL = const(0)
_L_POWER = const(1)
_L_PRESENCE = const(5)
_L_STATE = const(3)
_OFFSET_MAX_MIN = const(720)
_OP_CLEAR_FAULT = const(3)
_OP_JOIN_GROUP = const(10)
_OP_SET_LEVEL = const(1)
_OP_SET_PROFILE = const(2)
_OVERRIDE_MAX_S = const(86400)
_PROFILE_STEPS_MAX = const(8)
_RES_BAD_ARGS = const(2)
_RES_FAILED = const(6)
_RES_OK = const(0)
_RES_UNKNOWN_OP = const(1)
_SEV_ALARM = const(2)
_SEV_WARNING = const(1)

_FAIL_MS = const(60000)
_OVER_MS = const(10000)
_CLEAR_MS = const(900000)  # 15 min: longer than an HID lamp's on-phase when cycling
_CYCLE_N = const(3)
_CYCLE_MS = const(3600000)
_MIN_CHECK = const(100)  # per mille: below that, current is too small to judge
_AMBIENT_MS = const(60000)  # a passing car's headlights must not switch the lamp
_HOLDOVER_MS = const(7 * 86400 * 1000)  # a crystal drifts ~2 s a day: a week is fine
_FAILSAFE_EVENT_MS = const(900000)  # boot without RTC: give time sync 15 minutes
_ALARM_BITS = const(_LS_LAMP_FAILURE | _LS_OVER_CURRENT | _LS_CYCLING | _LS_FAILSAFE)
# HAL storage: "lprof", the profile set over the air (written inline: a name would cost heap)


def parse_profile(args):
    """Flat [anchor, offset min, level %, ...] -> tuple of steps, or None if invalid."""
    n = len(args)
    if n == 0 or n % 3 or n > 3 * _PROFILE_STEPS_MAX:
        return None
    steps = []
    for i in range(0, n, 3):
        a, off, lv = args[i], args[i + 1], args[i + 2]
        if type(a) is not int or type(off) is not int or type(lv) is not int:
            return None
        if not (0 <= a <= 2 and -_OFFSET_MAX_MIN <= off <= _OFFSET_MAX_MIN and 0 <= lv <= 100):
            return None
        steps.append((a, off, lv))
    return tuple(steps)


def check(section):
    """Validated settings of the config's "lighting" section (ValueError names the key).

    The checks and their tables (SETTINGS, DEFAULT_PROFILE) are in
    firmware/lighting_cfg.py: loaded for the call and dropped again after it
    on a board (firmware.unload), since they run at boot only.
    """
    from firmware import lighting_cfg

    try:
        return lighting_cfg.check(section, parse_profile)
    finally:
        unload("lighting_cfg")


def __getattr__(name):
    # lighting.SETTINGS and lighting.DEFAULT_PROFILE, for the tools and the simulator (CPython)
    if name in ("SETTINGS", "DEFAULT_PROFILE"):
        from firmware import lighting_cfg

        return getattr(lighting_cfg, name)
    raise AttributeError(name)


class Lighting:
    KIND = _KIND_LIGHTING

    def __init__(self, cfg, hal, node):
        self.hal = hal
        self.node = node
        s = check(cfg.get("lighting") or {})
        self.s = s
        loc = cfg.get("location") or {}
        self._lat = loc.get("lat")
        self._lon = loc.get("lon", 0.0)
        self._lon_s = int(round(self._lon * 240))  # local mean time offset, s
        self.profile = s["profile"]
        self._load_profile()
        self._at = [0] * _PROFILE_STEPS_MAX  # tonight's plan: seconds after local noon
        self._levels = [0] * _PROFILE_STEPS_MAX
        self._n = 0
        self._cycle = None  # the noon-to-noon cycle planned
        self._lo = self._hi = 0  # local-time span (s) over which schedule() answers _now
        self._now = None
        self._sset = self._srise = 0
        self.flags = 0  # LS_* state bits
        self._alarms = 0  # LS_* bits whose EVENT is raised
        self._out = -1  # per mille on the PWM (-1: not written yet)
        self._on_ms = 0
        self._last_ms = hal.ticks_ms()
        self._t0 = None  # last valid wall time and its ticks
        self._t0_ms = 0
        self._no_time_ms = self._last_ms
        self._dark = None  # ambient sensor: dark (True/False) once known
        self._dark_since = None  # ticks since the sensor disagrees with _dark
        self._pir = 0
        self._boost_until = -1
        self._ovr_until = -1
        self._ovr = 0
        self.presence = 0
        self._low_ms = self._ok_ms = self._over_ms = self._over_ok_ms = 0
        self._low = False
        self._edges = [-_CYCLE_MS - 1] * _CYCLE_N  # ticks of the last outages, oldest first
        self.current_ma = 0
        self._energy_mj = 0  # energy below one Wh, mJ
        self._burn_ms = 0  # burning time below one minute
        self._power_w = s["power_w"]
        self.group = None  # multicast groups (firmware/group.py), loaded by a member only
        try:
            if hal.load("group"):
                from firmware import group

                self.group = group.load(hal, node)
        except Exception:
            pass  # unreadable: no group frame is taken (a join writes it again)
        self.failsafe()  # until the first step decides: on unless known day

    # -- persistence -------------------------------------------------------------

    def _load_profile(self):
        try:
            data = self.hal.load("lprof")
            if data is None:
                return  # nothing stored (and no reason to load the full CBOR codec for None)
            p = parse_profile(cbor.loads(data))
            if p is not None:
                self.profile = p
        except Exception:
            pass  # nothing stored, or unreadable: the provisioned profile stands

    def _save_profile(self):
        flat = []
        for st in self.profile:
            flat.extend(st)
        self.hal.save("lprof", cbor.dumps(flat))

    # -- the schedule ----------------------------------------------------------------

    def _plan(self, k):
        lat, lon = self._lat, self._lon
        base = self._lon_s - 43200  # cycle start is 00:00 UTC of day k + 43200 - lon_s
        sset = astro.sun_times_day(lat, lon, k)[1]
        srise = astro.sun_times_day(lat, lon, k + 1)[0]
        if sset is None:
            sset = 86400 if astro.polar_day(lat, lon, k) else 0
        else:
            sset += base
        srise = 86400 if srise is None else srise + 86400 + base
        if srise < sset:
            srise = sset
        mid = (sset + srise) // 2
        prev = 0
        i = 0
        steps = self.profile
        cal = getattr(self.node, "schedule", None)  # the runtime's [stored calendar or None, ...]
        if cal and cal[0]:
            # a calendar may give this night (its evening's date, k) another profile. Its code
            # loads for this, once a night, by a string (a name here costs heap at boot: a
            # qstr) and leaves again (firmware.unload): the node keeps only the calendar's bytes
            steps = __import__("firmware.calendar", None, None, ("profile",)).profile(cal[0], k) or steps
            unload("firmware.calendar")  # dotted: a short string would cost a qstr
        for a, off, lv in steps:
            # an offset counted into the night stops at its other end
            if a == _ANCHOR_SUNSET:
                t = sset + off * 60
                if off > 0 and t > srise:
                    t = srise
            elif a == _ANCHOR_SUNRISE:
                t = srise + off * 60
                if off < 0 and t < sset:
                    t = sset
            else:
                t = min(max(mid + off * 60, sset), srise)
            if t < prev:
                t = prev
            if t > 86400:
                t = 86400
            self._at[i] = prev = t
            self._levels[i] = lv
            i += 1
        self._n = i if sset < 86400 else 0
        self._sset, self._srise = sset, srise
        self._cycle = k

    def schedule(self, t):
        """(dark, profile level %) at Unix time t: the astronomical plan, no fail-safe."""
        lm = t + self._lon_s - 43200
        if self._lo <= lm < self._hi:
            return self._now  # still the segment of the plan found last time
        k = lm // 86400
        if k != self._cycle:
            self._plan(k)
        base = k * 86400
        rel = lm - base
        level = lo = 0
        hi = 86400
        for i in range(self._n):
            a = self._at[i]
            if a > rel:
                hi = a
                break
            level = self._levels[i]
            lo = a
        # the segment ends at the next step, sunset or sunrise (or the cycle's end)
        for a in (self._sset, self._srise):
            if a > rel:
                if a < hi:
                    hi = a
            elif a > lo:
                lo = a
        self._lo, self._hi = base + lo, base + hi
        self._now = r = (self._sset <= rel < self._srise, level)
        return r

    def _ambient_dark(self, now):
        mv = self.hal.adc_read_mv("ambient")
        on, off = self.s["ambient_on_mv"], self.s["ambient_off_mv"]
        if self._dark is None:
            self._dark = mv < off  # in the hysteresis band: dark, the safe side
            return self._dark
        want = True if mv < on else False if mv > off else self._dark
        if want == self._dark:
            self._dark_since = None  # ticks since the sensor disagrees with _dark
        elif self._dark_since is None:
            self._dark_since = now
        elif now - self._dark_since >= _AMBIENT_MS:
            self._dark = want
            self._dark_since = None  # ticks since the sensor disagrees with _dark
        return self._dark

    def _target(self, now):
        """(dark, level %) the schedule asks for now; sets or clears LS_FAILSAFE."""
        t = self.hal.time()
        if t is not None and self._lat is not None:
            self._t0, self._t0_ms = t, now
            self._no_time_ms = now
            self.flags &= ~_LS_FAILSAFE
            return self.schedule(t)
        self.flags |= _LS_FAILSAFE
        if self._lat is not None and self._t0 is not None and now - self._t0_ms < _HOLDOVER_MS:
            dark = self.schedule(self._t0 + (now - self._t0_ms) // 1000)[0]
        elif self.s["ambient_sensor"]:
            dark = self._ambient_dark(now)
        else:
            dark = True
        return dark, 100 if dark else 0

    # -- the control loop --------------------------------------------------------------

    async def run(self):
        while True:
            self.step()
            await self.hal.sleep_ms(self.s["tick_ms"])

    def step(self):
        hal = self.hal
        s = self.s
        now = hal.ticks_ms()
        dt = now - self._last_ms
        self._last_ms = now
        if hal.pin_read("pir"):
            if not self._pir and self.presence < 0xFFFF:
                self.presence += 1
            self._pir = 1
            self._boost_until = now + s["boost_s"] * 1000
        else:
            self._pir = 0
        if self._out > 0:
            self._meter(dt)  # the interval just ended ran at the output set before it
        dark, level = self._target(now)
        flags = self.flags & ~(_LS_BOOST | _LS_OVERRIDE | _LS_ON)
        if now < self._ovr_until:
            level = self._ovr
            flags |= _LS_OVERRIDE
        elif dark and now < self._boost_until and s["boost_level"] > level:
            level = s["boost_level"]
            flags |= _LS_BOOST
        if level * 10 != self._out:
            self._set_output(level * 10, dt, now)
        if self._out > 0:
            flags |= _LS_ON
        self.flags = flags
        if s["current_sensor"]:
            self._check_current(now, dt)
        if self._alarms or self.flags & _ALARM_BITS:
            self._alarm_events(now)

    def _set_output(self, target, dt, now):
        out = self._out
        if target < out and self.s["fade_s"]:
            fall = 1000 * dt // (self.s["fade_s"] * 1000)
            target = max(target, out - (fall if fall > 0 else 1))
        if target != out:
            if out <= 0 < target:
                self._on_ms = now
            self._out = target
            self.hal.pwm_write("lamp", target)

    # -- faults ----------------------------------------------------------------------

    def _check_current(self, now, dt):
        s = self.s
        ma = self.hal.adc_read_mv("lamp_current") * s["ma_per_v"] // 1000
        self.current_ma = ma
        full = s["full_ma"] or s["power_w"] * 1000 * 100 // (s["mains_v"] * 95)
        out = self._out
        if out > 0 and now - self._on_ms < s["settle_s"] * 1000:
            return
        expect = full * out // 1000
        if ma > expect * s["over_pct"] // 100 + full // 10:
            self._over_ms += dt
            self._over_ok_ms = 0
        else:
            self._over_ok_ms += dt
            self._over_ms = 0
        if self._over_ms >= _OVER_MS:
            self.flags |= _LS_OVER_CURRENT
        elif self._over_ok_ms >= _CLEAR_MS:
            self.flags &= ~_LS_OVER_CURRENT
        if out < _MIN_CHECK:
            return  # too dim (or off) to judge a lamp failure: states hold
        low = ma * 100 < expect * s["fail_pct"]
        if low:
            if not self._low:
                e = self._edges
                e.pop(0)
                e.append(now)
                if now - e[0] <= _CYCLE_MS:
                    self.flags = (self.flags | _LS_CYCLING) & ~_LS_LAMP_FAILURE
            self._low_ms += dt
            self._ok_ms = 0
            if self._low_ms >= _FAIL_MS and not self.flags & _LS_CYCLING:
                self.flags |= _LS_LAMP_FAILURE
        else:
            self._ok_ms += dt
            self._low_ms = 0
            if self._ok_ms >= _CLEAR_MS:
                self.flags &= ~_LS_LAMP_FAILURE
            if self._ok_ms >= _CYCLE_MS:
                self.flags &= ~_LS_CYCLING
        self._low = low

    def _alarm_events(self, now):
        want = self.flags & _ALARM_BITS
        if want & _LS_FAILSAFE and now - self._no_time_ms < _FAILSAFE_EVENT_MS:
            want &= ~_LS_FAILSAFE  # time sync after boot gets a grace period
        diff = want ^ self._alarms
        if not diff:
            return
        for bit, code, sev in (
            (_LS_LAMP_FAILURE, _EV_LAMP_FAILURE, _SEV_ALARM),
            (_LS_OVER_CURRENT, _EV_OVER_CURRENT, _SEV_ALARM),
            (_LS_CYCLING, _EV_CYCLING, _SEV_WARNING),
            (_LS_FAILSAFE, _EV_LIGHT_FAILSAFE, _SEV_WARNING),
        ):
            if diff & bit:
                on = 1 if want & bit else 0
                self.node.event(code, sev, self.current_ma if bit != _LS_FAILSAFE else 0, on)
        self._alarms = want

    # -- metering ------------------------------------------------------------------------

    def _meter(self, dt):  # step() calls it while the lamp is on
        if self.flags & _LS_LAMP_FAILURE:
            return
        store = self.node.store
        self._energy_mj += self._power_w * self._out * dt // 1000  # W x ms = mJ
        if self._energy_mj >= 3600000:
            store.add("wh", self._energy_mj // 3600000)
            self._energy_mj %= 3600000
        self._burn_ms += dt
        if self._burn_ms >= 60000:
            store.add("burn_s", self._burn_ms // 1000)
            self._burn_ms %= 1000

    # -- the runtime's interface -----------------------------------------------------------

    def power_dw(self):
        if self._out <= 0 or self.flags & _LS_LAMP_FAILURE:
            return 0
        return self._power_w * self._out // 100  # 0.1 W

    def report(self):
        store = self.node.store
        body = {
            _L_LEVEL: (max(self._out, 0) + 5) // 10,
            _L_POWER: min(self.power_dw(), 0xFFFF),
            _L_ENERGY: store.get("wh") & 0xFFFFFFFF,
            _L_STATE: self.flags,
            _L_HOURS: (store.get("burn_s") // 3600) & 0xFFFFFFFF,
            _L_PRESENCE: self.presence,
        }
        if self.s["current_sensor"]:
            body[_L_CURRENT] = min(max(self.current_ma, 0), 0xFFFF)
        self.presence = 0
        return _LIGHT, body

    def command(self, op, args):
        try:
            return self._command(op, args)
        except (TypeError, ValueError, IndexError):
            return _RES_BAD_ARGS, 0

    def _command(self, op, args):
        now = self.hal.ticks_ms()
        n = len(args)
        if op == _OP_SET_LEVEL:
            if n != 2 or not (0 <= args[0] <= 100 and 0 <= args[1] <= _OVERRIDE_MAX_S):
                return _RES_BAD_ARGS, 0
            if args[1] == 0:
                self._ovr_until = -1
                return _RES_OK, -1  # override cancelled: back to the profile
            self._ovr = args[0]
            self._ovr_until = now + args[1] * 1000
            return _RES_OK, args[0]
        if op == _OP_SET_PROFILE:
            p = parse_profile(args)
            if p is None:
                return _RES_BAD_ARGS, 0
            self.profile = p
            self._cycle = None  # replan tonight
            self._hi = 0
            try:
                self._save_profile()
            except OSError:
                return _RES_FAILED, len(p)  # applied, but lost at the next reboot
            return _RES_OK, len(p)
        if op == _OP_CLEAR_FAULT:
            if n:
                return _RES_BAD_ARGS, 0
            cleared = self.flags & (_LS_LAMP_FAILURE | _LS_OVER_CURRENT | _LS_CYCLING)
            self.flags &= ~cleared
            self._low_ms = self._ok_ms = self._over_ms = self._over_ok_ms = 0
            self._low = False
            for i in range(_CYCLE_N):
                self._edges[i] = -_CYCLE_MS - 1
            self._alarm_events(now)
            return _RES_OK, bin(cleared).count("1")
        if op == _OP_JOIN_GROUP:
            if self.group is None:
                from firmware import group

                self.group = group.load(self.hal, self.node)
            return self.group.join(args)
        return _RES_UNKNOWN_OP, 0

    def configure(self, settings):
        self._cycle = None  # replan tonight: the runtime calls this with {} for a new calendar
        self._hi = 0
        w = settings.get(_CFG_LAMP_POWER)
        if w is not None and 1 <= w <= _LAMP_POWER_MAX_W:
            self._power_w = w
            self.s["power_w"] = w

    def failsafe(self):
        """Lamp fully on unless the wall clock says it is day. Never raises."""
        try:
            self._ovr_until = -1
            dark = True
            t = self.hal.time()
            if t is not None and self._lat is not None:
                dark = self.schedule(t)[0]
            self._out = 1000 if dark else 0
        except Exception:
            self._out = 1000
        try:
            self.hal.pwm_write("lamp", self._out)
        except Exception:
            pass

    def open_alarms(self):
        return bin(self._alarms).count("1")
