"""One link's post-processing as two message-driven sessions, Alice's and Bob's.

Theory of operation (rules both sessions follow):

1. Lock-step quantum phase. Alice emits one frame at a time
   (:meth:`AliceLink.emit_frame`); Bob's detector turns it into clicks and Bob
   answers with a :class:`DetectionReport`; Alice answers with a
   :class:`SiftReply`. Both ends append the sifted slots (bases matched) to an
   identical buffer, in slot order.
1a. Measuring beside the rest. Bob measures a frame with generators of
   his own for it (drawn from his session's when it starts), so that the
   measurement may run on another thread while his other steps go on
   (:meth:`BobLink.receive_frame_later`, :class:`Measurement`,
   :meth:`BobLink.measured`): one measurement at a time, and none of a
   session that broke meanwhile. The clicks are the same whichever thread
   measures.
1b. Emitting beside the rest. Alice likewise draws a frame's pulses with
   generators of her own for emission (:meth:`AliceLink.emit_frame_later`,
   :class:`Emission`, :meth:`AliceLink.emitted`): the frame counts as in
   flight from the moment its emission starts (no second frame goes out,
   and no detection report for it is accepted before it is out), while her
   other steps (the open block's answers) go on. One emission at a time,
   and none of a session that broke meanwhile.
2. Block boundary. After each ``SiftReply`` both ends count the sifted
   key-basis (Z) bits in the buffer; when the count reaches ``block_bits`` the
   whole buffer becomes the block (so no sifted data crosses a block
   boundary and a block's transcript holds every message its data came
   from).
2a. Sifting ahead. While a block is in post-processing (steps 3-6) the
   next one may be sifted: its frames, ``DetectionReport`` and ``SiftReply``
   go into the next block's buffer and transcript, never the open block's.
   A block that fills while another is open waits, closed, until the open
   one ends at that end, and no frame is sent or measured for a block
   after it meanwhile (at most one open block and one waiting). Both ends
   close blocks at the same ``SiftReply`` and start them in order, so they
   number and handle the same blocks; Bob reveals a waiting block's test
   bits once his open block has ended or awaits only Alice's Commit (rule
   6b). Alice sifts ahead only when her
   driver asks (:meth:`AliceLink.emit_frame` with ``ahead``); Bob follows
   whatever she does.
3. Parameter estimation. Bob reveals his test-basis (X) bits; Alice counts the
   errors per intensity class and evaluates THE key-length function
   (:meth:`_LinkEnd._key_length`: :func:`qcinode.core.finite_key.decoy_key_length`
   under the configured ``finite_key`` analysis with decoy states,
   :func:`qcinode.core.estimation.no_decoy_key_length` under the configured
   ``no_decoy_bound`` for a signal-only source, fed the pulses both ends
   counted in the block's frames) at the Shannon limit of error
   correction; if even that leaves no key, the block aborts before Cascade.
4. Reconciliation, behind :mod:`qcinode.core.reconciliation`'s interface
   (``error_correction``): Cascade (Bob asks, Alice answers, one bisection
   level per message) or one-way LDPC (Alice's syndromes follow her
   ``Estimate``; Bob asks for more bits of frames that fail, at most twice,
   then drops them). Leak is every bit disclosed (parities, syndromes,
   revealed and discarded bits) plus the bits needed to disclose the error
   count; the key bits kept are those of the frames both ends kept.
   Bob's Cascade sends its first query before it builds the tables the
   answer needs, and builds them when its driver works ahead
   (:meth:`_LinkEnd.work_ahead`) or when the answer comes.
5. Verification. Bob sends a universal-hash tag of his corrected key; Alice
   compares it with hers. Mismatch: the block is discarded.
6. Privacy amplification and authentication. Alice computes the key length
   from the statistics and the measured leak, draws a Toeplitz seed, hashes
   (6a) and sends :class:`Confirm` with a one-time Poly1305 tag over the whole
   transcript. Bob checks the tag and recomputes the length himself
   (mismatch: reject), hashes, keeps the key *pending* and answers
   :class:`Verdict` with his own tag. Alice checks Bob's tag, accepts the
   block and sends :class:`Commit` (tagged with a third key); on it Bob
   accepts too. The three one-time keys come from the link's
   :class:`AuthKeyReserve` when ``Confirm`` is signed and checked, so a block
   that aborts earlier consumes none. A failed tag at either end discards
   the block; no key beyond the block's three MAC keys is consumed.
6a. Hashing off the critical path. Neither message of step 6 depends on the
   hash, so neither end hashes before it sends: Alice hashes once Confirm is
   out, Bob once Verdict is out, both at once, each when its driver has
   nothing else to do (:meth:`_LinkEnd.work_ahead`) or at the latest when
   the block is accepted (Alice on Verdict, Bob on Commit). A block costs
   one hash on the critical path, not two.
6b. Deciding before the Commit. Once Bob's accepting Verdict is out, his
   decision on the block is made: the block waits aside for Alice's Commit
   (which any later message of hers follows on the ordered stream) and the
   next block opens at once, its TestBits right behind the Verdict, so
   that its estimation overlaps Alice's hash and the Commit's crossing.
   At most one block waits so: Alice sends a block's Commit before she
   handles the next block's TestBits, so before its Confirm, and Bob
   refuses a Confirm while a block still awaits its Commit (the MAC keys
   and the refill of rule 7 assume every older block is held at both ends
   when a block takes its keys). A session that breaks meanwhile aborts
   the open block and keeps the waiting one pending, as before.
7. Refill. When the MAC-key reserve runs low, both ends set aside the first
   bytes of a newly accepted block and move them into the reserve when the
   next block is signed, by which time both ends surely hold it.

Sessions raise :class:`~qcinode.errors.RemoteProtocolError` on a message that
breaks these rules; the caller tears the session down and both ends discard
the open block.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..errors import AuthenticationFailed, ConfigError, InsufficientKeyMaterial, LocalProtocolError, RemoteProtocolError
from . import messages as m
from .aborts import AbortReason
from .amplification import toeplitz_hash, unpack_bits
from .authentication import KEY_BYTES, AuthKeyReserve, Direction, Transcript
from .channel import QuantumChannelModel, physics_at
from .estimation import (
    NO_DECOY_BOUNDS,
    NO_DECOY_GLLP,
    BlockStatistics,
    KeyLengthResult,
    NoDecoyStatistics,
    h2,
    no_decoy_key_length,
)
from .finite_key import DEFAULT_FINITE_KEY, check_finite_key, decoy_key_length
from .kernels import compress_bytes, select_kept
from .physics import EMULATED_CHANNEL, AliceRecord, Clicks, LinkPhysics, PhotonFrame, QuantumChannel, check_slots
from .randomness import KeyRandomness, spawn_generator
from .reconciliation import (
    DEFAULT_CASCADE_LOOKAHEAD,
    DEFAULT_ERROR_CORRECTION,
    DEFAULT_LDPC_PROFILE,
    ERROR_CORRECTION_METHODS,
    LDPC_PROFILES,
    AliceReconciler,
    BobReconciler,
    make_alice_reconciler,
    make_bob_reconciler,
)
from .reconciliation import error_count_leak_bits as error_count_leak_bits
from .verification import tags_match, verification_tag

A2B: Direction = "A>B"
B2A: Direction = "B>A"
MAC_KEYS_PER_BLOCK = 3
MAC_KEY_BYTES = KEY_BYTES  # one Poly1305 one-time key


class LinkState(enum.Enum):
    QUANTUM = "quantum"
    ESTIMATING = "estimating"
    RECONCILING = "reconciling"
    CONFIRMING = "confirming"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class LinkProtocolConfig:
    """What both ends of a link must agree on.

    ``no_decoy_bound`` (topology ``source.no_decoy_bound``) picks the
    key-length assumption of a source without decoy states (one of
    :data:`~qcinode.core.estimation.NO_DECOY_BOUNDS`); it is ignored when
    the source sends decoy and vacuum pulses. ``finite_key`` names the
    analysis of a decoy-state block
    (:data:`~qcinode.core.finite_key.FINITE_KEY_ANALYSES`) and
    ``error_correction`` the reconciliation method
    (:data:`~qcinode.core.reconciliation.ERROR_CORRECTION_METHODS`), and
    ``ldpc_profile`` the LDPC codes and schedule when it is ``ldpc``
    (:data:`~qcinode.core.reconciliation.LDPC_PROFILES`).
    """

    link_id: str
    physics: LinkPhysics
    block_bits: int = 100_000
    security_epsilon: float = 1e-10
    verification_tag_bits: int = 64
    auth_low_water_keys: int = 64
    auth_refill_keys: int = 64
    cascade_max_passes: int = 6
    cascade_lookahead: int = DEFAULT_CASCADE_LOOKAHEAD
    no_decoy_bound: str = NO_DECOY_GLLP
    channel: QuantumChannelModel | None = None
    finite_key: str = DEFAULT_FINITE_KEY
    error_correction: str = DEFAULT_ERROR_CORRECTION
    ldpc_profile: str = DEFAULT_LDPC_PROFILE

    def __post_init__(self) -> None:
        if self.block_bits < 1:
            raise LocalProtocolError("block_bits must be positive")
        check_finite_key(self.finite_key)
        if self.error_correction not in ERROR_CORRECTION_METHODS:
            raise ConfigError(
                f"error_correction: expected one of {', '.join(ERROR_CORRECTION_METHODS)}, got {self.error_correction!r}"
            )
        if self.ldpc_profile not in LDPC_PROFILES:
            raise ConfigError(f"ldpc_profile: expected one of {', '.join(LDPC_PROFILES)}, got {self.ldpc_profile!r}")
        if self.no_decoy_bound not in NO_DECOY_BOUNDS:
            raise ConfigError(
                f"no_decoy_bound: expected one of {', '.join(NO_DECOY_BOUNDS)}, got {self.no_decoy_bound!r}"
            )

    def physics_at(self, at_utc: float | None) -> LinkPhysics:
        """The optical layer of a frame sampled at emulated instant ``at_utc``.

        Without a channel model (or without an instant) it is ``physics``;
        with one, ``physics`` with the channel's transmittance and
        background at that instant (:func:`qcinode.core.channel.physics_at`).
        """
        if self.channel is None or at_utc is None:
            return self.physics
        return physics_at(self.physics, self.channel.conditions(at_utc))

    @property
    def sifted_block_bits(self) -> int:
        """About how many sifted bits a block holds: its ``block_bits`` key (Z) bits and the test (X) bits beside them.

        Both ends pick Z with probability ``p`` independently, so a sifted
        bit is in Z with probability ``p^2 / (p^2 + (1-p)^2)`` (rule 2 closes
        the block at ``block_bits`` Z bits); the sizes of the block's arrays.
        """
        p = self.physics.z_basis_probability
        if p <= 0.0:
            return self.block_bits
        return math.ceil(self.block_bits * (p * p + (1.0 - p) ** 2) / (p * p))

    @property
    def has_decoy_states(self) -> bool:
        """Whether the source sends decoy or vacuum pulses (else: signal pulses only)."""
        _, decoy, vacuum = self.physics.class_probabilities
        return decoy > 0.0 or vacuum > 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class BlockStats:
    """What one block did; both ends report the same figures."""

    block_seq: int
    frames: int
    pulses: int
    detections: int
    key_bits: int
    test_bits: int
    test_errors: int
    errors_corrected: int
    leak_bits: int
    #: Reconciliation round trips (Cascade query/reply pairs; LDPC attempts).
    cascade_rounds: int
    secret_bits: int
    estimate: KeyLengthResult | None

    @property
    def sifted_bits(self) -> int:
        return self.key_bits + self.test_bits

    @property
    def qber(self) -> float:
        """Key-basis error rate, measured by error correction."""
        return self.errors_corrected / self.key_bits if self.key_bits else 0.0

    @property
    def test_qber(self) -> float:
        return self.test_errors / self.test_bits if self.test_bits else 0.0

    @property
    def ec_efficiency(self) -> float:
        """f = leak / (n h(QBER)); 0 when nothing was leaked or no error was found."""
        ideal = self.key_bits * h2(self.qber)
        return self.leak_bits / ideal if ideal > 0 else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class BlockAccepted:
    block_seq: int
    block_id: str
    key: bytes = dataclasses.field(repr=False)
    stats: BlockStats


@dataclasses.dataclass(frozen=True, slots=True)
class BlockAborted:
    block_seq: int
    reason: str
    stats: BlockStats


BlockEvent = BlockAccepted | BlockAborted


def block_id_for(link_id: str, block_seq: int) -> str:
    return f"{link_id}/{block_seq}"


class _SiftBuffer:
    """Sifted slots in order, identical at both ends (bits differ until corrected)."""

    def __init__(self) -> None:
        self.classes: list[np.ndarray] = []
        self.bases: list[np.ndarray] = []
        self.bits: list[np.ndarray] = []
        self.z_bits = 0

    def add(self, classes: np.ndarray, bases: np.ndarray, bits: np.ndarray) -> None:
        self.classes.append(classes)
        self.bases.append(bases)
        self.bits.append(bits)
        self.z_bits += int(bases.size - np.count_nonzero(bases))  # bases are 0 (Z) or 1 (X)

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = tuple(np.concatenate(parts) if parts else np.zeros(0, np.uint8) for parts in (self.classes, self.bases, self.bits))
        self.__init__()  # type: ignore[misc]
        return out  # type: ignore[return-value]


@dataclasses.dataclass(slots=True)
class _Block:
    seq: int
    classes: np.ndarray
    bases: np.ndarray
    bits: np.ndarray
    mac_keys: list[bytes]
    transcript: Transcript
    frames: int
    pulses: int
    detections: int
    test_errors: tuple[int, int, int] = (0, 0, 0)
    leak_bits: int = 0
    errors_corrected: int = 0
    cascade_rounds: int = 0
    key_length: KeyLengthResult | None = None
    secret: bytes = b""
    # The privacy-amplification hash not computed yet (rule 6a): the key, the Toeplitz seed, the output bits.
    unhashed: tuple[np.ndarray, bytes, int] | None = None
    refill_mac_keys: bool = False
    short: bool = False  # closed early (end of a pass) with fewer key bits than block_bits
    _counts: dict[int, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    _key_mask: np.ndarray | None = None

    @property
    def key_mask(self) -> np.ndarray:
        """Where the block's key-basis (Z) bits are (computed once per block)."""
        if self._key_mask is None:
            self._key_mask = self.bases == 0
        return self._key_mask

    @property
    def test_qber(self) -> float:
        """Error rate of the revealed test-basis bits."""
        return sum(self.test_errors) / max(1, sum(self.counts(1)))

    def counts(self, basis: int) -> tuple[int, int, int]:
        """Sifted detections per intensity class in ``basis`` (computed once per block)."""
        cache = self._counts
        if not cache:
            # Code 2 * class + basis (classes 0..2, bases 0/1) in one byte per
            # detection, counted per value: no int64 copy of a million entries
            # (np.bincount would make one).
            code = self.classes.astype(np.uint8, copy=False) << np.uint8(1)
            code |= self.bases.astype(np.uint8, copy=False)
            both = [int(np.count_nonzero(code == v)) for v in range(6)]
            for b in (0, 1):
                cache[b] = tuple(both[b::2])  # type: ignore[assignment]
        return cache[basis]

    def stats(self, secret_bits: int = 0) -> BlockStats:
        return BlockStats(
            block_seq=self.seq,
            frames=self.frames,
            pulses=self.pulses,
            detections=self.detections,
            key_bits=sum(self.counts(0)),
            test_bits=sum(self.counts(1)),
            test_errors=sum(self.test_errors),
            errors_corrected=self.errors_corrected,
            leak_bits=self.leak_bits,
            cascade_rounds=self.cascade_rounds,
            secret_bits=secret_bits,
            estimate=self.key_length,
        )


class _LinkEnd:
    """What both ends share: config, sifting buffer, block bookkeeping, MAC keys."""

    direction_out: Direction
    direction_in: Direction

    def __init__(
        self,
        config: LinkProtocolConfig,
        auth: AuthKeyReserve,
        key_rng: KeyRandomness,
        noise_rng: np.random.Generator,
        next_block_seq: int = 0,
        *,
        quantum: QuantumChannel = EMULATED_CHANNEL,
    ) -> None:
        """One end of a link.

        Args:
            config: What both ends agree on.
            auth: The link's one-time MAC keys (shared with the link's runtime, which saves them).
            key_rng: This end's secret randomness (a CSPRNG in a running node).
            noise_rng: Channel and detector noise.
            next_block_seq: The first block's number.
            quantum: Carries the pulses from Alice's source to Bob's detectors
                (the emulated physics; a test may wrap it to see every frame's ground truth).
        """
        self.config = config
        self.auth = auth
        self.key_rng = key_rng
        self.noise_rng = noise_rng
        self.quantum = quantum
        self.state = LinkState.QUANTUM
        self.next_block_seq = next_block_seq
        self.events: list[BlockEvent] = []
        self._buffer = _SiftBuffer()
        self._transcript = Transcript()
        self._frames = 0
        self._pulses = 0
        self._detections = 0
        self.block: _Block | None = None
        self._queued: _Block | None = None  # closed while another block was open (rule 2a)

    # -- helpers --------------------------------------------------------
    def _record_in(self, msg: m.Message) -> None:
        self._transcript_for(msg).append_parts(self.direction_in, m.canonical_parts(msg))

    def _record_out(self, msg: m.Message) -> None:
        self._transcript_for(msg).append_parts(self.direction_out, m.canonical_parts(msg))

    def _transcript_for(self, msg: m.Message) -> Transcript:
        """Sifting messages belong to the block being filled, the rest to the open block (rule 2a)."""
        if isinstance(msg, (m.DetectionReport, m.SiftReply)) or self.block is None:
            return self._transcript
        return self.block.transcript

    def _expect_sifting(self, msg: m.Message) -> None:
        """Sifting goes on in any state of a live session (rule 2a)."""
        if self.state is LinkState.FAILED:
            raise RemoteProtocolError(f"{type(msg).__name__} not expected in state {self.state.value}")

    def _expect(self, state: LinkState, msg: m.Message) -> _Block | None:
        if self.state is not state:
            raise RemoteProtocolError(f"{type(msg).__name__} not expected in state {self.state.value}")
        if state is not LinkState.QUANTUM:
            assert self.block is not None
            seq = getattr(msg, "block_seq")  # noqa: B009 - past QUANTUM only block messages arrive; mypy cannot tell
            if seq != self.block.seq:
                raise RemoteProtocolError(f"{type(msg).__name__} for block {seq}, open block is {self.block.seq}")
        return self.block

    def _add_sifted(self, classes: np.ndarray, bases: np.ndarray, bits: np.ndarray, pulses: int, detections: int) -> None:
        self._buffer.add(classes, bases, bits)
        self._frames += 1
        self._pulses += pulses
        self._detections += detections

    def _maybe_close_block(self, force: bool = False) -> bool:
        """Closes the block once it holds ``block_bits`` key bits, or now if ``force`` (end of a pass).

        Both ends call it after the same ``SiftReply``, with the same
        ``force`` (the reply's ``close_block``), so they close the same block.
        """
        short = self._buffer.z_bits < self.config.block_bits
        if short and not (force and self._frames > 0):
            return False
        classes, bases, bits = self._buffer.take()
        block = _Block(
            seq=self.next_block_seq,
            classes=classes,
            bases=bases,
            bits=bits,
            mac_keys=[],
            transcript=self._transcript,
            frames=self._frames,
            pulses=self._pulses,
            detections=self._detections,
            short=short,
        )
        self.next_block_seq += 1
        self._transcript = Transcript()
        self._frames = self._pulses = self._detections = 0
        if self.block is not None:
            self._queued = block  # it starts when the open block ends (rule 2a)
            return False
        self.block = block
        self.state = LinkState.ESTIMATING
        return True

    def _start_queued(self) -> bool:
        """Opens the block that waited, once the open one has ended (rule 2a); whether it did."""
        if self._queued is None or self.block is not None or self.state is not LinkState.QUANTUM:
            return False
        self.block, self._queued = self._queued, None
        self.state = LinkState.ESTIMATING
        return True

    def _statistics(self, block: _Block) -> BlockStatistics:
        phys = self.config.physics
        return BlockStatistics(
            intensities=phys.intensities,
            class_probabilities=phys.class_probabilities,
            key_counts=block.counts(0),
            test_counts=block.counts(1),
            test_errors=block.test_errors,
        )

    def _no_decoy_statistics(self, block: _Block) -> NoDecoyStatistics:
        phys = self.config.physics
        return NoDecoyStatistics(
            intensity=phys.intensities[0],
            z_basis_probability=phys.z_basis_probability,
            pulses=block.pulses,
            key_bits=sum(block.counts(0)),
            test_bits=sum(block.counts(1)),
            test_errors=sum(block.test_errors),
        )

    def _key_length(self, block: _Block, leak_bits: int) -> KeyLengthResult:
        """THE key length of a block, computed identically at both ends from what both hold.

        A signal-only source gets the no-decoy bound the config names (GLLP
        by default); any other source gets Lim et al.'s decoy-state bound.
        """
        stats: BlockStatistics | NoDecoyStatistics
        try:
            stats = self._statistics(block) if self.config.has_decoy_states else self._no_decoy_statistics(block)
        except ConfigError as exc:
            # A source the bounds cannot describe (decoy classes that cannot
            # feed Lim et al.'s bounds, a zero signal intensity): no key, said why.
            return KeyLengthResult(
                length_bits=0,
                vacuum_bits=0.0,
                single_photon_bits=0.0,
                phase_error_bound=0.5,
                test_single_photon_bits=0.0,
                test_single_photon_errors=0.0,
                leak_ec_bits=leak_bits,
                correction_bits=0.0,
                reason=f"no_usable_statistics: {exc}",
            )
        if isinstance(stats, NoDecoyStatistics):
            return no_decoy_key_length(
                stats,
                leak_ec_bits=leak_bits,
                verification_tag_bits=self.config.verification_tag_bits,
                security_epsilon=self.config.security_epsilon,
                bound=self.config.no_decoy_bound,
            )
        return decoy_key_length(
            stats,
            leak_ec_bits=leak_bits,
            verification_tag_bits=self.config.verification_tag_bits,
            security_epsilon=self.config.security_epsilon,
            analysis=self.config.finite_key,
        )

    def _take_mac_keys(self, block: _Block) -> bool:
        """Takes the block's one-time MAC keys, when it first needs a tag.

        Alice takes them as she signs ``Confirm``, Bob as he checks it, so a
        block that aborts earlier costs no key; a ``Confirm`` lost in transit
        leaves Alice's cursor ahead, and the ends resynchronise forward
        (Hello). The refill decision is made here too, from the same reserve
        level at both ends, so a block accepted late refills identically.
        """
        # Every block older than this one is held at both ends by now (its
        # Commit came first on the ordered stream, or Hello reconciled it).
        self.auth.promote_before(block.seq)
        try:
            block.mac_keys = self.auth.take(MAC_KEYS_PER_BLOCK)
        except InsufficientKeyMaterial:
            return False
        block.refill_mac_keys = self.auth.available_keys < self.config.auth_low_water_keys
        return True

    def _optimistic_key_length(self, block: _Block) -> KeyLengthResult:
        """The key length if error correction reached the Shannon limit: zero means abort before Cascade."""
        n = int(np.count_nonzero(block.key_mask))
        return self._key_length(block, leak_bits=math.ceil(n * h2(min(block.test_qber, 0.5))))

    @staticmethod
    def _no_key_reason(block: _Block, reason: str) -> str:
        """Why ``block`` makes no key: a block cut short by the end of a pass says so."""
        return "pass_too_short" if block.short else reason

    def _abort(self, reason: str) -> None:
        """Ends the open block without a key."""
        block = self.block
        assert block is not None
        self._aborted(block, reason)
        self.block = None
        self.state = LinkState.QUANTUM

    def _aborted(self, block: _Block, reason: str) -> None:
        self.events.append(BlockAborted(block.seq, reason, block.stats()))

    def _accept(self) -> None:
        """Ends the open block with its key."""
        block = self.block
        assert block is not None
        self._accepted(block)
        self.block = None
        self.state = LinkState.QUANTUM

    def _accepted(self, block: _Block) -> None:
        secret = _hashed(block)
        if block.refill_mac_keys:
            refill = min(self.config.auth_refill_keys * MAC_KEY_BYTES, (len(secret) // 2) // MAC_KEY_BYTES * MAC_KEY_BYTES)
            self.auth.stage(block.seq, secret[:refill])
            secret = secret[refill:]
        self.events.append(
            BlockAccepted(block.seq, block_id_for(self.config.link_id, block.seq), secret, block.stats(secret_bits=8 * len(secret)))
        )

    def take_events(self) -> list[BlockEvent]:
        events, self.events = self.events, []
        return events

    def work_ahead(self) -> bool:
        """Does now a computation a later message would need (rules 4 and 6a); returns whether there was one.

        A driver with nothing else to do (waiting for the peer) may call it;
        nothing else changes, whether it is called or not.
        """
        block = self._decided_block()
        if block is None or block.unhashed is None:
            return False
        _hashed(block)
        return True

    def _decided_block(self) -> _Block | None:
        """The block whose message of step 6 is out, whose hash this end may owe (rule 6a): Alice's open one."""
        return self.block

    def abandon(self, reason: str) -> list[BlockEvent]:
        """The session broke (protocol error, lost peer): drop everything in flight.

        The open block, if any, ends as :class:`BlockAborted`; sifted data
        not yet in a block is discarded, since its transcript will never be
        authenticated. A block Bob holds pending Alice's Commit is kept for
        :meth:`BobLink.settle_pending`. Returns the events to record.
        """
        if self.block is not None:
            self._aborted(self.block, reason)
            self.block = None
        if self._queued is not None:
            self.events.append(BlockAborted(self._queued.seq, reason, self._queued.stats()))
            self._queued = None
        self._buffer = _SiftBuffer()
        self._transcript = Transcript()
        self._frames = self._pulses = self._detections = 0
        self.state = LinkState.FAILED
        self._reset_session()
        return self.take_events()

    def _reset_session(self) -> None:
        """Role-specific state of a session that broke."""


class AliceLink(_LinkEnd):
    """The transmitting end: emits frames, answers sifting, estimates, answers Cascade."""

    direction_out = A2B
    direction_in = B2A

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next_frame_id = 0
        # (frame ID, slots, Alice's record); the record is None while the frame's emission is under way (rule 1b).
        self._outstanding: tuple[int, int, AliceRecord | None] | None = None
        self._reconciler: AliceReconciler | None = None
        self._confirm: m.Confirm | None = None
        self._close_after_frame = False
        # Rule 1b: frames are drawn with generators of their own, so that an emission may run beside
        # this end's other steps, which draw from key_rng (seeds); one emission at a time (``_emitting``).
        # A frame's record draws from the same key generator for the dark-count slots Bob reports
        # (AliceRecord.reveal), on this end's thread, when his report is sifted: the next emission cannot
        # have started then (one frame in flight), so the generator is never used by two threads at once.
        self._emit_key_rng: KeyRandomness = spawn_generator(self.key_rng)
        self._emit_noise_rng: np.random.Generator = spawn_generator(self.noise_rng)
        self._emitting: Emission | None = None  # the one under way; cleared when the session breaks

    def _reset_session(self) -> None:
        self._outstanding = None
        self._emitting = None  # an emission under way is void
        self._close_after_frame = False
        self._reconciler = None
        self._confirm = None

    @property
    def is_ready_for_frame(self) -> bool:
        """No frame in flight and no block in post-processing: the lock-step of rule 1."""
        return self.state is LinkState.QUANTUM and self._outstanding is None

    @property
    def can_sift_ahead(self) -> bool:
        """No frame in flight and no closed block waiting: a frame may go out while a block is open (rule 2a)."""
        return self.state is not LinkState.FAILED and self._outstanding is None and self._queued is None

    @property
    def key_bits_needed(self) -> int:
        """Sifted key-basis bits still missing before the open block closes."""
        return max(0, self.config.block_bits - self._buffer.z_bits)

    def emit_frame(
        self, n_slots: int, *, at_utc: float | None = None, close_block: bool = False, ahead: bool = False
    ) -> tuple[int, PhotonFrame]:
        """Sends ``n_slots`` pulses into the channel; returns (frame_id, what reaches Bob).

        Args:
            n_slots: Pulse slots in the frame.
            at_utc: The emulated instant whose channel conditions the frame is
                sampled with (its midpoint); Bob's detector must be given the
                same instant. None: the link's fixed physics.
            close_block: This is the last frame before the channel stops
                carrying light (the end of a pass): the sifting reply tells
                Bob, and both ends close the open block after it, however
                few key bits it holds.
            ahead: The frame may fill the next block while one is in
                post-processing (rule 2a; :attr:`can_sift_ahead`).
        """
        emission = self.emit_frame_later(n_slots, at_utc=at_utc, close_block=close_block, ahead=ahead)
        frame = self.emitted(emission, *emission.run())
        assert frame is not None
        return emission.frame_id, frame

    def emit_frame_later(
        self, n_slots: int, *, at_utc: float | None = None, close_block: bool = False, ahead: bool = False
    ) -> Emission:
        """As :meth:`emit_frame`, but the pulses are drawn by the caller (rule 1b): it runs
        :meth:`Emission.run` where it likes, meanwhile hands this end any message but the frame's
        :class:`DetectionReport` (which cannot come before the frame is out), and ends with
        :meth:`emitted`. The frame is in flight from now on.
        """
        if not (self.can_sift_ahead if ahead else self.is_ready_for_frame):
            raise LocalProtocolError("a frame is already in flight or a block is being processed")
        n_slots = check_slots(n_slots)
        physics = self.config.physics_at(at_utc)
        frame_id = self.next_frame_id
        self.next_frame_id += 1
        self._emitting = Emission(frame_id, n_slots, physics, self.quantum, self._emit_key_rng, self._emit_noise_rng)
        self._outstanding = (frame_id, n_slots, None)
        self._close_after_frame = bool(close_block)
        return self._emitting

    def emitted(self, emission: Emission, frame: PhotonFrame, record: AliceRecord) -> PhotonFrame | None:
        """A frame's emission ended: the frame to send (None if the session broke meanwhile, or if it is
        not this end's emission: nothing may be sent)."""
        if emission is not self._emitting:
            return None
        self._emitting = None
        self._outstanding = (emission.frame_id, emission.n_slots, record)
        return frame

    def receive(self, msg: m.Message) -> list[m.Message]:
        match msg:
            case m.DetectionReport():
                out = self._on_detections(msg)
            case m.TestBits():
                out = self._on_test_bits(msg)
            case m.CascadeQuery() | m.LdpcRetry():
                out = self._on_query(msg)
            case m.Reconciled():
                out = self._on_reconciled(msg)
            case m.Verdict():
                out = self._on_verdict(msg)
            case _:
                raise RemoteProtocolError(f"Alice does not accept {type(msg).__name__}")
        # A block that waited opens once the open one has ended here; Bob opens it
        # when the block ends at his end too, and its TestBits follow (rule 2a).
        self._start_queued()
        return out

    def _on_detections(self, msg: m.DetectionReport) -> list[m.Message]:
        self._expect_sifting(msg)
        if self._outstanding is None or msg.frame_id != self._outstanding[0]:
            raise RemoteProtocolError(f"detections for frame {msg.frame_id}, which is not in flight")
        frame_id, n_slots, record = self._outstanding
        if record is None:
            raise RemoteProtocolError(f"detections for frame {msg.frame_id}, which has not been sent yet")
        if msg.n_slots != n_slots or len(msg.slots) != len(msg.bases):
            raise RemoteProtocolError("detection report does not fit the frame")
        slots = msg.slots
        if len(slots) and (slots[0] < 0 or slots[-1] >= n_slots or not np.all(slots[1:] > slots[:-1])):
            raise RemoteProtocolError("detection report slots out of range or unsorted")
        if msg.bases.max(initial=0) > 1:
            raise RemoteProtocolError("detection report bases must be 0 or 1")
        self._outstanding = None
        self._record_in(msg)
        classes, bases, bits = record.reveal(msg.slots)
        match = (bases == msg.bases).view(np.uint8)
        classes = classes.astype(np.uint8, copy=False)
        close, self._close_after_frame = self._close_after_frame, False
        reply = m.SiftReply(frame_id, match, classes, close_block=close)
        self._record_out(reply)
        self._add_sifted(*select_kept(match, classes, bases, bits), n_slots, len(msg.slots))
        self._maybe_close_block(force=close)
        return [reply]

    def _on_test_bits(self, msg: m.TestBits) -> list[m.Message]:
        block = self._expect(LinkState.ESTIMATING, msg)
        assert block is not None
        test_mask = block.bases == 1
        ours = compress_bytes(test_mask, block.bits)
        if len(msg.bits) != len(ours):
            raise RemoteProtocolError(f"expected {len(ours)} test bits, got {len(msg.bits)}")
        self._record_in(msg)
        wrong = ours != msg.bits
        block.test_errors = tuple(int(c) for c in np.bincount(compress_bytes(test_mask, block.classes)[wrong], minlength=3)[:3])  # type: ignore[assignment]
        optimistic = self._optimistic_key_length(block)
        reason = ""
        if sum(block.counts(1)) == 0:
            reason = self._no_key_reason(block, "no_test_bits")
        elif optimistic.length_bits <= 0:
            reason = self._no_key_reason(block, optimistic.reason or "insufficient_entropy")
        reply = m.Estimate(block.seq, block.test_errors, proceed=not reason, abort_reason=reason)
        self._record_out(reply)
        if reason:
            block.key_length = optimistic
            self._abort(reason)
            return [reply]
        self._reconciler = make_alice_reconciler(
            self.config.error_correction,
            block.seq,
            compress_bytes(block.key_mask, block.bits),
            block.test_qber,
            self.key_rng,
            self.config.ldpc_profile,
        )
        self.state = LinkState.RECONCILING
        out: list[m.Message] = [reply, *self._reconciler.opening()]
        for sent in out[1:]:
            self._record_out(sent)
        block.cascade_rounds = self._reconciler.rounds
        return out

    def _on_query(self, msg: m.CascadeQuery | m.LdpcRetry) -> list[m.Message]:
        block = self._expect(LinkState.RECONCILING, msg)
        assert block is not None and self._reconciler is not None
        self._record_in(msg)
        replies = self._reconciler.receive(msg)
        block.cascade_rounds = self._reconciler.rounds
        for reply in replies:
            self._record_out(reply)
        return replies

    def _on_reconciled(self, msg: m.Reconciled) -> list[m.Message]:
        block = self._expect(LinkState.RECONCILING, msg)
        assert block is not None and self._reconciler is not None
        self._record_in(msg)
        kept, block.leak_bits = self._reconciler.finish(msg)
        key = compress_bytes(block.key_mask, block.bits)[kept]
        n = len(key)
        if n == 0:  # every LDPC frame was discarded: nothing is left to verify or to amplify
            self._reconciler = None
            return self._decline(block, AbortReason.RECONCILIATION_FAILED.value)
        if not 0 <= msg.errors_corrected <= n:
            raise RemoteProtocolError("errors_corrected out of range")
        block.errors_corrected = msg.errors_corrected
        self._reconciler = None
        ours = verification_tag(key, msg.verify_seed, self.config.verification_tag_bits)
        if not tags_match(ours, msg.verify_tag):
            return self._decline(block, "verification_failed")
        block.key_length = self._key_length(block, block.leak_bits)
        length = min(block.key_length.length_bits, n) // 8 * 8
        if length <= 0:
            return self._decline(block, self._no_key_reason(block, block.key_length.reason or "insufficient_entropy"))
        if not self._take_mac_keys(block):
            return self._decline(block, "authentication_keys_exhausted")
        seed = bytes(self.key_rng.bytes((n + length - 1 + 7) // 8))
        block.unhashed = (key, seed, length)  # hashed ahead or on Bob's Verdict (rule 6a)
        unsigned = m.Confirm(block.seq, True, "", seed, length, block.leak_bits)
        self._record_out(unsigned)
        tag = block.transcript.tag(block.mac_keys[0])
        self._confirm = unsigned
        self.state = LinkState.CONFIRMING
        return [dataclasses.replace(unsigned, auth_tag=tag)]

    def _decline(self, block: _Block, reason: str) -> list[m.Message]:
        """Ends the block at the Reconciled stage and tells Bob why: a Confirm refusing it (no key, no tag)."""
        reply = m.Confirm(block.seq, False, reason, b"", 0, block.leak_bits)
        self._record_out(reply)
        self._abort(reason)
        return [reply]

    def _on_verdict(self, msg: m.Verdict) -> list[m.Message]:
        block = self._expect(LinkState.CONFIRMING, msg)
        assert block is not None
        self._record_in(dataclasses.replace(msg, auth_tag=b""))
        if not msg.accepted:
            self._abort(msg.reason or "rejected_by_peer")
            return []
        try:
            block.transcript.verify(block.mac_keys[1], msg.auth_tag)
        except AuthenticationFailed:
            commit = self._signed_commit(block, accepted=False)
            self._abort("authentication_failed")
            return [commit]
        commit = self._signed_commit(block, accepted=True)
        self._accept()
        return [commit]

    def _signed_commit(self, block: _Block, accepted: bool) -> m.Commit:
        unsigned = m.Commit(block.seq, accepted)
        self._record_out(unsigned)
        return dataclasses.replace(unsigned, auth_tag=block.transcript.tag(block.mac_keys[2]))


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Emission:
    """One frame's emission at Alice's source (rule 1b): everything it needs, and nothing of the session.

    :meth:`run` touches only its own fields (the physics of its instant, the
    emission generators, which one emission at a time uses), so it may run
    on another thread than the session's other steps.
    """

    frame_id: int
    n_slots: int
    physics: LinkPhysics
    quantum: QuantumChannel
    key_rng: KeyRandomness
    noise_rng: np.random.Generator

    def run(self) -> tuple[PhotonFrame, AliceRecord]:
        """Draws the frame's pulses: what reaches Bob, and Alice's record of what she sent."""
        return self.quantum.transmit(self.physics, self.n_slots, self.key_rng, self.noise_rng)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Measurement:
    """One frame's measurement at Bob's detectors (rule 1a): everything it needs, and nothing of the session.

    :meth:`run` touches only its own fields (the frame, the physics of its
    instant, the detection generators, which one measurement at a time uses),
    so it may run on another thread than the session's other steps.
    """

    frame_id: int
    frame: PhotonFrame
    physics: LinkPhysics
    quantum: QuantumChannel
    key_rng: KeyRandomness
    noise_rng: np.random.Generator

    def run(self) -> Clicks:
        """Measures the frame: Bob's clicks."""
        return self.quantum.detect(self.physics, self.frame, self.key_rng, self.noise_rng)


class BobLink(_LinkEnd):
    """The receiving end: detects, reports, asks Cascade questions, keeps the key pending until Commit."""

    direction_out = B2A
    direction_in = A2B

    def __init__(
        self, *args: Any, decode_executor: Executor | None = None, defer_decoding: bool = False, **kwargs: Any
    ) -> None:
        """As :class:`_LinkEnd`; ``decode_executor``, if given, runs the LDPC frame decodes of a
        block in parallel (a process pool: the decoder holds the GIL); results are the same.
        With ``defer_decoding`` the LDPC decodes are left to the caller
        (:meth:`take_decode_jobs`, :meth:`decoded`), which meanwhile may feed
        frames and sifting messages of the next block (rule 2a)."""
        super().__init__(*args, **kwargs)
        self._decode_executor = decode_executor
        self._defer_decoding = defer_decoding
        self._pending_frames: list[tuple[int, PhotonFrame, float | None]] = []
        self._reported: tuple[int, Clicks] | None = None
        self._reconciler: BobReconciler | None = None
        self._corrected: np.ndarray | None = None
        # The block whose Verdict (accepted) is out and which awaits Alice's Commit (rule 6b): it is
        # no longer the open block, so that the next one opens meanwhile. At most one.
        self._confirming: _Block | None = None
        # Rule 1a: a frame is measured with generators of its own, so that the
        # measurement may run beside this end's other steps, which draw from
        # key_rng and noise_rng; one measurement at a time (``_measuring``).
        self._detect_key_rng: KeyRandomness = spawn_generator(self.key_rng)
        self._detect_noise_rng: np.random.Generator = spawn_generator(self.noise_rng)
        self._measuring: Measurement | None = None  # the one under way; cleared when the session breaks

    def _reset_session(self) -> None:
        self._pending_frames.clear()
        self._reported = None
        self._measuring = None  # a measurement under way is void
        self._reconciler = None
        self._corrected = None

    def _transcript_for(self, msg: m.Message) -> Transcript:
        """A Commit belongs to the block that awaits it, which is no longer the open one (rule 6b)."""
        if isinstance(msg, m.Commit) and self._confirming is not None:
            return self._confirming.transcript
        return super()._transcript_for(msg)

    def work_ahead(self) -> bool:
        if self._reconciler is not None and self._reconciler.work_ahead():
            return True
        return super().work_ahead()

    def _decided_block(self) -> _Block | None:
        """Bob's Verdict moves the block aside, out of the open slot (rule 6b)."""
        return self._confirming

    def receive_frame(self, frame_id: int, frame: PhotonFrame, at_utc: float | None = None) -> list[m.Message]:
        """A frame arrived from the channel. Measured now if the link is sifting, else queued.

        ``at_utc`` is the instant Alice sampled it at (:meth:`AliceLink.emit_frame`):
        the detector sees the background of that instant.
        """
        self._pending_frames.append((frame_id, frame, at_utc))
        return self._drain_frames()

    def _drain_frames(self) -> list[m.Message]:
        measurement = self._next_measurement()
        if measurement is None:
            return []
        return self.measured(measurement, measurement.run())

    def receive_frame_later(self, frame_id: int, frame: PhotonFrame, at_utc: float | None = None) -> Measurement | None:
        """As :meth:`receive_frame`, but the frame's measurement, if it is its turn, is handed to the caller
        (rule 1a): it runs :meth:`Measurement.run` where it likes, meanwhile hands this end any
        message but the frame's :class:`SiftReply` (which cannot come before its report), and ends with
        :meth:`measured`. ``None``: the frame waits its turn, as with :meth:`receive_frame`.
        """
        self._pending_frames.append((frame_id, frame, at_utc))
        return self._next_measurement()

    def _next_measurement(self) -> Measurement | None:
        # Frames of the next block are measured while a block is open (Alice sent
        # them ahead, rule 2a), not while a closed block waits for its turn.
        if (
            self.state is LinkState.FAILED
            or self._reported is not None
            or self._measuring is not None
            or self._queued is not None
            or not self._pending_frames
        ):
            return None
        frame_id, frame, at_utc = self._pending_frames.pop(0)
        self._measuring = Measurement(
            frame_id, frame, self.config.physics_at(at_utc), self.quantum, self._detect_key_rng, self._detect_noise_rng
        )
        return self._measuring

    def measured(self, measurement: Measurement, clicks: Clicks) -> list[m.Message]:
        """A frame's measurement ended with ``clicks``: its :class:`DetectionReport` (none if the session
        broke meanwhile, or if it is not this end's measurement)."""
        if measurement is not self._measuring:
            return []
        self._measuring = None
        self._reported = (measurement.frame_id, clicks)
        report = m.DetectionReport(measurement.frame_id, measurement.frame.n_slots, clicks.slots, clicks.bases)
        self._record_out(report)
        return [report]

    def receive(self, msg: m.Message) -> list[m.Message]:
        match msg:
            case m.SiftReply():
                out = self._on_sift(msg)
            case m.Estimate():
                out = self._on_estimate(msg)
            case m.CascadeReply() | m.LdpcSyndromes() | m.LdpcReveal():
                out = self._on_reply(msg)
            case m.Confirm():
                out = self._on_confirm(msg)
            case m.Commit():
                out = self._on_commit(msg)
            case _:
                raise RemoteProtocolError(f"Bob does not accept {type(msg).__name__}")
        return out + self._open_queued() + self._drain_frames()

    def _open_queued(self) -> list[m.Message]:
        """Opens the block that waited once the open one has ended: its TestBits (rule 2a)."""
        if not self._start_queued():
            return []
        return [self._reveal_test_bits()]

    def _reveal_test_bits(self) -> m.TestBits:
        block = self.block
        assert block is not None
        reveal = m.TestBits(block.seq, compress_bytes(block.bases == 1, block.bits))
        self._record_out(reveal)
        return reveal

    def _on_sift(self, msg: m.SiftReply) -> list[m.Message]:
        self._expect_sifting(msg)
        if self._reported is None or self._reported[0] != msg.frame_id:
            raise RemoteProtocolError(f"sift reply for frame {msg.frame_id}, which was not reported")
        frame_id, clicks = self._reported
        if len(msg.basis_match) != len(clicks.slots) or len(msg.classes) != len(clicks.slots):
            raise RemoteProtocolError("sift reply length does not match the detection report")
        if msg.classes.max(initial=0) > 2 or msg.basis_match.max(initial=0) > 1:
            raise RemoteProtocolError("sift reply has invalid classes or flags")
        self._reported = None
        self._record_in(msg)
        classes = msg.classes.astype(np.uint8, copy=False)
        self._add_sifted(*select_kept(msg.basis_match.view(np.uint8), classes, clicks.bases, clicks.bits), clicks.n_slots, len(clicks.slots))
        if self._maybe_close_block(force=msg.close_block):
            return [self._reveal_test_bits()]
        return []

    def _on_estimate(self, msg: m.Estimate) -> list[m.Message]:
        block = self._expect(LinkState.ESTIMATING, msg)
        assert block is not None
        if len(msg.test_errors) != 3 or any(e < 0 or e > c for e, c in zip(msg.test_errors, block.counts(1))):
            raise RemoteProtocolError("test error counts do not fit the test sample")
        self._record_in(msg)
        block.test_errors = tuple(int(e) for e in msg.test_errors)  # type: ignore[assignment]
        if not msg.proceed:
            block.key_length = self._optimistic_key_length(block)
            self._abort(msg.abort_reason or "aborted_by_peer")
            return []
        self._reconciler = make_bob_reconciler(
            self.config.error_correction,
            block.seq,
            compress_bytes(block.key_mask, block.bits),
            block.test_qber,
            self.noise_rng,
            self.config.cascade_max_passes,
            executor=self._decode_executor,
            cascade_lookahead=self.config.cascade_lookahead,
            ldpc_profile=self.config.ldpc_profile,
            defer_decoding=self._defer_decoding,
        )
        self.state = LinkState.RECONCILING
        return self._reconciliation_step(block, self._reconciler.opening())

    def _on_reply(self, msg: m.CascadeReply | m.LdpcSyndromes | m.LdpcReveal) -> list[m.Message]:
        block = self._expect(LinkState.RECONCILING, msg)
        assert block is not None
        if self._reconciler is None or self._reconciler.is_done:
            raise RemoteProtocolError("reconciliation reply after reconciliation finished")
        self._record_in(msg)
        out = self._reconciler.receive(msg)
        if self._reconciler.awaiting_decode:
            return []  # the caller decodes (take_decode_jobs), then calls decoded()
        return self._reconciliation_step(block, out)

    def take_decode_jobs(self) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
        """The LDPC decodes the open block waits for (with ``defer_decoding``), once; [] if none.

        Each is the argument tuple of
        :func:`qcinode.core.ldpc_reconciliation.decode_frame`; run them
        anywhere and hand the results, in order, to :meth:`decoded`.
        """
        reconciler = self._reconciler
        if self.state is not LinkState.RECONCILING or reconciler is None or not reconciler.awaiting_decode:
            return []
        return reconciler.take_jobs()

    def decoded(self, errors: list[np.ndarray | None]) -> list[m.Message]:
        """Results of :meth:`take_decode_jobs`: what Bob sends next, as :meth:`receive` returns it.

        Raises:
            LocalProtocolError: No decodes were taken (the session was reset meanwhile), or the
                results do not match them.
        """
        block = self.block
        reconciler = self._reconciler
        if self.state is not LinkState.RECONCILING or block is None or reconciler is None or not reconciler.decoding:
            raise LocalProtocolError("decode results arrived with no decode outstanding")
        out = self._reconciliation_step(block, reconciler.decoded(errors))
        return out + self._open_queued() + self._drain_frames()

    def _reconciliation_step(self, block: _Block, out: list[m.Message]) -> list[m.Message]:
        """Sends the reconciler's next messages, or ``Reconciled`` once it is done."""
        reconciler = self._reconciler
        assert reconciler is not None
        block.cascade_rounds = reconciler.rounds
        if out or not reconciler.is_done:
            for sent in out:
                self._record_out(sent)
            return out
        self._corrected, _, errors, block.leak_bits, discarded = reconciler.result()
        block.errors_corrected = errors
        seed = bytes(self.key_rng.bytes(32))
        # Every LDPC frame discarded: no key is left to verify, and Alice ends the block when this arrives.
        tag = verification_tag(self._corrected, seed, self.config.verification_tag_bits) if len(self._corrected) else b""
        done = m.Reconciled(block.seq, seed, tag, block.errors_corrected, discarded)
        self._record_out(done)
        return [done]

    def _on_confirm(self, msg: m.Confirm) -> list[m.Message]:
        block = self._expect(LinkState.RECONCILING, msg)
        assert block is not None
        if self._corrected is None:
            raise RemoteProtocolError("confirmation before reconciliation finished")
        if self._confirming is not None:
            # Alice sends a block's Commit before the next block's Confirm (rule 6b): the ends would
            # disagree on which blocks both hold when this one's MAC keys are taken.
            raise RemoteProtocolError(f"Confirm for block {block.seq} while block {self._confirming.seq} awaits its Commit")
        self._record_in(dataclasses.replace(msg, auth_tag=b""))
        corrected, self._corrected, self._reconciler = self._corrected, None, None
        if not msg.accepted:
            block.key_length = self._key_length(block, block.leak_bits)
            self._abort(msg.reason or "rejected_by_peer")
            return []
        if not self._take_mac_keys(block):
            return self._reject(block, "authentication_keys_exhausted")
        try:
            block.transcript.verify(block.mac_keys[0], msg.auth_tag)
        except AuthenticationFailed:
            return self._reject(block, "authentication_failed")
        block.key_length = self._key_length(block, block.leak_bits)
        n = len(corrected)
        length = min(block.key_length.length_bits, n) // 8 * 8
        if msg.key_bits != length or msg.leak_bits != block.leak_bits:
            return self._reject(block, "key_length_mismatch")
        if len(msg.pa_seed) != (n + length - 1 + 7) // 8:
            return self._reject(block, "bad_amplification_seed")
        block.unhashed = (corrected, msg.pa_seed, length)  # hashed ahead or on Alice's Commit (rule 6a)
        unsigned = m.Verdict(block.seq, True, "")
        self._record_out(unsigned)
        tag = block.transcript.tag(block.mac_keys[1])
        # Bob's decision is made: the block awaits Alice's Commit aside, and the next one opens (rule 6b).
        self._confirming, self.block = block, None
        self.state = LinkState.QUANTUM
        return [dataclasses.replace(unsigned, auth_tag=tag)]

    def _reject(self, block: _Block, reason: str) -> list[m.Message]:
        verdict = m.Verdict(block.seq, False, reason)
        self._record_out(verdict)
        self._abort(reason)
        return [verdict]

    def _on_commit(self, msg: m.Commit) -> list[m.Message]:
        self._expect_sifting(msg)  # any state of a live session: the next block may be open (rule 6b)
        block = self._confirming
        if block is None:
            raise RemoteProtocolError(f"Commit for block {msg.block_seq}, and no block awaits one")
        if msg.block_seq != block.seq:
            raise RemoteProtocolError(f"Commit for block {msg.block_seq}, block {block.seq} awaits one")
        self._record_in(dataclasses.replace(msg, auth_tag=b""))
        try:
            block.transcript.verify(block.mac_keys[2], msg.auth_tag)
        except AuthenticationFailed:
            # Alice's decision is unknown: the block stays pending until the
            # ends compare the blocks they hold (Hello on reconnection).
            self.state = LinkState.FAILED
            raise RemoteProtocolError("commit failed authentication") from None
        self._confirming = None
        if msg.accepted:
            self._accepted(block)
        else:
            self._aborted(block, "authentication_failed_at_peer")
        return []

    def settle_pending(self, accepted: bool) -> list[BlockEvent]:
        """After a broken session: accept or drop the block held pending Alice's Commit.

        The link worker calls this once the ends have compared the blocks they
        hold (``accepted`` is whether Alice holds it).
        """
        block, self._confirming = self._confirming, None
        if block is None:
            return []
        if accepted:
            self._accepted(block)
        else:
            self._aborted(block, "commit_lost")
        return self.take_events()

    @property
    def pending_block_seq(self) -> int | None:
        """The block Bob holds pending Alice's Commit, if any."""
        return self._confirming.seq if self._confirming is not None else None


def _hashed(block: _Block) -> bytes:
    """The block's secret key: privacy amplification's hash, computed now if it was not ahead (rule 6a)."""
    if block.unhashed is not None:
        block.secret = _amplify(*block.unhashed)
        block.unhashed = None
    return block.secret


def _amplify(key: np.ndarray, seed: bytes, length_bits: int) -> bytes:
    n = len(key)
    seed_bits = unpack_bits(seed, n + length_bits - 1)
    out = toeplitz_hash(key, seed_bits, length_bits)
    return bytes(np.packbits(out).tobytes())
