"""The channel seam: frames follow the channel's windows, a pass's end closes the block."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from qcinode.core.channel import (
    ChannelConditions,
    FibreChannel,
    FramePlan,
    Idle,
    combine_background,
    next_frame,
    physics_at,
)
from qcinode.core.pair import make_pair, pump_timeline
from qcinode.core.physics import LinkPhysics
from qcinode.core.pipeline import BlockAborted, BlockAccepted, LinkProtocolConfig

PHYS = LinkPhysics(
    intensities=(0.5, 0.2, 0.0),
    class_probabilities=(0.4, 0.3, 0.3),
    z_basis_probability=0.6,
    fibre_transmittance=1.0,
    detector_efficiency=0.1,
    dark_count_probability=1e-6,
    misalignment_error=0.01,
)


@dataclasses.dataclass(frozen=True)
class SquarePass:
    """Light between ``rise`` and ``set_`` (repeating every ``period``), with a fixed loss and background."""

    rise: float
    set_: float
    transmittance: float
    background: float = 0.0
    period: float = math.inf
    max_frame_s: float = 1.0

    def conditions(self, t_utc: float) -> ChannelConditions:
        k = math.floor((t_utc - self.rise) / self.period) if math.isfinite(self.period) else 0
        rise, set_ = self.rise + k * self.period if k > 0 else self.rise, self.set_ + max(k, 0) * (self.period if math.isfinite(self.period) else 0)
        if rise <= t_utc < set_:
            return ChannelConditions(True, set_, self.transmittance, self.background)
        nxt = rise if t_utc < rise else (rise + self.period if math.isfinite(self.period) else math.inf)
        return ChannelConditions(False, nxt, 0.0, note="below mask")


def test_fibre_never_idles_nor_closes_blocks() -> None:
    plan = next_frame(FibreChannel(0.1), 0.0, 1e9, 10_000)
    assert plan == FramePlan(0.0, 10_000, 5e-6, 1e-5, False)


def test_frames_stop_at_the_window_end_and_the_last_one_closes_the_block() -> None:
    channel = SquarePass(rise=10.0, set_=12.5, transmittance=0.5)
    assert next_frame(channel, 0.0, 1000.0, 10**6) == Idle(10.0, "below mask")
    first = next_frame(channel, 10.0, 1000.0, 10**6)
    assert isinstance(first, FramePlan) and first.n_slots == 1000 and not first.close_block  # max_frame_s = 1
    last = next_frame(channel, 12.0, 1000.0, 10**6)
    assert isinstance(last, FramePlan) and last.n_slots == 500 and last.close_block and last.end_utc == pytest.approx(12.5)
    assert next_frame(channel, 12.5, 1000.0, 10**6) == Idle(math.inf, "below mask")


def test_background_adds_to_dark_counts_as_an_independent_cause() -> None:
    assert combine_background(1e-6, 0.0) == pytest.approx(1e-6)
    assert combine_background(0.1, 0.2) == pytest.approx(1 - 0.9 * 0.8)
    out = physics_at(PHYS, ChannelConditions(True, math.inf, 0.25, 0.01))
    assert out.fibre_transmittance == 0.25
    assert out.dark_count_probability == pytest.approx(1 - (1 - 1e-6) * 0.99)
    assert physics_at(PHYS, ChannelConditions(False, 5.0, 0.25)).fibre_transmittance == 0.0


def _run(channel: SquarePass, block_bits: int, end: float, seed: int = 1) -> tuple[list, list, int]:
    config = LinkProtocolConfig("sat-gs", PHYS, block_bits=block_bits, channel=channel)
    alice, bob = make_pair(config, bytes(range(256)) * 40, seed)
    result = pump_timeline(alice, bob, rate_hz=1e6, start_utc=0.0, end_utc=end, frame_slots=200_000)
    return result.alice_events, result.bob_events, sum(e.stats.pulses for e in result.alice_events)


def test_a_pass_sends_pulses_only_inside_its_window_and_makes_key() -> None:
    # 30 s of light at 1 MHz, eta = 0.1: gain ~0.025, x 0.6^2 sifted into Z -> ~2.7e5 key bits, 4+ blocks of 5e4.
    channel = SquarePass(rise=100.0, set_=130.0, transmittance=1.0)
    alice_events, bob_events, pulses = _run(channel, 50_000, end=200.0)
    assert pulses == 30_000_000  # every slot of the window, none outside it
    done = [e for e in alice_events if isinstance(e, BlockAccepted)]
    assert len(done) >= 4
    assert [e.key for e in done] == [e.key for e in bob_events if isinstance(e, BlockAccepted)]
    # The pass ended with a block cut short: it was closed at both ends with the same sequence number.
    assert [e.block_seq for e in alice_events] == [e.block_seq for e in bob_events]
    assert alice_events[-1].stats.key_bits < 50_000


def test_a_pass_too_short_for_a_finite_size_block_says_so() -> None:
    channel = SquarePass(rise=5.0, set_=5.3, transmittance=0.5)
    alice_events, bob_events, pulses = _run(channel, 50_000, end=10.0)
    assert pulses == 300_000
    assert [type(e) for e in alice_events] == [BlockAborted] and alice_events[0].reason == "pass_too_short"
    assert isinstance(bob_events[0], BlockAborted) and bob_events[0].reason == "pass_too_short"


def test_blocks_never_span_passes() -> None:
    channel = SquarePass(rise=0.0, set_=2.0, transmittance=0.5, period=10.0)
    alice_events, _, pulses = _run(channel, 10**7, end=35.0)
    assert pulses == 4 * 2_000_000  # passes at 0, 10, 20, 30
    assert len(alice_events) == 4  # one (short) block per pass
    assert all(e.stats.pulses == 2_000_000 for e in alice_events)


def test_daylight_background_drives_the_qber_to_one_half_and_no_key() -> None:
    # A sky background far above the signal: clicks are noise.
    channel = SquarePass(rise=0.0, set_=20.0, transmittance=1e-3, background=0.05)
    alice_events, _, _ = _run(channel, 20_000, end=20.0)
    assert alice_events and all(isinstance(e, BlockAborted) for e in alice_events)
    assert np.mean([e.stats.test_qber for e in alice_events]) == pytest.approx(0.5, abs=0.02)


def test_the_position_counts_slots_without_drifting_at_today_s_utc() -> None:
    # At 1.8e9 s a float resolves ~0.24 us: adding frame durations frame after frame drifts by
    # slots per frame, counting slots from an anchor does not.
    from qcinode.core.channel import SlotClock

    rate = 2.0e7
    clock = SlotClock(1.8e9, rate)
    drifting = 1.8e9
    for _ in range(10_000):
        clock.advance(593_393)
        drifting += 593_393 / rate
    assert clock.now_utc == pytest.approx(1.8e9 + 10_000 * 593_393 / rate, abs=3e-7)
    assert abs(drifting - clock.now_utc) * rate > 1_000  # what the naive sum gets wrong
    clock.jump_to(1.9e9)
    assert (clock.anchor_utc, clock.slots) == (1.9e9, 0)
    clock.jump_to(1.0e9)  # never backwards
    assert clock.now_utc == 1.9e9
