"""gateway/_fastadmit.c, the compiled admission path, against the Python path it stands in for.

The Python path (Pipeline(compiled=False), protocol/ and gateway/bodies.py)
is the spec. Two levels of differential test:

- the C call alone: whenever it answers, the answer is what parse + keys +
  verify + bodies.decode give for the same bytes (and for valid frames of
  known nodes it does answer: otherwise it would be a slow no-op);
- two pipelines, one per path, fed the same receptions (valid, copies,
  replays, damaged, wrong keys, non-canonical CBOR, random bytes): the same
  verdicts, records, windows, counters and log lines.

Memory: a leak loop (sys.gettotalrefcount on a debug build, tracemalloc and
the interpreter's block count otherwise) and the suite under `python -X dev`
(test_runs_clean_under_x_dev).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import cbor2
import pytest
from gateway_helpers import node_keys, registry, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import bodies
from gateway import pipeline as pl
from gateway.model import Reception
from gateway.store import Store
from protocol import cbor, frame, keys
from protocol import messages as m

try:
    from gateway import _fastadmit
except ImportError:  # test_the_extension_is_built says so; the others fail through the `fast` fixture
    _fastadmit = None

ROOT = Path(__file__).resolve().parent.parent
NODES = [1, 2, 3]
UPLINKS = [m.HELLO, m.LIGHT, m.IRRIGATION, m.EVENT, m.STATUS, m.CMD_ACK]
MISKEYED = 7  # registered with the keys of another node id: frame.verify says bad_mic
UNKNOWN = 9


def test_the_extension_is_built_in_this_venv():
    """Fails (never skips): CI must not lose the compiled path silently."""
    assert _fastadmit is not None, (
        "gateway._fastadmit is not built: `pip install -e '.[dev]'` needs gcc, the Python headers and "
        "OpenSSL's (Debian: libssl-dev; `make setup` installs it)"
    )
    assert pl.ADMISSION_PATH == "compiled"


def _need_fast() -> None:
    if _fastadmit is None:
        pytest.fail("gateway._fastadmit is not built")


class _Entry:
    def __init__(self, k: keys.NodeKeys) -> None:
        self.keys = k


def _registry() -> dict[int, _Entry]:
    reg = {n: _Entry(node_keys(n)) for n in NODES}
    reg[MISKEYED] = _Entry(node_keys(MISKEYED + 1))
    return reg


# ---------------------------------------------------------------- bodies and frames


def _value(kind: int, lo: int, hi: int, maxlen: int, valid_only: bool = False) -> st.SearchStrategy:
    """A field's value: in range, at its edges, just past them, or of another type."""
    if kind in (m.U, m.I):
        good = st.integers(lo, hi) | st.sampled_from([lo, hi])
        bad = st.sampled_from([lo - 1, hi + 1, True, None, b"\x01", "1", 2**64 - 1, -(2**64)])
    elif kind == m.V:
        good = st.lists(st.integers(lo, hi) | st.just(m.NO_VALUE), max_size=maxlen).map(bytes)
        bad = st.binary(max_size=maxlen + 2) | st.text(max_size=2)
    elif kind == m.B:
        good = st.binary(min_size=lo, max_size=hi)
        bad = st.binary(max_size=hi + 2) | st.text(max_size=3)
    elif kind == m.T:
        good = st.text(min_size=lo, max_size=hi)
        bad = st.text(max_size=hi + 2) | st.binary(max_size=3)
    else:
        good = bad = st.lists(st.integers(-3, 3), max_size=3)
    return good if valid_only else st.one_of(good, good, good, bad)


@st.composite
def body_of(draw, mtype: int, valid_only: bool = False) -> dict:
    body = {}
    for key, kind, lo, hi, req, maxlen in m.SPECS[mtype]:
        if req or draw(st.booleans()):
            body[key] = draw(_value(kind, lo, hi, maxlen, valid_only))
    if not valid_only and draw(st.integers(0, 9)) == 0:
        body[draw(st.integers(0, 30))] = draw(st.integers(-300, 300) | st.binary(max_size=3))
    return body


def _encodings(body: dict) -> st.SearchStrategy:
    """The body as nodes send it, as cbor2 writes it (insertion order), or not canonical at all."""
    out = []
    for enc in (
        lambda b: cbor.dumps(b),
        lambda b: cbor2.dumps(b),
        lambda b: cbor2.dumps(dict(reversed(list(b.items())))),
        lambda b: cbor2.dumps(b, canonical=True),
    ):
        try:
            out.append(enc(body))
        except Exception:
            pass
    return st.sampled_from(out) if out else st.just(b"\xa0")


_mutation = st.tuples(st.integers(0, 300), st.integers(0, 255))


@st.composite
def receptions(draw) -> list[bytes]:
    """A short burst of what the air brings: mostly valid frames, with copies, damage and strangers."""
    raws: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        node = draw(st.sampled_from(NODES + [MISKEYED, UNKNOWN]))
        mtype = draw(st.sampled_from(UPLINKS)) if draw(st.integers(0, 9)) else draw(st.integers(0, 15))
        body = draw(body_of(mtype if mtype in m.SPECS else m.LIGHT, valid_only=draw(st.integers(0, 9)) < 6))
        data = draw(_encodings(body))
        if draw(st.integers(0, 9)) == 0:  # non-canonical: a non-shortest head, trailing bytes, indefinite map
            data = draw(
                st.sampled_from(
                    [
                        bytes([0xB9, 0]) + data[1:] if data[:1] == b"\xa0" else data + b"\x00",
                        b"\xbf" + data[1:] + b"\xff" if data[:1] and 0xA0 <= data[0] < 0xB8 else data,
                        data + b"\x00",
                    ]
                )
            )
        data = data[:230] or b"\xa0"
        k = node_keys(UNKNOWN if node == UNKNOWN else node)
        raw = frame.seal(
            k, mtype, draw(st.integers(0, 40) | st.integers(0, 2**32 - 1)), data, encrypt=draw(st.integers(0, 9)) == 0
        )
        how = draw(st.integers(0, 19))
        if how == 0:  # damaged in flight
            b = bytearray(raw)
            pos, val = draw(_mutation)
            b[pos % len(b)] = val
            raw = bytes(b)
        elif how == 1:
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif how == 2:
            raw = raw + draw(st.binary(min_size=1, max_size=300))  # trailing junk, possibly oversized
        elif how == 3:
            raw = draw(st.binary(max_size=300))
        raws.append(raw)
        for _ in range(draw(st.integers(0, 2))):  # copies heard by other radios
            raws.append(bytes(raw))
    return raws


# ---------------------------------------------------------------- the C call alone


def _reference(reg: dict, raw: bytes):
    """What the Python path decides before the replay window: (node, counter, mtype, body, cbor) or None."""
    if len(raw) > frame.MAX_LEN:
        return None
    try:
        f = frame.parse(raw)
    except frame.FrameError:
        return None
    if f.downlink or reg.get(f.node_id) is None:
        return None
    try:
        plain = frame.verify(reg[f.node_id].keys, f)
        body, enc = bodies.decode(f.mtype, plain)
    except (frame.BadMIC, m.MessageError):
        return None
    return f.node_id, f.counter, f.mtype, body, enc


@pytest.fixture(scope="module")
def fast():
    _need_fast()
    reg = _registry()
    return reg, _fastadmit.Admitter(reg, bodies.fast_plans())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(receptions())
def test_when_the_c_path_answers_it_is_the_reference_answer(fast, raws):
    reg, adm = fast
    for raw in raws:
        got = adm.admit(raw)
        if got is None:
            continue
        ref = _reference(reg, raw)
        assert ref is not None, raw.hex()
        if got[3] is None:  # a copy of bytes that already verified: no body, the window decides
            assert got[:3] == ref[:3]
        else:
            assert got == ref
            assert ref[4] is not None  # it kept the plain bytes only where the reference does


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(NODES),
    st.integers(0, 2**32 - 1),
    st.sampled_from(UPLINKS).flatmap(lambda t: st.tuples(st.just(t), body_of(t, valid_only=True))),
)
def test_the_c_path_answers_every_valid_frame_nodes_send(fast, node, counter, tb):
    reg, _adm = fast
    adm = _fastadmit.Admitter(reg, bodies.fast_plans())  # fresh: hypothesis replays examples
    mtype, body = tb
    raw = frame.seal(node_keys(node), mtype, counter, m.encode(mtype, body))
    assert adm.admit(raw) == (node, counter, mtype, body, raw[frame.HEADER_LEN : -frame.MIC_LEN])
    assert list(adm.admit(raw)) == [node, counter, mtype, None, None]  # a copy: no hashing, no decoding


def test_vectors_that_are_not_deterministic_cbor_are_left_to_the_reference(fast, vectors):
    """RFC 8949 Appendix A and the not-well-formed list: the C decoder answers only for canonical maps."""
    reg, adm = fast
    answered = 0
    items = [bytes.fromhex(v["hex"]) for v in json.loads((vectors / "cbor" / "appendix_a.json").read_text())]
    items += [bytes.fromhex(v["hex"]) for v in json.loads((vectors / "cbor" / "fail.json").read_text())]
    assert len(items) > 100
    for i, data in enumerate(items):
        for mtype in UPLINKS:
            for body in (data, b"\xa1\x00" + data, b"\xa1\x05" + data):
                if not 1 <= len(body) <= 230:
                    continue
                raw = frame.seal(node_keys(1), mtype, 10_000 + i, body)
                got = adm.admit(raw)
                ref = _reference(reg, raw)
                if got is not None:
                    answered += 1
                    assert got == ref
                    assert cbor.dumps(cbor.loads(body)) == body or cbor2.dumps(cbor2.loads(body)) == body
    assert answered > 0  # the vectors hold a few valid bodies (a0, small ints): it must take those


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "empty"),
        (seal(1, 5)[:13], "short"),
        (seal(1, 5) + bytes(300), "oversized"),
        (bytes([0x42]) + seal(1, 5)[1:], "version 2"),
        (seal(1, 5, encrypt=True), "encrypted"),
        (frame.seal(node_keys(1), m.COMMAND, 5, m.encode(m.COMMAND, {0: 1, 1: 1})), "a downlink type"),
        (frame.seal(node_keys(1), 7, 5, b"\xa0"), "a type without a plan"),
        (seal(UNKNOWN, 5), "unknown node"),
        (seal(MISKEYED, 5), "keys of another node"),
        (seal(1, 5)[:-1] + bytes([seal(1, 5)[-1] ^ 1]), "bad MIC"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a1001805")), "non-shortest head"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a10019002c")), "non-shortest 16-bit head"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a2000101ff")), "trailing byte"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a200010001")), "duplicate key"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a11400")), "unknown key 20"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a1001865")), "101 % out of range"),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("a100f5")), "true for an int"),
        (
            frame.seal(node_keys(1), m.HELLO, 5, bytes.fromhex("a20062ed a0 0101".replace(" ", ""))),
            "a surrogate in text",
        ),
        (frame.seal(node_keys(1), m.HELLO, 5, bytes.fromhex("a1 0101".replace(" ", ""))), "required key missing"),
        (frame.seal(node_keys(1), m.IRRIGATION, 5, bytes.fromhex("a1 00 41 c9".replace(" ", ""))), "201 in a zone"),
        (frame.seal(node_keys(1), m.IRRIGATION, 5, bytes.fromhex("a1 00 45 0000000000".replace(" ", ""))), "5 zones"),
        (
            frame.seal(node_keys(1), m.EVENT, 5, bytes.fromhex("a2 000a 02 3b8000000000000000".replace(" ", ""))),
            "-2**63-1",
        ),
        (frame.seal(node_keys(1), m.LIGHT, 5, bytes.fromhex("bf 0001 ff".replace(" ", ""))), "indefinite map"),
    ],
)
def test_what_the_c_path_is_not_sure_about(fast, raw, why):
    _reg, adm = fast
    assert adm.admit(raw) is None, why
    assert adm.admit(bytearray(seal(1, 5))) is None  # not exactly bytes: the reference takes any buffer


def test_a_rekeyed_node_is_checked_with_its_new_keys_and_copies_are_forgotten():
    _need_fast()
    reg = {1: _Entry(node_keys(1))}
    adm = _fastadmit.Admitter(reg, bodies.fast_plans())
    raw = seal(1, 5)
    assert adm.admit(raw) is not None
    reg[1] = _Entry(keys.NodeKeys(1, bytes(16)))  # re-keyed: the old frame no longer verifies
    assert adm.admit(raw) is None
    reg[1] = _Entry(node_keys(1))  # an equal key in a new object: verified again, not remembered
    assert adm.admit(raw)[3] is not None
    del reg[1]
    assert adm.admit(raw) is None
    assert adm.stats()["unsure"] == 2


async def test_the_compiled_path_asks_the_registry_the_pipeline_holds_now(tmp_path):
    _need_fast()
    s = await Store.open(tmp_path / "gw.db")
    p = pl.Pipeline(registry(tmp_path / "a.toml", [1]), s, compiled=True)
    assert await p.ingest(Reception(seal(1, 1), "udp", "udp:1", 1.0)) == "accepted"
    p.registry = registry(tmp_path / "b.toml", [2])  # swapped: node 1 is unknown now
    assert await p.ingest(Reception(seal(1, 2), "udp", "udp:1", 1.0)) == "unknown_node"
    assert await p.ingest(Reception(seal(2, 1), "udp", "udp:1", 1.0)) == "accepted"
    p.registry.get = lambda node_id: None  # even a replaced method is looked up on every call
    assert await p.ingest(Reception(seal(2, 2), "udp", "udp:1", 1.0)) == "unknown_node"
    await p.close()
    await s.close()


def test_its_repr_and_stats_hold_no_key_material(fast):
    _reg, adm = fast
    adm.admit(seal(2, 77))
    text = repr(adm) + repr(adm.stats())
    assert node_keys(2).mic_up.key.hex() not in text and "key" not in text.lower()
    assert set(adm.stats()) == {"fast", "copies", "unsure", "nodes"}


# ---------------------------------------------------------------- two pipelines, one per path


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple] = []

    def emit(self, r: logging.LogRecord) -> None:
        self.lines.append(
            (
                r.levelname,
                r.getMessage(),
                getattr(r, "reason", None),
                getattr(r, "node", None),
                getattr(r, "counter", None),
                getattr(r, "top", None),
            )
        )


class _Twins:
    def __init__(self, loop, ref, fast) -> None:
        self.loop, self.ref, self.fast = loop, ref, fast


def _make_twins(d: Path) -> _Twins:
    from gateway.logs import RateLimiter

    _need_fast()
    loop = asyncio.new_event_loop()

    async def make(name: str, compiled: bool) -> pl.Pipeline:
        s = await Store.open(d / f"{name}.db")
        return pl.Pipeline(_registry(), s, compiled=compiled, log_limiter=RateLimiter(burst=10**9, rate=10**9))

    t = _Twins(loop, loop.run_until_complete(make("ref", False)), loop.run_until_complete(make("fast", True)))
    assert t.ref.admission_path == "python" and t.fast.admission_path == "compiled"
    return t


def _close_twins(t: _Twins) -> None:
    for p in (t.ref, t.fast):
        t.loop.run_until_complete(p.close())
        t.loop.run_until_complete(p.store.close())
    t.loop.close()


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    t = _make_twins(tmp_path_factory.mktemp("twins"))
    yield t
    _close_twins(t)


def _run(t: _Twins, p: pl.Pipeline, raws: list[bytes]) -> tuple:
    cap = _Capture()
    lg = logging.getLogger("lumeau.gateway.pipeline")
    lg.addHandler(cap)
    old = lg.level
    lg.setLevel(logging.DEBUG)
    try:
        recs = [
            Reception(raw=r, transport="udp", gateway_id=f"udp:{i % 2}", rx_time=1.0e9, rssi=-90.0 - i, snr=1.0)
            for i, r in enumerate(raws)
        ]
        verdicts = t.loop.run_until_complete(p.ingest_many(recs))
    finally:
        lg.removeHandler(cap)
        lg.setLevel(old)
    return verdicts, cap.lines


def _state(p: pl.Pipeline) -> tuple:
    rows = p.store.next_batch(100_000, 0, named=False)
    return (
        p.received,
        p.accepted,
        p.duplicates,
        p.rejected,
        p.bad_mic_by_node,
        {n: (w.top, w.mask) for n, w in p._windows.items()},
        [
            (r.node_id, r.counter, r.mtype, r.kind, r.body, r.cbor, r.receptions, r.best_rssi, r.gateway_id, r.alarm)
            for _s, r in rows
        ],
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(receptions())
def test_both_paths_give_the_same_verdicts_records_and_log_lines(twins, raws):
    assert _run(twins, twins.fast, raws) == _run(twins, twins.ref, raws)
    assert _state(twins.fast) == _state(twins.ref)
    assert ("internal_error", "udp") not in twins.fast.rejected


def test_the_compiled_path_does_the_work_for_what_nodes_send(tmp_path):
    twins = _make_twins(tmp_path)
    try:
        burst = []
        for n in NODES:
            for c in range(10):
                for mtype in (m.LIGHT, m.IRRIGATION):
                    burst.append(seal(n, 100_000 + 2 * c + (mtype == m.LIGHT), mtype))
                    if c % 3 == 0:
                        burst.append(burst[-1])  # heard by a second radio: a copy right behind it
        assert _run(twins, twins.fast, burst) == _run(twins, twins.ref, burst)
        assert _state(twins.fast) == _state(twins.ref)
        s = twins.fast._fast.stats()
        assert s == {"fast": 60, "copies": 24, "unsure": 0, "nodes": 3}, s
        assert twins.fast.accepted == 60 and twins.fast.duplicates == 24
    finally:
        _close_twins(twins)


async def test_a_copy_after_a_failed_commit_is_decoded_again(tmp_path):
    """The C memory says "these bytes verified"; the window forgot the counter: the reference stores it."""
    _need_fast()
    s = await Store.open(tmp_path / "gw.db")
    p = pl.Pipeline(registry(tmp_path / "nodes.toml", [1]), s, compiled=True)
    raw = seal(1, 5)
    a = p._admit(Reception(raw, "udp", "udp:1", 1.0))
    assert type(a) is tuple
    a[2].forget(5)  # what _settle does when the commit failed
    b = p._admit(Reception(raw, "udp", "udp:2", 1.0))
    assert type(b) is tuple and b[0].body == a[0].body and b[0].cbor == a[0].cbor
    assert p._fast.stats()["copies"] == 1
    await p.reset_node(1)  # re-key: the C memory of the node goes too
    assert p._fast.stats()["nodes"] == 0
    await p.close()
    await s.close()


async def test_without_the_extension_the_gateway_runs_on_the_python_path(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pl, "_fastadmit", None)
    monkeypatch.setattr(pl, "_warned_fallback", False)
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1])
    with caplog.at_level(logging.WARNING, logger="lumeau.gateway.pipeline"):
        p = pl.Pipeline(reg, s)
        p2 = pl.Pipeline(reg, s)
    assert p.admission_path == p2.admission_path == "python"
    assert [r.levelname for r in caplog.records].count("WARNING") == 1  # one warning, at start
    assert await p.ingest(Reception(seal(1, 5), "udp", "udp:1", 1.0)) == "accepted"
    with pytest.raises(RuntimeError):
        pl.Pipeline(reg, s, compiled=True)
    await p.close()
    await s.close()


# ---------------------------------------------------------------- memory


def _leak_loop(adm, reg: dict, raws: list[bytes], rounds: int) -> None:
    rekeyed = [_Entry(node_keys(3)), _Entry(node_keys(3))]  # equal keys, new objects: the state is rebuilt
    for i in range(rounds):
        reg[3] = rekeyed[i % 2]
        for r in raws:
            adm.admit(r)


def test_no_reference_or_memory_leaks_over_many_calls():
    """Every branch (answered, copy, each "not sure") run 10^5+ times: refcounts and heap stay flat."""
    _need_fast()
    reg = _registry()
    adm = _fastadmit.Admitter(reg, bodies.fast_plans())
    raws = [seal(1, c) for c in range(40)]  # more than the copy memory: verified again every round
    raws += [seal(2, 1, m.IRRIGATION), frame.seal(node_keys(3), m.HELLO, 1, m.encode(m.HELLO, {0: "fw-1.2é", 1: 1}))]
    raws += [
        seal(UNKNOWN, 1),
        seal(MISKEYED, 1),
        seal(1, 5, encrypt=True),
        b"\x00" * 20,
        seal(1, 6)[:-1] + b"\x00",
        frame.seal(node_keys(1), m.LIGHT, 7, bytes.fromhex("a1001865")),
        frame.seal(node_keys(1), m.LIGHT, 8, bytes.fromhex("a2000101ff")),
        frame.seal(node_keys(1), m.HELLO, 9, bytes.fromhex("a20062eda00101")),
    ]
    _leak_loop(adm, reg, raws, 50)  # warm up: per-node states, caches, interned ints
    gc.collect()
    total = getattr(sys, "gettotalrefcount", None)
    r0 = total() if total else None
    blocks0 = sys.getallocatedblocks()
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    _leak_loop(adm, reg, raws, 2000)  # 100,000 calls
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert m1 - m0 < 64 * 1024, f"{m1 - m0} bytes more after 10^5 calls"
    assert sys.getallocatedblocks() - blocks0 < 1000
    if total:
        assert total() - r0 < 100


def test_runs_clean_under_x_dev():
    """The C path under -X dev (debug allocators, warnings as errors where CPython raises them)."""
    _need_fast()
    code = textwrap.dedent("""
        import random, sys, warnings
        warnings.simplefilter("error")
        sys.path.insert(0, "tests")
        from gateway_helpers import node_keys, seal
        from gateway import _fastadmit, bodies

        class E:
            def __init__(self, k):
                self.keys = k

        reg = {1: E(node_keys(1))}
        a = _fastadmit.Admitter(reg, bodies.fast_plans())
        rnd = random.Random(1)
        good = [seal(1, c) for c in range(64)]
        n = 0
        for i in range(20000):
            b = bytearray(rnd.choice(good))
            if i % 2:
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            if i % 7 == 0:
                b = b[:rnd.randrange(len(b) + 1)]
            n += a.admit(bytes(b)) is not None
        del a, reg
        assert n > 5000, n
        print("ok", n)
    """)
    r = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONMALLOC": "debug"},
    )
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


async def test_metrics_say_which_admission_path_runs(tmp_path):
    """The local API's /metrics (real server): a deployment that lost the extension shows it."""
    import aiohttp

    from gateway.api import Api
    from gateway.downlinks import Downlinks

    token = "t" * 32
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1])
    d = Downlinks(s, reg)
    await d.start()
    p = pl.Pipeline(reg, s, downlinks=d)
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=token, port=0)
    await api.start()
    try:
        for raw in (seal(1, 1), seal(1, 1), seal(1, 2)[:-1] + b"\x00"):
            await p.ingest(Reception(raw, "udp", "udp:1", 1.0))
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as http:
            async with http.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
                text = await r.text()
        assert 'lumeau_admission_path{path="compiled"} 1' in text
        assert 'lumeau_admission_path{path="python"} 0' in text
        for outcome in ('"answered"} 1', '"copy"} 1', '"unsure"} 1'):
            assert f"lumeau_admission_compiled_total{{outcome={outcome}" in text, text
    finally:
        await api.stop()
        await d.close()
        await s.close()
