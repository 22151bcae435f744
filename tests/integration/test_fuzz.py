"""Bad input never hurts: fuzzing the ETSI 014 API and every gRPC method of real nodes.

The generators and targets are those of ``tests/support/fuzz.py`` (which
``bench/fuzz.py`` runs for many more examples); here each test drives its own event loop around a
hypothesis test with a bounded number of examples, so that one server (or
one pair of linked nodes) serves every example of a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from qcinode.node.network import MAX_HOPS_PER_CALL
from qcinode.transport.pb import network_pb2
from tests.support import fuzz

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SESSION = "/qcinode.v1.PostProcessing/Session"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# ---------------------------------------------------------------- ETSI 014 --


@pytest.fixture
def etsi(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    target = fuzz.EtsiTarget(tmp_path)
    loop.run_until_complete(target.start())
    try:
        yield target
    finally:
        loop.run_until_complete(target.stop())


def test_etsi014_fuzzed_requests_get_json_errors_and_never_reach_the_supplier(etsi: Any, loop: asyncio.AbstractEventLoop) -> None:
    @settings(FUZZ, max_examples=60)
    @given(fuzz.http_requests())
    def one(request: Any) -> None:
        answer, problem = loop.run_until_complete(fuzz.etsi_fuzz_one(etsi, request))
        assert problem is None, f"{problem}\n{request!r}"

    one()
    assert loop.run_until_complete(etsi.alive())
    assert etsi.store.total() == 3


@pytest.mark.parametrize("chunked", [False, True])
def test_etsi014_oversized_bodies_are_refused_before_the_supplier(etsi: Any, loop: asyncio.AbstractEventLoop, chunked: bool) -> None:
    body = b'{"number": 1, "pad": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    if chunked:
        head = (
            b"POST /api/v1/keys/bob-app/enc_keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        step = 64 * 1024
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step]) for i in range(0, len(body), step))
        answer = loop.run_until_complete(etsi.send_bytes("alice-app", head + chunks + b"0\r\n\r\n"))
    else:
        request = fuzz.HttpRequest("POST", "/api/v1/keys/bob-app/enc_keys", [("Content-Type", "application/json")], body)
        answer = loop.run_until_complete(etsi.send(request))
    assert answer.status == 400 and "larger than" in answer.json()["message"], answer
    assert etsi.supplier.calls == 0
    assert loop.run_until_complete(etsi.alive())


@pytest.mark.parametrize("data", fuzz.MALFORMED_HTTP, ids=range(len(fuzz.MALFORMED_HTTP)))
def test_etsi014_malformed_http_is_refused_and_the_server_stays_up(etsi: Any, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    # aiohttp's HTTP parser answers these itself, before the application (and
    # its JSON error middleware) sees a request: 400, but text/plain.
    answer = loop.run_until_complete(etsi.send_bytes("alice-app", data))
    assert answer.status in (None, 400), answer
    assert etsi.supplier.calls == 0 and etsi.endpoint_statuses == []
    assert loop.run_until_complete(etsi.alive())


@pytest.mark.parametrize("identity", [None, "other-ca"], ids=["no-certificate", "other-ca"])
def test_etsi014_wrong_or_missing_client_certificate_fails_at_tls(etsi: Any, loop: asyncio.AbstractEventLoop, identity: str | None) -> None:
    for request in (
        fuzz.HttpRequest("GET", "/api/v1/keys/bob-app/status", [], None, identity),
        fuzz.HttpRequest("POST", "/api/v1/keys/bob-app/enc_keys", [("Content-Type", "application/json")], b'{"number": 1}', identity),
        fuzz.HttpRequest("GET", "/nowhere", [], None, identity),
    ):
        answer = loop.run_until_complete(etsi.send(request))
        assert answer.status is None and answer.error != "timeout", answer
    assert etsi.endpoint_statuses == [] and etsi.supplier.calls == 0
    assert loop.run_until_complete(etsi.alive())


# -------------------------------------------------------------------- gRPC --


@pytest.fixture
def nodes(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    target = fuzz.GrpcTarget(tmp_path)
    try:
        loop.run_until_complete(target.start())
        yield target
    finally:
        loop.run_until_complete(target.stop())


def _still_fine(nodes: Any, loop: asyncio.AbstractEventLoop, before: Any) -> None:
    """Healthy, no key material consumed at either end, and the link still grows key."""
    after = nodes.snapshot()
    assert after.used_bytes == before.used_bytes and after.ledgers == before.ledgers
    assert after.keystore_totals == before.keystore_totals
    for name in nodes.nodes:
        assert loop.run_until_complete(nodes.healthy(name)), f"{name} is not SERVING"
    done = nodes.rt("beta").counters.blocks_done
    loop.run_until_complete(nodes.until(lambda: nodes.rt("beta").counters.blocks_done >= done + 2, 40))
    assert nodes.snapshot().used_bytes == before.used_bytes


def test_grpc_random_and_mutated_bytes_on_every_method(nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
    before = nodes.snapshot()
    seen: set[tuple[str, str]] = set()

    @settings(FUZZ, max_examples=50)
    @given(fuzz.grpc_examples())
    def one(example: Any) -> None:
        code = loop.run_until_complete(nodes.call(example.identity, example.node, example.method, example.messages))
        assert code in fuzz.ACCEPTED_GRPC, f"{code}: {example!r}"  # a status, never a hang
        if example.identity == "other-ca":
            assert code == "UNAVAILABLE", example  # refused at the TLS handshake
        seen.add((example.method, code))

    one()
    # Every method, from a certificate of another CA: refused at TLS.
    for method in fuzz.UNARY + fuzz.STREAMING:
        for node in nodes.nodes:
            assert loop.run_until_complete(nodes.call("other-ca", node, method, [fuzz.SEEDS[method][0]])) == "UNAVAILABLE"
    _still_fine(nodes, loop, before)


def test_grpc_out_of_order_sessions_and_foreign_hellos_are_refused(nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
    from qcinode.transport.pb import link_pb2

    before = nodes.snapshot()

    @settings(FUZZ, max_examples=30)
    @given(fuzz.out_of_order_sessions())
    def one(messages: list[bytes]) -> None:
        # From alpha, beta's real transmitter: no Hello first, or one for another link.
        # The server decides on the first message; the first alone shows its status.
        code = loop.run_until_complete(nodes.call("alpha", "beta", SESSION, messages[:1]))
        assert code in ("FAILED_PRECONDITION", "PERMISSION_DENIED"), (code, messages)
        code = loop.run_until_complete(nodes.call("alpha", "beta", SESSION, messages))
        assert code in ("FAILED_PRECONDITION", "PERMISSION_DENIED", fuzz.ENDED_WHILE_WRITING), (code, messages)

    one()
    # A Hello for the link from certificates that are not its transmitter.
    hello = link_pb2.ClassicalMessage(hello=link_pb2.Hello(link_id=fuzz.LINK, role="alice")).SerializeToString()
    sift = link_pb2.ClassicalMessage(sift_reply=link_pb2.SiftReply(frame_id=1, basis_match=b"\x01", count=1)).SerializeToString()
    for identity in ("beta", "beta-app", "admin"):
        code = loop.run_until_complete(nodes.call(identity, "beta", SESSION, [hello]))
        assert code == "PERMISSION_DENIED", identity
        code = loop.run_until_complete(nodes.call(identity, "beta", SESSION, [hello, sift]))
        assert code in ("PERMISSION_DENIED", fuzz.ENDED_WHILE_WRITING), identity
    frame = link_pb2.PulseFrame(link_id=fuzz.LINK, frame_id=1, n_slots=8, payload=b"\0" * 8).SerializeToString()
    for identity in ("beta", "beta-app", "admin"):
        code = loop.run_until_complete(nodes.call(identity, "beta", "/qcinode.v1.QuantumChannel/Transmit", [frame]))
        assert code in ("PERMISSION_DENIED", fuzz.ENDED_WHILE_WRITING), identity
    assert nodes.rt("beta").state == "up"  # the real session was not disturbed
    _still_fine(nodes, loop, before)


def test_grpc_protocol_garbage_after_a_genuine_hello_consumes_no_key(nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
    """With alpha's own certificate (it may take the link over): a SiftReply with
    no frame, a Commit with a forged tag. The session ends, no key is used or
    committed from it, and the real session comes back."""
    from qcinode.transport.pb import link_pb2

    before = nodes.snapshot()
    blocks_before = set(nodes.rt("beta").pool.block_ids) | set(nodes.rt("alpha").pool.block_ids)
    rt = nodes.rt("alpha")

    def hello() -> bytes:
        # A genuine, authenticated Hello: alpha's own next MAC keys (taken from its
        # reserve, so alpha's real session stays in step with what beta accepts).
        from qcinode.core.resync import HelloExchange
        from qcinode.node.link import link_snapshot
        from qcinode.transport.codec import encode_hello

        rt.persist()
        return bytes(encode_hello(HelloExchange(link_snapshot(rt), rt.auth).start()).SerializeToString())

    garbage: list[Callable[[], list[bytes]]] = [
        lambda: [hello(), link_pb2.ClassicalMessage(sift_reply=link_pb2.SiftReply(frame_id=10**12, basis_match=b"\xff", count=8)).SerializeToString()],
        lambda: [
            hello(),
            link_pb2.ClassicalMessage(commit=link_pb2.Commit(block_seq=rt.next_block_seq, accepted=True, auth_tag=b"\0" * 16)).SerializeToString(),
        ],
        lambda: [
            hello(),
            link_pb2.ClassicalMessage(confirm=link_pb2.Confirm(block_seq=rt.next_block_seq, accepted=True, key_bits=10**6, auth_tag=b"x")).SerializeToString(),
        ],
        lambda: [hello(), b"\xff\xff\xff"],
    ]
    for make in garbage:
        code = loop.run_until_complete(nodes.call("alpha", "beta", SESSION, make()))
        assert code in fuzz.ACCEPTED_GRPC, code
        assert nodes.snapshot().used_bytes == before.used_bytes
    _still_fine(nodes, loop, before)
    # Every block either end holds now is either old or grown by the real session, identical at both ends.
    loop.run_until_complete(nodes.until(lambda: set(nodes.rt("beta").pool.block_ids) <= set(nodes.rt("alpha").pool.block_ids), 20))
    for block_id in set(nodes.rt("beta").pool.block_ids) - blocks_before:
        assert nodes.rt("beta").pool.block_digest(block_id) == nodes.rt("alpha").pool.block_digest(block_id)


def test_grpc_oversized_requests_are_bounded(nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
    before = nodes.snapshot()
    big = b"\0" * (70 * 1024 * 1024)
    assert loop.run_until_complete(nodes.call("admin", "beta", "/qcinode.v1.Admin/Status", [big])) == "RESOURCE_EXHAUSTED"
    assert loop.run_until_complete(nodes.call("alpha", "beta", "/qcinode.v1.Network/RelayKey", [big])) == "RESOURCE_EXHAUSTED"
    assert loop.run_until_complete(nodes.call("beta-app", "beta", SESSION, [big])) == "RESOURCE_EXHAUSTED"
    del big
    _still_fine(nodes, loop, before)


def test_grpc_status_codes_are_statuses_not_crashes(nodes: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Unparseable protobuf is INVALID_ARGUMENT (unary and streamed), never UNKNOWN or a hang."""
    code = loop.run_until_complete(nodes.call("admin", "beta", "/qcinode.v1.Admin/Status", [b"\xff" * 10]))
    assert code == "INVALID_ARGUMENT"
    code = loop.run_until_complete(nodes.call("alpha", "beta", "/qcinode.v1.Network/RelayKey", [b"\xff" * 10]))
    assert code == "INVALID_ARGUMENT"
    code = loop.run_until_complete(nodes.call("alpha", "beta", "/qcinode.v1.Network/RelayKeys", [b"\xff" * 10]))
    assert code == "INVALID_ARGUMENT"
    # More hops in one call than a node takes: refused as a whole, nothing used.
    seed = network_pb2.RelayHops.FromString(fuzz.SEEDS["/qcinode.v1.Network/RelayKeys"][0])
    many = network_pb2.RelayHops(hops=[seed.hops[0]] * (MAX_HOPS_PER_CALL + 1)).SerializeToString()
    assert loop.run_until_complete(nodes.call("alpha", "beta", "/qcinode.v1.Network/RelayKeys", [many])) == "INVALID_ARGUMENT"
    code = loop.run_until_complete(nodes.call("admin", "beta", "/grpc.health.v1.Health/Check", [b"\xff" * 10]))
    assert code == "INVALID_ARGUMENT"
    assert loop.run_until_complete(nodes.call("admin", "beta", "/qcinode.v1.Nope/Nothing", [b""])) == "UNIMPLEMENTED"
    assert loop.run_until_complete(nodes.healthy("beta"))
