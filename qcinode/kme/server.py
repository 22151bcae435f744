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
    * **Metrics and logs.** ``on_request(endpoint, status, latency_s)`` is
      called once per answered request (``endpoint`` is ``status``,
      ``enc_keys``, ``dec_keys`` or ``other``). Logs carry key IDs and counts,
      never key bytes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from qcinode.errors import ConfigError, PeerTimeout, QcinodeError, RequestError, Unauthorized
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme
from qcinode.pki import common_name_of

__all__ = ["KeySupplier", "make_app", "start_kme_server", "tls_context"]

log = structlog.get_logger(__name__)

_API = "/api/v1/keys"
_JSON = "application/json"
_ENDPOINTS = frozenset({"status", "enc_keys", "dec_keys"})
_KME_KEY: web.AppKey[Kme] = web.AppKey("qcinode_kme", Kme)


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

    Returns:
        The application; serve it with :func:`start_kme_server`.
    """
    api = _Api(kme, supplier, max_body_bytes=max_body_bytes, deliver_timeout_s=deliver_timeout_s)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_middleware(on_request)])
    app[_KME_KEY] = kme
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
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = runner.addresses[0][1]
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve ETSI 014 on {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        await runner.cleanup()
        raise
    log.info("kme.server_started", host=host, port=bound, kme_id=app[_KME_KEY].kme_id)
    return runner, int(bound)


# -- internals -------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Api:
    """The route handlers: translate, call, translate back."""

    __slots__ = ("_kme", "_supplier", "_max_body_bytes", "_deliver_timeout_s")

    def __init__(self, kme: Kme, supplier: KeySupplier, *, max_body_bytes: int, deliver_timeout_s: float) -> None:
        self._kme = kme
        self._supplier = supplier
        self._max_body_bytes = max_body_bytes
        self._deliver_timeout_s = deliver_timeout_s

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
        try:
            async with asyncio.timeout(self._deliver_timeout_s):
                keys = await self._supplier.deliver(enc)
        except TimeoutError:
            raise PeerTimeout(f"key delivery took longer than {self._deliver_timeout_s:g} s") from None
        answer = self._kme.enc_response(keys, enc)
        log.info(
            "kme.enc_keys_delivered",
            master_sae=caller,
            slave_saes=list(enc.slave_saes),
            key_ids=[k.key_id for k in keys],
            size_bits=enc.size_bits,
        )
        return web.json_response(answer)

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
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_big from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("malformed JSON body: not UTF-8") from None
        try:
            body = json.loads(text, parse_constant=_reject_constant)
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
    try:
        return common_name_of(der)
    except ConfigError:
        raise Unauthorized("the client certificate has no single common name") from None


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
        log.info(
            "kme.request_refused",
            method=request.method,
            path=request.path[:200],
            status=status,
            error=type(exc).__name__,
            details=body["message"],
        )
        return web.json_response(body, status=status)
    except web.HTTPRequestEntityTooLarge:
        status, body = Kme.error_body(RequestError("request body too large"))
        return web.json_response(body, status=status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own answers (404 unknown path, 405 wrong method): keep the
        # status and headers such as Allow, but speak JSON like the rest.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"message": exc.reason, "details": []}, status=exc.status, headers=headers)
    except Exception:
        log.exception("kme.request_crashed", method=request.method, path=request.path[:200])
        status, body = Kme.error_body(RuntimeError())
        return web.json_response(body, status=status)
