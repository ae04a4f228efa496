"""The project's layering rules, checked on the source (AST), not by importing it.

Rules (issue 10, /work/shared/DESIGN.md):
- protocol/ imports nothing of the project;
- firmware/ imports only protocol/;
- gateway/ never imports firmware/, simulator/ or city/;
- city/ never imports firmware/;
- lumeau/ imports from firmware/ only firmware.manifest (bundles), firmware.config and the apps'
  firmware.lighting / firmware.irrigation (the node's own config validators, lumeau/boards.py) and
  firmware.calendar (`lumeau calendar check --on`);
- no import cycles among the project's modules;
- no private name (`_x`) imported or reached across modules, outside tests.

How imports are read:
- Every `import` / `from ... import` in a module counts, wherever it stands: at top level, inside a
  function, inside `try:`. A lazy import inside a function still couples the two modules, and still
  runs (so it can still close a cycle at call time).
- Imports under `if TYPE_CHECKING:` count for the layer rules (a type-only import of firmware/ from
  gateway/ still ties the gateway to the node's code) but not for cycles: they never run, and they
  are the standard way to name a type without an import cycle.
- An edge goes to the most precise project module: `from gateway import store` -> gateway.store,
  `from gateway.store import Store` -> gateway.store, `import gateway.store` -> gateway.store.
  Importing a package does run its `__init__`, but no edge is added for that implicitly: a package
  whose `__init__` imports its own submodules would otherwise form a "cycle" with each of them.
- Dynamic imports (importlib.import_module with a string) are not seen.

Private names: a name `_x` (not `__dunder__`) is private to the module that defines it. Across
modules it is a violation to `from m import _x` or to read `m._x` where `m` is bound to a project
module by an import. A private *module* (`gateway._fastadmit`, `simulator.vboard._vbdrv`) may be
imported by the modules of its own package: that is how a package keeps its implementation
private. tests/ is not checked (tests may reach privates of the module they test).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Top-level directories holding the project's modules. bench/ holds scripts, not a package; its
# modules are checked as `bench.<name>` for cycles and private names.
PACKAGES = ("protocol", "firmware", "gateway", "simulator", "lumeau", "city", "bench")
SKIP_PARTS = {"__pycache__", "node_modules", ".venv", "tests"}

# (importer package, imported package) pairs that are forbidden, with the rule's wording.
FORBIDDEN = {
    ("gateway", "firmware"): "gateway/ never imports firmware/",
    ("gateway", "simulator"): "gateway/ never imports simulator/",
    ("gateway", "city"): "gateway/ never imports city/",
    ("city", "firmware"): "city/ never imports firmware/",
}
LUMEAU_FIRMWARE_ALLOWED = {
    "firmware.manifest",
    "firmware.config",
    "firmware.lighting",
    "firmware.irrigation",
    "firmware.calendar",  # `lumeau calendar check --on`: what a node does with a calendar, by the node's code
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # project module it reaches
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    names: tuple[str, ...] = ()  # for `from target import a, b`: the names imported from target


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading the tree


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def discover(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if SKIP_PARTS.intersection(path.relative_to(root).parts):
                continue
            name, is_package = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            modules[name] = Module(name, path, is_package, tree)
    # Directories without an __init__.py (bench/, simulator/vboard/) still act as namespace packages.
    for name in list(modules):
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in modules:
                modules[parent] = Module(parent, root / Path(*parts[:i]), True, ast.Module(body=[], type_ignores=[]))
    for mod in modules.values():
        mod.imports = list(read_imports(mod, modules))
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk_with_type_only(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, with whether it sits in the body of an `if TYPE_CHECKING:`."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, type_only = stack.pop()
        yield node, type_only
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, type_only) for child in node.orelse)
            stack.append((node.test, type_only))
        else:
            stack.extend((child, type_only) for child in ast.iter_child_nodes(node))


def resolve_relative(mod: Module, level: int, module: str | None) -> str:
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def project_module(name: str, modules: dict[str, Module]) -> str | None:
    """The longest prefix of a dotted name that is a project module."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def read_imports(mod: Module, modules: dict[str, Module]) -> Iterator[Import]:
    for node, type_only in walk_with_type_only(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = project_module(alias.name, modules)
                if target:
                    yield Import(mod.name, target, node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(mod, node.level, node.module) if node.level else (node.module or "")
            base = project_module(source, modules)
            if base is None:
                continue
            from_names: list[str] = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:  # `from pkg import submodule`
                    yield Import(mod.name, sub, node.lineno, type_only)
                else:
                    from_names.append(alias.name)
            if from_names:
                yield Import(mod.name, base, node.lineno, type_only, tuple(from_names))


def top(name: str) -> str:
    return name.split(".", 1)[0]


def where(mod: Module, line: int, root: Path) -> str:
    return f"{mod.path.relative_to(root).as_posix()}:{line}"


# ---------------------------------------------------------------------------- the rules


def layer_violations(modules: dict[str, Module], root: Path) -> list[str]:
    out = []
    for mod in modules.values():
        src = top(mod.name)
        for imp in mod.imports:
            dst = top(imp.target)
            if src == dst:
                continue
            rule = None
            if src == "protocol":
                rule = "protocol/ imports nothing of the project"
            elif src == "firmware" and dst != "protocol":
                rule = "firmware/ imports only protocol/"
            elif (src, dst) in FORBIDDEN:
                rule = FORBIDDEN[(src, dst)]
            elif src == "lumeau" and dst == "firmware" and imp.target not in LUMEAU_FIRMWARE_ALLOWED:
                rule = "lumeau/ imports from firmware/ only firmware.manifest, firmware.config and the apps' check"
            if rule:
                out.append(f"{where(mod, imp.line, root)}: {mod.name} imports {imp.target} ({rule})")
    return sorted(set(out), key=by_place)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    comps.append(sorted(comp))
    return comps


def one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a component, for the message."""
    members = set(comp)
    start = comp[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return paths[node] + [start]
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return comp


def runtime_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for mod in modules.values():
        for imp in mod.imports:
            if not imp.type_only and imp.target != mod.name:
                graph[mod.name].add(imp.target)
    return graph


def cycle_violations(modules: dict[str, Module], root: Path) -> list[str]:
    graph = runtime_graph(modules)
    out = []
    for comp in strongly_connected(graph):
        cycle = one_cycle(graph, comp)
        edges = []
        for a, b in zip(cycle, cycle[1:]):
            lines = sorted({i.line for i in modules[a].imports if i.target == b and not i.type_only})
            edges.append(f"{modules[a].path.relative_to(root).as_posix()}:{','.join(map(str, lines))} -> {b}")
        out.append(f"cycle among {', '.join(comp)}: " + "; ".join(edges))
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_module_allowed(importer: str, target: str) -> bool:
    """`pkg._m` may be imported by the modules of `pkg` (and below)."""
    package = target.rsplit(".", 1)[0]
    return importer == package or importer.startswith(package + ".")


def module_aliases(mod: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Local names bound to project modules by this module's imports (whole file, all scopes)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = project_module(alias.name, modules)
                if target is None:
                    continue
                if alias.asname:
                    aliases[alias.asname] = target
                else:  # `import a.b.c` binds `a`
                    aliases[alias.name.split(".")[0]] = top(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_relative(mod, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    aliases[alias.asname or alias.name] = sub
    return aliases


def private_violations(modules: dict[str, Module], root: Path) -> list[str]:
    out = []
    for mod in modules.values():
        for imp in mod.imports:
            for name in imp.names:
                # `from pkg import _m` inside pkg names a private submodule that is not a .py file
                # (gateway._fastadmit is a C extension): the package's own business.
                own = modules[imp.target].is_package and private_module_allowed(mod.name, f"{imp.target}.{name}")
                if is_private(name) and imp.target != mod.name and not own:
                    out.append(f"{where(mod, imp.line, root)}: {mod.name} imports private {imp.target}.{name}")
            last = imp.target.rsplit(".", 1)[-1]
            if not imp.names and is_private(last) and not private_module_allowed(mod.name, imp.target):
                out.append(f"{where(mod, imp.line, root)}: {mod.name} imports private module {imp.target}")
        aliases = module_aliases(mod, modules)
        if not aliases:
            continue
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.Attribute):
                continue
            # Unwind a.b.c._x into base name + attribute chain.
            chain = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if not isinstance(value, ast.Name) or value.id not in aliases:
                continue
            chain.reverse()  # attributes after the base name, outermost last
            current = aliases[value.id]
            for attr in chain:
                nxt = f"{current}.{attr}"
                if nxt in modules:  # still walking down modules
                    if is_private(attr) and not private_module_allowed(mod.name, nxt):
                        out.append(f"{where(mod, node.lineno, root)}: {mod.name} reaches private module {nxt}")
                        break
                    current = nxt
                    continue
                if is_private(attr) and current != mod.name:
                    out.append(f"{where(mod, node.lineno, root)}: {mod.name} reaches private {current}.{attr}")
                break
    return sorted(set(out), key=by_place)


def by_place(violation: str) -> tuple[str, int, str]:
    path, line, rest = violation.split(":", 2)
    return path, int(line) if line.isdigit() else 0, rest


def report(title: str, violations: list[str]) -> str:
    return f"{title}: {len(violations)} violation(s)\n  " + "\n  ".join(violations)


# ---------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return discover(ROOT)


def test_the_checker_sees_the_project(modules):
    # A checker that finds no module finds no violation: make sure it reads the real tree.
    for name in ("protocol.frame", "firmware.runtime", "gateway.pipeline", "simulator.runner", "lumeau.cli"):
        assert name in modules, name
    assert any(i.target == "protocol.frame" for m in modules.values() for i in m.imports)


def test_layers(modules):
    violations = layer_violations(modules, ROOT)
    assert not violations, report("layering rules broken", violations)


def test_no_import_cycles(modules):
    violations = cycle_violations(modules, ROOT)
    assert not violations, report("import cycles", violations)


def test_no_private_names_across_modules(modules):
    violations = private_violations(modules, ROOT)
    assert not violations, report("private names used across modules", violations)


# ---------------------------------------------------------------------------- self-test

SYNTHETIC = {
    "protocol/__init__.py": "",
    "protocol/frame.py": "from firmware import runtime\n",  # protocol imports the project
    "protocol/ok.py": "import struct\nfrom . import util\n",  # relative, inside protocol: fine
    "protocol/util.py": "",
    "firmware/__init__.py": "",
    "firmware/runtime.py": "from protocol import ok\n\ndef f():\n    from gateway import store\n",  # lazy import
    "firmware/manifest.py": "",
    "firmware/config.py": "",
    "gateway/__init__.py": "",
    "gateway/store.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from simulator import world\n"  # type-only: a layer violation, not a cycle
        "from gateway import _native\n"  # private module of its own package: fine
        "from gateway.pipeline import _helper\n"  # private name across modules
    ),
    "gateway/_native.py": "",
    "gateway/admit.py": "from gateway import _c_ext\n",  # private non-.py submodule of its package: fine
    "gateway/pipeline.py": "import gateway.store\n\ndef _helper():\n    pass\n",
    "simulator/__init__.py": "",
    "simulator/world.py": "import gateway.store as gs\nfrom simulator import runner\n\nx = gs._cache\n",
    "simulator/runner.py": "from simulator import world\nfrom gateway import _native\n",
    "city/__init__.py": "",
    "city/sink.py": "from firmware.config import validate\n",
    "lumeau/__init__.py": "",
    "lumeau/cli.py": "from firmware import manifest, config\nfrom firmware.runtime import Node\n",
}


def test_checker_catches_each_kind_of_violation(tmp_path):
    for rel, text in SYNTHETIC.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    mods = discover(tmp_path)

    layers = "\n".join(layer_violations(mods, tmp_path))
    assert "protocol/frame.py:1: protocol.frame imports firmware.runtime" in layers
    assert "firmware/runtime.py:4: firmware.runtime imports gateway.store (firmware/ imports only protocol/)" in layers
    assert "gateway/store.py:3: gateway.store imports simulator.world (gateway/ never imports simulator/)" in layers
    assert "city/sink.py:1: city.sink imports firmware.config (city/ never imports firmware/)" in layers
    assert "lumeau/cli.py:2: lumeau.cli imports firmware.runtime" in layers
    assert "lumeau.cli imports firmware.manifest" not in layers and "lumeau.cli imports firmware.config" not in layers
    assert "protocol.ok" not in layers
    assert len(layer_violations(mods, tmp_path)) == 5, layers

    cycles = cycle_violations(mods, tmp_path)
    # gateway.store <-> gateway.pipeline, simulator.world <-> simulator.runner; the TYPE_CHECKING
    # import gateway.store -> simulator.world does not join them into one cycle.
    assert len(cycles) == 2, cycles
    assert any("gateway.pipeline, gateway.store" in c for c in cycles), cycles
    assert any("simulator.runner, simulator.world" in c for c in cycles), cycles

    privates = "\n".join(private_violations(mods, tmp_path))
    assert "gateway/store.py:5: gateway.store imports private gateway.pipeline._helper" in privates
    assert "simulator/world.py:4: simulator.world reaches private gateway.store._cache" in privates
    assert "simulator/runner.py:2: simulator.runner imports private module gateway._native" in privates
    assert "gateway.store imports private module" not in privates
    assert len(private_violations(mods, tmp_path)) == 3, privates
