"""simulator.channel: path loss, sensitivity, collisions, capture, preamble lock,
demodulators, half duplex, duty cycle, several gateways, determinism.

Hand-built cases use sigma = 0 and place nodes at distances chosen for an
exact received power, from the reference formula typed in here again:
Lpl(d) = 127.41 + 20.8 log10(d / 40) (LoRaSim / FLoRa), 14 dBm.

Over 600 lines on purpose: one model (simulator/channel.py, itself one file for the same reason)
and the hand-built geometry its cases share.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import lora
from simulator import channel as ch

F1, F2, F3 = 868100000, 868300000, 868500000
RX2 = 869525000


def dist_for(rssi_dbm: float, tx_dbm: float = 14.0) -> float:
    """Distance at which the reference log-distance model gives this median RSSI."""
    return 40.0 * 10 ** ((tx_dbm - rssi_dbm - 127.41) / 20.8)


def quiet(**kw) -> ch.RadioParams:
    return ch.RadioParams(shadowing_sigma_db=0.0, **kw)


def one_gw(**kw) -> ch.Channel:
    return ch.Channel([ch.GatewaySite("gw", 0.0, 0.0)], quiet(**kw), seed=1)


def place(c: ch.Channel, node_id: int, rssi: float, angle: float = 0.0) -> None:
    d = dist_for(rssi)
    c.add_node(node_id, d * math.cos(angle), d * math.sin(angle))


def sym_ms(sf: int) -> float:
    return (2**sf) / 125.0  # 2^SF / 125 kHz in ms


# ---------------------------------------------------------------- reference models


def test_log_distance_matches_the_lorasim_parameters_by_hand():
    m = ch.LogDistance()
    assert m.loss_db(40) == pytest.approx(127.41)
    assert m.loss_db(400) == pytest.approx(127.41 + 20.8)  # one decade: 10 x 2.08 dB
    assert m.loss_db(100) == pytest.approx(135.687, abs=1e-3)  # 20.8 log10(2.5) = 8.277
    assert m.loss_db(10) == pytest.approx(127.41 - 12.523, abs=1e-3)  # 20.8 log10(0.25)
    assert m.loss_db(0) == m.loss_db(ch.MIN_DISTANCE_M)  # no log10(0)


def test_hata_urban_by_hand():
    # 868 MHz, hb 30 m, hm 1.5 m: a(hm) = 0.01447, constant part 125.993 dB at 1 km,
    # slope 44.9 - 6.55 log10(30) = 35.225 dB per decade.
    m = ch.HataUrban(868.0)
    assert m.loss_db(1000, 30, 1.5) == pytest.approx(125.993, abs=2e-3)
    assert m.loss_db(2000, 30, 1.5) == pytest.approx(136.597, abs=2e-3)
    assert m.loss_db(10000, 30, 1.5) - m.loss_db(1000, 30, 1.5) == pytest.approx(35.225, abs=2e-3)
    # Higher antennas lose less.
    assert m.loss_db(1000, 60, 1.5) < m.loss_db(1000, 30, 1.5)
    assert m.loss_db(1000, 30, 8) < m.loss_db(1000, 30, 1.5)


def test_sensitivity_is_lorasims_table():
    assert [ch.sensitivity_dbm(sf) for sf in range(7, 13)] == [-126.5, -127.25, -131.25, -132.75, -134.5, -133.25]
    assert ch.sensitivity_dbm(7, 500000) == -120.75
    assert ch.sensitivity_dbm(12, 250000) == -132.25
    with pytest.raises(ValueError):
        ch.sensitivity_dbm(6)
    with pytest.raises(ValueError):
        ch.sensitivity_dbm(7, 62500)


def test_received_power_and_snr_without_shadowing():
    c = one_gw()
    c.add_node(1, 300.0, 0.0)
    up = c.transmit(1, 0, 20, 12, F1)
    h = up.hearings[0]
    assert h.rssi_dbm == pytest.approx(14 - 145.611, abs=1e-3)  # 20.8 log10(7.5) = 18.201
    # Noise floor -174 + 10 log10(125000) + 6 = -117.03 dBm.
    assert h.snr_db == pytest.approx(h.rssi_dbm + 117.031, abs=1e-3)
    assert h.status == ch.OK


@pytest.mark.parametrize("sf", range(7, 13))
def test_sensitivity_edge(sf):
    sens = ch.sensitivity_dbm(sf)
    c = one_gw()
    c.add_node(1, dist_for(sens + 0.05), 0)
    c.add_node(2, 0, dist_for(sens - 0.05))
    a = c.transmit(1, 0, 10, sf, F1)
    b = c.transmit(2, 0, 10, sf, F2)
    assert a.hearings[0].status == ch.OK
    assert b.hearings[0].status == ch.BELOW_SENSITIVITY
    assert a.delivered and not b.delivered


def test_airtime_comes_from_protocol_lora():
    c = one_gw()
    place(c, 1, -100)
    up = c.transmit(1, 1000, 51, 12, F1)
    assert up.end_ms - up.start_ms == pytest.approx(2465.792)  # SPEC section 7 example
    assert up.airtime_ms == lora.airtime_ms(51, 12)


# ---------------------------------------------------------------- collisions and capture


def two(rssi_a: float, rssi_b: float, dt_ms: float, sf: int = 7, fa: int = F1, fb: int = F1, sfb: int | None = None):
    c = one_gw()
    place(c, 1, rssi_a, 0.0)
    place(c, 2, rssi_b, 1.0)
    a = c.transmit(1, 0, 20, sf, fa)
    b = c.transmit(2, dt_ms, 20, sfb or sf, fb)
    c.settle(10_000)
    return a.hearings[0].status, b.hearings[0].status


def test_equal_power_overlap_loses_both():
    assert two(-100, -100, 10) == (ch.COLLISION, ch.COLLISION)


def test_same_start_equal_power_loses_both():
    assert two(-100, -100, 0) == (ch.COLLISION, ch.COLLISION)


def test_other_sf_or_frequency_does_not_collide():
    assert two(-100, -100, 10, sfb=8) == (ch.OK, ch.OK)
    assert two(-100, -100, 10, fb=F2) == (ch.OK, ch.OK)


def test_back_to_back_is_not_an_overlap():
    air = lora.airtime_ms(20, 7)
    assert two(-100, -100, air) == (ch.OK, ch.OK)
    assert two(-100, -100, air - 0.001) == (ch.OK, ch.OK)  # inside the later one's lock margin


@pytest.mark.parametrize("first_stronger", [True, False])
def test_capture_at_6_db(first_stronger):
    strong, weak = -100.0, -106.01
    a, b = (strong, weak) if first_stronger else (weak, strong)
    got = two(a, b, 5)
    want = (ch.OK, ch.COLLISION) if first_stronger else (ch.COLLISION, ch.OK)
    assert got == want


def test_within_6_db_both_are_lost():
    assert two(-100, -105.99, 5) == (ch.COLLISION, ch.COLLISION)
    assert two(-105.99, -100, 5) == (ch.COLLISION, ch.COLLISION)


@pytest.mark.parametrize("sf", [7, 10, 12])
def test_preamble_lock(sf):
    """The later packet locks when the earlier ends before its last 5 of 8 preamble symbols."""
    air = lora.airtime_ms(20, sf)
    t = sym_ms(sf)
    # Earlier ends 2.9 symbols into the later preamble: nobody is hurt.
    assert two(-100, -100, air - 2.9 * t, sf=sf) == (ch.OK, ch.OK)
    # Exactly 3 symbols: still clean (the critical section starts after 3).
    assert two(-100, -100, air - 3.0 * t, sf=sf) == (ch.OK, ch.OK)
    # 3.1 symbols: the last 5 are hit, equal powers, both lost.
    assert two(-100, -100, air - 3.1 * t, sf=sf) == (ch.COLLISION, ch.COLLISION)
    # ... unless one is 6 dB stronger.
    assert two(-100, -107, air - 3.1 * t, sf=sf) == (ch.OK, ch.COLLISION)


def test_pairwise_against_every_interferer():
    """A packet must beat every overlapping interferer, one by one (no summing)."""
    c = one_gw()
    place(c, 1, -90, 0.0)  # strong, long
    place(c, 2, -97, 1.0)  # 7 dB below 1: loses to 1
    place(c, 3, -104, 2.0)  # 7 dB below 2, 14 below 1
    a = c.transmit(1, 0, 40, 9, F1)
    b = c.transmit(2, 30, 20, 9, F1)
    d = c.transmit(3, 60, 20, 9, F1)
    c.settle(10_000)
    assert [x.hearings[0].status for x in (a, b, d)] == [ch.OK, ch.COLLISION, ch.COLLISION]


def test_lost_packets_still_interfere_but_below_sensitivity_ones_do_not():
    c = one_gw()
    place(c, 1, -100, 0.0)
    c.add_node(2, 0, dist_for(ch.sensitivity_dbm(7) - 1))  # never heard
    a = c.transmit(1, 0, 20, 7, F1)
    b = c.transmit(2, 5, 20, 7, F1)
    c.settle(1000)
    assert a.hearings[0].status == ch.OK
    assert b.hearings[0].status == ch.BELOW_SENSITIVITY


# ---------------------------------------------------------------- demodulators


def test_eight_demodulators_at_once():
    c = one_gw()
    combos = [(f, sf) for sf in range(7, 13) for f in (F1, F2, F3)]
    for i in range(10):
        place(c, i + 1, -100, i * 0.3)
    ups = [c.transmit(i + 1, i, 10, combos[i][1], combos[i][0]) for i in range(9)]
    c.settle(1e9)
    assert [u.hearings[0].status for u in ups] == [ch.OK] * 8 + [ch.NO_DEMODULATOR]


def test_demodulator_freed_when_a_packet_ends():
    c = one_gw(demodulators=2)
    for i in range(4):
        place(c, i + 1, -100, i * 0.5)
    a = c.transmit(1, 0, 10, 7, F1)  # ends ~41 ms
    b = c.transmit(2, 1, 40, 12, F2)
    x = c.transmit(3, 2, 10, 8, F3)  # both busy: no demodulator
    y = c.transmit(4, a.end_ms, 10, 9, F1)  # a's demodulator is free again
    c.settle(1e9)
    assert [u.hearings[0].status for u in (a, b, x, y)] == [ch.OK, ch.OK, ch.NO_DEMODULATOR, ch.OK]


def test_packet_without_demodulator_still_interferes():
    c = one_gw(demodulators=1)
    place(c, 1, -100, 0.0)
    place(c, 2, -100, 1.0)
    y = c.transmit(1, 0, 20, 7, F1)  # holds the only demodulator
    x = c.transmit(2, 5, 20, 7, F1)  # finds none, yet its energy is on the air
    c.settle(1e9)
    assert [u.hearings[0].status for u in (y, x)] == [ch.COLLISION, ch.NO_DEMODULATOR]


# ---------------------------------------------------------------- several gateways


def test_each_gateway_hears_what_its_path_loss_allows():
    gws = [ch.GatewaySite("west", -500.0, 0.0), ch.GatewaySite("east", 500.0, 0.0)]
    c = ch.Channel(gws, quiet(), seed=3)
    c.add_node(1, -480.0, 0.0)  # 20 m from west, 980 m from east
    c.add_node(2, 0.0, 0.0)  # 500 m from both
    a = c.transmit(1, 0, 20, 7, F1)
    b = c.transmit(2, 1000, 20, 12, F2)
    c.settle(1e9)
    assert [h.status for h in a.hearings] == [ch.OK, ch.BELOW_SENSITIVITY]
    assert a.best().gateway == "west"
    assert b.hearings[0].rssi_dbm == pytest.approx(b.hearings[1].rssi_dbm)
    # 500 m: 14 - (127.41 + 20.8 log10(12.5)) = -136.22 dBm, below SF12's -133.25.
    assert [h.status for h in b.hearings] == [ch.BELOW_SENSITIVITY] * 2
    assert not b.delivered


def test_gateway_diversity_saves_a_collision():
    gws = [ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 200.0, 0.0)]
    c = ch.Channel(gws, quiet(), seed=3)
    c.add_node(1, 0.0, 30.0)  # 30 m from a
    c.add_node(2, 0.0, -30.0)  # 30 m from a, on the far side from b too
    c.add_node(3, 190.0, 0.0)  # near b
    x = c.transmit(1, 0, 20, 9, F1)
    y = c.transmit(2, 10, 20, 9, F1)
    c.settle(1e9)
    # At a they are equal: both lost. At b they are equal too: both lost.
    assert not x.delivered and not y.delivered
    u = c.transmit(3, 100_000, 20, 9, F1)  # after node 1's duty-cycle off-time
    v = c.transmit(1, 100_010, 20, 9, F1)
    c.settle(1e9)
    # At a, node 1 is far stronger than node 3; at b, node 3 is far stronger than node 1.
    assert [h.status for h in u.hearings] == [ch.COLLISION, ch.OK]
    assert [h.status for h in v.hearings] == [ch.OK, ch.COLLISION]
    assert u.delivered and v.delivered


# ---------------------------------------------------------------- the law


def test_duty_cycle_enforced_per_node_and_band():
    c = one_gw()
    place(c, 1, -100)
    place(c, 2, -100, 1.0)
    first = c.transmit(1, 0, 51, 12, F1)
    assert first.refused is None
    # g1 is a 1 % band: shut for T/d = 246,579.2 ms from the start, rounded up to a whole ms.
    early = c.transmit(1, 246_579, 10, 12, F2)
    assert early.refused == ch.REFUSED_DUTY_CYCLE and not early.hearings
    other_band = c.transmit(1, 246_579, 10, 12, RX2)  # g3 (10 %) is still open
    assert other_band.refused is None
    other_node = c.transmit(2, 246_579, 10, 12, F1)  # the law is per node
    assert other_node.refused is None
    on_time = c.transmit(1, 246_580 + 50_000, 10, 12, F1)
    assert on_time.refused is None
    assert c.counts["refused_duty_cycle"] == 1
    assert c.airtime_used_ms(1) == pytest.approx(2465.792 + 2 * lora.airtime_ms(10, 12))


def test_refusals_too_long_and_busy():
    c = one_gw()
    place(c, 1, -100)
    assert c.transmit(1, 0, 52, 12, F1).refused == ch.REFUSED_TOO_LONG  # SF12 budget is 51
    a = c.transmit(1, 0, 222, 7, F1)
    assert a.refused is None
    assert c.transmit(1, 10, 10, 7, RX2).refused == ch.REFUSED_BUSY  # still on the air
    with pytest.raises(ValueError):
        c.transmit(1, 1e6, 10, 6, F1)  # SF6 is not EU868
    with pytest.raises(ValueError):
        c.transmit(1, 1e6, 10, 7, 915_000_000)  # not an EU868 channel
    with pytest.raises(ValueError):
        c.transmit(99, 1e6, 10, 7, F1)  # unknown node


def test_uplinks_must_come_in_start_order():
    c = one_gw()
    place(c, 1, -100)
    place(c, 2, -100, 1.0)
    c.transmit(1, 1000, 10, 7, F1)
    with pytest.raises(ValueError, match="start order"):
        c.transmit(2, 999, 10, 7, F2)


# ---------------------------------------------------------------- downlinks and half duplex


def test_downlink_in_rx1_reaches_the_node():
    c = one_gw()
    place(c, 1, -110)
    up = c.transmit(1, 0, 20, 9, F1)
    c.settle(up.end_ms)
    assert c.rx1_start_ms(up) == pytest.approx(up.end_ms + 1000)
    dl = c.downlink("gw", 1, c.rx1_start_ms(up), 13, 9, F1)
    assert c.settle(1e9) == [dl]
    assert dl.delivered
    # Same path loss both ways, both at 14 dBm.
    assert dl.hearings[0].rssi_dbm == pytest.approx(up.hearings[0].rssi_dbm)


def test_gateway_is_deaf_while_it_transmits():
    gws = [ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 50.0, 0.0)]
    c = ch.Channel(gws, quiet(), seed=3)
    c.add_node(1, 0.0, 20.0)
    c.add_node(2, 25.0, 20.0)
    c.add_node(3, 0.0, -20.0)
    up1 = c.transmit(1, 0, 20, 7, F1)
    # Node 2 starts an uplink on another channel before the downlink; it is still on the air when a transmits.
    up2 = c.transmit(2, up1.end_ms + 900, 51, 12, F2)
    dl = c.downlink("a", 1, c.rx1_start_ms(up1), 13, 7, F1)
    assert dl.refused is None
    # Node 3 starts while a is transmitting.
    up3 = c.transmit(3, dl.start_ms + 5, 20, 8, F3)
    # Node 3 again, after a is done.
    c.settle(1e9)
    up4 = c.transmit(3, dl.end_ms + 60_000, 20, 8, F3)
    c.settle(1e9)
    assert [h.status for h in up2.hearings] == [ch.GATEWAY_TX, ch.OK]
    assert [h.status for h in up3.hearings] == [ch.GATEWAY_TX, ch.OK]
    assert up4.hearings[0].status == ch.OK


def test_gateway_refuses_overlapping_downlinks_and_respects_its_duty_cycle():
    c = one_gw()
    place(c, 1, -100)
    place(c, 2, -100, 1.0)
    d1 = c.downlink("gw", 1, 1000, 20, 12, F1)
    assert d1.refused is None
    assert c.downlink("gw", 2, 1500, 20, 12, RX2).refused == ch.REFUSED_BUSY
    # After d1, g1 is shut for 99 x its airtime; RX2 (g3, 10 %) is open.
    after = d1.end_ms + 1
    assert c.downlink("gw", 2, after, 20, 12, F2).refused == ch.REFUSED_DUTY_CYCLE
    assert c.downlink("gw", 2, after, 20, 12, RX2).refused is None
    assert c.gateway_airtime_used_ms("gw") == pytest.approx(2 * lora.airtime_ms(20, 12))


def test_node_cannot_hear_while_transmitting():
    c = one_gw()
    place(c, 1, -100)
    dl = c.downlink("gw", 1, 1000, 13, 7, F1)
    c.transmit(1, 1010, 10, 8, F2)  # the node talks over its own receive window
    up = c.transmit(1, 90_000, 200, 7, RX2)  # and a downlink while it is sending
    dl2 = c.downlink("gw", 1, 90_050, 13, 7, F3)
    c.settle(1e9)
    assert up.refused is None
    assert dl.hearings[0].status == ch.NODE_TX
    assert dl2.hearings[0].status == ch.NODE_TX


def test_downlinks_collide_at_the_nodes():
    gws = [ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 1000.0, 0.0)]
    c = ch.Channel(gws, quiet(), seed=3)
    c.add_node(1, 20.0, 0.0)  # near a
    c.add_node(2, 980.0, 0.0)  # near b
    c.add_node(3, 500.0, 0.0)  # in the middle
    c.add_node(4, 500.0, 1.0)
    x = c.downlink("a", 1, 1000, 13, 9, F1)
    y = c.downlink("b", 2, 1010, 13, 9, F1)
    c.settle(1e9)
    assert x.delivered and y.delivered  # each far louder than the other gateway
    # 500 m from both: -136 dBm, below SF9; use SF12 (-133.25)... still below: move closer.
    c2 = ch.Channel([ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 200.0, 0.0)], quiet(), seed=3)
    c2.add_node(3, 100.0, 0.0)
    c2.add_node(4, 100.0, 1.0)
    p = c2.downlink("a", 3, 1000, 13, 9, F1)
    q = c2.downlink("b", 4, 1010, 13, 9, F1)
    r = c2.downlink("a", 3, 600_000, 13, 9, RX2)  # alone: fine
    c2.settle(1e9)
    assert p.hearings[0].status == ch.COLLISION and q.hearings[0].status == ch.COLLISION
    assert r.delivered


def test_gateway_restart():
    gws = [ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 50.0, 0.0)]
    c = ch.Channel(gws, quiet(), seed=3)
    c.add_node(1, 25.0, 10.0)
    mid = c.transmit(1, 0, 51, 12, F1)
    dl = c.downlink("a", 1, 5000, 10, 12, RX2)
    c.set_gateway_up("a", False, 100)  # while mid is on the air
    assert not c.gateway_up("a")
    during = c.transmit(1, 400_000, 20, 7, F2)
    assert c.downlink("a", 1, 401_000, 10, 7, F2).refused == ch.GATEWAY_DOWN
    c.set_gateway_up("a", True, 450_000)
    after = c.transmit(1, 900_000, 20, 7, F3)
    c.settle(1e9)
    assert [h.status for h in mid.hearings] == [ch.GATEWAY_DOWN, ch.OK]
    assert dl.hearings[0].status == ch.GATEWAY_DOWN
    assert [h.status for h in during.hearings] == [ch.GATEWAY_DOWN, ch.OK]
    assert [h.status for h in after.hearings] == [ch.OK, ch.OK]


# ---------------------------------------------------------------- settle, determinism, statistics


def test_settle_hands_back_each_transmission_once_in_end_order():
    c = one_gw()
    for i in range(3):
        place(c, i + 1, -100, i)
    long = c.transmit(1, 0, 51, 12, F1)
    short = c.transmit(2, 10, 10, 7, F2)
    refused = c.transmit(3, 20, 300, 7, F3)  # too long: ends when it starts
    assert c.settle(15) == []
    assert c.settle(100) == [refused, short]
    assert c.pending() == 1
    assert c.settle(1e9) == [long]
    assert c.settle(1e9) == []


def rssi_series(seed: int, with_neighbour: bool) -> list[float]:
    c = ch.Channel([ch.GatewaySite("a", 0, 0), ch.GatewaySite("b", 100, 0)], seed=seed)
    c.add_node(1, 50, 10)
    c.add_node(2, 60, -10)
    out = []
    for k in range(50):
        t = k * 10_000
        if with_neighbour:
            c.transmit(2, t, 10, 7, F2)
        out.extend(h.rssi_dbm for h in c.transmit(1, t + 1, 10, 7, F1).hearings)
    return out


def test_same_seed_same_draws_and_nodes_draw_independently():
    a = rssi_series(5, False)
    assert a == rssi_series(5, False)
    assert a == rssi_series(5, True)  # another node's traffic does not shift node 1's draws
    assert a != rssi_series(6, False)


def test_shadowing_is_lognormal_with_sigma_3_57():
    c = ch.Channel([ch.GatewaySite("gw", 0, 0)], ch.RadioParams(), seed=11)
    c.add_node(1, 100.0, 0.0)
    mean = 14 - 135.687
    xs = []
    for k in range(4000):
        up = c.transmit(1, k * 10_000, 10, 7, RX2)
        xs.append(up.hearings[0].rssi_dbm)
    mu = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))
    assert mu == pytest.approx(mean, abs=0.2)
    assert sd == pytest.approx(3.57, abs=0.15)


def test_delivery_probability_predicts_the_delivery_ratio():
    c = ch.Channel([ch.GatewaySite("gw", 0, 0)], ch.RadioParams(), seed=12)
    c.add_node(1, dist_for(ch.sensitivity_dbm(7) + 3.0), 0.0)  # 3 dB margin: Phi(3 / 3.57) = 0.80
    p = c.delivery_probability(1, 7)
    assert p == pytest.approx(0.5 * (1 + math.erf(3.0 / 3.57 / math.sqrt(2))))
    n = 3000
    got = sum(c.transmit(1, k * 10_000, 10, 7, RX2).delivered for k in range(n))
    assert got / n == pytest.approx(p, abs=0.03)


def test_link_shadowing_is_fixed_per_link():
    params = ch.RadioParams(shadowing="link")
    c = ch.Channel([ch.GatewaySite("a", 0, 0), ch.GatewaySite("b", 100, 0)], params, seed=4)
    c.add_node(1, 50.0, 0.0)
    got = {tuple(h.rssi_dbm for h in c.transmit(1, k * 10_000, 10, 7, RX2).hearings) for k in range(20)}
    assert len(got) == 1
    a, b = got.pop()
    assert a != b  # same distance, different obstacles
    # Another seed draws other obstacles.
    c2 = ch.Channel([ch.GatewaySite("a", 0, 0), ch.GatewaySite("b", 100, 0)], params, seed=5)
    c2.add_node(1, 50.0, 0.0)
    assert c2.mean_rx_dbm(1) != c.mean_rx_dbm(1)


def test_best_sf_by_margin():
    c = one_gw()
    c.add_node(1, dist_for(-120.0), 0)  # margins: SF7 6.5, SF8 7.25, SF9 11.25, ... SF11 14.5
    assert c.best_sf(1, 5.0) == 7
    assert c.best_sf(1, 10.0) == 9
    assert c.best_sf(1, 14.0) == 11
    assert c.best_sf(1, 20.0) is None
    assert c.margin_db(1, 12) == pytest.approx(13.25)


def test_parameters_are_checked():
    with pytest.raises(ValueError):
        ch.RadioParams(shadowing="node")
    with pytest.raises(ValueError):
        ch.RadioParams(bw_hz=62500)
    with pytest.raises(ValueError):
        ch.Channel([])
    with pytest.raises(ValueError):
        ch.Channel([ch.GatewaySite("a", 0, 0), ch.GatewaySite("a", 1, 0)])
    c = one_gw()
    c.add_node(1, 0, 0)
    with pytest.raises(ValueError):
        c.add_node(1, 5, 5)


# ---------------------------------------------------------------- against a brute-force oracle


def oracle(ups: list[ch.Uplink], gw_count: int, demods: int = 8, capture: float = 6.0) -> list[list[str]]:
    """LoRaSim's rules over all pairs, O(n^2): statuses per uplink per gateway (non-refused only)."""
    out = []
    for u in ups:
        out.append(
            [
                h.status if h.status in (ch.BELOW_SENSITIVITY, ch.GATEWAY_DOWN, ch.GATEWAY_TX) else None
                for h in u.hearings
            ]
        )
    for g in range(gw_count):
        heard = [i for i, u in enumerate(ups) if out[i][g] is None or out[i][g] == ch.GATEWAY_TX]
        # Demodulators in registration order, only for packets the gateway is listening to.
        for i in heard:
            if out[i][g] is not None:
                continue
            busy = sum(
                1
                for j in heard
                if j < i and out[j][g] != ch.GATEWAY_TX and out[j][g] != "nodemod" and ups[j].end_us > ups[i].start_us
            )
            out[i][g] = "nodemod" if busy >= demods else None
        for i in heard:
            for j in heard:
                if i == j:
                    continue
                a, b = ups[i], ups[j]
                if (a.freq_hz, a.sf) != (b.freq_hz, b.sf):
                    continue
                if not (a.start_us < b.end_us and b.start_us < a.end_us):
                    continue
                earlier, later = (a, b) if (a.start_us, i) < (b.start_us, j) else (b, a)
                lock = later.start_us + 3 * (1 << later.sf) * 8
                if earlier.end_us <= lock:
                    continue
                if a.hearings[g].rssi_dbm - b.hearings[g].rssi_dbm < capture and out[i][g] is None:
                    out[i][g] = ch.COLLISION
        for i in heard:
            if out[i][g] is None:
                out[i][g] = ch.OK
            elif out[i][g] == "nodemod":
                out[i][g] = ch.NO_DEMODULATOR
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 7),
            st.integers(0, 400),
            st.sampled_from([7, 8, 9, 12]),
            st.sampled_from([F1, F2]),
            st.integers(1, 60),
            st.none() | st.integers(0, 6),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**32),
    st.sampled_from([2, 8]),
)
def test_index_agrees_with_all_pairs_oracle(events, seed, demods):
    rnd = random.Random(seed)
    gws = [ch.GatewaySite("a", 0.0, 0.0), ch.GatewaySite("b", 120.0, 0.0)]
    c = ch.Channel(gws, ch.RadioParams(demodulators=demods), seed=seed)
    for n in range(8):
        c.add_node(n, rnd.uniform(-150, 250), rnd.uniform(-150, 150))
    t = 0.0
    ups = []
    for node, gap, sf, f, length, snap in events:
        t += gap
        if snap is not None and ups:
            # Same channel, starting a few symbols before the last frame ends: the preamble-lock edge.
            sf, f = ups[-1].sf, ups[-1].freq_hz
            t = max(t, ups[-1].end_ms - (snap + 0.5) * sym_ms(sf))
        u = c.transmit(node, t, length, sf, f)
        if u.refused is None:
            ups.append(u)
        else:
            assert not u.hearings
    c.settle(1e12)
    assert [[h.status for h in u.hearings] for u in ups] == oracle(ups, 2, demods)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 5000),
            st.sampled_from([7, 10, 12]),
            st.sampled_from([F1, F2, F3, RX2]),
            st.integers(0, 260),
        ),
        max_size=40,
    )
)
def test_duty_cycle_law_holds_for_any_traffic(events):
    """Whatever a node tries, what goes on the air keeps each band's off-time."""
    c = one_gw()
    for n in range(4):
        place(c, n, -100, n)
    t = 0
    on_air: dict[tuple[int, int], list[ch.Uplink]] = {}
    for node, gap, sf, f, length in events:
        t += gap
        u = c.transmit(node, t, length, sf, f)
        if u.refused is None:
            assert length <= lora.max_payload(sf)
            on_air.setdefault((node, lora.band_for(f)), []).append(u)
    for (_node, band), ups in on_air.items():
        inv = lora.BANDS[band][2]
        for prev, nxt in zip(ups, ups[1:]):
            assert nxt.start_ms >= prev.start_ms + prev.airtime_ms * inv - 1e-6


def test_a_multicast_is_one_transmission_heard_by_each_node_on_its_own():
    """LoRa multicast (SPEC §5 "Groups"): a copy per node, one airtime and one off-time for the gateway."""
    c = one_gw()
    place(c, 1, -100)
    place(c, 2, -100, 1.0)
    place(c, 3, -140, 2.0)  # below SF9's sensitivity
    dls = c.multicast("gw", [1, 2, 3], 1000, 35, 9, RX2, b"x" * 35)
    assert [d.node_id for d in dls] == [1, 2, 3] and all(d.refused is None for d in dls)
    assert len({(d.start_ms, d.end_ms) for d in dls}) == 1
    c.settle(1e9)
    assert [d.delivered for d in dls] == [True, True, False]  # copies do not collide with each other
    assert c.gateway_airtime_used_ms("gw") == pytest.approx(lora.airtime_ms(35, 9))
    # the gateway's g3 off-time follows from that one transmission: a second one at once is refused
    again = c.multicast("gw", [1, 2], dls[0].end_ms + 1, 35, 9, RX2, b"y" * 35)
    assert len(again) == 1 and again[0].refused == ch.REFUSED_DUTY_CYCLE
