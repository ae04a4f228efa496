"""The simulated gateway sites' radio front-ends, as a real `lumeau gateway` sees them.

A site of the scenario reaches the gateway process the way real hardware
does, on its real transports:

- `BridgeBoard`: a radio bridge board (SPEC §10) on a pseudo-terminal the
  gateway opens as its serial port. Every frame the site heard goes up as an
  RX message (COBS + CRC-16, SPEC §8, built with protocol/bridge_msg.py);
  the gateway's TX requests come down and are answered with exactly one
  TX_RESULT; PING and RX_CONFIG are answered with STATUS. Bridge time
  (`tmst`, ms) is the board's clock: virtual milliseconds since the board
  booted (the run's start, or its last restart); the board knows the
  simulated time and says so with TIME after its STATUS at boot, so the
  gateway dates every RX on simulated time.
- `PacketForwarder`: a Semtech UDP packet forwarder (protocol v2, as
  `lora_pkt_fwd`): PUSH_DATA with one `rxpk` per frame heard, carrying the
  simulated time as `time` (so the gateway's records carry it) and the
  concentrator counter `tmst` (virtual microseconds since the forwarder
  booted); PULL_DATA keepalives every KEEPALIVE_S of real time (the
  gateway's downlink route times out on its own, real, clock); PULL_RESP
  `txpk` downlinks answered with TX_ACK at once (NONE, or the reason it
  cannot go: TOO_LATE, DUTY_CYCLE, ...).

Both are plain non-blocking file descriptors driven by their owner
(simulator/live.py): `on_readable()` when select() says so, `flush()` while
`wants_write`. A downlink request is handed to the owner's `resolve(site,
tmst, frame)`, which puts it on the simulated air in the node's receive
window or names why not (a DownlinkError reason); the front-end turns that
into the answer its protocol has (TX_RESULT code, TX_ACK error).

Simplification, named: a real bridge answers TX_RESULT after the
transmission ended and a forwarder may send TX_ACK before; here both answer
as soon as the simulated air accepted or refused the frame, which is before
the RX1 window opens (the gateway only needs the answer within its own
timeouts).

Limits: OUT_MAX bytes waiting to be written to the pty (the gateway not
reading: a real USB CDC line drops too; counted as `dropped_bytes`),
frames of 1..255 bytes (bridge_msg.FRAME_MAX).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import re
import socket
import time
import tty
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from protocol import bridge_msg as bm
from protocol import frame as fr
from protocol import serial as framing

U32 = 0xFFFFFFFF
RX1_DELAY_MS = 1000  # SPEC §6
KEEPALIVE_S = 5.0  # real seconds between PULL_DATA (lora_pkt_fwd: 10 s; the gateway's route lasts 60 s)
STAT_EVERY_S = 30.0  # real seconds between `stat` reports (lora_pkt_fwd's default stat_interval)
OUT_MAX = 1 << 20
READ_CHUNK = 65536
BRIDGE_FIRMWARE = "lumeau-sim bridge"
SERIAL_MAX = 300  # the longest bridge message (TX: 14 + 255 bytes)

# DownlinkError reasons (what `resolve` returns) -> the front-end's answer.
_TX_RESULT = {
    None: bm.TX_SENT,
    "too_late": bm.TX_TOO_LATE,
    "too_early": bm.TX_TOO_EARLY,
    "duty_cycle": bm.TX_DUTY_CYCLE,
    "busy": bm.TX_BUSY,
    "too_long": bm.TX_BAD_REQUEST,
    "bad_request": bm.TX_BAD_REQUEST,
}
_TX_ACK = {
    None: "NONE",
    "too_late": "TOO_LATE",
    "too_early": "TOO_EARLY",
    "busy": "COLLISION_PACKET",
    "duty_cycle": "DUTY_CYCLE",
    "too_long": "TX_FREQ",
    "bad_request": "TX_FREQ",
}

# resolve(site, front-end time of the RX1 window, node id, frame) -> None (on the air) or a DownlinkError reason
Resolver = Callable[[str, int, int, bytes], str | None]
_DATR = re.compile(r"^SF(\d+)BW\d+$")


def _snr_q(snr_db: float) -> int:
    return max(-128, min(127, int(round(snr_db * 4))))


def _rssi(rssi_dbm: float) -> int:
    return max(-32768, min(32767, int(round(rssi_dbm))))


def _node_of(raw: bytes) -> int | None:
    try:
        return fr.parse(raw).node_id
    except ValueError:
        return None


class BridgeBoard:
    """A radio bridge board (SPEC §10) on a pseudo-terminal; `path` is what the gateway opens."""

    kind = "bridge"

    def __init__(self, site: str, resolve: Resolver, *, bw_hz: int = 125000) -> None:
        self.site = site
        self.resolve = resolve
        self.bw_hz = bw_hz
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # the line carries bytes, not text: no echo, no CR/LF games
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.decoder = framing.Decoder(SERIAL_MAX)
        self._out = bytearray()
        self.boot_us = 0
        self.up = True
        self.rx_cfg = (868100000, 7)
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"BridgeBoard({self.site}, {self.path})"

    def fileno(self) -> int:
        return self.master

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def tmst(self, t_us: int) -> int:
        """The board's ms clock at virtual time `t_us` (µs since the run started), mod 2^32."""
        return ((t_us - self.boot_us) // 1000) & U32

    # -- bridge -> host -------------------------------------------------

    def _send(self, msg: bytes) -> None:
        if len(self._out) > OUT_MAX:
            self.counts["dropped_bytes"] += len(msg)
            return
        self._out += framing.encode(msg)
        self.flush()

    def flush(self) -> None:
        while self._out:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                return
            except OSError as e:  # EIO: nobody holds the line open right now; keep the bytes
                if e.errno in (errno.EIO, errno.EAGAIN):
                    return
                raise
            del self._out[:n]
            self.counts["bytes_out"] += n

    def status(self, now_us: int) -> None:
        c = self.counts
        self._send(
            bm.encode_status(
                max(0, (now_us - self.boot_us) // 1_000_000) & U32,
                c["rx"],
                0,
                c["tx_sent"],
                c["tx_refused"],
                self.rx_cfg[0],
                self.rx_cfg[1],
                self.bw_hz,
                BRIDGE_FIRMWARE,
            )
        )

    def boot(self, now_us: int) -> None:
        """Power on (the run's start, or the end of a restart): the clock starts at 0, STATUS goes up."""
        self.boot_us = now_us
        self.up = True
        self.counts["boots"] += 1
        self.status(now_us)

    def time_sync(self, now_us: int, unix_s: float) -> None:
        """TIME (SPEC §10): this board knows the (simulated) time, so the gateway dates RX by our clock."""
        whole = int(unix_s)
        self._send(bm.encode_time(self.tmst(now_us), whole, min(999, int(round((unix_s - whole) * 1000)))))
        self.counts["time"] += 1

    def down(self) -> None:
        self.up = False

    def forward(
        self, raw: bytes, end_us: int, unix_s: float, freq_hz: int, sf: int, rssi_dbm: float, snr_db: float
    ) -> int:
        """An uplink the site heard, as an RX message; returns the bridge time of its RX1 window."""
        t = self.tmst(end_us)
        self._send(bm.encode_rx(t, freq_hz, sf, self.bw_hz, _rssi(rssi_dbm), _snr_q(snr_db), raw))
        self.counts["rx"] += 1
        return (t + RX1_DELAY_MS) & U32

    # -- host -> bridge -------------------------------------------------

    def on_readable(self, now_us: int) -> None:
        while True:
            try:
                data = os.read(self.master, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EIO:  # the gateway closed the port (restarting): nothing to read
                    return
                raise
            if not data:
                return
            for payload in self.decoder.feed(data):
                self._host_message(payload, now_us)

    def _host_message(self, payload: bytes, now_us: int) -> None:
        try:
            msg = bm.decode(payload)
        except bm.BridgeMessageError:
            self.counts["host_errors"] += 1
            return
        t = msg[0]
        if t == bm.TX:
            _, tx_id, flags, tmst, freq, sf, bw, power, raw = msg
            self.counts["tx_requests"] += 1
            if not self.up:
                why: str | None = "radio_error"
            elif not flags & bm.TX_TIMED:
                why = "bad_request"  # a LoRa node only listens in its receive window: "now" reaches nobody
            else:
                node = _node_of(raw)
                why = "bad_request" if node is None else self.resolve(self.site, tmst, node, raw)
            code = _TX_RESULT.get(why, bm.TX_RADIO_ERROR)
            self.counts["tx_sent" if code == bm.TX_SENT else "tx_refused"] += 1
            if code != bm.TX_SENT:
                self.counts[f"tx_{why}"] += 1
            self._send(bm.encode_tx_result(tx_id, code, tmst if code == bm.TX_SENT else 0))
        elif t == bm.PING:
            self.status(now_us)
        elif t == bm.RX_CONFIG:
            self.rx_cfg = (msg[1], msg[2])
            self.status(now_us)
        else:
            self.counts["host_errors"] += 1

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def stats(self) -> dict[str, int]:
        return dict(self.counts)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PacketForwarder:
    """A Semtech UDP packet forwarder (protocol v2) talking to the gateway at `server`."""

    kind = "udp"

    def __init__(
        self,
        site: str,
        eui: bytes,
        resolve: Resolver,
        *,
        bw_hz: int = 125000,
        channels_hz: tuple[int, ...] = (),
        immediate: Callable[[str, bytes, int, int], str | None] | None = None,
    ) -> None:
        if len(eui) != 8:
            raise ValueError("a forwarder EUI is 8 bytes")
        self.site = site
        self.eui = eui
        self.resolve = resolve
        self.immediate = immediate  # immediate(site, frame, freq Hz, sf): a txpk with `imme` (a multicast)
        self.bw_hz = bw_hz
        self.channels_hz = tuple(channels_hz)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.server: tuple[str, int] | None = None
        self.boot_us = 0
        self.up = True
        self._token = random.Random(eui).getrandbits(16)
        self._last_pull = -1e9
        self._last_stat = -1e9
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"PacketForwarder({self.site}, {self.eui.hex()} -> {self.server})"

    def fileno(self) -> int:
        return self.sock.fileno()

    wants_write = False

    def flush(self) -> None:
        pass

    def tmst(self, t_us: int) -> int:
        return (t_us - self.boot_us) & U32

    def _datagram(self, ident: int, body: bytes = b"") -> None:
        if self.server is None:
            return
        self._token = (self._token + 1) & 0xFFFF
        try:
            self.sock.sendto(bytes((2, self._token >> 8, self._token & 0xFF, ident)) + self.eui + body, self.server)
        except OSError:  # the gateway's port is gone for the moment (ICMP unreachable): UDP loses it
            self.counts["send_errors"] += 1

    def connect(self, host: str, port: int) -> None:
        self.server = (host, port)

    def boot(self, now_us: int) -> None:
        self.boot_us = now_us
        self.up = True
        self.counts["boots"] += 1
        self.keepalive(force=True)

    def down(self) -> None:
        self.up = False

    def keepalive(self, force: bool = False) -> None:
        """PULL_DATA (opens and keeps the downlink route) and `stat`, on real time."""
        if not self.up:
            return
        now = time.monotonic()
        if force or now - self._last_pull >= KEEPALIVE_S:
            self._last_pull = now
            self._datagram(0x02)
            self.counts["pull_data"] += 1
        if force or now - self._last_stat >= STAT_EVERY_S:
            self._last_stat = now
            c = self.counts
            stat = {
                "time": _iso(time.time()).replace("T", " ")[:19] + " GMT",
                "rxnb": c["rxpk"],
                "rxok": c["rxpk"],
                "rxfw": c["rxpk"],
                "ackr": 100.0 * c["push_ack"] / max(1, c["push_data"]),
                "dwnb": c["pull_resp"],
                "txnb": c["tx_sent"],
            }
            self._datagram(0x00, json.dumps({"stat": stat}, separators=(",", ":")).encode())
            self.counts["push_data"] += 1

    def forward(
        self, raw: bytes, end_us: int, unix_s: float, freq_hz: int, sf: int, rssi_dbm: float, snr_db: float
    ) -> int:
        """One PUSH_DATA with the frame as an rxpk; returns the concentrator time of its RX1 window."""
        t = self.tmst(end_us)
        chan = self.channels_hz.index(freq_hz) if freq_hz in self.channels_hz else 0
        rxpk = {
            "time": _iso(unix_s),
            "tmst": t,
            "chan": chan,
            "rfch": 0,
            "freq": round(freq_hz / 1e6, 6),
            "stat": 1,
            "modu": "LORA",
            "datr": f"SF{sf}BW{self.bw_hz // 1000}",
            "codr": "4/5",
            "rssi": _rssi(rssi_dbm),
            "lsnr": round(snr_db, 1),
            "size": len(raw),
            "data": base64.b64encode(raw).decode("ascii"),
        }
        self._datagram(0x00, json.dumps({"rxpk": [rxpk]}, separators=(",", ":")).encode())
        self.counts["push_data"] += 1
        self.counts["rxpk"] += 1
        return (t + RX1_DELAY_MS * 1000) & U32

    def on_readable(self, now_us: int) -> None:
        while True:
            try:
                data, _addr = self.sock.recvfrom(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors of earlier sends surface here
                self.counts["socket_errors"] += 1
                continue
            if len(data) < 4 or data[0] not in (1, 2):
                self.counts["malformed"] += 1
                continue
            ident = data[3]
            if ident == 0x01:
                self.counts["push_ack"] += 1
            elif ident == 0x04:
                self.counts["pull_ack"] += 1
            elif ident == 0x03:
                self._pull_resp(data)
            else:
                self.counts["malformed"] += 1

    def _pull_resp(self, data: bytes) -> None:
        self.counts["pull_resp"] += 1
        error = "NONE"
        try:
            txpk = json.loads(data[4:])["txpk"]
            raw = base64.b64decode(txpk["data"])
            why: str | None
            if not self.up:
                why = "busy"
            elif txpk.get("imme"):  # sent at once: only a node that listens all the time hears it (multicast)
                datr = _DATR.match(str(txpk.get("datr", "")))
                if self.immediate is None or datr is None:
                    why = "bad_request"
                else:
                    why = self.immediate(self.site, raw, int(round(float(txpk["freq"]) * 1e6)), int(datr.group(1)))
            else:
                tmst = int(txpk["tmst"])
                node = _node_of(raw)
                why = "bad_request" if node is None else self.resolve(self.site, tmst & U32, node, raw)
            error = _TX_ACK.get(why, "TX_FREQ")
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):  # whatever the network sends
            self.counts["malformed"] += 1
            error = "TX_FREQ"
        self.counts["tx_sent" if error == "NONE" else "tx_refused"] += 1
        if error != "NONE":
            self.counts[f"tx_{error.lower()}"] += 1
        # TX_ACK carries the PULL_RESP's token
        ack = (
            bytes((2, data[1], data[2], 0x05))
            + self.eui
            + json.dumps({"txpk_ack": {"error": error}}, separators=(",", ":")).encode()
        )
        if self.server is not None:
            try:
                self.sock.sendto(ack, self.server)
            except OSError:
                self.counts["send_errors"] += 1

    def close(self) -> None:
        self.sock.close()

    def stats(self) -> dict[str, int]:
        return dict(self.counts)
