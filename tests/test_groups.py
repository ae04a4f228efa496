"""Groups (issue 11): the registry's groups section, the /groups API over a real aiohttp server
on 127.0.0.1, unicast fan-out of a group command with progress from real CMD_ACKs, restarts."""

from __future__ import annotations

import json
import stat
import time

import aiohttp
import pytest
from gateway_helpers import node_keys, reception, root_key, seal

from gateway.api import Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import Group, NodeEntry, Registry, RegistryError
from gateway.store import Store
from protocol import frame
from protocol import messages as m

TOKEN = "a-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAMPS = list(range(0x100, 0x100 + 60))  # a 60-lamp street
VALVES = [0x200, 0x201, 0x202]  # irrigation controllers on the same street


class Radio:
    """The DownlinkPath seam: what the node reads from each downlink (as tests/test_gateway_downlinks.py)."""

    def __init__(self, name: str = "udp:aa") -> None:
        self.name = name
        self.sent: list[tuple[int, int, dict]] = []  # (node, mtype, body)

    async def send_downlink(self, raw: bytes, rx) -> None:
        node = frame.parse(raw).node_id
        f, body = frame.unseal(node_keys(node), raw)
        assert f.downlink
        self.sent.append((node, f.mtype, m.decode(f.mtype, body)))


def make_registry(path, lamps=LAMPS, valves=VALVES) -> Registry:
    reg = Registry(path)
    for n in lamps:
        reg.upsert(NodeEntry(node_id=n, kind="lighting", root_key=root_key(n)))
    for n in valves:
        reg.upsert(NodeEntry(node_id=n, kind="irrigation", root_key=root_key(n)))
    return reg


class Gateway:
    """Registry file, store, downlinks, pipeline and API: started, stopped and started again."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.radio = Radio()

    async def start(self) -> None:
        self.store = await Store.open(self.tmp / "gw.db")
        self.reg = Registry.load(self.tmp / "nodes.toml")
        self.d = Downlinks(self.store, self.reg, collect_s=0.01, max_queued_per_node=4)
        await self.d.start()
        self.p = Pipeline(self.reg, self.store, downlinks=self.d)
        self.api = Api(registry=self.reg, store=self.store, pipeline=self.p, downlinks=self.d, token=TOKEN, port=0)
        await self.api.start()
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.api.port}", headers=AUTH)

    async def stop(self) -> None:
        await self.http.close()
        await self.api.stop()
        await self.d.close()
        await self.p.close()
        await self.store.close()

    async def uplink(self, raw: bytes) -> str:
        v = await self.p.ingest(reception(raw, transport="udp", path=self.radio, gateway_id=self.radio.name))
        await self.d.idle()
        return v

    async def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        async with self.http.request(method, path, json=body) as r:
            return r.status, (await r.json() if r.status != 204 else {})


@pytest.fixture
async def gw(tmp_path):
    make_registry(tmp_path / "nodes.toml").save()
    g = Gateway(tmp_path)
    await g.start()
    yield g
    await g.stop()


# ---------------------------------------------------------------- the registry file


def test_groups_are_saved_in_the_registry_file_and_checked_on_load(tmp_path):
    path = tmp_path / "nodes.toml"
    reg = make_registry(path, lamps=[1, 2, 3], valves=[9])
    reg.put_group(Group("rue-de-rivoli", "street", [1, 2, 3], "Rue de Rivoli"))
    reg.put_group(Group("parc", "park", [9]))
    reg.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Registry.load(path)
    assert [g.public() for g in again.groups()] == [
        {"name": "parc", "kind": "park", "members": ["00000009"]},
        {
            "name": "rue-de-rivoli",
            "kind": "street",
            "members": ["00000001", "00000002", "00000003"],
            "title": "Rue de Rivoli",
        },
    ]
    text = path.read_text()
    for bad, why in [
        ('[groups.x]\nkind = "avenue"\nmembers = []\n', "kind: 'avenue' is not one of street, park, district, custom"),
        (
            '[groups.x]\nkind = "street"\nmembers = ["0000000a"]\n',
            "group x: members: node 0000000a is not in the registry",
        ),
        ('[groups.x]\nkind = "street"\nmembers = ["1", "00000001"]\n', "node 00000001 is listed twice"),
        ('[groups.x]\nkind = "street"\nmembers = ["zz"]\n', "'zz' is not 1 to 8 hex digits"),
        ('[groups.X]\nkind = "street"\nmembers = []\n', "group name 'X' is not"),
        ('[groups.x]\nkind = "street"\n', "members: required"),
        ('[groups.x]\nkind = "street"\nmembers = []\ncolour = "red"\n', "unknown key 'colour'"),
        ("groups = 3\n", "groups: must be a table"),
    ]:
        path.write_text(("version = 1\n" if bad.startswith("groups =") else text) + bad)
        with pytest.raises(RegistryError) as e:
            Registry.load(path)
        assert why in str(e.value) and str(path) in str(e.value), (bad, str(e.value))


def test_removing_a_node_takes_it_out_of_its_groups_and_a_name_is_created_once(tmp_path):
    reg = make_registry(tmp_path / "nodes.toml", lamps=[1, 2], valves=[])
    reg.save()
    reg.change(lambda r: r.put_group(Group("s", "street", [1, 2]), create=True))
    with pytest.raises(RegistryError, match="a group of that name exists"):
        reg.change(lambda r: r.put_group(Group("s", "custom", [1]), create=True))
    reg.change(lambda r: r.remove(1))
    assert Registry.load(tmp_path / "nodes.toml").group("s").members == [2]
    assert reg.group("s").members == [2]  # the gateway's copy takes the file's groups too


# ---------------------------------------------------------------- the API


async def test_group_crud_through_the_api(gw):
    doc = {"name": "rivoli", "kind": "street", "members": ["00000100", "0x101", 258], "title": "Rue de Rivoli"}
    assert await gw.call("POST", "/groups", doc) == (
        201,
        {"name": "rivoli", "kind": "street", "members": ["00000100", "00000101", "00000102"], "title": "Rue de Rivoli"},
    )
    status, err = await gw.call("POST", "/groups", doc)
    assert status == 409 and "exists" in err["error"]
    assert Registry.load(gw.tmp / "nodes.toml").group("rivoli").members == [0x100, 0x101, 0x102]  # saved at once
    status, g = await gw.call("PUT", "/groups/rivoli", {"members": ["00000103"]})
    assert status == 200 and g["members"] == ["00000103"] and g["title"] == "Rue de Rivoli"  # the rest kept
    status, g = await gw.call("PUT", "/groups/parc-monceau", {"kind": "park", "members": ["00000200"]})
    assert status == 201
    status, body = await gw.call("GET", "/groups")
    assert [g["name"] for g in body["groups"]] == ["parc-monceau", "rivoli"]
    assert (await gw.call("GET", "/groups/parc-monceau"))[1]["members"] == ["00000200"]
    for method, path, body, want, why in [
        ("POST", "/groups", {"name": "x", "kind": "avenue", "members": []}, 400, "kind"),
        ("POST", "/groups", {"name": "x", "kind": "street", "members": ["00000999"]}, 400, "not in the registry"),
        ("POST", "/groups", {"name": "Bad Name", "kind": "street", "members": []}, 400, "group name"),
        ("POST", "/groups", {"kind": "street", "members": []}, 400, "group name"),
        ("POST", "/groups", [1], 400, "object"),
        ("PUT", "/groups/x", {"kind": "street"}, 400, "members: required"),
        ("PUT", "/groups/x", {"kind": "street", "members": ["1", "1"]}, 400, "listed twice"),
        ("PUT", "/groups/UPPER", {"kind": "street", "members": []}, 400, "group name"),
        ("GET", "/groups/nosuch", None, 404, "no such group"),
        ("DELETE", "/groups/nosuch", None, 404, "no such group"),
    ]:
        status, err = await gw.call(method, path, body)
        assert status == want and why in err["error"], (method, path, body, status, err)
    assert (await gw.call("DELETE", "/groups/parc-monceau"))[0] == 204
    assert Registry.load(gw.tmp / "nodes.toml").group("parc-monceau") is None
    assert 0x200 in Registry.load(gw.tmp / "nodes.toml")  # its node stays registered
    # removing a node through the API takes it out of its groups
    assert (await gw.call("DELETE", "/nodes/00000103"))[0] == 204
    assert (await gw.call("GET", "/groups/rivoli"))[1]["members"] == []


async def test_a_group_command_is_checked_once_and_wrong_kinds_are_skipped(gw):
    members = [f"{n:08x}" for n in LAMPS[:3] + VALVES]
    assert (await gw.call("POST", "/groups", {"name": "mixed", "kind": "custom", "members": members}))[0] == 201
    for body, why in [
        ({"op": "set_level", "args": [101, 600]}, "level: 101 is out of range 0..100"),
        ({"op": "set_level", "args": {"level": 50}}, "argument 'duration' missing"),
        ({"op": "fly"}, "unknown op 'fly'"),
        ({"op": 99}, "op must be one of"),
        ({"op": "set_level", "args": [1, 1], "ttl_s": -1}, "ttl_s"),
        ({"op": "set_level", "args": [1, 1], "colour": 1}, "unknown field 'colour'"),
        ([], "JSON object"),
    ]:
        status, err = await gw.call("POST", "/groups/mixed/commands", body)
        assert status == 400 and why in err["error"], (body, err)
    assert gw.store.downlinks() == []  # nothing queued for a refused group command
    status, out = await gw.call("POST", "/groups/mixed/commands", {"op": "rain_delay", "args": {"hours": 24}})
    assert status == 201 and out["progress"] == {"applied": 0, "pending": 3, "failed": 0, "skipped": 3}
    skipped = {x["node"]: x["reason"] for x in out["members"] if x["state"] == "skipped"}
    assert set(skipped) == {f"{n:08x}" for n in LAMPS[:3]}
    assert "rain_delay is for irrigation nodes, not lighting" in skipped["00000100"]
    assert sorted(d.node_id for d in gw.store.downlinks()) == VALVES  # the lamps got nothing
    assert (await gw.call("POST", "/groups/nosuch/commands", {"op": "reboot"}))[0] == 404
    assert (await gw.call("GET", f"/groups/nosuch/commands/{out['id']}"))[0] == 404  # another group's id
    assert (await gw.call("GET", "/groups/mixed/commands/999"))[0] == 404


async def test_a_street_of_60_lamps_is_commanded_by_unicast_and_progress_follows_the_cmd_acks(gw):
    street = [f"{n:08x}" for n in LAMPS + VALVES]
    assert (await gw.call("POST", "/groups", {"name": "rue-de-rivoli", "kind": "street", "members": street}))[0] == 201
    t0 = time.perf_counter()
    status, out = await gw.call("POST", "/groups/rue-de-rivoli/commands", {"op": "set_level", "args": [100, 7200]})
    fanout_s = time.perf_counter() - t0
    print(f"fan-out of a group command to {len(LAMPS)} lamps (+{len(VALVES)} skipped): {fanout_s * 1000:.0f} ms")
    assert status == 201 and out["progress"] == {"applied": 0, "pending": 60, "failed": 0, "skipped": 3}
    cmd = out["id"]
    ids = {x["node"]: x["command"] for x in out["members"] if x["state"] == "pending"}
    assert len(set(ids.values())) == 60  # one COMMAND per member, each with its own id
    assert gw.radio.sent == []  # LoRa: nothing goes out before the member's uplink opens its window

    async def progress() -> dict:
        status, doc = await gw.call("GET", f"/groups/rue-de-rivoli/commands/{cmd}")
        assert status == 200
        return doc

    # each lamp's uplink opens its receive window: its own COMMAND goes out in it, nobody else's
    for i, n in enumerate(LAMPS):
        assert await gw.uplink(seal(n, 10)) == "accepted"
        node, mtype, body = gw.radio.sent[-1]
        assert (node, mtype, body[1], body[2]) == (n, m.COMMAND, m.OP_SET_LEVEL, [100, 7200])
        assert body[0] == ids[f"{n:08x}"]
        assert len(gw.radio.sent) == i + 1
    assert (await progress())["progress"]["pending"] == 60  # sent, not yet answered
    # half answer: progress moves as the CMD_ACKs arrive
    for n in LAMPS[:30]:
        assert await gw.uplink(seal(n, 11, m.CMD_ACK, {0: ids[f"{n:08x}"], 1: m.RES_OK})) == "accepted"
    assert (await progress())["progress"] == {"applied": 30, "pending": 30, "failed": 0, "skipped": 3}
    for n in LAMPS[30:59]:
        assert await gw.uplink(seal(n, 11, m.CMD_ACK, {0: ids[f"{n:08x}"], 1: m.RES_OK})) == "accepted"
    last = LAMPS[59]
    assert await gw.uplink(seal(last, 11, m.CMD_ACK, {0: ids[f"{last:08x}"], 1: m.RES_BUSY})) == "accepted"
    doc = await progress()
    assert doc["progress"] == {"applied": 59, "pending": 0, "failed": 1, "skipped": 3}
    failed = [x for x in doc["members"] if x["state"] == "failed"]
    assert all(isinstance(x.pop("answered_at"), float) for x in failed)  # when its CMD_ACK was heard
    assert failed == [
        {"node": f"{last:08x}", "command": ids[f"{last:08x}"], "state": "failed", "reason": "the node answered busy"}
    ]
    status, listed = await gw.call("GET", "/groups/rue-de-rivoli/commands")
    assert status == 200 and [c["id"] for c in listed["commands"]] == [cmd]
    assert listed["commands"][0]["progress"]["applied"] == 59 and "members" not in listed["commands"][0]
    assert fanout_s < 10  # a generous bound for a loaded machine; the figure is printed above


async def test_a_member_with_a_full_queue_fails_at_once_and_the_others_go_on(gw):
    lamps = [f"{n:08x}" for n in LAMPS[:3]]
    assert (await gw.call("POST", "/groups", {"name": "s", "kind": "street", "members": lamps}))[0] == 201
    for _ in range(4):  # max_queued_per_node = 4
        assert (await gw.call("POST", f"/nodes/{lamps[0]}/commands", {"op": "reboot"}))[0] == 201
    status, out = await gw.call("POST", "/groups/s/commands", {"op": "set_level", "args": {"level": 0, "duration": 60}})
    assert status == 201 and out["progress"] == {"applied": 0, "pending": 2, "failed": 1, "skipped": 0}
    assert "already has 4 downlinks waiting" in out["members"][0]["reason"]


async def test_groups_and_group_commands_survive_a_gateway_restart(tmp_path):
    make_registry(tmp_path / "nodes.toml").save()
    g = Gateway(tmp_path)
    await g.start()
    try:
        members = [f"{n:08x}" for n in LAMPS[:5]]
        assert (await g.call("POST", "/groups", {"name": "s", "kind": "street", "members": members}))[0] == 201
        status, out = await g.call("POST", "/groups/s/commands", {"op": "set_level", "args": [80, 3600]})
        assert status == 201
        first = LAMPS[0]
        ids = {x["node"]: x["command"] for x in out["members"]}
        assert await g.uplink(seal(first, 1)) == "accepted"
        assert await g.uplink(seal(first, 2, m.CMD_ACK, {0: ids[f"{first:08x}"], 1: m.RES_OK})) == "accepted"
    finally:
        await g.stop()
    log = tmp_path / "nodes.group-commands.jsonl"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    with log.open("a") as f:
        f.write('{"id": 7, "torn')  # a crash in the middle of a line loses that line only
    g = Gateway(tmp_path)
    await g.start()
    try:
        assert (await g.call("GET", "/groups/s"))[1]["members"] == members
        status, doc = await g.call("GET", f"/groups/s/commands/{out['id']}")
        assert status == 200 and doc["progress"] == {"applied": 1, "pending": 4, "failed": 0, "skipped": 0}
        # the queued COMMANDs survived too: the next lamp gets its own in its window, and its ack counts
        n = LAMPS[1]
        assert await g.uplink(seal(n, 1)) == "accepted"
        assert g.radio.sent[-1][0] == n and g.radio.sent[-1][2][0] == ids[f"{n:08x}"]
        assert await g.uplink(seal(n, 2, m.CMD_ACK, {0: ids[f"{n:08x}"], 1: m.RES_OK})) == "accepted"
        assert (await g.call("GET", f"/groups/s/commands/{out['id']}"))[1]["progress"]["applied"] == 2
        status, again = await g.call("POST", "/groups/s/commands", {"op": "reboot"})
        assert status == 201 and again["id"] == out["id"] + 1  # ids are not reused after a restart
        assert json.loads(log.read_text().splitlines()[-1])["id"] == again["id"]
    finally:
        await g.stop()


async def test_a_group_added_offline_is_kept_by_the_gateways_next_write(gw):
    """`lumeau group add --registry` while the gateway runs: the gateway's next change merges, never erases."""
    offline = Registry.load(gw.tmp / "nodes.toml")
    offline.change(lambda r: r.put_group(Group("offline", "park", [VALVES[0]])), missing_ok=False)
    assert (await gw.call("POST", "/groups", {"name": "online", "kind": "street", "members": ["100"]}))[0] == 201
    assert [g.name for g in Registry.load(gw.tmp / "nodes.toml").groups()] == ["offline", "online"]
    assert (await gw.call("GET", "/groups/offline"))[0] == 200  # and the gateway knows it from then on


async def test_the_group_command_log_keeps_the_last_commands_and_never_reuses_an_id(gw, monkeypatch):
    from gateway import groups

    monkeypatch.setattr(groups, "MAX_KEPT", 3)
    assert (await gw.call("POST", "/groups", {"name": "s", "kind": "street", "members": ["100"]}))[0] == 201
    for _ in range(8):
        status, out = await gw.call("POST", "/groups/s/commands", {"op": "set_interval", "args": [900], "ttl_s": 60})
        assert status == 201, out
        await gw.call("DELETE", f"/commands/{out['members'][0]['command']}")  # keep the node's queue short
    log = gw.tmp / "nodes.group-commands.jsonl"
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert ids[-1] == 8 and len(ids) <= 2 * 3 and len(set(ids)) == len(ids)  # rewritten once it held 6 lines
    assert [c["id"] for c in (await gw.call("GET", "/groups/s/commands"))[1]["commands"]] == [6, 7, 8]
    assert (await gw.call("GET", "/groups/s/commands/5"))[0] == 404
    again = groups.GroupCommands(gw.reg, gw.store, gw.d)  # as at a restart
    assert [c["id"] for c in again.commands("s")] == [6, 7, 8]
