"""A recorded satellite pass replayed as a quantum channel (pure; the only I/O reads the CSVs it is pointed at).

Theory of operation:
    * A :class:`ReplayChannel` is a :class:`~qcinode.core.channel.QuantumChannelModel`
      that carries light during ONE window, the span of its recording, placed
      at ``start_utc``: the recording's time ``t`` is the emulated instant
      ``start_utc + t``. Before the window the channel is dark until it
      opens; after it, dark for ever. The end of the window is a pass's set:
      the frame that reaches it closes the open block
      (:func:`~qcinode.core.channel.next_frame`).
    * **The loss comes from the recording**, detector efficiency excluded
      (the link's detector model multiplies it in), in one of two ways:
      a :class:`~qcinode.core.freespace.LossTrace` of ``time_s,loss_db``
      read at ``t``; or a :class:`RangeTrack` (``time_s,slant_range_km``)
      read at ``t`` and a ``slant_range_km,loss_db`` trace read at that
      range. Both are interpolated linearly (loss in dB), as
      :class:`~qcinode.core.freespace.LossTrace` does; a range outside the
      loss curve lets nothing through.
    * **Background** is a fixed click probability per pulse slot from light
      other than the signal (the sky of the recording: 0 for a night pass).
      The detectors' own dark counts are the link's
      (:class:`~qcinode.core.physics.LinkPhysics`) and add to it.
    * Frames last at most :attr:`ReplayChannel.max_frame_s` (1 s by default:
      the Micius track is sampled every second) and are sampled at their
      midpoint, so a frame sees the recording's mean over it while the loss
      is nearly linear within it.

:func:`micius_2017_channel` and :func:`micius_2017_physics` give the
Micius–Xinglong pass of 19 December 2016 (Liao et al., Nature 549, 43
(2017)) from the data packaged in ``qcinode/data/micius-2017/``.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ..errors import ConfigError
from .channel import ChannelConditions
from .freespace import LossTrace, micius_2017_paths
from .physics import LinkPhysics

__all__ = [
    "MICIUS_2017_DARK_COUNTS_PER_S",
    "MICIUS_2017_PUBLISHED",
    "MICIUS_2017_RATE_HZ",
    "MICIUS_2017_TOLERANCE",
    "MICIUS_2017_TRACK_START_UTC",
    "RangeTrack",
    "ReplayChannel",
    "micius_2017_channel",
    "micius_2017_physics",
]

#: Pulse rate of the Micius source (Liao et al. 2017).
MICIUS_2017_RATE_HZ: Final = 100.0e6
#: Dark counts of each Xinglong detector, per second (Liao et al. 2017).
MICIUS_2017_DARK_COUNTS_PER_S: Final = 25.0

#: UTC of the packaged track's t = 0 (2016-12-19T16:49:56Z): the track's
#: closest approach (the middle of its samples within 1 km of 645 km) put at
#: the culmination that SGP4 finds from the elements of 18 December 2016
#: (16:52:13.5 UTC). Only the background and the Sun could depend on it, and a
#: replay at night has neither.
MICIUS_2017_TRACK_START_UTC: Final = 1482166196.0

#: What Liao et al. (Nature 549, 43 (2017)) report for the pass, as (low, high):
#: detections and sifted bits (both bases) over the pass, the sifted rate at
#: 645 and 1200 km (bits/s), the QBER, the final key (bits).
MICIUS_2017_PUBLISHED: Final[Mapping[str, tuple[float, float]]] = MappingProxyType({
    "detections": (3.55e6, 3.55e6),
    "sifted_bits": (1.67e6, 1.67e6),
    "sifted_rate_645km_bps": (12.0e3, 12.0e3),
    "sifted_rate_1200km_bps": (1.0e3, 1.0e3),
    "qber": (0.010, 0.011),
    "secret_bits": (300.0e3, 300.0e3),
})

#: The figures above are read off a paper (≈): a model matches them within ±25 %.
MICIUS_2017_TOLERANCE: Final = 0.25


class RangeTrack:
    """Slant range against time through a pass: ``time_s,slant_range_km``.

    The CSV has that header; lines starting with ``#`` and blank lines are
    skipped; times increase strictly and ranges are finite and > 0. The range
    is interpolated linearly between samples; outside them it is undefined
    (None).

    Attributes:
        times_s: The time column.
        ranges_km: The range column.
    """

    __slots__ = ("ranges_km", "times_s")

    HEADER: Final = ("time_s", "slant_range_km")

    def __init__(self, times_s: list[float] | tuple[float, ...], ranges_km: list[float] | tuple[float, ...]) -> None:
        """Builds a track from its two columns.

        Raises:
            ConfigError: Columns of different length, fewer than two samples,
                times that do not increase, or a range that is not finite and > 0.
        """
        if len(times_s) != len(ranges_km):
            raise ConfigError(f"range track: {len(times_s)} time_s values but {len(ranges_km)} slant_range_km values")
        if len(times_s) < 2:
            raise ConfigError(f"range track: needs at least two samples, got {len(times_s)}")
        for i, (t, distance) in enumerate(zip(times_s, ranges_km, strict=True)):
            if not (math.isfinite(t) and math.isfinite(distance) and distance > 0.0):
                raise ConfigError(f"range track: sample {i} ({t!r}, {distance!r}) must be finite with slant_range_km > 0")
            if i and t <= times_s[i - 1]:
                raise ConfigError(f"range track: time_s must increase, got {t!r} after {times_s[i - 1]!r}")
        self.times_s = tuple(float(t) for t in times_s)
        self.ranges_km = tuple(float(r) for r in ranges_km)

    def __repr__(self) -> str:
        return f"RangeTrack({len(self.times_s)} samples, {self.times_s[0]:g}..{self.times_s[-1]:g} s)"

    @classmethod
    def constant(cls, range_km: float, duration_s: float) -> RangeTrack:
        """A satellite held at ``range_km`` for ``duration_s`` (to measure a rate at one range)."""
        if not (math.isfinite(duration_s) and duration_s > 0.0):
            raise ConfigError(f"duration_s: must be > 0, got {duration_s!r}")
        return cls((0.0, float(duration_s)), (range_km, range_km))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> RangeTrack:
        """Reads a track from a file.

        Raises:
            ConfigError: Unreadable file, or bad content (the message names the line).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"range track {str(path)!r}: cannot read: {exc.strerror or exc}") from None
        return cls.parse_csv(text, name=str(path))

    @classmethod
    def parse_csv(cls, text: str, *, name: str = "range track") -> RangeTrack:
        """Parses CSV text (see the class docstring).

        Raises:
            ConfigError: ``"<name> line N: ..."`` for the first bad line.
        """
        header_seen = False
        times: list[float] = []
        ranges: list[float] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            cells = [cell.strip() for cell in line.split(",")]
            if not header_seen:
                if tuple(cell.lower() for cell in cells) != cls.HEADER:
                    raise ConfigError(f"{name} line {number}: the header must be 'time_s,slant_range_km', got {line!r}")
                header_seen = True
                continue
            if len(cells) != 2:
                raise ConfigError(f"{name} line {number}: expected 2 values, got {len(cells)}: {line!r}")
            try:
                t, distance = float(cells[0]), float(cells[1])
            except ValueError:
                raise ConfigError(f"{name} line {number}: not a number in {line!r}") from None
            if not (math.isfinite(t) and math.isfinite(distance)) or distance <= 0.0:
                raise ConfigError(f"{name} line {number}: values must be finite with slant_range_km > 0, got {line!r}")
            if times and t <= times[-1]:
                raise ConfigError(f"{name} line {number}: time_s must increase, got {cells[0]} after {times[-1]:g}")
            times.append(t)
            ranges.append(distance)
        if not header_seen:
            raise ConfigError(f"{name}: empty; expected a header 'time_s,slant_range_km'")
        if len(times) < 2:
            raise ConfigError(f"{name}: needs at least two data lines, got {len(times)}")
        return cls(times, ranges)

    @property
    def span_s(self) -> tuple[float, float]:
        """The first and last time of the track."""
        return self.times_s[0], self.times_s[-1]

    def range_km_at(self, t_s: float) -> float | None:
        """The range at ``t_s`` seconds into the track, km; None outside it."""
        times = self.times_s
        if not times[0] <= t_s <= times[-1]:
            return None
        i = bisect.bisect_right(times, t_s)
        if i >= len(times):
            return self.ranges_km[-1]
        t0, t1 = times[i - 1], times[i]
        r0, r1 = self.ranges_km[i - 1], self.ranges_km[i]
        return r0 + (r1 - r0) * (t_s - t0) / (t1 - t0)


@dataclass(frozen=True, slots=True)
class ReplayChannel:
    """One recorded pass as the quantum channel of a downlink (module rules).

    Attributes:
        loss: ``time_s,loss_db`` (read at the time into the pass) or, with a
            ``track``, ``slant_range_km,loss_db`` (read at the range).
        start_utc: The emulated instant of the recording's time 0.
        track: Range against time; needed for a loss against range.
        background_probability: Click probability per slot from light other
            than the signal (both detectors together), in [0, 1).
        max_frame_s: Longest frame of pulses, emulated seconds (> 0).

    Raises:
        ConfigError: A loss curve that does not fit the track (or its
            absence), or a value out of range.
    """

    loss: LossTrace
    start_utc: float
    track: RangeTrack | None = None
    background_probability: float = 0.0
    max_frame_s: float = 1.0

    def __post_init__(self) -> None:
        if self.track is None and self.loss.variable != "time_s":
            raise ConfigError("loss: a slant_range_km,loss_db curve needs a range track (time_s,slant_range_km)")
        if self.track is not None and self.loss.variable != "slant_range_km":
            raise ConfigError("loss: with a range track the loss must be against slant_range_km, got time_s")
        if not math.isfinite(self.start_utc):
            raise ConfigError(f"start_utc: must be finite, got {self.start_utc!r}")
        if not 0.0 <= self.background_probability < 1.0:
            raise ConfigError(f"background_probability: must lie in [0, 1), got {self.background_probability!r}")
        if not (self.max_frame_s > 0.0):
            raise ConfigError(f"max_frame_s: must be > 0, got {self.max_frame_s!r}")

    @property
    def window_utc(self) -> tuple[float, float]:
        """When the channel carries light: the recording's span placed at ``start_utc``."""
        first, last = self.track.span_s if self.track is not None else self.loss.span
        return self.start_utc + first, self.start_utc + last

    @property
    def duration_s(self) -> float:
        """Length of the window, s."""
        rise, set_ = self.window_utc
        return set_ - rise

    def loss_db_at(self, t_utc: float) -> float:
        """The recording's loss at ``t_utc``, dB (``inf`` outside the window or the loss curve)."""
        t = t_utc - self.start_utc
        if self.track is None:
            return self.loss.loss_db_at(t)
        distance = self.track.range_km_at(t)
        return math.inf if distance is None else self.loss.loss_db_at(distance)

    def conditions(self, t_utc: float) -> ChannelConditions:
        rise, set_ = self.window_utc
        if not rise <= t_utc < set_:
            return ChannelConditions(
                transmitting=False,
                until_utc=rise if t_utc < rise else math.inf,
                transmittance=0.0,
                note="outside the recorded pass",
            )
        loss = self.loss_db_at(t_utc)
        details: dict[str, float | str] = {"loss_db": round(loss, 3) if math.isfinite(loss) else "inf"}
        if self.track is not None:
            distance = self.track.range_km_at(t_utc - self.start_utc)
            assert distance is not None  # inside the window
            details["range_km"] = round(distance, 3)
        return ChannelConditions(
            transmitting=True,
            until_utc=set_,
            transmittance=0.0 if math.isinf(loss) else 10.0 ** (-loss / 10.0),
            background_probability=self.background_probability,
            details=details,
        )


def micius_2017_channel(start_utc: float, *, track: RangeTrack | None = None) -> ReplayChannel:
    """The Micius–Xinglong pass of 19 December 2016, replayed from ``start_utc``.

    The packaged digitised track (274 s, 1196 → 645 → 1189 km) and the
    measured loss against range (29.8 dB at 645 km to 40.3 dB at 1200 km,
    detector excluded); no background (a moonless night: the sky adds
    ~10⁻⁹ clicks per slot against the detectors' 5·10⁻⁷). ``track`` replaces
    the packaged one, e.g. :meth:`RangeTrack.constant` to hold one range.
    """
    paths = micius_2017_paths()
    return ReplayChannel(
        loss=LossTrace.from_csv(paths.link_loss),
        start_utc=start_utc,
        track=track if track is not None else RangeTrack.from_csv(paths.pass_track),
    )


def micius_2017_physics() -> LinkPhysics:
    """Source and receiver of the Micius downlink (Liao et al., Nature 549, 43 (2017)).

    100 MHz decoy-state BB84, μ = 0.8 / 0.1 / 0 sent with probabilities
    0.5 / 0.25 / 0.25; both bases equally likely (the ground receiver splits
    photons passively between them); detector efficiency 0.5; 25 dark counts
    per second per detector, p_d = 25 / 10⁸ per slot, so
    Y0 = 1 − (1 − p_d)² for the receiver's two detectors
    (:class:`~qcinode.core.physics.LinkPhysics`); intrinsic error 1 %. The
    transmittance is the channel's (:func:`~qcinode.core.channel.physics_at`).
    """
    per_detector = MICIUS_2017_DARK_COUNTS_PER_S / MICIUS_2017_RATE_HZ
    return LinkPhysics(
        intensities=(0.8, 0.1, 0.0),
        class_probabilities=(0.5, 0.25, 0.25),
        z_basis_probability=0.5,
        fibre_transmittance=1.0,
        detector_efficiency=0.5,
        dark_count_probability=-math.expm1(2.0 * math.log1p(-per_detector)),
        misalignment_error=0.01,
    )
