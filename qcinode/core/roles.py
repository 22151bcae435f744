"""The two ends of a QKD link.

Theory of operation:
    Every link has a transmitting end (Alice, who owns the source) and a
    receiving end (Bob, who owns the detector). The topology file names
    Alice first (docs/design.md §1). Roles also decide who may *initiate* the use
    of which half of each shared key block (see ``qcinode.core.pool``), so
    they are an ``enum.Enum``, never ints or booleans (docs/design.md §4).
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    """Which end of a link we are."""

    ALICE = "alice"
    BOB = "bob"

    @property
    def peer(self) -> Role:
        """The role of the other end of the link."""
        return Role.BOB if self is Role.ALICE else Role.ALICE
