"""Which finite-key analysis turns a block's statistics into a secret key length.

Theory of operation
-------------------
Two analyses of a decoy-state block are selectable (topology
``postprocessing.finite_key``, :data:`FINITE_KEY_ANALYSES`); both return a
:class:`~qcinode.core.estimation.KeyLengthResult` and both keep the decoy
estimators, the phase-error bound and the key-length formula of Lim, Curty,
Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Eqs. (1)-(5) (our Z basis is
their X). They differ in one step only: how the counts observed per
intensity class, ``n_k`` (detections) and ``m_k`` (errors), are turned into
bounds on their expected values ``n_k^*`` (Lim et al. Eq. (A1): the sum over
detections of ``p_{k|n}``, the chance that a detection whose pulse held n
photons came from class k).

* ``lim2014`` (:func:`qcinode.core.estimation.key_length`): Hoeffding,
  ``|n_k - n_k^*| <= sqrt(n/2 ln(21/eps_sec))`` with ``n`` the WHOLE basis
  count, for every class. A class that is a small share of the basis (the
  decoy and vacuum classes of a source that sends 80 % signal pulses) gets a
  correction larger than its own count, and the block leaves no key.
* ``chernoff`` (:func:`chernoff_key_length`, the default): each class's
  count is bounded by the multiplicative Chernoff bound on ITS OWN count,
  which scales as ``sqrt(2 n_k ln(1/eps))``. Bounding each intensity's count
  by a multiplicative Chernoff bound on its own expected value is the
  approach of Lucamarini et al., Opt. Express 21, 24550 (2013), Zhang, Zhao,
  Razavi, Ma, PRA 95, 012333 (2017) and Yin et al., Sci. Rep. 10, 14312
  (2020); those papers derive tighter variants of the bound. The bounds
  here are the textbook ones, derived below from Chernoff's theorem, and
  are used inside Lim et al.'s estimators unchanged.

The Chernoff confidence bounds (the rule this module adds)
----------------------------------------------------------
Conditioned on Eve's choices (which detections happen and the photon number
of each), the class label of every detection is an independent draw of
Alice's, so ``n_k`` is a sum of independent Bernoulli variables with mean
``m = n_k^*`` -- the same fact Lim et al. use for Hoeffding. For such sums
(H. Chernoff, Ann. Math. Stat. 23, 493 (1952); M. Mitzenmacher, E. Upfal,
*Probability and Computing* (2005), Thms. 4.4 and 4.5, with
``ln(1 + d) >= 2d/(2 + d)``)::

    P[X >= (1 + d) m] <= exp(-d^2 m / (2 + d))      d > 0
    P[X <= (1 - d) m] <= exp(-d^2 m / 2)            0 < d < 1

Setting each right side to ``eps`` (``beta = ln(1/eps)``) and solving for the
``m`` at which the observed ``X`` sits on the edge gives confidence bounds on
the unknown mean, each failing with probability at most ``eps``::

    m^L(X) = X + beta/2 - sqrt(2 beta X + beta^2/4)       (clipped at 0)
    m^U(X) = X + beta   + sqrt(2 beta X + beta^2)

(``m < m^L(X)`` happens only if ``X >= m + t`` with ``t^2 = beta (2m + t)``,
i.e. ``d = t/m`` in the first inequality; ``m > m^U(X)`` only if
``X <= m - sqrt(2 beta m)``, i.e. ``d = sqrt(2 beta / m) <= 1`` in the
second.) They are :func:`chernoff_expected_bounds`. Lim et al.'s corrected
counts become ``n_k^- = (e^{mu_k}/p_k) m^L(n_k)`` and
``n_k^+ = (e^{mu_k}/p_k) m^U(n_k)``, likewise ``m_k^-``, ``m_k^+`` for the
test-basis errors; Eqs. (2)-(5) and (1) are then used unchanged::

    s_0 >= tau_0 (mu2 n_3^- - mu3 n_2^+) / (mu2 - mu3)                                   (Eq. 2)
    s_1 >= tau_1 mu1 [n_2^- - n_3^+ - (mu2^2 - mu3^2)/mu1^2 (n_1^+ - s_0/tau_0)]
           / (mu1 (mu2 - mu3) - mu2^2 + mu3^2)                                            (Eq. 3)
    v_1 <= tau_1 (m_2^+ - m_3^-) / (mu2 - mu3)                                            (Eq. 4)
    phi <= v_1/s_1' + gamma(eps_sec, v_1/s_1', s_1', s_1)                                  (Eq. 5)
    l   =  floor(s_0 + s_1 (1 - h(phi)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor)) (Eq. 1)

Epsilon accounting: every one-sided Chernoff bound is taken at
``eps_sec / 21``. The length uses 12 of them (5 per basis for ``s_0`` and
``s_1``, 2 for ``v_1``) where Lim et al. spend two-sided Hoeffding bounds, so
their ``6 log2(21/eps_sec)`` term still covers the union bound; it is kept as
is. As blocks grow, ``m^L`` and ``m^U`` tend to ``n_k`` and the length per key
bit tends to the same limit as ``lim2014``
(:func:`~qcinode.core.estimation.asymptotic_key_fraction`, up to the
looseness of three intensities); for every block it is at least as large
whenever ``sqrt(2 n_k beta) < sqrt(n beta / 2)``, i.e. for every class below a
quarter of its basis.

``yin2020``: Yin et al.'s statistics (:func:`yin_key_length`)
-------------------------------------------------------------
Yin, Zhou, Gu, Xie, Lu, Chen, Sci. Rep. 10, 14312 (2020) (arXiv:2002.06530)
work with EXPECTED values over the whole pulse sequence rather than Lim et
al.'s conditioning on photon numbers, and so need the Chernoff bounds both
ways: observed counts to bounds on their expected values
(:func:`chernoff_expected_bounds`), the decoy equations on expected values,
and the expected single-photon counts and errors back to bounds on the
observed ones (:func:`observed_bounds`: ``s^L = s^* - sqrt(2 beta s^*)``,
``v^U = v^* + beta/2 + sqrt(2 beta v^* + beta^2/4)``). The phase error is
their closed-form random-sampling gap ``phi = lambda + gamma^U(n, k,
lambda, eps)`` (:func:`yin_phase_error_gap`), and the key length spends
``6 log2(23/eps_sec)``. Here they are applied to Lim et al.'s
three-intensity protocol, each bound at ``eps_sec / 23``.

Why it is not the default. The paper's full text could not be consulted for
this implementation; ``gamma^U`` is taken from a public re-implementation
and checked against the exact hypergeometric tail it stands for
(``tests/unit/test_finite_key.py``): it is tighter than Lim et al.'s Eq. (5)
but, as written, fails with probability above its ``eps`` -- about 1.4x
``eps`` at 10^3 + 2*10^3 events, 7x at 2*10^4 + 2*10^4, 15x at 10^5 + 10^5
(a Stirling-approximation prefactor that grows with the sample). The
expected-to-observed conversion also costs ``sqrt(2 beta s_1)`` that Lim et
al.'s conditioning does not pay, so ``yin2020`` keeps slightly LESS key
than ``chernoff`` on the links qcinode models (0.158 against 0.166 secret
bits per key bit at 25 km, textbook source, 10^6-bit blocks, f 1.06).

Dispatch
--------
:func:`decoy_key_length` is THE key-length function of a decoy-state block:
the pipeline, :func:`expected_decoy_key_length` (planning, benches, status)
and the benches call it with the configured analysis name, so a planner sees
the figure the link will compute.
"""

from __future__ import annotations

import math
from typing import Final

from qcinode.core.estimation import (
    _EPSILON_PARTS,
    BlockStatistics,
    KeyLengthResult,
    SinglePhotonBounds,
    _check_real,
    _correction_bits,
    _key_basis_qber,
    _vacuum_and_single,
    expected_block_statistics,
    key_length,
    key_length_from_bounds,
    key_length_steps,
    predicted_leak,
)
from qcinode.core.physics import LinkPhysics
from qcinode.errors import ConfigError

__all__ = [
    "DEFAULT_FINITE_KEY",
    "FINITE_KEY_ANALYSES",
    "FINITE_KEY_CHERNOFF",
    "FINITE_KEY_LIM2014",
    "FINITE_KEY_YIN2020",
    "check_finite_key",
    "chernoff_expected_bounds",
    "chernoff_key_length",
    "decoy_key_length",
    "expected_decoy_key_length",
    "observed_bounds",
    "yin_key_length",
    "yin_phase_error_gap",
]

#: Lim et al. (2014) Eqs. (1)-(5) with Hoeffding corrections on the basis total.
FINITE_KEY_LIM2014: Final = "lim2014"
#: The same estimators with per-class multiplicative Chernoff bounds (the default).
FINITE_KEY_CHERNOFF: Final = "chernoff"
#: Yin, Zhou, Gu, Xie, Lu, Chen, Sci. Rep. 10, 14312 (2020): expected values both ways, their
#: phase-error gap (selectable, not the default: see the module docstring).
FINITE_KEY_YIN2020: Final = "yin2020"
#: Every analysis :func:`decoy_key_length` accepts (topology ``postprocessing.finite_key``); the default first.
FINITE_KEY_ANALYSES: Final[tuple[str, ...]] = (FINITE_KEY_CHERNOFF, FINITE_KEY_YIN2020, FINITE_KEY_LIM2014)
DEFAULT_FINITE_KEY: Final = FINITE_KEY_CHERNOFF
#: Yin et al.'s union bound: 23 events of ``eps_sec / 23`` each (their key length's ``6 log2(23/eps_sec)``).
_YIN_EPSILON_PARTS: Final = 23.0


def check_finite_key(name: str) -> str:
    """Returns ``name`` if it is one of :data:`FINITE_KEY_ANALYSES`.

    Raises:
        ConfigError: An unknown analysis (the message lists the known ones).
    """
    if name not in FINITE_KEY_ANALYSES:
        raise ConfigError(
            f"finite_key: expected one of {', '.join(FINITE_KEY_ANALYSES)}, got {name!r}"
        )
    return name


def chernoff_expected_bounds(observed: float, epsilon: float) -> tuple[float, float]:
    """Confidence bounds ``(m^L, m^U)`` on the mean of a sum of independent Bernoulli variables.

    ``m^L = X + beta/2 - sqrt(2 beta X + beta^2/4)`` (clipped at 0) and
    ``m^U = X + beta + sqrt(2 beta X + beta^2)`` with ``beta = ln(1/epsilon)``:
    the multiplicative Chernoff bounds solved for the mean (module docstring).
    Each fails with probability at most ``epsilon``.

    Args:
        observed: The observed sum ``X`` (>= 0).
        epsilon: Failure probability of each bound, in (0, 1).

    Raises:
        ConfigError: A negative count or ``epsilon`` outside (0, 1).
    """
    _check_real("observed", observed, 0.0, math.inf)
    _check_real("epsilon", epsilon, 0.0, 1.0, open_low=True)
    if epsilon >= 1.0:
        raise ConfigError(f"epsilon: must be below 1, got {epsilon!r}")
    beta = -math.log(epsilon)
    lower = observed + 0.5 * beta - math.sqrt(2.0 * beta * observed + 0.25 * beta * beta)
    upper = observed + beta + math.sqrt(2.0 * beta * observed + beta * beta)
    return max(lower, 0.0), upper


def _scaled_bounds(
    stats: BlockStatistics, counts: tuple[int, int, int], epsilon: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(minus, plus)``: ``(e^{mu_k}/p_k) m^{L,U}(n_k)`` per class."""
    minus: list[float] = []
    plus: list[float] = []
    for count, mu, p in zip(counts, stats.intensities, stats.class_probabilities):
        low, high = chernoff_expected_bounds(float(count), epsilon)
        scale = math.exp(mu) / p
        minus.append(scale * low)
        plus.append(scale * high)
    return tuple(minus), tuple(plus)


def chernoff_key_length(
    stats: BlockStatistics,
    leak_ec_bits: int,
    verification_tag_bits: int,
    security_epsilon: float,
) -> KeyLengthResult:
    """Secret key length of one block: Lim et al. (2014) Eqs. (1)-(5) with per-class Chernoff bounds.

    ``l = floor(s_Z0 + s_Z1 (1 - h(phi)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))``,
    clipped to ``[0, key_bits]``, ``eps_cor = 2^-verification_tag_bits``, with
    the corrected counts of :func:`chernoff_expected_bounds` at
    ``eps_sec / 21`` (module docstring). Same arguments, result and failure
    reasons as :func:`qcinode.core.estimation.key_length`.

    Raises:
        ConfigError: A negative leak or tag length, or ``eps_sec`` outside (0, 1).
    """
    correction = _correction_bits(leak_ec_bits, verification_tag_bits, security_epsilon)
    epsilon = security_epsilon / _EPSILON_PARTS
    return key_length_from_bounds(stats, leak_ec_bits, correction, security_epsilon, lambda st, counts: _scaled_bounds(st, counts, epsilon))


def observed_bounds(expected: float, epsilon: float) -> tuple[float, float]:
    """Bounds ``(chi^L, chi^U)`` on the observed value of a sum whose expected value is known.

    ``chi^L = phi - sqrt(2 beta phi)`` and
    ``chi^U = phi + beta/2 + sqrt(2 beta phi + beta^2/4)``, ``beta = ln(1/epsilon)``:
    the same two Chernoff tail inequalities as :func:`chernoff_expected_bounds`,
    solved for the observation instead of the mean (Yin et al. 2020, the
    bounds "for a given expected value" of their Methods). Each fails with
    probability at most ``epsilon``; ``chi^L`` is clipped at 0.

    Raises:
        ConfigError: A negative expected value or ``epsilon`` outside (0, 1).
    """
    _check_real("expected", expected, 0.0, math.inf)
    _check_real("epsilon", epsilon, 0.0, 1.0, open_low=True)
    if epsilon >= 1.0:
        raise ConfigError(f"epsilon: must be below 1, got {epsilon!r}")
    beta = -math.log(epsilon)
    lower = expected - math.sqrt(2.0 * beta * expected)
    upper = expected + 0.5 * beta + math.sqrt(2.0 * beta * expected + 0.25 * beta * beta)
    return max(lower, 0.0), upper


def yin_phase_error_gap(n: float, k: float, rate: float, epsilon: float) -> float:
    """Yin et al.'s random-sampling gap ``gamma^U(n, k, lambda, eps)`` (Sci. Rep. 10, 14312 (2020)).

    ``n + k`` single-photon events are split at random into ``k`` whose
    (phase) error rate ``lambda`` is observed and ``n`` whose error rate is
    then below ``lambda + gamma^U`` except with probability ``eps``::

        gamma^U = [(1 - 2 lambda) A G / (n + k)
                   + sqrt(A^2 G^2 / (n + k)^2 + 4 lambda (1 - lambda) G)]
                  / (2 + 2 A^2 G / (n + k)^2)
        A = max(n, k),   G = (n + k)/(n k) ln((n + k) / (2 pi n k lambda (1 - lambda) eps^2))

    It solves for the gap the hypergeometric tail bounded with Stirling's
    formula, and is tighter than Lim et al.'s Eq. (5) ``gamma``, which takes
    the looser Serfling-type bound. Checked against the exact hypergeometric
    tail in ``tests/unit/test_finite_key.py``.

    Args:
        n: Size of the unobserved part (the key basis' single-photon events), > 0.
        k: Size of the observed part (the test basis' single-photon events), > 0.
        rate: ``lambda``, the observed error rate, in (0, 1/2).
        epsilon: Failure probability, in (0, 1).
    """
    lam = min(max(rate, 1e-300), 0.5)
    total = n + k
    log_argument = math.log(total) - math.log(2.0 * math.pi * n * k * lam * (1.0 - lam)) - 2.0 * math.log(epsilon)
    if log_argument <= 0.0:
        return 0.0
    g = total / (n * k) * log_argument
    a = max(n, k)
    spread = a * a * g / (total * total)
    numerator = (1.0 - 2.0 * lam) * a * g / total + math.sqrt(spread * g + 4.0 * lam * (1.0 - lam) * g)
    return numerator / (2.0 + 2.0 * spread)


def _expected_vacuum_and_single(
    stats: BlockStatistics, counts: tuple[int, int, int], epsilon: float, tau0: float, tau1: float
) -> tuple[float, float]:
    """Lim et al. Eqs. (2)-(3) on the Chernoff bounds of the EXPECTED counts: ``(s_0^*, s_1^*)``."""
    return _vacuum_and_single(stats, counts, lambda st, c: _scaled_bounds(st, c, epsilon), tau0, tau1)


def yin_key_length(
    stats: BlockStatistics,
    leak_ec_bits: int,
    verification_tag_bits: int,
    security_epsilon: float,
) -> KeyLengthResult:
    """Secret key length of one block: Yin, Zhou, Gu, Xie, Lu, Chen, Sci. Rep. 10, 14312 (2020).

    The three-intensity protocol of Lim et al. (2014) with Yin et al.'s
    statistics (module docstring, "yin2020"): observed counts per class to
    bounds on their expected values (:func:`chernoff_expected_bounds`), Lim
    et al.'s decoy Eqs. (2)-(4) on expected values, expected single-photon
    counts and errors back to observed ones (:func:`observed_bounds`), the
    phase error ``phi = lambda + gamma^U`` (:func:`yin_phase_error_gap`),
    and ``l = floor(s_Z0 + s_Z1 (1 - h(phi)) - leak_EC - 6 log2(23/eps_sec)
    - log2(2/eps_cor))``, every bound at ``eps_sec / 23``. Same arguments,
    result and failure reasons as :func:`qcinode.core.estimation.key_length`.

    Raises:
        ConfigError: A negative leak or tag length, or ``eps_sec`` outside (0, 1).
    """
    _correction_bits(leak_ec_bits, verification_tag_bits, security_epsilon)  # checks the arguments
    epsilon = security_epsilon / _YIN_EPSILON_PARTS
    correction = 6.0 * math.log2(_YIN_EPSILON_PARTS / security_epsilon) + verification_tag_bits + 1.0


    def single_photon(tau0: float, tau1: float) -> SinglePhotonBounds:
        s0_expected, s1_expected = _expected_vacuum_and_single(stats, stats.key_counts, epsilon, tau0, tau1)
        _, s1_test_expected = _expected_vacuum_and_single(stats, stats.test_counts, epsilon, tau0, tau1)
        s1_key = observed_bounds(s1_expected, epsilon)[0] if s1_expected > 0.0 else s1_expected
        s1_test = observed_bounds(s1_test_expected, epsilon)[0] if s1_test_expected > 0.0 else s1_test_expected
        _, mu2, mu3 = stats.intensities
        errors_minus, errors_plus = _scaled_bounds(stats, stats.test_errors, epsilon)
        v1_expected = max(tau1 * (errors_plus[1] - errors_minus[2]) / (mu2 - mu3), 0.0)
        return SinglePhotonBounds(observed_bounds(s0_expected, epsilon)[0], s1_key, s1_test, observed_bounds(v1_expected, epsilon)[1])

    def gap(observed: float, s1_test: float, s1_key: float) -> float:
        return yin_phase_error_gap(s1_key, s1_test, observed, epsilon)

    return key_length_steps(stats, leak_ec_bits, correction, single_photon, gap)


def decoy_key_length(
    stats: BlockStatistics,
    leak_ec_bits: int,
    verification_tag_bits: int,
    security_epsilon: float,
    analysis: str = DEFAULT_FINITE_KEY,
) -> KeyLengthResult:
    """THE secret key length of a decoy-state block under the named analysis.

    Args:
        stats: The block's sifted counts per intensity class and basis.
        leak_ec_bits: Bits revealed by error correction.
        verification_tag_bits: Length of the verification hash.
        security_epsilon: Secrecy parameter in (0, 1).
        analysis: One of :data:`FINITE_KEY_ANALYSES`.

    Raises:
        ConfigError: An unknown analysis, or bad arguments (see the analyses).
    """
    name = check_finite_key(analysis)
    if name == FINITE_KEY_LIM2014:
        return key_length(stats, leak_ec_bits, verification_tag_bits, security_epsilon)
    if name == FINITE_KEY_YIN2020:
        return yin_key_length(stats, leak_ec_bits, verification_tag_bits, security_epsilon)
    return chernoff_key_length(stats, leak_ec_bits, verification_tag_bits, security_epsilon)


def expected_decoy_key_length(
    phys: LinkPhysics,
    n_key_bits: int,
    *,
    analysis: str = DEFAULT_FINITE_KEY,
    f_ec: float = 1.16,
    verification_tag_bits: int = 64,
    security_epsilon: float = 1e-10,
) -> KeyLengthResult:
    """:func:`decoy_key_length` of the mean block with ``n_key_bits`` key-basis detections.

    The block is :func:`~qcinode.core.estimation.expected_block_statistics`;
    the leak is :func:`~qcinode.core.estimation.predicted_leak` at the
    closed-form key-basis error rate and the given reconciliation
    inefficiency (use the configured method's measured ``f``).

    Args:
        phys: Link parameters.
        n_key_bits: Key-basis detections per block.
        analysis: One of :data:`FINITE_KEY_ANALYSES`.
        f_ec: Assumed reconciliation inefficiency.
        verification_tag_bits: Verification tag length.
        security_epsilon: Secrecy parameter.
    """
    stats = expected_block_statistics(phys, n_key_bits)
    leak = predicted_leak(stats.key_bits, _key_basis_qber(phys), f_ec)
    return decoy_key_length(stats, leak, verification_tag_bits, security_epsilon, analysis)
