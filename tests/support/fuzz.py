"""Fuzz targets and generators for the ETSI GS QKD 014 API and every gRPC method of a real node.

Shared by ``tests/integration/test_fuzz.py`` (a bounded number of examples
per test) and ``bench/fuzz.py`` (many more, with figures); the rules every
answer must follow are here, once:

* **ETSI 014.** :class:`EtsiTarget` is a real KME server (``make_app`` +
  ``start_kme_server``, real TLS certificates, a real
  :class:`~qcinode.keys.keystore.SaeKeyStore` holding a few keys) on
  127.0.0.1 port 0, with a key supplier that counts its calls and always
  refuses (503). :func:`http_requests` generates request targets (valid and
  junk SAE IDs, traversal attempts, percent-encoded unicode), query strings,
  JSON bodies (random JSON, wrong types, huge numbers, deep nesting, NaN,
  invalid UTF-8), oversized bodies and wrong content types, sent by a raw
  HTTP/1.1 client over mutual TLS as SAE ``alice-app``, ``bob-app``, the
  node or the admin. :func:`check_etsi_answer`: every answer is 200
  (``status`` only) or 400 / 401 / 404 / 405 / 503 with a JSON body
  carrying a ``message``; no 4xx reached the supplier; the key store is
  unchanged.
* **gRPC.** :class:`GrpcTarget` is two real nodes (``alpha`` transmits,
  ``beta`` receives) linked over mTLS on 127.0.0.1 port 0, growing key.
  :func:`grpc_examples` sends random and mutated protobuf bytes to every
  method of both nodes (through generic ``unary_unary`` / ``stream_stream``
  callables with identity serializers), as the neighbour node, an SAE, the
  admin, or with a certificate of another CA; :func:`out_of_order_sessions`
  gives PostProcessing.Session out-of-order ClassicalMessage sequences.
  Every call ends with a status in :data:`ACCEPTED_GRPC` before its
  deadline; the link-pool ledgers (``used_bytes`` and ``audit()``) at both
  ends and the SAE key stores stay unchanged, and the nodes healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no C-core line per refused handshake

import grpc  # noqa: E402
from hypothesis import strategies as st

from qcinode.errors import InsufficientKeyMaterial
from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme
from qcinode.kme.server import make_app, start_kme_server, tls_context
from qcinode.pki import CertBundle, CertPlan, cert_plan, make_certificates
from tests.support.topologies import TWO_NODES

# ============================================================== ETSI 014 ====

KME_NODE = "alpha"
SAES = ("alice-app", "bob-app", "carol-app")
MAX_BODY = 4096
ALLOWED_ERRORS = frozenset({400, 401, 404, 405, 503})
IDENTITIES = ("alice-app", "bob-app", KME_NODE, "admin")


class CountingSupplier:
    """Counts every call and never makes a key (503)."""

    def __init__(self) -> None:
        self.deliver_calls = 0
        self.available_calls = 0

    @property
    def calls(self) -> int:
        return self.deliver_calls + self.available_calls

    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        self.deliver_calls += 1
        raise InsufficientKeyMaterial("fuzz supplier makes no keys")

    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        self.available_calls += 1
        return 0


@dataclass
class HttpAnswer:
    status: int | None  # None: no HTTP answer (TLS failure, reset)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None
    identity: str | None = "alice-app"

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 200 else self.body[:200] + b"...(%d bytes)" % len(self.body)
        return f"HttpRequest({self.identity} {self.method} {self.target!r} headers={self.headers} body={body!r})"


class EtsiTarget:
    """A KME server with real mTLS and a raw HTTP/1.1 client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bundle: CertBundle | None = None
        self.other: CertBundle | None = None
        self.port = 0
        self.runner: Any = None
        self.store: SaeKeyStore | None = None
        self.supplier = CountingSupplier()
        self.contexts: dict[str | None, ssl.SSLContext] = {}
        self.endpoint_statuses: list[tuple[str, int]] = []

    async def start(self) -> None:
        plan = CertPlan(cluster_name="fuzz", nodes=(KME_NODE,), saes=SAES, links=())
        self.bundle = make_certificates(plan, self.directory / "certs")
        self.other = make_certificates(CertPlan("other", (KME_NODE,), SAES, ()), self.directory / "other")
        data = self.directory / "data"
        self.store = SaeKeyStore(data, KME_NODE, StorageKey.load_or_create(data))
        for _ in range(3):  # something a lucky request could steal
            self.store.put(str(uuid.uuid4()), "alice-app", ("bob-app",), os.urandom(32))
        kme = Kme(KME_NODE, lambda sae: KME_NODE if sae in SAES else None, self.store)
        app = make_app(
            kme,
            self.supplier,
            max_body_bytes=MAX_BODY,
            on_request=lambda endpoint, status, latency: self.endpoint_statuses.append((endpoint, status)),
            deliver_timeout_s=5.0,
        )
        b = self.bundle
        self.runner, self.port = await start_kme_server(
            app, "127.0.0.1", 0, tls_context(b.node_cert(KME_NODE), b.node_key(KME_NODE), b.ca_cert)
        )
        for identity in (*IDENTITIES, None, "other-ca"):
            self.contexts[identity] = self._context(identity)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.store is not None:
            self.store.close()

    def _context(self, identity: str | None) -> ssl.SSLContext:
        assert self.bundle is not None and self.other is not None
        b = self.bundle
        context = ssl.create_default_context(cafile=str(b.ca_cert))
        context.check_hostname = False
        if identity == "admin":
            context.load_cert_chain(str(b.admin_cert), str(b.admin_key))
        elif identity == KME_NODE:
            context.load_cert_chain(str(b.node_cert(KME_NODE)), str(b.node_key(KME_NODE)))
        elif identity == "other-ca":
            context.load_cert_chain(str(self.other.sae_cert("alice-app")), str(self.other.sae_key("alice-app")))
        elif identity is not None:
            context.load_cert_chain(str(b.sae_cert(identity)), str(b.sae_key(identity)))
        return context

    async def send(self, request: HttpRequest, timeout_s: float = 10.0) -> HttpAnswer:
        """One request on a fresh connection (``Connection: close``), raw bytes on the wire."""
        head = f"{request.method} {request.target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nConnection: close\r\n"
        for name, value in request.headers:
            head += f"{name}: {value}\r\n"
        if request.body is not None:
            head += f"Content-Length: {len(request.body)}\r\n"
        data = head.encode("utf-8", "surrogateescape") + b"\r\n" + (request.body or b"")
        return await self.send_bytes(request.identity, data, timeout_s)

    async def send_bytes(self, identity: str | None, data: bytes, timeout_s: float = 10.0) -> HttpAnswer:
        """Raw bytes on a fresh mTLS connection; the whole answer until the server closes."""
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=self.contexts[identity], server_hostname=KME_NODE
                )
                try:
                    writer.write(data)
                    try:
                        await writer.drain()
                    except (ConnectionError, ssl.SSLError):
                        pass  # the server may answer and close before reading an oversized body
                    raw = await _read_all(reader)
                finally:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except (ConnectionError, ssl.SSLError):
                        pass
        except TimeoutError:
            return HttpAnswer(None, error="timeout")
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
            return HttpAnswer(None, error=f"{type(exc).__name__}: {exc}"[:200])
        return _parse_http(raw)

    async def alive(self) -> bool:
        """The server still answers a valid status request."""
        answer = await self.send(HttpRequest("GET", "/api/v1/keys/bob-app/status", [], None, "alice-app"))
        return answer.status == 200


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = await reader.read(65536)
        except (ConnectionError, ssl.SSLError):
            if chunks:
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_http(raw: bytes) -> HttpAnswer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return HttpAnswer(None, error=f"no HTTP answer: {raw[:80]!r}")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return HttpAnswer(int(parts[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def check_etsi_answer(request: HttpRequest, answer: HttpAnswer, calls_before: int, calls_after: int) -> str | None:
    """Why ``answer`` breaks the rules, or None."""
    if answer.status is None:
        return f"no HTTP answer ({answer.error})"
    if answer.status == 200:
        if request.method == "GET" and request.target.split("?")[0].endswith("/status"):
            return None
        return "200 for a request that should have failed"
    if answer.status not in ALLOWED_ERRORS:
        return f"status {answer.status} is not one of {sorted(ALLOWED_ERRORS)}"
    if 400 <= answer.status < 500 and calls_after != calls_before:
        return f"status {answer.status} but the key supplier was called"
    if request.method == "HEAD":
        return None  # no body by definition
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"status {answer.status} with Content-Type {answer.headers.get('content-type')!r}: {answer.body[:120]!r}"
    try:
        body = answer.json()
    except ValueError:
        return f"status {answer.status} with a body that is not JSON: {answer.body[:120]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("message"), str) or not body["message"]:
        return f"status {answer.status} with no message: {body!r}"[:300]
    return None


# -- ETSI generators --------------------------------------------------------

def _mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any], tenths: int = 7) -> st.SearchStrategy[Any]:
    """``valid`` about ``tenths``/10 of the time (``one_of`` alone draws each branch alike)."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < tenths else junk)


_TRAVERSAL = ("..", "../..", "%2e%2e", "%2e%2e%2f%2e%2e", "..%2f", "%2F", ".", "", "alice-app/../bob-app", "..\\..", "%00", "%ff%fe")
_sae_ids = _mostly(
    st.sampled_from(SAES),
    st.one_of(
        st.sampled_from(SAES + (KME_NODE, "qcinode-admin", "ALICE-APP", "alice-app%20", "nobody", "alice-app%00")),
        st.sampled_from(_TRAVERSAL),
        st.text(max_size=40).map(lambda s: quote(s, safe="")),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(lambda s: quote(s, safe="/.")),
        st.integers(min_value=0, max_value=10**30).map(str),
    ),
)
_endpoints = _mostly(
    st.sampled_from(("status", "enc_keys", "dec_keys")),
    st.one_of(
        st.sampled_from(("", "enc_keys/", "keys", "STATUS", "status/extra", "enc_keys%2f..%2fstatus")),
        st.text(max_size=12).map(lambda s: quote(s, safe="")),
    ),
    8,
)
_prefixes = _mostly(
    st.just("/api/v1/keys/"),
    st.sampled_from(("/api/v1/keys//", "/api/v1/", "/", "/api/v2/keys/", "/API/v1/keys/", "/api/v1/keys/../keys/", "//api/v1/keys/")),
    8,
)
_numbers = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(("", "0", "1", "128", "256", "-1", "1e3", "1.0", "0x10", "１", "99999999999999999999999999999", "9" * 1000, " 1", "NaN")),
    st.text(max_size=10),
)
_query_pairs = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(("number", "size", "key_ID", "keyID", "extension")), st.text(max_size=8)),
        st.one_of(_numbers, st.uuids().map(str)),
    ),
    max_size=4,
)
_queries = st.one_of(
    st.just(""),
    _query_pairs.map(lambda pairs: urlencode(pairs)),
    st.text(max_size=30).map(lambda s: quote(s, safe="=&")),
)


@st.composite
def request_targets(draw: st.DrawFn) -> str:
    path = draw(_prefixes) + draw(_sae_ids) + "/" + draw(_endpoints)
    query = draw(_queries)
    return str(path + ("?" + query if query else ""))


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.uuids().map(str),
)
_json_values = st.recursive(
    _json_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)
_field_values: st.SearchStrategy[Any] = st.one_of(_json_values, st.sampled_from((1, 256, 0, -1, 2**63, 10**100, 1.5, "1", True, [], {}, None)))
_key_request = st.fixed_dictionaries(
    {},
    optional={
        "number": _field_values,
        "size": _field_values,
        "additional_slave_SAE_IDs": st.one_of(st.lists(st.one_of(_sae_ids, _json_leaves), max_size=4), _field_values),
        "extension_mandatory": st.one_of(st.lists(st.dictionaries(st.text(max_size=8), _json_leaves, max_size=2), max_size=3), _field_values),
        "extension_optional": st.one_of(st.lists(st.dictionaries(st.text(max_size=8), _json_leaves, max_size=2), max_size=3), _field_values),
        "junk": _json_values,
    },
)
_key_ids = st.fixed_dictionaries(
    {},
    optional={
        "key_IDs": st.one_of(
            st.lists(
                st.fixed_dictionaries({}, optional={"key_ID": st.one_of(st.uuids().map(str), _field_values), "key_ID_extension": _field_values}),
                max_size=4,
            ),
            _field_values,
        ),
        "key_IDs_extension": _field_values,
    },
)


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


_bodies = st.one_of(
    st.none(),
    _key_request.map(_dump),
    _key_ids.map(_dump),
    _json_values.map(_dump),
    st.binary(max_size=200),
    st.sampled_from(
        (
            b"",
            b"null",
            b"NaN",
            b'{"number": NaN}',
            b'{"number": Infinity}',
            b'{"number": 1, "number": 2}',
            b'{"size": 1' + b"0" * 4000 + b"}",
            b"[" * 4000,
            b"[" * 2000 + b"]" * 2000,
            b'{"a":' * 1000 + b"1" + b"}" * 1000,
            b"\xff\xfe{}",
            '{"number": "\u00e9"}'.encode("latin-1"),
            b"\xef\xbb\xbf{}",
        )
    ),
    st.integers(min_value=MAX_BODY + 1, max_value=64 * 1024).map(lambda n: b'{"number": 1, "pad": "' + b"x" * n + b'"}'),
)
_content_types = st.one_of(
    st.sampled_from(
        (
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=UTF-8",
            "application/json; charset=latin-1",
            "application/json; charset=utf-16",
            "application/JSON",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json;;;",
            "*/*",
        )
    ),
    st.none(),
)
_methods = _mostly(st.sampled_from(("GET", "POST")), st.sampled_from(("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")), 8)


@st.composite
def http_requests(draw: st.DrawFn) -> HttpRequest:
    method = draw(_methods)
    body = draw(_bodies)
    headers: list[tuple[str, str]] = []
    content_type = draw(_content_types)
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if draw(st.booleans()):
        headers.append(("Accept", draw(st.sampled_from(("application/json", "*/*", "text/html", "x")))))
    return HttpRequest(method, draw(request_targets()), headers, body, draw(st.sampled_from(IDENTITIES)))


# Not HTTP/1.1 that aiohttp's parser accepts: answered (400, text/plain) by
# aiohttp's protocol layer before any application code or middleware runs.
MALFORMED_HTTP = (
    b"FOO /api/v1/keys/bob-app/status HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/keys/bob-app/status HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x00\x01\x02garbage\r\n\r\n",
    b"GET /api/v1/keys/b\xc3\xa9b/status HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/v1/keys/bob-app/status HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /api/v1/keys/bob-app/status HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"POST /api/v1/keys/bob-app/enc_keys HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /api/v1/keys/bob-app/enc_keys HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /api/v1/keys/bob-app/enc_keys HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
)


async def etsi_fuzz_one(target: EtsiTarget, request: HttpRequest) -> tuple[HttpAnswer, str | None]:
    """Send one request; returns the answer and what is wrong with it (None if all is well)."""
    assert target.store is not None
    before_calls, before_total = target.supplier.calls, target.store.total()
    answer = await target.send(request)
    problem = check_etsi_answer(request, answer, before_calls, target.supplier.calls)
    if problem is None and target.store.total() != before_total:
        problem = f"the key store changed: {before_total} -> {target.store.total()}"
    return answer, problem


# ================================================================== gRPC ====

LINK = "alpha-beta"
UNARY = (
    "/qcinode.v1.Network/Advertise",
    "/qcinode.v1.Network/AdvertiseMany",
    "/qcinode.v1.Network/RelayKey",
    "/qcinode.v1.Network/RelayKeys",
    "/qcinode.v1.Admin/Status",
    "/grpc.health.v1.Health/Check",
    "/qcinode.v1.Nope/Nothing",
)
STREAMING = (
    "/qcinode.v1.QuantumChannel/Transmit",
    "/qcinode.v1.PostProcessing/Session",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
GRPC_IDENTITIES = ("alpha", "beta", "beta-app", "admin")  # all signed by the cluster CA
CALL_TIMEOUT_S = 10.0
ENDED_WHILE_WRITING = "ENDED_BY_SERVER_WHILE_CLIENT_WROTE"
_CLIENT_WRITE_FAILED = "Internal error from Core"
GRPC_OPTIONS = [
    ("grpc.ssl_target_name_override", "beta"),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass
class KeySnapshot:
    used_bytes: dict[str, int]
    ledgers: dict[str, list[Any]]
    keystore_totals: dict[str, int]

    def consumed_since(self, before: KeySnapshot) -> int:
        return sum(self.used_bytes[k] - before.used_bytes[k] for k in self.used_bytes) + sum(
            abs(self.keystore_totals[k] - before.keystore_totals[k]) for k in self.keystore_totals
        )

    def same_as(self, before: KeySnapshot) -> bool:
        return self.used_bytes == before.used_bytes and self.ledgers == before.ledgers and self.keystore_totals == before.keystore_totals


class GrpcTarget:
    """Two linked nodes and mTLS channels to each, one per client identity."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.nodes: dict[str, Any] = {}
        self.channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    async def start(self, min_pool_bytes: int = 1) -> None:
        from qcinode.node.node import Node, NodeSettings
        from qcinode.topology import load_topology

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "pair.yaml"
        path.write_text(TWO_NODES)
        topology = load_topology(path)
        certs = self.directory / "certs"
        self.bundle = make_certificates(cert_plan(topology), certs, bootstrap_key_bytes=4096)
        self.other = make_certificates(CertPlan("other", ("alpha", "beta"), (), ()), self.directory / "other")
        beta = Node(NodeSettings(topology=topology, name="beta", certs_dir=certs, seed=21, data_dir=self.directory / "beta"))
        port = await beta.start()
        self.nodes["beta"] = beta
        alpha = Node(
            NodeSettings(topology=topology, name="alpha", certs_dir=certs, peers={"beta": f"127.0.0.1:{port}"}, seed=22, data_dir=self.directory / "alpha")
        )
        await alpha.start()
        self.nodes["alpha"] = alpha
        await self.until(lambda: all(self.rt(n).pool.total_available_bytes >= min_pool_bytes for n in self.nodes), 60)
        for identity in (*GRPC_IDENTITIES, "other-ca"):
            for node in self.nodes:
                self.channels[identity, node] = self._channel(identity, node)

    async def stop(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for name in ("alpha", "beta"):
            if name in self.nodes:
                await self.nodes[name].stop(0)

    def rt(self, node: str) -> Any:
        return self.nodes[node].links[LINK]

    @staticmethod
    async def until(predicate: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.05)

    def _channel(self, identity: str, node: str) -> grpc.aio.Channel:
        b = self.bundle
        if identity == "admin":
            key, cert = b.admin_key, b.admin_cert
        elif identity == "other-ca":
            key, cert = self.other.node_key("alpha"), self.other.node_cert("alpha")
        elif identity in self.nodes:
            key, cert = b.node_key(identity), b.node_cert(identity)
        else:
            key, cert = b.sae_key(identity), b.sae_cert(identity)
        creds = grpc.ssl_channel_credentials(b.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes())
        options = [(k, node if k == "grpc.ssl_target_name_override" else v) for k, v in GRPC_OPTIONS]
        return grpc.aio.secure_channel(f"127.0.0.1:{self.nodes[node].port}", creds, options=options)

    def snapshot(self) -> KeySnapshot:
        return KeySnapshot(
            used_bytes={n: self.rt(n).pool.used_bytes for n in self.nodes},
            ledgers={n: self.rt(n).pool.audit() for n in self.nodes},
            keystore_totals={n: self.nodes[n].keystore.total() for n in self.nodes},
        )

    async def call(self, identity: str, node: str, method: str, messages: list[bytes]) -> str:
        """Send raw messages; returns the final status code name (or 'HANG')."""
        channel = self.channels[identity, node]
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S + 5):
                if method in UNARY:
                    await channel.unary_unary(method)(messages[0] if messages else b"", timeout=CALL_TIMEOUT_S)
                else:
                    # Written one by one, so that a server that already ended the
                    # call is seen with its status (writing through a request
                    # iterator makes grpc.aio's client report INTERNAL instead).
                    call = channel.stream_stream(method)(timeout=CALL_TIMEOUT_S)
                    try:
                        for message in messages:
                            await call.write(message)
                        await call.done_writing()
                    except Exception:  # noqa: BLE001 - the call ended; its status says how
                        pass
                    try:
                        async for _ in call:
                            pass
                    except grpc.aio.AioRpcError:
                        pass
                    code = str((await call.code()).name)
                    if code == "INTERNAL" and (await call.details()).startswith(_CLIENT_WRITE_FAILED):
                        # grpc.aio's client marks a call whose write lost the race
                        # with the server's final status INTERNAL; the server's own
                        # status is not reported.
                        return ENDED_WHILE_WRITING
                    return code
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        except TimeoutError:
            return "HANG"
        return "OK"

    async def healthy(self, node: str) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channels["alpha", node])
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# -- gRPC generators --------------------------------------------------------


def _seed_messages() -> dict[str, list[bytes]]:
    """Valid-looking messages for each method, to mutate."""
    from qcinode.transport.pb import admin_pb2
    from qcinode.transport.pb import link_pb2 as lp
    from qcinode.transport.pb import network_pb2 as np_

    hop = np_.RelayHop(
        relay_id="r1", key_id=str(uuid.uuid4()), master_sae="alpha-app", slave_saes=["beta-app"], source="alpha",
        destination="beta", path=["alpha", "beta"], hop_index=0, share_index=0, share_count=1, key_bytes=32,
        pad=[np_.KeyRange(block_id=f"{LINK}/999999", offset_bytes=0, length_bytes=80)], ciphertext=os.urandom(32), tag=os.urandom(16),
    )
    classical = [
        lp.ClassicalMessage(hello=lp.Hello(link_id="nope", role="alice", next_block_seq=5, auth_cursor=2, held_block_seqs=[1, 2])),
        lp.ClassicalMessage(detection_report=lp.DetectionReport(frame_id=3, n_slots=1000, slot_gaps=b"\x01\x00\x00\x00", bases=b"\x01", count=1)),
        lp.ClassicalMessage(sift_reply=lp.SiftReply(frame_id=3, basis_match=b"\x01", classes=b"\x00", count=1)),
        lp.ClassicalMessage(test_bits=lp.TestBits(block_seq=1, bits=b"\xff", count=8)),
        lp.ClassicalMessage(estimate=lp.Estimate(block_seq=1, test_errors=[1, 2, 3], proceed=True)),
        lp.ClassicalMessage(parity_query=lp.ParityQuery(block_seq=1, round=1, seeds=[7], pass_ids=b"\0" * 4, starts=b"\0" * 8, ends=b"\1" + b"\0" * 7)),
        lp.ClassicalMessage(reconciled=lp.Reconciled(block_seq=1, verify_seed=b"s" * 16, verify_tag=b"t" * 16, errors_corrected=3)),
        lp.ClassicalMessage(confirm=lp.Confirm(block_seq=1, accepted=True, pa_seed=b"p" * 32, key_bits=1024, leak_bits=10, auth_tag=b"a" * 16)),
        lp.ClassicalMessage(commit=lp.Commit(block_seq=1, accepted=True, auth_tag=b"c" * 16)),
    ]
    ghost = np_.LinkStateAdvert(
        origin="ghost", sequence=1, links=[np_.LinkAdvert(link_id="ghost-x", peer="x", up=True, available_out_bytes=10**9)]
    )
    return {
        "/qcinode.v1.Network/Advertise": [ghost.SerializeToString()],
        "/qcinode.v1.Network/AdvertiseMany": [np_.LinkStateAdverts(adverts=[ghost, ghost]).SerializeToString()],
        "/qcinode.v1.Network/RelayKey": [hop.SerializeToString()],
        "/qcinode.v1.Network/RelayKeys": [np_.RelayHops(hops=[hop, hop]).SerializeToString()],
        "/qcinode.v1.Admin/Status": [admin_pb2.StatusRequest(include_block_digests=True).SerializeToString()],
        "/grpc.health.v1.Health/Check": [b"\x0a\x00"],
        "/qcinode.v1.Nope/Nothing": [b""],
        "/qcinode.v1.QuantumChannel/Transmit": [lp.PulseFrame(link_id="nope", frame_id=1, n_slots=64, payload=os.urandom(64)).SerializeToString()],
        "/qcinode.v1.PostProcessing/Session": [m.SerializeToString() for m in classical],
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [b"\x3a\x00"],
    }


SEEDS = _seed_messages()


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "dup")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data += data[pos:]
    return bytes(data)


@st.composite
def raw_messages(draw: st.DrawFn, method: str) -> bytes:
    return draw(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from(SEEDS[method]).flatmap(lambda seed: mutated(seed)),
            st.sampled_from((b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 9 + b"\x01", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01")),
        )
    )


@dataclass
class GrpcExample:
    identity: str
    node: str
    method: str
    messages: list[bytes]

    def __repr__(self) -> str:
        return f"GrpcExample({self.identity} -> {self.node} {self.method} {[m[:60] for m in self.messages]!r})"


_NEIGHBOUR_ONLY = (
    "/qcinode.v1.PostProcessing/Session",
    "/qcinode.v1.QuantumChannel/Transmit",
    "/qcinode.v1.Network/RelayKey",
    "/qcinode.v1.Network/RelayKeys",
)


@st.composite
def grpc_examples(draw: st.DrawFn) -> GrpcExample:
    method = draw(st.sampled_from(UNARY + STREAMING))
    count = 1 if method in UNARY else draw(st.integers(0, 5))
    messages = [draw(raw_messages(method)) for _ in range(count)]
    identity = draw(st.sampled_from((*GRPC_IDENTITIES, "other-ca")))
    node = draw(st.sampled_from(("alpha", "beta")))
    if identity in ("alpha", "beta") and identity != node and method in _NEIGHBOUR_ONLY:
        # The neighbour's own certificate may legitimately take over the link
        # or spend the pad it names (see out_of_order_sessions and the report).
        identity = draw(st.sampled_from(("beta-app", "admin", "other-ca", node)))
    return GrpcExample(identity, node, method, messages)


def out_of_order_sessions() -> st.SearchStrategy[list[bytes]]:
    """ClassicalMessage sequences with no Hello first, or a Hello for a link that does not exist."""
    from qcinode.transport.pb import link_pb2 as lp

    bodies = SEEDS["/qcinode.v1.PostProcessing/Session"][1:]
    bad_hello = st.sampled_from(("", "beta-alpha", "alpha-gamma", LINK + "\0", "ALPHA-BETA")).map(
        lambda link: lp.ClassicalMessage(hello=lp.Hello(link_id=link, role="alice")).SerializeToString()
    )
    return st.tuples(st.one_of(st.sampled_from(bodies), bad_hello), st.lists(st.sampled_from(bodies), max_size=4)).map(
        lambda t: [t[0], *t[1]]
    )


ACCEPTED_GRPC = frozenset(
    {
        ENDED_WHILE_WRITING, "OK", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "UNIMPLEMENTED",
        "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "NOT_FOUND", "ABORTED",
    }
)
