"""How many pulse slots one frame carries (qcinode.node.runtime.frame_slots, next_frame_slots).

A frame costs both ends a fixed amount of work whatever its size, so a slow
fibre link sends few long frames; a fast link a quarter block per frame; a
satellite downlink, whose loss changes by the second, frames of at most one
second.
"""

from __future__ import annotations

import dataclasses

import pytest

from qcinode.core.pipeline import LinkProtocolConfig
from qcinode.node.runtime import (
    FIXED_CHANNEL_FRAME_WALL_S,
    FRAME_WALL_S,
    expected_key_bits_per_slot,
    frame_slots,
    next_frame_slots,
    protocol_config,
)
from qcinode.space import downlink_channel
from qcinode.topology import parse_topology


def _fibre(rate_hz: float, block_bits: int = 50_000) -> LinkProtocolConfig:
    topology = parse_topology(f"""
name: fibre
defaults:
  source: {{rate_hz: {rate_hz}}}
  postprocessing: {{block_bits: {block_bits}}}
nodes: [{{name: a}}, {{name: b}}]
links:
  - {{between: [a, b], length_km: 10}}
""")
    (link,) = topology.links
    return protocol_config(link)


def _quarter_block(config: LinkProtocolConfig) -> float:
    return config.block_bits / 4 / expected_key_bits_per_slot(config.physics)


def test_a_slow_fibre_link_sends_frames_of_the_longest_wall_time() -> None:
    config = _fibre(1e5)
    assert _quarter_block(config) > 1e5 * FIXED_CHANNEL_FRAME_WALL_S  # a quarter block takes longer than that
    assert frame_slots(config, 1e5, 1.0) == int(1e5 * FIXED_CHANNEL_FRAME_WALL_S)
    assert frame_slots(config, 1e5, 2.0) == int(2e5 * FIXED_CHANNEL_FRAME_WALL_S)  # emulated time runs twice as fast


def test_a_fast_link_and_speed_max_send_a_quarter_block() -> None:
    config = _fibre(1e9)
    assert frame_slots(config, 1e9, 1.0) == int(_quarter_block(config))
    assert frame_slots(_fibre(1e5), 1e5, None) == int(_quarter_block(_fibre(1e5)))


def test_a_frame_carries_no_more_than_the_open_block_needs() -> None:
    config = _fibre(1e9)
    per_slot = expected_key_bits_per_slot(config.physics)
    assert next_frame_slots(config, 1e9, 1.0, key_bits_needed=1_000) == int(1_000 * 1.05 / per_slot) + 1_000


def test_a_satellite_downlink_sends_frames_of_at_most_a_second() -> None:
    topology = parse_topology("""
name: pass
emulation: {start: "2026-06-01T00:00:00Z"}
defaults:
  source: {rate_hz: 1.0e5}
nodes:
  - {name: matera, location: {latitude_deg: 40.6486, longitude_deg: 16.7046, altitude_m: 536}}
  - name: sat
    satellite:
      orbit: {altitude_km: 500, sun_synchronous: true, raan_deg: 0, epoch: "2026-06-01T00:00:00Z"}
links:
  - {between: [sat, matera]}
""")
    (link,) = topology.links
    config = protocol_config(link, downlink_channel(topology, link))
    assert config.channel is not None
    assert frame_slots(config, 1e5, 1.0) == int(1e5 * FRAME_WALL_S)
    fixed = dataclasses.replace(config, channel=None)
    assert frame_slots(fixed, 1e5, 1.0) == int(1e5 * FIXED_CHANNEL_FRAME_WALL_S)


@pytest.mark.parametrize("rate_hz", [1e3, 1e5])
def test_frames_have_at_least_a_thousand_slots(rate_hz: float) -> None:
    assert frame_slots(_fibre(rate_hz), rate_hz, 1e-3) == 1_000
