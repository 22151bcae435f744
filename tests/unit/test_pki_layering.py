"""Identity sits below every user of it: nothing imports upward to reach a certificate.

``qcinode.pki`` is imported by the node, the KME and the cluster tools; it
imports none of them (only errors and the topology model), and neither the
node nor the KME reaches into ``qcinode.cluster``, nor the cluster into
``qcinode.node``, not even inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qcinode

ROOT = Path(qcinode.__file__).parent


def _absolute_imports(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere (function bodies included), as absolute names."""
    package = ".".join(("qcinode", *path.relative_to(ROOT).with_suffix("").parts[:-1]))
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in files:
        for name in sorted(_absolute_imports(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_pki_imports_nothing_above_it() -> None:
    assert _offenders([ROOT / "pki.py"], ("qcinode.node", "qcinode.kme", "qcinode.cluster", "qcinode.transport", "qcinode.cli", "qcinode.testing")) == []


def test_node_and_kme_do_not_import_the_cluster_tools() -> None:
    files = sorted((ROOT / "node").rglob("*.py")) + sorted((ROOT / "kme").rglob("*.py"))
    assert _offenders(files, ("qcinode.cluster", "qcinode.cli", "qcinode.testing")) == []


def test_cluster_tools_do_not_import_the_node() -> None:
    assert _offenders(sorted((ROOT / "cluster").rglob("*.py")), ("qcinode.node",)) == []


def test_the_old_certificate_module_is_gone() -> None:
    assert not (ROOT / "cluster" / "certs.py").exists()
