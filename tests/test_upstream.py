"""Upstream against real HTTP servers on 127.0.0.1, draining a real store (gateway.store, SQLite).

The platform is the real sink (`city.sink.Sink`) with a fault-injection
middleware in front: outages (nothing listening), 500s, 429 with
Retry-After, slow answers, refused records, a wrong token.

One file (over 600 lines): every case drives the same sink-behind-faults
fixture; the formats' own tests live in test_formats.py and test_ngsi_ld*.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from city.sink import Sink
from gateway import formats
from gateway import upstream as up
from gateway.model import Record
from gateway.store import Store, StoreError
from protocol import expand
from protocol import messages as m
from tests.waiting import wait_for

TOKEN = "upstream-test-token"
FAST = dict(backoff_base=0.02, backoff_max=0.1, max_age=0.05)


def record(node: int, counter: int, *, alarm: bool = False) -> Record:
    if alarm:
        body = {0: m.EV_LEAK, 1: m.SEV_ALARM, 4: 1}
        return Record(
            node_id=node,
            counter=counter,
            mtype=m.EVENT,
            kind="event",
            rx_time=time.time(),
            body=body,
            fields=expand.expand(m.EVENT, body),
            alarm=True,
            gateway_id="test",
        )
    body = {0: counter % 101, 1: 452, 2: 1000 + counter, 3: m.LS_ON}
    return Record(
        node_id=node,
        counter=counter,
        mtype=m.LIGHT,
        kind="light",
        rx_time=time.time(),
        body=body,
        fields=expand.expand(m.LIGHT, body),
        best_rssi=-90.0,
        gateway_id="test",
    )


Fault = Callable[[web.Request, dict], Awaitable["web.StreamResponse | None"]]


class Platform:
    """The sink behind a middleware that can misbehave; `faults` run in order until one answers."""

    def __init__(self, path, port: int = 0) -> None:
        self.sink = Sink(path, TOKEN, port=port)
        self.faults: list[Fault] = []
        self.seen: list[tuple[float, int, list[str]]] = []  # (arrival, status, record ids) per POST
        self.sink.app.middlewares.insert(0, self._middleware)

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        body: Any = None
        if request.method == "POST":
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("format") == formats.NATIVE_FORMAT_V3:
                # the faults below read records by name: the /3 rows as the receiver reads them (/2 shape)
                body = {**body, "records": [r.doc for r in formats.check_native_batch(body)]}
        ids = (
            [r.get("id") for r in body.get("records", [])]
            if isinstance(body, dict)
            else [e.get("id") for e in body]
            if isinstance(body, list)
            else []
        )
        arrival = time.monotonic()
        resp = None
        for fault in list(self.faults):
            resp = await fault(request, body)
            if resp is not None:
                break
        if resp is None:
            resp = await handler(request)
        if request.method == "POST":
            self.seen.append((arrival, resp.status, ids))
        return resp

    @property
    def port(self) -> int:
        return self.sink.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/records"

    async def start(self) -> None:
        await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()

    async def records(self) -> list[dict]:
        def q(c):
            return [json.loads(d) for (d,) in c.execute("SELECT doc FROM records ORDER BY seq")]

        return await self.sink.db.run(q)

    async def duplicates(self) -> int:
        return await self.sink.db.run(
            lambda c: (c.execute("SELECT value FROM meta WHERE name = 'duplicates'").fetchone() or (0,))[0]
        )


def first_n(n: int, response: Callable[[], web.StreamResponse]) -> Fault:
    left = [n]

    async def fault(request, body):
        if left[0] > 0:
            left[0] -= 1
            return response()
        return None

    return fault


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    yield s
    await s.close()


@pytest.fixture
async def platform(tmp_path):
    p = Platform(tmp_path / "sink.db")
    await p.start()
    yield p
    await p.stop()


async def fill(store: Store, records: list[Record]) -> None:
    for r in records:
        await store.append(r)


class Clock:
    """A monotonic clock for Upstream(monotonic=): it moves when the test moves it; counts its reads."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    await wait_for(cond, timeout)


def interleaved(nodes: int, per_node: int) -> list[Record]:
    return [record(n, c) for c in range(1, per_node + 1) for n in range(1, nodes + 1)]


def per_node_counters(docs: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for d in docs:
        out.setdefault(d["node"], []).append(d["counter"])
    return out


async def run_upstream(store, url, **kw) -> up.Upstream:
    u = up.Upstream(store, url, token=TOKEN, **{**FAST, **kw})
    await u.start()
    return u


# -- batching ----------------------------------------------------------------------------------


async def test_a_backlog_goes_in_full_batches_at_once_and_a_lone_partial_batch_waits_for_its_age(store, platform):
    await fill(store, interleaved(1, 25))
    clock = Clock()  # the batch age is read on this clock: it moves only when the test says so
    u = await run_upstream(store, platform.url, batch_size=10, max_age=0.6, monotonic=clock)
    try:
        # a backlog: full batches at once, and the tail that queued behind them right after
        # (the clock stands still: no batch of these waited for its age)
        await until(lambda: store.count() == 0)
        assert [len(ids) for _, _, ids in platform.seen] == [10, 10, 5]
        # an idle upstream: a few new records wait until the oldest is max_age old
        await fill(store, [record(1, c) for c in (26, 27, 28)])
        u.notify()
        await until(lambda: u.state == "waiting")
        clock.t += 0.5
        clock.reads = 0
        u.notify()  # look again now, not at the next poll
        await until(lambda: clock.reads > 0 and u.state == "waiting")  # it looked, and waits on
        assert len(platform.seen) == 3 and store.count() == 3  # 0.5 s old: still waiting
        clock.t += 0.1
        u.notify()
        await until(lambda: store.count() == 0)
        assert [len(ids) for _, _, ids in platform.seen] == [10, 10, 5, 3]
        assert [d["counter"] for d in await platform.records()] == list(range(1, 29))
    finally:
        await u.stop()


async def test_an_alarm_does_not_wait_for_the_batch_age(store, platform):
    u = await run_upstream(store, platform.url, max_age=30)
    try:
        await fill(store, [record(1, 1), record(1, 2, alarm=True)])
        u.notify()
        await until(lambda: store.count() == 0, timeout=5)
        assert [d["type"] for d in await platform.records()] == ["light", "event"]
    finally:
        await u.stop()


async def test_flush_sends_what_waits_now(store, platform):
    u = await run_upstream(store, platform.url, max_age=30)
    try:
        await fill(store, interleaved(2, 3))
        assert await u.flush(timeout=5)
        assert len(await platform.records()) == 6
    finally:
        await u.stop()


# -- pipelining --------------------------------------------------------------------------------


def queued_ids(store: Store) -> set[str]:
    """What the gateway's database holds right now, read as another process would."""
    c = sqlite3.connect(store.path)
    try:
        return {f"{n:08x}-{k}" for n, k in c.execute("SELECT node_id, counter FROM records")}
    finally:
        c.close()


async def test_pipelined_batches_keep_order_and_leave_only_after_their_2xx(store, platform):
    spans: list[tuple[float, float]] = []  # (request arrived, answer sent)
    still_queued: list[bool] = []

    async def slow_and_watchful(request, body):
        arrived = time.monotonic()
        # a record is deleted only after its 2xx: everything in this request is still queued
        still_queued.append({r["id"] for r in body["records"]} <= queued_ids(store))
        await asyncio.sleep(0.03)  # a round trip long enough for the next batch to be prepared meanwhile
        resp = await platform.sink.post_records(request)
        spans.append((arrived, time.monotonic()))
        return resp

    platform.faults.append(slow_and_watchful)
    sent = interleaved(5, 20)  # 100 records, 10 batches of 10
    await fill(store, sent)
    u = await run_upstream(store, platform.url, batch_size=10)
    try:
        await until(lambda: store.count() == 0)
        docs = await platform.records()
        assert [d["id"] for d in docs] == [r.idempotency_key for r in sent]  # queue order, so per-node order
        assert await platform.duplicates() == 0 and all(still_queued) and len(still_queued) == 10
        # one request in flight at a time: each arrives after the previous one was answered
        assert all(nxt[0] >= prev[1] for prev, nxt in zip(spans, spans[1:]))
    finally:
        await u.stop()


async def test_a_batch_prepared_ahead_waits_for_the_one_in_flight_to_be_accepted(store, platform):
    fails = [2]

    async def flaky(request, body):
        if body["records"][0]["counter"] == 1 and fails[0]:  # the first batch, while the second is ready
            fails[0] -= 1
            return web.Response(status=503)
        return None

    platform.faults.append(flaky)
    await fill(store, interleaved(1, 30))
    u = await run_upstream(store, platform.url, batch_size=10)
    try:
        await until(lambda: store.count() == 0)
        firsts = [ids[0] for _, _, ids in platform.seen]
        assert firsts == ["00000001-1"] * 3 + ["00000001-11", "00000001-21"]
        assert [d["counter"] for d in await platform.records()] == list(range(1, 31))
    finally:
        await u.stop()


async def test_records_whose_delete_failed_are_sent_again_and_deleted(store, platform):
    class FailingDelete:
        fails = 1

        def __getattr__(self, name):
            return getattr(store, name)

        async def delete(self, seqs):
            if self.fails:
                self.fails -= 1
                raise StoreError("disk I/O error")
            return await store.delete(seqs)

    await fill(store, interleaved(2, 10))
    u = await run_upstream(FailingDelete(), platform.url, batch_size=5)
    try:
        await until(lambda: store.count() == 0)
        docs = await platform.records()
        assert len(docs) == 20 and await platform.duplicates() >= 5  # the first batch went twice, stored once
        assert "delete failed" in u.last_error
    finally:
        await u.stop()


# -- failures ----------------------------------------------------------------------------------


async def test_outage_then_recovery_drains_the_backlog_in_per_node_order(tmp_path, store):
    with socket.socket() as s:  # a port with nothing behind it: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    u = await run_upstream(store, f"http://127.0.0.1:{port}/v1/records", batch_size=16)
    platform = Platform(tmp_path / "sink.db", port=port)
    try:
        sent = interleaved(4, 30)
        await fill(store, sent[:60])
        # the state turns to backoff one turn of the loop after the error is counted: wait for both
        await until(lambda: u.responses.get("error", 0) >= 3 and u.state == "backoff")
        assert store.count() == 60 and u.consecutive_failures >= 3
        await fill(store, sent[60:])  # the radios keep talking during the outage
        await platform.start()
        await until(lambda: store.count() == 0)
        # count() drops inside the delete's transaction; lag() reads what is committed: wait for it
        await store.drain()
        docs = await platform.records()
        assert len(docs) == 120 and len({d["id"] for d in docs}) == 120  # everything, once
        assert per_node_counters(docs) == {f"{n:08x}": list(range(1, 31)) for n in range(1, 5)}
        assert u.records_sent == 120 and u.consecutive_failures == 0 and u.last_success is not None
        assert u.lag() == 0.0
    finally:
        await u.stop()
        await platform.stop()


async def test_during_an_outage_the_store_keeps_few_records_in_memory_and_loses_none(tmp_path):
    # issue 15: an outage's backlog is sent last, so memory holds recent_max // 8 of it, not recent_max
    s = await Store.open(tmp_path / "gw.db", recent_max=64)
    with socket.socket() as sock:  # nothing behind it: the upstream is down
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    u = await run_upstream(s, f"http://127.0.0.1:{port}/v1/records", batch_size=16)
    platform = Platform(tmp_path / "sink.db", port=port)
    try:
        sent = interleaved(5, 60)
        await s.append_many([(r, (r.node_id, r.counter, 1)) for r in sent[:20]])
        u.notify()
        await until(lambda: s.records.upstream_down)
        for i in range(20, len(sent), 20):
            await s.append_many([(r, (r.node_id, r.counter, 1)) for r in sent[i : i + 20]])
        assert len(s.records.ready) <= s.records.backlog_max == 2 and s.count() == 300
        await platform.start()
        await until(lambda: s.count() == 0)
        assert not s.records.upstream_down  # told it works again
        docs = await platform.records()
        assert len({d["id"] for d in docs}) == 300
        assert per_node_counters(docs) == {f"{n:08x}": list(range(1, 61)) for n in range(1, 6)}
        await s.append_many([(r, None) for r in interleaved(5, 70)[300:]])  # memory is used again
        assert len(s.records.ready) + s.count() >= 50 or s.count() == 0
    finally:
        await u.stop()
        await platform.stop()
        await s.close()


async def test_a_burst_larger_than_memory_arrives_exactly_once_in_per_node_order(tmp_path, platform):
    # the store keeps RECENT_MAX committed records in memory; a burst past it is read back from the
    # database while the upstream drains the newest from memory: no record lost, none twice, order kept
    s = await Store.open(tmp_path / "gw.db", recent_max=40)
    sent = interleaved(6, 50)  # 300 records, 7x what memory holds
    for i in range(0, len(sent), 25):  # in groups, as the pipeline hands them over
        await s.append_many([(r, (r.node_id, r.counter, 1)) for r in sent[i : i + 25]])
    assert len(s.records.ready) == 40 and s.count() == 300
    u = await run_upstream(s, platform.url, batch_size=16)
    try:
        await s.append_many([(r, None) for r in interleaved(6, 52)[300:]])  # and more arrive meanwhile
        await until(lambda: s.count() == 0)
        docs = await platform.records()
        assert len(docs) == 312 and len({d["id"] for d in docs}) == 312 and await platform.duplicates() == 0
        assert per_node_counters(docs) == {f"{n:08x}": list(range(1, 53)) for n in range(1, 7)}
        assert [(d["node"], d["counter"]) for d in docs] == [
            (f"{r.node_id:08x}", r.counter) for r in interleaved(6, 52)
        ]  # arrival order
    finally:
        await u.stop()
        await s.close()


async def test_500s_are_retried_with_backoff_until_accepted(store, platform):
    platform.faults.append(first_n(3, lambda: web.Response(status=500, text="database on fire")))
    await fill(store, interleaved(2, 5))
    u = await run_upstream(store, platform.url)
    try:
        await until(lambda: store.count() == 0)
        assert [s for _, s, _ in platform.seen] == [500, 500, 500, 200]
        gaps = [b[0] - a[0] for a, b in zip(platform.seen, platform.seen[1:])]
        assert all(g >= FAST["backoff_base"] / 2 for g in gaps)  # never hammered
        assert u.responses == {"5xx": 3, "2xx": 1} and u.retries == 3
        assert len(await platform.records()) == 10 and await platform.duplicates() == 0
        assert store.quarantine_count() == 0
    finally:
        await u.stop()


async def test_429_retry_after_is_honoured(store, platform):
    platform.faults.append(first_n(1, lambda: web.Response(status=429, headers={"Retry-After": "1"})))
    await fill(store, [record(1, 1)])
    u = await run_upstream(store, platform.url, max_age=0)
    try:
        await until(lambda: store.count() == 0)
        (t429, s1, _), (t200, s2, _) = platform.seen
        assert (s1, s2) == (429, 200)
        assert t200 - t429 >= 1.0  # the server asked for one second: the backoff (0.1 s) did not apply
    finally:
        await u.stop()


async def test_slow_answers_time_out_and_the_resend_is_deduplicated(store, platform):
    done: list[int] = []

    async def slow_once(request, body):
        if not done:
            done.append(1)
            resp = await platform.sink.post_records(request)  # stored by the sink...
            await asyncio.sleep(0.6)  # ...but the answer comes too late
            return resp
        return None

    platform.faults.append(slow_once)
    await fill(store, interleaved(3, 4))
    u = await run_upstream(store, platform.url, timeout=0.3)
    try:
        await until(lambda: store.count() == 0)
        assert u.responses["error"] == 1 and "no answer within 0.3 s" in u.last_error
        docs = await platform.records()
        assert len(docs) == 12 and await platform.duplicates() == 12  # sent twice, stored once
    finally:
        await u.stop()


async def test_a_refused_record_is_isolated_and_quarantined_the_rest_delivered_in_order(store, platform):
    async def refuse_node2_counter5(request, body):
        if isinstance(body, dict) and any(r["id"] == "00000002-5" for r in body["records"]):
            return web.json_response({"error": "records[?]: flow out of range"}, status=422)
        return None

    platform.faults.append(refuse_node2_counter5)
    await fill(store, interleaved(2, 8))
    u = await run_upstream(store, platform.url, batch_size=16)
    try:
        await until(lambda: store.count() == 0)
        docs = await platform.records()
        assert per_node_counters(docs) == {"00000001": list(range(1, 9)), "00000002": [1, 2, 3, 4, 6, 7, 8]}
        assert store.quarantine_count() == 1
        (q,) = store.quarantined()
        assert q["status"] == 422 and "flow out of range" in q["response"]
        assert [(r.node_id, r.counter) for _, r in q["records"]] == [(2, 5)]
        assert u.quarantined_records == 1 and u.quarantined_batches == 1
        # bisection: 16 -> 8 + 8 -> ... -> the one record; a handful of requests, not 16
        assert len(platform.seen) <= 2 * 4 + 1
    finally:
        await u.stop()


async def test_a_record_that_cannot_be_encoded_is_quarantined_alone(store, platform):
    bad = record(3, 2)
    bad.rx_time = 1e300  # no calendar holds it
    await fill(store, [record(3, 1), bad, record(3, 3)])
    u = await run_upstream(store, platform.url)
    try:
        await until(lambda: store.count() == 0)
        assert [d["counter"] for d in await platform.records()] == [1, 3]
        (q,) = store.quarantined()
        assert q["status"] == 0 and "cannot encode" in q["response"]
    finally:
        await u.stop()


async def test_the_loop_survives_a_failing_store(store, platform):
    class Flaky:
        fails = 2

        def __getattr__(self, name):
            return getattr(store, name)

        def next_batch(self, *a, **kw):
            if self.fails:
                self.fails -= 1
                raise RuntimeError("database is locked")
            return store.next_batch(*a, **kw)

    await fill(store, [record(4, 1)])
    u = await run_upstream(Flaky(), platform.url)
    try:
        await until(lambda: store.count() == 0)
        assert "database is locked" in u.last_error and len(await platform.records()) == 1
    finally:
        await u.stop()


async def test_a_wrong_token_is_retried_not_quarantined(store, platform):
    await fill(store, [record(1, 1), record(1, 2)])
    u = up.Upstream(store, platform.url, token="wrong", **FAST)
    await u.start()
    try:
        await until(lambda: u.responses.get("401", 0) >= 3)
        assert store.count() == 2 and store.quarantine_count() == 0
        assert "HTTP 401" in u.last_error
        u._token = TOKEN  # the operator fixes the configuration
        await until(lambda: store.count() == 0)
        assert len(await platform.records()) == 2
    finally:
        await u.stop()


async def test_413_splits_the_batch(store, platform):
    async def too_big(request, body):
        if isinstance(body, dict) and len(body["records"]) > 3:
            return web.Response(status=413)
        return None

    platform.faults.append(too_big)
    await fill(store, interleaved(1, 10))
    u = await run_upstream(store, platform.url)
    try:
        await until(lambda: store.count() == 0)
        assert [d["counter"] for d in await platform.records()] == list(range(1, 11))
        assert store.quarantine_count() == 0
    finally:
        await u.stop()


async def test_stopping_mid_request_loses_nothing(store, platform):
    gate = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(request, body):
        if not gate.is_set():
            arrived.set()
            await gate.wait()  # hangs until after the upstream gave up on it
            return web.Response(status=503)
        return None

    platform.faults.append(hang)
    await fill(store, interleaved(2, 3))
    u = await run_upstream(store, platform.url)
    await until(lambda: len(platform.sink.app.middlewares) and u.requests == 1)
    await until(arrived.is_set)  # the request is at the platform, unanswered
    await u.stop()  # the gateway shuts down with a request in flight
    assert store.count() == 6
    gate.set()
    u2 = await run_upstream(store, platform.url)
    try:
        await until(lambda: store.count() == 0)
        assert len(await platform.records()) == 6
    finally:
        await u2.stop()


@pytest.mark.parametrize(
    "version, level, fmt", [(None, 1, "lumeau.records/3"), (2, 1, "lumeau.records/2"), (3, 6, "lumeau.records/3")]
)
async def test_requests_carry_gzip_bearer_and_idempotency_key(store, tmp_path, version, level, fmt):
    # the default (/3, ISA-L's gzip), the /2 of older receivers, a level above ISA-L's (zlib)
    got: list[tuple[dict, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.content.read()))
        return web.json_response({"accepted": 1})

    app = web.Application()
    app.router.add_post("/in", handler)
    # a raw server that does not decompress, to see the bytes on the wire
    runner = web.AppRunner(app, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await fill(store, [record(0xAB, 7)])
    kw = {} if version is None else {"native_version": version}
    u = await run_upstream(store, f"http://127.0.0.1:{port}/in", max_age=0, gzip_level=level, **kw)
    try:
        await until(lambda: store.count() == 0)
        headers, raw = got[0]
        assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["Content-Encoding"] == "gzip"
        assert headers["Content-Type"] == "application/json" and len(headers["Idempotency-Key"]) == 32
        doc = json.loads(gzip.decompress(raw))  # the stdlib reads what ISA-L wrote
        assert doc["format"] == fmt
        assert [r.key for r in formats.check_native_batch(doc)] == ["000000ab-7"]
        assert TOKEN not in repr(u)
    finally:
        await u.stop()
        await runner.cleanup()


# -- NGSI-LD -----------------------------------------------------------------------------------


class Lamp:
    kind, name, site, lat, lon, firmware = "lighting", "Pole 1", "Quai", 45.76, 4.83, "0.1.0"


async def test_ngsi_ld_upserts_reach_the_broker_in_order(store, platform):
    await fill(store, [record(1, 1), record(1, 2), record(2, 1)])
    u = await run_upstream(
        store,
        f"http://127.0.0.1:{platform.port}/ngsi-ld/v1/entityOperations/upsert",
        fmt="ngsi-ld",
        node_info=lambda n: Lamp(),
    )
    try:
        await until(lambda: store.count() == 0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.get(
                f"http://127.0.0.1:{platform.port}/ngsi-ld/v1/entities/urn:ngsi-ld:Streetlight:lumeau-00000001"
            ) as r:
                e = await r.json()
                assert r.headers["X-Lumeau-Updates"] == "2"  # both reports, not one merged away
        assert e["illuminanceLevel"]["value"] == 0.02 and e["status"]["value"] == "ok"  # the later report
        assert [len(ids) for _, _, ids in platform.seen] == [2, 1]  # lamp 1 twice: two requests
    finally:
        await u.stop()


async def test_ngsi_ld_partial_failure_quarantines_only_the_failed_records(store, platform):
    async def refuse_lamp2(request, body):
        if isinstance(body, list) and any(e["id"].endswith("lumeau-00000002") for e in body):
            ok = [e["id"] for e in body if not e["id"].endswith("lumeau-00000002")]
            return web.json_response(
                {
                    "success": ok,
                    "errors": [
                        {
                            "entityId": "urn:ngsi-ld:Streetlight:lumeau-00000002",
                            "error": {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData", "title": "nope"},
                        }
                    ],
                },
                status=207,
            )
        return None

    platform.faults.append(refuse_lamp2)
    await fill(store, [record(1, 1), record(2, 1), record(3, 1)])
    u = await run_upstream(
        store,
        f"http://127.0.0.1:{platform.port}/ngsi-ld/v1/entityOperations/upsert",
        fmt="ngsi-ld",
        node_info=lambda n: Lamp(),
    )
    try:
        await until(lambda: store.count() == 0)
        (q,) = store.quarantined()
        assert q["status"] == 207 and [(r.node_id, r.counter) for _, r in q["records"]] == [(2, 1)]
    finally:
        await u.stop()


# -- pieces ------------------------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_with_equal_jitter():
    u = up.Upstream(None, "http://x", backoff_base=1, backoff_max=60, rng=random.Random(7))  # type: ignore[arg-type]
    for attempt, cap in [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60)]:
        waits = [u._backoff(attempt, None) for _ in range(200)]
        assert cap / 2 <= min(waits) and max(waits) <= cap
        assert max(waits) - min(waits) > cap / 4  # really jittered
    assert 120 <= u._backoff(3, 120) <= 132  # Retry-After wins, plus at most 10 %
    assert u._backoff(3, 10_000) <= up.DEFAULT_MAX_RETRY_AFTER_S * 1.1


def test_retry_after_parsing():
    now = 1_800_000_000.0
    assert up.parse_retry_after("120") == 120
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=90), usegmt=True)
    assert up.parse_retry_after(date, now=now) == 90
    assert up.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0  # in the past
    for bad in (None, "", "soon", "-5", "1.5", "\u00b9", "\u0663"):  # "¹" and an Arabic-Indic 3 are isdigit()
        assert up.parse_retry_after(bad) is None


def test_bad_settings_are_refused():
    for kw in (
        {"fmt": "xml"},
        {"batch_size": 0},
        {"backoff_base": 5, "backoff_max": 1},
        {"gzip_level": 11},
        {"native_version": 4},
    ):
        with pytest.raises(ValueError):
            up.Upstream(None, "http://x", **kw)  # type: ignore[arg-type]


def test_the_default_batch_size_follows_the_format():
    # /3 rows are small (about 180 B of JSON): 2,000 of them stay far below a 1 MB request limit;
    # /2 objects and NGSI-LD entities are larger and keep 500.
    from gateway.upstream import default_batch_size

    assert default_batch_size("native", 3) == 2000
    assert default_batch_size("native", 2) == 500
    assert default_batch_size("ngsi-ld", 3) == 500
