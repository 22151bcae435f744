"""What a node process loads at start, and the allocator tuning only large blocks get.

A hundred nodes share one machine: every module a node imports without needing
it, and every freed block a tuned allocator keeps, is paid a hundred times.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from qcinode.node import runtime


def test_a_node_does_not_import_grpc_reflection_until_someone_reflects() -> None:
    code = "import sys, qcinode.node.node; print('grpc_reflection.v1alpha.reflection' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_only_large_blocks_tune_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def tune() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(runtime, "_tune_allocator", tune)
    assert runtime.tune_allocator_for_links(50_000) is False
    assert runtime.tune_allocator_for_links(runtime.TUNE_ALLOCATOR_FROM_BLOCK_BITS - 1) is False
    assert calls == []
    assert runtime.tune_allocator_for_links(runtime.TUNE_ALLOCATOR_FROM_BLOCK_BITS) is True
    assert runtime.tune_allocator_for_links(1_000_000) is True
    assert len(calls) == 2


def test_the_zygote_preloads_the_node_but_neither_numba_nor_grpc_reflection() -> None:
    # What the zygote imports, every forked node holds: numba (80 MB) is for large blocks only.
    code = (
        "import sys; from qcinode.cli import preload_node; preload_node(); "
        "print(sorted(m for m in ('numba', 'grpc_reflection.v1alpha.reflection', 'qcinode.node.node', 'qcinode.node.interfaces') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "['qcinode.node.interfaces', 'qcinode.node.node']"
