"""Lim et al. (2014) Fig. 1 recomputed: their system model, their stated figure, our analyses beside it.

The paper (PRA 89, 022307, Sec. IV) states two values of its Fig. 1 in the
text: at 100 km the optimised rate of n_X = 10^9 is "about 1.75 times" that
of n_X = 10^7, and n_X = 10^4 still makes key at 135 km. The first is
reproduced here; the second is not (docs/finite-key.md says what the printed
model gives instead, and why).
"""

from __future__ import annotations

import math

import pytest

from qcinode.core.estimation import key_length
from qcinode.core.lim2014_system import (
    LIM2014_SYSTEM,
    LimSystem,
    SourceSettings,
    _nelder_mead,
    expected_block,
    max_distance,
    optimise_rate,
    secret_key_rate,
)
from qcinode.errors import ConfigError

#: A source inside the protocol's constraints, near the optimum at 100 km.
SETTINGS = SourceSettings(0.85, 0.4, 0.45, 0.42, 0.2)


def test_expected_block_is_the_papers_detection_model() -> None:
    """Counts and errors per class follow Sec. IV's D_k, R_k and e_k written out independently."""
    length_km, n_x = 100.0, 1e7
    stats, pulses, qber = expected_block(LIM2014_SYSTEM, length_km, SETTINGS, n_x)
    s = LIM2014_SYSTEM
    eta = 10 ** (-s.attenuation_db_per_km * length_km / 10) * s.detector_efficiency
    qx, p1, p2, mu1, mu2 = SETTINGS.as_tuple()
    probabilities = (p1, p2, 1 - p1 - p2)
    intensities = (mu1, mu2, s.vacuum_intensity)
    d = [1 - (1 - 2 * s.dark_count_probability) * math.exp(-eta * k) for k in intensities]
    r = [dk * (1 + s.afterpulse_probability) for dk in d]
    e = [
        s.dark_count_probability + s.misalignment_error * (1 - math.exp(-eta * k)) + s.afterpulse_probability * dk / 2
        for k, dk in zip(intensities, d)
    ]
    n_pulses = n_x / (qx * qx * sum(p * rk for p, rk in zip(probabilities, r)))
    assert pulses == pytest.approx(n_pulses, rel=1e-6)
    for index in range(3):
        assert stats.key_counts[index] == pytest.approx(n_pulses * qx * qx * probabilities[index] * r[index], abs=1.0)
        test = n_pulses * (1 - qx) ** 2 * probabilities[index] * r[index]
        assert stats.test_counts[index] == pytest.approx(test, abs=1.0)
        # qcinode's exact receiver counts half of the rare double clicks as errors, the paper's
        # first-order e_k does not: they agree to a few parts in 10^5 of the errors.
        assert stats.test_errors[index] == pytest.approx(n_pulses * (1 - qx) ** 2 * probabilities[index] * e[index], rel=1e-4, abs=1.0)
    key_errors = sum(n_pulses * qx * qx * p * ek for p, ek in zip(probabilities, e))
    assert qber == pytest.approx(key_errors / stats.key_bits, rel=1e-4)


def test_secret_key_rate_is_lim2014_at_eps_sec_kappa_l() -> None:
    """The rate is l/N with l = key_length(...) at eps_sec = kappa l: a fixed point."""
    rate, result = secret_key_rate(LIM2014_SYSTEM, 100.0, SETTINGS, 1e7)
    assert result is not None and result.length_bits > 0
    stats, pulses, qber = expected_block(LIM2014_SYSTEM, 100.0, SETTINGS, 1e7)
    again = key_length(stats, result.leak_ec_bits, 50, LIM2014_SYSTEM.kappa * result.length_bits)
    assert abs(again.length_bits - result.length_bits) <= 1  # settled to the bit (module docstring, rule 3)
    assert rate == result.length_bits / pulses
    assert result.leak_ec_bits == math.ceil(1.16 * stats.key_bits * (-qber * math.log2(qber) - (1 - qber) * math.log2(1 - qber)))


def test_settings_outside_the_protocol_give_no_rate_and_a_clear_error() -> None:
    bad = SourceSettings(0.85, 0.4, 0.45, 0.1, 0.2)  # mu1 < mu2 + mu3
    assert secret_key_rate(LIM2014_SYSTEM, 50.0, bad, 1e7) == (0.0, None)
    with pytest.raises(ConfigError, match="constraints"):
        expected_block(LIM2014_SYSTEM, 50.0, bad, 1e7)
    with pytest.raises(ConfigError, match="max_distance"):
        max_distance(LIM2014_SYSTEM, 1e7, low_km=10.0, high_km=5.0)


def test_nelder_mead_finds_a_quadratic_minimum() -> None:
    point, value = _nelder_mead(lambda x: (x[0] - 0.3) ** 2 + 2 * (x[1] + 0.2) ** 2 + 1.0, [1.0, 1.0], iterations=400)
    assert point == pytest.approx([0.3, -0.2], abs=1e-4)
    assert value == pytest.approx(1.0, abs=1e-8)


def test_lim_fig1_rate_ratio_at_100_km_is_reproduced() -> None:
    """Lim et al. Sec. IV: at 100 km, R(n_X = 10^9) is "about 1.75 times" R(n_X = 10^7).

    qcinode's ``lim2014`` on the paper's system, each rate optimised over
    {q_x, p1, p2, mu1, mu2}, gives 1.79. Tolerance 3 %: the paper states
    the ratio to two figures ("about"), read off its own optimiser, and a
    different local optimum of a five-parameter search moves the ratio by a
    per cent or two (the rates themselves are flat near the optimum).
    """
    r7, settings7 = optimise_rate(LIM2014_SYSTEM, 100.0, 1e7)
    r9, settings9 = optimise_rate(LIM2014_SYSTEM, 100.0, 1e9)
    assert settings7 is not None and settings9 is not None
    assert r9 / r7 == pytest.approx(1.75, rel=0.03)
    # The optimiser ends where the paper's reasoning says it should: larger blocks
    # afford a stronger bias towards the key basis and the signal intensity.
    assert settings9.basis_probability > settings7.basis_probability
    assert settings9.signal_probability > settings7.signal_probability


def test_per_class_analyses_beside_lim2014_on_the_papers_system() -> None:
    """On Lim et al.'s own system, ``chernoff`` keeps more key than ``lim2014`` and ``yin2020`` lies between.

    At 100 km and n_X = 10^7: 6.55e-5 (chernoff), 6.28e-5 (yin2020) and
    4.76e-5 (lim2014) secret bits per pulse, each optimised. The per-class
    bounds win most where the decoy and vacuum classes are a small share of
    the basis, i.e. for the smaller blocks.
    """
    lim, _ = optimise_rate(LIM2014_SYSTEM, 100.0, 1e7, "lim2014")
    chernoff, _ = optimise_rate(LIM2014_SYSTEM, 100.0, 1e7, "chernoff")
    yin, _ = optimise_rate(LIM2014_SYSTEM, 100.0, 1e7, "yin2020")
    assert lim == pytest.approx(4.76e-5, rel=0.02)
    assert chernoff == pytest.approx(6.55e-5, rel=0.02)
    assert lim < yin < chernoff


def test_without_after_pulses_the_system_makes_more_key() -> None:
    """After-pulses (p_ap = 4 %) add about 2 % QBER: removing them must raise the optimised rate."""
    with_ap, _ = optimise_rate(LIM2014_SYSTEM, 100.0, 1e7)
    without, _ = optimise_rate(LimSystem(afterpulse_probability=0.0), 100.0, 1e7)
    assert without > 1.2 * with_ap
