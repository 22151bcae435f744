"""Secrets at rest and who may look: file modes, the storage key outside the data directory, reflection.

Logs hold key IDs and the data directory holds link pools and waiting keys:
everything a node or ``qcinode up`` writes is 0600 in 0700 directories. The
storage key can live outside the data directory, so a copy of the data
volume alone reveals nothing. gRPC server reflection answers node and admin
certificates only.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from qcinode.cluster.launcher import Cluster, _private_log
from qcinode.errors import KeyStoreError
from qcinode.keys.linkstore import KEY_FILE, LinkStore, StorageKey
from qcinode.node.node import Node, NodeSettings
from qcinode.pki import cert_plan, make_certificates
from qcinode.topology import load_topology


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_launcher_keeps_state_logs_and_data_private(tmp_path: Path, two_node_topology: Path) -> None:
    old = os.umask(0o022)
    try:
        cluster = Cluster(two_node_topology, tmp_path / "state")
        cluster.prepare()
        for private in (cluster.state_dir, cluster.state_dir / "logs", cluster.state_dir / "data", cluster.certs_dir, cluster.certs_dir / "links"):
            assert _mode(private) == 0o700, private
        log = tmp_path / "state" / "logs" / "alpha.log"
        log.write_text("an older log made with the umask\n")
        log.chmod(0o644)
        _private_log(log).close()
        assert _mode(log) == 0o600
        _private_log(tmp_path / "state" / "logs" / "beta.log").close()
        assert _mode(tmp_path / "state" / "logs" / "beta.log") == 0o600
    finally:
        os.umask(old)


def test_a_storage_key_outside_the_data_directory(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        key_file = tmp_path / "secrets" / "alpha.key"
        data = tmp_path / "data"
        with LinkStore(data, "alpha", storage_key=StorageKey.load_or_create_file(key_file)) as store:
            store.save("alpha-beta", {"pool": "state"})
        assert _mode(key_file) == 0o600 and _mode(key_file.parent) == 0o700 and len(key_file.read_bytes()) == 32
        assert not (data / KEY_FILE).exists()
        for database in data.glob("links.sqlite3*"):
            assert _mode(database) == 0o600, database
        with LinkStore(data, "alpha", storage_key=StorageKey.load_or_create_file(key_file)) as store:
            assert store.load("alpha-beta") == {"pool": "state"}
        # A copy of the data directory alone opens nothing.
        with pytest.raises(KeyStoreError, match="storage key"):
            LinkStore(data, "alpha")
    finally:
        os.umask(old)


@pytest.mark.asyncio
async def test_a_node_runs_with_its_storage_key_outside_the_data_directory(tmp_path: Path, two_node_topology: Path) -> None:
    topology = load_topology(two_node_topology)
    make_certificates(cert_plan(topology), tmp_path / "certs", bootstrap_key_bytes=4096)
    key_file = tmp_path / "secret" / "beta.key"
    settings = NodeSettings(topology=topology, name="beta", certs_dir=tmp_path / "certs", data_dir=tmp_path / "beta", storage_key_file=key_file)
    node = Node(settings)
    await node.start()
    await node.stop(0)
    assert key_file.exists() and not (tmp_path / "beta" / KEY_FILE).exists()
    assert {p.name for p in (tmp_path / "beta").iterdir()} >= {"links.sqlite3", "sae_keys.sqlite3"}
    node = Node(settings)  # restarts with the same key
    await node.start()
    await node.stop(0)


@pytest.mark.asyncio
async def test_reflection_answers_node_and_admin_certificates_only(tmp_path: Path, two_node_topology: Path) -> None:
    topology = load_topology(two_node_topology)
    bundle = make_certificates(cert_plan(topology), tmp_path / "certs", bootstrap_key_bytes=4096)
    node = Node(NodeSettings(topology=topology, name="beta", certs_dir=tmp_path / "certs", kme_listen=None, metrics_listen=None))
    port = await node.start()

    async def list_services(cert: Path, key: Path) -> tuple[grpc.StatusCode, list[str]]:
        creds = grpc.ssl_channel_credentials(bundle.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "beta")]) as channel:
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=10)
            try:
                # A refusal may come back while we are still writing: the server answers at once.
                await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                await call.done_writing()
                names = [s.name async for reply in call for s in reply.list_services_response.service]
            except grpc.aio.AioRpcError as exc:
                return exc.code(), []
            return grpc.StatusCode.OK, names

    try:
        code, names = await list_services(bundle.node_cert("alpha"), bundle.node_key("alpha"))
        assert code is grpc.StatusCode.OK and "qcinode.v1.Network" in names
        code, names = await list_services(bundle.admin_cert, bundle.admin_key)
        assert code is grpc.StatusCode.OK and names
        for sae in ("alpha-app", "beta-app"):
            code, names = await list_services(bundle.sae_cert(sae), bundle.sae_key(sae))
            assert code is grpc.StatusCode.PERMISSION_DENIED and names == []
    finally:
        await node.stop(0)
        await asyncio.sleep(0)
