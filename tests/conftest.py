"""Shared pytest fixtures: project paths and the conformance vectors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path:
    """Conformance data lives beside the project (../shared/vectors), never copied into it.

    LUMEAU_VECTORS overrides the location.
    """
    return Path(os.environ.get("LUMEAU_VECTORS", ROOT.parent / "shared" / "vectors"))


@pytest.fixture(scope="session")
def vectors() -> Path:
    path = vectors_dir()
    if not path.is_dir():
        pytest.skip(f"conformance vectors not found at {path} (set LUMEAU_VECTORS)")
    return path
