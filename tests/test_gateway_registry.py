"""gateway/registry.py: the node registry file (TOML, mode 0600, atomic), entries and their keys."""

from __future__ import annotations

import os
import stat

import pytest
from gateway_helpers import root_key

from gateway.registry import MAX_NODES, NodeEntry, Registry, RegistryError, parse_node_id
from protocol.keys import NodeKeys


def entry(n: int = 0x00A1B2C3, **kw) -> NodeEntry:
    args = dict(
        node_id=n,
        kind="lighting",
        root_key=root_key(n),
        name="Rue de Rivoli 12",
        site="Rue de Rivoli",
        lat=48.8606,
        lon=2.3376,
        firmware="0.1.0",
    )
    args.update(kw)
    return NodeEntry(**args)


def test_round_trip_with_mode_0600(tmp_path):
    path = tmp_path / "nodes.toml"
    reg = Registry(path)
    reg.upsert(entry())
    reg.upsert(entry(7, kind="irrigation", name="", site="", lat=None, lon=None, firmware=""))
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        reg.save()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != "nodes.toml"]  # no temporary file left behind
    back = Registry.load(path)
    assert len(back) == 2
    a = back.get(0x00A1B2C3)
    assert a == entry() and a.keys.mic_up.key == NodeKeys(0x00A1B2C3, root_key(0x00A1B2C3)).mic_up.key
    assert back.get(7).kind == "irrigation" and back.get(7).lat is None
    assert back.get(8) is None


def test_saving_replaces_the_file_atomically(tmp_path):
    path = tmp_path / "nodes.toml"
    reg = Registry(path)
    reg.upsert(entry(1))
    reg.save()
    inode = path.stat().st_ino
    reg.upsert(entry(2))
    reg.save()
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert len(Registry.load(path)) == 2


def test_keys_never_show(tmp_path):
    e = entry()
    for text in (repr(e), str(e), repr(e.keys), str(e.public())):
        assert e.root_key.hex() not in text and e.keys.mic_up.key.hex() not in text
    assert "root_key" not in e.public() and e.public()["id"] == "00a1b2c3"


def test_a_registry_others_can_read_is_refused(tmp_path):
    path = tmp_path / "nodes.toml"
    reg = Registry(path)
    reg.upsert(entry())
    reg.save()
    path.chmod(0o644)
    with pytest.raises(RegistryError, match=r"nodes.toml: .*mode 0644.*chmod 600"):
        Registry.load(path)


def test_missing_file_is_an_empty_registry_unless_required(tmp_path):
    assert len(Registry.load(tmp_path / "none.toml")) == 0
    with pytest.raises(RegistryError, match="not found"):
        Registry.load(tmp_path / "none.toml", missing_ok=False)


@pytest.mark.parametrize(
    "text, why",
    [
        ("nodes = [", "not valid TOML"),
        ("version = 2", "version: 2 is not supported"),
        ("other = 1", "unknown top-level key 'other'"),
        ('[nodes.zz]\nkind = "lighting"\nroot_key = "00"', r"nodes.zz: node id 'zz' is not 1 to 8 hex digits"),
        ('[nodes.1]\nroot_key = "000102030405060708090a0b0c0d0e0f"', r"nodes.1: kind: required"),
        (
            '[nodes.1]\nkind = "lamp"\nroot_key = "000102030405060708090a0b0c0d0e0f"',
            r"nodes.1: kind: 'lamp' is not one",
        ),
        ('[nodes.1]\nkind = "lighting"\nroot_key = "0001"', r"nodes.1: root_key: must be 32 hex digits"),
        (
            '[nodes.1]\nkind = "lighting"\nroot_key = "000102030405060708090a0b0c0d0e0f"\nlat = 91.0\nlon = 0.0',
            r"nodes.1: lat: must be a number of degrees",
        ),
        (
            '[nodes.1]\nkind = "lighting"\nroot_key = "000102030405060708090a0b0c0d0e0f"\nlat = 1.0',
            r"nodes.1: lat and lon go together",
        ),
        (
            '[nodes.1]\nkind = "lighting"\nroot_key = "000102030405060708090a0b0c0d0e0f"\ncolour = 1',
            r"nodes.1: unknown key 'colour'",
        ),
        (
            '[nodes.1]\nkind = "lighting"\nroot_key = "000102030405060708090a0b0c0d0e0f"\n'
            '[nodes.0x01]\nkind = "lighting"\nroot_key = "000102030405060708090a0b0c0d0e0f"',
            "listed twice",
        ),
    ],
)
def test_errors_name_file_node_key_and_why(tmp_path, text, why):
    path = tmp_path / "nodes.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(RegistryError, match=why) as e:
        Registry.load(path)
    assert str(e.value).startswith(str(path))
    assert "000102030405060708090a0b0c0d0e0f" not in str(e.value)  # not even a bad key is echoed


def test_node_ids():
    assert parse_node_id("00a1b2c3") == parse_node_id("0x00A1B2C3") == parse_node_id(0xA1B2C3) == 0xA1B2C3
    for bad in ("", "123456789", "-1", True, 2**32, 1.0):
        with pytest.raises(ValueError):
            parse_node_id(bad)


def test_upsert_returns_what_it_replaced_and_bounds_the_size(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "n.toml")
    assert reg.upsert(entry(1)) is None
    assert reg.upsert(entry(1, name="moved")).name == "Rue de Rivoli 12"
    assert reg.remove(1).name == "moved" and 1 not in reg
    monkeypatch.setattr("gateway.registry.MAX_NODES", 2)
    reg.upsert(entry(1))
    reg.upsert(entry(2))
    with pytest.raises(RegistryError, match="at most"):
        reg.upsert(entry(3))
    assert MAX_NODES == 100_000


def test_replace_all_keeps_the_bound_lookup_and_names_rekeyed_nodes(tmp_path):
    reg = Registry(tmp_path / "n.toml")
    reg.upsert(entry(1))
    reg.upsert(entry(2))
    get = reg.get  # what the pipeline holds
    fresh = Registry(tmp_path / "n.toml")
    fresh.upsert(entry(1))
    fresh.upsert(entry(2, root_key=bytes(16)))
    fresh.upsert(entry(3))
    assert reg.replace_all(fresh) == [2]
    assert get(3) is not None and get(2).root_key == bytes(16)
