"""One-way LDPC reconciliation: the codes, the frame plan, the exchange and the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("ldpc")

from qcinode.core import messages as m  # noqa: E402
from qcinode.core.ldpc_codes import CHECK_ROW_FAMILY, FRAME_BITS, LIFT, base_matrix, parity_check_matrix  # noqa: E402
from qcinode.core.ldpc_reconciliation import (  # noqa: E402
    LEAN_SCHEDULE,
    LdpcAlice,
    LdpcBob,
    _orders,
    decode_frame,
    efficiency_schedule,
    masking_rank,
    plan_frames,
)
from qcinode.core.pair import make_pair, pump  # noqa: E402
from qcinode.core.physics import LinkPhysics, fibre_transmittance  # noqa: E402
from qcinode.core.pipeline import BlockAccepted, LinkProtocolConfig  # noqa: E402
from qcinode.core.reconciliation import LDPC_MAX_ATTEMPTS, error_count_leak_bits  # noqa: E402
from qcinode.errors import ConfigError, LocalProtocolError, RemoteProtocolError  # noqa: E402
from qcinode.node.runtime import expected_key_bits_per_slot  # noqa: E402


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def gf2_rank(matrix: np.ndarray) -> int:
    rows = matrix.astype(bool).copy()
    rank = 0
    for column in range(rows.shape[1]):
        pivots = np.flatnonzero(rows[rank:, column])
        if pivots.size == 0:
            continue
        pivot = rank + pivots[0]
        rows[[rank, pivot]] = rows[[pivot, rank]]
        below = np.flatnonzero(rows[:, column])
        below = below[below != rank]
        rows[below] ^= rows[rank]
        rank += 1
        if rank == rows.shape[0]:
            break
    return rank


def test_codes_are_deterministic_and_shaped_as_documented() -> None:
    rows = CHECK_ROW_FAMILY[0]
    first = parity_check_matrix.__wrapped__(rows)
    again = parity_check_matrix.__wrapped__(rows)
    assert (first != again).nnz == 0
    assert first.shape == (rows * LIFT, FRAME_BITS)
    base = base_matrix(16)
    info = base.shape[1] - 16
    # Staircase with wrap-around: every parity column has degree 2; information
    # columns 3 or min(13, rows), a third of them high; check degrees within one.
    assert set(base[:, info:].sum(axis=0)) == {2}
    degrees = base[:, :info].sum(axis=0)
    assert set(degrees) == {3, 13} and np.count_nonzero(degrees == 13) == info // 3
    assert np.ptp(base[:, :info].sum(axis=1)) <= 1
    lifted = parity_check_matrix(16)
    assert set(np.asarray(lifted.sum(axis=0)).ravel()) == {2, 3, 13}


def test_peeling_bounds_the_rank_of_the_punctured_columns() -> None:
    # The leak rule subtracts rank(H_P); peeling must never claim more than the rank.
    rows = CHECK_ROW_FAMILY[0]
    info_order = _orders(rows)[0]
    matrix = parity_check_matrix(rows).tocsc()
    for first, last in [(0, 300), (100, 300), (0, 700)]:
        exact = gf2_rank(matrix[:, info_order[first:last]].toarray().T)
        assert masking_rank(rows, first, last) <= exact <= last - first
    # For the plans actually used every punctured column peels: the count is exact.
    for qber in (0.01, 0.02, 0.03, 0.05, 0.08):
        plan = plan_frames(1_000_000, qber)
        for revealed in (0, *plan.revealed_after):
            assert masking_rank(plan.rows, revealed, plan.punctured) == plan.punctured - revealed


@pytest.mark.parametrize("profile", ["efficient", "fast"])
@pytest.mark.parametrize("qber", [0.01, 0.03, 0.05])
def test_frame_plan_runs_the_efficiency_schedule(qber: float, profile: str) -> None:
    plan = plan_frames(1_000_000, qber, profile)
    assert plan.frame_bits == {"efficient": 65_536, "fast": 16_384}[profile]
    assert sum(plan.key_bits) == 1_000_000 and max(plan.key_bits) - min(plan.key_bits) <= 1
    k = plan.key_bits[0]
    assert k + plan.punctured <= plan.frame_bits
    h = h2(qber)
    f_start, f_mid, f_end = ((plan.checks - plan.punctured + t) / (k * h) for t in (0, *plan.revealed_after))
    # Frames split n evenly, so K sits up to one frame in n below the planned size.
    tolerance = 1.0 / len(plan.key_bits) + 0.002
    schedule = efficiency_schedule(qber, profile)
    assert schedule[0] < schedule[1] < schedule[2]
    assert f_start == pytest.approx(schedule[0], rel=tolerance)
    assert f_mid == pytest.approx(schedule[1], rel=tolerance)
    assert f_end == pytest.approx(schedule[2], rel=tolerance)


def run_exchange(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray, LdpcAlice, LdpcBob, int]:
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 2, n).astype(np.uint8)
    noisy = key ^ (rng.random(n) < qber).astype(np.uint8)
    alice, bob = LdpcAlice(0, key, qber, rng), LdpcBob(0, noisy, qber)
    pending: list[m.Message] = alice.opening()
    messages = 0
    while pending:
        replies = [out for msg in pending for out in bob.receive(msg)]
        messages += len(pending) + len(replies)
        pending = [out for msg in replies for out in alice.receive(msg)]
    assert bob.is_done
    return key, noisy, alice, bob, messages


def test_exchange_corrects_the_key_and_both_ends_count_the_same_leak() -> None:
    key, noisy, alice, bob, _ = run_exchange(60_000, 0.03, seed=4)
    corrected, kept, errors, leak, discarded = bob.result()
    assert np.array_equal(corrected, key[kept])
    assert errors == int(np.count_nonzero(key[kept] != noisy[kept]))
    assert bob.rounds <= LDPC_MAX_ATTEMPTS and alice.rounds == bob.rounds
    alice_kept, alice_leak = alice.finish(m.Reconciled(0, b"", b"", errors, discarded))
    assert np.array_equal(alice_kept, kept) and alice_leak == leak
    # Exactly: syndromes less the filler still punctured, discarded frames, error count.
    plan = bob.plan
    still_masked = sum(masking_rank(plan.rows, int(r), plan.punctured) for r in bob._revealed)
    expected = plan.checks * len(plan.key_bits) - still_masked
    expected += sum(plan.key_bits[f] for f in discarded) + error_count_leak_bits(int(kept.sum()))
    assert leak == expected
    assert 1.0 < leak / (len(key) * h2(0.03)) < 1.6


def test_bad_retries_and_reveals_are_remote_protocol_errors() -> None:
    rng = np.random.default_rng(1)
    key = rng.integers(0, 2, 150_000).astype(np.uint8)
    alice = LdpcAlice(3, key, 0.03, rng)
    alice.opening()
    frames = len(alice.plan.key_bits)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        alice.receive(m.LdpcRetry(3, 1, (frames,)))
    with pytest.raises(RemoteProtocolError, match="retry 2"):
        alice.receive(m.LdpcRetry(3, 2, (0,)))
    alice.receive(m.LdpcRetry(3, 1, (0,)))
    with pytest.raises(RemoteProtocolError, match="had decoded"):
        alice.receive(m.LdpcRetry(3, 2, (1,)))
    with pytest.raises(RemoteProtocolError, match="before its last attempt"):
        alice.finish(m.Reconciled(3, b"", b"", 0, (0,)))
    bob = LdpcBob(3, key, 0.03)
    with pytest.raises(RemoteProtocolError, match="syndrome bits"):
        bob.receive(m.LdpcSyndromes(3, np.zeros(5, np.uint8)))


def test_the_pipeline_reconciles_with_ldpc_in_at_most_three_round_trips() -> None:
    phys = LinkPhysics(
        intensities=(0.5, 0.2, 0.0),
        class_probabilities=(0.4, 0.3, 0.3),
        z_basis_probability=0.6,
        fibre_transmittance=fibre_transmittance(0.2, 10.0),
        detector_efficiency=0.1,
        dark_count_probability=1e-6,
        misalignment_error=0.02,
    )
    config = LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=100_000, error_correction="ldpc")
    alice, bob = make_pair(config, np.random.default_rng(2).bytes(65536), seed=9)
    result = pump(alice, bob, frame_slots=int(100_000 / 4 / expected_key_bits_per_slot(phys)), blocks=1)
    accepted = [e for e in result.alice_events if isinstance(e, BlockAccepted)]
    assert len(accepted) == 1
    bob_keys = [e.key for e in result.bob_events if isinstance(e, BlockAccepted)]
    assert bob_keys == [accepted[0].key]
    stats = accepted[0].stats
    assert 1 <= stats.cascade_rounds <= LDPC_MAX_ATTEMPTS
    assert stats.secret_bits > 0 and stats.leak_bits > stats.key_bits * h2(stats.qber)


def test_frames_decoded_by_an_executor_give_the_same_result() -> None:
    # Rule 7: frame decodes are independent and pure, so a pool (a node uses processes)
    # changes nothing but the wall time.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    key = rng.integers(0, 2, 150_000).astype(np.uint8)
    noisy = key ^ (rng.random(key.size) < 0.03).astype(np.uint8)
    syndromes = LdpcAlice(0, key, 0.03, np.random.default_rng(5)).opening()
    serial = LdpcBob(0, noisy, 0.03)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pooled = LdpcBob(0, noisy, 0.03, executor=pool)
        assert [type(x) for x in pooled.receive(syndromes[0])] == [type(x) for x in serial.receive(syndromes[0])]
    assert len(serial.plan.key_bits) > 1
    assert np.array_equal(pooled._words, serial._words) and pooled._failed == serial._failed


PHYS = LinkPhysics(
    intensities=(0.5, 0.2, 0.0),
    class_probabilities=(0.4, 0.3, 0.3),
    z_basis_probability=0.6,
    fibre_transmittance=fibre_transmittance(0.2, 10.0),
    detector_efficiency=0.1,
    dark_count_probability=1e-6,
    misalignment_error=0.02,
)


def test_the_fast_profile_keeps_the_16384_bit_codes_and_both_ends_must_name_a_known_profile() -> None:
    key, noisy = np.zeros(50_000, np.uint8), np.zeros(50_000, np.uint8)
    noisy[::40] = 1
    alice = LdpcAlice(0, key, 0.025, np.random.default_rng(3), "fast")
    bob = LdpcBob(0, noisy, 0.025, profile="fast")
    assert alice.plan == bob.plan and alice.plan.lift == 128
    replies = bob.receive(alice.opening()[0])
    while replies:
        replies = [out for msg in replies for reply in alice.receive(msg) for out in bob.receive(reply)]
    corrected, kept, *_ = bob.result()
    assert np.array_equal(corrected, key[kept])
    with pytest.raises(ConfigError, match="ldpc_profile: expected one of efficient, fast, lean, got 'tight'"):
        plan_frames(1000, 0.03, "tight")
    with pytest.raises(ConfigError, match="ldpc_profile"):
        LinkProtocolConfig(link_id="a-b", physics=PHYS, error_correction="ldpc", ldpc_profile="tight")


def test_the_lean_profile_starts_at_f_1_30_and_decodes_at_the_first_attempt() -> None:
    """``lean``: the 16,384-bit codes from f 1.30, where (measured) nearly every frame decodes at once."""
    rng = np.random.default_rng(21)
    key = rng.integers(0, 2, 200_000, dtype=np.uint8)
    noisy = key ^ (rng.random(key.size) < 0.03).astype(np.uint8)
    alice = LdpcAlice(0, key, 0.03, np.random.default_rng(4), "lean")
    bob = LdpcBob(0, noisy, 0.03, profile="lean")
    assert alice.plan == bob.plan and alice.plan.lift == 128
    assert efficiency_schedule(0.03, "lean") == LEAN_SCHEDULE == (1.30, 1.40, 1.50)
    assert bob.receive(alice.opening()[0]) == []  # no frame asked for more bits
    corrected, kept, errors, leak, discarded = bob.result()
    assert discarded == () and np.array_equal(corrected, key[kept])
    f = leak / (key.size * (-0.03 * np.log2(0.03) - 0.97 * np.log2(0.97)))
    assert 1.28 < f < 1.33  # 1.30 of the test-basis rate the frames were planned for, plus the error count


def test_deferred_decoding_answers_exactly_as_decoding_in_receive() -> None:
    """Rule 8: the decodes handed out and taken back give the same retries, leak and corrected key."""
    rng = np.random.default_rng(5)
    key = rng.integers(0, 2, 120_000, dtype=np.uint8)
    noisy = key ^ (rng.random(key.size) < 0.035).astype(np.uint8)
    outcomes = []
    for defer in (False, True):
        alice = LdpcAlice(0, key, 0.03, np.random.default_rng(9), "fast")  # planned for less than the true rate: retries
        bob = LdpcBob(0, noisy, 0.03, profile="fast", defer=defer)
        sent = []
        replies = bob.receive(alice.opening()[0])
        while True:
            if defer and bob.awaiting_decode:
                jobs = bob.take_jobs()
                assert bob.decoding and not bob.awaiting_decode
                with pytest.raises(LocalProtocolError):
                    bob.take_jobs()  # once
                replies = bob.decoded([decode_frame(*job) for job in jobs])
            if not replies:
                break
            sent.extend(replies)
            replies = [out for msg in replies for reply in alice.receive(msg) for out in bob.receive(reply)]
        corrected, kept, errors, leak, discarded = bob.result()
        outcomes.append(([(type(s), getattr(s, "frames", ())) for s in sent], corrected.tobytes(), leak, discarded))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0], "the block needed at least one retry, so the retry path was compared too"
