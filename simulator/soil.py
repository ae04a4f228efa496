"""Soil water balance of one irrigation zone: the FAO-56 single bucket.

R. G. Allen, L. S. Pereira, D. Raes, M. Smith, "Crop evapotranspiration",
FAO Irrigation and Drainage Paper 56 (1998), chapter 8, equation numbers
from there:

    TAW = 1000 (theta_FC - theta_WP) Zr                  mm    (Eq. 82)
    RAW = p TAW                                          mm    (Eq. 83)
    Ks  = (TAW - Dr) / (TAW - RAW) when Dr > RAW, else 1       (Eq. 84)
    ETc = Kc ET0;  ETc,adj = Ks Kc ET0                         (Eqs. 56, 81)
    Dr,i = Dr,i-1 - (P - RO)i - Ii - CRi + ETc,adj,i + DPi     (Eq. 85)
    DPi = max(0, (P - RO)i + Ii - ETc,adj,i - Dr,i-1)          (Eq. 88)

with 0 <= Dr <= TAW. The step may be a day or any part of it (the simulator
steps every few minutes with that interval's ET0); Ks is taken at the start
of each step, as Eq. 85 takes it from the previous day. Water above field
capacity drains within the step (DP), as in FAO-56's bucket.

Rain: FAO-56 (chapter 8, after Eq. 85) notes that a day's rain below about
0.2 ET0 is entirely evaporated from the surface; here each day's first
0.2 ET0 of rain is intercepted (call `new_day`), the rest enters the bucket.
Runoff (RO) and capillary rise (CR) are taken as zero: flat, well-drained
turf with a deep water table.

A soil moisture probe reads the volumetric water content of the root zone:
    theta = theta_FC - Dr / (1000 Zr)

Defaults for a city lawn:
- soil: loam, theta_FC 0.25 and theta_WP 0.12, the middles of FAO-56 Table 19's
  ranges (0.20-0.30 and 0.07-0.17); other textures likewise in SOILS;
- crop: cool-season turf, Kc 0.8 of ET0 (the landscape coefficient for
  cool-season turf: J. L. Meyer and V. A. Gibeault, "Turfgrass performance when
  underirrigated", Applied Agricultural Research 2, 1987; used by UC ANR's
  "Estimating water requirements of landscape plantings" (Costello et al.,
  Leaflet 21493) and DESIGN.md; FAO-56 Table 12 gives 0.90-0.95 for turf kept
  at full growth); p = 0.40 (FAO-56 Table 22, turf grass, cool season; 0.50
  for warm season with Kc 0.6);
- root zone Zr = 0.30 m: mown urban turf roots shallower than FAO-56 Table 22's
  0.5-1.0 m (maximum rooting of unmown grass). A named choice, not a table
  value: TAW = 39 mm, RAW = 15.6 mm for loam.

Limits: one layer; no surface evaporation layer (dual Kc) nor runoff; p is not
adjusted for ETc (FAO-56 Table 22 footnote); drainage is instantaneous.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERCEPTION_ET0_RATIO = 0.2


@dataclass(frozen=True, slots=True)
class Soil:
    name: str
    theta_fc: float  # field capacity, m3/m3
    theta_wp: float  # wilting point, m3/m3

    def __post_init__(self) -> None:
        if not 0.0 < self.theta_wp < self.theta_fc < 1.0:
            raise ValueError(f"soil {self.name}: need 0 < theta_wp < theta_fc < 1")


# Middles of FAO-56 Table 19's ranges.
SOILS = {
    "sand": Soil("sand", 0.12, 0.045),
    "loamy_sand": Soil("loamy_sand", 0.15, 0.065),
    "sandy_loam": Soil("sandy_loam", 0.23, 0.11),
    "loam": Soil("loam", 0.25, 0.12),
    "silt_loam": Soil("silt_loam", 0.29, 0.15),
    "silt": Soil("silt", 0.32, 0.17),
    "silty_clay_loam": Soil("silty_clay_loam", 0.335, 0.205),
    "silty_clay": Soil("silty_clay", 0.36, 0.23),
    "clay": Soil("clay", 0.36, 0.22),
}


@dataclass(frozen=True, slots=True)
class Crop:
    name: str
    kc: float  # crop (landscape) coefficient
    zr_m: float  # effective root depth, m
    p: float  # depletion fraction before stress

    def __post_init__(self) -> None:
        if not 0.0 < self.kc <= 2.0 or not 0.0 < self.zr_m <= 3.0 or not 0.0 < self.p < 1.0:
            raise ValueError(f"crop {self.name}: kc in (0, 2], zr_m in (0, 3], p in (0, 1)")


TURF_COOL = Crop("turf_cool", kc=0.8, zr_m=0.30, p=0.40)
TURF_WARM = Crop("turf_warm", kc=0.6, zr_m=0.30, p=0.50)
CROPS = {c.name: c for c in (TURF_COOL, TURF_WARM)}


@dataclass(slots=True)
class Flux:
    """What one step moved, mm."""

    rain_mm: float = 0.0  # as it fell
    rain_eff_mm: float = 0.0  # after interception
    irrigation_mm: float = 0.0
    etc_mm: float = 0.0  # Kc ET0, the unstressed demand
    eta_mm: float = 0.0  # Ks Kc ET0, what the turf got
    drainage_mm: float = 0.0  # deep percolation below the root zone

    def add(self, other: Flux) -> None:
        self.rain_mm += other.rain_mm
        self.rain_eff_mm += other.rain_eff_mm
        self.irrigation_mm += other.irrigation_mm
        self.etc_mm += other.etc_mm
        self.eta_mm += other.eta_mm
        self.drainage_mm += other.drainage_mm


class SoilBucket:
    """The root zone of one zone; depletion Dr in mm below field capacity."""

    def __init__(self, soil: Soil = SOILS["loam"], crop: Crop = TURF_COOL, depletion_mm: float | None = None):
        self.soil = soil
        self.crop = crop
        self.taw_mm = 1000.0 * (soil.theta_fc - soil.theta_wp) * crop.zr_m  # Eq. 82
        self.raw_mm = crop.p * self.taw_mm  # Eq. 83
        if depletion_mm is None:
            depletion_mm = default_depletion(self.raw_mm)
        if not 0.0 <= depletion_mm <= self.taw_mm:
            raise ValueError(f"depletion {depletion_mm} mm outside 0..TAW ({self.taw_mm:.1f} mm)")
        self.dr_mm = float(depletion_mm)
        self._intercept_left = 0.0
        self.total = Flux()

    @property
    def ks(self) -> float:
        """Water stress coefficient (Eq. 84): 1 until Dr passes RAW, 0 at the wilting point."""
        if self.dr_mm <= self.raw_mm:
            return 1.0
        return max(0.0, (self.taw_mm - self.dr_mm) / (self.taw_mm - self.raw_mm))

    @property
    def theta(self) -> float:
        """Volumetric water content a probe in the root zone reads, m3/m3."""
        return self.soil.theta_fc - self.dr_mm / (1000.0 * self.crop.zr_m)

    def new_day(self, et0_day_mm: float) -> None:
        """Start a day: the first 0.2 ET0 of its rain wets the surface and evaporates."""
        self._intercept_left = INTERCEPTION_ET0_RATIO * max(0.0, et0_day_mm)

    def step(self, et0_mm: float, rain_mm: float = 0.0, irrigation_mm: float = 0.0) -> Flux:
        """Advance one interval with its ET0, rain and irrigation (mm); Eq. 85 and 88."""
        if et0_mm < 0 or rain_mm < 0 or irrigation_mm < 0:
            raise ValueError("et0, rain and irrigation must be >= 0")
        lost = min(rain_mm, self._intercept_left)
        self._intercept_left -= lost
        p_eff = rain_mm - lost
        etc = self.crop.kc * et0_mm
        eta = self.ks * etc
        dr = self.dr_mm - p_eff - irrigation_mm + eta
        dp = 0.0
        if dr < 0.0:
            dp = -dr  # Eq. 88: what exceeds field capacity drains
            dr = 0.0
        if dr > self.taw_mm:  # a coarse step cannot dry past the wilting point
            eta -= dr - self.taw_mm
            dr = self.taw_mm
        self.dr_mm = dr
        f = Flux(rain_mm, p_eff, irrigation_mm, etc, eta, dp)
        self.total.add(f)
        return f


def default_depletion(raw_mm: float) -> float:
    """The start state when a scenario names none: moist, unstressed, halfway to the stress point.

    Half of RAW depleted: for cool-season turf (p 0.40) 80 % of the available water is
    left, for warm-season turf (p 0.50) 75 %; on loam 7.8 mm below field capacity.
    """
    return 0.5 * raw_mm


def start_bucket(soil: Soil, crop: Crop, available: float | None = None) -> SoilBucket:
    """A bucket whose root zone holds `available` of its total available water (TAW).

    1 is field capacity, 0 the wilting point; None is `default_depletion` (the scenario's
    `[irrigation] soil_start` unset)."""
    if available is None:
        return SoilBucket(soil, crop)
    if not 0.0 <= available <= 1.0:
        raise ValueError(f"soil start {available} outside 0..1 (a share of the available water)")
    taw = 1000.0 * (soil.theta_fc - soil.theta_wp) * crop.zr_m
    return SoilBucket(soil, crop, (1.0 - available) * taw)


def mm_from_litres(litres: float, area_m2: float) -> float:
    """Depth of water (mm) that a volume spreads to over an area: 1 L/m2 = 1 mm."""
    if area_m2 <= 0:
        raise ValueError("area must be positive")
    return litres / area_m2
