"""Randomness sources for key material.

Theory of operation: the protocol draws two kinds of randomness. *Key
randomness* (Alice's bits, both ends' basis choices, public seeds) must come
from a cryptographically secure generator in a running node; *channel noise*
(photon statistics, dark counts, Eve's basis) only has to be statistically
right. Both are injected, so tests can seed them. A seeded
``numpy.random.Generator`` serves either role in tests;
:class:`CsprngGenerator` serves key randomness in a running node: an
AES-256-CTR keystream under a key from ``os.urandom`` (NIST SP 800-90A's
CTR_DRBG construction, without the reseed bookkeeping) exposing the small
subset of the ``numpy.random.Generator`` interface that the core uses.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_RESEED_BYTES = 1 << 30  # fresh AES key after 1 GiB of output


class KeyRandomness(Protocol):
    """Where a party's secret choices come from (bits, bases, classes, public seeds): the seam for key randomness.

    A running node passes a :class:`CsprngGenerator`; tests and benchmarks a
    seeded ``numpy.random.Generator``. The core uses only these three
    methods, with numpy's meaning (``random(size)``, ``integers(low, high,
    size=, dtype=)``).
    """

    def bytes(self, length: int) -> bytes:
        """``length`` uniformly random bytes."""
        ...

    def random(self, *args: Any, **kwargs: Any) -> Any:
        """Uniform floats in [0, 1): a float, or an array of ``size``."""
        ...

    def integers(self, *args: Any, **kwargs: Any) -> Any:
        """Uniform integers in [low, high): an int, or an array of ``size``."""
        ...


class CsprngGenerator:
    """A CSPRNG with the ``random`` / ``integers`` / ``bytes`` methods of numpy's Generator."""

    def __init__(self) -> None:
        self._encryptor: Any = None
        self._produced = _RESEED_BYTES

    def bytes(self, length: int) -> bytes:
        """Returns ``length`` uniformly random bytes."""
        if length <= 0:
            return b""  # (a frame in which nothing was detected asks for none)
        if self._encryptor is None or self._produced + length > _RESEED_BYTES:
            cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
            self._encryptor = cipher.encryptor()
            self._produced = 0
        self._produced += length
        out: bytes = self._encryptor.update(bytes(length))
        return out

    def random(self, size: int | None = None) -> Any:
        """Uniform floats in [0, 1) with 53 random bits each."""
        n = 1 if size is None else int(size)
        words = np.frombuffer(self.bytes(8 * n), dtype=np.uint64) >> np.uint64(11)
        values = words.astype(np.float64) * (1.0 / (1 << 53))
        return float(values[0]) if size is None else values

    def integers(self, low: int, high: int | None = None, size: int | None = None, dtype: Any = np.int64, endpoint: bool = False) -> Any:
        """Uniform integers in [low, high) (or [low, high] with ``endpoint``), by rejection-free widening.

        Uses 64 random bits per draw reduced modulo the range; the bias is
        below range / 2**64, negligible for the small ranges used here (bits,
        bases, seeds).
        """
        if high is None:
            low, high = 0, low
        span = int(high) - int(low) + (1 if endpoint else 0)
        if span <= 0:
            raise ValueError("high must exceed low")
        n = 1 if size is None else int(np.prod(size))
        words = np.frombuffer(self.bytes(8 * n), dtype=np.uint64)
        if span & (span - 1) == 0 and span <= 1 << 63:
            values = (words & np.uint64(span - 1)).astype(np.int64) + int(low)
        else:
            values = (words % np.uint64(span)).astype(np.int64) + int(low)
        values = values.astype(dtype)
        if size is None:
            return values[0]
        return values.reshape(size)


def spawn_generator(rng: Any) -> Any:
    """An independent generator drawn from ``rng``: a new :class:`CsprngGenerator` for a CSPRNG, a spawned
    child for a numpy ``Generator`` (its stream does not move: the child comes from its seed sequence, or
    from one draw if it has none); anything else is returned as it is.

    For work that may run on another thread than the rest of a session (a
    frame's detection): each generator is then used by one thread at a time,
    and a seeded session draws the same numbers whichever thread runs what.
    """
    if isinstance(rng, CsprngGenerator):
        return CsprngGenerator()
    if isinstance(rng, np.random.Generator):
        try:
            return rng.spawn(1)[0]
        except TypeError:  # made without a SeedSequence
            return np.random.default_rng(int(rng.integers(1 << 63)))
    return rng
