from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ("include_block_digests", "include_ledger")
    INCLUDE_BLOCK_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LEDGER_FIELD_NUMBER: _ClassVar[int]
    include_block_digests: bool
    include_ledger: bool
    def __init__(self, include_block_digests: _Optional[bool] = ..., include_ledger: _Optional[bool] = ...) -> None: ...

class BlockDigest(_message.Message):
    __slots__ = ("block_id", "sha256", "bits")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    block_id: str
    sha256: bytes
    bits: int
    def __init__(self, block_id: _Optional[str] = ..., sha256: _Optional[bytes] = ..., bits: _Optional[int] = ...) -> None: ...

class LinkStatus(_message.Message):
    __slots__ = ("link_id", "peer", "role", "state", "pulses_sent", "detections", "sifted_bits", "qber", "ec_leak_bits", "ec_efficiency", "secret_bits", "blocks_done", "blocks_aborted", "pool_bits", "emulated_s", "secret_key_rate_bps", "auth_keys_available", "aborts_by_reason", "blocks", "cascade_rounds_per_block", "ec_key_bits", "eavesdropper", "ledger_json", "fault", "fault_affected", "current_key_rate_bps", "emulation_rate", "emulation_window_s", "recent_aborts", "aborted_last_minute", "channel")
    class AbortsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PULSES_SENT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    SIFTED_BITS_FIELD_NUMBER: _ClassVar[int]
    QBER_FIELD_NUMBER: _ClassVar[int]
    EC_LEAK_BITS_FIELD_NUMBER: _ClassVar[int]
    EC_EFFICIENCY_FIELD_NUMBER: _ClassVar[int]
    SECRET_BITS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_DONE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_ABORTED_FIELD_NUMBER: _ClassVar[int]
    POOL_BITS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_S_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    AUTH_KEYS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ABORTS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CASCADE_ROUNDS_PER_BLOCK_FIELD_NUMBER: _ClassVar[int]
    EC_KEY_BITS_FIELD_NUMBER: _ClassVar[int]
    EAVESDROPPER_FIELD_NUMBER: _ClassVar[int]
    LEDGER_JSON_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    FAULT_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_KEY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    EMULATION_RATE_FIELD_NUMBER: _ClassVar[int]
    EMULATION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    RECENT_ABORTS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    peer: str
    role: str
    state: str
    pulses_sent: int
    detections: int
    sifted_bits: int
    qber: float
    ec_leak_bits: int
    ec_efficiency: float
    secret_bits: int
    blocks_done: int
    blocks_aborted: int
    pool_bits: int
    emulated_s: float
    secret_key_rate_bps: float
    auth_keys_available: int
    aborts_by_reason: _containers.ScalarMap[str, int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockDigest]
    cascade_rounds_per_block: float
    ec_key_bits: int
    eavesdropper: str
    ledger_json: str
    fault: str
    fault_affected: int
    current_key_rate_bps: float
    emulation_rate: float
    emulation_window_s: float
    recent_aborts: _containers.RepeatedScalarFieldContainer[str]
    aborted_last_minute: int
    channel: ChannelStatus
    def __init__(self, link_id: _Optional[str] = ..., peer: _Optional[str] = ..., role: _Optional[str] = ..., state: _Optional[str] = ..., pulses_sent: _Optional[int] = ..., detections: _Optional[int] = ..., sifted_bits: _Optional[int] = ..., qber: _Optional[float] = ..., ec_leak_bits: _Optional[int] = ..., ec_efficiency: _Optional[float] = ..., secret_bits: _Optional[int] = ..., blocks_done: _Optional[int] = ..., blocks_aborted: _Optional[int] = ..., pool_bits: _Optional[int] = ..., emulated_s: _Optional[float] = ..., secret_key_rate_bps: _Optional[float] = ..., auth_keys_available: _Optional[int] = ..., aborts_by_reason: _Optional[_Mapping[str, int]] = ..., blocks: _Optional[_Iterable[_Union[BlockDigest, _Mapping]]] = ..., cascade_rounds_per_block: _Optional[float] = ..., ec_key_bits: _Optional[int] = ..., eavesdropper: _Optional[str] = ..., ledger_json: _Optional[str] = ..., fault: _Optional[str] = ..., fault_affected: _Optional[int] = ..., current_key_rate_bps: _Optional[float] = ..., emulation_rate: _Optional[float] = ..., emulation_window_s: _Optional[float] = ..., recent_aborts: _Optional[_Iterable[str]] = ..., aborted_last_minute: _Optional[int] = ..., channel: _Optional[_Union[ChannelStatus, _Mapping]] = ...) -> None: ...

class ChannelStatus(_message.Message):
    __slots__ = ("emulated_utc", "lag_s", "in_pass", "note", "loss_db", "elevation_deg", "azimuth_deg", "range_km", "sky", "sun_elevation_deg", "next_pass_utc", "next_pass_in_s", "pass_ends_utc")
    EMULATED_UTC_FIELD_NUMBER: _ClassVar[int]
    LAG_S_FIELD_NUMBER: _ClassVar[int]
    IN_PASS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    LOSS_DB_FIELD_NUMBER: _ClassVar[int]
    ELEVATION_DEG_FIELD_NUMBER: _ClassVar[int]
    AZIMUTH_DEG_FIELD_NUMBER: _ClassVar[int]
    RANGE_KM_FIELD_NUMBER: _ClassVar[int]
    SKY_FIELD_NUMBER: _ClassVar[int]
    SUN_ELEVATION_DEG_FIELD_NUMBER: _ClassVar[int]
    NEXT_PASS_UTC_FIELD_NUMBER: _ClassVar[int]
    NEXT_PASS_IN_S_FIELD_NUMBER: _ClassVar[int]
    PASS_ENDS_UTC_FIELD_NUMBER: _ClassVar[int]
    emulated_utc: str
    lag_s: float
    in_pass: bool
    note: str
    loss_db: float
    elevation_deg: float
    azimuth_deg: float
    range_km: float
    sky: str
    sun_elevation_deg: float
    next_pass_utc: str
    next_pass_in_s: float
    pass_ends_utc: str
    def __init__(self, emulated_utc: _Optional[str] = ..., lag_s: _Optional[float] = ..., in_pass: _Optional[bool] = ..., note: _Optional[str] = ..., loss_db: _Optional[float] = ..., elevation_deg: _Optional[float] = ..., azimuth_deg: _Optional[float] = ..., range_km: _Optional[float] = ..., sky: _Optional[str] = ..., sun_elevation_deg: _Optional[float] = ..., next_pass_utc: _Optional[str] = ..., next_pass_in_s: _Optional[float] = ..., pass_ends_utc: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "uptime_s", "links", "network_json")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_JSON_FIELD_NUMBER: _ClassVar[int]
    node: str
    uptime_s: float
    links: _containers.RepeatedCompositeFieldContainer[LinkStatus]
    network_json: str
    def __init__(self, node: _Optional[str] = ..., uptime_s: _Optional[float] = ..., links: _Optional[_Iterable[_Union[LinkStatus, _Mapping]]] = ..., network_json: _Optional[str] = ...) -> None: ...

class EavesdropperRequest(_message.Message):
    __slots__ = ("link_id", "attack", "fraction")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    attack: str
    fraction: float
    def __init__(self, link_id: _Optional[str] = ..., attack: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class EavesdropperReply(_message.Message):
    __slots__ = ("link_id", "attack", "fraction")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    attack: str
    fraction: float
    def __init__(self, link_id: _Optional[str] = ..., attack: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class FaultRequest(_message.Message):
    __slots__ = ("link_id", "kind", "probability", "delay_ms", "channel")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    kind: str
    probability: float
    delay_ms: float
    channel: str
    def __init__(self, link_id: _Optional[str] = ..., kind: _Optional[str] = ..., probability: _Optional[float] = ..., delay_ms: _Optional[float] = ..., channel: _Optional[str] = ...) -> None: ...

class FaultReply(_message.Message):
    __slots__ = ("link_id", "kind", "probability", "delay_ms", "channel")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    kind: str
    probability: float
    delay_ms: float
    channel: str
    def __init__(self, link_id: _Optional[str] = ..., kind: _Optional[str] = ..., probability: _Optional[float] = ..., delay_ms: _Optional[float] = ..., channel: _Optional[str] = ...) -> None: ...
