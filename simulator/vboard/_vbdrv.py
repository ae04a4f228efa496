# The virtual board's own layer inside MicroPython: what a port's C code does on
# a board (pyexec: run code, print the traceback; mount the flash; make Ctrl-C
# reach a waiting program). Loaded by simulator/board_engine.mjs before the
# board's files are mounted; never part of a node bundle.
#
# The WebAssembly port's asyncio is driven by JavaScript timers and has no
# asyncio.run. Here asyncio.run blocks, as on a board: it drives the port's own
# scheduler (asyncio.core._run_iter) in a loop and sleeps in _vbjs.wait, which
# watches the serial line, so Ctrl-C raises KeyboardInterrupt in a program that
# waits. time.sleep / sleep_ms wait the same way. A busy loop that never waits
# cannot be interrupted (the host then resets the board, see board.py).

import sys
import io
import os
import vfs
import time
import _vbjs
import __main__

_G = __main__.__dict__
_machine = None  # the board's machine module, once installed
_ticks_ms = time.ticks_ms
_ticks_diff = time.ticks_diff
_IDLE_MS = 1000  # a loop with nothing scheduled waits in slices this long
OK = "ok"
ERROR = "error"
EXIT = "exit"  # SystemExit: the board soft-resets
INTERRUPT = "interrupt"
ABSENT = "absent"


def banner(machine):
    return sys.version.split("; ")[-1] + "; " + machine


def mpy_abi():
    return sys.implementation._mpy


def _print_exception(e):
    # Our own frames mean nothing to the board's user: drop them, as a board's
    # traceback shows no pyexec frame.
    buf = io.StringIO()
    sys.print_exception(e, buf)
    for line in buf.getvalue().split("\n"):
        if line and "/_vb/" not in line:
            print(line)


def _execute(code_or_src, name, mode):
    try:
        if isinstance(code_or_src, str):
            code_or_src = compile(code_or_src, name, mode)
        exec(code_or_src, _G)
        if _vbjs.pending():
            raise KeyboardInterrupt
        return OK
    except SystemExit:
        return EXIT
    except BaseException as e:
        _vbjs.error_begin()
        _print_exception(e)
        return INTERRUPT if isinstance(e, KeyboardInterrupt) else ERROR


def run(src, name, mode):
    """Run REPL input (mode "exec" or "single") in __main__, as pyexec does."""
    return _execute(src, name, mode)


def run_file(path):
    """Run boot.py / main.py from the flash, as pyexec_file_if_exists does."""
    try:
        with open(path) as f:
            src = f.read()
    except OSError:
        return ABSENT
    _G["__file__"] = path
    return _execute(src, path, "exec")


# -- blocking asyncio.run on the port's scheduler ----------------------------------


def _wait_ms(ms):
    if _vbjs.wait(ms):
        raise KeyboardInterrupt
    if _machine._irq_pins:
        _machine._service()


def _ticks_polling():
    # asyncio reads the clock before every step: a cheap place to notice Ctrl-C
    # in a program whose tasks are always ready.
    if _vbjs.poll():
        raise KeyboardInterrupt
    return _ticks_ms()


def _no_js_timer(dt):
    pass


class _Done:
    def __init__(self):
        self.finished = False
        self.result = None

    def __call__(self, task, er):
        self.finished = True
        self.result = er


def _drive(core, done):
    while True:
        core._run_iter()
        if done is not None and done.finished:
            return
        head = core._task_queue.peek()
        if head is None:
            if done is None:
                return  # run_forever with nothing left to run
            _wait_ms(_IDLE_MS)  # the main task waits for something that may never come
            continue
        dt = _ticks_diff(head.ph_key, _ticks_ms())
        if dt > 0:
            _wait_ms(dt)


def _run_until_complete(main_task=None):
    from asyncio import core

    done = None
    if main_task is not None:
        if not hasattr(main_task, "coro"):
            main_task = core.create_task(main_task)
        done = _Done()
        main_task.state = done  # called by the scheduler when the task ends
    _drive(core, done)
    if done is None:
        return None
    er = done.result
    if isinstance(er, StopIteration):
        return er.value
    raise er


def _run(coro):
    from asyncio import core

    return _run_until_complete(core.create_task(coro))


def _patch_asyncio():
    import asyncio
    from asyncio import core

    core._schedule_run_iter = _no_js_timer
    core.ticks = _ticks_polling
    core.new_event_loop()
    asyncio.run = _run
    asyncio.run_until_complete = _run_until_complete

    def run_until_complete(aw):
        return _run_until_complete(aw)

    def run_forever():
        _run_until_complete(None)

    core.Loop.run_until_complete = staticmethod(run_until_complete)
    core.Loop.run_forever = staticmethod(run_forever)


def _sleep_ms(ms):
    _wait_ms(ms)


def _sleep(s):
    _wait_ms(int(s * 1000))


def _ilistdir_with_sizes(ilistdir):
    # littlefs and FAT on a board report each file's size in ilistdir (mpremote's
    # `fs ls` shows it); the port's VfsPosix does not, so add it.
    def wrapped(path=""):
        prefix = path + "/" if path and not path.endswith("/") else path
        for entry in ilistdir(path) if path else ilistdir():
            size = 0
            if entry[1] & 0x8000:
                try:
                    size = os.stat(prefix + entry[0])[6]
                except OSError:
                    pass
            yield (entry[0], entry[1], entry[2], size)

    return wrapped


def _abspath(p):
    if not p.startswith("/"):
        cwd = os.getcwd()
        p = (cwd if cwd.endswith("/") else cwd + "/") + p
    return p


def _rename(old, new):
    err = _vbjs.rename(_abspath(old), _abspath(new))
    if err:
        raise OSError(err)


def install():
    """Mount the flash as "/", make waits interruptible, preload the board modules."""
    global _machine
    import vboard  # noqa: F401  (kept in sys.modules: /_vb is unreachable after the mount)
    import machine
    import _vbmicropython

    _machine = machine
    sys.modules["micropython"] = _vbmicropython

    _patch_asyncio()
    time.sleep = _sleep
    time.sleep_ms = _sleep_ms
    os.ilistdir = _ilistdir_with_sizes(os.ilistdir)
    os.rename = _rename
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix("/flash"), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
