"""simulator.faults: durations, parameters with defaults, clear errors, what is due and active."""

from __future__ import annotations

import datetime as dt

import pytest

from protocol import messages as m
from simulator import faults as F

START = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)
DAY = 86400.0


def parse(*entries: dict) -> F.FaultSchedule:
    return F.FaultSchedule.parse(list(entries), START, DAY)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90s", 90),
        ("6h", 21600),
        ("2h30m", 9000),
        ("1d", 86400),
        ("1.5h", 5400),
        ("1h 2m 3s", 3723),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_durations(text, seconds):
    assert F.parse_duration(text, "k") == seconds


@pytest.mark.parametrize("bad", ["", "6", "h", "3x", "-2h", True, None, [1], -5])
def test_bad_durations(bad):
    with pytest.raises(F.FaultError) as e:
        F.parse_duration(bad, "faults[0].after")
    assert e.value.key == "faults[0].after"


def test_defaults_and_expected_alarms():
    s = parse(
        {"kind": "lamp_failure", "target": "l1", "after": "9h"},
        {"kind": "lamp_failure", "target": "l2", "after": "9h", "mode": "over_current"},
        {"kind": "leak", "target": "p1", "after": "1h", "duration": "30m"},
        {"kind": "burst", "target": "p1", "after": "2h", "zone": 2},
        {"kind": "stuck_valve", "target": "p2", "after": "3h", "state": "open"},
        {"kind": "stuck_valve", "target": "p2", "after": "4h"},
        {"kind": "node_reboot", "target": "l3", "after": "5h", "cause": "watchdog"},
        {"kind": "gateway_restart", "target": "gw", "after": "6h"},
        {"kind": "upstream_outage", "after": "7h", "duration": "2h"},
    )
    by_kind = {}
    for f in s:
        by_kind.setdefault(f.kind, []).append(f)
    assert [f.at_s for f in s] == sorted(f.at_s for f in s)  # time order
    assert by_kind["lamp_failure"][0].params == {"mode": "open"}
    assert by_kind["lamp_failure"][0].expected == ("event", m.EV_LAMP_FAILURE)
    assert by_kind["lamp_failure"][1].expected == ("event", m.EV_OVER_CURRENT)
    assert by_kind["leak"][0].params == {"rate_l_min": 2.0} and by_kind["leak"][0].expected == ("event", m.EV_LEAK)
    assert by_kind["burst"][0].params == {"zone": 2, "factor": 4.0}
    assert by_kind["burst"][0].expected == ("event", m.EV_BURST)
    stuck = {f.params["state"]: f.expected for f in by_kind["stuck_valve"]}
    assert stuck == {"open": ("event", m.EV_EXCESS_FLOW), "closed": ("event", m.EV_NO_FLOW)}
    assert by_kind["node_reboot"][0].expected == ("hello", m.RST_WATCHDOG)
    gw = by_kind["gateway_restart"][0]
    assert gw.params == {"downtime_s": 60.0} and gw.expected is None and gw.end_s == 6 * 3600 + 60
    up = by_kind["upstream_outage"][0]
    assert up.target == "upstream" and up.end_s == 9 * 3600


def test_at_as_a_utc_datetime():
    at = dt.datetime(2026, 6, 15, 22, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 20:30 UTC
    f = parse({"kind": "lamp_failure", "target": "l1", "at": at}).faults[0]
    assert f.at_s == 8.5 * 3600


def test_due_active_ending():
    s = parse(
        {"kind": "leak", "target": "p1", "after": "1h", "duration": "30m"},
        {"kind": "lamp_failure", "target": "l1", "after": "2h"},
        {"kind": "node_reboot", "target": "l9", "after": "3h"},
        {"kind": "gateway_restart", "target": "gw", "after": "4h", "downtime_s": 120},
    )
    assert [f.kind for f in s.due(0, 3600)] == []
    assert [f.kind for f in s.due(3600, 7201)] == ["leak", "lamp_failure"]
    assert [f.kind for f in s.ending(0, DAY)] == ["leak", "gateway_restart"]
    assert s.active("p1", 3600) and s.active("p1", 5399) and not s.active("p1", 5400)
    assert s.active("l1", 80000, "lamp_failure") and not s.active("l1", 80000, "leak")
    assert not s.active("l9", 3 * 3600)  # a reboot is an instant, never "active"
    assert [f.kind for f in s.due(3 * 3600, 3 * 3600 + 1)] == ["node_reboot"]
    assert s.active("gw", 4 * 3600 + 119) and not s.active("gw", 4 * 3600 + 120)
    assert s.targets() == {"p1", "l1", "l9", "gw"}


@pytest.mark.parametrize(
    "entry,key,why",
    [
        ({"kind": "meteor", "target": "x", "after": "1h"}, "faults[0].kind", "must be one of"),
        ({"target": "x", "after": "1h"}, "faults[0].kind", "must be one of"),
        ({"kind": "leak", "target": "x"}, "faults[0]", "exactly one of 'at'"),
        ({"kind": "leak", "target": "x", "after": "1h", "at": START}, "faults[0]", "exactly one of"),
        ({"kind": "leak", "target": "x", "after": "25h"}, "faults[0]", "outside the run"),
        ({"kind": "leak", "target": "x", "at": dt.datetime(2026, 6, 15, 10)}, "faults[0].at", "offset"),
        ({"kind": "leak", "after": "1h"}, "faults[0].target", "needs a target"),
        ({"kind": "leak", "target": "x", "after": "1h", "rate": 3}, "faults[0].rate", "unknown key"),
        (
            {"kind": "leak", "target": "x", "after": "1h", "rate_l_min": "lots"},
            "faults[0].rate_l_min",
            'needs a number, got "lots"',
        ),
        ({"kind": "leak", "target": "x", "after": "1h", "rate_l_min": 0}, "faults[0].rate_l_min", "within"),
        ({"kind": "burst", "target": "x", "after": "1h", "zone": 5}, "faults[0].zone", "within 1..4"),
        ({"kind": "lamp_failure", "target": "x", "after": "1h", "mode": "dim"}, "faults[0].mode", "one of"),
        ({"kind": "node_reboot", "target": "x", "after": "1h", "duration": "1h"}, "faults[0].duration", "event"),
        (
            {"kind": "gateway_restart", "target": "g", "after": "1h", "duration": "1h"},
            "faults[0].duration",
            "downtime_s",
        ),
        ({"kind": "upstream_outage", "after": "1h"}, "faults[0]", "needs a duration"),
        ({"kind": "leak", "target": "x", "after": "1h", "duration": "0s"}, "faults[0].duration", "positive"),
        ("leak", "faults[0]", "is a table"),
    ],
)
def test_errors_name_the_key(entry, key, why):
    with pytest.raises(F.FaultError) as e:
        parse(entry)
    assert e.value.key == key
    assert why in e.value.why


def test_section_must_be_an_array():
    with pytest.raises(F.FaultError, match="array of tables"):
        F.FaultSchedule.parse({"kind": "leak"}, START, DAY)


def test_what_each_node_fault_needs_to_show():
    s = parse(
        {"kind": "lamp_failure", "target": "l1", "after": "1h"},
        {"kind": "lamp_failure", "target": "l2", "after": "1h", "mode": "over_current"},
        {"kind": "leak", "target": "p1", "after": "1h"},
        {"kind": "burst", "target": "p1", "after": "2h", "zone": 3},
        {"kind": "stuck_valve", "target": "p2", "after": "3h", "zone": 2, "state": "open"},
        {"kind": "stuck_valve", "target": "p2", "after": "4h", "zone": 4},
    )
    needs = {(f.kind, f.params.get("mode") or f.params.get("state")): f.shows_when for f in s}
    # a leak flows and an over-current lamp draws whatever the node does: they always show
    assert needs[("leak", None)] is None and needs[("lamp_failure", "over_current")] is None
    assert "lit" in needs[("lamp_failure", "open")]
    assert "zone 3 to water" in needs[("burst", None)]
    assert "another zone to water" in needs[("stuck_valve", "open")] and "zone 2" in needs[("stuck_valve", "open")]
    assert "zone 4 to be opened" in needs[("stuck_valve", "closed")]
