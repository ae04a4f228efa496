"""simulator.sensors: world quantities to HAL readings, against the firmware's own calibrations."""

from __future__ import annotations

import pytest

from firmware import irrigation, lighting
from simulator import sensors as X


def test_defaults_are_the_firmwares_defaults():
    assert irrigation.SETTINGS["moist_mv_0"][0] == 2800
    assert irrigation.SETTINGS["moist_mv_50"][0] == 1400
    assert irrigation.SETTINGS["pulses_per_l"][0] == 450
    assert lighting.SETTINGS["ma_per_v"][0] == 1000
    assert lighting.SETTINGS["mains_v"][0] == 230


def test_ambient_switch_points_by_hand():
    on, off = lighting.SETTINGS["ambient_on_mv"][0], lighting.SETTINGS["ambient_off_mv"][0]
    # 10 mV per lux (TEMT6000, 0.5 uA/lux into 20 kOhm): the default thresholds are 30 and 60 lux.
    assert X.ambient_mv(29.9) < on <= X.ambient_mv(30.0)
    assert X.ambient_mv(59.9) < off <= X.ambient_mv(60.0)
    assert X.ambient_mv(100_000) == X.ADC_MAX_MV
    with pytest.raises(ValueError):
        X.ambient_mv(-1)


def test_lamp_current_by_hand():
    # 60 W at 230 V, power factor 0.95: 274.6 mA at full level, half at 50 %.
    assert X.lamp_current_ma(1000, 60.0) == pytest.approx(274.6, abs=0.1)
    assert X.lamp_current_ma(500, 60.0) == pytest.approx(137.3, abs=0.1)
    assert X.lamp_current_mv(274.6) == 274  # 1000 mA per volt
    assert X.lamp_current_mv(274.6, ma_per_v=100) == 2746
    # The lighting app expects power_w * 1000 * 100 // (mains_v * 95) mA at full level: the same lamp.
    assert int(X.lamp_current_ma(1000, 60.0)) == 60 * 1000 * 100 // (230 * 95)
    with pytest.raises(ValueError):
        X.lamp_current_ma(1001, 60.0)


def test_moisture_by_hand():
    assert X.moisture_mv(0.0) == 2800
    assert X.moisture_mv(0.5) == 1400
    assert X.moisture_mv(0.25) == 2100  # field capacity of loam: 25 %
    # What the irrigation app computes from it: (mv - mv_0) * 100 // (mv_50 - mv_0) half-percent steps.
    for theta in (0.12, 0.2, 0.25, 0.31):
        mv = X.moisture_mv(theta)
        steps = (mv - 2800) * 100 // (1400 - 2800)
        assert steps == pytest.approx(theta * 200, abs=1)
    with pytest.raises(ValueError):
        X.moisture_mv(1.2)


def test_flow_pulses():
    assert X.flow_pulses(0.0) == 0
    assert X.flow_pulses(58.5) == 26325  # a minute of a Jacobins zone
    assert X.flow_pulses(1.0, pulses_per_l=1) == 1
    with pytest.raises(ValueError):
        X.flow_pulses(-1.0)
