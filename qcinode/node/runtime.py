"""Per-link state a node keeps across sessions: pool, MAC-key reserve, counters.

This is plain bookkeeping: the link workers feed it block events, the status
service reads it, and :meth:`LinkRuntime.persist` writes it through to the
node's link store. A save that fails (full or unwritable disk) leaves the
disk as it was and memory ahead of it; nothing that depends on the unsaved
state may leave the node, so the link shows state ``storage_failed`` until a
save succeeds, and the link workers end the session and retry.

Saving off the event loop (:meth:`LinkRuntime.persist_async`), rules:
    * The state is *snapshotted on the event loop*, the only thread that
      changes the pool and the counters, and numbered; the encrypted,
      fsync'ed write runs in the node's storage thread.
    * Writes are monotone: a writer takes the newest snapshot waiting, and a
      snapshot older than what is on disk is never written (a newer state
      holds every used range and MAC key of an older one). Saves asked for
      while a write runs share the next write (group commit), and a caller
      returns only once a snapshot at least as new as its own is on disk.
    * A protocol step runs in the node's protocol runner on a copy of the
      MAC-key reserve; the runtime's reserve changes only when the step's
      outcome is back on the event loop (:mod:`qcinode.node.protocol_worker`),
      so a snapshot never holds half a step. :attr:`LinkRuntime.step_lock`
      keeps a link's reserve-taking steps and a reconnection Hello (which
      reads and changes the reserve on the event loop) one at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core import physics
from ..core.aborts import AbortReason, abort_reason
from ..core.authentication import AUTH_BLOB_PREFIX, AuthKeyReserve
from ..core.channel import FibreChannel, Idle, QuantumChannelModel
from ..core.clock import NetworkClock
from ..core.estimation import h2
from ..core.orbit import format_utc
from ..core.pipeline import BlockAborted, BlockAccepted, BlockEvent, LinkProtocolConfig
from ..core.pipeline import LinkState as Phase
from ..core.pool import LinkKeyPool
from ..core.roles import Role
from ..errors import StorageFailure
from ..keys.linkstore import LinkSave, LinkStore
from ..space import downlink_channel
from ..status import BLOCK_STAGES, BlockDigest, ChannelStatus, LedgerEntry, LinkState, LinkStatus
from ..topology import EavesdropperConfig, LinkConfig, Topology

#: Wall-clock seconds over which the "current" key rate and emulation speed are measured.
RATE_WINDOW_S = 60.0
#: How many abort reasons a link remembers for ``qcinode status`` (the newest last).
RECENT_ABORTS = 5


_STAGE_OF = dict(zip((Phase.ESTIMATING, Phase.RECONCILING, Phase.CONFIRMING), BLOCK_STAGES, strict=True))


class StageClock:
    """Wall time the accepted blocks spent in each post-processing stage, at the transmitting end.

    A block's stages follow its session's state after each step: *estimation*
    from the block's close (or, when it waited behind the one before, from
    that one's end) until Alice has Bob's test bits and sends her estimate;
    *reconciliation* from then until she has his ``Reconciled`` and sends her
    ``Confirm``; *confirmation* from then until she accepts the block (his
    verdict, her privacy amplification, her ``Commit``). Only blocks that end
    accepted are counted; a block that aborts counts for nothing.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(BLOCK_STAGES, 0.0)
        self.blocks = 0
        self._started: dict[str, float] = {}  # the open block's stages so far: when each began

    def step(self, state: Phase, events: Sequence[BlockEvent], now: float) -> None:
        """After a step: the block events it ended with, then the session's state (its open block's)."""
        for event in events:
            started = self._started
            if isinstance(event, BlockAccepted) and len(started) == len(BLOCK_STAGES):
                ends = [started[stage] for stage in BLOCK_STAGES[1:]] + [now]
                for stage, end in zip(BLOCK_STAGES, ends, strict=True):
                    self.seconds[stage] += end - started[stage]
                self.blocks += 1
            self._started = {}
        now_in = _STAGE_OF.get(state)
        if now_in is None:
            self._started = {}
        elif now_in not in self._started and (now_in == BLOCK_STAGES[0] or self._started):
            self._started[now_in] = now


class RecentRates:
    """What a link did over the last minute of wall time: its current key rate and emulation speed.

    Lifetime averages hide what a link does now (under an attack that freezes
    the pool, the average stays high for hours). This keeps two short
    histories:

    * one entry per finished block (done or aborted): wall time, the
      block's pulses and its secret bits. The current key rate is the secret
      bits of the blocks that ended in the last minute over their emulated
      seconds (pulses / rate); if none ended, the last block's.
    * samples of the pulses in frames this end sent or received, at most
      one per :attr:`SAMPLE_EVERY_S`: the emulated seconds per wall second
      since the sample just before the window, or since the session started
      (a session that just began after a partition is not "behind").
    """

    SAMPLE_EVERY_S = 0.5

    def __init__(self, rate_hz: float, window_s: float = RATE_WINDOW_S) -> None:
        self.rate_hz = rate_hz
        self.window_s = window_s
        self.blocks: deque[tuple[float, int, int, bool]] = deque(maxlen=1024)
        self.frames: deque[tuple[float, int]] = deque()
        self.frame_pulses = 0

    def block(self, pulses: int, secret_bits: int, *, aborted: bool = False, now: float | None = None) -> None:
        self.blocks.append((time.monotonic() if now is None else now, pulses, secret_bits, aborted))

    def frame(self, n_slots: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.frame_pulses += n_slots
        if not self.frames or now - self.frames[-1][0] >= self.SAMPLE_EVERY_S:
            self.frames.append((now, self.frame_pulses))
        self._prune(now)

    def session_started(self, now: float | None = None) -> None:
        """Restarts the emulation-speed window: time spent disconnected is not lag."""
        self.frames.clear()
        self.frames.append((time.monotonic() if now is None else now, self.frame_pulses))

    def _prune(self, now: float) -> None:
        # Keep one sample at or before the window's start: the window is then a full minute.
        while len(self.frames) > 1 and self.frames[1][0] <= now - self.window_s:
            self.frames.popleft()

    def key_rate_bps(self, now: float | None = None) -> float:
        """Secret bits per emulated second of the blocks that ended in the last window (else of the last block)."""
        now = time.monotonic() if now is None else now
        recent = [block for block in self.blocks if block[0] >= now - self.window_s] or list(self.blocks)[-1:]
        pulses = sum(block[1] for block in recent)
        return sum(block[2] for block in recent) * self.rate_hz / pulses if pulses else 0.0

    def aborted(self, now: float | None = None) -> int:
        """Blocks aborted in the last window."""
        now = time.monotonic() if now is None else now
        return sum(1 for t, _, _, aborted in self.blocks if aborted and t >= now - self.window_s)

    def emulation_rate(self, now: float | None = None) -> tuple[float, float]:
        """(emulated seconds per wall second, wall seconds covered) since the window's first sample."""
        now = time.monotonic() if now is None else now
        self._prune(now)
        if not self.frames:
            return 0.0, 0.0
        start, pulses = self.frames[0]
        covered = now - start
        if covered <= 0:
            return 0.0, 0.0
        return (self.frame_pulses - pulses) / self.rate_hz / covered, min(covered, self.window_s)


@dataclasses.dataclass(frozen=True, slots=True)
class _Snapshot:
    """A link's state at one moment on the event loop, numbered in the order taken."""

    number: int
    state: dict[str, Any]
    blob_names: frozenset[str]
    blobs: dict[str, bytes]  # the parts not on disk when it was taken

    def blob(self, name: str) -> bytes:
        try:
            return self.blobs[name]
        except KeyError:  # on disk when the snapshot was taken, so never asked for
            raise StorageFailure(f"link state part {name} was not captured", path=Path("."), reason="internal: part not captured") from None


async def finish_in_thread(future: asyncio.Future[Any]) -> Any:
    """Awaits work running in another thread (or process); if the caller is cancelled, still waits for that work to end first.

    Whatever the work touches or decides (a link's state, the outcome of a
    protocol step) must be settled before the caller's clean-up runs.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            # Nobody waits for its outcome any more (the caller was cancelled; shield lets go of the work once
            # its caller is): a failure here is the expected end of it (the node stops), not something to report.
            future.exception()
        raise


def link_physics(link: LinkConfig) -> physics.LinkPhysics:
    """The physical model of a topology link, with its configured eavesdropper."""
    src, det = link.source, link.detector
    honest = physics.LinkPhysics(
        intensities=(src.intensities.signal, src.intensities.decoy, src.intensities.vacuum),
        class_probabilities=(src.probabilities.signal, src.probabilities.decoy, src.probabilities.vacuum),
        z_basis_probability=src.basis_probabilities.z,
        fibre_transmittance=link.fibre_transmittance,
        detector_efficiency=det.efficiency,
        dark_count_probability=det.dark_count_probability,
        misalignment_error=det.misalignment_error,
    )
    return with_eavesdropper(honest, link.eavesdropper)


def with_eavesdropper(phys: physics.LinkPhysics, eve: EavesdropperConfig | None) -> physics.LinkPhysics:
    """The same link with ``eve`` (None or attack "none": no attacker) acting on its pulses."""
    attack = "none" if eve is None else eve.attack
    fraction = eve.fraction if eve is not None else 0.0
    return dataclasses.replace(
        phys,
        intercept_resend_fraction=fraction if attack == "intercept-resend" else 0.0,
        photon_number_splitting=attack == "photon-number-splitting",
    )


def link_channel(topology: Topology, link: LinkConfig) -> QuantumChannelModel | None:
    """The quantum channel of a free-space link over time (None for a fibre, whose channel is fixed)."""
    if link.free_space is None:
        return None
    return downlink_channel(topology, link)


def protocol_config(link: LinkConfig, channel: QuantumChannelModel | None = None) -> LinkProtocolConfig:
    """What both ends of ``link`` agree on; ``channel`` for a link whose channel changes with time."""
    pp = link.postprocessing
    return LinkProtocolConfig(
        link_id=link.link_id,
        physics=link_physics(link),
        block_bits=pp.block_bits,
        security_epsilon=pp.security_epsilon,
        verification_tag_bits=pp.verification_tag_bits,
        cascade_max_passes=pp.cascade_max_passes,
        cascade_lookahead=pp.cascade_lookahead,
        no_decoy_bound=link.source.no_decoy_bound,
        channel=channel,
        finite_key=pp.finite_key,
        error_correction=pp.error_correction,
        ldpc_profile=pp.ldpc_profile,
    )


def expected_key_bits_per_slot(phys: physics.LinkPhysics) -> float:
    """Sifted key-basis bits per pulse slot, from the closed-form gains."""
    gain = sum(p * physics.expected_gain(phys, cls) for cls, p in enumerate(phys.class_probabilities))
    return gain * phys.z_basis_probability**2


@dataclasses.dataclass(slots=True)
class LinkCounters:
    pulses_sent: int = 0
    detections: int = 0
    sifted_bits: int = 0
    qber: float = 0.0
    ec_key_bits: int = 0
    ec_leak_bits: int = 0
    ec_ideal_bits: float = 0.0
    secret_bits: int = 0
    blocks_done: int = 0
    blocks_aborted: int = 0
    cascade_rounds: int = 0
    aborts_by_reason: Counter[AbortReason] = dataclasses.field(default_factory=Counter)

    @property
    def ec_efficiency(self) -> float:
        return self.ec_leak_bits / self.ec_ideal_bits if self.ec_ideal_bits > 0 else 0.0


#: glibc's mallopt parameters (malloc.h) and the values a link's process runs with.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's mallopt parameter for the number of malloc arenas (the protocol process runs with one).
M_ARENA_MAX = -8
_LINK_MALLOPT = {_M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 512 << 20, _M_TOP_PAD: 64 << 20}

#: Blocks at least this large get the allocator tuning; smaller ones keep glibc's defaults.
TUNE_ALLOCATOR_FROM_BLOCK_BITS = 200_000


def tune_allocator_for_links(block_bits: int) -> bool:
    """Keeps freed block-sized arrays in the process instead of returning them to the kernel, for large blocks.

    A 10^6-bit block allocates and frees a few hundred MB of arrays (frames,
    sifted data, Cascade's tables); by default glibc maps each array above
    its mmap threshold fresh and unmaps it when freed, so every block pays
    the kernel for page faults on zeroed memory again (half the CPU time of
    a busy link's process, most of it system time). Serving arrays up to
    32 MB from the heap and trimming it only past 512 MB reuses the same
    pages block after block; peak RSS does not change.

    Below :data:`TUNE_ALLOCATOR_FROM_BLOCK_BITS` a block's arrays are a few
    MB at most and the page faults cost little, while a heap that is never
    trimmed keeps the high-water mark of every block, and of every other
    burst, resident: a hundred small nodes on one machine pay for that in
    memory, so they keep glibc's defaults.

    Called for each link a node gets; tunes the process once, the first
    time a link's blocks are large enough. A no-op, returning False, without
    glibc or for small blocks.
    """
    if block_bits < TUNE_ALLOCATOR_FROM_BLOCK_BITS:
        return False
    return _tune_allocator()


@functools.cache
def _tune_allocator() -> bool:
    return set_malloc_options(_LINK_MALLOPT)


def set_malloc_options(options: dict[int, int]) -> bool:
    """glibc: ``mallopt(param, value)`` for each of ``options``; whether every one took (False without glibc).

    The C library is already loaded: its symbols are the process's own
    (``CDLL(None)``), found at once, without ``find_library``'s ldconfig
    subprocess.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in options.items())


class LinkRuntime:
    """One link as seen by one node."""

    def __init__(
        self,
        link: LinkConfig,
        local_node: str,
        bootstrap_key: bytes,
        store: LinkStore | None = None,
        *,
        channel: QuantumChannelModel | None = None,
        clock: NetworkClock | None = None,
    ) -> None:
        """One end of ``link``.

        Args:
            channel: The link's quantum channel over time (a free-space
                downlink); None for a fibre, whose channel never changes.
            clock: The network clock (None at speed max).
        """
        tune_allocator_for_links(link.postprocessing.block_bits)
        self.link = link
        self.role = Role.ALICE if link.alice == local_node else Role.BOB
        self.peer = link.bob if self.role is Role.ALICE else link.alice
        self.config = protocol_config(link, channel)
        #: What plans the frames: the time-varying channel, or the fibre's constant one.
        self.channel: QuantumChannelModel = channel if channel is not None else FibreChannel(link.fibre_transmittance)
        self.clock = clock
        #: The transmitter's emulated position (UTC) and how far it lags the clock.
        self.link_utc: float | None = None
        self.lag_s = 0.0
        #: Set while the channel carries nothing (between passes).
        self.channel_idle: Idle | None = None
        self.pool = LinkKeyPool(link.link_id, self.role)
        self.auth = AuthKeyReserve(bootstrap_key)
        self.counters = LinkCounters()
        self.recent = RecentRates(link.source.rate_hz)
        #: Where the accepted blocks' post-processing time went (Alice's end).
        self.stages = StageClock()
        #: Reasons of the last aborted blocks, oldest first (for ``qcinode status``).
        self.recent_aborts: deque[str] = deque(maxlen=RECENT_ABORTS)
        self._state = LinkState.CONNECTING
        #: Why the last save failed (None once a save succeeds): the link is then "storage_failed".
        self.storage_failure: str | None = None
        self.next_block_seq = 0
        self.next_frame_id = 0
        self.started_monotonic = time.monotonic()
        self.pending_bob: Any = None  # a RemoteLink of Bob's holding a block pending Alice's Commit
        self.alice_session: Any = None  # the running RemoteLink of Alice's, whose pulses an eavesdropper acts on
        self.eavesdropper: EavesdropperConfig | None = link.eavesdropper
        self.store = store
        # Saving (module docstring): the newest snapshot waiting, what is on disk, the reserve before a step.
        self._write_lock = threading.Lock()  # one write at a time
        self._state_lock = threading.Lock()  # the bookkeeping below, held for microseconds
        self._snapshots = 0
        self._waiting: _Snapshot | None = None
        self._written = 0
        self._blobs_written: frozenset[str] = frozenset()
        #: Held around a protocol step that takes a copy of the MAC-key reserve and brings it back
        #: changed, and around a Hello exchange: one at a time, else a step's reserve, adopted when it
        #: ends, would undo what the exchange changed meanwhile.
        self.step_lock = asyncio.Lock()
        if store is not None:
            saved = store.load(self.link_id)
            if saved is not None:
                self._restore(saved, store.load_blobs(self.link_id))

    def _restore(self, saved: dict[str, Any], blobs: dict[str, bytes]) -> None:
        auth_blobs = {name: data for name, data in blobs.items() if name.startswith(AUTH_BLOB_PREFIX)}
        pool_blobs = {name: data for name, data in blobs.items() if not name.startswith(AUTH_BLOB_PREFIX)}
        self.pool = LinkKeyPool.from_state(saved["pool"], pool_blobs)
        self.auth = AuthKeyReserve.from_state(saved["auth"], auth_blobs)
        self.next_block_seq = int(saved["next_block_seq"])
        self.next_frame_id = int(saved["next_frame_id"])
        counters = dict(saved.get("counters", {}))
        # Saved by this version: reason codes; by an older one: reason texts. Both classify.
        reasons: Counter[AbortReason] = Counter()
        for reason, count in dict(counters.pop("aborts_by_reason", {})).items():
            reasons[abort_reason(str(reason))] += int(count)
        known = {f.name for f in dataclasses.fields(LinkCounters)}
        self.counters = LinkCounters(**{k: v for k, v in counters.items() if k in known}, aborts_by_reason=reasons)

    def set_eavesdropper(self, eve: EavesdropperConfig | None) -> None:
        """Switches the attacker on this link's quantum channel, from the next frame on."""
        self.eavesdropper = None if eve is None or eve.attack == "none" else eve
        self.config = dataclasses.replace(self.config, physics=with_eavesdropper(self.config.physics, self.eavesdropper))
        if self.alice_session is not None:
            self.alice_session.config = self.config

    @property
    def state(self) -> LinkState:
        """``connecting``, ``up`` or ``down`` as the link workers set it; ``storage_failed`` while saves fail.

        A link whose state cannot be saved is not ``up`` for routing either:
        no relay hop can be sent over it.
        """
        return LinkState.STORAGE_FAILED if self.storage_failure is not None else self._state

    @state.setter
    def state(self, value: LinkState) -> None:
        value = LinkState(value)
        if value is LinkState.UP and self._state is not LinkState.UP:
            self.recent.session_started()
        self._state = value

    def note_frame(self, n_slots: int) -> None:
        """A pulse frame of ``n_slots`` was sent (Alice) or received (Bob): emulated time moved on."""
        self.recent.frame(n_slots)

    def persist(self) -> None:
        """Writes the link's state through, before anything that depends on it leaves the node.

        The rule that keeps the two ends consistent across crashes: a used
        MAC key, an accepted block or a resynchronisation is on disk before
        the message that reveals it is sent. Call it on the event loop; it
        blocks until the write is done (:meth:`persist_async` does not).

        Raises:
            StorageFailure: The state is not on disk (full or unwritable data
                directory); the disk holds the last saved state. Send nothing
                that depends on the unsaved state. ``storage_failure`` says
                why until a later save succeeds.
        """
        if self.store is None:
            return
        self._write_through(self._snapshot())

    async def persist_async(self, executor: concurrent.futures.Executor | None) -> None:
        """:meth:`persist`, with the write in ``executor`` (None: here): the event loop goes on meanwhile.

        Returns once this moment's state (or a newer one) is on disk; a
        cancelled caller still waits for the write it started (module docstring).

        Raises:
            StorageFailure: As :meth:`persist`.
        """
        if self.store is None:
            return
        snapshot = self._snapshot()
        if executor is None:
            self._write_through(snapshot)
            return
        future = asyncio.get_running_loop().run_in_executor(executor, self._write_through, snapshot)
        await finish_in_thread(future)

    def _snapshot(self) -> _Snapshot:
        """The state now, numbered, as the newest waiting to be written (on the event loop)."""
        counters = dataclasses.asdict(self.counters)
        counters["aborts_by_reason"] = {reason.value: n for reason, n in self.counters.aborts_by_reason.items()}
        auth = self.auth
        self._snapshots += 1
        # The pool's key halves and closed blocks, and the MAC-key reserve's chunks, never change:
        # each is written once, so only those not yet on disk are read now (the write may come
        # after the pool or the reserve dropped one). The reserve's names all start "auth/".
        pool_names = self.pool.blob_names()
        auth_names = auth.blob_names()
        names = pool_names | auth_names
        with self._state_lock:
            new = names - self._blobs_written
        snapshot = _Snapshot(
            blob_names=frozenset(names),
            blobs={name: auth.blob(name) if name in auth_names else self.pool.blob(name) for name in new},
            number=self._snapshots,
            state={
                "pool": self.pool.to_state(inline=False),
                "auth": auth.to_state(inline=False),
                "next_block_seq": self.next_block_seq,
                "next_frame_id": self.next_frame_id,
                "counters": counters,
            },
        )
        with self._state_lock:
            self._waiting = snapshot
        return snapshot

    def _write_through(self, mine: _Snapshot) -> None:
        """Makes sure ``mine`` or a newer snapshot is on disk (any thread; writes are serialised)."""
        _write_together([(self, mine)])

    def _newest_to_write(self, mine: _Snapshot) -> _Snapshot | None:
        """With ``_write_lock`` held: the snapshot to write for ``mine``, or None if one as new is on disk."""
        with self._state_lock:
            if self._written >= mine.number:
                return None  # a write after ours already carried it
            waiting = self._waiting
            return waiting if waiting is not None and waiting.number >= mine.number else mine

    def _written_through(self, newest: _Snapshot) -> None:
        """With ``_write_lock`` held: ``newest`` is on disk."""
        with self._state_lock:
            self._written = newest.number
            self._blobs_written = newest.blob_names
            if self._waiting is newest:
                self._waiting = None
        self.storage_failure = None

    def try_persist(self) -> bool:
        """:meth:`persist` for cleanup paths: False instead of StorageFailure (the store reports it)."""
        try:
            self.persist()
        except StorageFailure:
            return False
        return True

    @property
    def link_id(self) -> str:
        return self.link.link_id

    @property
    def emulated_s(self) -> float:
        return self.counters.pulses_sent / self.link.source.rate_hz

    def record(self, events: list[BlockEvent]) -> list[BlockEvent]:
        """Accepted blocks go into the pool; every block updates the counters."""
        c = self.counters
        for event in events:
            stats = event.stats
            c.pulses_sent += stats.pulses
            c.detections += stats.detections
            c.sifted_bits += stats.sifted_bits
            c.cascade_rounds += stats.cascade_rounds
            if stats.leak_bits and stats.key_bits:
                c.qber = stats.qber
                c.ec_key_bits += stats.key_bits
                c.ec_leak_bits += stats.leak_bits
                c.ec_ideal_bits += stats.key_bits * h2(stats.qber)
            elif stats.test_bits:
                c.qber = stats.test_qber
            if isinstance(event, BlockAccepted):
                c.blocks_done += 1
                c.secret_bits += 8 * len(event.key)
                if event.key:
                    self.pool.add_block(event.block_id, event.key)
                self.recent.block(stats.pulses, 8 * len(event.key))
            elif isinstance(event, BlockAborted):
                c.blocks_aborted += 1
                c.aborts_by_reason[abort_reason(event.reason)] += 1  # the closed vocabulary: bounded labels
                self.recent_aborts.append(event.reason)  # the reason's own words, for people
                self.recent.block(stats.pulses, 0, aborted=True)
        return events

    def _channel_status(self) -> ChannelStatus | None:
        """The clock and, for a free-space link, the channel now: in a pass or not, and why (None: no clock)."""
        if self.clock is None:
            return None
        now = self.clock.now(time.time())
        out: dict[str, Any] = {}
        if self.role is Role.ALICE:
            out["lag_s"] = float(self.lag_s)
            if self.link_utc is not None:
                out["emulated_utc"] = format_utc(self.link_utc)
        if self.config.channel is not None:
            conditions = self.channel.conditions(now)
            out.update(in_pass=bool(conditions.transmitting), note=conditions.note)
            if math.isfinite(conditions.loss_db):
                out["loss_db"] = float(conditions.loss_db)
            for name, value in conditions.details.items():
                if name in _CHANNEL_DETAILS:
                    out[name] = value if isinstance(value, str) else float(value)
            if not conditions.transmitting and math.isfinite(conditions.until_utc):
                out["next_pass_utc"] = format_utc(conditions.until_utc)
                out["next_pass_in_s"] = float(conditions.until_utc - now)
            elif conditions.transmitting and math.isfinite(conditions.until_utc):
                out["pass_ends_utc"] = format_utc(conditions.until_utc)
        return ChannelStatus(**out) if out else None

    def held_block_seqs(self) -> list[int]:
        seqs = [int(block_id.rsplit("/", 1)[1]) for block_id in self.pool.block_ids]
        if self.pending_bob is not None and self.pending_bob.pending_block_seq is not None:
            seqs.append(int(self.pending_bob.pending_block_seq))
        return sorted(seqs)

    def status(self, include_digests: bool = False, include_ledger: bool = False) -> LinkStatus:
        """This end of the link now (the node adds its fault).

        Args:
            include_digests: Each pool block's SHA-256 (test-only comparisons of the ends).
            include_ledger: Every used range of the pool (the ledger audit).
        """
        c = self.counters
        emulated = self.emulated_s
        emulation_rate, window_s = self.recent.emulation_rate()
        return LinkStatus(
            link_id=self.link_id,
            peer=self.peer,
            role=self.role,
            state=self.state,
            pulses_sent=c.pulses_sent,
            detections=c.detections,
            sifted_bits=c.sifted_bits,
            qber=float(c.qber),
            ec_leak_bits=c.ec_leak_bits,
            ec_efficiency=float(c.ec_efficiency),
            secret_bits=c.secret_bits,
            blocks_done=c.blocks_done,
            blocks_aborted=c.blocks_aborted,
            pool_bits=8 * self.pool.total_available_bytes,
            emulated_s=float(emulated),
            secret_key_rate_bps=c.secret_bits / emulated if emulated > 0 else 0.0,
            auth_keys_available=self.auth.available_keys,
            aborts_by_reason=dict(c.aborts_by_reason),
            blocks=tuple(BlockDigest(b, self.pool.block_digest(b)) for b in self.pool.block_ids) if include_digests else None,
            cascade_rounds_per_block=c.cascade_rounds / max(1, c.blocks_done + c.blocks_aborted),
            block_stage_seconds=dict(self.stages.seconds),
            block_stage_blocks=self.stages.blocks,
            ec_key_bits=c.ec_key_bits,
            eavesdropper=f"{self.eavesdropper.attack} {self.eavesdropper.fraction:g}" if self.eavesdropper else "",
            current_key_rate_bps=float(self.recent.key_rate_bps()),
            emulation_rate=float(emulation_rate),
            emulation_window_s=float(window_s),
            recent_aborts=tuple(self.recent_aborts),
            aborted_last_minute=self.recent.aborted(),
            channel=self._channel_status(),
            ledger=(
                tuple(LedgerEntry(e.block_id, e.offset_bytes, e.length_bytes, e.initiator) for e in self.pool.audit()) if include_ledger else None
            ),
            ledger_folded_through=self.pool.folded.watermark_seq + 1 if include_ledger else None,
        )


#: The figures of a channel's conditions that status reports (admin.proto ChannelStatus).
_CHANNEL_DETAILS = ("elevation_deg", "azimuth_deg", "range_km", "sky", "sun_elevation_deg")


def next_frame_slots(
    config: LinkProtocolConfig, rate_hz: float, speed: float | None, key_bits_needed: int, at_utc: float | None = None
) -> int:
    """Slots for the next frame: no more than the block still needs (+5 %), so blocks stay near ``block_bits``.

    ``at_utc``: where the link stands, for a channel whose loss changes with time.
    """
    per_slot = max(expected_key_bits_per_slot(config.physics_at(at_utc)), 1e-15)
    just_enough = int(key_bits_needed * 1.05 / per_slot) + 1_000
    return min(frame_slots(config, rate_hz, speed, per_slot), just_enough)


#: Longest wall time one pulse frame stands for on a channel whose loss changes with
#: time (a satellite pass): each frame is emulated at one instant's loss and background.
FRAME_WALL_S = 1.0
#: Longest wall time one pulse frame stands for on a fixed channel (fibre). Each frame
#: costs both ends a fixed amount of work (a message, two protocol steps, an
#: acknowledgement, the link-state saves its MAC keys need) whatever its size, so on a
#: slow link — whose 10⁵-bit block takes minutes — short frames are pure overhead: a
#: quarter second made a slow link cost as much CPU as a fast one; 1 s cost an idle
#: 9-node grid at 100 kHz 1.55 % of a core per node, 5 s 0.84–1.05 %. Key still grows in
#: steps of at most this much wall time.
FIXED_CHANNEL_FRAME_WALL_S = 5.0


def frame_slots(config: LinkProtocolConfig, rate_hz: float, speed: float | None, per_slot: float | None = None) -> int:
    """Pulse slots per frame: about a quarter block, and at most :data:`FIXED_CHANNEL_FRAME_WALL_S` of wall time
    (:data:`FRAME_WALL_S` on a channel that changes with time).

    ``speed`` None means "max"; ``per_slot`` is the expected key bits per slot
    (default: from the link's fixed physics).
    """
    if per_slot is None:
        per_slot = max(expected_key_bits_per_slot(config.physics), 1e-15)
    quarter_block = config.block_bits / 4 / per_slot
    wall_s = FIXED_CHANNEL_FRAME_WALL_S if config.channel is None else FRAME_WALL_S
    slots = quarter_block if speed is None else min(quarter_block, rate_hz * wall_s * speed)
    return int(np.clip(slots, 1_000, 1 << 40))


async def persist_together(runtimes: Sequence[LinkRuntime], executor: concurrent.futures.Executor | None) -> None:
    """:meth:`LinkRuntime.persist_async` of several links of one node, in ONE transaction (one fsync).

    A relay hop through this node uses pad of the link it came in on and of
    the link it goes out on; both ledgers are written together. Each link's
    snapshot is taken now, on the event loop; the rules of the module
    docstring hold per link (a newer snapshot already on disk is not written
    again, group commit with saves asked for meanwhile).

    Raises:
        StorageFailure: As :meth:`LinkRuntime.persist`; no link's state changed,
            and each of them records the failure.
    """
    pairs = [(rt, rt._snapshot()) for rt in _distinct(runtimes) if rt.store is not None]
    if not pairs:
        return
    if executor is None:
        _write_together(pairs)
        return
    future = asyncio.get_running_loop().run_in_executor(executor, _write_together, pairs)
    await finish_in_thread(future)


def _distinct(runtimes: Sequence[LinkRuntime]) -> list[LinkRuntime]:
    out: list[LinkRuntime] = []
    for rt in runtimes:
        if all(rt is not seen for seen in out):
            out.append(rt)
    return out


def _write_together(pairs: Sequence[tuple[LinkRuntime, _Snapshot]]) -> None:
    """Writes each link's snapshot (or a newer one) not yet on disk, in one transaction per store (any thread).

    One link or several, the write is one :meth:`LinkStore.save_many`, which
    writes only the rows that changed since the link's last write (each open
    block's ledger is a row of its own). The links' write locks are taken in
    link-ID order, so two writers of overlapping sets never wait for each
    other in a circle.
    """
    ordered = sorted(pairs, key=lambda pair: pair[0].link_id)
    with contextlib.ExitStack() as locks:
        for rt, _ in ordered:
            locks.enter_context(rt._write_lock)  # held through the write; the event loop never waits for it
        by_store: dict[int, tuple[LinkStore, list[tuple[LinkRuntime, _Snapshot]]]] = {}
        for rt, mine in ordered:
            newest = rt._newest_to_write(mine)
            store = rt.store
            if newest is None or store is None:
                continue
            by_store.setdefault(id(store), (store, []))[1].append((rt, newest))
        for store, writes in by_store.values():
            try:
                store.save_many([LinkSave(rt.link_id, snap.state, snap.blob_names, snap.blob) for rt, snap in writes])
            except StorageFailure as exc:
                for rt, _ in writes:
                    rt.storage_failure = exc.reason
                raise
            for rt, snap in writes:
                rt._written_through(snap)
