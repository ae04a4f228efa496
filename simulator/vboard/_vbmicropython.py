# `micropython` on the virtual board: the WebAssembly port's module plus what
# board ports have and it lacks (installed as sys.modules["micropython"]).
from micropython import *  # noqa: F403


def alloc_emergency_exception_buf(size):
    # Pin IRQ handlers here run as soft IRQs between the board's waits: an
    # exception in one never needs a buffer reserved in advance.
    pass
