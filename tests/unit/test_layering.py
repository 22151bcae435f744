"""The pure core imports no I/O: no asyncio, grpc, structlog or transport."""

from __future__ import annotations

import ast
from pathlib import Path

import qcinode.core
import qcinode.keys

FORBIDDEN = ("asyncio", "grpc", "grpc_health", "grpc_reflection", "structlog", "aiohttp", "qcinode.transport", "qcinode.node", "socket", "logging")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_and_pools_are_pure() -> None:
    offenders: list[str] = []
    for package in (qcinode.core, qcinode.keys):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            if package is qcinode.keys and path.name != "pool.py":
                continue  # the durable store may do file I/O; the pool may not
            for name in _imports(path):
                if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                    offenders.append(f"{path.name} imports {name}")
    assert offenders == []
