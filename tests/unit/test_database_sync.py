"""Database exchange and the change hold's back-off (qcinode.core.routing.DatabaseSync, AdvertSchedule).

A neighbour that starts, restarts or misses a flood gets every advert we hold
once, so a network whose nodes come up one by one converges within a few
flooding rounds of the last one, not after a refresh period; a node whose
links keep changing is held back to the minimum interval, but the first
change after a quiet spell goes out within a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from qcinode.core.routing import (
    AdvertSchedule,
    AdvertTiming,
    DatabaseSync,
    LinkAdvert,
    LinkStateAdvert,
    LinkStateDatabase,
    advert_timing,
    links_change,
)
from qcinode.errors import LocalProtocolError

T0 = 1_700_000_000.0


# -- DatabaseSync ------------------------------------------------------------------


def test_a_starting_node_asks_one_neighbour_and_owes_nobody() -> None:
    sync = DatabaseSync(["b", "a"])
    assert sync.needs_database
    assert sync.due(T0) == [("a", True)]
    assert sync.due(T0) == []  # busy until done
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    assert not sync.needs_database
    assert sync.pending == {}
    assert sync.due(T0 + 100) == []


def test_an_ask_that_does_not_get_through_goes_to_the_next_neighbour() -> None:
    sync = DatabaseSync(["a", "b", "c"])
    assert sync.due(T0) == [("a", True)]
    sync.done("a", False, T0, asked=True)  # a is down
    assert sync.due(T0) == [("b", True)]
    sync.done("b", False, T0 + 0.1, asked=True, ask_delivered=True)  # the ask got there, a later call did not
    assert not sync.needs_database
    assert sync.pending == {}  # nothing owed: b was asked, not flooded


def test_a_failed_flood_owes_the_neighbour_an_exchange_without_asking() -> None:
    sync = DatabaseSync(["a"])
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    sync.send_failed("a")
    assert sync.pending == {"a": False}
    assert sync.due(T0 + 1) == [("a", False)]


def test_failed_exchanges_back_off_by_doubling_up_to_the_ceiling() -> None:
    sync = DatabaseSync(["a"], retry_first_s=1.0, retry_max_s=4.0)
    now, gaps = T0, []
    assert sync.due(now) == [("a", True)]
    for _ in range(4):
        sync.done("a", False, now, asked=True)
        later = now
        while not sync.due(later):
            later += 0.5
        gaps.append(later - now)
        now = later
    assert gaps == [1.0, 2.0, 4.0, 4.0]


def test_an_ask_from_the_neighbour_cancels_the_back_off() -> None:
    sync = DatabaseSync(["a"], retry_first_s=1.0, retry_max_s=16.0)
    sync.due(T0)
    sync.done("a", False, T0, asked=True)
    assert sync.due(T0 + 0.5) == []
    sync.asked("a", T0 + 0.5)
    assert sync.due(T0 + 0.5) == [("a", True)]


def test_a_call_from_a_neighbour_we_owe_cuts_its_back_off_short() -> None:
    sync = DatabaseSync(["a", "b"], retry_first_s=1.0, retry_max_s=16.0)
    assert sync.due(T0) == [("a", True)]
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    sync.send_failed("b")
    now = T0
    for _ in range(5):  # b stays down: the waits grow to 16 s
        while not sync.due(now):
            now += 0.5
        sync.done("b", False, now)
    assert sync.due(now + 15.0) == []
    sync.heard("b")  # b is back: an advert from it reached us
    assert sync.due(now + 0.5) == [("b", False)]
    sync.done("b", True, now + 0.5)
    sync.heard("a")  # from a neighbour we owe nothing: nothing due
    assert sync.due(now + 1.0) == []


def test_a_slow_neighbour_is_owed_an_exchange_that_waits_out_its_back_off() -> None:
    sync = DatabaseSync(["a"], retry_first_s=1.0, retry_max_s=16.0)
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    sync.send_failed("a", away=False)  # timed out
    assert sync.due(T0) == [("a", False)]
    sync.send_failed("a", away=False)
    sync.done("a", False, T0)
    sync.heard("a")  # it keeps sending: still slow, the back-off stands
    assert sync.due(T0 + 0.5) == []
    assert sync.due(T0 + 1.0) == [("a", False)]


def test_something_missed_during_a_running_exchange_keeps_the_debt() -> None:
    sync = DatabaseSync(["a"])
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    sync.send_failed("a")
    assert sync.due(T0 + 1) == [("a", False)]
    sync.send_failed("a")  # a flood that the running exchange may not carry
    sync.done("a", True, T0 + 1)
    assert sync.pending == {"a": False}
    assert sync.due(T0 + 2) == [("a", False)]
    sync.done("a", True, T0 + 2)
    assert sync.pending == {}


def _exchanges(sync: DatabaseSync, asks: list[float], until: float, step: float = 0.25) -> list[float]:
    """When exchanges with neighbour "a" start, with it asking at the times ``asks`` (each exchange ends at once)."""
    started: list[float] = []
    pending = sorted(asks)
    now = T0
    while now <= until:
        while pending and pending[0] <= now:
            sync.asked("a", pending.pop(0))
        for peer, _ in sync.due(now):
            started.append(now - T0)
            sync.done(peer, True, now)
        now += step
    return started


def test_a_neighbour_asking_every_second_gets_the_database_once_per_interval() -> None:
    sync = DatabaseSync(["a"], ask_interval_s=5.0)
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    asks = [T0 + 1.0 + k for k in range(20)]  # an ask a second for 20 s
    assert _exchanges(sync, asks, T0 + 30.0) == [1.0, 6.0, 11.0, 16.0, 21.0]


def test_an_ask_after_a_quiet_interval_is_answered_at_once() -> None:
    sync = DatabaseSync(["a"], ask_interval_s=5.0)
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    assert _exchanges(sync, [T0 + 1.0, T0 + 9.0, T0 + 14.5], T0 + 20.0) == [1.0, 9.0, 14.5]


def test_an_ask_during_a_running_exchange_waits_for_its_turn() -> None:
    sync = DatabaseSync(["a"], ask_interval_s=5.0)
    sync.due(T0)
    sync.done("a", True, T0, asked=True, ask_delivered=True)
    sync.asked("a", T0 + 1.0)
    assert sync.due(T0 + 1.0) == [("a", False)]
    sync.asked("a", T0 + 1.5)  # asks again while the exchange runs
    sync.done("a", True, T0 + 2.0)
    assert sync.due(T0 + 2.0) == []
    assert sync.due(T0 + 5.9) == []
    assert sync.due(T0 + 6.0) == [("a", False)]


@pytest.mark.parametrize("kwargs", [{"retry_first_s": 0}, {"retry_max_s": float("nan")}, {"retry_first_s": 5.0, "retry_max_s": 1.0}, {"ask_interval_s": -1.0}])
def test_bad_retry_periods_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        DatabaseSync(["a"], **kwargs)


# -- the change hold -----------------------------------------------------------------


def _timed_schedule(seed: int, timing: AdvertTiming) -> AdvertSchedule:
    return AdvertSchedule(
        np.random.default_rng(seed), refresh_s=timing.refresh_s, min_interval_s=timing.min_interval_s, first_interval_s=timing.first_interval_s
    )


def _links(available: int) -> list[LinkAdvert]:
    return [LinkAdvert("a-b", "b", True, available)]


def test_changes_after_a_quiet_spell_go_out_fast_then_back_off_to_the_minimum_interval() -> None:
    schedule = AdvertSchedule(np.random.default_rng(0), refresh_s=100.0, min_interval_s=10.0, first_interval_s=1.0)
    schedule.sent([LinkAdvert("a-b", "b", False, 0)], T0 - 100.0)  # the start, then a quiet spell
    now, sent_at, available = T0, [], 0
    while now < T0 + 60:
        available += 1000  # every second the pool moves by far more than a quarter of... at first
        links = [LinkAdvert("a-b", "b", now < T0 + 40, available)]  # and a link flaps
        if schedule.due(links, now) is not None:
            schedule.sent(links, now)
            sent_at.append(now - T0)
        now += 0.5
    gaps = np.diff(sent_at)
    assert list(gaps[:4]) == [1.0, 2.0, 4.0, 8.0]
    assert all(gap >= 10.0 for gap in gaps[4:])
    # Quiet (nothing changes) for the minimum interval plus the hold: the hold starts over.
    last = T0 + sent_at[-1]
    links = [LinkAdvert("a-b", "b", False, available)]
    quiet = last + 10.0 + schedule.hold_s
    schedule.sent(links, quiet)
    assert schedule.hold_s == 1.0
    assert schedule.due([LinkAdvert("a-b", "b", True, available)], quiet + 1.0) == "links_changed"


def test_a_starting_node_holds_its_link_changes_for_the_minimum_interval() -> None:
    """Start-up is no quiet spell: links coming up one by one are not each flooded over a large network."""
    big = _timed_schedule(0, advert_timing(100))
    assert big.due(_links(0), T0) == "first"
    big.sent([LinkAdvert("a-b", "b", False, 0)], T0)
    assert big.hold_s == 10.0
    assert big.due(_links(0), T0 + 9.5) is None  # the link came up: held
    assert big.due(_links(0), T0 + 10.0) == "links_changed"
    small = _timed_schedule(0, advert_timing(5))  # up to 10 nodes the minimum interval is 1 s: as fast as before
    small.sent([LinkAdvert("a-b", "b", False, 0)], T0)
    assert small.due(_links(0), T0 + 1.0) == "links_changed"


def test_the_hold_never_lets_an_origin_exceed_its_budget() -> None:
    """Worst case, a change every tick: at most one advert per minimum interval plus the back-off's short start."""
    timing = advert_timing(100)
    schedule = _timed_schedule(0, timing)
    sent = 0
    for tick in range(1000):
        links = _links(tick % 2 * 100_000)
        if schedule.due(links, T0 + tick) is not None:
            schedule.sent(links, T0 + tick)
            sent += 1
    # 1, 2, 4, 8 s, then every 10 s: 4 + 1000 / 10 adverts at most.
    assert sent <= 4 + 1000 / timing.min_interval_s + 1


def test_the_first_interval_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        AdvertSchedule(np.random.default_rng(0), min_interval_s=1.0, first_interval_s=2.0)
    with pytest.raises(LocalProtocolError):
        AdvertSchedule(np.random.default_rng(0), first_interval_s=0.0)
    assert advert_timing(100).first_interval_s == 1.0
    assert advert_timing(5) == AdvertTiming(10.0, 1.0, 35.0, 1.0)


# -- a network whose nodes come up one by one -----------------------------------------------


def _grid(side: int) -> dict[str, list[LinkAdvert]]:
    names = [f"g{i:02d}" for i in range(side * side)]
    links: dict[str, list[LinkAdvert]] = {name: [] for name in names}
    for i, name in enumerate(names):
        r, c = divmod(i, side)
        for j in ([i + 1] if c + 1 < side else []) + ([i + side] if r + 1 < side else []):
            peer = names[j]
            links[name].append(LinkAdvert(f"{name}-{peer}", peer, True, 1000))
            links[peer].append(LinkAdvert(f"{name}-{peer}", name, True, 1000))
    return links


def _converge(
    side: int, *, exchange: bool, start_gap: float = 1.0, seconds: int = 400, restart: tuple[str, float] | None = None
) -> float | None:
    """Nodes start one by one (``start_gap`` apart); flooding and exchanges as the node driver does them.

    A message to a node that has not started yet is lost (and, with ``exchange``, owes the
    neighbour an exchange). ``restart``: (node, when) it loses its database and is away for
    3 s, after everything converged. Returns the seconds from the last start until every
    node holds every origin, or None.
    """
    links = _grid(side)
    names = sorted(links)
    timing = advert_timing(len(names))
    start = {name: T0 + i * start_gap for i, name in enumerate(names)}
    dbs = {name: LinkStateDatabase(name, max_age_s=timing.max_age_s) for name in names}
    schedules = {
        name: _timed_schedule(i, timing) for i, name in enumerate(names)
    }
    syncs = {name: DatabaseSync([link.peer for link in links[name]]) for name in names}
    exchanges = [0]
    last_start = max(start.values())

    def deliver(sender: str, peer: str, advert: LinkStateAdvert, now: float, ask: bool = False) -> bool:
        if now < start[peer]:
            syncs[sender].send_failed(peer)
            return False
        if ask:
            syncs[peer].asked(sender, now)
        if dbs[peer].receive(advert, now):
            flood(peer, advert, now, exclude={sender, advert.origin})
        return True

    def flood(at: str, advert: LinkStateAdvert, now: float, exclude: set[str]) -> None:
        for link in links[at]:
            if link.peer not in exclude:
                deliver(at, link.peer, advert, now)

    for tick in range(seconds):
        now = T0 + tick
        if restart is not None and now == T0 + restart[1]:
            name = restart[0]
            start[name] = last_start = now + 3
            dbs[name] = LinkStateDatabase(name, max_age_s=timing.max_age_s)
            schedules[name] = _timed_schedule(99, timing)
            syncs[name] = DatabaseSync([link.peer for link in links[name]])
        for name in names:
            if now < start[name]:
                continue
            own = links[name]
            if schedules[name].due(own, now) is not None:
                schedules[name].sent(own, now)
                flood(name, dbs[name].originate(own, now), now, exclude=set())
            if exchange:
                for peer, ask in syncs[name].due(now):
                    adverts = [a for a in dbs[name].signed_adverts() if a.origin != peer]
                    sent = [deliver(name, peer, a, now, ask=ask and i == 0) for i, a in enumerate(adverts)]
                    exchanges[0] += 1
                    ok = all(sent) if adverts else not ask  # as the driver: an ask needs a call to ride on
                    syncs[name].done(peer, ok, now, asked=ask, ask_delivered=bool(sent) and sent[0])
            dbs[name].expire(now)
        if now >= last_start and all(len(db.nodes()) == len(names) for db in dbs.values()):
            if restart is not None and now < T0 + restart[1]:
                continue
            return now - last_start
    return None


def test_nodes_coming_up_one_by_one_converge_at_once_with_the_exchange() -> None:
    # 49 nodes started a second apart: without the exchange, those that started early
    # miss the adverts flooded before their neighbours were up and wait for a refresh
    # (49 s, jittered); with it, every node knows every other within seconds of the last start.
    without = _converge(7, exchange=False)
    with_exchange = _converge(7, exchange=True)
    assert with_exchange is not None and with_exchange <= 3.0
    assert without is None or without > 20.0


def test_a_restarted_node_gets_the_whole_database_back_from_the_neighbour_it_asks() -> None:
    # Converged long before t = 120 s; g24 (the middle of a 7 x 7 grid) loses everything
    # and is away for 3 s. Nobody floods to it meanwhile except refreshes: without its ask
    # it would wait for every origin's refresh (49 s).
    back = _converge(7, exchange=True, restart=("g24", 120.0))
    assert back is not None and back <= 2.0


def test_signed_adverts_are_what_the_origin_signed_not_our_debited_copy() -> None:
    db = LinkStateDatabase("a")
    db.originate([LinkAdvert("a-b", "b", True, 1000)], T0)
    other = LinkStateDatabase("b")
    advert = other.originate([LinkAdvert("a-b", "a", True, 1000)], T0)
    assert db.receive(advert, T0)
    db.debit(["b", "a"], 300)
    assert db.adverts["b"].links[0].available_out_bytes == 700
    assert [a.origin for a in db.signed_adverts()] == ["a", "b"]  # our own first
    assert db.signed_adverts()[1] == advert


# -- refresh or change --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "change"),
    [
        ([LinkAdvert("a-b", "b", True, 100_000)], None),  # the same: a refresh
        ([LinkAdvert("a-b", "b", True, 110_000)], None),  # a small move of the bytes: still a refresh
        ([LinkAdvert("a-b", "b", True, 140_000)], "available_changed"),
        ([LinkAdvert("a-b", "b", False, 100_000)], "links_changed"),
        ([LinkAdvert("a-b", "b", True, 100_000), LinkAdvert("a-c", "c", True, 0)], "links_changed"),
        ([], "links_changed"),
    ],
)
def test_links_change_tells_a_refresh_from_a_change(new: list[LinkAdvert], change: str | None) -> None:
    assert links_change([LinkAdvert("a-b", "b", True, 100_000)], new) == change
