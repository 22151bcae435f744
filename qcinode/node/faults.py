"""Faults injected on a link's classical channel, switched on and off at runtime.

An operator (``qcinode fault``), a topology (``links[i].fault``) or a test
sets one :class:`FaultConfig` per link at a node. The node then tampers with
what it *sends* on that link, as an active attacker or a broken network
between the two nodes would:

========== ==================================================================
kind       effect on each affected outgoing message
========== ==================================================================
flip       one bit of one of its byte fields (a tag, a seed, parities, a
           ciphertext) is inverted
drop       it is never sent; a dropped relay hop fails at once, as a timeout
           would
delay      it leaves ``delay_ms`` late (a slow peer, with probability 1)
reorder    it is held back and sent after the next message in the same
           direction
replay     it is sent twice
partition  nothing is sent and nothing is accepted from the peer: sessions
           end, reconnection is refused, adverts and relays stop (a firewall
           between the two nodes); ``probability`` is ignored
========== ==================================================================

``channel`` limits a fault to the post-processing session
(``postprocessing``), to relay hops (``relay``) or applies it to both
(``all``). Advertisements are only ever affected by ``partition``.

The fault never touches key material directly: every effect is one an
attacker on the wire could have, so the protocol's answers to it
(authentication failures, refused hops, resynchronisation) are the real ones.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..topology import FaultConfig
from ..transport.pb import link_pb2 as pb
from ..transport.pb import network_pb2 as npb

__all__ = ["NO_FAULT", "FaultInjector", "fault_from_request"]

NO_FAULT = FaultConfig(kind="none")


def fault_from_request(kind: str, probability: float, delay_ms: float, channel: str) -> FaultConfig:
    """A fault from an admin request, validated as the topology's ``fault`` is."""
    return FaultConfig.from_mapping(
        {"kind": kind or "none", "probability": probability, "delay_ms": delay_ms, "channel": channel or "all"}, "fault"
    )


def _flip_one_bit(message: Any, rng: random.Random) -> bool:
    """Inverts one bit of one non-empty bytes field (depth first); False if none."""
    candidates: list[tuple[Any, str]] = []

    def walk(msg: Any) -> None:
        for field, value in msg.ListFields():
            if field.type == field.TYPE_BYTES and not field.is_repeated and value:
                candidates.append((msg, field.name))
            elif field.type == field.TYPE_MESSAGE:
                for item in value if field.is_repeated else [value]:
                    walk(item)

    walk(message)
    if not candidates:
        return False
    owner, name = rng.choice(candidates)
    data = bytearray(getattr(owner, name))
    bit = rng.randrange(len(data) * 8)
    data[bit // 8] ^= 1 << (bit % 8)
    setattr(owner, name, bytes(data))
    return True


class FaultInjector:
    """A node's faults, one per link, and the tampering they cause."""

    def __init__(self, initial: dict[str, FaultConfig] | None = None, *, seed: int | None = None) -> None:
        self._specs: dict[str, FaultConfig] = {k: v for k, v in (initial or {}).items() if v.active}
        self._rng = random.Random(seed)  # which messages are hit; never key material
        self._held: dict[tuple[str, str], list[Any]] = {}
        self._cuts: dict[str, asyncio.Event] = {}
        self._contact: dict[str, Callable[[], bool]] = {}
        self.affected: Counter[str] = Counter()  # per link: messages tampered with

    # -- configuration --------------------------------------------------
    def get(self, link_id: str) -> FaultConfig:
        return self._specs.get(link_id, NO_FAULT)

    def set(self, link_id: str, spec: FaultConfig) -> None:
        """Switches ``link_id``'s fault to ``spec`` (``NO_FAULT`` clears it)."""
        if spec.active:
            self._specs[link_id] = spec
        else:
            self._specs.pop(link_id, None)
        self._held = {k: v for k, v in self._held.items() if k[0] != link_id}
        self.refresh_cut(link_id)

    def set_contact(self, link_id: str, in_contact: Callable[[], bool]) -> None:
        """``link_id``'s classical channel exists only while ``in_contact()`` (a satellite link in ``contact`` mode).

        Outside contact the link behaves as partitioned; call
        :meth:`refresh_cut` when contact begins or ends.
        """
        self._contact[link_id] = in_contact
        self.refresh_cut(link_id)

    def out_of_contact(self, link_id: str) -> bool:
        """Whether ``link_id`` has a contact schedule and is outside it now."""
        in_contact = self._contact.get(link_id)
        return in_contact is not None and not in_contact()

    def refresh_cut(self, link_id: str) -> None:
        """Sets the link's cut event while it is partitioned; gives later waiters a fresh one once it is not."""
        event = self._cuts.get(link_id)
        if self.partitioned(link_id):
            if event is not None:
                event.set()
        elif event is not None and event.is_set():
            del self._cuts[link_id]  # later waiters get a fresh, unset event

    def partitioned(self, link_id: str) -> bool:
        """A partition fault, or a contact-mode link outside its contact: nothing crosses the classical channel."""
        return self.get(link_id).kind == "partition" or self.out_of_contact(link_id)

    def cut_event(self, link_id: str) -> asyncio.Event:
        """An event set when ``link_id`` is partitioned (already set if it is)."""
        event = self._cuts.get(link_id)
        if event is None:
            event = self._cuts[link_id] = asyncio.Event()
        if self.partitioned(link_id):
            event.set()
        return event

    # -- tampering --------------------------------------------------------
    def _hit(self, spec: FaultConfig) -> bool:
        return spec.probability >= 1.0 or self._rng.random() < spec.probability

    async def classical(self, link_id: str, direction: str, message: pb.ClassicalMessage) -> list[pb.ClassicalMessage]:
        """What to send on the post-processing session instead of ``message``."""
        spec = self.get(link_id)
        if spec.kind == "partition":
            self.affected[link_id] += 1
            return []
        held_key = (link_id, direction)
        held = self._held.pop(held_key, [])
        if not spec.applies_to("postprocessing") or not self._hit(spec):
            return [message, *held]
        self.affected[link_id] += 1
        if spec.kind == "delay":
            await asyncio.sleep(spec.delay_ms / 1000.0)
            return [message, *held]
        if spec.kind == "drop":
            return held
        if spec.kind == "replay":
            return [message, message, *held]
        if spec.kind == "reorder":
            if held:
                return [message, *held]  # already swapping: this one goes first
            self._held[held_key] = [message]
            return []
        changed = pb.ClassicalMessage()
        changed.CopyFrom(message)
        if not _flip_one_bit(changed, self._rng):
            self.affected[link_id] -= 1
            return [message, *held]
        return [changed, *held]

    async def relay(self, link_id: str, hop: npb.RelayHop) -> list[npb.RelayHop]:
        """What to send instead of relay hop ``hop``: [] is a lost hop.

        ``reorder`` on a relay hop (one request, one reply) is a random delay
        of up to ``2 * delay_ms`` (50 ms when unset), so concurrent hops on
        the link arrive out of order.
        """
        spec = self.get(link_id)
        if spec.kind == "partition":
            self.affected[link_id] += 1
            return []
        if not spec.applies_to("relay") or not self._hit(spec):
            return [hop]
        self.affected[link_id] += 1
        if spec.kind == "delay":
            await asyncio.sleep(spec.delay_ms / 1000.0)
            return [hop]
        if spec.kind == "reorder":
            await asyncio.sleep(self._rng.uniform(0.0, 2.0 * (spec.delay_ms or 50.0)) / 1000.0)
            return [hop]
        if spec.kind == "drop":
            return []
        if spec.kind == "replay":
            return [hop, hop]
        changed = npb.RelayHop()
        changed.CopyFrom(hop)
        _flip_one_bit(changed, self._rng)
        return [changed]
