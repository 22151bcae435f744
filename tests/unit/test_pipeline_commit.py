"""Deciding before the Commit (pipeline rule 6b): Bob opens the next block once his Verdict is out.

The driver is what a node does, in one process: Alice sends frames whenever
:attr:`AliceLink.can_sift_ahead`, and each end's messages cross one at a
time, in order, so that the next block is closed while the open one is
confirmed and its TestBits can follow Bob's Verdict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest

from qcinode.core import messages as m
from qcinode.core.pair import make_pair
from qcinode.core.physics import PhotonFrame
from qcinode.core.pipeline import AliceLink, BlockAborted, BlockAccepted, BlockEvent, BobLink, LinkState
from qcinode.errors import RemoteProtocolError

from .test_pipeline import BOOTSTRAP, config, frame_slots_for

Drop = Callable[[m.Message], bool]


class Run:
    """Both ends' events, and what Bob answered to each message (his replies to each Confirm)."""

    def __init__(self) -> None:
        self.alice: list[BlockEvent] = []
        self.bob: list[BlockEvent] = []
        self.bob_answers: list[tuple[m.Message, list[m.Message], int | None, LinkState]] = []
        self.error: RemoteProtocolError | None = None

    def accepted(self, events: list[BlockEvent]) -> dict[int, bytes]:
        return {e.block_seq: e.key for e in events if isinstance(e, BlockAccepted)}


def run_ahead(alice: AliceLink, bob: BobLink, frame_slots: int, blocks: int, drop: Drop = lambda msg: False) -> Run:
    """Frames ahead, one message of each direction per step, until Alice ended ``blocks`` blocks
    or an end refused a message (then both abandon the session, as a node does)."""
    run = Run()
    to_bob: deque[tuple[int, PhotonFrame] | m.Message] = deque()
    to_alice: deque[m.Message] = deque()
    for _ in range(20_000):
        if len(run.alice) >= blocks:
            return run
        if alice.can_sift_ahead:
            frame_id, frame = alice.emit_frame(frame_slots, ahead=True)
            to_bob.append((frame_id, PhotonFrame.from_bytes(frame.to_bytes())))
        try:
            if to_bob:
                item = to_bob.popleft()
                if isinstance(item, tuple):
                    out = bob.receive_frame(*item)
                else:
                    out = bob.receive(item)
                    run.bob_answers.append((item, out, bob.pending_block_seq, bob.state))
                to_alice.extend(msg for msg in out if not drop(msg))
            if to_alice:
                to_bob.extend(msg for msg in alice.receive(to_alice.popleft()) if not drop(msg))
        except RemoteProtocolError as exc:
            run.error = exc
            run.alice += alice.take_events() + alice.abandon(str(exc))
            run.bob += bob.take_events() + bob.abandon(str(exc))
            return run
        run.alice += alice.take_events()
        run.bob += bob.take_events()
    raise AssertionError("the pair stalled")


def test_the_next_block_opens_behind_bobs_verdict_and_both_ends_keep_the_same_keys() -> None:
    cfg = config(block_bits=20_000)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=3)
    run = run_ahead(alice, bob, frame_slots_for(cfg, frames_per_block=2), blocks=4)
    a, b = run.accepted(run.alice), run.accepted(run.bob)
    assert len(a) == 4 and all(a.values())
    assert all(b[seq] == key for seq, key in a.items() if seq in b) and len(b) >= 3
    assert alice.auth.cursor == bob.auth.cursor or len(b) < len(a)  # Bob's last Commit may still be in flight
    # Bob answered a Confirm with his Verdict and, right behind it, the next block's TestBits; the block
    # he confirmed then waited aside for its Commit while the next one was open.
    behind = [
        (msg, out, pending, state)
        for msg, out, pending, state in run.bob_answers
        if isinstance(msg, m.Confirm) and [type(o) for o in out] == [m.Verdict, m.TestBits]
    ]
    assert behind, "no TestBits followed a Verdict: the rule was never exercised"
    for confirm, (verdict, tests), pending, state in behind:
        assert isinstance(verdict, m.Verdict) and isinstance(tests, m.TestBits)
        assert verdict.accepted and tests.block_seq == confirm.block_seq + 1
        assert pending == confirm.block_seq and state is LinkState.ESTIMATING
    # Each of those Commits reached the block that waited for it.
    commits = [pending for msg, _, pending, _ in run.bob_answers if isinstance(msg, m.Commit)]
    assert commits and all(pending is None for pending in commits)


def test_a_confirm_while_a_block_awaits_its_commit_is_refused_and_the_waiting_block_settles() -> None:
    # A lying path drops Alice's first Commit: Alice goes on with the next block, and its Confirm reaches
    # Bob while block 0 still awaits its Commit. Taking block 1's MAC keys then would assume a block
    # Bob does not hold, so he refuses it; the open block ends at both ends, block 0 stays pending
    # until the ends compare what they hold (here: Alice holds it), and its key is the same at both.
    cfg = config(block_bits=20_000)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=3)
    run = run_ahead(
        alice, bob, frame_slots_for(cfg, frames_per_block=2), blocks=3, drop=lambda msg: isinstance(msg, m.Commit) and msg.block_seq == 0
    )
    assert run.error is not None and "awaits its Commit" in str(run.error)
    assert 0 in run.accepted(run.alice) and 0 not in run.accepted(run.bob)
    # The open block (and one sifted ahead behind it) ends without key at both ends.
    assert run.accepted(run.alice).keys() == {0} and not run.accepted(run.bob)
    for events in (run.alice, run.bob):
        assert 1 in [e.block_seq for e in events if isinstance(e, BlockAborted)]
    assert bob.pending_block_seq == 0
    (settled,) = bob.settle_pending(accepted=True)
    assert isinstance(settled, BlockAccepted) and settled.key == run.accepted(run.alice)[0]
    assert bob.pending_block_seq is None


@pytest.mark.parametrize(("seq", "refusal"), [(1, "block 0 awaits one"), (0, "commit failed authentication")])
def test_a_commit_for_another_block_or_with_a_forged_tag_leaves_the_waiting_block_pending(seq: int, refusal: str) -> None:
    cfg = config(block_bits=20_000)
    alice, bob = make_pair(cfg, BOOTSTRAP, seed=3)
    run = run_ahead(alice, bob, frame_slots_for(cfg, frames_per_block=2), blocks=1, drop=lambda msg: isinstance(msg, m.Commit))
    assert run.error is None and bob.pending_block_seq == 0
    with pytest.raises(RemoteProtocolError, match=refusal):
        bob.receive(m.Commit(seq, True, bytes(16)))
    assert bob.pending_block_seq == 0 and not run.accepted(bob.take_events())
    (settled,) = bob.settle_pending(accepted=True)
    assert isinstance(settled, BlockAccepted) and settled.key == run.accepted(run.alice)[0]
