"""Lumeau gateway (CPython, asyncio)."""
