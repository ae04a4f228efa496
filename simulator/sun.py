"""Where the sun is, and how much light it gives, for any place and instant.

The node only needs sunrise and sunset (firmware/astro.py); the simulated
world needs the sun's continuous elevation, for the ambient light sensor of
every lamp and for the daily course of evapotranspiration. Both follow the
NOAA solar equations (NOAA Global Monitoring Laboratory, "Solar Calculator"
and its spreadsheet NOAA_Solar_Calculations_day.xls, after J. Meeus,
"Astronomical Algorithms", 1991): this module reuses astro's `sun_decl_eot`
(declination and equation of time, the NOAA series) and adds what the
spreadsheet computes from them:

    true solar time  tst = minutes_UTC + EoT + 4 lon                (min)
    hour angle       H   = tst / 4 - 180                              (deg)
    cos(zenith)      = sin(lat) sin(decl) + cos(lat) cos(decl) cos(H)
    azimuth          from north, clockwise (atan2 form of the same triangle)
    refraction       the spreadsheet's piecewise approximation (degrees):
                     h > 85: 0;  5 < h <= 85: (58.1/tan h - 0.07/tan^3 h + 0.000086/tan^5 h) / 3600;
                     -0.575 < h <= 5: (1735 - 518.2 h + 103.4 h^2 - 12.79 h^3 + 0.711 h^4) / 3600;
                     h <= -0.575: -20.772 / tan(h) / 3600

Accuracy: the NOAA equations are good to about 0.01 degree for 1800-2100;
tests/test_sim_sun.py checks them against NREL's SPA worked example
(Reda & Andreas 2004) and Meeus' example 25.a.

Illuminance on a horizontal surface outdoors follows the U.S. Naval
Observatory's model, J. M. Janiczek and J. A. DeYoung, "Computer programs
for sun and moon illuminance with contingent tables and diagrams", USNO
Circular 171 (1987), subroutine ATMOS, with the sun's apparent altitude h:

    x = 753.66156;  s = asin(x cos h / (x + 1));  m = x (cos s - sin h) + cos s
    E = 133775 (exp(-0.21 m) sin h + 0.0289 exp(-0.042 m) (1 + (h + 90) sin h / 57.29577951)) / sky

The second term is skylight, which carries the twilight (about 3 lux at the
end of civil twilight, h = -6 degrees; about 750 lux at sunset; 124,000 lux
with the sun overhead). `sky` is the circular's cloud divisor: 1 for a clear
sky (less than 30 % cloud), about 3 for average clouds, 10 for dark stratus.
Moonlight and street light are not included (they stay below 0.3 lux, and a
lamp's own light never reaches its own upward-looking sensor by design).
Limits: below -18 degrees the model is extrapolated; the function returns
at least NIGHT_LUX.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from firmware.astro import sun_decl_eot  # NOAA declination and equation of time (shared with the node)

_DAYS_1970_TO_2000 = 10957
_RAD = math.pi / 180.0
NIGHT_LUX = 0.001  # clear moonless night sky: the floor the model never goes below


class SunPosition(NamedTuple):
    elevation_deg: float  # geometric (airless) elevation of the sun's centre
    apparent_elevation_deg: float  # with atmospheric refraction (what a sensor sees)
    azimuth_deg: float  # from north, clockwise (90 = east)


def _geometry(lat: float, lon: float, unix_s: float) -> tuple[float, float, float]:
    """(sin elevation, hour angle rad, declination rad)."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"latitude/longitude out of range: {lat}, {lon}")
    day, sec = divmod(unix_s, 86400)
    frac = sec / 86400.0
    decl, eot = sun_decl_eot(int(day) - _DAYS_1970_TO_2000, frac)
    tst = frac * 1440.0 + eot + 4.0 * lon
    ha = (tst / 4.0 - 180.0) * _RAD
    phi = lat * _RAD
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    return max(-1.0, min(1.0, sin_el)), ha, decl


def refraction_deg(elevation_deg: float) -> float:
    """Atmospheric refraction (degrees to add) at a geometric elevation, per the NOAA spreadsheet."""
    h = elevation_deg
    if h > 85.0:
        return 0.0
    if h > 5.0:
        t = math.tan(h * _RAD)
        return (58.1 / t - 0.07 / t**3 + 0.000086 / t**5) / 3600.0
    if h > -0.575:
        return (1735.0 + h * (-518.2 + h * (103.4 + h * (-12.79 + h * 0.711)))) / 3600.0
    return -20.772 / math.tan(h * _RAD) / 3600.0


def elevation_deg(lat: float, lon: float, unix_s: float) -> float:
    """Apparent (refracted) elevation of the sun in degrees; the fast path for light sensors."""
    sin_el, _, _ = _geometry(lat, lon, unix_s)
    h = math.asin(sin_el) / _RAD
    return h + refraction_deg(h)


def position(lat: float, lon: float, unix_s: float) -> SunPosition:
    """The sun seen from (lat deg north, lon deg east) at a Unix time (UTC seconds)."""
    sin_el, ha, decl = _geometry(lat, lon, unix_s)
    h = math.asin(sin_el) / _RAD
    phi = lat * _RAD
    # Azimuth measured from south (Meeus 13.5), turned to from-north.
    az = math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    return SunPosition(h, h + refraction_deg(h), (az / _RAD + 180.0) % 360.0)


def illuminance_lux(apparent_elevation: float, sky: float = 1.0) -> float:
    """Horizontal outdoor illuminance (lux) from the sun and sky (USNO Circular 171, ATMOS).

    apparent_elevation: degrees, refraction included; sky: cloud divisor >= 1.
    """
    if sky < 1.0:
        raise ValueError(f"sky divisor must be >= 1 (1 = clear), got {sky}")
    h = max(-90.0, min(90.0, apparent_elevation))
    u = math.sin(h * _RAD)
    x = 753.66156
    s = math.asin(x * math.cos(h * _RAD) / (x + 1.0))
    m = x * (math.cos(s) - u) + math.cos(s)
    e = math.exp(-0.21 * m) * u + 0.0289 * math.exp(-0.042 * m) * (1.0 + (h + 90.0) * u / 57.29577951)
    return max(NIGHT_LUX, 133775.0 * e / sky)


def lux_at(lat: float, lon: float, unix_s: float, sky: float = 1.0) -> float:
    """Outdoor illuminance at a place and time: what an ambient light sensor would see."""
    return illuminance_lux(elevation_deg(lat, lon, unix_s), sky)
