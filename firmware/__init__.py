# Lumeau node firmware (MicroPython and CPython).
