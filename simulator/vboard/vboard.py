# The virtual board's hardware hook: what a firmware's main.py uses on the
# virtual board (`lumeau sim board`) in place of pins and radio chips.
#
#   try:
#       import vboard          # present only on the virtual board
#   except ImportError:
#       vboard = None
#
#   vboard.VIRTUAL             True
#   vboard.info()              {"name", "fs_size", "block_size", "uarts"}
#   vboard.reset_cause()       "power_on" | "soft" | "hard" | "watchdog"
#   vboard.UART(1)             the board's second serial port, with machine.UART's
#                              byte API: write(buf) -> n, read([n]) -> bytes or None,
#                              readinto(buf[, n]) -> n or None, any() -> n.
#
# The board's `machine` module (machine.py here) emulates its peripherals at the
# API level (Pin, PWM, ADC, UART, RTC, WDT), so a node's main.py and its board
# HAL (firmware/hal_machine.py) run unchanged; the host sets inputs and reads
# outputs (simulator/board.py: --control).
#
# The UART is the radio hook: on the host it is a pseudo-terminal
# (`lumeau sim board --uart1 PATH`), so a wired node's serial link (protocol/serial.py
# framing through firmware/radio.py's UART radio) reaches a gateway that opens that
# path as a serial port, or the simulator's radio channel that does. Pins, PWM and
# ADC have no hardware here: a node on the virtual board uses the simulated HAL
# (simulator/hal_sim.py) for its sensors and actuators, on the board's real clock.
#
# Limits: 4096 bytes buffered per UART on receive (the oldest are dropped beyond,
# like a driver ring buffer); writes never block.

import json
import binascii
import _vbjs

VIRTUAL = True


def info():
    return json.loads(_vbjs.board_json())


def reset_cause():
    return _vbjs.reset_cause()


class UART:
    def __init__(self, id=1, baudrate=115200, **kwargs):
        if id not in info()["uarts"]:
            raise ValueError(
                "UART(%d) is not connected on this virtual board: start it with"
                " `lumeau sim board --uart %d=PATH` (PATH: the serial port the gateway reads)" % (id, id)
            )
        self.id = id
        self.baudrate = baudrate

    def init(self, baudrate=115200, **kwargs):
        self.baudrate = baudrate

    def any(self):
        return _vbjs.uart_any(self.id)

    def write(self, buf):
        return _vbjs.uart_write(self.id, binascii.hexlify(buf).decode())

    def read(self, n=-1):
        if n is None or n < 0:
            n = 1 << 30
        data = binascii.unhexlify(_vbjs.uart_read(self.id, n))
        return data if data else None

    def readinto(self, buf, n=-1):
        if n is None or n < 0 or n > len(buf):
            n = len(buf)
        data = self.read(n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def flush(self):
        pass
