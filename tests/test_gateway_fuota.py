"""A release image over LoRa (SPEC §13 "Over LoRa"; gateway/fuota.py) through the real gateway.

The gateway (registry, store, downlinks, pipeline, API and a real SemtechServer on UDP with a
forwarder played over a socket, as tests/test_groups_multicast.py) runs a fragment session for
a street's lamps by multicast and for a valve by unicast in its receive windows. Each node's
side reassembles with protocol/nodefrag.py's decoder (the node's own code; the firmware around
it is tested under MicroPython, tests/micropython/mp_frag.py) and loses frames at its own rate;
the gateway asks each for its status and repairs with coded fragments until every node holds
the image, pacing the multicast within the duty cycle.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import random
import re
import struct
import time
from pathlib import Path

import pytest
from gateway_helpers import node_keys, seal
from test_groups_multicast import EUI, LAMPS, Flash, street  # noqa: F401  (the fixture)
from waiting import wait_for

from firmware.group import Groups
from gateway.fuota import FuotaDelivery, FuotaSettings, image_bundle
from gateway.transports import DownlinkError, semtech
from protocol import fragments as fz
from protocol import frame, lora, nodefrag
from protocol import messages as m

VALVE = 0x3FF


def make_image(payload: int = 1500, seed: int = 3) -> bytes:
    manifest = json.dumps({"bundle": random.Random(seed).randbytes(32).hex(), "version": "9.9.9"}).encode()
    return b"LUP1" + len(manifest).to_bytes(2, "big") + manifest + bytes(64) + random.Random(seed).randbytes(payload)


class Node:
    """A node's fragment side: the group check (firmware/group.py), the decoder, its losses."""

    def __init__(self, node_id: int, loss: float, tmp: Path) -> None:
        self.id = node_id
        self.groups = Groups(Flash(), node_keys(node_id))
        self.rnd = random.Random(node_id)
        self.loss = loss
        self.tmp = tmp
        self.dec: nodefrag.Decoder | None = None
        self.sid: int | None = None
        self.heard = 0

    def take(self, body: bytes) -> None:
        if self.rnd.random() < self.loss:
            return
        self.heard += 1
        if body[0] == fz.SETUP:
            sid, _b, size, f, n, _r = nodefrag.parse(body)
            if sid != self.sid:
                self.sid = sid
                self.dec = nodefrag.Decoder(
                    str(self.tmp / f"{self.id}.img"), str(self.tmp / f"{self.id}.rows"), size, f, n
                )
        elif self.dec is not None and body[1] == self.sid:
            self.dec.add(int.from_bytes(body[2:4], "big"), body[4:])

    def hear_group(self, raw: bytes) -> None:
        body = self.groups.check(frame.parse(raw))
        if body:
            self.take(body)

    def status(self, sid: int) -> tuple[int, int]:
        if self.dec is None or sid != self.sid:
            return m.RES_REFUSED, fz.ST_NO_SESSION
        return m.RES_OK, self.dec.missing

    def image(self) -> bytes:
        return (self.tmp / f"{self.id}.img").read_bytes()


class LinkRadio:
    """The downlink path of the nodes' uplinks: COMMANDs recorded, FRAG frames handed to the node."""

    name = "udp:aa"

    def __init__(self, nodes: dict[int, Node]) -> None:
        self.nodes = nodes
        self.sent: list[tuple[int, int, dict]] = []
        self.frags = 0

    async def send_downlink(self, raw: bytes, rx) -> None:
        node = frame.parse(raw).node_id
        f, body = frame.unseal(node_keys(node), raw)
        if f.mtype == fz.FRAG:
            self.frags += 1
            self.nodes[node].take(body)
        else:
            self.sent.append((node, f.mtype, m.decode(f.mtype, body)))


async def run_uplinks(g, radio: LinkRadio, nodes: dict[int, Node], stop: asyncio.Event) -> None:
    """Every node sends uplinks in turn and answers each COMMAND it got (join, status)."""
    counters = dict.fromkeys(nodes, 0)
    answer: dict[int, dict] = {}
    seen = 0
    while not stop.is_set():
        for n in nodes:
            counters[n] += 1
            a = answer.pop(n, None)
            raw = seal(n, counters[n]) if a is None else seal(n, counters[n], m.CMD_ACK, a)
            assert await g.uplink(raw) == "accepted"
            for node, mtype, body in radio.sent[seen:]:
                seen += 1
                if mtype != m.COMMAND:
                    continue
                if body[1] == m.OP_JOIN_GROUP:
                    res, value = nodes[node].groups.join(body[2])
                elif body[1] == fz.OP_FRAG_STATUS:
                    res, value = nodes[node].status(body[2][0])
                else:
                    res, value = m.RES_UNKNOWN_OP, 0
                answer[node] = {0: body[0], 1: res, 2: value} if value else {0: body[0], 1: res}
        await asyncio.sleep(0.002)


async def test_a_street_by_multicast_and_a_valve_by_unicast_get_the_image(street, tmp_path):  # noqa: F811
    g = street
    losses = [0.0, 0.05, 0.1, 0.2, 0.4]
    nodes = {n: Node(n, losses[i], tmp_path) for i, n in enumerate(LAMPS)}
    nodes[VALVE] = Node(VALVE, 0.2, tmp_path)
    radio = g.radio = LinkRadio(nodes)
    members = [f"{n:08x}" for n in LAMPS] + [f"{VALVE:08x}"]
    status, doc = await g.call("POST", "/groups", {"name": "rue", "kind": "street", "members": members})
    assert status == 201
    stop = asyncio.Event()
    up = asyncio.create_task(run_uplinks(g, radio, nodes, stop))

    async def provisioned() -> bool:
        return (await g.call("GET", "/groups/rue"))[1]["multicast"]["delivery"]["mode"] == "multicast"

    assert await wait_for(provisioned, 10, "the lamps holding the group key")

    # the forwarder: acknowledges each multicast and hands it to the lamps; the session's
    # pacing runs on a clock of its own (the server's monotonic moves with it)
    clock = [time.monotonic()]
    g.srv.monotonic = lambda: clock[0]
    txpks: list[dict] = []

    async def forwarder() -> None:
        while True:
            data = await g.fwd.inbox.get()
            if data[3] != semtech.PULL_RESP:
                continue
            txpk = json.loads(data[4:])["txpk"]
            txpks.append(txpk)
            g.fwd.tx_ack(struct.unpack(">H", data[1:3])[0])
            raw = base64.b64decode(txpk["data"])
            for n in LAMPS:
                nodes[n].hear_group(raw)

    slept = [0.0]

    async def sleep(s: float) -> None:
        slept[0] += s
        clock[0] += s
        assert g.fwd.transport is not None
        g.fwd.transport.sendto(struct.pack(">BHB", 2, 1, semtech.PULL_DATA) + EUI)  # keeps the route alive
        await asyncio.sleep(0.002)

    fwd = asyncio.create_task(forwarder())
    fu = FuotaDelivery(g.reg, g.store, g.d, g.api.multicast, FuotaSettings(status_timeout_s=30), sleep=sleep)
    image = make_image()
    assert fu.plan(LAMPS + [VALVE]) == ([(g.reg.group("rue"), LAMPS)], [], [VALVE])
    reports: dict[int, list[tuple[str, float | None]]] = {}
    await asyncio.wait_for(
        fu.deliver(image, LAMPS + [VALVE], lambda n, s, f: reports.setdefault(n, []).append((s, f))), 60
    )
    stop.set()
    fwd.cancel()
    await up
    assert {n: r[-1] for n, r in reports.items()} == {n: ("verifying", None) for n in nodes}, reports
    for n, node in nodes.items():
        assert node.image() == image, f"{n:x}"
    assert any(s == "receiving" for s, _ in reports[LAMPS[4]])
    assert fu.counts["repairs"] >= 1  # the lamp losing 40 % needed more than the redundancy
    assert all(t["freq"] == 869.525 and t["datr"] == "SF9BW125" and t["imme"] for t in txpks)
    assert len(txpks) == fu.counts["multicast_frames"]
    air = sum(lora.airtime_ms(t["size"], 9) for t in txpks) / 1000
    assert air <= 0.1 * slept[0] + 1e-6  # within the g3 sub-band's 10 % duty cycle
    assert radio.frags == fu.counts["unicast_frames"] > 0


async def test_a_node_that_never_answers_is_failed_with_its_reason(street, caplog):  # noqa: F811
    g = street
    nodes = {VALVE: Node(VALVE, 0.0, Path(g.tmp))}
    radio = g.radio = LinkRadio(nodes)
    fu = FuotaDelivery(g.reg, g.store, g.d, None, FuotaSettings(status_timeout_s=0.3, max_rounds=0))
    reports: list[tuple[int, str, float | None]] = []
    task = asyncio.create_task(fu.deliver(make_image(200), [VALVE], lambda *a: reports.append(a)))
    counter = 0
    while not task.done():  # its uplinks take the fragments; no status answer ever comes
        counter += 1
        assert counter < 2000, "the session never ended"
        assert await g.uplink(seal(VALVE, counter)) == "accepted"
        await asyncio.sleep(0.005)
    await task
    assert radio.frags == fu.counts["unicast_frames"] > 10 and nodes[VALVE].dec is not None
    assert reports[-1] == (VALVE, "failed", None, "no answer to the status request within 0.3 s")
    assert "no answer to the status request" in caplog.text


class ClosingRadio(LinkRadio):
    """Refuses every third fragment as the packet forwarder does while the band's duty cycle is closed."""

    def __init__(self, nodes: dict[int, Node]) -> None:
        super().__init__(nodes)
        self.tries = self.refused = 0

    async def send_downlink(self, raw: bytes, rx) -> None:
        f, _ = frame.unseal(node_keys(frame.parse(raw).node_id), raw)
        if f.mtype == fz.FRAG:
            self.tries += 1
            if self.tries % 3 == 0:
                self.refused += 1
                raise DownlinkError("duty_cycle", "sub-band g1 closed for 20000 ms more")
        await super().send_downlink(raw, rx)


async def test_a_fragment_the_duty_cycle_refuses_goes_in_a_later_window(street):  # noqa: F811
    """Not lost: a third of the windows refused would otherwise outrun the 25 % coded up front."""
    g = street
    nodes = {VALVE: Node(VALVE, 0.0, Path(g.tmp))}
    radio = g.radio = ClosingRadio(nodes)
    fu = FuotaDelivery(g.reg, g.store, g.d, None, FuotaSettings(status_timeout_s=5, max_rounds=0))
    image = make_image(400)
    reports: list[tuple[int, str, float | None]] = []
    task = asyncio.create_task(fu.deliver(image, [VALVE], lambda *a: reports.append(a)))
    counter, answer = 0, None
    seen = 0
    while not task.done():
        counter += 1
        assert counter < 3000, "the session never ended"
        raw = seal(VALVE, counter) if answer is None else seal(VALVE, counter, m.CMD_ACK, answer)
        answer = None
        assert await g.uplink(raw) == "accepted"
        for node, mtype, body in radio.sent[seen:]:
            seen += 1
            if mtype == m.COMMAND and body[1] == fz.OP_FRAG_STATUS:
                res, value = nodes[node].status(body[2][0])
                answer = {0: body[0], 1: res, 2: value} if value else {0: body[0], 1: res}
        await asyncio.sleep(0.002)
    await task
    assert reports[-1] == (VALVE, "verifying", None) and nodes[VALVE].image() == image
    assert radio.refused >= 5 and fu.counts["refused"] == radio.refused
    assert fu.counts["repairs"] == 0 and radio.frags == fu.counts["unicast_frames"]


async def test_an_unknown_node_fails_at_once(street, caplog):  # noqa: F811
    g = street
    fu = FuotaDelivery(g.reg, g.store, g.d, g.api.multicast)
    reports: list[tuple[int, str, float | None]] = []
    await asyncio.wait_for(fu.deliver(make_image(200), [0xDEAD], lambda *a: reports.append(a)), 5)
    assert reports == [(0xDEAD, "failed", None, "not in the registry")] and "not in the registry" in caplog.text


async def test_cancelling_a_session_leaves_nothing_behind(street):  # noqa: F811
    """A campaign's pause or abort cancels deliver(): no filler or status waiter stays."""
    g = street
    nodes = {VALVE: Node(VALVE, 0.0, Path(g.tmp))}
    radio = g.radio = LinkRadio(nodes)
    fu = FuotaDelivery(g.reg, g.store, g.d, None)
    task = asyncio.create_task(fu.deliver(make_image(300), [VALVE], lambda *a: None))
    await wait_for(lambda: VALVE in g.d.fillers, 5, "the session's filler")
    for counter in range(1, 4):
        assert await g.uplink(seal(VALVE, counter)) == "accepted"
    assert radio.frags == 3  # one per receive window
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert VALVE not in g.d.fillers
    assert await g.uplink(seal(VALVE, 4)) == "accepted"
    assert radio.frags == 3


def test_not_a_release_image_is_refused() -> None:
    with pytest.raises(ValueError, match="not a release image"):
        image_bundle(b"nope")


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ({"duty_cycle": 0.5}, "fuota.duty_cycle: 0.5 is outside 0.001..0.1"),
        ({"redundnacy": 1}, "did you mean 'redundancy'"),
        ({"max_rounds": "x"}, "fuota.max_rounds: must be an integer"),
    ],
)
def test_fuota_config_errors_name_file_key_and_why(tmp_path, section: dict, why: str) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(why)):
        parse_config({"api": {"enabled": False}, "fuota": section}, tmp_path / "gw.toml")
    cfg = parse_config({"api": {"enabled": False}}, tmp_path / "gw.toml")
    assert FuotaSettings(**dataclasses.asdict(cfg.fuota)) == FuotaSettings()  # the defaults agree


async def test_a_part_of_a_street_gets_a_temporary_group_and_leaves_it(street, tmp_path):  # noqa: F811
    """Three of the five lamps of "rue" (a campaign's canaries): the two that can take one more
    group get a temporary group of their own and the image by multicast on it; the one already
    in 4 groups refuses the join and gets it by unicast; the other two lamps hear the frames and
    drop them (not their group). Every joined lamp is sent a leave at the end, and a temporary
    group a stopped gateway left behind is closed (its member sent a leave) at the session's start."""
    g = street
    nodes = {n: Node(n, 0.0, tmp_path) for n in LAMPS}
    radio = g.radio = LinkRadio(nodes)
    status, _ = await g.call(
        "POST", "/groups", {"name": "rue", "kind": "street", "members": [f"{n:08x}" for n in LAMPS]}
    )
    assert status == 201
    stop = asyncio.Event()
    up = asyncio.create_task(run_uplinks(g, radio, nodes, stop))

    async def provisioned() -> bool:
        return (await g.call("GET", "/groups/rue"))[1]["multicast"]["delivery"]["mode"] == "multicast"

    assert await wait_for(provisioned, 10, "the lamps holding the group key")
    full, part, others = LAMPS[0], LAMPS[:3], LAMPS[3:]
    nodes[full].groups.slots += [[200 + i, 0, 0, bytes(16)] for i in range(3)]  # 4 groups: no room
    stale = await g.api.multicast.open_temporary([LAMPS[4]])  # a gateway stopped mid-session
    clock = [time.monotonic()]
    g.srv.monotonic = lambda: clock[0]
    addrs: list[int] = []

    async def forwarder() -> None:
        while True:
            data = await g.fwd.inbox.get()
            if data[3] != semtech.PULL_RESP:
                continue
            g.fwd.tx_ack(struct.unpack(">H", data[1:3])[0])
            raw = base64.b64decode(json.loads(data[4:])["txpk"]["data"])
            addrs.append(frame.parse(raw).node_id)
            for n in LAMPS:
                nodes[n].hear_group(raw)

    async def sleep(s: float) -> None:
        clock[0] += s
        assert g.fwd.transport is not None
        g.fwd.transport.sendto(struct.pack(">BHB", 2, 1, semtech.PULL_DATA) + EUI)
        await asyncio.sleep(0.002)

    fwd = asyncio.create_task(forwarder())
    fu = FuotaDelivery(g.reg, g.store, g.d, g.api.multicast, FuotaSettings(status_timeout_s=30), sleep=sleep)
    assert fu.plan(part) == ([], part, [])
    image = make_image()
    reports: dict[int, list] = {}
    await asyncio.wait_for(fu.deliver(image, part, lambda n, s, f, *why: reports.setdefault(n, []).append(s)), 60)

    def ops(node: int) -> list[list]:
        return [b[2] for n, t, b in radio.sent if n == node and t == m.COMMAND and b[1] == m.OP_JOIN_GROUP]

    await wait_for(lambda: all(len(nodes[n].groups.slots) == (4 if n == full else 1) for n in LAMPS), 10, "leaves")
    stop.set()
    fwd.cancel()
    await up
    assert {n: r[-1] for n, r in reports.items()} == dict.fromkeys(part, "verifying"), reports
    for n in part:
        assert nodes[n].image() == image, f"{n:x}"
    rue = nodes[LAMPS[1]].groups.slots[0][0]
    temp = {a for a in addrs if a != rue}
    assert len(temp) == 1 and stale.addr not in temp, (temp, stale)
    (addr,) = temp
    assert radio.frags > 0 and all(nodes[n].heard > 0 for n in part)
    assert all(nodes[n].heard == 0 and nodes[n].dec is None for n in others)  # not their group: dropped
    for n in part:  # a join (7 args) for the temporary group, then a leave ([addr])
        assert [a for a in ops(n) if a[0] == addr] == [ops(n)[-2], [addr]], ops(n)
    assert ops(LAMPS[4])[-1] == [stale.addr]  # the stale group closed
    assert g.api.multicast.status(g.reg.group("rue"))["provisioned"] == 5  # "rue" untouched


async def test_a_member_dropped_from_a_multicast_session_is_not_asked_and_the_others_finish(street, tmp_path):  # noqa: F811
    """drop(node) (a campaign saw it roll back): the street's session goes on for the others, the
    dropped lamp is never asked its status and nothing more is reported for it."""
    g = street
    losses = [0.0, 0.05, 0.1, 0.2, 0.5]
    nodes = {n: Node(n, losses[i], tmp_path) for i, n in enumerate(LAMPS)}
    radio = g.radio = LinkRadio(nodes)
    status, _ = await g.call(
        "POST", "/groups", {"name": "rue", "kind": "street", "members": [f"{n:08x}" for n in LAMPS]}
    )
    assert status == 201
    stop = asyncio.Event()
    up = asyncio.create_task(run_uplinks(g, radio, nodes, stop))

    async def provisioned() -> bool:
        return (await g.call("GET", "/groups/rue"))[1]["multicast"]["delivery"]["mode"] == "multicast"

    assert await wait_for(provisioned, 10, "the lamps holding the group key")
    clock = [time.monotonic()]
    g.srv.monotonic = lambda: clock[0]
    gone = LAMPS[4]
    fu: FuotaDelivery | None = None

    async def forwarder() -> None:
        while True:
            data = await g.fwd.inbox.get()
            if data[3] != semtech.PULL_RESP:
                continue
            g.fwd.tx_ack(struct.unpack(">H", data[1:3])[0])
            raw = base64.b64decode(json.loads(data[4:])["txpk"]["data"])
            for n in LAMPS:
                nodes[n].hear_group(raw)
            if fu is not None and fu.counts["multicast_frames"] == 5:
                fu.drop(gone)  # mid-way through the first pass

    async def sleep(s: float) -> None:
        clock[0] += s
        assert g.fwd.transport is not None
        g.fwd.transport.sendto(struct.pack(">BHB", 2, 1, semtech.PULL_DATA) + EUI)
        await asyncio.sleep(0.002)

    fwd = asyncio.create_task(forwarder())
    fu = FuotaDelivery(g.reg, g.store, g.d, g.api.multicast, FuotaSettings(status_timeout_s=30), sleep=sleep)
    image = make_image()
    reports: list[tuple[int, str]] = []
    await asyncio.wait_for(fu.deliver(image, LAMPS, lambda n, s, f, *why: reports.append((n, s))), 60)
    stop.set()
    fwd.cancel()
    await up
    last = {n: s for n, s in reports}
    assert last == {**dict.fromkeys(LAMPS[:4], "verifying"), gone: "receiving"}, last
    assert [s for n, s in reports if n == gone] == ["receiving"]  # the 0.0 at the start, then nothing
    asked = [n for n, t, b in radio.sent if t == m.COMMAND and b[1] == fz.OP_FRAG_STATUS]
    assert gone not in asked and set(asked) == set(LAMPS[:4]), asked
    for n in LAMPS[:4]:
        assert nodes[n].image() == image
    fu.drop(gone)  # after the session: nothing to do, no error
