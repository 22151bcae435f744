"""The same pass by night and by day through the whole stack: the daylight sky leaves no key.

A satellite on a sun-synchronous 500 km orbit passes over Matera near local
midnight on 21 March 2027. The same orbital elements with an epoch 182
sidereal days later put the satellite at the same place in the Earth-fixed
frame at the same time after the epoch, so the pass repeats with the same
elevation and range second by second; only the Sun has moved half way
round the sky, and the pass now comes near local noon. Both links are built
from a topology with every optical, detector and post-processing default (an
850 nm multimode receiver, 100 µrad field of view, 1 nm filter) through the
code a node uses (:func:`qcinode.space.downlink_channel`,
:func:`qcinode.node.runtime.protocol_config`) and run through
:func:`qcinode.core.pair.pump_timeline`. Only the source rate is lowered
(5 MHz instead of 1 GHz) to keep the test short: the QBER does not depend on
it, since the sky's background is counted per detection gate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qcinode.core.channel import physics_at
from qcinode.core.downlink import DownlinkChannel
from qcinode.core.orbit import CircularOrbit, Pass, format_utc, look_angles, parse_utc, sun_elevation_deg
from qcinode.core.passrun import PassRun, run_pass
from qcinode.core.physics import exact_error_rate, expected_gain
from qcinode.core.pipeline import BlockAborted, BlockAccepted, LinkProtocolConfig
from qcinode.node.runtime import protocol_config
from qcinode.space import downlink_channel
from qcinode.topology import parse_topology

RATE_HZ = 5.0e6
NIGHT_EPOCH = parse_utc("2027-03-21T00:00:00Z")
#: One turn of the Earth relative to the stars: 86400 s / 1.00273790935, the rate of GMST (IAU 1982).
SIDEREAL_DAY_S = 86164.0905
#: Half a year in whole sidereal days: the Sun's right ascension moves by ≈ 179°.
SHIFT_S = 182 * SIDEREAL_DAY_S


def _raan_deg() -> float:
    """The RAAN of an orbit whose ascending node is at local midnight at the March 2027 equinox."""
    orbit = CircularOrbit.sun_synchronous(altitude_km=500.0, ltan="00:00", epoch_utc=NIGHT_EPOCH)
    return math.degrees(orbit.raan_rad(NIGHT_EPOCH)) % 360.0


def _link(epoch_utc: float) -> tuple[DownlinkChannel, LinkProtocolConfig]:
    """The downlink of a topology with every default but the source rate, elements at ``epoch_utc``."""
    topology = parse_topology(f"""
name: day-night
emulation: {{start: "{format_utc(epoch_utc)}"}}
defaults:
  source: {{rate_hz: {RATE_HZ}}}
nodes:
  - {{name: matera, location: {{latitude_deg: 40.6486, longitude_deg: 16.7046, altitude_m: 536}}}}
  - name: sat
    satellite:
      orbit: {{altitude_km: 500, sun_synchronous: true, raan_deg: {_raan_deg():.9f}, epoch: "{format_utc(epoch_utc)}"}}
links:
  - {{between: [sat, matera]}}
""")
    (link,) = topology.links
    channel = downlink_channel(topology, link)
    return channel, protocol_config(link, channel)


def _night_pass(channel: DownlinkChannel) -> Pass:
    """The high pass of that night: above 60°, the Sun 18° or more below the horizon."""
    station = channel.link.station
    (found,) = [p for p in channel.passes(NIGHT_EPOCH, NIGHT_EPOCH + 86400.0)
                if p.max_elevation_deg > 60.0 and sun_elevation_deg(station, p.culmination_utc) < -18.0]
    return found


def _run(config: LinkProtocolConfig, found: Pass, seed: int) -> PassRun:
    return run_pass(config, rate_hz=RATE_HZ, start_utc=found.rise_utc - 10.0, end_utc=found.set_utc + 10.0,
                    frame_slots=10**9, seed=seed)


def _expected_test_qber(run: PassRun, config: LinkProtocolConfig) -> float:
    """The sifted error rate the optical model predicts, weighted over the pass's frames."""
    base = config.physics
    gain = error = 0.0
    for frame in run.frames:
        phys = physics_at(base, frame.conditions)
        for cls, p in enumerate(base.class_probabilities):
            q = frame.n_slots * p * expected_gain(phys, cls)
            gain += q
            error += q * exact_error_rate(phys, cls)
    return error / gain


def test_the_shifted_elements_repeat_the_pass_with_the_sun_on_the_other_side() -> None:
    night, _ = _link(NIGHT_EPOCH)
    day, _ = _link(NIGHT_EPOCH + SHIFT_S)
    found = _night_pass(night)
    (twin,) = day.passes(found.rise_utc + SHIFT_S - 60.0, found.rise_utc + SHIFT_S + 60.0)
    assert twin.rise_utc - SHIFT_S == pytest.approx(found.rise_utc, abs=0.5)
    assert twin.max_elevation_deg == pytest.approx(found.max_elevation_deg, abs=0.01)
    times = np.linspace(found.rise_utc, found.set_utc, 40)
    el_n, az_n, range_n = look_angles(night.link.satellite, night.link.station, times)
    el_d, az_d, range_d = look_angles(day.link.satellite, day.link.station, times + SHIFT_S)
    assert np.max(np.abs(el_n - el_d)) < 0.01 and np.max(np.abs(range_n - range_d)) < 0.1
    assert np.max(np.abs((az_n - az_d + 180.0) % 360.0 - 180.0)) < 0.01
    sun_night = sun_elevation_deg(night.link.station, times)
    sun_day = sun_elevation_deg(day.link.station, times + SHIFT_S)
    assert np.max(sun_night) < -40.0 and np.min(sun_day) > 40.0
    # Local mean solar time at culmination: 23:24 by night, 11:28 by day.
    local_h = (twin.culmination_utc / 3600.0 + day.link.station.longitude_deg / 15.0) % 24.0
    assert abs(local_h - 12.0) < 1.0
    assert day.conditions(twin.culmination_utc).note == "daylight"
    assert night.conditions(found.culmination_utc).note == ""


def test_by_night_the_pass_makes_key_by_day_the_sky_drowns_it() -> None:
    night, night_config = _link(NIGHT_EPOCH)
    day, day_config = _link(NIGHT_EPOCH + SHIFT_S)
    found = _night_pass(night)
    (twin,) = day.passes(found.rise_utc + SHIFT_S - 60.0, found.rise_utc + SHIFT_S + 60.0)

    # The sky at culmination, per slot: ~1e-9 clicks at night, ~4e-3 by day (0.04 photons per
    # 1 ns gate through a 1 m, 100 µrad, 1 nm multimode receiver, times the detector's 0.1).
    assert night.conditions(found.culmination_utc).background_probability < 1e-8
    assert day.conditions(twin.culmination_utc).background_probability > 1e-3

    by_night = _run(night_config, found, seed=1)
    accepted = [b for b in by_night.blocks if isinstance(b.event, BlockAccepted)]
    assert accepted and by_night.secret_bits > 0 and by_night.keys_match
    assert by_night.qber < 0.03

    by_day = _run(day_config, twin, seed=2)
    assert by_day.pulses == by_night.pulses  # the same pass, slot for slot
    assert by_day.detections > 20 * by_night.detections  # background clicks
    assert by_day.blocks and all(isinstance(b.event, BlockAborted) for b in by_day.blocks)
    assert by_day.secret_bits == 0
    assert all(b.event.stats.test_qber >= 0.11 for b in by_day.blocks)
    expected = _expected_test_qber(by_day, day_config)
    assert expected > 0.45
    bits = sum(b.event.stats.test_bits for b in by_day.blocks)
    assert abs(by_day.test_qber - expected) < 5.0 * math.sqrt(expected * (1.0 - expected) / bits)

