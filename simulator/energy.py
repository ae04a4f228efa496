"""Energy model of a battery irrigation node, and the battery life it gives (issue 16).

A scenario with a [battery] table provisions its irrigation controllers with
`irrigation.battery = 1` (firmware/battery.py: deep sleep between events,
latching valves). The run then charges each controller, from what it did in
the run, as the battery firmware spends it:

- wakes: one per uplink it sent and one per watering run it started (a
  report that fell inside a run is charged a wake of its own: an upper bound);
- each wake: a boot (`boot_s` at the MCU's boot current: ROM loader,
  MicroPython, the config read, the imports), then a tick (`tick_s`) awake
  before the node may sleep;
- each uplink: its time on air at the configured TX power, the RX1 delay
  (SPEC §6: 1 s; the MCU awake and the modem in standby) and the receive
  window (the node's rx_window_ms at its SF; modem receiving);
- watering: the MCU awake for every second a valve is open when a flow
  meter is fitted (the node watches the flow: firmware/battery.py); without a
  meter it sleeps and wakes at the run's end;
- valves: one coil pulse per valve movement (`latch_ms` at the coil's voltage
  and current, through a boost converter of `boost_efficiency`);
- the rest of the time deep sleep (MCU deep sleep, modem sleep, the board's
  `board_sleep_ua`).

Battery life: an in-season day is the run's mean day; an off-season day the
same without watering (no runs, no valve time, no pulses, no wakes for
watering). With `season_days` watered days a year, the mean day's charge and
the cell's self-discharge (a share of its nominal capacity per year) give
life_years = cell_mah / (365 * mean_mah_per_day + cell_mah * self_discharge).
The bar (issue 16): at least BAR_YEARS for a park zone watered daily in season
with the usual reports.

Figures (simulator/README.md "Battery nodes" cites them):
- ESP32: Espressif "ESP32 Series Datasheet", table "Power Consumption by Power
  Modes": Modem-sleep (CPU on, radio off) at 80 MHz 20-31 mA and at 160 MHz
  27-44 mA; Light-sleep 0.8 mA; Deep-sleep with the RTC timer and RTC memory
  10 uA. Awake and waiting: 20 mA (CPU mostly idle at 80 MHz, the low end);
  busy: 31 mA; boot: 44 mA (160 MHz, MicroPython's default clock, top end).
- RP2040: Raspberry Pi "RP2040 Datasheet" section 5.4 "Power Consumption"
  (SLEEP and DORMANT use cases; typical). MicroPython's rp2 deepsleep is a
  lightsleep with its timer, then a reset: the SLEEP figure is what a sleeping
  node draws (DORMANT stops the clocks a timer wake needs). These figures were
  not re-checked against a copy of the datasheet in the session that wrote
  this module: `checked` is False for them.
- SX1276: Semtech "SX1276/77/78/79 Datasheet", Table 6 "Power Consumption
  Specification": transmit +20 dBm (PA_BOOST) 120 mA, +17 dBm (PA_BOOST)
  87 mA, +13 dBm (RFO) 29 mA, +7 dBm (RFO) 20 mA; receive (LoRa, LnaBoost on,
  band 1) 11.5 mA; standby 1.6 mA; sleep 0.2 uA. Modules such as the RFM95
  wire PA_BOOST only, and the datasheet gives no PA_BOOST figure below
  +17 dBm: a TX power at or below +17 dBm is charged 87 mA (an upper bound).
- Cell: one 19 Ah Li-SOCl2 D cell (the Dragino SVC01-LS2's), self-discharge
  1 % of nominal a year (the low figure these cells are sold on at 20 C).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BAR_YEARS = 5.0
LINES_MAX = 12  # nodes listed one by one in the text report
RX1_DELAY_S = 1.0  # SPEC §6 (firmware/runtime.py RX1_DELAY_MS)


@dataclass(frozen=True)
class Mcu:
    name: str
    boot_ma: float
    busy_ma: float
    awake_ma: float  # awake and waiting: asyncio idle between ticks, the RX1 delay, a watering run
    light_sleep_ma: float
    sleep_ma: float  # what the node draws asleep (deep sleep; the RP2040's SLEEP)
    source: str
    checked: bool


MCUS = {
    "esp32": Mcu(
        "esp32",
        44.0,
        31.0,
        20.0,
        0.8,
        0.010,
        "ESP32 Series Datasheet (Espressif), Power Consumption by Power Modes: Modem-sleep 80 MHz 20-31 mA, "
        "160 MHz 27-44 mA; Light-sleep 0.8 mA; Deep-sleep, RTC timer + RTC memory 10 uA",
        True,
    ),
    "rp2040": Mcu(
        "rp2040",
        25.0,
        25.0,
        25.0,
        0.39,
        0.39,
        "RP2040 Datasheet (Raspberry Pi) 5.4 Power Consumption: SLEEP 0.39 mA, DORMANT 0.18 mA typical; "
        "active about 25 mA (not re-checked in this session)",
        False,
    ),
}
SX1276_TX_POINTS = ((7, 20.0, "RFO"), (13, 29.0, "RFO"), (17, 87.0, "PA_BOOST"), (20, 120.0, "PA_BOOST"))
SX1276_RX_MA = 11.5
SX1276_STANDBY_MA = 1.6
SX1276_SLEEP_MA = 0.0002
SX1276_SOURCE = (
    "SX1276/77/78/79 Datasheet (Semtech) Table 6: TX +20 dBm 120 mA, +17 dBm 87 mA (PA_BOOST), "
    "+13 dBm 29 mA, +7 dBm 20 mA (RFO); RX LoRa band 1 11.5 mA; standby 1.6 mA; sleep 0.2 uA"
)

# [battery] keys: (default, lo, hi) for numbers; mcu one of MCUS
DEFAULTS: dict[str, Any] = {
    "mcu": "esp32",
    "cell_mah": 19000.0,
    "self_discharge_pct_year": 1.0,
    "season_days": 183,  # April to September
    "boot_s": 1.0,  # deep-sleep wake to the app's first tick (an assumption: not measured on a board)
    "tick_s": 1.0,
    "latch_ms": 50,
    "coil_v": 9.0,
    "coil_a": 1.0,
    "boost_efficiency": 0.8,
    "cell_v": 3.6,
    "board_sleep_ua": 2.0,  # regulator quiescent current and leakage of a board built for a cell
    "status_interval_s": 21600,
}
RANGES: dict[str, tuple[float, float]] = {
    "cell_mah": (100, 100000),
    "self_discharge_pct_year": (0, 20),
    "season_days": (0, 366),
    "boot_s": (0.05, 30),
    "tick_s": (0.1, 5),
    "latch_ms": (1, 500),
    "coil_v": (1, 30),
    "coil_a": (0.01, 5),
    "boost_efficiency": (0.1, 1),
    "cell_v": (1, 5),
    "board_sleep_ua": (0, 10000),
    "status_interval_s": (300, 604800),
}


def tx_ma(dbm: float, pa: str = "PA_BOOST") -> float:
    """SX1276 transmit current at `dbm` (see the module's note on PA_BOOST below +17 dBm)."""
    pts = [(p, ma) for p, ma, pin in SX1276_TX_POINTS if pin == pa]
    if dbm <= pts[0][0]:
        return pts[0][1]
    for (p0, m0), (p1, m1) in zip(pts, pts[1:], strict=False):
        if dbm <= p1:
            return m0 + (m1 - m0) * (dbm - p0) / (p1 - p0)
    (p0, m0), (p1, m1) = pts[-2], pts[-1]
    return m0 + (m1 - m0) * (dbm - p0) / (p1 - p0)


@dataclass(frozen=True)
class Activity:
    """What one node did over `seconds` of a run (the model's input)."""

    seconds: float
    uplinks: int
    airtime_s: float
    rx_window_s: float  # one receive window at the node's SF
    runs: int  # watering runs started
    open_s: float  # seconds with a valve open
    valve_moves: int  # valve outputs changed (one coil pulse each)
    flow_meter: bool
    tx_power_dbm: float


def charge_mah(a: Activity, mcu: Mcu, p: Mapping[str, Any]) -> dict[str, float]:
    """mAh spent by state over the activity's span."""
    h = 1.0 / 3600.0
    wakes = a.uplinks + a.runs
    boot_s = wakes * p["boot_s"]
    tick_s = wakes * p["tick_s"]
    rx1_s = a.uplinks * RX1_DELAY_S
    rx_s = a.uplinks * a.rx_window_s
    water_s = a.open_s if a.flow_meter else 0.0
    awake_s = tick_s + rx1_s + rx_s + a.airtime_s + water_s
    asleep_s = max(0.0, a.seconds - boot_s - awake_s)
    pulse_j = p["coil_v"] * p["coil_a"] * p["latch_ms"] / 1000.0 / p["boost_efficiency"]
    return {
        "mcu_boot": boot_s * mcu.boot_ma * h,
        "mcu_awake": (tick_s + rx1_s + rx_s + a.airtime_s) * mcu.awake_ma * h,
        "mcu_watering": water_s * mcu.awake_ma * h,
        "mcu_sleep": asleep_s * mcu.sleep_ma * h,
        "radio_tx": a.airtime_s * tx_ma(a.tx_power_dbm) * h,
        "radio_rx": (rx_s * SX1276_RX_MA + rx1_s * SX1276_STANDBY_MA) * h,
        "radio_sleep": (a.seconds - a.airtime_s - rx_s - rx1_s) * SX1276_SLEEP_MA * h,
        "board_sleep": asleep_s * p["board_sleep_ua"] / 1000.0 * h,
        "valves": a.valve_moves * pulse_j / p["cell_v"] * h * 1000.0,
    }


def per_day(a: Activity, mcu: Mcu, p: Mapping[str, Any]) -> tuple[float, float, dict[str, float]]:
    """(in-season mAh/day, off-season mAh/day, the in-season day's breakdown)."""
    days = a.seconds / 86400.0
    c = charge_mah(a, mcu, p)
    season = {k: v / days for k, v in c.items()}
    dry = Activity(a.seconds, a.uplinks, a.airtime_s, a.rx_window_s, 0, 0.0, 0, a.flow_meter, a.tx_power_dbm)
    off = sum(charge_mah(dry, mcu, p).values()) / days
    return sum(season.values()), off, season


def life_years(in_season: float, off_season: float, p: Mapping[str, Any]) -> float:
    sd = p["season_days"]
    mean = (sd * in_season + (365.0 - sd) * off_season) / 365.0
    return p["cell_mah"] / (365.0 * mean + p["cell_mah"] * p["self_discharge_pct_year"] / 100.0)


def section(activities: Mapping[str, Activity], p: Mapping[str, Any]) -> dict[str, Any]:
    """The run's "battery" results: per node, per MCU, and the verdict against the bar."""
    nodes = []
    for name, a in activities.items():
        row: dict[str, Any] = {
            "node": name,
            "uplinks_per_day": round(a.uplinks * 86400.0 / a.seconds, 2),
            "watering_runs_per_day": round(a.runs * 86400.0 / a.seconds, 2),
            "valve_open_min_per_day": round(a.open_s / 60.0 * 86400.0 / a.seconds, 1),
        }
        for mname, mcu in MCUS.items():
            ins, off, parts = per_day(a, mcu, p)
            row[mname] = {
                "mah_per_day": round(ins, 3),
                "mah_per_day_off_season": round(off, 3),
                "life_years": round(life_years(ins, off, p), 2),
                "breakdown_mah_per_day": {k: round(v, 4) for k, v in parts.items()},
            }
        row["mah_per_day"] = row[p["mcu"]]["mah_per_day"]
        row["life_years"] = row[p["mcu"]]["life_years"]
        nodes.append(row)
    lives = [n["life_years"] for n in nodes]
    return {
        "mcu": p["mcu"],
        "nodes": nodes,
        "mean_mah_per_day": round(sum(n["mah_per_day"] for n in nodes) / len(nodes), 3) if nodes else 0.0,
        "min_life_years": min(lives) if lives else None,
        "bar_years": BAR_YEARS,
        "meets_bar": bool(lives) and min(lives) >= BAR_YEARS,
        "assumptions": dict(p),
        "figures": {
            "esp32": MCUS["esp32"].source,
            "rp2040": MCUS["rp2040"].source + ("" if MCUS["rp2040"].checked else " [not re-checked]"),
            "sx1276": SX1276_SOURCE,
            "tx_ma_at_power": None,  # filled by the caller (the scenario's TX power)
        },
        "model": "simulator/energy.py: wakes per uplink and per run, boot, RX1 delay and window, "
        "valve time awake with a flow meter, coil pulses, deep sleep the rest",
    }


def lines(b: dict[str, Any]) -> list[str]:
    """The text report's lines for a "battery" section."""
    if not b["nodes"]:
        return []
    p = b["assumptions"]
    worst = min(b["nodes"], key=lambda n: n["life_years"])
    out = [
        f"  battery ({b['mcu']}, {p['cell_mah'] / 1000:g} Ah cell, {p['self_discharge_pct_year']:g} %/year "
        f"self-discharge, watered {p['season_days']} days a year): mean {b['mean_mah_per_day']:.2f} mAh/day "
        f"in season; projected life at least {b['min_life_years']:.1f} years "
        f"({'meets' if b['meets_bar'] else 'BELOW'} the {b['bar_years']:g}-year bar)",
        f"    worst node {worst['node']}: {worst['mah_per_day']:.2f} mAh/day in season, "
        f"{worst[b['mcu']]['mah_per_day_off_season']:.2f} off season; "
        f"{worst['uplinks_per_day']:g} uplinks/day, {worst['valve_open_min_per_day']:g} min/day watering; "
        f"on an rp2040 {worst['rp2040']['life_years']:.1f} years, on an esp32 {worst['esp32']['life_years']:.1f}",
    ]
    if len(b["nodes"]) <= LINES_MAX:  # a park's few nodes each; a city's in the JSON
        out += [
            f"    {n['node']}: {n['mah_per_day']:.2f} mAh/day in season, "
            f"{n[b['mcu']]['mah_per_day_off_season']:.2f} off season, {n['life_years']:.1f} years"
            for n in b["nodes"]
        ]
    return out
