# The lighting app's config checks (firmware/lighting.py's check): the
# "lighting" section's settings with their defaults and ranges, and the
# default profile. Boot-only: lighting.check loads this module for the call
# and drops it again (firmware.unload), so a board does not keep it in its
# heap. Settings and profile rules: lighting.py's header comment.

const = int  # MicroPython's compiler folds const() itself, whatever the name is bound to
# protocol.messages numbers, as private consts (tests/test_node_consts.py checks them)
_ANCHOR_MIDNIGHT = const(2)
_ANCHOR_SUNRISE = const(1)
_ANCHOR_SUNSET = const(0)
_LAMP_POWER_MAX_W = const(2000)
_OFFSET_MAX_MIN = const(720)
_PROFILE_STEPS_MAX = const(8)

DEFAULT_PROFILE = (
    (_ANCHOR_SUNSET, 0, 100),
    (_ANCHOR_SUNSET, 240, 50),
    (_ANCHOR_MIDNIGHT, 0, 30),
    (_ANCHOR_SUNRISE, -90, 100),
    (_ANCHOR_SUNRISE, 0, 0),
)
# key: (default, lo, hi)
SETTINGS = {
    "power_w": (60, 1, _LAMP_POWER_MAX_W),  # rated lamp power; CONFIG CFG_LAMP_POWER changes it
    "full_ma": (0, 0, 20000),  # current at 100 %; 0: power_w / mains_v at power factor 0.95
    "mains_v": (230, 90, 480),
    "ma_per_v": (1000, 1, 100000),  # current sensor scale
    "current_sensor": (1, 0, 1),
    "ambient_sensor": (1, 0, 1),
    "ambient_on_mv": (300, 0, 5000),
    "ambient_off_mv": (600, 0, 5000),
    "boost_level": (100, 0, 100),
    "boost_s": (120, 0, 3600),
    "fade_s": (10, 0, 600),
    "settle_s": (10, 0, 900),
    "fail_pct": (30, 1, 95),
    "over_pct": (130, 105, 400),
    "tick_ms": (1000, 100, 10000),
}


def _ints(section):
    out = {}
    for key in section:
        if key not in SETTINGS and key != "profile":
            raise ValueError("lighting.%s: unknown setting" % key)
    for key in SETTINGS:
        d, lo, hi = SETTINGS[key]
        v = section.get(key, d)
        if v is True or v is False:
            v = int(v)
        if type(v) is not int or v < lo or v > hi:
            raise ValueError("lighting.%s: %r is not an integer in %d..%d" % (key, v, lo, hi))
        out[key] = v
    return out


def check(section, parse_profile):
    """lighting.check: `parse_profile` is lighting.parse_profile (this module imports no firmware)."""
    s = _ints(section)
    if s["ambient_on_mv"] >= s["ambient_off_mv"]:
        raise ValueError("lighting.ambient_on_mv must be below ambient_off_mv (hysteresis)")
    prof = section.get("profile")
    if prof is None:
        s["profile"] = DEFAULT_PROFILE
    else:
        flat = []
        for st in prof:
            if type(st) is not list or len(st) != 3:
                raise ValueError("lighting.profile: steps are [anchor, offset min, level %]")
            flat.extend(st)
        s["profile"] = parse_profile(flat)
        if s["profile"] is None:
            raise ValueError(
                "lighting.profile: 1..%d steps, anchor 0..2, offset within +-%d min, level 0..100"
                % (_PROFILE_STEPS_MAX, _OFFSET_MAX_MIN)
            )
    return s
