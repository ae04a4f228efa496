# Lumeau node firmware (MicroPython and CPython).


def unload(*names):
    """Drop boot-only modules (firmware.<name>, or a dotted name) so their code leaves the heap.

    main.py calls it once the node is built: config validation runs once, at
    boot, and a board's heap is too small to keep its code for nothing. A
    later `from firmware import <name>` loads the module again (the runtime
    does for config.clear_fresh). MicroPython only: on CPython (tests, the
    simulator) a module loaded again would bring new exception classes that
    no longer match the ones callers hold, and memory is not scarce there.
    """
    import sys

    if sys.implementation.name != "micropython":
        return
    import gc

    for name in names:
        if "." in name:  # a module of another package (protocol.nodecal)
            sys.modules.pop(name, None)
            pkg, _, name = name.rpartition(".")
            pkg = sys.modules.get(pkg)
            if pkg is not None:
                pkg.__dict__.pop(name, None)
            continue
        sys.modules.pop("firmware." + name, None)
        globals().pop(name, None)
    gc.collect()
