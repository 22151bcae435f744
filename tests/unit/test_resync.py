"""The reconnection Hello: reconciliation of both ends' snapshots and its one-time MAC keys."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcinode.core import messages as m
from qcinode.core.authentication import KEY_BYTES, AuthKeyReserve
from qcinode.core.pair import make_pair, pump, reconnect
from qcinode.core.pipeline import BlockAccepted
from qcinode.core.resync import (
    HELLO_KEYS,
    CursorBehind,
    Hello,
    HelloExchange,
    HelloKind,
    HelloRefusal,
    HelloRefused,
    LinkSnapshot,
    Reconciliation,
    hello_bytes,
    reconcile,
)
from qcinode.core.roles import Role
from tests.unit.test_pipeline import config, frame_slots_for

LINK = "a-b"
BOOTSTRAP = os.urandom(KEY_BYTES * 40)


def _snap(role: Role, reserve: AuthKeyReserve, held: tuple[int, ...] = (), pending: int | None = None, **extra: int) -> LinkSnapshot:
    return LinkSnapshot(
        link_id=LINK,
        role=role,
        next_block_seq=extra.get("next_block_seq", 10),
        next_frame_id=extra.get("next_frame_id", 100),
        auth_cursor=reserve.cursor,
        promoted_before=reserve.promoted_before,
        held_block_seqs=held,
        staged_block_seqs=reserve.staged_block_seqs,
        pending_block_seq=pending,
    )


def _exchange(
    alice: LinkSnapshot, a_reserve: AuthKeyReserve, bob: LinkSnapshot, b_reserve: AuthKeyReserve
) -> tuple[Reconciliation, Reconciliation]:
    a_side, b_side = HelloExchange(alice, a_reserve), HelloExchange(bob, b_reserve)
    (answer,) = b_side.receive(a_side.start())
    assert answer.kind is HelloKind.ANSWER
    assert a_side.receive(answer) == []
    assert isinstance(a_side.result, Reconciliation) and isinstance(b_side.result, Reconciliation)
    return a_side.result, b_side.result


def _state(reserve: AuthKeyReserve) -> dict[str, object]:
    return reserve.to_state()


# -- blocks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alice_held", "bob_held", "kept"),
    [
        ((0, 1, 2), (1, 2, 3), {1, 2}),  # 0 only at Alice, 3 only at Bob, 1 and 2 at both
        ((4, 5), (4, 5), {4, 5}),  # held by both
        ((), (), set()),  # held by neither
        ((7,), (), set()),  # one end holds everything the other does not
    ],
    ids=["one-end-only", "both", "neither", "only-alice"],
)
def test_both_ends_keep_exactly_the_blocks_both_hold(alice_held: tuple[int, ...], bob_held: tuple[int, ...], kept: set[int]) -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    a_plan, b_plan = _exchange(_snap(Role.ALICE, a_res, alice_held), a_res, _snap(Role.BOB, b_res, bob_held), b_res)
    assert a_plan.keep_block_seqs == b_plan.keep_block_seqs == kept
    assert a_plan.accept_pending is None and b_plan.accept_pending is None
    assert a_res.cursor == b_res.cursor == HELLO_KEYS == a_plan.auth_cursor == b_plan.auth_cursor


@pytest.mark.parametrize("alice_holds_it", [True, False], ids=["commit-lost", "never-accepted"])
def test_a_block_pending_at_bob_is_accepted_iff_alice_holds_it(alice_holds_it: bool) -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    alice = _snap(Role.ALICE, a_res, (1, 2, 3) if alice_holds_it else (1, 2))
    bob = _snap(Role.BOB, b_res, (1, 2), pending=3)
    a_plan, b_plan = _exchange(alice, a_res, bob, b_res)
    assert b_plan.accept_pending is alice_holds_it
    expected = {1, 2, 3} if alice_holds_it else {1, 2}
    assert a_plan.keep_block_seqs == b_plan.keep_block_seqs == expected


def test_sequence_numbers_move_to_the_larger() -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    alice = _snap(Role.ALICE, a_res, next_block_seq=7, next_frame_id=900)
    bob = _snap(Role.BOB, b_res, next_block_seq=9, next_frame_id=800)
    a_plan, b_plan = _exchange(alice, a_res, bob, b_res)
    assert (a_plan.next_block_seq, a_plan.next_frame_id) == (b_plan.next_block_seq, b_plan.next_frame_id) == (9, 900)


# -- MAC keys -----------------------------------------------------------------------


def test_cursor_skew_after_a_lost_confirm_resolves_to_alices_key() -> None:
    """Alice took a block's three keys and her Confirm was lost: Bob skips forward to her Hello's key."""
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    a_res.take(3)
    _exchange(_snap(Role.ALICE, a_res), a_res, _snap(Role.BOB, b_res), b_res)
    assert a_res.cursor == b_res.cursor == 3 + HELLO_KEYS
    assert a_res.peek(a_res.cursor, 1) == b_res.peek(b_res.cursor, 1)  # still in step


def test_skew_into_a_refill_alice_promoted_and_bob_only_staged() -> None:
    """The Hello key lies in a refill Alice promoted when she signed the next block; Bob had only staged it."""
    bootstrap = BOOTSTRAP[: KEY_BYTES * 4]
    refill = os.urandom(KEY_BYTES * 8)
    a_res, b_res = AuthKeyReserve(bootstrap), AuthKeyReserve(bootstrap)
    for reserve in (a_res, b_res):
        reserve.take(3)  # block 0's keys
        reserve.stage(0, refill)  # block 0 accepted at both ends, with a refill
    a_res.promote_before(1)  # Alice signs block 1: promotes block 0's refill...
    a_res.take(3)  # ...and takes block 1's keys, reaching into the refill; her Confirm is lost
    assert a_res.cursor == 6 and b_res.cursor == 3 and b_res.available_keys == 1
    a_plan, b_plan = _exchange(_snap(Role.ALICE, a_res, (0,)), a_res, _snap(Role.BOB, b_res, (0,)), b_res)
    assert a_res.cursor == b_res.cursor == 6 + HELLO_KEYS
    assert a_res.peek(a_res.cursor, a_res.available_keys) == b_res.peek(b_res.cursor, b_res.available_keys)
    assert a_res.staged_block_seqs == b_res.staged_block_seqs == ()
    assert a_plan.promote_before == b_plan.promote_before == 1


def test_refills_staged_at_both_ends_are_kept_and_one_sided_ones_dropped() -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    both, alice_only = os.urandom(64), os.urandom(64)
    a_res.stage(5, both)
    b_res.stage(5, both)
    a_res.stage(6, alice_only)  # Bob never accepted block 6
    a_plan, b_plan = _exchange(_snap(Role.ALICE, a_res, (5, 6)), a_res, _snap(Role.BOB, b_res, (5,)), b_res)
    assert a_res.staged_block_seqs == b_res.staged_block_seqs == (5,)
    assert a_plan.keep_staged_seqs == b_plan.keep_staged_seqs == {5}


def test_the_hello_keys_are_never_used_again() -> None:
    """Key c tags Alice's Hello, key c+1 Bob's answer; every later use starts beyond both, also after failures."""
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    used: list[bytes] = []
    for round_ in range(4):
        a_side, b_side = HelloExchange(_snap(Role.ALICE, a_res), a_res), HelloExchange(_snap(Role.BOB, b_res), b_res)
        keys = a_res.peek(a_res.cursor, HELLO_KEYS)
        opening = a_side.start()
        used += keys
        if round_ == 1:
            continue  # the Hello was lost: Alice's keys are spent all the same
        (answer,) = b_side.receive(opening)
        if round_ == 2:
            continue  # the answer was lost
        a_side.receive(answer)
        block_keys = a_res.take(3)
        assert b_res.skip_to(b_res.cursor) is None
        assert b_res.take(3) == block_keys
        used += block_keys
    assert len(set(used)) == len(used), "a one-time key was used twice"


def test_a_tampered_hello_is_refused_and_changes_nothing() -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    b_res.stage(3, os.urandom(64))
    bob = _snap(Role.BOB, b_res, (1, 2, 3), pending=4)
    a_side = HelloExchange(_snap(Role.ALICE, a_res, (1, 2, 3, 4)), a_res)
    opening = a_side.start()
    snap = opening.snapshot
    tampered = [
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, held_block_seqs=())),  # "I hold nothing": drop them all
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, auth_cursor=snap.auth_cursor + 5)),
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, next_block_seq=10**6)),
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, staged_block_seqs=(9,))),
        dataclasses.replace(opening, auth_tag=bytes(16)),
        dataclasses.replace(opening, auth_tag=b""),
        dataclasses.replace(opening, kind=HelloKind.ANSWER),
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, link_id="x-y")),
        dataclasses.replace(opening, snapshot=dataclasses.replace(snap, role=Role.BOB)),
    ]
    for hello in tampered:
        before = _state(b_res)
        b_side = HelloExchange(bob, b_res)
        with pytest.raises(HelloRefused) as refused:
            b_side.receive(hello)
        assert refused.value.reason in (HelloRefusal.AUTHENTICATION_FAILED, HelloRefusal.MALFORMED, HelloRefusal.KEYS_UNAVAILABLE)
        assert _state(b_res) == before and b_side.result is None
    # The genuine one still goes through afterwards.
    (answer,) = HelloExchange(bob, b_res).receive(opening)
    a_side.receive(answer)
    assert isinstance(a_side.result, Reconciliation) and a_side.result.keep_block_seqs == {1, 2, 3, 4}


def test_a_tampered_answer_is_refused_by_alice() -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    a_side = HelloExchange(_snap(Role.ALICE, a_res, (1, 2)), a_res)
    (answer,) = HelloExchange(_snap(Role.BOB, b_res, (1, 2)), b_res).receive(a_side.start())
    before = _state(a_res)
    forged = dataclasses.replace(answer, snapshot=dataclasses.replace(answer.snapshot, held_block_seqs=()))
    with pytest.raises(HelloRefused, match="authentication_failed"):
        a_side.receive(forged)
    assert _state(a_res) == before and a_side.result is None


def test_a_replayed_hello_drops_nothing() -> None:
    """An old, genuine Hello replayed later names a used key: answered 'behind', blocks untouched."""
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    old_side = HelloExchange(_snap(Role.ALICE, a_res, ()), a_res)
    old = old_side.start()
    HelloExchange(_snap(Role.BOB, b_res, ()), b_res).receive(old)
    b_side = HelloExchange(_snap(Role.BOB, b_res, (1, 2)), b_res)
    (behind,) = b_side.receive(old)  # the attacker hoped Bob would drop blocks 1 and 2
    assert behind.kind is HelloKind.BEHIND and isinstance(b_side.result, CursorBehind)
    # Nothing but one key moved; there is no reconciliation to apply.
    assert b_res.cursor == HELLO_KEYS + 1


def test_an_initiator_that_fell_behind_skips_forward_and_dials_again() -> None:
    """Alice's state was rolled back (an old backup): Bob says 'behind' under a key she has never used."""
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP)
    rolled_back = a_res.copy()
    _exchange(_snap(Role.ALICE, a_res), a_res, _snap(Role.BOB, b_res), b_res)
    a_res.take(3)
    b_res.take(3)  # a block later, Alice's disk goes back to the start
    a_res = rolled_back
    a_side = HelloExchange(_snap(Role.ALICE, a_res), a_res)
    (behind,) = HelloExchange(_snap(Role.BOB, b_res), b_res).receive(a_side.start())
    a_side.receive(behind)
    assert isinstance(a_side.result, CursorBehind)
    assert a_res.cursor == b_res.cursor == HELLO_KEYS + 3 + 1
    a_plan, _ = _exchange(_snap(Role.ALICE, a_res), a_res, _snap(Role.BOB, b_res), b_res)
    assert a_res.cursor == b_res.cursor == a_plan.auth_cursor


def test_a_hello_beyond_the_reserve_is_refused() -> None:
    a_res, b_res = AuthKeyReserve(BOOTSTRAP), AuthKeyReserve(BOOTSTRAP[: KEY_BYTES * 4])
    a_res.take(10)
    a_side = HelloExchange(_snap(Role.ALICE, a_res), a_res)
    with pytest.raises(HelloRefused, match="keys_unavailable"):
        HelloExchange(_snap(Role.BOB, b_res), b_res).receive(a_side.start())
    assert b_res.cursor == 0


def test_only_alice_opens_and_snapshots_must_match_the_reserve() -> None:
    from qcinode.errors import LocalProtocolError

    b_res = AuthKeyReserve(BOOTSTRAP)
    with pytest.raises(LocalProtocolError):
        HelloExchange(_snap(Role.BOB, b_res), b_res).start()
    snap = _snap(Role.ALICE, b_res)
    b_res.take(1)
    with pytest.raises(LocalProtocolError):
        HelloExchange(snap, b_res)


def test_hello_bytes_bind_every_field() -> None:
    res = AuthKeyReserve(BOOTSTRAP)
    base = Hello(HelloKind.OPEN, _snap(Role.ALICE, res, (1, 2)))
    variants = [
        base,
        dataclasses.replace(base, kind=HelloKind.ANSWER),
        dataclasses.replace(base, snapshot=dataclasses.replace(base.snapshot, held_block_seqs=(1,))),
        dataclasses.replace(base, snapshot=dataclasses.replace(base.snapshot, held_block_seqs=(), staged_block_seqs=(1,))),
        dataclasses.replace(base, snapshot=dataclasses.replace(base.snapshot, pending_block_seq=0)),
        dataclasses.replace(base, snapshot=dataclasses.replace(base.snapshot, promoted_before=1)),
        dataclasses.replace(base, snapshot=dataclasses.replace(base.snapshot, link_id="a-bb")),
    ]
    encodings = [hello_bytes(v) for v in variants]
    assert len(set(encodings)) == len(encodings)
    assert all(x == y or not y.startswith(x) for x, y in itertools.product(encodings, encodings))


_seqs = st.frozensets(st.integers(0, 12), max_size=8)


@given(_seqs, _seqs, _seqs, _seqs, st.one_of(st.none(), st.integers(0, 12)), st.integers(0, 12), st.integers(0, 12))
def test_reconcile_is_symmetric(a_held, b_held, a_staged, b_staged, pending, a_promoted, b_promoted) -> None:  # type: ignore[no-untyped-def]
    def snap(role: Role, held: frozenset[int], staged: frozenset[int], promoted: int, pend: int | None) -> LinkSnapshot:
        return LinkSnapshot(LINK, role, 5, 5, 0, promoted, tuple(held), tuple(staged), pend)

    pending = None if pending in b_held else pending
    alice = snap(Role.ALICE, a_held, a_staged, a_promoted, None)
    bob = snap(Role.BOB, b_held, b_staged, b_promoted, pending)
    a_plan, b_plan = reconcile(alice, bob), reconcile(bob, alice)
    assert a_plan.keep_block_seqs == b_plan.keep_block_seqs
    assert a_plan.keep_block_seqs <= alice.holds & bob.holds
    assert a_plan.promote_before == b_plan.promote_before
    if pending is not None:
        assert b_plan.accept_pending is (pending in a_held)
    # A refill is kept at one end iff at the other (Bob's pending refill counted once it is accepted).
    b_will_stage = set(b_staged) | ({pending} if b_plan.accept_pending else set())
    assert a_plan.keep_staged_seqs == {s for s in set(a_staged) & b_will_stage if s >= a_plan.promote_before}
    assert b_plan.keep_staged_seqs == {s for s in b_will_stage & set(a_staged) if s >= b_plan.promote_before}


# -- the pair: reconnection through the same engine -----------------------------------

def test_pair_reconnection_settles_a_pending_block_through_the_hello() -> None:
    """A Commit that fails Bob's check breaks the session; the reconnection Hello settles his pending block."""
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP * 4, seed=3)
    spoiled: list[int] = []

    def spoil_first_commit(direction: str, msg: m.Message | Hello) -> m.Message | Hello | None:
        if isinstance(msg, m.Commit) and not spoiled:
            spoiled.append(msg.block_seq)
            return dataclasses.replace(msg, auth_tag=bytes(16))
        return msg

    result = pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=2, tamper=spoil_first_commit)
    assert len(result.resyncs) == 1
    resync = result.resyncs[0]
    assert resync.bob_plan.accept_pending is True  # Alice holds it: she accepted before her Commit
    (settled,) = resync.bob_events
    a_keys = {e.block_seq: e.key for e in result.alice_events if isinstance(e, BlockAccepted)}
    b_keys = {e.block_seq: e.key for e in result.bob_events if isinstance(e, BlockAccepted)}
    assert isinstance(settled, BlockAccepted) and settled.block_seq == spoiled[0]
    assert a_keys == b_keys and len(a_keys) == 2
    assert resync.alice.auth.cursor == resync.bob.auth.cursor


def test_pair_reconnection_refuses_a_tampered_hello() -> None:
    cfg = config()
    alice, bob = make_pair(cfg, BOOTSTRAP * 4, seed=4)
    pump(alice, bob, frame_slots=frame_slots_for(cfg), blocks=1)
    alice.abandon("session_lost")
    bob.abandon("session_lost")
    bob_before = bob.auth.to_state()

    def claim_nothing(direction: str, msg: m.Message | Hello) -> m.Message | Hello | None:
        if isinstance(msg, Hello) and msg.kind is HelloKind.OPEN:
            return dataclasses.replace(msg, snapshot=dataclasses.replace(msg.snapshot, held_block_seqs=()))
        return msg

    with pytest.raises(HelloRefused, match="authentication_failed"):
        reconnect(alice, bob, alice_holds={0}, bob_holds={0}, tamper=claim_nothing)
    assert bob.auth.to_state() == bob_before
    done = reconnect(alice, bob, alice_holds={0}, bob_holds={0})
    assert done.alice_plan.keep_block_seqs == done.bob_plan.keep_block_seqs == {0}


def test_the_reserve_remembers_how_far_refills_were_promoted_across_a_restart() -> None:
    import json

    reserve = AuthKeyReserve(BOOTSTRAP)
    reserve.stage(2, os.urandom(64))
    reserve.stage(4, os.urandom(64))
    reserve.promote_before(3)
    restored = AuthKeyReserve.from_state(json.loads(json.dumps(reserve.to_state())))
    assert restored.promoted_before == 3 and restored.staged_block_seqs == (4,)
    assert restored.peek(0, restored.available_keys) == reserve.peek(0, reserve.available_keys)
    old_state = {k: v for k, v in reserve.to_state().items() if k != "promoted_before"}
    assert AuthKeyReserve.from_state(old_state).promoted_before == 0  # saved before the field existed
    twin = reserve.copy()
    twin.take(1)
    assert reserve.cursor == 0 and twin.cursor == 1
