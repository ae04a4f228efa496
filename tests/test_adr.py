"""gateway/adr.py: the network side of ADR (the algorithm, its state machine, its wiring)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import adr as adr_mod
from gateway.adr import CONFIG, CONFIRM, Adr, AdrObserver
from gateway.model import Reception, Record
from protocol import messages as m

N = 0x00A1B2C3


def feed(a: Adr, start: int, count: int, snr: float, sf: int, node: int = N) -> list[adr_mod.Action]:
    out = []
    for c in range(start, start + count):
        act = a.observe(node, c, snr, sf)
        if act is not None:
            out.append(act)
    return out


# ---------------------------------------------------------------- the margin rule


def test_chirpstack_rule_sf_first_in_3db_steps() -> None:
    # SF12 needs -20 dB; heard at +1 dB with a 10 dB margin: 11 dB = 3 full steps: SF12 -> SF9
    a = Adr()
    acts = feed(a, 1, 20, 1.0, 12)
    assert len(acts) == 1 and acts[0].kind == CONFIG
    assert acts[0].settings == {m.CFG_SF: 9}


def test_nothing_before_min_uplinks() -> None:
    a = Adr(min_uplinks=20)
    assert feed(a, 1, 19, 5.0, 12) == []
    assert feed(a, 20, 1, 5.0, 12)


def test_power_only_at_the_fastest_sf() -> None:
    # at SF7 (needs -7.5) heard at +10.5: margin 8 dB = 2 steps of 2 dB: 14 -> 10 dBm, SF unchanged
    a = Adr()
    acts = feed(a, 1, 20, 10.5, 7)
    assert acts[0].settings == {m.CFG_TX_POWER: 10}
    # at SF8 with lots of margin: SF first, all the way, then power with what is left
    b = Adr()
    acts = feed(b, 1, 20, 20.0, 8)
    assert acts[0].settings == {m.CFG_SF: 7, m.CFG_TX_POWER: 4}  # 20 + 7.5 - 10 = 17.5 dB at SF7: 5 steps
    assert b.settings(N) == (8, 14)  # until the node is heard at SF7, the gateway believes SF8 / 14 dBm


def test_negative_margin_raises_power_then_sf() -> None:
    a = Adr()
    assert a.target(-5.0, 9, 6) == (9, 10)  # at 6 dBm, SF9 needs -12.5: margin -2.5 dB: power first, 2 x 2 dB
    b = Adr()
    acts = feed(b, 1, 20, -4.0, 9)  # at 14 dBm already: margin -1.5 dB -> the SF goes up (SF10 needs -15: fits)
    assert acts[0].settings == {m.CFG_SF: 10}
    c = Adr(raise_sf=False)  # ChirpStack's way: never a slower SF from the network
    assert feed(c, 1, 20, -4.0, 9) == []


def test_statistic_mean_against_max() -> None:
    snrs = [-10.0] * 19 + [2.0]
    a, b = Adr(), Adr(statistic="mean")
    for i, s in enumerate(snrs, 1):
        ra = a.observe(N, i, s, 12)
        rb = b.observe(N, i, s, 12)
    assert ra is not None and ra.settings == {m.CFG_SF: 8}  # max 2 dB: 12 dB over -20 and 10 = 4 steps (12 -> 8)
    assert rb is None  # mean -9.4 dB: 0.6 dB over SF12's floor and margin, not enough for SF11


def test_channel_floor_table_is_followed() -> None:
    # a receiver whose SF11 is more sensitive than its SF12 (LoRaSim's table): SF11 is chosen at the edge
    floor = {7: -9.5, 8: -10.25, 9: -14.25, 10: -15.75, 11: -17.5, 12: -16.25}
    a = Adr(margin_db=0.0, required_snr_db=floor)
    acts = feed(a, 1, 20, -16.5, 12)
    assert acts[0].settings == {m.CFG_SF: 11}


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="statistic"):
        Adr(statistic="median")
    with pytest.raises(ValueError, match="required_snr_db"):
        Adr(required_snr_db={12: -20.0})
    with pytest.raises(ValueError, match="sf_policy"):
        Adr(sf_policy="random")
    with pytest.raises(ValueError):
        Adr(min_uplinks=30, history=20)


# ---------------------------------------------------------------- never unreachable


def test_change_confirmed_at_first_uplink_heard_then_final() -> None:
    a = Adr()
    (act,) = feed(a, 1, 20, 1.0, 12)
    assert act.settings == {m.CFG_SF: 9}
    # the node applied it: its next uplink is at SF9 -> the gateway confirms it (any downlink)
    conf = a.observe(N, 21, 1.0, 9)
    assert conf is not None and conf.kind == CONFIRM
    assert a.settings(N) == (9, 14)
    feed(a, 22, adr_mod.FALLBACK_UPLINKS, 1.0, 9)
    assert a.snapshot()[N]["trial"] is False and a.counts["fallbacks"] == 0


def test_node_stepping_back_is_followed_and_penalised() -> None:
    a = Adr()
    feed(a, 1, 20, 1.0, 12)
    assert a.observe(N, 21, 1.0, 9).kind == CONFIRM  # type: ignore[union-attr]
    # uplinks at SF9 lost (counters 22..27), the node steps back to SF12: heard again at 28
    assert a.observe(N, 28, 1.0, 12) is None
    assert a.settings(N) == (12, 14)
    assert a.counts["fallbacks"] == 1
    assert a.snapshot()[N]["penalty_db"] == 3.0
    # and waits 2 x min_uplinks; the next change needs 3 dB more room: 11 - 3 = 8 dB -> 2 steps only
    assert a.snapshot()[N]["wait"] == 39 and a.counts["fallbacks_with_loss"] == 1  # 40 with this one
    assert feed(a, 29, 39, 1.0, 12) == []
    acts = feed(a, 68, 1, 1.0, 12)
    assert acts[0].settings == {m.CFG_SF: 10}


def test_missed_confirmation_steps_back_without_penalty() -> None:
    a = Adr()
    feed(a, 1, 20, 1.0, 12)
    a.observe(N, 21, 1.0, 9)
    feed(a, 22, 3, 1.0, 9)  # heard fine, but the node never heard our confirmation
    assert a.observe(N, 25, 1.0, 12) is None  # stepped back
    assert a.counts["fallbacks"] == 1 and a.snapshot()[N]["penalty_db"] == 0.0
    assert a.counts["fallbacks_with_loss"] == 0 and a.snapshot()[N]["wait"] == 39


def test_power_only_fallback_seen_as_a_counter_gap() -> None:
    a = Adr()
    (act,) = feed(a, 1, 20, 10.5, 7)
    assert act.settings == {m.CFG_TX_POWER: 10}
    assert a.observe(N, 21, 6.5, 7).kind == CONFIRM  # type: ignore[union-attr]
    assert a.observe(N, 21 + adr_mod.FALLBACK_UPLINKS + 1, 10.5, 7) is None
    assert a.settings(N) == (7, 14) and a.counts["fallbacks"] == 1


def test_lost_config_is_forgotten_and_decided_again() -> None:
    a = Adr()
    feed(a, 1, 20, 1.0, 12)
    # the CONFIG never reached the node: it keeps sending at SF12
    assert feed(a, 21, adr_mod.FALLBACK_UPLINKS, 1.0, 12) == []
    acts = feed(a, 21 + adr_mod.FALLBACK_UPLINKS, 1, 1.0, 12)
    assert a.counts["lost_configs"] == 1
    assert [x.kind for x in acts] == [CONFIG]  # sent again: the history at SF12 still holds


def test_config_still_queued_is_not_lost() -> None:
    a = Adr()
    feed(a, 1, 20, 1.0, 12)
    for c in range(21, 21 + 3 * adr_mod.FALLBACK_UPLINKS):  # the gateway's duty cycle holds it back
        assert a.observe(N, c, 1.0, 12, held=True) is None
    assert a.counts["lost_configs"] == 0 and a.snapshot()[N]["pending"] == (9, 14)


def test_max_active_bounds_the_changes_under_way() -> None:
    a = Adr(min_uplinks=1, history=1, max_active=1)
    assert a.observe(1, 1, 1.0, 12) is not None  # node 1: CONFIG
    assert a.observe(2, 1, 1.0, 12) is None  # node 2 waits: one change under way
    assert a.observe(1, 2, 1.0, 9).kind == CONFIRM  # type: ignore[union-attr]
    assert a.observe(2, 2, 1.0, 12) is None  # node 1 on trial: still under way
    final = feed(a, 3, adr_mod.FALLBACK_UPLINKS, 1.0, 9, node=1)
    assert [x.settings for x in final] == [{m.CFG_SF: 8}]  # final, and its next step (3.5 dB at SF9) at once
    assert a.observe(2, 3, 1.0, 12) is None
    a.forget(1)
    act = a.observe(2, 4, 1.0, 12)
    assert act is not None and act.settings == {m.CFG_SF: 9}
    with pytest.raises(ValueError, match="max_active"):
        Adr(max_active=-1)


def test_sf_changed_without_us_is_taken() -> None:
    a = Adr()
    feed(a, 1, 5, 1.0, 12)
    a.observe(N, 6, 1.0, 10)  # a technician set SF10 over BLE
    assert a.settings(N) == (10, 14) and a.snapshot()[N]["uplinks"] == 1


def test_copies_refine_the_snr_and_decide_nothing() -> None:
    a = Adr(min_uplinks=1, history=1)
    assert a.observe(N, 1, -30.0, 12) is None  # margin -20: nothing to raise at SF12 / 14 dBm
    act = a.observe(N, 1, 1.0, 12)  # the same frame heard better by another radio
    assert act is None
    act = a.observe(N, 2, -30.0, 12)
    assert act is None  # history 1: only the new uplink counts


def test_ignores_links_without_radio_metadata() -> None:
    a = Adr(min_uplinks=1, history=1)
    assert a.observe(N, 1, None, None) is None
    assert a.observe(N, 2, float("nan"), 12) is None
    assert a.settings(N) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 40),
            st.one_of(st.none(), st.floats(-60, 40), st.just(float("nan"))),
            st.one_of(st.none(), st.integers(0, 20)),
        ),
        max_size=80,
    )
)
def test_any_uplink_sequence_gives_legal_settings(seq: list[tuple[int, int, Any, Any]]) -> None:
    a = Adr(min_uplinks=2, history=4, sf_policy="balanced")
    for node, counter, snr, sf in seq:
        act = a.observe(node, counter, snr, sf)
        if act is not None:
            assert act.kind in (CONFIG, CONFIRM)
            for k, v in act.settings.items():
                assert k in (m.CFG_SF, m.CFG_TX_POWER)
                lo, hi = (m.SF_MIN, m.SF_MAX) if k == m.CFG_SF else (m.TX_POWER_MIN, m.TX_POWER_MAX)
                assert lo <= v <= hi
            if act.kind == CONFIG:
                m.encode(m.CONFIG, {m.CF_SETTINGS: dict(act.settings)})  # a body the node accepts


# ---------------------------------------------------------------- balanced SFs


def test_balanced_spreads_the_airtime() -> None:
    # 60 nodes that all could use SF7: "fastest" puts them all there; "balanced" uses the other SFs
    # too (each SF is its own channel), more nodes on the faster SFs (their airtime is shorter)
    fast, bal = Adr(min_uplinks=1, history=1), Adr(min_uplinks=1, history=1, sf_policy="balanced")
    got: dict[int, int] = {}
    for node in range(60):
        act = fast.observe(node, 1, 20.0, 12)
        assert act is not None and act.settings[m.CFG_SF] == 7
        bal.observe(node, 1, 20.0, 12)
    for s in bal.plan().values():
        got[s] = got.get(s, 0) + 1
    assert sum(got.values()) == 60 and len(got) >= 4
    assert got[7] > got[8] > got[9] > 0
    # a node the plan puts on a slower SF is moved there (with the power that SF needs)
    a = Adr(min_uplinks=1, history=1, sf_policy="balanced")
    assert a.target(20.0, 7, 14, want=10) == (10, 14)
    assert a.target(-16.0, 12, 14, want=7) == (12, 14)  # SF7 does not fit: the plan is not followed


# ---------------------------------------------------------------- wiring


class FakeDownlinks:
    def __init__(self) -> None:
        self.queued: list[tuple[int, int, dict]] = []
        self.seen: list[tuple[str, int, bool]] = []

    async def enqueue(self, node_id: int, mtype: int, body: dict, ttl_s: float | None = None) -> Any:
        await asyncio.sleep(0)
        self.queued.append((node_id, mtype, body))

    def on_uplink(self, record: Record, reception: Reception) -> None:
        self.seen.append(("up", record.counter, bool(self.queued)))

    def on_duplicate(self, node_id: int, counter: int, reception: Reception) -> None:
        self.seen.append(("dup", counter, bool(self.queued)))


def _rec(counter: int) -> Record:
    return Record(N, counter, m.LIGHT, "light", 0.0, {}, {})


def _rx(snr: float, sf: int) -> Reception:
    return Reception(b"", "udp", "gw", 0.0, rssi=-100.0, snr=snr, sf=sf)


async def test_observer_queues_the_config_before_the_downlinks_hear_the_uplink() -> None:
    dl = FakeDownlinks()
    obs = AdrObserver(Adr(min_uplinks=1, history=1), dl)
    obs.on_uplink(_rec(1), _rx(1.0, 12))
    await obs.idle()
    await asyncio.sleep(0)
    assert dl.queued == [(N, m.CONFIG, {m.CF_SETTINGS: {m.CFG_SF: 9}})]
    assert dl.seen == [("up", 1, True)]  # on_uplink came after the CONFIG was queued: it goes in this RX1
    obs.on_duplicate(N, 2, _rx(1.0, 9))  # first heard at SF9 as a copy: confirmed with a TIME
    await obs.idle()
    assert dl.queued[-1] == (N, m.TIME, {})
    assert obs.adr.counts == {"changes": 1, "confirms": 1, "fallbacks": 0, "fallbacks_with_loss": 0, "lost_configs": 0}


async def test_observer_survives_a_full_queue() -> None:
    class Full(FakeDownlinks):
        async def enqueue(self, node_id: int, mtype: int, body: dict, ttl_s: float | None = None) -> Any:
            raise ValueError("node already has 16 downlinks waiting")

    dl = Full()
    obs = AdrObserver(Adr(min_uplinks=1, history=1), dl)
    obs.on_uplink(_rec(1), _rx(1.0, 12))
    await obs.idle()
    await asyncio.sleep(0)
    assert obs.refused == 1 and dl.seen == [("up", 1, False)]


# ---------------------------------------------------------------- configuration and service


def test_config_section_defaults_and_errors(tmp_path: Any) -> None:
    import tomllib

    from gateway.config import ConfigError, example_config, parse_config

    cfg = parse_config(tomllib.loads(example_config()), tmp_path / "g.toml")
    assert cfg.adr.enabled is False and cfg.adr.margin_db == 10.0 and cfg.adr.sf_policy == "fastest"
    for bad, msg in (
        ({"min_uplinks": 30}, "adr.min_uplinks: larger than adr.history"),
        ({"statistic": "median"}, "adr.statistic"),
        ({"tx_power_min": 12, "tx_power_max": 8}, "adr.tx_power_min"),
        ({"margin": 3}, "did you mean 'margin_db'"),
    ):
        data = tomllib.loads(example_config())
        data["adr"].update(bad)
        with pytest.raises(ConfigError, match=msg):
            parse_config(data, tmp_path / "g.toml")


def test_every_adr_key_reaches_the_algorithm() -> None:
    import dataclasses

    from gateway.config import AdrSection

    keys = {f.name for f in dataclasses.fields(AdrSection)} - {"enabled"}
    assert keys == set(adr_mod.ADR_KEYS)
    Adr(**{k: getattr(AdrSection(), k) for k in adr_mod.ADR_KEYS})


# ---------------------------------------------------------------- the node's step-back (firmware/runtime.py)


def _node_world(main: Any) -> Any:
    from test_runtime import run

    return run(main)


def test_node_steps_back_after_uplinks_without_a_downlink() -> None:
    from test_runtime import World

    async def main(clock: Any) -> Any:
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 60, m.CFG_SF: 7, m.CFG_TX_POWER: 8}}))
        while node.radio.sf != 7:
            await clock.run_for(100)
        changed = (node.radio.sf, node.radio.tx_power)
        tx0 = node.tx
        for _ in range(12 * 60):  # no downlink at all: when does it step back?
            await clock.run_for(1000)
            if node.radio.sf != 7:
                break
        after = (node.radio.sf, node.radio.tx_power)
        uplinks = node.tx - tx0
        node = w.boot()  # and a reboot keeps the safe settings
        await clock.run_for(1000)
        rebooted = node.radio.sf
        await w.stop()
        return changed, after, uplinks, rebooted

    changed, after, uplinks, rebooted = _node_world(main)
    assert changed == (7, 8)
    assert after == (9, 14) and uplinks == adr_mod.FALLBACK_UPLINKS  # the gateway's FALLBACK_UPLINKS
    assert rebooted == 9


def test_node_keeps_the_change_once_a_downlink_is_heard() -> None:
    from test_runtime import MIN, World

    async def main(clock: Any) -> Any:
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 60, m.CFG_SF: 7}}))
        await clock.run_for(2 * MIN)
        w.gw.pending.append((m.TIME, {0: 1_800_000_000}))  # the gateway's confirmation: any downlink
        await clock.run_for(15 * MIN)
        kept = node.radio.sf
        node = w.boot()
        await clock.run_for(1000)
        rebooted = node.radio.sf
        await w.stop()
        return kept, rebooted

    assert _node_world(main) == (7, 7)


def test_node_rebooting_on_trial_comes_back_to_what_worked() -> None:
    from test_runtime import MIN, World

    async def main(clock: Any) -> Any:
        w = World(clock)
        node = w.boot()
        await clock.run_for(30_000)
        w.gw.pending.append((m.CONFIG, {0: {m.CFG_SF: 12}}))
        await clock.run_for(2 * MIN)
        trial = node.radio.sf
        node = w.boot()
        await clock.run_for(1000)
        rebooted = node.radio.sf
        await w.stop()
        return trial, rebooted

    assert _node_world(main) == (12, 9)


# ---------------------------------------------------------------- simulator and benchmark


def test_scenario_adr_section_is_checked() -> None:
    from simulator import scenario as sc

    text = (ROOT / "simulator" / "scenarios" / "city_adr.toml").read_text()
    s = sc.loads(text)
    assert s.adr == {"margin_db": 10.0, "history": 20, "min_uplinks": 10, "max_active": 48}
    assert {n.sf for n in s.nodes} == {12}
    assert sc.loads(text.replace("enabled = true", "enabled = false")).adr is None
    with pytest.raises(sc.ScenarioError, match="bad ADR policy"):
        sc.loads(text.replace("min_uplinks = 10", "min_uplinks = 30"))
    with pytest.raises(sc.ScenarioError, match="unknown key"):
        sc.loads(text.replace("min_uplinks = 10", "min_uplink = 10"))


def test_city_adr_scenario_moves_nodes_off_sf12() -> None:
    from simulator import runner
    from simulator import scenario as sc

    s = sc.load(ROOT / "simulator" / "scenarios" / "city_adr.toml")
    res = runner.run(s, runner.RunOptions(hours=6, nodes_scale=0.2, progress=False)).to_dict()
    a = res["adr"]
    n = res["run"]["nodes"]
    assert a["sf_before"] == {"SF12": n}
    assert sum(a["sf_after"].values()) == n and a["sf_after"].get("SF12", 0) < n  # some moved in 6 h
    assert a["gateway"]["changes"] >= 1 and a["gateway"]["confirms"] >= 1
    assert 0 < a["airtime_s"] < a["airtime_at_start_sf_s"] and a["airtime_saved_pct"] > 0
    assert a["der"] == pytest.approx(res["delivery"]["ratio"], abs=1e-4)


def test_capacity_bench_prints_its_figures() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "adr_capacity.py"),
            "--json",
            "--hours",
            "1",
            "--max-nodes",
            "300",
            "--variants",
            "sf12,adr",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    r = json.loads(out)
    base, adr = r["sf12"], r["adr"]
    assert base["sf_histogram"] == {"SF12": base["capacity_nodes"]} and base["der_at_capacity"] >= 0.9
    assert adr["der_at_capacity"] >= 0.9 and sum(adr["sf_histogram"].values()) == adr["capacity_nodes"]
    assert adr["capacity_nodes"] > base["capacity_nodes"] > 0
    assert adr["capacity_ratio"] == round(adr["capacity_nodes"] / base["capacity_nodes"], 2)


async def test_service_wires_adr_when_enabled(tmp_path: Any) -> None:
    import dataclasses

    from gateway_helpers import reception, registry, seal
    from test_gateway_service import write_config

    from gateway.config import load_config
    from gateway.service import Gateway

    registry(tmp_path / "nodes.toml", [7]).save()
    cfg = load_config(write_config(tmp_path, extra="[adr]\nenabled = true\nhistory = 1\nmin_uplinks = 1\n"))
    svc = Gateway(cfg)
    await svc.start()
    try:
        assert isinstance(svc.adr, AdrObserver) and svc.adr.downlinks is svc.downlinks
        rx = dataclasses.replace(reception(seal(7, 1), snr=1.0), sf=12)
        assert await svc.pipeline.ingest(rx) == "accepted"
        await svc.adr.idle()
        assert svc.downlinks.pending(7) == 1  # the CONFIG: SF12 -> SF9
        assert svc.adr.adr.settings(7) == (12, 14) and svc.adr.adr.snapshot()[7]["pending"] == (9, 14)
    finally:
        await svc.stop()
    off = Gateway(load_config(write_config(tmp_path)))
    assert off.adr is None
