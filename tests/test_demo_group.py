"""The demo's group command (simulator/demo_group.py) against a real gateway API, and its report."""

from __future__ import annotations

import asyncio

from gateway_helpers import reception, seal
from test_groups import TOKEN, Gateway, make_registry

from protocol import messages as m
from simulator.demo_group import GROUP_AT_H, GROUP_COMMAND_AT_H, GroupProbe
from simulator.report import _group_section
from simulator.services import Http

LAMPS = list(range(0x100, 0x105))


async def test_the_probe_makes_the_group_sends_the_command_and_times_it(tmp_path):
    make_registry(tmp_path / "nodes.toml", lamps=LAMPS, valves=[]).save()
    g = Gateway(tmp_path)
    await g.start()
    try:
        api = Http(f"http://127.0.0.1:{g.api.port}", TOKEN)
        probe = GroupProbe("street-quai", "Quai du Rhone", LAMPS, start_unix=0.0)
        assert probe.section()["delivery"] is None and "not sent" in probe.summary()

        async def poll(t: float) -> None:
            await asyncio.to_thread(probe.poll, api, t)

        await poll(60)
        assert (await g.call("GET", "/groups/street-quai"))[0] == 404  # not yet
        await poll(GROUP_AT_H * 3600)
        status, doc = await g.call("GET", "/groups/street-quai")
        assert status == 200 and len(doc["members"]) == 5
        t0 = GROUP_COMMAND_AT_H * 3600
        await poll(t0)
        assert probe.delivery is not None and probe.delivery["mode"] == "unicast"
        ids = {}
        for i, n in enumerate(LAMPS):  # each lamp's window, then its answer
            await g.uplink(seal(n, 1))
            node, mtype, body = g.radio.sent[-1]
            assert node == n and body[2] == [100, 7200]
            ids[n] = body[0]
            ack = seal(n, 2, m.CMD_ACK, {0: body[0], 1: m.RES_OK, 2: 100})
            # heard at the simulated time the probe counts in (the radio stamps receptions)
            at = t0 + 60 * (i + 1)
            await g.p.ingest(reception(ack, transport="udp", path=g.radio, gateway_id=g.radio.name, rx_time=at))
            await g.d.idle()
            await poll(at + 30)
        s = probe.section()
        assert s["applied_95_s"] == s["applied_100_s"] == 300.0  # 95 % of 5 is all 5
        assert s["progress"]["applied"] == 5
        assert "by unicast" in probe.summary() and "100 % after 5.0 min" in probe.summary()
        html = "".join(_group_section(s, None))
        assert "Group command" in html and "Quai du Rhone (5 lamps)" in html and "5.0 min / 5.0 min" in html
    finally:
        await g.stop()
