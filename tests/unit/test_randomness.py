"""The CSPRNG behind a running node's key bits and bases."""

from __future__ import annotations

import math

import numpy as np

from qcinode.core.physics import LinkPhysics, transmit
from qcinode.core.randomness import CsprngGenerator


def test_empty_draws_work_before_and_after_the_first_real_one() -> None:
    # A frame in which nothing is detected (a satellite low on the horizon) asks for zero bits.
    rng = CsprngGenerator()
    assert rng.bytes(0) == b""
    assert rng.random(0).shape == (0,)
    assert len(rng.bytes(16)) == 16
    assert rng.integers(0, 2, size=0).shape == (0,)


def test_a_frame_with_no_photon_detected_uses_the_csprng_without_error() -> None:
    dark = LinkPhysics((0.5, 0.2, 0.0), (0.4, 0.3, 0.3), 0.5, 0.0, 0.1, 0.0, 0.01)
    frame, record = transmit(dark, 1000, CsprngGenerator(), np.random.default_rng(1))
    assert len(frame.slots) == 0 and record.n_slots == 1000


def test_floats_and_integers_are_uniform() -> None:
    rng = CsprngGenerator()
    n = 200_000
    u = rng.random(n)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    bits = rng.integers(0, 2, size=n)
    assert set(np.unique(bits)) == {0, 1}
    assert abs(bits.mean() - 0.5) < 5 * math.sqrt(0.25 / n)
    dice = rng.integers(1, 6, size=n, endpoint=True)
    counts = np.bincount(dice, minlength=7)[1:]
    expected = n / 6
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0  # 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5
