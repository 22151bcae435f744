"""The compiled twins of :mod:`qcinode.core.kernels` (imported only through it).

Theory of operation:
    * Each function here computes exactly what the numpy path of the same name
      in :mod:`qcinode.core.kernels` computes (rule 1 there), as one loop.
    * Integer arithmetic stays in int64 (numba would turn a mix of signed and
      unsigned 64-bit integers into floats).
    * Compiled with ``cache=True``.  numba's own cache locators try the
      ``__pycache__`` beside this file, then the user's cache directory; when
      neither is writable (a read-only install and no home directory) the
      decorator fails, and the kernels are cached under the temporary
      directory instead (``NUMBA_CACHE_DIR`` set by the operator wins over
      all of these), or, failing that too, compiled without a cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

__all__ = ["lookup_sorted", "permuted_bits", "permuted_prefix_parity"]

F = TypeVar("F", bound=Callable[..., Any])


def _compiled(fn: F) -> F:
    """``numba.njit(cache=True)``, with a temporary-directory cache where no default location is writable."""
    try:
        return cast(F, numba.njit(cache=True, nogil=True)(fn))
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass
    fallback = os.path.join(tempfile.gettempdir(), f"qcinode-numba-{os.getuid()}")
    try:
        os.makedirs(fallback, exist_ok=True)
        setattr(numba.config, "CACHE_DIR", fallback)  # noqa: B010 - read by numba's cache locator at decoration
        return cast(F, numba.njit(cache=True, nogil=True)(fn))
    except (OSError, RuntimeError):
        return cast(F, numba.njit(cache=False, nogil=True)(fn))


@_compiled
def _feistel(x: int, tables: np.ndarray, low_bits: int, high_size: int, n: int) -> int:  # pragma: no cover - compiled
    low_mask = (1 << low_bits) - 1
    rounds = tables.shape[0]
    while True:
        lo = x & low_mask
        hi = x >> low_bits
        for r in range(rounds):
            if r % 2 == 1:
                lo ^= tables[r, hi]
            else:
                hi += tables[r, lo]
                if hi >= high_size:
                    hi -= high_size
        x = (hi << low_bits) | lo
        if x < n:
            return x


@_compiled
def permuted_bits(bits: np.ndarray, tables: np.ndarray, low_bits: int, high_size: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(n):
        out[i] = bits[_feistel(i, tables, low_bits, high_size, n)]


@_compiled
def permuted_prefix_parity(bits: np.ndarray, tables: np.ndarray, low_bits: int, high_size: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    acc = np.uint8(0)
    out[0] = acc
    for i in range(n):
        acc ^= bits[_feistel(i, tables, low_bits, high_size, n)]
        out[i + 1] = acc


@_compiled
def lookup_sorted(values: np.ndarray, query: np.ndarray, found: np.ndarray, index: np.ndarray) -> None:  # pragma: no cover
    size = values.shape[0]
    j = 0
    previous = query[0] if query.shape[0] else 0
    for i in range(query.shape[0]):
        q = query[i]
        if q < previous:
            j = np.searchsorted(values, q)  # out of order: search afresh
        elif j < size and values[j] < q:
            # Sorted queries: gallop forward from the last answer, then bisect,
            # so sparse queries cost O(log gap) and dense ones O(1) each.
            low = j
            step = 1
            while low + step < size and values[low + step] < q:
                low += step
                step *= 2
            high = min(low + step, size)
            j = low + 1 + np.searchsorted(values[low + 1 : high], q)
        previous = q
        clipped = min(j, size - 1)
        index[i] = clipped
        found[i] = j < size and values[clipped] == q
