"""Bad-MIC limiter: brute force of the 4-byte MIC is refused per (link, node).

A MIC is 32 bits (SPEC §3). On LoRa the duty cycle bounds how fast anyone
can guess; on BLE, serial and a UDP socket nothing does: the gateway checks
about 206,000 forgeries a second on one core, so one expected success takes
weeks (issue 20, finding 8). This module bounds the guesses per (link, node)
instead -- the link is the reception's `gateway_id` (a BLE connection's
address, a serial port, a packet forwarder's EUI):

- a token bucket per (link, node): BAD_MIC_BURST (16) bad MICs, refilled at
  one per BAD_MIC_REFILL_S (10 s). A node sealing with a stale key after a
  re-key, or noise past the CRC, stays far below it;
- when it is empty, the (link, node) is locked out: LOCKOUT_MIN_S (60 s),
  doubling at each further lockout up to LOCKOUT_MAX_S (3600 s). While
  locked, its receptions are refused as `mic_lockout` before any MIC is
  computed (a dict lookup: the pipeline asks only while some lockout is
  active), and the lockout listeners are told (the BLE transport drops the
  connection and does not reconnect that node over BLE until it ends);
- memory is bounded: MAX_TRACKED (4096) (link, node) entries, least recently
  failed forgotten first.

What it gives: at most ~16 guesses per (link, node) per hour once the
lockouts have grown, about 30,000 years per expected forgery per (link,
node) instead of weeks. What it costs: a locked (link, node) loses its valid
frames too until the lockout ends -- the same node on other links (other
radios, LoRa when BLE is attacked) and other nodes on the same link are not
touched. Replays carry valid MICs and never refill or reset a bucket.
Residual: on UDP the link is the forwarder's EUI, which the packet
forwarder protocol does not authenticate; an attacker who can reach the
gateway's UDP port can rotate EUIs (each new one gets a fresh bucket, and
evicts an old entry). Bind the UDP port to the forwarders' network. The
longer MIC for links without a duty cycle is planned in a versioned SPEC
(another change); this limiter is independent of the MIC's length.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

BAD_MIC_BURST = 16
BAD_MIC_REFILL_S = 10.0
LOCKOUT_MIN_S = 60.0
LOCKOUT_MAX_S = 3600.0
MAX_TRACKED = 4096

Key = tuple[str, int]  # (gateway_id, node_id)


class _Entry:
    __slots__ = ("tokens", "at", "until", "strikes")

    def __init__(self, now: float) -> None:
        self.tokens = float(BAD_MIC_BURST)
        self.at = now
        self.until = 0.0
        self.strikes = 0


class MicGuard:
    """Per-(link, node) bad-MIC token buckets with lockouts (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock  # monotonic seconds
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.locked: dict[Key, float] = {}  # (link, node) -> monotonic time its lockout ends
        self._next_expiry = float("inf")
        # called with (gateway_id, node_id, seconds) when a lockout starts; must not raise
        self.listeners: list[Callable[[str, int, float], None]] = []
        self.lockouts = 0  # lockouts started
        self.refused = 0  # receptions refused while locked

    def is_locked(self, gateway_id: str, node_id: int) -> bool:
        """True if (link, node) is locked out now (counted in `refused`)."""
        now = self.clock()
        if now >= self._next_expiry:
            self._purge(now)
        until = self.locked.get((gateway_id, node_id))
        if until is None or now >= until:
            return False
        self.refused += 1
        return True

    def bad_mic(self, gateway_id: str, node_id: int) -> float:
        """Count one bad MIC; returns the lockout it started in seconds (0.0: none)."""
        now = self.clock()
        key = (gateway_id, node_id)
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry(now)
            while len(self._entries) > MAX_TRACKED:
                old, _ = self._entries.popitem(last=False)
                self.locked.pop(old, None)
        else:
            self._entries.move_to_end(key)
            if now < e.until:
                return 0.0  # already locked (a frame admitted before the lockout began)
            e.tokens = min(float(BAD_MIC_BURST), e.tokens + (now - e.at) / BAD_MIC_REFILL_S)
            e.at = now
        if e.tokens >= 1.0:
            e.tokens -= 1.0
            return 0.0
        e.strikes += 1
        seconds = min(LOCKOUT_MAX_S, LOCKOUT_MIN_S * 2 ** min(e.strikes - 1, 16))
        e.until = now + seconds
        e.tokens = float(BAD_MIC_BURST)  # for after the lockout
        e.at = e.until
        self.locked[key] = e.until
        self._next_expiry = min(self._next_expiry, e.until)
        self.lockouts += 1
        for fn in self.listeners:
            try:
                fn(gateway_id, node_id, seconds)
            except Exception:  # a listener's bug never stops the pipeline
                pass
        return seconds

    def _purge(self, now: float) -> None:
        for k in [k for k, until in self.locked.items() if until <= now]:
            del self.locked[k]
        self._next_expiry = min(self.locked.values(), default=float("inf"))

    def stats(self) -> dict[str, int]:
        self._purge(self.clock())
        return {
            "lockouts": self.lockouts,
            "refused": self.refused,
            "locked": len(self.locked),
            "tracked": len(self._entries),
        }
