from __future__ import annotations

from pathlib import Path

import pytest

TWO_NODES = """
name: pair
defaults:
  source: {rate_hz: 1.0e9}
  detector: {efficiency: 0.1, dark_count_probability: 1.0e-6, misalignment_error: 0.01}
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - name: alpha
    saes: [alpha-app]
  - name: beta
    saes: [beta-app]
links:
  - between: [alpha, beta]
    length_km: 20
"""


@pytest.fixture
def two_node_topology(tmp_path: Path) -> Path:
    path = tmp_path / "pair.yaml"
    path.write_text(TWO_NODES)
    return path
