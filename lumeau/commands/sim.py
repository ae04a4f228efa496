"""`lumeau sim run|compare|board|demo` and `lumeau demo`: the simulator's command line.

Only argument parsing and exit statuses live here; the work is the library's:
simulator.runner.run (a scenario on the virtual clock), simulator.compare
(two results side by side), simulator.board.serve (the virtual MicroPython
board), simulator.demo.run_demo (the main job). Invalid input (a scenario,
an option, a results file) exits with status 2 (INVALID), as argparse does.
The simulator modules are imported when a command runs, except the few
whose defaults the help texts print.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

INVALID = 2  # the exit status of every invalid input: scenario, option, results file (argparse's own)


def add_subcommand(subparsers: Any) -> None:
    """`lumeau demo` and the `lumeau sim` group (see lumeau/cli.py, COMMAND_MODULES)."""
    from simulator import demo as sim_demo

    demo = subparsers.add_parser(
        "demo",
        help="the main job: a simulated district against a real gateway and sink, with a report (out/report.html)",
        description=(sim_demo.__doc__ or "").split("\n\n")[0],
    )
    add_demo_arguments(demo)

    sim = subparsers.add_parser(
        "sim",
        help="the simulator: virtual boards and simulated cities",
        description="Host-side simulation: virtual boards running the real firmware.",
    )
    actions = sim.add_subparsers(dest="sim_command", required=True, metavar="ACTION")
    add_board_action(actions)
    add_run_action(actions)
    add_generate_action(actions)
    add_compare_action(actions)
    add_demo_action(actions)


# ---------------------------------------------------------------- lumeau sim run


def add_run_action(actions: Any) -> None:
    p = actions.add_parser(
        "run",
        help="run a scenario: the real firmware and gateway on a simulated city",
        description="Run SCENARIO.toml: every node runs the real firmware on a virtual "
        "clock against the real gateway pipeline and store; prints the "
        "results (delivery, latency, airtime, frames, alarms against faults, "
        "energy and water saved by the control against the naive baselines, apart from what faults destroyed; "
        "with [adr], the SFs before and after, "
        "the airtime saved and the DER; with [battery], each battery irrigation node's mAh per day "
        "and projected battery life on its cell, simulator/README.md 'Battery nodes').",
    )
    p.add_argument("scenario", type=Path, help="a scenario file (simulator/scenarios/*.toml)")
    p.add_argument(
        "--json", action="store_true", help="print the results as one JSON object (also: [output] json = true)"
    )
    p.add_argument(
        "--no-wall-clock",
        action="store_true",
        help="leave out what depends on the machine (the `run` section: wall and CPU time, speed), "
        "so two runs of one scenario and seed print the same JSON",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="another draw of the scenario's randomness (the weather it does not script, people, radio)",
    )
    p.add_argument("--hours", type=float, help="simulate this many hours instead of the scenario's duration")
    p.add_argument(
        "--nodes-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="keep a share S (0 < S <= 1) of the lamps and controllers (fault targets kept)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run the nodes in N processes, the radio channel and gateway in this one "
        "(simulator/parallel.py; the same results for any N >= 2); with --dask, N local Dask workers",
    )
    p.add_argument(
        "--dask",
        action="store_true",
        help="split the city into areas (one per gateway, each node in its best gateway's) and run them "
        "on a Dask LocalCluster of --workers processes (simulator/city_dask.py; interference across "
        "an area's border is ignored; the same results for any N)",
    )
    p.add_argument(
        "--border",
        choices=("halo", "own"),
        default="halo",
        help="with --dask (refused without it): an area also hears through the neighbour gateways its nodes "
        "may reach (halo, the default) or only through its own gateway (own); interference across a border "
        "is ignored either way",
    )
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="run the areas on this existing Dask cluster (implies --dask; its workers need lumeau installed)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal, unless the scenario's "
        "[output] progress is false)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep the in-process gateway's database and registry here "
        "(default: a temporary directory, removed after the run)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run N seeds (--seed or the scenario's, and the next N-1) and report the mean, std, min and max "
        "of each saving (the results' `spread`; the rest is the first seed's run; --workdir gets a seed-S "
        "directory per seed)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also write report.html, plots/ and results.json into --out (default: the scenario's [output] dir)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="where --report writes (default: [output] dir)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to run a scenario with warnings (exit 2): no SF with margin, flow below the meter, "
        "a gateway on a node, nodes far off the map, dates outside the climate, a run too short",
    )
    p.set_defaults(func=cmd_run)


def strict_refusal(warnings: list[dict[str, str]]) -> int:
    """--strict: every warning printed as an error; the exit status of invalid input."""
    for w in warnings:
        print(f"error: {w['text']} [{w['code']}] (--strict)", file=sys.stderr)
    return INVALID


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from simulator.metrics import spread_section
    from simulator.run_warnings import scenario_warnings
    from simulator.runner import RunOptions, prepare, run
    from simulator.scenario import ScenarioError, load

    try:
        sc = load(args.scenario)
    except (ScenarioError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return INVALID
    if args.dask or args.scheduler:
        return _run_dask(args, sc)
    if args.border != "halo":
        print("error: --border goes with --dask or --scheduler (a run in one city has no borders)", file=sys.stderr)
        return INVALID
    as_json = args.json or sc.output.json  # [output] json = true: as if --json
    if args.no_wall_clock and not as_json:
        print("error: --no-wall-clock goes with --json (the summary shows the wall time)", file=sys.stderr)
        return INVALID
    if not 1 <= args.seeds <= 1000:
        print(f"error: --seeds must be within 1..1000, got {args.seeds}", file=sys.stderr)
        return INVALID
    # [output] progress = false: no bar unless --progress; true: the bar when stderr is a terminal
    progress = args.progress if args.progress is not None else (None if sc.output.progress else False)
    try:
        opts = RunOptions(
            seed=args.seed,
            hours=args.hours,
            nodes_scale=args.nodes_scale,
            progress=progress,
            workdir=args.workdir,
            workers=args.workers,
        )
        prepared = prepare(sc, opts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return INVALID
    if args.strict:
        warns = scenario_warnings(prepared)
        if warns:
            return strict_refusal(warns)
    first = prepared.seed
    runs = []
    for k in range(args.seeds):
        seed_opts = dataclasses.replace(opts, seed=first + k)
        if args.workdir is not None and args.seeds > 1:  # one gateway database per seed
            seed_opts = dataclasses.replace(seed_opts, workdir=args.workdir / f"seed-{first + k}")
        runs.append(run(sc, seed_opts))
    results = runs[0]
    if args.seeds > 1:
        results.sections["spread"] = spread_section([r.to_dict() for r in runs])
    if args.report:
        from simulator.report import write_report

        out = args.out if args.out is not None else Path(sc.output.dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results.to_dict(), indent=1), encoding="utf-8")
            path = write_report(results.to_dict(), out, prepared)
        except OSError as e:
            print(f"error: {out}: cannot write the report: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"report: {path}", file=sys.stderr)
    if as_json:
        print(json.dumps(results.without_wall_clock()) if args.no_wall_clock else results.to_json())
    else:
        print(results.summary())
    return 0


def _run_dask(args: argparse.Namespace, sc: Any) -> int:
    from simulator import city_dask
    from simulator.city_dask import CityError, CityOptions, run_city

    if args.workdir is not None:
        print("error: --workdir is not kept in a Dask run (each area's gateway is in its worker)", file=sys.stderr)
        return INVALID
    opts = CityOptions(
        workers=args.workers,
        scheduler=args.scheduler,
        seed=args.seed,
        hours=args.hours,
        nodes_scale=args.nodes_scale,
        progress=args.progress,
        connect_timeout_s=city_dask.CONNECT_TIMEOUT_S,
        border=args.border,
    )
    try:
        results = run_city(sc, opts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return INVALID
    except CityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results.without_wall_clock()) if args.no_wall_clock else results.to_json())
    else:
        print(results.summary())
    return 0


# ---------------------------------------------------------------- lumeau sim generate


def add_generate_action(actions: Any) -> None:
    p = actions.add_parser(
        "generate",
        help="write a city scenario: a street grid, parks with zones, gateways on a grid",
        description="Write a scenario file for a generated city (simulator/city_generator.py): STREETS "
        "streets (half west-east, half south-north) of K lamps each, P parks of Z zones in the "
        "blocks, G gateways on a grid; checked by the scenario validator before it is written.",
    )
    p.add_argument("--streets", type=int, required=True, metavar="N", help="streets in the grid")
    p.add_argument("--lamps-per-street", type=int, required=True, metavar="K", help="lamps on each street")
    p.add_argument("--parks", type=int, default=0, metavar="P", help="parks, one per block (default 0)")
    p.add_argument(
        "--zones-per-park",
        type=int,
        default=4,
        metavar="Z",
        help="valve zones per park, on ceil(Z/4) controllers (rounded up to fill them; default 4)",
    )
    p.add_argument("--gateways", type=int, default=1, metavar="G", help="gateways on a grid (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the scenario's seed (parks' blocks, every draw of a run)")
    p.add_argument("--hours", type=float, default=24.0, help="the scenario's duration (default 24)")
    p.add_argument("--name", default="generated-city", help="the scenario's name")
    p.add_argument("--out", type=Path, required=True, help="the scenario file to write (TOML)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from simulator.city_generator import CitySpec, GenerateError, generate
    from simulator.scenario import ScenarioError

    spec = CitySpec(
        streets=args.streets,
        lamps_per_street=args.lamps_per_street,
        parks=args.parks,
        zones_per_park=args.zones_per_park,
        gateways=args.gateways,
        seed=args.seed,
        hours=args.hours,
        name=args.name,
    )
    try:
        text, sc = generate(spec)
    except (GenerateError, ScenarioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return INVALID
    try:
        args.out.write_text(text)
    except OSError as e:
        print(f"error: {args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 1
    controllers, zones = spec.park_layout()
    note = f" (rounded up from {spec.zones_per_park})" if controllers * zones != spec.zones_per_park else ""
    print(
        f"{args.out}: {len(sc.lamps)} lamps on {len(sc.streets)} streets, {len(sc.controllers)} controllers "
        f"({sc.zones} zones, {controllers * zones} per park{note}) in {len(sc.parks)} parks, "
        f"{len(sc.gateways)} gateways"
    )
    return 0


# ---------------------------------------------------------------- lumeau sim compare


def add_compare_action(actions: Any) -> None:
    p = actions.add_parser(
        "compare",
        help="two runs' results side by side (delivery, savings, faults' effects, alarms, airtime)",
        description="Compare two results files (lumeau sim run --json, or a demo's results.json): "
        "one line per figure that matters, A, B and B - A, a * where they differ; "
        "optionally the percentages as a bar chart.",
    )
    p.add_argument("a", type=Path, metavar="A.json", help="the first run's results")
    p.add_argument("b", type=Path, metavar="B.json", help="the second run's results")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw the percentages side by side into this PNG")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from simulator.compare import CompareError, load_results, plot, table

    try:
        a, b = load_results(args.a), load_results(args.b)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return INVALID
    name_a, name_b = args.a.name, args.b.name
    if name_a == name_b:
        name_a, name_b = str(args.a), str(args.b)
    print(table(a, b, name_a, name_b))
    if args.plot is not None:
        try:
            args.plot.write_bytes(plot(a, b, name_a, name_b))
        except OSError as e:
            print(f"error: {args.plot}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"plot: {args.plot}")
    return 0


# ---------------------------------------------------------------- lumeau sim board


def _uart_arg(text: str) -> tuple[int, Path | None]:
    n, _, link = text.partition("=")
    try:
        num = int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N=PATH, got {text!r}") from None
    if not 1 <= num <= 9:
        raise argparse.ArgumentTypeError("UART numbers are 1..9 (UART0 is the REPL)")
    return num, Path(link) if link else None


def _size_arg(text: str) -> int:
    from simulator.board_host import BLOCK_SIZE

    units = {"k": 1024, "m": 1024 * 1024}
    t = text.strip().lower().removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        value = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 65536, 64k or 2m, got {text!r}") from None
    if value < 4 * BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"the filesystem needs at least {4 * BLOCK_SIZE} bytes")
    return value


def add_board_action(actions: Any) -> None:
    from simulator.board_host import DEFAULT_FS_SIZE, DEFAULT_HEAP, INTERRUPT_GRACE_S

    p = actions.add_parser(
        "board",
        help="a virtual MicroPython board on a pseudo-terminal (real MicroPython)",
        description="Open a pseudo-terminal that behaves like a MicroPython board on USB "
        "(raw REPL, raw paste, soft reset, boot.py/main.py), backed by real "
        "MicroPython with a filesystem kept in --dir.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("vboard"),
        help="host directory holding the board's filesystem (created if missing; default ./vboard)",
    )
    p.add_argument("--link", type=Path, help="also make this path a symlink to the pty (a stable port name)")
    p.add_argument(
        "--fs-size",
        type=_size_arg,
        default=DEFAULT_FS_SIZE,
        help=f"filesystem capacity, e.g. 64k or 2m (default {DEFAULT_FS_SIZE // 1024} KiB)",
    )
    p.add_argument(
        "--uart",
        type=_uart_arg,
        action="append",
        default=[],
        metavar="N[=PATH]",
        help="connect UART N (vboard.UART(N) on the board) to another pty, linked at PATH",
    )
    p.add_argument(
        "--corrupt",
        action="append",
        default=[],
        metavar="GLOB",
        help="flip one bit of every file matching GLOB (board path, e.g. 'lib/*.mpy') when written",
    )
    p.add_argument("--name", default="vboard", help="board name (machine.unique_id() derives from it)")
    p.add_argument("--heap", type=_size_arg, default=DEFAULT_HEAP, help="initial MicroPython heap")
    p.add_argument(
        "--control",
        type=Path,
        metavar="SOCKET",
        help="Unix socket to set the board's inputs and read its outputs (JSON lines, "
        'e.g. {"set": "adc", "pin": 35, "value": 1200} or {"get": "outputs"})',
    )
    p.add_argument(
        "--interrupt-grace",
        type=float,
        default=INTERRUPT_GRACE_S,
        metavar="SECONDS",
        help="hard-reset a program that ignores Ctrl-C this long (default %(default)g s)",
    )
    p.add_argument("--json", action="store_true", help="print the ready line as JSON (for scripts)")
    p.add_argument("-v", "--verbose", action="store_true", help="log resets and engine messages to stderr")
    p.set_defaults(func=cmd_board)


def cmd_board(args: argparse.Namespace) -> int:
    import logging

    from simulator.board import serve
    from simulator.board_host import BoardError, BoardOptions

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    opts = BoardOptions(
        flash_dir=args.dir.resolve(),
        fs_size=args.fs_size,
        link=args.link,
        uart_links=dict(args.uart),
        corrupt=args.corrupt,
        heap=args.heap,
        name=args.name,
        interrupt_grace_s=args.interrupt_grace,
        control=args.control,
    )
    try:
        return serve(opts, as_json=args.json)
    except BoardError as e:
        print(f"lumeau sim board: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- lumeau demo / lumeau sim demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    from simulator.demo import DEFAULT_SCENARIO
    from simulator.live import DEFAULT_SPEED

    p.add_argument(
        "scenario",
        nargs="?",
        default=str(DEFAULT_SCENARIO),
        help="scenario file (default: the district, simulator/scenarios/district.toml)",
    )
    p.add_argument(
        "--out",
        help="output directory: report, results, services' files (default: the scenario's [output] dir, "
        "out for the district)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        help=f"simulated seconds per real second at most (default {DEFAULT_SPEED:g}; 0: no cap)",
    )
    p.add_argument("--hours", type=float, help="run this long instead of the scenario's duration")
    p.add_argument(
        "--seed",
        type=int,
        help="another draw of the same district (the weather it does not script, people, radio, keys)",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip the HTML report and its plots (as [output] html = false in the scenario does)",
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="draw a progress bar on stderr (default: the scenario's [output] progress, when stderr is a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--strict", action="store_true", help="refuse to run a scenario with warnings (exit 2)")
    p.set_defaults(func=cmd_demo)


def add_demo_action(actions: Any) -> None:
    from simulator import demo as sim_demo

    p = actions.add_parser(
        "demo",
        help="the main job: a simulated district against a real gateway and sink",
        description=sim_demo.__doc__.split("\n\n")[0] if sim_demo.__doc__ else None,
    )
    add_demo_arguments(p)


def cmd_demo(args: argparse.Namespace) -> int:
    from simulator.demo import run_demo

    return run_demo(
        args.scenario,
        None if args.out is None else Path(args.out),
        speed=args.speed,
        hours=args.hours,
        seed=args.seed,
        report=False if args.no_report else None,
        progress=args.progress,
        strict=args.strict,
    )
