"""DomainErrors on a real grpc.aio server (port 0): a handler's domain error reaches the client as its status, whatever the method kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from qcinode.errors import NotFound, OutOfSequence, PeerRefused, PeerUnavailable, Unauthorized
from qcinode.transport.errors import DomainErrors, rpc_errors


def _identity(data: bytes) -> bytes:
    return data


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("no link 'x' here")
    if request == b"bug":
        raise ValueError("not a domain error")
    return b"ok:" + request


async def _stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        if request == b"first":
            yield b"hello"
        elif request == b"intruder":
            raise Unauthorized("'mallory' is not a neighbour")
        else:
            raise OutOfSequence("a session starts with hello")


@pytest.mark.asyncio
async def test_domain_errors_become_the_status_of_the_call() -> None:
    handlers = grpc.method_handlers_generic_handler(
        "test.Errors",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity),
        },
    )
    server = grpc.aio.server(interceptors=[DomainErrors()])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary: Any = channel.unary_unary("/test.Errors/Unary", request_serializer=_identity, response_deserializer=_identity)
            assert await unary(b"x", timeout=5) == b"ok:x"
            with pytest.raises(PeerRefused) as missing, rpc_errors("unary"):
                await unary(b"missing", timeout=5)
            assert missing.value.code == "NOT_FOUND" and missing.value.details == "no link 'x' here"
            # Anything else escaping a handler is a bug: gRPC answers UNKNOWN, as without the interceptor.
            with pytest.raises(PeerUnavailable) as bug, rpc_errors("unary"):
                await unary(b"bug", timeout=5)
            assert bug.value.code == "UNKNOWN"

            stream: Any = channel.stream_stream("/test.Errors/Stream", request_serializer=_identity, response_deserializer=_identity)
            for second, code in ((b"intruder", "PERMISSION_DENIED"), (b"junk", "FAILED_PRECONDITION")):
                call = stream(iter([b"first", second]), timeout=5)
                got = []
                with pytest.raises(PeerRefused) as refused, rpc_errors("stream"):
                    async for answer in call:
                        got.append(answer)
                assert got == [b"hello"] and refused.value.code == code
    finally:
        await server.stop(0)
