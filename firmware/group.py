# A lamp's multicast groups (SPEC §5 "Groups"): the keys it was given by
# join_group, the next group counter it takes per group, and the continuous
# receive of a member on a LoRa modem (Listener, below). Loaded only by a lamp
# that is (or becomes) a member of a group: firmware/lighting.py imports it on
# the first join_group, or at boot when a record is stored. The names a lamp
# without a group loads (this module's, the app's attribute, the storage key)
# are one: "group". Every new name costs a node heap a qstr (the lighting
# node's qstr pool is nearly full: a 6th pool costs some 4.6 KB,
# bench/README.md), so this one module holds what a member runs, and its
# attributes, methods and arguments reuse names the lamp has interned already
# (`active`, `_until`, `_listening`, `mode`, `rx`, `take`, `put`, `save`).
#
# HAL storage "group": per group 28 bytes, addr u32, key generation u32, next
# group counter u32, group key (16). Written before a join answers ok and
# before a group frame acts (as the downlink window, SPEC §4): a reboot never
# takes a group frame twice, and a frame whose counter could not be written is
# not acted on. The node's flash holds its root key already (config.json), so
# the group key is kept the same way.
#
# Continuous receive (LoRa class C), SPEC §5 "Groups", "Listening": on a LoRa
# modem (firmware/radio_lora.py, micropython-lib's async `lora` driver) load()
# wraps the node's LoRaRadio in a Listener. The runtime of a member keeps a
# receiver task calling recv(60 s) between its uplinks (firmware/runtime.py
# `_receiver`) beside its one sender (send, then the receive windows:
# recv(rx_window_ms()), well under a second). The driver serves one operation
# at a time (AsyncModem blocks each on one ThreadSafeFlag: two waiters on it
# would break asyncio), so the Listener orders them:
# - send and a receive window come first: they stop the listening (standby()
#   ends the driver's recv(); they wait until it has returned), retune the
#   modem to the uplink's channel and SF, and run as before;
# - the listening tunes the modem to the group channel (GROUP_FREQ_HZ, GROUP_SF;
#   IQ inverted as for every downlink) and receives there, but only when no send
#   or window is under way nor due: _HOLD_TX_MS after an uplink (RX1 opens
#   980 ms after its end) and _HOLD_RX_MS after a window (the next one opens at
#   once when the gateway says more are queued).
# The listening never transmits: the duty cycle is the sender's, unchanged.

from firmware import unload

# protocol/nodegroup.py (the key unwrap, the MIC) runs at a join and for each group frame heard, a
# few times a day: loaded by name for each and dropped after (firmware/__init__.py unload), its
# code out of a member's heap in between (bench/README.md)
const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.groupcast / messages numbers, as private consts (tests/test_node_consts.py checks them)
_GROUPS_MAX = const(4)
_JOIN_ARGS = const(7)
_GROUP_ADDR_MAX = const(0xFFFF)
_RES_OK = const(0)
_RES_BAD_ARGS = const(2)
_RES_REFUSED = const(4)
_RES_FAILED = const(6)
_GROUP_FREQ_HZ = const(869525000)
_GROUP_SF = const(9)
_GROUP_BW_KHZ = const(125)
_WINDOW_MAX_MS = const(1000)  # a recv() shorter than this is a receive window (at most 342 ms at SF12)
_HOLD_TX_MS = const(1100)  # after an uplink: RX1 opens RX1_DELAY_MS - RX_EARLY_MS (980 ms) after its end
_HOLD_RX_MS = const(100)  # after a window; also the step at which a held listener looks again
_STOP_WAIT_MS = const(2000)  # the driver looks at least every second: never wait forever for it
_HOLD_JOIN_MS = const(5000)  # a join is heard in a window whose burst goes on (4 x 342 ms at SF12 at most)


class Groups:
    def __init__(self, hal, keys):
        self.hal = hal
        self.keys = keys
        # [addr, gen, next counter, group key]; the MIC key is derived for each frame heard (one a
        # day or so): held, its HMAC pads cost some 300 B of heap per group (bench/README.md)
        self.slots = []
        data = hal.load("group") or b""
        for n in range(0, len(data) - 27, 28):
            a = int.from_bytes(data[n : n + 4], "big")
            k = bytes(data[n + 12 : n + 28])
            gen = int.from_bytes(data[n + 4 : n + 8], "big")
            self.slots.append([a, gen, int.from_bytes(data[n + 8 : n + 12], "big"), k])

    def save(self, slots):
        out = b""
        for s in slots:
            out += s[0].to_bytes(4, "big") + s[1].to_bytes(4, "big") + s[2].to_bytes(4, "big") + s[3]
        self.hal.save("group", out)

    def join(self, args):
        """join_group [addr, gen, next, w0..w3] (the key, wrapped) or [addr] (leave) -> (result, gen)."""
        n = len(args)
        addr = args[0] if n else 0
        if not (1 <= addr <= _GROUP_ADDR_MAX and (n == 1 or n == _JOIN_ARGS)):
            return _RES_BAD_ARGS, 0
        old = None
        slots = []
        for s in self.slots:
            if s[0] == addr:
                old = s
            else:
                slots.append(s)
        gen = 0
        if n > 1:
            gen, nxt = args[1], args[2]
            if gen < 0 or nxt < 0:
                return _RES_BAD_ARGS, 0
            if old is not None and gen < old[1]:
                return _RES_REFUSED, old[1]  # an older key never comes back
            if old is not None and gen == old[1] and nxt < old[2]:
                nxt = old[2]  # the same key again: never looser than what was taken
            if len(slots) >= _GROUPS_MAX:
                return _RES_REFUSED, 0
            w = bytearray(16)
            for i in range(4):
                w[4 * i : 4 * i + 4] = (args[3 + i] & 0xFFFFFFFF).to_bytes(4, "big")
            nodegroup = __import__("protocol.nodegroup", None, None, ("mask",))
            k = nodegroup.mask(self.keys, addr, gen, w)
            unload("protocol.nodegroup")
            slots.append([addr, gen, nxt, k])
        try:
            self.save(slots)
        except OSError:
            return _RES_FAILED, 0  # nothing changed: the gateway retries
        self.slots = slots
        return _RES_OK, gen

    def check(self, f):
        """A parsed GROUP_COMMAND frame -> its COMMAND body (CBOR), None when it is for a group
        this lamp is not in, False when refused (MIC, replay, not written). Refused changes nothing."""
        for s in self.slots:
            if s[0] == f.node_id:
                was = s[2]
                if f.counter < was or f.encrypted:
                    return False
                nodegroup = __import__("protocol.nodegroup", None, None, ("mask",))
                ok = nodegroup.verify(nodegroup.mic_key(s[3], s[0]), f.raw)
                unload("protocol.nodegroup")
                if not ok:
                    return False
                s[2] = f.counter + 1
                try:
                    self.save(self.slots)
                except OSError:
                    s[2] = was
                    return False
                return f.body
        return None


class Listener:
    """A LoRaRadio (radio_lora) that listens on the group channel whenever it does not send or
    hold a receive window. Everything else (band, max_frame, sf, airtime_ms, ...) is the radio's."""

    def __init__(self, hal, radio):
        self.hal = hal
        self.radio = radio
        self.active = 0  # sends and receive windows under way
        # hal.ticks_ms() before which the listening does not start: a join_group is taken inside a
        # receive window, whose further windows still use the bare radio
        self._until = hal.ticks_ms() + _HOLD_JOIN_MS
        self._listening = False  # the driver's recv() on the group channel is under way
        self.mode = False  # the modem is set to the group channel, not the uplink's
        self.rx = 0  # frames heard while listening

    def __getattr__(self, name):
        return getattr(self.radio, name)

    async def take(self):
        # the modem for a send or a window (the caller counted itself in `active`): the listening
        # stopped, the uplink's settings back
        if self._listening:
            self.radio.modem.standby()  # its "soft IRQ" ends the listening recv(): it returns None
            for _ in range(_STOP_WAIT_MS):
                if not self._listening:
                    break
                await self.hal.sleep_ms(1)
        if self.mode:
            self.mode = False
            self.radio.configure()  # the whole uplink configuration again

    def put(self, ms):
        # the modem given back by a send or a window; the listening waits `ms` more
        self.active -= 1
        t = self.hal.ticks_ms() + ms
        if t > self._until:
            self._until = t

    def configure(self, sf=None, tx_power=None, freq_hz=None, bw_hz=None):
        self.radio.configure(sf, tx_power, freq_hz, bw_hz)
        self.mode = False  # never while listening: a CONFIG is heard in a window (SPEC §5 "ADR")

    async def send(self, frame):
        self.active += 1
        try:
            await self.take()
            return await self.radio.send(frame)
        finally:
            self.put(_HOLD_TX_MS)

    async def recv(self, timeout_ms):
        hal = self.hal
        if timeout_ms < _WINDOW_MAX_MS:
            self.active += 1
            try:
                await self.take()
                return await self.radio.recv(timeout_ms)
            finally:
                self.put(_HOLD_RX_MS)
        end = hal.ticks_ms() + timeout_ms
        while self.active or hal.ticks_ms() < self._until:
            now = hal.ticks_ms()
            if now >= end:
                return None
            await hal.sleep_ms(min(max(self._until - now, _HOLD_RX_MS), end - now))
        left = end - hal.ticks_ms()
        if left <= 0:
            return None
        if not self.mode:
            # as the gateway sends a GROUP_COMMAND (gateway/multicast.py); IQ stays the node's, inverted
            self.radio.modem.configure(
                {"freq_khz": _GROUP_FREQ_HZ // 1000, "sf": _GROUP_SF, "bw": str(_GROUP_BW_KHZ), "coding_rate": 5}
            )
            self.mode = True
        self._listening = True
        try:
            r = await self.radio.recv(left)
        finally:
            self._listening = False
        if r is not None:
            self.rx += 1
        return r


def load(hal, node):
    """The groups of the lamp `node` (firmware.runtime.Node). From now on its radio listens
    between uplinks: a LoRaRadio through a Listener; any other radio (a wire, the simulator's,
    the tests') already hears between uplinks, or never does. Once: an app restarted by the
    runtime loads its groups again."""
    r = node.radio
    if type(r) is not Listener and getattr(r, "bridge", None) is False:  # a LoRaRadio of a node (never a bridge)
        node.radio = Listener(hal, r)
    return Groups(hal, node.keys)
