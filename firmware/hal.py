# The hardware abstraction every firmware module goes through.
#
# A HAL object is passed to the runtime and the apps; nothing in firmware/
# reaches for `machine` or `time` itself (see firmware/README.md). I/O is by
# logical channel name, not pin number: the board HAL maps names to pins from
# the config's "pins" section, the simulated HAL keeps a value per name. That
# keeps apps identical on an ESP32, an RP2040, in tests and in the simulator.
#
# Channel names used by the apps:
#   digital in   "pir" (presence), "rain" (rain sensor, 1 = wet)
#   digital out  "zone1".."zone4" (valves, 1 = open), "master" (master valve)
#   pwm          "lamp" (driver dimming input, 0..1000 per mille)
#   adc (mV)     "lamp_current", "ambient", "moisture1".."moisture4", "supply"
#   pulses       "flow" (cumulative count from the flow meter)


class HAL:
    """Interface: subclasses implement every method. Units are in the names."""

    # -- time -----------------------------------------------------------
    def ticks_ms(self):
        """Monotonic milliseconds since boot; never wraps (widened by the HAL)."""
        raise NotImplementedError

    def time(self):
        """Unix seconds (int) from the wall clock, or None while it is unknown."""
        raise NotImplementedError

    def set_time(self, unix_s):
        """Set the wall clock (time sync from the gateway)."""
        raise NotImplementedError

    async def sleep_ms(self, ms):
        """The only way firmware waits: a virtual clock in the simulator."""
        raise NotImplementedError

    # -- I/O --------------------------------------------------------------
    def pin_read(self, name):
        """Digital input: 0 or 1."""
        raise NotImplementedError

    def pin_write(self, name, value):
        """Digital output: 0 or 1."""
        raise NotImplementedError

    def pwm_write(self, name, permille):
        """PWM duty 0..1000."""
        raise NotImplementedError

    def adc_read_mv(self, name):
        """Analog input in millivolts (int)."""
        raise NotImplementedError

    def pulses(self, name):
        """Cumulative pulse count of a counter input (int, never decreases)."""
        raise NotImplementedError

    # -- persistence ---------------------------------------------------------
    def load(self, key):
        """Bytes stored under `key` (a short ASCII name), or None."""
        raise NotImplementedError

    def save(self, key, data):
        """Store bytes under `key` atomically: after a power cut, old or new, never half."""
        raise NotImplementedError

    # -- system -------------------------------------------------------------
    def wdt_start(self, timeout_ms):
        raise NotImplementedError

    def wdt_feed(self):
        raise NotImplementedError

    def reset_cause(self):
        """One of protocol.messages.RST_*."""
        raise NotImplementedError

    def reset(self):
        """Hard reset of the board (the simulator restarts the node)."""
        raise NotImplementedError

    def free_heap(self):
        """Free heap in bytes (gc.mem_free() on a board)."""
        raise NotImplementedError
