"""What the transports cost on top of the pipeline: frames/s in through UDP, a serial line and a Basics Station.

`python bench/transports.py --json [--frames N] [--nodes N] [--rxpk K]`

The same sealed LIGHT frames go, on one CPU, into a real pipeline over a
real store (WAL, synchronous=FULL, group commit) four ways:

- `direct`: `pipeline.submit` of ready-made receptions (the baseline: what a
  transport would cost if it were free);
- `udp`: PUSH_DATA datagrams of K rxpk each (8: an SX1301 concentrator's
  demodulators) from a packet-forwarder process on another CPU, which keeps
  at most 32 datagrams unacknowledged as a forwarder waits for PUSH_ACKs,
  into `SemtechServer` (JSON, base64, metadata, the bounded ingest queue);
- `serial`: the COBS+CRC byte stream written by another process into a
  real pseudo-terminal, read by `SerialTransport` (pyserial-asyncio-fast,
  protocol/serial.py's decoder in pure Python: the dominant cost);
- `basicstation`: `propdf` messages (a Lumeau frame behind MHDR 0xE0) from a
  station process on another CPU over one WebSocket with TLS (a self-signed
  certificate made for the run) and its token, into `BasicStationServer`
  (TLS, WebSocket framing, JSON, hex; the connection awaits the pipeline).

Each run ends when every frame is committed. `*_cost_ratio` = direct
frames/s / transport frames/s (1.0: the transport is free). Figures are what
a gateway can take in through one transport on one core, to compare with
what radios deliver (an 8-channel concentrator: a few hundred frames/s at
most; a 115200 Bd serial line: about 250 LIGHT frames/s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.model import Reception
from gateway.pipeline import Pipeline
from gateway.store import Store
from gateway.transports.basicstation import BasicStationServer
from gateway.transports.semtech import SemtechServer
from gateway.transports.serial import SerialTransport
from protocol import frame, keys, proprietary
from protocol import messages as m
from protocol import serial as framing

EUI = bytes.fromhex("aa555a0000000101")
WINDOW = 32  # datagrams in flight before the sender waits for a PUSH_ACK
STATION_TOKEN = "bench-station-token-0123456789"
HOWS = ("direct", "udp", "serial", "basicstation")


class Keys:
    """The registry's lookup shape, every node provisioned with its own random key."""

    def __init__(self, nodes: dict[int, keys.NodeKeys]) -> None:
        self._e = {n: SimpleNamespace(keys=k) for n, k in nodes.items()}

    def get(self, node_id: int) -> SimpleNamespace | None:
        return self._e.get(node_id)


def build(n_frames: int, n_nodes: int) -> tuple[Keys, list[bytes]]:
    node_keys = {0x00100000 + i: keys.NodeKeys(0x00100000 + i, os.urandom(16)) for i in range(n_nodes)}
    ids = list(node_keys)
    frames = []
    for i in range(n_frames):
        node = ids[i % n_nodes]
        body = m.encode(m.LIGHT, {0: i % 101, 1: 452, 2: 100_000 + i, 3: m.LS_ON, 6: 205})
        frames.append(frame.seal(node_keys[node], m.LIGHT, 1 + i // n_nodes, body))
    return Keys(node_keys), frames


async def until_taken(pipe: Pipeline, n: int, feeder: subprocess.Popen, what: str) -> None:
    """Until the pipeline has taken all n frames (accepted or rejected); fails if the feeding process does."""
    while pipe.accepted + sum(pipe.rejected.values()) < n:
        await asyncio.sleep(0.005)
        if feeder.poll() not in (None, 0):
            raise RuntimeError(f"{what} failed")


async def run(tmp: Path, reg: Keys, frames: list[bytes], how: str, rxpk: int) -> dict:
    store = await Store.open(tmp / f"{how}.db")
    pipe = Pipeline(reg, store)
    n = len(frames)
    out: dict = {}
    t0 = time.perf_counter()
    c0 = time.process_time()
    if how == "direct":
        for raw in frames:
            await pipe.submit(Reception(raw=raw, transport="inproc", gateway_id="bench", rx_time=time.time()))
        await pipe.drain()
    elif how == "udp":
        srv = SemtechServer(pipe, "127.0.0.1", 0)
        await srv.start()
        data = tmp / "datagrams.json"
        pks = [
            {
                "tmst": i,
                "freq": 868.1,
                "stat": 1,
                "modu": "LORA",
                "datr": "SF7BW125",
                "codr": "4/5",
                "rssi": -90,
                "lsnr": 7.5,
                "size": len(raw),
                "data": base64.b64encode(raw).decode(),
            }
            for i, raw in enumerate(frames)
        ]
        grams = [json.dumps({"rxpk": pks[i : i + rxpk]}) for i in range(0, n, rxpk)]
        data.write_text(json.dumps(grams))
        t0, c0 = time.perf_counter(), time.process_time()
        sender = subprocess.Popen([sys.executable, __file__, "--udp-sender", str(srv.port), str(data)])
        await until_taken(pipe, n, sender, "udp sender")
        await pipe.drain()
        sender.wait(30)
        out["udp_overload_dropped"] = srv.ingestor.dropped
        await srv.stop()
    elif how == "basicstation":
        cert, key = self_signed(tmp)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        station = BasicStationServer(pipe, "127.0.0.1", 0, tokens={EUI.hex(): STATION_TOKEN}, ssl_context=ctx)
        await station.start()
        msgs = [
            {
                "msgtype": "propdf",
                "FRMPayload": proprietary.wrap(raw).hex().upper(),
                "DR": 5,
                "Freq": 868_100_000,
                "upinfo": {"rctx": 0, "xtime": i, "rssi": -90, "snr": 7.5, "rxtime": time.time()},
            }
            for i, raw in enumerate(frames)
        ]
        data = tmp / "messages.json"
        data.write_text(json.dumps([json.dumps(x) for x in msgs]))
        t0, c0 = time.perf_counter(), time.process_time()
        sender = subprocess.Popen([sys.executable, __file__, "--ws-sender", str(station.port), str(data), str(cert)])
        await until_taken(pipe, n, sender, "station")
        await pipe.drain()
        await station.stop()  # closes the station's connection: the sender then exits
        sender.wait(30)
    else:
        master, slave = os.openpty()
        tty.setraw(slave)
        link = tmp / "ttyBENCH"
        link.symlink_to(os.ttyname(slave))
        os.close(slave)
        t = SerialTransport(pipe, str(link), mode="wired")
        await t.start()
        await t.wait_connected(10)
        stream = tmp / "stream.bin"
        stream.write_bytes(b"".join(framing.encode(raw) for raw in frames))
        out["serial_bytes"] = stream.stat().st_size
        t0, c0 = time.perf_counter(), time.process_time()
        writer = subprocess.Popen(
            [sys.executable, __file__, "--serial-writer", str(master), str(stream)], pass_fds=(master,)
        )
        await until_taken(pipe, n, writer, "serial writer")
        await pipe.drain()
        writer.wait(30)
        await t.stop()
        os.close(master)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out.update(
        {"seconds": dt, "cpu_busy": cpu / dt, "accepted": pipe.accepted, "rejected": sum(pipe.rejected.values())}
    )
    await pipe.close()
    await store.close()
    return out


def udp_sender(port: int, path: str) -> None:
    grams = [g.encode() for g in json.loads(Path(path).read_text())]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(10)
    in_flight = 0
    for i, g in enumerate(grams):
        token = i & 0xFFFF
        s.send(bytes((2, token >> 8, token & 0xFF, 0)) + EUI + g)
        in_flight += 1
        while in_flight >= WINDOW:
            s.recv(64)
            in_flight -= 1
    while in_flight:
        s.recv(64)
        in_flight -= 1


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, for the run."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lumeau-bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key = tmp / "key.pem"
    key.write_bytes(
        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key.chmod(0o600)
    return tmp / "cert.pem", key


def ws_sender(port: int, path: str, cafile: str) -> None:
    """A station: every propdf over one wss:// connection, as fast as TCP takes them."""
    import aiohttp

    msgs = json.loads(Path(path).read_text())

    async def send() -> None:
        ctx = ssl.create_default_context(cafile=cafile)
        async with aiohttp.ClientSession() as http:
            url = f"wss://127.0.0.1:{port}/router-{EUI.hex()}"
            async with http.ws_connect(url, ssl=ctx, headers={"Authorization": f"Bearer {STATION_TOKEN}"}) as ws:
                for msg in msgs:
                    await ws.send_str(msg)
                await ws.receive()  # until the server closes (at its stop): nothing is cut short

    asyncio.run(send())


def serial_writer(fd: int, path: str) -> None:
    data = memoryview(Path(path).read_bytes())
    while data:
        n = os.write(fd, data[:4096])
        data = data[n:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default output anyway)")
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--rxpk", type=int, default=8, help="rxpk per PUSH_DATA datagram")
    ap.add_argument("--udp-sender", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--serial-writer", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--ws-sender", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.udp_sender or args.serial_writer or args.ws_sender:
        if len(cpus) > 1:
            os.sched_setaffinity(0, set(cpus[1:]))
        if args.ws_sender:
            ws_sender(int(args.ws_sender[0]), args.ws_sender[1], args.ws_sender[2])
        elif args.udp_sender:
            udp_sender(int(args.udp_sender[0]), args.udp_sender[1])
        else:
            serial_writer(int(args.serial_writer[0]), args.serial_writer[1])
        return 0
    os.sched_setaffinity(0, {cpus[0]})
    reg, frames = build(args.frames, args.nodes)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="lumeau-bench-") as d:
        for how in HOWS:
            (Path(d) / how).mkdir()
            runs[how] = asyncio.run(run(Path(d) / how, reg, frames, how, args.rxpk))
    n = len(frames)
    direct = n / runs["direct"]["seconds"]
    out: dict = {"frames": n, "nodes": args.nodes, "rxpk_per_datagram": args.rxpk, "direct_frames_per_s": round(direct)}
    for how in HOWS[1:]:
        fps = n / runs[how]["seconds"]
        out[f"{how}_frames_per_s"] = round(fps)
        out[f"{how}_cost_ratio"] = round(direct / fps, 2)
    for how, r in runs.items():
        out[f"{how}_accepted"] = r["accepted"]
        out[f"{how}_cpu_busy"] = round(r["cpu_busy"], 2)
    out["udp_overload_dropped"] = runs["udp"]["udp_overload_dropped"]
    out["serial_bytes"] = runs["serial"]["serial_bytes"]
    out["machine"] = f"{len(cpus)} cpus, {platform.python_implementation()} {platform.python_version()}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
