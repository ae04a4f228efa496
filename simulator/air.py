"""The air between the simulated nodes and the gateways: a firmware Radio on the LoRa channel.

`Air` wraps one simulator.channel.Channel for a run on a virtual-time loop:

- `NodeRadio.send(frame)` puts the frame on the air at the loop's current
  instant (`Channel.transmit`) and returns when its time on air is over; a
  transmission the channel refuses (duty cycle, too long for the SF, radio
  busy) raises OSError, the way a modem driver error reaches the runtime
  (it counts `tx_failed` and retries with backoff);
- at the end of every transmission the channel is settled and each gateway
  site that heard an uplink is handed to the gateway link
  (`GatewayLink.uplink(hearing)`), with the uplink's outcome final (every
  transmission that could overlap it has been registered by then); the
  uplink's own `hearings` list is emptied then (each hearing keeps its `tx`:
  no reference cycle left for the collector);
- `Air.downlink(site, node, frame, uplink)` is the gateway's way back: the
  frame goes on the air in the node's RX1 (1 s after the end of its uplink,
  same frequency and SF, simulator/channel.py), or DownlinkError says why
  not (`too_late`, `duty_cycle`, `busy`, `no_route` when the site is down,
  `too_long`);
- `NodeRadio.recv(window)` reports a downlink whose preamble starts inside
  the receive window, at the end of that frame, if the node received it.

NodeRadio mirrors firmware/radio_lora.py's LoRaRadio: one channel
(the node's configured frequency), its SF, the same receive window
(2 x 40 ms + 8 symbols), `configure(sf=, tx_power=)` from CONFIG (a TX
power set that way moves the frame's received power at every gateway). Its
`airtime_ms` is the exact time on air plus AIRTIME_MARGIN_MS: the runtime's
duty-cycle bookkeeping counts in whole milliseconds of its own clock, the
channel's in microseconds of the loop's, and the margin keeps the node's
off-time at least the channel's, so a node never tries what the law (the
channel) would refuse.

Times inside are integer microseconds of the loop clock (loop.time() * 1e6);
the channel's milliseconds are those over 1000.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from firmware.radio import Radio
from gateway.transports import DownlinkError
from protocol import frame as fr
from protocol import lora
from protocol import messages as m
from simulator import channel as ch

AIRTIME_MARGIN_MS = 0.02  # 2 ms more off-time at 1 %: covers the runtime's ms rounding
RX_MARGIN_MS = 40  # as firmware/radio_lora.py
RX_WINDOW_SYMBOLS = 8

_REFUSALS = {
    ch.REFUSED_DUTY_CYCLE: "duty_cycle",
    ch.REFUSED_BUSY: "busy",
    ch.REFUSED_TOO_LONG: "too_long",
    ch.GATEWAY_DOWN: "no_route",
}


def _sleep_until_us(loop: asyncio.AbstractEventLoop, when_us: int) -> asyncio.Future:
    fut = loop.create_future()
    loop.call_at(when_us / 1e6, _wake, fut)
    return fut


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class NodeStats:
    """What the air saw of one node."""

    __slots__ = ("uplinks", "refused", "delivered", "lost", "frames", "reports", "downlinks", "downlinks_ok")

    def __init__(self) -> None:
        self.uplinks = 0  # put on the air
        self.refused: dict[str, int] = {}
        self.delivered = 0  # heard by at least one gateway (settled)
        self.lost = 0  # heard by none (settled)
        self.frames: list[tuple[int, int, int]] = []  # (counter, mtype, length) of every uplink on the air
        self.reports: dict[int, bytes] = {}  # counter -> LIGHT / IRRIGATION frame as sent (its meter)
        self.downlinks = 0  # sent to it
        self.downlinks_ok = 0  # received by it


class Air:
    def __init__(
        self, channel: ch.Channel, loop: asyncio.AbstractEventLoop, on_uplink: Callable[[ch.Hearing], None]
    ) -> None:
        self.channel = channel
        self.loop = loop
        self.on_uplink = on_uplink
        self.nodes: dict[int, NodeStats] = {}
        self.largest: dict[int, int] = {}  # mtype -> largest frame put on the air (bytes)
        self._pending: dict[int, list[ch.Downlink]] = {}  # node -> downlinks not yet received or missed
        self.uplinks_settled = 0
        self.closed = False  # the run is over: what ends later is not handed to the gateway

    def now_us(self) -> int:
        return int(round(self.loop.time() * 1e6))

    def stats(self, node_id: int) -> NodeStats:
        s = self.nodes.get(node_id)
        if s is None:
            s = self.nodes[node_id] = NodeStats()
        return s

    # ------------------------------------------------------------ uplinks

    def transmit(
        self,
        node_id: int,
        frame: bytes,
        sf: int,
        freq_hz: int,
        start_us: int | None = None,
        tx_power: float | None = None,
    ) -> ch.Transmission:
        now = self.now_us() if start_us is None else start_us
        up = self.channel.transmit(node_id, now / 1000, len(frame), sf, freq_hz, frame, tx_power)
        if self.count(node_id, frame, up) is not None:
            self.loop.call_at(up.end_us / 1e6, self._settle)
        return up

    def count(self, node_id: int, frame: bytes, up: ch.Transmission) -> int | None:
        """Count a transmission in the node's stats: its frame type if it went on the air, None if refused."""
        st = self.stats(node_id)
        if up.refused is not None:
            st.refused[up.refused] = st.refused.get(up.refused, 0) + 1
            return None
        st.uplinks += 1
        try:
            f = fr.parse(frame)
            mtype, counter = f.mtype, f.counter
        except fr.FrameError:  # not a Lumeau frame: still on the air, counted under type 0
            mtype, counter = 0, -1
        st.frames.append((counter, mtype, len(frame)))
        if mtype == m.LIGHT or mtype == m.IRRIGATION:
            st.reports[counter] = frame
        if len(frame) > self.largest.get(mtype, 0):
            self.largest[mtype] = len(frame)
        return mtype

    def _settle(self) -> None:
        if self.closed:
            return
        for tx in self.channel.settle(self.now_us() / 1000):
            if tx.refused is not None:
                continue
            if isinstance(tx, ch.Uplink):
                self.uplinks_settled += 1
                st = self.stats(tx.node_id)
                if tx.delivered:
                    st.delivered += 1
                else:
                    st.lost += 1
                for h in tx.hearings:
                    if h.status == ch.OK:
                        self.on_uplink(h)
                # Settled, the uplink's hearings are final and handed on: the uplink lets go of
                # them. Each hearing points back at its uplink (`tx`, the gateway's way to answer),
                # so the two made a reference cycle that only the cyclic collector freed: some
                # sixteen objects per uplink kept past their use, scanned by every young
                # collection they survived (bench/README.md, sim_area.py). Now the uplink goes
                # when the gateway drops the last hearing it kept.
                tx.hearings = []

    # ------------------------------------------------------------ downlinks

    def downlink(self, site: str, node_id: int, frame: bytes, uplink: ch.Uplink) -> ch.Downlink:
        """Put a gateway's frame on the air in the node's RX1 after `uplink`; DownlinkError if not."""
        start_ms = self.channel.rx1_start_ms(uplink)
        if start_ms * 1000 < self.now_us():
            raise DownlinkError("too_late", f"RX1 opened at {start_ms:.3f} ms")
        try:
            dl = self.channel.downlink(site, node_id, start_ms, len(frame), uplink.sf, uplink.freq_hz, bytes(frame))
        except ValueError as e:  # an unknown site or node: the link's bug, said clearly
            raise DownlinkError("no_route", str(e)) from None
        if dl.refused is not None:
            raise DownlinkError(_REFUSALS.get(dl.refused, dl.refused))
        self.stats(node_id).downlinks += 1
        self.add_downlink(node_id, dl)
        self.loop.call_at(dl.end_us / 1e6, self._settle)
        return dl

    def multicast(self, site: str, node_ids: list[int], frame: bytes, sf: int, freq_hz: int) -> int:
        """A gateway's multicast, sent now (LoRa class C): one transmission, a copy per listening node.

        Returns how many nodes it was put on the air for; DownlinkError when the gateway could not
        send it (down, busy, duty cycle). Only a node whose radio listens then hears it (a member's
        receiver, firmware/runtime.py)."""
        start_ms = self.now_us() / 1000 + 1.0
        try:
            dls = self.channel.multicast(site, list(node_ids), start_ms, len(frame), sf, freq_hz, bytes(frame))
        except ValueError as e:
            raise DownlinkError("no_route", str(e)) from None
        if dls and dls[0].refused is not None:
            raise DownlinkError(_REFUSALS.get(dls[0].refused, dls[0].refused))
        for dl in dls:
            self.add_downlink(dl.node_id, dl)
        if dls:
            self.loop.call_at(dls[0].end_us / 1e6, self._settle)
        return len(dls)

    def add_downlink(self, node_id: int, dl: Any) -> None:
        """A downlink on its way to the node (a ch.Downlink, or what a parallel run's worker is handed)."""
        self._pending.setdefault(node_id, []).append(dl)

    def downlink_in(self, node_id: int, t0_us: int, t1_us: int) -> ch.Downlink | None:
        """The earliest pending downlink to the node whose preamble starts within [t0, t1]."""
        pend = self._pending.get(node_id)
        if not pend:
            return None
        pend[:] = [d for d in pend if d.end_us > t0_us]  # missed ones are gone
        for d in pend:
            if t0_us <= d.start_us <= t1_us:
                return d
        return None

    def received(self, node_id: int, dl: ch.Downlink) -> None:
        pend = self._pending.get(node_id)
        if pend and dl in pend:
            pend.remove(dl)


class NodeRadio(Radio):
    """firmware.radio.Radio for one simulated node (see the module docstring)."""

    continuous = False

    def __init__(self, air: Air, node_id: int, freq_hz: int, sf: int, bw_hz: int = 125000, tx_power: int = 14):
        self.air = air
        self.node_id = node_id
        self.freq_hz = freq_hz
        self.sf = sf
        self.bw_hz = bw_hz
        self.tx_power = tx_power
        self._tx0 = tx_power  # as provisioned: the channel's own power for this node
        self.band = lora.band_for(freq_hz, bw_hz)
        self.max_frame = lora.max_payload(sf)

    def airtime_ms(self, n: int) -> float:
        return lora.airtime_ms(n, self.sf, self.bw_hz) + AIRTIME_MARGIN_MS

    def rx_window_ms(self) -> int:
        return 2 * RX_MARGIN_MS + RX_WINDOW_SYMBOLS * lora.symbol_us(self.sf, self.bw_hz) // 1000

    def configure(self, sf: int | None = None, tx_power: int | None = None) -> None:
        if sf is not None:
            self.max_frame = lora.max_payload(sf)  # ValueError outside 7..12
            self.sf = sf
        if tx_power is not None:
            self.tx_power = tx_power

    async def send(self, frame: Any) -> None:
        p = self.tx_power
        up = self.air.transmit(
            self.node_id, bytes(frame), self.sf, self.freq_hz, tx_power=None if p == self._tx0 else p
        )
        if up.refused is not None:
            raise OSError(f"the channel refused the transmission: {up.refused}")
        await _sleep_until_us(self.air.loop, up.end_us)

    async def recv(self, timeout_ms: int) -> tuple[bytes, int, int] | None:
        air = self.air
        t0 = air.now_us()
        t1 = t0 + int(timeout_ms) * 1000
        dl = air.downlink_in(self.node_id, t0, t1)
        if dl is None:
            await _sleep_until_us(air.loop, t1)
            dl = air.downlink_in(self.node_id, t0, t1)  # one scheduled while we listened
            if dl is None:
                return None
        if dl.end_us > air.now_us():
            await _sleep_until_us(air.loop, dl.end_us)  # settled by then: the channel's timer came first
        air.received(self.node_id, dl)
        h = dl.hearings[0] if dl.hearings else None
        if h is None or h.status != ch.OK:
            return None
        air.stats(self.node_id).downlinks_ok += 1
        assert dl.payload is not None  # the air's frames carry their bytes
        return bytes(dl.payload), int(round(h.rssi_dbm)), int(round(h.snr_db * 4))
