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

__all__ = ["REFLECTION_PREFIX", "REFLECTION_SERVICE", "LazyReflection", "ReflectionAccess", "caller_common_name"]

REFLECTION_PREFIX = "/grpc.reflection."
#: The reflection service's full name (grpc_reflection's SERVICE_NAME, without importing it).
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


class LazyReflection(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no stubs
    """gRPC server reflection that imports ``grpc_reflection`` at its first call, not at the node's start.

    Reflection is for operators with grpcurl, a few calls in a node's life;
    its servicer and descriptor database cost every node about 2.5 MB of
    resident memory from the start (100 nodes on one machine: 250 MB). The
    handler answers only the reflection service's methods and builds the
    real servicer when the first one arrives (the server's own services are
    all registered by then).
    """

    def __init__(self, service_names: Collection[str]) -> None:
        """Describe exactly these services (and reflection itself)."""
        self._names = (*service_names, REFLECTION_SERVICE)
        self._handler: grpc.GenericRpcHandler | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if not str(handler_call_details.method).startswith(f"/{REFLECTION_SERVICE}/"):
            return None
        if self._handler is None:
            self._handler = _reflection_handler(self._names)
        return self._handler.service(handler_call_details)


def _reflection_handler(names: Collection[str]) -> grpc.GenericRpcHandler:
    """The reflection service's generic handler, as grpc_reflection's own registration makes it."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc  # noqa: PLC0415 - imported at the first reflection call

    class _Collect:
        """Stands in for the server: keeps the generic handler the registration adds."""

        handlers: list[grpc.GenericRpcHandler] = []

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            self.handlers = list(handlers)

        def add_registered_method_handlers(self, _service: str, _handlers: Any) -> None:
            pass  # the generic handler serves the same methods

    collect = _Collect()
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(tuple(names)), collect)
    (handler,) = collect.handlers
    return handler


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
