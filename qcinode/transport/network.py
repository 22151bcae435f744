"""Routing adverts and relay hops <-> protobuf (``proto/qcinode/v1/network.proto``), at the wire boundary.

The core types (:class:`~qcinode.core.routing.LinkStateAdvert`,
:class:`~qcinode.core.relay.messages.SealedHop`) are built from whatever the
peer sent; the core validates them (an advert's names and numbers, a hop's
header and pad ranges) and refuses what breaks a rule, so nothing here
decides anything.
"""

from __future__ import annotations

from ..core.pool import KeyRange
from ..core.relay.hop import RelayHeader
from ..core.relay.messages import Refusal, SealedHop
from ..core.routing import LinkAdvert, LinkStateAdvert
from .pb import network_pb2 as pb

__all__ = ["advert_from_pb", "advert_to_pb", "answer_from_pb", "answer_to_pb", "hop_from_pb", "hop_to_pb"]


def advert_to_pb(advert: LinkStateAdvert) -> pb.LinkStateAdvert:
    return pb.LinkStateAdvert(
        origin=advert.origin,
        sequence=advert.sequence,
        links=[pb.LinkAdvert(link_id=a.link_id, peer=a.peer, up=a.up, available_out_bytes=a.available_out_bytes) for a in advert.links],
        signature=advert.signature,
        origin_certificate=advert.certificate,
    )


def advert_from_pb(msg: pb.LinkStateAdvert) -> LinkStateAdvert:
    return LinkStateAdvert(
        origin=msg.origin,
        sequence=msg.sequence,
        links=tuple(LinkAdvert(link_id=a.link_id, peer=a.peer, up=a.up, available_out_bytes=a.available_out_bytes) for a in msg.links),
        signature=msg.signature,
        certificate=msg.origin_certificate,
    )


def hop_to_pb(hop: SealedHop) -> pb.RelayHop:
    header = hop.header
    return pb.RelayHop(
        relay_id=header.relay_id,
        key_id=header.key_id,
        master_sae=header.master_sae,
        slave_saes=list(header.slave_saes),
        source=header.source,
        destination=header.destination,
        path=list(header.path),
        hop_index=header.hop_index,
        share_index=header.share_index,
        share_count=header.share_count,
        key_bytes=header.key_bytes,
        pad=[pb.KeyRange(block_id=r.block_id, offset_bytes=r.offset_bytes, length_bytes=r.length_bytes) for r in hop.pad],
        ciphertext=hop.ciphertext,
        tag=hop.tag,
    )


def hop_from_pb(msg: pb.RelayHop) -> SealedHop:
    header = RelayHeader(
        relay_id=msg.relay_id,
        key_id=msg.key_id,
        master_sae=msg.master_sae,
        slave_saes=tuple(msg.slave_saes),
        source=msg.source,
        destination=msg.destination,
        path=tuple(msg.path),
        hop_index=msg.hop_index,
        share_index=msg.share_index,
        share_count=msg.share_count,
        key_bytes=msg.key_bytes,
    )
    pad = tuple(KeyRange(r.block_id, r.offset_bytes, r.length_bytes) for r in msg.pad)
    return SealedHop(header, pad, bytes(msg.ciphertext), bytes(msg.tag))


def answer_to_pb(refusal: Refusal | None) -> pb.RelayResult:
    """A hop's answer: delivered (None) or why not, as ``"<reason>: <detail>"``."""
    if refusal is None:
        return pb.RelayResult(delivered=True)
    return pb.RelayResult(delivered=False, error=str(refusal))


def answer_from_pb(msg: pb.RelayResult) -> str | None:
    """None if the rest of the path delivered the hop, else what the next node said (its own words, for the log)."""
    return None if msg.delivered else str(msg.error)
