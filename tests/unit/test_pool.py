"""The link key pool: initiator halves, reserve/commit/release, peer ranges, ledger."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import qcinode.core.pool as pool_module
from qcinode.core.pool import KeyRange, LedgerEntry, LinkKeyPool, Reservation
from qcinode.core.roles import Role
from qcinode.errors import (
    InsufficientKeyMaterial,
    KeyAlreadyUsed,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    RemoteProtocolError,
)

ALICE, BOB = Role.ALICE, Role.BOB


def _pair(*blocks: tuple[str, bytes]) -> tuple[LinkKeyPool, LinkKeyPool]:
    alice, bob = LinkKeyPool("a-b", ALICE), LinkKeyPool("a-b", BOB)
    for block_id, data in blocks:
        alice.add_block(block_id, data)
        bob.add_block(block_id, data)
    return alice, bob


def _roundtrip(pool: LinkKeyPool) -> LinkKeyPool:
    return LinkKeyPool.from_state(json.loads(json.dumps(pool.to_state())))


def _snapshot(pool: LinkKeyPool) -> tuple[Any, ...]:
    return (
        pool.link_id,
        pool.role,
        pool.block_ids,
        pool.available_bytes,
        pool.peer_available_bytes,
        pool.used_bytes,
        pool.audit(),
        pool.folded,
        [pool.block_digest(b) for b in pool.block_ids],
    )


def _check_ledger(pool: LinkKeyPool, sizes: dict[str, int]) -> None:
    """Entries lie in their initiator's half and never overlap."""
    by_block: dict[str, list[LedgerEntry]] = {}
    for entry in pool.audit():
        by_block.setdefault(entry.block_id, []).append(entry)
    for block_id, entries in by_block.items():
        boundary = sizes[block_id] // 2
        entries.sort(key=lambda e: e.offset_bytes)
        for entry in entries:
            assert entry.length_bytes > 0
            if entry.initiator is ALICE:
                assert 0 <= entry.offset_bytes and entry.offset_bytes + entry.length_bytes <= boundary
            else:
                assert boundary <= entry.offset_bytes
                assert entry.offset_bytes + entry.length_bytes <= sizes[block_id]
        for first, second in zip(entries, entries[1:]):
            assert first.offset_bytes + first.length_bytes <= second.offset_bytes


# -- halves and reservation order --------------------------------------------


def test_each_end_reserves_from_its_own_half() -> None:
    data = bytes(range(100))
    alice, bob = _pair(("a-b/1", data))
    assert alice.available_bytes == 50 and alice.peer_available_bytes == 50
    ra, rb = alice.reserve(10), bob.reserve(10)
    assert ra.ranges == (KeyRange("a-b/1", 0, 10),)
    assert rb.ranges == (KeyRange("a-b/1", 50, 10),)
    assert alice.commit(ra) == data[:10]
    assert bob.commit(rb) == data[50:60]


def test_odd_block_gives_bob_the_extra_byte() -> None:
    alice, bob = _pair(("a-b/1", bytes(range(11))))
    assert alice.available_bytes == 5 and bob.available_bytes == 6
    tiny_alice, tiny_bob = _pair(("a-b/7", b"\x07"))
    assert tiny_alice.available_bytes == 0 and tiny_bob.available_bytes == 1
    assert tiny_bob.commit(tiny_bob.reserve(1)) == b"\x07"
    assert tiny_alice.consume_ranges([KeyRange("a-b/7", 0, 1)], BOB) == b"\x07"
    assert tiny_alice.block_ids == ()  # fully used: retired


def test_reservation_spans_blocks_oldest_first() -> None:
    b1, b2, b3 = bytes(range(20)), bytes(range(100, 120)), bytes(range(200, 220))
    alice, bob = _pair(("a-b/1", b1), ("a-b/2", b2), ("a-b/3", b3))
    res = alice.reserve(25)
    assert res.ranges == (KeyRange("a-b/1", 0, 10), KeyRange("a-b/2", 0, 10), KeyRange("a-b/3", 0, 5))
    assert res.length_bytes == 25
    key = alice.commit(res)
    assert key == b1[:10] + b2[:10] + b3[:5]
    assert bob.consume_ranges(list(res.ranges), ALICE) == key
    assert alice.audit() == bob.audit()


def test_insufficient_material_across_blocks_names_what_is_available() -> None:
    # reserve stops scanning once it has enough; a refusal still counts every block's free bytes
    alice, _ = _pair(("a-b/1", bytes(20)), ("a-b/2", bytes(20)), ("a-b/3", bytes(20)))
    alice.reserve(4)
    with pytest.raises(InsufficientKeyMaterial, match="27 bytes requested, 26 available"):
        alice.reserve(27)
    assert alice.available_bytes == 26 and alice.reserved_bytes == 4
    assert [(r.block_id, r.length_bytes) for r in alice.reserve(26).ranges] == [("a-b/1", 6), ("a-b/2", 10), ("a-b/3", 10)]


def test_insufficient_material_consumes_nothing() -> None:
    alice, _ = _pair(("a-b/1", bytes(40)))
    held = alice.reserve(5)
    with pytest.raises(InsufficientKeyMaterial, match="16 bytes requested, 15 available"):
        alice.reserve(16)
    assert alice.available_bytes == 15 and alice.reserved_bytes == 5
    assert alice.reserve(15).length_bytes == 15
    alice.release(held)
    assert alice.available_bytes == 5
    with pytest.raises(LocalProtocolError):
        alice.reserve(0)


def test_release_returns_bytes_and_they_are_reused_first() -> None:
    data = bytes(range(64))
    alice, _ = _pair(("a-b/1", data))
    first = alice.reserve(8)
    second = alice.reserve(8)
    assert second.ranges == (KeyRange("a-b/1", 8, 8),)
    alice.release(first)
    assert alice.available_bytes == 32 - 8
    again = alice.reserve(12)  # the freed hole first, then after `second`
    assert again.ranges == (KeyRange("a-b/1", 0, 8), KeyRange("a-b/1", 16, 4))
    assert alice.commit(again) == data[0:8] + data[16:20]
    assert alice.commit(second) == data[8:16]
    assert alice.audit() == [LedgerEntry("a-b/1", 0, 20, ALICE)]


def test_commit_and_release_lifecycle_errors() -> None:
    alice, _ = _pair(("a-b/1", bytes(64)))
    res = alice.reserve(4)
    alice.commit(res)
    with pytest.raises(LocalProtocolError):
        alice.commit(res)
    alice.release(res)  # no-op after commit
    assert alice.used_bytes == 4 and alice.available_bytes == 28
    other = alice.reserve(4)
    alice.release(other)
    alice.release(other)  # idempotent
    with pytest.raises(LocalProtocolError):
        alice.commit(other)
    assert alice.available_bytes == 28
    live = alice.reserve(4)
    forged = Reservation("a-b", live.reservation_id, (KeyRange("a-b/1", 20, 4),))
    with pytest.raises(LocalProtocolError):
        alice.commit(forged)
    with pytest.raises(LocalProtocolError):
        alice.release(forged)
    assert alice.commit(live) == bytes(4)


# -- the peer's ranges -----------------------------------------------------------


def test_consume_rejects_violations_and_consumes_nothing() -> None:
    data = bytes(range(100))
    alice, bob = _pair(("a-b/1", data), ("a-b/2", data))
    bob.consume_ranges([KeyRange("a-b/1", 0, 10)], ALICE)
    before = _snapshot(bob)
    good = KeyRange("a-b/2", 0, 5)
    bad_cases: list[tuple[list[KeyRange], type[Exception]]] = [
        ([good, KeyRange("a-b/1", 45, 10)], RemoteProtocolError),  # crosses into Bob's half
        ([good, KeyRange("a-b/1", 60, 5)], RemoteProtocolError),  # Bob's half
        ([good, KeyRange("a-b/1", 5, 10)], KeyAlreadyUsed),  # overlaps used
        ([good, KeyRange("a-b/9", 0, 5)], KeyNotFound),
        ([good, KeyRange("a-b/2", 3, 4)], RemoteProtocolError),  # overlaps `good`
        ([good, KeyRange("a-b/2", 5, 0)], RemoteProtocolError),
        ([good, KeyRange("a-b/2", -1, 1)], RemoteProtocolError),
        ([good, KeyRange("a-b/2", 95, 10)], RemoteProtocolError),  # past the end
    ]
    for ranges, error in bad_cases:
        with pytest.raises(error):
            bob.consume_ranges(ranges, ALICE)
        assert _snapshot(bob) == before
    with pytest.raises(LocalProtocolError):
        bob.consume_ranges([good], BOB)
    assert bob.consume_ranges([good], ALICE) == data[:5]


def test_consume_of_a_retired_block_is_already_used() -> None:
    data = bytes(range(8))
    alice, bob = _pair(("a-b/1", data))
    ka = alice.commit(alice.reserve(4))
    kb = bob.commit(bob.reserve(4))
    assert bob.consume_ranges([KeyRange("a-b/1", 0, 4)], ALICE) == ka
    assert alice.consume_ranges([KeyRange("a-b/1", 4, 4)], BOB) == kb
    assert alice.block_ids == () and bob.block_ids == ()
    assert alice.audit() == bob.audit() == [
        LedgerEntry("a-b/1", 0, 4, ALICE),
        LedgerEntry("a-b/1", 4, 4, BOB),
    ]
    with pytest.raises(KeyAlreadyUsed):
        bob.consume_ranges([KeyRange("a-b/1", 0, 2)], ALICE)
    with pytest.raises(KeyStoreError):
        alice.add_block("a-b/1", data)  # a retired ID can never come back
    assert alice.block_digest("a-b/1") == bob.block_digest("a-b/1")
    assert alice.used_bytes == 8


def test_duplicate_and_empty_blocks_are_refused() -> None:
    alice, _ = _pair(("a-b/1", b"\x01\x02"))
    with pytest.raises(KeyStoreError):
        alice.add_block("a-b/1", b"\x03\x04")
    with pytest.raises(LocalProtocolError):
        alice.add_block("a-b/2", b"")
    with pytest.raises(LocalProtocolError):
        alice.add_block("", b"\x01")
    with pytest.raises(KeyNotFound):
        alice.block_digest("nope")


def test_retain_only_drops_blocks_the_peer_lacks() -> None:
    alice, bob = _pair(("a-b/1", bytes(20)), ("a-b/2", bytes(range(20))))
    alice.add_block("a-b/3", bytes(20))  # Bob never got b3
    ka = alice.commit(alice.reserve(3))
    pending = alice.reserve(20)  # b1 rest, b2, b3
    alice.retain_only(set(bob.block_ids))
    bob.retain_only(set(alice.block_ids))
    assert alice.block_ids == bob.block_ids == ("a-b/1", "a-b/2")
    with pytest.raises(KeyNotFound):
        alice.commit(pending)  # void: b3 is gone
    assert alice.reserved_bytes == 0 and alice.available_bytes == 17
    assert bob.consume_ranges([KeyRange("a-b/1", 0, 3)], ALICE) == ka
    assert alice.audit() == bob.audit()
    with pytest.raises(KeyNotFound):
        bob.consume_ranges([KeyRange("a-b/3", 0, 1)], ALICE)
    with pytest.raises(KeyStoreError):
        alice.add_block("a-b/3", bytes(20))


# -- persistence ---------------------------------------------------------------


def test_state_round_trip_preserves_everything() -> None:
    rng = np.random.default_rng(1)
    blocks = [(f"a-b/{i}", rng.bytes(int(rng.integers(1, 60)))) for i in range(6)]
    alice, bob = _pair(*blocks)
    for _ in range(25):
        for pool in (alice, bob):
            n = int(rng.integers(1, 12))
            if n <= pool.available_bytes:
                res = pool.reserve(n)
                if rng.random() < 0.3:
                    pool.release(res)
                else:
                    key = pool.commit(res)
                    peer = bob if pool is alice else alice
                    assert peer.consume_ranges(list(res.ranges), pool.role) == key
    alice.retain_only(set(alice.block_ids) - {alice.block_ids[-1]})
    for pool in (alice, bob):
        restored = _roundtrip(pool)
        assert _snapshot(restored) == _snapshot(pool)
        # The restored pool behaves identically from here on.
        n = min(pool.available_bytes, 7)
        if n:
            a, b = pool.reserve(n), restored.reserve(n)
            assert a.ranges == b.ranges
            assert pool.commit(a) == restored.commit(b)
            assert pool.audit() == restored.audit()


def test_open_reservations_are_not_persisted() -> None:
    alice, _ = _pair(("a-b/1", bytes(range(40))))
    alice.reserve(6)
    restored = _roundtrip(alice)
    assert restored.available_bytes == 20 and restored.reserved_bytes == 0


def test_from_state_rejects_corrupt_state() -> None:
    alice, _ = _pair(("a-b/1", bytes(range(40))))
    alice.commit(alice.reserve(5))
    good = json.loads(json.dumps(alice.to_state()))

    def broken(mutate: Any) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(json.dumps(good))
        mutate(state)
        return state

    cases = [
        broken(lambda s: s.update(version=4)),
        broken(lambda s: s.pop("folded")),
        broken(lambda s: s["folded"].update(watermark_seq=-2)),
        broken(lambda s: s["folded"].update(watermark_seq=5)),  # a watermark with nothing folded
        broken(lambda s: s["folded"].update(digest="00")),
        broken(lambda s: s["blocks"][0].update(block_id="b1")),  # not "<link_id>/<seq>"
        broken(lambda s: s.update(role="carol")),
        broken(lambda s: s["blocks"][0]["data"].update(alice="blob")),  # stored apart, but no blobs given
        broken(lambda s: s["blocks"][0]["used"]["alice"].append([3, 8])),  # overlap
        broken(lambda s: s["blocks"][0]["used"]["alice"].append([18, 25])),  # wrong half
        broken(lambda s: s["blocks"][0]["data"].update(alice="00")),  # wrong length
        broken(lambda s: s["blocks"][0].update(digest="00" * 32)),
        broken(lambda s: s.pop("closed")),
    ]
    for state in cases:
        with pytest.raises(KeyStoreError):
            LinkKeyPool.from_state(state)
    assert _snapshot(LinkKeyPool.from_state(good)) == _snapshot(alice)


def test_repr_hides_key_material() -> None:
    data = bytes(range(200, 232))
    alice, _ = _pair(("a-b/1", data))
    assert data.hex()[:8] not in repr(alice)


# -- both ends under interleaved use ---------------------------------------------


class TwoEnds(RuleBasedStateMachine):
    """Alice and Bob reserve, commit and release concurrently; messages naming
    committed ranges reach the other end in any order; either end may restart
    from its persisted state."""

    def __init__(self) -> None:
        super().__init__()
        self.pools = {ALICE: LinkKeyPool("l", ALICE), BOB: LinkKeyPool("l", BOB)}
        self.data: dict[str, bytes] = {}
        self.open: dict[Role, list[Reservation]] = {ALICE: [], BOB: []}
        self.in_flight: list[tuple[Role, tuple[KeyRange, ...], bytes]] = []
        self.spent: set[tuple[str, int]] = set()  # every byte handed out, anywhere
        self.committed = {ALICE: 0, BOB: 0}
        self.delivered = {ALICE: 0, BOB: 0}  # bytes initiated by role, consumed at the peer

    @initialize(data=st.binary(min_size=1, max_size=48))
    def first_block(self, data: bytes) -> None:
        self.add_block(data)

    @rule(data=st.binary(min_size=1, max_size=48))
    def add_block(self, data: bytes) -> None:
        block_id = f"l/{len(self.data)}"
        self.data[block_id] = data
        for pool in self.pools.values():
            pool.add_block(block_id, data)

    @rule(role=st.sampled_from(Role), length=st.integers(min_value=1, max_value=30))
    def reserve(self, role: Role, length: int) -> None:
        pool = self.pools[role]
        available = pool.available_bytes
        if length > available:
            with pytest.raises(InsufficientKeyMaterial):
                pool.reserve(length)
            assert pool.available_bytes == available
            return
        res = pool.reserve(length)
        assert res.length_bytes == length
        assert pool.available_bytes == available - length
        for r in res.ranges:
            boundary = len(self.data[r.block_id]) // 2
            lo, hi = (0, boundary) if role is ALICE else (boundary, len(self.data[r.block_id]))
            assert lo <= r.offset_bytes and r.end_bytes <= hi
        self.open[role].append(res)

    @precondition(lambda self: self.open[ALICE] or self.open[BOB])
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        role = data.draw(st.sampled_from([r for r in Role if self.open[r]]))
        res = self.open[role].pop(data.draw(st.integers(0, len(self.open[role]) - 1)))
        key = self.pools[role].commit(res)
        expected = b"".join(self.data[r.block_id][r.offset_bytes : r.end_bytes] for r in res.ranges)
        assert key == expected
        for r in res.ranges:
            for offset in range(r.offset_bytes, r.end_bytes):
                assert (r.block_id, offset) not in self.spent
                self.spent.add((r.block_id, offset))
        self.committed[role] += len(key)
        self.in_flight.append((role, res.ranges, key))

    @precondition(lambda self: self.open[ALICE] or self.open[BOB])
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        role = data.draw(st.sampled_from([r for r in Role if self.open[r]]))
        res = self.open[role].pop(data.draw(st.integers(0, len(self.open[role]) - 1)))
        before = self.pools[role].available_bytes
        self.pools[role].release(res)
        assert self.pools[role].available_bytes == before + res.length_bytes

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        initiator, ranges, key = self.in_flight.pop(
            data.draw(st.integers(0, len(self.in_flight) - 1))
        )
        peer = self.pools[initiator.peer]
        assert peer.consume_ranges(list(ranges), initiator) == key
        self.delivered[initiator] += len(key)
        # Delivering the same message twice is refused and changes nothing.
        before = peer.audit()
        with pytest.raises(KeyAlreadyUsed):
            peer.consume_ranges(list(ranges), initiator)
        assert peer.audit() == before

    @rule(role=st.sampled_from(Role))
    def restart(self, role: Role) -> None:
        # A crash loses uncommitted reservations; committed state survives.
        self.pools[role] = _roundtrip(self.pools[role])
        self.open[role] = []

    @invariant()
    def ledgers_are_consistent(self) -> None:
        sizes = {block_id: len(data) for block_id, data in self.data.items()}
        for role, pool in self.pools.items():
            _check_ledger(pool, sizes)
            half_total = sum(
                size // 2 if role is ALICE else size - size // 2 for size in sizes.values()
            )
            peer_half_total = sum(sizes.values()) - half_total
            reserved = sum(res.length_bytes for res in self.open[role])
            assert pool.reserved_bytes == reserved
            assert pool.available_bytes == half_total - self.committed[role] - reserved
            assert pool.peer_available_bytes == peer_half_total - self.delivered[role.peer]
            assert pool.used_bytes == self.committed[role] + self.delivered[role.peer]
            # The cached names are what the state names (invalidated on every change that matters).
            state = pool.to_state(inline=False)
            assert pool.blob_names() == {
                f"data/{b['block_id']}/{r}" for b in state["blocks"] for r, v in b["data"].items() if v == "blob"
            } | {f"closed/{block_id}" for block_id in state["closed"]}
            # The stored form (each block's part cached until its ledger changes) is the full form, bytes named.
            full = pool.to_state()
            for block in full["blocks"]:
                block["data"] = {r: None if v is None else "blob" for r, v in block["data"].items()}
            assert state["blocks"] == full["blocks"]
        if not self.in_flight:
            assert self.pools[ALICE].audit() == self.pools[BOB].audit()
            assert self.pools[ALICE].folded == self.pools[BOB].folded
            assert self.pools[ALICE].block_ids == self.pools[BOB].block_ids


TwoEnds.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_two_ends = TwoEnds.TestCase


class TwoEndsFolding(TwoEnds):
    """The same, keeping one closed block: retired blocks are folded, in
    whatever order each end closes them, across restarts."""

    def __init__(self) -> None:
        self._kept = pool_module.CLOSED_BLOCKS_KEPT
        pool_module.CLOSED_BLOCKS_KEPT = 1
        super().__init__()

    def teardown(self) -> None:
        pool_module.CLOSED_BLOCKS_KEPT = self._kept

    @rule(data=st.binary(min_size=1, max_size=8))
    def add_block(self, data: bytes) -> None:  # small blocks: used up in a few steps
        super().add_block(data)

    @rule(role=st.sampled_from(Role))
    def reserve_everything(self, role: Role) -> None:
        # Used-up blocks retire (and fold) only once both halves are used: drive that often.
        pool = self.pools[role]
        if pool.available_bytes:
            self.open[role].append(pool.reserve(pool.available_bytes))


TwoEndsFolding.TestCase.settings = settings(max_examples=100, stateful_step_count=60, deadline=None)
test_two_ends_folding = TwoEndsFolding.TestCase


def test_peek_checks_like_consume_but_uses_nothing() -> None:
    alice, bob = LinkKeyPool("a-b", Role.ALICE), LinkKeyPool("a-b", Role.BOB)
    for pool in (alice, bob):
        pool.add_block("a-b/0", bytes(range(64)))
    reservation = alice.reserve(16)
    pad = alice.commit(reservation)
    assert bob.peek_ranges(reservation.ranges, Role.ALICE) == pad
    assert bob.used_bytes == 0, "peeking must not use the bytes"
    assert bob.consume_ranges(reservation.ranges, Role.ALICE) == pad
    assert bob.used_bytes == 16
    with pytest.raises(KeyAlreadyUsed):
        bob.peek_ranges(reservation.ranges, Role.ALICE)


def test_state_without_key_bytes_round_trips_with_its_blobs() -> None:
    """``to_state(inline=False)`` names the immutable parts; a store keeps them
    once and the pool comes back the same, retired blocks included."""
    alice, bob = _pair(("a-b/1", bytes(range(40))), ("a-b/2", bytes(range(100, 164))), ("a-b/3", bytes(64)))
    for _ in range(7):  # Alice's half of b1 and a byte of b2
        reservation = alice.reserve(3)
        alice.commit(reservation)
        bob.consume_ranges(reservation.ranges, initiator=Role.ALICE)
    reservation = bob.reserve(20)  # Bob's half of b1: b1 is used up and retired
    bob.commit(reservation)
    alice.consume_ranges(reservation.ranges, initiator=Role.BOB)
    alice.retain_only(["a-b/1", "a-b/2"])  # b3 discarded at resync: closed, its bytes gone
    state = json.loads(json.dumps(alice.to_state(inline=False)))
    assert "a-b/1" in state["closed"] and "a-b/3" in state["closed"]
    assert all(v in (None, "blob") for block in state["blocks"] for v in block["data"].values())
    names = alice.blob_names()
    assert names == {"data/a-b/2/alice", "data/a-b/2/bob", "closed/a-b/1", "closed/a-b/3"}
    blobs = {name: alice.blob(name) for name in names}
    assert blobs["data/a-b/2/alice"] == bytes(range(100, 132))
    assert _snapshot(LinkKeyPool.from_state(state, blobs)) == _snapshot(alice) == _snapshot(_roundtrip(alice))
    # Version 1 states (everything inline) still load.
    legacy = json.loads(json.dumps(alice.to_state()))
    legacy["version"] = 1
    assert _snapshot(LinkKeyPool.from_state(legacy)) == _snapshot(alice)
    # A named part that is missing is an error naming it, never a silent hole.
    with pytest.raises(KeyStoreError, match="closed/a-b/3"):
        LinkKeyPool.from_state(state, {k: v for k, v in blobs.items() if k != "closed/a-b/3"})
    with pytest.raises(KeyNotFound):
        alice.blob("data/a-b/3/alice")
