"""A city scenario from a few numbers (`lumeau sim generate`): a street grid, parks, gateways on a grid.

    text = generate(CitySpec(streets=40, lamps_per_street=25, parks=8, zones_per_park=8, gateways=4, seed=1))

The map (metres, x east and y north of the origin; simulator/README.md,
"Scenario files"):

- streets: half of them (rounded up) run west-east, the rest south-north,
  evenly spaced across a square city of side `max(MIN_SIDE_M, K x
  LAMP_SPACING_M, (streets per axis + 1) x MIN_BLOCK_M)`, each as long as
  the side with exactly K lamps (the scenario places them evenly with its
  own seeded jitter);
- parks: PARK_SIDE_M squares centred in blocks of the grid, the blocks drawn
  from the seed without repetition (one park per block: more parks than
  blocks is refused); a park of Z zones has ceil(Z/4) controllers of
  ceil(Z / controllers) zones each (the firmware drives at most 4 valves),
  so Z is rounded up to that product, which the output says;
- gateways: on a ceil(sqrt(G)) x ceil(G / columns) grid, each at its cell's
  centre, GATEWAY_HEIGHT_M high (rooftops), the radio the Okumura-Hata urban
  model as in simulator/scenarios/city.toml (the log-distance model reaches
  about 360 m from a node near the ground).

The output is checked by the scenario validator before it is written, so a
generated file always loads. Deterministic: the same numbers and seed give
the same bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import random

from simulator.scenario import MAX_NODES, Scenario, loads

LAMP_SPACING_M = 30.0  # between lamps along a street (the scenario's default spacing)
MIN_SIDE_M = 300.0  # the smallest city side, so that a few lamps per street still make blocks
PARK_SIDE_M = 100.0  # a park's square side ...
MIN_BLOCK_M = 150.0  # ... inside a block at least this wide (the city grows to keep its blocks this wide)
GATEWAY_HEIGHT_M = 35.0  # rooftop sites
MAX_STREETS = 2000
MAX_PARKS = 2000
MAX_GATEWAYS = 500


class GenerateError(ValueError):
    """A set of numbers that makes no city (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class CitySpec:
    streets: int
    lamps_per_street: int
    parks: int = 0
    zones_per_park: int = 4
    gateways: int = 1
    seed: int = 0
    hours: float = 24.0
    start: _dt.datetime = _dt.datetime(2026, 7, 1, 12, 0, tzinfo=_dt.UTC)
    name: str = "generated-city"

    @property
    def side_m(self) -> float:
        blocks = max(self.west_east, self.south_north) + 1
        return max(MIN_SIDE_M, self.lamps_per_street * LAMP_SPACING_M, blocks * MIN_BLOCK_M)

    @property
    def west_east(self) -> int:
        return (self.streets + 1) // 2

    @property
    def south_north(self) -> int:
        return self.streets // 2

    def blocks(self) -> list[tuple[float, float]]:
        """The centres of the blocks between the streets (the city's edge counts as a street)."""
        side = self.side_m
        ys = _edges(self.west_east, side)
        xs = _edges(self.south_north, side)
        return [((x0 + x1) / 2, (y0 + y1) / 2) for y0, y1 in zip(ys, ys[1:]) for x0, x1 in zip(xs, xs[1:])]

    def check(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise GenerateError(f"--{key}: {why}")

        need(0 <= self.streets <= MAX_STREETS, "streets", f"must be within 0..{MAX_STREETS}, got {self.streets}")
        need(
            1 <= self.lamps_per_street <= 1000 or self.streets == 0,
            "lamps-per-street",
            f"must be within 1..1000, got {self.lamps_per_street}",
        )
        need(0 <= self.parks <= MAX_PARKS, "parks", f"must be within 0..{MAX_PARKS}, got {self.parks}")
        need(1 <= self.zones_per_park <= 64, "zones-per-park", f"must be within 1..64, got {self.zones_per_park}")
        need(1 <= self.gateways <= MAX_GATEWAYS, "gateways", f"must be within 1..{MAX_GATEWAYS}, got {self.gateways}")
        need(0 < self.hours <= 366 * 24, "hours", f"must be > 0 and at most {366 * 24}, got {self.hours:g}")
        lamps = self.streets * self.lamps_per_street
        need(lamps <= MAX_NODES, "streets", f"{lamps} lamps is more than the scenario's {MAX_NODES}")
        need(self.streets > 0 or self.parks > 0, "streets", "a city needs streets or parks (0 of each makes no nodes)")
        if self.parks:
            need(
                self.parks <= len(self.blocks()),
                "parks",
                f"{self.parks} parks do not fit in {len(self.blocks())} blocks (one park per block)",
            )

    def park_layout(self) -> tuple[int, int]:
        """(controllers, zones per controller) of one park."""
        controllers = math.ceil(self.zones_per_park / 4)
        return controllers, math.ceil(self.zones_per_park / controllers)


def _edges(streets: int, side: float) -> list[float]:
    # block boundaries along one axis: the city's two edges and the streets evenly between them
    return [-side / 2 + side * k / (streets + 1) for k in range(streets + 2)]


def gateway_sites(count: int, side: float) -> list[tuple[float, float]]:
    """`count` points on a grid of ceil(sqrt(count)) columns, each at its cell's centre."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    sites = []
    for k in range(count):
        r, c = divmod(k, cols)
        in_row = cols if r < rows - 1 else count - cols * (rows - 1)  # the last row centred on what it holds
        sites.append((-side / 2 + side * (c + 0.5) / in_row, -side / 2 + side * (r + 0.5) / rows))
    return sites


def document(spec: CitySpec) -> dict:
    """The scenario as a TOML document (a dict for tomli_w)."""
    spec.check()
    side = spec.side_m
    half = side / 2
    controllers, zones = spec.park_layout()
    doc: dict = {
        "scenario": {
            "name": spec.name,
            "description": (
                f"generated: {spec.streets} streets x {spec.lamps_per_street} lamps, "
                f"{spec.parks} parks x {controllers * zones} zones, {spec.gateways} gateways"
            ),
            "seed": spec.seed,
            "start": spec.start,
            "duration": f"{round(spec.hours * 60)}m",
        },
        "location": {
            "name": "generated",
            "lat": 45.764,
            "lon": 4.8357,
            "timezone": "Europe/Paris",
            "climate": "lyon",
        },
        "radio": {"path_loss": "hata", "sf": "auto"},
        "gateways": [
            {"id": f"gw-{k + 1:03d}", "x": round(x, 1), "y": round(y, 1), "height_m": GATEWAY_HEIGHT_M}
            for k, (x, y) in enumerate(gateway_sites(spec.gateways, side))
        ],
        "lighting": {"height_m": 8.0, "report_interval": "15m"},
        "irrigation": {"zones_per_controller": zones, "irrigated_fraction": 0.6},
    }
    k = spec.lamps_per_street
    streets: list[dict[str, object]] = []
    for j, y in enumerate(_edges(spec.west_east, side)[1:-1]):
        streets.append({"id": f"we{j + 1:03d}", "points": [[-half, round(y, 1)], [half, round(y, 1)]], "lamps": k})
    for i, x in enumerate(_edges(spec.south_north, side)[1:-1]):
        streets.append({"id": f"sn{i + 1:03d}", "points": [[round(x, 1), -half], [round(x, 1), half]], "lamps": k})
    if streets:
        doc["streets"] = streets
    if spec.parks:
        rng = random.Random(f"lumeau-generate:{spec.seed}:parks")
        blocks = rng.sample(spec.blocks(), spec.parks)
        h = PARK_SIDE_M / 2
        doc["parks"] = [
            {
                "id": f"park{k + 1:03d}",
                "polygon": [
                    [round(cx - h, 1), round(cy - h, 1)],
                    [round(cx + h, 1), round(cy - h, 1)],
                    [round(cx + h, 1), round(cy + h, 1)],
                    [round(cx - h, 1), round(cy + h, 1)],
                ],
                "controllers": controllers,
            }
            for k, (cx, cy) in enumerate(blocks)
        ]
    return doc


def generate(spec: CitySpec) -> tuple[str, Scenario]:
    """The scenario file's text, and the scenario it loads as (checked by the validator)."""
    text = to_toml(document(spec), "Generated by `lumeau sim generate`; the format: simulator/README.md")
    return text, loads(text, f"<generated {spec.name}>")


def to_toml(doc: dict, comment: str) -> str:
    """The document as TOML a person can read: tables in order, a point per pair of brackets on one line."""
    out = [f"# {comment}"]
    for key, value in doc.items():
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            out.append("")
            out.append(f"[[{key}]]" if isinstance(value, list) else f"[{key}]")
            out += [f"{k} = {_value(v)}" for k, v in row.items()]
    return "\n".join(out) + "\n"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for these ASCII names
    if isinstance(v, _dt.datetime):
        return v.isoformat().replace("+00:00", "Z")
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")
