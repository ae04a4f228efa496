"""One version number: protocol.VERSION, printed by `lumeau --version` and sent by the firmware.

The HELLO a node sends carries it as its firmware version
(tests/test_runtime.py::test_boot_hello_first_then_reports_and_status checks
the whole HELLO body); here the CLI, the package metadata, the bridge and the
BLE service data.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys

from conftest import ROOT

import lumeau
import protocol
from firmware import bridge
from protocol import ble as pb


def test_lumeau_version_prints_the_protocol_version():
    p = subprocess.run(
        [sys.executable, "-m", "lumeau", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"lumeau {protocol.VERSION}"
    assert lumeau.__version__ == protocol.VERSION


def test_the_package_metadata_reads_it():
    assert md.version("lumeau") == protocol.VERSION  # pyproject.toml: dynamic, attr = protocol.VERSION


def test_the_firmware_sends_it():
    assert bridge.FIRMWARE == "bridge " + protocol.VERSION
    major, minor, patch = (int(x) for x in protocol.VERSION.split("."))
    assert pb.version_bytes(protocol.VERSION) == bytes((major, minor, patch))
