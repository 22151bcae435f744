"""The gRPC error tables: domain errors to status codes (servers), status codes to domain errors (clients).

Theory of operation:
    Servicers and the code they call raise the project's own errors
    (:mod:`qcinode.errors`) and never touch gRPC status codes;
    :class:`DomainErrors`, the first interceptor of every node server, turns
    an escaping :class:`~qcinode.errors.QcinodeError` into the call's status
    with :data:`SERVER_STATUS`, the one table. The first row whose class the
    error is an instance of wins, so subclasses come before their bases.
    Anything else escaping a servicer is a bug: gRPC logs it and answers
    UNKNOWN, as before.

    Every client call goes through :func:`rpc_errors`, the other table: a
    ``grpc.RpcError`` (sync or aio) leaves as
    :class:`~qcinode.errors.PeerTimeout` (DEADLINE_EXCEEDED),
    :class:`~qcinode.errors.PeerRefused` (the peer answered and said no:
    :data:`REFUSALS`) or :class:`~qcinode.errors.PeerUnavailable`
    (everything else: not reachable, cancelled, broken). Each carries the
    status code's name and the peer's details, so a caller that needs them
    (the CLI names a refused argument) reads attributes, not message text.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final

import grpc

from ..errors import (
    AuthenticationFailed,
    ConfigError,
    KeyStoreError,
    NotFound,
    OutOfSequence,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
    ProtocolError,
    QcinodeError,
    SessionAborted,
    TransportError,
    Unauthorized,
)

__all__ = ["REFUSALS", "SERVER_STATUS", "DomainErrors", "rpc_error", "rpc_errors", "status_for"]

#: Domain error -> status code of a call that raised it; the first matching row wins.
SERVER_STATUS: Final[tuple[tuple[type[QcinodeError], grpc.StatusCode], ...]] = (
    (AuthenticationFailed, grpc.StatusCode.UNAUTHENTICATED),  # a tag or a Hello that does not verify
    (Unauthorized, grpc.StatusCode.PERMISSION_DENIED),  # the caller's certificate may not do this
    (NotFound, grpc.StatusCode.NOT_FOUND),  # a link this node is not an end of
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),  # an admin request's bad value
    (OutOfSequence, grpc.StatusCode.FAILED_PRECONDITION),  # a session that does not open with Hello
    (SessionAborted, grpc.StatusCode.ABORTED),  # a protocol error ended a running session
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT),  # a malformed frame, advert or request
    (TransportError, grpc.StatusCode.UNAVAILABLE),  # the link is cut (partition, out of contact)
    (KeyStoreError, grpc.StatusCode.UNAVAILABLE),  # this node cannot save the state the answer depends on
    (QcinodeError, grpc.StatusCode.INTERNAL),
)

#: Status codes with which a peer that answered refuses a call (client side: PeerRefused).
REFUSALS: Final[frozenset[grpc.StatusCode]] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def status_for(exc: QcinodeError) -> grpc.StatusCode:
    """The status code of a call that raised ``exc`` (:data:`SERVER_STATUS`)."""
    for error_type, code in SERVER_STATUS:
        if isinstance(exc, error_type):
            return code
    return grpc.StatusCode.INTERNAL  # pragma: no cover - the last row matches every QcinodeError


def rpc_error(exc: grpc.RpcError, what: str) -> TransportError:
    """A failed client call as a domain error (module docstring).

    Args:
        exc: What grpc raised (``grpc.RpcError`` or ``grpc.aio.AioRpcError``).
        what: The call, for the message: ``"relay hop to beta"``.
    """
    code_method = getattr(exc, "code", None)
    code = code_method() if callable(code_method) else grpc.StatusCode.UNKNOWN
    details_method = getattr(exc, "details", None)
    details = str(details_method() or "") if callable(details_method) else str(exc)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerTimeout(f"{what} timed out", code=name, details=details)
    if code in REFUSALS:
        return PeerRefused(f"{what}: {name} {details}", code=name, details=details)
    return PeerUnavailable(f"{what}: {name} {details}", code=name, details=details)


@contextlib.contextmanager
def rpc_errors(what: str) -> Iterator[None]:
    """Around a client call (sync or aio): a ``grpc.RpcError`` leaves as :func:`rpc_error` says.

    Args:
        what: The call, for the message: ``"relay hop to beta"``.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise rpc_error(exc, what) from exc


async def _abort(context: grpc.aio.ServicerContext, exc: QcinodeError) -> None:
    await context.abort(status_for(exc), str(exc))


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's responses: an async generator's items, or none from a coroutine that calls ``context.write``."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result


class DomainErrors(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Answers a call whose handler raised a :class:`~qcinode.errors.QcinodeError` with :data:`SERVER_STATUS`'s code.

    Put it first among a server's interceptors, so it also maps what the
    other interceptors raise.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        deserializer, serializer = handler.request_deserializer, handler.response_serializer

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except QcinodeError as exc:
                    await _abort(context, exc)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_su(requests, context)
                except QcinodeError as exc:
                    await _abort(context, exc)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)

        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for response in _responses(inner_us(request, context)):
                        yield response
                except QcinodeError as exc:
                    await _abort(context, exc)

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)

        inner_ss = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in _responses(inner_ss(requests, context)):
                    yield response
            except QcinodeError as exc:
                await _abort(context, exc)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
