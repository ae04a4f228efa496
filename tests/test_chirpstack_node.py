"""End to end through LoRaWAN: the node's firmware on its modem radio, ChirpStack, the gateway.

The node runs the real runtime (firmware/runtime.py) with firmware/radio_lorawan.py, talking
AT commands to the simulated RAK3172 (tests/micropython/at_modem.py); behind the modem, a
stand-in for ChirpStack publishes each uplink as ChirpStack's documented `up` event JSON to
Debian's mosquitto and queues what the gateway publishes on the device's `command/down`
topic for the device's next RX1 (class A). The gateway is the real service with
`[chirpstack]`. Real time (a few seconds): the gateway and the broker run on the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import sys
import time

import aiohttp
import aiomqtt
import pytest
from conftest import ROOT
from firmware_helpers import NODE_ID, ROOT_KEY, ToyLamp, make_cfg
from mqtt_broker import Broker
from test_chirpstack import APP, TOKEN, UP, write_config
from waiting import wait_for

from firmware.radio_lorawan import LorawanRadio, setup_commands
from firmware.runtime import Node
from gateway.config import load_config
from gateway.registry import NodeEntry, Registry
from gateway.service import Gateway
from gateway.transports.chirpstack import ChirpstackTransport
from protocol import messages as m
from simulator.hal_sim import SimHAL

sys.path.insert(0, str(ROOT / "tests" / "micropython"))
from at_modem import AtModem

DEV_EUI = "70b3d57ed00000a1"


class WallClock:
    """SimHAL's clock on real time: the gateway and the broker cannot run on a virtual one."""

    def __init__(self) -> None:
        self.unix0 = int(time.time())
        self._t0 = time.monotonic() - (time.time() - self.unix0)

    def ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    async def sleep_ms(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)


class ChirpStackStandIn:
    """The network server as the modem's network: uplinks out as events, downlinks queued."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.queue: list[bytes] = []
        self.fcnt = 0
        self.published: list[dict] = []
        self.downlinks: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self.ready = asyncio.Event()

    def uplink(self, fport: int, payload: bytes) -> None:  # called by the modem, synchronously
        self.fcnt += 1
        ev = copy.deepcopy(UP)
        ev["deviceInfo"]["devEui"] = DEV_EUI
        ev.update(fPort=fport, fCnt=self.fcnt, data=base64.b64encode(payload).decode())
        self.published.append(ev)
        t = asyncio.get_running_loop().create_task(self._publish(ev))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _publish(self, ev: dict) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as c:
            await c.publish(f"application/{APP}/device/{DEV_EUI}/event/up", json.dumps(ev), qos=1)

    async def listen(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as c:
            await c.subscribe(f"application/{APP}/device/+/command/down", qos=1)
            self.ready.set()
            async for msg in c.messages:
                doc = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                self.downlinks.append(doc)
                # as ChirpStack: FPort and FRMPayload; the modem gives the node both, never the node id
                self.queue.append(bytes((doc["fPort"],)) + NODE_ID.to_bytes(4, "big") + base64.b64decode(doc["data"]))


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


async def test_a_node_on_a_lorawan_modem_reports_through_chirpstack_and_obeys_a_command(tmp_path, broker):
    reg = Registry(tmp_path / "nodes.toml")
    reg.upsert(NodeEntry(node_id=NODE_ID, kind="lighting", root_key=ROOT_KEY, dev_eui=DEV_EUI))
    reg.save()
    gw = Gateway(load_config(write_config(tmp_path, broker.port)))
    await gw.start()
    cs = ChirpStackStandIn(broker.port)
    listener = asyncio.create_task(cs.listen())
    node_task = None
    try:
        t = next(t for t in gw.transports if isinstance(t, ChirpstackTransport))
        await wait_for(lambda: t.connected, 10, "gateway subscribed")
        await asyncio.wait_for(cs.ready.wait(), 10)
        # an operator's command, queued before the node is heard: it goes in the first RX1
        assert gw.api is not None
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{gw.api.port}") as http,
            http.post(
                f"/nodes/{NODE_ID:08x}/commands",
                json={"op": "set_level", "args": [55, 60]},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp,
        ):
            cmd = await resp.json()
            assert resp.status == 201, cmd
        hal = SimHAL(WallClock())
        modem = AtModem(hal, cs)
        radio = LorawanRadio(hal, modem, NODE_ID, setup_commands({"region": "EU868", "dev_eui": DEV_EUI}))
        node = Node(make_cfg(), hal, radio, ToyLamp, hello_jitter_ms=0)
        node_task = asyncio.create_task(node.run())
        assert gw.store is not None
        await wait_for(lambda: gw.store.downlink(cmd["id"]).state == "acked", 30, "the command acked by the node")
        assert node.app.level == 55  # the lamp obeyed, after verifying the COMMAND with its own key
        kinds = [r.mtype for _, r in gw.store.next_batch(100)]
        assert kinds[:2] == [m.HELLO, m.CMD_ACK], kinds
        # the wire between them was ChirpStack's: documented event JSON up, documented command down
        assert [e["fCnt"] for e in cs.published[:2]] == [1, 2]
        assert cs.downlinks[0]["devEui"] == DEV_EUI and cs.downlinks[0]["fPort"] == 0x20 | m.COMMAND
        assert modem.settings["DEVEUI"] == DEV_EUI.upper() and radio.joins == 1
        assert t.counts["uplinks"] >= 2 and t.counts["downlinks"] >= 1
    finally:
        if node_task is not None:
            node_task.cancel()
            await asyncio.gather(node_task, return_exceptions=True)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await gw.stop()
