"""SKIP, the Secure Key Integration Protocol (draft-cisco-skip), over HTTPS with mutual TLS.

Theory of operation:
    * **Who is asking.** An encryptor (Cisco's and several firewall and VPN
      products call it) is an SAE: its TLS client certificate's common name
      is its SKIP system ID (``localSystemID``), issued by the cluster CA as
      for ETSI 014. The draft's TLS-PSK mode is not offered.
    * **Four calls, all GET.** ``/capabilities`` (what this Key Provider
      offers the caller: entropy, keys, the caller's own ID and the remote
      system IDs it can share keys with); ``/key?remoteSystemID=R[&size=N]``
      (a new key shared with system R: ``{"keyId", "key"}``, both hex);
      ``/key/{keyId}?remoteSystemID=R`` (the same key, at R's Key Provider,
      for R's peer); ``/entropy[?minentropy=N]`` (``{"randomStr", "minentropy"}``,
      N bits from the node's CSPRNG, never QKD key).
    * **The same key store and relay as ETSI 014.** ``/key`` is an
      ``enc_keys`` of one key (:meth:`~qcinode.kme.handlers.Kme.enc_request`
      checks it, the node's relay makes it and stores the peer's copy);
      ``/key/{keyId}`` is a ``dec_keys`` (:meth:`~qcinode.kme.handlers.Kme.dec_keys`,
      one transaction of :class:`~qcinode.keys.keystore.SaeKeyStore`). So a
      key is handed to each party once, through whichever interface asks
      first: a key fetched with SKIP is gone for ``dec_keys`` and the other
      way round. A ``keyId`` is the ETSI ``key_ID`` UUID without hyphens
      (32 hex digits, 128 bits: it fits IKEv2's PPK_ID).
    * **Status codes** (one table, :data:`STATUS_OF`): 200; 400 a malformed
      request, an unknown or own ``remoteSystemID``, an unsupported size;
      401 no usable client certificate; 404 a ``keyId`` this Key Provider
      does not hold for the caller (unknown, already fetched); 405 another
      method; 503 no key can be delivered now (no path, too little key, a
      node unreachable, a storage fault). Error bodies are
      ``{"message": ...}``; nothing in them names internals.
    * **Slow clients** are dropped as at the ETSI 014 server
      (:func:`start_server`, :mod:`qcinode.kme.guarded`, with the node's
      ``kme:`` timeouts): a TLS handshake, a request's headers or an idle
      keep-alive connection taking too long; those log lines carry
      ``interface="skip"``.
    * **Logs** carry key IDs and system IDs, never key bytes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from qcinode.errors import (
    ConfigError,
    InsufficientKeyMaterial,
    KeyNotFound,
    PeerTimeout,
    PeerUnavailable,
    QcinodeError,
    RequestError,
    StorageFailure,
    Unauthorized,
)
from qcinode.kme.guarded import GuardTimeouts, serve_listen
from qcinode.kme.handlers import DeliveryRefused, Kme
from qcinode.kme.server import KeySupplier
from qcinode.pki import common_name_of

__all__ = ["DEFAULT_KEY_BITS", "STATUS_OF", "key_id_from_uuid", "make_app", "start_server", "uuid_from_key_id"]

log = structlog.get_logger(__name__)

DEFAULT_KEY_BITS = 256
MAX_ENTROPY_BITS = 8192

#: The one table: what each error becomes on the wire (first match wins).
STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (Unauthorized, 401),
    (KeyNotFound, 404),
    (RequestError, 400),
    (DeliveryRefused, 503),
    (InsufficientKeyMaterial, 503),
    (PeerUnavailable, 503),
    (PeerTimeout, 503),
    (StorageFailure, 503),
)


def key_id_from_uuid(key_id: str) -> str:
    """The SKIP ``keyId`` of an ETSI ``key_ID``: 32 lower-case hex digits."""
    return uuid.UUID(key_id).hex


def uuid_from_key_id(key_id: str) -> str:
    """The ETSI ``key_ID`` of a SKIP ``keyId``.

    Raises:
        RequestError: Not 32 hex digits.
    """
    if len(key_id) != 32 or any(c not in "0123456789abcdefABCDEF" for c in key_id):
        raise RequestError(f"keyId must be 32 hex digits, got {key_id[:40]!r}")
    return str(uuid.UUID(hex=key_id))


def make_app(
    kme: Kme,
    supplier: KeySupplier,
    *,
    remote_systems: Callable[[str], list[str]],
    deliver_timeout_s: float = 30.0,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> web.Application:
    """The SKIP application of one node's Key Provider.

    Args:
        kme: The ETSI 014 request logic (validation, redemption).
        supplier: Makes keys (the node's relay).
        remote_systems: The system IDs the caller may share keys with.
        deliver_timeout_s: Deadline for making one key.
        random_bytes: The CSPRNG for ``/entropy``.
    """
    async def capabilities(request: web.Request) -> web.Response:
        caller = _caller(request, kme)
        return web.json_response(
            {
                "entropy": True,
                "key": True,
                "algorithm": "qkd-bb84-decoy-trusted-relay",
                "localSystemID": caller,
                "remoteSystemID": remote_systems(caller),
            }
        )

    async def new_key(request: web.Request) -> web.Response:
        caller = _caller(request, kme)
        query = _query(request, ("remoteSystemID", "size"))
        remote = _required(query, "remoteSystemID")
        size = query.get("size", str(DEFAULT_KEY_BITS))
        enc = kme.enc_request(caller, remote, {"number": "1", "size": size}, None)
        try:
            async with asyncio.timeout(deliver_timeout_s):
                keys = await supplier.deliver(enc)
        except TimeoutError:
            raise PeerTimeout(f"no key for {remote} within {deliver_timeout_s:g} s") from None
        (key,) = keys
        log.info("skip.key_delivered", local_system=caller, remote_system=remote, key_id=key.key_id, size_bits=enc.size_bits)
        return web.json_response({"keyId": key_id_from_uuid(key.key_id), "key": key.key.hex()})

    async def key_by_id(request: web.Request) -> web.Response:
        caller = _caller(request, kme)
        query = _query(request, ("remoteSystemID",))
        remote = _required(query, "remoteSystemID")
        key_id = uuid_from_key_id(request.match_info["keyId"])
        container = await asyncio.to_thread(kme.dec_keys, caller, remote, {"key_ID": key_id}, None)
        (entry,) = container["keys"]
        log.info("skip.key_redeemed", local_system=caller, remote_system=remote, key_id=key_id)
        return web.json_response({"keyId": key_id_from_uuid(key_id), "key": base64.b64decode(entry["key"]).hex()})

    async def entropy(request: web.Request) -> web.Response:
        _caller(request, kme)
        query = _query(request, ("minentropy",))
        text = query.get("minentropy", str(DEFAULT_KEY_BITS))
        if not text.isdigit() or not 8 <= int(text) <= MAX_ENTROPY_BITS or int(text) % 8:
            raise RequestError(f"minentropy must be a multiple of 8 bits in [8, {MAX_ENTROPY_BITS}], got {text[:20]!r}")
        bits = int(text)
        return web.json_response({"randomStr": random_bytes(bits // 8).hex().upper(), "minentropy": bits})

    app = web.Application(middlewares=[_errors])
    app.router.add_get("/capabilities", capabilities, allow_head=False)
    app.router.add_get("/key", new_key, allow_head=False)
    app.router.add_get("/key/{keyId}", key_by_id, allow_head=False)
    app.router.add_get("/entropy", entropy, allow_head=False)
    return app


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except QcinodeError as exc:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 503)
        message = str(exc) if status != 503 or isinstance(exc, DeliveryRefused) else _unavailable(exc)
        log.info("skip.request_refused", path=request.path[:200], status=status, error=type(exc).__name__, details=str(exc)[:300])
        return web.json_response({"message": message[:500]}, status=status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return web.json_response({"message": exc.reason}, status=exc.status, headers=headers)
    except Exception:
        log.exception("skip.request_crashed", path=request.path[:200])
        return web.json_response({"message": "internal error"}, status=503)


def _unavailable(exc: BaseException) -> str:
    if isinstance(exc, StorageFailure):
        return "the Key Provider cannot write its key store now; retry later"
    return "no key can be delivered now; retry later"


async def start_server(app: web.Application, listen: str, context: ssl.SSLContext, timeouts: GuardTimeouts) -> tuple[web.AppRunner, int]:
    """Serves ``app`` (from :func:`make_app`) on ``listen``, an empty host every address, behind the guards; see :func:`~.guarded.serve_listen`."""
    return await serve_listen(app, listen, context, timeouts, interface="skip", option="--skip-listen", any_host=True)


def _caller(request: web.Request, kme: Kme) -> str:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthorized("a client certificate is required")
    try:
        caller = common_name_of(der)
    except ConfigError:
        raise Unauthorized("the client certificate has no single common name") from None
    if kme.node_of(caller) != kme.kme_id:
        raise Unauthorized(f"{caller!r} is not a system attached to this Key Provider")
    return caller


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    query = request.query
    problems = [f"unknown query parameter {name[:40]!r}" for name in query if name not in allowed]
    problems += [f"query parameter {name[:40]!r} is repeated" for name in set(query) if len(query.getall(name)) > 1]
    if problems:
        raise RequestError(problems[0], problems)
    return {name: query[name] for name in query}


def _required(query: dict[str, str], name: str) -> str:
    if not query.get(name):
        raise RequestError(f"{name} is required")
    return query[name]

