"""A generated city, split into gateway areas, run on a real Dask LocalCluster (simulator/city_dask.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lumeau.cli import main
from simulator import city_dask
from simulator.areas import best_gateways, split
from simulator.city_dask import CityError, CityOptions, run_area, run_city
from simulator.city_generator import CitySpec, GenerateError, generate
from simulator.scenario import ScenarioError, loads

SMALL = CitySpec(streets=4, lamps_per_street=8, parks=2, zones_per_park=4, gateways=2, seed=5, hours=1.0)


def _text(spec: CitySpec) -> str:
    return generate(spec)[0]


# ---------------------------------------------------------------- the generator


def test_generator_makes_the_city_it_is_asked_for() -> None:
    spec = CitySpec(streets=5, lamps_per_street=12, parks=3, zones_per_park=6, gateways=4, seed=2)
    text, sc = generate(spec)
    assert len(sc.streets) == 5 and len(sc.lamps) == 60
    assert all(sum(1 for n in sc.lamps if n.street == s.id) == 12 for s in sc.streets)
    assert len(sc.parks) == 3 and len(sc.controllers) == 3 * 2  # 6 zones: 2 controllers of 3
    assert sc.zones == 18
    assert len(sc.gateways) == 4 and len({(g.x, g.y) for g in sc.gateways}) == 4
    assert text == generate(spec)[0]  # deterministic
    assert text != generate(CitySpec(streets=5, lamps_per_street=12, parks=3, zones_per_park=6, gateways=4, seed=3))[0]
    assert loads(text).lamps == sc.lamps  # the written text is the scenario


@pytest.mark.parametrize(
    "spec,word",
    [
        (CitySpec(streets=0, lamps_per_street=5, parks=0), "no nodes"),
        (CitySpec(streets=2, lamps_per_street=5, parks=50), "do not fit"),
        (CitySpec(streets=2, lamps_per_street=5, gateways=0), "--gateways"),
        (CitySpec(streets=-1, lamps_per_street=5), "--streets"),
    ],
)
def test_generator_refuses_numbers_that_make_no_city(spec: CitySpec, word: str) -> None:
    with pytest.raises(GenerateError, match=word):
        generate(spec)


def test_an_unknown_border_is_refused() -> None:
    with pytest.raises(ValueError, match="border must be one of halo, own"):
        split(generate(SMALL)[1], "none")


def test_generate_command_writes_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "city.toml"
    argv = ["sim", "generate", "--streets", "4", "--lamps-per-street", "8", "--parks", "2", "--zones-per-park", "5"]
    assert main([*argv, "--gateways", "2", "--out", str(out)]) == 0
    assert "rounded up from 5" in capsys.readouterr().out
    assert len(loads(out.read_text()).controllers) == 4
    assert main([*argv, "--gateways", "0", "--out", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gateways") and "Traceback" not in err
    assert not (tmp_path / "x.toml").exists()


# ---------------------------------------------------------------- bad city files


def _bad(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "edit,word",
    [
        (lambda t: t.replace("lamps = 8", "lamps = 0")[: t.index("[[parks]]")], None),
        (lambda t: _bad(t, 'id = "gw-002"\nx = ', 'id = "gw-002"\nx = -1e9 # '), "gateways[1].x: must be within"),
        (lambda t: _bad(t, "points = [", "points = [[1e7, 0], [0, 0]] # ["), "points[0]: must be within 100000 m"),
    ],
)
def test_bad_city_files_exit_2_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, word: str | None
) -> None:
    text = edit(_text(SMALL))  # type: ignore[operator]
    f = tmp_path / "bad.toml"
    f.write_text(text)
    assert main(["sim", "run", str(f), "--dask", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert (word or "no nodes") in err


def test_border_without_dask_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "city.toml"
    f.write_text(_text(SMALL))
    assert main(["sim", "run", str(f), "--border", "own"]) == 2
    assert "--border goes with --dask" in capsys.readouterr().err


def test_zero_nodes_and_overlapping_gateways_are_named() -> None:
    text = _text(SMALL)
    no_nodes = text.replace("lamps = 8", "lamps = 0")
    no_nodes = no_nodes[: no_nodes.index("[[parks]]")]
    with pytest.raises(ScenarioError, match="no nodes"):
        loads(no_nodes)
    a = loads(text).gateways
    same = text.replace(f"x = {a[1].x}\ny = {a[1].y}", f"x = {a[0].x}\ny = {a[0].y}", 1)
    assert same != text
    with pytest.raises(ScenarioError, match='within 1 m of gateway "gw-001"'):
        loads(same)


# ---------------------------------------------------------------- the split


@pytest.mark.parametrize("border", ["halo", "own"])
def test_every_node_is_in_exactly_one_area_its_best_gateways(border: str) -> None:
    _t, sc = generate(CitySpec(streets=6, lamps_per_street=10, parks=3, zones_per_park=4, gateways=4, seed=1))
    areas = split(sc, border)
    best = best_gateways(sc)
    names = [n.name for a in areas for n in a.scenario.nodes]
    assert sorted(names) == sorted(n.name for n in sc.nodes)
    for a in areas:
        sites = [g.id for g in a.scenario.gateways]
        assert sites[0] == a.gateway and len(set(sites)) == len(sites)
        # halo: this small city's nodes reach every gateway; own: the area's alone
        assert sites == (
            [a.gateway] if border == "own" else [a.gateway] + [g.id for g in sc.gateways if g.id != a.gateway]
        )
        assert all(best[n.name] == a.gateway for n in a.scenario.nodes)
        # ids, places and SFs unchanged: an area's node is the city's node
        assert all(n == sc.node(n.name) for n in a.scenario.nodes)


# ---------------------------------------------------------------- runs on a real cluster


def test_one_and_two_workers_give_identical_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "city.toml"
    f.write_text(_text(SMALL))
    out = []
    for workers in ("1", "2"):
        argv = ["sim", "run", str(f), "--dask", "--workers", workers, "--json", "--no-wall-clock", "--no-progress"]
        assert main(argv) == 0
        out.append(json.loads(capsys.readouterr().out))
    assert out[0] == out[1]
    one = out[0]
    assert one["city"]["nodes"] == 34 and len(one["areas"]) == 2
    assert one["delivery"]["settled"] > 0 and one["retried_areas"] == []
    assert one["delivery"]["stored"] == sum(a["results"]["delivery"]["stored"] for a in one["areas"])
    assert "run" not in one and all("run" not in a["results"] for a in one["areas"])


def test_progress_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    _t, sc = generate(SMALL)
    res = run_city(sc, CityOptions(workers=1, processes=False, progress=True, hours=0.25))
    err = capsys.readouterr().err
    assert "2/2 areas" in err and "node-days" in err
    assert res.sections["run"]["node_days_per_cpu_s"] > 0


def test_a_killed_worker_gets_its_area_retried() -> None:
    from distributed import Client, LocalCluster, Queue

    # long enough an area that the kill lands while it runs (a few CPU seconds each)
    spec = CitySpec(streets=8, lamps_per_street=25, parks=0, gateways=2, seed=4, hours=3.0)
    _t, sc = generate(spec)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0
        ) as cluster,
        Client(cluster) as client,
    ):
        box: dict[str, object] = {}

        def go() -> None:
            try:
                box["res"] = run_city(sc, CityOptions(progress=False, run_id="kill-test"), client=client)
            except BaseException as e:  # reported below
                box["err"] = e

        t = threading.Thread(target=go)
        t.start()
        starts = Queue("lumeau-city-kill-test", client=client)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            if starts.qsize() >= 2:  # both areas started
                busy = sorted(w for w, ks in client.processing().items() if ks)
                if busy:
                    victim = busy[0]
                    break
            time.sleep(0.02)
        assert victim is not None, "no area was running to kill"
        killed_key = client.processing()[victim][0]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        t.join(120)
        assert not t.is_alive() and "err" not in box, box.get("err")
    res = box["res"]
    assert isinstance(res, city_dask.CityResults)
    gw = next(a.gateway for a in split(sc) if killed_key.startswith(f"lumeau-area-{a.gateway}-"))
    assert res.sections["retried_areas"] == [gw]
    # the retried area's results are those of a run that was never interrupted
    area = next(a for a in split(sc) if a.gateway == gw)
    alone = run_area(area)
    alone.pop("run")
    got = next(a["results"] for a in res.without_wall_clock()["areas"] if a["gateway"] == gw)
    assert got == alone


def test_unreachable_scheduler_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _t, sc = generate(SMALL)
    with pytest.raises(CityError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        run_city(sc, CityOptions(scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_s=1.0))
    monkeypatch.setattr(city_dask, "CONNECT_TIMEOUT_S", 1.0)
    f = tmp_path / "city.toml"
    f.write_text(_text(SMALL))
    assert main(["sim", "run", str(f), "--scheduler", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler") and "Traceback" not in err


def test_an_existing_scheduler_runs_the_city(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distributed import LocalCluster

    f = tmp_path / "city.toml"
    f.write_text(_text(SMALL))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        argv = ["sim", "run", str(f), "--scheduler", cluster.scheduler_address, "--hours", "0.25", "--json"]
        assert main([*argv, "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["scheduler"] == cluster.scheduler_address and out["run"]["workers"] == 1
    assert out["city"]["hours"] == 0.25 and out["delivery"]["settled"] > 0
