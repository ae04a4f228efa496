"""The report's plots: one results object (simulator/metrics.py) -> PNG bytes per question.

(Over 600 lines: one small function per plot, all sharing the style and axes helpers at the top.)

`make_plots(results, scenario)` gives every plot of PLOTS by name;
simulator/report.py puts them in the page and in `plots/`. Matplotlib with
the Agg backend: no display needed. Every number comes from the results
object; nothing here computes what the results do not hold, except unit
conversions and labels.

One file (just over 600 lines): one short function per plot, sharing the styling helpers
at the top; split by plot, each file would hold a function and its imports.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, deterministic PNGs
import matplotlib.pyplot as plt
from matplotlib import patches
from matplotlib.lines import Line2D

DPI = 120
# One palette for the whole report (and the HTML's CSS below).
LIGHT = "#e69f00"  # lamps, energy
WATER = "#0072b2"  # irrigation, water
BASE = "#9a9a9a"  # baselines
GOOD = "#009e73"
BAD = "#d55e00"
INK = "#222222"
GRID = "#e6e6e6"
PLOTS = ("map", "energy", "water", "days", "delivery", "latency", "airtime", "frames", "alarms")


def _style() -> None:
    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "axes.labelsize": 10,
            "axes.edgecolor": "#bbbbbb",
            "axes.grid": True,
            "grid.color": GRID,
            "grid.linewidth": 0.8,
            "axes.axisbelow": True,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "figure.facecolor": "white",
            "savefig.facecolor": "white",
            "font.family": "DejaVu Sans",
        }
    )


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _local_hours(results: dict[str, Any], scenario: Any) -> Callable[[float], str]:
    """Hours since the start -> local clock time "HH:MM" (the scenario's time zone), for axis labels."""
    start = dt.datetime.fromisoformat(results["scenario"]["start"])
    tz = getattr(getattr(scenario, "location", None), "tz", None) or dt.UTC

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
            ax.add_patch(
                patches.Polygon(
                    park.polygon, closed=True, facecolor="#cfe8c6", edgecolor="#8cbf7f", linewidth=1, zorder=1
                )
            )
            cx = sum(p[0] for p in park.polygon) / len(park.polygon)
            cy = min(p[1] for p in park.polygon)
            ax.text(
                cx, cy + 3, park.name, ha="center", va="bottom", fontsize=7.5, color="#3d6b33", style="italic", zorder=3
            )
        for st in scenario.streets:
            xs, ys = zip(*st.points)
            ax.plot(xs, ys, color="#dddddd", linewidth=7, solid_capstyle="round", zorder=2)
            vertical = abs(xs[-1] - xs[0]) < abs(ys[-1] - ys[0])
            if vertical:  # along the line near its southern end, to the right of it
                i = 0 if ys[0] < ys[-1] else -1
                ax.text(
                    xs[i] + 5,
                    ys[i] + 3,
                    st.name,
                    fontsize=6.5,
                    color="#888888",
                    rotation=90,
                    ha="left",
                    va="bottom",
                    zorder=3,
                )
            else:  # above the line at its western end
                i = 0 if xs[0] < xs[-1] else -1
                ax.text(xs[i] + 3, ys[i] + 5, st.name, fontsize=6.5, color="#888888", ha="left", va="bottom", zorder=3)
        lamps = [n for n in scenario.lamps if n.name in delivery] or list(scenario.lamps)
        ctrls = [n for n in scenario.controllers if n.name in delivery] or list(scenario.controllers)

        def worst(n: Any) -> bool:
            d = delivery.get(n.name)
            return d is not None and d["ratio"] < 0.95

        ax.scatter(
            [n.x for n in lamps],
            [n.y for n in lamps],
            s=26,
            color=LIGHT,
            edgecolor="white",
            linewidth=0.6,
            zorder=4,
            label=f"street light ({len(lamps)})",
        )
        ax.scatter(
            [n.x for n in ctrls],
            [n.y for n in ctrls],
            s=70,
            marker="s",
            color=WATER,
            edgecolor="white",
            linewidth=0.8,
            zorder=9,
            label=f"irrigation controller ({len(ctrls)}, {sum(len(c.zones) for c in ctrls)} zones)",
        )
        low = [n for n in list(lamps) + list(ctrls) if worst(n)]
        if low:
            ax.scatter(
                [n.x for n in low],
                [n.y for n in low],
                s=120,
                facecolor="none",
                edgecolor=BAD,
                linewidth=1.2,
                zorder=5,
                label="delivery below 95 %",
            )
        positions = {n.name: (n.x, n.y) for n in scenario.nodes}
    else:
        positions = {}
    gws = results["scenario"]["gateways"]
    ax.scatter(
        [g["x"] for g in gws],
        [g["y"] for g in gws],
        s=170,
        marker="^",
        color=INK,
        edgecolor="white",
        zorder=6,
        label="gateway",
    )
    for g in gws:
        positions[g["id"]] = (g["x"], g["y"])
    all_x = [p[0] for p in positions.values()] + [g["x"] for g in gws]
    all_y = [p[1] for p in positions.values()] + [g["y"] for g in gws]
    if scenario is not None:
        for st in scenario.streets:
            all_x += [p[0] for p in st.points]
            all_y += [p[1] for p in st.points]
    w, h = (max(all_x) - min(all_x)) or 100.0, (max(all_y) - min(all_y)) or 100.0
    ax.set_xlim(min(all_x) - 0.06 * w, max(all_x) + 0.06 * w)
    ax.set_ylim(min(all_y) - 0.14 * h, max(all_y) + 0.1 * h)
    for g in gws:
        ax.annotate(
            g["id"],
            (g["x"], g["y"]),
            xytext=(-9, -9),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=8,
            fontweight="bold",
            color=INK,
            zorder=9,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        )
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
        ax.annotate(
            str(i),
            pos,
            xytext=(10, 10),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=7.5,
            fontweight="bold",
            color="white",
            zorder=10,
            bbox={"boxstyle": "circle,pad=0.25", "facecolor": color, "edgecolor": "white", "linewidth": 0.8},
        )
    side.axis("off")
    side.text(0.0, 1.0, "Faults injected", transform=side.transAxes, fontsize=10, fontweight="bold", va="bottom")
    step = 1.0 / max(8, len(lines) + 1)
    for k, (i, f, color, outcome) in enumerate(lines):
        y = 1.0 - (k + 0.6) * step
        side.text(
            0.0,
            y,
            str(i),
            transform=side.transAxes,
            ha="center",
            va="center",
            fontsize=7.5,
            fontweight="bold",
            color="white",
            bbox={"boxstyle": "circle,pad=0.25", "facecolor": color, "edgecolor": "white"},
        )
        side.text(
            0.07,
            y + 0.012,
            f"{f['kind'].replace('_', ' ')}, {f['at_h']:g} h",
            transform=side.transAxes,
            va="bottom",
            fontsize=8,
            fontweight="bold",
            color=INK,
        )
        side.text(
            0.07, y - 0.012, f"{f['target']}: {outcome}", transform=side.transAxes, va="top", fontsize=7.5, color=color
        )
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
    ax.fill_between(
        t,
        used,
        base,
        where=[b >= u for u, b in zip(used, base)],
        color=LIGHT,
        alpha=0.18,
        step=None,
        label=f"below the baseline, faults included: {en['gross_saved_kwh']:.1f} kWh",
    )
    ax.plot(t, base, color=BASE, linewidth=2, linestyle="--", label="baseline: every lamp at full power, dusk to dawn")
    ax.plot(t, used, color=LIGHT, linewidth=2.6, label="Lumeau: dimming profiles and presence boost")
    _hour_axis(ax, hours, label)
    ax.set_ylabel("energy used, cumulative (kWh)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    dark = en["faults"]["dark_lamp_hours"]
    ax.set_title(
        f"Street lighting energy: the control saved {en['saved_pct']:.0f} % ({en['saved_kwh']:.1f} kWh)"
        + (f"; failed lamps dark {dark:.1f} lamp-h (not a saving)" if dark > 0 else ""),
        fontsize=10,
    )
    return _png(fig)


def plot_water(results: dict[str, Any], scenario: Any) -> bytes:
    wa = results["water"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    base, used = wa["total_baseline_m3"], wa["total_m3"]
    missing = wa["faults"]["not_delivered_m3"]
    wasted = min(base, wa.get("baseline_wasted_m3", 0.0) or 0.0)
    ax.barh([1], [base], color=BASE, height=0.55)
    if wasted > 0:
        ax.barh(
            [1],
            [wasted],
            left=[base - wasted],
            color="#c4c4c4",
            edgecolor="#7a7a7a",
            hatch="///",
            height=0.55,
            label=f"of which drained past the roots: {wasted:.1f} m\u00b3",
        )
    lost = wa.get("lost_m3", 0.0) or 0.0
    ax.barh([0], [used], color=WATER, height=0.55)
    if lost > 0:
        ax.barh(
            [0],
            [min(lost, used)],
            left=[used - min(lost, used)],
            color=BAD,
            height=0.55,
            label=f"lost to leaks and bursts: {lost:.2f} m\u00b3",
        )
    if missing > 0:
        ax.barh(
            [0],
            [missing],
            left=[used],
            fill=False,
            edgecolor=BAD,
            hatch="..",
            height=0.55,
            label=f"not delivered: zones a fault held shut, {missing:.2f} m\u00b3 (not a saving)",
        )
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["Lumeau: soil moisture,\nrain sensor, leak shut-off", "baseline: fixed schedule,\nevery day"])
    right = max(base, used + missing) or 1.0
    ax.set_xlim(0, right * 1.28)
    for y, v in ((1, base), (0, used)):
        ax.text(v + right * 0.01, y, f"{v:.2f} m\u00b3", va="center", fontsize=10, fontweight="bold")
    ax.set_xlabel("water used (m\u00b3)")
    ax.grid(axis="y", visible=False)
    if wasted > 0 or lost > 0 or missing > 0:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    ax.set_title(
        f"Irrigation water: the control saved {wa['saved_m3']:.2f} m\u00b3 ({wa['saved_pct']:.0f} %)"
        + (f" over the {100 * wa['coverage']:.0f} % of zone-time no fault affected" if missing or lost else ""),
        fontsize=10,
    )
    return _png(fig)


def daily_from_series(series: dict[str, Any], key: str) -> list[float]:
    """Per 24 h from the run's start, the increase of a cumulative hourly series (the last day may be part)."""
    out: list[float] = []
    prev = 0.0
    for t, v in zip(series["t_h"], series[key]):
        k = int((t - 1e-9) // 24)
        while len(out) <= k:
            out.append(0.0)
        out[k] += v - prev
        prev = v
    return out


def plot_days(results: dict[str, Any], scenario: Any) -> bytes:
    """The daily series of a run of days, weeks or a season: energy, water and rain, soil and stress."""
    s, days = results["series"], results.get("days") or []
    e_used = [v / 1000 for v in daily_from_series(s, "energy_wh")]
    e_base = [v / 1000 for v in daily_from_series(s, "baseline_energy_wh")]
    water = [v / 1000 for v in daily_from_series(s, "water_l")]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 7.2), sharex=False)
    x = list(range(1, len(e_used) + 1))
    a1.plot(x, e_base, color=BASE, linestyle="--", marker=".", label="baseline, full power dusk to dawn")
    a1.plot(x, e_used, color=LIGHT, marker=".", label="Lumeau")
    a1.set_ylabel("kWh per day")
    a1.xaxis.get_major_locator().set_params(integer=True)
    a1.set_ylim(bottom=0)
    a1.legend(loc="lower left", fontsize=8)
    a1.set_title("Per day of the run (24 h from its start; weather days below)", fontsize=10)
    a2.bar(x, water, color=WATER, label="through the meters, m³")
    a2.set_ylabel("m³ per day")
    a2.set_ylim(0, 1.4 * max(water + [0.001]))  # head room for the legends above the bars
    a2.legend(loc="upper left", fontsize=8)
    dx = list(range(1, len(days) + 1))
    if days:
        r = a2.twinx()
        r.plot(dx, [d["rain_mm"] for d in days], color="#1f5fa8", marker="v", linestyle="none", label="rain, mm")
        r.plot(dx, [d["et0_mm"] for d in days], color="#b3541e", marker=".", label="ET0, mm")
        r.set_ylabel("mm per weather day")
        r.set_ylim(0, 1.4 * max([1.0] + [d["rain_mm"] for d in days] + [d["et0_mm"] for d in days]))
        r.legend(loc="upper right", fontsize=8)
        soil = [None if d["soil_end"] is None else 100 * d["soil_end"] for d in days]
        a3.plot(dx, soil, color=WATER, marker=".", label="soil water at the day's end, % of available")
        a3.set_ylim(0, 105)
        a3.set_ylabel("% of available water")
        t = a3.twinx()
        t.bar(dx, [d["stress_zone_hours"] for d in days], color=BAD, alpha=0.35, label="turf stress, zone-h")
        t.set_ylabel("stress, zone-h")
        t.set_ylim(0, max([1.0] + [1.1 * d["stress_zone_hours"] for d in days]))
        a3.legend(loc="lower left", fontsize=8)
        t.legend(loc="lower right", fontsize=8)
    a3.set_xlabel("day of the run")
    fig.tight_layout()
    return _png(fig)


def plot_delivery(results: dict[str, Any], scenario: Any) -> bytes:
    dv = results["delivery"]
    nodes = sorted(dv.get("by_node", []), key=lambda n: (n["ratio"], n["node"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = range(len(nodes))
    ax.bar(
        x,
        [100 * n["ratio"] for n in nodes],
        color=[LIGHT if n["kind"] == "lighting" else WATER for n in nodes],
        width=0.85,
    )
    ax.axhline(95, color=BAD, linewidth=1.2, linestyle="--")
    lo = min([100 * n["ratio"] for n in nodes] + [95.0])
    ax.set_ylim(max(0.0, math.floor(lo - 3)), 100.4)
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(nodes)} nodes, worst first")
    ax.set_ylabel("uplinks stored / sent (%)")
    handles = [
        patches.Patch(color=LIGHT, label=f"street lights: {100 * dv['by_kind']['lighting']['ratio']:.2f} %"),
        patches.Patch(color=WATER, label=f"irrigation: {100 * dv['by_kind']['irrigation']['ratio']:.2f} %"),
        Line2D([], [], color=BAD, linestyle="--", label="the bar: 95 %"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax.set_title(
        f"Delivery: {dv['stored']:,} of {dv['settled']:,} uplinks stored ({dv['ratio_pct']:.2f} %), "
        f"{dv['lost_on_air']} lost on the air"
    )
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
    live = (results.get("run") or {}).get("link") == "live"
    what = (
        "uplink end \u2192 stored at the city platform (real time, through the real gateway and its upstream)"
        if live
        else "uplink end \u2192 durable commit at the gateway (simulated time)"
    )
    ax.set_title(
        f"Latency: p50 {seconds_text(lat['p50'])}, p95 {seconds_text(lat['p95'])}, max {seconds_text(lat['max'])}"
    )
    ax.set_xlabel(what, fontsize=8.5, color="#555555")
    return _png(fig)


def plot_airtime(results: dict[str, Any], scenario: Any) -> bytes:
    air = results["airtime"]
    nodes = sorted(air.get("per_node", []), key=lambda n: -n["share_of_limit"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sfs = sorted({n["sf"] for n in nodes})
    cmap = plt.get_cmap("viridis")
    color = {sf: cmap(i / max(1, len(sfs) - 1)) for i, sf in enumerate(sfs)}
    ax.bar(
        range(len(nodes)), [100 * n["share_of_limit"] for n in nodes], color=[color[n["sf"]] for n in nodes], width=0.85
    )
    ax.axhline(100, color=BAD, linewidth=1.5)
    limits = ", ".join(f"{k} {100 * v:g} %" for k, v in air.get("duty_cycle", {}).items())
    ax.text(
        len(nodes) - 0.5,
        98,
        f"the law: EU868 duty cycle ({limits} of the time)",
        color=BAD,
        ha="right",
        va="top",
        fontsize=8,
    )
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(nodes)} nodes, busiest first")
    ax.set_ylabel("airtime used (% of the allowed)")
    ax.legend(
        handles=[patches.Patch(color=color[sf], label=f"SF{sf}") for sf in sfs],
        loc="center right",
        ncol=1,
        title="spreading factor",
        fontsize=8,
        title_fontsize=8,
    )
    ax.set_title(
        f"Airtime: the busiest node used {air['max_share_of_limit_pct']:.1f} % of its allowance "
        f"(mean {air['mean_share_of_limit_pct']:.1f} %)"
    )
    return _png(fig)


def plot_frames(results: dict[str, Any], scenario: Any) -> bytes:
    fr = results["frames"]
    items = sorted(fr["largest"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(items) + 1.6))
    ax.barh(
        [k for k, _ in items],
        [v for _, v in items],
        color=[BAD if v > fr["budget"] else GOOD for _, v in items],
        height=0.6,
    )
    ax.axvline(fr["budget"], color=BAD, linewidth=1.5, linestyle="--")
    ax.text(fr["budget"], len(items) - 0.4, f" budget {fr['budget']} B\n (EU868 SF12)", color=BAD, fontsize=8, va="top")
    for i, (_k, v) in enumerate(items):
        ax.text(v - 0.6, i, f"{v} B", va="center", ha="right", color="white", fontweight="bold", fontsize=9)
    ax.set_xlim(0, max([fr["budget"]] + [v for _, v in items]) * 1.2)
    ax.set_xlabel("largest frame put on the air (bytes, header and MIC included)")
    ax.grid(axis="y", visible=False)
    ax.set_title(
        "Largest frame per message type"
        + (": all within the budget" if not fr["over_budget"] else f": {fr['over_budget']} frames over the budget")
    )
    return _png(fig)


def plot_alarms(results: dict[str, Any], scenario: Any) -> bytes:
    faults = results["alarms"]["faults"]
    hours = results["scenario"]["hours"]
    label = _local_hours(results, scenario)
    lost_none = nothing_lost(results)
    durations = {}
    for sf in getattr(getattr(scenario, "faults", None), "faults", ()) or ():
        durations[sf.index] = sf.duration_s
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(faults) + 1.6))
    ys = list(range(len(faults)))[::-1]

    def note(x: float, y: float, text: str, color: str, bold: bool = False) -> None:
        ax.annotate(
            text,
            (x, y),
            xytext=(9, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=color,
            fontweight="bold" if bold else "normal",
        )

    for y, f in zip(ys, faults):
        at = f["at_h"]
        dur_h = durations.get(f["index"])
        dur_h = dur_h / 3600 if dur_h else None
        if f["kind"] == "gateway_restart":
            dur_h = float(f["params"].get("downtime_s", 60)) / 3600
        if f["expected"] is None:
            width = max(dur_h or 0.0, 0.08)
            ax.barh([y], [width], left=[at], color=BASE, height=0.45)
            note(
                at + width,
                y,
                f"{duration_text((dur_h or 0) * 3600)} down; no alarm expected; "
                + ("no record lost" if lost_none else "RECORDS LOST"),
                "#555555" if lost_none else BAD,
            )
            continue
        ax.scatter([at], [y], marker="v", s=70, color=INK, zorder=3)
        if f.get("manifested") is False and not f["detected"]:
            note(at, y, f"latent: it never showed, so no {f['expected']} was due (why: the fault table)", "#555555")
        elif f["detected"] and f["delay_s"] is not None:
            end = at + f["delay_s"] / 3600
            ax.plot([at, end], [y, y], color=GOOD, linewidth=2.5, zorder=2)
            ax.scatter([end], [y], marker="o", s=60, color=GOOD, zorder=3)
            note(end, y, f"{f['expected']} after {duration_text(f['delay_s'])}", GOOD)
        else:
            ax.scatter([at], [y], marker="x", s=80, color=BAD, zorder=4)
            note(at, y, f"{f['expected']}: NOT RAISED", BAD, bold=True)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{f['kind'].replace('_', ' ')}\n{f['target']}" for f in faults], fontsize=8)
    _hour_axis(ax, hours, label)
    ax.set_ylim(-0.7, len(faults) - 0.3)
    ax.grid(axis="y", visible=False)
    al = results["alarms"]
    ax.set_title(
        f"Alarms against faults injected: {al['detected']} of {al['expected']} raised "
        f"(\u25bc injected, \u25cf stored)" + (f", {al['latent']} latent" if al.get("latent") else "")
    )
    return _png(fig)


def nothing_lost(results: dict[str, Any]) -> bool:
    """Every uplink a gateway heard reached the store and the platform (the check for restarts and outages)."""
    u = results["totals"]["uplinks"]
    return (
        bool(results["totals"].get("stored_equals_heard"))
        and u.get("queued_at_end", 0) == 0
        and u.get("at_platform", u.get("stored")) == u.get("stored")
    )


def seconds_text(s: float) -> str:
    """A latency for people: 0.57 s, 35 ms, 1.2 ms."""
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1000
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def duration_text(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


PLOTTERS: dict[str, Callable[[dict[str, Any], Any], bytes]] = {
    "map": plot_map,
    "energy": plot_energy,
    "water": plot_water,
    "days": plot_days,
    "delivery": plot_delivery,
    "latency": plot_latency,
    "airtime": plot_airtime,
    "frames": plot_frames,
    "alarms": plot_alarms,
}


def make_plots(results: dict[str, Any], scenario: Any = None) -> dict[str, bytes]:
    """Every plot as PNG bytes, by name (PLOTS)."""
    _style()
    return {name: PLOTTERS[name](results, scenario) for name in PLOTS}
