"""A campaign end to end over LoRa (issue 12 items 4 and 5): the real service, the real FUOTA.

The gateway is gateway/service.py's `Gateway` from a TOML config (SQLite store, registry file,
API, Semtech UDP server) with no delivery given: campaigns go through the API's own
FuotaDelivery (gateway/fuota.py). A packet forwarder is played over a UDP socket: it carries
the lamps' sealed uplinks (PUSH_DATA) and hands every downlink it is sent (PULL_RESP) to the
lamps, which decode with the node's own code (firmware/group.py for the group key,
protocol/nodefrag.py for the fragments) as tests/test_gateway_fuota.py does. The release is
a real signed delta (`lumeau node release --base`).

The street "quai" has four lamps: 0x301, the canary, is in no multicast group (unicast
fragments, one per receive window); 0x302..0x304 also form the group "mc" whose key they hold
(one multicast session). Once a lamp holds the image it "reboots": a HELLO with the new
bundle id (installed), then uplinks (healthy). A bad release: the canary's HELLO after the
image reports its old bundle, as a rolled-back node does, and the campaign halts before the
others are sent anything (the forwarder's downlinks say so). A rest-stage lamp that rolls
back, or whose release crashes before its HELLO, is dropped from the stage's delivery and
the others go on. With every lamp in "mc", the canary gets the image by multicast on a
temporary group of its own (the figures printed: its uplinks during the canary stage, by
unicast against by the temporary group).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from campaign_helpers import OLD_VERSION, hello
from gateway_helpers import node_keys, push_data, registry, seal
from test_gateway_fuota import Node
from test_groups_multicast import EUI, Forwarder
from waiting import wait_for

from gateway.config import load_config
from gateway.fuota import FuotaDelivery
from gateway.registry import Group
from gateway.service import Gateway
from gateway.transports import semtech
from lumeau import bundle as bundles
from lumeau import release as releases
from protocol import fragments as fz
from protocol import frame, lora
from protocol import messages as m

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "campaign-lora-token-0123456789ab"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CANARY = 0x301
MC = [0x302, 0x303, 0x304]
LAMPS = [CANARY, *MC]
LOSS = {CANARY: 0.0, 0x302: 0.0, 0x303: 0.1, 0x304: 0.25}  # the canary completes before its coded frames end


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict:
    """A 'typical fix' as a signed delta: today's lighting bundle, then one module changed."""
    d = tmp_path_factory.mktemp("lora-rel")
    bundles.build("lighting", "esp32", d / "old")
    src = d / "src"
    for pkg in ("firmware", "protocol"):
        shutil.copytree(ROOT / pkg, src / pkg)
    up = src / "firmware" / "uplink.py"
    up.write_text(up.read_text() + "\n\ndef _fix_marker():\n    return 1\n")
    bundles.build("lighting", "esp32", d / "new", source_root=src)
    pub = releases.generate_key(d / "city.pem")
    old = bundles.load(d / "old")
    r = releases.build(bundles.load(d / "new"), releases.load_key(d / "city.pem"), [OLD_VERSION], old, "9.9.0")
    return {"image": r.image, "bundle": r.manifest["bundle"], "old": releases.bundle_id(old), "pub": pub.hex()}


class Lamp(Node):
    """A lamp's radio side: the fragment decoder (Node), its uplink counter, what it answers next."""

    def __init__(self, node_id: int, tmp: Path) -> None:
        super().__init__(node_id, LOSS[node_id], tmp)
        self.counter = 0
        self.answer: dict | None = None
        self.reboot = False  # its image is complete: it installs and reboots into the trial
        self.hellos: list[str] = []  # the bundles its HELLOs after the image reported
        self.trial_uplinks = 0  # uplinks since its trial boot
        # "" good; "rollback": its trial fails after a few uplinks (HELLO new, then HELLO old);
        # "silent": the release crashes at boot, its HELLO never sent (the old one's comes next)
        self.bad = ""

    def take(self, body: dict) -> None:  # type: ignore[override]
        super().take(body)
        if self.dec is not None and self.dec.missing == 0 and not self.reboot:
            # as firmware/fuota.py: the complete image goes to the updater at once and the
            # session ends (a status request then finds none; its SETUP again is ignored here)
            self.dec.close()
            self.dec = None
            self.reboot = True

    def command(self, body: dict) -> None:
        if body[1] == m.OP_JOIN_GROUP:
            res, value = self.groups.join(body[2])
        elif body[1] == fz.OP_FRAG_STATUS:
            res, value = self.status(body[2][0])
        else:
            res, value = m.RES_UNKNOWN_OP, 0
        self.answer = {0: body[0], 1: res, 2: value} if value else {0: body[0], 1: res}


class Air:
    """The packet forwarder over UDP, and the lamps around it.

    Time is compressed twice: the concentrator's clock (`tmst`, what the server counts the
    receive windows' duty cycle on) moves 20 s with each uplink, and the server's monotonic
    clock (multicast duty cycle, routes) moves with each wait of the FUOTA pacing, so both
    behave as over hours, in seconds."""

    def __init__(self, gw: Gateway, lamps: dict[int, Lamp], release: dict, good: bool) -> None:
        self.srv = next(t for t in gw.transports if isinstance(t, semtech.SemtechServer))
        self.offset = 0.0
        self.srv.monotonic = lambda: time.monotonic() + self.offset
        self.air = 1.0  # the concentrator's clock, s
        self.lamps = lamps
        self.new_bundle, self.old_bundle = release["bundle"], release["old"]
        self.good = good
        self.fwd: Forwarder | None = None
        self.downlinks: list[tuple[int, int]] = []  # (node id or group address, mtype) in order sent
        self.asked: list[tuple[int, int]] = []  # (node id, index in downlinks) of each frag_status
        self.marks: dict[tuple[int, str], int] = {}  # (lamp, bundle of a HELLO after the image) -> len(downlinks)
        self.commands: list[tuple[int, int, list]] = []  # (node id, op, args) of each COMMAND
        self.ups: dict[int, int] = {}  # uplinks sent per lamp
        self.t0: tuple[dict[int, int], float] = ({}, 0.0)  # (ups, offset) when the campaign started
        # (lamp, bundle of a HELLO after the image) -> (ups, offset, fragment frames heard per lamp)
        self.at: dict[tuple[int, str], tuple[dict[int, int], float, dict[int, int]]] = {}
        self.group_frames = 0
        self.token = 0
        self.fuota: FuotaDelivery | None = None

    async def open(self) -> None:
        _, self.fwd = await asyncio.get_running_loop().create_datagram_endpoint(
            Forwarder, remote_addr=("127.0.0.1", self.srv.port)
        )
        await self.fwd.pull()

    def pull(self) -> None:
        assert self.fwd is not None and self.fwd.transport is not None
        self.fwd.transport.sendto(struct.pack(">BHB", 2, 1, semtech.PULL_DATA) + EUI)

    async def sleep(self, s: float) -> None:  # FuotaDelivery's pacing
        self.offset += s
        self.pull()
        await asyncio.sleep(0.001)

    def uplink(self, raw: bytes) -> None:
        assert self.fwd is not None and self.fwd.transport is not None
        self.air += 20.0
        self.pull()
        self.token = (self.token + 1) & 0xFFFF
        tmst = int(self.air * 1e6) & 0xFFFFFFFF
        self.fwd.transport.sendto(push_data([raw], eui=EUI, token=self.token, tmst=tmst))

    async def radio(self) -> None:
        """Every PULL_RESP: acknowledged, then heard by the lamps it is for."""
        assert self.fwd is not None
        while True:
            data = await self.fwd.inbox.get()
            if data[3] != semtech.PULL_RESP:
                continue
            self.fwd.tx_ack(struct.unpack(">H", data[1:3])[0])
            raw = base64.b64decode(json.loads(data[4:])["txpk"]["data"])
            f = frame.parse(raw)
            lamp = self.lamps.get(f.node_id)
            if lamp is None:  # a group frame: every lamp holding that group's key hears it
                self.group_frames += 1
                self.downlinks.append((f.node_id, -1))
                for x in self.lamps.values():
                    x.hear_group(raw)
                continue
            hdr, body = frame.unseal(node_keys(f.node_id), raw)
            self.downlinks.append((f.node_id, hdr.mtype))
            if hdr.mtype == fz.FRAG:
                lamp.take(body)
            elif hdr.mtype == m.COMMAND:
                cmd = m.decode(m.COMMAND, body)
                self.commands.append((f.node_id, cmd[1], list(cmd.get(2, []))))
                if cmd[1] == fz.OP_FRAG_STATUS:
                    self.asked.append((f.node_id, len(self.downlinks) - 1))
                lamp.command(cmd)

    async def lamps_talk(self, stop: asyncio.Event) -> None:
        """Each lamp in turn sends its next uplink: an answer, its HELLO after a reboot, or a report."""
        while not stop.is_set():
            for lamp in self.lamps.values():
                lamp.counter += 1
                if lamp.answer is not None:
                    raw = seal(lamp.id, lamp.counter, m.CMD_ACK, lamp.answer)
                    lamp.answer = None
                elif lamp.reboot and not lamp.hellos:
                    # the trial boot: the new release says HELLO; one that crashes at boot says
                    # nothing, and after its boots the node is back on its previous bundle
                    b, v = (self.old_bundle, OLD_VERSION) if lamp.bad == "silent" else (self.new_bundle, "9.9.0")
                    lamp.hellos.append(b)
                    self.marks[(lamp.id, b)] = len(self.downlinks)
                    heard = {x.id: x.heard for x in self.lamps.values()}
                    self.at[(lamp.id, b)] = (dict(self.ups), self.offset, heard)
                    raw = hello(lamp.id, lamp.counter, b, v)
                elif (
                    lamp.hellos == [self.new_bundle]
                    and (not self.good or lamp.bad == "rollback")
                    and lamp.trial_uplinks >= 3
                ):
                    # a bad release fails its trial: the node is back on its previous bundle
                    lamp.hellos.append(self.old_bundle)
                    self.marks[(lamp.id, self.old_bundle)] = len(self.downlinks)
                    raw = hello(lamp.id, lamp.counter, self.old_bundle, OLD_VERSION)
                else:
                    lamp.trial_uplinks += bool(lamp.hellos)
                    raw = seal(lamp.id, lamp.counter)
                self.ups[lamp.id] = self.ups.get(lamp.id, 0) + 1
                self.uplink(raw)
                await asyncio.sleep(0.004)


def write_config(tmp_path: Path, pub: str) -> None:
    reg = registry(tmp_path / "nodes.toml", LAMPS)
    reg.put_group(Group(name="quai", kind="street", members=LAMPS), create=True)
    reg.save()
    (tmp_path / "gateway.toml").write_text(f"""
[gateway]
id = "lora-campaign-gw"
[api]
port = 0
token = "{TOKEN}"
[semtech]
enabled = true
host = "127.0.0.1"
port = 0
[upstream]
enabled = false
[fuota]
status_timeout_s = 20.0
[campaigns]
release_key = "{pub}"
window_s = 60.0
""")


async def get(http: aiohttp.ClientSession, path: str) -> dict:
    async with http.get(path) as r:
        assert r.status == 200, path
        return await r.json()


@asynccontextmanager
async def run_campaign(
    tmp_path: Path, release: dict, good: bool, mc: list[int] = MC, bad: dict[int, str] | None = None
) -> AsyncIterator[tuple[aiohttp.ClientSession, Air, int, int]]:
    """Start the service, the forwarder, the lamps; provision "mc" (of `mc`); start the campaign.
    `bad`: lamps whose release fails them (Lamp.bad). Yields (http, air, campaign id, downlinks
    sent before it) and stops everything after."""
    write_config(tmp_path, release["pub"])
    gw = Gateway(load_config(tmp_path / "gateway.toml"))
    await gw.start()
    lamps = {n: Lamp(n, tmp_path) for n in LAMPS}
    for n, how in (bad or {}).items():
        lamps[n].bad = how
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        assert gw.api is not None and gw.campaigns.delivery is gw.api.fuota  # the real FUOTA, nothing else
        air = Air(gw, lamps, release, good)
        await air.open()
        gw.api.fuota.sleep = air.sleep
        air.fuota = gw.api.fuota
        tasks.append(asyncio.create_task(air.radio()))
        for lamp in lamps.values():  # they boot on the old release
            lamp.counter += 1
            air.uplink(hello(lamp.id, lamp.counter, release["old"]))
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}", headers=AUTH) as http:
            await wait_for(lambda: all(gw.store.node_state(n) for n in LAMPS), 10, what="the HELLOs stored")
            members = [f"{n:08x}" for n in mc]
            async with http.post("/groups", json={"name": "mc", "kind": "street", "members": members}) as r:
                assert r.status == 201, await r.text()
            tasks.append(asyncio.create_task(air.lamps_talk(stop)))

            async def multicast_ready() -> bool:
                doc = await get(http, "/groups/mc")
                return doc["multicast"]["delivery"]["mode"] == "multicast"

            await wait_for(multicast_ready, 20, what="the lamps of mc holding the group key")
            before = len(air.downlinks)
            air.t0 = (dict(air.ups), air.offset)
            async with http.post("/campaigns?group=quai&canary=1&healthy_after_s=0.4", data=release["image"]) as r:
                doc = await r.json()
                assert r.status == 201, doc
            yield http, air, doc["id"], before
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gw.stop()


async def test_a_campaign_goes_over_lora_to_the_canary_then_the_street(tmp_path, release):
    async with run_campaign(tmp_path, release, good=True) as (http, air, cid, _):
        seen: dict[str, list[str]] = {}

        async def done() -> dict | None:
            doc = await get(http, f"/campaigns/{cid}")
            for k, p in doc["nodes"].items():
                if not seen.setdefault(k, []) or seen[k][-1] != p["state"]:
                    seen[k].append(p["state"])
            return doc if doc["state"] != "running" else None

        doc = await wait_for(done, 90, what="the campaign ended", interval=0.05)
        assert doc["state"] == "done" and doc["stage"] == "done", doc
        fu = air.fuota
        assert fu is not None
        assert [(g.name, ids) for g, ids in fu.plan(MC)[0]] == [("mc", MC)]
        # some of a group not on the group's address: its other lamps would hear a multicast and
        # install it; those lamps listen, so a temporary group of their own
        assert fu.plan([0x302, 0x303]) == ([], [0x302, 0x303], [])
        assert doc["counts"]["healthy"] == 4, doc
        order = ["pending", "receiving", "verifying", "installed", "healthy"]
        for k, states in seen.items():
            # polling may miss a short state, never reorder them; "verifying" is skipped when
            # the node's trial-boot HELLO comes before the gateway asks it for its status
            assert [s for s in order if s in states] == [s for s in states if s in order], (k, states)
            assert states[-1] == "healthy" and "installed" in states, (k, states)
        assert all("receiving" in states for states in seen.values()), seen
        for lamp in air.lamps.values():
            assert lamp.image() == release["image"], f"{lamp.id:x}"
            assert lamp.hellos == [release["bundle"]]
        frags = [n for n, t in air.downlinks if t == fz.FRAG]
        assert set(frags) == {CANARY}  # the canary alone by unicast
        assert air.group_frames > 0  # the rest of the street by one multicast session
        nodes = await get(http, f"/nodes/{CANARY:08x}")
        assert nodes["release"]["state"] == "current", nodes["release"]
        took = canary_stage(air, release)
        print("canary stage by unicast:", took)
        assert took["canary_uplinks"] > 1 + n_frag(release), took


async def test_a_release_the_canary_rolls_back_halts_before_the_rest(tmp_path, release):
    async with run_campaign(tmp_path, release, good=False) as (http, air, cid, before):

        async def ended() -> dict | None:
            doc = await get(http, f"/campaigns/{cid}")
            return doc if doc["state"] != "running" else None

        doc = await wait_for(ended, 60, what="the campaign ended", interval=0.05)
        assert doc["state"] == "halted", doc
        assert doc["reason"].startswith(f"canary {CANARY:08x} rolled back"), doc["reason"]
        assert doc["nodes"][f"{CANARY:08x}"]["state"] == "rolled_back"
        assert air.lamps[CANARY].image() == release["image"]  # it had the whole image, then rolled back
        for n in MC:
            assert doc["nodes"][f"{n:08x}"]["state"] == "pending"
        sent = air.downlinks[before:]
        assert not [d for d in sent if d[0] in MC and d[1] == fz.FRAG]
        assert not [d for d in sent if d[1] == -1]  # not a single multicast frame since the campaign began
        assert all(x.dec is None for n, x in air.lamps.items() if n in MC)
        assert air.lamps[CANARY].hellos == [release["bundle"], release["old"]]
        # the canary's delivery was cut short at its rollback: no fragment waits for its windows,
        # and it was not sent the image again (its status would have said: no session, old bundle)
        assert air.fuota is not None and CANARY not in air.fuota.downlinks.fillers
        n = -(-len(release["image"]) // fz.fragment_size(lora.max_payload(12)))
        assert len([d for d in sent if d == (CANARY, fz.FRAG)]) <= 1 + n + math.ceil(n * 0.25)


async def test_rest_nodes_that_roll_back_mid_delivery_are_dropped_and_the_others_go_on(tmp_path, release):
    """The rest stage: 0x302 alone by unicast, 0x303 and 0x304 by multicast (the group "mc" of
    those two). 0x302's trial fails (HELLO new, then old) while the stage's delivery still runs;
    0x303's release crashes at boot (no HELLO from it: the old one's after). Neither is sent the
    image again, nor asked its status once it is out; 0x304 takes the release; the campaign
    ends done, saying what failed."""
    solo, silent = 0x302, 0x303
    bad = {solo: "rollback", silent: "silent"}
    async with run_campaign(tmp_path, release, good=True, mc=[0x303, 0x304], bad=bad) as (http, air, cid, before):

        async def ended() -> dict | None:
            doc = await get(http, f"/campaigns/{cid}")
            return doc if doc["state"] != "running" else None

        doc = await wait_for(ended, 90, what="the campaign ended", interval=0.05)
        states = {k: p["state"] for k, p in doc["nodes"].items()}
        assert doc["state"] == "done" and doc["stage"] == "done", doc
        assert states == {"00000301": "healthy", "00000302": "rolled_back", "00000303": "failed", "00000304": "healthy"}
        lamps = air.lamps
        for n in (solo, silent, 0x304):
            assert lamps[n].image() == release["image"], f"{n:x}"
        assert lamps[solo].hellos == [release["bundle"], release["old"]]
        assert lamps[silent].hellos == [release["old"]]
        sent = air.downlinks[before:]
        assert air.group_frames > 0 and not [d for d in sent if d[0] in (0x303, 0x304) and d[1] == fz.FRAG]
        # 0x302 by unicast: loss-free, it completed after 1 + N frames and said HELLO from the
        # release; the coded tail (25 % of N) was cut there (the HELLO's own window may carry one)
        n = -(-len(release["image"]) // fz.fragment_size(lora.max_payload(12)))
        frags = [i for i, d in enumerate(air.downlinks) if d == (solo, fz.FRAG)]
        assert 1 + n <= len(frags) <= 1 + n + 2, (len(frags), n)
        installed_at = air.marks[(solo, release["bundle"])]
        assert len([i for i in frags if i >= installed_at]) <= 1
        rolled_at = air.marks[(solo, release["old"])]
        assert not [i for i in frags if i >= rolled_at] and not [
            i for x, i in air.asked if x == solo and i >= rolled_at
        ]
        # 0x303: asked once after its HELLO from the old bundle (no session: it held the image),
        # then never again, and the multicast went on for 0x304
        after = [i for x, i in air.asked if x == silent and i >= air.marks[(silent, release["old"])]]
        assert len(after) <= 1, after
        assert air.fuota is not None and solo not in air.fuota.downlinks.fillers
        assert doc["reason"] == "done with failures: 1 rolled back, 1 failed of 4", doc["reason"]
        assert "rolled back" in doc["nodes"]["00000303"]["reason"], doc["nodes"]["00000303"]


def n_frag(release: dict) -> int:
    """N: the image's uncoded fragments at SF12 (unicast)."""
    return -(-len(release["image"]) // fz.fragment_size(lora.max_payload(12)))


def canary_stage(air: Air, release: dict) -> dict:
    """What the canary stage took, from the campaign's start to the canary's trial HELLO: the
    canary's uplinks (on a lamp, one per report interval: 15 min) and the multicast's pacing."""
    ups, offset, _ = air.at[(CANARY, release["bundle"])]
    n = ups[CANARY] - air.t0[0].get(CANARY, 0)
    paced = offset - air.t0[1]
    return {"canary_uplinks": n, "multicast_paced_s": round(paced), "hours_at_15_min": round(n / 4 + paced / 3600, 1)}


async def test_canaries_that_listen_get_the_image_by_a_temporary_group(tmp_path, release):
    """Every lamp of the street is in the group "mc" and listens: the canary is sent a join_group
    for a temporary group of its own and gets the image by multicast on it; the others hear its
    frames and drop them (not their group: no session opens); it leaves the group after. The
    rest (not a whole group either) the same way, on another temporary group."""
    async with run_campaign(tmp_path, release, good=True, mc=LAMPS) as (http, air, cid, before):

        async def ended() -> dict | None:
            doc = await get(http, f"/campaigns/{cid}")
            return doc if doc["state"] != "running" else None

        doc = await wait_for(ended, 90, what="the campaign ended", interval=0.05)
        assert doc["state"] == "done" and doc["counts"]["healthy"] == 4 and doc["reason"] == "", doc
        sent = air.downlinks[before:]
        assert not [d for d in sent if d[1] == fz.FRAG]  # not one unicast fragment
        lamps = air.lamps
        for lamp in lamps.values():
            assert lamp.image() == release["image"] and lamp.hellos == [release["bundle"]], f"{lamp.id:x}"
        mc_addr = lamps[CANARY].groups.slots[0][0]
        joins = [(n, a[0]) for n, op, a in air.commands if op == m.OP_JOIN_GROUP and len(a) == 7 and a[0] != mc_addr]
        canary_addr = next(a for n, a in joins if n == CANARY)
        rest_addr = {a for n, a in joins if n != CANARY}
        assert len(rest_addr) == 1 and canary_addr not in rest_addr and sorted(n for n, _ in joins) == LAMPS, joins
        # the canary stage: group frames on the canary's address only, heard by the canary alone
        # (the others' firmware/group.py finds no such group: dropped before any session code)
        frames = [a for a, t in sent if t == -1]
        stage = frames[: frames.index(next(iter(rest_addr)))]
        assert stage and set(stage) == {canary_addr}, set(stage)
        _, _, heard = air.at[(CANARY, release["bundle"])]
        assert heard[CANARY] > 0 and all(heard[n] == 0 for n in MC), heard
        # every lamp leaves its temporary group: only "mc" is left on it
        await wait_for(
            lambda: all([s[0] for s in x.groups.slots] == [mc_addr] for x in lamps.values()), 30, what="the leaves"
        )
        leaves = sorted(
            n for n, op, a in air.commands if op == m.OP_JOIN_GROUP and a in ([canary_addr], list(rest_addr))
        )
        assert leaves == LAMPS, leaves
        took = canary_stage(air, release)
        print("canary stage by a temporary group:", took)
        # by unicast the canary needs an uplink per fragment (1 + N + coded, N = 90 here: over
        # 100); here a join, its answer, the status request and its answer, and whatever uplinks
        # the lamps made while the multicast ran (time is compressed: they overlap)
        assert took["canary_uplinks"] < 40, took


async def test_a_canary_on_a_temporary_group_that_rolls_back_halts_and_leaves_it(tmp_path, release):
    """The bad release with every lamp in "mc": the canary gets it on its temporary group, rolls
    back; the campaign halts, the canary is sent its leave, and the others never heard a frame
    meant for them (no session opened on any of them)."""
    async with run_campaign(tmp_path, release, good=False, mc=LAMPS) as (http, air, cid, before):

        async def ended() -> dict | None:
            doc = await get(http, f"/campaigns/{cid}")
            return doc if doc["state"] != "running" else None

        doc = await wait_for(ended, 60, what="the campaign ended", interval=0.05)
        assert doc["state"] == "halted" and doc["reason"].startswith(f"canary {CANARY:08x} rolled back"), doc
        lamps = air.lamps
        assert lamps[CANARY].image() == release["image"] and lamps[CANARY].hellos == [release["bundle"], release["old"]]
        mc_addr = lamps[MC[0]].groups.slots[0][0]
        await wait_for(lambda: [s[0] for s in lamps[CANARY].groups.slots] == [mc_addr], 30, what="the canary's leave")
        sent = air.downlinks[before:]
        assert not [d for d in sent if d[1] == fz.FRAG]
        assert mc_addr not in {a for a, t in sent if t == -1}  # nothing on the street's own address
        for n in MC:
            assert lamps[n].heard == 0 and lamps[n].dec is None and doc["nodes"][f"{n:08x}"]["state"] == "pending"
