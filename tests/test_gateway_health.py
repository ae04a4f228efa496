"""gateway/health.py: one word per node for people, from node state as the real store keeps it."""

from __future__ import annotations

import pytest
from gateway_helpers import reception, registry, seal

from gateway.health import SILENT_AFTER_S, assess
from gateway.pipeline import Pipeline
from gateway.store import Store
from protocol import messages as m

NODE = 1


@pytest.fixture
async def feed(tmp_path):
    """Frames through the real pipeline into a real store; returns the node state they leave."""
    store = await Store.open(tmp_path / "gw.db")
    pipe = Pipeline(registry(tmp_path / "nodes.toml", [NODE]), store)
    counter = 0

    async def send(mtype: int, body: dict, rx_time: float = 1_000_000.0) -> dict:
        nonlocal counter
        counter += 1
        assert await pipe.ingest(reception(seal(NODE, counter, mtype, body), rx_time=rx_time)) == "accepted"
        return store.node_state(NODE)

    yield send
    await store.close()


LIGHT = {0: 40, 1: 240, 2: 10, 3: m.LS_ON}


def test_a_node_never_heard_is_silent():
    h = assess(None, now=1_000_000.0)
    assert h == {"state": "silent", "conditions": ["silent"], "silent_s": None}


async def test_a_node_heard_lately_is_ok_and_falls_silent_after_the_limit(feed):
    st = await feed(m.LIGHT, LIGHT, rx_time=1_000_000.0)
    assert assess(st, 1_000_000.0 + SILENT_AFTER_S) == {"state": "ok", "conditions": [], "silent_s": SILENT_AFTER_S}
    late = assess(st, 1_000_000.0 + SILENT_AFTER_S + 1)
    assert late["state"] == "silent" and late["silent_s"] == SILENT_AFTER_S + 1
    assert assess(st, 1_000_100.0, silent_after_s=60)["state"] == "silent"


@pytest.mark.parametrize(
    "mtype, body",
    [
        (m.LIGHT, {**LIGHT, 3: m.LS_ON | m.LS_FAILSAFE}),
        (m.IRRIGATION, {0: b"\x40\xff\xff\xff", 1: 0, 6: m.IF_FAILSAFE}),
        (m.EVENT, {0: m.EV_LIGHT_FAILSAFE, 1: m.SEV_WARNING, 4: 1}),
        (m.EVENT, {0: m.EV_IRRIGATION_FAILSAFE, 1: m.SEV_INFO, 4: 1}),
    ],
)
async def test_fail_safe_as_any_node_says_it(feed, mtype, body):
    st = await feed(mtype, body)
    assert assess(st, 1_000_010.0)["state"] == "failsafe"


async def test_an_open_alarm_comes_first_and_a_cleared_one_is_gone(feed):
    await feed(m.LIGHT, {**LIGHT, 3: m.LS_ON | m.LS_FAILSAFE})
    st = await feed(m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 1})
    h = assess(st, 1_000_000.0 + SILENT_AFTER_S * 2)  # silent too: the alarm still needs a person first
    assert h["state"] == "alarm" and h["conditions"] == ["alarm", "failsafe", "silent"]
    st = await feed(m.EVENT, {0: m.EV_LAMP_FAILURE, 1: m.SEV_ALARM, 4: 0})
    assert assess(st, 1_000_010.0)["state"] == "failsafe"


async def test_a_warning_is_listed_but_does_not_raise_the_state(feed):
    await feed(m.LIGHT, LIGHT)
    st = await feed(m.EVENT, {0: m.EV_CYCLING, 1: m.SEV_WARNING, 4: 1})
    assert assess(st, 1_000_010.0) == {"state": "ok", "conditions": ["warning"], "silent_s": 10.0}
    st = await feed(m.EVENT, {0: m.EV_BURST, 1: m.SEV_CRITICAL, 4: 1, 5: 2})
    assert assess(st, 1_000_010.0)["conditions"] == ["alarm", "warning"]
