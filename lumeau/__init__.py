"""Lumeau command-line entry point (``lumeau``)."""

__version__ = "0.1.0"
