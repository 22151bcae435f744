"""Decoy-state rates against docs/physics.md's GYS figures, and the finite-size key length."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.core.estimation import (
    NO_DECOY_BOUNDS,
    AsymptoticParams,
    BlockStatistics,
    NoDecoyStatistics,
    asymptotic_key_fraction,
    expected_block_statistics,
    expected_key_length,
    expected_no_decoy_key_length,
    expected_no_decoy_statistics,
    h2,
    infinite_decoy_rate,
    key_length,
    max_distance,
    multi_photon_upper_bound,
    no_decoy_key_length,
    no_decoy_rate,
    optimal_mu,
    optimise_mu,
    plob_bound,
    predicted_leak,
    vacuum_weak_decoy_bounds,
    vacuum_weak_decoy_rate,
)
from qcinode.core.physics import LinkPhysics, expected_gain, fibre_transmittance
from qcinode.errors import ConfigError

GYS = AsymptoticParams()  # MQZL Table I, mu at the Eq. (12) optimum
EPSILON = 1e-10
TAG_BITS = 64


def at(length_km: float, **changes: float) -> AsymptoticParams:
    return replace(GYS, length_km=length_km, **changes)


# --------------------------------------------------------------------------- entropy, PLOB


def test_binary_entropy() -> None:
    assert h2(0.0) == h2(1.0) == 0.0
    assert h2(0.5) == 1.0
    assert h2(0.11) == pytest.approx(0.4999, abs=1e-3)
    assert h2(0.033) == pytest.approx(h2(0.967))
    with pytest.raises(ConfigError, match="p"):
        h2(1.5)


def test_plob_bound() -> None:
    assert plob_bound(0.0) == 0.0
    assert plob_bound(0.5) == pytest.approx(1.0)
    assert plob_bound(1.0) == math.inf
    assert plob_bound(1e-6) == pytest.approx(1.44e-6, rel=1e-2)  # ~1.44 eta at high loss
    assert at(100.0).eta == pytest.approx(3.57e-4, rel=1e-2)
    assert plob_bound(at(100.0).eta) == pytest.approx(5.16e-4, rel=1e-2)  # docs/physics.md section 3


# --------------------------------------------------------------------------- asymptotic GYS figures


def test_optimal_mu_eq12() -> None:
    assert optimal_mu(GYS) == pytest.approx(0.479, abs=5e-4)
    assert optimal_mu(replace(GYS, misalignment_error=0.2)) == 0.0


@pytest.mark.parametrize(
    ("length_km", "expected", "rel"),
    [(0.0, 2.555e-3, 0.01), (25.0, 7.544e-4, 0.01), (50.0, 2.226e-4, 0.01), (100.0, 1.72e-5, 0.02)],
)
def test_infinite_decoy_rate_gys(length_km: float, expected: float, rel: float) -> None:
    mu, rate = optimise_mu(infinite_decoy_rate, at(length_km))
    assert rate == pytest.approx(expected, rel=rel)
    assert 0.45 < mu < 0.5
    # With mu fixed at the Eq. (12) value the rate moves by < 0.1 % (docs/physics.md section 1).
    assert infinite_decoy_rate(at(length_km)) == pytest.approx(rate, rel=1e-3)


@pytest.mark.parametrize(
    ("length_km", "expected"), [(0.0, 2.416e-3), (25.0, 7.124e-4), (100.0, 1.607e-5)]
)
def test_vacuum_weak_decoy_rate_gys(length_km: float, expected: float) -> None:
    _, rate = optimise_mu(vacuum_weak_decoy_rate, at(length_km))
    assert rate == pytest.approx(expected, rel=0.01)
    assert rate < optimise_mu(infinite_decoy_rate, at(length_km))[1]


def test_vacuum_weak_bounds_bracket_the_truth() -> None:
    params = at(50.0)
    bounds = vacuum_weak_decoy_bounds(params)
    y1 = params.dark_count_probability + params.eta
    e1 = (0.5 * params.dark_count_probability + params.misalignment_error * params.eta) / y1
    assert 0.9 * y1 < bounds.y1_lower <= y1
    assert e1 <= bounds.e1_upper < 1.2 * e1
    assert bounds.q1_lower == pytest.approx(bounds.y1_lower * params.mu * math.exp(-params.mu))
    # Without a usable decoy there is nothing to bound.
    assert vacuum_weak_decoy_rate(at(0.0, nu=0.0)) == 0.0
    assert vacuum_weak_decoy_rate(at(0.0, nu=0.6)) == 0.0


@pytest.mark.parametrize(
    ("length_km", "expected", "mu_expected"), [(0.0, 1.53e-4, 0.026), (25.0, 1.03e-5, 0.0078)]
)
def test_no_decoy_rate_gys(length_km: float, expected: float, mu_expected: float) -> None:
    mu, rate = optimise_mu(no_decoy_rate, at(length_km))
    assert rate == pytest.approx(expected, rel=0.02)
    assert mu == pytest.approx(mu_expected, rel=0.05)
    # At the decoy-state optimum mu the multi-photon pulses swamp the gain.
    assert no_decoy_rate(at(length_km)) == 0.0


def test_max_distances_gys() -> None:
    # mu fixed at the Eq. (12) optimum, as in MQZL Fig. 2 (142.05 / 140.55 km published).
    assert 142.0 <= max_distance(infinite_decoy_rate, GYS) <= 142.2
    assert 140.5 <= max_distance(vacuum_weak_decoy_rate, GYS) <= 141.0
    # Re-optimising mu at every length gains a little (docs/physics.md section 1: 142.21 / 141.01 km).
    optimised = max_distance(infinite_decoy_rate, GYS, optimise=True)
    assert 142.0 <= optimised <= 142.3
    assert max_distance(vacuum_weak_decoy_rate, GYS, optimise=True) <= optimised
    assert 38.0 <= max_distance(no_decoy_rate, GYS, optimise=True) <= 42.0


def test_decoy_rates_never_beat_plob() -> None:
    for length_km in range(0, 160, 5):
        params = at(float(length_km))
        ceiling = plob_bound(params.eta)
        for rate_fn in (infinite_decoy_rate, vacuum_weak_decoy_rate, no_decoy_rate):
            assert optimise_mu(rate_fn, params)[1] <= ceiling
    assert optimise_mu(infinite_decoy_rate, at(150.0))[1] == 0.0


def test_asymptotic_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="length_km"):
        at(-1.0)
    with pytest.raises(ConfigError, match="f_ec"):
        replace(GYS, f_ec=0.9)
    with pytest.raises(ConfigError, match="mu"):
        replace(GYS, mu=0.0)


# --------------------------------------------------------------------------- finite size


def finite_link(length_km: float = 25.0, misalignment_error: float = 0.033) -> LinkPhysics:
    """The GYS channel with a source tuned for 1e5-bit blocks (mu1 > mu2 + mu3)."""
    return LinkPhysics(
        intensities=(0.4, 0.15, 0.0),
        class_probabilities=(0.3, 0.35, 0.35),
        z_basis_probability=0.5,
        fibre_transmittance=fibre_transmittance(0.21, length_km),
        detector_efficiency=0.045,
        dark_count_probability=1.7e-6,
        misalignment_error=misalignment_error,
    )


def test_honest_block_of_1e5_bits_gives_key_below_the_asymptote() -> None:
    phys = finite_link()
    stats = expected_block_statistics(phys, 100_000)
    assert stats.key_bits == pytest.approx(100_000, abs=2)
    assert stats.test_qber == pytest.approx(0.0333, abs=1e-3)
    leak = predicted_leak(stats.key_bits, stats.test_qber, 1.16)
    result = key_length(stats, leak, TAG_BITS, EPSILON)
    assert result.reason == ""
    assert result.length_bits > 0
    assert result.length_bits / stats.key_bits < asymptotic_key_fraction(phys, 1.16)
    assert result.leak_ec_bits == leak
    assert result.correction_bits == pytest.approx(6 * math.log2(21 / EPSILON) + TAG_BITS + 1)
    # The single-photon phase error is bounded above the single-photon bit error.
    assert 0.033 < result.phase_error_bound < 0.5
    assert 0.0 < result.single_photon_bits < stats.key_bits


def test_key_fraction_grows_with_block_size_towards_the_asymptote() -> None:
    phys = finite_link()
    sizes = [10**4, 10**5, 10**6, 10**7, 10**9]
    fractions = [expected_key_length(phys, n, analysis="lim2014").length_bits / n for n in sizes]
    assert fractions == sorted(fractions) and fractions[1] > fractions[0]
    assert fractions[1] > 0.0
    asymptote = asymptotic_key_fraction(phys, 1.16)
    # Three intensities bound Y1 and e1 loosely even for infinite blocks (Lim et al.
    # Fig. 1, dashed curve): the limit stays some 13 % under the infinite-decoy one.
    assert 0.8 * asymptote < fractions[-1] < asymptote


def test_matches_a_direct_transcription_of_lim_eqs_1_to_5() -> None:
    # Lim et al. (2014) in their notation: X is the key basis (our Z), Z the test basis.
    # Counts of a 1e6-bit block at 20 km with heavy background (Y0 = 1e-3), so the
    # vacuum term of Eq. (2) matters.
    mu = {1: 0.5, 2: 0.1, 3: 2e-4}
    p = {1: 0.5, 2: 0.2, 3: 0.3}
    n_x = {1: 888_647, 2: 85_376, 3: 25_977}
    n_z = {1: 394_954, 2: 37_945, 3: 11_545}
    m_z = {1: 13_212, 2: 4_114, 3: 5_728}
    eps_sec, tag_bits, leak = 1e-9, 40, 60_000
    eps_cor = 2.0**-tag_bits

    def tau(n: int) -> float:
        return sum(math.exp(-mu[k]) * mu[k] ** n * p[k] / math.factorial(n) for k in mu)

    def hoeffding(counts: dict[int, int], sign: int) -> dict[int, float]:
        total = sum(counts.values())
        delta = math.sqrt(total / 2 * math.log(21 / eps_sec))
        return {k: math.exp(mu[k]) / p[k] * (counts[k] + sign * delta) for k in counts}

    def s0_s1(counts: dict[int, int]) -> tuple[float, float]:
        lo, hi = hoeffding(counts, -1), hoeffding(counts, +1)
        s0 = tau(0) * (mu[2] * lo[3] - mu[3] * hi[2]) / (mu[2] - mu[3])  # Eq. (2)
        s1 = (
            tau(1)
            * mu[1]
            * (lo[2] - hi[3] - (mu[2] ** 2 - mu[3] ** 2) / mu[1] ** 2 * (hi[1] - s0 / tau(0)))
            / (mu[1] * (mu[2] - mu[3]) - mu[2] ** 2 + mu[3] ** 2)
        )  # Eq. (3)
        return s0, s1

    s_x0, s_x1 = s0_s1(n_x)
    _, s_z1 = s0_s1(n_z)
    v_z1 = tau(1) * (hoeffding(m_z, +1)[2] - hoeffding(m_z, -1)[3]) / (mu[2] - mu[3])  # Eq. (4)
    b, c, d = v_z1 / s_z1, s_z1, s_x1
    gamma = math.sqrt(
        (c + d) * (1 - b) * b / (c * d * math.log(2))
        * math.log2((c + d) / (c * d * (1 - b) * b) * 21**2 / eps_sec**2)
    )
    phi_x = b + gamma  # Eq. (5)
    length = math.floor(
        s_x0 + s_x1 - s_x1 * h2(phi_x) - leak - 6 * math.log2(21 / eps_sec) - math.log2(2 / eps_cor)
    )  # Eq. (1)
    assert s_x0 > 10_000 and gamma > 0.005 and length > 100_000

    stats = BlockStatistics(
        intensities=(mu[1], mu[2], mu[3]),
        class_probabilities=(p[1], p[2], p[3]),
        key_counts=(n_x[1], n_x[2], n_x[3]),
        test_counts=(n_z[1], n_z[2], n_z[3]),
        test_errors=(m_z[1], m_z[2], m_z[3]),
    )
    result = key_length(stats, leak, tag_bits, eps_sec)
    assert result.vacuum_bits == pytest.approx(s_x0, rel=1e-9)
    assert result.single_photon_bits == pytest.approx(s_x1, rel=1e-9)
    assert result.test_single_photon_bits == pytest.approx(s_z1, rel=1e-9)
    assert result.test_single_photon_errors == pytest.approx(v_z1, rel=1e-9)
    assert result.phase_error_bound == pytest.approx(phi_x, rel=1e-9)
    assert result.length_bits == length


def test_bounds_are_valid_and_tight_for_huge_blocks() -> None:
    # With 1e12 key bits the Hoeffding terms are small: Eqs. (2)-(5) must bound the
    # true vacuum and single-photon counts from below, closely, and e_1 from above.
    phys = finite_link()
    n_key = 10**12
    result = key_length(expected_block_statistics(phys, n_key), 0, TAG_BITS, EPSILON)
    pz = phys.z_basis_probability
    pulses = n_key / math.fsum(
        p * pz * pz * expected_gain(phys, k) for k, p in enumerate(phys.class_probabilities)
    )
    sources = list(zip(phys.intensities, phys.class_probabilities))
    tau0 = math.fsum(p * math.exp(-mu) for mu, p in sources)
    tau1 = math.fsum(p * mu * math.exp(-mu) for mu, p in sources)
    y0, eta, e_det = phys.dark_count_probability, phys.eta, phys.misalignment_error
    y1 = 1.0 - (1.0 - y0) * (1.0 - eta)
    true_vacuum = pulses * pz * pz * tau0 * y0
    true_single = pulses * pz * pz * tau1 * y1
    assert 0.95 * true_vacuum < result.vacuum_bits <= true_vacuum
    assert 0.9 * true_single < result.single_photon_bits <= true_single
    e1 = (0.5 * y0 * (1 - eta) + eta * e_det) / y1
    assert e1 < result.phase_error_bound < 1.3 * e1


def test_key_length_decreases_with_leak() -> None:
    stats = expected_block_statistics(finite_link(), 1_000_000)
    leaks = range(0, 1_000_000, 50_000)
    lengths = [key_length(stats, leak, TAG_BITS, EPSILON).length_bits for leak in leaks]
    assert all(a > b for a, b in zip(lengths, lengths[1:]) if a > 0)
    assert lengths[0] - lengths[1] == pytest.approx(50_000, abs=1)
    assert lengths[-1] == 0


def test_key_length_decreases_with_tag_and_stricter_epsilon() -> None:
    stats = expected_block_statistics(finite_link(), 1_000_000)
    base = key_length(stats, 100_000, 64, 1e-10).length_bits
    assert key_length(stats, 100_000, 128, 1e-10).length_bits == base - 64
    assert key_length(stats, 100_000, 64, 1e-15).length_bits < base


def test_high_qber_leaves_no_key() -> None:
    result = expected_key_length(finite_link(misalignment_error=0.11), 10_000_000, analysis="lim2014")
    assert result.length_bits == 0 and result.reason
    worse = expected_key_length(finite_link(misalignment_error=0.5), 10_000_000, analysis="lim2014")
    assert worse.length_bits == 0 and "phase error" in worse.reason
    assert worse.phase_error_bound == 0.5


def test_missing_decoy_counts_leave_no_key() -> None:
    stats = expected_block_statistics(finite_link(), 1_000_000)
    no_decoy = replace(
        stats,
        key_counts=(stats.key_counts[0], 0, stats.key_counts[2]),
        test_counts=(stats.test_counts[0], 0, stats.test_counts[2]),
        test_errors=(stats.test_errors[0], 0, stats.test_errors[2]),
    )
    result = key_length(no_decoy, 0, TAG_BITS, EPSILON)
    assert result.length_bits == 0 and "s_Z1" in result.reason


@pytest.mark.parametrize(
    ("key_counts", "test_counts", "reason"),
    [((0, 0, 0), (10, 10, 10), "no key-basis"), ((10, 10, 10), (0, 0, 0), "no test-basis")],
)
def test_empty_bases_leave_no_key(
    key_counts: tuple[int, int, int], test_counts: tuple[int, int, int], reason: str
) -> None:
    stats = BlockStatistics((0.5, 0.1, 0.0), (0.8, 0.1, 0.1), key_counts, test_counts, (0, 0, 0))
    result = key_length(stats, 0, TAG_BITS, EPSILON)
    assert result.length_bits == 0 and reason in result.reason


def test_pns_like_statistics_leave_no_key() -> None:
    # docs/physics.md section 4: at 50 km an idealised PNS attack keeps Bob's signal gain
    # and QBER honest but cuts the decoy gain to 0.13 of its honest value.
    phys = LinkPhysics(
        intensities=(0.48, 0.05, 0.0),
        class_probabilities=(0.5, 0.25, 0.25),
        z_basis_probability=0.5,
        fibre_transmittance=fibre_transmittance(0.21, 50.0),
        detector_efficiency=0.045,
        dark_count_probability=1.7e-6,
        misalignment_error=0.033,
    )
    honest = expected_block_statistics(phys, 1_000_000)
    leak = predicted_leak(honest.key_bits, honest.test_qber, 1.16)
    assert key_length(honest, leak, TAG_BITS, EPSILON).length_bits > 0

    def cut(counts: tuple[int, int, int]) -> tuple[int, int, int]:
        return (counts[0], round(0.13 * counts[1]), counts[2])

    attacked = replace(
        honest,
        key_counts=cut(honest.key_counts),
        test_counts=cut(honest.test_counts),
        test_errors=cut(honest.test_errors),
    )
    result = key_length(attacked, leak, TAG_BITS, EPSILON)
    assert result.length_bits == 0 and "s_Z1" in result.reason


def test_predicted_leak() -> None:
    assert predicted_leak(10_000, 0.0, 1.2) == 0
    assert predicted_leak(10_000, 0.11, 1.0) == math.ceil(10_000 * h2(0.11))
    assert predicted_leak(10_000, 0.7, 1.0) == 10_000  # capped at h(1/2)
    with pytest.raises(ConfigError, match="f_ec"):
        predicted_leak(10, 0.1, 0.5)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"intensities": (0.5, 0.1, 0.1)}, "intensities"),
        ({"intensities": (0.2, 0.15, 0.1)}, "intensities"),
        ({"intensities": (0.5, float("nan"), 0.0)}, "intensities"),
        ({"class_probabilities": (0.5, 0.5, 0.0)}, "class_probabilities"),
        ({"class_probabilities": (0.5, 0.3, 0.3)}, "class_probabilities"),
        ({"key_counts": (1, -1, 0)}, "key_counts"),
        ({"test_counts": (1, 1.5, 0)}, "test_counts"),
        ({"test_errors": (2, 0, 0)}, "test_errors"),
    ],
)
def test_block_statistics_are_validated(changes: dict[str, Any], field: str) -> None:
    base = BlockStatistics((0.5, 0.1, 0.0), (0.8, 0.1, 0.1), (100, 10, 1), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ConfigError, match=field):
        replace(base, **changes)


def test_key_length_arguments_are_validated() -> None:
    stats = BlockStatistics((0.5, 0.1, 0.0), (0.8, 0.1, 0.1), (100, 10, 1), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ConfigError, match="leak_ec_bits"):
        key_length(stats, -1, TAG_BITS, EPSILON)
    with pytest.raises(ConfigError, match="verification_tag_bits"):
        key_length(stats, 0, -1, EPSILON)
    for epsilon in (0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="security_epsilon"):
            key_length(stats, 0, TAG_BITS, epsilon)


counts = st.integers(0, 10**9)


@settings(max_examples=300, deadline=None)
@given(
    mu1=st.floats(0.2, 1.0),
    mu2_fraction=st.floats(0.05, 0.9),
    mu3=st.sampled_from([0.0, 1e-4, 2e-3]),
    p1=st.floats(0.05, 0.9),
    p2_fraction=st.floats(0.05, 0.95),
    key_counts=st.tuples(counts, counts, counts),
    test_counts=st.tuples(counts, counts, counts),
    error_fractions=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
    leak=st.integers(0, 10**9),
    tag=st.integers(0, 256),
    epsilon=st.floats(1e-300, 0.5),
)
def test_key_length_is_total(
    mu1: float,
    mu2_fraction: float,
    mu3: float,
    p1: float,
    p2_fraction: float,
    key_counts: tuple[int, int, int],
    test_counts: tuple[int, int, int],
    error_fractions: tuple[float, float, float],
    leak: int,
    tag: int,
    epsilon: float,
) -> None:
    """Any valid statistics give a finite, bounded length and never raise."""
    mu2 = mu3 + mu2_fraction * (mu1 - 2 * mu3)
    p2 = (1 - p1) * p2_fraction
    stats = BlockStatistics(
        intensities=(mu1, mu2, mu3),
        class_probabilities=(p1, p2, 1 - p1 - p2),
        key_counts=key_counts,
        test_counts=test_counts,
        test_errors=(
            int(test_counts[0] * error_fractions[0]),
            int(test_counts[1] * error_fractions[1]),
            int(test_counts[2] * error_fractions[2]),
        ),
    )
    result = key_length(stats, leak, tag, epsilon)
    assert 0 <= result.length_bits <= stats.key_bits
    assert (result.length_bits == 0) == bool(result.reason)
    for value in (
        result.vacuum_bits,
        result.single_photon_bits,
        result.phase_error_bound,
        result.test_single_photon_bits,
        result.test_single_photon_errors,
    ):
        assert math.isfinite(value) and value >= 0.0
    assert result.phase_error_bound <= 0.5


# --------------------------------------------------------------------------- finite size, no decoys

F_GYS = 1.22  # MQZL's f(E), so the finite length converges to no_decoy_rate exactly
PZ = 0.5


def no_decoy_block(params: AsymptoticParams, pulses: int, pz: float = PZ) -> tuple[NoDecoyStatistics, int]:
    """The mean block of ``pulses`` signal pulses under MQZL's channel model (Eqs. 8, 9), and its
    leak ``ceil(f n_Z h(E_mu))``: the same inputs :func:`no_decoy_rate` uses."""
    mu, y0, eta = params.mu, params.dark_count_probability, params.eta
    gain = y0 + 1.0 - math.exp(-eta * mu)
    error = (0.5 * y0 + params.misalignment_error * (1.0 - math.exp(-eta * mu))) / gain
    key = round(pulses * pz * pz * gain)
    test = round(pulses * (1.0 - pz) ** 2 * gain)
    stats = NoDecoyStatistics(mu, pz, pulses, key, test, round(test * error))
    return stats, math.ceil(F_GYS * key * h2(error))


def no_decoy_length(params: AsymptoticParams, pulses: int, bound: str = "gllp") -> int:
    stats, leak = no_decoy_block(params, pulses)
    return no_decoy_key_length(stats, leak, TAG_BITS, EPSILON, bound).length_bits


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X > k] for X ~ Binomial(n, p), summed exactly in log space (k at or above the mean).

    The first term's log needs log(n!/(n-k-1)!). For large n it is the
    Stirling difference with log1p (error ~1/m^3), which keeps full precision
    at n = 10^12 where lgamma(n + 1), about 2.6e13, would lose the last few
    digits; for small n lgamma is exact enough. The later terms follow from
    the ratio P[k+1]/P[k] = (n-k)/(k+1) * p/(1-p).
    """
    j = k + 1
    m = n - j
    if m < 10**6:
        log_falling = math.lgamma(n + 1) - math.lgamma(m + 1)
    else:
        log_falling = (m + 0.5) * -math.log1p(-j / n) + j * math.log(n) - j + 1 / (12 * n) - 1 / (12 * m)
    log_term = log_falling - math.lgamma(j + 1) + j * math.log(p) + m * math.log1p(-p)
    total, term = 0.0, 1.0  # relative to the first term
    while term > 1e-18 * total and j <= n:
        total += term
        term *= (n - j) / (j + 1) * p / (1 - p)
        j += 1
    return math.exp(log_term) * total


def test_the_exact_binomial_tail_matches_integer_arithmetic() -> None:
    for n, p, k in ((40, 0.3, 12), (1_000, 0.01, 25), (200, 0.5, 100), (10, 0.5, 9)):
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9)


def test_chernoff_bound_holds_against_the_exact_binomial_tail() -> None:
    for n, p in ((10**6, 1e-3), (10**9, 4.7e-3 / 4), (10**4, 0.3), (10**12, 1e-7)):
        for epsilon in (1e-3, 1e-11):
            bound = multi_photon_upper_bound(n, p, epsilon)
            assert binomial_tail(math.floor(bound), n, p) <= epsilon  # P[X > bound] <= epsilon
            # ... and not loose: about sqrt(2 m ln(1/eps)) above the mean m.
            mean = n * p
            assert bound - mean <= 1.1 * math.sqrt(2 * mean * math.log(1 / epsilon)) + math.log(1 / epsilon)
    assert multi_photon_upper_bound(0, 0.5, 1e-10) == 0.0
    assert multi_photon_upper_bound(10, 0.5, 1e-300) == 10.0  # never above N
    with pytest.raises(ConfigError, match="epsilon"):
        multi_photon_upper_bound(10, 0.5, 1.0)


def test_no_decoy_gllp_matches_a_direct_transcription() -> None:
    # A block at 10 km, mu 0.1, p_Z 0.6 (the counts need not be a mean block).
    pulses, mu, pz = 40_000_000, 0.1, 0.6
    n_z, n_x, m_x = 91_000, 40_300, 410
    eps_sec, tag_bits, leak = 1e-10, 64, 8_000
    p_multi = 1 - (1 + mu) * math.exp(-mu)
    log_eps = math.log(21 / eps_sec)

    def chernoff(m: float) -> float:  # exp(-d^2 m / (2 + d)) = eps_sec / 21, solved for (1 + d) m
        d = (log_eps + math.sqrt(log_eps**2 + 8 * log_eps * m)) / (2 * m)
        return (1 + d) * m

    s_z = n_z - chernoff(pulses * pz * pz * p_multi)
    s_x = n_x - chernoff(pulses * (1 - pz) ** 2 * p_multi)
    b = m_x / s_x
    gamma = math.sqrt(
        (s_x + s_z) * (1 - b) * b / (s_x * s_z * math.log(2))
        * math.log2((s_x + s_z) / (s_x * s_z * (1 - b) * b) * 21**2 / eps_sec**2)
    )
    length = math.floor(
        s_z * (1 - h2(b + gamma)) - leak - 6 * math.log2(21 / eps_sec) - math.log2(2 / 2.0**-tag_bits)
    )
    assert 0 < s_z < n_z and length > 1_000

    stats = NoDecoyStatistics(mu, pz, pulses, n_z, n_x, m_x)
    result = no_decoy_key_length(stats, leak, tag_bits, eps_sec)
    assert result.single_photon_bits == pytest.approx(s_z, rel=1e-12)
    assert result.test_single_photon_bits == pytest.approx(s_x, rel=1e-12)
    assert result.test_single_photon_errors == m_x
    assert result.phase_error_bound == pytest.approx(b + gamma, rel=1e-12)
    assert result.vacuum_bits == 0.0 and result.reason == ""
    assert result.length_bits == length

    # The insecure assumption trusts every detection and the raw test QBER.
    naive = no_decoy_key_length(stats, leak, tag_bits, eps_sec, "single-photon")
    b = m_x / n_x
    gamma = math.sqrt(
        (n_x + n_z) * (1 - b) * b / (n_x * n_z * math.log(2))
        * math.log2((n_x + n_z) / (n_x * n_z * (1 - b) * b) * 21**2 / eps_sec**2)
    )
    assert naive.single_photon_bits == n_z and naive.test_single_photon_bits == n_x
    assert naive.phase_error_bound == pytest.approx(b + gamma, rel=1e-12)
    assert naive.length_bits == math.floor(
        n_z * (1 - h2(b + gamma)) - leak - 6 * math.log2(21 / eps_sec) - tag_bits - 1
    )
    assert naive.length_bits > result.length_bits


@pytest.mark.parametrize("length_km", [0.0, 25.0])
def test_no_decoy_finite_length_converges_to_the_gllp_rate(length_km: float) -> None:
    # At the asymptotically optimal mu (0.026 at 0 km, 0.0078 at 25 km; docs/physics.md section 1),
    # with q = p_Z^2 because only Z-Z detections make key.
    mu, _ = optimise_mu(no_decoy_rate, at(length_km))
    params = at(length_km, mu=mu)
    asymptotic = no_decoy_rate(replace(params, q=PZ * PZ))
    assert asymptotic > 0.0
    sizes = [10**k for k in range(9, 17)]
    ratios = [no_decoy_length(params, n) / n / asymptotic for n in sizes]
    # Monotonic in N, always below the asymptote, and within 0.1 % of it by 1e14 pulses.
    assert ratios == sorted(ratios)
    assert all(r < 1.0 for r in ratios)
    assert ratios[sizes.index(10**14)] > 0.997
    assert ratios[-1] > 0.9998


def test_no_decoy_length_is_monotonic_in_block_size_and_below_the_naive_one() -> None:
    params = at(10.0, mu=0.02)
    sizes = (10**7, 10**8, 3 * 10**8, 10**9, 10**10, 10**11)
    lengths = [no_decoy_length(params, n) for n in sizes]
    assert lengths[0] == 0 and lengths[1] > 0  # a 1e7-pulse block is too small
    per_pulse = [ell / n for ell, n in zip(lengths, sizes)]
    assert per_pulse == sorted(per_pulse) and len(set(per_pulse)) == len(sizes)
    for n in (10**8, 10**10):
        assert no_decoy_length(params, n, "single-photon") > no_decoy_length(params, n)


def _longest_distance_with_key(pulses: int) -> float:
    """Bisection on L for the largest distance where some mu (log grid 1e-4..1) gives key."""
    mus = [10 ** (-4 + 0.02 * k) for k in range(201)]

    def has_key(length_km: float) -> bool:
        return any(no_decoy_length(at(length_km, mu=mu), pulses) > 0 for mu in mus)

    low, high = 0.0, 60.0
    assert has_key(low) and not has_key(high)
    while high - low > 0.05:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if has_key(mid) else (low, mid)
    return low


def test_no_decoy_gys_distance_stays_below_the_40_km_of_gllp() -> None:
    # docs/physics.md section 1: 40.2 km asymptotically at the optimal mu (~0.0036 at 40 km).
    asymptotic = max_distance(no_decoy_rate, GYS, optimise=True)
    assert 40.0 < asymptotic < 40.4
    distances = [_longest_distance_with_key(n) for n in (10**10, 10**12, 10**14)]
    assert distances == sorted(distances)
    assert 36.0 < distances[0] < distances[-1] <= asymptotic
    assert distances[-1] > asymptotic - 0.3


def test_no_decoy_gys_gives_nothing_at_60_km() -> None:
    for pulses in (10**8, 10**11, 10**14, 10**17):
        for k in range(61):
            mu = 10 ** (-4 + 0.07 * k)  # 1e-4 .. ~1.6
            assert no_decoy_length(at(60.0, mu=mu), pulses) == 0
    # At the decoy-state mu the multi-photon pulses alone outnumber the detections.
    stats, leak = no_decoy_block(at(60.0), 10**12)
    result = no_decoy_key_length(stats, leak, TAG_BITS, EPSILON)
    assert result.length_bits == 0 and "s_Z1" in result.reason and result.single_photon_bits == 0.0


def _signal_only(length_km: float, mu: float, **changes: Any) -> LinkPhysics:
    values: dict[str, Any] = dict(
        intensities=(mu, 0.0, 0.0),
        class_probabilities=(1.0, 0.0, 0.0),
        z_basis_probability=0.5,
        fibre_transmittance=fibre_transmittance(0.2, length_km),
        detector_efficiency=0.1,
        dark_count_probability=1e-6,
        misalignment_error=0.01,
    )
    values.update(changes)
    return LinkPhysics(**values)


def test_expected_no_decoy_statistics_follow_the_closed_forms() -> None:
    phys = _signal_only(10.0, 0.1)
    stats = expected_no_decoy_statistics(phys, 100_000)
    gain = expected_gain(phys, 0)
    assert stats.key_bits == 100_000
    assert stats.pulses == pytest.approx(100_000 / (0.25 * gain), abs=1)
    assert stats.test_bits == pytest.approx(100_000, abs=1)  # p_X = p_Z
    assert stats.test_qber == pytest.approx(0.01, abs=5e-4)
    assert stats.multi_photon_probability == pytest.approx(1 - 1.1 * math.exp(-0.1))
    result = expected_no_decoy_key_length(phys, 100_000)
    assert result.length_bits > 0
    assert expected_no_decoy_key_length(phys, 100_000, bound="single-photon").length_bits > result.length_bits
    with pytest.raises(ConfigError, match="signal pulses only"):
        expected_no_decoy_statistics(finite_link(), 100_000)


@pytest.mark.parametrize(
    ("counts", "reason"),
    [((10**6, 0, 100, 0), "no key-basis"), ((10**6, 100, 0, 0), "no test-basis"),
     ((10**6, 100, 100, 60), "phase error")],
)
def test_no_decoy_degenerate_blocks(counts: tuple[int, int, int, int], reason: str) -> None:
    stats = NoDecoyStatistics(0.001, 0.5, *counts)
    for bound in NO_DECOY_BOUNDS:
        result = no_decoy_key_length(stats, 0, TAG_BITS, EPSILON, bound)
        assert result.length_bits == 0 and reason in result.reason


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"intensity": 0.0}, "intensity"),
        ({"z_basis_probability": 1.0}, "z_basis_probability"),
        ({"pulses": -1}, "pulses"),
        ({"key_bits": 1.5}, "key_bits"),
        ({"test_errors": 11}, "test_errors"),
        ({"pulses": 15}, "pulses"),
    ],
)
def test_no_decoy_statistics_are_validated(changes: dict[str, Any], field: str) -> None:
    base = NoDecoyStatistics(0.1, 0.5, 1000, 10, 10, 1)
    with pytest.raises(ConfigError, match=field):
        replace(base, **changes)
    with pytest.raises(ConfigError, match="bound"):
        no_decoy_key_length(base, 0, TAG_BITS, EPSILON, "decoy")
    with pytest.raises(ConfigError, match="leak_ec_bits"):
        no_decoy_key_length(base, -1, TAG_BITS, EPSILON)


@settings(max_examples=300, deadline=None)
@given(
    mu=st.floats(1e-6, 5.0),
    pz=st.floats(0.01, 0.99),
    pulses=st.integers(0, 10**15),
    key_share=st.floats(0, 1),
    test_share=st.floats(0, 1),
    error_fraction=st.floats(0, 1),
    leak=st.integers(0, 10**9),
    tag=st.integers(0, 256),
    epsilon=st.floats(1e-300, 0.5),
    bound=st.sampled_from(NO_DECOY_BOUNDS),
)
def test_no_decoy_key_length_is_total(
    mu: float, pz: float, pulses: int, key_share: float, test_share: float,
    error_fraction: float, leak: int, tag: int, epsilon: float, bound: str,
) -> None:
    """Any valid statistics give a finite, bounded length and never raise."""
    key = int(pulses * key_share)
    test = int((pulses - key) * test_share)
    stats = NoDecoyStatistics(mu, pz, pulses, key, test, int(test * error_fraction))
    result = no_decoy_key_length(stats, leak, tag, epsilon, bound)
    assert 0 <= result.length_bits <= stats.key_bits
    assert (result.length_bits == 0) == bool(result.reason)
    for value in (result.single_photon_bits, result.phase_error_bound, result.test_single_photon_bits):
        assert math.isfinite(value) and value >= 0.0
    assert result.phase_error_bound <= 0.5
