"""A long upstream outage, time-compressed: memory stays flat, the disk follows the policy, the backlog drains in order.

`python bench/outage.py --json [--frames 1000000] [--nodes 2000] [--max-records N] [--alarm-every 1000]`

Issue 15, item 7. The gateway side runs in this process as `lumeau gateway`
wires it (pipeline with the downlink queue and the readings history behind
it, the store on a real SQLite file, WAL, synchronous=FULL, the real
upstream), while a receiver in another process answers 503 (the city
platform is down). Sealed frames from `--nodes` nodes (each node's counter
increasing, an alarm every `--alarm-every` frames) go through
`pipeline.submit` as fast as it takes them: a day's outage of a large city in
a minute. Then the receiver comes back and the backlog drains; the receiver
checks every node's counters arrive in increasing order.

Time compression: the upstream's backoff is capped at 1 s (60 s in
production) so the drain starts within a second of the receiver's return.

Figures (JSON):
- `ingest_frames_per_s` (upstream down) and `drain_records_per_s` (from the
  receiver's return until the queue is empty); `drain_vs_ingest` is their
  ratio (the baseline, measured in this run: > 1 means a backlog drains
  faster than it built up);
- `rss_mb_start` (before the first frame), `rss_mb_peak_ingest`,
  `rss_mb_peak_drain`, `rss_mb_by_tenth` (RSS after each tenth of the
  frames: flat, not growing with the backlog), `rss_growth_ratio` (peak /
  RSS after the first tenth) and the bound `rss_bound_mb` = 100, from
  /proc/self/status (VmRSS), sampled every 0.1 s;
- the disk: `records_queued_peak`, `max_records`, `evicted_total`,
  `db_bytes_peak`, `db_bytes_per_record`; alarms sent and delivered (never
  evicted);
- the receiver: `delivered`, `order_violations` (a node's counter lower than
  one it already received), `redelivered` (a record received twice: harmless
  by the idempotency key, counted), `receiver_cpu_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2

from bench.common import emit, machine
from gateway.downlinks import Downlinks
from gateway.history import History
from gateway.model import Reception
from gateway.pipeline import Pipeline
from gateway.registry import NodeEntry, Registry
from gateway.service import Observers
from gateway.store import DEFAULT_MAX_RECORDS, RECENT_MAX, Store
from gateway.upstream import Upstream
from protocol import frame
from protocol import messages as m

RSS_BOUND_MB = 100
TOKEN = "outage-bench-token-0123456789"
ALARM_BODY = {0: m.EV_BURST, 1: m.SEV_CRITICAL, 2: 950, 4: 1, 5: 2}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------- the receiver (another process)


def serve_receiver() -> None:
    """503 until POST /control/up; then 200 for every batch, checking per-node counter order."""
    from aiohttp import web

    token = "Bearer " + os.environ["OUTAGE_TOKEN"]
    st: dict[str, Any] = {"up": False, "records": 0, "violations": 0, "redelivered": 0, "alarms": 0, "refused": 0}
    last: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()

    async def post(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != token:
            return web.json_response({"error": "token"}, status=401)
        if not st["up"]:
            st["refused"] += 1
            return web.json_response({"error": "down for maintenance"}, status=503)
        doc = json.loads(await request.read())  # aiohttp undid the gzip
        cols = doc["columns"]
        i_node, i_counter, i_alarm = cols.index("node"), cols.index("counter"), cols.index("alarm")
        for r in doc["records"]:
            node, counter = r[i_node], r[i_counter]
            if (node, counter) in seen:
                st["redelivered"] += 1
                continue
            seen.add((node, counter))
            if counter < last.get(node, -1):
                st["violations"] += 1
            last[node] = max(counter, last.get(node, -1))
            st["records"] += 1
            st["alarms"] += bool(r[i_alarm])
        return web.json_response({"accepted": len(doc["records"]), "duplicates": 0})

    async def up(_request: web.Request) -> web.Response:
        st["up"] = True
        return web.json_response({})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**st, "nodes": len(last), "cpu_s": time.process_time()})

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/records", post)
        app.router.add_post("/control/up", up)
        app.router.add_get("/control/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"receiver listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_receiver() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OUTAGE_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-receiver"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None  # stdout=PIPE
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        mt = re.search(r"listening on (http://\S+)", line)
        if mt:
            return proc, mt.group(1).rstrip("/")
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the receiver did not start")


# ---------------------------------------------------------------- the gateway side (this process)


def provision(n_nodes: int, seed: int) -> Registry:
    rnd = random.Random(seed)
    reg = Registry(Path(tempfile.gettempdir()) / "unused-outage-registry.toml")
    for n in range(1, n_nodes + 1):
        reg.upsert(NodeEntry(node_id=n, kind="lighting", root_key=rnd.getrandbits(128).to_bytes(16, "big")))
    return reg


class Frames:
    """Sealed frames made on the fly (a million would not fit the memory bound as a list)."""

    def __init__(self, reg: Registry, n_nodes: int, alarm_every: int, seed: int) -> None:
        self.keys: list[Any] = [None]
        for n in range(1, n_nodes + 1):
            entry = reg.get(n)
            assert entry is not None  # provisioned just above
            self.keys.append(entry.keys)
        self.n_nodes = n_nodes
        self.alarm_every = alarm_every
        self.counters = [0] * (n_nodes + 1)
        self.rnd = random.Random(seed)
        self.alarms = 0
        self.alarm_cbor = m.encode(m.EVENT, ALARM_BODY)

    def reception(self, i: int) -> Reception:
        n = i % self.n_nodes + 1
        self.counters[n] += 1
        r = self.rnd
        if self.alarm_every and i % self.alarm_every == self.alarm_every - 1:
            self.alarms += 1
            mtype, body = m.EVENT, self.alarm_cbor
        else:
            mtype = m.LIGHT
            body = cbor2.dumps(
                {0: r.randint(0, 100), 1: r.randint(0, 2500), 2: i, 3: 3, 4: r.randint(0, 50_000), 5: 3, 6: 205},
                canonical=True,
            )
        raw = frame.seal(self.keys[n], mtype, self.counters[n], body)
        return Reception(raw, "udp", "udp:0000000000000001", 1_800_000_000.0 + i * 0.001, rssi=-95.0, snr=4.0)


async def run(args: argparse.Namespace, db: Path, url: str) -> dict[str, Any]:
    import aiohttp

    reg = provision(args.nodes, args.seed)
    frames = Frames(reg, args.nodes, args.alarm_every, args.seed)
    store = await Store.open(db, max_records=args.max_records, recent_max=args.recent_max)
    downlinks = Downlinks(store, reg)
    await downlinks.start()
    pipeline = Pipeline(reg, store, downlinks=Observers(downlinks, History()))
    up = Upstream(store, url + "/v1/records", token=TOKEN, backoff_base=0.2, backoff_max=1.0, gateway_id="outage")
    pipeline.listeners.append(lambda _n: up.notify())
    await up.start()

    peak = {"ingest": 0.0, "drain": 0.0}
    phase = ["ingest"]
    size_peak = [0, 0]  # bytes, records

    async def sample() -> None:
        while True:
            peak[phase[0]] = max(peak[phase[0]], rss_mb())
            size_peak[0] = max(size_peak[0], store.size_bytes())
            size_peak[1] = max(size_peak[1], store.count())
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    rss_start = rss_mb()
    by_tenth: list[float] = []
    tenth = max(1, args.frames // 10)
    t0 = time.perf_counter()
    for i in range(args.frames):
        await pipeline.submit(frames.reception(i))
        if i % tenth == tenth - 1:
            by_tenth.append(round(rss_mb(), 1))
    await pipeline.drain()
    await store.drain()
    t_ingest = time.perf_counter() - t0
    size_peak[0] = max(size_peak[0], store.size_bytes())
    size_peak[1] = max(size_peak[1], store.count())
    queued = store.count()
    sent_during_outage = up.records_sent

    # the platform comes back
    phase[0] = "drain"
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/control/up") as r:
            assert r.status == 200
        t1 = time.perf_counter()
        up.notify()
        deadline = time.monotonic() + args.drain_timeout
        while store.count() or store.next_batch(1):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the backlog did not drain in {args.drain_timeout} s ({store.count()} left)")
            await asyncio.sleep(0.01)
        t_drain = time.perf_counter() - t1
        async with http.get(url + "/control/stats") as r:
            recv = await r.json()
    sampler.cancel()
    peak["drain"] = max(peak["drain"], rss_mb())
    stats = up.stats()
    await up.stop()
    await pipeline.close()
    await downlinks.close()
    accepted, evicted = pipeline.accepted, store.evicted_total
    await store.close()
    first_tenth = by_tenth[0] if by_tenth else rss_start
    rss_peak = max(peak.values())
    return {
        "frames": args.frames,
        "nodes": args.nodes,
        "accepted": accepted,
        "rejected": sum(pipeline.rejected.values()),
        "ingest_s": round(t_ingest, 2),
        "ingest_frames_per_s": round(args.frames / t_ingest),
        "records_queued_after_ingest": queued,
        "records_queued_peak": size_peak[1],
        "max_records": args.max_records,
        "evicted_total": evicted,
        "db_bytes_peak": size_peak[0],
        "db_bytes_per_record": round(size_peak[0] / max(1, size_peak[1]), 1),
        "sent_during_outage": sent_during_outage,
        "drain_s": round(t_drain, 2),
        "drain_records_per_s": round(queued / t_drain) if t_drain > 0 else None,
        "drain_vs_ingest": round((queued / t_drain) / (args.frames / t_ingest), 2) if t_drain > 0 else None,
        "upstream_requests": stats["requests"],
        "delivered": recv["records"],
        "redelivered": recv["redelivered"],
        "order_violations": recv["violations"],
        "nodes_delivered": recv["nodes"],
        "refused_while_down": recv["refused"],
        "alarms_sent": frames.alarms,
        "alarms_delivered": recv["alarms"],
        "receiver_cpu_s": round(recv["cpu_s"], 2),
        "rss_bound_mb": RSS_BOUND_MB,
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_peak_ingest": round(peak["ingest"], 1),
        "rss_mb_peak_drain": round(peak["drain"], 1),
        "rss_mb_by_tenth": by_tenth,
        "rss_growth_ratio": round(rss_peak / first_tenth, 2),
        "rss_within_bound": rss_peak < RSS_BOUND_MB,
        **machine(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS, help="the queue bound")
    ap.add_argument("--recent-max", type=int, default=RECENT_MAX, help="committed records kept in memory")
    ap.add_argument("--alarm-every", type=int, default=1000, help="one frame in N is an alarm (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--drain-timeout", type=float, default=1800.0, help="seconds")
    ap.add_argument("--dir", type=Path, default=None, help="where the database goes (default: a temporary directory)")
    ap.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_receiver:
        serve_receiver()
        return 0
    if args.frames < 1 or args.nodes < 1 or args.max_records < 1 or args.alarm_every < 0:
        ap.error("--frames, --nodes and --max-records must be positive, --alarm-every >= 0")
    proc, url = start_receiver()
    try:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            result = asyncio.run(run(args, Path(tmp) / "gateway.db", url))
    finally:
        proc.kill()
        proc.wait()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
