"""The results of a simulated run: one object for `lumeau sim run --json` and the HTML report.

`Results.to_dict()` is the JSON (stable keys; plain numbers, strings, lists
and dicts); `Results.summary()` the text the CLI prints. Sections:

  scenario   name, file, description, seed, start, hours, node counts, gateways (with
             heights), the path-loss model and its parameters, SFs
  run        link used, wall and CPU seconds (all processes), simulated node-seconds per
             wall second, ticked apps, worker processes (simulator/parallel.py)
  delivery   uplinks put on the air (and refused by the channel: duty cycle, too long,
             busy), settled by the end, heard by a gateway, stored by the gateway;
             ratio = stored / settled, overall, per kind and per node
  latency_s  uplink end -> durable commit at the gateway: count, mean, p50, p95, p99,
             max, histogram (bin edges in s and counts)
  airtime    per node: seconds on the air and the share of its EU868 sub-band
             duty-cycle allowance over the run; max and mean share; `under_an_hour`
             (the duty cycle is judged over an hour: shorter runs' shares are flagged)
  frames     largest frame put on the air per message type (bytes, header and MIC
             included) against the 51-byte budget, frames over it
  alarms     per injected fault: the alarm it should raise (Fault.expected), whether
             the fault showed at all (`manifested`; a latent fault moved no water and lit
             no lamp, so no node could see it), the record that showed it at the gateway
             and how long after the fault; alarm-severity events stored with no fault
             behind them
  energy     the control's own saving (simulator/savings.py): kWh the lamps drew (the
             world's truth) and the always-full-power baseline over the lamp-time no
             fault affected, kWh and % saved, `coverage` (that time's share); the
             totals and the gross saving (`gross_saved_*`, faults included); kWh as
             the platform got it; `faults`: what failed lamps did (dark lamp-hours,
             kWh not drawn, kWh wasted)
  water      likewise: m3 applied to turf against the fixed-schedule baseline over the
             zone-time no fault affected, m3 and % saved, coverage, turf stress
             zone-hours of the control and of the baseline; m3 through the meters
             (leaks and bursts included), applied to turf, gross saving, m3 as the
             platform got it; `faults`: water lost (leaks, bursts), water the
             affected zones did not get against the schedule, their stress hours
  days       per weather day: ET0, rain, Tmin/Tmax, night length, soil water at the
             start and end (share of the available water, mean over zones), stress
  totals     the gateway's and the platform's totals against the nodes' own counters:
             uplinks (nodes' tx counters, on the air, heard, stored), energy Wh and
             water L (platform's last value per node = the value in the node's own
             frame with that counter), and the nodes' meters at the end; `truth`: both
             against the world's true meters (truth_check): nodes the platform stopped
             hearing (`not_heard`, which make `agree` false), nodes' meters off the truth
             (`meters_off`), the platform's share of the true energy and water
  warnings   what the models and nodes cannot answer for (simulator/run_warnings.py):
             [{"code", "text"}]
  spread     only with `--seeds N`: mean, std, min, max and per-seed values of each
             saving over the seeds (spread_section); the rest is the first seed's run
  gateway    the link's counters (accepted, duplicates, rejected by reason, downlinks,
             restarts), records delivered upstream, queued at the end, most queued
  channel    the channel's own counts (simulator/channel.py `counts`)
  clock      the nodes' wall clocks (simulator/clock_watch.py): crystal drift drawn per node, the
             largest |clock error| after each node's first TIME (exact: the error is
             linear between settings, so its extremes are just before a setting, at a
             reboot and at the end), reboots that lost the clock and the time from each
             to the clock set again and to the profile back (the app's next tick with
             time), the uplinks the node sent till then, TIME downlinks the gateway
             sent and TIMEs the nodes took; null in a parallel run
  series     hourly: uplinks on the air and stored, energy and baseline (Wh),
             water (L); for plots

Ratios are fractions (0..1) with a `_pct` twin where a person reads a
percentage. Times are seconds; energy kWh or Wh, water m3 or L as named.

One file (over 600 lines): every section is built from the same run objects in
one pass (build); the clock and ADR sections live in clock_watch.py and adr_results.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import expand, frame, lora
from protocol import messages as m
from simulator import adr_results, group_delivery, update_delivery

FRAME_BUDGET = lora.max_payload(12)  # 51 bytes: the smallest EU868 payload budget
LATENCY_BINS_S = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of values already sorted (p in 0..100); 0 for none."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


@dataclass
class Results:
    sections: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.sections

    def __getitem__(self, key: str) -> Any:
        return self.sections[key]

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.sections, indent=indent, sort_keys=False)

    def without_wall_clock(self) -> dict[str, Any]:
        """Everything but what depends on the machine (for comparing runs of one seed)."""
        d = json.loads(json.dumps(self.sections))
        d.pop("run", None)
        return d

    def summary(self) -> str:
        s = self.sections
        sc, run, dv, lat, air, fr_, al, en, wa, to = (
            s["scenario"],
            s["run"],
            s["delivery"],
            s["latency_s"],
            s["airtime"],
            s["frames"],
            s["alarms"],
            s["energy"],
            s["water"],
            s["totals"],
        )
        lines = [
            f"{sc['name']}: {sc['lamps']} lamps, {sc['controllers']} irrigation controllers ({sc['zones']} zones), "
            f"{len(sc['gateways'])} gateways, {sc['hours']:g} h from {sc['start']} (seed {sc['seed']})",
            f"  run: {run['wall_s']:.1f} s wall, "
            f"{run['node_seconds_per_wall_s']:,.0f} node-s per s ({run['link']} gateway)",
            f"  delivery: {dv['stored']}/{dv['settled']} uplinks stored = {dv['ratio_pct']:.2f} % "
            f"(lost on the air {dv['lost_on_air']}, refused by the channel {sum(dv['refused'].values())})",
            f"  latency (uplink end -> stored): p50 {lat['p50']:.3f} s, p95 {lat['p95']:.3f} s, max {lat['max']:.3f} s",
            f"  airtime: at most {air['max_share_of_limit_pct']:.1f} % of a node's duty-cycle limit "
            f"(mean {air['mean_share_of_limit_pct']:.2f} %)"
            + (" -- over less than an hour: not the duty cycle's hourly measure" if air.get("under_an_hour") else ""),
            "  largest frames: "
            + ", ".join(f"{k} {v} B" for k, v in fr_["largest"].items())
            + f" (budget {fr_['budget']} B, over it: {fr_['over_budget']})",
            f"  alarms: {al['detected']}/{al['expected']} injected faults raised their alarm at the gateway"
            + (f" ({al['latent']} latent)" if al["latent"] else "")
            + (f", {len(al['unexpected'])} other alarms" if al["unexpected"] else ""),
        ]
        for f in al["faults"]:
            what = (
                "no alarm expected"
                if f["expected"] is None
                else (
                    f"{f['expected']}: "
                    + (
                        f"stored {f['delay_s']:.0f} s later"
                        if f["detected"]
                        else "NOT SEEN"
                        if f["manifested"]
                        else f"latent: {f['latent_reason']}"
                    )
                )
            )
            lines.append(f"    {f['kind']} {f['target']} at {f['at_h']:g} h -> {what}")
        ck = s.get("clock")
        if ck:
            lines.append(
                f"  clock: at most {ck['max_error_s']:.3f} s off after the first sync; "
                f"{ck['time_downlinks_sent']} TIME downlinks sent"
                + (
                    f"; profile back {ck['reboot_to_profile_s']:.1f} s after a reboot that lost the clock"
                    if ck["reboot_to_profile_s"] is not None
                    else ""
                )
                + (f"; NEVER restored: {', '.join(ck['never_restored'])}" if ck["never_restored"] else "")
            )
        ef, wf = en["faults"], wa["faults"]
        lines += [
            f"  energy: {en['saved_kwh']:.1f} kWh saved by the control ({en['saved_pct']:.1f} %): "
            f"{en['kwh']:.1f} kWh against {en['baseline_kwh']:.1f} kWh at full power all night"
            + (
                f", over the {100 * en['coverage']:.1f} % of lamp-night no fault affected"
                if ef["lamps_affected"]
                else ""
            ),
            f"  water: {wa['saved_m3']:.2f} m3 saved by the control ({wa['saved_pct']:.1f} %): "
            f"{wa['m3']:.2f} m3 against {wa['baseline_m3']:.2f} m3 on the fixed schedule"
            + (
                f", over the {100 * wa['coverage']:.1f} % of zone-time no fault affected"
                if wf["zones_affected"]
                else ""
            )
            + f"; turf stressed {wa['stress_zone_hours']:.1f} zone-h "
            f"(schedule: {wa['baseline_stress_zone_hours']:.1f})",
        ]
        if ef["lamps_affected"] or wf["zones_affected"] or wf["lost_m3"] > 0:
            lines.append(
                "  value destroyed by faults (not savings): "
                f"{ef['dark_lamp_hours']:.1f} dark lamp-h ({ef['lamps_affected']} lamps; "
                f"{ef['not_drawn_kwh']:.1f} kWh not drawn, {ef['wasted_kwh']:.1f} kWh wasted); "
                f"{wf['lost_m3']:.2f} m3 lost to leaks and bursts; "
                f"{wf['not_delivered_m3']:.2f} m3 the schedule would have given {wf['zones_affected']} affected zones "
                f"and they did not get; {wf['stress_zone_hours']:.1f} zone-h of turf stress while affected"
            )
            lines.append(
                f"  gross (faults included): energy {en['gross_saved_pct']:.1f} %, water {wa['gross_saved_pct']:.1f} %"
            )
        lines += totals_lines(to)
        a = s.get("adr")
        if a is not None:
            hist = lambda d: ", ".join(f"{k} x{v}" for k, v in d.items())  # noqa: E731
            lines.append(
                f"  adr: {hist(a['sf_before'])} -> {hist(a['sf_after'])}; airtime saved {a['airtime_saved_pct']:.1f} %"
                f"; DER {a['der']:.3f} (first quarter {a['der_first_quarter']}, last {a['der_last_quarter']})"
            )
        if s.get("battery"):
            from simulator.energy import lines as battery_lines

            lines += battery_lines(s["battery"])
        gc = s.get("group_command")
        if gc is not None:
            lines += group_delivery.summary_lines(gc)
        up = s.get("update")
        if up is not None:
            lines += update_delivery.summary_lines(up)
        sp = s.get("spread")
        if sp:
            lines += spread_lines(sp)
        lines += [f"  warning: {w['text']} [{w['code']}]" for w in s.get("warnings") or []]
        return "\n".join(lines)


def totals_lines(to: dict[str, Any]) -> list[str]:
    """The totals verdict: the platform against the nodes' counters and against the true meters."""
    e, w = to["energy_wh"], to["water_l"]
    tr = to.get("truth")
    line = (
        f"  totals: platform {e['platform']:,} Wh / {w['platform']:,} L = nodes' own {e['nodes']:,} Wh / "
        f"{w['nodes']:,} L in the same frames"
    )
    if tr is not None:
        line += (
            f"; true meters {tr['energy_wh']['truth']:,.0f} Wh / {tr['water_l']['truth']:,.0f} L "
            f"(platform has {100 * tr['platform_share_energy']:.1f} % / {100 * tr['platform_share_water']:.1f} %)"
        )
    out = [line + ": " + ("agree" if to["agree"] else "DISAGREE")]
    if tr is not None:
        for o in tr["not_heard"][:5]:
            out.append(f"    {o['node']}: {o['why']} ({o['truth']:,} true, {o['platform']:,} at the platform)")
        if len(tr["not_heard"]) > 5:
            out.append(f"    ... {len(tr['not_heard'])} nodes in all")
        if tr["meters_off"]:
            out.append(
                f"    nodes' meters off the truth on {len(tr['meters_off'])} node(s): "
                + ", ".join(f"{o['node']} {o['node_meter']:,} for {o['truth']:,}" for o in tr["meters_off"][:5])
                + " (a reboot loses what was not yet saved; a cycling lamp is metered at the node's tick)"
            )
    return out


SPREAD_FIGURES = (
    ("energy.saved_pct", "energy saved by the control, %"),
    ("water.saved_pct", "water saved by the control, %"),
    ("energy.gross_saved_pct", "energy saved, gross, %"),
    ("water.gross_saved_pct", "water saved, gross, %"),
    ("water.stress_zone_hours", "turf stress, zone-h"),
    ("water.baseline_stress_zone_hours", "turf stress on the schedule, zone-h"),
    ("delivery.ratio_pct", "uplinks stored, %"),
)


def spread_section(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of each SPREAD_FIGURES over runs of several seeds."""
    figures = {}
    for path, label in SPREAD_FIGURES:
        vals = []
        for r in runs:
            v: Any = r
            for k in path.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, (int, float)):
                vals.append(float(v))
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        figures[path] = {
            "label": label,
            "mean": mean,
            "std": sd,
            "min": min(vals),
            "max": max(vals),
            "values": vals,
        }
    return {"seeds": [r["scenario"]["seed"] for r in runs], "figures": figures}


def spread_lines(sp: dict[str, Any]) -> list[str]:
    out = [f"  over {len(sp['seeds'])} seeds ({', '.join(str(x) for x in sp['seeds'])}): mean +- std [min .. max]"]
    for f in sp["figures"].values():
        out.append(f"    {f['label']}: {f['mean']:.1f} +- {f['std']:.1f} [{f['min']:.1f} .. {f['max']:.1f}]")
    return out


# ---------------------------------------------------------------- building the sections


def latency_section(latencies: Sequence[float]) -> dict[str, Any]:
    v = sorted(latencies)
    counts = [0] * (len(LATENCY_BINS_S) - 1)
    over = 0
    for x in v:
        placed = False
        for i in range(len(counts)):
            if LATENCY_BINS_S[i] <= x < LATENCY_BINS_S[i + 1]:
                counts[i] += 1
                placed = True
                break
        if not placed:
            over += 1
    return {
        "count": len(v),
        "mean": sum(v) / len(v) if v else 0.0,
        "p50": percentile(v, 50),
        "p95": percentile(v, 95),
        "p99": percentile(v, 99),
        "max": float(v[-1]) if v else 0.0,
        "histogram": {"edges_s": list(LATENCY_BINS_S), "counts": counts, "over": over},
    }


def frame_fields(raw: bytes) -> tuple[int, dict[int, Any]] | None:
    """(mtype, body) of a plaintext uplink frame, None if it cannot be read without keys."""
    try:
        f = frame.parse(raw)
        if f.encrypted:
            return None
        return f.mtype, m.decode(f.mtype, raw[frame.HEADER_LEN : -frame.MIC_LEN])
    except (frame.FrameError, m.MessageError):
        return None


def type_name(mtype: int) -> str:
    return expand.TYPE_NAMES.get(mtype, f"type{mtype}")


def event_name(code: int) -> str:
    return expand.ENUMS[(m.EVENT, 0)].get(code, str(code))


def reset_name(cause: int) -> str:
    return expand.ENUMS[(m.HELLO, 4)].get(cause, str(cause))


def expected_name(expected: tuple[str, int] | None) -> str | None:
    if expected is None:
        return None
    kind, code = expected
    return f"event {event_name(code)}" if kind == "event" else f"hello reset_cause {reset_name(code)}"


# ---------------------------------------------------------------- the whole results object


def build(
    sim: Any, report: Any, counters: dict[str, dict[str, int]], meters: dict[str, int], wall_s: float, cpu_s: float
) -> Results:
    """Results of a finished simulator.engine.Simulation and its link's GatewayReport."""
    from simulator.baseline import lighting_baseline
    from simulator.run_warnings import scenario_warnings
    from simulator.savings import days_section, energy_section, water_section

    sc = sim.sc
    air = sim.air
    channel = sim.channel
    start, end = sc.start_unix, sc.end_unix
    hours = sc.duration_s / 3600.0
    nodes = sim.nodes
    by_id = sim.by_id

    # what the gateway stored, first copy per frame
    stored = report.stored
    stored_keys = {(r.node_id, r.counter) for r in stored}
    per_node_stored: dict[int, int] = {}
    for r in stored:
        per_node_stored[r.node_id] = per_node_stored.get(r.node_id, 0) + 1

    # -- delivery
    refused: dict[str, int] = {}
    on_air = settled = heard = 0
    by_kind: dict[str, dict[str, int]] = {
        "lighting": {"settled": 0, "stored": 0},
        "irrigation": {"settled": 0, "stored": 0},
    }
    per_node = []
    for name, sn in nodes.items():
        st = air.nodes.get(sn.spec.node_id)
        if st is None:
            continue
        for k, v in st.refused.items():
            refused[k] = refused.get(k, 0) + v
        on_air += st.uplinks
        s_settled = st.delivered + st.lost
        settled += s_settled
        heard += st.delivered
        n_stored = per_node_stored.get(sn.spec.node_id, 0)
        by_kind[sn.spec.kind]["settled"] += s_settled
        by_kind[sn.spec.kind]["stored"] += n_stored
        per_node.append(
            {
                "node": name,
                "kind": sn.spec.kind,
                "sf": sn.spec.sf,
                "uplinks": s_settled,
                "stored": n_stored,
                "ratio": round(ratio(n_stored, s_settled), 6),
            }
        )
    n_stored_all = len(stored_keys)
    delivery = {
        "on_air": on_air,
        "settled": settled,
        "in_flight_at_end": on_air - settled,
        "heard": heard,
        "stored": n_stored_all,
        "lost_on_air": settled - heard,
        "refused": dict(sorted(refused.items())),
        "ratio": ratio(n_stored_all, settled),
        "ratio_pct": 100.0 * ratio(n_stored_all, settled),
        "by_kind": {k: {**v, "ratio": ratio(v["stored"], v["settled"])} for k, v in by_kind.items()},
        "by_node": per_node,
    }

    # -- latency
    latency = latency_section([r.stored_at - r.rx_time for r in stored])

    # -- airtime
    dur = sc.duration_s
    shares = []
    air_nodes = []
    for name, sn in nodes.items():
        inv = lora.BANDS[sn.radio.band][2]
        used_s = channel.airtime_used_ms(sn.spec.node_id) / 1000.0
        share = used_s / (dur / inv) if dur else 0.0
        shares.append(share)
        air_nodes.append(
            {
                "node": name,
                "kind": sn.spec.kind,
                "sf": sn.spec.sf,
                "airtime_s": round(used_s, 6),
                "share_of_limit": round(share, 6),
            }
        )
    airtime = {
        "duty_cycle": {
            lora.BANDS[b][3]: 1.0 / lora.BANDS[b][2] for b in sorted({sn.radio.band for sn in nodes.values()})
        },
        "max_share_of_limit": max(shares, default=0.0),
        "max_share_of_limit_pct": 100.0 * max(shares, default=0.0),
        "mean_share_of_limit": sum(shares) / len(shares) if shares else 0.0,
        "mean_share_of_limit_pct": 100.0 * (sum(shares) / len(shares) if shares else 0.0),
        "total_s": sum(n["airtime_s"] for n in air_nodes),
        # EU868 duty cycle is judged over an hour (ETSI EN 300 220-1): shorter runs' shares are flagged
        "under_an_hour": dur < 3600.0,
        "per_node": air_nodes,
    }

    # -- frames
    over = sum(1 for st in air.nodes.values() for _c, _t, n in st.frames if n > FRAME_BUDGET)
    frames = {
        "budget": FRAME_BUDGET,
        "largest": {type_name(t): n for t, n in sorted(air.largest.items())},
        "over_budget": over,
    }

    # -- alarms
    alarms = alarms_section(sc, stored, by_id, start, sim.fault_shown)

    # -- energy and water
    world = sim.world
    lb = lighting_baseline(sc.lamps, start, end)
    platform = platform_totals(report, by_id)
    accounts = world.accounts()
    energy = energy_section(sc, accounts, world.energy_wh() / 1000.0, lb, platform["energy_wh"] / 1000.0)
    water = water_section(sc, accounts, world.weather, world.water_l(), world.applied_l(), platform["water_l"])
    days = days_section(sc, accounts, world.weather)

    # -- totals: the gateway and the platform against the nodes' own counters
    own = node_side_totals(air, platform["last"], by_id)
    node_tx = sum(c["tx"] for c in counters.values())
    uplinks = {
        "nodes_tx": node_tx,
        "on_air": on_air,
        "settled": settled,
        "heard": heard,
        "stored": n_stored_all,
        "at_platform": report.delivered_upstream,
        "queued_at_end": report.queued_at_end,
    }
    stored_ok = n_stored_all == heard
    energy_t = {
        "platform": platform["energy_wh"],
        "nodes": own["energy_wh"],
        "nodes_meters_at_end": sum(v for k, v in meters.items() if nodes[k].spec.kind == "lighting"),
    }
    water_t = {
        "platform": platform["water_l"],
        "nodes": own["water_l"],
        "nodes_meters_at_end": sum(v for k, v in meters.items() if nodes[k].spec.kind == "irrigation"),
    }
    totals = {
        "uplinks": uplinks,
        "energy_wh": energy_t,
        "water_l": water_t,
        "stored_equals_heard": stored_ok,
        "platform_equals_nodes": energy_t["platform"] == energy_t["nodes"] and water_t["platform"] == water_t["nodes"],
        "mismatches": own["mismatches"],
    }
    truth = truth_check(sc, world.truth_by_node(), meters, platform["last"], stored, by_id)
    totals["truth"] = truth
    totals["agree"] = (
        totals["platform_equals_nodes"] and stored_ok and not own["mismatches"] and truth["platform_covers_truth"]
    )

    # -- series
    baseline_series = []
    for h in sim.hourly:
        t1 = start + h["t_h"] * 3600.0
        baseline_series.append(lighting_baseline(sc.lamps, start, t1).kwh * 1000.0)
    series = {
        "t_h": [h["t_h"] for h in sim.hourly],
        "energy_wh": [round(h["energy_wh"], 3) for h in sim.hourly],
        "baseline_energy_wh": [round(v, 3) for v in baseline_series],
        "water_l": [round(h["water_l"], 3) for h in sim.hourly],
        "uplinks": [h["uplinks"] for h in sim.hourly],
        "settled": [h["settled"] for h in sim.hourly],
        "stored": _cumulative_by_hour(stored, start, [h["t_h"] for h in sim.hourly]),
    }

    n_nodes = len(nodes)
    sfs: dict[str, int] = {}
    for sn in nodes.values():
        sfs[f"SF{sn.spec.sf}"] = sfs.get(f"SF{sn.spec.sf}", 0) + 1
    sections = {
        "scenario": {
            "name": sc.name,
            "file": sc.file,
            "description": sc.description,
            "seed": sc.seed,
            "start": sc.start.isoformat(),
            "hours": hours,
            "lamps": len(sc.lamps),
            "controllers": len(sc.controllers),
            "zones": sc.zones,
            "gateways": [{"id": g.id, "x": g.x, "y": g.y, "height_m": g.height_m} for g in sc.gateways],
            "path_loss": path_loss_section(sc.radio.params.path_loss),
            "sf": dict(sorted(sfs.items())),
            "nodes_scale": sim.options.nodes_scale,
        },
        "run": {
            "link": report.link,
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "nodes": n_nodes,
            "node_seconds": n_nodes * sc.duration_s,
            "node_seconds_per_wall_s": n_nodes * sc.duration_s / wall_s if wall_s > 0 else 0.0,
            "ticked_apps": sim.options.ticked_apps,
            "auto_time": sim.options.auto_time and sim.options.link is None,
            "workers": 1,
            "crashed_nodes": list(sim.crashes),
        },
        "delivery": delivery,
        "latency_s": latency,
        "airtime": airtime,
        "frames": frames,
        "alarms": alarms,
        "energy": energy,
        "water": water,
        "totals": totals,
        "days": days,
        "warnings": scenario_warnings(sc),
        "gateway": {
            **report.counters,
            "delivered_upstream": report.delivered_upstream,
            "queued_at_end": report.queued_at_end,
            "queue_max": report.queue_max,
            "log_warnings": dict(sorted(getattr(getattr(sim, "log_counts", None), "counts", {}).items())),
        },
        "nodes": {"counters": _sum_counters(counters), "reboots": sum(sn.boots - 1 for sn in nodes.values())},
        "channel": dict(sorted(channel.counts.items())),
        "clock": None,
        "series": series,
    }
    if sc.battery is not None:
        sections["battery"] = battery_section(sim)
    watch = getattr(sim, "clock_watch", None)
    if watch is not None:
        sections["clock"] = watch.section(report.counters)
    if sc.adr is not None:
        sections["adr"] = adr_results.section(sim, report, series)
    if sc.group_command is not None:
        sections["group_command"] = group_delivery.simulate(sc.group_command)
    if sc.update is not None:
        sections["update"] = update_delivery.simulate(sc.update)
    return Results(sections)


def battery_inputs(sn: Any) -> tuple[int, float, int, bool, int]:
    """What the energy model needs of a controller that only its process knows: watering runs,
    seconds a valve was open, valve moves, a flow meter fitted, its receive window (ms)."""
    w = sn.world
    flow = bool(json.loads(sn.cfg_bytes)["irrigation"].get("flow_meter", 1))
    return (w.runs, w.valve_open_s(), w.valve_moves, flow, sn.radio.rx_window_ms())


def battery_section(sim: Any) -> dict[str, Any]:
    """Battery irrigation controllers: mAh per day and projected life (simulator/energy.py)."""
    from simulator import energy

    sc = sim.sc
    acts = {}
    tx_dbm = float(sc.radio.params.tx_power_dbm)
    for name, sn in sim.nodes.items():
        if sn.spec.kind != "irrigation":
            continue
        # a parallel run's workers send these (simulator/parallel.py); else the node is here
        runs, open_s, moves, flow, rx_ms = getattr(sn, "battery_inputs", None) or battery_inputs(sn)
        st = sim.air.nodes.get(sn.spec.node_id)
        acts[name] = energy.Activity(
            seconds=sc.duration_s,
            uplinks=st.uplinks if st is not None else 0,
            airtime_s=sim.channel.airtime_used_ms(sn.spec.node_id) / 1000.0,
            rx_window_s=rx_ms / 1000.0,
            runs=runs,
            open_s=open_s,
            valve_moves=moves,
            flow_meter=flow,
            tx_power_dbm=tx_dbm,
        )
    b = energy.section(acts, sc.battery)
    b["figures"]["tx_ma_at_power"] = {"dbm": tx_dbm, "ma": round(energy.tx_ma(tx_dbm), 1)}
    return b


def path_loss_section(model: Any) -> dict[str, Any]:
    """The run's path-loss model by name and parameters (what the report says the radio figures rest on)."""
    if type(model).__name__ == "HataUrban":
        return {"model": "hata", "freq_mhz": model.freq_mhz}
    return {"model": "log_distance", "d0_m": model.d0_m, "pl_d0_db": model.pl_d0_db, "gamma": model.gamma}


def _sum_counters(counters: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counters.values():
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _cumulative_by_hour(stored: Sequence[Any], start: float, hours: Sequence[float]) -> list[int]:
    times = sorted(r.rx_time for r in stored)
    out = []
    i = 0
    for h in hours:
        t = start + h * 3600.0
        while i < len(times) and times[i] <= t:
            i += 1
        out.append(i)
    return out


def latent_reason(f: Any) -> str:
    """Why a fault that never showed had nothing for a node to see (Fault.shows_when, physics)."""
    cond = f.shows_when
    if cond is None:  # pragma: no cover - world.py counts these as shown whenever they are active
        return "it never had any physical effect"
    return f"it never showed: it needs {cond}, which did not happen while it lasted"


def alarms_section(
    sc: Any, stored: Sequence[Any], by_id: dict[int, Any], start: float, shown: dict[int, bool] | None = None
) -> dict[str, Any]:
    """Each injected fault against the records the gateway stored; alarms with no fault behind them.

    `shown` says, per fault index, whether the fault had any physical effect
    (simulator/world.py): a burst in a zone that never watered afterwards, or
    a lamp that failed while it was meant to be off, shows nothing a node
    could see. Such a fault is `latent`: listed, not expected to raise its
    alarm, not counted against detection.
    """
    by_name = {sn.spec.name: nid for nid, sn in by_id.items()}
    faults = []
    explained: set[tuple[int, int]] = set()  # (node, counter) of records matched to a fault
    for f in sc.faults:
        exp = f.expected
        at = start + f.at_s
        manifested = None if exp is None else (shown or {}).get(f.index, True)
        entry = {
            "index": f.index,
            "kind": f.kind,
            "target": f.target,
            "at_h": round(f.at_s / 3600.0, 6),
            "params": dict(f.params),
            "expected": expected_name(exp),
            "manifested": manifested,
            "latent_reason": latent_reason(f) if manifested is False else None,
            "detected": False,
            "delay_s": None,
            "node_time_delay_s": None,
        }
        nid = by_name.get(f.target)
        if exp is not None and nid is not None:
            kind, code = exp
            for r in stored:
                if r.node_id != nid or r.rx_time < at:
                    continue
                hit = (kind == "event" and r.mtype == m.EVENT and r.body.get(0) == code and r.body.get(4, 1) == 1) or (
                    kind == "hello" and r.mtype == m.HELLO and r.body.get(4) == code
                )
                if hit:
                    entry["detected"] = True
                    entry["delay_s"] = r.stored_at - at
                    if kind == "event" and 3 in r.body:
                        entry["node_time_delay_s"] = r.body[3] - at
                    explained.add((r.node_id, r.counter))
                    break
        faults.append(entry)
    # alarm-severity events stored; resends of one event (same node and body) count once
    seen: set[tuple[int, bytes]] = set()
    raised: dict[str, int] = {}
    unexpected = []
    fault_nodes = {by_name.get(f.target) for f in sc.faults}
    for r in stored:
        if r.mtype != m.EVENT or r.body.get(1, 0) < m.SEV_ALARM:
            continue
        key = (r.node_id, repr(sorted(r.body.items())).encode())
        if key in seen:
            continue
        seen.add(key)
        name = event_name(r.body.get(0))
        state = "raised" if r.body.get(4, 1) else "cleared"
        raised[f"{name} {state}"] = raised.get(f"{name} {state}", 0) + 1
        if r.body.get(4, 1) and r.node_id not in fault_nodes:
            sn = by_id.get(r.node_id)
            unexpected.append(
                {
                    "node": sn.spec.name if sn else f"{r.node_id:08x}",
                    "event": name,
                    "at_h": round((r.rx_time - start) / 3600.0, 6),
                    "value": r.body.get(2),
                }
            )
    expected_n = sum(1 for f in faults if f["expected"] is not None and f["manifested"])
    return {
        "faults": faults,
        "expected": expected_n,
        "detected": sum(1 for f in faults if f["detected"] and f["manifested"]),
        "latent": sum(1 for f in faults if f["expected"] is not None and not f["manifested"]),
        "raised": dict(sorted(raised.items())),
        "unexpected": unexpected,
    }


def platform_totals(report: Any, by_id: dict[int, Any]) -> dict[str, Any]:
    """What the platform (the upstream's receiver) knows: each node's last energy / volume, by name."""
    last: dict[int, tuple[int, int, float]] = {}  # node -> (counter, mtype, value)
    for rec in report.sink:
        fields = rec.fields
        if rec.mtype == m.LIGHT and "energy" in fields:
            last[rec.node_id] = (rec.counter, rec.mtype, fields["energy"]["value"])
        elif rec.mtype == m.IRRIGATION and "volume" in fields:
            last[rec.node_id] = (rec.counter, rec.mtype, fields["volume"]["value"])
    wh = sum(v for nid, (_c, t, v) in last.items() if t == m.LIGHT)
    litres = sum(v for nid, (_c, t, v) in last.items() if t == m.IRRIGATION)
    return {"energy_wh": wh, "water_l": litres, "last": last}


TRUTH_SLACK_REPORTS = 2  # a node's last record may be this many report intervals old at the end


def truth_check(
    sc: Any,
    truth: dict[str, float],
    meters: dict[str, int],
    last: dict[int, tuple[int, int, float]],
    stored: Sequence[Any],
    by_id: dict[int, Any],
) -> dict[str, Any]:
    """The platform's and the nodes' meters against what really flowed and was drawn (the world's meters).

    Two checks per node. `not_heard`: the platform's last value may lag the
    node's meter only by what flowed since the node's last record reached it,
    and that record must be at most TRUTH_SLACK_REPORTS report intervals old
    at the end; a node the platform stopped hearing (a gateway out of range)
    fails, whatever its counters say ("0 L = 0 L" while 42 m3 flowed), and so
    does `agree`. `meters_off`: the node's own meter at the end against the
    truth, beyond its unit (1 Wh or 1 L, plus 1 % for a lamp, whose meter
    integrates the measured current at its own tick, and 0.1 % for a flow
    meter's pulses): a reboot loses what the node had not yet saved, a
    cycling lamp is metered at the node's tick. Reported apart
    (`meters_agree`): the platform cannot know better than the node's meter.
    """
    when = {(r.node_id, r.counter): r.rx_time for r in stored}
    ids = {sn.spec.name: nid for nid, sn in by_id.items()}
    not_heard: list[dict[str, Any]] = []
    meters_off: list[dict[str, Any]] = []
    sums = {"lighting": [0.0, 0.0, 0.0], "irrigation": [0.0, 0.0, 0.0]}  # truth, nodes' meters, platform
    for spec in sc.nodes:
        name = spec.name
        if name not in truth or name not in ids:
            continue
        kind = spec.kind
        interval = (sc.lighting if kind == "lighting" else sc.irrigation).report_interval_s
        true_v = truth[name]
        own = meters.get(name, 0)
        got = last.get(ids[name])
        plat = got[2] if got else 0
        seen = when.get((ids[name], got[0])) if got else None
        age = None if seen is None else sc.end_unix - seen
        sums[kind][0] += true_v
        sums[kind][1] += own
        sums[kind][2] += plat
        slack = 1.0 + (0.01 if kind == "lighting" else 0.001) * true_v
        if abs(own - true_v) > slack:
            meters_off.append({"node": name, "kind": kind, "truth": round(true_v, 1), "node_meter": own})
        if true_v >= 1.0 and (age is None or age > TRUTH_SLACK_REPORTS * interval):
            why = (
                "nothing reached the platform"
                if age is None
                else f"its last record reached the platform {age / 3600.0:.1f} h before the end"
            )
            not_heard.append({"node": name, "kind": kind, "truth": round(true_v, 1), "platform": plat, "why": why})
    return {
        "energy_wh": {"truth": round(sums["lighting"][0], 1), "nodes_meters": int(sums["lighting"][1])},
        "water_l": {"truth": round(sums["irrigation"][0], 1), "nodes_meters": int(sums["irrigation"][1])},
        "platform_share_energy": ratio(sums["lighting"][2], sums["lighting"][0]),
        "platform_share_water": ratio(sums["irrigation"][2], sums["irrigation"][0]),
        "not_heard": not_heard,
        "platform_covers_truth": not not_heard,
        "meters_off": meters_off,
        "meters_agree": not meters_off,
    }


def node_side_totals(air: Any, last: dict[int, tuple[int, int, float]], by_id: dict[int, Any]) -> dict[str, Any]:
    """The nodes' own values in the very frames whose counters the platform holds last."""
    wh = 0
    litres = 0
    mismatches = []
    for nid, (counter, mtype, value) in last.items():
        st = air.nodes.get(nid)
        raw = st.reports.get(counter) if st is not None else None
        got = frame_fields(raw) if raw is not None else None
        if got is None or got[0] != mtype:
            mismatches.append({"node": by_id[nid].spec.name, "counter": counter, "why": "no such frame sent"})
            continue
        own = got[1].get(2 if mtype == m.LIGHT else 3)
        if own is None:
            mismatches.append({"node": by_id[nid].spec.name, "counter": counter, "why": "no meter in the frame"})
            continue
        if mtype == m.LIGHT:
            wh += own
        else:
            litres += own
        if own != value:
            mismatches.append(
                {"node": by_id[nid].spec.name, "counter": counter, "node_value": own, "platform_value": value}
            )
    return {"energy_wh": wh, "water_l": litres, "mismatches": mismatches}
