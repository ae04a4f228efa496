# `machine` on the virtual board: the board's peripherals at the API level,
# so a firmware's own board HAL (firmware/hal_machine.py) and its UART radio
# run unchanged. There is no hardware behind them: inputs are values the host
# sets (`lumeau sim board --control`, simulator/board.py), outputs are values
# the host can read, UARTs are host pseudo-terminals (`--uart N`).
#
#   Pin       IN/OUT, pulls, value(), on()/off(), irq() (falling/rising edges
#             = pulses the host injects, handlers run between the board's waits)
#   PWM       duty_u16(), duty(), freq(), deinit()
#   ADC       read_u16(), read_uv() (millivolts set by the host; 3300 mV = 65535)
#   UART      vboard.UART: the --uart N pty
#   RTC       datetime(): setting it moves time.time()/gmtime()/localtime()
#   WDT       resets the board when not fed (enforced by the host)
#   reset(), soft_reset(), reset_cause(), unique_id(), freq(), idle(),
#   disable_irq()/enable_irq()
#   SPI, SoftSPI, I2C, SoftI2C: no devices on this board: constructing one
#   raises OSError saying so (a LoRa node needs radio.type "uart" here).
#
# Reset cause values are the ESP32 port's.

import time
import _vbjs

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_CAUSES = {"power_on": PWRON_RESET, "hard": HARD_RESET, "watchdog": WDT_RESET, "soft": SOFT_RESET}
ADC_FULL_SCALE_MV = 3300
IRQ_CALLS_MAX = 1000  # handler calls per pin per service: a flood of pulses cannot stall the board
_irq_pins = []


def reset():
    _vbjs.reset("hard")  # never returns: the board restarts


def soft_reset():
    raise SystemExit


def reset_cause():
    return _CAUSES.get(_vbjs.reset_cause(), PWRON_RESET)


def unique_id():
    import hashlib
    import json

    return hashlib.sha256(json.loads(_vbjs.board_json())["name"]).digest()[:6]


def freq(*args):
    return 160000000


def idle():
    _vbjs.poll()


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def _service():
    """Run the IRQ handlers of pins the host pulsed (called between the board's waits)."""
    for p in _irq_pins:
        n = _vbjs.io_take_pulses(p._id)
        if n > IRQ_CALLS_MAX:
            n = IRQ_CALLS_MAX
        for _ in range(n):
            p._handler(p)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None, **kwargs):
        self._id = id
        self._mode = Pin.IN
        self._pull = None
        self._handler = None
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None, **kwargs):
        if mode != -1 and mode is not None:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self._mode == Pin.OUT:
                return _vbjs.io_get("out", self._id, 0)
            default = 1 if self._pull == Pin.PULL_UP else 0
            return _vbjs.io_get("pin", self._id, default)
        _vbjs.io_set("out", self._id, 1 if v else 0)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, **kwargs):
        self._handler = handler
        if handler is None:
            if self in _irq_pins:
                _irq_pins.remove(self)
        elif self not in _irq_pins:
            _irq_pins.append(self)
        return self

    def __repr__(self):
        return "Pin(%d)" % self._id


def _pin_id(pin):
    return pin._id if isinstance(pin, Pin) else pin


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=None, **kwargs):
        self._id = _pin_id(pin)
        self._freq = freq
        if duty_u16 is not None:
            self.duty_u16(duty_u16)

    def duty_u16(self, v=None):
        if v is None:
            return _vbjs.io_get("pwm", self._id, 0)
        _vbjs.io_set("pwm", self._id, max(0, min(65535, int(v))))

    def duty(self, v=None):  # ESP32's 10-bit duty
        if v is None:
            return self.duty_u16() >> 6
        self.duty_u16(int(v) * 65535 // 1023)

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f

    def deinit(self):
        _vbjs.io_set("pwm", self._id, 0)


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None, **kwargs):
        self._id = _pin_id(pin)

    def atten(self, a):
        pass

    def read_uv(self):
        return _vbjs.io_get("adc", self._id, 0) * 1000

    def read_u16(self):
        mv = _vbjs.io_get("adc", self._id, 0)
        return max(0, min(65535, mv * 65535 // ADC_FULL_SCALE_MV))

    def read(self):  # ESP32's 12-bit read
        return self.read_u16() >> 4


def UART(id, baudrate=115200, **kwargs):
    import vboard

    return vboard.UART(id, baudrate)


class WDT:
    """Once started it cannot be stopped, survives soft resets, and resets the
    board (reset_cause() == WDT_RESET) when not fed in time. The host enforces
    it, so it bites even a program stuck in a busy loop."""

    def __init__(self, id=0, timeout=5000):
        _vbjs.wdt_start(int(timeout))

    def feed(self):
        _vbjs.wdt_feed()


_rtc_offset = 0
_time = time.time
_gmtime = time.gmtime
_localtime = time.localtime


def _now():
    return int(_time()) + _rtc_offset  # an int, as on a board (the port returns a float)


def _gm(t=None):
    return _gmtime(_now() if t is None else t)


def _local(t=None):
    return _localtime(_now() if t is None else t)


time.time = _now
time.gmtime = _gm
time.localtime = _local


class RTC:
    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        global _rtc_offset
        if dt is None:
            y, mo, d, h, mi, s, wd, _ = _gm()
            return (y, mo, d, wd, h, mi, s, 0)
        y, mo, d, wd, h, mi, s = dt[:7]
        _rtc_offset = 0
        _rtc_offset = time.mktime((y, mo, d, h, mi, s, 0, 0)) - int(_time())

    def init(self, dt):
        self.datetime(dt)


class _NoDevice:
    def __init__(self, *args, **kwargs):
        raise OSError(
            "the virtual board has no %s devices (no radio chip): a node uses radio type "
            "'uart' here" % type(self).__name__
        )


class SPI(_NoDevice):
    pass


class SoftSPI(_NoDevice):
    pass


class I2C(_NoDevice):
    pass


class SoftI2C(_NoDevice):
    pass
