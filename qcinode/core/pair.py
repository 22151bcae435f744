"""Runs both ends of a link in one process, without sockets.

``pump`` is the in-process twin of the node's link worker: it moves frames
from Alice to Bob through their byte encoding (as the gRPC stream does) and
delivers classical messages in order until each side is quiet. Tests and
benches use it to run the full protocol with seeded randomness; an optional
``tamper`` hook lets tests change a message in transit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from . import messages as m
from .authentication import AuthKeyReserve
from .physics import PhotonFrame
from ..errors import LocalProtocolError, ProtocolError
from .channel import Idle, SlotClock, next_frame
from .pipeline import AliceLink, BlockEvent, BobLink, LinkProtocolConfig, LinkState

Tamper = Callable[[str, m.Message], m.Message | None]
_End = TypeVar("_End", AliceLink, BobLink)


@dataclasses.dataclass(slots=True)
class PairResult:
    alice_events: list[BlockEvent]
    bob_events: list[BlockEvent]
    frames: int
    classical_messages: int


def make_pair(
    config: LinkProtocolConfig,
    bootstrap_key: bytes,
    seed: int,
    key_rngs: tuple[Any, Any] | None = None,
) -> tuple[AliceLink, BobLink]:
    """Two seeded ends sharing a bootstrap MAC key."""
    seeds = np.random.SeedSequence(seed).spawn(4)
    a_key, b_key = key_rngs or (np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1]))
    alice = AliceLink(config, AuthKeyReserve(bootstrap_key), a_key, np.random.default_rng(seeds[2]))
    bob = BobLink(config, AuthKeyReserve(bootstrap_key), b_key, np.random.default_rng(seeds[3]))
    return alice, bob


def pump(
    alice: AliceLink,
    bob: BobLink,
    *,
    frame_slots: int,
    blocks: int = 1,
    max_frames: int = 10_000,
    tamper: Tamper | None = None,
) -> PairResult:
    """Runs the link until ``blocks`` blocks ended (accepted or aborted) at Alice.

    Args:
        frame_slots: pulse slots per frame.
        blocks: how many blocks to finish.
        max_frames: safety bound on frames sent.
        tamper: called as ``tamper(direction, message)`` for each classical
            message; returns the message to deliver (changed or not) or None
            to drop it, which ends the pump (the session would break).
    """
    alice_events: list[BlockEvent] = []
    bob_events: list[BlockEvent] = []
    frames = 0
    messages = 0
    while len(alice_events) < blocks and frames < max_frames:
        if alice.state is LinkState.FAILED:
            # What a reconnection does: fresh sessions over the same reserves.
            alice, bob = _reconnect(alice), _reconnect(bob)
        if not alice.is_ready_for_frame:
            break  # protocol stalled (a dropped message)
        frame_id, frame = alice.emit_frame(frame_slots)
        frames += 1
        try:
            messages += _exchange(alice, bob, frame_id, frame, tamper)
        except ProtocolError as exc:
            reason = f"protocol_error: {exc}"
            alice_events.extend(alice.take_events() + alice.abandon(reason))
            bob_events.extend(bob.take_events() + bob.abandon(reason))
            continue
        alice_events.extend(alice.take_events())
        bob_events.extend(bob.take_events())
    return PairResult(alice_events, bob_events, frames, messages)


def pump_timeline(
    alice: AliceLink,
    bob: BobLink,
    *,
    rate_hz: float,
    start_utc: float,
    end_utc: float,
    frame_slots: int,
    max_frames: int = 1_000_000,
) -> PairResult:
    """Runs the link over emulated time ``[start_utc, end_utc)`` through its channel model.

    The in-process twin of the node's paced link worker: frames follow the
    channel's windows (:func:`qcinode.core.channel.next_frame`), are sampled
    at their midpoints, and the frame that ends a window (a pass sets)
    closes the open block. Needs ``alice.config.channel``.

    Args:
        rate_hz: The source's pulse rate.
        start_utc: Where the link starts, emulated UTC (POSIX seconds).
        end_utc: Where it stops; a block still open then is left unfinished.
        frame_slots: Most pulse slots per frame.
        max_frames: Safety bound on frames sent.
    """
    channel = alice.config.channel
    if channel is None:
        raise LocalProtocolError("pump_timeline needs a link whose config has a channel model")
    alice_events: list[BlockEvent] = []
    bob_events: list[BlockEvent] = []
    frames = messages = 0
    position = SlotClock(start_utc, rate_hz)
    while position.now_utc < end_utc and frames < max_frames:
        if not alice.is_ready_for_frame:
            break  # protocol stalled
        plan = next_frame(channel, position.now_utc, rate_hz, frame_slots)
        if isinstance(plan, Idle):
            position.jump_to(plan.until_utc)
            continue
        frame_id, frame = alice.emit_frame(plan.n_slots, at_utc=plan.at_utc, close_block=plan.close_block)
        frames += 1
        position.advance(plan.n_slots)
        messages += _exchange(alice, bob, frame_id, frame, None, at_utc=plan.at_utc)
        alice_events.extend(alice.take_events())
        bob_events.extend(bob.take_events())
    return PairResult(alice_events, bob_events, frames, messages)


def _reconnect(end: _End) -> _End:
    fresh = type(end)(end.config, end.auth, end.key_rng, end.noise_rng, next_block_seq=end.next_block_seq)
    if isinstance(end, AliceLink) and isinstance(fresh, AliceLink):
        fresh.next_frame_id = end.next_frame_id
    return fresh


def _exchange(
    alice: AliceLink, bob: BobLink, frame_id: int, frame: PhotonFrame, tamper: Tamper | None, at_utc: float | None = None
) -> int:
    """Delivers one frame and every classical message that follows it; returns the message count.

    A message the tamper hook drops ends the exchange, as a lost message
    would stall the real link until its deadline.
    """
    messages = 0
    wire = PhotonFrame.from_bytes(frame.to_bytes())
    pending: list[tuple[str, m.Message]] = [("B>A", msg) for msg in bob.receive_frame(frame_id, wire, at_utc)]
    while pending:
        direction, msg = pending.pop(0)
        messages += 1
        delivered = tamper(direction, msg) if tamper else msg
        if delivered is None:
            break
        if direction == "B>A":
            pending.extend(("A>B", out) for out in alice.receive(delivered))
        else:
            pending.extend(("B>A", out) for out in bob.receive(delivered))
    return messages
