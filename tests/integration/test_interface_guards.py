"""Every HTTPS interface of a node holds no door open, not only ETSI 014: real HTTPS on 127.0.0.1, port 0.

The ETSI 020 server (between networks) and the SKIP server are served with
small ``kme:`` timeouts: a client that opens TCP and never starts the TLS
handshake, and one that completes TLS but never finishes its headers, are
each closed by the server (EOF or reset), logged with the interface's name,
and a normal request is still answered afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey
from qcinode.kme import skip
from qcinode.kme.etsi020 import server as etsi020
from qcinode.kme.etsi020.protocol import AckContainer, ExtKeysRequest, VoidRequest
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme
from qcinode.kme.server import tls_context
from qcinode.pki import CertBundle, CertPlan, make_certificates
from qcinode.topology import KmeConfig
from tests.integration.test_kme_hardening import _dropped

NODE, PEER_KME = "alpha", "beta"  # beta plays the other network's interworking KME
SAES = ("alice-app", "bob-app")
LIMITS = KmeConfig(tls_handshake_timeout_s=0.5, header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=5.0)


class _Backend:
    """A 020 backend that is never reached by the requests of these tests."""

    peer_kme = PEER_KME

    def start_ext_keys(self, request: ExtKeysRequest) -> Awaitable[list[AckContainer]]:
        raise AssertionError("not called")

    def accept_acks(self, acks: list[AckContainer]) -> None:
        raise AssertionError("not called")

    def start_void(self, request: VoidRequest) -> Awaitable[list[AckContainer]]:
        raise AssertionError("not called")


class _Supplier:
    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        raise AssertionError("not called")

    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        return 0


@dataclass
class Served:
    interface: str
    port: int
    client: ssl.SSLContext  # a certificate the server accepts
    path: str  # a GET it answers 200
    partial_head: bytes  # a request line and a header, never the blank line

    async def get(self) -> int:
        connector = aiohttp.TCPConnector(ssl=self.client)
        async with (
            aiohttp.ClientSession(f"https://127.0.0.1:{self.port}", connector=connector) as session,
            session.get(self.path) as response,
        ):
            await response.read()
            return response.status


def _client(bundle: CertBundle, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(bundle.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    return context


@pytest_asyncio.fixture(params=["etsi020", "skip"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    plan = CertPlan(cluster_name="guards", nodes=(NODE, PEER_KME), saes=SAES, links=())
    bundle = make_certificates(plan, tmp_path / "certs")
    if request.param == "etsi020":
        # One CA plays both operators' here: what is under test is the door, not who may pass it.
        context = etsi020.server_tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert)
        runner, port = await etsi020.start_server(etsi020.make_app(_Backend()), "127.0.0.1:0", context, LIMITS)
        client = _client(bundle, bundle.node_cert(PEER_KME), bundle.node_key(PEER_KME))
        served = Served("etsi020", port, client, "/kmapi/versions", b"GET /kmapi/versions HTTP/1.1\r\nHost: x\r\n")
        try:
            yield served
        finally:
            await runner.cleanup()
        return
    context = tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert)
    client = _client(bundle, bundle.sae_cert("alice-app"), bundle.sae_key("alice-app"))
    async with skip_server(tmp_path / "data", context, LIMITS) as port:
        yield Served("skip", port, client, "/capabilities", b"GET /capabilities HTTP/1.1\r\nHost: x\r\n")


@contextlib.asynccontextmanager
async def skip_server(data_dir: Path, context: ssl.SSLContext, limits: KmeConfig) -> AsyncIterator[int]:
    """Node alpha's SKIP server for :data:`SAES` on 127.0.0.1 with ``limits``; its port."""
    store = SaeKeyStore(data_dir, NODE, StorageKey.load_or_create(data_dir))
    kme = Kme(NODE, lambda sae: NODE if sae in SAES else None, store)
    app = skip.make_app(kme, _Supplier(), remote_systems=lambda caller: [s for s in SAES if s != caller])
    runner, port = await skip.start_server(app, "127.0.0.1:0", context, limits)
    try:
        yield port
    finally:
        await runner.cleanup()
        store.close()


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.asyncio
async def test_a_client_that_never_starts_the_handshake_is_dropped(served: Served) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)  # TCP only: no ClientHello
        assert await _dropped(reader)
        writer.close()
        assert await served.get() == 200  # the door still opens for a normal client
    (refused,) = _events(logs, "kme.tls_refused")
    assert refused["interface"] == served.interface
    assert refused["reason"] == "tls_handshake_timeout" and refused["caller"].startswith("127.0.0.1:")


@pytest.mark.asyncio
async def test_a_client_that_never_finishes_its_headers_is_dropped(served: Served) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=served.client)
        writer.write(served.partial_head)  # TLS done, the request begun, never the blank line
        await writer.drain()
        assert await _dropped(reader)
        writer.close()
        assert await served.get() == 200
    (dropped,) = _events(logs, "kme.connection_dropped")
    assert dropped["interface"] == served.interface and dropped["reason"] == "header_timeout"
    assert dropped["caller"] == (PEER_KME if served.interface == "etsi020" else "alice-app")
