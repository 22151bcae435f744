"""The space segment of a topology: its satellites, ground stations and downlinks as core models.

The topology (:mod:`qcinode.topology`) says what the user wrote; the core
(:mod:`qcinode.core.orbit`, :mod:`qcinode.core.freespace`,
:mod:`qcinode.core.downlink`) computes. This module maps one onto the other,
for the node (each downlink's channel over time), ``qcinode passes`` and the
status of free-space links.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from .core.downlink import DownlinkChannel
from .core.freespace import FreeSpaceLink, LossTrace, micius_2017_paths
from .core.orbit import CircularOrbit, GroundStation, Pass, Satellite, TleSatellite, sun_synchronous_inclination_deg
from .errors import ConfigError
from .topology import LinkConfig, NodeConfig, Topology

__all__ = ["LinkPasses", "downlink_channel", "ground_station", "link_passes", "loss_trace", "satellite_model"]


def satellite_model(node: NodeConfig, default_epoch_utc: float) -> Satellite:
    """The orbit of satellite ``node``: SGP4 for two-line elements, else a circular orbit.

    Args:
        default_epoch_utc: The epoch of circular-orbit elements that name
            none (the emulation's start).
    """
    config = node.satellite
    if config is None:
        raise ConfigError(f"node {node.name!r} is not a satellite")
    if config.tle is not None:
        return TleSatellite(config.tle[0], config.tle[1])
    orbit = config.orbit
    assert orbit is not None
    epoch = orbit.epoch_utc if orbit.epoch_utc is not None else default_epoch_utc
    inclination = sun_synchronous_inclination_deg(orbit.altitude_km) if orbit.sun_synchronous else orbit.inclination_deg
    assert inclination is not None
    return CircularOrbit(
        altitude_km=orbit.altitude_km,
        inclination_deg=inclination,
        raan_deg=orbit.raan_deg,
        ltan=orbit.ltan,
        epoch_utc=epoch,
        argument_of_latitude_deg=orbit.argument_of_latitude_deg,
    )


def ground_station(node: NodeConfig) -> GroundStation:
    """The geodetic position of site ``node``."""
    if node.location is None:
        raise ConfigError(f"node {node.name!r} has no location")
    loc = node.location
    return GroundStation(loc.latitude_deg, loc.longitude_deg, loc.altitude_m)


def loss_trace(name_or_path: str) -> LossTrace:
    """A loss trace by built-in name (``micius-2017``) or CSV path.

    :func:`qcinode.topology.load_topology` has made a relative path absolute
    (relative to the topology file).
    """
    if name_or_path == "micius-2017":
        return LossTrace.from_csv(micius_2017_paths().link_loss)
    return LossTrace.from_csv(Path(name_or_path))


def _default_epoch(topology: Topology) -> float:
    emulation = topology.emulation
    start = emulation.start_utc if emulation.start_utc is not None else emulation.wall_start_utc
    return start if start is not None else 0.0


def free_space_link(topology: Topology, link: LinkConfig) -> FreeSpaceLink:
    """Satellite, station, optics and trace of free-space ``link``."""
    config = link.free_space
    if config is None:
        raise ConfigError(f"link {link.link_id} is not a free-space link")
    satellite = satellite_model(topology.node(link.alice), _default_epoch(topology))
    station = ground_station(topology.node(link.bob))
    trace = loss_trace(config.loss_trace) if config.loss_trace is not None else None
    start = 0.0 if trace is not None and trace.variable == "time_s" else None
    return FreeSpaceLink(satellite, station, config.optics(), trace, start)


def downlink_channel(topology: Topology, link: LinkConfig) -> DownlinkChannel:
    """The quantum channel over time of free-space ``link`` (the same at both ends)."""
    config = link.free_space
    assert config is not None
    return DownlinkChannel(
        free_space_link(topology, link),
        detector_efficiency=link.detector.efficiency,
        extra_loss_db=config.extra_loss_db,
        fading=config.fading,
        fading_seed=zlib.crc32(link.link_id.encode()),
    )


@dataclass(frozen=True, slots=True)
class LinkPasses:
    """The passes of one satellite–station link in a window."""

    link_id: str
    satellite: str
    station: str
    passes: tuple[Pass, ...]


def link_passes(topology: Topology, start_utc: float, end_utc: float) -> list[LinkPasses]:
    """Every pass of every free-space link of ``topology`` in ``[start_utc, end_utc]``, above each link's mask."""
    out = []
    for link in topology.links:
        if link.free_space is None:
            continue
        fsl = free_space_link(topology, link)
        out.append(LinkPasses(link.link_id, link.alice, link.bob, tuple(fsl.passes(start_utc, end_utc))))
    return out
