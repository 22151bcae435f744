"""The aiohttp adapter serving ETSI GS QKD 014 over HTTPS with mutual TLS.

Theory of operation:
    * **Thin shell.** Each request is translated for :class:`~qcinode.kme.handlers.Kme`,
      which makes every protocol decision; this module only does I/O: it
      reads the caller's identity and the JSON body, calls the key supplier
      and the key store off the event loop, and writes JSON.
    * **Identity** is the subject common name of the TLS client certificate
      (the SSL object's DER peer certificate, parsed with ``cryptography``).
      The TLS context demands a certificate signed by the cluster CA
      (``CERT_REQUIRED``), so a client without one, or with another CA's,
      fails the handshake and never reaches a handler. No certificate at
      the HTTP layer anyway is a 401.
    * **Order of checks**, so that no 400 or 401 ever consumes key material:
      identity, then body syntax (``Content-Type: application/json``, size,
      UTF-8, JSON), then :meth:`Kme.enc_request`'s validation (limits before
      availability), and only then :meth:`KeySupplier.deliver`.
    * **Errors.** One middleware maps every outcome to a JSON body:
      ``QcinodeError`` through :meth:`Kme.error_body` (the one table:
      400/401/503), a body over ``max_body_bytes`` (aiohttp's 413) to 400,
      aiohttp's own 404/405 keep their status with an ETSI-shaped JSON body,
      and anything unexpected is logged and answered 503 "internal error"
      (never 500: ETSI 014 knows 400, 401 and 503 only).
    * **Blocking work.** ``dec_keys`` redeems keys with an fsync'ed SQLite
      transaction, so it runs in ``asyncio.to_thread``. The transaction is
      all-or-nothing; if the client goes away after it committed, those keys
      are spent for that slave (as with any lost response).
    * **Deadlines.** ``deliver`` runs under ``asyncio.timeout(deliver_timeout_s)``;
      expiry is :class:`~qcinode.errors.PeerTimeout` (503). Cleaning up a
      cancelled delivery is the supplier's job (reserve, then commit or release).
    * **Who gets key** when a path runs short is decided before the
      supplier is asked: :class:`~qcinode.kme.fairness.Admission` (token
      bucket per master SAE, fair share per destination). A refusal is 503
      naming the limit and consumes nothing; a request whose delivery fails
      gives its share back.
    * **What a 503 says.** A failed delivery becomes
      :class:`~qcinode.kme.handlers.DeliveryRefused`: the body says which
      SAEs and how many keys, and "retry later"; which node, address or gRPC
      error failed is logged only. This KME's own storage fault is named
      (the operator of this KME can act on it).
    * **Strict JSON.** A body with a duplicate key (at any depth) is 400.
    * **Slow and idle clients** are dropped (topology ``kme:``): a TLS
      handshake not done in ``tls_handshake_timeout_s``; a request whose
      line and headers have not all arrived ``header_timeout_s`` after its
      first byte (or after the connection opened); a body not read within
      ``body_timeout_s`` (400, then the connection closes); a keep-alive
      connection idle for ``idle_timeout_s``. The site does its own TLS
      accept (:class:`asyncio.sslproto.SSLProtocol` with a handshake
      timeout) so that a failed handshake — no client certificate, another
      CA's, a timeout — is logged with the peer address and the reason.
      The guards live in :mod:`qcinode.kme.guarded`, shared with the
      node's other HTTPS interfaces (ETSI 020, SKIP); here they are
      started with ``interface="etsi014"``.
    * **Metrics and logs.** ``on_request(endpoint, status, latency_s)`` is
      called once per answered request (``endpoint`` is ``status``,
      ``enc_keys``, ``dec_keys`` or ``other``). Every refused request is
      logged (``kme.request_refused``) with the caller's identity (its
      certificate's CN, or its address) and the reason; so is every dropped
      connection (``kme.connection_dropped``) and failed handshake
      (``kme.tls_refused``). aiohttp's own refusals of unparseable HTTP
      (an over-long URL, a bad header) are turned into one
      ``kme.request_refused`` line too, never a traceback. Logs carry key
      IDs and counts, never key bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from qcinode.errors import (
    ConfigError,
    InsufficientKeyMaterial,
    KeyNotFound,
    PeerTimeout,
    QcinodeError,
    RequestError,
    StorageFailure,
    TransportError,
    Unauthorized,
)
from qcinode.kme.fairness import Admission, Ticket
from qcinode.kme.guarded import common_name as _common_name
from qcinode.kme.guarded import start_guarded, transport_identity
from qcinode.kme.handlers import DeliveredKey, DeliveryRefused, EncRequest, Kme, RefusalReason
from qcinode.topology import KmeConfig

__all__ = ["KeySupplier", "make_app", "start_kme_server", "tls_context"]

log = structlog.get_logger(__name__)

_API = "/api/v1/keys"
_JSON = "application/json"
_ENDPOINTS = frozenset({"status", "enc_keys", "dec_keys"})
_KME_KEY: web.AppKey[Kme] = web.AppKey("qcinode_kme", Kme)
_CONFIG_KEY: web.AppKey[KmeConfig] = web.AppKey("qcinode_kme_config", KmeConfig)


class KeySupplier(Protocol):
    """What makes keys for the KME: the node's relay service, or a test fake."""

    async def deliver(self, request: EncRequest) -> list[DeliveredKey]:
        """Make ``request.number`` keys and store each slave's copy at the slave's node.

        Returns only once every slave copy is durably stored.

        Raises:
            InsufficientKeyMaterial: Not enough key to make them (503).
            PeerUnavailable: A slave's node cannot be reached (503).
            PeerTimeout: A slave's node did not answer in time (503).
        """
        ...

    def available_keys(self, master_sae: str, slave_sae: str, size_bits: int) -> int:
        """How many ``size_bits`` keys the pair could get now (for ``stored_key_count``)."""
        ...


def tls_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """A server TLS context demanding client certificates from the cluster CA.

    Args:
        cert: The node's certificate (PEM).
        key: Its private key (PEM).
        ca: The cluster CA certificate (PEM) that client certificates must chain to.

    Returns:
        A context with TLS 1.2 as the minimum version and ``CERT_REQUIRED``.

    Raises:
        ConfigError: A file cannot be read or does not hold what it should.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the KME certificate {cert} with key {key}: {exc}") from exc
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificate {ca}: {exc}") from exc
    return context


def make_app(
    kme: Kme,
    supplier: KeySupplier,
    *,
    max_body_bytes: int = 64 * 1024,
    on_request: Callable[[str, int, float], None] | None = None,
    deliver_timeout_s: float = 30.0,
    config: KmeConfig | None = None,
    admission: Admission | None = None,
    storage_problem: Callable[[], str | None] | None = None,
) -> web.Application:
    """The ETSI GS QKD 014 web application of one KME.

    Args:
        kme: The request logic.
        supplier: Makes and distributes keys for ``enc_keys``.
        max_body_bytes: Largest request body accepted; larger ones get 400.
        on_request: Called as ``on_request(endpoint, status, latency_s)``
            after each request (for metrics); its exceptions are logged and
            otherwise ignored.
        deliver_timeout_s: Deadline for one ``supplier.deliver`` call.
        config: The topology's ``kme`` section (fairness and connection
            limits); default: its defaults.
        admission: Who gets key (default: made from ``config``).
        storage_problem: Why this node cannot save its state now (None if
            it can): named in 503 bodies, since the operator of this KME can act on it.

    Returns:
        The application; serve it with :func:`start_kme_server`.
    """
    config = config if config is not None else KmeConfig()
    if admission is None:
        admission = Admission(
            rate_per_s=config.max_keys_per_sae_per_s,
            burst=config.burst,
            fair_share=config.fair_share,
            window_s=config.fair_share_window_s,
        )
    api = _Api(
        kme,
        supplier,
        max_body_bytes=max_body_bytes,
        deliver_timeout_s=deliver_timeout_s,
        body_timeout_s=config.body_timeout_s,
        admission=admission,
        storage_problem=storage_problem or (lambda: None),
    )
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_middleware(on_request)])
    app[_KME_KEY] = kme
    app[_CONFIG_KEY] = config
    app.router.add_get(f"{_API}/{{slave_SAE_ID}}/status", api.status, name="status", allow_head=False)
    app.router.add_get(f"{_API}/{{slave_SAE_ID}}/enc_keys", api.enc_keys, name="enc_keys", allow_head=False)
    app.router.add_post(f"{_API}/{{slave_SAE_ID}}/enc_keys", api.enc_keys, name="enc_keys")
    app.router.add_get(f"{_API}/{{master_SAE_ID}}/dec_keys", api.dec_keys, name="dec_keys", allow_head=False)
    app.router.add_post(f"{_API}/{{master_SAE_ID}}/dec_keys", api.dec_keys, name="dec_keys")
    return app


async def start_kme_server(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` over HTTPS on ``host:port``.

    Args:
        app: From :func:`make_app`.
        host: Address to listen on.
        port: Port; 0 picks a free one.
        ssl_context: From :func:`tls_context`.

    Returns:
        ``(runner, bound_port)``; stop with ``await runner.cleanup()``.

    Raises:
        ConfigError: The address cannot be bound.
    """
    _bridge_aiohttp_logs()
    try:
        runner, bound = await start_guarded(app, host, port, ssl_context, app[_CONFIG_KEY], interface="etsi014")
    except OSError as exc:
        raise ConfigError(f"cannot serve ETSI 014 on {host}:{port}: {exc.strerror or exc}") from exc
    log.info("kme.server_started", host=host, port=bound, kme_id=app[_KME_KEY].kme_id)
    return runner, bound


# -- internals -------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Api:
    """The route handlers: translate, call, translate back."""

    __slots__ = ("_admission", "_body_timeout_s", "_deliver_timeout_s", "_kme", "_max_body_bytes", "_storage_problem", "_supplier")

    def __init__(
        self,
        kme: Kme,
        supplier: KeySupplier,
        *,
        max_body_bytes: int,
        deliver_timeout_s: float,
        body_timeout_s: float,
        admission: Admission,
        storage_problem: Callable[[], str | None],
    ) -> None:
        self._kme = kme
        self._supplier = supplier
        self._max_body_bytes = max_body_bytes
        self._deliver_timeout_s = deliver_timeout_s
        self._body_timeout_s = body_timeout_s
        self._admission = admission
        self._storage_problem = storage_problem

    async def status(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        slave = request.match_info["slave_SAE_ID"]
        _query(request)  # status takes no parameters, but repeated ones are still malformed
        self._kme.authorize(caller, slave)  # before asking the supplier anything
        available = self._supplier.available_keys(caller, slave, self._kme.limits.default_key_size)
        return web.json_response(self._kme.status(caller, slave, available))

    async def enc_keys(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        slave = request.match_info["slave_SAE_ID"]
        query = _query(request)
        body = await self._body(request) if request.method == "POST" else None
        enc = self._kme.enc_request(caller, slave, query, body)  # every check before any key
        ticket = self._admit(enc)  # fairness before any key
        delivered = False
        try:
            async with asyncio.timeout(self._deliver_timeout_s):
                keys = await self._supplier.deliver(enc)
            delivered = True
        except TimeoutError:
            raise self._refusal(enc, RefusalReason.TIMEOUT, f"delivery took longer than {self._deliver_timeout_s:g} s") from None
        except InsufficientKeyMaterial as exc:
            raise self._refusal(enc, RefusalReason.NO_KEY, str(exc)) from exc
        except PeerTimeout as exc:
            raise self._refusal(enc, RefusalReason.TIMEOUT, str(exc)) from exc
        except TransportError as exc:  # unreachable, or refused on the way
            raise self._refusal(enc, RefusalReason.UNREACHABLE, str(exc)) from exc
        finally:
            ticket.release(delivered)
        answer = self._kme.enc_response(keys, enc)
        log.info(
            "kme.enc_keys_delivered",
            master_sae=caller,
            slave_saes=list(enc.slave_saes),
            key_ids=[k.key_id for k in keys],
            size_bits=enc.size_bits,
        )
        return web.json_response(answer)

    def _admit(self, enc: EncRequest) -> Ticket:
        destinations = sorted({node for sae in enc.slave_saes if (node := self._kme.node_of(sae)) is not None})
        available = min(self._supplier.available_keys(enc.master_sae, sae, enc.size_bits) for sae in enc.slave_saes)
        return self._admission.admit(enc.master_sae, enc.slave_saes, destinations, enc.number, available)

    def _refusal(self, enc: EncRequest, reason: RefusalReason, internal: str) -> DeliveryRefused:
        """What the caller is told when the network cannot deliver: SAEs, counts, "retry later"; the rest is logged."""
        slaves = ", ".join(enc.slave_saes)
        what = f"{enc.number} key(s) of {enc.size_bits} bits to {slaves}"
        message = {
            RefusalReason.NO_KEY: f"the network cannot carry {what} now; retry later",
            RefusalReason.UNREACHABLE: f"the network could not deliver {what} (a path failed on the way); retry later",
            RefusalReason.TIMEOUT: f"the network did not deliver {what} in time; retry later",
        }.get(reason, f"the network cannot deliver {what} now; retry later")
        problem = self._storage_problem()
        if problem:
            message += f" (this KME cannot save its state: {problem})"
        return DeliveryRefused(reason, message, internal=internal)

    async def dec_keys(self, request: web.Request) -> web.Response:
        caller = _caller(request)
        master = request.match_info["master_SAE_ID"]
        query = _query(request)
        body = await self._body(request) if request.method == "POST" else None
        # An fsync'ed SQLite transaction: keep it off the event loop.
        answer = await asyncio.to_thread(self._kme.dec_keys, caller, master, query, body)
        log.info(
            "kme.dec_keys_redeemed",
            slave_sae=caller,
            master_sae=master,
            key_ids=[k["key_ID"] for k in answer["keys"]],
        )
        return web.json_response(answer)

    async def _body(self, request: web.Request) -> Any:
        if request.content_type != _JSON:
            raise RequestError(
                f"Content-Type must be {_JSON}",
                [f"got Content-Type {request.headers.get('Content-Type', '(none)')[:80]!r}"],
            )
        charset = request.charset
        if charset is not None and charset.lower().replace("-", "") != "utf8":
            raise RequestError("JSON bodies must be UTF-8", [f"got charset {charset[:40]!r}"])
        too_big = RequestError(f"request body larger than {self._max_body_bytes} bytes")
        if request.content_length is not None and request.content_length > self._max_body_bytes:
            raise too_big
        try:
            async with asyncio.timeout(self._body_timeout_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_big from None
        except TimeoutError:
            raise _SlowBody(f"the request body did not arrive within {self._body_timeout_s:g} s") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("malformed JSON body: not UTF-8") from None
        try:
            body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            raise RequestError("malformed JSON body: a key is repeated", [f"key {exc.key[:80]!r} appears more than once in one object"]) from None
        except RecursionError:
            raise RequestError("malformed JSON body: nested too deeply") from None
        except ValueError as exc:
            raise RequestError("malformed JSON body", [str(exc)[:200]]) from None
        if body is None:
            # None tells the handlers "GET form"; a POSTed null must not read as that.
            raise RequestError("the request body must be a JSON object, got null")
        return body


def _caller(request: web.Request) -> str:
    """The SAE ID of the caller: its client certificate's common name."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthorized("a client certificate is required")
    name = _common_name(der)
    if name is None:
        raise Unauthorized("the client certificate has no single common name")
    return name


def _query(request: web.Request) -> dict[str, str]:
    query = request.query
    repeated = sorted({name for name in query if len(query.getall(name)) > 1})
    if repeated:
        raise RequestError(
            "a query parameter is repeated", [f"query parameter {name[:80]!r} is repeated" for name in repeated]
        )
    return {name: query[name] for name in query}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json.loads would silently keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _SlowBody(RequestError):
    """The body did not arrive within ``body_timeout_s``: 400, and the connection is closed."""


def _identity(request: web.Request) -> str:
    """Who is calling, for logs: the certificate's CN, else the peer address."""
    transport = request.transport
    return transport_identity(transport) if transport is not None else "unknown"


def _refusal_reason(exc: BaseException) -> str:
    """The log reason of a refused request (a closed vocabulary)."""
    if isinstance(exc, DeliveryRefused):
        return exc.reason.value
    if isinstance(exc, _SlowBody):
        return "body_timeout"
    for kind, reason in ((RequestError, "bad_request"), (KeyNotFound, "unknown_key"), (Unauthorized, "unauthorized"), (StorageFailure, "storage")):
        if isinstance(exc, kind):
            return reason
    return "internal"


def _middleware(on_request: Callable[[str, int, float], None] | None) -> Any:
    @web.middleware
    async def etsi_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await _answer(request, handler)
        if on_request is not None:
            name = request.match_info.route.name  # None for aiohttp's 404/405 routes
            endpoint = name if name in _ENDPOINTS else "other"
            try:
                on_request(endpoint, response.status, time.perf_counter() - started)
            except Exception:
                log.exception("kme.metrics_hook_failed")
        return response

    return etsi_errors


async def _answer(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """The handler's response, or the JSON error response for what it raised."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except QcinodeError as exc:
        status, body = Kme.error_body(exc)
        internal = exc.internal if isinstance(exc, DeliveryRefused) else str(exc)
        log.info(
            "kme.request_refused",
            caller=_identity(request),
            method=request.method,
            path=request.path[:200],
            status=status,
            reason=_refusal_reason(exc),
            error=type(exc).__name__,
            details=internal[:500],
        )
        response = web.json_response(body, status=status)
        if isinstance(exc, _SlowBody):
            response.force_close()  # the rest of a slow body is not waited for
        return response
    except web.HTTPRequestEntityTooLarge:
        status, body = Kme.error_body(RequestError("request body too large"))
        log.info(
            "kme.request_refused", caller=_identity(request), method=request.method, path=request.path[:200], status=status,
            reason="bad_request", error="RequestEntityTooLarge", details=body["message"],
        )  # fmt: skip
        return web.json_response(body, status=status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        log.info(
            "kme.request_refused", caller=_identity(request), method=request.method, path=request.path[:200], status=exc.status,
            reason="bad_request", error=type(exc).__name__, details=exc.reason,
        )  # fmt: skip
        # aiohttp's own answers (404 unknown path, 405 wrong method): keep the
        # status and headers such as Allow, but speak JSON like the rest.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"message": exc.reason, "details": []}, status=exc.status, headers=headers)
    except Exception:
        log.exception("kme.request_crashed", caller=_identity(request), method=request.method, path=request.path[:200])
        status, body = Kme.error_body(RuntimeError())
        return web.json_response(body, status=status)


class _AiohttpServerLogs(logging.Handler):
    """aiohttp's own refusals of unparseable HTTP, as one structured ``kme.request_refused`` line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            caller = str(record.args[0]) if isinstance(record.args, tuple) and record.args else "unknown"
            exc = record.exc_info[1] if record.exc_info else None
            details = (getattr(exc, "message", None) or str(exc) if exc is not None else record.getMessage())
            error = type(exc).__name__ if exc else ""
            log.info("kme.request_refused", caller=caller, status=400, reason="malformed_http", error=error, details=str(details).replace("\n", " ")[:300])
        except Exception:  # a log handler must never raise
            self.handleError(record)


def _bridge_aiohttp_logs() -> None:
    """Route the ``aiohttp.server`` logger (tracebacks of malformed requests) into one JSON line per refusal."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(h, _AiohttpServerLogs) for h in logger.handlers):
        logger.addHandler(_AiohttpServerLogs())
    logger.propagate = False
