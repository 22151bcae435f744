"""Runs several nodes' relay engines in one process, without sockets (the relay's ``pump``).

:func:`relay_network` builds a network of :class:`~.engine.RelayEngine`
nodes over real link key pools (:class:`~qcinode.core.pool.LinkKeyPool`,
filled with the same random blocks at both ends) and real routing databases
(:class:`~qcinode.core.routing.LinkStateDatabase`, fed with every node's
advert). :class:`RelayNetwork` then plays every driver at once: it performs
each node's actions — saves, key stores, hops between nodes, answers — and
feeds the results back, until nothing is left to do. Everything is seeded:
the same seed gives the same keys, paths and ledgers.

Hops travel through one queue of deliveries. By default it is first in,
first out; with ``shuffle=True`` the next delivery is drawn at random (from
the seed), so concurrent requests and hops interleave in every order.
Saves and key stores are answered at once, as the node's driver does.

Faults are injected per directed link with :meth:`RelayNetwork.fault`
(:class:`HopFault`: a hop lost, refused, timed out after it arrived, forged,
replayed, or the link cut), and on storage with :meth:`RelayNetwork.fail_saves`
and :meth:`RelayNetwork.fail_store`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from qcinode.core.pool import KeyRange, LinkKeyPool
from qcinode.core.relay.context import LinkEnd, RelaySettings
from qcinode.core.relay.engine import RelayEngine
from qcinode.core.relay.messages import (
    AnswerHop,
    DeliverKeys,
    FailRequest,
    HopAnswered,
    HopArrived,
    KeysRequested,
    KeyStored,
    LinkSaved,
    Refusal,
    RefusalReason,
    RelayAction,
    RelayEvent,
    SaveLink,
    SendHop,
    StoreKey,
)
from qcinode.core.roles import Role
from qcinode.core.routing import LinkAdvert, LinkStateDatabase
from qcinode.errors import LocalProtocolError

__all__ = ["HarnessLink", "HarnessNode", "HopFault", "RelayNetwork", "SentHop", "relay_network"]


class HopFault(enum.Enum):
    """What happens to a hop sent on a faulty directed link."""

    #: Never arrives; the sender learns ``LOST``.
    LOSE = "lose"
    #: The next node cannot be reached: it never sees the hop (``PEER_UNAVAILABLE``).
    REFUSE = "refuse"
    #: Arrives and is handled, but its answer is lost: the sender learns ``TIMEOUT``.
    TIMEOUT = "timeout"
    #: One bit of the ciphertext is inverted on the way (a forged hop).
    FLIP = "flip"
    #: Arrives twice; the sender hears the first answer.
    REPLAY = "replay"


@dataclass(slots=True)
class _Fault:
    kind: HopFault
    remaining: int | None  # None: every hop


@dataclass(slots=True)
class HarnessLink:
    """One link of the harness: its two ends' pools, and whether it is cut."""

    link_id: str
    alice: str
    bob: str
    pools: dict[str, LinkKeyPool]  # node -> its end
    cut: bool = False


class _MemoryKeyStore:
    """A node's key store as a dict, with the SAE key store's duplicate rule."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, tuple[str, ...], bytes]] = {}
        self.failure: str | None = None

    def put(self, key_id: str, master_sae: str, slave_saes: tuple[str, ...], key: bytes) -> KeyStored | Refusal:
        if self.failure is not None:
            return Refusal(RefusalReason.STORAGE_FAILED, self.failure)
        stored = self.keys.get(key_id)
        if stored is not None:
            if stored == (master_sae, slave_saes, key):
                return KeyStored(0, duplicate=True)
            return Refusal(RefusalReason.DUPLICATE, f"key {key_id} is already stored with another key")
        self.keys[key_id] = (master_sae, slave_saes, key)
        return KeyStored(0)


@dataclass(slots=True)
class HarnessNode:
    """One node of the harness: its engine, routing database, key store and what it reported."""

    name: str
    engine: RelayEngine
    routes: LinkStateDatabase
    store: _MemoryKeyStore
    notices: list[RelayAction] = field(default_factory=list)
    failing_saves: set[str] = field(default_factory=set)  # link IDs whose saves fail here


@dataclass(frozen=True, slots=True)
class SentHop:
    """A hop that left a node (for checks that no pad byte is used twice)."""

    link_id: str
    sender: str
    receiver: str
    pad: tuple[KeyRange, ...]


class _Neighbours:
    def __init__(self, network: RelayNetwork, node: str) -> None:
        self._network = network
        self._node = node

    def link_to(self, peer: str) -> LinkEnd | None:
        link = self._network._link_between(self._node, peer)
        if link is None:
            return None
        return LinkEnd(link.link_id, peer, link.pools[self._node], cut=link.cut)


class RelayNetwork:
    """Relay engines of several nodes run together in one process (see the module docstring)."""

    def __init__(
        self,
        links: Sequence[tuple[str, str]],
        saes: Mapping[str, str],
        *,
        seed: int = 0,
        block_bytes: int = 4096,
        blocks: int = 1,
        settings: RelaySettings | None = None,
        shuffle: bool = False,
    ) -> None:
        names = sorted({n for link in links for n in link} | set(saes.values()))
        seeds = np.random.SeedSequence(seed).spawn(len(names) + 2)
        pool_rng, self._order_rng = np.random.default_rng(seeds[0]), np.random.default_rng(seeds[1])
        self._links: dict[frozenset[str], HarnessLink] = {}
        for alice, bob in links:
            if alice == bob or frozenset((alice, bob)) in self._links:
                raise LocalProtocolError(f"link {alice}-{bob}: a link joins two different nodes, once")
            link_id = f"{alice}-{bob}"
            pools = {alice: LinkKeyPool(link_id, Role.ALICE), bob: LinkKeyPool(link_id, Role.BOB)}
            for index in range(blocks):
                data = pool_rng.bytes(block_bytes)
                for pool in pools.values():
                    pool.add_block(f"{link_id}/{index}", data)
            self._links[frozenset((alice, bob))] = HarnessLink(link_id, alice, bob, pools)
        self.saes = dict(saes)
        self.shuffle = shuffle
        self.nodes: dict[str, HarnessNode] = {}
        for name, node_seed in zip(names, seeds[2:], strict=True):
            routes = LinkStateDatabase(name)
            rng = np.random.default_rng(node_seed)
            engine = RelayEngine(name, neighbours=_Neighbours(self, name), routes=routes, random_bytes=rng.bytes, settings=settings)
            self.nodes[name] = HarnessNode(name, engine, routes, _MemoryKeyStore())
        self.sent: list[SentHop] = []
        self.outcomes: dict[str, DeliverKeys | FailRequest] = {}
        self._faults: dict[tuple[str, str], _Fault] = {}
        self._queue: deque[tuple[str, RelayEvent]] = deque()
        self._tokens: dict[Hashable, tuple[str, int, bool]] = {}  # token -> (sender, its ref, answer lost)
        self._next_token = 0
        self._next_request = 0
        self._clock = 0.0
        self.advertise()

    # -- the network -------------------------------------------------------------

    def _link_between(self, a: str, b: str) -> HarnessLink | None:
        return self._links.get(frozenset((a, b)))

    def link(self, a: str, b: str) -> HarnessLink:
        """The link between ``a`` and ``b``."""
        link = self._link_between(a, b)
        if link is None:
            raise LocalProtocolError(f"no link between {a} and {b}")
        return link

    def pool(self, node: str, peer: str) -> LinkKeyPool:
        """``node``'s end of its link to ``peer``."""
        return self.link(node, peer).pools[node]

    def advertise(self) -> None:
        """Every node originates its advert and every other node receives it (what a second of flooding does)."""
        self._clock += 1.0
        adverts = []
        for name, node in self.nodes.items():
            own = [
                LinkAdvert(
                    link.link_id,
                    peer,
                    up=not link.cut,
                    available_out_bytes=link.pools[name].available_bytes + node.engine.stocked_bytes.get(link.link_id, 0),
                )
                for link in self._links.values()
                if name in (link.alice, link.bob)
                for peer in [link.bob if name == link.alice else link.alice]
            ]
            adverts.append(node.routes.originate(own, self._clock))
        for advert in adverts:
            for name, node in self.nodes.items():
                if name != advert.origin:
                    node.routes.receive(advert, self._clock)

    def cut(self, a: str, b: str, cut: bool = True) -> None:
        """Cuts (or restores) the link between ``a`` and ``b``: hops over it are refused before any pad is spent."""
        self.link(a, b).cut = cut

    def fault(self, sender: str, receiver: str, kind: HopFault, times: int | None = None) -> None:
        """Hops ``sender → receiver`` suffer ``kind``: the next ``times`` hops, or all (None)."""
        self.link(sender, receiver)
        self._faults[(sender, receiver)] = _Fault(kind, times)

    def fail_saves(self, node: str, peer: str, failing: bool = True) -> None:
        """``node`` cannot save its end of the link to ``peer`` (a full disk), or can again."""
        link_id = self.link(node, peer).link_id
        if failing:
            self.nodes[node].failing_saves.add(link_id)
        else:
            self.nodes[node].failing_saves.discard(link_id)

    def fail_store(self, node: str, reason: str | None = "disk full (injected)") -> None:
        """``node``'s key store fails with ``reason`` (None: works again)."""
        self.nodes[node].store.failure = reason

    # -- requests ----------------------------------------------------------------

    def request(
        self,
        master_sae: str,
        slave_saes: Sequence[str],
        *,
        number: int = 1,
        key_bits: int = 256,
        keys: Sequence[tuple[str, bytes]] = (),
        source: str | None = None,
    ) -> str:
        """Queues an ``enc_keys`` request at the master's node (or ``source``); returns its ID (see :meth:`run`).

        ``keys`` are given ``(key ID, key)`` pairs to relay instead of new
        ones; ``source`` starts the relay at another node than the
        master's (an interworking node relaying a key from another network).
        """
        self._next_request += 1
        request_id = f"request-{self._next_request}"
        slaves = tuple(slave_saes)
        event = KeysRequested(
            request_id=request_id,
            master_sae=master_sae,
            slave_saes=slaves,
            destinations=tuple((s, self.saes.get(s)) for s in slaves),
            number=number,
            key_bytes=key_bits // 8,
            keys=tuple(keys),
        )
        self._queue.append((source if source is not None else self.saes[master_sae], event))
        return request_id

    def relay(self, master_sae: str, slave_saes: Sequence[str], *, number: int = 1, key_bits: int = 256) -> DeliverKeys | FailRequest:
        """One request, run to its end: its answer."""
        request_id = self.request(master_sae, slave_saes, number=number, key_bits=key_bits)
        self.run()
        return self.outcomes[request_id]

    def run(self, max_steps: int = 1_000_000) -> int:
        """Delivers queued events until none is left; returns how many.

        Raises:
            LocalProtocolError: If more than ``max_steps`` were needed.
        """
        steps = 0
        while self._queue:
            if steps >= max_steps:
                raise LocalProtocolError(f"the relay did not settle within {max_steps} steps")
            steps += 1
            index = int(self._order_rng.integers(len(self._queue))) if self.shuffle else 0
            self._queue.rotate(-index)
            node, event = self._queue.popleft()
            self._queue.rotate(index)
            self._clock += 0.001
            self._perform(node, self.nodes[node].engine.receive(event))
        return steps

    # -- the drivers -----------------------------------------------------------------

    def _perform(self, name: str, actions: list[RelayAction]) -> None:
        node = self.nodes[name]
        todo = deque(actions)
        while todo:
            action = todo.popleft()
            match action:
                case SaveLink():
                    failure = "disk full (injected)" if node.failing_saves.intersection(action.link_ids) else None
                    todo.extend(node.engine.receive(LinkSaved(action.ref, failure)))
                case StoreKey():
                    ours = tuple(s for s in action.slave_saes if self.saes.get(s) == name)
                    result = node.store.put(action.key_id, action.master_sae, ours, action.key)
                    event = replace(result, ref=action.ref) if isinstance(result, KeyStored) else KeyStored(action.ref, result)
                    todo.extend(node.engine.receive(event))
                case SendHop():
                    self._send(name, action)
                case AnswerHop():
                    sender, ref, lost = self._tokens.pop(action.token)
                    if not lost:
                        self._queue.append((sender, HopAnswered(ref, _heard_by(sender, action.refusal))))
                case DeliverKeys() | FailRequest():
                    self.outcomes[action.request_id] = action
                case _:
                    node.notices.append(action)

    def _send(self, sender: str, action: SendHop) -> None:
        receiver = action.peer
        self.sent.append(SentHop(action.link_id, sender, receiver, action.hop.pad))
        fault = self._faults.get((sender, receiver))
        kind = None
        if fault is not None and fault.remaining != 0:
            kind = fault.kind
            if fault.remaining is not None:
                fault.remaining -= 1
        if kind is HopFault.LOSE:
            self._queue.append((sender, HopAnswered(action.ref, Refusal(RefusalReason.LOST, f"hop to {receiver} lost"))))
            return
        if kind is HopFault.REFUSE:
            self._queue.append((sender, HopAnswered(action.ref, Refusal(RefusalReason.PEER_UNAVAILABLE, f"{receiver} unreachable"))))
            return
        hop = action.hop
        if kind is HopFault.FLIP:
            flipped = bytearray(hop.ciphertext)
            flipped[0] ^= 0x01
            hop = replace(hop, ciphertext=bytes(flipped))
        copies = 2 if kind is HopFault.REPLAY else 1
        for copy in range(copies):
            self._next_token += 1
            token = ("hop", self._next_token)
            # A replayed copy's answer goes nowhere (the sender heard the first one).
            self._tokens[token] = (sender, action.ref, kind is HopFault.TIMEOUT or copy > 0)
            self._queue.append((receiver, HopArrived(token, sender, hop, self._clock)))
        if kind is HopFault.TIMEOUT:
            self._queue.append((sender, HopAnswered(action.ref, Refusal(RefusalReason.TIMEOUT, f"hop to {receiver} timed out"))))

    # -- checks ------------------------------------------------------------------

    def ledgers(self) -> dict[str, dict[str, list[list[object]]]]:
        """Every link's two ledgers, ``{link_id: {"alice": [...], "bob": [...]}}``, as the node status reports them."""
        return {
            link.link_id: {
                pool.role.value: [[e.block_id, e.offset_bytes, e.length_bytes, e.initiator.value] for e in pool.audit()]
                for pool in link.pools.values()
            }
            for link in self._links.values()
        }

    def stored(self, node: str) -> dict[str, tuple[str, tuple[str, ...], bytes]]:
        """The keys stored at ``node``: ``key_id → (master SAE, slave SAEs here, key)``."""
        return dict(self.nodes[node].store.keys)

    @property
    def idle(self) -> bool:
        """Nothing queued and no engine waits for a result or holds an open request."""
        return not self._queue and all(
            not node.engine.waiting and not node.engine.open_requests for node in self.nodes.values()
        )


def _heard_by(sender: str, refusal: Refusal | None) -> Refusal | None:
    """A refusal as the hop's sender hears it (as the node's driver reports it): refused downstream of it."""
    if refusal is None:
        return None
    return Refusal(RefusalReason.PEER_REFUSED, f"relay refused downstream of {sender}: {refusal}")


def relay_network(
    links: Sequence[tuple[str, str]],
    saes: Mapping[str, str],
    *,
    seed: int = 0,
    block_bytes: int = 4096,
    blocks: int = 1,
    settings: RelaySettings | None = None,
    shuffle: bool = False,
) -> RelayNetwork:
    """A network of relay engines, ready to relay.

    Args:
        links: ``(alice, bob)`` per link; its ID is ``"alice-bob"``.
        saes: Which node each SAE is attached to.
        seed: Seeds the link keys, each node's random bytes and, with
            ``shuffle``, the delivery order.
        block_bytes: Size of each link key block (half of it is each end's to spend).
        blocks: Blocks per link.
        settings: Every node's relay settings (multipath, attempts, ...).
        shuffle: Deliver queued hops in a random (seeded) order.
    """
    return RelayNetwork(
        links, saes, seed=seed, block_bytes=block_bytes, blocks=blocks, settings=settings, shuffle=shuffle
    )
