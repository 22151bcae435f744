"""Admin client: asks running nodes for their status over mTLS gRPC.

Every call goes through :func:`~qcinode.transport.errors.rpc_errors`: a
failed call raises :class:`~qcinode.errors.PeerUnavailable`,
:class:`~qcinode.errors.PeerTimeout` or :class:`~qcinode.errors.PeerRefused`
(with the status code's name and the node's details), never a gRPC error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from ..errors import TransportError
from ..status import NodeStatus
from ..transport.admin import status_from_pb
from ..transport.errors import rpc_errors
from ..transport.pb import admin_pb2, admin_pb2_grpc


def admin_channel(address: str, server_name: str, certs_dir: Path) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs_dir / "ca.pem").read_bytes(),
        private_key=(certs_dir / "admin.key").read_bytes(),
        certificate_chain=(certs_dir / "admin.pem").read_bytes(),
    )
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", server_name)])


def node_status(
    address: str, server_name: str, certs_dir: Path, *, timeout_s: float = 5.0, digests: bool = False, ledger: bool = False
) -> NodeStatus:
    """One node's report (:class:`~qcinode.status.NodeStatus`).

    ``digests`` adds each pool block's SHA-256; ``ledger`` each link's
    ledger: every used pool range and which end initiated it (for audits).

    Raises:
        TransportError: The call failed (PeerUnavailable, PeerTimeout or PeerRefused).
        RemoteProtocolError: The answer names a state or reason this version does not know.
    """
    with admin_channel(address, server_name, certs_dir) as channel, rpc_errors(f"status of {server_name} at {address}"):
        request = admin_pb2.StatusRequest(include_block_digests=digests, include_ledger=ledger)
        reply = admin_pb2_grpc.AdminStub(channel).Status(request, timeout=timeout_s)
    return status_from_pb(reply)


def health_check(address: str, server_name: str, certs_dir: Path, timeout_s: float = 2.0) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with admin_channel(address, server_name, certs_dir) as channel, rpc_errors(f"health of {server_name} at {address}"):
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except TransportError:
        return False


def set_eavesdropper(address: str, server_name: str, certs_dir: Path, link_id: str, attack: str, fraction: float) -> dict[str, Any]:
    """Switches an eavesdropper on (or, with attack "none", off) at the link's transmitting node."""
    with admin_channel(address, server_name, certs_dir) as channel, rpc_errors(f"eavesdropper at {server_name} at {address}"):
        reply = admin_pb2_grpc.AdminStub(channel).SetEavesdropper(
            admin_pb2.EavesdropperRequest(link_id=link_id, attack=attack, fraction=fraction), timeout=5.0
        )
    return {"link_id": reply.link_id, "attack": reply.attack, "fraction": reply.fraction}


def set_fault(
    address: str, server_name: str, certs_dir: Path, link_id: str, kind: str, probability: float, delay_ms: float, channel: str
) -> dict[str, Any]:
    """Switches a classical-channel fault on (or, with kind "none", off) at one end of a link."""
    with admin_channel(address, server_name, certs_dir) as channel_, rpc_errors(f"fault at {server_name} at {address}"):
        reply = admin_pb2_grpc.AdminStub(channel_).SetFault(
            admin_pb2.FaultRequest(link_id=link_id, kind=kind, probability=probability, delay_ms=delay_ms, channel=channel),
            timeout=5.0,
        )
    return {"link_id": reply.link_id, "kind": reply.kind, "probability": reply.probability, "delay_ms": reply.delay_ms, "channel": reply.channel}
