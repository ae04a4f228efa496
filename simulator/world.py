"""The simulated world as each node's SimHAL sees it, and what it really used.

One `World` per run couples the world models (simulator/sun.py, weather.py,
soil.py, presence.py, sensors.py) to the nodes' HALs on the run's virtual
clock, and keeps the ground truth the results compare against:

Lamps (`LampWorld`):
- "ambient": outdoor illuminance at the lamp (sun and sky, sun.lux_at, with
  the weather's cloud factor) through sensors.ambient_mv, read when asked;
- "pir": high while a pedestrian is within range (presence.py); the PIR's
  hold time is the app's tick at least (HC-SR501-class modules hold 3 s to
  5 min, set on the module), so a coarse tick misses nobody;
- "lamp_current": what the driver draws at the level the node commands
  (sensors.lamp_current_ma), changed by an injected lamp fault: "open" draws
  nothing, "over_current" draws OVER_CURRENT_FACTOR x normal plus
  OVER_CURRENT_EXTRA of full current, "cycling" (an HID lamp at end of life)
  goes out for CYCLE_OFF_S after every CYCLE_ON_S lit;
- truth: energy = mains power actually drawn (current x 230 V x power
  factor, sensors.py), integrated between output changes (cycling exactly);
  how long an injected fault was visible (the lamp commanded on).

Irrigation controllers (`ControllerWorld`):
- valves from the node's outputs ("master", "zone1".."zone4"); a zone
  waters when its valve is open (or stuck open, and not stuck closed) and the
  line has pressure (master open, or no master valve fitted);
- "flow": pulses of the meter (sensors.flow_pulses' K-factor) at the rate of
  what passes it: the watering zones, a burst zone's `factor` x its flow (the
  sprinklers still get their share; the excess spills), and a leak's
  rate_l_min whatever the valves (a leak between the meter and the valves);
- "moisture1..4": each zone's FAO-56 bucket (soil.py) read as sensors.
  moisture_mv; "rain": the weather's rain sensor (3 mm in 6 h trips it);
- soil buckets step every WORLD_STEP_S with that interval's ET0 and rain and
  the irrigation the zone actually got; the day's interception (new_day) at
  each weather day, as simulator/baseline.py does;
- truth: litres through each meter, litres applied to each zone, and how
  much water each injected fault moved (or, stuck closed, kept from
  moving): a fault that moved none never showed (a burst in a zone that did
  not water after it) and cannot be expected to raise an alarm.

Times are Unix seconds (floats) of the virtual clock: `unix()`.
Limits: WORLD_STEP_S (60 s) for soil, moisture and the rain sensor; no
sensor noise; the lamp's energy counts from its controller's first output.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from typing import Any

from simulator import sensors, sun
from simulator.hal_sim import SimHAL
from simulator.ledger import LampLedger, SoilDay, ZoneLedger, available_fraction, close_interval, open_interval
from simulator.presence import PIR_HOLD_S, PIR_RANGE_M
from simulator.scenario import IrrigationNode, LampNode, Scenario
from simulator.soil import mm_from_litres
from simulator.virtual_loop import VirtualClock
from simulator.weather import Weather

WORLD_STEP_S = 60.0
CYCLE_ON_S = 600.0  # a cycling lamp: lit 10 min ...
CYCLE_OFF_S = 120.0  # ... out 2 min to cool, and again
OVER_CURRENT_FACTOR = 2.0
OVER_CURRENT_EXTRA = 0.2  # of full current, drawn even when dimmed or off
MAINS_V = 230.0
ZONE_PINS = ("zone1", "zone2", "zone3", "zone4")


class WorldHAL(SimHAL):
    """simulator.hal_sim.SimHAL without tick drift (the RTC's wall_ppm is kept), its hottest reads in one step each.

    A thousand nodes read the clock and their inputs at every tick; SimHAL's
    general path (drift, nested calls) then costs more than the app's own
    step. Same answers as SimHAL for drift_ppm = 0 (tests/test_sim_runner.py
    compares them); everything else is SimHAL's.
    """

    # The fields its hot reads use, as slots (a fixed offset in the object instead of a lookup
    # in an instance dict of some forty keys); SimHAL.__init__ sets them as before, and its
    # other fields stay in the instance's __dict__.
    # The lamp's two inputs read at every tick are kept here too ("pir": its state and until
    # when it holds; "lamp_current": an int), so a tick's reads touch this object only and not
    # the input dict or the LampWorld as well (a city's tick sweeps hundreds of nodes through
    # the CPU's cache: each further object a node's tick reads costs a miss).
    __slots__ = (
        "clock",
        "_boot_ms",
        "_wall_offset",
        "_wall_set",
        "wall_ppm",
        "drift_ppm",
        "_inputs",
        "pir",
        "pir_state",
        "pir_next",
        "lamp_mv",
    )
    clock: VirtualClock  # read as `clock.now_ms` directly (SimHAL takes any clock)

    def __init__(self, clock: VirtualClock, **kw: Any) -> None:
        if kw.get("drift_ppm"):
            raise ValueError("WorldHAL models no oscillator drift; use SimHAL")
        self.lamp_mv: int | None = None  # "lamp_current" when set to an int (set_adc), else None
        super().__init__(clock, **kw)
        self.pir: LampWorld | None = None  # the lamp whose PIR "pir" reads (LampWorld.bind), in one call
        self.pir_state = 0  # its last answer, good while clock.unix_now < pir_next
        self.pir_next = -math.inf

    def set_pin(self, name: str, value: Any) -> None:
        if name == "pir":
            self.pir = None  # an input set by hand wins over the lamp's
        super().set_pin(name, value)

    def set_adc(self, name: str, mv: Any) -> None:
        if name == "lamp_current":
            self.lamp_mv = mv if type(mv) is int else None
        super().set_adc(name, mv)

    def ticks_ms(self) -> int:
        return self.clock.now_ms - self._boot_ms

    def time(self) -> int | None:
        w = self._wall_offset
        if w is None:
            return None
        t = self.clock.now_ms - self._boot_ms
        if self.wall_ppm:  # the RTC's drift (SimHAL.wall_ppm): ticks keep the grid's pace
            w += int((t - self._wall_set) * self.wall_ppm / 1000000)
        return (t + w) // 1000

    def pin_read(self, name: str) -> int:
        p = self.pir
        if p is not None and name == "pir":  # LampWorld._pir_high's answer, kept here while it holds
            if self.clock.unix_now < self.pir_next:
                return self.pir_state
            high = self.pir_state = p._pir_high()
            self.pir_next = p._pir_next
            return high
        v = self._inputs.get(name, 0)
        if callable(v):
            v = v()
        return 1 if v else 0

    def adc_read_mv(self, name: str) -> int:
        if name == "lamp_current":  # a lamp's current (LampWorld._set_current), read every tick: as is
            mv = self.lamp_mv
            if mv is not None:
                return mv
        v = self._inputs.get(name, 0)
        if type(v) is int:
            return v
        return int(v() if callable(v) else v)


def _on_time(t0: float, t1: float, since: float) -> float:
    """Seconds lit within [t0, t1) of a lamp cycling since `since`."""
    period = CYCLE_ON_S + CYCLE_OFF_S

    def lit_until(t: float) -> float:
        x = max(0.0, t - since)
        k, rem = divmod(x, period)
        return k * CYCLE_ON_S + min(rem, CYCLE_ON_S)

    return lit_until(t1) - lit_until(t0)


class LampWorld:
    # the PIR's state, read at every tick (WorldHAL.pin_read), in slots; the rest in __dict__
    __slots__ = ("_pir_state", "_pir_next", "_pir", "_pir_i", "world", "__dict__")

    def __init__(self, node: LampNode, world: World, pir: list[tuple[float, float]]) -> None:
        self.node = node
        self.world = world
        self.full_ma = sensors.lamp_current_ma(1000, node.rated_power_w)
        self.level = 0  # per mille, as the node commands it
        self.fault: str | None = None  # None | "open" | "over_current" | "cycling"
        self.fault_since = 0.0
        self.energy_wh = 0.0  # drawn from the mains (truth)
        self.fault_shown_s = 0.0  # seconds the current fault was visible (lamp commanded on)
        self.ledger = LampLedger()  # fault-affected time and what it drew (simulator/ledger.py)
        self._t = world.start
        self._pir = pir
        self._pir_i = 0
        self._pir_state = 0
        self._pir_next = -math.inf  # the read's answer holds until then
        self.hal: Any = None

    # -- the HAL's inputs ------------------------------------------------------------

    def bind(self, hal: Any) -> None:
        """Wire a (new) HAL of this lamp's node to the world."""
        self.hal = hal
        hal.on_output = self._output
        hal.set_pin("pir", self._pir_high)
        if isinstance(hal, WorldHAL):
            hal.pir = self
        hal.set_adc("ambient", self._ambient_mv)
        self._set_current()

    def _pir_high(self) -> int:
        t = self.world.clock.unix_now
        if t < self._pir_next:  # polled every tick: most reads change nothing
            return self._pir_state
        ivs = self._pir
        i = self._pir_i
        n = len(ivs)
        while i < n and ivs[i][1] <= t:
            i += 1
        self._pir_i = i
        if i < n and ivs[i][0] <= t:
            self._pir_state, self._pir_next = 1, ivs[i][1]
        else:
            self._pir_state, self._pir_next = 0, (ivs[i][0] if i < n else math.inf)
        return self._pir_state

    def _ambient_mv(self) -> int:
        t = self.world.unix()
        return sensors.ambient_mv(sun.lux_at(self.node.lat, self.node.lon, t, self.world.weather.sky(t)))

    def _ma(self, lit: bool = True) -> float:
        healthy = self.full_ma * self.level / 1000.0
        f = self.fault
        if f is None:
            return healthy
        if f == "open":
            return 0.0
        if f == "over_current":
            return OVER_CURRENT_FACTOR * healthy + OVER_CURRENT_EXTRA * self.full_ma
        return healthy if lit else 0.0  # cycling

    def _cycling_mv(self) -> int:
        t = self.world.unix()
        lit = (t - self.fault_since) % (CYCLE_ON_S + CYCLE_OFF_S) < CYCLE_ON_S
        return sensors.lamp_current_mv(self._ma(lit))

    def _set_current(self) -> None:
        if self.hal is None:
            return
        if self.fault == "cycling":
            self.hal.set_adc("lamp_current", self._cycling_mv)
        else:
            self.hal.set_adc("lamp_current", sensors.lamp_current_mv(self._ma()))

    def _output(self, name: str, value: int) -> None:
        if name == "lamp":
            self.integrate(self.world.unix())
            self.level = value
            self._set_current()

    # -- faults and truth ---------------------------------------------------------------

    def set_fault(self, mode: str | None) -> None:
        t = self.world.unix()
        self.integrate(t)
        self.fault = mode
        self.fault_since = t
        self.fault_shown_s = 0.0
        if mode is None:
            close_interval(self.ledger.fault_intervals, t)
        else:
            open_interval(self.ledger.fault_intervals, t)
        self._set_current()

    def integrate(self, t: float) -> None:
        if t <= self._t:
            return
        dt = t - self._t
        if self.fault is not None and (self.level > 0 or self.fault == "over_current"):
            self.fault_shown_s += dt  # a failed lamp shows only when it should be lit
        if self.fault == "cycling":
            lit = _on_time(self._t, t, self.fault_since)
            ma_s = self._ma(True) * lit + self._ma(False) * (dt - lit)
        else:
            lit = 0.0 if self.fault == "open" else dt
            ma_s = self._ma() * dt
        wh = ma_s / 1000.0 * MAINS_V * sensors.POWER_FACTOR / 3600.0
        self.energy_wh += wh
        if self.fault is not None:
            led = self.ledger
            led.fault_wh += wh
            led.healthy_fault_wh += (
                self.full_ma * self.level / 1000.0 * dt / 1000.0 * MAINS_V * sensors.POWER_FACTOR / 3600.0
            )
            if self.level > 0:
                led.dark_s += dt - lit
        self._t = t


class ControllerWorld:
    def __init__(self, node: IrrigationNode, world: World, master: bool, pulses_per_l: int) -> None:
        self.node = node
        self.world = world
        self.master_fitted = master
        self.pulses_per_l = pulses_per_l
        self.zones = node.zones
        self.buckets = [z.bucket() for z in node.zones]
        # fault-affected time, water and stress per zone, and the soil per day (simulator/ledger.py)
        self.ledgers = [ZoneLedger() for _ in node.zones]
        self.soil_days: list[SoilDay] = []
        # the node's app latched shut (burst, excess flow): set by the engine at each boot
        self.latched: Callable[[], bool] | None = None
        self._affected = [False] * len(node.zones)
        self._soil_t = world.start
        self.valves = 0  # zone bits as the node drives them
        # battery nodes' energy model (simulator/energy.py): valve movements, runs started, open time
        self.valve_moves = 0
        self.runs = 0
        self.open_s = 0.0
        self._opened_at: float | None = None
        self.master = False
        self.leak_l_min = 0.0
        self.burst: dict[int, float] = {}  # zone number -> factor
        self.stuck: dict[int, str] = {}  # zone number -> "open" | "closed"
        self.meter_l = 0.0  # through the meter (truth)
        # litres each active fault made flow (or kept from flowing): did it show at all?
        self.fault_litres: dict[str, float] = {}
        self.applied_l = [0.0] * len(node.zones)  # reached each zone's turf
        self._irr_mm = [0.0] * len(node.zones)  # applied since the last soil step
        self._meter_l_min = 0.0
        self._shows: dict[str, float] = {}
        self._turf_l_min = [0.0] * len(node.zones)
        self._t = world.start
        self.hal: Any = None

    def bind(self, hal: Any) -> None:
        self.hal = hal
        # a reset drops the solenoids: every valve closes until the node drives it again
        self.integrate(self.world.unix())
        if self._opened_at is not None:
            self.open_s += self.world.unix() - self._opened_at
            self._opened_at = None
        self.valves = 0
        self.master = False
        hal.on_output = self._output
        self._update_rates()
        self.update_sensors(self.world.rain_wet)
        self.refresh_affected()

    def _output(self, name: str, value: int) -> None:
        if name == "master" or name in ZONE_PINS:
            self._count_valves(name, value)
        if name == "master":
            self.integrate(self.world.unix())
            self.master = bool(value)
            self._update_rates()
        elif name in ZONE_PINS:
            z = ZONE_PINS.index(name)
            if z < len(self.zones):
                self.integrate(self.world.unix())
                self.valves = self.valves | (1 << z) if value else self.valves & ~(1 << z)
                self._update_rates()
        self.refresh_affected()

    def _count_valves(self, name: str, value: int) -> None:
        self.valve_moves += 1
        t = self.world.unix()
        if name in ZONE_PINS:
            if value and self._opened_at is None:
                self.runs += 1
                self._opened_at = t
            elif not value and self._opened_at is not None and not self.valves & ~(1 << ZONE_PINS.index(name)):
                self.open_s += t - self._opened_at
                self._opened_at = None

    def valve_open_s(self) -> float:
        """Seconds with a zone valve open so far (the run in progress counted to now)."""
        extra = self.world.unix() - self._opened_at if self._opened_at is not None else 0.0
        return self.open_s + extra

    def set_fault(self, kind: str, params: dict[str, Any], on: bool) -> None:
        self.integrate(self.world.unix())
        if on:
            self.fault_litres[kind] = 0.0
        if kind == "leak":
            self.leak_l_min = float(params["rate_l_min"]) if on else 0.0
        elif kind == "burst":
            if on:
                self.burst[int(params["zone"])] = float(params["factor"])
            else:
                self.burst.pop(int(params["zone"]), None)
        elif kind == "stuck_valve":
            if on:
                self.stuck[int(params["zone"])] = str(params["state"])
            else:
                self.stuck.pop(int(params["zone"]), None)
        self._update_rates()
        self.refresh_affected()

    def refresh_affected(self) -> None:
        """Open or close each zone's fault-affected interval (ledger.py says what counts), at now."""
        t = self.world.unix()
        latched = self.latched is not None and self.latched()
        for i, z in enumerate(self.zones):
            now = latched or z.number in self.burst or z.number in self.stuck
            if now != self._affected[i]:
                self.integrate(t)  # the water so far belongs to the state it flowed in
                self._affected[i] = now
                (open_interval if now else close_interval)(self.ledgers[i].affected, t)

    def _update_rates(self) -> None:
        pressure = self.master or not self.master_fitted
        meter = self.leak_l_min
        shows: dict[str, float] = {}
        if self.leak_l_min:
            shows["leak"] = self.leak_l_min
        for i, z in enumerate(self.zones):
            stuck = self.stuck.get(z.number)
            commanded = bool(self.valves >> i & 1)
            open_ = stuck == "open" or (commanded and stuck != "closed")
            f = z.flow_l_min if open_ and pressure else 0.0
            self._turf_l_min[i] = f
            factor = self.burst.get(z.number, 1.0)
            meter += f * factor
            if f and factor != 1.0:
                shows["burst"] = shows.get("burst", 0.0) + f * (factor - 1.0)
            if stuck == "open" and f and not commanded:
                shows["stuck_valve"] = shows.get("stuck_valve", 0.0) + f
            if stuck == "closed" and commanded and pressure:
                shows["stuck_valve"] = shows.get("stuck_valve", 0.0) + z.flow_l_min  # water that did not come
        self._shows = shows
        self._meter_l_min = meter
        if self.hal is not None:
            self.hal.set_pulse_rate("flow", meter * self.pulses_per_l / 60.0)

    def integrate(self, t: float) -> None:
        if t <= self._t:
            return
        minutes = (t - self._t) / 60.0
        self.meter_l += self._meter_l_min * minutes
        for k, v in self._shows.items():
            self.fault_litres[k] = self.fault_litres.get(k, 0.0) + v * minutes
        for i, z in enumerate(self.zones):
            litres = self._turf_l_min[i] * minutes
            if litres:
                self.applied_l[i] += litres
                self._irr_mm[i] += mm_from_litres(litres, z.area_m2)
                if self._affected[i]:
                    self.ledgers[i].applied_affected_l += litres
                else:
                    self.ledgers[i].applied_clean_l += litres
        self._t = t

    def step_soil(self, t: float, et0_mm: float, rain_mm: float, new_day: tuple[int, float] | None) -> None:
        """One soil step to t; `new_day` (day number, its ET0) when a weather day begins with it."""
        self.refresh_affected()  # a latch set since the last output (the app sets it after closing)
        self.integrate(t)
        dt = t - self._soil_t
        self._soil_t = t
        if new_day is not None:
            self.soil_days.append(SoilDay(new_day[0], self._fractions(), self._fractions(), [0.0] * len(self.buckets)))
        today = self.soil_days[-1] if self.soil_days else None
        for i, b in enumerate(self.buckets):
            if new_day is not None:
                b.new_day(new_day[1])
            if b.ks < 1.0:  # past readily available water at the step's start (as Eq. 85 takes Ks)
                if self._affected[i]:
                    self.ledgers[i].stress_affected_s += dt
                else:
                    self.ledgers[i].stress_clean_s += dt
                if today is not None:
                    today.stress_s[i] += dt
            b.step(et0_mm, rain_mm, self._irr_mm[i])
            self._irr_mm[i] = 0.0
        if today is not None:
            today.end = self._fractions()

    def _fractions(self) -> list[float]:
        return [round(available_fraction(b.dr_mm, b.taw_mm), 6) for b in self.buckets]

    def update_sensors(self, rain_wet: bool) -> None:
        hal = self.hal
        if hal is None:
            return
        hal.set_pin("rain", 1 if rain_wet else 0)
        for i, b in enumerate(self.buckets):
            hal.set_adc("moisture%d" % (i + 1), sensors.moisture_mv(max(0.0, min(1.0, b.theta))))


class World:
    def __init__(
        self,
        scenario: Scenario,
        lamps: Sequence[LampNode],
        controllers: Sequence[IrrigationNode],
        clock: Any,
        pir_hold_s: float,
        master: bool = True,
        pulses_per_l: int = 450,
    ) -> None:
        self.scenario = scenario
        self.clock = clock  # a VirtualClock whose unix0 is the scenario's start
        self.unix: Callable[[], float] = lambda: clock.unix_now
        self.start = scenario.start_unix
        self.end = scenario.end_unix
        self.weather: Weather = scenario.weather_model()
        self.rain_wet = self.weather.rain_sensor_wet(self.start)
        hold = max(PIR_HOLD_S, pir_hold_s)
        self.lamps: dict[str, LampWorld] = {}
        by_street: dict[str, list[LampNode]] = {}
        for lamp in lamps:
            by_street.setdefault(lamp.street, []).append(lamp)
        for street, ls in by_street.items():
            pres = scenario.presence(street)
            ivs = pres.pir_intervals([lamp.s_m for lamp in ls], PIR_RANGE_M, hold, self.start, self.end)
            for lamp, iv in zip(ls, ivs):
                self.lamps[lamp.name] = LampWorld(lamp, self, iv)
        self.controllers: dict[str, ControllerWorld] = {
            c.name: ControllerWorld(c, self, master, pulses_per_l) for c in controllers
        }
        self._day: int | None = None
        self._t = self.start

    def step(self) -> None:
        """Advance soil, moisture probes and the rain sensor to now (every WORLD_STEP_S)."""
        t = self.unix()
        if t <= self._t:
            return
        w = self.weather
        d = w.day(self._t)
        new_day = None
        if d.day != self._day:
            self._day = d.day
            new_day = (d.day, d.et0_mm)
        et0 = w.et0_mm(self._t, t)
        rain = w.rain_mm(self._t, t)
        self.rain_wet = w.rain_sensor_wet(t)
        for c in self.controllers.values():
            c.step_soil(t, et0, rain, new_day)
            c.update_sensors(self.rain_wet)
        self._t = t

    def integrate(self) -> None:
        """Bring every lamp's and meter's truth up to now (at the end, and for hourly figures)."""
        t = self.unix()
        for lamp in self.lamps.values():
            lamp.integrate(t)
        for c in self.controllers.values():
            c.integrate(t)

    def energy_wh(self) -> float:
        return sum(lamp.energy_wh for lamp in self.lamps.values())

    def water_l(self) -> float:
        return sum(c.meter_l for c in self.controllers.values())

    def applied_l(self) -> float:
        return sum(sum(c.applied_l) for c in self.controllers.values())

    def truth_by_node(self) -> dict[str, float]:
        """What each node's meter should read: Wh a lamp drew, litres through a controller's meter."""
        out = {n: lw.energy_wh for n, lw in self.lamps.items()}
        out.update({n: c.meter_l for n, c in self.controllers.items()})
        return out

    def accounts(self) -> dict[str, dict[str, Any]]:
        """Every node's ledger as plain data (simulator/ledger.py), by node name."""
        out: dict[str, dict[str, Any]] = {n: {"lamp": lw.ledger.to_dict()} for n, lw in self.lamps.items()}
        for n, c in self.controllers.items():
            out[n] = {"zones": [z.to_dict() for z in c.ledgers], "days": [d.to_dict() for d in c.soil_days]}
        return out


def local_standard_offset_min(tz: _dt.tzinfo, at_unix: float) -> int:
    """UTC offset of a zone's standard time (daylight saving removed), minutes."""
    local = _dt.datetime.fromtimestamp(at_unix, tz)
    off = local.utcoffset() or _dt.timedelta(0)
    dst = local.dst() or _dt.timedelta(0)
    return int((off - dst).total_seconds() // 60)
