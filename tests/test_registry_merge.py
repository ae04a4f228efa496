"""Issue 17, no silent loss: the registry file has several writers, and none erases another's node.

The real gateway API on 127.0.0.1 and `lumeau node provision | remove` on the same real file,
as a technician provisioning offline while the gateway runs does.
"""

from __future__ import annotations

import json
import threading

import aiohttp
import pytest
from gateway_helpers import registry, root_key

from gateway.api import Api
from gateway.downlinks import Downlinks
from gateway.pipeline import Pipeline
from gateway.registry import NodeEntry, Registry, RegistryError
from gateway.store import Store
from lumeau import provision as pv

TOKEN = "a-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def gw(tmp_path):
    s = await Store.open(tmp_path / "gw.db")
    reg = registry(tmp_path / "nodes.toml", [1, 2])
    reg.save()
    d = Downlinks(s, reg)
    await d.start()
    p = Pipeline(reg, s, downlinks=d)
    api = Api(registry=reg, store=s, pipeline=p, downlinks=d, token=TOKEN, port=0)
    await api.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}", headers=AUTH) as http:
        yield http, reg
    await api.stop()
    await d.close()
    await s.close()


async def test_an_api_write_keeps_a_node_provisioned_offline_meanwhile(gw, tmp_path):
    http, reg = gw
    path = tmp_path / "nodes.toml"
    offline = pv.provision("lighting", tmp_path / "offline.json", registry=path, name="offline")
    assert offline.node_id not in reg  # the running gateway has not read the file yet

    body = {"kind": "irrigation", "root_key": root_key(3).hex(), "name": "by the API"}
    async with http.put("/nodes/00000003", json=body) as r:
        assert r.status == 201, await r.text()
    on_disk = Registry.load(path)
    assert {1, 2, 3, offline.node_id} <= {e.node_id for e in on_disk}
    assert on_disk.get(offline.node_id).root_key == offline.root_key  # its key is not lost
    # and the gateway knows it from then on
    async with http.get(f"/nodes/{offline.node_id:08x}") as r:
        assert r.status == 200 and (await r.json())["name"] == "offline"

    # a DELETE through the API merges too
    later = pv.provision("lighting", tmp_path / "later.json", registry=path)
    async with http.delete("/nodes/00000002") as r:
        assert r.status == 204
    ids = {e.node_id for e in Registry.load(path)}
    assert later.node_id in ids and offline.node_id in ids and 2 not in ids and 2 not in reg


async def test_a_node_removed_offline_stays_removed_and_a_key_rotated_offline_is_taken(gw, tmp_path):
    http, reg = gw
    path = tmp_path / "nodes.toml"
    on_disk = Registry.load(path)
    on_disk.remove(1)
    on_disk.upsert(NodeEntry(2, "lighting", bytes(range(16))))
    on_disk.save()
    async with http.put("/nodes/00000002", json={"name": "renamed"}) as r:
        assert r.status == 200
    after = Registry.load(path)
    assert 1 not in after and after.get(2).root_key == bytes(range(16)) and after.get(2).name == "renamed"
    assert reg.get(2).root_key == bytes(range(16))


async def test_a_bad_file_on_disk_refuses_the_write_and_loses_nothing(gw, tmp_path):
    http, reg = gw
    path = tmp_path / "nodes.toml"
    path.write_text("version = 1\n[nodes.zz]\n")
    path.chmod(0o600)
    async with http.put("/nodes/00000003", json={"kind": "lighting", "root_key": root_key(3).hex()}) as r:
        assert r.status == 400 and "nodes.zz" in (await r.json())["error"]
    assert path.read_text() == "version = 1\n[nodes.zz]\n" and len(reg) == 2


def test_writers_take_turns_under_the_lock(tmp_path):
    path = tmp_path / "nodes.toml"
    registry(path, [1]).save()
    a, b = Registry.load(path), Registry.load(path)
    inside, release = threading.Event(), threading.Event()

    def slow(reg: Registry) -> None:
        inside.set()
        assert release.wait(5)
        reg.upsert(NodeEntry(10, "lighting", root_key(10)))

    t = threading.Thread(target=a.change, args=(slow,))
    t.start()
    assert inside.wait(5)
    done = threading.Event()

    def other() -> None:
        b.change(lambda reg: reg.upsert(NodeEntry(11, "lighting", root_key(11))))
        done.set()

    t2 = threading.Thread(target=other)
    t2.start()
    assert not done.wait(0.2)  # b waits for a's lock
    release.set()
    t.join(5)
    t2.join(5)
    assert {e.node_id for e in Registry.load(path)} == {1, 10, 11}
    assert {e.node_id for e in b} == {1, 10, 11}


def test_a_stuck_lock_is_a_clear_error(tmp_path, monkeypatch):
    import gateway.registry as registry_mod

    monkeypatch.setattr(registry_mod, "LOCK_WAIT_S", 0.1)
    path = tmp_path / "nodes.toml"
    registry(path, [1]).save()
    holder = Registry.load(path)
    with holder.locked(), pytest.raises(RegistryError, match="another writer holds"):
        Registry.load(path).change(lambda reg: None)


async def test_provision_list_and_remove_through_the_gateway_api(gw, tmp_path, capsys):
    import asyncio

    from lumeau.cli import main as lumeau_main

    http, reg = gw
    url = str(http._base_url)
    again = tmp_path / "again.json"
    with pytest.raises(pv.ProvisionError, match="already registered.*--force"):
        await asyncio.to_thread(pv.provision, "lighting", again, node_id=1, gateway=url, token=TOKEN)
    assert not again.exists() and reg.get(1).root_key == root_key(1)
    async with http.put("/nodes/00000001", json={"name": "Rue A"}) as r:
        assert r.status == 200
    p = await asyncio.to_thread(pv.provision, "lighting", tmp_path / "b.json", gateway=url, token=TOKEN, name="Rue A")
    assert p.warnings and "00000001" in p.warnings[0] and p.node_id in reg

    args = ["node", "list", "--gateway", url, "--token", TOKEN, "--json"]
    assert await asyncio.to_thread(lumeau_main, args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {n["id"] for n in listed["nodes"]} == {"00000001", "00000002", f"{p.node_id:08x}"}
    assert root_key(1).hex() not in json.dumps(listed) and all("root_key" not in n for n in listed["nodes"])
    args = ["node", "remove", f"{p.node_id:08x}", "--gateway", url, "--token", TOKEN]
    assert await asyncio.to_thread(lumeau_main, args) == 0
    assert p.node_id not in reg and p.node_id not in Registry.load(tmp_path / "nodes.toml")
    assert await asyncio.to_thread(lumeau_main, args) == 1
    assert "not registered" in capsys.readouterr().err


# -- messages that say what to do (issue 17, deliver 5) ----------------------------------------------


def test_provision_help_gives_the_api_port_the_gateway_listens_on(capsys):
    from gateway.config import ApiSection
    from lumeau.cli import main as lumeau_main

    with pytest.raises(SystemExit):
        lumeau_main(["node", "provision", "--help"])
    text = capsys.readouterr().out
    assert f":{ApiSection().port}" in text and ":8080" not in text


def test_a_gateway_url_without_scheme_says_what_to_write(tmp_path):
    with pytest.raises(pv.ProvisionError, match=r"write http://127\.0\.0\.1:8760"):
        pv.provision("lighting", tmp_path / "n.json", gateway="127.0.0.1:8760", token=TOKEN)
    assert not (tmp_path / "n.json").exists()


async def test_a_refused_token_says_where_the_token_lives(gw, tmp_path):
    import asyncio

    http, _ = gw
    url = str(http._base_url)
    with pytest.raises(pv.ProvisionError) as e:
        await asyncio.to_thread(
            pv.provision, "lighting", tmp_path / "n.json", gateway=url, token="wrong-token-0123456789"
        )
    msg = str(e.value)
    assert "401" in msg and "[api] token" in msg and "LUMEAU_API_TOKEN" in msg and "wrong-token" not in msg
    with pytest.raises(pv.ProvisionError, match="is this the gateway's API URL"):
        await asyncio.to_thread(pv.provision, "lighting", tmp_path / "n.json", gateway=url + "/nope", token=TOKEN)
