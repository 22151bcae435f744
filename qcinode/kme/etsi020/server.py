"""The ETSI GS QKD 020 API over HTTPS with mutual TLS: a thin aiohttp adapter.

Theory of operation:
    * **Who may call.** The TLS context trusts one CA, the other operator's
      (``interworking[i].peer.ca``), and demands a client certificate with
      TLS 1.3 as the floor (the standard's connection clause). The
      certificate's common name must then be the configured peer KME, else
      401: a certificate of the other operator is not enough, it must be its
      interworking KME's.
    * **What it does.** Parse (:mod:`.protocol`), then hand the request to
      the :class:`Backend` (the interworking driver); everything that means
      something happens there. ``ext_keys`` and ``ext_keys/void`` with an
      ``ack_callback_url`` answer 202 at once and the backend acknowledges
      later; without one (the optional synchronous mode) the answer waits for
      the outcome and is ``200`` with the ``ack_containers``.
    * **Errors** are :class:`~.protocol.Problem` objects in one place, the
      middleware: 400/401/503 from the backend or the parser, 408 when a
      body does not arrive in time, 404/405 for other paths and methods, and
      503 "server side general error" for anything unexpected (logged,
      never described to the peer).
    * **Slow clients** are dropped as at the ETSI 014 server
      (:mod:`qcinode.kme.guarded`, with the node's ``kme:`` timeouts): a
      TLS handshake, a request's headers or an idle keep-alive connection
      taking too long; those log lines carry ``interface="etsi020"``.
    * **Logs** name key IDs, SAE IDs and statuses, never key values.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from qcinode.errors import ConfigError
from qcinode.kme.etsi020.protocol import (
    AckContainer,
    ExtKeysRequest,
    Problem,
    VoidRequest,
    ack_containers_body,
    parse_acks,
    parse_ext_keys,
    parse_void,
    versions_body,
)
from qcinode.kme.guarded import GuardTimeouts, serve_listen
from qcinode.pki import common_name_of

__all__ = ["Backend", "make_app", "server_tls_context", "start_server"]

log = structlog.get_logger(__name__)

_JSON = "application/json"
_MAX_BODY = 4 * 1024 * 1024
_BACKEND: web.AppKey[Backend] = web.AppKey("qcinode_etsi020_backend", object)  # type: ignore[arg-type]


class Backend(Protocol):
    """What the 020 server needs from the interworking driver."""

    peer_kme: str

    def start_ext_keys(self, request: ExtKeysRequest) -> Awaitable[list[AckContainer]]:
        """Checks routes (raising :class:`Problem`) and starts relaying; the awaitable gives the outcome.

        With an ``ack_callback_url`` the backend also sends the outcome there itself.
        """
        ...

    def accept_acks(self, acks: list[AckContainer]) -> None:
        """Takes acknowledgements of keys this KME handed over (raising :class:`Problem` 400 for unknown keys)."""
        ...

    def start_void(self, request: VoidRequest) -> Awaitable[list[AckContainer]]:
        """Voids keys (raising :class:`Problem`); the awaitable gives the outcome (also sent to the callback)."""
        ...


def server_tls_context(cert: Path, key: Path, peer_ca: Path) -> ssl.SSLContext:
    """A TLS 1.3 server context trusting only the other operator's CA for client certificates.

    Raises:
        ConfigError: A file cannot be read or holds no certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the interworking KME certificate {cert}: {exc}") from exc
    try:
        context.load_verify_locations(cafile=str(peer_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"interworking.peer.ca: cannot load the other operator's CA {peer_ca}: {exc}") from exc
    return context


def make_app(backend: Backend, *, body_timeout_s: float = 10.0) -> web.Application:
    """The 020 application of one interworking KME."""
    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_problems(backend)])
    app[_BACKEND] = backend

    async def read(request: web.Request) -> object:
        if request.content_type != _JSON:
            raise Problem.bad_request({"content_type": f"Content-Type must be {_JSON}"})
        try:
            async with asyncio.timeout(body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise Problem(408, "timeout", "timeout", {"timeout": "a complete request was not received in time"}) from None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise Problem.bad_request({"malformed_body": "the body is not UTF-8 JSON"}) from None

    async def versions(request: web.Request) -> web.Response:
        return web.json_response(versions_body())

    async def ext_keys(request: web.Request) -> web.Response:
        parsed = parse_ext_keys(await read(request))
        outcome = backend.start_ext_keys(parsed)
        log.info(
            "etsi020.ext_keys_received",
            key_ids=list(parsed.key_ids),
            initiator_sae=parsed.initiator_sae_id,
            target_saes=list(parsed.target_sae_ids),
            mode="async" if parsed.ack_callback_url else "sync",
        )
        if parsed.ack_callback_url is not None:
            return web.Response(status=202)
        return web.json_response(ack_containers_body(await outcome))

    async def ack(request: web.Request) -> web.Response:
        acks = parse_acks(await read(request))
        backend.accept_acks(acks)
        return web.Response(status=200)

    async def void(request: web.Request) -> web.Response:
        parsed = parse_void(await read(request))
        outcome = backend.start_void(parsed)
        log.info("etsi020.void_received", key_ids=list(parsed.key_ids), initiator_sae=parsed.initiator_sae_id, all_confirmation=parsed.all_confirmation)
        if parsed.ack_callback_url is not None:
            return web.Response(status=202)
        return web.json_response(ack_containers_body(await outcome))

    app.router.add_get("/kmapi/versions", versions, allow_head=False)
    app.router.add_post("/kmapi/v1/ext_keys", ext_keys)
    app.router.add_post("/kmapi/v1/ext_keys/ack", ack)
    app.router.add_post("/kmapi/v1/ext_keys/void", void)
    return app


async def start_server(app: web.Application, listen: str, context: ssl.SSLContext, timeouts: GuardTimeouts) -> tuple[web.AppRunner, int]:
    """Serves ``app`` (from :func:`make_app`) on ``listen`` behind the guards; see :func:`~qcinode.kme.guarded.serve_listen`."""
    return await serve_listen(app, listen, context, timeouts, interface="etsi020", option="interworking.listen")


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problems(backend: Backend) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            caller = _caller(request)
            if caller != backend.peer_kme:
                raise Problem(401, "unauthorized", "unauthorized", {"unauthorized": "the client certificate is not the peer interworking KME's"})
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Problem as problem:
            log.info("etsi020.request_refused", path=request.path[:200], status=problem.status, problem=problem.kind, details=str(problem)[:300])
            return web.json_response(problem.body(), status=problem.status)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = "not-found" if exc.status == 404 else "invalid-request"
            refusal = Problem(exc.status if exc.status in (404, 405, 413) else 400, kind, exc.reason.lower(), {"request": exc.reason})
            return web.json_response(refusal.body(), status=refusal.status)
        except Exception:
            log.exception("etsi020.request_crashed", path=request.path[:200])
            return web.json_response(Problem.server_error("the KME cannot process the request now").body(), status=503)

    return middleware


def _caller(request: web.Request) -> str:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Problem(401, "unauthorized", "unauthorized", {"unauthorized": "a client certificate is required"})
    try:
        return common_name_of(der)
    except ConfigError:
        raise Problem(401, "unauthorized", "unauthorized", {"unauthorized": "the client certificate has no single common name"}) from None
