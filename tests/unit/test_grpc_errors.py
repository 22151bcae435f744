"""The two gRPC error tables: domain error -> status code (servers), status code -> domain error (clients)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from qcinode.core.resync import HelloRefusal, HelloRefused
from qcinode.core.routing import AdvertRejected, RejectReason
from qcinode.errors import (
    AuthenticationFailed,
    ConfigError,
    DuplicateKey,
    KeyStoreError,
    NotFound,
    OutOfSequence,
    PeerRefused,
    PeerTimeout,
    PeerUnavailable,
    QcinodeError,
    RemoteProtocolError,
    SessionAborted,
    StorageFailure,
    TransportError,
    Unauthorized,
)
from qcinode.transport.errors import REFUSALS, SERVER_STATUS, rpc_error, rpc_errors, status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Unauthorized("not a neighbour"), grpc.StatusCode.PERMISSION_DENIED),
        (NotFound("no such link"), grpc.StatusCode.NOT_FOUND),
        (ConfigError("fraction: must be in [0, 1]"), grpc.StatusCode.INVALID_ARGUMENT),
        (AuthenticationFailed("hello refused: bad_tag"), grpc.StatusCode.UNAUTHENTICATED),
        (OutOfSequence("a session starts with hello"), grpc.StatusCode.FAILED_PRECONDITION),
        (SessionAborted("protocol error: ..."), grpc.StatusCode.ABORTED),
        (RemoteProtocolError("malformed pulse frame"), grpc.StatusCode.INVALID_ARGUMENT),
        (AdvertRejected(RejectReason.BAD_SIGNATURE, "x", "forged"), grpc.StatusCode.INVALID_ARGUMENT),
        (HelloRefused(HelloRefusal.MALFORMED, "x"), grpc.StatusCode.INVALID_ARGUMENT),
        (PeerUnavailable("link cut by a partition fault"), grpc.StatusCode.UNAVAILABLE),
        (StorageFailure("cannot save", path=Path("."), reason="disk full"), grpc.StatusCode.UNAVAILABLE),
        (DuplicateKey("twice", identical=True), grpc.StatusCode.UNAVAILABLE),
        (QcinodeError("anything else"), grpc.StatusCode.INTERNAL),
    ],
)
def test_domain_errors_map_to_one_status_each(exc: QcinodeError, code: grpc.StatusCode) -> None:
    assert status_for(exc) == code


def test_no_row_of_the_server_table_is_shadowed_by_an_earlier_one() -> None:
    # The first match wins: a subclass listed after its base would never be reached.
    for later, (error_type, _) in enumerate(SERVER_STATUS):
        for earlier_type, _ in SERVER_STATUS[:later]:
            assert not issubclass(error_type, earlier_type), f"{error_type.__name__} is shadowed by {earlier_type.__name__}"
    assert SERVER_STATUS[-1][0] is QcinodeError and issubclass(KeyStoreError, QcinodeError)


class _Failed(grpc.RpcError):
    """What grpc raises for a failed call: a code and the peer's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, PeerTimeout),
        (grpc.StatusCode.UNAVAILABLE, PeerUnavailable),
        (grpc.StatusCode.CANCELLED, PeerUnavailable),
        (grpc.StatusCode.UNKNOWN, PeerUnavailable),
        (grpc.StatusCode.INTERNAL, PeerUnavailable),
        *((code, PeerRefused) for code in sorted(REFUSALS, key=lambda c: c.name)),
    ],
)
def test_a_failed_call_is_one_domain_error(code: grpc.StatusCode, expected: type[TransportError]) -> None:
    error = rpc_error(_Failed(code, "the peer's words"), "relay hop to beta")
    assert type(error) is expected
    assert error.code == code.name and error.details == "the peer's words"
    assert "relay hop to beta" in str(error)


def test_rpc_errors_converts_every_grpc_error_and_lets_the_rest_through() -> None:
    with pytest.raises(PeerRefused) as refused, rpc_errors("status of alpha"):
        raise _Failed(grpc.StatusCode.NOT_FOUND, "alpha does not transmit on link 'x'")
    assert refused.value.code == "NOT_FOUND" and isinstance(refused.value.__cause__, grpc.RpcError)
    with pytest.raises(ValueError), rpc_errors("status of alpha"):
        raise ValueError("not a call failure")
