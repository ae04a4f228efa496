"""gateway/ops.py: the COMMAND catalogue the web page's form is built from.

Checked against the three authorities it describes: SPEC §5's op table (numbers
and names), protocol/expand.py (the names the API accepts), and the real
firmware apps, which must accept every argument at the catalogue's bounds and
answer `bad_args` just past them (the form must not offer what a node refuses,
nor refuse what a node takes).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apps_support import AppNode
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from gateway import ops
from protocol import expand, fragments
from protocol import messages as m
from simulator.hal_sim import SimHAL

SPEC = Path(__file__).resolve().parent.parent / "protocol" / "SPEC.md"
RUNTIME_OPS = {"set_interval", "reboot"}  # executed by firmware/runtime.py, not by an app


class _Clock:
    unix0 = 1_795_000_000

    def ms(self) -> int:
        return 0


def app(kind: str):
    hal = SimHAL(_Clock(), time_known=True)
    node = AppNode(hal)
    if kind == "lighting":
        return Lighting({"location": {"lat": 48.85, "lon": 2.35}, "lighting": {}}, hal, node)
    return Irrigation({"irrigation": {"zones": [{"flow_dlpm": 100}] * 4, "utc_offset_min": 60}}, hal, node)


def test_every_op_of_the_spec_is_described_with_its_name():
    text = SPEC.read_text()
    section = text[text.index("| op | name | args |") :]
    section = section[: section.index("\n\n")]
    table = dict(re.findall(r"^\| (\d+) \| (\w+) \|", section, re.M))
    cat = ops.catalogue()
    del table[str(m.OP_JOIN_GROUP)]  # the gateway's own op (a lamp's group key): never in the API's catalogue
    del table[str(fragments.OP_FRAG_STATUS)]  # gateway/fuota.py's own (an update's status): never in it either
    assert {str(o["op"]): o["name"] for o in cat} == table
    named = dict(expand.ENUMS[(m.COMMAND, 1)])
    assert named.pop(m.OP_JOIN_GROUP) == "join_group"
    assert {o["op"]: o["name"] for o in cat} == named
    for o in cat:
        assert o["kinds"] and set(o["kinds"]) <= {"lighting", "irrigation"} and o["help"]
        assert 0 <= o["groups"]["min"] <= o["groups"]["max"] and len(o["args"]) * o["groups"]["max"] <= 24
        assert bool(o["args"]) == (o["groups"]["max"] > 0)
        for a in o["args"]:
            lo, hi = bounds(a)
            assert lo <= a["default"] <= hi, (o["name"], a)


def bounds(arg: dict) -> tuple[int, int]:
    if arg["kind"] == "choice":
        keys = sorted(int(k) for k in arg["choices"])
        assert keys == list(range(keys[0], keys[-1] + 1))  # a contiguous enumeration
        return keys[0], keys[-1]
    return arg["min"], arg["max"]


def cases() -> list:
    return [
        pytest.param(o, kind, id=f"{o['name']}-{kind}")
        for o in ops.catalogue()
        if o["name"] not in RUNTIME_OPS
        for kind in o["kinds"]
    ]


@pytest.mark.parametrize("op, kind", cases())
def test_the_firmware_takes_every_bound_and_refuses_what_lies_past_it(op, kind):
    code, args, gmax = op["op"], op["args"], op["groups"]["max"]
    if not args:
        assert app(kind).command(code, [])[0] == m.RES_OK
        assert app(kind).command(code, [1])[0] == m.RES_BAD_ARGS
        return
    lows = [bounds(a)[0] for a in args]
    highs = [bounds(a)[1] for a in args]
    defaults = [a["default"] for a in args]
    assert app(kind).command(code, defaults)[0] in (m.RES_OK, m.RES_REFUSED)  # what the form proposes
    for group in (lows, highs):
        for n in sorted({op["groups"]["min"], gmax}):
            res, _ = app(kind).command(code, group * n)
            assert res in (m.RES_OK, m.RES_REFUSED), (group * n, res)  # refused: unsafe now, args fine
    assert app(kind).command(code, lows * (gmax + 1))[0] == m.RES_BAD_ARGS
    for i, a in enumerate(args):
        lo, hi = bounds(a)
        for bad in (lo - 1, hi + 1):
            group = list(lows)
            group[i] = bad
            assert app(kind).command(code, group)[0] == m.RES_BAD_ARGS, (a["name"], bad)


def test_runtime_ops_follow_the_runtime():
    by_name = {o["name"]: o for o in ops.catalogue()}
    (interval,) = by_name["set_interval"]["args"]
    assert (interval["min"], interval["max"]) == (m.REPORT_MIN_S, m.REPORT_MAX_S)
    assert by_name["reboot"]["args"] == [] and by_name["reboot"]["groups"]["max"] == 0
    for kind in ("lighting", "irrigation"):  # an app does not know them: the runtime answers them
        assert app(kind).command(m.OP_REBOOT, [])[0] == m.RES_UNKNOWN_OP


# -- the API's check (issue 17): what the node would refuse is refused before it is queued --------


def test_check_command_takes_what_the_node_takes_and_names_what_it_would_refuse():
    L, I = "lighting", "irrigation"  # noqa: E741
    assert ops.check_command(m.OP_SET_LEVEL, [100, 600], L) == [100, 600]
    assert ops.check_command(m.OP_SET_LEVEL, {"level": 50, "duration": 0}, L) == [50, 0]
    assert ops.check_command(m.OP_SET_LEVEL, [{"level": 50, "duration": 0}], L) == [50, 0]
    steps = [{"anchor": 0, "offset": -30, "level": 80}, {"anchor": 2, "offset": 0, "level": 20}]
    assert ops.check_command(m.OP_SET_PROFILE, steps, L) == [0, -30, 80, 2, 0, 20]
    assert ops.check_command(m.OP_REBOOT, [], I) == [] and ops.check_command(m.OP_CLOSE_ALL, {}, I) == []
    for op, args, kind, words in [
        (m.OP_SET_LEVEL, [150, 600], L, ("level", "150", "0..100")),
        (m.OP_SET_LEVEL, [80], L, ("takes 2 arguments", "level, duration", "got 1")),
        (m.OP_OPEN_ZONE, [1, 10], L, ("open_zone", "irrigation", "lighting node")),
        (m.OP_SET_LEVEL, [1, 2], "bridge", ("bridge",)),
        (m.OP_SET_LEVEL, {"level": 50}, L, ("'duration'", "missing")),
        (m.OP_SET_LEVEL, {"level": 50, "duraton": 1}, L, ("unknown argument 'duraton'",)),
        (m.OP_SET_LEVEL, [50, True], L, ("duration", "not an integer")),
        (m.OP_SET_LEVEL, "x", L, ("args must be",)),
        (m.OP_SET_PROFILE, [0, 0], L, ("3 to 24 in groups of 3",)),
        (m.OP_SET_PROFILE, [0, 0, 50, 3, 0, 50], L, ("anchor (group 2)", "not one of")),
        (m.OP_SET_SCHEDULE, [5, 127, 0, 10], I, ("zone", "1..4")),
        (m.OP_REBOOT, [1], I, ("takes no arguments",)),
        (m.OP_SET_LEVEL, [{"level": 1, "duration": 1}, 5], L, ("mixes",)),
        (99, [], L, ("unknown op 99",)),
    ]:
        with pytest.raises(ops.CommandRefused) as e:
            ops.check_command(op, args, kind)
        assert all(w in str(e.value) for w in words), (op, args, str(e.value))


@pytest.mark.parametrize(
    "op, kind", [pytest.param(o, k, id=f"{o['name']}-{k}") for o in ops.catalogue() for k in o["kinds"]]
)
def test_check_command_agrees_with_the_catalogue_bounds(op, kind):
    code, args, gmin, gmax = op["op"], op["args"], op["groups"]["min"], op["groups"]["max"]
    lows = [bounds(a)[0] for a in args]
    highs = [bounds(a)[1] for a in args]
    for group in (lows, highs):
        for n in sorted({gmin, gmax}):
            assert ops.check_command(code, group * n, kind) == group * n
    if args:
        with pytest.raises(ops.CommandRefused):
            ops.check_command(code, lows * (gmax + 1), kind)
    for i, a in enumerate(args):
        lo, hi = bounds(a)
        for bad in (lo - 1, hi + 1):
            group = list(lows)
            group[i] = bad
            with pytest.raises(ops.CommandRefused, match=a["name"]):
                ops.check_command(code, group, kind)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(op=st.integers(-2, 12), args=json_values, kind=st.sampled_from(["lighting", "irrigation", "bridge"]))
def test_check_command_never_crashes(op, args, kind):
    try:
        out = ops.check_command(op, args, kind)
    except ops.CommandRefused:
        return
    assert isinstance(out, list) and all(type(v) is int for v in out)
