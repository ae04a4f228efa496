# Lumeau wire protocol, shared by nodes (MicroPython) and the gateway (CPython).
# Only the MicroPython-compatible subset of Python lives here; see protocol/SPEC.md.
