"""Decoy-state estimates and the secret key length.

Theory of operation
-------------------
Two families of formulas live here.

**Asymptotic rates per pulse** (infinitely long keys), for planning, for the
docs and as test oracles:

* GLLP (Gottesman, Lo, Lütkenhaus, Preskill, QIC 4, 325 (2004)) with decoy
  states (Lo, Ma, Chen, PRL 94, 230504 (2005), "LMC"; Ma, Qi, Zhao, Lo,
  PRA 72, 012326 (2005), "MQZL")::

      R = q { -Q_mu f h(E_mu) + Q_1 [1 - h(e_1)] }                  (MQZL Eq. 1)

  with the channel model of MQZL Eqs. (4)-(11): ``eta = eta_Bob 10^(-alpha L/10)``,
  ``Y_1 = Y0 + eta``, ``e_1 = (e0 Y0 + e_det eta) / Y_1``,
  ``Q_mu = Y0 + 1 - exp(-eta mu)``, ``E_mu Q_mu = e0 Y0 + e_det (1 - exp(-eta mu))``.
* :func:`infinite_decoy_rate` plugs in the true ``Y_1`` and ``e_1``;
  :func:`vacuum_weak_decoy_rate` the vacuum + weak-decoy bounds
  ``Y1^L``, ``Q1^L``, ``e1^U`` of MQZL Eqs. (34), (35), (37);
  :func:`no_decoy_rate` the GLLP rate that tags every multi-photon pulse.
* :func:`optimal_mu` solves the MQZL Eq. (12) form
  ``(1 - mu) exp(-mu) = f h(e_det) / (1 - h(e_det))``; :func:`optimise_mu`
  maximises any of the rates numerically.
* :func:`plob_bound` is the repeaterless ceiling ``-log2(1 - eta)``
  (Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017)).

**The finite-size key length** of one block from a decoy-state source,
:func:`key_length`. It is Eqs. (1)-(5) of Lim, Curty,
Walenta, Xu, Zbinden, "Concise security bounds for practical decoy-state
quantum key distribution", PRA 89, 022307 (2014), with the bases renamed:
their key basis X is our Z and their test basis Z is our X::

    l = floor( s_Z0 + s_Z1 - s_Z1 h(phi) - leak_EC
               - 6 log2(21/eps_sec) - log2(2/eps_cor) )                 (Eq. 1)

* Counts per intensity ``k`` are Hoeffding-corrected,
  ``n_k^± = (e^{mu_k} / p_k) [n_k ± sqrt(n/2 ln(21/eps_sec))]`` with ``n`` the
  basis total; errors ``m_k^±`` likewise with the error total.
* Vacuum events (Eq. 2): ``s_0 >= tau_0 (mu2 n_3^- - mu3 n_2^+) / (mu2 - mu3)``,
  ``tau_n = sum_k p_k exp(-mu_k) mu_k^n / n!``.
* Single-photon events (Eq. 3):
  ``s_1 >= tau_1 mu1 [n_2^- - n_3^+ - (mu2^2 - mu3^2)/mu1^2 (n_1^+ - s_0/tau_0)]
  / (mu1 (mu2 - mu3) - mu2^2 + mu3^2)``, for the key and the test basis.
* Single-photon test errors (Eq. 4): ``v_1 <= tau_1 (m_2^+ - m_3^-) / (mu2 - mu3)``.
* Phase error of the key basis (Eq. 5):
  ``phi <= v_1/s_1' + gamma(eps_sec, v_1/s_1', s_1', s_1)`` with ``s_1'``
  the test-basis single-photon events and
  ``gamma(a,b,c,d) = sqrt((c+d)(1-b)b/(c d ln 2) log2((c+d)/(c d (1-b) b) 21^2/a^2))``.
* ``eps_cor = 2^-t`` for a ``t``-bit verification tag, so the last term is
  ``t + 1`` bits.

Degenerate inputs (no counts, ``s_1 <= 0``, ``phi >= 1/2``, corrections larger
than the entropy) give length 0 and a ``reason``; the function never raises
on statistics and never returns NaN. Bounds that are negative are clipped to
0 (0 is a valid lower bound on a count).

**The finite-size key length without decoy states**, :func:`no_decoy_key_length`,
for a source that sends signal pulses only (``decoy_states: false``). Same
result type, same epsilon conventions and the same last two terms as
:func:`key_length`; only the single-photon and phase-error bounds change.
Two assumptions (:data:`NO_DECOY_BOUNDS`):

* ``gllp`` (secure; GLLP, QIC 4, 325 (2004), the no-decoy rate of MQZL
  Sec. 3 / docs/physics.md section 1): every multi-photon pulse is tagged, i.e.
  fully known to Eve. Alice's photon numbers and both parties' basis choices
  are independent of Eve, so the number of multi-photon pulses that fall in
  the Z-Z (X-X) sift is exactly ``Binomial(N, p_Z^2 P_multi)``
  (``Binomial(N, p_X^2 P_multi)``), ``P_multi = 1 - (1 + mu) e^-mu``, ``N``
  the pulses sent in the block. Eve decides only which pulses are detected,
  so::

      M^U(N, p) = N p + (L + sqrt(L^2 + 8 L N p)) / 2,   L = ln(21/eps_sec)
      s_Z = n_Z - M^U(N, p_Z^2 P_multi)      (untagged key-basis detections)
      s_X = n_X - M^U(N, p_X^2 P_multi)      (untagged test-basis detections)
      phi = m_X / s_X + gamma(eps_sec, m_X / s_X, s_X, s_Z)
      l   = floor( s_Z - s_Z h(phi) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor) )

  ``M^U`` is the multiplicative Chernoff bound (H. Chernoff, Ann. Math.
  Stat. 23, 493 (1952)) in the form ``P[X >= (1 + d) m] <= exp(-d^2 m / (2 + d))``,
  valid for every ``d > 0``: the basic bound ``(e^d / (1 + d)^(1 + d))^m``
  (M. Mitzenmacher, E. Upfal, *Probability and Computing* (2005), Thm. 4.4)
  with ``ln(1 + d) >= 2d / (2 + d)``; solved for ``P <= eps_sec / 21``. It is used instead of
  Hoeffding's ``sqrt(N/2 ln(1/eps))`` because ``N p`` is tiny against ``N``
  (Hoeffding would charge ~ ``sqrt(N)``, which swamps a block at these
  pulse counts). Every test-basis error is charged to the untagged
  detections; the sampling correction is Lim et al.'s ``gamma``. The two
  Chernoff bounds and ``gamma`` use 3 of Lim et al.'s 21 shares of
  ``eps_sec``, so the ``6 log2(21/eps_sec)`` term is kept as in Eq. (1).
  For ``N -> infinity`` the length per pulse tends to the GLLP rate
  :func:`no_decoy_rate` with ``q = p_Z^2``:
  ``p_Z^2 {-Q f h(E) + Q (1 - D) [1 - h(E / (1 - D))]}``, ``D = P_multi / Q``.
* ``single-photon`` (**insecure**, what pre-decoy systems assumed, for
  demonstration only): every detection is a single-photon detection,
  ``s_Z = n_Z``, ``s_X = n_X`` and ``phi = m_X / n_X + gamma(...)``. Under a
  photon-number-splitting attack (Brassard, Lütkenhaus, Mor, Sanders, PRL 85,
  1330 (2000)) this length is positive although Eve holds a copy of almost
  every key bit.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from qcinode.core.physics import BACKGROUND_ERROR, LinkPhysics, exact_error_rate, expected_gain
from qcinode.errors import ConfigError

__all__ = [
    "AsymptoticParams",
    "BlockStatistics",
    "DecoyBounds",
    "KeyLengthResult",
    "NO_DECOY_BOUNDS",
    "NO_DECOY_GLLP",
    "NO_DECOY_SINGLE_PHOTON",
    "NoDecoyStatistics",
    "asymptotic_key_fraction",
    "expected_block_statistics",
    "expected_key_length",
    "expected_no_decoy_key_length",
    "expected_no_decoy_statistics",
    "h2",
    "infinite_decoy_rate",
    "key_length",
    "key_length_from_bounds",
    "no_key",
    "max_distance",
    "multi_photon_upper_bound",
    "no_decoy_key_length",
    "no_decoy_rate",
    "optimal_mu",
    "optimise_mu",
    "plob_bound",
    "predicted_leak",
    "vacuum_weak_decoy_bounds",
    "vacuum_weak_decoy_rate",
]

#: Lim et al. split the secrecy parameter into 21 equal parts.
_EPSILON_PARTS: Final = 21.0

RateFunction = Callable[["AsymptoticParams"], float]

REASON_NO_KEY_COUNTS: Final = "no key-basis detections"
REASON_NO_TEST_COUNTS: Final = "no test-basis detections"
REASON_NO_SINGLE_PHOTON_KEY: Final = "no single-photon key-basis events can be bounded (s_Z1<=0)"
REASON_NO_SINGLE_PHOTON_TEST: Final = "no single-photon test-basis events can be bounded (s_X1<=0)"
REASON_PHASE_ERROR: Final = "phase error bound is 1/2 or more"
REASON_CORRECTIONS: Final = "error-correction leak and finite-size corrections exceed the entropy"
REASON_TAGGED_KEY: Final = (
    "multi-photon pulses can account for every key-basis detection (s_Z1<=0, GLLP without decoys)"
)
REASON_TAGGED_TEST: Final = (
    "multi-photon pulses can account for every test-basis detection (s_X1<=0, GLLP without decoys)"
)

#: Secure no-decoy bound: every multi-photon pulse is tagged (GLLP).
NO_DECOY_GLLP: Final = "gllp"
#: Insecure no-decoy bound: every detection is trusted as a single photon.
NO_DECOY_SINGLE_PHOTON: Final = "single-photon"
#: Every assumption :func:`no_decoy_key_length` accepts; the topology's
#: ``source.no_decoy_bound`` takes its values from here.
NO_DECOY_BOUNDS: Final[tuple[str, ...]] = (NO_DECOY_GLLP, NO_DECOY_SINGLE_PHOTON)


def h2(p: float) -> float:
    """Binary entropy in bits; 0 at p = 0 and p = 1.

    Args:
        p: A probability in [0, 1].

    Raises:
        ConfigError: ``p`` outside [0, 1] or NaN.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"p: binary entropy needs a probability in [0, 1], got {p!r}")
    if p == 0.0 or p == 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def _h2_capped(p: float) -> float:
    """Binary entropy of ``min(max(p, 0), 1/2)``: the worst case above 1/2."""
    return h2(min(max(p, 0.0), 0.5))


def _check_real(
    name: str, value: float, low: float, high: float, *, open_low: bool = False
) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name}: must lie in {bracket}{low}, {high}], got {value!r}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name}: must be >= 0, got {value!r}")


# --------------------------------------------------------------------------- asymptotic


@dataclass(frozen=True, slots=True)
class AsymptoticParams:
    """Link and protocol parameters of the asymptotic rate formulas.

    Defaults are the GYS set of MQZL Table I (Gobby, Yuan, Shields,
    APL 84, 3762 (2004)) with ``mu`` at the Eq. (12) optimum.

    Attributes:
        attenuation_db_per_km: Fibre loss ``alpha``.
        length_km: Fibre length ``L``.
        detector_efficiency: ``eta_Bob``.
        dark_count_probability: ``Y0`` per pulse.
        misalignment_error: ``e_detector``.
        mu: Signal mean photon number.
        nu: Weak decoy mean photon number (vacuum + weak decoy method).
        f_ec: Error-correction inefficiency ``f(E)``.
        q: Sifting factor (1/2 for BB84 with unbiased bases).
    """

    attenuation_db_per_km: float = 0.21
    length_km: float = 0.0
    detector_efficiency: float = 0.045
    dark_count_probability: float = 1.7e-6
    misalignment_error: float = 0.033
    mu: float = 0.479
    nu: float = 0.05
    f_ec: float = 1.22
    q: float = 0.5

    def __post_init__(self) -> None:
        _check_real("attenuation_db_per_km", self.attenuation_db_per_km, 0.0, math.inf)
        _check_real("length_km", self.length_km, 0.0, math.inf)
        _check_real("detector_efficiency", self.detector_efficiency, 0.0, 1.0)
        _check_real("dark_count_probability", self.dark_count_probability, 0.0, 1.0)
        _check_real("misalignment_error", self.misalignment_error, 0.0, 0.5)
        _check_real("mu", self.mu, 0.0, 100.0, open_low=True)
        _check_real("nu", self.nu, 0.0, 100.0)
        _check_real("f_ec", self.f_ec, 1.0, 10.0)
        _check_real("q", self.q, 0.0, 1.0, open_low=True)

    @property
    def eta(self) -> float:
        """Total transmittance ``eta_Bob 10^(-alpha L / 10)``."""
        exponent = -self.attenuation_db_per_km * self.length_km / 10.0
        return self.detector_efficiency * math.pow(10.0, exponent)


def _gain(params: AsymptoticParams, intensity: float) -> float:
    """MQZL Eq. (8): ``Q = Y0 + 1 - exp(-eta mu)``."""
    return params.dark_count_probability - math.expm1(-params.eta * intensity)


def _error_rate(params: AsymptoticParams, intensity: float) -> float:
    """MQZL Eq. (9): ``E Q = e0 Y0 + e_det (1 - exp(-eta mu))``."""
    gain = _gain(params, intensity)
    if gain <= 0.0:
        return 0.0
    signal_part = -math.expm1(-params.eta * intensity)
    return (
        BACKGROUND_ERROR * params.dark_count_probability + params.misalignment_error * signal_part
    ) / gain


def _gllp(params: AsymptoticParams, q1: float, e1: float) -> float:
    gain = _gain(params, params.mu)
    error = _error_rate(params, params.mu)
    rate = params.q * (-gain * params.f_ec * _h2_capped(error) + q1 * (1.0 - _h2_capped(e1)))
    return max(rate, 0.0)


def infinite_decoy_rate(params: AsymptoticParams) -> float:
    """GLLP rate with the true single-photon yield and error (infinite decoys).

    MQZL Eq. (1) with Eqs. (4)-(11): ``Y_1 = Y0 + eta``,
    ``e_1 = (e0 Y0 + e_det eta) / Y_1``, ``Q_1 = Y_1 mu exp(-mu)``.

    Returns:
        Secret bits per pulse, clipped at 0.
    """
    y1 = params.dark_count_probability + params.eta
    if y1 <= 0.0:
        return 0.0
    y0, e_det = params.dark_count_probability, params.misalignment_error
    e1 = (BACKGROUND_ERROR * y0 + e_det * params.eta) / y1
    q1 = y1 * params.mu * math.exp(-params.mu)
    return _gllp(params, q1, e1)


@dataclass(frozen=True, slots=True)
class DecoyBounds:
    """Vacuum + weak decoy estimates (MQZL Eqs. 34, 35, 37).

    Attributes:
        y1_lower: ``Y1^L``, lower bound on the single-photon yield.
        q1_lower: ``Q1^L = Y1^L mu exp(-mu)``.
        e1_upper: ``e1^U``, upper bound on the single-photon error rate
            (1/2 when ``Y1^L <= 0``).
    """

    y1_lower: float
    q1_lower: float
    e1_upper: float


def vacuum_weak_decoy_bounds(params: AsymptoticParams) -> DecoyBounds:
    """Return ``Y1^L``, ``Q1^L`` and ``e1^U`` of the vacuum + weak decoy method.

    MQZL Eq. (34): ``Y1^L = mu/(mu nu - nu^2) [Q_nu e^nu - (nu^2/mu^2) Q_mu e^mu
    - ((mu^2 - nu^2)/mu^2) Y0]``; Eq. (35): ``Q1^L = Y1^L mu e^-mu``; Eq. (37):
    ``e1^U = (E_nu Q_nu e^nu - e0 Y0) / (Y1^L nu)``. Needs ``0 < nu < mu``;
    otherwise every bound is the trivial one.
    """
    mu, nu, y0 = params.mu, params.nu, params.dark_count_probability
    if not 0.0 < nu < mu:
        return DecoyBounds(y1_lower=0.0, q1_lower=0.0, e1_upper=0.5)
    q_mu, q_nu = _gain(params, mu), _gain(params, nu)
    e_nu = _error_rate(params, nu)
    y1 = (
        mu
        / (mu * nu - nu * nu)
        * (
            q_nu * math.exp(nu)
            - (nu * nu) / (mu * mu) * q_mu * math.exp(mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0
        )
    )
    if y1 <= 0.0:
        return DecoyBounds(y1_lower=y1, q1_lower=0.0, e1_upper=0.5)
    e1 = (e_nu * q_nu * math.exp(nu) - BACKGROUND_ERROR * y0) / (y1 * nu)
    return DecoyBounds(
        y1_lower=y1, q1_lower=y1 * mu * math.exp(-mu), e1_upper=min(max(e1, 0.0), 0.5)
    )


def vacuum_weak_decoy_rate(params: AsymptoticParams) -> float:
    """GLLP rate with the vacuum + weak decoy bounds (MQZL Eqs. 34-37).

    Returns:
        Secret bits per pulse, clipped at 0.
    """
    bounds = vacuum_weak_decoy_bounds(params)
    if bounds.q1_lower <= 0.0:
        return 0.0
    return _gllp(params, bounds.q1_lower, bounds.e1_upper)


def no_decoy_rate(params: AsymptoticParams) -> float:
    """GLLP rate without decoys: every multi-photon pulse counts as tagged.

    ``R = q {-Q_mu f h(E_mu) + Q_mu (1 - D) [1 - h(E_mu / (1 - D))]}`` with
    ``D = P_multi / Q_mu`` and ``P_multi = 1 - (1 + mu) exp(-mu)``. Useful
    only for ``mu`` of order ``eta`` (rate O(eta^2)).

    Returns:
        Secret bits per pulse, clipped at 0.
    """
    mu = params.mu
    gain = _gain(params, mu)
    if gain <= 0.0:
        return 0.0
    error = _error_rate(params, mu)
    p_multi = -math.expm1(-mu) - mu * math.exp(-mu)
    untagged = 1.0 - p_multi / gain
    if untagged <= 0.0:
        return 0.0
    rate = params.q * (
        -gain * params.f_ec * _h2_capped(error)
        + gain * untagged * (1.0 - _h2_capped(error / untagged))
    )
    return max(rate, 0.0)


def optimal_mu(params: AsymptoticParams) -> float:
    """Analytic optimum signal intensity, the MQZL Eq. (12) form.

    Solves ``(1 - mu) exp(-mu) = f h(e_det) / (1 - h(e_det))`` for ``mu`` in
    [0, 1] by bisection (the left side falls from 1 to 0 there). GYS gives
    0.479.

    Returns:
        The optimum ``mu``, or 0.0 when the misalignment leaves no key.
    """
    h = h2(params.misalignment_error)
    if h >= 1.0:
        return 0.0
    target = params.f_ec * h / (1.0 - h)
    if target >= 1.0:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if (1.0 - mid) * math.exp(-mid) > target:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return 0.5 * (low + high)


def optimise_mu(
    rate_fn: RateFunction,
    params: AsymptoticParams,
    *,
    mu_min: float = 1e-6,
    mu_max: float = 1.5,
    grid_points: int = 241,
) -> tuple[float, float]:
    """Maximise ``rate_fn`` over the signal intensity ``mu``.

    A logarithmic grid finds the best region (the no-decoy optimum sits at
    ``mu ~ eta``, the decoy ones near 0.5); golden-section search refines it.

    Args:
        rate_fn: One of the rate functions of this module (or alike).
        params: Other parameters; ``params.mu`` is ignored.
        mu_min: Smallest ``mu`` tried (> 0).
        mu_max: Largest ``mu`` tried.
        grid_points: Size of the coarse grid.

    Returns:
        ``(mu, rate)`` at the optimum; ``(mu_min, 0.0)`` if no ``mu`` gives key.
    """
    _check_real("mu_min", mu_min, 0.0, mu_max, open_low=True)
    log_low, log_high = math.log(mu_min), math.log(mu_max)
    step = (log_high - log_low) / (grid_points - 1)

    def rate_at(log_mu: float) -> float:
        return rate_fn(replace(params, mu=math.exp(log_mu)))

    rates = [rate_at(log_low + i * step) for i in range(grid_points)]
    best = max(range(grid_points), key=rates.__getitem__)
    if rates[best] <= 0.0:
        return mu_min, 0.0
    a = log_low + max(best - 1, 0) * step
    b = log_low + min(best + 1, grid_points - 1) * step
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    rc, rd = rate_at(c), rate_at(d)
    for _ in range(80):
        if rc >= rd:
            b, d, rd = d, c, rc
            c = b - ratio * (b - a)
            rc = rate_at(c)
        else:
            a, c, rc = c, d, rd
            d = a + ratio * (b - a)
            rd = rate_at(d)
        if b - a < 1e-10:
            break
    candidates = [(rates[best], log_low + best * step), (rc, c), (rd, d)]
    rate, log_mu = max(candidates)
    return math.exp(log_mu), rate


def plob_bound(eta: float) -> float:
    """Repeaterless secret-key capacity ``-log2(1 - eta)`` bits per channel use (PLOB).

    Args:
        eta: Channel transmittance in [0, 1].
    """
    _check_real("eta", eta, 0.0, 1.0)
    if eta >= 1.0:
        return math.inf
    return -math.log1p(-eta) / math.log(2.0)


def max_distance(
    rate_fn: RateFunction,
    params: AsymptoticParams,
    *,
    optimise: bool = False,
    upper_km: float = 500.0,
    tolerance_km: float = 1e-4,
) -> float:
    """Largest fibre length with a positive rate, by bisection on ``length_km``.

    Assumes the rate falls with distance (true of every rate here).

    Args:
        rate_fn: Rate function of :class:`AsymptoticParams`.
        params: Parameters; ``length_km`` is ignored.
        optimise: Re-optimise ``mu`` at every length (:func:`optimise_mu`)
            instead of keeping ``params.mu``.
        upper_km: Search limit; returned if the rate is still positive there.
        tolerance_km: Bisection stops when the bracket is this narrow.

    Returns:
        The distance in km (0.0 if there is no key even at 0 km).
    """

    def has_key(length_km: float) -> bool:
        at = replace(params, length_km=length_km)
        rate = optimise_mu(rate_fn, at)[1] if optimise else rate_fn(at)
        return rate > 0.0

    if not has_key(0.0):
        return 0.0
    if has_key(upper_km):
        return upper_km
    low, high = 0.0, upper_km
    while high - low > tolerance_km:
        mid = 0.5 * (low + high)
        if has_key(mid):
            low = mid
        else:
            high = mid
    return low


# --------------------------------------------------------------------------- finite size


@dataclass(frozen=True, slots=True)
class BlockStatistics:
    """Sifted detection counts of one block, per intensity class.

    Attributes:
        intensities: ``(mu1, mu2, mu3)`` with ``mu1 > mu2 + mu3`` and
            ``mu2 > mu3 >= 0`` (signal, decoy, vacuum).
        class_probabilities: Probability Alice chose each class; each > 0.
        key_counts: Sifted key-basis (Z) detections per class in the block.
        test_counts: Sifted test-basis (X) detections per class.
        test_errors: Errors among ``test_counts`` per class.
    """

    intensities: tuple[float, float, float]
    class_probabilities: tuple[float, float, float]
    key_counts: tuple[int, int, int]
    test_counts: tuple[int, int, int]
    test_errors: tuple[int, int, int]

    def __post_init__(self) -> None:
        names = ("intensities", "class_probabilities", "key_counts", "test_counts", "test_errors")
        for name in names:
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{name}: expected three values (signal, decoy, vacuum)")
        for index, mu in enumerate(self.intensities):
            _check_real(f"intensities[{index}]", mu, 0.0, 100.0)
        mu1, mu2, mu3 = self.intensities
        if not mu2 > mu3:
            raise ConfigError(
                f"intensities: decoy must exceed vacuum (mu2 > mu3), got {self.intensities}"
            )
        if not mu1 > mu2 + mu3:
            raise ConfigError(f"intensities: need mu1 > mu2 + mu3, got {self.intensities}")
        for index, p in enumerate(self.class_probabilities):
            _check_real(f"class_probabilities[{index}]", p, 0.0, 1.0, open_low=True)
        total = math.fsum(self.class_probabilities)
        if abs(total - 1.0) > 1e-9:
            raise ConfigError(f"class_probabilities: must sum to 1, got {total!r}")
        for name in ("key_counts", "test_counts", "test_errors"):
            for index, count in enumerate(getattr(self, name)):
                _check_count(f"{name}[{index}]", count)
        for index, (errors, count) in enumerate(zip(self.test_errors, self.test_counts)):
            if errors > count:
                raise ConfigError(f"test_errors[{index}]: {errors} errors among {count} detections")

    @property
    def key_bits(self) -> int:
        """Sifted key-basis detections in the block (the raw key length)."""
        return int(sum(self.key_counts))

    @property
    def test_qber(self) -> float:
        """Observed test-basis error rate over all classes (0 when empty)."""
        total = sum(self.test_counts)
        return sum(self.test_errors) / total if total else 0.0


@dataclass(frozen=True, slots=True)
class KeyLengthResult:
    """Outcome of :func:`key_length` (or :func:`no_decoy_key_length`, which
    fills the single-photon fields with its untagged-detection bounds).

    Attributes:
        length_bits: Secret key length ``l`` (>= 0).
        vacuum_bits: ``s_Z0``, lower bound on key-basis vacuum events.
        single_photon_bits: ``s_Z1``, lower bound on key-basis single-photon events.
        phase_error_bound: ``phi``, upper bound on their phase error rate
            (0.5 when it could not be bounded below 1/2).
        test_single_photon_bits: ``s_X1``, the same bound in the test basis.
        test_single_photon_errors: ``v_X1``, upper bound on errors among them.
        leak_ec_bits: The error-correction leak charged.
        correction_bits: ``6 log2(21/eps_sec) + log2(2/eps_cor)``.
        reason: Empty, or why the length is 0.
    """

    length_bits: int
    vacuum_bits: float
    single_photon_bits: float
    phase_error_bound: float
    test_single_photon_bits: float
    test_single_photon_errors: float
    leak_ec_bits: int
    correction_bits: float
    reason: str = ""


def _tau(
    intensities: tuple[float, float, float], probabilities: tuple[float, float, float], n: int
) -> float:
    """``tau_n``: probability that Alice sends an n-photon state."""
    return math.fsum(
        p * math.exp(-mu) * mu**n / math.factorial(n) for mu, p in zip(intensities, probabilities)
    )


def _corrected(
    stats: BlockStatistics, counts: tuple[int, int, int], log_term: float
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Hoeffding-corrected ``(minus, plus)`` counts ``(e^mu_k / p_k)(n_k -/+ delta)``."""
    delta = math.sqrt(sum(counts) / 2.0 * log_term)
    scale = [math.exp(mu) / p for mu, p in zip(stats.intensities, stats.class_probabilities)]
    minus = (
        scale[0] * (counts[0] - delta),
        scale[1] * (counts[1] - delta),
        scale[2] * (counts[2] - delta),
    )
    plus = (
        scale[0] * (counts[0] + delta),
        scale[1] * (counts[1] + delta),
        scale[2] * (counts[2] + delta),
    )
    return minus, plus


#: Bounds ``(minus, plus)`` on a basis's counts per intensity class, scaled by
#: ``e^mu_k / p_k``: Hoeffding's (:func:`_corrected`) or per-class Chernoff ones
#: (:mod:`qcinode.core.finite_key`).
CountBounds = Callable[[BlockStatistics, tuple[int, int, int]], tuple[tuple[float, ...], tuple[float, ...]]]


def _vacuum_and_single(stats: BlockStatistics, counts: tuple[int, int, int], bounds: CountBounds, tau0: float, tau1: float) -> tuple[float, float]:
    """Lim et al. Eqs. (2) and (3): lower bounds ``(s_0, s_1)`` for one basis."""
    mu1, mu2, mu3 = stats.intensities
    minus, plus = bounds(stats, counts)
    s0 = max(tau0 * (mu2 * minus[2] - mu3 * plus[1]) / (mu2 - mu3), 0.0)
    numerator = minus[1] - plus[2] - (mu2 * mu2 - mu3 * mu3) / (mu1 * mu1) * (plus[0] - s0 / tau0)
    denominator = mu1 * (mu2 - mu3) - mu2 * mu2 + mu3 * mu3
    s1 = tau1 * mu1 * numerator / denominator
    return s0, s1


def _gamma(epsilon: float, b: float, c: float, d: float) -> float:
    """Lim et al. Eq. (5) correction ``gamma(a, b, c, d)`` (random sampling without replacement).

    Evaluated in log space so no intermediate overflows. At ``b = 0`` the
    function is taken at its limit from above, which is 0.
    """
    b = min(max(b, 1e-300), 0.5)
    spread = (c + d) * (1.0 - b) * b / (c * d * math.log(2.0))
    log2_argument = (
        math.log2(c + d)
        - math.log2(c)
        - math.log2(d)
        - math.log2(1.0 - b)
        - math.log2(b)
        + 2.0 * (math.log2(_EPSILON_PARTS) - math.log2(epsilon))
    )
    if log2_argument <= 0.0:
        return 0.0
    return math.sqrt(spread * log2_argument)


def no_key(
    reason: str,
    s0: float = 0.0,
    s1: float = 0.0,
    s1_test: float = 0.0,
    v1: float = 0.0,
    phi: float = 0.5,
    *,
    leak_ec_bits: int,
    correction_bits: float,
) -> KeyLengthResult:
    """A key length of zero for ``reason``, with the bounds found before the analysis stopped (every analysis reports so)."""
    return KeyLengthResult(
        length_bits=0,
        vacuum_bits=s0,
        single_photon_bits=max(s1, 0.0),
        phase_error_bound=phi,
        test_single_photon_bits=max(s1_test, 0.0),
        test_single_photon_errors=v1,
        leak_ec_bits=leak_ec_bits,
        correction_bits=correction_bits,
        reason=reason,
    )


def _correction_bits(leak_ec_bits: int, verification_tag_bits: int, security_epsilon: float) -> float:
    """Checks the arguments both key-length functions share; returns the last two terms of
    Lim et al. Eq. (1), ``6 log2(21/eps_sec) + log2(2/eps_cor)`` with ``eps_cor = 2^-t``."""
    _check_count("leak_ec_bits", leak_ec_bits)
    _check_count("verification_tag_bits", verification_tag_bits)
    _check_real("security_epsilon", security_epsilon, 0.0, 1.0, open_low=True)
    if security_epsilon >= 1.0:
        raise ConfigError(f"security_epsilon: must be below 1, got {security_epsilon!r}")
    log_term = math.log(_EPSILON_PARTS) - math.log(security_epsilon)
    return 6.0 * log_term / math.log(2.0) + verification_tag_bits + 1.0


def key_length(
    stats: BlockStatistics,
    leak_ec_bits: int,
    verification_tag_bits: int,
    security_epsilon: float,
) -> KeyLengthResult:
    """Secret key length of one block: Lim, Curty, Walenta, Xu, Zbinden (2014), Eqs. (1)-(5).

    ``l = floor(s_Z0 + s_Z1 - s_Z1 h(phi) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))``,
    clipped to ``[0, key_bits]``, with ``eps_cor = 2^-verification_tag_bits``.
    See the module docstring for the bounds.

    Args:
        stats: The block's sifted counts per intensity class and basis.
        leak_ec_bits: Bits revealed by error correction (measured, or
            :func:`predicted_leak` before the fact).
        verification_tag_bits: Length ``t`` of the verification hash; the
            correctness parameter is ``2^-t``.
        security_epsilon: Secrecy parameter ``eps_sec`` in (0, 1).

    Returns:
        The length and the intermediate bounds; length 0 with a ``reason``
        when the statistics leave no key.

    Raises:
        ConfigError: A negative leak or tag length, or ``eps_sec`` outside (0, 1).
    """
    correction = _correction_bits(leak_ec_bits, verification_tag_bits, security_epsilon)
    log_term = math.log(_EPSILON_PARTS) - math.log(security_epsilon)
    return key_length_from_bounds(stats, leak_ec_bits, correction, security_epsilon, lambda st, counts: _corrected(st, counts, log_term))


def key_length_from_bounds(
    stats: BlockStatistics, leak_ec_bits: int, correction: float, security_epsilon: float, bounds: CountBounds
) -> KeyLengthResult:
    """Lim et al. (2014) Eqs. (1)-(5) on counts bounded by ``bounds``: :func:`key_length`'s steps for any count bounds.

    Args:
        stats: The block's sifted counts (checked by the caller).
        leak_ec_bits: Bits revealed by error correction.
        correction: ``6 log2(21/eps_sec) + log2(2/eps_cor)`` (:func:`_correction_bits`).
        security_epsilon: ``eps_sec``, for the phase-error step's ``gamma``.
        bounds: The analysis's bounds on each basis's counts per intensity class.
    """

    def single_photon(tau0: float, tau1: float) -> SinglePhotonBounds:
        s0_key, s1_key = _vacuum_and_single(stats, stats.key_counts, bounds, tau0, tau1)
        _, s1_test = _vacuum_and_single(stats, stats.test_counts, bounds, tau0, tau1)
        _, mu2, mu3 = stats.intensities
        errors_minus, errors_plus = bounds(stats, stats.test_errors)
        v1 = max(tau1 * (errors_plus[1] - errors_minus[2]) / (mu2 - mu3), 0.0)
        return SinglePhotonBounds(s0_key, s1_key, s1_test, v1)

    def gap(observed: float, s1_test: float, s1_key: float) -> float:
        return _gamma(security_epsilon, observed, s1_test, s1_key)

    return key_length_steps(stats, leak_ec_bits, correction, single_photon, gap)


@dataclass(frozen=True, slots=True)
class SinglePhotonBounds:
    """What a finite-key analysis bounds before the phase-error step (Lim et al. 2014, Eqs. (2)-(4)).

    Attributes:
        vacuum_key: ``s_Z0``, lower bound on vacuum events in the key basis.
        single_key: ``s_Z1``, lower bound on single-photon events in the key basis.
        single_test: ``s_X1``, lower bound on single-photon events in the test basis.
        single_test_errors: ``v_X1``, upper bound on their errors.
    """

    vacuum_key: float
    single_key: float
    single_test: float
    single_test_errors: float


def key_length_steps(
    stats: BlockStatistics,
    leak_ec_bits: int,
    correction: float,
    single_photon: Callable[[float, float], SinglePhotonBounds],
    phase_gap: Callable[[float, float, float], float],
) -> KeyLengthResult:
    """The steps every decoy analysis shares (Lim et al. 2014, Eq. (1)), given its bounds.

    No key without key-basis or test-basis counts; the analysis's
    single-photon bounds (``single_photon(tau0, tau1)``, Eqs. (2)-(4)); no key
    without single photons in either basis; the phase error
    ``phi = v_X1 / s_X1 + phase_gap(v_X1 / s_X1, s_X1, s_Z1)`` (Eq. (5)'s
    ``gamma`` or another analysis's gap) below 1/2; then
    ``l = floor(s_Z0 + s_Z1 (1 - h(phi)) - leak_EC - correction)`` clipped to
    ``[0, key_bits]``.

    Args:
        stats: The block's sifted counts (checked by the caller).
        leak_ec_bits: Bits revealed by error correction.
        correction: The analysis's ``epsilon`` terms, subtracted from the length.
        single_photon: The analysis's bounds, given ``tau_0`` and ``tau_1``.
        phase_gap: The analysis's deviation of the phase error from the observed ratio.
    """
    zero = functools.partial(no_key, leak_ec_bits=int(leak_ec_bits), correction_bits=correction)

    if stats.key_bits == 0:
        return zero(REASON_NO_KEY_COUNTS)
    if sum(stats.test_counts) == 0:
        return zero(REASON_NO_TEST_COUNTS)

    tau0 = _tau(stats.intensities, stats.class_probabilities, 0)
    tau1 = _tau(stats.intensities, stats.class_probabilities, 1)
    found = single_photon(tau0, tau1)
    s0_key, s1_key, s1_test, v1 = found.vacuum_key, found.single_key, found.single_test, found.single_test_errors
    if s1_key <= 0.0:
        return zero(REASON_NO_SINGLE_PHOTON_KEY, s0_key, s1_key, s1_test)
    if s1_test <= 0.0:
        return zero(REASON_NO_SINGLE_PHOTON_TEST, s0_key, s1_key, s1_test)

    observed = v1 / s1_test
    if observed >= 0.5:
        return zero(REASON_PHASE_ERROR, s0_key, s1_key, s1_test, v1)
    phi = observed + phase_gap(observed, s1_test, s1_key)
    if phi >= 0.5:
        return zero(REASON_PHASE_ERROR, s0_key, s1_key, s1_test, v1)

    raw = s0_key + s1_key * (1.0 - h2(phi)) - leak_ec_bits - correction
    length = min(math.floor(raw), stats.key_bits) if raw > 0.0 else 0
    if length <= 0:
        return zero(REASON_CORRECTIONS, s0_key, s1_key, s1_test, v1, phi)
    return KeyLengthResult(
        length_bits=int(length),
        vacuum_bits=s0_key,
        single_photon_bits=s1_key,
        phase_error_bound=phi,
        test_single_photon_bits=s1_test,
        test_single_photon_errors=v1,
        leak_ec_bits=int(leak_ec_bits),
        correction_bits=correction,
    )


@dataclass(frozen=True, slots=True)
class NoDecoyStatistics:
    """Sifted detection counts of one block from a source without decoy states.

    Every pulse is a signal pulse of mean photon number ``intensity``.

    Attributes:
        intensity: ``mu``, the signal mean photon number (> 0).
        z_basis_probability: ``p_Z``, the probability that Alice (and,
            independently, Bob) chooses the Z (key) basis, in (0, 1).
        pulses: ``N``, pulses sent in the block (every frame whose sifted
            detections are in it; both ends count the same frames).
        key_bits: ``n_Z``, sifted key-basis (Z) detections.
        test_bits: ``n_X``, sifted test-basis (X) detections.
        test_errors: ``m_X``, errors among them.
    """

    intensity: float
    z_basis_probability: float
    pulses: int
    key_bits: int
    test_bits: int
    test_errors: int

    def __post_init__(self) -> None:
        _check_real("intensity", self.intensity, 0.0, 100.0, open_low=True)
        _check_real("z_basis_probability", self.z_basis_probability, 0.0, 1.0, open_low=True)
        if self.z_basis_probability >= 1.0:
            raise ConfigError(
                f"z_basis_probability: must be below 1, got {self.z_basis_probability!r}"
            )
        for name in ("pulses", "key_bits", "test_bits", "test_errors"):
            _check_count(name, getattr(self, name))
        if self.test_errors > self.test_bits:
            raise ConfigError(
                f"test_errors: {self.test_errors} errors among {self.test_bits} detections"
            )
        if self.key_bits + self.test_bits > self.pulses:
            raise ConfigError(
                f"pulses: {self.key_bits + self.test_bits} sifted detections from "
                f"{self.pulses} pulses (a pulse slot clicks at most once)"
            )

    @property
    def multi_photon_probability(self) -> float:
        """``P_multi = 1 - (1 + mu) e^-mu``, the chance that a pulse has two photons or more."""
        mu = self.intensity
        return -math.expm1(-mu) - mu * math.exp(-mu)

    @property
    def test_qber(self) -> float:
        """Observed test-basis error rate ``m_X / n_X`` (0 when empty)."""
        return self.test_errors / self.test_bits if self.test_bits else 0.0


def multi_photon_upper_bound(pulses: int, probability: float, epsilon: float) -> float:
    """Upper bound on a ``Binomial(pulses, probability)`` count, failing with probability <= ``epsilon``.

    Multiplicative Chernoff bound (Chernoff, Ann. Math. Stat. 23, 493
    (1952)): with ``m = N p``, ``P[X >= (1 + d) m] <= (e^d / (1 + d)^(1 + d))^m
    <= exp(-d^2 m / (2 + d))`` for every ``d > 0`` (Mitzenmacher and Upfal,
    *Probability and Computing* (2005), Thm. 4.4, and
    ``ln(1 + d) >= 2d / (2 + d)``). Setting the right side to ``epsilon`` and
    solving the quadratic in ``d m`` gives::

        X <= m + (L + sqrt(L^2 + 8 L m)) / 2,   L = ln(1/epsilon)

    which is about ``m + sqrt(2 m L)`` for ``m >> L``, far tighter than
    Hoeffding's ``m + sqrt(N L / 2)`` when ``p`` is small. Capped at ``N``.

    Args:
        pulses: Number of trials ``N``.
        probability: Success probability ``p`` of each trial.
        epsilon: Failure probability of the bound, in (0, 1).

    Raises:
        ConfigError: A negative ``pulses``, ``p`` outside [0, 1] or ``epsilon``
            outside (0, 1).
    """
    _check_count("pulses", pulses)
    _check_real("probability", probability, 0.0, 1.0)
    _check_real("epsilon", epsilon, 0.0, 1.0, open_low=True)
    if epsilon >= 1.0:
        raise ConfigError(f"epsilon: must be below 1, got {epsilon!r}")
    mean = pulses * probability
    log_term = -math.log(epsilon)
    bound = mean + 0.5 * (log_term + math.sqrt(log_term * log_term + 8.0 * log_term * mean))
    return min(bound, float(pulses))


def no_decoy_key_length(
    stats: NoDecoyStatistics,
    leak_ec_bits: int,
    verification_tag_bits: int,
    security_epsilon: float,
    bound: str = NO_DECOY_GLLP,
) -> KeyLengthResult:
    """Secret key length of one block from a source without decoy states.

    ``l = floor(s_Z - s_Z h(phi) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))``,
    clipped to ``[0, n_Z]``, with ``eps_cor = 2^-verification_tag_bits`` as in
    :func:`key_length`. With ``bound="gllp"`` (GLLP: multi-photon pulses are
    tagged), ``s_Z = n_Z - M^U(N, p_Z^2 P_multi)``,
    ``s_X = n_X - M^U(N, p_X^2 P_multi)`` with the Chernoff bound
    :func:`multi_photon_upper_bound` at ``eps_sec / 21``; with
    ``bound="single-photon"`` (insecure) ``s_Z = n_Z`` and ``s_X = n_X``.
    Then ``phi = m_X / s_X + gamma(eps_sec, m_X / s_X, s_X, s_Z)`` (Lim et al.
    Eq. 5). See the module docstring for the derivation and the limit.

    In the result, ``single_photon_bits`` is ``s_Z`` (untagged key-basis
    detections), ``test_single_photon_bits`` is ``s_X``,
    ``test_single_photon_errors`` is ``m_X`` (every error charged to them)
    and ``vacuum_bits`` is 0 (without decoys vacuum events are not
    estimated; they are among the untagged ones).

    Args:
        stats: The block's sifted counts and the pulses sent.
        leak_ec_bits: Bits revealed by error correction.
        verification_tag_bits: Length ``t`` of the verification hash.
        security_epsilon: Secrecy parameter ``eps_sec`` in (0, 1).
        bound: One of :data:`NO_DECOY_BOUNDS`.

    Returns:
        The length and the intermediate bounds; length 0 with a ``reason``
        when the statistics leave no key.

    Raises:
        ConfigError: An unknown ``bound``, a negative leak or tag length, or
            ``eps_sec`` outside (0, 1).
    """
    if bound not in NO_DECOY_BOUNDS:
        raise ConfigError(f"bound: expected one of {', '.join(NO_DECOY_BOUNDS)}, got {bound!r}")
    correction = _correction_bits(leak_ec_bits, verification_tag_bits, security_epsilon)

    def zero(
        reason: str, s_key: float = 0.0, s_test: float = 0.0, phi: float = 0.5
    ) -> KeyLengthResult:
        return KeyLengthResult(
            length_bits=0,
            vacuum_bits=0.0,
            single_photon_bits=max(s_key, 0.0),
            phase_error_bound=phi,
            test_single_photon_bits=max(s_test, 0.0),
            test_single_photon_errors=float(stats.test_errors),
            leak_ec_bits=int(leak_ec_bits),
            correction_bits=correction,
            reason=reason,
        )

    if stats.key_bits == 0:
        return zero(REASON_NO_KEY_COUNTS)
    if stats.test_bits == 0:
        return zero(REASON_NO_TEST_COUNTS)

    s_key, s_test = float(stats.key_bits), float(stats.test_bits)
    if bound == NO_DECOY_GLLP:
        p_multi = stats.multi_photon_probability
        p_z = stats.z_basis_probability
        epsilon = security_epsilon / _EPSILON_PARTS
        s_key -= multi_photon_upper_bound(stats.pulses, p_z * p_z * p_multi, epsilon)
        s_test -= multi_photon_upper_bound(stats.pulses, (1.0 - p_z) ** 2 * p_multi, epsilon)
        if s_key <= 0.0:
            return zero(REASON_TAGGED_KEY, s_key, s_test)
        if s_test <= 0.0:
            return zero(REASON_TAGGED_TEST, s_key, s_test)

    observed = stats.test_errors / s_test
    if observed >= 0.5:
        return zero(REASON_PHASE_ERROR, s_key, s_test)
    phi = observed + _gamma(security_epsilon, observed, s_test, s_key)
    if phi >= 0.5:
        return zero(REASON_PHASE_ERROR, s_key, s_test)

    raw = s_key * (1.0 - h2(phi)) - leak_ec_bits - correction
    length = min(math.floor(raw), stats.key_bits) if raw > 0.0 else 0
    if length <= 0:
        return zero(REASON_CORRECTIONS, s_key, s_test, phi)
    return KeyLengthResult(
        length_bits=int(length),
        vacuum_bits=0.0,
        single_photon_bits=s_key,
        phase_error_bound=phi,
        test_single_photon_bits=s_test,
        test_single_photon_errors=float(stats.test_errors),
        leak_ec_bits=int(leak_ec_bits),
        correction_bits=correction,
    )


def predicted_leak(n: int, qber: float, f_ec: float) -> int:
    """Expected error-correction leak ``ceil(f n h(qber))`` bits.

    Args:
        n: Key bits to reconcile.
        qber: Their error rate.
        f_ec: Reconciliation inefficiency (>= 1).
    """
    _check_count("n", n)
    _check_real("qber", qber, 0.0, 1.0)
    _check_real("f_ec", f_ec, 1.0, math.inf)
    return int(math.ceil(f_ec * n * _h2_capped(qber)))


def expected_block_statistics(phys: LinkPhysics, n_key_bits: int) -> BlockStatistics:
    """The mean :class:`BlockStatistics` of a block with ``n_key_bits`` key-basis detections.

    Built from the closed forms of :mod:`qcinode.core.physics`
    (:func:`~qcinode.core.physics.expected_gain` and the exact error rate of
    its receiver, Eve included): a pulse lands in the Z-Z sift of class ``k``
    with probability ``p_k pz^2 Q_k`` and in the X-X sift with
    ``p_k (1 - pz)^2 Q_k``; counts are rounded to integers.

    Args:
        phys: Link parameters.
        n_key_bits: Number of sifted key-basis detections in the block.
    """
    _check_count("n_key_bits", n_key_bits)
    pz = phys.z_basis_probability
    gains = [expected_gain(phys, k) for k in range(3)]
    errors = [exact_error_rate(phys, k) for k in range(3)]
    per_pulse_key = math.fsum(p * pz * pz * q for p, q in zip(phys.class_probabilities, gains))
    if per_pulse_key <= 0.0:
        raise ConfigError("phys: no key-basis detections are possible with these parameters")
    pulses = n_key_bits / per_pulse_key
    key = [pulses * p * pz * pz * q for p, q in zip(phys.class_probabilities, gains)]
    test = [pulses * p * (1.0 - pz) ** 2 * q for p, q in zip(phys.class_probabilities, gains)]
    test_errors = [t * e for t, e in zip(test, errors)]
    test_rounded = tuple(int(round(t)) for t in test)
    return BlockStatistics(
        intensities=phys.intensities,
        class_probabilities=phys.class_probabilities,
        key_counts=(int(round(key[0])), int(round(key[1])), int(round(key[2]))),
        test_counts=(test_rounded[0], test_rounded[1], test_rounded[2]),
        test_errors=(
            min(int(round(test_errors[0])), test_rounded[0]),
            min(int(round(test_errors[1])), test_rounded[1]),
            min(int(round(test_errors[2])), test_rounded[2]),
        ),
    )


def expected_key_length(
    phys: LinkPhysics,
    n_key_bits: int,
    *,
    f_ec: float = 1.16,
    verification_tag_bits: int = 64,
    security_epsilon: float = 1e-10,
    analysis: str | None = None,
) -> KeyLengthResult:
    """The key length of the mean block with ``n_key_bits`` key-basis detections.

    The leak is :func:`predicted_leak` at the expected key-basis error rate.
    Benches print this next to measured block results. The length is that of
    the finite-key analysis ``analysis`` names
    (:data:`qcinode.core.finite_key.FINITE_KEY_ANALYSES`; None: the default,
    the per-class Chernoff analysis; ``"lim2014"``: :func:`key_length`),
    through :func:`qcinode.core.finite_key.decoy_key_length`, the function the
    pipeline calls.

    Args:
        phys: Link parameters (intensities must satisfy the Lim et al. conditions).
        n_key_bits: Key-basis detections per block.
        f_ec: Assumed reconciliation inefficiency.
        verification_tag_bits: Verification tag length.
        security_epsilon: Secrecy parameter.
        analysis: Finite-key analysis name, or None for the default.
    """
    from qcinode.core.finite_key import DEFAULT_FINITE_KEY, expected_decoy_key_length  # noqa: PLC0415 - cycle

    return expected_decoy_key_length(
        phys,
        n_key_bits,
        analysis=DEFAULT_FINITE_KEY if analysis is None else analysis,
        f_ec=f_ec,
        verification_tag_bits=verification_tag_bits,
        security_epsilon=security_epsilon,
    )


def _key_basis_qber(phys: LinkPhysics) -> float:
    weights = [p * expected_gain(phys, k) for k, p in enumerate(phys.class_probabilities)]
    total = math.fsum(weights)
    if total <= 0.0:
        return 0.0
    return math.fsum(w * exact_error_rate(phys, k) for k, w in enumerate(weights)) / total


def _check_signal_only(phys: LinkPhysics) -> None:
    if phys.class_probabilities[0] != 1.0:
        raise ConfigError(
            "phys: a source without decoy states sends signal pulses only "
            f"(class_probabilities (1, 0, 0)), got {phys.class_probabilities}"
        )


def expected_no_decoy_statistics(phys: LinkPhysics, n_key_bits: int) -> NoDecoyStatistics:
    """The mean :class:`NoDecoyStatistics` of a block with ``n_key_bits`` key-basis detections.

    From the closed forms of :mod:`qcinode.core.physics`, Eve included: a
    pulse lands in the Z-Z sift with probability ``p_Z^2 Q`` and in the X-X
    sift with ``p_X^2 Q``, ``Q`` = :func:`~qcinode.core.physics.expected_gain`
    of the signal class; test errors at
    :func:`~qcinode.core.physics.exact_error_rate`. The block holds
    ``N = n_key_bits / (p_Z^2 Q)`` pulses; counts are rounded to integers.

    Args:
        phys: Link parameters of a signal-only source (class probabilities
            ``(1, 0, 0)``).
        n_key_bits: Number of sifted key-basis detections in the block.

    Raises:
        ConfigError: The source sends decoy or vacuum pulses, or no detection
            is possible.
    """
    _check_count("n_key_bits", n_key_bits)
    _check_signal_only(phys)
    p_z = phys.z_basis_probability
    gain = expected_gain(phys, 0)
    if gain <= 0.0 or p_z <= 0.0:
        raise ConfigError("phys: no key-basis detections are possible with these parameters")
    pulses = n_key_bits / (p_z * p_z * gain)
    test = int(round(pulses * (1.0 - p_z) ** 2 * gain))
    return NoDecoyStatistics(
        intensity=phys.intensities[0],
        z_basis_probability=p_z,
        pulses=int(round(pulses)),
        key_bits=n_key_bits,
        test_bits=test,
        test_errors=min(int(round(test * exact_error_rate(phys, 0))), test),
    )


def expected_no_decoy_key_length(
    phys: LinkPhysics,
    n_key_bits: int,
    *,
    bound: str = NO_DECOY_GLLP,
    f_ec: float = 1.16,
    verification_tag_bits: int = 64,
    security_epsilon: float = 1e-10,
) -> KeyLengthResult:
    """:func:`no_decoy_key_length` of the mean block with ``n_key_bits`` key-basis detections.

    The leak is :func:`predicted_leak` at the closed-form signal error rate
    (Eve included). Benches and tests print this next to measured blocks.

    Args:
        phys: Link parameters of a signal-only source.
        n_key_bits: Key-basis detections per block.
        bound: One of :data:`NO_DECOY_BOUNDS`.
        f_ec: Assumed reconciliation inefficiency.
        verification_tag_bits: Verification tag length.
        security_epsilon: Secrecy parameter.
    """
    stats = expected_no_decoy_statistics(phys, n_key_bits)
    leak = predicted_leak(stats.key_bits, exact_error_rate(phys, 0), f_ec)
    return no_decoy_key_length(stats, leak, verification_tag_bits, security_epsilon, bound)


def asymptotic_key_fraction(phys: LinkPhysics, f_ec: float = 1.16) -> float:
    """Secret bits per key-basis detection for an infinite block and infinite decoys.

    The limit the finite-size :func:`key_length` approaches (from below) as
    blocks grow, up to the looseness of three-intensity decoy bounds: every
    class contributes to the key (as in Lim et al.), vacuum emissions count
    as secure, single photons pay ``h(e_1)``, everything pays ``f h(E_Z)``::

        r = [sum_k p_k e^-mu_k (Y0 + mu_k Y_1 (1 - h(e_1)))
             - f h(E_Z) sum_k p_k Q_k] / sum_k p_k Q_k

    with the receiver model's exact ``Y_1 = 1 - (1 - Y0)(1 - eta)`` and
    ``e_1``. Eve is ignored. Clipped at 0.

    Args:
        phys: Link parameters.
        f_ec: Reconciliation inefficiency.
    """
    eta, y0 = phys.eta, phys.dark_count_probability
    p_d = phys.detector_dark_probability
    e = phys.misalignment_error
    y1 = 1.0 - (1.0 - y0) * (1.0 - eta)
    error_and_click = (1.0 - eta) * BACKGROUND_ERROR * y0 + eta * (
        e * (1.0 - 0.5 * p_d) + (1.0 - e) * 0.5 * p_d
    )
    e1 = error_and_click / y1 if y1 > 0.0 else 0.5
    gains = [expected_gain(phys, k) for k in range(3)]
    detected = math.fsum(p * q for p, q in zip(phys.class_probabilities, gains))
    if detected <= 0.0:
        return 0.0
    secure = math.fsum(
        p * math.exp(-mu) * (y0 + mu * y1 * (1.0 - _h2_capped(e1)))
        for mu, p in zip(phys.intensities, phys.class_probabilities)
    )
    leak = f_ec * _h2_capped(_key_basis_qber(phys)) * detected
    return max((secure - leak) / detected, 0.0)

