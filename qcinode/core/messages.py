"""Classical post-processing messages of one link, and their canonical bytes.

Theory of operation: every message is a frozen dataclass. The transport maps
each to a protobuf message; authentication does not depend on that mapping:
both ends feed :func:`canonical_bytes` of each message, as sent or as decoded,
into the block transcript, so any change in transit to any field changes the
transcript and fails the one-time MAC.

Who sends what, per block (A = Alice, the transmitter; B = Bob):

====  =================  ===================================================
dir   message            content
====  =================  ===================================================
B>A   DetectionReport    slots that clicked in a frame, and Bob's bases
A>B   SiftReply          per reported slot: bases matched?, Alice's class
B>A   TestBits           (block closed) Bob's test-basis (X) bits
A>B   Estimate           test errors per class; proceed or abort
B>A   CascadeQuery       one bisection level of parity questions    (Cascade)
A>B   CascadeReply       Alice's parities                           (Cascade)
A>B   LdpcSyndromes      every frame's syndrome, right after        (LDPC)
                         Estimate
B>A   LdpcRetry          frames that did not decode                 (LDPC)
A>B   LdpcReveal         more key bits of those frames, revealed    (LDPC)
B>A   Reconciled         Bob's verification hash, errors corrected,
                         LDPC frames discarded
A>B   Confirm            verdict, privacy amplification seed and length, A's MAC
B>A   Verdict            B accepts (block pending) or rejects; B's MAC
A>B   Commit             A accepted (B's MAC verified) or dropped the block
====  =================  ===================================================
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

from .cascade import ParityQuery, ParityReply
from .kernels import gap_bounds, gap_bytes


@dataclasses.dataclass(frozen=True, slots=True)
class DetectionReport:
    frame_id: int
    n_slots: int
    slots: np.ndarray  # int64, sorted
    bases: np.ndarray  # uint8, 1 = X


@dataclasses.dataclass(frozen=True, slots=True)
class SiftReply:
    frame_id: int
    basis_match: np.ndarray  # uint8 0/1 per reported slot
    classes: np.ndarray  # uint8 per reported slot
    close_block: bool = False  # the channel stops after this frame (end of a pass): close the open block now


@dataclasses.dataclass(frozen=True, slots=True)
class TestBits:
    block_seq: int
    bits: np.ndarray  # uint8, Bob's X-basis sifted bits, in sifting order


@dataclasses.dataclass(frozen=True, slots=True)
class Estimate:
    block_seq: int
    test_errors: tuple[int, int, int]
    proceed: bool
    abort_reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class CascadeQuery:
    block_seq: int
    query: ParityQuery


@dataclasses.dataclass(frozen=True, slots=True)
class CascadeReply:
    block_seq: int
    reply: ParityReply


@dataclasses.dataclass(frozen=True, slots=True)
class LdpcSyndromes:
    block_seq: int
    syndromes: np.ndarray  # uint8 bits: every frame's syndrome, frame after frame


@dataclasses.dataclass(frozen=True, slots=True)
class LdpcRetry:
    block_seq: int
    attempt: int  # 1 for the first retry
    frames: tuple[int, ...]  # frames that did not decode, ascending


@dataclasses.dataclass(frozen=True, slots=True)
class LdpcReveal:
    block_seq: int
    attempt: int
    bits: np.ndarray  # uint8: the next key bits of each retried frame, frame after frame


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciled:
    block_seq: int
    verify_seed: bytes
    verify_tag: bytes
    errors_corrected: int
    discarded_frames: tuple[int, ...] = ()  # LDPC frames that never decoded, dropped at both ends


@dataclasses.dataclass(frozen=True, slots=True)
class Confirm:
    block_seq: int
    accepted: bool
    reason: str
    pa_seed: bytes
    key_bits: int
    leak_bits: int
    auth_tag: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    block_seq: int
    accepted: bool
    reason: str
    auth_tag: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    block_seq: int
    accepted: bool
    auth_tag: bytes = b""


Message = (
    DetectionReport
    | SiftReply
    | TestBits
    | Estimate
    | CascadeQuery
    | CascadeReply
    | LdpcSyndromes
    | LdpcRetry
    | LdpcReveal
    | Reconciled
    | Confirm
    | Verdict
    | Commit
)


#: Largest gap (and first value) of a non-decreasing integer array written as 32-bit gaps.
_GAP_LIMIT = 1 << 32
#: Below this, every gap of such an array is written in 16 bits.
_NARROW_GAP_LIMIT = 1 << 16


#: Per dtype string: its length byte and its bytes, as every array form carries them.
_DTYPE_HEADS: dict[str, bytes] = {}


def _encode_array(value: np.ndarray, out: list[bytes]) -> None:
    """An array as one of four self-delimiting forms, chosen from its dtype and values alone.

    ``p``: a 1-D array of one-byte integers (or bools) that are all 0 or 1,
    as its count and packed bits; ``g``: a 1-D non-decreasing integer array
    starting at >= 0 whose steps are all below 2^32, as its count and 32-bit
    gaps (sorted slot numbers: half of the bytes of ``a``); ``h``: the same
    when every step is below 2^16, with 16-bit gaps (a detection report's
    slots); ``a``: any other array, as its little-endian bytes. Each form begins with its letter and
    the dtype, and decodes back to exactly one (dtype, values), so the
    encoding stays injective; the transcript MAC hashes every byte of it
    three times per end, so fewer bytes are less work.
    """
    dtype_str = value.dtype.str
    head = _DTYPE_HEADS.get(dtype_str)
    if head is None:
        tag = dtype_str.encode()
        head = _DTYPE_HEADS[dtype_str] = struct.pack(">B", len(tag)) + tag
    if value.ndim == 1 and value.dtype.kind in "biu":
        count = int(value.size)
        if value.dtype.itemsize == 1:
            bits = value.view(np.uint8)
            if count == 0 or int(bits.max()) <= 1:
                out.append(b"p" + head + struct.pack(">Q", count))
                out.append(np.packbits(bits).tobytes())
                return
        elif value.dtype == np.int64 and count:  # slot numbers: one pass where compiled
            values = np.ascontiguousarray(value)
            low, top, gaps = gap_bounds(values)
            if int(value[0]) >= 0 and low >= 0 and top < _GAP_LIMIT:
                narrow = top < _NARROW_GAP_LIMIT  # dense slots: 16-bit gaps, half the bytes to hash
                out.append((b"h" if narrow else b"g") + head + struct.pack(">Q", count))
                out.append(gap_bytes(values, gaps, "<u2" if narrow else "<u4"))
                return
        elif value.dtype.kind in "iu" and count:
            # np.diff(value, prepend=0), without its generic set-up (thousands of small Cascade arrays).
            gaps = np.empty_like(value)
            gaps[0] = value[0]
            np.subtract(value[1:], value[:-1], out=gaps[1:])
            top = int(gaps.max())
            if int(value[0]) >= 0 and int(gaps.min()) >= 0 and top < _GAP_LIMIT:
                narrow = top < _NARROW_GAP_LIMIT
                out.append((b"h" if narrow else b"g") + head + struct.pack(">Q", count))
                out.append(gaps.astype("<u2" if narrow else "<u4").tobytes())
                return
    data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
    out.append(b"a" + struct.pack(">Q", len(data)) + head)
    out.append(data)


def _encode_value(value: Any, out: list[bytes]) -> None:
    kind = type(value)
    if kind is np.ndarray:  # the common cases first, by exact type (the chain below decides the rest)
        _encode_array(value, out)
        return
    if kind is int:
        out.append(b"i" + value.to_bytes(16, "big", signed=True))
        return
    names = _FIELD_NAMES.get(kind)
    if names is not None:
        out.append(names[0])
        for name in names[1:]:
            _encode_value(getattr(value, name), out)
        return
    if isinstance(value, bool):
        out.append(b"?" + (b"\x01" if value else b"\x00"))
    elif isinstance(value, (int, np.integer)):
        out.append(b"i" + int(value).to_bytes(16, "big", signed=True))
    elif isinstance(value, float):
        out.append(b"f" + struct.pack(">d", value))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"s" + struct.pack(">Q", len(data)) + data)
    elif isinstance(value, bytes):
        out.append(b"b" + struct.pack(">Q", len(value)) + value)
    elif isinstance(value, np.ndarray):
        _encode_array(value, out)
    elif isinstance(value, tuple):
        out.append(b"t" + struct.pack(">Q", len(value)))
        for item in value:
            _encode_value(item, out)
    elif dataclasses.is_dataclass(value):
        name = kind.__name__.encode()
        header = b"d" + struct.pack(">B", len(name)) + name
        fields = tuple(field.name for field in dataclasses.fields(value))
        _FIELD_NAMES[kind] = (header, *fields)  # a dataclass's fields are fixed: look them up once
        out.append(header)
        for field_name in fields:
            _encode_value(getattr(value, field_name), out)
    else:  # pragma: no cover - a programming error, not input
        raise TypeError(f"cannot encode {type(value).__name__}")


#: Per dataclass type seen: its ``d`` header, then its field names in order.
_FIELD_NAMES: dict[type, tuple[Any, ...]] = {}


def canonical_parts(message: Any) -> list[bytes]:
    """:func:`canonical_bytes` as the list of pieces it joins (a transcript hashes them without the copy)."""
    out: list[bytes] = []
    _encode_value(message, out)
    return out


def canonical_bytes(message: Any) -> bytes:
    """An unambiguous byte encoding of a message: type name, then each field, typed and length-prefixed.

    Injective: distinct messages (type, field values, array dtypes) give
    distinct bytes, so a change to any field in transit changes the
    transcript (arrays: :func:`_encode_array`).
    """
    return b"".join(canonical_parts(message))
