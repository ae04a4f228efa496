"""The COMMAND operations of SPEC §5 for people: argument names, units, ranges, node kinds.

Served at `GET /ops` so a client (the technician page's command form)
builds its fields from one description instead of its own copy of the spec.
Op numbers and names come from protocol/expand.py; the ranges are
protocol/messages.py's, which the firmware checks too (tests/test_gateway_ops.py
sends each op at its bounds and just past them to the real apps).

The API checks every COMMAND against this catalogue before it is queued
(`check_command`, issue 17): the node's kind, the number of arguments and each
one's range. A command the node would answer with `unknown_op` or `bad_args` is
refused at once (400, naming the argument), never sent over the air. Arguments
come as the flat list on the air, or named as `args` describes them: one object
(`{"level": 50, "duration": 600}`) for an op of one group, a list of objects
(one per group) for any op.

An op's `args` describe one group of arguments; `groups` says how many
groups it takes (`set_profile`: 1-8 steps of three; `set_schedule`: 1-6
groups of four); the flat list on the air is the groups one after the other.
Argument kinds: `int` (min, max), `choice` (an int from `choices`), `weekdays`
(a 7-bit mask, bit 0 Monday); each has the `default` a form proposes (a
harmless, common value: 10 minutes of watering, not a whole day).
"""

from __future__ import annotations

from typing import Any

from protocol import expand
from protocol import messages as m

LIGHTING = "lighting"
IRRIGATION = "irrigation"


def _int(
    name: str, lo: int, hi: int, unit: str | None = None, help: str = "", default: int | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "int",
        "min": lo,
        "max": hi,
        "unit": unit,
        "help": help,
        "default": lo if default is None else default,
    }


# op -> (node kinds, one group of args, (min groups, max groups), what it does)
_CATALOGUE: dict[int, tuple[tuple[str, ...], list[dict[str, Any]], tuple[int, int], str]] = {
    m.OP_SET_LEVEL: (
        (LIGHTING,),
        [
            _int("level", 0, 100, "%", default=100),
            _int(
                "duration",
                0,
                m.OVERRIDE_MAX_S,
                "s",
                "how long the override lasts; 0 cancels it (back to the profile)",
                600,
            ),
        ],
        (1, 1),
        "Override the lamp level for a while.",
    ),
    m.OP_SET_PROFILE: (
        (LIGHTING,),
        [
            {
                "name": "anchor",
                "kind": "choice",
                "choices": {"0": "sunset", "1": "sunrise", "2": "night midpoint"},
                "unit": None,
                "help": "what the offset counts from",
                "default": 0,
            },
            _int("offset", -m.OFFSET_MAX_MIN, m.OFFSET_MAX_MIN, "min", default=0),
            _int("level", 0, 100, "%", default=100),
        ],
        (1, m.PROFILE_STEPS_MAX),
        "Replace the night's dimming profile (steps in order).",
    ),
    m.OP_CLEAR_FAULT: (
        (LIGHTING, IRRIGATION),
        [],
        (0, 0),
        "Clear latched faults (lamp failure, over-current, leak, burst, ...) after a repair.",
    ),
    m.OP_OPEN_ZONE: (
        (IRRIGATION,),
        [
            _int("zone", 1, m.ZONES_MAX),
            _int("minutes", 1, m.DAY_MIN, "min", "capped by the node's hard maximum run time", 10),
        ],
        (1, 1),
        "Water one zone now.",
    ),
    m.OP_CLOSE_ALL: ((IRRIGATION,), [], (0, 0), "Close every valve now."),
    m.OP_RAIN_DELAY: (
        (IRRIGATION,),
        [_int("hours", 0, m.RAIN_DELAY_MAX_H, "h", "0 cancels the delay", 24)],
        (1, 1),
        "Skip scheduled watering for a while.",
    ),
    m.OP_SET_SCHEDULE: (
        (IRRIGATION,),
        [
            _int("zone", 1, m.ZONES_MAX),
            {
                "name": "days",
                "kind": "weekdays",
                "min": 0,
                "max": 127,
                "unit": None,
                "help": "bit 0 Monday",
                "default": 127,
            },
            _int("start", 0, m.DAY_MIN - 1, "min", "minutes after local midnight (standard time)", 360),
            _int("minutes", 0, m.DAY_MIN, "min", "0 leaves the zone without a schedule", 15),
        ],
        (1, m.SCHEDULE_GROUPS_MAX),
        f"Replace the schedule of each zone named (at most {m.SCHEDULE_MAX} entries on a node).",
    ),
    m.OP_SET_INTERVAL: (
        (LIGHTING, IRRIGATION),
        [_int("interval", m.REPORT_MIN_S, m.REPORT_MAX_S, "s", default=900)],
        (1, 1),
        "Set the report interval.",
    ),
    m.OP_REBOOT: ((LIGHTING, IRRIGATION), [], (0, 0), "Restart the node (it says HELLO again)."),
}


def catalogue() -> list[dict[str, Any]]:
    """Every op a person may send, in op order, as JSON-able data.

    join_group (a lamp's multicast key, SPEC §5 "Groups") is not one: only the gateway sends
    it (gateway/multicast.py), so the API refuses it as an unknown op.
    """
    names = expand.ENUMS[(m.COMMAND, 1)]
    out = []
    for op in sorted(_CATALOGUE):
        kinds, args, (gmin, gmax), help_ = _CATALOGUE[op]
        out.append(
            {
                "op": op,
                "name": names[op],
                "kinds": list(kinds),
                "args": args,
                "groups": {"min": gmin, "max": gmax},
                "help": help_,
            }
        )
    return out


class CommandRefused(ValueError):
    """A command the node would refuse (`unknown_op`, `bad_args`); the message names the argument."""


def _value(op_name: str, arg: dict[str, Any], v: Any, where: str) -> int:
    label = f"{op_name}: {arg['name']}{where}"
    if isinstance(v, bool) or not isinstance(v, int):
        raise CommandRefused(f"{label}: {v!r} is not an integer")
    if arg["kind"] == "choice":
        if str(v) not in arg["choices"]:
            known = ", ".join(f"{k} ({n})" for k, n in arg["choices"].items())
            raise CommandRefused(f"{label}: {v} is not one of {known}")
    elif not arg["min"] <= v <= arg["max"]:
        unit = f" {arg['unit']}" if arg["unit"] else ""
        raise CommandRefused(f"{label}: {v} is out of range {arg['min']}..{arg['max']}{unit}")
    return v


def check_command(op: int, args: Any, kind: str) -> list[int]:
    """The flat argument list of `op` for a node of `kind`, or CommandRefused naming what is wrong.

    `args`: a list of integers (as on the air), an object of named arguments (an op of one
    group), or a list of such objects (one per group).
    """
    names = expand.ENUMS[(m.COMMAND, 1)]
    if op not in _CATALOGUE:
        known = ", ".join(names[n] for n in sorted(_CATALOGUE))
        raise CommandRefused(f"unknown op {op!r} (known: {known})")
    kinds, spec, (gmin, gmax), _ = _CATALOGUE[op]
    name = names[op]
    if kind not in kinds:
        raise CommandRefused(f"{name} is an op for {' and '.join(kinds)} nodes; this node is a {kind} node")
    arg_names = ", ".join(a["name"] for a in spec) or "none"
    if isinstance(args, dict):
        args = [args] if args or spec else []
    if not isinstance(args, list):
        raise CommandRefused(f"{name}: args must be a list of integers or an object of named arguments ({arg_names})")
    if args and all(isinstance(g, dict) for g in args):
        flat: list[Any] = []
        for i, g in enumerate(args):
            where = f" (group {i + 1})" if gmax > 1 else ""
            unknown = sorted(set(g) - {a["name"] for a in spec})
            if unknown:
                raise CommandRefused(f"{name}: unknown argument {unknown[0]!r}{where} (arguments: {arg_names})")
            for a in spec:
                if a["name"] not in g:
                    raise CommandRefused(f"{name}: argument {a['name']!r}{where} missing (arguments: {arg_names})")
                flat.append(g[a["name"]])
        args = flat
    elif any(isinstance(g, dict) for g in args):
        raise CommandRefused(f"{name}: args mixes objects and numbers: give one or the other")
    per = len(spec)
    if per == 0:
        if args:
            raise CommandRefused(f"{name} takes no arguments, got {len(args)}")
        return []
    if len(args) % per or not gmin <= len(args) // per <= gmax:
        counts = f"{per * gmin}" if gmin == gmax else f"{per} to {per * gmax} in groups of {per}"
        raise CommandRefused(f"{name} takes {counts} arguments ({arg_names}), got {len(args)}")
    out = []
    for i, v in enumerate(args):
        group, pos = divmod(i, per)
        where = f" (group {group + 1})" if gmax > 1 else ""
        out.append(_value(name, spec[pos], v, where))
    return out
