"""Two nodes in one event loop, real grpc.aio servers on port 0 with mutual TLS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import load_topology
from qcinode.transport.pb import admin_pb2, admin_pb2_grpc, link_pb2, link_pb2_grpc
from tests.support.waiting import until


async def _until(predicate: Callable[[], Any], timeout_s: float = 60.0) -> None:
    await until(predicate, timeout_s)


def _digests(node: Node) -> dict[str, str]:
    (link,) = node.status(include_digests=True).links
    return {b.block_id: b.sha256.hex() for b in link.blocks or ()}


@pytest.fixture
def certs(tmp_path: Path, two_node_topology: Path) -> tuple[Path, object]:
    topology = load_topology(two_node_topology)
    make_certificates(cert_plan(topology), tmp_path / "certs", bootstrap_key_bytes=4096)
    return tmp_path / "certs", topology


@pytest.mark.asyncio
async def test_two_nodes_grow_identical_keys_and_survive_a_restart(certs, tmp_path: Path) -> None:
    certs_dir, topology = certs
    beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs_dir, seed=11, data_dir=tmp_path / "beta"))
    port = await beta.start()
    alpha_settings = NodeSettings(
        topology=topology, name="alpha", certs_dir=certs_dir, peers={"beta": f"127.0.0.1:{port}"}, seed=12, data_dir=tmp_path / "alpha"
    )
    alpha = Node(alpha_settings)
    await alpha.start()
    try:
        a_link, b_link = alpha.links["alpha-beta"], beta.links["alpha-beta"]
        await _until(lambda: b_link.counters.blocks_done >= 3 and len(_digests(beta)) >= 3)
        # Alice may be one block ahead of Bob's Commit; compare what both hold.
        await _until(lambda: set(_digests(beta)) <= set(_digests(alpha)))
        common = set(_digests(alpha)) & set(_digests(beta))
        assert len(common) >= 3
        for block_id in common:
            assert _digests(alpha)[block_id] == _digests(beta)[block_id]
        assert a_link.counters.qber < 0.05 and a_link.counters.secret_bits > 0
        # Alice restarts from her data directory: the pools survive, the link
        # resumes where it was and the ends still agree on every block.
        await alpha.stop(0)
        before = _digests(beta)
        done = b_link.counters.blocks_done
        alpha = Node(alpha_settings)
        assert set(before) <= set(_digests(alpha)) | {max(before, key=lambda b: int(b.rsplit("/", 1)[1]))}
        await alpha.start()
        await _until(lambda: beta.links["alpha-beta"].counters.blocks_done >= done + 2)
        await _until(lambda: set(_digests(beta)) <= set(_digests(alpha)), timeout_s=30)
        common = set(_digests(alpha)) & set(_digests(beta))
        assert len(common & set(before)) >= len(before) - 1, "restart must not throw away the pool"
        assert all(_digests(alpha)[b] == _digests(beta)[b] for b in common)
    finally:
        await alpha.stop(0)
        await beta.stop(0)


@pytest.mark.asyncio
async def test_a_node_that_is_not_the_transmitter_is_refused(certs) -> None:
    certs_dir, topology = certs
    beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs_dir, seed=1))
    port = await beta.start()
    try:
        # beta's own certificate: a node, but not alpha, so not the link's transmitter.
        creds = grpc.ssl_channel_credentials(
            (certs_dir / "ca.pem").read_bytes(), (certs_dir / "nodes" / "beta.key").read_bytes(), (certs_dir / "nodes" / "beta.pem").read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "beta")]) as channel:
            call = link_pb2_grpc.PostProcessingStub(channel).Session()
            await call.write(link_pb2.ClassicalMessage(hello=link_pb2.Hello(link_id="alpha-beta", role="alice")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert beta.links["alpha-beta"].pool.total_available_bytes == 0
    finally:
        await beta.stop(0)


@pytest.mark.asyncio
async def test_client_without_a_cluster_certificate_cannot_connect(certs, tmp_path: Path) -> None:
    from qcinode.pki import CertPlan

    certs_dir, topology = certs
    other = make_certificates(CertPlan("other", ("alpha",), (), ()), tmp_path / "other")
    beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs_dir, seed=1))
    port = await beta.start()
    try:
        creds = grpc.ssl_channel_credentials(
            (certs_dir / "ca.pem").read_bytes(), other.node_key("alpha").read_bytes(), other.node_cert("alpha").read_bytes()
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "beta")]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin_pb2_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await beta.stop(0)


@pytest.mark.asyncio
async def test_alice_sends_the_next_blocks_frames_while_a_block_is_post_processed(
    certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real link's source does not stop for post-processing: while Cascade's
    # round trips run, the next block's frames go out and are sifted into its
    # own buffer (the pipeline's rule 2a), and both ends still end with the
    # same keys.
    from qcinode.node.protocol_worker import RemoteLink

    emitted: list[bool] = []  # per frame: did a block wait in post-processing as it went out
    emit = RemoteLink.emit_frame

    async def recording(self: RemoteLink, *args: Any) -> tuple[int, int, bytes]:
        emitted.append(not self.mirror.is_ready_for_frame)
        return await emit(self, *args)

    monkeypatch.setattr(RemoteLink, "emit_frame", recording)
    certs_dir, topology = certs
    beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs_dir, seed=21, data_dir=tmp_path / "beta"))
    port = await beta.start()
    alpha = Node(
        NodeSettings(topology=topology, name="alpha", certs_dir=certs_dir, peers={"beta": f"127.0.0.1:{port}"}, seed=22, data_dir=tmp_path / "alpha")
    )
    await alpha.start()
    try:
        b_link = beta.links["alpha-beta"]
        await _until(lambda: b_link.counters.blocks_done >= 4 and len(_digests(beta)) >= 4)
        await _until(lambda: set(_digests(beta)) <= set(_digests(alpha)))
        assert any(emitted), f"no frame went out while a block was post-processed ({len(emitted)} frames)"
        common = set(_digests(alpha)) & set(_digests(beta))
        assert len(common) >= 4 and all(_digests(alpha)[b] == _digests(beta)[b] for b in common)
        assert alpha.links["alpha-beta"].counters.blocks_aborted == 0
    finally:
        await alpha.stop(0)
        await beta.stop(0)


@pytest.mark.asyncio
async def test_a_node_that_stops_ends_its_peers_streams_itself(certs, caplog: pytest.LogCaptureFixture) -> None:
    # The transmitter keeps its pulse stream open while Bob's node stops: Bob
    # ends the stream himself within the grace period (status OK), instead of
    # gRPC cancelling it after that and logging an unhandled error.
    import logging

    certs_dir, topology = certs
    beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs_dir, seed=31))
    port = await beta.start()
    creds = grpc.ssl_channel_credentials(
        (certs_dir / "ca.pem").read_bytes(), (certs_dir / "nodes" / "alpha.key").read_bytes(), (certs_dir / "nodes" / "alpha.pem").read_bytes()
    )
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "beta")]) as channel:
            call = link_pb2_grpc.QuantumChannelStub(channel).Transmit()
            # Beta's handler is running once its headers arrive (wait_for_connection only
            # means the call reached the server, which may not have dispatched it yet).
            await call.initial_metadata()
            with caplog.at_level(logging.ERROR, logger="grpc"):
                # A grace long enough for a loaded machine: Bob ends the stream at once, and only a
                # stream he left open would be cancelled when it runs out.
                await beta.stop(5.0)
            assert await call.code() == grpc.StatusCode.OK
        unhandled = [r.getMessage() for r in caplog.records if r.name.startswith("grpc") and r.levelno >= logging.ERROR]
        assert unhandled == []
    finally:
        await beta.stop(0)
