"""What a node and a cluster report: one typed model behind every view of it.

Theory of operation:
    A node builds :class:`NodeStatus` from its counters; the same object
    feeds ``/metrics`` (``qcinode.node.metrics``) and travels to
    ``qcinode status`` as the admin ``NodeStatus`` message
    (``qcinode.transport.admin`` converts both ways, with no JSON inside the
    protobuf). ``qcinode status`` merges the nodes' reports into a
    :class:`ClusterStatus`, which prints the table
    (``qcinode.cluster.launcher.render_table``) and, through
    :meth:`ClusterStatus.to_json`, the ``--json`` document.

    Rules:

    1. The JSON field names are a contract (docs/design.md §2): the
       dataclass field names here *are* those names, in the order the
       document shows them; :meth:`to_json` adds nothing and renames nothing.
    2. Closed vocabularies are enums: a link's :class:`LinkState` and
       :class:`~qcinode.core.roles.Role`, block aborts by
       :class:`~qcinode.core.aborts.AbortReason`, relay failures by
       :class:`~qcinode.core.relay.messages.RefusalReason`, refused adverts by
       :class:`~qcinode.core.routing.RejectReason`. Their values are the JSON
       keys and the Prometheus labels, so label sets stay bounded; the human
       detail of an abort stays in ``recent_aborts``.
    3. Optional figures are ``None`` when they do not apply (a fibre has no
       pass, speed max no clock, a node without a KME no ``kme_port``) and
       are left out of the JSON, except where the document has always shown
       ``null`` (``kme_port``, ``metrics_port``, a cluster link's pools).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from .core.aborts import AbortReason
from .core.relay.messages import RefusalReason
from .core.roles import Role
from .core.routing import RejectReason

__all__ = [
    "AdvertisedLink",
    "BlockDigest",
    "ChannelStatus",
    "ClusterLink",
    "ClusterNode",
    "ClusterStatus",
    "HeldAdvert",
    "LedgerEntry",
    "LinkState",
    "LinkStatus",
    "NetworkStatus",
    "NodeStatus",
    "RoutingStatus",
    "StorageStatus",
]


class LinkState(enum.StrEnum):
    """Where one end of a link stands."""

    #: Dialling, or waiting for the peer's Hello.
    CONNECTING = "connecting"
    #: A post-processing session runs.
    UP = "up"
    #: No session (the peer is away, a partition, between reconnections).
    DOWN = "down"
    #: The link's state cannot be saved: nothing that depends on it may leave the node.
    STORAGE_FAILED = "storage_failed"


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelStatus:
    """The network clock as one end of a link sees it, and a free-space link's channel now.

    Every field is None where it does not apply (admin.proto ``ChannelStatus``).
    """

    emulated_utc: str | None = None  # the transmitter's emulated position (ISO 8601 UTC)
    lag_s: float | None = None  # emulated seconds the transmitter is behind the network clock
    in_pass: bool | None = None  # free space: the satellite is above the elevation mask
    note: str | None = None  # why the channel carries nothing, or what limits it
    loss_db: float | None = None  # channel loss now (detector excluded)
    elevation_deg: float | None = None
    azimuth_deg: float | None = None
    range_km: float | None = None  # slant range
    sky: str | None = None  # "night", "twilight" or "day" at the ground station
    sun_elevation_deg: float | None = None
    next_pass_utc: str | None = None  # between passes: when the next one rises
    next_pass_in_s: float | None = None  # ... in emulated seconds from now
    pass_ends_utc: str | None = None  # in a pass: when it sets

    def to_json(self) -> dict[str, Any]:
        return {name: value for name, value in _items(self) if value is not None}


@dataclasses.dataclass(frozen=True, slots=True)
class BlockDigest:
    """A pool block's SHA-256 (test-only comparisons of the two ends; never the key)."""

    block_id: str
    sha256: bytes
    bits: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"block_id": self.block_id, "sha256": self.sha256.hex(), "bits": self.bits}


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One used range of a link pool, and which end initiated its use (the ledger audit reads these)."""

    block_id: str
    offset_bytes: int
    length_bytes: int
    initiator: Role

    def to_json(self) -> list[Any]:
        return [self.block_id, self.offset_bytes, self.length_bytes, self.initiator.value]


#: A block's post-processing stages at the transmitting end, in order (``LinkStatus.block_stage_seconds``).
BLOCK_STAGES = ("estimation", "reconciliation", "confirmation")


def in_stage_order(seconds: Mapping[str, float]) -> dict[str, float]:
    """``seconds`` by stage, in :data:`BLOCK_STAGES` order (a stage this version does not know last)."""
    rank = {stage: i for i, stage in enumerate(BLOCK_STAGES)}
    return {stage: float(seconds[stage]) for stage in sorted(seconds, key=lambda stage: (rank.get(stage, len(rank)), stage))}


@dataclasses.dataclass(frozen=True, slots=True)
class LinkStatus:
    """One end of one link: counters since the link started, and what it does now."""

    link_id: str
    peer: str
    role: Role
    state: LinkState
    pulses_sent: int = 0
    detections: int = 0
    sifted_bits: int = 0
    qber: float = 0.0  # the latest block's (a fraction)
    ec_leak_bits: int = 0
    ec_efficiency: float = 0.0
    secret_bits: int = 0
    blocks_done: int = 0
    blocks_aborted: int = 0
    pool_bits: int = 0
    emulated_s: float = 0.0
    secret_key_rate_bps: float = 0.0  # lifetime: secret bits per emulated second
    auth_keys_available: int = 0
    aborts_by_reason: Mapping[AbortReason, int] = dataclasses.field(default_factory=dict)
    #: With ``include_block_digests``; None (shown as []) otherwise.
    blocks: tuple[BlockDigest, ...] | None = None
    cascade_rounds_per_block: float = 0.0
    #: At the transmitting end: wall seconds the accepted blocks spent in each post-processing stage
    #: (:data:`BLOCK_STAGES`, in that order), summed, and how many blocks that is.
    block_stage_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    block_stage_blocks: int = 0
    ec_key_bits: int = 0
    eavesdropper: str = ""  # "" when none, else "ATTACK FRACTION"
    fault: str = ""  # "" when none, else e.g. "drop p=0.1" (this end's classical-channel fault)
    fault_affected: int = 0  # outgoing messages this end's fault has tampered with
    current_key_rate_bps: float = 0.0  # the blocks of the last minute of wall time
    emulation_rate: float = 0.0  # emulated seconds per wall second over the last minute
    emulation_window_s: float = 0.0  # wall seconds emulation_rate covers
    recent_aborts: tuple[str, ...] = ()  # the last aborts' reason texts, oldest first
    aborted_last_minute: int = 0
    channel: ChannelStatus | None = None
    #: With ``include_ledger``: every used range of the pool's live and recently closed blocks; None otherwise.
    ledger: tuple[LedgerEntry, ...] | None = None
    #: With ``include_ledger``: blocks of a seq below this that ``ledger`` does not list are folded
    #: at this end (closed long ago, counted in aggregate only); 0 while none is. None otherwise.
    ledger_folded_through: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in _items(self):
            if name == "aborts_by_reason":
                out[name] = {reason.value: count for reason, count in sorted(value.items())}
            elif name == "blocks":
                out[name] = [block.to_json() for block in value or ()]
            elif name == "recent_aborts":
                out[name] = list(value)
            elif name == "channel":
                if value is not None:
                    out[name] = value.to_json()
            elif name == "ledger":
                if value is not None:
                    out[name] = [entry.to_json() for entry in value]
            elif name == "ledger_folded_through":
                if value is not None:
                    out[name] = value
            else:
                out[name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class AdvertisedLink:
    """One link in a node's routing advert."""

    link_id: str
    peer: str
    up: bool
    available_out_bytes: int

    def to_json(self) -> dict[str, Any]:
        return dict(_items(self))


@dataclasses.dataclass(frozen=True, slots=True)
class HeldAdvert:
    """The latest advert the routing database holds from one origin."""

    sequence: int
    received_at: float
    links: tuple[AdvertisedLink, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "received_at": self.received_at, "links": [link.to_json() for link in self.links]}


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingStatus:
    """A node's link-state database."""

    local_node: str
    max_age_s: float
    rejected: Mapping[RejectReason, int] = dataclasses.field(default_factory=dict)
    origins: Mapping[str, HeldAdvert] = dataclasses.field(default_factory=dict)

    @property
    def known_nodes(self) -> int:
        """Nodes the database knows: every origin held, this node included (also before its first advert)."""
        return len(set(self.origins) | {self.local_node})

    @property
    def links_up_both_ways(self) -> int:
        """Links that both ends' held adverts list as up, naming each other under one link ID (routing can use them)."""
        ends = {
            (link.link_id, origin, link.peer)
            for origin, held in self.origins.items()
            for link in held.links
            if link.up
        }
        return sum(1 for link_id, a, b in ends if a < b and (link_id, b, a) in ends)

    def to_json(self) -> dict[str, Any]:
        return {
            "local_node": self.local_node,
            "max_age_s": self.max_age_s,
            "rejected": {reason.value: n for reason, n in sorted(self.rejected.items(), key=lambda item: item[0].value)},
            "origins": {origin: held.to_json() for origin, held in sorted(self.origins.items())},
        }


@dataclasses.dataclass(frozen=True, slots=True)
class StorageStatus:
    """One database file of the node: healthy (its last read or write worked), the last failure, failures so far."""

    healthy: bool
    error: str = ""
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(_items(self))


@dataclasses.dataclass(frozen=True, slots=True)
class StreamsStatus:
    """The node's ETSI GS QKD 004 server: streams open now and its request counters (bounded names)."""

    streams_open: int = 0
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"streams_open": self.streams_open, **dict(sorted(self.counters.items()))}


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayStatus:
    """One interworking site of the node: the other network, its KME, hand-overs in flight and counters."""

    peer_network: str
    peer_kme: str
    port: int | None = None
    handing_off: int = 0
    relaying_in: int = 0
    counters: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: dict(sorted(value.items())) if isinstance(value, Mapping) else value for name, value in _items(self)}


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkStatus:
    """A node's relay counters, routing database, ETSI 014 counts and storage health."""

    relays_started: int = 0
    relays_delivered: int = 0
    relays_failed: int = 0
    relays_forwarded: int = 0
    relay_hops_received: int = 0
    relay_hops_sent: int = 0
    relay_failures_by_reason: Mapping[RefusalReason, int] = dataclasses.field(default_factory=dict)
    routing: RoutingStatus | None = None
    storage: Mapping[str, StorageStatus] = dataclasses.field(default_factory=dict)  # by database file name
    kme_port: int | None = None
    metrics_port: int | None = None
    etsi014_requests: Mapping[str, int] = dataclasses.field(default_factory=dict)  # "ENDPOINT STATUS" -> count
    kme_refusals_by_reason: Mapping[str, int] = dataclasses.field(default_factory=dict)
    keys_expired: int = 0
    etsi004_port: int | None = None  # None: no ETSI 004 server
    skip_port: int | None = None  # None: no SKIP server
    etsi004: StreamsStatus | None = None
    interworking: tuple[GatewayStatus, ...] = ()  # one per interworking site of this node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in _items(self):
            if name == "etsi004":
                if value is not None:
                    out[name] = value.to_json()
            elif name == "interworking":
                if value:
                    out[name] = [gateway.to_json() for gateway in value]
            elif name == "relay_failures_by_reason":
                out[name] = {reason.value: n for reason, n in sorted(value.items(), key=lambda item: item[0].value)}
            elif name == "routing":
                if value is not None:
                    out[name] = value.to_json()
            elif name == "storage":
                out[name] = {file: store.to_json() for file, store in value.items()}
            elif isinstance(value, Mapping):
                out[name] = dict(value)
            else:
                out[name] = value
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's report: what ``Admin.Status`` answers."""

    node: str
    uptime_s: float
    links: tuple[LinkStatus, ...] = ()
    network: NetworkStatus = dataclasses.field(default_factory=NetworkStatus)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "uptime_s": self.uptime_s,
            "links": [link.to_json() for link in self.links],
            "network": self.network.to_json(),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterNode:
    """A node of a local cluster as ``qcinode status`` found it."""

    pid: int
    alive: bool
    grpc: str
    #: Why it did not answer (not running, unreachable); None when it did.
    error: str | None = None
    #: Its report; None when it did not answer.
    status: NodeStatus | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "alive": self.alive, "grpc": self.grpc}
        if self.error is not None:
            out["error"] = self.error
        out["uptime_s"] = self.status.uptime_s if self.status is not None else None
        out["links"] = [link.to_json() for link in self.status.links] if self.status is not None else []
        out["network"] = self.status.network.to_json() if self.status is not None else {}
        return out


#: A cluster link's fields that belong to one end only (left out of the merged view).
_ONE_END_FIELDS = ("role", "peer", "blocks", "ledger", "ledger_folded_through")


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterLink:
    """One link of the cluster: the transmitter's view (else the receiver's) and what both ends add."""

    #: The view shown (Alice's if she answered, else Bob's); None when no running node reports the link.
    view: LinkStatus | None
    #: ``down`` unless both ends report the link, else the view's state.
    state: LinkState
    #: What is switched on against the link: its eavesdropper and each end's fault ("" if nothing).
    attacks: str = ""
    alice_pool_bits: int | None = None
    bob_pool_bits: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.view is not None:
            out = {k: v for k, v in self.view.to_json().items() if k not in _ONE_END_FIELDS}
        out["state"] = self.state.value
        out.update(attacks=self.attacks, alice_pool_bits=self.alice_pool_bits, bob_pool_bits=self.bob_pool_bits)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Every node and link of a local cluster: the ``qcinode status`` document."""

    topology: str
    speed: float | str | None  # the cluster's emulation.speed (a number or "max"); None if unknown
    nodes: Mapping[str, ClusterNode]
    links: Mapping[str, ClusterLink]

    def to_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "speed": self.speed,
            "nodes": {name: node.to_json() for name, node in self.nodes.items()},
            "links": {link_id: link.to_json() for link_id, link in self.links.items()},
        }


def _items(obj: Any) -> list[tuple[str, Any]]:
    return [(field.name, getattr(obj, field.name)) for field in dataclasses.fields(obj)]
