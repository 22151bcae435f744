"""Cascade information reconciliation: a batched, message-driven (sans-IO) core.

Theory of operation
===================

Roles and messages
------------------
Alice holds the reference key ``x`` and Bob the noisy key ``y`` (same length
``n``, bits 0/1).  Bob drives: he sends :class:`ParityQuery` messages, each a
batch of questions "what is the parity of your key over positions
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
   permutation is ``numpy.random.default_rng(seed).permutation(n)``.  The seeds
   are drawn from Bob's injected rng.
2. **Block sizes** (Martinez-Mateo et al. 2015, Sec. 5, options (7)/(8)):
   ``k_1 = 2**ceil(log2(c / Q))`` with ``c = first_block_factor``, a power of
   two so that every bisection splits exactly in half;
   ``k_2 = second_block_factor * k_1``; then ``third_block_size`` (if set) and
   finally ``ceil(n / 2)`` for the remaining passes.  ``Q`` is the given QBER
   estimate, floored at ``min_qber``.
3. **First message.**  The first query introduces *all* passes at once and asks
   every top-level block parity of every pass.  Alice's parities do not depend
   on Bob's corrections, so asking early leaks nothing extra and saves one
   round trip per pass.  A pass is still *processed* only after the passes
   before it (rule 6), exactly as in sequential Cascade.
4. **Known-parity inference** (never ask what is implied; every answer is one
   leaked bit).  (a) When a block of known parity is bisected only its left
   half is asked; the right half's parity is the block parity XOR the left
   one.  (b) The top-level blocks of pass 0 give the parity of the whole key,
   so the last top-level block of every later pass is not asked but inferred.
5. **Known leaves and the cascade effect.**  For every pass Bob keeps the
   partition of the key into the smallest intervals whose parity he knows
   (top-level blocks refined by every bisection so far).  A leaf is *odd* when
   Alice's parity differs from Bob's current one.  Because the known intervals
   of a pass form a full binary tree over each top-level block, a block is odd
   exactly when an odd number of its leaves are odd, so the leaves carry all
   the information.  Correcting a bit toggles the leaf containing it in
   *every* pass: leaves that become odd are bisected starting from that small
   leaf (sub-block reuse, option (4)), not from the top-level block.
6. **Batching and scheduling.**  Each query carries one bisection level: the
   left half of every odd leaf (of length >= 2) that the schedule selects.
   The schedule follows the sequential protocol's priorities: a *frontier*
   pass ``F`` is processed, possibly in ``waves`` (consecutive groups of its
   top-level blocks, so that errors found by the first group cascade into
   earlier passes and make later groups even before they are bisected).
   Every odd leaf in passes before ``F`` (cascade work) is asked in the same
   batch.  When no selected leaf is odd the frontier advances to the next wave
   or pass.  An odd leaf of length one is a located error: Bob flips that bit
   (once, even if several passes located it in the same round) and applies
   rule 5.
7. **End.**  Bob is done when the frontier has passed the last pass and no odd
   leaf remains: every block of every pass, in particular of the final pass,
   then has matching parities.  A residual error pattern that is even in
   every known interval cannot be seen by Cascade; it is left to the later
   verification hash.
8. **Validation.**  Alice rejects (``RemoteProtocolError``) a query with the
   wrong round number, unknown pass ids, intervals outside ``0 <= start < end
   <= n``, arrays of different lengths or non-integer dtype, or bad seeds.
   Bob rejects a reply with the wrong round number or the wrong number or
   values of parities.  An object that raised a ``ProtocolError`` is failed:
   every later call raises ``LocalProtocolError``.

Leak accounting
---------------
Every parity Alice discloses is one bit of information about the key to Eve,
so ``leak_bits`` on both sides is exactly the number of questions Alice has
answered (inferred parities are free: Eve can infer them as well).  This is
the figure to subtract in privacy amplification.  The reconciliation
efficiency is ``f = leak_bits / (n * h2(Q))`` (PHYSICS.md §5); with the
defaults it measures about 1.03-1.06 at Q = 1-10 % on 10^5-bit blocks.

Implementation notes
--------------------
Alice answers each batch with two gathers on per-pass prefix-parity arrays
(``parity(start, end) = cs[end] ^ cs[start]``).  Bob keeps the prefix parities
of his *initial* key per pass plus the sorted set of corrected positions (in
every pass's order), so his current parity of any interval is a gather and two
``searchsorted`` calls; the leaves live in flat sorted arrays keyed by
``pass * n + start``.  Per round the work is vectorised over all questions.

References
----------
* G. Brassard, L. Salvail, *Secret-key reconciliation by public discussion*,
  EUROCRYPT '93, LNCS 765, 410-423 (1994) (the original Cascade).
* J. Martinez-Mateo, C. Pacher, M. Peev, A. Ciurana, V. Martin,
  *Demystifying the information reconciliation protocol Cascade*,
  Quantum Inf. Comput. 15, 453 (2015), arXiv:1407.3257 (block sizes,
  sub-block reuse, many passes, efficiency figures).
* B. Rijsman, ``cascade-python`` documentation (batched parity questions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qcinode.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "CascadeParams",
    "CascadeResponder",
    "CascadeSession",
    "ParityQuery",
    "ParityReply",
    "binary_entropy",
    "cascade_block_sizes",
]

_MAX_PASSES = 64
"""Upper bound on passes Alice accepts; bounds her memory (one prefix array each)."""

_SEED_LIMIT = 2**64
"""Seeds must lie in ``[0, 2**64)``."""


def binary_entropy(p: float) -> float:
    """Binary entropy ``h2(p)`` in bits.

    Args:
        p: A probability in ``[0, 1]``.

    Returns:
        ``-p log2 p - (1 - p) log2 (1 - p)``, with ``h2(0) = h2(1) = 0``.
    """
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


@dataclass(frozen=True, slots=True)
class CascadeParams:
    """Tuning of Bob's Cascade variant (Alice needs none of it).

    Attributes:
        max_passes: Number of passes (>= 1).  All of them are introduced in the
            first query; the later ones cost one parity bit each when the key is
            already clean, so many passes mainly buy a low frame error rate.
        first_block_factor: ``c`` in ``k_1 = 2**ceil(log2(c / Q))``.  The paper's
            option (7) uses 1, option (8) uses ``2**-0.5``; Brassard-Salvail used
            ``0.73 / Q`` without rounding to a power of two.
        second_block_factor: ``k_2 = second_block_factor * k_1``.
        third_block_size: Block size of pass 3 (index 2); ``None`` means
            ``ceil(n / 2)`` like every later pass.
        min_qber: Floor applied to the QBER estimate when sizing blocks (a zero
            estimate would otherwise ask for infinite blocks).
        waves: Number of waves per pass, indexed by pass (the last entry repeats
            for later passes).  More waves trade round trips for leak.
    """

    max_passes: int = 8
    first_block_factor: float = 0.5
    second_block_factor: int = 4
    third_block_size: int | None = 4096
    min_qber: float = 1e-4
    waves: tuple[int, ...] = (1, 1, 1)
    lookahead_below: int = 0
    power_of_two: bool = True
    lookahead_depth: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.max_passes <= _MAX_PASSES:
            raise ConfigError(f"max_passes must be in [1, {_MAX_PASSES}], got {self.max_passes}")
        if not 0.0 < self.first_block_factor <= 1e6:
            raise ConfigError(f"first_block_factor must be positive, got {self.first_block_factor}")
        if self.second_block_factor < 1:
            raise ConfigError(f"second_block_factor must be >= 1, got {self.second_block_factor}")
        if self.third_block_size is not None and self.third_block_size < 1:
            raise ConfigError(f"third_block_size must be >= 1, got {self.third_block_size}")
        if not 0.0 < self.min_qber < 0.5:
            raise ConfigError(f"min_qber must be in (0, 0.5), got {self.min_qber}")
        if not self.waves or any(w < 1 for w in self.waves):
            raise ConfigError(f"waves must be a non-empty tuple of ints >= 1, got {self.waves}")


def cascade_block_sizes(n: int, qber_estimate: float, params: CascadeParams) -> list[int]:
    """Top-level block size of every pass (rule 2 of the module docstring).

    Args:
        n: Key length in bits (>= 1).
        qber_estimate: Estimated bit error rate, a fraction in ``[0, 0.5)``.
        params: The variant's parameters.

    Returns:
        ``params.max_passes`` block sizes, each clamped to ``[1, n]``.
    """
    q = max(qber_estimate, params.min_qber)
    if params.power_of_two:
        k1 = 2 ** max(0, math.ceil(math.log2(params.first_block_factor / q)))
    else:
        k1 = max(1, round(params.first_block_factor / q))
    half = (n + 1) // 2
    sizes = [k1, k1 * params.second_block_factor]
    if params.third_block_size is not None:
        sizes.append(params.third_block_size)
    while len(sizes) < params.max_passes:
        sizes.append(half)
    return [min(max(k, 1), n) for k in sizes[: params.max_passes]]


@dataclass(frozen=True, slots=True, eq=False)
class ParityQuery:
    """Bob -> Alice: one batch of parity questions.

    Equality is identity (the fields are arrays); compare fields with
    ``numpy.array_equal``.

    Attributes:
        round: Sequence number, 0 for the first query, +1 per query.
        seeds: Permutation seeds of the passes introduced by this query, in pass
            order (pass 0 is the identity and has no seed).
        pass_ids: ``int32``, the pass of each question.
        starts: ``int64``, first position (inclusive) in that pass's order.
        ends: ``int64``, end position (exclusive) in that pass's order.
    """

    round: int
    seeds: tuple[int, ...]
    pass_ids: npt.NDArray[np.int32]
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class ParityReply:
    """Alice -> Bob: the answers to one :class:`ParityQuery`.

    Attributes:
        round: The round of the query answered.
        parities: ``uint8``, Alice's parity of ``key[perm[start:end]]`` for each
            question, in question order.
    """

    round: int
    parities: npt.NDArray[np.uint8]


def _checked_key(key: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Validate a local key and return a private ``uint8`` copy.

    Raises:
        LocalProtocolError: The key is not a non-empty 1-D array of 0/1.
    """
    arr = np.asarray(key)
    if arr.ndim != 1 or arr.size == 0:
        raise LocalProtocolError("key must be a non-empty 1-D array")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise LocalProtocolError(f"key must hold integers 0/1, got dtype {arr.dtype}")
    out = arr.astype(np.uint8, copy=True)
    if out.size and (arr.min() < 0 or arr.max() > 1):
        raise LocalProtocolError("key bits must be 0 or 1")
    return out


def _prefix_parity(bits: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8]) -> None:
    """Write the prefix parities of ``bits`` into ``out`` (length ``len(bits)+1``)."""
    out[0] = 0
    np.bitwise_xor.accumulate(bits, out=out[1:])


def _permutation(seed: int, n: int) -> npt.NDArray[np.int64]:
    """The public permutation of a pass (rule 1)."""
    return np.random.default_rng(seed).permutation(n)


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
        # Row p holds the prefix parities of the key in pass p's order; rows are
        # allocated by doubling so that answering stays one 2-D gather.
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
        """Number of passes introduced so far (pass 0 included)."""
        return self._passes

    def receive(self, query: ParityQuery) -> ParityReply:
        """Answer one query.

        Args:
            query: The next query from Bob.

        Returns:
            The reply holding one parity per question.

        Raises:
            RemoteProtocolError: The query breaks a protocol rule (rule 8); the
                responder is then failed.
            LocalProtocolError: The responder already failed.
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
        if passes > _MAX_PASSES:
            raise RemoteProtocolError(f"too many passes ({passes} > {_MAX_PASSES})")
        pass_ids = _checked_int_array(query.pass_ids, "pass_ids")
        starts = _checked_int_array(query.starts, "starts")
        ends = _checked_int_array(query.ends, "ends")
        if not pass_ids.size == starts.size == ends.size:
            raise RemoteProtocolError(
                f"array lengths differ: pass_ids {pass_ids.size}, starts {starts.size}, ends {ends.size}"
            )
        if pass_ids.size:
            if pass_ids.min() < 0 or pass_ids.max() >= passes:
                raise RemoteProtocolError(f"unknown pass id (known: 0..{passes - 1})")
            if starts.min() < 0 or ends.max() > self._n or np.any(starts >= ends):
                raise RemoteProtocolError(f"interval outside 0 <= start < end <= {self._n}")
        # Validated: only now change state.
        for seed in seeds:
            self._add_pass(seed)
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

    def _add_pass(self, seed: int) -> None:
        if self._passes == self._cs.shape[0]:
            grown = np.zeros((2 * self._passes, self._n + 1), dtype=np.uint8)
            grown[: self._passes] = self._cs
            self._cs = grown
        _prefix_parity(self._key[_permutation(seed, self._n)], self._cs[self._passes])
        self._passes += 1


def _checked_int_array(value: object, name: str) -> npt.NDArray[np.int64]:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise RemoteProtocolError(f"{name} must be a 1-D numpy array")
    if not np.issubdtype(value.dtype, np.integer):
        raise RemoteProtocolError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.dtype == np.uint64 and value.size and value.max() > np.iinfo(np.int64).max:
        raise RemoteProtocolError(f"{name} out of range")
    return value.astype(np.int64, copy=False)


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
        rng: Source of the pass permutation seeds.
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
        n = self._n = int(self._y.size)
        if not 0.0 <= qber_estimate < 0.5:
            raise LocalProtocolError(f"qber_estimate must be in [0, 0.5), got {qber_estimate}")
        self._rng = rng
        self._params = params
        self._sizes = cascade_block_sizes(n, qber_estimate, params)
        self._npass = len(self._sizes)
        self._waves = [
            params.waves[min(p, len(params.waves) - 1)] for p in range(self._npass)
        ]
        # Per-pass tables, rows = passes (row 0: identity).
        self._perm = np.empty((self._npass, n), dtype=np.int64)
        self._inv = np.empty((self._npass, n), dtype=np.int64)
        self._cs0 = np.empty((self._npass, n + 1), dtype=np.uint8)  # of the initial key
        # Leaves (rule 5): sorted by key = pass * n + start.
        self._leaf_key = np.empty(0, dtype=np.int64)
        self._leaf_end = np.empty(0, dtype=np.int64)
        self._leaf_odd = np.empty(0, dtype=np.bool_)
        # Corrected bits, as sorted keys pass * n + position (all passes).
        self._flip_key = np.empty(0, dtype=np.int64)
        # Outstanding question bookkeeping.
        self._pending: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        self._outstanding = 0
        self._round = 0
        self._started = False
        self._done = False
        self._failed = False
        self._leak_bits = 0
        self._errors_corrected = 0
        self._frontier = 0
        self._wave = 0

    # ------------------------------------------------------------------ public

    @property
    def is_done(self) -> bool:
        """True once every block of every pass has matching parities."""
        return self._done

    @property
    def corrected_key(self) -> npt.NDArray[np.uint8]:
        """A copy of Bob's corrected key.

        Raises:
            LocalProtocolError: The session is not done.
        """
        if not self._done:
            raise LocalProtocolError("corrected_key is only available once the session is done")
        return self._y.copy()

    @property
    def leak_bits(self) -> int:
        """Parity bits Alice has disclosed: the number of questions answered."""
        return self._leak_bits

    @property
    def rounds(self) -> int:
        """Round trips completed (replies received)."""
        return self._round

    @property
    def errors_corrected(self) -> int:
        """Number of bits flipped in Bob's key."""
        return self._errors_corrected

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Top-level block size of every pass."""
        return tuple(self._sizes)

    def start(self) -> ParityQuery:
        """Introduce every pass and ask all top-level parities (rule 3).

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
        n = self._n
        seeds = tuple(
            int(s) for s in self._rng.integers(0, 2**63 - 1, size=self._npass - 1, dtype=np.int64)
        )
        self._perm[0] = np.arange(n)
        for p, seed in enumerate(seeds, start=1):
            self._perm[p] = _permutation(seed, n)
        self._inv[np.arange(self._npass)[:, None], self._perm] = np.arange(n)
        for p in range(self._npass):
            _prefix_parity(self._y[self._perm[p]], self._cs0[p])
        # Top-level blocks of every pass; the last block of passes >= 1 is
        # inferred from the whole-key parity given by pass 0 (rule 4b).
        keys: list[npt.NDArray[np.int64]] = []
        ends: list[npt.NDArray[np.int64]] = []
        asked: list[npt.NDArray[np.bool_]] = []
        for p, k in enumerate(self._sizes):
            starts = np.arange(0, n, k, dtype=np.int64)
            keys.append(p * n + starts)
            ends.append(np.minimum(starts + k, n))
            mask = np.ones(starts.size, dtype=np.bool_)
            if p > 0:
                mask[-1] = False
            asked.append(mask)
        self._leaf_key = np.concatenate(keys)
        self._leaf_end = np.concatenate(ends)
        self._leaf_odd = np.zeros(self._leaf_key.size, dtype=np.bool_)
        self._top_asked = np.concatenate(asked)
        self._top_counts = [int(k.size) for k in keys]
        q_keys = self._leaf_key[self._top_asked]
        pass_ids = (q_keys // n).astype(np.int32)
        return self._emit(seeds, pass_ids, q_keys - pass_ids.astype(np.int64) * n,
                          self._leaf_end[self._top_asked])

    def receive(self, reply: ParityReply) -> ParityQuery | None:
        """Take Alice's answers and return the next query, or ``None`` when done.

        Args:
            reply: Alice's reply to the last query.

        Returns:
            The next query, or ``None`` once the session is done.

        Raises:
            RemoteProtocolError: The reply breaks a protocol rule; the session is
                then failed.
            LocalProtocolError: Called before ``start()``, after the end, or after
                a failure.
        """
        if self._failed:
            raise LocalProtocolError("session failed earlier")
        if not self._started or self._done:
            raise LocalProtocolError("no query is outstanding")
        try:
            parities = self._checked_reply(reply)
            if self._round == 0:
                self._apply_top_level(parities)
            else:
                self._apply_bisection(parities)
            self._round += 1
            return self._next_query()
        except ProtocolError:
            self._failed = True
            raise

    # ----------------------------------------------------------------- helpers

    def _emit(
        self,
        seeds: tuple[int, ...],
        pass_ids: npt.NDArray[np.int32],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
    ) -> ParityQuery:
        for arr in (pass_ids, starts, ends):
            arr.setflags(write=False)
        self._outstanding = int(pass_ids.size)
        return ParityQuery(round=self._round, seeds=seeds, pass_ids=pass_ids, starts=starts, ends=ends)

    def _checked_reply(self, reply: ParityReply) -> npt.NDArray[np.uint8]:
        if not isinstance(reply, ParityReply):
            raise RemoteProtocolError(f"expected ParityReply, got {type(reply).__name__}")
        if type(reply.round) is not int or reply.round != self._round:
            raise RemoteProtocolError(f"reply round {reply.round!r}, expected {self._round}")
        par = reply.parities
        if not isinstance(par, np.ndarray) or par.ndim != 1 or par.size != self._outstanding:
            raise RemoteProtocolError(f"expected {self._outstanding} parities")
        if not (np.issubdtype(par.dtype, np.integer) or par.dtype == np.bool_):
            raise RemoteProtocolError(f"parities must be integers, got dtype {par.dtype}")
        if par.size and (par.min() < 0 or par.max() > 1):
            raise RemoteProtocolError("parities must be 0 or 1")
        self._leak_bits += int(par.size)
        return par.astype(np.uint8)

    def _bob_parity(
        self,
        pass_ids: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.uint8]:
        """Bob's *current* parity of each interval (initial parity ^ flips inside)."""
        base = pass_ids * self._n
        par = self._cs0[pass_ids, ends] ^ self._cs0[pass_ids, starts]
        if self._flip_key.size:
            inside = np.searchsorted(self._flip_key, base + ends) - np.searchsorted(
                self._flip_key, base + starts
            )
            par ^= (inside & 1).astype(np.uint8)
        return par

    def _apply_top_level(self, parities: npt.NDArray[np.uint8]) -> None:
        n = self._n
        alice = np.zeros(self._leaf_key.size, dtype=np.uint8)
        alice[self._top_asked] = parities
        # Rule 4b: whole-key parity from pass 0, then each later pass's last block.
        offsets = np.cumsum([0, *self._top_counts])
        total = np.bitwise_xor.reduce(alice[offsets[0] : offsets[1]])
        for p in range(1, self._npass):
            lo, hi = offsets[p], offsets[p + 1]
            alice[hi - 1] = total ^ np.bitwise_xor.reduce(alice[lo : hi - 1])
        pass_ids = self._leaf_key // n
        bob = self._bob_parity(pass_ids, self._leaf_key - pass_ids * n, self._leaf_end)
        self._leaf_odd = (alice ^ bob).astype(np.bool_)
        self._correct_singletons(np.flatnonzero(self._leaf_odd & (self._leaf_end - self._leaf_key + pass_ids * n == 1)))

    def _apply_bisection(self, parities: npt.NDArray[np.uint8]) -> None:
        n = self._n
        offset = 0
        single_keys: list[npt.NDArray[np.int64]] = []
        for keys, mid in self._pending:
            chunk = parities[offset : offset + keys.size]
            offset += keys.size
            idx = np.searchsorted(self._leaf_key, keys)
            pass_ids = keys // n
            starts = keys - pass_ids * n
            ends = self._leaf_end[idx]
            left_odd = (chunk ^ self._bob_parity(pass_ids, starts, mid)).astype(np.bool_)
            right_odd = self._leaf_odd[idx] ^ left_odd
            self._leaf_end[idx] = mid
            self._leaf_odd[idx] = left_odd
            # Insert the right halves (rule 4a), keeping the arrays sorted.
            right_keys = pass_ids * n + mid
            pos = np.searchsorted(self._leaf_key, right_keys)
            self._leaf_key = np.insert(self._leaf_key, pos, right_keys)
            self._leaf_end = np.insert(self._leaf_end, pos, ends)
            self._leaf_odd = np.insert(self._leaf_odd, pos, right_odd)
            single_keys.append(keys[mid - starts == 1])
            single_keys.append(right_keys[ends - mid == 1])
        singles = np.searchsorted(self._leaf_key, np.concatenate(single_keys))
        self._correct_singletons(singles[self._leaf_odd[singles]])

    def _correct_singletons(self, leaves: npt.NDArray[np.int64]) -> None:
        """Flip the bits located by odd singleton leaves and toggle every pass (rule 5)."""
        if leaves.size == 0:
            return
        n = self._n
        keys = self._leaf_key[leaves]
        pass_ids = keys // n
        bits = np.unique(self._perm[pass_ids, keys - pass_ids * n])
        self._y[bits] ^= 1
        self._errors_corrected += int(bits.size)
        flip_keys = (np.arange(self._npass, dtype=np.int64)[:, None] * n + self._inv[:, bits]).ravel()
        flip_keys.sort()
        self._flip_key = np.insert(
            self._flip_key, np.searchsorted(self._flip_key, flip_keys), flip_keys
        )
        hit = np.searchsorted(self._leaf_key, flip_keys, side="right") - 1
        uniq, counts = np.unique(hit, return_counts=True)
        self._leaf_odd[uniq[(counts & 1) == 1]] ^= True

    def _next_query(self) -> ParityQuery | None:
        n = self._n
        cand = np.flatnonzero(self._leaf_odd)
        keys = self._leaf_key[cand]
        ends = self._leaf_end[cand]
        pass_ids = keys // n
        starts = keys - pass_ids * n
        # Odd singletons were corrected at once, so every candidate has >= 2 bits.
        sizes = np.asarray(self._sizes, dtype=np.int64)[pass_ids]
        nblocks = np.asarray(self._top_counts, dtype=np.int64)[pass_ids]
        waves = np.asarray(self._waves, dtype=np.int64)[pass_ids]
        wave_of = (starts // sizes) * waves // nblocks
        while True:
            sel = (pass_ids < self._frontier) | ((pass_ids == self._frontier) & (wave_of <= self._wave))
            if sel.any():
                break
            self._wave += 1
            if self._wave >= self._waves[min(self._frontier, self._npass - 1)]:
                self._frontier += 1
                self._wave = 0
            if self._frontier >= self._npass and not (pass_ids < self._frontier).any():
                self._done = True
                self._pending = []
                return None
        keys = keys[sel]
        ends = ends[sel]
        depth = 1
        if keys.size < self._params.lookahead_below:
            depth = self._params.lookahead_depth
        self._pending = []
        q_keys: list[npt.NDArray[np.int64]] = []
        q_mids: list[npt.NDArray[np.int64]] = []
        for _ in range(depth):
            starts = keys % n
            mid = starts + (ends - starts + 1) // 2
            self._pending.append((keys, mid))
            q_keys.append(keys)
            q_mids.append(mid)
            # Speculative next level: both halves, where still splittable.
            child_keys = np.concatenate([keys, keys - starts + mid])
            child_ends = np.concatenate([mid, ends])
            ok = child_ends - child_keys % n >= 2
            order = np.argsort(child_keys[ok], kind="stable")
            keys = child_keys[ok][order]
            ends = child_ends[ok][order]
            if keys.size == 0:
                break
        all_keys = np.concatenate(q_keys)
        pass_ids = all_keys // n
        return self._emit((), pass_ids.astype(np.int32), all_keys - pass_ids * n, np.concatenate(q_mids))
