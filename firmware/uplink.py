# The node's uplink queue: what waits to be sent, in which order, and what
# happens after a send.
#
# - Priority first (alarms before acknowledgements before events before
#   reports before STATUS), then first come, first served.
# - A periodic report replaces the previous one of its type that has not
#   gone out yet: after a long duty-cycle wait only the newest readings go.
# - Confirmed items (alarms, SPEC §6) stay after a send until an ACK names
#   one of the counters they went out with; they are resent with backoff,
#   at most _CONFIRM_MAX_SENDS transmissions in all, then dropped and counted.
# - A failed send (radio or storage error) is retried with the same backoff.
# - Bounded: at _QUEUE_MAX items a new item pushes out the oldest of the
#   lowest priority present (a report before an alarm), or is itself dropped
#   when it is the least important. Counted in `dropped`.
#
# Bodies are CBOR bytes, encoded and checked when queued (messages.encode),
# so a bad body is the caller's exception, not a surprise at send time.

import asyncio

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

PRIO_ALARM = 0
PRIO_HELLO = -1  # before everything, alarms included (SPEC §6)
PRIO_ACK = 1
PRIO_EVENT = 2
PRIO_REPORT = 3
PRIO_STATUS = 4

_QUEUE_MAX = const(16)
_CONFIRM_MAX_SENDS = const(8)  # SPEC §6: "at most 8 times"
_BACKOFF_MS = const(30000)  # first resend of an unacknowledged alarm after 30 s ...
_BACKOFF_MAX_MS = const(1800000)  # ... doubling up to 30 min: 8 sends span about 1.5 h
_JITTER = const(4)  # backoff is stretched by up to 1/_JITTER at random, so nodes desynchronise


class Uplink:
    def __init__(self, prio, seq, mtype, body, confirmed, key):
        self.prio = prio
        self.seq = seq
        self.mtype = mtype
        self.body = body
        self.confirmed = confirmed
        self.key = key  # items with the same non-None key replace each other until sent
        self.sends = 0
        self.fails = 0
        self.due = 0  # ticks_ms before which it is not sent
        self.counters = []  # counters it went out with (confirmed items): at most CONFIRM_MAX_SENDS

    def __repr__(self):
        return "Uplink(type=%d, prio=%d, sends=%d)" % (self.mtype, self.prio, self.sends)


class UplinkQueue:
    def __init__(self, rand=None):
        self.items = []  # at most QUEUE_MAX
        self._seq = 0
        self.changed = asyncio.Event()
        self.rand = rand  # rand(n) -> 0..n-1, for backoff jitter
        self.dropped = 0
        self.unconfirmed = 0  # confirmed items given up after _CONFIRM_MAX_SENDS
        self.acked = 0

    def __len__(self):
        return len(self.items)

    def put(self, mtype, body, prio, confirmed=False, key=None):
        items = self.items
        if key is not None:
            for i in range(len(items)):
                it = items[i]
                if it.key == key and it.sends == 0:
                    it.body = body
                    self.changed.set()
                    return it
        if len(items) >= _QUEUE_MAX:
            victim = items[0]
            for it in items:
                if it.prio > victim.prio:
                    victim = it  # oldest of the lowest priority (items stay in arrival order)
            if victim.prio < prio:
                self.dropped += 1
                return None
            items.remove(victim)
            self.dropped += 1
        self._seq += 1
        it = Uplink(prio, self._seq, mtype, body, confirmed, key)
        items.append(it)
        self.changed.set()
        return it

    def next(self, now):
        """The item to send at `now`, or None."""
        best = None
        for it in self.items:
            if it.due <= now and (best is None or it.prio < best.prio):
                best = it  # ties: the first in arrival order wins
        return best

    def next_due(self):
        """ticks_ms of the earliest item that is waiting, or None when empty."""
        due = None
        for it in self.items:
            if due is None or it.due < due:
                due = it.due
        return due

    def _backoff(self, n):
        ms = _BACKOFF_MS << (n - 1 if n < 16 else 15)
        if ms > _BACKOFF_MAX_MS:
            ms = _BACKOFF_MAX_MS
        if self.rand is not None:
            ms += self.rand(ms // _JITTER + 1)
        return ms

    def sent(self, it, counter, now):
        """`it` went out with `counter` at `now`."""
        it.sends += 1
        if not it.confirmed:
            self._remove(it)
            return
        it.counters.append(counter)
        if it.sends >= _CONFIRM_MAX_SENDS:
            self._remove(it)
            self.unconfirmed += 1
            return
        it.due = now + self._backoff(it.sends)

    def failed(self, it, now):
        it.fails += 1
        it.due = now + self._backoff(it.fails)

    def ack(self, counter):
        """An ACK named `counter`: drop the confirmed item sent with it. True if one was."""
        for it in self.items:
            if it.confirmed and counter in it.counters:
                self._remove(it)
                self.acked += 1
                return True
        return False

    def has(self, mtype):
        for it in self.items:
            if it.mtype == mtype:
                return True
        return False

    def drop(self, it):
        self._remove(it)
        self.dropped += 1

    def _remove(self, it):
        if it in self.items:
            self.items.remove(it)
        self.changed.set()
