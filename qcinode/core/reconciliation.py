"""Information reconciliation behind one small interface: Cascade or LDPC.

Theory of operation
-------------------
The pipeline reconciles a block through two message-driven objects, one per
end, and never looks inside them:

* Alice (:class:`AliceReconciler`) holds the reference key. After her
  ``Estimate`` she sends :meth:`~AliceReconciler.opening` (Cascade: nothing;
  LDPC: every frame's syndrome, in the same flight, so the one-way method
  costs no round trip of its own), then answers Bob's messages with
  :meth:`~AliceReconciler.receive`. When Bob's ``Reconciled`` arrives,
  :meth:`~AliceReconciler.finish` gives the key bits both ends keep and the
  leak.
* Bob (:class:`BobReconciler`) corrects his key to Alice's. On ``Estimate``
  he sends :meth:`~BobReconciler.opening` (Cascade: the first parity query;
  LDPC: nothing), then feeds every reply to :meth:`~BobReconciler.receive`,
  which returns the next messages; once :attr:`~BobReconciler.is_done`, his
  corrected key, the key bits kept, the errors found, the leak and the
  frames discarded are final.

Rules every method follows:

1. **Leak.** ``leak_bits`` is every bit of key information made public:
   each parity bit Alice discloses, each syndrome bit not masked by secret
   filler (:mod:`qcinode.core.ldpc_reconciliation`, rule 6), each
   key bit discarded (dropping publicly chosen bits lowers the smooth
   min-entropy of what is kept by at most their number), plus
   ``ceil(log2(n + 1))`` for Bob's announced error count. Both ends compute
   the same figure from the transcript.
2. **Round trips** (``rounds``): Cascade counts query/reply pairs; LDPC counts
   the syndrome flight plus each retry (at most :data:`LDPC_MAX_ATTEMPTS`).
3. **Kept bits.** Cascade keeps every key bit; LDPC drops the frames that
   never decoded, at both ends (Bob names them in ``Reconciled``).
4. **Validation.** A message that does not fit (wrong kind, round, lengths)
   raises :class:`~qcinode.errors.RemoteProtocolError`.

Method names are :data:`ERROR_CORRECTION_METHODS` (topology
``postprocessing.error_correction``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Final, Protocol

import numpy as np

from qcinode.core import messages as m
from qcinode.core.cascade import CascadeParams, CascadeResponder, CascadeSession
from qcinode.errors import ConfigError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_LDPC_PROFILE",
    "LDPC_PROFILES",
    "LDPC_PROFILE_EFFICIENT",
    "LDPC_PROFILE_FAST",
    "LDPC_PROFILE_LEAN",
    "DEFAULT_ERROR_CORRECTION",
    "ERROR_CORRECTION_CASCADE",
    "ERROR_CORRECTION_LDPC",
    "ERROR_CORRECTION_METHODS",
    "LDPC_EXTRA_HINT",
    "LDPC_MAX_ATTEMPTS",
    "LOOKAHEAD_BELOW_PER_MBIT",
    "DEFAULT_CASCADE_LOOKAHEAD",
    "lookahead_below",
    "AliceReconciler",
    "BobReconciler",
    "CascadeAlice",
    "CascadeBob",
    "error_count_leak_bits",
    "ldpc_available",
    "make_alice_reconciler",
    "make_bob_reconciler",
]

ERROR_CORRECTION_CASCADE: Final = "cascade"
ERROR_CORRECTION_LDPC: Final = "ldpc"
ERROR_CORRECTION_METHODS: Final[tuple[str, ...]] = (ERROR_CORRECTION_CASCADE, ERROR_CORRECTION_LDPC)
DEFAULT_ERROR_CORRECTION: Final = ERROR_CORRECTION_CASCADE
#: Decoding attempts per LDPC frame: the first, then two blind retries.
LDPC_MAX_ATTEMPTS: Final = 3
#: A Cascade batch with fewer leaves than this many per 10^6 key bits asks ``cascade_lookahead``
#: bisection levels per round trip (:class:`~qcinode.core.cascade.CascadeParams`): such thin batches are
#: the long tail of round trips. Scaled with the block, so that the parities speculation discloses stay
#: about the same share of the leak on every block size (:func:`lookahead_below`).
LOOKAHEAD_BELOW_PER_MBIT: Final = 64
#: ``postprocessing.cascade_lookahead``'s default: three levels per round trip in a thin batch. On
#: 10^6-bit blocks (``bench/reconciliation.py``, 6 blocks) it takes 9, 10 and 6 % of the round trips off
#: two levels' at 1, 3.3 and 5 % QBER for f +0.008, +0.002 and +0.002: a block waits on its round trips
#: in series, and a latency-bound link makes that much more key per second for about 0.1-0.3 % less
#: key per block.
DEFAULT_CASCADE_LOOKAHEAD: Final = 3
#: LDPC code profiles (topology ``postprocessing.ldpc_profile``; the default first), defined in
#: :mod:`qcinode.core.ldpc_reconciliation`: ``efficient`` (65,536-bit frames, f about 1.14),
#: ``fast`` (16,384-bit frames, f about 1.22, a third of the decoder CPU) and ``lean``
#: (16,384-bit frames, f about 1.30, half the ``fast`` profile's decoder CPU again).
LDPC_PROFILE_EFFICIENT: Final = "efficient"
LDPC_PROFILE_FAST: Final = "fast"
LDPC_PROFILE_LEAN: Final = "lean"
LDPC_PROFILES: Final[tuple[str, ...]] = (LDPC_PROFILE_EFFICIENT, LDPC_PROFILE_FAST, LDPC_PROFILE_LEAN)
DEFAULT_LDPC_PROFILE: Final = LDPC_PROFILE_EFFICIENT
LDPC_EXTRA_HINT: Final = (
    "error_correction 'ldpc' needs the ldpc package (belief-propagation decoder): "
    "pip install 'qcinode[ldpc]'"
)


def ldpc_available() -> bool:
    """Whether the ``ldpc`` package (the decoder of the ``ldpc`` extra) is installed."""
    return importlib.util.find_spec("ldpc") is not None


def error_count_leak_bits(n: int) -> int:
    """Bits disclosed by announcing how many errors were corrected in n bits."""
    return math.ceil(math.log2(n + 1)) if n > 0 else 0


def lookahead_below(n: int) -> int:
    """Leaves under which a Cascade batch of an ``n``-bit key is thin (:data:`LOOKAHEAD_BELOW_PER_MBIT`).

    64 at 10^6 bits, 6 at 10^5; below 31,250 bits no batch is thin.
    Measured in-process (6 seeds, 2 levels against 1): on 10^5 bits 106 ->
    85, 99 -> 87 and 103 -> 90 round trips for f 1.056 -> 1.064, 1.060 ->
    1.061 and 1.059 -> 1.061 at 1, 3.3 and 5 % QBER; 64 leaves there, as on
    10^6 bits, cost f 1.110, 1.079 and 1.073.
    """
    return max(1, n * LOOKAHEAD_BELOW_PER_MBIT // 1_000_000)


class AliceReconciler(Protocol):
    """Alice's end of a reconciliation (module docstring)."""

    rounds: int

    def opening(self) -> list[m.Message]: ...

    def receive(self, msg: m.Message) -> list[m.Message]: ...

    def finish(self, done: m.Reconciled) -> tuple[np.ndarray, int]:
        """``(kept, leak_bits)``: a boolean mask over the key bits, and the leak."""
        ...


class BobReconciler(Protocol):
    """Bob's end of a reconciliation (module docstring)."""

    rounds: int

    @property
    def is_done(self) -> bool: ...

    def opening(self) -> list[m.Message]: ...

    def receive(self, msg: m.Message) -> list[m.Message]: ...

    def work_ahead(self) -> bool:
        """Does now what the next answer's handling would start with; whether there was anything."""
        ...

    @property
    def awaiting_decode(self) -> bool:
        """Decodes wait to be taken by the caller (deferred LDPC decoding only)."""
        ...

    @property
    def decoding(self) -> bool:
        """Decodes were taken and their results are awaited."""
        ...

    def take_jobs(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """The waiting decodes, once (arguments of ``ldpc_reconciliation.decode_frame``)."""
        ...

    def decoded(self, errors: Sequence[np.ndarray | None]) -> list[m.Message]:
        """The decodes' results, in :meth:`take_jobs` order: answers as ``receive`` would have."""
        ...

    def result(self) -> tuple[np.ndarray, np.ndarray, int, int, tuple[int, ...]]:
        """``(corrected kept key, kept mask, errors corrected, leak_bits, discarded frames)``."""
        ...


class CascadeAlice:
    """Alice answers Cascade's parity queries."""

    def __init__(self, block_seq: int, key: np.ndarray) -> None:
        self.block_seq = block_seq
        self._n = len(key)
        self._responder = CascadeResponder(key)
        self.rounds = 0

    def opening(self) -> list[m.Message]:
        return []

    def receive(self, msg: m.Message) -> list[m.Message]:
        if not isinstance(msg, m.CascadeQuery):
            raise RemoteProtocolError(f"{type(msg).__name__} during Cascade")
        self.rounds += 1
        return [m.CascadeReply(self.block_seq, self._responder.receive(msg.query))]

    def finish(self, done: m.Reconciled) -> tuple[np.ndarray, int]:
        if done.discarded_frames:
            raise RemoteProtocolError("Cascade discards no frames")
        return np.ones(self._n, dtype=bool), self._responder.leak_bits + error_count_leak_bits(self._n)


class CascadeBob:
    """Bob asks Cascade's parity questions and corrects his key."""

    def __init__(
        self,
        block_seq: int,
        key: np.ndarray,
        qber_estimate: float,
        rng: np.random.Generator,
        max_passes: int,
        lookahead: int = DEFAULT_CASCADE_LOOKAHEAD,
    ) -> None:
        self.block_seq = block_seq
        below = lookahead_below(len(key)) if lookahead > 1 else 0
        params = CascadeParams(max_passes=max_passes, lookahead_below=below, lookahead_depth=lookahead)
        self._session = CascadeSession(key, qber_estimate=qber_estimate, rng=rng, params=params)
        self.rounds = 0

    @property
    def is_done(self) -> bool:
        return self._session.is_done

    def opening(self) -> list[m.Message]:
        return [m.CascadeQuery(self.block_seq, self._session.start())]

    def work_ahead(self) -> bool:
        return self._session.prepare()  # the tables the first answer needs (Cascade's rule 3)

    def receive(self, msg: m.Message) -> list[m.Message]:
        if not isinstance(msg, m.CascadeReply):
            raise RemoteProtocolError(f"{type(msg).__name__} during Cascade")
        if self._session.is_done:
            raise RemoteProtocolError("parity reply after reconciliation finished")
        self.rounds += 1
        query = self._session.receive(msg.reply)
        return [] if query is None else [m.CascadeQuery(self.block_seq, query)]

    @property
    def awaiting_decode(self) -> bool:
        return False  # Cascade decodes nothing off the message path

    @property
    def decoding(self) -> bool:
        return False

    def take_jobs(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        raise LocalProtocolError("Cascade has no decodes to hand out")

    def decoded(self, errors: Sequence[np.ndarray | None]) -> list[m.Message]:
        raise LocalProtocolError("Cascade has no decodes to take back")

    def result(self) -> tuple[np.ndarray, np.ndarray, int, int, tuple[int, ...]]:
        key = self._session.corrected_key
        n = len(key)
        leak = int(self._session.leak_bits) + error_count_leak_bits(n)
        return key, np.ones(n, dtype=bool), int(self._session.errors_corrected), leak, ()


def _check_method(method: str) -> None:
    if method not in ERROR_CORRECTION_METHODS:
        raise ConfigError(f"error_correction: expected one of {', '.join(ERROR_CORRECTION_METHODS)}, got {method!r}")


def make_alice_reconciler(
    method: str, block_seq: int, key: np.ndarray, qber_estimate: float, rng: Any, ldpc_profile: str = DEFAULT_LDPC_PROFILE
) -> AliceReconciler:
    """Alice's reconciler for ``method`` over her key bits of the block (``rng``: her secret randomness)."""
    _check_method(method)
    if method == ERROR_CORRECTION_LDPC:
        from qcinode.core.ldpc_reconciliation import LdpcAlice  # noqa: PLC0415 - optional extra

        return LdpcAlice(block_seq, key, qber_estimate, rng, ldpc_profile)
    return CascadeAlice(block_seq, key)


def make_bob_reconciler(
    method: str,
    block_seq: int,
    key: np.ndarray,
    qber_estimate: float,
    rng: np.random.Generator,
    cascade_max_passes: int,
    executor: Executor | None = None,
    ldpc_profile: str = DEFAULT_LDPC_PROFILE,
    *,
    defer_decoding: bool = False,
    cascade_lookahead: int = DEFAULT_CASCADE_LOOKAHEAD,
) -> BobReconciler:
    """Bob's reconciler for ``method`` over his key bits of the block.

    ``executor`` (LDPC only) decodes the block's frames in parallel; the result is the same.
    ``defer_decoding`` (LDPC only) leaves the decodes to the caller
    (:attr:`BobReconciler.awaiting_decode`, :meth:`BobReconciler.take_jobs`,
    :meth:`BobReconciler.decoded`).
    """
    _check_method(method)
    if method == ERROR_CORRECTION_LDPC:
        from qcinode.core.ldpc_reconciliation import LdpcBob  # noqa: PLC0415 - optional extra

        return LdpcBob(block_seq, key, qber_estimate, executor=executor, profile=ldpc_profile, defer=defer_decoding)
    return CascadeBob(block_seq, key, qber_estimate, rng, cascade_max_passes, cascade_lookahead)
