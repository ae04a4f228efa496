"""A street of lamps commanded by LoRa multicast through a packet forwarder (issue 11).

The gateway (registry, store, downlinks, pipeline, API, and a real SemtechServer on UDP with
a forwarder played over a socket) provisions the group key by join_group; each lamp's side is
the firmware's own code (firmware/group.py) unwrapping it. Then one GROUP_COMMAND goes out at
once (imme, 869.525 MHz), the members' CMD_ACKs move the progress, the one that stays silent
gets a unicast repair, and a member leaving the group renews the key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import pytest
from gateway_helpers import node_keys, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_groups import Gateway, make_registry

from firmware.group import Groups
from gateway.groups import GroupCommands
from gateway.transports import semtech
from protocol import frame, groupcast
from protocol import messages as m

LAMPS = list(range(0x300, 0x305))
EUI = bytes.fromhex("aa555a0000000102")


class Forwarder(asyncio.DatagramProtocol):
    """Plays lora_pkt_fwd over UDP: PULL_DATA for a route, collects PULL_RESP, answers TX_ACK."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.inbox.put_nowait(data)

    async def recv(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), 5)

    async def pull(self) -> None:
        assert self.transport is not None
        self.transport.sendto(struct.pack(">BHB", 2, 1, semtech.PULL_DATA) + EUI)
        assert (await self.recv())[3] == semtech.PULL_ACK

    def tx_ack(self, token: int) -> None:
        assert self.transport is not None
        self.transport.sendto(struct.pack(">BHB", 2, token, semtech.TX_ACK) + EUI)


class Flash:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def load(self, key: str) -> bytes | None:
        return self.data.get(key)

    def save(self, key: str, data: bytes) -> None:
        self.data[key] = bytes(data)


class Street(Gateway):
    async def start(self) -> None:  # the API with a packet forwarder as its multicast radio
        self.srv = semtech.SemtechServer(None, "127.0.0.1", 0)  # type: ignore[arg-type]
        await self.srv.start()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.srv.stop()


@pytest.fixture
async def street(tmp_path, monkeypatch):
    make_registry(tmp_path / "nodes.toml", lamps=LAMPS, valves=[0x3FF]).save()
    g = Street(tmp_path)
    import gateway.api as api_mod

    real = api_mod.Api.__init__

    def with_radio(self, *a, **kw):  # the Api gets the forwarder's server among its transports
        kw["transports"] = [g.srv]
        real(self, *a, **kw)

    monkeypatch.setattr(api_mod.Api, "__init__", with_radio)
    await g.start()
    loop = asyncio.get_running_loop()
    _, fwd = await loop.create_datagram_endpoint(Forwarder, remote_addr=("127.0.0.1", g.srv.port))
    await fwd.pull()
    g.fwd = fwd
    g.lamps = {n: Groups(Flash(), node_keys(n)) for n in LAMPS}
    yield g
    await g.stop()


async def answer_windows(g: Street, counters: dict[int, int]) -> None:
    """Each lamp sends uplinks until nothing more comes for it; it answers each COMMAND it gets."""
    for n in LAMPS:
        up: tuple[int, dict] | None = None
        for _ in range(12):
            counters[n] += 1
            before = len(g.radio.sent)
            raw = seal(n, counters[n]) if up is None else seal(n, counters[n], m.CMD_ACK, up[1])
            assert await g.uplink(raw) == "accepted"
            if len(g.radio.sent) == before:
                if up is None:
                    break
                up = None
                continue
            node, mtype, body = g.radio.sent[-1]
            assert node == n and mtype == m.COMMAND
            if body[1] == m.OP_JOIN_GROUP:
                assert 3 not in body  # no expiry on a join: it must fit 51 B
                res, value = g.lamps[n].join(body[2])
            else:
                res, value = m.RES_OK, body[2][0]
            up = (n, {0: body[0], 1: res, 2: value})


async def test_provision_then_multicast_then_repair_then_a_leaver_renews_the_key(street):
    g = street
    members = [f"{n:08x}" for n in LAMPS] + ["000003ff"]  # and an irrigation controller on the street
    status, doc = await g.call("POST", "/groups", {"name": "rue", "kind": "street", "members": members})
    assert status == 201 and doc["provisioning"] == {"queued": 5, "failed": 0}  # the key goes to the lamps
    status, doc = await g.call("GET", "/groups/rue")
    assert doc["multicast"]["delivery"] == {"mode": "unicast", "reason": "5 of 5 lamps do not have the group key yet"}
    assert (await g.call("POST", "/groups/rue/multicast"))[1]["provisioning"] == {"queued": 0, "failed": 0}

    # a command meanwhile goes by unicast
    status, out = await g.call("POST", "/groups/rue/commands", {"op": "set_level", "args": [100, 7200]})
    assert status == 201 and out["delivery"]["mode"] == "unicast"
    counters = dict.fromkeys(LAMPS, 0)
    await answer_windows(g, counters)
    assert all(len(lamp.slots) == 1 for lamp in g.lamps.values())
    key = {lamp.slots[0][3] for lamp in g.lamps.values()}
    assert len(key) == 1  # every lamp unwrapped the same group key, each from its own pad
    status, doc = await g.call("GET", "/groups/rue")
    mc = doc["multicast"]
    assert mc["provisioned"] == 5 and mc["delivery"]["mode"] == "multicast", mc
    assert (g.tmp / "nodes.multicast.json").stat().st_mode & 0o777 == 0o600
    state = (g.tmp / "nodes.multicast.json").read_text()
    k = key.pop().hex()
    assert k not in state and k not in json.dumps(doc)  # the master is in the file, no group key anywhere

    # the next command: one GROUP_COMMAND at once, through the forwarder
    g.api.groups.repair_after_s = 0.3
    status, out = await g.call("POST", "/groups/rue/commands", {"op": "set_level", "args": [100, 7200]})
    assert status == 201 and out["delivery"]["mode"] == "multicast", out
    assert out["progress"] == {"applied": 0, "pending": 5, "failed": 0, "skipped": 1}  # the valve: not its op
    resp = await g.fwd.recv()
    assert resp[3] == semtech.PULL_RESP
    txpk = json.loads(resp[4:])["txpk"]
    assert txpk["imme"] is True and txpk["freq"] == 869.525 and txpk["datr"] == "SF9BW125"
    g.fwd.tx_ack(struct.unpack(">H", resp[1:3])[0])
    raw = base64.b64decode(txpk["data"])
    cid = groupcast.MCAST_ID_BASE + out["id"]
    for n in LAMPS:
        body = g.lamps[n].check(frame.parse(raw))
        assert m.decode(m.COMMAND, body)[0] == cid and m.decode(m.COMMAND, body)[2] == [100, 7200]
        assert g.lamps[n].check(frame.parse(raw)) is False  # once
    for n in LAMPS[:4]:  # four answer; the last one's CMD_ACK is lost
        counters[n] += 1
        assert await g.uplink(seal(n, counters[n], m.CMD_ACK, {0: cid, 1: m.RES_OK, 2: 100})) == "accepted"

    async def progress() -> dict:
        return (await g.call("GET", f"/groups/rue/commands/{out['id']}"))[1]

    assert (await progress())["progress"]["applied"] == 4
    # after repair_after_s the silent member gets it by unicast, in its next window
    last = LAMPS[4]

    async def repaired() -> bool:
        items = {x["node"]: x for x in (await progress())["members"]}
        return "command" in items[f"{last:08x}"]

    for _ in range(100):
        if await repaired():
            break
        await asyncio.sleep(0.05)
    assert await repaired()
    await answer_windows(g, counters)
    doc = await progress()
    assert doc["progress"] == {"applied": 5, "pending": 0, "failed": 0, "skipped": 1}

    # a lamp leaves: the key is renewed, so the next command goes by unicast again
    assert (await g.call("PUT", "/groups/rue", {"members": members[:4]}))[0] == 200
    status, doc = await g.call("GET", "/groups/rue")
    reason = doc["multicast"]["delivery"]["reason"]
    assert doc["multicast"]["delivery"]["mode"] == "unicast" and reason == "4 of 4 lamps do not have the group key yet"
    assert doc["multicast"]["gen"] == 1 and doc["multicast"]["provisioned"] == 0  # renewed when saved
    status, out = await g.call("POST", "/groups/rue/commands", {"op": "set_level", "args": [50, 60]})
    assert out["delivery"]["mode"] == "unicast"
    await answer_windows(g, counters)
    assert g.lamps[last].slots == []  # the leaver was told to forget the key
    status, doc = await g.call("GET", "/groups/rue")
    assert doc["multicast"]["provisioned"] == 4 and doc["multicast"]["delivery"]["mode"] == "multicast"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["ack", "repair", "node", "result", "members", "id"]), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(json_values, max_size=6))
def test_fuzz_a_damaged_command_log_loads_what_it_can(tmp_path, lines):
    """Answers and repairs of multicasts are log lines too: whatever a damaged log holds, the gateway starts."""
    reg = make_registry(tmp_path / "nodes.toml", lamps=LAMPS[:2], valves=[])
    log = tmp_path / "nodes.group-commands.jsonl"
    good = {
        "id": 1,
        "group": "rue",
        "op": "set_level",
        "args": [1, 1],
        "created": 0,
        "members": {"00000300": {"multicast": True}},
    }
    log.write_text("\n".join([json.dumps(good)] + [json.dumps(x) for x in lines]) + "\n")

    class NoStore:
        def downlink(self, _id):
            return None

    class NoDownlinks:
        cmd_ack_listeners: list = []

    gc = GroupCommands(reg, NoStore(), NoDownlinks(), log_path=log)  # type: ignore[arg-type]
    p = gc.progress(1)
    assert p is not None and sum(p["progress"].values()) == 1
