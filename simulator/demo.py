"""The main job (`make demo`, `lumeau demo`, `lumeau sim demo`): a simulated district against the real services.

    lumeau demo [SCENARIO.toml] [--out out] [--speed 2000] [--hours H] [--seed N] [--no-report]
                [--progress | --no-progress] [--strict]

What happens, in order:

1. the scenario is loaded (default: simulator/scenarios/district.toml, 60
   street lights and 12 irrigation zones on two gateways, 24 h, eight
   faults);
2. `lumeau sink` (the city platform) and a `lumeau gateway` process start,
   with their config, tokens, node registry (every simulated node and its
   key), databases and logs generated into the output directory;
3. the district runs live (simulator/live.py): every node is the real
   firmware on a virtual clock, the first gateway site is a radio bridge on
   a pseudo-terminal the gateway reads, the second a Semtech UDP packet
   forwarder, faults are injected on schedule (a lamp failing, a burst
   pipe, a valve stuck open, a leak, a node rebooting, a gateway site restarting, the platform
   going away for half an hour);
4. the services are stopped cleanly (SIGTERM, their exit statuses
   checked), and the figures are read back from the sink;
5. (before 3) a calendar event is written for the gateway to send: a named
   evening on the second street (simulator/demo_calendar.py), lights off
   around a light show; after the run, the lamps that took it (the
   gateway's log) and the energy it changed go into the summary and
   `results.json` (`calendar_event`);
6. the city platform's own ledger of the run is read back: `lumeau sink`
   again on the run's database, told the lamps' rated powers and the
   schedules, computes each local day from its records
   (simulator/demo_ledger.py); its kWh and m3 are set against the
   simulator's truth (2 % and 5 %), in the summary and in `results.json`
   (`platform_ledger`);
7. a summary is printed, and `report.html` (plots embedded, and as PNGs in
   `plots/`) and `results.json` (the same figures as `lumeau sim run
   --json`) are written to the output directory.

Exit status: 0 when the run completed (its verdicts are in the summary
and the report), 1 when it could not run (a service did not start, the
gateway could not keep up), 2 for a bad scenario or option.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "district.toml"


def _say(msg: str) -> None:
    print(msg, flush=True)


def live_summary(results: dict[str, Any]) -> str:
    """What only a live run has: the real services' side of the story."""
    gw = results.get("gateway", {})
    sink = gw.get("live_sink", {})
    handed = gw.get("live_handed_over", {})
    lines = [
        f"  gateway process: read {gw.get('received', 0):,} receptions "
        f"({', '.join(f'{n:,} over {t}' for t, n in sorted(handed.items()))}), stored {gw.get('accepted', 0):,} "
        f"frames, {gw.get('duplicates', 0):,} duplicates merged; {gw.get('downlinks_acks_sent', 0)} alarm ACKs sent, "
        f"{gw.get('downlinks_send_errors', 0)} downlinks refused",
        f"  city platform (lumeau sink): {sink.get('records', 0):,} records from {sink.get('nodes', 0)} nodes "
        f"in {sink.get('batches', 0)} batches, {sink.get('duplicates', 0)} resends dropped; "
        f"restarted {gw.get('live_sink_restarts', 0)} time(s) for the outage",
        "  pacing: "
        + (f"at most {gw['live_speed']:,.0f} x real time" if gw.get("live_speed") else "uncapped")
        + f"; {gw.get('live_holds', 0)} holds "
        f"before a receive window ({gw.get('live_holds_real_s', 0):.1f} s of real time; "
        f"{gw.get('live_holds_ended_by_gateway', 0)} ended by the gateway with nothing to send), "
        f"{gw.get('live_downlinks_late', 0)} downlinks too late, {gw.get('live_catch_ups', 0)} waits for the "
        f"gateway to read UDP ({gw.get('live_catch_up_real_s', 0):.1f} s)",
    ]
    return "\n".join(lines)


def _ledger(scenario: Any, out: Path, doc: dict[str, Any]) -> None:
    """The platform's own ledger of the run (simulator/demo_ledger.py) into `doc` and the summary."""
    from simulator.demo_ledger import agreement, platform_ledger, summary
    from simulator.services import ServiceError

    start = scenario.start_unix
    try:
        led = platform_ledger(scenario, out, start, start + float(doc["scenario"]["hours"]) * 3600.0)
    except (ServiceError, OSError, ValueError) as e:  # the run stands; say why its ledger is missing
        _say(f"  ledger: not computed: {e}")
        return
    agree = agreement(led, doc)
    doc["platform_ledger"] = {**led, "agreement": agree}
    _say(summary(led, agree))


def _residents(scenario: Any, out: Path, doc: dict[str, Any]) -> None:
    """Residents report faults to the platform (simulator/demo_residents.py): verdicts into `doc`."""
    from simulator.demo_residents import resident_reports, summary
    from simulator.services import ServiceError

    try:
        reports = resident_reports(scenario, out, float(doc["scenario"]["hours"]) * 3600.0)
    except (ServiceError, OSError, ValueError) as e:  # the run stands; say why the reports are missing
        _say(f"  residents' reports: not filed: {e}")
        return
    doc["resident_reports"] = reports
    _say(summary(reports))


def _calendar(scenario: Any, out: Path, doc: dict[str, Any], event: dict[str, Any]) -> None:
    """The calendar event: which lamps took it (the gateway's log), its energy effect, into `doc`."""
    from simulator.demo_calendar import event_report, summary

    try:
        r = event_report(scenario, out, event)
    except (OSError, ValueError, KeyError) as e:  # the run stands; say why the event's account is missing
        _say(f"  calendar event: not reported: {e}")
        return
    doc["calendar_event"] = r
    _say(summary(r))


def run_demo(
    scenario_path: str | Path = DEFAULT_SCENARIO,
    out: Path | None = None,
    *,
    speed: float | None = None,
    hours: float | None = None,
    seed: int | None = None,
    report: bool | None = None,
    progress: bool | None = None,
    strict: bool = False,
) -> int:
    """The main job (see the module docstring); its exit status. speed None: live.DEFAULT_SPEED, 0: no cap.

    None keeps the scenario's [output]: out its `dir`, report its `html`, progress its `progress`
    (a bar when stderr is a terminal). strict: refuse a scenario with warnings (exit 2).
    """
    from simulator.live import DEFAULT_SPEED, LiveGateway
    from simulator.report import write_report
    from simulator.run_warnings import scenario_warnings
    from simulator.runner import RunOptions, prepare, run
    from simulator.scenario import ScenarioError, load
    from simulator.services import ServiceError

    try:
        scenario = load(scenario_path)
    except (OSError, ScenarioError) as e:
        print(f"lumeau demo: {e}", file=sys.stderr)
        return 2
    if speed is None:
        speed = DEFAULT_SPEED
    if speed < 0 or (hours is not None and hours <= 0):
        print("lumeau demo: --speed must be >= 0 and --hours > 0", file=sys.stderr)
        return 2
    out = Path(scenario.output.dir if out is None else out)
    if report is None:
        report = scenario.output.html
    if progress is None and not scenario.output.progress:
        progress = False
    try:
        warns = scenario_warnings(prepare(scenario, RunOptions(seed=seed, hours=hours)))
    except ValueError as e:
        print(f"lumeau demo: {e}", file=sys.stderr)
        return 2
    if strict and warns:
        for w in warns:
            print(f"lumeau demo: {w['text']} [{w['code']}] (--strict)", file=sys.stderr)
        return 2
    link = LiveGateway(
        out,
        speed=speed or None,
        channels_mhz=tuple(f / 1e6 for f in scenario.radio.channels_hz),
        bw_hz=scenario.radio.params.bw_hz,
    )
    from simulator.demo_group import GroupProbe

    probe = GroupProbe.for_scenario(scenario)  # one group command to the first street, through the API
    if probe is not None:
        link.probes.append(probe)
    from simulator.demo_calendar import write_event

    event = write_event(scenario, out)  # the gateway sends it to a street's lamps (simulator/demo_calendar.py)
    _say(f"Lumeau demo: {scenario.name} ({scenario.description})")
    _say(
        f"  {len(scenario.lamps)} street lights, {len(scenario.controllers)} irrigation controllers "
        f"({scenario.zones} zones), {len(scenario.gateways)} gateways, {len(scenario.faults.faults)} faults; "
        f"services and their files in {out}/"
    )
    t0 = time.monotonic()
    try:
        results = run(scenario, RunOptions(seed=seed, hours=hours, progress=progress, link=lambda: link))
    except ServiceError as e:
        print(f"lumeau demo: {e}", file=sys.stderr)
        return 1
    codes = getattr(link, "exit_codes", {})
    _say(
        f"  services stopped: gateway exit {codes.get('gateway')}, sink exit {codes.get('sink')} "
        f"({time.monotonic() - t0:.0f} s in all)"
    )
    doc = results.to_dict()
    _say("")
    _say(results.summary())
    _say(live_summary(doc))
    if probe is not None:
        doc["group_command_live"] = probe.section()
        _say(probe.summary())
    _ledger(scenario, out, doc)
    _residents(scenario, out, doc)
    _calendar(scenario, out, doc, event)
    (out / "results.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    if report:
        path = write_report(doc, out, scenario)
        _say(f"\nReport: {path} (plots in {out / 'plots'}/), figures: {out / 'results.json'}")
    return 0
