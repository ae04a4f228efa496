"""The gateway's ADR over a simulated run: the `adr` section of the results (simulator/metrics.py)."""

from __future__ import annotations

from typing import Any


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def section(sim: Any, report: Any, series: dict[str, list]) -> dict[str, Any]:
    """The gateway's ADR at work (scenario [adr]): SFs before and after, airtime saved, DER.

    before: each node's provisioned SF; after: its radio's SF and TX power at the end. Airtime
    saved: every uplink put on the air, at the SF it was sent at, against the same frames at the
    provisioned SF. DER (data extraction rate): uplinks the gateway stored / uplinks settled on
    the air, over the run and over its first and last quarter (series are hourly, cumulative).
    """
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    power: dict[str, int] = {}
    base_ms = used_ms = 0.0
    for sn in sim.nodes.values():
        before[f"SF{sn.spec.sf}"] = before.get(f"SF{sn.spec.sf}", 0) + 1
        after[f"SF{sn.radio.sf}"] = after.get(f"SF{sn.radio.sf}", 0) + 1
        power[f"{sn.radio.tx_power}dBm"] = power.get(f"{sn.radio.tx_power}dBm", 0) + 1
        st = sim.air.nodes.get(sn.spec.node_id)
        if st is not None:
            base_ms += sum(sim.channel.airtime_us(n, sn.spec.sf) for _c, _t, n in st.frames) / 1000.0
        used_ms += sim.channel.airtime_used_ms(sn.spec.node_id)

    def der(i0: int, i1: int) -> float | None:
        settled, stored = series["settled"], series["stored"]
        if not settled or i1 <= i0:
            return None
        a = settled[i1] - (settled[i0] if i0 >= 0 else 0)
        b = stored[i1] - (stored[i0] if i0 >= 0 else 0)
        return round(_ratio(b, a), 4) if a else None

    n = len(series["settled"])
    q = max(1, n // 4)

    def by_sf(d: dict[str, int]) -> dict[str, int]:
        return dict(sorted(d.items(), key=lambda kv: int(kv[0][2:])))

    stored_n = len({(r.node_id, r.counter) for r in report.stored})
    settled_n = sum(s.delivered + s.lost for s in sim.air.nodes.values())
    return {
        "policy": dict(sim.sc.adr),
        "sf_before": by_sf(before),
        "sf_after": by_sf(after),
        "tx_power_after": dict(sorted(power.items(), key=lambda kv: -int(kv[0][:-3]))),
        "airtime_s": round(used_ms / 1000.0, 3),
        "airtime_at_start_sf_s": round(base_ms / 1000.0, 3),
        "airtime_saved_pct": round(100.0 * _ratio(base_ms - used_ms, base_ms), 2),
        "der": round(_ratio(stored_n, settled_n), 4),
        "der_first_quarter": der(-1, q - 1) if n else None,
        "der_last_quarter": der(n - 1 - q, n - 1) if n > q else None,
        "gateway": {k[4:]: v for k, v in sorted(report.counters.items()) if k.startswith("adr_")},
    }
