# Board boot script (copied to / on the device; runs before main.py).
#
# Kept minimal on purpose: an exception here leaves the board without its
# application, so everything that can fail lives in main.py. The one job
# added for updates (SPEC §13) is guarded: choose the release to boot
# (firmware/slots.py: the active one, or one on trial, counting its boots)
# and put its slot first on sys.path. A release on trial also gets a
# watchdog here, so one that crashes before its runtime starts is reset,
# counted, and rolled back after slots.MAX_BOOTS boots. Any failure boots
# the factory release flashed by wire.

import gc
import sys

import micropython

# Room for a traceback raised inside an IRQ handler (the pulse counters).
micropython.alloc_emergency_exception_buf(100)
try:
    import machine
    from firmware import slots

    # a soft reset (a tool's raw REPL, Ctrl-D) or a battery node's wake from deep sleep
    # is not a failed boot: not counted
    _rc = machine.reset_cause()
    _slot = slots.select(count=_rc != machine.SOFT_RESET and _rc != getattr(machine, "DEEPSLEEP_RESET", -1))
    if _slot:
        sys.path.insert(0, "/" + _slot)
        if slots.read()["t"] == _slot:
            machine.WDT(timeout=8000)  # main.py's runtime feeds it (and sets its own timeout)
    del slots
except Exception as e:
    print("lumeau: release slots: %r, booting the factory release" % e)
for _m in ("firmware.slots", "firmware"):  # main.py imports them again, from the chosen slot
    sys.modules.pop(_m, None)
gc.collect()
