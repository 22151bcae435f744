"""One-way LDPC reconciliation with blind retries: Alice sends syndromes, Bob decodes.

Theory of operation
-------------------
Alice's key bits of a block are cut into frames, each carried by one
codeword of a quasi-cyclic LDPC code of :mod:`qcinode.core.ldpc_codes`
(``N`` columns, ``M`` checks, the last ``M`` columns a staircase). The
link's profile (``postprocessing.ldpc_profile``, the same at both ends)
fixes ``N`` and the efficiency schedule: ``efficient``, 65,536-bit frames
starting at f 1.10; ``fast``, 16,384-bit frames starting at f 1.20, for a
third of the decoder CPU; ``lean``, 16,384-bit frames starting at f 1.30,
for half the ``fast`` profile's decoder CPU again.
Bob decodes each frame with the belief-propagation decoder of the ``ldpc``
package (C++, syndrome input, product-sum, parallel schedule), correcting his
key to Alice's (direct reconciliation). Rules both ends follow, from public
data only (the block's key-bit count ``n`` and the test-basis error rate
``q`` that both hold after ``Estimate``):

1. **Code and frame plan** (:func:`plan_frames`; rate adaptation by
   puncturing and shortening, D. Elkouss, J. Martinez-Mateo, V. Martin,
   QIC 11, 226 (2011)). With ``q' = max(q, 0.5 %)`` and ``h = h(q')``, a frame
   of ``K`` key bits has ``p`` punctured columns (random filler bits of
   Alice's, unknown to Bob) and ``s`` shortened ones (known zeros),
   ``K + p + s = N``. Its leak after ``t`` filler bits are revealed is
   ``M - p + t`` (rule 6), so its efficiency runs from
   ``f_start = (M - p)/(K h)`` to ``f_end = M/(K h)``
   (:func:`efficiency_schedule`: for ``efficient`` :data:`EFFICIENCY_SCHEDULE`,
   or :data:`LOW_QBER_SCHEDULE` below :data:`LOW_QBER`; for ``fast``
   :data:`FAST_SCHEDULE`). A code fits if it has at most
   ``f_end h N / (1 + (f_end - f_start) h)`` checks; with it a frame holds
   ``K = floor(M/(f_end h))`` key bits, ``p = round((f_end - f_start) K h)``
   punctured columns, the rest shortened, and the block needs
   ``ceil(n/K)`` frames, which split ``n`` as evenly as possible. Of the
   three largest fitting codes the plan takes the one whose frames send the
   fewest syndrome bits in all (a block rarely fills its last frame; ties
   go to the largest code; smaller codes would leave frames mostly
   shortened, decoder time spent on known bits).
2. **Placement** (public, seeded permutations per code): punctured columns
   are the first ``p`` of a permutation of the information (non-staircase)
   columns, shortened ones the next ``s``, and key bit ``j`` the ``j``-th of
   the remaining information columns followed by the staircase columns in a
   second permutation's order. (Puncturing staircase columns instead was
   measured far worse: 8 % of frames decoded at ``f = 1.15`` against 58 %.)
3. **First attempt, no extra round trip.** Right after ``Estimate`` Alice
   sends every frame's syndrome ``H w`` (:class:`~qcinode.core.messages.LdpcSyndromes`).
   Bob decodes ``H e = H w + H w'`` with prior ``q'`` on key columns, 1/2 on
   punctured ones and ``1e-12`` on known ones; a frame succeeds when the
   decoder converges (the syndrome is met), and Bob flips ``e`` into it.
4. **Blind retries** (J. Martinez-Mateo, D. Elkouss, V. Martin, QIC 12, 791
   (2012)). Bob names the frames that failed
   (:class:`~qcinode.core.messages.LdpcRetry`); Alice reveals the next
   filler bits of each, in puncturing order, enough to reach the next
   efficiency of the schedule (the last retry reveals all of
   them) (:class:`~qcinode.core.messages.LdpcReveal`); Bob sets them and
   decodes again. At most :data:`~qcinode.core.reconciliation.LDPC_MAX_ATTEMPTS`
   attempts, so at most two retries: three round trips per block in all.
5. **Discard.** Frames still failing after the last attempt are dropped at
   both ends; Bob lists them in ``Reconciled``.
6. **Leak**, counted identically at both ends. A frame's syndrome is
   ``H_K x + H_P r`` with ``r`` the still-punctured filler, uniform and
   secret, so it tells at most ``M - rank(H_P)`` bits about the key; revealed
   filler bits are not key bits, and revealing one removes its column from
   ``H_P``. ``rank(H_P)`` is bounded below by *peeling* (:func:`masking_rank`:
   repeatedly remove a punctured column that is the only one left in some
   check; the removed columns are linearly independent, being triangular);
   when every punctured column peels, as it does for the plans here, the
   bound is the rank and the count is exact: a kept frame leaks
   ``M - (p - t)``. A discarded frame additionally leaks all its ``K`` key
   bits; ``ceil(log2(n_kept + 1))`` is added for the announced error count.
7. **Parallel decoding.** The frames of an attempt are independent
   (:func:`decode_frame` is a pure function of the code, the priors and the
   syndrome difference), so Bob may hand them to an executor -- a process
   pool, since the decoder holds the GIL -- and gets the same result in
   either order; a running node does (``qcinode.node``), tests and benches
   decode in process.
8. **Deferred decoding.** A driver that must stay responsive while the
   frames decode (a node sifts the next block meanwhile) builds Bob with
   ``defer``: ``LdpcSyndromes`` and ``LdpcReveal`` then only record the
   attempt, :meth:`LdpcBob.take_jobs` hands out its decodes once, and
   :meth:`LdpcBob.decoded` takes their results and answers exactly as the
   undeferred ``receive`` does (same frames, same order, same messages).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Final

import numpy as np

from qcinode.core import messages as m
from qcinode.core.ldpc_codes import BASE_COLUMNS, CHECK_ROW_FAMILY, LIFT, parity_check_matrix
from qcinode.core.reconciliation import (
    DEFAULT_LDPC_PROFILE,
    LDPC_MAX_ATTEMPTS,
    LDPC_PROFILE_EFFICIENT,
    LDPC_PROFILE_FAST,
    LDPC_PROFILE_LEAN,
    LDPC_PROFILES,
    error_count_leak_bits,
)
from qcinode.errors import ConfigError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DECODER_MAX_ITERATIONS",
    "EFFICIENCY_SCHEDULE",
    "FAST_SCHEDULE",
    "LEAN_SCHEDULE",
    "LOW_QBER",
    "LOW_QBER_SCHEDULE",
    "QBER_FLOOR",
    "FramePlan",
    "LdpcAlice",
    "LdpcBob",
    "check_ldpc_profile",
    "decode_frame",
    "efficiency_schedule",
    "masking_rank",
    "plan_frames",
]

#: Efficiency ``f`` of a frame's first, second and last attempt (rule 1). The last
#: is made almost sure, since a discarded frame costs all its key bits. Measured on
#: 65,536-bit frames at QBER 3 % (10^6-bit blocks, product-sum decoding): the codes
#: decode about a quarter of the frames at 1.10, nearly all at 1.14 and every one
#: at 1.25, for f 1.145 and about 25 CPU-seconds per 10^6 bits; starting at 1.12 /
#: 1.16 gave the same f at 3 % (two round trips, 22 CPU-s) but 1.158 at 2 %.
EFFICIENCY_SCHEDULE: Final[tuple[float, float, float]] = (1.10, 1.14, 1.25)
#: The schedule below :data:`LOW_QBER` (rule 1). The high-rate codes (rate 0.9 and
#: up) are the family's weakest: with the main schedule at QBER 1 % most frames failed
#: every attempt and 7.5 % were discarded (f 2.1); lone frames needed f 1.3 to decode.
LOW_QBER_SCHEDULE: Final[tuple[float, float, float]] = (1.22, 1.32, 1.50)
#: Error rate below which frames are planned with :data:`LOW_QBER_SCHEDULE`.
LOW_QBER: Final = 0.015
#: The ``fast`` profile's schedule at every error rate, on 16,384-bit frames: f 1.20-1.24
#: at QBER 2-5 %, about a third of the ``efficient`` profile's decoder CPU.
FAST_SCHEDULE: Final[tuple[float, float, float]] = (1.20, 1.30, 1.50)
#: The ``lean`` profile's schedule, on 16,384-bit frames. Measured on 10^6-bit blocks
#: (product-sum, 60 iterations): a frame that decodes at its first attempt takes 28-30
#: iterations on average at f 1.20, 22-23 at 1.25 and 18-19 at 1.30, and a tenth to a
#: quarter of the frames fail the first attempt at 1.20 and spend all 60; starting at 1.30
#: almost none fail, for f 1.30 and 5-6 CPU-seconds per 10^6 bits at QBER 2-5 %, against
#: 8-12 for ``fast``. For a link whose blocks wait on the decoder: a long classical delay
#: with a busy CPU, where key per second follows key per decoder CPU-second.
LEAN_SCHEDULE: Final[tuple[float, float, float]] = (1.30, 1.40, 1.50)


@dataclasses.dataclass(frozen=True, slots=True)
class _Profile:
    lift: int
    schedule: tuple[float, float, float]
    low_qber_schedule: tuple[float, float, float]


#: ``efficient``: 65,536-bit frames and :data:`EFFICIENCY_SCHEDULE` (f 1.13-1.15 at
#: QBER 2-5 %, 25-50 CPU-seconds per 10^6 bits at Bob). ``fast``: 16,384-bit frames and
#: :data:`FAST_SCHEDULE` (f 1.20-1.24, 8-12 CPU-seconds): for links where the block
#: waits on the decoder, a long classical delay on a busy machine.
_PROFILES: Final[dict[str, _Profile]] = {
    LDPC_PROFILE_EFFICIENT: _Profile(512, EFFICIENCY_SCHEDULE, LOW_QBER_SCHEDULE),
    LDPC_PROFILE_FAST: _Profile(128, FAST_SCHEDULE, FAST_SCHEDULE),
    LDPC_PROFILE_LEAN: _Profile(128, LEAN_SCHEDULE, LEAN_SCHEDULE),
}
#: Smallest error rate a frame is planned for (a block with no test errors).
QBER_FLOOR: Final = 0.005
#: Belief-propagation iterations per attempt.
DECODER_MAX_ITERATIONS: Final = 60
#: Prior error probability of a column both ends know (shortened or revealed).
_KNOWN: Final = 1e-12


def _h2(p: float) -> float:
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


@dataclasses.dataclass(frozen=True, slots=True)
class FramePlan:
    """How a block's key bits are cut into frames (rule 1).

    Attributes:
        rows: Base rows of the code (its ``M = rows * lift`` checks).
        qber: ``q'``, the error rate the frames are planned and decoded for.
        key_bits: Key bits ``K`` of each frame.
        punctured: ``p``, punctured columns per frame.
        revealed_after: Filler bits revealed in total after each retry.
    """

    rows: int
    qber: float
    key_bits: tuple[int, ...]
    punctured: int
    revealed_after: tuple[int, ...]
    lift: int = LIFT

    @property
    def frame_bits(self) -> int:
        """``N``, the code length: columns of every frame."""
        return BASE_COLUMNS * self.lift

    @property
    def checks(self) -> int:
        """``M``, syndrome bits per frame."""
        return self.rows * self.lift

    @property
    def starts(self) -> np.ndarray:
        """Offset of each frame's first key bit in the block's key."""
        return np.concatenate(([0], np.cumsum(self.key_bits)[:-1])).astype(np.int64) if self.key_bits else np.zeros(0, np.int64)


def efficiency_schedule(qber: float, profile: str = DEFAULT_LDPC_PROFILE) -> tuple[float, float, float]:
    """``(f_start, f_mid, f_end)`` of the frames of a block planned for error rate ``qber`` (rule 1)."""
    settings = _PROFILES[check_ldpc_profile(profile)]
    return settings.low_qber_schedule if qber < LOW_QBER else settings.schedule


def check_ldpc_profile(profile: str) -> str:
    """Returns ``profile`` if it is one of :data:`LDPC_PROFILES`.

    Raises:
        ConfigError: An unknown profile (the message lists the known ones).
    """
    if profile not in _PROFILES:
        raise ConfigError(f"ldpc_profile: expected one of {', '.join(LDPC_PROFILES)}, got {profile!r}")
    return profile


def plan_frames(n: int, qber: float, profile: str = DEFAULT_LDPC_PROFILE) -> FramePlan:
    """The frame plan of a block of ``n`` key bits with test-basis error rate ``qber`` (rule 1)."""
    q = min(max(qber, QBER_FLOOR), 0.45)
    f_start, f_mid, f_end = efficiency_schedule(q, profile)
    lift = _PROFILES[profile].lift
    frame_bits = BASE_COLUMNS * lift
    h = _h2(q)
    target = f_end * h * frame_bits / (1.0 + (f_end - f_start) * h)
    fitting = [rows for rows in CHECK_ROW_FAMILY if rows * lift <= target] or [CHECK_ROW_FAMILY[0]]

    def per_frame(rows: int) -> int:
        return min(max(1, math.floor(rows * lift / (f_end * h))), frame_bits - 1)

    # Of the three largest codes that fit, the one whose frames carry the block for
    # the fewest syndrome bits: n rarely fills its last frame, and frames split n
    # evenly, so the largest code is not always the cheapest (ties: the largest).
    # Smaller codes would leave most of each frame shortened: decoder time for nothing.
    rows = min(reversed(fitting[-3:]), key=lambda r: math.ceil(n / per_frame(r)) * r if n > 0 else -r)
    checks = rows * lift
    largest = per_frame(rows)
    punctured = min(frame_bits - checks - 1, round((f_end - f_start) * largest * h))
    largest = min(largest, frame_bits - punctured)
    frames = math.ceil(n / largest) if n > 0 else 0
    base, extra = divmod(n, frames) if frames else (0, 0)
    sizes = tuple(base + (1 if index < extra else 0) for index in range(frames))
    first_retry = min(punctured, round((f_mid - f_start) * largest * h))
    return FramePlan(
        rows=rows, qber=q, key_bits=sizes, punctured=punctured, revealed_after=(first_retry, punctured), lift=lift
    )


@functools.lru_cache(maxsize=None)
def _orders(rows: int, lift: int = LIFT) -> tuple[np.ndarray, np.ndarray]:
    """Rule 2's public permutations: (information columns, staircase columns) of the code."""
    rng = np.random.default_rng([20_240_101, rows, 3])
    checks = rows * lift
    frame_bits = BASE_COLUMNS * lift
    info = rng.permutation(frame_bits - checks)
    staircase = frame_bits - checks + rng.permutation(checks)
    info.setflags(write=False)
    staircase.setflags(write=False)
    return info, staircase


def _layout(plan: FramePlan, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(punctured columns in revealing order, shortened columns, key columns) of a frame of ``size`` key bits."""
    info, staircase = _orders(plan.rows, plan.lift)
    shortened = plan.frame_bits - plan.punctured - size
    punctured = info[: plan.punctured]
    key_columns = np.concatenate((info[plan.punctured + shortened :], staircase))
    return punctured, info[plan.punctured : plan.punctured + shortened], key_columns


@functools.lru_cache(maxsize=256)
def masking_rank(rows: int, first: int, last: int, lift: int = LIFT) -> int:
    """A lower bound, by peeling, on the GF(2) rank of the punctured columns ``first:last`` (rule 6).

    Peeling removes, while it can, a column that is the only remaining one in
    some check; the removed columns form a triangular, hence independent, set.
    """
    columns = _orders(rows, lift)[0][first:last]
    if columns.size == 0:
        return 0
    matrix = parity_check_matrix(rows, lift).tocsc()[:, columns].tocoo()
    checks_of: list[list[int]] = [[] for _ in range(columns.size)]
    columns_of: dict[int, list[int]] = {}
    for check, column in zip(matrix.row.tolist(), matrix.col.tolist()):
        checks_of[column].append(check)
        columns_of.setdefault(check, []).append(column)
    degree = {check: len(cols) for check, cols in columns_of.items()}
    ready = [check for check, d in degree.items() if d == 1]
    removed = np.zeros(columns.size, dtype=bool)
    peeled = 0
    while ready:
        check = ready.pop()
        if degree[check] != 1:
            continue
        column = next(c for c in columns_of[check] if not removed[c])
        removed[column] = True
        peeled += 1
        for other in checks_of[column]:
            degree[other] -= 1
            if degree[other] == 1:
                ready.append(other)
    return peeled


@functools.lru_cache(maxsize=None)
def _int_matrix(rows: int, lift: int) -> Any:
    return parity_check_matrix(rows, lift).astype(np.int32)


def _words(plan: FramePlan, key: np.ndarray, filler: np.ndarray | None = None) -> np.ndarray:
    """Every frame's word, an ``(N, frames)`` uint8 array (rule 2); punctured columns get ``filler``."""
    words = np.zeros((plan.frame_bits, len(plan.key_bits)), dtype=np.uint8)
    for index, (start, size) in enumerate(zip(plan.starts, plan.key_bits)):
        punctured, _, key_columns = _layout(plan, size)
        words[key_columns, index] = key[start : start + size]
        if filler is not None:
            words[punctured, index] = filler[:, index]
    return words


def _syndromes(plan: FramePlan, words: np.ndarray) -> np.ndarray:
    """``H w mod 2`` of every column of ``words``: an ``(M, frames)`` uint8 array."""
    product = _int_matrix(plan.rows, plan.lift) @ words.astype(np.int32)
    return (np.asarray(product) & 1).astype(np.uint8)


class LdpcAlice:
    """Alice's end: sends syndromes, reveals bits of frames Bob could not decode."""

    def __init__(
        self, block_seq: int, key: np.ndarray, qber_estimate: float, rng: Any, profile: str = DEFAULT_LDPC_PROFILE
    ) -> None:
        self.block_seq = block_seq
        self._key = np.asarray(key, dtype=np.uint8)
        self.plan = plan_frames(len(self._key), qber_estimate, profile)
        frames = len(self.plan.key_bits)
        # Secret filler of the punctured columns, from the key generator (a CSPRNG in a node).
        self._filler = np.asarray(rng.integers(0, 2, size=self.plan.punctured * frames, dtype=np.uint8)).reshape(
            self.plan.punctured, frames
        )
        self._revealed = np.zeros(frames, dtype=np.int64)
        self._last_retry: tuple[int, ...] = ()
        self._attempt = 0
        self.rounds = 0

    def opening(self) -> list[m.Message]:
        self.rounds = 1
        syndromes = _syndromes(self.plan, _words(self.plan, self._key, self._filler))
        # Frame after frame: column-major order of the (M, frames) array.
        return [m.LdpcSyndromes(self.block_seq, np.ascontiguousarray(syndromes.T).reshape(-1))]

    def receive(self, msg: m.Message) -> list[m.Message]:
        if not isinstance(msg, m.LdpcRetry):
            raise RemoteProtocolError(f"{type(msg).__name__} during LDPC reconciliation")
        if msg.attempt != self._attempt + 1 or msg.attempt >= LDPC_MAX_ATTEMPTS:
            raise RemoteProtocolError(f"LDPC retry {msg.attempt} after attempt {self._attempt}")
        frames = _checked_frames(msg.frames, len(self.plan.key_bits))
        if self._attempt and not set(frames) <= set(self._last_retry):
            raise RemoteProtocolError("LDPC retry names a frame that had decoded")
        self._attempt = msg.attempt
        self._last_retry = frames
        self.rounds += 1
        last = self.plan.revealed_after[msg.attempt - 1]
        parts = []
        for frame in frames:
            parts.append(self._filler[int(self._revealed[frame]) : last, frame])
            self._revealed[frame] = last
        bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        return [m.LdpcReveal(self.block_seq, msg.attempt, bits.astype(np.uint8))]

    def finish(self, done: m.Reconciled) -> tuple[np.ndarray, int]:
        discarded = _checked_frames(done.discarded_frames, len(self.plan.key_bits))
        if discarded and (self._attempt != LDPC_MAX_ATTEMPTS - 1 or not set(discarded) <= set(self._last_retry)):
            raise RemoteProtocolError("LDPC discards a frame before its last attempt")
        return _kept_and_leak(self.plan, discarded, self._revealed)


def _checked_frames(frames: tuple[int, ...], count: int) -> tuple[int, ...]:
    values = tuple(int(f) for f in frames)
    if any(f < 0 or f >= count for f in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise RemoteProtocolError(f"LDPC frame list out of range or unsorted (frames: {count})")
    return values


def _kept_and_leak(plan: FramePlan, discarded: tuple[int, ...], revealed: np.ndarray) -> tuple[np.ndarray, int]:
    n = int(sum(plan.key_bits))
    kept = np.ones(n, dtype=bool)
    starts = plan.starts
    for frame in discarded:
        kept[starts[frame] : starts[frame] + plan.key_bits[frame]] = False
    masked = sum(masking_rank(plan.rows, int(t), plan.punctured, plan.lift) for t in revealed)
    leak = plan.checks * len(plan.key_bits) - masked + sum(plan.key_bits[f] for f in discarded)
    return kept, leak + error_count_leak_bits(int(kept.sum()))


#: Idle decoders by code. A decoder holds one frame's priors and messages while it
#: decodes, so a caller takes one off the list and puts it back after: concurrent
#: callers (a thread pool, two links) never share one (list.pop and append are atomic).
_IDLE_DECODERS: dict[tuple[int, int], list[Any]] = {}


def _new_decoder(rows: int, lift: int) -> Any:
    from ldpc import BpDecoder  # noqa: PLC0415 - the ldpc extra

    return BpDecoder(
        parity_check_matrix(rows, lift),
        error_rate=0.01,
        max_iter=DECODER_MAX_ITERATIONS,
        bp_method="product_sum",
        schedule="parallel",
        input_vector_type="syndrome",
    )


def decode_frame(rows: int, lift: int, priors: np.ndarray, syndrome: np.ndarray) -> np.ndarray | None:
    """One frame's belief-propagation decode: the error pattern meeting ``syndrome``, or None.

    A pure function of its arguments (each concurrent caller decodes with a
    decoder of its own, reused afterwards), so a process or thread pool may run it (rule 7).
    """
    idle = _IDLE_DECODERS.setdefault((rows, lift), [])
    try:
        decoder = idle.pop()
    except IndexError:
        decoder = _new_decoder(rows, lift)
    try:
        decoder.update_channel_probs(priors)
        error = decoder.decode(np.ascontiguousarray(syndrome, dtype=np.uint8))
        return np.asarray(error, dtype=np.uint8) if decoder.converge else None
    finally:
        idle.append(decoder)


class LdpcBob:
    """Bob's end: decodes every frame, asks for more bits of those that fail, then discards."""

    def __init__(
        self,
        block_seq: int,
        key: np.ndarray,
        qber_estimate: float,
        executor: Executor | None = None,
        profile: str = DEFAULT_LDPC_PROFILE,
        *,
        defer: bool = False,
    ) -> None:
        """Bob's end of one block.

        Args:
            block_seq: The block.
            key: Bob's key bits of the block.
            qber_estimate: The test-basis error rate both ends hold.
            executor: Decodes an attempt's frames in parallel (rule 7).
            profile: The link's ``ldpc_profile``.
            defer: Decode nothing here: after ``LdpcSyndromes`` or ``LdpcReveal``
                :attr:`awaiting_decode` is set, the caller runs :meth:`take_jobs`
                (with :func:`decode_frame`, anywhere) and hands the results to
                :meth:`decoded`, which answers as :meth:`receive` would have (rule 8).
        """
        self.block_seq = block_seq
        self._executor = executor
        self._defer = defer
        self._pending: list[int] | None = None  # frames of the attempt being decoded
        self._handed_out = False
        self._original = np.asarray(key, dtype=np.uint8)
        self.plan = plan_frames(len(self._original), qber_estimate, profile)
        self._words = _words(self.plan, self._original)
        self._priors = np.full(self._words.shape, self.plan.qber)
        for index, size in enumerate(self.plan.key_bits):
            punctured, shortened, _ = _layout(self.plan, size)
            self._priors[punctured, index] = 0.5
            self._priors[shortened, index] = _KNOWN
        self._revealed = np.zeros(len(self.plan.key_bits), dtype=np.int64)
        self._target: np.ndarray | None = None
        self._failed: tuple[int, ...] = ()
        self._attempt = 0
        self._done = False
        self.rounds = 0

    @property
    def is_done(self) -> bool:
        return self._done

    def work_ahead(self) -> bool:
        return False  # the decodes are the work, and they have their own executor

    def opening(self) -> list[m.Message]:
        return []

    def receive(self, msg: m.Message) -> list[m.Message]:
        if self._done:
            raise RemoteProtocolError("LDPC message after reconciliation finished")
        match msg:
            case m.LdpcSyndromes() if self._target is None:
                expected = self.plan.checks * len(self.plan.key_bits)
                if len(msg.syndromes) != expected or np.any(msg.syndromes > 1):
                    raise RemoteProtocolError(f"expected {expected} syndrome bits, got {len(msg.syndromes)}")
                self._target = msg.syndromes.reshape(len(self.plan.key_bits), self.plan.checks).T.astype(np.uint8)
                self.rounds = 1
                self._pending = list(range(len(self.plan.key_bits)))
            case m.LdpcReveal() if (
                self._target is not None and self._pending is None and msg.attempt == self._attempt and self._failed
            ):
                self._apply_reveal(msg.bits)
                self._pending = list(self._failed)
            case _:
                raise RemoteProtocolError(f"{type(msg).__name__} not expected during LDPC reconciliation")
        if self._defer and self._pending:
            return []
        jobs = self.take_jobs()
        if self._executor is None or len(jobs) <= 1:
            errors = [decode_frame(*job) for job in jobs]
        else:
            errors = list(self._executor.map(decode_frame, *zip(*jobs)))
        return self.decoded(errors)

    @property
    def awaiting_decode(self) -> bool:
        """Whether an attempt's decodes wait to be taken by the caller (rule 8; only with ``defer``)."""
        return self._pending is not None and not self._handed_out

    @property
    def decoding(self) -> bool:
        """Whether an attempt's decodes were taken and their results are awaited."""
        return self._pending is not None and self._handed_out

    def take_jobs(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """The attempt's decodes, once: the arguments of :func:`decode_frame`, one tuple per frame.

        Raises:
            LocalProtocolError: No attempt is waiting, or its jobs were taken already.
        """
        if self._pending is None or self._handed_out:
            raise LocalProtocolError("no LDPC decodes are waiting to be taken")
        assert self._target is not None
        self._handed_out = True
        frames = self._pending
        ours = _syndromes(self.plan, self._words[:, frames])
        return [
            (self.plan.rows, self.plan.lift, self._priors[:, frame].copy(), self._target[:, frame] ^ ours[:, position])
            for position, frame in enumerate(frames)
        ]

    def decoded(self, errors: Sequence[np.ndarray | None]) -> list[m.Message]:
        """The results of :meth:`take_jobs`, in its order: the retry request, or nothing once done.

        Raises:
            LocalProtocolError: No decodes were taken, or a result count that does not match.
        """
        if self._pending is None or not self._handed_out or len(errors) != len(self._pending):
            raise LocalProtocolError("decode results do not match the decodes taken")
        failed = []
        for frame, error in zip(self._pending, errors):
            if error is None:
                failed.append(frame)
            else:
                self._words[:, frame] ^= error
        self._pending, self._handed_out = None, False
        if failed and self._attempt + 1 < LDPC_MAX_ATTEMPTS:
            self._attempt += 1
            self._failed = tuple(failed)
            self.rounds += 1
            return [m.LdpcRetry(self.block_seq, self._attempt, self._failed)]
        self._failed = tuple(failed)
        self._done = True
        return []

    def _apply_reveal(self, bits: np.ndarray) -> None:
        last = self.plan.revealed_after[self._attempt - 1]
        expected = sum(last - int(self._revealed[frame]) for frame in self._failed)
        if len(bits) != expected or np.any(bits > 1):
            raise RemoteProtocolError(f"expected {expected} revealed bits, got {len(bits)}")
        offset = 0
        for frame in self._failed:
            punctured, _, _ = _layout(self.plan, self.plan.key_bits[frame])
            columns = punctured[int(self._revealed[frame]) : last]
            self._words[columns, frame] = bits[offset : offset + len(columns)]
            self._priors[columns, frame] = _KNOWN
            self._revealed[frame] = last
            offset += len(columns)

    def result(self) -> tuple[np.ndarray, np.ndarray, int, int, tuple[int, ...]]:
        corrected = np.empty_like(self._original)
        for index, (start, size) in enumerate(zip(self.plan.starts, self.plan.key_bits)):
            corrected[start : start + size] = self._words[_layout(self.plan, size)[2], index]
        kept, leak = _kept_and_leak(self.plan, self._failed, self._revealed)
        errors = int(np.count_nonzero(corrected[kept] != self._original[kept]))
        return corrected[kept], kept, errors, leak, self._failed
