"""`lumeau group list|add|remove|command|status` on a real registry file and a real gateway API."""

from __future__ import annotations

import asyncio
import json

from gateway_helpers import seal
from test_groups import LAMPS, TOKEN, VALVES, Gateway, make_registry

from gateway.registry import Registry
from lumeau.cli import main
from protocol import messages as m


def test_group_commands_on_the_registry_file(tmp_path, capsys):
    path = tmp_path / "nodes.toml"
    make_registry(path, lamps=[1, 2, 3], valves=[9]).save()
    reg = ["--registry", str(path)]
    assert main(["group", "add", "rivoli", "1", "2", "0x3", "--kind", "street", "--title", "Rue de Rivoli", *reg]) == 0
    assert "group rivoli (street, 3 nodes) added" in capsys.readouterr().out
    assert Registry.load(path).group("rivoli").members == [1, 2, 3]
    assert main(["group", "add", "rivoli", "1", "--kind", "street", *reg]) == 1
    assert "a group of that name exists" in capsys.readouterr().err
    assert main(["group", "add", "rivoli", "1", "--kind", "custom", "--replace", *reg]) == 0
    assert Registry.load(path).group("rivoli").kind == "custom"
    assert main(["group", "add", "parc", "0000000a", "--kind", "park", *reg]) == 1
    assert "node 0000000a is not in the registry" in capsys.readouterr().err
    assert main(["group", "list", "--json", *reg]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "groups": [{"name": "rivoli", "kind": "custom", "members": ["00000001"]}]
    }
    assert main(["group", "list", *reg]) == 0
    assert "rivoli" in capsys.readouterr().out
    assert main(["group", "remove", "rivoli", *reg]) == 0
    assert main(["group", "remove", "rivoli", *reg]) == 1
    assert "no group rivoli" in capsys.readouterr().err
    assert Registry.load(path).groups() == [] and 1 in Registry.load(path)
    assert main(["group", "list", "--registry", str(tmp_path / "nope.toml")]) == 1
    assert "no such registry file" in capsys.readouterr().err


async def test_group_commands_through_the_gateway_api(tmp_path, capsys, monkeypatch):
    make_registry(tmp_path / "nodes.toml", lamps=LAMPS[:4], valves=VALVES[:1]).save()
    g = Gateway(tmp_path)
    await g.start()
    monkeypatch.setenv("LUMEAU_API_TOKEN", TOKEN)
    url = ["--gateway", f"http://127.0.0.1:{g.api.port}"]

    async def lumeau(*argv: str) -> int:
        return await asyncio.to_thread(main, ["group", *argv, *url])

    try:
        members = [f"{n:x}" for n in LAMPS[:4] + VALVES[:1]]
        assert await lumeau("add", "rivoli", *members, "--kind", "street") == 0
        assert await lumeau("add", "rivoli", "100", "--kind", "street") == 1
        assert "HTTP 409" in capsys.readouterr().err
        assert await lumeau("list", "--json") == 0
        assert json.loads(capsys.readouterr().out)["groups"][0]["members"] == [f"{int(x, 16):08x}" for x in members]
        assert await lumeau("command", "rivoli", "set_level", "level=100", "duration=7200", "--json") == 0
        out = json.loads(capsys.readouterr().out)
        assert out["progress"] == {"applied": 0, "pending": 4, "failed": 0, "skipped": 1}
        assert await lumeau("command", "rivoli", "set_level", "101", "60") == 1
        assert "out of range" in capsys.readouterr().err
        assert await lumeau("command", "rivoli", "set_level", "1", "x=2") == 1
        assert "all as numbers or all as name=value" in capsys.readouterr().err
        n = LAMPS[0]
        cmd_id = next(x["command"] for x in out["members"] if x["node"] == f"{n:08x}")
        assert await g.uplink(seal(n, 1)) == "accepted"
        assert await g.uplink(seal(n, 2, m.CMD_ACK, {0: cmd_id, 1: m.RES_OK})) == "accepted"
        assert await lumeau("status", "rivoli", str(out["id"])) == 0
        text = capsys.readouterr().out
        assert "1 applied, 3 pending, 0 failed, 1 skipped of 5" in text
        assert (
            f"{n:08x}  applied" in text
            and "00000200  skipped  (set_level is for lighting nodes, not irrigation)" in text
        )
        assert await lumeau("status", "rivoli") == 0
        assert "1 command(s) for group rivoli" in capsys.readouterr().out
        assert await lumeau("status", "rivoli", "99") == 1
        assert "HTTP 404" in capsys.readouterr().err
        assert await lumeau("remove", "rivoli") == 0
        assert await lumeau("remove", "rivoli") == 1
        monkeypatch.delenv("LUMEAU_API_TOKEN")
        assert await lumeau("list") == 1
        assert "needs the API token" in capsys.readouterr().err
    finally:
        await g.stop()
