"""The pure core (link key pools and the relay engine included) imports no I/O: no asyncio, grpc, structlog or transport."""

from __future__ import annotations

import ast
from pathlib import Path

import qcinode.core

FORBIDDEN = (
    "asyncio", "grpc", "grpc_health", "grpc_reflection", "structlog", "aiohttp", "socket", "logging",
    # the layers above the core
    "qcinode.transport", "qcinode.node", "qcinode.keys", "qcinode.kme", "qcinode.cluster", "qcinode.testing",
    "qcinode.topology", "qcinode.cli",
)  # fmt: skip


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` (in ``package``) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from .. import keys`
    return found


def test_core_is_pure() -> None:
    offenders: list[str] = []
    root = Path(qcinode.core.__file__).parent
    for path in sorted(root.rglob("*.py")):
        package = ".".join(["qcinode", "core", *path.relative_to(root).parent.parts])
        for name in _imports(path, package):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                offenders.append(f"{path.relative_to(root)} imports {name}")
    assert offenders == []
