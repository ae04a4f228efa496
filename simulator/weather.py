"""Seeded weather for a simulated city, and reference evapotranspiration.

Daily weather is drawn the way Richardson's WGEN generator does it
(C. W. Richardson, "Stochastic simulation of daily precipitation,
temperature, and solar radiation", Water Resources Research 17(1), 1981):

- wet or dry days from a two-state first-order Markov chain. From a month's
  fraction of wet days f (days with at least 1 mm) and a persistence r (the
  lag-1 autocorrelation of wet/dry), P(wet | dry) = f (1 - r) and
  P(wet | wet) = r + f (1 - r), whose stationary wet fraction is f;
- the amount of a wet day: 1 mm plus a gamma variate (shape 0.75, a typical
  fitted value for daily rain) with the month's mean amount per wet day;
- Tmax and Tmin: the month's normals, interpolated linearly between
  mid-months, plus an AR(1) anomaly shared by both (persistence 0.65,
  standard deviation 2.5 degC), cooler afternoons and milder nights on wet
  days (wet/dry offsets that keep the monthly means).

Within a day: rain falls in 1-3 events, each at a lognormal intensity
(median 2 mm/h) that sets its duration (0.25-10 h); the temperature follows
W. J. Parton and J. A. Logan, "A model for diurnal variation in soil and
atmospheric temperature", Agricultural Meteorology 23, 1981 (air at 150 cm:
Tmax 1.86 h after solar noon, Tmin 0.17 h before sunrise, exponential night
cooling with b = 2.2, normalised here so the night ends exactly at the next
morning's minimum, so the curve is continuous). Sunrise and sunset come from
firmware/astro.py, the same code the lamps run.

Reference evapotranspiration ET0 by Hargreaves, as FAO-56 gives it (R. G.
Allen, L. S. Pereira, D. Raes, M. Smith, "Crop evapotranspiration",
FAO Irrigation and Drainage Paper 56, 1998), equation numbers from there:

    ET0 = 0.0023 (Tmean + 17.8) (Tmax - Tmin)^0.5 0.408 Ra       (Eq. 52; 0.408: Eq. 20)
    Tmean = (Tmax + Tmin) / 2                                      (Eq. 9)
    Ra = 24 (60) / pi Gsc dr [ws sin(phi) sin(d) + cos(phi) cos(d) sin(ws)]   (Eq. 21)
    dr = 1 + 0.033 cos(2 pi J / 365)                               (Eq. 23)
    d  = 0.409 sin(2 pi J / 365 - 1.39)                            (Eq. 24)
    ws = arccos(-tan(phi) tan(d))                                  (Eq. 25)

The day's ET0 is spread over its hours in proportion to the extraterrestrial
radiation of each part of the day (the integrand of Eq. 28, with the solar
time of Eq. 31 and the seasonal correction Sc of Eqs. 32-33), so evaporation
happens by day, peaks after noon, and none of it at night.

Days are local mean solar days (UTC shifted by longitude / 15 h), the date
convention of firmware/astro.py. Limits: climates are monthly normals; no
wind, humidity or radiation series (Hargreaves needs none); no snow (a day
below 0 degC still rains); FAO-56 warns that Ra and Hargreaves are
approximate above 55 degrees of latitude; cloudiness is only the sky divisor
of the light model (1 dry, 3 wet day, 10 while it rains).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from firmware.astro import sun_times_day

GSC = 0.0820  # solar constant, MJ m-2 min-1 (FAO-56 Eq. 21)
_DAY = 86400
_MONTH_DAYS = (31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
MAX_EVENT_H = 10.0  # longest single rain event
MIN_EVENT_H = 0.25
RAIN_INTENSITY_MEDIAN_MM_H = 2.0
RAIN_INTENSITY_SIGMA = 0.8  # of the natural log
RAIN_GAMMA_SHAPE = 0.75
TEMP_AR1 = 0.65
TEMP_SD_C = 2.5
WET_TMAX_DROP_C = 2.0  # a wet day's afternoon is cooler ...
WET_TMIN_RISE_C = 0.5  # ... and its night milder (clouds)
PL_A_H = 1.86  # Parton & Logan: Tmax lag after solar noon
PL_B = 2.2  # night cooling coefficient
PL_C_H = -0.17  # Tmin lag after sunrise
SKY_DRY, SKY_WET, SKY_RAIN = 1.0, 3.0, 10.0


@dataclass(frozen=True, slots=True)
class Climate:
    """Monthly normals a generator aims at (index 0 = January)."""

    name: str
    tmax_c: tuple[float, ...]
    tmin_c: tuple[float, ...]
    rain_mm: tuple[float, ...]
    wet_days: tuple[float, ...]  # days with >= 1 mm
    wet_persistence: float = 0.35

    def __post_init__(self) -> None:
        for key in ("tmax_c", "tmin_c", "rain_mm", "wet_days"):
            if len(getattr(self, key)) != 12:
                raise ValueError(f"climate {self.name}: {key} needs 12 monthly values")
        for m in range(12):
            if self.tmax_c[m] <= self.tmin_c[m]:
                raise ValueError(f"climate {self.name}: month {m + 1} has tmax <= tmin")
            if not 0 <= self.wet_days[m] <= _MONTH_DAYS[m]:
                raise ValueError(f"climate {self.name}: month {m + 1} wet_days out of range")
            if self.rain_mm[m] < 0 or (self.wet_days[m] > 0 and self.rain_mm[m] < self.wet_days[m]):
                raise ValueError(f"climate {self.name}: month {m + 1} needs rain_mm >= wet_days (1 mm each)")
        if not 0 <= self.wet_persistence < 1:
            raise ValueError(f"climate {self.name}: wet_persistence must be in [0, 1)")


# Approximate 1991-2020 (Seville: 1981-2010) monthly normals, rounded, from the
# national services' station pages (Meteo-France Lyon-Bron and Paris-Montsouris,
# DWD Berlin, AEMET Sevilla Aeropuerto). Targets for a generator, not data.
CLIMATES = {
    "lyon": Climate(
        "lyon",
        (7.4, 9.3, 13.9, 17.4, 21.5, 25.6, 28.3, 27.9, 23.3, 18.0, 11.6, 8.0),
        (0.6, 1.0, 3.9, 6.8, 10.7, 14.5, 16.6, 16.3, 12.6, 9.5, 4.6, 1.5),
        (48, 43, 52, 69, 85, 74, 63, 66, 86, 107, 93, 56),
        (8.6, 7.6, 8.1, 8.9, 10.3, 7.8, 6.4, 6.6, 7.2, 9.6, 9.4, 8.9),
    ),
    "paris": Climate(
        "paris",
        (7.5, 8.9, 12.8, 16.3, 19.8, 23.3, 25.7, 25.5, 21.4, 16.6, 11.1, 8.0),
        (3.0, 3.4, 5.6, 7.8, 11.2, 14.3, 16.4, 16.2, 13.1, 10.3, 6.2, 3.7),
        (51, 41, 43, 44, 63, 50, 63, 55, 45, 59, 53, 60),
        (10, 9, 9, 8, 9, 8, 7, 7, 7, 9, 10, 11),
    ),
    "berlin": Climate(
        "berlin",
        (3.7, 5.1, 9.1, 15.0, 19.4, 22.7, 25.0, 24.6, 19.8, 13.9, 7.8, 4.3),
        (-1.5, -1.1, 1.3, 5.0, 9.1, 12.4, 14.6, 14.2, 10.6, 6.5, 2.6, -0.4),
        (43, 35, 37, 29, 54, 56, 67, 59, 45, 36, 40, 43),
        (10, 8, 8, 7, 8, 8, 9, 8, 7, 7, 8, 10),
    ),
    "seville": Climate(
        "seville",
        (16.0, 18.1, 21.7, 23.4, 27.2, 31.9, 35.3, 35.1, 31.6, 26.0, 20.3, 16.6),
        (5.7, 7.1, 9.5, 11.2, 14.5, 18.2, 20.2, 20.3, 18.4, 14.8, 10.1, 7.2),
        (59, 51, 40, 51, 27, 8, 1, 5, 25, 64, 82, 86),
        (6, 5, 5, 6, 3, 1, 0.2, 0.5, 2, 5, 6, 7),
    ),
}


# ---------------------------------------------------------------- FAO-56 radiation and ET0


def inverse_distance(doy: int) -> float:
    """dr, inverse relative Earth-Sun distance (FAO-56 Eq. 23)."""
    return 1.0 + 0.033 * math.cos(2.0 * math.pi * doy / 365.0)


def declination(doy: int) -> float:
    """Solar declination in radians (FAO-56 Eq. 24)."""
    return 0.409 * math.sin(2.0 * math.pi * doy / 365.0 - 1.39)


def sunset_hour_angle(lat_rad: float, decl: float) -> float:
    """ws in radians (FAO-56 Eq. 25), clamped to [0, pi] where the sun never sets or rises."""
    x = -math.tan(lat_rad) * math.tan(decl)
    return math.acos(max(-1.0, min(1.0, x)))


def ra_mj(lat_deg: float, doy: int) -> float:
    """Daily extraterrestrial radiation Ra, MJ m-2 day-1 (FAO-56 Eq. 21)."""
    if not -90.0 <= lat_deg <= 90.0 or not 1 <= doy <= 366:
        raise ValueError(f"latitude {lat_deg} or day of year {doy} out of range")
    phi = math.radians(lat_deg)
    d = declination(doy)
    ws = sunset_hour_angle(phi, d)
    return (
        24.0
        * 60.0
        / math.pi
        * GSC
        * inverse_distance(doy)
        * (ws * math.sin(phi) * math.sin(d) + math.cos(phi) * math.cos(d) * math.sin(ws))
    )


def et0_hargreaves(tmin_c: float, tmax_c: float, ra: float) -> float:
    """Reference evapotranspiration, mm/day (FAO-56 Eq. 52), Ra in MJ m-2 day-1."""
    if tmax_c < tmin_c:
        raise ValueError(f"tmax {tmax_c} below tmin {tmin_c}")
    tmean = (tmax_c + tmin_c) / 2.0  # Eq. 9
    return max(0.0, 0.0023 * (tmean + 17.8) * math.sqrt(tmax_c - tmin_c) * 0.408 * ra)


def seasonal_correction_h(doy: int) -> float:
    """Sc, the equation of time in hours (FAO-56 Eqs. 32-33)."""
    b = 2.0 * math.pi * (doy - 81) / 364.0
    return 0.1645 * math.sin(2.0 * b) - 0.1255 * math.cos(b) - 0.025 * math.sin(b)


def ra_fraction(lat_deg: float, doy: int, h0: float, h1: float) -> float:
    """Share of the day's Ra received between local mean solar hours h0 < h1 (0..24).

    The integral of Eq. 28's integrand over the hour angles of Eq. 31
    (omega = pi/12 (t + Sc - 12)), clipped to sunrise..sunset, over the same
    integral across the whole day.
    """
    phi = math.radians(lat_deg)
    d = declination(doy)
    ws = sunset_hour_angle(phi, d)
    a = math.sin(phi) * math.sin(d)
    b = math.cos(phi) * math.cos(d)
    whole = 2.0 * (a * ws + b * math.sin(ws))
    if whole <= 0.0:
        return 0.0
    sc = seasonal_correction_h(doy)
    lo = math.pi / 12.0 * (h0 + sc - 12.0)
    hi = math.pi / 12.0 * (h1 + sc - 12.0)
    got = 0.0
    # Sc shifts the day's window off [-pi, pi]: count the sunlit arcs of the
    # neighbouring days too, so a whole day's fractions always sum to 1.
    for k in (-1, 0, 1):
        c = 2.0 * math.pi * k
        w0 = max(lo, c - ws)
        w1 = min(hi, c + ws)
        if w1 > w0:
            got += a * (w1 - w0) + b * (math.sin(w1) - math.sin(w0))
    return max(0.0, got) / whole


# ---------------------------------------------------------------- the generator


@dataclass(frozen=True, slots=True)
class RainEvent:
    start: float  # Unix seconds
    end: float
    mm: float

    @property
    def intensity_mm_h(self) -> float:
        return self.mm / ((self.end - self.start) / 3600.0)


@dataclass(frozen=True, slots=True)
class Day:
    """One local mean solar day of weather."""

    day: int  # days since 1970-01-01 (local mean solar date)
    start: float  # Unix seconds of its local mean midnight
    doy: int
    tmin_c: float
    tmax_c: float
    rain_mm: float  # total of the events that start this day
    ra_mj: float
    et0_mm: float
    sunrise: float  # Unix seconds (a 06:00/18:00 stand-in in polar day or night)
    sunset: float
    wet: bool


def _doy(day: int) -> tuple[int, int, int]:
    """(day of year 1..366, month 1..12, day of month) of a day count since 1970-01-01."""
    import datetime as _dt

    d = _dt.date(1970, 1, 1) + _dt.timedelta(days=day)
    return d.timetuple().tm_yday, d.month, d.day


def _interp(values: Sequence[float], month: int, mday: int) -> float:
    """A month's normal interpolated linearly between mid-months (month 1..12)."""
    m = month - 1
    pos = (mday - 0.5) / _MONTH_DAYS[m] - 0.5  # -0.5 .. 0.5 around mid-month
    if pos >= 0:
        other, w = (m + 1) % 12, pos
    else:
        other, w = (m - 1) % 12, -pos
    return values[m] * (1.0 - w) + values[other] * w


class Weather:
    """Weather for one place over [start, start + duration), drawn from a seed.

    The same (climate, place, start, duration, seed, extra_rain, dry_days)
    always give the same weather. Queries are valid from a day before start to
    a day after the end. `extra_rain` adds scripted events (a scenario's
    storm), random_rain=False keeps only those, and `dry_days` (day numbers
    since 1970-01-01 as `Day.day` counts them: local mean solar dates) have
    no drawn rain and a dry day's temperatures, while every other day keeps
    exactly its seeded draw (the wet/dry chain and the random stream go on
    as drawn, so scripting a day changes no other).
    """

    def __init__(
        self,
        lat: float,
        lon: float,
        start: float,
        duration_s: float,
        seed: int,
        climate: Climate | str = "lyon",
        extra_rain: Sequence[RainEvent] = (),
        random_rain: bool = True,
        dry_days: Sequence[int] = (),
    ):
        if isinstance(climate, str):
            try:
                climate = CLIMATES[climate]
            except KeyError:
                raise ValueError(f"unknown climate {climate!r} (known: {', '.join(sorted(CLIMATES))})") from None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"latitude/longitude out of range: {lat}, {lon}")
        if duration_s <= 0:
            raise ValueError("duration must be positive")
        self.climate = climate
        self.lat = lat
        self.lon = lon
        self._shift = lon * 240.0  # seconds local mean solar time is ahead of UTC
        first = self._day_of(start) - 1
        last = self._day_of(start + duration_s) + 1
        rng = random.Random(f"lumeau-weather:{seed}")
        dry = frozenset(dry_days)
        self.days: list[Day] = []
        events: list[RainEvent] = []
        drawn_wet = False  # the chain's state: the draw, whatever a script made of the day
        anomaly = rng.gauss(0.0, TEMP_SD_C)
        c = climate
        for day in range(first, last + 1):
            doy, month, mday = _doy(day)
            f = _interp(c.wet_days, month, mday) / _MONTH_DAYS[month - 1]
            r = c.wet_persistence
            p_wet = r + f * (1.0 - r) if drawn_wet else f * (1.0 - r)
            # Draw every variate every day so a day's weather does not shift
            # the random stream of the days after it.
            u_wet = rng.random()
            g = rng.gammavariate(RAIN_GAMMA_SHAPE, 1.0)
            eps = rng.gauss(0.0, 1.0)
            drawn_wet = random_rain and u_wet < p_wet
            wet = drawn_wet and day not in dry
            anomaly = TEMP_AR1 * anomaly + math.sqrt(1.0 - TEMP_AR1**2) * TEMP_SD_C * eps
            tmax = _interp(c.tmax_c, month, mday) + anomaly
            tmin = _interp(c.tmin_c, month, mday) + anomaly
            tmax += -WET_TMAX_DROP_C * (1.0 - f) if wet else WET_TMAX_DROP_C * f
            tmin += WET_TMIN_RISE_C * (1.0 - f) if wet else -WET_TMIN_RISE_C * f
            if tmax - tmin < 1.0:
                mid = (tmax + tmin) / 2.0
                tmax, tmin = mid + 0.5, mid - 0.5
            day_start = day * _DAY - self._shift
            amount = 0.0
            if drawn_wet:
                rain_month = _interp(c.rain_mm, month, mday)
                wet_month = max(_interp(c.wet_days, month, mday), 1e-9)
                mean = max(rain_month / wet_month - 1.0, 0.1)
                amount = 1.0 + g * mean / RAIN_GAMMA_SHAPE
                split = self._split(rng, day_start, amount)  # drawn even when scripted dry: same stream
                if wet:
                    events.extend(split)
                else:
                    amount = 0.0
            rise, sset = sun_times_day(lat, lon, day)
            sunrise = day * _DAY + (rise if rise is not None else 6 * 3600 - self._shift)
            sunset = day * _DAY + (sset if sset is not None else 18 * 3600 - self._shift)
            ra = ra_mj(lat, doy)
            self.days.append(
                Day(day, day_start, doy, tmin, tmax, amount, ra, et0_hargreaves(tmin, tmax, ra), sunrise, sunset, wet)
            )
        for e in extra_rain:
            if e.end <= e.start or e.mm < 0:
                raise ValueError(f"bad rain event {e}")
            events.append(e)
        events.sort(key=lambda e: e.start)
        self.events = events
        self._starts = [e.start for e in events]
        self._max_len = max((e.end - e.start for e in events), default=0.0)
        # Scripted rain counts in its day's total and makes the day wet.
        for e in extra_rain:
            i = self._index(e.start)
            d = self.days[i]
            self.days[i] = Day(
                d.day,
                d.start,
                d.doy,
                d.tmin_c,
                d.tmax_c,
                d.rain_mm + e.mm,
                d.ra_mj,
                d.et0_mm,
                d.sunrise,
                d.sunset,
                True,
            )

    @staticmethod
    def _split(rng: random.Random, day_start: float, amount: float) -> list[RainEvent]:
        n = 1 if amount < 5.0 else (2 if amount < 15.0 else 3)
        weights = [rng.random() + 0.2 for _ in range(n)]
        total = sum(weights)
        out = []
        for w in weights:
            mm = amount * w / total
            intensity = RAIN_INTENSITY_MEDIAN_MM_H * math.exp(rng.gauss(0.0, RAIN_INTENSITY_SIGMA))
            hours = min(MAX_EVENT_H, max(MIN_EVENT_H, mm / intensity))
            start = day_start + rng.random() * (24.0 - hours) * 3600.0
            out.append(RainEvent(start, start + hours * 3600.0, mm))
        return out

    # ------------------------------------------------------------ lookups
    def _day_of(self, unix_s: float) -> int:
        return int((unix_s + self._shift) // _DAY)

    def _index(self, unix_s: float) -> int:
        i = self._day_of(unix_s) - self.days[0].day
        if not 0 <= i < len(self.days):
            raise ValueError(
                f"time {unix_s} is outside the weather's span ({self.days[0].start}..{self.days[-1].start + _DAY})"
            )
        return i

    def day(self, unix_s: float) -> Day:
        """The weather day that holds a time."""
        return self.days[self._index(unix_s)]

    def temperature_c(self, unix_s: float) -> float:
        """Air temperature (Parton & Logan curve through the day's Tmin and Tmax)."""
        i = self._index(unix_s)
        d = self.days[i]
        t_min_at = d.sunrise + PL_C_H * 3600.0
        if unix_s < t_min_at:
            if i == 0:
                return d.tmin_c
            prev = self.days[i - 1]
            return self._night(prev, d.tmin_c, t_min_at, unix_s)
        if unix_s <= d.sunset:
            y = (d.sunset - t_min_at) / 3600.0
            m = (unix_s - t_min_at) / 3600.0
            return d.tmin_c + (d.tmax_c - d.tmin_c) * math.sin(math.pi * m / (y + 2.0 * PL_A_H))
        if i + 1 == len(self.days):
            return self._night(d, d.tmin_c, d.sunset + 12 * 3600.0, unix_s)
        nxt = self.days[i + 1]
        return self._night(d, nxt.tmin_c, nxt.sunrise + PL_C_H * 3600.0, unix_s)

    @staticmethod
    def _night(d: Day, next_tmin: float, next_min_at: float, unix_s: float) -> float:
        t_min_at = d.sunrise + PL_C_H * 3600.0
        y = (d.sunset - t_min_at) / 3600.0
        t_set = d.tmin_c + (d.tmax_c - d.tmin_c) * math.sin(math.pi * y / (y + 2.0 * PL_A_H))
        z = max((next_min_at - d.sunset) / 3600.0, 1e-6)
        n = min(max((unix_s - d.sunset) / 3600.0, 0.0), z)
        k = (math.exp(-PL_B * n / z) - math.exp(-PL_B)) / (1.0 - math.exp(-PL_B))
        return next_tmin + (t_set - next_tmin) * k

    def rain_mm(self, t0: float, t1: float) -> float:
        """Rain that falls in [t0, t1), mm (each event at its constant intensity)."""
        if t1 <= t0:
            return 0.0
        total = 0.0
        i = bisect.bisect_left(self._starts, t0 - self._max_len)
        ev = self.events
        while i < len(ev) and ev[i].start < t1:
            e = ev[i]
            a = max(t0, e.start)
            b = min(t1, e.end)
            if b > a:
                total += e.mm * (b - a) / (e.end - e.start)
            i += 1
        return total

    def raining(self, unix_s: float) -> bool:
        i = bisect.bisect_right(self._starts, unix_s)
        j = bisect.bisect_left(self._starts, unix_s - self._max_len)
        return any(self.events[k].end > unix_s for k in range(j, i))

    def rain_sensor_wet(self, unix_s: float, trip_mm: float = 3.0, window_h: float = 6.0) -> bool:
        """A rain sensor (hygroscopic discs) is wet when trip_mm fell within the last window_h.

        3 mm and a few hours of drying are typical settings of such sensors.
        """
        return self.rain_mm(unix_s - window_h * 3600.0, unix_s) >= trip_mm

    def sky(self, unix_s: float) -> float:
        """Cloud divisor for simulator.sun.illuminance_lux."""
        if self.raining(unix_s):
            return SKY_RAIN
        return SKY_WET if self.day(unix_s).wet else SKY_DRY

    def et0_mm(self, t0: float, t1: float) -> float:
        """Reference evapotranspiration over [t0, t1), mm: each day's ET0 spread by its Ra."""
        if t1 <= t0:
            return 0.0
        total = 0.0
        t = t0
        while t < t1:
            d = self.day(t)
            end = min(t1, d.start + _DAY)
            if d.et0_mm > 0.0:
                h0 = (t - d.start) / 3600.0
                h1 = (end - d.start) / 3600.0
                total += d.et0_mm * ra_fraction(self.lat, d.doy, h0, h1)
            t = end
        return total
