"""BLE commissioning, the technician's side: `lumeau node scan | check | configure` against real nodes
(set-up: tests/ble_site.py)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from ble_sim import aioble_fake, parse_ad
from ble_site import KEY, OTHER_KEY, Site, config_frame, scenario, settle, spec_examples, unhex

from firmware import ble as node_ble
from lumeau import ble_tools
from lumeau.cli import main as cli_main
from protocol import ble as pb
from protocol import frame as fr
from protocol import messages as m
from protocol.keys import NodeKeys

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
    assert ble_tools.verified(keys, answer, challenge + nonce) and ble_tools.verified(keys, refusal, challenge + nonce)
    assert not ble_tools.verified(keys, answer, bytes(8) + nonce)  # another challenge: another tag

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
        _, out, _ = await site.cli("check", "C0:FF:EE:00:00:01", "--json")
        return before, n.node.app.presence, code, json.loads(out)["status"]["report"]

    before, after, code, report = scenario(body, tmp_path)
    assert code == 0 and before >= 1 and after == before
    # The open status shows the lamp as a passer-by sees it, not who passed by (SPEC §11, issue 15)
    assert "level" in report and "presence_count" not in report


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
