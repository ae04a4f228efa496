"""The MicroPython harness (tests/micropython/conftest.py + runner.mjs) must be able to FAIL.

Each test writes mp_*.py files into a pytester directory whose conftest loads the real harness
conftest, runs pytest there, and checks outcomes and messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HARNESS = Path(__file__).resolve().parent / "micropython" / "conftest.py"

WRAPPER = f"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("lumeau_mp_harness", {str(HARNESS)!r})
_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _mod  # dataclasses look their module up
_spec.loader.exec_module(_mod)
pytest_collect_file = _mod.pytest_collect_file
"""

MIXED = """
import asyncio

def test_passes():
    print("hello from micropython")
    assert 1 + 1 == 2

def test_assert_fails():
    x = 41
    assert x == 42, "x is not the answer"

def test_raises():
    {}["missing key"]

async def test_async_passes():
    await asyncio.sleep_ms(5)

async def test_async_fails():
    await asyncio.sleep_ms(5)
    raise ValueError("async boom")
"""


def line_of(text: str) -> int:
    """Line number of `text` in MIXED as pytester writes it (dedented, stripped)."""
    lines = MIXED.strip().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def mp_pytester(pytester):
    pytester.makeconftest(WRAPPER)
    return pytester


def run(pytester, *args):
    # Third-party plugins only add noise here (pytest-asyncio warns without our pyproject).
    return pytester.runpytest("-p", "no:asyncio", "-p", "no:hypothesispytest", *args)


def test_outcomes_and_micropython_tracebacks(mp_pytester):
    mp_pytester.makepyfile(mp_mixed=MIXED)
    result = run(mp_pytester, "-v", "-rA")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*mp_mixed.py::test_passes*PASSED*",
            "*mp_mixed.py::test_assert_fails*FAILED*",
            "*mp_mixed.py::test_raises*FAILED*",
            "*mp_mixed.py::test_async_passes*PASSED*",
            "*mp_mixed.py::test_async_fails*FAILED*",
        ],
        consecutive=False,
    )
    out = result.stdout.str()
    # MicroPython's own traceback text (sys.print_exception), with file and line in the VFS.
    assert f'File "/tests/mp_mixed.py", line {line_of("x is not the answer")}, in test_assert_fails' in out
    assert "AssertionError: x is not the answer" in out
    assert "KeyError: missing key" in out
    assert f'File "/tests/mp_mixed.py", line {line_of("async boom")}, in test_async_fails' in out
    assert "ValueError: async boom" in out
    assert "hello from micropython" in out  # captured output shown with -rA
    assert "_mptest_run" not in out  # the driver's frame is trimmed
    # The short summary names the MicroPython exception.
    result.stdout.fnmatch_lines(["FAILED mp_mixed.py::test_raises - KeyError: missing key*"])


def test_import_error_fails_every_item(mp_pytester):
    mp_pytester.makepyfile(mp_broken="import no_such_module\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = run(mp_pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*importing mp_broken.py under MicroPython failed*", "*ImportError*no_such_module*"])


def test_hang_hits_the_timeout(mp_pytester, monkeypatch):
    monkeypatch.setenv("LUMEAU_MP_TIMEOUT", "3")
    mp_pytester.makepyfile(
        mp_hang="""
def test_before():
    pass

def test_hang():
    while True:
        pass

def test_after():
    pass
"""
    )
    result = run(mp_pytester, "-v")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_before*PASSED*",
            "*test_hang*FAILED*",
            "*test_after*FAILED*",
            "*timed out: mp_hang.py hit the per-file limit of 3 s while running this test*",
            "*not run: mp_hang.py hit the per-file limit of 3 s while running test_hang*",
        ],
        consecutive=False,
    )


def test_missing_node_fails_with_instructions(mp_pytester, monkeypatch):
    monkeypatch.setenv("LUMEAU_NODE", "/nonexistent/node")
    mp_pytester.makepyfile(mp_any="def test_a():\n    pass\n")
    result = run(mp_pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Node.js not found*run `make test`*"])


def test_mpy_mode_loads_project_from_mpy(mp_pytester):
    mp_pytester.makepyfile(
        mp_compiled="""
MPY = True

def test_project_comes_from_mpy():
    import protocol
    assert protocol.__file__ == "/proj/protocol/__init__.mpy", protocol.__file__

def test_mem_is_exposed():
    import mptest
    assert mptest.mem() > 0
""",
        mp_source="""
def test_project_comes_from_source():
    import protocol
    assert protocol.__file__ == "/proj/protocol/__init__.py", protocol.__file__
""",
    )
    result = run(mp_pytester)
    result.assert_outcomes(passed=3)


def test_selection_runs_only_selected_tests(mp_pytester):
    mp_pytester.makepyfile(mp_sel="def test_keep():\n    pass\n\ndef test_drop():\n    assert False\n")
    result = run(mp_pytester, "-k", "keep")
    result.assert_outcomes(passed=1, deselected=1)
