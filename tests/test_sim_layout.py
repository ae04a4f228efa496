"""The simulator's speed-ups that change layout and call shape only: the same results, field for field.

simulator.slots (engine's runtime and ticked apps) gives the firmware's classes __slots__ for the fields
their code assigns; InProcessGateway.uplink builds its Reception
positionally; VirtualLoop puts due timer handles straight on the ready
queue. Each is checked against the plain way here.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses

from conftest import ROOT

from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from firmware.runtime import Node
from gateway.model import Reception
from simulator import channel as ch
from simulator import engine, slots
from simulator.gateway_link import InProcessGateway, LinkContext
from simulator.runner import RunOptions, run
from simulator.scenario import load
from simulator.virtual_loop import VirtualLoop

DISTRICT = ROOT / "simulator" / "scenarios" / "district.toml"


class _Toy:
    K = 3  # a class attribute: never a slot (a slot would hide it)

    def __init__(self) -> None:
        self.a = 1
        self._b, self.c = 2, 3

    def later(self) -> None:
        self.d = 4

    def method(self) -> int:
        return self.K


def test_instance_fields_are_what_the_code_assigns_on_self_and_no_class_attribute():
    assert slots.instance_fields(_Toy) == ("_b", "a", "c", "d")
    lf = slots.instance_fields(Lighting)
    assert {"_out", "_last_ms", "flags", "hal", "s", "presence", "_lo", "_hi"} <= set(lf)
    assert not {"KIND", "step", "schedule", "run"} & set(lf)  # methods and class constants stay on the class
    assert "schedule" in slots.instance_fields(Irrigation)  # a field there, not a method
    assert {"queue", "store", "radio", "app"} <= set(slots.instance_fields(Node))


def test_a_slotted_class_behaves_as_its_own():
    cls = slots.slotted(_Toy)
    assert cls.__name__ == "_Toy" and issubclass(cls, _Toy)
    x = cls()
    x.later()
    x.e = 5  # a field the list does not know: the instance's __dict__ takes it
    assert (x.a, x._b, x.c, x.d, x.e, x.K, x.method()) == (1, 2, 3, 4, 5, 3, 3)
    assert "a" not in x.__dict__ and x.__dict__ == {"e": 5}  # the known fields are slots
    del x.a
    assert not hasattr(x, "a")  # an unset slot reads as a missing attribute, as before


def test_a_run_is_the_same_with_the_firmware_classes_as_they_are(monkeypatch):
    """The run's slotted apps and runtime against the plain classes: the same results, faults included."""
    sc = load(DISTRICT)
    faults = [f for f in sc.faults if f.kind in ("lamp_failure", "node_reboot")]
    opts = RunOptions(hours=min(f.at_s for f in faults) / 3600 + 1.0, nodes_scale=0.3, progress=False)
    slotted = run(sc, opts).without_wall_clock()
    monkeypatch.setattr(engine, "_SLOTTED_NODE", Node)
    monkeypatch.setattr(engine, "instance_fields", lambda cls: ())
    plain = run(sc, opts).without_wall_clock()
    assert slotted == plain
    assert slotted["delivery"]["settled"] > 0


def test_uplink_builds_the_reception_the_keyword_way_would():
    gw = InProcessGateway()
    ctx = LinkContext([], [], 1_780_000_000.0, lambda: 0.0, None, None)
    gw.ctx = ctx
    up = ch.Uplink(7, 1_000_000, 9, 868_100_000, 3, b"abc")
    up.end_us = 0x1_2345_6789  # past 32 bits: tmst wraps
    hearings = [ch.Hearing(up, site, -101.26, 4.44, ch.OK) for site in ("gw-1", "gw-2", "gw-1")]
    for h in hearings:
        gw.uplink(h)
    assert gw._wake.is_set()
    for h, got in zip(hearings, gw._inbox):
        want = Reception(
            raw=b"abc",
            transport="inproc",
            gateway_id="sim:" + h.gateway,
            rx_time=ctx.start_unix + up.end_us / 1e6,
            rssi=-101.3,
            snr=4.4,
            freq_hz=868_100_000,
            sf=9,
            tmst=up.end_us & 0xFFFFFFFF,
            path=got.path,
        )
        names = [f.name for f in dataclasses.fields(Reception)]
        assert [getattr(got, n) for n in names] == [getattr(want, n) for n in names]
        assert got.path is not None and got.path.hearing is h  # type: ignore[attr-defined]


def test_virtual_loop_timers_run_in_order_in_their_context_and_not_once_cancelled():
    loop = VirtualLoop()
    seen: list[str] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="none")

    async def main() -> None:
        ctx = contextvars.copy_context()
        ctx.run(var.set, "mine")
        loop.call_at(1.0, lambda: seen.append("a"))
        loop.call_at(1.0, lambda: seen.append("b:" + var.get()), context=ctx)
        late: list[asyncio.TimerHandle] = []
        loop.call_at(1.0, lambda: late[0].cancel())  # runs first: the next one is queued by then
        late.append(loop.call_at(1.0, lambda: seen.append("never")))  # cancelled once queued: never runs
        loop.call_at(0.5, lambda: seen.append("first"))
        await asyncio.sleep(2.0)
        assert loop.time() == 2.0

    loop.run_until_complete(main())
    loop.close()
    assert seen == ["first", "a", "b:mine"]
