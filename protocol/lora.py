"""LoRa time on air and EU868 regional limits, for nodes and the simulator.

Runs unchanged on MicroPython and CPython.  All times are integers inside:
airtime is an exact whole number of microseconds for every legal setting
(a symbol lasts 2^SF / BW seconds, and the 0.25-symbol terms become whole
when counted in quarter symbols), so single-precision floats on boards such
as the ESP32 or RP2040 cannot skew the duty-cycle arithmetic.

Sources
- Time on air: Semtech AN1200.13 "LoRa Modem Designer's Guide" (SX1272/3/6/7/8):
    T_sym      = 2^SF / BW
    T_preamble = (n_preamble + 4.25) T_sym
    n_payload  = 8 + max(ceil((8PL - 4SF + 28 + 16CRC - 20IH) / (4(SF - 2DE))) (CR + 4), 0)
  with IH = 1 for implicit header, DE = 1 with low data rate optimisation.
  LDRO defaults to on when T_sym >= 16 ms (the SX127x datasheet's rule: at
  125 kHz that is SF11 and SF12).  SX126x chips count SF5/SF6 differently;
  this module does the SX127x count only.
- SF6 is accepted with an implicit header only: the SX1276 datasheet (4.1.1.2)
  allows SF6 in implicit-header mode only.  SF5 (SX126x only) is refused.
- Preamble length 6..65535 symbols: the SX1276 preamble register is 16 bits
  and the modem adds 4.25 symbols to at least 6 programmed ones.
- EU868 sub-bands and duty cycles: ETSI EN 300 220-2 V3.2.1 Table B.1, as used
  by LoRaWAN RP002 Regional Parameters (EU863-870).  863-865 MHz and
  868.7-869.2 MHz are distinct 0.1 % bands (EN 300 220-2 V3.2.1; older
  LoRaMac-node lumped them together, see LoRaMac-node PR #750).
- Default channels 868.1/868.3/868.5 MHz, RX2 869.525 MHz at SF12 and the
  maximum application payload per data rate (N in RP002: SF12..SF10 51,
  SF9 115, SF8/SF7 222 bytes): LoRaWAN RP002.  Lumeau sends no LoRaWAN
  header, yet budgets its WHOLE frame (header and MIC included) against N,
  which leaves margin and keeps a frame legal behind a LoRaWAN stack too.
- Duty cycle: the LoRaWAN off-time rule as in LoRaMac-node 4.4 (LoRaMac.c,
  OnRadioTxDone: TimeOff = T * DCycle - T).  After a transmission of airtime
  T on a band with duty cycle d, the band stays shut for T (1/d - 1) after
  the end of that transmission.  This is conservative with respect to ETSI
  EN 300 220, which only caps transmitter-on time per hour and so would also
  allow a burst (all 36 s of a 1 % band at once): the off-time rule never
  bursts, and over any run from a frame's start to the band reopening after
  the last frame the fraction is at most d.  The one place it can pass d is
  an edge effect: a window that cuts frames at both ends can hold up to
  d W + (1 - d) T_max of airtime (less than one extra frame).
  tests/test_lora.py checks both bounds.

Frequencies are integer Hz; caller-supplied times are integer milliseconds
from a monotonic clock that does not wrap (not raw time.ticks_ms(), which
wraps after 2^30 ms on a board); the module has no clock of its own, so the
simulator drives it with a virtual one.
"""

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

SF_MIN = 6
SF_MAX = 12
BANDWIDTHS_HZ = (125000, 250000, 500000)
CR_DENOM_MIN = 5  # coding rate 4/5 ...
CR_DENOM_MAX = 8  # ... to 4/8
_PAYLOAD_MAX = const(255)  # the SX127x FIFO payload length register is 8 bits
_PREAMBLE_MIN = const(6)
_PREAMBLE_MAX = const(65535)
PREAMBLE_DEFAULT = 8  # LoRaWAN's preamble
_LDRO_SYMBOL_US = const(16000)  # LDRO auto-on from this symbol duration (16 ms)

# EU868 sub-bands: (low Hz, high Hz, 1/duty cycle, name).  The inverse duty
# cycle keeps the off-time arithmetic in integers.  g1..g4 are the names
# LoRaWAN tooling uses for the 868-870 MHz bands.
BANDS = (
    (863000000, 865000000, 1000, "863.0-865.0"),  # 0.1 %
    (865000000, 868000000, 100, "865.0-868.0"),  # 1 %
    (868000000, 868600000, 100, "g1"),  # 1 %
    (868700000, 869200000, 1000, "g2"),  # 0.1 %
    (869400000, 869650000, 10, "g3"),  # 10 %, holds RX2
    (869700000, 870000000, 100, "g4"),  # 1 %
)
N_BANDS = len(BANDS)

DEFAULT_CHANNELS_HZ = (868100000, 868300000, 868500000)
RX2_FREQ_HZ = 869525000
RX2_SF = 12
_RX2_BW_HZ = const(125000)

# Max application payload (RP002 "N") at BW125, indexed by SF - 7.
_MAX_PAYLOAD = (222, 222, 115, 51, 51, 51)


def _check(sf, bw_hz, cr_denom, explicit_header, payload_bytes, preamble):
    if not SF_MIN <= sf <= SF_MAX:
        raise ValueError("spreading factor must be 6..12, got %r" % (sf,))
    if sf == 6 and explicit_header:
        raise ValueError("SF6 works with an implicit header only (explicit_header=False)")
    if bw_hz not in BANDWIDTHS_HZ:
        raise ValueError("bandwidth must be 125000, 250000 or 500000 Hz, got %r" % (bw_hz,))
    if not CR_DENOM_MIN <= cr_denom <= CR_DENOM_MAX:
        raise ValueError("coding rate denominator must be 5..8 (4/5..4/8), got %r" % (cr_denom,))
    if not 0 <= payload_bytes <= _PAYLOAD_MAX:
        raise ValueError("payload must be 0..255 bytes, got %r" % (payload_bytes,))
    if not _PREAMBLE_MIN <= preamble <= _PREAMBLE_MAX:
        raise ValueError("preamble must be 6..65535 symbols, got %r" % (preamble,))


def symbol_us(sf, bw_hz=125000):
    """Duration of one symbol in microseconds (exact for legal settings)."""
    if not SF_MIN <= sf <= SF_MAX or bw_hz not in BANDWIDTHS_HZ:
        raise ValueError("bad sf %r or bandwidth %r" % (sf, bw_hz))
    return (1000000 // bw_hz) << sf


def airtime_us(
    payload_bytes, sf, bw_hz=125000, cr_denom=5, preamble=PREAMBLE_DEFAULT, explicit_header=True, crc=True, ldro=None
):
    """Time on air in whole microseconds (AN1200.13); see airtime_ms."""
    _check(sf, bw_hz, cr_denom, explicit_header, payload_bytes, preamble)
    # 10^6 / BW is 8, 4 or 2 us, so T_sym = 2^SF * 10^6 / BW is whole; dividing
    # first keeps it a small int on a board (1000000 << 12 would be a long int).
    t_sym = (1000000 // bw_hz) << sf
    if ldro is None:
        ldro = t_sym >= _LDRO_SYMBOL_US
    de = 1 if ldro else 0
    ih = 0 if explicit_header else 1
    num = 8 * payload_bytes - 4 * sf + 28 + (16 if crc else 0) - 20 * ih
    den = 4 * (sf - 2 * de)
    blocks = -(-num // den)  # ceil for integers, also for negatives
    if blocks < 0:
        blocks = 0
    # AN1200.13 writes (CR + 4) with CR = 1..4 for 4/5..4/8: that is cr_denom.
    n_payload = 8 + blocks * cr_denom
    # Count quarter symbols so the preamble's 4.25 stays an integer.
    quarters = 4 * (preamble + n_payload) + 17
    # t_sym is a multiple of 4 us for every legal setting, so this is exact.
    return quarters * (t_sym >> 2)


def airtime_ms(
    payload_bytes, sf, bw_hz=125000, cr_denom=5, preamble=PREAMBLE_DEFAULT, explicit_header=True, crc=True, ldro=None
):
    """Time on air of one LoRa packet in milliseconds (float).

    payload_bytes: PHY payload 0..255; sf 6..12 (6 needs explicit_header=False);
    bw_hz 125000/250000/500000; cr_denom 5..8 for 4/5..4/8; preamble symbols
    as programmed (6..65535); ldro None = on when a symbol lasts >= 16 ms.
    Raises ValueError for anything outside those ranges.
    """
    return airtime_us(payload_bytes, sf, bw_hz, cr_denom, preamble, explicit_header, crc, ldro) / 1000


def max_payload(sf):
    """Largest Lumeau frame (bytes, everything included) allowed at SF7..12, BW125."""
    if not 7 <= sf <= 12:
        raise ValueError("EU868 uses SF7..SF12, got %r" % (sf,))
    return _MAX_PAYLOAD[sf - 7]


def band_for(freq_hz, bw_hz=125000):
    """Index into BANDS of the sub-band holding a channel, or ValueError.

    The whole channel, freq_hz +- bw_hz/2, must lie inside one sub-band: a
    125 kHz channel centred on 869.65 MHz spills out of g3 and is refused.
    Pass bw_hz=0 to test the centre frequency alone.  Where two bands touch
    (865.0, 868.0 MHz) the lower one wins, which for 865.0 MHz is the
    stricter 0.1 % band.
    """
    half = bw_hz // 2
    lo = freq_hz - half
    hi = freq_hz + half
    for i in range(N_BANDS):
        b = BANDS[i]
        if b[0] <= lo and hi <= b[1]:
            return i
    raise ValueError("%r Hz (bandwidth %r Hz) is outside every EU868 sub-band" % (freq_hz, bw_hz))


def band_name(band):
    """Name of a band index, e.g. "g1"."""
    return BANDS[band][3]


class DutyCycle:
    """Per-band LoRaWAN off-time accountant for EU868 (see module docstring).

    State is two integers per band: when the band opens again (ms) and the
    airtime used so far (us; past 2^30 us, about 18 minutes of airtime, that
    becomes a long int on a board, one small allocation per record).  `band`
    arguments take a band index (0..5) or a frequency in Hz (then looked up
    with band_for at 125 kHz).
    """

    def __init__(self):
        self._until = [0] * N_BANDS
        self._used_us = [0] * N_BANDS

    @staticmethod
    def _index(band):
        if 0 <= band < N_BANDS:
            return band
        return band_for(band)

    def wait_ms(self, now_ms, band):
        """0 if the band may transmit at now_ms, else the ms still to wait."""
        w = self._until[self._index(band)] - now_ms
        return w if w > 0 else 0

    def may_send(self, now_ms, payload_bytes, sf, band):
        """True when the band is open now and the frame fits max_payload(sf).

        A frame over the budget is never sendable at that SF: tell the two
        cases apart with wait_ms or max_payload.  ValueError for SF outside 7..12.
        """
        if payload_bytes > max_payload(sf):
            return False
        return self.wait_ms(now_ms, band) == 0

    def record(self, start_ms, airtime_ms, band):
        """Account a transmission that started at start_ms; returns the band index.

        The band reopens at start + T/d, i.e. T (1/d - 1) after the end,
        rounded up to the next whole ms so rounding never favours the sender.
        """
        i = self._index(band)
        us = int(airtime_ms * 1000 + 0.5)
        # T/d in ms is us * inv / 1000.  Every EU868 inverse duty cycle divides
        # 1000, so divide first: no long ints on a board, and ceil, not round.
        k = 1000 // BANDS[i][2]
        until = start_ms + (us + k - 1) // k
        # max: a transmission forced through a closed band must not shorten
        # the off-time of the one before it.
        if until > self._until[i]:
            self._until[i] = until
        self._used_us[i] += us
        return i

    def used_ms(self, band):
        """Total airtime recorded on a band, in ms (for reports)."""
        return self._used_us[self._index(band)] / 1000

    def reset(self):
        for i in range(N_BANDS):
            self._until[i] = 0
            self._used_us[i] = 0
