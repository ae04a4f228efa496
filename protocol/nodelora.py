# The LoRa arithmetic a node runs: time on air, the regional payload limits,
# the EU868 sub-band of a channel and the duty-cycle accountant. Everything
# about it (sources, decisions, units) is in protocol/lora.py's docstring;
# lora.py re-exports these functions and class and holds the public names
# (SF_MIN, BANDS with their names, RX2, default channels, band_name) a node
# does not need. The numbers here are private const() copies of lora.py's
# (tests/test_node_consts.py checks them).

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to

_SF_MIN = const(6)
_SF_MAX = const(12)
_CR_DENOM_MIN = const(5)
_CR_DENOM_MAX = const(8)
_PAYLOAD_MAX = const(255)  # the SX127x FIFO payload length register is 8 bits
_PREAMBLE_MIN = const(6)
_PREAMBLE_MAX = const(65535)
_PREAMBLE_DEFAULT = const(8)  # LoRaWAN's preamble
_LDRO_SYMBOL_US = const(16000)  # LDRO auto-on from this symbol duration (16 ms)
_N_BANDS = const(6)
_MHDR = const(0xE0)  # protocol.proprietary.MHDR: a LoRaWAN proprietary frame's header (SPEC §7)

# EU868 sub-bands, 3 ints each: low edge Hz, high edge Hz, 1 / duty cycle
# (lora.BANDS adds their names).
BAND_LIMITS = (
    863000000, 865000000, 1000,  # 0.1 %
    865000000, 868000000, 100,  # 1 %
    868000000, 868600000, 100,  # g1, 1 %
    868700000, 869200000, 1000,  # g2, 0.1 %
    869400000, 869650000, 10,  # g3, 10 %, holds RX2
    869700000, 870000000, 100,  # g4, 1 %
)  # fmt: skip


def _check(sf, bw_hz, cr_denom, explicit_header, payload_bytes, preamble):
    if not _SF_MIN <= sf <= _SF_MAX:
        raise ValueError("spreading factor must be 6..12, got %r" % (sf,))
    if sf == 6 and explicit_header:
        raise ValueError("SF6 works with an implicit header only (explicit_header=False)")
    if bw_hz not in (125000, 250000, 500000):
        raise ValueError("bandwidth must be 125000, 250000 or 500000 Hz, got %r" % (bw_hz,))
    if not _CR_DENOM_MIN <= cr_denom <= _CR_DENOM_MAX:
        raise ValueError("coding rate denominator must be 5..8 (4/5..4/8), got %r" % (cr_denom,))
    if not 0 <= payload_bytes <= _PAYLOAD_MAX:
        raise ValueError("payload must be 0..255 bytes, got %r" % (payload_bytes,))
    if not _PREAMBLE_MIN <= preamble <= _PREAMBLE_MAX:
        raise ValueError("preamble must be 6..65535 symbols, got %r" % (preamble,))


def symbol_us(sf, bw_hz=125000):
    """Duration of one symbol in microseconds (exact for legal settings)."""
    if not _SF_MIN <= sf <= _SF_MAX or bw_hz not in (125000, 250000, 500000):
        raise ValueError("bad sf %r or bandwidth %r" % (sf, bw_hz))
    return (1000000 // bw_hz) << sf


def airtime_us(
    payload_bytes, sf, bw_hz=125000, cr_denom=5, preamble=_PREAMBLE_DEFAULT, explicit_header=True, crc=True, ldro=None
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
    payload_bytes, sf, bw_hz=125000, cr_denom=5, preamble=_PREAMBLE_DEFAULT, explicit_header=True, crc=True, ldro=None
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
    return (222, 222, 115, 51, 51, 51)[sf - 7]  # RP002 "N" at BW125, by SF - 7


def band_for(freq_hz, bw_hz=125000):
    """Index into lora.BANDS of the sub-band holding a channel, or ValueError.

    The whole channel, freq_hz +- bw_hz/2, must lie inside one sub-band: a
    125 kHz channel centred on 869.65 MHz spills out of g3 and is refused.
    Pass bw_hz=0 to test the centre frequency alone.  Where two bands touch
    (865.0, 868.0 MHz) the lower one wins, which for 865.0 MHz is the
    stricter 0.1 % band.
    """
    half = bw_hz // 2
    lo = freq_hz - half
    hi = freq_hz + half
    for i in range(_N_BANDS):
        if BAND_LIMITS[3 * i] <= lo and hi <= BAND_LIMITS[3 * i + 1]:
            return i
    raise ValueError("%r Hz (bandwidth %r Hz) is outside every EU868 sub-band" % (freq_hz, bw_hz))


class DutyCycle:
    """Per-band LoRaWAN off-time accountant for EU868 (see module docstring).

    State is two integers per band: when the band opens again (ms) and the
    airtime used so far (us; past 2^30 us, about 18 minutes of airtime, that
    becomes a long int on a board, one small allocation per record).  `band`
    arguments take a band index (0..5) or a frequency in Hz (then looked up
    with band_for at 125 kHz).
    """

    def __init__(self):
        self._until = [0] * _N_BANDS
        self._used_us = [0] * _N_BANDS

    @staticmethod
    def _index(band):
        if 0 <= band < _N_BANDS:
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
        k = 1000 // BAND_LIMITS[3 * i + 2]
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
        for i in range(_N_BANDS):
            self._until[i] = 0
            self._used_us[i] = 0


def wrapper(frame, strip=False):
    """A node's frames through LoRa Basics Station gateways (SPEC §7, protocol/proprietary.py):
    the PHYPayload carrying `frame` as a LoRaWAN proprietary frame, MHDR 0xE0 then the frame
    unchanged; with `strip`, a received PHYPayload's frame: without its leading 0xE0, and
    unchanged when it has none (no v1 frame starts with 0xE0: anything else fails to parse
    as it always did). Names a node has interned already (`wrapper`, `strip`)."""
    if strip:
        return frame[1:] if frame and frame[0] == _MHDR else frame
    return bytes((_MHDR,)) + frame
