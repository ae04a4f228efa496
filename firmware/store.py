# Persistent node state on the HAL's key-value storage (hal.load / hal.save,
# which replace a key atomically: after a power cut, old or new, never half).
#
# Records, each sealed with the first 4 bytes of its SHA-256 so a corrupted
# flash page is detected instead of trusted:
#
#   "fc"   uplink counter reservation: `reserved`, 8 bytes big-endian (it can
#          reach 2^32, one past the last counter), then the root key's id
#          (8 bytes, config.key_id: a hash, never the key), so the state is
#          known to be this key's (SPEC §4 "Counter persistence"). A record
#          of another key, or none, is no state for this key: the node starts
#          at 0 only when the config marks the key fresh, else it refuses to
#          send (NeedsRekey). (An 8-byte record, from before the key id, is
#          adopted by the key in use.) SPEC §4: at boot
#          next = reserved, then reserved = next + R is written and read
#          back BEFORE anything is sent; when next reaches reserved it is
#          written again. A reboot skips at most R-1 counters, never reuses one.
#   "dl"   downlink state: the highest accepted downlink counter (u32;
#          0xffffffff: none yet, as after a tool's frame only),
#          then, once a commissioning tool was heard, the highest accepted
#          tool counter (u32, >= TOOL_COUNTER_BASE: SPEC §4, the other half
#          of the counter space, its own window; 0 when no tool was heard),
#          then the command-id high-water mark (u32: the highest command id
#          ever accepted), then the results of the last _CMD_MEMORY commands
#          (id u32, result u8, value i32), so a COMMAND repeated after a lost
#          CMD_ACK is answered with its first result even across a reboot,
#          and an older id whose result is forgotten is refused as stale,
#          never run again. (Length 12 + 9k; the older 4 + 9k and 8 + 9k,
#          without the mark, still load: never ambiguous.) Written BEFORE
#          acting on every accepted downlink (a few a day): a write that fails
#          leaves RAM as it was, and the frame is not acted on. After a reboot
#          each replay window is top = stored, every bit seen: stricter,
#          never looser (SPEC §4).
#   "tot"  app totals (energy Wh, burning hours, volume L, ...): JSON of
#          name -> int. Kept in RAM; written at most every TOTALS_FLUSH_MS
#          (and on demand before a reboot), so a power cut loses at most that
#          much of a total. One hour = 24 writes a day, 8,760 a year: far
#          inside the 10,000-100,000 erase cycles of NOR flash once the
#          filesystem's wear levelling (LittleFS) spreads them.
#   "cfg"  settings changed over the air (CONFIG, set_interval): JSON list
#          of [CFG_* key, value], applied over the provisioned file at boot.
#
# A write that fails (OSError) or does not read back is a StorageError, and
# so is a read that fails for any reason but "no such record" (hal.load
# returns None only then). For the counter that is fatal to sending, on
# purpose: without a reservation on flash a counter could be reused after the
# next reboot; until open() succeeds no downlink is accepted either.

import hashlib
import json
import struct

from protocol.nodeframe import ReplayWindow

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.frame numbers, as private consts (tests/test_node_consts.py checks them)
_MAX_COUNTER = const(0xFFFFFFFF)
_REPLAY_WINDOW = const(32)
_TOOL_COUNTER_BASE = const(0x80000000)

R = 256  # counters reserved per write (SPEC §4)
_CMD_MEMORY = const(4)  # command results remembered for idempotency
TOTALS_FLUSH_MS = 3600 * 1000
_SEAL = const(4)

# HAL storage keys, written inline (a module-level name would cost node heap): "fc" the
# uplink counter, "dl" the downlink windows and commands, "tot" the totals, "cfg" settings.

_ALL_SEEN = const((1 << _REPLAY_WINDOW) - 1)
_NO_TOP = const(0xFFFFFFFF)  # "dl": no gateway downlink accepted yet (its counters stop below 2^31)


class StorageError(Exception):
    """Persistent state could not be written or read back, or is corrupted."""


class CounterExhausted(StorageError):
    """The uplink counter reached 2^32 - 1: the node must be re-keyed (SPEC §4)."""


class ReadError(StorageError):
    """A record could not be read (an I/O error, not "no such record"): try again later."""


class NeedsRekey(StorageError):
    """No counter state for this root key and the key is not marked fresh (SPEC §4)."""


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

    def __init__(self, hal, reserve=R, key_id=None, fresh=True):
        self.hal = hal
        self.reserve = reserve
        self.key_id = key_id  # bytes (config.key_id) or None: the state is not tied to a key
        self.fresh = fresh  # the config marks the key fresh: no state may start at 0
        self._next = 0
        self._reserved = 0
        self.window = ReplayWindow()  # the gateway's downlinks
        self.tool_window = ReplayWindow(_TOOL_COUNTER_BASE - 1)  # commissioning tools' (SPEC §4)
        self._cmds = []  # [(id, result, value)], oldest first: at most CMD_MEMORY
        self.cmd_mark = 0  # the highest command id accepted (persisted with the windows)
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
            return _unseal(self.hal.load(key))  # None: no such record, and only that
        except OSError as e:
            self.faults += 1
            raise ReadError("reading %s: %s" % (key, e))
        except StorageError:
            self.faults += 1
            raise StorageError("record %s is corrupted" % key)

    # -- boot ---------------------------------------------------------------

    def open(self):
        """Reserve the first counters (write + read back) and load the rest.

        Raises StorageError when the counter record cannot be trusted or
        written, or any record cannot be read (ReadError: an I/O error):
        the caller must not send, nor accept downlinks, then. A corrupted
        (unsealed) downlink, totals
        or settings record is dropped and counted in `faults` (the runtime
        reports EV_STORAGE_FAULT): totals restart from 0, settings from the
        file, and the downlink window from empty. An empty window would take
        a recorded old downlink again; hal.save is atomic, so only failing
        flash gets here, and the gateway hears about it at once.
        """
        rec = self._read("fc")  # an I/O error or a corrupted record: StorageError, nothing opened
        kid = self.key_id
        other = False  # the record is another key's
        if rec is not None:
            if len(rec) != 8 and len(rec) != 16:
                self.faults += 1
                raise StorageError("record fc: bad length")
            other = kid is not None and len(rec) == 16 and rec[8:] != kid
        if (rec is None or other) and kid is not None and not self.fresh:
            raise NeedsRekey("no counter state for this key: re-key the node (lumeau node provision, then flash)")
        reserved = 0 if rec is None or other else int.from_bytes(rec[:8], "big")
        loaders = [("tot", self._load_totals), ("cfg", self._load_cfg)]
        if other:
            # a fresh key over another key's state: its downlink windows and
            # commands are that key's; clear them BEFORE the counter record
            # names this key (a cut in between adopts again at the next boot)
            self._write("dl", self._down_record(-1, -1, 0, ()))
        else:
            loaders.append(("dl", self._load_down))
        self._next = reserved
        self._reserve()
        for key, loader in loaders:
            try:
                payload = self._read(key)  # counts a corrupted record itself
            except ReadError:
                raise  # unread is not empty: an empty window would take old downlinks again
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
        start = 4 + (len(p) - 4) % 9  # 12 today; 4 or 8 (no mark) from older firmware
        if start != 4 and start != 8 and start != 12:
            raise ValueError()
        cmds = []
        mark = 0
        for off in range(start, len(p) - 8, 9):
            c = struct.unpack_from(">IBi", p, off)
            cmds.append(c)
            if c[0] > mark:
                mark = c[0]
        if start == 12:
            mark = struct.unpack_from(">I", p, 8)[0]
        top = struct.unpack_from(">I", p, 0)[0]
        self.window = ReplayWindow(-1 if top == _NO_TOP else top, _ALL_SEEN)
        if start > 4:
            tool = struct.unpack_from(">I", p, 4)[0]
            if tool >= _TOOL_COUNTER_BASE:
                self.tool_window = ReplayWindow(tool, _ALL_SEEN)
        self._cmds = cmds
        self.cmd_mark = mark

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
        if top > _MAX_COUNTER + 1:
            top = _MAX_COUNTER + 1
        rec = top.to_bytes(8, "big")
        if self.key_id is not None:
            rec += self.key_id
        self._write("fc", rec)
        self._reserved = top

    def next_uplink(self):
        """The counter for the next uplink; reserves more on flash first when needed."""
        if not self.opened:
            raise StorageError("store not opened")
        n = self._next
        if n > _MAX_COUNTER:
            raise CounterExhausted("uplink counter exhausted: re-key the node")
        if n >= self._reserved:
            self._reserve()
        self._next = n + 1
        return n

    def peek_uplink(self):
        return self._next

    # -- downlinks ------------------------------------------------------------------

    def _down_record(self, top, tool, mark, cmds):
        # no gateway downlink yet (only a tool's): _NO_TOP, never 0, or counter 0 is refused later
        p = bytearray(
            struct.pack(">III", top if top >= 0 else _NO_TOP, tool if tool >= _TOOL_COUNTER_BASE else 0, mark)
        )
        for c in cmds:
            p.extend(struct.pack(">IBi", c[0], c[1], c[2]))
        return bytes(p)

    def window_for(self, counter):
        """The replay window a downlink counter belongs to (SPEC §4: gateway or tool half)."""
        return self.tool_window if counter >= _TOOL_COUNTER_BASE else self.window

    def accept_downlink(self, counter, cid=0):
        """Persist `counter` (and a COMMAND's id `cid` as the new mark), then commit it.

        Raises StorageError, leaving RAM as it was, when the store is not
        open or the write fails: the caller must not act on the frame then.
        """
        if not self.opened:
            raise StorageError("store not opened")
        w = self.window_for(counter)
        top = self.window.top
        tool = self.tool_window.top
        if w is self.window:
            top = counter if counter > top else top
        else:
            tool = counter if counter > tool else tool
        mark = cid if cid > self.cmd_mark else self.cmd_mark
        self._write("dl", self._down_record(top, tool, mark, self._cmds))
        w.commit(counter)
        self.cmd_mark = mark

    def stale_command(self, cid):
        """True for a command id at or below the mark whose result is not remembered."""
        return cid <= self.cmd_mark and self.command_result(cid) is None

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
        self._write("dl", self._down_record(self.window.top, self.tool_window.top, self.cmd_mark, cmds))

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
        self._write("tot", json.dumps(self._totals).encode())
        self._dirty = False
        self._flushed_at = now
        return True

    # -- settings changed over the air --------------------------------------------------

    def settings(self):
        return self._cfg

    def set_setting(self, key, value):
        cfg = [c for c in self._cfg if c[0] != key]
        cfg.append((key, value))
        self._write("cfg", json.dumps(cfg).encode())
        self._cfg = cfg

    def __repr__(self):
        return "Store(next=%d, reserved=%d, downlink top=%d)" % (self._next, self._reserved, self.window.top)
