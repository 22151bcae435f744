"""The quantum channel over time: fibre (constant) or free space (a pass at a time) (pure).

Theory of operation:
    * A link's optical layer (:mod:`qcinode.core.physics`) is fixed by a
      :class:`~qcinode.core.physics.LinkPhysics`. A fibre's never changes; a
      satellite downlink's transmittance and background change all along a
      pass, and outside passes the channel carries nothing. A
      :class:`QuantumChannelModel` says, for any emulated instant, what the
      channel does (:class:`ChannelConditions`); :func:`physics_at` turns
      that into the ``LinkPhysics`` of one frame of pulses.
    * **Frames are short against the channel's changes.** A frame is sampled
      with the conditions at one instant (the driver passes the frame's
      midpoint); :attr:`QuantumChannelModel.max_frame_s` bounds a frame's
      emulated duration so that the transmittance varies little within it
      (a LEO pass changes its loss by well under 0.1 dB per second).
    * **Both ends evaluate the same model at the same instant.** Frames carry
      that instant; Alice's source uses the transmittance, Bob's detector the
      background. Background photons from the sky add to the detectors' dark
      counts: a click probability ``b`` per slot (both detectors together)
      combines with the detectors' own ``Y0`` as independent causes,
      ``Y0' = 1 − (1 − Y0)(1 − b)``.
    * **Windows.** :attr:`ChannelConditions.until_utc` is when the channel
      next changes between carrying and not carrying light (a pass's rise or
      set); the driver emits frames only inside windows and ends a window
      with a frame that closes the open block
      (:meth:`qcinode.core.pipeline.AliceLink.emit_frame`), so a block never
      spans two passes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .physics import LinkPhysics

__all__ = [
    "ChannelConditions",
    "FibreChannel",
    "FramePlan",
    "Idle",
    "SlotClock",
    "QuantumChannelModel",
    "combine_background",
    "next_frame",
    "physics_at",
]


@dataclass(frozen=True, slots=True)
class ChannelConditions:
    """What the quantum channel does at one emulated instant.

    Attributes:
        transmitting: Whether light crosses the channel now (a fibre: always;
            a downlink: during a pass above the elevation mask).
        until_utc: When ``transmitting`` next changes (``inf``: never).
        transmittance: Channel transmittance, Bob's detector efficiency
            excluded, in [0, 1] (0 when not transmitting).
        background_probability: Extra click probability per pulse slot from
            background light (both detectors together), in [0, 1).
        note: Why the channel carries nothing, or what limits it
            (``"below mask"``, ``"daylight"``); ``""`` when nothing to say.
        details: Figures for status and plots (elevation, range, loss in dB,
            sky condition, …); free-form, JSON-able.
    """

    transmitting: bool
    until_utc: float
    transmittance: float
    background_probability: float = 0.0
    note: str = ""
    details: dict[str, float | str] = field(default_factory=dict)

    @property
    def loss_db(self) -> float:
        """Channel loss in dB (``inf`` for no transmission)."""
        return -10.0 * math.log10(self.transmittance) if self.transmittance > 0 else math.inf


@runtime_checkable
class QuantumChannelModel(Protocol):
    """A link's quantum channel as a function of emulated UTC."""

    @property
    def max_frame_s(self) -> float:
        """Longest emulated duration of one frame of pulses (``inf``: no limit)."""
        ...

    def conditions(self, t_utc: float) -> ChannelConditions:
        """What the channel does at ``t_utc`` (POSIX seconds)."""
        ...


@dataclass(frozen=True, slots=True)
class FibreChannel:
    """A fibre: the same transmittance forever, no background beyond the detectors'."""

    transmittance: float

    @property
    def max_frame_s(self) -> float:
        return math.inf

    def conditions(self, t_utc: float) -> ChannelConditions:
        return ChannelConditions(transmitting=True, until_utc=math.inf, transmittance=self.transmittance)


def combine_background(dark_count_probability: float, background_probability: float) -> float:
    """Click probability per slot from two independent causes: ``1 − (1 − Y0)(1 − b)``."""
    return -math.expm1(math.log1p(-dark_count_probability) + math.log1p(-background_probability))


def physics_at(base: LinkPhysics, conditions: ChannelConditions) -> LinkPhysics:
    """The optical layer of one frame: ``base`` with the channel's transmittance and background.

    Everything else — source, detector efficiency and misalignment, an
    eavesdropper — is the link's own and stays as in ``base``.
    """
    transmittance = conditions.transmittance if conditions.transmitting else 0.0
    dark = combine_background(base.dark_count_probability, conditions.background_probability)
    if transmittance == base.fibre_transmittance and dark == base.dark_count_probability:
        return base
    return dataclasses.replace(base, fibre_transmittance=transmittance, dark_count_probability=min(dark, 1.0 - 1e-12))


@dataclass(frozen=True, slots=True)
class FramePlan:
    """The next frame of pulses: where it starts, how long it is, what it is sampled at.

    Attributes:
        start_utc: Emulated instant of its first slot.
        n_slots: Pulse slots, ≥ 1.
        at_utc: The instant whose channel conditions it is sampled with (its midpoint).
        end_utc: Emulated instant just after its last slot.
        close_block: It reaches the end of the channel's window (a pass sets):
            the open block is closed after it.
    """

    start_utc: float
    n_slots: int
    at_utc: float
    end_utc: float
    close_block: bool


@dataclass(frozen=True, slots=True)
class Idle:
    """The channel carries nothing from now until ``until_utc`` (``inf``: never again)."""

    until_utc: float
    note: str


def next_frame(channel: QuantumChannelModel, t_utc: float, rate_hz: float, want_slots: int) -> FramePlan | Idle:
    """Plans the frame that starts at the link's emulated position ``t_utc``.

    The frame has at most ``want_slots`` slots, lasts at most
    ``channel.max_frame_s`` and never crosses the end of the channel's
    current window; the one that reaches that end closes the open block.
    Outside a window (or with less than one slot of it left) the answer is
    :class:`Idle` until the next window opens.
    """
    conditions = channel.conditions(t_utc)
    if not conditions.transmitting:
        return Idle(conditions.until_utc, conditions.note)
    window_s = conditions.until_utc - t_utc
    limit_s = min(channel.max_frame_s, window_s)
    # (+1e-6 slot: emulated times are sums of frame durations, off by rounding.)
    slots = int(min(float(max(want_slots, 1)), math.floor(limit_s * rate_hz + 1e-6) if math.isfinite(limit_s) else math.inf))
    if slots < 1:
        # Less than one slot of this window left: it is over.
        return Idle(conditions.until_utc, conditions.note)
    end = t_utc + slots / rate_hz
    close = math.isfinite(window_s) and (conditions.until_utc - end) * rate_hz < 1.0 - 1e-6
    return FramePlan(start_utc=t_utc, n_slots=slots, at_utc=t_utc + slots / rate_hz / 2, end_utc=end, close_block=close)


@dataclass(slots=True)
class SlotClock:
    """A transmitter's emulated position, counted in whole pulse slots.

    Emulated UTC is around 1.8e9 s, where a float resolves only ~0.24 µs:
    adding a frame's duration to it, frame after frame, drifts by up to a
    few slots per frame at tens of MHz, so the position would run ahead of
    the pulses actually sent. Counting slots from an anchor (reset when the
    link jumps over an idle stretch) rounds once, not once per frame.
    """

    anchor_utc: float
    rate_hz: float
    slots: int = 0

    @property
    def now_utc(self) -> float:
        """Where the transmitter stands: the instant after its last slot."""
        return self.anchor_utc + self.slots / self.rate_hz

    def advance(self, n_slots: int) -> None:
        """``n_slots`` more pulses were sent."""
        self.slots += n_slots

    def jump_to(self, t_utc: float) -> None:
        """Skip to ``t_utc`` (nothing was sent in between)."""
        if t_utc > self.now_utc:
            self.anchor_utc, self.slots = t_utc, 0
