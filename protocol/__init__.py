# Lumeau wire protocol, shared by nodes (MicroPython) and the gateway (CPython).
# Only the MicroPython-compatible subset of Python lives here; see protocol/SPEC.md.

# The one version number of the project: the firmware's (HELLO key 0, BLE
# service data), the bridge's, the `lumeau` package's (pyproject.toml reads it).
VERSION = "0.1.0"
