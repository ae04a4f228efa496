# Persistent node state on the HAL's key-value storage (hal.load / hal.save,
# which replace a key atomically: after a power cut, old or new, never half).
#
# Records, each sealed with the first 4 bytes of its SHA-256 so a corrupted
# flash page is detected instead of trusted:
#
#   "fc"   uplink counter reservation: `reserved`, 8 bytes big-endian (it can
#          reach 2^32, one past the last counter). SPEC §4: at boot
#          next = reserved, then reserved = next + R is written and read
#          back BEFORE anything is sent; when next reaches reserved it is
#          written again. A reboot skips at most R-1 counters, never reuses one.
#   "dl"   downlink state: the highest accepted downlink counter (u32;
#          0xffffffff: none yet, as after a tool's frame only),
#          then, once a commissioning tool was heard, the highest accepted
#          tool counter (u32, >= TOOL_COUNTER_BASE: SPEC §4, the other half
#          of the counter space, its own window), then the results of the
#          last _CMD_MEMORY commands (id u32, result u8, value i32), so a
#          COMMAND repeated after a lost CMD_ACK is answered with its first
#          result even across a reboot. (Length 4 + 9k without the tool
#          counter, 8 + 9k with it: never ambiguous.) Written on every
#          accepted downlink (a few a day). After a reboot each replay window
#          is top = stored, every bit seen: stricter, never looser (SPEC §4).
#   "tot"  app totals (energy Wh, burning hours, volume L, ...): JSON of
#          name -> int. Kept in RAM; written at most every TOTALS_FLUSH_MS
#          (and on demand before a reboot), so a power cut loses at most that
#          much of a total. One hour = 24 writes a day, 8,760 a year: far
#          inside the 10,000-100,000 erase cycles of NOR flash once the
#          filesystem's wear levelling (LittleFS) spreads them.
#   "cfg"  settings changed over the air (CONFIG, set_interval): JSON list
#          of [CFG_* key, value], applied over the provisioned file at boot.
#
# A write that fails (OSError) or does not read back is a StorageError. For
# the counter that is fatal to sending, on purpose: without a reservation on
# flash a counter could be reused after the next reboot.

import hashlib
import json
import struct

from protocol.frame import MAX_COUNTER, REPLAY_WINDOW, TOOL_COUNTER_BASE, ReplayWindow

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

R = 256  # counters reserved per write (SPEC §4)
_CMD_MEMORY = const(4)  # command results remembered for idempotency
TOTALS_FLUSH_MS = 3600 * 1000
_SEAL = const(4)

KEY_UP = "fc"
KEY_DOWN = "dl"
KEY_TOTALS = "tot"
KEY_CFG = "cfg"

_ALL_SEEN = (1 << REPLAY_WINDOW) - 1
_NO_TOP = 0xFFFFFFFF  # "dl": no gateway downlink accepted yet (its counters stop below 2^31)


class StorageError(Exception):
    """Persistent state could not be written or read back, or is corrupted."""


class CounterExhausted(StorageError):
    """The uplink counter reached 2^32 - 1: the node must be re-keyed (SPEC §4)."""


def _seal(payload):
    return payload + hashlib.sha256(payload).digest()[:_SEAL]


def _unseal(rec):
    if rec is None:
        return None
    rec = bytes(rec)
    if len(rec) < _SEAL or hashlib.sha256(rec[:-_SEAL]).digest()[:_SEAL] != rec[-_SEAL:]:
        raise StorageError("corrupted record")
    return rec[:-_SEAL]


class Store:
    """The node's persistent state; call open() once at boot before sending."""

    def __init__(self, hal, reserve=R):
        self.hal = hal
        self.reserve = reserve
        self._next = 0
        self._reserved = 0
        self.window = ReplayWindow()  # the gateway's downlinks
        self.tool_window = ReplayWindow(TOOL_COUNTER_BASE - 1)  # commissioning tools' (SPEC §4)
        self._cmds = []  # [(id, result, value)], oldest first: at most CMD_MEMORY
        self._totals = {}  # name -> int: the app's few fixed names (lighting wh, burn_s; irrigation vol_l)
        self._dirty = False
        self._flushed_at = 0
        self._cfg = []  # [(CFG_* key, value)]: one per key at most (set_setting replaces)
        self.writes = 0
        self.faults = 0  # records found corrupted or not written, since boot
        self.opened = False

    # -- records ----------------------------------------------------------

    def _write(self, key, payload):
        data = _seal(payload)
        try:
            self.hal.save(key, data)
            back = self.hal.load(key)
        except OSError as e:
            self.faults += 1
            raise StorageError("writing %s: %s" % (key, e))
        self.writes += 1
        if back is None or bytes(back) != data:
            self.faults += 1
            raise StorageError("writing %s: read back differs" % key)

    def _read(self, key):
        try:
            return _unseal(self.hal.load(key))
        except StorageError:
            self.faults += 1
            raise StorageError("record %s is corrupted" % key)

    # -- boot ---------------------------------------------------------------

    def open(self):
        """Reserve the first counters (write + read back) and load the rest.

        Raises StorageError when the counter record cannot be trusted or
        written: the caller must not send then. A corrupted downlink, totals
        or settings record is dropped and counted in `faults` (the runtime
        reports EV_STORAGE_FAULT): totals restart from 0, settings from the
        file, and the downlink window from empty. An empty window would take
        a recorded old downlink again; hal.save is atomic, so only failing
        flash gets here, and the gateway hears about it at once.
        """
        rec = self._read(KEY_UP)
        reserved = 0 if rec is None else int.from_bytes(rec, "big")
        self._next = reserved
        self._reserve()
        for key, loader in ((KEY_DOWN, self._load_down), (KEY_TOTALS, self._load_totals), (KEY_CFG, self._load_cfg)):
            try:
                payload = self._read(key)  # counts a corrupted record itself
            except StorageError:
                continue
            try:
                if payload is not None:
                    loader(payload)
            except (ValueError, TypeError, IndexError):
                self.faults += 1
        self._flushed_at = self.hal.ticks_ms()
        self.opened = True

    def _load_down(self, p):
        start = 4 + (len(p) - 4) % 9  # 8 when the tool counter is there
        if start != 4 and start != 8:
            raise ValueError()
        top = struct.unpack_from(">I", p, 0)[0]
        self.window = ReplayWindow(-1 if top == _NO_TOP else top, _ALL_SEEN)
        if start == 8:
            self.tool_window = ReplayWindow(struct.unpack_from(">I", p, 4)[0], _ALL_SEEN)
        cmds = []
        for off in range(start, len(p) - 8, 9):
            cmds.append(struct.unpack_from(">IBi", p, off))
        self._cmds = cmds

    def _load_totals(self, p):
        t = json.loads(p)
        if type(t) is not dict:
            raise ValueError("totals")
        for k in t:
            if type(t[k]) is not int:
                raise ValueError("totals")
        self._totals = t

    def _load_cfg(self, p):
        c = json.loads(p)
        self._cfg = [(int(k), int(v)) for k, v in c]

    # -- uplink counter (SPEC §4) -----------------------------------------------

    def _reserve(self):
        top = self._next + self.reserve
        if top > MAX_COUNTER + 1:
            top = MAX_COUNTER + 1
        self._write(KEY_UP, top.to_bytes(8, "big"))
        self._reserved = top

    def next_uplink(self):
        """The counter for the next uplink; reserves more on flash first when needed."""
        if not self.opened:
            raise StorageError("store not opened")
        n = self._next
        if n > MAX_COUNTER:
            raise CounterExhausted("uplink counter exhausted: re-key the node")
        if n >= self._reserved:
            self._reserve()
        self._next = n + 1
        return n

    def peek_uplink(self):
        return self._next

    # -- downlinks ------------------------------------------------------------------

    def _save_down(self):
        # no gateway downlink yet (only a tool's): _NO_TOP, never 0, or counter 0 is refused later
        p = bytearray(struct.pack(">I", self.window.top if self.window.top >= 0 else _NO_TOP))
        if self.tool_window.top >= TOOL_COUNTER_BASE:
            p.extend(struct.pack(">I", self.tool_window.top))
        for c in self._cmds:
            p.extend(struct.pack(">IBi", c[0], c[1], c[2]))
        self._write(KEY_DOWN, bytes(p))

    def window_for(self, counter):
        """The replay window a downlink counter belongs to (SPEC §4: gateway or tool half)."""
        return self.tool_window if counter >= TOOL_COUNTER_BASE else self.window

    def accept_downlink(self, counter):
        """Commit `counter` to its replay window and persist it (before acting on the frame)."""
        self.window_for(counter).commit(counter)
        self._save_down()

    def command_result(self, cid):
        """(result, value) of a command already executed, or None."""
        for c in self._cmds:
            if c[0] == cid:
                return c[1], c[2]
        return None

    def record_command(self, cid, result, value):
        cmds = self._cmds
        cmds.append((cid, result, value))
        if len(cmds) > _CMD_MEMORY:
            del cmds[0]
        self._save_down()

    # -- totals -----------------------------------------------------------------------

    def get(self, name, default=0):
        return self._totals.get(name, default)

    def put(self, name, value):
        if self._totals.get(name) != value:
            self._totals[name] = int(value)
            self._dirty = True

    def add(self, name, delta):
        v = self._totals.get(name, 0) + int(delta)
        self.put(name, v)
        return v

    def flush(self, force=False):
        """Write totals if they changed and TOTALS_FLUSH_MS passed (or force). True if written."""
        if not self._dirty:
            return False
        now = self.hal.ticks_ms()
        if not force and now - self._flushed_at < TOTALS_FLUSH_MS:
            return False
        self._write(KEY_TOTALS, json.dumps(self._totals).encode())
        self._dirty = False
        self._flushed_at = now
        return True

    # -- settings changed over the air --------------------------------------------------

    def settings(self):
        return self._cfg

    def set_setting(self, key, value):
        cfg = [c for c in self._cfg if c[0] != key]
        cfg.append((key, value))
        self._write(KEY_CFG, json.dumps(cfg).encode())
        self._cfg = cfg

    def __repr__(self):
        return "Store(next=%d, reserved=%d, downlink top=%d)" % (self._next, self._reserved, self.window.top)
