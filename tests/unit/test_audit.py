"""The cross-end ledger audit used by the soak bench and the fault tests."""

from __future__ import annotations

import random

import pytest

from qcinode.cluster.audit import audit_ledgers, audit_link
from qcinode.core.pool import LinkKeyPool
from qcinode.core.roles import Role


def _entries(pool: LinkKeyPool) -> list[list[object]]:
    return [[e.block_id, e.offset_bytes, e.length_bytes, e.initiator.value] for e in pool.audit()]


def _pools(blocks: int = 3, size: int = 4096) -> tuple[LinkKeyPool, LinkKeyPool]:
    alice, bob = LinkKeyPool("a-b", Role.ALICE), LinkKeyPool("a-b", Role.BOB)
    for i in range(blocks):
        data = random.Random(i).randbytes(size)
        alice.add_block(f"a-b/{i}", data)
        bob.add_block(f"a-b/{i}", data)
    return alice, bob


def test_real_pools_that_exchange_every_message_audit_identical() -> None:
    rng = random.Random(7)
    alice, bob = _pools()
    for _ in range(200):
        sender, receiver = (alice, bob) if rng.random() < 0.5 else (bob, alice)
        if sender.available_bytes < 64:
            continue
        reservation = sender.reserve(rng.randrange(1, 64))
        pad = sender.commit(reservation)
        assert receiver.consume_ranges(reservation.ranges, initiator=sender.role) == pad
    audit = audit_link("a-b", {"alice": _entries(alice), "bob": _entries(bob)})
    assert audit.identical and audit.bytes_both == alice.used_bytes == bob.used_bytes > 0


def test_lost_messages_are_initiator_only_and_counted_not_violations() -> None:
    alice, bob = _pools()
    delivered = alice.reserve(100)
    alice.commit(delivered)
    bob.consume_ranges(delivered.ranges, initiator=Role.ALICE)
    lost = alice.reserve(40)
    alice.commit(lost)  # the pad went out, the hop never arrived
    audit = audit_link("a-b", {"alice": _entries(alice), "bob": _entries(bob)})
    assert audit.violations == [] and not audit.identical
    assert (audit.bytes_both, audit.bytes_initiator_only) == (100, 40)


def test_bytes_used_only_by_the_receiver_are_a_violation() -> None:
    alice, bob = _pools()
    reservation = alice.reserve(50)
    alice.release(reservation)  # Alice never used them ...
    bob.consume_ranges(reservation.ranges, initiator=Role.ALICE)  # ... but Bob did: Alice may use them again
    audit = audit_link("a-b", {"alice": _entries(alice), "bob": _entries(bob)})
    assert len(audit.violations) == 1 and "50 bytes" in audit.violations[0] and "alice never used" in audit.violations[0]


def test_a_corrupted_ledger_with_overlapping_ranges_is_a_violation() -> None:
    ledger = [["a-b/0", 0, 100, "alice"], ["a-b/0", 50, 100, "alice"]]
    audit = audit_link("a-b", {"alice": ledger, "bob": [["a-b/0", 0, 150, "alice"]]})
    assert any("twice" in v for v in audit.violations)


def test_cluster_audit_reports_links_with_an_end_missing() -> None:
    status = {
        "links": {"a-b": {}, "b-c": {}},
        "nodes": {
            "a": {"links": [{"link_id": "a-b", "role": "alice", "ledger": [["a-b/0", 0, 8, "alice"]]}]},
            "b": {"links": [{"link_id": "a-b", "role": "bob", "ledger": [["a-b/0", 0, 8, "alice"]]},
                            {"link_id": "b-c", "role": "alice", "ledger": []}]},
            "c": {"error": "unreachable", "links": []},
        },
    }
    audit = audit_ledgers(status)
    assert audit.links["a-b"].identical and audit.missing_ends == ["b-c"] and not audit.ok


def test_a_block_one_end_folded_is_skipped_not_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    import qcinode.core.pool as pool_module

    monkeypatch.setattr(pool_module, "CLOSED_BLOCKS_KEPT", 1)
    alice, bob = _pools(blocks=3, size=64)
    sent = alice.reserve(30)
    alice.commit(sent)
    bob.consume_ranges(sent.ranges, initiator=Role.ALICE)
    alice.commit(alice.reserve(2))  # the rest of Alice's half of block 0: a hop that was lost
    for sender, receiver in ((bob, alice), (alice, bob)):  # everything else, delivered
        reservation = sender.reserve(sender.available_bytes)
        sender.commit(reservation)
        receiver.consume_ranges(reservation.ranges, initiator=sender.role)
    # Alice retired block 0 and folded it; Bob still holds it (2 bytes of it never reached him).
    assert "a-b/0" not in alice.block_ids and bob.block_ids == ("a-b/0",)
    assert alice.folded.watermark_seq == 1
    ledgers = {"alice": _entries(alice), "bob": _entries(bob)}
    assert audit_link("a-b", ledgers).violations, "without the fold, Bob's use of block 0 looks unmatched"
    folded = {"alice": alice.folded.watermark_seq + 1, "bob": bob.folded.watermark_seq + 1}
    audit = audit_link("a-b", ledgers, folded)
    assert audit.violations == [] and audit.blocks_folded == 1
    assert audit.bytes_both + audit.bytes_initiator_only == sum(e[2] for e in ledgers["alice"])  # block 2 compared
    status = {
        "links": ["a-b"],
        "nodes": {
            "a": {"links": [{"link_id": "a-b", "role": "alice", "ledger": ledgers["alice"], "ledger_folded_through": folded["alice"]}]},
            "b": {"links": [{"link_id": "a-b", "role": "bob", "ledger": ledgers["bob"], "ledger_folded_through": folded["bob"]}]},
        },
    }
    assert audit_ledgers(status).violations == [] and audit_ledgers(status).links["a-b"].blocks_folded == 1
    # A block neither end folded is still audited: a receiver-only byte there is a violation.
    forged = [*ledgers["bob"], ["a-b/2", 0, 1, "alice"]]
    assert audit_link("a-b", {"alice": ledgers["alice"], "bob": forged}, folded).violations
