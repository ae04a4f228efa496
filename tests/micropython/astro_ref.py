# Independent reference for firmware/astro.py: the NOAA Solar Calculator's
# equations (NOAA GML, main.js / NOAA_Solar_Calculations_day.xls, after Meeus),
# transcribed literally in double precision: Julian Day, Julian centuries,
# every polynomial term, degrees throughout. It shares no code with the node
# implementation (which reduces angles in integers for float32 boards), and
# it iterates each event to convergence instead of a fixed number of passes.
# Plain Python that runs on CPython (tests/test_astro.py) and under the
# MicroPython WebAssembly port (mp_astro.py), which computes in doubles.

import math


def julian_day(year, month, day):
    # NOAA calcJD: Julian Day at 0h UTC of a Gregorian date
    if month <= 2:
        year -= 1
        month += 12
    a = math.floor(year / 100)
    b = 2 - a + math.floor(a / 4)
    return math.floor(365.25 * (year + 4716)) + math.floor(30.6001 * (month + 1)) + day + b - 1524.5


def _deg(x):
    return x * 180.0 / math.pi


def _rad(x):
    return x * math.pi / 180.0


def sun_position(jd):
    """(declination deg, equation of time min) at Julian Day jd (UTC ~ TT)."""
    t = (jd - 2451545.0) / 36525.0
    l0 = 280.46646 + t * (36000.76983 + t * 0.0003032)
    while l0 > 360.0:
        l0 -= 360.0
    while l0 < 0.0:
        l0 += 360.0
    m = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    e = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    mrad = _rad(m)
    c = (
        math.sin(mrad) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * mrad) * (0.019993 - 0.000101 * t)
        + math.sin(3 * mrad) * 0.000289
    )
    true_long = l0 + c
    omega = 125.04 - 1934.136 * t
    app_long = true_long - 0.00569 - 0.00478 * math.sin(_rad(omega))
    seconds = 21.448 - t * (46.8150 + t * (0.00059 - t * 0.001813))
    e0 = 23.0 + (26.0 + seconds / 60.0) / 60.0
    obliq = e0 + 0.00256 * math.cos(_rad(omega))
    decl = _deg(math.asin(math.sin(_rad(obliq)) * math.sin(_rad(app_long))))
    y = math.tan(_rad(obliq) / 2.0) ** 2
    l0r = _rad(l0)
    etime = (
        y * math.sin(2 * l0r)
        - 2 * e * math.sin(mrad)
        + 4 * e * y * math.sin(mrad) * math.cos(2 * l0r)
        - 0.5 * y * y * math.sin(4 * l0r)
        - 1.25 * e * e * math.sin(2 * mrad)
    )
    return decl, _deg(etime) * 4.0


def hour_angle_arg(lat, decl):
    """The argument of acos in NOAA calcHourAngleSunrise (zenith 90.833 deg)."""
    return math.cos(_rad(90.833)) / (math.cos(_rad(lat)) * math.cos(_rad(decl))) - math.tan(_rad(lat)) * math.tan(
        _rad(decl)
    )


def event(lat, lon, year, month, day, rise):
    """(minutes after 0h UTC of the date, acos argument) of sunrise or sunset, converged;
    (None, argument) when it does not happen. lon east positive, as NOAA's main.js."""
    jd0 = julian_day(year, month, day)
    t = 720.0 - 4.0 * lon  # start at local mean noon
    x = 0.0
    for _ in range(30):
        decl, eqtime = sun_position(jd0 + t / 1440.0)
        x = hour_angle_arg(lat, decl)
        if x > 1.0 or x < -1.0:
            return None, x
        ha = _deg(math.acos(x))
        new = 720.0 - 4.0 * (lon + (ha if rise else -ha)) - eqtime
        if abs(new - t) < 1e-4:
            return new, x
        t = new
    return t, x


def sun_times_minutes(lat, lon, year, month, day):
    """(sunrise, sunset) minutes after 0h UTC, None where it does not happen."""
    return event(lat, lon, year, month, day, True)[0], event(lat, lon, year, month, day, False)[0]
