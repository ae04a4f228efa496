"""The simulation report: one results object (simulator/metrics.py) -> out/report.html with PNG plots.

    path = write_report(results.to_dict(), Path("out"), scenario)

Writes `report.html` (self-contained: every plot is embedded as a PNG data
URI, so the one file can be mailed or attached to a ticket) and the same
plots as files in `plots/` next to it (`map.png`, `energy.png`,
`water.png`, `delivery.png`, `latency.png`, `airtime.png`, `frames.png`,
`alarms.png`). Matplotlib with the Agg backend: no display needed.

What it shows, top to bottom: the public value as a headline -- the
control's own saving (simulator/savings.py: kWh and % saved against lamps
at full power all night, m3 and % saved against the fixed watering
schedule, over the node-time no fault affected) -- the health figures (delivery, alarms detected,
largest frame, totals agreeing), the district map with gateways, lamps,
irrigation controllers and each injected fault with its outcome, then one
plot per question (delivery ratio per node, latency, airtime against the
EU868 duty-cycle limit, largest frame per message type against the 51-byte
budget, alarms raised against faults injected, energy and water against
their baselines), the value faults destroyed (dark lamp-hours, water lost,
water not delivered, turf stress) apart from the savings, the days (ET0,
rain, temperatures, night length, soil water, stress; with the daily
series plotted in `days.png`), the fault table, the totals (the platform against the nodes' own counters
and both against the true meters), the warnings (simulator/run_warnings.py), the spread over seeds
(`--seeds`), the nodes' clocks (automatic time), the gateway's and the sink's counters in a live run, and
the models' limits.

The plots are simulator/report_plots.py; this module is the page.
Every number comes from the results object; this module computes nothing
the results do not hold, except unit conversions and labels.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any

from simulator.report_plots import PLOTS, duration_text, make_plots, nothing_lost

__all__ = ["PLOTS", "make_plots", "render_html", "write_report"]

# ---------------------------------------------------------------- the page

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#222;margin:0;background:#f6f6f3}
main{max-width:1040px;margin:0 auto;padding:28px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px} h2{font-size:18px;margin:34px 0 8px;border-bottom:2px solid #eee;padding-bottom:4px}
.sub{color:#666;margin:0 0 22px;font-size:14px}
.hero{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin:10px 0 18px}
.card{border-radius:10px;padding:18px 20px;color:#fff}
.card .big{font-size:40px;font-weight:700;line-height:1.1}
.card .pct{font-size:22px;font-weight:600;opacity:.95}
.card .what{font-size:13px;opacity:.92;margin-top:6px}
.energy{background:linear-gradient(135deg,#e69f00,#c77c00)} .water{background:linear-gradient(135deg,#0072b2,#005080)}
.health{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin-bottom:8px}
.tile{border:1px solid #e4e4e4;border-radius:8px;padding:10px 12px}
.tile .v{font-size:22px;font-weight:700} .tile .l{font-size:12px;color:#666}
.ok{color:#009e73} .bad{color:#d55e00}
img{max-width:100%;display:block;margin:8px auto}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eee;vertical-align:top} th{background:#fafafa}
td.n{text-align:right;font-variant-numeric:tabular-nums} .nw{white-space:nowrap}
.note{font-size:12.5px;color:#555;line-height:1.5}
code{background:#f2f2f2;padding:1px 4px;border-radius:3px;font-size:12px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _tile(value: str, label: str, ok: bool | None = None) -> str:
    cls = "" if ok is None else (" ok" if ok else " bad")
    return f'<div class="tile"><div class="v{cls}">{_e(value)}</div><div class="l">{_e(label)}</div></div>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(results: dict[str, Any], pngs: dict[str, bytes]) -> str:
    sc, dv, al, en, wa, fr, to = (
        results[k] for k in ("scenario", "delivery", "alarms", "energy", "water", "frames", "totals")
    )
    # a results file written with --no-wall-clock has no `run` section: then the page says nothing of it
    run: dict[str, Any] | None = results.get("run")
    live = run is not None and run["link"] == "live"
    gw = results.get("gateway", {})
    start = dt.datetime.fromisoformat(sc["start"])
    link = (
        f"a real <code>lumeau gateway</code> process ({_e(front_ends(results))}) and <code>lumeau sink</code> as "
        "the city platform"
        if live
        else "the real gateway pipeline and store in the simulator's process"
    )
    out = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Lumeau: {_e(sc['name'])} report</title>",
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>",
        f"<h1>Lumeau simulation: {_e(sc['name'])}</h1>",
        f"<p class=sub>{sc['lamps']} street lights and {sc['controllers']} irrigation controllers "
        f"({sc['zones']} zones) on {len(sc['gateways'])} gateways; {sc['hours']:g} simulated hours from "
        f"{start:%Y-%m-%d %H:%M} UTC; {len(al['faults'])} faults injected; seed {sc['seed']}. "
        f"Every node ran the real firmware on a virtual clock, against {link}.</p>",
        "<div class=hero>",
        f"<div class='card energy'><div class=big>{en['saved_kwh']:.1f} kWh saved</div>"
        f"<div class=pct>{en['saved_pct']:.0f} % less than full power all night</div>"
        f"<div class=what>by the control: {en['kwh']:.1f} kWh used against {en['baseline_kwh']:.1f} kWh with every "
        f"lamp at its rated power from sunset to sunrise{_coverage(en['coverage'], 'lamp-night')}</div></div>",
        f"<div class='card water'><div class=big>{wa['saved_m3']:.2f} m\u00b3 saved</div>"
        f"<div class=pct>{wa['saved_pct']:.0f} % less than the fixed schedule</div>"
        f"<div class=what>by the control: {wa['m3']:.2f} m\u00b3 onto the turf against {wa['baseline_m3']:.2f} "
        f"m\u00b3 watering every zone on its schedule whatever the soil and the rain"
        f"{_coverage(wa['coverage'], 'zone-time')}</div></div>",
        "</div><div class=health>",
        _tile(
            f"{dv['ratio_pct']:.2f} %", f"uplinks stored ({dv['stored']:,} of {dv['settled']:,})", dv["ratio"] >= 0.95
        ),
        _tile(
            f"{al['detected']} / {al['expected']}",
            "faults that showed and raised their alarm" + (f" ({al['latent']} latent)" if al.get("latent") else ""),
            al["detected"] == al["expected"],
        ),
        _tile(
            f"{max(fr['largest'].values(), default=0)} B",
            f"largest frame (budget {fr['budget']} B)",
            not fr["over_budget"],
        ),
        _tile(
            "agree" if to["agree"] else "DISAGREE",
            "platform totals = the nodes' own counters"
            + (", and every node with metered energy or water heard to the end" if "truth" in to else ""),
            to["agree"],
        ),
        "</div>",
        *_warnings_section(results.get("warnings") or []),
        *_spread_section(results.get("spread")),
        *(
            [
                f"<p class=note>Run: {run['wall_s']:.0f} s of wall time, "
                f"{run['node_seconds_per_wall_s']:,.0f} simulated node-seconds per second"
                + (
                    "; the simulated clock ran "
                    + (
                        f"at most {gw['live_speed']:,.0f} times faster than real time"
                        if gw.get("live_speed")
                        else "as fast as the CPU allowed"
                    )
                    + " and waited "
                    f"{gw.get('live_holds_real_s', 0):.1f} s in all for the gateway's downlink decisions "
                    f"({gw.get('live_holds', 0)} receive windows)"
                    if live
                    else ""
                )
                + ".</p>"
            ]
            if run
            else []
        ),
        "<h2>The district</h2>",
        _img(pngs["map"], "district map"),
        "<h2>Energy</h2>",
        _img(pngs["energy"], "energy against the baseline"),
        "<h2>Water</h2>",
        _img(pngs["water"], "water against the baseline"),
        *_destroyed_section(en, wa),
        *(["<h2>Day by day</h2>", _img(pngs["days"], "daily series")] if "days" in pngs else []),
        *_days_section(results.get("days") or []),
        "<h2>Faults and alarms</h2>",
        _img(pngs["alarms"], "alarms against faults"),
        _fault_table(al, nothing_lost(results)),
        "<h2>Radio</h2>",
        _img(pngs["delivery"], "delivery per node"),
        _img(pngs["airtime"], "airtime against the duty-cycle limit"),
        *(
            [
                "<p class=note><span class=bad>This run is shorter than an hour</span>: the EU868 duty cycle is "
                "judged over an hour (ETSI EN 300 220-1), so these shares weigh the first reports too much.</p>"
            ]
            if results["airtime"].get("under_an_hour")
            else []
        ),
        _img(pngs["frames"], "largest frames"),
        _img(pngs["latency"], "latency"),
        "<h2>Totals: the platform against the nodes</h2>",
        _totals_table(to),
        *_clock_section(results.get("clock")),
        *_group_section(results.get("group_command_live"), results.get("group_command")),
        *_platform_section(results.get("platform_ledger"), results.get("resident_reports")),
        *_calendar_section(results.get("calendar_event")),
        "<h2>The gateway</h2>",
        _gateway_table(gw, live),
        "<h2>Models and their limits</h2>",
        _limits(live, sc.get("path_loss"), front_ends(results) if live else ""),
        "</main></body></html>",
    ]
    return "\n".join(out)


def _coverage(share: float, what: str) -> str:
    if share >= 1.0:
        return ""
    return f", over the {100 * share:.1f} % of {what} no fault affected (the rest is below, as value destroyed)"


def _destroyed_section(en: dict[str, Any], wa: dict[str, Any]) -> list[str]:
    """What faults cost, apart from the savings: a dead lamp or a latched controller is no saving."""
    ef, wf = en["faults"], wa["faults"]
    rows = [
        ("lamps a fault affected", f"{ef['lamps_affected']}"),
        ("dark lamp-hours (commanded lit, no light)", f"{ef['dark_lamp_hours']:.1f} h"),
        ("energy failed lamps did not draw (not a saving)", f"{ef['not_drawn_kwh']:.2f} kWh"),
        ("energy wasted by over-current", f"{ef['wasted_kwh']:.2f} kWh"),
        ("irrigation zones a fault affected (burst, stuck valve, controller latched)", f"{wf['zones_affected']}"),
        ("water lost to leaks and bursts (through the meter, not onto the turf)", f"{wf['lost_m3']:.3f} m\u00b3"),
        (
            "water the schedule would have given the affected zones, which they did not get",
            f"{wf['not_delivered_m3']:.3f} m\u00b3",
        ),
        ("turf stress in affected zones (FAO-56 Ks < 1)", f"{wf['stress_zone_hours']:.1f} zone-h"),
    ]
    cells = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in rows)
    return [
        "<h2>Value destroyed by faults</h2>",
        "<p class=note>Left out of the savings above: the control's saving is counted over the lamp-time and "
        "zone-time no fault affected, in both the controlled and the baseline sums. Faults included, the "
        f"difference to the baselines would read {en['gross_saved_pct']:.1f} % for energy and "
        f"{wa['gross_saved_pct']:.1f} % for water. Turf stress under the control elsewhere: "
        f"{wa['stress_zone_hours']:.1f} zone-h (the fixed schedule: {wa['baseline_stress_zone_hours']:.1f}).</p>",
        f"<table>{cells}</table>",
    ]


def _days_section(days: list[dict[str, Any]]) -> list[str]:
    if not days:
        return []
    head = (
        "<tr><th>day</th><th>in run, h</th><th>ET0, mm</th><th>rain, mm</th><th>Tmin / Tmax, \u00b0C</th>"
        "<th>night, h</th><th>soil water start \u2192 end</th><th>stress, zone-h</th></tr>"
    )

    def soil(d: dict[str, Any]) -> str:
        if d["soil_start"] is None:
            return "-"
        return f"{100 * d['soil_start']:.0f} % \u2192 {100 * d['soil_end']:.0f} %"

    rows = "".join(
        f"<tr><td class=nw>{_e(d['date'])}</td><td class=n>{d['hours_in_run']:g}</td><td class=n>{d['et0_mm']:.1f}"
        f"</td><td class=n>{d['rain_mm']:.1f}</td><td class=n>{d['tmin_c']:.1f} / {d['tmax_c']:.1f}</td>"
        f"<td class=n>{d['night_h']:.1f}</td><td class=n>{_e(soil(d))}</td>"
        f"<td class=n>{d['stress_zone_hours']:.1f}</td></tr>"
        for d in days
    )
    return [
        "<h2>The days</h2>",
        "<p class=note>Weather days (local mean solar dates); soil water is the share of the root zone's "
        "available water (1 = field capacity, 0 = wilting point), mean over the zones; stress is time past the "
        "readily available water. The start state is the scenario's <code>[irrigation] soil_start</code>.</p>",
        f"<table>{head}{rows}</table>",
    ]


def _fault_table(al: dict[str, Any], nothing_lost: bool) -> str:
    rows = ["<table><tr><th>when</th><th>fault</th><th>target</th><th>expected</th><th>outcome</th></tr>"]
    for f in al["faults"]:
        if f["expected"] is None:
            outcome = (
                "<span class=ok>no alarm expected; no record lost</span>"
                if nothing_lost
                else "<span class=bad>no alarm expected, but records were lost (see the totals)</span>"
            )
        elif f.get("manifested") is False and not f["detected"]:
            outcome = (
                "latent: "
                + _e(f.get("latent_reason") or "the fault never showed (nothing flowed or lit)")
                + "; so there was nothing to raise"
            )
        elif f["detected"]:
            outcome = f"<span class=ok>stored {duration_text(f['delay_s'])} after the fault</span>"
        else:
            outcome = "<span class=bad>not raised</span>"
        params = ", ".join(f"{k} {v}" for k, v in f["params"].items())
        rows.append(
            f"<tr><td class='n nw'>{f['at_h']:g} h</td><td>{_e(f['kind'].replace('_', ' '))}"
            f"{(' (' + _e(params) + ')') if params else ''}</td><td class=nw>{_e(f['target'])}</td>"
            f"<td>{_e(f['expected'] or '')}</td><td>{outcome}</td></tr>"
        )
    rows.append("</table>")
    if al.get("unexpected"):
        rows.append(
            f"<p class=note>Alarms with no fault behind them: {len(al['unexpected'])} "
            + _e(", ".join(f"{u['node']} {u['event']}" for u in al["unexpected"][:10]))
            + "</p>"
        )
    return "".join(rows)


def _totals_table(to: dict[str, Any]) -> str:
    u, e, w = to["uplinks"], to["energy_wh"], to["water_l"]
    rows = [
        ("uplinks the nodes sent", u.get("nodes_tx")),
        ("put on the air", u.get("on_air")),
        ("heard by a gateway", u.get("heard")),
        ("stored by the gateway", u.get("stored")),
        ("at the city platform", u.get("at_platform")),
        ("queued at the end", u.get("queued_at_end")),
        ("energy, Wh: platform / nodes' own", f"{e['platform']:,} / {e['nodes']:,}"),
        ("water, L: platform / nodes' own", f"{w['platform']:,} / {w['nodes']:,}"),
    ]
    tr = to.get("truth")
    if tr is not None:
        rows += [
            (
                "energy, Wh: true meters / nodes' meters at the end",
                f"{tr['energy_wh']['truth']:,.0f} / {tr['energy_wh']['nodes_meters']:,}",
            ),
            (
                "water, L: true meters / nodes' meters at the end",
                f"{tr['water_l']['truth']:,.0f} / {tr['water_l']['nodes_meters']:,}",
            ),
            (
                "the platform's share of the truth (energy / water)",
                f"{100 * tr['platform_share_energy']:.1f} % / {100 * tr['platform_share_water']:.1f} %",
            ),
        ]
        rows += [
            (f"{o['node']}: {o['why']}", f"{o['truth']:,} true, {o['platform']:,} at the platform")
            for o in tr["not_heard"]
        ]
        rows += [
            (f"{o['node']}: its own meter off the truth", f"{o['node_meter']:,} for {o['truth']:,} true")
            for o in tr["meters_off"]
        ]
    cells = "".join(
        f"<tr><td>{_e(k)}</td><td class=n>{_e(f'{v:,}' if isinstance(v, int) else v)}</td></tr>"
        for k, v in rows
        if v is not None
    )
    verdict = (
        "<span class=ok>agree</span>"
        if to["agree"]
        else f"<span class=bad>disagree: {_e(to.get('mismatches', [])[:5])}</span>"
    )
    return f"<table>{cells}<tr><th>verdict</th><th>{verdict}</th></tr></table>"


def _clock_section(ck: dict[str, Any] | None) -> list[str]:
    """The nodes' clocks and the gateway's automatic time (SPEC §4); nothing without a `clock` section."""
    if not ck:
        return []
    drift = ck["drift_ppm"] or {"min": 0.0, "max": 0.0}
    rows = [
        ("crystal drift drawn, ppm", f"{drift['min']:+.1f} .. {drift['max']:+.1f}"),
        ("largest |clock error| after the first TIME, s", f"{ck['max_error_s']:.3f} ({ck['worst_node'] or '-'})"),
        ("TIME downlinks sent / taken by the nodes", f"{ck['time_downlinks_sent']:,} / {ck['time_taken']:,}"),
    ]
    for r in ck["restores"]:
        rows.append(
            (
                f"{r['node']} lost its clock at {r['at_h']:g} h",
                f"clock back {r['to_time_s']:.1f} s later (uplink {r['uplinks']}), "
                f"profile by {r['to_profile_s']:.1f} s",
            )
        )
    rows += [(f"{n} lost its clock", "never restored") for n in ck["never_restored"]]
    cells = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in rows)
    return ["<h2>Clocks</h2>", f"<table>{cells}</table>"]


def _group_section(live: dict[str, Any] | None, model: dict[str, Any] | None) -> list[str]:
    """The demo's group command through the live gateway, and the model's unicast against multicast."""
    if not live and not model:
        return []

    def t(v: float | None) -> str:
        return "not reached" if v is None else f"{v / 60:.1f} min"

    rows = []
    if live and live.get("delivery"):
        d, p = live["delivery"], live.get("progress") or {}
        rows += [
            (
                "group",
                f"{live['street']} ({live['members']} lamps): set_level 100 % for 2 h at {live['sent_at_h']:g} h",
            ),
            ("delivery chosen by the gateway", f"{d['mode']} ({d['reason']})"),
            ("95 % / 100 % applied after", f"{t(live['applied_95_s'])} / {t(live['applied_100_s'])}"),
            ("at the end", ", ".join(f"{k} {v}" for k, v in p.items())),
            ("repaired by unicast (missed by the multicast)", str(live.get("repaired_by_unicast", 0))),
        ]
    if model:
        for mode in ("unicast", "multicast"):
            r = model[mode]
            rows.append(
                (
                    f"model, {model['members']} lamps, {mode}: 95 % / 100 % applied",
                    f"{t(r['applied_95_s'])} / {t(r['applied_100_s'])} ({r['downlinks']} downlinks)",
                )
            )
    cells = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(v)}</td></tr>" for k, v in rows)
    return ["<h2>Group command</h2>", f"<table>{cells}</table>"]


MAIN_COUNTERS = (
    "received",
    "accepted",
    "duplicates",
    "delivered_upstream",
    "queued_at_end",
    "queue_max",
    "downlinks_acks_sent",
    "downlinks_send_errors",
    "evicted",
    "restarts",
)


def _gateway_table(gw: dict[str, Any], live: bool) -> str:
    nums = {k: v for k, v in gw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def rows(keys: Any) -> str:
        return "".join(
            f"<tr><td>{_e(k.replace('_', ' '))}</td><td class=n>"
            f"{_e(f'{nums[k]:,}' if isinstance(nums[k], int) else nums[k])}</td></tr>"
            for k in keys
        )

    main = [k for k in MAIN_COUNTERS if k in nums]
    rest = [k for k in nums if k not in main]
    cells = rows(main)
    if rest:
        cells += (
            f"<tr><td colspan=2><details><summary>all counters</summary><table>{rows(rest)}</table></details></td></tr>"
        )
    extra = ""
    if live:
        sink = gw.get("live_sink", {})
        fronts = gw.get("live_fronts", {})
        extra = (
            "<p class=note>The city platform (<code>lumeau sink</code>): "
            + _e(", ".join(f"{k} {v}" for k, v in sink.items()))
            + ". Radio front-ends: "
            + _e(
                "; ".join(
                    f"{site} ({f.get('kind')}): " + ", ".join(f"{k} {v}" for k, v in f.items() if k != "kind")
                    for site, f in fronts.items()
                )
            )
            + ".</p>"
        )
    return f"<table>{cells}</table>{extra}"


def front_ends(results: dict[str, Any]) -> str:
    """The radio front-ends that really stood at the gateway sites of a live run."""
    fronts = (results.get("gateway") or {}).get("live_fronts") or {}
    names = {"bridge": "a radio bridge board on a pseudo-terminal", "udp": "a Semtech UDP packet forwarder"}
    if fronts:
        return "; ".join(f"{site}: {names.get(f.get('kind'), f.get('kind'))}" for site, f in fronts.items())
    sites = [g["id"] for g in results["scenario"]["gateways"]]  # live.py: the first a bridge, the others UDP
    return "; ".join(f"{g}: {names['bridge'] if i == 0 else names['udp']}" for i, g in enumerate(sites))


def path_loss_text(pl: dict[str, Any] | None) -> str:
    if pl is None or pl.get("model") == "log_distance":
        p = pl or {"d0_m": 40.0, "pl_d0_db": 127.41, "gamma": 2.08}
        return (
            f"log-distance path loss {p['pl_d0_db']:g} + {10 * p['gamma']:g} log10(d / {p['d0_m']:g} m) dB "
            "(LoRaSim's measured fit, a node and gateway near street level)"
        )
    return f"Okumura-Hata urban path loss at {pl['freq_mhz']:g} MHz (Hata 1980; a rooftop gateway, heights used)"


def _platform_section(led: dict[str, Any] | None, reports: list[dict[str, Any]] | None) -> list[str]:
    """The city platform's own account of the run (a live demo): its ledger and residents' reports."""
    out: list[str] = []
    if led:
        t, ag = led["totals"], led.get("agreement") or {}
        rows = [
            ("Energy used", f"{t['energy_kwh']:.2f} kWh", f"{t['energy_baseline_kwh']:.2f} kWh dusk to dawn"),
            ("Water used", f"{t['water_m3']:.2f} m³", f"{t['water_baseline_m3']:.2f} m³ on the schedule"),
            ("Money and CO₂ avoided", f"{t['eur_saved']:.2f} €", f"{t['kgco2_avoided']:.2f} kgCO₂e"),
            ("Dark lamp-hours", f"{t['dark_lamp_hours']:.1f}", ""),
        ]
        cells = "".join(f"<tr><th>{_e(a)}</th><td>{_e(b)}</td><td>{_e(c)}</td></tr>" for a, b, c in rows)
        verdict = ""
        if ag:
            e, w = ag["energy_kwh"], ag["water_m3"]
            verdict = (
                f"<p>Against the simulator's truth: energy {e['diff_pct']:+.2f} % (tolerance "
                f"{e['tolerance_pct']:g} %), water {w['diff_pct']:+.2f} % (tolerance {w['tolerance_pct']:g} %): "
                + ("agree" if ag.get("agree") else "<span class=bad>DISAGREE</span>")
                + ".</p>"
            )
        out += [
            "<h2>The city platform's ledger</h2>",
            "<p>Computed by <code>lumeau sink</code> from its own stored records (GET /ledger/daily.json, "
            f"{len(led['days'])} local day(s), {_e(led['timezone'])}; gross: faults included; method: "
            "city/README.md).</p>",
            f"<table><tr><th></th><th>used</th><th>baseline</th></tr>{cells}</table>",
            verdict,
        ]
    if reports:
        rows_html = "".join(
            f"<tr><td>{_e(r['service_code'])}</td><td>{_e(r['near'])}</td><td>{_e(r['fault'])}</td>"
            f"<td>{_e(r['verdict'])}</td><td>{_e(r['notice'])}</td></tr>"
            for r in reports
        )
        out += [
            "<h2>Residents' reports</h2>",
            "<p>Simulated residents report faults through Open311 after the run, one of them mistaken; the "
            "platform gives each report a verdict from its nodes' own state (confirmed by the device, device "
            "reports normal: a field check, or no device nearby).</p>",
            "<table><tr><th>service</th><th>near</th><th>fault behind it</th><th>verdict</th>"
            f"<th>notice to the resident</th></tr>{rows_html}</table>",
        ]
    return out


def _calendar_section(r: dict[str, Any] | None) -> list[str]:
    """The demo's calendar event (simulator/demo_calendar.py): which lamps took it, what it changed."""
    if not r:
        return []
    missing = sorted(set(r["nodes"]) - set(r["applied"]))
    return [
        "<h2>Calendar event</h2>",
        f"<p>{_e(r['name'])}, the evening of {_e(r['date'])}: the gateway compiled the calendar file "
        f"({r['calendar_bytes']} B, hash <code>{_e(r['calendar_hash'])}</code>) and sent it to the lamps of "
        f"<code>{_e(r['street'])}</code> as {r['fragments_per_node']} CONFIG fragments each in their receive "
        f"windows ({r['fragments_queued']} queued in all); {len(r['applied'])} of {len(r['nodes'])} lamps "
        "reported it back in an EVENT calendar (the gateway's log)"
        + (f"; not (yet): {_e(', '.join(missing))}" if missing else "")
        + ".</p>",
        "<table><tr><th>that night, those lamps</th><th>kWh</th></tr>"
        f"<tr><td>their own profile</td><td class=n>{r['night_kwh_own_profile']:.2f}</td></tr>"
        f"<tr><td>with the event (off around the show)</td><td class=n>{r['night_kwh_with_event']:.2f}</td></tr>"
        f"<tr><td>saved by the schedule (presence boosts aside)</td><td class=n>{r['night_kwh_saved']:.2f}</td></tr>"
        "</table>",
    ]


def _warnings_section(warnings: list[dict[str, Any]]) -> list[str]:
    if not warnings:
        return []
    items = "".join(f"<li>{_e(w['text'])} <code>{_e(w['code'])}</code></li>" for w in warnings)
    return ["<h2>Warnings</h2>", f"<ul class=note>{items}</ul>"]


def _spread_section(sp: dict[str, Any] | None) -> list[str]:
    if not sp:
        return []
    head = "<tr><th>figure</th><th>mean</th><th>std</th><th>min .. max</th><th>per seed</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(f['label'])}</td><td class=n>{f['mean']:.1f}</td><td class=n>{f['std']:.1f}</td>"
        f"<td class=n>{f['min']:.1f} .. {f['max']:.1f}</td>"
        f"<td class=n>{_e(', '.join(f'{v:.1f}' for v in f['values']))}</td></tr>"
        for f in sp["figures"].values()
    )
    return [
        f"<h2>Over {len(sp['seeds'])} seeds</h2>",
        "<p class=note>The same scenario with seeds " + _e(", ".join(str(x) for x in sp["seeds"])) + " (weather, "
        "people, radio); the rest of this report is the first seed's run. std is the sample standard deviation.</p>",
        f"<table>{head}{rows}</table>",
    ]


def _limits(live: bool, path_loss: dict[str, Any] | None = None, fronts: str = "") -> str:
    items = [
        f"Radio: {path_loss_text(path_loss)} with log-normal shadowing (FLoRa), LoRaSim sensitivities, "
        "collisions with capture and preamble locking, 8 demodulators per gateway, EU868 duty cycle per node "
        "and gateway; no inter-SF interference, interferers not summed (simulator/channel.py).",
        "Lighting energy: rated power \u00d7 dimming level \u00d7 time (LED drivers are close to linear); "
        "the baseline burns every lamp at rated power from sunset to sunrise.",
        "Irrigation: FAO-56 single-bucket soil water balance with Hargreaves ET0 and a weather generator aimed "
        "at the city's normals; the baseline waters every zone on its schedule whatever the soil and the rain.",
        "Faults are injected as data (simulator/faults.py); each names the alarm it must raise.",
    ]
    if live and fronts:
        items.append(f"Radio front-ends at the gateway sites: {fronts} (simulator/live_radio.py).")
    if live:
        items.append(
            "Live pacing: the simulated clock runs at most a set number of times faster than real time "
            "and stops, in real time, before the receive window of any uplink the gateway may answer, "
            "until the gateway answered or cannot any more (simulator/live.py). The gateway's own "
            "downlink duty cycle runs on real time, so it is that many times stricter than in the field. "
            "Latency here is real: hand-over to the gateway until stored at the platform."
        )
    return "<ul class=note>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def write_report(results: dict[str, Any], out_dir: Path, scenario: Any = None) -> Path:
    """Write out_dir/report.html (plots embedded) and out_dir/plots/<name>.png; returns the HTML's path."""
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    pngs = make_plots(results, scenario)
    output = getattr(scenario, "output", None)
    if output is None or output.plots:  # [output] plots = false: the PNGs only inside the HTML
        for name, png in pngs.items():
            (plots_dir / f"{name}.png").write_bytes(png)
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.part")
    tmp.write_text(render_html(results, pngs), encoding="utf-8")
    tmp.replace(path)
    return path
