"""The one compiled part of Lumeau: gateway._fastadmit (gateway/_fastadmit.c).

Everything else is declared in pyproject.toml. The extension is optional for
an installation (a machine without a C compiler or OpenSSL's headers still
installs, and the gateway falls back to its Python admission path with a
warning), but not for the project: tests/test_gateway_admit_fast.py fails
when it was not built. It links OpenSSL's libcrypto for SHA-256 (Debian:
libssl-dev; `make setup` installs it when missing).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._fastadmit",
            ["gateway/_fastadmit.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
