"""When a node originates its routing advert (qcinode.core.routing.AdvertSchedule).

On a change of its links at once (no more often than the minimum interval),
otherwise a slow refresh shortened by a bounded jitter; and flooding a
network whose links stand still costs a refresh's worth of messages, not a
second's. Also that a network on this schedule still converges and ages out
a dead origin with the default ``max_age_s``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from qcinode.core.routing import (
    CARRY_BYTES,
    DEFAULT_MAX_AGE_S,
    DEFAULT_MIN_INTERVAL_S,
    DEFAULT_REFRESH_S,
    LOW_WATER_BYTES,
    LOW_WATER_STEP_BYTES,
    AdvertSchedule,
    AdvertTiming,
    LinkAdvert,
    LinkStateAdvert,
    LinkStateDatabase,
    advert_timing,
)
from qcinode.errors import LocalProtocolError

T0 = 1_700_000_000.0


def _links(available: int = 1000, up: bool = True) -> list[LinkAdvert]:
    return [LinkAdvert("a-b", "b", up, available), LinkAdvert("a-c", "c", True, 5000)]


def _schedule(seed: int = 1) -> AdvertSchedule:
    return AdvertSchedule(np.random.default_rng(seed))


def test_the_first_advert_goes_at_once_then_nothing_until_something_changes() -> None:
    schedule = _schedule()
    assert schedule.due(_links(), T0) == "first"
    schedule.sent(_links(), T0)
    for dt in (0.5, 1.0, 3.0, 7.0):
        assert schedule.due(_links(), T0 + dt) is None


def test_a_link_going_down_is_advertised_after_the_minimum_interval_only() -> None:
    schedule = _schedule()
    schedule.sent(_links(), T0)
    assert schedule.due(_links(up=False), T0 + 0.5 * DEFAULT_MIN_INTERVAL_S) is None
    assert schedule.due(_links(up=False), T0 + DEFAULT_MIN_INTERVAL_S) == "links_changed"
    assert schedule.due(_links()[:1], T0 + DEFAULT_MIN_INTERVAL_S) == "links_changed"  # a link gone


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (100_000, 124_900, None),  # 19.9 % of the larger figure
        (100_000, 133_400, "available_changed"),  # 25.0 %
        (100_000, 75_100, None),
        (100_000, 75_000, "available_changed"),
        (0, 1, "available_changed"),  # key appears, less than one 256-bit key
        (0, CARRY_BYTES, "carry_changed"),  # the link can carry a key now: new paths exist
        (64, 0, "carry_changed"),  # key runs out: paths over the link are gone
        (CARRY_BYTES, CARRY_BYTES - 1, "carry_changed"),
        (100, 40, "carry_changed"),  # 40 bytes are no 256-bit key's hop (64): paths over the link are gone
        (0, 0, None),
        # A scarce pool (below LOW_WATER_BYTES): one 256-bit key's relay pad either way is a change.
        (LOW_WATER_BYTES - 1, LOW_WATER_BYTES - 1 + LOW_WATER_STEP_BYTES, "available_changed"),
        (LOW_WATER_BYTES - 1, LOW_WATER_BYTES - 1 + LOW_WATER_STEP_BYTES - 1, None),
        (LOW_WATER_BYTES + 100, LOW_WATER_BYTES + 100 - LOW_WATER_STEP_BYTES, None),  # neither figure scarce
        (LOW_WATER_BYTES + 10, LOW_WATER_BYTES + 10 - LOW_WATER_STEP_BYTES, "available_changed"),  # falling into scarcity
        (LOW_WATER_BYTES - 1, LOW_WATER_BYTES - 1 - 32, None),  # 32 bytes: half a 256-bit key's hop, no path changed
    ],
)
def test_available_key_moving_by_a_quarter_or_across_one_key_is_a_change(old: int, new: int, reason: str | None) -> None:
    schedule = _schedule()
    schedule.sent(_links(old), T0)
    assert schedule.due(_links(new), T0 + 2) == reason


def test_the_refresh_comes_within_its_jitter_and_is_reproducible() -> None:
    draws = []
    for seed in range(200):
        schedule = _schedule(seed)
        schedule.sent(_links(), T0)
        # The refresh time, found to 10 ms.
        t = next(t for t in np.arange(T0, T0 + DEFAULT_REFRESH_S + 0.02, 0.01) if schedule.due(_links(), float(t)) == "refresh")
        draws.append(t - T0)
    assert min(draws) >= 0.75 * DEFAULT_REFRESH_S - 0.01 and max(draws) <= DEFAULT_REFRESH_S + 0.01
    # Uniform on [7.5, 10] s: mean 8.75 s, standard deviation 2.5 / sqrt(12) = 0.72 s; 200 draws: 5 sigma = 0.26 s.
    assert np.mean(draws) == pytest.approx(0.875 * DEFAULT_REFRESH_S, abs=0.26)
    again = _schedule(3)
    again.sent(_links(), T0)
    first = _schedule(3)
    first.sent(_links(), T0)
    assert [again.due(_links(), T0 + dt) for dt in np.arange(0, 11, 0.1)] == [first.due(_links(), T0 + dt) for dt in np.arange(0, 11, 0.1)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"refresh_s": 0},
        {"min_interval_s": -1},
        {"refresh_s": 1.0, "min_interval_s": 2.0},
        {"jitter": 1.0},
        {"change_fraction": 0},
        {"refresh_s": float("inf")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        AdvertSchedule(np.random.default_rng(0), **kwargs)


def _ring(n: int) -> dict[str, list[LinkAdvert]]:
    names = [f"n{i}" for i in range(n)]
    links: dict[str, list[LinkAdvert]] = {name: [] for name in names}
    for i, name in enumerate(names):
        peer = names[(i + 1) % n]
        link_id = f"{name}-{peer}"
        links[name].append(LinkAdvert(link_id, peer, True, 1000))
        links[peer].append(LinkAdvert(link_id, name, True, 1000))
    return links


def _simulate(
    n: int, seconds: float, alive: set[str] | None = None, dead_from: float = 0.0, timing: AdvertTiming | None = None
) -> tuple[int, dict[str, LinkStateDatabase]]:
    """A ring of ``n`` nodes on the schedule, ticking every second; flooding as the node driver does it.

    Returns the advert messages sent (one per neighbour an advert goes to) and every node's database.
    """
    links = _ring(n)
    if timing is None:
        dbs = {name: LinkStateDatabase(name) for name in links}
        schedules = {name: AdvertSchedule(np.random.default_rng(i)) for i, name in enumerate(links)}
    else:
        dbs = {name: LinkStateDatabase(name, max_age_s=timing.max_age_s) for name in links}
        schedules = {
            name: AdvertSchedule(np.random.default_rng(i), refresh_s=timing.refresh_s, min_interval_s=timing.min_interval_s)
            for i, name in enumerate(links)
        }
    messages = 0
    for tick in range(int(seconds)):
        now = T0 + tick
        for name in links:
            if alive is not None and name not in alive and tick >= dead_from:
                continue
            own = links[name]
            if schedules[name].due(own, now) is None:
                dbs[name].expire(now)
                continue
            schedules[name].sent(own, now)
            queue: list[tuple[str, str, LinkStateAdvert]] = [(name, "", dbs[name].originate(own, now))]
            while queue:
                at, came_from, advert = queue.pop()
                for link in links[at]:
                    if link.peer in (came_from, advert.origin):
                        continue
                    if alive is not None and link.peer not in alive and tick >= dead_from:
                        continue
                    messages += 1
                    if dbs[link.peer].receive(advert, now):
                        queue.append((link.peer, at, advert))
            dbs[name].expire(now)
    return messages, dbs


def test_a_quiet_network_floods_a_refresh_worth_of_adverts_not_one_per_second() -> None:
    n, seconds = 12, 100
    messages, dbs = _simulate(n, seconds)
    assert all(db.nodes() == {f"n{i}" for i in range(n)} for db in dbs.values())  # converged
    # Every advert crosses each of the ring's n links about once (twice less the two ends' skips):
    # one-per-second origination would send about n * n * seconds messages; the refresh, between
    # seconds / 10 and seconds / 7.5 of those (plus the first round).
    every_second = n * n * seconds
    assert messages <= every_second / 7.5 + n * n
    assert messages >= every_second / 10 - n * n


def test_a_dead_origin_ages_out_with_the_default_max_age() -> None:
    n = 6
    alive = {f"n{i}" for i in range(n)} - {"n3"}
    _, dbs = _simulate(n, 20 + int(DEFAULT_MAX_AGE_S) + 2, alive=alive, dead_from=20)
    for name in alive:
        assert "n3" not in dbs[name].nodes(), name
        assert dbs[name].nodes() == alive


def test_the_periods_stretch_with_the_network() -> None:
    assert advert_timing(1) == advert_timing(10) == AdvertTiming(DEFAULT_REFRESH_S, DEFAULT_MIN_INTERVAL_S, DEFAULT_MAX_AGE_S)
    assert advert_timing(10).capacity_interval_s == advert_timing(10).first_wait_s == DEFAULT_MIN_INTERVAL_S  # small: as responsive as ever
    assert advert_timing(100) == AdvertTiming(
        refresh_s=100.0, min_interval_s=10.0, max_age_s=350.0, capacity_interval_s=100.0, first_wait_s=10.0
    )
    assert advert_timing(36).capacity_interval_s == pytest.approx(3.6 * 3.6)
    assert advert_timing(400).capacity_interval_s == advert_timing(400).refresh_s == 400.0
    for bad in (0, -3, 2.5, True):
        with pytest.raises(LocalProtocolError):
            advert_timing(bad)  # type: ignore[arg-type]


def test_each_node_handles_as_many_advert_messages_in_a_large_ring_as_in_a_small_one() -> None:
    """Flooding sends every advert over every link: the stretched refresh keeps a node's share flat."""
    per_node = {}
    for n in (10, 40):
        timing = advert_timing(n)
        seconds = int(4 * timing.refresh_s)
        messages, dbs = _simulate(n, seconds, timing=timing)
        assert all(len(db.nodes()) == n for db in dbs.values())
        per_node[n] = messages / n / seconds
    # A ring's n links carry each advert once: about 1 / (0.875 refresh) per node per second;
    # the 40-node ring's share is the 10-node one's within the jitter's spread (not 4 times it).
    assert per_node[40] == pytest.approx(per_node[10], rel=0.35)


# -- start-up and capacity-only changes in a large network -----------------------------


def _large(seed: int = 0, n: int = 100) -> AdvertSchedule:
    timing = advert_timing(n)
    return AdvertSchedule(
        np.random.default_rng(seed),
        refresh_s=timing.refresh_s,
        min_interval_s=timing.min_interval_s,
        first_interval_s=timing.first_interval_s,
        capacity_interval_s=timing.capacity_interval_s,
        first_wait_s=timing.first_wait_s,
    )


def test_the_first_advert_waits_for_the_links_to_come_up_at_most_the_first_wait() -> None:
    schedule = _large()
    coming_up = [LinkAdvert("a-b", "b", True, 0), LinkAdvert("a-c", "c", False, 0)]
    assert schedule.due(coming_up, T0) is None  # the start: one link still down
    assert schedule.due(coming_up, T0 + 9.0) is None
    assert schedule.due(coming_up, T0 + 10.0) == "first"  # the wait is over: what is up goes out
    every = _large()
    assert every.due(coming_up, T0) is None
    assert every.due([LinkAdvert("a-b", "b", True, 0), LinkAdvert("a-c", "c", True, 0)], T0 + 3.0) == "first"  # all up: at once
    assert _large().due([], T0) == "first"  # nothing to wait for


def test_a_small_network_and_a_default_schedule_send_the_first_advert_as_before() -> None:
    down = [LinkAdvert("a-b", "b", False, 0)]
    assert _schedule().due(down, T0) == "first"  # the default: at once
    small = _large(n=10)
    assert small.due(down, T0) is None
    assert small.due(down, T0 + DEFAULT_MIN_INTERVAL_S) == "first"  # within a second


def test_capacity_only_changes_wait_for_the_capacity_interval_paths_changes_do_not() -> None:
    timing = advert_timing(100)
    schedule = _large()
    schedule.sent([LinkAdvert("a-b", "b", True, 1000)], T0)
    doubled = [LinkAdvert("a-b", "b", True, 2000)]
    assert schedule.due(doubled, T0 + timing.min_interval_s) is None  # only capacity moved
    assert schedule.due([LinkAdvert("a-b", "b", True, 0)], T0 + timing.min_interval_s) == "carry_changed"  # no key: paths go
    assert schedule.due([LinkAdvert("a-b", "b", False, 1000)], T0 + timing.min_interval_s) == "links_changed"
    assert schedule.due(doubled, T0 + timing.capacity_interval_s) == "available_changed"  # with the refresh at the latest
    small = _large(n=10)  # up to 10 nodes a capacity change goes out after the hold, as ever
    small.sent([LinkAdvert("a-b", "b", True, 1000)], T0)
    assert small.due(doubled, T0 + DEFAULT_MIN_INTERVAL_S) == "available_changed"


@pytest.mark.parametrize("kwargs", [{"capacity_interval_s": -1.0}, {"capacity_interval_s": 11.0}, {"first_wait_s": 2.0}, {"first_wait_s": -0.1}])
def test_bad_capacity_interval_or_first_wait_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        AdvertSchedule(np.random.default_rng(0), refresh_s=10.0, min_interval_s=1.0, **kwargs)


def _filling_node(schedule: AdvertSchedule, seconds: int, rng: np.random.Generator) -> Counter[str]:
    """One node of four links started at 0: each link comes up within 30 s, then its pool fills from nothing.

    Each pool gains a privacy-amplified block of a few thousand bytes at random moments (a Poisson stream,
    one block per 20 s on average), as a 100 kHz link does; returns the originations by reason.
    """
    up_at = rng.uniform(0, 30, size=4)
    pools = np.zeros(4, dtype=int)
    reasons: Counter[str] = Counter()
    for tick in range(seconds):
        now = T0 + tick
        pools += (rng.random(4) < 1 / 20) * (now - T0 >= up_at) * rng.integers(2000, 6000, size=4)
        links = [LinkAdvert(f"l{i}", f"p{i}", bool(now - T0 >= up_at[i]), int(pools[i])) for i in range(4)]
        reason = schedule.due(links, now)
        if reason is not None:
            schedule.sent(links, now)
            reasons[reason] += 1
    return reasons


def test_a_large_network_floods_pool_filling_at_the_refresh_not_at_every_minimum_interval() -> None:
    """The start-up of a 100-node network: pools fill from nothing below LOW_WATER_BYTES for minutes.

    Before, every node re-originated at every minimum interval while its pools filled (each step of a
    scarce pool is a change); now capacity alone waits for the refresh, and a link that can first carry
    a key goes out at once. Seeded, 100 nodes' worth of draws.
    """
    timing = advert_timing(100)
    old_rule = dict(
        refresh_s=timing.refresh_s, min_interval_s=timing.min_interval_s, first_interval_s=timing.first_interval_s
    )
    now_total: Counter[str] = Counter()
    before_total: Counter[str] = Counter()
    for seed in range(100):
        now_total += _filling_node(_large(seed), 300, np.random.default_rng(seed))
        before_total += _filling_node(AdvertSchedule(np.random.default_rng(seed), **old_rule), 300, np.random.default_rng(seed))
    assert now_total["first"] == before_total["first"] == 100
    # Capacity alone: at most one advert per node per capacity interval (100 s) in 300 s, i.e. 3 each.
    assert now_total["available_changed"] <= 3 * 100
    # Every link comes up and can carry a key within the 300 s: each is advertised, held together per node.
    assert now_total["carry_changed"] >= 100
    assert sum(now_total.values()) < sum(before_total.values()) / 2
    assert before_total["available_changed"] > 5 * now_total["available_changed"]


def test_carrying_a_key_means_holding_one_256_bit_keys_relay_pad() -> None:
    from qcinode.core.relay.hop import pad_bytes_needed

    assert CARRY_BYTES == pad_bytes_needed(32)


def test_a_scarce_pools_advert_step_is_one_256_bit_keys_relay_pad() -> None:
    from qcinode.core.relay.hop import pad_bytes_needed

    assert LOW_WATER_STEP_BYTES == pad_bytes_needed(32)
