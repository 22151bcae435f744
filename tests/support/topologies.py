"""Topologies shared by tests: small YAML texts the fixtures and rigs write to disk."""

from __future__ import annotations

#: Two nodes, one 20 km link, 50,000-bit blocks at speed max: the smallest network that makes key quickly.
TWO_NODES = """
name: pair
defaults:
  source: {rate_hz: 1.0e9}
  detector: {efficiency: 0.1, dark_count_probability: 1.0e-6, misalignment_error: 0.01}
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - name: alpha
    saes: [alpha-app]
  - name: beta
    saes: [beta-app]
links:
  - between: [alpha, beta]
    length_km: 20
"""
