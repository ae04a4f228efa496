# Board entry point (copied to / on the device as main.py).
#
# Reads /config.json, builds the HAL on `machine`, the radio the config names
# and the app for the node's kind, and runs the runtime (or the radio bridge)
# forever. A config that does not load stops here with the reason printed on
# the REPL, so the technician sees it on the USB console; outputs stay as
# the board's reset left them (inputs, i.e. valves closed) - no watchdog
# is started, so the REPL stays usable to fix the file.

import asyncio

import firmware

CONFIG_PATH = "/config.json"
STATE_DIR = "/state"
UART_DEFAULTS = {"id": 1, "baud": 115200}


def app_class(kind):
    if kind == "lighting":
        from firmware.lighting import Lighting

        return Lighting
    if kind == "irrigation":
        from firmware.irrigation import Irrigation

        return Irrigation
    return None


def make_radio(cfg, hal, machine=None):
    r = cfg["radio"]
    if r["type"] == "uart":
        if machine is None:
            import machine
        from firmware.radio import UartRadio

        u = dict(UART_DEFAULTS)
        u.update(r.get("uart", {}))
        kw = {"baudrate": u["baud"], "timeout": 0}
        for pin in ("tx", "rx"):
            if pin in u:
                kw[pin] = u[pin]
        return UartRadio(hal, machine.UART(u["id"], **kw), u["baud"])
    if r["type"] == "lora":
        from firmware.radio_lora import LoRaRadio, make_modem

        modem = make_modem(r, cfg["pins"])
        return LoRaRadio(
            modem,
            r["freq_hz"],
            r["sf"],
            r["bw_hz"],
            r["cr"],
            r["tx_power"],
            bridge=cfg["kind"] == "bridge",
            wrapper=r["basics_station"],  # LoRaWAN proprietary frames (SPEC §7), config.py checked it
        )
    if r["type"] == "lorawan":  # an AT-command LoRaWAN modem (SPEC §14): loaded only here
        from firmware.radio_lorawan import make

        return make(cfg, hal, machine)
    raise ValueError("radio.type %r has no board implementation" % r["type"])


class StdioPort:
    """The USB CDC console as a byte port for the radio bridge (non-blocking read)."""

    def __init__(self):
        import select
        import sys

        import micropython

        micropython.kbd_intr(-1)  # 0x03 in binary data must not raise KeyboardInterrupt
        self._in = sys.stdin.buffer
        self._out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(sys.stdin, select.POLLIN)
        self._one = bytearray(1)

    def read(self, n):
        out = None
        while n > 0 and self._poll.poll(0):
            self._in.readinto(self._one)
            if out is None:
                out = bytearray()
            out.append(self._one[0])
            n -= 1
        return out

    def write(self, data):
        self._out.write(data)


def build(cfg, machine=None):
    """(hal, awaitable main) for a loaded config; on a board `machine` is imported here."""
    if (cfg.get("irrigation") or {}).get("battery"):  # deep sleep between events: firmware/battery.py
        from firmware import battery

        return battery.build(cfg, machine, make_radio, STATE_DIR)
    from firmware.hal_machine import MachineHAL

    hal = MachineHAL(cfg["pins"], STATE_DIR, cfg.get("adc_scale"), machine)
    radio = make_radio(cfg, hal, machine)
    if cfg["kind"] == "bridge":
        from firmware.bridge import Bridge

        return hal, Bridge(hal, radio, StdioPort(), cfg["wdt_ms"]).run()
    from firmware.runtime import Node

    node = Node(cfg, hal, radio, app_class(cfg["kind"]))
    coro = with_ble(node, cfg["ble"]) if cfg["ble"]["enabled"] else node.run()
    if cfg.get("trial"):
        from firmware import slots

        coro = slots.on_trial(node, hal, coro)
    return hal, coro


def release_state(cfg):
    """HELLO's bundle id and the trial flag into cfg (firmware/slots.py, SPEC §13); never fatal.

    First, an update over LoRa whose image is complete (firmware/fuota.py: /frag.setup of 15
    bytes) is installed, before the node's code is loaded (firmware/updater.py boot()), and the
    board resets: the updater's code and names (qstrs, never freed) leave with it, and the next
    boot selects the release it armed. Here, not in boot.py: main.py comes from the running
    release's slot, boot.py is the factory's and no update replaces it."""
    try:
        import os

        if os.stat("/frag.setup")[6] == 15:
            from firmware import updater

            updater.boot()
            import machine

            machine.reset()
    except OSError:
        pass  # no session
    try:
        from firmware import slots

        slots.prepare(cfg)
    except Exception as e:
        print("lumeau: release state: %r" % e)
    if not cfg.get("trial"):
        firmware.unload("slots")


async def with_ble(node, settings, lib=None, uuid=None):
    """Run the node with BLE commissioning beside it (firmware/ble.py).

    `lib` is micropython-lib's aioble and `uuid` bluetooth.UUID (imported
    here when not given). Without them on the board the node runs without
    BLE and says so on the console: commissioning is a convenience, never a
    reason for a lamp or a valve to stop working. A BLE failure never stops
    the node.
    """
    if lib is None:
        try:
            import aioble  # type: ignore[import-not-found]  # micropython-lib: no stubs
            import bluetooth
        except ImportError as e:
            print("lumeau: BLE commissioning off, %r" % e)
            return await node.run()
        lib, uuid = aioble, bluetooth.UUID
    from firmware.ble import Commissioning

    c = Commissioning(node, lib, uuid, settings)  # before run(): it hears the boot events
    asyncio.create_task(c.run())
    await node.run()


def read_config(path):
    """The validated config, or None (the reason printed on the console)."""
    from firmware import config

    try:
        return config.read(path)
    except Exception as e:  # OSError (no file) or ConfigError
        print("lumeau: cannot start, %s: %r" % (path, e))
        return None


def main():
    cfg = read_config(CONFIG_PATH)
    if cfg is None:
        return
    release_state(cfg)
    hal, coro = build(cfg)
    firmware.unload("config")  # boot-only: validation never runs again
    asyncio.run(coro)


if __name__ == "__main__":
    main()
