"""The map of a gateway plan (`lumeau plan --map`): nodes coloured by delivery, marker by SF, sites marked.

Matplotlib, Agg backend, as the report's plots (simulator/report_plots.py).
"""

from __future__ import annotations

import io

from simulator.planning import Evaluation, Planner

# one marker per spreading factor, fastest to slowest
MARKERS = {7: "o", 8: "s", 9: "^", 10: "D", 11: "v", 12: "P"}


def plot(planner: Planner, ev: Evaluation, title: str = "") -> bytes:
    """The plan as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 7.5), dpi=110)
    try:
        sc = planner.sc
        for st in sc.streets:
            xs, ys = zip(*st.points)
            ax.plot(xs, ys, color="0.85", lw=1, zorder=0)
        for pk in sc.parks:
            xs, ys = zip(*(*pk.polygon, pk.polygon[0]))
            ax.fill(xs, ys, color="#e3f2e1", zorder=0)
        sc_art = None
        for sf, marker in MARKERS.items():
            idx = [i for i, s in enumerate(ev.sf) if s == sf]
            if not idx:
                continue
            sc_art = ax.scatter(
                [sc.nodes[i].x for i in idx],
                [sc.nodes[i].y for i in idx],
                c=[ev.delivery[i] for i in idx],
                cmap="RdYlGn",
                vmin=min(0.9, min(ev.delivery)),
                vmax=1.0,
                marker=marker,
                s=22,
                edgecolors="0.3",
                linewidths=0.3,
                label=f"SF{sf} ({len(idx)})",
                zorder=2,
            )
        if sc_art is not None:
            fig.colorbar(sc_art, ax=ax, label="expected delivery per uplink", shrink=0.8)
        chosen = set(ev.sites)
        for c, site in enumerate(planner.sites):
            on = c in chosen
            ax.scatter(
                [site.x],
                [site.y],
                marker="*" if on else "x",
                s=260 if on else 40,
                c="#1f4fd1" if on else "0.5",
                edgecolors="k" if on else None,
                linewidths=0.6 if on else 1.0,
                zorder=3,
            )
            ax.annotate(site.id, (site.x, site.y), xytext=(5, 5), textcoords="offset points", fontsize=7)
        ax.scatter([], [], marker="*", s=120, c="#1f4fd1", edgecolors="k", label="chosen site")
        ax.scatter([], [], marker="x", s=40, c="0.5", label="candidate not chosen")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m east)")
        ax.set_ylabel("y (m north)")
        ax.set_title(title or f"{sc.name}: {len(chosen)} gateways, DER {ev.der:.4f}", fontsize=10)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4, fontsize=7, frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)
