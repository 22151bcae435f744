"""No client can hold more than ``kme.max_connections`` connections of one interface server: real TLS on 127.0.0.1, port 0.

The SKIP server stands for the HTTPS interfaces (ETSI 014, ETSI 020 and SKIP
are all served by one guarded site), the ETSI 004 stream server for itself.
With the cap reached by connections that finished TLS and sit idle, the next
connection is closed at once, before any TLS, and logged once; the refusals
after it within the log interval are counted, not logged. Once one of the
held connections closes, a new client is served again.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from qcinode.errors import ConfigError
from qcinode.kme import etsi004
from qcinode.kme.guarded import ConnectionCap
from qcinode.kme.server import tls_context
from qcinode.pki import CertPlan, make_certificates
from qcinode.topology import KmeConfig
from tests.integration.test_interface_guards import skip_server
from tests.integration.test_kme_hardening import DEADLINE_S, _dropped, _events

NODE = "alpha"
SAES = ("alice-app", "bob-app")
CAP = 3
# Long handshake, header and idle limits: held connections stay open for the whole test, only the cap closes any.
LIMITS = KmeConfig(tls_handshake_timeout_s=60.0, header_timeout_s=60.0, idle_timeout_s=60.0, max_connections=CAP)


class _StreamBackend:
    def node_of(self, sae: str) -> str | None:
        return NODE if sae in SAES else None

    async def relay(self, master_sae: str, slave_sae: str, keys: list[tuple[str, bytes]]) -> None:
        raise AssertionError("not called")

    def take(self, slave_sae: str, master_sae: str, key_id: str) -> bytes | None:
        return None

    def capacity_bps(self, master_sae: str, slave_sae: str) -> tuple[str, float]:
        return ("", math.inf)


@dataclass
class Served:
    interface: str
    port: int
    client: ssl.SSLContext
    served: Callable[[], Awaitable[bool]]  # one complete request on a new connection: answered?


async def _skip_answers(port: int, client: ssl.SSLContext) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        writer.write(b"GET /capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            return (await reader.readline()).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def _etsi004_answers(port: int, client: ssl.SSLContext) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
    try:
        writer.write(json.dumps({"command": "CLOSE", "data": {"key_stream_id": "00000000-0000-4000-8000-000000000000"}}).encode())
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            return "status" in json.loads(await reader.readline())
    finally:
        writer.close()


@pytest_asyncio.fixture(params=["skip", "etsi004"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    bundle = make_certificates(CertPlan(cluster_name="cap", nodes=(NODE,), saes=SAES, links=()), tmp_path / "certs")
    context = tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert)
    client = ssl.create_default_context(cafile=str(bundle.ca_cert))
    client.load_cert_chain(str(bundle.sae_cert("alice-app")), str(bundle.sae_key("alice-app")))
    if request.param == "etsi004":
        listener, port = await etsi004.serve(etsi004.StreamService(NODE, _StreamBackend()), "127.0.0.1:0", context, LIMITS)
        try:
            yield Served("etsi004", port, client, lambda: _etsi004_answers(port, client))
        finally:
            listener.close()
        return
    async with skip_server(tmp_path / "data", context, LIMITS) as port:
        yield Served("skip", port, client, lambda: _skip_answers(port, client))


@pytest.mark.asyncio
async def test_a_connection_over_the_cap_is_closed_at_accept_and_the_door_reopens(served: Served) -> None:
    with capture_logs() as logs:
        held = [await asyncio.open_connection("127.0.0.1", served.port, ssl=served.client) for _ in range(CAP)]  # TLS done, idle
        for _ in range(2):  # TCP only: closed at accept, not after the (60 s) handshake limit
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            assert await _dropped(reader)
            writer.close()
        assert not await _answered_soon(served)  # a client with a certificate is turned away too
        held[0][1].close()
        await held[0][1].wait_closed()
        for _ in range(100):  # the server sees the close on its own turn of the loop
            if await _answered_soon(served):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("no connection was served after one of the held ones closed")
        for _, writer in held[1:]:
            writer.close()
    (refused,) = _events(logs, "kme.connection_refused")  # three refusals, one line
    assert refused["interface"] == served.interface and refused["reason"] == "max_connections"
    assert refused["max_connections"] == CAP and refused["refused"] == 1 and refused["caller"].startswith("127.0.0.1:")
    assert not _events(logs, "kme.tls_refused")  # nothing got as far as a handshake


async def _answered_soon(served: Served) -> bool:
    try:
        return await served.served()
    except (ConnectionError, ssl.SSLError, TimeoutError, json.JSONDecodeError):
        return False


def test_the_cap_must_be_a_positive_integer() -> None:
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="max_connections"):
            ConnectionCap(bad, interface="etsi014")  # type: ignore[arg-type]


def test_a_connection_that_fails_to_start_gives_its_place_back() -> None:
    cap = ConnectionCap(1, interface="etsi014")

    def broken(release: Callable[[], None]) -> Any:
        raise RuntimeError("the application could not make its protocol")

    with pytest.raises(RuntimeError):
        cap.accept(broken)
    assert cap.open == 0
    released: list[Callable[[], None]] = []
    cap.accept(lambda release: released.append(release) or asyncio.Protocol())
    assert cap.open == 1
    released[0]()
    released[0]()  # once is once
    assert cap.open == 0
