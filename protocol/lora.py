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

from protocol.nodelora import (  # noqa: F401  # the node's part, re-exported
    BAND_LIMITS,
    DutyCycle,
    airtime_ms,
    airtime_us,
    band_for,
    max_payload,
    symbol_us,
)

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

SF_MIN = 6
SF_MAX = 12
BANDWIDTHS_HZ = (125000, 250000, 500000)
CR_DENOM_MIN = 5  # coding rate 4/5 ...
CR_DENOM_MAX = 8  # ... to 4/8
PREAMBLE_DEFAULT = 8  # LoRaWAN's preamble

# EU868 sub-bands: (low Hz, high Hz, 1/duty cycle, name).  The inverse duty
# cycle keeps the off-time arithmetic in integers.  g1..g4 are the names
# LoRaWAN tooling uses for the 868-870 MHz bands.
# The limits are protocol/nodelora.py's BAND_LIMITS (a node carries those only).
_BAND_NAMES = ("863.0-865.0", "865.0-868.0", "g1", "g2", "g3", "g4")
BANDS = tuple(tuple(BAND_LIMITS[3 * i : 3 * i + 3]) + (_BAND_NAMES[i],) for i in range(len(_BAND_NAMES)))
N_BANDS = len(BANDS)

DEFAULT_CHANNELS_HZ = (868100000, 868300000, 868500000)
RX2_FREQ_HZ = 869525000
RX2_SF = 12
_RX2_BW_HZ = const(125000)


def band_name(band):
    """Name of a band index, e.g. "g1"."""
    return BANDS[band][3]
