from . import network_pb2 as _network_pb2
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
    __slots__ = ("link_id", "peer", "role", "state", "pulses_sent", "detections", "sifted_bits", "qber", "ec_leak_bits", "ec_efficiency", "secret_bits", "blocks_done", "blocks_aborted", "pool_bits", "emulated_s", "secret_key_rate_bps", "auth_keys_available", "aborts_by_reason", "blocks", "cascade_rounds_per_block", "ec_key_bits", "eavesdropper", "fault", "fault_affected", "current_key_rate_bps", "emulation_rate", "emulation_window_s", "recent_aborts", "aborted_last_minute", "channel", "ledger", "block_stage_seconds", "block_stage_blocks")
    class AbortsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BlockStageSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
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
    FAULT_FIELD_NUMBER: _ClassVar[int]
    FAULT_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_KEY_RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    EMULATION_RATE_FIELD_NUMBER: _ClassVar[int]
    EMULATION_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    RECENT_ABORTS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_STAGE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
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
    fault: str
    fault_affected: int
    current_key_rate_bps: float
    emulation_rate: float
    emulation_window_s: float
    recent_aborts: _containers.RepeatedScalarFieldContainer[str]
    aborted_last_minute: int
    channel: ChannelStatus
    ledger: Ledger
    block_stage_seconds: _containers.ScalarMap[str, float]
    block_stage_blocks: int
    def __init__(self, link_id: _Optional[str] = ..., peer: _Optional[str] = ..., role: _Optional[str] = ..., state: _Optional[str] = ..., pulses_sent: _Optional[int] = ..., detections: _Optional[int] = ..., sifted_bits: _Optional[int] = ..., qber: _Optional[float] = ..., ec_leak_bits: _Optional[int] = ..., ec_efficiency: _Optional[float] = ..., secret_bits: _Optional[int] = ..., blocks_done: _Optional[int] = ..., blocks_aborted: _Optional[int] = ..., pool_bits: _Optional[int] = ..., emulated_s: _Optional[float] = ..., secret_key_rate_bps: _Optional[float] = ..., auth_keys_available: _Optional[int] = ..., aborts_by_reason: _Optional[_Mapping[str, int]] = ..., blocks: _Optional[_Iterable[_Union[BlockDigest, _Mapping]]] = ..., cascade_rounds_per_block: _Optional[float] = ..., ec_key_bits: _Optional[int] = ..., eavesdropper: _Optional[str] = ..., fault: _Optional[str] = ..., fault_affected: _Optional[int] = ..., current_key_rate_bps: _Optional[float] = ..., emulation_rate: _Optional[float] = ..., emulation_window_s: _Optional[float] = ..., recent_aborts: _Optional[_Iterable[str]] = ..., aborted_last_minute: _Optional[int] = ..., channel: _Optional[_Union[ChannelStatus, _Mapping]] = ..., ledger: _Optional[_Union[Ledger, _Mapping]] = ..., block_stage_seconds: _Optional[_Mapping[str, float]] = ..., block_stage_blocks: _Optional[int] = ...) -> None: ...

class Ledger(_message.Message):
    __slots__ = ("entries", "folded_through")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    FOLDED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    folded_through: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., folded_through: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("block_id", "offset_bytes", "length_bytes", "initiator")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    LENGTH_BYTES_FIELD_NUMBER: _ClassVar[int]
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    block_id: str
    offset_bytes: int
    length_bytes: int
    initiator: str
    def __init__(self, block_id: _Optional[str] = ..., offset_bytes: _Optional[int] = ..., length_bytes: _Optional[int] = ..., initiator: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("node", "uptime_s", "links", "network")
    NODE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    node: str
    uptime_s: float
    links: _containers.RepeatedCompositeFieldContainer[LinkStatus]
    network: NetworkStatus
    def __init__(self, node: _Optional[str] = ..., uptime_s: _Optional[float] = ..., links: _Optional[_Iterable[_Union[LinkStatus, _Mapping]]] = ..., network: _Optional[_Union[NetworkStatus, _Mapping]] = ...) -> None: ...

class NetworkStatus(_message.Message):
    __slots__ = ("relays_started", "relays_delivered", "relays_failed", "relays_forwarded", "relay_hops_received", "relay_hops_sent", "relay_failures_by_reason", "routing", "storage", "kme_port", "metrics_port", "etsi014_requests", "kme_refusals_by_reason", "keys_expired", "etsi004_port", "skip_port", "etsi004", "interworking")
    class RelayFailuresByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class StorageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: StorageStatus
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[StorageStatus, _Mapping]] = ...) -> None: ...
    class Etsi014RequestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class KmeRefusalsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RELAYS_STARTED_FIELD_NUMBER: _ClassVar[int]
    RELAYS_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FAILED_FIELD_NUMBER: _ClassVar[int]
    RELAYS_FORWARDED_FIELD_NUMBER: _ClassVar[int]
    RELAY_HOPS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RELAY_HOPS_SENT_FIELD_NUMBER: _ClassVar[int]
    RELAY_FAILURES_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    KME_PORT_FIELD_NUMBER: _ClassVar[int]
    METRICS_PORT_FIELD_NUMBER: _ClassVar[int]
    ETSI014_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KME_REFUSALS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    KEYS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ETSI004_PORT_FIELD_NUMBER: _ClassVar[int]
    SKIP_PORT_FIELD_NUMBER: _ClassVar[int]
    ETSI004_FIELD_NUMBER: _ClassVar[int]
    INTERWORKING_FIELD_NUMBER: _ClassVar[int]
    relays_started: int
    relays_delivered: int
    relays_failed: int
    relays_forwarded: int
    relay_hops_received: int
    relay_hops_sent: int
    relay_failures_by_reason: _containers.ScalarMap[str, int]
    routing: RoutingStatus
    storage: _containers.MessageMap[str, StorageStatus]
    kme_port: int
    metrics_port: int
    etsi014_requests: _containers.ScalarMap[str, int]
    kme_refusals_by_reason: _containers.ScalarMap[str, int]
    keys_expired: int
    etsi004_port: int
    skip_port: int
    etsi004: StreamsStatus
    interworking: _containers.RepeatedCompositeFieldContainer[GatewayStatus]
    def __init__(self, relays_started: _Optional[int] = ..., relays_delivered: _Optional[int] = ..., relays_failed: _Optional[int] = ..., relays_forwarded: _Optional[int] = ..., relay_hops_received: _Optional[int] = ..., relay_hops_sent: _Optional[int] = ..., relay_failures_by_reason: _Optional[_Mapping[str, int]] = ..., routing: _Optional[_Union[RoutingStatus, _Mapping]] = ..., storage: _Optional[_Mapping[str, StorageStatus]] = ..., kme_port: _Optional[int] = ..., metrics_port: _Optional[int] = ..., etsi014_requests: _Optional[_Mapping[str, int]] = ..., kme_refusals_by_reason: _Optional[_Mapping[str, int]] = ..., keys_expired: _Optional[int] = ..., etsi004_port: _Optional[int] = ..., skip_port: _Optional[int] = ..., etsi004: _Optional[_Union[StreamsStatus, _Mapping]] = ..., interworking: _Optional[_Iterable[_Union[GatewayStatus, _Mapping]]] = ...) -> None: ...

class StreamsStatus(_message.Message):
    __slots__ = ("streams_open", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STREAMS_OPEN_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    streams_open: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, streams_open: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GatewayStatus(_message.Message):
    __slots__ = ("peer_network", "peer_kme", "port", "handing_off", "relaying_in", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PEER_NETWORK_FIELD_NUMBER: _ClassVar[int]
    PEER_KME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HANDING_OFF_FIELD_NUMBER: _ClassVar[int]
    RELAYING_IN_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    peer_network: str
    peer_kme: str
    port: int
    handing_off: int
    relaying_in: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, peer_network: _Optional[str] = ..., peer_kme: _Optional[str] = ..., port: _Optional[int] = ..., handing_off: _Optional[int] = ..., relaying_in: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RoutingStatus(_message.Message):
    __slots__ = ("local_node", "max_age_s", "rejected", "origins")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OriginsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeldAdvert
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeldAdvert, _Mapping]] = ...) -> None: ...
    LOCAL_NODE_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    local_node: str
    max_age_s: float
    rejected: _containers.ScalarMap[str, int]
    origins: _containers.MessageMap[str, HeldAdvert]
    def __init__(self, local_node: _Optional[str] = ..., max_age_s: _Optional[float] = ..., rejected: _Optional[_Mapping[str, int]] = ..., origins: _Optional[_Mapping[str, HeldAdvert]] = ...) -> None: ...

class HeldAdvert(_message.Message):
    __slots__ = ("sequence", "received_at", "links")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    received_at: float
    links: _containers.RepeatedCompositeFieldContainer[_network_pb2.LinkAdvert]
    def __init__(self, sequence: _Optional[int] = ..., received_at: _Optional[float] = ..., links: _Optional[_Iterable[_Union[_network_pb2.LinkAdvert, _Mapping]]] = ...) -> None: ...

class StorageStatus(_message.Message):
    __slots__ = ("healthy", "error", "failures")
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    healthy: bool
    error: str
    failures: int
    def __init__(self, healthy: _Optional[bool] = ..., error: _Optional[str] = ..., failures: _Optional[int] = ...) -> None: ...

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
