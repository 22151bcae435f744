"""The ETSI 014 server gives nothing away and holds no door open: real HTTPS on 127.0.0.1, port 0.

Slow and idle clients are dropped within the configured timeouts while
normal requests keep being served; failed TLS client authentication and
every refused request are logged with the caller's identity and the reason;
503 bodies name no internals; duplicate JSON keys are refused; the per-SAE
limits refuse with 503 naming the limit, consuming nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from qcinode.errors import PeerUnavailable, QcinodeError
from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme
from qcinode.kme.server import make_app, start_kme_server, tls_context
from qcinode.pki import CertBundle, CertPlan, make_certificates
from qcinode.topology import KmeConfig

NODE = "alpha"
SAES = ("alice-app", "bob-app")
LIMITS = KmeConfig(tls_handshake_timeout_s=1.0, header_timeout_s=1.0, body_timeout_s=1.0, idle_timeout_s=1.0)
DEADLINE_S = 10.0  # a bound on every wait, far above the timeouts under test


class Supplier:
    def __init__(self, store: SaeKeyStore) -> None:
        self.store = store
        self.calls: list[EncRequest] = []
        self.fail: QcinodeError | None = None

    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        self.calls.append(request)
        if self.fail is not None:
            raise self.fail
        keys = [DeliveredKey(str(uuid.uuid4()), os.urandom(request.size_bits // 8)) for _ in range(request.number)]
        for key in keys:
            self.store.put(key.key_id, request.master_sae, request.slave_saes, key.key)
        return keys

    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        return 10**6


@dataclass
class Server:
    port: int
    bundle: CertBundle
    other: CertBundle
    supplier: Supplier
    tasks: list[Any] = field(default_factory=list)

    def context(self, sae: str | None, bundle: CertBundle | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.bundle.ca_cert))
        if sae is not None:
            issuer = bundle or self.bundle
            context.load_cert_chain(str(issuer.sae_cert(sae)), str(issuer.sae_key(sae)))
        return context

    async def enc_keys(self, sae: str = "alice-app", number: int = 1) -> tuple[int, Any]:
        connector = aiohttp.TCPConnector(ssl=self.context(sae))
        async with (
            aiohttp.ClientSession(f"https://127.0.0.1:{self.port}", connector=connector) as session,
            session.post("/api/v1/keys/bob-app/enc_keys", json={"number": number}) as response,
        ):
            return response.status, await response.json()


async def _server(tmp_path: Path, config: KmeConfig) -> AsyncIterator[Server]:
    plan = CertPlan(cluster_name="hardening", nodes=(NODE,), saes=SAES, links=())
    bundle = make_certificates(plan, tmp_path / "certs")
    other = make_certificates(plan, tmp_path / "other-ca")
    data_dir = tmp_path / "data"
    store = SaeKeyStore(data_dir, NODE, StorageKey.load_or_create(data_dir))
    supplier = Supplier(store)
    kme = Kme(NODE, lambda sae: NODE if sae in SAES else None, store)
    app = make_app(kme, supplier, config=config)
    runner, port = await start_kme_server(app, "127.0.0.1", 0, tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert))
    try:
        yield Server(port, bundle, other, supplier)
    finally:
        await runner.cleanup()
        store.close()


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async for s in _server(tmp_path, LIMITS):
        yield s


async def _dropped(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (EOF or reset) before the deadline."""
    try:
        async with asyncio.timeout(DEADLINE_S):
            while await reader.read(1024):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.asyncio
async def test_a_client_that_never_finishes_the_handshake_is_dropped(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # TCP only: no ClientHello
        assert await _dropped(reader)
        writer.close()
        assert (await server.enc_keys())[0] == 200  # others are served meanwhile
    (refused,) = _events(logs, "kme.tls_refused")
    assert refused["reason"] == "tls_handshake_timeout" and refused["caller"].startswith("127.0.0.1:")


@pytest.mark.asyncio
@pytest.mark.parametrize("who", ["no-certificate", "another-ca"])
async def test_failed_client_authentication_is_logged_with_the_peer_and_the_reason(server: Server, who: str) -> None:
    context = server.context(None) if who == "no-certificate" else server.context("alice-app", server.other)
    with capture_logs() as logs:
        with pytest.raises((ssl.SSLError, ConnectionError, aiohttp.ClientError)):
            connector = aiohttp.TCPConnector(ssl=context)
            async with (
                aiohttp.ClientSession(f"https://127.0.0.1:{server.port}", connector=connector) as session,
                session.get("/api/v1/keys/bob-app/status") as response,
            ):
                await response.read()
        async with asyncio.timeout(DEADLINE_S):
            while not _events(logs, "kme.tls_refused"):
                await asyncio.sleep(0.02)
    refused = _events(logs, "kme.tls_refused")  # (the client may have tried more than once)
    assert {e["reason"] for e in refused} == {"tls_client_auth_failed"}, refused
    assert all(e["caller"].startswith("127.0.0.1:") for e in refused)
    assert server.supplier.calls == []


@pytest.mark.asyncio
async def test_slow_headers_are_dropped_while_normal_requests_are_served(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=server.context("alice-app"))
        writer.write(b"GET /api/v1/keys/bob-app/status HTTP/1.1\r\nHost: x\r\n")  # never the blank line

        async def trickle() -> None:
            for _ in range(100):  # one header byte at a time, never finishing
                await asyncio.sleep(0.05)
                writer.write(b"X")
                await writer.drain()

        feeding = asyncio.create_task(trickle())
        served = [await server.enc_keys() for _ in range(3)]
        assert await _dropped(reader)
        feeding.cancel()
        writer.close()
    assert [status for status, _ in served] == [200, 200, 200]
    (dropped,) = _events(logs, "kme.connection_dropped")
    assert dropped["reason"] == "header_timeout" and dropped["caller"] == "alice-app"


@pytest.mark.asyncio
async def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=server.context("alice-app"))
        writer.write(b"GET /api/v1/keys/bob-app/status HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await _dropped(reader)  # nothing more is sent: idle
        writer.close()
    (dropped,) = _events(logs, "kme.connection_dropped")
    assert dropped["reason"] == "idle_timeout"


@pytest.mark.asyncio
async def test_a_slow_body_is_refused_and_the_connection_closed(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=server.context("alice-app"))
        writer.write(
            b"POST /api/v1/keys/bob-app/enc_keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"number\""
        )
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            answer = await reader.read()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "did not arrive" in json.loads(body)["message"]
    assert server.supplier.calls == []
    (refused,) = _events(logs, "kme.request_refused")
    assert refused["reason"] == "body_timeout" and refused["caller"] == "alice-app"


@pytest.mark.asyncio
async def test_duplicate_json_keys_are_refused(server: Server) -> None:
    connector = aiohttp.TCPConnector(ssl=server.context("alice-app"))
    async with aiohttp.ClientSession(f"https://127.0.0.1:{server.port}", connector=connector) as session:
        for raw in ('{"number": 1, "number": 100}', '{"number": 1, "extension_optional": [{"a": 1, "a": 2}]}'):
            async with session.post(
                "/api/v1/keys/bob-app/enc_keys", data=raw, headers={"Content-Type": "application/json"}
            ) as response:
                body = await response.json()
                assert response.status == 400 and "repeated" in body["message"], body
    assert server.supplier.calls == []


@pytest.mark.asyncio
async def test_503_bodies_name_no_internals_and_the_log_keeps_them(server: Server) -> None:
    internal = "relay hop to beta: UNAVAILABLE failed to connect to all addresses; last error: ipv4:10.1.2.3:50051"
    server.supplier.fail = PeerUnavailable(internal)
    with capture_logs() as logs:
        status, body = await server.enc_keys(number=2)
    assert status == 503
    assert body["message"] == "the network could not deliver 2 key(s) of 256 bits to bob-app (a path failed on the way); retry later"
    for secret in ("10.1.2.3", "50051", "UNAVAILABLE", "beta", "relay hop"):
        assert secret not in json.dumps(body)
    (refused,) = _events(logs, "kme.request_refused")
    assert refused["caller"] == "alice-app" and refused["reason"] == "unreachable" and internal in refused["details"]


@pytest.mark.asyncio
async def test_every_refused_request_is_logged_with_the_caller(server: Server) -> None:
    with capture_logs() as logs:
        connector = aiohttp.TCPConnector(ssl=server.context("alice-app"))
        async with aiohttp.ClientSession(f"https://127.0.0.1:{server.port}", connector=connector) as session:
            async with session.get("/api/v1/keys/nobody/status") as response:
                assert response.status == 400
            async with session.get("/api/v1/keys/bob-app/dec_keys", params={"key_ID": str(uuid.uuid4())}) as response:
                assert response.status == 400  # no such key
            async with session.get("/nope") as response:
                assert response.status == 404
    refused = _events(logs, "kme.request_refused")
    assert [e["caller"] for e in refused] == ["alice-app"] * 3
    assert [e["reason"] for e in refused] == ["bad_request", "unknown_key", "bad_request"]


@pytest.mark.asyncio
async def test_an_over_long_url_is_one_json_line(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=server.context("alice-app"))
        writer.write(b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]
    (refused,) = _events(logs, "kme.request_refused")
    assert refused["reason"] == "malformed_http" and refused["caller"] == "127.0.0.1" and "\n" not in refused["details"]


@pytest.mark.asyncio
async def test_the_per_sae_rate_limit_refuses_with_503_naming_it_and_consumes_nothing(tmp_path: Path) -> None:
    config = KmeConfig(max_keys_per_sae_per_s=0.01, burst=3)
    async for server in _server(tmp_path, config):
        assert (await server.enc_keys(number=2))[0] == 200
        status, body = await server.enc_keys(number=2)
        assert status == 503 and "kme.max_keys_per_sae_per_s" in body["message"] and "0.01 keys/s" in body["message"], body
        assert len(server.supplier.calls) == 1  # the refused request never reached the network
        assert (await server.enc_keys(number=1))[0] == 200  # the refusal took nothing: one token was left
        status, body = await server.enc_keys(number=4)
        assert status == 503 and "at most 3 keys at once" in body["message"]
