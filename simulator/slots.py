"""Firmware classes with their fields as __slots__: the same code, a compact layout, for runs of many nodes.

    Fast = slotted(firmware.runtime.Node)     # a subclass: same name, same methods, same behaviour

CPython keeps an object's attributes in an instance dict unless its class
names them in `__slots__`; a dict of the thirty-odd to forty-odd fields
the firmware's runtime and apps have costs a hashed lookup per read or
write (a dict past 30 keys no longer shares its keys with the class's other
instances), where a slot is a fixed offset in the object. A city run sweeps
through hundreds of nodes' objects at every tick, so the lookups also miss
the cache. `slotted` makes the subclass with a slot for every field the
class's own code assigns on self (`instance_fields`, read from the source
with ast, so nothing here has to follow the firmware's changes); a field
it misses still goes to the instance's __dict__ (the firmware's classes
have one), and a name the class itself defines (a method, a constant)
never becomes a slot, which would hide it.

Used by simulator/engine.py (the runtime it boots, the ticked apps);
tests/test_sim_layout.py runs a district both ways.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap


@functools.cache
def instance_fields(cls: type) -> tuple[str, ...]:
    """The names `cls`'s own code assigns on self (`self.x = ...`) that are no class attribute, sorted.

    Read from the source of every class of its MRO (ast), so a field added to an app
    is found without a list to keep up to date here. Once per class and process: a run
    slots its apps afresh (engine.ticked), and parsing their modules cost some 0.8 CPU s
    each time (a Dask worker runs several areas, one after the other).
    """
    names: set[str] = set()
    for c in cls.__mro__:
        if c is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(c)))
        except (OSError, TypeError):  # no source (a C class, an interactive one): its fields stay in __dict__
            continue
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
            ):
                names.add(n.attr)
    return tuple(sorted(x for x in names if not hasattr(cls, x)))


def slotted(cls: type) -> type:
    """`cls` with its fields as slots (see the module docstring): same name, same behaviour, a compact layout."""
    return type(cls.__name__, (cls,), {"__slots__": instance_fields(cls), "__module__": cls.__module__})
