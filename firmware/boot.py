# Board boot script (copied to / on the device; runs before main.py).
#
# Kept minimal on purpose: an exception here leaves the board without its
# application, so everything that can fail lives in main.py.

import gc

import micropython

# Room for a traceback raised inside an IRQ handler (the pulse counters).
micropython.alloc_emergency_exception_buf(100)
gc.collect()
