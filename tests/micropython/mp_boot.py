# Boot-only code leaves the heap (firmware.unload, issue 11): main.py loads
# firmware/config.py, builds the node, then drops the module. From .mpy.
import asyncio
import sys

import mptest

MPY = True


async def test_unload_gives_the_config_module_back():
    import firmware

    await asyncio.sleep_ms(0)
    before = mptest.mem()
    from firmware import config

    assert config.key_id(bytes(16))
    del config
    await asyncio.sleep_ms(0)
    loaded = mptest.mem()
    firmware.unload("config")
    await asyncio.sleep_ms(0)
    after = mptest.mem()
    assert "firmware.config" not in sys.modules
    assert not hasattr(firmware, "config")
    print("config.mpy: %d B loaded, %d B after unload (the names it interned stay)" % (loaded - before, after - before))
    assert loaded - after > 2000, (before, loaded, after)
    # a later import loads it again (the runtime does, for clear_fresh)
    from firmware import config

    assert config.cleared(b'{"key_fresh": true}') == b'{"key_fresh": false}'
    firmware.unload("config", "not_a_module")  # unknown names are ignored
    assert "firmware.config" not in sys.modules


def _outcome(f, x):
    try:
        v = f(x)
    except Exception as e:
        return ("raises", type(e).__name__, str(e))
    return ("returns", type(v).__name__, repr(v))


def test_a_nodes_bodies_never_load_cbor_py():
    # protocol/nodecbor.py handles a node's bodies itself; cbor.py only for the rest
    from protocol import nodemsg

    assert "protocol.cbor" not in sys.modules
    b = nodemsg.encode(4, {0: 10, 1: 2, 2: -5, 3: 1700000000, 4: 1, 5: 2})
    assert nodemsg.decode(4, b)[2] == -5
    assert nodemsg.decode(8, nodemsg.encode(8, {0: 7, 1: 2, 2: [0, 240, 50] * 8, 3: 0xFFFFFFFF}))[3] == 0xFFFFFFFF
    assert nodemsg.decode(9, nodemsg.encode(9, {0: {0: 900, 3: 12}}))[0] == {0: 900, 3: 12}
    assert nodemsg.decode(1, nodemsg.encode(1, {0: "0.1.0", 1: 1, 3: b"abcd"}))[3] == b"abcd"
    assert "protocol.cbor" not in sys.modules


def test_nodecbor_agrees_with_cbor_on_the_rfc_vectors():
    # MicroPython's str() accepts some bad UTF-8 that CPython's refuses: the subset must still agree
    from binascii import unhexlify

    from protocol import cbor, nodecbor

    n = 0
    for name in ("cbor/appendix_a.json", "cbor/fail.json"):
        for v in mptest.load_json(name):
            raw = unhexlify(v["hex"])
            assert _outcome(nodecbor.loads, raw) == _outcome(cbor.loads, raw), v["hex"]
            n += 1
    for bad in (b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"a\x80"):
        raw = bytes([0x60 | len(bad)]) + bad
        assert _outcome(nodecbor.loads, raw) == _outcome(cbor.loads, raw), bad
    assert n > 100


def test_the_apps_config_checks_leave_after_use():
    # lighting_cfg / irrigation_cfg hold boot-only checks: loaded for check(), dropped after it
    from firmware import irrigation, lighting

    s = lighting.check({"power_w": 100})
    assert s["power_w"] == 100 and s["profile"][0] == (0, 0, 100)  # the default profile
    assert "firmware.lighting_cfg" not in sys.modules
    try:
        lighting.check({"power_w": 0})
        raise AssertionError("power_w 0 accepted")
    except ValueError as e:
        assert "lighting.power_w" in str(e)
    assert "firmware.lighting_cfg" not in sys.modules  # dropped after a refusal too
    z = irrigation.check({"zones": [{"flow_dlpm": 120}], "schedule": [[1, 127, 300, 20]]})
    assert z["zones"][0]["flow_dlpm"] == 120 and z["schedule"] == [(1, 127, 300, 20)]
    assert "firmware.irrigation_cfg" not in sys.modules
