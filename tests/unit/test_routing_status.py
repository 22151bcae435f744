"""What the routing status says about convergence: nodes known and links both ends advertise up (the bench's test)."""

from __future__ import annotations

from qcinode.status import AdvertisedLink, HeldAdvert, RoutingStatus


def _held(*links: tuple[str, str, bool]) -> HeldAdvert:
    return HeldAdvert(sequence=1, received_at=0.0, links=tuple(AdvertisedLink(link_id, peer, up, 64) for link_id, peer, up in links))


def test_known_nodes_counts_this_node_once_before_and_after_its_own_advert() -> None:
    others = {"b": _held(("a-b", "a", True))}
    assert RoutingStatus("a", 35.0).known_nodes == 1
    assert RoutingStatus("a", 35.0, origins=others).known_nodes == 2
    assert RoutingStatus("a", 35.0, origins={**others, "a": _held(("a-b", "b", True))}).known_nodes == 2


def test_a_link_counts_as_up_only_when_both_ends_advertise_it_up_naming_each_other() -> None:
    origins = {
        "a": _held(("a-b", "b", True), ("a-c", "c", True), ("a-d", "d", True)),
        "b": _held(("a-b", "a", True)),  # both ends up: counted once
        "c": _held(("a-c", "a", False)),  # one end down
        "d": _held(("a-x", "a", True)),  # another link ID
    }
    assert RoutingStatus("a", 35.0, origins=origins).links_up_both_ways == 1
    assert RoutingStatus("a", 35.0, origins={"a": origins["a"]}).links_up_both_ways == 0  # the other ends unknown
