"""The fibre system of Lim et al. (2014), Sec. IV: their Fig. 1 recomputed with qcinode's bounds.

Theory of operation
-------------------
Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014) evaluate their
Eqs. (1)-(5) on a model of a dedicated-fibre link (Sec. IV, "Evaluation")
and plot the optimised secret key rate per pulse against fibre length for
post-processing blocks of ``n_X = 10^4 ... 10^9`` key-basis detections
(Fig. 1). This module rebuilds that evaluation on qcinode's own pieces, so
the paper's stated figures test :func:`qcinode.core.estimation.key_length`
(``lim2014``) end to end, and the other analyses of
:func:`qcinode.core.finite_key.decoy_key_length` can be set beside it on the
same system. Rules, with the paper's parameters (:data:`LIM2014_SYSTEM`):

1. **Detection.** Bob's two InGaAs detectors: efficiency ``eta_Bob = 10 %``,
   dark-count probability ``p_dc = 6e-7`` each, after-pulse probability
   ``p_ap = 4 %``; fibre ``0.2 dB/km``; misalignment ``e_mis = 0.5 %``.
   A pulse of intensity ``k`` is detected (after-pulses excluded) with
   ``D_k = 1 - (1 - 2 p_dc) exp(-eta_sys k)``, ``eta_sys = eta_ch eta_Bob``;
   qcinode's receiver (:func:`qcinode.core.physics.expected_gain` with
   ``Y0 = 1 - (1 - p_dc)^2``) gives the same to ``p_dc^2``. After-pulses
   multiply the detection rate, ``R_k = D_k (1 + p_ap)``, and add errors:
   ``e_k = p_dc + e_mis (1 - exp(-eta k)) + p_ap D_k / 2`` (Sec. IV), whose
   first two terms are qcinode's exact error probability
   (:func:`qcinode.core.physics.exact_error_rate` times the gain).
   The paper prints ``eta_ch`` in the misalignment term; with it the error
   rate at 100 km would be a tenfold misalignment, which no curve of Fig. 1
   shows, so the detected mean ``eta_sys k`` is taken, as in ``D_k``.
2. **The block.** Alice sends ``N`` pulses until ``n_X`` key-basis
   detections are sifted: with basis probability ``q_x`` (both ends),
   intensities ``(mu1, mu2, mu3)`` chosen with ``(p1, p2, p3)``, the mean
   counts are ``n_{X,k} = N q_x^2 p_k R_k`` and ``n_{Z,k} = N (1 - q_x)^2
   p_k R_k``, test errors ``m_{Z,k} = N (1 - q_x)^2 p_k e_k`` (rounded to
   integers: :class:`~qcinode.core.estimation.BlockStatistics`).
3. **Leak and security parameters.** ``lambda_EC = f_EC n_X h(e_obs)`` with
   ``f_EC = 1.16`` and ``e_obs`` the key-basis error rate;
   ``eps_cor = 1e-15`` (a 50-bit tag: ``log2(2/eps_cor) = 50.8``, qcinode
   charges 51 bits); ``eps_sec = kappa l`` with ``kappa = 1e-15``, so the
   key length is a fixed point, found by iterating ``l -> l(kappa l)``
   (``l`` depends on ``eps_sec`` only through logarithms: three rounds settle
   it to the bit).
4. **Optimisation.** The rate ``R = l / N`` is maximised over
   ``{q_x, p1, p2, mu1, mu2}`` with ``mu3 = 2e-4`` fixed, as in the paper:
   a coarse grid, then Nelder-Mead from its best point
   (:func:`optimise_rate`). The largest distance with key is found by
   bisection (:func:`max_distance`).

The paper states two figures of Fig. 1 in its text; what this module gives
for them, and why one is not reproduced, is in ``docs/finite-key.md``
("Lim et al. 2014, Fig. 1") and pinned by
``tests/unit/test_lim2014_system.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Final

from qcinode.core.estimation import BlockStatistics, KeyLengthResult, predicted_leak
from qcinode.core.finite_key import FINITE_KEY_LIM2014, check_finite_key, decoy_key_length
from qcinode.core.physics import LinkPhysics, exact_error_rate, expected_gain, fibre_transmittance
from qcinode.errors import ConfigError

__all__ = [
    "LIM2014_SYSTEM",
    "LimSystem",
    "SourceSettings",
    "expected_block",
    "max_distance",
    "optimise_rate",
    "secret_key_rate",
]


@dataclasses.dataclass(frozen=True, slots=True)
class LimSystem:
    """The fixed parameters of Lim et al.'s evaluation (Sec. IV); defaults are the paper's.

    Attributes:
        detector_efficiency: ``eta_Bob``.
        dark_count_probability: ``p_dc``, per detector.
        afterpulse_probability: ``p_ap``.
        attenuation_db_per_km: Fibre loss.
        misalignment_error: ``e_mis``.
        f_ec: Error-correction efficiency ``f_EC``.
        kappa: Secrecy per key bit: ``eps_sec = kappa l``.
        verification_tag_bits: ``log2(1/eps_cor)``, rounded (``eps_cor = 1e-15``: 50).
        vacuum_intensity: ``mu3``.
    """

    detector_efficiency: float = 0.10
    dark_count_probability: float = 6e-7
    afterpulse_probability: float = 4e-2
    attenuation_db_per_km: float = 0.2
    misalignment_error: float = 5e-3
    f_ec: float = 1.16
    kappa: float = 1e-15
    verification_tag_bits: int = 50
    vacuum_intensity: float = 2e-4


#: Lim et al. (2014), Sec. IV, dedicated fibre.
LIM2014_SYSTEM: Final = LimSystem()


@dataclasses.dataclass(frozen=True, slots=True)
class SourceSettings:
    """The free parameters the paper optimises: ``q_x``, ``p1``, ``p2``, ``mu1``, ``mu2``."""

    basis_probability: float
    signal_probability: float
    decoy_probability: float
    signal_intensity: float
    decoy_intensity: float

    def as_tuple(self) -> tuple[float, float, float, float, float]:
        return (
            self.basis_probability,
            self.signal_probability,
            self.decoy_probability,
            self.signal_intensity,
            self.decoy_intensity,
        )


def _physics(system: LimSystem, length_km: float, settings: SourceSettings) -> LinkPhysics:
    """qcinode's receiver for the paper's link: ``Y0 = 1 - (1 - p_dc)^2`` (rule 1)."""
    p_dc = system.dark_count_probability
    p3 = 1.0 - settings.signal_probability - settings.decoy_probability
    return LinkPhysics(
        intensities=(settings.signal_intensity, settings.decoy_intensity, system.vacuum_intensity),
        class_probabilities=(settings.signal_probability, settings.decoy_probability, p3),
        z_basis_probability=settings.basis_probability,
        fibre_transmittance=fibre_transmittance(system.attenuation_db_per_km, length_km),
        detector_efficiency=system.detector_efficiency,
        dark_count_probability=1.0 - (1.0 - p_dc) ** 2,
        misalignment_error=system.misalignment_error,
    )


def _valid(system: LimSystem, settings: SourceSettings) -> bool:
    qx, p1, p2, mu1, mu2 = settings.as_tuple()
    mu3 = system.vacuum_intensity
    return 0.0 < qx < 1.0 and p1 > 0.0 and p2 > 0.0 and p1 + p2 < 1.0 and mu2 > mu3 and mu1 > mu2 + mu3 and mu1 < 10.0


def expected_block(
    system: LimSystem, length_km: float, settings: SourceSettings, n_key_bits: float
) -> tuple[BlockStatistics, float, float]:
    """The mean block of rule 2: ``(statistics, pulses N, key-basis error rate)``.

    Our key basis (Z in qcinode's naming) is the paper's X: ``key_counts``
    are ``n_{X,k}``, ``test_counts`` ``n_{Z,k}``.

    Raises:
        ConfigError: Settings outside the protocol's constraints (``mu1 > mu2 + mu3``,
            ``mu2 > mu3``, probabilities in (0, 1)).
    """
    if not _valid(system, settings):
        raise ConfigError(f"settings: outside the protocol's constraints: {settings}")
    phys = _physics(system, length_km, settings)
    p_ap = system.afterpulse_probability
    rates = [expected_gain(phys, k) * (1.0 + p_ap) for k in range(3)]
    # e_k: qcinode's exact error probability plus half the after-pulses (rule 1).
    errors = [expected_gain(phys, k) * (exact_error_rate(phys, k) + 0.5 * p_ap) for k in range(3)]
    qx = settings.basis_probability
    key_share = qx * qx
    test_share = (1.0 - qx) ** 2
    per_pulse_key = math.fsum(p * r for p, r in zip(phys.class_probabilities, rates)) * key_share
    pulses = n_key_bits / per_pulse_key
    key = [pulses * key_share * p * r for p, r in zip(phys.class_probabilities, rates)]
    test = [pulses * test_share * p * r for p, r in zip(phys.class_probabilities, rates)]
    test_errors = [pulses * test_share * p * e for p, e in zip(phys.class_probabilities, errors)]
    key_errors = math.fsum(pulses * key_share * p * e for p, e in zip(phys.class_probabilities, errors))
    test_counts = tuple(int(round(t)) for t in test)
    stats = BlockStatistics(
        intensities=phys.intensities,
        class_probabilities=phys.class_probabilities,
        key_counts=(int(round(key[0])), int(round(key[1])), int(round(key[2]))),
        test_counts=(test_counts[0], test_counts[1], test_counts[2]),
        test_errors=(
            min(int(round(test_errors[0])), test_counts[0]),
            min(int(round(test_errors[1])), test_counts[1]),
            min(int(round(test_errors[2])), test_counts[2]),
        ),
    )
    return stats, pulses, key_errors / math.fsum(key)


def secret_key_rate(
    system: LimSystem,
    length_km: float,
    settings: SourceSettings,
    n_key_bits: float,
    analysis: str = FINITE_KEY_LIM2014,
) -> tuple[float, KeyLengthResult | None]:
    """Secret bits per pulse ``l / N`` of the mean block (rules 2-3), and the key-length result.

    Settings outside the protocol's constraints give ``(0.0, None)``, so an
    optimiser may wander there.
    """
    check_finite_key(analysis)
    if not _valid(system, settings):
        return 0.0, None
    stats, pulses, qber = expected_block(system, length_km, settings, n_key_bits)
    leak = predicted_leak(stats.key_bits, min(qber, 0.5), system.f_ec)
    length = max(1.0, float(stats.key_bits))
    result: KeyLengthResult | None = None
    for _ in range(4):  # eps_sec = kappa l: a fixed point (rule 3)
        epsilon = min(system.kappa * max(length, 1.0), 0.5)
        result = decoy_key_length(stats, leak, system.verification_tag_bits, epsilon, analysis)
        if result.length_bits <= 0:
            return 0.0, result
        length = float(result.length_bits)
    assert result is not None
    return result.length_bits / pulses, result


#: Grid of the first search (rule 4): every combination is evaluated.
_GRID: Final[tuple[tuple[float, ...], ...]] = (
    (0.5, 0.7, 0.85, 0.95),  # q_x
    (0.1, 0.2, 0.35, 0.5, 0.7),  # p1
    (0.1, 0.2, 0.35, 0.55),  # p2
    (0.3, 0.45, 0.6, 0.8),  # mu1
    (0.05, 0.1, 0.17, 0.25),  # mu2
)


def _nelder_mead(
    f: Callable[[Sequence[float]], float], start: Sequence[float], step: float = 0.05, iterations: int = 600
) -> tuple[list[float], float]:
    """Minimises ``f`` from ``start`` (Nelder and Mead, Comput. J. 7, 308 (1965); standard coefficients)."""
    n = len(start)
    simplex = [list(start)]
    for i in range(n):
        point = list(start)
        point[i] += step * max(abs(point[i]), 0.1)
        simplex.append(point)
    values = [f(p) for p in simplex]
    for _ in range(iterations):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if abs(values[-1] - values[0]) <= 1e-12 * max(abs(values[0]), 1e-300) and values[0] < 0.0:
            break
        centroid = [math.fsum(p[j] for p in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]
        reflected = [c + (c - w) for c, w in zip(centroid, worst)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [c + 2.0 * (c - w) for c, w in zip(centroid, worst)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, p)] for p in simplex[1:]]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    index = min(range(n + 1), key=values.__getitem__)
    return simplex[index], values[index]


def optimise_rate(
    system: LimSystem, length_km: float, n_key_bits: float, analysis: str = FINITE_KEY_LIM2014
) -> tuple[float, SourceSettings | None]:
    """The largest secret key rate per pulse over the free parameters (rule 4), and where it is.

    ``(0.0, None)`` when no grid point gives key (the block is too small or
    the link too long for any setting).
    """

    def rate(x: Sequence[float]) -> float:
        return secret_key_rate(system, length_km, SourceSettings(*x), n_key_bits, analysis)[0]

    best_rate, best_x = 0.0, None
    for x in itertools.product(*_GRID):
        value = rate(x)
        if value > best_rate:
            best_rate, best_x = value, x
    if best_x is None:
        return 0.0, None
    point, value = _nelder_mead(lambda x: -rate(x), best_x)
    if -value > best_rate:
        best_rate, best_x = -value, tuple(point)
    return best_rate, SourceSettings(*best_x)


def max_distance(
    system: LimSystem,
    n_key_bits: float,
    analysis: str = FINITE_KEY_LIM2014,
    *,
    low_km: float = 0.0,
    high_km: float = 300.0,
    tolerance_km: float = 0.5,
) -> float:
    """The largest fibre length with a positive optimised rate, by bisection (rule 4); 0 if none.

    Raises:
        ConfigError: ``low_km >= high_km`` or a non-positive tolerance.
    """
    if not low_km < high_km or tolerance_km <= 0.0:
        raise ConfigError(f"max_distance: need low_km < high_km and tolerance_km > 0, got {low_km}, {high_km}, {tolerance_km}")
    if optimise_rate(system, low_km, n_key_bits, analysis)[0] <= 0.0:
        return 0.0
    if optimise_rate(system, high_km, n_key_bits, analysis)[0] > 0.0:
        return high_km
    while high_km - low_km > tolerance_km:
        middle = 0.5 * (low_km + high_km)
        if optimise_rate(system, middle, n_key_bits, analysis)[0] > 0.0:
            low_km = middle
        else:
            high_km = middle
    return low_km

