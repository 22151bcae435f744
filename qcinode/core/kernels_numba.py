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

__all__ = [
    "bisect_level",
    "categorical",
    "class_order",
    "click_bits",
    "compress_bytes",
    "first_photon_on_one",
    "flip_everywhere",
    "gap_bounds",
    "geometric_positions",
    "lookup_sorted",
    "merge_clicks",
    "permuted_bits",
    "permuted_prefix_parity",
    "select_kept",
    "slots_from_gaps",
    "write_gaps",
]

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


_CHUNK = 4096
"""Positions mapped per batch: the walk's first rounds run branch-free over a
batch (the compiler vectorises them), cycle walking is a second loop."""


@_compiled
def _rounds(x: int, t0: np.ndarray, t1: np.ndarray, t2: np.ndarray, t3: np.ndarray, low_bits: int, high_size: int) -> int:  # pragma: no cover
    """The FEISTEL_ROUNDS (4: add, XOR, add, XOR) rounds on ``x``, one row of the tables each."""
    lo = x & ((1 << low_bits) - 1)
    hi = x >> low_bits
    hi += t0[lo]
    hi = hi - high_size if hi >= high_size else hi
    lo ^= t1[hi]
    hi += t2[lo]
    hi = hi - high_size if hi >= high_size else hi
    lo ^= t3[hi]
    return int((hi << low_bits) | lo)


@_compiled
def _feistel_chunk(start: int, count: int, tables: np.ndarray, low_bits: int, high_size: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    """``out[k] = perm[start + k]`` for ``k < count``: every round once, then walk what fell outside."""
    # The rounds written out over one row of the tables each (the twin tests fail if
    # FEISTEL_ROUNDS changes): measured on 10^6 positions, 5.1 ms a call against 8.2 ms
    # for a loop over the rounds indexing the 2-D table.
    t0, t1, t2, t3 = tables[0], tables[1], tables[2], tables[3]
    for k in range(count):
        out[k] = _rounds(start + k, t0, t1, t2, t3, low_bits, high_size)
    for k in range(count):
        x = out[k]
        while x >= n:  # cycle walking
            x = _rounds(x, t0, t1, t2, t3, low_bits, high_size)
        out[k] = x


@_compiled
def permuted_bits(bits: np.ndarray, tables: np.ndarray, low_bits: int, high_size: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    where = np.empty(_CHUNK, np.int64)
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        _feistel_chunk(start, count, tables, low_bits, high_size, n, where)
        for k in range(count):
            out[start + k] = bits[where[k]]


@_compiled
def permuted_prefix_parity(bits: np.ndarray, tables: np.ndarray, low_bits: int, high_size: int, n: int, out: np.ndarray) -> None:  # pragma: no cover
    where = np.empty(_CHUNK, np.int64)
    acc = np.uint8(0)
    out[0] = acc
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        _feistel_chunk(start, count, tables, low_bits, high_size, n, where)
        for k in range(count):
            acc ^= bits[where[k]]
            out[start + k + 1] = acc


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
            if j + 1 == size or values[j + 1] >= q:
                # The next entry: a frame's clicks are nearly all of Alice's
                # photon slots, so this is the usual step.
                j += 1
            else:
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


@_compiled
def merge_clicks(  # pragma: no cover
    photon: np.ndarray, dark0: np.ndarray, dark1: np.ndarray, out: np.ndarray, photon_at: np.ndarray, dark0_at: np.ndarray, dark1_at: np.ndarray
) -> int:
    a = b = c = k = 0
    na, nb, nc = photon.shape[0], dark0.shape[0], dark1.shape[0]
    big = np.int64(2**62)
    while a < na or b < nb or c < nc:
        va = photon[a] if a < na else big
        vb = dark0[b] if b < nb else big
        vc = dark1[c] if c < nc else big
        v = min(va, vb, vc)
        out[k] = v
        if va == v:
            photon_at[a] = k
            a += 1
        if vb == v:
            dark0_at[b] = k
            b += 1
        if vc == v:
            dark1_at[c] = k
            c += 1
        k += 1
    return k


@_compiled
def first_photon_on_one(  # pragma: no cover
    bases: np.ndarray, photon_at: np.ndarray, state_bases: np.ndarray, state_bits: np.ndarray, u: np.ndarray, misalignment: float, out: np.ndarray
) -> None:
    for i in range(u.shape[0]):
        # Both outcomes, then a select: Bob's basis matches the photon's half the time at random,
        # so a branch on it is mispredicted half the time.
        same = np.int32(bases[photon_at[i]] == state_bases[i])
        aligned = np.int32(state_bits[i]) ^ np.int32(u[i] < misalignment)
        coin = np.int32(u[i] < 0.5)
        out[i] = coin ^ (same & (aligned ^ coin))


@_compiled
def click_bits(  # pragma: no cover
    photon_at: np.ndarray, on_one: np.ndarray, photons: np.ndarray, dark0_at: np.ndarray, dark1_at: np.ndarray, bits: np.ndarray, both: np.ndarray
) -> int:
    # fire0 in bit 0, fire1 in bit 1 of each slot's byte, then split.
    flags = np.zeros(bits.shape[0], np.uint8)
    for i in range(photon_at.shape[0]):
        j = photon_at[i]
        flags[j] = (1 if on_one[i] < photons[i] else 0) | (2 if on_one[i] > 0 else 0)
    for i in range(dark0_at.shape[0]):
        flags[dark0_at[i]] |= 1
    for i in range(dark1_at.shape[0]):
        flags[dark1_at[i]] |= 2
    count = 0
    for j in range(bits.shape[0]):
        f = flags[j]
        bits[j] = f >> 1
        if f == 3:
            both[count] = j
            count += 1
    return count


@_compiled
def select_kept(  # pragma: no cover
    mask: np.ndarray, first: np.ndarray, second: np.ndarray, third: np.ndarray, out1: np.ndarray, out2: np.ndarray, out3: np.ndarray
) -> int:
    count = 0
    for i in range(mask.shape[0]):
        out1[count] = first[i]
        out2[count] = second[i]
        out3[count] = third[i]
        count += mask[i] != 0
    return count


@_compiled
def compress_bytes(mask: np.ndarray, column: np.ndarray, out: np.ndarray) -> int:  # pragma: no cover
    count = 0
    for i in range(mask.shape[0]):
        out[count] = column[i]
        count += mask[i] != 0
    return count


@_compiled
def geometric_positions(draws: np.ndarray, inverse_rate: float, last: int, out: np.ndarray) -> None:  # pragma: no cover
    position = np.int64(last)
    for i in range(draws.shape[0]):
        position += np.int64(draws[i] * inverse_rate) + 1
        out[i] = position


@_compiled
def gap_bounds(values: np.ndarray) -> tuple[int, int]:  # pragma: no cover
    previous = np.int64(0)
    low = high = values[0]
    for i in range(values.shape[0]):
        gap = values[i] - previous
        previous = values[i]
        if gap < low:
            low = gap
        if gap > high:
            high = gap
    return low, high


@_compiled
def write_gaps(values: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    previous = np.int64(0)
    for i in range(values.shape[0]):
        out[i] = values[i] - previous
        previous = values[i]


@_compiled
def slots_from_gaps(gaps: np.ndarray, n_slots: int, slots: np.ndarray) -> int:  # pragma: no cover
    # Every true running sum is compared with n_slots (< 2**62) before it can
    # grow past it, so nothing wraps; a gap of 2**63 or more is outside too.
    limit = np.uint64(n_slots)
    total = np.uint64(0)
    outside = False
    for i in range(gaps.shape[0]):
        gap = np.uint64(gaps[i])
        if gap == 0 and i > 0:
            return 1
        if not outside:
            if gap >= limit - total:
                outside = True
            else:
                total += gap
                slots[i] = np.int64(total)
    return 2 if outside else 0


@_compiled
def bisect_level(  # pragma: no cover
    size: int,
    yp: np.ndarray,
    leaf_of: np.ndarray,
    leaf_end: np.ndarray,
    leaf_odd: np.ndarray,
    keys: np.ndarray,
    mid: np.ndarray,
    answers: np.ndarray,
    right_keys: np.ndarray,
    singles: np.ndarray,
) -> tuple[int, int]:
    count = keys.shape[0]
    lefts = 0
    rights = 0
    for i in range(count):
        key = keys[i]
        base = key - key % size
        end = np.int64(leaf_end[key])
        right = base + mid[i]
        parity = answers[i]
        for j in range(key, right):
            parity ^= yp[j]
        left_odd = parity != 0
        right_odd = leaf_odd[key] != left_odd
        right_keys[i] = right
        leaf_end[key] = mid[i]
        leaf_odd[key] = left_odd
        leaf_end[right] = end
        leaf_odd[right] = right_odd
        for j in range(right, base + end):
            leaf_of[j] = right
        if left_odd and right - key == 1:
            singles[lefts] = key
            lefts += 1
        if right_odd and end - mid[i] == 1:
            singles[count + rights] = right
            rights += 1
    return lefts, rights


@_compiled
def categorical(u: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(u.shape[0]):
        value = 0
        for edge in edges:
            if u[i] >= edge:
                value += 1
        out[i] = value


@_compiled
def class_order(classes: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> None:  # pragma: no cover
    # A stable counting sort: count, then place each position after its class's predecessors.
    count = bounds.shape[0] - 1
    for i in range(classes.shape[0]):
        bounds[classes[i] + 1] += 1
    for c in range(count):
        bounds[c + 1] += bounds[c]
    fill = bounds[:count].copy()
    for i in range(classes.shape[0]):
        c = classes[i]
        order[fill[c]] = i
        fill[c] += 1


@_compiled
def flip_everywhere(  # pragma: no cover
    bits: np.ndarray,
    tables: np.ndarray,
    members: int,
    width: int,
    low_bits: int,
    high_size: int,
    n: int,
    key: np.ndarray,
    views: np.ndarray,
    leaf_of: np.ndarray,
    leaf_odd: np.ndarray,
    hit: np.ndarray,
) -> None:
    # tables: each member's (rounds, width) table, flattened one after the other.
    low_mask = (1 << low_bits) - 1
    rounds = tables.shape[0] // (width * members)
    count = bits.shape[0]
    for i in range(count):
        b = bits[i]
        key[b] ^= 1
        views[b] ^= 1
        leaf = np.int64(leaf_of[b])
        hit[i] = leaf
        leaf_odd[leaf] = not leaf_odd[leaf]
    for m in range(members):
        base = m * rounds * width
        for i in range(count):
            x = bits[i]
            while True:  # the member's inverse, cycle walking
                lo = x & low_mask
                hi = x >> low_bits
                for r in range(rounds - 1, -1, -1):
                    row = base + r * width
                    if r % 2 == 1:
                        lo ^= tables[row + hi]
                    else:
                        hi -= tables[row + lo]
                        if hi < 0:
                            hi += high_size
                x = (hi << low_bits) | lo
                if x < n:
                    break
            flat = (m + 1) * n + x
            views[flat] ^= 1
            leaf = np.int64(leaf_of[flat])
            hit[(m + 1) * count + i] = leaf
            leaf_odd[leaf] = not leaf_odd[leaf]
