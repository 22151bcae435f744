"""The classical-channel fault injector: what each fault does to a message."""

from __future__ import annotations

import asyncio
import math

import pytest

from qcinode.errors import ConfigError
from qcinode.node.faults import NO_FAULT, FaultInjector, fault_from_request
from qcinode.topology import FaultConfig
from qcinode.transport.pb import link_pb2 as pb
from qcinode.transport.pb import network_pb2 as npb


def _message(seq: int = 3) -> pb.ClassicalMessage:
    return pb.ClassicalMessage(confirm=pb.Confirm(block_seq=seq, pa_seed=bytes(32)))


def _hop() -> npb.RelayHop:
    return npb.RelayHop(relay_id="r", key_id="k", ciphertext=bytes(32), tag=bytes(16), path=["a", "b"])


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _bits_changed(a: bytes, b: bytes) -> int:
    return sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))


def test_no_fault_passes_messages_unchanged() -> None:
    faults = FaultInjector(seed=1)
    assert _run(faults.classical("a-b", "A>B", _message())) == [_message()]
    assert _run(faults.relay("a-b", _hop())) == [_hop()]


def test_flip_inverts_exactly_one_bit_of_one_bytes_field() -> None:
    faults = FaultInjector({"a-b": FaultConfig(kind="flip")}, seed=2)
    for _ in range(50):
        (out,) = _run(faults.classical("a-b", "A>B", _message()))
        assert out.confirm.block_seq == 3 and _bits_changed(out.confirm.pa_seed, bytes(32)) == 1
        (hop,) = _run(faults.relay("a-b", _hop()))
        assert _bits_changed(hop.ciphertext + hop.tag, bytes(48)) == 1
    assert faults.affected["a-b"] == 100


def test_drop_replay_and_partition() -> None:
    faults = FaultInjector({"a-b": FaultConfig(kind="drop"), "a-c": FaultConfig(kind="replay")}, seed=3)
    assert _run(faults.classical("a-b", "A>B", _message())) == []
    assert _run(faults.relay("a-b", _hop())) == []
    assert _run(faults.classical("a-c", "B>A", _message())) == [_message(), _message()]
    assert _run(faults.relay("a-c", _hop())) == [_hop(), _hop()]
    faults.set("a-b", FaultConfig(kind="partition", probability=0.0))  # a partition ignores probability
    assert faults.partitioned("a-b") and _run(faults.classical("a-b", "A>B", _message())) == []


def test_reorder_swaps_a_message_with_the_next_one_in_the_same_direction() -> None:
    faults = FaultInjector({"a-b": FaultConfig(kind="reorder")}, seed=4)
    assert _run(faults.classical("a-b", "A>B", _message(1))) == []  # held back
    assert _run(faults.classical("a-b", "B>A", _message(9))) == []  # the other direction holds its own
    assert _run(faults.classical("a-b", "A>B", _message(2))) == [_message(2), _message(1)]
    faults.set("a-b", NO_FAULT)  # switching the fault off drops what it held, as a lost message
    assert _run(faults.classical("a-b", "B>A", _message(10))) == [_message(10)]


def test_delay_holds_each_message_for_delay_ms() -> None:
    faults = FaultInjector({"a-b": FaultConfig(kind="delay", delay_ms=30)}, seed=5)

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await faults.classical("a-b", "A>B", _message())
        return loop.time() - start

    assert _run(timed()) >= 0.03  # a lower bound only: sleeping never returns early


@pytest.mark.parametrize("probability", [0.1, 0.5])
def test_probability_is_the_share_of_messages_affected(probability: float) -> None:
    n = 4000
    faults = FaultInjector({"a-b": FaultConfig(kind="drop", probability=probability)}, seed=6)
    dropped = sum(not _run(faults.classical("a-b", "A>B", _message())) for _ in range(n))
    sigma = math.sqrt(n * probability * (1 - probability))
    assert abs(dropped - n * probability) < 5 * sigma


def test_channel_restricts_the_fault() -> None:
    faults = FaultInjector({"a-b": FaultConfig(kind="drop", channel="relay")}, seed=7)
    assert _run(faults.classical("a-b", "A>B", _message())) == [_message()]
    assert _run(faults.relay("a-b", _hop())) == []
    faults.set("a-b", FaultConfig(kind="drop", channel="postprocessing"))
    assert _run(faults.classical("a-b", "A>B", _message())) == []
    assert _run(faults.relay("a-b", _hop())) == [_hop()]


def test_cut_event_follows_the_partition() -> None:
    async def scenario() -> None:
        faults = FaultInjector(seed=8)
        event = faults.cut_event("a-b")
        assert not event.is_set()
        faults.set("a-b", FaultConfig(kind="partition"))
        assert event.is_set() and faults.cut_event("a-b").is_set()
        faults.set("a-b", NO_FAULT)
        assert not faults.cut_event("a-b").is_set()

    _run(scenario())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("explode", 1.0, 0.0, "all"), "fault.kind: unknown fault 'explode'"),
        (("drop", 1.5, 0.0, "all"), "fault.probability"),
        (("delay", 1.0, 0.0, "all"), "fault.delay_ms: a delay fault needs delay_ms > 0"),
        (("delay", 1.0, 1e9, "all"), "fault.delay_ms"),
        (("drop", 1.0, 0.0, "quantum"), "fault.channel: unknown channel 'quantum'"),
    ],
)
def test_bad_requests_name_the_field(args: tuple[str, float, float, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fault_from_request(*args)
    assert fault_from_request("", 0.0, 0.0, "") == NO_FAULT.__class__(kind="none", probability=0.0)
