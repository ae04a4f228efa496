"""Shared set-up of the BLE commissioning tests (test_ble_tool, test_ble_sessions, test_ble_node).

Each node is the real firmware -- runtime, lighting or irrigation app, store,
and firmware/ble.py -- on a virtual clock, over the aioble stand-in of
tests/micropython/aioble_fake.py; the tool is lumeau/ble_tools.py on bleak,
whose backend seam (tests/ble_sim.py) carries the advertisements, GATT reads,
writes and notifications between them as bytes. A small gateway
(tests/firmware_helpers.MiniGateway) sits on each node's radio, so the
counter rules of SPEC §4 are checked against gateway downlinks too.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from ble_sim import Air, aioble_fake
from conftest import ROOT
from firmware_helpers import MiniGateway
from test_lighting import CFG as LIGHT_CFG
from test_lighting import MIDNIGHT, Lamp

from firmware import ble as node_ble
from firmware import config as fwconfig
from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from firmware.radio import memory_link
from firmware.runtime import Node
from lumeau.cli import build_parser
from lumeau.commands import node as node_cmd
from protocol import ble as pb
from protocol import frame as fr
from protocol import messages as m
from protocol.keys import NodeKeys
from simulator import virtual_loop
from simulator.hal_sim import SimHAL

KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
SPEC = ROOT / "protocol" / "SPEC.md"


class Site:
    """Nodes in BLE reach of the technician, each with its radio's gateway, on one virtual clock."""

    def __init__(self, clock: Any, tmp: Path) -> None:
        self.clock = clock
        self.tmp = tmp
        self.air = Air()
        self.tasks: list[asyncio.Task] = []

    def node(
        self,
        kind: str = "lighting",
        node_id: int = 0x00A1B2C3,
        address: str = "C0:FF:EE:00:00:01",
        rssi: int = -60,
        mtu: int = 23,
        ble: dict | None = None,
        key: bytes = KEY,
        storage: dict | None = None,
        time_known: bool = True,
    ) -> NodeUnderTest:
        return NodeUnderTest(self, kind, node_id, address, rssi, mtu, ble, key, storage, time_known)

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        args = build_parser().parse_args(["node", *argv])
        core = {
            "scan": node_cmd.scan_command,
            "check": node_cmd.check_command,
            "configure": node_cmd.configure_command,
        }[args.node_command]
        out, err = io.StringIO(), io.StringIO()
        code = await core(args, out, err, self.air.backends)
        return code, out.getvalue(), err.getvalue()

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()


class NodeUnderTest:
    def __init__(
        self,
        site: Site,
        kind: str,
        node_id: int,
        address: str,
        rssi: int,
        mtu: int,
        ble: dict | None,
        key: bytes,
        storage: dict | None,
        time_known: bool,
    ) -> None:
        self.site = site
        self.time_known = time_known
        doc: dict[str, Any] = {
            "node_id": node_id,
            "kind": kind,
            "root_key": key.hex(),
            "key_fresh": True,  # as provisioned (SPEC §4 "Counter persistence")
            "ble": {"enabled": True, **(ble or {})},
        }
        if kind == "lighting":
            doc.update(LIGHT_CFG)
        else:
            doc["irrigation"] = {"zones": [{"flow_dlpm": 120}, {"flow_dlpm": 80}], "utc_offset_min": 60}
        self.doc = doc
        self.config_path = site.tmp / f"config-{node_id:08x}.json"
        self.config_path.write_text(json.dumps(doc))
        os.chmod(self.config_path, 0o600)
        self.cfg = fwconfig.load(json.dumps(doc).encode())
        self.storage = {} if storage is None else storage
        self.stack = aioble_fake.Stack(address)
        self.device = site.air.add(self.stack, rssi=rssi, mtu=mtu)
        self.gw_hal = SimHAL(site.clock, time_known=True)
        self.boot()

    def boot(self) -> None:
        site = self.site
        self.hal = SimHAL(site.clock, time_known=self.time_known, storage=self.storage)
        if self.cfg["kind"] == "lighting":
            self.lamp = Lamp(self.hal)
        radio, gw_radio = memory_link(self.hal, self.gw_hal)
        self.gw = MiniGateway(
            self.gw_hal, gw_radio, keys=NodeKeys(self.cfg["node_id"], bytes.fromhex(self.doc["root_key"]))
        )
        app = Lighting if self.cfg["kind"] == "lighting" else Irrigation
        self.node = Node(self.cfg, self.hal, radio, app, hello_jitter_ms=0)
        self.ble = node_ble.Commissioning(self.node, self.stack.aioble(), aioble_fake.UUID, self.cfg["ble"])
        self.tasks = [asyncio.create_task(c) for c in (self.node.run(), self.ble.run(), self.gw.run())]
        site.tasks.extend(self.tasks)

    def power_off(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.hal.power_off()
        if self.stack.connection is not None:
            self.stack.disconnect()
        self.stack.advertising = None
        self.stack = aioble_fake.Stack(self.stack.address)  # a fresh controller after the reset
        self.device.stack = self.stack

    @property
    def settings(self) -> dict[int, int]:
        return dict(self.node.store.settings())


def scenario(body, tmp_path: Path, unix0: int = MIDNIGHT) -> Any:
    """Run `await body(site)` on a virtual clock at `unix0` (night: the lamps are on)."""
    clock = virtual_loop.VirtualClock(unix0)

    async def main() -> Any:
        site = Site(clock, tmp_path)
        try:
            return await body(site)
        finally:
            site.stop()
            await asyncio.sleep(0)

    return virtual_loop.run(main(), clock)


async def settle(s: float = 2.0) -> None:
    await asyncio.sleep(s)


def spec_examples(kind: str) -> list[dict[str, str]]:
    out = []
    for text in re.findall(r"^```" + re.escape(kind) + r"\n(.*?)^```", SPEC.read_text(), re.M | re.S):
        fields = {}
        for line in text.strip().splitlines():
            name, _, value = line.partition(" ")
            fields[name] = value.strip()
        out.append(fields)
    assert out, f"no {kind} example in SPEC.md"
    return out


def unhex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def config_frame(
    counter: int,
    settings: dict[int, int],
    key: bytes = KEY,
    node_id: int = 0x00A1B2C3,
    mtype: int = m.CONFIG,
    echo: bytes | None = None,
) -> bytes:
    if mtype == m.CONFIG:
        body = m.encode(m.CONFIG, {0: settings} if echo is None else {0: settings, m.CF_ECHO: echo})
    else:
        body = m.encode(mtype, {0: 1, 1: m.OP_REBOOT})
    return fr.seal(NodeKeys(node_id, key), mtype, counter, body)


def session(ble: node_ble.Commissioning, challenge: bytes = b"\x11" * 8) -> bytes:
    """Open a session as a tool does (SPEC §11, "Sessions"); the node's nonce, its tag checked."""
    answer = ble.handle(bytes((pb.SESSION,)) + challenge)
    assert answer[0] == pb.SESSION and len(answer) == pb.SESSION_ANSWER_LEN
    nonce = answer[1 : 1 + pb.NONCE_LEN]
    assert answer[-pb.TAG_LEN :] == pb.tag(NodeKeys(0x00A1B2C3, KEY), answer[: -pb.TAG_LEN], challenge + nonce)
    return nonce
