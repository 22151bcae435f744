"""The status model (:mod:`qcinode.status`) <-> the admin protobuf (``proto/qcinode/v1/admin.proto``).

Every field maps to a typed protobuf field, both ways, so what a node
reports is what ``qcinode status`` reads: no JSON text inside a message and
no guessing types on the way back. Closed vocabularies (link state, role,
abort and relay-failure reasons, refused adverts) travel as their values and
are checked on decoding: a value this version does not know is a
:class:`~qcinode.errors.RemoteProtocolError` naming the field, not a
silently wrong status.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from ..core.aborts import AbortReason
from ..core.relay.messages import RefusalReason
from ..core.roles import Role
from ..core.routing import RejectReason
from ..errors import RemoteProtocolError
from ..status import (
    AdvertisedLink,
    BlockDigest,
    ChannelStatus,
    GatewayStatus,
    HeldAdvert,
    LedgerEntry,
    LinkState,
    LinkStatus,
    NetworkStatus,
    NodeStatus,
    RoutingStatus,
    StorageStatus,
    StreamsStatus,
    in_stage_order,
)
from .pb import admin_pb2 as pb
from .pb import network_pb2 as npb

__all__ = ["status_from_pb", "status_to_pb"]

E = TypeVar("E", bound=enum.Enum)

#: ChannelStatus fields, in admin.proto's order (every one optional).
_CHANNEL_FIELDS = (
    "emulated_utc", "lag_s", "in_pass", "note", "loss_db", "elevation_deg", "azimuth_deg", "range_km", "sky",
    "sun_elevation_deg", "next_pass_utc", "next_pass_in_s", "pass_ends_utc",
)  # fmt: skip
#: LinkStatus fields that are plain scalars, the same name on both sides.
_LINK_SCALARS = (
    "link_id", "peer", "pulses_sent", "detections", "sifted_bits", "qber", "ec_leak_bits", "ec_efficiency", "secret_bits",
    "blocks_done", "blocks_aborted", "pool_bits", "emulated_s", "secret_key_rate_bps", "auth_keys_available",
    "cascade_rounds_per_block", "ec_key_bits", "eavesdropper", "fault", "fault_affected", "current_key_rate_bps",
    "emulation_rate", "emulation_window_s", "aborted_last_minute",
)  # fmt: skip
_NETWORK_COUNTERS = ("relays_started", "relays_delivered", "relays_failed", "relays_forwarded", "relay_hops_received", "relay_hops_sent")


# -- to the wire -------------------------------------------------------------------------------


def status_to_pb(status: NodeStatus) -> pb.NodeStatus:
    """A node's report as the ``Admin.Status`` answer."""
    return pb.NodeStatus(
        node=status.node, uptime_s=status.uptime_s, links=[_link_to_pb(link) for link in status.links], network=_network_to_pb(status.network)
    )


def _link_to_pb(link: LinkStatus) -> pb.LinkStatus:
    msg = pb.LinkStatus(
        role=link.role.value,
        state=link.state.value,
        aborts_by_reason={reason.value: count for reason, count in link.aborts_by_reason.items()},
        recent_aborts=list(link.recent_aborts),
        block_stage_seconds=dict(link.block_stage_seconds),
        block_stage_blocks=link.block_stage_blocks,
        **{name: getattr(link, name) for name in _LINK_SCALARS},
    )
    for block in link.blocks or ():
        msg.blocks.add(block_id=block.block_id, sha256=block.sha256, bits=block.bits)
    if link.channel is not None:
        msg.channel.CopyFrom(pb.ChannelStatus(**{name: value for name in _CHANNEL_FIELDS if (value := getattr(link.channel, name)) is not None}))
    if link.ledger is not None:
        msg.ledger.CopyFrom(
            pb.Ledger(
                entries=[
                    pb.LedgerEntry(block_id=e.block_id, offset_bytes=e.offset_bytes, length_bytes=e.length_bytes, initiator=e.initiator.value)
                    for e in link.ledger
                ],
                folded_through=link.ledger_folded_through or 0,
            )
        )
    return msg


def _network_to_pb(network: NetworkStatus) -> pb.NetworkStatus:
    msg = pb.NetworkStatus(
        relay_failures_by_reason={reason.value: n for reason, n in network.relay_failures_by_reason.items()},
        storage={name: pb.StorageStatus(healthy=s.healthy, error=s.error, failures=s.failures) for name, s in network.storage.items()},
        etsi014_requests=dict(network.etsi014_requests),
        kme_refusals_by_reason=dict(network.kme_refusals_by_reason),
        keys_expired=network.keys_expired,
        **{name: getattr(network, name) for name in _NETWORK_COUNTERS},
    )
    if network.kme_port is not None:
        msg.kme_port = network.kme_port
    if network.etsi004_port is not None:
        msg.etsi004_port = network.etsi004_port
    if network.skip_port is not None:
        msg.skip_port = network.skip_port
    if network.etsi004 is not None:
        msg.etsi004.CopyFrom(pb.StreamsStatus(streams_open=network.etsi004.streams_open, counters=dict(network.etsi004.counters)))
    for gateway in network.interworking:
        out = msg.interworking.add(
            peer_network=gateway.peer_network,
            peer_kme=gateway.peer_kme,
            handing_off=gateway.handing_off,
            relaying_in=gateway.relaying_in,
            counters=dict(gateway.counters),
        )
        if gateway.port is not None:
            out.port = gateway.port
    if network.metrics_port is not None:
        msg.metrics_port = network.metrics_port
    routing = network.routing
    if routing is not None:
        msg.routing.CopyFrom(
            pb.RoutingStatus(
                local_node=routing.local_node,
                max_age_s=routing.max_age_s,
                rejected={reason.value: n for reason, n in routing.rejected.items()},
                origins={
                    origin: pb.HeldAdvert(
                        sequence=held.sequence,
                        received_at=held.received_at,
                        links=[npb.LinkAdvert(link_id=a.link_id, peer=a.peer, up=a.up, available_out_bytes=a.available_out_bytes) for a in held.links],
                    )
                    for origin, held in routing.origins.items()
                },
            )
        )
    return msg


# -- from the wire -----------------------------------------------------------------------------


def status_from_pb(msg: pb.NodeStatus) -> NodeStatus:
    """The ``Admin.Status`` answer as the status model.

    Raises:
        RemoteProtocolError: A closed vocabulary's value this version does not know.
    """
    return NodeStatus(
        node=msg.node,
        uptime_s=msg.uptime_s,
        links=tuple(_link_from_pb(link) for link in msg.links),
        network=_network_from_pb(msg.network) if msg.HasField("network") else NetworkStatus(),
    )


def _enum(kind: type[E], value: str, field: str) -> E:
    try:
        return kind(value)
    except ValueError:
        raise RemoteProtocolError(f"status: {field} {value[:40]!r} is not one of {', '.join(str(m.value) for m in kind)}") from None


def _counts(kind: type[E], counts: Mapping[str, int], field: str) -> dict[E, int]:
    return {_enum(kind, key, field): int(n) for key, n in sorted(counts.items())}


def _link_from_pb(msg: pb.LinkStatus) -> LinkStatus:
    channel = None
    if msg.HasField("channel"):
        channel = ChannelStatus(**{name: getattr(msg.channel, name) if msg.channel.HasField(name) else None for name in _CHANNEL_FIELDS})
    ledger = None
    folded_through = None
    if msg.HasField("ledger"):
        folded_through = msg.ledger.folded_through
        ledger = tuple(
            LedgerEntry(e.block_id, e.offset_bytes, e.length_bytes, _enum(Role, e.initiator, "ledger initiator")) for e in msg.ledger.entries
        )
    return LinkStatus(
        role=_enum(Role, msg.role, "role"),
        state=_enum(LinkState, msg.state, "link state"),
        aborts_by_reason=_counts(AbortReason, msg.aborts_by_reason, "abort reason"),
        blocks=tuple(BlockDigest(b.block_id, bytes(b.sha256), b.bits) for b in msg.blocks) or None,
        recent_aborts=tuple(msg.recent_aborts),
        block_stage_seconds=in_stage_order(msg.block_stage_seconds),
        block_stage_blocks=msg.block_stage_blocks,
        channel=channel,
        ledger=ledger,
        ledger_folded_through=folded_through,
        **{name: getattr(msg, name) for name in _LINK_SCALARS},
    )


def _network_from_pb(msg: pb.NetworkStatus) -> NetworkStatus:
    routing = None
    if msg.HasField("routing"):
        r = msg.routing
        routing = RoutingStatus(
            local_node=r.local_node,
            max_age_s=r.max_age_s,
            rejected=_counts(RejectReason, r.rejected, "advert rejection"),
            origins={
                origin: HeldAdvert(
                    sequence=held.sequence,
                    received_at=held.received_at,
                    links=tuple(AdvertisedLink(a.link_id, a.peer, a.up, a.available_out_bytes) for a in held.links),
                )
                for origin, held in sorted(r.origins.items())
            },
        )
    return NetworkStatus(
        relay_failures_by_reason=_counts(RefusalReason, msg.relay_failures_by_reason, "relay failure reason"),
        routing=routing,
        storage={name: StorageStatus(s.healthy, s.error, s.failures) for name, s in sorted(msg.storage.items())},
        kme_port=msg.kme_port if msg.HasField("kme_port") else None,
        metrics_port=msg.metrics_port if msg.HasField("metrics_port") else None,
        etsi014_requests={k: int(v) for k, v in sorted(msg.etsi014_requests.items())},
        kme_refusals_by_reason={k: int(v) for k, v in sorted(msg.kme_refusals_by_reason.items())},
        keys_expired=msg.keys_expired,
        etsi004_port=msg.etsi004_port if msg.HasField("etsi004_port") else None,
        skip_port=msg.skip_port if msg.HasField("skip_port") else None,
        etsi004=(
            StreamsStatus(msg.etsi004.streams_open, {k: int(v) for k, v in sorted(msg.etsi004.counters.items())}) if msg.HasField("etsi004") else None
        ),
        interworking=tuple(
            GatewayStatus(
                g.peer_network,
                g.peer_kme,
                g.port if g.HasField("port") else None,
                g.handing_off,
                g.relaying_in,
                {k: int(v) for k, v in sorted(g.counters.items())},
            )
            for g in msg.interworking
        ),
        **{name: getattr(msg, name) for name in _NETWORK_COUNTERS},
    )
