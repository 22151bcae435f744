"""A pool that runs for weeks: closed blocks beyond CLOSED_BLOCKS_KEPT fold into one aggregate.

Snapshot size, blob names and memory stay bounded however many blocks retire;
totals and the replay guard stay exact; both ends fold alike; old states load.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import qcinode.core.pool as pool_module
from qcinode.core.pool import CLOSED_BLOCKS_KEPT, FoldedLedger, KeyRange, LinkKeyPool
from qcinode.core.roles import Role
from qcinode.errors import KeyAlreadyUsed, KeyNotFound, KeyStoreError, LocalProtocolError

LINK = "a-b"
BLOCK_BYTES = 16


def _block(seq: int) -> bytes:
    return np.random.default_rng(seq).bytes(BLOCK_BYTES)


def _use_up(alice: LinkKeyPool, bob: LinkKeyPool, first: int, count: int, *, order: np.random.Generator | None = None) -> None:
    """Add blocks ``first..first+count-1`` at both ends and use every byte, a hundred blocks at a time
    (as a link does: blocks retire as new ones come); the peer hears of each use in ``order``'s
    shuffle (None: in order), so the two ends close blocks in different orders."""
    for batch in range(first, first + count, 100):
        _use_up_batch(alice, bob, batch, min(100, first + count - batch), order)


def _use_up_batch(alice: LinkKeyPool, bob: LinkKeyPool, first: int, count: int, order: np.random.Generator | None) -> None:
    for seq in range(first, first + count):
        alice.add_block(f"{LINK}/{seq}", _block(seq))
        bob.add_block(f"{LINK}/{seq}", _block(seq))
    messages: list[tuple[LinkKeyPool, tuple[KeyRange, ...], Role]] = []
    for sender, receiver in ((alice, bob), (bob, alice)):
        for _ in range(count):
            reservation = sender.reserve(BLOCK_BYTES // 2)
            sender.commit(reservation)
            messages.append((receiver, reservation.ranges, sender.role))
    indices = list(range(len(messages))) if order is None else [int(i) for i in order.permutation(len(messages))]
    for i in indices:
        receiver, ranges, initiator = messages[i]
        receiver.consume_ranges(ranges, initiator)


def _pair() -> tuple[LinkKeyPool, LinkKeyPool]:
    return LinkKeyPool(LINK, Role.ALICE), LinkKeyPool(LINK, Role.BOB)


def test_ten_thousand_retired_blocks_leave_a_bounded_snapshot() -> None:
    alice, bob = _pair()
    _use_up(alice, bob, 0, 1_000)
    state_1k = alice.to_state(inline=False)
    _use_up(alice, bob, 1_000, 9_000)
    state_10k = alice.to_state(inline=False)
    inline_10k = alice.to_state()
    for pool in (alice, bob):
        assert pool.block_ids == ()
        assert len(pool.blob_names()) == CLOSED_BLOCKS_KEPT  # one per kept closed block, none per folded one
        assert len(pool.audit()) == 2 * CLOSED_BLOCKS_KEPT  # each kept block: one run per half
        assert pool.folded.blocks == 10_000 - CLOSED_BLOCKS_KEPT
        assert pool.folded.watermark_seq == 10_000 - CLOSED_BLOCKS_KEPT - 1
    assert len(state_10k["closed"]) == len(state_1k["closed"]) == CLOSED_BLOCKS_KEPT
    assert len(inline_10k["closed"]) == CLOSED_BLOCKS_KEPT
    # Ten times the blocks, the same snapshot but for the wider numbers (IDs one digit longer).
    assert len(json.dumps(state_10k)) - len(json.dumps(state_1k)) <= 2 * CLOSED_BLOCKS_KEPT + 64
    assert sorted(state_10k["closed"]) == sorted(f"{LINK}/{seq}" for seq in range(10_000 - CLOSED_BLOCKS_KEPT, 10_000))


def test_folding_keeps_every_total() -> None:
    alice, bob = _pair()
    _use_up(alice, bob, 0, 3 * CLOSED_BLOCKS_KEPT)
    alice.add_block(f"{LINK}/{3 * CLOSED_BLOCKS_KEPT}", _block(0))  # live, partly used
    alice.commit(alice.reserve(3))
    expected = 3 * CLOSED_BLOCKS_KEPT * BLOCK_BYTES + 3
    assert alice.used_bytes == expected
    assert sum(e.length_bytes for e in alice.audit()) + alice.folded.used_bytes == expected
    assert alice.folded == FoldedLedger(
        watermark_seq=2 * CLOSED_BLOCKS_KEPT - 1,
        blocks=2 * CLOSED_BLOCKS_KEPT,
        discarded_blocks=0,
        size_bytes=2 * CLOSED_BLOCKS_KEPT * BLOCK_BYTES,
        used_bytes=2 * CLOSED_BLOCKS_KEPT * BLOCK_BYTES,
        digest=alice.folded.digest,
    )
    assert alice.folded.digest != bytes(32)


def test_a_folded_or_lower_id_cannot_be_added_or_consumed_again() -> None:
    alice, bob = _pair()
    _use_up(alice, bob, 0, CLOSED_BLOCKS_KEPT + 10)
    watermark = alice.folded.watermark_seq
    assert watermark == 9
    used = alice.used_bytes
    for seq in (0, 5, watermark):  # folded
        with pytest.raises(KeyStoreError, match="already in link.*folded"):
            alice.add_block(f"{LINK}/{seq}", _block(seq))
        with pytest.raises(KeyNotFound, match="folded"):
            alice.block_digest(f"{LINK}/{seq}")
        # A replayed message naming a folded block's pad: refused as a replay, nothing used.
        with pytest.raises(KeyAlreadyUsed, match="folded"):
            alice.consume_ranges([KeyRange(f"{LINK}/{seq}", BLOCK_BYTES // 2, 1)], Role.BOB)
    with pytest.raises(KeyStoreError, match="already in link"):
        alice.add_block(f"{LINK}/{watermark + 1}", _block(0))  # kept in full, still refused
    assert alice.used_bytes == used
    alice.add_block(f"{LINK}/{CLOSED_BLOCKS_KEPT + 10}", _block(1))  # the next seq is welcome
    for bad in ("b1", f"{LINK}/01", f"{LINK}/-1", f"{LINK}/x", f"x-y/{CLOSED_BLOCKS_KEPT + 11}", f"{LINK}/1/2"):
        with pytest.raises(LocalProtocolError, match="block_id must be"):
            alice.add_block(bad, _block(2))


def test_a_live_block_below_the_watermark_is_kept_and_folds_when_it_closes() -> None:
    alice, bob = _pair()
    alice.add_block(f"{LINK}/0", _block(0))
    bob.add_block(f"{LINK}/0", _block(0))
    held = {pool: pool.reserve(BLOCK_BYTES // 2) for pool in (alice, bob)}  # block 0 stays live meanwhile
    _use_up(alice, bob, 1, CLOSED_BLOCKS_KEPT + 5)
    assert alice.block_ids == bob.block_ids == (f"{LINK}/0",)
    assert alice.folded.watermark_seq == 5 and alice.folded.blocks == 5
    with pytest.raises(KeyStoreError, match="already in link"):
        alice.add_block(f"{LINK}/0", _block(0))
    for sender, receiver in ((alice, bob), (bob, alice)):
        sender.commit(held[sender])
        receiver.consume_ranges(held[sender].ranges, sender.role)
    for pool in (alice, bob):
        assert pool.block_ids == ()
        assert pool.folded.blocks == 6 and pool.folded.watermark_seq == 5  # folded at once: the lowest seq
        assert len(pool.audit()) == 2 * CLOSED_BLOCKS_KEPT
    assert alice.folded == bob.folded and alice.audit() == bob.audit()


def test_both_ends_fold_alike_whatever_order_they_close_blocks_in() -> None:
    alice, bob = _pair()
    _use_up(alice, bob, 0, 4 * CLOSED_BLOCKS_KEPT, order=np.random.default_rng(7))
    assert alice.folded == bob.folded
    assert alice.audit() == bob.audit()
    assert alice.used_bytes == bob.used_bytes == 4 * CLOSED_BLOCKS_KEPT * BLOCK_BYTES
    # A third pool that saw the same blocks close in order folds to the same aggregate.
    carol, dave = _pair()
    _use_up(carol, dave, 0, 4 * CLOSED_BLOCKS_KEPT)
    assert carol.folded == alice.folded and carol.audit() == alice.audit()


def test_discarded_blocks_fold_and_are_counted() -> None:
    alice, bob = _pair()
    for seq in range(CLOSED_BLOCKS_KEPT + 3):
        alice.add_block(f"{LINK}/{seq}", _block(seq))
    alice.commit(alice.reserve(3))
    alice.retain_only([])  # a resync with a peer that holds none of them
    assert alice.folded.blocks == 3 and alice.folded.discarded_blocks == 3
    assert alice.used_bytes == 3 and sum(e.length_bytes for e in alice.audit()) + alice.folded.used_bytes == 3


def _v2(pool: LinkKeyPool, *, inline: bool) -> dict[str, Any]:
    """The state version 2 wrote: this version's, less the fold (taken with no folding)."""
    state = json.loads(json.dumps(pool.to_state(inline=inline)))
    assert state.pop("folded")["blocks"] == 0
    state["version"] = 2
    return state


def test_a_version_2_state_with_every_closed_block_loads_and_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "CLOSED_BLOCKS_KEPT", 10**9)  # the writer of version 2 kept them all
    alice, bob = _pair()
    _use_up(alice, bob, 0, CLOSED_BLOCKS_KEPT + 40)
    alice.add_block(f"{LINK}/{CLOSED_BLOCKS_KEPT + 40}", _block(0))
    alice.commit(alice.reserve(5))
    old_inline, old_apart = _v2(alice, inline=True), _v2(alice, inline=False)
    blobs = {name: alice.blob(name) for name in alice.blob_names()}
    assert len(old_apart["closed"]) == CLOSED_BLOCKS_KEPT + 40 and len(blobs) == CLOSED_BLOCKS_KEPT + 40 + 2
    monkeypatch.undo()

    for restored in (LinkKeyPool.from_state(old_inline), LinkKeyPool.from_state(old_apart, blobs)):
        assert restored.used_bytes == alice.used_bytes
        assert restored.folded.blocks == 40 and restored.folded.watermark_seq == 39
        assert restored.audit() == [e for e in alice.audit() if int(e.block_id.rsplit("/", 1)[1]) >= 40]
        assert len(restored.blob_names()) == CLOSED_BLOCKS_KEPT + 2  # the store drops the 40 folded blobs
        assert restored.available_bytes == alice.available_bytes
        with pytest.raises(KeyStoreError, match="folded"):
            restored.add_block(f"{LINK}/3", _block(3))
        # And it saves as version 3, which loads to the same pool.
        again = LinkKeyPool.from_state(json.loads(json.dumps(restored.to_state())))
        assert again.folded == restored.folded and again.audit() == restored.audit()
    # Both forms fold alike, and alike with a pool that folded as it went.
    fresh_alice, fresh_bob = _pair()
    _use_up(fresh_alice, fresh_bob, 0, CLOSED_BLOCKS_KEPT + 40)
    assert LinkKeyPool.from_state(old_inline).folded == LinkKeyPool.from_state(old_apart, blobs).folded == fresh_alice.folded


def test_a_hand_written_version_2_state_loads() -> None:
    state = {
        "version": 2,
        "link_id": LINK,
        "role": "alice",
        "blocks": [
            {
                "block_id": f"{LINK}/1",
                "size": 4,
                "digest": "9f64a747e1b97f131fabb6b447296c9b6f0201e79fb3c5356e6c77e89b6a806a",
                "data": {"alice": "0102", "bob": "0304"},
                "used": {"alice": [[0, 1]], "bob": []},
            }
        ],
        "closed": [
            {"block_id": f"{LINK}/0", "size": 4, "digest": "00" * 32, "discarded": False, "used": [[0, 2, "alice"], [2, 4, "bob"]]}
        ],
    }
    pool = LinkKeyPool.from_state(state)
    assert pool.block_ids == (f"{LINK}/1",) and pool.used_bytes == 5 and pool.folded == FoldedLedger()
    with pytest.raises(KeyStoreError, match="already in link"):
        pool.add_block(f"{LINK}/0", b"\x00\x00\x00\x00")
    assert LinkKeyPool.from_state(pool.to_state()).to_state() == pool.to_state()


def test_blob_names_are_cached_until_something_they_name_changes() -> None:
    alice, bob = _pair()
    alice.add_block(f"{LINK}/0", _block(0))
    bob.add_block(f"{LINK}/0", _block(0))
    names = alice.blob_names()
    assert alice.blob_names() is names
    reservation = alice.reserve(3)
    alice.commit(reservation)  # a byte used, no half used up: the same names
    assert alice.blob_names() is names
    rest = alice.reserve(alice.available_bytes)
    alice.commit(rest)  # Alice's half used up: its bytes go, and their name
    assert alice.blob_names() == {f"data/{LINK}/0/bob"}
    bob.consume_ranges(reservation.ranges + rest.ranges, Role.ALICE)
    mine = bob.reserve(bob.available_bytes)
    bob.commit(mine)
    alice.consume_ranges(mine.ranges, Role.BOB)  # retired: one closed summary
    assert alice.blob_names() == {f"closed/{LINK}/0"} == bob.blob_names()
    alice.add_block(f"{LINK}/1", _block(1))
    assert alice.blob_names() == {f"closed/{LINK}/0", f"data/{LINK}/1/alice", f"data/{LINK}/1/bob"}
