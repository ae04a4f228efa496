# What the LoRaWAN modem radio (firmware/radio_lorawan.py) costs a node that uses it, in real
# MicroPython from .mpy: its code, imported after the runtime and the app (what a node has
# loaded by then: protocol.nodelora among them; firmware/radio_lora.py is not, as on a LoRaWAN
# node), and the radio object with its set-up commands. A node on the existing radio never
# imports it (bench/README.md). The import's garbage is let go (a turn of the scheduler) before
# each reading, as mptest's notes say.
import asyncio

import mptest
from simulator.hal_sim import SimHAL, StepClock

MPY = True


class Port:
    def write(self, data):
        return len(data)

    def read(self, n):
        return None


async def test_heap_of_the_lorawan_radio():
    import firmware.lighting
    import firmware.runtime  # noqa: F401

    hal = SimHAL(StepClock())
    port = Port()
    await asyncio.sleep_ms(0)
    before = mptest.mem()
    from firmware import radio_lorawan

    await asyncio.sleep_ms(0)
    code = mptest.mem() - before
    base = mptest.mem()
    setup = radio_lorawan.setup_commands(
        {"dev_eui": "70b3d57ed0000001", "join_eui": "0000000000000001", "app_key": "2b" * 16}
    )
    radio = radio_lorawan.LorawanRadio(hal, port, 0x00A1B2C3, setup)
    await asyncio.sleep_ms(0)
    objects = mptest.mem() - base
    print("radio_lorawan: code %d B, the radio with its set-up %d B" % (code, objects))
    assert radio.max_frame == 56
    assert code < 6000, code
    assert objects < 1200, objects
