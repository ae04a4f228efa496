"""Lumeau host-side simulator."""
