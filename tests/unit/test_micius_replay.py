"""The Micius pass of 19 December 2016 replayed through the whole protocol stack, against what was published.

The packaged track (range against time) and measured loss (against range)
drive a :class:`ReplayChannel`; the Micius source and receiver
(:func:`micius_2017_physics`) run decoy-state BB84 over it with
:func:`qcinode.core.pair.pump_timeline`, post-processing included, one block
for the whole pass. Detections, sifted bits, the sifted rate at 645 and
1200 km and the QBER must land within the ±25 % the published figures allow;
the detections and the QBER must also match the closed forms of the optical
model frame by frame, within five standard deviations.
"""

from __future__ import annotations

import functools
import math

import pytest

from qcinode.core.channel import physics_at
from qcinode.core.freespace import LossTrace
from qcinode.core.passrun import PassRun, run_pass
from qcinode.core.physics import exact_error_rate, expected_gain
from qcinode.core.pipeline import BlockAccepted, LinkProtocolConfig
from qcinode.core.replay import (
    MICIUS_2017_PUBLISHED,
    MICIUS_2017_RATE_HZ,
    MICIUS_2017_TOLERANCE,
    MICIUS_2017_TRACK_START_UTC,
    RangeTrack,
    ReplayChannel,
    micius_2017_channel,
    micius_2017_physics,
)
from qcinode.errors import ConfigError, LocalProtocolError

START = MICIUS_2017_TRACK_START_UTC


def _run(channel: ReplayChannel, seed: int = 2017) -> PassRun:
    # block_bits above anything one pass sifts: the pass's end closes the only block.
    config = LinkProtocolConfig("micius-xinglong", micius_2017_physics(), block_bits=10_000_000, channel=channel)
    rise, set_ = channel.window_utc
    return run_pass(config, rate_hz=MICIUS_2017_RATE_HZ, start_utc=rise - 5.0, end_utc=set_ + 5.0,
                    frame_slots=10**9, seed=seed)


@functools.cache
def _replay() -> PassRun:
    return _run(micius_2017_channel(START))


def _within_published(name: str, value: float) -> bool:
    low, high = MICIUS_2017_PUBLISHED[name]
    return low * (1.0 - MICIUS_2017_TOLERANCE) <= value <= high * (1.0 + MICIUS_2017_TOLERANCE)


# --------------------------------------------------------------------------- the channel


def test_the_replay_carries_light_only_over_the_recorded_window() -> None:
    track = RangeTrack((0.0, 10.0, 20.0), (1000.0, 600.0, 1000.0))
    loss = LossTrace("slant_range_km", [600.0, 1000.0], [30.0, 40.0])
    channel = ReplayChannel(loss, start_utc=100.0, track=track, background_probability=1e-6)
    assert channel.window_utc == (100.0, 120.0)
    before, after = channel.conditions(99.0), channel.conditions(120.0)
    assert not before.transmitting and before.until_utc == 100.0
    assert not after.transmitting and math.isinf(after.until_utc)
    # 5 s in: range 800 km, halfway along the loss curve: 35 dB.
    mid = channel.conditions(105.0)
    assert mid.transmitting and mid.until_utc == 120.0
    assert mid.loss_db == pytest.approx(35.0)
    assert mid.details["range_km"] == pytest.approx(800.0)
    assert mid.background_probability == 1e-6
    assert channel.conditions(110.0).transmittance == pytest.approx(1e-3)


def test_a_time_trace_replays_without_a_track() -> None:
    channel = ReplayChannel(LossTrace("time_s", [0.0, 4.0], [20.0, 30.0]), start_utc=50.0)
    assert channel.window_utc == (50.0, 54.0)
    assert channel.conditions(51.0).loss_db == pytest.approx(22.5)


def test_bad_recordings_are_refused_with_the_reason() -> None:
    by_range = LossTrace("slant_range_km", [600.0, 1000.0], [30.0, 40.0])
    with pytest.raises(ConfigError, match="needs a range track"):
        ReplayChannel(by_range, start_utc=0.0)
    with pytest.raises(ConfigError, match="must be against slant_range_km"):
        ReplayChannel(LossTrace("time_s", [0.0, 1.0], [1.0, 2.0]), 0.0, RangeTrack.constant(700.0, 1.0))
    with pytest.raises(ConfigError, match="background_probability"):
        ReplayChannel(by_range, 0.0, RangeTrack.constant(700.0, 1.0), background_probability=1.0)
    with pytest.raises(ConfigError, match="track.csv line 3: time_s must increase, got 0 after 0"):
        RangeTrack.parse_csv("time_s,slant_range_km\n0,700\n0,710\n", name="track.csv")
    with pytest.raises(ConfigError, match="line 1: the header must be 'time_s,slant_range_km'"):
        RangeTrack.parse_csv("time_s,loss_db\n0,30\n1,31\n")
    with pytest.raises(ConfigError, match="line 2: values must be finite with slant_range_km > 0"):
        RangeTrack.parse_csv("time_s,slant_range_km\n0,-5\n1,700\n")


def test_the_packaged_pass_spans_274_s_from_1196_km_down_to_645_km() -> None:
    channel = micius_2017_channel(START)
    assert channel.duration_s == 274.0
    assert channel.conditions(START).details["range_km"] == pytest.approx(1196.3)
    closest = min(float(channel.conditions(START + t).details["range_km"]) for t in range(274))
    assert closest == pytest.approx(645.0)
    # The loss curve's ends: 29.75 dB at 645 km, 40.34 dB at 1200 km.
    held = micius_2017_channel(START, track=RangeTrack.constant(1200.0, 10.0))
    assert held.conditions(START + 5.0).loss_db == pytest.approx(40.34)


# --------------------------------------------------------------------------- through the stack


def test_a_recorded_run_needs_a_channel_model() -> None:
    config = LinkProtocolConfig("fibre", micius_2017_physics())
    with pytest.raises(LocalProtocolError, match="channel model"):
        run_pass(config, rate_hz=1e6, start_utc=0.0, end_utc=1.0, frame_slots=1000, seed=1)


def test_the_replayed_pass_lands_within_the_published_figures() -> None:
    run = _replay()
    assert run.pulses == 274 * 10**8  # every slot of the 274 s window at 100 MHz, none outside it
    (block,) = run.blocks
    assert isinstance(block.event, BlockAccepted) and run.keys_match
    assert block.closed_utc == pytest.approx(START + 274.0)  # the pass's end closed it
    assert block.event.stats.sifted_bits == run.sifted_bits  # the frame record and the block agree
    assert _within_published("detections", run.detections), run.detections
    assert _within_published("sifted_bits", run.sifted_bits), run.sifted_bits
    assert _within_published("qber", run.qber), run.qber
    # At closest approach: the frames within 5 km of 645 km (25 s of the pass).
    near = [f for f in run.frames if float(f.conditions.details["range_km"]) <= 650.0]
    assert len(near) == 25
    _, sifted_rate = PassRun.rates(near)
    assert _within_published("sifted_rate_645km_bps", sifted_rate), sifted_rate


def test_the_sifted_rate_at_1200_km_is_the_published_one() -> None:
    # The digitised track turns at 1196 and 1189 km: hold the satellite at 1200 km instead (the
    # loss curve's last point, 40.34 dB) for 20 s through the same link.
    held = _run(micius_2017_channel(START, track=RangeTrack.constant(1200.0, 20.0)), seed=1200)
    _, sifted_rate = PassRun.rates(held.frames)
    assert _within_published("sifted_rate_1200km_bps", sifted_rate), sifted_rate


def test_detections_and_qber_match_the_optical_model_frame_by_frame() -> None:
    run = _replay()
    base = micius_2017_physics()
    p = base.class_probabilities
    gain = error = 0.0
    for frame in run.frames:
        phys = physics_at(base, frame.conditions)
        for cls in range(3):
            q = frame.n_slots * p[cls] * expected_gain(phys, cls)
            gain += q
            error += q * exact_error_rate(phys, cls)
    assert abs(run.detections - gain) < 5.0 * math.sqrt(gain)
    # Both bases are equally likely at both ends: half the detections are sifted.
    assert abs(run.sifted_bits - 0.5 * run.detections) < 5.0 * math.sqrt(0.25 * run.detections)
    expected_qber = error / gain
    (block,) = run.blocks
    key_bits = block.event.stats.key_bits
    assert abs(run.qber - expected_qber) < 5.0 * math.sqrt(expected_qber * (1 - expected_qber) / key_bits)
