# Helpers to run whole nodes under MicroPython (and CPython): a small gateway
# built from protocol/ only, and the two worlds the apps live in. Used by
# mp_runtime.py and by bench/firmware_memory.py. Plain MicroPython.
import asyncio
import json

from firmware import aio, config
from simulator.hal_sim import SimHAL, StepClock
from firmware.radio import memory_link
from firmware.runtime import Node
from protocol import frame as fr
from protocol import messages as m
from protocol.keys import NodeKeys

try:
    import heapq
except ImportError:  # some MicroPython builds name it uheapq
    import uheapq as heapq

ROOT_HEX = "000102030405060708090a0b0c0d0e0f"
NODE_ID = 0x00A1B2C3
# 2026-06-21 00:00 UTC: midsummer, the shortest night at the test latitude
MIDSUMMER = 1782000000 - (1782000000 % 86400)
MCAST_ID_BASE = 0x80000000  # protocol.groupcast's: command ids of multicast commands


class MiniGateway:
    """Verifies uplinks with protocol/, answers in RX1: TIME after HELLO, ACK for alarms."""

    def __init__(self, hal, radio, node_id=NODE_ID, clock=None, keep=True):
        self.keep = keep  # False: count, do not keep what was heard (memory benchmark)
        self.count = 0
        self.hal = hal
        self.radio = radio
        self.clock = clock
        self.keys = NodeKeys(node_id, bytes.fromhex(ROOT_HEX))
        self.window = fr.ReplayWindow()
        self.heard = []  # (ticks_ms, mtype, counter, body, frame length)
        self.rejected = 0
        self.pending = []
        self.feed = []  # downlinks sent one per uplink, in order (a calendar's fragments)
        self.down = 0
        self.max_frame = 0
        self.group_acks = 0  # CMD_ACKs of multicast commands (ids >= MCAST_ID_BASE) with result ok

    def seal(self, mtype, body):
        # bytes: a raw body (an update's FRAG, protocol/fragments.py), else a CBOR message
        raw = fr.seal(self.keys, mtype, self.down, body if type(body) is bytes else m.encode(mtype, body))
        self.down += 1
        return raw

    async def run(self):
        while True:
            r = await self.radio.recv(3600000)
            if r is None:
                continue
            try:
                f, plain = fr.unseal(self.keys, r[0], self.window)
                body = m.decode(f.mtype, plain)
            except ValueError:
                self.rejected += 1
                continue
            n = len(r[0])
            if n > self.max_frame:
                self.max_frame = n
            self.count += 1
            if self.keep:
                self.heard.append((self.hal.ticks_ms(), f.mtype, f.counter, body, n))
            if f.mtype == m.CMD_ACK and body.get(0, 0) >= MCAST_ID_BASE and body.get(1) == m.RES_OK:
                self.group_acks += 1
            todo = []
            if (f.mtype == m.HELLO or (f.mtype == m.STATUS and not body.get(1))) and self.clock is not None:
                # a TIME answers the uplink it follows (SPEC §4, "Freshness")
                todo.append((m.TIME, {0: self.clock.unix(), 2: f.counter}))
            todo.extend(self.pending)
            self.pending = []
            if self.feed:
                x = self.feed.pop(0)
                if x is not None:  # None: this uplink gets nothing
                    todo.append(x)
            replies = []
            alarm = f.mtype == m.EVENT and body.get(1, 0) >= m.SEV_ALARM
            if alarm or len(todo) > 1:
                ack = {0: f.counter}
                if todo:
                    ack[1] = len(todo)
                replies.append(self.seal(m.ACK, ack))  # first, so its counter is the lowest: sent in order
            for mtype, b in todo:
                replies.append(self.seal(mtype, b))
            if replies:
                asyncio.create_task(self._answer(replies))

    async def _answer(self, replies):
        await self.hal.sleep_ms(1000)
        for raw in replies:
            await self.radio.send(raw)

    def of_type(self, mtype):
        return [h for h in self.heard if h[1] == mtype]


def node_config(kind, tick_ms=None, **section):
    d = {
        "node_id": NODE_ID,
        "kind": kind,
        "root_key": ROOT_HEX,
        "report_interval_s": 900,
        "status_interval_s": 21600,
        "location": {"lat": 48.8566, "lon": 2.3522},
        "key_fresh": True,
    }
    if kind == "lighting":
        d["lighting"] = section or {"full_ma": 500}
    else:
        d["irrigation"] = section or {
            "zones": [{"flow_dlpm": 120, "moisture": 1}, {"flow_dlpm": 80}],
            "schedule": [[1, 127, 300, 20], [2, 127, 330, 15]],  # 05:00 and 05:30 every day
            "utc_offset_min": 0,
        }
    if tick_ms is not None:
        d[kind]["tick_ms"] = tick_ms
    return config.load(json.dumps(d).encode())


class LampWorld:
    """Lamp current follows the PWM (a healthy LED driver), a passer-by now and then."""

    def __init__(self, hal, full_ma=500):
        self.hal = hal
        hal.set_adc("lamp_current", lambda: hal.pwm.get("lamp", 0) * full_ma // 1000)
        hal.set_adc("ambient", 2500)
        hal.set_adc("supply", 0)

    async def pedestrians(self, clock, times_s):
        for t in times_s:
            while clock.ms() < t * 1000:
                await self.hal.sleep_ms(t * 1000 - clock.ms())
            self.hal.set_pin("pir", 1)
            await self.hal.sleep_ms(3000)
            self.hal.set_pin("pir", 0)


class WaterWorld:
    """Flow through the meter: the open zones' rates while the master valve is open."""

    def __init__(self, hal, flows_lpm=(12, 8, 0, 0), ppl=450):
        self.hal = hal
        self.flows = flows_lpm
        self.ppl = ppl
        hal.on_output = self._changed
        for z in range(1, 5):
            hal.set_adc("moisture%d" % z, 2300)  # about 18 % volumetric: dry enough to water
        hal.set_pin("rain", 0)

    def _changed(self, name, value):
        pins = self.hal.pins
        lpm = 0
        if pins.get("master", 0):
            for z in range(4):
                if pins.get("zone%d" % (z + 1), 0):
                    lpm += self.flows[z]
        self.hal.set_pulse_rate("flow", lpm * self.ppl / 60)


def start_node(
    clock,
    kind,
    storage=None,
    reset_cause=m.RST_POWER_ON,
    app_class=None,
    watchdog=True,
    lean=False,
    tick_ms=None,
    lorawan=False,
    modem=False,
):
    """(hal, node, gateway, tasks, world): one node and its gateway on `clock`, running.

    lean: keep no history (output changes, frames heard), for memory measurements.
    tick_ms: the app's tick instead of its default (a soak runs faster on a coarser one).
    lorawan: the node's radio is firmware/radio_lorawan.py on the simulated RAK3172
    (at_modem.py), and the "gateway" the network behind it (at_modem.Network).
    modem: the node's radio is firmware/radio_lora.py's LoRaRadio, as on a board, on a LinkModem
    over the memory link (so a lamp in a group listens through firmware/group.py's Listener).
    """
    hal = SimHAL(clock, storage=storage, reset_cause=reset_cause, history_max=0 if lean else 20000)
    gw = None
    if lorawan:
        from at_modem import AtModem, Network
        from firmware.radio_lorawan import LorawanRadio

        gw = Network(clock, NODE_ID, ROOT_HEX, keep=not lean)
        node_radio = LorawanRadio(hal, AtModem(hal, gw, keep=not lean), NODE_ID, ())
    else:
        gw_hal = SimHAL(clock)
        node_radio, gw_radio = memory_link(hal, gw_hal, sf=9)
        if modem:
            from firmware.radio_lora import LoRaRadio

            node_radio = LoRaRadio(LinkModem(node_radio))
    if app_class is None:
        if kind == "lighting":
            from firmware.lighting import Lighting as app_class
        else:
            from firmware.irrigation import Irrigation as app_class
    world = LampWorld(hal) if kind == "lighting" else WaterWorld(hal)
    node = Node(node_config(kind, tick_ms), hal, node_radio, app_class, hello_jitter_ms=0, watchdog=watchdog)
    tasks = [asyncio.create_task(node.run())]
    if gw is None:
        gw = MiniGateway(gw_hal, gw_radio, clock=clock, keep=not lean)
        tasks.append(asyncio.create_task(gw.run()))
    return hal, node, gw, tasks, world


class _Packet(bytearray):
    """What the `lora` driver's recv() returns (RxPacket): the bytes, rssi, snr, crc_error."""

    rssi = -90
    snr = 80
    crc_error = False


class LinkModem:
    """A LoRa modem shaped like micropython-lib's async `lora` driver (as air_modem.AirModem:
    configure(dict), send, recv, standby) on the node's end of a memory link. Lean: it keeps
    nothing (for bench/firmware_memory.py --member); one channel: what the gateway end sends
    reaches a recv() under way, whatever channel the node tuned to."""

    def __init__(self, link):
        self.link = link  # the node's MemoryRadio

    def configure(self, cfg):
        pass

    def standby(self):
        self.link._arrived.set()  # the recv() under way returns None (its queue is empty)

    async def send(self, packet):
        await self.link.send(packet)

    async def recv(self, timeout_ms):
        r = await self.link.recv(timeout_ms)
        return None if r is None else _Packet(r[0])


async def multicast(gw, frames, n, at_ms, every_ms=86400000):
    """Send the `n` GROUP_COMMAND frames in `frames` (bytes, all of one length, already sealed)
    from the gateway's radio: the first at ticks `at_ms`, then one every `every_ms`. Returns how
    many went out (a multicast is sent whether anyone listens or not)."""
    hal = gw.hal
    size = len(frames) // n
    for i in range(n):
        await hal.sleep_ms(at_ms + i * every_ms - hal.ticks_ms())
        await gw.radio.send(frames[i * size : (i + 1) * size])
    return n


def stop(hal, tasks):
    for t in tasks:
        t.cancel()
    hal.power_off()


class LeanClock(StepClock):
    """A StepClock whose cancelled sleeps leave its heap at once (the memory benchmark's clock).

    StepClock keeps a sleep's (wake ms, seq, Event) entry until that time even
    when the sleeping task was cancelled; a board's asyncio drops a cancelled
    sleeper at once. firmware/aio.wait_ms cancels its timer task whenever the
    event comes first, so under StepClock every such wait left its entry (a
    tuple and an Event) for the rest of the timeout, hours for the runtime's
    long waits: some 200 B per uplink, counted as the node's runtime heap.
    """

    async def sleep_ms(self, ms):
        if ms <= 0:
            await StepClock.sleep_ms(self, ms)
            return
        ev = asyncio.Event()
        self._seq += 1
        entry = (self._ms + int(ms), self._seq, ev)
        heapq.heappush(self._heap, entry)
        try:
            await ev.wait()
        except asyncio.CancelledError:
            if not ev.is_set():  # still in the heap: take it out
                self._heap.remove(entry)
                heapq.heapify(self._heap)
            raise


def new_clock(unix0=MIDSUMMER, lean=False):
    """A StepClock at unix0; lean: a LeanClock (cancelled sleeps leave at once, for memory figures)."""
    return LeanClock(unix0) if lean else StepClock(unix0)


class BatteryCell:
    """A battery irrigation node (firmware/battery.py) across deep sleeps, on timer wakes: each
    wake a new SimHAL and BatteryNode with the old storage, RTC memory and latched valves, as a
    board boots again. For bench/firmware_memory.py ("irrigation-battery"). `tx`, `app_faults`
    and `last_error` add up every boot's; `gw` hears them all."""

    def __init__(self, clock, lean=False, tick_ms=None):
        from firmware.radio import MemoryRadio

        self._radio_class = MemoryRadio
        self.clock = clock
        self.lean = lean
        section = {
            "zones": [{"flow_dlpm": 120, "moisture": 1}, {"flow_dlpm": 80}],
            "schedule": [[1, 127, 300, 20], [2, 127, 330, 15]],
            "utc_offset_min": 0,
            "battery": 1,
            "latch_ms": 40,
        }
        if tick_ms is not None:
            section["tick_ms"] = tick_ms
        self.cfg = node_config("irrigation", **section)
        self.storage = {}
        self.rtc = {}
        self.hal = None
        gw_hal = SimHAL(clock)
        self._node_radio, gw_radio = memory_link(None, gw_hal, sf=9)
        self.gw = MiniGateway(gw_hal, gw_radio, clock=clock, keep=not lean)
        self.tx = self.app_faults = self.boots = 0
        self.last_error = None
        self.node = None

    async def run(self):
        from firmware.battery import BatteryIrrigation, BatteryNode
        from simulator.hal_sim import SimSleep

        cause = m.RST_POWER_ON
        while True:
            old = self.hal
            hal = SimHAL(
                self.clock,
                storage=self.storage,
                reset_cause=cause,
                time_known=old is None,
                history_max=0 if self.lean else 20000,
            )
            if old is not None:
                hal.carry_clock(old)
                for v in ("master", "zone1", "zone2"):
                    if v in old.pins:
                        hal.pins[v] = old.pins[v]
                old.power_off()
            old = None  # a reset frees the last boot's heap: keep nothing of it across this one
            hal.rtc = self.rtc
            WaterWorld(hal)
            self.hal = hal
            radio = self._radio_class(hal, sf=9)
            radio.peer = self.gw.radio
            self.gw.radio.peer = radio
            node = self.node = BatteryNode(self.cfg, hal, radio, BatteryIrrigation, hello_jitter_ms=0, watchdog=False)
            self.boots += 1
            slept = 1000
            try:
                await node.run()
            except SimSleep as s:
                slept = s.ms
            self.tx += node.tx
            self.app_faults += node.app_faults
            self.last_error = node.last_error or self.last_error
            self.node = node = None  # the slept node: its heap went with the reset
            cause = m.RST_DEEPSLEEP
            # This task lives across boots: through its task-queue pointers it may hold a finished
            # task of the slept node, and with it that node's whole heap (firmware/aio.py says how),
            # which a board's reset frees. Let go of them before and after the sleep.
            aio.drop(asyncio.current_task())
            await self.clock.sleep_ms(slept)
            aio.drop(asyncio.current_task())


def start_battery_cell(clock, lean=False, tick_ms=None):
    """(cell, gateway, tasks): a battery node (BatteryCell) and its gateway on `clock`, running."""
    cell = BatteryCell(clock, lean, tick_ms)
    tasks = [asyncio.create_task(cell.gw.run()), asyncio.create_task(cell.run())]
    return cell, cell.gw, tasks
