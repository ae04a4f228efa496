# One node under real MicroPython for a test on the host (tests/test_ble_update.py): a
# lighting node with BLE on, over the aioble stand-in, driven one request at a time by
# tests/micropython/bridge.mjs. The host's bleak backend (tests/ble_update_bridge.py) plays
# the laptop's Bluetooth stack and calls these as a radio would: tick (time passes, the
# advertisement of now), connect, read, write, subscribe, disconnect. Each answer carries
# what the node did meanwhile: notifications, a link it dropped. Time is the node's
# StepClock: it moves only inside a request. Plain MicroPython.
import asyncio
import json
import os

import aioble_fake
import mpnode
import release_vectors as V

SETTINGS = {"enabled": True, "configure": True, "adv_interval_ms": 200}
ROOT = "/board/"
_b = None


class _Os:
    drawn = 0

    @classmethod
    def urandom(cls, n):  # this port has none; a board's is its hardware RNG
        cls.drawn += 1
        return bytes((cls.drawn * 37 + i * 101) & 0xFF for i in range(n))


class Board:
    def __init__(self, clock):
        import firmware.ble
        from firmware.ble import Commissioning

        if not hasattr(firmware.ble.os, "urandom"):
            firmware.ble.os = _Os
        self.clock = clock
        self.hal, self.node, _gw, self.tasks, _w = mpnode.start_node(clock, "lighting")
        self.resets = []
        self.hal.reset = lambda: self.resets.append(clock.ms())  # a board's never returns
        self.stack = aioble_fake.Stack()
        self.events = []
        self.stack.on_notify = lambda h, data: self.events.append(["n", h, bytes(data).hex()])
        self.stack.on_disconnect = lambda: self.events.append(["d"])
        self.c = Commissioning(self.node, self.stack.aioble(), aioble_fake.UUID, SETTINGS)
        self.c.fs = ROOT
        self.tasks.append(asyncio.create_task(self.c.run()))

    def stop(self):
        mpnode.stop(self.hal, self.tasks)


def _fresh(config):
    try:
        os.mkdir(ROOT[:-1])
        os.mkdir(ROOT + "relapp")
    except OSError:
        pass
    for p, b in V.FACTORY.items():
        with open(ROOT + p, "wb") as f:
            f.write(b)
    with open(ROOT + "config.json", "w") as f:
        f.write(config)


def _files(d):
    out = []
    for e in os.ilistdir(d):
        p = d + "/" + e[0]
        out.extend(_files(p) if e[1] == 0x4000 else [p])
    return out


async def op(line):
    global _b
    req = json.loads(line)
    o = req["op"]
    out = {}
    if o == "boot":  # a power-on; the filesystem stays (config written when given)
        if _b is None:
            _b = Board(mpnode.new_clock())
            clock = _b.clock
        else:
            clock = _b.clock
            _b.stop()
            _b = Board(clock)
        if "config" in req:
            _fresh(req["config"])
        await clock.run_for(1000)
    b = _b
    st = b.stack
    if o == "tick":
        await b.clock.run_for(req["ms"])
        a = st.advertising
        out["adv"] = None if a is None else [a[1].hex(), a[2].hex()]
    elif o == "connect":
        st.connect(req.get("central", "AA:BB:CC:DD:EE:FF"), req.get("mtu"))
        await b.clock.run_for(20)
        out["services"] = [[svc.uuid.s, [[h, c.uuid.s, c.flags] for h, c in chars]] for svc, chars in st.services]
    elif o == "read":
        out["value"] = st.read(req["h"]).hex()
    elif o == "write":
        st.write(req["h"], bytes.fromhex(req["data"]))
        await b.clock.run_for(req.get("ms", 5))
    elif o == "subscribe":
        st.subscribe(req["h"], req["on"])
    elif o == "disconnect":
        st.disconnect()
        await b.clock.run_for(10)
    elif o == "state":
        try:
            with open(ROOT + "ab.json") as f:
                out["ab"] = json.load(f)
        except OSError:
            out["ab"] = None
        out["files"] = sorted(_files(ROOT[:-1]))
        out["resets"] = len(b.resets)
        out["last_error"] = b.node.last_error
        out["ms"] = b.clock.ms()
    out["connected"] = st.connection is not None
    out["events"] = b.events
    b.events = []
    return json.dumps(out)
