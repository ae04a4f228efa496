"""Shared pytest fixtures: project paths and the conformance vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Public conformance data vendored into the repository (sources and licences: tests/vectors/README.md),
# so that a clone with nothing beside it runs every conformance case.
VECTORS = ROOT / "tests" / "vectors"


def vectors_dir() -> Path:
    """The vendored conformance data; a missing directory is an error, never a skip."""
    if not (VECTORS / "cbor" / "appendix_a.json").is_file():
        raise FileNotFoundError(f"conformance vectors missing at {VECTORS}: they are part of the repository")
    return VECTORS


@pytest.fixture(scope="session")
def vectors() -> Path:
    return vectors_dir()
