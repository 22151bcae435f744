"""Hot loops of the protocol core, each with a numpy path and a compiled (numba) twin.

Theory of operation
===================

Some loops of the core are sequential by nature, or touch a few entries of
many small intervals; numpy does them with several passes over
million-element temporaries (or a dozen calls per Cascade round), a compiled
loop in one.  They are: Cascade's permuted views of a key, a bisection level
and a correction's flips in every pass; the emission's class draw and class
slots; the detector's merge of photon and dark-count slots and its click
bits; the positions of a Bernoulli process from exponential draws; the
sifting of a frame's detections (:func:`select_kept`) and a
block's split into key and test bits (:func:`compress_bytes`); the gap
coding of sorted slot numbers (frames, transcripts, the wire);
the lookup of sorted slots.  This module holds the numpy version of each; the
compiled twin lives in :mod:`qcinode.core.kernels_numba`, which imports
numba.

Rules
-----
1. **Bit-identical.** Every kernel returns exactly what its numpy path
   returns, for every input (the tests compare both on seeded inputs).  So
   the choice of path never changes a key, a transcript or a random stream,
   and two ends may use different paths.
2. **Lazy.** numba costs about 80 MB of resident memory when imported and a
   fraction of a second per kernel when compiled.  It is imported only by the
   first call whose input is large enough to pay for it
   (:data:`NUMBA_MIN_SIZE` elements, mode ``auto``), so a node that only
   handles small blocks never loads it.  A node whose blocks will be large
   loads it as it starts (:func:`would_use_numba`, :func:`warm_up`).
3. **Mode.** :func:`set_mode` (or the environment variable
   ``QCINODE_KERNELS``, read once at the first call) chooses ``auto`` (the
   default: numba for large inputs), ``numba`` (always, for tests) or
   ``numpy`` (never).  An unknown value is a :class:`ConfigError` naming it.
   Where numba cannot be imported, ``auto`` falls back to numpy;
   ``numba`` raises.
4. **Cache.** Kernels are compiled with ``cache=True``: numba stores the
   machine code beside the module (``__pycache__``, an editable install) or,
   where that directory is read-only (an installed package), in the user's
   cache directory; if neither is writable, in a directory under the
   system's temporary directory (:mod:`qcinode.core.kernels_numba`), and if
   even that fails the kernels are compiled without a cache.  A second
   process, or a second run, loads the compiled code instead of compiling.

The keyed permutation
---------------------
Cascade needs, per pass, a public pseudo-random permutation of ``n``
positions that both ends derive from a seed.  It is a Feistel network on
pairs ``(hi, lo)``: ``lo`` is the low ``b = bit_length(n - 1) // 2`` bits of
a position, ``hi`` the rest, in ``0..H-1`` with ``H = ceil(n / 2**b)``.
Round ``r`` (of :data:`FEISTEL_ROUNDS`) adds to one half a table lookup
indexed by the other: even rounds ``hi = (hi + T_r[lo]) mod H``, odd rounds
``lo = lo XOR T_r[hi]``.  Each round is a bijection of the ``2**b H`` pairs
(subtract, or XOR again, to undo it), so the network is one; with uniformly
random round tables it is the Luby-Rackoff construction, here with unequal
halves and modular addition (Black and Rogaway, "Ciphers with arbitrary
finite domains", CT-RSA 2002, the generalised Feistel method); four rounds.
A result at or above ``n`` is sent through the network again until it falls
below ``n`` (cycle walking, same paper), which gives a permutation of
``0..n-1``; since ``2**b H < n + 2**b`` that happens for about one
position in ``sqrt(n)`` or fewer.  The tables
come from ``numpy.random.default_rng(seed)``.  Against a Fisher-Yates
shuffle it needs no table of ``n`` entries at either end: a position is
mapped, or mapped back (the rounds in reverse), on its own, so Bob computes
only the entries he needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qcinode.errors import ConfigError

__all__ = [
    "FEISTEL_ROUNDS",
    "KERNEL_MODES",
    "NUMBA_MIN_SIZE",
    "FeistelPermutation",
    "FeistelStack",
    "bisect_level",
    "categorical",
    "class_order",
    "click_bits",
    "compress_bytes",
    "first_photon_on_one",
    "gap_bounds",
    "gap_bytes",
    "geometric_positions",
    "lookup_sorted",
    "merge_clicks",
    "mode",
    "permuted_bits",
    "permuted_prefix_parity",
    "select_kept",
    "set_mode",
    "slots_from_gaps",
    "use_numba",
    "warm_up",
    "would_use_numba",
]

KERNEL_MODES: Final[tuple[str, ...]] = ("auto", "numba", "numpy")
"""Accepted values of :func:`set_mode` and ``QCINODE_KERNELS``."""

NUMBA_MIN_SIZE: Final = 1 << 17
"""Smallest input (elements) for which ``auto`` uses numba: about a 2^17-bit
block, where the compiled loops save more than the import costs once."""

FEISTEL_ROUNDS: Final = 4
"""Rounds of the Feistel network of :class:`FeistelPermutation` (Luby-Rackoff:
four make a pseudo-random permutation from random round functions).  Even:
the compiled walk takes the rounds in (add, XOR) pairs."""

MAX_N: Final = 1 << 31
"""Largest set :class:`FeistelPermutation` permutes (its halves are 32-bit)."""

_ENV: Final = "QCINODE_KERNELS"

IntArray = npt.NDArray[np.int64]
BitArray = npt.NDArray[np.uint8]

_mode: str | None = None
_numba: ModuleType | None = None
_numba_failed: str = ""


def set_mode(value: str) -> None:
    """Choose where the kernels run (rule 3).

    Args:
        value: ``auto``, ``numba`` or ``numpy``.

    Raises:
        ConfigError: Any other value.
    """
    global _mode
    _mode = _checked_mode(value, "kernels")


def mode() -> str:
    """The kernel mode in force (``QCINODE_KERNELS`` at the first call, else ``auto``)."""
    global _mode
    if _mode is None:
        _mode = _checked_mode(os.environ.get(_ENV, "auto"), _ENV)
    return _mode


def _checked_mode(value: object, name: str) -> str:
    if value not in KERNEL_MODES:
        raise ConfigError(f"{name}: must be one of {', '.join(KERNEL_MODES)}, got {value!r}")
    return str(value)


def use_numba(size: int) -> bool:
    """Whether an input of ``size`` elements goes to the compiled twin (rules 2, 3).

    Raises:
        ConfigError: Mode ``numba`` where numba cannot be imported.
    """
    current = mode()
    if not _asks_numba(current, size):
        return False
    return _load() is not None or _require_numba(current)


def would_use_numba(size: int) -> bool:
    """Whether an input of ``size`` elements would go to the compiled twin, without loading numba to find out.

    True in mode ``numba``, and in mode ``auto`` for ``size`` at or above
    :data:`NUMBA_MIN_SIZE` unless numba already failed to import here.
    """
    current = mode()
    return _asks_numba(current, size) and (current == "numba" or not _numba_failed)


def _asks_numba(current: str, size: int) -> bool:
    """Whether mode ``current`` sends an input of ``size`` elements to the compiled twin where it can be loaded."""
    return current == "numba" or (current == "auto" and size >= NUMBA_MIN_SIZE)


def _require_numba(current: str) -> bool:
    if current == "numba":
        raise ConfigError(f"kernels: numba requested but it cannot be used ({_numba_failed})")
    return False


def _load() -> ModuleType | None:
    """Import the compiled twins once; None where numba is missing."""
    global _numba, _numba_failed
    if _numba is None and not _numba_failed:
        try:
            from qcinode.core import kernels_numba
        except ImportError as exc:
            _numba_failed = f"{type(exc).__name__}: {exc}"
            return None
        _numba = kernels_numba
    return _numba


def warm_up() -> bool:
    """Load (or compile) every compiled kernel now, on tiny inputs, unless the mode is ``numpy``.

    A process that will handle large blocks may call it at start-up so that
    the first block does not pay the import and the compilation (or the load
    from numba's cache).  Returns whether the compiled kernels are ready.
    """
    if mode() == "numpy" or _load() is None:
        return False
    module = _load()
    assert module is not None
    perm = FeistelPermutation.from_seed(0, 3)
    bits = np.zeros(3, np.uint8)
    module.permuted_bits(bits, perm.tables, perm.low_bits, perm.high_size, perm.n, np.empty(3, np.uint8))
    module.permuted_prefix_parity(bits, perm.tables, perm.low_bits, perm.high_size, perm.n, np.empty(4, np.uint8))
    values = np.arange(3, dtype=np.int64)
    module.lookup_sorted(values, values, np.empty(3, np.bool_), np.empty(3, np.int64))
    at = np.empty(3, np.int64)
    module.merge_clicks(values, values, values, np.empty(9, np.int64), at, at.copy(), at.copy())
    on_one = np.empty(3, np.int32)
    module.first_photon_on_one(bits, at, bits, bits, np.zeros(3), 0.01, on_one)
    module.click_bits(at, on_one, np.ones(3, np.uint16), at, at, bits, at.copy())
    module.gap_bounds(values)
    for width in ("<u2", "<u4", "<u8"):
        gaps = np.ones(3, width)
        module.write_gaps(values, gaps)
        module.slots_from_gaps(gaps, 10, at)
        gaps.setflags(write=False)  # as a frame's gaps are read: a view of the received bytes
        module.slots_from_gaps(gaps, 10, at)
    module.categorical(np.zeros(3), np.zeros(2), bits)
    module.select_kept(bits, bits, bits, bits, bits.copy(), bits.copy(), bits.copy())
    module.compress_bytes(bits, bits, bits.copy())
    module.geometric_positions(np.ones(3), 2.0, -1, at.copy())
    module.compress_bytes(bits.view(np.bool_), bits, bits.copy())
    frozen = bits.copy()
    frozen.setflags(write=False)  # a received SiftReply's basis matches and classes: views of the bytes
    module.select_kept(frozen, frozen, bits, bits, bits.copy(), bits.copy(), bits.copy())
    module.class_order(bits, at, np.zeros(4, np.int64))
    module.flip_everywhere(
        values[:1], perm.tables.ravel(), 1, perm.tables.shape[1], perm.low_bits, perm.high_size, 3,
        bits, np.zeros(6, np.uint8), np.zeros(6, np.int32), np.zeros(6, np.bool_), np.empty(2, np.int64),
    )
    table = np.array([0, 0, 0], np.int32)  # Cascade's tables are int32 below 2**31 entries
    one = np.zeros(1, np.int64)
    ends = np.array([3, 0, 0], np.int32)
    module.bisect_level(3, bits, table, ends, np.zeros(3, np.bool_), one, one + 1, np.zeros(1, np.uint8), one.copy(), np.empty(2, np.int64))
    return True


def _twin(name: str) -> Callable[..., Any]:
    module = _load()
    assert module is not None  # use_numba() said yes
    fn: Callable[..., Any] = getattr(module, name)
    return fn


# --------------------------------------------------------------------------- keyed permutation


@dataclass(frozen=True, slots=True, eq=False)
class FeistelPermutation:
    """The public permutation of ``0..n-1`` derived from a seed (module docstring).

    A position ``x`` is the pair ``(hi, lo) = (x >> low_bits, x % 2**low_bits)``
    with ``hi`` in ``0..high_size-1``.

    Attributes:
        n: Size of the permuted set (>= 1).
        low_bits: Bits of the low half.
        high_size: Values of the high half, ``ceil(n / 2**low_bits)``.
        tables: ``int32`` array of shape ``(FEISTEL_ROUNDS, max(2**low_bits,
            high_size))``; an even round ``r`` reads entries ``< 2**low_bits``
            (values below ``high_size``), an odd one entries ``< high_size``
            (values below ``2**low_bits``).
    """

    n: int
    low_bits: int
    high_size: int
    tables: npt.NDArray[np.int32]

    @classmethod
    def from_seed(cls, seed: int, n: int) -> FeistelPermutation:
        """Derive the permutation of ``0..n-1`` keyed by ``seed`` (a non-negative int).

        Raises:
            ValueError: ``n`` outside ``[1, MAX_N]``.
        """
        if not 1 <= n <= MAX_N:
            raise ValueError(f"n must be in [1, {MAX_N}], got {n}")
        low = (n - 1).bit_length() // 2
        high_size = -(-n // (1 << low))
        raw = np.random.default_rng(seed).integers(0, 1 << 62, size=(FEISTEL_ROUNDS, max(1 << low, high_size)), dtype=np.int64)
        tables = np.empty(raw.shape, np.int32)
        tables[0::2] = raw[0::2] % high_size
        tables[1::2] = raw[1::2] & ((1 << low) - 1)
        tables.setflags(write=False)
        return cls(n=n, low_bits=low, high_size=high_size, tables=tables)

    def forward(self, positions: IntArray) -> IntArray:
        """``perm[positions]``: where each position of the permuted order comes from.

        Args:
            positions: int64 values in ``0..n-1``.
        """
        return self._walk(np.asarray(positions, dtype=np.int64), inverse=False)

    def inverse(self, values: IntArray) -> IntArray:
        """``inv[values]``: the position of each value in the permuted order."""
        return self._walk(np.asarray(values, dtype=np.int64), inverse=True)

    def array(self) -> IntArray:
        """The whole permutation, ``forward(arange(n))``."""
        return self.forward(np.arange(self.n, dtype=np.int64))

    def _walk(self, x: IntArray, *, inverse: bool) -> IntArray:
        out = self._rounds(x, inverse)
        todo = np.flatnonzero(out >= self.n)
        while todo.size:  # cycle walking: each walk maps a value of the cycle to the next
            out[todo] = self._rounds(out[todo], inverse)
            todo = todo[out[todo] >= self.n]
        return out

    def _rounds(self, x: IntArray, inverse: bool) -> IntArray:
        # 32-bit halves: every value is below 2**31 (n <= MAX_N), and half the
        # memory traffic of int64.
        lo = (x & ((1 << self.low_bits) - 1)).astype(np.int32)
        hi = (x >> self.low_bits).astype(np.int32)
        size = np.int32(self.high_size)
        order = range(FEISTEL_ROUNDS - 1, -1, -1) if inverse else range(FEISTEL_ROUNDS)
        for r in order:
            if r % 2 == 1:
                lo ^= self.tables[r].take(hi)
            elif inverse:  # hi = (hi - T[lo]) mod high_size
                hi -= self.tables[r].take(lo)
                hi += size * (hi < 0)
            else:  # hi = (hi + T[lo]) mod high_size
                hi += self.tables[r].take(lo)
                hi -= size * (hi >= size)
        out = hi.astype(np.int64)
        out <<= self.low_bits
        out |= lo
        return out


class FeistelStack:
    """Several :class:`FeistelPermutation` of the same ``n``, applied together.

    ``forward(which, x)`` maps each ``x[i]`` through permutation
    ``which[i]``, one vectorised pass for all of them (Bob maps a handful of
    positions per pass and round: one call instead of one per pass).
    """

    __slots__ = ("_members", "_tables", "_width")

    def __init__(self, members: list[FeistelPermutation]) -> None:
        if not members or len({(p.n, p.low_bits, p.high_size, p.tables.shape) for p in members}) != 1:
            raise ValueError("FeistelStack needs permutations of one size")
        self._members = members
        self._tables = np.concatenate([p.tables.ravel() for p in members])
        self._width = int(members[0].tables.shape[1])

    def __len__(self) -> int:
        """Number of permutations."""
        return len(self._members)

    def flip_everywhere(
        self,
        bits: IntArray,
        key: BitArray,
        views: BitArray,
        leaf_of: npt.NDArray[np.signedinteger[Any]],
        leaf_odd: npt.NDArray[np.bool_],
    ) -> IntArray:
        """Flip key bits in the key and in every pass's view; toggle the leaves holding them.

        Cascade's correction (rule 5 of :mod:`qcinode.core.cascade`): ``key``
        is Bob's key, ``views`` its copy in pass 0's order (the identity)
        followed by one per member, flat; ``leaf_of`` maps a flat position to
        its leaf, whose odd flag in ``leaf_odd`` is toggled once per flipped
        position in it.

        Args:
            bits: Distinct key positions to flip, sorted.

        Returns:
            The leaves toggled: pass 0's for every bit, then each member's, pass-major.
        """
        first = self._members[0]
        n = first.n
        if use_numba(n):
            hit = np.empty((len(self._members) + 1) * bits.size, np.int64)
            _twin("flip_everywhere")(
                bits, self._tables, len(self._members), self._width, first.low_bits, first.high_size, n, key, views, leaf_of, leaf_odd, hit
            )
            return hit
        key[bits] ^= 1
        which = np.repeat(np.arange(len(self._members), dtype=np.int64), bits.size)
        places = self.inverse(which, np.tile(bits, len(self._members)))
        flips = np.concatenate([bits, (which + 1) * n + places])
        views[flips] ^= 1
        leaves: IntArray = leaf_of[flips].astype(np.int64, copy=False)
        np.logical_xor.at(leaf_odd, leaves, True)
        return leaves

    def forward(self, which: IntArray, x: IntArray) -> IntArray:
        """``members[which[i]].forward(x[i])`` for every ``i``."""
        return self._walk(np.asarray(which, np.int64), np.asarray(x, np.int64), inverse=False)

    def inverse(self, which: IntArray, x: IntArray) -> IntArray:
        """``members[which[i]].inverse(x[i])`` for every ``i``."""
        return self._walk(np.asarray(which, np.int64), np.asarray(x, np.int64), inverse=True)

    def _walk(self, which: IntArray, x: IntArray, *, inverse: bool) -> IntArray:
        n = self._members[0].n
        out = self._rounds(which, x, inverse)
        todo = np.flatnonzero(out >= n)
        while todo.size:  # cycle walking, as FeistelPermutation._walk
            out[todo] = self._rounds(which[todo], out[todo], inverse)
            todo = todo[out[todo] >= n]
        return out

    def _rounds(self, which: IntArray, x: IntArray, inverse: bool) -> IntArray:
        first = self._members[0]
        lo = x & ((1 << first.low_bits) - 1)
        hi = x >> first.low_bits
        base = which * (FEISTEL_ROUNDS * self._width)
        size = first.high_size
        order = range(FEISTEL_ROUNDS - 1, -1, -1) if inverse else range(FEISTEL_ROUNDS)
        for r in order:
            row = base + r * self._width
            if r % 2 == 1:
                lo ^= self._tables.take(row + hi)
            elif inverse:
                hi -= self._tables.take(row + lo)
                hi += size * (hi < 0)
            else:
                hi += self._tables.take(row + lo)
                hi -= size * (hi >= size)
        return (hi << first.low_bits) | lo


def permuted_bits(bits: BitArray, perm: FeistelPermutation, out: BitArray) -> None:
    """Write ``bits[perm.array()]`` (a key read in a pass's order) into ``out``.

    Args:
        bits: ``uint8`` array of ``perm.n`` bits.
        perm: The pass's permutation.
        out: ``uint8`` array of ``perm.n`` entries (may be a view).
    """
    if use_numba(perm.n):
        _twin("permuted_bits")(bits, perm.tables, perm.low_bits, perm.high_size, perm.n, out)
        return
    np.take(bits, perm.array(), out=out)


def permuted_prefix_parity(bits: BitArray, perm: FeistelPermutation, out: BitArray) -> None:
    """Write the prefix parities of ``bits[perm.array()]`` into ``out`` (``n + 1`` entries, ``out[0] = 0``)."""
    if use_numba(perm.n):
        _twin("permuted_prefix_parity")(bits, perm.tables, perm.low_bits, perm.high_size, perm.n, out)
        return
    out[0] = 0
    np.bitwise_xor.accumulate(bits[perm.array()], out=out[1:])


# --------------------------------------------------------------------------- sorted lookup


def lookup_sorted(sorted_values: IntArray, query: IntArray) -> tuple[npt.NDArray[np.bool_], IntArray]:
    """Where each query value sits in a sorted, duplicate-free array.

    Args:
        sorted_values: Increasing int64 values.
        query: int64 values, any order (sorted queries are the fast case).

    Returns:
        ``(found, index)``: ``index`` is ``searchsorted(sorted_values, query)``
        clipped to the last entry (0 when empty), ``found`` whether the entry
        there equals the query.
    """
    size = len(sorted_values)
    if size and use_numba(max(query.size, size)):
        found = np.empty(query.size, np.bool_)
        index = np.empty(query.size, np.int64)
        _twin("lookup_sorted")(sorted_values, query, found, index)
        return found, index
    index = np.searchsorted(sorted_values, query)
    clipped = np.minimum(index, max(size - 1, 0))
    if size == 0:
        return np.zeros(query.size, np.bool_), clipped.astype(np.int64)
    found = (index < size) & (sorted_values[clipped] == query)
    return found, clipped.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- detection


def merge_clicks(
    photon_slots: IntArray, dark0: IntArray, dark1: IntArray
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Merge a frame's photon slots with both detectors' dark-count slots.

    Args:
        photon_slots: Sorted, distinct slots carrying a detected photon.
        dark0: Sorted, distinct slots where detector 0 had a dark count.
        dark1: The same for detector 1.

    Returns:
        ``(relevant, photon_at, dark0_at, dark1_at)``: the sorted union of the
        three, and where each input's slots sit in it.
    """
    if use_numba(photon_slots.size):
        relevant = np.empty(photon_slots.size + dark0.size + dark1.size, np.int64)
        photon_at = np.empty(photon_slots.size, np.int64)
        dark0_at = np.empty(dark0.size, np.int64)
        dark1_at = np.empty(dark1.size, np.int64)
        size = _twin("merge_clicks")(photon_slots, dark0, dark1, relevant, photon_at, dark0_at, dark1_at)
        return relevant[:size], photon_at, dark0_at, dark1_at
    # The (few) dark-only slots are inserted into the photon slots instead of re-sorting.
    darks = np.union1d(dark0, dark1)
    is_photon_slot, _ = lookup_sorted(photon_slots, darks)
    dark_only = darks[~is_photon_slot]
    insert_at = np.searchsorted(photon_slots, dark_only)
    relevant = np.insert(photon_slots, insert_at, dark_only)
    # Photon slot j moves right by the number of dark-only slots inserted at or
    # before j: 0 before the first insertion point, 1 up to the second, ...
    # (a few hundred runs: one repeat, not a bincount and a cumsum over the frame).
    runs = np.diff(insert_at, prepend=0, append=len(photon_slots))
    photon_at = np.repeat(np.arange(len(insert_at) + 1, dtype=np.int64), runs)
    photon_at += np.arange(len(photon_slots), dtype=np.int64)
    return relevant, photon_at, np.searchsorted(relevant, dark0), np.searchsorted(relevant, dark1)


def first_photon_on_one(
    bases: BitArray,
    photon_at: IntArray,
    state_bases: BitArray,
    state_bits: BitArray,
    u: npt.NDArray[np.float64],
    misalignment_error: float,
) -> npt.NDArray[np.int32]:
    """Whether each slot's first photon reaches detector 1 (int32 0/1).

    In Bob's basis (``bases[photon_at]``) the photon lands on the detector of
    its bit unless misaligned (``u < misalignment_error``), in the other
    basis on either with probability 1/2 (``u < 0.5``).
    """
    if use_numba(u.size):
        out = np.empty(u.size, np.int32)
        _twin("first_photon_on_one")(bases, photon_at, state_bases, state_bits, u, misalignment_error, out)
        return out
    same_basis = bases[photon_at] == state_bases
    # int32: at most `photons` (uint16) per slot, half the bytes of int64.
    on_one: npt.NDArray[np.int32] = np.where(same_basis, state_bits ^ (u < misalignment_error), u < 0.5).astype(np.int32)
    return on_one


def click_bits(
    size: int,
    photon_at: IntArray,
    on_one: npt.NDArray[np.int32],
    photons: npt.NDArray[np.uint16],
    dark0_at: IntArray,
    dark1_at: IntArray,
) -> tuple[BitArray, IntArray]:
    """Which detector fired in each of ``size`` slots: Bob's bit, and the double clicks.

    A slot's photons fire detector 1 when ``on_one > 0`` of them reach it
    and detector 0 when fewer than all do; a dark count fires its detector.

    Returns:
        ``(bits, double)``: 1 where detector 1 fired (uint8), and the sorted
        indices where both fired (their bits are drawn afterwards).
    """
    if use_numba(size):
        bits = np.empty(size, np.uint8)
        both = np.empty(size, np.int64)
        count = _twin("click_bits")(photon_at, on_one, photons, dark0_at, dark1_at, bits, both)
        return bits, both[:count]
    fire0 = np.zeros(size, np.bool_)
    fire1 = np.zeros(size, np.bool_)
    fire0[photon_at] = on_one < photons
    fire1[photon_at] = on_one > 0
    fire0[dark0_at] = True
    fire1[dark1_at] = True
    return fire1.view(np.uint8).copy(), np.flatnonzero(fire0 & fire1)


def select_kept(
    mask: BitArray, first: BitArray, second: BitArray, third: BitArray
) -> tuple[BitArray, BitArray, BitArray]:
    """``(first[keep], second[keep], third[keep])`` with ``keep = mask != 0``: the sifted detections.

    All four are one-byte arrays of one length (a frame's basis matches and
    its classes, bases and bits). The compiled twin copies every entry and
    advances the output only where the mask is set, so it has no branch to
    mispredict on a mask that is half ones; numpy finds the indices first
    and then gathers three times.
    """
    if use_numba(mask.size):
        count = int(np.count_nonzero(mask))
        # One entry of slack: the loop writes entry ``count`` before it knows the mask is 0 there.
        out = (np.empty(count + 1, np.uint8), np.empty(count + 1, np.uint8), np.empty(count + 1, np.uint8))
        _twin("select_kept")(mask, first, second, third, *out)
        return out[0][:count], out[1][:count], out[2][:count]
    keep = np.flatnonzero(mask)
    return first[keep], second[keep], third[keep]


def compress_bytes(mask: npt.NDArray[Any], column: BitArray) -> BitArray:
    """``column[mask]`` for a bool or 0/1 byte ``mask`` and a one-byte ``column`` of its length.

    A block's key bits (Z basis) or test bits (X basis): about half of a
    random mask is set, where numpy's boolean gather mispredicts a branch per
    entry; the compiled twin is branch-free as :func:`select_kept`.
    """
    if use_numba(mask.size):
        count = int(np.count_nonzero(mask))
        out = np.empty(count + 1, np.uint8)
        _twin("compress_bytes")(mask, column, out)
        return out[:count]
    kept: BitArray = column[mask.view(np.bool_)]
    return kept


def geometric_positions(draws: npt.NDArray[np.float64], inverse_rate: float, last: int) -> IntArray:
    """Success positions of a Bernoulli process from exponential draws: ``last + cumsum(1 + floor(E * inverse_rate))``.

    Each gap ``1 + floor(E / lambda)`` with ``E ~ Exp(1)`` is geometric
    (:func:`qcinode.core.physics._bernoulli_positions`); the compiled twin
    scales, floors, counts and sums in one pass instead of four.
    """
    if use_numba(draws.size):
        out = np.empty(draws.size, np.int64)
        _twin("geometric_positions")(draws, inverse_rate, last, out)
        return out
    scaled = draws * inverse_rate
    gaps = scaled.astype(np.int64)  # floor: the draws are >= 0
    gaps += 1
    positions = np.cumsum(gaps, out=gaps)
    positions += last
    return positions


# --------------------------------------------------------------------------- gap coding


def gap_bounds(values: IntArray) -> tuple[int, int, IntArray | None]:
    """Smallest and largest gap of ``values`` (``numpy.diff`` with a 0 prepended).

    Sorted slot numbers travel as their gaps in the narrowest unsigned width
    that holds every gap; this says which.

    Args:
        values: A non-empty int64 array.

    Returns:
        ``(smallest, largest, gaps)``: ``gaps`` is the gap array where this
        path had to build it (pass it on to :func:`gap_bytes`), else None.
    """
    if use_numba(values.size):
        low, high = _twin("gap_bounds")(values)
        return int(low), int(high), None
    # np.diff(values, prepend=0) without its generic set-up: most callers are small Cascade arrays.
    gaps = np.empty_like(values)
    gaps[0] = values[0]
    np.subtract(values[1:], values[:-1], out=gaps[1:])
    return int(gaps.min()), int(gaps.max()), gaps


def gap_bytes(values: IntArray, gaps: IntArray | None, dtype: str) -> bytes:
    """The gaps of ``values`` as ``dtype`` (``<u2``, ``<u4`` or ``<u8``), as bytes.

    Args:
        values: The int64 array given to :func:`gap_bounds`.
        gaps: What :func:`gap_bounds` returned for it.
        dtype: The width chosen from its bounds.
    """
    if gaps is None and use_numba(values.size):
        out = np.empty(values.size, dtype)
        _twin("write_gaps")(values, out)
        return out.tobytes()
    if gaps is None:
        gaps = np.diff(values, prepend=np.int64(0))
    return gaps.astype(dtype).tobytes()


def slots_from_gaps(gaps: npt.NDArray[np.unsignedinteger[Any]], n_slots: int) -> tuple[IntArray, str]:
    """Slot numbers from their gaps (the first one from 0), checked against a frame of ``n_slots``.

    Args:
        gaps: Unsigned gaps, any width.
        n_slots: Frame size, below ``2**62``.

    Returns:
        ``(slots, problem)``: ``problem`` is ``""``, or ``"unsorted"`` when a
        gap after the first is 0, or ``"outside"`` when a slot reaches
        ``n_slots`` (the first problem of these two found, in this order).
    """
    if gaps.size == 0:
        return np.empty(0, np.int64), ""
    if use_numba(gaps.size):
        slots = np.empty(gaps.size, np.int64)
        code = _twin("slots_from_gaps")(gaps, n_slots, slots)
        return slots, ("", "unsorted", "outside")[code]
    if np.any(gaps[1:] == 0):
        return np.empty(0, np.int64), "unsorted"
    wide = np.cumsum(gaps, dtype=np.uint64)
    # Each gap is below 2**64, so a wrap-around of the running sum shows up as
    # a decrease; without one, the last slot is the largest.
    if np.any(wide[1:] <= wide[:-1]) or int(wide[-1]) >= n_slots:
        return np.empty(0, np.int64), "outside"
    return wide.astype(np.int64), ""


# --------------------------------------------------------------------------- Cascade bisection


def bisect_level(
    size: int,
    yp: BitArray,
    leaf_of: npt.NDArray[np.signedinteger[Any]],
    leaf_end: npt.NDArray[np.signedinteger[Any]],
    leaf_odd: npt.NDArray[np.bool_],
    keys: IntArray,
    mid: IntArray,
    answers: BitArray,
) -> tuple[IntArray, IntArray]:
    """Split Cascade leaves at their midpoints with Alice's answers (Bob's tables, in place).

    Leaf ``keys[i]`` (``pass * size + start``, ending at the pass-local
    ``leaf_end[keys[i]]``) becomes ``[start, mid[i])`` and ``[mid[i], end)``;
    ``answers[i]`` is Alice's parity of the left half.  The left half is odd
    where her answer differs from Bob's parity of ``yp`` over it, the right
    half where the leaf was odd XOR the left half is (rule 4a of
    :mod:`qcinode.core.cascade`); every position of the right half now belongs
    to the right leaf (``leaf_of``).

    Args:
        size: Key length ``n``.
        yp: Bob's key in every pass's order, flat.
        leaf_of, leaf_end, leaf_odd: Bob's leaf tables, updated in place.
        keys: Leaves to split (distinct, each at least two bits long).
        mid: Pass-local split points.
        answers: Alice's parities of the left halves (0/1).

    Returns:
        ``(right_keys, singles)``: the keys of the new right leaves, and the
        odd leaves of one bit made here (located errors): the left ones in
        ``keys`` order, then the right ones.
    """
    if use_numba(size):
        right_keys = np.empty(keys.size, np.int64)
        singles = np.empty(2 * keys.size, np.int64)
        lefts, rights = _twin("bisect_level")(size, yp, leaf_of, leaf_end, leaf_odd, keys, mid, answers, right_keys, singles)
        return right_keys, np.concatenate([singles[:lefts], singles[keys.size : keys.size + rights]])
    base = keys - keys % size
    ends = leaf_end[keys]
    lengths = base + mid - keys
    bits = yp[_ragged_index(keys, lengths)]
    bob = np.bitwise_xor.reduceat(bits, np.cumsum(lengths) - lengths) if keys.size else np.zeros(0, np.uint8)
    left_odd = (answers ^ bob).astype(np.bool_)
    right_odd = leaf_odd[keys] ^ left_odd  # rule 4a
    right_keys = base + mid
    leaf_end[keys] = mid
    leaf_odd[keys] = left_odd
    leaf_end[right_keys] = ends
    leaf_odd[right_keys] = right_odd
    leaf_of[_ragged_index(right_keys, ends - mid)] = np.repeat(right_keys, ends - mid)
    singles = np.concatenate([keys[left_odd & (lengths == 1)], right_keys[right_odd & (ends - mid == 1)]])
    return right_keys, singles


def _ragged_index(starts: IntArray, lengths: IntArray) -> IntArray:
    """Concatenation of ``arange(start, start + length)`` for every pair."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


# --------------------------------------------------------------------------- emission


def categorical(u: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> BitArray:
    """``value[i]`` = how many of the increasing ``edges`` are ``<= u[i]`` (uint8).

    With ``edges`` the first entries of a cumulative distribution, a uniform
    ``u`` gives a draw of that distribution (inversion).
    """
    if use_numba(u.size):
        out = np.empty(u.size, np.uint8)
        _twin("categorical")(u, edges, out)
        return out
    values = np.zeros(u.size, np.uint8)
    for edge in edges:  # a few classes: comparisons beat a binary search
        values += u >= edge
    return values


def class_order(classes: BitArray, count: int) -> tuple[IntArray, IntArray]:
    """The positions of each class value ``0..count-1``, class after class, each in increasing order.

    Returns:
        ``(order, bounds)``: class ``c`` sits at ``order[bounds[c]:bounds[c + 1]]``
        (``numpy.flatnonzero(classes == c)``).
    """
    if use_numba(classes.size):
        order = np.empty(classes.size, np.int64)
        bounds = np.zeros(count + 1, np.int64)
        _twin("class_order")(classes, order, bounds)
        return order, bounds
    bounds = np.zeros(count + 1, np.int64)
    np.cumsum(np.bincount(classes, minlength=count)[:count], out=bounds[1:])
    return np.argsort(classes, kind="stable").astype(np.int64, copy=False), bounds
