"""The relay's pad stock: hops that need no save of their own, and a pad that is on disk as used before it leaves."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from qcinode.core.pool import KeyRange, LinkKeyPool
from qcinode.core.relay.context import PAD_STOCK_BYTES, LinkEnd
from qcinode.core.relay.engine import RelayEngine
from qcinode.core.relay.harness import relay_network
from qcinode.core.relay.hop import RelayHeader, pad_bytes_needed, seal_hop
from qcinode.core.relay.messages import (
    AnswerHop,
    DeliverKeys,
    HopAnswered,
    HopArrived,
    KeysRequested,
    LinkSaved,
    RequestAbandoned,
    SaveLink,
    SealedHop,
    SendHop,
)
from qcinode.core.roles import Role
from qcinode.core.routing import LinkAdvert, LinkStateAdvert, LinkStateDatabase
from qcinode.errors import LocalProtocolError

KEY_BYTES = 32
NEED = pad_bytes_needed(KEY_BYTES)


class _Links:
    def __init__(self, *ends: LinkEnd) -> None:
        self.ends = {end.peer: end for end in ends}

    def link_to(self, peer: str) -> LinkEnd | None:
        return self.ends.get(peer)


def _pool(link_id: str, role: Role, half: int) -> LinkKeyPool:
    pool = LinkKeyPool(link_id, role)
    pool.add_block(f"{link_id}/0", (bytes(range(256)) * (2 * half // 256 + 1))[: 2 * half])
    return pool


def _source(pool: LinkKeyPool) -> tuple[RelayEngine, _Links]:
    routes = LinkStateDatabase("x")
    routes.originate([LinkAdvert("x-y", "y", True, 1 << 20)], 1.0)
    routes.receive(LinkStateAdvert("y", 1, (LinkAdvert("x-y", "x", True, 1 << 20),)), 1.0)
    counter = itertools.count()
    links = _Links(LinkEnd("x-y", "y", pool))
    engine = RelayEngine("x", neighbours=links, routes=routes, random_bytes=lambda n: bytes((next(counter) + i) % 256 for i in range(n)))
    return engine, links


def _request(request_id: str, number: int = 1) -> KeysRequested:
    return KeysRequested(request_id, "m", ("s",), (("s", "y"),), number, KEY_BYTES)


def _used_on_disk(state: dict[str, Any], role: Role) -> dict[str, list[tuple[int, int]]]:
    return {block["block_id"]: [(s, e) for s, e in block["used"][role.value]] for block in state["blocks"]}


def _covered(ranges: tuple[KeyRange, ...], used: dict[str, list[tuple[int, int]]]) -> bool:
    return all(any(s <= r.offset_bytes and r.end_bytes <= e for s, e in used.get(r.block_id, [])) for r in ranges)


def test_after_a_save_the_next_hops_go_at_once_with_pads_the_save_already_recorded_as_used() -> None:
    alice = _pool("x-y", Role.ALICE, 256 * 1024)
    engine, _ = _source(alice)
    (save,) = engine.receive(_request("q1"))
    assert isinstance(save, SaveLink) and save.link_ids == ("x-y",)
    assert engine.stocked_bytes == {"x-y": PAD_STOCK_BYTES}, "set aside with the first hop's pad, saved with it"
    on_disk = alice.to_state()  # what the driver's save writes
    (send,) = engine.receive(LinkSaved(save.ref))
    assert isinstance(send, SendHop)
    assert [type(a) for a in engine.receive(HopAnswered(send.ref))] == [DeliverKeys]
    # The next request: every hop is sent at once, no save of its own ...
    sends = engine.receive(_request("q2", number=4))
    assert len(sends) == 4 and all(isinstance(a, SendHop) for a in sends)
    # ... because each pad was on disk as used already: a node restarted from that save never reuses one.
    used = _used_on_disk(on_disk, Role.ALICE)
    assert all(isinstance(a, SendHop) and _covered(a.hop.pad, used) for a in sends)
    restarted = LinkKeyPool.from_state(on_disk)
    everything = restarted.reserve(restarted.available_bytes)
    assert not any(
        r.block_id == p.block_id and r.offset_bytes < p.end_bytes and p.offset_bytes < r.end_bytes
        for a in sends
        if isinstance(a, SendHop)
        for p in a.hop.pad
        for r in everything.ranges
    )
    assert engine.stocked_bytes == {"x-y": PAD_STOCK_BYTES - 4 * NEED}
    assert len({r for a in sends if isinstance(a, SendHop) for r in a.hop.pad}) == 4


def test_a_used_up_stock_makes_the_next_hop_save_again_with_a_new_stock() -> None:
    # A stock of exactly two pads: a sixteenth of what is free after the first pad.
    alice = _pool("x-y", Role.ALICE, NEED + 16 * 2 * NEED)
    engine, _ = _source(alice)
    (save,) = engine.receive(_request("q1"))
    assert engine.stocked_bytes == {"x-y": 2 * NEED}
    (send,) = engine.receive(LinkSaved(save.ref))
    engine.receive(HopAnswered(send.ref))
    for request_id in ("q2", "q3"):
        (send,) = engine.receive(_request(request_id))
        assert isinstance(send, SendHop), "from the stock"
        engine.receive(HopAnswered(send.ref))
    assert engine.stocked_bytes == {}
    (save,) = engine.receive(_request("q4"))
    assert isinstance(save, SaveLink), "no stock left: this hop saves, and sets a new one aside"
    assert set(engine.stocked_bytes) == {"x-y"}


def test_a_stock_smaller_than_a_pad_is_never_set_aside() -> None:
    alice = _pool("x-y", Role.ALICE, 256)  # a sixteenth of what stays free is below one pad
    engine, _ = _source(alice)
    (save,) = engine.receive(_request("q1"))
    assert isinstance(save, SaveLink) and engine.stocked_bytes == {}
    assert alice.available_bytes == 256 - NEED


@pytest.mark.parametrize("ending", ["failed_save", "abandoned"])
def test_a_stock_whose_save_failed_or_was_given_up_returns_to_the_pool(ending: str) -> None:
    alice = _pool("x-y", Role.ALICE, 256 * 1024)
    engine, _ = _source(alice)
    (save,) = engine.receive(_request("q1"))
    assert engine.stocked_bytes == {"x-y": PAD_STOCK_BYTES}
    if ending == "failed_save":
        engine.receive(LinkSaved(save.ref, failure="No space left on device"))
    else:
        engine.receive(RequestAbandoned("q1"))
    assert engine.stocked_bytes == {}
    assert alice.available_bytes == 256 * 1024 - NEED, "the hop's pad stays used, the stock is free again"
    (save,) = engine.receive(_request("q2"))
    assert isinstance(save, SaveLink), "a pending stock is never sent from"


def test_a_replaced_pool_drops_the_old_stock_and_the_next_hop_saves() -> None:
    alice = _pool("x-y", Role.ALICE, 256 * 1024)
    engine, links = _source(alice)
    (save,) = engine.receive(_request("q1"))
    (send,) = engine.receive(LinkSaved(save.ref))
    engine.receive(HopAnswered(send.ref))
    links.ends["y"] = LinkEnd("x-y", "y", LinkKeyPool.from_state(alice.to_state()))  # the driver reloaded the link
    (save,) = engine.receive(_request("q2"))
    assert isinstance(save, SaveLink)
    assert alice.reserved_bytes == 0, "the old pool's stock is released"


def _hop_to_z(sender: LinkKeyPool, key_id: str) -> SealedHop:
    header = RelayHeader("r", key_id, "m", ("s",), "x", "z", ("x", "y", "z"), 0, 0, 1, KEY_BYTES)
    reservation = sender.reserve(NEED)
    ciphertext, tag = seal_hop(header, bytes(KEY_BYTES), sender.commit(reservation))
    return SealedHop(header, reservation.ranges, ciphertext, tag)


def test_a_transit_hop_with_a_saved_stock_goes_on_beside_its_save_and_is_answered_once_both_ended() -> None:
    alice = _pool("x-y", Role.ALICE, 4096)
    bob = _pool("x-y", Role.BOB, 4096)
    out = _pool("y-z", Role.ALICE, 256 * 1024)
    engine = RelayEngine("y", neighbours=_Links(LinkEnd("x-y", "x", bob), LinkEnd("y-z", "z", out)), routes=LinkStateDatabase("y"), random_bytes=bytes)
    (save,) = engine.receive(HopArrived("t1", "x", _hop_to_z(alice, "k1"), 0.0))
    assert isinstance(save, SaveLink) and save.link_ids == ("x-y", "y-z"), "no stock yet: both ledgers, then the hop"
    (send,) = engine.receive(LinkSaved(save.ref))
    assert engine.receive(HopAnswered(send.ref)) == [AnswerHop("t1")]
    save, send = engine.receive(HopArrived("t2", "x", _hop_to_z(alice, "k2"), 0.0))
    assert isinstance(save, SaveLink) and save.link_ids == ("x-y",), "the incoming ledger alone"
    assert isinstance(send, SendHop) and send.link_id == "y-z", "sent beside the save"
    assert engine.receive(HopAnswered(send.ref)) == [], "not answered before the save ended"
    assert engine.receive(LinkSaved(save.ref)) == [AnswerHop("t2")]
    # The save fails after the rest of the path delivered: refused all the same, the pad stays used.
    save, send = engine.receive(HopArrived("t3", "x", _hop_to_z(alice, "k3"), 0.0))
    assert engine.receive(LinkSaved(save.ref, failure="database or disk is full")) == []
    refused = engine.receive(HopAnswered(send.ref))
    assert isinstance(refused[-1], AnswerHop) and refused[-1].refusal is not None and "cannot save" in refused[-1].refusal.detail
    assert (engine.stats.received, engine.stats.forwarded, engine.stats.failed) == (2, 3, 1)
    assert engine.waiting == 0


def test_released_stocks_leave_both_ends_saved_ledgers_equal() -> None:
    net = relay_network([("n1", "n2"), ("n2", "n3")], {"app-1": "n1", "app-3": "n3"}, seed=5, block_bytes=64 * 1024)
    for _ in range(3):
        outcome = net.relay("app-1", ["app-3"], number=2)
        assert isinstance(outcome, DeliverKeys)
    assert net.nodes["n1"].engine.stocked_bytes and net.nodes["n2"].engine.stocked_bytes
    for node in net.nodes.values():
        node.engine.release_stocks()
        assert node.engine.stocked_bytes == {}
    for a, b in (("n1", "n2"), ("n2", "n3")):
        alice, bob = (net.link(a, b).pools[name].to_state() for name in (a, b))
        for role in Role:
            assert _used_on_disk(alice, role) == _used_on_disk(bob, role), f"{a}-{b}, {role.value}'s half"


# -- the pool's part -------------------------------------------------------------


def test_a_reservation_saved_as_used_is_used_in_every_snapshot_until_committed_or_released() -> None:
    pool = _pool("x-y", Role.ALICE, 1024)
    plain = pool.reserve(100)
    stock = pool.reserve(300, saved_as_used=True)
    state = pool.to_state()
    assert _used_on_disk(state, Role.ALICE) == {"x-y/0": [(100, 400)]}, "the plain reservation is not recorded"
    assert LinkKeyPool.from_state(state).available_bytes == 1024 - 300
    head, rest = pool.split(stock, 64)
    assert head.length_bytes == 64 and rest is not None and rest.length_bytes == 236
    assert _used_on_disk(pool.to_state(), Role.ALICE) == {"x-y/0": [(100, 400)]}, "both parts stay recorded"
    pool.commit(head)
    assert _used_on_disk(pool.to_state(), Role.ALICE) == {"x-y/0": [(100, 400)]}
    pool.release(rest)
    pool.release(plain)
    assert _used_on_disk(pool.to_state(), Role.ALICE) == {"x-y/0": [(100, 164)]}, "only the committed head stays used"
    assert pool.available_bytes == 1024 - 64 and pool.reserved_bytes == 0


def test_split_follows_the_ranges_across_blocks_and_checks_its_arguments() -> None:
    pool = LinkKeyPool("x-y", Role.BOB)
    pool.add_block("x-y/0", bytes(200))
    pool.add_block("x-y/1", bytes(200))
    whole = pool.reserve(150)  # Bob's halves: [100, 200) of b0, then [100, 150) of b1
    assert whole.ranges == (KeyRange("x-y/0", 100, 100), KeyRange("x-y/1", 100, 50))
    head, rest = pool.split(whole, 120)
    assert head.ranges == (KeyRange("x-y/0", 100, 100), KeyRange("x-y/1", 100, 20))
    assert rest is not None and rest.ranges == (KeyRange("x-y/1", 120, 30),)
    with pytest.raises(LocalProtocolError, match="not open"):
        pool.split(whole, 10)
    for bad in (0, 31, True):
        with pytest.raises(LocalProtocolError, match="length_bytes"):
            pool.split(rest, bad)  # type: ignore[arg-type]
    last, nothing = pool.split(rest, 30)
    assert nothing is None and last.ranges == rest.ranges
    assert pool.commit(head) == bytes(120) and pool.commit(last) == bytes(30)
    assert pool.reserved_bytes == 0


def test_a_nodes_advert_counts_its_stock_with_what_the_pool_has_free() -> None:
    net = relay_network([("n1", "n2")], {"app-1": "n1", "app-2": "n2"}, seed=7, block_bytes=64 * 1024)
    assert isinstance(net.relay("app-1", ["app-2"]), DeliverKeys)
    stock = net.nodes["n1"].engine.stocked_bytes["n1-n2"]
    pool = net.link("n1", "n2").pools["n1"]
    assert stock > 0 and pool.reserved_bytes == stock
    net.advertise()
    (link,) = net.nodes["n2"].routes.adverts["n1"].links
    assert link.available_out_bytes == pool.available_bytes + stock
