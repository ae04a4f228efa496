# A/B release slots (SPEC §13): which code a board boots, the boot counter,
# the commit of a healthy release and the rollback of one that is not.
#
# Layout under the board's root: the factory release flashed by wire
# (/firmware, /protocol, never touched by an update), slots /s0 and /s1 (an
# update is staged into the slot not running), and /ab.json, the state:
#   {"a": active slot ("" the factory, "s0", "s1"), "t": slot on trial or "",
#    "n": boots of the trial so far, "id": {slot: bundle id hex},
#    "v": {slot: version}, "rb": the last slot rolled back or ""}
# The state is only ever replaced whole (write ab.tmp, then rename: atomic on
# littlefs, the filesystem of the ESP32 and RP2 ports), so a power cut leaves
# either the old or the new state. A missing or unreadable state means the
# factory release. boot.py calls select() on every boot: a slot on trial gets
# MAX_BOOTS boots to be committed (watch(): a verified downlink heard and no app
# fault within the trial window; a battery node: wake(), per awake period), then the
# active slot boots again.
#
# Loaded at boot by boot.py (then dropped) and by main.py only while a release
# is on trial: it costs the resident node nothing otherwise.

import json
import os

MAX_BOOTS = 3
HEALTHY_MS = 120000  # a trial runs at least this long before it may be committed
TRIAL_MS = 1800000  # not healthy by then: reset (one more boot counted)


def _empty():
    return {"a": "", "t": "", "n": 0, "id": {}, "v": {}, "rb": ""}


def read(root="/"):
    try:
        with open(root + "ab.json") as f:
            st = json.load(f)
        if type(st) is dict and st.get("a") in ("", "s0", "s1") and st.get("t") in ("", "s0", "s1"):
            for k, v in _empty().items():  # a key missing or of the wrong type: its default
                if type(st.get(k)) is not type(v):
                    st[k] = v
            return st
    except Exception:  # missing or damaged: the factory release is always there
        pass
    return _empty()


def write(st, root="/"):
    tmp = root + "ab.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(st))
    os.rename(tmp, root + "ab.json")


def directory(slot, root="/"):
    return root + slot + "/" if slot else root


def select(root="/", count=True):
    """The slot to boot ("" the factory), counting a trial's boots; call once per boot.

    count=False (boot.py after a soft reset: a tool entering the raw REPL, not a crash)
    boots the same slot without counting it.
    """
    st = read(root)
    t = st["t"]
    if not t or not count:
        return t or st["a"]
    st["n"] = st.get("n", 0) + 1
    if st["n"] > MAX_BOOTS:
        st["rb"] = t  # rolled back: the gateway sees the old bundle id in HELLO
        st["t"] = ""
        st["n"] = 0
        t = st["a"]
    write(st, root)
    return t


def running(root="/"):
    """(bundle id hex or None, on trial) of the slot select() chose."""
    st = read(root)
    s = st["t"] or st["a"]
    return st["id"].get(s), bool(st["t"])


def commit(root="/"):
    """The slot on trial becomes the active one (the previous stays as it is on flash)."""
    st = read(root)
    if st["t"]:
        st["a"] = st["t"]
        st["t"] = ""
        st["n"] = 0
        st["rb"] = ""
        write(st, root)


def wake(node, root="/"):
    """A battery node's awake period on trial (firmware/battery.py; True: rolled back).

    It never stays up HEALTHY_MS: each wake is short and ends in deep sleep, which boot.py
    does not count. So a wake that sent something is a trial run of its own: a verified
    downlink heard and no app fault commits the release (as watch() does); none heard, or an
    app fault, counts as a boot of the trial (select()), so MAX_BOOTS such wakes roll it back.
    A wake that sent nothing (a flow pulse watched, a valve closed) proves nothing either way."""
    if not node.tx:
        return False
    if node.rx and not node.app_faults:
        commit(root)
        return False
    select(root)
    return not read(root)["t"]


def prepare(cfg, root="/"):
    """main.py: the running bundle id (HELLO key 5, 3 bytes) and whether it is on trial, into cfg."""
    bid, trial = running(root)
    if bid:
        cfg["bundle"] = bytes.fromhex(bid[:6])
    cfg["trial"] = trial


async def on_trial(node, hal, coro, root="/"):
    """Run the node (coro) with watch() beside it; slots.py leaves the heap once it is done."""
    import asyncio

    async def w():
        await watch(node, hal, root)
        import firmware

        firmware.unload("slots")

    asyncio.create_task(w())
    await coro


async def watch(node, hal, root="/", healthy_ms=HEALTHY_MS, trial_ms=TRIAL_MS):
    """While a release is on trial: commit it once healthy, reset the board if it is not in time."""
    while True:
        await hal.sleep_ms(10000)
        up = hal.ticks_ms()
        if node.rx and not node.app_faults and up >= healthy_ms:
            commit(root)
            return True
        if up >= trial_ms:
            hal.reset()
            return False
