"""Regenerates the protobuf / gRPC Python code from ``proto/``.

Run ``python -m qcinode.transport.generate`` after changing a ``.proto`` file.
The output is deterministic for a given grpcio-tools version (pinned in
pyproject's ``test`` extra); ``tests/unit/test_generated_code.py`` regenerates
into a temporary directory and fails when the committed code is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
OUT_DIR = Path(__file__).resolve().parent / "pb"
PROTOS = ("qcinode/v1/link.proto", "qcinode/v1/admin.proto", "qcinode/v1/network.proto")


def generate(out_dir: Path = OUT_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc (from grpcio-tools) and rewrites imports to be package-relative.

    Returns:
        The generated files.
    """
    import grpc_tools
    from grpc_tools import protoc  # imported lazily: a build-time dependency only

    include = Path(grpc_tools.__file__).parent / "_proto"
    with_tmp = out_dir / "_gen"
    with_tmp.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={with_tmp}",
        f"--pyi_out={with_tmp}",
        f"--grpc_python_out={with_tmp}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written: list[Path] = []
    for src in sorted(with_tmp.rglob("*.py*")):
        text = src.read_text()
        # Flatten qcinode/v1/x_pb2.py into pb/x_pb2.py with relative imports.
        text = re.sub(r"^from qcinode\.v1 import (\w+) as", r"from . import \1 as", text, flags=re.M)
        dest = out_dir / src.name
        dest.write_text(text)
        written.append(dest)
        src.unlink()
    for d in sorted(with_tmp.rglob("*"), reverse=True):
        d.rmdir()
    with_tmp.rmdir()
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    sys.exit(0)
