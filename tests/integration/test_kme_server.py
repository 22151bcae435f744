"""The ETSI GS QKD 014 server over real HTTPS with mutual TLS, on 127.0.0.1 port 0.

Both SAEs sit on the one node, so a fake key supplier stores the slave's copy
in the node's own key store; every test checks that refused requests never
reached the supplier.
"""

from __future__ import annotations

import base64
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

from qcinode.errors import InsufficientKeyMaterial, QcinodeError
from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme
from qcinode.kme.server import make_app, start_kme_server, tls_context
from qcinode.pki import CertBundle, CertPlan, make_certificates

NODE = "alpha"
SAES = ("alice-app", "bob-app", "carol-app")
MAX_BODY = 4096


class FakeSupplier:
    """Makes random keys and stores the slaves' copies locally (all SAEs are on this node)."""

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
        return 7


@dataclass
class Server:
    url: str
    bundle: CertBundle
    store: SaeKeyStore
    supplier: FakeSupplier
    requests: list[tuple[str, int]] = field(default_factory=list)

    def client_context(self, sae: str | None, bundle: CertBundle | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.bundle.ca_cert))
        if sae is not None:
            issuer = bundle or self.bundle
            if sae == NODE:
                context.load_cert_chain(str(issuer.node_cert(NODE)), str(issuer.node_key(NODE)))
            else:
                context.load_cert_chain(str(issuer.sae_cert(sae)), str(issuer.sae_key(sae)))
        return context

    def session(self, sae: str | None, bundle: CertBundle | None = None) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.client_context(sae, bundle))
        return aiohttp.ClientSession(self.url, connector=connector)


def _plan() -> CertPlan:
    return CertPlan(cluster_name="kme-test", nodes=(NODE,), saes=SAES, links=())


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    bundle = make_certificates(_plan(), tmp_path / "certs")
    data_dir = tmp_path / "data"
    store = SaeKeyStore(data_dir, NODE, StorageKey.load_or_create(data_dir))
    supplier = FakeSupplier(store)
    kme = Kme(NODE, lambda sae: NODE if sae in SAES else None, store)
    requests: list[tuple[str, int]] = []
    app = make_app(
        kme,
        supplier,
        max_body_bytes=MAX_BODY,
        on_request=lambda endpoint, status, latency_s: requests.append((endpoint, status)),
    )
    context = tls_context(bundle.node_cert(NODE), bundle.node_key(NODE), bundle.ca_cert)
    runner, port = await start_kme_server(app, "127.0.0.1", 0, context)
    try:
        yield Server(f"https://127.0.0.1:{port}", bundle, store, supplier, requests)
    finally:
        await runner.cleanup()
        store.close()


async def _call(session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, path, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


def _assert_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]
    assert isinstance(body.get("details"), list)


@pytest.mark.asyncio
async def test_enc_keys_then_dec_keys_return_identical_keys(server: Server) -> None:
    async with server.session("alice-app") as alice, server.session("bob-app") as bob:
        status, body = await _call(alice, "POST", "/api/v1/keys/bob-app/enc_keys", json={"number": 2, "size": 512})
        assert status == 200, body
        keys = body["keys"]
        assert len(keys) == 2 and all(len(base64.b64decode(k["key"], validate=True)) == 64 for k in keys)
        status, got = await _call(
            bob, "POST", "/api/v1/keys/alice-app/dec_keys", json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}
        )
        assert status == 200 and got == {"keys": keys}

        # The GET forms.
        status, body = await _call(alice, "GET", "/api/v1/keys/bob-app/enc_keys", params={"number": "1", "size": "128"})
        assert status == 200 and len(body["keys"]) == 1
        key = body["keys"][0]
        status, got = await _call(bob, "GET", "/api/v1/keys/alice-app/dec_keys", params={"key_ID": key["key_ID"]})
        assert status == 200 and got == {"keys": [key]}

        # Redeemed once: a second time is a 400.
        status, body = await _call(bob, "GET", "/api/v1/keys/alice-app/dec_keys", params={"key_ID": key["key_ID"]})
        _assert_error(status, body, 400)
    assert server.store.total() == 0
    assert ("enc_keys", 200) in server.requests and ("dec_keys", 400) in server.requests


@pytest.mark.asyncio
async def test_status(server: Server) -> None:
    async with server.session("alice-app") as alice:
        status, body = await _call(alice, "GET", "/api/v1/keys/bob-app/status")
    assert status == 200
    assert body["master_SAE_ID"] == "alice-app" and body["slave_SAE_ID"] == "bob-app"
    assert body["source_KME_ID"] == body["target_KME_ID"] == NODE and body["stored_key_count"] == 7
    assert server.requests == [("status", 200)]


@pytest.mark.asyncio
async def test_wrong_sae_gets_401_and_the_right_one_still_redeems(server: Server) -> None:
    async with server.session("alice-app") as alice, server.session("carol-app") as carol, server.session(
        "bob-app"
    ) as bob, server.session(NODE) as node:
        _, body = await _call(alice, "POST", "/api/v1/keys/bob-app/enc_keys", json={})
        key_id = body["keys"][0]["key_ID"]
        status, error = await _call(carol, "GET", "/api/v1/keys/alice-app/dec_keys", params={"key_ID": key_id})
        _assert_error(status, error, 401)
        # A node's certificate is from the right CA but is no SAE's.
        status, error = await _call(node, "GET", "/api/v1/keys/alice-app/dec_keys", params={"key_ID": key_id})
        _assert_error(status, error, 401)
        status, error = await _call(node, "POST", "/api/v1/keys/bob-app/enc_keys", json={})
        _assert_error(status, error, 401)
        status, got = await _call(bob, "GET", "/api/v1/keys/alice-app/dec_keys", params={"key_ID": key_id})
        assert status == 200 and got == body
    assert len(server.supplier.calls) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("client", ["no certificate", "another CA"])
@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_client_without_a_cluster_certificate_cannot_connect(
    server: Server, tmp_path: Path, client: str, tls_version: ssl.TLSVersion
) -> None:
    other = make_certificates(_plan(), tmp_path / "other-ca") if client == "another CA" else None
    context = server.client_context("alice-app" if other is not None else None, other)
    context.minimum_version = context.maximum_version = tls_version
    # TLS 1.2: the server's alert ends the handshake, so connecting fails. TLS 1.3:
    # the client's half of the handshake ends first, and the alert arrives on the
    # first read; either way no request reaches a handler.
    expected = aiohttp.ClientConnectorError if tls_version is ssl.TLSVersion.TLSv1_2 else aiohttp.ClientConnectionError
    async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(ssl=context)) as session:
        with pytest.raises(expected):
            async with session.post("/api/v1/keys/bob-app/enc_keys", json={}) as response:
                await response.read()
    assert server.supplier.calls == [] and server.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"data": b'{"number": 1', "headers": {"Content-Type": "application/json"}}, "malformed JSON"),
        ({"data": b'{"number": NaN}', "headers": {"Content-Type": "application/json"}}, "malformed JSON"),
        ({"data": b"\xff\xfe{}", "headers": {"Content-Type": "application/json"}}, "not UTF-8"),
        ({"data": b"[" * 2000 + b"]" * 2000, "headers": {"Content-Type": "application/json"}}, "nested too deeply"),
        ({"data": b"null", "headers": {"Content-Type": "application/json"}}, "must be a JSON object"),
        ({"data": b'{"number": 1}', "headers": {"Content-Type": "text/plain"}}, "Content-Type must be application/json"),
        ({"data": b'{"number": 1}'}, "Content-Type must be application/json"),
        ({"data": b"{}", "headers": {"Content-Type": "application/json; charset=latin-1"}}, "UTF-8"),
        ({"json": {"extension_optional": [{"pad": "x" * MAX_BODY}]}}, "larger than"),
        ({"data": (b"{}" + b" " * (2 * MAX_BODY),), "headers": {"Content-Type": "application/json"}}, "larger than"),
        ({"json": {"number": "1"}}, "number must be an integer"),
        ({"json": {"extension_mandatory": [{"abc_route_type": "direct"}]}}, "extension_mandatory"),
    ],
)
async def test_bad_bodies_are_400_with_a_json_message(server: Server, kwargs: dict[str, Any], fragment: str) -> None:
    if isinstance(kwargs.get("data"), tuple):  # streamed: no Content-Length, so the size is found while reading
        raw = kwargs["data"][0]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 1024):
                yield raw[start : start + 1024]

        kwargs = {**kwargs, "data": chunks()}
    async with server.session("alice-app") as alice:
        status, body = await _call(alice, "POST", "/api/v1/keys/bob-app/enc_keys", **kwargs)
        _assert_error(status, body, 400)
        assert fragment in body["message"]
        # The connection (or a new one) still serves.
        status, _ = await _call(alice, "GET", "/api/v1/keys/bob-app/status")
        assert status == 200
    assert server.supplier.calls == [] and server.store.total() == 0


@pytest.mark.asyncio
async def test_supplier_out_of_key_is_503_and_nothing_is_stored(server: Server) -> None:
    server.supplier.fail = InsufficientKeyMaterial("no path from alpha to beta has 64 bytes of key on every hop")
    async with server.session("alice-app") as alice:
        status, body = await _call(alice, "POST", "/api/v1/keys/bob-app/enc_keys", json={"number": 4})
        _assert_error(status, body, 503)
        # What the caller can act on; which node lacks key is for the log.
        assert body["message"] == "the network cannot carry 4 key(s) of 256 bits to bob-app now; retry later"
        # Limits are checked before availability: too many keys is a 400, and the supplier is not asked.
        status, body = await _call(alice, "POST", "/api/v1/keys/bob-app/enc_keys", json={"number": 129})
        _assert_error(status, body, 400)
        status, body = await _call(alice, "GET", "/api/v1/keys/bob-app/enc_keys", params={"number": "129"})
        _assert_error(status, body, 400)
    assert len(server.supplier.calls) == 1
    assert server.store.total() == 0
    assert server.requests == [("enc_keys", 503), ("enc_keys", 400), ("enc_keys", 400)]


@pytest.mark.asyncio
async def test_unknown_paths_methods_and_repeated_parameters_answer_json(server: Server) -> None:
    async with server.session("alice-app") as alice:
        status, body = await _call(alice, "GET", "/api/v1/keys/bob-app/nothing")
        assert status == 404 and body["message"]
        status, body = await _call(alice, "PUT", "/api/v1/keys/bob-app/enc_keys", json={})
        assert status == 405 and body["message"]
        status, body = await _call(alice, "GET", "/api/v1/keys/bob-app/enc_keys?number=1&number=2")
        _assert_error(status, body, 400)
        assert "repeated" in body["message"]
    assert server.supplier.calls == []
    assert server.requests == [("other", 404), ("other", 405), ("enc_keys", 400)]
