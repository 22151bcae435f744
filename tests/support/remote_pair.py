"""Runs both ends of a link through a protocol runner, as the node's link workers do (no gRPC).

The twin of :func:`qcinode.core.pair.pump` for :class:`~qcinode.node.protocol_worker.RemoteLink`:
frames go through their byte encoding, classical messages through their wire form, and each end's
MAC-key reserve is the node's (steps take a copy and bring it back).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcinode.core.authentication import AuthKeyReserve
from qcinode.core.pipeline import BlockEvent, LinkProtocolConfig
from qcinode.node.protocol_worker import ProtocolRunner, RemoteLink, SessionSpec


@dataclasses.dataclass
class RemotePair:
    alice: RemoteLink
    bob: RemoteLink
    alice_reserve: AuthKeyReserve
    bob_reserve: AuthKeyReserve
    alice_events: list[BlockEvent] = dataclasses.field(default_factory=list)
    bob_events: list[BlockEvent] = dataclasses.field(default_factory=list)


async def open_pair(runner: ProtocolRunner, config: LinkProtocolConfig, bootstrap: bytes, seed: int) -> RemotePair:
    """Two ends seeded as :func:`qcinode.core.pair.make_pair` seeds them, both in ``runner``."""
    seeds = np.random.SeedSequence(seed).spawn(4)
    a_res, b_res = AuthKeyReserve(bootstrap), AuthKeyReserve(bootstrap)
    alice = await RemoteLink.open(runner, SessionSpec(True, config, np.random.default_rng(seeds[0]), np.random.default_rng(seeds[2]), 0), a_res)
    bob = await RemoteLink.open(runner, SessionSpec(False, config, np.random.default_rng(seeds[1]), np.random.default_rng(seeds[3]), 0), b_res)
    return RemotePair(alice, bob, a_res, b_res)


async def pump_remote(pair: RemotePair, *, frame_slots: int, blocks: int = 1, max_frames: int = 10_000) -> RemotePair:
    """Runs the pair until ``blocks`` blocks ended at Alice (as ``pump`` does, without reconnections)."""
    frames = 0
    while len(pair.alice_events) < blocks and frames < max_frames:
        assert pair.alice.mirror.is_ready_for_frame, "protocol stalled"
        frame_id, _, payload = await pair.alice.emit_frame(frame_slots, None, False, False)
        frames += 1
        pending = [("B>A", out) for out in await pair.bob.receive_frame(frame_id, payload, None)]
        while pending:
            direction, envelope = pending.pop(0)
            if direction == "B>A":
                pending += [("A>B", out) for out in await pair.alice.receive(envelope)]
            else:
                pending += [("B>A", out) for out in await pair.bob.receive(envelope)]
        pair.alice_events += pair.alice.take_events()
        pair.bob_events += pair.bob.take_events()
    return pair
