"""simulator.scenario: the shipped scenarios, deterministic placement, and errors that name file, key, why."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import zoneinfo

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import channel as ch
from simulator import scenario as S

SCENARIOS = ROOT / "simulator" / "scenarios"

MINIMAL = """
[scenario]
name = "mini"
seed = 3
start = 2026-06-15T12:00:00Z
duration = "24h"

[location]
lat = 45.76
lon = 4.84
timezone = "Europe/Paris"

[[gateways]]
id = "gw"
x = 0.0
y = 0.0

[[streets]]
id = "a"
points = [[-100, 0], [0, 0], [0, 100]]
lamps = 8

[[parks]]
id = "p"
polygon = [[10, 10], [60, 10], [60, 40], [10, 40]]
controllers = 2
zones_per_controller = 3
"""


@pytest.fixture(scope="module")
def district() -> S.Scenario:
    return S.load(SCENARIOS / "district.toml")


@pytest.fixture(scope="module")
def city() -> S.Scenario:
    return S.load(SCENARIOS / "city.toml")


def test_district_is_the_demo_the_issue_asks_for(district):
    assert len(district.lamps) == 60
    assert district.zones == 12
    assert len(district.gateways) == 2
    assert district.duration_s == 24 * 3600
    assert len(district.faults) >= 5
    kinds = {f.kind for f in district.faults}
    assert {"lamp_failure", "burst", "leak", "node_reboot", "gateway_restart", "upstream_outage"} <= kinds
    assert district.warnings == ()


def test_district_links_leave_room_for_95_percent_delivery(district):
    """Before collisions, every node's uplink reaches a gateway at least 99 % of the time."""
    c = district.channel()
    for n in district.nodes:
        assert c.delivery_probability(n.node_id, n.sf) >= 0.99, n.name
        assert c.margin_db(n.node_id, n.sf) >= district.radio.sf_margin_db


def test_city_is_the_question_of_the_issue(city):
    assert len(city.lamps) == 2000
    assert city.zones == 300
    assert len(city.gateways) == 2
    assert isinstance(city.radio.params.path_loss, ch.HataUrban)


def test_lamps_stand_on_their_streets(district, city):
    for sc in (district, city):
        streets = {s.id: s for s in sc.streets}
        per_street: dict[str, list[S.LampNode]] = {}
        for lamp in sc.lamps:
            st = streets[lamp.street]
            x, y = S.point_along(st.points, lamp.s_m)
            assert math.dist((x, y), (lamp.x, lamp.y)) < 1e-6
            per_street.setdefault(st.id, []).append(lamp)
        for sid, lamps in per_street.items():
            st = streets[sid]
            assert len(lamps) == st.lamps
            spacing = st.length_m / st.lamps
            s = sorted(lp.s_m for lp in lamps)
            assert all(spacing * (1 - 2 * S.JITTER_FRACTION) - 1e-9 <= b - a for a, b in zip(s, s[1:]))


def test_controllers_stand_in_their_parks(district, city):
    for sc in (district, city):
        parks = {p.id: p for p in sc.parks}
        for c in sc.controllers:
            assert S.inside(parks[c.park].polygon, c.x, c.y)


def test_zones_by_hand(district):
    # Square des Jacobins: 130 x 60 m, 30 % irrigated, 2 controllers x 4 zones: 292.5 m2 each;
    # 12 mm/h over 292.5 m2 = 3,510 L/h = 58.5 L/min.
    j = district.node("jacobins-1")
    assert len(j.zones) == 4
    assert j.zones[0].area_m2 == pytest.approx(292.5)
    assert j.zones[0].flow_l_min == pytest.approx(58.5)
    assert district.node("celestins-1").zones[0].soil.name == "sandy_loam"
    assert district.node("celestins-1").schedule.start_min == 6 * 60 + 30


def test_names_and_ids_are_unique_and_stable(district):
    again = S.load(SCENARIOS / "district.toml")
    assert again.nodes == district.nodes
    ids = [n.node_id for n in district.nodes]
    names = [n.name for n in district.nodes]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    assert district.lamps[0].node_id == S.LAMP_ID_BASE + 1
    assert district.controllers[0].node_id == S.IRRIGATION_ID_BASE + 1
    assert district.lamps[0].name == "quai-01"


def test_seed_moves_lamps_but_keeps_names():
    a = S.loads(MINIMAL)
    b = S.loads(MINIMAL.replace("seed = 3", "seed = 4"))
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    assert [n.x for n in a.lamps] != [n.x for n in b.lamps]


def test_minimal_scenario_defaults():
    sc = S.loads(MINIMAL, "mini.toml")
    assert sc.file == "mini.toml"
    assert sc.location.climate == "lyon"
    assert sc.radio.channels_hz == (868100000, 868300000, 868500000)
    assert sc.radio.sf is None and isinstance(sc.radio.params.path_loss, ch.LogDistance)
    assert sc.lighting.report_interval_s == 900
    assert len(sc.lamps) == 8 and sc.zones == 6
    assert sc.streets[0].length_m == 200.0
    # The lamp at s = 150 m of an L-shaped street stands on its second leg.
    assert S.point_along(sc.streets[0].points, 150.0) == (0.0, 50.0)
    assert sc.output.dir == "out" and sc.output.html
    lat, lon = sc.location.to_latlon(0.0, 1113.2)
    assert lat == pytest.approx(45.77) and lon == 4.84


def test_auto_sf_is_the_fastest_with_the_margin():
    sc = S.loads(MINIMAL)
    c = sc.channel()
    for n in sc.nodes:
        assert c.margin_db(n.node_id, n.sf) >= sc.radio.sf_margin_db
        assert n.sf == 7 or c.margin_db(n.node_id, n.sf - 1) < sc.radio.sf_margin_db
    fixed = S.loads(MINIMAL.replace("[[gateways]]", "[radio]\nsf = 12\n\n[[gateways]]"))
    assert {n.sf for n in fixed.nodes} == {12}


def test_far_nodes_get_sf12_and_a_warning():
    text = MINIMAL.replace("points = [[-100, 0], [0, 0], [0, 100]]", "points = [[2000, 0], [2100, 0]]")
    sc = S.loads(text)
    assert {n.sf for n in sc.lamps} == {12}
    assert len(sc.warnings) == 8 and "no SF reaches a gateway" in sc.warnings[0]


def test_street_grid_expands():
    text = MINIMAL.replace(
        "[[streets]]",
        """[[street_grids]]
id = "g"
origin = [-300, -200]
blocks = [3, 2]
block_m = [100, 100]
lamps = 50

[[streets]]""",
    )
    sc = S.loads(text)
    grid = [s for s in sc.streets if s.id.startswith("g-")]
    assert len(grid) == 3 + 4  # 3 west-east lines, 4 south-north
    assert sum(s.lamps for s in grid) == 50
    assert {s.length_m for s in grid} == {300.0, 200.0}
    # 3 x 300 + 4 x 200 = 1,700 m: 50 x 300 / 1700 = 8.82 and 50 x 200 / 1700 = 5.88 lamps a street;
    # the 6 left after 3 x 8 + 4 x 5 go to the largest remainders: the four .88s, then two .82s.
    assert sorted(s.lamps for s in grid) == [6, 6, 6, 6, 8, 9, 9]


def test_share_is_largest_remainder():
    assert S.share(10, [1, 1, 1]) == [4, 3, 3]
    assert S.share(0, [1, 2]) == [0, 0]
    assert sum(S.share(2000, [2400.0] * 26)) == 2000


def test_schedule_runs_in_local_time():
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    sched = S.Schedule(5 * 60, 20.0, 1)
    start = 1781524800.0  # 2026-06-15T12:00:00Z
    runs = sched.runs(3, start, start + 86400, paris)
    # 05:00 CEST = 03:00 UTC on the 16th; zones one after the other.
    assert [(z, a - start, b - start) for z, a, b in runs] == [
        (1, 15 * 3600, 15 * 3600 + 1200),
        (2, 15 * 3600 + 1200, 15 * 3600 + 2400),
        (3, 15 * 3600 + 2400, 16 * 3600),
    ]
    every_other = S.Schedule(5 * 60, 20.0, 2).runs(1, start, start + 10 * 86400, paris)
    assert len(every_other) == 5


def test_weather_and_presence_from_the_scenario(district):
    w = district.weather_model()
    assert w.day(district.start_unix).day <= w.day(district.end_unix - 1).day
    p = district.presence("republique")
    assert p.pedestrians and all(district.start_unix <= x.enter < district.end_unix for x in p.pedestrians)
    with pytest.raises(KeyError):
        district.presence("nowhere")


def broken(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new)


@pytest.mark.parametrize(
    "text,key,why",
    [
        ("not toml [", "", "not valid TOML"),
        ("[location]\nlat = 1.0\nlon = 1.0\n", "scenario.start", "is required"),
        (broken('duration = "24h"', 'duration = "2y"'), "scenario.duration", "expected a duration"),
        (broken('duration = "24h"', 'duration = "10s"'), "scenario.duration", "must be at least 1 min, got 10 s"),
        (broken("start = 2026-06-15T12:00:00Z", "start = 2026-06-15T12:00:00"), "scenario.start", "offset"),
        (broken('name = "mini"', 'name = "mini"\ncolour = "blue"'), "scenario.colour", "unknown key"),
        (broken('name = "mini"', 'name = "has space"'), "scenario.name", "non-empty name"),
        (broken("lat = 45.76", "lat = 95.0"), "location.lat", "must be within"),
        (broken("lat = 45.76", 'lat = "north"'), "location.lat", "expected a number"),
        (broken('timezone = "Europe/Paris"', 'timezone = "Mars/Olympus"'), "location.timezone", "unknown time zone"),
        (broken('timezone = "Europe/Paris"', 'timezone = "UTC"\nutc_offset_h = 2'), "location.timezone", "not both"),
        (broken('timezone = "Europe/Paris"', 'climate = "atlantis"'), "location.climate", "unknown climate"),
        (broken('[[gateways]]\nid = "gw"\nx = 0.0\ny = 0.0\n', ""), "gateways", "at least one"),
        (broken('id = "gw"\nx = 0.0', 'id = "gw"\nx = "east"'), "gateways[0].x", "expected a number"),
        (
            broken("[[streets]]", '[[gateways]]\nid = "gw"\nx = 1.0\ny = 0.0\n\n[[streets]]'),
            "gateways[1].id",
            "duplicate",
        ),
        (
            broken("points = [[-100, 0], [0, 0], [0, 100]]", "points = [[0, 0]]"),
            "streets[0].points",
            "needs at least 2 points, got 1",
        ),
        (
            broken("points = [[-100, 0], [0, 0], [0, 100]]", "points = [[0, 0], [0]]"),
            "streets[0].points[1]",
            "expected a point",
        ),
        (
            broken("points = [[-100, 0], [0, 0], [0, 100]]", "points = [[5, 5], [5, 5]]"),
            "streets[0].points",
            "zero length",
        ),
        (broken("lamps = 8", "lamps = 8\nspacing_m = 30"), "streets[0].lamps", "not both"),
        (broken("lamps = 8", "lamps = 8.5"), "streets[0].lamps", "expected an integer"),
        (
            broken("[[parks]]", '[[streets]]\nid = "a"\npoints = [[0, 0], [1, 1]]\n\n[[parks]]'),
            "streets",
            "duplicate id",
        ),
        (
            broken("polygon = [[10, 10], [60, 10], [60, 40], [10, 40]]", "polygon = [[0, 0], [1, 1], [2, 2]]"),
            "parks[0].polygon",
            "needs an area",
        ),
        (
            broken("zones_per_controller = 3", "zones_per_controller = 5"),
            "parks[0].zones_per_controller",
            "within 1..4",
        ),
        (broken("controllers = 2", 'controllers = 2\nsoil = "moon_dust"'), "parks[0].soil", "must be one of"),
        (broken("controllers = 2", 'controllers = 2\nschedule_start = "25:00"'), "parks[0].schedule_start", "HH:MM"),
        (MINIMAL + "\n[radio]\nchannels_mhz = [868.1, 868.15]\n", "radio.channels_mhz[1]", "overlaps"),
        (MINIMAL + "\n[radio]\nchannels_mhz = [915.0]\n", "radio.channels_mhz[0]", "outside every EU868 sub-band"),
        (MINIMAL + "\n[radio]\nsf = 6\n", "radio.sf", '"auto" or 7..12'),
        (MINIMAL + '\n[radio]\npath_loss = "free_space"\n', "radio.path_loss", "must be"),
        (MINIMAL + '\n[radio]\npath_loss = "hata"\ngamma = 3.0\n', "radio.gamma", 'log_distance" only'),
        (MINIMAL + '\n[radio]\nshadowing = "node"\n', "radio.shadowing", "must be"),
        (
            MINIMAL + '\n[weather]\n[[weather.rain]]\nat = 2026-07-01T00:00:00Z\nduration = "1h"\nmm = 5.0\n',
            "weather.rain[0].at",
            "within the run",
        ),
        (MINIMAL + '\n[output]\nhtml = "yes"\n', "output.html", "true or false"),
        (MINIMAL + '\n[lighting]\nreport_interval = "1s"\n', "lighting.report_interval", "at least 10 s, got 1 s"),
        (
            MINIMAL + '\n[[faults]]\nkind = "leak"\ntarget = "a-01"\nafter = "1h"\n',
            "faults[0].target",
            "needs a irrigation node",
        ),
        (
            MINIMAL + '\n[[faults]]\nkind = "lamp_failure"\ntarget = "a-99"\nafter = "1h"\n',
            "faults[0].target",
            'no node named "a-99"',
        ),
        (
            MINIMAL + '\n[[faults]]\nkind = "burst"\ntarget = "p-1"\nafter = "1h"\nzone = 4\n',
            "faults[0].zone",
            "has 3 zones",
        ),
        (
            MINIMAL + '\n[[faults]]\nkind = "gateway_restart"\ntarget = "gw-x"\nafter = "1h"\n',
            "faults[0].target",
            "no gateway",
        ),
        (MINIMAL + '\n[[faults]]\nkind = "leak"\ntarget = "p-1"\nafter = "30h"\n', "faults[0]", "outside the run"),
        (MINIMAL + "\n[extras]\nx = 1\n", "extras", "unknown key"),
    ],
)
def test_errors_name_file_key_and_why(text, key, why):
    with pytest.raises(S.ScenarioError) as e:
        S.loads(text, "bad.toml")
    err = e.value
    assert err.file == "bad.toml"
    assert err.key == key
    assert why in err.why
    assert str(err).startswith("bad.toml: ")


def test_missing_file():
    with pytest.raises(S.ScenarioError, match="cannot read"):
        S.load(SCENARIOS / "nope.toml")


def test_command_line_summary():
    out = subprocess.run(
        [sys.executable, "-m", "simulator.scenario", str(SCENARIOS / "district.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "60 lamps on 6 streets" in out.stdout and "(12 zones)" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "simulator.scenario", str(SCENARIOS / "nope.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_readme_documents_every_key_the_shipped_scenarios_use():
    readme = (ROOT / "simulator" / "README.md").read_text(encoding="utf-8")
    for path in SCENARIOS.glob("*.toml"):
        for key in re.findall(r"^\s*([a-z_]+)\s*=", path.read_text(encoding="utf-8"), re.M):
            assert f"`{key}`" in readme, f"{path.name}: {key} is not documented in simulator/README.md"


VALUES = [
    "0",
    "-1",
    "1e308",
    "nan",
    "inf",
    '"x"',
    '""',
    "[]",
    "[[1, 2]]",
    "[1, 2]",
    "true",
    "{}",
    "{a = 1}",
    "2026-01-01T00:00:00Z",
    "2026-01-01",
    '"1h"',
    '"05:00"',
    '"auto"',
    "12",
    "0.5",
    '"hata"',
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(VALUES)), min_size=1, max_size=4), st.booleans())
def test_any_edit_gives_a_scenario_or_a_scenario_error(edits, add_fault):
    """Whatever value lands on whatever key, the parser answers with a ScenarioError, never a crash."""
    text = MINIMAL + ('\n[[faults]]\nkind = "leak"\ntarget = "p-1"\nafter = "1h"\n' if add_fault else "")
    lines = text.splitlines()
    keyed = [i for i, ln in enumerate(lines) if "=" in ln]
    for pick, value in edits:
        i = keyed[pick % len(keyed)]
        lines[i] = lines[i].split("=", 1)[0] + "= " + value
    try:
        S.loads("\n".join(lines), "fuzz.toml")
    except S.ScenarioError as e:
        assert str(e).startswith("fuzz.toml: ")


# ---------------------------------------------------------------- issue 18: messages a city engineer can act on


def why(text: str) -> str:
    with pytest.raises(S.ScenarioError) as e:
        S.loads(text, "bad.toml")
    msg = str(e.value)
    # no Python reprs: single-quoted strings, True/False, datetime(...) objects
    assert "datetime." not in msg and "True" not in msg and "False" not in msg, msg
    return msg


def test_unknown_keys_list_the_real_allowed_keys_and_the_nearest():
    msg = why(broken("lamps = 8", "lamp = 8"))
    assert msg.startswith('bad.toml: streets[0].lamp: unknown key (did you mean "lamps"?)')
    allowed = msg.split("allowed here: ")[1].rstrip(")").split(", ")
    assert {"lamps", "spacing_m", "id", "points", "rated_power_w"} <= set(allowed)
    msg = why(MINIMAL.replace('timezone = "Europe/Paris"', 'utc_offset_h = 1\ntimezon = "x"'))
    assert 'did you mean "timezone"?' in msg and "timezone" in msg.split("allowed here: ")[1]
    assert 'did you mean "kind"?' in why(MINIMAL + '\n[[faults]]\nkid = "leak"\nkind = "leak"\ntarget = "p-1"\n')


def test_unknown_names_say_the_nearest_one():
    assert 'no node named "a-1" (did you mean "a-01"?)' in why(
        MINIMAL + '\n[[faults]]\nkind = "lamp_failure"\ntarget = "a-1"\nafter = "1h"\n'
    )
    assert 'got "lamp_failur" (did you mean "lamp_failure"?)' in why(
        MINIMAL + '\n[[faults]]\nkind = "lamp_failur"\ntarget = "a-01"\nafter = "1h"\n'
    )
    assert 'did you mean "seville"?' in why(broken('timezone = "Europe/Paris"', 'climate = "sevile"'))
    assert 'did you mean "loam"?' in why(broken("controllers = 2", 'controllers = 2\nsoil = "loan"'))


def test_ranges_are_said_in_human_units_and_values_as_the_file_writes_them():
    assert "scenario.duration: must be at least 1 min, got 30 s" in why(broken('duration = "24h"', 'duration = "30s"'))
    assert "must be at most 366 d, got 400 d" in why(broken('duration = "24h"', 'duration = "400d"'))
    assert "got 2026-06-15T00:00:00Z" in why(MINIMAL + "\n[weather]\ndry_days = [2026-06-15T00:00:00Z]\n")
    assert "expected a number, got true" in why(broken("lat = 45.76", "lat = true"))
    assert "outside the run (from the start to 1 d after it)" in why(
        MINIMAL + '\n[[faults]]\nkind = "leak"\ntarget = "p-1"\nafter = "30h"\n'
    )
    assert "within 0..1" in why(broken("controllers = 2", "controllers = 2\nsoil_start = -0.1"))


def test_the_validator_has_help_and_one_status_for_invalid_input(tmp_path):
    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "simulator.scenario", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
        )

    h = check("--help")
    assert h.returncode == 0 and "SCENARIO.toml" in h.stdout and "status is 2" in h.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(broken('duration = "24h"', 'duration = "30s"'))
    r = check(str(bad))
    assert r.returncode == 2 and "at least 1 min" in r.stderr and "Traceback" not in r.stderr
    assert check().returncode == 2  # no file: argparse's usage error, the same status
