"""The relay engine, without sockets: source, transit and destination machines in the in-process harness."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import pytest

from qcinode.cluster.audit import audit_link
from qcinode.core.pool import KeyRange, LinkKeyPool
from qcinode.core.relay.context import LinkEnd, RelaySettings
from qcinode.core.relay.engine import RelayEngine
from qcinode.core.relay.harness import HopFault, RelayNetwork, SentHop, relay_network
from qcinode.core.relay.hop import RelayHeader, pad_bytes_needed, seal_hop
from qcinode.core.relay.messages import (
    AnswerHop,
    DeliverKeys,
    FailRequest,
    ForwardFailed,
    HopAnswered,
    HopArrived,
    HopRefused,
    KeyArrived,
    KeysRequested,
    KeyStored,
    LinkSaved,
    PathFailed,
    Refusal,
    RefusalReason,
    RequestAbandoned,
    SaveLink,
    SealedHop,
    SendHop,
    StoreKey,
)
from qcinode.core.roles import Role
from qcinode.core.routing import LinkAdvert, LinkStateAdvert, LinkStateDatabase
from qcinode.errors import LocalProtocolError

RING = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]  # two node-disjoint paths a → c
SAES = {"app-a": "a", "app-c": "c", "app-b": "b", "app-a2": "a"}
CHAIN = [("n1", "n2"), ("n2", "n3"), ("n3", "n4"), ("n4", "n5")]
KEY_BYTES = 32
NEED = pad_bytes_needed(KEY_BYTES)


def ring(**kwargs: object) -> RelayNetwork:
    return relay_network(RING, SAES, **kwargs)  # type: ignore[arg-type]


def delivered(outcome: DeliverKeys | FailRequest) -> DeliverKeys:
    assert isinstance(outcome, DeliverKeys), outcome
    return outcome


def failed(outcome: DeliverKeys | FailRequest) -> FailRequest:
    assert isinstance(outcome, FailRequest), outcome
    return outcome


def assert_keys_stored(net: RelayNetwork, node: str, outcome: DeliverKeys, master: str = "app-a") -> None:
    """Every key the master got is stored, with the same bytes, at the slave's node."""
    stored = net.stored(node)
    for key in outcome.keys:
        assert stored[key.key_id][0] == master
        assert stored[key.key_id][2] == key.key, "the two copies of a key differ"


def assert_ledgers_sound(net: RelayNetwork) -> dict[str, tuple[int, int]]:
    """No end used a byte its initiator did not, nothing used twice, no pad named twice on the wire.

    Returns per link (bytes used at both ends, bytes spent by the initiator alone).
    """
    summary = {}
    for link_id, ends in net.ledgers().items():
        audit = audit_link(link_id, ends)
        assert audit.violations == [], audit.violations
        summary[link_id] = (audit.bytes_both, audit.bytes_initiator_only)
    assert_no_pad_named_twice(net.sent)
    return summary


def assert_no_pad_named_twice(sent: Iterable[SentHop]) -> None:
    used: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for hop in sent:
        for r in hop.pad:
            used.setdefault((hop.link_id, r.block_id), []).append((r.offset_bytes, r.end_bytes))
    for where, intervals in used.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"a pad byte of {where} was sent twice"


def pool_use(net: RelayNetwork) -> dict[str, int]:
    """Bytes used so far, per link and end."""
    return {f"{link_id}@{role}": sum(e[2] for e in entries) for link_id, ends in net.ledgers().items() for role, entries in ends.items()}  # type: ignore[misc]


# -- the happy paths ---------------------------------------------------------------------


def test_keys_cross_four_hops_and_both_ends_of_every_link_agree() -> None:
    net = relay_network(CHAIN, {"app-1": "n1", "app-5": "n5"}, seed=3)
    outcome = delivered(net.relay("app-1", ["app-5"], number=4, key_bits=512))
    assert [k.paths for k in outcome.keys] == [(("n1", "n2", "n3", "n4", "n5"),)] * 4
    assert len({k.key for k in outcome.keys}) == 4 and all(len(k.key) == 64 for k in outcome.keys)
    assert_keys_stored(net, "n5", outcome, master="app-1")
    for link_id, (both, only_initiator) in assert_ledgers_sound(net).items():
        assert both == 4 * pad_bytes_needed(64), link_id
        assert only_initiator == 0, f"{link_id}: with no fault the two ledgers are equal"
    # The trusted nodes forwarded every hop; nothing is left waiting anywhere.
    assert [net.nodes[n].engine.stats.forwarded for n in ("n2", "n3", "n4")] == [4, 4, 4]
    assert net.nodes["n1"].engine.stats.delivered == 4 and net.idle
    assert [type(n) for n in net.nodes["n5"].notices] == [KeyArrived] * 4


def test_the_same_seed_relays_the_same_keys_over_the_same_paths() -> None:
    def run(seed: int) -> tuple[object, ...]:
        net = ring(seed=seed, shuffle=True)
        for _ in range(3):
            net.request("app-a", ["app-c"], number=3)
        net.run()
        return tuple((k.key_id, k.key, k.paths) for o in net.outcomes.values() for k in delivered(o).keys)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_key_for_slaves_at_the_masters_node_and_elsewhere_reaches_all_of_them() -> None:
    net = ring(seed=1)
    outcome = delivered(net.relay("app-a", ["app-a2", "app-c", "app-b"], number=2))
    for node in ("a", "b", "c"):
        for key in outcome.keys:
            master, ours, stored = net.stored(node)[key.key_id]
            assert stored == key.key and master == "app-a"
            assert ours == tuple(s for s in ("app-a2", "app-c", "app-b") if SAES[s] == node)
    # One path per remote destination node, in node order; none for the local one.
    assert [len(k.paths) for k in outcome.keys] == [2, 2]
    assert [p[-1] for p in outcome.keys[0].paths] == ["b", "c"]


def test_given_keys_are_relayed_under_their_own_ids_from_another_source() -> None:
    # An interworking node relays a key that arrived from another network: the
    # master SAE lives elsewhere, the key and its ID are given.
    net = relay_network(CHAIN, {"app-1": "n1", "app-5": "n5"}, seed=4)
    given = [("6f1c0f5e-0000-4000-8000-000000000001", bytes(range(32))), ("6f1c0f5e-0000-4000-8000-000000000002", bytes(32))]
    request_id = net.request("app-1", ["app-5"], number=2, key_bits=256, keys=given, source="n2")
    net.run()
    outcome = delivered(net.outcomes[request_id])
    assert [(k.key_id, k.key) for k in outcome.keys] == given
    assert [k.paths for k in outcome.keys] == [(("n2", "n3", "n4", "n5"),)] * 2
    for key_id, key in given:
        assert net.stored("n5")[key_id] == ("app-1", ("app-5",), key)


@pytest.mark.parametrize(
    "keys",
    [
        [("k1", bytes(32))],  # one key for a request of two
        [("k1", bytes(32)), ("k1", bytes(32))],  # the same ID twice
        [("k1", bytes(32)), ("k2", bytes(31))],  # the wrong length
    ],
)
def test_given_keys_that_do_not_match_the_request_are_a_local_error(keys: list[tuple[str, bytes]]) -> None:
    engine = ring(seed=1).nodes["a"].engine
    event = KeysRequested("r", "app-a", ("app-c",), (("app-c", "c"),), number=2, key_bytes=32, keys=tuple(keys))
    with pytest.raises(LocalProtocolError, match="given keys"):
        engine.receive(event)


# -- retries and failures -------------------------------------------------------------------


def test_a_refused_hop_is_retried_on_another_path() -> None:
    net = ring(seed=2)
    # With equal paths the first is a > b > c (node names break the tie); b refuses every hop.
    net.fault("a", "b", HopFault.REFUSE)
    outcome = delivered(net.relay("app-a", ["app-c"]))
    assert outcome.keys[0].paths == (("a", "d", "c"),)
    assert_keys_stored(net, "c", outcome)
    (notice,) = [n for n in net.nodes["a"].notices if isinstance(n, PathFailed)]
    assert notice.paths == (("a", "b", "c"),) and [r.reason for r in notice.refusals] == [RefusalReason.PEER_UNAVAILABLE]
    stats = net.nodes["a"].engine.stats
    assert stats.failures_by_reason == Counter({RefusalReason.PEER_UNAVAILABLE: 1})
    assert (stats.started, stats.delivered, stats.failed, stats.hops_sent) == (1, 1, 0, 2)
    # The refused hop's pad was spent by a alone: wasted, never reused.
    summary = assert_ledgers_sound(net)
    assert summary["a-b"] == (0, NEED) and summary["d-a"] == (NEED, 0)


def test_every_path_failing_fails_the_request_and_reuses_no_pad() -> None:
    net = ring(seed=4)
    net.fault("a", "b", HopFault.FLIP)  # forged on the way: refused at b
    net.fault("a", "d", HopFault.LOSE)  # never arrives at d
    before = pool_use(net)
    refusal = failed(net.relay("app-a", ["app-c"], number=3)).refusal
    assert refusal.reason is RefusalReason.RELAY_FAILED
    assert "no path to c delivered the key" in refusal.detail and "authentication_failed" in refusal.detail
    assert net.stored("c") == {}, "no key may reach the slave of a failed request"
    # Both paths were tried for each key in flight; none was answered delivered.
    stats = net.nodes["a"].engine.stats
    assert stats.delivered == 0 and stats.failed == 3
    assert net.nodes["b"].engine.stats.failures_by_reason == Counter({RefusalReason.AUTHENTICATION_FAILED: 3})
    summary = assert_ledgers_sound(net)
    # Every pad was spent by a alone (forged: refused before use at b; lost: never seen at d).
    assert summary["a-b"] == (0, 3 * NEED) and summary["d-a"] == (0, 3 * NEED)
    assert summary["b-c"] == summary["c-d"] == (0, 0)
    after = pool_use(net)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"a-b@alice": 3 * NEED, "d-a@bob": 3 * NEED}
    assert net.idle


def test_attempts_stop_after_path_attempts_and_unstarted_keys_are_not_sent() -> None:
    net = relay_network(CHAIN, {"app-1": "n1", "app-5": "n5"}, seed=5, settings=RelaySettings(concurrency=1))
    net.fault("n2", "n3", HopFault.LOSE)
    refusal = failed(net.relay("app-1", ["app-5"], number=5)).refusal
    # One path only: one attempt, then no untried path is left; the other four keys never start.
    assert refusal.reason is RefusalReason.RELAY_FAILED
    assert net.nodes["n1"].engine.stats.started == 1
    assert [(h.sender, h.receiver) for h in net.sent] == [("n1", "n2"), ("n2", "n3")]
    assert net.nodes["n2"].engine.stats.failures_by_reason == Counter({RefusalReason.LOST: 1})
    assert_ledgers_sound(net)


def test_a_request_the_routes_cannot_carry_is_refused_up_front_with_no_pad_spent() -> None:
    # Each end can spend half of one 1 KiB block per link: 512 bytes, 8 hops of a 32-byte key.
    net = ring(seed=6, block_bytes=1024)
    before = pool_use(net)
    refusal = failed(net.relay("app-a", ["app-c"], number=9)).refusal
    assert refusal.reason is RefusalReason.INSUFFICIENT_KEY
    assert refusal.detail == "the network cannot carry 9 key(s) of 256 bits to app-c now"
    assert net.sent == [] and pool_use(net) == before and net.stored("c") == {}
    assert net.nodes["a"].engine.stats.failures_by_reason == Counter({RefusalReason.INSUFFICIENT_KEY: 1})
    # What the routes can carry is answered.
    assert net.nodes["a"].engine.capacity("c", KEY_BYTES) == 512 // NEED == 8
    delivered(net.relay("app-a", ["app-c"], number=8))
    # An unknown destination, or no path at all, is refused the same way.
    net.cut("a", "b")
    net.cut("a", "d")
    net.advertise()
    assert failed(net.relay("app-a", ["app-c"])).refusal.reason is RefusalReason.INSUFFICIENT_KEY
    assert failed(net.relay("app-a", ["nobody"])).refusal.reason is RefusalReason.INSUFFICIENT_KEY
    assert_ledgers_sound(net)


def test_the_routes_debit_what_a_request_will_spend_before_the_next_adverts() -> None:
    net = ring(seed=6, block_bytes=1024)  # 8 keys' worth on each path
    outcome = delivered(net.relay("app-a", ["app-c"], number=8))
    # The keys in flight together spread over both paths: each saw the others' debits.
    assert Counter(k.paths[0][1] for k in outcome.keys) == {"b": 4, "d": 4}
    # Until the next adverts the source counts them as spent, exactly as the pools did.
    debited = net.nodes["a"].engine.capacity("c", KEY_BYTES)
    assert debited == 4
    net.advertise()
    assert net.nodes["a"].engine.capacity("c", KEY_BYTES) == debited


def test_a_cut_link_is_refused_before_any_pad_is_spent_and_routed_around() -> None:
    net = ring(seed=8)
    net.cut("a", "b")  # the adverts do not know yet: the first path chosen crosses it
    outcome = delivered(net.relay("app-a", ["app-c"]))
    assert outcome.keys[0].paths == (("a", "d", "c"),)
    assert pool_use(net)["a-b@alice"] == pool_use(net)["a-b@bob"] == 0
    assert net.nodes["a"].engine.stats.failures_by_reason == Counter({RefusalReason.PEER_UNAVAILABLE: 1})
    assert [(h.sender, h.receiver) for h in net.sent] == [("a", "d"), ("d", "c")]
    assert_ledgers_sound(net)


def test_a_slow_answer_retried_elsewhere_stores_the_key_once() -> None:
    # The last hop arrives but its answer is lost: the source retries on the other path, with
    # the same key ID and key; the destination recognises it and answers delivered.
    net = ring(seed=9)
    net.fault("b", "c", HopFault.TIMEOUT, times=1)
    outcome = delivered(net.relay("app-a", ["app-c"]))
    (key,) = outcome.keys
    assert key.paths == (("a", "d", "c"),)
    (notice,) = [n for n in net.nodes["a"].notices if isinstance(n, PathFailed)]
    assert notice.paths == (("a", "b", "c"),) and "timeout" in notice.refusals[0].detail
    assert_keys_stored(net, "c", outcome)
    arrivals = [n for n in net.nodes["c"].notices if isinstance(n, KeyArrived)]
    assert [(n.key_id, n.duplicate) for n in arrivals] == [(key.key_id, False), (key.key_id, True)], (
        "stored on the first arrival, recognised as the same key on the second"
    )
    assert list(net.stored("c")) == [key.key_id]
    assert_ledgers_sound(net)


# -- multipath --------------------------------------------------------------------------


def test_multipath_shares_travel_node_disjoint_paths_and_combine_at_the_destination() -> None:
    net = ring(seed=10, settings=RelaySettings(multipath_shares=2))
    outcome = delivered(net.relay("app-a", ["app-c"], number=3))
    for key in outcome.keys:
        assert sorted(key.paths) == [("a", "b", "c"), ("a", "d", "c")]
    assert_keys_stored(net, "c", outcome)
    # Neither trusted node saw the key: each forwarded one share per key.
    assert net.nodes["b"].engine.stats.forwarded == net.nodes["d"].engine.stats.forwarded == 3
    assert_ledgers_sound(net)
    assert net.nodes["c"].engine.pending_keys == ()


def test_multipath_with_one_path_lost_retries_the_whole_split() -> None:
    net = ring(seed=11, settings=RelaySettings(multipath_shares=2))
    net.fault("d", "c", HopFault.LOSE, times=1)
    outcome = delivered(net.relay("app-a", ["app-c"]))
    assert_keys_stored(net, "c", outcome)
    (notice,) = [n for n in net.nodes["a"].notices if isinstance(n, PathFailed)]
    assert [r.reason for r in notice.refusals] == [RefusalReason.PEER_REFUSED]
    assert "lost" in notice.refusals[0].detail
    # The share that did arrive waits for its lost twin, apart from the retried split.
    assert len(net.nodes["c"].engine.pending_keys) == 1
    assert net.nodes["a"].engine.stats.hops_sent == 4 and net.nodes["d"].engine.stats.hops_sent == 2
    summary = assert_ledgers_sound(net)
    assert summary["c-d"] == (NEED, NEED), "the lost share's pad was spent at d alone"


def test_multipath_without_enough_disjoint_paths_is_refused() -> None:
    net = relay_network(CHAIN, {"app-1": "n1", "app-5": "n5"}, seed=12, settings=RelaySettings(multipath_shares=2))
    assert failed(net.relay("app-1", ["app-5"])).refusal.reason is RefusalReason.INSUFFICIENT_KEY
    assert net.sent == []


# -- incoming hops ----------------------------------------------------------------------


def test_a_duplicate_hop_arrival_is_refused_and_the_key_stored_once() -> None:
    net = relay_network(CHAIN[:2], {"app-1": "n1", "app-3": "n3"}, seed=13)
    net.fault("n1", "n2", HopFault.REPLAY, times=1)
    before = pool_use(net)
    outcome = delivered(net.relay("app-1", ["app-3"]))
    assert_keys_stored(net, "n3", outcome, master="app-1")
    (refused,) = [n for n in net.nodes["n2"].notices if isinstance(n, HopRefused)]
    assert refused.refusal.reason is RefusalReason.DUPLICATE
    assert net.nodes["n2"].engine.stats.forwarded == 1 and net.nodes["n2"].engine.stats.received == 1
    after = pool_use(net)
    assert after["n1-n2@bob"] - before["n1-n2@bob"] == NEED, "the copy consumed nothing more"
    summary = assert_ledgers_sound(net)
    assert summary["n1-n2"] == (NEED, 0)


def test_a_forged_hop_consumes_nothing_at_the_receiver() -> None:
    net = relay_network(CHAIN[:2], {"app-1": "n1", "app-3": "n3"}, seed=14)
    net.fault("n2", "n3", HopFault.FLIP)
    refusal = failed(net.relay("app-1", ["app-3"])).refusal
    assert "authentication_failed" in refusal.detail
    receiver = net.pool("n3", "n2")
    assert [e for e in receiver.audit() if e.initiator is receiver.role.peer] == [], "n3 used none of n2's pad"
    assert net.nodes["n3"].engine.stats.received == 0
    assert net.nodes["n3"].engine.stats.failures_by_reason == Counter({RefusalReason.AUTHENTICATION_FAILED: 1})
    summary = assert_ledgers_sound(net)
    assert summary["n2-n3"] == (0, NEED) and summary["n1-n2"] == (NEED, 0)


class _OneLink:
    def __init__(self, end: LinkEnd | None) -> None:
        self.end = end

    def link_to(self, peer: str) -> LinkEnd | None:
        return self.end if self.end is not None and peer == self.end.peer else None


def _pools(size: int = 512) -> tuple[LinkKeyPool, LinkKeyPool]:
    data = bytes(range(256)) * (size // 256)
    alice, bob = LinkKeyPool("x-y", Role.ALICE), LinkKeyPool("x-y", Role.BOB)
    for pool in (alice, bob):
        pool.add_block("x-y/0", data)
    return alice, bob


def _receiver(pool: LinkKeyPool) -> RelayEngine:
    return RelayEngine("y", neighbours=_OneLink(LinkEnd("x-y", "x", pool)), routes=LinkStateDatabase("y"), random_bytes=bytes)


def _hop(sender: LinkKeyPool, key_id: str = "k") -> SealedHop:
    """A hop x → y of a 32-byte key of zeros, sealed with the next pad of ``sender``."""
    header = RelayHeader("r", key_id, "m", ("s",), "x", "y", ("x", "y"), 0, 0, 1, KEY_BYTES)
    reservation = sender.reserve(NEED)
    ciphertext, tag = seal_hop(header, bytes(KEY_BYTES), sender.commit(reservation))
    return SealedHop(header, reservation.ranges, ciphertext, tag)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("wrong_hop", RefusalReason.BAD_HEADER),
        ("short_pad", RefusalReason.BAD_HEADER),
        ("unknown_block", RefusalReason.UNKNOWN_PAD),
        ("wrong_half", RefusalReason.BAD_HEADER),
        ("bad_tag", RefusalReason.AUTHENTICATION_FAILED),
    ],
)
def test_a_bad_incoming_hop_is_refused_with_its_reason_and_consumes_nothing(change: str, reason: RefusalReason) -> None:
    alice, bob = _pools()
    hop = _hop(alice)
    if change == "wrong_hop":
        hop = SealedHop(RelayHeader("r", "k", "m", ("s",), "x", "y", ("x", "z", "y"), 0, 0, 1, KEY_BYTES), hop.pad, hop.ciphertext, hop.tag)
    elif change == "short_pad":
        hop = SealedHop(hop.header, (KeyRange("x-y/0", 0, NEED - 1),), hop.ciphertext, hop.tag)
    elif change == "unknown_block":
        hop = SealedHop(hop.header, (KeyRange("x-y/9", 0, NEED),), hop.ciphertext, hop.tag)
    elif change == "wrong_half":
        hop = SealedHop(hop.header, (KeyRange("x-y/0", 256, NEED),), hop.ciphertext, hop.tag)
    else:
        hop = SealedHop(hop.header, hop.pad, hop.ciphertext, bytes(16))
    engine = _receiver(bob)
    actions = engine.receive(HopArrived("t", "x", hop, 0.0))
    assert [type(a) for a in actions] == [HopRefused, AnswerHop]
    answer = actions[1]
    assert isinstance(answer, AnswerHop) and answer.token == "t" and answer.refusal is not None
    assert answer.refusal.reason is reason and answer.refusal.detail
    assert bob.audit() == [] and engine.waiting == 0


def test_an_incoming_hop_is_saved_beside_the_store_answered_once_both_ended_and_a_failed_save_refuses_it() -> None:
    alice, bob = _pools()
    engine = _receiver(bob)
    # Store first, then the save: no answer before both ended.
    save, store = engine.receive(HopArrived("t1", "x", _hop(alice, "k1"), 0.0))
    assert isinstance(save, SaveLink) and save.link_id == "x-y" and save.also == ()
    assert isinstance(store, StoreKey) and store.key == bytes(KEY_BYTES) and store.key_id == "k1"
    assert len(bob.audit()) == 1, "consumed once the tag verified, before the save"
    assert engine.receive(KeyStored(store.ref)) == []
    answer = engine.receive(LinkSaved(save.ref))
    assert [type(a) for a in answer] == [KeyArrived, AnswerHop] and answer[1] == AnswerHop("t1")
    # The save first, then the store.
    save, store = engine.receive(HopArrived("t2", "x", _hop(alice, "k2"), 0.0))
    assert engine.receive(LinkSaved(save.ref)) == []
    answer = engine.receive(KeyStored(store.ref))
    assert [type(a) for a in answer] == [KeyArrived, AnswerHop] and answer[1] == AnswerHop("t2")
    # The save fails: refused although the key was stored (an orphan nobody learns the ID of).
    save, store = engine.receive(HopArrived("t3", "x", _hop(alice, "k3"), 0.0))
    assert engine.receive(KeyStored(store.ref)) == []
    refused = engine.receive(LinkSaved(save.ref, failure="database or disk is full"))
    assert [type(a) for a in refused] == [HopRefused, AnswerHop]
    assert refused[1] == AnswerHop("t3", Refusal(RefusalReason.STORAGE_FAILED, "node y cannot save key material: database or disk is full"))
    # A store refusal stands even when the save failed too: the hop is refused once, with the store's reason.
    save, store = engine.receive(HopArrived("t4", "x", _hop(alice, "k4"), 0.0))
    assert engine.receive(LinkSaved(save.ref, failure="database or disk is full")) == []
    refused = engine.receive(KeyStored(store.ref, Refusal(RefusalReason.STORE_REFUSED, "no such SAE")))
    assert refused[1] == AnswerHop("t4", Refusal(RefusalReason.STORE_REFUSED, "no such SAE"))
    assert engine.waiting == 0 and engine.stats.received == 2 and engine.stats.failed == 2


# -- the source machine, step by step -------------------------------------------------------


def _source(pool: LinkKeyPool, *, available: int = 4096) -> RelayEngine:
    routes = LinkStateDatabase("x")
    routes.originate([LinkAdvert("x-y", "y", True, available)], 1.0)
    routes.receive(LinkStateAdvert("y", 1, (LinkAdvert("x-y", "x", True, available),)), 1.0)
    counter = itertools.count()
    return RelayEngine(
        "x",
        neighbours=_OneLink(LinkEnd("x-y", "y", pool)),
        routes=routes,
        random_bytes=lambda n: bytes((next(counter) + i) % 256 for i in range(n)),
    )


def _request(number: int = 1) -> KeysRequested:
    return KeysRequested("q", "m", ("s",), (("s", "y"),), number, KEY_BYTES)


def test_the_source_saves_the_pad_before_it_sends_and_a_failed_save_sends_nothing() -> None:
    alice, _ = _pools()
    engine = _source(alice)
    (save,) = engine.receive(_request())
    assert isinstance(save, SaveLink) and save.link_id == "x-y"
    assert alice.available_bytes == 256 - NEED, "committed before the save: never handed out again"
    # The save fails: no SendHop, and with no other path the request fails.
    actions = engine.receive(LinkSaved(save.ref, failure="No space left on device"))
    assert not any(isinstance(a, SendHop) for a in actions)
    (fail,) = [a for a in actions if isinstance(a, FailRequest)]
    assert fail.refusal.reason is RefusalReason.RELAY_FAILED and "No space left on device" in fail.refusal.detail
    assert alice.available_bytes == 256 - NEED, "the pad whose save failed stays used"
    assert engine.open_requests == () and engine.waiting == 0


def test_the_source_answers_only_after_every_key_is_delivered() -> None:
    alice, _ = _pools()
    engine = _source(alice)
    saves = [a for a in engine.receive(_request(number=2)) if isinstance(a, SaveLink)]
    assert len(saves) == 2, "both keys start at once, each with its own pad"
    sends = [a for s in saves for a in engine.receive(LinkSaved(s.ref)) if isinstance(a, SendHop)]
    assert len(sends) == 2
    first, second = sends
    assert {r.offset_bytes for r in first.hop.pad}.isdisjoint({r.offset_bytes for r in second.hop.pad})
    assert engine.receive(HopAnswered(second.ref)) == []
    (answer,) = engine.receive(HopAnswered(first.ref))
    assert isinstance(answer, DeliverKeys)
    assert [k.paths for k in answer.keys] == [(("x", "y"),), (("x", "y"),)]
    assert engine.open_requests == ()
    with pytest.raises(LocalProtocolError, match="no action waits"):
        engine.receive(HopAnswered(first.ref))


def test_an_abandoned_request_is_forgotten_and_its_pad_stays_used() -> None:
    alice, _ = _pools()
    engine = _source(alice)
    (save,) = engine.receive(_request())
    assert isinstance(save, SaveLink)
    (send,) = engine.receive(LinkSaved(save.ref))
    assert isinstance(send, SendHop)
    assert (engine.open_requests, engine.waiting) == (("q",), 1)
    assert engine.receive(RequestAbandoned("q")) == []
    assert (engine.open_requests, engine.waiting) == ((), 0)
    assert alice.available_bytes == 256 - NEED
    with pytest.raises(LocalProtocolError):
        engine.receive(HopAnswered(send.ref))


def test_a_local_store_failure_fails_the_request_with_the_stores_reason() -> None:
    net = ring(seed=15)
    net.fail_store("a", "database or disk is full")
    refusal = failed(net.relay("app-a", ["app-a2"])).refusal
    assert refusal == Refusal(RefusalReason.STORAGE_FAILED, "database or disk is full")
    net.fail_store("a", None)
    assert_keys_stored(net, "a", delivered(net.relay("app-a", ["app-a2"])))


def test_a_destination_that_cannot_store_refuses_and_the_request_fails() -> None:
    net = ring(seed=16)
    net.fail_store("c")
    refusal = failed(net.relay("app-a", ["app-c"])).refusal
    assert refusal.reason is RefusalReason.RELAY_FAILED and "storage_failed" in refusal.detail
    assert net.nodes["c"].engine.stats.failures_by_reason[RefusalReason.STORAGE_FAILED] == 2  # both paths
    assert_ledgers_sound(net)


def test_a_transit_node_that_cannot_save_sends_nothing_on() -> None:
    net = relay_network(CHAIN[:2], {"app-1": "n1", "app-3": "n3"}, seed=17)
    net.fail_saves("n2", "n3")
    refusal = failed(net.relay("app-1", ["app-3"])).refusal
    assert "storage_failed" in refusal.detail
    assert [(h.sender, h.receiver) for h in net.sent] == [("n1", "n2")]
    summary = assert_ledgers_sound(net)
    assert summary["n2-n3"] == (0, NEED), "n2 committed the pad, could not save it, sent nothing"


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_concurrent_requests_never_share_a_pad_byte(seed: int) -> None:
    # Eight requests of three keys each, every way round the ring, their hops delivered in a
    # random order, some lost, some replayed, with just enough key for most of them.
    net = ring(seed=seed, shuffle=True, block_bytes=1024, settings=RelaySettings(concurrency=3))
    net.fault("b", "c", HopFault.LOSE, times=2)
    net.fault("a", "d", HopFault.REPLAY, times=2)
    pairs = [("app-a", "app-c"), ("app-c", "app-a"), ("app-b", "app-a"), ("app-a", "app-b")] * 2
    requests = {net.request(master, [slave], number=3): slave for master, slave in pairs}
    net.run()
    outcomes = {request_id: net.outcomes[request_id] for request_id in requests}
    assert sum(isinstance(o, DeliverKeys) for o in outcomes.values()) >= 4
    for request_id, outcome in outcomes.items():
        if isinstance(outcome, DeliverKeys):
            stored = net.stored(SAES[requests[request_id]])
            assert all(stored[k.key_id][2] == k.key for k in outcome.keys)
    key_ids = [k.key_id for o in outcomes.values() if isinstance(o, DeliverKeys) for k in o.keys]
    assert len(key_ids) == len(set(key_ids))
    assert len(net.sent) > 24
    assert_ledgers_sound(net)
    assert net.idle


# -- vocabulary -------------------------------------------------------------------------------


def test_refusal_reasons_are_a_closed_set_of_metric_labels() -> None:
    values = [reason.value for reason in RefusalReason]
    assert len(values) == len(set(values))
    assert all(v.isidentifier() and v == v.lower() for v in values)
    assert str(Refusal(RefusalReason.LOST, "gone")) == "lost: gone" and str(Refusal(RefusalReason.LOST)) == "lost"




# -- one transaction per transit hop; a request's keys travel together ----------------------


class _Links:
    def __init__(self, *ends: LinkEnd) -> None:
        self.ends = {end.peer: end for end in ends}

    def link_to(self, peer: str) -> LinkEnd | None:
        return self.ends.get(peer)


def _transit(incoming: LinkKeyPool, outgoing: LinkKeyPool) -> RelayEngine:
    """Node y between x (link x-y, y is Bob) and z (link y-z, y is Alice)."""
    return RelayEngine(
        "y", neighbours=_Links(LinkEnd("x-y", "x", incoming), LinkEnd("y-z", "z", outgoing)), routes=LinkStateDatabase("y"), random_bytes=bytes
    )


def _hop_to_z(sender: LinkKeyPool) -> SealedHop:
    """Hop 0 (x → y) of a key of zeros on its way x → y → z."""
    header = RelayHeader("r", "k", "m", ("s",), "x", "z", ("x", "y", "z"), 0, 0, 1, KEY_BYTES)
    reservation = sender.reserve(NEED)
    ciphertext, tag = seal_hop(header, bytes(KEY_BYTES), sender.commit(reservation))
    return SealedHop(header, reservation.ranges, ciphertext, tag)


def _outgoing_pool(size: int = 512) -> LinkKeyPool:
    pool = LinkKeyPool("y-z", Role.ALICE)
    if size:
        pool.add_block("y-z/0", bytes(range(256)) * (size // 256))
    return pool


def test_a_transit_hop_saves_both_links_in_one_transaction_before_it_goes_on() -> None:
    alice, bob = _pools()
    out = _outgoing_pool()
    engine = _transit(bob, out)
    (save,) = engine.receive(HopArrived("t1", "x", _hop_to_z(alice), 0.0))
    assert isinstance(save, SaveLink) and save.link_ids == ("x-y", "y-z"), "one save of both ledgers"
    assert len(bob.audit()) == 1 and out.available_bytes == 256 - NEED, "incoming pad consumed, next pad committed, both before the save"
    (send,) = engine.receive(LinkSaved(save.ref))
    assert isinstance(send, SendHop) and send.peer == "z" and send.link_id == "y-z" and send.hop.header.hop_index == 1
    assert engine.receive(HopAnswered(send.ref)) == [AnswerHop("t1")]
    assert (engine.stats.received, engine.stats.forwarded, engine.stats.hops_sent) == (1, 1, 1)
    # A failed save refuses the hop and sends nothing; the next link's pad stays used.
    (save,) = engine.receive(HopArrived("t2", "x", _hop_to_z(alice), 0.0))
    refused = engine.receive(LinkSaved(save.ref, failure="database or disk is full"))
    assert [type(a) for a in refused] == [HopRefused, AnswerHop]
    assert refused[1] == AnswerHop("t2", Refusal(RefusalReason.STORAGE_FAILED, "node y cannot save key material: database or disk is full"))
    assert out.available_bytes == 256 - 2 * NEED and engine.stats.hops_sent == 1 and engine.waiting == 0


def test_a_transit_hop_the_next_link_cannot_carry_saves_the_incoming_pad_alone_and_is_refused() -> None:
    alice, bob = _pools()
    engine = _transit(bob, _outgoing_pool(size=0))
    (save,) = engine.receive(HopArrived("t", "x", _hop_to_z(alice), 0.0))
    assert isinstance(save, SaveLink) and save.link_ids == ("x-y",)
    actions = engine.receive(LinkSaved(save.ref))
    assert [type(a) for a in actions] == [ForwardFailed, AnswerHop]
    answer = actions[1]
    assert isinstance(answer, AnswerHop) and answer.refusal is not None and answer.refusal.reason is RefusalReason.INSUFFICIENT_KEY
    assert len(bob.audit()) == 1 and engine.stats.received == 1 and engine.waiting == 0


def test_every_key_of_a_request_starts_at_once_so_the_driver_can_carry_them_in_one_message() -> None:
    alice, _ = _pools(size=32 * 256)
    engine = _source(alice, available=32 * 256)
    before = alice.available_bytes
    saves = engine.receive(_request(number=16))
    assert len(saves) == 16 and all(isinstance(s, SaveLink) and s.link_ids == ("x-y",) for s in saves)
    sends = [a for s in saves for a in engine.receive(LinkSaved(s.ref))]
    assert len(sends) == 16 and all(isinstance(a, SendHop) and a.link_id == "x-y" for a in sends)
    pads = [r for a in sends if isinstance(a, SendHop) for r in a.hop.pad]
    # Beside the pads, the link's pad stock: a sixteenth of what it had free, saved with them.
    assert engine.stocked_bytes == {"x-y": (before - NEED) // 16}
    assert sum(r.length_bytes for r in pads) == 16 * NEED == before - alice.available_bytes - (before - NEED) // 16
    answers = [a for s in sends if isinstance(s, SendHop) for a in engine.receive(HopAnswered(s.ref))]
    (answer,) = answers
    assert isinstance(answer, DeliverKeys) and len(answer.keys) == 16 and len({k.key_id for k in answer.keys}) == 16
