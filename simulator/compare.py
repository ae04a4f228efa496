"""Two runs side by side: `lumeau sim compare A.json B.json` (results of `lumeau sim run --json`
or the demo's `results.json`).

`rows(a, b)` picks the figures that matter to someone comparing two runs --
delivery, the control's savings and what faults destroyed, alarms, airtime,
frames, totals -- as (section, label, value in A, value in B); `table()`
prints them with B - A and a mark on every row that differs; `plot()`
draws the percentages as grouped bars (Matplotlib, Agg). A figure a file
does not hold (results written before it existed) shows as "-".
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CompareError(ValueError):
    """A file that is not a results object; the message names the file and why."""


def load_results(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CompareError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CompareError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), dict) for k in ("scenario", "delivery")):
        raise CompareError(f"{path}: not a simulator results object (lumeau sim run --json, or results.json)")
    return doc


def _get(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


# (section, label, path in the results, format); the order is the table's
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("run", "scenario", "scenario.name", "s"),
    ("run", "seed", "scenario.seed", "d"),
    ("run", "simulated hours", "scenario.hours", "g"),
    ("run", "lamps / controllers", "", "s"),
    ("delivery", "uplinks stored, %", "delivery.ratio_pct", ".2f"),
    ("delivery", "uplinks settled", "delivery.settled", ",d"),
    ("delivery", "lost on the air", "delivery.lost_on_air", ",d"),
    ("delivery", "latency p95, s", "latency_s.p95", ".3f"),
    ("energy", "saved by the control, %", "energy.saved_pct", ".1f"),
    ("energy", "saved by the control, kWh", "energy.saved_kwh", ".2f"),
    ("energy", "lamp-night no fault affected, %", "energy.coverage", "%"),
    ("energy", "gross saving (faults included), %", "energy.gross_saved_pct", ".1f"),
    ("energy", "dark lamp-hours (faults)", "energy.faults.dark_lamp_hours", ".1f"),
    ("water", "saved by the control, %", "water.saved_pct", ".1f"),
    ("water", "saved by the control, m3", "water.saved_m3", ".3f"),
    ("water", "zone-time no fault affected, %", "water.coverage", "%"),
    ("water", "gross saving (faults included), %", "water.gross_saved_pct", ".1f"),
    ("water", "lost to leaks and bursts, m3", "water.lost_m3", ".3f"),
    ("water", "not delivered to affected zones, m3", "water.faults.not_delivered_m3", ".3f"),
    ("water", "turf stress, zone-h (control)", "water.stress_zone_hours", ".1f"),
    ("water", "turf stress, zone-h (schedule)", "water.baseline_stress_zone_hours", ".1f"),
    ("alarms", "faults that raised their alarm", "alarms.detected", "d"),
    ("alarms", "faults expected to", "alarms.expected", "d"),
    ("alarms", "latent faults", "alarms.latent", "d"),
    ("alarms", "alarms with no fault behind them", "", "d"),
    ("airtime", "largest share of a node's limit, %", "airtime.max_share_of_limit_pct", ".2f"),
    ("airtime", "mean share, %", "airtime.mean_share_of_limit_pct", ".3f"),
    ("airtime", "total on the air, s", "airtime.total_s", ".1f"),
    ("frames", "largest frame, B", "", "d"),
    ("frames", "frames over the budget", "frames.over_budget", "d"),
    ("totals", "platform = nodes' own counters, all heard", "totals.agree", "s"),
    ("totals", "platform's share of the true water, %", "totals.truth.platform_share_water", "%"),
    ("warnings", "warnings", "", "d"),
    ("warnings", "path-loss model", "scenario.path_loss.model", "s"),
)

_DERIVED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "lamps / controllers": lambda d: (
        f"{_get(d, 'scenario.lamps')} / {_get(d, 'scenario.controllers')}" if "lamps" in d["scenario"] else None
    ),
    "warnings": lambda d: len(d["warnings"]) if isinstance(d.get("warnings"), list) else None,
    "alarms with no fault behind them": lambda d: (
        len(d["alarms"]["unexpected"]) if isinstance(_get(d, "alarms.unexpected"), list) else None
    ),
    "largest frame, B": lambda d: max((_get(d, "frames.largest") or {}).values(), default=None),
}


def rows(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, Any, Any, str]]:
    """(section, label, value in A, value in B, format) for every figure of FIGURES."""
    out = []
    for section, label, path, fmt in FIGURES:
        get = _DERIVED.get(label) or (lambda d, p=path: _get(d, p))  # type: ignore[misc]
        out.append((section, label, get(a), get(b), fmt))
    return out


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if fmt == "%" and isinstance(v, (int, float)):
        return f"{100 * v:.1f}"
    if fmt == "s" or not isinstance(v, (int, float)):
        return str(v)
    return format(v, fmt)


def _delta(va: Any, vb: Any, fmt: str) -> str:
    if isinstance(va, bool) or isinstance(vb, bool) or not isinstance(va, (int, float)):
        return ""
    if not isinstance(vb, (int, float)) or fmt == "s":
        return ""
    d = vb - va
    if fmt == "%":
        return f"{100 * d:+.1f}"
    f = fmt.replace(",", "")
    return format(d, "+" + (f if f != "g" else "g"))


def table(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """The comparison as text: one line per figure, `*` where A and B differ."""
    body = []
    for section, label, va, vb, fmt in rows(a, b):
        sa, sb = _fmt(va, fmt), _fmt(vb, fmt)
        mark = "*" if sa != sb else " "
        body.append((mark, f"{section}: {label}", sa, sb, _delta(va, vb, fmt) if mark == "*" else ""))
    w0 = max(len(r[1]) for r in body)
    w1 = max(len(name_a), *(len(r[2]) for r in body))
    w2 = max(len(name_b), *(len(r[3]) for r in body))
    lines = [f"  {'':{w0}}  {name_a:>{w1}}  {name_b:>{w2}}  B - A"]
    for mark, label, sa, sb, d in body:
        lines.append(f"{mark} {label:{w0}}  {sa:>{w1}}  {sb:>{w2}}  {d}".rstrip())
    n = sum(1 for r in body if r[0] == "*")
    lines.append(f"{n} of {len(body)} figures differ (*)")
    return "\n".join(lines)


# the percentages worth a bar each
PLOT_FIGURES = (
    ("uplinks stored", "delivery.ratio_pct"),
    ("energy saved\nby the control", "energy.saved_pct"),
    ("water saved\nby the control", "water.saved_pct"),
    ("energy, gross\n(faults incl.)", "energy.gross_saved_pct"),
    ("water, gross\n(faults incl.)", "water.gross_saved_pct"),
    ("largest airtime\nshare of limit", "airtime.max_share_of_limit_pct"),
)


def plot(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> bytes:
    """Grouped bars of the percentages of both runs (PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lab for lab, _ in PLOT_FIGURES]

    def values(d: dict[str, Any]) -> list[float]:
        out = []
        for _lab, path in PLOT_FIGURES:
            v = _get(d, path)
            out.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0.0)
        return out

    va, vb = values(a), values(b)
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.38
    bars_a = ax.bar([i - width / 2 for i in x], va, width, label=name_a, color="#9a9a9a")
    bars_b = ax.bar([i + width / 2 for i in x], vb, width, label=name_b, color="#0072b2")
    for bars in (bars_a, bars_b):
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, max(100.0, *va, *vb) * 1.12)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{name_a} against {name_b}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
