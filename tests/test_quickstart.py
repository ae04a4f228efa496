"""README.md's "First node in 15 minutes", run as written (issue 17, item 6).

The shell block after `<!-- quickstart -->` is split into commands (comments and
blank lines dropped, a heredoc kept with its command) and each runs with bash in
an empty directory, with this environment's `lumeau` first on PATH (what
`. .venv/bin/activate` does). A command ending in `&` runs in the background as
the reader's shell would run it; the next command waits (with a deadline) for
what a reader waits for: the board's port to appear, the gateway's API to answer.
Every foreground command must exit 0; the last one (`lumeau node command`) waits for
the node's acknowledgement itself and must report it.

Real processes throughout: the virtual board (real MicroPython), the gateway,
`lumeau node build / provision / flash / list / show / command`. It needs the API's port
8760 free (the README's port). About half a minute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from waiting import wait_for_sync

from simulator.board import MICROPYTHON_MJS

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- quickstart -->"
API = "http://127.0.0.1:8760"
COMMAND_TIMEOUT_S = 180  # flash waits up to its --hello-timeout (60 s) after copying

pytestmark = pytest.mark.skipif(not MICROPYTHON_MJS.exists(), reason="needs node_modules (make setup)")


def quickstart_block(text: str) -> str:
    start = text.index(MARK)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(text, start)
    assert m is not None, f"no ```sh block after {MARK} in README.md"
    return m.group(1)


def commands(block: str) -> list[str]:
    """The block's commands: one per line, a heredoc kept with the line that opens it."""
    out: list[str] = []
    lines = iter(block.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        here = re.search(r"<<-?\s*'?(\w+)'?\s*$", line)
        if here:
            body = [line]
            for more in lines:
                body.append(more)
                if more.strip() == here.group(1):
                    break
            else:
                raise AssertionError(f"heredoc {here.group(1)} never closed")
            line = "\n".join(body)
        out.append(line)
    return out


def heredocs(cmds: list[str]) -> int:
    return sum("\n" in c for c in cmds)


def test_the_block_parses_into_commands_and_files():
    cmds = commands(quickstart_block(README.read_text()))
    n, files = len(cmds), heredocs(cmds)
    # The README says how many commands and hand-written files the reader types: keep it true.
    text = README.read_text()
    assert f"That is {n} commands and one hand-written file" in text and files == 1, (n, files)
    assert commands("a\n# c\n\ncat > f <<'EOF'\nx\nEOF\nb &\n") == ["a", "cat > f <<'EOF'\nx\nEOF", "b &"]


def api_up() -> bool:
    try:
        with urllib.request.urlopen(f"{API}/healthz", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # something answers HTTP there
    except OSError:
        return False


def ready_after(cmd: str, cwd: Path, proc: subprocess.Popen) -> None:
    """Wait for what the background command provides (a reader waits for it too)."""
    words = shlex.split(cmd.rstrip("& "))

    def alive_and(cond) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"`{cmd}` exited with {proc.returncode}")
        return cond()

    if "--link" in words:  # the board: its port appears
        link = cwd / words[words.index("--link") + 1]
        wait_for_sync(lambda: alive_and(link.exists), 60)
    elif words[:2] == ["lumeau", "gateway"]:
        wait_for_sync(lambda: alive_and(api_up), 60)


def test_first_node_in_15_minutes_as_written(tmp_path):
    assert not api_up(), "port 8760 is in use: the quick start's gateway needs it"
    cmds = commands(quickstart_block(README.read_text()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LUMEAU_API_TOKEN", None)
    background: list[subprocess.Popen] = []
    outputs: list[str] = []
    try:
        for cmd in cmds:
            if cmd.endswith("&"):
                p = subprocess.Popen(
                    ["bash", "-c", cmd[:-1]],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                background.append(p)
                ready_after(cmd, tmp_path, p)
                continue
            r = subprocess.run(
                ["bash", "-c", cmd],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
            assert r.returncode == 0, f"`{cmd}` failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            outputs.append(r.stdout)
        flash = next(o for o, c in zip(outputs, [c for c in cmds if not c.endswith("&")]) if "node flash" in c)
        assert "HELLO at the gateway" in flash
        listed = next(o for o, c in zip(outputs, [c for c in cmds if not c.endswith("&")]) if "node list" in c)
        assert "00c0ffee" in listed and "lighting" in listed
        shown = next(o for o, c in zip(outputs, [c for c in cmds if not c.endswith("&")]) if "node show" in c)
        assert "node 00c0ffee (lighting)" in shown and "last heard" in shown and "never" not in shown, shown
        assert "node command" in cmds[-1]
        assert re.search(r"command \d+ to node 00c0ffee: set_level 50 600 -- acked, result ok", outputs[-1]), outputs[
            -1
        ]
        log = [json.loads(ln) for ln in (tmp_path / "gateway.log").read_text().splitlines() if ln.startswith("{")]
        msgs = [d["msg"] for d in log]
        assert "registry reloaded" in msgs  # provisioned offline, known without a signal
        assert any(d["msg"].startswith("node heard") and d.get("node") == "00c0ffee" for d in log)
    finally:
        for p in reversed(background):  # `kill %2 %1`: the gateway, then the board
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
