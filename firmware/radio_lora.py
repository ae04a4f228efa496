# LoRa radio through micropython-lib's `lora` drivers (SX127x / SX126x),
# device only: `lora` and `machine` are imported inside make_modem(), so this
# module loads anywhere and the class above the driver is tested with a
# modem object shaped like the driver's async API:
#
#   modem.configure(lora_cfg)              dict: freq_khz, sf, bw ("125"), coding_rate,
#                                          output_power, preamble_len, invert_iq_rx/tx, crc_en
#   await modem.send(packet)               returns when transmission is done
#   await modem.recv(timeout_ms)           -> RxPacket (a bytearray with .rssi dBm,
#                                          .snr in dB * 4, .crc_error, .ticks_ms) or None
#   modem.standby()
#
# IQ polarity follows LoRaWAN: nodes transmit with normal IQ and receive
# inverted; the bridge (the gateway's radio) receives normal and transmits
# inverted. So nodes never hear each other's uplinks, only downlinks.

from protocol import nodelora as lora

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_PREAMBLE = const(8)  # LoRaWAN's, and what protocol.lora's airtime assumes
RX_WINDOW_SYMBOLS = 8  # RX1 stays open this many symbols after RX_EARLY_MS, like LoRaWAN's timeout
RX_MARGIN_MS = 40


class LoRaRadio:
    """firmware.radio.Radio on a micropython-lib async LoRa modem.

    wrapper: the node is behind LoRa Basics Station gateways (config radio.basics_station,
    SPEC §7): every frame goes out as a LoRaWAN proprietary frame (protocol/nodelora.py
    `wrapper`: one byte 0xE0, then the frame), a leading 0xE0 is stripped from what is heard,
    and the payload limits and times on air count that byte."""

    continuous = False

    def __init__(self, modem, freq_hz=868100000, sf=9, bw_hz=125000, cr=5, tx_power=14, bridge=False, wrapper=False):
        self.modem = modem
        self.wrapper = wrapper
        self.freq_hz = freq_hz
        self.sf = sf
        self.bw_hz = bw_hz
        self.cr = cr
        self.tx_power = tx_power
        self.bridge = bridge
        self.band = lora.band_for(freq_hz, bw_hz)
        self.max_frame = lora.max_payload(sf) - wrapper  # a bool: the MHDR's byte, or none
        self.crc_errors = 0
        self._apply()

    def _cfg(self):
        return {
            "freq_khz": self.freq_hz // 1000,
            "sf": self.sf,
            "bw": str(self.bw_hz // 1000),
            "coding_rate": self.cr,
            "output_power": self.tx_power,
            "preamble_len": _PREAMBLE,
            "crc_en": True,
            "invert_iq_tx": self.bridge,
            "invert_iq_rx": not self.bridge,
        }

    def _apply(self):
        self.modem.configure(self._cfg())

    def configure(self, sf=None, tx_power=None, freq_hz=None, bw_hz=None):
        if sf is not None:
            lora.max_payload(sf)  # ValueError outside 7..12
            self.sf = sf
            self.max_frame = lora.max_payload(sf) - self.wrapper
        if tx_power is not None:
            self.tx_power = tx_power
        if freq_hz is not None or bw_hz is not None:
            f = self.freq_hz if freq_hz is None else freq_hz
            b = self.bw_hz if bw_hz is None else bw_hz
            self.band = lora.band_for(f, b)
            self.freq_hz = f
            self.bw_hz = b
        self._apply()

    def airtime_ms(self, n):
        return lora.airtime_ms(n + self.wrapper, self.sf, self.bw_hz, self.cr, _PREAMBLE)

    def rx_window_ms(self):
        return 2 * RX_MARGIN_MS + RX_WINDOW_SYMBOLS * lora.symbol_us(self.sf, self.bw_hz) // 1000

    async def send(self, frame):
        if self.wrapper:
            frame = lora.wrapper(frame)
        return await self.modem.send(frame)

    async def recv(self, timeout_ms):
        rx = await self.modem.recv(timeout_ms)
        if not rx:
            return None
        if getattr(rx, "crc_error", False):
            self.crc_errors += 1
            return None
        data = bytes(rx)
        if self.wrapper:
            data = lora.wrapper(data, True)
        return (data, rx.rssi, rx.snr)


def make_modem(radio_cfg, pins):
    """Build the async modem on a board from config["radio"] and config["pins"].

    pins: spi (bus id), cs, and for SX127x dio0 (+ optional dio1), for SX126x
    busy and dio1; reset optional. Device only (imports machine and lora).
    """
    from machine import SPI, Pin
    import lora as lib  # type: ignore[import-not-found]  # micropython-lib, on the board

    # the chips this module knows, and the micropython-lib class of each (built here: boot only)
    chips = {
        "sx1276": "AsyncSX1276",
        "sx1277": "AsyncSX1277",
        "sx1278": "AsyncSX1278",
        "sx1279": "AsyncSX1279",
        "sx1261": "AsyncSX1261",
        "sx1262": "AsyncSX1262",
    }
    chip = radio_cfg.get("chip", "sx1276")
    name = chips.get(chip)
    if name is None:
        raise ValueError("radio.chip %r: one of %s" % (chip, ", ".join(chips)))
    cls = getattr(lib, name)
    spi = SPI(pins.get("spi", 1), baudrate=2000000, polarity=0, phase=0)
    kw = {}
    for key in ("dio0", "dio1", "busy", "reset"):
        if key in pins:
            kw[key] = Pin(pins[key])
    return cls(spi, Pin(pins["cs"]), **kw)
