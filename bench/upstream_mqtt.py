"""The MQTT upstream's throughput and CPU per record, against the HTTP upstream in the same run.

`python bench/upstream_mqtt.py --json [--records N] [--nodes N] [--repeats R]`

The same N stored records (LIGHT and IRRIGATION from `--nodes` nodes) drained
from a real store (WAL, synchronous=FULL) by each upstream, records deleted
after their acknowledgement, receivers in their own processes on 127.0.0.1:

- `http`: gateway/upstream.py, native `lumeau.records/3`, gzip (ISA-L), batches
  of 2,000, to a null HTTP sink (bench/gateway.py's: gunzips, parses, counts)
  -- the baseline;
- `mqtt_plain`: gateway/upstream_mqtt.py, one QoS 1 message per record on
  lumeau/<site>/<node>/<type> (retained), batches of 500, to Debian's mosquitto;
- `mqtt_thingsboard`: the same, ThingsBoard's Gateway MQTT API: a batch's
  records grouped by device in v1/gateway/telemetry messages of at most 64 KiB.

mosquitto has no subscriber here: it acknowledges, keeps the retained
messages and drops the rest, as a broker does for a platform that is not
listening. Figures: records/s (wall), gateway CPU µs per record (this
process: the upstream, the store's writer thread, the deletes), receiver CPU
µs per record, best of R rounds. Ratios: `*_rate_ratio` = MQTT records/s ÷
HTTP records/s; `*_cpu_ratio` = MQTT CPU per record ÷ HTTP CPU per record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, machine
from bench.gateway import process_cpu, start_sink
from gateway.model import Record
from gateway.store import Store
from gateway.upstream import Upstream
from gateway.upstream_mqtt import MqttUpstream
from protocol import messages as m

TOKEN = "bench-upstream-mqtt-token-0123456789"
T0 = 1_800_000_000.0


def records(n: int, nodes: int, seed: int = 1) -> list[Record]:
    rnd = random.Random(seed)
    out = []
    counters = [0] * (nodes + 1)
    for i in range(n):
        node = 1 + i % nodes
        counters[node] += 1
        body: dict[int, Any]
        if node % 5:
            mtype, body = m.LIGHT, {0: rnd.randrange(101), 1: 400 + rnd.randrange(200), 2: 100_000 + i, 3: m.LS_ON}
        else:
            mtype, body = m.IRRIGATION, {0: b"\x3e\x47", 1: 0x81, 2: 145, 3: 982_311 + i, 4: 0, 5: 24_050, 6: 0}
        kind = "light" if mtype == m.LIGHT else "irrigation"
        out.append(
            Record(node, counters[node], mtype, kind, T0 + i * 0.01, body, {}, best_rssi=-95.0, gateway_id="bench")
        )
    return out


def start_broker(tmp: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(exe, os.X_OK):
        raise SystemExit(f"{exe} is missing: run `make mosquitto`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nlog_type error\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


async def drain(tmp: Path, recs: list[Record], make: Any, receiver_pid: int) -> dict[str, float]:
    db = tmp / f"gw-{time.monotonic_ns()}.db"
    store = await Store.open(db)
    try:
        for i in range(0, len(recs), 2000):
            await store.append_many([(r, None) for r in recs[i : i + 2000]])
        await store.drain()
        up = make(store)
        r0 = process_cpu(receiver_pid) or 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        await up.start()
        await up.flush(600)
        await store.drain()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rcpu = (process_cpu(receiver_pid) or 0.0) - r0
        await up.stop()
        assert store.count() == 0 and up.records_sent == len(recs), "not everything was delivered"
        return {
            "records_per_s": len(recs) / wall,
            "cpu_us_per_record": cpu / len(recs) * 1e6,
            "receiver_cpu_us_per_record": rcpu / len(recs) * 1e6,
            "messages_per_record": up.requests / len(recs),
        }
    finally:
        await store.close()
        for p in tmp.glob(db.name + "*"):
            p.unlink()


async def run(n: int, nodes: int, repeats: int, tmp: Path) -> dict[str, Any]:
    recs = records(n, nodes)
    sink, url = start_sink(tmp, TOKEN, None, null=True)
    broker, port = start_broker(tmp)
    variants = {
        "http": (sink.pid, lambda s: Upstream(s, url, token=TOKEN, max_age=0.0)),
        "mqtt_plain": (broker.pid, lambda s: MqttUpstream(s, "127.0.0.1", port, site="bench", max_age=0.0)),
        "mqtt_thingsboard": (
            broker.pid,
            lambda s: MqttUpstream(s, "127.0.0.1", port, shape="thingsboard", site="bench", max_age=0.0),
        ),
    }
    best: dict[str, dict[str, float]] = {}
    try:
        for _ in range(repeats):
            for name, (pid, make) in variants.items():
                got = await drain(tmp, recs, make, pid)
                if name not in best or got["cpu_us_per_record"] < best[name]["cpu_us_per_record"]:
                    best[name] = got
    finally:
        for p in (sink, broker):
            p.kill()
            p.wait()
    out: dict[str, Any] = {"records": n, "nodes": nodes}
    for name, f in best.items():
        for k, v in f.items():
            out[f"{name}_{k}"] = round(v, 4 if k == "messages_per_record" else 2)
    h = best["http"]
    for name in ("mqtt_plain", "mqtt_thingsboard"):
        out[f"{name}_rate_ratio"] = round(best[name]["records_per_s"] / h["records_per_s"], 3)
        out[f"{name}_cpu_ratio"] = round(best[name]["cpu_us_per_record"] / h["cpu_us_per_record"], 3)
    return out | machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--records", type=int, default=20_000, help="records stored, then drained by each upstream")
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best (least CPU) of each is kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lumeau-bench-mqtt-") as tmp:
        result = asyncio.run(run(args.records, args.nodes, args.repeats, Path(tmp)))
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
