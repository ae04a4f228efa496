"""The Open311 service catalogue: what residents can report, and which node alarms confirm it.

Each service names the kind of node that can see the fault (`lighting`,
`irrigation`, or None: no node can) and the node alarms that confirm it
(protocol/SPEC.md §5 EVENT codes, by the names of protocol/expand.py).
`ALARM_SERVICE` is the other direction: the service a request opened by a
node alarm gets. city/matching.py uses both; city/open311.py serves them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attribute:
    """A GeoReport v2 service attribute (GET services/{code})."""

    code: str
    description: str
    datatype: str = "singlevaluelist"  # string | number | datetime | text | singlevaluelist | multivaluelist
    required: bool = False
    values: tuple[tuple[str, str], ...] = ()  # (key, name)
    order: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "variable": True,
            "code": self.code,
            "datatype": self.datatype,
            "required": self.required,
            "datatype_description": None,
            "order": self.order,
            "description": self.description,
            "values": [{"key": k, "name": n} for k, n in self.values],
        }


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    description: str
    group: str
    kind: str | None  # the node kind that can see this fault; None: no node can
    alarms: frozenset[str] = frozenset()  # open alarms of a matched node that confirm the report
    keywords: tuple[str, ...] = ()
    attributes: tuple[Attribute, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "service_code": self.code,
            "service_name": self.name,
            "description": self.description,
            "metadata": bool(self.attributes),
            "type": "realtime",
            "keywords": ",".join(self.keywords),
            "group": self.group,
        }


_WHEN = Attribute(
    "when_seen",
    "When did you notice it?",
    values=(("night", "At night"), ("day", "During the day"), ("both", "Day and night")),
)
_HOW_MANY = Attribute(
    "how_many",
    "How many lamps are affected?",
    values=(("one", "One lamp"), ("several", "Several lamps in a row"), ("street", "The whole street")),
    order=2,
)
_WATER = Attribute(
    "water_amount",
    "How much water is running?",
    values=(("drip", "Dripping"), ("stream", "A steady stream"), ("flood", "Flooding the path or street")),
)

LIGHTING = "lighting"
IRRIGATION = "irrigation"

SERVICES: tuple[Service, ...] = (
    Service(
        "lamp_out",
        "Street lamp out",
        "A street lamp stays dark at night.",
        "Street lighting",
        LIGHTING,
        frozenset(("lamp_failure", "over_current")),
        ("lamp", "light", "dark", "streetlight"),
        (_WHEN, _HOW_MANY),
    ),
    Service(
        "lamp_on_by_day",
        "Street lamp on during the day",
        "A street lamp is lit in daylight.",
        "Street lighting",
        LIGHTING,
        # a node in fail-safe follows its own dusk-to-dawn clock; one whose app crashed drives nothing;
        # and, without an alarm, its own latest LIGHT report lit with the sun up (city/matching.py)
        frozenset(("light_failsafe", "app_exception")),
        ("lamp", "light", "day", "energy"),
    ),
    Service(
        "lamp_flickering",
        "Street lamp flickering",
        "A street lamp flickers or keeps switching on and off.",
        "Street lighting",
        LIGHTING,
        frozenset(("cycling", "over_current")),
        ("lamp", "flicker", "cycling"),
    ),
    Service(
        "too_dark",
        "Street too dark",
        "A street or path is darker than it should be (lamps dimmed too low or too far apart).",
        "Street lighting",
        LIGHTING,
        frozenset(("lamp_failure", "over_current", "cycling")),
        ("dark", "dim", "safety"),
        (_HOW_MANY,),
    ),
    Service(
        "damaged_lamp_post",
        "Damaged lamp post",
        "A lamp post or its cabinet is damaged, open or leaning.",
        "Street lighting",
        LIGHTING,
        frozenset(("over_current", "app_exception")),
        ("pole", "post", "cabinet", "vandalism"),
    ),
    Service(
        "water_leak",
        "Water leak",
        "Water runs from a pipe, valve or sprinkler in a park or green space.",
        "Irrigation",
        IRRIGATION,
        frozenset(("leak", "burst", "excess_flow")),
        ("water", "leak", "pipe", "flood"),
        (_WATER,),
    ),
    Service(
        "broken_sprinkler",
        "Broken sprinkler",
        "A sprinkler is broken, sprays the wrong way or never stops.",
        "Irrigation",
        IRRIGATION,
        frozenset(("burst", "excess_flow", "max_runtime", "no_flow", "irrigation_failsafe")),
        ("sprinkler", "irrigation", "spray"),
        (_WATER,),
    ),
    Service(
        "lawn_not_watered",
        "Lawn or beds not watered",
        "Grass or flower beds are drying out.",
        "Irrigation",
        IRRIGATION,
        frozenset(("no_flow", "irrigation_failsafe", "app_exception")),
        ("lawn", "dry", "grass", "drought"),
    ),
    Service(
        "watering_in_rain",
        "Watering during rain",
        "Sprinklers run while it rains or just after.",
        "Irrigation",
        IRRIGATION,
        frozenset(("irrigation_failsafe", "app_exception")),
        ("rain", "waste", "water"),
    ),
    Service(
        "device_fault",
        "Equipment fault reported by a node",
        "A lighting or irrigation controller reports a fault of its own (opened by the node, not by a resident).",
        "Equipment",
        None,
        frozenset(),
        ("node", "controller"),
    ),
)

BY_CODE: dict[str, Service] = {s.code: s for s in SERVICES}

# The service of a request a node alarm opens by itself (alarm names: protocol/expand.py ENUMS).
ALARM_SERVICE: dict[str, str] = {
    "lamp_failure": "lamp_out",
    "over_current": "lamp_out",
    "cycling": "lamp_flickering",
    "light_failsafe": "device_fault",
    "leak": "water_leak",
    "burst": "water_leak",
    "excess_flow": "broken_sprinkler",
    "max_runtime": "broken_sprinkler",
    "no_flow": "lawn_not_watered",
    "irrigation_failsafe": "device_fault",
    "low_supply": "device_fault",
    "app_exception": "device_fault",
}

ALARM_TEXT: dict[str, str] = {
    "lamp_failure": "lamp failure",
    "over_current": "over-current",
    "cycling": "lamp cycling (flickering)",
    "light_failsafe": "lighting fail-safe (no contact with the gateway)",
    "leak": "leak (flow while all valves are shut)",
    "burst": "burst (flow far above the zone's rate; master valve shut)",
    "excess_flow": "excess flow",
    "max_runtime": "valve reached its maximum run time",
    "no_flow": "no flow while a valve is open",
    "irrigation_failsafe": "irrigation fail-safe",
    "low_supply": "low supply voltage",
    "app_exception": "the node's application stopped on an error",
}
