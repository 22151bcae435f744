"""Cascade information reconciliation: a batched, message-driven (sans-IO) core.

Theory of operation
===================

Roles and messages
------------------
Alice holds the reference key ``x`` and Bob the noisy key ``y`` (same length
``n``, bits 0/1).  Bob drives: he sends :class:`ParityQuery` messages, each a
batch of questions "what is the parity of your key over the positions
``perm_p[start:end]``?", and Alice's :class:`CascadeResponder` answers every
question of a batch in one :class:`ParityReply`.  Bob never reveals his own
parities; he compares Alice's answers with his and corrects his key.  Neither
object does I/O: the caller moves the messages (h11 style).

Rules of the protocol
---------------------
1. **Passes.**  Pass ``p`` looks at the key through a public permutation
   ``perm_p`` and cuts it into consecutive top-level blocks of ``k_p`` bits
   (the last block may be shorter).  Pass 0 uses the identity permutation and
   needs no seed; every seed in a query introduces the next pass, whose
   permutation is the keyed Feistel permutation
   :meth:`qcinode.core.kernels.FeistelPermutation.from_seed` ``(seed, n)``
   (``perm_p[i]`` is its ``forward(i)``).  Bob draws the seeds from his
   injected rng.
2. **Block sizes** (after Martinez-Mateo et al. 2015, options (7) and (8)).
   Pass 0 uses ``k_1 = 2**ceil(log2(c_1 / Q))`` and pass 1
   ``k_2 = max(2 k_1, 2**ceil(log2(c_2 / Q)))``: powers of two, so that every
   bisection halves exactly, with ``k_1 Q`` in ``[c_1, 2 c_1)`` and ``k_2 Q``
   in ``[c_2, 2 c_2)`` (``c_1 = first_block_factor = 0.6``, ``c_2 =
   second_block_factor = 1.7``; so ``k_2`` is ``4 k_1`` where ``k_1 Q`` is
   small and ``2 k_1`` where it is large, which keeps f flat across the
   power-of-two saw-tooth and the cascades short).  Each later pass (ids 2,
   3, ...) is cut into a fixed number of blocks, ``later_pass_blocks``
   (default 16, so ``k = ceil(n / 16)``).  ``Q`` is the given QBER estimate,
   floored at ``min_qber``.  Why fixed counts: what survives passes 0 and 1 is
   mostly a pair of errors sharing a block in both (about 0.4 such pairs per
   frame, whatever ``n``); a later pass of ``B`` blocks misses such a pair
   with probability ``1/B`` and costs ``B - 1`` bits once the key is clean.
3. **First message.**  The first query introduces *all* passes and asks every
   top-level block parity of every pass.  Alice's parities do not depend on
   Bob's corrections, so asking early leaks nothing extra and saves a round
   trip per pass.  A pass is still *processed* only after the passes before it
   (rule 6), as in sequential Cascade.
   The first query names intervals only (they follow from ``n`` and the
   pass sizes), so Bob sends it before he reads his key through the passes'
   permutations (:meth:`CascadeSession.prepare`): Alice builds her tables
   for the answer while he builds his.
4. **Known-parity inference** (never ask what is implied: every answer is one
   leaked bit).  (a) When a block of known parity is bisected only its left
   half is asked; the right half's parity is the block's XOR the left one's.
   (b) Pass 0's top-level blocks give the parity of the whole key, so the last
   top-level block of every later pass is inferred, not asked.
5. **Known leaves and the cascade effect.**  For every pass Bob keeps the
   partition of the key into the smallest intervals whose parity he knows
   (the top-level blocks, refined by every bisection so far).  A leaf is *odd*
   when Alice's parity differs from Bob's current one.  The known intervals of
   a pass form a full binary tree over each top-level block, so an interval is
   odd exactly when an odd number of its leaves are: the leaves carry all the
   information.  Correcting a bit toggles the leaf containing it in *every*
   pass, and a leaf that becomes odd is bisected from that (small) leaf, not
   from its top-level block (sub-block reuse, option (4)).
6. **Batching and scheduling.**  Each query carries one bisection level: the
   left half of every odd leaf (all have >= 2 bits) that the schedule selects.
   The schedule keeps the sequential protocol's priorities: a *frontier* pass
   ``F`` is processed, optionally in ``waves`` (consecutive groups of its
   top-level blocks, so that errors the first group finds cascade into earlier
   passes and may make later groups even before they are bisected), together
   with every odd leaf of the passes before ``F`` (the cascade work).  When no
   selected leaf is odd the frontier moves to the next wave or pass.  An odd
   leaf of one bit is a located error: Bob flips it (once, even if several
   passes located it in the same round) and applies rule 5.  Optionally, a
   thin batch (fewer than ``lookahead_below`` leaves) asks ``lookahead_depth``
   levels at once, trading leaked bits for round trips.
7. **End.**  Bob is done when the frontier has passed the last pass and no odd
   leaf remains, so every block of every pass, the final one included, has
   matching parities.  An error pattern that is even in every known interval
   is invisible to Cascade and is left to the verification hash that follows.
8. **Validation.**  Alice rejects (``RemoteProtocolError``) a query with the
   wrong round number, an unknown pass id, an interval outside
   ``0 <= start < end <= n``, arrays of unequal length or non-integer dtype,
   or a bad seed.  Bob rejects a reply with the wrong round number or the
   wrong number or values of parities, and answers that contradict earlier
   ones about a single bit (an honest Alice never does that; a lying one
   would otherwise make Bob flip that bit back and forth forever).  An object
   that raised a ``ProtocolError`` is failed: every later call raises
   ``LocalProtocolError``.

Leak accounting
---------------
Every parity Alice discloses is one bit of information about the key, so
``leak_bits`` on both sides is exactly the number of questions Alice answered;
inferred parities are free (Eve infers them too).  Privacy amplification must
subtract this figure.  The reconciliation efficiency is
``f = leak_bits / (n * h2(Q))`` (docs/physics.md §5).  With the defaults, on
10^5-bit blocks, f is about 1.05-1.08 at Q = 1-10 %, against 1.13-1.21 for
the original Brassard-Salvail protocol (Martinez-Mateo et al., Fig. 1).

Implementation notes
--------------------
Alice answers each batch with two gathers on per-pass prefix-parity arrays:
``parity(start, end) = cs[end] ^ cs[start]``.  Bob keeps dense per-pass
tables indexed by ``key = pass * n + position``: his current key in each
pass's order (a correction flips one entry per pass), the key of the leaf
holding each position (rewritten over the right half when a leaf splits),
and, at each leaf's own key, its end and odd flag; plus the sorted keys of
the odd leaves.  A bisection level (his parity of each left half, the new
leaves, the located errors) is one loop over the batch
(:func:`qcinode.core.kernels.bisect_level`, compiled for large keys); a
bisection of a block of ``k`` bits touches ``O(k)`` entries in all.  The rest
of the per-round work is vectorised over the batch.  Neither end stores a
permutation: the Feistel permutation maps a position, or maps it back, on its
own, so Alice reads her key through it once per pass (a compiled loop for
large keys, :mod:`qcinode.core.kernels`), and Bob builds his per-pass keys the
same way and maps only the bits he corrects.

References
----------
* G. Brassard, L. Salvail, *Secret-key reconciliation by public discussion*,
  EUROCRYPT '93, LNCS 765, 410-423 (1994): the original Cascade.
* J. Martinez-Mateo, C. Pacher, M. Peev, A. Ciurana, V. Martin,
  *Demystifying the information reconciliation protocol Cascade*,
  Quantum Inf. Comput. 15, 453 (2015), arXiv:1407.3257: power-of-two block
  sizes, sub-block reuse, more passes, the efficiency figures.
* B. Rijsman, ``cascade-python`` documentation: batched parity questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qcinode.core.kernels import FeistelPermutation, FeistelStack, bisect_level, permuted_bits, permuted_prefix_parity
from qcinode.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "CascadeParams",
    "CascadeResponder",
    "CascadeSession",
    "ParityQuery",
    "ParityReply",
    "cascade_block_sizes",
    "pass_permutation",
]

MAX_PASSES = 64
"""Most passes Alice accepts (bounds her memory: one prefix array per pass)."""

_SEED_LIMIT = 2**64
"""Seeds lie in ``[0, 2**64)``."""

IntArray = npt.NDArray[np.int64]
#: Bob's per-pass tables: int32 where ``passes * n < 2**31``, else int64.
TableArray = npt.NDArray[np.signedinteger[Any]]
BitArray = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class CascadeParams:
    """Tuning of Bob's Cascade variant (Alice needs none of it).

    Attributes:
        max_passes: Number of passes, ``1..MAX_PASSES``.  All are introduced in
            the first query.  Once the key is clean a later pass costs only
            ``blocks - 1`` bits, so the later passes mainly buy a low frame
            error rate; each costs one permutation per side in CPU time.
        first_block_factor: ``c_1`` in ``k_1 = 2**ceil(log2(c_1 / Q))``, so
            ``k_1 Q`` lies in ``[c_1, 2 c_1)``.  Larger values leak a little
            less but chain cascades longer (more round trips).  The paper's
            option (7) uses 1, option (8) ``2**-0.5``; Brassard-Salvail used
            ``0.73 / Q`` without rounding to a power of two.
        second_block_factor: ``c_2`` in ``k_2 = max(2 k_1,
            2**ceil(log2(c_2 / Q)))``.
        later_pass_blocks: Number of top-level blocks of passes 2, 3, ...; the
            last entry repeats for every further pass.  With the defaults the
            four later passes cost 60 bits and leave a frame error rate of
            order ``0.4 / 16**4``.
        min_qber: Floor on the QBER estimate when sizing blocks (a zero estimate
            would otherwise ask for infinite blocks).
        waves: Waves per pass (rule 6), indexed by pass, the last entry
            repeating.  More waves leak a little less and cost more round trips.
        lookahead_below: A batch with fewer leaves than this asks
            ``lookahead_depth`` bisection levels at once (0 disables it).
        lookahead_depth: Levels asked per round in a thin batch (>= 1); costs
            ``2**d - 1`` bits per leaf instead of ``d``.
    """

    max_passes: int = 6
    first_block_factor: float = 0.6
    second_block_factor: float = 1.7
    later_pass_blocks: tuple[int, ...] = (16,)
    min_qber: float = 1e-4
    waves: tuple[int, ...] = (1,)
    lookahead_below: int = 0
    lookahead_depth: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.max_passes <= MAX_PASSES:
            raise ConfigError(f"max_passes must be in [1, {MAX_PASSES}], got {self.max_passes}")
        if not 0.0 < self.first_block_factor <= 1e6:
            raise ConfigError(
                f"first_block_factor must be in (0, 1e6], got {self.first_block_factor}"
            )
        if not 0.0 < self.second_block_factor <= 1e6:
            raise ConfigError(
                f"second_block_factor must be in (0, 1e6], got {self.second_block_factor}"
            )
        if not self.later_pass_blocks or any(b < 1 for b in self.later_pass_blocks):
            raise ConfigError(f"later_pass_blocks must be ints >= 1, got {self.later_pass_blocks}")
        if not 0.0 < self.min_qber < 0.5:
            raise ConfigError(f"min_qber must be in (0, 0.5), got {self.min_qber}")
        if not self.waves or any(w < 1 for w in self.waves):
            raise ConfigError(f"waves must be ints >= 1, got {self.waves}")
        if self.lookahead_below < 0 or self.lookahead_depth < 1:
            raise ConfigError("lookahead_below must be >= 0 and lookahead_depth >= 1")


def cascade_block_sizes(n: int, qber_estimate: float, params: CascadeParams) -> list[int]:
    """Top-level block size of every pass (rule 2).

    Args:
        n: Key length in bits (>= 1).
        qber_estimate: Estimated bit error rate, a fraction in ``[0, 0.5)``.
        params: The variant's parameters.

    Returns:
        ``params.max_passes`` block sizes, each clamped to ``[1, n]``.
    """
    q = max(qber_estimate, params.min_qber)
    k1 = 2 ** max(0, math.ceil(math.log2(params.first_block_factor / q)))
    k2 = max(2 * k1, 2 ** max(0, math.ceil(math.log2(params.second_block_factor / q))))
    sizes = [k1, k2]
    later = params.later_pass_blocks
    for i in range(params.max_passes - 2):
        blocks = later[min(i, len(later) - 1)]
        sizes.append(-(-n // blocks))
    return [min(max(k, 1), n) for k in sizes[: params.max_passes]]


@dataclass(frozen=True, slots=True, eq=False)
class ParityQuery:
    """Bob -> Alice: one batch of parity questions.

    Equality is identity (the fields are arrays): compare the fields with
    ``numpy.array_equal``.

    Attributes:
        round: Sequence number: 0 for the first query, then +1 per query.
        seeds: Permutation seeds of the passes this query introduces, in pass
            order (pass 0 is the identity and has no seed).
        pass_ids: ``int32``, the pass of each question.
        starts: ``int64``, first position (inclusive) in that pass's order.
        ends: ``int64``, last position (exclusive) in that pass's order.
    """

    round: int
    seeds: tuple[int, ...]
    pass_ids: npt.NDArray[np.int32]
    starts: IntArray
    ends: IntArray


@dataclass(frozen=True, slots=True, eq=False)
class ParityReply:
    """Alice -> Bob: the answers to one :class:`ParityQuery`.

    Attributes:
        round: The round of the query answered.
        parities: ``uint8``, Alice's parity of ``key[perm[start:end]]`` for
            each question, in question order.
    """

    round: int
    parities: BitArray


def _checked_key(key: npt.ArrayLike) -> BitArray:
    """Validate a local key and return a private ``uint8`` copy.

    Raises:
        LocalProtocolError: The key is not a non-empty 1-D array of 0/1.
    """
    arr = np.asarray(key)
    if arr.ndim != 1 or arr.size == 0:
        raise LocalProtocolError("key must be a non-empty 1-D array")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise LocalProtocolError(f"key must hold integers 0/1, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 1:
        raise LocalProtocolError("key bits must be 0 or 1")
    return arr.astype(np.uint8, copy=True)


def _prefix_parity(bits: BitArray, out: BitArray) -> None:
    """Write the prefix parities of ``bits`` into ``out`` (``len(bits) + 1``)."""
    out[0] = 0
    np.bitwise_xor.accumulate(bits, out=out[1:])


def pass_permutation(seed: int, n: int) -> IntArray:
    """The public permutation of a pass as an array: ``perm_p`` of rule 1."""
    return FeistelPermutation.from_seed(seed, n).array()


def _checked_index_array(value: object, name: str) -> IntArray:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise RemoteProtocolError(f"{name} must be a 1-D numpy array")
    if not np.issubdtype(value.dtype, np.integer):
        raise RemoteProtocolError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.dtype == np.uint64 and value.size and value.max() > np.iinfo(np.int64).max:
        raise RemoteProtocolError(f"{name} out of range")
    return value.astype(np.int64, copy=False)


class CascadeResponder:
    """Alice's side: answers batches of parity questions about her key.

    Args:
        key: Alice's (reference) key, a 1-D array of 0/1.

    Raises:
        LocalProtocolError: The key is malformed.
    """

    def __init__(self, key: npt.ArrayLike) -> None:
        self._key = _checked_key(key)
        self._n = int(self._key.size)
        # Row p: prefix parities of the key in pass p's order, in one 2-D
        # array so that a whole batch is answered by one gather.
        self._cs = np.zeros((1, self._n + 1), dtype=np.uint8)
        _prefix_parity(self._key, self._cs[0])
        self._passes = 1
        self._round = 0
        self._leak_bits = 0
        self._failed = False

    @property
    def leak_bits(self) -> int:
        """Parity bits disclosed so far: the number of questions answered."""
        return self._leak_bits

    @property
    def passes(self) -> int:
        """Passes introduced so far, pass 0 included."""
        return self._passes

    @property
    def rounds(self) -> int:
        """Queries answered."""
        return self._round

    def receive(self, query: ParityQuery) -> ParityReply:
        """Answer one query.

        Args:
            query: The next query from Bob.

        Returns:
            The reply, one parity per question.

        Raises:
            RemoteProtocolError: The query breaks a protocol rule (rule 8); the
                responder is then failed.
            LocalProtocolError: The responder failed earlier.
        """
        if self._failed:
            raise LocalProtocolError("responder failed earlier; start a new one")
        try:
            return self._answer(query)
        except ProtocolError:
            self._failed = True
            raise

    def _answer(self, query: ParityQuery) -> ParityReply:
        if not isinstance(query, ParityQuery):
            raise RemoteProtocolError(f"expected ParityQuery, got {type(query).__name__}")
        if type(query.round) is not int or query.round != self._round:
            raise RemoteProtocolError(f"query round {query.round!r}, expected {self._round}")
        seeds = self._checked_seeds(query.seeds)
        passes = self._passes + len(seeds)
        if passes > MAX_PASSES:
            raise RemoteProtocolError(f"too many passes ({passes} > {MAX_PASSES})")
        pass_ids = _checked_index_array(query.pass_ids, "pass_ids")
        starts = _checked_index_array(query.starts, "starts")
        ends = _checked_index_array(query.ends, "ends")
        if not pass_ids.size == starts.size == ends.size:
            raise RemoteProtocolError(
                f"array lengths differ: pass_ids {pass_ids.size}, starts {starts.size}, "
                f"ends {ends.size}"
            )
        if pass_ids.size:
            if pass_ids.min() < 0 or pass_ids.max() >= passes:
                raise RemoteProtocolError(f"unknown pass id (known: 0..{passes - 1})")
            if starts.min() < 0 or ends.max() > self._n or bool((starts >= ends).any()):
                raise RemoteProtocolError(f"interval outside 0 <= start < end <= {self._n}")
        # Validated: only now change state.
        if passes > self._cs.shape[0]:
            grown = np.zeros((max(passes, 2 * self._cs.shape[0]), self._n + 1), dtype=np.uint8)
            grown[: self._passes] = self._cs[: self._passes]
            self._cs = grown
        for seed in seeds:
            permuted_prefix_parity(self._key, FeistelPermutation.from_seed(seed, self._n), self._cs[self._passes])
            self._passes += 1
        parities = self._cs[pass_ids, ends] ^ self._cs[pass_ids, starts]
        parities.setflags(write=False)
        self._leak_bits += int(pass_ids.size)
        self._round += 1
        return ParityReply(round=query.round, parities=parities)

    @staticmethod
    def _checked_seeds(seeds: object) -> list[int]:
        if not isinstance(seeds, tuple):
            raise RemoteProtocolError("seeds must be a tuple")
        out: list[int] = []
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise RemoteProtocolError(f"seed must be an integer, got {type(seed).__name__}")
            value = int(seed)
            if not 0 <= value < _SEED_LIMIT:
                raise RemoteProtocolError(f"seed out of range [0, 2**64): {value}")
            out.append(value)
        return out


def _unique(values: IntArray) -> IntArray:
    """Sorted distinct values (cheaper than ``numpy.unique`` on small arrays).

    ``values`` is mostly a few sorted runs (the odd leaves so far, then the
    leaves a round touched): the stable sort (radix or timsort) merges runs
    in linear time, where the default quicksort sorts from scratch (20-30x
    slower on 15,000 leaves plus a few hundred).
    """
    out = np.sort(values, kind="stable")
    if out.size > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


class CascadeSession:
    """Bob's side: drives Cascade and corrects his key.

    Usage::

        query = session.start()
        while query is not None:
            query = session.receive(responder.receive(query))
        key = session.corrected_key

    Args:
        key: Bob's (noisy) key, a 1-D array of 0/1.
        qber_estimate: Estimated fraction of differing bits, in ``[0, 0.5)``.
        rng: Source of the permutation seeds.
        params: Variant tuning.

    Raises:
        LocalProtocolError: The key or the estimate is malformed.
    """

    def __init__(
        self,
        key: npt.ArrayLike,
        qber_estimate: float,
        rng: np.random.Generator,
        params: CascadeParams = CascadeParams(),
    ) -> None:
        self._y = _checked_key(key)
        self._n = n = int(self._y.size)
        if not 0.0 <= qber_estimate < 0.5:
            raise LocalProtocolError(f"qber_estimate must be in [0, 0.5), got {qber_estimate}")
        self._rng = rng
        self._params = params
        self._sizes = cascade_block_sizes(n, qber_estimate, params)
        self._npass = npass = len(self._sizes)
        self._nblocks = [-(-n // k) for k in self._sizes]
        self._waves = [params.waves[min(p, len(params.waves) - 1)] for p in range(npass)]
        # Dense per-pass tables, flattened: index ``key = pass * n + position``
        # (row 0 is the identity pass).  Filled by start().
        # Tables hold 32-bit entries while every key fits: half the memory a
        # block touches (fresh pages are much of the set-up's cost).
        self._table_dtype = table = np.int32 if npass * n < 2**31 else np.int64
        self._perms: list[FeistelPermutation] = []  # passes 1.. (pass 0 is the identity)
        self._stack: FeistelStack | None = None  # the same, to map positions of several passes at once
        self._yp = np.empty(npass * n, dtype=np.uint8)  # Bob's current key, per pass order
        # Leaves (rule 5): the key of the leaf holding each position; at a
        # leaf's own key, its end (pass-local, exclusive) and whether it is odd.
        self._leaf_of: TableArray = np.empty(npass * n, dtype=table)
        self._leaf_end: TableArray = np.empty(npass * n, dtype=table)
        self._leaf_odd = np.zeros(npass * n, dtype=np.bool_)
        self._odd_keys: IntArray = np.empty(0, dtype=np.int64)  # sorted odd leaves
        # Outstanding questions: the leaves split per level, and their midpoints.
        self._pending: list[tuple[IntArray, IntArray]] = []
        self._outstanding = 0
        self._top_keys: IntArray = np.empty(0, dtype=np.int64)
        self._top_ends: IntArray = np.empty(0, dtype=np.int64)
        self._seeds: tuple[int, ...] = ()
        self._prepared = False
        self._top_asked = np.empty(0, dtype=np.bool_)
        self._frontier = 0
        self._wave = 0
        self._round = 0
        self._started = False
        self._done = False
        self._failed = False
        self._leak_bits = 0
        self._errors_corrected = 0

    # ------------------------------------------------------------------ public

    @property
    def is_done(self) -> bool:
        """True once every block of every pass has matching parities."""
        return self._done

    @property
    def corrected_key(self) -> BitArray:
        """A copy of Bob's corrected key.

        Raises:
            LocalProtocolError: The session is not done.
        """
        if not self._done:
            raise LocalProtocolError("corrected_key is only available once the session is done")
        return self._y.copy()

    @property
    def leak_bits(self) -> int:
        """Parity bits Alice disclosed: the number of questions answered."""
        return self._leak_bits

    @property
    def rounds(self) -> int:
        """Round trips completed (replies received)."""
        return self._round

    @property
    def errors_corrected(self) -> int:
        """Bits flipped in Bob's key."""
        return self._errors_corrected

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Top-level block size of every pass."""
        return tuple(self._sizes)

    def start(self) -> ParityQuery:
        """Introduce every pass and ask all top-level parities (rules 3, 4b).

        Returns:
            The first query (round 0).

        Raises:
            LocalProtocolError: Called twice, or the session failed.
        """
        if self._failed:
            raise LocalProtocolError("session failed earlier")
        if self._started:
            raise LocalProtocolError("start() may only be called once")
        self._started = True
        n, npass = self._n, self._npass
        raw = self._rng.integers(0, np.iinfo(np.int64).max, size=npass - 1, dtype=np.int64)
        seeds = tuple(int(s) for s in raw)
        self._seeds = seeds
        keys, ends, asked = [], [], []
        for p, k in enumerate(self._sizes):
            starts = np.arange(0, n, k, dtype=np.int64)
            keys.append(p * n + starts)
            ends.append(np.minimum(starts + k, n))
            mask = np.ones(starts.size, dtype=np.bool_)
            mask[-1] = p == 0  # rule 4b: inferred from the whole-key parity
            asked.append(mask)
        self._top_keys = top_keys = np.concatenate(keys)
        self._top_ends = top_ends = np.concatenate(ends)
        self._top_asked = np.concatenate(asked)
        q_keys = top_keys[self._top_asked]
        pass_ids = q_keys // n
        return self._emit(seeds, pass_ids, q_keys - pass_ids * n, top_ends[self._top_asked])

    def prepare(self) -> bool:
        """Build the per-pass tables the first reply needs (rule 3); whether there was anything to build.

        The first query depends on the key's length and the pass sizes only,
        so :meth:`start` sends it at once and leaves this work (Bob's key in
        every pass's order, the top-level leaves) for the wait for Alice's
        answers, who builds her own tables meanwhile. Called by :meth:`receive`
        if not before.
        """
        if not self._started or self._prepared or self._failed:
            return False
        self._prepared = True
        n = self._n
        self._perms = [FeistelPermutation.from_seed(seed, n) for seed in self._seeds]
        self._stack = FeistelStack(self._perms) if self._perms else None
        self._yp[:n] = self._y
        for p, perm in enumerate(self._perms, start=1):
            permuted_bits(self._y, perm, self._yp[p * n : (p + 1) * n])
        self._fill_top_leaves()
        self._leaf_end[self._top_keys] = self._top_ends
        return True

    def receive(self, reply: ParityReply) -> ParityQuery | None:
        """Take Alice's answers; return the next query, or ``None`` when done.

        Args:
            reply: Alice's reply to the last query.

        Returns:
            The next query, or ``None`` once the session is done.

        Raises:
            RemoteProtocolError: The reply breaks a protocol rule; the session
                is then failed.
            LocalProtocolError: No query is outstanding (before ``start()`` or
                after the end), or the session failed earlier.
        """
        if self._failed:
            raise LocalProtocolError("session failed earlier")
        if not self._started or self._done:
            raise LocalProtocolError("no query is outstanding")
        try:
            parities = self._checked_reply(reply)
            self.prepare()
            self._leak_bits += int(parities.size)
            if self._round == 0:
                self._apply_top_level(parities)
            else:
                self._apply_bisection(parities)
        except ProtocolError:
            self._failed = True
            raise
        self._round += 1
        return self._next_query()

    # ----------------------------------------------------------------- helpers

    def _fill_top_leaves(self) -> None:
        """Set every position's leaf to its top-level block: ``p n + (i // k_p) k_p``.

        Each pass row is viewed as ``n // k`` rows of ``k`` entries and gets
        its block keys by a broadcast store (plus the short last block): no
        integer division per entry, which cost about six times as much as
        the store, and no temporary of ``passes * n`` entries.
        """
        n = self._n
        table = self._table_dtype
        for p, k in enumerate(self._sizes):
            row = self._leaf_of[p * n : (p + 1) * n]
            full = n // k
            base = p * n
            keys = np.arange(base, base + full * k, k, dtype=table)
            row[: full * k].reshape(full, k)[:] = keys[:, None]
            row[full * k :] = base + full * k

    def _emit(
        self, seeds: tuple[int, ...], pass_ids: IntArray, starts: IntArray, ends: IntArray
    ) -> ParityQuery:
        ids32 = pass_ids.astype(np.int32)
        for arr in (ids32, starts, ends):
            arr.setflags(write=False)
        self._outstanding = int(ids32.size)
        return ParityQuery(round=self._round, seeds=seeds, pass_ids=ids32, starts=starts, ends=ends)

    def _checked_reply(self, reply: ParityReply) -> BitArray:
        if not isinstance(reply, ParityReply):
            raise RemoteProtocolError(f"expected ParityReply, got {type(reply).__name__}")
        if type(reply.round) is not int or reply.round != self._round:
            raise RemoteProtocolError(f"reply round {reply.round!r}, expected {self._round}")
        par = reply.parities
        if not isinstance(par, np.ndarray) or par.ndim != 1 or par.size != self._outstanding:
            raise RemoteProtocolError(f"expected a 1-D array of {self._outstanding} parities")
        if not (np.issubdtype(par.dtype, np.integer) or par.dtype == np.bool_):
            raise RemoteProtocolError(f"parities must be integers, got dtype {par.dtype}")
        if par.size and (par.min() < 0 or par.max() > 1):
            raise RemoteProtocolError("parities must be 0 or 1")
        return par.astype(np.uint8)

    def _apply_top_level(self, parities: BitArray) -> None:
        keys = self._top_keys
        alice = np.zeros(keys.size, dtype=np.uint8)
        alice[self._top_asked] = parities
        # Rule 4b: whole-key parity from pass 0, then each later pass's last block.
        bounds = np.cumsum([0, *self._nblocks])
        total = np.bitwise_xor.reduce(alice[: bounds[1]])
        for p in range(1, self._npass):
            lo, hi = bounds[p], bounds[p + 1]
            alice[hi - 1] = total ^ np.bitwise_xor.reduce(alice[lo : hi - 1])
        ends = self._leaf_end[keys]
        # The top-level blocks of all passes tile the flat per-pass key array.
        odd = (alice ^ np.bitwise_xor.reduceat(self._yp, keys)).astype(np.bool_)
        self._leaf_odd[keys] = odd
        self._odd_keys = keys[odd]
        self._correct_singletons(keys[odd & (ends - keys % self._n == 1)])

    def _apply_bisection(self, parities: BitArray) -> None:
        offset = 0
        touched = [self._odd_keys]
        singles: list[IntArray] = []
        for keys, mid in self._pending:
            answers = parities[offset : offset + keys.size]
            offset += keys.size
            right_keys, located = bisect_level(
                self._n, self._yp, self._leaf_of, self._leaf_end, self._leaf_odd, keys, mid, answers
            )
            touched.append(right_keys)
            singles.append(located)
        self._odd_keys = _unique(np.concatenate(touched))
        self._correct_singletons(np.concatenate(singles))
        self._odd_keys = self._odd_keys[self._leaf_odd[self._odd_keys]]

    def _correct_singletons(self, keys: IntArray) -> None:
        """Flip the bits located by odd one-bit leaves; toggle every pass (rule 5)."""
        if keys.size == 0:
            return
        n = self._n
        pass_ids, positions = np.divmod(keys, n)
        located = positions.copy()  # the key bit behind each leaf: perm_p[position]
        later = np.flatnonzero(pass_ids)
        if later.size and self._stack is not None:
            located[later] = self._stack.forward(pass_ids[later] - 1, positions[later])
        bits = _unique(located)  # several passes may locate one bit
        self._errors_corrected += int(bits.size)
        if self._stack is not None:  # the bits' places in passes 1.., pass-major
            hit = self._stack.flip_everywhere(bits, self._y, self._yp, self._leaf_of, self._leaf_odd)
        else:
            self._y[bits] ^= 1
            self._yp[bits] ^= 1
            hit = self._leaf_of[bits].astype(np.int64)
            np.logical_xor.at(self._leaf_odd, hit, True)
        # An honest Alice gives every bit one value in all passes, so a flip can
        # only make one-bit leaves even.  An odd one means two of her answers
        # disagree; going on would flip that bit back and forth forever.
        if bool((self._leaf_odd[hit] & (self._leaf_end[hit] - hit % n == 1)).any()):
            raise RemoteProtocolError("inconsistent parities: a bit has two values")
        self._odd_keys = _unique(np.concatenate([self._odd_keys, hit]))

    def _next_query(self) -> ParityQuery | None:
        """Select the odd leaves to bisect (rule 6), or finish (rule 7)."""
        n = self._n
        self._odd_keys = keys = self._odd_keys[self._leaf_odd[self._odd_keys]]
        pass_ids = keys // n
        while True:
            frontier = self._frontier
            if frontier >= self._npass:
                sel = np.ones(keys.size, dtype=np.bool_)
            elif self._waves[frontier] == 1:
                sel = pass_ids <= frontier
            else:
                in_f = pass_ids == frontier
                wave_of = (keys - frontier * n) // self._sizes[frontier] * self._waves[frontier]
                wave_of //= self._nblocks[frontier]
                sel = (pass_ids < frontier) | (in_f & (wave_of <= self._wave))
            if sel.any():
                break
            if frontier >= self._npass:
                self._done = True
                self._pending = []
                self._outstanding = 0
                return None
            self._wave += 1
            if self._wave >= self._waves[frontier]:
                self._frontier += 1
                self._wave = 0
        keys = keys[sel]
        ends = self._leaf_end[keys]
        depth = self._params.lookahead_depth if keys.size < self._params.lookahead_below else 1
        self._pending = []
        for level in range(depth):
            starts = keys % n
            mid = starts + (ends - starts + 1) // 2
            self._pending.append((keys, mid))
            if level + 1 == depth:
                break
            # Speculative next level (rule 6): both halves, where still splittable.
            child_keys = np.concatenate([keys, keys - starts + mid])
            child_ends = np.concatenate([mid, ends])
            ok = child_ends - child_keys % n >= 2
            keys, ends = child_keys[ok], child_ends[ok]
            if keys.size == 0:
                break
        all_keys = np.concatenate([k for k, _ in self._pending])
        all_mid = np.concatenate([m for _, m in self._pending])
        pass_ids = all_keys // n
        return self._emit((), pass_ids, all_keys - pass_ids * n, all_mid)
