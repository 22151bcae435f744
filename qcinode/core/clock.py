"""The network clock: one emulated UTC the whole network agrees on (pure).

Theory of operation:
    * **One clock.** Emulated UTC is ``start + speed × (wall − wall_start)``:
      ``start`` is the emulated instant (``emulation.start``), ``wall_start``
      the wall-clock instant at which the emulation was at ``start`` and
      ``speed`` the emulated seconds per wall second. Every node reads the
      same three numbers from its topology (``qcinode up`` and
      ``qcinode deploy k8s`` write ``wall_start`` into the topology they
      give the nodes), so every process — restarted ones included —
      derives the same emulated UTC from its own synchronised wall clock.
    * **Links never run ahead of it.** A link's pulses are stamped with the
      link's own emulated position; a frame that covers ``[t, t + d)`` is
      emitted only once the clock has passed ``t + d``. When the CPU cannot
      keep up the link falls behind: ``clock.now() − t`` is its lag, shown in
      status. It never skips slots to catch up.
    * **"max".** Without satellites the emulation may run as fast as the CPU
      allows (``speed: max``); there is then no network clock and each link's
      emulated time is simply the time its pulses took. Passes need a clock,
      so topologies with satellites refuse ``max``.
    * Times are POSIX seconds (UTC, leap seconds ignored), floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["NetworkClock"]


@dataclass(frozen=True, slots=True)
class NetworkClock:
    """Emulated UTC as a function of wall-clock UTC.

    Attributes:
        start_utc: Emulated instant at ``wall_start_utc`` (POSIX seconds).
        wall_start_utc: Wall-clock instant at which the emulation stood at
            ``start_utc`` (POSIX seconds).
        speed: Emulated seconds per wall second, > 0.
    """

    start_utc: float
    wall_start_utc: float
    speed: float

    def __post_init__(self) -> None:
        for name in ("start_utc", "wall_start_utc", "speed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}: must be a finite number, got {value!r}")
        if self.speed <= 0:
            raise ConfigError(f"speed: must be > 0, got {self.speed!r}")

    def now(self, wall_utc: float) -> float:
        """Emulated UTC at wall-clock instant ``wall_utc``."""
        return self.start_utc + self.speed * (wall_utc - self.wall_start_utc)

    def wall_at(self, emulated_utc: float) -> float:
        """The wall-clock instant at which the emulation reaches ``emulated_utc``."""
        return self.wall_start_utc + (emulated_utc - self.start_utc) / self.speed

    def wall_delay_s(self, emulated_utc: float, wall_utc: float) -> float:
        """Wall seconds from ``wall_utc`` until the clock reaches ``emulated_utc`` (≤ 0: already there)."""
        return self.wall_at(emulated_utc) - wall_utc
