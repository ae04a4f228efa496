"""Types of gateway/_fastadmit.c (the compiled admission path), for mypy: it cannot read the extension."""

from typing import Any

_Plans = dict[int, tuple[tuple[int, ...], tuple[tuple[int, int, int, int, bytes], ...]]]  # gateway.bodies.fast_plans()

class Admitter:
    # registry: anything with get(node_id) -> an entry with .keys (protocol.keys.NodeKeys), or None
    def __init__(self, registry: Any, plans: _Plans) -> None: ...
    # None: not sure (the Python path decides); else (node_id, counter, mtype, body, plain), body and
    # plain None for a copy of a frame whose bytes already verified
    def admit(self, raw: bytes, /) -> tuple[int, int, int, dict[int, Any] | None, bytes | None] | None: ...
    def forget(self, node_id: int, /) -> None: ...
    def clear(self) -> None: ...
    def stats(self) -> dict[str, int]: ...  # fast, copies, unsure, nodes
