"""The LoRa radio channel between simulated nodes and gateways.

(One file of about 700 lines on purpose: reception, collisions, capture,
demodulators, duty cycle and half duplex all decide on the same
per-gateway state inside Channel, in one pass per transmission; apart,
each part would reach into the others' state. The path-loss models and
records at the top are small and read with it.)

What decides whether a gateway hears an uplink, after LoRaSim (T. Bor,
U. Roedig, T. Voigt, J. M. Alonso, "Do LoRa Low-Power Wide-Area Networks
Scale?", MSWiM 2016; its simulator loraDir.py) and FLoRa (M. Slabicki,
G. Premsankar, M. Di Francesco, "Adaptive configuration of LoRa networks for
dense IoT deployments", NOMS 2018; its LoRaLogNormalShadowing model):

- Received power: P_rx = P_tx - L(d) - X, with the log-distance path loss
  L(d) = 127.41 + 10 * 2.08 * log10(d / 40 m) dB (LoRaSim's measured
  parameters, FLoRa's defaults), 14 dBm transmit power, and log-normal
  shadowing X ~ N(0, 3.57 dB). FLoRa draws X afresh for every packet
  ("packet", the default); "link" draws it once per node-gateway pair
  (obstacles that do not move). For rooftop gateways the Okumura-Hata urban
  model is available too (HataUrban).
- Sensitivity per SF and bandwidth: LoRaSim's table (Bor et al., Table 3;
  SX1276 datasheet values are similar). A packet below sensitivity at a
  gateway is neither received nor counted as interference there (LoRaSim:
  "lost packets don't collide").
- Collisions: two packets at one receiver collide when they overlap in time
  on the same frequency and SF. The later one still locks, and neither is
  hurt, when the earlier ends before the last 5 of the later one's preamble
  symbols (LoRaSim's timingCollision, 8 - 5 = 3 symbols may be lost).
  Otherwise capture decides for each packet: it survives an interferer when
  it is at least 6 dB stronger at that receiver, else it is lost (LoRaSim's
  powerCollision: within 6 dB both are lost). Interferers are taken pairwise,
  as in LoRaSim; their powers are not summed.
- Demodulators: an SX1301-class gateway demodulates at most 8 packets at once
  (any frequency and SF). A packet that finds all 8 busy when it starts is
  lost at that gateway, yet its energy still interferes with others. A
  demodulator is held until the end of its packet even if the packet is later
  destroyed by a collision.
- Several gateways: each gateway draws its own shadowing and applies all of the
  above on its own; the gateway pipeline deduplicates what more than one heard.
- Half duplex: a gateway that transmits a downlink is deaf on every channel
  meanwhile; an uplink overlapping its transmission in any part is lost at that
  gateway (a Semtech concentrator's TX preempts RX). A gateway also refuses
  a downlink that overlaps its own previous one. A node is half duplex too: it
  cannot receive a downlink while it transmits.
- The law: every node's and gateway's transmissions go through its own
  protocol.lora.DutyCycle (EU868 sub-band off-time). A transmission the law
  forbids is refused (status REFUSED_DUTY_CYCLE): the channel never puts it
  on the air and counts the refusal, so a test can assert that the firmware
  never tries. Frames longer than protocol.lora.max_payload(sf) are refused
  the same way. Time on air is protocol.lora.airtime_us (AN1200.13).
- Downlinks: sent in the node's receive window (RX1: 1 s after the end of the
  uplink, same frequency and SF, protocol/SPEC.md section 6; rx1_start_ms).
  Downlinks use inverted IQ as in LoRaWAN, so uplinks and downlinks do not
  interfere with each other; two downlinks overlapping on one frequency and
  SF collide at each receiving node under the same rules as uplinks.
- SNR = P_rx - (-174 + 10 log10(BW) + NF) with a 6 dB receiver noise figure
  (the thermal noise floor of Semtech AN1200.22).

Cost and use: uplinks must be registered in non-decreasing start time (a
virtual-time simulation does this naturally: a node calls transmit at the
instant it starts sending). Each gateway keeps, per (frequency, SF), only the
packets still on the air, pruned at every arrival, so the cost of a packet is
O(gateways x packets on the air at once), never O(all packets). A packet's
fate is final once every packet that can overlap it has been registered,
i.e. at its end time: settle(now_ms) hands back the transmissions that have
ended, in end order.

Limits (named): SF7..SF12 only (EU868), bandwidths 125/250/500 kHz; one
frequency per channel: channels closer than their bandwidth are refused by
the scenario, so LoRaSim's partial-overlap frequency tolerance never applies;
distances below MIN_DISTANCE_M are clamped; no inter-SF interference (SFs
are treated as orthogonal, as in LoRaSim); no summation of interferers; no
fast fading beyond the log-normal draw.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from protocol import lora

# Hearing / transmission statuses.
OK = "ok"
BELOW_SENSITIVITY = "below_sensitivity"
COLLISION = "collision"
NO_DEMODULATOR = "no_demodulator"
GATEWAY_TX = "gateway_tx"  # the gateway was transmitting (half duplex)
GATEWAY_DOWN = "gateway_down"  # the gateway was off (restart fault)
NODE_TX = "node_tx"  # downlink: the node was transmitting
# Refusals: the transmission never went on the air.
REFUSED_DUTY_CYCLE = "duty_cycle"
REFUSED_TOO_LONG = "too_long"
REFUSED_BUSY = "busy"  # the radio was already transmitting

SF_MIN = 7
SF_MAX = 12
MIN_DISTANCE_M = 1.0  # log10(0) guard: closer than 1 m is treated as 1 m

# LoRaSim's sensitivity table (dBm), indexed by SF - 7, per bandwidth.
SENSITIVITY_DBM = {
    125000: (-126.5, -127.25, -131.25, -132.75, -134.5, -133.25),
    250000: (-124.25, -126.75, -128.25, -130.25, -132.75, -132.25),
    500000: (-120.75, -124.0, -127.5, -128.75, -128.75, -132.25),
}


def sensitivity_dbm(sf: int, bw_hz: int = 125000) -> float:
    """Receiver sensitivity for SF7..12 at 125/250/500 kHz (LoRaSim, Table 3)."""
    if not SF_MIN <= sf <= SF_MAX or bw_hz not in SENSITIVITY_DBM:
        raise ValueError(f"no sensitivity for SF{sf} at {bw_hz} Hz (SF7..12, 125/250/500 kHz)")
    return SENSITIVITY_DBM[bw_hz][sf - SF_MIN]


def noise_floor_dbm(bw_hz: int = 125000, noise_figure_db: float = 6.0) -> float:
    """Thermal noise over the bandwidth plus the receiver's noise figure (AN1200.22)."""
    return -174.0 + 10.0 * math.log10(bw_hz) + noise_figure_db


@dataclass(frozen=True, slots=True)
class LogDistance:
    """L(d) = L(d0) + 10 gamma log10(d / d0); defaults: LoRaSim's measurements (FLoRa's defaults)."""

    d0_m: float = 40.0
    pl_d0_db: float = 127.41
    gamma: float = 2.08

    def loss_db(self, d_m: float, gw_height_m: float = 0.0, node_height_m: float = 0.0) -> float:
        return self.pl_d0_db + 10.0 * self.gamma * math.log10(max(d_m, MIN_DISTANCE_M) / self.d0_m)


@dataclass(frozen=True, slots=True)
class HataUrban:
    """Okumura-Hata median path loss, urban area, small or medium city.

    M. Hata, "Empirical formula for propagation loss in land mobile radio
    services", IEEE Trans. Veh. Technol. 29(3), 1980:
      a(hm) = (1.1 log10 f - 0.7) hm - (1.56 log10 f - 0.8)
      L = 69.55 + 26.16 log10 f - 13.82 log10 hb - a(hm) + (44.9 - 6.55 log10 hb) log10 d
    with f in MHz, hb / hm the gateway and node antenna heights in m, d in km.
    Hata's validity: 150-1500 MHz, hb 30-200 m, hm 1-10 m, d 1-20 km; used
    here below 1 km too (down to MIN_DISTANCE_M), where it stays monotonic but
    is an extrapolation. Heights are clamped to at least 1 m.
    """

    freq_mhz: float = 868.0

    def loss_db(self, d_m: float, gw_height_m: float = 30.0, node_height_m: float = 1.5) -> float:
        lf = math.log10(self.freq_mhz)
        hb = max(gw_height_m, 1.0)
        hm = max(node_height_m, 1.0)
        a_hm = (1.1 * lf - 0.7) * hm - (1.56 * lf - 0.8)
        d_km = max(d_m, MIN_DISTANCE_M) / 1000.0
        return 69.55 + 26.16 * lf - 13.82 * math.log10(hb) - a_hm + (44.9 - 6.55 * math.log10(hb)) * math.log10(d_km)


@dataclass(frozen=True, slots=True)
class RadioParams:
    """Everything the channel assumes; defaults are the reference models of DESIGN.md."""

    path_loss: LogDistance | HataUrban = field(default_factory=LogDistance)
    tx_power_dbm: float = 14.0  # node (EU868 g1 limit is 14 dBm ERP)
    gateway_tx_power_dbm: float = 14.0
    shadowing_sigma_db: float = 3.57  # FLoRa
    shadowing: str = "packet"  # "packet" (FLoRa) or "link"
    capture_db: float = 6.0  # LoRaSim's power threshold
    lock_symbols: int = 5  # preamble symbols that must be clean to lock
    demodulators: int = 8  # SX1301
    noise_figure_db: float = 6.0
    bw_hz: int = 125000
    cr_denom: int = 5  # 4/5
    preamble: int = lora.PREAMBLE_DEFAULT
    rx1_delay_ms: int = 1000  # SPEC section 6

    def __post_init__(self) -> None:
        if self.shadowing not in ("packet", "link"):
            raise ValueError(f"shadowing must be 'packet' or 'link', got {self.shadowing!r}")
        if self.shadowing_sigma_db < 0:
            raise ValueError("shadowing_sigma_db must be >= 0")
        if self.bw_hz not in SENSITIVITY_DBM:
            raise ValueError(f"bandwidth must be 125000, 250000 or 500000 Hz, got {self.bw_hz}")
        if not 0 <= self.lock_symbols <= self.preamble:
            raise ValueError("lock_symbols must be within the preamble")
        if self.demodulators < 1:
            raise ValueError("a gateway needs at least one demodulator")


@dataclass(frozen=True, slots=True)
class GatewaySite:
    """A gateway's place on the map (metres east/north of the scenario origin)."""

    id: str
    x: float
    y: float
    height_m: float = 30.0


class Hearing:
    """One transmission as one receiver got it (a gateway for uplinks, the node for downlinks)."""

    __slots__ = ("tx", "gateway", "rssi_dbm", "snr_db", "status")

    def __init__(self, tx: Transmission, gateway: str, rssi_dbm: float, snr_db: float, status: str):
        self.tx = tx
        self.gateway = gateway
        self.rssi_dbm = rssi_dbm
        self.snr_db = snr_db
        self.status = status

    @property
    def ok(self) -> bool:
        return self.status == OK

    def __repr__(self) -> str:
        return f"Hearing({self.gateway}, {self.rssi_dbm:.1f} dBm, {self.snr_db:.1f} dB, {self.status})"


class Transmission:
    """A frame put on the air (or refused). Times are integer microseconds inside."""

    __slots__ = ("node_id", "start_us", "end_us", "sf", "freq_hz", "length", "payload", "refused", "hearings", "seq")

    def __init__(self, node_id: int, start_us: int, sf: int, freq_hz: int, length: int, payload: bytes | None) -> None:
        self.node_id = node_id
        self.start_us = start_us
        self.end_us = start_us
        self.sf = sf
        self.freq_hz = freq_hz
        self.length = length
        self.payload = payload
        self.refused: str | None = None
        self.hearings: list[Hearing] = []
        self.seq = 0

    @property
    def start_ms(self) -> float:
        return self.start_us / 1000

    @property
    def end_ms(self) -> float:
        return self.end_us / 1000

    @property
    def airtime_ms(self) -> float:
        return (self.end_us - self.start_us) / 1000


class Uplink(Transmission):
    """A node's frame; `hearings` has one entry per gateway, in gateway order."""

    __slots__ = ()

    @property
    def delivered(self) -> bool:
        """Heard by at least one gateway."""
        for h in self.hearings:
            if h.status == OK:
                return True
        return False

    def heard(self) -> list[Hearing]:
        return [h for h in self.hearings if h.status == OK]

    def best(self) -> Hearing | None:
        """The strongest gateway that received it (where the downlink should go), or None."""
        best = None
        for h in self.hearings:
            if h.status == OK and (best is None or h.rssi_dbm > best.rssi_dbm):
                best = h
        return best

    def __repr__(self) -> str:
        what = self.refused or ("delivered" if self.delivered else "lost")
        return f"Uplink(node={self.node_id}, {self.start_ms:.3f}..{self.end_ms:.3f} ms, SF{self.sf}, {what})"


class Downlink(Transmission):
    """A gateway's frame to one node; `hearings` holds the node's reception (one entry)."""

    __slots__ = ("gateway",)

    def __init__(
        self, gateway: str, node_id: int, start_us: int, sf: int, freq_hz: int, length: int, payload: bytes | None
    ) -> None:
        super().__init__(node_id, start_us, sf, freq_hz, length, payload)
        self.gateway = gateway

    @property
    def delivered(self) -> bool:
        return bool(self.hearings) and self.hearings[0].status == OK

    def __repr__(self) -> str:
        what = self.refused or (self.hearings[0].status if self.hearings else "?")
        return f"Downlink({self.gateway} -> node={self.node_id}, {self.start_ms:.3f} ms, SF{self.sf}, {what})"


_Tx = TypeVar("_Tx", bound=Transmission)  # an Uplink or a Downlink, returned as given


class _Node:
    __slots__ = (
        "id",
        "x",
        "y",
        "height",
        "tx_power",
        "loss",
        "link_shadow",
        "mean_up",
        "rng",
        "dc",
        "busy_until",
        "rx",
    )

    def __init__(self, node_id: int, x: float, y: float, height: float, tx_power: float, rng: random.Random) -> None:
        self.id = node_id
        self.x = x
        self.y = y
        self.height = height
        self.tx_power = tx_power
        self.loss: list[float] = []
        self.link_shadow: list[float] = []
        self.mean_up: list[float] = []
        self.rng = rng
        self.dc = lora.DutyCycle()
        self.busy_until = -1
        self.rx: list[Downlink] = []  # downlinks scheduled to this node, not yet over


class _Gateway:
    __slots__ = ("site", "index", "up", "active", "demod", "tx", "dc")

    def __init__(self, site: GatewaySite, index: int):
        self.site = site
        self.index = index
        self.up = True
        # (freq, sf) -> [(end_us, rssi, hearing)] of packets on the air here.
        self.active: dict[tuple[int, int], list] = {}
        self.demod: list[int] = []  # end times of packets holding a demodulator
        self.tx: list[Downlink] = []  # own downlinks not yet over
        self.dc = lora.DutyCycle()


_UP_COUNTS: dict[str, str] = {}  # hearing status -> its key in Channel.counts ("up_" + status)
_DOWN_COUNTS: dict[str, str] = {}  # ... for a downlink's ("down_" + status)


def _us(ms: float) -> int:
    return int(round(ms * 1000))


class Channel:
    """The shared air between registered nodes and a fixed set of gateways.

    Node ids are ints (the protocol's node id); gateways are addressed by their
    id string or their index. Times are milliseconds from an origin the caller
    chooses (the simulation start), ints or floats.

    `counts` tallies, for the report: "uplinks" and "downlinks" put on the
    air, "refused_<reason>", and once settled "up_<status>" / "down_<status>"
    per hearing and "uplinks_delivered" / "uplinks_lost".
    """

    def __init__(self, gateways: Sequence[GatewaySite], params: RadioParams | None = None, seed: int = 0):
        if not gateways:
            raise ValueError("a channel needs at least one gateway")
        ids = [g.id for g in gateways]
        if len(set(ids)) != len(ids):
            raise ValueError(f"gateway ids must be unique, got {ids}")
        self.params = params or RadioParams()
        self.seed = seed
        self._gws = [_Gateway(g, i) for i, g in enumerate(gateways)]
        self._gw_by_id = {g.site.id: g for g in self._gws}
        self._nodes: dict[int, _Node] = {}
        self._clock = -(1 << 62)  # latest uplink start seen (us)
        self._pending: list[tuple[int, int, Transmission]] = []  # heap of (end_us, seq, tx)
        self._seq = 0
        self._dl_active: dict[tuple[int, int], list[Downlink]] = {}
        p = self.params
        self._sens = {sf: sensitivity_dbm(sf, p.bw_hz) for sf in range(SF_MIN, SF_MAX + 1)}
        self._sym = {sf: lora.symbol_us(sf, p.bw_hz) for sf in range(SF_MIN, SF_MAX + 1)}
        self._noise = noise_floor_dbm(p.bw_hz, p.noise_figure_db)
        self._airtime: dict[tuple[int, int], int] = {}
        self._bands: dict[int, int] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------ topology
    @property
    def gateways(self) -> list[GatewaySite]:
        return [g.site for g in self._gws]

    def add_node(
        self, node_id: int, x: float, y: float, height_m: float = 2.0, tx_power_dbm: float | None = None
    ) -> None:
        """Place a node; its random stream depends only on (seed, node_id), not on call order."""
        if node_id in self._nodes:
            raise ValueError(f"node {node_id} is already on the channel")
        p = self.params
        node = _Node(
            node_id,
            float(x),
            float(y),
            float(height_m),
            p.tx_power_dbm if tx_power_dbm is None else float(tx_power_dbm),
            random.Random(f"lumeau-channel:{self.seed}:{node_id}"),
        )
        for g in self._gws:
            d = math.hypot(node.x - g.site.x, node.y - g.site.y)
            loss = p.path_loss.loss_db(d, g.site.height_m, node.height)
            shadow = 0.0
            if p.shadowing == "link" and p.shadowing_sigma_db > 0:
                shadow = random.Random(f"lumeau-link:{self.seed}:{node_id}:{g.site.id}").gauss(
                    0.0, p.shadowing_sigma_db
                )
            node.loss.append(loss)
            node.link_shadow.append(shadow)
            node.mean_up.append(node.tx_power - loss - shadow)
        self._nodes[node_id] = node

    def _gw(self, gateway: str | int) -> _Gateway:
        if isinstance(gateway, int):
            return self._gws[gateway]
        try:
            return self._gw_by_id[gateway]
        except KeyError:
            raise ValueError(f"unknown gateway {gateway!r}") from None

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise ValueError(f"node {node_id} is not on the channel (add_node first)") from None

    def mean_rx_dbm(self, node_id: int) -> list[float]:
        """Median received power of the node's uplinks at each gateway (no per-packet shadowing)."""
        return list(self._node(node_id).mean_up)

    def margin_db(self, node_id: int, sf: int) -> float:
        """Median power above sensitivity at the best gateway for this SF."""
        return max(self._node(node_id).mean_up) - self._sens[sf]

    def best_sf(self, node_id: int, margin_db: float = 10.0) -> int | None:
        """The fastest SF with at least margin_db at the best gateway (as ADR would pick), else None."""
        for sf in range(SF_MIN, SF_MAX + 1):
            if self.margin_db(node_id, sf) >= margin_db:
                return sf
        return None

    def delivery_probability(self, node_id: int, sf: int) -> float:
        """Chance that at least one gateway hears an uplink, ignoring collisions.

        With per-packet shadowing each gateway independently hears it with
        Phi((mean - sensitivity) / sigma); with per-link shadowing the draw is
        already in the mean, so each gateway either always or never hears it.
        """
        node = self._node(node_id)
        sigma = self.params.shadowing_sigma_db if self.params.shadowing == "packet" else 0.0
        miss = 1.0
        for gi, g in enumerate(self._gws):
            if not g.up:
                continue
            m = node.mean_up[gi] - self._sens[sf]
            if sigma > 0:
                p_hear = 0.5 * (1.0 + math.erf(m / (sigma * math.sqrt(2.0))))
            else:
                p_hear = 1.0 if m >= 0 else 0.0
            miss *= 1.0 - p_hear
        return 1.0 - miss

    def rx1_start_ms(self, uplink: Uplink) -> float:
        """When the node's first receive window opens (SPEC section 6)."""
        return uplink.end_ms + self.params.rx1_delay_ms

    def airtime_us(self, length: int, sf: int) -> int:
        key = (length, sf)
        a = self._airtime.get(key)
        if a is None:
            p = self.params
            a = self._airtime[key] = lora.airtime_us(length, sf, p.bw_hz, p.cr_denom, p.preamble)
        return a

    def airtime_used_ms(self, node_id: int) -> float:
        """Total time on air the node has spent, over all sub-bands."""
        dc = self._node(node_id).dc
        return sum(dc.used_ms(b) for b in range(lora.N_BANDS))

    def gateway_airtime_used_ms(self, gateway: str | int) -> float:
        dc = self._gw(gateway).dc
        return sum(dc.used_ms(b) for b in range(lora.N_BANDS))

    def _band(self, freq_hz: int) -> int:
        b = self._bands.get(freq_hz)
        if b is None:
            b = self._bands[freq_hz] = lora.band_for(freq_hz, self.params.bw_hz)
        return b

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _check(self, length: int, sf: int) -> None:
        if not SF_MIN <= sf <= SF_MAX:
            raise ValueError(f"SF must be 7..12, got {sf}")
        if length < 0:
            raise ValueError("length must be >= 0")

    # ------------------------------------------------------------ uplinks
    def transmit(
        self,
        node_id: int,
        start_ms: float,
        length: int,
        sf: int,
        freq_hz: int,
        payload: bytes | None = None,
        tx_power_dbm: float | None = None,
    ) -> Uplink:
        """Put a node's frame on the air at start_ms (or refuse it; see `refused`).

        `tx_power_dbm`: this frame's power (a node whose power was set by CONFIG); None: the node's own.

        Start times must not decrease from one call to the next. The hearings
        are final once the channel has been settled past the frame's end.
        """
        self._check(length, sf)
        node = self._node(node_id)
        p = self.params
        start = int(round(start_ms * 1000))
        if start < self._clock:
            raise ValueError(
                f"uplinks must be registered in start order: {start_ms} ms is before {self._clock / 1000} ms"
            )
        self._clock = start
        up = Uplink(node_id, start, sf, freq_hz, length, payload)
        band = self._band(freq_hz)
        if length > lora.max_payload(sf):
            return self._refuse(up, REFUSED_TOO_LONG)
        if start < node.busy_until:
            return self._refuse(up, REFUSED_BUSY)
        if node.dc.wait_ms(start_ms, band) > 0:
            return self._refuse(up, REFUSED_DUTY_CYCLE)
        air = self.airtime_us(length, sf)
        end = start + air
        up.end_us = end
        node.dc.record(start_ms, air / 1000, band)
        node.busy_until = end
        self._count("uplinks")
        # A downlink to this node that overlaps its own transmission is lost.
        if node.rx:
            node.rx = [d for d in node.rx if d.end_us > start]
            for d in node.rx:
                if d.start_us < end and d.hearings and d.hearings[0].status == OK:
                    d.hearings[0].status = NODE_TX

        dp = 0.0 if tx_power_dbm is None else tx_power_dbm - node.tx_power
        lock = start + (p.preamble - p.lock_symbols) * self._sym[sf]
        sens = self._sens[sf]
        sigma = p.shadowing_sigma_db if p.shadowing == "packet" else 0.0
        gauss = node.rng.gauss
        capture = p.capture_db
        key = (freq_hz, sf)
        noise = self._noise
        for gi, g in enumerate(self._gws):
            # Draw before any early exit so a node's random stream does not
            # depend on what the gateways are doing.
            rssi = node.mean_up[gi] + dp + (gauss(0.0, sigma) if sigma else 0.0)
            h = Hearing(up, g.site.id, rssi, rssi - noise, OK)
            up.hearings.append(h)
            if not g.up:
                h.status = GATEWAY_DOWN
                continue
            if rssi < sens:
                h.status = BELOW_SENSITIVITY
                continue
            if g.tx:
                g.tx = [d for d in g.tx if d.end_us > start]
                for d in g.tx:
                    if d.start_us < end:
                        h.status = GATEWAY_TX
                        break
            if h.status == OK:
                dm = g.demod  # sorted: what ended by our start is a prefix
                if dm and dm[0] <= start:
                    del dm[: bisect.bisect_right(dm, start)]
                if len(dm) >= p.demodulators:
                    h.status = NO_DEMODULATOR
                else:
                    bisect.insort(dm, end)
            act = g.active.get(key)
            if act is None:
                act = g.active[key] = []
            elif act:
                if len(act) == 1:  # the usual case: the last frame heard here, over or not
                    if act[0][0] <= start:
                        act.clear()
                else:
                    act[:] = [e for e in act if e[0] > start]
                for o_end, o_rssi, o_h in act:
                    # Every entry overlaps (it ends after our start); it only
                    # harms anyone if it reaches into our last lock symbols.
                    if o_end > lock:
                        if rssi - o_rssi < capture and h.status == OK:
                            h.status = COLLISION
                        if o_rssi - rssi < capture and o_h.status == OK:
                            o_h.status = COLLISION
            act.append((end, rssi, h))
        return self._schedule(up)

    def _refuse(self, tx: _Tx, why: str) -> _Tx:
        tx.refused = why
        self._count("refused_" + why)
        return self._schedule(tx)

    def _schedule(self, tx: _Tx) -> _Tx:
        self._seq += 1
        tx.seq = self._seq
        entry: tuple[int, int, Transmission] = (tx.end_us, self._seq, tx)
        heapq.heappush(self._pending, entry)
        return tx

    # ------------------------------------------------------------ downlinks
    def downlink(
        self,
        gateway: str | int,
        node_id: int,
        start_ms: float,
        length: int,
        sf: int,
        freq_hz: int,
        payload: bytes | None = None,
        shared: bool = False,
    ) -> Downlink:
        """A gateway sends a frame to a node at start_ms (its receive window).

        Refused when the gateway is down, already transmitting then, or its
        sub-band is closed by the duty cycle. The uplinks the gateway was
        receiving during the transmission are lost (half duplex). `shared`:
        another node's copy of a multicast already sent (accounted once, by the
        first copy; `multicast`).
        """
        self._check(length, sf)
        g = self._gw(gateway)
        node = self._node(node_id)
        p = self.params
        start = _us(start_ms)
        if start < self._clock:
            raise ValueError(f"a downlink cannot start in the past ({start_ms} ms < {self._clock / 1000} ms)")
        dl = Downlink(g.site.id, node_id, start, sf, freq_hz, length, payload)
        band = self._band(freq_hz)
        if not g.up:
            return self._refuse(dl, GATEWAY_DOWN)
        if length > lora.max_payload(sf):
            return self._refuse(dl, REFUSED_TOO_LONG)
        air = self.airtime_us(length, sf)
        end = start + air
        dl.end_us = end
        if not shared:
            g.tx = [d for d in g.tx if d.end_us > self._clock]
            for d in g.tx:
                if d.start_us < end and d.end_us > start:
                    dl.end_us = dl.start_us
                    return self._refuse(dl, REFUSED_BUSY)
            if g.dc.wait_ms(start_ms, band) > 0:
                dl.end_us = dl.start_us
                return self._refuse(dl, REFUSED_DUTY_CYCLE)
            g.dc.record(start_ms, air / 1000, band)
            g.tx.append(dl)
            self._count("downlinks")
        # Half duplex: whatever this gateway is receiving across [start, end) is lost.
        for act in g.active.values():
            for o_end, _o_rssi, o_h in act:
                if o_end > start and o_h.tx.start_us < end and o_h.status == OK:
                    o_h.status = GATEWAY_TX

        sigma = p.shadowing_sigma_db if p.shadowing == "packet" else 0.0
        gi = g.index
        rssi = self._dl_power(node, gi, sigma)
        h = Hearing(dl, g.site.id, rssi, rssi - self._noise, OK)
        dl.hearings.append(h)
        if rssi < self._sens[sf]:
            h.status = BELOW_SENSITIVITY
        elif start < node.busy_until:
            h.status = NODE_TX
        # Downlink against downlink, at each one's receiving node.
        key = (freq_hz, sf)
        lst = self._dl_active.get(key)
        if lst is None:
            lst = self._dl_active[key] = []
        lst[:] = [d for d in lst if d.end_us > self._clock]
        sens = self._sens[sf]
        for o in lst:
            if not (o.start_us < end and o.end_us > start):
                continue
            if o.gateway == dl.gateway and o.start_us == start:
                continue  # another node's copy of the same multicast: one transmission
            earlier, later = (o, dl) if o.start_us <= start else (dl, o)
            if earlier.end_us <= later.start_us + (p.preamble - p.lock_symbols) * self._sym[sf]:
                continue
            on = self._nodes[o.node_id]
            og = self._gw_by_id[o.gateway]
            # o's gateway as heard at our node, and ours at o's node.
            i_here = self._dl_power(node, og.index, sigma)
            i_there = self._dl_power(on, gi, sigma)
            if i_here >= sens and h.status == OK and rssi - i_here < p.capture_db:
                h.status = COLLISION
            oh = o.hearings[0]
            if i_there >= sens and oh.status == OK and oh.rssi_dbm - i_there < p.capture_db:
                oh.status = COLLISION
        lst.append(dl)
        node.rx.append(dl)
        return self._schedule(dl)

    def multicast(
        self,
        gateway: str | int,
        node_ids: list[int],
        start_ms: float,
        length: int,
        sf: int,
        freq_hz: int,
        payload: bytes,
    ) -> list[Downlink]:
        """One transmission heard by every node of `node_ids` (LoRa multicast): a copy per node, each
        with its own reception; the gateway's duty cycle and airtime count it once."""
        out: list[Downlink] = []
        for i, n in enumerate(node_ids):
            dl = self.downlink(gateway, n, start_ms, length, sf, freq_hz, payload, shared=i > 0)
            if i == 0 and dl.refused is not None:
                return [dl]
            out.append(dl)
        return out

    def _dl_power(self, node: _Node, gi: int, sigma: float) -> float:
        mean = self.params.gateway_tx_power_dbm - node.loss[gi] - node.link_shadow[gi]
        return mean + (node.rng.gauss(0.0, sigma) if sigma else 0.0)

    # ------------------------------------------------------------ faults
    def set_gateway_up(self, gateway: str | int, up: bool, at_ms: float) -> None:
        """Switch a gateway off or on (gateway restart fault).

        Going down loses what it was receiving at that instant and the
        downlinks it had scheduled from then on.
        """
        g = self._gw(gateway)
        if g.up == up:
            return
        g.up = up
        if up:
            return
        at = _us(at_ms)
        for act in g.active.values():
            for o_end, _o_rssi, o_h in act:
                if o_end > at and o_h.status == OK:
                    o_h.status = GATEWAY_DOWN
        g.demod.clear()
        dropped = set()
        for d in g.tx:
            if d.start_us >= at and d.hearings:
                # Never sent: it neither reaches its node nor disturbs others.
                d.hearings[0].status = GATEWAY_DOWN
                dropped.add(id(d))
            elif d.end_us > at and d.hearings and d.hearings[0].status == OK:
                d.hearings[0].status = GATEWAY_DOWN  # cut off mid-frame
        if dropped:
            for lst in self._dl_active.values():
                lst[:] = [d for d in lst if id(d) not in dropped]
        g.tx = []

    def gateway_up(self, gateway: str | int) -> bool:
        return self._gw(gateway).up

    # ------------------------------------------------------------ results
    def settle(self, now_ms: float) -> list[Transmission]:
        """Transmissions (uplinks, downlinks, refusals) that ended at or before now_ms, in end order.

        Their outcome is final if every uplink that started before now_ms has
        been registered. Each transmission is returned once.
        """
        now = _us(now_ms)
        out = []
        pend = self._pending
        counts = self.counts
        while pend and pend[0][0] <= now:
            tx = heapq.heappop(pend)[2]
            if tx.refused is None:
                is_up = isinstance(tx, Uplink)
                names = _UP_COUNTS if is_up else _DOWN_COUNTS
                for h in tx.hearings:  # a count per gateway and uplink: the key's string made once
                    k = names.get(h.status)
                    if k is None:
                        k = names[h.status] = ("up_" if is_up else "down_") + h.status
                    counts[k] = counts.get(k, 0) + 1
                if isinstance(tx, Uplink):
                    self._count("uplinks_delivered" if tx.delivered else "uplinks_lost")
            out.append(tx)
        return out

    def pending(self) -> int:
        """Transmissions not yet handed back by settle."""
        return len(self._pending)
