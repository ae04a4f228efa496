"""`lumeau node show|command` against a real gateway API (registry file, store, downlinks)."""

from __future__ import annotations

import asyncio
import json

from gateway_helpers import seal
from test_groups import LAMPS, TOKEN, VALVES, Gateway, make_registry
from waiting import wait_for

from lumeau.cli import main
from protocol import messages as m


async def start(tmp_path, monkeypatch) -> tuple[Gateway, list[str]]:
    make_registry(tmp_path / "nodes.toml", lamps=LAMPS[:2], valves=VALVES[:1]).save()
    g = Gateway(tmp_path)
    await g.start()
    monkeypatch.setenv("LUMEAU_API_TOKEN", TOKEN)
    return g, ["--gateway", f"http://127.0.0.1:{g.api.port}"]


async def lumeau(url: list[str], *argv: str) -> int:
    return await asyncio.to_thread(main, ["node", *argv, *url])


async def test_show_a_heard_node_and_an_unknown_one(tmp_path, capsys, monkeypatch):
    g, url = await start(tmp_path, monkeypatch)
    try:
        n = LAMPS[0]
        assert await lumeau(url, "show", f"{n:x}") == 0
        assert "last heard   never" in capsys.readouterr().out
        assert await g.uplink(seal(n, 1)) == "accepted"
        assert await lumeau(url, "show", f"{n:x}") == 0
        text = capsys.readouterr().out
        assert f"node {n:08x} (lighting)" in text and "s ago" in text and "open alarms  0" in text, text
        assert await lumeau(url, "show", f"{n:x}", "--json") == 0
        assert json.loads(capsys.readouterr().out)["id"] == f"{n:08x}"
        assert await lumeau(url, "show", "abcd") == 1
        assert "node 0000abcd is not registered" in capsys.readouterr().err
    finally:
        await g.stop()


async def test_command_waits_for_the_ack_and_refusals_say_why(tmp_path, capsys, monkeypatch):
    g, url = await start(tmp_path, monkeypatch)
    try:
        n = LAMPS[0]
        job = asyncio.create_task(lumeau(url, "command", f"{n:x}", "set_level", "level=50", "duration=600"))

        async def queued():
            status, doc = await g.call("GET", f"/nodes/{n:08x}/commands")
            return status == 200 and doc["commands"] and doc["commands"][0]

        cmd = await wait_for(queued, 10, "the command queued")
        assert await g.uplink(seal(n, 1)) == "accepted"  # the node's uplink opens its receive window
        assert await g.uplink(seal(n, 2, m.CMD_ACK, {0: cmd["command_id"], 1: m.RES_OK})) == "accepted"
        assert await asyncio.wait_for(job, 20) == 0
        assert f"to node {n:08x}: set_level 50 600 -- acked, result ok" in capsys.readouterr().out

        # Refused at the API, at once: out of range, the wrong kind, mixed argument styles.
        assert await lumeau(url, "command", f"{n:x}", "set_level", "101", "60") == 1
        assert "out of range" in capsys.readouterr().err
        assert await lumeau(url, "command", f"{VALVES[0]:x}", "set_level", "50", "60") == 1
        assert "HTTP 4" in capsys.readouterr().err
        assert await lumeau(url, "command", f"{n:x}", "set_level", "1", "x=2") == 1
        assert "all as numbers or all as name=value" in capsys.readouterr().err

        # Not acknowledged within --wait: exit 1, and the command stays queued.
        assert await lumeau(url, "command", f"{LAMPS[1]:x}", "set_level", "20", "60", "--wait", "0.6") == 1
        io = capsys.readouterr()
        assert "-- queued" in io.out and "not acknowledged within 0.6 s" in io.err
        assert await lumeau(url, "command", f"{LAMPS[1]:x}", "set_level", "30", "60", "--wait", "0", "--json") == 0
        assert json.loads(capsys.readouterr().out)["state"] == "queued"
    finally:
        await g.stop()


async def test_without_a_token_the_cli_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    g, url = await start(tmp_path, monkeypatch)
    monkeypatch.delenv("LUMEAU_API_TOKEN")
    try:
        assert await lumeau(url, "show", f"{LAMPS[0]:x}") == 1
        assert "--gateway needs the API token" in capsys.readouterr().err
        assert await lumeau(url, "show", f"{LAMPS[0]:x}", "--token", "wrong") == 1
        assert "401" in capsys.readouterr().err
    finally:
        await g.stop()
