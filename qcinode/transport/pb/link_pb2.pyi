from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PulseFrame(_message.Message):
    __slots__ = ("link_id", "frame_id", "n_slots", "payload", "at_utc")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    N_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    AT_UTC_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    frame_id: int
    n_slots: int
    payload: bytes
    at_utc: float
    def __init__(self, link_id: _Optional[str] = ..., frame_id: _Optional[int] = ..., n_slots: _Optional[int] = ..., payload: _Optional[bytes] = ..., at_utc: _Optional[float] = ...) -> None: ...

class FrameAck(_message.Message):
    __slots__ = ("frame_id",)
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    def __init__(self, frame_id: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("link_id", "role", "next_block_seq", "auth_cursor", "held_block_seqs", "next_frame_id", "kind", "promoted_before", "staged_block_seqs", "has_pending", "pending_block_seq", "auth_tag")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NEXT_BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUTH_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HELD_BLOCK_SEQS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    STAGED_BLOCK_SEQS_FIELD_NUMBER: _ClassVar[int]
    HAS_PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    role: str
    next_block_seq: int
    auth_cursor: int
    held_block_seqs: _containers.RepeatedScalarFieldContainer[int]
    next_frame_id: int
    kind: str
    promoted_before: int
    staged_block_seqs: _containers.RepeatedScalarFieldContainer[int]
    has_pending: bool
    pending_block_seq: int
    auth_tag: bytes
    def __init__(self, link_id: _Optional[str] = ..., role: _Optional[str] = ..., next_block_seq: _Optional[int] = ..., auth_cursor: _Optional[int] = ..., held_block_seqs: _Optional[_Iterable[int]] = ..., next_frame_id: _Optional[int] = ..., kind: _Optional[str] = ..., promoted_before: _Optional[int] = ..., staged_block_seqs: _Optional[_Iterable[int]] = ..., has_pending: _Optional[bool] = ..., pending_block_seq: _Optional[int] = ..., auth_tag: _Optional[bytes] = ...) -> None: ...

class DetectionReport(_message.Message):
    __slots__ = ("frame_id", "n_slots", "slot_gaps", "bases", "count", "gap_bytes")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    N_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_GAPS_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    n_slots: int
    slot_gaps: bytes
    bases: bytes
    count: int
    gap_bytes: int
    def __init__(self, frame_id: _Optional[int] = ..., n_slots: _Optional[int] = ..., slot_gaps: _Optional[bytes] = ..., bases: _Optional[bytes] = ..., count: _Optional[int] = ..., gap_bytes: _Optional[int] = ...) -> None: ...

class SiftReply(_message.Message):
    __slots__ = ("frame_id", "basis_match", "classes", "count", "close_block")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    BASIS_MATCH_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CLOSE_BLOCK_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    basis_match: bytes
    classes: bytes
    count: int
    close_block: bool
    def __init__(self, frame_id: _Optional[int] = ..., basis_match: _Optional[bytes] = ..., classes: _Optional[bytes] = ..., count: _Optional[int] = ..., close_block: _Optional[bool] = ...) -> None: ...

class TestBits(_message.Message):
    __slots__ = ("block_seq", "bits", "count")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    bits: bytes
    count: int
    def __init__(self, block_seq: _Optional[int] = ..., bits: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("block_seq", "test_errors", "proceed", "abort_reason")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    TEST_ERRORS_FIELD_NUMBER: _ClassVar[int]
    PROCEED_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    test_errors: _containers.RepeatedScalarFieldContainer[int]
    proceed: bool
    abort_reason: str
    def __init__(self, block_seq: _Optional[int] = ..., test_errors: _Optional[_Iterable[int]] = ..., proceed: _Optional[bool] = ..., abort_reason: _Optional[str] = ...) -> None: ...

class ParityQuery(_message.Message):
    __slots__ = ("block_seq", "round", "seeds", "pass_ids", "starts", "ends")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    PASS_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    round: int
    seeds: _containers.RepeatedScalarFieldContainer[int]
    pass_ids: bytes
    starts: bytes
    ends: bytes
    def __init__(self, block_seq: _Optional[int] = ..., round: _Optional[int] = ..., seeds: _Optional[_Iterable[int]] = ..., pass_ids: _Optional[bytes] = ..., starts: _Optional[bytes] = ..., ends: _Optional[bytes] = ...) -> None: ...

class ParityReply(_message.Message):
    __slots__ = ("block_seq", "round", "parities", "count")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARITIES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    round: int
    parities: bytes
    count: int
    def __init__(self, block_seq: _Optional[int] = ..., round: _Optional[int] = ..., parities: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class LdpcSyndromes(_message.Message):
    __slots__ = ("block_seq", "syndromes", "count")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    SYNDROMES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    syndromes: bytes
    count: int
    def __init__(self, block_seq: _Optional[int] = ..., syndromes: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class LdpcRetry(_message.Message):
    __slots__ = ("block_seq", "attempt", "frames")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    attempt: int
    frames: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_seq: _Optional[int] = ..., attempt: _Optional[int] = ..., frames: _Optional[_Iterable[int]] = ...) -> None: ...

class LdpcReveal(_message.Message):
    __slots__ = ("block_seq", "attempt", "bits", "count")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    attempt: int
    bits: bytes
    count: int
    def __init__(self, block_seq: _Optional[int] = ..., attempt: _Optional[int] = ..., bits: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class Reconciled(_message.Message):
    __slots__ = ("block_seq", "verify_seed", "verify_tag", "errors_corrected", "discarded_frames")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SEED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_TAG_FIELD_NUMBER: _ClassVar[int]
    ERRORS_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    verify_seed: bytes
    verify_tag: bytes
    errors_corrected: int
    discarded_frames: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_seq: _Optional[int] = ..., verify_seed: _Optional[bytes] = ..., verify_tag: _Optional[bytes] = ..., errors_corrected: _Optional[int] = ..., discarded_frames: _Optional[_Iterable[int]] = ...) -> None: ...

class Confirm(_message.Message):
    __slots__ = ("block_seq", "accepted", "reason", "pa_seed", "key_bits", "leak_bits", "auth_tag")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PA_SEED_FIELD_NUMBER: _ClassVar[int]
    KEY_BITS_FIELD_NUMBER: _ClassVar[int]
    LEAK_BITS_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    accepted: bool
    reason: str
    pa_seed: bytes
    key_bits: int
    leak_bits: int
    auth_tag: bytes
    def __init__(self, block_seq: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., pa_seed: _Optional[bytes] = ..., key_bits: _Optional[int] = ..., leak_bits: _Optional[int] = ..., auth_tag: _Optional[bytes] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("block_seq", "accepted", "reason", "auth_tag")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    accepted: bool
    reason: str
    auth_tag: bytes
    def __init__(self, block_seq: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., auth_tag: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("block_seq", "accepted", "auth_tag")
    BLOCK_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AUTH_TAG_FIELD_NUMBER: _ClassVar[int]
    block_seq: int
    accepted: bool
    auth_tag: bytes
    def __init__(self, block_seq: _Optional[int] = ..., accepted: _Optional[bool] = ..., auth_tag: _Optional[bytes] = ...) -> None: ...

class ClassicalMessage(_message.Message):
    __slots__ = ("hello", "detection_report", "sift_reply", "test_bits", "estimate", "parity_query", "parity_reply", "reconciled", "confirm", "verdict", "commit", "ldpc_syndromes", "ldpc_retry", "ldpc_reveal")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    DETECTION_REPORT_FIELD_NUMBER: _ClassVar[int]
    SIFT_REPLY_FIELD_NUMBER: _ClassVar[int]
    TEST_BITS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    PARITY_QUERY_FIELD_NUMBER: _ClassVar[int]
    PARITY_REPLY_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    LDPC_SYNDROMES_FIELD_NUMBER: _ClassVar[int]
    LDPC_RETRY_FIELD_NUMBER: _ClassVar[int]
    LDPC_REVEAL_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    detection_report: DetectionReport
    sift_reply: SiftReply
    test_bits: TestBits
    estimate: Estimate
    parity_query: ParityQuery
    parity_reply: ParityReply
    reconciled: Reconciled
    confirm: Confirm
    verdict: Verdict
    commit: Commit
    ldpc_syndromes: LdpcSyndromes
    ldpc_retry: LdpcRetry
    ldpc_reveal: LdpcReveal
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., detection_report: _Optional[_Union[DetectionReport, _Mapping]] = ..., sift_reply: _Optional[_Union[SiftReply, _Mapping]] = ..., test_bits: _Optional[_Union[TestBits, _Mapping]] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., parity_query: _Optional[_Union[ParityQuery, _Mapping]] = ..., parity_reply: _Optional[_Union[ParityReply, _Mapping]] = ..., reconciled: _Optional[_Union[Reconciled, _Mapping]] = ..., confirm: _Optional[_Union[Confirm, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., ldpc_syndromes: _Optional[_Union[LdpcSyndromes, _Mapping]] = ..., ldpc_retry: _Optional[_Union[LdpcRetry, _Mapping]] = ..., ldpc_reveal: _Optional[_Union[LdpcReveal, _Mapping]] = ...) -> None: ...
