"""The ETSI 004 stream server holds no door open: real TLS on 127.0.0.1, port 0, small ``kme:`` limits.

A client that stalls mid-request, or dribbles a request byte by byte, is
disconnected by the server and logged with the interface's name, and its
incomplete request takes no key; a well-behaved client on another connection
is served meanwhile. A connection left idle after an answer is closed; one
whose requests keep coming is not. A client that never starts TLS is refused.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from qcinode.kme.etsi004 import Status, StreamService, serve
from qcinode.kme.server import tls_context
from qcinode.pki import CertBundle, CertPlan, make_certificates
from qcinode.topology import KmeConfig
from tests.integration.test_kme_hardening import DEADLINE_S, _dropped

NODE = "alpha"
SAES = ("alice-app", "bob-app")  # both at this node: alice-app (first by ID) generates the stream's keys
LIMITS = KmeConfig(tls_handshake_timeout_s=0.5, header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=1.0)


@dataclass
class _Backend:
    """One node's relay and key store, in memory: every key it makes is counted."""

    store: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    relayed: int = 0

    def node_of(self, sae: str) -> str | None:
        return NODE if sae in SAES else None

    async def relay(self, master_sae: str, slave_sae: str, keys: list[tuple[str, bytes]]) -> None:
        for key_id, key in keys:
            self.store[(slave_sae, master_sae, key_id)] = key
        self.relayed += len(keys)

    def take(self, slave_sae: str, master_sae: str, key_id: str) -> bytes | None:
        return self.store.pop((slave_sae, master_sae, key_id), None)

    def capacity_bps(self, master_sae: str, slave_sae: str) -> tuple[str, float]:
        return ("", math.inf)


@dataclass
class Server:
    port: int
    service: StreamService
    backend: _Backend
    bundle: CertBundle

    def client(self, sae: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.bundle.ca_cert))
        context.load_cert_chain(str(self.bundle.sae_cert(sae)), str(self.bundle.sae_key(sae)))
        return context

    async def connect(self, sae: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client(sae))


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    bundle = make_certificates(CertPlan(cluster_name="guards", nodes=(NODE,), saes=SAES, links=()), tmp_path / "certs")
    backend = _Backend()
    service = StreamService(NODE, backend)
    context = tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert)
    listener, port = await serve(service, "127.0.0.1:0", context, LIMITS)
    try:
        yield Server(port, service, backend, bundle)
    finally:
        listener.close()
        await listener.wait_closed()


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str, **data: Any) -> dict[str, Any]:
    writer.write(json.dumps({"command": command, "data": data}).encode())
    await writer.drain()
    async with asyncio.timeout(DEADLINE_S):
        answer: dict[str, Any] = json.loads(await reader.readline())
    return answer


async def _open_stream(server: Server) -> str:
    """A stream both SAEs opened; a GET_KEY of alice-app on it would make a key."""
    ksid = str(uuid.uuid4())
    for sae, peer in (("alice-app", "bob-app"), ("bob-app", "alice-app")):
        reader, writer = await server.connect(sae)
        qos = {"key_chunk_size": 32, "timeout": 1000}
        answer = await _call(reader, writer, "OPEN_CONNECT", source=f"qkd://{sae}", destination=f"qkd://{peer}", qos=qos, key_stream_id=ksid)
        assert answer["status"] in (Status.SUCCESSFUL, Status.PEER_NOT_CONNECTED)
        writer.close()
    return ksid


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.asyncio
@pytest.mark.parametrize("dribble", [False, True], ids=["stalls", "dribbles"])
async def test_a_client_stalling_mid_request_is_dropped_takes_no_key_and_others_are_served(server: Server, dribble: bool) -> None:
    ksid = await _open_stream(server)
    relayed = server.backend.relayed
    request = json.dumps({"command": "GET_KEY", "data": {"key_stream_id": ksid, "index": 0}}).encode()
    with capture_logs() as logs:
        slow_reader, slow_writer = await server.connect("alice-app")
        slow_writer.write(request[:20])  # the request begun, never finished
        await slow_writer.drain()

        async def dribbling() -> None:
            for byte in request[20:-1]:  # a byte at a time, never the closing brace
                slow_writer.write(bytes([byte]))
                await slow_writer.drain()
                await asyncio.sleep(0.05)

        dribbler = asyncio.create_task(dribbling()) if dribble else None
        # Meanwhile another connection is served: a well-behaved client's whole exchange.
        reader, writer = await server.connect("bob-app")
        answer = await _call(reader, writer, "GET_KEY", key_stream_id=ksid, index=7)
        assert answer["status"] == Status.TIMEOUT  # bob-app waits for key alice-app's side has not made
        assert await _dropped(slow_reader)
        if dribbler is not None:
            dribbler.cancel()
            with pytest.raises((asyncio.CancelledError, ConnectionError, ssl.SSLError)):
                await dribbler
        slow_writer.close()
        # The stalled request took no key, and the other client's connection still works.
        assert server.backend.relayed == relayed and server.service.counters.get("keys_delivered", 0) == 0
        assert (await _call(reader, writer, "CLOSE", key_stream_id=ksid))["status"] == Status.SUCCESSFUL
        writer.close()
    (dropped,) = _events(logs, "kme.connection_dropped")
    assert dropped["interface"] == "etsi004" and dropped["reason"] == "request_timeout"
    assert dropped["caller"] == "alice-app" and dropped["timeout_s"] == LIMITS.header_timeout_s
    assert server.service.counters["connections_dropped"] == 1


@pytest.mark.asyncio
async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(server: Server) -> None:
    ksid = await _open_stream(server)
    with capture_logs() as logs:
        idle_reader, idle_writer = await server.connect("bob-app")
        assert (await _call(idle_reader, idle_writer, "GET_KEY", key_stream_id=str(uuid.uuid4()), index=0))["status"] == Status.NO_QKD_CONNECTION
        reader, writer = await server.connect("alice-app")
        # Requests keep coming, more of them than one request limit lasts: each answer starts a new deadline.
        for index in range(8):
            answer = await _call(reader, writer, "GET_KEY", key_stream_id=ksid, index=index)
            assert answer["status"] == Status.SUCCESSFUL and len(bytes.fromhex(answer["key_buffer"])) == 32
            await asyncio.sleep(LIMITS.header_timeout_s / 5)
        assert await _dropped(idle_reader)  # said nothing since its answer
        assert (await _call(reader, writer, "CLOSE", key_stream_id=ksid))["status"] == Status.SUCCESSFUL
        writer.close()
        idle_writer.close()
    (dropped,) = _events(logs, "kme.connection_dropped")
    assert dropped["interface"] == "etsi004" and dropped["reason"] == "idle_timeout" and dropped["caller"] == "bob-app"


@pytest.mark.asyncio
async def test_a_client_that_never_starts_the_handshake_is_refused_and_logged(server: Server) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # TCP only: no ClientHello
        assert await _dropped(reader)
        writer.close()
    (refused,) = _events(logs, "kme.tls_refused")
    assert refused["interface"] == "etsi004" and refused["reason"] == "tls_handshake_timeout"
