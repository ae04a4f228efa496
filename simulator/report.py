"""The simulation report: one results object (simulator/metrics.py) -> out/report.html with PNG plots.

    path = write_report(results.to_dict(), Path("out"), scenario)

Writes `report.html` (self-contained: every plot is embedded as a PNG data
URI, so the one file can be mailed or attached to a ticket) and the same
plots as files in `plots/` next to it (`map.png`, `energy.png`,
`water.png`, `delivery.png`, `latency.png`, `airtime.png`, `frames.png`,
`alarms.png`). Matplotlib with the Agg backend: no display needed.

What it shows, top to bottom: the public value as a headline (kWh and %
saved against lamps at full power all night, m3 and % saved against the
fixed watering schedule), the health figures (delivery, alarms detected,
largest frame, totals agreeing), the district map with gateways, lamps,
irrigation controllers and each injected fault with its outcome, then one
plot per question (delivery ratio per node, latency, airtime against the
EU868 duty-cycle limit, largest frame per message type against the 51-byte
budget, alarms raised against faults injected, energy and water against
their baselines), the fault table, the totals (platform against the nodes'
own counters), the gateway's and the sink's counters in a live run, and
the models' limits.

Every number comes from the results object; this module computes nothing
the results do not hold, except unit conversions and labels.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, deterministic PNGs
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

DPI = 120
# One palette for the whole report (and the HTML's CSS below).
LIGHT = "#e69f00"      # lamps, energy
WATER = "#0072b2"      # irrigation, water
BASE = "#9a9a9a"       # baselines
GOOD = "#009e73"
BAD = "#d55e00"
INK = "#222222"
GRID = "#e6e6e6"
PLOTS = ("map", "energy", "water", "delivery", "latency", "airtime", "frames", "alarms")


def _style() -> None:
    plt.rcParams.update({
        "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10,
        "axes.edgecolor": "#bbbbbb", "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8,
        "axes.axisbelow": True, "axes.spines.top": False, "axes.spines.right": False,
        "legend.frameon": False, "figure.facecolor": "white", "savefig.facecolor": "white",
        "font.family": "DejaVu Sans",
    })


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _local_hours(results: dict[str, Any], scenario: Any) -> Callable[[float], str]:
    """Hours since the start -> local clock time "HH:MM" (the scenario's time zone), for axis labels."""
    start = dt.datetime.fromisoformat(results["scenario"]["start"])
    tz = getattr(getattr(scenario, "location", None), "tz", None) or dt.timezone.utc

    def label(h: float) -> str:
        return (start + dt.timedelta(hours=h)).astimezone(tz).strftime("%H:%M")
    return label


def _hour_axis(ax: Any, hours: float, label: Callable[[float], str]) -> None:
    step = 3 if hours <= 36 else 12 if hours <= 96 else 24
    ticks = [h for h in range(0, int(hours) + 1, step)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([label(h) for h in ticks])
    ax.set_xlim(0, hours)
    ax.set_xlabel("local time")


# ---------------------------------------------------------------- the plots

def plot_map(results: dict[str, Any], scenario: Any) -> bytes:
    fig, (ax, side) = plt.subplots(1, 2, figsize=(11, 5.4), gridspec_kw={"width_ratios": [3.2, 1]})
    ax.set_aspect("equal")
    ax.grid(False)
    delivery = {n["node"]: n for n in results["delivery"].get("by_node", [])}
    if scenario is not None:
        for park in scenario.parks:
            ax.add_patch(patches.Polygon(park.polygon, closed=True, facecolor="#cfe8c6", edgecolor="#8cbf7f",
                                         linewidth=1, zorder=1))
            cx = sum(p[0] for p in park.polygon) / len(park.polygon)
            cy = min(p[1] for p in park.polygon)
            ax.text(cx, cy + 3, park.name, ha="center", va="bottom", fontsize=7.5, color="#3d6b33",
                    style="italic", zorder=3)
        for st in scenario.streets:
            xs, ys = zip(*st.points)
            ax.plot(xs, ys, color="#dddddd", linewidth=7, solid_capstyle="round", zorder=2)
            vertical = abs(xs[-1] - xs[0]) < abs(ys[-1] - ys[0])
            if vertical:  # along the line near its southern end, to the right of it
                i = 0 if ys[0] < ys[-1] else -1
                ax.text(xs[i] + 5, ys[i] + 3, st.name, fontsize=6.5, color="#888888", rotation=90, ha="left",
                        va="bottom", zorder=3)
            else:  # above the line at its western end
                i = 0 if xs[0] < xs[-1] else -1
                ax.text(xs[i] + 3, ys[i] + 5, st.name, fontsize=6.5, color="#888888", ha="left", va="bottom",
                        zorder=3)
        lamps = [n for n in scenario.lamps if n.name in delivery] or list(scenario.lamps)
        ctrls = [n for n in scenario.controllers if n.name in delivery] or list(scenario.controllers)

        def worst(n: Any) -> bool:
            d = delivery.get(n.name)
            return d is not None and d["ratio"] < 0.95
        ax.scatter([n.x for n in lamps], [n.y for n in lamps], s=26, color=LIGHT, edgecolor="white",
                   linewidth=0.6, zorder=4, label=f"street light ({len(lamps)})")
        ax.scatter([n.x for n in ctrls], [n.y for n in ctrls], s=70, marker="s", color=WATER, edgecolor="white",
                   linewidth=0.8, zorder=9, label=f"irrigation controller ({len(ctrls)}, "
                                                  f"{sum(len(c.zones) for c in ctrls)} zones)")
        low = [n for n in list(lamps) + list(ctrls) if worst(n)]
        if low:
            ax.scatter([n.x for n in low], [n.y for n in low], s=120, facecolor="none", edgecolor=BAD,
                       linewidth=1.2, zorder=5, label="delivery below 95 %")
        positions = {n.name: (n.x, n.y) for n in scenario.nodes}
    else:
        positions = {}
    gws = results["scenario"]["gateways"]
    ax.scatter([g["x"] for g in gws], [g["y"] for g in gws], s=170, marker="^", color=INK, edgecolor="white",
               zorder=6, label="gateway")
    for g in gws:
        positions[g["id"]] = (g["x"], g["y"])
    xs = [p[0] for p in positions.values()] + [g["x"] for g in gws]
    ys = [p[1] for p in positions.values()] + [g["y"] for g in gws]
    if scenario is not None:
        for st in scenario.streets:
            xs += [p[0] for p in st.points]
            ys += [p[1] for p in st.points]
    w, h = (max(xs) - min(xs)) or 100.0, (max(ys) - min(ys)) or 100.0
    ax.set_xlim(min(xs) - 0.06 * w, max(xs) + 0.06 * w)
    ax.set_ylim(min(ys) - 0.14 * h, max(ys) + 0.1 * h)
    for g in gws:
        ax.annotate(g["id"], (g["x"], g["y"]), xytext=(-9, -9), textcoords="offset points", ha="right",
                    va="top", fontsize=8, fontweight="bold", color=INK, zorder=9,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    # each fault: a ring at its target with a numbered badge; the numbers are explained beside the map
    lines = []
    for i, f in enumerate(results["alarms"]["faults"], start=1):
        if f["expected"] is None:
            color, outcome = BASE, "no alarm expected"
        elif f.get("manifested") is False:
            color, outcome = BASE, "latent: never showed"
        else:
            color, outcome = (GOOD, "alarm raised \u2713") if f["detected"] else (BAD, "alarm NOT raised")
        lines.append((i, f, color, outcome))
        pos = positions.get(f["target"])
        if pos is None:
            continue
        ax.scatter([pos[0]], [pos[1]], s=420, facecolor="none", edgecolor=color, linewidth=2.2, zorder=7)
        ax.annotate(str(i), pos, xytext=(10, 10), textcoords="offset points", ha="center", va="center",
                    fontsize=7.5, fontweight="bold", color="white", zorder=10,
                    bbox={"boxstyle": "circle,pad=0.25", "facecolor": color, "edgecolor": "white", "linewidth": 0.8})
    side.axis("off")
    side.text(0.0, 1.0, "Faults injected", transform=side.transAxes, fontsize=10, fontweight="bold", va="bottom")
    step = 1.0 / max(8, len(lines) + 1)
    for k, (i, f, color, outcome) in enumerate(lines):
        y = 1.0 - (k + 0.6) * step
        side.text(0.0, y, str(i), transform=side.transAxes, ha="center", va="center", fontsize=7.5,
                  fontweight="bold", color="white",
                  bbox={"boxstyle": "circle,pad=0.25", "facecolor": color, "edgecolor": "white"})
        side.text(0.07, y + 0.012, f"{f['kind'].replace('_', ' ')}, {f['at_h']:g} h", transform=side.transAxes,
                  va="bottom", fontsize=8, fontweight="bold", color=INK)
        side.text(0.07, y - 0.012, f"{f['target']}: {outcome}", transform=side.transAxes, va="top", fontsize=7.5,
                  color=color)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    # a scale bar instead of axes (north is up), in a corner left free by the margins
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    bar = 10 ** math.floor(math.log10(max(1.0, (x1 - x0) / 4)))
    bx, by = x1 - bar - 0.01 * (x1 - x0), y0 + 0.02 * (y1 - y0)
    ax.plot([bx, bx + bar], [by, by], color=INK, linewidth=2.5, solid_capstyle="butt")
    ax.text(bx + bar / 2, by + 0.012 * (y1 - y0), f"{bar:g} m", ha="center", va="bottom", fontsize=8)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8, markerscale=0.8)
    ax.set_title("The district: nodes, gateways and the faults injected", loc="left")
    return _png(fig)


def plot_energy(results: dict[str, Any], scenario: Any) -> bytes:
    s, en = results["series"], results["energy"]
    label = _local_hours(results, scenario)
    hours = results["scenario"]["hours"]
    t = [0.0] + list(s["t_h"])
    used = [0.0] + [v / 1000 for v in s["energy_wh"]]
    base = [0.0] + [v / 1000 for v in s["baseline_energy_wh"]]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.fill_between(t, used, base, where=[b >= u for u, b in zip(used, base)], color=LIGHT, alpha=0.18,
                    step=None, label=f"saved: {en['saved_kwh']:.1f} kWh ({en['saved_pct']:.0f} %)")
    ax.plot(t, base, color=BASE, linewidth=2, linestyle="--", label="baseline: every lamp at full power, dusk to dawn")
    ax.plot(t, used, color=LIGHT, linewidth=2.6, label="Lumeau: dimming profiles and presence boost")
    _hour_axis(ax, hours, label)
    ax.set_ylabel("energy used, cumulative (kWh)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.set_title(f"Street lighting energy: {en['kwh']:.1f} kWh against {en['baseline_kwh']:.1f} kWh")
    return _png(fig)


def plot_water(results: dict[str, Any], scenario: Any) -> bytes:
    wa = results["water"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    base, used = wa["baseline_m3"], wa["m3"]
    wasted = min(base, wa.get("baseline_wasted_m3", 0.0) or 0.0)
    ax.barh([1], [base], color=BASE, height=0.55)
    if wasted > 0:
        ax.barh([1], [wasted], left=[base - wasted], color="#c4c4c4", edgecolor="#7a7a7a", hatch="///", height=0.55,
                label=f"of which drained past the roots: {wasted:.1f} m\u00b3")
    lost = wa.get("lost_m3", 0.0) or 0.0
    ax.barh([0], [used], color=WATER, height=0.55)
    if lost > 0:
        ax.barh([0], [min(lost, used)], left=[used - min(lost, used)], color=BAD, height=0.55,
                label=f"lost to leaks and bursts: {lost:.2f} m\u00b3")
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["Lumeau: soil moisture,\nrain sensor, leak shut-off", "baseline: fixed schedule,\nevery day"])
    right = max(base, used) or 1.0
    ax.set_xlim(0, right * 1.28)
    for y, v in ((1, base), (0, used)):
        ax.text(v + right * 0.01, y, f"{v:.2f} m\u00b3", va="center", fontsize=10, fontweight="bold")
    ax.set_xlabel("water used (m\u00b3)")
    ax.grid(axis="y", visible=False)
    if wasted > 0 or lost > 0:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Irrigation water: {wa['saved_m3']:.2f} m\u00b3 saved ({wa['saved_pct']:.0f} %)")
    return _png(fig)


def plot_delivery(results: dict[str, Any], scenario: Any) -> bytes:
    dv = results["delivery"]
    nodes = sorted(dv.get("by_node", []), key=lambda n: (n["ratio"], n["node"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = range(len(nodes))
    ax.bar(x, [100 * n["ratio"] for n in nodes], color=[LIGHT if n["kind"] == "lighting" else WATER for n in nodes],
           width=0.85)
    ax.axhline(95, color=BAD, linewidth=1.2, linestyle="--")
    lo = min([100 * n["ratio"] for n in nodes] + [95.0])
    ax.set_ylim(max(0.0, math.floor(lo - 3)), 100.4)
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(nodes)} nodes, worst first")
    ax.set_ylabel("uplinks stored / sent (%)")
    handles = [patches.Patch(color=LIGHT, label=f"street lights: {100 * dv['by_kind']['lighting']['ratio']:.2f} %"),
               patches.Patch(color=WATER, label=f"irrigation: {100 * dv['by_kind']['irrigation']['ratio']:.2f} %"),
               Line2D([], [], color=BAD, linestyle="--", label="the bar: 95 %")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.set_title(f"Delivery: {dv['stored']:,} of {dv['settled']:,} uplinks stored ({dv['ratio_pct']:.2f} %), "
                 f"{dv['lost_on_air']} lost on the air")
    return _png(fig)


def plot_latency(results: dict[str, Any], scenario: Any) -> bytes:
    lat = results["latency_s"]
    h = lat["histogram"]
    edges, counts = h["edges_s"], list(h["counts"]) + [h.get("over", 0)]

    def edge(s: float) -> str:
        return f"{s * 1000:g} ms" if s < 1 else f"{s:g} s"
    labels = [f"{edge(a)}\u2013{edge(b)}" for a, b in zip(edges, edges[1:])] + [f"> {edge(edges[-1])}"]
    while len(counts) > 1 and counts[-1] == 0:  # empty tail bins say nothing
        counts.pop()
        labels.pop()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.bar(range(len(counts)), counts, color=INK, width=0.75)
    ax.set_xticks(range(len(counts)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("records")
    live = results["run"]["link"] == "live"
    what = ("uplink end \u2192 stored at the city platform (real time, through the real gateway and its upstream)"
            if live else "uplink end \u2192 durable commit at the gateway (simulated time)")
    ax.set_title(f"Latency: p50 {_secs(lat['p50'])}, p95 {_secs(lat['p95'])}, max {_secs(lat['max'])}")
    ax.set_xlabel(what, fontsize=8.5, color="#555555")
    return _png(fig)


def plot_airtime(results: dict[str, Any], scenario: Any) -> bytes:
    air = results["airtime"]
    nodes = sorted(air.get("per_node", []), key=lambda n: -n["share_of_limit"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sfs = sorted({n["sf"] for n in nodes})
    cmap = plt.get_cmap("viridis")
    color = {sf: cmap(i / max(1, len(sfs) - 1)) for i, sf in enumerate(sfs)}
    ax.bar(range(len(nodes)), [100 * n["share_of_limit"] for n in nodes], color=[color[n["sf"]] for n in nodes],
           width=0.85)
    ax.axhline(100, color=BAD, linewidth=1.5)
    limits = ", ".join(f"{k} {100 * v:g} %" for k, v in air.get("duty_cycle", {}).items())
    ax.text(len(nodes) - 0.5, 98, f"the law: EU868 duty cycle ({limits} of the time)", color=BAD, ha="right",
            va="top", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(nodes)} nodes, busiest first")
    ax.set_ylabel("airtime used (% of the allowed)")
    ax.legend(handles=[patches.Patch(color=color[sf], label=f"SF{sf}") for sf in sfs], loc="center right",
              ncol=1, title="spreading factor", fontsize=8, title_fontsize=8)
    ax.set_title(f"Airtime: the busiest node used {air['max_share_of_limit_pct']:.1f} % of its allowance "
                 f"(mean {air['mean_share_of_limit_pct']:.1f} %)")
    return _png(fig)


def plot_frames(results: dict[str, Any], scenario: Any) -> bytes:
    fr = results["frames"]
    items = sorted(fr["largest"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(items) + 1.6))
    ax.barh([k for k, _ in items], [v for _, v in items], color=[BAD if v > fr["budget"] else GOOD for _, v in items],
            height=0.6)
    ax.axvline(fr["budget"], color=BAD, linewidth=1.5, linestyle="--")
    ax.text(fr["budget"], len(items) - 0.4, f" budget {fr['budget']} B\n (EU868 SF12)", color=BAD, fontsize=8,
            va="top")
    for i, (_k, v) in enumerate(items):
        ax.text(v - 0.6, i, f"{v} B", va="center", ha="right", color="white", fontweight="bold", fontsize=9)
    ax.set_xlim(0, max([fr["budget"]] + [v for _, v in items]) * 1.2)
    ax.set_xlabel("largest frame put on the air (bytes, header and MIC included)")
    ax.grid(axis="y", visible=False)
    ax.set_title("Largest frame per message type" + (": all within the budget" if not fr["over_budget"]
                                                      else f": {fr['over_budget']} frames over the budget"))
    return _png(fig)


def plot_alarms(results: dict[str, Any], scenario: Any) -> bytes:
    faults = results["alarms"]["faults"]
    hours = results["scenario"]["hours"]
    label = _local_hours(results, scenario)
    lost_none = _nothing_lost(results)
    durations = {}
    for sf in getattr(getattr(scenario, "faults", None), "faults", ()) or ():
        durations[sf.index] = sf.duration_s
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(faults) + 1.6))
    ys = list(range(len(faults)))[::-1]

    def note(x: float, y: float, text: str, color: str, bold: bool = False) -> None:
        ax.annotate(text, (x, y), xytext=(9, 0), textcoords="offset points", va="center", fontsize=8, color=color,
                    fontweight="bold" if bold else "normal")
    for y, f in zip(ys, faults):
        at = f["at_h"]
        dur_h = durations.get(f["index"])
        dur_h = dur_h / 3600 if dur_h else None
        if f["kind"] == "gateway_restart":
            dur_h = float(f["params"].get("downtime_s", 60)) / 3600
        if f["expected"] is None:
            width = max(dur_h or 0.0, 0.08)
            ax.barh([y], [width], left=[at], color=BASE, height=0.45)
            note(at + width, y, f"{_dur((dur_h or 0) * 3600)} down; no alarm expected; "
                 + ("no record lost" if lost_none else "RECORDS LOST"), "#555555" if lost_none else BAD)
            continue
        ax.scatter([at], [y], marker="v", s=70, color=INK, zorder=3)
        if f.get("manifested") is False and not f["detected"]:
            note(at, y, f"latent: it never showed, so no {f['expected']} was due (why: the fault table)", "#555555")
        elif f["detected"] and f["delay_s"] is not None:
            end = at + f["delay_s"] / 3600
            ax.plot([at, end], [y, y], color=GOOD, linewidth=2.5, zorder=2)
            ax.scatter([end], [y], marker="o", s=60, color=GOOD, zorder=3)
            note(end, y, f"{f['expected']} after {_dur(f['delay_s'])}", GOOD)
        else:
            ax.scatter([at], [y], marker="x", s=80, color=BAD, zorder=4)
            note(at, y, f"{f['expected']}: NOT RAISED", BAD, bold=True)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{f['kind'].replace('_', ' ')}\n{f['target']}" for f in faults], fontsize=8)
    _hour_axis(ax, hours, label)
    ax.set_ylim(-0.7, len(faults) - 0.3)
    ax.grid(axis="y", visible=False)
    al = results["alarms"]
    ax.set_title(f"Alarms against faults injected: {al['detected']} of {al['expected']} raised "
                 f"(\u25bc injected, \u25cf stored)" + (f", {al['latent']} latent" if al.get("latent") else ""))
    return _png(fig)


def _secs(s: float) -> str:
    """A latency for people: 0.57 s, 35 ms, 1.2 ms."""
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1000
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _dur(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


PLOTTERS: dict[str, Callable[[dict[str, Any], Any], bytes]] = {
    "map": plot_map, "energy": plot_energy, "water": plot_water, "delivery": plot_delivery,
    "latency": plot_latency, "airtime": plot_airtime, "frames": plot_frames, "alarms": plot_alarms,
}


def make_plots(results: dict[str, Any], scenario: Any = None) -> dict[str, bytes]:
    """Every plot as PNG bytes, by name (PLOTS)."""
    _style()
    return {name: PLOTTERS[name](results, scenario) for name in PLOTS}


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
    sc, run, dv, al, en, wa, fr, to = (results[k] for k in ("scenario", "run", "delivery", "alarms", "energy",
                                                             "water", "frames", "totals"))
    live = run["link"] == "live"
    gw = results.get("gateway", {})
    start = dt.datetime.fromisoformat(sc["start"])
    link = ("a real <code>lumeau gateway</code> process (radio bridge on a pseudo-terminal and a Semtech UDP "
            "packet forwarder) and <code>lumeau sink</code> as the city platform" if live
            else "the real gateway pipeline and store in the simulator's process")
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Lumeau: {_e(sc['name'])} report</title>",
           f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body><main>",
           f"<h1>Lumeau simulation: {_e(sc['name'])}</h1>",
           f"<p class=sub>{sc['lamps']} street lights and {sc['controllers']} irrigation controllers "
           f"({sc['zones']} zones) on {len(sc['gateways'])} gateways; {sc['hours']:g} simulated hours from "
           f"{start:%Y-%m-%d %H:%M} UTC; {len(al['faults'])} faults injected; seed {sc['seed']}. "
           f"Every node ran the real firmware on a virtual clock, against {link}.</p>",
           "<div class=hero>",
           f"<div class='card energy'><div class=big>{en['saved_kwh']:.1f} kWh saved</div>"
           f"<div class=pct>{en['saved_pct']:.0f} % less than full power all night</div>"
           f"<div class=what>{en['kwh']:.1f} kWh used against {en['baseline_kwh']:.1f} kWh with every lamp at its rated "
           f"power from sunset to sunrise</div></div>",
           f"<div class='card water'><div class=big>{wa['saved_m3']:.2f} m\u00b3 saved</div>"
           f"<div class=pct>{wa['saved_pct']:.0f} % less than the fixed schedule</div>"
           f"<div class=what>{wa['m3']:.2f} m\u00b3 through the meters against {wa['baseline_m3']:.2f} m\u00b3 "
           f"watering every zone on its schedule whatever the soil and the rain</div></div>",
           "</div><div class=health>",
           _tile(f"{dv['ratio_pct']:.2f} %", f"uplinks stored ({dv['stored']:,} of {dv['settled']:,})",
                 dv["ratio"] >= 0.95),
           _tile(f"{al['detected']} / {al['expected']}", "faults that showed and raised their alarm"
                 + (f" ({al['latent']} latent)" if al.get("latent") else ""), al["detected"] == al["expected"]),
           _tile(f"{max(fr['largest'].values(), default=0)} B", f"largest frame (budget {fr['budget']} B)",
                 not fr["over_budget"]),
           _tile("agree" if to["agree"] else "DISAGREE", "platform totals = the nodes' own counters", to["agree"]),
           "</div>",
           f"<p class=note>Run: {run['wall_s']:.0f} s of wall time, {run['node_seconds_per_wall_s']:,.0f} simulated "
           f"node-seconds per second" + (
               "; the simulated clock ran "
               + (f"at most {gw['live_speed']:,.0f} times faster than real time" if gw.get("live_speed")
                  else "as fast as the CPU allowed")
               + " and waited "
               f"{gw.get('live_holds_real_s', 0):.1f} s in all for the gateway's downlink decisions "
               f"({gw.get('live_holds', 0)} receive windows)" if live else "") + ".</p>",
           "<h2>The district</h2>", _img(pngs["map"], "district map"),
           "<h2>Energy</h2>", _img(pngs["energy"], "energy against the baseline"),
           "<h2>Water</h2>", _img(pngs["water"], "water against the baseline"),
           "<h2>Faults and alarms</h2>", _img(pngs["alarms"], "alarms against faults"),
           _fault_table(al, _nothing_lost(results)), "<h2>Radio</h2>", _img(pngs["delivery"], "delivery per node"),
           _img(pngs["airtime"], "airtime against the duty-cycle limit"), _img(pngs["frames"], "largest frames"),
           _img(pngs["latency"], "latency"),
           "<h2>Totals: the platform against the nodes</h2>", _totals_table(to),
           "<h2>The gateway</h2>", _gateway_table(gw, live),
           "<h2>Models and their limits</h2>", _limits(live),
           "</main></body></html>"]
    return "\n".join(out)


def _nothing_lost(results: dict[str, Any]) -> bool:
    """Every uplink a gateway heard reached the store and the platform (the check for restarts and outages)."""
    u = results["totals"]["uplinks"]
    return bool(results["totals"].get("stored_equals_heard")) and u.get("queued_at_end", 0) == 0 \
        and u.get("at_platform", u.get("stored")) == u.get("stored")


def _fault_table(al: dict[str, Any], nothing_lost: bool) -> str:
    rows = ["<table><tr><th>when</th><th>fault</th><th>target</th><th>expected</th><th>outcome</th></tr>"]
    for f in al["faults"]:
        if f["expected"] is None:
            outcome = ("<span class=ok>no alarm expected; no record lost</span>" if nothing_lost else
                       "<span class=bad>no alarm expected, but records were lost (see the totals)</span>")
        elif f.get("manifested") is False and not f["detected"]:
            outcome = ("latent: " + _e(f.get("latent_reason") or "the fault never showed (nothing flowed or lit)")
                       + "; so there was nothing to raise")
        elif f["detected"]:
            outcome = f"<span class=ok>stored {_dur(f['delay_s'])} after the fault</span>"
        else:
            outcome = "<span class=bad>not raised</span>"
        params = ", ".join(f"{k} {v}" for k, v in f["params"].items())
        rows.append(f"<tr><td class='n nw'>{f['at_h']:g} h</td><td>{_e(f['kind'].replace('_', ' '))}"
                    f"{(' (' + _e(params) + ')') if params else ''}</td><td class=nw>{_e(f['target'])}</td>"
                    f"<td>{_e(f['expected'] or '')}</td><td>{outcome}</td></tr>")
    rows.append("</table>")
    if al.get("unexpected"):
        rows.append(f"<p class=note>Alarms with no fault behind them: {len(al['unexpected'])} "
                    + _e(", ".join(f"{u['node']} {u['event']}" for u in al["unexpected"][:10])) + "</p>")
    return "".join(rows)


def _totals_table(to: dict[str, Any]) -> str:
    u, e, w = to["uplinks"], to["energy_wh"], to["water_l"]
    rows = [("uplinks the nodes sent", u.get("nodes_tx")), ("put on the air", u.get("on_air")),
            ("heard by a gateway", u.get("heard")), ("stored by the gateway", u.get("stored")),
            ("at the city platform", u.get("at_platform")), ("queued at the end", u.get("queued_at_end")),
            ("energy, Wh: platform / nodes' own", f"{e['platform']:,} / {e['nodes']:,}"),
            ("water, L: platform / nodes' own", f"{w['platform']:,} / {w['nodes']:,}")]
    cells = "".join(f"<tr><td>{_e(k)}</td><td class=n>{_e(f'{v:,}' if isinstance(v, int) else v)}</td></tr>"
                    for k, v in rows if v is not None)
    verdict = ("<span class=ok>agree</span>" if to["agree"] else
               f"<span class=bad>disagree: {_e(to.get('mismatches', [])[:5])}</span>")
    return f"<table>{cells}<tr><th>verdict</th><th>{verdict}</th></tr></table>"


MAIN_COUNTERS = ("received", "accepted", "duplicates", "delivered_upstream", "queued_at_end", "queue_max",
                 "downlinks_acks_sent", "downlinks_send_errors", "evicted", "restarts")


def _gateway_table(gw: dict[str, Any], live: bool) -> str:
    nums = {k: v for k, v in gw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def rows(keys: Any) -> str:
        return "".join(f"<tr><td>{_e(k.replace('_', ' '))}</td><td class=n>"
                       f"{_e(f'{nums[k]:,}' if isinstance(nums[k], int) else nums[k])}</td></tr>" for k in keys)
    main = [k for k in MAIN_COUNTERS if k in nums]
    rest = [k for k in nums if k not in main]
    cells = rows(main)
    if rest:
        cells += f"<tr><td colspan=2><details><summary>all counters</summary><table>{rows(rest)}</table></details></td></tr>"
    extra = ""
    if live:
        sink = gw.get("live_sink", {})
        fronts = gw.get("live_fronts", {})
        extra = ("<p class=note>The city platform (<code>lumeau sink</code>): "
                 + _e(", ".join(f"{k} {v}" for k, v in sink.items())) + ". Radio front-ends: "
                 + _e("; ".join(f"{site} ({f.get('kind')}): " + ", ".join(f"{k} {v}" for k, v in f.items()
                                                                         if k != "kind")
                                for site, f in fronts.items())) + ".</p>")
    return f"<table>{cells}</table>{extra}"


def _limits(live: bool) -> str:
    items = [
        "Radio: log-distance path loss with log-normal shadowing (LoRaSim, FLoRa), LoRaSim sensitivities, "
        "collisions with capture and preamble locking, 8 demodulators per gateway, EU868 duty cycle per node "
        "and gateway; no inter-SF interference, interferers not summed (simulator/channel.py).",
        "Lighting energy: rated power \u00d7 dimming level \u00d7 time (LED drivers are close to linear); "
        "the baseline burns every lamp at rated power from sunset to sunrise.",
        "Irrigation: FAO-56 single-bucket soil water balance with Hargreaves ET0 and a weather generator aimed "
        "at the city's normals; the baseline waters every zone on its schedule whatever the soil and the rain.",
        "Faults are injected as data (simulator/faults.py); each names the alarm it must raise.",
    ]
    if live:
        items.append("Live pacing: the simulated clock runs at most a set number of times faster than real time "
                     "and stops, in real time, before the receive window of any uplink the gateway may answer, "
                     "until the gateway answered or cannot any more (simulator/live.py). The gateway's own "
                     "downlink duty cycle runs on real time, so it is that many times stricter than in the field. "
                     "Latency here is real: hand-over to the gateway until stored at the platform.")
    return "<ul class=note>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def write_report(results: dict[str, Any], out_dir: Path, scenario: Any = None) -> Path:
    """Write out_dir/report.html (plots embedded) and out_dir/plots/<name>.png; returns the HTML's path."""
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    pngs = make_plots(results, scenario)
    for name, png in pngs.items():
        (plots_dir / f"{name}.png").write_bytes(png)
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.part")
    tmp.write_text(render_html(results, pngs), encoding="utf-8")
    tmp.replace(path)
    return path
