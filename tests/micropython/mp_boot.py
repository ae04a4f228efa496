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
