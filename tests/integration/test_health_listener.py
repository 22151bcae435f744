"""The plaintext health-only gRPC listener that kubelet probes use (loopback sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qcinode.cluster import k8s
from qcinode.topology import load_topology


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.asyncio
async def test_health_listener_serves_plaintext_health_only(tmp_path: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from qcinode.node.node import Node, NodeSettings

    topology_path = _write(tmp_path / "solo.yaml", "name: solo\nnodes: [{name: solo, saes: [solo-app]}]\n")
    overlay = k8s.render_overlay(topology_path, tmp_path / "out")
    settings = NodeSettings(
        topology=load_topology(topology_path),
        name="solo",
        certs_dir=overlay.certs,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
        kme_listen=None,
        metrics_listen=None,
        health_listen="127.0.0.1:0",
    )
    node = Node(settings)
    await node.start()
    try:
        assert node.health_port and node.health_port != node.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Only the health service is there: reflection and the node's services are not.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")(b"", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):  # the node's port needs mutual TLS
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        await node.stop(grace_s=0)
    await asyncio.sleep(0)
