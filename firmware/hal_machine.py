# The HAL on a real board (ESP32, RP2040) through MicroPython's `machine`.
#
# Channels are the logical names of firmware/hal.py, mapped to GPIO numbers
# by the config's "pins" section. Outputs are created driven to their safe
# level at once (valves closed, lamp PWM fully on: a street is never dark
# while the node boots). `machine` and `time` are imported in the
# constructor (or passed in by a test), never at module level.
#
# Limits and choices:
# - ticks_ms is widened from time.ticks_ms() (which wraps at 2^30 ms on
#   boards, about 12 days): correct as long as it is read at least once per
#   half period (6 days); the runtime reads it every few seconds.
# - The wall clock is the board's RTC. It is trusted only after set_time, or
#   after a reset that keeps the RTC running (soft, watchdog, deep sleep)
#   when it shows a year >= _TRUST_YEAR; after power-on it starts at the
#   port's epoch and is not trusted. Ports with a 2000 epoch are converted.
# - ADC: read_uv() where the port has it (ESP32, calibrated), else
#   read_u16() scaled to _ADC_REF_MV. `adc_scale` (name -> (mul, div)) undoes
#   a voltage divider, e.g. {"supply": (11, 1)}.
# - Pulse counters: a falling-edge IRQ adds 1 to a preallocated int per
#   channel (no allocation in the handler); good to a few kHz, plenty for a
#   flow meter (a typical one gives 7.5 pulses/s per L/min).
# - PWM at _PWM_HZ: above what the eye sees, inside every LED driver's
#   dimming input range.
# - Storage: one file per key in `storage_dir`, written to key + ".tmp"
#   then renamed: atomic on LittleFS (the default filesystem of both ports).
#   load() returns None only for ENOENT; any other error is raised.


const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_RST_BROWNOUT = const(5)
_RST_DEEPSLEEP = const(3)
_RST_HARD = const(1)
_RST_POWER_ON = const(0)
_RST_SOFT = const(4)
_RST_WATCHDOG = const(2)
_PWM_HZ = const(1000)
_ADC_REF_MV = const(3300)
_TRUST_YEAR = const(2024)
_UNIX_2000 = const(946684800)
# PWM outputs created fully on: "lamp" (every digital output starts at 0); inputs with a
# pull-up: "rain" (rain sensors are dry contacts to ground). Inline: a name would cost heap.


# Implements firmware.hal.HAL without subclassing it, so a board never loads
# hal.py's abstract methods (tests/test_node_consts.py checks every method is here).
class MachineHAL:
    def __init__(self, pins, storage_dir="/state", adc_scale=None, machine=None, time_module=None):
        if machine is None:
            import machine
        if time_module is None:
            import time as time_module
        self._m = machine
        self._t = time_module
        self._pins = pins
        self._adc_scale = adc_scale or {}
        self._storage = storage_dir
        # one entry per channel name at most (the board's pin map): bounded by the board
        self._in = {}
        self._out = {}
        self._pwm = {}
        self._adc = {}
        self._count = {}
        self._irq = {}
        self._last = time_module.ticks_ms()
        self._acc = 0
        self._wdt = None
        self._synced = False
        self._epoch = _UNIX_2000 if time_module.gmtime(0)[0] == 2000 else 0
        self._cause = self._map_cause(machine.reset_cause())
        import errno

        self._enoent = errno.ENOENT  # 2 on the boards; the port's own number, never hardcoded
        try:
            import os

            os.mkdir(storage_dir)
        except OSError:
            pass  # exists
        # outputs to their safe state before anything else runs
        for name in pins:
            if name.startswith("zone") or name == "master":
                self._digital_out(name).value(0)
            elif name == "lamp":
                self.pwm_write(name, 1000)

    # -- time -------------------------------------------------------------------

    def ticks_ms(self):
        t = self._t
        raw = t.ticks_ms()
        self._acc += t.ticks_diff(raw, self._last)
        self._last = raw
        return self._acc

    def time(self):
        if not self._synced:
            if self._cause == _RST_POWER_ON or self._cause == _RST_BROWNOUT:
                return None
            if self._t.gmtime()[0] < _TRUST_YEAR:
                return None
        return self._t.time() + self._epoch

    def set_time(self, unix_s, ms=0):
        y, mo, d, h, mi, s, wd, _ = self._t.gmtime(unix_s - self._epoch)[:8]
        # RTC.datetime: (year, month, day, weekday, hours, minutes, seconds, subseconds): microseconds
        # on the ESP32 (a TIME's milliseconds: SPEC §4 error budget); ports without them ignore it
        self._m.RTC().datetime((y, mo, d, wd, h, mi, s, ms * 1000))
        self._synced = True

    async def sleep_ms(self, ms):
        import asyncio

        await asyncio.sleep_ms(ms)

    # -- I/O ------------------------------------------------------------------------

    def _pin_no(self, name):
        n = self._pins.get(name)
        if n is None:
            raise KeyError("no pin configured for %s" % name)
        return n

    def _digital_out(self, name):
        p = self._out.get(name)
        if p is None:
            Pin = self._m.Pin
            p = self._out[name] = Pin(self._pin_no(name), Pin.OUT, value=0)
        return p

    def pin_read(self, name):
        p = self._in.get(name)
        if p is None:
            Pin = self._m.Pin
            pull = Pin.PULL_UP if name == "rain" else None
            p = self._in[name] = Pin(self._pin_no(name), Pin.IN, pull)
        v = p.value()
        return 1 - v if name == "rain" else v  # a closed contact reads 0: "wet"

    def pin_write(self, name, value):
        self._digital_out(name).value(1 if value else 0)

    def pwm_write(self, name, permille):
        p = self._pwm.get(name)
        if p is None:
            p = self._pwm[name] = self._m.PWM(self._m.Pin(self._pin_no(name)), freq=_PWM_HZ)
        if permille < 0:
            permille = 0
        elif permille > 1000:
            permille = 1000
        p.duty_u16(permille * 65535 // 1000)

    def adc_read_mv(self, name):
        a = self._adc.get(name)
        if a is None:
            a = self._adc[name] = self._m.ADC(self._m.Pin(self._pin_no(name)))
        if hasattr(a, "read_uv"):
            mv = a.read_uv() // 1000
        else:
            mv = a.read_u16() * _ADC_REF_MV // 65535
        sc = self._adc_scale.get(name)
        if sc is not None:
            mv = mv * sc[0] // sc[1]
        return mv

    def pulses(self, name):
        if name not in self._count:
            self._count[name] = 0
            Pin = self._m.Pin
            p = Pin(self._pin_no(name), Pin.IN, Pin.PULL_UP)

            def _edge(_pin, name=name, c=self._count):
                c[name] += 1

            p.irq(trigger=Pin.IRQ_FALLING, handler=_edge)
            self._irq[name] = p
        return self._count[name]

    # -- persistence ------------------------------------------------------------------

    def load(self, key):
        # Only "no such file" means absent. Any other OSError (EIO, a flash
        # read error, ENOMEM...) propagates: the store then refuses to open
        # rather than restart a counter at 0 (SPEC §4 "Counter persistence").
        try:
            f = open(self._storage + "/" + key, "rb")
        except OSError as e:
            if e.args and e.args[0] == self._enoent:
                return None
            raise
        with f:
            return f.read()

    def save(self, key, data):
        import os

        path = self._storage + "/" + key
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)

    # -- system -------------------------------------------------------------------------

    def wdt_start(self, timeout_ms):
        self._wdt = self._m.WDT(timeout=timeout_ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def _map_cause(self, c):
        mm = self._m
        for attr, code in (
            ("PWRON_RESET", _RST_POWER_ON),
            ("HARD_RESET", _RST_HARD),
            ("WDT_RESET", _RST_WATCHDOG),
            ("DEEPSLEEP_RESET", _RST_DEEPSLEEP),
            ("SOFT_RESET", _RST_SOFT),
            ("BROWNOUT_RESET", _RST_BROWNOUT),
        ):
            if getattr(mm, attr, None) == c:
                return code
        return _RST_HARD

    def reset_cause(self):
        return self._cause

    def reset(self):
        self._m.reset()

    def free_heap(self):
        import gc

        return gc.mem_free()
