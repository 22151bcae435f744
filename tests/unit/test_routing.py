"""Link-state routing: flooding, ageing, usable edges, k-shortest and disjoint paths."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

from qcinode.core.routing import AdvertRejected, LinkAdvert, LinkStateAdvert, LinkStateDatabase, RejectReason
from qcinode.errors import LocalProtocolError, RemoteProtocolError

T0 = 1_700_000_000.0  # a wall-clock time, seconds
S0 = int(T0 * 1000)  # the sequence an origin makes at T0


@dataclass(frozen=True, slots=True)
class _Link:
    link_id: str
    a: str
    b: str
    a_out: int = 1000
    b_out: int = 1000


@dataclass
class _Network:
    """Databases joined by links; adverts are delivered in-process, FIFO, until quiet."""

    links: list[_Link]
    max_age_s: float = 6.0
    dbs: dict[str, LinkStateDatabase] = field(default_factory=dict)
    alive: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)  # link IDs both ends report down
    delivered: int = 0

    def __post_init__(self) -> None:
        for link in self.links:
            for name in (link.a, link.b):
                if name not in self.dbs:
                    self.dbs[name] = LinkStateDatabase(name, max_age_s=self.max_age_s)
                    self.alive.add(name)

    def neighbours(self, node: str) -> list[str]:
        found = [link.b for link in self.links if link.a == node]
        found += [link.a for link in self.links if link.b == node]
        return sorted(found)

    def own_links(self, node: str) -> list[LinkAdvert]:
        out: list[LinkAdvert] = []
        for link in self.links:
            up = link.link_id not in self.down
            if link.a == node:
                out.append(LinkAdvert(link.link_id, link.b, up, link.a_out))
            elif link.b == node:
                out.append(LinkAdvert(link.link_id, link.a, up, link.b_out))
        return out

    def round(self, now: float) -> None:
        """Every live node originates; flood until no message is left."""
        queue: list[tuple[str, str, LinkStateAdvert]] = []
        for node in sorted(self.alive):
            advert = self.dbs[node].originate(self.own_links(node), now)
            queue += [(node, peer, advert) for peer in self.neighbours(node)]
        while queue:
            sender, receiver, advert = queue.pop(0)
            if receiver not in self.alive:
                continue
            self.delivered += 1
            assert self.delivered < 100_000, "flooding does not stop"
            if self.dbs[receiver].receive(advert, now):
                queue += [(receiver, p, advert) for p in self.neighbours(receiver) if p != sender]

    def expire(self, now: float) -> dict[str, list[str]]:
        return {node: self.dbs[node].expire(now) for node in sorted(self.alive)}


def _ring(n: int, out: int = 1000) -> list[_Link]:
    return [_Link(f"l{i}", f"n{i}", f"n{(i + 1) % n}", out, out) for i in range(n)]


def _chain(n: int) -> list[_Link]:
    return [_Link(f"l{i}", f"n{i}", f"n{i + 1}") for i in range(n - 1)]


def _converged(net: _Network) -> None:
    views = [net.dbs[node].adverts for node in sorted(net.alive)]
    assert all(view == views[0] for view in views)
    assert set(views[0]) == net.alive
    for node in net.alive:
        assert net.dbs[node].nodes() == net.alive


def _db_from(links: Iterable[_Link], local: str = "observer") -> LinkStateDatabase:
    """A database holding the adverts of every node of ``links`` (as a third party)."""
    net = _Network(list(links))
    net.round(T0)
    db = LinkStateDatabase(local)
    for node in sorted(net.dbs):
        db.receive(net.dbs[node].adverts[node], T0)
    return db


# -- flooding --------------------------------------------------------------------


@pytest.mark.parametrize("links", [_ring(6), _chain(5)], ids=["ring6", "chain5"])
def test_flooding_converges_to_one_database(links: list[_Link]) -> None:
    net = _Network(links)
    net.round(T0)
    _converged(net)
    first = net.delivered
    # Each advert crosses each link at most once per direction.
    assert first <= len(net.dbs) * 2 * len(links)
    net.round(T0 + 2)
    _converged(net)
    assert all(db.adverts[db.local_node].sequence == int((T0 + 2) * 1000) for db in net.dbs.values())


def test_flooding_converges_on_a_mesh_with_rounds_in_the_same_millisecond() -> None:
    links = _ring(5) + [_Link("x1", "n0", "n2"), _Link("x2", "n1", "n3"), _Link("x3", "n2", "n4")]
    net = _Network(links)
    for _ in range(3):
        net.round(T0)  # same clock: the sequence still increases
        _converged(net)
    assert net.dbs["n0"].adverts["n0"].sequence == int(T0 * 1000) + 2


def test_a_copy_already_held_or_older_is_not_flooded() -> None:
    db = LinkStateDatabase("b")
    new = LinkStateAdvert("a", S0 + 10, (LinkAdvert("l", "b", True, 5),))
    old = LinkStateAdvert("a", S0 + 9, (LinkAdvert("l", "b", False, 0),))
    assert db.receive(new, T0) is True
    assert db.receive(new, T0) is False
    with pytest.raises(AdvertRejected) as refused:
        db.receive(old, T0)
    assert refused.value.reason is RejectReason.STALE
    assert db.adverts["a"] == new
    assert db.rejections == {RejectReason.STALE: 1}


def test_own_adverts_are_ignored_but_never_beaten() -> None:
    db = LinkStateDatabase("a")
    mine = db.originate([LinkAdvert("l", "b", True, 5)], T0)
    forged = LinkStateAdvert("a", mine.sequence + 500, ())
    assert db.receive(forged, T0) is False
    assert db.adverts["a"] == mine
    assert db.originate([], T0).sequence == forged.sequence + 1


# -- ageing and restarts ---------------------------------------------------------


def test_dead_node_expires_and_paths_go_around_it() -> None:
    net = _Network(_ring(6), max_age_s=6.0)
    net.round(T0)
    assert net.dbs["n1"].paths("n1", "n3", 64, limit=1) == [["n1", "n2", "n3"]]
    net.alive.discard("n2")  # crashes silently; its neighbours' links still say up
    net.round(T0 + 2)
    net.round(T0 + 4)
    assert all(dropped == [] for dropped in net.expire(T0 + 6).values())
    # The neighbours still report their links to n2 up, but n2's advert is stale.
    assert net.dbs["n1"].paths("n1", "n3", 64, limit=1) == [["n1", "n2", "n3"]]
    net.round(T0 + 6.5)
    assert all(dropped == ["n2"] for dropped in net.expire(T0 + 6.5).values())
    for node in net.alive:
        assert "n2" not in net.dbs[node].nodes()
        assert net.dbs[node].paths("n1", "n3", 64) == [["n1", "n0", "n5", "n4", "n3"]]
    _converged(net)


def test_local_advert_never_expires() -> None:
    db = LinkStateDatabase("a", max_age_s=1.0)
    db.originate([], T0)
    assert db.expire(T0 + 100) == []
    assert db.nodes() == {"a"}


def test_restarted_origin_beats_its_old_adverts() -> None:
    before = LinkStateDatabase("a")
    old = [before.originate([LinkAdvert("l", "b", True, 1)], T0) for _ in range(50)]
    assert [adv.sequence for adv in old] == list(range(int(T0 * 1000), int(T0 * 1000) + 50))
    b = LinkStateDatabase("b")
    assert b.receive(old[-1], T0)
    after = LinkStateDatabase("a")  # the process restarted one second later: no memory
    fresh = after.originate([LinkAdvert("l", "b", True, 99)], T0 + 1)
    assert fresh.sequence > old[-1].sequence
    assert b.receive(fresh, T0 + 1) is True
    assert b.adverts["a"] == fresh


def test_a_stale_copy_does_not_resurrect_an_expired_origin() -> None:
    db = LinkStateDatabase("b", max_age_s=6.0)
    advert = LinkStateAdvert("a", S0 + 5, ())
    assert db.receive(advert, T0)
    assert db.expire(T0 + 7) == ["a"]
    with pytest.raises(AdvertRejected, match="stale"):
        db.receive(advert, T0 + 8)  # still circulating somewhere
    assert "a" not in db.nodes()
    assert db.receive(LinkStateAdvert("a", S0 + 6, ()), T0 + 9) is True


# -- usable edges ----------------------------------------------------------------


def _pair_db(a_link: LinkAdvert | None, b_link: LinkAdvert | None) -> LinkStateDatabase:
    db = LinkStateDatabase("a")
    db.originate([a_link] if a_link else [], T0)
    db.receive(LinkStateAdvert("b", S0 + 1, (b_link,) if b_link else ()), T0)
    return db


def test_a_link_is_usable_only_when_both_ends_say_up() -> None:
    both = _pair_db(LinkAdvert("l", "b", True, 100), LinkAdvert("l", "a", True, 100))
    assert both.usable_edges(10) == {"a": {"b": 100}, "b": {"a": 100}}
    assert both.paths("a", "b", 10) == [["a", "b"]]
    for a_up, b_up in [(True, False), (False, True), (False, False)]:
        db = _pair_db(LinkAdvert("l", "b", a_up, 100), LinkAdvert("l", "a", b_up, 100))
        assert db.usable_edges(10) == {}
        assert db.paths("a", "b", 10) == [] and db.paths("b", "a", 10) == []
    # Only one end lists it, or the IDs or peers do not match.
    assert _pair_db(LinkAdvert("l", "b", True, 100), None).usable_edges(0) == {}
    assert _pair_db(LinkAdvert("l", "b", True, 100), LinkAdvert("m", "a", True, 100)).usable_edges(0) == {}
    assert _pair_db(LinkAdvert("l", "b", True, 100), LinkAdvert("l", "c", True, 100)).usable_edges(0) == {}


def test_key_availability_excludes_a_link() -> None:
    db = _pair_db(LinkAdvert("l", "b", True, 63), LinkAdvert("l", "a", True, 0))
    assert db.usable_edges(63) == {"a": {"b": 63}}
    assert db.paths("a", "b", 64) == []
    assert db.paths("a", "b", 63) == [["a", "b"]]
    assert db.paths("b", "a", 1) == []  # an empty pool is not a path


def test_direction_matters() -> None:
    # Ring of 4; n0 -> n1 has plenty, n1 -> n0 has nothing on the same link.
    links = [_Link("l0", "n0", "n1", 500, 0)] + [
        _Link(f"l{i}", f"n{i}", f"n{(i + 1) % 4}") for i in range(1, 4)
    ]
    db = _db_from(links)
    assert db.paths("n0", "n1", 64, limit=1) == [["n0", "n1"]]
    assert db.paths("n1", "n0", 64) == [["n1", "n2", "n3", "n0"]]


def test_parallel_links_keep_the_best() -> None:
    db = _pair_db(LinkAdvert("l", "b", True, 100), LinkAdvert("l", "a", True, 1))
    db.originate([LinkAdvert("l", "b", True, 100), LinkAdvert("m", "b", True, 300)], T0)
    db.receive(LinkStateAdvert("b", S0 + 2, (LinkAdvert("l", "a", True, 1), LinkAdvert("m", "a", True, 2))), T0)
    assert db.usable_edges(0) == {"a": {"b": 300}, "b": {"a": 2}}


# -- paths -----------------------------------------------------------------------


def test_k_shortest_on_a_ring_gives_both_directions() -> None:
    db = _db_from(_ring(6))
    assert db.paths("n0", "n3", 64) == [["n0", "n1", "n2", "n3"], ["n0", "n5", "n4", "n3"]]
    assert db.paths("n0", "n1", 64) == [["n0", "n1"], ["n0", "n5", "n4", "n3", "n2", "n1"]]
    assert db.paths("n0", "n1", 64, limit=1) == [["n0", "n1"]]
    assert db.paths("n0", "n1", 64, limit=0) == []


def test_equal_hops_prefer_the_larger_bottleneck() -> None:
    links = [
        _Link("l0", "n0", "n1", 100, 100),
        _Link("l1", "n1", "n2", 100, 100),
        _Link("l2", "n2", "n3", 100, 100),
        _Link("l3", "n3", "n4", 900, 900),
        _Link("l4", "n4", "n5", 900, 900),
        _Link("l5", "n5", "n0", 900, 900),
    ]
    db = _db_from(links)
    assert db.paths("n0", "n3", 64) == [["n0", "n5", "n4", "n3"], ["n0", "n1", "n2", "n3"]]
    # ... but never over a shorter path.
    assert db.paths("n0", "n2", 64)[0] == ["n0", "n1", "n2"]


def test_source_equals_destination_and_unknown_nodes() -> None:
    db = _db_from(_ring(4))
    assert db.paths("n1", "n1", 64) == [["n1"]]
    assert db.disjoint_paths("n1", "n1", 64, 3) == [["n1"]]
    assert db.paths("n1", "zz", 64) == []
    assert db.paths("zz", "n1", 64) == []
    assert db.disjoint_paths("zz", "n1", 64, 2) == []


def _simple_paths(edges: dict[str, dict[str, int]], source: str, destination: str) -> list[list[str]]:
    found: list[list[str]] = []

    def walk(path: list[str]) -> None:
        if path[-1] == destination:
            found.append(list(path))
            return
        for nxt in edges.get(path[-1], {}):
            if nxt not in path:
                walk(path + [nxt])

    walk([source])
    return found


def _key(edges: dict[str, dict[str, int]], path: list[str]) -> tuple[int, int, tuple[str, ...]]:
    return (len(path) - 1, -min(edges[u][v] for u, v in zip(path, path[1:])), tuple(path))


def _random_links(rng: random.Random, n: int, p: float) -> list[_Link]:
    links = []
    for i, j in itertools.combinations(range(n), 2):
        if rng.random() < p:
            links.append(_Link(f"l{i}-{j}", f"n{i}", f"n{j}", rng.choice([0, 40, 70, 100]), rng.choice([0, 40, 70, 100])))
    return links


@pytest.mark.parametrize("seed", range(40))
def test_k_shortest_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    links = _random_links(rng, rng.randint(4, 8), 0.5)
    if not links:
        return
    db = _db_from(links)
    edges = db.usable_edges(50)
    nodes = sorted({link.a for link in links} | {link.b for link in links})
    for source, destination in itertools.permutations(nodes, 2):
        expected = sorted(_simple_paths(edges, source, destination), key=lambda p: _key(edges, p))
        assert db.paths(source, destination, 50, limit=5) == expected[:5]


# -- disjoint paths --------------------------------------------------------------


def test_disjoint_paths_in_a_ring_are_the_two_arcs() -> None:
    db = _db_from(_ring(7))
    assert db.disjoint_paths("n0", "n3", 64, 2) == [["n0", "n1", "n2", "n3"], ["n0", "n6", "n5", "n4", "n3"]]
    assert db.disjoint_paths("n0", "n3", 64, 5) == db.disjoint_paths("n0", "n3", 64, 2)
    assert db.disjoint_paths("n0", "n3", 64, 1) == [["n0", "n1", "n2", "n3"]]
    assert db.disjoint_paths("n0", "n3", 64, 0) == []


def test_disjoint_paths_escape_the_greedy_trap() -> None:
    # The shortest path s-a-b-t blocks every other; s-a-d-t and s-c-b-t are disjoint.
    pairs = [("s", "a"), ("a", "b"), ("b", "t"), ("s", "c"), ("c", "b"), ("a", "d"), ("d", "t")]
    db = _db_from(_Link(f"{u}{v}", u, v) for u, v in pairs)
    assert db.paths("s", "t", 64, limit=1) == [["s", "a", "b", "t"]]
    assert db.disjoint_paths("s", "t", 64, 2) == [["s", "a", "d", "t"], ["s", "c", "b", "t"]]


def test_disjoint_paths_respect_key_availability() -> None:
    links = _ring(6)
    links[4] = _Link("l4", "n4", "n5", 10, 10)  # too little key on the n4 - n5 link
    db = _db_from(links)
    assert db.disjoint_paths("n0", "n3", 64, 2) == [["n0", "n1", "n2", "n3"]]


def _best_disjoint(paths: list[list[str]], count: int) -> tuple[int, int]:
    """(most disjoint paths up to count, least total hops for that many) by brute force."""
    for k in range(min(count, len(paths)), 0, -1):
        best = None
        for combo in itertools.combinations(paths, k):
            inner = [set(p[1:-1]) for p in combo]
            if all(not (x & y) for x, y in itertools.combinations(inner, 2)) and sum(
                1 for p in combo if len(p) == 2
            ) <= 1:
                total = sum(len(p) - 1 for p in combo)
                best = total if best is None else min(best, total)
        if best is not None:
            return k, best
    return 0, 0


@pytest.mark.parametrize("seed", range(40))
def test_disjoint_paths_are_optimal(seed: int) -> None:
    rng = random.Random(1000 + seed)
    links = _random_links(rng, rng.randint(4, 7), 0.55)
    if not links:
        return
    db = _db_from(links)
    edges = db.usable_edges(50)
    nodes = sorted({link.a for link in links} | {link.b for link in links})
    for source, destination in itertools.permutations(nodes, 2):
        for count in (1, 2, 3):
            got = db.disjoint_paths(source, destination, 50, count)
            for path in got:
                assert path[0] == source and path[-1] == destination
                assert all(v in edges.get(u, {}) for u, v in zip(path, path[1:]))
                assert len(set(path)) == len(path)
            inner = [set(p[1:-1]) for p in got]
            assert all(not (x & y) for x, y in itertools.combinations(inner, 2))
            assert len({tuple(p) for p in got}) == len(got)
            assert got == sorted(got, key=lambda p: _key(edges, p))
            want = _best_disjoint(_simple_paths(edges, source, destination), count)
            assert (len(got), sum(len(p) - 1 for p in got)) == want


# -- validation and status -------------------------------------------------------

_GOOD = LinkAdvert("l", "b", True, 10)

_MALFORMED: list[tuple[str, Callable[[], object]]] = [
    ("empty origin", lambda: LinkStateAdvert("", S0 + 1, ())),
    ("origin not str", lambda: LinkStateAdvert(7, S0 + 1, ())),  # type: ignore[arg-type]
    ("negative sequence", lambda: LinkStateAdvert("a", -1, ())),
    ("bool sequence", lambda: LinkStateAdvert("a", True, ())),
    ("huge sequence", lambda: LinkStateAdvert("a", 2**63, ())),
    ("float sequence", lambda: LinkStateAdvert("a", 1.5, ())),  # type: ignore[arg-type]
    ("links not a sequence", lambda: LinkStateAdvert("a", S0 + 1, None)),  # type: ignore[arg-type]
    ("not a LinkAdvert", lambda: LinkStateAdvert("a", S0 + 1, (("l", "b", True, 1),))),  # type: ignore[arg-type]
    ("negative bytes", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("l", "b", True, -1),))),
    ("bool bytes", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("l", "b", True, True),))),
    ("up not bool", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("l", "b", 1, 5),))),  # type: ignore[arg-type]
    ("empty link id", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("", "b", True, 5),))),
    ("empty peer", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("l", "", True, 5),))),
    ("link to itself", lambda: LinkStateAdvert("a", S0 + 1, (LinkAdvert("l", "a", True, 5),))),
    ("duplicate link id", lambda: LinkStateAdvert("a", S0 + 1, (_GOOD, LinkAdvert("l", "c", True, 5)))),
    ("not an advert", lambda: {"origin": "a"}),
]


@pytest.mark.parametrize("make", [m for _, m in _MALFORMED], ids=[i for i, _ in _MALFORMED])
def test_malformed_adverts_are_rejected(make: Callable[[], object]) -> None:
    db = LinkStateDatabase("b")
    db.receive(LinkStateAdvert("a", S0, (_GOOD,)), T0)
    before = db.snapshot()
    with pytest.raises(RemoteProtocolError) as refused:
        db.receive(make(), T0)  # type: ignore[arg-type]
    assert isinstance(refused.value, AdvertRejected) and refused.value.reason is RejectReason.MALFORMED
    assert db.snapshot()["origins"] == before["origins"]
    assert db.snapshot()["rejected"] == {"malformed": 1}


def test_malformed_own_links_are_local_errors() -> None:
    db = LinkStateDatabase("a")
    with pytest.raises(LocalProtocolError):
        db.originate([_GOOD, _GOOD], T0)
    with pytest.raises(LocalProtocolError):
        db.originate([LinkAdvert("l", "a", True, 1)], T0)
    with pytest.raises(LocalProtocolError):
        db.originate([], float("nan"))
    with pytest.raises(LocalProtocolError):
        db.paths("a", "b", -1)
    with pytest.raises(LocalProtocolError):
        db.disjoint_paths("a", "b", 1, -1)
    with pytest.raises(LocalProtocolError):
        LinkStateDatabase("a", max_age_s=0)
    assert db.adverts == {}


def test_snapshot_is_json() -> None:
    net = _Network(_ring(3))
    net.round(T0)
    snap = net.dbs["n0"].snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["local_node"] == "n0"
    assert set(snap["origins"]) == {"n0", "n1", "n2"}
    assert snap["origins"]["n1"]["links"][0] == {
        "link_id": "l0", "peer": "n0", "up": True, "available_out_bytes": 1000,
    }


def test_debit_spends_each_hop_until_the_next_advert() -> None:
    net = _Network(_chain(3), max_age_s=6.0)  # n0 - n1 - n2, 1000 bytes each way
    net.round(T0)
    db = net.dbs["n0"]
    assert db.usable_edges(1) == {"n0": {"n1": 1000}, "n1": {"n0": 1000, "n2": 1000}, "n2": {"n1": 1000}}
    db.debit(["n0", "n1", "n2"], 600)
    edges = db.usable_edges(1)
    assert edges["n0"]["n1"] == 400 and edges["n1"]["n2"] == 400 and edges["n1"]["n0"] == 1000
    assert db.paths("n0", "n2", 401) == []  # the same bytes are not counted twice
    db.debit(["n0", "n1"], 10_000)  # never below zero
    assert "n0" not in db.usable_edges(1)
    db.debit(["n0", "n9", "n1"], 5)  # unknown hops are skipped
    net.round(T0 + 1.0)  # fresh adverts say what the nodes really have
    assert db.usable_edges(1)["n0"]["n1"] == 1000 and db.usable_edges(1)["n1"]["n2"] == 1000
    with pytest.raises(LocalProtocolError):
        db.debit(["n0", "n1"], -1)


def _edges_from(adverts: Iterable[LinkStateAdvert], need_bytes: int) -> dict[str, dict[str, int]]:
    """usable_edges as first written: every advert's links, both ends up, at least ``need_bytes`` left (the reference)."""
    adverts = list(adverts)
    up = {a.origin: {link.link_id: link.peer for link in a.links if link.up} for a in adverts}
    edges: dict[str, dict[str, int]] = {}
    for advert in sorted(adverts, key=lambda a: a.origin):
        for link in advert.links:
            if link.up and link.available_out_bytes >= need_bytes and up.get(link.peer, {}).get(link.link_id) == advert.origin:
                out = edges.setdefault(advert.origin, {})
                out[link.peer] = max(out.get(link.peer, 0), link.available_out_bytes)
    return edges


@pytest.mark.parametrize("seed", range(6))
def test_usable_edges_match_the_adverts_through_debits_new_adverts_and_expiry(seed: int) -> None:
    """The graph kept between adverts, less what debits took, is the graph of the (debited) adverts at every step."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(7)]
    pairs = [(a, b) for a, b in itertools.combinations(names, 2) if rng.random() < 0.5]
    links = {f"{a}-{b}-{k}": (a, b) for a, b in pairs for k in range(rng.choice((1, 1, 2)))}  # some nodes share two links
    db = LinkStateDatabase("n0", max_age_s=30.0)
    now = T0
    sequence = {name: S0 for name in names}

    def advert_of(origin: str) -> list[LinkAdvert]:
        return [
            LinkAdvert(link_id, b if a == origin else a, rng.random() < 0.9, rng.choice((0, 64, 512, 4096, rng.randrange(10_000))))
            for link_id, (a, b) in links.items()
            if origin in (a, b)
        ]

    for step in range(300):
        now += 0.5
        action = rng.random()
        if action < 0.15:
            ours = advert_of("n0")
            db.originate(ours, now)
            assert db.adverts["n0"].links == tuple(ours)  # a new advert starts with no debit
        elif action < 0.4:
            origin = rng.choice(names[1:])
            sequence[origin] = max(sequence[origin] + 1, int(now * 1000))
            theirs = tuple(advert_of(origin))
            db.receive(LinkStateAdvert(origin, sequence[origin], theirs), now)
            assert db.adverts[origin].links == theirs
        elif action < 0.45:
            db.expire(now + rng.choice((0.0, 31.0)))
        else:
            path = [rng.choice(names) for _ in range(rng.randint(2, 4))]
            db.debit([n for i, n in enumerate(path) if i == 0 or n != path[i - 1]], rng.choice((32, 64, 1024)))
        for need in (0, 64, 600):
            assert db.usable_edges(need) == _edges_from(db.adverts.values(), need), f"step {step}, need {need}"
