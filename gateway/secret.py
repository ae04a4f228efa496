"""A secret read from the configuration (an API token, a broker or SMTP password, a webhook
signing key): used and compared, never printed, so no log line, repr or error message can
carry it (gateway/config.py, gateway/notify_config.py)."""

from __future__ import annotations

import secrets


class Secret:
    """A token or password: compared and used, never printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)
