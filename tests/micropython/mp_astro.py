# firmware/astro.py inside real MicroPython, loaded from .mpy as on a board, against the
# independent NOAA transcription (astro_ref.py, the same file tests/test_astro.py uses) and
# published times. The WebAssembly port computes in doubles; tests/test_astro.py covers float32.
import gc

from firmware import astro
import astro_ref

MPY = True
TOLERANCE_S = 120
EDGE = 0.999


def _check(lat, lon, y, m, d):
    got = astro.sun_times(lat, lon, y, m, d)
    for k in (0, 1):
        want, x = astro_ref.event(lat, lon, y, m, d, k == 0)
        if (got[k] is None) != (want is None):
            assert abs(x) > EDGE, (lat, lon, y, m, d, k, got[k], want)
            continue
        if want is not None and abs(x) <= EDGE:
            err = abs(got[k] - want * 60)
            assert err <= TOLERANCE_S, (lat, lon, y, m, d, k, got[k], want * 60)


def test_published_times():
    rise, sset = astro.sun_times(51.5, -0.125, 2025, 6, 21)  # London, 04:42:38 / 21:22:06 BST
    assert abs(rise - (3 * 3600 + 42 * 60 + 38)) <= TOLERANCE_S
    assert abs(sset - (20 * 3600 + 22 * 60 + 6)) <= TOLERANCE_S
    rise, _ = astro.sun_times(-33.8597, 151.2048, 2008, 12, 5)  # Sydney, 05:37 AEDT
    assert abs(rise - (5 * 3600 + 37 * 60 - 11 * 3600)) <= TOLERANCE_S
    _, sset = astro.sun_times(-33.8597, 151.2048, 2009, 1, 7)  # Sydney, 20:10 AEDT
    assert abs(sset - (20 * 3600 + 10 * 60 - 11 * 3600)) <= TOLERANCE_S


def test_tromso_polar_day_and_night():
    day = astro.days_from_civil(2025, 6, 21)
    assert astro.sun_times(69.65, 18.96, 2025, 6, 21) == (None, None)
    assert astro.polar_day(69.65, 18.96, day)
    assert astro.sun_times(69.65, 18.96, 2025, 12, 21) == (None, None)
    assert not astro.polar_day(69.65, 18.96, astro.days_from_civil(2025, 12, 21))
    rise, sset = astro.sun_times(69.65, 18.96, 2025, 3, 20)
    assert rise < sset


def test_sweep_against_reference():
    # a fixed pseudo-random sweep (LCG: the port's random module is optional)
    s = 12345
    n = 0
    while n < 400:
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        lat = (s % 17801) / 100.0 - 89.0
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        lon = (s % 36001) / 100.0 - 180.0
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        y = 2000 + s % 101
        m = 1 + (s >> 8) % 12
        d = 1 + (s >> 12) % 28
        _check(lat, lon, y, m, d)
        n += 1


def test_date_line():
    for lat in (-40.0, 0.0, 51.0):
        east = astro.sun_times(lat, 180.0, 2025, 4, 2)
        west = astro.sun_times(lat, -180.0, 2025, 4, 1)
        for k in (0, 1):
            assert abs(west[k] - (east[k] + 86400)) <= 1


def test_allocation_per_call_is_small():
    # A board boxes every float result on the heap (16 bytes each); the apps call this once a
    # day, so only a bound that catches a runaway loop matters.
    if not hasattr(gc, "mem_alloc"):
        return  # CPython (pytest given this file by path): nothing to measure
    astro.sun_times(48.85, 2.35, 2025, 1, 1)
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        astro.sun_times(48.85, 2.35, 2025, 6, 1)
        used = gc.mem_alloc() - before
    finally:
        gc.enable()
    print("sun_times allocates", used, "bytes per call (float temporaries)")
    assert used < 16384
