"""simulator.soil: the FAO-56 single bucket, by hand, and its water balance under any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import soil as S


def test_turf_on_loam_by_hand():
    b = S.SoilBucket()  # loam 0.25 / 0.12, Zr 0.30 m, p 0.40, Kc 0.8
    assert b.taw_mm == pytest.approx(39.0)  # 1000 x 0.13 x 0.30 (Eq. 82)
    assert b.raw_mm == pytest.approx(15.6)  # 0.4 x 39 (Eq. 83)
    assert b.dr_mm == pytest.approx(7.8)  # default start: half of RAW
    assert S.SOILS["loam"].theta_fc == 0.25 and S.SOILS["loam"].theta_wp == 0.12  # FAO-56 Table 19 middles
    assert S.TURF_COOL.kc == 0.8 and S.TURF_COOL.p == 0.40


def test_ks_and_sensor_reading_by_hand():
    b = S.SoilBucket(depletion_mm=25.0)
    assert b.ks == pytest.approx(14.0 / 23.4)  # (39 - 25) / (39 - 15.6), Eq. 84
    assert b.theta == pytest.approx(0.25 - 25.0 / 300.0)  # theta_FC - Dr / (1000 Zr)
    assert S.SoilBucket(depletion_mm=15.6).ks == 1.0
    assert S.SoilBucket(depletion_mm=39.0).ks == 0.0
    assert S.SoilBucket(depletion_mm=39.0).theta == pytest.approx(0.12)  # the wilting point
    assert S.SoilBucket(depletion_mm=0.0).theta == pytest.approx(0.25)


def test_three_days_by_hand():
    b = S.SoilBucket(depletion_mm=10.0)
    # Day 1: ET0 5 mm, dry. ETc = 0.8 x 5 = 4; Dr 10 -> 14 (below RAW: no stress).
    b.new_day(5.0)
    f = b.step(5.0)
    assert (f.etc_mm, f.eta_mm, b.dr_mm) == pytest.approx((4.0, 4.0, 14.0))
    # Day 2: 10 mm of rain, the first 0.2 x 5 = 1 mm intercepted: Dr = 14 - 9 + 4 = 9.
    b.new_day(5.0)
    f = b.step(5.0, rain_mm=10.0)
    assert (f.rain_eff_mm, b.dr_mm) == pytest.approx((9.0, 9.0))
    # Day 3: 20 mm of irrigation (not intercepted): 9 - 20 + 4 = -7: 7 mm drain (Eq. 88), Dr = 0.
    b.new_day(5.0)
    f = b.step(5.0, irrigation_mm=20.0)
    assert (f.drainage_mm, b.dr_mm) == pytest.approx((7.0, 0.0))
    assert b.total.drainage_mm == pytest.approx(7.0)
    assert b.total.rain_mm == 10.0 and b.total.irrigation_mm == 20.0


def test_stress_slows_the_drying():
    b = S.SoilBucket(depletion_mm=20.0)
    b.new_day(5.0)
    f = b.step(5.0)
    ks = (39.0 - 20.0) / 23.4
    assert f.eta_mm == pytest.approx(4.0 * ks)
    assert b.dr_mm == pytest.approx(20.0 + 4.0 * ks)
    # Weeks of drought approach, never pass, the wilting point.
    for _ in range(200):
        b.new_day(8.0)
        b.step(8.0)
    assert b.taw_mm - 0.5 < b.dr_mm <= b.taw_mm
    assert b.theta >= S.SOILS["loam"].theta_wp - 1e-12


def test_sub_daily_steps_add_up_without_stress():
    day = S.SoilBucket(depletion_mm=5.0)
    day.new_day(4.8)
    day.step(4.8, rain_mm=3.0)
    parts = S.SoilBucket(depletion_mm=5.0)
    parts.new_day(4.8)
    for _ in range(144):  # ten-minute steps
        parts.step(4.8 / 144, rain_mm=3.0 / 144)
    assert parts.dr_mm == pytest.approx(day.dr_mm)
    assert parts.total.rain_eff_mm == pytest.approx(3.0 - 0.96)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0, 39),
    st.lists(st.tuples(st.floats(0, 3), st.floats(0, 20), st.floats(0, 30), st.booleans()), max_size=60),
    st.sampled_from(sorted(S.SOILS)),
    st.sampled_from(sorted(S.CROPS)),
)
def test_water_is_conserved(dr0, steps, soil, crop):
    b = S.SoilBucket(
        S.SOILS[soil],
        S.CROPS[crop],
        depletion_mm=min(dr0, 1000 * (S.SOILS[soil].theta_fc - S.SOILS[soil].theta_wp) * S.CROPS[crop].zr_m),
    )
    start = b.dr_mm
    for et0, rain, irr, new_day in steps:
        if new_day:
            b.new_day(et0 * 4)
        f = b.step(et0, rain, irr)
        assert 0.0 <= b.dr_mm <= b.taw_mm + 1e-9
        assert 0.0 <= f.eta_mm <= f.etc_mm + 1e-12
        assert f.rain_eff_mm <= f.rain_mm
    t = b.total
    # Storage change = in - out: -(dDr) = rain_eff + irrigation - ETa - drainage.
    assert start - b.dr_mm == pytest.approx(t.rain_eff_mm + t.irrigation_mm - t.eta_mm - t.drainage_mm, abs=1e-6)


def test_units_and_errors():
    assert S.mm_from_litres(500.0, 250.0) == 2.0
    with pytest.raises(ValueError):
        S.mm_from_litres(1.0, 0.0)
    with pytest.raises(ValueError):
        S.SoilBucket(depletion_mm=40.0)
    with pytest.raises(ValueError):
        S.SoilBucket().step(-1.0)
    with pytest.raises(ValueError):
        S.Soil("inverted", 0.1, 0.2)
    with pytest.raises(ValueError):
        S.Crop("rootless", 0.8, 0.0, 0.4)
