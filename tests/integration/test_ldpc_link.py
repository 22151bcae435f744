"""Two nodes reconcile with LDPC over real grpc.aio: Bob's frames decode in the node's process pool,
with the link sessions on a thread of the node or in its protocol process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("ldpc")

from qcinode.node.node import Node, NodeSettings  # noqa: E402
from qcinode.pki import cert_plan, make_certificates  # noqa: E402
from qcinode.topology import load_topology  # noqa: E402

LDPC_PAIR = """
name: pair
defaults:
  source: {rate_hz: 1.0e9}
  detector: {efficiency: 0.1, dark_count_probability: 1.0e-6, misalignment_error: 0.02}
  postprocessing: {block_bits: 150000, error_correction: ldpc}
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


def _digests(node: Node) -> dict[str, str]:
    (link,) = node.status(include_digests=True).links
    return {b.block_id: b.sha256.hex() for b in link.blocks or ()}


@pytest.mark.asyncio
@pytest.mark.parametrize("runner", ["thread", "process"])
async def test_ldpc_blocks_decoded_in_the_pool_match_at_both_ends(tmp_path: Path, runner: str) -> None:
    # "process": the sessions run in each node's protocol process, as in `qcinode up`, and the decode
    # jobs (arrays of 128 KiB) cross from it to the node's pool and back.
    path = tmp_path / "pair.yaml"
    path.write_text(LDPC_PAIR)
    topology = load_topology(path)
    certs = tmp_path / "certs"
    make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=8192)
    common = dict(topology=topology, certs_dir=certs, protocol_runner=runner)
    beta = Node(NodeSettings(name="beta", seed=41, data_dir=tmp_path / "beta", **common))
    port = await beta.start()
    alpha = Node(NodeSettings(name="alpha", seed=42, data_dir=tmp_path / "alpha", peers={"beta": f"127.0.0.1:{port}"}, **common))
    await alpha.start()
    b_link = beta.links["alpha-beta"]
    try:
        async with asyncio.timeout(120):
            while b_link.counters.blocks_done < 2:
                await asyncio.sleep(0.05)
            while not set(_digests(beta)) <= set(_digests(alpha)):
                await asyncio.sleep(0.05)
        a, b = _digests(alpha), _digests(beta)
        assert a and all(a[block] == b[block] for block in b)
        assert beta._bob_endpoint is not None and beta._bob_endpoint._decode_pool is not None  # the pool decoded them
        assert not b_link.counters.aborts_by_reason
    finally:
        await alpha.stop(0)
        await beta.stop(0)
    assert beta._bob_endpoint._decode_pool is None  # stop() shut the pool down
