"""Runs both ends of a link in one process, without sockets.

``pump`` is the in-process twin of the node's link worker: it moves frames
from Alice to Bob through their byte encoding (as the gRPC stream does) and
delivers classical messages in order until each side is quiet. Tests and
benches use it to run the full protocol with seeded randomness; an optional
``tamper`` hook lets tests change a message in transit. When a session
breaks, :func:`reconnect` resynchronises the two ends exactly as the node's
link workers do, with the authenticated Hello of :mod:`qcinode.core.resync`
(the ``tamper`` hook sees those Hellos too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np

from ..errors import LocalProtocolError, ProtocolError
from . import messages as m
from .authentication import AuthKeyReserve
from .channel import Idle, SlotClock, next_frame
from .physics import EMULATED_CHANNEL, PhotonFrame, QuantumChannel
from .pipeline import (
    AliceLink,
    BlockAccepted,
    BlockEvent,
    BobLink,
    LinkProtocolConfig,
    LinkState,
)
from .randomness import KeyRandomness
from .resync import CursorBehind, Hello, HelloExchange, LinkSnapshot, Reconciliation
from .roles import Role

Tamper = Callable[[str, m.Message | Hello], m.Message | Hello | None]
_End = TypeVar("_End", AliceLink, BobLink)

#: Hello exchanges one reconnection tries before giving up (one may only move a cursor that was behind).
RECONNECT_ATTEMPTS = 2


@dataclasses.dataclass(slots=True)
class PairResult:
    alice_events: list[BlockEvent]
    bob_events: list[BlockEvent]
    frames: int
    classical_messages: int
    resyncs: list[Resynced] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Resynced:
    """What one reconnection agreed: the fresh sessions and each end's reconciliation."""

    alice: AliceLink
    bob: BobLink
    alice_plan: Reconciliation
    bob_plan: Reconciliation
    bob_events: list[BlockEvent]


def snapshot(end: AliceLink | BobLink, held_block_seqs: Iterable[int]) -> LinkSnapshot:
    """What ``end`` would say in its Hello, given the blocks its pool holds."""
    is_alice = isinstance(end, AliceLink)
    return LinkSnapshot(
        link_id=end.config.link_id,
        role=Role.ALICE if is_alice else Role.BOB,
        next_block_seq=end.next_block_seq,
        next_frame_id=end.next_frame_id if isinstance(end, AliceLink) else 0,
        auth_cursor=end.auth.cursor,
        promoted_before=end.auth.promoted_before,
        held_block_seqs=tuple(held_block_seqs),
        staged_block_seqs=end.auth.staged_block_seqs,
        pending_block_seq=None if isinstance(end, AliceLink) else end.pending_block_seq,
    )


def reconnect(
    alice: AliceLink,
    bob: BobLink,
    *,
    alice_holds: Iterable[int],
    bob_holds: Iterable[int],
    tamper: Tamper | None = None,
) -> Resynced:
    """Resynchronise two ends whose session broke, then start fresh sessions.

    Runs the Hello exchange (again, if Alice's cursor turned out behind);
    settles the block Bob holds pending; returns fresh sessions over the same
    reserves, each end's reconciliation (drop the blocks not in
    ``keep_block_seqs`` from its pool) and Bob's settled block, if any.

    Raises:
        HelloRefused: A Hello was refused (tampered in transit): nothing
            changed at the refusing end; call again to retry.
        InsufficientKeyMaterial: Alice has no two MAC keys left.
    """
    for _attempt in range(RECONNECT_ATTEMPTS):
        ends = HelloExchange(snapshot(alice, alice_holds), alice.auth), HelloExchange(snapshot(bob, bob_holds), bob.auth)
        a_side, b_side = ends
        opening = a_side.start()
        delivered = tamper("A>B", opening) if tamper else opening
        if not isinstance(delivered, Hello):
            continue  # lost on the way: Alice's two keys are spent, she dials again
        answers = b_side.receive(delivered)
        for answer in answers:
            back = tamper("B>A", answer) if tamper else answer
            if isinstance(back, Hello):
                a_side.receive(back)
        if isinstance(a_side.result, CursorBehind) or not isinstance(a_side.result, Reconciliation):
            continue
        if not isinstance(b_side.result, Reconciliation):
            continue
        bob_events: list[BlockEvent] = []
        if b_side.result.accept_pending is not None:
            bob_events = bob.settle_pending(b_side.result.accept_pending)
        fresh_alice, fresh_bob = _reconnect(alice), _reconnect(bob)
        fresh_alice.next_block_seq = fresh_bob.next_block_seq = a_side.result.next_block_seq
        fresh_alice.next_frame_id = a_side.result.next_frame_id
        return Resynced(fresh_alice, fresh_bob, a_side.result, b_side.result, bob_events)
    raise ProtocolError(f"no Hello exchange succeeded in {RECONNECT_ATTEMPTS} attempts")


def make_pair(
    config: LinkProtocolConfig,
    bootstrap_key: bytes,
    seed: int,
    key_rngs: tuple[KeyRandomness, KeyRandomness] | None = None,
    *,
    quantum: QuantumChannel = EMULATED_CHANNEL,
) -> tuple[AliceLink, BobLink]:
    """Two seeded ends sharing a bootstrap MAC key.

    Args:
        key_rngs: Alice's and Bob's key randomness (default: seeded from ``seed``).
        quantum: The channel between them (default: the emulated physics).
    """
    seeds = np.random.SeedSequence(seed).spawn(4)
    a_key, b_key = key_rngs or (np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1]))
    alice = AliceLink(config, AuthKeyReserve(bootstrap_key), a_key, np.random.default_rng(seeds[2]), quantum=quantum)
    bob = BobLink(config, AuthKeyReserve(bootstrap_key), b_key, np.random.default_rng(seeds[3]), quantum=quantum)
    return alice, bob


def pump(
    alice: AliceLink,
    bob: BobLink,
    *,
    frame_slots: int,
    blocks: int = 1,
    max_frames: int = 10_000,
    tamper: Tamper | None = None,
    work_ahead: bool = True,
) -> PairResult:
    """Runs the link until ``blocks`` blocks ended (accepted or aborted) at Alice.

    Args:
        frame_slots: pulse slots per frame.
        blocks: how many blocks to finish.
        max_frames: safety bound on frames sent.
        tamper: called as ``tamper(direction, message)`` for each classical
            message; returns the message to deliver (changed or not) or None
            to drop it, which ends the pump (the session would break).
        work_ahead: each end works ahead (:meth:`~qcinode.core.pipeline.AliceLink.work_ahead`)
            after every message it answers, as a node's protocol process does
            while it waits for its peer; False leaves that work to the message
            that needs it. Results are the same either way.
    """
    alice_events: list[BlockEvent] = []
    bob_events: list[BlockEvent] = []
    resyncs: list[Resynced] = []
    holds: dict[Role, set[int]] = {Role.ALICE: set(), Role.BOB: set()}
    frames = 0
    messages = 0
    while len(alice_events) < blocks and frames < max_frames:
        if alice.state is LinkState.FAILED:
            # What a reconnection does: the authenticated Hello, then fresh
            # sessions over the same reserves.
            done = reconnect(alice, bob, alice_holds=holds[Role.ALICE], bob_holds=holds[Role.BOB], tamper=tamper)
            alice, bob = done.alice, done.bob
            bob_events.extend(done.bob_events)
            _hold(holds[Role.BOB], done.bob_events)
            holds[Role.ALICE] &= done.alice_plan.keep_block_seqs
            holds[Role.BOB] &= done.bob_plan.keep_block_seqs
            resyncs.append(done)
        if not alice.is_ready_for_frame:
            break  # protocol stalled (a dropped message)
        frame_id, frame = alice.emit_frame(frame_slots)
        frames += 1
        try:
            messages += _exchange(alice, bob, frame_id, frame, tamper, work_ahead=work_ahead)
        except ProtocolError as exc:
            reason = f"protocol_error: {exc}"
            a_new, b_new = alice.take_events() + alice.abandon(reason), bob.take_events() + bob.abandon(reason)
        else:
            a_new, b_new = alice.take_events(), bob.take_events()
        alice_events.extend(a_new)
        bob_events.extend(b_new)
        _hold(holds[Role.ALICE], a_new)
        _hold(holds[Role.BOB], b_new)
    return PairResult(alice_events, bob_events, frames, messages, resyncs)


def _hold(held: set[int], events: list[BlockEvent]) -> None:
    held.update(e.block_seq for e in events if isinstance(e, BlockAccepted) and e.key)


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
    alice: AliceLink,
    bob: BobLink,
    frame_id: int,
    frame: PhotonFrame,
    tamper: Tamper | None,
    at_utc: float | None = None,
    *,
    work_ahead: bool = True,
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
        if isinstance(delivered, Hello):
            raise ProtocolError("a Hello in the middle of a session")
        end: AliceLink | BobLink = alice if direction == "B>A" else bob
        pending.extend(("A>B" if end is alice else "B>A", out) for out in end.receive(delivered))
        while work_ahead and end.work_ahead():
            pass
    return messages
