"""Slow-client and TLS guards for every HTTPS interface of a node (ETSI 014, ETSI 020, SKIP), and the TLS accept of ETSI 004.

Theory of operation:
    * **One door policy for every HTTPS server.** A node serves several
      aiohttp applications over mutual TLS; a plain ``web.TCPSite`` lets a
      client hold a connection open forever by never finishing the TLS
      handshake or the request headers (slowloris). :func:`start_guarded`
      serves an application through :class:`GuardedSite` instead, with the
      three timeouts of the topology's ``kme:`` section (any object with
      the fields of :class:`GuardTimeouts`; :class:`~qcinode.topology.KmeConfig`
      is one).
    * **Own TLS accept.** The site wraps each accepted socket in
      :class:`asyncio.sslproto.SSLProtocol` itself, with
      ``tls_handshake_timeout_s``, so that a failed handshake — no client
      certificate, another CA's, a timeout — is logged (``kme.tls_refused``)
      with the peer address and the reason, which ``loop.create_server``
      would swallow.
    * **Watchdog per connection.** :class:`Watchdog` sits between TLS and
      aiohttp's protocol and runs one timer in three phases: *headers* (from
      the connection's start, or from the first byte after a response,
      until the application sees the request: at most ``header_timeout_s``),
      *busy* (a request is being handled: no timer; bodies have their own
      deadline in each application), *idle* (after a response, until a byte
      of the next request: at most ``idle_timeout_s``). On expiry the
      connection is aborted and logged (``kme.connection_dropped``).
    * **The application tells the watchdog** when a request starts and ends:
      :func:`start_guarded` puts a middleware first (outermost) in the
      application's chain, so every request, answered or refused by any
      inner middleware, moves the phase.
    * **A cap on open connections** (``max_connections``, each interface
      server its own count, :class:`ConnectionCap`): a client that opens
      connections without end would otherwise exhaust the node's file
      descriptors, and with them every interface and link of the node. A
      connection over the cap is closed as it is accepted, before the TLS
      handshake costs anything, and logged (``kme.connection_refused``,
      reason ``max_connections``; at most one line per
      :data:`REFUSAL_LOG_INTERVAL_S`, counting the refusals since the last).
      A connection counts from its accept until its socket closes, whatever
      closes it.
    * **ETSI 004 streams** are not HTTP: :mod:`qcinode.kme.etsi004` keeps
      its own per-request and idle deadlines with the same ``kme:`` values,
      and accepts TLS through :func:`tls_accept`, as the HTTPS sites do.
    * **Logs say which interface.** Every line carries ``interface``
      (``etsi014``, ``etsi020``, ``skip``, ``etsi004``), the caller (its certificate's
      common name, else its address) and the reason; the event names are
      the same for every interface, so one alert covers them all.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from qcinode.errors import ConfigError
from qcinode.pki import common_name_of

__all__ = [
    "ConnectionCap", "GuardTimeouts", "GuardedSite", "Watchdog", "address", "common_name", "serve_listen", "start_guarded", "tls_accept", "transport_identity",
]  # fmt: skip

log = structlog.get_logger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GuardTimeouts(Protocol):
    """The connection limits of a guarded site (the topology's ``kme:`` section has them)."""

    @property
    def tls_handshake_timeout_s(self) -> float:
        """A client that has not finished the TLS handshake by then is dropped."""
        ...

    @property
    def header_timeout_s(self) -> float:
        """A request's line and headers must arrive within this after its first byte."""
        ...

    @property
    def idle_timeout_s(self) -> float:
        """A keep-alive connection with no request under way is closed after this."""
        ...

    @property
    def max_connections(self) -> int:
        """Connections one interface server holds open at once; the next is closed as it is accepted."""
        ...


#: Seconds between two ``kme.connection_refused`` lines of one server: a flood of connections is not a flood of log lines.
REFUSAL_LOG_INTERVAL_S = 10.0


class ConnectionCap:
    """At most ``limit`` connections of one interface server open at once (module docstring).

    Attributes:
        limit: The cap.
        interface: The interface's name, for the log.
        open: Connections accepted and not yet closed.
        refused: Connections closed at accept for being over the cap, since the server started.
    """

    def __init__(self, limit: int, *, interface: str) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_connections must be a positive integer, got {limit!r}")
        self.limit = limit
        self.interface = interface
        self.open = 0
        self.refused = 0
        self._logged_refused = 0
        self._logged_at = -float("inf")

    def accept(self, make: Callable[[Callable[[], None]], asyncio.BaseProtocol]) -> asyncio.BaseProtocol:
        """The protocol for one accepted socket: ``make(release)`` under the cap (``release`` once its socket closed), else a refusal."""
        if self.open >= self.limit:
            self.refused += 1
            return _Refused(self)
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open -= 1

        try:
            return make(release)
        except BaseException:
            release()
            raise

    def _log_refusal(self, transport: asyncio.BaseTransport) -> None:
        now = time.monotonic()
        if now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
            return
        log.warning(
            "kme.connection_refused",
            interface=self.interface,
            caller=address(transport.get_extra_info("peername")),
            reason="max_connections",
            max_connections=self.limit,
            refused=self.refused - self._logged_refused,
        )
        self._logged_at, self._logged_refused = now, self.refused


class _Refused(asyncio.Protocol):
    """A connection over the cap: logged (rate-limited) and closed at once, before any TLS."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap._log_refusal(transport)
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


async def start_guarded(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext, timeouts: GuardTimeouts, *, interface: str
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` over HTTPS on ``host:port`` with the TLS and slow-client guards.

    ``app`` must not have been served yet (its middleware chain is still
    open): the watchdog's middleware is put first in it.

    Args:
        app: The application.
        host: Address to listen on.
        port: Port; 0 picks a free one.
        ssl_context: The server context (it decides which client certificates pass).
        timeouts: The three connection limits.
        interface: Names the interface in the logs (``etsi014``, ``etsi020``, ``skip``).

    Returns:
        ``(runner, bound_port)``; stop with ``await runner.cleanup()``.

    Raises:
        OSError: The address cannot be bound (the runner is cleaned up; callers
            turn it into a :class:`~qcinode.errors.ConfigError` naming their setting).
    """
    watchdogs: dict[int, Watchdog] = {}
    app.middlewares.insert(0, _watching(watchdogs))
    # aiohttp's own keep-alive timer is a backstop; the watchdog enforces the configured limits.
    keepalive = timeouts.idle_timeout_s + timeouts.header_timeout_s
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=keepalive)
    await runner.setup()
    try:
        site = GuardedSite(runner, host, port, ssl_context, timeouts, watchdogs, interface=interface)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(bound)


async def serve_listen(
    app: web.Application,
    listen: str,
    ssl_context: ssl.SSLContext,
    timeouts: GuardTimeouts,
    *,
    interface: str,
    option: str,
    any_host: bool = False,
) -> tuple[web.AppRunner, int]:
    """:func:`start_guarded` on ``listen`` (``HOST:PORT``; port 0 picks a free one); the runner and the bound port.

    Args:
        app: Not served yet (see :func:`start_guarded`).
        listen: ``HOST:PORT``, the host possibly in brackets.
        ssl_context: The server's context (client certificates of the cluster CA).
        timeouts: The handshake, header and idle limits (the topology's ``kme:`` section).
        interface: The interface's name, in log lines and in the error.
        option: The setting ``listen`` came from, named in the error.
        any_host: An empty host means every address.

    Raises:
        ConfigError: The address cannot be bound.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or ("0.0.0.0" if any_host else "")
    try:
        return await start_guarded(app, host, int(port), ssl_context, timeouts, interface=interface)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot serve {_INTERFACE_NAMES.get(interface, interface)} on {listen}: {exc.strerror or exc}") from exc


_INTERFACE_NAMES = {"etsi014": "ETSI 014", "etsi020": "ETSI 020", "skip": "SKIP"}


@functools.lru_cache(maxsize=1024)
def common_name(der: bytes) -> str | None:
    """The common name of a DER certificate (None if it has not exactly one).

    Parsed once per certificate, not once per request: a kept-alive client
    sends the same certificate for every call. Keyed by the whole DER, so a
    different certificate is always parsed; the TLS layer verified it.
    """
    try:
        return common_name_of(der)
    except ConfigError:
        return None


def transport_identity(transport: asyncio.BaseTransport) -> str:
    """Who is at the other end, for logs: the client certificate's CN, else the peer address."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der and (name := common_name(der)) is not None:
        return name
    return address(transport.get_extra_info("peername"))


def address(peername: Any) -> str:
    """``host:port`` of a socket's peer name, for logs."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return str(peername) if peername else "unknown"


def _watching(watchdogs: dict[int, Watchdog]) -> Any:
    """The middleware telling each connection's watchdog when a request starts and ends."""

    @web.middleware
    async def watch(request: web.Request, handler: _Handler) -> web.StreamResponse:
        watchdog = watchdogs.get(id(request.protocol))
        if watchdog is not None:
            watchdog.request_started()
        try:
            return await handler(request)
        finally:
            if watchdog is not None:
                watchdog.request_finished()

    return watch


class Watchdog(asyncio.Protocol):
    """Sits in front of aiohttp's per-connection protocol and drops slow-header and idle connections.

    Phases: *headers* (from the connection's start, or from the first byte
    after a response, until the middleware sees the request: at most
    ``header_timeout_s``), *busy* (a request is being handled: no timer; the
    body has its own deadline), *idle* (after a response, until a byte of
    the next request: at most ``idle_timeout_s``).
    """

    def __init__(self, inner: asyncio.Protocol, timeouts: GuardTimeouts, registry: dict[int, Watchdog], *, interface: str) -> None:
        self._inner = inner
        self._timeouts = timeouts
        self._registry = registry
        self._interface = interface
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = "headers"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry[id(self._inner)] = self
        self._inner.connection_made(transport)
        self._arm("headers", self._timeouts.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._phase == "idle" and data:
            self._arm("headers", self._timeouts.header_timeout_s)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._registry.pop(id(self._inner), None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- told by the middleware --------------------------------------------
    def request_started(self) -> None:
        self._cancel()
        self._phase = "busy"

    def request_finished(self) -> None:
        self._arm("idle", self._timeouts.idle_timeout_s)

    # -- timers -----------------------------------------------------------
    def _arm(self, phase: str, seconds: float) -> None:
        self._cancel()
        self._phase = phase
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, phase, seconds)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, phase: str, seconds: float) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        reason = "header_timeout" if phase == "headers" else "idle_timeout"
        log.info(
            "kme.connection_dropped", interface=self._interface, caller=transport_identity(transport), reason=reason, timeout_s=seconds
        )
        transport.abort()


class _TlsAccept(sslproto.SSLProtocol):
    """asyncio's server-side TLS, with the peer address kept for the log of a failed handshake."""

    peer = "unknown"
    on_lost: Callable[[], None] | None = None  # told once the socket closed (the connection cap)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = address(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self.on_lost is not None:
                self.on_lost()


def _log_handshake(interface: str, peer: Callable[[], str], timeout_s: float, waiter: asyncio.Future[None]) -> None:
    if waiter.cancelled():
        return
    exc = waiter.exception()
    if exc is None:
        return
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        reason = "tls_handshake_timeout"
    elif isinstance(exc, ssl.SSLError) and any(
        marker in str(exc).upper() for marker in ("CERTIFICATE", "PEER_DID_NOT_RETURN", "UNKNOWN_CA", "CERT")
    ):
        reason = "tls_client_auth_failed"
    else:
        reason = "tls_failed"
    log.info(
        "kme.tls_refused",
        interface=interface,
        caller=peer(),
        reason=reason,
        error=type(exc).__name__,
        details=str(exc)[:300],
        timeout_s=timeout_s,
    )


def tls_accept(
    loop: asyncio.AbstractEventLoop,
    app: asyncio.Protocol,
    context: ssl.SSLContext,
    handshake_timeout_s: float,
    *,
    interface: str,
    on_lost: Callable[[], None] | None = None,
) -> asyncio.BaseProtocol:
    """The server-side TLS protocol for one accepted socket, carrying ``app``; a failed handshake is logged (``kme.tls_refused``).

    For a ``loop.create_server`` protocol factory, under a :class:`ConnectionCap`:
    ``lambda: cap.accept(lambda release: tls_accept(loop, make_app(), ..., on_lost=release))``.
    ``on_lost`` is called once the socket closed, whatever closed it.
    """
    waiter: asyncio.Future[None] = loop.create_future()
    tls = _TlsAccept(loop, app, context, waiter, server_side=True, ssl_handshake_timeout=handshake_timeout_s)  # type: ignore[arg-type]  # a float works
    tls.on_lost = on_lost
    waiter.add_done_callback(lambda w: _log_handshake(interface, lambda: tls.peer, handshake_timeout_s, w))
    return tls


class GuardedSite(web.BaseSite):
    """A TCP site doing its own TLS accept (with a handshake timeout and a log of failures) and watching every connection.

    The application served must have the watchdog middleware of the same
    ``watchdogs`` registry (:func:`start_guarded` sees to both).
    """

    __slots__ = ("_host", "_interface", "_port", "_timeouts", "_watchdogs", "cap")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        timeouts: GuardTimeouts,
        watchdogs: dict[int, Watchdog],
        *,
        interface: str,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._timeouts = timeouts
        self._watchdogs = watchdogs
        self._interface = interface

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None and self._ssl_context is not None
        context, timeouts, watchdogs, interface = self._ssl_context, self._timeouts, self._watchdogs, self._interface
        handshake_s = timeouts.tls_handshake_timeout_s
        self.cap = cap = ConnectionCap(timeouts.max_connections, interface=interface)

        def accept() -> asyncio.BaseProtocol:
            return cap.accept(
                lambda release: tls_accept(
                    loop, Watchdog(server(), timeouts, watchdogs, interface=interface), context, handshake_s, interface=interface, on_lost=release
                )
            )

        self._server = await loop.create_server(accept, self._host, self._port, backlog=self._backlog)
