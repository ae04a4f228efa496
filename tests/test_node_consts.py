"""The node's private const() copies of protocol numbers equal protocol's own.

A node never loads protocol/messages.py (every public name there would cost
it heap, firmware/README.md): each firmware module keeps `_NAME = const(v)`
for the numbers it uses. Here, every private module constant of a node
module whose name without the underscore is a public int of protocol.messages
(else protocol.lora, protocol.frame; for nodelora.py lora's, for nodeframe.py frame's)
must have that value, so protocol stays the one source of the wire's numbers.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from conftest import ROOT

from protocol import frame, lora, messages

SOURCES = [messages, lora, frame]
NODE_MODULES = sorted(
    [f"firmware.{p.stem}" for p in (ROOT / "firmware").glob("*.py") if p.stem not in ("manifest", "boot", "main")]
    + ["protocol.nodemsg", "protocol.nodelora", "protocol.nodeframe"]
)


def public_ints(sources: list = SOURCES) -> dict[str, int]:
    out: dict[str, int] = {}
    for mod in sources:
        for name, v in vars(mod).items():
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and type(v) is int:
                out.setdefault(name, v)
    return out


@pytest.mark.parametrize("modname", NODE_MODULES)
def test_private_copies_match_protocol(modname: str) -> None:
    mod = importlib.import_module(modname)
    # nodelora copies lora.py's (lora.SF_MIN 6 is the modem's, messages.SF_MIN 7 EU868's CONFIG range)
    ints = public_ints({"protocol.nodelora": [lora], "protocol.nodeframe": [frame]}.get(modname, SOURCES))
    src = Path(mod.__file__ or "").read_text()
    checked = 0
    for name in re.findall(r"^_([A-Z][A-Z0-9_]*) = const\(", src, re.M):
        if name in ints:
            assert getattr(mod, "_" + name) == ints[name], f"{modname}._{name} != protocol's {name}"
            checked += 1
    if modname in ("firmware.runtime", "firmware.lighting", "firmware.irrigation"):
        assert checked > 10  # the copies are there, and this test sees them


def test_a_wrong_copy_is_caught(tmp_path: Path) -> None:
    # the check above, on a module whose copy is wrong
    ints = public_ints()
    src = "_EV_LEAK = const(11)\n"
    bad = [n for n in re.findall(r"^_([A-Z][A-Z0-9_]*) = const\((\d+)\)", src, re.M) if ints[n[0]] != int(n[1])]
    assert bad == [("EV_LEAK", "11")]


def test_node_modules_do_not_import_messages() -> None:
    # messages.py is the gateway's catalogue; a node loads protocol/nodemsg.py
    for path in sorted((ROOT / "firmware").glob("*.py")):
        if path.name == "ble.py":  # loaded only when BLE commissioning is on
            continue
        assert "protocol import messages" not in path.read_text(), path.name


def test_machine_hal_implements_every_hal_method() -> None:
    # MachineHAL does not subclass HAL (a board would load hal.py's abstract methods for nothing)
    import inspect

    from firmware.hal import HAL
    from firmware.hal_machine import MachineHAL

    for name, f in vars(HAL).items():
        if name.startswith("_") or not callable(f):
            continue
        mine = getattr(MachineHAL, name, None)
        assert mine is not None and mine is not f, f"MachineHAL lacks {name}"
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(f), name
        want = list(inspect.signature(f).parameters)
        assert list(inspect.signature(mine).parameters)[: len(want)] == want, name
