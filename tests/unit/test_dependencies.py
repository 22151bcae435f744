"""`pip install -e .` alone runs qcinode: the package imports only the standard library and its declared dependencies.

The test tools (pytest, hypothesis, grpcio-tools, kubectl, kubernetes-validate)
and matplotlib are extras; only the pytest plugin (loaded by pytest itself)
and the protobuf generator (a build step) may use them.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import qcinode

ROOT = Path(__file__).resolve().parents[2]
# Distribution name -> the top-level modules it installs.
IMPORT_NAMES = {
    "grpcio": {"grpc"},
    "grpcio-health-checking": {"grpc_health"},
    "grpcio-reflection": {"grpc_reflection"},
    "protobuf": {"google"},
    "cryptography": {"cryptography"},
    "structlog": {"structlog"},
    "numpy": {"numpy"},
    "PyYAML": {"yaml"},
    "aiohttp": {"aiohttp"},
    "prometheus-client": {"prometheus_client"},
    "sgp4": {"sgp4"},
    "numba": {"numba"},
}
# Modules that run only where the extra is installed: the pytest plugin, the code generator,
# LDPC reconciliation (imported inside the functions that need it: error_correction: ldpc).
EXTRA_USERS = {
    "testing/__init__.py": {"pytest"},
    "transport/generate.py": {"grpc_tools"},
    "core/ldpc_codes.py": {"scipy"},
    "core/ldpc_reconciliation.py": {"ldpc"},
}


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement


def test_every_runtime_dependency_is_known_here() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_requirement_name(r) for r in project["dependencies"]} == set(IMPORT_NAMES)


def test_the_package_imports_only_the_standard_library_and_its_dependencies() -> None:
    allowed = set(sys.stdlib_module_names) | {"qcinode"} | set().union(*IMPORT_NAMES.values())
    package = Path(qcinode.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("transport/pb/"):
            continue  # generated: grpc and protobuf only
        extra = EXTRA_USERS.get(relative, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".", 1)[0]
                if top not in allowed and top not in extra:
                    offenders.append(f"{relative}: import {name}")
    assert offenders == []
