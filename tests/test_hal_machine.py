"""firmware.hal_machine on CPython, above a fake `machine` module (the only seam).

The fake follows MicroPython's documented machine API (Pin, PWM, ADC, WDT,
RTC, reset_cause constants) and a `time` module with the board's wrapping
ticks_ms (2^30 ms period), injected into the HAL for this test only.
"""

from __future__ import annotations

import sys
import time as _time
import types

import pytest

from firmware.hal_machine import MachineHAL
from protocol import messages as m

PERIOD = 1 << 30  # time.ticks_ms() period on boards


class FakeTime:
    def __init__(self, epoch_year=1970):
        self.raw = PERIOD - 5000  # close to a wrap
        self.unix = 946684800 + 100  # RTC just after the epoch: power-on state
        self.epoch_year = epoch_year

    def ticks_ms(self):
        return self.raw

    def ticks_diff(self, a, b):
        return ((a - b + PERIOD // 2) % PERIOD) - PERIOD // 2

    def advance(self, ms):
        self.raw = (self.raw + ms) % PERIOD
        self.unix += ms // 1000

    def time(self):
        return self.unix - (946684800 if self.epoch_year == 2000 else 0)

    def gmtime(self, t=None):
        if t is None:
            t = self.time()
        base = 946684800 if self.epoch_year == 2000 else 0
        g = _time.gmtime(t + base)
        return (g.tm_year, g.tm_mon, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec, g.tm_wday, g.tm_yday)


def fake_machine(cause="PWRON_RESET", clock: FakeTime | None = None):
    log: list[tuple] = []

    class Pin:
        IN, OUT, PULL_UP, IRQ_FALLING = 1, 2, 3, 4
        levels: dict[int, int] = {}

        def __init__(self, n, mode=None, pull=None, value=None):
            self.n, self.mode, self.pull = n, mode, pull
            if value is not None:
                self.value(value)
            log.append(("pin", n, mode, pull))

        def value(self, v=None):
            if v is None:
                return Pin.levels.get(self.n, 0)
            Pin.levels[self.n] = v
            log.append(("out", self.n, v))

        def irq(self, trigger, handler):
            log.append(("irq", self.n, trigger))
            self.handler = handler
            Pin.handlers[self.n] = (self, handler)

    Pin.handlers = {}

    class PWM:
        def __init__(self, pin, freq):
            self.pin, self.freq = pin, freq

        def duty_u16(self, d):
            log.append(("pwm", self.pin.n, self.freq, d))

    class ADC:
        mv: dict[int, int] = {}

        def __init__(self, pin):
            self.pin = pin

        def read_uv(self):
            return ADC.mv.get(self.pin.n, 0) * 1000 + 999

    class WDT:
        def __init__(self, timeout):
            log.append(("wdt", timeout))

        def feed(self):
            log.append(("feed",))

    class RTC:
        def datetime(self, dt):
            log.append(("rtc", dt))
            if clock is not None:
                y, mo, d, wd, h, mi, s, _ = dt
                clock.unix = int(_time.mktime((y, mo, d, h, mi, s, 0, 0, 0)) - _time.timezone)

    mod = types.SimpleNamespace(
        Pin=Pin,
        PWM=PWM,
        ADC=ADC,
        WDT=WDT,
        RTC=RTC,
        PWRON_RESET=1,
        HARD_RESET=2,
        WDT_RESET=3,
        DEEPSLEEP_RESET=4,
        SOFT_RESET=5,
        log=log,
        reset=lambda: log.append(("reset",)),
    )
    mod.reset_cause = lambda: getattr(mod, cause)
    return mod


PINS = {"lamp": 25, "pir": 26, "rain": 27, "zone1": 12, "master": 13, "lamp_current": 34, "supply": 35, "flow": 14}


def make(tmp_path, cause="PWRON_RESET", epoch_year=1970):
    clock = FakeTime(epoch_year)
    mach = fake_machine(cause, clock)
    hal = MachineHAL(
        PINS, storage_dir=str(tmp_path / "state"), adc_scale={"supply": (11, 1)}, machine=mach, time_module=clock
    )
    return hal, mach, clock


def test_outputs_safe_at_construction(tmp_path):
    hal, mach, _ = make(tmp_path)
    outs = {e[1]: e[2] for e in mach.log if e[0] == "out"}
    assert outs == {12: 0, 13: 0}  # valves closed
    pwm = [e for e in mach.log if e[0] == "pwm"]
    assert pwm == [("pwm", 25, 1000, 65535)]  # the lamp fully on until the app decides


def test_io_by_logical_name(tmp_path):
    hal, mach, _ = make(tmp_path)
    mach.Pin.levels[26] = 1
    assert hal.pin_read("pir") == 1
    mach.Pin.levels[27] = 0  # the rain contact closed to ground
    assert hal.pin_read("rain") == 1
    hal.pin_write("zone1", 5)
    assert mach.Pin.levels[12] == 1
    hal.pwm_write("lamp", 400)
    hal.pwm_write("lamp", 2000)
    assert [e[3] for e in mach.log if e[0] == "pwm"][-2:] == [400 * 65535 // 1000, 65535]
    mach.ADC.mv[34] = 1234
    mach.ADC.mv[35] = 1100
    assert hal.adc_read_mv("lamp_current") == 1234
    assert hal.adc_read_mv("supply") == 12100  # the 11:1 divider undone
    assert hal.pulses("flow") == 0
    pin, handler = mach.Pin.handlers[14]
    for _ in range(7):
        handler(pin)
    assert hal.pulses("flow") == 7
    with pytest.raises(KeyError, match="no pin configured for zone4"):
        hal.pin_write("zone4", 1)


def test_ticks_widened_across_the_wrap(tmp_path):
    hal, _, clock = make(tmp_path)
    seen = [hal.ticks_ms()]
    for _ in range(40):
        clock.advance(1000)
        seen.append(hal.ticks_ms())
    assert seen == list(range(0, 41000, 1000))  # monotonic through the 2^30 wrap


@pytest.mark.parametrize("epoch_year", [1970, 2000])
def test_wall_clock_untrusted_after_power_on_until_set(tmp_path, epoch_year):
    hal, mach, clock = make(tmp_path, epoch_year=epoch_year)
    assert hal.time() is None
    hal.set_time(1_800_000_000)
    assert hal.time() == 1_800_000_000
    rtc = [e for e in mach.log if e[0] == "rtc"][0][1]
    assert rtc[:3] == tuple(_time.gmtime(1_800_000_000)[:3])
    assert rtc[7] == 0
    hal.set_time(1_800_000_000, 250)  # a TIME's milliseconds reach the RTC (microseconds on the ESP32)
    assert [e for e in mach.log if e[0] == "rtc"][1][1][7] == 250_000


def test_wall_clock_trusted_after_a_soft_reset_when_plausible(tmp_path):
    clock = FakeTime()
    clock.unix = 1_790_000_000
    hal = MachineHAL(PINS, str(tmp_path / "s"), machine=fake_machine("SOFT_RESET"), time_module=clock)
    assert hal.reset_cause() == m.RST_SOFT and hal.time() == 1_790_000_000
    clock.unix = 946_684_800 + 50  # an RTC that lost its time
    assert hal.time() is None


@pytest.mark.parametrize(
    "cause, code",
    [
        ("PWRON_RESET", m.RST_POWER_ON),
        ("WDT_RESET", m.RST_WATCHDOG),
        ("DEEPSLEEP_RESET", m.RST_DEEPSLEEP),
        ("HARD_RESET", m.RST_HARD),
    ],
)
def test_reset_causes(tmp_path, cause, code):
    hal, _, _ = make(tmp_path, cause)
    assert hal.reset_cause() == code


def test_storage_atomic_files_and_watchdog(tmp_path):
    hal, mach, _ = make(tmp_path)
    assert hal.load("fc") is None
    hal.save("fc", b"\x01\x02")
    hal.save("fc", b"\x03")
    assert hal.load("fc") == b"\x03"
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["fc"]
    hal.wdt_feed()  # before start: nothing to feed
    hal.wdt_start(8000)
    hal.wdt_feed()
    assert [e for e in mach.log if e[0] in ("wdt", "feed")] == [("wdt", 8000), ("feed",)]
    hal.reset()
    assert mach.log[-1] == ("reset",)


def test_no_machine_import_at_module_level():
    assert "machine" not in sys.modules or not hasattr(sys.modules["machine"], "Pin")
    src = open(sys.modules[MachineHAL.__module__].__file__).read()
    top = [line for line in src.splitlines() if line.startswith(("import ", "from "))]
    assert all("machine" not in line and "time" not in line for line in top), top


def test_storage_load_only_no_such_file_is_absent(tmp_path, monkeypatch):
    # issue 20: a single I/O error while reading the counter record was taken
    # for "absent", and the counter restarted at 0 under the same key
    import builtins
    import errno

    from firmware.store import StorageError, Store

    hal, _, _ = make(tmp_path)
    assert hal.load("nothing") is None  # ENOENT: absent
    s = Store(hal)
    s.open()
    for _ in range(300):
        s.next_uplink()
    real_open = builtins.open

    def flaky_open(path, mode="r", *a, **kw):
        if str(path).endswith("/fc") and "r" in mode:
            raise OSError(errno.EIO, "I/O error")
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", flaky_open)
    with pytest.raises(OSError):
        hal.load("fc")
    s2 = Store(hal)
    with pytest.raises(StorageError):
        s2.open()
    monkeypatch.setattr(builtins, "open", real_open)
    s3 = Store(hal)
    s3.open()
    assert s3.next_uplink() == 512  # never 0 again
