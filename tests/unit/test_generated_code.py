"""The committed protobuf code must be what ``proto/`` generates today."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcinode.transport import generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = generate.generate(out_dir=tmp_path)
    assert written, "protoc wrote nothing"
    for fresh in written:
        committed = generate.OUT_DIR / fresh.name
        assert committed.exists(), f"{committed} is missing: run python -m qcinode.transport.generate"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run python -m qcinode.transport.generate"
        )
    committed_names = {p.name for p in generate.OUT_DIR.glob("*_pb2*")}
    assert committed_names == {p.name for p in written}, "stale generated files left in pb/"
