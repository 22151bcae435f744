"""Core messages survive the protobuf wire form exactly; malformed envelopes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from qcinode.core import messages as m
from qcinode.core.cascade import ParityQuery, ParityReply
from qcinode.errors import RemoteProtocolError
from qcinode.transport import codec
from qcinode.transport.pb import link_pb2 as pb

SAMPLES = [
    m.DetectionReport(3, 10**12, np.array([5, 4294967308, 10**11 + 7], np.int64), np.array([0, 1, 1], np.uint8)),
    m.DetectionReport(4, 100, np.array([0, 99], np.int64), np.array([1, 0], np.uint8)),
    m.DetectionReport(5, 100, np.zeros(0, np.int64), np.zeros(0, np.uint8)),
    m.SiftReply(3, np.array([1, 0, 1], np.uint8), np.array([0, 2, 1], np.uint8)),
    m.SiftReply(3, np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], np.uint8), np.array([0, 2, 1, 2, 2, 1, 0, 0, 1], np.uint8)),
    m.DetectionReport(6, 200_000, np.array([0, 65535, 65536 + 65535], np.int64), np.array([0, 1, 1], np.uint8)),  # 2-byte gaps
    m.DetectionReport(6, 200_000, np.array([0, 65536], np.int64), np.array([1, 1], np.uint8)),  # one gap needs 4
    m.TestBits(7, np.array([1, 0, 0, 1, 1, 0, 1, 0, 1], np.uint8)),
    m.Estimate(7, (1, 2, 0), True, ""),
    m.Estimate(7, (9, 9, 9), False, "phase_error_too_high"),
    m.CascadeQuery(
        7, ParityQuery(round=2, seeds=(11, 2**63), pass_ids=np.array([0, 1], np.int32), starts=np.array([0, 8], np.int64), ends=np.array([4, 16], np.int64))
    ),
    m.CascadeReply(7, ParityReply(round=2, parities=np.array([1, 0, 1], np.uint8))),
    m.Reconciled(7, b"s" * 32, b"t" * 8, 12),
    m.Reconciled(7, b"s" * 32, b"t" * 8, 12, (3, 17)),
    m.LdpcSyndromes(7, np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], np.uint8)),
    m.LdpcRetry(7, 1, (0, 5, 9)),
    m.LdpcReveal(7, 2, np.array([0, 1, 1], np.uint8)),
    m.Confirm(7, True, "", b"seed", 4096, 900, b"x" * 16),
    m.Verdict(7, False, "authentication_failed", b""),
    m.Commit(7, True, b"y" * 16),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_keeps_canonical_bytes(message: m.Message) -> None:
    wire = codec.encode(message).SerializeToString()
    decoded = codec.decode(pb.ClassicalMessage.FromString(wire))
    assert m.canonical_bytes(decoded) == m.canonical_bytes(message)


@pytest.mark.parametrize(
    "envelope",
    [
        pb.ClassicalMessage(),
        pb.ClassicalMessage(detection_report=pb.DetectionReport(count=2, slot_gaps=b"\x00" * 4, bases=b"\x00")),
        pb.ClassicalMessage(detection_report=pb.DetectionReport(count=1, slot_gaps=b"\x00" * 4, bases=b"\x00", gap_bytes=3)),
        pb.ClassicalMessage(sift_reply=pb.SiftReply(count=3, basis_match=b"\x00", classes=b"\x00\x01")),
        pb.ClassicalMessage(sift_reply=pb.SiftReply(count=3, basis_match=b"\x00", classes=b"\x01")),  # padding class set
        pb.ClassicalMessage(detection_report=pb.DetectionReport(count=2, slot_gaps=b"\x00" * 3, bases=b"\x00", gap_bytes=2)),
        pb.ClassicalMessage(test_bits=pb.TestBits(count=9, bits=b"\x00")),
        pb.ClassicalMessage(estimate=pb.Estimate(test_errors=[1, 2])),
        pb.ClassicalMessage(ldpc_syndromes=pb.LdpcSyndromes(count=9, syndromes=b"\x00")),
        pb.ClassicalMessage(ldpc_reveal=pb.LdpcReveal(count=1, bits=b"")),
        pb.ClassicalMessage(parity_query=pb.ParityQuery(pass_ids=b"\x00\x00\x00", starts=b"", ends=b"")),
        pb.ClassicalMessage(hello=pb.Hello(link_id="a-b")),
    ],
)
def test_malformed_envelopes_are_remote_protocol_errors(envelope: pb.ClassicalMessage) -> None:
    with pytest.raises(RemoteProtocolError):
        codec.decode(envelope)


def test_gaps_and_classes_travel_in_the_narrowest_form() -> None:
    slots = np.arange(0, 3000, 3, dtype=np.int64)
    narrow = codec.encode(m.DetectionReport(1, 3000, slots, np.zeros(slots.size, np.uint8))).detection_report
    assert (narrow.gap_bytes, len(narrow.slot_gaps)) == (2, 2 * slots.size)
    wide = codec.encode(m.DetectionReport(1, 2**40, np.array([0, 2**33], np.int64), np.zeros(2, np.uint8))).detection_report
    assert (wide.gap_bytes, len(wide.slot_gaps)) == (8, 16)
    classes = np.array([2, 1, 0, 2, 1], np.uint8)
    reply = codec.encode(m.SiftReply(1, np.ones(5, np.uint8), classes)).sift_reply
    assert reply.classes == bytes([0b10010010, 0b01000000])
