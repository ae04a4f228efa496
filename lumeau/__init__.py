"""Lumeau command-line entry point (``lumeau``)."""

# One version number for the project: protocol.VERSION (the firmware reports it too).
from protocol import VERSION as __version__

__all__ = ["__version__"]
