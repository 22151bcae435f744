"""A server interceptor that answers unparseable protobuf with INVALID_ARGUMENT.

grpc.aio deserialises a request before the servicer sees it; when the bytes
are not a valid message its deserializer raises, and the server logs an
error and answers UNKNOWN. A node should treat that like any other bad
input: a clear status naming what was wrong, and no error in its logs. This
interceptor swaps each method's request deserializer for one that returns a
:class:`Malformed` marker instead of raising, and wraps the method so that

* a unary request that is malformed is refused before the servicer runs
  (:class:`~qcinode.errors.RemoteProtocolError`, INVALID_ARGUMENT through
  :class:`~qcinode.transport.errors.DomainErrors`);
* a request stream ends at the first malformed message, and the call ends
  with INVALID_ARGUMENT once the servicer has seen the end of the stream
  (the servicer handles an ended stream like a peer that hung up).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..errors import RemoteProtocolError

__all__ = ["Malformed", "MalformedRequestGuard"]


@dataclasses.dataclass(frozen=True, slots=True)
class Malformed:
    """What a request that failed to parse becomes."""

    reason: str


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            return Malformed(str(exc) or type(exc).__name__)

    return deserialize


def _refusal(method: str, malformed: Malformed) -> str:
    return f"malformed request to {method}: not a valid protobuf message ({malformed.reason})"


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(_refusal(method, request))
            return
        yield request


class MalformedRequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Refuses requests that are not valid protobuf with INVALID_ARGUMENT (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = str(handler_call_details.method)
        deserializer = _safe(handler.request_deserializer)
        serializer = handler.response_serializer

        if handler.unary_unary is not None or handler.unary_stream is not None:
            inner_unary = handler.unary_unary or handler.unary_stream

            async def refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
                if isinstance(request, Malformed):
                    raise RemoteProtocolError(_refusal(method, request))

            if handler.unary_unary is not None:

                async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    await refuse_malformed(request, context)
                    return await inner_unary(request, context)

                return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await refuse_malformed(request, context)
                async for response in inner_unary(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)

        if handler.stream_unary is not None:
            inner_stream_unary = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_stream_unary(_checked(requests, context, method), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)

        inner_stream_stream = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in inner_stream_stream(_checked(requests, context, method), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
