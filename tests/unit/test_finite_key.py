"""The per-class Chernoff finite-key analysis against its closed forms, Lim et al. and real runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcinode.core.estimation import _gamma as lim_gamma
from qcinode.core.estimation import (
    asymptotic_key_fraction,
    expected_block_statistics,
    expected_key_length,
    h2,
    key_length,
    multi_photon_upper_bound,
    predicted_leak,
)
from qcinode.core.finite_key import (
    FINITE_KEY_ANALYSES,
    chernoff_expected_bounds,
    chernoff_key_length,
    decoy_key_length,
    observed_bounds,
    yin_key_length,
    yin_phase_error_gap,
)
from qcinode.core.pair import make_pair, pump
from qcinode.core.physics import LinkPhysics, fibre_transmittance
from qcinode.core.pipeline import BlockAccepted, LinkProtocolConfig
from qcinode.errors import ConfigError
from qcinode.node.runtime import expected_key_bits_per_slot

EPSILON = 1e-10
TAG_BITS = 64


def gys_source(length_km: float, pz: float = 0.5) -> LinkPhysics:
    """GYS link (MQZL Table I) with the textbook source: mu 0.48 / 0.1 / 0, p 0.8 / 0.1 / 0.1."""
    return LinkPhysics(
        intensities=(0.48, 0.1, 0.0),
        class_probabilities=(0.8, 0.1, 0.1),
        z_basis_probability=pz,
        fibre_transmittance=fibre_transmittance(0.21, length_km),
        detector_efficiency=0.045,
        dark_count_probability=1.7e-6,
        misalignment_error=0.033,
    )


# --------------------------------------------------------------------------- the Chernoff bounds


@pytest.mark.parametrize("observed", [0.0, 3.0, 40.0, 1_000.0, 2.5e6])
def test_chernoff_bounds_solve_the_tail_inequalities(observed: float) -> None:
    beta = math.log(1e6)
    low, high = chernoff_expected_bounds(observed, 1e-6)
    # m^U is the mean m whose lower tail edge m - sqrt(2 beta m) is the observation.
    assert high - math.sqrt(2 * beta * high) == pytest.approx(observed, abs=1e-6 * max(1.0, observed))
    # m^L is the mean whose upper tail edge (the Chernoff bound of estimation.py) is the observation.
    if low > 0:
        edge = multi_photon_upper_bound(10**12, low / 10**12, 1e-6)
        assert edge == pytest.approx(observed, rel=1e-9)
    assert 0.0 <= low <= observed <= high
    # The width scales as sqrt(2 beta X) for large counts.
    if observed > 1e5:
        assert high - observed == pytest.approx(math.sqrt(2 * beta * observed), rel=0.01)


@pytest.mark.parametrize("mean", [5.0, 60.0, 800.0])
def test_chernoff_bounds_fail_no_more_often_than_epsilon(mean: float) -> None:
    # Exact binomial tails (n = 10^6 trials with mean `mean`): the chance that the
    # interval computed from X misses the true mean is at most epsilon per side.
    stats = pytest.importorskip("scipy.stats")
    epsilon, trials = 1e-3, 10**6
    p = mean / trials
    xs = np.arange(0, int(mean + 40 * math.sqrt(mean) + 60))
    pmf = stats.binom.pmf(xs, trials, p)
    bounds = np.array([chernoff_expected_bounds(float(x), epsilon) for x in xs])
    miss_low = pmf[bounds[:, 1] < mean].sum()  # upper bound below the truth
    miss_high = pmf[bounds[:, 0] > mean].sum()  # lower bound above the truth
    assert miss_low <= epsilon and miss_high <= epsilon
    # ... and they are not vacuous: each side misses with at least 1e-3 of epsilon.
    assert miss_low + miss_high > 1e-3 * epsilon


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="observed"):
        chernoff_expected_bounds(-1.0, 1e-3)
    with pytest.raises(ConfigError, match="epsilon"):
        chernoff_expected_bounds(1.0, 1.0)
    stats = expected_block_statistics(gys_source(10.0), 10**6)
    with pytest.raises(ConfigError, match="finite_key: expected one of chernoff, yin2020, lim2014, got 'tomamichel'"):
        decoy_key_length(stats, 0, TAG_BITS, EPSILON, "tomamichel")


# --------------------------------------------------------------------------- Yin et al. (2020)


@pytest.mark.parametrize("mean", [0.0, 7.0, 900.0, 3.0e6])
def test_observed_bounds_are_the_chernoff_bounds_solved_the_other_way(mean: float) -> None:
    epsilon = 1e-8
    low, high = observed_bounds(mean, epsilon)
    # The upper bound on the mean of an observation at the lower edge is the mean again, and
    # the lower bound on the mean of an observation at the upper edge too.
    if low > 0:
        assert chernoff_expected_bounds(low, epsilon)[1] == pytest.approx(mean, rel=1e-9)
    assert chernoff_expected_bounds(high, epsilon)[0] == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert low <= mean <= high


def _split_failure(n: int, k: int, epsilon: float, rates: tuple[float, ...]) -> float:
    """Worst chance, over total error counts near ``rates``, that the unobserved part's rate exceeds
    the observed part's plus Yin's gap: ``n + k`` events split at random, errors hypergeometric."""
    stats = pytest.importorskip("scipy.stats")
    worst = 0.0
    for rate in rates:
        errors = int((n + k) * rate)
        spread = 9 * math.sqrt(k * rate)
        xs = np.arange(max(0, int(k * rate - spread)), int(k * rate + spread))
        pmf = stats.hypergeom.pmf(xs, n + k, errors, k)
        gaps = np.array([yin_phase_error_gap(n, k, x / k, epsilon) for x in xs])
        worst = max(worst, float(pmf[(errors - xs) / n > xs / k + gaps].sum()))
    return worst


def test_yin_gap_is_tighter_than_lim2014_and_its_coverage_is_what_the_docs_say() -> None:
    # Tighter than Lim et al.'s Eq. (5) gamma at the same failure probability.
    for n, k, rate in ((10**6, 10**6, 0.03), (5e5, 2e5, 0.05), (3e3, 1e3, 0.1)):
        assert 0 < yin_phase_error_gap(n, k, rate, 1e-10) < lim_gamma(21e-10, rate, k, n)
    # Against the exact hypergeometric tail: within eps for small samples, and the
    # factor by which it overshoots eps grows with the sample (the module docstring).
    assert _split_failure(2_000, 1_000, 1e-6, (0.03, 0.1)) < 1e-6
    assert 3e-6 < _split_failure(20_000, 20_000, 1e-6, (0.05, 0.1)) < 1e-5


@pytest.mark.parametrize("length_km", [10.0, 25.0])
def test_yin2020_keeps_key_of_the_gys_source_a_little_below_chernoff(length_km: float) -> None:
    phys = gys_source(length_km)
    yin = expected_key_length(phys, 10**6, f_ec=1.1, analysis="yin2020")
    chernoff = expected_key_length(phys, 10**6, f_ec=1.1)
    assert 0.9 * chernoff.length_bits < yin.length_bits < chernoff.length_bits
    stats = expected_block_statistics(phys, 10**6)
    leak = predicted_leak(stats.key_bits, 0.033, 1.1)
    assert decoy_key_length(stats, leak, TAG_BITS, EPSILON, "yin2020") == yin_key_length(stats, leak, TAG_BITS, EPSILON)
    # What it loses is the expected-to-observed step: fewer single photons, more of their errors.
    assert yin.single_photon_bits < chernoff.single_photon_bits
    assert yin.test_single_photon_errors > chernoff.test_single_photon_errors


# --------------------------------------------------------------------------- the key length


def test_lim2014_stays_selectable_and_unchanged() -> None:
    stats = expected_block_statistics(gys_source(25.0, pz=0.6), 10**7)
    leak = predicted_leak(stats.key_bits, 0.033, 1.1)
    assert decoy_key_length(stats, leak, TAG_BITS, EPSILON, "lim2014") == key_length(stats, leak, TAG_BITS, EPSILON)
    assert decoy_key_length(stats, leak, TAG_BITS, EPSILON) == chernoff_key_length(stats, leak, TAG_BITS, EPSILON)
    assert FINITE_KEY_ANALYSES[0] == "chernoff"  # the default


@pytest.mark.parametrize("length_km", [10.0, 25.0])
def test_the_gys_source_keeps_key_at_1e6_bits_where_lim2014_keeps_none(length_km: float) -> None:
    phys = gys_source(length_km)
    chernoff = expected_key_length(phys, 10**6, f_ec=1.1)
    lim = expected_key_length(phys, 10**6, f_ec=1.1, analysis="lim2014")
    assert lim.length_bits == 0 and "exceed the entropy" in lim.reason
    fraction = chernoff.length_bits / 10**6
    assert 0.14 < fraction < asymptotic_key_fraction(phys, 1.1)
    # The single-photon bound is close to the true share of single photons in the block.
    stats = expected_block_statistics(phys, 10**6)
    true_single = sum(
        n * mu * math.exp(-mu) * phys.eta / (1 - math.exp(-mu * phys.eta)) for n, mu in zip(stats.key_counts, phys.intensities) if mu > 0
    )
    assert 0.85 * true_single < chernoff.single_photon_bits < true_single


def test_key_fraction_grows_with_block_size_to_the_lim2014_limit() -> None:
    phys = gys_source(25.0)
    sizes = [10**5, 10**6, 10**7, 10**9, 10**12]
    chernoff = [expected_key_length(phys, n, f_ec=1.1).length_bits / n for n in sizes]
    lim = [expected_key_length(phys, n, f_ec=1.1, analysis="lim2014").length_bits / n for n in sizes]
    assert chernoff == sorted(chernoff)
    assert all(c >= li for c, li in zip(chernoff, lim))
    # Both corrections vanish for infinite blocks: the same three-intensity limit.
    assert chernoff[-1] == pytest.approx(lim[-1], rel=0.01)
    assert chernoff[-1] < asymptotic_key_fraction(phys, 1.1)


def test_phase_error_and_tag_behave_as_in_lim2014() -> None:
    stats = expected_block_statistics(gys_source(10.0), 10**6)
    base = chernoff_key_length(stats, 200_000, 64, EPSILON).length_bits
    assert chernoff_key_length(stats, 200_000, 128, EPSILON).length_bits == base - 64
    assert chernoff_key_length(stats, 200_000, 64, 1e-15).length_bits < base
    high = LinkPhysics(
        intensities=(0.48, 0.1, 0.0),
        class_probabilities=(0.8, 0.1, 0.1),
        z_basis_probability=0.5,
        fibre_transmittance=fibre_transmittance(0.21, 10.0),
        detector_efficiency=0.045,
        dark_count_probability=1.7e-6,
        misalignment_error=0.12,
    )
    assert expected_key_length(high, 10**6).length_bits == 0


# --------------------------------------------------------------------------- real runs


@pytest.mark.parametrize("length_km", [10.0, 25.0])
def test_measured_key_of_the_gys_source_matches_the_formula(length_km: float) -> None:
    """Real blocks (sifting, estimation, Cascade, verification, PA, MACs) in one process."""
    phys = gys_source(length_km)
    config = LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=10**6)
    alice, bob = make_pair(config, np.random.default_rng(7).bytes(65536), seed=int(length_km))
    per_slot = expected_key_bits_per_slot(phys)
    result = pump(alice, bob, frame_slots=int(config.block_bits / 4 / per_slot), blocks=2)
    accepted = [e for e in result.alice_events if isinstance(e, BlockAccepted)]
    assert len(accepted) == 2
    assert [e.key for e in accepted] == [e.key for e in result.bob_events if isinstance(e, BlockAccepted)]
    for event in accepted:
        s = event.stats
        predicted = expected_key_length(phys, s.key_bits, f_ec=s.ec_efficiency).length_bits
        # Secret bits are the PA length rounded down to bytes, minus nothing (no refill yet).
        assert s.secret_bits == pytest.approx(predicted, rel=0.10)
        measured_per_pulse = s.secret_bits / s.pulses
        assert measured_per_pulse == pytest.approx(predicted * per_slot / s.key_bits, rel=0.10)
        # Never above the infinite-block, infinite-decoy rate of this source.
        assert measured_per_pulse < asymptotic_key_fraction(phys, max(1.0, s.ec_efficiency)) * per_slot
        assert s.qber == pytest.approx(0.0331, abs=0.003)
        assert h2(s.qber) > 0


def test_lim2014_pinned_on_the_link_aborts_the_same_block() -> None:
    phys = gys_source(25.0)
    config = LinkProtocolConfig(link_id="a-b", physics=phys, block_bits=10**6, finite_key="lim2014")
    alice, bob = make_pair(config, np.random.default_rng(7).bytes(65536), seed=25)
    result = pump(alice, bob, frame_slots=int(config.block_bits / 4 / expected_key_bits_per_slot(phys)), blocks=1)
    assert not any(isinstance(e, BlockAccepted) for e in result.alice_events)
    assert "exceed the entropy" in result.alice_events[0].reason  # type: ignore[union-attr]
