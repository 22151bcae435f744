from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.topologies import TWO_NODES


@pytest.fixture
def two_node_topology(tmp_path: Path) -> Path:
    path = tmp_path / "pair.yaml"
    path.write_text(TWO_NODES)
    return path
