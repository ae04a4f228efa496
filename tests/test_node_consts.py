"""The node's private const() copies of protocol numbers equal protocol's own.

A node never loads protocol/messages.py (every public name there would cost
it heap, firmware/README.md): each firmware module keeps `_NAME = const(v)`
for the numbers it uses. Here, every private module constant of a node
module whose name without the underscore is a public int of protocol.messages
(else protocol.lora, protocol.frame; for nodelora.py lora's, for nodeframe.py frame's)
must have that value, so protocol stays the one source of the wire's numbers.
firmware/ble.py (BLE commissioning) copies protocol.ble's numbers as well, and
protocol/nodeble.py ble's.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from conftest import ROOT

from protocol import ble, calendar, fragments, frame, groupcast, lora, lorawan, messages

SOURCES = [messages, lora, frame, groupcast, fragments]
NODE_MODULES = sorted(
    [f"firmware.{p.stem}" for p in (ROOT / "firmware").glob("*.py") if p.stem not in ("manifest", "boot", "main")]
    + ["protocol.nodemsg", "protocol.nodelora", "protocol.nodeframe", "protocol.nodeble", "protocol.nodegroup"]
    + ["protocol.nodecal", "protocol.nodefrag"]
)
# whose copies each module keeps, where not SOURCES
COPIES_OF = {
    "protocol.nodelora": [lora],  # lora.SF_MIN 6 is the modem's, messages.SF_MIN 7 EU868's CONFIG range
    "protocol.nodeframe": [frame],
    "protocol.nodeble": [ble],
    "protocol.nodecal": [calendar, messages],
    "firmware.ble": [messages, frame, ble],
    "firmware.bleupd": [ble],  # the update messages (SPEC §11, "Updates")
    "firmware.fuota": [fragments, messages],  # an update over LoRa (SPEC §13, "Over LoRa")
    "protocol.nodefrag": [fragments],
    "firmware.radio_lorawan": [lorawan],  # the LoRaWAN carriage's numbers (SPEC §14)
}


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
    ints = public_ints(COPIES_OF.get(modname, SOURCES))
    src = Path(mod.__file__ or "").read_text()
    checked = 0
    for name in re.findall(r"^_([A-Z][A-Z0-9_]*) = const\(", src, re.M):
        if name in ints:
            assert getattr(mod, "_" + name) == ints[name], f"{modname}._{name} != protocol's {name}"
            checked += 1
    if modname in ("firmware.runtime", "firmware.lighting", "firmware.irrigation", "firmware.ble"):
        assert checked > 10  # the copies are there, and this test sees them
    if modname == "firmware.radio_lorawan":
        assert checked == 3  # PORT_MIN, PORT_MAX, FRM_BUDGET


def test_sources_do_not_disagree_on_a_name() -> None:
    # firmware/ble.py's copies are checked against messages, frame and ble at once: a name
    # two of them define must mean the same number there, or a copy could match the wrong one
    seen: dict[str, tuple[str, int]] = {}
    for mod in COPIES_OF["firmware.ble"]:
        for name, v in public_ints([mod]).items():
            if name in seen:
                assert seen[name][1] == v, f"{name}: {seen[name][0]} {seen[name][1]} != {mod.__name__} {v}"
            seen[name] = (mod.__name__, v)


def test_a_wrong_copy_is_caught(tmp_path: Path) -> None:
    # the check above, on a module whose copy is wrong
    ints = public_ints()
    src = "_EV_LEAK = const(11)\n"
    bad = [n for n in re.findall(r"^_([A-Z][A-Z0-9_]*) = const\((\d+)\)", src, re.M) if ints[n[0]] != int(n[1])]
    assert bad == [("EV_LEAK", "11")]


# an import of a full protocol module: the node loads its node* part instead
FULL_IMPORT = re.compile(
    r"^[ \t]*(from protocol import (messages|frame|cbor|lora|ble)\b"
    r"|from protocol\.(messages|frame|cbor|lora|ble) import"
    r"|import protocol\.(messages|frame|cbor|lora|ble)\b)",
    re.M,
)


def test_node_modules_do_not_import_messages() -> None:
    # messages.py is the gateway's catalogue; a node loads protocol/nodemsg.py, and the same
    # for frame.py (nodeframe), cbor.py (nodecbor: cbor.py only as its fallback), lora.py
    # (nodelora) and ble.py (nodeble), BLE commissioning (firmware/ble.py) included
    for path in sorted((ROOT / "firmware").glob("*.py")):
        found = FULL_IMPORT.search(path.read_text())
        assert found is None, f"{path.name}: {found.group(0).strip() if found else ''}"


@pytest.mark.parametrize(
    "line",
    ["from protocol import frame as fr", "    from protocol import ble", "from protocol.messages import CONFIG"],
)
def test_the_import_check_sees_a_full_import(line: str) -> None:
    assert FULL_IMPORT.search("import asyncio\n" + line + "\n")
    assert not FULL_IMPORT.search("from protocol import nodeframe as fr\nfrom protocol import nodeble\n")


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


def test_app_exception_types_match_protocol() -> None:
    # firmware/runtime.py looks the exception's type name up in one string of the names
    from protocol import messages as m

    src = Path(importlib.import_module("firmware.runtime").__file__ or "").read_text()
    found = re.search(r'"(Exception ImportError [^"]*)"\s*"([^"]*)"', src)
    assert found, "firmware/runtime.py: the app exception type names moved"
    assert (found.group(1) + found.group(2)).split() == list(m.APP_EXC_TYPES)
