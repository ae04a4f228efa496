"""gateway/history.py: the bounded per-node history behind /nodes/{id}/readings."""

from __future__ import annotations

import tracemalloc

import cbor2
import pytest
from gateway_helpers import LIGHT_BODY, reception, registry, seal
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.history import MAX_ENTRIES, PER_TYPE, History
from gateway.pipeline import Pipeline
from gateway.store import Store
from protocol import expand
from protocol import messages as m

T0 = 1_795_000_000.0


def light(level: int) -> dict:
    return {**LIGHT_BODY, 0: level}


def test_the_last_per_type_uplinks_per_type_oldest_first_named():
    h = History(per_type=4)
    for i in range(10):
        h.add(1, m.LIGHT, light(i), T0 + i * 900)
    h.add(1, m.STATUS, {0: 3600, 4: 3300}, T0 + 5 * 900 + 1)
    h.add(2, m.LIGHT, light(99), T0)
    got = h.recent(1)
    assert [(r["type"], r["rx_time"]) for r in got] == [  # all types merged in time order
        ("status", T0 + 5 * 900 + 1),
        ("light", T0 + 6 * 900),
        ("light", T0 + 7 * 900),
        ("light", T0 + 8 * 900),
        ("light", T0 + 9 * 900),
    ]
    assert [r["fields"]["level"]["value"] for r in h.recent(1, ["light"])] == [6, 7, 8, 9]
    assert h.recent(1, ["light"])[0]["fields"] == expand.expand(m.LIGHT, light(6))
    assert [r["type"] for r in h.recent(1, ["status"])] == ["status"]
    assert [r["fields"]["level"]["value"] for r in h.recent(1, ["light"], limit=2)] == [8, 9]
    assert h.recent(1, ["light"], limit=0) == []
    assert len(h) == 4 + 1 + 1
    assert h.recent(3) == []


def test_unknown_or_downlink_type_names_are_refused():
    h = History()
    for bad in (["nonsense"], ["command"], ["ack"]):
        with pytest.raises(ValueError, match="unknown uplink type"):
            h.recent(1, bad)


def test_past_the_global_bound_the_node_heard_least_recently_goes_first():
    h = History(per_type=10, max_entries=12)
    for i in range(6):
        h.add(1, m.LIGHT, light(i), T0 + i)
    for i in range(6):
        h.add(2, m.LIGHT, light(i), T0 + 10 + i)
    h.add(1, m.STATUS, {0: 1}, T0 + 100)  # node 1 heard last: node 2 pays
    assert len(h) == 12 and h.evicted == 1
    assert [r["rx_time"] for r in h.recent(2)] == [T0 + 11 + i for i in range(5)]
    assert len(h.recent(1)) == 7
    h.forget(1)
    assert len(h) == 5 and h.recent(1) == []


def test_a_cmd_ack_is_found_by_command_id():
    h = History()
    h.add(1, m.CMD_ACK, {0: 41, 1: m.RES_OK, 2: 30}, T0)
    h.add(1, m.CMD_ACK, {0: 42, 1: m.RES_BAD_ARGS}, T0 + 1)
    assert h.command_ack(1, 41)["value"]["value"] == 30
    assert h.command_ack(1, 42)["result"]["value"] == "bad_args"
    assert h.command_ack(1, 43) is None and h.command_ack(2, 41) is None


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        History(per_type=0)
    with pytest.raises(ValueError):
        History(max_entries=0)
    assert (PER_TYPE, MAX_ENTRIES) == (96, 500_000)  # the documented limits (README, docstring)


@settings(max_examples=150, deadline=None)
@given(
    adds=st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([m.LIGHT, m.STATUS, m.EVENT]), st.integers(0, 100)), max_size=80
    ),
    per_type=st.integers(1, 6),
    max_entries=st.integers(1, 30),
)
def test_whatever_arrives_the_bounds_hold_and_what_is_kept_is_the_latest(adds, per_type, max_entries):
    h = History(per_type=per_type, max_entries=max_entries)
    sent: dict[tuple[int, int], list[float]] = {}
    for i, (node, mtype, v) in enumerate(adds):
        body = light(v) if mtype == m.LIGHT else {0: v} if mtype == m.STATUS else {0: m.EV_LEAK, 2: v}
        h.add(node, mtype, body, T0 + i)
        sent.setdefault((node, mtype), []).append(T0 + i)
    kept = {(n, t): [r["rx_time"] for r in h.recent(n, [expand.TYPE_NAMES[t]])] for n, t in sent}
    assert len(h) == sum(len(v) for v in kept.values()) <= max_entries
    for key, times in kept.items():
        assert len(times) <= per_type
        assert times == sent[key][len(sent[key]) - len(times) :]  # a suffix: only the oldest go
    if adds:
        last_node, last_type, _ = adds[-1]
        assert kept[(last_node, last_type)][-1] == T0 + len(adds) - 1  # the newest is always kept


def test_an_entry_costs_under_ninety_bytes():
    h = History(per_type=PER_TYPE)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for node in range(100):
        for i in range(PER_TYPE):
            h.add(node, m.LIGHT, {**LIGHT_BODY, 2: 123456 + i}, T0 + i * 900)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(h) == 100 * PER_TYPE
    assert used / len(h) < 90, used / len(h)  # MAX_ENTRIES x this is the bound's memory (README)


async def test_fed_by_the_pipeline_after_the_commit_and_only_with_what_was_stored(tmp_path):
    store = await Store.open(tmp_path / "gw.db")
    h = History()
    pipe = Pipeline(registry(tmp_path / "nodes.toml", [1]), store, downlinks=h)
    try:
        assert await pipe.ingest(reception(seal(1, 1), rx_time=T0)) == "accepted"
        assert await pipe.ingest(reception(seal(1, 1), rx_time=T0)) == "duplicate"
        forged = bytearray(seal(1, 2))
        forged[-1] ^= 1
        assert await pipe.ingest(reception(bytes(forged), rx_time=T0 + 1)) == "bad_mic"
        assert await pipe.ingest(reception(seal(2, 1), rx_time=T0 + 2)) == "unknown_node"
        assert await pipe.ingest(reception(seal(1, 3, m.IRRIGATION), rx_time=T0 + 3)) == "accepted"
        got = h.recent(1)
        assert [(r["type"], r["rx_time"]) for r in got] == [("light", T0), ("irrigation", T0 + 3)]
        assert got[0]["fields"]["energy"]["value"] == 123456 + 1
        assert h.recent(2) == []
    finally:
        await store.close()


def _value(kind: int, lo: int, hi: int, maxlen: int):
    if kind in (m.U, m.I):
        return st.integers(lo, hi)
    if kind == m.B:
        return st.binary(min_size=lo, max_size=hi)
    if kind == m.T:
        return st.text(min_size=lo, max_size=hi).filter(lambda t: len(t.encode()) <= hi)
    if kind == m.V:
        return st.lists(st.integers(lo, hi) | st.just(m.NO_VALUE), max_size=maxlen).map(bytes)
    raise AssertionError(kind)  # A and M: downlink kinds only


@st.composite
def uplinks(draw) -> tuple[int, dict]:
    """Any valid uplink body, as the pipeline hands it over: every field at any value of its range."""
    mtype = draw(st.sampled_from([t for t in m.SPECS if t < 8]))
    body = {
        key: draw(_value(kind, lo, hi, maxlen))
        for key, kind, lo, hi, req, maxlen in m.SPECS[mtype]
        if req or draw(st.booleans())
    }
    return mtype, m.validate(mtype, body)


@settings(max_examples=200, deadline=None)
@given(st.lists(uplinks(), min_size=1, max_size=12), st.booleans())
def test_any_uplink_from_the_air_comes_back_named_exactly_as_the_api_names_it(items, handed_over):
    h = History(per_type=4)
    for i, (mtype, body) in enumerate(items):
        h.add(7, mtype, body, T0 + i, cbor2.dumps(body) if handed_over else None)
    for mtype in {t for t, _ in items}:
        name = expand.TYPE_NAMES[mtype]
        sent = [b for t, b in items if t == mtype][-4:]
        assert [r["fields"] for r in h.recent(7, [name])] == [expand.expand(mtype, b) for b in sent]
