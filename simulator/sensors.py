"""What the nodes' sensors read, from the simulated world: the SimHAL's inputs.

The world models speak physics (lux, volumetric water content, litres,
watts); the firmware reads millivolts, pulses and pins through its HAL
(firmware/hal.py channel names). These functions are the one place where the
simulated sensors turn one into the other. Their defaults are the firmware's
own default calibrations (firmware/lighting.py and firmware/irrigation.py
SETTINGS), so a node left at its defaults reads the world correctly; pass a
node's configured values otherwise.

- "ambient": a phototransistor such as Vishay's TEMT6000 (datasheet: 50 uA
  at 100 lux, linear) into a 20 kOhm load gives 10 mV per lux, saturating at
  the 3.3 V rail (330 lux). With the lighting app's default thresholds
  (on below 300 mV, off above 600 mV) the lamp switches at 30 and 60 lux,
  where street-light photocontrols switch.
- "lamp_current": an LED driver draws power / (mains x power factor) at full
  level, proportionally less when dimmed (DESIGN.md: close to linear), through
  a current sensor of ma_per_v mA per volt. Power factor 0.95 (a typical
  driver; the lighting app assumes the same).
- "moisture1..4": a capacitive probe, linear between its two calibration
  points (the irrigation app's moist_mv_0 at 0 % and moist_mv_50 at 50 %
  volumetric water content).
- "flow": a pulse meter of pulses_per_l pulses per litre (450 for the
  YF-S201 class the irrigation app defaults to), counted cumulatively.
Limits: no sensor noise, drift or quantisation beyond whole millivolts.
"""

from __future__ import annotations

ADC_MAX_MV = 3300  # a 3.3 V ADC
AMBIENT_MV_PER_LUX = 10.0
POWER_FACTOR = 0.95


def ambient_mv(lux: float, mv_per_lux: float = AMBIENT_MV_PER_LUX) -> int:
    """Ambient light sensor reading for an outdoor illuminance."""
    if lux < 0:
        raise ValueError("illuminance cannot be negative")
    return int(min(ADC_MAX_MV, lux * mv_per_lux))


def lamp_current_ma(level_permille: int, power_w: float, mains_v: float = 230.0) -> float:
    """Mains current of a healthy LED lamp at a dimming level (0..1000)."""
    if not 0 <= level_permille <= 1000:
        raise ValueError("level must be 0..1000 per mille")
    return power_w * 1000.0 / (mains_v * POWER_FACTOR) * level_permille / 1000.0


def lamp_current_mv(current_ma: float, ma_per_v: int = 1000) -> int:
    """Current sensor output for a current (the lighting app's ma_per_v scale)."""
    return int(min(ADC_MAX_MV, max(0.0, current_ma * 1000.0 / ma_per_v)))


def moisture_mv(theta: float, mv_0: int = 2800, mv_50: int = 1400) -> int:
    """Soil probe reading for a volumetric water content theta (m3/m3)."""
    if not 0.0 <= theta <= 1.0:
        raise ValueError("volumetric water content must be within 0..1")
    return int(round(mv_0 + (mv_50 - mv_0) * theta / 0.5))


def flow_pulses(litres_total: float, pulses_per_l: int = 450) -> int:
    """Cumulative pulse count of a flow meter after litres_total have passed."""
    if litres_total < 0:
        raise ValueError("a meter's total cannot go backwards below zero")
    return int(litres_total * pulses_per_l)
