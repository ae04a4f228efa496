# `machine` on the virtual board: the system functions only (reset, reset
# cause, unique id, watchdog), so tools that reset a board (mpremote reset,
# lumeau node flash) and a firmware's watchdog behave as on an ESP32.
# Peripherals (Pin, PWM, ADC, UART, ...) are NOT here: the virtual board has
# no hardware; a node's inputs and outputs come through the firmware's HAL and
# the `vboard` module (see vboard.py). Reset cause values are the ESP32 port's.

import _vbjs

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_CAUSES = {"power_on": PWRON_RESET, "hard": HARD_RESET, "watchdog": WDT_RESET, "soft": SOFT_RESET}


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


def freq():
    return 160000000


def idle():
    _vbjs.poll()


class WDT:
    """Hardware watchdog: once started it cannot be stopped, survives soft resets,
    and resets the board (reset_cause() == WDT_RESET) when not fed in time.
    The host enforces it, so it bites even a program stuck in a busy loop."""

    def __init__(self, id=0, timeout=5000):
        _vbjs.wdt_start(int(timeout))

    def feed(self):
        _vbjs.wdt_feed()
