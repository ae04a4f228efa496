# The board HAL of a battery node (irrigation.battery = 1): MachineHAL plus deep sleep, its
# wake sources, RTC memory and pulse outputs for latching valves, all through `machine` (and
# `esp32` for the wake pins). Imported only on such a node (firmware/main.py), so mains nodes
# keep MachineHAL's heap. The simulated twin is simulator/hal_sim.py (SimHAL).
#
#   deepsleep(ms, flow, rain)  never returns: the board sleeps, then boots again from main.py.
#       Wakes on the timer; on the flow meter's input changing level when `flow` (a pulse: the
#       meter's open collector pulls it low); on the rain sensor's input changing level when
#       `rain` (wet or dry). ESP32: esp32.wake_on_ext0 (rain) and wake_on_ext1 (flow); each
#       wakes on the level opposite to the one read now, so an edge either way wakes it. Both
#       pins must be RTC GPIOs (0, 2, 4, 12-15, 25-27, 32-39). RP2040: MicroPython's
#       machine.deepsleep wakes on its timer only (the pins are not wake sources there): a
#       leak or rain is seen at the next timer wake.
#   wake_reason()  0 timer (or a boot), 1 flow (ext1), 2 rain (ext0).
#   rtc_save(data) / rtc_load()  bytes kept across deep sleep: machine.RTC().memory() (ESP32,
#       2 KB of RTC slow memory, no flash wear); a port without it (RP2040) keeps them in the
#       storage file "rtc" (LittleFS spreads the writes: one per sleep; 100 a day is 36,500 a
#       year, inside its wear levelling over a 1 MB filesystem by far).
#   pulse_out(name, ms)  drive `name` high for `ms`, then low: one coil pulse of a latching
#       valve through an H-bridge input ("zone1" opens zone 1, "zone1_close" closes it).
#       Blocks for `ms` (at most 500 ms, below the watchdog's 2 s minimum).

from firmware.hal_machine import MachineHAL

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_WAKE_FLOW = const(1)
_WAKE_RAIN = const(2)


class BatteryHAL(MachineHAL):
    # Names: every name a module brings is interned for good on the node (bench/README.md), so
    # the esp32 module's constants are written as their values (WAKEUP_ALL_LOW is False,
    # WAKEUP_ANY_HIGH True; machine.EXT0_WAKE 2, EXT1_WAKE 3: ESP-IDF's ESP_SLEEP_WAKEUP_EXT0/1),
    # and its functions are looked up by strings over 10 characters, which are not interned
    # until used (at the sleep: on an ESP32 they are the firmware's own names anyway).

    def deepsleep(self, ms, flow=False, rain=False):
        m = self._m
        try:
            import esp32  # type: ignore[import-not-found]  # the ESP32 port's module

            for name, on, arm in (("rain", rain, "wake_on_ext0"), ("flow", flow, "wake_on_ext1")):
                if on:
                    p = m.Pin(self._pin_no(name), m.Pin.IN, m.Pin.PULL_UP)
                    high = p.value() == 0  # wake on the other level: an edge either way
                    getattr(esp32, arm)(p if name == "rain" else (p,), high)
        except ImportError:
            pass  # RP2040: the timer only (see the header)
        m.deepsleep(ms)

    def wake_reason(self):
        m = self._m
        if not hasattr(m, "wake_reason"):
            return 0
        try:
            import esp32  # type: ignore[import-not-found]  # noqa: F401  # the ESP32 port: its numbers below
        except ImportError:
            return 0  # another port: its pins are not wake sources (see the header)
        r = m.wake_reason()
        return _WAKE_FLOW if r == 3 else _WAKE_RAIN if r == 2 else 0

    def rtc_save(self, data):
        rtc = self._m.RTC()
        if hasattr(rtc, "memory"):
            rtc.memory(data)
        else:
            self.save("rtc", data)

    def rtc_load(self):
        rtc = self._m.RTC()
        if hasattr(rtc, "memory"):
            return rtc.memory()
        return self.load("rtc")

    def pulse_out(self, name, ms):
        p = self._digital_out(name)
        p.value(1)
        self._t.sleep_ms(ms)
        p.value(0)
