"""A satellite downlink as a quantum channel over time: passes, transmittance, sky background (pure).

Theory of operation:
    * A :class:`DownlinkChannel` wraps a :class:`~qcinode.core.freespace.FreeSpaceLink`
      (satellite, station, optics, optional loss trace) as a
      :class:`~qcinode.core.channel.QuantumChannelModel`: at any emulated
      instant it says whether the satellite is in a pass above the elevation
      mask, the transmittance and the sky background then, and when that
      changes next (the pass's set, or the next pass's rise).
    * **Windows are passes.** Passes are found with
      :func:`~qcinode.core.orbit.find_passes` over chunks of
      :data:`CHUNK_S` of emulated time, each scanned with an hour's overlap on
      both sides so that a pass straddling a chunk boundary is found whole (a
      LEO pass lasts minutes); a pass belongs to the chunk its rise falls in.
      Chunks are computed once and kept.
    * **Inside a pass** the transmittance is the optics' model (or the
      trace) times ``10^(−extra_loss_db/10)``; the sky background becomes a
      click probability per slot with Bob's detector efficiency
      (:func:`~qcinode.core.freespace.channel_state`). The note says
      ``"daylight"`` when the Sun is up at the station, ``"twilight"`` in
      civil twilight. A ``time_s`` loss trace is read from each pass's rise:
      it replays for every pass.
    * **Fading** (``fading=True``) samples the pointing error and
      scintillation once per instant from a generator seeded with the
      instant itself, so both ends of the link — which evaluate the channel
      independently — see the same realisation.
    * Frames last at most :data:`MAX_FRAME_S` of emulated time and are
      sampled at their midpoint. A LEO pass's loss changes by less than
      0.05 dB a second (range: ~0.035 dB/s at the horizon, where the range
      changes fastest relative to itself; air mass: ~0.01 dB/s at 15°), so a
      frame spans at most ~0.25 dB and, the change being nearly linear
      within it, the midpoint's transmittance is its mean to < 0.01 dB.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from .channel import ChannelConditions
from .freespace import FreeSpaceLink
from .orbit import Pass, SkyCondition, look_angles, sky_condition, sun_elevation_deg

__all__ = ["CHUNK_S", "MAX_FRAME_S", "DownlinkChannel"]

#: Emulated seconds of passes computed at a time.
CHUNK_S = 6 * 3600.0

#: Longest frame of pulses on a downlink, emulated seconds (see the module notes).
MAX_FRAME_S = 5.0

#: How far ahead a channel looks for the next pass before it says "none".
SEARCH_S = 3 * 86400.0

_OVERLAP_S = 3600.0


@dataclass(slots=True)
class DownlinkChannel:
    """The quantum channel of one satellite→station link.

    Attributes:
        link: Satellite, station, optics (whose ``elevation_mask_deg`` is the
            pass mask) and optional loss trace.
        detector_efficiency: Bob's detector efficiency, for the chance that
            background light makes a click.
        extra_loss_db: Losses beyond the model (calibration), dB.
        fading: Sample pointing error and scintillation per instant.
        fading_seed: Seeds the per-instant fading draws (both ends must agree).
    """

    link: FreeSpaceLink
    detector_efficiency: float
    extra_loss_db: float = 0.0
    fading: bool = False
    fading_seed: int = 0
    _chunks: dict[int, list[Pass]] = field(default_factory=dict, repr=False)

    @property
    def max_frame_s(self) -> float:
        return MAX_FRAME_S

    # -- passes ------------------------------------------------------------
    def _chunk(self, index: int) -> list[Pass]:
        passes = self._chunks.get(index)
        if passes is None:
            start = index * CHUNK_S
            scanned = self.link.passes(start - _OVERLAP_S, start + CHUNK_S + _OVERLAP_S)
            passes = [p for p in scanned if start <= p.rise_utc < start + CHUNK_S and not p.is_clipped]
            self._chunks[index] = passes
        return passes

    def pass_at(self, t_utc: float) -> Pass | None:
        """The pass under way at ``t_utc`` (rise ≤ t < set), if any."""
        index = math.floor(t_utc / CHUNK_S)
        for chunk in (index - 1, index):
            for p in self._chunk(chunk):
                if p.rise_utc <= t_utc < p.set_utc:
                    return p
        return None

    def next_pass(self, t_utc: float, search_s: float = SEARCH_S) -> Pass | None:
        """The first pass rising after ``t_utc``, within ``search_s``."""
        index = math.floor(t_utc / CHUNK_S)
        while index * CHUNK_S <= t_utc + search_s:
            passes = self._chunk(index)
            at = bisect.bisect_right([p.rise_utc for p in passes], t_utc)
            if at < len(passes):
                return passes[at]
            index += 1
        return None

    def passes(self, start_utc: float, end_utc: float) -> list[Pass]:
        """Every pass rising in ``[start_utc, end_utc)``."""
        out: list[Pass] = []
        for index in range(math.floor(start_utc / CHUNK_S), math.floor(end_utc / CHUNK_S) + 1):
            out += [p for p in self._chunk(index) if start_utc <= p.rise_utc < end_utc]
        return out

    # -- the channel -----------------------------------------------------------
    def conditions(self, t_utc: float) -> ChannelConditions:
        current = self.pass_at(t_utc)
        if current is None:
            upcoming = self.next_pass(t_utc)
            elevation, azimuth, distance = look_angles(self.link.satellite, self.link.station, t_utc)
            sun = sun_elevation_deg(self.link.station, t_utc)
            return ChannelConditions(
                transmitting=False,
                until_utc=upcoming.rise_utc if upcoming is not None else math.inf,
                transmittance=0.0,
                note="below mask",
                details=_details(elevation, azimuth, distance, sun),
            )
        rng = np.random.default_rng([self.fading_seed, round(t_utc * 1000.0)]) if self.fading else None
        trace_start = current.rise_utc if self.link.loss_trace is not None else None
        link = self.link if trace_start is None else _with_trace_start(self.link, trace_start)
        state = link.state_at(t_utc, rng, detector_efficiency=self.detector_efficiency)
        _, azimuth, _ = look_angles(self.link.satellite, self.link.station, t_utc)
        transmittance = state.transmittance * 10.0 ** (-self.extra_loss_db / 10.0)
        return ChannelConditions(
            transmitting=True,
            until_utc=current.set_utc,
            transmittance=transmittance,
            background_probability=state.background_probability_per_slot,
            note=_sky_note(state.sky),
            details=_details(state.elevation_deg, azimuth, state.range_km, state.sun_elevation_deg),
        )


def _with_trace_start(link: FreeSpaceLink, start_utc: float) -> FreeSpaceLink:
    if link.loss_trace is None or link.loss_trace.variable != "time_s" or link.trace_start_utc == start_utc:
        return link
    return FreeSpaceLink(link.satellite, link.station, link.optics, link.loss_trace, start_utc)


def _sky_note(sky: SkyCondition) -> str:
    if sky is SkyCondition.DAY:
        return "daylight"
    if sky is SkyCondition.CIVIL_TWILIGHT:
        return "twilight"
    return ""


def _details(elevation: float, azimuth: float, distance: float, sun: float) -> dict[str, float | str]:
    out: dict[str, float | str] = {"sky": _sky_word(sky_condition(sun)), "sun_elevation_deg": round(sun, 2)}
    if math.isfinite(elevation) and math.isfinite(distance):
        out.update(elevation_deg=round(elevation, 3), azimuth_deg=round(azimuth, 3), range_km=round(distance, 3))
    return out


def _sky_word(sky: SkyCondition) -> str:
    return {
        SkyCondition.DAY: "day",
        SkyCondition.CIVIL_TWILIGHT: "twilight",
        SkyCondition.NAUTICAL_TWILIGHT: "twilight",
        SkyCondition.ASTRONOMICAL_TWILIGHT: "night",
        SkyCondition.NIGHT: "night",
    }[sky]
