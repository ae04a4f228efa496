"""Gateway throughput on one core: the whole pipeline against the floor of the same work.

`python bench/gateway.py --json [--frames N] [--nodes N] [--dup F] [--batch N] [--rate R]`

The gateway side runs in this process, pinned to one CPU (the store's writer
thread included), wired as `lumeau gateway` wires it (gateway/service.py:
the downlink queue and the readings history behind the pipeline's
after-commit observer; `--wiring bare` leaves both out, to measure what they
cost): receptions go through `pipeline.submit` exactly as the transports
hand them over -- parse, registry lookup, MIC, replay window, dedup (a
fraction `--dup` of the frames is heard by a second radio), decode and
check, durable group-committed insert (WAL, synchronous=FULL) -- while the
real upstream batches the records (native JSON `lumeau.records/3` by
default, `--native-version 2` for /2; gzip; bearer token; pipelined: the
next batch is encoded while one is in flight) to a real `lumeau sink`
process on another CPU and deletes them once it answered 2xx.

Figures:
- `pipeline_frames_per_s`: frames until the last one is committed;
- `end_to_end_frames_per_s`: frames until the sink acknowledged the last
  one and the queue is empty: the sustained rate (the bar: >= 20,000);
- `floor_frames_per_s`: in the same process on the same CPU, the same
  frames through the least this work can cost in CPython: cbor2.loads +
  hmac.digest (+ compare_digest) + a batched SQLite insert (executemany,
  one commit per FLOOR_GROUP rows, WAL, synchronous=FULL);
  `floor_precomputed_pads_frames_per_cpu_s`: the same with the MIC computed
  from padded-key hash states copied per frame, as the gateway does
  (protocol/crypto.py) -- a stricter floor, given beside the issue's;
- `cost_ratio` = floor / end_to_end (the bar: <= 3);
- the same per CPU-second of this process (`*_per_cpu_s`, `cpu_cost_ratio`):
  on a shared machine wall-clock rates move with the neighbours' load, CPU
  time much less; `gateway_cpu_busy` is CPU time / wall time of the run;
- `--rate R` offers R frames/s in 10 ms ticks instead of a burst: whether the
  gateway keeps up (`max_backlog` stays small) is the sustained capacity;
- `cpu_us_per_frame_by_stage`: each stage alone on the same frames (parse,
  verify, decode and check, naming the values, the whole admission, the
  after-commit observers (downlinks + history), store, reading a batch,
  native JSON in the version sent, gzip as sent, delete) next to the floor:
  where the time goes;
- `sink_cpu_us_per_record`: the receiver's CPU per record (from /proc):
  with one request in flight, a receiver slower than the gateway sets the
  end-to-end rate;
- `peak_rss_mb` (ru_maxrss: the high-water mark of this process, frames
  included) and `rss_before_mb` (after building the frames, before the run).

Frames are built before the clock starts (sealed with cbor2 bodies: the
deterministic encoding of int-keyed maps is the same in both codecs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import hmac
import json
import os
import platform
import random
import re
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2

from gateway import formats
from gateway.downlinks import Downlinks
from gateway.history import History
from gateway.model import Reception
from gateway.pipeline import KeyLookup, Pipeline
from gateway.registry import NodeEntry, Registry
from gateway.service import GC_THRESHOLDS, Observers
from gateway.store import Store
from gateway.upstream import Upstream, default_batch_size, gzip_compress
from protocol import frame
from protocol import messages as m

BAR_FRAMES_PER_S = 20_000
BAR_RATIO = 3.0
FLOOR_GROUP = 500  # rows per floor transaction: about what the store's groups hold in a burst


def build(n_frames: int, n_nodes: int, dup: float, seed: int = 1) -> tuple[Registry, list[Reception], list[bytes]]:
    rnd = random.Random(seed)
    reg = Registry(Path(tempfile.gettempdir()) / "unused-registry.toml")
    for n in range(1, n_nodes + 1):
        reg.upsert(
            NodeEntry(
                node_id=n, kind="lighting" if n % 3 else "irrigation", root_key=rnd.getrandbits(128).to_bytes(16, "big")
            )
        )
    counters = [0] * (n_nodes + 1)
    recs: list[Reception] = []
    frames: list[bytes] = []
    t0 = 1_800_000_000.0
    for i in range(n_frames):
        n = i % n_nodes + 1
        counters[n] += 1
        body: dict[int, Any]
        if n % 3:
            mtype, body = (
                m.LIGHT,
                {
                    0: rnd.randint(0, 100),
                    1: rnd.randint(0, 2500),
                    2: rnd.randint(0, 10**7),
                    3: rnd.randint(0, 0x7F),
                    4: rnd.randint(0, 50_000),
                    5: rnd.randint(0, 500),
                    6: rnd.randint(0, 2000),
                },
            )
        else:
            mtype, body = (
                m.IRRIGATION,
                {
                    0: bytes(rnd.randint(0, 200) for _ in range(4)),
                    1: rnd.randint(0, 0x8F),
                    2: rnd.randint(0, 5000),
                    3: rnd.randint(0, 10**8),
                    4: rnd.randint(0, 3),
                    5: rnd.randint(11000, 26000),
                    6: 0,
                },
            )
        entry = reg.get(n)
        assert entry is not None  # provisioned just above
        raw = frame.seal(entry.keys, mtype, counters[n], cbor2.dumps(body, canonical=True))
        frames.append(raw)
        t = t0 + i * 0.001
        recs.append(Reception(raw, "udp", "udp:0000000000000001", t, rssi=-90.0 - rnd.random() * 20, snr=5.0))
        if rnd.random() < dup:
            recs.append(Reception(raw, "udp", "udp:0000000000000002", t, rssi=-100.0, snr=1.0))
    return reg, recs, frames


def serve_null_sink() -> None:
    """A receiver that decompresses, parses and counts each batch, stores nothing: the gateway's own limit."""
    from aiohttp import web

    token = "Bearer " + os.environ["BENCH_SINK_TOKEN"]

    async def post(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != token:
            return web.json_response({"error": "token"}, status=401)
        doc = json.loads(await request.read())  # aiohttp undid the gzip
        return web.json_response({"accepted": len(doc["records"]), "duplicates": 0})

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/records", post)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"null sink listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_sink(tmp: Path, token: str, cpu: int | None, null: bool = False) -> tuple[subprocess.Popen, str]:
    tok = tmp / "sink.token"
    tok.write_text(token)
    tok.chmod(0o600)
    cmd = [
        sys.executable,
        "-m",
        "lumeau",
        "sink",
        "--db",
        str(tmp / "sink.db"),
        "--port",
        "0",
        "--token-file",
        str(tok),
    ]
    if null:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-null-sink"]
    os.environ["BENCH_SINK_TOKEN"] = token
    pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=pre,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None  # stdout=PIPE
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        mt = re.search(r"listening on (http://\S+)", line)
        if mt:
            return proc, mt.group(1).rstrip("/") + "/v1/records"
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("lumeau sink did not start")


async def wire(store: Store, reg: Registry, wiring: str) -> tuple[Pipeline, Downlinks | None]:
    """The pipeline as gateway/service.py builds it ("service"), or without its observers ("bare")."""
    if wiring == "bare":
        return Pipeline(reg, store), None
    downlinks = Downlinks(store, reg)
    await downlinks.start()
    return Pipeline(reg, store, downlinks=Observers(downlinks, History())), downlinks


async def run_gateway(
    tmp: Path,
    reg: Registry,
    recs: list[Reception],
    url: str,
    token: str,
    batch: int,
    rate: float = 0.0,
    wiring: str = "service",
    native_version: int = 3,
) -> dict:
    """Feed `recs` (as fast as they are taken, or paced at `rate` frames/s) and wait until delivered."""
    store = await Store.open(tmp / "gateway.db")
    pipeline, downlinks = await wire(store, reg, wiring)
    up = Upstream(
        store, url, token=token, batch_size=batch, max_age=0.05, gateway_id="bench", native_version=native_version
    )
    pipeline.listeners.append(lambda _n: up.notify())
    await up.start()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    backlog = 0
    if rate > 0:  # offered load: ticks of 10 ms, as radios would deliver it
        per_tick = max(1, round(rate * len(recs) / len(set(r.raw for r in recs)) / 100))
        for i in range(0, len(recs), per_tick):
            for r in recs[i : i + per_tick]:
                await pipeline.submit(r)
            backlog = max(backlog, store.count() + pipeline.inflight)
            due = t0 + (i + per_tick) / per_tick * 0.01
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
    else:
        for r in recs:
            await pipeline.submit(r)
    await pipeline.drain()
    t_pipeline = time.perf_counter() - t0
    while store.count() or store.next_batch(1) or up.records_sent < pipeline.accepted:
        await asyncio.sleep(0.005)
    t_end = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = up.stats()
    await up.stop()
    out = {
        "t_pipeline": t_pipeline,
        "t_end": t_end,
        "cpu": cpu,
        "max_backlog": backlog,
        "accepted": pipeline.accepted,
        "duplicates": pipeline.duplicates,
        "rejected": sum(pipeline.rejected.values()),
        "commits": store.commits,
        "mean_group": store.committed_records / max(1, store.commits),
        "upstream_requests": stats["requests"],
        "upstream_records_sent": stats["records_sent"],
    }
    await pipeline.close()
    if downlinks is not None:
        await downlinks.close()
    await store.close()
    return out


async def stage_costs(
    tmp: Path, reg: Registry, recs: list[Reception], native_version: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU microseconds per frame of each stage, run one after the other on the same frames.

    Where the time goes, for whoever optimises next: protocol steps, the
    pipeline's own bookkeeping, the store, and the upstream's share
    (reading back, native JSON, gzip, deleting).
    """
    from gateway import bodies

    frames = list({r.raw: r for r in recs}.values())
    n = len(frames)
    out: dict[str, float] = {}
    sizes: dict[str, float] = {}  # bytes a record in a request: JSON, gzipped as sent, gzipped by zlib

    def cpu(name: str, fn: Callable[[], Any]) -> Any:  # each stage's own result
        c = time.process_time()
        r = fn()
        out[name] = round((time.process_time() - c) / n * 1e6, 2)
        return r

    fs = cpu("parse", lambda: [frame.parse(r.raw) for r in frames])
    lookup: KeyLookup = reg  # the pipeline's view of the registry: the same lookup, an entry or None
    ps = cpu("verify", lambda: [frame.verify(lookup.get(f.node_id).keys, f) for f in fs])
    bs = cpu("decode_validate", lambda: [bodies.decode(f.mtype, p)[0] for f, p in zip(fs, ps)])
    cpu("name_values", lambda: [bodies.values(f.mtype, b) for f, b in zip(fs, bs)])
    store = await Store.open(tmp / "stages.db")
    pipeline = Pipeline(reg, store)
    adm = cpu("admit_total", lambda: [pipeline._admit(r) for r in frames])
    downlinks = Downlinks(store, reg)
    observer = Observers(downlinks, History())

    def observe() -> None:
        for a, r in zip(adm, frames):
            observer.on_uplink(a[0], r)

    cpu("observers", observe)
    c = time.process_time()
    for i in range(0, n, FLOOR_GROUP):
        await store.append_many([(a[0], a[1]) for a in adm[i : i + FLOOR_GROUP]])
    out["store_append_commit"] = round((time.process_time() - c) / n * 1e6, 2)
    c = time.process_time()
    batches, after = [], 0
    while batch := store.next_batch(FLOOR_GROUP, after, named=False):
        after = batch[-1][0]
        batches.append(batch)
    out["next_batch"] = round((time.process_time() - c) / n * 1e6, 2)
    encode = formats.native_encoder(native_version)
    docs = cpu("native_json", lambda: [encode([r for _, r in b], "bench", time.time()) for b in batches])
    cpu("gzip", lambda: [gzip_compress(x, 1) for x in docs])
    sizes["json"] = round(sum(len(x) for x in docs) / n, 1)
    sizes["gzip"] = round(sum(len(gzip_compress(x, 1)) for x in docs) / n, 1)
    sizes["gzip_zlib"] = round(sum(len(gzip.compress(x, 1)) for x in docs) / n, 1)
    c = time.process_time()
    for b in batches:
        await store.delete([q for q, _ in b])
    out["delete"] = round((time.process_time() - c) / n * 1e6, 2)
    await store.close()
    return out, sizes


def run_floor(tmp: Path, reg: Registry, frames: list[bytes], group: int, pads: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for the floor's work on `frames`.

    `pads`: the MIC with each key's padded hash states computed once and
    copied per frame (what protocol/crypto.HmacKey does on CPython) instead
    of `hmac.digest` -- a stricter floor, reported beside the one the issue
    defines so that the gateway's own use of the trick flatters nothing.
    """
    if pads:
        import hashlib

        states = {}
        for n in reg:
            k = n.keys.mic_up.key.ljust(64, b"\0")
            states[n.node_id] = (hashlib.sha256(bytes(b ^ 0x36 for b in k)), hashlib.sha256(bytes(b ^ 0x5C for b in k)))

        def mic(node: int, msg: bytes) -> bytes:
            inner, outer = states[node]
            h = inner.copy()
            h.update(msg)
            o = outer.copy()
            o.update(h.digest())
            return o.digest()
    else:
        keys = {n.node_id: n.keys.mic_up.key for n in reg}

        def mic(node: int, msg: bytes) -> bytes:
            return hmac.digest(keys[node], msg, "sha256")

    c = sqlite3.connect(tmp / ("floor-pads.db" if pads else "floor.db"), isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = FULL")
    c.execute("CREATE TABLE r (seq INTEGER PRIMARY KEY, node_id INTEGER, counter INTEGER, body BLOB)")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    rows = []
    for raw in frames:
        node = int.from_bytes(raw[1:5], "big")
        if not hmac.compare_digest(mic(node, raw[:-4])[:4], raw[-4:]):
            raise AssertionError("floor: MIC")
        body = raw[9:-4]
        cbor2.loads(body)
        rows.append((node, int.from_bytes(raw[5:9], "big"), body))
        if len(rows) >= group:
            c.execute("BEGIN")
            c.executemany("INSERT INTO r (node_id, counter, body) VALUES (?, ?, ?)", rows)
            c.execute("COMMIT")
            rows = []
    if rows:
        c.execute("BEGIN")
        c.executemany("INSERT INTO r (node_id, counter, body) VALUES (?, ?, ?)", rows)
        c.execute("COMMIT")
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    c.close()
    return dt, cpu


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by another process, from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default output anyway)")
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--dup", type=float, default=0.2, help="fraction of frames heard by a second radio")
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="upstream batch size (default: the gateway's for the format, upstream.default_batch_size)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer frames at this rate (frames/s) instead of as fast as they are taken",
    )
    ap.add_argument(
        "--wiring",
        choices=("service", "bare"),
        default="service",
        help="service: the downlink queue and the history behind the pipeline, as `lumeau gateway` "
        "runs; bare: the pipeline alone",
    )
    ap.add_argument(
        "--native-version",
        type=int,
        choices=formats.NATIVE_VERSIONS,
        default=formats.DEFAULT_NATIVE_VERSION,
        help="native format version sent upstream",
    )
    ap.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="work in DIR (which must exist) and leave the databases there, e.g. to check "
        "what reached the sink (DIR/lumeau_sink/sink.db)",
    )
    ap.add_argument("--serve-null-sink", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch is None:
        args.batch = default_batch_size("native", args.native_version)
    if args.serve_null_sink:
        serve_null_sink()
        return 0

    cpus = sorted(os.sched_getaffinity(0))
    gw_cpu = cpus[0]
    sink_cpu = cpus[1] if len(cpus) > 1 else None
    os.sched_setaffinity(0, {gw_cpu})
    reg, recs, frames = build(args.frames, args.nodes, args.dup)
    # The inputs are the bench's, not the gateway's: keep the cyclic GC from rescanning them
    # (the service freezes its own startup objects the same way, gateway/service.py).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    token = secrets.token_urlsafe(24)
    results = {}
    work = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="lumeau-bench-")
    with work as d:
        tmp = Path(d)
        for name, null in (("lumeau_sink", False), ("null_sink", True)):
            run_dir = tmp / name
            run_dir.mkdir()
            sink, url = start_sink(run_dir, token, sink_cpu, null)
            try:
                before = process_cpu(sink.pid)
                results[name] = asyncio.run(
                    run_gateway(run_dir, reg, recs, url, token, args.batch, args.rate, args.wiring, args.native_version)
                )
                after = process_cpu(sink.pid)
                results[name]["sink_cpu"] = None if before is None or after is None else after - before
            finally:
                sink.terminate()
                sink.wait(10)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the stage costs hold every record
        t_floor, cpu_floor = run_floor(tmp, reg, frames, FLOOR_GROUP)
        _t, cpu_floor_pads = run_floor(tmp, reg, frames, FLOOR_GROUP, pads=True)
        stages, sizes = asyncio.run(stage_costs(tmp, reg, recs, args.native_version))
    n = len(frames)
    floor = n / t_floor
    floor_cpu = n / cpu_floor
    out = {
        "frames": n,
        "receptions": len(recs),
        "nodes": args.nodes,
        "dup_fraction": args.dup,
        "floor_frames_per_s": round(floor),
        "floor_frames_per_cpu_s": round(floor_cpu),
        "floor_precomputed_pads_frames_per_cpu_s": round(n / cpu_floor_pads),
    }
    for name, r in results.items():
        e2e = n / r["t_end"]
        e2e_cpu = n / r["cpu"]
        out[name] = {
            "pipeline_frames_per_s": round(n / r["t_pipeline"]),
            "end_to_end_frames_per_s": round(e2e),
            "end_to_end_frames_per_cpu_s": round(e2e_cpu),
            "cost_ratio": round(floor / e2e, 2),
            "cpu_cost_ratio": round(floor_cpu / e2e_cpu, 2),
            "cpu_cost_ratio_precomputed_pads_floor": round(n / cpu_floor_pads / e2e_cpu, 2),
            "meets_bar": e2e >= BAR_FRAMES_PER_S and floor / e2e <= BAR_RATIO,
            "gateway_cpu_busy": round(r["cpu"] / r["t_end"], 2),
            "max_backlog": r["max_backlog"],
            "accepted": r["accepted"],
            "duplicates": r["duplicates"],
            "rejected": r["rejected"],
            "store_commits": r["commits"],
            "mean_group": round(r["mean_group"], 1),
            "upstream_requests": r["upstream_requests"],
            "upstream_records_sent": r["upstream_records_sent"],
            # the receiver's own CPU per record (its threads included): what bounds the wall rate when
            # the gateway waits for its answers (one request in flight)
            "sink_cpu_us_per_record": None if r["sink_cpu"] is None else round(r["sink_cpu"] / n * 1e6, 2),
        }
    out.update(
        {
            "bar_frames_per_s": BAR_FRAMES_PER_S,
            "bar_ratio": BAR_RATIO,
            "upstream_batch": args.batch,
            "offered_rate": args.rate or None,
            "wiring": args.wiring,
            "native_version": args.native_version,
            "cpu_us_per_frame_by_stage": {**stages, "floor": round(cpu_floor / n * 1e6, 2)},
            "request_bytes_per_record": sizes,
            "rss_before_mb": round(rss_before / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "gateway_cpu": gw_cpu,
            "sink_cpu": sink_cpu,
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "machine": platform.machine(),
        }
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
