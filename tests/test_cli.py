"""The `lumeau` command: frame demo and frame decode, through the installed console script.

(`lumeau demo`, the main job, runs the simulated district against real services: tests/test_sim_live.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import frame, keys
from protocol import messages as m

LUMEAU = shutil.which("lumeau", path=str(Path(sys.executable).parent))
ROOT_KEY = "000102030405060708090a0b0c0d0e0f"


def run(*args: str) -> subprocess.CompletedProcess:
    assert LUMEAU, "the lumeau console script is not installed in this venv"
    return subprocess.run([LUMEAU, *args], capture_output=True, text=True, timeout=60)


def test_frame_demo_prints_real_frames_that_verify():
    out = run("frame", "demo")
    assert out.returncode == 0, out.stderr
    k = keys.NodeKeys(0x00A1B2C3, bytes.fromhex(ROOT_KEY))
    frames = [line.split(None, 1)[1] for line in out.stdout.splitlines() if line.strip().startswith("frame ")]
    assert len(frames) == 4
    types = [frame.unseal(k, bytes.fromhex(h.replace(" ", "")))[0].mtype for h in frames]
    assert types == [m.HELLO, m.LIGHT, m.IRRIGATION, m.EVENT]
    assert "duplicate" in out.stdout and "bad_mic" in out.stdout
    assert ROOT_KEY not in out.stdout  # the demo key is never echoed


def test_frame_decode_verifies_with_the_root_key():
    k = keys.NodeKeys(5, bytes.fromhex(ROOT_KEY))
    raw = frame.seal(k, m.LIGHT, 9, m.encode(m.LIGHT, {0: 30, 1: 123}), encrypt=True)
    out = run("frame", "decode", raw.hex(), "--root-key", ROOT_KEY)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["verified"] is True and doc["counter"] == 9 and doc["type"] == "light"
    assert doc["fields"]["power"] == {"value": 12.3, "unit": "W"}
    # without the key an encrypted body stays opaque
    doc = json.loads(run("frame", "decode", raw.hex()).stdout)
    assert doc["verified"] is False and "fields" not in doc


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["frame", "decode", "zz"], 2, "non-hexadecimal"),
        (["frame", "decode", "2200"], 2, "too short"),
    ],
)
def test_frame_decode_errors_are_clear(args, code, text):
    out = run(*args)
    assert out.returncode == code and text in out.stderr


def test_frame_decode_wrong_key_is_a_mic_error():
    raw = frame.seal(keys.NodeKeys(5, bytes(16)), m.ACK, 1, m.encode(m.ACK, {0: 1}))
    out = run("frame", "decode", raw.hex(), "--root-key", ROOT_KEY)
    assert out.returncode == 1 and "MIC mismatch" in out.stderr


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "frame" in out.stdout
    out = run("demo", "--help")
    assert out.returncode == 0 and "--speed" in out.stdout and "district" in out.stdout
