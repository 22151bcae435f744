"""The emulated optical layer against the closed forms of MQZL (PRA 72, 012326, Sec. 2).

Every statistical check compares a seeded sample with a closed form within
five standard deviations; the seeds make each run identical.
"""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.physics import (
    CLASS_DECOY,
    CLASS_SIGNAL,
    CLASS_VACUUM,
    AliceRecord,
    Clicks,
    LinkPhysics,
    PhotonFrame,
    detect,
    exact_error_rate,
    expected_error_rate,
    expected_gain,
    expected_qber_intercept_resend,
    fibre_transmittance,
    transmit,
)
from qcinode.errors import ConfigError, RemoteProtocolError

SIGMAS = 5.0
CLASSES = (CLASS_SIGNAL, CLASS_DECOY, CLASS_VACUUM)


def gys(
    length_km: float,
    *,
    class_probabilities: tuple[float, float, float] = (0.2, 0.3, 0.5),
    z_basis_probability: float = 0.5,
    dark_count_probability: float = 1.7e-6,
    intercept_resend_fraction: float = 0.0,
) -> LinkPhysics:
    """The GYS link of MQZL Table I with mu = 0.48, nu = 0.05 and a vacuum decoy."""
    return LinkPhysics(
        intensities=(0.48, 0.05, 0.0),
        class_probabilities=class_probabilities,
        z_basis_probability=z_basis_probability,
        fibre_transmittance=fibre_transmittance(0.21, length_km),
        detector_efficiency=0.045,
        dark_count_probability=dark_count_probability,
        misalignment_error=0.033,
        intercept_resend_fraction=intercept_resend_fraction,
    )


def run(phys: LinkPhysics, n_slots: int, seed: int) -> tuple[PhotonFrame, AliceRecord, Clicks]:
    alice_key, alice_noise, bob_key, bob_noise = (
        np.random.default_rng([seed, stream]) for stream in range(4)
    )
    frame, record = transmit(phys, n_slots, alice_key, alice_noise)
    clicks = detect(phys, frame, bob_key, bob_noise)
    return frame, record, clicks


def assert_binomial(successes: int, trials: int, p: float, what: str, slack: float = 0.0) -> None:
    """``successes`` out of ``trials`` is within 5 sigma (+ slack) of a Binomial(trials, p)."""
    assert trials > 0, what
    sigma = math.sqrt(trials * p * (1.0 - p)) / trials
    measured = successes / trials
    assert abs(measured - p) <= SIGMAS * sigma + slack, (
        f"{what}: measured {measured:.6g}, expected {p:.6g} +- {SIGMAS * sigma + slack:.3g}"
    )


def check_gains_and_errors(
    phys: LinkPhysics, n_slots: int, seed: int, *, mqzl: bool = True, mqzl_slack: bool = False
) -> None:
    """Q_k from clicks per class; E_k over slots where both bases match.

    ``mqzl`` also compares E_k with MQZL's first-order form; ``mqzl_slack``
    widens that check by its known distance from the exact one.
    """
    _, record, clicks = run(phys, n_slots, seed)
    classes, bases, bits = record.reveal(clicks.slots)
    for cls in CLASSES:
        in_class = classes == cls
        # A slot is of class k and clicks with probability p_k Q_k, independently.
        p_click = phys.class_probabilities[cls] * expected_gain(phys, cls)
        assert_binomial(int(in_class.sum()), n_slots, p_click, f"Q_{cls}")
        sifted = in_class & (bases == clicks.bases)
        errors = int(np.count_nonzero(bits[sifted] != clicks.bits[sifted]))
        exact = exact_error_rate(phys, cls)
        assert_binomial(errors, int(sifted.sum()), exact, f"E_{cls} (exact)")
        if not mqzl:
            continue
        # MQZL's E is first order in Y0 and eta mu; allow for the known difference.
        slack = abs(exact - expected_error_rate(phys, cls)) if mqzl_slack else 0.0
        mqzl_rate = expected_error_rate(phys, cls)
        assert_binomial(errors, int(sifted.sum()), mqzl_rate, f"E_{cls}", slack)


# --------------------------------------------------------------------------- closed forms


def test_closed_forms_match_mqzl_first_order() -> None:
    phys = gys(0.0)
    x = phys.eta * 0.48
    exact = 1.0 - (1.0 - 1.7e-6) * math.exp(-x)
    assert expected_gain(phys, CLASS_SIGNAL) == pytest.approx(exact, rel=1e-12)
    # MQZL's Y0 + 1 - exp(-eta mu) differs only at order Y0 * eta * mu.
    assert abs(exact - (1.7e-6 + 1.0 - math.exp(-x))) <= 1.7e-6 * x
    assert expected_gain(phys, CLASS_VACUUM) == pytest.approx(1.7e-6)
    assert expected_error_rate(phys, CLASS_VACUUM) == pytest.approx(0.5)
    assert expected_error_rate(phys, CLASS_SIGNAL) == pytest.approx(0.0330, abs=1e-4)  # docs/physics.md section 1
    assert exact_error_rate(phys, CLASS_SIGNAL) == pytest.approx(
        expected_error_rate(phys, CLASS_SIGNAL), rel=1e-3
    )
    assert expected_qber_intercept_resend(0.0, 1.0) == 0.25
    assert expected_qber_intercept_resend(0.03, 0.4) == pytest.approx(0.03 + 0.1 * 0.94)


# --------------------------------------------------------------------------- gains and errors


@pytest.mark.parametrize(
    ("length_km", "n_slots", "class_probabilities"),
    [
        (0.0, 200_000_000, (0.2, 0.3, 0.5)),
        (25.0, 300_000_000, (0.3, 0.3, 0.4)),
        (50.0, 1_000_000_000, (0.3, 0.2, 0.5)),
    ],
)
def test_gys_gains_and_error_rates(
    length_km: float, n_slots: int, class_probabilities: tuple[float, float, float]
) -> None:
    phys = gys(length_km, class_probabilities=class_probabilities)
    check_gains_and_errors(phys, n_slots, seed=int(length_km))


def test_high_dark_counts_gains_and_error_rates() -> None:
    # Y0 = 2e-3 is comparable to the decoy gain: dark-only clicks and
    # photon + dark double clicks both matter.
    phys = gys(25.0, dark_count_probability=2e-3, class_probabilities=(0.4, 0.3, 0.3))
    assert phys.dark_count_probability > 0.5 * expected_gain(phys, CLASS_DECOY)
    check_gains_and_errors(phys, 10_000_000, seed=7, mqzl_slack=True)


def test_bright_pulses_match_exact_receiver_model() -> None:
    # Many multi-photon slots: double clicks and squashing dominate the errors.
    phys = LinkPhysics(
        intensities=(2.0, 0.6, 0.0),
        class_probabilities=(0.4, 0.4, 0.2),
        z_basis_probability=0.7,
        fibre_transmittance=0.5,
        detector_efficiency=0.8,
        dark_count_probability=1e-2,
        misalignment_error=0.05,
    )
    check_gains_and_errors(phys, 300_000, seed=11, mqzl=False)
    # Squashing must not bias Bob's bits: by symmetry each value has probability 1/2.
    _, _, clicks = run(phys, 300_000, seed=12)
    assert_binomial(int(np.count_nonzero(clicks.bits)), len(clicks), 0.5, "Bob's bit 1")


def test_biased_basis_choice() -> None:
    phys = gys(0.0, z_basis_probability=0.9)
    _, record, clicks = run(phys, 20_000_000, seed=3)
    _, bases, _ = record.reveal(clicks.slots)
    n = len(clicks)
    assert_binomial(int(np.count_nonzero(bases == 0)), n, 0.9, "Alice Z")
    assert_binomial(int(np.count_nonzero(clicks.bases == 0)), n, 0.9, "Bob Z")
    assert_binomial(int(np.count_nonzero(bases == clicks.bases)), n, 0.82, "sifting")


def test_photon_counts_are_zero_truncated_poisson() -> None:
    phys = LinkPhysics(
        intensities=(3.0, 0.5, 0.0),
        class_probabilities=(0.5, 0.5, 0.0),
        z_basis_probability=0.5,
        fibre_transmittance=1.0,
        detector_efficiency=1.0,
        dark_count_probability=0.0,
        misalignment_error=0.0,
    )
    frame, record, _ = run(phys, 200_000, seed=5)
    assert np.all(frame.photons >= 1)
    for cls, lam in ((CLASS_SIGNAL, 3.0), (CLASS_DECOY, 0.5)):
        counts = frame.photons[record.classes == cls].astype(np.float64)
        mean = lam / -math.expm1(-lam)
        variance = mean * (1.0 + lam - mean)
        sigma = math.sqrt(variance / len(counts))
        assert abs(counts.mean() - mean) <= SIGMAS * sigma
        ones = int(np.count_nonzero(counts == 1))
        assert_binomial(ones, len(counts), lam * math.exp(-lam) / -math.expm1(-lam), "K = 1")


# --------------------------------------------------------------------------- intercept-resend


def test_intercept_resend_on_every_pulse_gives_quarter_qber() -> None:
    noiseless = LinkPhysics(
        intensities=(0.5, 0.1, 0.0),
        class_probabilities=(0.6, 0.3, 0.1),
        z_basis_probability=0.5,
        fibre_transmittance=0.1,
        detector_efficiency=1.0,
        dark_count_probability=0.0,
        misalignment_error=0.0,
        intercept_resend_fraction=1.0,
    )
    _, record, clicks = run(noiseless, 2_000_000, seed=13)
    _, bases, bits = record.reveal(clicks.slots)
    sifted = bases == clicks.bases
    errors = int(np.count_nonzero(bits[sifted] != clicks.bits[sifted]))
    assert_binomial(errors, int(sifted.sum()), 0.25, "QBER under full intercept-resend")
    # Without Eve the same channel is error-free.
    _, record, clicks = run(replace(noiseless, intercept_resend_fraction=0.0), 2_000_000, seed=13)
    _, bases, bits = record.reveal(clicks.slots)
    sifted = bases == clicks.bases
    assert np.array_equal(bits[sifted], clicks.bits[sifted])


def test_partial_intercept_resend_raises_qber_by_a_quarter_of_the_fraction() -> None:
    honest = gys(10.0, class_probabilities=(0.8, 0.1, 0.1))
    attacked = replace(honest, intercept_resend_fraction=0.4)
    n_slots = 50_000_000
    _, record, clicks = run(attacked, n_slots, seed=17)
    classes, bases, bits = record.reveal(clicks.slots)
    signal = classes == CLASS_SIGNAL
    # Eve resends as many photons as she took: the gain does not move.
    p_click = 0.8 * expected_gain(honest, CLASS_SIGNAL)
    assert_binomial(int(signal.sum()), n_slots, p_click, "Q_mu under attack")
    sifted = signal & (bases == clicks.bases)
    errors = int(np.count_nonzero(bits[sifted] != clicks.bits[sifted]))
    e_honest = exact_error_rate(honest, CLASS_SIGNAL)
    predicted = expected_qber_intercept_resend(e_honest, 0.4)
    # The textbook form treats dark-only clicks as attacked too; they are not.
    slack = abs(exact_error_rate(attacked, CLASS_SIGNAL) - predicted)
    assert slack < 1e-3
    assert_binomial(errors, int(sifted.sum()), predicted, "QBER under 40 % intercept-resend", slack)
    assert predicted == pytest.approx(e_honest + 0.1 * (1 - 2 * e_honest))


# --------------------------------------------------------------------------- Alice's record


def test_revealed_classes_follow_the_source_distribution() -> None:
    # Bright enough that materialised and lazily drawn slots are both common.
    phys = LinkPhysics(
        intensities=(0.8, 0.3, 0.0),
        class_probabilities=(0.5, 0.3, 0.2),
        z_basis_probability=0.6,
        fibre_transmittance=1.0,
        detector_efficiency=1.0,
        dark_count_probability=0.0,
        misalignment_error=0.0,
    )
    n_slots = 200_000
    frame, record = transmit(phys, n_slots, np.random.default_rng(1), np.random.default_rng(2))
    everything = np.arange(n_slots)
    classes, bases, bits = record.reveal(everything)
    assert record.lazily_revealed == n_slots - len(frame)
    for cls, p in enumerate(phys.class_probabilities):
        assert_binomial(int(np.count_nonzero(classes == cls)), n_slots, p, f"class {cls}")
    assert_binomial(int(np.count_nonzero(bases == 0)), n_slots, 0.6, "Z basis")
    assert_binomial(int(np.count_nonzero(bits)), n_slots, 0.5, "bit 1")

    # Separately: empty slots follow p_k exp(-eta mu_k), materialised ones p_k (1 - exp(-eta mu_k)).
    weights = np.array(phys.class_probabilities) * np.exp(-np.array(phys.intensities))
    empty = np.ones(n_slots, np.bool_)
    empty[frame.slots] = False
    for cls in CLASSES:
        hits = int(np.count_nonzero(classes[empty] == cls))
        assert_binomial(hits, int(empty.sum()), weights[cls] / weights.sum(), f"empty class {cls}")
    # Vacuum pulses never carry a photon.
    assert not np.any(record.classes == CLASS_VACUUM)


def test_reveal_is_consistent_and_validated() -> None:
    phys = gys(0.0, dark_count_probability=1e-3)
    _, record, clicks = run(phys, 1_000_000, seed=23)
    first = record.reveal(clicks.slots)
    assert record.lazily_revealed > 0
    lazily = record.lazily_revealed
    order = np.random.default_rng(0).permutation(len(clicks))
    again = record.reveal(np.concatenate([clicks.slots[order], clicks.slots[:10]]))
    for before, after in zip(first, again):
        assert np.array_equal(before[order], after[: len(order)])
        assert np.array_equal(before[:10], after[len(order) :])
    assert record.lazily_revealed == lazily
    assert all(part.dtype == np.uint8 for part in again)
    assert [len(part) for part in record.reveal([])] == [0, 0, 0]
    with pytest.raises(RemoteProtocolError):
        record.reveal([1_000_000])
    with pytest.raises(RemoteProtocolError):
        record.reveal([-1])
    with pytest.raises(RemoteProtocolError):
        record.reveal(np.array([[1, 2]]))
    with pytest.raises(RemoteProtocolError):
        record.reveal(np.array([0.5]))


# --------------------------------------------------------------------------- scale and determinism


def test_large_frames_materialise_only_slots_with_photons() -> None:
    # 2e8 pulses at GYS 10 km: a per-pulse loop or array would not fit in a test.
    phys = gys(10.0, class_probabilities=(0.8, 0.1, 0.1))
    n_slots = 200_000_000
    frame, record, clicks = run(phys, n_slots, seed=29)
    assert len(frame) < 0.02 * n_slots
    assert np.all(np.diff(frame.slots) > 0) and frame.slots[-1] < n_slots
    p_click = math.fsum(
        p * expected_gain(phys, cls) for cls, p in enumerate(phys.class_probabilities)
    )
    assert_binomial(len(clicks), n_slots, p_click, "clicks per slot")
    assert np.all(np.diff(clicks.slots) > 0)
    assert len(record.slots) == len(frame)


def test_sparse_dark_counts_over_a_huge_frame() -> None:
    # No photon ever reaches the detector; 1e14 slots cost only their dark counts.
    phys = replace(gys(0.0), detector_efficiency=0.0, dark_count_probability=1e-12)
    n_slots = 100_000_000_000_000
    frame, record, clicks = run(phys, n_slots, seed=31)
    assert len(frame) == 0
    expected = n_slots * 1e-12
    assert abs(len(clicks) - expected) <= SIGMAS * math.sqrt(expected)
    assert np.all(np.diff(clicks.slots) > 0) and clicks.slots[-1] < n_slots
    classes, _, _ = record.reveal(clicks.slots)
    assert len(classes) == len(clicks)


def test_empty_frame() -> None:
    frame, record, clicks = run(gys(0.0), 0, seed=37)
    assert len(frame) == len(clicks) == 0 and clicks.n_slots == 0
    assert PhotonFrame.from_bytes(frame.to_bytes()).n_slots == 0


def test_same_seeds_same_frames() -> None:
    phys = gys(5.0, dark_count_probability=1e-4, intercept_resend_fraction=0.3)
    a = run(phys, 2_000_000, seed=41)
    b = run(phys, 2_000_000, seed=41)
    c = run(phys, 2_000_000, seed=42)
    assert a[0].to_bytes() == b[0].to_bytes()
    assert np.array_equal(a[2].slots, b[2].slots) and np.array_equal(a[2].bits, b[2].bits)
    revealed_a, revealed_b = a[1].reveal(a[2].slots), b[1].reveal(b[2].slots)
    assert all(np.array_equal(x, y) for x, y in zip(revealed_a, revealed_b))
    assert a[0].to_bytes() != c[0].to_bytes()


# --------------------------------------------------------------------------- serialisation


def test_frame_round_trip() -> None:
    frame, _, _ = run(gys(0.0), 1_000_000, seed=43)
    data = frame.to_bytes()
    assert len(data) < 7 * len(frame) + 64
    parsed = PhotonFrame.from_bytes(data)
    assert parsed.n_slots == frame.n_slots
    for name in ("slots", "photons", "state_bases", "state_bits"):
        original, copy = getattr(frame, name), getattr(parsed, name)
        assert copy.dtype == original.dtype and np.array_equal(copy, original)


def test_frame_round_trip_wide_fields() -> None:
    frame = PhotonFrame(
        n_slots=1 << 40,
        slots=np.array([3, 1 << 33, (1 << 40) - 1], np.int64),
        photons=np.array([1, 300, 65535], np.uint16),
        state_bases=np.array([0, 1, 1], np.uint8),
        state_bits=np.array([1, 0, 1], np.uint8),
    )
    parsed = PhotonFrame.from_bytes(frame.to_bytes())
    assert np.array_equal(parsed.slots, frame.slots)
    assert np.array_equal(parsed.photons, frame.photons)
    # Gaps below 2**16 travel in two bytes; one gap of 2**16 needs four.
    for last, width in ((4 + 65535, 2), (4 + 65536, 4)):
        small = replace(frame, n_slots=1 << 20, slots=np.array([3, 4, last], np.int64))
        data = small.to_bytes()
        assert len(data) == 21 + 3 * width + 3 * 2 + 2
        assert np.array_equal(PhotonFrame.from_bytes(data).slots, small.slots)
    assert np.array_equal(parsed.state_bases, frame.state_bases)
    assert np.array_equal(parsed.state_bits, frame.state_bits)


def _frame_bytes(
    n_slots: int, gaps: list[int], photons: list[int], bases: int = 0, bits: int = 0, flags: int = 0
) -> bytes:
    gap_fmt = "Q" if flags & 1 else "H" if flags & 4 else "I"
    photon_fmt = "H" if flags & 2 else "B"
    count = len(gaps)
    packed = (count + 7) // 8
    return (
        struct.pack("<4sBQQ", b"QPF1", flags, n_slots, count)
        + struct.pack(f"<{count}{gap_fmt}", *gaps)
        + struct.pack(f"<{count}{photon_fmt}", *photons)
        + bytes([bases]) * packed
        + bytes([bits]) * packed
    )


def test_hand_built_frame_parses() -> None:
    frame = PhotonFrame.from_bytes(_frame_bytes(100, [5, 1, 10], [1, 2, 3], bases=0b1010_0000))
    assert frame.slots.tolist() == [5, 6, 16]
    narrow = PhotonFrame.from_bytes(_frame_bytes(100, [5, 1, 10], [1, 2, 3], bases=0b1010_0000, flags=0x04))
    assert narrow.slots.tolist() == [5, 6, 16]
    assert frame.photons.tolist() == [1, 2, 3]
    assert frame.state_bases.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"QPF1\x00", id="truncated-header"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1]).replace(b"QPF1", b"QPF2"), id="magic"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1], flags=0x80), id="unknown-flag"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1], flags=0x05), id="wide-and-narrow-gaps"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1])[:-1], id="short"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1]) + b"\x00", id="long"),
        pytest.param(_frame_bytes(100, [5, 0], [1, 1]), id="repeated-slot"),
        pytest.param(_frame_bytes(100, [99, 1], [1, 1]), id="slot-past-end"),
        pytest.param(_frame_bytes(100, [100], [1]), id="slot-equals-n"),
        pytest.param(_frame_bytes(1, [0, 1], [1, 1]), id="more-slots-than-frame"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 0]), id="zero-photons"),
        pytest.param(_frame_bytes(100, [5, 1], [1, 1], bits=0b0010_0000), id="padding-bits"),
        pytest.param(
            _frame_bytes(1 << 52, [1 << 51, (1 << 64) - 1], [1, 1], flags=1), id="gap-overflow"
        ),
    ],
)
def test_malformed_frames_are_rejected(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        PhotonFrame.from_bytes(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    header = _frame_bytes(64, [], [])[:5]
    for candidate in (data, header + data):
        try:
            frame = PhotonFrame.from_bytes(candidate)
        except RemoteProtocolError:
            continue
        assert np.all(np.diff(frame.slots) > 0)
        assert np.all(frame.slots < frame.n_slots) and np.all(frame.photons >= 1)
        again = PhotonFrame.from_bytes(frame.to_bytes())
        assert np.array_equal(again.slots, frame.slots)
        assert np.array_equal(again.photons, frame.photons)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 10_000).flatmap(
        lambda n: st.tuples(
            st.just(n), st.sets(st.integers(0, n - 1), max_size=40), st.integers(0, 2**32 - 1)
        )
    )
)
def test_frame_round_trip_property(case: tuple[int, set[int], int]) -> None:
    n_slots, slots, seed = case
    rng = np.random.default_rng(seed)
    count = len(slots)
    frame = PhotonFrame(
        n_slots=n_slots,
        slots=np.array(sorted(slots), np.int64),
        photons=rng.integers(1, 400, count).astype(np.uint16),
        state_bases=rng.integers(0, 2, count, dtype=np.uint8),
        state_bits=rng.integers(0, 2, count, dtype=np.uint8),
    )
    parsed = PhotonFrame.from_bytes(frame.to_bytes())
    assert parsed.to_bytes() == frame.to_bytes()
    assert np.array_equal(parsed.slots, frame.slots)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("intensities", (0.5, -0.1, 0.0)),
        ("intensities", (0.5, 0.1)),
        ("class_probabilities", (0.5, 0.4, 0.2)),
        ("class_probabilities", (1.2, -0.1, -0.1)),
        ("z_basis_probability", 1.5),
        ("fibre_transmittance", -0.1),
        ("detector_efficiency", float("nan")),
        ("dark_count_probability", 1.0),
        ("misalignment_error", 2.0),
        ("intercept_resend_fraction", -0.5),
    ],
)
def test_invalid_link_physics_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        replace(gys(0.0), **{field: value})


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="n_slots"):
        transmit(gys(0.0), -1, np.random.default_rng(0), np.random.default_rng(1))
    with pytest.raises(ConfigError, match="length_km"):
        fibre_transmittance(0.2, -1.0)
    with pytest.raises(ConfigError, match="cls"):
        expected_gain(gys(0.0), 3)


@pytest.mark.parametrize("p", [0.5, 0.02, 3e-5])
def test_bernoulli_positions_follow_the_bernoulli_process(p: float) -> None:
    """Positions drawn by exponential gaps: count ~ Binomial(n, p), gaps ~ Geometric(p) (pmf of the first values)."""
    from qcinode.core.physics import _bernoulli_positions

    n_slots = 4_000_000
    positions = _bernoulli_positions(np.random.default_rng(7), n_slots, p)
    assert positions.dtype == np.int64
    assert positions.size == 0 or (positions[0] >= 0 and positions[-1] < n_slots)
    assert np.all(np.diff(positions) > 0)
    mean = n_slots * p
    assert abs(positions.size - mean) < SIGMAS * math.sqrt(mean * (1 - p))
    gaps = np.diff(positions, prepend=-1)
    for k in (1, 2, 3):
        # P(gap = k) = (1 - p)^(k - 1) p; each count is binomial over the gaps.
        q = (1 - p) ** (k - 1) * p
        expected = gaps.size * q
        assert abs(int(np.count_nonzero(gaps == k)) - expected) < SIGMAS * math.sqrt(expected * (1 - q)) + 1
    # Mean gap 1/p, standard deviation sqrt(1 - p)/p per gap.
    assert abs(gaps.mean() - 1 / p) < SIGMAS * math.sqrt(1 - p) / p / math.sqrt(gaps.size)


@pytest.mark.parametrize("z", [0.5, 0.75, 0.9, 1.0, 0.0])
@pytest.mark.parametrize("csprng", [False, True])
def test_basis_choices_have_the_z_probability(z: float, csprng: bool) -> None:
    """Each path (random bits for 1/2, bytes for 256ths, floats otherwise) draws X with probability 1 - z."""
    from qcinode.core.physics import _bases, _bits
    from qcinode.core.randomness import CsprngGenerator

    rng: Any = CsprngGenerator() if csprng else np.random.default_rng(11)
    size = 1_000_003  # not a whole number of bytes
    bases = _bases(rng, z, size)
    assert bases.dtype == np.uint8 and bases.shape == (size,)
    assert set(np.unique(bases).tolist()) <= {0, 1}
    x = int(bases.sum())
    mean = size * (1 - z)
    assert abs(x - mean) <= SIGMAS * math.sqrt(size * z * (1 - z))
    bits = _bits(rng, size)
    assert bits.shape == (size,) and abs(int(bits.sum()) - size / 2) < SIGMAS * math.sqrt(size / 4)
    assert _bases(rng, z, 0).shape == (0,) and _bits(rng, 0).shape == (0,)


@pytest.mark.parametrize("mean", [0.0133, 0.5, 3.0])
def test_zero_truncated_poisson_has_the_conditional_law(mean: float) -> None:
    """P(k | k >= 1) = Poisson(k; mean) / (1 - exp(-mean)) for the first values, each within 5 sigma."""
    from qcinode.core.physics import _zero_truncated_poisson

    size = 2_000_000
    counts = _zero_truncated_poisson(np.random.default_rng(5), mean, size)
    assert counts.dtype == np.uint16 and counts.min() >= 1
    norm = -math.expm1(-mean)
    for k in range(1, 6):
        p = math.exp(k * math.log(mean) - mean - math.lgamma(k + 1)) / norm
        seen = int(np.count_nonzero(counts == k))
        assert abs(seen - size * p) < SIGMAS * math.sqrt(size * p * (1 - p)) + 1, k
    mean_k = mean / norm  # E[k | k >= 1]
    var_k = (mean + mean * mean) / norm - mean_k * mean_k
    assert abs(counts.mean() - mean_k) < SIGMAS * math.sqrt(var_k / size)
