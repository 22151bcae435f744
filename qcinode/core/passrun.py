"""One link run over emulated time in-process, recorded frame by frame (pure).

Theory of operation:
    * :func:`run_pass` builds a seeded pair exactly as
      :func:`qcinode.core.pair.make_pair` does and runs it through
      :func:`qcinode.core.pair.pump_timeline`: the whole protocol stack
      (source, channel, detector, sifting, estimation, Cascade,
      verification, privacy amplification, authentication), frames following
      the channel's windows.
    * **Observation only.** Alice's end is an :class:`AliceLink` that also
      writes down, for every frame, what already crosses the classical
      channel: the detection report (how many slots clicked, in which basis)
      and her sifting reply (which of them match). Nothing the protocol
      decides depends on the record.
    * A frame is stamped with its emulated span and the channel's
      conditions at its midpoint (the instant it was sampled at), so rates
      and losses can be put against time, range or elevation.
    * A block is stamped with the end of the frame that closed it: the
      instant its key (if any) exists at both ends, post-processing taking
      no emulated time here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import LocalProtocolError
from . import messages as m
from .authentication import AuthKeyReserve
from .channel import ChannelConditions
from .pair import pump_timeline
from .physics import PhotonFrame
from .pipeline import AliceLink, BlockAccepted, BlockEvent, BobLink, LinkProtocolConfig

__all__ = ["BlockRecord", "FrameRecord", "PassRun", "RecordingAlice", "run_pass"]


@dataclasses.dataclass(frozen=True, slots=True)
class FrameRecord:
    """What one frame did.

    Attributes:
        start_utc: Emulated instant of its first slot.
        end_utc: Just after its last slot.
        n_slots: Pulses sent.
        detections: Slots in which Bob's receiver clicked.
        sifted_bits: Detections whose bases matched (both bases).
        key_bits: Sifted detections in the key (Z) basis.
        conditions: The channel at the frame's midpoint.
    """

    start_utc: float
    end_utc: float
    n_slots: int
    detections: int
    sifted_bits: int
    key_bits: int
    conditions: ChannelConditions

    @property
    def duration_s(self) -> float:
        return self.end_utc - self.start_utc

    @property
    def at_utc(self) -> float:
        """The frame's midpoint, where its channel was sampled."""
        return 0.5 * (self.start_utc + self.end_utc)


@dataclasses.dataclass(frozen=True, slots=True)
class BlockRecord:
    """A finished block at Alice and when its data ended (the end of the frame that closed it)."""

    event: BlockEvent
    closed_utc: float

    @property
    def secret_bits(self) -> int:
        return self.event.stats.secret_bits if isinstance(self.event, BlockAccepted) else 0


class RecordingAlice(AliceLink):
    """Alice's end, writing down per frame what the detection report and her sifting reply say."""

    def __init__(self, *args: Any, rate_hz: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rate_hz = rate_hz
        self.frame_log: list[FrameRecord] = []
        self.closed_at: dict[int, float] = {}
        self._in_flight: dict[int, tuple[int, float | None]] = {}

    def emit_frame(
        self, n_slots: int, *, at_utc: float | None = None, close_block: bool = False, ahead: bool = False
    ) -> tuple[int, PhotonFrame]:
        frame_id, frame = super().emit_frame(n_slots, at_utc=at_utc, close_block=close_block, ahead=ahead)
        self._in_flight[frame_id] = (n_slots, at_utc)
        return frame_id, frame

    def receive(self, msg: m.Message) -> list[m.Message]:
        seq_before = self.next_block_seq
        out = super().receive(msg)
        if isinstance(msg, m.DetectionReport):
            n_slots, at_utc = self._in_flight.pop(msg.frame_id)
            (reply,) = out
            assert isinstance(reply, m.SiftReply)
            match = reply.basis_match.astype(bool)
            channel = self.config.channel
            if at_utc is None or channel is None:
                raise LocalProtocolError("a recorded run needs frames sampled on a channel model")
            half = n_slots / self.rate_hz / 2.0
            record = FrameRecord(
                start_utc=at_utc - half,
                end_utc=at_utc + half,
                n_slots=n_slots,
                detections=len(msg.slots),
                sifted_bits=int(np.count_nonzero(match)),
                key_bits=int(np.count_nonzero(match & (msg.bases == 0))),
                conditions=channel.conditions(at_utc),
            )
            self.frame_log.append(record)
            if self.next_block_seq != seq_before:
                self.closed_at[seq_before] = record.end_utc
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class PassRun:
    """A recorded run: every frame, every block at both ends.

    Attributes:
        frames: In time order.
        blocks: Alice's finished blocks, in order, with the time each closed.
        bob_events: Bob's finished blocks (same order, same keys when accepted).
        rate_hz: The source's pulse rate.
    """

    frames: tuple[FrameRecord, ...]
    blocks: tuple[BlockRecord, ...]
    bob_events: tuple[BlockEvent, ...]
    rate_hz: float

    @property
    def pulses(self) -> int:
        return sum(f.n_slots for f in self.frames)

    @property
    def detections(self) -> int:
        return sum(f.detections for f in self.frames)

    @property
    def sifted_bits(self) -> int:
        """Sifted detections in both bases."""
        return sum(f.sifted_bits for f in self.frames)

    @property
    def key_bits(self) -> int:
        """Sifted detections in the key (Z) basis."""
        return sum(f.key_bits for f in self.frames)

    @property
    def secret_bits(self) -> int:
        """Final key over the run (Alice's accepted blocks, MAC-key refills excluded)."""
        return sum(b.secret_bits for b in self.blocks)

    @property
    def qber(self) -> float:
        """Key-basis error rate: errors Cascade corrected per key bit, over the blocks it ran on.

        NaN when no block reached error correction (see :attr:`test_qber`).
        """
        corrected = [b.event.stats for b in self.blocks if b.event.stats.cascade_rounds > 0]
        bits = sum(s.key_bits for s in corrected)
        return sum(s.errors_corrected for s in corrected) / bits if bits else math.nan

    @property
    def test_qber(self) -> float:
        """Test-basis (X) error rate over the finished blocks, from the revealed bits."""
        errors = sum(b.event.stats.test_errors for b in self.blocks)
        bits = sum(b.event.stats.test_bits for b in self.blocks)
        return errors / bits if bits else math.nan

    @property
    def keys_match(self) -> bool:
        """Both ends finished the same blocks, and every accepted block holds the same key at both."""
        ours = [(b.event.block_seq, isinstance(b.event, BlockAccepted)) for b in self.blocks]
        theirs = [(e.block_seq, isinstance(e, BlockAccepted)) for e in self.bob_events]
        if ours != theirs:
            return False
        return all(
            a.event.key == b.key
            for a, b in zip(self.blocks, self.bob_events, strict=True)
            if isinstance(a.event, BlockAccepted) and isinstance(b, BlockAccepted)
        )

    @staticmethod
    def rates(frames: tuple[FrameRecord, ...] | list[FrameRecord]) -> tuple[float, float]:
        """(detections, sifted bits) per second over ``frames`` (NaN for no frames)."""
        duration = sum(f.duration_s for f in frames)
        if duration <= 0.0:
            return math.nan, math.nan
        return sum(f.detections for f in frames) / duration, sum(f.sifted_bits for f in frames) / duration


def run_pass(
    config: LinkProtocolConfig,
    *,
    rate_hz: float,
    start_utc: float,
    end_utc: float,
    frame_slots: int,
    seed: int,
    bootstrap_key: bytes = bytes(range(256)) * 40,
    key_rngs: tuple[Any, Any] | None = None,
) -> PassRun:
    """Runs ``config``'s link over ``[start_utc, end_utc)`` through the whole stack, recording it.

    Args:
        config: The link; ``config.channel`` is its channel over time.
        rate_hz: The source's pulse rate.
        start_utc: Where the run starts (emulated UTC).
        end_utc: Where it stops; a block still open then stays unfinished.
        frame_slots: Most pulse slots per frame (the channel's
            ``max_frame_s`` may cut a frame shorter).
        seed: Seeds both ends as :func:`~qcinode.core.pair.make_pair` does.
        bootstrap_key: The pre-shared MAC-key reserve.
        key_rngs: Alice's and Bob's key generators (default: seeded).

    Raises:
        LocalProtocolError: ``config`` has no channel model.
    """
    if config.channel is None:
        raise LocalProtocolError("run_pass needs a link whose config has a channel model")
    seeds = np.random.SeedSequence(seed).spawn(4)
    a_key, b_key = key_rngs or (np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1]))
    alice = RecordingAlice(config, AuthKeyReserve(bootstrap_key), a_key, np.random.default_rng(seeds[2]), rate_hz=rate_hz)
    bob = BobLink(config, AuthKeyReserve(bootstrap_key), b_key, np.random.default_rng(seeds[3]))
    result = pump_timeline(alice, bob, rate_hz=rate_hz, start_utc=start_utc, end_utc=end_utc, frame_slots=frame_slots)
    blocks = tuple(BlockRecord(e, alice.closed_at[e.block_seq]) for e in result.alice_events)
    return PassRun(tuple(alice.frame_log), blocks, tuple(result.bob_events), rate_hz)
