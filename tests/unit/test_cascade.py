"""Tests for the batched, sans-IO Cascade (``qcinode.core.cascade``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.cascade import (
    CascadeParams,
    CascadeResponder,
    CascadeSession,
    ParityQuery,
    ParityReply,
    cascade_block_sizes,
    pass_permutation,
)
from qcinode.core.estimation import h2
from qcinode.errors import ConfigError, LocalProtocolError, RemoteProtocolError

Bits = npt.NDArray[np.uint8]


@dataclass
class Outcome:
    """What one reconciliation run produced."""

    alice: CascadeResponder
    bob: CascadeSession
    queries: list[ParityQuery]
    questions: int
    residual_errors: int
    actual_qber: float

    @property
    def efficiency(self) -> float:
        return self.bob.leak_bits / (self.alice_key_bits * h2(self.actual_qber))

    @property
    def alice_key_bits(self) -> int:
        return self.bob.corrected_key.size


def noisy_pair(n: int, qber: float, seed: int) -> tuple[Bits, Bits]:
    """Alice's key and Bob's copy with Bernoulli(qber) errors."""
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors


def reconcile(
    alice_key: Bits,
    bob_key: Bits,
    qber_estimate: float,
    seed: int,
    params: CascadeParams = CascadeParams(),  # noqa: B008 - frozen: one shared default is safe
    max_rounds: int = 100_000,
) -> Outcome:
    """Pump queries and replies between the two sides until Bob is done."""
    alice = CascadeResponder(alice_key)
    bob = CascadeSession(bob_key, qber_estimate, np.random.default_rng(seed), params)
    queries: list[ParityQuery] = []
    query: ParityQuery | None = bob.start()
    while query is not None:
        queries.append(query)
        assert len(queries) <= max_rounds, "session did not terminate"
        query = bob.receive(alice.receive(query))
    assert bob.is_done
    residual = int(np.count_nonzero(bob.corrected_key != alice_key))
    actual = float(np.count_nonzero(alice_key != bob_key)) / alice_key.size
    return Outcome(alice, bob, queries, sum(q.pass_ids.size for q in queries), residual, actual)


def assert_accounting(out: Outcome) -> None:
    """Leak equals the questions answered, on both sides."""
    assert out.alice.leak_bits == out.questions
    assert out.bob.leak_bits == out.questions
    assert out.bob.rounds == len(out.queries) == out.alice.rounds


# ------------------------------------------------------------------ efficiency


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.03, 0.05])
def test_corrects_and_efficiency_at_1e5_bits(qber: float) -> None:
    efficiencies = []
    for seed in range(3):
        alice_key, bob_key = noisy_pair(100_000, qber, seed)
        out = reconcile(alice_key, bob_key, qber, seed=1000 + seed)
        assert out.residual_errors == 0
        assert_accounting(out)
        assert out.bob.errors_corrected == np.count_nonzero(alice_key != bob_key)
        efficiencies.append(out.efficiency)
    assert 1.0 < float(np.mean(efficiencies)) <= 1.10


@pytest.mark.parametrize("qber", [0.02, 0.05])
@pytest.mark.parametrize("misestimate", [0.7, 1.3])
def test_robust_to_a_qber_estimate_off_by_30_percent(qber: float, misestimate: float) -> None:
    efficiencies = []
    for seed in range(2):
        alice_key, bob_key = noisy_pair(100_000, qber, seed)
        out = reconcile(alice_key, bob_key, qber * misestimate, seed=2000 + seed)
        assert out.residual_errors == 0
        assert_accounting(out)
        efficiencies.append(out.efficiency)
    # Power-of-two block sizes make f saw-toothed in k1*Q, and a wrong
    # estimate moves k1*Q off its design range [0.6, 1.2): a little slack.
    assert float(np.mean(efficiencies)) <= 1.12


def test_rounds_are_batched_per_level_not_per_block() -> None:
    alice_key, bob_key = noisy_pair(100_000, 0.02, 7)
    out = reconcile(alice_key, bob_key, 0.02, seed=7)
    # ~3000 first-pass blocks are bisected together: a round is a level.
    assert out.bob.rounds < 400
    first_bisection = out.queries[1]
    assert first_bisection.pass_ids.size > 500
    assert set(first_bisection.pass_ids.tolist()) == {0}


def test_first_query_introduces_every_pass_and_infers_last_blocks() -> None:
    n = 10_000
    params = CascadeParams()
    sizes = cascade_block_sizes(n, 0.02, params)
    bob = CascadeSession(np.zeros(n, dtype=np.uint8), 0.02, np.random.default_rng(0), params)
    query = bob.start()
    assert len(query.seeds) == params.max_passes - 1
    blocks = [-(-n // k) for k in sizes]
    # Pass 0: every block; later passes: all but the last (whole-key parity).
    assert query.pass_ids.size == blocks[0] + sum(b - 1 for b in blocks[1:])
    assert query.pass_ids.dtype == np.int32
    assert query.starts.dtype == np.int64 and query.ends.dtype == np.int64


def test_block_sizes_are_powers_of_two_then_sixteenths_of_the_key() -> None:
    sizes = cascade_block_sizes(100_000, 0.02, CascadeParams())
    assert sizes[:2] == [32, 128]
    # k2 follows its own power-of-two ceiling: 4 k1 or 2 k1 depending on k1*Q.
    assert cascade_block_sizes(100_000, 0.05, CascadeParams())[:2] == [16, 64]
    assert cascade_block_sizes(100_000, 0.03, CascadeParams())[:2] == [32, 64]
    assert sizes[2:] == [6250] * (len(sizes) - 2)  # 16 blocks each
    assert cascade_block_sizes(100, 0.0, CascadeParams())[:2] == [100, 100]


# ------------------------------------------------------------------ properties


def test_random_sizes_and_qbers_terminate_with_consistent_accounting() -> None:
    stats = {"runs": 0, "failures": 0}

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(
        n=st.integers(1_000, 20_000),
        qber=st.floats(0.0, 0.11),
        seed=st.integers(0, 2**32 - 1),
    )
    def run(n: int, qber: float, seed: int) -> None:
        alice_key, bob_key = noisy_pair(n, qber, seed)
        out = reconcile(alice_key, bob_key, qber, seed=seed, max_rounds=5_000)
        assert_accounting(out)
        # A failure is left to the verification hash; it must stay rare and small.
        assert out.residual_errors <= 8
        stats["runs"] += 1
        stats["failures"] += out.residual_errors > 0

    run()
    assert stats["failures"] <= max(1, stats["runs"] // 20)


def test_lying_responder_is_caught_or_finishes() -> None:
    """Random answers: Bob ends (done or RemoteProtocolError), never loops."""
    n = 2_000
    caught = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        key = rng.integers(0, 2, n, dtype=np.uint8)
        bob = CascadeSession(key, 0.05, np.random.default_rng(seed))
        query: ParityQuery | None = bob.start()
        questions = 0
        try:
            for _ in range(10_000):
                if query is None:
                    break
                questions += query.pass_ids.size
                noise = rng.integers(0, 2, query.pass_ids.size, dtype=np.uint8)
                query = bob.receive(ParityReply(round=query.round, parities=noise))
            assert query is None
            assert bob.leak_bits == questions
        except RemoteProtocolError:
            caught += 1
            with pytest.raises(LocalProtocolError):
                bob.receive(ParityReply(round=0, parities=np.zeros(0, dtype=np.uint8)))
    assert caught > 0


# ------------------------------------------------------------------ QBER 0 and edges


def test_qber_zero_leaks_little_and_takes_one_round() -> None:
    key = np.random.default_rng(3).integers(0, 2, 100_000, dtype=np.uint8)
    out = reconcile(key, key.copy(), 0.0, seed=3)
    assert out.residual_errors == 0
    assert out.bob.errors_corrected == 0
    assert out.bob.rounds == 1
    # Only the top-level parities: k1 = 8192 at the 1e-4 QBER floor.
    blocks = [-(-100_000 // k) for k in out.bob.block_sizes]
    assert out.bob.leak_bits == blocks[0] + sum(b - 1 for b in blocks[1:]) <= 80
    assert_accounting(out)


def test_error_free_key_with_nonzero_estimate_costs_only_top_level_parities() -> None:
    key = np.random.default_rng(4).integers(0, 2, 50_000, dtype=np.uint8)
    out = reconcile(key, key.copy(), 0.03, seed=4)
    assert out.bob.rounds == 1
    assert out.bob.errors_corrected == 0


@pytest.mark.parametrize("n", [1, 2, 3, 17])
def test_tiny_keys(n: int) -> None:
    for seed in range(5):
        alice_key, bob_key = noisy_pair(n, 0.3, seed)
        out = reconcile(alice_key, bob_key, 0.3, seed=seed)
        assert_accounting(out)
        # A single bit is always fixed: its parity is its value.
        if n == 1:
            assert out.residual_errors == 0


@pytest.mark.parametrize(
    "params",
    [
        CascadeParams(waves=(1, 3, 1)),
        CascadeParams(lookahead_below=32, lookahead_depth=3),
        CascadeParams(max_passes=1),
        CascadeParams(max_passes=16, first_block_factor=1.0, later_pass_blocks=(2,)),
    ],
    ids=["waves", "lookahead", "one-pass", "opt7-like"],
)
def test_variants_correct(params: CascadeParams) -> None:
    alice_key, bob_key = noisy_pair(20_000, 0.03, 11)
    out = reconcile(alice_key, bob_key, 0.03, seed=11, params=params)
    assert_accounting(out)
    if params.max_passes > 1:
        assert out.residual_errors == 0
    else:
        # One pass only fixes odd blocks; even ones keep their errors.
        assert out.residual_errors < np.count_nonzero(alice_key != bob_key)


# ------------------------------------------------------------------ validation


def _valid_query() -> ParityQuery:
    return ParityQuery(
        round=0,
        seeds=(),
        pass_ids=np.zeros(2, dtype=np.int32),
        starts=np.array([0, 5], dtype=np.int64),
        ends=np.array([5, 10], dtype=np.int64),
    )


def _mutations() -> dict[str, Callable[[ParityQuery], ParityQuery]]:
    return {
        "unknown-pass": lambda q: replace(q, pass_ids=np.array([0, 1], dtype=np.int32)),
        "negative-pass": lambda q: replace(q, pass_ids=np.array([0, -1], dtype=np.int32)),
        "start-equals-end": lambda q: replace(q, ends=np.array([5, 5], dtype=np.int64)),
        "start-after-end": lambda q: replace(q, starts=np.array([6, 5], dtype=np.int64)),
        "negative-start": lambda q: replace(q, starts=np.array([-1, 5], dtype=np.int64)),
        "end-past-key": lambda q: replace(q, ends=np.array([5, 11], dtype=np.int64)),
        "lengths-differ": lambda q: replace(q, ends=np.array([5], dtype=np.int64)),
        "wrong-round": lambda q: replace(q, round=1),
        "float-array": lambda q: replace(q, starts=np.array([0.0, 5.0])),
        "2d-array": lambda q: replace(q, starts=np.array([[0, 5]], dtype=np.int64)),
        "list-not-array": lambda q: replace(q, starts=[0, 5]),
        "negative-seed": lambda q: replace(q, seeds=(-3,)),
        "seed-not-int": lambda q: replace(q, seeds=("7",)),
        "too-many-passes": lambda q: replace(q, seeds=tuple(range(64))),
    }


@pytest.mark.parametrize("mutation", sorted(_mutations()))
def test_malformed_query_is_a_remote_protocol_error(mutation: str) -> None:
    alice = CascadeResponder(np.zeros(10, dtype=np.uint8))
    bad = _mutations()[mutation](_valid_query())
    with pytest.raises(RemoteProtocolError):
        alice.receive(bad)
    assert alice.leak_bits == 0
    # A failed responder refuses to go on.
    with pytest.raises(LocalProtocolError):
        alice.receive(_valid_query())


def test_not_a_query_is_a_remote_protocol_error() -> None:
    alice = CascadeResponder(np.zeros(10, dtype=np.uint8))
    wrong = ParityReply(round=0, parities=np.zeros(0, dtype=np.uint8))
    with pytest.raises(RemoteProtocolError):
        alice.receive(wrong)  # type: ignore[arg-type]


def test_rounds_must_follow_in_order() -> None:
    alice = CascadeResponder(np.ones(10, dtype=np.uint8))
    reply = alice.receive(_valid_query())
    assert reply.parities.tolist() == [1, 1]
    assert reply.round == 0
    with pytest.raises(RemoteProtocolError):
        alice.receive(_valid_query())  # round 0 again


def test_seeds_introduce_passes_in_order() -> None:
    key = np.random.default_rng(0).integers(0, 2, 100, dtype=np.uint8)
    alice = CascadeResponder(key)
    query = ParityQuery(
        round=0,
        seeds=(42,),
        pass_ids=np.array([1], dtype=np.int32),
        starts=np.array([10], dtype=np.int64),
        ends=np.array([30], dtype=np.int64),
    )
    reply = alice.receive(query)
    perm = pass_permutation(42, 100)
    assert sorted(perm.tolist()) == list(range(100))
    assert reply.parities[0] == np.bitwise_xor.reduce(key[perm[10:30]])
    assert alice.passes == 2


def test_malformed_reply_is_a_remote_protocol_error() -> None:
    def fresh() -> tuple[CascadeSession, ParityQuery]:
        bob = CascadeSession(np.zeros(1000, dtype=np.uint8), 0.02, np.random.default_rng(0))
        return bob, bob.start()

    bob, query = fresh()
    size = query.pass_ids.size
    bad_replies = [
        ParityReply(round=1, parities=np.zeros(size, dtype=np.uint8)),
        ParityReply(round=0, parities=np.zeros(size + 1, dtype=np.uint8)),
        ParityReply(round=0, parities=np.full(size, 2, dtype=np.uint8)),
        ParityReply(round=0, parities=np.zeros(size, dtype=np.float64)),
    ]
    for reply in bad_replies:
        bob, query = fresh()
        with pytest.raises(RemoteProtocolError):
            bob.receive(reply)
        with pytest.raises(LocalProtocolError):
            bob.receive(ParityReply(round=0, parities=np.zeros(size, dtype=np.uint8)))


def test_local_misuse_is_a_local_protocol_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(LocalProtocolError):
        CascadeSession(np.array([0, 2, 1]), 0.02, rng)
    with pytest.raises(LocalProtocolError):
        CascadeSession(np.zeros(0, dtype=np.uint8), 0.02, rng)
    with pytest.raises(LocalProtocolError):
        CascadeSession(np.zeros(10, dtype=np.uint8), 0.7, rng)
    with pytest.raises(LocalProtocolError):
        CascadeResponder(np.zeros((2, 2), dtype=np.uint8))
    bob = CascadeSession(np.zeros(10, dtype=np.uint8), 0.02, rng)
    with pytest.raises(LocalProtocolError):
        bob.receive(ParityReply(round=0, parities=np.zeros(1, dtype=np.uint8)))
    with pytest.raises(LocalProtocolError):
        _ = bob.corrected_key
    bob.start()
    with pytest.raises(LocalProtocolError):
        bob.start()


def test_invalid_params_are_config_errors() -> None:
    for kwargs in [
        {"max_passes": 0},
        {"max_passes": 65},
        {"first_block_factor": 0.0},
        {"second_block_factor": 0},
        {"later_pass_blocks": ()},
        {"min_qber": 0.0},
        {"waves": (0,)},
        {"lookahead_depth": 0},
    ]:
        with pytest.raises(ConfigError):
            CascadeParams(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ determinism


def test_same_seeds_give_same_queries() -> None:
    alice_key, bob_key = noisy_pair(20_000, 0.04, 9)
    first = reconcile(alice_key, bob_key, 0.04, seed=9)
    second = reconcile(alice_key, bob_key, 0.04, seed=9)
    assert len(first.queries) == len(second.queries)
    for a, b in zip(first.queries, second.queries, strict=True):
        assert a.round == b.round
        assert a.seeds == b.seeds
        assert np.array_equal(a.pass_ids, b.pass_ids)
        assert np.array_equal(a.starts, b.starts)
        assert np.array_equal(a.ends, b.ends)
    assert np.array_equal(first.bob.corrected_key, second.bob.corrected_key)
    other = reconcile(alice_key, bob_key, 0.04, seed=10)
    assert other.queries[0].seeds != first.queries[0].seeds


def test_messages_are_read_only() -> None:
    bob = CascadeSession(np.zeros(100, dtype=np.uint8), 0.02, np.random.default_rng(0))
    query = bob.start()
    with pytest.raises(ValueError):
        query.starts[0] = 3
    reply = CascadeResponder(np.zeros(100, dtype=np.uint8)).receive(query)
    with pytest.raises(ValueError):
        reply.parities[0] = 1


def test_the_first_query_goes_out_before_bobs_tables_and_preparing_them_early_changes_nothing() -> None:
    # Rule 3: the first query names intervals only; Bob builds his per-pass
    # tables while Alice answers it (prepare) or, at the latest, on her answer.
    alice_key, bob_key = noisy_pair(50_000, 0.03, seed=4)
    outcomes = []
    for early in (False, True):
        alice = CascadeResponder(alice_key)
        bob = CascadeSession(bob_key, 0.03, np.random.default_rng(9))
        assert not bob.prepare()  # nothing to build before the first query
        query: ParityQuery | None = bob.start()
        assert query is not None and query.seeds and query.round == 0
        if early:
            assert bob.prepare() and not bob.prepare()  # once
        queries = []
        while query is not None:
            queries.append(query)
            query = bob.receive(alice.receive(query))
        assert not bob.prepare()
        outcomes.append((bob.corrected_key, bob.leak_bits, [(q.seeds, q.pass_ids.tolist(), q.starts.tolist()) for q in queries]))
    (key_late, leak_late, q_late), (key_early, leak_early, q_early) = outcomes
    assert np.array_equal(key_late, alice_key) and np.array_equal(key_early, alice_key)
    assert leak_late == leak_early and q_late == q_early


def test_a_thin_batch_is_thin_per_key_bit_so_the_default_lookahead_costs_little_leak_on_small_blocks() -> None:
    from qcinode.core.reconciliation import DEFAULT_CASCADE_LOOKAHEAD, lookahead_below

    assert (lookahead_below(10**6), lookahead_below(10**5), lookahead_below(20_000)) == (64, 6, 1)
    assert DEFAULT_CASCADE_LOOKAHEAD == 3
    # On 10^5 bits at 3 % QBER (3 seeds): the default takes round trips off
    # for a leak within a per cent of textbook Cascade's (6 blocks measured
    # at 3.3 %: 94.0 -> 81.2 round trips, f 1.061 -> 1.064); the thin batch
    # of 10^6-bit blocks (64 leaves) would cost f about 1.08 here.
    n, qber = 100_000, 0.03
    rounds: dict[int, list[int]] = {1: [], 3: []}
    f: dict[int, list[float]] = {1: [], 3: []}
    for seed in range(3):
        alice_key, bob_key = noisy_pair(n, qber, seed)
        for depth in (1, DEFAULT_CASCADE_LOOKAHEAD):
            params = CascadeParams(lookahead_below=lookahead_below(n) if depth > 1 else 0, lookahead_depth=depth)
            out = reconcile(alice_key, bob_key, qber, seed=2000 + seed, params=params)
            assert out.residual_errors == 0
            rounds[depth].append(len(out.queries))
            f[depth].append(out.questions / (n * h2(out.actual_qber)))
    assert np.mean(rounds[3]) < 0.93 * np.mean(rounds[1])
    assert np.mean(f[1]) < np.mean(f[3]) < np.mean(f[1]) + 0.01
