"""Sifting ahead (pipeline rule 2a): the next block fills while Bob decodes the open one.

The driver here is what a node does, in one process: Alice sends frames
whenever :attr:`AliceLink.can_sift_ahead`, Bob's LDPC decodes are deferred
and run only after a few more sifting exchanges, so the next block's frames,
reports and replies really interleave with the open block's messages.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np
import pytest

from qcinode.core import messages as m
from qcinode.core.aborts import AbortReason, abort_reason
from qcinode.core.authentication import AuthKeyReserve
from qcinode.core.ldpc_reconciliation import decode_frame
from qcinode.core.pair import make_pair
from qcinode.core.physics import PhotonFrame
from qcinode.core.pipeline import AliceLink, BlockAborted, BlockAccepted, BobLink, LinkState
from qcinode.core.reconciliation import ldpc_available
from qcinode.errors import LocalProtocolError

from .test_pipeline import BOOTSTRAP, config, frame_slots_for

pytestmark = pytest.mark.skipif(not ldpc_available(), reason="needs the ldpc extra")


def ldpc_config(block_bits: int = 20_000):  # type: ignore[no-untyped-def]
    return dataclasses.replace(config(block_bits=block_bits), error_correction="ldpc", ldpc_profile="fast")


def deferred_pair(cfg, seed: int = 7) -> tuple[AliceLink, BobLink]:  # type: ignore[no-untyped-def]
    alice, plain = make_pair(cfg, BOOTSTRAP, seed=seed)
    bob = BobLink(cfg, AuthKeyReserve(BOOTSTRAP), plain.key_rng, plain.noise_rng, defer_decoding=True)
    return alice, bob


def run_ahead(alice: AliceLink, bob: BobLink, frame_slots: int, blocks: int, decode_lag: int = 3, decode=decode_frame, until=None):  # type: ignore[no-untyped-def]
    """Event loop of a node pair: frames ahead, decodes ``decode_lag`` deliveries late.

    Runs until Alice accepted ``blocks`` blocks, or ``until(alice_events)``
    holds. Returns Alice's and Bob's events, and for each frame Alice sent,
    the state of her open block at that moment.
    """
    to_bob: deque[tuple[str, object]] = deque()
    to_alice: deque[m.Message] = deque()
    alice_events: list = []
    bob_events: list = []
    states_at_frame: list[LinkState] = []
    decode_due: tuple[int, list] | None = None
    steps = 0
    while sum(isinstance(e, BlockAccepted) for e in alice_events) < blocks and not (until is not None and until(alice_events)):
        steps += 1
        assert steps < 10_000, "the pair stalled"
        if alice.can_sift_ahead:
            states_at_frame.append(alice.state)
            frame_id, frame = alice.emit_frame(frame_slots, ahead=True)
            to_bob.append(("frame", (frame_id, PhotonFrame.from_bytes(frame.to_bytes()))))
        progressed = False
        if to_bob:
            kind, item = to_bob.popleft()
            if kind == "frame":
                frame_id, frame = item  # type: ignore[misc]
                to_alice.extend(bob.receive_frame(frame_id, frame))
            else:
                to_alice.extend(bob.receive(item))  # type: ignore[arg-type]
            progressed = True
        jobs = bob.take_decode_jobs()
        if jobs:
            assert decode_due is None
            decode_due = (steps + decode_lag, jobs)
        if decode_due is not None and (steps >= decode_due[0] or not (to_bob or to_alice)):
            to_alice.extend(bob.decoded([decode(*job) for job in decode_due[1]]))
            decode_due = None
            progressed = True
        if to_alice:
            for out in alice.receive(to_alice.popleft()):
                to_bob.append(("message", out))
            progressed = True
        alice_events += alice.take_events()
        bob_events += bob.take_events()
        assert progressed or alice.can_sift_ahead, "nothing left to deliver"
    return alice_events, bob_events, states_at_frame


def test_next_block_is_sifted_while_the_open_one_decodes() -> None:
    cfg = ldpc_config()
    alice, bob = deferred_pair(cfg, seed=11)  # a seed whose three 20 kbit blocks all pass the finite-size bound
    a_events, b_events, states = run_ahead(alice, bob, frame_slots_for(cfg, frames_per_block=4), blocks=3)
    a = [e for e in a_events if isinstance(e, BlockAccepted)]
    b = [e for e in b_events if isinstance(e, BlockAccepted)]
    assert len(a) == 3 and len(b) >= 2
    for ours, theirs in zip(a, b):
        # Identical keys: both transcripts (the open block's and the one being
        # filled) held the same messages at both ends, or the MACs would have failed.
        assert ours.block_seq == theirs.block_seq and ours.key == theirs.key and ours.key
    assert [e.block_seq for e in a] == [0, 1, 2]
    # Frames went out while a block was in post-processing, i.e. sifting overlapped decoding.
    assert any(state is not LinkState.QUANTUM for state in states)


def test_a_block_that_fills_early_waits_and_no_frame_runs_past_it() -> None:
    """With a slow decoder the next block fills and waits: Alice stops, Bob reveals its test bits later."""
    cfg = ldpc_config()
    alice, bob = deferred_pair(cfg, seed=13)
    a_events, _, _ = run_ahead(alice, bob, frame_slots_for(cfg, frames_per_block=1), blocks=2, decode_lag=40)
    assert [e.block_seq for e in a_events if isinstance(e, BlockAccepted)] == [0, 1]


def test_decoded_without_a_decode_outstanding_is_refused() -> None:
    alice, bob = deferred_pair(ldpc_config())
    assert bob.take_decode_jobs() == []
    with pytest.raises(LocalProtocolError):
        bob.decoded([])


def test_lock_step_driver_is_unchanged_by_the_rule() -> None:
    """Without ``ahead`` Alice still waits for the open block: frames only in the quantum state."""
    cfg = ldpc_config()
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=1)  # a seed whose one frame fills the block
    slots = frame_slots_for(cfg, frames_per_block=1)
    frame_id, frame = alice.emit_frame(slots)
    pending = [("B>A", msg) for msg in bob.receive_frame(frame_id, frame)]
    # Deliver only the report and its reply: the block closes, TestBits waits undelivered.
    direction, report = pending.pop(0)
    reply = alice.receive(report)
    tests = bob.receive(reply[0])
    assert alice.state is LinkState.ESTIMATING and [type(t) for t in tests] == [m.TestBits]
    assert not alice.is_ready_for_frame and alice.can_sift_ahead
    with pytest.raises(LocalProtocolError):
        alice.emit_frame(slots)
    alice.emit_frame(slots, ahead=True)
    assert not alice.can_sift_ahead  # one frame in flight at a time
    assert np.all(np.asarray(alice.block.bases) <= 1)  # type: ignore[union-attr]


def test_a_block_whose_every_frame_fails_to_decode_ends_at_both_ends() -> None:
    """Every LDPC frame discarded: Bob sends no verification tag (nothing raises), Alice ends the block with its reason."""
    cfg = ldpc_config()
    alice, bob = deferred_pair(cfg)
    aborted = lambda events: any(isinstance(e, BlockAborted) for e in events)  # noqa: E731
    a_events, _, _ = run_ahead(
        alice, bob, frame_slots_for(cfg, frames_per_block=4), blocks=1, decode=lambda *job: None, until=aborted
    )
    (ours,) = [e for e in a_events if isinstance(e, BlockAborted)]
    assert ours.reason == "reconciliation_failed" and abort_reason(ours.reason) is AbortReason.RECONCILIATION_FAILED
    assert not any(isinstance(e, BlockAccepted) for e in a_events)
    assert alice.state is not LinkState.RECONCILING
