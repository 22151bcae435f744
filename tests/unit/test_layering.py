"""The layers of the package: nothing imports upward, nothing imports in a circle, the core imports no I/O.

The layers, lowest first (docs/design.md §3 draws them):

    errors                                          the exception taxonomy
    core                                            pure protocol logic and physics
    topology                                        the topology model
    pki  space  status  keys  logs                  identity, orbits, the status model, stores, logging
    transport                                       protobuf <-> core and status; the gRPC error tables
    kme                                             ETSI 014 (handlers pure, the aiohttp adapter)
    node                                            the node process
    cluster                                         local launcher, admin client, Kubernetes rendering
    testing  cli  __main__                          the pytest plugin, the command line

:data:`ALLOWED` says, for each part, which parts below it it may import
(function bodies included, so a "hidden" import inside a function counts).
A part not listed there fails the test until it is placed, and so does an
import between modules that closes a cycle, inside a part or across parts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import qcinode

ROOT = Path(qcinode.__file__).parent
GENERATED = ROOT / "transport" / "pb"

# The packages whose modules form one part; any other module is a part of its own.
PACKAGES = ("core", "keys", "kme", "node", "cluster", "transport", "testing")

#: Part -> the parts it may import (besides itself). Read top-down: each row names only rows above it.
ALLOWED: dict[str, frozenset[str]] = {
    "qcinode": frozenset(),  # the package itself: its version
    "qcinode.errors": frozenset(),
    "qcinode.core": frozenset({"qcinode.errors"}),
    "qcinode.topology": frozenset({"qcinode.core", "qcinode.errors"}),
    "qcinode.pki": frozenset({"qcinode.core", "qcinode.errors", "qcinode.topology"}),
    "qcinode.space": frozenset({"qcinode.core", "qcinode.errors", "qcinode.topology"}),
    "qcinode.status": frozenset({"qcinode.core", "qcinode.errors"}),
    "qcinode.keys": frozenset({"qcinode.core", "qcinode.errors"}),
    "qcinode.logs": frozenset(),
    "qcinode.transport": frozenset({"qcinode.core", "qcinode.errors", "qcinode.status"}),
    "qcinode.kme": frozenset({"qcinode.errors", "qcinode.pki", "qcinode.topology"}),
    "qcinode.node": frozenset(
        {
            "qcinode.core", "qcinode.errors", "qcinode.topology", "qcinode.pki", "qcinode.space", "qcinode.status",
            "qcinode.keys", "qcinode.logs", "qcinode.transport", "qcinode.kme",
        }
    ),  # fmt: skip
    "qcinode.cluster": frozenset(
        {"qcinode", "qcinode.core", "qcinode.errors", "qcinode.topology", "qcinode.pki", "qcinode.status", "qcinode.keys", "qcinode.transport"}
    ),
    "qcinode.testing": frozenset({"qcinode.errors", "qcinode.topology", "qcinode.kme", "qcinode.cluster"}),
    "qcinode.cli": frozenset(
        {
            "qcinode", "qcinode.core", "qcinode.errors", "qcinode.topology", "qcinode.pki", "qcinode.space", "qcinode.status",
            "qcinode.keys", "qcinode.logs", "qcinode.transport", "qcinode.kme", "qcinode.node", "qcinode.cluster",
        }
    ),  # fmt: skip
    "qcinode.__main__": frozenset({"qcinode.cli"}),
}

# What the pure core may not import: I/O, concurrency, logging, the wire.
CORE_FORBIDDEN = (
    "asyncio", "grpc", "grpc_health", "grpc_reflection", "structlog", "aiohttp", "socket", "logging", "sqlite3",
    "google.protobuf", "threading", "subprocess",
)  # fmt: skip


def module_name(path: Path, root: Path = ROOT, package: str = "qcinode") -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute names of every module ``path`` (module ``name``) imports, anywhere in it, relative imports resolved.

    ``from x import y`` yields ``x`` and ``x.y`` (``y`` may be a submodule).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_graph(root: Path = ROOT, package: str = "qcinode") -> dict[str, set[str]]:
    """Module -> the package's modules it imports (generated code left out)."""
    paths = {module_name(p, root, package): p for p in sorted(root.rglob("*.py")) if GENERATED not in p.parents}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        graph[name] = {m for m in imports_of(path, name) if m in paths and m != name}
    return graph


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in PACKAGES:
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]


def upward_imports(graph: Mapping[str, Iterable[str]], allowed: Mapping[str, frozenset[str]]) -> list[str]:
    """Every import that leaves its part for one its row in ``allowed`` does not name (and every unplaced part)."""
    out = []
    for module, targets in sorted(graph.items()):
        part = part_of(module)
        if part not in allowed:
            out.append(f"{module}: part {part} has no row in ALLOWED")
            continue
        for target in sorted(targets):
            other = part_of(target)
            # A package's __init__ is part of its package; `qcinode` itself is the version only.
            if other != part and other not in allowed[part]:
                out.append(f"{module} imports {target} ({part} may not import {other})")
    return out


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_init_edges(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """The graph without a package ``__init__``'s imports of its own submodules.

    ``qcinode.core.relay`` re-exporting its submodules while they import each
    other through the package is how Python packages are built, not a cycle
    between layers; the submodules' own imports still count.
    """
    return {module: {t for t in targets if not t.startswith(module + ".")} for module, targets in graph.items()}


#: Cycles closed by an import inside a function, known and to be broken where they are: the finite-key
#: analyses (``estimation.expected_key_length`` dispatches to ``finite_key``, which builds on
#: ``estimation``) and LDPC reconciliation (``reconciliation`` picks ``ldpc_reconciliation``'s sessions,
#: which take their limits from ``reconciliation``). Those modules change on another branch now; this list
#: may only shrink (a cycle that no longer exists fails ``test_known_cycles_still_exist``).
KNOWN_CYCLES: list[list[str]] = [
    ["qcinode.core.estimation", "qcinode.core.finite_key"],
    ["qcinode.core.ldpc_reconciliation", "qcinode.core.reconciliation"],
]

GRAPH = module_graph()


def test_every_part_is_placed_and_nothing_imports_upward() -> None:
    assert upward_imports(GRAPH, ALLOWED) == []


def test_no_import_cycles() -> None:
    assert [cycle for cycle in cycles(_package_init_edges(GRAPH)) if cycle not in KNOWN_CYCLES] == []


def test_known_cycles_still_exist() -> None:
    found = cycles(_package_init_edges(GRAPH))
    assert [cycle for cycle in KNOWN_CYCLES if cycle not in found] == [], "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_the_table_itself_is_a_hierarchy() -> None:
    # Each row may name only rows above it: the allowed imports form no cycle either.
    order = list(ALLOWED)
    for position, (part, below) in enumerate(ALLOWED.items()):
        assert below <= set(order[:position]), f"{part} may import a part listed after it: {sorted(below - set(order[:position]))}"


def test_core_is_pure() -> None:
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        name = module_name(path)
        for imported in sorted(imports_of(path, name)):
            if any(imported == bad or imported.startswith(bad + ".") for bad in CORE_FORBIDDEN):
                offenders.append(f"{name} imports {imported}")
    assert offenders == []


def test_the_kme_handlers_do_no_io() -> None:
    # The ETSI 014 decisions are pure: the key store is behind a Protocol, the web server is the adapter's.
    forbidden = ("aiohttp", "asyncio", "sqlite3", "qcinode.keys")
    found = imports_of(ROOT / "kme" / "handlers.py", "qcinode.kme.handlers")
    assert [m for m in sorted(found) if any(m == bad or m.startswith(bad + ".") for bad in forbidden)] == []


# -- the checks can fail --------------------------------------------------------------------


def test_an_upward_import_is_reported() -> None:
    graph = {"qcinode.core.pool": {"qcinode.node.runtime"}, "qcinode.node.runtime": {"qcinode.core.pool"}}
    assert upward_imports(graph, ALLOWED) == ["qcinode.core.pool imports qcinode.node.runtime (qcinode.core may not import qcinode.node)"]
    assert upward_imports({"qcinode.newpart": set()}, ALLOWED) == ["qcinode.newpart: part qcinode.newpart has no row in ALLOWED"]


def test_a_hidden_import_inside_a_function_counts(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "cluster").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cluster" / "__init__.py").write_text("")
    (package / "cluster" / "launcher.py").write_text("def plan():\n    from ..node.node import cert_plan\n    return cert_plan\n")
    assert imports_of(package / "cluster" / "launcher.py", "pkg.cluster.launcher") >= {"pkg.node.node", "pkg.node.node.cert_plan"}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_a_cycle_is_reported(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected
