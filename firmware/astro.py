"""Sunrise and sunset on the node, from its latitude and longitude.

The NOAA solar equations (NOAA Global Monitoring Laboratory, Solar
Calculator and its spreadsheet, after Meeus, "Astronomical Algorithms"):
mean longitude and anomaly of the sun, equation of centre, apparent
longitude, obliquity, declination, equation of time; sunrise and sunset are
when the centre of the sun is 0.833 degrees below an ideal horizon
(refraction plus the sun's radius). Each event is computed at the sun's
position at (an estimate of) the event itself, refined twice, which is what
the NOAA calculator does; the spreadsheet evaluates the whole day at one time
and so is up to a minute or so off at high latitudes.

Accuracy: within 2 minutes of the NOAA algorithm (tests/test_astro.py checks
it against an independent double-precision transcription, over latitudes
from pole to pole and years 2000-2100, and with every intermediate value
rounded to float32), except within about ten minutes of local midnight or
noon at latitudes in the week a polar day or night begins or ends, where
a change of 0.01 degree in declination moves the event by several minutes
and no two implementations of the equations agree. Checked against
published times too:
  - London, Houses of Parliament (51.5 N, 0.125 W), 21 June 2025: sunrise
    04:42:38 BST, sunset 21:22:06 BST (diamond geezer, "Summer Solstice
    London", 20 June 2025);
  - Sydney Observatory (33.86 S, 151.20 E): earliest sunrise 05:37 AEDT on
    1-10 December 2008, latest sunset 20:10 AEDT on 2-12 January 2009
    (N. Lomb, Sydney Observatory blog, 17 December 2008);
  - Tromsø (69.65 N, 18.96 E): midnight sun from about 20 May to 22 July,
    polar night from about 27 November to 15 January.

Boards have 32-bit floats (MicroPython on the ESP32 and RP2040 uses single
precision). Two things keep that harmless here: the date is an integer count
of days, and the sun's mean longitude and anomaly (which grow by about one
degree a day) are reduced modulo 360 in integers before any float sees them,
so no float ever holds a Julian date (2.46e6 days: 0.25-day resolution in
float32) or an angle of thousands of degrees. The results are integers,
because a float32 cannot hold a Unix time (1.7e9 s: 128 s resolution).

Dates: the date of the call is the local mean solar date at the longitude
(UTC shifted by longitude / 15 hours), and the results are UTC seconds after
00:00 UTC of that date. Far from Greenwich they leave 0..86400: Sydney's
sunrise is about -19 000 s (the evening before in UTC). The local mean date
can differ from the legal date where the time zone is far from the
longitude (Kiribati's Line Islands keep UTC+14 at 157 W). Every event of a
date falls within its local mean day, so the apps can find the evening's
sunset and the next morning's sunrise from two consecutive dates.

Allocation: a call allocates only float temporaries (and two small ints or
None); the apps call it once a day.
"""

from math import acos, asin, cos, sin, tan, pi

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
_RAD = pi / 180.0
_COS_ZENITH = -0.014543897651582657  # cos(90.833 deg): upper limb, standard refraction
_DAYS_1970_TO_2000 = const(10957)  # 1970-01-01 .. 2000-01-01
_PASSES = const(8)  # refinements of an event time; 2-3 suffice below 65 degrees of latitude


def days_from_civil(year, month, day):
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if month <= 2:
        year -= 1
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def sun_decl_eot(n, frac):
    """(declination rad, equation of time min) at day n (days since 2000-01-01) + frac days UTC."""
    # Days since J2000.0 = 2000-01-01 12:00: n - 0.5 + frac. The mean motions
    # 0.98564736 and 0.98560028 deg/day are written as 1 - small so that the
    # integer part is reduced modulo 360 exactly.
    d = frac - 0.5
    t = (n + d) / 36525.0  # Julian centuries: small, float32 is fine
    l0 = (280.46646 + (n % 360)) - 0.01435264 * n + 0.98564736 * d
    m = ((357.52911 + (n % 360)) - 0.01439972 * n + 0.98560028 * d) * _RAD
    e = 0.016708634 - 0.000042037 * t
    c = sin(m) * (1.914602 - 0.004817 * t) + sin(2 * m) * (0.019993 - 0.000101 * t) + sin(3 * m) * 0.000289
    omega = (125.04 - 0.0529537577 * (n + d)) * _RAD
    lam = (l0 + c - 0.00569 - 0.00478 * sin(omega)) * _RAD
    eps = (23.43929111 - 0.0130042 * t + 0.00256 * cos(omega)) * _RAD
    decl = asin(sin(eps) * sin(lam))
    y = tan(eps / 2)
    y *= y
    l0 = (l0 % 360.0) * _RAD
    eot = (
        y * sin(2 * l0)
        - 2 * e * sin(m)
        + 4 * e * y * sin(m) * cos(2 * l0)
        - 0.5 * y * y * sin(4 * l0)
        - 1.25 * e * e * sin(2 * m)
    )
    return decl, eot * 229.1831180523293  # radians of hour angle -> minutes of time


def _cos_ha(lat, decl):
    """cos of the hour angle of sunrise: > 1 never rises, < -1 never sets."""
    phi = lat * _RAD
    return _COS_ZENITH / (cos(phi) * cos(decl)) - tan(phi) * tan(decl)


def _event(lat, lon, n, sign):
    """Minutes after 00:00 UTC of day n of sunrise (sign 1) or sunset (-1), or None."""
    t = 720.0 - 4.0 * lon  # first estimate: local mean noon
    for _ in range(_PASSES):
        decl, eot = sun_decl_eot(n, t / 1440.0)
        x = _cos_ha(lat, decl)
        if x > 1.0 or x < -1.0:
            return None
        prev = t
        t = 720.0 - 4.0 * (lon + sign * acos(x) / _RAD) - eot
        if -0.01 < t - prev < 0.01:
            break
    return t


def sun_times_day(lat, lon, day):
    """sun_times() for `day` counted in days since 1970-01-01 (what the apps use)."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError("latitude or longitude out of range")
    # cos(lat) vanishes at a pole (and turns negative in float32): stay 1 km off it
    lat = max(-89.99, min(89.99, lat))
    n = day - _DAYS_1970_TO_2000
    rise = _event(lat, lon, n, 1)
    sset = _event(lat, lon, n, -1)
    return (None if rise is None else int(round(rise * 60.0)), None if sset is None else int(round(sset * 60.0)))


def sun_times(lat, lon, year, month, day):
    """(sunrise, sunset) in UTC seconds after 00:00 UTC of the date, None for an event
    that does not happen that day (polar day or polar night).

    lat: degrees north (-90..90); lon: degrees east (-180..180). See the module
    docstring for the date convention and accuracy.
    """
    return sun_times_day(lat, lon, days_from_civil(year, month, day))


def polar_day(lat, lon, day):
    """True when the sun stays up through local mean noon of `day` (days since 1970)
    without setting: tells polar day from polar night when sun_times gives no events."""
    lat = max(-89.99, min(89.99, lat))
    n = day - _DAYS_1970_TO_2000
    decl, _ = sun_decl_eot(n, 0.5 - lon / 360.0)
    return _cos_ha(lat, decl) < -1.0
