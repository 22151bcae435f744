"""A node whose links' blocks are large enough for the compiled kernels loads them as it starts, in the
process where its link steps run, not inside the first block (which may fall in a short satellite pass)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qcinode.core import kernels
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import load_topology

PAIR = """
name: pair
defaults:
  postprocessing: {{block_bits: {block_bits}}}
nodes:
  - {{name: alpha, saes: [alpha-app]}}
  - {{name: beta, saes: [beta-app]}}
links:
  - {{between: [alpha, beta], length_km: 10}}
"""


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def _started(tmp_path: Path, block_bits: int) -> Node:
    """Beta alone (its peer never comes): no session, so no block, ever loads anything."""
    path = tmp_path / "pair.yaml"
    path.write_text(PAIR.format(block_bits=block_bits))
    topology = load_topology(path)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=4096)
    node = Node(NodeSettings(name="beta", seed=1, topology=topology, certs_dir=certs, protocol_runner="process"))
    await node.start()
    return node


@pytest.mark.asyncio
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the protocol process's memory map (Linux)")
async def test_a_node_with_large_blocks_loads_the_compiled_kernels_in_its_protocol_process_as_it_starts(tmp_path: Path) -> None:
    if not kernels.would_use_numba(kernels.NUMBA_MIN_SIZE):
        pytest.skip("compiled kernels are off here (QCINODE_KERNELS=numpy, or numba cannot be imported)")
    # 100,000 key bits with the default Z probability (0.6): ~144,000 sifted bits a block, above the threshold.
    node = await _started(tmp_path, 100_000)
    try:
        assert node.links["alpha-beta"].config.sifted_block_bits >= kernels.NUMBA_MIN_SIZE
        runner = node.offload.runner
        assert runner.remote
        async with asyncio.timeout(60):
            while runner.pid is None or "llvmlite" not in _maps(runner.pid):  # numba's compiler library, mapped once loaded
                await asyncio.sleep(0.05)
        assert node.links["alpha-beta"].counters.blocks_done == 0  # loaded without any block
    finally:
        await node.stop(0)


@pytest.mark.asyncio
async def test_a_node_whose_blocks_stay_small_does_not_load_them(tmp_path: Path) -> None:
    node = await _started(tmp_path, 20_000)
    try:
        assert node.links["alpha-beta"].config.sifted_block_bits < kernels.NUMBA_MIN_SIZE
        assert not any(task.get_name().endswith(": kernels") for task in node._tasks)
        assert any(task.get_name().endswith(": routing") for task in node._tasks)  # the names the check reads
    finally:
        await node.stop(0)
