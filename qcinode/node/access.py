"""Who may call what on a node's gRPC server, beyond mutual TLS.

Every client of the server holds a certificate of the cluster CA, and each
servicer checks the caller's common name for its own methods (a neighbour
for links, routing and relay; the admin for admin calls). gRPC server
reflection is the exception: it is a generic service that would describe
every method to any certificate holder, SAEs included. SAEs speak ETSI 014
to the KME and have no business on the gRPC port, so
:class:`ReflectionAccess` answers reflection only for node and admin
certificates and refuses every other caller (:class:`~qcinode.errors.Unauthorized`,
PERMISSION_DENIED) before the reflection servicer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc

from ..errors import Unauthorized

__all__ = ["REFLECTION_PREFIX", "ReflectionAccess", "caller_common_name"]

REFLECTION_PREFIX = "/grpc.reflection."


def caller_common_name(context: grpc.aio.ServicerContext) -> str:
    """The CN of the caller's mTLS client certificate (empty if none)."""
    values = context.auth_context().get("x509_common_name") or []
    return values[0].decode("utf-8", "replace") if values else ""


class ReflectionAccess(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Refuses gRPC reflection to callers whose certificate is not a node's or the admin's."""

    def __init__(self, allowed_common_names: Collection[str]) -> None:
        """Allow reflection to exactly these certificate common names (the nodes and the admin)."""
        self._allowed = frozenset(allowed_common_names)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not str(handler_call_details.method).startswith(REFLECTION_PREFIX):
            return handler
        allowed = self._allowed

        async def check(context: grpc.aio.ServicerContext) -> None:
            if caller_common_name(context) not in allowed:
                raise Unauthorized("reflection answers node and admin certificates only")

        if handler.stream_stream is not None:
            inner = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                async for response in inner(requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer, handler.response_serializer)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer, handler.response_serializer)
        return handler  # reflection has no other shapes; nothing else is routed here
