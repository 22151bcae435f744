"""Core messages <-> protobuf, at the wire boundary.

Arrays travel as little-endian bytes or packed bits (slot gaps in the
narrowest of 2, 4 or 8 bytes that holds them all; intensity classes at two
bits each); decoding validates
lengths and value ranges and raises :class:`RemoteProtocolError` on anything
malformed, so the core never sees an inconsistent message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import messages as m
from ..core.cascade import ParityQuery, ParityReply
from ..core.kernels import gap_bounds, gap_bytes
from ..core.resync import Hello, HelloKind, LinkSnapshot
from ..core.roles import Role
from ..errors import RemoteProtocolError
from .pb import link_pb2 as pb

_MAX_ITEMS = 1 << 26


def _pack(bits: np.ndarray) -> bytes:
    return bytes(np.packbits(bits.astype(np.uint8)).tobytes())


def _unpack(data: bytes, count: int, what: str) -> np.ndarray:
    if count > _MAX_ITEMS or len(data) != (count + 7) // 8:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes do not hold {count} packed bits")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count)


def _gap_width(top: int) -> int:
    """Bytes per slot gap given the largest: 2 while every gap fits (short links, high rates), else 4, else 8."""
    return 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8


def _pack_classes(classes: np.ndarray) -> bytes:
    """Intensity classes (0..2) at two bits each, four per byte, first in the high bits; zero padding."""
    padded = np.zeros(-(-len(classes) // 4) * 4, np.uint8)
    padded[: len(classes)] = classes
    quads = padded.reshape(-1, 4)
    return bytes(((quads[:, 0] << 6) | (quads[:, 1] << 4) | (quads[:, 2] << 2) | quads[:, 3]).tobytes())


def _unpack_classes(data: bytes, count: int, what: str) -> np.ndarray:
    if count > _MAX_ITEMS or len(data) != (count + 3) // 4:
        raise RemoteProtocolError(f"{what}: {len(data)} bytes do not hold {count} two-bit classes")
    packed = np.frombuffer(data, dtype=np.uint8)
    quads = np.empty((len(packed), 4), np.uint8)
    for i, shift in enumerate((6, 4, 2, 0)):
        np.bitwise_and(packed >> shift, 3, out=quads[:, i])
    if count % 4 and np.any(quads.reshape(-1)[count:]):
        raise RemoteProtocolError(f"{what}: non-zero padding")
    return quads.reshape(-1)[:count]


def _array(data: bytes, dtype: str, what: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if len(data) % size:
        raise RemoteProtocolError(f"{what}: length {len(data)} is not a multiple of {size}")
    return np.frombuffer(data, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="))


def encode(msg: m.Message) -> pb.ClassicalMessage:
    """A core message as the protobuf envelope."""
    match msg:
        case m.DetectionReport():
            slots = np.ascontiguousarray(msg.slots, dtype=np.int64)
            _, top, gaps = gap_bounds(slots) if len(slots) else (0, 0, None)
            width = _gap_width(top)
            return pb.ClassicalMessage(
                detection_report=pb.DetectionReport(
                    frame_id=msg.frame_id,
                    n_slots=msg.n_slots,
                    slot_gaps=gap_bytes(slots, gaps, f"<u{width}") if len(slots) else b"",
                    bases=_pack(msg.bases),
                    count=len(slots),
                    gap_bytes=width,
                )
            )
        case m.SiftReply():
            return pb.ClassicalMessage(
                sift_reply=pb.SiftReply(
                    frame_id=msg.frame_id,
                    basis_match=_pack(msg.basis_match),
                    classes=_pack_classes(msg.classes.astype(np.uint8, copy=False)),
                    count=len(msg.classes),
                    close_block=msg.close_block,
                )
            )
        case m.TestBits():
            return pb.ClassicalMessage(test_bits=pb.TestBits(block_seq=msg.block_seq, bits=_pack(msg.bits), count=len(msg.bits)))
        case m.Estimate():
            return pb.ClassicalMessage(
                estimate=pb.Estimate(block_seq=msg.block_seq, test_errors=list(msg.test_errors), proceed=msg.proceed, abort_reason=msg.abort_reason)
            )
        case m.CascadeQuery():
            q = msg.query
            return pb.ClassicalMessage(
                parity_query=pb.ParityQuery(
                    block_seq=msg.block_seq,
                    round=q.round,
                    seeds=list(q.seeds),
                    pass_ids=q.pass_ids.astype("<i4").tobytes(),
                    starts=q.starts.astype("<i8").tobytes(),
                    ends=q.ends.astype("<i8").tobytes(),
                )
            )
        case m.CascadeReply():
            r = msg.reply
            return pb.ClassicalMessage(
                parity_reply=pb.ParityReply(block_seq=msg.block_seq, round=r.round, parities=_pack(r.parities), count=len(r.parities))
            )
        case m.LdpcSyndromes():
            return pb.ClassicalMessage(
                ldpc_syndromes=pb.LdpcSyndromes(block_seq=msg.block_seq, syndromes=_pack(msg.syndromes), count=len(msg.syndromes))
            )
        case m.LdpcRetry():
            return pb.ClassicalMessage(ldpc_retry=pb.LdpcRetry(block_seq=msg.block_seq, attempt=msg.attempt, frames=list(msg.frames)))
        case m.LdpcReveal():
            return pb.ClassicalMessage(
                ldpc_reveal=pb.LdpcReveal(block_seq=msg.block_seq, attempt=msg.attempt, bits=_pack(msg.bits), count=len(msg.bits))
            )
        case m.Reconciled():
            return pb.ClassicalMessage(
                reconciled=pb.Reconciled(
                    block_seq=msg.block_seq,
                    verify_seed=msg.verify_seed,
                    verify_tag=msg.verify_tag,
                    errors_corrected=msg.errors_corrected,
                    discarded_frames=list(msg.discarded_frames),
                )
            )
        case m.Confirm():
            return pb.ClassicalMessage(
                confirm=pb.Confirm(
                    block_seq=msg.block_seq,
                    accepted=msg.accepted,
                    reason=msg.reason,
                    pa_seed=msg.pa_seed,
                    key_bits=msg.key_bits,
                    leak_bits=msg.leak_bits,
                    auth_tag=msg.auth_tag,
                )
            )
        case m.Verdict():
            return pb.ClassicalMessage(
                verdict=pb.Verdict(block_seq=msg.block_seq, accepted=msg.accepted, reason=msg.reason, auth_tag=msg.auth_tag)
            )
        case m.Commit():
            return pb.ClassicalMessage(commit=pb.Commit(block_seq=msg.block_seq, accepted=msg.accepted, auth_tag=msg.auth_tag))
    raise TypeError(f"no wire form for {type(msg).__name__}")  # pragma: no cover


def decode(envelope: pb.ClassicalMessage) -> m.Message:
    """The core message in a protobuf envelope (Hello is handled by the link worker)."""
    kind = envelope.WhichOneof("body")
    body: Any = getattr(envelope, kind) if kind else None
    match kind:
        case "detection_report":
            width = body.gap_bytes or 4
            if width not in (2, 4, 8):
                raise RemoteProtocolError(f"detection_report: gap_bytes must be 2, 4 or 8, got {width}")
            gaps = _array(body.slot_gaps, f"<u{width}", "detection_report.slot_gaps")
            if len(gaps) != body.count:
                raise RemoteProtocolError("detection_report: count does not match slot_gaps")
            if len(gaps) and int(gaps.max()) >= 1 << 62:
                raise RemoteProtocolError("detection_report: slot gap out of range")
            slots = np.cumsum(gaps.astype(np.int64))
            return m.DetectionReport(body.frame_id, body.n_slots, slots, _unpack(body.bases, body.count, "detection_report.bases"))
        case "sift_reply":
            classes = _unpack_classes(body.classes, body.count, "sift_reply.classes")
            return m.SiftReply(body.frame_id, _unpack(body.basis_match, body.count, "sift_reply.basis_match"), classes, body.close_block)
        case "test_bits":
            return m.TestBits(body.block_seq, _unpack(body.bits, body.count, "test_bits.bits"))
        case "estimate":
            if len(body.test_errors) != 3:
                raise RemoteProtocolError("estimate: test_errors needs 3 classes")
            return m.Estimate(body.block_seq, tuple(int(e) for e in body.test_errors), body.proceed, body.abort_reason)  # type: ignore[arg-type]
        case "parity_query":
            query = ParityQuery(
                round=body.round,
                seeds=tuple(int(s) for s in body.seeds),
                pass_ids=_array(body.pass_ids, "<i4", "parity_query.pass_ids"),
                starts=_array(body.starts, "<i8", "parity_query.starts"),
                ends=_array(body.ends, "<i8", "parity_query.ends"),
            )
            return m.CascadeQuery(body.block_seq, query)
        case "parity_reply":
            return m.CascadeReply(body.block_seq, ParityReply(round=body.round, parities=_unpack(body.parities, body.count, "parity_reply.parities")))
        case "ldpc_syndromes":
            return m.LdpcSyndromes(body.block_seq, _unpack(body.syndromes, body.count, "ldpc_syndromes.syndromes"))
        case "ldpc_retry":
            return m.LdpcRetry(body.block_seq, body.attempt, tuple(int(f) for f in body.frames))
        case "ldpc_reveal":
            return m.LdpcReveal(body.block_seq, body.attempt, _unpack(body.bits, body.count, "ldpc_reveal.bits"))
        case "reconciled":
            return m.Reconciled(
                body.block_seq, body.verify_seed, body.verify_tag, body.errors_corrected, tuple(int(f) for f in body.discarded_frames)
            )
        case "confirm":
            return m.Confirm(body.block_seq, body.accepted, body.reason, body.pa_seed, body.key_bits, body.leak_bits, body.auth_tag)
        case "verdict":
            return m.Verdict(body.block_seq, body.accepted, body.reason, body.auth_tag)
        case "commit":
            return m.Commit(body.block_seq, body.accepted, body.auth_tag)
    raise RemoteProtocolError(f"unexpected classical message {kind!r}")


_MAX_HELLO_SEQS = 1 << 20


def encode_hello(hello: Hello) -> pb.ClassicalMessage:
    """A reconnection Hello as the protobuf envelope."""
    s = hello.snapshot
    return pb.ClassicalMessage(
        hello=pb.Hello(
            link_id=s.link_id,
            role=s.role.value,
            next_block_seq=s.next_block_seq,
            auth_cursor=s.auth_cursor,
            held_block_seqs=list(s.held_block_seqs),
            next_frame_id=s.next_frame_id,
            kind=hello.kind.value,
            promoted_before=s.promoted_before,
            staged_block_seqs=list(s.staged_block_seqs),
            has_pending=s.pending_block_seq is not None,
            pending_block_seq=s.pending_block_seq or 0,
            auth_tag=hello.auth_tag,
        )
    )


def decode_hello(body: pb.Hello) -> Hello:
    """The Hello in a protobuf ``hello`` body.

    Raises:
        RemoteProtocolError: An unknown kind or role, or absurdly many block numbers.
    """
    try:
        kind = HelloKind(body.kind)
        role = Role(body.role)
    except ValueError:
        raise RemoteProtocolError(f"hello: unknown kind {body.kind[:20]!r} or role {body.role[:20]!r}") from None
    if len(body.held_block_seqs) > _MAX_HELLO_SEQS or len(body.staged_block_seqs) > _MAX_HELLO_SEQS:
        raise RemoteProtocolError("hello: too many block numbers")
    snapshot = LinkSnapshot(
        link_id=body.link_id,
        role=role,
        next_block_seq=body.next_block_seq,
        next_frame_id=body.next_frame_id,
        auth_cursor=body.auth_cursor,
        promoted_before=body.promoted_before,
        held_block_seqs=tuple(int(x) for x in body.held_block_seqs),
        staged_block_seqs=tuple(int(x) for x in body.staged_block_seqs),
        pending_block_seq=int(body.pending_block_seq) if body.has_pending else None,
    )
    return Hello(kind, snapshot, bytes(body.auth_tag))
