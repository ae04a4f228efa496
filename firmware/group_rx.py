# Continuous receive (LoRa class C) for a lamp in a multicast group, on a LoRa
# modem (firmware/radio_lora.py, micropython-lib's async `lora` driver): SPEC §5
# "Groups", "Listening". Loaded only for a member: firmware/group.py wraps the
# node's LoRaRadio in a Listener when a lamp has (or takes) a group, so a lamp in
# no group loads none of these names and runs its radio exactly as before.
#
# The runtime of a member keeps a receiver task calling recv(60 s) between its
# uplinks (firmware/runtime.py `_receiver`) beside its one sender (send, then
# the receive windows: recv(rx_window_ms()), well under a second). The driver
# serves one operation at a time (AsyncModem blocks each on one ThreadSafeFlag:
# two waiters on it would break asyncio), so the Listener orders them:
# - send and a receive window come first: they stop the listening (standby()
#   ends the driver's recv(); they wait until it has returned), retune the
#   modem to the uplink's channel and SF, and run as before;
# - the listening tunes the modem to the group channel (GROUP_FREQ_HZ, GROUP_SF;
#   IQ inverted as for every downlink) and receives there, but only when no send
#   or window is under way nor due: _HOLD_TX_MS after an uplink (RX1 opens
#   980 ms after its end) and _HOLD_RX_MS after a window (the next one opens at
#   once when the gateway says more are queued).
# The listening never transmits: the duty cycle is the sender's, unchanged.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.groupcast numbers, as private consts (tests/test_node_consts.py checks them)
_GROUP_FREQ_HZ = const(869525000)
_GROUP_SF = const(9)
_WINDOW_MAX_MS = const(1000)  # a recv() shorter than this is a receive window (at most 342 ms at SF12)
_HOLD_TX_MS = const(1100)  # after an uplink: RX1 opens RX1_DELAY_MS - RX_EARLY_MS (980 ms) after its end
_HOLD_RX_MS = const(100)  # after a window; also the step at which a held listener looks again
_STOP_WAIT_MS = const(2000)  # the driver looks at least every second: never wait forever for it
_HOLD_JOIN_MS = const(5000)  # a join is heard in a window whose burst goes on (4 x 342 ms at SF12 at most)


class Listener:
    """A LoRaRadio (radio_lora) that listens on the group channel whenever it does not send or
    hold a receive window. Everything else (band, max_frame, sf, airtime_ms, ...) is the radio's."""

    def __init__(self, hal, radio):
        self.hal = hal
        self.radio = radio
        self.busy = 0  # sends and receive windows under way
        # hal.ticks_ms() before which the listening does not start: a join_group is taken inside a
        # receive window, whose further windows still use the bare radio
        self.until = hal.ticks_ms() + _HOLD_JOIN_MS
        self.listening = False  # the driver's recv() on the group channel is under way
        self.tuned = False  # the modem is set to the group channel, not the uplink's
        self.heard = 0  # frames heard while listening

    def __getattr__(self, name):
        return getattr(self.radio, name)

    async def _take(self):
        # the modem for a send or a window (the caller counted itself in `busy`): the listening
        # stopped, the uplink's settings back
        if self.listening:
            self.radio.modem.standby()  # its "soft IRQ" ends the listening recv(): it returns None
            for _ in range(_STOP_WAIT_MS):
                if not self.listening:
                    break
                await self.hal.sleep_ms(1)
        if self.tuned:
            self.tuned = False
            self.radio.configure()  # the whole uplink configuration again

    def _give(self, hold_ms):
        self.busy -= 1
        t = self.hal.ticks_ms() + hold_ms
        if t > self.until:
            self.until = t

    def configure(self, sf=None, tx_power=None, freq_hz=None, bw_hz=None):
        self.radio.configure(sf, tx_power, freq_hz, bw_hz)
        self.tuned = False  # never while listening: a CONFIG is heard in a window (SPEC §5 "ADR")

    async def send(self, frame):
        self.busy += 1
        try:
            await self._take()
            return await self.radio.send(frame)
        finally:
            self._give(_HOLD_TX_MS)

    async def recv(self, timeout_ms):
        hal = self.hal
        if timeout_ms < _WINDOW_MAX_MS:
            self.busy += 1
            try:
                await self._take()
                return await self.radio.recv(timeout_ms)
            finally:
                self._give(_HOLD_RX_MS)
        end = hal.ticks_ms() + timeout_ms
        while self.busy or hal.ticks_ms() < self.until:
            now = hal.ticks_ms()
            if now >= end:
                return None
            await hal.sleep_ms(min(max(self.until - now, _HOLD_RX_MS), end - now))
        left = end - hal.ticks_ms()
        if left <= 0:
            return None
        if not self.tuned:
            # as the gateway sends a GROUP_COMMAND (gateway/multicast.py); IQ stays the node's, inverted
            self.radio.modem.configure(
                {"freq_khz": _GROUP_FREQ_HZ // 1000, "sf": _GROUP_SF, "bw": "125", "coding_rate": 5}
            )
            self.tuned = True
        self.listening = True
        try:
            r = await self.radio.recv(left)
        finally:
            self.listening = False
        if r is not None:
            self.heard += 1
        return r


def wrap(hal, radio):
    """The node's radio for a member: a LoRaRadio listens through a Listener; any other radio
    (a wire, the simulator's, the tests') already hears between uplinks, or never does. Once:
    an app restarted by the runtime loads its groups again."""
    if (
        type(radio) is not Listener and getattr(radio, "bridge", None) is False
    ):  # a LoRaRadio of a node (a bridge is never a member)
        return Listener(hal, radio)
    return radio
