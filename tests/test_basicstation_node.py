"""A node configured for LoRa Basics Station gateways, end to end (issue 15, the node's half).

The firmware (CPython here; tests/micropython/mp_basicstation.py runs it under real
MicroPython) on a LoRa modem stand-in (tests/micropython/air_modem.py) with
config radio.basics_station, and the real gateway's Basics Station transport over TLS
with a real aiohttp WebSocket client acting as the station: the node's PHYPayloads,
reported as propdf exactly as the modem sent them, are stored as records; a command
queued through the API goes out as a dnmsg whose pdu, put on the air unchanged, the node
executes and acknowledges, and its CMD_ACK closes the command at the gateway.
"""

from __future__ import annotations

import json
import sys

import aiohttp
from conftest import ROOT
from gateway_helpers import root_key
from test_transport_basicstation import (
    API_TOKEN,
    AUTH,
    EUI,
    XTIME,
    client_tls,
    propdf,
    receive_json,
    started,
)
from waiting import wait_for

from firmware import config
from firmware.lighting import Lighting
from firmware.radio_lora import LoRaRadio
from firmware.runtime import Node
from protocol import lora, nodelora, proprietary
from simulator.hal_sim import SimHAL, StepClock

sys.path.insert(0, str(ROOT / "tests" / "micropython"))
from air_modem import AirModem

S = 1000


def test_the_node_rule_is_the_gateways():
    for raw in (b"\x21\x00\x00\x00\x07", bytes(range(40))):
        phy = nodelora.wrapper(raw)
        assert phy == proprietary.wrap(raw) and phy[0] == proprietary.MHDR == 0xE0
        assert nodelora.wrapper(phy, True) == proprietary.unwrap(phy) == raw
        assert nodelora.wrapper(raw, True) == raw  # no MHDR: the frame as it is
    assert nodelora.wrapper(b"", True) == b""


def boot(clock: StepClock) -> tuple[SimHAL, AirModem, Node]:
    cfg = config.load(
        json.dumps(
            {
                "node_id": 7,
                "kind": "lighting",
                "root_key": root_key(7).hex(),
                "key_fresh": True,
                "location": {"lat": 48.8566, "lon": 2.3522},
                "radio": {"type": "lora", "freq_hz": 868300000, "sf": 7, "basics_station": True},
                "lighting": {"full_ma": 500},
            }
        ).encode()
    )
    hal = SimHAL(clock, storage={})
    modem = AirModem(hal)
    r = cfg["radio"]
    radio = LoRaRadio(modem, r["freq_hz"], r["sf"], wrapper=r["basics_station"])
    return hal, modem, Node(cfg, hal, radio, Lighting, hello_jitter_ms=0)


async def test_a_configured_node_through_a_basics_station_gateway(tmp_path):
    import asyncio

    gw, srv = await started(tmp_path)
    clock = StepClock()
    hal, modem, node = boot(clock)
    task = asyncio.create_task(node.run())
    api = f"http://127.0.0.1:{gw.api.port}"
    api_auth = {"Authorization": f"Bearer {API_TOKEN}"}
    forwarded = 0

    async def forward(ws: aiohttp.ClientWebSocketResponse) -> None:
        # what the node put on the air since the last call, reported as a station does (DR5 = SF7)
        nonlocal forwarded
        for i, (_, _, phy) in enumerate(modem.sent[forwarded:]):
            assert phy[0] == 0xE0, phy.hex()
            msg = propdf(b"", xtime=XTIME + (forwarded + i) * 1_000_000)
            msg["FRMPayload"] = phy.hex().upper()  # the PHYPayload as the modem sent it
            await ws.send_json(msg)
        forwarded = len(modem.sent)

    try:
        async with aiohttp.ClientSession() as http:
            uri = f"wss://127.0.0.1:{srv.port}/router-{EUI}"
            async with http.ws_connect(uri, ssl=client_tls(tmp_path), headers=AUTH) as ws:
                await ws.send_json({"msgtype": "version", "station": "2.0.6", "model": "test", "protocol": 2})
                assert (await receive_json(ws))["msgtype"] == "router_config"
                for _ in range(10):
                    if modem.sent:
                        break
                    await clock.run_for(S)
                async with http.post(
                    f"{api}/nodes/00000007/commands", json={"op": "set_level", "args": [30, 600]}, headers=api_auth
                ) as r:
                    assert r.status == 201, await r.text()
                    cmd = await r.json()
                await forward(ws)  # the HELLO
                await wait_for(lambda: gw.store.count() == 1, 10, "the node's HELLO stored as a record")
                dn = await receive_json(ws)
                assert dn["msgtype"] == "dnmsg" and bytes.fromhex(dn["pdu"])[0] == 0xE0
                await ws.send_json({"msgtype": "dntxed", "diid": dn["diid"], "DevEui": dn["DevEui"], "rctx": 3})
                modem.rx1.append(bytes.fromhex(dn["pdu"]))  # on the air as the station sends it
                for _ in range(1200):
                    if node.rx:
                        break
                    await clock.run_for(S)
                assert node.rx == 1 and node.rx_rejected == 0 and hal.pwm.get("lamp") is not None
                for _ in range(120):  # its CMD_ACK goes out after the duty cycle's wait
                    if len(modem.sent) >= 3:
                        break
                    await clock.run_for(S)
                await forward(ws)

                async def state() -> str:
                    async with http.get(f"{api}/commands/{cmd['id']}", headers=api_auth) as r:
                        return str((await r.json())["state"])

                for _ in range(250):
                    if await state() == "acked":
                        break
                    await asyncio.sleep(0.02)
                assert await state() == "acked"
                assert gw.store.count() == len(modem.sent) >= 3
                assert srv.counts["foreign_propdf"] == 0 and srv.counts["internal_error"] == 0
                assert node.radio.max_frame == lora.max_payload(7) - 1
    finally:
        task.cancel()
        hal.power_off()
        await gw.stop()
